//! `Dispatcher`: turns appended records into consume-queue and index entries
//! and tells queue actors what is new. Runs on its own arbiter (creating a
//! consume-queue file must not stall appends), fed by the CommitLogWriter
//! one batch per message.

use crate::observe::{kind, ActorStats};
use std::sync::Arc;

use actix::prelude::*;

use super::queue_registry::QueueRegistry;
use crate::store::{DispatchEntry, Store};

/// Records just appended, in commitlog order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch {
    /// One entry per record.
    pub entries: Vec<DispatchEntry>,
    /// Commitlog write position after the batch.
    pub end: u64,
}

/// Deletes a deleted topic's consume queues, after every dispatch queued
/// before it (mailbox order).
#[derive(Message)]
#[rtype(result = "std::io::Result<()>")]
pub struct ForgetTopic(pub String);

/// The dispatcher actor.
pub struct Dispatcher {
    stats: Arc<ActorStats>,
    store: Arc<Store>,
    queues: Arc<QueueRegistry>,
}

impl Dispatcher {
    /// Reports into `stats` (from the broker's actor tree).
    pub fn with_stats(mut self, stats: Arc<ActorStats>) -> Self {
        self.stats = stats;
        self
    }

    /// A dispatcher writing into `store` and notifying `queues`.
    pub fn new(store: Arc<Store>, queues: Arc<QueueRegistry>) -> Dispatcher {
        Dispatcher {
            stats: ActorStats::detached(kind::DISPATCHER, "0"),
            store,
            queues,
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

impl Handler<Dispatch> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: Dispatch, ctx: &mut Context<Self>) {
        let _timer = self.stats.handling();
        let mut failed = false;
        for e in &msg.entries {
            if let Err(err) = self.store.dispatch(e) {
                // The commitlog holds the record; the next start-up replays
                // it from the checkpoint, which this failure holds back.
                tracing::error!(topic = %e.topic, queue = e.queue_id, offset = e.queue_offset, error = %err, "dispatch failed");
                failed = true;
            }
        }
        if failed {
            ctx.stop();
            return;
        }
        self.store.mark_dispatched(msg.end);
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
            self.queues
                .notify(&last.topic, last.queue_id, last.queue_offset + 1, expiring);
            i = j;
        }
    }
}

impl Handler<ForgetTopic> for Dispatcher {
    type Result = std::io::Result<()>;

    fn handle(&mut self, ForgetTopic(topic): ForgetTopic, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        self.queues.retire_topic(&topic);
        Ok(self.store.queues.remove_topic(&topic)?)
    }
}

crate::observe::failable!(Dispatcher);
