//! Per-message delivery: `RECEIVE_MESSAGE`, `ACK_MESSAGE` and
//! `NACK_MESSAGE` (`docs/protocol.md` §5.5–§5.7). The broker tracks what
//! each group has in flight; consumers settle messages one by one.

use bytes::{BufMut, Bytes, BytesMut};

use super::buf::{self, DecodeError, Reader};
use super::control::validate_topic_name;
use super::pull::{PullStatus, MAX_PULL_COUNT};

/// Most offsets one ACK or NACK carries.
pub const MAX_SETTLE_COUNT: u32 = 4096;
/// Longest ack timeout a consumer may ask for (12 hours).
pub const MAX_ACK_TIMEOUT_MS: u32 = 12 * 3_600_000;

/// `RECEIVE_MESSAGE` flag: deliver the queue one message at a time, in order.
pub const RECEIVE_ORDERLY: u8 = 1;

/// A `RECEIVE_MESSAGE` request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveRequest {
    /// Consumer group (the in-flight table is per group and queue).
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Queue.
    pub queue_id: u32,
    /// Where a group with no committed offset on this queue starts.
    pub start_offset: u64,
    /// Most messages wanted (capped at 1024; 1 in orderly mode).
    pub max_count: u32,
    /// Long-poll: how long to wait when nothing is ready.
    pub max_wait_ms: u32,
    /// How long a delivered message stays invisible before it is
    /// redelivered unless acknowledged.
    pub ack_timeout_ms: u32,
    /// [`RECEIVE_ORDERLY`] or 0.
    pub flags: u8,
    /// Tag expression (as in `PULL_MESSAGE`); other messages are settled
    /// for this group unseen.
    pub tag_expression: String,
}

impl ReceiveRequest {
    /// True for orderly consumption.
    pub fn orderly(&self) -> bool {
        self.flags & RECEIVE_ORDERLY != 0
    }

    /// Encodes the body.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(40 + self.group.len() + self.topic.len() + self.tag_expression.len());
        buf::put_str16(&mut out, &self.group);
        buf::put_str16(&mut out, &self.topic);
        out.put_u32(self.queue_id);
        out.put_u64(self.start_offset);
        out.put_u32(self.max_count);
        out.put_u32(self.max_wait_ms);
        out.put_u32(self.ack_timeout_ms);
        out.put_u8(self.flags);
        buf::put_str16(&mut out, &self.tag_expression);
        out.freeze()
    }

    /// Decodes and checks a body.
    pub fn decode(body: Bytes) -> Result<ReceiveRequest, DecodeError> {
        let mut r = Reader::new(body);
        let req = ReceiveRequest {
            group: r.str16("group")?,
            topic: r.str16("topic")?,
            queue_id: r.u32("queue id")?,
            start_offset: r.u64("start offset")?,
            max_count: r.u32("max count")?,
            max_wait_ms: r.u32("max wait ms")?,
            ack_timeout_ms: r.u32("ack timeout ms")?,
            flags: r.u8("flags")?,
            tag_expression: r.str16("tag expression")?,
        };
        r.finish("receive request")?;
        validate_topic_name(&req.group).map_err(|e| DecodeError::invalid("group", e.to_string()))?;
        validate_topic_name(&req.topic)?;
        if req.max_count == 0 || req.max_count > MAX_PULL_COUNT {
            return Err(DecodeError::invalid(
                "max count",
                format!("must be 1 to {MAX_PULL_COUNT}"),
            ));
        }
        if req.ack_timeout_ms == 0 || req.ack_timeout_ms > MAX_ACK_TIMEOUT_MS {
            return Err(DecodeError::invalid(
                "ack timeout ms",
                format!("must be 1 to {MAX_ACK_TIMEOUT_MS}"),
            ));
        }
        if req.flags & !RECEIVE_ORDERLY != 0 {
            return Err(DecodeError::invalid("flags", format!("unknown bits {:#x}", req.flags)));
        }
        Ok(req)
    }
}

/// A `RECEIVE_MESSAGE` response body: like a pull response, but each
/// record is preceded by its delivery number (1 = first delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveResponse {
    /// `Found` or `NoNewMessage`.
    pub status: PullStatus,
    /// The group's committed offset on this queue.
    pub committed_offset: u64,
    /// One past the newest queue offset.
    pub max_offset: u64,
    /// (delivery number, raw record) pairs.
    pub deliveries: Vec<(u32, Bytes)>,
}

impl ReceiveResponse {
    /// Writes the fixed part; `count` (u32 delivery, record) pairs follow.
    pub fn put_head(out: &mut BytesMut, status: PullStatus, committed: u64, max: u64, count: u32) {
        out.put_u8(status as u8);
        out.put_u64(committed);
        out.put_u64(max);
        out.put_u32(count);
    }

    /// Encodes the body.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        Self::put_head(
            &mut out,
            self.status,
            self.committed_offset,
            self.max_offset,
            self.deliveries.len() as u32,
        );
        for (delivery, rec) in &self.deliveries {
            out.put_u32(*delivery);
            out.put_slice(rec);
        }
        out.freeze()
    }

    /// Decodes a body; each record is split off by its size field and left
    /// undecoded.
    pub fn decode(body: Bytes) -> Result<ReceiveResponse, DecodeError> {
        let mut r = Reader::new(body);
        let status = PullStatus::from_u8(r.u8("receive status")?)?;
        let committed_offset = r.u64("committed offset")?;
        let max_offset = r.u64("max offset")?;
        let count = r.u32("count")?;
        let mut deliveries = Vec::with_capacity((count as usize).min(r.remaining() / 8 + 1));
        for _ in 0..count {
            let delivery = r.u32("delivery")?;
            let rest = r.bytes(r.remaining(), "record")?;
            if rest.len() < 4 {
                return Err(DecodeError::invalid("record", "truncated"));
            }
            let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if size < 4 || size > rest.len() {
                return Err(DecodeError::invalid("record size", format!("{size}")));
            }
            deliveries.push((delivery, rest.slice(..size)));
            r = Reader::new(rest.slice(size..));
        }
        r.finish("receive response")?;
        Ok(ReceiveResponse {
            status,
            committed_offset,
            max_offset,
            deliveries,
        })
    }
}

/// An `ACK_MESSAGE` or `NACK_MESSAGE` request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleRequest {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Queue.
    pub queue_id: u32,
    /// NACK only: redeliver after the backoff (true) or dead-letter now.
    pub requeue: bool,
    /// Queue offsets of the messages settled.
    pub offsets: Vec<u64>,
}

impl SettleRequest {
    /// Encodes the body.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(16 + self.group.len() + self.topic.len() + 8 * self.offsets.len());
        buf::put_str16(&mut out, &self.group);
        buf::put_str16(&mut out, &self.topic);
        out.put_u32(self.queue_id);
        out.put_u8(u8::from(self.requeue));
        out.put_u32(self.offsets.len() as u32);
        for o in &self.offsets {
            out.put_u64(*o);
        }
        out.freeze()
    }

    /// Decodes and checks a body.
    pub fn decode(body: Bytes) -> Result<SettleRequest, DecodeError> {
        let mut r = Reader::new(body);
        let group = r.str16("group")?;
        let topic = r.str16("topic")?;
        let queue_id = r.u32("queue id")?;
        let requeue = match r.u8("requeue")? {
            0 => false,
            1 => true,
            other => return Err(DecodeError::invalid("requeue", format!("{other} is not 0 or 1"))),
        };
        let count = r.u32("offset count")?;
        if count == 0 || count > MAX_SETTLE_COUNT {
            return Err(DecodeError::invalid(
                "offset count",
                format!("must be 1 to {MAX_SETTLE_COUNT}"),
            ));
        }
        let mut offsets = Vec::with_capacity((count as usize).min(r.remaining() / 8));
        for _ in 0..count {
            offsets.push(r.u64("offset")?);
        }
        r.finish("settle request")?;
        validate_topic_name(&group).map_err(|e| DecodeError::invalid("group", e.to_string()))?;
        validate_topic_name(&topic)?;
        Ok(SettleRequest {
            group,
            topic,
            queue_id,
            requeue,
            offsets,
        })
    }
}

/// Encodes an ACK/NACK response body: u32 count of messages it settled
/// (offsets not in flight for the group are ignored).
pub fn encode_settled(count: u32) -> Bytes {
    Bytes::copy_from_slice(&count.to_be_bytes())
}

/// Decodes an ACK/NACK response body.
pub fn decode_settled(body: Bytes) -> Result<u32, DecodeError> {
    let mut r = Reader::new(body);
    let n = r.u32("settled count")?;
    r.finish("settle response")?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive() -> ReceiveRequest {
        ReceiveRequest {
            group: "g".into(),
            topic: "t".into(),
            queue_id: 2,
            start_offset: 7,
            max_count: 16,
            max_wait_ms: 500,
            ack_timeout_ms: 60_000,
            flags: RECEIVE_ORDERLY,
            tag_expression: "log.#".into(),
        }
    }

    #[test]
    fn receive_round_trips_and_rejects_bad_fields() {
        let req = receive();
        let enc = req.encode();
        assert_eq!(ReceiveRequest::decode(enc.clone()).unwrap(), req);
        assert!(req.orderly());
        for cut in 0..enc.len() {
            assert!(ReceiveRequest::decode(enc.slice(..cut)).is_err());
        }
        for bad in [
            ReceiveRequest {
                ack_timeout_ms: 0,
                ..receive()
            },
            ReceiveRequest {
                max_count: 0,
                ..receive()
            },
            ReceiveRequest { flags: 4, ..receive() },
            ReceiveRequest {
                group: "a b".into(),
                ..receive()
            },
        ] {
            assert!(ReceiveRequest::decode(bad.encode()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn receive_response_splits_records_by_size() {
        let rec = |n: u8| {
            let mut b = vec![0, 0, 0, 6, n, n];
            b[3] = 6;
            Bytes::from(b)
        };
        let resp = ReceiveResponse {
            status: PullStatus::Found,
            committed_offset: 3,
            max_offset: 9,
            deliveries: vec![(1, rec(1)), (4, rec(2))],
        };
        let enc = resp.encode();
        assert_eq!(ReceiveResponse::decode(enc.clone()).unwrap(), resp);
        for cut in 0..enc.len() {
            assert!(ReceiveResponse::decode(enc.slice(..cut)).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn settle_round_trips_and_bounds_its_count() {
        let req = SettleRequest {
            group: "g".into(),
            topic: "t".into(),
            queue_id: 0,
            requeue: true,
            offsets: vec![1, 5, 9],
        };
        let enc = req.encode();
        assert_eq!(SettleRequest::decode(enc.clone()).unwrap(), req);
        for cut in 0..enc.len() {
            assert!(SettleRequest::decode(enc.slice(..cut)).is_err());
        }
        let empty = SettleRequest { offsets: vec![], ..req };
        assert!(SettleRequest::decode(empty.encode()).is_err());
        assert_eq!(decode_settled(encode_settled(3)).unwrap(), 3);
    }
}
