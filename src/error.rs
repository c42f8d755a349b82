//! The broker's one error type: what an operation of the broker core (or
//! an actor it asks) failed with, as a stable [`ErrorKind`] plus a message
//! for a human. It knows no protocol: each adapter maps the kind to its own
//! status codes at its edge (the native protocol in `server::status`).

use std::fmt;

/// What went wrong, stable across releases (adapters and tests match on
/// it; the message is for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A bug or an unexpected internal state.
    Internal,
    /// The broker is overloaded; try again later.
    Busy,
    /// The request names an operation this broker does not serve.
    Unsupported,
    /// The request could not be decoded.
    Malformed,
    /// A field of the request is out of range or inconsistent.
    InvalidArgument,
    /// The topic does not exist.
    TopicNotExist,
    /// The topic exists but not the queue.
    QueueNotExist,
    /// No such message.
    MessageNotFound,
    /// The member's generation is not the group's current one.
    IllegalGeneration,
    /// The member id is not (or no longer) in the group.
    UnknownMember,
    /// The group is rebalancing; join again.
    RebalanceInProgress,
    /// The group has live members (or the request needs a member).
    GroupNotEmpty,
    /// The group does not exist.
    GroupNotExist,
    /// Another broker coordinates this group.
    NotCoordinator,
    /// The queue belongs to another broker group.
    NotQueueOwner,
    /// The store failed (disk, corruption).
    Store,
    /// A component the operation needs is not available right now.
    Unavailable,
    /// The disk is full: the write was refused, nothing was stored.
    DiskFull,
    /// This broker is a read-only slave; the message names the master.
    NotMaster,
    /// Sync replication timed out: stored on the master only.
    SlaveNotAvailable,
    /// The caller may not do this (ACL), or its signature does not hold.
    AccessDenied,
    /// The topic is the broker's own; clients may not create, delete or
    /// write it.
    InternalTopic,
}

/// An operation's failure: a kind and a message naming what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct BrokerError {
    kind: ErrorKind,
    message: String,
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A result of the broker core.
pub type BrokerResult<T> = Result<T, BrokerError>;

impl BrokerError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> BrokerError {
        BrokerError {
            kind,
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Consumes the error into its message.
    pub fn into_message(self) -> String {
        self.message
    }

    /// A bad request field.
    pub fn invalid(message: impl Into<String>) -> BrokerError {
        BrokerError::new(ErrorKind::InvalidArgument, message)
    }

    /// An undecodable request.
    pub fn malformed(message: impl Into<String>) -> BrokerError {
        BrokerError::new(ErrorKind::Malformed, message)
    }

    /// A component that cannot answer now.
    pub fn unavailable(message: impl Into<String>) -> BrokerError {
        BrokerError::new(ErrorKind::Unavailable, message)
    }

    /// A store failure.
    pub fn store(message: impl Into<String>) -> BrokerError {
        BrokerError::new(ErrorKind::Store, message)
    }

    /// An internal failure.
    pub fn internal(message: impl Into<String>) -> BrokerError {
        BrokerError::new(ErrorKind::Internal, message)
    }

    /// A topic that does not exist.
    pub fn topic_not_exist(topic: &str) -> BrokerError {
        BrokerError::new(ErrorKind::TopicNotExist, format!("topic {topic} does not exist"))
    }

    /// An actor whose mailbox is gone (it stopped and is being restarted).
    pub fn mailbox(e: actix::MailboxError) -> BrokerError {
        BrokerError::unavailable(format!("broker component unavailable: {e}"))
    }
}

impl From<std::io::Error> for BrokerError {
    fn from(e: std::io::Error) -> BrokerError {
        BrokerError::store(e.to_string())
    }
}

impl From<crate::store::error::StoreError> for BrokerError {
    fn from(e: crate::store::error::StoreError) -> BrokerError {
        if e.is_no_space() {
            return BrokerError::new(ErrorKind::DiskFull, e.to_string());
        }
        BrokerError::store(e.to_string())
    }
}

impl From<crate::store::disk::DiskFull> for BrokerError {
    fn from(e: crate::store::disk::DiskFull) -> BrokerError {
        BrokerError::new(ErrorKind::DiskFull, e.to_string())
    }
}

impl From<actix::MailboxError> for BrokerError {
    fn from(e: actix::MailboxError) -> BrokerError {
        BrokerError::mailbox(e)
    }
}
