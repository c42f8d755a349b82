//! Sessions: one per client connection, whatever protocol it speaks.
//!
//! A [`Session`] carries who is asking — connection id, peer address,
//! client id once known, [`ClientRole`], [`Principal`] — and an atomic
//! last-seen time. The adapter that owns the connection creates it,
//! registers it in the [`SessionRegistry`] and passes it to the broker core
//! with every operation; the core authorizes against it
//! (`BrokerCore::authorize`), and actors reach the client through its
//! protocol-neutral [`PushSink`].
//!
//! The request path takes no lock: it updates the session's atomics only.
//! The registry is sharded and write-locked only when a connection opens or
//! closes; observers (the heartbeat scanner, `/metrics`, `/api/overview`)
//! read it shard by shard.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::actors::heartbeat_scanner::ClientExpiry;
use crate::observe::clients::ClientRole;
use crate::push::{PushEvent, PushSink};

/// Who a session acts for: an account, an anonymous client or a trusted
/// (whitelisted or in-process) caller.
pub use crate::acl::Identity as Principal;

/// The principal of a session whose first request has not been checked.
static UNBOUND: Principal = Principal::Anonymous;

/// One client connection as the broker core sees it.
pub struct Session {
    id: u64,
    peer: SocketAddr,
    /// Bound by the first request whose signature was checked; every later
    /// request must come from the same principal.
    principal: OnceLock<Principal>,
    client_id: OnceLock<String>,
    /// [`ClientRole::code`], 0 while the session has not been seen (or was
    /// expired for silence).
    role: AtomicU8,
    /// Last request, ms since the epoch.
    last_seen: AtomicU64,
    closed: Arc<AtomicBool>,
    push: Option<Arc<dyn PushSink>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("principal", &self.principal)
            .field("client_id", &self.client_id.get())
            .field("role", &self.role())
            .field("last_seen", &self.last_seen())
            .finish()
    }
}

impl Session {
    /// A session for connection `id` from `peer`, anonymous, not seen yet.
    /// `closed` is set when the connection closes; `push` carries events to
    /// the client (`None`: the protocol has no pushes).
    pub fn new(id: u64, peer: SocketAddr, closed: Arc<AtomicBool>, push: Option<Arc<dyn PushSink>>) -> Session {
        Session {
            id,
            peer,
            principal: OnceLock::new(),
            client_id: OnceLock::new(),
            role: AtomicU8::new(0),
            last_seen: AtomicU64::new(0),
            closed,
            push,
        }
    }

    /// A session not bound to any connection (in-process callers, tests):
    /// trusted with everything, never closed, no pushes.
    pub fn internal(peer: SocketAddr) -> Session {
        Session::internal_as(peer, Principal::Whitelisted)
    }

    /// A session not bound to any connection that acts for `principal`
    /// (the HTTP API for the user it authenticated).
    pub fn internal_as(peer: SocketAddr, principal: Principal) -> Session {
        let s = Session::new(0, peer, Arc::new(AtomicBool::new(false)), None);
        let _ = s.principal.set(principal);
        s
    }

    /// The connection id (unique within the process; 0 for internal ones).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Who the session acts for (anonymous until bound).
    pub fn principal(&self) -> &Principal {
        self.principal.get().unwrap_or(&UNBOUND)
    }

    /// A request checked as coming from `who`: the first binds the session
    /// to it; a later one from anyone else is refused (one connection
    /// speaks for one account).
    pub fn bind_principal(&self, who: Principal) -> Result<(), crate::acl::Denied> {
        let bound = self.principal.get_or_init(|| who.clone());
        if *bound == who {
            Ok(())
        } else {
            Err(crate::acl::Denied(format!(
                "this connection speaks for {bound}; a request from {who} needs its own connection"
            )))
        }
    }

    /// The client id the client gave (on joining a group), if any.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.get().map(String::as_str)
    }

    /// Records the client id the client gave; the first one sticks.
    pub fn set_client_id(&self, client_id: &str) {
        if self.client_id.get().is_none() {
            let _ = self.client_id.set(client_id.to_string());
        }
    }

    /// What the session does (`None` before its first request, or after it
    /// was expired for silence and has not spoken since).
    pub fn role(&self) -> Option<ClientRole> {
        ClientRole::from_code(self.role.load(Ordering::Relaxed))
    }

    /// Last request, ms since the epoch (0: none yet).
    pub fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }

    /// A request revealing `role` arrived at `now` (ms). A producer or
    /// consumer keeps its role; an admin (or a session without a role)
    /// takes the role of its request. Lock-free.
    pub fn seen(&self, role: ClientRole, now: u64) {
        self.last_seen.fetch_max(now, Ordering::Relaxed);
        let current = self.role.load(Ordering::Relaxed);
        if matches!(ClientRole::from_code(current), None | Some(ClientRole::Admin)) && current != role.code() {
            // A racing request may set another role first: either is right.
            let _ = self
                .role
                .compare_exchange(current, role.code(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Drops the role if the session has been silent since before
    /// `cutoff` (ms); returns the role it had.
    fn expire_before(&self, cutoff: u64) -> Option<ClientRole> {
        let role = self.role.load(Ordering::Relaxed);
        if role == 0 || self.last_seen() >= cutoff {
            return None;
        }
        self.role
            .compare_exchange(role, 0, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .and_then(ClientRole::from_code)
    }

    /// True once the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The flag set when the connection closes, for work that outlives the
    /// request (a parked pull or receive).
    pub fn closed_flag(&self) -> Arc<AtomicBool> {
        self.closed.clone()
    }
}

impl PushSink for Session {
    fn push(&self, event: PushEvent) -> bool {
        !self.is_closed() && self.push.as_ref().is_some_and(|p| p.push(event))
    }
}

const SHARDS: usize = 16;

/// The live sessions, sharded by connection id.
pub struct SessionRegistry {
    shards: [RwLock<HashMap<u64, Arc<Session>>>; SHARDS],
}

impl Default for SessionRegistry {
    fn default() -> Self {
        SessionRegistry {
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
        }
    }
}

impl SessionRegistry {
    fn shard(&self, id: u64) -> &RwLock<HashMap<u64, Arc<Session>>> {
        &self.shards[(id as usize) % SHARDS]
    }

    /// Adds a session (its connection opened).
    pub fn insert(&self, session: Arc<Session>) {
        if let Ok(mut s) = self.shard(session.id).write() {
            s.insert(session.id, session);
        }
    }

    /// Removes connection `id`'s session (it closed).
    pub fn remove(&self, id: u64) -> Option<Arc<Session>> {
        self.shard(id).write().ok().and_then(|mut s| s.remove(&id))
    }

    /// Connection `id`'s session.
    pub fn get(&self, id: u64) -> Option<Arc<Session>> {
        self.shard(id).read().ok().and_then(|s| s.get(&id).cloned())
    }

    fn each(&self, mut f: impl FnMut(&Session)) {
        for shard in &self.shards {
            if let Ok(s) = shard.read() {
                s.values().for_each(|x| f(x));
            }
        }
    }

    /// Sessions with a role, per role (every role present, 0 included).
    pub fn by_role(&self) -> BTreeMap<ClientRole, usize> {
        let mut out: BTreeMap<ClientRole, usize> = ClientRole::ALL.into_iter().map(|r| (r, 0)).collect();
        self.each(|s| {
            if let Some(r) = s.role() {
                *out.entry(r).or_default() += 1;
            }
        });
        out
    }
}

impl ClientExpiry for SessionRegistry {
    fn expire(&self, now: u64, timeout_ms: u64) -> Vec<(u64, ClientRole)> {
        let cutoff = now.saturating_sub(timeout_ms);
        let mut gone = Vec::new();
        self.each(|s| {
            if let Some(role) = s.expire_before(cutoff) {
                gone.push((s.id, role));
            }
        });
        gone
    }

    fn next_expiry(&self, timeout_ms: u64) -> Option<u64> {
        let mut next: Option<u64> = None;
        self.each(|s| {
            if s.role().is_some() {
                let at = s.last_seen().saturating_add(timeout_ms).saturating_add(1);
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        });
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Recorder(Mutex<Vec<PushEvent>>);

    impl PushSink for Recorder {
        fn push(&self, event: PushEvent) -> bool {
            self.0.lock().map(|mut v| v.push(event)).is_ok()
        }
    }

    fn session(id: u64) -> Arc<Session> {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap_or_else(|_| unreachable!());
        Arc::new(Session::new(id, peer, Arc::new(AtomicBool::new(false)), None))
    }

    #[test]
    fn roles_stick_and_silent_sessions_expire() {
        let t = SessionRegistry::default();
        let (s1, s2, s3, s4) = (session(1), session(2), session(3), session(4));
        for s in [&s1, &s2, &s3, &s4] {
            t.insert(s.clone());
        }
        s1.seen(ClientRole::Admin, 0);
        s1.seen(ClientRole::Producer, 10);
        s1.seen(ClientRole::Admin, 20); // a producer stays a producer
        s2.seen(ClientRole::Consumer, 500);
        s3.seen(ClientRole::Admin, 900);
        // s4 never spoke: not counted.
        let roles = t.by_role();
        assert_eq!(
            (
                roles[&ClientRole::Producer],
                roles[&ClientRole::Consumer],
                roles[&ClientRole::Admin]
            ),
            (1, 1, 1)
        );
        assert_eq!(t.next_expiry(1_000), Some(1_021));
        assert!(t.expire(1_020, 1_000).is_empty());
        assert_eq!(t.expire(1_021, 1_000), [(1, ClientRole::Producer)]);
        assert_eq!(t.by_role()[&ClientRole::Producer], 0);
        // Speaking again brings it back with its new role.
        s1.seen(ClientRole::Admin, 1_100);
        assert_eq!(s1.role(), Some(ClientRole::Admin));
        assert!(t.remove(3).is_some());
        assert_eq!(t.by_role()[&ClientRole::Admin], 1);
        assert!(t.get(3).is_none() && t.get(2).is_some());
    }

    #[test]
    fn pushes_reach_the_sink_until_the_connection_closes() {
        let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
        let closed = Arc::new(AtomicBool::new(false));
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap_or_else(|_| unreachable!());
        let s = Session::new(7, peer, closed.clone(), Some(rec.clone()));
        let ev = PushEvent::Rebalance {
            group: "g".into(),
            generation: 3,
        };
        assert!(s.push(ev.clone()));
        closed.store(true, Ordering::Release);
        assert!(!s.push(ev.clone()));
        assert_eq!(rec.0.lock().map(|v| v.clone()).unwrap_or_default(), vec![ev]);
        assert!(!Session::internal(peer).push(PushEvent::Rebalance {
            group: "g".into(),
            generation: 1
        }));
        s.set_client_id("c1");
        s.set_client_id("c2");
        assert_eq!(s.client_id(), Some("c1"));
    }
}
