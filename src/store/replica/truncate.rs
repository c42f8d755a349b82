//! Slave side: starting an empty log where the master's starts, and cutting
//! a diverged log back (see the parent module).

use super::*;

impl Store {
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
