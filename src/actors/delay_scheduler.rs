//! `DelayScheduler`: holds delayed messages until they are due, then writes
//! them to their real topic. A thin shell over
//! [`crate::delivery::delay::DelayTable`].
//!
//! Delayed messages sit in the internal topic `__delay` (queue = delay
//! level, 0 for deliver-at times). Per queue the scheduler commits the
//! offset below which everything is released, under the offsets group
//! `__delay_scheduler`; at start it rereads each queue from there, so
//! pending delays survive a restart or `kill -9`. One timer is armed for the
//! earliest due time.

use crate::observe::{kind, ActorStats};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::BytesMut;

use super::commitlog_writer::AppendGroup;
pub use super::delayed_send::Scheduled;
use super::services::BrokerServices;
use crate::clock::now_millis;
use crate::delivery::delay::{DelayTable, DELAY_GROUP, DELAY_QUEUES, DELAY_TOPIC};
use crate::message::props;
use crate::store::append::AppendEntry;
use crate::store::offsets::OffsetKey;
use crate::store::record::StoredRecord;

/// Where a delayed message is held: (delay queue, offset).
type HeldAt = (u32, u64);

/// Wait before trying a failed release again.
const RELEASE_RETRY_MS: u64 = 1_000;

/// The delay scheduler actor.
pub struct DelayScheduler {
    stats: Arc<ActorStats>,
    services: Arc<BrokerServices>,
    table: DelayTable,
    timer: Option<SpawnHandle>,
    /// On a slave: holds nothing and releases nothing (its master does;
    /// the delay topic and the release progress arrive by replication).
    standby: bool,
}

impl DelayScheduler {
    /// Reports into `stats` (from the broker's actor tree).
    pub fn with_stats(mut self, stats: Arc<ActorStats>) -> Self {
        self.stats = stats;
        self
    }

    /// A scheduler writing through `services`.
    pub fn new(services: Arc<BrokerServices>) -> DelayScheduler {
        DelayScheduler {
            stats: ActorStats::detached(kind::DELAY_SCHEDULER, "0"),
            services,
            table: DelayTable::default(),
            timer: None,
            standby: false,
        }
    }

    /// A scheduler that releases nothing (a slave's: writes are its
    /// master's).
    pub fn standby(mut self, standby: bool) -> Self {
        self.standby = standby;
        self
    }

    fn key(queue: u32) -> OffsetKey {
        OffsetKey {
            group: DELAY_GROUP.to_string(),
            topic: DELAY_TOPIC.to_string(),
            queue,
        }
    }

    /// Reloads every unreleased message of the delay topic.
    fn reload(&mut self) {
        let store = self.services.store.clone();
        let mut buf = BytesMut::new();
        for queue in 0..DELAY_QUEUES {
            let from = store.offsets.get(&Self::key(queue)).unwrap_or(0);
            self.table.resume(queue, from);
            let Some(cq) = store.queues.get(DELAY_TOPIC, queue) else {
                continue;
            };
            for offset in from.max(cq.min_offset())..cq.max_offset() {
                let Some(e) = cq.get(offset) else { continue };
                buf.clear();
                if store.log.read_into(e.phys_offset, e.size as usize, &mut buf).is_err() {
                    continue;
                }
                let view = crate::store::record::RecordView(&buf);
                let due = view
                    .property(props::DUE_AT)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                self.table.add(queue, offset, due);
            }
        }
        if self.table.pending() > 0 {
            tracing::info!(pending = self.table.pending(), "delayed messages reloaded");
        }
    }

    fn arm(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        if let Some(due) = self.table.next_due() {
            let wait = Duration::from_millis(due.saturating_sub(now_millis()));
            self.timer = Some(ctx.run_later(wait, |act, ctx| {
                act.timer = None;
                act.release_due(ctx);
            }));
        }
    }

    /// Reads one held message and turns it back into its real send, from
    /// its producer's address (the held record keeps it).
    fn held(&self, queue: u32, offset: u64) -> Option<(String, u32, SocketAddr, AppendEntry)> {
        let store = &self.services.store;
        let e = store.queues.get(DELAY_TOPIC, queue)?.get(offset)?;
        let mut buf = BytesMut::with_capacity(e.size as usize);
        store.log.read_into(e.phys_offset, e.size as usize, &mut buf).ok()?;
        let rec = StoredRecord::decode(buf.freeze()).ok()?;
        let mut properties = rec.properties;
        let topic = properties.remove(props::REAL_TOPIC)?;
        let real_queue = properties.remove(props::REAL_QUEUE)?.parse().ok()?;
        Some((
            topic,
            real_queue,
            rec.born_host,
            AppendEntry {
                flags: rec.flags,
                born_timestamp: rec.born_timestamp,
                properties,
                body: rec.body,
            },
        ))
    }

    fn release_due(&mut self, ctx: &mut Context<Self>) {
        let now = now_millis();
        let due = self.table.take_due(now);
        // One atomic append of everything due: a group per real queue and
        // producer, in delay-queue order within each.
        let mut batches: BTreeMap<(String, u32, SocketAddr), Vec<(HeldAt, AppendEntry)>> = BTreeMap::new();
        for (queue, offset) in due {
            match self.held(queue, offset) {
                Some((topic, real_queue, born_host, entry)) => {
                    let exists = self
                        .services
                        .store
                        .topics
                        .get(&topic)
                        .is_some_and(|t| real_queue < t.queues);
                    if exists {
                        batches
                            .entry((topic, real_queue, born_host))
                            .or_default()
                            .push(((queue, offset), entry));
                    } else {
                        tracing::warn!(%topic, real_queue, "a delayed message's topic or queue no longer exists; dropping it");
                        self.released(queue, offset, ctx);
                    }
                }
                None => {
                    tracing::error!(queue, offset, "cannot read a delayed message; dropping it");
                    self.released(queue, offset, ctx);
                }
            }
        }
        if !batches.is_empty() {
            let mut ids: Vec<HeldAt> = Vec::new();
            let groups: Vec<AppendGroup> = batches
                .into_iter()
                .map(|((topic, queue_id, born_host), items)| {
                    let entries = items
                        .into_iter()
                        .map(|(id, entry)| {
                            ids.push(id);
                            entry
                        })
                        .collect();
                    AppendGroup {
                        topic: Arc::from(topic),
                        queue_id,
                        born_host,
                        entries,
                    }
                })
                .collect();
            let services = self.services.clone();
            let fut = async move { services.append_groups(groups).await };
            ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                match res {
                    Ok(_) => {
                        for (queue, offset) in ids {
                            act.released(queue, offset, ctx);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(kind = ?e.kind(), error = %e, "releasing delayed messages failed; retrying");
                        for (queue, offset) in ids {
                            act.table.retry(queue, offset, now_millis() + RELEASE_RETRY_MS);
                        }
                    }
                }
                act.arm(ctx);
            }));
        }
        self.arm(ctx);
    }

    fn released(&mut self, queue: u32, offset: u64, ctx: &mut Context<Self>) {
        if let Some(below) = self.table.released(queue, offset) {
            let services = self.services.clone();
            let commit = vec![(Self::key(queue), below)];
            ctx.spawn(
                async move {
                    if let Err(e) = services.commit_offsets(commit).await {
                        // The next release commits a later offset; until
                        // then a restart may release a message twice.
                        tracing::warn!(kind = ?e.kind(), error = %e, "committing delay progress failed");
                    }
                }
                .into_actor(self),
            );
        }
    }
}

impl Actor for DelayScheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.stats.started();
        if self.standby {
            return;
        }
        self.reload();
        self.arm(ctx);
    }
}

impl Supervised for DelayScheduler {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.stats.restarting();
        // Rebuilt from the delay topic in `started`.
        self.table = DelayTable::default();
        self.timer = None;
    }
}

impl Handler<Scheduled> for DelayScheduler {
    type Result = ();

    fn handle(&mut self, Scheduled(items): Scheduled, ctx: &mut Context<Self>) {
        let _timer = self.stats.handling();
        if self.standby {
            return;
        }
        for (queue, offset, due) in items {
            self.table.add(queue, offset, due);
        }
        self.arm(ctx);
    }
}

crate::observe::failable!(DelayScheduler);
