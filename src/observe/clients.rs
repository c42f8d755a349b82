//! The broker's table of connected clients and what they do: a connection
//! is a producer once it sends, a consumer once it pulls, receives or joins
//! a group, and an admin otherwise. A plain state machine; the
//! [`crate::actors::heartbeat_scanner::HeartbeatScanner`] expires entries
//! that fall silent.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::wire::Command;

/// What a client connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientRole {
    /// Sends messages.
    Producer,
    /// Pulls, receives, acknowledges, or takes part in a group.
    Consumer,
    /// Anything else (topics, lookups, pings).
    Admin,
}

impl ClientRole {
    /// The role a command reveals.
    pub fn of(cmd: Command) -> ClientRole {
        use Command::*;
        match cmd {
            SendMessage => ClientRole::Producer,
            PullMessage | ReceiveMessage | AckMessage | NackMessage | JoinGroup | SyncGroup | Heartbeat
            | LeaveGroup | CommitOffsets | FetchOffsets => ClientRole::Consumer,
            _ => ClientRole::Admin,
        }
    }

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::Producer => "producer",
            ClientRole::Consumer => "consumer",
            ClientRole::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Client {
    role: ClientRole,
    last_seen: u64,
}

/// Connected clients by connection id.
#[derive(Debug, Default)]
pub struct ClientTable {
    clients: HashMap<u64, Client>,
}

impl ClientTable {
    /// A request arrived on connection `id` at `now` (ms). A producer or
    /// consumer keeps that role; an admin connection takes the role of its
    /// first data command.
    pub fn seen(&mut self, id: u64, role: ClientRole, now: u64) {
        let c = self.clients.entry(id).or_insert(Client { role, last_seen: now });
        if c.role == ClientRole::Admin {
            c.role = role;
        }
        c.last_seen = c.last_seen.max(now);
    }

    /// The connection closed.
    pub fn closed(&mut self, id: u64) {
        self.clients.remove(&id);
    }

    /// Removes clients silent since before `now - timeout_ms`; returns them.
    pub fn expire(&mut self, now: u64, timeout_ms: u64) -> Vec<(u64, ClientRole)> {
        let cutoff = now.saturating_sub(timeout_ms);
        let gone: Vec<(u64, ClientRole)> = self
            .clients
            .iter()
            .filter(|(_, c)| c.last_seen < cutoff)
            .map(|(id, c)| (*id, c.role))
            .collect();
        for (id, _) in &gone {
            self.clients.remove(id);
        }
        gone
    }

    /// When the quietest client will have been silent `timeout_ms`.
    pub fn next_expiry(&self, timeout_ms: u64) -> Option<u64> {
        self.clients
            .values()
            .map(|c| c.last_seen.saturating_add(timeout_ms).saturating_add(1))
            .min()
    }

    /// Clients per role (every role present, 0 included).
    pub fn by_role(&self) -> BTreeMap<ClientRole, usize> {
        let mut out: BTreeMap<ClientRole, usize> = [ClientRole::Producer, ClientRole::Consumer, ClientRole::Admin]
            .into_iter()
            .map(|r| (r, 0))
            .collect();
        for c in self.clients.values() {
            *out.entry(c.role).or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_stick_and_silent_clients_expire() {
        let mut t = ClientTable::default();
        t.seen(1, ClientRole::Admin, 0);
        t.seen(1, ClientRole::Producer, 10);
        t.seen(1, ClientRole::Admin, 20); // a producer stays a producer
        t.seen(2, ClientRole::Consumer, 500);
        t.seen(3, ClientRole::Admin, 900);
        let roles = t.by_role();
        assert_eq!(
            (
                roles[&ClientRole::Producer],
                roles[&ClientRole::Consumer],
                roles[&ClientRole::Admin]
            ),
            (1, 1, 1)
        );
        assert_eq!(t.next_expiry(1_000), Some(1_021));
        assert!(t.expire(1_020, 1_000).is_empty());
        assert_eq!(t.expire(1_021, 1_000), [(1, ClientRole::Producer)]);
        t.closed(3);
        assert_eq!(t.by_role()[&ClientRole::Admin], 0);
        assert_eq!(ClientRole::of(Command::SendMessage), ClientRole::Producer);
        assert_eq!(ClientRole::of(Command::AckMessage), ClientRole::Consumer);
        assert_eq!(ClientRole::of(Command::TopicStats), ClientRole::Admin);
    }
}
