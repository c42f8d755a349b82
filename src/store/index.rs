//! TEMPORARY stub with the agreed API; replaced by the real key index.
use std::io;
use std::path::Path;

/// Stub.
#[derive(Debug)]
pub struct IndexStore;
impl IndexStore {
    /// Stub.
    pub fn open(_dir: &Path, _slots: u32, _entries: u32) -> io::Result<IndexStore> {
        Ok(IndexStore)
    }
    /// Stub.
    pub fn put_keys(&mut self, _topic: &str, _keys: &str, _phys: u64, _ts: u64) -> io::Result<()> {
        Ok(())
    }
    /// Stub.
    pub fn lookup(&self, _topic: &str, _key: &str, _max: usize) -> Vec<u64> {
        Vec::new()
    }
    /// Stub.
    pub fn max_indexed_phys_offset(&self) -> Option<u64> {
        None
    }
    /// Stub.
    pub fn truncate_from(&mut self, _phys: u64) -> io::Result<()> {
        Ok(())
    }
    /// Stub.
    pub fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}
