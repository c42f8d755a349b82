//! `RetentionCleaner`: every `store.clean_interval_ms` it reads the clock
//! and the hour of day, asks the store for its segments and
//! [`retention::decide`] what to delete, and has the store delete it
//! ([`Store::delete_segments_below`]) on a blocking thread, so neither the
//! actor's arbiter nor the append and pull paths wait on file deletion. One
//! deletion at a time; a tick during one is skipped.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::clock::{local_hour, now_millis};
use crate::config::StoreSection;
use crate::observe::{kind, ActorStats};
use crate::store::retention::{self, Reason, RetentionPolicy};
use crate::store::{RetentionOutcome, Store};

/// The cleaner actor.
pub struct RetentionCleaner {
    stats: Arc<ActorStats>,
    store: Arc<Store>,
    policy: RetentionPolicy,
    interval: Duration,
    busy: bool,
}

impl RetentionCleaner {
    /// A cleaner for `store` with the retention settings of `cfg` (already
    /// validated: an invalid `delete_when` is ignored here).
    pub fn new(store: Arc<Store>, cfg: &StoreSection) -> RetentionCleaner {
        RetentionCleaner {
            stats: ActorStats::detached(kind::RETENTION_CLEANER, "0"),
            store,
            policy: RetentionPolicy {
                retention_ms: cfg.retention_ms,
                retention_bytes: cfg.retention_bytes,
                delete_hour: cfg.delete_hour().ok().flatten(),
            },
            interval: Duration::from_millis(cfg.clean_interval_ms.max(1)),
            busy: false,
        }
    }

    /// Reports into `stats` (from the broker's actor tree).
    pub fn with_stats(mut self, stats: Arc<ActorStats>) -> Self {
        self.stats = stats;
        self
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        let _timer = self.stats.handling();
        let now = now_millis();
        let segments = match self.store.segment_infos() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "retention: cannot list the commitlog segments");
                return;
            }
        };
        let Some(decision) = retention::decide(&self.policy, now, local_hour(now), &segments) else {
            return;
        };
        let expired = decision.segments.iter().filter(|(_, r)| *r == Reason::Expired).count();
        let over_size = decision.segments.len() - expired;
        let store = self.store.clone();
        let below = decision.below;
        self.busy = true;
        let work = actix_rt::task::spawn_blocking(move || store.delete_segments_below(below));
        ctx.spawn(work.into_actor(self).map(move |res, act, _| {
            act.busy = false;
            match res {
                Ok(Ok(out)) => report(&out, expired, over_size),
                Ok(Err(e)) => tracing::error!(error = %e, below, "retention: deleting segments failed"),
                Err(e) => tracing::error!(error = %e, below, "retention: the deleting thread failed"),
            }
        }));
    }
}

/// Logs and counts what a deletion reclaimed.
fn report(out: &RetentionOutcome, expired: usize, over_size: usize) {
    if out.segments == 0 {
        return;
    }
    tracing::info!(
        segments = out.segments,
        bytes = out.bytes,
        expired,
        over_size,
        consume_queue_files = out.consume_queue_files,
        index_files = out.index_files,
        commitlog_start = out.new_start,
        "retention: deleted commitlog segments"
    );
    for (topic, queue, old, new) in &out.queues {
        tracing::info!(%topic, queue, from = old, to = new, "retention: queue min offset advanced");
    }
    for (group, topic, queue, skipped) in &out.skipped {
        tracing::warn!(
            %group,
            %topic,
            queue,
            skipped,
            "retention deleted messages the group had not consumed; it continues from the queue's new minimum"
        );
        metrics::counter!(
            "ferromq_group_messages_skipped_total",
            "group" => group.clone(),
            "topic" => topic.clone(),
            "queue" => queue.to_string()
        )
        .increment(*skipped);
    }
    metrics::counter!("ferromq_store_segments_deleted_total").increment(out.segments);
    metrics::counter!("ferromq_store_bytes_reclaimed_total").increment(out.bytes);
}

impl Actor for RetentionCleaner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.stats.started();
        // No runtime while a failing start-up drops the actor (see
        // HeartbeatScanner): no timer then.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        ctx.run_interval(self.interval, |act, ctx| act.tick(ctx));
    }
}

impl Supervised for RetentionCleaner {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.stats.restarting();
        self.busy = false;
    }
}

crate::observe::failable!(RetentionCleaner);
