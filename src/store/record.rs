//! The record format shared by the commitlog and by pull/query responses
//! (`docs/protocol.md` §6), and message ids.
//!
//! A record is self-delimiting (its first field is its size) and carries a
//! CRC-32C over everything after the CRC field, so recovery can find the last
//! whole record after a crash.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut, Bytes};

use crate::message::{PROPERTY_KEYS, PROPERTY_TAGS};
use crate::wire::buf::{self, DecodeError, Reader};

/// Magic of a message record.
pub const RECORD_MAGIC: u32 = 0xF3A7_0001;
/// Magic of the filler that pads a segment's end.
pub const BLANK_MAGIC: u32 = 0xF3A7_00FF;
/// Bytes of a blank filler that carry meaning (size and magic).
pub const BLANK_HEADER_LEN: usize = 8;
/// Offset of the first byte the CRC covers.
const CRC_START: usize = 12;
/// Fixed-size part before the hosts.
const FIXED_LEN: usize = 56;

/// Everything needed to write one record except its position.
#[derive(Debug, Clone)]
pub struct RecordFields<'a> {
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
    /// Topic name.
    pub topic: &'a str,
    /// Properties.
    pub properties: &'a BTreeMap<String, String>,
    /// Payload.
    pub body: &'a [u8],
}

impl RecordFields<'_> {
    /// Size of the encoded record.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN
            + buf::host_len(&self.born_host)
            + buf::host_len(&self.store_host)
            + 2
            + self.topic.len()
            + buf::props_len(self.properties)
            + 4
            + self.body.len()
    }

    /// Writes the record into the start of `dst`, which must hold at least
    /// [`Self::encoded_len`] bytes; returns the bytes written.
    pub fn encode_into(&self, dst: &mut [u8]) -> usize {
        let len = self.encoded_len();
        let head = len - self.body.len();
        dst[head..len].copy_from_slice(self.body);
        self.encode_head_into(&mut dst[..head]);
        len
    }

    /// Writes everything but the body's bytes (which follow it on disk) into
    /// `dst`, which must hold exactly `encoded_len() - body.len()` bytes. The
    /// CRC covers the body too, so a writer can send the body from where it
    /// already is instead of copying it next to its head.
    pub fn encode_head_into(&self, dst: &mut [u8]) {
        let len = self.encoded_len();
        {
            let mut w: &mut [u8] = &mut *dst;
            w.put_u32(len as u32);
            w.put_u32(RECORD_MAGIC);
            w.put_u32(0); // CRC, filled below
            w.put_u32(self.queue_id);
            w.put_u32(self.flags);
            w.put_u64(self.queue_offset);
            w.put_u64(self.phys_offset);
            w.put_u64(self.born_timestamp);
            w.put_u64(self.store_timestamp);
            w.put_u32(self.reconsume_times);
            buf::put_host(&mut w, &self.born_host);
            buf::put_host(&mut w, &self.store_host);
            buf::put_str16(&mut w, self.topic);
            buf::put_props(&mut w, self.properties);
            w.put_u32(self.body.len() as u32);
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&dst[CRC_START..]), self.body);
        dst[8..12].copy_from_slice(&crc.to_be_bytes());
    }
}

/// Writes a blank filler of `len` bytes (at least [`BLANK_HEADER_LEN`]).
pub fn encode_blank(dst: &mut [u8], len: usize) {
    let mut w: &mut [u8] = &mut dst[..BLANK_HEADER_LEN];
    w.put_u32(len as u32);
    w.put_u32(BLANK_MAGIC);
}

/// What the bytes at a position in a segment are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A whole record of this size whose CRC matches.
    Record(usize),
    /// Filler up to the segment's end.
    Blank,
    /// Zeroes, garbage, a torn record or a CRC mismatch: the log ends here.
    End,
}

/// Inspects the bytes at the start of `data` (which runs to the segment's
/// end) the way recovery does: size, magic, bounds and CRC.
pub fn probe(data: &[u8]) -> Probe {
    if data.len() < BLANK_HEADER_LEN {
        return Probe::End;
    }
    let size = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let magic = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    match magic {
        BLANK_MAGIC if size == data.len() => Probe::Blank,
        RECORD_MAGIC if size >= FIXED_LEN && size <= data.len() => {
            let stored = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
            if crc32c::crc32c(&data[CRC_START..size]) == stored {
                Probe::Record(size)
            } else {
                Probe::End
            }
        }
        _ => Probe::End,
    }
}

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
    pub fn decode(mut data: Bytes) -> Result<StoredRecord, DecodeError> {
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
        if crc32c::crc32c(&data[CRC_START..size]) != crc {
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

/// Reads fields of an encoded record without decoding (or allocating) the
/// rest: what the pull path needs per record to honour TTLs. The record's
/// CRC was checked when it was written; malformed bytes give `None`.
pub struct RecordView<'a>(pub &'a [u8]);

impl<'a> RecordView<'a> {
    /// The broker's store time, ms.
    pub fn store_timestamp(&self) -> Option<u64> {
        let b = self.0.get(44..52)?;
        Some(u64::from_be_bytes(b.try_into().ok()?))
    }

    /// The value of property `key`, if present.
    pub fn property(&self, key: &str) -> Option<&'a str> {
        let data = self.0;
        let mut pos = FIXED_LEN;
        for _ in 0..2 {
            pos += match *data.get(pos)? {
                4 => 1 + 4 + 2,
                6 => 1 + 16 + 2,
                _ => return None,
            };
        }
        let str16 = |pos: &mut usize| -> Option<&'a [u8]> {
            let len = u16::from_be_bytes([*data.get(*pos)?, *data.get(*pos + 1)?]) as usize;
            let s = data.get(*pos + 2..*pos + 2 + len)?;
            *pos += 2 + len;
            Some(s)
        };
        str16(&mut pos)?; // topic
        let count = u16::from_be_bytes([*data.get(pos)?, *data.get(pos + 1)?]);
        pos += 2;
        for _ in 0..count {
            let k = str16(&mut pos)?;
            let v = str16(&mut pos)?;
            if k == key.as_bytes() {
                return std::str::from_utf8(v).ok();
            }
        }
        None
    }
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
    fn record_view_reads_properties_without_decoding() {
        let mut props = BTreeMap::new();
        props.insert("A".to_string(), "1".to_string());
        props.insert("TTL".to_string(), "250".to_string());
        let f = fields(&props);
        let mut buf = vec![0u8; f.encoded_len()];
        f.encode_into(&mut buf);
        let view = RecordView(&buf);
        assert_eq!(view.property("TTL"), Some("250"));
        assert_eq!(view.property("A"), Some("1"));
        assert_eq!(view.property("B"), None);
        assert_eq!(view.store_timestamp(), Some(f.store_timestamp));
        for cut in 0..buf.len() {
            let _ = RecordView(&buf[..cut]).property("TTL"); // never panics
        }
    }

    fn fields(props: &BTreeMap<String, String>) -> RecordFields<'_> {
        RecordFields {
            queue_id: 3,
            flags: 7,
            queue_offset: 42,
            phys_offset: 4096,
            born_timestamp: 1,
            store_timestamp: 2,
            reconsume_times: 0,
            born_host: "127.0.0.1:5555".parse().unwrap(),
            store_host: "[::1]:10911".parse().unwrap(),
            topic: "orders",
            properties: props,
            body: b"payload",
        }
    }

    #[test]
    fn record_round_trips_and_probes() {
        let mut props = BTreeMap::new();
        props.insert(PROPERTY_TAGS.to_string(), "tagA".to_string());
        let f = fields(&props);
        let mut seg = vec![0u8; 1024];
        let n = f.encode_into(&mut seg);
        assert_eq!(n, f.encoded_len());
        assert_eq!(probe(&seg), Probe::Record(n));
        assert_eq!(probe(&seg[n..]), Probe::End, "zeroes end the log");
        let rec = StoredRecord::decode(Bytes::copy_from_slice(&seg[..n])).unwrap();
        assert_eq!(rec.topic, "orders");
        assert_eq!(rec.queue_offset, 42);
        assert_eq!(rec.tag(), Some("tagA"));
        assert_eq!(&rec.body[..], b"payload");
        assert_eq!(rec.size as usize, n);

        // Any flipped byte is caught by the CRC (or the size/magic checks).
        for i in 0..n {
            let mut bad = seg.clone();
            bad[i] ^= 0x40;
            assert_ne!(probe(&bad), Probe::Record(n), "flip at {i}");
            assert!(StoredRecord::decode(Bytes::copy_from_slice(&bad[..n])).is_err());
        }
        // Every truncation fails cleanly.
        for cut in 0..n {
            assert!(StoredRecord::decode(Bytes::copy_from_slice(&seg[..cut])).is_err());
        }
    }

    #[test]
    fn blank_filler_probes_as_blank() {
        let mut seg = vec![0u8; 64];
        encode_blank(&mut seg, 64);
        assert_eq!(probe(&seg), Probe::Blank);
        assert_eq!(probe(&seg[..32]), Probe::End);
    }

    #[test]
    fn a_head_and_its_body_written_apart_make_the_same_record() {
        let props: BTreeMap<String, String> = [("TAGS".to_string(), "t".to_string())].into();
        let body = vec![9u8; 700];
        let f = RecordFields {
            queue_id: 3,
            flags: 1,
            queue_offset: 42,
            phys_offset: 4096,
            born_timestamp: 5,
            store_timestamp: 6,
            reconsume_times: 0,
            born_host: "10.0.0.1:1".parse().unwrap(),
            store_host: "10.0.0.2:2".parse().unwrap(),
            topic: "orders",
            properties: &props,
            body: &body,
        };
        let mut whole = vec![0u8; f.encoded_len()];
        f.encode_into(&mut whole);
        let mut head = vec![0u8; f.encoded_len() - body.len()];
        f.encode_head_into(&mut head);
        head.extend_from_slice(&body);
        assert_eq!(head, whole);
        assert_eq!(probe(&whole), Probe::Record(whole.len()), "the CRC covers the body");
        let rec = StoredRecord::decode(Bytes::from(whole)).unwrap();
        assert_eq!((rec.queue_offset, &rec.body[..], rec.tag()), (42, &body[..], Some("t")));
    }

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
