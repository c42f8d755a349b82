//! The [`NameServer`] actor: a thin shell over [`NamesrvState`] that owns the
//! clock and periodically drops brokers that stopped registering.
//!
//! It is meant to run under [`actix::Supervisor`]. Actix keeps the actor
//! value across a supervised restart, so the registry survives one; if the
//! actor is ever re-created from scratch the registry starts empty, which is
//! harmless: every broker re-registers within its register interval.

use std::sync::Arc;

use crate::observe::{kind, ActorStats};
use std::time::{Duration, Instant};

use actix::{Actor, AsyncContext, Context, Handler, Message, MessageResult, Supervised};

use crate::namesrv::state::NamesrvState;
use crate::wire::control::{AllTopics, ClusterInfo, RegisterBroker, TopicRoute, UnregisterBroker};

/// The name server's registry of live brokers.
pub struct NameServer {
    stats: Arc<ActorStats>,
    state: NamesrvState,
    expiry_ms: u64,
    scan_interval: Duration,
    /// Origin of the monotonic milliseconds fed to the state machine; a
    /// wall-clock jump must not expire (or immortalise) brokers.
    epoch: Instant,
}

impl NameServer {
    /// Reports into `stats` (from the broker's actor tree).
    pub fn with_stats(mut self, stats: Arc<ActorStats>) -> Self {
        self.stats = stats;
        self
    }

    /// A name server dropping brokers silent for more than `expiry_ms`,
    /// checked every `scan_interval` (at least 1 ms).
    pub fn new(expiry_ms: u64, scan_interval: Duration) -> NameServer {
        NameServer {
            stats: ActorStats::detached(kind::NAME_SERVER, "0"),
            state: NamesrvState::new(),
            expiry_ms,
            scan_interval: scan_interval.max(Duration::from_millis(1)),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn expire(&mut self) {
        for key in self.state.expire(self.now_ms(), self.expiry_ms) {
            tracing::info!(
                broker = %key,
                expiry_ms = self.expiry_ms,
                "broker stopped registering; removed from routes"
            );
        }
    }
}

impl Actor for NameServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.stats.started();
        // Also runs after a supervised restart, with the new context.
        ctx.run_interval(self.scan_interval, |act, _| act.expire());
    }
}

impl Supervised for NameServer {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.stats.restarting();
        tracing::warn!(brokers = self.state.len(), "name server actor restarting");
    }
}

/// A broker (re-)registers on connection `.1`; replaces its previous topic
/// set. Refused (with the reason) when another live broker holds its place.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), String>")]
pub struct Register(pub RegisterBroker, pub Option<u64>);

/// A connection closed: brokers registered on it are gone.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct ConnectionClosed(pub u64);

/// A broker leaves: asked on connection `conn` from `peer_ip` (only the
/// broker's own connection or host may; `NamesrvState::unregister_from`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), String>")]
pub struct Unregister {
    /// Which broker.
    pub req: UnregisterBroker,
    /// The connection the request came on.
    pub conn: Option<u64>,
    /// The requester's IP address.
    pub peer_ip: String,
}

/// The route of a topic, `None` when no live broker serves it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Option<TopicRoute>")]
pub struct GetRoute(pub String);

/// Every topic some live broker serves.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "AllTopics")]
pub struct GetAllTopics;

/// Every live broker.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "ClusterInfo")]
pub struct GetClusterInfo;

impl Handler<Register> for NameServer {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: Register, _: &mut Context<Self>) -> Result<(), String> {
        let _timer = self.stats.handling();
        let Register(req, conn) = msg;
        let (cluster, name, id, addr) = (
            req.cluster.clone(),
            req.broker_name.clone(),
            req.broker_id,
            req.addr.clone(),
        );
        let topics = req.topics.len();
        let now = self.now_ms();
        match self.state.register_on(req, now, conn) {
            Ok(true) => tracing::info!(%cluster, broker = %name, id, %addr, topics, "broker registered"),
            Ok(false) => tracing::debug!(%cluster, broker = %name, id, %addr, topics, "broker re-registered"),
            Err(why) => {
                tracing::warn!(%cluster, broker = %name, id, %addr, "registration refused: {why}");
                return Err(why);
            }
        }
        Ok(())
    }
}

impl Handler<ConnectionClosed> for NameServer {
    type Result = ();

    fn handle(&mut self, msg: ConnectionClosed, _: &mut Context<Self>) {
        let _timer = self.stats.handling();
        for key in self.state.connection_closed(msg.0) {
            tracing::info!(broker = %key, "broker's registration connection closed; removed from routes");
        }
    }
}

impl Handler<Unregister> for NameServer {
    type Result = Result<(), String>;

    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) -> Result<(), String> {
        let _timer = self.stats.handling();
        let req = msg.req;
        match self.state.unregister_from(&req, msg.conn, &msg.peer_ip) {
            Ok(true) => tracing::info!(
                cluster = %req.cluster,
                broker = %req.broker_name,
                id = req.broker_id,
                "broker unregistered"
            ),
            Ok(false) => {}
            Err(why) => {
                tracing::warn!("unregistration refused: {why}");
                return Err(why);
            }
        }
        Ok(())
    }
}

impl Handler<GetRoute> for NameServer {
    type Result = Option<TopicRoute>;

    fn handle(&mut self, msg: GetRoute, _: &mut Context<Self>) -> Option<TopicRoute> {
        let _timer = self.stats.handling();
        self.state.route(&msg.0)
    }
}

impl Handler<GetAllTopics> for NameServer {
    type Result = MessageResult<GetAllTopics>;

    fn handle(&mut self, _: GetAllTopics, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        MessageResult(self.state.all_topics())
    }
}

impl Handler<GetClusterInfo> for NameServer {
    type Result = MessageResult<GetClusterInfo>;

    fn handle(&mut self, _: GetClusterInfo, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        MessageResult(self.state.cluster_info(self.now_ms()))
    }
}

crate::observe::failable!(NameServer);
