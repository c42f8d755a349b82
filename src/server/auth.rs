//! Who sent a request: the frame's signature (if any) checked against the
//! ACL, shared by the broker's and the name server's adapters.

use std::net::IpAddr;

use crate::acl::{Acl, Denied, Identity, Signature};
use crate::client::remoting::signed_fields;
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
    let fields = signed_fields(frame, &auth.access_key, auth.timestamp_ms);
    let sig = Signature {
        fields,
        signature: &auth.signature,
    };
    acl.authenticate(Some(&sig), peer, now_ms)
}
