//! The producer: sync, async, oneway and batch sends, round-robin or by
//! sharding key, retrying on another queue/broker.
//!
//! Round-robin starts at a random queue per producer (so many short-lived
//! producers spread their first messages), prefers queues on brokers the
//! client has not marked down (see [`ClientCore::mark_down`]), and after a
//! failure retries on another broker. Only transient failures are retried
//! ([`ClientError::is_transient`]); a request that cannot succeed — larger
//! than the frame limit, a bad topic name, a permanent server status — fails
//! at once with its cause.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::core::{ClientConfig, ClientCore, MessageQueue};
use super::error::{ClientError, ClientResult};
use crate::clock::now_millis;
use crate::message::Message;
use crate::record::MessageId;
use crate::wire::buf::{check_props, props_len};
use crate::wire::control::validate_topic_name;
use crate::wire::send::{SendEntry, SendRequest, SendResponse};
use crate::wire::{Command, Status};

/// Where a sent message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// Message id (locates the record; see `ferromq message get`).
    pub msg_id: String,
    /// Topic.
    pub topic: String,
    /// Broker group that stored it.
    pub broker_name: String,
    /// Queue id.
    pub queue_id: u32,
    /// Offset within the queue.
    pub queue_offset: u64,
}

/// How a send picks its queue.
#[derive(Debug, Clone, Copy)]
enum Selector {
    /// Next queue in turn; retries avoid the broker that failed.
    RoundRobin,
    /// Always the queue the key hashes to (ordering); retries stay there.
    Key(u64),
}

/// Sends messages. Cheap to clone; clones share connections and routes.
#[derive(Debug, Clone)]
pub struct Producer {
    core: Arc<ClientCore>,
    next: Arc<AtomicUsize>,
}

/// Stable 64-bit FNV-1a of a sharding key (the same key always picks the
/// same queue while the queue count stays the same).
pub fn sharding_hash(key: &str) -> u64 {
    crate::message::tag_hash(key)
}

fn retriable(e: &ClientError) -> bool {
    e.is_transient()
}

/// A random round-robin start (time, pid and the std's random hash keys;
/// no extra dependency), below 2^32 so additions never overflow.
fn random_start() -> usize {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    (h.finish() & u64::from(u32::MAX)) as usize
}

/// Bytes of the `SEND_MESSAGE` frame carrying `req` (without encoding it).
fn send_frame_len(req: &SendRequest) -> usize {
    crate::wire::frame::FRAME_PREFIX_LEN
        + 2
        + req.topic.len()
        + 8
        + req
            .entries
            .iter()
            .map(|e| 4 + 8 + props_len(&e.properties) + 4 + e.body.len())
            .sum::<usize>()
}

/// Refuses a request whose frame would exceed `max` bytes, naming the size.
fn check_frame_size(req: &SendRequest, max: usize) -> ClientResult<()> {
    let frame = send_frame_len(req);
    if frame <= max {
        return Ok(());
    }
    let limit = if max % (1 << 20) == 0 {
        format!("{} MiB", max >> 20)
    } else {
        format!("{max}-byte")
    };
    let body: usize = req.entries.iter().map(|e| e.body.len()).sum();
    Err(ClientError::Invalid(match req.entries.len() {
        1 => format!("message of {body} bytes exceeds the {limit} frame limit ({frame} bytes encoded)"),
        n => {
            format!("batch of {n} messages ({body} body bytes) exceeds the {limit} frame limit ({frame} bytes encoded)")
        }
    }))
}

/// Picks the queue for attempt `attempt`: round-robin from `start`,
/// preferring queues neither on `avoid` (the broker that just failed) nor
/// on a broker `is_down` says is marked down, then queues not on `avoid`;
/// a sharding key always gets its own queue.
fn pick(
    queues: &[MessageQueue],
    selector: Selector,
    start: usize,
    avoid: Option<&str>,
    is_down: &dyn Fn(&str) -> bool,
) -> Option<MessageQueue> {
    if queues.is_empty() {
        return None;
    }
    match selector {
        Selector::Key(h) => Some(queues[(h % queues.len() as u64) as usize].clone()),
        Selector::RoundRobin => {
            let n = queues.len();
            let in_turn = || (0..n).map(|i| &queues[start.wrapping_add(i) % n]);
            let not_avoided = |q: &&MessageQueue| Some(q.broker_name.as_str()) != avoid;
            let preferred = in_turn()
                .find(|q| not_avoided(q) && !is_down(&q.broker_addr))
                .or_else(|| in_turn().find(|q| !is_down(&q.broker_addr)))
                .or_else(|| in_turn().find(not_avoided));
            Some(preferred.unwrap_or(&queues[start % n]).clone())
        }
    }
}

impl Producer {
    /// A producer using `cfg`'s name servers; connects lazily.
    pub fn new(cfg: ClientConfig) -> Producer {
        Producer::from_core(ClientCore::new(cfg))
    }

    /// A producer sharing `core`'s connections and routes.
    pub fn from_core(core: Arc<ClientCore>) -> Producer {
        Producer {
            core,
            next: Arc::new(AtomicUsize::new(random_start())),
        }
    }

    /// Sends one message; round-robin over the topic's queues.
    pub async fn send(&self, msg: Message) -> ClientResult<SendResult> {
        let topic = msg.topic.clone();
        one(self
            .send_entries(&topic, vec![entry(msg)], Selector::RoundRobin)
            .await?)
    }

    /// Sends one message to the queue `sharding_key` hashes to, so messages
    /// with the same key stay in order.
    pub async fn send_ordered(&self, msg: Message, sharding_key: &str) -> ClientResult<SendResult> {
        let topic = msg.topic.clone();
        let sel = Selector::Key(sharding_hash(sharding_key));
        one(self.send_entries(&topic, vec![entry(msg)], sel).await?)
    }

    /// Sends in the background; await the handle for the result.
    pub fn send_async(&self, msg: Message) -> tokio::task::JoinHandle<ClientResult<SendResult>> {
        let p = self.clone();
        tokio::spawn(async move { p.send(msg).await })
    }

    /// Sends without waiting for (or getting) an acknowledgement.
    pub async fn send_oneway(&self, msg: Message) -> ClientResult<()> {
        validate(&msg)?;
        let queues = self.core.queues(&msg.topic).await?;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let q = pick(&queues, Selector::RoundRobin, start, None, &|a| self.core.is_down(a))
            .ok_or_else(|| ClientError::NoRoute(format!("topic {} has no queue", msg.topic)))?;
        let req = SendRequest {
            topic: msg.topic.clone(),
            queue_id: q.queue_id,
            entries: vec![entry(msg)],
        };
        check_frame_size(&req, self.core.cfg.max_frame_bytes)?;
        self.core
            .connection(&q.broker_addr)
            .await?
            .oneway(Command::SendMessage, Bytes::new(), req.encode())
            .await
    }

    /// Sends messages of one topic as one batch to one queue; they are
    /// stored contiguously in order.
    pub async fn send_batch(&self, msgs: Vec<Message>) -> ClientResult<Vec<SendResult>> {
        let Some(topic) = msgs.first().map(|m| m.topic.clone()) else {
            return Err(ClientError::Invalid("a batch needs at least one message".into()));
        };
        if msgs.iter().any(|m| m.topic != topic) {
            return Err(ClientError::Invalid(
                "every message of a batch must have the same topic".into(),
            ));
        }
        self.send_entries(&topic, msgs.into_iter().map(entry).collect(), Selector::RoundRobin)
            .await
    }

    async fn send_entries(&self, topic: &str, entries: Vec<SendEntry>, sel: Selector) -> ClientResult<Vec<SendResult>> {
        let req = SendRequest {
            topic: topic.to_string(),
            queue_id: 0,
            entries,
        };
        req.validate().map_err(|e| ClientError::Invalid(e.to_string()))?;
        check_frame_size(&req, self.core.cfg.max_frame_bytes)?;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let attempts = self.core.cfg.retries + 1;
        let mut avoid: Option<String> = None;
        let mut last = None;
        for attempt in 0..attempts {
            let queues = match self.queues_or_any_broker(topic, attempt > 0).await {
                Ok(q) => q,
                Err(e) if retriable(&e) || matches!(e, ClientError::NoRoute(_)) => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let is_down = |a: &str| self.core.is_down(a);
            let Some(q) = pick(
                &queues,
                sel,
                start.wrapping_add(attempt as usize),
                avoid.as_deref(),
                &is_down,
            ) else {
                continue;
            };
            let body = SendRequest {
                queue_id: q.queue_id,
                ..req.clone()
            }
            .encode();
            let timeout = self.core.cfg.request_timeout;
            // `pick` prefers brokers not marked down: a down one here means
            // every candidate is, so try it for real (it may be back before
            // the background probe noticed).
            let send = if self.core.is_down(&q.broker_addr) {
                self.core
                    .request_even_if_down(&q.broker_addr, Command::SendMessage, Bytes::new(), body, timeout)
                    .await
            } else {
                self.core
                    .request(&q.broker_addr, Command::SendMessage, Bytes::new(), body, timeout)
                    .await
            };
            match send {
                Ok((_, body)) => {
                    let resp = SendResponse::decode(body)?;
                    if resp.stored.len() != req.entries.len() {
                        return Err(ClientError::Invalid(
                            "broker acknowledged a different number of messages".into(),
                        ));
                    }
                    return Ok(results(topic, &q, &resp));
                }
                Err(e) if retriable(&e) => {
                    tracing::debug!(queue = %q, error = %e, attempt, "send failed; retrying");
                    self.core.invalidate(topic);
                    if e.status() != Some(Status::QueueNotExist) {
                        avoid = Some(q.broker_name.clone());
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        let last = last.map_or_else(|| "no queue to send to".to_string(), |e| e.to_string());
        Err(ClientError::NoRoute(format!(
            "send to {topic} failed after {attempts} attempts: {last}"
        )))
    }

    /// The topic's queues; for a topic no broker serves yet, queue 0 of
    /// every master (brokers auto-create topics when configured to).
    async fn queues_or_any_broker(&self, topic: &str, refresh: bool) -> ClientResult<Vec<MessageQueue>> {
        if refresh {
            self.core.invalidate(topic);
        }
        match self.core.queues(topic).await {
            Err(ClientError::NoRoute(_)) => {}
            other => return other,
        }
        let info = self.core.cluster_info().await?;
        let queues: Vec<MessageQueue> = info
            .brokers
            .iter()
            .filter(|b| b.broker_id == 0)
            .map(|b| MessageQueue {
                topic: topic.to_string(),
                broker_name: b.broker_name.clone(),
                broker_addr: b.addr.clone(),
                queue_id: 0,
            })
            .collect();
        if queues.is_empty() {
            return Err(ClientError::NoRoute("no live master broker".into()));
        }
        // The broker creates it (or refuses with TOPIC_NOT_EXIST); look the
        // route up afresh next time.
        self.core.invalidate(topic);
        Ok(queues)
    }
}

fn one(mut v: Vec<SendResult>) -> ClientResult<SendResult> {
    v.pop()
        .ok_or_else(|| ClientError::Invalid("empty acknowledgement".into()))
}

fn validate(msg: &Message) -> ClientResult<()> {
    validate_topic_name(&msg.topic).map_err(|e| ClientError::Invalid(e.to_string()))?;
    check_props(&msg.properties).map_err(|e| ClientError::Invalid(e.to_string()))
}

fn entry(msg: Message) -> SendEntry {
    SendEntry {
        flags: msg.flags,
        born_timestamp: now_millis(),
        properties: msg.properties,
        body: msg.body,
    }
}

fn results(topic: &str, q: &MessageQueue, resp: &SendResponse) -> Vec<SendResult> {
    resp.stored
        .iter()
        .map(|s| SendResult {
            msg_id: MessageId {
                store_host: resp.store_host,
                phys_offset: s.phys_offset,
            }
            .to_string(),
            topic: topic.to_string(),
            broker_name: q.broker_name.clone(),
            queue_id: resp.queue_id,
            queue_offset: s.queue_offset,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::core::DEFAULT_MAX_FRAME_BYTES;

    fn up(_: &str) -> bool {
        false
    }

    fn queues() -> Vec<MessageQueue> {
        let mut v = Vec::new();
        for b in ["a", "b"] {
            for q in 0..3 {
                v.push(MessageQueue {
                    topic: "t".into(),
                    broker_name: b.into(),
                    broker_addr: b.into(),
                    queue_id: q,
                });
            }
        }
        v
    }

    #[test]
    fn round_robin_cycles_through_every_queue() {
        let qs = queues();
        let picked: Vec<_> = (0..6)
            .map(|i| pick(&qs, Selector::RoundRobin, i, None, &up).unwrap())
            .collect();
        assert_eq!(picked, qs);
    }

    #[test]
    fn retries_avoid_the_failed_broker() {
        let qs = queues();
        for start in 0..6 {
            let q = pick(&qs, Selector::RoundRobin, start, Some("a"), &up).unwrap();
            assert_eq!(q.broker_name, "b");
        }
        // With only the failed broker left, it is used anyway.
        let only_a = &qs[..3];
        assert_eq!(
            pick(only_a, Selector::RoundRobin, 1, Some("a"), &up).unwrap().queue_id,
            1
        );
    }

    #[test]
    fn sharding_keys_are_stable() {
        let qs = queues();
        let h = sharding_hash("order-42");
        let a = pick(&qs, Selector::Key(h), 0, None, &up).unwrap();
        let b = pick(&qs, Selector::Key(h), 5, Some(&a.broker_name), &|_| true).unwrap();
        assert_eq!(a, b);
        assert_eq!(sharding_hash("x"), sharding_hash("x"));
    }

    #[test]
    fn brokers_marked_down_are_skipped_while_another_is_up() {
        let qs = queues();
        let b_down = |a: &str| a == "b";
        for start in 0..6 {
            assert_eq!(
                pick(&qs, Selector::RoundRobin, start, None, &b_down)
                    .unwrap()
                    .broker_name,
                "a"
            );
            // A retry avoiding a prefers b only if b is not down: a again.
            assert_eq!(
                pick(&qs, Selector::RoundRobin, start, Some("a"), &b_down)
                    .unwrap()
                    .broker_name,
                "a"
            );
        }
        // Everything down: round-robin as usual, avoiding the failed one.
        let all_down = |_: &str| true;
        assert_eq!(
            pick(&qs, Selector::RoundRobin, 0, Some("a"), &all_down)
                .unwrap()
                .broker_name,
            "b"
        );
        // Huge starts wrap instead of overflowing.
        assert!(pick(&qs, Selector::RoundRobin, usize::MAX, None, &up).is_some());
    }

    #[test]
    fn round_robin_starts_at_random() {
        let starts: std::collections::HashSet<usize> = (0..16).map(|_| random_start()).collect();
        assert!(starts.len() > 1, "{starts:?}");
        assert!(starts.iter().all(|s| *s <= u32::MAX as usize));
    }

    #[test]
    fn oversized_requests_are_refused_before_sending() {
        let req = |sizes: &[usize]| SendRequest {
            topic: "t".into(),
            queue_id: 0,
            entries: sizes
                .iter()
                .map(|n| entry(Message::new("t", Bytes::from(vec![0u8; *n]))))
                .collect(),
        };
        let small = req(&[100]);
        assert_eq!(
            send_frame_len(&small),
            crate::wire::frame::FRAME_PREFIX_LEN + small.encode().len()
        );
        check_frame_size(&small, DEFAULT_MAX_FRAME_BYTES).unwrap();
        let err = check_frame_size(&req(&[20 << 20]), DEFAULT_MAX_FRAME_BYTES).unwrap_err();
        assert!(!retriable(&err));
        assert!(
            err.to_string()
                .contains("message of 20971520 bytes exceeds the 16 MiB frame limit"),
            "{err}"
        );
        let err = check_frame_size(&req(&[10 << 20, 10 << 20]), DEFAULT_MAX_FRAME_BYTES).unwrap_err();
        assert!(err.to_string().contains("batch of 2 messages"), "{err}");
    }

    #[test]
    fn only_transient_errors_are_retried() {
        assert!(retriable(&ClientError::Closed("x".into())));
        let server = |status| ClientError::Server {
            status,
            message: String::new(),
        };
        assert!(retriable(&server(Status::SystemBusy)));
        assert!(!retriable(&server(Status::TopicNotExist)));
        assert!(!retriable(&server(Status::InvalidArgument)));
        assert!(!retriable(&server(Status::FrameTooLarge)));
        assert!(
            retriable(&server(Status::QueueNotExist)),
            "stale route: retried after a lookup"
        );
    }
}
