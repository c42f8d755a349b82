//! The broker core: every operation a client can ask of this broker, typed,
//! protocol-neutral. An adapter (the native TCP protocol in
//! `server::native`, the HTTP API; later a Kafka listener) turns its
//! requests into these calls and their answers or [`BrokerError`]s back
//! into its own encoding; nothing here decodes or builds a frame.
//!
//! Every operation takes the caller's [`Session`] and passes
//! [`BrokerCore::admit`] first, which holds the two checks that must have
//! exactly one home: [`BrokerCore::authorize`] (ACLs, later) and
//! [`BrokerCore::check_writable`] (a slave refuses writes, later).
//!
//! Operations, by submodule:
//!
//! * `messages`: [`BrokerCore::append`], [`BrokerCore::pull`],
//!   [`BrokerCore::receive`], [`BrokerCore::settle`] — thin: they check the
//!   queue and ask the commitlog writer or the queue's actor.
//! * `topics`: [`BrokerCore::create_topic`], [`BrokerCore::delete_topic`],
//!   [`BrokerCore::topic_stats`], [`BrokerCore::queue_range`],
//!   [`BrokerCore::search_offset`].
//! * `queries`: [`BrokerCore::query_by_id`], [`BrokerCore::query_by_key`].
//! * `groups`: [`BrokerCore::join_group`], [`BrokerCore::sync_group`],
//!   [`BrokerCore::heartbeat`], [`BrokerCore::leave_group`],
//!   [`BrokerCore::commit_offsets`], [`BrokerCore::fetch_offsets`],
//!   [`BrokerCore::list_groups`], [`BrokerCore::describe_group`],
//!   [`BrokerCore::reset_offsets`], and the periodic
//!   [`BrokerCore::refresh_group_routes`].
//! * here: [`BrokerCore::ping`].

mod groups;
mod messages;
mod queries;
mod replication;
mod topics;

use std::net::SocketAddr;
use std::sync::Arc;

use actix::Addr;

pub use groups::{GroupOffset, GroupView, JoinSpec, MemberRef, OffsetCommit, ResetSpec, ResetTo};
pub use queries::MAX_QUERY_RESULTS;
pub use replication::{LogFetch, ReplicaConfig};
pub use topics::{QueueRange, QueueStat, TopicQueues, TopicSpec, MAX_QUEUES_PER_TOPIC};

use super::session::{Session, SessionRegistry};
use crate::acl::{Access, Perm};
use crate::actors::commitlog_writer::CommitLogWriter;
use crate::actors::namesrv_client::NameServerClient;
use crate::actors::queue_registry::QueueRegistry;
use crate::config::BrokerSection;
use crate::error::{BrokerError, ErrorKind};
use crate::observe::Tracked;
use crate::store::topics::TopicConfig;
use crate::store::Store;

/// What an operation does, as authorization and the broker's role judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation<'a> {
    /// A liveness check.
    Ping,
    /// Append messages to a topic.
    Produce {
        /// The topic.
        topic: &'a str,
    },
    /// Read a topic's messages by offset (pull).
    Consume {
        /// The topic.
        topic: &'a str,
    },
    /// Acknowledge or reject received messages.
    Settle {
        /// The topic.
        topic: &'a str,
        /// The group that received them.
        group: &'a str,
    },
    /// Take part in a group (join, sync, heartbeat, leave).
    GroupMember {
        /// The group.
        group: &'a str,
    },
    /// Store a group's consumed offsets.
    CommitOffsets {
        /// The group.
        group: &'a str,
    },
    /// Read a group's committed offsets.
    FetchOffsets {
        /// The group.
        group: &'a str,
    },
    /// Move a stopped group's offsets (an admin command).
    ResetOffsets {
        /// The group.
        group: &'a str,
    },
    /// List every group, or describe one (members, assignment): admin.
    DescribeGroups,
    /// Create or change a topic.
    CreateTopic {
        /// The topic.
        topic: &'a str,
    },
    /// Delete a topic.
    DeleteTopic {
        /// The topic.
        topic: &'a str,
    },
    /// Read a topic's figures or look its messages up by key or time.
    DescribeTopic {
        /// The topic.
        topic: &'a str,
    },
    /// Look a message up by id (any topic): admin.
    QueryById,
    /// Take messages to be acknowledged one by one (changes the group's
    /// in-flight state and, later, its offsets).
    Receive {
        /// The topic.
        topic: &'a str,
        /// The receiving group.
        group: &'a str,
    },
    /// A slave copies this master's log (handshake, fetch, topics).
    Replicate,
}

impl Operation<'_> {
    /// True for operations that change what the broker stores.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Operation::Produce { .. }
                | Operation::Receive { .. }
                | Operation::Settle { .. }
                | Operation::CommitOffsets { .. }
                | Operation::ResetOffsets { .. }
                | Operation::CreateTopic { .. }
                | Operation::DeleteTopic { .. }
        )
    }

    /// What the ACL must allow for it (`docs/security.md`, "What each
    /// command needs").
    pub fn access(&self) -> Access<'_> {
        match *self {
            Operation::Ping => Access::Open,
            Operation::Produce { topic } => Access::Topic(topic, Perm::PUB),
            Operation::Consume { topic } | Operation::DescribeTopic { topic } => Access::Topic(topic, Perm::SUB),
            Operation::Receive { topic, group } | Operation::Settle { topic, group } => {
                Access::TopicAndGroup(topic, group, Perm::SUB)
            }
            Operation::GroupMember { group }
            | Operation::CommitOffsets { group }
            | Operation::FetchOffsets { group } => Access::Group(group, Perm::SUB),
            Operation::ResetOffsets { .. } => Access::Admin("reset a group's offsets"),
            Operation::DescribeGroups => Access::Admin("list or describe groups"),
            Operation::CreateTopic { .. } => Access::Admin("create or change topics"),
            Operation::DeleteTopic { .. } => Access::Admin("delete topics"),
            Operation::QueryById => Access::Admin("look messages up by id"),
            Operation::Replicate => Access::Admin("replicate this broker's log"),
        }
    }

    /// The topic it creates, changes, deletes or writes, if any: refused
    /// for the broker's internal topics.
    fn written_topic(&self) -> Option<&str> {
        match *self {
            Operation::Produce { topic } | Operation::CreateTopic { topic } | Operation::DeleteTopic { topic } => {
                Some(topic)
            }
            _ => None,
        }
    }
}

/// This broker's part in its broker group (`broker.id`: 0 is the master).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerRole {
    /// Takes writes.
    Master,
    /// Follows a master: serves reads, refuses writes (`NOT_MASTER`).
    Slave,
}

impl BrokerRole {
    /// The role of `broker.id`.
    pub fn of_id(id: u64) -> BrokerRole {
        if id == 0 {
            BrokerRole::Master
        } else {
            BrokerRole::Slave
        }
    }
}

/// The broker core: the actors, the store and what the operations share.
/// One per broker process, shared (`Arc`) by every adapter.
pub struct BrokerCore {
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
    /// Holds delayed messages until due.
    pub delays: Tracked<crate::actors::delay_scheduler::DelayScheduler>,
    /// The live sessions of every adapter.
    pub sessions: Arc<SessionRegistry>,
    /// Replication: the master's hub and links, or the slave's follower.
    pub replication: Arc<crate::actors::replication::Replication>,
    /// Access control (disabled: everything allowed).
    pub acl: crate::acl::Acl,
}

impl BrokerCore {
    /// This broker's role in its broker group.
    pub fn role(&self) -> BrokerRole {
        BrokerRole::of_id(self.cfg.id)
    }

    /// The checks every operation passes first: [`Self::authorize`], then
    /// [`check_internal_topic`], then [`Self::check_writable`].
    pub fn admit(&self, session: &Session, op: &Operation<'_>) -> Result<(), BrokerError> {
        self.authorize(session, op)?;
        check_internal_topic(op)?;
        self.check_writable(op)
    }

    /// The one place where access is checked: may `session`'s principal do
    /// `op` (its [`Operation::access`])? `ACCESS_DENIED` names what is
    /// missing. Always yes while ACL is off.
    pub fn authorize(&self, session: &Session, op: &Operation<'_>) -> Result<(), BrokerError> {
        self.acl
            .check(session.principal(), &op.access())
            .map_err(|d| BrokerError::new(ErrorKind::AccessDenied, d.to_string()))
    }

    /// The one place where "this broker is a slave: refuse writes" is
    /// decided: on a slave every write (send, receive and settle, offset
    /// commits and resets, topic creation and deletion) fails with
    /// `NOT_MASTER`, naming the master (see [`Self::not_master`]).
    ///
    /// It also refuses sends and topic creation while the disk is full
    /// (above `store.disk_refuse_ratio`, or after a write found no space):
    /// `DISK_FULL`, saying what is full and how full. Reads, consumption,
    /// acknowledgements and commits go on (commits are small; they fail
    /// with `DISK_FULL` only if the disk truly has no room).
    pub fn check_writable(&self, op: &Operation<'_>) -> Result<(), BrokerError> {
        if op.is_write() && self.role() == BrokerRole::Slave {
            return Err(self.not_master());
        }
        if matches!(op, Operation::Produce { .. } | Operation::CreateTopic { .. }) {
            self.store
                .disk
                .check_accepting()
                .map_err(|e| self.name_disk_full(e.into()))?;
        }
        Ok(())
    }

    /// `NOT_MASTER`: this broker is a read-only slave; the message names
    /// its master (or says it is not known yet).
    pub fn not_master(&self) -> BrokerError {
        let me = format!("broker {}/{}", self.cfg.name, self.cfg.id);
        let message = match self.replication.master_addr() {
            Some(m) => format!("{me} is a read-only slave; writes go to its master {m}"),
            None => format!("{me} is a read-only slave; its master is unknown (not registered or unreachable)"),
        };
        BrokerError::new(ErrorKind::NotMaster, message)
    }

    /// A `DISK_FULL` error names this broker group (its message names the
    /// path): in a cluster the client sees whose disk is full.
    pub fn name_disk_full(&self, e: BrokerError) -> BrokerError {
        if e.kind() != ErrorKind::DiskFull {
            return e;
        }
        BrokerError::new(
            ErrorKind::DiskFull,
            format!("broker {}: {}", self.cfg.name, e.message()),
        )
    }

    /// A liveness check.
    pub fn ping(&self, session: &Session) -> Result<(), BrokerError> {
        self.admit(session, &Operation::Ping)
    }

    /// The settings of an existing topic.
    fn topic(&self, topic: &str) -> Result<TopicConfig, BrokerError> {
        self.store
            .topics
            .get(topic)
            .ok_or_else(|| BrokerError::new(ErrorKind::TopicNotExist, format!("topic {topic} does not exist")))
    }

    /// Checks that queue `queue_id` of `topic` exists.
    fn existing_queue(&self, topic: &str, queue_id: u32) -> Result<(), BrokerError> {
        check_queue(topic, queue_id, self.topic(topic)?)
    }
}

/// Refuses creating, changing, deleting or writing one of the broker's own
/// topics (`message::props::is_internal_topic`), with or without ACL: only
/// the operations that own them write them.
pub fn check_internal_topic(op: &Operation<'_>) -> Result<(), BrokerError> {
    match op.written_topic() {
        Some(topic) if crate::message::props::is_internal_topic(topic) => Err(BrokerError::new(
            ErrorKind::InternalTopic,
            format!("topic {topic} is internal to the broker: clients may read it but not create, change, delete or write it"),
        )),
        _ => Ok(()),
    }
}

/// A store failure.
fn io_err(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::store(e.to_string())
}

/// An unreachable actor as `SERVICE_UNAVAILABLE`.
fn mailbox(e: actix::MailboxError) -> BrokerError {
    BrokerError::new(ErrorKind::Unavailable, format!("broker component unavailable: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_told_apart_and_ids_give_roles() {
        assert!(Operation::Produce { topic: "t" }.is_write());
        assert!(Operation::CommitOffsets { group: "g" }.is_write());
        assert!(!Operation::Consume { topic: "t" }.is_write());
        assert!(!Operation::QueryById.is_write());
        assert_eq!(BrokerRole::of_id(0), BrokerRole::Master);
        assert_eq!(BrokerRole::of_id(2), BrokerRole::Slave);
    }

    #[test]
    fn internal_topics_are_read_only_for_clients() {
        for topic in [
            "__consumer_offsets",
            "__delay",
            "%DLQ%billing",
            "%RETRY%billing",
            "__txn_half",
        ] {
            for op in [
                Operation::Produce { topic },
                Operation::CreateTopic { topic },
                Operation::DeleteTopic { topic },
            ] {
                let e = check_internal_topic(&op).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::InternalTopic, "{op:?}");
            }
            assert!(check_internal_topic(&Operation::Consume { topic }).is_ok());
        }
        assert!(check_internal_topic(&Operation::Produce { topic: "orders" }).is_ok());
        assert!(check_internal_topic(&Operation::Produce {
            topic: "_one_underscore"
        })
        .is_ok());
    }
}
