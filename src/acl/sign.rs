//! Request signatures: HMAC-SHA256 (the `hmac` and `sha2` crates) with the
//! account's secret key over what a request asks for.
//!
//! Signed, in this order (`docs/protocol.md` §10): the tag `FMQ-SIG-1`,
//! the command code (u16), the frame kind (u8), the timestamp (u64 ms),
//! the access key (u8 length + bytes), the header (u32 length + bytes) and
//! the body's length (u32) and CRC32C (u32). The header names the resource
//! (topic, group, queue, offsets), so it is signed whole; the body is bound
//! by length and checksum only, which keeps signing off the produce path's
//! hot loop. Its integrity against an attacker on the path is TLS's job
//! (`docs/security.md`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of a signature.
pub const SIGNATURE_LEN: usize = 32;

/// What one request's signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedFields<'a> {
    /// Command code.
    pub code: u16,
    /// Frame kind (request or oneway), without flags.
    pub kind: u8,
    /// When the client signed, ms since the epoch.
    pub timestamp_ms: u64,
    /// The signing account.
    pub access_key: &'a str,
    /// The command's header.
    pub header: &'a [u8],
    /// The body's length.
    pub body_len: u32,
    /// The body's CRC32C.
    pub body_crc: u32,
}

impl SignedFields<'_> {
    fn mac(&self, secret: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length; new_from_slice cannot fail for it.
        let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        mac.update(b"FMQ-SIG-1");
        mac.update(&self.code.to_be_bytes());
        mac.update(&[self.kind]);
        mac.update(&self.timestamp_ms.to_be_bytes());
        mac.update(&[self.access_key.len().min(255) as u8]);
        mac.update(self.access_key.as_bytes());
        mac.update(&(self.header.len() as u32).to_be_bytes());
        mac.update(self.header);
        mac.update(&self.body_len.to_be_bytes());
        mac.update(&self.body_crc.to_be_bytes());
        mac
    }

    /// The signature with `secret`.
    pub fn sign(&self, secret: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.mac(secret).finalize().into_bytes().into()
    }

    /// True when `signature` is this request's signature with `secret`
    /// (compared in constant time).
    pub fn verify(&self, secret: &[u8], signature: &[u8]) -> bool {
        self.mac(secret).verify_slice(signature).is_ok()
    }
}

/// True when `a` and `b` are the same secret, compared in constant time
/// (through MACs of both under a fixed key, so the time taken does not
/// tell where they first differ).
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    const KEY: &[u8] = b"ferromq-secret-compare";
    let mac = |v: &[u8]| {
        let mut m = match Hmac::<Sha256>::new_from_slice(KEY) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        };
        m.update(v);
        m
    };
    mac(a).verify_slice(&mac(b).finalize().into_bytes()).is_ok()
}

/// The CRC32C of a body sent in pieces.
pub fn body_crc<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u32 {
    parts.into_iter().fold(0, crc32c::crc32c_append)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(header: &[u8]) -> SignedFields<'_> {
        SignedFields {
            code: 10,
            kind: 0,
            timestamp_ms: 1_700_000_000_000,
            access_key: "writer",
            header,
            body_len: 3,
            body_crc: body_crc([&b"a"[..], b"bc"]),
        }
    }

    #[test]
    fn a_signature_verifies_with_its_secret_and_nothing_else() {
        let f = fields(b"{\"topic\":\"orders\"}");
        let sig = f.sign(b"writer-secret-01");
        assert!(f.verify(b"writer-secret-01", &sig));
        assert!(!f.verify(b"writer-secret-02", &sig));
        assert!(!fields(b"{\"topic\":\"orderz\"}").verify(b"writer-secret-01", &sig));
        let later = SignedFields {
            timestamp_ms: f.timestamp_ms + 1,
            ..f
        };
        assert!(!later.verify(b"writer-secret-01", &sig));
        assert!(!f.verify(b"writer-secret-01", &sig[..31]));
        assert_eq!(body_crc([&b"abc"[..]]), f.body_crc);
        assert!(same_secret(b"root-secret-0001", b"root-secret-0001"));
        assert!(!same_secret(b"root-secret-0001", b"root-secret-0002"));
        assert!(!same_secret(b"root", b"root-secret-0001"));
    }
}
