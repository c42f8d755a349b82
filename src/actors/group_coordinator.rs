//! `GroupCoordinator`: one per consumer group. A thin shell over
//! [`GroupState`]: it feeds requests and one timer (armed for the state's
//! next deadline, not a periodic scan) into the state machine and carries
//! out the effects: answering parked joins and pushing rebalance events to
//! members' sessions. It speaks no wire format: a notice is a
//! [`PushEvent::Rebalance`] handed to the member's [`PushSink`], which the
//! adapter the member is connected through encodes.

use std::sync::Arc;

use crate::error::{BrokerError, ErrorKind};
use crate::observe::{kind, ActorStats};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::groups::assignment::MessageQueue;
use crate::groups::coordinator::GroupState;
use crate::groups::types::{Effect, GroupConfig, GroupDescription, GroupError, HeartbeatOutcome, JoinRequest};
use crate::push::{PushEvent, PushSink};

/// An error answer.
pub type GroupFailure = BrokerError;

/// Maps a state-machine error to the broker's error kind.
pub fn failure(e: GroupError) -> GroupFailure {
    let kind = match e {
        GroupError::UnknownMember => ErrorKind::UnknownMember,
        GroupError::IllegalGeneration { .. } => ErrorKind::IllegalGeneration,
        GroupError::RebalanceInProgress => ErrorKind::RebalanceInProgress,
        GroupError::InvalidRequest(_) => ErrorKind::InvalidArgument,
    };
    BrokerError::new(kind, e.to_string())
}

/// A member's share of a generation: the answer to a join or a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAssignment {
    /// The member's id (used in its every later request).
    pub member_id: String,
    /// Generation of the assignment.
    pub generation: u64,
    /// The queues the member owns in this generation.
    pub queues: Vec<MessageQueue>,
}

/// Where a member's rebalance notices go (its session).
pub type Notify = Arc<dyn PushSink>;

/// Join (or rejoin); answered when the rebalance completes.
#[derive(Message)]
#[rtype(result = "Result<MemberAssignment, GroupFailure>")]
pub struct Join {
    /// Member id (rejoin) or none (new member).
    pub member_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Subscribed topics.
    pub topics: BTreeSet<String>,
    /// Session timeout.
    pub session_timeout_ms: u64,
    /// Current queues of every subscribed topic.
    pub queues_by_topic: BTreeMap<String, Vec<MessageQueue>>,
    /// Where rebalance notices go.
    pub notify: Notify,
}

/// Re-read an assignment.
#[derive(Message)]
#[rtype(result = "Result<MemberAssignment, GroupFailure>")]
pub struct Sync {
    /// Member id.
    pub member_id: String,
    /// Its generation.
    pub generation: u64,
}

/// Keep a member alive.
#[derive(Message)]
#[rtype(result = "Result<bool, GroupFailure>")]
pub struct Heartbeat {
    /// Member id.
    pub member_id: String,
    /// Its generation.
    pub generation: u64,
    /// The session it heartbeats on (notices go there from now on).
    pub notify: Notify,
}

/// Leave at once.
#[derive(Message)]
#[rtype(result = "Result<(), GroupFailure>")]
pub struct Leave {
    /// Member id.
    pub member_id: String,
}

/// Describe the group.
#[derive(Message)]
#[rtype(result = "GroupDescription")]
pub struct Describe;

/// The topics the group's live members subscribe to.
#[derive(Message)]
#[rtype(result = "BTreeSet<String>")]
pub struct SubscribedTopics;

/// The current queues of a subscribed topic (from a route refresh): when
/// they changed — a broker group died or came back — the group rebalances.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetTopicQueues {
    /// Topic.
    pub topic: String,
    /// Its queues on every live broker group.
    pub queues: Vec<MessageQueue>,
}

/// Where a parked join's answer goes.
type JoinReplyTx = oneshot::Sender<Result<MemberAssignment, GroupFailure>>;

/// The coordinator of one group.
pub struct GroupCoordinator {
    stats: Arc<ActorStats>,
    state: GroupState,
    epoch: Instant,
    timer: Option<SpawnHandle>,
    next_request: u64,
    parked: HashMap<u64, JoinReplyTx>,
    connections: HashMap<String, Notify>,
}

impl GroupCoordinator {
    /// Reports into `stats` (from the broker's actor tree).
    pub fn with_stats(mut self, stats: Arc<ActorStats>) -> Self {
        self.stats = stats;
        self
    }

    /// A coordinator for `group`.
    pub fn new(group: &str, config: GroupConfig) -> GroupCoordinator {
        GroupCoordinator {
            stats: ActorStats::detached(kind::GROUP_COORDINATOR, group),
            state: GroupState::new(group, config),
            epoch: Instant::now(),
            timer: None,
            next_request: 1,
            parked: HashMap::new(),
            connections: HashMap::new(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn apply(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        let group = self.state.name().to_string();
        for effect in effects {
            match effect {
                Effect::JoinReply {
                    request_id,
                    member_id,
                    generation,
                    assignment,
                } => {
                    if let Some(reply) = self.parked.remove(&request_id) {
                        let _ = reply.send(Ok(MemberAssignment {
                            member_id,
                            generation,
                            queues: assignment,
                        }));
                    }
                }
                Effect::JoinFailed { request_id, error, .. } => {
                    if let Some(reply) = self.parked.remove(&request_id) {
                        let _ = reply.send(Err(failure(error)));
                    }
                }
                Effect::NotifyRebalance { member_id } => {
                    if let Some(notify) = self.connections.get(&member_id) {
                        let event = PushEvent::Rebalance {
                            group: group.clone(),
                            generation: self.state.generation(),
                        };
                        if !notify.push(event) {
                            tracing::debug!(%group, %member_id, "rebalance notice not delivered; the heartbeat will tell");
                        }
                    }
                }
                Effect::MemberRemoved {
                    member_id,
                    client_id,
                    reason,
                } => {
                    tracing::info!(%group, %member_id, %client_id, ?reason, "member removed");
                    self.connections.remove(&member_id);
                }
                Effect::Rebalanced { generation, assignment } => {
                    let sizes: Vec<String> = assignment.iter().map(|(m, q)| format!("{m}={}", q.len())).collect();
                    tracing::info!(%group, generation, assignment = %sizes.join(" "), "rebalanced");
                }
            }
        }
        self.arm_timer(ctx);
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        if let Some(deadline) = self.state.next_deadline() {
            let wait = Duration::from_millis(deadline.saturating_sub(self.now()));
            self.timer = Some(ctx.run_later(wait, |act, ctx| {
                act.timer = None;
                let effects = act.state.tick(act.now());
                act.apply(effects, ctx);
            }));
        }
    }
}

impl Actor for GroupCoordinator {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.stats.started();
    }
}

impl Supervised for GroupCoordinator {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.stats.restarting();
        // Parked joins are failed (their senders drop); members rejoin.
        self.parked.clear();
        self.timer = None;
    }
}

impl Handler<Join> for GroupCoordinator {
    type Result = ResponseFuture<Result<MemberAssignment, GroupFailure>>;

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        let now = self.now();
        let mut effects = Vec::new();
        for (topic, queues) in msg.queues_by_topic {
            effects.extend(self.state.set_topic_queues(topic, queues, now));
        }
        let request_id = self.next_request;
        self.next_request += 1;
        let (tx, rx) = oneshot::channel();
        self.parked.insert(request_id, tx);
        let req = JoinRequest {
            member_id: msg.member_id,
            client_id: msg.client_id,
            topics: msg.topics,
            session_timeout_ms: msg.session_timeout_ms,
            request_id,
        };
        match self.state.join(req, now) {
            Ok(e) => effects.extend(e),
            Err(e) => {
                self.parked.remove(&request_id);
                self.apply(effects, ctx);
                return Box::pin(async move { Err(failure(e)) });
            }
        }
        self.apply(effects, ctx);
        // The member's id is known once answered: bind its connection then.
        let pending = msg.notify;
        let registered = ctx.address();
        Box::pin(async move {
            let result = rx.await.unwrap_or_else(|_| {
                Err(BrokerError::new(
                    ErrorKind::Unavailable,
                    "group coordinator restarted; join again".to_string(),
                ))
            });
            if let Ok(a) = &result {
                registered.do_send(BindConnection {
                    member_id: a.member_id.clone(),
                    notify: pending,
                });
            }
            result
        })
    }
}

/// Internal: remember which session a member uses.
#[derive(Message)]
#[rtype(result = "()")]
struct BindConnection {
    member_id: String,
    notify: Notify,
}

impl Handler<BindConnection> for GroupCoordinator {
    type Result = ();

    fn handle(&mut self, msg: BindConnection, _: &mut Context<Self>) {
        let _timer = self.stats.handling();
        if self
            .state
            .describe(self.now())
            .members
            .iter()
            .any(|m| m.member_id == msg.member_id)
        {
            self.connections.insert(msg.member_id, msg.notify);
        }
    }
}

impl Handler<Sync> for GroupCoordinator {
    type Result = Result<MemberAssignment, GroupFailure>;

    fn handle(&mut self, msg: Sync, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        let queues = self.state.sync(&msg.member_id, msg.generation).map_err(failure)?;
        Ok(MemberAssignment {
            member_id: msg.member_id,
            generation: msg.generation,
            queues,
        })
    }
}

impl Handler<Heartbeat> for GroupCoordinator {
    type Result = Result<bool, GroupFailure>;

    fn handle(&mut self, msg: Heartbeat, ctx: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        let outcome = self
            .state
            .heartbeat(&msg.member_id, msg.generation, self.now())
            .map_err(failure)?;
        self.connections.insert(msg.member_id, msg.notify);
        self.arm_timer(ctx);
        Ok(outcome == HeartbeatOutcome::RebalanceInProgress)
    }
}

impl Handler<Leave> for GroupCoordinator {
    type Result = Result<(), GroupFailure>;

    fn handle(&mut self, msg: Leave, ctx: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        let effects = self.state.leave(&msg.member_id, self.now()).map_err(failure)?;
        self.connections.remove(&msg.member_id);
        self.apply(effects, ctx);
        Ok(())
    }
}

impl Handler<Describe> for GroupCoordinator {
    type Result = MessageResult<Describe>;

    fn handle(&mut self, _: Describe, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        MessageResult(self.state.describe(self.now()))
    }
}

impl Handler<SubscribedTopics> for GroupCoordinator {
    type Result = MessageResult<SubscribedTopics>;

    fn handle(&mut self, _: SubscribedTopics, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        MessageResult(self.state.subscribed_topics())
    }
}

impl Handler<SetTopicQueues> for GroupCoordinator {
    type Result = ();

    fn handle(&mut self, msg: SetTopicQueues, ctx: &mut Context<Self>) {
        let _timer = self.stats.handling();
        let now = self.now();
        let effects = self.state.set_topic_queues(msg.topic, msg.queues, now);
        self.apply(effects, ctx);
    }
}

crate::observe::failable!(GroupCoordinator);
