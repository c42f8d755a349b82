//! The checkpoint: how far consume queues and the key index are known to be
//! durable, so recovery replays only the commitlog past it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{StoreError, StoreResult};
use super::fsutil::write_atomic;

/// Contents of `<data_dir>/checkpoint`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every record below this commitlog offset has its consume-queue and
    /// index entries on disk.
    pub dispatched_offset: u64,
}

/// Reads and writes the checkpoint file.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    path: PathBuf,
}

impl CheckpointFile {
    /// The checkpoint of a data directory.
    pub fn new(data_dir: &Path) -> CheckpointFile {
        CheckpointFile {
            path: data_dir.join("checkpoint"),
        }
    }

    /// The stored checkpoint; a missing or unreadable file means "replay
    /// everything" (safe, only slower), never an error.
    pub fn load(&self) -> Checkpoint {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %self.path.display(), error = %e, "unreadable checkpoint; replaying the whole commitlog");
                Checkpoint::default()
            }),
            Err(_) => Checkpoint::default(),
        }
    }

    /// Stores a checkpoint atomically.
    pub fn store(&self, cp: Checkpoint) -> StoreResult<()> {
        let bytes = serde_json::to_vec(&cp).map_err(|source| StoreError::Encode {
            what: "checkpoint",
            source,
        })?;
        write_atomic(&self.path, &bytes)
    }
}
