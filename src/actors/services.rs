//! What the broker core and its actors need to write to the log: the one
//! append path (producers' batches, dead letters, released delayed
//! messages, offset commits: every caller ends in one [`Append`] message
//! to the `CommitLogWriter`, so each batch is stored atomically), and
//! creating internal topics.
//!
//! The writer is given at construction (it is started first: it needs no
//! services). The name-server registrar and the delay scheduler start
//! after these services (the scheduler appends through them), so they are
//! set once, later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use actix::{Addr, Recipient};

use super::commitlog_writer::{Append, AppendGroup, CommitLogWriter};
use super::delayed_send::{check_batch, route_delays, Scheduled};
use super::namesrv_client::{NameServerClient, RegisterNow};
use crate::clock::now_millis;
use crate::config::DeliverySection;
use crate::delivery::RetryPolicy;
use crate::error::{BrokerError, ErrorKind};
use crate::observe::{ActorTree, Tracked};
use crate::store::append::{AppendEntry, Appended};
use crate::store::offsets::{encode_commits, OffsetKey, OFFSETS_TOPIC};
use crate::store::topics::TopicConfig;
use crate::store::Store;

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
    writer: Tracked<CommitLogWriter>,
    /// Set later: the registrar belongs to the network side, started after
    /// the store side these services are part of. Missing it only skips an
    /// early announcement: its first registration lists every topic.
    registrar: OnceLock<Addr<NameServerClient>>,
    /// Set later: the scheduler appends (releases, progress commits)
    /// through these services, so it can only start after them.
    delays: OnceLock<Recipient<Scheduled>>,
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
    /// Services over `store`, appending through `writer`; set the
    /// registrar and the delay scheduler once started.
    pub fn new(
        store: Arc<Store>,
        store_host: SocketAddr,
        delivery: DeliverySection,
        tree: Arc<ActorTree>,
        writer: Tracked<CommitLogWriter>,
    ) -> BrokerServices {
        BrokerServices {
            store,
            tree,
            store_host,
            retry: delivery.retry_policy(),
            delivery,
            writer,
            registrar: OnceLock::new(),
            delays: OnceLock::new(),
        }
    }

    /// Sets the name-server registrar (once).
    pub fn set_registrar(&self, registrar: Addr<NameServerClient>) {
        let _ = self.registrar.set(registrar);
    }

    /// Sets the delay scheduler (once).
    pub fn set_delays(&self, delays: Recipient<Scheduled>) {
        let _ = self.delays.set(delays);
    }

    /// Appends a producer's batch, atomically: checks its delivery
    /// properties, then stores ordinary messages in their queue and delayed
    /// ones in the delay topic with one writer message, and announces the
    /// delayed ones to the scheduler once stored.
    pub async fn append_batch(&self, batch: AppendBatch) -> Result<Appended, BrokerError> {
        let Some(delays) = check_batch(&batch.entries, self.delivery.max_delay_ms)? else {
            return self
                .append_from(&batch.topic, batch.queue_id, batch.entries, batch.born_host)
                .await;
        };
        let scheduler = self
            .delays
            .get()
            .ok_or_else(|| BrokerError::new(ErrorKind::Unavailable, "the delay scheduler is not started yet"))?;
        let routed = route_delays(&batch.topic, batch.queue_id, batch.born_host, batch.entries, delays);
        let appended = self.send(routed.append).await?;
        let (appended, scheduled) = routed.pending.finish(appended);
        scheduler.do_send(scheduled);
        Ok(appended)
    }

    /// Appends `entries` the broker itself writes (dead letters, released
    /// delayed messages, offset commits) to (topic, queue), which must exist.
    pub async fn append(&self, topic: &str, queue_id: u32, entries: Vec<AppendEntry>) -> Result<Appended, BrokerError> {
        self.append_from(topic, queue_id, entries, self.store_host).await
    }

    /// Appends `entries` to (topic, queue) with `born_host` as their origin.
    pub async fn append_from(
        &self,
        topic: &str,
        queue_id: u32,
        entries: Vec<AppendEntry>,
        born_host: SocketAddr,
    ) -> Result<Appended, BrokerError> {
        let group = AppendGroup {
            topic: Arc::from(topic),
            queue_id,
            born_host,
            entries,
        };
        self.append_groups(vec![group]).await
    }

    /// Appends several groups (each its own queue and origin) atomically:
    /// all are stored or none. `stored` lists them in group order.
    pub async fn append_groups(&self, groups: Vec<AppendGroup>) -> Result<Appended, BrokerError> {
        self.send(Append { groups }).await
    }

    /// The one place a writer message is sent.
    async fn send(&self, append: Append) -> Result<Appended, BrokerError> {
        self.writer
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
    /// first keeps every appended commit inside any later snapshot). When
    /// the append fails (a full disk) the commits are taken back, so a
    /// failed commit never shows as committed.
    pub async fn commit_offsets(&self, commits: Vec<(OffsetKey, u64)>) -> Result<(), BrokerError> {
        if commits.is_empty() {
            return Ok(());
        }
        let applied = self.store.offsets.apply_returning_previous(&commits);
        let entry = AppendEntry {
            flags: 0,
            born_timestamp: now_millis(),
            properties: BTreeMap::new(),
            body: encode_commits(&commits),
        };
        let appended = self.append(OFFSETS_TOPIC, 0, vec![entry]).await;
        if appended.is_err() {
            self.store.offsets.revert(&applied);
        }
        appended.map(|_| ())
    }
}

/// Test helpers: services over a store with a writer and a dispatcher
/// (no listeners) started on the current arbiter.
#[cfg(test)]
pub mod testing {
    use super::*;
    use crate::actors::ack_policy::AfterPageCache;
    use crate::actors::dispatcher::Dispatcher;
    use crate::observe::{kind, ActorStats};
    use actix::Actor;

    /// Services over `store` (inside a running actix system).
    pub fn services(store: Arc<Store>, store_host: SocketAddr) -> BrokerServices {
        services_and_writer(store, store_host).0
    }

    /// Services over `store`, and the figures of their writer.
    pub fn services_and_writer(store: Arc<Store>, store_host: SocketAddr) -> (BrokerServices, Arc<ActorStats>) {
        let dispatcher = Dispatcher::new(store.clone()).start();
        let dispatcher = Tracked::new(dispatcher, ActorStats::detached(kind::DISPATCHER, "test"));
        let stats = ActorStats::detached(kind::COMMITLOG_WRITER, "test");
        let writer = CommitLogWriter::new(store.clone(), dispatcher, Arc::new(AfterPageCache), store_host)
            .with_stats(stats.clone())
            .start();
        let writer = Tracked::new(writer, stats.clone());
        let services = BrokerServices::new(store, store_host, Default::default(), Default::default(), writer);
        (services, stats)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use actix::prelude::*;
    use bytes::Bytes;

    use super::*;
    use crate::delivery::delay::{DELAY_QUEUES, DELAY_TOPIC};
    use crate::message::props;
    use crate::store::testing::small_config;

    /// Stands in for the delay scheduler.
    #[derive(Default)]
    struct Recorder(Arc<Mutex<Vec<Scheduled>>>);

    impl Actor for Recorder {
        type Context = Context<Self>;
    }

    impl Handler<Scheduled> for Recorder {
        type Result = ();
        fn handle(&mut self, msg: Scheduled, _: &mut Context<Self>) {
            self.0.lock().unwrap().push(msg);
        }
    }

    fn message(body: &str, prop: Option<(&str, String)>) -> AppendEntry {
        AppendEntry {
            flags: 0,
            born_timestamp: 1,
            properties: prop.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            body: Bytes::from(body.to_string()),
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        services: BrokerServices,
        writer: Arc<crate::observe::ActorStats>,
        scheduled: Arc<Mutex<Vec<Scheduled>>>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let internal = [(DELAY_TOPIC, TopicConfig::with_queues(DELAY_QUEUES))];
        let (store, _) =
            Store::open_with_internal_topics(&small_config(dir.path()), &internal, crate::delivery::expiry::expire_at)
                .unwrap();
        let store = Arc::new(store);
        store.topics.get_or_create("t", TopicConfig::with_queues(2)).unwrap();
        let (services, writer) = testing::services_and_writer(store.clone(), "127.0.0.1:2".parse().unwrap());
        let recorder = Recorder::default();
        let scheduled = recorder.0.clone();
        services.set_delays(recorder.start().recipient());
        Fixture {
            _dir: dir,
            store,
            services,
            writer,
            scheduled,
        }
    }

    fn batch(entries: Vec<AppendEntry>) -> AppendBatch {
        AppendBatch {
            topic: "t".to_string(),
            queue_id: 1,
            entries,
            born_host: "10.1.2.3:4567".parse().unwrap(),
        }
    }

    #[actix_rt::test]
    async fn a_mixed_batch_is_one_writer_message_from_the_producer() {
        let f = fixture();
        let at = (now_millis() + 60_000).to_string();
        let entries = vec![
            message("now-1", None),
            message("level-1", Some((props::DELAY_LEVEL, "1".to_string()))),
            message("now-2", None),
            message("at", Some((props::DELIVER_AT, at))),
        ];
        let appended = f.services.append_batch(batch(entries)).await.unwrap();
        assert_eq!(f.writer.info().handled, 1, "one writer message for the whole batch");
        assert_eq!(appended.queue_id, 1);
        let records: Vec<_> = appended
            .stored
            .iter()
            .map(|s| f.store.log.record_at(s.phys_offset).unwrap())
            .collect();
        let placed: Vec<_> = records
            .iter()
            .map(|r| (r.topic.as_str(), r.queue_id, r.queue_offset, &r.body[..]))
            .collect();
        assert_eq!(
            placed,
            [
                ("t", 1, 0, &b"now-1"[..]),
                (DELAY_TOPIC, 1, 0, &b"level-1"[..]),
                ("t", 1, 1, &b"now-2"[..]),
                (DELAY_TOPIC, 0, 0, &b"at"[..]),
            ],
            "in batch order"
        );
        for r in &records {
            assert_eq!(r.born_host, "10.1.2.3:4567".parse().unwrap(), "the producer's address");
        }
        assert_eq!(
            records[1].properties.get(props::REAL_QUEUE).map(String::as_str),
            Some("1")
        );
        // The scheduler hears of both delayed messages once they are stored.
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
        let scheduled = f.scheduled.lock().unwrap();
        let held: Vec<_> = scheduled
            .iter()
            .flat_map(|s| s.0.iter().map(|(q, o, _)| (*q, *o)))
            .collect();
        assert_eq!(held, [(0, 0), (1, 0)]);
    }

    #[actix_rt::test]
    async fn a_mixed_batch_that_cannot_be_stored_stores_nothing() {
        let f = fixture();
        let end = f.store.log.write_pos();
        // The delayed message cannot fit a segment: before, the immediate
        // one was stored by then; now neither is.
        let huge = "x".repeat(f.store.log.segment_bytes() as usize);
        let entries = vec![
            message("now", None),
            message(&huge, Some((props::DELAY_LEVEL, "2".to_string()))),
        ];
        let err = f.services.append_batch(batch(entries)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert_eq!(f.store.log.write_pos(), end, "nothing stored");
        actix_rt::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(f.scheduled.lock().unwrap().is_empty(), "nothing scheduled");
        let next = f
            .services
            .append_batch(batch(vec![message("next", None)]))
            .await
            .unwrap();
        assert_eq!(next.stored[0].queue_offset, 0, "no queue offset was used up");
    }

    #[actix_rt::test]
    async fn a_commit_that_cannot_be_stored_is_taken_back() {
        let f = fixture();
        let key = |group: &str, queue| OffsetKey {
            group: group.into(),
            topic: "t".into(),
            queue,
        };
        f.services.commit_offsets(vec![(key("g", 0), 63)]).await.unwrap();
        f.services.commit_offsets(vec![(key("g", 1), 5)]).await.unwrap();
        // A commit record larger than a segment (64 KiB here) cannot be
        // appended, like one that finds the disk full.
        let huge = "x".repeat(40_000);
        let err = f
            .services
            .commit_offsets(vec![
                (key("g", 0), 70),
                (key("g", 1), 9),
                (key("g", 2), 1),
                (key(&huge, 0), 1),
                (key(&huge, 1), 1),
            ])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        // Not shown as committed: the previous offsets (or none) are back.
        assert_eq!(f.store.offsets.get(&key("g", 0)), Some(63));
        assert_eq!(f.store.offsets.get(&key("g", 1)), Some(5));
        assert_eq!(f.store.offsets.get(&key("g", 2)), None);
        assert_eq!(f.store.offsets.get(&key(&huge, 0)), None);
    }

    #[actix_rt::test]
    async fn the_broker_writes_its_own_records_from_its_own_address() {
        let f = fixture();
        let appended = f
            .services
            .append("t", 0, vec![message("dead letter", None)])
            .await
            .unwrap();
        let r = f.store.log.record_at(appended.stored[0].phys_offset).unwrap();
        assert_eq!(r.born_host, f.services.store_host);
        assert_eq!(appended.store_host, f.services.store_host);
    }
}
