//! Events the broker pushes to a client unasked, in protocol-neutral form.
//!
//! Actors (a group coordinator telling a member to rebalance) hand a
//! [`PushEvent`] to the member's [`PushSink`]; the sink is provided by the
//! adapter the client is connected through, which encodes the event in its
//! own protocol (the native adapter as a `NOTIFY_REBALANCE` push frame).
//! Nothing here knows a wire format.

/// Something the broker tells a client without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushEvent {
    /// Group `group` started a rebalance (towards a generation after
    /// `generation`): the member should stop, commit and rejoin.
    Rebalance {
        /// The group.
        group: String,
        /// The generation that is ending.
        generation: u64,
    },
}

/// Where push events for one client go.
pub trait PushSink: Send + Sync {
    /// Queues `event` for the client; false when it could not be (the
    /// client is gone or not reading): it learns the news another way.
    fn push(&self, event: PushEvent) -> bool;
}
