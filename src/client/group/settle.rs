//! Per-message settlement: acknowledgements that go to the broker
//! (batched) or move the client-side commit.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::progress::Shared;
use crate::client::core::ClientCore;
use crate::wire::delivery::SettleRequest;
use crate::wire::Command;

/// How a delivered message is settled.
#[derive(Debug, Clone)]
pub(super) enum Settler {
    /// Client-side offsets: acknowledging lets the commit move past it.
    Offsets(Arc<Mutex<Shared>>),
    /// Broker-side in-flight tracking: ACK/NACK go to the broker.
    Broker(mpsc::UnboundedSender<SettleOp>),
}

/// An ACK or NACK on its way to a broker (batched by the settler task).
#[derive(Debug)]
pub(super) enum SettleOp {
    Settle {
        broker_addr: String,
        topic: String,
        queue: u32,
        offset: u64,
        /// None: ACK; Some(requeue): NACK.
        nack: Option<bool>,
    },
    Flush(oneshot::Sender<()>),
}

/// Sends ACKs and NACKs, batched per queue: whatever accumulated while the
/// previous request was on the wire goes in the next one.
pub(super) async fn settle_loop(core: Arc<ClientCore>, group: String, mut rx: mpsc::UnboundedReceiver<SettleOp>) {
    type Batch = BTreeMap<(String, String, u32, Option<bool>), Vec<u64>>;
    while let Some(first) = rx.recv().await {
        let mut batch: Batch = BTreeMap::new();
        let mut flushes = Vec::new();
        let mut op = Some(first);
        while let Some(o) = op {
            match o {
                SettleOp::Settle {
                    broker_addr,
                    topic,
                    queue,
                    offset,
                    nack,
                } => batch.entry((broker_addr, topic, queue, nack)).or_default().push(offset),
                SettleOp::Flush(done) => flushes.push(done),
            }
            op = rx.try_recv().ok();
        }
        for ((addr, topic, queue, nack), offsets) in batch {
            for chunk in offsets.chunks(crate::wire::delivery::MAX_SETTLE_COUNT as usize) {
                let req = SettleRequest {
                    group: group.clone(),
                    topic: topic.clone(),
                    queue_id: queue,
                    requeue: nack.unwrap_or(false),
                    offsets: chunk.to_vec(),
                };
                let cmd = if nack.is_some() {
                    Command::NackMessage
                } else {
                    Command::AckMessage
                };
                let timeout = core.cfg.request_timeout;
                if let Err(e) = core.request(&addr, cmd, Bytes::new(), req.encode(), timeout).await {
                    // The ack timeout redelivers what could not be settled.
                    tracing::warn!(%topic, queue, error = %e, "settling messages failed");
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}
