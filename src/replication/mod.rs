//! Master → slave replication as state machines (no I/O, no clock: every
//! input carries `now`): where a slave starts following
//! ([`handshake`]), what the master knows of its slaves and which sync
//! acknowledgements their confirmations release ([`progress`]), and the
//! slave's own progress and retry pauses ([`follower`]). The actors in
//! `actors::replication` drive them.

pub mod follower;
pub mod handshake;
pub mod progress;
