//! One assigned queue's feeder: finds where the queue starts (committing
//! the start position of a queue the group never committed), then pulls or
//! receives its messages into the consumer's channel, waiting out a broker
//! that is down. Reads (committed offsets, queue bounds, offset search,
//! pulls) go to the queue's master, or a slave while the master is down
//! ([`ClientCore::read_addr`]); commits go to the master or are kept
//! ([`super::kept`]). Per-message acknowledgement mode (`RECEIVE_MESSAGE`)
//! is a write: it waits for the master.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::client::core::{ClientCore, MessageQueue};
use crate::client::error::{ClientError, ClientResult};
use crate::record::StoredRecord;
use crate::wire::control::{from_json, to_json};
use crate::wire::delivery::{ReceiveRequest, ReceiveResponse, MAX_ACK_TIMEOUT_MS, RECEIVE_ORDERLY};
use crate::wire::group::{CommittedOffsets, FetchOffsets, MemberRef, OffsetAt, QueueOffset, SearchOffset};
use crate::wire::Command;

use super::driver::commit_or_keep;
use super::kept::KeptCommits;
use super::{Delivery, StartPosition};

/// What one queue's feeder task needs.
pub(super) struct Feed {
    pub(super) core: Arc<ClientCore>,
    pub(super) mq: MessageQueue,
    /// Where the queue starts when the group has no offset for it.
    pub(super) start: StartPosition,
    /// The group offsets are kept under.
    pub(super) offsets_group: String,
    /// The member and generation the queue is assigned to.
    pub(super) member: MemberRef,
    pub(super) tags: String,
    pub(super) generation: u64,
    pub(super) out: mpsc::Sender<Delivery>,
    /// Commits kept while a master was unreachable; they override a
    /// fetched committed offset.
    pub(super) kept: Arc<Mutex<KeptCommits>>,
    /// See [`super::GroupConsumerConfig::read_from_slave_when_behind`].
    pub(super) read_from_slave_when_behind: Option<u64>,
}

/// Pause between attempts on a queue whose broker fails.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

impl Feed {
    async fn deliver(&self, record: StoredRecord) -> bool {
        let d = Delivery {
            generation: self.generation,
            key: (self.mq.topic.clone(), self.mq.broker_name.clone(), self.mq.queue_id),
            record,
            broker_addr: self.mq.broker_addr.clone(),
        };
        self.out.send(d).await.is_ok()
    }

    /// Where consumption of the queue starts: the offset this client
    /// committed while the master could not take it (kept), else the
    /// group's committed offset, kept by the queue's broker group (asked of
    /// the master, or of a slave, which replicates it, while the master is
    /// down); else the configured start position, committed at once so
    /// that messages stored while no member runs are delivered by the next
    /// one (as Kafka and RocketMQ do).
    async fn start_offset(&self) -> ClientResult<u64> {
        let timeout = self.core.cfg.request_timeout;
        let kept = self.kept.lock().ok().and_then(|k| {
            k.get(
                &self.offsets_group,
                &self.mq.topic,
                &self.mq.broker_name,
                self.mq.queue_id,
            )
        });
        if let Some(o) = kept {
            return Ok(o);
        }
        let read_addr = self.core.read_addr(&self.mq).await;
        let f = FetchOffsets {
            group: self.offsets_group.clone(),
            topic: Some(self.mq.topic.clone()),
        };
        let (_, body) = self
            .core
            .request(&read_addr, Command::FetchOffsets, to_json(&f), Bytes::new(), timeout)
            .await?;
        let committed: CommittedOffsets = from_json(&body, "offsets")?;
        let found = committed
            .offsets
            .iter()
            .find(|o| o.queue == self.mq.queue_id && o.broker_name == self.mq.broker_name);
        if let Some(o) = found {
            return Ok(o.offset);
        }
        let header = to_json(&crate::wire::control::QueueRef {
            topic: self.mq.topic.clone(),
            queue: self.mq.queue_id,
        });
        let (_, body) = self
            .core
            .request(&read_addr, Command::GetOffsets, header, Bytes::new(), timeout)
            .await?;
        let range: crate::wire::control::QueueOffsets = from_json(&body, "offsets")?;
        let start = match self.start {
            StartPosition::Earliest => range.min_offset,
            StartPosition::Latest => range.max_offset,
            StartPosition::Timestamp(t) => {
                let s = SearchOffset {
                    topic: self.mq.topic.clone(),
                    queue: self.mq.queue_id,
                    timestamp: t,
                };
                let (_, body) = self
                    .core
                    .request(&read_addr, Command::SearchOffset, to_json(&s), Bytes::new(), timeout)
                    .await?;
                from_json::<OffsetAt>(&body, "offset")?.offset
            }
        };
        let offset = QueueOffset {
            topic: self.mq.topic.clone(),
            broker_name: self.mq.broker_name.clone(),
            queue: self.mq.queue_id,
            offset: start,
        };
        if let Err(e) = commit_or_keep(&self.core, &self.kept, &self.offsets_group, &self.member, vec![offset]).await {
            // Consumption goes on; the next commit records the position.
            tracing::warn!(queue = %self.mq, error = %e, "could not commit the start position");
        }
        Ok(start)
    }

    /// [`Feed::start_offset`], retried until its broker answers. `None`
    /// when the consumer is gone.
    async fn wait_for_start(&mut self) -> Option<u64> {
        let mut failures = 0u32;
        loop {
            match self.start_offset().await {
                Ok(o) => return Some(o),
                Err(e) => {
                    if self.out.is_closed() {
                        return None;
                    }
                    self.note_failure(&mut failures, "start offset", &e).await;
                }
            }
        }
    }

    /// Logs a failure once per outage, pauses, and after a few failures
    /// looks the queue's broker up again (a restarted broker may have
    /// moved).
    async fn note_failure(&mut self, failures: &mut u32, what: &str, e: &ClientError) {
        *failures += 1;
        if *failures == 1 {
            tracing::warn!(queue = %self.mq, error = %e, "{what} failed; retrying in the background");
        } else {
            tracing::debug!(queue = %self.mq, error = %e, "{what} failed again");
        }
        tokio::time::sleep(RETRY_PAUSE).await;
        if *failures % 5 == 0 {
            self.core.invalidate(&self.mq.topic);
            if let Ok(queues) = self.core.queues(&self.mq.topic).await {
                let moved = queues
                    .into_iter()
                    .find(|q| q.broker_name == self.mq.broker_name && q.queue_id == self.mq.queue_id);
                if let Some(q) = moved {
                    self.mq.broker_addr = q.broker_addr;
                }
            }
        }
    }

    /// Offset-committing consumption: pull from a client-kept offset.
    pub(super) async fn pull_loop(mut self) {
        let Some(mut offset) = self.wait_for_start().await else {
            return;
        };
        let consumer = crate::client::consumer::PullConsumer::from_core(self.core.clone())
            .with_read_from_slave_when_behind(self.read_from_slave_when_behind.unwrap_or(0));
        let mut failures = 0u32;
        loop {
            match consumer
                .pull(&self.mq, offset, 32, Duration::from_secs(1), &self.tags)
                .await
            {
                Ok(r) => {
                    if failures > 0 {
                        tracing::info!(queue = %self.mq, broker = %r.broker_addr, "queue reachable again");
                        failures = 0;
                    }
                    offset = r.next_offset;
                    for record in r.messages {
                        if !self.deliver(record).await {
                            return;
                        }
                    }
                }
                Err(e) => self.note_failure(&mut failures, "pull", &e).await,
            }
        }
    }

    /// Per-message acknowledgements: the broker tracks what is in flight.
    pub(super) async fn receive_loop(mut self, ack_timeout: Duration, orderly: bool) {
        let Some(start) = self.wait_for_start().await else {
            return;
        };
        let req = ReceiveRequest {
            group: self.offsets_group.clone(),
            topic: self.mq.topic.clone(),
            queue_id: self.mq.queue_id,
            start_offset: start,
            max_count: if orderly { 1 } else { 32 },
            max_wait_ms: 1_000,
            ack_timeout_ms: ack_timeout.as_millis().clamp(1, u128::from(MAX_ACK_TIMEOUT_MS)) as u32,
            flags: if orderly { RECEIVE_ORDERLY } else { 0 },
            tag_expression: self.tags.clone(),
        };
        let body = req.encode();
        let timeout = self.core.cfg.request_timeout + Duration::from_secs(1);
        let mut failures = 0u32;
        loop {
            let answer = self
                .core
                .request(
                    &self.mq.broker_addr,
                    Command::ReceiveMessage,
                    Bytes::new(),
                    body.clone(),
                    timeout,
                )
                .await;
            let resp = answer.and_then(|(_, b)| Ok(ReceiveResponse::decode(b)?));
            match resp {
                Ok(r) => {
                    failures = 0;
                    for (delivery, raw) in r.deliveries {
                        let mut record = match StoredRecord::decode(raw) {
                            Ok(rec) => rec,
                            Err(e) => {
                                tracing::warn!(queue = %self.mq, error = %e, "undecodable record; the ack timeout redelivers it");
                                continue;
                            }
                        };
                        record.reconsume_times = delivery.saturating_sub(1);
                        if !self.deliver(record).await {
                            return;
                        }
                    }
                }
                Err(e) => self.note_failure(&mut failures, "receive", &e).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::core::test_support::{broker, namesrv, start};
    use crate::client::core::ClientConfig;
    use crate::wire::control::TopicRoute;
    use crate::wire::group::QueueOffset;
    use crate::wire::Frame;

    #[tokio::test]
    async fn a_kept_commit_overrides_the_offset_a_slave_replicated() {
        // The master is down; the slave still has the group at offset 3.
        let slave = start(Arc::new(|f: &Frame| {
            let body = if f.code == Command::FetchOffsets.code() {
                to_json(&CommittedOffsets {
                    offsets: vec![QueueOffset {
                        topic: "t".into(),
                        broker_name: "b".into(),
                        queue: 0,
                        offset: 3,
                    }],
                })
            } else {
                Bytes::new()
            };
            Frame::ok(f.correlation_id, Bytes::new(), body)
        }))
        .await;
        let route = TopicRoute {
            topic: "t".into(),
            brokers: vec![broker("b", 1, &[(1, &slave)], &[(0, "127.0.0.1:1")])],
        };
        let core = ClientCore::new(ClientConfig::new([namesrv(Arc::new(Mutex::new(route))).await]));
        let mq = core.queues("t").await.unwrap().remove(0);
        let (out, _rx) = mpsc::channel(1);
        let feed = Feed {
            core,
            mq,
            start: StartPosition::Earliest,
            offsets_group: "g".into(),
            member: MemberRef {
                group: "g".into(),
                member_id: "m".into(),
                generation: 1,
            },
            tags: "*".into(),
            generation: 1,
            out,
            kept: Arc::default(),
            read_from_slave_when_behind: None,
        };
        assert_eq!(feed.start_offset().await.unwrap(), 3, "the slave's replicated offset");
        feed.kept.lock().unwrap().keep(
            "g",
            &[QueueOffset {
                topic: "t".into(),
                broker_name: "b".into(),
                queue: 0,
                offset: 9,
            }],
        );
        assert_eq!(
            feed.start_offset().await.unwrap(),
            9,
            "what this client committed meanwhile"
        );
    }
}
