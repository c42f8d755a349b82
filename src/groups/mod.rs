//! Broker-coordinated consumer groups, as plain state machines.
//!
//! * [`assignment`] — queue-assignment strategies (range, round-robin,
//!   sticky), pure functions.
//! * [`coordinator`] — one group's membership, generations and rebalances
//!   (join window, heartbeats, session expiry), driven by explicit inputs
//!   and `now` and answering with [`types::Effect`]s.
//! * [`types`] — the coordinator's requests, effects, errors and config.
//!
//! No runtime and no I/O here: a `GroupCoordinator` actor owns one
//! [`coordinator::GroupState`] per group, arms one timer at
//! [`coordinator::GroupState::next_deadline`] and carries out the effects.

pub mod assignment;
pub mod coordinator;
pub mod types;
