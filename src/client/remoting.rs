//! A multiplexed client connection: many requests in flight on one TCP
//! stream, responses matched by correlation id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::error::{ClientError, ClientResult};
use crate::acl::sign::{body_crc, SignedFields};
use crate::acl::Credentials;
use crate::wire::{AuthBlock, Command, Frame, FrameKind, Status};

/// How a connection authenticates and encrypts.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Signs every request with this account (ACL); `None`: unsigned.
    pub credentials: Option<Credentials>,
    /// Speaks TLS to the server; `None`: plain TCP.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
}

impl ConnectOptions {
    /// Signs `frame` (a request or oneway) with the credentials, if any.
    pub fn sign(&self, frame: &mut Frame) {
        let Some(c) = &self.credentials else { return };
        let timestamp_ms = crate::clock::now_millis();
        let signature = signed_fields(frame, &c.access_key, timestamp_ms).sign(c.secret_key.expose());
        frame.auth = Some(Box::new(AuthBlock {
            access_key: c.access_key.clone(),
            timestamp_ms,
            signature,
        }));
    }
}

/// What the signature of `frame` by `access_key` at `timestamp_ms` covers
/// (`docs/protocol.md` §10): the signer and the server derive it the same
/// way.
pub fn signed_fields<'a>(frame: &'a Frame, access_key: &'a str, timestamp_ms: u64) -> SignedFields<'a> {
    SignedFields {
        code: frame.code,
        kind: frame.kind as u8,
        timestamp_ms,
        access_key,
        header: &frame.header,
        body_len: frame.body_len() as u32,
        body_crc: body_crc(std::iter::once(&frame.body[..]).chain(frame.body_tail.iter().map(|b| &b[..]))),
    }
}

/// Largest response frame a client accepts.
pub const CLIENT_MAX_FRAME_BYTES: usize = 64 << 20;

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Frame>>>>;
type CloseReason = Arc<Mutex<Option<String>>>;

/// One connection to a broker or name server. Cheap to clone; clones share
/// the socket. Must be created inside a tokio runtime.
#[derive(Clone)]
pub struct RemotingConnection {
    addr: String,
    outbox: mpsc::Sender<Frame>,
    pending: Pending,
    next_id: Arc<AtomicU32>,
    closed: Arc<AtomicBool>,
    options: Arc<ConnectOptions>,
    /// Why the connection closed, when that is worth telling the user (see
    /// [`RemotingConnection::closed_error`]).
    close_reason: CloseReason,
}

impl std::fmt::Debug for RemotingConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotingConnection").field("addr", &self.addr).finish()
    }
}

impl RemotingConnection {
    /// Connects to `addr` within `timeout`, plain and unsigned. Frames the
    /// server pushes unasked are delivered to `pushes` when given, else
    /// dropped.
    pub async fn connect(
        addr: &str,
        timeout: Duration,
        pushes: Option<mpsc::UnboundedSender<Frame>>,
    ) -> ClientResult<RemotingConnection> {
        Self::connect_with(addr, timeout, pushes, Arc::new(ConnectOptions::default())).await
    }

    /// Connects to `addr` within `timeout` as `options` say (TLS, signed
    /// requests). Frames the server pushes unasked are delivered to
    /// `pushes` when given, else dropped.
    pub async fn connect_with(
        addr: &str,
        timeout: Duration,
        pushes: Option<mpsc::UnboundedSender<Frame>>,
        options: Arc<ConnectOptions>,
    ) -> ClientResult<RemotingConnection> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout {
                what: format!("connecting to {addr}"),
                millis: timeout.as_millis() as u64,
            })?
            .map_err(|source| ClientError::Io {
                addr: addr.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let plain = options.tls.is_none();
        let stream = match &options.tls {
            None => crate::tls::Stream::Plain(stream),
            // The handshake shares the connect timeout.
            Some(tls) => tokio::time::timeout(timeout, tls.connect(addr, stream))
                .await
                .map_err(|_| ClientError::Timeout {
                    what: format!("TLS handshake with {addr}"),
                    millis: timeout.as_millis() as u64,
                })?
                .map_err(|source| ClientError::Io {
                    addr: addr.to_string(),
                    source,
                })?,
        };
        let (mut reader, mut writer) = stream.into_split();
        let (outbox, mut rx) = mpsc::channel::<Frame>(1024);
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let close_reason: CloseReason = Arc::default();

        let closed_w = closed.clone();
        tokio::spawn(async move {
            let mut out = BytesMut::with_capacity(64 * 1024);
            while let Some(frame) = rx.recv().await {
                frame.encode(&mut out);
                while out.len() < 1 << 20 {
                    match rx.try_recv() {
                        Ok(f) => f.encode(&mut out),
                        Err(_) => break,
                    }
                }
                if writer.write_all(&out).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
                out.clear();
            }
            closed_w.store(true, Ordering::Release);
        });

        let pending_r = pending.clone();
        let closed_r = closed.clone();
        let close_reason_r = close_reason.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let mut received = false;
            let mut eof = false;
            'read: loop {
                loop {
                    match Frame::parse(&mut buf, CLIENT_MAX_FRAME_BYTES) {
                        Ok(Some(frame)) => match frame.kind {
                            FrameKind::Response => {
                                let waiter = pending_r.lock().ok().and_then(|mut p| p.remove(&frame.correlation_id));
                                if let Some(w) = waiter {
                                    let _ = w.send(frame);
                                }
                            }
                            _ => {
                                if let Some(p) = &pushes {
                                    let _ = p.send(frame);
                                }
                            }
                        },
                        Ok(None) => {
                            // Room for the whole frame at once: a large
                            // answer (a pull, a replica chunk) is then read
                            // without the buffer growing (and copying) in
                            // small steps.
                            if let Some(head) = buf.get(..4) {
                                let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
                                if length <= CLIENT_MAX_FRAME_BYTES {
                                    buf.reserve((length + 4).saturating_sub(buf.len()));
                                }
                            }
                            break;
                        }
                        Err(e) if e.is_fatal() => break 'read,
                        Err(_) => continue,
                    }
                }
                match reader.read_buf(&mut buf).await {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(_) => received = true,
                    Err(e) => {
                        // A TLS alert (e.g. a client certificate the
                        // server refused) says more than "closed".
                        if let Some(reason) = crate::tls::explain_read_error(&e) {
                            if let Ok(mut r) = close_reason_r.lock() {
                                *r = Some(reason);
                            }
                        }
                        break;
                    }
                }
            }
            // A plain connection the server closed (an orderly close, not a
            // reset) without a byte while requests waited: most likely a
            // port that requires TLS (it closes plain clients so).
            if plain && eof && !received && pending_r.lock().is_ok_and(|p| !p.is_empty()) {
                if let Ok(mut r) = close_reason_r.lock() {
                    *r = Some(crate::tls::TLS_REQUIRED_HINT.to_string());
                }
            }
            closed_r.store(true, Ordering::Release);
            // Dropping the senders fails every waiting request with Closed.
            if let Ok(mut p) = pending_r.lock() {
                p.clear();
            }
        });

        Ok(RemotingConnection {
            addr: addr.to_string(),
            outbox,
            pending,
            next_id: Arc::new(AtomicU32::new(1)),
            closed,
            options,
            close_reason,
        })
    }

    /// The error of a request whose connection closed: [`ClientError::Closed`],
    /// or an [`ClientError::Io`] saying why when that is known: a plain
    /// connection closed without any answer (the server may require TLS,
    /// [`crate::tls::TLS_REQUIRED_HINT`]) or a TLS alert from the server.
    fn closed_error(&self) -> ClientError {
        match self.close_reason.lock().ok().and_then(|r| r.clone()) {
            Some(reason) => ClientError::Io {
                addr: self.addr.clone(),
                source: std::io::Error::other(reason),
            },
            None => ClientError::Closed(self.addr.clone()),
        }
    }

    /// The peer address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// True once the socket failed or closed; make a new connection.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.outbox.is_closed()
    }

    /// Sends a request and waits for its response, whatever its status.
    pub async fn request_raw(
        &self,
        cmd: Command,
        header: Bytes,
        body: Bytes,
        timeout: Duration,
    ) -> ClientResult<Frame> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| ClientError::Closed(self.addr.clone()))?
            .insert(id, tx);
        // Closed before the request was registered (e.g. a TLS alert right
        // after the handshake): the reader will not fail it, so fail now.
        if self.closed.load(Ordering::Acquire) {
            if let Ok(mut p) = self.pending.lock() {
                p.remove(&id);
            }
            return Err(self.closed_error());
        }
        let mut frame = Frame::request(cmd, id, header, body);
        self.options.sign(&mut frame);
        let result = tokio::time::timeout(timeout, async {
            self.outbox.send(frame).await.map_err(|_| self.closed_error())?;
            rx.await.map_err(|_| self.closed_error())
        })
        .await;
        match result {
            Ok(r) => r,
            Err(_) => {
                if let Ok(mut p) = self.pending.lock() {
                    p.remove(&id);
                }
                Err(ClientError::Timeout {
                    what: format!("{cmd:?} to {}", self.addr),
                    millis: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Sends a request; a non-success status becomes [`ClientError::Server`].
    /// Returns the response's header and body.
    pub async fn request(
        &self,
        cmd: Command,
        header: Bytes,
        body: Bytes,
        timeout: Duration,
    ) -> ClientResult<(Bytes, Bytes)> {
        let resp = self.request_raw(cmd, header, body, timeout).await?;
        if resp.status() != Status::Success {
            return Err(ClientError::Server {
                status: resp.status(),
                message: resp.error_message(),
            });
        }
        Ok((resp.header, resp.body))
    }

    /// Sends a oneway request (no response).
    pub async fn oneway(&self, cmd: Command, header: Bytes, body: Bytes) -> ClientResult<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Frame::request(cmd, id, header, body);
        frame.kind = FrameKind::Oneway;
        self.options.sign(&mut frame);
        self.outbox
            .send(frame)
            .await
            .map_err(|_| ClientError::Closed(self.addr.clone()))
    }
}
