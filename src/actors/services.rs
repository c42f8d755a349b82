//! What actors beyond the writer need to write to the log: appending to a
//! topic (dead letters, released delayed messages), committing offsets,
//! creating internal topics. The writer and registrar start after the
//! registries that hand this out, so they are set once, later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use actix::Addr;

use super::commitlog_writer::{Append, CommitLogWriter};
use super::delay_scheduler::DelayScheduler;
use super::delayed_send::{check_batch, send_with_delays};
use super::namesrv_client::{NameServerClient, RegisterNow};
use crate::clock::now_millis;
use crate::config::DeliverySection;
use crate::delivery::RetryPolicy;
use crate::error::{BrokerError, ErrorKind};
use crate::observe::{ActorTree, Tracked};
use crate::store::append::AppendEntry;
use crate::store::offsets::{encode_commits, OffsetKey, OFFSETS_TOPIC};
use crate::store::topics::TopicConfig;
use crate::store::Store;
use crate::wire::send::SendResponse;

/// Shared services of the broker's actors.
pub struct BrokerServices {
    /// The store.
    pub store: Arc<Store>,
    /// This broker's advertised address.
    pub store_host: SocketAddr,
    /// `[delivery]` settings.
    pub delivery: DeliverySection,
    /// Retry rules derived from `delivery`.
    pub retry: RetryPolicy,
    /// The live actor tree (for `/actors` and `/metrics`).
    pub tree: Arc<ActorTree>,
    writer: OnceLock<Tracked<CommitLogWriter>>,
    registrar: OnceLock<Addr<NameServerClient>>,
    delays: OnceLock<Addr<DelayScheduler>>,
}

/// A batch of messages for one queue, as a producer sent it.
#[derive(Debug)]
pub struct AppendBatch {
    /// The topic (it must exist).
    pub topic: String,
    /// The queue (it must exist).
    pub queue_id: u32,
    /// The messages, in order.
    pub entries: Vec<AppendEntry>,
    /// The producer's address, stored in each record.
    pub born_host: SocketAddr,
}

impl BrokerServices {
    /// Services over `store`; set the writer and registrar once started.
    pub fn new(
        store: Arc<Store>,
        store_host: SocketAddr,
        delivery: DeliverySection,
        tree: Arc<ActorTree>,
    ) -> BrokerServices {
        BrokerServices {
            store,
            tree,
            store_host,
            retry: delivery.retry_policy(),
            delivery,
            writer: OnceLock::new(),
            registrar: OnceLock::new(),
            delays: OnceLock::new(),
        }
    }

    /// Sets the commitlog writer (once).
    pub fn set_writer(&self, writer: Tracked<CommitLogWriter>) {
        let _ = self.writer.set(writer);
    }

    /// Sets the name-server registrar (once).
    pub fn set_registrar(&self, registrar: Addr<NameServerClient>) {
        let _ = self.registrar.set(registrar);
    }

    /// Sets the delay scheduler (once).
    pub fn set_delays(&self, delays: Addr<DelayScheduler>) {
        let _ = self.delays.set(delays);
    }

    /// Appends a producer's batch: checks its delivery properties, then
    /// stores ordinary messages in their queue and delayed ones in the
    /// delay topic (announcing them to the scheduler).
    pub async fn append_batch(&self, batch: AppendBatch) -> Result<SendResponse, BrokerError> {
        if let Some(delays) = check_batch(&batch.entries, self.delivery.max_delay_ms)? {
            let scheduler = self
                .delays
                .get()
                .ok_or_else(|| BrokerError::unavailable("the delay scheduler is not started yet"))?;
            return send_with_delays(self, scheduler, batch, delays).await;
        }
        self.append_from(&batch.topic, batch.queue_id, batch.entries, batch.born_host)
            .await
    }

    /// Appends `entries` the broker itself writes (dead letters, released
    /// delayed messages, offset commits) to (topic, queue), which must exist.
    pub async fn append(
        &self,
        topic: &str,
        queue_id: u32,
        entries: Vec<AppendEntry>,
    ) -> Result<SendResponse, BrokerError> {
        self.append_from(topic, queue_id, entries, self.store_host).await
    }

    /// Appends `entries` to (topic, queue) with `born_host` as their origin.
    pub async fn append_from(
        &self,
        topic: &str,
        queue_id: u32,
        entries: Vec<AppendEntry>,
        born_host: SocketAddr,
    ) -> Result<SendResponse, BrokerError> {
        let writer = self.writer.get().ok_or_else(|| {
            BrokerError::new(
                ErrorKind::Unavailable,
                "the commitlog writer is not started yet".to_string(),
            )
        })?;
        let append = Append {
            topic: Arc::from(topic),
            queue_id,
            entries,
            born_host,
        };
        writer
            .send(append)
            .await
            .map_err(|e| BrokerError::new(ErrorKind::Unavailable, format!("commitlog writer unavailable: {e}")))?
    }

    /// Creates a topic the broker itself writes to (a dead-letter topic)
    /// when missing, and announces it to the name servers.
    pub fn ensure_topic(&self, topic: &str, queues: u32) -> Result<(), BrokerError> {
        let (_, created) = self
            .store
            .topics
            .get_or_create(topic, TopicConfig::with_queues(queues))
            .map_err(|e| BrokerError::new(ErrorKind::Store, e.to_string()))?;
        if created {
            tracing::info!(topic, "created topic");
            if let Some(r) = self.registrar.get() {
                r.do_send(RegisterNow);
            }
        }
        Ok(())
    }

    /// Applies commits, then appends them to the offsets topic (applying
    /// first keeps every appended commit inside any later snapshot).
    pub async fn commit_offsets(&self, commits: Vec<(OffsetKey, u64)>) -> Result<(), BrokerError> {
        if commits.is_empty() {
            return Ok(());
        }
        self.store.offsets.apply(&commits);
        let entry = AppendEntry {
            flags: 0,
            born_timestamp: now_millis(),
            properties: BTreeMap::new(),
            body: encode_commits(&commits),
        };
        self.append(OFFSETS_TOPIC, 0, vec![entry]).await.map(|_| ())
    }
}
