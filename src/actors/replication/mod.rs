//! Master → slave replication's actors and shared state (the logic is in
//! `crate::replication`): on a master, the [`hub::ReplicationHub`] (an ack
//! policy step and the slaves' progress) and one [`link::ReplicaLink`] per
//! connected slave; on a slave, the [`follower::ReplicaFollower`].

pub mod follower;
pub mod hub;
pub mod link;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::Addr;

use crate::clock::now_millis;
use crate::observe::ActorTree;
use crate::store::Store;
use crate::wire::control::ReplicationReport;
use follower::FollowerStatus;
use hub::ReplicationHub;
use link::ReplicaLink;

/// This broker's side of replication.
pub enum Replication {
    /// A master: serves its log to slaves.
    Master {
        /// Progress of the slaves; the sync ack step.
        hub: Arc<ReplicationHub>,
        /// One link per slave id, started on its first request.
        links: Mutex<HashMap<u64, Addr<ReplicaLink>>>,
        /// The master's store.
        store: Arc<Store>,
        /// Where links are listed.
        tree: Arc<ActorTree>,
    },
    /// A slave: follows its master.
    Slave {
        /// The follower's state.
        status: FollowerStatus,
    },
}

impl Replication {
    /// The link to slave `id`, started if it has none (or it stopped).
    pub fn link(&self, id: u64) -> Option<Addr<ReplicaLink>> {
        let Replication::Master {
            hub,
            links,
            store,
            tree,
        } = self
        else {
            return None;
        };
        let mut links = links.lock().ok()?;
        if let Some(l) = links.get(&id).filter(|l| l.connected()) {
            return Some(l.clone());
        }
        let l = ReplicaLink::start(id, hub.clone(), store.clone(), tree.clone());
        links.insert(id, l.clone());
        Some(l)
    }

    /// The master's hub (None on a slave).
    pub fn hub(&self) -> Option<&Arc<ReplicationHub>> {
        match self {
            Replication::Master { hub, .. } => Some(hub),
            Replication::Slave { .. } => None,
        }
    }

    /// The master this slave follows, if known (None on a master).
    pub fn master_addr(&self) -> Option<String> {
        match self {
            Replication::Slave { status } => status.lock().ok()?.master().map(str::to_string),
            Replication::Master { .. } => None,
        }
    }

    /// The state this broker registers with the name servers.
    pub fn report(&self) -> ReplicationReport {
        match self {
            Replication::Master { hub, .. } => {
                let slaves = hub.slaves();
                ReplicationReport {
                    master: None,
                    lag_bytes: slaves.iter().map(|s| s.lag.bytes).max().unwrap_or(0),
                    lag_ms: slaves.iter().map(|s| s.lag.ms).max().unwrap_or(0),
                    links: slaves.len() as u32,
                }
            }
            Replication::Slave { status } => {
                let Ok(s) = status.lock() else {
                    return ReplicationReport::default();
                };
                let (lag_bytes, lag_ms) = s.lag(now_millis());
                ReplicationReport {
                    master: s.master().map(str::to_string),
                    lag_bytes,
                    lag_ms,
                    links: u32::from(matches!(s.phase(), crate::replication::follower::Phase::Following)),
                }
            }
        }
    }

    /// Sets the replication gauges: per slave on a master
    /// (`ferromq_replication_slave_lag_bytes{slave}`, `_lag_ms`), this
    /// slave's own on a slave (`ferromq_replication_lag_bytes`, `_lag_ms`,
    /// `ferromq_replication_following`).
    pub fn record_metrics(&self) {
        match self {
            Replication::Master { hub, .. } => {
                let slaves = hub.slaves();
                metrics::gauge!("ferromq_replication_slaves").set(slaves.len() as f64);
                for s in slaves {
                    let labels = [("slave", s.id.to_string()), ("addr", s.progress.addr.clone())];
                    metrics::gauge!("ferromq_replication_slave_lag_bytes", &labels).set(s.lag.bytes as f64);
                    metrics::gauge!("ferromq_replication_slave_lag_ms", &labels).set(s.lag.ms as f64);
                    metrics::gauge!("ferromq_replication_slave_confirmed_offset", &labels)
                        .set(s.progress.confirmed as f64);
                }
            }
            Replication::Slave { status } => {
                let Ok(s) = status.lock() else { return };
                let (bytes, ms) = s.lag(now_millis());
                metrics::gauge!("ferromq_replication_lag_bytes").set(bytes as f64);
                metrics::gauge!("ferromq_replication_lag_ms").set(ms as f64);
                let following = matches!(s.phase(), crate::replication::follower::Phase::Following);
                metrics::gauge!("ferromq_replication_following").set(if following { 1.0 } else { 0.0 });
            }
        }
    }
}
