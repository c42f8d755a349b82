//! Process-wide running totals the console's live chart and `ferromq stats`
//! read (the Prometheus counters carry the same figures per label set).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

static MESSAGES_IN: AtomicU64 = AtomicU64::new(0);
static MESSAGES_OUT: AtomicU64 = AtomicU64::new(0);
static BROKER_CONNECTIONS: AtomicI64 = AtomicI64::new(0);
static NAMESRV_CONNECTIONS: AtomicI64 = AtomicI64::new(0);

/// Messages stored.
pub fn add_in(n: u64) {
    MESSAGES_IN.fetch_add(n, Ordering::Relaxed);
}

/// Messages returned to consumers.
pub fn add_out(n: u64) {
    MESSAGES_OUT.fetch_add(n, Ordering::Relaxed);
}

/// A connection of `role` opened (+1) or closed (-1).
pub fn connections(role: &str, delta: i64) {
    let c = if role == "namesrv" {
        &NAMESRV_CONNECTIONS
    } else {
        &BROKER_CONNECTIONS
    };
    c.fetch_add(delta, Ordering::Relaxed);
}

/// (messages in, messages out, broker connections, name-server connections).
pub fn snapshot() -> (u64, u64, i64, i64) {
    (
        MESSAGES_IN.load(Ordering::Relaxed),
        MESSAGES_OUT.load(Ordering::Relaxed),
        BROKER_CONNECTIONS.load(Ordering::Relaxed),
        NAMESRV_CONNECTIONS.load(Ordering::Relaxed),
    )
}
