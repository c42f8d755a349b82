//! Administration: topics, message lookup, cluster view.

use std::sync::Arc;

use bytes::Bytes;

use super::core::{ClientConfig, ClientCore};
use super::error::{ClientError, ClientResult};
use crate::record::{MessageId, StoredRecord};
use crate::wire::control::{
    from_json, to_json, AllTopics, ClusterInfo, CreateTopic, QueryById, QueryByKey, QueueOffsets, TopicRef, TopicStats,
};
use crate::wire::group::{
    CommittedOffsets, FetchOffsets, GroupDescription, GroupList, GroupRef, QueueOffset, ResetOffsets, ResetTarget,
};
use crate::wire::{Command, DecodeError, Status};

/// One queue of a group: progress and owner.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupQueueLag {
    /// Topic.
    pub topic: String,
    /// Broker group serving the queue.
    pub broker: String,
    /// Queue id.
    pub queue: u32,
    /// Committed offset, if any.
    pub committed_offset: Option<u64>,
    /// One past the newest message.
    pub max_offset: u64,
    /// Messages not yet consumed (from the committed offset, or the oldest
    /// stored message when nothing was committed).
    pub lag: u64,
    /// Member owning the queue now.
    pub owner: Option<String>,
}

/// One broker group of a topic, as [`Admin::describe_topic_brokers`] saw it.
#[derive(Debug, Clone)]
pub struct BrokerTopicStats {
    /// Broker group name.
    pub broker_name: String,
    /// Address of its master.
    pub addr: String,
    /// Its queues' offsets; `None` when the master could not be reached.
    pub stats: Option<TopicStats>,
    /// Why it could not be reached.
    pub error: Option<String>,
}

impl BrokerTopicStats {
    /// True when the master could not be reached.
    pub fn unreachable(&self) -> bool {
        self.stats.is_none()
    }
}

/// Did the request fail because the server could not be reached (or did
/// not answer in time), rather than with an answer?
fn is_unreachable(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Io { .. } | ClientError::Closed(_) | ClientError::Timeout { .. }
    )
}

/// Admin operations.
#[derive(Debug, Clone)]
pub struct Admin {
    core: Arc<ClientCore>,
}

impl Admin {
    /// An admin client using `cfg`'s name servers.
    pub fn new(cfg: ClientConfig) -> Admin {
        Admin {
            core: ClientCore::new(cfg),
        }
    }

    async fn broker(&self, addr: &str, cmd: Command, header: Bytes) -> ClientResult<Bytes> {
        let timeout = self.core.cfg.request_timeout;
        Ok(self.core.request(addr, cmd, header, Bytes::new(), timeout).await?.1)
    }

    /// Per queue of the group's topics: committed offset, max offset, lag
    /// and owning member.
    pub async fn group_queues(&self, d: &GroupDescription) -> ClientResult<Vec<GroupQueueLag>> {
        let committed: std::collections::HashMap<(String, String, u32), u64> = d
            .offsets
            .iter()
            .map(|o| ((o.topic.clone(), o.broker_name.clone(), o.queue), o.offset))
            .collect();
        let mut owners = std::collections::HashMap::new();
        for m in &d.members {
            for q in &m.assignment {
                owners.insert((q.topic.clone(), q.broker_name.clone(), q.queue), m.member_id.clone());
            }
        }
        let mut topics: Vec<String> = d.members.iter().flat_map(|m| m.topics.clone()).collect();
        topics.extend(d.offsets.iter().map(|o| o.topic.clone()));
        topics.sort();
        topics.dedup();
        let mut out = Vec::new();
        for topic in topics {
            // A topic deleted since its offsets were committed has no route.
            let Ok(ranges) = self.queue_offsets(&topic).await else {
                continue;
            };
            for (mq, range) in ranges {
                let c = committed
                    .get(&(topic.clone(), mq.broker_name.clone(), mq.queue_id))
                    .copied();
                out.push(GroupQueueLag {
                    topic: topic.clone(),
                    owner: owners
                        .get(&(topic.clone(), mq.broker_name.clone(), mq.queue_id))
                        .cloned(),
                    broker: mq.broker_name,
                    queue: mq.queue_id,
                    committed_offset: c,
                    max_offset: range.max_offset,
                    lag: range.max_offset.saturating_sub(c.unwrap_or(range.min_offset)),
                });
            }
        }
        Ok(out)
    }

    /// Every dead letter of `group` (see [`super::dlq`]).
    pub async fn dlq_list(&self, group: &str) -> ClientResult<Vec<(super::MessageQueue, super::dlq::DeadLetterEntry)>> {
        super::dlq::dlq_list(&self.core, group).await
    }

    /// Sends dead letters of `group` back to their original topics.
    pub async fn dlq_resend(
        &self,
        group: &str,
        which: &super::dlq::ResendSelection,
    ) -> ClientResult<Vec<(StoredRecord, super::SendResult)>> {
        super::dlq::dlq_resend(&self.core, group, which).await
    }

    /// Creates `topic` with `queues` queues on every master broker.
    pub async fn create_topic(&self, topic: &str, queues: u32) -> ClientResult<()> {
        self.create_topic_with_ttl(topic, queues, None).await
    }

    /// Creates `topic` whose messages expire `ttl` after they are stored
    /// unless they carry their own TTL.
    pub async fn create_topic_with_ttl(
        &self,
        topic: &str,
        queues: u32,
        ttl: Option<std::time::Duration>,
    ) -> ClientResult<()> {
        let masters = self.master_addrs().await?;
        if masters.is_empty() {
            return Err(ClientError::NoRoute(
                "no live master broker to create the topic on".into(),
            ));
        }
        self.create_topic_on(&masters, topic, queues, ttl).await
    }

    /// Addresses of the live master brokers (from the name servers).
    pub async fn master_addrs(&self) -> ClientResult<Vec<String>> {
        Ok(self
            .core
            .cluster_info()
            .await?
            .brokers
            .into_iter()
            .filter(|b| b.broker_id == 0)
            .map(|b| b.addr)
            .collect())
    }

    /// Creates `topic` (or changes it) on the brokers at `addrs`, in order.
    pub async fn create_topic_on(
        &self,
        addrs: &[String],
        topic: &str,
        queues: u32,
        ttl: Option<std::time::Duration>,
    ) -> ClientResult<()> {
        let header = to_json(&CreateTopic {
            topic: topic.to_string(),
            queues,
            ttl_ms: ttl.map(|t| t.as_millis() as u64),
        });
        for addr in addrs {
            self.broker(addr, Command::CreateTopic, header.clone()).await?;
        }
        self.core.invalidate(topic);
        Ok(())
    }

    /// Deletes `topic` on every broker serving it.
    pub async fn delete_topic(&self, topic: &str) -> ClientResult<()> {
        let addrs = self.topic_addrs(topic).await?;
        self.delete_topic_on(&addrs, topic).await
    }

    /// Addresses of every live broker (masters and slaves) serving `topic`.
    pub async fn topic_addrs(&self, topic: &str) -> ClientResult<Vec<String>> {
        let route = self.core.route(topic, true).await?;
        Ok(route.brokers.iter().flat_map(|b| b.addrs.values().cloned()).collect())
    }

    /// Deletes `topic` on the brokers at `addrs`, in order.
    pub async fn delete_topic_on(&self, addrs: &[String], topic: &str) -> ClientResult<()> {
        let header = to_json(&TopicRef {
            topic: topic.to_string(),
        });
        for addr in addrs {
            self.broker(addr, Command::DeleteTopic, header.clone()).await?;
        }
        self.core.invalidate(topic);
        Ok(())
    }

    /// Every topic any live broker serves.
    pub async fn list_topics(&self) -> ClientResult<Vec<String>> {
        let body = self.core.namesrv(Command::GetAllTopics, Bytes::new()).await?;
        Ok(from_json::<AllTopics>(&body, "topics")?.topics)
    }

    /// Per-queue offsets of `topic` on each broker group (master) that
    /// answers; groups that cannot be reached are left out (see
    /// [`Admin::describe_topic_brokers`] for which). Fails only when no
    /// group answers.
    pub async fn describe_topic(&self, topic: &str) -> ClientResult<Vec<(String, TopicStats)>> {
        let all = self.describe_topic_brokers(topic).await?;
        let mut out = Vec::new();
        let mut last = None;
        for b in all {
            match b.stats {
                Some(s) => out.push((b.broker_name, s)),
                None => last = b.error,
            }
        }
        match last {
            Some(e) if out.is_empty() => Err(ClientError::NoRoute(format!("no broker serving {topic} answered: {e}"))),
            _ => Ok(out),
        }
    }

    /// Every broker group of `topic`'s route with its per-queue offsets, or
    /// marked unreachable (with the reason) when its master cannot be
    /// reached. Server errors still fail the call.
    pub async fn describe_topic_brokers(&self, topic: &str) -> ClientResult<Vec<BrokerTopicStats>> {
        let route = self.core.route(topic, true).await?;
        let header = to_json(&TopicRef {
            topic: topic.to_string(),
        });
        let mut out = Vec::new();
        for b in &route.brokers {
            let Some(addr) = b.addrs.get(&0) else {
                if let Some(addr) = b.down.get(&0) {
                    out.push(BrokerTopicStats {
                        broker_name: b.broker_name.clone(),
                        addr: addr.clone(),
                        stats: None,
                        error: Some("the name servers lost its connection (down)".into()),
                    });
                }
                continue;
            };
            let (stats, error) = match self.broker(addr, Command::TopicStats, header.clone()).await {
                Ok(body) => (Some(from_json(&body, "topic stats")?), None),
                Err(e) if is_unreachable(&e) => (None, Some(e.to_string())),
                Err(e) => return Err(e),
            };
            out.push(BrokerTopicStats {
                broker_name: b.broker_name.clone(),
                addr: addr.clone(),
                stats,
                error,
            });
        }
        Ok(out)
    }

    /// The message a message id names, asked of the broker in the id or,
    /// when it cannot be reached, of the live slaves of its broker group
    /// (they hold its records under the same ids).
    pub async fn get_message(&self, msg_id: &str) -> ClientResult<StoredRecord> {
        let id: MessageId = msg_id.parse()?;
        let header = to_json(&QueryById {
            msg_id: msg_id.to_string(),
        });
        let host = id.store_host.to_string();
        let err = match self.broker(&host, Command::QueryMessageById, header.clone()).await {
            Ok(body) => return Ok(StoredRecord::decode(body)?),
            Err(e) if is_unreachable(&e) => e,
            Err(e) => return Err(e),
        };
        for slave in self.slaves_of(&host).await {
            if let Ok(body) = self.broker(&slave, Command::QueryMessageById, header.clone()).await {
                return Ok(StoredRecord::decode(body)?);
            }
        }
        Err(err)
    }

    /// Addresses of the live slaves of the broker group whose master is (or
    /// was, if it is down) at `master`.
    async fn slaves_of(&self, master: &str) -> Vec<String> {
        let Ok(view) = self.core.cluster_view().await else {
            return Vec::new();
        };
        let Some(group) = view
            .brokers
            .iter()
            .find(|b| b.broker_id == 0 && b.addr == master)
            .map(|b| (b.cluster.clone(), b.broker_name.clone()))
        else {
            return Vec::new();
        };
        view.brokers
            .into_iter()
            .filter(|b| b.broker_id > 0 && !b.down && (b.cluster.clone(), b.broker_name.clone()) == group)
            .map(|b| b.addr)
            .collect()
    }

    /// Messages of `topic` carrying `key`, newest first, from every broker.
    pub async fn find_messages(&self, topic: &str, key: &str, max: u32) -> ClientResult<Vec<StoredRecord>> {
        let mut out = Vec::new();
        for addr in self.topic_master_addrs(topic).await? {
            out.extend(self.find_messages_on(&addr, topic, key, max).await?);
        }
        Ok(out)
    }

    /// Addresses of the live masters serving `topic`, in route order.
    pub async fn topic_master_addrs(&self, topic: &str) -> ClientResult<Vec<String>> {
        let route = self.core.route(topic, true).await?;
        Ok(route.brokers.iter().filter_map(|b| b.addrs.get(&0).cloned()).collect())
    }

    /// Messages of `topic` carrying `key`, newest first, from the broker at
    /// `addr`.
    pub async fn find_messages_on(
        &self,
        addr: &str,
        topic: &str,
        key: &str,
        max: u32,
    ) -> ClientResult<Vec<StoredRecord>> {
        let header = to_json(&QueryByKey {
            topic: topic.to_string(),
            key: key.to_string(),
            max,
        });
        let body = self.broker(addr, Command::QueryMessageByKey, header).await?;
        if body.len() < 4 {
            return Err(DecodeError::invalid("key query", "missing count").into());
        }
        let count = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        Ok(StoredRecord::decode_all(body.slice(4..), count)?)
    }

    /// Address of the broker coordinating `group`.
    pub async fn coordinator(&self, group: &str) -> ClientResult<String> {
        self.core.group_coordinator(group).await
    }

    /// Every group any reachable master broker coordinates or stores
    /// offsets for.
    pub async fn list_groups(&self) -> ClientResult<Vec<String>> {
        let mut all = std::collections::BTreeSet::new();
        for (name, addr) in self.masters().await? {
            match self.broker(&addr, Command::ListGroups, Bytes::new()).await {
                Ok(body) => all.extend(from_json::<GroupList>(&body, "groups")?.groups),
                Err(e) => {
                    tracing::warn!(broker = %name, %addr, error = %e, "broker unreachable; its groups are not listed")
                }
            }
        }
        Ok(all.into_iter().collect())
    }

    /// Registered masters as (broker name, address), those the name servers
    /// marked down included (asking them fails fast, and shows them
    /// unreachable).
    async fn masters(&self) -> ClientResult<Vec<(String, String)>> {
        Ok(self
            .cluster_info()
            .await?
            .brokers
            .into_iter()
            .filter(|b| b.broker_id == 0)
            .map(|b| (b.broker_name, b.addr))
            .collect())
    }

    /// Members, generation and assignment (from the group's coordinator)
    /// and the committed offsets kept by every broker group. Broker groups
    /// that could not be asked are listed in `unreachable`. A group no
    /// broker knows (no live member, no committed offset) is a
    /// `GROUP_NOT_EXIST` error.
    pub async fn describe_group(&self, group: &str) -> ClientResult<GroupDescription> {
        let header = to_json(&GroupRef {
            group: group.to_string(),
        });
        let coordinator = self.coordinator(group).await?;
        let mut unreachable = Vec::new();
        let mut d: GroupDescription = match self.broker(&coordinator, Command::DescribeGroup, header).await {
            Ok(body) => from_json(&body, "group")?,
            Err(e @ ClientError::Server { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(%coordinator, error = %e, "group coordinator unreachable");
                unreachable.push(coordinator.clone());
                GroupDescription {
                    group: group.to_string(),
                    state: "Unknown".into(),
                    generation: 0,
                    strategy: "-".into(),
                    mode: "-".into(),
                    members: Vec::new(),
                    offsets: Vec::new(),
                    unreachable: Vec::new(),
                }
            }
        };
        let fetch = to_json(&FetchOffsets {
            group: group.to_string(),
            topic: None,
        });
        let mut offsets = Vec::new();
        for (name, addr) in self.masters().await? {
            match self.broker(&addr, Command::FetchOffsets, fetch.clone()).await {
                Ok(body) => offsets.extend(from_json::<CommittedOffsets>(&body, "offsets")?.offsets),
                Err(e @ ClientError::Server { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(broker = %name, %addr, error = %e, "broker unreachable; its offsets are not shown");
                    if addr != coordinator {
                        unreachable.push(addr);
                    }
                }
            }
        }
        offsets.sort_by(|a, b| (&a.topic, &a.broker_name, a.queue).cmp(&(&b.topic, &b.broker_name, b.queue)));
        d.offsets = offsets;
        d.unreachable = unreachable;
        if d.members.is_empty() && d.offsets.is_empty() && d.unreachable.is_empty() {
            return Err(ClientError::Server {
                status: Status::GroupNotExist,
                message: format!("group {group} does not exist: no live member and no committed offset"),
            });
        }
        Ok(d)
    }

    /// Moves a stopped group's offsets of `topic` on every broker group
    /// serving it; returns the new ones. A group no broker knows is an
    /// error unless `create`.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        to: ResetTarget,
        create: bool,
    ) -> ClientResult<Vec<QueueOffset>> {
        let exists = match self.describe_group(group).await {
            Ok(d) if !d.members.is_empty() => {
                return Err(ClientError::Server {
                    status: Status::GroupNotEmpty,
                    message: format!(
                        "group {group} has {} live members; stop them before resetting offsets",
                        d.members.len()
                    ),
                })
            }
            Ok(_) => true,
            Err(e) if e.status() == Some(Status::GroupNotExist) => false,
            Err(e) => return Err(e),
        };
        if !exists && !create {
            return Err(ClientError::Server {
                status: Status::GroupNotExist,
                message: format!("group {group} does not exist (use --create to start its offsets)"),
            });
        }
        let req = to_json(&ResetOffsets {
            group: group.to_string(),
            topic: topic.to_string(),
            to,
            create: true,
        });
        let mut brokers: Vec<(String, String)> = self
            .core
            .queues(topic)
            .await?
            .into_iter()
            .map(|q| (q.broker_name, q.broker_addr))
            .collect();
        brokers.dedup();
        let mut out = Vec::new();
        for (_, addr) in brokers {
            let body = self.broker(&addr, Command::ResetOffsets, req.clone()).await?;
            out.extend(from_json::<CommittedOffsets>(&body, "offsets")?.offsets);
        }
        Ok(out)
    }

    /// Smallest and next offset of every queue of `topic` whose broker
    /// answers; queues of brokers that cannot be reached are left out (see
    /// [`Admin::queue_offsets_status`]). Fails only when none answers.
    pub async fn queue_offsets(&self, topic: &str) -> ClientResult<Vec<(super::MessageQueue, QueueOffsets)>> {
        let all = self.queue_offsets_status(topic).await?;
        let total = all.len();
        let out: Vec<_> = all.into_iter().filter_map(|(mq, o)| o.map(|o| (mq, o))).collect();
        if out.is_empty() && total > 0 {
            return Err(ClientError::NoRoute(format!("no broker serving {topic} answered")));
        }
        Ok(out)
    }

    /// Every queue of `topic` with its smallest and next offset, or `None`
    /// when its broker cannot be reached (one failed queue marks the broker
    /// down, so its other queues fail fast). Server errors fail the call.
    pub async fn queue_offsets_status(
        &self,
        topic: &str,
    ) -> ClientResult<Vec<(super::MessageQueue, Option<QueueOffsets>)>> {
        let consumer = super::consumer::PullConsumer::from_core(self.core.clone());
        let mut out = Vec::new();
        for mq in self.core.queues(topic).await? {
            let o = match consumer.offsets(&mq).await {
                Ok(o) => Some(o),
                Err(e) if is_unreachable(&e) => None,
                Err(e) => return Err(e),
            };
            out.push((mq, o));
        }
        Ok(out)
    }

    /// Pings every name server this client was given, in order: the round
    /// trip, or why it did not answer.
    pub async fn namesrv_status(&self) -> Vec<(String, Result<std::time::Duration, ClientError>)> {
        let mut out = Vec::new();
        for addr in &self.core.cfg.namesrv_addrs {
            out.push((addr.clone(), self.core.ping(addr).await));
        }
        out
    }

    /// Pings a broker (or any server): the round trip, or why it did not
    /// answer.
    pub async fn ping(&self, addr: &str) -> ClientResult<std::time::Duration> {
        self.core.ping(addr).await
    }

    /// Every registered broker; `down` marks those whose registration
    /// connection closed (crashed or killed) and that have not expired yet.
    pub async fn cluster_info(&self) -> ClientResult<ClusterInfo> {
        self.core.cluster_view().await
    }
}
