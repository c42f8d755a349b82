//! Serving one pull from a consume queue and the commitlog: the pure part of
//! the queue actor (no actor, no timers), unit-testable on a temp store.

use bytes::{Bytes, BytesMut};

use crate::delivery::expiry::raw_expire_at;
use crate::error::{BrokerError, ErrorKind};
use crate::message::{TagFilter, PROPERTY_TAGS};
use crate::store::commitlog::Gather;
use crate::store::record::RecordView;
use crate::store::Store;
use crate::wire::pull::{PullResponse, PullStatus, MAX_PULL_COUNT, PULL_RESPONSE_HEAD_LEN};

/// Most consume-queue entries one pull scans (tag filters may skip many).
const MAX_SCAN: u64 = 16 * 1024;
/// Pulls stop adding records past this many bytes (but return at least one).
const MAX_PULL_BYTES: usize = 8 << 20;

/// A pull response body: the encoded head, then the records as chunks of
/// the commitlog mapping (sent without copying, see `Frame::body_tail`).
#[derive(Debug, Clone, Default)]
pub struct PullPayload {
    /// `PullResponse` head.
    pub head: Bytes,
    /// The records, back to back.
    pub records: Vec<Bytes>,
}

#[cfg(test)]
impl PullPayload {
    /// The body as one buffer (copies).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::from(&self.head[..]);
        for chunk in &self.records {
            out.extend_from_slice(chunk);
        }
        out.freeze()
    }
}

/// The answer to a pull, or why it may wait.
#[derive(Debug, Clone)]
pub struct PullServed {
    /// The response body.
    pub body: PullPayload,
    /// How the pull went.
    pub status: PullStatus,
    /// Records returned.
    pub count: u32,
    /// Where the next pull (or a parked retry) starts.
    pub next_offset: u64,
}

impl PullServed {
    /// True when nothing was found at the end of the queue, so a long poll
    /// may wait for new data.
    pub fn may_wait(&self) -> bool {
        matches!(self.status, PullStatus::NoNewMessage | PullStatus::NoMatched)
    }
}

/// Reads up to `max_count` records of (topic, queue) from `offset` that
/// match `filter`.
pub fn serve_pull(
    store: &Store,
    topic: &str,
    queue_id: u32,
    offset: u64,
    max_count: u32,
    filter: &TagFilter,
) -> Result<PullServed, BrokerError> {
    let max_count = max_count.clamp(1, MAX_PULL_COUNT);
    let Some(cq) = store.queues.get(topic, queue_id) else {
        // Never written: an empty queue at offset 0.
        let status = if offset == 0 {
            PullStatus::NoNewMessage
        } else {
            PullStatus::OffsetMoved
        };
        return Ok(respond(status, 0, 0, 0, 0, Vec::new()));
    };
    let (min, max) = (cq.min_offset(), cq.max_offset());
    if offset < min || offset > max {
        let next = if offset < min { min } else { max };
        return Ok(respond(PullStatus::OffsetMoved, next, min, max, 0, Vec::new()));
    }
    let hashes = filter.hashes();
    let topic_ttl = store.topics.get(topic).and_then(|t| t.ttl_ms);
    let now = crate::clock::now_millis();
    let mut records = Gather::new(&store.log);
    let mut count = 0u32;
    let mut next = offset;
    let scan_end = max.min(offset.saturating_add(MAX_SCAN));
    while next < scan_end && count < max_count && records.len() < MAX_PULL_BYTES {
        let Some(entry) = cq.get(next) else { break };
        next += 1;
        if let Some(h) = &hashes {
            if !h.contains(&entry.tag_hash) {
                continue;
            }
        }
        let size = entry.size as usize;
        let record = match records.push(entry.phys_offset, size) {
            Ok(r) => r,
            Err(e) => {
                return Err(BrokerError::new(
                    ErrorKind::Store,
                    format!("reading {topic}/{queue_id} offset {}: {e}", next - 1),
                ))
            }
        };
        // An expired message is never delivered.
        let expired = raw_expire_at(record, topic_ttl).is_some_and(|at| at <= now);
        // Hashes collide, and patterns have none: confirm the real tag.
        let filtered = !expired
            && (hashes.is_some() || !filter.is_all())
            && !filter.matches(RecordView(record).property(PROPERTY_TAGS));
        if expired || filtered {
            records.pop(size);
            continue;
        }
        count += 1;
    }
    let status = if count > 0 {
        PullStatus::Found
    } else if next == offset {
        PullStatus::NoNewMessage
    } else {
        PullStatus::NoMatched
    };
    Ok(respond(status, next, min, max, count, records.finish()))
}

fn respond(status: PullStatus, next: u64, min: u64, max: u64, count: u32, records: Vec<Bytes>) -> PullServed {
    let mut head = BytesMut::with_capacity(PULL_RESPONSE_HEAD_LEN);
    PullResponse::put_head(&mut head, status, next, min, max, count);
    PullServed {
        body: PullPayload {
            head: head.freeze(),
            records,
        },
        status,
        count,
        next_offset: next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::StoredRecord;
    use crate::store::testing::{append, entry, small_config};
    use crate::wire::pull::PullResponse;

    fn offsets(served: &PullServed) -> Vec<u64> {
        let resp = PullResponse::decode(served.body.to_bytes()).unwrap();
        StoredRecord::decode_all(resp.records, resp.count)
            .unwrap()
            .iter()
            .map(|r| r.queue_offset)
            .collect()
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

        let all = serve_pull(&store, "t", 0, 0, 20, &TagFilter::All).unwrap();
        assert_eq!((all.status, all.next_offset), (PullStatus::Found, 20));
        assert_eq!(offsets(&all), (0..20).collect::<Vec<_>>());

        let rare = serve_pull(&store, "t", 0, 1, 100, &TagFilter::parse("rare")).unwrap();
        assert_eq!(offsets(&rare), [10, 20, 30, 40]);
        assert_eq!(rare.next_offset, 50);

        let none = serve_pull(&store, "t", 0, 41, 100, &TagFilter::parse("rare")).unwrap();
        assert_eq!((none.status, none.next_offset), (PullStatus::NoMatched, 50));
        assert!(none.may_wait());

        let end = serve_pull(&store, "t", 0, 50, 10, &TagFilter::All).unwrap();
        assert_eq!(end.status, PullStatus::NoNewMessage);
        let moved = serve_pull(&store, "t", 0, 77, 10, &TagFilter::All).unwrap();
        assert_eq!((moved.status, moved.next_offset), (PullStatus::OffsetMoved, 50));
        let empty = serve_pull(&store, "t", 3, 0, 10, &TagFilter::All).unwrap();
        assert_eq!(empty.status, PullStatus::NoNewMessage);
    }
}
