//! The broker's actors. Each is a thin shell over a plain state machine or
//! store call; see `docs/architecture.md` for the tree.

pub mod commitlog_writer;
pub mod dispatcher;
pub mod long_poll;
pub mod pull;
pub mod queue_actor;
pub mod queue_registry;
