//! `HeartbeatScanner`: expires clients (producers, consumers, admins) that
//! stopped talking to the broker, from the broker's sessions (read through
//! [`ClientExpiry`], implemented by `broker::session::SessionRegistry`:
//! every request updates its session's last-seen time atomically, without
//! a lock). One timer armed for the next possible expiry, not a periodic
//! scan.
//! Consumer-group members are expired by their group coordinators (session
//! timeouts); brokers by the name server.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::clock::now_millis;
use crate::observe::clients::ClientRole;
use crate::observe::{kind, ActorStats};

/// The clients the scanner watches.
pub trait ClientExpiry: Send + Sync {
    /// Forgets the roles of clients silent since before `now - timeout_ms`
    /// (they count again once they speak); returns them.
    fn expire(&self, now: u64, timeout_ms: u64) -> Vec<(u64, ClientRole)>;

    /// When the quietest client will have been silent `timeout_ms`.
    fn next_expiry(&self, timeout_ms: u64) -> Option<u64>;
}

/// The scanner actor.
pub struct HeartbeatScanner {
    stats: Arc<ActorStats>,
    clients: Arc<dyn ClientExpiry>,
    timeout_ms: u64,
    timer: Option<SpawnHandle>,
}

impl HeartbeatScanner {
    /// A scanner expiring clients of `clients` silent for `timeout_ms`.
    pub fn new(clients: Arc<dyn ClientExpiry>, timeout_ms: u64) -> HeartbeatScanner {
        HeartbeatScanner {
            stats: ActorStats::detached(kind::HEARTBEAT_SCANNER, "0"),
            clients,
            timeout_ms: timeout_ms.max(1),
            timer: None,
        }
    }

    /// Reports into `stats` (from the broker's actor tree).
    pub fn with_stats(mut self, stats: Arc<ActorStats>) -> Self {
        self.stats = stats;
        self
    }

    fn scan(&mut self, ctx: &mut Context<Self>) {
        let _timer = self.stats.handling();
        let now = now_millis();
        let gone = self.clients.expire(now, self.timeout_ms);
        let next = self.clients.next_expiry(self.timeout_ms);
        for (id, role) in gone {
            tracing::info!(
                connection = id,
                role = role.as_str(),
                timeout_ms = self.timeout_ms,
                "client silent; expired"
            );
            metrics::counter!("ferromq_clients_expired_total", "role" => role.as_str()).increment(1);
        }
        // With no client, look again after one timeout: a new one cannot
        // expire sooner.
        let at = next.unwrap_or(now + self.timeout_ms);
        self.arm(ctx, at.saturating_sub(now));
    }

    fn arm(&mut self, ctx: &mut Context<Self>, wait_ms: u64) {
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        // A broker failing at start-up drops this actor's task while the
        // runtime shuts down, which first runs `started`: there is no timer
        // to arm then (and arming one would panic, hiding the real error).
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.timer = Some(ctx.run_later(Duration::from_millis(wait_ms), |act, ctx| {
            act.timer = None;
            act.scan(ctx);
        }));
    }
}

impl Actor for HeartbeatScanner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.stats.started();
        self.scan(ctx);
    }
}

impl Supervised for HeartbeatScanner {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.stats.restarting();
        self.timer = None;
    }
}

crate::observe::failable!(HeartbeatScanner);
