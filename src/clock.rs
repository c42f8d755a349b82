//! The broker's one wall clock.
//!
//! Everything that stamps or compares times in milliseconds since the Unix
//! epoch (store timestamps, TTL and delay deadlines, ack deadlines, client
//! liveness) reads it here. Plain logic (`store`, `delivery`, `groups`) never
//! reads the clock itself: the actors and handlers driving it pass `now` in,
//! so unit tests can use a fake clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch (0 if the system clock is
/// set before the epoch).
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
