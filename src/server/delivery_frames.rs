//! The native protocol's side of queue delivery: `PULL_MESSAGE`,
//! `RECEIVE_MESSAGE` and `ACK`/`NACK_MESSAGE` requests become the delivery
//! state machine's queries, and its answers become response frames — the
//! same bytes as `wire::pull::PullResponse` and
//! `wire::delivery::ReceiveResponse` encode. Pull records travel as the
//! frame's body tail, chunks of the commitlog mapping: never copied.

use bytes::{BufMut, Bytes, BytesMut};

use crate::delivery::queue::{
    PullBatch, PullOutcome, PullQuery, ReceiveQuery, ReceivedBatch, SettleQuery, Verdict, MAX_BATCH_COUNT,
};
use crate::message::TagFilter;
use crate::wire::delivery::{ReceiveRequest, ReceiveResponse, SettleRequest};
use crate::wire::pull::{PullRequest, PullResponse, PullStatus, MAX_PULL_COUNT, PULL_RESPONSE_HEAD_LEN};
use crate::wire::Frame;

// The state machine caps batches where the protocol does.
const _: () = assert!(MAX_BATCH_COUNT == MAX_PULL_COUNT);

/// Bytes of a receive response before its deliveries.
const RECEIVE_RESPONSE_HEAD_LEN: usize = 1 + 8 + 8 + 4;

/// The query of a `PULL_MESSAGE` request (its wait already capped).
pub fn pull_query(req: &PullRequest) -> PullQuery {
    PullQuery {
        offset: req.offset,
        max_count: req.max_count,
        max_wait_ms: u64::from(req.max_wait_ms),
        filter: TagFilter::parse(&req.tag_expression),
    }
}

/// The query of a `RECEIVE_MESSAGE` request (its wait already capped).
pub fn receive_query(req: ReceiveRequest) -> ReceiveQuery {
    ReceiveQuery {
        orderly: req.orderly(),
        group: req.group,
        start_offset: req.start_offset,
        max_count: req.max_count,
        max_wait_ms: u64::from(req.max_wait_ms),
        ack_timeout_ms: u64::from(req.ack_timeout_ms),
        tag_expression: req.tag_expression,
    }
}

/// The query of an `ACK_MESSAGE` (`nack: false`) or `NACK_MESSAGE` request.
pub fn settle_query(req: SettleRequest, nack: bool) -> SettleQuery {
    SettleQuery {
        group: req.group,
        offsets: req.offsets,
        verdict: if nack {
            Verdict::Nack { requeue: req.requeue }
        } else {
            Verdict::Ack
        },
    }
}

/// The wire status of an outcome.
pub fn status(outcome: PullOutcome) -> PullStatus {
    match outcome {
        PullOutcome::Found => PullStatus::Found,
        PullOutcome::NoNewMessage => PullStatus::NoNewMessage,
        PullOutcome::NoMatched => PullStatus::NoMatched,
        PullOutcome::OffsetMoved => PullStatus::OffsetMoved,
    }
}

/// The `PULL_MESSAGE` response: the head in the body, the records as its
/// tail (zero copy).
pub fn pull_frame(batch: PullBatch) -> Frame {
    let mut head = BytesMut::with_capacity(PULL_RESPONSE_HEAD_LEN);
    PullResponse::put_head(
        &mut head,
        status(batch.status),
        batch.next_offset,
        batch.min_offset,
        batch.max_offset,
        batch.count,
    );
    Frame::ok(0, Bytes::new(), head.freeze()).with_body_tail(batch.records)
}

/// The `RECEIVE_MESSAGE` response body: the head, then each record after
/// its delivery number.
pub fn receive_body(batch: &ReceivedBatch) -> Bytes {
    let records: usize = batch.deliveries.iter().map(|d| 4 + d.record.len()).sum();
    let mut body = BytesMut::with_capacity(RECEIVE_RESPONSE_HEAD_LEN + records);
    ReceiveResponse::put_head(
        &mut body,
        status(batch.status),
        batch.committed,
        batch.max_offset,
        batch.deliveries.len() as u32,
    );
    for d in &batch.deliveries {
        body.put_u32(d.delivery);
        body.extend_from_slice(&d.record);
    }
    body.freeze()
}

/// The `RECEIVE_MESSAGE` response frame.
pub fn receive_frame(batch: &ReceivedBatch) -> Frame {
    Frame::ok(0, Bytes::new(), receive_body(batch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::queue::Delivered;

    fn record(n: u8) -> Bytes {
        // Enough of a record for the decoder: its size, then bytes.
        let mut r = vec![0, 0, 0, 12];
        r.extend([n; 8]);
        Bytes::from(r)
    }

    #[test]
    fn pull_frames_carry_the_same_bytes_as_the_wire_encoding() {
        let batch = PullBatch {
            status: PullOutcome::Found,
            next_offset: 9,
            min_offset: 1,
            max_offset: 12,
            count: 2,
            records: vec![record(1), record(2)],
        };
        let frame = pull_frame(batch);
        let mut body = BytesMut::from(&frame.body[..]);
        for chunk in &frame.body_tail {
            body.extend_from_slice(chunk);
        }
        let mut records = BytesMut::new();
        records.extend_from_slice(&record(1));
        records.extend_from_slice(&record(2));
        let expected = PullResponse {
            status: PullStatus::Found,
            next_offset: 9,
            min_offset: 1,
            max_offset: 12,
            count: 2,
            records: records.freeze(),
        };
        assert_eq!(body.freeze(), expected.encode());
    }

    #[test]
    fn receive_bodies_are_the_wire_encoding() {
        let batch = ReceivedBatch {
            status: PullOutcome::Found,
            committed: 3,
            max_offset: 10,
            deliveries: vec![
                Delivered {
                    delivery: 1,
                    record: record(1),
                },
                Delivered {
                    delivery: 4,
                    record: record(2),
                },
            ],
        };
        let expected = ReceiveResponse {
            status: PullStatus::Found,
            committed_offset: 3,
            max_offset: 10,
            deliveries: vec![(1, record(1)), (4, record(2))],
        };
        assert_eq!(receive_body(&batch), expected.encode());
        assert_eq!(ReceiveResponse::decode(receive_body(&batch)).unwrap(), expected);
    }

    #[test]
    fn requests_become_queries() {
        let q = settle_query(
            SettleRequest {
                group: "g".into(),
                topic: "t".into(),
                queue_id: 0,
                requeue: true,
                offsets: vec![1, 2],
            },
            true,
        );
        assert_eq!(q.verdict, Verdict::Nack { requeue: true });
        let r = receive_query(ReceiveRequest {
            group: "g".into(),
            topic: "t".into(),
            queue_id: 0,
            start_offset: 5,
            max_count: 3,
            max_wait_ms: 100,
            ack_timeout_ms: 1_000,
            flags: crate::wire::delivery::RECEIVE_ORDERLY,
            tag_expression: "a".into(),
        });
        assert!(r.orderly && r.max_wait_ms == 100 && r.ack_timeout_ms == 1_000);
    }
}
