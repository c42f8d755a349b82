//! What every client shares: name-server lookups, a route cache, a pool of
//! broker connections and a set of servers known to be down.
//!
//! A server that cannot be reached (connection refused, I/O error, closed
//! connection, connect timeout) is *marked down* at once: requests to it fail
//! fast (no reconnect per request), the cached routes naming it are dropped
//! (and while it stays down, routes naming it are trusted for
//! [`DOWN_ROUTE_TTL`] only, so a broker that comes back elsewhere is found),
//! and a background probe reconnects every [`DOWN_RETRY_MIN`]…[`DOWN_RETRY_MAX`]
//! until it answers a ping, which clears the mark.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::{ClientError, ClientResult};
use super::remoting::{ConnectOptions, RemotingConnection};
use crate::acl::Credentials;
use crate::wire::control::{from_json, to_json, BrokerRoute, ClusterInfo, TopicRef, TopicRoute};
use crate::wire::{Command, Status};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name servers, tried in order until one answers.
    pub namesrv_addrs: Vec<String>,
    /// Deadline of one request (pulls add their long-poll wait).
    pub request_timeout: Duration,
    /// Extra attempts of a failed send, each on another queue/broker.
    pub retries: u32,
    /// How long a topic route is trusted before it is looked up again.
    pub route_ttl: Duration,
    /// Largest request frame the brokers accept (their
    /// `broker.max_frame_bytes`, [`DEFAULT_MAX_FRAME_BYTES`] unless
    /// configured otherwise); a larger send is refused before anything is
    /// sent.
    pub max_frame_bytes: usize,
    /// Signed requests (ACL) and TLS for every connection this client
    /// opens.
    pub security: ConnectOptions,
}

/// The brokers' default frame limit (16 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// First delay before a server marked down is tried again.
pub const DOWN_RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest delay between two tries of a server marked down.
pub const DOWN_RETRY_MAX: Duration = Duration::from_secs(2);
/// How long a cached route naming a server marked down is trusted.
pub const DOWN_ROUTE_TTL: Duration = Duration::from_secs(2);
/// When no name server answered a route refresh, how long reads use the
/// old route before asking them again.
pub const READ_REFRESH_RETRY: Duration = Duration::from_millis(500);

impl ClientConfig {
    /// Defaults (3 s requests, 2 retries, 30 s routes, 16 MiB frames) for
    /// these name servers.
    pub fn new<S: Into<String>>(namesrv_addrs: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            namesrv_addrs: namesrv_addrs.into_iter().map(Into::into).collect(),
            request_timeout: Duration::from_secs(3),
            retries: 2,
            route_ttl: Duration::from_secs(30),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            security: ConnectOptions::default(),
        }
    }

    /// These settings, signing every request with `credentials`.
    pub fn with_credentials(mut self, credentials: Credentials) -> ClientConfig {
        self.security.credentials = Some(credentials);
        self
    }
}

/// A queue of a topic on one broker group.
///
/// A queue's identity is `(topic, broker_name, queue_id)`: equality,
/// ordering and hashing ignore [`MessageQueue::broker_addr`], so that
/// assignments and maps keyed by queues stay the same while the group's
/// master dies, is read from a slave, comes back or moves.
#[derive(Debug, Clone)]
pub struct MessageQueue {
    /// Topic.
    pub topic: String,
    /// Broker group name.
    pub broker_name: String,
    /// Address of the group's master: the live one, else the one the name
    /// servers list as down; only when the route names no master at all,
    /// the lowest-id live slave's. Writes (sends, commits) go to the
    /// master; reads go to [`ClientCore::read_addr`], which turns to a
    /// slave while the master is down.
    pub broker_addr: String,
    /// Queue id within the group.
    pub queue_id: u32,
}

impl MessageQueue {
    fn key(&self) -> (&str, &str, u32) {
        (&self.topic, &self.broker_name, self.queue_id)
    }
}

impl PartialEq for MessageQueue {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for MessageQueue {}

impl std::hash::Hash for MessageQueue {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialOrd for MessageQueue {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MessageQueue {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl std::fmt::Display for MessageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.broker_name, self.queue_id)
    }
}

/// The *writable* queues of a route (those producers send to), ordered by
/// broker name then queue id: every queue of each broker group with a live
/// master. Groups whose master is down or unknown are left out.
pub fn route_queues(route: &TopicRoute) -> Vec<MessageQueue> {
    queues_where(route, |b| b.addrs.contains_key(&0))
}

/// The *readable* queues of a route (those consumers read and groups
/// assign), ordered by broker name then queue id: every queue of each
/// broker group with a live master **or** a live slave, so that the queues
/// of a group whose master died stay assigned and are read from its slave
/// (see [`ClientCore::read_addr`]).
pub fn route_readable_queues(route: &TopicRoute) -> Vec<MessageQueue> {
    queues_where(route, |b| !b.addrs.is_empty())
}

/// Every queue of the route's groups passing `keep`, with the address
/// [`MessageQueue::broker_addr`] documents.
fn queues_where(route: &TopicRoute, keep: impl Fn(&BrokerRoute) -> bool) -> Vec<MessageQueue> {
    let mut out = Vec::new();
    for b in route.brokers.iter().filter(|b| keep(b)) {
        let Some(addr) = b
            .addrs
            .get(&0)
            .or_else(|| b.down.get(&0))
            .or_else(|| b.addrs.values().next())
        else {
            continue;
        };
        for q in 0..b.queues {
            out.push(MessageQueue {
                topic: route.topic.clone(),
                broker_name: b.broker_name.clone(),
                broker_addr: addr.clone(),
                queue_id: q,
            });
        }
    }
    out.sort();
    out
}

/// Where to read a queue of broker group `b` (its route entry, if the
/// route has one): the live master unless `is_down` says it is marked
/// down; else the live slave with the lowest id not marked down. With
/// `prefer_slave` (a consumer far behind, see
/// [`super::PullConsumer::with_read_from_slave_when_behind`]) that slave
/// comes first. When every candidate is marked down: the master (or
/// slave) the route lists anyway, else `fallback` — the request then
/// fails fast and is retried once the background probe finds it back.
pub fn pick_read_addr(
    b: Option<&BrokerRoute>,
    fallback: &str,
    prefer_slave: bool,
    is_down: &dyn Fn(&str) -> bool,
) -> String {
    let Some(b) = b else {
        return fallback.to_string();
    };
    let master = b.addrs.get(&0).filter(|a| !is_down(a));
    let slave = b.addrs.iter().find(|(id, a)| **id > 0 && !is_down(a)).map(|(_, a)| a);
    let chosen = if prefer_slave {
        slave.or(master)
    } else {
        master.or(slave)
    };
    chosen
        .or_else(|| b.addrs.get(&0))
        .or_else(|| b.addrs.values().next())
        .map_or_else(|| fallback.to_string(), Clone::clone)
}

/// Where a read goes ([`ClientCore::read_target`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadTarget {
    /// The broker's address.
    pub addr: String,
    /// True when it is a slave of the queue's group (read-only, possibly
    /// behind its master).
    pub slave: bool,
}

/// One server marked down.
#[derive(Debug, Clone)]
struct DownEntry {
    /// When it was first found unreachable (this time).
    since: Instant,
    /// Earliest time of the next connection attempt.
    retry_at: Instant,
    /// Failed attempts in a row.
    failures: u32,
    /// A background probe is running for it.
    probing: bool,
    /// Why it was found unreachable (the first failure of this outage).
    reason: Option<String>,
}

/// Servers found unreachable, with when to try each again. Pure
/// bookkeeping: the caller passes the time.
#[derive(Debug, Default)]
struct DownSet {
    map: HashMap<String, DownEntry>,
}

/// Delay before the next try after `failures` failed attempts in a row:
/// [`DOWN_RETRY_MIN`], doubling up to [`DOWN_RETRY_MAX`].
fn down_backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(8);
    (DOWN_RETRY_MIN * (1u32 << shift)).min(DOWN_RETRY_MAX)
}

impl DownSet {
    /// Records a failed attempt on `addr`; true when it was up until now.
    fn mark(&mut self, addr: &str, now: Instant) -> bool {
        match self.map.get_mut(addr) {
            Some(e) => {
                e.failures = e.failures.saturating_add(1);
                e.retry_at = now + down_backoff(e.failures);
                false
            }
            None => {
                self.map.insert(
                    addr.to_string(),
                    DownEntry {
                        since: now,
                        retry_at: now + down_backoff(1),
                        failures: 1,
                        probing: false,
                        reason: None,
                    },
                );
                true
            }
        }
    }

    /// Forgets `addr`; true when it was marked down.
    fn clear(&mut self, addr: &str) -> bool {
        self.map.remove(addr).is_some()
    }

    fn contains(&self, addr: &str) -> bool {
        self.map.contains_key(addr)
    }

    /// May a connection to `addr` be attempted now? Always for a server not
    /// marked down; for one marked down only once its retry time has come,
    /// and then the retry time moves on so that concurrent callers keep
    /// failing fast while this attempt runs.
    fn claim_attempt(&mut self, addr: &str, now: Instant) -> bool {
        match self.map.get_mut(addr) {
            None => true,
            Some(e) if e.retry_at <= now => {
                e.retry_at = now + down_backoff(e.failures.saturating_add(1));
                true
            }
            Some(_) => false,
        }
    }

    /// Starts probing `addr` unless a probe already runs; true when the
    /// caller should start one.
    fn start_probe(&mut self, addr: &str) -> bool {
        match self.map.get_mut(addr) {
            Some(e) if !e.probing => {
                e.probing = true;
                true
            }
            _ => false,
        }
    }

    /// When the next probe of `addr` is due; `None` once it is up again.
    fn next_probe(&self, addr: &str) -> Option<Instant> {
        self.map.get(addr).map(|e| e.retry_at)
    }
}

type Pool = Mutex<HashMap<String, RemotingConnection>>;

/// Is `e` a sign that the server cannot be reached (rather than an answer,
/// or a slow one)?
fn unreachable(e: &ClientError) -> bool {
    matches!(e, ClientError::Io { .. } | ClientError::Closed(_))
}

/// Does `route` name `addr` as any broker's address?
fn route_names(route: &TopicRoute, addr: &str) -> bool {
    route.brokers.iter().any(|b| b.addrs.values().any(|a| a == addr))
}

/// Shared client state.
#[derive(Debug)]
pub struct ClientCore {
    /// Settings.
    pub cfg: ClientConfig,
    pool: Arc<Pool>,
    routes: Mutex<HashMap<String, (Instant, Arc<TopicRoute>)>>,
    /// The last route looked up per topic (never dropped): what reads use
    /// when no name server answers.
    last_routes: Mutex<HashMap<String, Arc<TopicRoute>>>,
    down: Arc<Mutex<DownSet>>,
    /// `cfg.security`, shared by every connection.
    security: Arc<ConnectOptions>,
}

impl ClientCore {
    /// A client core for `cfg` (connections are made lazily).
    pub fn new(cfg: ClientConfig) -> Arc<ClientCore> {
        Arc::new(ClientCore {
            security: Arc::new(cfg.security.clone()),
            cfg,
            pool: Arc::default(),
            routes: Mutex::default(),
            last_routes: Mutex::default(),
            down: Arc::default(),
        })
    }

    /// How this client's connections sign and encrypt.
    pub fn security(&self) -> Arc<ConnectOptions> {
        self.security.clone()
    }

    /// Marks `addr` (a broker or name server) down, as the client does by
    /// itself when a connection to it is refused, fails or closes: requests
    /// to it fail fast until it answers again, its pooled connection is
    /// dropped, cached routes naming it are forgotten (so the next lookup
    /// asks the name servers), and, inside a tokio runtime, a background
    /// probe reconnects (after 0.5 s, then every 1–2 s) and clears the mark
    /// once the server answers a ping.
    pub fn mark_down(&self, addr: &str) {
        self.mark_down_because(addr, None);
    }

    fn mark_down_because(&self, addr: &str, why: Option<&ClientError>) {
        let now = Instant::now();
        let (newly, probe) = match self.down.lock() {
            Ok(mut d) => {
                let newly = d.mark(addr, now);
                if let (Some(e), Some(entry)) = (why, d.map.get_mut(addr)) {
                    if entry.reason.is_none() {
                        entry.reason = Some(failure_reason(e));
                    }
                }
                (newly, d.start_probe(addr))
            }
            Err(_) => return,
        };
        if let Ok(mut p) = self.pool.lock() {
            p.remove(addr);
        }
        if newly {
            match why {
                Some(e) => {
                    tracing::warn!(%addr, error = %e, "server unreachable; marked down and retried in the background")
                }
                None => tracing::warn!(%addr, "server marked down; retried in the background"),
            }
            if let Ok(mut m) = self.routes.lock() {
                m.retain(|_, (_, r)| !route_names(r, addr));
            }
        }
        if probe {
            self.spawn_probe(addr);
        }
    }

    /// Clears `addr`'s down mark (the client does so itself when a
    /// connection to it succeeds again).
    pub fn mark_up(&self, addr: &str) {
        mark_up(&self.down, addr);
    }

    /// Whether `addr` is marked down (see [`ClientCore::mark_down`]).
    pub fn is_down(&self, addr: &str) -> bool {
        self.down.lock().is_ok_and(|d| d.contains(addr))
    }

    /// Why `addr` is marked down, in a few words (`connection refused`,
    /// `connection closed`, …; `marked down` when marked without a
    /// failure); `None` when it is not marked down.
    pub fn down_reason(&self, addr: &str) -> Option<String> {
        self.down.lock().ok().and_then(|d| {
            d.map
                .get(addr)
                .map(|e| e.reason.clone().unwrap_or_else(|| "marked down".into()))
        })
    }

    /// Every server marked down, with how long it has been down.
    pub fn down_servers(&self) -> Vec<(String, Duration)> {
        let mut out: Vec<(String, Duration)> = self
            .down
            .lock()
            .map(|d| d.map.iter().map(|(a, e)| (a.clone(), e.since.elapsed())).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Probes `addr` until it answers a ping or is no longer marked down
    /// (or the client is gone).
    fn spawn_probe(&self, addr: &str) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime: callers retry themselves once the backoff passed.
            if let Ok(mut d) = self.down.lock() {
                if let Some(e) = d.map.get_mut(addr) {
                    e.probing = false;
                }
            }
            return;
        };
        let down: Weak<Mutex<DownSet>> = Arc::downgrade(&self.down);
        let pool: Weak<Pool> = Arc::downgrade(&self.pool);
        let addr = addr.to_string();
        let timeout = self.cfg.request_timeout;
        let security = self.security.clone();
        rt.spawn(async move {
            loop {
                let due = match down.upgrade() {
                    Some(d) => match d.lock().ok().and_then(|d| d.next_probe(&addr)) {
                        Some(due) => due,
                        None => return,
                    },
                    None => return,
                };
                tokio::time::sleep_until(due.into()).await;
                let Some(d) = down.upgrade() else { return };
                let claimed = d.lock().is_ok_and(|mut d| d.claim_attempt(&addr, Instant::now()));
                if !claimed {
                    continue;
                }
                let answered = match RemotingConnection::connect_with(&addr, timeout, None, security.clone()).await {
                    Ok(conn) => conn
                        .request(Command::Ping, Bytes::new(), Bytes::new(), timeout)
                        .await
                        .map(|_| conn),
                    Err(e) => Err(e),
                };
                match answered {
                    Ok(conn) => {
                        if let Some(p) = pool.upgrade() {
                            if let Ok(mut p) = p.lock() {
                                p.insert(addr.clone(), conn);
                            }
                        }
                        mark_up(&d, &addr);
                        return;
                    }
                    Err(_) => {
                        if let Ok(mut d) = d.lock() {
                            if d.contains(&addr) {
                                d.mark(&addr, Instant::now());
                            }
                        }
                    }
                }
            }
        });
    }

    /// A live connection to `addr`, reusing a pooled one. A server marked
    /// down fails fast (an `Io` error saying so) until its retry time.
    pub async fn connection(&self, addr: &str) -> ClientResult<RemotingConnection> {
        self.connection_inner(addr, false).await
    }

    async fn connection_inner(&self, addr: &str, force: bool) -> ClientResult<RemotingConnection> {
        if let Some(c) = self.pool.lock().ok().and_then(|p| p.get(addr).cloned()) {
            if !c.is_closed() {
                return Ok(c);
            }
        }
        let claimed = self
            .down
            .lock()
            .map_or(true, |mut d| d.claim_attempt(addr, Instant::now()));
        if !claimed && !force {
            let since = self
                .down
                .lock()
                .ok()
                .and_then(|d| d.map.get(addr).map(|e| e.since.elapsed()))
                .unwrap_or_default();
            return Err(ClientError::Io {
                addr: addr.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    format!(
                        "unreachable for {:.1} s (marked down; retried in the background)",
                        since.as_secs_f64()
                    ),
                ),
            });
        }
        match RemotingConnection::connect_with(addr, self.cfg.request_timeout, None, self.security.clone()).await {
            Ok(conn) => {
                if let Ok(mut p) = self.pool.lock() {
                    p.insert(addr.to_string(), conn.clone());
                }
                self.mark_up(addr);
                Ok(conn)
            }
            Err(e) => {
                // A connect timeout counts too: nothing answered at all.
                self.mark_down_because(addr, Some(&e));
                Err(e)
            }
        }
    }

    /// One request to one server; a failed connection is dropped from the
    /// pool so the next call reconnects, and a server that cannot be reached
    /// is marked down (see [`ClientCore::mark_down`]).
    pub async fn request(
        &self,
        addr: &str,
        cmd: Command,
        header: Bytes,
        body: Bytes,
        timeout: Duration,
    ) -> ClientResult<(Bytes, Bytes)> {
        self.request_inner(addr, cmd, header, body, timeout, false).await
    }

    /// Like [`ClientCore::request`], but connects even to a server marked
    /// down (a real attempt, which clears or renews the mark): for a caller
    /// with no other server to turn to, whose server may be back before the
    /// background probe has noticed.
    pub async fn request_even_if_down(
        &self,
        addr: &str,
        cmd: Command,
        header: Bytes,
        body: Bytes,
        timeout: Duration,
    ) -> ClientResult<(Bytes, Bytes)> {
        self.request_inner(addr, cmd, header, body, timeout, true).await
    }

    async fn request_inner(
        &self,
        addr: &str,
        cmd: Command,
        header: Bytes,
        body: Bytes,
        timeout: Duration,
        force: bool,
    ) -> ClientResult<(Bytes, Bytes)> {
        let conn = self.connection_inner(addr, force).await?;
        let result = conn.request(cmd, header, body, timeout).await;
        match &result {
            Err(e) if unreachable(e) => self.mark_down_because(addr, Some(e)),
            Err(ClientError::Timeout { .. }) => {
                if let Ok(mut p) = self.pool.lock() {
                    p.remove(addr);
                }
            }
            _ => {}
        }
        result
    }

    /// Pings `addr` (a broker or a name server) and returns the round trip;
    /// tries even a server marked down, and clears or sets its mark by the
    /// outcome.
    pub async fn ping(&self, addr: &str) -> ClientResult<Duration> {
        let started = Instant::now();
        self.request_inner(
            addr,
            Command::Ping,
            Bytes::new(),
            Bytes::new(),
            self.cfg.request_timeout,
            true,
        )
        .await?;
        Ok(started.elapsed())
    }

    /// Asks the name servers in turn (those not marked down first; those
    /// marked down too when no other answers); the first answer (success or
    /// a server error status) wins, network failures move on to the next.
    pub async fn namesrv(&self, cmd: Command, header: Bytes) -> ClientResult<Bytes> {
        if self.cfg.namesrv_addrs.is_empty() {
            return Err(ClientError::Invalid("no name server address given".into()));
        }
        let (up, down): (Vec<&String>, Vec<&String>) = self.cfg.namesrv_addrs.iter().partition(|a| !self.is_down(a));
        let mut last = None;
        for (addr, force) in up
            .into_iter()
            .map(|a| (a, false))
            .chain(down.into_iter().map(|a| (a, true)))
        {
            match self
                .request_inner(addr, cmd, header.clone(), Bytes::new(), self.cfg.request_timeout, force)
                .await
            {
                Ok((_, body)) => return Ok(body),
                Err(e @ ClientError::Server { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(ClientError::NoRoute(format!(
            "no name server answered ({}): {}",
            self.cfg.namesrv_addrs.join(","),
            last.map_or_else(String::new, |e| e.to_string())
        )))
    }

    /// The topic's route, from the cache unless stale or `refresh`. A cached
    /// route naming a server marked down (here or by the name servers) is
    /// stale after [`DOWN_ROUTE_TTL`].
    pub async fn route(&self, topic: &str, refresh: bool) -> ClientResult<Arc<TopicRoute>> {
        if !refresh {
            if let Some((at, r)) = self.routes.lock().ok().and_then(|m| m.get(topic).cloned()) {
                let age = at.elapsed();
                if age < self.cfg.route_ttl && (age < DOWN_ROUTE_TTL || !self.route_names_down(&r)) {
                    return Ok(r);
                }
            }
        }
        let body = self
            .namesrv(
                Command::GetRoute,
                to_json(&TopicRef {
                    topic: topic.to_string(),
                }),
            )
            .await?;
        let route: Arc<TopicRoute> = Arc::new(from_json(&body, "route")?);
        if let Ok(mut m) = self.routes.lock() {
            m.insert(topic.to_string(), (Instant::now(), route.clone()));
        }
        if let Ok(mut m) = self.last_routes.lock() {
            m.insert(topic.to_string(), route.clone());
        }
        Ok(route)
    }

    /// Does `route` name a server this client or the name servers consider
    /// down? Such a route is refreshed often, so a broker that comes back
    /// (anywhere) is used again within [`DOWN_ROUTE_TTL`].
    fn route_names_down(&self, route: &TopicRoute) -> bool {
        route.brokers.iter().any(|b| !b.down.is_empty())
            || self
                .down
                .lock()
                .is_ok_and(|d| d.map.keys().any(|a| route_names(route, a)))
    }

    /// Forgets a cached route.
    pub fn invalidate(&self, topic: &str) {
        if let Ok(mut m) = self.routes.lock() {
            m.remove(topic);
        }
    }

    /// Every routable broker (those the name servers have not marked
    /// down).
    pub async fn cluster_info(&self) -> ClientResult<ClusterInfo> {
        Ok(self.cluster_view().await?.up())
    }

    /// Every registered broker, those marked `down` (registration
    /// connection closed, not yet expired) included: for admin views.
    pub async fn cluster_view(&self) -> ClientResult<ClusterInfo> {
        let body = self.namesrv(Command::GetClusterInfo, Bytes::new()).await?;
        Ok(from_json(&body, "cluster info")?)
    }

    /// Address of the master coordinating `group`
    /// ([`crate::wire::group::coordinator_for`] over the live masters).
    pub async fn group_coordinator(&self, group: &str) -> ClientResult<String> {
        let masters: Vec<(String, String)> = self
            .cluster_info()
            .await?
            .brokers
            .into_iter()
            .filter(|b| b.broker_id == 0)
            .map(|b| (b.broker_name, b.addr))
            .collect();
        crate::wire::group::coordinator_for(group, &masters)
            .map(str::to_string)
            .ok_or_else(|| ClientError::NoRoute("no live master broker to coordinate the group".into()))
    }

    /// The topic's route for choosing an address: the cached or a fresh
    /// one, or — when no name server answers — the last one cached, however
    /// old; after such a failed refresh the old route serves reads for
    /// [`READ_REFRESH_RETRY`] before the name servers are asked again (so
    /// that pulls do not each wait for them).
    async fn route_for_reads(&self, topic: &str) -> Option<Arc<TopicRoute>> {
        match self.route(topic, false).await {
            Ok(r) => Some(r),
            Err(_) => {
                // The last route looked up, even one dropped from the cache
                // because it names a server marked down.
                let last = self.last_routes.lock().ok()?.get(topic).cloned()?;
                let mut m = self.routes.lock().ok()?;
                let retry_at = Instant::now()
                    .checked_sub(DOWN_ROUTE_TTL.saturating_sub(READ_REFRESH_RETRY))
                    .unwrap_or_else(Instant::now);
                let entry = m.entry(topic.to_string()).or_insert((retry_at, last));
                entry.0 = entry.0.max(retry_at);
                Some(entry.1.clone())
            }
        }
    }

    /// Where to read `mq` (pull, offsets, committed offsets, offset search):
    /// its group's master while the route lists it live and this client
    /// has not marked it down; else the live slave with the lowest id not
    /// marked down; the master again as soon as it is back (listed live and
    /// answering). See [`pick_read_addr`]; without any route,
    /// [`MessageQueue::broker_addr`].
    pub async fn read_addr(&self, mq: &MessageQueue) -> String {
        self.read_addr_preferring(mq, false).await
    }

    /// Like [`ClientCore::read_addr`]; with `prefer_slave`, a live slave
    /// not marked down comes before the master (a consumer reading far
    /// behind the queue's end).
    pub async fn read_addr_preferring(&self, mq: &MessageQueue, prefer_slave: bool) -> String {
        self.read_target(mq, prefer_slave).await.addr
    }

    /// [`ClientCore::read_addr_preferring`], saying whether the address
    /// is one of the group's slaves.
    pub async fn read_target(&self, mq: &MessageQueue, prefer_slave: bool) -> ReadTarget {
        let route = self.route_for_reads(&mq.topic).await;
        let b = route
            .as_deref()
            .and_then(|r| r.brokers.iter().find(|b| b.broker_name == mq.broker_name));
        let addr = pick_read_addr(b, &mq.broker_addr, prefer_slave, &|a| self.is_down(a));
        let slave = b.is_some_and(|b| b.addrs.iter().any(|(id, a)| *id > 0 && *a == addr));
        ReadTarget { addr, slave }
    }

    /// Whether the (cached or fresh) route lists a live slave of `mq`'s
    /// broker group that this client has not marked down.
    pub async fn has_live_slave(&self, mq: &MessageQueue) -> bool {
        let route = self.route_for_reads(&mq.topic).await;
        route.is_some_and(|r| {
            r.brokers
                .iter()
                .filter(|b| b.broker_name == mq.broker_name)
                .any(|b| b.addrs.iter().any(|(id, a)| *id > 0 && !self.is_down(a)))
        })
    }

    /// Address of the live master of `broker_name` for `topic`'s route (to
    /// write to: commits, resets); `None` when the route lists none live.
    /// A master this client marked down is still returned (a write to it
    /// fails fast).
    pub async fn master_addr(&self, topic: &str, broker_name: &str) -> Option<String> {
        let route = self.route_for_reads(topic).await?;
        route
            .brokers
            .iter()
            .find(|b| b.broker_name == broker_name)
            .and_then(|b| b.addrs.get(&0).cloned())
    }

    async fn route_or_no_route(&self, topic: &str) -> ClientResult<Arc<TopicRoute>> {
        match self.route(topic, false).await {
            Ok(r) => Ok(r),
            Err(e) if e.status() == Some(Status::TopicNotExist) => Err(ClientError::NoRoute(format!(
                "topic {topic} does not exist on any live broker"
            ))),
            Err(e) => Err(e),
        }
    }

    /// The *readable* queues of a topic ([`route_readable_queues`]: those of
    /// every broker group with a live master or a live slave) — what
    /// consumers read and groups assign. A topic no live broker serves is
    /// `NoRoute`.
    pub async fn queues(&self, topic: &str) -> ClientResult<Vec<MessageQueue>> {
        let route = self.route_or_no_route(topic).await?;
        let queues = route_readable_queues(&route);
        if queues.is_empty() {
            return Err(ClientError::NoRoute(format!(
                "topic {topic} has no queue on a live broker"
            )));
        }
        Ok(queues)
    }

    /// The *writable* queues of a topic ([`route_queues`]: those of every
    /// broker group with a live master) — what producers send to. A topic
    /// without any is `NoRoute`, saying which groups have no live master.
    pub async fn writable_queues(&self, topic: &str) -> ClientResult<Vec<MessageQueue>> {
        let route = self.route_or_no_route(topic).await?;
        let queues = route_queues(&route);
        if queues.is_empty() {
            return Err(ClientError::NoRoute(format!(
                "topic {topic} has no queue on a live master{}",
                describe_masterless(&route)
            )));
        }
        Ok(queues)
    }
}

/// `: broker-a (master 127.0.0.1:10911 down, slave 127.0.0.1:10921 live)`
/// for the groups of `route` (empty when it has none).
fn describe_masterless(route: &TopicRoute) -> String {
    let parts: Vec<String> = route
        .brokers
        .iter()
        .filter(|b| !b.addrs.contains_key(&0))
        .map(|b| {
            let mut what = Vec::new();
            match b.down.get(&0) {
                Some(m) => what.push(format!("master {m} down")),
                None => what.push("no master registered".to_string()),
            }
            what.extend(
                b.addrs
                    .iter()
                    .filter(|(id, _)| **id > 0)
                    .map(|(_, a)| format!("slave {a} read-only")),
            );
            format!("{} ({})", b.broker_name, what.join(", "))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join("; "))
    }
}

/// A failure to reach a server in a few words: `connection refused`,
/// `connection reset`, `connection closed`, `no answer within 3000 ms`, …
pub fn failure_reason(e: &ClientError) -> String {
    match e {
        ClientError::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::ConnectionReset => "connection reset".into(),
            std::io::ErrorKind::ConnectionAborted => "connection aborted".into(),
            std::io::ErrorKind::BrokenPipe => "connection broken".into(),
            std::io::ErrorKind::TimedOut => "connect timed out".into(),
            _ => source.to_string(),
        },
        ClientError::Closed(_) => "connection closed".into(),
        ClientError::Timeout { what, millis } if what.starts_with("connecting") => {
            format!("connect timed out after {millis} ms")
        }
        ClientError::Timeout { millis, .. } => format!("no answer within {millis} ms"),
        ClientError::Server { status, .. } => status.name().to_string(),
        other => other.to_string(),
    }
}

/// Clears `addr`'s down mark, logging the recovery.
fn mark_up(down: &Mutex<DownSet>, addr: &str) {
    if down.lock().is_ok_and(|mut d| d.clear(addr)) {
        tracing::info!(%addr, "server reachable again");
    }
}

/// Fake servers and routes for the client's unit tests.
#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod tests;
