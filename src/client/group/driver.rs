//! The membership loop: join the coordinator, start a feeder per assigned
//! queue, heartbeat and commit, until a rebalance, a failure or a stop ends
//! the generation; then revoke, commit and rejoin.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::client::core::{ClientCore, MessageQueue};
use crate::client::error::{ClientError, ClientResult};
use crate::client::remoting::RemotingConnection;
use crate::wire::control::{from_json, to_json};
use crate::wire::group::{
    CommitOffsets, GroupAssignment, HeartbeatReply, JoinGroup, LeaveGroup, MemberRef, QueueOffset,
};
use crate::wire::{Command, Status};

use super::feed::Feed;
use super::kept::KeptCommits;
use super::progress::Shared;
use super::{Delivery, GroupConsumerConfig};

/// How often a member whose coordinator is gone checks whether one can
/// coordinate the group again.
const ORPHAN_CHECK: Duration = Duration::from_millis(500);

/// Why a generation ended.
enum End {
    Rebalance,
    Rejoin,
    Stop,
}

/// Runs a member's generations one after another.
pub(super) struct Driver {
    pub(super) core: Arc<ClientCore>,
    pub(super) cfg: GroupConsumerConfig,
    pub(super) shared: Arc<Mutex<Shared>>,
    pub(super) out: mpsc::Sender<Delivery>,
    /// Commits their masters could not take yet (see [`super::kept`]).
    pub(super) kept: Arc<Mutex<KeptCommits>>,
}

impl Driver {
    /// Joins, consumes and rejoins until `stop` fires.
    pub(super) async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut member_id: Option<String> = None;
        // The last failure logged at warn: the same one again (no master to
        // coordinate the group, for as long as that lasts) is logged at debug.
        let mut last_failure: Option<String> = None;
        loop {
            let session = self.session(&mut member_id, &mut stop).await;
            if session.is_ok() {
                last_failure = None;
            }
            match session {
                Ok(End::Stop) => return,
                Ok(End::Rebalance) => {}
                Ok(End::Rejoin) => member_id = None,
                Err(e) => {
                    let text = e.to_string();
                    if last_failure.as_deref() == Some(text.as_str()) {
                        tracing::debug!(group = %self.cfg.group, error = %e, "group session failed again; rejoining");
                    } else {
                        tracing::warn!(group = %self.cfg.group, error = %e, "group session failed; rejoining");
                    }
                    last_failure = Some(text);
                    // A member id is only known to the coordinator that gave
                    // it; after a failure the next one may be another broker.
                    member_id = None;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = &mut stop => return,
                    }
                }
            }
        }
    }

    async fn coordinator(
        &self,
    ) -> ClientResult<(String, RemotingConnection, mpsc::UnboundedReceiver<crate::wire::Frame>)> {
        let addr = self.core.group_coordinator(&self.cfg.group).await?;
        tracing::debug!(group = %self.cfg.group, coordinator = %addr, "joining");
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let conn = RemotingConnection::connect_with(
            &addr,
            self.core.cfg.request_timeout,
            Some(push_tx),
            self.core.security(),
        )
        .await?;
        Ok((addr, conn, push_rx))
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        conn: &RemotingConnection,
        cmd: Command,
        header: Bytes,
        timeout: Duration,
    ) -> ClientResult<T> {
        let (_, body) = conn.request(cmd, header, Bytes::new(), timeout).await?;
        Ok(from_json(&body, "group response")?)
    }

    /// One generation: join, consume, heartbeat, until something ends it.
    async fn session(&self, member_id: &mut Option<String>, stop: &mut oneshot::Receiver<()>) -> ClientResult<End> {
        let (coordinator, conn, mut pushes) = self.coordinator().await?;
        let join = JoinGroup {
            group: self.cfg.group.clone(),
            member_id: member_id.clone(),
            client_id: self.cfg.client_id.clone(),
            topics: self.cfg.topics.clone(),
            session_timeout_ms: self.cfg.session_timeout.as_millis() as u64,
            strategy: Some(self.cfg.strategy.clone()),
            mode: Some(self.cfg.mode.clone()),
        };
        // A join waits for the whole rebalance.
        let join_timeout = self.cfg.session_timeout + Duration::from_secs(10);
        let join_call = self.call::<GroupAssignment>(&conn, Command::JoinGroup, to_json(&join), join_timeout);
        tokio::pin!(join_call);
        let assigned: GroupAssignment = tokio::select! {
            r = &mut join_call => r?,
            _ = &mut *stop => {
                // Finish the join briefly so the member can leave at once
                // instead of lingering until its session expires.
                if let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(3), join_call).await {
                    let leave = LeaveGroup { group: self.cfg.group.clone(), member_id: a.member_id };
                    let _ = conn.request(Command::LeaveGroup, to_json(&leave), Bytes::new(), self.core.cfg.request_timeout).await;
                }
                return Ok(End::Stop);
            }
        };
        *member_id = Some(assigned.member_id.clone());
        let generation = assigned.generation;
        tracing::info!(group = %self.cfg.group, member = %assigned.member_id, generation, queues = assigned.assignment.len(), "joined");

        let queues = self.resolve(&assigned).await?;
        let dropped = self
            .kept
            .lock()
            .map(|mut k| k.retain_assigned(&self.cfg.offsets_group(), &queues))
            .unwrap_or_default();
        for o in dropped {
            tracing::info!(group = %self.cfg.group, topic = %o.topic, broker = %o.broker_name, queue = o.queue, offset = o.offset,
                "queue now owned by another member: dropping the commit kept for it while its master was unreachable");
        }
        if let Ok(mut s) = self.shared.lock() {
            s.reset(generation);
            s.assignment = queues.clone();
        }
        let me = MemberRef {
            group: self.cfg.group.clone(),
            member_id: assigned.member_id.clone(),
            generation,
        };
        // Each queue finds its own start (its broker may be down: the
        // others must not wait for it).
        let pullers: Vec<JoinHandle<()>> = queues
            .iter()
            .map(|mq| {
                let feed = Feed {
                    core: self.core.clone(),
                    mq: mq.clone(),
                    start: self.cfg.start,
                    offsets_group: self.cfg.offsets_group(),
                    member: me.clone(),
                    tags: self.cfg.tag_expression.clone(),
                    generation,
                    out: self.out.clone(),
                    kept: self.kept.clone(),
                    read_from_slave_when_behind: self.cfg.read_from_slave_when_behind,
                };
                match self.cfg.effective_ack_timeout() {
                    Some(ack_timeout) => tokio::spawn(feed.receive_loop(ack_timeout, self.cfg.orderly)),
                    None => tokio::spawn(feed.pull_loop()),
                }
            })
            .collect();

        // At least three heartbeats per session, whatever was configured.
        let period = self
            .cfg
            .heartbeat_interval
            .min(self.cfg.session_timeout / 3)
            .max(Duration::from_millis(10));
        let mut heartbeat = tokio::time::interval(period);
        heartbeat.tick().await;
        let mut commit = tokio::time::interval(self.cfg.commit_interval);
        commit.tick().await;
        let timeout = self.core.cfg.request_timeout;
        // The coordinator is gone and no other master can coordinate the
        // group: the current assignment is consumed until one can.
        let mut orphaned = false;
        let mut orphan_check = tokio::time::interval(ORPHAN_CHECK);
        let end = loop {
            tokio::select! {
                _ = &mut *stop => break Ok(End::Stop),
                push = pushes.recv(), if !orphaned => match push {
                    Some(f) if f.code == Command::NotifyRebalance.code() => break Ok(End::Rebalance),
                    Some(_) => {}
                    None => {
                        let e = ClientError::Closed("group coordinator".into());
                        if self.orphan(&coordinator, &e).await {
                            orphaned = true;
                        } else {
                            break Err(e);
                        }
                    }
                },
                _ = orphan_check.tick(), if orphaned => {
                    if self.coordinator_available().await {
                        tracing::info!(group = %self.cfg.group, "a group coordinator is reachable again; rejoining");
                        break Ok(End::Rebalance);
                    }
                }
                _ = heartbeat.tick(), if !orphaned => {
                    match self.call::<HeartbeatReply>(&conn, Command::Heartbeat, to_json(&me), timeout).await {
                        Ok(r) if r.rebalance => break Ok(End::Rebalance),
                        Ok(_) => {}
                        Err(e) if matches!(e.status(), Some(Status::UnknownMember) | Some(Status::NotCoordinator)) => break Ok(End::Rejoin),
                        Err(e) if matches!(e.status(), Some(Status::IllegalGeneration) | Some(Status::RebalanceInProgress)) => break Ok(End::Rebalance),
                        Err(e) if matches!(e, ClientError::Io { .. } | ClientError::Closed(_)) && self.orphan(&coordinator, &e).await => orphaned = true,
                        Err(e) => break Err(e),
                    }
                }
                _ = commit.tick() => {
                    if let Err(e) = self.commit(&me).await {
                        tracing::warn!(error = %e, "offset commit failed");
                    }
                }
            }
        };
        // Revoke first: nothing of this generation is handed out any more.
        for p in &pullers {
            p.abort();
        }
        if let Ok(mut s) = self.shared.lock() {
            s.generation = 0;
        }
        let committed = self.commit(&me).await;
        if let Ok(mut s) = self.shared.lock() {
            s.reset(0);
            s.assignment.clear();
        }
        match end {
            Ok(End::Stop) => {
                if let Err(e) = committed {
                    tracing::warn!(error = %e, "final offset commit failed");
                }
                let leave = LeaveGroup {
                    group: self.cfg.group.clone(),
                    member_id: assigned.member_id,
                };
                let _ = conn
                    .request(Command::LeaveGroup, to_json(&leave), Bytes::new(), timeout)
                    .await;
                Ok(End::Stop)
            }
            other => other,
        }
    }

    /// The coordinator at `addr` failed with `e` (it cannot be reached): is
    /// there no other coordinator to rejoin? Then the member keeps
    /// consuming its current assignment — reading from slaves the queues
    /// of groups whose master is down, keeping commits the masters cannot
    /// take — rather than stopping, and rejoins as soon as a coordinator
    /// is reachable again ([`Driver::coordinator_available`]). Nobody else
    /// can be handed its queues meanwhile, as no coordinator runs; when one
    /// is back, members rejoin within [`ORPHAN_CHECK`] of each other.
    async fn orphan(&self, addr: &str, e: &ClientError) -> bool {
        // The coordinator's connection is not pooled: mark its broker down
        // here, so the probe says when it is back.
        self.core.mark_down(addr);
        if self.coordinator_available().await {
            return false;
        }
        tracing::warn!(group = %self.cfg.group, coordinator = %addr, error = %e,
            "group coordinator unreachable and no other master can coordinate the group: consuming the current assignment until one can");
        true
    }

    /// Is a master that can coordinate the group up (listed live and not
    /// marked down by this client)?
    async fn coordinator_available(&self) -> bool {
        matches!(self.core.group_coordinator(&self.cfg.group).await, Ok(a) if !self.core.is_down(&a))
    }

    /// Broker addresses of the assigned queues.
    async fn resolve(&self, a: &GroupAssignment) -> ClientResult<Vec<MessageQueue>> {
        let mut by_topic: BTreeMap<String, Vec<MessageQueue>> = BTreeMap::new();
        let mut out = Vec::new();
        for q in &a.assignment {
            if !by_topic.contains_key(&q.topic) {
                self.core.invalidate(&q.topic);
                by_topic.insert(q.topic.clone(), self.core.queues(&q.topic).await?);
            }
            let found = by_topic[&q.topic]
                .iter()
                .find(|m| m.broker_name == q.broker_name && m.queue_id == q.queue)
                .cloned();
            match found {
                Some(mq) => out.push(mq),
                None => {
                    tracing::warn!(topic = %q.topic, broker = %q.broker_name, queue = q.queue, "assigned queue has no live broker")
                }
            }
        }
        Ok(out)
    }

    /// Commits what was processed, to the master of the broker group owning
    /// each queue, as member `me`, together with the commits kept while a
    /// master was unreachable (see [`super::kept`]): those a master cannot
    /// take now are kept again. Every broker group is tried; the first
    /// other failure is returned.
    async fn commit(&self, me: &MemberRef) -> ClientResult<()> {
        if self.cfg.effective_ack_timeout().is_some() {
            return Ok(()); // the broker commits what was acknowledged
        }
        let group = self.cfg.offsets_group();
        // Broker name → (topic, queue) → offset: this generation's progress,
        // and kept commits it does not supersede.
        let mut by_broker: BTreeMap<String, BTreeMap<(String, u32), u64>> = BTreeMap::new();
        match self.shared.lock() {
            Ok(s) => {
                for ((topic, broker_name, queue), o) in &s.processed {
                    by_broker
                        .entry(broker_name.clone())
                        .or_default()
                        .insert((topic.clone(), *queue), *o);
                }
            }
            Err(_) => return Ok(()),
        }
        let kept = self.kept.lock().map(|k| k.of_group(&group)).unwrap_or_default();
        for o in kept {
            by_broker
                .entry(o.broker_name)
                .or_default()
                .entry((o.topic, o.queue))
                .or_insert(o.offset);
        }
        let mut first_error = None;
        for (broker_name, queues) in by_broker {
            let offsets: Vec<QueueOffset> = queues
                .into_iter()
                .map(|((topic, queue), offset)| QueueOffset {
                    topic,
                    broker_name: broker_name.clone(),
                    queue,
                    offset,
                })
                .collect();
            if let Err(e) = commit_or_keep(&self.core, &self.kept, &group, me, offsets).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Did a commit fail because the group's master cannot take it now
/// (unreachable, not answering, not in the route, or the address turned
/// out to be a slave)? Such commits are kept, not lost.
pub(super) fn master_unavailable(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Io { .. } | ClientError::Closed(_) | ClientError::Timeout { .. } | ClientError::NoRoute(_)
    ) || e.status() == Some(Status::NotMaster)
}

/// Commits `offsets` (all of one broker group) to that group's master as
/// member `me`; when the master cannot take them now
/// ([`master_unavailable`]) they are kept in `kept` (logged at info) and
/// this is a success; when it takes them, the kept values they cover are
/// forgotten (logged at info).
pub(super) async fn commit_or_keep(
    core: &ClientCore,
    kept: &Mutex<KeptCommits>,
    offsets_group: &str,
    me: &MemberRef,
    offsets: Vec<QueueOffset>,
) -> ClientResult<()> {
    let Some(first) = offsets.first() else { return Ok(()) };
    let broker_name = first.broker_name.clone();
    let result = match core.master_addr(&first.topic, &broker_name).await {
        Some(addr) => commit_offsets(core, &addr, offsets_group, me, offsets.clone()).await,
        None => Err(ClientError::NoRoute(format!(
            "broker group {broker_name} has no live master"
        ))),
    };
    match result {
        Ok(()) => {
            let flushed = kept.lock().map_or(0, |mut k| k.flushed(offsets_group, &offsets));
            if flushed > 0 {
                tracing::info!(group = %offsets_group, broker = %broker_name, queues = flushed, "master reachable again: kept commits flushed");
            }
            Ok(())
        }
        Err(e) if master_unavailable(&e) => {
            let newly = kept.lock().map_or(0, |mut k| k.keep(offsets_group, &offsets));
            if newly > 0 {
                tracing::info!(group = %offsets_group, broker = %broker_name, queues = newly, error = %e,
                    "master cannot take commits: kept by the client and retried until it can");
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Sends one `COMMIT_OFFSETS` to the broker at `addr` as member `me`.
pub(super) async fn commit_offsets(
    core: &ClientCore,
    addr: &str,
    offsets_group: &str,
    me: &MemberRef,
    offsets: Vec<QueueOffset>,
) -> ClientResult<()> {
    let c = CommitOffsets {
        group: offsets_group.to_string(),
        member_id: Some(me.member_id.clone()),
        generation: Some(me.generation),
        offsets,
    };
    core.request(
        addr,
        Command::CommitOffsets,
        to_json(&c),
        Bytes::new(),
        core.cfg.request_timeout,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::client::core::test_support::{broker, free_addr, namesrv, serve, start};
    use crate::client::core::ClientConfig;
    use crate::wire::control::{from_json, TopicRoute};
    use crate::wire::Frame;

    fn me() -> MemberRef {
        MemberRef {
            group: "g".into(),
            member_id: "m-1".into(),
            generation: 3,
        }
    }

    fn at(offset: u64) -> Vec<QueueOffset> {
        vec![QueueOffset {
            topic: "t".into(),
            broker_name: "b".into(),
            queue: 0,
            offset,
        }]
    }

    #[tokio::test]
    async fn commits_are_kept_while_the_master_is_unreachable_and_flushed_once_it_is_back() {
        let master = free_addr();
        let slave = start(Arc::new(|f: &Frame| {
            Frame::error(f.correlation_id, Status::NotMaster, "broker b/1 is a read-only slave")
        }))
        .await;
        let route = Arc::new(std::sync::Mutex::new(TopicRoute {
            topic: "t".into(),
            brokers: vec![broker("b", 1, &[(0, &master), (1, &slave)], &[])],
        }));
        let mut cfg = ClientConfig::new([namesrv(route.clone()).await]);
        cfg.request_timeout = Duration::from_secs(1);
        let core = ClientCore::new(cfg);
        let kept = Mutex::new(KeptCommits::default());
        // Unreachable master: kept, and the consumer is not failed.
        commit_or_keep(&core, &kept, "g", &me(), at(10)).await.unwrap();
        commit_or_keep(&core, &kept, "g", &me(), at(12)).await.unwrap();
        assert_eq!(kept.lock().unwrap().get("g", "t", "b", 0), Some(12), "the newest value");
        // The route has no live master: kept.
        route.lock().unwrap().brokers[0] = broker("b", 1, &[(1, &slave)], &[(0, &master)]);
        core.invalidate("t");
        commit_or_keep(&core, &kept, "g", &me(), at(13)).await.unwrap();
        // A stale route naming the slave as master: NOT_MASTER, kept.
        route.lock().unwrap().brokers[0] = broker("b", 1, &[(0, &slave)], &[]);
        core.invalidate("t");
        commit_or_keep(&core, &kept, "g", &me(), at(14)).await.unwrap();
        assert_eq!(kept.lock().unwrap().get("g", "t", "b", 0), Some(14));

        // The master is back: the next commit round takes the kept value.
        let taken = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = taken.clone();
        let listener = tokio::net::TcpListener::bind(&master).await.unwrap();
        tokio::spawn(serve(
            listener,
            Arc::new(move |f: &Frame| {
                if f.code == Command::CommitOffsets.code() {
                    let c: CommitOffsets = from_json(&f.header, "commit").unwrap();
                    log.lock().unwrap().extend(c.offsets.into_iter().map(|o| o.offset));
                }
                Frame::ok(f.correlation_id, Bytes::new(), Bytes::new())
            }),
        ));
        route.lock().unwrap().brokers[0] = broker("b", 1, &[(0, &master), (1, &slave)], &[]);
        core.invalidate("t");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while core.is_down(&master) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let kept_offsets = kept.lock().unwrap().of_group("g");
        commit_or_keep(&core, &kept, "g", &me(), kept_offsets).await.unwrap();
        assert_eq!(*taken.lock().unwrap(), [14]);
        assert!(kept.lock().unwrap().of_group("g").is_empty(), "flushed");
    }

    #[tokio::test]
    async fn a_refused_commit_is_an_error_not_kept() {
        let master = start(Arc::new(|f: &Frame| {
            Frame::error(f.correlation_id, Status::IllegalGeneration, "stale generation")
        }))
        .await;
        let route = TopicRoute {
            topic: "t".into(),
            brokers: vec![broker("b", 1, &[(0, &master)], &[])],
        };
        let core = ClientCore::new(ClientConfig::new([
            namesrv(Arc::new(std::sync::Mutex::new(route))).await
        ]));
        let kept = Mutex::new(KeptCommits::default());
        let err = commit_or_keep(&core, &kept, "g", &me(), at(5)).await.unwrap_err();
        assert_eq!(err.status(), Some(Status::IllegalGeneration));
        assert!(kept.lock().unwrap().of_group("g").is_empty());
    }
}
