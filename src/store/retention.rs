//! The retention policy: which commitlog segments to delete.
//!
//! A plain state machine (no clock, no I/O): the `RetentionCleaner` actor
//! passes the time, the hour of day and the segments as the store describes
//! them, and performs what [`decide`] returns through
//! [`Store::delete_segments_below`](super::Store::delete_segments_below).
//! Segments are only ever deleted oldest first, so a decision is one
//! boundary: everything below it goes.
//!
//! The disk's state bends the policy ([`Pressure`]): at or above the clean
//! watermark expired segments go whatever `delete_when` says; at or above
//! the force-clean watermark the oldest segments go even if they have not
//! expired, until the disk is back under that watermark. Segments holding
//! messages still needed (a `hold`: delayed messages not yet released,
//! messages not yet acknowledged) are kept by age and size retention; only
//! forced cleaning deletes them, and the caller counts what that dropped.

use super::disk::DiskLevel;

/// One commitlog segment as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Physical offset of its first byte.
    pub start: u64,
    /// Bytes it takes on disk (segments are pre-allocated: the segment size).
    pub size: u64,
    /// Store time of its newest record (ms since the epoch); the file's
    /// last modification time (see [`super::commitlog::CommitLog::segment_infos`]).
    pub newest_ms: u64,
    /// The segment being written, or one not yet entirely durable and
    /// dispatched: never deleted.
    pub active: bool,
}

/// The retention settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// A segment whose newest record is older than this is expired, ms.
    pub retention_ms: u64,
    /// Total commitlog size to stay under (± one segment); 0: unbounded.
    pub retention_bytes: u64,
    /// Hour of day to which deleting *expired* segments is confined.
    pub delete_hour: Option<u8>,
}

/// Why a segment is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its newest record is older than `retention_ms`.
    Expired,
    /// The commitlog is over `retention_bytes`.
    OverSize,
    /// The disk is above the force-clean watermark.
    Forced,
}

/// How full the disk is, as the policy needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    /// The disk's level against the watermarks.
    pub level: DiskLevel,
    /// At or above the force-clean watermark: bytes to free to get back
    /// under it (0 otherwise).
    pub excess_bytes: u64,
}

impl Pressure {
    /// No pressure: only the retention settings apply.
    pub const NONE: Pressure = Pressure {
        level: DiskLevel::Normal,
        excess_bytes: 0,
    };
}

/// What to delete: the oldest `count` segments, everything below `below`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The segments to delete, oldest first, with the reason for each.
    pub segments: Vec<(SegmentInfo, Reason)>,
    /// The commitlog's new start: the first kept segment's start.
    pub below: u64,
}

impl Decision {
    /// Bytes the deletion reclaims.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|(s, _)| s.size).sum()
    }
}

/// What the policy looks at besides its settings.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The time, ms since the epoch.
    pub now_ms: u64,
    /// The local hour of day (for `delete_when`).
    pub hour: u8,
    /// The commitlog's segments, sorted by start.
    pub segments: &'a [SegmentInfo],
    /// How full the disk is.
    pub pressure: Pressure,
    /// The lowest commitlog offset still needed (see the module docs):
    /// segments holding it or anything after it are kept unless forced.
    pub hold: Option<u64>,
}

/// Decides which segments (oldest first) to delete. Never the active
/// segment nor anything after it. `None` when nothing is to be deleted.
pub fn decide(policy: &RetentionPolicy, input: &Inputs<'_>) -> Option<Decision> {
    let pressure = input.pressure;
    let age_allowed = pressure.level >= DiskLevel::Clean || policy.delete_hour.is_none_or(|h| h == input.hour);
    let mut total: u64 = input.segments.iter().map(|s| s.size).sum();
    let mut freed = 0u64;
    let mut out = Vec::new();
    for seg in input.segments {
        if seg.active {
            break;
        }
        let held = input.hold.is_some_and(|h| h < seg.start + seg.size);
        let reason = if !held && policy.retention_bytes > 0 && total > policy.retention_bytes {
            Reason::OverSize
        } else if !held && age_allowed && input.now_ms.saturating_sub(seg.newest_ms) > policy.retention_ms {
            Reason::Expired
        } else if pressure.level >= DiskLevel::ForceClean && freed < pressure.excess_bytes {
            Reason::Forced
        } else {
            // Oldest first: a kept segment keeps everything after it.
            break;
        };
        total -= seg.size;
        freed += seg.size;
        out.push((*seg, reason));
    }
    let last = out.last()?;
    let below = last.0.start + last.0.size;
    Some(Decision { segments: out, below })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1000;
    const HOUR_MS: u64 = 3_600_000;

    /// `ages` in ms before `now`; the last segment is active.
    fn segs(now: u64, ages: &[u64]) -> Vec<SegmentInfo> {
        let n = ages.len();
        ages.iter()
            .enumerate()
            .map(|(i, age)| SegmentInfo {
                start: i as u64 * SEG,
                size: SEG,
                newest_ms: now - age,
                active: i + 1 == n,
            })
            .collect()
    }

    fn policy(retention_ms: u64, retention_bytes: u64, delete_hour: Option<u8>) -> RetentionPolicy {
        RetentionPolicy {
            retention_ms,
            retention_bytes,
            delete_hour,
        }
    }

    const NOW: u64 = 100 * HOUR_MS;

    /// `decide` with no disk pressure and nothing held, at `now` and `hour`.
    fn decide_at(p: &RetentionPolicy, now: u64, hour: u8, segments: &[SegmentInfo]) -> Option<Decision> {
        decide(
            p,
            &Inputs {
                now_ms: now,
                hour,
                segments,
                pressure: Pressure::NONE,
                hold: None,
            },
        )
    }

    #[test]
    fn expired_segments_go_oldest_first_and_stop_at_the_first_young_one() {
        let s = segs(NOW, &[5000, 4000, 1000, 3000, 10]);
        let d = decide_at(&policy(2000, 0, None), NOW, 3, &s).unwrap();
        assert_eq!(
            d.segments.len(),
            2,
            "the third is young, so the fourth (older) stays too"
        );
        assert!(d.segments.iter().all(|(_, r)| *r == Reason::Expired));
        assert_eq!(d.below, 2 * SEG);
        assert_eq!(d.bytes(), 2 * SEG);
    }

    #[test]
    fn nothing_expired_is_none() {
        let s = segs(NOW, &[1000, 500, 10]);
        assert_eq!(decide_at(&policy(2000, 0, None), NOW, 3, &s), None);
        assert_eq!(decide_at(&policy(2000, 0, None), NOW, 3, &[]), None);
    }

    #[test]
    fn the_active_segment_is_never_deleted() {
        let s = segs(NOW, &[5000, 5000, 5000]);
        let d = decide_at(&policy(10, 0, None), NOW, 0, &s).unwrap();
        assert_eq!(d.segments.len(), 2);
        assert_eq!(d.below, 2 * SEG);
        // Nor by size.
        let d = decide_at(&policy(u64::MAX, 1, None), NOW, 0, &s).unwrap();
        assert_eq!(d.segments.len(), 2);
        // A single (active) segment: nothing.
        assert_eq!(decide_at(&policy(10, 1, None), NOW, 0, &segs(NOW, &[5000])), None);
    }

    #[test]
    fn not_durable_segments_block_everything_after_them() {
        let mut s = segs(NOW, &[5000, 5000, 5000, 5000]);
        s[1].active = true;
        let d = decide_at(&policy(10, 0, None), NOW, 0, &s).unwrap();
        assert_eq!(d.segments.len(), 1);
    }

    #[test]
    fn delete_when_confines_expiry_to_its_hour() {
        let s = segs(NOW, &[5000, 5000, 10]);
        let p = policy(2000, 0, Some(4));
        assert_eq!(decide_at(&p, NOW, 3, &s), None);
        assert_eq!(decide_at(&p, NOW, 5, &s), None);
        assert_eq!(decide_at(&p, NOW, 4, &s).unwrap().segments.len(), 2);
    }

    #[test]
    fn size_deletes_oldest_until_under_the_limit_whatever_the_hour() {
        // Five segments of 1000 bytes, limit 2500: delete two (3000 left is
        // over), three → 2000 ≤ 2500.
        let s = segs(NOW, &[10, 10, 10, 10, 10]);
        let d = decide_at(&policy(u64::MAX, 2500, Some(4)), NOW, 7, &s).unwrap();
        assert_eq!(d.segments.len(), 3);
        assert!(d.segments.iter().all(|(_, r)| *r == Reason::OverSize));
        assert_eq!(d.below, 3 * SEG);
        // Exactly at the limit: nothing.
        assert_eq!(decide_at(&policy(u64::MAX, 5000, None), NOW, 0, &s), None);
    }

    #[test]
    fn size_then_age_both_apply() {
        // Limit 4000: the first goes by size, the next two by age.
        let s = segs(NOW, &[9000, 9000, 9000, 10, 10]);
        let d = decide_at(&policy(2000, 4000, None), NOW, 0, &s).unwrap();
        let reasons: Vec<_> = d.segments.iter().map(|(_, r)| *r).collect();
        assert_eq!(reasons, vec![Reason::OverSize, Reason::Expired, Reason::Expired]);
    }

    #[test]
    fn a_clock_behind_the_segments_deletes_nothing_by_age() {
        let s = segs(NOW, &[5000, 10]);
        assert_eq!(decide_at(&policy(2000, 0, None), NOW - 10_000, 0, &s), None);
    }

    fn decide_with(
        p: &RetentionPolicy,
        hour: u8,
        s: &[SegmentInfo],
        pressure: Pressure,
        hold: Option<u64>,
    ) -> Option<Decision> {
        decide(
            p,
            &Inputs {
                now_ms: NOW,
                hour,
                segments: s,
                pressure,
                hold,
            },
        )
    }

    fn pressure(level: DiskLevel, excess_bytes: u64) -> Pressure {
        Pressure { level, excess_bytes }
    }

    #[test]
    fn above_the_clean_watermark_expired_segments_go_outside_delete_when() {
        let s = segs(NOW, &[5000, 5000, 10]);
        let p = policy(2000, 0, Some(4));
        assert_eq!(decide_with(&p, 3, &s, Pressure::NONE, None), None);
        let d = decide_with(&p, 3, &s, pressure(DiskLevel::Clean, 0), None).unwrap();
        assert_eq!(d.segments.len(), 2);
        assert!(d.segments.iter().all(|(_, r)| *r == Reason::Expired));
    }

    #[test]
    fn above_the_force_watermark_the_oldest_go_until_enough_is_freed() {
        // Nothing expired; 2500 bytes over the force mark: three segments.
        let s = segs(NOW, &[10, 10, 10, 10, 10]);
        let p = policy(u64::MAX, 0, None);
        let d = decide_with(&p, 0, &s, pressure(DiskLevel::ForceClean, 2500), None).unwrap();
        assert_eq!(d.segments.len(), 3);
        assert!(d.segments.iter().all(|(_, r)| *r == Reason::Forced));
        // Never the active segment, however much is asked for.
        let d = decide_with(&p, 0, &s, pressure(DiskLevel::Refuse, u64::MAX), None).unwrap();
        assert_eq!(d.segments.len(), 4);
        assert_eq!(decide_with(&p, 0, &s, pressure(DiskLevel::Clean, 0), None), None);
    }

    #[test]
    fn held_segments_are_kept_by_age_and_size_but_not_when_forced() {
        // Everything expired; a message at offset 1500 (second segment) is
        // still needed: only the first segment may go.
        let s = segs(NOW, &[9000, 9000, 9000, 10]);
        let p = policy(2000, 1000, None);
        let d = decide_with(&p, 0, &s, Pressure::NONE, Some(1500)).unwrap();
        assert_eq!(d.segments.len(), 1);
        assert_eq!(d.below, SEG);
        // Forced cleaning deletes the held segment too.
        let d = decide_with(&p, 0, &s, pressure(DiskLevel::ForceClean, 2 * SEG), Some(1500)).unwrap();
        let reasons: Vec<_> = d.segments.iter().map(|(_, r)| *r).collect();
        assert_eq!(reasons, vec![Reason::OverSize, Reason::Forced]);
        // A hold in the first segment keeps everything.
        assert_eq!(decide_with(&p, 0, &s, Pressure::NONE, Some(0)), None);
    }
}
