//! The pull consumer: read any queue from any offset.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::core::{ClientConfig, ClientCore, MessageQueue};
use super::error::ClientResult;
use crate::record::StoredRecord;
use crate::wire::control::{from_json, to_json, QueueOffsets, QueueRef};
use crate::wire::pull::{PullRequest, PullResponse, PullStatus};
use crate::wire::Command;

/// What one pull returned.
#[derive(Debug, Clone)]
pub struct PullResult {
    /// How the pull went.
    pub status: PullStatus,
    /// Where the next pull should start.
    pub next_offset: u64,
    /// Smallest offset still stored.
    pub min_offset: u64,
    /// One past the newest offset.
    pub max_offset: u64,
    /// The messages, in queue order.
    pub messages: Vec<StoredRecord>,
}

/// Pulls messages from explicit queues and offsets.
#[derive(Debug, Clone)]
pub struct PullConsumer {
    core: Arc<ClientCore>,
}

impl PullConsumer {
    /// A consumer using `cfg`'s name servers.
    pub fn new(cfg: ClientConfig) -> PullConsumer {
        PullConsumer {
            core: ClientCore::new(cfg),
        }
    }

    /// A consumer sharing another client's connections and routes.
    pub fn from_core(core: Arc<ClientCore>) -> PullConsumer {
        PullConsumer { core }
    }

    /// The shared client state (route cache, connections, down-set).
    pub fn core(&self) -> &Arc<ClientCore> {
        &self.core
    }

    /// Every queue of `topic`.
    pub async fn queues(&self, topic: &str) -> ClientResult<Vec<MessageQueue>> {
        self.core.queues(topic).await
    }

    /// Up to `max_count` messages of `mq` from `offset` matching the tag
    /// expression, waiting up to `max_wait` for one to arrive.
    pub async fn pull(
        &self,
        mq: &MessageQueue,
        offset: u64,
        max_count: u32,
        max_wait: Duration,
        tag_expression: &str,
    ) -> ClientResult<PullResult> {
        let req = PullRequest {
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            offset,
            max_count,
            max_wait_ms: max_wait.as_millis().min(u32::MAX as u128) as u32,
            tag_expression: tag_expression.to_string(),
        };
        let timeout = max_wait + self.core.cfg.request_timeout;
        let (_, body) = self
            .core
            .request(
                &mq.broker_addr,
                Command::PullMessage,
                Bytes::new(),
                req.encode(),
                timeout,
            )
            .await?;
        let resp = PullResponse::decode(body)?;
        Ok(PullResult {
            status: resp.status,
            next_offset: resp.next_offset,
            min_offset: resp.min_offset,
            max_offset: resp.max_offset,
            messages: StoredRecord::decode_all(resp.records, resp.count)?,
        })
    }

    /// Smallest and next offset of a queue.
    pub async fn offsets(&self, mq: &MessageQueue) -> ClientResult<QueueOffsets> {
        let header = to_json(&QueueRef {
            topic: mq.topic.clone(),
            queue: mq.queue_id,
        });
        let timeout = self.core.cfg.request_timeout;
        let (_, body) = self
            .core
            .request(&mq.broker_addr, Command::GetOffsets, header, Bytes::new(), timeout)
            .await?;
        Ok(from_json(&body, "offsets")?)
    }
}
