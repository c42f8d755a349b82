//! The flusher thread: group commit for sync flush, periodic flush for async
//! flush, and the checkpoint.
//!
//! fdatasync blocks, so it never runs on an actor's arbiter. Producers waiting
//! for durability queue [`FlushHandle::durable`] requests; the thread drains
//! every queued request, makes the log durable up to the highest one with a
//! single fdatasync, and answers them all: one flush serves every append that
//! arrived while the previous flush ran.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::error::{IoContext, StoreError, StoreResult};
use super::Store;

/// Why a durability request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FlushError {
    /// The flusher thread is gone (the broker is stopping).
    #[error("the flusher has stopped")]
    Stopped,
    /// Making the commitlog durable failed; every request served by the
    /// same fdatasync shares the error.
    #[error("{0}")]
    Failed(Arc<StoreError>),
}

/// Result of a durability request.
pub type FlushResult = Result<(), FlushError>;

enum FlushCmd {
    Durable {
        upto: u64,
        reply: oneshot::Sender<FlushResult>,
    },
    Stop,
}

/// Sends requests to the flusher thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FlushHandle {
    tx: mpsc::Sender<FlushCmd>,
}

impl std::fmt::Debug for FlushCmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlushCmd::Durable { upto, .. } => write!(f, "Durable({upto})"),
            FlushCmd::Stop => write!(f, "Stop"),
        }
    }
}

impl FlushHandle {
    /// Asks for the commitlog to be durable below `upto`; the receiver
    /// resolves once it is (or with the error that prevented it).
    pub fn durable(&self, upto: u64) -> oneshot::Receiver<FlushResult> {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::SendError(FlushCmd::Durable { reply, .. })) = self.tx.send(FlushCmd::Durable { upto, reply }) {
            let _ = reply.send(Err(FlushError::Stopped));
        }
        rx
    }
}

/// The running flusher thread.
#[derive(Debug)]
pub struct Flusher {
    handle: FlushHandle,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts the thread. Every `interval` it flushes the whole commitlog
    /// (the async-flush policy), the consume queues and the index, and
    /// moves the checkpoint.
    pub fn start(store: Arc<Store>, interval: Duration) -> StoreResult<Flusher> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ferromq-flusher".into())
            .spawn(move || run(store, rx, interval))
            .during("start the flusher thread")?;
        Ok(Flusher {
            handle: FlushHandle { tx },
            thread: Some(thread),
        })
    }

    /// A handle for requests.
    pub fn handle(&self) -> FlushHandle {
        self.handle.clone()
    }

    /// Flushes everything one last time and joins the thread.
    pub fn stop(mut self) {
        let _ = self.handle.tx.send(FlushCmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often writeback of new commitlog bytes is started (not awaited).
const WRITEBACK_INTERVAL: Duration = Duration::from_millis(20);

fn run(store: Arc<Store>, rx: mpsc::Receiver<FlushCmd>, interval: Duration) {
    let mut next_tick = Instant::now() + interval;
    let mut next_writeback = Instant::now() + WRITEBACK_INTERVAL;
    let mut waiters: Vec<(u64, oneshot::Sender<FlushResult>)> = Vec::new();
    let mut stopping = false;
    while !stopping {
        let timeout = next_tick.min(next_writeback).saturating_duration_since(Instant::now());
        match rx.recv_timeout(timeout) {
            Ok(FlushCmd::Durable { upto, reply }) => {
                waiters.push((upto, reply));
                // Group commit: take every request already queued.
                while let Ok(cmd) = rx.try_recv() {
                    match cmd {
                        FlushCmd::Durable { upto, reply } => waiters.push((upto, reply)),
                        FlushCmd::Stop => stopping = true,
                    }
                }
                let target = waiters.iter().map(|(u, _)| *u).max().unwrap_or(0);
                metrics::histogram!("ferromq_store_group_commit_batch").record(waiters.len() as f64);
                let started = Instant::now();
                let flushed = store.log.flush_to(target);
                metrics::histogram!("ferromq_store_flush_seconds").record(started.elapsed().as_secs_f64());
                let result = flushed.map(|_| ()).map_err(|e| {
                    tracing::error!(error = %e, "commitlog flush failed");
                    FlushError::Failed(Arc::new(e))
                });
                for (_, reply) in waiters.drain(..) {
                    let _ = reply.send(result.clone());
                }
            }
            Ok(FlushCmd::Stop) | Err(RecvTimeoutError::Disconnected) => stopping = true,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= next_writeback {
            if let Err(e) = store.log.start_writeback() {
                tracing::warn!(error = %e, "starting commitlog writeback failed");
            }
            next_writeback = Instant::now() + WRITEBACK_INTERVAL;
        }
        if stopping || Instant::now() >= next_tick {
            periodic(&store);
            next_tick = Instant::now() + interval;
        }
    }
}

fn periodic(store: &Store) {
    let started = Instant::now();
    let flushed = store.log.flush_to(u64::MAX);
    metrics::histogram!("ferromq_store_flush_seconds").record(started.elapsed().as_secs_f64());
    if let Err(e) = flushed {
        tracing::error!(error = %e, "commitlog flush failed");
    }
    match store.flush_and_checkpoint() {
        // A full disk is logged by the disk guard when it starts refusing;
        // the checkpoint is retried every tick and written once there is
        // room (recovery replays from the older one meanwhile).
        Err(e) if e.is_no_space() => {
            if store.disk.check_accepting().is_ok() {
                store.disk.note_no_space(store.config().segment_bytes);
            }
            tracing::debug!(error = %e, "checkpoint postponed: no space left");
        }
        Err(e) => tracing::error!(error = %e, "checkpoint failed"),
        Ok(()) => {}
    }
}
