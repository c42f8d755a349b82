//! Reading the queue for one request: a pull (no tracking), a receive
//! (claims through the group's cursor), and the dead-letter copies of
//! messages a cursor gave up on.

use super::{
    DeadLetterAppend, Delivered, Effects, Group, LogEntry, PullBatch, PullOutcome, QueueDelivery, QueueLog,
    ReceiveQuery, ReceivedBatch, RecordGather, Requester, MAX_BATCH_COUNT,
};
use crate::delivery::cursor::DeadLetter;
use crate::delivery::expiry::raw_expire_at;
use crate::delivery::DeadLetterReason;
use crate::error::{BrokerError, ErrorKind};
use crate::message::props::{self, dlq_topic};
use crate::message::{TagFilter, PROPERTY_TAGS};
use crate::store::append::AppendEntry;
use crate::store::record::{is_intact, RecordView, StoredRecord};

/// Most consume-queue entries one pull scans (tag filters may skip many).
const MAX_SCAN: u64 = 16 * 1024;
/// Pulls stop adding records past this many bytes (but return at least one).
const MAX_PULL_BYTES: usize = 8 << 20;
/// Most consume-queue entries one receive claims (filters may skip many).
const MAX_CLAIM_SCAN: usize = 16 * 1024;
/// Receives stop adding records past this many bytes (but return at least
/// one), like pulls: a response is at most this plus one record.
const MAX_RECEIVE_BYTES: usize = 8 << 20;

/// Reads up to `max_count` records from `offset` that match `filter` and
/// have not expired at `now`. `topic` and `queue_id` name the queue in
/// errors.
pub fn serve_pull<L: QueueLog>(
    log: &L,
    topic: &str,
    queue_id: u32,
    now: u64,
    offset: u64,
    max_count: u32,
    filter: &TagFilter,
) -> Result<PullBatch, BrokerError> {
    let max_count = max_count.clamp(1, MAX_BATCH_COUNT);
    let Some((min, max)) = log.bounds() else {
        // Never written: an empty queue at offset 0.
        let status = if offset == 0 {
            PullOutcome::NoNewMessage
        } else {
            PullOutcome::OffsetMoved
        };
        return Ok(batch(status, 0, 0, 0, 0, Vec::new()));
    };
    if offset < min || offset > max {
        let next = if offset < min { min } else { max };
        return Ok(batch(PullOutcome::OffsetMoved, next, min, max, 0, Vec::new()));
    }
    let hashes = filter.hashes();
    let topic_ttl = log.topic_ttl();
    let mut records = log.gather();
    let mut count = 0u32;
    let mut next = offset;
    let scan_end = max.min(offset.saturating_add(MAX_SCAN));
    while next < scan_end && count < max_count && records.len() < MAX_PULL_BYTES {
        let Some(entry) = log.entry(next) else { break };
        next += 1;
        if let Some(h) = &hashes {
            if !h.contains(&entry.tag_hash) {
                continue;
            }
        }
        let size = entry.size as usize;
        let record = records.push(entry.phys, size).map_err(|e| {
            BrokerError::new(
                ErrorKind::Store,
                format!("reading {topic}/{queue_id} offset {}: {e}", next - 1),
            )
        })?;
        // A damaged record is skipped (and counted), never served: a
        // client would reject it and the queue would stall on it.
        if log.needs_check(entry.phys) && !is_intact(record) {
            records.pop(size);
            log.note_corrupt(entry.phys, entry.size);
            continue;
        }
        // An expired message is never delivered.
        let expired = raw_expire_at(record, topic_ttl).is_some_and(|at| at <= now);
        // Hashes collide, and patterns have none: confirm the real tag.
        let filtered = !expired
            && (hashes.is_some() || !filter.is_all())
            && !filter.matches(RecordView(record).property(PROPERTY_TAGS));
        if expired || filtered {
            records.pop(size);
            continue;
        }
        count += 1;
    }
    let status = if count > 0 {
        PullOutcome::Found
    } else if next == offset {
        PullOutcome::NoNewMessage
    } else {
        PullOutcome::NoMatched
    };
    Ok(batch(status, next, min, max, count, records.finish()))
}

fn batch(status: PullOutcome, next: u64, min: u64, max: u64, count: u32, records: Vec<bytes::Bytes>) -> PullBatch {
    PullBatch {
        status,
        next_offset: next,
        min_offset: min,
        max_offset: max,
        count,
        records,
    }
}

impl<W: Requester> QueueDelivery<W> {
    /// The group of `q`, created from its committed offset (or the
    /// request's start) on first sight; its mode and filter follow `q`.
    fn group_mut(&mut self, q: &ReceiveQuery, log: &impl QueueLog, fx: &mut Effects<W>) -> &mut Group {
        let g = self.groups.entry(q.group.clone()).or_insert_with(|| {
            fx.subscribe.push(q.group.clone());
            let committed = log.committed(&q.group);
            let (min, max) = log.bounds().unwrap_or((0, 0));
            let start = committed.unwrap_or(q.start_offset).clamp(min, max);
            // A group's starting point is committed at once, so a restart
            // resumes from it (not from a new "latest").
            Group::new(start, committed.filter(|c| *c == start))
        });
        g.orderly = q.orderly;
        if g.tag_expression != q.tag_expression {
            g.filter = TagFilter::parse(&q.tag_expression);
            g.tag_expression = q.tag_expression.clone();
        }
        g
    }

    /// Claims and reads what `q` may have now; `None` when nothing is
    /// ready. Claimed messages that expired are dead-lettered.
    pub(super) fn serve_receive(
        &mut self,
        now: u64,
        q: &ReceiveQuery,
        log: &impl QueueLog,
        fx: &mut Effects<W>,
    ) -> Option<ReceivedBatch> {
        let max_offset = log.bounds().map_or(0, |(_, max)| max);
        let topic_ttl = log.topic_ttl();
        let want = q.max_count.clamp(1, MAX_BATCH_COUNT) as usize;
        let policy = self.policy.clone();
        let (topic, queue_id) = (self.topic.clone(), self.queue_id);
        let min_offset = log.bounds().map_or(0, |(min, _)| min);
        let g = self.group_mut(q, log, fx);
        // Retention moved the queue's start past the group (the store
        // counted the loss when it deleted): continue from the minimum.
        let skipped = g.cursor.skip_below(min_offset);
        if skipped > 0 {
            tracing::info!(%topic, queue_id, group = %q.group, skipped, to = min_offset, "group continues from the queue's new minimum");
        }
        let mut found: Vec<Delivered> = Vec::new();
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
                .claim(now, limit, max_offset, q.ack_timeout_ms, g.orderly, &policy);
            if claims.is_empty() {
                break;
            }
            scanned += claims.len();
            for claim in claims {
                let record = log.entry(claim.offset).and_then(|e| {
                    let raw = log.record(e.phys, e.size).ok()?;
                    if !log.needs_check(e.phys) || is_intact(&raw) {
                        Some(raw)
                    } else {
                        log.note_corrupt(e.phys, e.size);
                        None
                    }
                });
                let Some(raw) = record else {
                    // Unreadable (a deleted topic's last moments): nothing to deliver.
                    tracing::warn!(%topic, queue_id, offset = claim.offset, "cannot read a claimed record; skipping it");
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
                    found.push(Delivered {
                        delivery: claim.delivery,
                        record: raw,
                    });
                }
            }
        }
        let committed = g.cursor.committed();
        self.dead_letter(&q.group, dead, log, fx);
        if found.is_empty() {
            return None;
        }
        fx.delivered += found.len() as u64;
        let redelivered = found.iter().filter(|d| d.delivery > 1).count() as u64;
        if redelivered > 0 {
            fx.redelivered.push((q.group.clone(), redelivered));
        }
        Some(ReceivedBatch {
            status: PullOutcome::Found,
            committed,
            max_offset,
            deliveries: found,
        })
    }

    /// The answer to a receive with nothing ready.
    pub(super) fn empty_receive(&self, group: &str, log: &impl QueueLog) -> ReceivedBatch {
        ReceivedBatch {
            status: PullOutcome::NoNewMessage,
            committed: self.groups.get(group).map_or(0, |g| g.cursor.committed()),
            max_offset: log.bounds().map_or(0, |(_, max)| max),
            deliveries: Vec::new(),
        }
    }

    /// Asks for copies of `dls` in `%DLQ%<group>`; each is settled once
    /// stored. A message that cannot be read is settled at once.
    pub(super) fn dead_letter(&mut self, group: &str, dls: Vec<DeadLetter>, log: &impl QueueLog, fx: &mut Effects<W>) {
        if dls.is_empty() {
            return;
        }
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        let mut entries = Vec::with_capacity(dls.len());
        let mut letters = Vec::with_capacity(dls.len());
        for dl in dls {
            let copy = log
                .entry(dl.offset)
                .and_then(|e| dead_letter_entry(&self.topic, self.queue_id, group, &dl, e, log));
            match copy {
                Some(e) => {
                    entries.push(e);
                    letters.push(dl);
                }
                None => {
                    tracing::error!(group, topic = %self.topic, offset = dl.offset, "cannot read a message to dead-letter it; settling it");
                    g.cursor.dead_lettered(dl.offset);
                }
            }
        }
        if !entries.is_empty() {
            fx.dead_letters.push(DeadLetterAppend {
                group: group.to_string(),
                topic: dlq_topic(group),
                entries,
                letters,
            });
        }
    }
}

/// The copy of a message for the dead-letter topic: its record with the
/// origin properties added, and its `TTL` moved to `ORIGIN_TTL` so that the
/// dead letter never expires inside the dead-letter topic.
fn dead_letter_entry(
    topic: &str,
    queue_id: u32,
    group: &str,
    dl: &DeadLetter,
    e: LogEntry,
    log: &impl QueueLog,
) -> Option<AppendEntry> {
    let rec = StoredRecord::decode(log.record(e.phys, e.size).ok()?).ok()?;
    let mut properties = rec.properties.clone();
    if let Some(ttl) = properties.remove(props::TTL) {
        properties.insert(props::ORIGIN_TTL.to_string(), ttl);
    }
    let mut set = |k: &str, v: String| {
        properties.insert(k.to_string(), v);
    };
    set(props::ORIGIN_TOPIC, topic.to_string());
    set(props::ORIGIN_QUEUE, queue_id.to_string());
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
