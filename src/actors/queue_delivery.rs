//! Per-message delivery in the queue actor: `RECEIVE_MESSAGE`, `ACK` and
//! `NACK`, ack timeouts, retries, dead letters and TTL expiry. The rules
//! live in [`crate::delivery::cursor::Cursor`] (one per group); this module
//! feeds it requests and timer ticks and carries out its effects: reading
//! records, writing dead letters, committing offsets.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::queue_actor::QueueActor;
use crate::clock::now_millis;
use crate::delivery::cursor::{Cursor, DeadLetter};
use crate::delivery::expiry::{raw_expire_at, ExpiryQueue};
use crate::delivery::props::{self, dlq_topic};
use crate::delivery::DeadLetterReason;
use crate::error::{BrokerError, ErrorKind};
use crate::message::TagFilter;
use crate::message::PROPERTY_TAGS;
use crate::store::append::AppendEntry;
use crate::store::commitlog::read_raw;
use crate::store::offsets::OffsetKey;
use crate::store::record::{RecordView, StoredRecord};
use crate::wire::delivery::{ReceiveRequest, ReceiveResponse, SettleRequest};
use crate::wire::pull::{PullStatus, MAX_PULL_COUNT};

/// Most consume-queue entries one receive claims (filters may skip many).
const MAX_CLAIM_SCAN: usize = 16 * 1024;
/// Receives stop adding records past this many bytes (but return at least
/// one), like pulls: a response is at most this plus one record.
const MAX_RECEIVE_BYTES: usize = 8 << 20;
/// Records the start-up TTL scan reads per turn of the actor.
const SCAN_CHUNK: u64 = 2048;
/// Wait before writing a failed dead letter again.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);

/// A receive's answer: the encoded response body, or an error status.
pub type ReceiveReply = Result<Bytes, BrokerError>;

/// Set once the requester is gone (its connection closed): a parked
/// receive of a gone requester is dropped instead of claiming messages
/// nobody would acknowledge before the ack timeout.
pub type RequesterGone = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// Take messages for a group (see `RECEIVE_MESSAGE`).
#[derive(Message)]
#[rtype(result = "ReceiveReply")]
pub struct Receive(pub ReceiveRequest, pub RequesterGone);

/// Acknowledge (`nack: false`) or reject messages; answers how many were
/// in flight and are now settled or requeued.
#[derive(Message)]
#[rtype(result = "Result<u32, BrokerError>")]
pub struct Settle {
    /// The request.
    pub req: SettleRequest,
    /// True for `NACK_MESSAGE`.
    pub nack: bool,
}

/// Forget a group's in-memory state (its offsets were reset).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ForgetGroup(pub String);

/// One group's delivery on this queue.
struct GroupDelivery {
    cursor: Cursor,
    orderly: bool,
    filter: TagFilter,
    /// The expression `filter` was parsed from.
    tag_expression: String,
    /// `ferromq_group_in_flight` last reported.
    reported_in_flight: Option<usize>,
    /// Committed offset last written (None: never written).
    persisted: Option<u64>,
    /// Dead letters whose write failed, to try again.
    failed_dead_letters: Vec<DeadLetter>,
}

impl GroupDelivery {
    fn fresh(start: u64) -> GroupDelivery {
        GroupDelivery {
            cursor: Cursor::new(start),
            orderly: false,
            filter: TagFilter::All,
            tag_expression: "*".to_string(),
            reported_in_flight: None,
            persisted: None,
            failed_dead_letters: Vec::new(),
        }
    }
}

struct ParkedReceive {
    req: ReceiveRequest,
    deadline: u64,
    reply: oneshot::Sender<ReceiveReply>,
    gone: RequesterGone,
}

/// The delivery state of a queue actor.
#[derive(Default)]
pub struct Deliveries {
    groups: HashMap<String, GroupDelivery>,
    parked: Vec<ParkedReceive>,
    expiries: ExpiryQueue,
    timer: Option<SpawnHandle>,
    commit_scheduled: bool,
    /// Start-up TTL scan: next offset to read and where to stop.
    scan: Option<(u64, u64)>,
}

impl Deliveries {
    /// Remembers messages that will expire: (queue offset, deadline).
    pub fn add_expiries(&mut self, expiring: &[(u64, u64)]) {
        for &(offset, deadline) in expiring {
            self.expiries.add(deadline, offset);
        }
    }
}

impl QueueActor {
    fn max_offset(&self) -> u64 {
        self.store
            .queues
            .get(&self.topic, self.queue_id)
            .map_or(0, |q| q.max_offset())
    }

    fn offset_key(&self, group: &str) -> OffsetKey {
        OffsetKey {
            group: group.to_string(),
            topic: self.topic.to_string(),
            queue: self.queue_id,
        }
    }

    /// Loads the groups that receive this topic (after a start or restart)
    /// and begins the scan that finds the TTLs of their backlog.
    pub(super) fn resume_deliveries(&mut self, ctx: &mut Context<Self>) {
        let mut lowest: Option<u64> = None;
        for group in self.store.subscriptions.groups(&self.topic) {
            let Some(committed) = self.store.offsets.get(&self.offset_key(&group)) else {
                continue;
            };
            lowest = Some(lowest.map_or(committed, |l| l.min(committed)));
            self.deliveries.groups.insert(
                group,
                GroupDelivery {
                    cursor: Cursor::new(committed),
                    orderly: false,
                    filter: TagFilter::All,
                    tag_expression: "*".to_string(),
                    reported_in_flight: None,
                    persisted: Some(committed),
                    failed_dead_letters: Vec::new(),
                },
            );
        }
        if let Some(from) = lowest {
            let end = self.max_offset();
            if from < end {
                self.deliveries.scan = Some((from, end));
                self.scan_backlog(ctx);
            }
        }
    }

    fn scan_backlog(&mut self, ctx: &mut Context<Self>) {
        let Some((from, end)) = self.deliveries.scan else {
            return;
        };
        let Some(cq) = self.store.queues.get(&self.topic, self.queue_id) else {
            self.deliveries.scan = None;
            return;
        };
        let topic_ttl = self.store.topics.get(&self.topic).and_then(|t| t.ttl_ms);
        let stop = end.min(from + SCAN_CHUNK);
        let mut buf = BytesMut::new();
        for offset in from..stop {
            let Some(entry) = cq.get(offset) else { continue };
            buf.clear();
            if self
                .store
                .log
                .read_into(entry.phys_offset, entry.size as usize, &mut buf)
                .is_err()
            {
                continue;
            }
            if let Some(at) = crate::delivery::expiry::raw_expire_at(&buf, topic_ttl) {
                self.deliveries.expiries.add(at, offset);
            }
        }
        if stop < end {
            self.deliveries.scan = Some((stop, end));
            ctx.run_later(Duration::ZERO, |act, ctx| act.scan_backlog(ctx));
        } else {
            self.deliveries.scan = None;
        }
        self.arm_delivery_timer(ctx);
    }

    /// Parked receives.
    pub(super) fn parked_receives(&self) -> usize {
        self.deliveries.parked.len()
    }

    /// Drops parked receives whose connection closed.
    pub(super) fn sweep_gone_receives(&mut self) {
        self.deliveries
            .parked
            .retain(|p| !p.reply.is_closed() && !p.gone.load(std::sync::atomic::Ordering::Acquire));
    }

    /// Drops every parked receive (the actor restarts or retires).
    pub(super) fn drop_deliveries(&mut self, answer: Option<BrokerError>) {
        for p in self.deliveries.parked.drain(..) {
            if let Some(e) = &answer {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
        self.deliveries = Deliveries::default();
    }

    fn group_mut(&mut self, req: &ReceiveRequest) -> &mut GroupDelivery {
        if !self.deliveries.groups.contains_key(&req.group) {
            if let Err(e) = self.store.subscriptions.add(&self.topic, &req.group) {
                tracing::warn!(group = %req.group, topic = %self.topic, error = %e, "cannot record subscription");
            }
            let committed = self.store.offsets.get(&self.offset_key(&req.group));
            let (min, max) = self
                .store
                .queues
                .get(&self.topic, self.queue_id)
                .map_or((0, 0), |q| (q.min_offset(), q.max_offset()));
            let start = committed.unwrap_or(req.start_offset).clamp(min, max);
            self.deliveries.groups.insert(
                req.group.clone(),
                GroupDelivery {
                    cursor: Cursor::new(start),
                    orderly: req.orderly(),
                    filter: TagFilter::All,
                    tag_expression: "*".to_string(),
                    reported_in_flight: None,
                    // A group's starting point is committed at once, so a
                    // restart resumes from it (not from a new "latest").
                    persisted: committed.filter(|c| *c == start),
                    failed_dead_letters: Vec::new(),
                },
            );
        }
        let g = self
            .deliveries
            .groups
            .entry(req.group.clone())
            .or_insert_with(|| GroupDelivery::fresh(req.start_offset));
        g.orderly = req.orderly();
        if g.tag_expression != req.tag_expression {
            g.filter = TagFilter::parse(&req.tag_expression);
            g.tag_expression = req.tag_expression.clone();
        }
        g
    }

    /// Claims and reads what `req` may have now. Returns the response body
    /// when something was found, and the dead letters it produced.
    fn serve_receive(&mut self, req: &ReceiveRequest, now: u64) -> (Option<Bytes>, Vec<DeadLetter>) {
        let max_offset = self.max_offset();
        let topic_ttl = self.store.topics.get(&self.topic).and_then(|t| t.ttl_ms);
        let retry = self.services.retry.clone();
        let store = self.store.clone();
        let cq = store.queues.get(&self.topic, self.queue_id);
        let want = req.max_count.clamp(1, MAX_PULL_COUNT) as usize;
        let g = self.group_mut(req);
        let mut found: Vec<(u32, Bytes)> = Vec::new();
        let mut bytes = 0usize;
        let mut dead = Vec::new();
        let mut scanned = 0;
        while found.len() < want && scanned < MAX_CLAIM_SCAN && bytes < MAX_RECEIVE_BYTES {
            // Claim no more than the byte limit leaves room for (one, then
            // doubling, until a record size is known): a claim is delivered
            // or settled, never given back.
            let limit = match bytes.checked_div(found.len()) {
                None => scanned.clamp(1, want),
                Some(avg) => ((MAX_RECEIVE_BYTES - bytes) / avg.max(1)).clamp(1, want - found.len()),
            };
            let claims = g
                .cursor
                .claim(now, limit, max_offset, u64::from(req.ack_timeout_ms), g.orderly, &retry);
            if claims.is_empty() {
                break;
            }
            scanned += claims.len();
            for claim in claims {
                let record = cq
                    .as_ref()
                    .and_then(|q| q.get(claim.offset))
                    .and_then(|e| read_raw(&store.log, e.phys_offset, e.size).ok());
                let Some(raw) = record else {
                    // Unreadable (a deleted topic's last moments): nothing to deliver.
                    tracing::warn!(topic = %rec_topic(req), offset = claim.offset, "cannot read a claimed record; skipping it");
                    g.cursor.skip(claim.offset);
                    continue;
                };
                // Tag and TTL are read in place, as pulls do: no decoding.
                if !g.filter.matches(RecordView(&raw).property(PROPERTY_TAGS)) {
                    g.cursor.skip(claim.offset);
                } else if raw_expire_at(&raw, topic_ttl).is_some_and(|at| at <= now) {
                    dead.extend(g.cursor.reject_claim(claim.offset, DeadLetterReason::Expired));
                } else {
                    bytes += raw.len();
                    found.push((claim.delivery, raw));
                }
            }
        }
        if found.is_empty() {
            return (None, dead);
        }
        let committed = g.cursor.committed();
        self.count_out(found.len() as u64);
        let redelivered = found.iter().filter(|(d, _)| *d > 1).count() as u64;
        if redelivered > 0 {
            let labels = [
                ("group", req.group.clone()),
                ("topic", self.topic.to_string()),
                ("queue", self.queue_id.to_string()),
            ];
            metrics::counter!("ferromq_group_redeliveries_total", &labels).increment(redelivered);
        }
        let mut body = BytesMut::new();
        ReceiveResponse::put_head(&mut body, PullStatus::Found, committed, max_offset, found.len() as u32);
        for (delivery, raw) in &found {
            body.extend_from_slice(&delivery.to_be_bytes());
            body.extend_from_slice(raw);
        }
        (Some(body.freeze()), dead)
    }

    fn empty_receive(&self, group: &str) -> Bytes {
        let committed = self.deliveries.groups.get(group).map_or(0, |g| g.cursor.committed());
        ReceiveResponse {
            status: PullStatus::NoNewMessage,
            committed_offset: committed,
            max_offset: self.max_offset(),
            deliveries: Vec::new(),
        }
        .encode()
    }

    /// Answers parked receives that can now be served or whose wait ended.
    pub(super) fn serve_parked(&mut self, ctx: &mut Context<Self>) {
        if self.deliveries.parked.is_empty() {
            return;
        }
        let now = now_millis();
        let parked = std::mem::take(&mut self.deliveries.parked);
        let max_offset = self.max_offset();
        let mut dead: Vec<(String, Vec<DeadLetter>)> = Vec::new();
        for p in parked {
            if p.reply.is_closed() || p.gone.load(std::sync::atomic::Ordering::Acquire) {
                continue;
            }
            // Most wake-ups serve nobody: ask the cursor before claiming.
            let ready = self
                .deliveries
                .groups
                .get(&p.req.group)
                .is_none_or(|g| g.cursor.has_ready(now, max_offset, g.orderly, &self.services.retry));
            if !ready && p.deadline > now {
                self.deliveries.parked.push(p);
                continue;
            }
            let (found, dls) = self.serve_receive(&p.req, now);
            dead.push((p.req.group.clone(), dls));
            match found {
                Some(body) => {
                    let _ = p.reply.send(Ok(body));
                }
                None if p.deadline <= now => {
                    let _ = p.reply.send(Ok(self.empty_receive(&p.req.group)));
                }
                None => self.deliveries.parked.push(p),
            }
        }
        for (group, dls) in dead {
            self.dead_letter(&group, dls, ctx);
        }
        self.after_change(ctx);
    }

    /// One timer for the earliest of: an ack deadline, a retry coming due, a
    /// TTL deadline, a parked receive's end.
    pub(super) fn arm_delivery_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.deliveries.timer.take() {
            ctx.cancel_future(h);
        }
        let now = now_millis();
        let next = self
            .deliveries
            .groups
            .values()
            .filter_map(|g| g.cursor.next_wakeup(now))
            .chain(self.deliveries.expiries.next_deadline())
            .chain(self.deliveries.parked.iter().map(|p| p.deadline))
            .min();
        if let Some(at) = next {
            let wait = Duration::from_millis(at.saturating_sub(now));
            self.deliveries.timer = Some(ctx.run_later(wait, |act, ctx| {
                act.deliveries.timer = None;
                act.on_delivery_timer(ctx);
            }));
        }
    }

    fn on_delivery_timer(&mut self, ctx: &mut Context<Self>) {
        let now = now_millis();
        let retry = self.services.retry.clone();
        let expired = self.deliveries.expiries.take_due(now);
        let mut dead: Vec<(String, Vec<DeadLetter>)> = Vec::new();
        for (name, g) in self.deliveries.groups.iter_mut() {
            let mut dls = g.cursor.expire_deadlines(now, &retry);
            dls.extend(expired.iter().filter_map(|o| g.cursor.expire(*o)));
            if !dls.is_empty() {
                dead.push((name.clone(), dls));
            }
        }
        for (group, dls) in dead {
            self.dead_letter(&group, dls, ctx);
        }
        self.serve_parked(ctx);
        self.after_change(ctx);
    }

    /// Re-arms the timer and schedules a commit when a committed offset moved.
    fn after_change(&mut self, ctx: &mut Context<Self>) {
        self.parked_changed(ctx);
        self.arm_delivery_timer(ctx);
        for (name, g) in self.deliveries.groups.iter_mut() {
            let in_flight = g.cursor.stats().in_flight;
            if g.reported_in_flight == Some(in_flight) {
                continue;
            }
            g.reported_in_flight = Some(in_flight);
            let labels = [
                ("group", name.clone()),
                ("topic", self.topic.to_string()),
                ("queue", self.queue_id.to_string()),
            ];
            metrics::gauge!("ferromq_group_in_flight", &labels).set(in_flight as f64);
        }
        let dirty = self
            .deliveries
            .groups
            .values()
            .any(|g| g.persisted != Some(g.cursor.committed()));
        if dirty && !self.deliveries.commit_scheduled {
            self.deliveries.commit_scheduled = true;
            let every = Duration::from_millis(self.services.delivery.commit_interval_ms);
            ctx.run_later(every, |act, ctx| act.commit_offsets(ctx));
        }
    }

    fn commit_offsets(&mut self, ctx: &mut Context<Self>) {
        let commits: Vec<(OffsetKey, u64)> = self
            .deliveries
            .groups
            .iter()
            .filter(|(_, g)| g.persisted != Some(g.cursor.committed()))
            .map(|(name, g)| (self.offset_key(name), g.cursor.committed()))
            .collect();
        let services = self.services.clone();
        let fut = {
            let commits = commits.clone();
            async move { services.commit_offsets(commits).await }
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.deliveries.commit_scheduled = false;
            match res {
                Ok(()) => {
                    for (k, offset) in commits {
                        if let Some(g) = act.deliveries.groups.get_mut(&k.group) {
                            g.persisted = Some(offset);
                        }
                    }
                }
                Err(e) => tracing::warn!(kind = ?e.kind(), error = %e, "committing delivery offsets failed; retrying"),
            }
            act.after_change(ctx);
        }));
    }

    /// Copies dead letters to `%DLQ%<group>`; each is settled once stored.
    fn dead_letter(&mut self, group: &str, dls: Vec<DeadLetter>, ctx: &mut Context<Self>) {
        if dls.is_empty() {
            return;
        }
        let mut entries = Vec::with_capacity(dls.len());
        let mut stored = Vec::with_capacity(dls.len());
        for dl in dls {
            match self.dead_letter_entry(group, &dl) {
                Some(e) => {
                    entries.push(e);
                    stored.push(dl);
                }
                None => {
                    tracing::error!(group, topic = %self.topic, offset = dl.offset, "cannot read a message to dead-letter it; settling it");
                    if let Some(g) = self.deliveries.groups.get_mut(group) {
                        g.cursor.dead_lettered(dl.offset);
                    }
                }
            }
        }
        if entries.is_empty() {
            return;
        }
        let services = self.services.clone();
        let topic = dlq_topic(group);
        let group = group.to_string();
        let origin = [
            ("group", group.clone()),
            ("topic", self.topic.to_string()),
            ("queue", self.queue_id.to_string()),
        ];
        let fut = async move {
            services.ensure_topic(&topic, 1)?;
            services.append(&topic, 0, entries).await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let Some(g) = act.deliveries.groups.get_mut(&group) else {
                return;
            };
            match res {
                Ok(_) => {
                    for dl in &stored {
                        g.cursor.dead_lettered(dl.offset);
                        let mut labels = origin.to_vec();
                        labels.push(("reason", dl.reason.as_str().to_string()));
                        metrics::counter!("ferromq_group_dead_lettered_total", &labels).increment(1);
                        if dl.reason == DeadLetterReason::Expired {
                            metrics::counter!("ferromq_group_expired_total", &origin).increment(1);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(%group, kind = ?e.kind(), error = %e, "writing dead letters failed; retrying");
                    g.failed_dead_letters.extend(stored);
                    ctx.run_later(DEAD_LETTER_RETRY, move |act, ctx| {
                        let retry = act
                            .deliveries
                            .groups
                            .get_mut(&group)
                            .map(|g| std::mem::take(&mut g.failed_dead_letters))
                            .unwrap_or_default();
                        act.dead_letter(&group, retry, ctx);
                    });
                }
            }
            act.serve_parked(ctx);
            act.after_change(ctx);
        }));
    }

    fn dead_letter_entry(&self, group: &str, dl: &DeadLetter) -> Option<AppendEntry> {
        let cq = self.store.queues.get(&self.topic, self.queue_id)?;
        let e = cq.get(dl.offset)?;
        let rec = read_record(&self.store, e.phys_offset, e.size)?;
        let mut properties = rec.properties.clone();
        let mut set = |k: &str, v: String| {
            properties.insert(k.to_string(), v);
        };
        set(props::ORIGIN_TOPIC, self.topic.to_string());
        set(props::ORIGIN_QUEUE, self.queue_id.to_string());
        set(props::ORIGIN_OFFSET, dl.offset.to_string());
        set(props::ORIGIN_MSG_ID, rec.msg_id().to_string());
        set(props::DELIVERY_COUNT, dl.deliveries.to_string());
        set(props::DLQ_REASON, dl.reason.as_str().to_string());
        set(props::DLQ_GROUP, group.to_string());
        Some(AppendEntry {
            flags: rec.flags,
            born_timestamp: rec.born_timestamp,
            properties,
            body: rec.body,
        })
    }
}

fn rec_topic(req: &ReceiveRequest) -> String {
    format!("{}/{}", req.topic, req.queue_id)
}

/// The record at `phys`, decoded (dead letters need its properties).
fn read_record(store: &crate::store::Store, phys: u64, size: u32) -> Option<StoredRecord> {
    StoredRecord::decode(read_raw(&store.log, phys, size).ok()?).ok()
}

impl Handler<Receive> for QueueActor {
    type Result = ResponseFuture<ReceiveReply>;

    fn handle(&mut self, Receive(req, gone): Receive, ctx: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        let now = now_millis();
        let (found, dead) = self.serve_receive(&req, now);
        self.dead_letter(&req.group, dead, ctx);
        let reply = match found {
            Some(body) => Some(body),
            None if req.max_wait_ms == 0 => Some(self.empty_receive(&req.group)),
            None => None,
        };
        let rx = match reply {
            Some(body) => {
                self.after_change(ctx);
                return Box::pin(async move { Ok(body) });
            }
            None => {
                let (tx, rx) = oneshot::channel();
                self.deliveries.parked.push(ParkedReceive {
                    deadline: now + u64::from(req.max_wait_ms),
                    req,
                    reply: tx,
                    gone,
                });
                self.after_change(ctx);
                rx
            }
        };
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(BrokerError::new(
                    ErrorKind::Unavailable,
                    "queue actor restarted; receive again",
                ))
            })
        })
    }
}

impl Handler<Settle> for QueueActor {
    type Result = Result<u32, BrokerError>;

    fn handle(&mut self, Settle { req, nack }: Settle, ctx: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        let now = now_millis();
        let retry = self.services.retry.clone();
        let Some(g) = self.deliveries.groups.get_mut(&req.group) else {
            // Nothing delivered here since the broker (or actor) started:
            // the messages will be delivered again.
            return Ok(0);
        };
        let mut settled = 0;
        let mut dead = Vec::new();
        for &offset in &req.offsets {
            if !nack {
                settled += u32::from(g.cursor.ack(offset));
                continue;
            }
            match g.cursor.nack(offset, req.requeue, now, &retry) {
                None => {}
                Some(Ok(())) => settled += 1,
                Some(Err(dl)) => {
                    settled += 1;
                    dead.push(dl);
                }
            }
        }
        self.dead_letter(&req.group, dead, ctx);
        self.serve_parked(ctx);
        self.after_change(ctx);
        Ok(settled)
    }
}

impl Handler<ForgetGroup> for QueueActor {
    type Result = ();

    fn handle(&mut self, ForgetGroup(group): ForgetGroup, ctx: &mut Context<Self>) {
        let _timer = self.stats.handling();
        self.deliveries.groups.remove(&group);
        self.arm_delivery_timer(ctx);
    }
}
