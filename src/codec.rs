//! Primitive encodings shared by every wire command and by stored records:
//! big-endian integers, `str16`, `bytes32`, `host` and `props`.
//!
//! A neutral module: both the wire codec ([`crate::wire`], which re-exports
//! it as `wire::buf`) and the store ([`crate::store`], the record format)
//! build on it without depending on each other.
//!
//! Also [`human_bytes`], the one way sizes are written for people.
//!
//! Decoding never panics: every read checks the remaining length first and
//! reports a [`DecodeError`] naming the field that was short or invalid.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes};

/// Why a header, body or record did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("truncated: {field} needs {needed} more bytes, {available} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A field's value is not allowed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field being read.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl DecodeError {
    /// Shorthand for an [`DecodeError::Invalid`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        DecodeError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// A cursor over received bytes. Byte-string fields are returned as cheap
/// slices of the underlying [`Bytes`] (no copy).
#[derive(Debug, Clone)]
pub struct Reader {
    data: Bytes,
    pos: usize,
}

impl Reader {
    /// Reads `data` from its start.
    pub fn new(data: Bytes) -> Self {
        Reader { data, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Position from the start of the input.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Borrows the next `n` bytes. Fixed-size fields and strings are read
    /// through this, not [`Reader::take`]: slicing `Bytes` costs an atomic
    /// reference-count update, which showed up in decode profiles.
    fn take_slice(&mut self, n: usize, field: &'static str) -> Result<&[u8], DecodeError> {
        let available = self.remaining();
        if available < n {
            return Err(DecodeError::Truncated {
                field,
                needed: n,
                available,
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.data[start..start + n])
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        self.take_slice(n, field)?;
        Ok(self.data.slice(self.pos - n..self.pos))
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take_slice(N, field)?);
        Ok(out)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        self.take_slice(n, field).map(|_| ())
    }

    /// One byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A big-endian u16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// A big-endian u32.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// A big-endian u64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Exactly `n` raw bytes.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        self.take(n, field)
    }

    /// A `str16`: u16 length then UTF-8.
    pub fn str16(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u16(field)? as usize;
        let raw = self.take_slice(len, field)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::invalid(field, "not UTF-8"))
    }

    /// A `bytes32`: u32 length then bytes.
    pub fn bytes32(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u32(field)? as usize;
        self.take(len, field)
    }

    /// A `host`: family byte, address bytes, port.
    pub fn host(&mut self, field: &'static str) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8(field)? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>(field)?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>(field)?)),
            other => return Err(DecodeError::invalid(field, format!("address family {other}"))),
        };
        let port = self.u16(field)?;
        Ok(SocketAddr::new(ip, port))
    }

    /// A `props` map: u16 count then key/value `str16` pairs.
    pub fn props(&mut self, field: &'static str) -> Result<BTreeMap<String, String>, DecodeError> {
        let count = self.u16(field)?;
        let mut map = BTreeMap::new();
        for _ in 0..count {
            let key = self.str16(field)?;
            let value = self.str16(field)?;
            if map.insert(key, value).is_some() {
                return Err(DecodeError::invalid(field, "duplicate property key"));
            }
        }
        Ok(map)
    }

    /// Fails unless every byte was read.
    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(DecodeError::invalid(
                what,
                format!("{} trailing bytes", self.remaining()),
            ))
        }
    }
}

/// Checks that `s` fits a `str16`.
pub fn check_str16(field: &'static str, s: &str) -> Result<(), DecodeError> {
    if s.len() > u16::MAX as usize {
        return Err(DecodeError::invalid(field, "longer than 65535 bytes"));
    }
    Ok(())
}

/// Writes a `str16`. The caller checked the length with [`check_str16`];
/// longer strings are truncated rather than corrupting the stream.
pub fn put_str16(dst: &mut impl BufMut, s: &str) {
    let len = s.len().min(u16::MAX as usize);
    dst.put_u16(len as u16);
    dst.put_slice(&s.as_bytes()[..len]);
}

/// Writes a `bytes32`.
pub fn put_bytes32(dst: &mut impl BufMut, b: &[u8]) {
    dst.put_u32(b.len() as u32);
    dst.put_slice(b);
}

/// Encoded length of a `host`.
pub fn host_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 1 + 4 + 2,
        SocketAddr::V6(_) => 1 + 16 + 2,
    }
}

/// Writes a `host`.
pub fn put_host(dst: &mut impl BufMut, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            dst.put_u8(4);
            dst.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            dst.put_u8(6);
            dst.put_slice(&ip.octets());
        }
    }
    dst.put_u16(addr.port());
}

/// Encoded length of a `props` map.
pub fn props_len(props: &BTreeMap<String, String>) -> usize {
    2 + props.iter().map(|(k, v)| 4 + k.len() + v.len()).sum::<usize>()
}

/// Checks that a property map fits the `props` encoding.
pub fn check_props(props: &BTreeMap<String, String>) -> Result<(), DecodeError> {
    if props.len() > u16::MAX as usize {
        return Err(DecodeError::invalid("properties", "more than 65535"));
    }
    for (k, v) in props {
        if k.is_empty() {
            return Err(DecodeError::invalid("properties", "empty key"));
        }
        check_str16("property key", k)?;
        check_str16("property value", v)?;
    }
    Ok(())
}

/// Writes a `props` map (BTreeMap order is the required ascending order).
pub fn put_props(dst: &mut impl BufMut, props: &BTreeMap<String, String>) {
    dst.put_u16(props.len().min(u16::MAX as usize) as u16);
    for (k, v) in props.iter().take(u16::MAX as usize) {
        put_str16(dst, k);
        put_str16(dst, v);
    }
}

/// `1.5 GiB`, `320 MiB`, `12 KiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn primitives_round_trip() {
        let mut props = BTreeMap::new();
        props.insert("KEYS".to_string(), "a b".to_string());
        props.insert("TAGS".to_string(), "t".to_string());
        let v4: SocketAddr = "10.1.2.3:10911".parse().unwrap();
        let v6: SocketAddr = "[::1]:9876".parse().unwrap();
        let mut out = BytesMut::new();
        put_str16(&mut out, "topic-é");
        put_bytes32(&mut out, b"\x00\xffbody");
        put_host(&mut out, &v4);
        put_host(&mut out, &v6);
        put_props(&mut out, &props);
        assert_eq!(
            out.len(),
            2 + "topic-é".len() + 4 + 6 + host_len(&v4) + host_len(&v6) + props_len(&props)
        );
        let mut r = Reader::new(out.freeze());
        assert_eq!(r.str16("s").unwrap(), "topic-é");
        assert_eq!(&r.bytes32("b").unwrap()[..], b"\x00\xffbody");
        assert_eq!(r.host("h").unwrap(), v4);
        assert_eq!(r.host("h").unwrap(), v6);
        assert_eq!(r.props("p").unwrap(), props);
        r.finish("all").unwrap();
    }

    #[test]
    fn short_input_is_an_error_not_a_panic() {
        let mut r = Reader::new(Bytes::from_static(&[0, 5, b'a']));
        assert!(matches!(
            r.str16("topic"),
            Err(DecodeError::Truncated { field: "topic", .. })
        ));
        let mut r = Reader::new(Bytes::from_static(&[9, 1, 2]));
        assert!(matches!(r.host("host"), Err(DecodeError::Invalid { .. })));
    }

    #[test]
    fn duplicate_property_keys_are_rejected() {
        let mut out = BytesMut::new();
        out.put_u16(2);
        for _ in 0..2 {
            put_str16(&mut out, "k");
            put_str16(&mut out, "v");
        }
        assert!(Reader::new(out.freeze()).props("p").is_err());
    }
}
