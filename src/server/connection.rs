//! One framed TCP session per client (mini-redis style): a reader that splits
//! frames and hands each request to the handler, a writer that sends the
//! responses back in completion order.
//!
//! Backpressure: at most `max_inflight` requests of one connection are being
//! handled at once; past that the reader stops reading the socket. Responses
//! go through a bounded channel, so a client that does not read its
//! responses eventually stops being read from, instead of growing a buffer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use futures::future::LocalBoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::wire::{Command, Frame, FrameKind, Status};

/// The connection a request arrived on: who sent it, and a way to push
/// frames to that client later (e.g. a rebalance notice).
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    /// Unique per connection within the process.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    push: mpsc::Sender<Outgoing>,
    /// Set when the connection stops reading (the client went away);
    /// requests still being served can then drop their work.
    closed: Arc<AtomicBool>,
}

/// A frame on its way to the socket, with the permit (if any) that must be
/// held until it has been written: a pull's permit stays taken while its
/// response is queued, so a client that stops reading cannot make the
/// broker hold more than `max_inflight_pulls` pull responses for it.
struct Outgoing {
    frame: Frame,
    hold: Option<OwnedSemaphorePermit>,
}

impl ConnectionHandle {
    /// Queues a `push` frame for the client; false when the connection is
    /// gone or its outbox is full (the client learns the news another way).
    pub fn push(&self, mut frame: Frame) -> bool {
        frame.kind = FrameKind::Push;
        self.push.try_send(Outgoing { frame, hold: None }).is_ok()
    }

    /// True once the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.push.is_closed()
    }

    /// A flag set once the connection has closed, for work that outlives
    /// the request (a parked receive).
    pub fn closed_flag(&self) -> Arc<AtomicBool> {
        self.closed.clone()
    }
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Answers requests of one kind of server (broker or name server).
pub trait RequestHandler: Send + Sync + 'static {
    /// Handles one request or oneway frame whose command code is known.
    /// The returned frame's correlation id is set by the caller; for oneway
    /// requests it is dropped.
    fn handle(self: Arc<Self>, conn: ConnectionHandle, cmd: Command, frame: Frame) -> LocalBoxFuture<'static, Frame>;

    /// Connection `id` closed.
    fn closed(&self, _id: u64) {}
}

/// Limits of every connection of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Largest frame accepted.
    pub max_frame_bytes: usize,
    /// Requests handled at once per connection.
    pub max_inflight: usize,
    /// Pulls handled or awaiting transmission at once per connection: bounds
    /// the memory a client that stops reading can pin.
    pub max_inflight_pulls: usize,
    /// Listener role for the connection counts (`ferromq_connections{role}`):
    /// `broker` or `namesrv`.
    pub role: &'static str,
}

/// Accepts connections on `listener` forever, starting each session on the
/// next of `arbiters` in turn.
pub async fn serve(
    listener: TcpListener,
    arbiters: Vec<actix::ArbiterHandle>,
    handler: Arc<dyn RequestHandler>,
    opts: ServeOptions,
) {
    let mut next = 0usize;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: wait a little instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Re-register the socket with the target arbiter's own reactor, so
        // its readiness events do not pass through the accepting thread.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "could not detach accepted socket");
                continue;
            }
        };
        let handler = handler.clone();
        let session = async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => {
                    actix_rt::spawn(async move {
                        crate::observe::totals::connections(opts.role, 1);
                        run_session(stream, peer, handler, opts).await;
                        crate::observe::totals::connections(opts.role, -1);
                    });
                }
                Err(e) => tracing::warn!(%peer, error = %e, "could not register socket"),
            }
        };
        let spawned = if arbiters.is_empty() {
            actix_rt::spawn(session);
            true
        } else {
            let arbiter = &arbiters[next % arbiters.len()];
            next = next.wrapping_add(1);
            arbiter.spawn(session)
        };
        if !spawned {
            tracing::error!(%peer, "network arbiter is gone; dropping connection");
        }
    }
}

/// Most buffers handed to one `writev`.
const MAX_IOVECS: usize = 256;

/// Writes `chunks` in order with vectored writes, then empties it.
async fn write_chunks(writer: &mut OwnedWriteHalf, chunks: &mut Vec<Bytes>) -> std::io::Result<()> {
    let mut first = 0;
    loop {
        while chunks.get(first).is_some_and(Bytes::is_empty) {
            first += 1;
        }
        if first >= chunks.len() {
            break;
        }
        let slices: Vec<IoSlice<'_>> = chunks[first..]
            .iter()
            .take(MAX_IOVECS)
            .map(|c| IoSlice::new(c))
            .collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 && first < chunks.len() {
            let len = chunks[first].len();
            if written >= len {
                written -= len;
                first += 1;
            } else {
                chunks[first].advance(written);
                written = 0;
            }
        }
    }
    chunks.clear();
    Ok(())
}

/// The response side of a session's outbox.
#[derive(Clone)]
struct Reply(mpsc::Sender<Outgoing>);

impl Reply {
    async fn send(&self, frame: Frame) -> Result<(), ()> {
        self.0.send(Outgoing { frame, hold: None }).await.map_err(|_| ())
    }
}

async fn run_session(stream: TcpStream, peer: SocketAddr, handler: Arc<dyn RequestHandler>, opts: ServeOptions) {
    tracing::debug!(%peer, "connection opened");
    let (mut reader, mut writer) = stream.into_split();
    let (out_tx, mut rx) = mpsc::channel::<Outgoing>(opts.max_inflight.max(1));

    let write_loop = async move {
        let mut out = BytesMut::with_capacity(64 * 1024);
        // What to send, in order: encoded heads and small bodies coalesced
        // in `out`, and frames' body tails (mapped records) as they are.
        let mut chunks: Vec<Bytes> = Vec::new();
        // Permits of frames queued in `chunks` but not yet written; the
        // frames themselves are dropped once encoded.
        let mut holds = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut queued = 0usize;
            let mut next = Some(first);
            // Coalesce whatever else is ready into one (vectored) write.
            while let Some(Outgoing { mut frame, hold }) = next.take() {
                queued += frame.encoded_len();
                frame.encode_head(&mut out);
                if !frame.body_tail.is_empty() {
                    chunks.push(out.split().freeze());
                    chunks.append(&mut frame.body_tail);
                }
                holds.push(hold);
                if queued < 1 << 20 {
                    next = rx.try_recv().ok();
                }
            }
            if !out.is_empty() {
                chunks.push(out.split().freeze());
            }
            if write_chunks(&mut writer, &mut chunks).await.is_err() {
                return;
            }
            holds.clear(); // releases the pull permits of what was sent
        }
        let _ = writer.shutdown().await;
    };
    actix_rt::spawn(write_loop);

    let conn = ConnectionHandle {
        id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
        peer,
        push: out_tx.clone(),
        closed: Arc::new(AtomicBool::new(false)),
    };
    let tx = Reply(out_tx);
    let permits = Arc::new(Semaphore::new(opts.max_inflight.max(1)));
    let pull_permits = Arc::new(Semaphore::new(opts.max_inflight_pulls.max(1)));
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let frame = match Frame::parse(&mut buf, opts.max_frame_bytes) {
            Ok(Some(frame)) => frame,
            Ok(None) => match reader.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad frame");
                let _ = tx
                    .send(Frame::error(e.correlation_id(), e.status(), e.to_string()))
                    .await;
                if e.is_fatal() {
                    break;
                }
                continue;
            }
        };
        let correlation_id = frame.correlation_id;
        let wants_reply = match frame.kind {
            FrameKind::Request => true,
            FrameKind::Oneway => false,
            FrameKind::Response | FrameKind::Push => {
                let _ = tx
                    .send(Frame::error(
                        correlation_id,
                        Status::MalformedFrame,
                        "servers accept only requests",
                    ))
                    .await;
                continue;
            }
        };
        let Some(cmd) = Command::from_code(frame.code) else {
            if wants_reply {
                let msg = format!("unknown command code {}", frame.code);
                let _ = tx.send(Frame::error(correlation_id, Status::UnknownCommand, msg)).await;
            }
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        // Pull responses are large: waiting here stops reading the socket.
        let pull_permit = if cmd == Command::PullMessage {
            match pull_permits.clone().acquire_owned().await {
                Ok(p) => Some(p),
                Err(_) => break,
            }
        } else {
            None
        };
        let tx = tx.clone();
        let fut = handler.clone().handle(conn.clone(), cmd, frame);
        actix_rt::spawn(async move {
            let mut response = fut.await;
            drop(permit);
            if wants_reply {
                response.correlation_id = correlation_id;
                response.kind = FrameKind::Response;
                let _ =
                    tx.0.send(Outgoing {
                        frame: response,
                        hold: pull_permit,
                    })
                    .await;
            }
        });
    }
    conn.closed.store(true, Ordering::Release);
    handler.closed(conn.id);
    tracing::debug!(%peer, "connection closed");
}
