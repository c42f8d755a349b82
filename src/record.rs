//! The record format's shared half (`docs/protocol.md` §6): a decoded
//! record ([`StoredRecord`]) and message ids ([`MessageId`]).
//!
//! A record is self-delimiting (its first field is its size) and carries a
//! CRC-32C over everything after the CRC field, so recovery can find the last
//! whole record after a crash. Records travel in their stored format in pull
//! and query responses, so clients decode them with this module; the store
//! (`crate::store::record`) adds encoding, recovery probing and in-place
//! reads. Neither the client nor this module depends on the store.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, Bytes};

use crate::codec::{DecodeError, Reader};
use crate::message::{PROPERTY_KEYS, PROPERTY_TAGS};

/// Magic of a message record.
pub const RECORD_MAGIC: u32 = 0xF3A7_0001;
/// Offset of the first byte the CRC covers.
pub(crate) const CRC_START: usize = 12;
/// Fixed-size part before the hosts.
pub(crate) const FIXED_LEN: usize = 56;

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Topic name.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
    /// Application flags.
    pub flags: u32,
    /// Offset within the topic queue.
    pub queue_offset: u64,
    /// Byte offset in the commitlog.
    pub phys_offset: u64,
    /// Producer's creation time, ms.
    pub born_timestamp: u64,
    /// Broker's store time, ms.
    pub store_timestamp: u64,
    /// How often it was redelivered.
    pub reconsume_times: u32,
    /// Producer's address.
    pub born_host: SocketAddr,
    /// Broker's address.
    pub store_host: SocketAddr,
    /// Properties (tags, keys, user properties).
    pub properties: BTreeMap<String, String>,
    /// Payload.
    pub body: Bytes,
    /// Encoded size.
    pub size: u32,
}

impl StoredRecord {
    /// The message id locating this record.
    pub fn msg_id(&self) -> MessageId {
        MessageId {
            store_host: self.store_host,
            phys_offset: self.phys_offset,
        }
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.properties.get(PROPERTY_TAGS).map(String::as_str)
    }

    /// The keys, space separated, if any.
    pub fn keys(&self) -> Option<&str> {
        self.properties.get(PROPERTY_KEYS).map(String::as_str)
    }

    /// Decodes one record from the start of `data`, checking its CRC;
    /// returns it and the bytes it used.
    pub fn decode(data: Bytes) -> Result<StoredRecord, DecodeError> {
        Self::decode_inner(data, true)
    }

    /// [`StoredRecord::decode`] of bytes whose CRC the caller has just
    /// checked (one CRC pass over a replicated chunk, not two).
    pub fn decode_checked(data: Bytes) -> Result<StoredRecord, DecodeError> {
        Self::decode_inner(data, false)
    }

    fn decode_inner(mut data: Bytes, check_crc: bool) -> Result<StoredRecord, DecodeError> {
        // The fixed head is read from the slice and the record narrowed in
        // place: no reference-count traffic until the body is sliced out.
        let size = Self::peek_size(&data)?;
        let field = |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let magic = field(4);
        if magic != RECORD_MAGIC {
            return Err(DecodeError::invalid("record magic", format!("{magic:#x}")));
        }
        if size < FIXED_LEN || size > data.len() {
            return Err(DecodeError::invalid("record size", format!("{size}")));
        }
        let crc = field(8);
        if check_crc && crc32c::crc32c(&data[CRC_START..size]) != crc {
            return Err(DecodeError::invalid("record crc", "checksum mismatch"));
        }
        data.truncate(size);
        data.advance(CRC_START);
        let mut r = Reader::new(data);
        let rec = StoredRecord {
            queue_id: r.u32("queue id")?,
            flags: r.u32("flags")?,
            queue_offset: r.u64("queue offset")?,
            phys_offset: r.u64("physical offset")?,
            born_timestamp: r.u64("born timestamp")?,
            store_timestamp: r.u64("store timestamp")?,
            reconsume_times: r.u32("reconsume times")?,
            born_host: r.host("born host")?,
            store_host: r.host("store host")?,
            topic: r.str16("topic")?,
            properties: r.props("properties")?,
            body: r.bytes32("body")?,
            size: size as u32,
        };
        r.finish("record")?;
        Ok(rec)
    }

    /// The size field of the record at the start of `data`.
    fn peek_size(data: &[u8]) -> Result<usize, DecodeError> {
        match data.get(..8) {
            Some(head) => Ok(u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize),
            None => Err(DecodeError::Truncated {
                field: "record head",
                needed: 8,
                available: data.len(),
            }),
        }
    }

    /// Decodes `count` records laid back to back.
    pub fn decode_all(mut data: Bytes, count: u32) -> Result<Vec<StoredRecord>, DecodeError> {
        let mut out = Vec::with_capacity((count as usize).min(4096));
        for _ in 0..count {
            let size = Self::peek_size(&data)?;
            if size < FIXED_LEN || size > data.len() {
                return Err(DecodeError::invalid("record size", format!("{size}")));
            }
            out.push(StoredRecord::decode(data.split_to(size))?);
        }
        if !data.is_empty() {
            return Err(DecodeError::invalid("records", "trailing bytes"));
        }
        Ok(out)
    }
}

/// Where one message of a batch was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredAt {
    /// Offset within the topic queue.
    pub queue_offset: u64,
    /// Byte offset of the record in the commitlog.
    pub phys_offset: u64,
}

/// Locates a record: the broker that stored it and its commitlog offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    /// Address of the storing broker.
    pub store_host: SocketAddr,
    /// Byte offset of the record in that broker's commitlog.
    pub phys_offset: u64,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hex digits into a stack buffer, written once: producers format
        // one id per acknowledged message, and `write!` per byte showed up
        // in the benchmark client's profile.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut raw = [0u8; 16 + 2 + 8];
        let ip_len = match self.store_host.ip() {
            IpAddr::V4(ip) => {
                raw[..4].copy_from_slice(&ip.octets());
                4
            }
            IpAddr::V6(ip) => {
                raw[..16].copy_from_slice(&ip.octets());
                16
            }
        };
        raw[ip_len..ip_len + 2].copy_from_slice(&self.store_host.port().to_be_bytes());
        raw[ip_len + 2..ip_len + 10].copy_from_slice(&self.phys_offset.to_be_bytes());
        let mut text = [0u8; 2 * 26];
        let len = 2 * (ip_len + 10);
        for (i, b) in raw[..ip_len + 10].iter().enumerate() {
            text[2 * i] = HEX[usize::from(b >> 4)];
            text[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        f.write_str(std::str::from_utf8(&text[..len]).map_err(|_| fmt::Error)?)
    }
}

impl std::str::FromStr for MessageId {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<MessageId, DecodeError> {
        let invalid = || DecodeError::invalid("message id", format!("{s:?} is not a FerroMQ message id"));
        if !s.is_ascii() {
            return Err(invalid());
        }
        let hex = |range: std::ops::Range<usize>| {
            s.get(range)
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(invalid)
        };
        let ip_len = match s.len() {
            28 => 4,
            52 => 16,
            _ => return Err(invalid()),
        };
        let mut ip = [0u8; 16];
        for (i, byte) in ip.iter_mut().take(ip_len).enumerate() {
            *byte = hex(i * 2..i * 2 + 2)? as u8;
        }
        let ip = if ip_len == 4 {
            IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(ip))
        };
        let port = hex(ip_len * 2..ip_len * 2 + 4)? as u16;
        let phys_offset = hex(ip_len * 2 + 4..s.len())?;
        Ok(MessageId {
            store_host: SocketAddr::new(ip, port),
            phys_offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_round_trip() {
        for host in ["10.0.0.7:10911", "[fe80::1]:9"] {
            let id = MessageId {
                store_host: host.parse().unwrap(),
                phys_offset: 0x1234_5678_9abc,
            };
            let text = id.to_string();
            assert_eq!(text.parse::<MessageId>().unwrap(), id);
        }
        assert_eq!(
            MessageId {
                store_host: "127.0.0.1:10911".parse().unwrap(),
                phys_offset: 1
            }
            .to_string(),
            "7f0000012a9f0000000000000001"
        );
        let v6 = MessageId {
            store_host: "[fe80::1]:9".parse().unwrap(),
            phys_offset: u64::MAX,
        };
        assert_eq!(v6.to_string(), "fe8000000000000000000000000000010009ffffffffffffffff");
        for bad in ["", "zz", "7f0000012a9f000000000000000g", "é"] {
            assert!(bad.parse::<MessageId>().is_err());
        }
    }
}
