//! One batch append, as the commitlog writer performs it: reserve queue
//! offsets, encode and copy the records, and describe them for the
//! Dispatcher. Plain code, so tests can drive the store without actors.
//!
//! The store does not interpret TTLs: each record's deadline comes from the
//! [`ExpiryFn`] the store was opened with
//! ([`Store::open_with_internal_topics`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use super::commitlog::{AppendError, Appender};
use super::record::RecordFields;
use super::{DispatchEntry, Store};
use crate::message::{tag_hash, PROPERTY_KEYS, PROPERTY_TAGS};
pub use crate::record::StoredAt;

/// Computes when a record expires, in ms since the epoch, from its store
/// time, its properties and its topic's default TTL (`None`: the topic has
/// none). Returns `None` when the record never expires. The broker passes
/// `delivery::expiry::expire_at`.
pub type ExpiryFn =
    fn(store_timestamp: u64, properties: &BTreeMap<String, String>, topic_ttl_ms: Option<u64>) -> Option<u64>;

/// One message to append: everything but where it gets stored. The
/// broker converts each `SEND_MESSAGE` entry into one by moving its fields
/// (the body stays a slice of the request frame, never copied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendEntry {
    /// Application flags, stored as given.
    pub flags: u32,
    /// When the producer created it, ms since the Unix epoch.
    pub born_timestamp: u64,
    /// Tags (`TAGS`), keys (`KEYS`) and user properties.
    pub properties: BTreeMap<String, String>,
    /// The payload.
    pub body: Bytes,
}

/// A stored batch: where each record went and what to dispatch.
#[derive(Debug)]
pub struct AppendedBatch {
    /// Queue and physical offset of each record, in batch order.
    pub stored: Vec<StoredAt>,
    /// Consume-queue/index work for the Dispatcher.
    pub dispatch: Vec<DispatchEntry>,
    /// Commitlog write position after the batch.
    pub end: u64,
}

/// Who sent the batch and who stores it, and when.
#[derive(Debug, Clone, Copy)]
pub struct AppendContext {
    /// Producer address.
    pub born_host: SocketAddr,
    /// This broker's advertised address.
    pub store_host: SocketAddr,
    /// Store timestamp, ms since the epoch.
    pub now_ms: u64,
}

/// Appends `entries` to (topic, queue). On failure nothing is published and
/// the reserved queue offsets are given back.
pub fn append_batch(
    store: &Store,
    appender: &mut Appender,
    topic: &Arc<str>,
    queue_id: u32,
    entries: &[AppendEntry],
    ctx: AppendContext,
) -> Result<AppendedBatch, AppendError> {
    let n = entries.len() as u64;
    let first = store.reserve_queue_offsets(topic, queue_id, n)?;
    let placed = appender.append(entries.len(), |i, phys| {
        let e = &entries[i];
        RecordFields {
            queue_id,
            flags: e.flags,
            queue_offset: first + i as u64,
            phys_offset: phys,
            born_timestamp: e.born_timestamp,
            store_timestamp: ctx.now_ms,
            reconsume_times: 0,
            born_host: ctx.born_host,
            store_host: ctx.store_host,
            topic,
            properties: &e.properties,
            body: &e.body,
        }
    });
    let placed = match placed {
        Ok(p) => p,
        Err(e) => {
            store.release_queue_offsets(topic, queue_id, first)?;
            return Err(e);
        }
    };
    let stored = placed
        .iter()
        .enumerate()
        .map(|(i, p)| StoredAt {
            queue_offset: first + i as u64,
            phys_offset: p.phys_offset,
        })
        .collect();
    let topic_ttl = store.topics.get(topic).and_then(|t| t.ttl_ms);
    let expiry = store.expire_at;
    let dispatch = entries
        .iter()
        .zip(&placed)
        .enumerate()
        .map(|(i, (e, p))| DispatchEntry {
            topic: topic.clone(),
            queue_id,
            queue_offset: first + i as u64,
            phys_offset: p.phys_offset,
            size: p.size,
            tag_hash: e.properties.get(PROPERTY_TAGS).map_or(0, |t| tag_hash(t)),
            keys: e.properties.get(PROPERTY_KEYS).cloned(),
            store_timestamp: ctx.now_ms,
            expire_at: expiry.and_then(|f| f(ctx.now_ms, &e.properties, topic_ttl)),
        })
        .collect();
    Ok(AppendedBatch {
        stored,
        dispatch,
        end: appender.log().write_pos(),
    })
}
