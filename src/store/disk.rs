//! How full the data directory's file system is, and whether sends are
//! accepted: the disk watermarks (RocketMQ's `diskMaxUsedSpaceRatio` and
//! its forced-cleaning and write-refusing thresholds).
//!
//! * [`probe`] reads the file system's size and free space (`statvfs`).
//! * [`Watermarks::level`] classifies a reading: above `clean` the retention
//!   cleaner deletes expired segments at once (whatever `delete_when` says),
//!   above `force_clean` it deletes the oldest segments even if they have
//!   not expired, above `refuse` sends are refused.
//! * [`DiskGuard`] is the shared state: the last reading, and whether sends
//!   are refused — because usage is above the refuse ratio, or because a
//!   write failed for want of space (`ENOSPC`). Sends are accepted again by
//!   themselves once a new reading shows the space is back; a refused send
//!   takes a fresh reading (at most every [`REPROBE_EVERY`]), so that needs
//!   no cleaner tick.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::error::{StoreError, StoreResult};
use crate::codec::human_bytes;

/// A refused send re-reads the disk usage at most this often.
pub const REPROBE_EVERY: Duration = Duration::from_millis(200);

/// Space on the file system holding the data directory, counted as `df`
/// does: blocks reserved for root (and any other space neither used nor
/// available to the broker) count neither as used nor as free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskUsage {
    /// Space the broker can use: used plus free, bytes.
    pub total_bytes: u64,
    /// Bytes an unprivileged process may still allocate.
    pub free_bytes: u64,
}

impl DiskUsage {
    /// Bytes in use (`total - free`).
    pub fn used_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.free_bytes)
    }

    /// Used share, 0.0..=1.0 (0 for an empty reading): `df`'s `Use%`.
    pub fn used_ratio(&self) -> f64 {
        if self.total_bytes == 0 {
            return 0.0;
        }
        self.used_bytes() as f64 / self.total_bytes as f64
    }
}

/// Reads the size and free space of the file system holding `path`.
pub fn probe(path: &Path) -> StoreResult<DiskUsage> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| StoreError::InvalidArgument(format!("{}: path holds a NUL byte", path.display())))?;
    // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let ret = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
    if ret != 0 {
        return Err(StoreError::io(
            "read the disk usage of",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    let frsize = st.f_frsize as u64;
    let used = (st.f_blocks as u64)
        .saturating_sub(st.f_bfree as u64)
        .saturating_mul(frsize);
    let free = (st.f_bavail as u64).saturating_mul(frsize);
    Ok(DiskUsage {
        total_bytes: used.saturating_add(free),
        free_bytes: free,
    })
}

/// The three thresholds, as used shares of the file system (0..1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watermarks {
    /// Above it, expired segments are deleted at once, even outside
    /// `delete_when`'s hour.
    pub clean: f64,
    /// Above it, the oldest segments are deleted even if not expired, and
    /// segments held back for messages still needed are deleted too.
    pub force_clean: f64,
    /// Above it, sends are refused (`DISK_FULL`).
    pub refuse: f64,
}

impl Default for Watermarks {
    fn default() -> Self {
        Watermarks {
            clean: 0.75,
            force_clean: 0.85,
            refuse: 0.90,
        }
    }
}

/// Where a disk reading stands against the [`Watermarks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiskLevel {
    /// Below the clean ratio.
    Normal,
    /// At or above the clean ratio.
    Clean,
    /// At or above the force-clean ratio.
    ForceClean,
    /// At or above the refuse ratio.
    Refuse,
}

impl DiskLevel {
    /// Lower-case name for logs, metrics and JSON (`normal`, `clean`,
    /// `force_clean`, `refuse`).
    pub fn name(self) -> &'static str {
        match self {
            DiskLevel::Normal => "normal",
            DiskLevel::Clean => "clean",
            DiskLevel::ForceClean => "force_clean",
            DiskLevel::Refuse => "refuse",
        }
    }
}

impl Watermarks {
    /// The level of `usage`.
    pub fn level(&self, usage: &DiskUsage) -> DiskLevel {
        let r = usage.used_ratio();
        if r >= self.refuse {
            DiskLevel::Refuse
        } else if r >= self.force_clean {
            DiskLevel::ForceClean
        } else if r >= self.clean {
            DiskLevel::Clean
        } else {
            DiskLevel::Normal
        }
    }
}

/// Why sends are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// Usage is at or above the refuse ratio.
    Watermark,
    /// A write failed for want of space; refused until at least `needed`
    /// bytes are free (and usage is below the refuse ratio).
    NoSpace {
        /// The size of the allocation that failed.
        needed: u64,
    },
}

/// A send refused because the disk is full: what is full and how full.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct DiskFull {
    /// The data directory.
    pub path: PathBuf,
    /// The reading that refused it.
    pub usage: DiskUsage,
    /// The refuse ratio.
    pub refuse_ratio: f64,
    /// Why.
    pub reason: RefusalReason,
}

impl fmt::Display for DiskFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "disk full: {} is {:.1}% used ({} of {}, {} free); ",
            self.path.display(),
            self.usage.used_ratio() * 100.0,
            human_bytes(self.usage.used_bytes()),
            human_bytes(self.usage.total_bytes),
            human_bytes(self.usage.free_bytes),
        )?;
        match self.reason {
            RefusalReason::Watermark => write!(
                f,
                "sends are refused at or above {:.0}% (store.disk_refuse_ratio) until retention frees space",
                self.refuse_ratio * 100.0
            ),
            RefusalReason::NoSpace { needed } => write!(
                f,
                "a write failed for want of space; sends are refused until {} are free",
                human_bytes(needed)
            ),
        }
    }
}

/// A snapshot of the guard, for `topic describe`, the console and
/// `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskStatus {
    /// The last reading.
    pub usage: DiskUsage,
    /// Its level.
    pub level: DiskLevel,
    /// Why sends are refused, if they are.
    pub refusing: Option<RefusalReason>,
    /// The thresholds.
    pub marks: Watermarks,
}

#[derive(Debug)]
struct GuardState {
    usage: DiskUsage,
    probed_at: Option<Instant>,
    /// Set by a write that failed with ENOSPC: bytes that must be free
    /// before sends are accepted again.
    no_space_needs: Option<u64>,
}

/// Shared disk state: the last reading and the refusal decision.
#[derive(Debug)]
pub struct DiskGuard {
    path: PathBuf,
    marks: Watermarks,
    /// Fast path for every send: false unless refusing.
    refusing: AtomicBool,
    state: Mutex<GuardState>,
}

impl DiskGuard {
    /// A guard for the file system of `path` (the data directory). It
    /// takes a first reading; a failing one (logged) counts as empty.
    pub fn new(path: &Path, marks: Watermarks) -> DiskGuard {
        let guard = DiskGuard {
            path: path.to_path_buf(),
            marks,
            refusing: AtomicBool::new(false),
            state: Mutex::new(GuardState {
                usage: DiskUsage::default(),
                probed_at: None,
                no_space_needs: None,
            }),
        };
        if let Err(e) = guard.refresh() {
            tracing::warn!(error = %e, "cannot read the disk usage of the data directory");
        }
        guard
    }

    /// The thresholds.
    pub fn marks(&self) -> Watermarks {
        self.marks
    }

    /// Takes a new reading and decides refusal from it; returns the status.
    pub fn refresh(&self) -> StoreResult<DiskStatus> {
        let usage = probe(&self.path)?;
        Ok(self.apply(usage))
    }

    /// Decides refusal from `usage` (a reading just taken).
    pub fn apply(&self, usage: DiskUsage) -> DiskStatus {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.usage = usage;
        st.probed_at = Some(Instant::now());
        if let Some(needed) = st.no_space_needs {
            if usage.free_bytes >= needed {
                st.no_space_needs = None;
            }
        }
        let status = self.status_of(&st);
        let was = self.refusing.swap(status.refusing.is_some(), Ordering::AcqRel);
        match (was, status.refusing) {
            (false, Some(_)) => tracing::error!(
                path = %self.path.display(),
                used_percent = format!("{:.1}", usage.used_ratio() * 100.0),
                free_bytes = usage.free_bytes,
                "disk full: sends are refused"
            ),
            (true, None) => tracing::info!(
                path = %self.path.display(),
                used_percent = format!("{:.1}", usage.used_ratio() * 100.0),
                free_bytes = usage.free_bytes,
                "disk space is back: sends are accepted again"
            ),
            _ => {}
        }
        status
    }

    fn status_of(&self, st: &GuardState) -> DiskStatus {
        let level = self.marks.level(&st.usage);
        let refusing = match st.no_space_needs {
            Some(needed) => Some(RefusalReason::NoSpace { needed }),
            None if level == DiskLevel::Refuse => Some(RefusalReason::Watermark),
            None => None,
        };
        DiskStatus {
            usage: st.usage,
            level,
            refusing,
            marks: self.marks,
        }
    }

    /// The last reading and decision.
    pub fn status(&self) -> DiskStatus {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.status_of(&st)
    }

    /// Records that a write of `needed` bytes failed for want of space:
    /// sends are refused until that much is free.
    pub fn note_no_space(&self, needed: u64) {
        let needed = needed.max(1);
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.no_space_needs = Some(st.no_space_needs.map_or(needed, |n| n.max(needed)));
        }
        // A fresh reading for the message (and the log line).
        if let Err(e) = self.refresh() {
            tracing::warn!(error = %e, "cannot read the disk usage of the data directory");
            self.refusing.store(true, Ordering::Release);
        }
    }

    /// Whether a send may be appended: `Err` with what is full while the
    /// disk is above the refuse ratio or short of the space a failed write
    /// needed. While refusing, a fresh reading is taken at most every
    /// [`REPROBE_EVERY`], so sends resume as soon as space is back.
    pub fn check_accepting(&self) -> Result<(), DiskFull> {
        if !self.refusing.load(Ordering::Acquire) {
            return Ok(());
        }
        let stale = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.probed_at.is_none_or(|t| t.elapsed() >= REPROBE_EVERY)
        };
        let status = if stale {
            self.refresh().unwrap_or_else(|_| self.status())
        } else {
            self.status()
        };
        match status.refusing {
            None => Ok(()),
            Some(reason) => Err(DiskFull {
                path: self.path.clone(),
                usage: status.usage,
                refuse_ratio: self.marks.refuse,
                reason,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(total: u64, free: u64) -> DiskUsage {
        DiskUsage {
            total_bytes: total,
            free_bytes: free,
        }
    }

    #[test]
    fn levels_follow_the_marks() {
        let m = Watermarks::default();
        assert_eq!(m.level(&usage(100, 100)), DiskLevel::Normal);
        assert_eq!(m.level(&usage(100, 26)), DiskLevel::Normal);
        assert_eq!(m.level(&usage(100, 25)), DiskLevel::Clean);
        assert_eq!(m.level(&usage(100, 15)), DiskLevel::ForceClean);
        assert_eq!(m.level(&usage(100, 10)), DiskLevel::Refuse);
        assert_eq!(m.level(&usage(0, 0)), DiskLevel::Normal, "no reading: nothing refused");
    }

    #[test]
    fn the_real_data_directory_can_be_probed() {
        let dir = tempfile::tempdir().unwrap();
        let u = probe(dir.path()).unwrap();
        assert!(u.total_bytes > 0 && u.free_bytes <= u.total_bytes, "{u:?}");
        assert!(probe(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn refusal_by_watermark_clears_when_usage_drops() {
        let dir = tempfile::tempdir().unwrap();
        let g = DiskGuard::new(dir.path(), Watermarks::default());
        assert!(g.apply(usage(1000, 50)).refusing == Some(RefusalReason::Watermark));
        assert!(g.refusing.load(Ordering::Acquire));
        assert_eq!(g.apply(usage(1000, 500)).refusing, None);
        assert!(g.check_accepting().is_ok());
    }

    #[test]
    fn refusal_after_enospc_holds_until_the_needed_space_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let g = DiskGuard::new(dir.path(), Watermarks::default());
        {
            let mut st = g.state.lock().unwrap();
            st.no_space_needs = Some(300);
        }
        // Below the refuse ratio, but not enough free for the failed write.
        let s = g.apply(usage(1000, 200));
        assert_eq!(s.refusing, Some(RefusalReason::NoSpace { needed: 300 }));
        let s = g.apply(usage(1000, 400));
        assert_eq!(s.refusing, None);
    }

    #[test]
    fn the_refusal_message_says_what_is_full_and_how_full() {
        let e = DiskFull {
            path: PathBuf::from("/data"),
            usage: usage(1 << 30, 50 << 20),
            refuse_ratio: 0.9,
            reason: RefusalReason::Watermark,
        };
        let s = e.to_string();
        assert!(s.starts_with("disk full: /data is 95.1% used"), "{s}");
        assert!(s.contains("50.0 MiB free") && s.contains("90%"), "{s}");
        assert_eq!(human_bytes(512), "512 B");
    }
}
