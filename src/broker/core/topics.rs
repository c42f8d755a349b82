//! Topic administration and figures: create, delete, per-queue offsets,
//! offset by time.

use super::{io_err, mailbox, BrokerCore, Operation};
use crate::actors::commitlog_writer::DeleteTopicData;
use crate::actors::namesrv_client::RegisterNow;
use crate::broker::session::Session;
use crate::error::{BrokerError, ErrorKind};
use crate::store::topics::TopicConfig;
use crate::wire::control::validate_topic_name;

/// Most queues a topic may have on one broker.
pub const MAX_QUEUES_PER_TOPIC: u32 = 1024;

/// A topic to create (or change) on this broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub topic: String,
    /// Queues on this broker (1 to [`MAX_QUEUES_PER_TOPIC`]).
    pub queues: u32,
    /// Default message TTL, ms.
    pub ttl_ms: Option<u64>,
}

/// The offsets a queue holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueRange {
    /// Smallest queue offset still stored.
    pub min_offset: u64,
    /// One past the newest queue offset.
    pub max_offset: u64,
}

/// One queue of [`TopicQueues`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStat {
    /// Queue id.
    pub queue: u32,
    /// Its offsets.
    pub range: QueueRange,
}

/// A topic's queues on this broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicQueues {
    /// Topic name.
    pub topic: String,
    /// Every queue, by id.
    pub queues: Vec<QueueStat>,
}

impl BrokerCore {
    fn range_of(&self, topic: &str, queue: u32) -> QueueRange {
        self.store
            .queues
            .get(topic, queue)
            .map_or(QueueRange::default(), |q| QueueRange {
                min_offset: q.min_offset(),
                max_offset: q.max_offset(),
            })
    }

    /// The offsets queue `queue` of `topic` holds.
    pub fn queue_range(&self, session: &Session, topic: &str, queue: u32) -> Result<QueueRange, BrokerError> {
        self.admit(session, &Operation::DescribeTopic { topic: Some(topic) })?;
        self.existing_queue(topic, queue)?;
        Ok(self.range_of(topic, queue))
    }

    /// Every queue of `topic` on this broker with its offsets.
    pub fn topic_stats(&self, session: &Session, topic: &str) -> Result<TopicQueues, BrokerError> {
        self.admit(session, &Operation::DescribeTopic { topic: Some(topic) })?;
        let cfg = self.topic(topic)?;
        let queues = (0..cfg.queues)
            .map(|queue| QueueStat {
                queue,
                range: self.range_of(topic, queue),
            })
            .collect();
        Ok(TopicQueues {
            topic: topic.to_string(),
            queues,
        })
    }

    /// The first offset of a queue stored at or after `timestamp` (ms since
    /// the epoch; the queue's end if none).
    pub fn search_offset(
        &self,
        session: &Session,
        topic: &str,
        queue: u32,
        timestamp: u64,
    ) -> Result<u64, BrokerError> {
        self.admit(session, &Operation::DescribeTopic { topic: Some(topic) })?;
        self.store.offset_for_timestamp(topic, queue, timestamp).map_err(io_err)
    }

    /// Creates `spec.topic` on this broker (or changes its queues and TTL),
    /// and returns once the name servers were told (or could not be).
    pub async fn create_topic(&self, session: &Session, spec: TopicSpec) -> Result<(), BrokerError> {
        self.admit(session, &Operation::CreateTopic { topic: &spec.topic })?;
        validate_topic_name(&spec.topic).map_err(|e| BrokerError::new(ErrorKind::InvalidArgument, e.to_string()))?;
        if spec.queues == 0 || spec.queues > MAX_QUEUES_PER_TOPIC {
            return Err(BrokerError::new(
                ErrorKind::InvalidArgument,
                format!("queues must be between 1 and {MAX_QUEUES_PER_TOPIC}"),
            ));
        }
        let prev = self
            .store
            .topics
            .upsert(
                &spec.topic,
                TopicConfig {
                    queues: spec.queues,
                    ttl_ms: spec.ttl_ms,
                },
            )
            .map_err(io_err)?;
        // Consume-queue files now, off the network thread, rather than on
        // each queue's first message (measured: 10 000 queues' first files
        // slowed the first produce run over them).
        let (store, topic, queues) = (self.store.clone(), spec.topic.clone(), spec.queues);
        match actix_rt::task::spawn_blocking(move || store.queues.prepare_topic(&topic, queues)).await {
            Ok(Ok(())) => {}
            // Only an optimisation: dispatch creates what is missing.
            Ok(Err(e)) => tracing::warn!(topic = %spec.topic, error = %e, "could not prepare consume queues"),
            Err(e) => tracing::warn!(topic = %spec.topic, error = %e, "preparing consume queues failed"),
        }
        tracing::info!(topic = %spec.topic, queues = spec.queues, previous = ?prev.map(|p| p.queues), "topic created");
        self.publish_routes().await;
        Ok(())
    }

    /// Deletes `topic` on this broker with its messages and every group's
    /// offsets of it, and returns once the name servers were told.
    pub async fn delete_topic(&self, session: &Session, topic: &str) -> Result<(), BrokerError> {
        self.admit(session, &Operation::DeleteTopic { topic })?;
        if self.store.topics.remove(topic).map_err(io_err)?.is_none() {
            return Err(BrokerError::new(
                ErrorKind::TopicNotExist,
                format!("topic {topic} does not exist"),
            ));
        }
        self.store.subscriptions.remove_topic(topic).map_err(io_err)?;
        // A topic created again under the same name starts with no
        // group's offsets.
        let tombstones = self.store.offsets.tombstones_of_topic(topic);
        self.services.commit_offsets(tombstones).await?;
        self.writer
            .send(DeleteTopicData(topic.to_string()))
            .await
            .map_err(mailbox)?
            .map_err(io_err)?;
        tracing::info!(%topic, "topic deleted");
        self.publish_routes().await;
        Ok(())
    }

    /// Re-registers at once so the admin command returns with fresh routes.
    async fn publish_routes(&self) {
        match self.registrar.send(RegisterNow).await {
            Ok(true) => {}
            _ => tracing::warn!("no name server acknowledged the topic change yet; it will on the next registration"),
        }
    }
}
