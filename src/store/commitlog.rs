//! The commitlog: one append-only log per broker, split into pre-allocated
//! segments named by their start offset, written with pwrite and read
//! through read-only mappings.
//!
//! Concurrency contract: exactly one [`Appender`] (owned by the
//! `CommitLogWriter` actor) writes; it publishes the end of the fully
//! written records with a release store of `write_pos`; readers read only
//! below an acquire load of it. The flusher thread fdatasyncs below `write_pos`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};

use super::error::{IoContext, StoreError, StoreResult};
use super::fsutil::{list_offset_files, offset_file_name};
use super::mmap_file::{MappedFile, WriteMode};
use super::record::{self, Probe, RecordFields, StoredRecord, BLANK_HEADER_LEN};
use super::retention::SegmentInfo;

mod gather;
pub use gather::Gather;

/// One segment file.
#[derive(Debug)]
pub struct Segment {
    /// Physical offset of the segment's first byte.
    pub start: u64,
    file: MappedFile,
}

impl Segment {
    /// The segment's file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The segment's `len` bytes at `pos` (counted from its start). Only
    /// bytes below the log's write position are published.
    pub(crate) fn read(&self, pos: usize, len: usize) -> StoreResult<&[u8]> {
        self.file.read_at(pos, len)
    }
}

/// The shared commitlog.
#[derive(Debug)]
pub struct CommitLog {
    dir: PathBuf,
    segment_bytes: u64,
    segments: RwLock<Vec<Arc<Segment>>>,
    write_pos: AtomicU64,
    flushed_pos: AtomicU64,
    /// End of what writeback was started for (flusher thread only).
    writeback_pos: AtomicU64,
    /// Damaged records found (by recovery or by a read) since start.
    corrupt_records: AtomicU64,
    /// End of the log as recovery found it on disk: records below it came
    /// from the disk and readers check their CRC; records this process
    /// appended were encoded (with their CRC) here and are not checked
    /// again on the hot read path.
    read_checks_below: AtomicU64,
    /// Ranges recovery quarantined: `(offset, len)`, oldest first.
    quarantined: std::sync::Mutex<Vec<(u64, u64)>>,
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The record can never fit in a segment.
    #[error("record of {size} bytes exceeds the segment size {segment_bytes}")]
    TooLarge {
        /// Encoded record size.
        size: usize,
        /// Configured segment size.
        segment_bytes: u64,
    },
    /// The disk refused (full, I/O error), or the store's state did.
    #[error("commitlog write failed: {0}")]
    Io(#[from] StoreError),
}

impl CommitLog {
    /// Opens (creating the directory) the segments in `dir`. The write
    /// position is unknown until [`CommitLog::recover`] runs.
    pub fn open(dir: &Path, segment_bytes: u64) -> StoreResult<CommitLog> {
        if segment_bytes <= BLANK_HEADER_LEN as u64 {
            return Err(StoreError::InvalidArgument(format!(
                "a segment size of {segment_bytes} bytes is too small"
            )));
        }
        std::fs::create_dir_all(dir).at("create directory", dir)?;
        let mut segments = Vec::new();
        let starts = list_offset_files(dir)?;
        let newest = starts.last().copied();
        for start in starts {
            if start % segment_bytes != 0 {
                return Err(StoreError::corrupt(
                    "segment",
                    dir.join(offset_file_name(start)),
                    format!(
                        "does not start at a multiple of the segment size {segment_bytes}; \
                         was store.segment_bytes changed?"
                    ),
                ));
            }
            check_segment_size(&dir.join(offset_file_name(start)), segment_bytes, Some(start) == newest)?;
            let file = MappedFile::create_or_open_with(
                dir.join(offset_file_name(start)),
                segment_bytes as usize,
                WriteMode::Pwrite,
            )?;
            segments.push(Arc::new(Segment { start, file }));
        }
        Ok(CommitLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: RwLock::new(segments),
            write_pos: AtomicU64::new(0),
            flushed_pos: AtomicU64::new(0),
            writeback_pos: AtomicU64::new(0),
            corrupt_records: AtomicU64::new(0),
            read_checks_below: AtomicU64::new(0),
            quarantined: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Configured segment size.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// End of the fully written records (readers may read below it).
    pub fn write_pos(&self) -> u64 {
        self.write_pos.load(Ordering::Acquire)
    }

    /// End of what is known durable.
    pub fn flushed_pos(&self) -> u64 {
        self.flushed_pos.load(Ordering::Acquire)
    }

    /// Damaged records found since start: quarantined by recovery, or
    /// skipped by a read whose CRC check failed
    /// (`ferromq_store_corrupt_records_total`).
    pub fn corrupt_records(&self) -> u64 {
        self.corrupt_records.load(Ordering::Relaxed)
    }

    /// True when a reader should check the CRC of the record at `offset`:
    /// it was on disk when the broker started (damage there is what reads
    /// must not serve). Records appended since were encoded by this process.
    pub fn needs_read_check(&self, offset: u64) -> bool {
        offset < self.read_checks_below.load(Ordering::Acquire)
    }

    /// Counts a damaged record a reader found (and skipped) at `offset`,
    /// with an error log line.
    /// A range recovery quarantined was counted then, and is not again.
    pub fn note_corrupt_record(&self, offset: u64, size: u32) {
        let known = self
            .quarantined
            .lock()
            .map(|q| q.iter().any(|(at, _)| *at == offset))
            .unwrap_or(false);
        if known {
            tracing::debug!(offset, size, "skipping a quarantined commitlog record");
            return;
        }
        self.corrupt_records.fetch_add(1, Ordering::Relaxed);
        tracing::error!(offset, size, "skipping a commitlog record that fails its CRC check");
    }

    /// The newest range recovery quarantined that starts below `offset`:
    /// `(offset, len)`. Bytes there fail the CRC check of every reader.
    pub fn quarantined_before(&self, offset: u64) -> Option<(u64, u64)> {
        let q = self.quarantined.lock().ok()?;
        q.iter().rev().find(|(at, _)| *at < offset).copied()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.read().map(|s| s.len()).unwrap_or(0)
    }

    fn segment_for(&self, offset: u64) -> Option<Arc<Segment>> {
        let segs = self.segments.read().ok()?;
        let idx = segs.partition_point(|s| s.start <= offset).checked_sub(1)?;
        let seg = &segs[idx];
        (offset < seg.start + self.segment_bytes).then(|| seg.clone())
    }

    fn first_segment_start(&self) -> Option<u64> {
        self.segments.read().ok()?.first().map(|s| s.start)
    }

    /// Copies the `size` bytes at `offset` (which must lie below the write
    /// position, within one segment) onto `out`.
    pub fn read_into(&self, offset: u64, size: usize, out: &mut BytesMut) -> StoreResult<()> {
        self.check_published(offset, size)?;
        let (seg, pos) = self.locate(offset)?;
        out.extend_from_slice(seg.file.read_at(pos, size)?);
        Ok(())
    }

    /// Fails unless `offset..offset + size` lies below the write position;
    /// returns its end.
    fn check_published(&self, offset: u64, size: usize) -> StoreResult<u64> {
        let end = offset
            .checked_add(size as u64)
            .ok_or_else(|| StoreError::InvalidArgument(format!("range {offset}+{size} overflows")))?;
        if end > self.write_pos() {
            return Err(StoreError::InvalidArgument(format!(
                "range {offset}+{size} is past the end of the commitlog"
            )));
        }
        Ok(end)
    }

    /// The segment holding `offset`, and the offset's position in it.
    fn locate(&self, offset: u64) -> StoreResult<(Arc<Segment>, usize)> {
        let seg = self
            .segment_for(offset)
            .ok_or_else(|| match self.first_segment_start() {
                Some(first) if offset < first => StoreError::NotFound(format!(
                    "offset {offset} moved: deleted by retention, the commitlog now starts at {first}"
                )),
                _ => StoreError::NotFound(format!("no segment holds offset {offset}")),
            })?;
        let pos = (offset - seg.start) as usize;
        Ok((seg, pos))
    }

    /// Reads and decodes the record starting at `offset`.
    pub fn record_at(&self, offset: u64) -> StoreResult<StoredRecord> {
        let no_record = || StoreError::NotFound(format!("no record starts at offset {offset}"));
        let mut head = BytesMut::with_capacity(4);
        self.read_into(offset, 4, &mut head)?;
        let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if size < BLANK_HEADER_LEN || size as u64 > self.segment_bytes {
            return Err(no_record());
        }
        let mut buf = BytesMut::with_capacity(size);
        self.read_into(offset, size, &mut buf)?;
        let rec = StoredRecord::decode(buf.freeze()).map_err(|e| StoreError::Corrupt {
            what: "commitlog record",
            path: None,
            offset: Some(offset),
            detail: e.to_string(),
        })?;
        if rec.phys_offset != offset {
            return Err(no_record());
        }
        Ok(rec)
    }

    /// Makes everything below `target` durable (fdatasync). Called by the
    /// flusher thread only. Returns the new flushed position.
    pub fn flush_to(&self, target: u64) -> StoreResult<u64> {
        let target = target.min(self.write_pos());
        let mut from = self.flushed_pos();
        while from < target {
            let seg = self
                .segment_for(from)
                .ok_or_else(|| StoreError::NotFound(format!("no segment holds offset {from} to flush")))?;
            let seg_end = seg.start + self.segment_bytes;
            let upto = target.min(seg_end);
            // fdatasync: segments are written with pwrite (see WriteMode).
            seg.file.sync_data()?;
            from = if upto == seg_end { upto } else { target };
        }
        // Capped by the write position again: a replica's truncation
        // ([`CommitLog::truncate_to`]) may have lowered it meanwhile.
        self.flushed_pos
            .fetch_max(target.min(self.write_pos()), Ordering::AcqRel);
        Ok(self.flushed_pos())
    }

    /// Starts (without waiting) writeback of everything written since the
    /// last call, so dirty pages never pile up until the kernel throttles
    /// the writer. Called by the flusher thread only.
    pub fn start_writeback(&self) -> StoreResult<()> {
        let target = self.write_pos();
        let mut from = self.writeback_pos.load(Ordering::Acquire).max(self.flushed_pos());
        while from < target {
            let Some(seg) = self.segment_for(from) else { break };
            let upto = target.min(seg.start + self.segment_bytes);
            seg.file
                .start_writeback((from - seg.start) as usize, (upto - from) as usize)?;
            from = upto;
        }
        self.writeback_pos.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// The first offset still stored: the oldest segment's start (the
    /// write position when there is no segment).
    pub fn start_offset(&self) -> u64 {
        self.first_segment_start().unwrap_or_else(|| self.write_pos())
    }

    /// Every segment, oldest first, for the retention policy. A segment's
    /// newest record time is its file's last modification time (as
    /// RocketMQ does): every append is a `pwrite` into the file, so the
    /// mtime is the time of its newest record (to the clock's precision),
    /// costs one `stat` and survives restarts. Segments reaching past
    /// `settled_below` (the active one, anything not yet durable or
    /// dispatched) are marked active, and so is the last segment.
    pub fn segment_infos(&self, settled_below: u64) -> StoreResult<Vec<SegmentInfo>> {
        let segs: Vec<Arc<Segment>> = self
            .segments
            .read()
            .map_err(|_| StoreError::Poisoned("segment table"))?
            .clone();
        let settled_below = settled_below.min(self.flushed_pos()).min(self.write_pos());
        let mut out = Vec::with_capacity(segs.len());
        let last = segs.len().saturating_sub(1);
        for (i, seg) in segs.into_iter().enumerate() {
            let path = seg.file.path();
            let modified = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .at("stat segment", path)?;
            let newest_ms = modified
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let end = seg.start + self.segment_bytes;
            out.push(SegmentInfo {
                start: seg.start,
                size: self.segment_bytes,
                newest_ms,
                // The last segment is the one appended to next, even when
                // the write position sits exactly at its end.
                active: i == last || end > settled_below,
            });
        }
        Ok(out)
    }

    /// Removes the segments wholly below `below` (which must not reach past
    /// the flushed position) from the segment table and returns them, so
    /// the caller deletes their files without holding any lock: new reads
    /// below the new start fail with an "offset moved" error, while readers
    /// already holding a segment (an `Arc`) keep a valid mapping of the
    /// unlinked file until they drop it.
    pub fn detach_segments_below(&self, below: u64) -> StoreResult<Vec<Arc<Segment>>> {
        let below = below.min(self.flushed_pos());
        let mut segs = self
            .segments
            .write()
            .map_err(|_| StoreError::Poisoned("segment table"))?;
        let n = segs.partition_point(|s| s.start + self.segment_bytes <= below);
        // Never the segment being written (the last one).
        let n = n.min(segs.len().saturating_sub(1));
        Ok(segs.drain(..n).collect())
    }

    /// The segment holding `offset`, if one is stored.
    pub(crate) fn segment_holding(&self, offset: u64) -> Option<Arc<Segment>> {
        self.segment_for(offset)
    }

    /// Makes a log that holds no record (its write position is its start:
    /// a new replica, or one truncated to its start) start at `offset`, a
    /// multiple of the segment size: its (empty) segments are deleted and
    /// the segment starting at `offset` is created, so recovery finds the
    /// log starting there after a restart. Only while nothing appends.
    pub(crate) fn restart_empty_at(&self, offset: u64) -> StoreResult<()> {
        if offset % self.segment_bytes != 0 {
            return Err(StoreError::InvalidArgument(format!(
                "a commitlog cannot start at {offset}: not a multiple of the segment size {}",
                self.segment_bytes
            )));
        }
        let end = self.write_pos();
        if end != self.start_offset() {
            return Err(StoreError::InvalidArgument(format!(
                "cannot move the start of a commitlog holding records ({} to {end})",
                self.start_offset()
            )));
        }
        let old: Vec<Arc<Segment>> = {
            let mut segs = self
                .segments
                .write()
                .map_err(|_| StoreError::Poisoned("segment table"))?;
            if end == offset && segs.len() == 1 && segs[0].start == offset {
                return Ok(());
            }
            segs.drain(..).collect()
        };
        for seg in &old {
            // They hold no record: the log ends where it starts.
            std::fs::remove_file(seg.path()).at("delete an empty segment", seg.path())?;
        }
        self.add_segment(offset)?;
        for pos in [
            &self.write_pos,
            &self.flushed_pos,
            &self.writeback_pos,
            &self.read_checks_below,
        ] {
            pos.store(offset, Ordering::Release);
        }
        tracing::info!(start = offset, "the commitlog now starts at a new offset");
        Ok(())
    }

    /// Cuts the log at `offset` (a record boundary at or below the write
    /// position, which the caller checked): lowers the write, flushed and
    /// writeback positions first (new readers stop there), then zeroes the
    /// rest of the segment holding `offset` and deletes later segments.
    /// Only while nothing appends. Returns the bytes zeroed and the
    /// segments deleted (as `zeroed_bytes` and `deleted_segments`).
    pub(crate) fn truncate_to(&self, offset: u64) -> StoreResult<RecoveryReport> {
        let end = self.write_pos();
        if offset > end {
            return Err(StoreError::PastLogEnd { offset, write_pos: end });
        }
        let start = self.start_offset();
        if offset < start {
            return Err(StoreError::OffsetDeleted {
                offset,
                log_start: start,
            });
        }
        self.write_pos.store(offset, Ordering::Release);
        for pos in [&self.flushed_pos, &self.writeback_pos, &self.read_checks_below] {
            pos.fetch_min(offset, Ordering::AcqRel);
        }
        if let Ok(mut q) = self.quarantined.lock() {
            q.retain(|(at, _)| *at < offset);
        }
        let (keep, cut): (Vec<Arc<Segment>>, Vec<Arc<Segment>>) = {
            let mut segs = self
                .segments
                .write()
                .map_err(|_| StoreError::Poisoned("segment table"))?;
            let (keep, cut) = segs.drain(..).partition(|s| s.start <= offset);
            *segs = keep;
            (segs.clone(), cut)
        };
        let mut report = RecoveryReport {
            end: offset,
            ..RecoveryReport::default()
        };
        if let Some(seg) = keep.last() {
            if offset < seg.start + self.segment_bytes {
                report.zeroed_bytes = zero_tail(&seg.file, (offset - seg.start) as usize)?;
            }
        }
        for seg in cut {
            // Readers still holding the segment keep a valid mapping.
            std::fs::remove_file(seg.path()).at("delete a truncated segment", seg.path())?;
            report.deleted_segments += 1;
        }
        Ok(report)
    }

    fn add_segment(&self, start: u64) -> StoreResult<Arc<Segment>> {
        let path = self.dir.join(offset_file_name(start));
        // The error names the segment's file (and, for I/O, what failed).
        let file = MappedFile::create_or_open_with(&path, self.segment_bytes as usize, WriteMode::Pwrite)?;
        let seg = Arc::new(Segment { start, file });
        self.segments
            .write()
            .map_err(|_| StoreError::Poisoned("segment table"))?
            .push(seg.clone());
        Ok(seg)
    }

    /// Finds the end of the log by walking records from the segment holding
    /// `from` (a record boundary, e.g. the checkpoint), checking sizes and
    /// CRCs. Everything after the last whole record is erased: the rest of
    /// that segment is zeroed and later segments are deleted. Calls `visit`
    /// for every valid record at or after `from`. Sets the write position.
    pub fn recover(&self, from: u64, mut visit: impl FnMut(u64, &[u8])) -> StoreResult<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let segs: Vec<Arc<Segment>> = self
            .segments
            .read()
            .map_err(|_| StoreError::Poisoned("segment table"))?
            .clone();
        let Some(first) = segs.first() else {
            return Ok(report);
        };
        // Start at the segment holding `from`; a checkpoint past the data
        // (or before the first segment) falls back to a wider scan.
        let start_idx = segs.partition_point(|s| s.start <= from).saturating_sub(1);
        let mut pos = segs[start_idx].start.max(first.start);
        let mut end = pos;
        let seg_len = self.segment_bytes as usize;
        'segments: for (i, seg) in segs.iter().enumerate().skip(start_idx) {
            if seg.start != pos {
                // A hole between segments: the log ends before it.
                break;
            }
            let data = seg.file.read_at(0, seg_len)?;
            let mut p = 0usize;
            loop {
                if seg_len - p < BLANK_HEADER_LEN {
                    pos = seg.start + self.segment_bytes;
                    end = pos;
                    continue 'segments;
                }
                match record::probe(&data[p..]) {
                    Probe::Record(size) => {
                        let off = seg.start + p as u64;
                        if off >= from {
                            visit(off, &data[p..p + size]);
                        }
                        report.records += 1;
                        p += size;
                    }
                    Probe::Blank => {
                        pos = seg.start + self.segment_bytes;
                        end = pos;
                        if i + 1 == segs.len() {
                            break 'segments;
                        }
                        continue 'segments;
                    }
                    Probe::End => {
                        // A torn tail (nothing valid follows: the log ends
                        // here) or damage in the middle (a valid record
                        // follows: quarantine the bad bytes, keep the rest).
                        let at = seg.start + p as u64;
                        let resume = resync(data, p, seg.start).or_else(|| {
                            let next = segs.get(i + 1)?;
                            let seg_end = seg.start + self.segment_bytes;
                            let head = next.file.read_at(0, seg_len).ok()?;
                            (next.start == seg_end && valid_record_at(head, 0, next.start).is_some()).then_some(seg_len)
                        });
                        let Some(q) = resume else {
                            end = at;
                            break 'segments;
                        };
                        let len = (q - p) as u64;
                        tracing::error!(
                            segment = %seg.file.path().display(),
                            offset = at,
                            len,
                            "corrupt commitlog record in the middle of the log: quarantined (never dispatched \
                             or delivered); the valid records after it are kept"
                        );
                        self.corrupt_records.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut qs) = self.quarantined.lock() {
                            qs.push((at, len));
                        }
                        report.corrupt_records += 1;
                        if q == seg_len {
                            pos = seg.start + self.segment_bytes;
                            end = pos;
                            continue 'segments;
                        }
                        p = q;
                    }
                }
            }
        }
        report.end = end;
        self.truncate_after(end, &segs, &mut report)?;
        self.write_pos.store(end, Ordering::Release);
        self.flushed_pos.store(end, Ordering::Release);
        self.read_checks_below.store(end, Ordering::Release);
        Ok(report)
    }

    fn truncate_after(&self, end: u64, segs: &[Arc<Segment>], report: &mut RecoveryReport) -> StoreResult<()> {
        let mut keep = Vec::new();
        for seg in segs {
            let seg_end = seg.start + self.segment_bytes;
            if seg_end <= end {
                keep.push(seg.clone());
            } else if seg.start <= end {
                // The segment the log ends in: erase whatever follows.
                let zeroed = zero_tail(&seg.file, (end - seg.start) as usize)?;
                if zeroed > 0 {
                    tracing::warn!(
                        segment = %seg.file.path().display(),
                        from = end,
                        to = seg_end,
                        "the commitlog ends at a torn or partial record: erased the bytes from its end to the \
                         segment's end (nothing valid follows)"
                    );
                }
                report.zeroed_bytes += zeroed;
                keep.push(seg.clone());
            } else {
                tracing::warn!(segment = %seg.file.path().display(), "deleting segment past the end of the log");
                std::fs::remove_file(seg.file.path()).at("delete segment", seg.file.path())?;
                report.deleted_segments += 1;
            }
        }
        *self
            .segments
            .write()
            .map_err(|_| StoreError::Poisoned("segment table"))? = keep;
        Ok(())
    }
}

/// The record at `p` of a segment (starting at log offset `seg_start`)
/// whose bytes are `data`, if it is whole, its CRC matches and it names its
/// own position: returns its size.
fn valid_record_at(data: &[u8], p: usize, seg_start: u64) -> Option<usize> {
    let Probe::Record(size) = record::probe(data.get(p..)?) else {
        return None;
    };
    let phys = data.get(p + 28..p + 36)?;
    (u64::from_be_bytes(phys.try_into().ok()?) == seg_start + p as u64).then_some(size)
}

/// Where the valid records resume after the damaged bytes at `p`, within
/// this segment: `None` when nothing valid follows (a torn tail).
///
/// A bit flip in a record's body leaves its size intact, so the record
/// that follows is tried first. Otherwise (a damaged size) the bytes after
/// `p` are scanned for the next position holding a whole record with a
/// matching CRC that names its own position. Records are written
/// contiguously, so the scan stops at the first 64 KiB-aligned chunk of
/// zeroes (the unwritten rest of the segment): a torn tail costs a short
/// scan, never a walk over a whole pre-allocated segment.
fn resync(data: &[u8], p: usize, seg_start: u64) -> Option<usize> {
    const CHUNK: usize = 64 * 1024;
    if let Some(head) = data.get(p..p + 4) {
        let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if size >= BLANK_HEADER_LEN {
            if let Some(q) = p.checked_add(size).filter(|q| *q < data.len()) {
                if valid_record_at(data, q, seg_start).is_some() {
                    return Some(q);
                }
            }
        }
    }
    let magic = record::RECORD_MAGIC.to_be_bytes();
    let mut q = p + 1;
    while q + BLANK_HEADER_LEN <= data.len() {
        if q % CHUNK == 0 && data[q..(q + CHUNK).min(data.len())].iter().all(|b| *b == 0) {
            return None;
        }
        if data[q + 4..q + 8] == magic && valid_record_at(data, q, seg_start).is_some() {
            return Some(q);
        }
        q += 1;
    }
    None
}

/// Checks a segment file's size before it is mapped, repairing what can be
/// repaired without losing a record:
///
/// * the newest segment (`newest`) is set to `segment_bytes` either way:
///   bytes past the segment size never hold a record (records never cross
///   a segment's end), and zeroes appended to a short file read as the end
///   of the log, which recovery then finds as usual;
/// * an older segment that is too long is truncated for the same reason;
/// * an older segment that is too short lost the end of its records: that
///   is refused with an error naming the file and the fix, since padding it
///   would silently drop those records.
///
/// Every repair is logged with the path and the old and new size.
fn check_segment_size(path: &Path, segment_bytes: u64, newest: bool) -> StoreResult<()> {
    let actual = std::fs::metadata(path).at("stat", path)?.len();
    if actual == segment_bytes {
        return Ok(());
    }
    if !newest && actual < segment_bytes {
        return Err(StoreError::corrupt(
            "segment",
            path,
            format!(
                "file is {actual} bytes, expected {segment_bytes}: the end of an older segment is missing \
                 (restore the file from a backup; or, accepting the loss of the records in the missing \
                 bytes, pad it with `truncate -s {segment_bytes} {}` and restart)",
                path.display()
            ),
        ));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .at("open for repair", path)?;
    file.set_len(segment_bytes).at("set the segment size", path)?;
    file.sync_all().at("sync", path)?;
    tracing::warn!(
        segment = %path.display(),
        old_size = actual,
        new_size = segment_bytes,
        "repaired the size of a commitlog segment"
    );
    Ok(())
}

/// Erases stale bytes after the end of the log so that no torn or old record
/// past the truncation point can ever be read back.
///
/// Records are written contiguously, so a cleanly ended log is followed by
/// zeroes: when the first chunk after `from` is all zero nothing is touched
/// (this keeps start-up from faulting in a whole pre-allocated segment).
/// Otherwise every non-zero chunk up to the end of the file is zeroed.
fn zero_tail(file: &MappedFile, from: usize) -> StoreResult<u64> {
    const CHUNK: usize = 64 * 1024;
    let first = CHUNK.min(file.len().saturating_sub(from));
    if file.read_at(from, first)?.iter().all(|b| *b == 0) {
        return Ok(0);
    }
    let zeros = vec![0u8; CHUNK];
    let mut zeroed = 0u64;
    let mut pos = from;
    while pos < file.len() {
        let n = CHUNK.min(file.len() - pos);
        if file.read_at(pos, n)?.iter().any(|b| *b != 0) {
            file.pwrite_at(pos, &zeros[..n])?;
            zeroed += n as u64;
        }
        pos += n;
    }
    if zeroed > 0 {
        file.sync_data()?;
    }
    Ok(zeroed)
}

/// What recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Valid records walked.
    pub records: u64,
    /// End of the log (the new write position).
    pub end: u64,
    /// Bytes of torn or stale data erased.
    pub zeroed_bytes: u64,
    /// Segment files past the end that were deleted.
    pub deleted_segments: u64,
    /// Damaged records in the middle of the log (valid records follow
    /// them) that were quarantined: kept on disk, never visited.
    pub corrupt_records: u64,
}

/// Where one appended record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Physical offset.
    pub phys_offset: u64,
    /// Encoded size.
    pub size: u32,
}

/// The single writer of a [`CommitLog`]. Encodes record heads (and small
/// bodies) into a scratch buffer and writes each segment's share of a batch
/// with one `pwritev`, large bodies straight from the request.
#[derive(Debug)]
pub struct Appender {
    log: Arc<CommitLog>,
    scratch: Vec<u8>,
}

impl Appender {
    /// The writer for `log` (after recovery).
    pub fn new(log: Arc<CommitLog>) -> Appender {
        Appender {
            log,
            scratch: Vec::with_capacity(1 << 20),
        }
    }

    /// The log written to.
    pub fn log(&self) -> &Arc<CommitLog> {
        &self.log
    }

    /// Appends records built by `fields(i, phys_offset)` for `i in 0..count`;
    /// the physical offset is decided here (segments roll when a record
    /// does not fit). Publishes the new write position when all are written.
    pub fn append<'a, F>(&mut self, count: usize, mut fields: F) -> Result<Vec<Placement>, AppendError>
    where
        F: FnMut(usize, u64) -> RecordFields<'a>,
    {
        let seg_bytes = self.log.segment_bytes;
        // Refuse the whole batch before writing any of it.
        for i in 0..count {
            let size = fields(i, 0).encoded_len();
            if size as u64 > seg_bytes - BLANK_HEADER_LEN as u64 {
                return Err(AppendError::TooLarge {
                    size,
                    segment_bytes: seg_bytes,
                });
            }
        }
        let start = self.log.write_pos();
        let result = self.append_checked(count, &mut fields);
        if result.is_err() {
            // Bytes written but never published must not survive to be
            // mistaken for records by a later recovery.
            self.discard_unpublished(start);
        }
        result
    }

    /// Writes log bytes that were validated by the caller (a master's
    /// records, for replication) at `at`, which must be the write position
    /// ([`StoreError::NotAtLogEnd`] otherwise), and publishes `end` as the
    /// new write position: `at + bytes.len()`, or the end of the segment
    /// when the bytes close it with a filler's header (the rest of a filler
    /// is zeroes, which the log past its end already holds). The bytes must
    /// stay within one segment, which is created when `at` starts it. On
    /// failure nothing is published and whatever was written is erased.
    pub fn append_raw(&mut self, at: u64, bytes: &[u8], end: u64) -> StoreResult<()> {
        let write_pos = self.log.write_pos();
        if at != write_pos {
            return Err(StoreError::NotAtLogEnd { at, write_pos });
        }
        let seg_end = at - at % self.log.segment_bytes + self.log.segment_bytes;
        if end < at + bytes.len() as u64 || end > seg_end {
            return Err(StoreError::InvalidArgument(format!(
                "{} bytes at {at} cannot end the log at {end} (the segment ends at {seg_end})",
                bytes.len()
            )));
        }
        if end == at {
            return Ok(());
        }
        let written = self
            .current_segment(at)
            .and_then(|seg| seg.file.pwrite_at((at - seg.start) as usize, bytes));
        if let Err(e) = written {
            self.discard_unpublished(at);
            return Err(e);
        }
        self.log.write_pos.store(end, Ordering::Release);
        Ok(())
    }

    fn discard_unpublished(&self, from: u64) {
        if let Some(seg) = self.log.segment_for(from) {
            if let Err(e) = zero_tail(&seg.file, (from - seg.start) as usize) {
                tracing::error!(error = %e, "could not erase an unpublished partial batch");
            }
        }
    }

    fn append_checked<'a, F>(&mut self, count: usize, fields: &mut F) -> Result<Vec<Placement>, AppendError>
    where
        F: FnMut(usize, u64) -> RecordFields<'a>,
    {
        let seg_bytes = self.log.segment_bytes;
        let mut pos = self.log.write_pos();
        let mut seg = self.current_segment(pos)?;
        let mut batch_start = pos;
        self.scratch.clear();
        // Bodies written from where they are (the request buffer), each
        // after the scratch bytes up to its offset.
        let mut bodies: Vec<(usize, &'a [u8])> = Vec::new();
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let mut f = fields(i, pos);
            let size = f.encoded_len();
            let seg_end = seg.start + seg_bytes;
            if pos + size as u64 > seg_end {
                // Close this segment with a filler and continue in the next.
                let rest = (seg_end - pos) as usize;
                let old = self.scratch.len();
                if rest >= BLANK_HEADER_LEN {
                    self.scratch.resize(old + BLANK_HEADER_LEN, 0);
                    record::encode_blank(&mut self.scratch[old..], rest);
                }
                // Past the published write position: no reader looks here yet.
                write_gathered(&seg, batch_start, &self.scratch, &bodies)?;
                self.scratch.clear();
                bodies.clear();
                pos = seg_end;
                batch_start = pos;
                seg = self.current_segment(pos)?;
                f.phys_offset = pos;
            }
            let old = self.scratch.len();
            if f.body.len() < INLINE_BODY_MAX {
                self.scratch.resize(old + size, 0);
                f.encode_into(&mut self.scratch[old..]);
            } else {
                self.scratch.resize(old + size - f.body.len(), 0);
                f.encode_head_into(&mut self.scratch[old..]);
                bodies.push((self.scratch.len(), f.body));
            }
            out.push(Placement {
                phys_offset: pos,
                size: size as u32,
            });
            pos += size as u64;
        }
        // The write position is published only after this.
        write_gathered(&seg, batch_start, &self.scratch, &bodies)?;
        self.log.write_pos.store(pos, Ordering::Release);
        Ok(out)
    }

    fn current_segment(&self, pos: u64) -> StoreResult<Arc<Segment>> {
        if let Some(seg) = self.log.segment_for(pos) {
            return Ok(seg);
        }
        let start = pos - pos % self.log.segment_bytes;
        if self.log.first_segment_start().is_none() && start != 0 {
            tracing::info!(start, "commitlog starts at a non-zero offset");
        }
        self.log.add_segment(start)
    }
}

/// Bodies shorter than this are copied next to their record's head; longer
/// ones are written from the request buffer (one more iovec each).
const INLINE_BODY_MAX: usize = 256;

/// Writes the scratch bytes with `bodies` spliced in at their offsets, as
/// one `pwritev` at log position `at` of `seg`.
fn write_gathered(seg: &Segment, at: u64, scratch: &[u8], bodies: &[(usize, &[u8])]) -> StoreResult<()> {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * bodies.len() + 1);
    let mut from = 0;
    for &(offset, body) in bodies {
        parts.push(&scratch[from..offset]);
        parts.push(body);
        from = offset;
    }
    parts.push(&scratch[from..]);
    seg.file.pwritev_at((at - seg.start) as usize, &parts)
}

/// Reads a whole record's raw bytes: the frame-ready form pulls return.
pub fn read_raw(log: &CommitLog, offset: u64, size: u32) -> StoreResult<Bytes> {
    let mut buf = BytesMut::with_capacity(size as usize);
    log.read_into(offset, size as usize, &mut buf)?;
    Ok(buf.freeze())
}

/// Read-only access to recovery's record walk, for the offline checker
/// (`store::verify`): the size of the whole, CRC-valid record at `p` of a
/// segment's bytes `data` (starting at log offset `seg_start`) that names
/// its own position, if there is one.
pub(crate) fn verify_valid_record_at(data: &[u8], p: usize, seg_start: u64) -> Option<usize> {
    valid_record_at(data, p, seg_start)
}

/// Read-only access to recovery's resynchronisation, for the offline
/// checker: where valid records resume after damaged bytes at `p` within
/// the segment (`None`: nothing valid follows in it).
pub(crate) fn verify_resync(data: &[u8], p: usize, seg_start: u64) -> Option<usize> {
    resync(data, p, seg_start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const SEG: u64 = 64 * 1024;

    fn fields<'a>(props: &'a BTreeMap<String, String>, body: &'a [u8], qoff: u64, phys: u64) -> RecordFields<'a> {
        RecordFields {
            queue_id: 0,
            flags: 0,
            queue_offset: qoff,
            phys_offset: phys,
            born_timestamp: 1,
            store_timestamp: 2,
            reconsume_times: 0,
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_host: "127.0.0.1:2".parse().unwrap(),
            topic: "t",
            properties: props,
            body,
        }
    }

    fn write(log: &Arc<CommitLog>, n: usize, body_len: usize, first_qoff: u64) -> Vec<Placement> {
        let props = BTreeMap::new();
        let body = vec![7u8; body_len];
        let mut app = Appender::new(log.clone());
        app.append(n, |i, phys| fields(&props, &body, first_qoff + i as u64, phys))
            .unwrap()
    }

    #[test]
    fn appends_roll_segments_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(CommitLog::open(dir.path(), SEG).unwrap());
        log.recover(0, |_, _| {}).unwrap();
        let placed = write(&log, 300, 1000, 0);
        assert!(log.segment_count() >= 4, "300 KB over 64 KiB segments");
        for (i, p) in placed.iter().enumerate() {
            let rec = log.record_at(p.phys_offset).unwrap();
            assert_eq!(rec.queue_offset, i as u64);
            assert_eq!(rec.phys_offset, p.phys_offset);
            // No record straddles a segment boundary.
            assert_eq!(p.phys_offset / SEG, (p.phys_offset + p.size as u64 - 1) / SEG);
        }
        assert!(log.record_at(placed[1].phys_offset + 1).is_err());
        assert!(log.read_into(log.write_pos(), 1, &mut BytesMut::new()).is_err());
        log.start_writeback().unwrap(); // across every segment written
        log.start_writeback().unwrap(); // nothing new: a no-op
        assert_eq!(log.flush_to(u64::MAX).unwrap(), log.write_pos());
    }

    #[test]
    fn a_batch_rolls_over_a_segment_end_too_small_for_a_filler() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(CommitLog::open(dir.path(), SEG).unwrap());
        log.recover(0, |_, _| {}).unwrap();
        let props = BTreeMap::new();
        let overhead = fields(&props, &[], 0, 0).encoded_len();
        // Two records that leave 4 bytes at the segment's end: no room for
        // a filler, so the next batch starts the next segment with nothing
        // to write in this one.
        let first = vec![1u8; 1000];
        let second = vec![2u8; SEG as usize - 4 - 2 * overhead - first.len()];
        let bodies = [&first[..], &second[..]];
        let mut app = Appender::new(log.clone());
        app.append(2, |i, phys| fields(&props, bodies[i], i as u64, phys))
            .unwrap();
        assert_eq!(log.write_pos(), SEG - 4);
        let small = [3u8; 10];
        let placed = app.append(1, |_, phys| fields(&props, &small, 2, phys)).unwrap();
        assert_eq!(placed[0].phys_offset, SEG, "the next segment");
        assert_eq!(&log.record_at(SEG).unwrap().body[..], &small[..]);
        let big = log.record_at(placed[0].phys_offset - 4 - second.len() as u64 - overhead as u64);
        assert_eq!(&big.unwrap().body[..], &second[..]);
    }

    #[test]
    fn gather_joins_neighbours_into_one_chunk_per_segment_and_copies_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(CommitLog::open(dir.path(), SEG).unwrap());
        log.recover(0, |_, _| {}).unwrap();
        let placed = write(&log, 150, 1000, 0);
        let mut expected = BytesMut::new();
        let mut gather = Gather::new(&log);
        for (i, p) in placed.iter().enumerate() {
            let seen = gather.push(p.phys_offset, p.size as usize).unwrap().to_vec();
            assert_eq!(seen, read_raw(&log, p.phys_offset, p.size).unwrap());
            if i % 7 == 3 {
                gather.pop(p.size as usize); // filtered out: leaves a gap
            } else {
                expected.extend_from_slice(&seen);
            }
        }
        assert_eq!(gather.len(), expected.len());
        let segments = log.segment_count();
        let chunks = gather.finish();
        // One chunk per run between gaps, and runs break at segment ends.
        let gaps = placed.len() / 7;
        assert!(
            chunks.len() > gaps && chunks.len() <= gaps + 1 + segments,
            "{} chunks",
            chunks.len()
        );
        assert_eq!(chunks.concat(), expected.to_vec());
        let mapped = log.segment_for(placed[0].phys_offset).unwrap();
        let base = mapped.file.read_at(0, 1).unwrap().as_ptr();
        assert_eq!(chunks[0].as_ptr(), base, "the chunk points into the mapping");

        let mut past_end = Gather::new(&log);
        assert!(past_end.push(log.write_pos(), 1).is_err());
        assert!(past_end.is_empty());
    }

    #[test]
    fn recovery_finds_the_end_and_erases_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let placed;
        {
            let log = Arc::new(CommitLog::open(dir.path(), SEG).unwrap());
            log.recover(0, |_, _| {}).unwrap();
            placed = write(&log, 150, 1000, 0);
        }
        // Reopen: every record is found again.
        let log = Arc::new(CommitLog::open(dir.path(), SEG).unwrap());
        let mut seen = Vec::new();
        let report = log.recover(0, |off, _| seen.push(off)).unwrap();
        assert_eq!(seen, placed.iter().map(|p| p.phys_offset).collect::<Vec<_>>());
        let last = *placed.last().unwrap();
        assert_eq!(report.end, last.phys_offset + last.size as u64);
        drop(log);

        // Tear the last record and leave garbage after it.
        let seg_start = last.phys_offset - last.phys_offset % SEG;
        let path = dir.path().join(offset_file_name(seg_start));
        let mut bytes = std::fs::read(&path).unwrap();
        let at = (last.phys_offset - seg_start) as usize;
        bytes[at + 100] ^= 0xFF;
        for b in &mut bytes[at + last.size as usize..at + last.size as usize + 500] {
            *b = 0xAB;
        }
        std::fs::write(&path, &bytes).unwrap();

        let log = Arc::new(CommitLog::open(dir.path(), SEG).unwrap());
        let report = log.recover(0, |_, _| {}).unwrap();
        assert_eq!(report.end, last.phys_offset, "the torn record is cut off");
        assert!(report.zeroed_bytes > 0);
        assert!(log.record_at(last.phys_offset).is_err());
        // Appending continues at the cut.
        let again = write(&log, 1, 10, 149);
        assert_eq!(again[0].phys_offset, last.phys_offset);
        let log2 = Arc::new(CommitLog::open(dir.path(), SEG).unwrap());
        assert_eq!(
            log2.recover(0, |_, _| {}).unwrap().end,
            last.phys_offset + again[0].size as u64
        );
    }

    #[test]
    fn damage_in_the_middle_is_quarantined_and_later_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let placed;
        {
            let log = Arc::new(CommitLog::open(dir.path(), SEG).unwrap());
            log.recover(0, |_, _| {}).unwrap();
            placed = write(&log, 40, 1000, 0);
        }
        let path = dir.path().join(offset_file_name(0));
        let mut bytes = std::fs::read(&path).unwrap();
        // A flipped bit in a body (the size stays valid) and a damaged size
        // field (found again by scanning for the next whole record).
        bytes[placed[10].phys_offset as usize + 500] ^= 0x01;
        bytes[placed[20].phys_offset as usize + 1] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();

        let log = Arc::new(CommitLog::open(dir.path(), SEG).unwrap());
        let mut seen = Vec::new();
        let report = log.recover(0, |off, _| seen.push(off)).unwrap();
        let expected: Vec<u64> = placed
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 10 && *i != 20)
            .map(|(_, p)| p.phys_offset)
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(report.corrupt_records, 2);
        assert_eq!(log.corrupt_records(), 2);
        let last = placed.last().unwrap();
        assert_eq!(report.end, last.phys_offset + last.size as u64);
        assert_eq!(report.zeroed_bytes, 0);
        assert_eq!(
            log.quarantined_before(placed[21].phys_offset),
            Some((placed[20].phys_offset, placed[20].size as u64))
        );
    }

    #[test]
    fn recovery_from_a_checkpoint_visits_only_later_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(CommitLog::open(dir.path(), SEG).unwrap());
        log.recover(0, |_, _| {}).unwrap();
        let placed = write(&log, 200, 1000, 0);
        drop(log);
        let log = Arc::new(CommitLog::open(dir.path(), SEG).unwrap());
        let from = placed[120].phys_offset;
        let mut seen = Vec::new();
        log.recover(from, |off, _| seen.push(off)).unwrap();
        assert_eq!(seen.first(), Some(&from));
        assert_eq!(seen.len(), 80);
    }

    #[test]
    fn a_newest_segment_of_the_wrong_size_is_repaired_an_older_short_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let placed;
        {
            let log = Arc::new(CommitLog::open(dir.path(), SEG).unwrap());
            log.recover(0, |_, _| {}).unwrap();
            placed = write(&log, 150, 1000, 0);
        }
        let last = dir.path().join(offset_file_name(2 * SEG));
        for len in [SEG + 7, SEG - 3] {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&last)
                .unwrap()
                .set_len(len)
                .unwrap();
            let log = Arc::new(CommitLog::open(dir.path(), SEG).unwrap());
            assert_eq!(std::fs::metadata(&last).unwrap().len(), SEG);
            let mut seen = 0;
            log.recover(0, |_, _| seen += 1).unwrap();
            assert_eq!(seen, placed.len(), "nothing lost");
        }
        let older = dir.path().join(offset_file_name(SEG));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&older)
            .unwrap()
            .set_len(SEG + 5)
            .unwrap();
        CommitLog::open(dir.path(), SEG).unwrap();
        assert_eq!(
            std::fs::metadata(&older).unwrap().len(),
            SEG,
            "an older long one is cut"
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&older)
            .unwrap()
            .set_len(SEG - 5)
            .unwrap();
        let err = CommitLog::open(dir.path(), SEG).unwrap_err().to_string();
        assert!(
            err.contains(&older.display().to_string()) && err.contains("truncate -s"),
            "{err}"
        );
    }

    #[test]
    fn oversized_records_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(CommitLog::open(dir.path(), SEG).unwrap());
        log.recover(0, |_, _| {}).unwrap();
        let props = BTreeMap::new();
        let body = vec![0u8; SEG as usize];
        let mut app = Appender::new(log.clone());
        let err = app.append(1, |_, phys| fields(&props, &body, 0, phys)).unwrap_err();
        assert!(matches!(err, AppendError::TooLarge { .. }));
        assert_eq!(log.write_pos(), 0);
    }
}
