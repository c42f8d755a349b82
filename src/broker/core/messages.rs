//! Appending, pulling, receiving and settling messages. Deliberately thin:
//! check the topic and queue, then ask the commitlog writer (through
//! `BrokerServices::append_batch`) or the queue's actor.

use super::{check_queue, io_err, mailbox, BrokerCore, Operation};
use crate::actors::namesrv_client::RegisterNow;
use crate::actors::queue_actor::{Pull, QueueActor};
use crate::actors::queue_delivery::{Receive, Settle};
use crate::actors::services::AppendBatch;
use crate::broker::session::Session;
use crate::delivery::queue::{PullBatch, PullQuery, ReceiveQuery, ReceivedBatch, SettleQuery};
use crate::error::{BrokerError, BrokerResult, ErrorKind};
use crate::observe::Tracked;
use crate::store::append::Appended;
use crate::store::topics::TopicConfig;

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
    pub async fn append(&self, session: &Session, batch: AppendBatch) -> BrokerResult<Appended> {
        self.admit(session, &Operation::Produce { topic: &batch.topic })?;
        let cfg = self.topic_for_send(&batch.topic).await?;
        check_queue(&batch.topic, batch.queue_id, cfg)?;
        self.services
            .append_batch(batch)
            .await
            .map_err(|e| self.name_disk_full(e))
    }

    fn queue_actor(&self, topic: &str, queue_id: u32) -> Result<Tracked<QueueActor>, BrokerError> {
        self.queues
            .get_or_start(topic, queue_id)
            .ok_or_else(|| BrokerError::new(ErrorKind::Internal, "queue registry unavailable".to_string()))
    }

    /// A requested long-poll wait, clamped to `max_poll_wait_ms`.
    fn poll_wait(&self, requested_ms: u64) -> u64 {
        requested_ms.min(self.cfg.max_poll_wait_ms)
    }

    /// Reads (topic, queue) from an offset (long-polling when asked to):
    /// the records come back as chunks of the commitlog mapping, never
    /// copied. A parked pull is dropped once the session closes.
    pub async fn pull(
        &self,
        session: &Session,
        topic: &str,
        queue_id: u32,
        mut q: PullQuery,
    ) -> BrokerResult<PullBatch> {
        self.admit(session, &Operation::Consume { topic })?;
        q.max_wait_ms = self.poll_wait(q.max_wait_ms);
        self.existing_queue(topic, queue_id)?;
        let actor = self.queue_actor(topic, queue_id)?;
        actor.send(Pull(q, session.closed_flag())).await.map_err(mailbox)?
    }

    /// Takes messages of (topic, queue) for a group, to be settled one by
    /// one.
    pub async fn receive(
        &self,
        session: &Session,
        topic: &str,
        queue_id: u32,
        mut q: ReceiveQuery,
    ) -> BrokerResult<ReceivedBatch> {
        self.admit(session, &Operation::Receive { topic, group: &q.group })?;
        q.max_wait_ms = self.poll_wait(q.max_wait_ms);
        self.existing_queue(topic, queue_id)?;
        let actor = self.queue_actor(topic, queue_id)?;
        actor.send(Receive(q, session.closed_flag())).await.map_err(mailbox)?
    }

    /// Acknowledges or rejects received messages of (topic, queue);
    /// answers how many were settled.
    pub async fn settle(&self, session: &Session, topic: &str, queue_id: u32, q: SettleQuery) -> BrokerResult<u32> {
        self.admit(session, &Operation::Settle { topic, group: &q.group })?;
        self.existing_queue(topic, queue_id)?;
        let Some(actor) = self.queues.get(topic, queue_id) else {
            // No actor: nothing is in flight (the broker restarted); the
            // messages will be delivered again.
            return Ok(0);
        };
        actor.send(Settle(q)).await.map_err(mailbox)?
    }
}
