//! Consumer groups: membership (asked of the group's coordinator actor
//! when this broker coordinates the group) and the offsets this broker
//! keeps for its own queues.
//!
//! A group's description keeps the shape brokers exchange
//! (`wire::group::GroupDescription`, built by
//! `broker::coordination::group_description`): the commit rule is checked
//! against it whether the coordinator is here or on another broker.

use std::collections::{BTreeMap, BTreeSet};

use super::{io_err, mailbox, BrokerCore, Operation};
use crate::actors::group_coordinator::{self as gc, MemberAssignment};
use crate::broker::coordination::{check_commit, group_description, Coordinator};
use crate::broker::session::Session;
use crate::client::core::route_readable_queues;
use crate::client::ClientError;
use crate::error::{BrokerError, ErrorKind};
use crate::groups::assignment::{MessageQueue, Strategy};
use crate::groups::types::{ConsumeMode, GroupConfig, GroupDescription};
use crate::observe::Tracked;
use crate::store::offsets::OffsetKey;
use crate::wire::control::validate_topic_name;
use crate::wire::group::{GroupDescription as Description, QueueOffset};
use crate::wire::Status;

/// The committed (or to-be-committed) offset of one queue, named by topic,
/// broker group and queue id: the next offset to consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffset {
    /// Topic.
    pub topic: String,
    /// Broker group owning the queue.
    pub broker_name: String,
    /// Queue id within that broker group.
    pub queue: u32,
    /// Next offset to consume.
    pub offset: u64,
}

impl From<QueueOffset> for GroupOffset {
    fn from(o: QueueOffset) -> GroupOffset {
        GroupOffset {
            topic: o.topic,
            broker_name: o.broker_name,
            queue: o.queue,
            offset: o.offset,
        }
    }
}

impl From<GroupOffset> for QueueOffset {
    fn from(o: GroupOffset) -> QueueOffset {
        QueueOffset {
            topic: o.topic,
            broker_name: o.broker_name,
            queue: o.queue,
            offset: o.offset,
        }
    }
}

/// Where a reset moves a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// Each queue's smallest stored offset.
    Earliest,
    /// Each queue's end.
    Latest,
    /// The first message stored at or after this time (ms since the epoch).
    Timestamp(u64),
    /// This offset, clamped into each queue's range.
    Offset(u64),
}

/// This broker's view of a group.
#[derive(Debug, Clone)]
pub struct GroupView {
    /// Membership, from the group's coordinator here (empty when it is
    /// coordinated elsewhere).
    pub members: GroupDescription,
    /// The offsets this broker keeps for the group.
    pub offsets: Vec<GroupOffset>,
}

/// A member joining (or rejoining) a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinSpec {
    /// Group name.
    pub group: String,
    /// The id a previous join returned; `None` for a new member.
    pub member_id: Option<String>,
    /// Stable client name; member ids derive from it.
    pub client_id: String,
    /// Subscribed topics (at least one).
    pub topics: Vec<String>,
    /// Silence after which the member is removed.
    pub session_timeout_ms: u64,
    /// `range` (default), `round-robin` or `sticky`; set by the first member.
    pub strategy: Option<String>,
    /// `clustering` (default) or `broadcasting`; set by the first member.
    pub mode: Option<String>,
}

/// A member of a group in a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRef {
    /// Group name.
    pub group: String,
    /// Member id.
    pub member_id: String,
    /// The generation it works in.
    pub generation: u64,
}

/// Offsets to store for a group; every queue must be this broker group's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    /// Group name.
    pub group: String,
    /// The committing member (`None`: accepted only while the group has no
    /// live member).
    pub member_id: Option<String>,
    /// The member's generation.
    pub generation: Option<u64>,
    /// The offsets.
    pub offsets: Vec<GroupOffset>,
}

/// Moving a stopped group's offsets of one topic on this broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetSpec {
    /// Group name.
    pub group: String,
    /// Topic whose queues are reset.
    pub topic: String,
    /// Where to.
    pub to: ResetTo,
    /// Create offsets for a group this broker does not know.
    pub create: bool,
}

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

impl BrokerCore {
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

    /// Joins (or rejoins) a group coordinated here; answered when the
    /// rebalance it takes part in ends. Rebalance notices go to `session`.
    pub async fn join_group(
        &self,
        session: &std::sync::Arc<Session>,
        j: JoinSpec,
    ) -> Result<MemberAssignment, BrokerError> {
        self.admit(session, &Operation::GroupMember { group: &j.group })?;
        session.set_client_id(&j.client_id);
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
            notify: session.clone(),
        };
        addr.send(join).await.map_err(mailbox)?
    }

    /// A member's assignment in its generation, again.
    pub async fn sync_group(&self, session: &Session, m: MemberRef) -> Result<MemberAssignment, BrokerError> {
        self.admit(session, &Operation::GroupMember { group: &m.group })?;
        self.check_coordinator(&m.group).await?;
        let addr = self.coordinator(&m.group)?;
        addr.send(gc::Sync {
            member_id: m.member_id,
            generation: m.generation,
        })
        .await
        .map_err(mailbox)?
    }

    /// Keeps a member alive; true when a rebalance is under way (the member
    /// must stop and rejoin). Rebalance notices go to `session` from now on.
    pub async fn heartbeat(&self, session: &std::sync::Arc<Session>, m: MemberRef) -> Result<bool, BrokerError> {
        self.admit(session, &Operation::GroupMember { group: &m.group })?;
        self.check_coordinator(&m.group).await?;
        let addr = self.coordinator(&m.group)?;
        let hb = gc::Heartbeat {
            member_id: m.member_id,
            generation: m.generation,
            notify: session.clone(),
        };
        addr.send(hb).await.map_err(mailbox)?
    }

    /// Removes a member at once.
    pub async fn leave_group(&self, session: &Session, group: &str, member_id: String) -> Result<(), BrokerError> {
        self.admit(session, &Operation::GroupMember { group })?;
        self.coordinator(group)?
            .send(gc::Leave { member_id })
            .await
            .map_err(mailbox)?
    }

    /// The offsets this broker keeps for `group`, optionally of one topic.
    pub fn fetch_offsets(
        &self,
        session: &Session,
        group: &str,
        topic: Option<&str>,
    ) -> Result<Vec<GroupOffset>, BrokerError> {
        self.admit(session, &Operation::FetchOffsets { group })?;
        Ok(self.committed(group, topic))
    }

    /// Groups coordinated here or with offsets here, sorted.
    pub fn list_groups(&self, session: &Session) -> Result<Vec<String>, BrokerError> {
        self.admit(session, &Operation::DescribeGroups)?;
        let mut groups: BTreeSet<String> = self.groups.names().into_iter().collect();
        groups.extend(self.store.offsets.groups());
        Ok(groups.into_iter().collect())
    }

    /// This broker's view of `group`: membership from its coordinator here
    /// (empty when coordinated elsewhere) and the offsets kept here.
    pub async fn describe_group(&self, session: &Session, group: &str) -> Result<GroupView, BrokerError> {
        self.admit(session, &Operation::DescribeGroups)?;
        Ok(GroupView {
            members: self.group_state(group).await?,
            offsets: self.committed(group, None),
        })
    }

    /// Looks up the topic routes of every group coordinated here and hands
    /// them to its coordinator, which rebalances when queues appeared or
    /// vanished (a broker group with no live master nor slave left, or one
    /// that came back; a group whose master died keeps its queues while a
    /// slave serves them). A failed lookup changes nothing.
    pub async fn refresh_group_routes(&self) {
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
            // Readable queues: a group whose master is down keeps its
            // queues assigned while a slave serves them.
            Ok(route) => Ok(route_readable_queues(&route)
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
    /// queues), optionally of one topic. An offset below its queue's
    /// minimum (retention deleted what it pointed at; the store counted
    /// the skip) reads as the minimum: the group continues from there.
    fn committed(&self, group: &str, topic: Option<&str>) -> Vec<GroupOffset> {
        self.store
            .offsets
            .group(group)
            .into_iter()
            .filter(|(k, _)| topic.is_none_or(|t| k.topic == t))
            .map(|(k, offset)| {
                let min = self.store.queues.get(&k.topic, k.queue).map_or(0, |q| q.min_offset());
                (k, offset.max(min))
            })
            .map(|(k, offset)| GroupOffset {
                topic: k.topic,
                broker_name: self.cfg.name.clone(),
                queue: k.queue,
                offset,
            })
            .collect()
    }

    /// Checks a commit and stores it: every queue must be one of this
    /// broker group's, the offset within the queue, and the sender allowed
    /// to commit it by the group's coordinator.
    pub async fn commit_offsets(&self, session: &Session, c: OffsetCommit) -> Result<(), BrokerError> {
        self.admit(session, &Operation::CommitOffsets { group: &c.group })?;
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
    async fn guard_commit(&self, c: &OffsetCommit) -> Result<(), BrokerError> {
        let check = |d: &Description| check_commit(d, c.member_id.as_deref(), c.generation, &c.offsets);
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

    /// Membership of `group` as the coordinator here knows it.
    async fn group_state(&self, group: &str) -> Result<GroupDescription, BrokerError> {
        Ok(match self.groups.get(group) {
            Some(addr) => addr.send(gc::Describe).await.map_err(mailbox)?,
            None => crate::groups::coordinator::GroupState::new(group, GroupConfig::default()).describe(0),
        })
    }

    /// Membership of `group` as the coordinator here knows it, in the shape
    /// brokers exchange (no offsets).
    async fn describe_members(&self, group: &str) -> Result<Description, BrokerError> {
        Ok(group_description(self.group_state(group).await?, Vec::new()))
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

    /// Moves a stopped group's offsets of one topic on this broker; answers
    /// the new offsets. Refused while the group has live members.
    pub async fn reset_offsets(&self, session: &Session, r: ResetSpec) -> Result<Vec<GroupOffset>, BrokerError> {
        self.admit(session, &Operation::ResetOffsets { group: &r.group })?;
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
        let cfg = self.topic(&r.topic)?;
        let mut commits = Vec::new();
        for queue in 0..cfg.queues {
            let (min, max) = self
                .store
                .queues
                .get(&r.topic, queue)
                .map_or((0, 0), |q| (q.min_offset(), q.max_offset()));
            let offset = match r.to {
                ResetTo::Earliest => min,
                ResetTo::Latest => max,
                ResetTo::Offset(o) => o.clamp(min, max),
                ResetTo::Timestamp(t) => self.store.offset_for_timestamp(&r.topic, queue, t).map_err(io_err)?,
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
        Ok(commits
            .into_iter()
            .map(|(k, offset)| GroupOffset {
                topic: k.topic,
                broker_name: self.cfg.name.clone(),
                queue: k.queue,
                offset,
            })
            .collect())
    }
}
