//! Per-message delivery (RabbitMQ-style semantics on the log): the plain
//! state machines behind ACK/NACK, redelivery with backoff, dead letters,
//! TTL expiry and delayed messages. Nothing here does I/O or reads a clock:
//! time comes in as milliseconds and effects go out as values, so every rule
//! is unit-tested with a fake clock. The queue actor and the delay scheduler
//! carry the effects out.
//!
//! * [`cursor`] — one group's delivery state on one queue: what is in
//!   flight, what waits for a retry, what is settled, and the offset that
//!   may be committed.
//! * [`expiry`] — TTL deadlines of a queue, in deadline order.
//! * [`queue`] — one queue's delivery (pulls, and receives for every group
//!   with its cursor), with [`long_poll`] for parked requests.
//! * [`delay`] — delay levels and the pending delayed messages.

pub mod cursor;
pub mod delay;
pub mod expiry;
pub mod long_poll;
pub mod queue;

use serde::{Deserialize, Serialize};

use crate::config::DeliverySection;

/// Why a message went to a dead-letter topic (the `DLQ_REASON` property).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeadLetterReason {
    /// A consumer rejected it (`NACK` without requeue).
    Rejected,
    /// It failed (NACK or ack timeout) more often than the retry limit.
    MaxDeliveries,
    /// Its TTL passed before it was delivered.
    Expired,
}

impl DeadLetterReason {
    /// The property value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::MaxDeliveries => "max-deliveries",
            DeadLetterReason::Expired => "expired",
        }
    }
}

pub use crate::config::DEFAULT_RETRY_BACKOFF_MS;

/// Retry rules of per-message delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait before the n-th redelivery after a NACK (index n-1); the last
    /// entry repeats when there are more retries than entries.
    pub backoff_ms: Vec<u64>,
    /// Redeliveries after the first delivery; the next failure dead-letters.
    pub max_retries: u32,
    /// Most messages of one queue a group may have delivered but unsettled
    /// (in flight, waiting for a retry or for the dead-letter write): a
    /// bound on the broker's memory per group and queue.
    pub max_unsettled: u64,
}

impl Default for RetryPolicy {
    /// The policy of a default `[delivery]` section.
    fn default() -> RetryPolicy {
        DeliverySection::default().retry_policy()
    }
}

// The conversion lives here, not in `config`, so that `config` stays a
// leaf every layer may import.
impl DeliverySection {
    /// The retry rules these settings describe.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            backoff_ms: self.retry_backoff_ms.clone(),
            max_retries: self.max_retries,
            max_unsettled: self.max_unsettled.max(1),
        }
    }
}

impl RetryPolicy {
    /// The wait before redelivery number `retry` (1-based).
    pub fn backoff(&self, retry: u32) -> u64 {
        let i = (retry.max(1) - 1) as usize;
        self.backoff_ms.get(i).or(self.backoff_ms.last()).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_schedule_and_repeats_its_last_step() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), 10_000);
        assert_eq!(p.backoff(3), 60_000);
        assert_eq!(p.backoff(16), 7_200_000);
        assert_eq!(p.backoff(40), 7_200_000);
        let none = RetryPolicy {
            backoff_ms: vec![],
            ..RetryPolicy::default()
        };
        assert_eq!(none.backoff(1), 0);
    }
}
