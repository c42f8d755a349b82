//! Per-message delivery in the queue actor: the `RECEIVE_MESSAGE`, `ACK`/
//! `NACK` and forget-group handlers, and the effects that need futures —
//! dead-letter writes and offset commits through [`super::services`]. The
//! rules live in [`crate::delivery::queue::QueueDelivery`]; this module only
//! feeds it and reports back what the futures did.

use std::sync::atomic::Ordering;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::pull::StoreLog;
use super::queue_actor::{answer_of, QueueActor};
use crate::clock::now_millis;
use crate::delivery::queue::{Answer, DeadLetterAppend, Effects, ReceiveQuery, ReceivedBatch, Requester, SettleQuery};
use crate::delivery::DeadLetterReason;
use crate::error::{BrokerError, ErrorKind};
use crate::store::offsets::OffsetKey;

/// A receive's answer.
pub type ReceiveReply = Result<ReceivedBatch, BrokerError>;

/// Set once the requester is gone (its connection closed): a parked
/// request of a gone requester is dropped instead of claiming messages
/// nobody would acknowledge before the ack timeout.
pub type RequesterGone = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// How the actor answers a request it handed to the state machine.
#[derive(Debug)]
pub struct Waiter {
    /// Where the answer goes.
    pub reply: oneshot::Sender<Answer>,
    /// Set when the requester's connection closed.
    pub gone: RequesterGone,
}

impl Requester for Waiter {
    fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire) || self.reply.is_closed()
    }
}

/// Take messages for a group (see `RECEIVE_MESSAGE`).
#[derive(Message)]
#[rtype(result = "ReceiveReply")]
pub struct Receive(pub ReceiveQuery, pub RequesterGone);

/// Acknowledge or reject messages; answers how many were in flight and are
/// now settled or requeued.
#[derive(Message)]
#[rtype(result = "Result<u32, BrokerError>")]
pub struct Settle(pub SettleQuery);

/// Forget a group's in-memory state (its offsets were reset).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ForgetGroup(pub String);

impl QueueActor {
    fn labels(&self, group: &str) -> [(&'static str, String); 3] {
        [
            ("group", group.to_string()),
            ("topic", self.topic.to_string()),
            ("queue", self.queue_id.to_string()),
        ]
    }

    /// Copies dead letters to their topic; the state machine settles them
    /// once stored, or writes them again later.
    pub(super) fn write_dead_letters(&mut self, append: DeadLetterAppend, ctx: &mut Context<Self>) {
        let DeadLetterAppend {
            group,
            topic,
            entries,
            letters,
        } = append;
        let services = self.services.clone();
        let fut = async move {
            services.ensure_topic(&topic, 1)?;
            services.append(&topic, 0, entries).await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let now = now_millis();
            let mut fx = Effects::default();
            match res {
                Ok(_) => {
                    let log = StoreLog::new(&act.store, &act.topic, act.queue_id);
                    if act.delivery.dead_letters_stored(now, &group, &letters, &log, &mut fx) {
                        let origin = act.labels(&group);
                        for dl in &letters {
                            let mut labels = origin.to_vec();
                            labels.push(("reason", dl.reason.as_str().to_string()));
                            metrics::counter!("ferromq_group_dead_lettered_total", &labels).increment(1);
                            if dl.reason == DeadLetterReason::Expired {
                                metrics::counter!("ferromq_group_expired_total", &origin).increment(1);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(%group, kind = ?e.kind(), error = %e, "writing dead letters failed; retrying");
                    act.delivery.dead_letters_failed(now, &group, letters);
                }
            }
            act.carry_out(now, fx, ctx);
        }));
    }

    /// Writes the groups' committed offsets through `__consumer_offsets`.
    pub(super) fn write_commits(&mut self, commits: Vec<(String, u64)>, ctx: &mut Context<Self>) {
        let keyed: Vec<(OffsetKey, u64)> = commits
            .iter()
            .map(|(group, offset)| {
                let key = OffsetKey {
                    group: group.clone(),
                    topic: self.topic.to_string(),
                    queue: self.queue_id,
                };
                (key, *offset)
            })
            .collect();
        let services = self.services.clone();
        let fut = async move { services.commit_offsets(keyed).await };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if let Err(e) = &res {
                tracing::warn!(kind = ?e.kind(), error = %e, "committing delivery offsets failed; retrying");
            }
            let now = now_millis();
            act.delivery.commit_done(now, &commits, res.is_ok());
            act.carry_out(now, Effects::default(), ctx);
        }));
    }
}

impl Handler<Receive> for QueueActor {
    type Result = ResponseFuture<ReceiveReply>;

    fn handle(&mut self, Receive(query, gone): Receive, ctx: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        let now = now_millis();
        let (reply, rx) = oneshot::channel();
        let mut fx = Effects::default();
        let log = StoreLog::new(&self.store, &self.topic, self.queue_id);
        self.delivery.receive(now, query, Waiter { reply, gone }, &log, &mut fx);
        self.carry_out(now, fx, ctx);
        Box::pin(async move {
            match answer_of(rx, "receive").await? {
                Answer::Receive(r) => r,
                Answer::Pull(_) => Err(BrokerError::new(ErrorKind::Internal, "a receive got a pull's answer")),
            }
        })
    }
}

impl Handler<Settle> for QueueActor {
    type Result = Result<u32, BrokerError>;

    fn handle(&mut self, Settle(query): Settle, ctx: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        let now = now_millis();
        let mut fx = Effects::default();
        let log = StoreLog::new(&self.store, &self.topic, self.queue_id);
        let settled = self.delivery.settle(now, query, &log, &mut fx);
        self.carry_out(now, fx, ctx);
        Ok(settled)
    }
}

impl Handler<ForgetGroup> for QueueActor {
    type Result = ();

    fn handle(&mut self, ForgetGroup(group): ForgetGroup, ctx: &mut Context<Self>) {
        let _timer = self.stats.handling();
        self.delivery.forget_group(&group);
        self.carry_out(now_millis(), Effects::default(), ctx);
    }
}
