//! Consume queues: per topic-queue files of fixed-size entries pointing into
//! the commitlog, so a queue offset finds its record in O(1).
//!
//! Entry layout (20 bytes, big-endian): u64 physical offset, u32 record
//! size, u64 tag hash. A size of 0 marks an unused entry. Files live in
//! `consumequeue/<topic>/<queue>/<20-digit first queue offset>` and are
//! created when their first entry is written: the first holds
//! [`FIRST_FILE_ENTRIES`] entries and each next one twice the previous, up to
//! `store.consume_queue_file_entries`, so ten thousand mostly idle queues
//! reserve megabytes, not gigabytes. The Dispatcher is the only
//! writer; readers read below the published `max_offset`.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};

use super::error::{IoContext, StoreError, StoreResult};
use super::fsutil::{list_offset_files, offset_file_name};
use super::mmap_file::MappedFile;

/// Bytes per entry.
pub const CQ_ENTRY_LEN: usize = 20;
/// Entries of a queue's first file (20 KiB).
pub const FIRST_FILE_ENTRIES: u64 = 1024;

/// One consume-queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    /// Where the record starts in the commitlog.
    pub phys_offset: u64,
    /// Record size.
    pub size: u32,
    /// Hash of the record's tag (0 when it has none).
    pub tag_hash: u64,
}

impl CqEntry {
    fn encode(&self) -> [u8; CQ_ENTRY_LEN] {
        let mut out = [0u8; CQ_ENTRY_LEN];
        out[0..8].copy_from_slice(&self.phys_offset.to_be_bytes());
        out[8..12].copy_from_slice(&self.size.to_be_bytes());
        out[12..20].copy_from_slice(&self.tag_hash.to_be_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<CqEntry> {
        let e = CqEntry {
            phys_offset: u64::from_be_bytes(b.get(0..8)?.try_into().ok()?),
            size: u32::from_be_bytes(b.get(8..12)?.try_into().ok()?),
            tag_hash: u64::from_be_bytes(b.get(12..20)?.try_into().ok()?),
        };
        (e.size != 0).then_some(e)
    }
}

#[derive(Debug)]
struct CqFile {
    start: u64,
    entries: u64,
    file: MappedFile,
}

/// Outcome of [`ConsumeQueue::put`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The entry was appended.
    Appended,
    /// The same entry was already there (replay after a crash).
    AlreadyPresent,
}

/// One topic-queue's consume queue.
#[derive(Debug)]
pub struct ConsumeQueue {
    dir: PathBuf,
    /// Entries of the largest file.
    max_file_entries: u64,
    files: RwLock<Vec<Arc<CqFile>>>,
    /// Held while a file is being created (see `add_file`).
    creating: Mutex<()>,
    /// Start of the last file asked to be created ahead (u64::MAX: none).
    ahead_requested: AtomicU64,
    min_offset: AtomicU64,
    max_offset: AtomicU64,
    flushed_offset: AtomicU64,
}

/// Damage found in the consume queue file or directory `path`.
fn corrupt(path: &Path, detail: String) -> StoreError {
    StoreError::corrupt("consume queue", path, detail)
}

impl ConsumeQueue {
    /// Opens the queue in `dir` (creating the directory), finding its end.
    pub fn open(dir: &Path, max_file_entries: u64) -> StoreResult<ConsumeQueue> {
        std::fs::create_dir_all(dir).at("create directory", dir)?;
        let mut files: Vec<Arc<CqFile>> = Vec::new();
        for start in list_offset_files(dir)? {
            let path = dir.join(offset_file_name(start));
            let file = MappedFile::open_existing(&path)?;
            if file.len() % CQ_ENTRY_LEN != 0 {
                return Err(corrupt(
                    &path,
                    format!("size {} is not a whole number of entries", file.len()),
                ));
            }
            let entries = (file.len() / CQ_ENTRY_LEN) as u64;
            if let Some(prev) = files.last() {
                if prev.start + prev.entries != start {
                    return Err(corrupt(&path, "does not follow the previous file".into()));
                }
            }
            files.push(Arc::new(CqFile { start, entries, file }));
        }
        let min = files.first().map_or(0, |f| f.start);
        // Files reserved ahead of their first entry ([`reserve_through`])
        // may follow the file holding the end: it is the last one whose
        // first entry is used (or the first file, for an empty queue).
        let mut with_end = files.len().saturating_sub(1);
        while with_end > 0 && CqEntry::decode(files[with_end].file.read_at(0, CQ_ENTRY_LEN)?).is_none() {
            with_end -= 1;
        }
        let max = match files.get(with_end) {
            // Entries are written contiguously: binary-search the first unused one.
            Some(last) => {
                let (mut lo, mut hi) = (0u64, last.entries);
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    let used = CqEntry::decode(last.file.read_at(mid as usize * CQ_ENTRY_LEN, CQ_ENTRY_LEN)?).is_some();
                    if used {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                last.start + lo
            }
            None => 0,
        };
        Ok(ConsumeQueue {
            dir: dir.to_path_buf(),
            max_file_entries: max_file_entries.max(1),
            files: RwLock::new(files),
            creating: Mutex::new(()),
            ahead_requested: AtomicU64::new(u64::MAX),
            min_offset: AtomicU64::new(min),
            max_offset: AtomicU64::new(max),
            flushed_offset: AtomicU64::new(max),
        })
    }

    /// Smallest queue offset still stored.
    pub fn min_offset(&self) -> u64 {
        self.min_offset.load(Ordering::Acquire)
    }

    /// One past the newest entry.
    pub fn max_offset(&self) -> u64 {
        self.max_offset.load(Ordering::Acquire)
    }

    fn file_for(&self, offset: u64) -> Option<Arc<CqFile>> {
        let files = self.files.read().ok()?;
        let idx = files.partition_point(|f| f.start <= offset).checked_sub(1)?;
        let f = &files[idx];
        (offset < f.start + f.entries).then(|| f.clone())
    }

    fn slot(&self, f: &CqFile, offset: u64) -> usize {
        (offset - f.start) as usize * CQ_ENTRY_LEN
    }

    /// The entry at `offset`, if stored.
    pub fn get(&self, offset: u64) -> Option<CqEntry> {
        if offset < self.min_offset() || offset >= self.max_offset() {
            return None;
        }
        let f = self.file_for(offset)?;
        CqEntry::decode(f.file.read_at(self.slot(&f, offset), CQ_ENTRY_LEN).ok()?)
    }

    /// Writes the entry for `offset`, which must be the next one (or an
    /// identical replay of an existing one).
    pub fn put(&self, offset: u64, entry: CqEntry) -> StoreResult<PutOutcome> {
        let max = self.max_offset();
        if offset < max {
            if self.get(offset) == Some(entry) {
                return Ok(PutOutcome::AlreadyPresent);
            }
            return Err(corrupt(
                &self.dir,
                format!("entry {offset} already holds a different record"),
            ));
        }
        if offset > max {
            return Err(corrupt(
                &self.dir,
                format!("entry {offset} would leave a gap after {max}"),
            ));
        }
        let f = match self.file_for(offset) {
            Some(f) => f,
            None => self.add_file(offset)?,
        };
        // SAFETY: the Dispatcher is the only writer; `offset` is at the
        // published end, so no reader reads this entry until it is published.
        unsafe { f.file.write_at_shared(self.slot(&f, offset), &entry.encode())? };
        self.max_offset.store(offset + 1, Ordering::Release);
        Ok(PutOutcome::Appended)
    }

    /// Creates the first file of a queue that has none and touches its
    /// first page, so the first message dispatched to the queue does not pay
    /// for creating, mapping and faulting it in (done when a topic is
    /// created, before any producer waits on it).
    pub fn prepare(&self) -> StoreResult<()> {
        let empty = self
            .files
            .read()
            .map_err(|_| StoreError::Poisoned("consume queue"))?
            .is_empty();
        if empty {
            let f = self.add_file(self.max_offset())?;
            std::hint::black_box(f.file.read_at(0, 1)?.first().copied());
        }
        Ok(())
    }

    /// Makes sure the files holding every entry up to and including `last`
    /// exist, creating (and allocating on disk) the missing ones now. The
    /// commitlog writer calls it before a batch is appended, so a full disk
    /// refuses the batch instead of failing its dispatch after the producer
    /// was answered.
    ///
    /// Returns the start of the file to create ahead, off the writer's
    /// thread, when `last` lies in the second half of the newest file and
    /// that file was not asked for yet ([`ConsumeQueues::reserve`] hands it
    /// to the preallocator thread): the writer itself then seldom creates
    /// (allocates, syncs, renames) a file while producers wait.
    pub fn reserve_through(&self, last: u64) -> StoreResult<Option<u64>> {
        loop {
            let next = {
                let files = self.files.read().map_err(|_| StoreError::Poisoned("consume queue"))?;
                match files.last() {
                    Some(f) if f.start + f.entries > last => {
                        let next = f.start + f.entries;
                        let second_half = last >= f.start + f.entries / 2;
                        if second_half && self.ahead_requested.swap(next, Ordering::AcqRel) != next {
                            return Ok(Some(next));
                        }
                        return Ok(None);
                    }
                    Some(f) => f.start + f.entries,
                    None => self.max_offset(),
                }
            };
            self.add_file(next)?;
        }
    }

    /// Creates the file starting at `start` if no file holds that offset
    /// yet (the preallocator thread's job; idempotent). Only the file right
    /// after the newest one is created: a request made before the queue
    /// was restarted elsewhere ([`restart_empty_at`](Self::restart_empty_at))
    /// is stale.
    pub fn create_ahead(&self, start: u64) -> StoreResult<()> {
        let next = {
            let files = self.files.read().map_err(|_| StoreError::Poisoned("consume queue"))?;
            files.last().map(|f| f.start + f.entries)
        };
        if next != Some(start) {
            return Ok(());
        }
        self.add_file(start).map(|_| ())
    }

    /// Makes a queue that holds no entry (`min_offset == max_offset`)
    /// continue at `offset` instead: a replica whose commitlog starts where
    /// its master's retention left it receives each queue's records from
    /// the middle. The queue's files (holding no live entry) are deleted;
    /// the next [`put`](Self::put) or [`reserve_through`](Self::reserve_through)
    /// creates the file starting at `offset`. Fails when the queue holds
    /// entries. Commitlog writer only, while nothing is being dispatched
    /// into this queue.
    pub fn restart_empty_at(&self, offset: u64) -> StoreResult<()> {
        let _creating = self
            .creating
            .lock()
            .map_err(|_| StoreError::Poisoned("consume queue"))?;
        let mut files = self.files.write().map_err(|_| StoreError::Poisoned("consume queue"))?;
        let (min, max) = (self.min_offset(), self.max_offset());
        if min != max {
            return Err(StoreError::InvalidArgument(format!(
                "consume queue {} holds entries {min}..{max}: it cannot restart at {offset}",
                self.dir.display()
            )));
        }
        for f in files.drain(..) {
            let path = f.file.path();
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(StoreError::io("delete an empty consume-queue file", path, e));
                }
                _ => {}
            }
        }
        self.ahead_requested.store(u64::MAX, Ordering::Release);
        for at in [&self.min_offset, &self.max_offset, &self.flushed_offset] {
            at.store(offset, Ordering::Release);
        }
        Ok(())
    }

    /// Adds the file starting at `start` (the current end): twice the size
    /// of the previous one, up to the maximum. A file that already starts
    /// there (reserved ahead) is returned instead.
    ///
    /// The file is created (allocated, synced, renamed into place) holding
    /// only `creating`, not the file list's lock: the commitlog writer's
    /// reservation and readers look files up meanwhile without waiting.
    fn add_file(&self, start: u64) -> StoreResult<Arc<CqFile>> {
        let _creating = self
            .creating
            .lock()
            .map_err(|_| StoreError::Poisoned("consume queue"))?;
        let existing = |files: &[Arc<CqFile>]| {
            files
                .iter()
                .rev()
                .find(|f| f.start <= start && start < f.start + f.entries)
                .cloned()
        };
        let entries = {
            let files = self.files.read().map_err(|_| StoreError::Poisoned("consume queue"))?;
            if let Some(f) = existing(&files) {
                return Ok(f);
            }
            files
                .last()
                .map_or(FIRST_FILE_ENTRIES, |f| f.entries.saturating_mul(2))
                .min(self.max_file_entries)
        };
        let path = self.dir.join(offset_file_name(start));
        let file = MappedFile::create_or_open(&path, entries as usize * CQ_ENTRY_LEN)?;
        let f = Arc::new(CqFile { start, entries, file });
        // Only `add_file` adds files, and it holds `creating`.
        let mut files = self.files.write().map_err(|_| StoreError::Poisoned("consume queue"))?;
        if files.is_empty() {
            self.min_offset.store(start, Ordering::Release);
            self.max_offset.store(start, Ordering::Release);
            self.flushed_offset.store(start, Ordering::Release);
        }
        files.push(f.clone());
        Ok(f)
    }

    /// Drops entries whose record lies at or past `log_end` (after the
    /// commitlog lost a torn tail). Returns how many were dropped.
    pub fn truncate_to_log_end(&self, log_end: u64) -> StoreResult<u64> {
        let old_max = self.max_offset();
        let (min, mut max) = (self.min_offset(), old_max);
        while max > min {
            match self.get(max - 1) {
                Some(e) if e.phys_offset + e.size as u64 > log_end => max -= 1,
                _ => break,
            }
        }
        let dropped = old_max - max;
        // Readers stop at the new end before the entries behind it go (a
        // replica truncates while pulls are served).
        self.max_offset.store(max, Ordering::Release);
        let mut slot = max;
        while slot < old_max {
            let Some(f) = self.file_for(slot) else { break };
            let upto = old_max.min(f.start + f.entries);
            let (pos, len) = (self.slot(&f, slot), (upto - slot) as usize * CQ_ENTRY_LEN);
            // SAFETY: the Dispatcher (the only writer) is idle during
            // recovery and a replica's truncation; new readers read below
            // the lowered `max_offset` (one that loaded the old one just
            // before copies the old entry or zeroes, read as missing).
            unsafe { f.file.write_at_shared(pos, &vec![0u8; len])? };
            // Durable now: a stale entry found again after a crash would
            // point at whatever is later written where its record was.
            f.file.flush_range(pos, len)?;
            slot = upto;
        }
        if dropped > 0 {
            self.flushed_offset.fetch_min(self.max_offset(), Ordering::AcqRel);
            self.flush()?;
        }
        Ok(dropped)
    }

    /// Moves `min_offset` up to the first entry whose record lies at or past
    /// `log_start` (the commitlog's new start after retention) and detaches
    /// the files wholly below it (never the last one). Returns the old and
    /// new minimum and the detached files' paths, for the caller to delete
    /// without holding any lock. Entries point into the commitlog in
    /// ascending order, so the first kept entry is found by binary search.
    pub fn advance_min_to_log_start(&self, log_start: u64) -> StoreResult<(u64, u64, Vec<PathBuf>)> {
        let old = self.min_offset();
        let (mut lo, mut hi) = (old, self.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid) {
                Some(e) if e.phys_offset < log_start => lo = mid + 1,
                _ => hi = mid,
            }
        }
        if lo == old {
            return Ok((old, old, Vec::new()));
        }
        self.min_offset.fetch_max(lo, Ordering::AcqRel);
        let mut files = self.files.write().map_err(|_| StoreError::Poisoned("consume queue"))?;
        let n = files
            .partition_point(|f| f.start + f.entries <= lo)
            .min(files.len().saturating_sub(1));
        let detached = files.drain(..n).map(|f| f.file.path().to_path_buf()).collect();
        Ok((old, lo, detached))
    }

    /// Makes written entries durable; a no-op when nothing is new.
    pub fn flush(&self) -> StoreResult<()> {
        let max = self.max_offset();
        // Files below the minimum may have been deleted by retention.
        let mut from = self.flushed_offset.load(Ordering::Acquire).max(self.min_offset());
        while from < max {
            let Some(f) = self.file_for(from) else { break };
            let upto = max.min(f.start + f.entries);
            let pos = self.slot(&f, from);
            f.file.flush_range(pos, (upto - from) as usize * CQ_ENTRY_LEN)?;
            from = upto;
        }
        self.flushed_offset.store(max, Ordering::Release);
        Ok(())
    }

    /// The directory holding this queue's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Every consume queue of a broker, by (topic, queue id).
#[derive(Debug)]
pub struct ConsumeQueues {
    root: PathBuf,
    entries_per_file: u64,
    /// By topic, then queue id: looked up per dispatched record with a
    /// borrowed `&str` (a `(String, u32)` key would allocate per lookup).
    queues: RwLock<HashMap<String, HashMap<u32, Arc<ConsumeQueue>>>>,
    /// Hands files to create ahead to the preallocator thread (RocketMQ's
    /// `AllocateMappedFileService`); `None` if it could not be started
    /// (then the writer creates every file itself).
    ahead: Option<AheadSender>,
}

/// Sends (queue, start of the file to create) to the preallocator thread.
type AheadSender = Mutex<mpsc::Sender<(Arc<ConsumeQueue>, u64)>>;

/// Starts the thread that creates consume-queue files ahead of need; it
/// ends when the sender is dropped (the store closes).
fn start_preallocator() -> Option<AheadSender> {
    let (tx, rx) = mpsc::channel::<(Arc<ConsumeQueue>, u64)>();
    let spawned = std::thread::Builder::new()
        .name("ferromq-cq-prealloc".into())
        .spawn(move || {
            for (cq, start) in rx {
                if let Err(e) = cq.create_ahead(start) {
                    // The writer tries again when it needs the file, and
                    // refuses the batch if it still cannot.
                    tracing::warn!(queue = %cq.dir().display(), error = %e, "cannot create the next consume-queue file ahead");
                }
            }
        });
    match spawned {
        Ok(_) => Some(Mutex::new(tx)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the consume-queue preallocator thread");
            None
        }
    }
}

impl ConsumeQueues {
    /// Opens every queue under `root` (`<data_dir>/consumequeue`).
    pub fn open(root: &Path, entries_per_file: u64) -> StoreResult<ConsumeQueues> {
        std::fs::create_dir_all(root).at("create directory", root)?;
        let mut queues = HashMap::new();
        for topic_dir in std::fs::read_dir(root).at("list directory", root)? {
            let topic_dir = topic_dir.at("list directory", root)?;
            if !topic_dir.file_type().at("stat", &topic_dir.path())?.is_dir() {
                continue;
            }
            let topic = topic_dir.file_name().to_string_lossy().into_owned();
            let topic_path = topic_dir.path();
            for q in std::fs::read_dir(&topic_path).at("list directory", &topic_path)? {
                let q = q.at("list directory", &topic_path)?;
                let Ok(queue_id) = q.file_name().to_string_lossy().parse::<u32>() else {
                    tracing::warn!(dir = %q.path().display(), "ignoring unexpected directory");
                    continue;
                };
                let cq = ConsumeQueue::open(&q.path(), entries_per_file)?;
                queues
                    .entry(topic.clone())
                    .or_insert_with(HashMap::new)
                    .insert(queue_id, Arc::new(cq));
            }
        }
        Ok(ConsumeQueues {
            root: root.to_path_buf(),
            entries_per_file,
            queues: RwLock::new(queues),
            ahead: start_preallocator(),
        })
    }

    /// Makes sure (topic, queue)'s files hold every entry up to `last`
    /// ([`ConsumeQueue::reserve_through`]), and has the next file created
    /// ahead on the preallocator thread when the queue nears the end of
    /// its newest one.
    pub fn reserve(&self, topic: &str, queue_id: u32, last: u64) -> StoreResult<()> {
        let cq = self.get_or_create(topic, queue_id)?;
        if let (Some(start), Some(tx)) = (cq.reserve_through(last)?, &self.ahead) {
            // Without the thread, the writer creates the file when needed.
            if let Ok(tx) = tx.lock() {
                let _ = tx.send((cq.clone(), start));
            }
        }
        Ok(())
    }

    /// The queue, if it has ever been written.
    pub fn get(&self, topic: &str, queue_id: u32) -> Option<Arc<ConsumeQueue>> {
        self.queues.read().ok()?.get(topic)?.get(&queue_id).cloned()
    }

    /// The queue, created empty when missing.
    pub fn get_or_create(&self, topic: &str, queue_id: u32) -> StoreResult<Arc<ConsumeQueue>> {
        if let Some(q) = self.get(topic, queue_id) {
            return Ok(q);
        }
        let mut queues = self
            .queues
            .write()
            .map_err(|_| StoreError::Poisoned("consume queue table"))?;
        let topic_queues = queues.entry(topic.to_string()).or_default();
        if let Some(q) = topic_queues.get(&queue_id) {
            return Ok(q.clone());
        }
        let dir = self.root.join(topic).join(queue_id.to_string());
        let q = Arc::new(ConsumeQueue::open(&dir, self.entries_per_file)?);
        topic_queues.insert(queue_id, q.clone());
        Ok(q)
    }

    /// Creates and [prepares](ConsumeQueue::prepare) queues `0..queues` of
    /// `topic`.
    pub fn prepare_topic(&self, topic: &str, queues: u32) -> StoreResult<()> {
        for queue_id in 0..queues {
            self.get_or_create(topic, queue_id)?.prepare()?;
        }
        Ok(())
    }

    /// Every queue.
    pub fn all(&self) -> Vec<((String, u32), Arc<ConsumeQueue>)> {
        self.queues
            .read()
            .map(|q| {
                q.iter()
                    .flat_map(|(topic, ids)| ids.iter().map(|(id, cq)| ((topic.clone(), *id), cq.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets a topic's queues and deletes their files.
    pub fn remove_topic(&self, topic: &str) -> StoreResult<()> {
        let mut queues = self
            .queues
            .write()
            .map_err(|_| StoreError::Poisoned("consume queue table"))?;
        queues.remove(topic);
        let dir = self.root.join(topic);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io("remove", &dir, e)),
            _ => Ok(()),
        }
    }
}

/// Decodes one consume-queue entry (`None` for an unused one), for the
/// offline checker (`store::verify`).
pub(crate) fn verify_decode_entry(b: &[u8]) -> Option<CqEntry> {
    CqEntry::decode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> CqEntry {
        CqEntry {
            phys_offset: i * 100,
            size: 100,
            tag_hash: i % 3,
        }
    }

    #[test]
    fn entries_span_files_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let q = ConsumeQueue::open(dir.path(), 8).unwrap();
        for i in 0..30 {
            assert_eq!(q.put(i, entry(i)).unwrap(), PutOutcome::Appended);
        }
        assert_eq!(q.put(5, entry(5)).unwrap(), PutOutcome::AlreadyPresent);
        assert!(q.put(5, entry(6)).is_err());
        assert!(q.put(40, entry(40)).is_err(), "gaps are refused");
        q.flush().unwrap();
        drop(q);
        let q = ConsumeQueue::open(dir.path(), 8).unwrap();
        assert_eq!((q.min_offset(), q.max_offset()), (0, 30));
        for i in 0..30 {
            assert_eq!(q.get(i), Some(entry(i)));
        }
        assert_eq!(q.get(30), None);
    }

    #[test]
    fn files_reserved_ahead_take_later_entries_and_reopen_with_the_right_end() {
        let dir = tempfile::tempdir().unwrap();
        let q = ConsumeQueue::open(dir.path(), 8).unwrap();
        for i in 0..5 {
            q.put(i, entry(i)).unwrap();
        }
        // Room for entries up to 20: files [0,8), [8,16), [16,24).
        q.reserve_through(20).unwrap();
        q.reserve_through(20).unwrap(); // idempotent
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
        assert_eq!(q.max_offset(), 5, "reserving publishes nothing");
        // A crash now: the reserved files are empty, the end is still 5.
        drop(q);
        let q = ConsumeQueue::open(dir.path(), 8).unwrap();
        assert_eq!((q.min_offset(), q.max_offset()), (0, 5));
        for i in 5..12 {
            q.put(i, entry(i)).unwrap();
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            3,
            "no file created by put"
        );
        drop(q);
        let q = ConsumeQueue::open(dir.path(), 8).unwrap();
        assert_eq!(q.max_offset(), 12);
        assert_eq!(q.get(11), Some(entry(11)));
    }

    #[test]
    fn prepared_queues_are_empty_until_written_and_reopen_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let queues = ConsumeQueues::open(dir.path(), 3000).unwrap();
        queues.prepare_topic("t", 3).unwrap();
        for id in 0..3 {
            let q = queues.get("t", id).unwrap();
            assert_eq!((q.min_offset(), q.max_offset(), q.get(0)), (0, 0, None));
            let files = std::fs::read_dir(dir.path().join("t").join(id.to_string()))
                .unwrap()
                .count();
            assert_eq!(files, 1, "the first file exists before any message");
        }
        let q = queues.get("t", 1).unwrap();
        q.prepare().unwrap(); // a second time changes nothing
        q.put(0, entry(0)).unwrap();
        drop((q, queues));
        let queues = ConsumeQueues::open(dir.path(), 3000).unwrap();
        assert_eq!(queues.get("t", 0).unwrap().max_offset(), 0);
        assert_eq!(queues.get("t", 1).unwrap().get(0), Some(entry(0)));
    }

    #[test]
    fn files_start_small_and_double_up_to_the_maximum() {
        let dir = tempfile::tempdir().unwrap();
        let q = ConsumeQueue::open(dir.path(), 3000).unwrap();
        for i in 0..9000 {
            q.put(i, entry(i)).unwrap();
        }
        let sizes: Vec<u64> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len() / CQ_ENTRY_LEN as u64)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(sizes, [1024, 2048, 3000], "1024, 2048, then capped at 3000");
        drop(q);
        let q = ConsumeQueue::open(dir.path(), 3000).unwrap();
        assert_eq!(q.max_offset(), 9000);
        for i in [0, 1023, 1024, 3071, 3072, 8999] {
            assert_eq!(q.get(i), Some(entry(i)));
        }
    }

    #[test]
    fn truncation_drops_entries_past_the_log_end() {
        let dir = tempfile::tempdir().unwrap();
        let q = ConsumeQueue::open(dir.path(), 8).unwrap();
        for i in 0..20 {
            q.put(i, entry(i)).unwrap();
        }
        assert_eq!(q.truncate_to_log_end(1550).unwrap(), 5);
        assert_eq!(q.max_offset(), 15);
        q.put(
            15,
            CqEntry {
                phys_offset: 1500,
                size: 7,
                tag_hash: 0,
            },
        )
        .unwrap();
        drop(q);
        assert_eq!(ConsumeQueue::open(dir.path(), 8).unwrap().max_offset(), 16);
    }

    #[test]
    fn queue_table_finds_queues_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let qs = ConsumeQueues::open(dir.path(), 8).unwrap();
        qs.get_or_create("t", 3).unwrap().put(0, entry(0)).unwrap();
        drop(qs);
        let qs = ConsumeQueues::open(dir.path(), 8).unwrap();
        assert_eq!(qs.get("t", 3).unwrap().max_offset(), 1);
        qs.remove_topic("t").unwrap();
        assert!(qs.get("t", 3).is_none());
        assert!(!dir.path().join("t").exists());
    }
}
