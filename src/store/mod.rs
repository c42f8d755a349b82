//! Storage: an append-only commitlog of mmap'ed segments, consume queues,
//! a key index and crash recovery.

pub mod index;
pub mod mmap_file;
pub mod record;
