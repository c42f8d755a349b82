//! `ReplicationHub`: the master's shared replication state (not an actor).
//! It is an [`AckPolicy`] step — every appended batch passes through it, so
//! it learns the log's end and wakes the slaves' parked fetches; under
//! `replication.mode = sync` the step resolves only once a slave has
//! confirmed the batch (`AfterReplica`) — and it holds the
//! [`ReplicaSet`] that the [`super::link::ReplicaLink`]s feed with each
//! slave's confirmations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::{self, BoxFuture, FutureExt};
use tokio::sync::{oneshot, watch};

use crate::actors::ack_policy::AckPolicy;
use crate::clock::now_millis;
use crate::config::{ReplicationMode, ReplicationSection};
use crate::error::{BrokerError, ErrorKind};
use crate::replication::progress::{Lag, ReplicaSet, SlaveProgress, Wait, WaiterId};

type Answer = oneshot::Sender<Result<(), BrokerError>>;

/// The master's replication state, shared by the writer's ack policy, the
/// replica links and the views.
pub struct ReplicationHub {
    mode: ReplicationMode,
    sync_timeout_ms: u64,
    state: Mutex<ReplicaSet>,
    waiting: Mutex<HashMap<WaiterId, Answer>>,
    end: watch::Sender<u64>,
    /// Each slave's advertised address (from its handshake), for views
    /// and metric labels (its connection's port changes on reconnects).
    names: Mutex<HashMap<u64, String>>,
}

/// One slave in [`ReplicationHub::slaves`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveView {
    /// Broker id.
    pub id: u64,
    /// What the master knows of it.
    pub progress: SlaveProgress,
    /// How far behind it is.
    pub lag: Lag,
}

impl ReplicationHub {
    /// A hub for a master whose log ends at `end`.
    pub fn new(cfg: &ReplicationSection, end: u64) -> Arc<ReplicationHub> {
        let mut set = ReplicaSet::new(cfg.slave_idle_ms);
        set.appended(end, now_millis());
        Arc::new(ReplicationHub {
            mode: cfg.mode,
            sync_timeout_ms: cfg.sync_timeout_ms,
            state: Mutex::new(set),
            waiting: Mutex::new(HashMap::new()),
            end: watch::channel(end).0,
            names: Mutex::new(HashMap::new()),
        })
    }

    /// The replication mode.
    pub fn mode(&self) -> ReplicationMode {
        self.mode
    }

    /// Tells parked fetches when the log grows.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.end.subscribe()
    }

    /// The log now ends at `end`.
    pub fn appended(&self, end: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.appended(end, now_millis());
        }
        self.end.send_if_modified(|e| {
            let grew = end > *e;
            *e = (*e).max(end);
            grew
        });
    }

    /// Slave `id` shook hands from `addr` (its advertised address): it
    /// starts over (its confirmations may go back after a cut).
    pub fn hello(&self, id: u64, addr: &str) {
        if let Ok(mut names) = self.names.lock() {
            names.insert(id, addr.to_string());
        }
        self.slave_gone(id);
    }

    /// Slave `id` (connected from `peer`) confirmed everything below `from`
    /// (a fetch from there, or an ack), which may answer sync sends.
    pub fn fetched(&self, id: u64, peer: &str, from: u64) {
        let addr = self
            .names
            .lock()
            .ok()
            .and_then(|n| n.get(&id).cloned())
            .unwrap_or_else(|| peer.to_string());
        let released = match self.state.lock() {
            Ok(mut s) => s.fetched(id, &addr, from, now_millis()),
            Err(_) => return,
        };
        self.answer(released, || Ok(()));
    }

    /// Answers sync sends whose wait is over and drops silent slaves; the
    /// broker calls it every 100 ms.
    pub fn tick(&self) {
        let expired = match self.state.lock() {
            Ok(mut s) => s.tick(now_millis()),
            Err(_) => return,
        };
        let timeout = self.sync_timeout_ms;
        self.answer(expired, || {
            Err(BrokerError::new(
                ErrorKind::SlaveNotAvailable,
                format!(
                    "stored on the master only: no slave confirmed the batch within {timeout} ms \
                     (replication.sync_timeout_ms)"
                ),
            ))
        });
    }

    /// Slave `id` disconnected.
    pub fn slave_gone(&self, id: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.slave_gone(id);
        }
    }

    /// Is slave `id` connected (fetched within `slave_idle_ms`)?
    pub fn has_slave(&self, id: u64) -> bool {
        self.state.lock().is_ok_and(|s| s.slaves().contains_key(&id))
    }

    /// The connected slaves with their lag.
    pub fn slaves(&self) -> Vec<SlaveView> {
        let now = now_millis();
        let Ok(s) = self.state.lock() else {
            return Vec::new();
        };
        s.slaves()
            .iter()
            .map(|(&id, p)| SlaveView {
                id,
                progress: p.clone(),
                lag: s.lag(id, now).unwrap_or_default(),
            })
            .collect()
    }

    fn answer(&self, ids: Vec<WaiterId>, result: impl Fn() -> Result<(), BrokerError>) {
        if ids.is_empty() {
            return;
        }
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        for id in ids {
            if let Some(tx) = waiting.remove(&id) {
                let _ = tx.send(result());
            }
        }
    }
}

impl AckPolicy for ReplicationHub {
    fn when_answered(&self, end: u64) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.appended(end);
        if self.mode == ReplicationMode::Async {
            return future::ready(Ok(())).boxed();
        }
        let now = now_millis();
        // The waiter is registered while the answer channel is installed,
        // under one lock order (state, then waiting), so a confirmation
        // racing in between cannot be lost.
        let (tx, rx) = oneshot::channel();
        let wait = match (self.state.lock(), self.waiting.lock()) {
            (Ok(mut s), Ok(mut waiting)) => {
                let w = s.wait(end, now, now + self.sync_timeout_ms);
                if let Wait::Pending(id) = w {
                    waiting.insert(id, tx);
                }
                w
            }
            _ => return future::ready(Err(BrokerError::internal("replication state poisoned"))).boxed(),
        };
        match wait {
            Wait::Ready => future::ready(Ok(())).boxed(),
            Wait::NoSlave => future::ready(Err(BrokerError::new(
                ErrorKind::SlaveNotAvailable,
                "stored on the master only: no slave is connected (replication.mode = sync)",
            )))
            .boxed(),
            Wait::Pending(_) => async move {
                rx.await
                    .unwrap_or_else(|_| Err(BrokerError::new(ErrorKind::Unavailable, "replication stopped")))
            }
            .boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn hub(mode: ReplicationMode) -> Arc<ReplicationHub> {
        let cfg = ReplicationSection {
            mode,
            sync_timeout_ms: 200,
            ..ReplicationSection::default()
        };
        ReplicationHub::new(&cfg, 0)
    }

    #[tokio::test]
    async fn sync_sends_wait_for_a_slave_and_fail_without_one() {
        let h = hub(ReplicationMode::Sync);
        let e = h.when_answered(10).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SlaveNotAvailable, "{e}");
        h.fetched(1, "s", 0);
        let pending = h.when_answered(20);
        let confirm = {
            let h = h.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                h.fetched(1, "s", 20);
            }
        };
        let (answer, ()) = tokio::join!(pending, confirm);
        answer.unwrap();
        // Unconfirmed until the deadline: the tick answers it.
        let late = h.when_answered(30);
        let tick = {
            let h = h.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(250)).await;
                h.fetched(1, "s", 20);
                h.tick();
            }
        };
        let (answer, ()) = tokio::join!(late, tick);
        assert_eq!(answer.unwrap_err().kind(), ErrorKind::SlaveNotAvailable);
    }

    #[tokio::test]
    async fn async_sends_are_answered_at_once_and_wake_fetches() {
        let h = hub(ReplicationMode::Async);
        let mut rx = h.subscribe();
        h.when_answered(100).await.unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), 100);
    }
}
