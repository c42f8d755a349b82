//! Delayed messages: the 18 delay levels, the due time of a send, and the
//! scheduler's table of pending messages.
//!
//! A delayed message is stored first in the internal topic [`DELAY_TOPIC`]
//! (queue = its level, queue 0 for a deliver-at time) and released to its
//! real topic when due. Per delay queue the scheduler keeps the offset below
//! which everything is released; that offset is persisted like a consumer
//! offset, so after a restart the scheduler reloads exactly the messages
//! still pending.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use crate::message::props;

/// The internal topic holding delayed messages until they are due.
pub const DELAY_TOPIC: &str = "__delay";
/// Queues of [`DELAY_TOPIC`]: 0 for deliver-at times, 1–18 for the levels.
pub const DELAY_QUEUES: u32 = 19;
/// The offsets group the scheduler persists its progress under.
pub const DELAY_GROUP: &str = "__delay_scheduler";

/// RocketMQ's delay levels 1–18: 1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m
/// 10m 20m 30m 1h 2h.
pub const DELAY_LEVELS_MS: [u64; 18] = [
    1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000, 480_000, 540_000,
    600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
];

/// Where a send must go first when it asks for a delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delayed {
    /// When it is due, ms since the epoch.
    pub due_at: u64,
    /// Queue of [`DELAY_TOPIC`] that holds it.
    pub delay_queue: u32,
}

/// The delay a message asks for through its `DELAY` (level) or `DELIVER_AT`
/// property, or `None` for an immediate message. A deliver-at time already
/// past is immediate. Errors name the bad property.
pub fn requested_delay(
    properties: &BTreeMap<String, String>,
    now: u64,
    max_delay_ms: u64,
) -> Result<Option<Delayed>, String> {
    if let Some(level) = properties.get(props::DELAY_LEVEL) {
        if properties.contains_key(props::DELIVER_AT) {
            return Err(format!(
                "set either {} or {}, not both",
                props::DELAY_LEVEL,
                props::DELIVER_AT
            ));
        }
        let n: usize = level
            .parse()
            .ok()
            .filter(|n| (1..=DELAY_LEVELS_MS.len()).contains(n))
            .ok_or_else(|| {
                format!(
                    "delay level {level:?} is not a number from 1 to {}",
                    DELAY_LEVELS_MS.len()
                )
            })?;
        return Ok(Some(Delayed {
            due_at: now.saturating_add(DELAY_LEVELS_MS[n - 1]),
            delay_queue: n as u32,
        }));
    }
    if let Some(at) = properties.get(props::DELIVER_AT) {
        let at: u64 = at
            .parse()
            .map_err(|_| format!("deliver-at {at:?} is not milliseconds since the Unix epoch"))?;
        if at <= now {
            return Ok(None);
        }
        if at - now > max_delay_ms {
            return Err(format!(
                "deliver-at is {} ms away; the most this broker allows is {max_delay_ms} ms",
                at - now
            ));
        }
        return Ok(Some(Delayed {
            due_at: at,
            delay_queue: 0,
        }));
    }
    Ok(None)
}

/// Pending delayed messages, by due time, and the release progress of each
/// delay queue.
#[derive(Debug, Default)]
pub struct DelayTable {
    due: BinaryHeap<Reverse<(u64, u32, u64)>>,
    queues: BTreeMap<u32, Progress>,
}

#[derive(Debug, Default)]
struct Progress {
    /// Everything below is released.
    released_below: u64,
    /// Released offsets at or above `released_below`.
    released: BTreeSet<u64>,
    /// Pending offsets.
    pending: BTreeSet<u64>,
}

impl DelayTable {
    /// Starts tracking a delay queue whose messages below `released_below`
    /// were all released.
    pub fn resume(&mut self, queue: u32, released_below: u64) {
        self.queues.entry(queue).or_default().released_below = released_below;
    }

    /// A message at `offset` of delay queue `queue` is due at `due_at`.
    /// Offsets already released are ignored.
    pub fn add(&mut self, queue: u32, offset: u64, due_at: u64) {
        let p = self.queues.entry(queue).or_default();
        if offset < p.released_below || p.released.contains(&offset) || !p.pending.insert(offset) {
            return;
        }
        self.due.push(Reverse((due_at, queue, offset)));
    }

    /// The earliest due time.
    pub fn next_due(&self) -> Option<u64> {
        self.due.peek().map(|Reverse((d, _, _))| *d)
    }

    /// Removes and returns (queue, offset) of every message due at `now`.
    /// They stay pending until [`DelayTable::released`].
    pub fn take_due(&mut self, now: u64) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        while let Some(Reverse((due, queue, offset))) = self.due.peek().copied() {
            if due > now {
                break;
            }
            self.due.pop();
            out.push((queue, offset));
        }
        out
    }

    /// Puts a message whose release failed back, due at `due_at`.
    pub fn retry(&mut self, queue: u32, offset: u64, due_at: u64) {
        self.due.push(Reverse((due_at, queue, offset)));
    }

    /// The message was written to its real topic. Returns the queue's new
    /// released-below offset when it moved (to persist).
    pub fn released(&mut self, queue: u32, offset: u64) -> Option<u64> {
        let p = self.queues.get_mut(&queue)?;
        if !p.pending.remove(&offset) {
            return None;
        }
        p.released.insert(offset);
        let before = p.released_below;
        while p.released.remove(&p.released_below) {
            p.released_below += 1;
        }
        (p.released_below != before).then_some(p.released_below)
    }

    /// Messages waiting for their due time.
    pub fn pending(&self) -> usize {
        self.queues.values().map(|p| p.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn levels_and_deliver_at_times_are_checked() {
        let max = 7 * 86_400_000;
        assert_eq!(requested_delay(&props_of(&[]), 0, max), Ok(None));
        let l3 = requested_delay(&props_of(&[(props::DELAY_LEVEL, "3")]), 1_000, max).unwrap();
        assert_eq!(
            l3,
            Some(Delayed {
                due_at: 11_000,
                delay_queue: 3
            })
        );
        let l18 = requested_delay(&props_of(&[(props::DELAY_LEVEL, "18")]), 0, max).unwrap();
        assert_eq!(l18.map(|d| d.due_at), Some(7_200_000));
        for bad in ["0", "19", "x", ""] {
            assert!(requested_delay(&props_of(&[(props::DELAY_LEVEL, bad)]), 0, max).is_err());
        }
        let at = requested_delay(&props_of(&[(props::DELIVER_AT, "5000")]), 1_000, max).unwrap();
        assert_eq!(
            at,
            Some(Delayed {
                due_at: 5_000,
                delay_queue: 0
            })
        );
        assert_eq!(
            requested_delay(&props_of(&[(props::DELIVER_AT, "500")]), 1_000, max),
            Ok(None)
        );
        assert!(requested_delay(&props_of(&[(props::DELIVER_AT, "700000000")]), 0, max).is_err());
        assert!(requested_delay(&props_of(&[(props::DELIVER_AT, "soon")]), 0, max).is_err());
        assert!(requested_delay(
            &props_of(&[(props::DELIVER_AT, "5"), (props::DELAY_LEVEL, "1")]),
            0,
            max
        )
        .is_err());
    }

    #[test]
    fn release_progress_only_passes_released_messages() {
        let mut t = DelayTable::default();
        t.resume(0, 10);
        t.add(0, 9, 0); // released before the restart
        t.add(0, 10, 300);
        t.add(0, 11, 100);
        t.add(0, 12, 200);
        t.add(0, 11, 100); // seen twice (replay): once
        assert_eq!(t.pending(), 3);
        assert_eq!(t.next_due(), Some(100));
        assert_eq!(t.take_due(250), [(0, 11), (0, 12)]);
        assert_eq!(t.released(0, 11), None, "10 is still pending");
        assert_eq!(t.released(0, 12), None);
        t.retry(0, 10, 260);
        assert_eq!(t.take_due(260), [(0, 10)]);
        assert_eq!(t.released(0, 10), Some(13));
        assert_eq!(t.pending(), 0);
        assert_eq!(t.released(0, 10), None, "twice is once");
    }
}
