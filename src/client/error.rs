//! Errors the client library reports.

use crate::wire::{DecodeError, Status};

/// Anything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect, or the connection failed.
    #[error("connection to {addr}: {source}")]
    Io {
        /// Peer address.
        addr: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// No response within the deadline.
    #[error("{what} timed out after {millis} ms")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The deadline.
        millis: u64,
    },
    /// The connection closed before the response arrived.
    #[error("connection to {0} closed")]
    Closed(String),
    /// The server answered with an error status.
    #[error("server error {status}: {message}")]
    Server {
        /// The status code.
        status: Status,
        /// The server's message.
        message: String,
    },
    /// The server's answer did not decode.
    #[error("bad response: {0}")]
    Decode(#[from] DecodeError),
    /// The request itself is invalid; nothing was sent.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No broker serves the topic (or no name server answered).
    #[error("no route: {0}")]
    NoRoute(String),
}

impl ClientError {
    /// The server status, if the server answered with an error.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Could the same request succeed if tried again (on another broker,
    /// after a fresh route, or a little later)? True for network failures,
    /// timeouts, a missing route and transient server statuses (see
    /// [`transient_status`]); false for a request that is wrong in itself
    /// (invalid, too large, malformed, unknown topic, refused).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Io { .. } | ClientError::Timeout { .. } | ClientError::Closed(_) | ClientError::NoRoute(_) => {
                true
            }
            ClientError::Server { status, .. } => transient_status(*status),
            ClientError::Decode(_) | ClientError::Invalid(_) => false,
        }
    }
}

/// Is a server status transient, i.e. may the same request succeed when
/// retried? Transient: system error, busy, store error, service unavailable
/// (starting or stopping), disk full (space comes back when retention runs,
/// and a retry may go to another broker group), not master (the route was
/// stale or the master is down: a retry may go to another broker group), queue not existing (a stale route: retried after
/// a fresh lookup) and a group rebalancing. Everything else — invalid
/// argument, malformed frame, unsupported version, frame too large, unknown
/// command, unknown topic (brokers not creating topics), message not found,
/// group membership errors, access denied and internal topic (the same
/// account gets the same answer everywhere), and slave not available (a
/// sync-replication send stored on the master that no slave confirmed in
/// time: a retry could store it twice) — is permanent.
pub fn transient_status(status: Status) -> bool {
    match status {
        Status::SystemError
        | Status::SystemBusy
        | Status::StoreError
        | Status::ServiceUnavailable
        | Status::DiskFull
        | Status::NotMaster
        | Status::QueueNotExist
        | Status::RebalanceInProgress => true,
        // Permanent, and any status added later until classified here.
        _ => false,
    }
}

/// Result of a client call.
pub type ClientResult<T> = Result<T, ClientError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status: Status) -> ClientError {
        ClientError::Server {
            status,
            message: String::new(),
        }
    }

    #[test]
    fn network_trouble_and_busy_servers_are_transient() {
        let io = ClientError::Io {
            addr: "a".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(io.is_transient());
        assert!(ClientError::Closed("a".into()).is_transient());
        assert!(ClientError::NoRoute("x".into()).is_transient());
        assert!(ClientError::Timeout {
            what: "x".into(),
            millis: 1
        }
        .is_transient());
        for s in [
            Status::SystemError,
            Status::SystemBusy,
            Status::StoreError,
            Status::ServiceUnavailable,
            Status::QueueNotExist,
            Status::NotMaster,
        ] {
            assert!(server(s).is_transient(), "{s:?}");
        }
    }

    #[test]
    fn wrong_requests_are_permanent() {
        assert!(!ClientError::Invalid("too big".into()).is_transient());
        for s in [
            Status::InvalidArgument,
            Status::MalformedFrame,
            Status::FrameTooLarge,
            Status::TopicNotExist,
            Status::UnknownCommand,
            Status::UnsupportedVersion,
            Status::SlaveNotAvailable,
            Status::AccessDenied,
            Status::InternalTopic,
        ] {
            assert!(!server(s).is_transient(), "{s:?}");
        }
    }
}
