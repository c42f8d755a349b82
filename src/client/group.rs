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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::core::{ClientConfig, ClientCore, MessageQueue};
use super::error::{ClientError, ClientResult};
use super::remoting::RemotingConnection;
use crate::record::StoredRecord;
use crate::wire::control::{from_json, to_json};
use crate::wire::delivery::{ReceiveRequest, ReceiveResponse, SettleRequest, MAX_ACK_TIMEOUT_MS, RECEIVE_ORDERLY};
use crate::wire::group::{
    CommitOffsets, CommittedOffsets, FetchOffsets, GroupAssignment, HeartbeatReply, JoinGroup, LeaveGroup, MemberRef,
    OffsetAt, QueueOffset, SearchOffset,
};
use crate::wire::{Command, Status};

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
        }
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

type QueueKey = (String, String, u32);

struct Delivery {
    generation: u64,
    key: QueueKey,
    record: StoredRecord,
    /// Broker address of the queue (per-message acknowledgements).
    broker_addr: String,
}

#[derive(Debug, Default)]
struct Shared {
    /// The generation whose deliveries are valid; 0 while rebalancing.
    generation: u64,
    /// Next offset to commit per owned queue: below the oldest message
    /// handed out and not yet acknowledged.
    processed: HashMap<QueueKey, u64>,
    /// Offsets handed out and not yet acknowledged, per queue.
    outstanding: HashMap<QueueKey, std::collections::BTreeSet<u64>>,
    /// One past the highest acknowledged offset, per queue.
    acked_high: HashMap<QueueKey, u64>,
    /// Current assignment, for `assignment()`.
    assignment: Vec<MessageQueue>,
}

impl Shared {
    fn hand_out(&mut self, key: &QueueKey, offset: u64) {
        self.outstanding.entry(key.clone()).or_default().insert(offset);
    }

    fn ack(&mut self, generation: u64, key: &QueueKey, offset: u64) {
        // An acknowledgement from a revoked generation is not ours to commit.
        if generation != self.generation {
            return;
        }
        let outstanding = self.outstanding.entry(key.clone()).or_default();
        outstanding.remove(&offset);
        let high = self.acked_high.entry(key.clone()).or_insert(0);
        *high = (*high).max(offset + 1);
        let next = outstanding.first().copied().unwrap_or(*high);
        self.processed.insert(key.clone(), next);
    }

    fn reset(&mut self, generation: u64) {
        self.generation = generation;
        self.processed.clear();
        self.outstanding.clear();
        self.acked_high.clear();
    }
}

/// How a delivered message is settled.
#[derive(Debug, Clone)]
enum Settler {
    /// Client-side offsets: acknowledging lets the commit move past it.
    Offsets(Arc<Mutex<Shared>>),
    /// Broker-side in-flight tracking: ACK/NACK go to the broker.
    Broker(mpsc::UnboundedSender<SettleOp>),
}

/// An ACK or NACK on its way to a broker (batched by the settler task).
#[derive(Debug)]
enum SettleOp {
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

/// Sends ACKs and NACKs, batched per queue: whatever accumulated while the
/// previous request was on the wire goes in the next one.
async fn settle_loop(core: Arc<ClientCore>, group: String, mut rx: mpsc::UnboundedReceiver<SettleOp>) {
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

/// Why a generation ended.
enum End {
    Rebalance,
    Rejoin,
    Stop,
}

struct Driver {
    core: Arc<ClientCore>,
    cfg: GroupConsumerConfig,
    shared: Arc<Mutex<Shared>>,
    out: mpsc::Sender<Delivery>,
}

impl Driver {
    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut member_id: Option<String> = None;
        loop {
            let session = self.session(&mut member_id, &mut stop).await;
            match session {
                Ok(End::Stop) => return,
                Ok(End::Rebalance) => {}
                Ok(End::Rejoin) => member_id = None,
                Err(e) => {
                    tracing::warn!(group = %self.cfg.group, error = %e, "group session failed; rejoining");
                    // A member id is only known to the coordinator that gave
                    // it; after a failure the next one may be another broker.
                    member_id = None;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = &mut stop => return,
                    }
                }
            }
        }
    }

    async fn coordinator(
        &self,
    ) -> ClientResult<(String, RemotingConnection, mpsc::UnboundedReceiver<crate::wire::Frame>)> {
        let addr = self.core.group_coordinator(&self.cfg.group).await?;
        tracing::debug!(group = %self.cfg.group, coordinator = %addr, "joining");
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let conn = RemotingConnection::connect(&addr, self.core.cfg.request_timeout, Some(push_tx)).await?;
        Ok((addr, conn, push_rx))
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        conn: &RemotingConnection,
        cmd: Command,
        header: Bytes,
        timeout: Duration,
    ) -> ClientResult<T> {
        let (_, body) = conn.request(cmd, header, Bytes::new(), timeout).await?;
        Ok(from_json(&body, "group response")?)
    }

    /// One generation: join, consume, heartbeat, until something ends it.
    async fn session(&self, member_id: &mut Option<String>, stop: &mut oneshot::Receiver<()>) -> ClientResult<End> {
        let (_, conn, mut pushes) = self.coordinator().await?;
        let join = JoinGroup {
            group: self.cfg.group.clone(),
            member_id: member_id.clone(),
            client_id: self.cfg.client_id.clone(),
            topics: self.cfg.topics.clone(),
            session_timeout_ms: self.cfg.session_timeout.as_millis() as u64,
            strategy: Some(self.cfg.strategy.clone()),
            mode: Some(self.cfg.mode.clone()),
        };
        // A join waits for the whole rebalance.
        let join_timeout = self.cfg.session_timeout + Duration::from_secs(10);
        let join_call = self.call::<GroupAssignment>(&conn, Command::JoinGroup, to_json(&join), join_timeout);
        tokio::pin!(join_call);
        let assigned: GroupAssignment = tokio::select! {
            r = &mut join_call => r?,
            _ = &mut *stop => {
                // Finish the join briefly so the member can leave at once
                // instead of lingering until its session expires.
                if let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(3), join_call).await {
                    let leave = LeaveGroup { group: self.cfg.group.clone(), member_id: a.member_id };
                    let _ = conn.request(Command::LeaveGroup, to_json(&leave), Bytes::new(), self.core.cfg.request_timeout).await;
                }
                return Ok(End::Stop);
            }
        };
        *member_id = Some(assigned.member_id.clone());
        let generation = assigned.generation;
        tracing::info!(group = %self.cfg.group, member = %assigned.member_id, generation, queues = assigned.assignment.len(), "joined");

        let queues = self.resolve(&assigned).await?;
        if let Ok(mut s) = self.shared.lock() {
            s.reset(generation);
            s.assignment = queues.clone();
        }
        let me = MemberRef {
            group: self.cfg.group.clone(),
            member_id: assigned.member_id.clone(),
            generation,
        };
        // Each queue finds its own start (its broker may be down: the
        // others must not wait for it).
        let pullers: Vec<JoinHandle<()>> = queues
            .iter()
            .map(|mq| {
                let feed = Feed {
                    core: self.core.clone(),
                    mq: mq.clone(),
                    start: self.cfg.start,
                    offsets_group: self.cfg.offsets_group(),
                    member: me.clone(),
                    tags: self.cfg.tag_expression.clone(),
                    generation,
                    out: self.out.clone(),
                };
                match self.cfg.effective_ack_timeout() {
                    Some(ack_timeout) => tokio::spawn(feed.receive_loop(ack_timeout, self.cfg.orderly)),
                    None => tokio::spawn(feed.pull_loop()),
                }
            })
            .collect();

        // At least three heartbeats per session, whatever was configured.
        let period = self
            .cfg
            .heartbeat_interval
            .min(self.cfg.session_timeout / 3)
            .max(Duration::from_millis(10));
        let mut heartbeat = tokio::time::interval(period);
        heartbeat.tick().await;
        let mut commit = tokio::time::interval(self.cfg.commit_interval);
        commit.tick().await;
        let timeout = self.core.cfg.request_timeout;
        let end = loop {
            tokio::select! {
                _ = &mut *stop => break Ok(End::Stop),
                push = pushes.recv() => match push {
                    Some(f) if f.code == Command::NotifyRebalance.code() => break Ok(End::Rebalance),
                    Some(_) => {}
                    None => break Err(ClientError::Closed("group coordinator".into())),
                },
                _ = heartbeat.tick() => {
                    match self.call::<HeartbeatReply>(&conn, Command::Heartbeat, to_json(&me), timeout).await {
                        Ok(r) if r.rebalance => break Ok(End::Rebalance),
                        Ok(_) => {}
                        Err(e) if matches!(e.status(), Some(Status::UnknownMember) | Some(Status::NotCoordinator)) => break Ok(End::Rejoin),
                        Err(e) if matches!(e.status(), Some(Status::IllegalGeneration) | Some(Status::RebalanceInProgress)) => break Ok(End::Rebalance),
                        Err(e) => break Err(e),
                    }
                }
                _ = commit.tick() => {
                    if let Err(e) = self.commit(&me).await {
                        tracing::warn!(error = %e, "offset commit failed");
                    }
                }
            }
        };
        // Revoke first: nothing of this generation is handed out any more.
        for p in &pullers {
            p.abort();
        }
        if let Ok(mut s) = self.shared.lock() {
            s.generation = 0;
        }
        let committed = self.commit(&me).await;
        if let Ok(mut s) = self.shared.lock() {
            s.reset(0);
            s.assignment.clear();
        }
        match end {
            Ok(End::Stop) => {
                if let Err(e) = committed {
                    tracing::warn!(error = %e, "final offset commit failed");
                }
                let leave = LeaveGroup {
                    group: self.cfg.group.clone(),
                    member_id: assigned.member_id,
                };
                let _ = conn
                    .request(Command::LeaveGroup, to_json(&leave), Bytes::new(), timeout)
                    .await;
                Ok(End::Stop)
            }
            other => other,
        }
    }

    /// Broker addresses of the assigned queues.
    async fn resolve(&self, a: &GroupAssignment) -> ClientResult<Vec<MessageQueue>> {
        let mut by_topic: BTreeMap<String, Vec<MessageQueue>> = BTreeMap::new();
        let mut out = Vec::new();
        for q in &a.assignment {
            if !by_topic.contains_key(&q.topic) {
                self.core.invalidate(&q.topic);
                by_topic.insert(q.topic.clone(), self.core.queues(&q.topic).await?);
            }
            let found = by_topic[&q.topic]
                .iter()
                .find(|m| m.broker_name == q.broker_name && m.queue_id == q.queue)
                .cloned();
            match found {
                Some(mq) => out.push(mq),
                None => {
                    tracing::warn!(topic = %q.topic, broker = %q.broker_name, queue = q.queue, "assigned queue has no live master")
                }
            }
        }
        Ok(out)
    }

    /// Commits what was processed, to the broker group owning each queue,
    /// as member `me`. Every broker is tried; the first failure is
    /// returned.
    async fn commit(&self, me: &MemberRef) -> ClientResult<()> {
        if self.cfg.effective_ack_timeout().is_some() {
            return Ok(()); // the broker commits what was acknowledged
        }
        let by_broker: BTreeMap<String, Vec<QueueOffset>> = match self.shared.lock() {
            Ok(s) => {
                let mut by_broker: BTreeMap<String, Vec<QueueOffset>> = BTreeMap::new();
                for ((topic, broker_name, queue), o) in &s.processed {
                    let addr = s
                        .assignment
                        .iter()
                        .find(|mq| &mq.broker_name == broker_name)
                        .map(|mq| mq.broker_addr.clone());
                    if let Some(addr) = addr {
                        by_broker.entry(addr).or_default().push(QueueOffset {
                            topic: topic.clone(),
                            broker_name: broker_name.clone(),
                            queue: *queue,
                            offset: *o,
                        });
                    }
                }
                by_broker
            }
            Err(_) => return Ok(()),
        };
        let mut first_error = None;
        for (addr, offsets) in by_broker {
            if let Err(e) = commit_offsets(&self.core, &addr, &self.cfg.offsets_group(), me, offsets).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Sends one `COMMIT_OFFSETS` to the broker at `addr` as member `me`.
async fn commit_offsets(
    core: &ClientCore,
    addr: &str,
    offsets_group: &str,
    me: &MemberRef,
    offsets: Vec<QueueOffset>,
) -> ClientResult<()> {
    let c = CommitOffsets {
        group: offsets_group.to_string(),
        member_id: Some(me.member_id.clone()),
        generation: Some(me.generation),
        offsets,
    };
    core.request(
        addr,
        Command::CommitOffsets,
        to_json(&c),
        Bytes::new(),
        core.cfg.request_timeout,
    )
    .await?;
    Ok(())
}

/// What one queue's feeder task needs.
struct Feed {
    core: Arc<ClientCore>,
    mq: MessageQueue,
    /// Where the queue starts when the group has no offset for it.
    start: StartPosition,
    /// The group offsets are kept under.
    offsets_group: String,
    /// The member and generation the queue is assigned to.
    member: MemberRef,
    tags: String,
    generation: u64,
    out: mpsc::Sender<Delivery>,
}

/// Pause between attempts on a queue whose broker fails.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

impl Feed {
    async fn deliver(&self, record: StoredRecord) -> bool {
        let d = Delivery {
            generation: self.generation,
            key: (self.mq.topic.clone(), self.mq.broker_name.clone(), self.mq.queue_id),
            record,
            broker_addr: self.mq.broker_addr.clone(),
        };
        self.out.send(d).await.is_ok()
    }

    /// Where consumption of the queue starts: the group's committed
    /// offset, kept by the queue's broker group; else the configured start
    /// position, committed at once so that messages stored while no member
    /// runs are delivered by the next one (as Kafka and RocketMQ do).
    async fn start_offset(&self) -> ClientResult<u64> {
        let timeout = self.core.cfg.request_timeout;
        let f = FetchOffsets {
            group: self.offsets_group.clone(),
            topic: Some(self.mq.topic.clone()),
        };
        let (_, body) = self
            .core
            .request(
                &self.mq.broker_addr,
                Command::FetchOffsets,
                to_json(&f),
                Bytes::new(),
                timeout,
            )
            .await?;
        let committed: CommittedOffsets = from_json(&body, "offsets")?;
        let found = committed
            .offsets
            .iter()
            .find(|o| o.queue == self.mq.queue_id && o.broker_name == self.mq.broker_name);
        if let Some(o) = found {
            return Ok(o.offset);
        }
        let header = to_json(&crate::wire::control::QueueRef {
            topic: self.mq.topic.clone(),
            queue: self.mq.queue_id,
        });
        let (_, body) = self
            .core
            .request(&self.mq.broker_addr, Command::GetOffsets, header, Bytes::new(), timeout)
            .await?;
        let range: crate::wire::control::QueueOffsets = from_json(&body, "offsets")?;
        let start = match self.start {
            StartPosition::Earliest => range.min_offset,
            StartPosition::Latest => range.max_offset,
            StartPosition::Timestamp(t) => {
                let s = SearchOffset {
                    topic: self.mq.topic.clone(),
                    queue: self.mq.queue_id,
                    timestamp: t,
                };
                let (_, body) = self
                    .core
                    .request(
                        &self.mq.broker_addr,
                        Command::SearchOffset,
                        to_json(&s),
                        Bytes::new(),
                        timeout,
                    )
                    .await?;
                from_json::<OffsetAt>(&body, "offset")?.offset
            }
        };
        let offset = QueueOffset {
            topic: self.mq.topic.clone(),
            broker_name: self.mq.broker_name.clone(),
            queue: self.mq.queue_id,
            offset: start,
        };
        if let Err(e) = commit_offsets(
            &self.core,
            &self.mq.broker_addr,
            &self.offsets_group,
            &self.member,
            vec![offset],
        )
        .await
        {
            // Consumption goes on; the next commit records the position.
            tracing::warn!(queue = %self.mq, error = %e, "could not commit the start position");
        }
        Ok(start)
    }

    /// [`Feed::start_offset`], retried until its broker answers. `None`
    /// when the consumer is gone.
    async fn wait_for_start(&mut self) -> Option<u64> {
        let mut failures = 0u32;
        loop {
            match self.start_offset().await {
                Ok(o) => return Some(o),
                Err(e) => {
                    if self.out.is_closed() {
                        return None;
                    }
                    self.note_failure(&mut failures, "start offset", &e).await;
                }
            }
        }
    }

    /// Logs a failure once per outage, pauses, and after a few failures
    /// looks the queue's broker up again (a restarted broker may have
    /// moved).
    async fn note_failure(&mut self, failures: &mut u32, what: &str, e: &ClientError) {
        *failures += 1;
        if *failures == 1 {
            tracing::warn!(queue = %self.mq, error = %e, "{what} failed; retrying in the background");
        } else {
            tracing::debug!(queue = %self.mq, error = %e, "{what} failed again");
        }
        tokio::time::sleep(RETRY_PAUSE).await;
        if *failures % 5 == 0 {
            self.core.invalidate(&self.mq.topic);
            if let Ok(queues) = self.core.queues(&self.mq.topic).await {
                let moved = queues
                    .into_iter()
                    .find(|q| q.broker_name == self.mq.broker_name && q.queue_id == self.mq.queue_id);
                if let Some(q) = moved {
                    self.mq.broker_addr = q.broker_addr;
                }
            }
        }
    }

    /// Offset-committing consumption: pull from a client-kept offset.
    async fn pull_loop(mut self) {
        let Some(mut offset) = self.wait_for_start().await else {
            return;
        };
        let consumer = super::consumer::PullConsumer::from_core(self.core.clone());
        let mut failures = 0u32;
        loop {
            match consumer
                .pull(&self.mq, offset, 32, Duration::from_secs(1), &self.tags)
                .await
            {
                Ok(r) => {
                    if failures > 0 {
                        tracing::info!(queue = %self.mq, "queue reachable again");
                        failures = 0;
                    }
                    offset = r.next_offset;
                    for record in r.messages {
                        if !self.deliver(record).await {
                            return;
                        }
                    }
                }
                Err(e) => self.note_failure(&mut failures, "pull", &e).await,
            }
        }
    }

    /// Per-message acknowledgements: the broker tracks what is in flight.
    async fn receive_loop(mut self, ack_timeout: Duration, orderly: bool) {
        let Some(start) = self.wait_for_start().await else {
            return;
        };
        let req = ReceiveRequest {
            group: self.offsets_group.clone(),
            topic: self.mq.topic.clone(),
            queue_id: self.mq.queue_id,
            start_offset: start,
            max_count: if orderly { 1 } else { 32 },
            max_wait_ms: 1_000,
            ack_timeout_ms: ack_timeout.as_millis().clamp(1, u128::from(MAX_ACK_TIMEOUT_MS)) as u32,
            flags: if orderly { RECEIVE_ORDERLY } else { 0 },
            tag_expression: self.tags.clone(),
        };
        let body = req.encode();
        let timeout = self.core.cfg.request_timeout + Duration::from_secs(1);
        let mut failures = 0u32;
        loop {
            let answer = self
                .core
                .request(
                    &self.mq.broker_addr,
                    Command::ReceiveMessage,
                    Bytes::new(),
                    body.clone(),
                    timeout,
                )
                .await;
            let resp = answer.and_then(|(_, b)| Ok(ReceiveResponse::decode(b)?));
            match resp {
                Ok(r) => {
                    failures = 0;
                    for (delivery, raw) in r.deliveries {
                        let mut record = match StoredRecord::decode(raw) {
                            Ok(rec) => rec,
                            Err(e) => {
                                tracing::warn!(queue = %self.mq, error = %e, "undecodable record; the ack timeout redelivers it");
                                continue;
                            }
                        };
                        record.reconsume_times = delivery.saturating_sub(1);
                        if !self.deliver(record).await {
                            return;
                        }
                    }
                }
                Err(e) => self.note_failure(&mut failures, "receive", &e).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_stop_below_the_oldest_unacknowledged_message() {
        let mut s = Shared::default();
        s.reset(3);
        let k: QueueKey = ("t".into(), "b".into(), 0);
        for o in 10..15 {
            s.hand_out(&k, o);
        }
        s.ack(3, &k, 12);
        s.ack(3, &k, 10);
        assert_eq!(s.processed[&k], 11, "11 is still being processed");
        s.ack(3, &k, 11);
        assert_eq!(s.processed[&k], 13);
        s.ack(3, &k, 13);
        s.ack(3, &k, 14);
        assert_eq!(s.processed[&k], 15);
        s.ack(2, &k, 99); // a stale generation changes nothing
        assert_eq!(s.processed[&k], 15);
    }

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
