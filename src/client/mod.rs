//! The Rust client library.
//!
//! * [`Producer`] — sync, async, oneway and batch sends; round-robin or by
//!   sharding key; retries on another queue/broker.
//! * [`PullConsumer`] — read any queue from any offset, with long polling.
//! * [`GroupConsumer`] — a consumer-group member: broker-coordinated
//!   assignment, heartbeats, rebalancing, committed offsets.
//! * [`PushConsumer`] — a group member calling a listener per message with
//!   bounded concurrency, committing what the listener finished.
//! * [`Admin`] — topics, message lookup by id or key, cluster view.
//!
//! All start from name-server addresses ([`ClientConfig`]) and work inside a
//! tokio runtime or an actix arbiter.
//!
//! Broker groups have a master (id 0) and read-only slaves. Producers send
//! to masters only ([`core::ClientCore::writable_queues`]). Consumers keep
//! every queue of a group with a live master or slave
//! ([`core::ClientCore::queues`]) and read it from the master, or from a
//! slave while the master is down ([`core::ClientCore::read_addr`]); group
//! members keep the commits a down master cannot take and send them once
//! it is back.

pub mod admin;
pub mod consumer;
pub mod core;
pub mod dlq;
pub mod error;
pub mod group;
pub mod producer;
pub mod push;
pub mod remoting;

pub use crate::acl::Credentials;
pub use admin::Admin;
pub use consumer::{PullConsumer, PullResult};
pub use core::{ClientConfig, MessageQueue};
pub use error::{ClientError, ClientResult};
pub use group::{Delivered, GroupConsumer, GroupConsumerConfig, StartPosition};
pub use producer::{Producer, SendResult};
pub use push::{Listener, PushConsumer};
pub use remoting::{ConnectOptions, RemotingConnection};
