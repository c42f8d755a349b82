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
//!
//! Only broker groups with a live master take messages (slaves are
//! read-only: they answer `NOT_MASTER`). When every attempt failed because
//! masters could not be reached, the error says so per broker group —
//! `no broker group can take the message: broker-a: master 127.0.0.1:10911
//! unreachable (connection refused), slave 127.0.0.1:10921 is read-only
//! (NOT_MASTER)`; when the route lists slaves only, one of them is asked
//! once and its `NOT_MASTER` answer (naming the master) is the error. A
//! sync-replication send answered `SLAVE_NOT_AVAILABLE` is stored on the
//! master only: it fails with that status, saying so, and is not retried
//! (a retry could store it twice).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::core::{failure_reason, ClientConfig, ClientCore, MessageQueue};
use super::error::{ClientError, ClientResult};
use crate::clock::now_millis;
use crate::message::Message;
use crate::record::MessageId;
use crate::wire::buf::{check_props, props_len};
use crate::wire::control::{validate_topic_name, TopicRoute};
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

/// Did a send fail because its broker cannot take messages (unreachable,
/// or a slave)?
fn cannot_take(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Io { .. } | ClientError::Closed(_) | ClientError::Timeout { .. }
    ) || e.status() == Some(Status::NotMaster)
}

/// Why sends to a broker failed: address → (broker group, reason).
type Failures = BTreeMap<String, (String, String)>;

/// One line per broker group of `route` that cannot take a message —
/// `broker-a: master 127.0.0.1:10911 unreachable (connection refused),
/// slave 127.0.0.1:10921 is read-only (NOT_MASTER)` — from the failures
/// this send saw and the servers the client marked down (`down_reason`).
/// Groups whose master is live and did not fail are left out; groups that
/// failed but are no longer in the route are listed from `failures`.
fn describe_unwritable(
    route: Option<&TopicRoute>,
    failures: &Failures,
    down_reason: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let reason = |a: &str| failures.get(a).map(|(_, r)| r.clone()).or_else(|| down_reason(a));
    let mut out = Vec::new();
    let mut named = std::collections::BTreeSet::new();
    for b in route.map(|r| r.brokers.as_slice()).unwrap_or_default() {
        let master = match (b.addrs.get(&0), b.down.get(&0)) {
            (Some(m), _) => match reason(m) {
                Some(r) => format!("master {m} unreachable ({r})"),
                None => continue,
            },
            (None, Some(m)) => format!(
                "master {m} unreachable ({})",
                reason(m).unwrap_or_else(|| "down: its name-server registration closed".into())
            ),
            (None, None) => "no master registered".to_string(),
        };
        let mut parts = vec![master];
        for (_, a) in b.addrs.iter().filter(|(id, _)| **id > 0) {
            parts.push(match failures.get(a) {
                Some((_, r)) if r.starts_with("NOT_MASTER") => format!("slave {a} is read-only ({r})"),
                Some((_, r)) => format!("slave {a} unreachable ({r})"),
                None => match down_reason(a) {
                    Some(r) => format!("slave {a} unreachable ({r})"),
                    None => format!("slave {a} is read-only (NOT_MASTER)"),
                },
            });
        }
        named.insert(b.broker_name.clone());
        out.push(format!("{}: {}", b.broker_name, parts.join(", ")));
    }
    let mut rest: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (addr, (name, r)) in failures {
        if !named.contains(name) {
            rest.entry(name).or_default().push(if r.starts_with("NOT_MASTER") {
                format!("slave {addr} is read-only ({r})")
            } else {
                format!("{addr} unreachable ({r})")
            });
        }
    }
    out.extend(rest.into_iter().map(|(name, v)| format!("{name}: {}", v.join(", "))));
    out
}

/// The error of a sync-replication send no slave confirmed in time.
fn slave_not_available(addr: &str, message: &str) -> ClientError {
    ClientError::Server {
        status: Status::SlaveNotAvailable,
        message: format!(
            "the message is stored on the master {addr} only: no slave confirmed it in time ({message}); \
             not retried, as a retry could store it twice"
        ),
    }
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
        let topic = msg.topic.clone();
        self.oneway_entries(&topic, vec![entry(msg)], Selector::RoundRobin)
            .await
    }

    /// Like [`Producer::send_oneway`], to the queue `sharding_key` hashes
    /// to (the queue [`Producer::send_ordered`] picks for that key).
    pub async fn send_oneway_ordered(&self, msg: Message, sharding_key: &str) -> ClientResult<()> {
        validate(&msg)?;
        let topic = msg.topic.clone();
        let sel = Selector::Key(sharding_hash(sharding_key));
        self.oneway_entries(&topic, vec![entry(msg)], sel).await
    }

    /// Sends messages of one topic as one batch to one queue without
    /// waiting for (or getting) an acknowledgement: to the queue
    /// `sharding_key` hashes to, or round-robin without one.
    pub async fn send_batch_oneway(&self, msgs: Vec<Message>, sharding_key: Option<&str>) -> ClientResult<()> {
        let topic = batch_topic(&msgs)?;
        for m in &msgs {
            validate(m)?;
        }
        let sel = sharding_key.map_or(Selector::RoundRobin, |k| Selector::Key(sharding_hash(k)));
        self.oneway_entries(&topic, msgs.into_iter().map(entry).collect(), sel)
            .await
    }

    async fn oneway_entries(&self, topic: &str, entries: Vec<SendEntry>, sel: Selector) -> ClientResult<()> {
        let queues = self.core.writable_queues(topic).await?;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let q = pick(&queues, sel, start, None, &|a| self.core.is_down(a))
            .ok_or_else(|| ClientError::NoRoute(format!("topic {topic} has no queue")))?;
        let req = SendRequest {
            topic: topic.to_string(),
            queue_id: q.queue_id,
            entries,
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
        let topic = batch_topic(&msgs)?;
        self.send_entries(&topic, msgs.into_iter().map(entry).collect(), Selector::RoundRobin)
            .await
    }

    /// Like [`Producer::send_batch`], to the queue `sharding_key` hashes to
    /// (the queue [`Producer::send_ordered`] picks for that key), so
    /// batches and single messages of one key stay in order.
    pub async fn send_batch_ordered(&self, msgs: Vec<Message>, sharding_key: &str) -> ClientResult<Vec<SendResult>> {
        let topic = batch_topic(&msgs)?;
        let sel = Selector::Key(sharding_hash(sharding_key));
        self.send_entries(&topic, msgs.into_iter().map(entry).collect(), sel)
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
        // Sends that failed because the broker could not take them.
        let mut failures = Failures::new();
        let mut other_failure = false;
        let mut asked_slave = false;
        for attempt in 0..attempts {
            let queues = match self.queues_or_any_broker(topic, attempt > 0).await {
                Ok(q) => q,
                Err(e) if retriable(&e) || matches!(e, ClientError::NoRoute(_)) => {
                    // Only slaves (or down masters) in the route: a slave's
                    // NOT_MASTER answer names the master.
                    if !asked_slave && failures.is_empty() {
                        asked_slave = true;
                        if let Some((name, slave)) = self.slave_to_ask(topic).await {
                            let body = SendRequest { ..req.clone() }.encode();
                            let timeout = self.core.cfg.request_timeout;
                            match self
                                .core
                                .request(&slave, Command::SendMessage, Bytes::new(), body, timeout)
                                .await
                            {
                                Ok((_, body)) => {
                                    let q = MessageQueue {
                                        topic: topic.to_string(),
                                        broker_name: name,
                                        broker_addr: slave,
                                        queue_id: req.queue_id,
                                    };
                                    return Ok(results(topic, &q, &SendResponse::decode(body)?));
                                }
                                Err(ClientError::Server {
                                    status: Status::NotMaster,
                                    message,
                                }) => {
                                    failures.insert(slave, (name, format!("NOT_MASTER: {message}")));
                                }
                                Err(e) if cannot_take(&e) => {
                                    failures.insert(slave, (name, failure_reason(&e)));
                                }
                                Err(_) => {}
                            }
                        }
                    }
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
                Err(ClientError::Server {
                    status: Status::SlaveNotAvailable,
                    message,
                }) => return Err(slave_not_available(&q.broker_addr, &message)),
                Err(e) if retriable(&e) => {
                    tracing::debug!(queue = %q, error = %e, attempt, "send failed; retrying");
                    self.core.invalidate(topic);
                    if e.status() != Some(Status::QueueNotExist) {
                        avoid = Some(q.broker_name.clone());
                    }
                    if cannot_take(&e) {
                        let reason = match &e {
                            ClientError::Server { status, message } => format!("{}: {message}", status.name()),
                            ClientError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotConnected => self
                                .core
                                .down_reason(&q.broker_addr)
                                .unwrap_or_else(|| failure_reason(&e)),
                            _ => failure_reason(&e),
                        };
                        failures.insert(q.broker_addr.clone(), (q.broker_name.clone(), reason));
                    } else {
                        other_failure = true;
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        let route = self.core.route(topic, false).await.ok();
        let groups = describe_unwritable(route.as_deref(), &failures, &|a| self.core.down_reason(a));
        let not_master = failures.values().find_map(|(_, r)| r.strip_prefix("NOT_MASTER: "));
        if !groups.is_empty() && !other_failure {
            let message = format!(
                "send to {topic} failed after {attempts} attempts: no broker group can take the message: {}",
                groups.join("; ")
            );
            return Err(match not_master {
                Some(_) => ClientError::Server {
                    status: Status::NotMaster,
                    message,
                },
                None => ClientError::NoRoute(message),
            });
        }
        let last = last.map_or_else(|| "no queue to send to".to_string(), |e| e.to_string());
        let groups = if groups.is_empty() {
            String::new()
        } else {
            format!("; {}", groups.join("; "))
        };
        Err(ClientError::NoRoute(format!(
            "send to {topic} failed after {attempts} attempts: {last}{groups}"
        )))
    }

    /// A live slave of `topic` to ask once when no broker group has a live
    /// master — from the topic's route, else from the cluster view (a topic
    /// no master serves yet) — as (broker name, address), unless a master
    /// is known (then the error names it without asking).
    async fn slave_to_ask(&self, topic: &str) -> Option<(String, String)> {
        if let Ok(route) = self.core.route(topic, false).await {
            if route
                .brokers
                .iter()
                .any(|b| b.addrs.contains_key(&0) || b.down.contains_key(&0))
            {
                return None;
            }
            return route.brokers.iter().find_map(|b| {
                b.addrs
                    .iter()
                    .find(|(id, a)| **id > 0 && !self.core.is_down(a))
                    .map(|(_, a)| (b.broker_name.clone(), a.clone()))
            });
        }
        let info = self.core.cluster_view().await.ok()?;
        if info.brokers.iter().any(|b| b.broker_id == 0 && !b.down) {
            return None;
        }
        info.brokers
            .iter()
            .find(|b| b.broker_id > 0 && !b.down && !self.core.is_down(&b.addr))
            .map(|b| (b.broker_name.clone(), b.addr.clone()))
    }

    /// The topic's queues; for a topic no broker serves yet, queue 0 of
    /// every master (brokers auto-create topics when configured to).
    async fn queues_or_any_broker(&self, topic: &str, refresh: bool) -> ClientResult<Vec<MessageQueue>> {
        if refresh {
            self.core.invalidate(topic);
        }
        match self.core.writable_queues(topic).await {
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

/// The one topic of a non-empty batch.
fn batch_topic(msgs: &[Message]) -> ClientResult<String> {
    let Some(topic) = msgs.first().map(|m| m.topic.clone()) else {
        return Err(ClientError::Invalid("a batch needs at least one message".into()));
    };
    if msgs.iter().any(|m| m.topic != topic) {
        return Err(ClientError::Invalid(
            "every message of a batch must have the same topic".into(),
        ));
    }
    Ok(topic)
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

    use crate::client::core::test_support::{broker, free_addr, namesrv, start};
    use crate::wire::control::TopicRoute;
    use crate::wire::Frame;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// A slave answering sends with NOT_MASTER naming `master`.
    async fn slave(master: &str) -> String {
        let message = format!("broker b/1 is a read-only slave; writes go to its master {master}");
        start(Arc::new(move |f: &Frame| {
            if f.code == Command::SendMessage.code() {
                Frame::error(f.correlation_id, Status::NotMaster, message.clone())
            } else {
                Frame::ok(f.correlation_id, Bytes::new(), Bytes::new())
            }
        }))
        .await
    }

    async fn producer(route: TopicRoute) -> Producer {
        let mut cfg = ClientConfig::new([namesrv(Arc::new(Mutex::new(route))).await]);
        cfg.request_timeout = std::time::Duration::from_secs(1);
        Producer::new(cfg)
    }

    fn msg() -> Message {
        Message::new("t", Bytes::from_static(b"x"))
    }

    #[test]
    fn unwritable_groups_name_the_master_and_the_read_only_slaves() {
        let route = TopicRoute {
            topic: "t".into(),
            brokers: vec![
                broker("a", 1, &[(0, "ma"), (1, "sa")], &[]),
                broker("b", 1, &[(1, "sb")], &[(0, "mb")]),
                broker("c", 1, &[(2, "sc")], &[]),
                broker("d", 1, &[(0, "md")], &[]),
            ],
        };
        let failures: Failures = [
            ("ma".to_string(), ("a".to_string(), "connection refused".to_string())),
            ("gone".to_string(), ("e".to_string(), "connection closed".to_string())),
        ]
        .into_iter()
        .collect();
        let down = |a: &str| (a == "mb").then(|| "connection reset".to_string());
        assert_eq!(
            describe_unwritable(Some(&route), &failures, &down),
            [
                "a: master ma unreachable (connection refused), slave sa is read-only (NOT_MASTER)",
                "b: master mb unreachable (connection reset), slave sb is read-only (NOT_MASTER)",
                "c: no master registered, slave sc is read-only (NOT_MASTER)",
                "e: gone unreachable (connection closed)",
            ]
        );
    }

    #[tokio::test]
    async fn a_send_to_a_group_whose_master_is_unreachable_names_master_and_slave() {
        let master = free_addr();
        let slave = slave(&master).await;
        let p = producer(TopicRoute {
            topic: "t".into(),
            brokers: vec![broker("b", 2, &[(0, &master), (1, &slave)], &[])],
        })
        .await;
        let err = p.send(msg()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no route: send to t failed after 3 attempts: no broker group can take the message: b: master {master} unreachable (connection refused), slave {slave} is read-only (NOT_MASTER)"
            )
        );
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn a_route_with_a_down_master_fails_without_sending() {
        let master = free_addr();
        let slave = slave(&master).await;
        let p = producer(TopicRoute {
            topic: "t".into(),
            brokers: vec![broker("b", 2, &[(1, &slave)], &[(0, &master)])],
        })
        .await;
        let err = p.send(msg()).await.unwrap_err().to_string();
        assert!(
            err.ends_with(&format!(
                "b: master {master} unreachable (down: its name-server registration closed), slave {slave} is read-only (NOT_MASTER)"
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_route_of_slaves_only_fails_with_the_slaves_not_master_answer() {
        let slave = slave("127.0.0.1:10911").await;
        let p = producer(TopicRoute {
            topic: "t".into(),
            brokers: vec![broker("b", 2, &[(1, &slave)], &[])],
        })
        .await;
        let err = p.send(msg()).await.unwrap_err();
        assert_eq!(err.status(), Some(Status::NotMaster));
        assert_eq!(
            err.to_string(),
            format!(
                "server error NOT_MASTER (23): send to t failed after 3 attempts: no broker group can take the message: \
                 b: no master registered, \
                 slave {slave} is read-only (NOT_MASTER: broker b/1 is a read-only slave; writes go to its master 127.0.0.1:10911)"
            )
        );
    }

    #[tokio::test]
    async fn slave_not_available_is_its_own_error_and_not_retried() {
        let sends = Arc::new(AtomicUsize::new(0));
        let counted = sends.clone();
        let master = start(Arc::new(move |f: &Frame| {
            counted.fetch_add(1, Ordering::SeqCst);
            Frame::error(
                f.correlation_id,
                Status::SlaveNotAvailable,
                "no slave confirmed within 3000 ms",
            )
        }))
        .await;
        let p = producer(TopicRoute {
            topic: "t".into(),
            brokers: vec![broker("b", 2, &[(0, &master)], &[])],
        })
        .await;
        let err = p.send(msg()).await.unwrap_err();
        assert_eq!(err.status(), Some(Status::SlaveNotAvailable));
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(
            text.contains(&format!("the message is stored on the master {master} only"))
                && text.contains("no slave confirmed within 3000 ms")
                && text.contains("not retried"),
            "{text}"
        );
        assert_eq!(sends.load(Ordering::SeqCst), 1);
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
