//! Storage: an append-only commitlog of mmap'ed segments, consume queues,
//! a key index, the topic table and crash recovery.
//!
//! ```text
//! <data_dir>/
//!   lock                         flock'ed by the running broker
//!   abort                        present while a broker runs (crash marker)
//!   checkpoint                   consume queues/index durable below this
//!   commitlog/<20-digit start>   segments
//!   consumequeue/<topic>/<queue>/<20-digit first queue offset>
//!   index/                       message-key index files
//!   config/topics.json           the topic table
//!   config/offsets.json          committed offsets (snapshot)
//!   config/subscriptions.json    groups receiving with per-message acks
//! ```

pub mod append;
pub mod checkpoint;
pub mod commitlog;
pub mod consume_queue;
pub mod disk;
pub mod error;
pub mod flusher;
pub mod fsutil;
pub mod index;
pub mod lock;
pub mod mmap_file;
pub mod offsets;
pub mod record;
pub mod replica;
pub mod retention;
pub mod subscriptions;
pub mod topics;
pub mod verify;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::config::StoreSection;
use crate::message::{split_keys, tag_hash};
use append::ExpiryFn;
use checkpoint::{Checkpoint, CheckpointFile};
use commitlog::{CommitLog, RecoveryReport};
use consume_queue::{ConsumeQueues, CqEntry};
use error::IoContext;
pub use error::{StoreError, StoreErrorKind, StoreResult};
use index::IndexStore;
use lock::DirLock;
use offsets::{decode_commits, OffsetTable, OFFSETS_TOPIC};
use record::{MessageId, RecordView, StoredRecord};
use topics::TopicTable;

/// What the Dispatcher needs to index one appended record.
#[derive(Debug, Clone)]
pub struct DispatchEntry {
    /// Topic name.
    pub topic: Arc<str>,
    /// Queue id.
    pub queue_id: u32,
    /// Offset within the queue.
    pub queue_offset: u64,
    /// Commitlog offset.
    pub phys_offset: u64,
    /// Record size.
    pub size: u32,
    /// Hash of the tag (0 when none).
    pub tag_hash: u64,
    /// The `KEYS` property, if any.
    pub keys: Option<String>,
    /// Broker store time, ms.
    pub store_timestamp: u64,
    /// When the message's TTL passes, ms since the epoch (None: never).
    pub expire_at: Option<u64>,
}

impl DispatchEntry {
    fn from_record(rec: &StoredRecord) -> DispatchEntry {
        DispatchEntry {
            topic: Arc::from(rec.topic.as_str()),
            queue_id: rec.queue_id,
            queue_offset: rec.queue_offset,
            phys_offset: rec.phys_offset,
            size: rec.size,
            tag_hash: rec.tag().map_or(0, tag_hash),
            keys: rec.keys().map(str::to_string),
            store_timestamp: rec.store_timestamp,
            // Recovery needs no expiry notices: queue actors rescan.
            expire_at: None,
        }
    }
}

/// What [`Store::delete_segments_below`] deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Commitlog segments deleted.
    pub segments: u64,
    /// Bytes of commitlog segments deleted.
    pub bytes: u64,
    /// Consume-queue files deleted.
    pub consume_queue_files: u64,
    /// Index files deleted.
    pub index_files: u64,
    /// The commitlog's start afterwards.
    pub new_start: u64,
    /// Queues whose `min_offset` advanced: (topic, queue, old min, new min).
    pub queues: Vec<(String, u32, u64, u64)>,
    /// Messages groups lose: for each committed offset below a queue's new
    /// minimum, (group, topic, queue, messages between the higher of the
    /// committed offset and the old minimum, and the new minimum). Counted
    /// once per deletion, so a group offline across several deletions is
    /// not counted twice; such a group continues from the minimum.
    pub skipped: Vec<(String, String, u32, u64)>,
}

/// The broker's storage, shared (behind an `Arc`) by every actor.
#[derive(Debug)]
pub struct Store {
    cfg: StoreSection,
    /// The commitlog.
    pub log: Arc<CommitLog>,
    /// Consume queues.
    pub queues: ConsumeQueues,
    /// Message-key index.
    pub index: Mutex<IndexStore>,
    /// Topic table.
    pub topics: TopicTable,
    /// Committed consumer offsets.
    pub offsets: OffsetTable,
    /// Groups consuming topics with per-message acknowledgements.
    pub subscriptions: subscriptions::SubscriptionTable,
    checkpoint: CheckpointFile,
    dispatched: AtomicU64,
    /// Next queue offset per (topic, queue); only the commitlog writer uses
    /// it. Kept here so a restarted writer resumes where it stopped.
    queue_offsets: Mutex<HashMap<(Arc<str>, u32), u64>>,
    /// The TTL deadline of appended records (None: nothing expires).
    expire_at: Option<ExpiryFn>,
    /// How full the disk is, and whether sends are refused.
    pub disk: disk::DiskGuard,
    _lock: DirLock,
}

/// The disk watermarks of `cfg`.
pub fn watermarks(cfg: &StoreSection) -> disk::Watermarks {
    disk::Watermarks {
        clean: cfg.disk_clean_ratio,
        force_clean: cfg.disk_force_clean_ratio,
        refuse: cfg.disk_refuse_ratio,
    }
}

fn poisoned(what: &'static str) -> StoreError {
    StoreError::Poisoned(what)
}

impl Store {
    /// Locks the data directory, opens everything and recovers: finds the
    /// end of the commitlog by CRC, cuts a torn tail, and replays records
    /// past the checkpoint into consume queues and the index. The store's
    /// own internal topic (committed offsets) is created first. Appended
    /// records get no TTL deadline (see [`Store::open_with_internal_topics`]).
    pub fn open(cfg: &StoreSection) -> StoreResult<(Store, RecoveryReport)> {
        Store::open_inner(cfg, &[], None)
    }

    /// [`Store::open`], creating the caller's internal topics (name and
    /// settings; the broker's delay topic) before recovery, so that replay
    /// indexes their records instead of skipping them like those of a
    /// deleted topic. Existing topics keep their settings.
    ///
    /// `expire_at` computes each appended record's TTL deadline, which
    /// [`append::append_batch`] hands to the Dispatcher in
    /// [`DispatchEntry::expire_at`]: the store stores the topic's default
    /// TTL but does not interpret TTLs (the broker passes
    /// `delivery::expiry::expire_at`).
    pub fn open_with_internal_topics(
        cfg: &StoreSection,
        internal_topics: &[(&str, topics::TopicConfig)],
        expire_at: ExpiryFn,
    ) -> StoreResult<(Store, RecoveryReport)> {
        Store::open_inner(cfg, internal_topics, Some(expire_at))
    }

    fn open_inner(
        cfg: &StoreSection,
        internal_topics: &[(&str, topics::TopicConfig)],
        expire_at: Option<ExpiryFn>,
    ) -> StoreResult<(Store, RecoveryReport)> {
        let dir = &cfg.data_dir;
        std::fs::create_dir_all(dir).at("create data directory", dir)?;
        let lock = DirLock::acquire(dir)?;
        let started = Instant::now();
        let abort_marker = dir.join("abort");
        let crashed = abort_marker.exists();
        let topics = TopicTable::open(dir)?;
        // Internal topics must exist before replay, or their records are
        // skipped like those of a deleted topic.
        topics.get_or_create(OFFSETS_TOPIC, topics::TopicConfig::with_queues(1))?;
        for (topic, cfg) in internal_topics {
            topics.get_or_create(topic, *cfg)?;
        }
        let subscriptions = subscriptions::SubscriptionTable::open(dir)?;
        let (offsets, _) = OffsetTable::open(dir)?;
        let store = Store {
            cfg: cfg.clone(),
            log: Arc::new(CommitLog::open(&dir.join("commitlog"), cfg.segment_bytes)?),
            queues: ConsumeQueues::open(&dir.join("consumequeue"), cfg.consume_queue_file_entries)?,
            index: Mutex::new(IndexStore::open(dir.join("index"), cfg.index_slots, cfg.index_entries)?),
            topics,
            offsets,
            subscriptions,
            checkpoint: CheckpointFile::new(dir),
            dispatched: AtomicU64::new(0),
            queue_offsets: Mutex::new(HashMap::new()),
            expire_at,
            disk: disk::DiskGuard::new(dir, watermarks(cfg)),
            _lock: lock,
        };
        let (report, replayed) = store.recover()?;
        match std::fs::write(&abort_marker, b"").at("write the crash marker", &abort_marker) {
            Err(e) if e.is_no_space() => store.start_full(e),
            other => other?,
        }
        tracing::info!(
            data_dir = %dir.display(),
            previous_run_crashed = crashed,
            commitlog_end = report.end,
            records_replayed = report.records,
            torn_bytes_erased = report.zeroed_bytes,
            segments_deleted = report.deleted_segments,
            corrupt_records_quarantined = report.corrupt_records,
            offset_commits_replayed = replayed,
            millis = started.elapsed().as_millis() as u64,
            "store recovered"
        );
        Ok((store, report))
    }

    fn recover(&self) -> StoreResult<(RecoveryReport, u64)> {
        let cp = self.checkpoint.load();
        let report = match self.replay_from(cp.dispatched_offset) {
            // A consume queue missing entries below the checkpoint (a
            // dispatch lost before this version retried them, or files
            // restored from elsewhere): whatever the checkpoint says, the
            // commitlog is the truth, so every queue is rebuilt from it.
            Err(StoreError::Corrupt {
                what: "consume queue",
                detail,
                path,
                ..
            }) if cp.dispatched_offset > 0 => {
                tracing::warn!(
                    queue = ?path,
                    problem = %detail,
                    checkpoint = cp.dispatched_offset,
                    "a consume queue does not match the checkpoint: rebuilding every queue from the whole commitlog"
                );
                self.replay_from(0)?
            }
            other => other?,
        };
        self.finish_recovery(report)
    }

    /// Walks the commitlog (see [`CommitLog::recover`]) and dispatches
    /// every record at or after `from` into the consume queues and index.
    fn replay_from(&self, from: u64) -> StoreResult<RecoveryReport> {
        let indexed = self
            .index
            .lock()
            .map_err(|_| poisoned("index"))?
            .max_indexed_phys_offset();
        let mut failure = None;
        let report = self.log.recover(from, |off, bytes| {
            if failure.is_some() {
                return;
            }
            match StoredRecord::decode(Bytes::copy_from_slice(bytes)) {
                Ok(rec) => {
                    let reindex = indexed.is_none_or(|i| off >= i);
                    let dispatched = self
                        .fill_quarantined_slots(&rec, off)
                        .and_then(|()| self.dispatch_one(&DispatchEntry::from_record(&rec), reindex));
                    if let Err(e) = dispatched {
                        failure = Some(e);
                    }
                }
                Err(e) => tracing::warn!(offset = off, error = %e, "record passed its CRC but does not decode"),
            }
        })?;
        match failure {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Recovery after the replay: drops what points past the end or below
    /// the start, sets the queue ends, replays commits, checkpoints.
    fn finish_recovery(&self, report: RecoveryReport) -> StoreResult<(RecoveryReport, u64)> {
        // Entries that point into the cut-off tail must go.
        for ((topic, queue), cq) in self.queues.all() {
            let dropped = cq.truncate_to_log_end(report.end)?;
            if dropped > 0 {
                tracing::warn!(%topic, queue, dropped, "dropped consume-queue entries past the end of the commitlog");
            }
        }
        self.index
            .lock()
            .map_err(|_| poisoned("index"))?
            .truncate_from(report.end)?;
        // After retention, a queue's first file may still hold entries
        // pointing below the commitlog's start: its minimum skips them.
        let log_start = self.log.start_offset();
        for (_, cq) in self.queues.all() {
            let (_, _, files) = cq.advance_min_to_log_start(log_start)?;
            for path in files {
                std::fs::remove_file(&path).at("delete a consume-queue file below the commitlog", &path)?;
            }
        }
        let mut offsets = self.queue_offsets.lock().map_err(|_| poisoned("queue offsets"))?;
        for ((topic, queue), cq) in self.queues.all() {
            offsets.insert((Arc::from(topic.as_str()), queue), cq.max_offset());
        }
        drop(offsets);
        self.dispatched.store(report.end, Ordering::Release);
        // Before the checkpoint: it snapshots the offset table, which must
        // hold every replayed commit by then.
        let replayed = self.replay_offset_commits()?;
        match self.flush_and_checkpoint() {
            // Recovered in memory; the checkpoint is written once there is
            // room (the next start replays from the older one meanwhile).
            Err(e) if e.is_no_space() => self.start_full(e),
            other => other?,
        }
        Ok((report, replayed))
    }

    /// Rebuilds the committed-offset table: the snapshot, then every commit
    /// record after the position it covers. Returns the records replayed.
    fn replay_offset_commits(&self) -> StoreResult<u64> {
        let Some(cq) = self.queues.get(OFFSETS_TOPIC, 0) else {
            return Ok(0);
        };
        let from = self.offsets.snapshot_covers().max(cq.min_offset());
        let mut replayed = 0;
        for off in from..cq.max_offset() {
            let Some(e) = cq.get(off) else { break };
            let rec = self.log.record_at(e.phys_offset)?;
            match decode_commits(rec.body) {
                Ok(commits) => self.offsets.apply(&commits),
                Err(err) => tracing::warn!(offset = off, error = %err, "skipping an unreadable offset commit"),
            }
            replayed += 1;
        }
        Ok(replayed)
    }

    /// The first offset of (topic, queue) whose record was stored at or
    /// after `timestamp` (ms); the queue's end when none was. Binary search
    /// over the consume queue, reading store timestamps from the commitlog.
    pub fn offset_for_timestamp(&self, topic: &str, queue: u32, timestamp: u64) -> StoreResult<u64> {
        let Some(cq) = self.queues.get(topic, queue) else {
            return Ok(0);
        };
        let (mut lo, mut hi) = (cq.min_offset(), cq.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = cq
                .get(mid)
                .ok_or_else(|| StoreError::corrupt("consume queue", cq.dir(), format!("entry {mid} is missing")))?;
            let mut head = BytesMut::with_capacity(52);
            self.log.read_into(e.phys_offset, 52, &mut head)?;
            let stored = RecordView(&head).store_timestamp().ok_or_else(|| StoreError::Corrupt {
                what: "commitlog record",
                path: None,
                offset: Some(e.phys_offset),
                detail: "too short for a store timestamp".into(),
            })?;
            if stored < timestamp {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The commitlog's segments for the retention policy; a segment not
    /// yet entirely durable and dispatched counts as active (never deleted).
    pub fn segment_infos(&self) -> StoreResult<Vec<retention::SegmentInfo>> {
        self.log.segment_infos(self.dispatched_offset())
    }

    /// Deletes the commitlog segments wholly below `below` (never the
    /// active one) and everything that only points into them.
    ///
    /// Order: each consume queue's `min_offset` first moves to its first
    /// entry at or past the new start (a pull below it then answers
    /// OFFSET_MOVED), then the segments leave the segment table (a read
    /// below the new start fails with "offset moved"; readers already
    /// holding a segment keep a valid mapping), then consume-queue and
    /// index files wholly below are detached likewise. Files are unlinked
    /// last, with no lock held, so appends and pulls never wait on it. Run
    /// it on a blocking thread.
    pub fn delete_segments_below(&self, below: u64) -> StoreResult<RetentionOutcome> {
        let below = below.min(self.dispatched_offset()).min(self.log.flushed_pos());
        let mut out = RetentionOutcome::default();
        let mut unlink: Vec<PathBuf> = Vec::new();
        let new_start = {
            // The first segment kept: everything below it goes.
            let seg = self.log.segment_bytes();
            below - below % seg
        };
        if new_start <= self.log.start_offset() {
            return Ok(out);
        }
        for ((topic, queue), cq) in self.queues.all() {
            let (old, new, files) = cq.advance_min_to_log_start(new_start)?;
            if new > old {
                out.queues.push((topic, queue, old, new));
            }
            out.consume_queue_files += files.len() as u64;
            unlink.extend(files);
        }
        if !out.queues.is_empty() {
            for (key, committed) in self.offsets.all() {
                let moved = out
                    .queues
                    .iter()
                    .find(|(t, q, _, _)| *t == key.topic && *q == key.queue);
                if let Some((_, _, old, new)) = moved {
                    let lost = new.saturating_sub(committed.max(*old));
                    if lost > 0 {
                        out.skipped.push((key.group, key.topic, key.queue, lost));
                    }
                }
            }
        }
        let segments = self.log.detach_segments_below(new_start)?;
        out.segments = segments.len() as u64;
        out.bytes = segments.len() as u64 * self.log.segment_bytes();
        unlink.extend(segments.iter().map(|s| s.path().to_path_buf()));
        drop(segments);
        let index_files = self
            .index
            .lock()
            .map_err(|_| poisoned("index"))?
            .detach_files_below(self.log.start_offset());
        out.index_files = index_files.len() as u64;
        unlink.extend(index_files);
        out.new_start = self.log.start_offset();
        for path in unlink {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(StoreError::io("delete a file after retention", path, e));
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Start-up found the disk full (`e`): the broker starts anyway,
    /// serving reads and refusing sends until there is room.
    fn start_full(&self, e: StoreError) {
        let usage = self.disk.refresh().map(|s| s.usage).unwrap_or_default();
        tracing::error!(
            data_dir = %self.cfg.data_dir.display(),
            used_percent = format!("{:.1}", usage.used_ratio() * 100.0),
            free_bytes = usage.free_bytes,
            error = %e,
            "the disk is full: starting read-only until there is room (sends are refused with DISK_FULL)"
        );
        self.disk.note_no_space(self.cfg.segment_bytes);
    }

    /// `e`, a write that found no space: makes the disk guard refuse sends
    /// until a segment's worth is free again, and returns the refusal
    /// (what is full and how full) in its place.
    pub fn no_space(&self, e: StoreError) -> StoreError {
        tracing::error!(error = %e, "a write found no space left on the device");
        self.disk.note_no_space(self.cfg.segment_bytes);
        match self.disk.check_accepting() {
            Err(full) => StoreError::DiskFull(full),
            Ok(()) => e,
        }
    }

    /// Configuration.
    pub fn config(&self) -> &StoreSection {
        &self.cfg
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.cfg.data_dir.clone()
    }

    /// Reserves `count` consecutive queue offsets for (topic, queue) and
    /// returns the first. Commitlog writer only.
    pub fn reserve_queue_offsets(&self, topic: &Arc<str>, queue_id: u32, count: u64) -> StoreResult<u64> {
        let mut offsets = self.queue_offsets.lock().map_err(|_| poisoned("queue offsets"))?;
        let next = offsets.entry((topic.clone(), queue_id)).or_insert(0);
        let first = *next;
        *next += count;
        Ok(first)
    }

    /// Gives back offsets reserved for a batch that failed to append.
    pub fn release_queue_offsets(&self, topic: &Arc<str>, queue_id: u32, first: u64) -> StoreResult<()> {
        let mut offsets = self.queue_offsets.lock().map_err(|_| poisoned("queue offsets"))?;
        offsets.insert((topic.clone(), queue_id), first);
        Ok(())
    }

    /// Forgets a deleted topic's queue offsets (a re-created topic starts at 0).
    pub fn forget_topic_offsets(&self, topic: &str) -> StoreResult<()> {
        let mut offsets = self.queue_offsets.lock().map_err(|_| poisoned("queue offsets"))?;
        offsets.retain(|(t, _), _| &**t != topic);
        Ok(())
    }

    /// Writes one record's consume-queue and index entries. Records of
    /// topics no longer in the topic table are skipped.
    pub fn dispatch(&self, e: &DispatchEntry) -> StoreResult<()> {
        self.dispatch_one(e, true)
    }

    fn dispatch_one(&self, e: &DispatchEntry, index_keys: bool) -> StoreResult<()> {
        if self.topics.get(&e.topic).is_none() {
            return Ok(());
        }
        let cq = self.queues.get_or_create(&e.topic, e.queue_id)?;
        cq.put(
            e.queue_offset,
            CqEntry {
                phys_offset: e.phys_offset,
                size: e.size,
                tag_hash: e.tag_hash,
            },
        )?;
        if let (true, Some(keys)) = (index_keys, &e.keys) {
            if split_keys(keys).next().is_some() {
                self.index.lock().map_err(|_| poisoned("index"))?.put_keys(
                    &e.topic,
                    keys,
                    e.phys_offset,
                    e.store_timestamp,
                )?;
            }
        }
        Ok(())
    }

    /// During recovery: when recovery quarantined a damaged record before
    /// `rec` (at log offset `off`) and `rec`'s queue has no entry for the
    /// queue offsets just below `rec`'s, those slots belonged to damaged
    /// records. They are filled with entries pointing at the quarantined
    /// bytes, which fail every reader's CRC check and are skipped: the
    /// queue has no gap and the damaged record is never delivered.
    fn fill_quarantined_slots(&self, rec: &StoredRecord, off: u64) -> StoreResult<()> {
        if self.topics.get(&rec.topic).is_none() {
            return Ok(());
        }
        let Some((at, len)) = self.log.quarantined_before(off) else {
            return Ok(());
        };
        let cq = self.queues.get_or_create(&rec.topic, rec.queue_id)?;
        // A short prefix of the quarantined bytes is enough to fail the
        // check (they failed it at any length), and keeps a reader from
        // copying a long damaged run.
        let size = len.min(64) as u32;
        for slot in cq.max_offset()..rec.queue_offset {
            tracing::error!(
                topic = %rec.topic,
                queue = rec.queue_id,
                queue_offset = slot,
                commitlog_offset = at,
                "a queue slot held a corrupt record: it is skipped by every reader"
            );
            cq.put(
                slot,
                CqEntry {
                    phys_offset: at,
                    size,
                    tag_hash: 0,
                },
            )?;
        }
        Ok(())
    }

    /// Records that every record below `end` has been dispatched.
    pub fn mark_dispatched(&self, end: u64) {
        self.dispatched.fetch_max(end, Ordering::AcqRel);
    }

    /// Commitlog offset below which everything is dispatched.
    pub fn dispatched_offset(&self) -> u64 {
        self.dispatched.load(Ordering::Acquire)
    }

    /// Flushes consume queues and the index, then moves the checkpoint to
    /// what they now durably cover.
    pub fn flush_and_checkpoint(&self) -> StoreResult<()> {
        let dispatched = self.dispatched_offset();
        // Commits are applied to the table before their record is appended,
        // so a snapshot taken now includes every record below `covers`.
        if let Some(cq) = self.queues.get(OFFSETS_TOPIC, 0) {
            let covers = cq.max_offset();
            if covers != self.offsets.snapshot_covers() {
                self.offsets.snapshot(covers)?;
            }
        }
        for (_, cq) in self.queues.all() {
            cq.flush()?;
        }
        self.index.lock().map_err(|_| poisoned("index"))?.flush()?;
        if self.checkpoint.load().dispatched_offset != dispatched {
            self.checkpoint.store(Checkpoint {
                dispatched_offset: dispatched,
            })?;
        }
        Ok(())
    }

    /// Clean shutdown: everything durable, crash marker removed.
    pub fn shutdown(&self) -> StoreResult<()> {
        self.log.flush_to(u64::MAX)?;
        self.flush_and_checkpoint()?;
        let marker = self.cfg.data_dir.join("abort");
        match std::fs::remove_file(&marker) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io("remove the crash marker", marker, e)),
            _ => Ok(()),
        }
    }

    /// The raw bytes of the record a message id names (this broker's).
    pub fn raw_record_by_id(&self, id: &MessageId) -> StoreResult<Bytes> {
        let rec = self.log.record_at(id.phys_offset)?;
        commitlog::read_raw(&self.log, rec.phys_offset, rec.size)
    }

    /// Raw records of `topic` carrying `key`, newest first, at most `max`.
    pub fn raw_records_by_key(&self, topic: &str, key: &str, max: usize) -> StoreResult<(u32, Bytes)> {
        let candidates = self
            .index
            .lock()
            .map_err(|_| poisoned("index"))?
            .lookup(topic, key, max * 4 + 16);
        let mut out = BytesMut::new();
        let mut count = 0u32;
        for phys in candidates {
            if count as usize >= max {
                break;
            }
            let Ok(rec) = self.log.record_at(phys) else { continue };
            // The index stores hashes: confirm the real topic and key.
            if rec.topic == topic && rec.keys().is_some_and(|k| split_keys(k).any(|k| k == key)) {
                self.log.read_into(phys, rec.size as usize, &mut out)?;
                count += 1;
            }
        }
        Ok((count, out.freeze()))
    }
}

/// Helpers for tests that drive a real store without actors.
#[cfg(test)]
pub mod testing {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use bytes::Bytes;

    use super::append::{append_batch, AppendContext, AppendEntry, StoredAt};
    use super::commitlog::Appender;
    use super::topics::TopicConfig;
    use super::Store;
    use crate::config::StoreSection;

    /// Small segments and consume-queue files, rooted at `dir`.
    pub fn small_config(dir: &std::path::Path) -> StoreSection {
        StoreSection {
            data_dir: dir.to_path_buf(),
            segment_bytes: 64 * 1024,
            consume_queue_file_entries: 64,
            index_slots: 64,
            index_entries: 256,
            ..StoreSection::default()
        }
    }

    /// A message entry with an optional tag and key.
    pub fn entry(body: &str, tag: Option<&str>, key: Option<&str>) -> AppendEntry {
        let mut properties = BTreeMap::new();
        if let Some(t) = tag {
            properties.insert("TAGS".to_string(), t.to_string());
        }
        if let Some(k) = key {
            properties.insert("KEYS".to_string(), k.to_string());
        }
        AppendEntry {
            flags: 0,
            born_timestamp: 1,
            properties,
            body: Bytes::from(body.to_string()),
        }
    }

    /// Creates `topic` and appends + dispatches `entries` to `queue`.
    pub fn append(store: &Store, topic: &str, queue: u32, entries: &[AppendEntry]) -> Vec<StoredAt> {
        store.topics.get_or_create(topic, TopicConfig::with_queues(4)).unwrap();
        let mut appender = Appender::new(store.log.clone());
        let ctx = AppendContext {
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_host: "127.0.0.1:2".parse().unwrap(),
            now_ms: 1000,
        };
        let topic: Arc<str> = Arc::from(topic);
        let batch = append_batch(store, &mut appender, &topic, queue, entries, ctx).unwrap();
        for d in &batch.dispatch {
            store.dispatch(d).unwrap();
        }
        store.mark_dispatched(batch.end);
        batch.stored
    }
}

#[cfg(test)]
mod tests {
    use super::fsutil::offset_file_name;
    use super::testing::{append, entry, small_config};
    use super::*;

    #[test]
    fn a_damaged_record_mid_log_is_quarantined_and_its_queue_slot_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(dir.path());
        let stored;
        {
            let (store, _) = Store::open(&cfg).unwrap();
            let batch: Vec<_> = (0..100).map(|i| entry(&format!("message {i}"), None, None)).collect();
            stored = append(&store, "orders", 1, &batch);
            store.flush_and_checkpoint().unwrap();
        }
        // Flip a byte in the body of record 60, and lose the consume queues
        // and the checkpoint so that recovery replays the whole log.
        let victim = stored[60].phys_offset;
        let seg_start = victim - victim % cfg.segment_bytes;
        let path = dir.path().join("commitlog").join(fsutil::offset_file_name(seg_start));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(stored[61].phys_offset - seg_start) as usize - 3] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        std::fs::remove_dir_all(dir.path().join("consumequeue")).unwrap();
        std::fs::remove_file(dir.path().join("checkpoint")).unwrap();

        let (store, report) = Store::open(&cfg).unwrap();
        assert_eq!(report.corrupt_records, 1);
        assert_eq!(store.log.corrupt_records(), 1);
        let last = stored.last().unwrap();
        assert!(report.end > last.phys_offset, "later records are kept");
        let cq = store.queues.get("orders", 1).unwrap();
        assert_eq!(cq.max_offset(), 100, "no gap, nothing lost after the damage");
        assert_eq!(cq.get(61).unwrap().phys_offset, stored[61].phys_offset);
        let hole = cq.get(60).unwrap();
        let raw = commitlog::read_raw(&store.log, hole.phys_offset, hole.size).unwrap();
        assert!(!record::is_intact(&raw), "the damaged slot fails every reader's check");
        // Read back, it is not counted twice.
        store.log.note_corrupt_record(hole.phys_offset, hole.size);
        assert_eq!(store.log.corrupt_records(), 1);
        let again = append(&store, "orders", 1, &[entry("after", None, None)]);
        assert_eq!(again[0].queue_offset, 100);
    }

    #[test]
    fn crash_with_a_torn_tail_recovers_consume_queues_and_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(dir.path());
        let stored;
        {
            let (store, _) = Store::open(&cfg).unwrap();
            let batch: Vec<_> = (0..100)
                .map(|i| entry(&format!("message {i}"), Some("t"), None))
                .collect();
            stored = append(&store, "orders", 1, &batch);
            store.flush_and_checkpoint().unwrap();
            // Dropped without shutdown(): a crash.
        }
        assert!(dir.path().join("abort").exists(), "the crash marker stays behind");
        // Tear the last record.
        let last = stored.last().unwrap().phys_offset;
        let seg_start = last - last % cfg.segment_bytes;
        let path = dir.path().join("commitlog").join(fsutil::offset_file_name(seg_start));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(last - seg_start) as usize + 60] ^= 0xFF;
        std::fs::write(&path, bytes).unwrap();

        let (store, report) = Store::open(&cfg).unwrap();
        assert_eq!(report.end, last);
        let cq = store.queues.get("orders", 1).unwrap();
        assert_eq!(cq.max_offset(), 99, "the torn record's entry is gone");
        // The next message takes the torn one's queue offset: no gap.
        let again = append(&store, "orders", 1, &[entry("after", None, None)]);
        assert_eq!(again[0].queue_offset, 99);
        assert_eq!(again[0].phys_offset, last);
        assert_eq!(&store.log.record_at(last).unwrap().body[..], b"after");
    }

    #[test]
    fn committed_offsets_survive_a_crash_with_and_without_a_snapshot() {
        use offsets::{encode_commits, OffsetKey};
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(dir.path());
        let key = |q| OffsetKey {
            group: "g".into(),
            topic: "t".into(),
            queue: q,
        };
        let commit = |store: &Store, q: u32, off: u64| {
            store.offsets.apply(&[(key(q), off)]);
            let entry = append::AppendEntry {
                flags: 0,
                born_timestamp: 1,
                properties: std::collections::BTreeMap::new(),
                body: encode_commits(&[(key(q), off)]),
            };
            append(store, OFFSETS_TOPIC, 0, &[entry]);
        };
        {
            let (store, _) = Store::open(&cfg).unwrap();
            commit(&store, 0, 5);
            store.flush_and_checkpoint().unwrap(); // snapshot covers the first commit
            commit(&store, 1, 7);
            commit(&store, 0, 9); // newer than the snapshot
        } // crash: no shutdown
        let (store, _) = Store::open(&cfg).unwrap();
        assert_eq!(store.offsets.get(&key(0)), Some(9));
        assert_eq!(store.offsets.get(&key(1)), Some(7));
        drop(store);
        // And once more, after the recovery checkpoint itself took a snapshot.
        let (store, _) = Store::open(&cfg).unwrap();
        assert_eq!(store.offsets.get(&key(0)), Some(9));
    }

    #[test]
    fn retention_deletes_segments_queue_files_and_index_files_below_the_new_start() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(dir.path());
        let body = "x".repeat(900);
        let (store, _) = Store::open(&cfg).unwrap();
        let batch: Vec<_> = (0..400).map(|i| entry(&body, None, Some(&format!("k{i}")))).collect();
        let stored = append(&store, "t", 0, &batch);
        store.log.flush_to(u64::MAX).unwrap();
        let segments = store.log.segment_count();
        assert!(segments >= 6);
        let infos = store.segment_infos().unwrap();
        assert_eq!(infos.iter().filter(|s| s.active).count(), 1, "only the last is active");
        let cq_files = || std::fs::read_dir(dir.path().join("consumequeue/t/0")).unwrap().count();
        let index_files = || std::fs::read_dir(dir.path().join("index")).unwrap().count();
        let (cq_before, index_before) = (cq_files(), index_files());
        let held = commitlog::read_raw(&store.log, stored[0].phys_offset, 100).unwrap();

        let key = |g: &str| offsets::OffsetKey {
            group: g.into(),
            topic: "t".into(),
            queue: 0,
        };
        store.offsets.apply(&[(key("behind"), 5), (key("ahead"), 390)]);
        let below = 4 * cfg.segment_bytes;
        let out = store.delete_segments_below(below).unwrap();
        assert_eq!(out.segments, 4);
        assert_eq!(out.bytes, 4 * cfg.segment_bytes);
        assert_eq!(out.new_start, below);
        assert_eq!(store.log.segment_count(), segments - 4);
        let first_kept = stored.iter().position(|s| s.phys_offset >= below).unwrap() as u64;
        let cq = store.queues.get("t", 0).unwrap();
        assert_eq!(cq.min_offset(), first_kept);
        assert_eq!(out.queues, vec![("t".to_string(), 0, 0, first_kept)]);
        assert_eq!(out.skipped, vec![("behind".into(), "t".into(), 0, first_kept - 5)]);
        assert!(cq_files() < cq_before && out.consume_queue_files > 0);
        assert!(index_files() < index_before && out.index_files > 0);
        assert_eq!(held.len(), 100, "a read already done stays valid");
        let err = store.log.record_at(stored[0].phys_offset).unwrap_err();
        assert!(err.to_string().contains("moved"), "{err}");
        let e = cq.get(first_kept).unwrap();
        assert_eq!(store.log.record_at(e.phys_offset).unwrap().queue_offset, first_kept);
        assert_eq!(store.delete_segments_below(below).unwrap().segments, 0, "idempotent");
        // Key lookups skip what is gone and find what is kept.
        let (n, _) = store.raw_records_by_key("t", "k399", 1).unwrap();
        assert_eq!(n, 1);
        store.shutdown().unwrap();
        drop(store);

        // A restart keeps the new start and the queue's minimum.
        let (store, _) = Store::open(&cfg).unwrap();
        assert_eq!(store.log.start_offset(), below);
        let cq = store.queues.get("t", 0).unwrap();
        assert_eq!(cq.min_offset(), first_kept);
        assert_eq!(cq.max_offset(), 400);
        let again = append(&store, "t", 0, &[entry("after", None, None)]);
        assert_eq!(again[0].queue_offset, 400);
    }

    #[test]
    fn replay_rebuilds_lost_consume_queues_from_the_commitlog() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(dir.path());
        {
            let (store, _) = Store::open(&cfg).unwrap();
            let batch: Vec<_> = (0..200).map(|i| entry(&format!("m{i}"), None, None)).collect();
            append(&store, "t", 0, &batch);
            store.shutdown().unwrap();
        }
        // Lose the consume queues and the checkpoint entirely.
        std::fs::remove_dir_all(dir.path().join("consumequeue")).unwrap();
        std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
        let (store, _) = Store::open(&cfg).unwrap();
        let cq = store.queues.get("t", 0).unwrap();
        assert_eq!(cq.max_offset(), 200);
        for i in [0u64, 63, 64, 199] {
            let e = cq.get(i).unwrap();
            assert_eq!(store.log.record_at(e.phys_offset).unwrap().queue_offset, i);
        }
        assert!(Store::open(&cfg).is_err(), "the directory stays locked while open");
    }

    #[test]
    fn queues_missing_entries_below_the_checkpoint_are_rebuilt_whatever_it_says() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(dir.path());
        {
            let (store, _) = Store::open(&cfg).unwrap();
            let batch: Vec<_> = (0..100).map(|i| entry(&format!("m{i}"), None, None)).collect();
            append(&store, "t", 0, &batch);
            store.shutdown().unwrap();
            drop(store);
            // One more record that the checkpoint does not cover.
            let (store, _) = Store::open(&cfg).unwrap();
            let mut appender = commitlog::Appender::new(store.log.clone());
            let ctx = append::AppendContext {
                born_host: "127.0.0.1:1".parse().unwrap(),
                store_host: "127.0.0.1:2".parse().unwrap(),
                now_ms: 1,
            };
            let topic: Arc<str> = Arc::from("t");
            append::append_batch(&store, &mut appender, &topic, 0, &[entry("late", None, None)], ctx).unwrap();
            store.log.flush_to(u64::MAX).unwrap();
        }
        // The queue lost entries 40.. (a dispatch that failed after the
        // checkpoint moved past it, as before dispatches were retried).
        let cq_file = dir.path().join("consumequeue/t/0").join(offset_file_name(0));
        let mut bytes = std::fs::read(&cq_file).unwrap();
        bytes[40 * consume_queue::CQ_ENTRY_LEN..64 * consume_queue::CQ_ENTRY_LEN].fill(0);
        std::fs::write(&cq_file, &bytes).unwrap();
        for later in [64, 128] {
            let _ = std::fs::remove_file(dir.path().join("consumequeue/t/0").join(offset_file_name(later)));
        }
        let (store, _) = Store::open(&cfg).unwrap();
        let cq = store.queues.get("t", 0).unwrap();
        assert_eq!(cq.max_offset(), 101);
        for i in [0u64, 40, 63, 64, 99, 100] {
            let e = cq.get(i).unwrap();
            assert_eq!(store.log.record_at(e.phys_offset).unwrap().queue_offset, i);
        }
    }
}
