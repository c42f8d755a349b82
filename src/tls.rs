//! TLS (rustls) for the ports a broker or name server listens on and the
//! connections clients open. Placeholder: filled in by the TLS work.

/// How a client connection speaks TLS.
#[derive(Debug)]
pub struct ClientTls;
