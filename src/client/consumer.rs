//! The pull consumer: read any queue from any offset.
//!
//! Reads go to the queue's broker group's master, or to a live slave of
//! the group while the master is down (see [`ClientCore::read_addr`]):
//! a slave's records are the master's, byte for byte, at the same offsets,
//! so consumption goes on across a master's death and return. Optionally
//! ([`PullConsumer::with_read_from_slave_when_behind`]) a consumer far
//! behind reads from a slave to spare the master.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
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
    /// Address of the broker that answered: the master, or a slave.
    pub broker_addr: String,
}

/// Should the next pulls of a queue go to a slave, given whether they do
/// now, how far behind the queue's end the consumer is, and the threshold
/// `n`? Yes once more than `n` behind; back to the master once within
/// `n / 2`.
pub fn lag_prefers_slave(on_slave: bool, behind: u64, n: u64) -> bool {
    if on_slave {
        behind > n / 2
    } else {
        behind > n
    }
}

/// Lag-based slave reads: the threshold and the queues read from a slave.
#[derive(Debug)]
struct SlaveReads {
    threshold: u64,
    on_slave: Mutex<HashSet<MessageQueue>>,
}

impl SlaveReads {
    fn is_on(&self, mq: &MessageQueue) -> bool {
        self.on_slave.lock().is_ok_and(|s| s.contains(mq))
    }

    /// Records the consumer's distance to the end after a pull; returns
    /// the new state when it changed.
    fn update(&self, mq: &MessageQueue, behind: u64, slave_available: bool) -> Option<bool> {
        let Ok(mut set) = self.on_slave.lock() else { return None };
        let on = set.contains(mq);
        let want = lag_prefers_slave(on, behind, self.threshold) && (on || slave_available);
        if want == on {
            return None;
        }
        if want {
            set.insert(mq.clone());
        } else {
            set.remove(mq);
        }
        Some(want)
    }
}

/// A slave behind its master (asynchronous replication) answers a pull
/// past its end with `OFFSET_MOVED` back to its end. Read from a slave,
/// such an answer keeps the consumer's offset (nothing new yet) instead of
/// moving it back, which would deliver again what the master already
/// delivered.
fn hold_offset_on_slave(result: &mut PullResult, offset: u64, from_slave: bool) {
    if from_slave && result.status == PullStatus::OffsetMoved && result.next_offset < offset {
        result.status = PullStatus::NoNewMessage;
        result.next_offset = offset;
    }
}

/// Pulls messages from explicit queues and offsets.
#[derive(Debug, Clone)]
pub struct PullConsumer {
    core: Arc<ClientCore>,
    slave_reads: Option<Arc<SlaveReads>>,
}

impl PullConsumer {
    /// A consumer using `cfg`'s name servers.
    pub fn new(cfg: ClientConfig) -> PullConsumer {
        PullConsumer::from_core(ClientCore::new(cfg))
    }

    /// A consumer sharing another client's connections and routes.
    pub fn from_core(core: Arc<ClientCore>) -> PullConsumer {
        PullConsumer {
            core,
            slave_reads: None,
        }
    }

    /// Like RocketMQ's `slaveReadEnable`: when a pull shows this consumer
    /// more than `n` messages behind the queue's end and the queue's group
    /// has a live slave, the next pulls of that queue go to the slave,
    /// until the consumer is within `n / 2` of the end again. Off by
    /// default (reads go to the master while it is up). `n = 0` turns it
    /// off.
    pub fn with_read_from_slave_when_behind(mut self, n: u64) -> PullConsumer {
        self.slave_reads = (n > 0).then(|| {
            Arc::new(SlaveReads {
                threshold: n,
                on_slave: Mutex::default(),
            })
        });
        self
    }

    /// The shared client state (route cache, connections, down-set).
    pub fn core(&self) -> &Arc<ClientCore> {
        &self.core
    }

    /// Every readable queue of `topic` (see [`ClientCore::queues`]).
    pub async fn queues(&self, topic: &str) -> ClientResult<Vec<MessageQueue>> {
        self.core.queues(topic).await
    }

    /// Up to `max_count` messages of `mq` from `offset` matching the tag
    /// expression, waiting up to `max_wait` for one to arrive; from the
    /// master, or a slave (see the module docs). A pull that fails because
    /// the broker cannot be reached marks it down: the next one resolves
    /// the address again (and so turns to a slave).
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
        let prefer_slave = self.slave_reads.as_ref().is_some_and(|s| s.is_on(mq));
        let target = self.core.read_target(mq, prefer_slave).await;
        let (_, body) = self
            .core
            .request(&target.addr, Command::PullMessage, Bytes::new(), req.encode(), timeout)
            .await?;
        let resp = PullResponse::decode(body)?;
        let mut result = PullResult {
            status: resp.status,
            next_offset: resp.next_offset,
            min_offset: resp.min_offset,
            max_offset: resp.max_offset,
            messages: StoredRecord::decode_all(resp.records, resp.count)?,
            broker_addr: target.addr,
        };
        hold_offset_on_slave(&mut result, offset, target.slave);
        if let Some(reads) = &self.slave_reads {
            let behind = result.max_offset.saturating_sub(result.next_offset);
            let slave_available = !target.slave && behind > reads.threshold && self.core.has_live_slave(mq).await;
            match reads.update(mq, behind, target.slave || slave_available) {
                Some(true) => tracing::info!(queue = %mq, behind, "consumer far behind; reading from a slave"),
                Some(false) => tracing::info!(queue = %mq, behind, "consumer caught up; reading from the master"),
                None => {}
            }
        }
        Ok(result)
    }

    /// Smallest and next offset of a queue (from the master, or a slave
    /// while the master is down).
    pub async fn offsets(&self, mq: &MessageQueue) -> ClientResult<QueueOffsets> {
        let header = to_json(&QueueRef {
            topic: mq.topic.clone(),
            queue: mq.queue_id,
        });
        let timeout = self.core.cfg.request_timeout;
        let (_, body) = self
            .core
            .request(
                &self.core.read_addr(mq).await,
                Command::GetOffsets,
                header,
                Bytes::new(),
                timeout,
            )
            .await?;
        Ok(from_json(&body, "offsets")?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::client::core::test_support::{broker, free_addr, namesrv, serve, start, Handler};
    use crate::wire::control::TopicRoute;
    use crate::wire::Frame;

    #[test]
    fn far_behind_goes_to_the_slave_and_back_within_half() {
        assert!(!lag_prefers_slave(false, 100, 100));
        assert!(lag_prefers_slave(false, 101, 100));
        assert!(lag_prefers_slave(true, 51, 100), "stays until within n/2");
        assert!(!lag_prefers_slave(true, 50, 100));
        let reads = SlaveReads {
            threshold: 10,
            on_slave: Mutex::default(),
        };
        let mq = MessageQueue {
            topic: "t".into(),
            broker_name: "b".into(),
            broker_addr: "m".into(),
            queue_id: 0,
        };
        assert_eq!(reads.update(&mq, 50, false), None, "no live slave: stay on the master");
        assert_eq!(reads.update(&mq, 50, true), Some(true));
        assert!(reads.is_on(&mq));
        assert_eq!(reads.update(&mq, 6, true), None);
        assert_eq!(reads.update(&mq, 5, true), Some(false));
        assert!(!reads.is_on(&mq));
    }

    #[test]
    fn a_slave_behind_does_not_move_the_consumer_back() {
        let moved = |next| PullResult {
            status: PullStatus::OffsetMoved,
            next_offset: next,
            min_offset: 0,
            max_offset: next,
            messages: Vec::new(),
            broker_addr: "s".into(),
        };
        let mut r = moved(90);
        hold_offset_on_slave(&mut r, 100, true);
        assert_eq!((r.status, r.next_offset), (PullStatus::NoNewMessage, 100));
        let mut r = moved(90);
        hold_offset_on_slave(&mut r, 100, false);
        assert_eq!(
            (r.status, r.next_offset),
            (PullStatus::OffsetMoved, 90),
            "the master's answer stands"
        );
        let mut r = moved(120);
        hold_offset_on_slave(&mut r, 100, true);
        assert_eq!(r.next_offset, 120, "moved forward (retention): followed");
    }

    /// A broker answering every pull with no message, `next` as next
    /// offset and 100 as max offset; pings with an empty success.
    fn pull_answer(next: Arc<AtomicU64>) -> Handler {
        Arc::new(move |f: &Frame| {
            let body = if f.code == Command::PullMessage.code() {
                PullResponse {
                    status: PullStatus::NoNewMessage,
                    next_offset: next.load(Ordering::SeqCst),
                    min_offset: 0,
                    max_offset: 100,
                    count: 0,
                    records: Bytes::new(),
                }
                .encode()
            } else if f.code == Command::GetOffsets.code() {
                to_json(&QueueOffsets {
                    min_offset: 0,
                    max_offset: 100,
                })
            } else {
                Bytes::new()
            };
            Frame::ok(f.correlation_id, Bytes::new(), body)
        })
    }

    #[tokio::test]
    async fn pulls_fall_back_to_the_slave_and_return_to_the_master() {
        let next = Arc::new(AtomicU64::new(5));
        let slave = start(pull_answer(next.clone())).await;
        let master = free_addr();
        let route = Arc::new(Mutex::new(TopicRoute {
            topic: "t".into(),
            brokers: vec![broker("b", 1, &[(0, &master), (1, &slave)], &[])],
        }));
        let mut cfg = ClientConfig::new([namesrv(route).await]);
        cfg.request_timeout = Duration::from_secs(1);
        let consumer = PullConsumer::new(cfg);
        let mq = consumer.queues("t").await.unwrap().remove(0);
        let wait = Duration::from_millis(10);
        // The master is dead: the first pull fails as unreachable, the next
        // one reads the slave.
        assert!(consumer.pull(&mq, 5, 1, wait, "*").await.is_err());
        let r = consumer.pull(&mq, 5, 1, wait, "*").await.unwrap();
        assert_eq!(r.broker_addr, slave);
        assert!(consumer.offsets(&mq).await.is_ok(), "offsets from the slave too");
        // The master comes back: reads return to it once the probe finds it.
        let listener = tokio::net::TcpListener::bind(&master).await.unwrap();
        tokio::spawn(serve(listener, pull_answer(next.clone())));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut served = String::new();
        while served != master && std::time::Instant::now() < deadline {
            served = consumer.pull(&mq, 5, 1, wait, "*").await.unwrap().broker_addr;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(served, master);

        // Far behind: reads go to the slave until within half the threshold.
        let lagging = consumer.clone().with_read_from_slave_when_behind(10);
        assert_eq!(lagging.pull(&mq, 5, 1, wait, "*").await.unwrap().broker_addr, master);
        assert_eq!(lagging.pull(&mq, 5, 1, wait, "*").await.unwrap().broker_addr, slave);
        next.store(94, Ordering::SeqCst); // 6 behind: still on the slave
        assert_eq!(lagging.pull(&mq, 94, 1, wait, "*").await.unwrap().broker_addr, slave);
        next.store(95, Ordering::SeqCst); // 5 behind: caught up
        assert_eq!(lagging.pull(&mq, 95, 1, wait, "*").await.unwrap().broker_addr, slave);
        assert_eq!(lagging.pull(&mq, 95, 1, wait, "*").await.unwrap().broker_addr, master);
    }
}
