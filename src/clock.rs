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

/// The local hour of day (0..=23) at `now_ms` (ms since the epoch), for
/// settings given as an hour like `store.delete_when`; the UTC hour when the
/// local time cannot be computed.
pub fn local_hour(now_ms: u64) -> u8 {
    let secs = (now_ms / 1000) as libc::time_t;
    // SAFETY: `tm` is a plain C struct for which all-zero is valid, and
    // `localtime_r` (the thread-safe variant) only writes into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    match u8::try_from(tm.tm_hour) {
        Ok(h) if ok && h < 24 => h,
        _ => ((now_ms / 3_600_000) % 24) as u8,
    }
}
