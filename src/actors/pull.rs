//! The queue's log as the delivery state machine reads it: a
//! [`QueueLog`] over the [`Store`] (consume queue, commitlog, topic TTL,
//! committed offsets). Pull serving itself is
//! [`crate::delivery::queue::serve_pull`].

use std::io;
use std::sync::Arc;

use bytes::Bytes;

use crate::delivery::queue::{LogEntry, QueueLog};
use crate::store::commitlog::{read_raw, Gather};
use crate::store::consume_queue::ConsumeQueue;
use crate::store::offsets::OffsetKey;
use crate::store::Store;

/// One topic-queue of the store, read by the delivery state machine.
pub struct StoreLog<'a> {
    store: &'a Store,
    topic: &'a str,
    queue_id: u32,
    /// The consume queue, when it exists (looked up once per input).
    cq: Option<Arc<ConsumeQueue>>,
}

impl<'a> StoreLog<'a> {
    /// (topic, queue) of `store`.
    pub fn new(store: &'a Store, topic: &'a str, queue_id: u32) -> StoreLog<'a> {
        StoreLog {
            store,
            topic,
            queue_id,
            cq: store.queues.get(topic, queue_id),
        }
    }
}

impl QueueLog for StoreLog<'_> {
    type Gather<'b>
        = Gather<'b>
    where
        Self: 'b;

    fn bounds(&self) -> Option<(u64, u64)> {
        self.cq.as_ref().map(|q| (q.min_offset(), q.max_offset()))
    }

    fn entry(&self, offset: u64) -> Option<LogEntry> {
        self.cq.as_ref()?.get(offset).map(|e| LogEntry {
            phys: e.phys_offset,
            size: e.size,
            tag_hash: e.tag_hash,
        })
    }

    fn record(&self, phys: u64, size: u32) -> io::Result<Bytes> {
        read_raw(&self.store.log, phys, size).map_err(io::Error::from)
    }

    fn gather(&self) -> Gather<'_> {
        Gather::new(&self.store.log)
    }

    fn topic_ttl(&self) -> Option<u64> {
        self.store.topics.get(self.topic).and_then(|t| t.ttl_ms)
    }

    fn needs_check(&self, phys: u64) -> bool {
        self.store.log.needs_read_check(phys)
    }

    fn note_corrupt(&self, phys: u64, size: u32) {
        self.store.log.note_corrupt_record(phys, size);
    }

    fn committed(&self, group: &str) -> Option<u64> {
        self.store.offsets.get(&OffsetKey {
            group: group.to_string(),
            topic: self.topic.to_string(),
            queue: self.queue_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::queue::{serve_pull, PullBatch, PullOutcome};
    use crate::message::TagFilter;
    use crate::store::record::StoredRecord;
    use crate::store::testing::{append, entry, small_config};

    fn offsets(served: &PullBatch) -> Vec<u64> {
        let records: Vec<u8> = served.records.iter().flat_map(|c| c.iter().copied()).collect();
        StoredRecord::decode_all(Bytes::from(records), served.count)
            .unwrap()
            .iter()
            .map(|r| r.queue_offset)
            .collect()
    }

    fn pull(store: &Store, queue: u32, offset: u64, max: u32, filter: &TagFilter) -> PullBatch {
        serve_pull(
            &StoreLog::new(store, "t", queue),
            "t",
            queue,
            5_000,
            offset,
            max,
            filter,
        )
        .unwrap()
    }

    #[test]
    fn pulls_filter_by_tag_and_report_where_to_go_next() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&small_config(dir.path())).unwrap();
        let batch: Vec<_> = (0..50)
            .map(|i| {
                entry(
                    &format!("m{i}"),
                    Some(if i % 10 == 0 { "rare" } else { "common" }),
                    None,
                )
            })
            .collect();
        append(&store, "t", 0, &batch);

        let all = pull(&store, 0, 0, 20, &TagFilter::All);
        assert_eq!((all.status, all.next_offset), (PullOutcome::Found, 20));
        assert_eq!(offsets(&all), (0..20).collect::<Vec<_>>());

        let rare = pull(&store, 0, 1, 100, &TagFilter::parse("rare"));
        assert_eq!(offsets(&rare), [10, 20, 30, 40]);
        assert_eq!(rare.next_offset, 50);

        let none = pull(&store, 0, 41, 100, &TagFilter::parse("rare"));
        assert_eq!((none.status, none.next_offset), (PullOutcome::NoMatched, 50));
        assert!(none.may_wait());

        let end = pull(&store, 0, 50, 10, &TagFilter::All);
        assert_eq!(end.status, PullOutcome::NoNewMessage);
        let moved = pull(&store, 0, 77, 10, &TagFilter::All);
        assert_eq!((moved.status, moved.next_offset), (PullOutcome::OffsetMoved, 50));
        let empty = pull(&store, 3, 0, 10, &TagFilter::All);
        assert_eq!(empty.status, PullOutcome::NoNewMessage);
    }
}
