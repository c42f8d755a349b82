//! The Rust client library: connections, producer, pull consumer, admin.

pub mod error;
pub mod remoting;

pub use error::{ClientError, ClientResult};
pub use remoting::RemotingConnection;
