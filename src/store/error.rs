//! The store's error type.
//!
//! Every fallible public function of [`crate::store`] returns
//! [`StoreResult`]. A [`StoreError`] says what went wrong in store terms
//! (an I/O call on a named file, damaged data, a poisoned lock, a bad
//! argument, something missing, a locked data directory) and keeps the
//! underlying error as its [`source`](std::error::Error::source).
//!
//! Callers that propagate into [`std::io::Result`] keep using `?`: there is
//! a `From<StoreError> for io::Error` that keeps the message and maps the
//! variant to an [`io::ErrorKind`] (see [`StoreError::io_kind`]).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An operating-system call failed (open, map, allocate, write, sync,
    /// rename, remove, …).
    #[error("cannot {op}{}: {source}", PathSuffix(.path.as_deref()))]
    Io {
        /// What was being done, as a verb phrase ("create segment", "sync").
        op: &'static str,
        /// The file or directory it was done to, when there is one.
        path: Option<PathBuf>,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Data on disk is damaged, inconsistent, or not in a layout this
    /// version reads.
    #[error("{what}{}{}: {detail}", PathSuffix(.path.as_deref()), OffsetSuffix(*.offset))]
    Corrupt {
        /// What is damaged ("index file", "segment", "consume queue", …).
        what: &'static str,
        /// Its file or directory, when known.
        path: Option<PathBuf>,
        /// Where in it the damage was found (a byte offset, or a commitlog
        /// offset for records), when known.
        offset: Option<u64>,
        /// What is wrong.
        detail: String,
    },
    /// A lock guarding shared store state was poisoned by a panic while
    /// held; the state behind it may be half-updated.
    #[error("{0} lock poisoned")]
    Poisoned(&'static str),
    /// The caller asked for something the store cannot do: a range past
    /// the end, an unusable size, a write through a read-only mapping.
    #[error("{0}")]
    InvalidArgument(String),
    /// What was asked for is not stored (no record starts at an offset, no
    /// segment holds it).
    #[error("{0}")]
    NotFound(String),
    /// Another process holds the data directory's lock.
    #[error("data directory {} is locked by another broker (pid {holder})", .dir.display())]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// What the lock file says about its holder (a pid).
        holder: String,
    },
    /// A metadata file (topic table, offsets, checkpoint) could not be
    /// encoded.
    #[error("cannot encode the {what}: {source}")]
    Encode {
        /// What was being encoded ("topic table", "checkpoint", …).
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A send refused because the disk is full (above the refuse
    /// watermark, or short of the space a failed write needed).
    #[error("{0}")]
    DiskFull(#[from] super::disk::DiskFull),
    /// A commitlog offset below the log's start: retention deleted it
    /// (a replica asked for bytes its master no longer has).
    #[error("commitlog offset {offset} was deleted by retention: the commitlog starts at {log_start}")]
    OffsetDeleted {
        /// The offset asked for.
        offset: u64,
        /// The first offset still stored.
        log_start: u64,
    },
    /// A commitlog offset past the end of the log (a replica that claims
    /// more than its master has).
    #[error("commitlog offset {offset} is past the end of the commitlog at {write_pos}")]
    PastLogEnd {
        /// The offset asked for.
        offset: u64,
        /// The end of the log.
        write_pos: u64,
    },
    /// Replicated bytes that do not continue the log: they must be
    /// appended exactly at its end.
    #[error("replicated bytes for commitlog offset {at} do not continue the commitlog, which ends at {write_pos}")]
    NotAtLogEnd {
        /// Where the bytes were to be appended.
        at: u64,
        /// The end of the log.
        write_pos: u64,
    },
}

/// The broad class of a [`StoreError`]: stable, for callers that branch on
/// what went wrong without matching every field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// [`StoreError::Io`].
    Io,
    /// [`StoreError::Corrupt`].
    Corrupt,
    /// [`StoreError::Poisoned`].
    Poisoned,
    /// [`StoreError::InvalidArgument`].
    InvalidArgument,
    /// [`StoreError::NotFound`].
    NotFound,
    /// [`StoreError::Locked`].
    Locked,
    /// [`StoreError::Encode`].
    Encode,
    /// [`StoreError::DiskFull`].
    DiskFull,
    /// [`StoreError::OffsetDeleted`].
    OffsetDeleted,
    /// [`StoreError::PastLogEnd`].
    PastLogEnd,
    /// [`StoreError::NotAtLogEnd`].
    NotAtLogEnd,
}

impl StoreError {
    /// An I/O failure of `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> StoreError {
        StoreError::Io {
            op,
            path: Some(path.into()),
            source,
        }
    }

    /// Damaged data in `what` at `path`.
    pub fn corrupt(what: &'static str, path: impl Into<PathBuf>, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            what,
            path: Some(path.into()),
            offset: None,
            detail: detail.into(),
        }
    }

    /// The broad class of this error.
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            StoreError::Io { .. } => StoreErrorKind::Io,
            StoreError::Corrupt { .. } => StoreErrorKind::Corrupt,
            StoreError::Poisoned(_) => StoreErrorKind::Poisoned,
            StoreError::InvalidArgument(_) => StoreErrorKind::InvalidArgument,
            StoreError::NotFound(_) => StoreErrorKind::NotFound,
            StoreError::Locked { .. } => StoreErrorKind::Locked,
            StoreError::Encode { .. } => StoreErrorKind::Encode,
            StoreError::DiskFull(_) => StoreErrorKind::DiskFull,
            StoreError::OffsetDeleted { .. } => StoreErrorKind::OffsetDeleted,
            StoreError::PastLogEnd { .. } => StoreErrorKind::PastLogEnd,
            StoreError::NotAtLogEnd { .. } => StoreErrorKind::NotAtLogEnd,
        }
    }

    /// True when the file system had no room: a refusal by the disk
    /// guard, or an operating-system `ENOSPC`/`EDQUOT`.
    pub fn is_no_space(&self) -> bool {
        match self {
            StoreError::DiskFull(_) => true,
            StoreError::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
                    || source.kind() == io::ErrorKind::StorageFull
            }
            _ => false,
        }
    }

    /// The [`io::ErrorKind`] this error becomes as an [`io::Error`]: the
    /// operating system's for [`StoreError::Io`], `InvalidData` for damaged
    /// data, `InvalidInput` for bad arguments and offsets past or not at
    /// the log's end, `NotFound` (also for offsets retention deleted),
    /// `WouldBlock` for a locked directory, `Other` otherwise.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            StoreError::Io { source, .. } => source.kind(),
            StoreError::Corrupt { .. } => io::ErrorKind::InvalidData,
            StoreError::InvalidArgument(_) => io::ErrorKind::InvalidInput,
            StoreError::NotFound(_) | StoreError::OffsetDeleted { .. } => io::ErrorKind::NotFound,
            StoreError::PastLogEnd { .. } | StoreError::NotAtLogEnd { .. } => io::ErrorKind::InvalidInput,
            StoreError::Locked { .. } => io::ErrorKind::WouldBlock,
            StoreError::DiskFull(_) => io::ErrorKind::StorageFull,
            StoreError::Poisoned(_) | StoreError::Encode { .. } => io::ErrorKind::Other,
        }
    }
}

impl From<StoreError> for io::Error {
    fn from(e: StoreError) -> io::Error {
        io::Error::new(e.io_kind(), e)
    }
}

/// Adds what was being done (and to which path) to an [`io::Result`].
pub(crate) trait IoContext<T> {
    /// Fails with [`StoreError::Io`] naming `op` and `path`.
    fn at(self, op: &'static str, path: &Path) -> StoreResult<T>;
    /// Fails with [`StoreError::Io`] naming `op` only.
    fn during(self, op: &'static str) -> StoreResult<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: &'static str, path: &Path) -> StoreResult<T> {
        self.map_err(|source| StoreError::io(op, path, source))
    }

    fn during(self, op: &'static str) -> StoreResult<T> {
        self.map_err(|source| StoreError::Io { op, path: None, source })
    }
}

/// Displays ` <path>` when there is a path.
struct PathSuffix<'a>(Option<&'a Path>);

impl fmt::Display for PathSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, " {}", p.display()),
            None => Ok(()),
        }
    }
}

/// Displays ` at offset <n>` when there is an offset.
struct OffsetSuffix(Option<u64>);

impl fmt::Display for OffsetSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(o) => write!(f, " at offset {o}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_operation_path_and_cause() {
        let e = StoreError::io("create segment", "/d/commitlog/0", io::ErrorKind::StorageFull.into());
        assert!(
            e.to_string().starts_with("cannot create segment /d/commitlog/0: "),
            "{e}"
        );
        assert_eq!(e.kind(), StoreErrorKind::Io);
        assert_eq!(e.io_kind(), io::ErrorKind::StorageFull);
        let e = Err::<(), _>(io::Error::from(io::ErrorKind::BrokenPipe))
            .during("start the flusher thread")
            .unwrap_err();
        assert!(e.to_string().starts_with("cannot start the flusher thread: "), "{e}");

        let e = StoreError::corrupt("index file", "/d/index/0", "bad magic 0x00000000");
        assert_eq!(e.to_string(), "index file /d/index/0: bad magic 0x00000000");
        let e = StoreError::Corrupt {
            what: "commitlog record",
            path: None,
            offset: Some(42),
            detail: "truncated".into(),
        };
        assert_eq!(e.to_string(), "commitlog record at offset 42: truncated");
        assert_eq!(StoreError::Poisoned("index").to_string(), "index lock poisoned");
        let e = StoreError::Locked {
            dir: "/d".into(),
            holder: "12".into(),
        };
        assert_eq!(e.to_string(), "data directory /d is locked by another broker (pid 12)");
    }

    #[test]
    fn converts_to_io_errors_keeping_message_and_kind() {
        let cases = [
            (StoreError::corrupt("segment", "/s", "x"), io::ErrorKind::InvalidData),
            (StoreError::InvalidArgument("x".into()), io::ErrorKind::InvalidInput),
            (StoreError::NotFound("x".into()), io::ErrorKind::NotFound),
            (StoreError::Poisoned("x"), io::ErrorKind::Other),
            (
                StoreError::io("read", "/p", io::ErrorKind::PermissionDenied.into()),
                io::ErrorKind::PermissionDenied,
            ),
        ];
        for (e, kind) in cases {
            let text = e.to_string();
            let io: io::Error = e.into();
            assert_eq!(io.kind(), kind, "{text}");
            assert_eq!(io.to_string(), text);
        }
    }
}
