//! `PULL_MESSAGE`: read a topic queue from an offset, optionally waiting for
//! new messages (`docs/protocol.md` §5.3, §5.4).

use bytes::{BufMut, Bytes, BytesMut};

use super::buf::{self, DecodeError, Reader};
use super::control::validate_topic_name;

/// Most messages one pull returns; larger requests are capped.
pub const MAX_PULL_COUNT: u32 = 1024;

/// A `PULL_MESSAGE` request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// Topic to read.
    pub topic: String,
    /// Queue to read.
    pub queue_id: u32,
    /// First queue offset wanted.
    pub offset: u64,
    /// Most messages wanted (capped at [`MAX_PULL_COUNT`]).
    pub max_count: u32,
    /// Long-poll: how long to wait for a message when none is there.
    pub max_wait_ms: u32,
    /// Empty or `*` for every message, else tags joined by `||`.
    pub tag_expression: String,
}

impl PullRequest {
    /// Encodes the body.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(24 + self.topic.len() + self.tag_expression.len());
        buf::put_str16(&mut out, &self.topic);
        out.put_u32(self.queue_id);
        out.put_u64(self.offset);
        out.put_u32(self.max_count);
        out.put_u32(self.max_wait_ms);
        buf::put_str16(&mut out, &self.tag_expression);
        out.freeze()
    }

    /// Decodes a body.
    pub fn decode(body: Bytes) -> Result<PullRequest, DecodeError> {
        let mut r = Reader::new(body);
        let req = PullRequest {
            topic: r.str16("topic")?,
            queue_id: r.u32("queue id")?,
            offset: r.u64("offset")?,
            max_count: r.u32("max count")?,
            max_wait_ms: r.u32("max wait ms")?,
            tag_expression: r.str16("tag expression")?,
        };
        r.finish("pull request")?;
        validate_topic_name(&req.topic)?;
        if req.max_count == 0 {
            return Err(DecodeError::invalid("max count", "must be at least 1"));
        }
        Ok(req)
    }
}

/// How a pull went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullStatus {
    /// At least one message is returned.
    Found = 0,
    /// Nothing at or after the offset (after waiting).
    NoNewMessage = 1,
    /// Entries were scanned but none matched the tag expression.
    NoMatched = 2,
    /// The offset was outside `[min, max]`; `next_offset` says where to go.
    OffsetMoved = 3,
}

impl PullStatus {
    /// The status for a wire byte.
    pub fn from_u8(v: u8) -> Result<PullStatus, DecodeError> {
        Ok(match v {
            0 => PullStatus::Found,
            1 => PullStatus::NoNewMessage,
            2 => PullStatus::NoMatched,
            3 => PullStatus::OffsetMoved,
            other => return Err(DecodeError::invalid("pull status", format!("{other}"))),
        })
    }
}

/// A `PULL_MESSAGE` response body. `records` holds `count` records in the
/// store's record format (`docs/protocol.md` §6), back to back, exactly as
/// they sit in the commitlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullResponse {
    /// How the pull went.
    pub status: PullStatus,
    /// Where the next pull should start.
    pub next_offset: u64,
    /// Smallest queue offset still stored.
    pub min_offset: u64,
    /// One past the newest queue offset.
    pub max_offset: u64,
    /// Number of records.
    pub count: u32,
    /// The records, back to back.
    pub records: Bytes,
}

/// Bytes of a pull response before its records.
pub const PULL_RESPONSE_HEAD_LEN: usize = 1 + 8 + 8 + 8 + 4;

impl PullResponse {
    /// Writes the fixed part; the caller appends `count` records after it.
    /// Lets the broker copy records from the store straight into the frame.
    pub fn put_head(out: &mut BytesMut, status: PullStatus, next: u64, min: u64, max: u64, count: u32) {
        out.put_u8(status as u8);
        out.put_u64(next);
        out.put_u64(min);
        out.put_u64(max);
        out.put_u32(count);
    }

    /// Encodes the body.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(PULL_RESPONSE_HEAD_LEN + self.records.len());
        Self::put_head(
            &mut out,
            self.status,
            self.next_offset,
            self.min_offset,
            self.max_offset,
            self.count,
        );
        out.put_slice(&self.records);
        out.freeze()
    }

    /// Decodes a body; records stay undecoded (see `store::record`).
    pub fn decode(body: Bytes) -> Result<PullResponse, DecodeError> {
        let mut r = Reader::new(body);
        let status = PullStatus::from_u8(r.u8("pull status")?)?;
        let next_offset = r.u64("next offset")?;
        let min_offset = r.u64("min offset")?;
        let max_offset = r.u64("max offset")?;
        let count = r.u32("count")?;
        let records = r.bytes(r.remaining(), "records")?;
        Ok(PullResponse {
            status,
            next_offset,
            min_offset,
            max_offset,
            count,
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_request_round_trips_and_prefixes_fail_cleanly() {
        let req = PullRequest {
            topic: "t".into(),
            queue_id: 1,
            offset: 99,
            max_count: 32,
            max_wait_ms: 1000,
            tag_expression: "a || b".into(),
        };
        let enc = req.encode();
        assert_eq!(PullRequest::decode(enc.clone()).unwrap(), req);
        for cut in 0..enc.len() {
            assert!(PullRequest::decode(enc.slice(..cut)).is_err());
        }
    }

    #[test]
    fn pull_response_round_trips() {
        let resp = PullResponse {
            status: PullStatus::Found,
            next_offset: 5,
            min_offset: 0,
            max_offset: 10,
            count: 1,
            records: Bytes::from_static(b"rec"),
        };
        assert_eq!(PullResponse::decode(resp.encode()).unwrap(), resp);
        assert!(PullResponse::decode(Bytes::from_static(&[9; 40])).is_err());
    }
}
