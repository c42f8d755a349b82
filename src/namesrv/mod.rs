//! The name server's state machine: routes from topics to broker groups.
//!
//! Brokers register their topics (`REGISTER_BROKER`) periodically; clients
//! ask for routes (`GET_ROUTE`). This module is the pure registry
//! ([`state::NamesrvState`]): no I/O, no clock, no actors, no sockets, and
//! no imports from the layers above it: `actors::namesrv`, the actor owning
//! a registry, and `namesrv_server`, which decodes requests, starts the
//! actor and serves connections (embedded in a broker or standalone).

pub mod state;

pub use state::{BrokerKey, NamesrvState};
