//! The broker's consumer-group commands (`docs/protocol.md` §7): each one
//! decodes its JSON header and asks the group's coordinator or the store.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::handler::{io_err, mailbox, malformed, ok, BrokerHandler, Reply};
use crate::actors::group_coordinator::{self as gc};
use crate::client::core::route_queues;
use crate::client::ClientError;
use crate::groups::assignment::{MessageQueue, Strategy};
use crate::groups::types::{ConsumeMode, GroupConfig, GroupDescription};
use crate::observe::Tracked;
use crate::server::ConnectionHandle;
use crate::store::offsets::OffsetKey;
use crate::wire::control::{from_json, to_json, validate_topic_name};
use crate::wire::group::{
    AssignedQueue, CommitOffsets, CommittedOffsets, FetchOffsets, GroupDescription as WireDescription, GroupList,
    GroupRef, HeartbeatReply, JoinGroup, LeaveGroup, MemberInfo, MemberRef, OffsetAt, QueueOffset, ResetOffsets,
    ResetTarget, SearchOffset,
};
use crate::wire::{Command, Status};

fn bad(msg: impl Into<String>) -> (Status, String) {
    (Status::InvalidArgument, msg.into())
}

fn check_name(what: &str, name: &str) -> Result<(), (Status, String)> {
    validate_topic_name(name).map_err(|e| bad(format!("{what}: {e}")))
}

fn parse_mode(mode: Option<&str>) -> Result<ConsumeMode, (Status, String)> {
    match mode.unwrap_or("clustering") {
        "clustering" => Ok(ConsumeMode::Clustering),
        "broadcasting" => Ok(ConsumeMode::Broadcasting),
        other => Err(bad(format!("mode {other:?} is not clustering or broadcasting"))),
    }
}

fn describe_to_wire(d: GroupDescription, offsets: Vec<QueueOffset>) -> WireDescription {
    let text = |v: serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    WireDescription {
        group: d.group,
        state: text(serde_json::to_value(d.state).unwrap_or_default()),
        generation: d.generation,
        strategy: d.strategy.as_str().to_string(),
        mode: text(serde_json::to_value(d.mode).unwrap_or_default()),
        members: d
            .members
            .into_iter()
            .map(|m| MemberInfo {
                member_id: m.member_id,
                client_id: m.client_id,
                topics: m.topics.into_iter().collect(),
                last_heartbeat_age_ms: m.last_heartbeat_age_ms,
                assignment: m
                    .assignment
                    .into_iter()
                    .map(|q| AssignedQueue {
                        topic: q.topic,
                        broker_name: q.broker_name,
                        queue: q.queue_id,
                    })
                    .collect(),
            })
            .collect(),
        offsets,
    }
}

impl BrokerHandler {
    /// Routes a group command.
    pub(super) async fn group_request(&self, conn: ConnectionHandle, cmd: Command, header: &[u8]) -> Reply {
        match cmd {
            Command::JoinGroup => {
                self.join_group(conn, from_json(header, "header").map_err(malformed)?)
                    .await
            }
            Command::SyncGroup => {
                let m: MemberRef = from_json(header, "header").map_err(malformed)?;
                let addr = self.coordinator(&m.group)?;
                let a = addr
                    .send(gc::Sync {
                        member_id: m.member_id,
                        generation: m.generation,
                    })
                    .await
                    .map_err(mailbox)??;
                ok(to_json(&a))
            }
            Command::Heartbeat => {
                let m: MemberRef = from_json(header, "header").map_err(malformed)?;
                let addr = self.coordinator(&m.group)?;
                let hb = gc::Heartbeat {
                    member_id: m.member_id,
                    generation: m.generation,
                    conn,
                };
                let rebalance = addr.send(hb).await.map_err(mailbox)??;
                ok(to_json(&HeartbeatReply { rebalance }))
            }
            Command::LeaveGroup => {
                let m: LeaveGroup = from_json(header, "header").map_err(malformed)?;
                self.coordinator(&m.group)?
                    .send(gc::Leave { member_id: m.member_id })
                    .await
                    .map_err(mailbox)??;
                ok(Bytes::new())
            }
            Command::CommitOffsets => {
                let c: CommitOffsets = from_json(header, "header").map_err(malformed)?;
                check_name("group", &c.group)?;
                let commits = c
                    .offsets
                    .into_iter()
                    .map(|o| {
                        (
                            OffsetKey {
                                group: c.group.clone(),
                                topic: o.topic,
                                queue: o.queue,
                            },
                            o.offset,
                        )
                    })
                    .collect();
                self.commit(commits).await?;
                ok(Bytes::new())
            }
            Command::FetchOffsets => {
                let f: FetchOffsets = from_json(header, "header").map_err(malformed)?;
                ok(to_json(&CommittedOffsets {
                    offsets: self.committed(&f.group, Some(&f.topic)),
                }))
            }
            Command::ListGroups => {
                let mut groups: BTreeSet<String> = self.groups.names().into_iter().collect();
                groups.extend(self.store.offsets.groups());
                ok(to_json(&GroupList {
                    groups: groups.into_iter().collect(),
                }))
            }
            Command::DescribeGroup => {
                let g: GroupRef = from_json(header, "header").map_err(malformed)?;
                ok(to_json(&self.describe(&g.group).await?))
            }
            Command::ResetOffsets => self.reset(from_json(header, "header").map_err(malformed)?).await,
            Command::SearchOffset => {
                let s: SearchOffset = from_json(header, "header").map_err(malformed)?;
                let offset = self
                    .store
                    .offset_for_timestamp(&s.topic, s.queue, s.timestamp)
                    .map_err(io_err)?;
                ok(to_json(&OffsetAt { offset }))
            }
            other => Err((Status::UnknownCommand, format!("{other:?} is not a group command"))),
        }
    }

    fn coordinator(&self, group: &str) -> Result<Tracked<gc::GroupCoordinator>, (Status, String)> {
        self.groups.get(group).ok_or_else(|| {
            (
                Status::UnknownMember,
                format!("group {group} has no members here: join first"),
            )
        })
    }

    async fn join_group(&self, conn: ConnectionHandle, j: JoinGroup) -> Reply {
        check_name("group", &j.group)?;
        if j.topics.is_empty() {
            return Err(bad("a member must subscribe to at least one topic"));
        }
        let strategy: Strategy = j
            .strategy
            .as_deref()
            .unwrap_or("range")
            .parse()
            .map_err(|e| bad(format!("{e}")))?;
        let mode = parse_mode(j.mode.as_deref())?;
        let mut queues_by_topic = BTreeMap::new();
        for topic in &j.topics {
            check_name("topic", topic)?;
            queues_by_topic.insert(topic.clone(), self.topic_queues(topic).await?);
        }
        let addr = self
            .groups
            .get_or_start(
                &j.group,
                GroupConfig {
                    strategy,
                    mode,
                    ..GroupConfig::default()
                },
            )
            .ok_or_else(|| (Status::SystemError, "group registry unavailable".to_string()))?;
        let join = gc::Join {
            member_id: j.member_id,
            client_id: j.client_id,
            topics: j.topics.into_iter().collect(),
            session_timeout_ms: j.session_timeout_ms,
            queues_by_topic,
            conn,
        };
        let assignment = addr.send(join).await.map_err(mailbox)??;
        ok(to_json(&assignment))
    }

    /// Every queue of a topic across its brokers (from the name server),
    /// or this broker's own queues when no name server knows it yet.
    async fn topic_queues(&self, topic: &str) -> Result<Vec<MessageQueue>, (Status, String)> {
        match self.routes.route(topic, true).await {
            Ok(route) => Ok(route_queues(&route)
                .into_iter()
                .map(|q| MessageQueue::new(q.topic, q.broker_name, q.queue_id))
                .collect()),
            Err(e) if matches!(e, ClientError::NoRoute(_)) || e.status() == Some(Status::TopicNotExist) => {
                let queues = self.store.topics.get(topic).map_or(0, |t| t.queues);
                Ok((0..queues)
                    .map(|q| MessageQueue::new(topic, &self.cfg.name, q))
                    .collect())
            }
            Err(e) => Err((Status::SystemError, format!("cannot look up the route of {topic}: {e}"))),
        }
    }

    fn committed(&self, group: &str, topic: Option<&str>) -> Vec<QueueOffset> {
        self.store
            .offsets
            .group(group)
            .into_iter()
            .filter(|(k, _)| topic.is_none_or(|t| k.topic == t))
            .map(|(k, offset)| QueueOffset {
                topic: k.topic,
                queue: k.queue,
                offset,
            })
            .collect()
    }

    /// Checks and stores commits (see [`crate::actors::services`]).
    async fn commit(&self, commits: Vec<(OffsetKey, u64)>) -> Result<(), (Status, String)> {
        for (k, _) in &commits {
            check_name("topic", &k.topic)?;
        }
        self.services.commit_offsets(commits).await
    }

    async fn describe(&self, group: &str) -> Result<WireDescription, (Status, String)> {
        let desc = match self.groups.get(group) {
            Some(addr) => addr.send(gc::Describe).await.map_err(mailbox)?,
            None => crate::groups::coordinator::GroupState::new(group, GroupConfig::default()).describe(0),
        };
        Ok(describe_to_wire(desc, self.committed(group, None)))
    }

    async fn reset(&self, r: ResetOffsets) -> Reply {
        check_name("group", &r.group)?;
        if let Some(addr) = self.groups.get(&r.group) {
            let live = addr.send(gc::Describe).await.map_err(mailbox)?.members.len();
            if live > 0 {
                return Err((
                    Status::GroupNotEmpty,
                    format!(
                        "group {} has {live} live members; stop them before resetting offsets",
                        r.group
                    ),
                ));
            }
        }
        let cfg = self
            .store
            .topics
            .get(&r.topic)
            .ok_or_else(|| (Status::TopicNotExist, format!("topic {} does not exist", r.topic)))?;
        let mut commits = Vec::new();
        for queue in 0..cfg.queues {
            let (min, max) = self
                .store
                .queues
                .get(&r.topic, queue)
                .map_or((0, 0), |q| (q.min_offset(), q.max_offset()));
            let offset = match r.to {
                ResetTarget::Earliest => min,
                ResetTarget::Latest => max,
                ResetTarget::Offset(o) => o.clamp(min, max),
                ResetTarget::Timestamp(t) => self.store.offset_for_timestamp(&r.topic, queue, t).map_err(io_err)?,
            };
            commits.push((
                OffsetKey {
                    group: r.group.clone(),
                    topic: r.topic.clone(),
                    queue,
                },
                offset,
            ));
        }
        self.commit(commits.clone()).await?;
        // Queue actors tracking this group's deliveries restart from the
        // new offsets.
        for queue in 0..cfg.queues {
            if let Some(actor) = self.queues.get(&r.topic, queue) {
                actor
                    .send(crate::actors::queue_delivery::ForgetGroup(r.group.clone()))
                    .await
                    .map_err(mailbox)?;
            }
        }
        let offsets = commits
            .into_iter()
            .map(|(k, offset)| QueueOffset {
                topic: k.topic,
                queue: k.queue,
                offset,
            })
            .collect();
        ok(to_json(&CommittedOffsets { offsets }))
    }
}
