//! One framed TCP session per client (mini-redis style): a reader that splits
//! frames and hands each request to the handler, a writer that sends the
//! responses back in completion order.
//!
//! Resources belong to the session and die with it (issue #12):
//!
//! * **Count.** At most `max_inflight` requests of one connection are being
//!   handled at once, and at most `max_inflight_pulls` pulls; past that the
//!   reader stops reading the socket.
//! * **Bytes.** Every response holds bytes of one per-connection budget
//!   (`max_pending_response_bytes`) from the moment its request is read
//!   until the response has been written: pulls, receives and key queries
//!   reserve [`LARGE_RESERVE`] up front (a long poll keeps it while
//!   parked), other requests [`SMALL_RESERVE`], and a built response then
//!   holds its real encoded size. A reservation waits until it fits in the
//!   budget, and while it waits the reader reads nothing more, so a client
//!   that does not read its responses stalls only itself. Responses larger
//!   than their reservation (pulls and receives are cut at 8 MiB plus one
//!   record) may take a connection past its budget until written; the next
//!   request then waits.
//! * **Time.** A frame must be complete within `frame_read_timeout` of its
//!   first byte, and a connection with no complete request for
//!   `idle_timeout` and nothing in flight is closed.
//! * **Close.** When the connection closes (the peer went away, a timeout,
//!   a fatal framing error) its closed flag is set (parked long polls are
//!   dropped by their queue actors), its request futures stop, and what is
//!   queued for writing is given a last second and then dropped.
//! * **Connections.** [`serve`] keeps at most `max_connections` sessions of
//!   the process open (never more than the open-file limit minus a reserve):
//!   at the limit a new connection takes the place of the session idle
//!   longest (nothing in flight, no request for [`EVICT_IDLE_AFTER`]), or
//!   is closed at once when there is none. It backs off when `accept`
//!   fails.
//! * **TLS.** With [`ServeOptions::tls`] set, each new connection first
//!   goes through [`crate::tls::ServerTls::accept`] (on its arbiter, not in
//!   the accept loop, and holding its connection slot): per the listener's
//!   mode it becomes a TLS session, stays plain (`permissive`), or is
//!   refused with a clean close (a plain client on an `enforcing` port).
//!   Sessions then run on a [`crate::tls::ReadHalf`] /
//!   [`crate::tls::WriteHalf`] pair: a plain connection keeps tokio's own
//!   socket halves and its vectored writes.

use std::collections::HashMap;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::future::LocalBoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::budget::{Budget, Held};
use crate::config::BrokerSection;
use crate::tls::{ReadHalf, ServerTls, Stream, WriteHalf};
use crate::wire::{Command, Frame, FrameKind, Status};

/// Budget bytes a pull, receive or key query reserves while it is served
/// (a long poll keeps it while parked); its response then holds its real
/// size. Pull and receive responses stop adding records past 8 MiB.
pub const LARGE_RESERVE: usize = 4 << 20;
/// Budget bytes any other request reserves while it is served.
pub const SMALL_RESERVE: usize = 4 << 10;
/// Bytes the reader may buffer ahead while it waits for capacity (to notice
/// a peer that closes meanwhile).
const READ_AHEAD: usize = 64 << 10;
/// How long a closing connection may still write what was queued for it.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// First and longest pause after a failed `accept`.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one "connection limit reached" warning this often.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);
/// At the connection limit, a session with nothing in flight and no
/// complete request for this long is closed to admit a new connection.
pub const EVICT_IDLE_AFTER: Duration = Duration::from_secs(1);

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
    /// What the handler attached when the connection opened
    /// ([`RequestHandler::opened`]), e.g. the broker's session.
    state: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// A frame on its way to the socket, with what it holds until it has been
/// written: its bytes of the connection's budget and, for a pull, its pull
/// permit. A client that stops reading therefore cannot make the broker
/// hold more than its budget (and `max_inflight_pulls` pulls).
#[derive(Debug)]
struct Outgoing {
    frame: Frame,
    bytes: Option<Held>,
    pull: Option<OwnedSemaphorePermit>,
}

impl ConnectionHandle {
    /// Queues a `push` frame for the client; false when the connection is
    /// gone or its outbox is full (the client learns the news another way).
    pub fn push(&self, mut frame: Frame) -> bool {
        frame.kind = FrameKind::Push;
        self.push
            .try_send(Outgoing {
                frame,
                bytes: None,
                pull: None,
            })
            .is_ok()
    }

    /// True once the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.push.is_closed()
    }

    /// A flag set once the connection has closed, for work that outlives
    /// the request (a parked pull or receive).
    pub fn closed_flag(&self) -> Arc<AtomicBool> {
        self.closed.clone()
    }

    /// What the handler attached to this connection when it opened, if it
    /// is a `T`.
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.state.clone().and_then(|s| s.downcast::<T>().ok())
    }
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);
/// Open sessions of the process, all listeners together.
static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// One of the process's `max_connections` sessions; freed on drop.
struct Slot;

impl Slot {
    fn take(max: usize) -> Option<Slot> {
        OPEN_CONNECTIONS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Slot)
    }
}

/// What the accept loop sees of a session: enough to close the idlest one
/// when the connection limit is reached.
struct SessionInfo {
    /// Last complete request (or the connection's start), in ms since [`EPOCH`].
    last_request_ms: AtomicU64,
    permits: Arc<Semaphore>,
    max_inflight: usize,
    budget: Budget,
    /// Asked to close (set once, by the accept loop).
    evicted: AtomicBool,
    evict: Notify,
}

impl SessionInfo {
    fn is_idle(&self) -> bool {
        self.permits.available_permits() == self.max_inflight && self.budget.is_idle()
    }
}

static EPOCH: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);
static SESSIONS: LazyLock<Mutex<HashMap<u64, Arc<SessionInfo>>>> = LazyLock::new(Default::default);

fn epoch_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// Asks the session idle longest (nothing in flight, no complete request
/// for at least [`EVICT_IDLE_AFTER`]) to close; false when there is none.
fn evict_idlest() -> bool {
    let Ok(sessions) = SESSIONS.lock() else {
        return false;
    };
    let cutoff = epoch_ms().saturating_sub(EVICT_IDLE_AFTER.as_millis() as u64);
    let victim = sessions
        .values()
        .filter(|s| !s.evicted.load(Ordering::Acquire) && s.last_request_ms.load(Ordering::Acquire) <= cutoff)
        .filter(|s| s.is_idle())
        .min_by_key(|s| s.last_request_ms.load(Ordering::Acquire));
    match victim {
        Some(v) => {
            v.evicted.store(true, Ordering::Release);
            v.evict.notify_one();
            true
        }
        None => false,
    }
}

impl Slot {
    /// A slot past the limit, for a connection admitted in place of an
    /// evicted one (whose slot frees once its session ends).
    fn force() -> Slot {
        OPEN_CONNECTIONS.fetch_add(1, Ordering::AcqRel);
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers requests of one kind of server (broker or name server).
pub trait RequestHandler: Send + Sync + 'static {
    /// Handles one request or oneway frame whose command code is known.
    /// The returned frame's correlation id is set by the caller; for oneway
    /// requests it is dropped.
    fn handle(self: Arc<Self>, conn: ConnectionHandle, cmd: Command, frame: Frame) -> LocalBoxFuture<'static, Frame>;

    /// A connection opened (before its first request): what is returned
    /// travels with the connection's handle ([`ConnectionHandle::state`]).
    /// The handle given here carries no state yet.
    fn opened(&self, _conn: &ConnectionHandle) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        None
    }

    /// Connection `id` closed.
    fn closed(&self, _id: u64) {}
}

/// Limits (and encryption) of every connection of one listener.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest frame accepted.
    pub max_frame_bytes: usize,
    /// Requests handled at once per connection.
    pub max_inflight: usize,
    /// Pulls handled or awaiting transmission at once per connection.
    pub max_inflight_pulls: usize,
    /// Response bytes per connection being built or awaiting transmission
    /// (see the module documentation).
    pub max_pending_response_bytes: usize,
    /// Close a connection with no complete request for this long and
    /// nothing in flight; `None` never.
    pub idle_timeout: Option<Duration>,
    /// Close a connection whose started frame is not complete within this;
    /// `None` waits forever.
    pub frame_read_timeout: Option<Duration>,
    /// Most open sessions of the process (all listeners together); further
    /// connections are accepted and closed at once.
    pub max_connections: usize,
    /// Listener role for the connection counts (`ferromq_connections{role}`):
    /// `broker` or `namesrv`.
    pub role: &'static str,
    /// TLS of the listener (`[tls]` mode `permissive` or `enforcing`);
    /// `None`: plain TCP only (mode `off`).
    pub tls: Option<Arc<ServerTls>>,
}

impl ServeOptions {
    /// The limits of the `[broker]` section, for a listener of `role`.
    pub fn from_config(cfg: &BrokerSection, role: &'static str) -> ServeOptions {
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        ServeOptions {
            max_frame_bytes: cfg.max_frame_bytes,
            max_inflight: cfg.max_inflight_per_connection,
            max_inflight_pulls: cfg.max_inflight_pulls_per_connection,
            max_pending_response_bytes: cfg.max_pending_response_bytes_per_connection,
            idle_timeout: ms(cfg.idle_timeout_ms),
            frame_read_timeout: ms(cfg.frame_read_timeout_ms),
            max_connections: cfg.max_connections,
            role,
            tls: None,
        }
    }
}

/// `configured`, lowered to the open-file limit minus a reserve for the
/// store's files, the HTTP endpoint and outgoing connections.
pub fn connection_limit(configured: usize) -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 || rl.rlim_cur == libc::RLIM_INFINITY {
        return configured.max(1);
    }
    let soft = usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX);
    let reserve = (soft / 4).clamp(64, 1024);
    configured.min(soft.saturating_sub(reserve)).max(1)
}

/// Accepts connections on `listener` forever, starting each session on the
/// next of `arbiters` in turn.
pub async fn serve(
    listener: TcpListener,
    arbiters: Vec<actix::ArbiterHandle>,
    handler: Arc<dyn RequestHandler>,
    opts: ServeOptions,
) {
    let max = connection_limit(opts.max_connections);
    if max < opts.max_connections {
        tracing::info!(
            role = opts.role,
            configured = opts.max_connections,
            max_connections = max,
            "connection limit lowered to fit the open-file limit"
        );
    }
    let refused_total = metrics::counter!("ferromq_connections_refused_total", "role" => opts.role);
    let evicted_total = metrics::counter!("ferromq_connections_evicted_total", "role" => opts.role);
    let mut evicted = 0u64;
    let mut next = 0usize;
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failures = 0u64;
    let mut refused = 0u64;
    let mut last_warning: Option<Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => {
                if failures > 0 {
                    tracing::info!(role = opts.role, failures, "accept works again");
                    failures = 0;
                    backoff = ACCEPT_BACKOFF_MIN;
                }
                x
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, and say
                // so once per burst.
                failures += 1;
                if failures == 1 {
                    tracing::warn!(role = opts.role, error = %e, "accept failed; backing off until it works again");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let slot = match Slot::take(max) {
            Some(slot) => Some(slot),
            // At the limit: an idle session makes room, or the new
            // connection is closed at once (the client sees it end).
            None if evict_idlest() => {
                evicted_total.increment(1);
                evicted += 1;
                Some(Slot::force())
            }
            None => {
                refused_total.increment(1);
                refused += 1;
                None
            }
        };
        if (slot.is_none() || evicted > 0) && last_warning.is_none_or(|t| t.elapsed() >= REFUSAL_WARN_EVERY) {
            tracing::warn!(
                role = opts.role,
                max_connections = max,
                refused,
                evicted_idle = evicted,
                "connection limit reached; closing idle connections and refusing new ones while none is idle"
            );
            last_warning = Some(Instant::now());
            refused = 0;
            evicted = 0;
        }
        let Some(slot) = slot else {
            drop(stream);
            continue;
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
        let opts = opts.clone();
        let session = async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => {
                    actix_rt::spawn(async move {
                        crate::observe::totals::connections(opts.role, 1);
                        let stream = match &opts.tls {
                            None => Ok(Stream::Plain(stream)),
                            Some(tls) => tls.accept(stream).await,
                        };
                        let role = opts.role;
                        match stream {
                            Ok(stream) => run_session(stream, peer, handler, opts).await,
                            Err(e) => {
                                let reason = crate::tls::refusal_reason(&e);
                                tracing::debug!(%peer, role, reason, error = %e, "connection refused by TLS");
                                metrics::counter!("ferromq_tls_refused_total", "role" => role, "reason" => reason)
                                    .increment(1);
                            }
                        }
                        crate::observe::totals::connections(role, -1);
                        drop(slot);
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

/// Writes `chunks` in order with vectored writes, removing what has been
/// written (so it may be cancelled and called again), then flushes (a
/// no-op on plain TCP; TLS sends the records it still buffers).
async fn write_chunks(writer: &mut WriteHalf, chunks: &mut Vec<Bytes>) -> std::io::Result<()> {
    loop {
        let done = chunks.iter().take_while(|c| c.is_empty()).count();
        chunks.drain(..done);
        if chunks.is_empty() {
            return writer.flush().await;
        }
        let slices: Vec<IoSlice<'_>> = chunks.iter().take(MAX_IOVECS).map(|c| IoSlice::new(c)).collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        for chunk in chunks.iter_mut() {
            let n = written.min(chunk.len());
            chunk.advance(n);
            written -= n;
            if written == 0 {
                break;
            }
        }
    }
}

/// The writer task: coalesces ready responses into vectored writes and
/// releases what they hold once written. Once the session closes it writes
/// what is already queued for at most [`CLOSE_FLUSH`], then stops.
async fn write_loop(mut writer: WriteHalf, mut rx: mpsc::Receiver<Outgoing>, mut closed: watch::Receiver<bool>) {
    let mut out = BytesMut::with_capacity(64 * 1024);
    // What to send, in order: encoded heads and small bodies coalesced in
    // `out`, and frames' body tails (mapped records) as they are.
    let mut chunks: Vec<Bytes> = Vec::new();
    // Budget bytes and permits of frames in `chunks`; the frames themselves
    // are dropped once encoded.
    let mut holds: Vec<(Option<Held>, Option<OwnedSemaphorePermit>)> = Vec::new();
    let mut closing: Option<Instant> = None;
    loop {
        if chunks.is_empty() {
            holds.clear(); // releases the budget and permits of what was sent
            let first = match closing {
                Some(_) => rx.try_recv().ok(),
                None => tokio::select! {
                    m = rx.recv() => m,
                    _ = closed.wait_for(|c| *c) => {
                        closing = Some(Instant::now() + CLOSE_FLUSH);
                        rx.try_recv().ok()
                    }
                },
            };
            let Some(first) = first else { break };
            let mut queued = 0usize;
            let mut next = Some(first);
            // Coalesce whatever else is ready into one (vectored) write.
            while let Some(Outgoing { mut frame, bytes, pull }) = next.take() {
                queued += frame.encoded_len();
                frame.encode_head(&mut out);
                if !frame.body_tail.is_empty() {
                    chunks.push(out.split().freeze());
                    chunks.append(&mut frame.body_tail);
                }
                holds.push((bytes, pull));
                if queued < 1 << 20 {
                    next = rx.try_recv().ok();
                }
            }
            if !out.is_empty() {
                chunks.push(out.split().freeze());
            }
        }
        let written = match closing {
            Some(deadline) => matches!(
                tokio::time::timeout_at(deadline, write_chunks(&mut writer, &mut chunks)).await,
                Ok(Ok(()))
            ),
            None => tokio::select! {
                r = write_chunks(&mut writer, &mut chunks) => r.is_ok(),
                _ = closed.wait_for(|c| *c) => {
                    closing = Some(Instant::now() + CLOSE_FLUSH);
                    true
                }
            },
        };
        if !written {
            return;
        }
    }
    if let Some(deadline) = closing {
        let _ = tokio::time::timeout_at(deadline, writer.shutdown()).await;
    } else {
        let _ = writer.shutdown().await;
    }
}

/// Waits for `fut` while still reading the socket into `buf` (up to
/// [`READ_AHEAD`] bytes), so that a peer closing while the session waits
/// for capacity is noticed at once. `None` when the peer closed.
async fn wait_reading<T>(fut: impl Future<Output = T>, reader: &mut ReadHalf, buf: &mut BytesMut) -> Option<T> {
    tokio::pin!(fut);
    let mut scratch = [0u8; 4096];
    loop {
        if buf.len() >= READ_AHEAD {
            return Some(fut.await);
        }
        let room = (READ_AHEAD - buf.len()).min(scratch.len());
        tokio::select! {
            biased;
            v = &mut fut => return Some(v),
            r = reader.read(&mut scratch[..room]) => match r {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&scratch[..n]),
            },
        }
    }
}

/// The response side of a session's outbox.
#[derive(Clone)]
struct Reply(mpsc::Sender<Outgoing>);

impl Reply {
    async fn send(&self, frame: Frame) -> Result<(), ()> {
        self.0
            .send(Outgoing {
                frame,
                bytes: None,
                pull: None,
            })
            .await
            .map_err(|_| ())
    }
}

/// Responses that may be large (and are built by copying or mapping
/// records): they reserve [`LARGE_RESERVE`] while served.
fn large_response(cmd: Command) -> bool {
    matches!(
        cmd,
        Command::PullMessage
            | Command::ReceiveMessage
            | Command::QueryMessageByKey
            | Command::QueryMessageById
            | Command::ReplicaFetch
    )
}

async fn run_session(stream: Stream, peer: SocketAddr, handler: Arc<dyn RequestHandler>, opts: ServeOptions) {
    tracing::debug!(%peer, tls = stream.is_tls(), "connection opened");
    let (mut reader, writer) = stream.into_split();
    let (out_tx, rx) = mpsc::channel::<Outgoing>(opts.max_inflight.max(1));
    let (close_tx, close_rx) = watch::channel(false);
    actix_rt::spawn(write_loop(writer, rx, close_rx));

    let mut conn = ConnectionHandle {
        id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
        peer,
        push: out_tx.clone(),
        closed: Arc::new(AtomicBool::new(false)),
        state: None,
    };
    conn.state = handler.opened(&conn);
    let tx = Reply(out_tx);
    let max_inflight = opts.max_inflight.max(1);
    let permits = Arc::new(Semaphore::new(max_inflight));
    let pull_permits = Arc::new(Semaphore::new(opts.max_inflight_pulls.max(1)));
    let budget = Budget::new(opts.max_pending_response_bytes);
    let info = Arc::new(SessionInfo {
        last_request_ms: AtomicU64::new(epoch_ms()),
        permits: permits.clone(),
        max_inflight,
        budget: budget.clone(),
        evicted: AtomicBool::new(false),
        evict: Notify::new(),
    });
    if let Ok(mut sessions) = SESSIONS.lock() {
        sessions.insert(conn.id, info.clone());
    }
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut last_request = Instant::now();
    let mut frame_started: Option<Instant> = None;
    loop {
        let frame = match Frame::parse(&mut buf, opts.max_frame_bytes) {
            Ok(Some(frame)) => {
                frame_started = None;
                last_request = Instant::now();
                info.last_request_ms.store(epoch_ms(), Ordering::Release);
                frame
            }
            Ok(None) => {
                if buf.is_empty() {
                    frame_started = None;
                } else if frame_started.is_none() {
                    frame_started = Some(Instant::now());
                }
                let deadline = match frame_started {
                    Some(t) => opts.frame_read_timeout.map(|d| t + d),
                    None => opts.idle_timeout.map(|d| last_request + d),
                };
                let read = async {
                    match deadline {
                        Some(d) => tokio::time::timeout_at(d, reader.read_buf(&mut buf)).await,
                        None => Ok(reader.read_buf(&mut buf).await),
                    }
                };
                let result = tokio::select! {
                    r = read => Some(r),
                    _ = info.evict.notified() => None,
                };
                let Some(result) = result else {
                    if info.is_idle() {
                        tracing::debug!(%peer, "idle connection closed to admit a new one (connection limit)");
                        break;
                    }
                    // Busy again since it was picked: it stays.
                    info.evicted.store(false, Ordering::Release);
                    continue;
                };
                match result {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => continue,
                    Err(_) if frame_started.is_some() => {
                        tracing::debug!(%peer, buffered = buf.len(), "incomplete frame timed out; closing");
                        metrics::counter!("ferromq_connections_timed_out_total", "role" => opts.role, "reason" => "frame")
                            .increment(1);
                        break;
                    }
                    Err(_) => {
                        if permits.available_permits() < max_inflight || !budget.is_idle() {
                            // Something is in flight: not idle.
                            last_request = Instant::now();
                            continue;
                        }
                        tracing::debug!(%peer, "idle connection timed out; closing");
                        metrics::counter!("ferromq_connections_timed_out_total", "role" => opts.role, "reason" => "idle")
                            .increment(1);
                        break;
                    }
                }
            }
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
        // Waiting here stops reading the socket (backpressure), except to
        // notice that the peer closed.
        let reserve = if large_response(cmd) {
            LARGE_RESERVE
        } else {
            SMALL_RESERVE
        };
        let acquire = async {
            let permit = permits.clone().acquire_owned().await.ok()?;
            let held = budget.take(reserve).await;
            let pull = if cmd == Command::PullMessage {
                Some(pull_permits.clone().acquire_owned().await.ok()?)
            } else {
                None
            };
            Some((permit, held, pull))
        };
        let Some(Some((permit, mut held, pull))) = wait_reading(acquire, &mut reader, &mut buf).await else {
            break;
        };
        let tx = tx.clone();
        let budget = budget.clone();
        let mut closed = close_tx.subscribe();
        let fut = handler.clone().handle(conn.clone(), cmd, frame);
        actix_rt::spawn(async move {
            let work = async move {
                let mut response = fut.await;
                drop(permit);
                if !wants_reply {
                    return;
                }
                response.correlation_id = correlation_id;
                response.kind = FrameKind::Response;
                // From now on the response holds its real size.
                budget.resize(&mut held, response.encoded_len());
                let _ =
                    tx.0.send(Outgoing {
                        frame: response,
                        bytes: Some(held),
                        pull,
                    })
                    .await;
            };
            // The request's work stops when its connection closes.
            tokio::select! {
                _ = work => {}
                _ = closed.wait_for(|c| *c) => {}
            }
        });
    }
    if let Ok(mut sessions) = SESSIONS.lock() {
        sessions.remove(&conn.id);
    }
    conn.closed.store(true, Ordering::Release);
    let _ = close_tx.send(true);
    handler.closed(conn.id);
    tracing::debug!(%peer, "connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_leaves_room_for_files() {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
        let limit = connection_limit(usize::MAX);
        if rl.rlim_cur != libc::RLIM_INFINITY {
            assert!(limit < rl.rlim_cur as usize, "{limit} vs {}", rl.rlim_cur);
            assert!(limit + 64 <= rl.rlim_cur as usize);
        }
        assert_eq!(connection_limit(10), 10.min(limit));
    }
}
