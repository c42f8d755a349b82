//! One queue's delivery, for pulls and for every group that receives it
//! with acknowledgements: a plain state machine. Inputs (pull, receive,
//! settle, new messages, timer ticks, a forgotten group, the outcome of a
//! dead-letter write or an offset commit) come in with `now` in
//! milliseconds; outputs are [`Effects`] (answers to requests, dead letters
//! to append, offsets to commit) plus [`QueueDelivery::next_wakeup`], the
//! one time the caller must tick it again. It reads the queue through
//! [`QueueLog`] and does no other I/O, so every rule is unit-tested with an
//! in-memory log and a fake clock (`tests.rs`).
//!
//! Parked pulls and receives share one [`LongPolls`] table: a pull waits
//! for a message at its offset, a receive for its group's cursor to have
//! something ready (a new message, a retry coming due, a settle that
//! unblocks an orderly queue). Both end at their deadline. A request whose
//! requester is gone ([`Requester::is_gone`]) is dropped without being
//! served, so it claims nothing nobody would acknowledge.

mod serve;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use bytes::Bytes;

use super::cursor::{Cursor, DeadLetter};
use super::expiry::{raw_expire_at, ExpiryQueue};
use super::long_poll::LongPolls;
use super::RetryPolicy;
use crate::error::BrokerError;
use crate::message::TagFilter;
use crate::store::append::AppendEntry;

pub use serve::serve_pull;

/// Most messages one pull or receive returns; larger requests are capped.
pub const MAX_BATCH_COUNT: u32 = 1024;
/// How often parked requests of gone requesters are dropped (they are also
/// dropped whenever parked requests are served).
pub const SWEEP_EVERY_MS: u64 = 1_000;
/// Wait before writing a failed dead letter again.
pub const DEAD_LETTER_RETRY_MS: u64 = 1_000;
/// Records the start-up TTL scan reads per tick.
pub const SCAN_CHUNK: u64 = 2048;

/// A consume-queue entry: where a message sits in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEntry {
    /// Where the record starts in the commitlog.
    pub phys: u64,
    /// Record size in bytes.
    pub size: u32,
    /// Hash of the record's tag (0 without one).
    pub tag_hash: u64,
}

/// Collects records for a pull answer without copying them: neighbouring
/// records become one chunk (the store's `commitlog::Gather`).
pub trait RecordGather {
    /// Adds the `size` bytes at `phys` and returns them for inspection.
    fn push(&mut self, phys: u64, size: usize) -> io::Result<&[u8]>;
    /// Takes back the last `size` bytes pushed (a record filtered out).
    fn pop(&mut self, size: usize);
    /// Bytes gathered so far.
    fn len(&self) -> usize;
    /// True when nothing is gathered.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The gathered bytes, in order, as chunks.
    fn finish(self) -> Vec<Bytes>;
}

impl RecordGather for crate::store::commitlog::Gather<'_> {
    fn push(&mut self, phys: u64, size: usize) -> io::Result<&[u8]> {
        crate::store::commitlog::Gather::push(self, phys, size).map_err(io::Error::from)
    }
    fn pop(&mut self, size: usize) {
        crate::store::commitlog::Gather::pop(self, size)
    }
    fn len(&self) -> usize {
        crate::store::commitlog::Gather::len(self)
    }
    fn finish(self) -> Vec<Bytes> {
        crate::store::commitlog::Gather::finish(self)
    }
}

/// What the state machine reads of one queue and its topic: the store in
/// the broker, an in-memory log in tests.
pub trait QueueLog {
    /// The gather [`QueueLog::gather`] returns.
    type Gather<'a>: RecordGather
    where
        Self: 'a;
    /// `(min, max)` queue offsets (max is one past the newest), or `None`
    /// when the queue was never written.
    fn bounds(&self) -> Option<(u64, u64)>;
    /// The entry at a queue offset.
    fn entry(&self, offset: u64) -> Option<LogEntry>;
    /// A whole record's bytes.
    fn record(&self, phys: u64, size: u32) -> io::Result<Bytes>;
    /// An empty gather over the log.
    fn gather(&self) -> Self::Gather<'_>;
    /// The topic's default TTL.
    fn topic_ttl(&self) -> Option<u64>;
    /// A group's committed offset on this queue.
    fn committed(&self, group: &str) -> Option<u64>;
    /// Whether the record at `phys` must have its CRC checked before it
    /// is served (the store checks what it read from disk at start, not
    /// what it appended since).
    fn needs_check(&self, phys: u64) -> bool {
        let _ = phys;
        true
    }
    /// A reader found the record at `phys` damaged (its CRC check failed)
    /// and skipped it: count and log it.
    fn note_corrupt(&self, phys: u64, size: u32) {
        let _ = (phys, size);
    }
}

/// Whoever waits for a parked request's answer.
pub trait Requester {
    /// True once nobody waits for the answer any more (its connection
    /// closed): the request is dropped instead of served.
    fn is_gone(&self) -> bool;
}

/// A pull (`PULL_MESSAGE`): read from an offset, no delivery tracking.
#[derive(Debug, Clone)]
pub struct PullQuery {
    /// First queue offset wanted.
    pub offset: u64,
    /// Most messages wanted (capped at [`MAX_BATCH_COUNT`]).
    pub max_count: u32,
    /// How long to wait when nothing is there (already capped).
    pub max_wait_ms: u64,
    /// Which tags are wanted.
    pub filter: TagFilter,
}

/// A receive (`RECEIVE_MESSAGE`): take messages for a group, tracked until
/// settled.
#[derive(Debug, Clone)]
pub struct ReceiveQuery {
    /// Consumer group.
    pub group: String,
    /// Where a group with no committed offset on this queue starts.
    pub start_offset: u64,
    /// Most messages wanted (capped at [`MAX_BATCH_COUNT`]).
    pub max_count: u32,
    /// How long to wait when nothing is ready (already capped).
    pub max_wait_ms: u64,
    /// How long a delivered message stays in flight before redelivery.
    pub ack_timeout_ms: u64,
    /// One message at a time, in order.
    pub orderly: bool,
    /// The group's tag expression; other messages are settled unseen.
    pub tag_expression: String,
}

/// How messages are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Processed (`ACK_MESSAGE`).
    Ack,
    /// Rejected (`NACK_MESSAGE`): redeliver after the backoff (`requeue`)
    /// or dead-letter now.
    Nack {
        /// Redeliver after the backoff.
        requeue: bool,
    },
}

/// An ACK or NACK of some of a group's messages.
#[derive(Debug, Clone)]
pub struct SettleQuery {
    /// Consumer group.
    pub group: String,
    /// Queue offsets settled.
    pub offsets: Vec<u64>,
    /// How.
    pub verdict: Verdict,
}

/// How a pull or receive went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullOutcome {
    /// At least one message is returned.
    Found,
    /// Nothing at or after the offset (after waiting).
    NoNewMessage,
    /// Entries were scanned but none matched the tag expression.
    NoMatched,
    /// The offset was outside `[min, max]`; `next_offset` says where to go.
    OffsetMoved,
}

/// A pull's answer.
#[derive(Debug, Clone)]
pub struct PullBatch {
    /// How it went.
    pub status: PullOutcome,
    /// Where the next pull should start.
    pub next_offset: u64,
    /// Smallest queue offset still stored.
    pub min_offset: u64,
    /// One past the newest queue offset.
    pub max_offset: u64,
    /// Records returned.
    pub count: u32,
    /// The records, back to back in their stored format, as chunks of the
    /// log (not copied).
    pub records: Vec<Bytes>,
}

impl PullBatch {
    /// True when nothing was found at the end of the queue, so a long poll
    /// may wait for new data.
    pub fn may_wait(&self) -> bool {
        matches!(self.status, PullOutcome::NoNewMessage | PullOutcome::NoMatched)
    }
}

/// One message handed to a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// 1 for the first delivery, 2 for the first redelivery, …
    pub delivery: u32,
    /// The record in its stored format.
    pub record: Bytes,
}

/// A receive's answer.
#[derive(Debug, Clone)]
pub struct ReceivedBatch {
    /// `Found` or `NoNewMessage`.
    pub status: PullOutcome,
    /// The group's committed offset on this queue.
    pub committed: u64,
    /// One past the newest queue offset.
    pub max_offset: u64,
    /// The messages.
    pub deliveries: Vec<Delivered>,
}

/// The answer to a pull or a receive.
#[derive(Debug, Clone)]
pub enum Answer {
    /// To a pull.
    Pull(Result<PullBatch, BrokerError>),
    /// To a receive.
    Receive(Result<ReceivedBatch, BrokerError>),
}

/// Dead letters to append to a group's dead-letter topic (queue 0, created
/// when missing). Report the outcome with
/// [`QueueDelivery::dead_letters_stored`] or
/// [`QueueDelivery::dead_letters_failed`].
#[derive(Debug, Clone)]
pub struct DeadLetterAppend {
    /// The group.
    pub group: String,
    /// `%DLQ%<group>`.
    pub topic: String,
    /// The copies, with the origin properties added.
    pub entries: Vec<AppendEntry>,
    /// What they are copies of (offsets, delivery counts, reasons).
    pub letters: Vec<DeadLetter>,
}

/// What the caller must do after an input.
#[derive(Debug)]
pub struct Effects<W> {
    /// Answers to send.
    pub replies: Vec<(W, Answer)>,
    /// Dead letters to write.
    pub dead_letters: Vec<DeadLetterAppend>,
    /// Committed offsets to write, `(group, offset)`; report the outcome
    /// with [`QueueDelivery::commit_done`].
    pub commits: Vec<(String, u64)>,
    /// Groups seen for the first time: record their subscription.
    pub subscribe: Vec<String>,
    /// Messages handed out (pulls and receives).
    pub delivered: u64,
    /// Redeliveries handed out, per group.
    pub redelivered: Vec<(String, u64)>,
}

impl<W> Default for Effects<W> {
    fn default() -> Self {
        Effects {
            replies: Vec::new(),
            dead_letters: Vec::new(),
            commits: Vec::new(),
            subscribe: Vec::new(),
            delivered: 0,
            redelivered: Vec::new(),
        }
    }
}

/// A parked request.
#[derive(Debug)]
enum Wait {
    Pull(PullQuery),
    Receive(ReceiveQuery),
}

#[derive(Debug)]
struct Waiter<W> {
    wait: Wait,
    requester: W,
}

/// One group's delivery on the queue.
#[derive(Debug)]
struct Group {
    cursor: Cursor,
    orderly: bool,
    filter: TagFilter,
    /// The expression `filter` was parsed from.
    tag_expression: String,
    /// Committed offset last written (None: never written).
    persisted: Option<u64>,
    /// Dead letters whose write failed, to try again.
    failed: Vec<DeadLetter>,
}

impl Group {
    fn new(start: u64, persisted: Option<u64>) -> Group {
        Group {
            cursor: Cursor::new(start),
            orderly: false,
            filter: TagFilter::All,
            tag_expression: "*".to_string(),
            persisted,
            failed: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CommitState {
    Idle,
    Due(u64),
    Writing,
}

/// The delivery state of one queue (see the module docs). `W` is whatever
/// the caller answers a parked request through.
#[derive(Debug)]
pub struct QueueDelivery<W> {
    topic: Arc<str>,
    queue_id: u32,
    policy: RetryPolicy,
    commit_interval_ms: u64,
    groups: HashMap<String, Group>,
    polls: LongPolls<Waiter<W>>,
    expiries: ExpiryQueue,
    commit: CommitState,
    /// When failed dead letters are written again.
    dead_letter_retry: Option<u64>,
    /// When parked requests of gone requesters are next dropped.
    sweep_at: Option<u64>,
    /// Start-up TTL scan: next offset to read and where to stop; the next
    /// chunk is read on the next tick, at once.
    scan: Option<(u64, u64)>,
}

impl<W: Requester> QueueDelivery<W> {
    /// The delivery of (topic, queue): retries follow `policy`; committed
    /// offsets are written at most every `commit_interval_ms`.
    pub fn new(topic: Arc<str>, queue_id: u32, policy: RetryPolicy, commit_interval_ms: u64) -> Self {
        QueueDelivery {
            topic,
            queue_id,
            policy,
            commit_interval_ms,
            groups: HashMap::new(),
            polls: LongPolls::default(),
            expiries: ExpiryQueue::default(),
            commit: CommitState::Idle,
            dead_letter_retry: None,
            sweep_at: None,
            scan: None,
        }
    }

    /// After a start: the groups that receive this queue with their
    /// committed offsets. Their backlog's TTLs are read in chunks of
    /// [`SCAN_CHUNK`] records, one per tick, the first at once.
    pub fn resume(&mut self, groups: Vec<(String, u64)>, log: &impl QueueLog) {
        let mut lowest: Option<u64> = None;
        for (group, committed) in groups {
            lowest = Some(lowest.map_or(committed, |l| l.min(committed)));
            self.groups.insert(group, Group::new(committed, Some(committed)));
        }
        let end = log.bounds().map_or(0, |(_, max)| max);
        if let Some(from) = lowest.filter(|from| *from < end) {
            self.scan = Some((from, end));
            self.scan_chunk(log);
        }
    }

    /// A pull: answered at once, or parked until a message at its next
    /// offset arrives (see [`QueueDelivery::new_messages`]) or its wait ends.
    pub fn pull(&mut self, now: u64, q: PullQuery, requester: W, log: &impl QueueLog, fx: &mut Effects<W>) {
        let served = serve_pull(log, &self.topic, self.queue_id, now, q.offset, q.max_count, &q.filter);
        match served {
            Ok(b) if b.may_wait() && q.max_wait_ms > 0 => {
                let deadline = now.saturating_add(q.max_wait_ms);
                self.polls.park(
                    b.next_offset,
                    deadline,
                    Waiter {
                        wait: Wait::Pull(q),
                        requester,
                    },
                );
            }
            other => {
                if let Ok(b) = &other {
                    fx.delivered += u64::from(b.count);
                }
                fx.replies.push((requester, Answer::Pull(other)));
            }
        }
        self.after_change(now);
    }

    /// A receive: answered at once with what the group may have now, or
    /// parked until something is ready or its wait ends.
    pub fn receive(&mut self, now: u64, q: ReceiveQuery, requester: W, log: &impl QueueLog, fx: &mut Effects<W>) {
        match self.serve_receive(now, &q, log, fx) {
            Some(batch) => fx.replies.push((requester, Answer::Receive(Ok(batch)))),
            None if q.max_wait_ms == 0 => {
                let empty = self.empty_receive(&q.group, log);
                fx.replies.push((requester, Answer::Receive(Ok(empty))));
            }
            None => {
                let deadline = now.saturating_add(q.max_wait_ms);
                // A receive waits for its group's cursor, not for an offset.
                self.polls.park(
                    0,
                    deadline,
                    Waiter {
                        wait: Wait::Receive(q),
                        requester,
                    },
                );
            }
        }
        self.after_change(now);
    }

    /// Acknowledges or rejects a group's messages; returns how many were
    /// in flight (or waiting) and are now settled or requeued. Unknown
    /// groups (nothing delivered since this state machine started) settle
    /// nothing: their messages are delivered again.
    pub fn settle(&mut self, now: u64, q: SettleQuery, log: &impl QueueLog, fx: &mut Effects<W>) -> u32 {
        let Some(g) = self.groups.get_mut(&q.group) else {
            return 0;
        };
        let mut settled = 0;
        let mut dead = Vec::new();
        for &offset in &q.offsets {
            match q.verdict {
                Verdict::Ack => settled += u32::from(g.cursor.ack(offset)),
                Verdict::Nack { requeue } => match g.cursor.nack(offset, requeue, now, &self.policy) {
                    None => {}
                    Some(Ok(())) => settled += 1,
                    Some(Err(dl)) => {
                        settled += 1;
                        dead.push(dl);
                    }
                },
            }
        }
        self.dead_letter(&q.group, dead, log, fx);
        self.serve_parked(now, None, log, fx);
        self.after_change(now);
        settled
    }

    /// The queue now ends at `end`; `expiring` are new messages with a TTL,
    /// `(queue offset, expiry time)`. Serves what waited for them.
    pub fn new_messages(
        &mut self,
        now: u64,
        end: u64,
        expiring: &[(u64, u64)],
        log: &impl QueueLog,
        fx: &mut Effects<W>,
    ) {
        for &(offset, deadline) in expiring {
            self.expiries.add(deadline, offset);
        }
        self.serve_parked(now, Some(end), log, fx);
        self.after_change(now);
    }

    /// Time passed: ack deadlines, retries, TTLs, long-poll deadlines,
    /// pending commits and dead-letter retries, the sweep and the start-up
    /// scan that are due at `now`.
    pub fn tick(&mut self, now: u64, log: &impl QueueLog, fx: &mut Effects<W>) {
        self.scan_chunk(log);
        if self.sweep_at.is_some_and(|at| at <= now) {
            self.sweep_at = None;
            self.drop_gone();
        }
        let expired = self.expiries.take_due(now);
        let mut dead: Vec<(String, Vec<DeadLetter>)> = Vec::new();
        for (name, g) in self.groups.iter_mut() {
            let mut dls = g.cursor.expire_deadlines(now, &self.policy);
            dls.extend(expired.iter().filter_map(|o| g.cursor.expire(*o)));
            if !dls.is_empty() {
                dead.push((name.clone(), dls));
            }
        }
        if self.dead_letter_retry.is_some_and(|at| at <= now) {
            self.dead_letter_retry = None;
            for (name, g) in self.groups.iter_mut() {
                let failed = std::mem::take(&mut g.failed);
                if !failed.is_empty() {
                    dead.push((name.clone(), failed));
                }
            }
        }
        for (group, dls) in dead {
            self.dead_letter(&group, dls, log, fx);
        }
        // Parked pulls whose wait ended are answered "nothing new".
        for p in self
            .polls
            .take_matching(|p| p.deadline <= now && matches!(p.waiter.wait, Wait::Pull(_)))
        {
            let answer = Answer::Pull(Ok(empty_pull(p.offset, log)));
            fx.replies.push((p.waiter.requester, answer));
        }
        self.serve_parked(now, None, log, fx);
        if let CommitState::Due(at) = self.commit {
            if at <= now {
                self.commit = CommitState::Idle;
                let commits: Vec<(String, u64)> = self
                    .groups
                    .iter()
                    .filter(|(_, g)| g.persisted != Some(g.cursor.committed()))
                    .map(|(name, g)| (name.clone(), g.cursor.committed()))
                    .collect();
                if !commits.is_empty() {
                    self.commit = CommitState::Writing;
                    fx.commits = commits;
                }
            }
        }
        self.after_change(now);
    }

    /// Forgets a group's state (its offsets were reset): a later receive
    /// starts from its committed offset again.
    pub fn forget_group(&mut self, group: &str) {
        self.groups.remove(group);
    }

    /// The dead letters of a [`DeadLetterAppend`] are stored: they are
    /// settled, which may unblock the queue. False when the group was
    /// forgotten meanwhile.
    pub fn dead_letters_stored(
        &mut self,
        now: u64,
        group: &str,
        letters: &[DeadLetter],
        log: &impl QueueLog,
        fx: &mut Effects<W>,
    ) -> bool {
        let Some(g) = self.groups.get_mut(group) else {
            return false;
        };
        for dl in letters {
            g.cursor.dead_lettered(dl.offset);
        }
        self.serve_parked(now, None, log, fx);
        self.after_change(now);
        true
    }

    /// Writing the dead letters of a [`DeadLetterAppend`] failed: they are
    /// written again after [`DEAD_LETTER_RETRY_MS`].
    pub fn dead_letters_failed(&mut self, now: u64, group: &str, letters: Vec<DeadLetter>) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        g.failed.extend(letters);
        let at = now.saturating_add(DEAD_LETTER_RETRY_MS);
        self.dead_letter_retry = Some(self.dead_letter_retry.map_or(at, |t| t.min(at)));
        self.after_change(now);
    }

    /// The commits of [`Effects::commits`] were written (`ok`) or failed
    /// (they are tried again after the commit interval).
    pub fn commit_done(&mut self, now: u64, commits: &[(String, u64)], ok: bool) {
        self.commit = CommitState::Idle;
        if ok {
            for (group, offset) in commits {
                if let Some(g) = self.groups.get_mut(group) {
                    g.persisted = Some(*offset);
                }
            }
        }
        self.after_change(now);
    }

    /// Drops parked requests whose requester is gone; returns how many.
    pub fn drop_gone(&mut self) -> usize {
        self.polls.take_matching(|p| p.waiter.requester.is_gone()).len()
    }

    /// The queue is going away: every parked request is answered with
    /// `error` (or just dropped without one) and all state is forgotten.
    pub fn retire(&mut self, error: Option<BrokerError>, fx: &mut Effects<W>) {
        for p in self.polls.take_all() {
            if let Some(e) = &error {
                let answer = match p.waiter.wait {
                    Wait::Pull(_) => Answer::Pull(Err(e.clone())),
                    Wait::Receive(_) => Answer::Receive(Err(e.clone())),
                };
                fx.replies.push((p.waiter.requester, answer));
            }
        }
        *self = QueueDelivery::new(
            self.topic.clone(),
            self.queue_id,
            self.policy.clone(),
            self.commit_interval_ms,
        );
    }

    /// When [`QueueDelivery::tick`] must run next: the earliest ack
    /// deadline, retry, TTL, parked request's end, commit, dead-letter
    /// retry, sweep or scan chunk.
    pub fn next_wakeup(&self, now: u64) -> Option<u64> {
        let commit = match self.commit {
            CommitState::Due(at) => Some(at),
            _ => None,
        };
        // A cursor's retries already due wait for a receive, not a tick.
        let cursors = self.groups.values().filter_map(|g| g.cursor.next_wakeup(now));
        cursors
            .chain(self.expiries.next_deadline())
            .chain(self.polls.next_deadline())
            .chain(commit)
            .chain(self.dead_letter_retry)
            .chain(self.sweep_at)
            .chain(self.scan.map(|_| now))
            .min()
    }

    /// Parked (pulls, receives).
    pub fn parked(&self) -> (usize, usize) {
        let receives = self.polls.count(|w| matches!(w.wait, Wait::Receive(_)));
        (self.polls.len() - receives, receives)
    }

    /// Each group's in-flight count.
    pub fn in_flight(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.groups
            .iter()
            .map(|(n, g)| (n.as_str(), g.cursor.stats().in_flight))
    }

    /// Answers parked requests that can now be served or whose wait ended:
    /// receives whose group has something ready, and (with the queue's new
    /// `end`) pulls waiting for an offset below it.
    fn serve_parked(&mut self, now: u64, end: Option<u64>, log: &impl QueueLog, fx: &mut Effects<W>) {
        if self.polls.is_empty() {
            return;
        }
        self.drop_gone();
        let max_offset = log.bounds().map_or(0, |(_, max)| max);
        let groups = &self.groups;
        let policy = &self.policy;
        // Most wake-ups serve nobody: ask the cursor before claiming.
        let due = self.polls.take_matching(|p| match &p.waiter.wait {
            Wait::Pull(_) => end.is_some_and(|end| p.offset < end),
            Wait::Receive(q) => {
                p.deadline <= now
                    || groups
                        .get(&q.group)
                        .is_none_or(|g| g.cursor.has_ready(now, max_offset, g.orderly, policy))
            }
        });
        for p in due {
            match p.waiter.wait {
                Wait::Pull(q) => {
                    let served = serve_pull(log, &self.topic, self.queue_id, now, p.offset, q.max_count, &q.filter);
                    match served {
                        // Only filtered-out messages arrived: wait further on.
                        Ok(b) if b.may_wait() => self.polls.park(
                            b.next_offset,
                            p.deadline,
                            Waiter {
                                wait: Wait::Pull(q),
                                requester: p.waiter.requester,
                            },
                        ),
                        other => {
                            if let Ok(b) = &other {
                                fx.delivered += u64::from(b.count);
                            }
                            fx.replies.push((p.waiter.requester, Answer::Pull(other)));
                        }
                    }
                }
                Wait::Receive(q) => match self.serve_receive(now, &q, log, fx) {
                    Some(batch) => fx.replies.push((p.waiter.requester, Answer::Receive(Ok(batch)))),
                    None if p.deadline <= now => {
                        let empty = self.empty_receive(&q.group, log);
                        fx.replies.push((p.waiter.requester, Answer::Receive(Ok(empty))));
                    }
                    None => self.polls.park(
                        p.offset,
                        p.deadline,
                        Waiter {
                            wait: Wait::Receive(q),
                            requester: p.waiter.requester,
                        },
                    ),
                },
            }
        }
    }

    /// Schedules a commit when a committed offset moved, and the sweep
    /// while anything is parked.
    fn after_change(&mut self, now: u64) {
        if self.commit == CommitState::Idle && self.groups.values().any(|g| g.persisted != Some(g.cursor.committed())) {
            self.commit = CommitState::Due(now.saturating_add(self.commit_interval_ms));
        }
        if self.polls.is_empty() {
            self.sweep_at = None;
        } else if self.sweep_at.is_none() {
            self.sweep_at = Some(now.saturating_add(SWEEP_EVERY_MS));
        }
    }

    /// Reads the TTLs of the next chunk of the start-up scan.
    fn scan_chunk(&mut self, log: &impl QueueLog) {
        let Some((from, end)) = self.scan else {
            return;
        };
        let topic_ttl = log.topic_ttl();
        let stop = end.min(from.saturating_add(SCAN_CHUNK));
        for offset in from..stop {
            let Some(e) = log.entry(offset) else { continue };
            let Ok(raw) = log.record(e.phys, e.size) else {
                continue;
            };
            if let Some(at) = raw_expire_at(&raw, topic_ttl) {
                self.expiries.add(at, offset);
            }
        }
        self.scan = (stop < end).then_some((stop, end));
    }
}

/// The answer to a parked pull whose wait ended.
fn empty_pull(offset: u64, log: &impl QueueLog) -> PullBatch {
    let (min, max) = log.bounds().unwrap_or((0, 0));
    PullBatch {
        status: PullOutcome::NoNewMessage,
        next_offset: offset,
        min_offset: min,
        max_offset: max,
        count: 0,
        records: Vec::new(),
    }
}
