//! The store's side of the record format (`docs/protocol.md` §6): encoding
//! records and segment fillers, probing them during recovery, and reading
//! fields in place. The decoded view and message ids, which clients use too,
//! live in [`crate::record`] and are re-exported here.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::BufMut;

use crate::codec as buf;
use crate::record::CRC_START;
pub(crate) use crate::record::FIXED_LEN;
pub use crate::record::{MessageId, StoredRecord, RECORD_MAGIC};

/// Magic of the filler that pads a segment's end.
pub const BLANK_MAGIC: u32 = 0xF3A7_00FF;
/// Bytes of a blank filler that carry meaning (size and magic).
pub const BLANK_HEADER_LEN: usize = 8;

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

/// True when `data` is exactly one whole record whose CRC matches: what a
/// reader checks before serving a record (a CRC-32C over its bytes).
pub fn is_intact(data: &[u8]) -> bool {
    probe(data) == Probe::Record(data.len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::PROPERTY_TAGS;
    use bytes::Bytes;

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
}
