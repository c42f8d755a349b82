//! Slave side: checking a replicated chunk, planning what it does to the
//! consume queues, and appending it (see the parent module).

use super::*;

/// A record of replicated bytes, checked.
pub(super) struct Checked {
    /// Its log offset.
    pub(super) pos: u64,
    /// Decoded; `None` for a CRC-valid record that does not decode, which
    /// is stored (the log stays identical) but not dispatched, as recovery
    /// does.
    pub(super) rec: Option<StoredRecord>,
}

/// Checks replicated bytes `chunk` meant for log offset `at` (see the
/// module documentation for what a chunk may hold); returns their records
/// and the write position after them.
pub(super) fn check_chunk(at: u64, chunk: &Bytes, segment_bytes: u64) -> StoreResult<(Vec<Checked>, u64)> {
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
}

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
