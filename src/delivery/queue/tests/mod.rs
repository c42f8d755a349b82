//! The queue's delivery rules over an in-memory log, driven by a fake
//! clock (plain millisecond numbers); `model` runs seeded random
//! operations against a model of the consumer's side.

mod model;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use super::*;
use crate::delivery::DeadLetterReason;
use crate::message::props;
use crate::store::record::{RecordFields, StoredRecord};

/// A queue in memory: records encoded as the store encodes them.
#[derive(Default)]
struct MemLog {
    data: Vec<u8>,
    entries: Vec<LogEntry>,
    exists: bool,
    topic_ttl: Option<u64>,
    committed: HashMap<String, u64>,
}

impl MemLog {
    fn new() -> MemLog {
        MemLog {
            exists: true,
            ..MemLog::default()
        }
    }

    /// Appends a message stored at `at`; returns its offset.
    fn push(&mut self, tag: Option<&str>, at: u64, ttl: Option<u64>) -> u64 {
        let offset = self.entries.len() as u64;
        let mut properties = BTreeMap::new();
        if let Some(t) = tag {
            properties.insert(crate::message::PROPERTY_TAGS.to_string(), t.to_string());
        }
        if let Some(t) = ttl {
            properties.insert(props::TTL.to_string(), t.to_string());
        }
        let body = format!("m{offset}");
        let fields = RecordFields {
            queue_id: 0,
            flags: 0,
            queue_offset: offset,
            phys_offset: self.data.len() as u64,
            born_timestamp: at,
            store_timestamp: at,
            reconsume_times: 0,
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_host: "127.0.0.1:2".parse().unwrap(),
            topic: "t",
            properties: &properties,
            body: body.as_bytes(),
        };
        let mut buf = vec![0; fields.encoded_len()];
        fields.encode_into(&mut buf);
        self.entries.push(LogEntry {
            phys: self.data.len() as u64,
            size: buf.len() as u32,
            tag_hash: tag.map_or(0, crate::message::tag_hash),
        });
        self.data.extend_from_slice(&buf);
        offset
    }

    fn end(&self) -> u64 {
        self.entries.len() as u64
    }
}

struct MemGather<'a> {
    log: &'a MemLog,
    buf: Vec<u8>,
}

impl RecordGather for MemGather<'_> {
    fn push(&mut self, phys: u64, size: usize) -> io::Result<&[u8]> {
        let start = phys as usize;
        let bytes = self
            .log
            .data
            .get(start..start + size)
            .ok_or_else(|| io::Error::other("past the end"))?;
        self.buf.extend_from_slice(bytes);
        Ok(&self.buf[self.buf.len() - size..])
    }
    fn pop(&mut self, size: usize) {
        self.buf.truncate(self.buf.len().saturating_sub(size));
    }
    fn len(&self) -> usize {
        self.buf.len()
    }
    fn finish(self) -> Vec<Bytes> {
        if self.buf.is_empty() {
            Vec::new()
        } else {
            vec![Bytes::from(self.buf)]
        }
    }
}

impl QueueLog for MemLog {
    type Gather<'a> = MemGather<'a>;

    fn bounds(&self) -> Option<(u64, u64)> {
        self.exists.then_some((0, self.end()))
    }
    fn entry(&self, offset: u64) -> Option<LogEntry> {
        self.entries.get(offset as usize).copied()
    }
    fn record(&self, phys: u64, size: u32) -> io::Result<Bytes> {
        let start = phys as usize;
        self.data
            .get(start..start + size as usize)
            .map(Bytes::copy_from_slice)
            .ok_or_else(|| io::Error::other("past the end"))
    }
    fn gather(&self) -> MemGather<'_> {
        MemGather {
            log: self,
            buf: Vec::new(),
        }
    }
    fn topic_ttl(&self) -> Option<u64> {
        self.topic_ttl
    }
    fn committed(&self, group: &str) -> Option<u64> {
        self.committed.get(group).copied()
    }
}

/// A requester: an id and a "connection closed" flag.
#[derive(Debug, Clone)]
struct Req(u32, Rc<Cell<bool>>);

impl Requester for Req {
    fn is_gone(&self) -> bool {
        self.1.get()
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        backoff_ms: vec![100, 200, 400],
        max_retries: 2,
        max_unsettled: 1_000,
    }
}

const COMMIT_EVERY: u64 = 50;
const ACK_TIMEOUT: u64 = 1_000;

/// The state machine, its log and a fake clock.
struct Rig {
    m: QueueDelivery<Req>,
    log: MemLog,
    now: u64,
    next_id: u32,
    /// Answers received so far, by requester id.
    answers: HashMap<u32, Answer>,
    /// Dead-letter writes asked for and not yet reported.
    dead_letters: Vec<DeadLetterAppend>,
    /// Commits asked for and not yet reported.
    commits: Vec<(String, u64)>,
    subscribed: Vec<String>,
}

impl Rig {
    fn new(policy: RetryPolicy) -> Rig {
        Rig {
            m: QueueDelivery::new(Arc::from("t"), 0, policy, COMMIT_EVERY),
            log: MemLog::new(),
            now: 1_000_000,
            next_id: 0,
            answers: HashMap::new(),
            dead_letters: Vec::new(),
            commits: Vec::new(),
            subscribed: Vec::new(),
        }
    }

    fn take(&mut self, fx: Effects<Req>) {
        for (req, answer) in fx.replies {
            assert!(self.answers.insert(req.0, answer).is_none(), "answered twice");
        }
        self.dead_letters.extend(fx.dead_letters);
        self.commits.extend(fx.commits);
        self.subscribed.extend(fx.subscribe);
    }

    fn requester(&mut self) -> (u32, Req) {
        self.next_id += 1;
        (self.next_id, Req(self.next_id, Rc::new(Cell::new(false))))
    }

    fn query(group: &str, max: u32, wait: u64, orderly: bool) -> ReceiveQuery {
        ReceiveQuery {
            group: group.to_string(),
            start_offset: 0,
            max_count: max,
            max_wait_ms: wait,
            ack_timeout_ms: ACK_TIMEOUT,
            orderly,
            tag_expression: "*".to_string(),
        }
    }

    /// Sends a receive; returns its id.
    fn send_receive(&mut self, q: ReceiveQuery) -> (u32, Req) {
        let (id, req) = self.requester();
        let mut fx = Effects::default();
        self.m.receive(self.now, q, req.clone(), &self.log, &mut fx);
        self.take(fx);
        (id, req)
    }

    fn answer(&mut self, id: u32) -> Option<ReceivedBatch> {
        match self.answers.remove(&id)? {
            Answer::Receive(r) => Some(r.unwrap()),
            Answer::Pull(_) => panic!("a receive got a pull's answer"),
        }
    }

    fn pull_answer(&mut self, id: u32) -> Option<PullBatch> {
        match self.answers.remove(&id)? {
            Answer::Pull(r) => Some(r.unwrap()),
            Answer::Receive(_) => panic!("a pull got a receive's answer"),
        }
    }

    /// A receive that does not wait: (offset, delivery) of what it got.
    fn receive(&mut self, group: &str, max: u32) -> Vec<(u64, u32)> {
        self.receive_q(Self::query(group, max, 0, false))
    }

    fn receive_q(&mut self, q: ReceiveQuery) -> Vec<(u64, u32)> {
        let (id, _) = self.send_receive(q);
        got(&self.answer(id).expect("answered at once"))
    }

    fn settle(&mut self, group: &str, offsets: &[u64], verdict: Verdict) -> u32 {
        let mut fx = Effects::default();
        let q = SettleQuery {
            group: group.to_string(),
            offsets: offsets.to_vec(),
            verdict,
        };
        let n = self.m.settle(self.now, q, &self.log, &mut fx);
        self.take(fx);
        n
    }

    fn append(&mut self, tag: Option<&str>, ttl: Option<u64>) -> u64 {
        let offset = self.log.push(tag, self.now, ttl);
        let expiring: Vec<(u64, u64)> = ttl.map(|t| (offset, self.now + t)).into_iter().collect();
        let mut fx = Effects::default();
        self.m
            .new_messages(self.now, self.log.end(), &expiring, &self.log, &mut fx);
        self.take(fx);
        offset
    }

    /// Moves the clock to `at` and ticks (as the actor's timer would, at
    /// every wake-up asked for on the way).
    fn advance_to(&mut self, at: u64) {
        while let Some(next) = self.m.next_wakeup(self.now).filter(|n| *n <= at) {
            self.now = self.now.max(next);
            let mut fx = Effects::default();
            self.m.tick(self.now, &self.log, &mut fx);
            self.take(fx);
        }
        self.now = at;
        let mut fx = Effects::default();
        self.m.tick(self.now, &self.log, &mut fx);
        self.take(fx);
    }

    fn advance(&mut self, ms: u64) {
        self.advance_to(self.now + ms);
    }

    /// Reports every pending dead-letter write as stored; returns them.
    fn store_dead_letters(&mut self) -> Vec<DeadLetterAppend> {
        let pending = std::mem::take(&mut self.dead_letters);
        for a in &pending {
            let mut fx = Effects::default();
            self.m
                .dead_letters_stored(self.now, &a.group, &a.letters, &self.log, &mut fx);
            self.take(fx);
        }
        pending
    }

    /// Reports the commits asked for as written; returns them.
    fn settle_commits(&mut self) -> Vec<(String, u64)> {
        let commits = std::mem::take(&mut self.commits);
        self.m.commit_done(self.now, &commits, true);
        commits
    }

    fn in_flight(&self, group: &str) -> usize {
        self.m.in_flight().find(|(g, _)| *g == group).map_or(0, |(_, n)| n)
    }
}

fn got(batch: &ReceivedBatch) -> Vec<(u64, u32)> {
    batch
        .deliveries
        .iter()
        .map(|d| (StoredRecord::decode(d.record.clone()).unwrap().queue_offset, d.delivery))
        .collect()
}

fn reason(a: &AppendEntry) -> &str {
    &a.properties[props::DLQ_REASON]
}

#[test]
fn receives_claim_in_order_and_acks_move_the_committed_offset() {
    let mut r = Rig::new(policy());
    for _ in 0..5 {
        r.append(None, None);
    }
    assert_eq!(r.receive("g", 2), [(0, 1), (1, 1)]);
    assert_eq!(r.subscribed, ["g"], "a new group is recorded once");
    assert_eq!(r.receive("g", 10), [(2, 1), (3, 1), (4, 1)]);
    assert!(r.receive("g", 10).is_empty(), "everything is in flight");
    assert_eq!(r.in_flight("g"), 5);
    assert_eq!(r.settle("g", &[1, 3], Verdict::Ack), 2);
    assert_eq!(r.settle("g", &[1], Verdict::Ack), 0, "a second ack settles nothing");
    assert_eq!(r.settle("other", &[0], Verdict::Ack), 0, "unknown group");
    assert_eq!(r.settle("g", &[0], Verdict::Ack), 1);
    // The committed offset stops at the first unsettled message, and is
    // written once the commit interval has passed.
    assert!(r.commits.is_empty());
    r.advance(COMMIT_EVERY);
    assert_eq!(r.commits, [("g".to_string(), 2)]);
    let commits = std::mem::take(&mut r.commits);
    r.m.commit_done(r.now, &commits, true);
    r.advance(10 * COMMIT_EVERY);
    assert!(r.commits.is_empty(), "nothing new to commit");
    let (id, _) = r.send_receive(Rig::query("g", 1, 0, false));
    assert_eq!(r.answer(id).unwrap().committed, 2);
}

#[test]
fn a_failed_commit_is_written_again_after_the_interval() {
    let mut r = Rig::new(policy());
    r.append(None, None);
    assert_eq!(r.receive("g", 1), [(0, 1)]);
    r.settle("g", &[0], Verdict::Ack);
    r.advance(COMMIT_EVERY);
    let commits = std::mem::take(&mut r.commits);
    assert_eq!(commits, [("g".to_string(), 1)]);
    r.m.commit_done(r.now, &commits, false);
    r.advance(COMMIT_EVERY - 1);
    assert!(r.commits.is_empty());
    r.advance(1);
    assert_eq!(r.commits, [("g".to_string(), 1)]);
}

#[test]
fn a_nack_with_requeue_redelivers_after_the_backoff() {
    let mut r = Rig::new(policy());
    r.append(None, None);
    r.append(None, None);
    assert_eq!(r.receive("g", 1), [(0, 1)]);
    assert_eq!(r.settle("g", &[0], Verdict::Nack { requeue: true }), 1);
    // Waits 100 ms (the first backoff); the next message is not held up.
    assert_eq!(r.receive("g", 5), [(1, 1)]);
    r.advance(99);
    assert!(r.receive("g", 5).is_empty());
    r.advance(1);
    assert_eq!(r.receive("g", 5), [(0, 2)]);
    // The second failure waits the second step.
    r.settle("g", &[0], Verdict::Nack { requeue: true });
    r.advance(199);
    assert!(r.receive("g", 5).is_empty());
    r.advance(1);
    assert_eq!(r.receive("g", 5), [(0, 3)]);
}

#[test]
fn a_parked_receive_is_woken_when_a_retry_comes_due() {
    let mut r = Rig::new(policy());
    r.append(None, None);
    assert_eq!(r.receive("g", 1), [(0, 1)]);
    r.advance(COMMIT_EVERY);
    assert_eq!(
        r.settle_commits(),
        [("g".to_string(), 0)],
        "a new group's start is committed"
    );
    r.settle("g", &[0], Verdict::Nack { requeue: true });
    let (id, _) = r.send_receive(Rig::query("g", 1, 5_000, false));
    assert!(r.answers.is_empty(), "parked");
    assert_eq!(r.m.parked(), (0, 1));
    assert_eq!(
        r.m.next_wakeup(r.now),
        Some(r.now + 100),
        "the retry is the earliest wake-up"
    );
    r.advance(100);
    assert_eq!(got(&r.answer(id).unwrap()), [(0, 2)]);
}

#[test]
fn an_unacknowledged_message_is_redelivered_after_its_ack_timeout() {
    let mut r = Rig::new(policy());
    r.append(None, None);
    assert_eq!(r.receive("g", 1), [(0, 1)]);
    r.advance(ACK_TIMEOUT - 1);
    assert!(r.receive("g", 1).is_empty());
    r.advance(1);
    assert_eq!(r.receive("g", 1), [(0, 2)]);
    assert_eq!(r.settle("g", &[0], Verdict::Ack), 1);
}

#[test]
fn too_many_failures_dead_letter_the_message_with_its_reason() {
    let mut r = Rig::new(policy());
    r.append(None, None);
    r.append(None, None);
    // max_retries 2: deliveries 1, 2, 3 may fail; the third failure dead-letters.
    for delivery in 1..=3 {
        r.advance(1_000);
        assert_eq!(r.receive("g", 1), [(0, delivery)]);
        r.settle("g", &[0], Verdict::Nack { requeue: true });
    }
    let stored = r.store_dead_letters();
    assert_eq!(stored.len(), 1);
    let dl = &stored[0];
    assert_eq!((dl.group.as_str(), dl.topic.as_str()), ("g", "%DLQ%g"));
    assert_eq!(dl.letters[0].reason, DeadLetterReason::MaxDeliveries);
    let e = &dl.entries[0];
    assert_eq!(reason(e), "max-deliveries");
    assert_eq!(e.properties[props::ORIGIN_OFFSET], "0");
    assert_eq!(e.properties[props::DELIVERY_COUNT], "3");
    assert_eq!(e.properties[props::DLQ_GROUP], "g");
    assert_eq!(&e.body[..], b"m0");
    r.advance(10_000);
    assert_eq!(r.receive("g", 5), [(1, 1)], "never delivered again");
    // A NACK without requeue dead-letters at once.
    r.settle("g", &[1], Verdict::Nack { requeue: false });
    let stored = r.store_dead_letters();
    assert_eq!(reason(&stored[0].entries[0]), "rejected");
    r.settle_commits();
    r.advance(COMMIT_EVERY);
    assert_eq!(
        r.settle_commits(),
        [("g".to_string(), 2)],
        "dead letters are settled once stored"
    );
}

#[test]
fn a_failed_dead_letter_write_is_tried_again_and_holds_the_committed_offset() {
    let mut r = Rig::new(policy());
    r.append(None, None);
    assert_eq!(r.receive("g", 1), [(0, 1)]);
    r.advance(COMMIT_EVERY);
    r.settle_commits();
    r.settle("g", &[0], Verdict::Nack { requeue: false });
    let failed = std::mem::take(&mut r.dead_letters);
    r.m.dead_letters_failed(r.now, "g", failed[0].letters.clone());
    r.advance(DEAD_LETTER_RETRY_MS - 1);
    assert!(r.dead_letters.is_empty());
    assert!(r.commits.is_empty(), "nothing settled yet");
    r.advance(1);
    assert_eq!(r.dead_letters.len(), 1, "written again");
    r.store_dead_letters();
    r.advance(COMMIT_EVERY);
    assert_eq!(r.commits, [("g".to_string(), 1)]);
}

#[test]
fn an_expired_message_is_dead_lettered_and_never_delivered() {
    let mut r = Rig::new(policy());
    r.receive("g", 1); // the group exists before the messages arrive
    r.append(None, Some(500));
    r.append(None, None);
    r.advance(500);
    let stored = r.store_dead_letters();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].letters[0].offset, 0);
    assert_eq!(reason(&stored[0].entries[0]), "expired");
    // The dead letter keeps the TTL only as ORIGIN_TTL: it never expires
    // again inside the dead-letter topic.
    let dead = &stored[0].entries[0].properties;
    assert_eq!(dead.get(props::TTL), None);
    assert_eq!(dead.get(props::ORIGIN_TTL).map(String::as_str), Some("500"));
    assert_eq!(r.receive("g", 5), [(1, 1)]);
    // A message whose TTL passed before any tick is caught when claimed.
    r.append(None, Some(10));
    r.now += 20;
    assert!(r.receive("g", 5).is_empty());
    let stored = r.store_dead_letters();
    assert_eq!(stored[0].letters[0].reason, DeadLetterReason::Expired);
    // Pulls skip expired messages too.
    let mut fx = Effects::default();
    let (id, req) = r.requester();
    let q = PullQuery {
        offset: 0,
        max_count: 10,
        max_wait_ms: 0,
        filter: TagFilter::All,
    };
    r.m.pull(r.now, q, req, &r.log, &mut fx);
    r.take(fx);
    let b = r.pull_answer(id).unwrap();
    assert_eq!((b.status, b.count, b.next_offset), (PullOutcome::Found, 1, 3));
}

#[test]
fn an_orderly_queue_hands_out_one_message_at_a_time_and_retries_in_place() {
    let mut r = Rig::new(policy());
    for _ in 0..3 {
        r.append(None, None);
    }
    let orderly = |max| Rig::query("g", max, 0, true);
    assert_eq!(r.receive_q(orderly(10)), [(0, 1)]);
    assert!(r.receive_q(orderly(10)).is_empty(), "blocked behind 0");
    r.settle("g", &[0], Verdict::Nack { requeue: true });
    r.advance(100);
    assert_eq!(r.receive_q(orderly(10)), [(0, 2)], "retried in place");
    r.settle("g", &[0], Verdict::Ack);
    assert_eq!(r.receive_q(orderly(10)), [(1, 1)]);
    // A head-of-line message being dead-lettered blocks until it is stored.
    r.settle("g", &[1], Verdict::Nack { requeue: false });
    assert!(r.receive_q(orderly(10)).is_empty());
    let (id, _) = r.send_receive(Rig::query("g", 1, 5_000, true));
    r.store_dead_letters();
    assert_eq!(got(&r.answer(id).unwrap()), [(2, 1)], "the parked receive is served");
}

#[test]
fn parked_receives_and_pulls_wake_on_new_messages_or_end_at_their_deadline() {
    let mut r = Rig::new(policy());
    let (recv, _) = r.send_receive(Rig::query("g", 4, 1_000, false));
    let (pull, req) = r.requester();
    let mut fx = Effects::default();
    let q = PullQuery {
        offset: 0,
        max_count: 4,
        max_wait_ms: 300,
        filter: TagFilter::All,
    };
    r.m.pull(r.now, q, req, &r.log, &mut fx);
    r.take(fx);
    assert_eq!(r.m.parked(), (1, 1), "one table, both kinds");
    r.append(None, None);
    assert_eq!(got(&r.answer(recv).unwrap()), [(0, 1)]);
    let b = r.pull_answer(pull).unwrap();
    assert_eq!((b.status, b.count, b.next_offset), (PullOutcome::Found, 1, 1));
    // Nothing arrives: each ends at its own deadline.
    let (recv, _) = r.send_receive(Rig::query("g", 4, 1_000, false));
    let (pull, req) = r.requester();
    let mut fx = Effects::default();
    let q = PullQuery {
        offset: 1,
        max_count: 4,
        max_wait_ms: 300,
        filter: TagFilter::parse("a"),
    };
    r.m.pull(r.now, q, req, &r.log, &mut fx);
    r.take(fx);
    // A message the pull's filter skips: it waits further on; the
    // receive (every tag) takes it.
    r.append(Some("b"), None);
    assert_eq!(got(&r.answer(recv).unwrap()), [(1, 1)]);
    assert!(!r.answers.contains_key(&pull));
    assert_eq!(r.settle("g", &[0, 1], Verdict::Ack), 2);
    r.advance(299);
    assert!(!r.answers.contains_key(&pull));
    r.advance(1);
    let b = r.pull_answer(pull).unwrap();
    assert_eq!(
        (b.status, b.next_offset, b.max_offset),
        (PullOutcome::NoNewMessage, 2, 2)
    );
    let (recv, _) = r.send_receive(Rig::query("g", 4, 1_000, false));
    r.advance(999);
    assert!(!r.answers.contains_key(&recv));
    r.advance(1);
    let empty = r.answer(recv).unwrap();
    assert_eq!(
        (empty.status, empty.deliveries.len(), empty.committed),
        (PullOutcome::NoNewMessage, 0, 2)
    );
    assert_eq!(r.m.parked(), (0, 0));
}

#[test]
fn a_gone_requester_is_dropped_without_claiming_anything() {
    let mut r = Rig::new(policy());
    let (id, req) = r.send_receive(Rig::query("g", 4, 60_000, false));
    req.1.set(true);
    r.append(None, None);
    assert!(!r.answers.contains_key(&id), "dropped, not answered");
    assert_eq!(r.in_flight("g"), 0, "nothing claimed");
    assert_eq!(r.m.parked(), (0, 0));
    assert_eq!(r.receive("g", 4), [(0, 1)], "first delivery for the next receive");
    // The sweep drops parked requests of gone requesters within a period.
    let (_, req) = r.send_receive(Rig::query("g", 4, 60_000, false));
    assert_eq!(r.m.parked(), (0, 1));
    req.1.set(true);
    r.advance(SWEEP_EVERY_MS);
    assert_eq!(r.m.parked(), (0, 0));
}

#[test]
fn a_resumed_queue_scans_its_backlog_for_ttls_and_forgets_groups() {
    let mut r = Rig::new(policy());
    r.log.push(None, r.now, Some(100));
    for _ in 0..(SCAN_CHUNK + 10) {
        r.log.push(None, r.now, None);
    }
    let last = r.log.push(None, r.now, Some(200));
    r.m.resume(vec![("g".to_string(), 0)], &r.log);
    assert_eq!(r.m.next_wakeup(r.now), Some(r.now), "the rest of the scan runs at once");
    r.advance(200);
    let stored = r.store_dead_letters();
    let offsets: Vec<u64> = stored.iter().flat_map(|a| a.letters.iter().map(|l| l.offset)).collect();
    assert_eq!(offsets, [0, last]);
    assert!(r.subscribed.is_empty(), "resumed groups are already recorded");
    // A forgotten group starts again from its committed offset.
    r.m.forget_group("g");
    r.log.committed.insert("g".to_string(), 5);
    assert_eq!(r.receive("g", 1), [(5, 1)]);
}

#[test]
fn retiring_answers_every_parked_request() {
    let mut r = Rig::new(policy());
    let (id, _) = r.send_receive(Rig::query("g", 4, 60_000, false));
    let mut fx = Effects::default();
    r.m.retire(
        Some(BrokerError::new(crate::error::ErrorKind::TopicNotExist, "gone")),
        &mut fx,
    );
    r.take(fx);
    assert!(matches!(r.answers.remove(&id), Some(Answer::Receive(Err(_)))));
    assert_eq!(r.m.parked(), (0, 0));
    assert_eq!(r.m.next_wakeup(r.now), None);
}
