//! What every client shares: name-server lookups, a route cache and a pool of
//! broker connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::{ClientError, ClientResult};
use super::remoting::RemotingConnection;
use crate::wire::control::{from_json, to_json, ClusterInfo, TopicRef, TopicRoute};
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
}

impl ClientConfig {
    /// Defaults (3 s requests, 2 retries, 30 s routes) for these name servers.
    pub fn new<S: Into<String>>(namesrv_addrs: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            namesrv_addrs: namesrv_addrs.into_iter().map(Into::into).collect(),
            request_timeout: Duration::from_secs(3),
            retries: 2,
            route_ttl: Duration::from_secs(30),
        }
    }
}

/// A queue of a topic on one broker group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageQueue {
    /// Topic.
    pub topic: String,
    /// Broker group name.
    pub broker_name: String,
    /// Address of the group's master.
    pub broker_addr: String,
    /// Queue id within the group.
    pub queue_id: u32,
}

impl std::fmt::Display for MessageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.broker_name, self.queue_id)
    }
}

/// Every queue of a route, ordered by broker name then queue id. Groups
/// without a live master are left out.
pub fn route_queues(route: &TopicRoute) -> Vec<MessageQueue> {
    let mut out = Vec::new();
    for b in &route.brokers {
        let Some(addr) = b.addrs.get(&0) else { continue };
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

/// Shared client state.
#[derive(Debug)]
pub struct ClientCore {
    /// Settings.
    pub cfg: ClientConfig,
    pool: Mutex<HashMap<String, RemotingConnection>>,
    routes: Mutex<HashMap<String, (Instant, Arc<TopicRoute>)>>,
}

impl ClientCore {
    /// A client core for `cfg` (connections are made lazily).
    pub fn new(cfg: ClientConfig) -> Arc<ClientCore> {
        Arc::new(ClientCore {
            cfg,
            pool: Mutex::default(),
            routes: Mutex::default(),
        })
    }

    /// A live connection to `addr`, reusing a pooled one.
    pub async fn connection(&self, addr: &str) -> ClientResult<RemotingConnection> {
        if let Some(c) = self.pool.lock().ok().and_then(|p| p.get(addr).cloned()) {
            if !c.is_closed() {
                return Ok(c);
            }
        }
        let conn = RemotingConnection::connect(addr, self.cfg.request_timeout, None).await?;
        if let Ok(mut p) = self.pool.lock() {
            p.insert(addr.to_string(), conn.clone());
        }
        Ok(conn)
    }

    /// One request to one server; a failed connection is dropped from the
    /// pool so the next call reconnects.
    pub async fn request(
        &self,
        addr: &str,
        cmd: Command,
        header: Bytes,
        body: Bytes,
        timeout: Duration,
    ) -> ClientResult<(Bytes, Bytes)> {
        let conn = self.connection(addr).await?;
        let result = conn.request(cmd, header, body, timeout).await;
        if matches!(
            result,
            Err(ClientError::Closed(_) | ClientError::Io { .. } | ClientError::Timeout { .. })
        ) {
            if let Ok(mut p) = self.pool.lock() {
                p.remove(addr);
            }
        }
        result
    }

    /// Asks the name servers in turn; the first answer (success or a server
    /// error status) wins, network failures move on to the next.
    pub async fn namesrv(&self, cmd: Command, header: Bytes) -> ClientResult<Bytes> {
        if self.cfg.namesrv_addrs.is_empty() {
            return Err(ClientError::Invalid("no name server address given".into()));
        }
        let mut last = None;
        for addr in &self.cfg.namesrv_addrs {
            match self
                .request(addr, cmd, header.clone(), Bytes::new(), self.cfg.request_timeout)
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

    /// The topic's route, from the cache unless stale or `refresh`.
    pub async fn route(&self, topic: &str, refresh: bool) -> ClientResult<Arc<TopicRoute>> {
        if !refresh {
            if let Some((at, r)) = self.routes.lock().ok().and_then(|m| m.get(topic).cloned()) {
                if at.elapsed() < self.cfg.route_ttl {
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
        Ok(route)
    }

    /// Forgets a cached route.
    pub fn invalidate(&self, topic: &str) {
        if let Ok(mut m) = self.routes.lock() {
            m.remove(topic);
        }
    }

    /// Every live broker.
    pub async fn cluster_info(&self) -> ClientResult<ClusterInfo> {
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

    /// The queues of a topic; a topic no broker serves is `NoRoute`.
    pub async fn queues(&self, topic: &str) -> ClientResult<Vec<MessageQueue>> {
        let route = match self.route(topic, false).await {
            Ok(r) => r,
            Err(e) if e.status() == Some(Status::TopicNotExist) => {
                return Err(ClientError::NoRoute(format!(
                    "topic {topic} does not exist on any live broker"
                )))
            }
            Err(e) => return Err(e),
        };
        let queues = route_queues(&route);
        if queues.is_empty() {
            return Err(ClientError::NoRoute(format!(
                "topic {topic} has no queue on a live master"
            )));
        }
        Ok(queues)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::control::BrokerRoute;

    #[test]
    fn route_queues_are_ordered_and_skip_groups_without_master() {
        let b = |name: &str, queues, addrs: &[(u64, &str)]| BrokerRoute {
            broker_name: name.into(),
            cluster: "c".into(),
            queues,
            addrs: addrs.iter().map(|(i, a)| (*i, a.to_string())).collect(),
        };
        let route = TopicRoute {
            topic: "t".into(),
            brokers: vec![
                b("b2", 1, &[(0, "h2")]),
                b("b1", 2, &[(0, "h1"), (1, "s1")]),
                b("b3", 4, &[(1, "s3")]),
            ],
        };
        let qs: Vec<String> = route_queues(&route).iter().map(ToString::to_string).collect();
        assert_eq!(qs, ["t/b1/0", "t/b1/1", "t/b2/0"]);
    }
}
