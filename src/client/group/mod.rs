//! A group-aware consumer: joins a consumer group on its coordinator broker,
//! keeps the membership alive, pulls the queues the coordinator assigns, and
//! commits what the application has processed.
//!
//! Delivery is at least once. [`GroupConsumer::next`] returns messages one
//! by one; calling it again marks the previous message processed (its
//! offset is committed every `commit_interval`, before a rebalance and on
//! close). On a rebalance notice (pushed by the coordinator or learnt from a
//! heartbeat) the member stops pulling, drops deliveries it had not handed
//! out yet, commits, and only then rejoins. The coordinator hands a queue to
//! its new owner only when every member has rejoined, so a queue is never
//! delivered by two members at once.
//!
//! A broker group whose master is down keeps its queues: the coordinator
//! still assigns them while the group has a live slave, and the member
//! reads them from the slave; its commits for that group are kept by the
//! client until the master is back, and retried with the newest value.

mod driver;
mod feed;
pub(crate) mod kept;
mod progress;
mod settle;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::core::{ClientConfig, ClientCore, MessageQueue};
use super::error::{ClientError, ClientResult};
use crate::record::StoredRecord;

use driver::Driver;
use progress::Shared;
use settle::{settle_loop, SettleOp, Settler};

/// Ack timeout of orderly consumers that set none.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a queue without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest stored message.
    Earliest,
    /// Only messages stored from now on.
    Latest,
    /// The first message stored at or after this time (ms since the epoch).
    Timestamp(u64),
}

/// Group membership settings.
#[derive(Debug, Clone)]
pub struct GroupConsumerConfig {
    /// Group name.
    pub group: String,
    /// Stable client name; defaults to `<hostname-ish>@<pid>`.
    pub client_id: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Tag expression applied to every topic.
    pub tag_expression: String,
    /// `range`, `round-robin` or `sticky` (used if this member creates the group).
    pub strategy: String,
    /// `clustering` or `broadcasting`.
    pub mode: String,
    /// Silence after which the coordinator drops this member.
    pub session_timeout: Duration,
    /// Heartbeat period; capped at a third of the session timeout.
    pub heartbeat_interval: Duration,
    /// How often processed offsets are committed.
    pub commit_interval: Duration,
    /// Start of queues with no committed offset.
    pub start: StartPosition,
    /// Per-message acknowledgements tracked by the broker: a delivered
    /// message is redelivered unless acknowledged within this time, and
    /// [`Delivered::nack`] works. `None`: offsets are committed by the
    /// client (at-least-once, no per-message redelivery).
    pub ack_timeout: Option<Duration>,
    /// Orderly consumption (needs per-message acknowledgements; 60 s ack
    /// timeout when none is set): each queue delivers one message at a time
    /// and the next only after the current one is acknowledged.
    pub orderly: bool,
    /// Read a queue from a slave of its broker group while this member is
    /// more than this many messages behind the queue's end (back to the
    /// master within half of it); see
    /// [`crate::client::PullConsumer::with_read_from_slave_when_behind`].
    /// `None` (the default): read from the master while it is up.
    pub read_from_slave_when_behind: Option<u64>,
}

impl GroupConsumerConfig {
    /// Defaults: range, clustering, 30 s session, 3 s heartbeat, 1 s
    /// commits, new queues from the latest offset.
    pub fn new(group: impl Into<String>, topics: Vec<String>) -> GroupConsumerConfig {
        GroupConsumerConfig {
            group: group.into(),
            client_id: format!("client@{}", std::process::id()),
            topics,
            tag_expression: "*".into(),
            strategy: "range".into(),
            mode: "clustering".into(),
            session_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(3),
            commit_interval: Duration::from_secs(1),
            start: StartPosition::Latest,
            ack_timeout: None,
            orderly: false,
            read_from_slave_when_behind: None,
        }
    }

    /// Sets [`GroupConsumerConfig::read_from_slave_when_behind`] (`0`:
    /// off).
    pub fn with_read_from_slave_when_behind(mut self, n: u64) -> GroupConsumerConfig {
        self.read_from_slave_when_behind = (n > 0).then_some(n);
        self
    }

    /// The broker-side ack timeout in effect, if acknowledgements are
    /// per message.
    pub fn effective_ack_timeout(&self) -> Option<Duration> {
        match (self.ack_timeout, self.orderly) {
            (Some(t), _) => Some(t),
            (None, true) => Some(DEFAULT_ACK_TIMEOUT),
            (None, false) => None,
        }
    }

    /// The group name offsets are kept under: broadcasting members keep
    /// their own progress.
    pub fn offsets_group(&self) -> String {
        if self.mode == "broadcasting" {
            // Group names follow topic-name rules; client ids (`client@pid`)
            // may not.
            let id: String = self
                .client_id
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            format!("{}%{id}", self.group)
        } else {
            self.group.clone()
        }
    }
}

/// A queue as (topic, broker name, queue id).
type QueueKey = (String, String, u32);

/// A message on its way from a feeder to the application.
struct Delivery {
    generation: u64,
    key: QueueKey,
    record: StoredRecord,
    /// Broker address of the queue (per-message acknowledgements).
    broker_addr: String,
}

/// A message handed out by [`GroupConsumer::next_delivery`]; acknowledge it
/// once processed (or reject it with [`Delivered::nack`]).
#[derive(Debug)]
pub struct Delivered {
    /// The message (`reconsume_times` is its delivery number minus one).
    pub record: StoredRecord,
    /// 1 for the first delivery, 2 for the first redelivery, …
    pub delivery: u32,
    generation: u64,
    key: QueueKey,
    broker_addr: String,
    settler: Settler,
}

impl Delivered {
    fn settle(self, nack: Option<bool>) -> ClientResult<()> {
        match self.settler {
            Settler::Offsets(shared) => {
                if nack.is_some() {
                    return Err(ClientError::Invalid(
                        "nack needs per-message acknowledgements: set an ack timeout".into(),
                    ));
                }
                if let Ok(mut s) = shared.lock() {
                    s.ack(self.generation, &self.key, self.record.queue_offset);
                }
                Ok(())
            }
            Settler::Broker(tx) => tx
                .send(SettleOp::Settle {
                    broker_addr: self.broker_addr,
                    topic: self.key.0,
                    queue: self.key.2,
                    offset: self.record.queue_offset,
                    nack,
                })
                .map_err(|_| ClientError::Closed("consumer".into())),
        }
    }

    /// The broker group whose queue delivered the message.
    pub fn broker_name(&self) -> &str {
        &self.key.1
    }

    /// Marks the message processed.
    pub fn ack(self) {
        let _ = self.settle(None);
    }

    /// Rejects the message: with `requeue` it is redelivered after the
    /// broker's retry backoff (and dead-lettered once out of retries);
    /// without, it goes to the group's dead-letter topic at once. Needs
    /// per-message acknowledgements ([`GroupConsumerConfig::ack_timeout`]).
    pub fn nack(self, requeue: bool) -> ClientResult<()> {
        self.settle(Some(requeue))
    }
}

/// A consumer-group member. See the module docs for the delivery contract.
pub struct GroupConsumer {
    rx: mpsc::Receiver<Delivery>,
    shared: Arc<Mutex<Shared>>,
    settle_tx: Option<mpsc::UnboundedSender<SettleOp>>,
    last: Option<Delivered>,
    stop: Option<oneshot::Sender<()>>,
    driver: Option<JoinHandle<()>>,
}

impl GroupConsumer {
    /// Starts a member; it joins in the background.
    pub fn start(client: ClientConfig, cfg: GroupConsumerConfig) -> GroupConsumer {
        let (tx, rx) = mpsc::channel(256);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (stop_tx, stop_rx) = oneshot::channel();
        let core = ClientCore::new(client);
        let settle_tx = cfg.effective_ack_timeout().map(|_| {
            let (settle_tx, settle_rx) = mpsc::unbounded_channel();
            tokio::spawn(settle_loop(core.clone(), cfg.offsets_group(), settle_rx));
            settle_tx
        });
        let driver = Driver {
            core,
            cfg,
            shared: shared.clone(),
            out: tx,
            kept: Arc::default(),
        };
        let handle = tokio::spawn(driver.run(stop_rx));
        GroupConsumer {
            rx,
            shared,
            settle_tx,
            last: None,
            stop: Some(stop_tx),
            driver: Some(handle),
        }
    }

    fn mark_last_processed(&mut self) {
        if let Some(d) = self.last.take() {
            d.ack();
        }
    }

    /// The next message of an owned queue, to be acknowledged explicitly
    /// (for concurrent processing). `None` once the consumer has stopped.
    pub async fn next_delivery(&mut self) -> Option<Delivered> {
        loop {
            let d = self.rx.recv().await?;
            let settler = match &self.settle_tx {
                Some(tx) => Settler::Broker(tx.clone()),
                None => {
                    let Ok(mut s) = self.shared.lock() else { return None };
                    if d.generation != s.generation {
                        continue; // revoked before it was handed out: the new owner redelivers it
                    }
                    s.hand_out(&d.key, d.record.queue_offset);
                    Settler::Offsets(self.shared.clone())
                }
            };
            return Some(Delivered {
                delivery: d.record.reconsume_times + 1,
                record: d.record,
                generation: d.generation,
                key: d.key,
                broker_addr: d.broker_addr,
                settler,
            });
        }
    }

    /// The next message of an owned queue; marks the previous one processed.
    /// `None` once the consumer has stopped for good.
    pub async fn next(&mut self) -> Option<StoredRecord> {
        self.mark_last_processed();
        let d = self.next_delivery().await?;
        let record = d.record.clone();
        self.last = Some(d);
        Some(record)
    }

    /// The broker group of the message last returned by
    /// [`GroupConsumer::next`] (its queue is `(topic, broker, queue id)`).
    pub fn last_broker_name(&self) -> Option<&str> {
        self.last.as_ref().map(Delivered::broker_name)
    }

    /// Like [`GroupConsumer::next`] but gives up after `wait`.
    pub async fn next_timeout(&mut self, wait: Duration) -> Option<Option<StoredRecord>> {
        tokio::time::timeout(wait, self.next()).await.ok()
    }

    /// Rejects the message last returned by [`GroupConsumer::next`] instead
    /// of acknowledging it (see [`Delivered::nack`]).
    pub fn nack_last(&mut self, requeue: bool) -> ClientResult<()> {
        match self.last.take() {
            Some(d) => d.nack(requeue),
            None => Err(ClientError::Invalid("no message to nack".into())),
        }
    }

    /// Queues owned in the current generation.
    pub fn assignment(&self) -> Vec<MessageQueue> {
        self.shared.lock().map(|s| s.assignment.clone()).unwrap_or_default()
    }

    /// Commits what was processed (the last message returned included),
    /// sends pending acknowledgements, and leaves the group at once, so its
    /// queues move without waiting for the session timeout.
    pub async fn close(mut self) {
        self.mark_last_processed();
        if let Some(tx) = self.settle_tx.take() {
            let (done_tx, done) = oneshot::channel();
            if tx.send(SettleOp::Flush(done_tx)).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
            }
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(d) = self.driver.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), d).await;
        }
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        if let Some(d) = self.driver.take() {
            d.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_members_keep_their_own_offsets() {
        let cfg = GroupConsumerConfig {
            mode: "broadcasting".into(),
            client_id: "c1".into(),
            ..GroupConsumerConfig::new("g", vec![])
        };
        assert_eq!(cfg.offsets_group(), "g%c1");
        let default_id = GroupConsumerConfig {
            mode: "broadcasting".into(),
            client_id: "client@42".into(),
            ..GroupConsumerConfig::new("g", vec![])
        };
        assert_eq!(default_id.offsets_group(), "g%client_42");
        assert_eq!(GroupConsumerConfig::new("g", vec![]).offsets_group(), "g");
    }
}
