//! What actors beyond the writer need to write to the log: appending to a
//! topic (dead letters, released delayed messages), committing offsets,
//! creating internal topics. The writer and registrar start after the
//! registries that hand this out, so they are set once, later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use actix::Addr;

use super::commitlog_writer::{Append, CommitLogWriter};
use super::namesrv_client::{NameServerClient, RegisterNow};
use crate::clock::now_millis;
use crate::config::DeliverySection;
use crate::delivery::RetryPolicy;
use crate::observe::{ActorTree, Tracked};
use crate::store::append::AppendEntry;
use crate::store::offsets::{encode_commits, OffsetKey, OFFSETS_TOPIC};
use crate::store::topics::TopicConfig;
use crate::store::Store;
use crate::wire::send::SendResponse;
use crate::wire::Status;

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
}

/// An error as a status and message, like request handlers return.
pub type ServiceError = (Status, String);

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

    /// Appends `entries` to (topic, queue), which must exist.
    pub async fn append(
        &self,
        topic: &str,
        queue_id: u32,
        entries: Vec<AppendEntry>,
    ) -> Result<SendResponse, ServiceError> {
        let writer = self.writer.get().ok_or_else(|| {
            (
                Status::ServiceUnavailable,
                "the commitlog writer is not started yet".to_string(),
            )
        })?;
        let append = Append {
            topic: Arc::from(topic),
            queue_id,
            entries,
            born_host: self.store_host,
        };
        writer
            .send(append)
            .await
            .map_err(|e| (Status::ServiceUnavailable, format!("commitlog writer unavailable: {e}")))?
    }

    /// Creates a topic the broker itself writes to (a dead-letter topic)
    /// when missing, and announces it to the name servers.
    pub fn ensure_topic(&self, topic: &str, queues: u32) -> Result<(), ServiceError> {
        let (_, created) = self
            .store
            .topics
            .get_or_create(topic, TopicConfig::with_queues(queues))
            .map_err(|e| (Status::StoreError, e.to_string()))?;
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
    pub async fn commit_offsets(&self, commits: Vec<(OffsetKey, u64)>) -> Result<(), ServiceError> {
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
