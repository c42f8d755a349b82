//! Topic administration and figures: create, delete, per-queue offsets,
//! offset by time.

use super::{io_err, mailbox, BrokerCore, Operation};
use crate::actors::commitlog_writer::DeleteTopicData;
use crate::actors::namesrv_client::RegisterNow;
use crate::broker::session::Session;
use crate::error::{BrokerError, ErrorKind};
use crate::store::disk::{DiskFull, DiskStatus};
use crate::store::topics::TopicConfig;
use crate::wire::control::{validate_topic_name, StoreUsage};

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

/// A topic's queues on this broker, and the broker's store figures.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicQueues {
    /// Topic name.
    pub topic: String,
    /// Every queue, by id.
    pub queues: Vec<QueueStat>,
    /// This broker's commitlog size and disk state
    /// ([`BrokerCore::store_usage`]).
    pub store: StoreUsage,
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
        self.admit(session, &Operation::DescribeTopic { topic })?;
        self.existing_queue(topic, queue)?;
        Ok(self.range_of(topic, queue))
    }

    /// Every queue of `topic` on this broker with its offsets.
    pub fn topic_stats(&self, session: &Session, topic: &str) -> Result<TopicQueues, BrokerError> {
        self.admit(session, &Operation::DescribeTopic { topic })?;
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
            store: self.store_usage(),
        })
    }

    /// This broker's store figures: the commitlog's size and offsets, a
    /// fresh reading of the data directory's file system (the last one if
    /// it cannot be read) against the disk watermarks, and whether sends
    /// are refused. A fresh reading also updates the refusal decision, as
    /// the retention cleaner's does. No admission check: callers check
    /// what they show it with (`topic_stats` does).
    pub fn store_usage(&self) -> StoreUsage {
        let disk = self.store.disk.refresh().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the disk usage of the data directory");
            self.store.disk.status()
        });
        store_usage_of(&self.store.log, &disk, &self.store.data_dir())
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
        self.admit(session, &Operation::DescribeTopic { topic })?;
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

/// The figures of `log` and the disk reading `disk` of the data directory
/// `dir`.
fn store_usage_of(log: &crate::store::commitlog::CommitLog, disk: &DiskStatus, dir: &std::path::Path) -> StoreUsage {
    let segments = log.segment_count() as u64;
    let refusal = disk.refusing.map(|reason| {
        DiskFull {
            path: dir.to_path_buf(),
            usage: disk.usage,
            refuse_ratio: disk.marks.refuse,
            reason,
        }
        .to_string()
    });
    StoreUsage {
        commitlog_bytes: segments.saturating_mul(log.segment_bytes()),
        segments,
        segment_bytes: log.segment_bytes(),
        commitlog_start_offset: log.start_offset(),
        commitlog_end_offset: log.write_pos(),
        disk_total_bytes: disk.usage.total_bytes,
        disk_free_bytes: disk.usage.free_bytes,
        disk_used_bytes: disk.usage.used_bytes(),
        disk_used_ratio: disk.usage.used_ratio(),
        level: disk.level.name().to_string(),
        clean_ratio: disk.marks.clean,
        force_clean_ratio: disk.marks.force_clean,
        refuse_ratio: disk.marks.refuse,
        refusing_sends: refusal.is_some(),
        refusal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::commitlog::CommitLog;
    use crate::store::disk::{DiskLevel, DiskUsage, RefusalReason, Watermarks};

    #[test]
    fn store_usage_reports_the_log_and_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let log = CommitLog::open(dir.path(), 4096).unwrap();
        let mut disk = DiskStatus {
            usage: DiskUsage {
                total_bytes: 1000,
                free_bytes: 50,
            },
            level: DiskLevel::Refuse,
            refusing: Some(RefusalReason::Watermark),
            marks: Watermarks::default(),
        };
        let u = store_usage_of(&log, &disk, std::path::Path::new("/data"));
        assert_eq!(u.commitlog_bytes, u.segments * 4096);
        assert_eq!(u.segment_bytes, 4096);
        assert_eq!(
            (u.disk_total_bytes, u.disk_free_bytes, u.disk_used_bytes),
            (1000, 50, 950)
        );
        assert!((u.disk_used_ratio - 0.95).abs() < 1e-9);
        assert_eq!(u.level, "refuse");
        assert_eq!((u.clean_ratio, u.force_clean_ratio, u.refuse_ratio), (0.75, 0.85, 0.9));
        assert!(u.refusing_sends);
        let why = u.refusal.unwrap();
        assert!(why.starts_with("disk full: /data is 95.0% used"), "{why}");
        disk.refusing = None;
        disk.level = DiskLevel::Normal;
        let u = store_usage_of(&log, &disk, std::path::Path::new("/data"));
        assert!(!u.refusing_sends && u.refusal.is_none() && u.level == "normal");
    }
}
