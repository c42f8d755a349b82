//! What a client connection does, as `ferromq_clients{role}` and
//! `/api/overview` count it: a connection is a producer once it sends, a
//! consumer once it pulls, receives or joins a group, and an admin
//! otherwise. The connections themselves are the broker's sessions
//! (`broker::session::SessionRegistry`); the
//! [`crate::actors::heartbeat_scanner::HeartbeatScanner`] expires those
//! that fall silent.

use serde::Serialize;

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
    /// Every role, in label order.
    pub const ALL: [ClientRole; 3] = [ClientRole::Producer, ClientRole::Consumer, ClientRole::Admin];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::Producer => "producer",
            ClientRole::Consumer => "consumer",
            ClientRole::Admin => "admin",
        }
    }

    /// A compact code (1–3) for atomics; 0 is "no role".
    pub fn code(self) -> u8 {
        match self {
            ClientRole::Producer => 1,
            ClientRole::Consumer => 2,
            ClientRole::Admin => 3,
        }
    }

    /// The role of a [`ClientRole::code`]; `None` for 0 (or anything else).
    pub fn from_code(code: u8) -> Option<ClientRole> {
        match code {
            1 => Some(ClientRole::Producer),
            2 => Some(ClientRole::Consumer),
            3 => Some(ClientRole::Admin),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for r in ClientRole::ALL {
            assert_eq!(ClientRole::from_code(r.code()), Some(r));
        }
        assert_eq!(ClientRole::from_code(0), None);
    }
}
