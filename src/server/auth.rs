//! Who sent a request: the frame's signature (if any) checked against the
//! ACL, shared by the broker's and the name server's adapters.

use std::net::IpAddr;

use crate::acl::sign::{body_crc, SignedFields};
use crate::acl::{Acl, Denied, Identity, Signature};
use crate::wire::Frame;

/// The identity `frame` proves (see `acl::AclRules::authenticate`):
/// [`Identity::Whitelisted`] for every request while ACL is off, without
/// reading the signature.
pub fn identify(acl: &Acl, frame: &Frame, peer: IpAddr, now_ms: u64) -> Result<Identity, Denied> {
    if !acl.enabled() {
        return Ok(Identity::Whitelisted);
    }
    let Some(auth) = frame.auth.as_deref() else {
        return acl.authenticate(None, peer, now_ms);
    };
    let fields = SignedFields {
        code: frame.code,
        kind: frame.kind as u8,
        timestamp_ms: auth.timestamp_ms,
        access_key: &auth.access_key,
        header: &frame.header,
        body_len: frame.body_len() as u32,
        body_crc: body_crc(std::iter::once(&frame.body[..]).chain(frame.body_tail.iter().map(|b| &b[..]))),
    };
    let sig = Signature {
        fields,
        signature: &auth.signature,
    };
    acl.authenticate(Some(&sig), peer, now_ms)
}
