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
}

/// Result of a client call.
pub type ClientResult<T> = Result<T, ClientError>;
