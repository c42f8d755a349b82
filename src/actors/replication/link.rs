//! `ReplicaLink`: one per connected slave, on the master. A thin shell: it
//! feeds each `REPLICA_FETCH`'s offset (the slave's confirmation) to the
//! hub's [`crate::replication::progress::ReplicaSet`], and answers with
//! the log from there — at once when there is some, else when the log
//! grows or the wait is over (long poll). One fetch is in flight per
//! slave (the slave asks again after storing a chunk), which is the flow
//! control: a slow slave slows only itself.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;

use super::hub::ReplicationHub;
use crate::error::{BrokerError, ErrorKind};
use crate::observe::{ActorStats, ActorTree};
use crate::store::Store;

/// The log from `from`, for slave `slave` at `addr`.
#[derive(Message, Debug)]
#[rtype(result = "Result<FetchedChunk, BrokerError>")]
pub struct FetchLog {
    /// The slave's client address.
    pub addr: String,
    /// First offset wanted.
    pub from: u64,
    /// Everything below this is stored on the slave.
    pub confirmed: u64,
    /// Most bytes to answer (one record more may come whole).
    pub max_bytes: usize,
    /// Longest wait for new records.
    pub max_wait: Duration,
}

/// A [`FetchLog`] answer.
#[derive(Debug, Clone)]
pub struct FetchedChunk {
    /// Offset of `bytes`' first byte.
    pub from: u64,
    /// Offset after `bytes`.
    pub next: u64,
    /// The master's log end when answered.
    pub master_max: u64,
    /// Whole records.
    pub bytes: Bytes,
}

/// Actor kind in `/actors`.
pub const KIND: &str = "replica_link";

/// The link to one slave.
pub struct ReplicaLink {
    stats: Arc<ActorStats>,
    slave: u64,
    hub: Arc<ReplicationHub>,
    store: Arc<Store>,
    tree: Arc<ActorTree>,
}

impl ReplicaLink {
    /// Starts the link to slave `slave` on the current arbiter, listed in
    /// `tree`.
    pub fn start(slave: u64, hub: Arc<ReplicationHub>, store: Arc<Store>, tree: Arc<ActorTree>) -> Addr<ReplicaLink> {
        let stats = tree.register(KIND, slave.to_string(), crate::observe::kind::BROKER);
        ReplicaLink {
            stats,
            slave,
            hub,
            store,
            tree: tree.clone(),
        }
        .start()
    }

    /// Reads the chunk from `from`: `None` when there is nothing new yet.
    fn read(store: &Store, from: u64, max_bytes: usize) -> Result<Option<FetchedChunk>, BrokerError> {
        let chunk = store.replica_chunk(from, max_bytes).map_err(|e| {
            BrokerError::new(
                ErrorKind::InvalidArgument,
                format!("cannot serve the log from {from}: {e}; shake hands again"),
            )
        })?;
        if chunk.bytes.is_empty() {
            return Ok(None);
        }
        Ok(Some(FetchedChunk {
            from: chunk.from,
            next: chunk.next,
            master_max: store.log.write_pos(),
            bytes: chunk.bytes,
        }))
    }
}

impl Actor for ReplicaLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.stats.started();
        // A slave that stopped fetching is gone: the hub drops it on its
        // tick; the link then stops too.
        ctx.run_interval(Duration::from_secs(1), |act, ctx| {
            if !act.hub.has_slave(act.slave) {
                tracing::info!(slave = act.slave, "replica link closed: the slave stopped fetching");
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.tree.remove(KIND, &self.slave.to_string());
    }
}

impl Handler<FetchLog> for ReplicaLink {
    type Result = ResponseFuture<Result<FetchedChunk, BrokerError>>;

    fn handle(&mut self, msg: FetchLog, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        self.hub.fetched(self.slave, &msg.addr, msg.confirmed);
        let store = self.store.clone();
        let mut grown = self.hub.subscribe();
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + msg.max_wait;
            loop {
                // Marked seen before reading, so growth after the read
                // wakes the wait below.
                grown.borrow_and_update();
                if let Some(chunk) = ReplicaLink::read(&store, msg.from, msg.max_bytes)? {
                    return Ok(chunk);
                }
                match tokio::time::timeout_at(deadline, grown.changed()).await {
                    Ok(Ok(())) => continue,
                    // The wait is over (or the hub is gone): nothing new.
                    _ => {
                        return Ok(FetchedChunk {
                            from: msg.from,
                            next: msg.from,
                            master_max: store.log.write_pos(),
                            bytes: Bytes::new(),
                        })
                    }
                }
            }
        })
    }
}
