use std::collections::BTreeMap;
use std::path::Path;

use tempfile::TempDir;

use super::apply::check_chunk;
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

/// A master (in its own directory) holding `batches` batches of round
/// `round` (with offset commits when `commits`), and an empty slave with
/// its appender.
fn pair(round: &str, batches: usize, commits: bool) -> (TempDir, TempDir, Store, Store, Appender) {
    let (mdir, sdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = open(mdir.path());
    produce(&master, round, batches, commits);
    let slave = open(sdir.path());
    let app = Appender::new(slave.log.clone());
    (mdir, sdir, master, slave, app)
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
    let (_mdir, _sdir, master, slave, mut app) = pair("one", 9, false);
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
    let (_mdir, sdir, master, slave, mut app) = pair("one", 40, true);
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
    let (_mdir, sdir, master, slave, mut app) = pair("common", 30, true);
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
    let (_mdir, sdir, master, slave, mut app) = pair("one", 80, true);
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
    let (_mdir, sdir, master, slave, mut app) = pair("one", 80, true);
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
    let (_mdir, sdir, master, slave, mut app) = pair("one", 12, true);
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
