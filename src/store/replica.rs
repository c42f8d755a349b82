//! The store's side of master→slave replication. A slave's commitlog is a
//! byte-identical copy of its master's (same offsets, same segment
//! fillers), so message ids and consume-queue entries are the same on both.
//! Master and slave must use the same `store.segment_bytes`.
//!
//! * The master reads chunks of its log to ship ([`Store::replica_chunk`]).
//! * The slave checks and appends them ([`Store::append_replicated`]) and
//!   hands the returned entries to its Dispatcher like its own appends.
//! * A new slave of a master whose retention deleted the log's first
//!   segments starts its log where the master's starts
//!   ([`Store::start_log_at`]).
//! * Divergence (a slave holding records its master does not have, e.g. an
//!   old master that comes back as a slave) is found with record
//!   fingerprints ([`Store::last_records`] on the slave,
//!   [`Store::record_crc_at`] on the master, [`Store::record_end_at`]) and
//!   cut off ([`Store::truncate_log_to`]) before the slave follows.
//!
//! # Chunk format
//!
//! A [`ReplicaChunk`] holds the master's log bytes from `from` on, within
//! one segment (a chunk never crosses a segment's end): whole records and,
//! as the last thing in the chunk, what closes the segment when the chunk
//! reaches it:
//!
//! * a blank filler is shipped as its 8-byte header only (its length field
//!   still runs to the segment's end). The rest of a filler is zeroes on the
//!   master (segments are created zeroed, and every cut of the log zeroes
//!   what follows it) and so is the slave's log past its end, so writing
//!   the header alone leaves both byte-identical;
//! * a segment tail too short for a filler (fewer than 8 bytes, which the
//!   appender leaves unwritten) is shipped as its bytes, zeroes.
//!
//! After either, `next` is the next segment's start; otherwise it is
//! `from + bytes.len()`. The slave's write position after appending a
//! chunk is the chunk's `next`, so it asks for the next chunk from there.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::checkpoint::Checkpoint;
use super::commitlog::{self, Appender, Segment};
use super::error::{StoreError, StoreResult};
use super::offsets::{decode_commits, OffsetKey, OffsetTable, DELETED, OFFSETS_TOPIC};
use super::record::{self, Probe, StoredRecord, BLANK_HEADER_LEN, BLANK_MAGIC, RECORD_MAGIC};
use super::{poisoned, DispatchEntry, Store};
use crate::message::split_keys;

/// Log bytes for a replica (see the module documentation for the format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaChunk {
    /// Log offset of the first byte: the offset asked for.
    pub from: u64,
    /// The bytes; empty when the replica is up to date.
    pub bytes: Bytes,
    /// Where the next chunk starts: the replica's write position once it
    /// appended this one (`from` when `bytes` is empty).
    pub next: u64,
}

/// What [`Store::append_replicated`] stored.
#[derive(Debug)]
pub struct ReplicatedBatch {
    /// Consume-queue and index work for the Dispatcher, in log order (no
    /// TTL deadlines: queue actors rescan, as after recovery).
    pub dispatch: Vec<DispatchEntry>,
    /// The write position after the batch (mark it dispatched once every
    /// entry is).
    pub end: u64,
    /// Records stored.
    pub records: u64,
    /// How long before `now_ms` the newest record was stored on the master
    /// (the replication lag), when the batch holds a record.
    pub lag_ms: Option<u64>,
}

/// What [`Store::truncate_log_to`] cut off, for a log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TruncateReport {
    /// Where the log now ends.
    pub offset: u64,
    /// Where it ended before.
    pub old_end: u64,
    /// Log bytes cut (`old_end - offset`).
    pub bytes: u64,
    /// Records cut.
    pub records: u64,
    /// Segment files deleted.
    pub segments: u64,
    /// Consume-queue entries dropped.
    pub queue_entries: u64,
    /// Offset-commit records cut.
    pub offset_commits: u64,
    /// Committed offsets set back (or removed) because the commit records
    /// that set them were cut.
    pub offsets_restored: u64,
}

/// What the bytes at a position of a segment are, for replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// A whole, CRC-valid record that names its own offset: its size and
    /// the CRC it stores.
    Record(usize, u32),
    /// What closes the segment (a filler, or a tail too short for one),
    /// with the bytes a chunk carries for it.
    Close(usize),
    /// Anything else: not a record boundary of this log, or damage.
    Invalid,
}

/// Classifies the bytes at position `p` of a segment whose bytes are `data`
/// (the whole segment, starting at log offset `seg_start`) in a log whose
/// published bytes end at `end`; nothing at or past `end` counts.
fn classify(data: &[u8], p: usize, seg_start: u64, end: u64) -> Item {
    classify_checking(data, p, seg_start, end, true)
}

/// [`classify`], checking a record's CRC only when `check_crc` (records
/// this process appended were encoded here with theirs; a replica checks
/// every record it receives anyway).
fn classify_checking(data: &[u8], p: usize, seg_start: u64, end: u64, check_crc: bool) -> Item {
    let seg_len = data.len();
    let Some(room) = seg_len.checked_sub(p) else {
        return Item::Invalid;
    };
    let pos = seg_start + p as u64;
    let seg_end = seg_start + seg_len as u64;
    // A closing item is only valid when the log goes on past the segment.
    let closed = end >= seg_end;
    if room < BLANK_HEADER_LEN {
        return if closed && pos < end {
            Item::Close(room)
        } else {
            Item::Invalid
        };
    }
    let published = end.min(seg_end).saturating_sub(pos) as usize;
    if published < BLANK_HEADER_LEN {
        return Item::Invalid;
    }
    let size = be_u32(data, p) as usize;
    match be_u32(data, p + 4) {
        BLANK_MAGIC if closed && size == room => Item::Close(BLANK_HEADER_LEN),
        RECORD_MAGIC if size <= published => {
            let bytes = &data[p..p + size];
            let whole = if check_crc {
                record::probe(bytes) == Probe::Record(size)
            } else {
                size >= record::FIXED_LEN
            };
            if !whole || named_offset(bytes) != Some(pos) {
                return Item::Invalid;
            }
            Item::Record(size, be_u32(bytes, 8))
        }
        _ => Item::Invalid,
    }
}

/// The big-endian u32 at `at` of `data` (which holds it).
fn be_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// The physical offset a record's bytes name.
fn named_offset(rec: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(rec.get(28..36)?.try_into().ok()?))
}

/// One step of [`walk`].
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A record storing this CRC.
    Record(u32),
    /// Damaged bytes that valid records follow (recovery quarantined them).
    Damaged,
}

/// Walks segment `seg` (of `seg_bytes`) from position `p` over what lies
/// below `end`, calling `visit(offset, step)` for each record and each
/// damaged stretch (skipped like recovery does) until `visit` returns
/// false. Returns the offset where the walk stopped: where `visit` said
/// so, a filler, a short tail, `end`, or damage nothing valid follows.
fn walk(
    seg: &Segment,
    seg_bytes: u64,
    mut p: usize,
    end: u64,
    mut visit: impl FnMut(u64, Step) -> bool,
) -> StoreResult<u64> {
    let data = seg.read(0, seg_bytes as usize)?;
    let limit = end.saturating_sub(seg.start).min(seg_bytes) as usize;
    loop {
        let pos = seg.start + p as u64;
        if p >= limit {
            return Ok(pos);
        }
        match classify(data, p, seg.start, end) {
            Item::Record(size, crc) => {
                if !visit(pos, Step::Record(crc)) {
                    return Ok(pos);
                }
                p += size;
            }
            Item::Close(_) => return Ok(pos),
            Item::Invalid => match commitlog::verify_resync(&data[..limit], p, seg.start) {
                Some(q) => {
                    if !visit(pos, Step::Damaged) {
                        return Ok(pos);
                    }
                    p = q;
                }
                None => return Ok(pos),
            },
        }
    }
}

/// A record of replicated bytes, checked.
struct Checked {
    /// Its log offset.
    pos: u64,
    /// Decoded; `None` for a CRC-valid record that does not decode, which
    /// is stored (the log stays identical) but not dispatched, as recovery
    /// does.
    rec: Option<StoredRecord>,
}

/// Checks replicated bytes `chunk` meant for log offset `at` (see the
/// module documentation for what a chunk may hold); returns their records
/// and the write position after them.
fn check_chunk(at: u64, chunk: &Bytes, segment_bytes: u64) -> StoreResult<(Vec<Checked>, u64)> {
    let bad = |pos: u64, detail: String| StoreError::Corrupt {
        what: "replicated chunk",
        path: None,
        offset: Some(pos),
        detail,
    };
    let seg_end = at - at % segment_bytes + segment_bytes;
    let mut out = Vec::new();
    let mut i = 0usize;
    while i < chunk.len() {
        let pos = at + i as u64;
        let room = seg_end - pos;
        let left = chunk.len() - i;
        if room < BLANK_HEADER_LEN as u64 {
            if left as u64 != room || chunk[i..].iter().any(|b| *b != 0) {
                return Err(bad(
                    pos,
                    format!(
                        "{left} bytes where the segment has {room} left, too few for a filler: only zeroes \
                         ending the chunk may be there"
                    ),
                ));
            }
            return Ok((out, seg_end));
        }
        if left < BLANK_HEADER_LEN {
            return Err(bad(pos, format!("{left} bytes: a truncated record")));
        }
        let size = be_u32(chunk, i) as usize;
        match be_u32(chunk, i + 4) {
            BLANK_MAGIC => {
                if size as u64 != room {
                    return Err(bad(
                        pos,
                        format!("a filler of {size} bytes where the segment has {room} left"),
                    ));
                }
                if left != BLANK_HEADER_LEN {
                    return Err(bad(
                        pos,
                        format!(
                            "a filler must end the chunk, {} bytes follow it",
                            left - BLANK_HEADER_LEN
                        ),
                    ));
                }
                return Ok((out, seg_end));
            }
            RECORD_MAGIC => {}
            magic => {
                return Err(bad(pos, format!("neither a record nor a filler (magic {magic:#010x})")));
            }
        }
        if size as u64 > room {
            return Err(bad(
                pos,
                format!("a record of {size} bytes crosses the segment's end ({room} bytes left)"),
            ));
        }
        if size > left {
            return Err(bad(pos, format!("a record of {size} bytes truncated to {left}")));
        }
        let bytes = chunk.slice(i..i + size);
        if record::probe(&bytes) != Probe::Record(size) {
            return Err(bad(pos, "a record whose CRC does not match its bytes".into()));
        }
        // The CRC was just checked: decoded without checking it again.
        match named_offset(&bytes) {
            Some(named) if named == pos => {}
            named => {
                return Err(bad(
                    pos,
                    format!("a record naming offset {named:?}: it does not belong here"),
                ));
            }
        }
        let rec = match StoredRecord::decode_checked(bytes) {
            Ok(rec) => Some(rec),
            Err(e) => {
                tracing::warn!(offset = pos, error = %e, "replicated record passed its CRC but does not decode");
                None
            }
        };
        out.push(Checked { pos, rec });
        i += size;
    }
    Ok((out, at + chunk.len() as u64))
}

/// How a chunk's records change the consume queues.
struct Plan {
    /// Each queue's records.
    runs: Vec<QueueRun>,
    /// Topics whose queues are dropped first: the master deleted and
    /// created them again.
    resets: Vec<Arc<str>>,
    /// Per record (of the checked ones): whether it is dispatched.
    dispatch: Vec<bool>,
}

/// A chunk's records of one (topic, queue).
struct QueueRun {
    topic: Arc<str>,
    queue_id: u32,
    /// Queue offset of the first record.
    first: u64,
    /// Queue offset of the last record.
    last: u64,
    /// The queue holds no entry and must continue at `first` instead of
    /// where it is ([`ConsumeQueue::restart_empty_at`]).
    ///
    /// [`ConsumeQueue::restart_empty_at`]: super::consume_queue::ConsumeQueue::restart_empty_at
    restart: bool,
    /// Records of the topic's life before the master deleted it.
    earlier_life: bool,
}

/// The outcome of one planning pass ([`Store::plan_with`]).
enum Planned {
    /// The plan.
    Done(Plan),
    /// The topic starts a new life at this record (of the checked ones):
    /// plan again knowing it.
    Reset(Arc<str>, usize),
}

/// Where the new life of the topic of `checked[i]` (a record going back
/// to queue offset 0) starts: the earliest record before it from which
/// every queue of the topic starts at 0 and runs on without gaps.
fn new_life_start(checked: &[Checked], i: usize) -> usize {
    let Some(reset) = checked[i].rec.as_ref() else {
        return i;
    };
    // The earliest queue offset of each queue in the candidate new life.
    let mut earliest: HashMap<u32, u64> = HashMap::from([(reset.queue_id, 0)]);
    let mut start = i;
    for k in (0..i).rev() {
        let Some(rec) = checked[k].rec.as_ref().filter(|r| r.topic == reset.topic) else {
            continue;
        };
        match earliest.get(&rec.queue_id) {
            Some(&e) if e != rec.queue_offset + 1 => break,
            _ => earliest.insert(rec.queue_id, rec.queue_offset),
        };
        if earliest.values().all(|o| *o == 0) {
            start = k;
        }
    }
    start
}

impl Store {
    /// Master side: the log bytes to ship to a replica whose log ends at
    /// `from` (see the module documentation for the format): whole records
    /// below the write position, at most `max_bytes` of them but always
    /// one when there is one (a larger record is sent whole), never
    /// crossing a segment's end. Empty (with `next == from`) when `from`
    /// is the write position.
    ///
    /// Errors: [`StoreError::OffsetDeleted`] (with the log's start) when
    /// retention deleted `from`; [`StoreError::PastLogEnd`] (with the
    /// write position) when `from` is past it; [`StoreError::Corrupt`]
    /// when no record starts at `from` (the replica's log diverged from
    /// this one, or a damaged record sits there).
    ///
    /// Copies the bytes once, out of the mapped segment, holding no lock
    /// the writer waits for.
    pub fn replica_chunk(&self, from: u64, max_bytes: usize) -> StoreResult<ReplicaChunk> {
        let end = self.log.write_pos();
        let deleted = |log: &commitlog::CommitLog| StoreError::OffsetDeleted {
            offset: from,
            log_start: log.start_offset(),
        };
        if from < self.log.start_offset() {
            return Err(deleted(&self.log));
        }
        if from > end {
            return Err(StoreError::PastLogEnd {
                offset: from,
                write_pos: end,
            });
        }
        let empty = ReplicaChunk {
            from,
            bytes: Bytes::new(),
            next: from,
        };
        if from == end {
            return Ok(empty);
        }
        let Some(seg) = self.log.segment_holding(from) else {
            // Retention may have deleted it since the check above.
            if from < self.log.start_offset() {
                return Err(deleted(&self.log));
            }
            return Err(StoreError::NotFound(format!(
                "no segment holds commitlog offset {from}"
            )));
        };
        let seg_bytes = self.log.segment_bytes();
        let data = seg.read(0, seg_bytes as usize)?;
        let first = (from - seg.start) as usize;
        let mut p = first;
        let next = loop {
            let pos = seg.start + p as u64;
            if pos >= end {
                break pos;
            }
            let taken = p - first;
            match classify_checking(data, p, seg.start, end, self.log.needs_read_check(pos)) {
                Item::Record(size, _) => {
                    if taken > 0 && taken + size > max_bytes {
                        break pos;
                    }
                    p += size;
                }
                Item::Close(len) => {
                    if taken > 0 && taken + len > max_bytes {
                        break pos;
                    }
                    p += len;
                    break seg.start + seg_bytes;
                }
                Item::Invalid if taken == 0 => {
                    let damaged = self.log.quarantined_before(from + 1).is_some_and(|(at, _)| at == from);
                    return Err(StoreError::Corrupt {
                        what: "commitlog record",
                        path: Some(seg.path().to_path_buf()),
                        offset: Some(from),
                        detail: if damaged {
                            "a damaged record (quarantined by recovery) cannot be replicated".into()
                        } else {
                            "no record starts here: not a record boundary of this log (a diverged replica?)".into()
                        },
                    });
                }
                // Damage after good records: this chunk ends before it, the
                // next request gets the error.
                Item::Invalid => break pos,
            }
        };
        if p == first {
            return Ok(empty);
        }
        Ok(ReplicaChunk {
            from,
            bytes: Bytes::copy_from_slice(&data[first..p]),
            next,
        })
    }

    /// Fingerprints of the newest `n` records of the log, newest first:
    /// `(offset, CRC the record stores)`. Blank fillers are not records;
    /// damaged records recovery quarantined are skipped. A replica sends
    /// them to its master, which checks them with
    /// [`record_crc_at`](Self::record_crc_at) to find where the two logs
    /// agree.
    pub fn last_records(&self, n: usize) -> StoreResult<Vec<(u64, u32)>> {
        self.records_before(self.log.write_pos(), n)
    }

    /// Like [`last_records`](Self::last_records), for the newest `n`
    /// records ending at or below `end` (to look further back when the
    /// newest ones all differ).
    ///
    /// The walk starts at a record the consume queues point at, late
    /// enough to be short yet early enough for `n` records to follow (the
    /// latest of the queues' `n`-th newest entries); without one it walks
    /// the segments holding the records from their start (up to a
    /// segment's worth of reading per segment).
    pub fn records_before(&self, end: u64, n: usize) -> StoreResult<Vec<(u64, u32)>> {
        let start = self.log.start_offset();
        let end = end.min(self.log.write_pos());
        if n == 0 {
            return Ok(Vec::new());
        }
        if let Some(hint) = self.walk_hint(end, n) {
            let newest = self.newest_records(hint, end, n)?;
            if newest.len() == n {
                return Ok(newest.into_iter().rev().collect());
            }
        }
        let mut upto = end;
        let mut out = Vec::new();
        while out.len() < n && upto > start {
            let Some(seg) = self.log.segment_holding(upto - 1) else {
                break;
            };
            let newest = self.newest_records(seg.start, upto, n - out.len())?;
            out.extend(newest.into_iter().rev());
            upto = seg.start;
        }
        Ok(out)
    }

    /// A record boundary below `end` with at least `n` records between it
    /// and `end`: the latest of the consume queues' `n`-th newest entries
    /// (every entry points at a record start, and that queue alone has `n`
    /// records after it). `None` when no queue has `n` entries below `end`.
    fn walk_hint(&self, end: u64, n: usize) -> Option<u64> {
        let start = self.log.start_offset();
        self.queues
            .all()
            .into_iter()
            .filter_map(|(_, cq)| {
                let at = cq.max_offset().checked_sub(n as u64)?;
                let e = cq.get(at)?;
                let last = cq.get(cq.max_offset() - 1)?;
                (e.phys_offset >= start && last.phys_offset + u64::from(last.size) <= end).then_some(e.phys_offset)
            })
            .max()
    }

    /// The newest `n` records (offset, CRC) of those from the boundary
    /// `from` to `end`, oldest first, walking segment after segment.
    fn newest_records(&self, from: u64, end: u64, n: usize) -> StoreResult<VecDeque<(u64, u32)>> {
        let seg_bytes = self.log.segment_bytes();
        let mut newest = VecDeque::with_capacity(n.min(4096));
        let mut pos = from;
        while pos < end {
            let Some(seg) = self.log.segment_holding(pos) else {
                break;
            };
            walk(&seg, seg_bytes, (pos - seg.start) as usize, end, |at, step| {
                if let Step::Record(crc) = step {
                    if newest.len() == n {
                        newest.pop_front();
                    }
                    newest.push_back((at, crc));
                }
                true
            })?;
            pos = seg.start + seg_bytes;
        }
        Ok(newest)
    }

    /// The CRC stored by the whole, CRC-valid record starting at `offset`
    /// below the write position; `None` when no such record starts there.
    /// [`StoreError::OffsetDeleted`] when retention deleted `offset`.
    pub fn record_crc_at(&self, offset: u64) -> StoreResult<Option<u32>> {
        Ok(self.record_item_at(offset)?.map(|(_, crc)| crc))
    }

    /// The end (the next record boundary) of the whole, CRC-valid record
    /// starting at `offset` below the write position; `None` when no such
    /// record starts there. A replica cuts its log there
    /// ([`truncate_log_to`](Self::truncate_log_to)) after its master
    /// confirmed the record at `offset` as the newest they share.
    /// [`StoreError::OffsetDeleted`] when retention deleted `offset`.
    pub fn record_end_at(&self, offset: u64) -> StoreResult<Option<u64>> {
        Ok(self.record_item_at(offset)?.map(|(size, _)| offset + size as u64))
    }

    /// Size and stored CRC of the valid record at `offset`, if any.
    fn record_item_at(&self, offset: u64) -> StoreResult<Option<(usize, u32)>> {
        let start = self.log.start_offset();
        if offset < start {
            return Err(StoreError::OffsetDeleted {
                offset,
                log_start: start,
            });
        }
        let end = self.log.write_pos();
        if offset >= end {
            return Ok(None);
        }
        let Some(seg) = self.log.segment_holding(offset) else {
            return Ok(None);
        };
        let data = seg.read(0, self.log.segment_bytes() as usize)?;
        Ok(match classify(data, (offset - seg.start) as usize, seg.start, end) {
            Item::Record(size, crc) => Some((size, crc)),
            Item::Close(_) | Item::Invalid => None,
        })
    }

    /// Slave side: appends `bytes`, a chunk from the master's
    /// [`replica_chunk`](Self::replica_chunk), at `at`, which must be the
    /// write position ([`StoreError::NotAtLogEnd`] otherwise, carrying it),
    /// with `appender`, the writer the slave's commitlog writer owns.
    ///
    /// Everything is checked before anything is written: every record must
    /// be whole, CRC-valid and name its own offset; a filler's header only
    /// where it closes the segment, as the chunk's last bytes; nothing may
    /// cross a segment's end; each queue's records must continue the
    /// queue (a queue holding no entry may start anywhere: the log may
    /// start after the master's retention). Anything else is refused with
    /// [`StoreError::Corrupt`] naming the offset, and nothing changes.
    ///
    /// Then, before the bytes become visible: the records' topics are
    /// created in the topic table (or get more queues) so that recovery
    /// indexes them, consume-queue and index space is reserved, and offset
    /// commits are applied to the offset table (as the master applies them
    /// before appending: snapshots rely on it). The queue offsets the
    /// writer hands out move past the records, so a slave that becomes a
    /// master continues its queues. A write that finds no space fails with
    /// [`StoreError::DiskFull`] ([`Store::no_space`]); a failed write
    /// publishes nothing and erases what it wrote.
    ///
    /// The caller hands [`ReplicatedBatch::dispatch`] to the Dispatcher,
    /// which marks `end` dispatched after it: in order, even for a batch
    /// with no entries (a filler alone), since marking it at once could
    /// move the checkpoint past earlier batches still on their way.
    /// `now_ms` only measures the lag.
    ///
    /// A queue going back to 0 means the master deleted its topic and
    /// created it again: the slave drops the topic's consume queues as the
    /// master did (once the Dispatcher has written all of the topic's
    /// earlier records; until then the chunk is refused with
    /// [`StoreError::InvalidArgument`], to retry), and does not dispatch
    /// the chunk's earlier records of the topic.
    pub fn append_replicated(
        &self,
        appender: &mut Appender,
        at: u64,
        bytes: &[u8],
        now_ms: u64,
    ) -> StoreResult<ReplicatedBatch> {
        self.append_replicated_bytes(appender, at, Bytes::copy_from_slice(bytes), now_ms)
    }

    /// [`Store::append_replicated`] of a chunk already in a `Bytes` (the
    /// slave's writer: the fetch answer's body), which the decoded records
    /// slice instead of copying.
    pub fn append_replicated_bytes(
        &self,
        appender: &mut Appender,
        at: u64,
        chunk: Bytes,
        now_ms: u64,
    ) -> StoreResult<ReplicatedBatch> {
        if !Arc::ptr_eq(appender.log(), &self.log) {
            return Err(StoreError::InvalidArgument(
                "the appender writes another commitlog than this store's".into(),
            ));
        }
        let write_pos = self.log.write_pos();
        if at != write_pos {
            return Err(StoreError::NotAtLogEnd { at, write_pos });
        }
        let (checked, end) = check_chunk(at, &chunk, self.log.segment_bytes())?;
        let plan = self.plan_queues(&checked)?;
        let applied = match self.prepare_replicated(&checked, &plan) {
            Ok(applied) => applied,
            Err(e) if e.is_no_space() => return Err(self.no_space(e)),
            Err(e) => return Err(e),
        };
        if let Err(e) = appender.append_raw(at, &chunk, end) {
            self.offsets.revert(&applied.commits);
            if applied.keys > 0 {
                if let Ok(mut index) = self.index.lock() {
                    index.cancel_reserved(applied.keys);
                }
            }
            return Err(if e.is_no_space() { self.no_space(e) } else { e });
        }
        {
            let mut offsets = self.queue_offsets.lock().map_err(|_| poisoned("queue offsets"))?;
            for run in &plan.runs {
                let next = offsets.entry((run.topic.clone(), run.queue_id)).or_insert(0);
                *next = if run.restart {
                    run.last + 1
                } else {
                    (*next).max(run.last + 1)
                };
            }
        }
        let records = checked.len() as u64;
        let newest = checked
            .iter()
            .filter_map(|c| c.rec.as_ref())
            .map(|r| r.store_timestamp)
            .max();
        let dispatch: Vec<DispatchEntry> = checked
            .iter()
            .zip(&plan.dispatch)
            .filter_map(|(c, d)| c.rec.as_ref().filter(|_| *d))
            .map(DispatchEntry::from_record)
            .collect();
        Ok(ReplicatedBatch {
            dispatch,
            end,
            records,
            lag_ms: newest.map(|t| now_ms.saturating_sub(t)),
        })
    }

    /// Groups a chunk's records by queue, checking that each queue's
    /// records continue it (see [`append_replicated`](Self::append_replicated)).
    ///
    /// A queue going back to 0 means the master deleted its topic and
    /// created it again (queue offsets go back nowhere else): the topic's
    /// queues are dropped here as the master dropped them, once nothing of
    /// theirs is on its way to the Dispatcher (else
    /// [`StoreError::InvalidArgument`]: retry). The chunk's records of the
    /// topic's earlier life are not dispatched (the master's queues that
    /// held them are gone). Where its new life starts in the chunk is
    /// ambiguous when a queue's first record there is its first ever: the
    /// earliest point from which every queue of the topic starts at 0 is
    /// taken (a queue first used just before the deletion is rare).
    fn plan_queues(&self, checked: &[Checked]) -> StoreResult<Plan> {
        let handed_out = self.queue_offsets.lock().map_err(|_| poisoned("queue offsets"))?;
        let mut resets: Vec<(Arc<str>, usize)> = Vec::new();
        loop {
            match self.plan_with(checked, &handed_out, &resets)? {
                Planned::Done(plan) => return Ok(plan),
                Planned::Reset(topic, at) => {
                    self.check_settled(&handed_out, &topic, checked[at].pos)?;
                    resets.push((topic, at));
                }
            }
        }
    }

    /// One planning pass, knowing that each topic of `resets` starts a new
    /// life at the given record (of `checked`); finds the next reset.
    fn plan_with(
        &self,
        checked: &[Checked],
        handed_out: &HashMap<(Arc<str>, u32), u64>,
        resets: &[(Arc<str>, usize)],
    ) -> StoreResult<Planned> {
        let mut runs: Vec<QueueRun> = Vec::new();
        // (topic, queue, in its new life) → run.
        let mut by_queue: HashMap<(&str, u32, bool), usize> = HashMap::new();
        let mut dispatch = vec![true; checked.len()];
        for (i, c) in checked.iter().enumerate() {
            let Some(rec) = &c.rec else { continue };
            let reset_at = resets.iter().find(|(t, _)| **t == *rec.topic).map(|(_, at)| *at);
            let new_life = reset_at.is_some_and(|at| i >= at);
            if reset_at.is_some_and(|at| i < at) {
                dispatch[i] = false;
            }
            let key = (rec.topic.as_str(), rec.queue_id, new_life);
            if let Some(&r) = by_queue.get(&key) {
                let run = &mut runs[r];
                if rec.queue_offset == run.last + 1 {
                    run.last = rec.queue_offset;
                    continue;
                }
                if rec.queue_offset == 0 && reset_at.is_none() {
                    return Ok(Planned::Reset(run.topic.clone(), new_life_start(checked, i)));
                }
                return Err(queue_mismatch(c.pos, rec, run.last + 1));
            }
            let topic: Arc<str> = Arc::from(rec.topic.as_str());
            let (min, max, next) = if new_life {
                (0, 0, None)
            } else {
                let cq = self.queues.get(&rec.topic, rec.queue_id);
                let (min, max) = cq.map_or((0, 0), |cq| (cq.min_offset(), cq.max_offset()));
                (min, max, handed_out.get(&(topic.clone(), rec.queue_id)).copied())
            };
            let expected = next.unwrap_or(max);
            // Nothing stored and nothing on its way to the Dispatcher.
            let empty = min == max && next.is_none_or(|n| n == max);
            let mut restart = false;
            if rec.queue_offset != expected {
                if rec.queue_offset == 0 && reset_at.is_none() {
                    return Ok(Planned::Reset(topic, new_life_start(checked, i)));
                } else if empty {
                    restart = true;
                } else {
                    return Err(queue_mismatch(c.pos, rec, expected));
                }
            }
            by_queue.insert(key, runs.len());
            runs.push(QueueRun {
                topic,
                queue_id: rec.queue_id,
                first: rec.queue_offset,
                last: rec.queue_offset,
                restart,
                earlier_life: reset_at.is_some_and(|at| i < at),
            });
        }
        Ok(Planned::Done(Plan {
            // The earlier life's queues are dropped: nothing to prepare.
            runs: runs.into_iter().filter(|r| !r.earlier_life).collect(),
            resets: resets.iter().map(|(t, _)| t.clone()).collect(),
            dispatch,
        }))
    }

    /// Fails unless every record of `topic` appended so far is in its
    /// consume queue (`handed_out`: the queue offsets the writer handed
    /// out), so its queues can be dropped without racing the Dispatcher.
    fn check_settled(&self, handed_out: &HashMap<(Arc<str>, u32), u64>, topic: &str, pos: u64) -> StoreResult<()> {
        for ((t, queue), next) in handed_out {
            if **t != *topic {
                continue;
            }
            let max = self.queues.get(topic, *queue).map_or(0, |cq| cq.max_offset());
            if *next != max {
                return Err(StoreError::InvalidArgument(format!(
                    "the replicated record at {pos} starts topic {topic} again (deleted and re-created on the \
                     master), but its earlier records are still being dispatched here: retry"
                )));
            }
        }
        Ok(())
    }

    /// Before replicated records are written: creates their topics,
    /// restarts the empty queues they begin elsewhere, reserves
    /// consume-queue and index space, applies their offset commits.
    fn prepare_replicated(&self, checked: &[Checked], plan: &Plan) -> StoreResult<Prepared> {
        let runs = &plan.runs;
        for topic in &plan.resets {
            tracing::warn!(
                topic = %topic,
                "replicated records start the topic's queues again (deleted and re-created on the master): \
                 dropping its consume queues here too"
            );
            self.queues.remove_topic(topic)?;
            self.forget_topic_offsets(topic)?;
        }
        let mut queues: BTreeMap<&str, u32> = BTreeMap::new();
        for run in runs {
            let n = queues.entry(run.topic.as_ref()).or_insert(0);
            *n = (*n).max(run.queue_id.saturating_add(1));
        }
        // Recovery skips records of topics missing from the table.
        for (topic, n) in queues {
            if self.topics.ensure_queues(topic, n)? {
                tracing::info!(topic, queues = n, "topic created or grown by replication");
            }
        }
        for run in runs {
            if run.restart {
                let cq = self.queues.get_or_create(&run.topic, run.queue_id)?;
                cq.restart_empty_at(run.first)?;
                tracing::info!(
                    topic = %run.topic,
                    queue = run.queue_id,
                    queue_offset = run.first,
                    "a replicated queue starts at its first record in the log"
                );
            }
            self.queues.reserve(&run.topic, run.queue_id, run.last)?;
        }
        let keys: u64 = checked
            .iter()
            .zip(&plan.dispatch)
            .filter_map(|(c, d)| c.rec.as_ref().filter(|_| *d)?.keys())
            .map(|k| split_keys(k).count() as u64)
            .sum();
        if keys > 0 {
            self.index.lock().map_err(|_| poisoned("index"))?.reserve(keys)?;
        }
        let mut commits = Vec::new();
        for c in checked {
            let Some(rec) = c.rec.as_ref().filter(|r| r.topic == OFFSETS_TOPIC) else {
                continue;
            };
            match decode_commits(rec.body.clone()) {
                Ok(batch) => commits.extend(self.offsets.apply_returning_previous(&batch)),
                Err(e) => tracing::warn!(offset = c.pos, error = %e, "skipping an unreadable offset commit"),
            }
        }
        Ok(Prepared { keys, commits })
    }

    /// Slave side: makes an empty log (no record: a new slave, or one
    /// truncated to its start) start at `offset`, where its master's log
    /// starts after retention: a segment start, since master and slave
    /// share the segment size. Afterwards the write position is `offset`
    /// and [`append_replicated`](Self::append_replicated) continues there;
    /// a restart keeps it. [`StoreError::InvalidArgument`] when the log
    /// holds records or `offset` is not a multiple of the segment size.
    ///
    /// Commits older than `offset` exist only in the master's offset
    /// snapshot: they do not reach the slave through the log.
    pub fn start_log_at(&self, offset: u64) -> StoreResult<()> {
        self.log.restart_empty_at(offset)?;
        self.dispatched.store(offset, Ordering::Release);
        self.flush_and_checkpoint()
    }

    /// Slave side, on divergence: cuts the log at `offset`, a record
    /// boundary at or below the write position (a record's start or end,
    /// a segment's start, or the write position itself; else
    /// [`StoreError::InvalidArgument`], and nothing changes). Erases everything
    /// from there: zeroes the rest of its segment and deletes later ones,
    /// drops the consume-queue entries and index entries of the records
    /// cut, resets the queue offsets handed out from the consume queues,
    /// sets the dispatched and write positions to `offset`, and
    /// checkpoints.
    ///
    /// Offset commits the cut records made are undone: every key they set
    /// gets the value of its newest remaining commit record; a key that no
    /// remaining record commits (its older commits lie below the log's
    /// start, only in the snapshot) gets the snapshot's value when the
    /// snapshot predates its first cut commit, and is removed (with a
    /// warning) when it does not, since its older value is then unknown.
    /// Keys no cut record set keep their value: their newest commit
    /// remains. A new snapshot records the result. (Commits are applied
    /// before their record is appended, so a snapshot may hold a commit
    /// just past its position: one taken in that instant before a cut
    /// commit counts as predating it.)
    ///
    /// Precondition: nothing appends (the slave's follower truncates
    /// before it follows) and every record is dispatched
    /// ([`StoreError::InvalidArgument`] otherwise: wait for the
    /// Dispatcher). Readers may read meanwhile: the log's and the queues'
    /// ends move back before the bytes behind them are erased.
    pub fn truncate_log_to(&self, offset: u64) -> StoreResult<TruncateReport> {
        let old_end = self.log.write_pos();
        let start = self.log.start_offset();
        if offset > old_end {
            return Err(StoreError::PastLogEnd {
                offset,
                write_pos: old_end,
            });
        }
        if offset < start {
            return Err(StoreError::OffsetDeleted {
                offset,
                log_start: start,
            });
        }
        let dispatched = self.dispatched_offset();
        if dispatched < old_end {
            return Err(StoreError::InvalidArgument(format!(
                "cannot truncate the commitlog while records are being dispatched (dispatched up to \
                 {dispatched} of {old_end}): retry once the Dispatcher caught up"
            )));
        }
        let records = self.records_from(offset, old_end)?;
        let cut_commits = self.commits_from(offset)?;
        // A crash from here on replays the log from the cut.
        if self.checkpoint.load().dispatched_offset > offset {
            self.checkpoint.store(Checkpoint {
                dispatched_offset: offset,
            })?;
        }
        let mut queue_entries = 0;
        for (_, cq) in self.queues.all() {
            queue_entries += cq.truncate_to_log_end(offset)?;
        }
        self.index
            .lock()
            .map_err(|_| poisoned("index"))?
            .truncate_from(offset)?;
        let cut = self.log.truncate_to(offset)?;
        {
            let mut offsets = self.queue_offsets.lock().map_err(|_| poisoned("queue offsets"))?;
            offsets.clear();
            for ((topic, queue), cq) in self.queues.all() {
                offsets.insert((Arc::from(topic.as_str()), queue), cq.max_offset());
            }
        }
        self.dispatched.store(offset, Ordering::Release);
        let offsets_restored = self.undo_commits(&cut_commits)?;
        self.flush_and_checkpoint()?;
        let report = TruncateReport {
            offset,
            old_end,
            bytes: old_end - offset,
            records,
            segments: cut.deleted_segments,
            queue_entries,
            offset_commits: cut_commits.len() as u64,
            offsets_restored,
        };
        tracing::warn!(
            offset,
            old_end,
            bytes = report.bytes,
            records,
            segments = report.segments,
            queue_entries,
            offset_commits = report.offset_commits,
            offsets_restored,
            "truncated the commitlog to where it agrees with the master"
        );
        Ok(report)
    }

    /// Checks that `offset` (below `end`, the write position) is a record
    /// boundary and counts the records from it to `end`.
    fn records_from(&self, offset: u64, end: u64) -> StoreResult<u64> {
        if offset == end {
            return Ok(0);
        }
        let seg_bytes = self.log.segment_bytes();
        let not_boundary = |why: &str| {
            StoreError::InvalidArgument(format!(
                "cannot truncate the commitlog at {offset}: {why}, it is not a record boundary"
            ))
        };
        let Some(seg) = self.log.segment_holding(offset) else {
            return Err(not_boundary("no segment holds it"));
        };
        if offset != seg.start {
            let mut found = false;
            let stop = walk(&seg, seg_bytes, 0, end, |pos, _| {
                found |= pos == offset;
                pos < offset
            })?;
            if !(found || stop == offset) {
                return Err(not_boundary("no record starts or ends there"));
            }
        }
        let mut records = 0u64;
        let mut seg = Some(seg);
        let mut p = (offset % seg_bytes) as usize;
        while let Some(s) = seg {
            walk(&s, seg_bytes, p, end, |_, step| {
                records += matches!(step, Step::Record(_)) as u64;
                true
            })?;
            let next = s.start + seg_bytes;
            seg = if next < end {
                self.log.segment_holding(next)
            } else {
                None
            };
            p = 0;
        }
        Ok(records)
    }

    /// The offset commits of the records at or past `offset`, oldest
    /// first, with their offsets-topic queue offset.
    fn commits_from(&self, offset: u64) -> StoreResult<Vec<CommitRecord>> {
        let Some(cq) = self.queues.get(OFFSETS_TOPIC, 0) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut q = cq.max_offset();
        while q > cq.min_offset() {
            let Some(e) = cq.get(q - 1) else { break };
            if e.phys_offset < offset {
                break;
            }
            q -= 1;
            let commits = self
                .log
                .record_at(e.phys_offset)
                .ok()
                .and_then(|rec| decode_commits(rec.body).ok());
            match commits {
                Some(commits) => out.push((q, commits)),
                None => tracing::warn!(queue_offset = q, "cannot read an offset commit being truncated"),
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Undoes `cut` (see [`truncate_log_to`](Self::truncate_log_to)) and
    /// snapshots the table; returns the keys set back or removed.
    fn undo_commits(&self, cut: &[CommitRecord]) -> StoreResult<u64> {
        if cut.is_empty() {
            return Ok(0);
        }
        let mut first_cut: BTreeMap<OffsetKey, u64> = BTreeMap::new();
        for (q, commits) in cut {
            for (key, _) in commits {
                first_cut.entry(key.clone()).or_insert(*q);
            }
        }
        let mut open: BTreeSet<OffsetKey> = first_cut.keys().cloned().collect();
        let mut restored: Vec<(OffsetKey, u64)> = Vec::new();
        let cq = self.queues.get(OFFSETS_TOPIC, 0);
        if let Some(cq) = &cq {
            // Newest remaining commit first; within a record the last wins.
            let mut q = cq.max_offset();
            while q > cq.min_offset() && !open.is_empty() {
                q -= 1;
                let Some(e) = cq.get(q) else { continue };
                let Some(commits) = self
                    .log
                    .record_at(e.phys_offset)
                    .ok()
                    .and_then(|rec| decode_commits(rec.body).ok())
                else {
                    continue;
                };
                for (key, value) in commits.into_iter().rev() {
                    if open.remove(&key) {
                        restored.push((key, value));
                    }
                }
            }
        }
        if !open.is_empty() {
            let (snapshot, covers) = OffsetTable::open(&self.cfg.data_dir)?;
            for key in open {
                if first_cut.get(&key).is_some_and(|q| covers <= *q) {
                    restored.push((key.clone(), snapshot.get(&key).unwrap_or(DELETED)));
                } else {
                    tracing::warn!(
                        group = %key.group,
                        topic = %key.topic,
                        queue = key.queue,
                        "a committed offset set only by truncated records has no known older value: removed"
                    );
                    restored.push((key, DELETED));
                }
            }
        }
        self.offsets.apply(&restored);
        self.offsets.snapshot(cq.map_or(0, |cq| cq.max_offset()))?;
        Ok(restored.len() as u64)
    }
}

/// The commits of one offsets-topic record, with its queue offset.
type CommitRecord = (u64, Vec<(OffsetKey, u64)>);

/// What [`Store::prepare_replicated`] did that a failed write undoes.
struct Prepared {
    /// Index keys reserved.
    keys: u64,
    /// Offset commits applied, with what they replaced.
    commits: Vec<(OffsetKey, u64, Option<u64>)>,
}

/// A replicated record that does not continue its queue.
fn queue_mismatch(pos: u64, rec: &StoredRecord, expected: u64) -> StoreError {
    StoreError::Corrupt {
        what: "replicated record",
        path: None,
        offset: Some(pos),
        detail: format!(
            "queue offset {} of {}/{} does not continue the queue here, which is at {expected} \
             (was the topic deleted and re-created on the master?)",
            rec.queue_offset, rec.topic, rec.queue_id
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::store::append::AppendEntry;
    use crate::store::error::StoreErrorKind;
    use crate::store::offsets::encode_commits;
    use crate::store::testing::{append, entry, small_config};

    const SEG: u64 = 64 * 1024;

    fn open(dir: &Path) -> Store {
        Store::open(&small_config(dir)).unwrap().0
    }

    fn key(group: &str, topic: &str, queue: u32) -> OffsetKey {
        OffsetKey {
            group: group.into(),
            topic: topic.into(),
            queue,
        }
    }

    /// Commits an offset the way the broker does: applied, then appended.
    fn commit(store: &Store, k: OffsetKey, offset: u64) {
        store.offsets.apply(&[(k.clone(), offset)]);
        let e = AppendEntry {
            flags: 0,
            born_timestamp: 1,
            properties: BTreeMap::new(),
            body: encode_commits(&[(k, offset)]),
        };
        append(store, OFFSETS_TOPIC, 0, &[e]);
    }

    /// Batches over three topics and four queues (with tags and keys),
    /// and offset commits: enough to roll several 64 KiB segments.
    fn produce(store: &Store, round: &str, batches: usize, commits: bool) {
        let body = "m".repeat(700);
        for i in 0..batches {
            let topic = ["orders", "events", "audit"][i % 3];
            let queue = (i % 4) as u32;
            let batch: Vec<_> = (0..5)
                .map(|j| {
                    entry(
                        &format!("{body} {round} {i} {j}"),
                        Some("tag"),
                        Some(&format!("{round}-{i}-{j}")),
                    )
                })
                .collect();
            append(store, topic, queue, &batch);
            if commits && i % 7 == 0 {
                commit(store, key("g", topic, queue), i as u64);
            }
        }
    }

    /// Ships the master's log to the slave until it is up to date, as
    /// the slave's follower would; returns the chunks.
    fn follow(master: &Store, slave: &Store, app: &mut Appender, max_bytes: usize) -> Vec<ReplicaChunk> {
        let mut chunks = Vec::new();
        loop {
            let from = slave.log.write_pos();
            let chunk = master.replica_chunk(from, max_bytes).unwrap();
            assert_eq!(chunk.from, from);
            if chunk.next == from {
                assert!(chunk.bytes.is_empty());
                return chunks;
            }
            assert_eq!(
                from / SEG,
                (chunk.next - 1) / SEG,
                "a chunk never crosses a segment end"
            );
            let batch = slave.append_replicated(app, chunk.from, &chunk.bytes, 5000).unwrap();
            assert_eq!(batch.end, chunk.next);
            assert_eq!(slave.log.write_pos(), chunk.next);
            for d in &batch.dispatch {
                slave.dispatch(d).unwrap();
            }
            slave.mark_dispatched(batch.end);
            chunks.push(chunk);
        }
    }

    fn segment_files(store: &Store) -> Vec<(String, Vec<u8>)> {
        let dir = store.data_dir().join("commitlog");
        let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// The slave's commitlog is byte-identical to the master's, and so are
    /// its consume queues, offsets and records; key lookups agree.
    fn assert_same(master: &Store, slave: &Store) {
        assert_eq!(slave.log.write_pos(), master.log.write_pos());
        assert_eq!(slave.log.start_offset(), master.log.start_offset());
        let (m, s) = (segment_files(master), segment_files(slave));
        assert_eq!(
            m.iter().map(|f| &f.0).collect::<Vec<_>>(),
            s.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        for ((name, a), (_, b)) in m.iter().zip(&s) {
            if let Some(at) = a.iter().zip(b).position(|(x, y)| x != y) {
                panic!("segment {name} differs at byte {at}");
            }
        }
        let non_empty = |st: &Store| {
            let mut q: Vec<(String, u32)> = st
                .queues
                .all()
                .into_iter()
                .filter(|(_, cq)| cq.max_offset() > cq.min_offset())
                .map(|(k, _)| k)
                .collect();
            q.sort();
            q
        };
        assert_eq!(non_empty(master), non_empty(slave));
        for (topic, queue) in non_empty(master) {
            let (mq, sq) = (
                master.queues.get(&topic, queue).unwrap(),
                slave.queues.get(&topic, queue).unwrap(),
            );
            assert_eq!(
                (sq.min_offset(), sq.max_offset()),
                (mq.min_offset(), mq.max_offset()),
                "{topic}/{queue}"
            );
            for off in mq.min_offset()..mq.max_offset() {
                let e = mq.get(off).unwrap();
                assert_eq!(sq.get(off), Some(e), "{topic}/{queue} entry {off}");
                assert_eq!(
                    slave.log.record_at(e.phys_offset).unwrap(),
                    master.log.record_at(e.phys_offset).unwrap()
                );
            }
            assert!(slave.topics.get(&topic).unwrap().queues > queue);
        }
        assert_eq!(slave.offsets.all(), master.offsets.all());
        let newest = master.last_records(1).unwrap();
        if let Some(&(off, _)) = newest.first() {
            let rec = master.log.record_at(off).unwrap();
            if let Some(k) = rec.keys() {
                assert_eq!(
                    slave.raw_records_by_key(&rec.topic, k, 4).unwrap(),
                    master.raw_records_by_key(&rec.topic, k, 4).unwrap()
                );
            }
        }
    }

    fn has_filler(chunks: &[ReplicaChunk]) -> bool {
        chunks.iter().any(|c| {
            c.next % SEG == 0 && c.bytes.len() >= BLANK_HEADER_LEN && be_u32(&c.bytes, c.bytes.len() - 4) == BLANK_MAGIC
        })
    }

    #[test]
    fn a_slave_follows_byte_for_byte_across_segments_and_restarts() {
        let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = open(mdir.path());
        produce(&master, "one", 80, true);
        assert!(master.log.segment_count() >= 4);
        let mut slave = open(sdir.path());
        let mut app = Appender::new(slave.log.clone());
        let chunks = follow(&master, &slave, &mut app, 16 * 1024);
        assert!(chunks.iter().all(|c| c.bytes.len() <= 16 * 1024));
        assert!(has_filler(&chunks), "segment fillers were shipped");
        assert_same(&master, &slave);

        // A restart (a crash: no shutdown) recovers the same log.
        drop(app);
        drop(slave);
        slave = open(sdir.path());
        assert_same(&master, &slave);
        let mut app = Appender::new(slave.log.clone());
        produce(&master, "two", 40, true);
        // One record per chunk (a chunk holds at least one).
        let chunks = follow(&master, &slave, &mut app, 1);
        assert!(chunks.iter().all(|c| {
            let size = be_u32(&c.bytes, 0) as usize;
            c.bytes.len() == size || c.bytes.len() == BLANK_HEADER_LEN
        }));
        assert_same(&master, &slave);
        assert!(slave.topics.get("orders").unwrap().queues >= 4);

        // Promoted by a restart, the slave continues the queues.
        drop(app);
        drop(slave);
        let slave = open(sdir.path());
        let before = slave.queues.get("orders", 0).unwrap().max_offset();
        let stored = append(&slave, "orders", 0, &[entry("as a master", None, None)]);
        assert_eq!(stored[0].queue_offset, before);
        assert_eq!(stored[0].phys_offset, master.log.write_pos());
    }

    #[test]
    fn the_queue_offsets_handed_out_continue_after_replication() {
        let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = open(mdir.path());
        produce(&master, "one", 9, false);
        let slave = open(sdir.path());
        let mut app = Appender::new(slave.log.clone());
        follow(&master, &slave, &mut app, 1 << 20);
        // Without a restart: the writer's own appends continue the queue.
        let stored = append(&slave, "orders", 0, &[entry("next", None, None)]);
        assert_eq!(
            stored[0].queue_offset,
            master.queues.get("orders", 0).unwrap().max_offset()
        );
    }

    #[test]
    fn a_segment_tail_too_short_for_a_filler_is_shipped_as_it_is() {
        let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = open(mdir.path());
        append(&master, "t", 0, &[entry("x", None, None)]);
        let overhead = master.log.write_pos() - 1;
        // A record that leaves 4 bytes at the segment's end: no filler.
        let rest = SEG - master.log.write_pos();
        let fill = "y".repeat((rest - 4 - overhead) as usize);
        append(&master, "t", 0, &[entry(&fill, None, None)]);
        assert_eq!(master.log.write_pos(), SEG - 4);
        let slave = open(sdir.path());
        let mut app = Appender::new(slave.log.clone());
        follow(&master, &slave, &mut app, 1 << 20);
        assert_eq!(slave.log.write_pos(), SEG - 4, "the slave waits where the master is");
        append(&master, "t", 1, &[entry("next segment", None, None)]);
        let chunks = follow(&master, &slave, &mut app, 1 << 20);
        assert_eq!(chunks[0].bytes.as_ref(), &[0u8; 4], "the tail, as zeroes");
        assert_eq!((chunks[0].from, chunks[0].next), (SEG - 4, SEG));
        assert_same(&master, &slave);
        // Only zeroes may fill such a tail.
        let odir = tempfile::tempdir().unwrap();
        let other = open(odir.path());
        let mut oapp = Appender::new(other.log.clone());
        let prefix = master.replica_chunk(0, (SEG - 4) as usize).unwrap();
        assert_eq!(prefix.next, SEG - 4, "the records, not the tail: it does not fit");
        other.append_replicated(&mut oapp, 0, &prefix.bytes, 0).unwrap();
        let err = other
            .append_replicated(&mut oapp, SEG - 4, &[0, 0, 1, 0], 0)
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err}");
        drop(slave);
        assert_same(&master, &open(sdir.path()));
    }

    #[test]
    fn damaged_or_misplaced_chunks_are_refused_and_nothing_is_written() {
        let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = open(mdir.path());
        produce(&master, "one", 40, true);
        let slave = open(sdir.path());
        let mut app = Appender::new(slave.log.clone());
        // Follow the first segment only.
        let first = master.replica_chunk(0, SEG as usize).unwrap();
        assert_eq!(first.next, SEG, "the whole first segment, closed by its filler");
        let mut offsets_before = None;
        let mut check_refused = |bytes: &[u8], at: u64, kind: StoreErrorKind| {
            let end = slave.log.write_pos();
            let err = slave.append_replicated(&mut app, at, bytes, 0).unwrap_err();
            assert_eq!(err.kind(), kind, "{err}");
            assert_eq!(slave.log.write_pos(), end);
            let all = slave.offsets.all();
            assert_eq!(*offsets_before.get_or_insert_with(|| all.clone()), all);
            assert!(slave.topics.get("orders").is_none());
            if let Some(seg) = slave.log.segment_holding(end) {
                let tail = seg
                    .read((end - seg.start) as usize, (seg.start + SEG - end) as usize)
                    .unwrap();
                assert!(tail.iter().all(|b| *b == 0), "nothing written past the end");
            }
        };
        let mut flipped = first.bytes.to_vec();
        flipped[first.bytes.len() / 2] ^= 0x20;
        check_refused(&flipped, 0, StoreErrorKind::Corrupt);
        check_refused(&first.bytes[..first.bytes.len() - 1], 0, StoreErrorKind::Corrupt);
        check_refused(&first.bytes[..100], 0, StoreErrorKind::Corrupt);
        check_refused(&first.bytes, 1, StoreErrorKind::NotAtLogEnd);
        // A filler must be the last thing in a chunk.
        let mut after_filler = first.bytes.to_vec();
        after_filler.extend_from_slice(&first.bytes[..100]);
        check_refused(&after_filler, 0, StoreErrorKind::Corrupt);
        // Records that name other offsets (bytes meant for elsewhere).
        let later = master.replica_chunk(SEG, 4096).unwrap();
        check_refused(&later.bytes, 0, StoreErrorKind::Corrupt);
        let err = slave.append_replicated(&mut app, SEG, &later.bytes, 0).unwrap_err();
        assert!(
            matches!(err, StoreError::NotAtLogEnd { at: SEG, write_pos: 0 }),
            "{err}"
        );

        // The intact chunk is taken, then the rest.
        slave.append_replicated(&mut app, 0, &first.bytes, 0).unwrap();
        assert_eq!(slave.log.write_pos(), SEG);
        slave.append_replicated(&mut app, 0, &first.bytes, 0).unwrap_err();
        for (_, cq) in slave.queues.all() {
            assert_eq!(cq.max_offset(), cq.min_offset(), "not dispatched here");
        }
        // Dispatch what the first chunk held by following the rest from a
        // fresh appender, after re-dispatching via a restart.
        drop(app);
        drop(slave);
        let slave = open(sdir.path());
        let mut app = Appender::new(slave.log.clone());
        follow(&master, &slave, &mut app, 8192);
        assert_same(&master, &slave);
    }

    #[test]
    fn replica_chunk_errors_say_what_is_wrong() {
        let mdir = tempfile::tempdir().unwrap();
        let master = open(mdir.path());
        produce(&master, "one", 80, false);
        let end = master.log.write_pos();
        let chunk = master.replica_chunk(end, 100).unwrap();
        assert_eq!((chunk.from, chunk.next, chunk.bytes.len()), (end, end, 0));
        let err = master.replica_chunk(end + 1, 100).unwrap_err();
        assert!(
            matches!(err, StoreError::PastLogEnd { offset, write_pos } if offset == end + 1 && write_pos == end),
            "{err}"
        );
        let second = master.last_records(usize::MAX).unwrap().last().unwrap().0 + 1;
        let err = master.replica_chunk(second, 100).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err}");
        assert_eq!(master.record_crc_at(second).unwrap(), None);
        assert_eq!(master.record_crc_at(end).unwrap(), None);

        master.log.flush_to(u64::MAX).unwrap();
        master.delete_segments_below(2 * SEG).unwrap();
        assert_eq!(master.log.start_offset(), 2 * SEG);
        let err = master.replica_chunk(100, 100).unwrap_err();
        assert!(
            matches!(err, StoreError::OffsetDeleted { offset: 100, log_start } if log_start == 2 * SEG),
            "{err}"
        );
        assert_eq!(err.kind(), StoreErrorKind::OffsetDeleted);
        assert_eq!(
            master.record_crc_at(0).unwrap_err().kind(),
            StoreErrorKind::OffsetDeleted
        );
        // From the new start, records again.
        let chunk = master.replica_chunk(2 * SEG, 100).unwrap();
        assert!(!chunk.bytes.is_empty());
    }

    #[test]
    fn fingerprints_name_the_newest_records_across_segments() {
        let mdir = tempfile::tempdir().unwrap();
        let master = open(mdir.path());
        assert!(master.last_records(5).unwrap().is_empty());
        produce(&master, "one", 30, true);
        let all = master.last_records(usize::MAX).unwrap();
        let mut walked = Vec::new();
        let mut off = master.log.start_offset();
        while off < master.log.write_pos() {
            let Ok(rec) = master.log.record_at(off) else {
                off = off - off % SEG + SEG; // a filler or a short tail
                continue;
            };
            walked.push(off);
            off += rec.size as u64;
        }
        walked.reverse();
        assert_eq!(all.iter().map(|(o, _)| *o).collect::<Vec<_>>(), walked);
        for &(off, crc) in &all {
            assert_eq!(master.record_crc_at(off).unwrap(), Some(crc));
            let size = master.log.record_at(off).unwrap().size as u64;
            assert_eq!(master.record_end_at(off).unwrap(), Some(off + size));
        }
        // Short walks from a consume-queue entry give the same.
        for k in [1, 5, 23, 60, all.len(), all.len() + 1] {
            assert_eq!(master.last_records(k).unwrap(), all[..k.min(all.len())].to_vec(), "{k}");
        }
        assert!(master.walk_hint(master.log.write_pos(), 5).is_some());
        // Across a segment boundary, newest first.
        let first_in_last = all
            .iter()
            .position(|(o, _)| *o < master.log.write_pos() - master.log.write_pos() % SEG);
        let k = first_in_last.unwrap() + 3;
        assert_eq!(master.last_records(k).unwrap(), all[..k].to_vec());
        let (older, _) = all[10];
        assert_eq!(master.records_before(older, 4).unwrap(), all[11..15].to_vec());
    }

    #[test]
    fn a_new_slave_starts_where_the_masters_retention_left_the_log() {
        let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = open(mdir.path());
        produce(&master, "one", 80, false);
        master.log.flush_to(u64::MAX).unwrap();
        master.delete_segments_below(3 * SEG).unwrap();
        let start = master.log.start_offset();
        assert_eq!(start, 3 * SEG);
        produce(&master, "two", 10, true);

        let slave = open(sdir.path());
        let mut app = Appender::new(slave.log.clone());
        let err = slave.start_log_at(start + 1).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidArgument);
        let err = slave.append_replicated(&mut app, start, b"", 0).unwrap_err();
        assert!(matches!(err, StoreError::NotAtLogEnd { write_pos: 0, .. }), "{err}");
        slave.start_log_at(start).unwrap();
        assert_eq!(slave.log.write_pos(), start);
        assert_eq!(slave.log.start_offset(), start);
        slave.start_log_at(start).unwrap(); // idempotent
        follow(&master, &slave, &mut app, 20_000);
        assert_same(&master, &slave);
        let err = slave.start_log_at(0).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidArgument, "the log holds records");

        // A restart keeps the start; following goes on.
        drop(app);
        drop(slave);
        let slave = open(sdir.path());
        assert_same(&master, &slave);
        produce(&master, "three", 20, true);
        let mut app = Appender::new(slave.log.clone());
        follow(&master, &slave, &mut app, 20_000);
        assert_same(&master, &slave);

        // An empty slave restarted before its first record keeps it too.
        let edir = tempfile::tempdir().unwrap();
        {
            let empty = open(edir.path());
            empty.start_log_at(start).unwrap();
        }
        let empty = open(edir.path());
        assert_eq!(empty.log.write_pos(), start);
        let mut app = Appender::new(empty.log.clone());
        follow(&master, &empty, &mut app, 1 << 20);
        assert_same(&master, &empty);
    }

    #[test]
    fn a_diverged_slave_is_cut_back_to_where_it_agrees_and_then_follows() {
        let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = open(mdir.path());
        produce(&master, "common", 30, true);
        let slave = open(sdir.path());
        let mut app = Appender::new(slave.log.clone());
        follow(&master, &slave, &mut app, 1 << 20);
        let agreed = slave.log.write_pos();
        let (gkey, rogue) = (key("g", "orders", 0), key("rogue", "events", 1));
        let agreed_g = slave.offsets.get(&gkey);
        assert!(agreed_g.is_some());

        // Both go on on their own: the slave (an old master) takes writes
        // the master never saw, rolls a segment, commits offsets, and
        // snapshots them past the point where the logs part.
        produce(&master, "master", 20, true);
        produce(&slave, "slave", 60, false);
        commit(&slave, gkey.clone(), 999);
        commit(&slave, rogue.clone(), 7);
        produce(&slave, "slave more", 3, false);
        slave.flush_and_checkpoint().unwrap();
        assert!(slave.log.write_pos() / SEG > agreed / SEG, "the slave rolled a segment");
        let err = master.replica_chunk(slave.log.write_pos(), 1 << 20).unwrap_err();
        assert!(
            matches!(err.kind(), StoreErrorKind::PastLogEnd | StoreErrorKind::Corrupt),
            "{err}"
        );

        // The slave's newest records that the master holds too.
        let prints = slave.last_records(usize::MAX).unwrap();
        let (common, _) = *prints
            .iter()
            .find(|(off, crc)| master.record_crc_at(*off).unwrap() == Some(*crc))
            .unwrap();
        let cut = slave.record_end_at(common).unwrap().unwrap();
        assert_eq!(cut, agreed);
        let diverged = prints.iter().take_while(|(off, _)| *off >= cut).count() as u64;

        // Not a record boundary: refused, nothing changes.
        let err = slave.truncate_log_to(cut - 1).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidArgument, "{err}");
        assert!(slave.log.write_pos() > cut);
        // Not everything dispatched yet: refused.
        let undispatched = slave.dispatched_offset();
        slave.dispatched.store(cut, Ordering::Release);
        assert_eq!(
            slave.truncate_log_to(cut).unwrap_err().kind(),
            StoreErrorKind::InvalidArgument
        );
        slave.mark_dispatched(undispatched);

        let old_end = slave.log.write_pos();
        let report = slave.truncate_log_to(cut).unwrap();
        assert_eq!(report.offset, cut);
        assert_eq!(report.old_end, old_end);
        assert_eq!(report.bytes, old_end - cut);
        assert_eq!(report.records, diverged);
        assert_eq!(report.offset_commits, 2);
        assert_eq!(report.offsets_restored, 2);
        assert!(report.segments >= 1, "{report:?}");
        assert!(report.queue_entries >= 300);
        assert_eq!(slave.log.write_pos(), cut);
        assert_eq!(slave.dispatched_offset(), cut);
        assert_eq!(
            slave.offsets.get(&gkey),
            agreed_g,
            "set back to the commit that remains"
        );
        assert_eq!(slave.offsets.get(&rogue), None, "a commit only the cut made is gone");
        assert_eq!(slave.last_records(1).unwrap()[0].0, common);

        // Cutting where the log ends changes nothing.
        assert_eq!(slave.truncate_log_to(cut).unwrap().records, 0);

        follow(&master, &slave, &mut app, 10_000);
        assert_same(&master, &slave);
        drop(app);
        drop(slave);
        let slave = open(sdir.path());
        assert_same(&master, &slave);
    }

    #[test]
    fn a_slave_cut_back_to_its_start_can_start_again_elsewhere() {
        let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = open(mdir.path());
        produce(&master, "one", 60, true);
        let slave = open(sdir.path());
        produce(&slave, "stale", 20, true);
        // The master's retention went past all the slave has.
        master.log.flush_to(u64::MAX).unwrap();
        master.delete_segments_below(2 * SEG).unwrap();
        let err = master.replica_chunk(slave.log.write_pos(), 1000).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::OffsetDeleted, "{err}");
        let report = slave.truncate_log_to(slave.log.start_offset()).unwrap();
        assert!(report.records >= 100);
        slave.start_log_at(master.log.start_offset()).unwrap();
        let mut app = Appender::new(slave.log.clone());
        follow(&master, &slave, &mut app, 1 << 20);
        // Offsets committed below the master's start are not replicated.
        let lost: Vec<_> = master
            .offsets
            .all()
            .into_iter()
            .filter(|(k, _)| slave.offsets.get(k).is_none())
            .collect();
        for (k, v) in lost {
            slave.offsets.apply(&[(k, v)]);
        }
        assert_same(&master, &slave);
    }

    #[test]
    fn truncation_at_a_filler_a_segment_start_or_the_start_then_follows_again() {
        let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = open(mdir.path());
        produce(&master, "one", 80, true);
        let slave = open(sdir.path());
        let mut app = Appender::new(slave.log.clone());
        let chunks = follow(&master, &slave, &mut app, 1 << 20);
        let filler = chunks
            .iter()
            .find(|c| c.next % SEG == 0 && c.from < SEG * 3)
            .map(|c| c.from + c.bytes.len() as u64 - BLANK_HEADER_LEN as u64)
            .unwrap();
        assert_eq!(slave.record_crc_at(filler).unwrap(), None, "a filler is no record");
        for cut in [2 * SEG, filler, 0] {
            let report = slave.truncate_log_to(cut).unwrap();
            assert_eq!(slave.log.write_pos(), cut);
            assert!(report.records > 0 && report.queue_entries > 0, "{report:?}");
            assert!(slave.last_records(1).unwrap().first().is_none_or(|(o, _)| *o < cut));
            for (_, cq) in slave.queues.all() {
                if let Some(last) = cq.max_offset().checked_sub(1).and_then(|o| cq.get(o)) {
                    assert!(last.phys_offset < cut);
                }
            }
            follow(&master, &slave, &mut app, 30_000);
            assert_same(&master, &slave);
        }
        drop(app);
        drop(slave);
        assert_same(&master, &open(sdir.path()));
    }

    #[test]
    fn a_failed_write_publishes_nothing_and_undoes_its_commits() {
        let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = open(mdir.path());
        produce(&master, "one", 80, true);
        let slave = open(sdir.path());
        let mut app = Appender::new(slave.log.clone());
        let first = master.replica_chunk(0, SEG as usize).unwrap();
        slave.append_replicated(&mut app, 0, &first.bytes, 0).unwrap();
        // The next segment cannot be created: a directory holds its name.
        let blocker = sdir
            .path()
            .join("commitlog")
            .join(super::super::fsutil::offset_file_name(SEG));
        std::fs::create_dir(&blocker).unwrap();
        let second = master.replica_chunk(SEG, SEG as usize).unwrap();
        let commits = check_chunk(SEG, &second.bytes, SEG)
            .unwrap()
            .0
            .iter()
            .filter(|c| c.rec.as_ref().is_some_and(|r| r.topic == OFFSETS_TOPIC))
            .count();
        assert!(commits > 0, "the chunk commits offsets");
        let before = slave.offsets.all();
        let err = slave.append_replicated(&mut app, SEG, &second.bytes, 0).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Io, "{err}");
        assert_eq!(slave.log.write_pos(), SEG);
        assert_eq!(slave.offsets.all(), before, "the chunk's commits were undone");
        std::fs::remove_dir(&blocker).unwrap();
        // The first chunk was never dispatched here: a restart does it.
        drop(app);
        drop(slave);
        let slave = open(sdir.path());
        let mut app = Appender::new(slave.log.clone());
        follow(&master, &slave, &mut app, 1 << 20);
        assert_same(&master, &slave);
    }

    /// What the broker does when a topic is deleted (its data: the topic
    /// table entry, the queue offsets, the consume queues).
    fn delete_topic(store: &Store, topic: &str) {
        store.topics.remove(topic).unwrap();
        store.forget_topic_offsets(topic).unwrap();
        store.queues.remove_topic(topic).unwrap();
    }

    #[test]
    fn a_topic_deleted_and_created_again_on_the_master_starts_over_here() {
        let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let master = open(mdir.path());
        produce(&master, "one", 12, true);
        let slave = open(sdir.path());
        let mut app = Appender::new(slave.log.clone());
        follow(&master, &slave, &mut app, 1 << 20);

        // Deleted and created again between two fetches.
        delete_topic(&master, "orders");
        append(&master, "orders", 2, &[entry("again", None, Some("k-again"))]);
        produce(&master, "two", 3, false);
        follow(&master, &slave, &mut app, 1 << 20);
        assert!(slave.queues.get("orders", 3).is_none(), "dropped as on the master");
        assert_same(&master, &slave);

        // Old records of the topic and its new start in one chunk; the
        // slave had not dispatched the topic's previous records yet.
        append(&master, "orders", 2, &[entry("before", None, None)]);
        let pending = master.replica_chunk(slave.log.write_pos(), 1 << 20).unwrap();
        let batch = slave
            .append_replicated(&mut app, pending.from, &pending.bytes, 0)
            .unwrap();
        delete_topic(&master, "orders");
        append(&master, "orders", 1, &[entry("third life", None, None)]);
        append(&master, "orders", 2, &[entry("third life", None, None)]);
        let mixed = master.replica_chunk(slave.log.write_pos(), 1 << 20).unwrap();
        let err = slave
            .append_replicated(&mut app, mixed.from, &mixed.bytes, 0)
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidArgument, "{err}");
        assert_eq!(slave.log.write_pos(), mixed.from, "nothing written");
        for d in &batch.dispatch {
            slave.dispatch(d).unwrap();
        }
        slave.mark_dispatched(batch.end);
        let stored = slave.append_replicated(&mut app, mixed.from, &mixed.bytes, 0).unwrap();
        assert_eq!(stored.end, mixed.next);
        for d in &stored.dispatch {
            slave.dispatch(d).unwrap();
        }
        slave.mark_dispatched(stored.end);
        assert_same(&master, &slave);
        assert_eq!(slave.queues.get("orders", 2).unwrap().max_offset(), 1);

        // Records of the topic's earlier life before its new start, in
        // one chunk: they are not dispatched.
        append(&master, "orders", 1, &[entry("old", None, None)]);
        delete_topic(&master, "orders");
        append(&master, "orders", 1, &[entry("fourth life", None, None)]);
        let stored = follow(&master, &slave, &mut app, 1 << 20);
        assert_eq!(stored.len(), 1);
        assert_same(&master, &slave);
        // Replaying a topic's several lives is beyond recovery (the
        // master's too): a restart replays from the checkpoint, which the
        // flusher keeps moving.
        slave.flush_and_checkpoint().unwrap();
        drop(app);
        drop(slave);
        assert_same(&master, &open(sdir.path()));
    }
}
