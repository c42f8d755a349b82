//! Tests of one key-index file: layout, puts and lookups, idempotent
//! re-puts, truncation, crash recovery and corruption handling.

use super::*;

fn new_file(dir: &tempfile::TempDir, slots: u32, entries: u32) -> IndexFile {
    IndexFile::create(dir.path().join("00000000000000000000"), slots, entries).unwrap()
}

#[test]
fn layout_sizes() {
    assert_eq!(file_len(4, 10), Some(64 + 16 + 240));
    assert_eq!(file_len(500_000, 2_000_000), Some(64 + 2_000_000 + 48_000_000));
    let dir = tempfile::tempdir().unwrap();
    let f = new_file(&dir, 4, 10);
    assert_eq!(std::fs::metadata(f.path()).unwrap().len(), 320);
    assert_eq!(&std::fs::read(f.path()).unwrap()[..4], b"FIDX");
}

#[test]
fn put_and_lookup_with_tiny_slot_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = new_file(&dir, 4, 1000);
    for i in 0..300u64 {
        // Key k{i%30}: each key is put 10 times, at growing offsets.
        assert!(f.put(&format!("k{}", i % 30), i * 100, 1_000 + i).unwrap());
    }
    assert_eq!(f.entry_count(), 300);
    assert_eq!(f.used_slots(), 4);
    for k in 0..30u64 {
        let got = f.lookup(&format!("k{k}"), 100);
        let want: Vec<u64> = (0..10).rev().map(|j| (j * 30 + k) * 100).collect();
        assert_eq!(got, want, "key k{k}");
        assert_eq!(f.lookup(&format!("k{k}"), 3), want[..3]);
    }
    assert!(f.lookup("k0", 0).is_empty());
    assert!(f.lookup("absent", 10).is_empty());
    assert_eq!(f.min_phys_offset(), Some(0));
    assert_eq!(f.max_phys_offset(), Some(29_900));
    assert_eq!(f.timestamp_range(), Some((1_000, 1_299)));
}

#[test]
fn full_file_refuses_puts() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = new_file(&dir, 2, 3);
    assert!(f.put("a", 1, 0).unwrap());
    assert!(f.put("b", 2, 0).unwrap());
    assert!(f.put("c", 3, 0).unwrap());
    assert!(f.is_full());
    assert!(!f.put("d", 4, 0).unwrap());
    // A repeat of what is already there is still "indexed".
    assert!(f.put("c", 3, 0).unwrap());
    assert_eq!(f.lookup("d", 10), Vec::<u64>::new());
    assert_eq!(f.entry_count(), 3);
}

#[test]
fn reput_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = new_file(&dir, 4, 100);
    f.put("a", 10, 0).unwrap();
    f.put("b", 10, 0).unwrap();
    f.put("a", 20, 0).unwrap();
    f.put("b", 20, 0).unwrap();
    let count = f.entry_count();
    f.put("a", 10, 0).unwrap();
    f.put("a", 20, 0).unwrap();
    f.put("b", 20, 0).unwrap();
    assert_eq!(f.entry_count(), count);
    assert_eq!(f.lookup("a", 10), [20, 10]);
    assert_eq!(f.lookup("b", 10), [20, 10]);
}

#[test]
fn colliding_hashes_are_all_candidates() {
    // Two keys with the same 32-bit hash (found by brute force).
    let (k1, k2) = ("key-901258", "key-1540052");
    assert_eq!(key_hash(k1), key_hash(k2));
    assert_eq!(key_hash(k1), 0x2246_fc52, "the on-disk hash must never change");
    let dir = tempfile::tempdir().unwrap();
    let mut f = new_file(&dir, 16, 100);
    f.put(k1, 100, 0).unwrap();
    f.put("other", 150, 0).unwrap();
    f.put(k2, 200, 0).unwrap();
    assert_eq!(f.lookup(k1, 10), [200, 100]);
    assert_eq!(f.lookup(k2, 10), [200, 100]);
    assert_eq!(f.lookup("other", 10), [150]);
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000000000000000000");
    {
        let mut f = IndexFile::create(&path, 8, 100).unwrap();
        for i in 0..50u64 {
            f.put(&format!("k{}", i % 7), i, i + 5).unwrap();
        }
        f.flush().unwrap();
        f.flush().unwrap();
    }
    let f = IndexFile::open(&path).unwrap();
    assert_eq!((f.slots(), f.capacity(), f.entry_count()), (8, 100, 50));
    assert_eq!(f.lookup("k3", 100), [45, 38, 31, 24, 17, 10, 3]);
    assert_eq!(f.max_phys_offset(), Some(49));
    assert_eq!(f.timestamp_range(), Some((5, 54)));
    assert_eq!(
        IndexFile::create(&path, 8, 100).unwrap_err().io_kind(),
        io::ErrorKind::AlreadyExists
    );
}

#[test]
fn truncate_drops_the_tail_and_allows_reindexing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000000000000000000");
    let mut f = IndexFile::create(&path, 4, 100).unwrap();
    for i in 0..40u64 {
        f.put(&format!("k{}", i % 5), i * 10, i).unwrap();
    }
    f.truncate_from(205).unwrap();
    assert_eq!(f.entry_count(), 21);
    assert_eq!(f.max_phys_offset(), Some(200));
    assert_eq!(f.lookup("k0", 100), [200, 150, 100, 50, 0]);
    assert_eq!(f.lookup("k1", 100), [160, 110, 60, 10]);
    // The torn tail is rewritten differently and re-indexed.
    f.put("k1", 210, 99).unwrap();
    assert_eq!(f.lookup("k1", 100), [210, 160, 110, 60, 10]);
    drop(f);
    let mut f = IndexFile::open(&path).unwrap();
    assert_eq!(f.lookup("k1", 100), [210, 160, 110, 60, 10]);
    assert_eq!(f.timestamp_range(), Some((0, 99)));
    // Truncating past the end changes nothing; at 0 empties the file.
    f.truncate_from(1_000).unwrap();
    assert_eq!(f.entry_count(), 22);
    f.truncate_from(0).unwrap();
    assert_eq!(f.entry_count(), 0);
    assert_eq!(f.used_slots(), 0);
    assert!(f.lookup("k0", 10).is_empty());
    assert_eq!(f.max_phys_offset(), None);
}

#[test]
fn interrupted_rebuild_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000000000000000000");
    {
        let mut f = IndexFile::create(&path, 4, 100).unwrap();
        for i in 0..20u64 {
            f.put(&format!("k{}", i % 3), i, 0).unwrap();
        }
        // Simulate a crash midway: state says rebuilding, slots zeroed.
        f.header.state = STATE_REBUILDING;
        f.write_header().unwrap();
        f.file.write_at(HEADER_LEN, &[0u8; 16]).unwrap();
    }
    let f = IndexFile::open(&path).unwrap();
    assert_eq!(f.lookup("k2", 100), [17, 14, 11, 8, 5, 2]);
    let f2 = IndexFile::open(&path).unwrap();
    assert_eq!(f2.header.state, STATE_CONSISTENT);
}

#[test]
fn corrupt_headers_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("00000000000000000000");
    drop(IndexFile::create(&path, 4, 10).unwrap());
    let good = std::fs::read(&path).unwrap();
    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("magic", Box::new(|b| b[0] = 0)),
        ("version", Box::new(|b| b[7] = 9)),
        ("slots", Box::new(|b| b[11] = 5)),
        ("zero slots", Box::new(|b| b[8..12].fill(0))),
        ("count", Box::new(|b| b[19] = 11)),
        ("used", Box::new(|b| b[23] = 5)),
        ("state", Box::new(|b| b[59] = 7)),
        ("short", Box::new(|b| b.truncate(40))),
        ("long", Box::new(|b| b.push(0))),
    ];
    for (what, mutate) in cases {
        let mut bad = good.clone();
        mutate(&mut bad);
        std::fs::write(&path, &bad).unwrap();
        let err = IndexFile::open(&path).unwrap_err();
        assert_eq!(err.io_kind(), io::ErrorKind::InvalidData, "{what}: {err}");
        assert!(err.to_string().contains("00000000000000000000"), "{what}: {err}");
    }
}

#[test]
fn corrupt_chains_end_walks() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = new_file(&dir, 1, 10);
    for i in 0..5u64 {
        f.put("k", i, 0).unwrap();
    }
    // Make entry 3 point at itself and entry 5 (the head) forward.
    let mut e3 = f.entry(3).unwrap();
    e3.prev = 3;
    f.write_entry(3, &e3).unwrap();
    assert_eq!(f.lookup("k", 100), [4, 3, 2]);
    let mut e5 = f.entry(5).unwrap();
    e5.prev = 9;
    f.write_entry(5, &e5).unwrap();
    assert_eq!(f.lookup("k", 100), [4]);
    // A slot pointing past the published entries is an empty chain.
    f.write_slot(0, 7).unwrap();
    assert!(f.lookup("k", 100).is_empty());
    // Puts still work (and start a fresh chain).
    f.put("k", 10, 0).unwrap();
    assert_eq!(f.lookup("k", 100), [10]);
}
