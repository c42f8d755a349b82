//! The offline store checker behind `ferromq store verify --data-dir DIR`.
//!
//! [`verify`] takes the data directory's lock (so it never reads a store a
//! broker is writing, and no broker starts while it reads), then opens
//! every file read-only and checks what recovery relies on:
//!
//! * **commitlog segments**: the segment size is learnt from the files (the
//!   length most of them share; names are start offsets), every segment is
//!   walked record by record with recovery's own CRC walk
//!   ([`record::probe`] and its resynchronisation after damage); the log's
//!   end is looked for, as recovery does, from the segment holding the
//!   checkpoint (older damage is skipped by readers). Reported:
//!   segments of the wrong length or at a start that is no multiple of the
//!   segment size, gaps between segments, damaged records in the middle of
//!   the log (recovery quarantines them), a torn tail (recovery erases it)
//!   and segments past the end of the log (recovery deletes them).
//! * **consume queues**: files follow each other, entries are contiguous,
//!   and each entry points at a whole record (CRC checked) below the log's
//!   end with the queue's topic, queue id, queue offset and size. Entries
//!   pointing at a damaged record are the quarantine fillers recovery
//!   writes (or the damaged record's own entry, skipped by every reader):
//!   they count as quarantined slots, not as problems.
//! * **key-index files**: the header is sane (as opening checks it) and
//!   every entry points below the log's end.
//!
//! Each problem names its file, its position and the fix recovery would
//! apply (or, where recovery refuses, what to do by hand).

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Serialize;

use super::checkpoint::CheckpointFile;
use super::commitlog::{verify_resync, verify_valid_record_at};
use super::consume_queue::{verify_decode_entry, CQ_ENTRY_LEN};
use super::error::{IoContext, StoreError, StoreResult};
use super::fsutil::{list_offset_files, offset_file_name};
use super::index::file::verify_read;
use super::lock::DirLock;
use super::record::{self, Probe, StoredRecord, BLANK_HEADER_LEN};

/// Problems listed per file; more are counted in
/// [`VerifyReport::unlisted_problems`] (a badly damaged file would
/// otherwise print one line per entry).
const LISTED_PER_FILE: usize = 20;

/// What [`verify`] accepts as already handled.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Damaged commitlog ranges `(offset, length)` that recovery has
    /// quarantined (a `--repair` just ran): they stay on disk, every reader
    /// skips them, and they are listed as quarantined instead of as
    /// problems.
    pub quarantined: Vec<(u64, u64)>,
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What kind of problem (`torn_tail`, `corrupt_record`,
    /// `consume_queue_entry_mismatch`, …): stable, for scripts.
    pub kind: &'static str,
    /// The file (or directory) concerned.
    pub file: String,
    /// Commitlog offset of the problem, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commitlog_offset: Option<u64>,
    /// Bytes concerned, from `commitlog_offset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Queue offset of a consume-queue entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_offset: Option<u64>,
    /// 1-based entry number in a key-index file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_entry: Option<u64>,
    /// What is wrong.
    pub detail: String,
    /// What recovery (and so `--repair`) does about it, or what to do by
    /// hand when recovery refuses.
    pub fix: String,
}

impl Problem {
    fn new(kind: &'static str, file: &Path, detail: String, fix: &str) -> Problem {
        Problem {
            kind,
            file: file.display().to_string(),
            commitlog_offset: None,
            length: None,
            queue_offset: None,
            index_entry: None,
            detail,
            fix: fix.to_string(),
        }
    }

    fn at(mut self, offset: u64) -> Problem {
        self.commitlog_offset = Some(offset);
        self
    }

    fn length(mut self, length: u64) -> Problem {
        self.length = Some(length);
        self
    }

    fn queue_offset(mut self, offset: u64) -> Problem {
        self.queue_offset = Some(offset);
        self
    }

    /// One line for people: `problem: FILE at POSITION: DETAIL; fix: FIX`.
    pub fn text(&self) -> String {
        let mut pos = Vec::new();
        if let Some(o) = self.commitlog_offset {
            pos.push(format!("commitlog offset {o}"));
        }
        if let Some(l) = self.length {
            pos.push(format!("{l} bytes"));
        }
        if let Some(q) = self.queue_offset {
            pos.push(format!("queue offset {q}"));
        }
        if let Some(n) = self.index_entry {
            pos.push(format!("entry {n}"));
        }
        let pos = if pos.is_empty() {
            String::new()
        } else {
            format!(" ({})", pos.join(", "))
        };
        format!("problem: {}{pos}: {}; fix: {}", self.file, self.detail, self.fix)
    }
}

/// What the walk found in one commitlog segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentReport {
    /// The segment file.
    pub file: String,
    /// Commitlog offset of its first byte (its name).
    pub start: u64,
    /// The file's length in bytes.
    pub length: u64,
    /// Whole records with a valid CRC walked in it.
    pub records: u64,
    /// Damaged ranges in it that valid records follow.
    pub damaged_ranges: u64,
    /// `full` (walked to its end), `log_end` (the log ends in it) or
    /// `past_log_end` (recovery deletes it).
    pub status: &'static str,
}

/// A damaged range in the middle of the log: recovery quarantines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedRange {
    /// The segment file.
    pub file: String,
    /// Commitlog offset of the first damaged byte.
    pub commitlog_offset: u64,
    /// Damaged bytes up to the next valid record.
    pub length: u64,
    /// True when [`VerifyOptions::quarantined`] named it (not a problem).
    pub quarantined: bool,
}

/// What was checked in one consume queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueReport {
    /// Topic name (its directory's name).
    pub topic: String,
    /// Queue id.
    pub queue: u32,
    /// Its files.
    pub files: u64,
    /// Entries in use.
    pub entries: u64,
    /// First queue offset stored.
    pub min_offset: u64,
    /// One past the last entry in use.
    pub max_offset: u64,
    /// Entries pointing at a damaged (quarantined) record.
    pub quarantined_slots: u64,
    /// Entries pointing below the commitlog's start (deleted by retention;
    /// recovery moves the queue's minimum past them).
    pub below_log_start: u64,
}

/// What was checked in one key-index file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IndexReport {
    /// The index file.
    pub file: String,
    /// Entries in use (checked against the log's end).
    pub entries: u64,
    /// Entry capacity.
    pub capacity: u64,
}

/// The counts of the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Segments checked.
    pub segments: u64,
    /// Valid records walked.
    pub records: u64,
    /// Consume queues checked.
    pub consume_queues: u64,
    /// Consume-queue entries checked.
    pub consume_queue_entries: u64,
    /// Consume-queue entries pointing at damaged records.
    pub quarantined_slots: u64,
    /// Key-index files checked.
    pub index_files: u64,
    /// Key-index entries checked.
    pub index_entries: u64,
    /// Problems found (listed or not).
    pub problems: u64,
}

/// Everything [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The data directory checked.
    pub data_dir: String,
    /// Segment size learnt from the files.
    pub segment_bytes: u64,
    /// The checkpoint's dispatched offset: recovery walks the log from the
    /// segment holding it.
    pub checkpoint: u64,
    /// Commitlog offset of the first stored byte.
    pub log_start: u64,
    /// End of the log as recovery would find it.
    pub log_end: u64,
    /// Per segment, oldest first.
    pub segments: Vec<SegmentReport>,
    /// Damaged ranges in the middle of the log.
    pub damaged_ranges: Vec<DamagedRange>,
    /// Per consume queue, by topic then queue id.
    pub consume_queues: Vec<QueueReport>,
    /// Per key-index file.
    pub index_files: Vec<IndexReport>,
    /// The problems listed (at most a few per file).
    pub problems: Vec<Problem>,
    /// Problems found but not listed (past the per-file limit).
    pub unlisted_problems: u64,
    /// The counts.
    pub summary: Summary,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_clean(&self) -> bool {
        self.summary.problems == 0
    }

    /// The damaged ranges as `(offset, length)`: what recovery quarantines.
    pub fn damaged(&self) -> Vec<(u64, u64)> {
        self.damaged_ranges
            .iter()
            .map(|d| (d.commitlog_offset, d.length))
            .collect()
    }

    /// `checked N segments (M records), Q consume queues (E entries), I
    /// index files: K problems`.
    pub fn summary_line(&self) -> String {
        let s = &self.summary;
        format!(
            "checked {} segments ({} records), {} consume queues ({} entries), {} index files: {} problems",
            s.segments, s.records, s.consume_queues, s.consume_queue_entries, s.index_files, s.problems
        )
    }

    /// The text report: one line per problem, one per quarantined range,
    /// then the summary line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for p in &self.problems {
            out.push_str(&p.text());
            out.push('\n');
        }
        if self.unlisted_problems > 0 {
            out.push_str(&format!(
                "problem: {} more problems not listed (at most {LISTED_PER_FILE} per file)\n",
                self.unlisted_problems
            ));
        }
        for d in self.damaged_ranges.iter().filter(|d| d.quarantined) {
            out.push_str(&format!(
                "quarantined: {} (commitlog offset {}, {} bytes): a damaged record kept on disk and skipped by \
                 every reader\n",
                d.file, d.commitlog_offset, d.length
            ));
        }
        if self.summary.quarantined_slots > 0 {
            out.push_str(&format!(
                "{} consume-queue entries point at damaged records (quarantined slots, skipped by readers)\n",
                self.summary.quarantined_slots
            ));
        }
        out.push_str(&self.summary_line());
        out.push('\n');
        out
    }
}

/// Collects problems, listing at most [`LISTED_PER_FILE`] per file.
#[derive(Default)]
struct Problems {
    listed: Vec<Problem>,
    per_file: BTreeMap<String, usize>,
    unlisted: u64,
}

impl Problems {
    fn push(&mut self, p: Problem) {
        let n = self.per_file.entry(p.file.clone()).or_insert(0);
        *n += 1;
        if *n > LISTED_PER_FILE {
            self.unlisted += 1;
        } else {
            self.listed.push(p);
        }
    }
}

/// A segment's bytes: mapped read-only, or (for a file of the wrong
/// length) read and resized to the segment size as recovery would.
enum SegmentBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Deref for SegmentBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SegmentBytes::Mapped(m) => m,
            SegmentBytes::Owned(v) => v,
        }
    }
}

struct Segment {
    start: u64,
    path: PathBuf,
    data: SegmentBytes,
}

/// Checks the data directory `data_dir` offline (see the module docs).
/// Fails when it is no data directory, when a broker holds it
/// ([`StoreError::Locked`], naming the broker's pid) or on an I/O error;
/// damage is reported, not returned as an error.
pub fn verify(data_dir: &Path, opts: &VerifyOptions) -> StoreResult<VerifyReport> {
    if !data_dir.join("commitlog").is_dir() {
        return Err(StoreError::InvalidArgument(format!(
            "{} is not a FerroMQ data directory (it has no commitlog directory)",
            data_dir.display()
        )));
    }
    let _lock = DirLock::acquire(data_dir)?;
    let mut problems = Problems::default();
    // Read only: a missing or unreadable checkpoint means "from the start".
    let checkpoint = CheckpointFile::new(data_dir).load().dispatched_offset;
    let log = check_commitlog(&data_dir.join("commitlog"), checkpoint, opts, &mut problems)?;
    let consume_queues = check_consume_queues(&data_dir.join("consumequeue"), &log, &mut problems)?;
    let index_files = check_index(&data_dir.join("index"), &log, &mut problems)?;
    let summary = Summary {
        segments: log.reports.len() as u64,
        records: log.reports.iter().map(|s| s.records).sum(),
        consume_queues: consume_queues.len() as u64,
        consume_queue_entries: consume_queues.iter().map(|q| q.entries).sum(),
        quarantined_slots: consume_queues.iter().map(|q| q.quarantined_slots).sum(),
        index_files: index_files.len() as u64,
        index_entries: index_files.iter().map(|f| f.entries).sum(),
        problems: problems.listed.len() as u64 + problems.unlisted,
    };
    Ok(VerifyReport {
        data_dir: data_dir.display().to_string(),
        segment_bytes: log.segment_bytes,
        checkpoint,
        log_start: log.start,
        log_end: log.end,
        segments: log.reports,
        damaged_ranges: log.damaged,
        consume_queues,
        index_files,
        problems: problems.listed,
        unlisted_problems: problems.unlisted,
        summary,
    })
}

/// The commitlog as the walk found it.
struct Log {
    segment_bytes: u64,
    segments: Vec<Segment>,
    reports: Vec<SegmentReport>,
    damaged: Vec<DamagedRange>,
    start: u64,
    end: u64,
}

impl Log {
    /// The whole, CRC-valid record starting at `offset` below the log's end.
    fn record_at(&self, offset: u64) -> Option<StoredRecord> {
        if offset >= self.end {
            return None;
        }
        let idx = self.segments.partition_point(|s| s.start <= offset).checked_sub(1)?;
        let seg = &self.segments[idx];
        let p = usize::try_from(offset - seg.start).ok()?;
        let size = verify_valid_record_at(&seg.data, p, seg.start)?;
        StoredRecord::decode(Bytes::copy_from_slice(seg.data.get(p..p + size)?)).ok()
    }

    /// True when `offset` lies in a damaged range.
    fn is_damaged(&self, offset: u64) -> bool {
        self.damaged
            .iter()
            .any(|d| (d.commitlog_offset..d.commitlog_offset + d.length).contains(&offset))
    }
}

/// The segment size: the length most segment files share (on a tie, the
/// larger). `None` without segments.
fn common_length(lengths: &[u64]) -> Option<u64> {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for l in lengths {
        *counts.entry(*l).or_insert(0) += 1;
    }
    counts.into_iter().max_by_key(|(len, n)| (*n, *len)).map(|(len, _)| len)
}

fn check_commitlog(dir: &Path, recover_from: u64, opts: &VerifyOptions, problems: &mut Problems) -> StoreResult<Log> {
    let starts = list_offset_files(dir)?;
    let mut lengths = Vec::with_capacity(starts.len());
    for start in &starts {
        let path = dir.join(offset_file_name(*start));
        lengths.push(std::fs::metadata(&path).at("stat", &path)?.len());
    }
    let segment_bytes = common_length(&lengths).unwrap_or(0);
    let mut log = Log {
        segment_bytes,
        segments: Vec::new(),
        reports: Vec::new(),
        damaged: Vec::new(),
        start: starts.first().copied().unwrap_or(0),
        end: starts.first().copied().unwrap_or(0),
    };
    if starts.is_empty() {
        return Ok(log);
    }
    if segment_bytes <= BLANK_HEADER_LEN as u64 {
        problems.push(Problem::new(
            "segment_size",
            dir,
            format!("the segment files are {segment_bytes} bytes long, too short for any record"),
            "none: recovery refuses to start; restore the commitlog from a backup",
        ));
        return Ok(log);
    }
    let seg_len = usize::try_from(segment_bytes)
        .map_err(|_| StoreError::InvalidArgument(format!("a segment size of {segment_bytes} bytes")))?;
    let newest = starts.len() - 1;
    for (i, (start, actual)) in starts.iter().zip(&lengths).enumerate() {
        let path = dir.join(offset_file_name(*start));
        if start % segment_bytes != 0 {
            problems.push(
                Problem::new(
                    "segment_start",
                    &path,
                    format!("does not start at a multiple of the segment size {segment_bytes}"),
                    "none: recovery refuses to start; was store.segment_bytes changed? restore the file's \
                     original name or remove it",
                )
                .at(*start),
            );
        }
        if *actual != segment_bytes {
            let fix = if i == newest || *actual > segment_bytes {
                "recovery sets its length to the segment size (bytes past it never hold a record; zeroes \
                 appended read as the end of the log)"
            } else {
                "none: recovery refuses to start (an older segment lost the end of its records); restore it \
                 from a backup, or pad it with `truncate -s SEGMENT_BYTES FILE` accepting the loss"
            };
            problems.push(Problem::new(
                "segment_size",
                &path,
                format!("is {actual} bytes long, the other segments {segment_bytes}"),
                fix,
            ));
        }
        log.segments.push(Segment {
            start: *start,
            data: read_segment(&path, *actual, seg_len)?,
            path,
        });
    }
    let (reports, damaged, end) = walk(&log, seg_len, recover_from, opts, problems);
    log.reports = reports;
    log.damaged = damaged;
    log.end = end;
    Ok(log)
}

/// Maps a segment of the right length read-only; reads one of another
/// length and pads or cuts it to `seg_len`, as recovery would.
fn read_segment(path: &Path, actual: u64, seg_len: usize) -> StoreResult<SegmentBytes> {
    if actual == seg_len as u64 {
        let file = File::open(path).at("open", path)?;
        // SAFETY: a read-only mapping of a file in a data directory whose
        // lock this process holds: no broker writes or truncates it while
        // the mapping lives.
        let map = unsafe { memmap2::Mmap::map(&file) }.at("map", path)?;
        if map.len() == seg_len {
            return Ok(SegmentBytes::Mapped(map));
        }
    }
    let mut data = std::fs::read(path).at("read", path)?;
    data.resize(seg_len, 0);
    Ok(SegmentBytes::Owned(data))
}

/// Zero-tail chunk: recovery erases the bytes after the log's end only when
/// the first chunk of them is not all zero (`commitlog::zero_tail`).
const TAIL_CHUNK: usize = 64 * 1024;

/// Recovery's walk (`CommitLog::recover`), reading only: records by size
/// and CRC, damage in the middle resynchronised over, the end found.
/// Recovery starts at the segment holding the checkpoint (`recover_from`);
/// older segments are walked too, for their records and damage, but the
/// log's end is only looked for from there on, as recovery does. Returns
/// the per-segment reports, the damaged ranges and the log's end.
fn walk(
    log: &Log,
    seg_len: usize,
    recover_from: u64,
    opts: &VerifyOptions,
    problems: &mut Problems,
) -> (Vec<SegmentReport>, Vec<DamagedRange>, u64) {
    let segment_bytes = log.segment_bytes;
    let count = log.segments.len();
    let first_walked = log
        .segments
        .partition_point(|s| s.start <= recover_from)
        .saturating_sub(1);
    let mut reports = Vec::with_capacity(count);
    let mut damaged = Vec::new();
    let mut pos = log.segments[0].start;
    let mut end = pos;
    let mut ended = false;
    for (i, seg) in log.segments.iter().enumerate() {
        // Segments before the checkpoint's are not walked by recovery.
        let older = i < first_walked;
        let mut report = SegmentReport {
            file: seg.path.display().to_string(),
            start: seg.start,
            length: std::fs::metadata(&seg.path).map_or(seg_len as u64, |m| m.len()),
            records: 0,
            damaged_ranges: 0,
            status: "full",
        };
        if !ended && seg.start != pos {
            if i <= first_walked {
                problems.push(
                    Problem::new(
                        "segment_gap",
                        &seg.path,
                        format!("the previous segment ends at {pos}, this one starts at {}", seg.start),
                        "none: recovery starts at the checkpoint's segment and does not look here; the records \
                         that were in the gap are lost",
                    )
                    .at(pos)
                    .length(seg.start.saturating_sub(pos)),
                );
            } else {
                problems.push(
                    Problem::new(
                        "segment_gap",
                        &seg.path,
                        format!("the previous segment ends at {pos}, this one starts at {}", seg.start),
                        "recovery ends the log before the gap and deletes this and every later segment",
                    )
                    .at(pos)
                    .length(seg.start.saturating_sub(pos)),
                );
                ended = true;
            }
        }
        if i == first_walked && !ended {
            pos = seg.start;
            end = pos;
        }
        if ended {
            report.status = "past_log_end";
            problems.push(
                Problem::new(
                    "segment_past_log_end",
                    &seg.path,
                    format!("lies past the end of the log at {end}"),
                    "recovery deletes it",
                )
                .at(seg.start),
            );
            reports.push(report);
            continue;
        }
        pos = seg.start;
        let data: &[u8] = &seg.data;
        let seg_end = seg.start + segment_bytes;
        let mut p = 0usize;
        loop {
            if seg_len - p < BLANK_HEADER_LEN {
                pos = seg_end;
                end = pos;
                break;
            }
            match record::probe(&data[p..]) {
                Probe::Record(size) => {
                    report.records += 1;
                    p += size;
                }
                Probe::Blank => {
                    pos = seg_end;
                    end = pos;
                    break;
                }
                Probe::End => {
                    let at = seg.start + p as u64;
                    let resume = verify_resync(data, p, seg.start).or_else(|| {
                        let next = log.segments.get(i + 1)?;
                        (next.start == seg_end && verify_valid_record_at(&next.data, 0, next.start).is_some())
                            .then_some(seg_len)
                    });
                    let (q, detail) = match resume {
                        Some(q) => (
                            q,
                            format!(
                                "damaged bytes in the middle of the log (segment position {p}); valid records \
                                 follow at {}",
                                seg.start + q as u64
                            ),
                        ),
                        None if older => (
                            seg_len,
                            format!(
                                "no whole record from here to the end of this segment (segment position {p}), \
                                 which lies before the checkpoint's"
                            ),
                        ),
                        None => {
                            end = at;
                            ended = true;
                            report.status = "log_end";
                            torn_tail(&seg.path, &data[p..], at, problems);
                            break;
                        }
                    };
                    let len = (q - p) as u64;
                    let quarantined = opts.quarantined.iter().any(|(o, l)| *o == at && *l == len);
                    report.damaged_ranges += 1;
                    damaged.push(DamagedRange {
                        file: seg.path.display().to_string(),
                        commitlog_offset: at,
                        length: len,
                        quarantined,
                    });
                    if !quarantined {
                        let fix = if older {
                            "none needed: readers skip them (every record on disk at start has its CRC checked \
                             before it is served); recovery walks only from the checkpoint's segment"
                        } else {
                            "recovery quarantines them (kept on disk, never delivered; their consume-queue slots \
                             are skipped) and keeps the valid records after them"
                        };
                        problems.push(
                            Problem::new("corrupt_record", &seg.path, detail, fix)
                                .at(at)
                                .length(len),
                        );
                    }
                    if q == seg_len {
                        pos = seg_end;
                        end = pos;
                        break;
                    }
                    p = q;
                }
            }
        }
        if !ended && i + 1 == count {
            report.status = "log_end";
        }
        reports.push(report);
    }
    (reports, damaged, end)
}

/// Reports the bytes after the log's end at commitlog offset `at` (`rest`:
/// them up to the segment's end) that are not zero, as recovery sees them.
fn torn_tail(path: &Path, rest: &[u8], at: u64, problems: &mut Problems) {
    let Some(last) = rest.iter().rposition(|b| *b != 0) else {
        return;
    };
    let to = at + last as u64 + 1;
    let first = &rest[..TAIL_CHUNK.min(rest.len())];
    let problem = if first.iter().any(|b| *b != 0) {
        Problem::new(
            "torn_tail",
            path,
            format!(
                "the log ends at a torn or partial record: bytes {at}..{to} after the last whole record are not zero"
            ),
            "recovery erases the bytes from the log's end to the segment's end",
        )
    } else {
        Problem::new(
            "stale_bytes_past_log_end",
            path,
            format!("bytes up to {to}, more than {TAIL_CHUNK} bytes past the log's end, are not zero"),
            "none: recovery erases the tail only when the bytes right after the end are not zero; appends \
             overwrite them",
        )
    };
    problems.push(problem.at(at).length(to - at));
}

fn check_consume_queues(root: &Path, log: &Log, problems: &mut Problems) -> StoreResult<Vec<QueueReport>> {
    let mut out = Vec::new();
    if !root.is_dir() {
        return Ok(out);
    }
    let mut topics = Vec::new();
    for dent in std::fs::read_dir(root).at("list directory", root)? {
        let dent = dent.at("list directory", root)?;
        if dent.file_type().at("stat", &dent.path())?.is_dir() {
            topics.push((dent.file_name().to_string_lossy().into_owned(), dent.path()));
        }
    }
    topics.sort();
    for (topic, topic_dir) in topics {
        let mut queues = Vec::new();
        for q in std::fs::read_dir(&topic_dir).at("list directory", &topic_dir)? {
            let q = q.at("list directory", &topic_dir)?;
            if let Ok(id) = q.file_name().to_string_lossy().parse::<u32>() {
                queues.push((id, q.path()));
            }
        }
        queues.sort();
        for (queue, dir) in queues {
            out.push(check_queue(&topic, queue, &dir, log, problems)?);
        }
    }
    Ok(out)
}

fn check_queue(topic: &str, queue: u32, dir: &Path, log: &Log, problems: &mut Problems) -> StoreResult<QueueReport> {
    let starts = list_offset_files(dir)?;
    let mut rep = QueueReport {
        topic: topic.to_string(),
        queue,
        files: starts.len() as u64,
        entries: 0,
        min_offset: starts.first().copied().unwrap_or(0),
        max_offset: starts.first().copied().unwrap_or(0),
        quarantined_slots: 0,
        below_log_start: 0,
    };
    let mut next_start: Option<u64> = None;
    // The first unused entry seen, while no used entry followed it.
    let mut hole: Option<u64> = None;
    for start in starts {
        let path = dir.join(offset_file_name(start));
        let data = std::fs::read(&path).at("read", &path)?;
        if data.len() % CQ_ENTRY_LEN != 0 {
            problems.push(Problem::new(
                "consume_queue_file_size",
                &path,
                format!(
                    "is {} bytes long, not a whole number of {CQ_ENTRY_LEN}-byte entries",
                    data.len()
                ),
                "none: recovery refuses to start; remove the queue's directory and the checkpoint file so that \
                 recovery rebuilds the queue from the commitlog",
            ));
        }
        if let Some(expected) = next_start.filter(|n| *n != start) {
            problems.push(
                Problem::new(
                    "consume_queue_file_sequence",
                    &path,
                    format!("does not follow the previous file, which ends at queue offset {expected}"),
                    "none: recovery refuses to start; remove the queue's directory and the checkpoint file so \
                     that recovery rebuilds the queue from the commitlog",
                )
                .queue_offset(start),
            );
        }
        let entries = (data.len() / CQ_ENTRY_LEN) as u64;
        next_start = Some(start + entries);
        for k in 0..entries {
            let qoff = start + k;
            let at = k as usize * CQ_ENTRY_LEN;
            let Some(e) = verify_decode_entry(&data[at..at + CQ_ENTRY_LEN]) else {
                hole.get_or_insert(qoff);
                continue;
            };
            if let Some(h) = hole.take() {
                problems.push(
                    Problem::new(
                        "consume_queue_hole",
                        &path,
                        format!("unused entries at queue offsets {h}..{qoff} with entries in use after them"),
                        "none: readers find no message there and recovery's search for the queue's end may stop \
                         at the hole; remove the queue's directory and the checkpoint file so that recovery \
                         rebuilds the queue from the commitlog",
                    )
                    .queue_offset(h),
                );
            }
            rep.entries += 1;
            rep.max_offset = qoff + 1;
            check_entry(qoff, e, &path, log, &mut rep, problems);
        }
    }
    Ok(rep)
}

/// Checks the entry `e` at queue offset `qoff` of `rep`'s queue (file
/// `path`) against the commitlog.
fn check_entry(
    qoff: u64,
    e: super::consume_queue::CqEntry,
    path: &Path,
    log: &Log,
    rep: &mut QueueReport,
    problems: &mut Problems,
) {
    let rebuild = "none: recovery keeps the entry (readers would serve the wrong record or skip it); remove \
                   the queue's directory and the checkpoint file so that recovery rebuilds the queue from \
                   the commitlog";
    if e.phys_offset < log.start {
        rep.below_log_start += 1;
        return;
    }
    if e.phys_offset.saturating_add(u64::from(e.size)) > log.end {
        problems.push(
            Problem::new(
                "consume_queue_entry_past_log_end",
                path,
                format!("points past the end of the log at {}", log.end),
                "recovery drops the queue's entries past the log's end",
            )
            .at(e.phys_offset)
            .length(u64::from(e.size))
            .queue_offset(qoff),
        );
        return;
    }
    if log.is_damaged(e.phys_offset) {
        rep.quarantined_slots += 1;
        return;
    }
    let Some(rec) = log.record_at(e.phys_offset) else {
        problems.push(
            Problem::new(
                "consume_queue_entry_mismatch",
                path,
                "points at no whole record with a valid CRC".into(),
                rebuild,
            )
            .at(e.phys_offset)
            .length(u64::from(e.size))
            .queue_offset(qoff),
        );
        return;
    };
    let mut wrong = Vec::new();
    if rec.topic != rep.topic {
        wrong.push(format!("topic {:?}", rec.topic));
    }
    if rec.queue_id != rep.queue {
        wrong.push(format!("queue {}", rec.queue_id));
    }
    if rec.queue_offset != qoff {
        wrong.push(format!("queue offset {}", rec.queue_offset));
    }
    if rec.size != e.size {
        wrong.push(format!("size {} (the entry says {})", rec.size, e.size));
    }
    if !wrong.is_empty() {
        problems.push(
            Problem::new(
                "consume_queue_entry_mismatch",
                path,
                format!("points at a record of {}", wrong.join(", ")),
                rebuild,
            )
            .at(e.phys_offset)
            .length(u64::from(e.size))
            .queue_offset(qoff),
        );
    }
}

fn check_index(dir: &Path, log: &Log, problems: &mut Problems) -> StoreResult<Vec<IndexReport>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    let mut files = Vec::new();
    for dent in std::fs::read_dir(dir).at("list index directory", dir)? {
        let dent = dent.at("list index directory", dir)?;
        let name = dent.file_name().to_string_lossy().into_owned();
        if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
            files.push(dent.path());
        } else if name.ends_with(".tmp") {
            problems.push(Problem::new(
                "index_unfinished_file",
                &dent.path(),
                "an index file whose creation a crash cut short".into(),
                "recovery removes it",
            ));
        }
    }
    files.sort();
    for path in files {
        let data = std::fs::read(&path).at("read", &path)?;
        let facts = match verify_read(&data, &path) {
            Ok(f) => f,
            Err(e) => {
                problems.push(Problem::new(
                    "index_header",
                    &path,
                    e.to_string(),
                    "none: recovery refuses to start; remove the file (key lookups lose the records it indexed)",
                ));
                continue;
            }
        };
        out.push(IndexReport {
            file: path.display().to_string(),
            entries: u64::from(facts.count),
            capacity: u64::from(facts.capacity),
        });
        if facts.rebuilding {
            problems.push(Problem::new(
                "index_rebuild_interrupted",
                &path,
                "a rebuild of its hash slots was interrupted".into(),
                "recovery finishes the rebuild",
            ));
        }
        let mut prev = 0u64;
        for (n, phys) in facts.phys_offsets.iter().enumerate() {
            let entry = n as u64 + 1;
            if *phys < prev {
                let mut p = Problem::new(
                    "index_entry_order",
                    &path,
                    format!("offset {phys} is below the previous entry's {prev}"),
                    "none until the log is cut below it (recovery then drops the entries from here on); lookups \
                     check every record they find",
                )
                .at(*phys);
                p.index_entry = Some(entry);
                problems.push(p);
                break;
            }
            prev = *phys;
            if *phys >= log.end {
                let mut p = Problem::new(
                    "index_entry_past_log_end",
                    &path,
                    format!(
                        "{} entries from here on point at or past the end of the log at {}",
                        facts.phys_offsets.len() - n,
                        log.end
                    ),
                    "recovery drops the entries from the log's end on and rebuilds the file's slots",
                )
                .at(*phys);
                p.index_entry = Some(entry);
                problems.push(p);
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{append, entry, small_config};
    use crate::store::{Store, StoreErrorKind};

    fn kinds(r: &VerifyReport) -> Vec<&'static str> {
        r.problems.iter().map(|p| p.kind).collect()
    }

    /// A store with `n` keyed 900-byte messages in queue 0 of `t`, shut
    /// down cleanly; returns where they went.
    fn filled(dir: &Path, n: usize) -> Vec<crate::store::append::StoredAt> {
        let (store, _) = Store::open(&small_config(dir)).unwrap();
        let body = "x".repeat(900);
        let batch: Vec<_> = (0..n).map(|i| entry(&body, None, Some(&format!("k{i}")))).collect();
        let stored = append(&store, "t", 0, &batch);
        store.shutdown().unwrap();
        stored
    }

    fn segment_path(dir: &Path, offset: u64) -> PathBuf {
        let seg = small_config(dir).segment_bytes;
        dir.join("commitlog").join(offset_file_name(offset - offset % seg))
    }

    #[test]
    fn a_clean_store_is_clean_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        filled(dir.path(), 300);
        let r = verify(dir.path(), &VerifyOptions::default()).unwrap();
        assert!(r.is_clean(), "{}", r.text());
        assert_eq!(r.segment_bytes, 64 * 1024);
        assert_eq!(r.summary.records, 300);
        assert!(r.summary.segments >= 4, "{}", r.summary.segments);
        assert_eq!(r.summary.consume_queue_entries, 300);
        assert_eq!(r.summary.index_entries, 300);
        assert!(r.summary.index_files >= 2, "256 entries per file");
        assert!(r.text().ends_with(": 0 problems\n"), "{}", r.text());
    }

    #[test]
    fn a_torn_tail_and_a_long_newest_segment_are_what_recovery_repairs() {
        let dir = tempfile::tempdir().unwrap();
        let stored = filled(dir.path(), 300);
        let last = stored.last().unwrap().phys_offset;
        let path = segment_path(dir.path(), last);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = (last % (64 * 1024)) as usize;
        bytes[at + 100] ^= 0xFF;
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();

        let r = verify(dir.path(), &VerifyOptions::default()).unwrap();
        assert_eq!(r.log_end, last);
        let k = kinds(&r);
        for kind in [
            "segment_size",
            "torn_tail",
            "consume_queue_entry_past_log_end",
            "index_entry_past_log_end",
        ] {
            assert!(k.contains(&kind), "{kind} in {k:?}");
        }
        let torn = r.problems.iter().find(|p| p.kind == "torn_tail").unwrap();
        assert_eq!(torn.commitlog_offset, Some(last));
        assert_eq!(torn.file, path.display().to_string());

        // Recovery applies exactly these fixes.
        let (store, _) = Store::open(&small_config(dir.path())).unwrap();
        store.shutdown().unwrap();
        drop(store);
        let r = verify(dir.path(), &VerifyOptions::default()).unwrap();
        assert!(r.is_clean(), "{}", r.text());
        assert_eq!(r.summary.records, 299);
    }

    #[test]
    fn gaps_holes_and_damaged_records_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let stored = filled(dir.path(), 300);
        // A damaged record mid-log: its queue slot counts as quarantined.
        let victim = stored[10].phys_offset;
        let path = segment_path(dir.path(), victim);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(victim % (64 * 1024)) as usize + 500] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let r = verify(dir.path(), &VerifyOptions::default()).unwrap();
        assert_eq!(kinds(&r), ["corrupt_record"], "{}", r.text());
        assert_eq!(r.problems[0].commitlog_offset, Some(victim));
        assert_eq!(r.summary.quarantined_slots, 1);
        let accepted = VerifyOptions {
            quarantined: r.damaged(),
        };
        let again = verify(dir.path(), &accepted).unwrap();
        assert!(again.is_clean(), "{}", again.text());
        assert!(again.text().contains("quarantined: "));

        // An unused entry amid used ones.
        let cq = dir.path().join("consumequeue/t/0").join(offset_file_name(0));
        let mut entries = std::fs::read(&cq).unwrap();
        entries[3 * CQ_ENTRY_LEN..4 * CQ_ENTRY_LEN].fill(0);
        std::fs::write(&cq, &entries).unwrap();
        // A missing segment before the checkpoint's: recovery does not look
        // there, so the log keeps its end; the entries into it are wrong.
        let middle = segment_path(dir.path(), 2 * 64 * 1024);
        std::fs::remove_file(&middle).unwrap();
        let r = verify(dir.path(), &accepted).unwrap();
        let k = kinds(&r);
        for kind in ["segment_gap", "consume_queue_hole", "consume_queue_entry_mismatch"] {
            assert!(k.contains(&kind), "{kind} in {k:?}");
        }
        assert!(!k.contains(&"segment_past_log_end"), "{k:?}");
        let last = stored.last().unwrap();
        assert!(r.log_end > last.phys_offset, "{}", r.log_end);
        let hole = r.problems.iter().find(|p| p.kind == "consume_queue_hole").unwrap();
        assert_eq!(hole.queue_offset, Some(3));

        // Without a checkpoint recovery walks from the first segment: the
        // log ends at the gap and everything after it goes.
        std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
        let r = verify(dir.path(), &accepted).unwrap();
        let k = kinds(&r);
        for kind in [
            "segment_gap",
            "segment_past_log_end",
            "consume_queue_entry_past_log_end",
            "index_entry_past_log_end",
        ] {
            assert!(k.contains(&kind), "{kind} in {k:?}");
        }
        assert_eq!(r.log_end, 2 * 64 * 1024);
        assert_eq!(r.checkpoint, 0);
    }

    #[test]
    fn a_locked_directory_and_a_non_store_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&small_config(dir.path())).unwrap();
        let err = verify(dir.path(), &VerifyOptions::default()).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Locked, "{err}");
        drop(store);
        assert!(verify(dir.path(), &VerifyOptions::default()).unwrap().is_clean());
        let err = verify(&dir.path().join("nothing"), &VerifyOptions::default()).unwrap_err();
        assert!(err.to_string().contains("not a FerroMQ data directory"), "{err}");
    }
}
