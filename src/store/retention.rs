//! The retention policy: which commitlog segments to delete.
//!
//! A plain state machine (no clock, no I/O): the `RetentionCleaner` actor
//! passes the time, the hour of day and the segments as the store describes
//! them, and performs what [`decide`] returns through
//! [`Store::delete_segments_below`](super::Store::delete_segments_below).
//! Segments are only ever deleted oldest first, so a decision is one
//! boundary: everything below it goes.

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

/// Decides which segments (oldest first, `segments` sorted by start) to
/// delete at `now_ms` in hour of day `hour`. Never the active segment nor
/// anything after it. `None` when nothing is to be deleted.
pub fn decide(policy: &RetentionPolicy, now_ms: u64, hour: u8, segments: &[SegmentInfo]) -> Option<Decision> {
    let age_allowed = policy.delete_hour.is_none_or(|h| h == hour);
    let mut total: u64 = segments.iter().map(|s| s.size).sum();
    let mut out = Vec::new();
    for seg in segments {
        if seg.active {
            break;
        }
        let reason = if policy.retention_bytes > 0 && total > policy.retention_bytes {
            Reason::OverSize
        } else if age_allowed && now_ms.saturating_sub(seg.newest_ms) > policy.retention_ms {
            Reason::Expired
        } else {
            // Oldest first: a kept segment keeps everything after it.
            break;
        };
        total -= seg.size;
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

    #[test]
    fn expired_segments_go_oldest_first_and_stop_at_the_first_young_one() {
        let s = segs(NOW, &[5000, 4000, 1000, 3000, 10]);
        let d = decide(&policy(2000, 0, None), NOW, 3, &s).unwrap();
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
        assert_eq!(decide(&policy(2000, 0, None), NOW, 3, &s), None);
        assert_eq!(decide(&policy(2000, 0, None), NOW, 3, &[]), None);
    }

    #[test]
    fn the_active_segment_is_never_deleted() {
        let s = segs(NOW, &[5000, 5000, 5000]);
        let d = decide(&policy(10, 0, None), NOW, 0, &s).unwrap();
        assert_eq!(d.segments.len(), 2);
        assert_eq!(d.below, 2 * SEG);
        // Nor by size.
        let d = decide(&policy(u64::MAX, 1, None), NOW, 0, &s).unwrap();
        assert_eq!(d.segments.len(), 2);
        // A single (active) segment: nothing.
        assert_eq!(decide(&policy(10, 1, None), NOW, 0, &segs(NOW, &[5000])), None);
    }

    #[test]
    fn not_durable_segments_block_everything_after_them() {
        let mut s = segs(NOW, &[5000, 5000, 5000, 5000]);
        s[1].active = true;
        let d = decide(&policy(10, 0, None), NOW, 0, &s).unwrap();
        assert_eq!(d.segments.len(), 1);
    }

    #[test]
    fn delete_when_confines_expiry_to_its_hour() {
        let s = segs(NOW, &[5000, 5000, 10]);
        let p = policy(2000, 0, Some(4));
        assert_eq!(decide(&p, NOW, 3, &s), None);
        assert_eq!(decide(&p, NOW, 5, &s), None);
        assert_eq!(decide(&p, NOW, 4, &s).unwrap().segments.len(), 2);
    }

    #[test]
    fn size_deletes_oldest_until_under_the_limit_whatever_the_hour() {
        // Five segments of 1000 bytes, limit 2500: delete two (3000 left is
        // over), three → 2000 ≤ 2500.
        let s = segs(NOW, &[10, 10, 10, 10, 10]);
        let d = decide(&policy(u64::MAX, 2500, Some(4)), NOW, 7, &s).unwrap();
        assert_eq!(d.segments.len(), 3);
        assert!(d.segments.iter().all(|(_, r)| *r == Reason::OverSize));
        assert_eq!(d.below, 3 * SEG);
        // Exactly at the limit: nothing.
        assert_eq!(decide(&policy(u64::MAX, 5000, None), NOW, 0, &s), None);
    }

    #[test]
    fn size_then_age_both_apply() {
        // Limit 4000: the first goes by size, the next two by age.
        let s = segs(NOW, &[9000, 9000, 9000, 10, 10]);
        let d = decide(&policy(2000, 4000, None), NOW, 0, &s).unwrap();
        let reasons: Vec<_> = d.segments.iter().map(|(_, r)| *r).collect();
        assert_eq!(reasons, vec![Reason::OverSize, Reason::Expired, Reason::Expired]);
    }

    #[test]
    fn a_clock_behind_the_segments_deletes_nothing_by_age() {
        let s = segs(NOW, &[5000, 10]);
        assert_eq!(decide(&policy(2000, 0, None), NOW - 10_000, 0, &s), None);
    }
}
