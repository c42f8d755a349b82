//! What the broker knows about itself: the live actor tree with per-actor
//! figures ([`ActorTree`], [`ActorStats`]), addresses that count what is
//! sent to an actor ([`Tracked`]), and the Prometheus exposition
//! ([`metrics`]).
//!
//! actix does not expose a mailbox's length, so an actor's mailbox depth is
//! what was sent through its [`Tracked`] address minus what its handlers
//! finished.

pub mod clients;
pub mod metrics;
pub mod totals;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use serde::Serialize;

/// Kinds of actors, as shown in `/actors` and metric labels.
pub mod kind {
    /// The commitlog writer.
    pub const COMMITLOG_WRITER: &str = "commitlog_writer";
    /// The dispatcher.
    pub const DISPATCHER: &str = "dispatcher";
    /// A topic-queue's actor.
    pub const QUEUE: &str = "queue";
    /// A consumer group's coordinator.
    pub const GROUP_COORDINATOR: &str = "group_coordinator";
    /// The delay scheduler.
    pub const DELAY_SCHEDULER: &str = "delay_scheduler";
    /// Expires silent clients.
    pub const HEARTBEAT_SCANNER: &str = "heartbeat_scanner";
    /// Deletes commitlog segments past retention.
    pub const RETENTION_CLEANER: &str = "retention_cleaner";
    /// The embedded name server.
    pub const NAME_SERVER: &str = "name_server";
    /// The broker's registration with name servers.
    pub const NAME_SERVER_CLIENT: &str = "name_server_client";
    /// The broker itself (root of the tree; not an actor).
    pub const BROKER: &str = "broker";
}

/// Life-cycle state of an actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActorState {
    /// Registered, not started yet.
    Starting,
    /// Running.
    Running,
    /// Stopped after a failure; its supervisor is restarting it.
    Restarting,
    /// Stopped for good (e.g. its topic was deleted).
    Stopped,
}

impl ActorState {
    fn from_u8(v: u8) -> ActorState {
        match v {
            1 => ActorState::Running,
            2 => ActorState::Restarting,
            3 => ActorState::Stopped,
            _ => ActorState::Starting,
        }
    }
}

/// Figures of one actor, updated by the actor and its senders.
#[derive(Debug)]
pub struct ActorStats {
    /// Kind (see [`kind`]).
    pub kind: &'static str,
    /// Id within the kind (a topic-queue, a group name, …).
    pub id: String,
    /// `kind/id` of the parent.
    pub parent: String,
    thread: Mutex<String>,
    state: AtomicU8,
    sent: AtomicU64,
    handled: AtomicU64,
    handler_nanos: AtomicU64,
    restarts: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// `ferromq_actor_handler_seconds{kind,id}`, looked up once.
    handler_seconds: ::metrics::Histogram,
}

impl ActorStats {
    fn new(kind: &'static str, id: String, parent: String) -> ActorStats {
        let handler_seconds =
            ::metrics::histogram!("ferromq_actor_handler_seconds", "kind" => kind, "id" => id.clone());
        ActorStats {
            handler_seconds,
            kind,
            id,
            parent,
            thread: Mutex::new(String::new()),
            state: AtomicU8::new(0),
            sent: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            handler_nanos: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Stats not listed in any tree (tests, tools).
    pub fn detached(kind: &'static str, id: impl Into<String>) -> Arc<ActorStats> {
        Arc::new(ActorStats::new(kind, id.into(), String::new()))
    }

    /// The actor started (or restarted) on the current thread.
    pub fn started(&self) {
        if let Ok(mut t) = self.thread.lock() {
            *t = std::thread::current().name().unwrap_or("unnamed").to_string();
        }
        self.state.store(1, Ordering::Relaxed);
    }

    /// The actor is being restarted by its supervisor.
    pub fn restarting(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        self.state.store(2, Ordering::Relaxed);
    }

    /// The actor stopped for good.
    pub fn stopped(&self) {
        self.state.store(3, Ordering::Relaxed);
    }

    /// Records why the actor is failing (shown in `/actors`).
    pub fn failed(&self, error: impl Into<String>) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error.into());
        }
    }

    /// A message was put in the mailbox.
    pub fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Times one handler run; dropping the guard counts it.
    pub fn handling(self: &Arc<Self>) -> HandlerTimer {
        HandlerTimer {
            stats: self.clone(),
            started: Instant::now(),
        }
    }

    /// A snapshot for `/actors` and `/metrics`.
    pub fn info(&self) -> ActorInfo {
        let sent = self.sent.load(Ordering::Relaxed);
        let handled = self.handled.load(Ordering::Relaxed);
        ActorInfo {
            kind: self.kind,
            id: self.id.clone(),
            parent: self.parent.clone(),
            thread: self.thread.lock().map(|t| t.clone()).unwrap_or_default(),
            state: ActorState::from_u8(self.state.load(Ordering::Relaxed)),
            mailbox_depth: sent.saturating_sub(handled),
            handled,
            handler_seconds_total: self.handler_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            restarts: self.restarts.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

/// Counts one handler run when dropped.
pub struct HandlerTimer {
    stats: Arc<ActorStats>,
    started: Instant,
}

impl Drop for HandlerTimer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The handler is unwinding: the actor's task ends with it and
            // its registry re-creates it on next use (a caught panic).
            self.stats.failed("panicked in a handler");
            self.stats.state.store(2, Ordering::Relaxed);
        }
        let elapsed = self.started.elapsed();
        self.stats.handled.fetch_add(1, Ordering::Relaxed);
        self.stats
            .handler_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        self.stats.handler_seconds.record(elapsed.as_secs_f64());
    }
}

/// One actor as `/actors` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ActorInfo {
    /// Kind.
    pub kind: &'static str,
    /// Id within the kind.
    pub id: String,
    /// `kind/id` of the parent (`broker` for top-level actors).
    pub parent: String,
    /// Thread (arbiter) it runs on.
    pub thread: String,
    /// Life-cycle state.
    pub state: ActorState,
    /// Messages sent and not yet handled.
    pub mailbox_depth: u64,
    /// Messages handled.
    pub handled: u64,
    /// Time spent in handlers.
    pub handler_seconds_total: f64,
    /// Supervisor restarts.
    pub restarts: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// Ask an actor to fail (debug command): it records `reason` and stops, so
/// its supervisor restarts it; with `panic`, its handler panics instead, so
/// its task dies and its registry re-creates it.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Fail {
    /// Recorded as the actor's last error.
    pub reason: String,
    /// Panic rather than stop.
    pub panic: bool,
}

/// Implements [`Fail`] for an actor with a `stats: Arc<ActorStats>` field:
/// record the reason, then stop so the supervisor restarts it.
macro_rules! failable {
    ($actor:ty) => {
        impl actix::Handler<$crate::observe::Fail> for $actor {
            type Result = ();

            fn handle(&mut self, msg: $crate::observe::Fail, ctx: &mut actix::Context<Self>) {
                let _timer = self.stats.handling();
                tracing::warn!(kind = self.stats.kind, id = %self.stats.id, reason = %msg.reason, panic = msg.panic, "failing on request");
                if msg.panic {
                    panic!("{}", msg.reason);
                }
                self.stats.failed(msg.reason);
                actix::ActorContext::stop(ctx);
            }
        }
    };
}
pub(crate) use failable;

struct Entry {
    stats: Arc<ActorStats>,
    fail: Option<Recipient<Fail>>,
}

/// The live actors of a process.
#[derive(Default)]
pub struct ActorTree {
    actors: RwLock<BTreeMap<(&'static str, String), Entry>>,
}

impl ActorTree {
    /// Registers an actor (or returns the stats of one registered under the
    /// same kind and id, which a restart keeps).
    pub fn register(&self, kind: &'static str, id: impl Into<String>, parent: impl Into<String>) -> Arc<ActorStats> {
        let id = id.into();
        let Ok(mut actors) = self.actors.write() else {
            return ActorStats::detached(kind, id);
        };
        actors
            .entry((kind, id.clone()))
            .or_insert_with(|| Entry {
                stats: Arc::new(ActorStats::new(kind, id, parent.into())),
                fail: None,
            })
            .stats
            .clone()
    }

    /// Starts a supervised actor (on `arbiter`, or the current one),
    /// registered under (kind, id) as a child of the broker, failable on
    /// request, behind a counting address.
    pub fn start<A, F>(&self, kind: &'static str, id: &str, arbiter: Option<&ArbiterHandle>, make: F) -> Tracked<A>
    where
        A: Actor<Context = Context<A>> + Supervised + Handler<Fail>,
        F: FnOnce(Arc<ActorStats>) -> A + Send + 'static,
    {
        let stats = self.register(kind, id, kind::BROKER);
        let s = stats.clone();
        let factory = move |_: &mut Context<A>| make(s);
        let addr = match arbiter {
            Some(a) => Supervisor::start_in_arbiter(a, factory),
            None => Supervisor::start(factory),
        };
        self.set_failable(kind, id, addr.clone().recipient());
        Tracked::new(addr, stats)
    }

    /// Lets the debug command fail this actor.
    pub fn set_failable(&self, kind: &'static str, id: &str, fail: Recipient<Fail>) {
        if let Ok(mut actors) = self.actors.write() {
            if let Some(e) = actors.get_mut(&(kind, id.to_string())) {
                e.fail = Some(fail);
            }
        }
    }

    /// Forgets an actor that stopped for good.
    pub fn remove(&self, kind: &'static str, id: &str) {
        if let Ok(mut actors) = self.actors.write() {
            actors.remove(&(kind, id.to_string()));
        }
    }

    /// Every actor, ordered by kind and id.
    pub fn snapshot(&self) -> Vec<ActorInfo> {
        self.actors
            .read()
            .map(|a| a.values().map(|e| e.stats.info()).collect())
            .unwrap_or_default()
    }

    /// Makes the actor (kind, id) fail. Errors when it is unknown or cannot
    /// be failed.
    pub fn fail(&self, kind: &str, id: &str, reason: &str, panic: bool) -> Result<(), String> {
        let actors = self.actors.read().map_err(|_| "actor tree poisoned".to_string())?;
        let entry = actors
            .iter()
            .find(|((k, i), _)| *k == kind && i == id)
            .map(|(_, e)| e)
            .ok_or_else(|| format!("no actor {kind}/{id}"))?;
        let fail = entry
            .fail
            .as_ref()
            .ok_or_else(|| format!("actor {kind}/{id} cannot be failed on request"))?;
        entry.stats.sent();
        fail.try_send(Fail {
            reason: reason.to_string(),
            panic,
        })
        .map_err(|e| format!("actor {kind}/{id} did not take the request: {e}"))
    }
}

/// An actor's address that counts what is sent, for its mailbox depth.
pub struct Tracked<A: Actor> {
    addr: Addr<A>,
    stats: Arc<ActorStats>,
}

impl<A: Actor> Clone for Tracked<A> {
    fn clone(&self) -> Self {
        Tracked {
            addr: self.addr.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<A: Actor> Tracked<A> {
    /// Wraps `addr`, counting into `stats`.
    pub fn new(addr: Addr<A>, stats: Arc<ActorStats>) -> Tracked<A> {
        Tracked { addr, stats }
    }

    /// The plain address.
    pub fn addr(&self) -> &Addr<A> {
        &self.addr
    }

    /// The actor's figures.
    pub fn stats(&self) -> &Arc<ActorStats> {
        &self.stats
    }

    /// `Addr::send`, counted.
    pub fn send<M>(&self, msg: M) -> actix::dev::Request<A, M>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        self.stats.sent();
        self.addr.send(msg)
    }

    /// `Addr::do_send`, counted.
    pub fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        self.stats.sent();
        self.addr.do_send(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_count_mailbox_depth_restarts_and_errors() {
        let tree = ActorTree::default();
        let s = tree.register(kind::QUEUE, "t/0", "broker");
        assert!(
            Arc::ptr_eq(&s, &tree.register(kind::QUEUE, "t/0", "broker")),
            "kept across restarts"
        );
        s.started();
        s.sent();
        s.sent();
        drop(s.handling());
        s.failed("disk on fire");
        s.restarting();
        let info = &tree.snapshot()[0];
        assert_eq!((info.mailbox_depth, info.handled, info.restarts), (1, 1, 1));
        assert_eq!(info.state, ActorState::Restarting);
        assert_eq!(info.last_error.as_deref(), Some("disk on fire"));
        assert!(tree
            .fail(kind::QUEUE, "t/0", "x", false)
            .unwrap_err()
            .contains("cannot be failed"));
        assert!(tree
            .fail(kind::QUEUE, "nope", "x", false)
            .unwrap_err()
            .contains("no actor"));
        tree.remove(kind::QUEUE, "t/0");
        assert!(tree.snapshot().is_empty());
    }
}
