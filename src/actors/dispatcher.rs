//! `Dispatcher`: turns appended records into consume-queue and index entries
//! and tells queue actors what is new. Runs on its own arbiter (creating a
//! consume-queue file must not stall appends), fed by the CommitLogWriter
//! one batch per message.
//!
//! A batch whose entries cannot be written (a disk error) is kept and
//! tried again, with a growing pause, before any later batch: the queues
//! never get a gap, the store's dispatched offset (and so the checkpoint)
//! never passes an undispatched record, and nothing already acknowledged
//! becomes unreadable. Entries are idempotent, so a retried batch may
//! rewrite those that did go in.
//!
//! It knows its listeners only as [`QueueListener`] trait objects (the queue
//! registry is one), so this module imports neither the registry nor the
//! queue actor: the writer → dispatcher → listeners edge is no import loop.

use crate::observe::{kind, ActorStats};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::store::{DispatchEntry, Store};

/// Told what the Dispatcher indexed: the queue registry, which wakes the
/// queue actors. Called on the dispatch arbiter, so it must not block.
pub trait QueueListener: Send + Sync {
    /// (topic, queue) now ends at `max_offset`; `expiring` lists the
    /// (queue offset, expire-at ms) of the new records that have a TTL.
    fn queue_grew(&self, topic: &Arc<str>, queue_id: u32, max_offset: u64, expiring: Vec<(u64, u64)>);

    /// A deleted topic's queues are gone.
    fn topic_deleted(&self, topic: &str);
}

/// Adds a listener. The queue registry is built after the writer (it hands
/// out services that hold the writer, which holds this dispatcher), so it
/// subscribes once built: before anything can append, as nothing appends
/// until the broker's listeners and actors start after it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Arc<dyn QueueListener>);

/// Records just appended, in commitlog order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch {
    /// One entry per record.
    pub entries: Vec<DispatchEntry>,
    /// Commitlog write position after the batch.
    pub end: u64,
}

/// Answered once every batch sent before it is dispatched (mailbox order;
/// a batch still being retried holds it back).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Barrier;

/// Deletes a deleted topic's consume queues, after every dispatch queued
/// before it (mailbox order).
#[derive(Message)]
#[rtype(result = "std::io::Result<()>")]
pub struct ForgetTopic(pub String);

/// First pause before a failed batch is tried again; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest pause between tries of a failed batch.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The dispatcher actor.
pub struct Dispatcher {
    stats: Arc<ActorStats>,
    store: Arc<Store>,
    listeners: Vec<Arc<dyn QueueListener>>,
    /// Batches not dispatched yet, oldest first: non-empty only while the
    /// oldest keeps failing.
    pending: VecDeque<Dispatch>,
    /// The pause before the next try, while one is scheduled.
    retry_in: Option<Duration>,
}

impl Dispatcher {
    /// Reports into `stats` (from the broker's actor tree).
    pub fn with_stats(mut self, stats: Arc<ActorStats>) -> Self {
        self.stats = stats;
        self
    }

    /// A dispatcher writing into `store`, with no listener yet
    /// ([`Subscribe`] adds them).
    pub fn new(store: Arc<Store>) -> Dispatcher {
        Dispatcher {
            stats: ActorStats::detached(kind::DISPATCHER, "0"),
            store,
            listeners: Vec::new(),
            pending: VecDeque::new(),
            retry_in: None,
        }
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.stats.started();
    }
}

impl Supervised for Dispatcher {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.stats.restarting();
    }
}

impl Dispatcher {
    /// Dispatches pending batches in order until one fails; then schedules
    /// the next try (the failed batch stays first).
    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(batch) = self.pending.front() {
            let failed = batch
                .entries
                .iter()
                .find_map(|e| self.store.dispatch(e).err().map(|err| (e, err)));
            if let Some((e, err)) = failed {
                let pause = self.retry_in.map_or(RETRY_FIRST, |p| (p * 2).min(RETRY_MAX));
                // The commitlog holds the record and nothing later is
                // dispatched before it: it is retried until it goes in.
                tracing::error!(
                    topic = %e.topic,
                    queue = e.queue_id,
                    offset = e.queue_offset,
                    error = %err,
                    retry_in_ms = pause.as_millis() as u64,
                    "dispatch failed; retrying"
                );
                metrics::counter!("ferromq_store_dispatch_retries_total").increment(1);
                self.retry_in = Some(pause);
                ctx.run_later(pause, |act, ctx| act.drain(ctx));
                return;
            }
            self.retry_in = None;
            if let Some(batch) = self.pending.pop_front() {
                self.store.mark_dispatched(batch.end);
                self.notify(&batch);
            }
        }
    }

    /// Tells the listeners which queues grew.
    fn notify(&self, msg: &Dispatch) {
        let Some((last_listener, others)) = self.listeners.split_last() else {
            return;
        };
        // A batch usually targets one queue: notify once per queue run,
        // with the TTL deadlines of that run.
        let mut i = 0;
        while i < msg.entries.len() {
            let first = &msg.entries[i];
            let mut j = i;
            let mut expiring = Vec::new();
            while j < msg.entries.len()
                && msg.entries[j].topic == first.topic
                && msg.entries[j].queue_id == first.queue_id
            {
                if let Some(at) = msg.entries[j].expire_at {
                    expiring.push((msg.entries[j].queue_offset, at));
                }
                j += 1;
            }
            let last = &msg.entries[j - 1];
            for l in others {
                l.queue_grew(&last.topic, last.queue_id, last.queue_offset + 1, expiring.clone());
            }
            last_listener.queue_grew(&last.topic, last.queue_id, last.queue_offset + 1, expiring);
            i = j;
        }
    }
}

impl Handler<Dispatch> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: Dispatch, ctx: &mut Context<Self>) {
        let _timer = self.stats.handling();
        self.pending.push_back(msg);
        // While a failed batch waits for its retry, later ones queue behind.
        if self.retry_in.is_none() {
            self.drain(ctx);
        }
    }
}

impl Handler<Barrier> for Dispatcher {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Barrier, _: &mut Context<Self>) -> Self::Result {
        // Poll until the pending (failed, being retried) batches are in.
        Box::pin(actix::fut::wrap_future::<_, Self>(async {}).then(|(), act, _| wait_drained(act)))
    }
}

/// Resolves once `act` has no pending batch.
fn wait_drained(act: &mut Dispatcher) -> std::pin::Pin<Box<dyn ActorFuture<Dispatcher, Output = ()>>> {
    if act.pending.is_empty() {
        return Box::pin(actix::fut::ready(()));
    }
    Box::pin(
        actix::fut::wrap_future::<_, Dispatcher>(tokio::time::sleep(Duration::from_millis(20)))
            .then(|(), act, _| wait_drained(act)),
    )
}

impl Handler<Subscribe> for Dispatcher {
    type Result = ();

    fn handle(&mut self, Subscribe(listener): Subscribe, _: &mut Context<Self>) {
        self.listeners.push(listener);
    }
}

impl Handler<ForgetTopic> for Dispatcher {
    type Result = std::io::Result<()>;

    fn handle(&mut self, ForgetTopic(topic): ForgetTopic, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        // Entries of the deleted topic waiting for a retry are moot.
        for batch in &mut self.pending {
            batch.entries.retain(|e| *e.topic != *topic);
        }
        for l in &self.listeners {
            l.topic_deleted(&topic);
        }
        Ok(self.store.queues.remove_topic(&topic)?)
    }
}

crate::observe::failable!(Dispatcher);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::small_config;
    use crate::store::topics::TopicConfig;

    fn entry(queue_offset: u64) -> DispatchEntry {
        DispatchEntry {
            topic: Arc::from("t"),
            queue_id: 0,
            queue_offset,
            phys_offset: queue_offset * 100,
            size: 100,
            tag_hash: 0,
            keys: None,
            store_timestamp: 1,
            expire_at: None,
        }
    }

    #[actix_rt::test]
    async fn a_failed_batch_is_retried_before_later_ones_and_holds_the_dispatched_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&small_config(dir.path())).unwrap();
        let store = Arc::new(store);
        store.topics.get_or_create("t", TopicConfig::with_queues(1)).unwrap();
        let start = store.dispatched_offset();
        // The queue's directory cannot be created: a file is in the way.
        let blocker = dir.path().join("consumequeue").join("t");
        std::fs::write(&blocker, b"in the way").unwrap();
        let dispatcher = Dispatcher::new(store.clone()).start();
        dispatcher.do_send(Dispatch {
            entries: vec![entry(0)],
            end: start + 100,
        });
        dispatcher.do_send(Dispatch {
            entries: vec![entry(1)],
            end: start + 200,
        });
        actix_rt::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(store.dispatched_offset(), start, "nothing passes the failed batch");
        assert!(store.queues.get("t", 0).is_none());
        // The disk recovers: both go in, in order.
        std::fs::remove_file(&blocker).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.dispatched_offset() < start + 200 && std::time::Instant::now() < deadline {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(store.dispatched_offset(), start + 200);
        let cq = store.queues.get("t", 0).unwrap();
        assert_eq!(cq.max_offset(), 2);
        assert_eq!(cq.get(1).map(|e| e.phys_offset), Some(100));
    }
}
