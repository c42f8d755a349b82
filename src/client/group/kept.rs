//! Commits kept by the client while their broker group's master cannot
//! take them.
//!
//! Committed offsets of a queue live with the broker group owning it, and
//! only its master accepts a commit (a slave answers `NOT_MASTER`). While
//! the master is unreachable (or the route lists none) a member goes on
//! consuming from a slave; its commits for that group are kept here — the
//! newest offset per (group, topic, broker name, queue) — instead of being
//! lost or failing the consumer. Every commit round (and the revocation
//! before a rejoin) tries them again with the newest value, so they reach
//! the master once it answers again, and a queue's start is taken from
//! here rather than from a slave's replicated offset, which may be older.
//!
//! Kept commits are this member's only: when a rebalance during the outage
//! hands a queue to another member, the kept commit is dropped (it is not
//! ours to write any more, and writing it later could move the group
//! back); the new owner continues from the offset the slave replicated
//! from the master, so it may re-read what this member consumed since the
//! master last took a commit.

use std::collections::BTreeMap;

use crate::client::core::MessageQueue;
use crate::wire::group::QueueOffset;

/// A kept commit's key: (group, topic, broker name, queue id).
type KeptKey = (String, String, String, u32);

/// The newest offset per queue whose commit a master has not taken yet.
#[derive(Debug, Default)]
pub(crate) struct KeptCommits {
    map: BTreeMap<KeptKey, u64>,
}

fn key(group: &str, o: &QueueOffset) -> KeptKey {
    (group.to_string(), o.topic.clone(), o.broker_name.clone(), o.queue)
}

impl KeptCommits {
    /// Keeps `offsets` of `group` (each replacing an older kept value);
    /// returns how many queues had nothing kept before.
    pub(crate) fn keep(&mut self, group: &str, offsets: &[QueueOffset]) -> usize {
        offsets
            .iter()
            .filter(|o| self.map.insert(key(group, o), o.offset).is_none())
            .count()
    }

    /// The kept offset of a queue, if any.
    pub(crate) fn get(&self, group: &str, topic: &str, broker_name: &str, queue: u32) -> Option<u64> {
        self.map
            .get(&(group.to_string(), topic.to_string(), broker_name.to_string(), queue))
            .copied()
    }

    /// Every kept commit of `group`.
    pub(crate) fn of_group(&self, group: &str) -> Vec<QueueOffset> {
        self.map
            .iter()
            .filter(|((g, ..), _)| g == group)
            .map(|((_, topic, broker_name, queue), offset)| QueueOffset {
                topic: topic.clone(),
                broker_name: broker_name.clone(),
                queue: *queue,
                offset: *offset,
            })
            .collect()
    }

    /// A master took `offsets`: forgets the kept values they cover (a kept
    /// value newer than the one taken stays). Returns how many were
    /// forgotten.
    pub(crate) fn flushed(&mut self, group: &str, offsets: &[QueueOffset]) -> usize {
        let mut n = 0;
        for o in offsets {
            let k = key(group, o);
            if self.map.get(&k).is_some_and(|kept| *kept <= o.offset) {
                self.map.remove(&k);
                n += 1;
            }
        }
        n
    }

    /// Drops the kept commits of `group` for queues not in `assigned` (now
    /// another member's); returns them.
    pub(crate) fn retain_assigned(&mut self, group: &str, assigned: &[MessageQueue]) -> Vec<QueueOffset> {
        let mut dropped = Vec::new();
        self.map.retain(|(g, topic, broker_name, queue), offset| {
            let keep = g != group
                || assigned
                    .iter()
                    .any(|mq| mq.topic == *topic && mq.broker_name == *broker_name && mq.queue_id == *queue);
            if !keep {
                dropped.push(QueueOffset {
                    topic: topic.clone(),
                    broker_name: broker_name.clone(),
                    queue: *queue,
                    offset: *offset,
                });
            }
            keep
        });
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qo(topic: &str, broker: &str, queue: u32, offset: u64) -> QueueOffset {
        QueueOffset {
            topic: topic.into(),
            broker_name: broker.into(),
            queue,
            offset,
        }
    }

    fn mq(topic: &str, broker: &str, queue: u32) -> MessageQueue {
        MessageQueue {
            topic: topic.into(),
            broker_name: broker.into(),
            broker_addr: "m".into(),
            queue_id: queue,
        }
    }

    #[test]
    fn the_newest_value_is_kept_until_a_master_takes_it() {
        let mut k = KeptCommits::default();
        assert_eq!(k.keep("g", &[qo("t", "a", 0, 5), qo("t", "a", 1, 7)]), 2);
        assert_eq!(k.keep("g", &[qo("t", "a", 0, 9)]), 0, "replaces, not a new queue");
        assert_eq!(k.get("g", "t", "a", 0), Some(9));
        assert_eq!(k.get("other", "t", "a", 0), None, "per group");
        assert_eq!(k.of_group("g"), [qo("t", "a", 0, 9), qo("t", "a", 1, 7)]);
        // An older value taken by the master leaves the newer one kept.
        assert_eq!(k.flushed("g", &[qo("t", "a", 0, 8), qo("t", "a", 1, 7)]), 1);
        assert_eq!(k.of_group("g"), [qo("t", "a", 0, 9)]);
        assert_eq!(k.flushed("g", &[qo("t", "a", 0, 9)]), 1);
        assert!(k.of_group("g").is_empty());
    }

    #[test]
    fn queues_handed_to_another_member_are_dropped() {
        let mut k = KeptCommits::default();
        k.keep("g", &[qo("t", "a", 0, 5), qo("t", "a", 1, 7)]);
        k.keep("h", &[qo("t", "a", 1, 3)]);
        let dropped = k.retain_assigned("g", &[mq("t", "a", 0)]);
        assert_eq!(dropped, [qo("t", "a", 1, 7)]);
        assert_eq!(k.get("g", "t", "a", 0), Some(5));
        assert_eq!(k.get("h", "t", "a", 1), Some(3), "other groups untouched");
    }
}
