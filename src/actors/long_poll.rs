//! The long-poll table moved to [`crate::delivery::long_poll`]: the queue's
//! delivery state machine parks pulls and receives in it. Re-exported here
//! for the paths that named it.

pub use crate::delivery::long_poll::{LongPolls, Parked};
