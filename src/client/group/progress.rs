//! What a member has processed per owned queue (offset-committing mode):
//! commits never pass a message handed out and not yet acknowledged.

use std::collections::{BTreeSet, HashMap};

use super::QueueKey;
use crate::client::core::MessageQueue;

/// Progress of the current generation, shared by the consumer handle, the
/// driver and acknowledgements.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// The generation whose deliveries are valid; 0 while rebalancing.
    pub(super) generation: u64,
    /// Next offset to commit per owned queue: below the oldest message
    /// handed out and not yet acknowledged.
    pub(super) processed: HashMap<QueueKey, u64>,
    /// Offsets handed out and not yet acknowledged, per queue.
    outstanding: HashMap<QueueKey, BTreeSet<u64>>,
    /// One past the highest acknowledged offset, per queue.
    acked_high: HashMap<QueueKey, u64>,
    /// Current assignment, for `assignment()`.
    pub(super) assignment: Vec<MessageQueue>,
}

impl Shared {
    /// Records `offset` of `key` as handed to the application.
    pub(super) fn hand_out(&mut self, key: &QueueKey, offset: u64) {
        self.outstanding.entry(key.clone()).or_default().insert(offset);
    }

    /// The application acknowledged `offset` of `key` (in `generation`).
    pub(super) fn ack(&mut self, generation: u64, key: &QueueKey, offset: u64) {
        // An acknowledgement from a revoked generation is not ours to commit.
        if generation != self.generation {
            return;
        }
        let outstanding = self.outstanding.entry(key.clone()).or_default();
        outstanding.remove(&offset);
        let high = self.acked_high.entry(key.clone()).or_insert(0);
        *high = (*high).max(offset + 1);
        let next = outstanding.first().copied().unwrap_or(*high);
        self.processed.insert(key.clone(), next);
    }

    /// Starts `generation` with nothing processed.
    pub(super) fn reset(&mut self, generation: u64) {
        self.generation = generation;
        self.processed.clear();
        self.outstanding.clear();
        self.acked_high.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_stop_below_the_oldest_unacknowledged_message() {
        let mut s = Shared::default();
        s.reset(3);
        let k: QueueKey = ("t".into(), "b".into(), 0);
        for o in 10..15 {
            s.hand_out(&k, o);
        }
        s.ack(3, &k, 12);
        s.ack(3, &k, 10);
        assert_eq!(s.processed[&k], 11, "11 is still being processed");
        s.ack(3, &k, 11);
        assert_eq!(s.processed[&k], 13);
        s.ack(3, &k, 13);
        s.ack(3, &k, 14);
        assert_eq!(s.processed[&k], 15);
        s.ack(2, &k, 99); // a stale generation changes nothing
        assert_eq!(s.processed[&k], 15);
    }
}
