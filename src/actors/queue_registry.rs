//! Finds (or starts) the `QueueActor` of a topic-queue. Queue actors are
//! spread round-robin over the network arbiters so pulls use every core.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use actix::prelude::*;

use super::queue_actor::{NewMessages, QueueActor, Retire};
use super::services::BrokerServices;
use crate::observe::{kind, Tracked};

/// A topic-queue: (topic, queue id).
type QueueKey = (Arc<str>, u32);

/// A live queue actor and its notice flag.
struct Entry {
    addr: Tracked<QueueActor>,
    /// Set while a `NewMessages` without expiries is on its way; the actor
    /// clears it before reading the queue's end, so one notice stands for
    /// any number of batches and none is lost (see [`QueueRegistry::notify`]).
    notice_pending: Arc<AtomicBool>,
}

/// The live queue actors, by (topic, queue id).
pub struct QueueRegistry {
    services: Arc<BrokerServices>,
    arbiters: Vec<ArbiterHandle>,
    next: AtomicUsize,
    actors: RwLock<HashMap<QueueKey, Entry>>,
}

impl QueueRegistry {
    /// A registry starting actors on `arbiters` (the current one if empty).
    pub fn new(services: Arc<BrokerServices>, arbiters: Vec<ArbiterHandle>) -> QueueRegistry {
        QueueRegistry {
            services,
            arbiters,
            next: AtomicUsize::new(0),
            actors: RwLock::new(HashMap::new()),
        }
    }

    /// The actor of (topic, queue), if started.
    /// An actor whose task died (a panic in a handler) is re-created.
    pub fn get(&self, topic: &str, queue_id: u32) -> Option<Tracked<QueueActor>> {
        let found = self
            .actors
            .read()
            .ok()?
            .get(&(Arc::from(topic), queue_id))
            .map(|e| e.addr.clone())?;
        if found.addr().connected() {
            return Some(found);
        }
        self.get_or_start(topic, queue_id)
    }

    /// The actor of (topic, queue), started (supervised) when missing.
    pub fn get_or_start(&self, topic: &str, queue_id: u32) -> Option<Tracked<QueueActor>> {
        let key: (Arc<str>, u32) = (Arc::from(topic), queue_id);
        if let Some(e) = self.actors.read().ok()?.get(&key) {
            if e.addr.addr().connected() {
                return Some(e.addr.clone());
            }
        }
        let mut actors = self.actors.write().ok()?;
        if let Some(Entry { addr: a, .. }) = actors.get(&key) {
            if a.addr().connected() {
                return Some(a.clone());
            }
            // Its task died with a panic: the parent re-creates it, and the
            // new actor rebuilds its state from the store.
            tracing::warn!(topic, queue_id, "queue actor died; re-creating it");
            a.stats().restarting();
        }
        let services = self.services.clone();
        let t = key.0.clone();
        let id = format!("{topic}/{queue_id}");
        let stats = self.services.tree.register(kind::QUEUE, id.clone(), kind::BROKER);
        let s = stats.clone();
        let notice_pending = Arc::new(AtomicBool::new(false));
        let flag = notice_pending.clone();
        let make = move |_: &mut Context<QueueActor>| {
            QueueActor::new(services.clone(), t.clone(), queue_id)
                .with_stats(s.clone())
                .with_notice_flag(flag.clone())
        };
        let addr = if self.arbiters.is_empty() {
            Supervisor::start(make)
        } else {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
            Supervisor::start_in_arbiter(&self.arbiters[i], make)
        };
        self.services
            .tree
            .set_failable(kind::QUEUE, &id, addr.clone().recipient());
        let addr = Tracked::new(addr, stats);
        actors.insert(
            key,
            Entry {
                addr: addr.clone(),
                notice_pending,
            },
        );
        Some(addr)
    }

    /// Tells the queue's actor (if any) that the queue grew. Messages with
    /// a TTL start the actor, whose timer expires them with no consumer.
    ///
    /// Plain notices are coalesced: while one is pending no other is sent,
    /// and the actor serves up to the queue's end as it is when the notice
    /// is handled. The mailbox thus holds at most one per queue however fast
    /// batches arrive, and, unlike dropping notices at a full mailbox, no
    /// parked pull can miss the last batch.
    pub fn notify(&self, topic: &Arc<str>, queue_id: u32, max_offset: u64, expiring: Vec<(u64, u64)>) {
        if !expiring.is_empty() {
            if let Some(addr) = self.get_or_start(topic, queue_id) {
                // Expiry notices carry data and must not be dropped.
                addr.do_send(NewMessages { max_offset, expiring });
            }
            return;
        }
        let Ok(actors) = self.actors.read() else { return };
        if let Some(entry) = actors.get(&(topic.clone(), queue_id)) {
            if !entry.notice_pending.swap(true, Ordering::AcqRel) {
                entry.addr.do_send(NewMessages { max_offset, expiring });
            }
        }
    }

    /// Stops and forgets every actor of a deleted topic.
    pub fn retire_topic(&self, topic: &str) {
        let Ok(mut actors) = self.actors.write() else { return };
        actors.retain(|(t, _), Entry { addr, .. }| {
            if &**t == topic {
                addr.do_send(Retire);
                addr.stats().stopped();
                self.services.tree.remove(kind::QUEUE, &addr.stats().id);
                false
            } else {
                true
            }
        });
    }

    /// Number of live queue actors.
    pub fn len(&self) -> usize {
        self.actors.read().map(|a| a.len()).unwrap_or(0)
    }

    /// True when no queue actor runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The Dispatcher's notices reach queue actors through the registry (the
/// dispatcher knows only the trait, so it imports nothing from here).
impl super::dispatcher::QueueListener for QueueRegistry {
    fn queue_grew(&self, topic: &Arc<str>, queue_id: u32, max_offset: u64, expiring: Vec<(u64, u64)>) {
        self.notify(topic, queue_id, max_offset, expiring);
    }

    fn topic_deleted(&self, topic: &str) {
        self.retire_topic(topic);
    }
}
