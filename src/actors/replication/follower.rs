//! `ReplicaFollower`: the slave's side, one per slave broker. A thin shell
//! over [`FollowerState`]: it finds the master (`replication.master`, or
//! the name servers' broker with id 0 of this broker group), shakes hands
//! (cutting this log first when it has records the master does not), then
//! fetches the master's log chunk by chunk and hands each to the
//! `CommitLogWriter` (the only writer, which CRC-checks and stores it
//! byte for byte; the Dispatcher then builds consume queues and indexes
//! as on the master). Every few seconds it also copies the master's topic
//! table. Any failure is logged once per reason and retried with a
//! growing pause.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;

use crate::actors::commitlog_writer::{AppendReplicated, CommitLogWriter, DeleteTopicData, StartLogAt, TruncateLog};
use crate::actors::namesrv_client::{NameServerClient, RegisterNow};
use crate::client::core::ClientCore;
use crate::client::RemotingConnection;
use crate::clock::now_millis;
use crate::config::{BrokerSection, ReplicationSection};
use crate::observe::{ActorStats, Tracked};
use crate::replication::follower::FollowerState;
use crate::store::topics::TopicConfig;
use crate::store::Store;
use crate::wire::control::{from_json, to_json};
use crate::wire::replica::{
    RecordMark, ReplicaAck, ReplicaAction, ReplicaChunk, ReplicaFetch, ReplicaHello, ReplicaTopics, ReplicaWelcome,
};
use crate::wire::Command;

/// Records of this log the handshake lists, newest first.
const HANDSHAKE_RECORDS: usize = 256;
/// How often the master's topic table is copied.
const TOPIC_SYNC: Duration = Duration::from_secs(3);
/// Deadline of a handshake or topic request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The follower's state, shared with the broker core (the master named in
/// `NOT_MASTER`) and the views.
pub type FollowerStatus = Arc<Mutex<FollowerState>>;

/// Actor kind in `/actors`.
pub const KIND: &str = "replica_follower";

/// What a follower needs.
pub struct FollowerParts {
    /// The slave's store.
    pub store: Arc<Store>,
    /// Its writer (read-only for clients).
    pub writer: Tracked<CommitLogWriter>,
    /// Registration, redone when the topic table changes.
    pub registrar: Addr<NameServerClient>,
    /// Name-server lookups (to find the master).
    pub routes: Arc<ClientCore>,
    /// `[broker]`.
    pub broker: BrokerSection,
    /// `[replication]`.
    pub replication: ReplicationSection,
    /// This broker's advertised address.
    pub addr: String,
    /// Shared state.
    pub status: FollowerStatus,
}

/// The follower actor.
pub struct ReplicaFollower {
    stats: Arc<ActorStats>,
    parts: Arc<FollowerParts>,
}

impl ReplicaFollower {
    /// A follower over `parts`.
    pub fn new(parts: FollowerParts) -> ReplicaFollower {
        ReplicaFollower {
            stats: ActorStats::detached(KIND, "0"),
            parts: Arc::new(parts),
        }
    }

    /// Reports into `stats` (from the broker's actor tree).
    pub fn with_stats(mut self, stats: Arc<ActorStats>) -> Self {
        self.stats = stats;
        self
    }
}

impl Actor for ReplicaFollower {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.stats.started();
        ctx.spawn(follow_forever(self.parts.clone(), self.stats.clone()).into_actor(self));
    }
}

impl Supervised for ReplicaFollower {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.stats.restarting();
    }
}

crate::observe::failable!(ReplicaFollower);

/// Finds the master, follows it until something fails, pauses, again.
async fn follow_forever(parts: Arc<FollowerParts>, stats: Arc<ActorStats>) {
    loop {
        let outcome = match find_master(&parts).await {
            Ok(master) => {
                if let Ok(mut s) = parts.status.lock() {
                    s.master_found(&master);
                }
                follow(&parts, &master, &stats).await
            }
            Err(why) => Err(Failure::Retry(why)),
        };
        let (pause, news, why) = match outcome {
            Ok(()) => continue,
            Err(Failure::Retry(why)) => {
                let (p, n) = parts.status.lock().map_or((1_000, true), |mut s| s.failed(why.clone()));
                (p, n, why)
            }
            Err(Failure::Refused(why)) => {
                let (p, n) = parts
                    .status
                    .lock()
                    .map_or((5_000, true), |mut s| s.refused(why.clone()));
                if n {
                    tracing::error!(reason = %why, "the master refuses this slave");
                }
                (p, false, why)
            }
        };
        if news {
            stats.failed(why.clone());
            tracing::warn!(reason = %why, retry_in_ms = pause, "replication from the master interrupted");
        }
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

enum Failure {
    Retry(String),
    Refused(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Retry(e.to_string())
    }
}

/// The master's address: configured, or the name servers' broker with id 0
/// of this broker group.
async fn find_master(parts: &FollowerParts) -> Result<String, String> {
    if !parts.replication.master.is_empty() {
        return Ok(parts.replication.master.clone());
    }
    let info = parts
        .routes
        .cluster_info()
        .await
        .map_err(|e| format!("cannot ask the name servers for the master: {e}"))?;
    info.brokers
        .into_iter()
        .find(|b| b.broker_name == parts.broker.name && b.cluster == parts.broker.cluster && b.broker_id == 0)
        .map(|b| b.addr)
        .ok_or_else(|| {
            format!(
                "no master (id 0) of broker group {} is registered with the name servers",
                parts.broker.name
            )
        })
}

/// One connection's worth of following.
async fn follow(parts: &FollowerParts, master: &str, stats: &Arc<ActorStats>) -> Result<(), Failure> {
    let conn = RemotingConnection::connect_with(master, Duration::from_secs(3), None, parts.routes.security()).await?;
    handshake(parts, &conn).await?;
    if let Ok(mut s) = parts.status.lock() {
        s.following();
    }
    tracing::info!(%master, from = parts.store.log.write_pos(), "following the master");
    let mut topics_at = tokio::time::Instant::now();
    let first = parts.store.log.write_pos();
    // One fetch is always in flight: the next one leaves as soon as a chunk
    // arrives (confirming only what is stored), the chunk is stored, then a
    // `REPLICA_ACK` confirms it — so the master's next bytes travel while
    // this slave writes, and a sync send waits for one write, not for a
    // write plus a round trip.
    let mut in_flight = spawn_fetch(parts, &conn, first, first);
    loop {
        if tokio::time::Instant::now() >= topics_at {
            sync_topics(parts, &conn).await?;
            topics_at = tokio::time::Instant::now() + TOPIC_SYNC;
        }
        let (from, answer) = in_flight.await?;
        let (header, body) = answer?;
        let chunk: ReplicaChunk = from_json(&header, "replica chunk")?;
        // `next` passes the body's end when the chunk closes a segment
        // (docs/protocol.md §9.2); the store checks the rest.
        if chunk.from != from || chunk.next < from + body.len() as u64 {
            return Err(Failure::Retry(format!(
                "the master answered {}..{} with {} bytes for a fetch from {from}",
                chunk.from,
                chunk.next,
                body.len()
            )));
        }
        if body.is_empty() {
            in_flight = spawn_fetch(parts, &conn, from, from);
            if let Ok(mut s) = parts.status.lock() {
                s.progressed(from, chunk.master_max, now_millis());
            }
            continue;
        }
        in_flight = spawn_fetch(parts, &conn, chunk.next, from);
        let stored = {
            let _timer = stats.handling();
            parts.writer.send(AppendReplicated { at: from, bytes: body }).await??
        };
        if stored.end != chunk.next {
            return Err(Failure::Retry(format!(
                "stored the master's chunk {from}..{} but this log now ends at {}",
                chunk.next, stored.end
            )));
        }
        let ack = ReplicaAck {
            broker_id: parts.broker.id,
            confirmed: stored.end,
        };
        conn.oneway(Command::ReplicaAck, to_json(&ack), Bytes::new()).await?;
        if stored.new_queues {
            // Routes list this slave for a topic once it registers it.
            parts.registrar.do_send(RegisterNow);
        }
        if let Ok(mut s) = parts.status.lock() {
            s.progressed(stored.end, chunk.master_max, now_millis());
        }
    }
}

/// A fetch's answer: the offset asked from, and the header and body.
type FetchAnswer = (u64, crate::client::ClientResult<(Bytes, Bytes)>);

/// Sends a fetch from `from` (confirming `confirmed`) on its own task, so
/// it travels while the previous chunk is being stored.
fn spawn_fetch(
    parts: &FollowerParts,
    conn: &RemotingConnection,
    from: u64,
    confirmed: u64,
) -> tokio::task::JoinHandle<FetchAnswer> {
    let wait = parts.replication.fetch_wait_ms;
    let req = ReplicaFetch {
        broker_id: parts.broker.id,
        from,
        confirmed: (confirmed < from).then_some(confirmed),
        max_bytes: parts.replication.fetch_max_bytes,
        max_wait_ms: wait,
    };
    let conn = conn.clone();
    tokio::spawn(async move {
        let answer = conn
            .request(
                Command::ReplicaFetch,
                to_json(&req),
                Bytes::new(),
                Duration::from_millis(u64::from(wait)) + REQUEST_TIMEOUT,
            )
            .await;
        (from, answer)
    })
}

/// Shakes hands until the master says "follow": cuts this log where it
/// says, starts an empty log where the master's starts.
async fn handshake(parts: &FollowerParts, conn: &RemotingConnection) -> Result<(), Failure> {
    for _ in 0..1_000 {
        let store = &parts.store;
        let hello = ReplicaHello {
            broker_name: parts.broker.name.clone(),
            broker_id: parts.broker.id,
            addr: parts.addr.clone(),
            start_offset: store.log.start_offset(),
            max_offset: store.log.write_pos(),
            segment_bytes: store.log.segment_bytes(),
            last_records: store
                .last_records(HANDSHAKE_RECORDS)?
                .into_iter()
                .map(|(offset, crc)| RecordMark { offset, crc })
                .collect(),
        };
        let resp = conn
            .request_raw(
                Command::ReplicaHandshake,
                to_json(&hello),
                Bytes::new(),
                REQUEST_TIMEOUT,
            )
            .await?;
        if resp.status() != crate::wire::Status::Success {
            let why = format!("{}: {}", resp.status(), resp.error_message());
            return Err(match resp.status() {
                crate::wire::Status::InvalidArgument => Failure::Refused(why),
                _ => Failure::Retry(why),
            });
        }
        let welcome: ReplicaWelcome = from_json(&resp.header, "replica welcome")?;
        match welcome.action {
            ReplicaAction::Follow { from } => {
                let end = store.log.write_pos();
                if from == end {
                    return Ok(());
                }
                if store.last_records(1)?.is_empty() {
                    // No record here: the log restarts where the master's
                    // starts (a new slave; one left behind by retention).
                    parts.writer.send(StartLogAt(from)).await??;
                    tracing::info!(from, "this slave's log starts where its master's does");
                    return Ok(());
                }
                return Err(Failure::Refused(format!(
                    "the master says to follow from {from} but this log ends at {end}"
                )));
            }
            ReplicaAction::Truncate { to, reason } => {
                let end = store.log.write_pos();
                tracing::warn!(
                    cut_at = to,
                    log_end = end,
                    %reason,
                    "this log has records its master does not: cutting it before following"
                );
                let cut = parts.writer.send(TruncateLog { to }).await??;
                tracing::warn!(cut_at = to, what = %cut, "log cut to follow the master");
            }
        }
    }
    Err(Failure::Retry("the handshake did not settle".into()))
}

/// Copies the master's topic table: creates and resizes topics, deletes
/// those the master no longer has. Run between fetches, so every record
/// stored here is of a topic the master had when it answered.
async fn sync_topics(parts: &FollowerParts, conn: &RemotingConnection) -> Result<(), Failure> {
    let (_, body) = conn
        .request(Command::ReplicaTopics, Bytes::new(), Bytes::new(), REQUEST_TIMEOUT)
        .await?;
    let master: ReplicaTopics = from_json(&body, "replica topics")?;
    let store = &parts.store;
    let mut changed = false;
    for (name, t) in &master.topics {
        let want = TopicConfig {
            queues: t.queues,
            ttl_ms: t.ttl_ms,
        };
        if store.topics.get(name) != Some(want) {
            store.topics.upsert(name, want)?;
            changed = true;
        }
    }
    for (topic, groups) in &master.subscriptions {
        for group in groups {
            if store.topics.get(topic).is_some() {
                store.subscriptions.add(topic, group)?;
            }
        }
    }
    for (name, _) in store.topics.all() {
        if master.topics.contains_key(&name) {
            continue;
        }
        tracing::info!(topic = %name, "topic deleted on the master: deleting it here");
        store.topics.remove(&name)?;
        store.subscriptions.remove_topic(&name)?;
        parts.writer.send(DeleteTopicData(name)).await??;
        changed = true;
    }
    if changed {
        parts.registrar.do_send(RegisterNow);
    }
    Ok(())
}
