//! The persistent message-key index: find records by `(topic, key)`.
//!
//! Modelled on RocketMQ's index files: each [`IndexFile`] is a fixed-size
//! mmap'ed hash table whose slots head chains of entries (key hash, phys
//! offset, store timestamp, previous entry); see [`mod@file`] for the byte
//! layout. An [`IndexStore`] is a directory of such files, named by their
//! 20-digit zero-padded creation sequence (`00000000000000000000`,
//! `00000000000000000001`, …); a new file is started when the newest is full.
//!
//! Keys are indexed as `topic + "#" + key` (topic names cannot contain `#`),
//! so lookups are per topic. Results are phys offsets of *candidate*
//! records, newest first: different keys can share a 32-bit hash, so the
//! caller reads each record and checks its topic and keys.
//!
//! # Recovery
//!
//! * **Re-indexing is idempotent.** Records are indexed in commitlog order,
//!   so the index only ever grows in phys offset. [`IndexStore::put_keys`]
//!   skips records below [`IndexStore::max_indexed_phys_offset`] (already
//!   indexed); the record *at* that offset may be partly indexed (a crash
//!   between its keys), so its keys are put again and the file skips pairs
//!   it already holds. A repeat can still land in a newer file when a file
//!   filled up between a record's keys; lookups drop such repeats (they are
//!   adjacent, offsets being ordered).
//! * **Truncation rewrites.** [`IndexStore::truncate_from`] deletes files
//!   that start at or past the cut and, in the file that straddles it, drops
//!   the entry tail and rebuilds the slot chains from the remaining entries.
//!   Afterwards the index is as if the cut-off records had never been
//!   indexed, so records later written at the same offsets index normally.

pub mod file;

use std::fs;
use std::path::{Path, PathBuf};

use crate::message::split_keys;
use crate::store::error::{IoContext, StoreError, StoreResult};
use crate::store::mmap_file::sync_parent_dir;

pub use file::{key_hash, IndexFile};

/// Digits in an index file's name.
const NAME_DIGITS: usize = 20;

/// The hash of `topic#key`, built without allocating.
fn topic_key_hash(topic: &str, key: &str) -> u32 {
    file::hash_parts(&[topic.as_bytes(), b"#", key.as_bytes()])
}

/// The index file name for creation sequence `seq`.
fn file_name(seq: u64) -> String {
    format!("{seq:0width$}", width = NAME_DIGITS)
}

/// The creation sequence an index file name stands for, if it is one.
fn parse_name(name: &str) -> Option<u64> {
    if name.len() == NAME_DIGITS && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

/// A directory of [`IndexFile`]s, oldest first.
///
/// Mutations take `&mut self` (the dispatcher is the single writer);
/// [`lookup`](Self::lookup) and [`flush`](Self::flush) take `&self`, so the
/// store can sit behind an `RwLock` and be flushed without blocking lookups.
#[derive(Debug)]
pub struct IndexStore {
    dir: PathBuf,
    slots: u32,
    entries: u32,
    /// (creation sequence, file), ascending.
    files: Vec<(u64, IndexFile)>,
    /// Keys of appended records not indexed yet, which the newest file
    /// has room for ([`reserve`](Self::reserve)).
    reserved: u64,
}

impl IndexStore {
    /// Opens (creating if needed) the index directory `dir` — normally
    /// `<data_dir>/index`. `slots` and `entries` size new files; existing
    /// files keep the geometry they were created with.
    ///
    /// Leftover `*.tmp` files (a creation cut short by a crash) are removed;
    /// other names are ignored. A damaged index file is an error naming it.
    pub fn open(dir: impl AsRef<Path>, slots: u32, entries: u32) -> StoreResult<IndexStore> {
        let dir = dir.as_ref();
        if slots == 0 || entries == 0 || file::file_len(slots, entries).is_none() {
            return Err(StoreError::InvalidArgument(format!(
                "index: {slots} slots and {entries} entries per file is not a usable size"
            )));
        }
        fs::create_dir_all(dir).at("create index directory", dir)?;
        let mut files = Vec::new();
        for dent in fs::read_dir(dir).at("list index directory", dir)? {
            let dent = dent.at("list index directory", dir)?;
            let name = dent.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = parse_name(name) {
                files.push((seq, IndexFile::open(dent.path())?));
            } else if name.ends_with(".tmp") {
                tracing::info!(file = %dent.path().display(), "removing unfinished index file");
                fs::remove_file(dent.path()).at("remove unfinished index file", &dent.path())?;
            }
        }
        files.sort_by_key(|(seq, _)| *seq);
        Ok(IndexStore {
            dir: dir.to_path_buf(),
            slots,
            entries,
            files,
            reserved: 0,
        })
    }

    /// The index directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The index files, oldest first.
    pub fn files(&self) -> impl Iterator<Item = &IndexFile> {
        self.files.iter().map(|(_, f)| f)
    }

    /// Indexes each key in `keys` (a `KEYS` property value: space separated)
    /// under `topic` for the record at `phys_offset`, starting a new file
    /// when the newest is full.
    ///
    /// Records below [`max_indexed_phys_offset`](Self::max_indexed_phys_offset)
    /// count as indexed already and are skipped (see the module docs), so
    /// recovery can replay records freely; offsets must otherwise arrive in
    /// commitlog order.
    pub fn put_keys(&mut self, topic: &str, keys: &str, phys_offset: u64, store_timestamp: u64) -> StoreResult<()> {
        if self.max_indexed_phys_offset().is_some_and(|max| phys_offset < max) {
            return Ok(());
        }
        for key in split_keys(keys) {
            self.put_hash(topic_key_hash(topic, key), phys_offset, store_timestamp)?;
        }
        Ok(())
    }

    /// Promises room for `keys` more keys of records being appended: when
    /// the newest file cannot hold them on top of the keys already
    /// promised, the next file is created (allocated on disk) now. The
    /// commitlog writer calls it before a batch is appended, so a full disk
    /// refuses the batch instead of failing its dispatch after the producer
    /// was answered. Each key indexed afterwards uses up one promise.
    pub fn reserve(&mut self, keys: u64) -> StoreResult<()> {
        while self.room() < self.reserved + keys {
            self.add_file()?;
        }
        self.reserved += keys;
        Ok(())
    }

    /// The file keys go into: the newest file holding entries unless it is
    /// full, else the one after it (files reserved ahead are empty).
    fn writing(&self) -> usize {
        match self.files.iter().rposition(|(_, f)| f.entry_count() > 0) {
            None => 0,
            Some(i) if self.files[i].1.is_full() => i + 1,
            Some(i) => i,
        }
    }

    /// Entries that still fit: in the file being written and the empty
    /// files after it.
    fn room(&self) -> u64 {
        self.files
            .iter()
            .skip(self.writing())
            .map(|(_, f)| u64::from(f.capacity().saturating_sub(f.entry_count())))
            .sum()
    }

    /// Takes back `keys` promised by [`reserve`](Self::reserve) for
    /// records that were not appended after all.
    pub fn cancel_reserved(&mut self, keys: u64) {
        self.reserved = self.reserved.saturating_sub(keys);
    }

    fn put_hash(&mut self, hash: u32, phys_offset: u64, store_timestamp: u64) -> StoreResult<()> {
        self.reserved = self.reserved.saturating_sub(1);
        // From the newest file holding entries, even when full: it skips a
        // pair it already holds (a replayed record).
        let mut at = self.files.iter().rposition(|(_, f)| f.entry_count() > 0).unwrap_or(0);
        let files = self.files.len();
        while let Some((_, f)) = self.files.get_mut(at) {
            if f.put_hash(hash, phys_offset, store_timestamp)? {
                // Half way through the newest file the next one is created
                // here, on the Dispatcher's thread, so that the writer's
                // `reserve` seldom has to; a failure is only logged (the
                // writer then tries itself and refuses the batch).
                if at + 1 == files && f.entry_count() == f.capacity() / 2 {
                    if let Err(e) = self.add_file() {
                        tracing::warn!(error = %e, "cannot create the next index file ahead");
                    }
                }
                return Ok(());
            }
            at += 1;
        }
        // No file yet, or the newest is full: start the next one. (The full
        // one reaches the disk with the next periodic flush.)
        let path = self.add_file()?;
        let fitted = match self.files.last_mut() {
            Some((_, f)) => f.put_hash(hash, phys_offset, store_timestamp)?,
            None => false,
        };
        if fitted {
            Ok(())
        } else {
            Err(StoreError::corrupt("index file", path, "a new file refused an entry"))
        }
    }

    /// Creates the next file (durably, header included: see
    /// [`IndexFile::create`]) and returns its path.
    fn add_file(&mut self) -> StoreResult<PathBuf> {
        let seq = self.files.last().map_or(0, |(s, _)| s + 1);
        let path = self.dir.join(file_name(seq));
        let f = IndexFile::create(&path, self.slots, self.entries)?;
        self.files.push((seq, f));
        Ok(path)
    }

    /// Phys offsets of up to `max` records that may carry `key` in `topic`,
    /// newest first, without repeats. Candidates only: check each record's
    /// topic and keys.
    pub fn lookup(&self, topic: &str, key: &str, max: usize) -> Vec<u64> {
        let hash = topic_key_hash(topic, key);
        let mut out: Vec<u64> = Vec::new();
        for (_, f) in self.files.iter().rev() {
            if out.len() >= max {
                break;
            }
            // One extra: the first hit may repeat the previous file's last.
            for phys in f.lookup_hash(hash, max - out.len() + 1) {
                if out.len() < max && out.last() != Some(&phys) {
                    out.push(phys);
                }
            }
        }
        out
    }

    /// The largest phys offset indexed, if any: recovery re-indexes records
    /// from here on (this record's keys may be incomplete; re-putting them
    /// is harmless).
    pub fn max_indexed_phys_offset(&self) -> Option<u64> {
        self.files.iter().rev().find_map(|(_, f)| f.max_phys_offset())
    }

    /// Forgets every entry for a record at `phys_offset` or beyond (after
    /// the commitlog was cut there): deletes files that start at or past it
    /// and truncates the one that straddles it (see the module docs).
    pub fn truncate_from(&mut self, phys_offset: u64) -> StoreResult<()> {
        let mut i = self.files.len();
        while i > 0 {
            i -= 1;
            // Empty files (created ahead) hold nothing: they go too, and
            // the search goes on.
            match self.files[i].1.min_phys_offset() {
                Some(begin) if begin < phys_offset => {
                    // Older files end before this one begins.
                    return self.files[i].1.truncate_from(phys_offset);
                }
                _ => {
                    let path = self.files[i].1.path().to_path_buf();
                    fs::remove_file(&path).at("remove index file", &path)?;
                    self.files.remove(i);
                    sync_parent_dir(&path)?;
                }
            }
        }
        Ok(())
    }

    /// Drops the oldest files whose entries all point below `log_start`
    /// (the commitlog's new start after retention), never the newest file,
    /// and returns their paths for the caller to delete outside the lock.
    pub fn detach_files_below(&mut self, log_start: u64) -> Vec<PathBuf> {
        let keep_last = self.files.len().saturating_sub(1);
        let n = self.files[..keep_last]
            .iter()
            .take_while(|(_, f)| f.max_phys_offset().is_some_and(|m| m < log_start))
            .count();
        self.files.drain(..n).map(|(_, f)| f.path().to_path_buf()).collect()
    }

    /// Writes every file's modified pages to disk.
    pub fn flush(&self) -> StoreResult<()> {
        self.files.iter().try_for_each(|(_, f)| f.flush())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn keys_are_per_topic_and_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = IndexStore::open(dir.path().join("index"), 4, 1000).unwrap();
        assert_eq!(s.max_indexed_phys_offset(), None);
        assert!(s.lookup("orders", "k1", 10).is_empty());
        s.put_keys("orders", "k1 k2", 0, 1).unwrap();
        s.put_keys("payments", "k1", 100, 2).unwrap();
        s.put_keys("orders", "  k1  ", 200, 3).unwrap();
        s.put_keys("orders", "", 300, 4).unwrap();
        s.put_keys("orders", "k2", 400, 5).unwrap();
        assert_eq!(s.lookup("orders", "k1", 10), [200, 0]);
        assert_eq!(s.lookup("orders", "k2", 10), [400, 0]);
        assert_eq!(s.lookup("payments", "k1", 10), [100]);
        assert_eq!(s.lookup("orders", "k1", 1), [200]);
        assert!(s.lookup("orders", "k1", 0).is_empty());
        assert!(s.lookup("orders", "k3", 10).is_empty());
        assert!(s.lookup("order", "sk1", 10).is_empty());
        assert_eq!(s.max_indexed_phys_offset(), Some(400));
    }

    #[test]
    fn many_keys_with_tiny_slot_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = IndexStore::open(dir.path(), 4, 10_000).unwrap();
        for i in 0..2_000u64 {
            s.put_keys("t", &format!("a{} b{}", i % 100, i % 7), i * 64, i).unwrap();
        }
        for k in 0..100u64 {
            let want: Vec<u64> = (0..20).rev().map(|j| (j * 100 + k) * 64).collect();
            assert_eq!(s.lookup("t", &format!("a{k}"), 1000), want);
        }
        assert_eq!(
            s.lookup("t", "b3", 5),
            [1998 * 64, 1991 * 64, 1984 * 64, 1977 * 64, 1970 * 64]
        );
        assert_eq!(s.files().count(), 1);
    }

    #[test]
    fn reserved_keys_get_a_file_before_they_are_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = IndexStore::open(dir.path(), 2, 5).unwrap();
        s.reserve(3).unwrap();
        assert_eq!(names(dir.path()).len(), 1, "a first file for the first keys");
        s.reserve(3).unwrap();
        assert_eq!(names(dir.path()).len(), 2, "3 + 3 promised do not fit 5");
        // The six keys then go in without creating another file.
        for i in 0..2u64 {
            s.put_keys("t", "a b c", i * 10, i).unwrap();
        }
        assert_eq!(names(dir.path()).len(), 2);
        assert_eq!(s.lookup("t", "a", 10), [10, 0]);
        // Taking a promise back frees its room.
        s.reserve(5).unwrap();
        s.cancel_reserved(5);
        assert_eq!(s.reserved, 0);
    }

    #[test]
    fn rolls_to_new_files_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = IndexStore::open(dir.path(), 2, 5).unwrap();
            // 3 keys per record, 5 entries per file: files fill mid-record.
            for i in 0..10u64 {
                s.put_keys("t", &format!("k{} all x{i}", i % 2), i * 10, i).unwrap();
            }
            s.flush().unwrap();
        }
        assert_eq!(
            names(dir.path()),
            (0..7).map(file_name).collect::<Vec<_>>(),
            "30 entries in files of 5, and the next one created ahead"
        );
        let s = IndexStore::open(dir.path(), 1000, 1000).unwrap();
        assert_eq!(s.files().count(), 7);
        assert!(s.files().all(|f| f.capacity() == 5), "existing geometry kept");
        assert_eq!(s.lookup("t", "all", 100), [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]);
        assert_eq!(s.lookup("t", "all", 4), [90, 80, 70, 60]);
        assert_eq!(s.lookup("t", "k1", 100), [90, 70, 50, 30, 10]);
        assert_eq!(s.lookup("t", "x4", 100), [40]);
        assert_eq!(s.max_indexed_phys_offset(), Some(90));
    }

    #[test]
    fn replaying_records_adds_no_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = IndexStore::open(dir.path(), 2, 4).unwrap();
        for i in 0..6u64 {
            s.put_keys("t", "a b", i * 10, i).unwrap();
        }
        // Recovery replays from an older checkpoint, then carries on.
        for i in 2..8u64 {
            s.put_keys("t", "a b", i * 10, i).unwrap();
        }
        assert_eq!(s.lookup("t", "a", 100), [70, 60, 50, 40, 30, 20, 10, 0]);
        assert_eq!(s.lookup("t", "b", 100), [70, 60, 50, 40, 30, 20, 10, 0]);
        let entries: u32 = s.files().map(|f| f.entry_count()).sum();
        assert_eq!(entries, 16);

        // A record split across a roll, then replayed: "a" lands in the new
        // file again, and lookups still show it once.
        let dir = tempfile::tempdir().unwrap();
        let mut s = IndexStore::open(dir.path(), 2, 3).unwrap();
        s.put_keys("t", "a", 0, 0).unwrap();
        s.put_keys("t", "a", 10, 0).unwrap();
        s.put_keys("t", "a b", 20, 0).unwrap(); // "a" fills file 0, "b" opens file 1
        s.put_keys("t", "a b", 20, 0).unwrap();
        assert_eq!(s.files().count(), 2);
        assert_eq!(s.lookup("t", "a", 100), [20, 10, 0]);
        assert_eq!(s.lookup("t", "a", 2), [20, 10]);
        assert_eq!(s.lookup("t", "b", 100), [20]);
    }

    #[test]
    fn truncate_from_forgets_the_tail_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = IndexStore::open(dir.path(), 2, 4).unwrap();
        for i in 0..10u64 {
            s.put_keys("t", &format!("k x{i}"), i * 100, i).unwrap();
        }
        assert_eq!(s.files().count(), 6, "five full, one ahead");
        s.truncate_from(350).unwrap();
        assert_eq!(names(dir.path()), (0..2).map(file_name).collect::<Vec<_>>());
        assert_eq!(s.max_indexed_phys_offset(), Some(300));
        assert_eq!(s.lookup("t", "k", 100), [300, 200, 100, 0]);
        assert!(s.lookup("t", "x5", 100).is_empty());
        // New records at the same offsets index normally, and survive reopen.
        s.put_keys("t", "k y", 350, 20).unwrap();
        s.put_keys("t", "k y", 500, 21).unwrap();
        drop(s);
        let mut s = IndexStore::open(dir.path(), 2, 4).unwrap();
        assert_eq!(s.lookup("t", "k", 100), [500, 350, 300, 200, 100, 0]);
        assert_eq!(s.lookup("t", "y", 100), [500, 350]);
        assert!(s.lookup("t", "x9", 100).is_empty());
        s.truncate_from(0).unwrap();
        assert!(names(dir.path()).is_empty());
        assert_eq!(s.max_indexed_phys_offset(), None);
        assert!(s.lookup("t", "k", 100).is_empty());
        s.put_keys("t", "k", 0, 0).unwrap();
        assert_eq!(s.lookup("t", "k", 100), [0]);
    }

    #[test]
    fn damaged_files_are_errors_and_tmp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = IndexStore::open(dir.path(), 4, 8).unwrap();
            s.put_keys("t", "k", 1, 1).unwrap();
        }
        fs::write(dir.path().join("00000000000000000001.tmp"), b"half made").unwrap();
        fs::write(dir.path().join("README"), b"ignored").unwrap();
        let s = IndexStore::open(dir.path(), 4, 8).unwrap();
        assert_eq!(s.lookup("t", "k", 10), [1]);
        assert!(!dir.path().join("00000000000000000001.tmp").exists());
        drop(s);

        let path = dir.path().join(file_name(0));
        let mut bytes = fs::read(&path).unwrap();
        bytes[0..4].copy_from_slice(b"JUNK");
        fs::write(&path, &bytes).unwrap();
        let err = IndexStore::open(dir.path(), 4, 8).unwrap_err();
        assert_eq!(err.io_kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("00000000000000000000"), "{err}");

        fs::write(&path, b"short").unwrap();
        assert!(IndexStore::open(dir.path(), 4, 8).is_err());
        assert!(IndexStore::open(dir.path().join("x"), 0, 8).is_err());
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(42), "00000000000000000042");
        assert_eq!(parse_name(&file_name(42)), Some(42));
        assert_eq!(parse_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_name("0000000000000000004"), None);
        assert_eq!(parse_name("0000000000000000004x"), None);
        assert_eq!(parse_name("00000000000000000042.tmp"), None);
    }
}
