//! The broker's consumer-group commands (`docs/protocol.md` §7): each one
//! decodes its JSON header and asks the group's coordinator or the store.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::coordination::{check_commit, Coordinator};
use super::handler::{io_err, mailbox, malformed, ok, BrokerHandler, Reply};
use crate::actors::group_coordinator::{self as gc};
use crate::client::core::route_queues;
use crate::client::ClientError;
use crate::error::{BrokerError, ErrorKind};
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

fn bad(msg: impl Into<String>) -> BrokerError {
    BrokerError::new(ErrorKind::InvalidArgument, msg.into())
}

fn check_name(what: &str, name: &str) -> Result<(), BrokerError> {
    validate_topic_name(name).map_err(|e| bad(format!("{what}: {e}")))
}

fn parse_mode(mode: Option<&str>) -> Result<ConsumeMode, BrokerError> {
    match mode.unwrap_or("clustering") {
        "clustering" => Ok(ConsumeMode::Clustering),
        "broadcasting" => Ok(ConsumeMode::Broadcasting),
        other => Err(bad(format!("mode {other:?} is not clustering or broadcasting"))),
    }
}

/// A broker's own description of a group: membership from its coordinator
/// here (if any) and the offsets it keeps.
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
        unreachable: Vec::new(),
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
                self.check_coordinator(&m.group).await?;
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
                self.check_coordinator(&m.group).await?;
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
                self.commit_request(c).await?;
                ok(Bytes::new())
            }
            Command::FetchOffsets => {
                let f: FetchOffsets = from_json(header, "header").map_err(malformed)?;
                ok(to_json(&CommittedOffsets {
                    offsets: self.committed(&f.group, f.topic.as_deref()),
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
            other => Err(BrokerError::new(
                ErrorKind::Unsupported,
                format!("{other:?} is not a group command"),
            )),
        }
    }

    fn coordinator(&self, group: &str) -> Result<Tracked<gc::GroupCoordinator>, BrokerError> {
        self.groups.get(group).ok_or_else(|| {
            BrokerError::new(
                ErrorKind::UnknownMember,
                format!("group {group} has no members here: join first"),
            )
        })
    }

    /// Refuses a member request for a group coordinated elsewhere, so that
    /// a group never has two coordinators for long (e.g. after its
    /// coordinator came back from a crash).
    async fn check_coordinator(&self, group: &str) -> Result<(), BrokerError> {
        match self.coordination.coordinator(group).await {
            Coordinator::Local => Ok(()),
            Coordinator::Remote(addr) => Err(BrokerError::new(
                ErrorKind::NotCoordinator,
                format!("group {group} is coordinated by {addr}, not by this broker"),
            )),
        }
    }

    async fn join_group(&self, conn: ConnectionHandle, j: JoinGroup) -> Reply {
        check_name("group", &j.group)?;
        self.check_coordinator(&j.group).await?;
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
            .ok_or_else(|| BrokerError::new(ErrorKind::Internal, "group registry unavailable".to_string()))?;
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

    /// Looks up the topic routes of every group coordinated here and hands
    /// them to its coordinator, which rebalances when queues appeared or
    /// vanished (a broker group died or came back). A failed lookup
    /// changes nothing.
    pub(super) async fn refresh_group_routes(&self) {
        for group in self.groups.names() {
            let Some(addr) = self.groups.get(&group) else { continue };
            let Ok(topics) = addr.send(gc::SubscribedTopics).await else {
                continue;
            };
            for topic in topics {
                match self.topic_queues(&topic).await {
                    Ok(queues) => addr.do_send(gc::SetTopicQueues { topic, queues }),
                    Err(e) => tracing::debug!(%group, %topic, error = %e, "route refresh failed"),
                }
            }
        }
    }

    /// Every queue of a topic across its brokers (from the name server),
    /// or this broker's own queues when no name server knows it yet.
    async fn topic_queues(&self, topic: &str) -> Result<Vec<MessageQueue>, BrokerError> {
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
            Err(e) => Err(BrokerError::new(
                ErrorKind::Internal,
                format!("cannot look up the route of {topic}: {e}"),
            )),
        }
    }

    /// The offsets this broker keeps for `group` (all of them its own
    /// queues), optionally of one topic.
    fn committed(&self, group: &str, topic: Option<&str>) -> Vec<QueueOffset> {
        self.store
            .offsets
            .group(group)
            .into_iter()
            .filter(|(k, _)| topic.is_none_or(|t| k.topic == t))
            .map(|(k, offset)| QueueOffset {
                topic: k.topic,
                broker_name: self.cfg.name.clone(),
                queue: k.queue,
                offset,
            })
            .collect()
    }

    /// Checks a `COMMIT_OFFSETS` request and stores it: every queue must be
    /// one of this broker group's, the offset within the queue, and the
    /// sender allowed to commit it by the group's coordinator.
    async fn commit_request(&self, c: CommitOffsets) -> Result<(), BrokerError> {
        check_name("group", &c.group)?;
        for o in &c.offsets {
            check_name("topic", &o.topic)?;
            if o.broker_name != self.cfg.name {
                return Err(BrokerError::new(
                    ErrorKind::NotQueueOwner,
                    format!(
                        "queue {}/{}/{} belongs to broker group {}; this is {}: commit it there",
                        o.topic, o.broker_name, o.queue, o.broker_name, self.cfg.name
                    ),
                ));
            }
            self.existing_queue(&o.topic, o.queue)?;
            let max = self.store.queues.get(&o.topic, o.queue).map_or(0, |q| q.max_offset());
            if o.offset > max {
                return Err(BrokerError::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "offset {} of {}/{}/{} is above the queue's max offset {max}",
                        o.offset, o.topic, o.broker_name, o.queue
                    ),
                ));
            }
        }
        self.guard_commit(&c).await?;
        let commits = c
            .offsets
            .into_iter()
            .map(|o| {
                let key = OffsetKey {
                    group: c.group.clone(),
                    topic: o.topic,
                    queue: o.queue,
                };
                (key, o.offset)
            })
            .collect();
        self.services.commit_offsets(commits).await
    }

    /// The coordinator's say on a commit (see [`check_commit`]). A cached
    /// remote answer that refuses is asked again (the group may have just
    /// rebalanced); an unreachable coordinator is not a reason to lose
    /// progress, so the commit is then taken.
    async fn guard_commit(&self, c: &CommitOffsets) -> Result<(), BrokerError> {
        let check = |d: &WireDescription| check_commit(d, c.member_id.as_deref(), c.generation, &c.offsets);
        match self.coordination.coordinator(&c.group).await {
            Coordinator::Local => check(&self.describe_members(&c.group).await?),
            Coordinator::Remote(addr) => {
                let cached = self.coordination.remote_membership(&addr, &c.group, false).await;
                match cached.as_ref().map(check) {
                    None | Some(Ok(())) => Ok(()),
                    Some(Err(_)) => match self.coordination.remote_membership(&addr, &c.group, true).await {
                        Some(fresh) => check(&fresh),
                        None => Ok(()),
                    },
                }
            }
        }
    }

    /// Membership of `group` as the coordinator here knows it (no offsets).
    async fn describe_members(&self, group: &str) -> Result<WireDescription, BrokerError> {
        let desc = match self.groups.get(group) {
            Some(addr) => addr.send(gc::Describe).await.map_err(mailbox)?,
            None => crate::groups::coordinator::GroupState::new(group, GroupConfig::default()).describe(0),
        };
        Ok(describe_to_wire(desc, Vec::new()))
    }

    async fn describe(&self, group: &str) -> Result<WireDescription, BrokerError> {
        let mut d = self.describe_members(group).await?;
        d.offsets = self.committed(group, None);
        Ok(d)
    }

    /// Live members of `group` per its coordinator; `None` when the
    /// coordinator cannot be asked.
    async fn live_members(&self, group: &str) -> Result<Option<usize>, BrokerError> {
        Ok(match self.coordination.coordinator(group).await {
            Coordinator::Local => Some(self.describe_members(group).await?.members.len()),
            Coordinator::Remote(addr) => self
                .coordination
                .remote_membership(&addr, group, true)
                .await
                .map(|d| d.members.len()),
        })
    }

    async fn reset(&self, r: ResetOffsets) -> Reply {
        check_name("group", &r.group)?;
        match self.live_members(&r.group).await? {
            Some(0) => {}
            Some(live) => {
                return Err(BrokerError::new(
                    ErrorKind::GroupNotEmpty,
                    format!(
                        "group {} has {live} live members; stop them before resetting offsets",
                        r.group
                    ),
                ))
            }
            None => {
                return Err(BrokerError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "the coordinator of group {} is unreachable: cannot tell whether it has live members",
                        r.group
                    ),
                ))
            }
        }
        if !r.create && self.store.offsets.group(&r.group).is_empty() {
            return Err(BrokerError::new(
                ErrorKind::GroupNotExist,
                format!(
                    "group {} has no committed offset on broker group {} (pass create to make them)",
                    r.group, self.cfg.name
                ),
            ));
        }
        let cfg =
            self.store.topics.get(&r.topic).ok_or_else(|| {
                BrokerError::new(ErrorKind::TopicNotExist, format!("topic {} does not exist", r.topic))
            })?;
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
        self.services.commit_offsets(commits.clone()).await?;
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
                broker_name: self.cfg.name.clone(),
                queue: k.queue,
                offset,
            })
            .collect();
        ok(to_json(&CommittedOffsets { offsets }))
    }
}
