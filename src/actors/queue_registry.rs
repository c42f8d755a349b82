//! Finds (or starts) the `QueueActor` of a topic-queue. Queue actors are
//! spread round-robin over the network arbiters so pulls use every core.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use actix::prelude::*;

use super::queue_actor::{NewMessages, QueueActor, Retire};
use super::services::BrokerServices;
use crate::observe::{kind, Tracked};

/// A topic-queue: (topic, queue id).
type QueueKey = (Arc<str>, u32);

/// The live queue actors, by (topic, queue id).
pub struct QueueRegistry {
    services: Arc<BrokerServices>,
    arbiters: Vec<ArbiterHandle>,
    next: AtomicUsize,
    actors: RwLock<HashMap<QueueKey, Tracked<QueueActor>>>,
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
        let found = self.actors.read().ok()?.get(&(Arc::from(topic), queue_id)).cloned()?;
        if found.addr().connected() {
            return Some(found);
        }
        self.get_or_start(topic, queue_id)
    }

    /// The actor of (topic, queue), started (supervised) when missing.
    pub fn get_or_start(&self, topic: &str, queue_id: u32) -> Option<Tracked<QueueActor>> {
        let key: (Arc<str>, u32) = (Arc::from(topic), queue_id);
        if let Some(a) = self.actors.read().ok()?.get(&key) {
            if a.addr().connected() {
                return Some(a.clone());
            }
        }
        let mut actors = self.actors.write().ok()?;
        if let Some(a) = actors.get(&key) {
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
        let make = move |_: &mut Context<QueueActor>| {
            QueueActor::new(services.clone(), t.clone(), queue_id).with_stats(s.clone())
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
        actors.insert(key, addr.clone());
        Some(addr)
    }

    /// Tells the queue's actor (if any) that the queue grew. Messages with
    /// a TTL start the actor, whose timer expires them with no consumer.
    pub fn notify(&self, topic: &Arc<str>, queue_id: u32, max_offset: u64, expiring: Vec<(u64, u64)>) {
        if !expiring.is_empty() {
            if let Some(addr) = self.get_or_start(topic, queue_id) {
                // Expiry notices must not be dropped; one per batch.
                addr.do_send(NewMessages { max_offset, expiring });
            }
            return;
        }
        let addr = self
            .actors
            .read()
            .ok()
            .and_then(|a| a.get(&(topic.clone(), queue_id)).cloned());
        if let Some(addr) = addr {
            // Cannot block the dispatcher; a full mailbox means pulls are
            // already queued and will see the data anyway.
            let _ = addr.try_send(NewMessages { max_offset, expiring });
        }
    }

    /// Stops and forgets every actor of a deleted topic.
    pub fn retire_topic(&self, topic: &str) {
        let Ok(mut actors) = self.actors.write() else { return };
        actors.retain(|(t, _), addr| {
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
