//! The broker's request handler: decodes each request, checks it, and asks
//! the right actor. One function per command.

use std::net::SocketAddr;
use std::sync::Arc;

use actix::Addr;
use bytes::{Bytes, BytesMut};
use futures::future::LocalBoxFuture;

use crate::actors::commitlog_writer::{CommitLogWriter, DeleteTopicData};
use crate::actors::namesrv_client::{NameServerClient, RegisterNow};
use crate::actors::queue_actor::{Pull, QueueActor};
use crate::actors::queue_delivery::{Receive, RequesterGone, Settle};
use crate::actors::queue_registry::QueueRegistry;
use crate::actors::services::AppendBatch;
use crate::clock::now_millis;
use crate::config::BrokerSection;
use crate::error::{BrokerError, ErrorKind};
use crate::observe::clients::ClientRole;
use crate::observe::Tracked;
use crate::record::MessageId;
use crate::server::{ConnectionHandle, RequestHandler};
use crate::store::append::AppendEntry;
use crate::store::topics::TopicConfig;
use crate::store::Store;
use crate::wire::control::{
    self, validate_topic_name, CreateTopic, QueryById, QueryByKey, QueueOffsets, QueueRef, QueueStats, TopicRef,
    TopicStats,
};
use crate::wire::delivery::{encode_settled, ReceiveRequest, SettleRequest};
use crate::wire::pull::PullRequest;
use crate::wire::send::SendRequest;
use crate::wire::{Command, DecodeError, Frame};

/// Most records one key query returns.
const MAX_QUERY_RESULTS: u32 = 64;
/// Most queues a topic may have on one broker.
pub const MAX_QUEUES_PER_TOPIC: u32 = 1024;

/// Everything a request may need; shared by every connection.
pub struct BrokerHandler {
    /// Consumer-group coordinators.
    pub groups: Arc<crate::actors::group_registry::GroupRegistry>,
    /// Route lookups (group assignments span every broker of a topic).
    pub routes: Arc<crate::client::core::ClientCore>,
    /// Where groups are coordinated, for member requests and commits.
    pub coordination: Arc<super::coordination::Coordination>,
    /// `[broker]` settings.
    pub cfg: BrokerSection,
    /// The store.
    pub store: Arc<Store>,
    /// The commitlog writer.
    pub writer: Tracked<CommitLogWriter>,
    /// Queue actors.
    pub queues: Arc<QueueRegistry>,
    /// Registration with the name servers.
    pub registrar: Addr<NameServerClient>,
    /// This broker's advertised address.
    pub store_host: SocketAddr,
    /// Appends, commits and internal topics shared with the actors.
    pub services: Arc<crate::actors::services::BrokerServices>,
    /// Connected clients and their roles (expired by the heartbeat scanner).
    pub clients: Arc<std::sync::Mutex<crate::observe::clients::ClientTable>>,
    /// Holds delayed messages until due.
    pub delays: Tracked<crate::actors::delay_scheduler::DelayScheduler>,
}

/// A command's answer: a success frame or an error status and message.
pub type Reply = Result<Frame, BrokerError>;

/// A success frame with `body`.
pub fn ok(body: Bytes) -> Reply {
    Ok(Frame::ok(0, Bytes::new(), body))
}

/// A decoding failure as `MALFORMED_FRAME`.
pub fn malformed(e: DecodeError) -> BrokerError {
    BrokerError::new(ErrorKind::Malformed, e.to_string())
}

/// A bad field as `INVALID_ARGUMENT`.
pub fn invalid(e: DecodeError) -> BrokerError {
    BrokerError::new(ErrorKind::InvalidArgument, e.to_string())
}

/// An unreachable actor as `SERVICE_UNAVAILABLE`.
pub fn mailbox(e: actix::MailboxError) -> BrokerError {
    BrokerError::new(ErrorKind::Unavailable, format!("broker component unavailable: {e}"))
}

/// A store failure as `STORE_ERROR`.
pub fn io_err(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::store(e.to_string())
}

impl RequestHandler for BrokerHandler {
    fn handle(self: Arc<Self>, conn: ConnectionHandle, cmd: Command, frame: Frame) -> LocalBoxFuture<'static, Frame> {
        let peer = conn.peer;
        if let Ok(mut t) = self.clients.lock() {
            t.seen(conn.id, ClientRole::of(cmd), now_millis());
        }
        Box::pin(async move {
            let result = match cmd {
                Command::JoinGroup
                | Command::SyncGroup
                | Command::Heartbeat
                | Command::LeaveGroup
                | Command::CommitOffsets
                | Command::FetchOffsets
                | Command::ListGroups
                | Command::DescribeGroup
                | Command::ResetOffsets
                | Command::SearchOffset => self.group_request(conn, cmd, &frame.header).await,
                Command::Ping => ok(Bytes::new()),
                Command::SendMessage => self.send(peer, frame.body).await,
                Command::PullMessage => self.pull(frame.body, conn.closed_flag()).await,
                Command::ReceiveMessage => self.receive(frame.body, conn.closed_flag()).await,
                Command::AckMessage => self.settle(frame.body, false).await,
                Command::NackMessage => self.settle(frame.body, true).await,
                Command::GetOffsets => self.offsets(&frame.header),
                Command::QueryMessageById => self.query_by_id(&frame.header),
                Command::QueryMessageByKey => self.query_by_key(&frame.header),
                Command::CreateTopic => self.create_topic(&frame.header).await,
                Command::DeleteTopic => self.delete_topic(&frame.header).await,
                Command::TopicStats => self.topic_stats(&frame.header),
                other => Err(BrokerError::new(
                    ErrorKind::Unsupported,
                    format!("command {other:?} ({}) is not served by a broker", other.code()),
                )),
            };
            result.unwrap_or_else(crate::server::status::error_frame)
        })
    }

    fn closed(&self, id: u64) {
        self.closed_connection(id);
    }
}

impl BrokerHandler {
    fn closed_connection(&self, id: u64) {
        if let Ok(mut t) = self.clients.lock() {
            t.closed(id);
        }
    }

    /// The topic's settings, creating it when auto-creation is on.
    async fn topic_for_send(&self, topic: &str) -> Result<TopicConfig, BrokerError> {
        if let Some(cfg) = self.store.topics.get(topic) {
            return Ok(cfg);
        }
        if !self.cfg.auto_create_topics {
            return Err(BrokerError::new(
                ErrorKind::TopicNotExist,
                format!("topic {topic} does not exist and auto-creation is off"),
            ));
        }
        let (cfg, created) = self
            .store
            .topics
            .get_or_create(topic, TopicConfig::with_queues(self.cfg.default_topic_queues))
            .map_err(io_err)?;
        if created {
            tracing::info!(topic, queues = cfg.queues, "auto-created topic");
            self.registrar.do_send(RegisterNow);
        }
        Ok(cfg)
    }

    pub(super) fn existing_queue(&self, topic: &str, queue_id: u32) -> Result<(), BrokerError> {
        let cfg = self
            .store
            .topics
            .get(topic)
            .ok_or_else(|| BrokerError::new(ErrorKind::TopicNotExist, format!("topic {topic} does not exist")))?;
        check_queue(topic, queue_id, cfg)
    }

    async fn send(&self, peer: SocketAddr, body: Bytes) -> Reply {
        let req = SendRequest::decode(body).map_err(malformed)?;
        let cfg = self.topic_for_send(&req.topic).await?;
        check_queue(&req.topic, req.queue_id, cfg)?;
        let batch = AppendBatch {
            topic: req.topic,
            queue_id: req.queue_id,
            entries: req.entries.into_iter().map(AppendEntry::from).collect(),
            born_host: peer,
        };
        let appended = self.services.append_batch(batch).await?;
        ok(crate::wire::send::SendResponse::from(appended).encode())
    }

    fn queue_actor(&self, topic: &str, queue_id: u32) -> Result<Tracked<QueueActor>, BrokerError> {
        self.queues
            .get_or_start(topic, queue_id)
            .ok_or_else(|| BrokerError::new(ErrorKind::Internal, "queue registry unavailable".to_string()))
    }

    /// A requested long-poll wait, clamped to `max_poll_wait_ms`.
    fn poll_wait(&self, requested_ms: u32) -> u32 {
        requested_ms.min(u32::try_from(self.cfg.max_poll_wait_ms).unwrap_or(u32::MAX))
    }

    async fn pull(&self, body: Bytes, gone: RequesterGone) -> Reply {
        let mut req = PullRequest::decode(body).map_err(malformed)?;
        req.max_wait_ms = self.poll_wait(req.max_wait_ms);
        self.existing_queue(&req.topic, req.queue_id)?;
        let actor = self.queue_actor(&req.topic, req.queue_id)?;
        let query = crate::server::delivery_frames::pull_query(&req);
        let batch = actor.send(Pull(query, gone)).await.map_err(mailbox)??;
        Ok(crate::server::delivery_frames::pull_frame(batch))
    }

    async fn receive(&self, body: Bytes, gone: RequesterGone) -> Reply {
        let mut req = ReceiveRequest::decode(body).map_err(malformed)?;
        req.max_wait_ms = self.poll_wait(req.max_wait_ms);
        self.existing_queue(&req.topic, req.queue_id)?;
        let actor = self.queue_actor(&req.topic, req.queue_id)?;
        let query = crate::server::delivery_frames::receive_query(req);
        let batch = actor.send(Receive(query, gone)).await.map_err(mailbox)??;
        Ok(crate::server::delivery_frames::receive_frame(&batch))
    }

    async fn settle(&self, body: Bytes, nack: bool) -> Reply {
        let req = SettleRequest::decode(body).map_err(malformed)?;
        self.existing_queue(&req.topic, req.queue_id)?;
        let Some(actor) = self.queues.get(&req.topic, req.queue_id) else {
            // No actor: nothing is in flight (the broker restarted); the
            // messages will be delivered again.
            return ok(encode_settled(0));
        };
        let query = crate::server::delivery_frames::settle_query(req, nack);
        let n = actor.send(Settle(query)).await.map_err(mailbox)??;
        ok(encode_settled(n))
    }

    fn queue_offsets(&self, topic: &str, queue: u32) -> QueueOffsets {
        self.store.queues.get(topic, queue).map_or(
            QueueOffsets {
                min_offset: 0,
                max_offset: 0,
            },
            |q| QueueOffsets {
                min_offset: q.min_offset(),
                max_offset: q.max_offset(),
            },
        )
    }

    fn offsets(&self, header: &[u8]) -> Reply {
        let q: QueueRef = control::from_json(header, "header").map_err(malformed)?;
        self.existing_queue(&q.topic, q.queue)?;
        ok(control::to_json(&self.queue_offsets(&q.topic, q.queue)))
    }

    fn query_by_id(&self, header: &[u8]) -> Reply {
        let q: QueryById = control::from_json(header, "header").map_err(malformed)?;
        let id: MessageId = q.msg_id.parse().map_err(invalid)?;
        if id.store_host != self.store_host {
            return Err(BrokerError::new(
                ErrorKind::MessageNotFound,
                format!(
                    "message {} was stored by {}, not by this broker ({})",
                    q.msg_id, id.store_host, self.store_host
                ),
            ));
        }
        let raw = self
            .store
            .raw_record_by_id(&id)
            .map_err(|e| BrokerError::new(ErrorKind::MessageNotFound, format!("no message {}: {e}", q.msg_id)))?;
        ok(raw)
    }

    fn query_by_key(&self, header: &[u8]) -> Reply {
        let q: QueryByKey = control::from_json(header, "header").map_err(malformed)?;
        validate_topic_name(&q.topic).map_err(invalid)?;
        let max = q.max.clamp(1, MAX_QUERY_RESULTS) as usize;
        let (count, raw) = self.store.raw_records_by_key(&q.topic, &q.key, max).map_err(io_err)?;
        // Body: u32 count, then the records (docs/protocol.md §4).
        let mut body = BytesMut::with_capacity(4 + raw.len());
        body.extend_from_slice(&count.to_be_bytes());
        body.extend_from_slice(&raw);
        ok(body.freeze())
    }

    async fn create_topic(&self, header: &[u8]) -> Reply {
        let req: CreateTopic = control::from_json(header, "header").map_err(malformed)?;
        validate_topic_name(&req.topic).map_err(invalid)?;
        if req.queues == 0 || req.queues > MAX_QUEUES_PER_TOPIC {
            return Err(BrokerError::new(
                ErrorKind::InvalidArgument,
                format!("queues must be between 1 and {MAX_QUEUES_PER_TOPIC}"),
            ));
        }
        let prev = self
            .store
            .topics
            .upsert(
                &req.topic,
                TopicConfig {
                    queues: req.queues,
                    ttl_ms: req.ttl_ms,
                },
            )
            .map_err(io_err)?;
        // Consume-queue files now, off the network thread, rather than on
        // each queue's first message (measured: 10 000 queues' first files
        // slowed the first produce run over them).
        let (store, topic, queues) = (self.store.clone(), req.topic.clone(), req.queues);
        match actix_rt::task::spawn_blocking(move || store.queues.prepare_topic(&topic, queues)).await {
            Ok(Ok(())) => {}
            // Only an optimisation: dispatch creates what is missing.
            Ok(Err(e)) => tracing::warn!(topic = %req.topic, error = %e, "could not prepare consume queues"),
            Err(e) => tracing::warn!(topic = %req.topic, error = %e, "preparing consume queues failed"),
        }
        tracing::info!(topic = %req.topic, queues = req.queues, previous = ?prev.map(|p| p.queues), "topic created");
        self.publish_routes().await;
        ok(Bytes::new())
    }

    async fn delete_topic(&self, header: &[u8]) -> Reply {
        let req: TopicRef = control::from_json(header, "header").map_err(malformed)?;
        if self.store.topics.remove(&req.topic).map_err(io_err)?.is_none() {
            return Err(BrokerError::new(
                ErrorKind::TopicNotExist,
                format!("topic {} does not exist", req.topic),
            ));
        }
        self.store.subscriptions.remove_topic(&req.topic).map_err(io_err)?;
        // A topic created again under the same name starts with no
        // group's offsets.
        let tombstones = self.store.offsets.tombstones_of_topic(&req.topic);
        self.services.commit_offsets(tombstones).await?;
        self.writer
            .send(DeleteTopicData(req.topic.clone()))
            .await
            .map_err(mailbox)?
            .map_err(io_err)?;
        tracing::info!(topic = %req.topic, "topic deleted");
        self.publish_routes().await;
        ok(Bytes::new())
    }

    /// Re-registers at once so the admin command returns with fresh routes.
    async fn publish_routes(&self) {
        match self.registrar.send(RegisterNow).await {
            Ok(true) => {}
            _ => tracing::warn!("no name server acknowledged the topic change yet; it will on the next registration"),
        }
    }

    fn topic_stats(&self, header: &[u8]) -> Reply {
        let req: TopicRef = control::from_json(header, "header").map_err(malformed)?;
        let cfg =
            self.store.topics.get(&req.topic).ok_or_else(|| {
                BrokerError::new(ErrorKind::TopicNotExist, format!("topic {} does not exist", req.topic))
            })?;
        let queues = (0..cfg.queues)
            .map(|queue| {
                let o = self.queue_offsets(&req.topic, queue);
                QueueStats {
                    queue,
                    min_offset: o.min_offset,
                    max_offset: o.max_offset,
                }
            })
            .collect();
        ok(control::to_json(&TopicStats {
            topic: req.topic,
            queues,
        }))
    }
}

fn check_queue(topic: &str, queue_id: u32, cfg: TopicConfig) -> Result<(), BrokerError> {
    if queue_id >= cfg.queues {
        return Err(BrokerError::new(
            ErrorKind::QueueNotExist,
            format!(
                "topic {topic} has {} queues; queue {queue_id} does not exist",
                cfg.queues
            ),
        ));
    }
    Ok(())
}
