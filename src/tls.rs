//! TLS (rustls, `ring` provider) for the ports a broker or name server
//! listens on and the connections clients open.
//!
//! * [`ServerTls`]: what a listener does with a new connection, per
//!   `[tls] mode` (RocketMQ's three modes):
//!   - `off`: no [`ServerTls`] at all, every connection is plain TCP;
//!   - `permissive`: the first byte is peeked (for at most
//!     [`SNIFF_TIMEOUT`]); `0x16` (a TLS handshake record, the
//!     ClientHello) starts a TLS session, anything else (or silence) a
//!     plain one;
//!   - `enforcing`: only TLS; a connection whose first byte is not a TLS
//!     handshake is closed cleanly (what it sent is read, then a FIN; no
//!     byte is written, no reset) so that the client can tell the user TLS
//!     is required.
//!
//!   With `[tls] client_ca` set, clients must present a certificate signed
//!   by that CA (mutual TLS).
//! * [`ClientTls`]: how a client (the CLI, the client library, a broker's
//!   own links to name servers and to its master) speaks TLS: the CA it
//!   trusts and, for mutual TLS, the certificate it presents. The server's
//!   name is checked against the host part of the address dialled
//!   (`127.0.0.1:10911` → IP address `127.0.0.1`, `mq.example:10911` → DNS
//!   name `mq.example`).
//! * [`Stream`], [`ReadHalf`], [`WriteHalf`]: a connection that is either
//!   plain or TLS. The plain variant is tokio's own socket halves, so plain
//!   connections keep their zero-copy vectored writes; the only cost is a
//!   `match` per poll.

use std::io::{self, IoSlice};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::config::{TlsMode, TlsSection};

/// First byte of a TLS record carrying a handshake message (the
/// ClientHello a TLS client sends first).
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;
/// How long a `permissive` port waits for a new connection's first byte
/// before treating it as plain (clients speak first, so a TLS client has
/// sent its ClientHello long before).
pub const SNIFF_TIMEOUT: Duration = Duration::from_secs(3);
/// The whole TLS handshake (first byte included) must complete within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an `enforcing` port keeps reading a refused plain connection
/// after its FIN, so that the close is clean (no reset for unread bytes).
const REFUSE_LINGER: Duration = Duration::from_secs(1);
/// Most bytes read from a refused plain connection before dropping it.
const REFUSE_MAX_BYTES: usize = 1 << 20;

/// The message a plain client shows when a server closed its connection
/// without answering anything: the usual cause is a port that requires TLS
/// (the other one a server at its connection limit).
pub const TLS_REQUIRED_HINT: &str =
    "the server closed the connection without answering: it may require TLS (retry with \
     --tls, and --tls-ca FILE for a private CA), or be at its connection limit";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file; an error names the file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("TLS certificate file {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_reader_iter(file)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("TLS certificate file {}: not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "TLS certificate file {}: no PEM certificate (\"-----BEGIN CERTIFICATE-----\") in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file; an
/// error names the file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("TLS key file {}: {e}", path.display()))?;
    match PrivateKeyDer::from_pem_reader(file) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(format!("TLS key file {}: no PEM private key in it", path.display())),
        Err(e) => Err(format!("TLS key file {}: not valid PEM: {e}", path.display())),
    }
}

/// A root store holding every certificate of the PEM file `path`.
fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("TLS CA file {}: unusable certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The name a client verifies the server's certificate against: the host
/// part of `addr` (`host:port`, `ip:port` or `[ipv6]:port`; a bare host is
/// taken whole).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(h, _)| h),
        None => match addr.rsplit_once(':') {
            // One colon: host:port; more: a bare IPv6 address.
            Some((h, _)) if !h.contains(':') => h,
            _ => addr,
        },
    };
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?} is not a name TLS can verify: {e}"))
}

/// How a client connection speaks TLS: the CAs it trusts and, for mutual
/// TLS, the certificate it presents.
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
    /// Presents a certificate (mutual TLS).
    presents_cert: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("presents_cert", &self.presents_cert)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// A client trusting `ca` (PEM; `None`: the built-in web roots) and,
    /// for mutual TLS, presenting `cert` and `key` (PEM).
    pub fn from_files(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<ClientTls, String> {
        let roots = match ca {
            Some(path) => load_roots(path)?,
            None => RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client setup: {e}"))?
            .with_root_certificates(roots);
        let (config, presents_cert) = match (cert, key) {
            (Some(cert), Some(key)) => {
                let chain = load_certs(cert)?;
                let key_der = load_key(key)?;
                let config = builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    format!(
                        "TLS client certificate {} with key {}: {e}",
                        cert.display(),
                        key.display()
                    )
                })?;
                (config, true)
            }
            (None, None) => (builder.with_no_client_auth(), false),
            (Some(_), None) => return Err("a TLS client certificate needs its key (--tls-key)".into()),
            (None, Some(_)) => return Err("a TLS client key needs its certificate (--tls-cert)".into()),
        };
        Ok(ClientTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            presents_cert,
        })
    }

    /// The `[tls]` client settings of a broker: `None` unless `client` is
    /// set; trusts `ca` (empty: the web roots) and, when `cert` and `key`
    /// are set, presents the process's own server certificate as its
    /// client certificate (for peers that require mutual TLS).
    pub fn from_section(section: &TlsSection) -> Result<Option<ClientTls>, String> {
        if !section.client {
            return Ok(None);
        }
        let path = |p: &Path| (!p.as_os_str().is_empty()).then(|| p.to_path_buf());
        let ca = path(&section.ca);
        let (cert, key) = match (path(&section.cert), path(&section.key)) {
            (Some(c), Some(k)) => (Some(c), Some(k)),
            _ => (None, None),
        };
        ClientTls::from_files(ca.as_deref(), cert.as_deref(), key.as_deref()).map(Some)
    }

    /// True when this client presents a certificate (mutual TLS).
    pub fn presents_cert(&self) -> bool {
        self.presents_cert
    }

    /// Runs the TLS handshake on `tcp`, dialled as `addr`, verifying the
    /// server's certificate against the host part of `addr`.
    pub async fn connect(&self, addr: &str, tcp: TcpStream) -> io::Result<Stream> {
        let name = server_name(addr).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        match self.connector.connect(name, tcp).await {
            Ok(tls) => Ok(Stream::Tls(Box::new(tls.into()))),
            Err(e) => Err(explain_client_error(e)),
        }
    }
}

/// A client handshake error, with a hint for the usual causes.
fn explain_client_error(e: io::Error) -> io::Error {
    let hint = match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidMessage(_)) | Some(rustls::Error::InappropriateMessage { .. }) => {
            " (the server does not seem to speak TLS on this port: is its [tls] mode off?)"
        }
        Some(rustls::Error::InvalidCertificate(_)) => " (check --tls-ca: the CA that signed the server's certificate)",
        Some(rustls::Error::AlertReceived(_)) => {
            " (the server refused the handshake: does it require a client certificate, --tls-cert/--tls-key?)"
        }
        _ if e.kind() == io::ErrorKind::UnexpectedEof => " (the server closed the connection during the handshake)",
        _ => "",
    };
    io::Error::new(e.kind(), format!("TLS handshake failed: {e}{hint}"))
}

/// What a failed read on a TLS connection means for the user, when it is
/// a TLS error (an alert from the server, a corrupt record); `None` for
/// other errors.
pub fn explain_read_error(e: &io::Error) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    let hint = match tls {
        rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired
            | rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::CertificateUnknown
            | rustls::AlertDescription::HandshakeFailure,
        ) => " (the server requires a client certificate signed by a CA it trusts: --tls-cert/--tls-key)",
        _ => "",
    };
    Some(format!("TLS: {tls}{hint}"))
}

/// What a listener with TLS does with its connections: the acceptor (the
/// server certificate and, for mutual TLS, the client CA) and the mode.
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    mode: TlsMode,
    mutual: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

/// What the first byte of a new connection says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS handshake record: a ClientHello.
    Tls,
    /// Something else, or nothing within the timeout.
    Plain,
    /// The peer closed before sending anything.
    Closed,
}

/// Peeks (without consuming) the first byte of `tcp`, waiting at most
/// `timeout`: [`Sniffed::Tls`] for `0x16`, [`Sniffed::Plain`] for any
/// other byte or none in time.
pub async fn sniff(tcp: &TcpStream, timeout: Duration) -> io::Result<Sniffed> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, tcp.peek(&mut first)).await {
        Err(_) => Ok(Sniffed::Plain),
        Ok(Ok(0)) => Ok(Sniffed::Closed),
        Ok(Ok(_)) if first[0] == TLS_HANDSHAKE_BYTE => Ok(Sniffed::Tls),
        Ok(Ok(_)) => Ok(Sniffed::Plain),
        Ok(Err(e)) => Err(e),
    }
}

/// Closes a refused connection cleanly (a plain client on an `enforcing`
/// port, a failed handshake): sends a FIN after what was already written
/// and reads what the client sends until it closes too (at most
/// [`REFUSE_LINGER`]), so that no reset destroys what was sent.
async fn close_cleanly(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    let mut scratch = [0u8; 4096];
    let mut read = 0usize;
    let drain = async {
        while read < REFUSE_MAX_BYTES {
            match tcp.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(REFUSE_LINGER, drain).await;
}

impl ServerTls {
    /// The `[tls]` section's listener settings: `None` when the mode is
    /// `off`; an error naming the file that cannot be used.
    pub fn from_section(section: &TlsSection) -> Result<Option<Arc<ServerTls>>, String> {
        if section.mode == TlsMode::Off {
            return Ok(None);
        }
        if section.cert.as_os_str().is_empty() || section.key.as_os_str().is_empty() {
            return Err("tls.mode permissive or enforcing needs tls.cert and tls.key".into());
        }
        let client_ca = (!section.client_ca.as_os_str().is_empty()).then_some(section.client_ca.as_path());
        ServerTls::new(section.mode, &section.cert, &section.key, client_ca).map(|t| Some(Arc::new(t)))
    }

    /// A listener in `mode` presenting `cert` (PEM chain) with `key`; with
    /// `client_ca`, clients must present a certificate it signed.
    pub fn new(mode: TlsMode, cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTls, String> {
        let chain = load_certs(cert)?;
        let key_der = load_key(key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS server setup: {e}"))?;
        let builder = match client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                    .build()
                    .map_err(|e| format!("TLS client CA file {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key_der)
            .map_err(|e| format!("TLS certificate {} with key {}: {e}", cert.display(), key.display()))?;
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            mode,
            mutual: client_ca.is_some(),
        })
    }

    /// The listener's mode.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// True when clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }

    /// Turns a new connection into a session stream as the mode says: TLS
    /// after a handshake, or plain (`permissive` only, or mode `off`). An
    /// error when the connection is refused (a plain client on an
    /// `enforcing` port, closed cleanly here), the handshake fails or takes
    /// longer than [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<Stream> {
        let sniffed = match self.mode {
            TlsMode::Off => return Ok(Stream::Plain(tcp)),
            TlsMode::Permissive => sniff(&tcp, SNIFF_TIMEOUT).await?,
            TlsMode::Enforcing => sniff(&tcp, HANDSHAKE_TIMEOUT).await?,
        };
        match sniffed {
            Sniffed::Closed => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before sending anything",
            )),
            Sniffed::Plain if self.mode == TlsMode::Permissive => Ok(Stream::Plain(tcp)),
            Sniffed::Plain => {
                close_cleanly(tcp).await;
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "plain connection refused: this port requires TLS",
                ))
            }
            Sniffed::Tls => {
                let handshake = self.acceptor.accept(tcp).into_fallible();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls.into()))),
                    Ok(Err((e, tcp))) => {
                        // The alert (e.g. "certificate required") is sent;
                        // close without a reset so the client reads it.
                        close_cleanly(tcp).await;
                        Err(io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))
                    }
                    Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
                }
            }
        }
    }
}

/// Why [`ServerTls::accept`] refused a connection, for the
/// `ferromq_tls_refused_total{reason}` counter: `plain` (a plain client on
/// an `enforcing` port), `closed` (gone before its first byte), `timeout`
/// (no handshake in time) or `handshake` (a failed handshake, e.g. no or
/// a wrong client certificate).
pub fn refusal_reason(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => "plain",
        io::ErrorKind::UnexpectedEof => "closed",
        io::ErrorKind::TimedOut => "timeout",
        _ => "handshake",
    }
}

type Tls = tokio_rustls::TlsStream<TcpStream>;

/// A connection that is plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (client or server side).
    Tls(Box<Tls>),
}

impl Stream {
    /// True for a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Splits into a reader and a writer that can be used by two tasks. A
    /// plain connection splits into tokio's owned halves (no lock, no
    /// copy); a TLS one into halves sharing the session.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

/// The reading half of a [`Stream`].
#[derive(Debug)]
pub enum ReadHalf {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// TLS.
    Tls(tokio::io::ReadHalf<Tls>),
}

/// The writing half of a [`Stream`].
#[derive(Debug)]
pub enum WriteHalf {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// TLS.
    Tls(tokio::io::WriteHalf<Tls>),
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteHalf::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Plain(w) => w.is_write_vectored(),
            WriteHalf::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tokio::net::TcpListener;

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A self-signed certificate for `localhost` / 127.0.0.1 and its key.
    fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (
            write(dir, "cert.pem", &cert.pem()),
            write(dir, "key.pem", &key.serialize_pem()),
        )
    }

    #[test]
    fn pem_loading_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = load_certs(&missing).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");

        let empty = write(dir.path(), "empty.pem", "");
        let err = load_certs(&empty).unwrap_err();
        assert!(err.contains("empty.pem") && err.contains("no PEM certificate"), "{err}");

        let garbage = write(
            dir.path(),
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let err = load_certs(&garbage).unwrap_err();
        assert!(err.contains("garbage.pem"), "{err}");

        let (cert, key) = self_signed(dir.path());
        // A certificate is not a key, and a key is not a certificate.
        let err = load_key(&cert).unwrap_err();
        assert!(err.contains("cert.pem") && err.contains("no PEM private key"), "{err}");
        let err = load_certs(&key).unwrap_err();
        assert!(err.contains("key.pem"), "{err}");
        assert!(load_key(&missing).unwrap_err().contains("missing.pem"));

        // The constructors pass the file names on.
        let err = ClientTls::from_files(Some(&missing), None, None).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
        let err = ClientTls::from_files(None, Some(&cert), Some(&missing)).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
        assert!(ClientTls::from_files(None, Some(&cert), None).is_err());
        let err = ServerTls::new(TlsMode::Enforcing, &cert, &empty, None).unwrap_err();
        assert!(err.contains("empty.pem"), "{err}");
        let err = ServerTls::new(TlsMode::Enforcing, &cert, &key, Some(&garbage)).unwrap_err();
        assert!(err.contains("garbage.pem"), "{err}");

        // And the good files work.
        assert!(ServerTls::new(TlsMode::Permissive, &cert, &key, Some(&cert))
            .unwrap()
            .is_mutual());
        assert!(ClientTls::from_files(Some(&cert), Some(&cert), Some(&key))
            .unwrap()
            .presents_cert());
        assert!(!ClientTls::from_files(None, None, None).unwrap().presents_cert());

        let off = TlsSection::default();
        assert!(ServerTls::from_section(&off).unwrap().is_none());
        assert!(ClientTls::from_section(&off).unwrap().is_none());
    }

    #[test]
    fn server_names_come_from_the_host_part() {
        assert_eq!(
            server_name("127.0.0.1:10911").unwrap(),
            ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
        );
        assert_eq!(
            server_name("[::1]:10911").unwrap(),
            ServerName::IpAddress(std::net::Ipv6Addr::LOCALHOST.into())
        );
        assert_eq!(
            server_name("mq.example:9876").unwrap(),
            ServerName::try_from("mq.example").unwrap()
        );
        assert!(server_name("bad name:1").is_err());
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn sniffing_tells_tls_from_plain_without_consuming() {
        let short = Duration::from_millis(200);

        let (mut client, server) = pair().await;
        client.write_all(&[TLS_HANDSHAKE_BYTE, 3, 1]).await.unwrap();
        assert_eq!(sniff(&server, short).await.unwrap(), Sniffed::Tls);
        // Peeking leaves the byte for the handshake.
        let mut first = [0u8; 1];
        let mut server = server;
        server.read_exact(&mut first).await.unwrap();
        assert_eq!(first[0], TLS_HANDSHAKE_BYTE);

        // A frame's length prefix is plain.
        let (mut client, server) = pair().await;
        client.write_all(&[0, 0, 0, 40]).await.unwrap();
        assert_eq!(sniff(&server, short).await.unwrap(), Sniffed::Plain);

        // Silence past the timeout is plain too.
        let (_client, server) = pair().await;
        assert_eq!(sniff(&server, short).await.unwrap(), Sniffed::Plain);

        // A peer that closes at once.
        let (client, server) = pair().await;
        drop(client);
        assert_eq!(sniff(&server, short).await.unwrap(), Sniffed::Closed);
    }

    #[tokio::test]
    async fn modes_accept_and_refuse_as_documented() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path());
        let client_tls = ClientTls::from_files(Some(&cert), None, None).unwrap();

        for mode in [TlsMode::Permissive, TlsMode::Enforcing] {
            let server_tls = Arc::new(ServerTls::new(mode, &cert, &key, None).unwrap());

            // A TLS client gets TLS, and bytes flow both ways.
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let st = server_tls.clone();
            let server = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let stream = st.accept(tcp).await.unwrap();
                assert!(stream.is_tls());
                let (mut r, mut w) = stream.into_split();
                let mut buf = [0u8; 5];
                r.read_exact(&mut buf).await.unwrap();
                let parts = [IoSlice::new(b"he"), IoSlice::new(&buf[2..])];
                let n = w.write_vectored(&parts).await.unwrap();
                w.write_all(&b"hello"[n..]).await.unwrap();
                w.flush().await.unwrap();
                w.shutdown().await.unwrap();
            });
            let tcp = TcpStream::connect(&addr).await.unwrap();
            let stream = client_tls.connect(&addr, tcp).await.unwrap();
            let (mut r, mut w) = stream.into_split();
            w.write_all(b"xxllo").await.unwrap();
            w.flush().await.unwrap();
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"hello");
            server.await.unwrap();

            // A plain client: served in permissive mode, refused cleanly
            // (an EOF, no reset, no byte) in enforcing mode.
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let st = server_tls.clone();
            let server = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                match st.accept(tcp).await {
                    Ok(stream) => {
                        assert!(!stream.is_tls());
                        let (mut r, mut w) = stream.into_split();
                        let mut buf = [0u8; 4];
                        r.read_exact(&mut buf).await.unwrap();
                        w.write_all(&buf).await.unwrap();
                        true
                    }
                    Err(e) => {
                        assert_eq!(refusal_reason(&e), "plain", "{e}");
                        false
                    }
                }
            });
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(&[0, 0, 0, 9]).await.unwrap();
            let mut got = Vec::new();
            let read = tcp.read_to_end(&mut got).await;
            let served = server.await.unwrap();
            match mode {
                TlsMode::Permissive => {
                    assert!(served);
                    assert_eq!(got, [0, 0, 0, 9]);
                }
                _ => {
                    assert!(!served);
                    assert!(read.is_ok(), "a clean close, not {read:?}");
                    assert!(got.is_empty());
                }
            }
        }
    }
}
