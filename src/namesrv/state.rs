//! The name server's state machine: live brokers and the topics each serves.
//!
//! Pure data, no I/O and no clock: every method that needs the time takes
//! `now` in milliseconds, so the actor decides which clock to use and tests
//! can step time by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::wire::control::{
    AllTopics, BrokerInfo, BrokerRoute, ClusterInfo, RegisterBroker, ReplicationReport, TopicInfo, TopicRoute,
    UnregisterBroker,
};

/// Identifies one broker: its cluster, its group name and its id in the group.
///
/// Ordered by cluster, then group name, then id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BrokerKey {
    /// Cluster name.
    pub cluster: String,
    /// Broker group name.
    pub broker_name: String,
    /// 0 for the master, > 0 for slaves.
    pub broker_id: u64,
}

impl fmt::Display for BrokerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.cluster, self.broker_name, self.broker_id)
    }
}

impl From<&UnregisterBroker> for BrokerKey {
    fn from(req: &UnregisterBroker) -> Self {
        BrokerKey {
            cluster: req.cluster.clone(),
            broker_name: req.broker_name.clone(),
            broker_id: req.broker_id,
        }
    }
}

/// What the name server knows about one live broker.
#[derive(Debug, Clone)]
struct LiveBroker {
    addr: String,
    last_register_ms: u64,
    topics: BTreeMap<String, TopicInfo>,
    /// The connection its last registration came on: when it closes, the
    /// broker is gone (a crashed process closes its sockets), long before
    /// the expiry would say so.
    conn: Option<u64>,
    /// Its registration connection closed: left out of routes (and marked
    /// in cluster info) until it registers again or expires.
    down: bool,
    replication: Option<ReplicationReport>,
}

/// Live brokers and their topics; the source of every route.
#[derive(Debug, Clone, Default)]
pub struct NamesrvState {
    brokers: BTreeMap<BrokerKey, LiveBroker>,
}

/// Queue counts and addresses of one broker group while a route is built.
#[derive(Default)]
struct GroupRoute {
    master_queues: Option<u32>,
    max_slave_queues: Option<u32>,
    addrs: BTreeMap<u64, String>,
    /// Queue count announced by down brokers (used when none is up).
    down_queues: Option<u32>,
    down: BTreeMap<u64, String>,
}

impl NamesrvState {
    /// An empty state: no broker is live.
    pub fn new() -> NamesrvState {
        NamesrvState::default()
    }

    /// Records a registration at `now`. The broker's previous topic set (and
    /// address) is replaced, so a topic it stopped serving disappears from
    /// its routes. Returns true when the broker was not live before.
    pub fn register(&mut self, req: RegisterBroker, now: u64) -> bool {
        self.register_on(req, now, None).unwrap_or(false)
    }

    /// Like [`register`](NamesrvState::register), remembering the
    /// connection `conn` the registration came on (see
    /// [`connection_closed`](NamesrvState::connection_closed)).
    ///
    /// A registration of a broker (cluster, name, id) that is registered
    /// from another address and still alive (not down, not expired) is
    /// refused: an impostor cannot take over a broker group's master (or a
    /// slave's place) while the real one is up.
    pub fn register_on(&mut self, req: RegisterBroker, now: u64, conn: Option<u64>) -> Result<bool, String> {
        let key = BrokerKey {
            cluster: req.cluster,
            broker_name: req.broker_name,
            broker_id: req.broker_id,
        };
        if let Some(was) = self.brokers.get(&key) {
            if !was.down && was.addr != req.addr {
                return Err(format!(
                    "broker {key} is registered from {} and alive; a registration from {} is refused (stop the \
                     other broker, or wait until it expires)",
                    was.addr, req.addr
                ));
            }
        }
        let live = LiveBroker {
            addr: req.addr,
            last_register_ms: now,
            topics: req.topics,
            conn,
            down: false,
            replication: req.replication,
        };
        Ok(self.brokers.insert(key, live).is_none_or(|was| was.down))
    }

    /// Connection `conn` closed: every broker whose last registration came
    /// on it is marked down (RocketMQ's name server drops a broker when its
    /// channel closes) and its keys are returned. A down broker is left
    /// out of routes at once but still listed — as down — until it
    /// registers again or expires, so admin tools can show it unreachable.
    /// A broker that registered again on a newer connection stays up.
    pub fn connection_closed(&mut self, conn: u64) -> Vec<BrokerKey> {
        let mut downed = Vec::new();
        for (key, broker) in &mut self.brokers {
            if broker.conn == Some(conn) && !broker.down {
                broker.down = true;
                downed.push(key.clone());
            }
        }
        downed
    }

    /// Forgets a broker. Returns true when it was live.
    pub fn unregister(&mut self, req: &UnregisterBroker) -> bool {
        self.brokers.remove(&BrokerKey::from(req)).is_some()
    }

    /// Forgets a broker on behalf of a request that came on connection
    /// `conn` from `peer_ip`: only the connection it registered on, or its
    /// own host, may unregister it (anyone else is refused, so a stranger
    /// cannot knock a broker off the routes). Returns true when it was
    /// live.
    pub fn unregister_from(
        &mut self,
        req: &UnregisterBroker,
        conn: Option<u64>,
        peer_ip: &str,
    ) -> Result<bool, String> {
        let key = BrokerKey::from(req);
        if let Some(b) = self.brokers.get(&key) {
            let same_conn = conn.is_some() && b.conn == conn;
            let same_host = b
                .addr
                .rsplit_once(':')
                .is_some_and(|(host, _)| host.trim_matches(['[', ']']) == peer_ip);
            if !same_conn && !same_host {
                return Err(format!(
                    "broker {key} registered from {}; an unregistration from {peer_ip} is refused",
                    b.addr
                ));
            }
        }
        Ok(self.unregister(req))
    }

    /// Number of live brokers.
    pub fn len(&self) -> usize {
        self.brokers.len()
    }

    /// True when no broker is live.
    pub fn is_empty(&self) -> bool {
        self.brokers.is_empty()
    }

    /// The broker groups serving `topic`, ordered by group name (then
    /// cluster); `None` when no live broker serves it.
    ///
    /// A group's queue count is its master's when the master serves the
    /// topic, else the largest among its slaves: clients send to the master
    /// and the slaves mirror it, so the master is authoritative.
    pub fn route(&self, topic: &str) -> Option<TopicRoute> {
        // Keyed by (group name, cluster) to order groups by name.
        let mut groups: BTreeMap<(&str, &str), GroupRoute> = BTreeMap::new();
        for (key, broker) in &self.brokers {
            let Some(info) = broker.topics.get(topic) else {
                continue;
            };
            let group = groups
                .entry((key.broker_name.as_str(), key.cluster.as_str()))
                .or_default();
            if broker.down {
                group.down.insert(key.broker_id, broker.addr.clone());
                group.down_queues = group.down_queues.max(Some(info.queues));
                continue;
            }
            if key.broker_id == 0 {
                group.master_queues = Some(info.queues);
            } else {
                group.max_slave_queues = group.max_slave_queues.max(Some(info.queues));
            }
            group.addrs.insert(key.broker_id, broker.addr.clone());
        }
        if groups.is_empty() {
            return None;
        }
        let brokers = groups
            .into_iter()
            .map(|((name, cluster), group)| BrokerRoute {
                broker_name: name.to_string(),
                cluster: cluster.to_string(),
                queues: group
                    .master_queues
                    .or(group.max_slave_queues)
                    .or(group.down_queues)
                    .unwrap_or(0),
                addrs: group.addrs,
                down: group.down,
            })
            .collect();
        Some(TopicRoute {
            topic: topic.to_string(),
            brokers,
        })
    }

    /// Every topic some live broker serves, sorted, without duplicates.
    pub fn all_topics(&self) -> AllTopics {
        let topics: BTreeSet<&String> = self.brokers.values().flat_map(|b| b.topics.keys()).collect();
        AllTopics {
            topics: topics.into_iter().cloned().collect(),
        }
    }

    /// Every live broker, sorted by cluster, group name and id, with the
    /// time since its last registration as seen at `now`.
    pub fn cluster_info(&self, now: u64) -> ClusterInfo {
        let brokers = self
            .brokers
            .iter()
            .map(|(key, broker)| BrokerInfo {
                cluster: key.cluster.clone(),
                broker_name: key.broker_name.clone(),
                broker_id: key.broker_id,
                addr: broker.addr.clone(),
                last_register_ms_ago: now.saturating_sub(broker.last_register_ms),
                down: broker.down,
                replication: broker.replication.clone(),
            })
            .collect();
        ClusterInfo { brokers }
    }

    /// Drops every broker silent for more than `expiry_ms` at `now` (one
    /// silent for exactly `expiry_ms` stays) and returns their keys.
    pub fn expire(&mut self, now: u64, expiry_ms: u64) -> Vec<BrokerKey> {
        let mut removed = Vec::new();
        self.brokers.retain(|key, broker| {
            let alive = now.saturating_sub(broker.last_register_ms) <= expiry_ms;
            if !alive {
                removed.push(key.clone());
            }
            alive
        });
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_broker_cannot_be_replaced_or_unregistered_by_a_stranger() {
        let mut s = NamesrvState::new();
        assert_eq!(
            s.register_on(reg("a", 0, "10.0.0.1:10911", &[("t", 2)]), 0, Some(1)),
            Ok(true)
        );
        let e = s
            .register_on(reg("a", 0, "10.0.0.9:10911", &[("t", 2)]), 5, Some(2))
            .unwrap_err();
        assert!(e.contains("registered from 10.0.0.1:10911 and alive"), "{e}");
        assert_eq!(
            s.route("t").unwrap().brokers[0].addrs,
            [(0, "10.0.0.1:10911".to_string())].into()
        );
        let e = s.unregister_from(&unreg("a", 0), Some(2), "10.0.0.9").unwrap_err();
        assert!(e.contains("refused"), "{e}");
        assert!(s.route("t").is_some());
        // Its own connection or host may; once it is down, another address
        // may take its place (a restart on a new port).
        assert_eq!(s.unregister_from(&unreg("a", 0), None, "10.0.0.1"), Ok(true));
        assert_eq!(
            s.register_on(reg("a", 0, "10.0.0.1:10911", &[("t", 2)]), 6, Some(3)),
            Ok(true)
        );
        assert_eq!(s.unregister_from(&unreg("a", 0), Some(3), "127.0.0.1"), Ok(true));
        s.register_on(reg("a", 0, "10.0.0.1:10911", &[("t", 2)]), 7, Some(4))
            .unwrap();
        s.connection_closed(4);
        assert_eq!(
            s.register_on(reg("a", 0, "10.0.0.2:10911", &[("t", 2)]), 8, Some(5)),
            Ok(true)
        );
    }

    #[test]
    fn a_closed_registration_connection_removes_its_broker_at_once() {
        let mut s = NamesrvState::new();
        s.register_on(reg("a", 0, "h1:1", &[("t", 2)]), 0, Some(7)).unwrap();
        s.register_on(reg("b", 0, "h2:1", &[("t", 2)]), 0, Some(8)).unwrap();
        // b re-registered on a new connection before the old one closed.
        s.register_on(reg("b", 0, "h2:1", &[("t", 2)]), 5, Some(9)).unwrap();
        assert!(s.connection_closed(8).is_empty());
        let gone = s.connection_closed(7);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].broker_name, "a");
        assert!(s.connection_closed(7).is_empty(), "already down");
        // Not routable, but listed as down.
        let route = s.route("t").unwrap();
        assert_eq!(route.brokers.len(), 2);
        assert!(route.brokers[0].addrs.is_empty());
        assert_eq!(route.brokers[0].down, [(0, "h1:1".to_string())].into());
        assert_eq!(route.brokers[0].queues, 2);
        assert_eq!(route.brokers[1].addrs, [(0, "h2:1".to_string())].into());
        let info = s.cluster_info(10);
        assert_eq!(info.brokers.iter().filter(|b| b.down).count(), 1);
        assert_eq!(info.clone().up().brokers.len(), 1);
        // It comes back by registering; it expires like any silent broker.
        assert_eq!(s.register_on(reg("a", 0, "h1:1", &[("t", 2)]), 20, Some(10)), Ok(true));
        assert!(s.route("t").unwrap().brokers[0].down.is_empty());
        s.connection_closed(10);
        assert_eq!(s.expire(1_000, 100).len(), 2);
    }

    fn reg(name: &str, id: u64, addr: &str, topics: &[(&str, u32)]) -> RegisterBroker {
        RegisterBroker {
            cluster: "c1".into(),
            broker_name: name.into(),
            broker_id: id,
            addr: addr.into(),
            topics: topics
                .iter()
                .map(|(t, q)| (t.to_string(), TopicInfo { queues: *q }))
                .collect(),
            replication: None,
        }
    }

    fn unreg(name: &str, id: u64) -> UnregisterBroker {
        UnregisterBroker {
            cluster: "c1".into(),
            broker_name: name.into(),
            broker_id: id,
        }
    }

    #[test]
    fn empty_state_has_no_routes() {
        let s = NamesrvState::new();
        assert!(s.is_empty());
        assert_eq!(s.route("t"), None);
        assert!(s.all_topics().topics.is_empty());
        assert!(s.cluster_info(0).brokers.is_empty());
    }

    #[test]
    fn registration_replaces_topic_set() {
        let mut s = NamesrvState::new();
        assert!(s.register(reg("a", 0, "h:1", &[("t1", 4), ("t2", 2)]), 10));
        assert!(!s.register(reg("a", 0, "h:1", &[("t2", 8), ("t3", 1)]), 20));
        assert_eq!(s.len(), 1);
        assert_eq!(s.route("t1"), None, "t1 was dropped by the second registration");
        let t2 = s.route("t2").unwrap();
        assert_eq!(t2.brokers.len(), 1);
        assert_eq!(t2.brokers[0].queues, 8);
        assert_eq!(t2.brokers[0].addrs, [(0, "h:1".to_string())].into());
        assert_eq!(s.all_topics().topics, ["t2", "t3"]);
        assert_eq!(s.cluster_info(25).brokers[0].last_register_ms_ago, 5);
    }

    #[test]
    fn topic_removed_on_reregister_keeps_other_brokers() {
        let mut s = NamesrvState::new();
        s.register(reg("a", 0, "h:1", &[("t", 4)]), 0);
        s.register(reg("b", 0, "h:2", &[("t", 2)]), 0);
        s.register(reg("a", 0, "h:1", &[]), 1);
        let route = s.route("t").unwrap();
        assert_eq!(route.brokers.len(), 1);
        assert_eq!(route.brokers[0].broker_name, "b");
        s.register(reg("b", 0, "h:2", &[]), 2);
        assert_eq!(s.route("t"), None);
        assert_eq!(s.len(), 2, "brokers without topics stay live");
        assert!(s.all_topics().topics.is_empty());
    }

    #[test]
    fn route_of_master_and_slave_uses_master_queues() {
        let mut s = NamesrvState::new();
        s.register(reg("a", 1, "h:11", &[("t", 16)]), 0);
        s.register(reg("a", 0, "h:10", &[("t", 8)]), 0);
        s.register(reg("a", 2, "h:12", &[("other", 3)]), 0);
        let route = s.route("t").unwrap();
        assert_eq!(route.topic, "t");
        assert_eq!(route.brokers.len(), 1);
        let group = &route.brokers[0];
        assert_eq!(group.broker_name, "a");
        assert_eq!(group.cluster, "c1");
        assert_eq!(group.queues, 8, "master's count wins over a slave's");
        assert_eq!(
            group.addrs,
            [(0, "h:10".to_string()), (1, "h:11".to_string())].into(),
            "slave 2 does not serve t"
        );
    }

    #[test]
    fn route_without_master_uses_largest_slave() {
        let mut s = NamesrvState::new();
        s.register(reg("a", 1, "h:11", &[("t", 4)]), 0);
        s.register(reg("a", 2, "h:12", &[("t", 6)]), 0);
        s.register(reg("a", 0, "h:10", &[("x", 1)]), 0);
        let group = &s.route("t").unwrap().brokers[0];
        assert_eq!(group.queues, 6);
        assert_eq!(group.addrs.keys().copied().collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn route_of_two_groups_is_ordered_by_name() {
        let mut s = NamesrvState::new();
        s.register(reg("b", 0, "h:20", &[("t", 2)]), 0);
        s.register(reg("a", 0, "h:10", &[("t", 4)]), 0);
        s.register(reg("a", 1, "h:11", &[("t", 4)]), 0);
        let route = s.route("t").unwrap();
        let names: Vec<_> = route.brokers.iter().map(|b| b.broker_name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(route.brokers[0].queues, 4);
        assert_eq!(route.brokers[0].addrs.len(), 2);
        assert_eq!(route.brokers[1].queues, 2);
        assert_eq!(route.brokers[1].addrs, [(0, "h:20".to_string())].into());
    }

    #[test]
    fn expiry_boundary() {
        let mut s = NamesrvState::new();
        s.register(reg("a", 0, "h:1", &[("t", 1)]), 1_000);
        s.register(reg("b", 0, "h:2", &[("t", 1)]), 1_500);
        // `a` silent for exactly the expiry: kept.
        assert!(s.expire(1_100, 100).is_empty());
        assert_eq!(s.len(), 2);
        // `a` silent for one more millisecond: dropped; `b` is fresh.
        let removed = s.expire(1_101, 100);
        assert_eq!(
            removed,
            [BrokerKey {
                cluster: "c1".into(),
                broker_name: "a".into(),
                broker_id: 0
            }]
        );
        assert_eq!(removed[0].to_string(), "c1/a/0");
        let route = s.route("t").unwrap();
        assert_eq!(route.brokers.len(), 1);
        assert_eq!(route.brokers[0].broker_name, "b");
        // A registration refreshes the clock.
        s.register(reg("b", 0, "h:2", &[("t", 1)]), 1_590);
        assert!(s.expire(1_690, 100).is_empty());
        assert_eq!(s.expire(1_691, 100).len(), 1);
        assert!(s.is_empty());
        // A clock that went backwards expires nothing.
        s.register(reg("a", 0, "h:1", &[]), 5_000);
        assert!(s.expire(0, 100).is_empty());
    }

    #[test]
    fn unregister_removes_only_that_broker() {
        let mut s = NamesrvState::new();
        s.register(reg("a", 0, "h:10", &[("t", 4)]), 0);
        s.register(reg("a", 1, "h:11", &[("t", 4)]), 0);
        assert!(s.unregister(&unreg("a", 0)));
        assert!(!s.unregister(&unreg("a", 0)), "already gone");
        assert!(!s.unregister(&unreg("zzz", 0)));
        let group = &s.route("t").unwrap().brokers[0];
        assert_eq!(group.queues, 4, "falls back to the slave's count");
        assert_eq!(group.addrs.keys().copied().collect::<Vec<_>>(), [1]);
        assert!(s.unregister(&unreg("a", 1)));
        assert_eq!(s.route("t"), None);
    }

    #[test]
    fn all_topics_sorted_and_deduped() {
        let mut s = NamesrvState::new();
        s.register(reg("b", 0, "h:2", &[("zeta", 1), ("alpha", 1)]), 0);
        s.register(reg("a", 0, "h:1", &[("mid", 1), ("alpha", 2)]), 0);
        s.register(reg("a", 1, "h:3", &[("zeta", 1)]), 0);
        assert_eq!(s.all_topics().topics, ["alpha", "mid", "zeta"]);
    }

    #[test]
    fn cluster_info_sorted_by_cluster_name_id() {
        let mut s = NamesrvState::new();
        let mut other = reg("a", 0, "h:9", &[]);
        other.cluster = "c0".into();
        s.register(reg("b", 0, "h:3", &[]), 100);
        s.register(reg("a", 1, "h:2", &[]), 200);
        s.register(reg("a", 0, "h:1", &[]), 300);
        s.register(other, 400);
        let info = s.cluster_info(1_000);
        let keys: Vec<_> = info
            .brokers
            .iter()
            .map(|b| (b.cluster.as_str(), b.broker_name.as_str(), b.broker_id, b.addr.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("c0", "a", 0, "h:9"),
                ("c1", "a", 0, "h:1"),
                ("c1", "a", 1, "h:2"),
                ("c1", "b", 0, "h:3")
            ]
        );
        let ago: Vec<_> = info.brokers.iter().map(|b| b.last_register_ms_ago).collect();
        assert_eq!(ago, [600, 700, 800, 900]);
    }
}
