//! The actor tree. Each actor owns one piece of mutable state and is reached
//! only through its mailbox.
//!
//! * [`namesrv`] — the name server's registry of live brokers and routes.
//! * [`namesrv_client`] — a broker's registration with its name servers.

pub mod namesrv;
pub mod namesrv_client;
