//! TLS (rustls) for the ports a broker or name server listens on and the
//! connections clients open. Placeholder: filled in by the TLS work.

use std::path::Path;

/// How a client connection speaks TLS.
#[derive(Debug)]
pub struct ClientTls;

impl ClientTls {
    /// A client trusting `ca` (PEM; `None`: the built-in web roots) and,
    /// for mutual TLS, presenting `cert` and `key` (PEM).
    pub fn from_files(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<ClientTls, String> {
        let _ = (ca, cert, key);
        Err("TLS is not available in this build yet".into())
    }
}
