//! TTL deadlines of one queue's messages, kept in deadline order so one
//! timer armed for the earliest deadline replaces any periodic scan.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::message::props;

/// When a message expires: its store time plus its own `TTL` property, or
/// else the topic's default TTL. `None` when it never expires. A malformed
/// `TTL` property is ignored (the send path refuses those).
pub fn expire_at(
    store_timestamp: u64,
    properties: &BTreeMap<String, String>,
    topic_ttl_ms: Option<u64>,
) -> Option<u64> {
    deadline(
        store_timestamp,
        properties.get(props::TTL).map(String::as_str),
        topic_ttl_ms,
    )
}

/// [`expire_at`] of an encoded record, read without decoding it.
pub fn raw_expire_at(record: &[u8], topic_ttl_ms: Option<u64>) -> Option<u64> {
    let view = crate::store::record::RecordView(record);
    deadline(view.store_timestamp()?, view.property(props::TTL), topic_ttl_ms)
}

fn deadline(store_timestamp: u64, ttl_property: Option<&str>, topic_ttl_ms: Option<u64>) -> Option<u64> {
    let ttl = ttl_property.and_then(|v| v.parse::<u64>().ok()).or(topic_ttl_ms)?;
    Some(store_timestamp.saturating_add(ttl))
}

/// Pending expiries: (deadline, queue offset).
#[derive(Debug, Default)]
pub struct ExpiryQueue {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
}

impl ExpiryQueue {
    /// Remembers that `offset` expires at `deadline`.
    pub fn add(&mut self, deadline: u64, offset: u64) {
        self.heap.push(Reverse((deadline, offset)));
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((d, _))| *d)
    }

    /// Removes and returns the offsets whose deadline is at or before `now`,
    /// in offset order.
    pub fn take_due(&mut self, now: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(Reverse((deadline, offset))) = self.heap.peek().copied() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            out.push(offset);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Number of pending expiries.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ttl_wins_over_the_topic_default() {
        let mut p = BTreeMap::new();
        assert_eq!(expire_at(1_000, &p, None), None);
        assert_eq!(expire_at(1_000, &p, Some(500)), Some(1_500));
        p.insert(props::TTL.to_string(), "20".to_string());
        assert_eq!(expire_at(1_000, &p, Some(500)), Some(1_020));
        p.insert(props::TTL.to_string(), "soon".to_string());
        assert_eq!(expire_at(1_000, &p, Some(500)), Some(1_500));
    }

    #[test]
    fn deadlines_come_out_in_time_order_only_when_due() {
        let mut q = ExpiryQueue::default();
        q.add(300, 1);
        q.add(100, 7);
        q.add(200, 3);
        assert_eq!(q.next_deadline(), Some(100));
        assert!(q.take_due(99).is_empty());
        assert_eq!(q.take_due(200), [3, 7]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.take_due(1_000), [1]);
        assert!(q.is_empty() && q.next_deadline().is_none());
    }
}
