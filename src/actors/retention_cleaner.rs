//! `RetentionCleaner`: every `store.clean_interval_ms` it reads the clock,
//! the hour of day and the disk's usage (which also refreshes the disk
//! guard, so sends refused for a full disk resume by themselves), finds
//! the messages still needed ([`held_messages`]), asks
//! [`retention::decide`] what to delete, and has the store delete it
//! ([`Store::delete_segments_below`]) on a blocking thread, so neither the
//! actor's arbiter nor the append and pull paths wait on file deletion. One
//! deletion at a time; a tick during one is skipped.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::clock::{local_hour, now_millis};
use crate::config::StoreSection;
use crate::delivery::delay::{DELAY_GROUP, DELAY_QUEUES, DELAY_TOPIC};
use crate::observe::metrics::record_disk;
use crate::observe::{kind, ActorStats};
use crate::store::disk::{DiskLevel, DiskStatus};
use crate::store::offsets::OffsetKey;
use crate::store::retention::{self, Inputs, Pressure, Reason, RetentionPolicy};
use crate::store::{RetentionOutcome, Store};

/// The cleaner actor.
pub struct RetentionCleaner {
    stats: Arc<ActorStats>,
    store: Arc<Store>,
    policy: RetentionPolicy,
    interval: Duration,
    busy: bool,
}

/// A message still needed: segments holding it are kept unless the disk
/// forces them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Who needs it: the delay scheduler's group, or a group consuming
    /// with per-message acknowledgements.
    pub group: String,
    /// Its topic.
    pub topic: String,
    /// Its queue.
    pub queue: u32,
    /// The first queue offset still needed.
    pub queue_offset: u64,
    /// Where that message lies in the commitlog.
    pub phys_offset: u64,
}

/// The messages retention must keep: per queue of the delay topic, the
/// first delayed message not yet released; per queue of a topic consumed
/// with per-message acknowledgements (receive), the first message its
/// group has not acknowledged (everything after it may be in flight,
/// retried, or not yet delivered, as a RabbitMQ queue keeps it).
pub fn held_messages(store: &Store) -> Vec<Hold> {
    let mut wanted: Vec<(String, String, u32)> = (0..DELAY_QUEUES)
        .map(|q| (DELAY_GROUP.to_string(), DELAY_TOPIC.to_string(), q))
        .collect();
    for topic in store.subscriptions.topics() {
        let Some(cfg) = store.topics.get(&topic) else { continue };
        for group in store.subscriptions.groups(&topic) {
            wanted.extend((0..cfg.queues).map(|q| (group.clone(), topic.clone(), q)));
        }
    }
    let mut holds = Vec::new();
    for (group, topic, queue) in wanted {
        let Some(cq) = store.queues.get(&topic, queue) else {
            continue;
        };
        let key = OffsetKey { group, topic, queue };
        let from = store.offsets.get(&key).unwrap_or(0).max(cq.min_offset());
        if from >= cq.max_offset() {
            continue;
        }
        if let Some(e) = cq.get(from) {
            holds.push(Hold {
                group: key.group,
                topic: key.topic,
                queue,
                queue_offset: from,
                phys_offset: e.phys_offset,
            });
        }
    }
    holds
}

/// The policy's view of a disk reading: its level and, at or above the
/// force-clean watermark, the bytes to free to get back under it.
fn pressure(status: &DiskStatus) -> Pressure {
    let excess_bytes = if status.level >= DiskLevel::ForceClean {
        let allowed = (status.usage.total_bytes as f64 * status.marks.force_clean) as u64;
        status.usage.used_bytes().saturating_sub(allowed).max(1)
    } else {
        0
    };
    Pressure {
        level: status.level,
        excess_bytes,
    }
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
        let disk = match self.store.disk.refresh() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "retention: cannot read the disk usage");
                self.store.disk.status()
            }
        };
        record_disk(&disk);
        let segments = match self.store.segment_infos() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "retention: cannot list the commitlog segments");
                return;
            }
        };
        let holds = held_messages(&self.store);
        let input = Inputs {
            now_ms: now,
            hour: local_hour(now),
            segments: &segments,
            pressure: pressure(&disk),
            hold: holds.iter().map(|h| h.phys_offset).min(),
        };
        let Some(decision) = retention::decide(&self.policy, &input) else {
            return;
        };
        let count = |reason| decision.segments.iter().filter(|(_, r)| *r == reason).count();
        let reasons = [count(Reason::Expired), count(Reason::OverSize), count(Reason::Forced)];
        if reasons[2] > 0 {
            tracing::warn!(
                used_percent = format!("{:.1}", disk.usage.used_ratio() * 100.0),
                force_clean_percent = format!("{:.0}", disk.marks.force_clean * 100.0),
                segments = reasons[2],
                "retention: the disk is above the force-clean watermark: deleting the oldest segments even though they have not expired"
            );
        }
        let store = self.store.clone();
        let below = decision.below;
        self.busy = true;
        let work = actix_rt::task::spawn_blocking(move || store.delete_segments_below(below));
        ctx.spawn(work.into_actor(self).map(move |res, act, _| {
            act.busy = false;
            match res {
                Ok(Ok(out)) => {
                    report(&out, reasons);
                    count_dropped_holds(&holds, &out);
                }
                Ok(Err(e)) => tracing::error!(error = %e, below, "retention: deleting segments failed"),
                Err(e) => tracing::error!(error = %e, below, "retention: the deleting thread failed"),
            }
        }));
    }
}

/// Logs and counts the held messages that forced cleaning deleted: those
/// below their queue's new minimum.
fn count_dropped_holds(holds: &[Hold], out: &RetentionOutcome) {
    for h in holds {
        let Some((_, _, _, new_min)) = out.queues.iter().find(|(t, q, _, _)| *t == h.topic && *q == h.queue) else {
            continue;
        };
        let dropped = new_min.saturating_sub(h.queue_offset);
        if dropped == 0 {
            continue;
        }
        tracing::error!(
            group = %h.group,
            topic = %h.topic,
            queue = h.queue,
            from_queue_offset = h.queue_offset,
            dropped,
            "retention: the disk forced deleting messages still needed (delayed or unacknowledged); they are lost"
        );
        metrics::counter!(
            "ferromq_store_held_messages_dropped_total",
            "group" => h.group.clone(),
            "topic" => h.topic.clone(),
            "queue" => h.queue.to_string()
        )
        .increment(dropped);
    }
}

/// Logs and counts what a deletion reclaimed; `reasons` counts the
/// segments deleted as expired, over the size limit and forced.
fn report(out: &RetentionOutcome, reasons: [usize; 3]) {
    let [expired, over_size, forced] = reasons;
    if out.segments == 0 {
        return;
    }
    tracing::info!(
        segments = out.segments,
        bytes = out.bytes,
        expired,
        over_size,
        forced,
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
