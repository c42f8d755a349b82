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
}

mod apply;
mod truncate;

#[cfg(test)]
mod tests;
