//! The native protocol adapter: decodes each request frame of a broker
//! connection, calls the protocol-neutral [`BrokerCore`] with the
//! connection's [`Session`], and encodes the answer (or maps the
//! [`BrokerError`] to a status with [`super::status`]). It also gives each
//! session a [`PushSink`] that encodes push events as frames
//! (`NOTIFY_REBALANCE`), and counts what each connection does
//! ([`role_of`]).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::LocalBoxFuture;

use super::delivery_frames as frames;
use super::{ConnectionHandle, RequestHandler};
use crate::actors::group_coordinator::MemberAssignment;
use crate::actors::services::AppendBatch;
use crate::broker::coordination::{assigned_queue, group_description};
use crate::broker::core::LogFetch;
use crate::broker::core::{BrokerCore, GroupOffset, JoinSpec, MemberRef, OffsetCommit, ResetSpec, ResetTo, TopicSpec};
use crate::broker::session::Session;
use crate::clock::now_millis;
use crate::error::{BrokerError, ErrorKind};
use crate::observe::clients::ClientRole;
use crate::push::{PushEvent, PushSink};
use crate::replication::handshake::{Decision, SlaveLog};
use crate::store::append::{AppendEntry, Appended};
use crate::wire::control::{
    self, CreateTopic, QueryById, QueryByKey, QueueOffsets, QueueRef, QueueStats, TopicRef, TopicStats,
};
use crate::wire::delivery::{encode_settled, ReceiveRequest, SettleRequest};
use crate::wire::group::{
    CommitOffsets, CommittedOffsets, FetchOffsets, GroupAssignment, GroupList, GroupRef, HeartbeatReply, JoinGroup,
    LeaveGroup, MemberRef as WireMember, OffsetAt, QueueOffset, RebalanceNotice, ResetOffsets, ResetTarget,
    SearchOffset,
};
use crate::wire::pull::PullRequest;
use crate::wire::replica::{
    ReplicaAck, ReplicaAction, ReplicaChunk, ReplicaFetch, ReplicaHello, ReplicaTopic, ReplicaTopics, ReplicaWelcome,
};
use crate::wire::send::{SendEntry, SendRequest, SendResponse};
use crate::wire::{Command, DecodeError, Frame};

/// A command's answer: a success frame or an error.
type Reply = Result<Frame, BrokerError>;

/// A success frame with `body`.
fn ok(body: Bytes) -> Reply {
    Ok(Frame::ok(0, Bytes::new(), body))
}

/// A decoding failure as `MALFORMED_FRAME`.
fn malformed(e: DecodeError) -> BrokerError {
    BrokerError::new(ErrorKind::Malformed, e.to_string())
}

/// A JSON header as `T` (`MALFORMED_FRAME` when it is not one).
fn header<T: serde::de::DeserializeOwned>(frame: &Frame) -> Result<T, BrokerError> {
    control::from_json(&frame.header, "header").map_err(malformed)
}

/// The role a command reveals: producers send, consumers pull, receive,
/// settle or take part in a group; anything else is an admin's.
pub fn role_of(cmd: Command) -> ClientRole {
    use Command::*;
    match cmd {
        SendMessage => ClientRole::Producer,
        PullMessage | ReceiveMessage | AckMessage | NackMessage | JoinGroup | SyncGroup | Heartbeat | LeaveGroup
        | CommitOffsets | FetchOffsets => ClientRole::Consumer,
        _ => ClientRole::Admin,
    }
}

/// A session's push channel on a native connection: events become push
/// frames on the connection.
struct NativePush(ConnectionHandle);

impl PushSink for NativePush {
    fn push(&self, event: PushEvent) -> bool {
        match event {
            PushEvent::Rebalance { group, .. } => {
                let header = control::to_json(&RebalanceNotice { group });
                self.0
                    .push(Frame::request(Command::NotifyRebalance, 0, header, Bytes::new()))
            }
        }
    }
}

fn wire_assignment(a: MemberAssignment) -> GroupAssignment {
    GroupAssignment {
        member_id: a.member_id,
        generation: a.generation,
        assignment: a.queues.into_iter().map(assigned_queue).collect(),
    }
}

/// The broker's native-protocol request handler.
pub struct NativeAdapter {
    core: Arc<BrokerCore>,
}

impl NativeAdapter {
    /// An adapter calling `core`.
    pub fn new(core: Arc<BrokerCore>) -> NativeAdapter {
        NativeAdapter { core }
    }

    /// The session of `conn` (registered when it opened).
    fn session(&self, conn: &ConnectionHandle) -> Arc<Session> {
        conn.state::<Session>().unwrap_or_else(|| {
            // Not reached: every connection gets a session in `opened`.
            let s = Arc::new(self.new_session(conn));
            self.core.sessions.insert(s.clone());
            s
        })
    }

    fn new_session(&self, conn: &ConnectionHandle) -> Session {
        let push: Arc<dyn PushSink> = Arc::new(NativePush(conn.clone()));
        Session::new(conn.id, conn.peer, conn.closed_flag(), Some(push))
    }

    async fn dispatch(&self, session: Arc<Session>, cmd: Command, frame: Frame) -> Reply {
        let core = &self.core;
        let s = &*session;
        match cmd {
            Command::Ping => {
                core.ping(s)?;
                ok(Bytes::new())
            }
            Command::SendMessage => {
                let req = SendRequest::decode(frame.body).map_err(malformed)?;
                let batch = AppendBatch {
                    topic: req.topic,
                    queue_id: req.queue_id,
                    entries: req.entries.into_iter().map(AppendEntry::from).collect(),
                    born_host: s.peer(),
                };
                ok(SendResponse::from(core.append(s, batch).await?).encode())
            }
            Command::PullMessage => {
                let req = PullRequest::decode(frame.body).map_err(malformed)?;
                let batch = core.pull(s, &req.topic, req.queue_id, frames::pull_query(&req)).await?;
                Ok(frames::pull_frame(batch))
            }
            Command::ReceiveMessage => {
                let req = ReceiveRequest::decode(frame.body).map_err(malformed)?;
                let (topic, queue_id) = (req.topic.clone(), req.queue_id);
                let batch = core.receive(s, &topic, queue_id, frames::receive_query(req)).await?;
                Ok(frames::receive_frame(&batch))
            }
            Command::AckMessage | Command::NackMessage => {
                let req = SettleRequest::decode(frame.body).map_err(malformed)?;
                let (topic, queue_id) = (req.topic.clone(), req.queue_id);
                let query = frames::settle_query(req, cmd == Command::NackMessage);
                let n = core.settle(s, &topic, queue_id, query).await?;
                ok(encode_settled(n))
            }
            Command::GetOffsets => {
                let q: QueueRef = header(&frame)?;
                let r = core.queue_range(s, &q.topic, q.queue)?;
                ok(control::to_json(&QueueOffsets {
                    min_offset: r.min_offset,
                    max_offset: r.max_offset,
                }))
            }
            Command::QueryMessageById => {
                let q: QueryById = header(&frame)?;
                ok(core.query_by_id(s, &q.msg_id)?)
            }
            Command::QueryMessageByKey => {
                let q: QueryByKey = header(&frame)?;
                let (count, raw) = core.query_by_key(s, &q.topic, &q.key, q.max)?;
                // Body: u32 count, then the records (docs/protocol.md §4).
                let mut body = BytesMut::with_capacity(4 + raw.len());
                body.extend_from_slice(&count.to_be_bytes());
                body.extend_from_slice(&raw);
                ok(body.freeze())
            }
            Command::CreateTopic => {
                let req: CreateTopic = header(&frame)?;
                let spec = TopicSpec {
                    topic: req.topic,
                    queues: req.queues,
                    ttl_ms: req.ttl_ms,
                };
                core.create_topic(s, spec).await?;
                ok(Bytes::new())
            }
            Command::DeleteTopic => {
                let req: TopicRef = header(&frame)?;
                core.delete_topic(s, &req.topic).await?;
                ok(Bytes::new())
            }
            Command::TopicStats => {
                let req: TopicRef = header(&frame)?;
                let t = core.topic_stats(s, &req.topic)?;
                ok(control::to_json(&TopicStats {
                    topic: t.topic,
                    queues: t
                        .queues
                        .into_iter()
                        .map(|q| QueueStats {
                            queue: q.queue,
                            min_offset: q.range.min_offset,
                            max_offset: q.range.max_offset,
                        })
                        .collect(),
                    store: Some(t.store),
                }))
            }
            Command::JoinGroup => {
                let j: JoinGroup = header(&frame)?;
                let spec = JoinSpec {
                    group: j.group,
                    member_id: j.member_id,
                    client_id: j.client_id,
                    topics: j.topics,
                    session_timeout_ms: j.session_timeout_ms,
                    strategy: j.strategy,
                    mode: j.mode,
                };
                ok(control::to_json(&wire_assignment(
                    core.join_group(&session, spec).await?,
                )))
            }
            Command::SyncGroup => {
                let m: WireMember = header(&frame)?;
                let a = core.sync_group(s, member(m)).await?;
                ok(control::to_json(&wire_assignment(a)))
            }
            Command::Heartbeat => {
                let m: WireMember = header(&frame)?;
                let rebalance = core.heartbeat(&session, member(m)).await?;
                ok(control::to_json(&HeartbeatReply { rebalance }))
            }
            Command::LeaveGroup => {
                let m: LeaveGroup = header(&frame)?;
                core.leave_group(s, &m.group, m.member_id).await?;
                ok(Bytes::new())
            }
            Command::CommitOffsets => {
                let c: CommitOffsets = header(&frame)?;
                let commit = OffsetCommit {
                    group: c.group,
                    member_id: c.member_id,
                    generation: c.generation,
                    offsets: c.offsets.into_iter().map(GroupOffset::from).collect(),
                };
                core.commit_offsets(s, commit).await?;
                ok(Bytes::new())
            }
            Command::FetchOffsets => {
                let f: FetchOffsets = header(&frame)?;
                let offsets = core.fetch_offsets(s, &f.group, f.topic.as_deref())?;
                ok(control::to_json(&committed(offsets)))
            }
            Command::ListGroups => ok(control::to_json(&GroupList {
                groups: core.list_groups(s)?,
            })),
            Command::DescribeGroup => {
                let g: GroupRef = header(&frame)?;
                let view = core.describe_group(s, &g.group).await?;
                ok(control::to_json(&group_description(view.members, view.offsets)))
            }
            Command::ResetOffsets => {
                let r: ResetOffsets = header(&frame)?;
                let spec = ResetSpec {
                    group: r.group,
                    topic: r.topic,
                    to: match r.to {
                        ResetTarget::Earliest => ResetTo::Earliest,
                        ResetTarget::Latest => ResetTo::Latest,
                        ResetTarget::Timestamp(t) => ResetTo::Timestamp(t),
                        ResetTarget::Offset(o) => ResetTo::Offset(o),
                    },
                    create: r.create,
                };
                let offsets = core.reset_offsets(s, spec).await?;
                ok(control::to_json(&committed(offsets)))
            }
            Command::SearchOffset => {
                let q: SearchOffset = header(&frame)?;
                let offset = core.search_offset(s, &q.topic, q.queue, q.timestamp)?;
                ok(control::to_json(&OffsetAt { offset }))
            }
            Command::ReplicaHandshake => {
                let h: ReplicaHello = header(&frame)?;
                let log = SlaveLog {
                    start: h.start_offset,
                    end: h.max_offset,
                    segment_bytes: h.segment_bytes,
                    last_records: h.last_records.iter().map(|r| (r.offset, r.crc)).collect(),
                };
                let action = match core.replica_handshake(s, &h.broker_name, h.broker_id, &h.addr, &log)? {
                    Decision::Follow { from } => ReplicaAction::Follow { from },
                    Decision::Truncate { to, reason } => ReplicaAction::Truncate { to, reason },
                };
                let welcome = ReplicaWelcome {
                    action,
                    master_start: core.store.log.start_offset(),
                    master_max: core.store.log.write_pos(),
                };
                Ok(Frame::ok(0, control::to_json(&welcome), Bytes::new()))
            }
            Command::ReplicaFetch => {
                let f: ReplicaFetch = header(&frame)?;
                let chunk = core
                    .replica_fetch(
                        s,
                        LogFetch {
                            slave: f.broker_id,
                            from: f.from,
                            confirmed: f.confirmed.unwrap_or(f.from),
                            max_bytes: f.max_bytes as usize,
                            max_wait: std::time::Duration::from_millis(u64::from(f.max_wait_ms)),
                        },
                    )
                    .await?;
                let head = ReplicaChunk {
                    from: chunk.from,
                    next: chunk.next,
                    master_max: chunk.master_max,
                };
                // The chunk goes to the socket from where it is (a vectored
                // write), not copied into the frame's buffer.
                Ok(Frame::ok(0, control::to_json(&head), Bytes::new()).with_body_tail(vec![chunk.bytes]))
            }
            Command::ReplicaAck => {
                let a: ReplicaAck = header(&frame)?;
                core.replica_ack(s, a.broker_id, a.confirmed)?;
                ok(Bytes::new())
            }
            Command::ReplicaTopics => {
                let config = core.replica_topics(s)?;
                let topics = config
                    .topics
                    .into_iter()
                    .map(|(name, t)| {
                        (
                            name,
                            ReplicaTopic {
                                queues: t.queues,
                                ttl_ms: t.ttl_ms,
                            },
                        )
                    })
                    .collect();
                ok(control::to_json(&ReplicaTopics {
                    topics,
                    subscriptions: config.subscriptions,
                }))
            }
            other => Err(BrokerError::new(
                ErrorKind::Unsupported,
                format!("command {other:?} ({}) is not served by a broker", other.code()),
            )),
        }
    }
}

fn committed(offsets: Vec<GroupOffset>) -> CommittedOffsets {
    CommittedOffsets {
        offsets: offsets.into_iter().map(QueueOffset::from).collect(),
    }
}

fn member(m: WireMember) -> MemberRef {
    MemberRef {
        group: m.group,
        member_id: m.member_id,
        generation: m.generation,
    }
}

impl RequestHandler for NativeAdapter {
    fn opened(&self, conn: &ConnectionHandle) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let session = Arc::new(self.new_session(conn));
        self.core.sessions.insert(session.clone());
        Some(session)
    }

    fn handle(self: Arc<Self>, conn: ConnectionHandle, cmd: Command, frame: Frame) -> LocalBoxFuture<'static, Frame> {
        let session = self.session(&conn);
        let now = now_millis();
        session.seen(role_of(cmd), now);
        // Who is asking, before anything is decoded: every command's
        // permission is then checked by the core against the session.
        let who = super::auth::identify(&self.core.acl, &frame, session.peer().ip(), now)
            .and_then(|who| session.bind_principal(who));
        if let Err(denied) = who {
            tracing::debug!(peer = %session.peer(), ?cmd, %denied, "request refused");
            let e = BrokerError::new(ErrorKind::AccessDenied, denied.to_string());
            return Box::pin(async move { super::status::error_frame(e) });
        }
        Box::pin(async move {
            self.dispatch(session, cmd, frame)
                .await
                .unwrap_or_else(super::status::error_frame)
        })
    }

    fn closed(&self, id: u64) {
        self.core.sessions.remove(id);
    }
}

/// A `SEND_MESSAGE` entry as the store's append input: its fields move
/// (the body stays a slice of the request frame).
impl From<SendEntry> for AppendEntry {
    fn from(e: SendEntry) -> AppendEntry {
        AppendEntry {
            flags: e.flags,
            born_timestamp: e.born_timestamp,
            properties: e.properties,
            body: e.body,
        }
    }
}

// Same layout, so `Vec<SendEntry>` → `Vec<AppendEntry>` through
// `into_iter().map(From::from).collect()` reuses the allocation in place.
const _: () = assert!(
    std::mem::size_of::<SendEntry>() == std::mem::size_of::<AppendEntry>()
        && std::mem::align_of::<SendEntry>() == std::mem::align_of::<AppendEntry>()
);

/// An append's result as the `SEND_MESSAGE` reply: the native protocol's
/// encoding of the domain type (fields move).
impl From<Appended> for SendResponse {
    fn from(a: Appended) -> SendResponse {
        SendResponse {
            queue_id: a.queue_id,
            store_host: a.store_host,
            stored: a.stored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_reveal_roles() {
        assert_eq!(role_of(Command::SendMessage), ClientRole::Producer);
        assert_eq!(role_of(Command::AckMessage), ClientRole::Consumer);
        assert_eq!(role_of(Command::JoinGroup), ClientRole::Consumer);
        assert_eq!(role_of(Command::TopicStats), ClientRole::Admin);
    }
}
