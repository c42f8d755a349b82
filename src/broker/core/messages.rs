//! Appending, pulling, receiving and settling messages. Deliberately thin:
//! check the topic and queue, then ask the commitlog writer (through
//! `BrokerServices::append_batch`) or the queue's actor.

use super::{check_queue, io_err, mailbox, BrokerCore, Operation};
use crate::actors::namesrv_client::RegisterNow;
use crate::actors::pull::PullPayload;
use crate::actors::queue_actor::{Pull, QueueActor};
use crate::actors::queue_delivery::{Receive, Settle};
use crate::actors::services::AppendBatch;
use crate::broker::session::Session;
use crate::error::{BrokerError, ErrorKind};
use crate::observe::Tracked;
use crate::store::topics::TopicConfig;
use crate::wire::delivery::{ReceiveRequest, SettleRequest};
use crate::wire::pull::PullRequest;
use crate::wire::send::SendResponse;

impl BrokerCore {
    /// The topic's settings, creating it when auto-creation is on.
    async fn topic_for_send(&self, topic: &str) -> Result<TopicConfig, BrokerError> {
        if let Some(cfg) = self.store.topics.get(topic) {
            return Ok(cfg);
        }
        if !self.cfg.auto_create_topics {
            return Err(BrokerError::new(
                ErrorKind::TopicNotExist,
                format!("topic {topic} does not exist and auto-creation is off"),
            ));
        }
        let (cfg, created) = self
            .store
            .topics
            .get_or_create(topic, TopicConfig::with_queues(self.cfg.default_topic_queues))
            .map_err(io_err)?;
        if created {
            tracing::info!(topic, queues = cfg.queues, "auto-created topic");
            self.registrar.do_send(RegisterNow);
        }
        Ok(cfg)
    }

    /// Appends a producer's batch to one queue (creating the topic when
    /// auto-creation is on); delayed messages go to the delay scheduler.
    pub async fn append(&self, session: &Session, batch: AppendBatch) -> Result<SendResponse, BrokerError> {
        self.admit(session, &Operation::Produce { topic: &batch.topic })?;
        let cfg = self.topic_for_send(&batch.topic).await?;
        check_queue(&batch.topic, batch.queue_id, cfg)?;
        self.services.append_batch(batch).await
    }

    fn queue_actor(&self, topic: &str, queue_id: u32) -> Result<Tracked<QueueActor>, BrokerError> {
        self.queues
            .get_or_start(topic, queue_id)
            .ok_or_else(|| BrokerError::new(ErrorKind::Internal, "queue registry unavailable".to_string()))
    }

    /// A requested long-poll wait, clamped to `max_poll_wait_ms`.
    fn poll_wait(&self, requested_ms: u32) -> u32 {
        requested_ms.min(u32::try_from(self.cfg.max_poll_wait_ms).unwrap_or(u32::MAX))
    }

    /// Reads a queue from an offset (long-polling when asked to): the
    /// records come back as chunks of the commitlog mapping, never copied.
    /// A parked pull is dropped once the session closes.
    pub async fn pull(&self, session: &Session, mut req: PullRequest) -> Result<PullPayload, BrokerError> {
        self.admit(session, &Operation::Consume { topic: &req.topic })?;
        req.max_wait_ms = self.poll_wait(req.max_wait_ms);
        self.existing_queue(&req.topic, req.queue_id)?;
        let actor = self.queue_actor(&req.topic, req.queue_id)?;
        actor.send(Pull(req, session.closed_flag())).await.map_err(mailbox)?
    }

    /// Takes messages of a queue for a group, to be settled one by one;
    /// answers the encoded delivery (`RECEIVE_MESSAGE` body).
    pub async fn receive(&self, session: &Session, mut req: ReceiveRequest) -> Result<bytes::Bytes, BrokerError> {
        self.admit(session, &Operation::Consume { topic: &req.topic })?;
        req.max_wait_ms = self.poll_wait(req.max_wait_ms);
        self.existing_queue(&req.topic, req.queue_id)?;
        let actor = self.queue_actor(&req.topic, req.queue_id)?;
        actor.send(Receive(req, session.closed_flag())).await.map_err(mailbox)?
    }

    /// Acknowledges (`nack: false`) or rejects received messages; answers
    /// how many were settled.
    pub async fn settle(&self, session: &Session, req: SettleRequest, nack: bool) -> Result<u32, BrokerError> {
        self.admit(session, &Operation::Settle { topic: &req.topic })?;
        self.existing_queue(&req.topic, req.queue_id)?;
        let Some(actor) = self.queues.get(&req.topic, req.queue_id) else {
            // No actor: nothing is in flight (the broker restarted); the
            // messages will be delivered again.
            return Ok(0);
        };
        actor.send(Settle { req, nack }).await.map_err(mailbox)?
    }
}
