//! `SEND_MESSAGE`: a batch of messages for one topic queue, and the offsets
//! the broker stored them at (`docs/protocol.md` §5.1, §5.2).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};

use super::buf::{self, DecodeError, Reader};
use super::control::validate_topic_name;
pub use crate::record::StoredAt;

/// One message of a send batch: everything but where it gets stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendEntry {
    /// Application flags, stored as given.
    pub flags: u32,
    /// When the producer created it, ms since the Unix epoch.
    pub born_timestamp: u64,
    /// Tags (`TAGS`), keys (`KEYS`) and user properties.
    pub properties: BTreeMap<String, String>,
    /// The payload.
    pub body: Bytes,
}

impl SendEntry {
    fn encoded_len(&self) -> usize {
        4 + 8 + buf::props_len(&self.properties) + 4 + self.body.len()
    }
}

/// A `SEND_MESSAGE` request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// Destination topic.
    pub topic: String,
    /// Destination queue.
    pub queue_id: u32,
    /// The batch, stored contiguously in this order.
    pub entries: Vec<SendEntry>,
}

impl SendRequest {
    /// Checks the fields an encoder cannot represent.
    pub fn validate(&self) -> Result<(), DecodeError> {
        validate_topic_name(&self.topic)?;
        if self.entries.is_empty() {
            return Err(DecodeError::invalid("messages", "a batch needs at least one message"));
        }
        for e in &self.entries {
            buf::check_props(&e.properties)?;
            if e.body.len() > u32::MAX as usize {
                return Err(DecodeError::invalid("body", "longer than 4 GiB"));
            }
        }
        Ok(())
    }

    /// Encodes the body.
    pub fn encode(&self) -> Bytes {
        let len = 2 + self.topic.len() + 8 + self.entries.iter().map(SendEntry::encoded_len).sum::<usize>();
        let mut out = BytesMut::with_capacity(len);
        buf::put_str16(&mut out, &self.topic);
        out.put_u32(self.queue_id);
        out.put_u32(self.entries.len() as u32);
        for e in &self.entries {
            out.put_u32(e.flags);
            out.put_u64(e.born_timestamp);
            buf::put_props(&mut out, &e.properties);
            buf::put_bytes32(&mut out, &e.body);
        }
        out.freeze()
    }

    /// Decodes a body; message bodies are slices of `body` (no copy).
    pub fn decode(body: Bytes) -> Result<SendRequest, DecodeError> {
        let mut r = Reader::new(body);
        let topic = r.str16("topic")?;
        validate_topic_name(&topic)?;
        let queue_id = r.u32("queue id")?;
        let count = r.u32("message count")? as usize;
        if count == 0 {
            return Err(DecodeError::invalid("message count", "must be at least 1"));
        }
        // Each message takes at least 18 bytes: never trust `count` for an
        // allocation larger than the input could describe.
        let mut entries = Vec::with_capacity(count.min(r.remaining() / 18 + 1));
        for _ in 0..count {
            entries.push(SendEntry {
                flags: r.u32("flags")?,
                born_timestamp: r.u64("born timestamp")?,
                properties: r.props("properties")?,
                body: r.bytes32("body")?,
            });
        }
        r.finish("send request")?;
        Ok(SendRequest {
            topic,
            queue_id,
            entries,
        })
    }
}

/// A `SEND_MESSAGE` response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResponse {
    /// The queue the batch went to.
    pub queue_id: u32,
    /// The broker's address; with a physical offset it forms a message id.
    pub store_host: SocketAddr,
    /// One entry per message, in batch order.
    pub stored: Vec<StoredAt>,
}

impl SendResponse {
    /// Encodes the body.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(8 + buf::host_len(&self.store_host) + 16 * self.stored.len());
        out.put_u32(self.queue_id);
        buf::put_host(&mut out, &self.store_host);
        out.put_u32(self.stored.len() as u32);
        for s in &self.stored {
            out.put_u64(s.queue_offset);
            out.put_u64(s.phys_offset);
        }
        out.freeze()
    }

    /// Decodes a body.
    pub fn decode(body: Bytes) -> Result<SendResponse, DecodeError> {
        let mut r = Reader::new(body);
        let queue_id = r.u32("queue id")?;
        let store_host = r.host("store host")?;
        let count = r.u32("count")? as usize;
        let mut stored = Vec::with_capacity(count.min(r.remaining() / 16));
        for _ in 0..count {
            stored.push(StoredAt {
                queue_offset: r.u64("queue offset")?,
                phys_offset: r.u64("physical offset")?,
            });
        }
        r.finish("send response")?;
        Ok(SendResponse {
            queue_id,
            store_host,
            stored,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SendRequest {
        let mut props = BTreeMap::new();
        props.insert("TAGS".into(), "a".into());
        props.insert("color".into(), "red".into());
        SendRequest {
            topic: "orders".into(),
            queue_id: 3,
            entries: vec![
                SendEntry {
                    flags: 1,
                    born_timestamp: 1_700_000_000_000,
                    properties: props,
                    body: Bytes::from_static(b"hello"),
                },
                SendEntry {
                    flags: 0,
                    born_timestamp: 2,
                    properties: BTreeMap::new(),
                    body: Bytes::new(),
                },
            ],
        }
    }

    #[test]
    fn send_request_round_trips_and_prefixes_fail_cleanly() {
        let req = request();
        req.validate().unwrap();
        let enc = req.encode();
        assert_eq!(SendRequest::decode(enc.clone()).unwrap(), req);
        for cut in 0..enc.len() {
            assert!(SendRequest::decode(enc.slice(..cut)).is_err());
        }
    }

    #[test]
    fn send_request_rejects_bad_fields() {
        let mut req = request();
        req.entries.clear();
        assert!(req.validate().is_err());
        let mut req = request();
        req.topic = "bad topic".into();
        assert!(SendRequest::decode(req.encode()).is_err());
        // A huge count with no data is an error, not a huge allocation.
        let mut out = BytesMut::new();
        buf::put_str16(&mut out, "t");
        out.put_u32(0);
        out.put_u32(u32::MAX);
        assert!(SendRequest::decode(out.freeze()).is_err());
    }

    #[test]
    fn send_response_round_trips() {
        let resp = SendResponse {
            queue_id: 2,
            store_host: "127.0.0.1:10911".parse().unwrap(),
            stored: vec![
                StoredAt {
                    queue_offset: 0,
                    phys_offset: 0,
                },
                StoredAt {
                    queue_offset: 1,
                    phys_offset: 310,
                },
            ],
        };
        let enc = resp.encode();
        assert_eq!(SendResponse::decode(enc.clone()).unwrap(), resp);
        for cut in 0..enc.len() {
            assert!(SendResponse::decode(enc.slice(..cut)).is_err());
        }
    }
}
