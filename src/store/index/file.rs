//! One key-index file: a hash table of chained entries in a [`MappedFile`].
//!
//! # Layout (all integers big-endian)
//!
//! ```text
//! header   64 bytes
//!   0  u32  magic 0x4649_4458 ("FIDX")
//!   4  u32  version (1)
//!   8  u32  slot count S
//!  12  u32  entry capacity E
//!  16  u32  entries used N (entries 1..=N are valid)
//!  20  u32  slots in use (non-empty slots)
//!  24  u64  begin phys offset (first entry's)
//!  32  u64  end phys offset (last entry's; the largest)
//!  40  u64  begin store timestamp (smallest, ms)
//!  48  u64  end store timestamp (largest, ms)
//!  56  u32  state: 0 consistent, 1 slot rebuild in progress
//!  60  u32  reserved (0)
//! slots    S × u32 at 64: 1-based number of the newest entry whose hash
//!          falls in the slot (hash % S), 0 = empty
//! entries  E × 24 bytes at 64 + 4·S; entry n (1-based) at 64 + 4·S + 24·(n−1):
//!   0  u32  key hash
//!   4  u32  previous entry number in the slot's chain (0 = end)
//!   8  u64  phys offset of the record
//!  16  u64  store timestamp (ms)
//! ```
//!
//! The file is `64 + 4·S + 24·E` bytes, fixed at creation; the geometry is
//! read back from the header, so changing the configured sizes only affects
//! new files.
//!
//! # Invariants
//!
//! Entries are appended in nondecreasing phys-offset order (puts below the
//! largest indexed offset are ignored), and an entry's `prev` is always a
//! smaller entry number. So a chain lists offsets newest (largest) first,
//! walks terminate after at most `N` steps even on corrupt data (a `prev`
//! that does not decrease ends the walk), and truncation by offset removes a
//! suffix of the entry array.
//!
//! A put writes the entry, then the header (publishing it in `N`), then the
//! slot, so a process crash at any point leaves at worst an unreachable
//! entry, never a slot pointing past `N`.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::store::error::{StoreError, StoreResult};
use crate::store::mmap_file::MappedFile;

/// Magic of a key-index file ("FIDX").
pub const INDEX_MAGIC: u32 = 0x4649_4458;
/// Layout version written by this code.
pub const INDEX_VERSION: u32 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 64;
/// Bytes of one hash slot.
pub const SLOT_LEN: usize = 4;
/// Bytes of one entry.
pub const ENTRY_LEN: usize = 24;

const STATE_CONSISTENT: u32 = 0;
const STATE_REBUILDING: u32 = 1;

/// The stable on-disk hash of an index key: FNV-1a (32-bit) of its bytes,
/// finished with the murmur3 mixer so `hash % slots` spreads well.
pub fn key_hash(key: &str) -> u32 {
    hash_parts(&[key.as_bytes()])
}

/// [`key_hash`] of the concatenation of `parts`, without building it.
pub(crate) fn hash_parts(parts: &[&[u8]]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    // murmur3 fmix32: a bijection, so it adds no collisions.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Size in bytes of an index file with this geometry, if addressable.
pub fn file_len(slots: u32, entries: u32) -> Option<usize> {
    (slots as usize)
        .checked_mul(SLOT_LEN)?
        .checked_add((entries as usize).checked_mul(ENTRY_LEN)?)?
        .checked_add(HEADER_LEN)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    slots: u32,
    capacity: u32,
    count: u32,
    used_slots: u32,
    begin_phys: u64,
    end_phys: u64,
    begin_ts: u64,
    end_ts: u64,
    state: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&INDEX_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&INDEX_VERSION.to_be_bytes());
        b[8..12].copy_from_slice(&self.slots.to_be_bytes());
        b[12..16].copy_from_slice(&self.capacity.to_be_bytes());
        b[16..20].copy_from_slice(&self.count.to_be_bytes());
        b[20..24].copy_from_slice(&self.used_slots.to_be_bytes());
        b[24..32].copy_from_slice(&self.begin_phys.to_be_bytes());
        b[32..40].copy_from_slice(&self.end_phys.to_be_bytes());
        b[40..48].copy_from_slice(&self.begin_ts.to_be_bytes());
        b[48..56].copy_from_slice(&self.end_ts.to_be_bytes());
        b[56..60].copy_from_slice(&self.state.to_be_bytes());
        b
    }

    /// Parses and checks a header against the file's length; errors name
    /// the file at `path`.
    fn decode(b: &[u8], actual_len: usize, path: &Path) -> StoreResult<Header> {
        let bad = |detail: String| corrupt(path, detail);
        if b.len() < HEADER_LEN {
            return Err(bad(format!("file is {actual_len} bytes, shorter than a header")));
        }
        let magic = be32(b, 0);
        if magic != INDEX_MAGIC {
            return Err(bad(format!("bad magic {magic:#010x}")));
        }
        let version = be32(b, 4);
        if version != INDEX_VERSION {
            return Err(bad(format!("unsupported version {version}")));
        }
        let h = Header {
            slots: be32(b, 8),
            capacity: be32(b, 12),
            count: be32(b, 16),
            used_slots: be32(b, 20),
            begin_phys: be64(b, 24),
            end_phys: be64(b, 32),
            begin_ts: be64(b, 40),
            end_ts: be64(b, 48),
            state: be32(b, 56),
        };
        if h.slots == 0 || h.capacity == 0 {
            return Err(bad(format!(
                "{} slots and {} entries: both must be positive",
                h.slots, h.capacity
            )));
        }
        if file_len(h.slots, h.capacity) != Some(actual_len) {
            return Err(bad(format!(
                "file is {actual_len} bytes, but {} slots and {} entries need {:?}",
                h.slots,
                h.capacity,
                file_len(h.slots, h.capacity)
            )));
        }
        if h.count > h.capacity {
            return Err(bad(format!("entry count {} exceeds capacity {}", h.count, h.capacity)));
        }
        if h.used_slots > h.slots {
            return Err(bad(format!(
                "used slot count {} exceeds slot count {}",
                h.used_slots, h.slots
            )));
        }
        if h.state > STATE_REBUILDING {
            return Err(bad(format!("unknown state {}", h.state)));
        }
        if h.count > 0 && h.begin_phys > h.end_phys {
            return Err(bad(format!(
                "begin phys offset {} is past end phys offset {}",
                h.begin_phys, h.end_phys
            )));
        }
        Ok(h)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    hash: u32,
    prev: u32,
    phys: u64,
    ts: u64,
}

impl Entry {
    fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..4].copy_from_slice(&self.hash.to_be_bytes());
        b[4..8].copy_from_slice(&self.prev.to_be_bytes());
        b[8..16].copy_from_slice(&self.phys.to_be_bytes());
        b[16..24].copy_from_slice(&self.ts.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Entry {
        Entry {
            hash: be32(b, 0),
            prev: be32(b, 4),
            phys: be64(b, 8),
            ts: be64(b, 16),
        }
    }
}

/// Reads a big-endian u32 at `at`; callers pass slices long enough.
fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

/// Reads a big-endian u64 at `at`; callers pass slices long enough.
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Damage found in the index file at `path`.
fn corrupt(path: &Path, detail: String) -> StoreError {
    StoreError::corrupt("index file", path, detail)
}

/// One key-index file (see the module documentation for its layout).
///
/// Mutations take `&mut self` (a single writer); lookups and flushes take
/// `&self`, so the file can sit behind an `RwLock`.
#[derive(Debug)]
pub struct IndexFile {
    file: MappedFile,
    /// Write-through copy of the on-disk header.
    header: Header,
    /// Set by puts, cleared by [`IndexFile::flush`], so flushing a file that
    /// has not changed is free.
    dirty: AtomicBool,
}

impl IndexFile {
    /// Creates a new, empty index file at `path` (which must not exist) with
    /// `slots` hash slots and room for `entries` entries.
    pub fn create(path: impl AsRef<Path>, slots: u32, entries: u32) -> StoreResult<IndexFile> {
        let path = path.as_ref();
        if slots == 0 || entries == 0 {
            return Err(StoreError::InvalidArgument(format!(
                "index file {}: slots and entries must be positive",
                path.display()
            )));
        }
        let len = file_len(slots, entries).ok_or_else(|| {
            StoreError::InvalidArgument(format!(
                "index file {}: {slots} slots and {entries} entries are too large",
                path.display()
            ))
        })?;
        if path.exists() {
            return Err(StoreError::io(
                "create index file",
                path,
                io::Error::new(io::ErrorKind::AlreadyExists, "it already exists"),
            ));
        }
        let file = MappedFile::create_or_open(path, len)?;
        let mut index = IndexFile {
            file,
            header: Header {
                slots,
                capacity: entries,
                count: 0,
                used_slots: 0,
                begin_phys: 0,
                end_phys: 0,
                begin_ts: 0,
                end_ts: 0,
                state: STATE_CONSISTENT,
            },
            dirty: AtomicBool::new(false),
        };
        index.write_header()?;
        // Durable right away: a file whose header never reached the disk
        // would read back as all zeroes and be refused as corrupt.
        index.file.flush_range(0, HEADER_LEN)?;
        Ok(index)
    }

    /// Opens an existing index file, checking its header; finishes a slot
    /// rebuild that a crash interrupted.
    pub fn open(path: impl AsRef<Path>) -> StoreResult<IndexFile> {
        let path = path.as_ref();
        let file = MappedFile::open_existing(path)?;
        let len = file.len();
        let bytes = file.read_at(0, HEADER_LEN.min(len))?;
        let header = Header::decode(bytes, len, path)?;
        let mut index = IndexFile {
            file,
            header,
            dirty: AtomicBool::new(false),
        };
        if header.state == STATE_REBUILDING {
            tracing::warn!(file = %path.display(), "finishing an interrupted index slot rebuild");
            index.rebuild_slots()?;
        }
        Ok(index)
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Number of hash slots.
    pub fn slots(&self) -> u32 {
        self.header.slots
    }

    /// Entry capacity.
    pub fn capacity(&self) -> u32 {
        self.header.capacity
    }

    /// Entries in use.
    pub fn entry_count(&self) -> u32 {
        self.header.count
    }

    /// Hash slots that are not empty.
    pub fn used_slots(&self) -> u32 {
        self.header.used_slots
    }

    /// True when no more entries fit.
    pub fn is_full(&self) -> bool {
        self.header.count >= self.header.capacity
    }

    /// Phys offset of the first entry, if any.
    pub fn min_phys_offset(&self) -> Option<u64> {
        (self.header.count > 0).then_some(self.header.begin_phys)
    }

    /// Largest phys offset indexed here, if any.
    pub fn max_phys_offset(&self) -> Option<u64> {
        (self.header.count > 0).then_some(self.header.end_phys)
    }

    /// Smallest and largest store timestamps indexed here, if any.
    pub fn timestamp_range(&self) -> Option<(u64, u64)> {
        (self.header.count > 0).then_some((self.header.begin_ts, self.header.end_ts))
    }

    /// Indexes `key` for the record at `phys_offset`. Returns `Ok(false)`
    /// when the file is full (nothing written).
    ///
    /// Idempotent: a put below [`max_phys_offset`](Self::max_phys_offset) is
    /// taken as already indexed and ignored, and so is a repeated
    /// (key hash, offset) pair at the largest offset; both return `Ok(true)`.
    pub fn put(&mut self, key: &str, phys_offset: u64, store_timestamp: u64) -> StoreResult<bool> {
        self.put_hash(key_hash(key), phys_offset, store_timestamp)
    }

    /// [`put`](Self::put) of an already hashed key.
    pub(crate) fn put_hash(&mut self, hash: u32, phys_offset: u64, store_timestamp: u64) -> StoreResult<bool> {
        let h = self.header;
        // Below the largest offset: indexed already. At it: maybe (a repeat).
        if h.count > 0
            && (phys_offset < h.end_phys || (phys_offset == h.end_phys && self.chain_has(hash, phys_offset)?))
        {
            return Ok(true);
        }
        if self.is_full() {
            return Ok(false);
        }
        let slot = hash % h.slots;
        let head = self.slot(slot)?;
        // A head past the published entries can only be corruption: start
        // a fresh chain rather than link to garbage.
        let prev = if head <= h.count { head } else { 0 };
        let n = h.count + 1;
        self.write_entry(
            n,
            &Entry {
                hash,
                prev,
                phys: phys_offset,
                ts: store_timestamp,
            },
        )?;
        let hdr = &mut self.header;
        if hdr.count == 0 {
            hdr.begin_phys = phys_offset;
            hdr.begin_ts = store_timestamp;
            hdr.end_ts = store_timestamp;
        }
        hdr.count = n;
        hdr.end_phys = phys_offset;
        hdr.begin_ts = hdr.begin_ts.min(store_timestamp);
        hdr.end_ts = hdr.end_ts.max(store_timestamp);
        if prev == 0 {
            hdr.used_slots = (hdr.used_slots + 1).min(hdr.slots);
        }
        // Entry, then header, then slot: see the module docs.
        self.write_header()?;
        self.write_slot(slot, n)?;
        *self.dirty.get_mut() = true;
        Ok(true)
    }

    /// Whether the chain of `hash`'s slot already holds (`hash`, `phys`);
    /// only the chain's head entries at offset `phys` need looking at.
    fn chain_has(&self, hash: u32, phys: u64) -> StoreResult<bool> {
        let mut cur = self.slot(hash % self.header.slots)?;
        while cur != 0 && cur <= self.header.count {
            let e = self.entry(cur)?;
            if e.phys != phys {
                break;
            }
            if e.hash == hash {
                return Ok(true);
            }
            if e.prev >= cur {
                break;
            }
            cur = e.prev;
        }
        Ok(false)
    }

    /// Phys offsets of up to `max` records indexed under `key`, newest
    /// first, without repeats. These are candidates: different keys can
    /// share a hash, so callers must check the records' real keys.
    pub fn lookup(&self, key: &str, max: usize) -> Vec<u64> {
        self.lookup_hash(key_hash(key), max)
    }

    /// [`lookup`](Self::lookup) of an already hashed key.
    pub(crate) fn lookup_hash(&self, hash: u32, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        if max == 0 || self.header.count == 0 {
            return out;
        }
        let mut cur = match self.slot(hash % self.header.slots) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "index lookup failed");
                return out;
            }
        };
        // Entry numbers strictly decrease along a chain, so this ends within
        // `count` steps whatever the file holds.
        while cur != 0 && cur <= self.header.count && out.len() < max {
            let e = match self.entry(cur) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "index lookup failed");
                    break;
                }
            };
            // Offsets are nonincreasing along a chain: repeats are adjacent.
            if e.hash == hash && out.last() != Some(&e.phys) {
                out.push(e.phys);
            }
            if e.prev >= cur {
                tracing::warn!(file = %self.path().display(), entry = cur, "index chain does not descend; stopping");
                break;
            }
            cur = e.prev;
        }
        out
    }

    /// Forgets every entry whose phys offset is `phys_offset` or more (and
    /// any entry after one whose offset goes backwards, which only
    /// corruption produces), then rebuilds the hash slots from the entries
    /// that remain.
    ///
    /// Rebuilding rather than unlinking keeps this correct even if slot
    /// pages were not flushed before a crash; a crash during the rebuild is
    /// finished by [`open`](Self::open).
    pub fn truncate_from(&mut self, phys_offset: u64) -> StoreResult<()> {
        if self.header.count == 0 || self.header.end_phys < phys_offset {
            return Ok(());
        }
        let mut keep = 0u32;
        let mut last = 0u64;
        while keep < self.header.count {
            let e = self.entry(keep + 1)?;
            if e.phys >= phys_offset || e.phys < last {
                break;
            }
            last = e.phys;
            keep += 1;
        }
        self.header.count = keep;
        self.rebuild_slots()
    }

    /// Relinks the slots and chains from entries `1..=count` and
    /// recomputes the header's summary fields, under the "rebuilding" state
    /// so a crash midway is finished on the next open.
    fn rebuild_slots(&mut self) -> StoreResult<()> {
        self.header.state = STATE_REBUILDING;
        self.write_header()?;
        self.file.flush_range(0, HEADER_LEN)?;

        let slots_len = self.header.slots as usize * SLOT_LEN;
        let zeroes = vec![0u8; slots_len.min(1 << 16)];
        let mut pos = 0;
        while pos < slots_len {
            let n = (slots_len - pos).min(zeroes.len());
            self.file.write_at(HEADER_LEN + pos, &zeroes[..n])?;
            pos += n;
        }

        let mut h = self.header;
        h.used_slots = 0;
        for n in 1..=h.count {
            let mut e = self.entry(n)?;
            let slot = e.hash % h.slots;
            e.prev = self.slot(slot)?;
            if e.prev == 0 {
                h.used_slots += 1;
            }
            self.write_entry(n, &e)?;
            self.write_slot(slot, n)?;
            if n == 1 {
                h.begin_phys = e.phys;
                h.begin_ts = e.ts;
                h.end_ts = e.ts;
            }
            h.end_phys = e.phys;
            h.begin_ts = h.begin_ts.min(e.ts);
            h.end_ts = h.end_ts.max(e.ts);
        }
        if h.count == 0 {
            (h.begin_phys, h.end_phys, h.begin_ts, h.end_ts) = (0, 0, 0, 0);
        }
        // Slots and entries must be on disk before the header says they are
        // consistent.
        self.file.flush()?;
        h.state = STATE_CONSISTENT;
        self.header = h;
        self.write_header()?;
        self.file.flush_range(0, HEADER_LEN)?;
        Ok(())
    }

    /// Writes modified pages to disk (`msync`), if there are any.
    pub fn flush(&self) -> StoreResult<()> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.file.flush() {
                self.dirty.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    fn write_header(&mut self) -> StoreResult<()> {
        let bytes = self.header.encode();
        self.file.write_at(0, &bytes)
    }

    fn slot_pos(slot: u32) -> usize {
        HEADER_LEN + slot as usize * SLOT_LEN
    }

    fn slot(&self, slot: u32) -> StoreResult<u32> {
        Ok(be32(self.file.read_at(Self::slot_pos(slot), SLOT_LEN)?, 0))
    }

    fn write_slot(&mut self, slot: u32, n: u32) -> StoreResult<()> {
        self.file.write_at(Self::slot_pos(slot), &n.to_be_bytes())
    }

    /// Position of 1-based entry `n` (callers check `1 <= n <= capacity`;
    /// the mapping's bounds check catches anything else).
    fn entry_pos(&self, n: u32) -> usize {
        HEADER_LEN + self.header.slots as usize * SLOT_LEN + (n.saturating_sub(1) as usize) * ENTRY_LEN
    }

    fn entry(&self, n: u32) -> StoreResult<Entry> {
        Ok(Entry::decode(self.file.read_at(self.entry_pos(n), ENTRY_LEN)?))
    }

    fn write_entry(&mut self, n: u32, e: &Entry) -> StoreResult<()> {
        let pos = self.entry_pos(n);
        self.file.write_at(pos, &e.encode())
    }
}

/// What the offline checker (`store::verify`) reads from an index file's
/// bytes: its header, checked as [`IndexFile::open`] checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexFileFacts {
    /// Entries in use.
    pub count: u32,
    /// Entry capacity.
    pub capacity: u32,
    /// A slot rebuild was interrupted (opening the file finishes it).
    pub rebuilding: bool,
    /// The phys offset of each entry in use, in entry order.
    pub phys_offsets: Vec<u64>,
}

/// Parses the index file bytes `data` (read from `path`) without opening
/// it for writing: the header is checked as [`IndexFile::open`] does.
pub(crate) fn verify_read(data: &[u8], path: &Path) -> StoreResult<IndexFileFacts> {
    let h = Header::decode(&data[..HEADER_LEN.min(data.len())], data.len(), path)?;
    let entries_at = HEADER_LEN + h.slots as usize * SLOT_LEN;
    let mut phys_offsets = Vec::with_capacity(h.count as usize);
    for n in 0..h.count as usize {
        let at = entries_at + n * ENTRY_LEN;
        let b = data
            .get(at..at + ENTRY_LEN)
            .ok_or_else(|| corrupt(path, format!("entry {} lies past the end of the file", n + 1)))?;
        phys_offsets.push(Entry::decode(b).phys);
    }
    Ok(IndexFileFacts {
        count: h.count,
        capacity: h.capacity,
        rebuilding: h.state == STATE_REBUILDING,
        phys_offsets,
    })
}

#[cfg(test)]
mod tests;
