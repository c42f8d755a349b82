//! The broker's actors. Each owns one piece of mutable state, is reached
//! only through its mailbox, and is a thin shell over a plain state machine
//! or store call; see `docs/architecture.md` for the tree.
//!
//! * [`commitlog_writer`] — the only commitlog writer; group commit; it
//!   answers under an [`ack_policy`] step.
//! * [`dispatcher`] — consume-queue and index entries for appended records.
//! * [`queue_actor`] — one per topic-queue, a shell over
//!   `delivery::queue::QueueDelivery` (pulls, receives, acks, retries, dead
//!   letters, TTLs, long polls); [`queue_delivery`] carries out its effects,
//!   [`pull`] reads the store for it (`StoreLog`), and [`queue_registry`]
//!   finds the actors.
//! * [`delay_scheduler`] — releases delayed messages when due.
//! * [`retention_cleaner`] — deletes expired commitlog segments (and what
//!   points into them) by `store::retention`'s policy.
//! * [`services`] — the one append path (`append_batch`, `append`,
//!   `append_groups`: one atomic writer message per batch; delayed messages
//!   routed by [`delayed_send`]), offset commits and internal topics.
//! * [`namesrv`] — the name server's registry of live brokers and routes.
//! * [`namesrv_client`] — a broker's registration with its name servers.

pub mod ack_policy;
pub mod commitlog_writer;
pub mod delay_scheduler;
pub mod delayed_send;
pub mod dispatcher;
pub mod group_coordinator;
pub mod group_registry;
pub mod heartbeat_scanner;
pub mod namesrv;
pub mod namesrv_client;
pub mod pull;
pub mod queue_actor;
pub mod queue_delivery;
pub mod queue_registry;
pub mod replication;
pub mod retention_cleaner;
pub mod services;
