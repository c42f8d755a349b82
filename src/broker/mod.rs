//! The protocol-neutral broker core ([`core::BrokerCore`]), the sessions
//! it serves ([`session`]) and where groups are coordinated in a cluster
//! ([`coordination`]). Adapters (`server::native`, `http`) call it; the
//! process that wires it together is `crate::launch`.

pub mod coordination;
pub mod core;
pub mod session;

pub use self::core::BrokerCore;
