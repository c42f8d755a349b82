//! The [`NameServerClient`] actor: keeps one broker registered with every
//! configured name server.
//!
//! It registers on start, every `interval`, and on [`RegisterNow`]. Each
//! name server is reached independently and concurrently, so a dead one only
//! costs a logged warning. All network I/O runs in spawned futures; the
//! actor's own handlers return at once.

use crate::observe::{kind, ActorStats};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, ResponseFuture, SpawnHandle, WrapFuture};
use bytes::Bytes;
use futures::future::join_all;
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;

use crate::client::{ClientError, ClientResult, ConnectOptions, RemotingConnection};
use crate::wire::control::{to_json, RegisterBroker, ReplicationReport, TopicInfo, UnregisterBroker};
use crate::wire::Command;

/// Deadline of one registration with one name server (lock wait, connect
/// and request together).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long [`RegisterNow`] waits for a first acknowledgement.
const REGISTER_NOW_WAIT: Duration = Duration::from_secs(2);
/// Deadline of [`Unregister`], all name servers together.
const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(1);
/// How often links are checked for a lost connection. A name server drops
/// a broker when its registration connection closes, and a restarted name
/// server knows no broker: either way the broker registers again within
/// this, not a whole `register_interval_ms` later.
const LINK_CHECK: Duration = Duration::from_secs(1);

/// Who the broker is, as announced to name servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerIdentity {
    /// Cluster name.
    pub cluster: String,
    /// Broker group name.
    pub broker_name: String,
    /// 0 for a master, > 0 for a slave.
    pub broker_id: u64,
    /// Address clients connect to.
    pub addr: String,
}

/// Produces the broker's current topic set for a registration.
pub type TopicsFn = Arc<dyn Fn() -> BTreeMap<String, TopicInfo> + Send + Sync>;

/// Reads the broker's replication state for each registration.
pub type ReportFn = Arc<dyn Fn() -> Option<ReplicationReport> + Send + Sync>;

/// Registers one broker with its name servers.
pub struct NameServerClient {
    stats: Arc<ActorStats>,
    links: Vec<Arc<NamesrvLink>>,
    identity: BrokerIdentity,
    interval: Duration,
    topics: TopicsFn,
    report: ReportFn,
    /// Set once any name server acknowledged a registration; shared with
    /// the spawned registration futures.
    registered: Arc<AtomicBool>,
    /// The periodic registration; `None` after [`Unregister`].
    timer: Option<SpawnHandle>,
    /// The lost-connection check (runs while `timer` does).
    link_check: Option<SpawnHandle>,
}

impl NameServerClient {
    /// Reports into `stats` (from the broker's actor tree).
    pub fn with_stats(mut self, stats: Arc<ActorStats>) -> Self {
        self.stats = stats;
        self
    }

    /// A client registering `identity` with every address of
    /// `namesrv_addrs` every `interval` (at least 1 ms), announcing the
    /// topics `topics` returns at the time of each registration.
    pub fn new(
        namesrv_addrs: Vec<String>,
        identity: BrokerIdentity,
        interval: Duration,
        topics: TopicsFn,
    ) -> NameServerClient {
        NameServerClient {
            stats: ActorStats::detached(kind::NAME_SERVER_CLIENT, "0"),
            links: namesrv_addrs.into_iter().map(NamesrvLink::new).map(Arc::new).collect(),
            identity,
            interval: interval.max(Duration::from_millis(1)),
            topics,
            report: Arc::new(|| None),
            registered: Arc::new(AtomicBool::new(false)),
            timer: None,
            link_check: None,
        }
    }

    /// Signs registrations and speaks TLS as `security` says.
    pub fn with_security(mut self, security: Arc<ConnectOptions>) -> Self {
        self.links = self
            .links
            .iter()
            .map(|l| {
                Arc::new(NamesrvLink {
                    security: security.clone(),
                    ..NamesrvLink::new(l.addr.clone())
                })
            })
            .collect();
        self
    }

    /// Registers the broker's replication state too, read by `report`.
    pub fn with_report(mut self, report: ReportFn) -> Self {
        self.report = report;
        self
    }

    /// Starts one registration round with every name server. The returned
    /// receiver gets one outcome per name server (true: acknowledged) and
    /// closes once all are known.
    fn start_round(&self, ctx: &mut Context<Self>) -> mpsc::UnboundedReceiver<bool> {
        let links: Vec<Arc<NamesrvLink>> = self.links.clone();
        self.start_round_with(links, ctx)
    }

    /// A registration round with `links` only.
    fn start_round_with(&self, links: Vec<Arc<NamesrvLink>>, ctx: &mut Context<Self>) -> mpsc::UnboundedReceiver<bool> {
        let (tx, rx) = mpsc::unbounded_channel();
        let attempts = links.into_iter().map(|link| {
            let link = link.clone();
            let tx = tx.clone();
            let identity = self.identity.clone();
            let topics = self.topics.clone();
            let report = self.report.clone();
            let registered = self.registered.clone();
            async move {
                // The topic set is read once the link is ours, so that of two
                // overlapping rounds the later request carries the newer set.
                let header = || {
                    to_json(&RegisterBroker {
                        cluster: identity.cluster.clone(),
                        broker_name: identity.broker_name.clone(),
                        broker_id: identity.broker_id,
                        addr: identity.addr.clone(),
                        topics: topics(),
                        replication: report(),
                    })
                };
                let ok = match link.call(Command::RegisterBroker, header, REGISTER_TIMEOUT).await {
                    Ok(()) => {
                        if !registered.swap(true, Ordering::AcqRel) {
                            tracing::info!(namesrv = %link.addr, "registered with name server");
                        }
                        if link.failures.swap(0, Ordering::AcqRel) > 0 {
                            tracing::info!(namesrv = %link.addr, "registered with name server again");
                        }
                        tracing::debug!(namesrv = %link.addr, "registration acknowledged");
                        true
                    }
                    Err(e) => {
                        // Once per outage: the link check retries every second.
                        if link.failures.fetch_add(1, Ordering::AcqRel) == 0 {
                            tracing::warn!(namesrv = %link.addr, error = %e, "registration failed");
                        } else {
                            tracing::debug!(namesrv = %link.addr, error = %e, "registration failed again");
                        }
                        false
                    }
                };
                let _ = tx.send(ok);
            }
        });
        ctx.spawn(join_all(attempts).into_actor(self).map(|_, _, _| ()));
        rx
    }

    fn start_timer(&mut self, ctx: &mut Context<Self>) {
        if self.timer.is_none() {
            let handle = ctx.run_interval(self.interval, |act, ctx| {
                act.start_round(ctx);
            });
            self.timer = Some(handle);
        }
        if self.link_check.is_none() {
            let handle = ctx.run_interval(LINK_CHECK.min(self.interval), |act, ctx| {
                let lost: Vec<Arc<NamesrvLink>> = act.links.iter().filter(|l| l.lost()).cloned().collect();
                if !lost.is_empty() {
                    act.start_round_with(lost, ctx);
                }
            });
            self.link_check = Some(handle);
        }
    }
}

impl Actor for NameServerClient {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.stats.started();
        if self.links.is_empty() {
            tracing::warn!("no name server configured; the broker will not be routable");
        }
        self.start_round(ctx);
        self.start_timer(ctx);
    }
}

impl actix::Supervised for NameServerClient {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.stats.restarting();
        // `started` runs again and re-arms the timers; the old handles are dead.
        self.timer = None;
        self.link_check = None;
    }
}

/// Register now (e.g. after a topic change) and resume periodic
/// registration if [`Unregister`] paused it. Resolves to true as soon as one
/// name server acknowledged, false if none did within about 2 s.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "bool")]
pub struct RegisterNow;

/// Leave every name server (best effort, within 1 s) and pause periodic
/// registration; used at shutdown.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Unregister;

/// True once any name server acknowledged a registration (and no
/// [`Unregister`] came since); for readiness checks.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "bool")]
pub struct IsRegistered;

impl Handler<RegisterNow> for NameServerClient {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, _: RegisterNow, ctx: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        self.start_timer(ctx);
        let mut outcomes = self.start_round(ctx);
        Box::pin(async move {
            let first_ack = async {
                while let Some(ok) = outcomes.recv().await {
                    if ok {
                        return true;
                    }
                }
                false
            };
            tokio::time::timeout(REGISTER_NOW_WAIT, first_ack)
                .await
                .unwrap_or(false)
        })
    }
}

impl Handler<Unregister> for NameServerClient {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Unregister, ctx: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        // Stop first, so no periodic round re-registers us afterwards.
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        if let Some(check) = self.link_check.take() {
            ctx.cancel_future(check);
        }
        self.registered.store(false, Ordering::Release);
        let header = to_json(&UnregisterBroker {
            cluster: self.identity.cluster.clone(),
            broker_name: self.identity.broker_name.clone(),
            broker_id: self.identity.broker_id,
        });
        let attempts = self.links.iter().cloned().map(move |link| {
            let header = header.clone();
            async move {
                if let Err(e) = link
                    .call(Command::UnregisterBroker, || header, UNREGISTER_TIMEOUT)
                    .await
                {
                    tracing::warn!(namesrv = %link.addr, error = %e, "unregistration failed");
                }
            }
        });
        let all = join_all(attempts);
        Box::pin(async move {
            let _ = tokio::time::timeout(UNREGISTER_TIMEOUT, all).await;
        })
    }
}

impl Handler<IsRegistered> for NameServerClient {
    type Result = bool;

    fn handle(&mut self, _: IsRegistered, _: &mut Context<Self>) -> bool {
        let _timer = self.stats.handling();
        self.registered.load(Ordering::Acquire)
    }
}

/// The cached connection to one name server.
///
/// The async mutex serialises requests to one name server, so a stale topic
/// set can never overtake a fresher one on its way there, and at most one
/// connection attempt is under way per address.
struct NamesrvLink {
    addr: String,
    security: Arc<ConnectOptions>,
    conn: Mutex<Option<RemotingConnection>>,
    /// Failed registrations since the last success.
    failures: AtomicU32,
}

impl NamesrvLink {
    fn new(addr: String) -> NamesrvLink {
        NamesrvLink {
            addr,
            security: Arc::default(),
            conn: Mutex::new(None),
            failures: AtomicU32::new(0),
        }
    }

    /// True when the link has no open connection (never made, dropped after
    /// a failure, or closed by the name server) and no request is under way
    /// on it: the name server has, or soon will have, forgotten us.
    fn lost(&self) -> bool {
        match self.conn.try_lock() {
            Ok(slot) => slot.as_ref().is_none_or(RemotingConnection::is_closed),
            Err(_) => false,
        }
    }

    /// Sends `cmd` with the header `header()` builds (called once the link
    /// is held), expecting an empty success, all within `timeout`.
    async fn call(&self, cmd: Command, header: impl FnOnce() -> Bytes, timeout: Duration) -> ClientResult<()> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let mut slot = tokio::time::timeout_at(deadline, self.conn.lock())
            .await
            .map_err(|_| ClientError::Timeout {
                what: format!("{cmd:?} to {} (waiting for an earlier request)", self.addr),
                millis: timeout.as_millis() as u64,
            })?;
        let conn = match slot.as_ref() {
            Some(conn) if !conn.is_closed() => conn.clone(),
            _ => {
                *slot = None;
                let conn = RemotingConnection::connect_with(&self.addr, left(), None, self.security.clone()).await?;
                *slot = Some(conn.clone());
                conn
            }
        };
        let result = conn.request(cmd, header(), Bytes::new(), left()).await;
        if let Err(ClientError::Timeout { .. } | ClientError::Closed(_)) = &result {
            // The peer may be hung rather than slow: reconnect next time.
            *slot = None;
        }
        result.map(|_| ())
    }
}

crate::observe::failable!(NameServerClient);
