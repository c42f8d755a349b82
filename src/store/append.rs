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
use super::error::StoreError;
use super::record::RecordFields;
use super::{DispatchEntry, Store};
use crate::message::{split_keys, tag_hash, PROPERTY_KEYS, PROPERTY_TAGS};
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
    /// Producer address ([`append_batch`]; [`append_to`] takes each
    /// destination's own).
    pub born_host: SocketAddr,
    /// This broker's advertised address.
    pub store_host: SocketAddr,
    /// Store timestamp, ms since the epoch.
    pub now_ms: u64,
}

/// Where a batch was stored: the domain result of an append (the native
/// protocol encodes it as its `SendResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The queue the producer addressed.
    pub queue_id: u32,
    /// This broker's advertised address (part of each message id).
    pub store_host: SocketAddr,
    /// Queue and physical offset of each record, in the producer's order
    /// (a delayed message: its place in the delay topic).
    pub stored: Vec<StoredAt>,
}

/// One destination's share of a batch: records for one (topic, queue),
/// all from `born_host`. A batch of several destinations is still reserved
/// and written as one ([`append_to`]).
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// The topic (it must exist).
    pub topic: &'a Arc<str>,
    /// The queue (it must exist).
    pub queue_id: u32,
    /// Who sent these records (the producer, or the broker itself).
    pub born_host: SocketAddr,
    /// The records, in order.
    pub entries: &'a [AppendEntry],
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
    let dest = Destination {
        topic,
        queue_id,
        born_host: ctx.born_host,
        entries,
    };
    append_to(store, appender, &[dest], ctx)
}

/// Appends the records of every destination, in order, as one batch: one
/// reservation per destination, one size check and one `pwritev` sequence
/// for all, one publication of the write position. Either every record is
/// stored or none is (the reserved queue offsets are given back). The
/// result lists records in destination order. `ctx.born_host` is unused:
/// each destination names its own.
///
/// The consume-queue and index space the records will need is allocated
/// before anything is written ([`ConsumeQueue::reserve_through`],
/// [`IndexStore::reserve`]), so their dispatch cannot fail for want of
/// space once the producer is answered. A write that finds no space fails
/// with [`StoreError::DiskFull`] and makes the store's
/// [`DiskGuard`](super::disk::DiskGuard) refuse sends until space is back.
///
/// [`ConsumeQueue::reserve_through`]: super::consume_queue::ConsumeQueue::reserve_through
/// [`IndexStore::reserve`]: super::index::IndexStore::reserve
pub fn append_to(
    store: &Store,
    appender: &mut Appender,
    dests: &[Destination<'_>],
    ctx: AppendContext,
) -> Result<AppendedBatch, AppendError> {
    match append_reserved(store, appender, dests, ctx) {
        Err(AppendError::Io(e)) if e.is_no_space() => Err(AppendError::Io(store.no_space(e))),
        other => other,
    }
}

/// Allocates the consume-queue files for `dests`' queue offsets (from
/// `firsts`) and index room for their keys; returns the keys reserved.
fn reserve_dispatch_space(store: &Store, dests: &[Destination<'_>], firsts: &[u64]) -> Result<u64, StoreError> {
    let mut keys = 0u64;
    for (d, first) in dests.iter().zip(firsts) {
        if d.entries.is_empty() {
            continue;
        }
        store
            .queues
            .reserve(d.topic, d.queue_id, first + d.entries.len() as u64 - 1)?;
        keys += d
            .entries
            .iter()
            .filter_map(|e| e.properties.get(PROPERTY_KEYS))
            .map(|k| split_keys(k).count() as u64)
            .sum::<u64>();
    }
    if keys > 0 {
        store
            .index
            .lock()
            .map_err(|_| StoreError::Poisoned("index"))?
            .reserve(keys)?;
    }
    Ok(keys)
}

fn append_reserved(
    store: &Store,
    appender: &mut Appender,
    dests: &[Destination<'_>],
    ctx: AppendContext,
) -> Result<AppendedBatch, AppendError> {
    // First queue offset of each destination; given back in reverse order
    // on failure, so two destinations naming one queue restore its start.
    let mut firsts: Vec<u64> = Vec::with_capacity(dests.len());
    for d in dests {
        match store.reserve_queue_offsets(d.topic, d.queue_id, d.entries.len() as u64) {
            Ok(first) => firsts.push(first),
            Err(e) => {
                release(store, &dests[..firsts.len()], &firsts)?;
                return Err(e.into());
            }
        }
    }
    let keys = match reserve_dispatch_space(store, dests, &firsts) {
        Ok(keys) => keys,
        Err(e) => {
            release(store, dests, &firsts)?;
            return Err(e.into());
        }
    };
    let total: usize = dests.iter().map(|d| d.entries.len()).sum();
    // Records are asked for in order (0..total, twice): walk the
    // destinations with a cursor instead of searching for each index.
    let mut at = (0usize, 0usize); // (destination, index of its first record)
    let placed = appender.append(total, |i, phys| {
        if i < at.1 {
            at = (0, 0); // the second pass starts over
        }
        while i - at.1 >= dests[at.0].entries.len() {
            at = (at.0 + 1, at.1 + dests[at.0].entries.len());
        }
        let (d, j) = (&dests[at.0], i - at.1);
        let e = &d.entries[j];
        RecordFields {
            queue_id: d.queue_id,
            flags: e.flags,
            queue_offset: firsts[at.0] + j as u64,
            phys_offset: phys,
            born_timestamp: e.born_timestamp,
            store_timestamp: ctx.now_ms,
            reconsume_times: 0,
            born_host: d.born_host,
            store_host: ctx.store_host,
            topic: d.topic,
            properties: &e.properties,
            body: &e.body,
        }
    });
    let placed = match placed {
        Ok(p) => p,
        Err(e) => {
            release(store, dests, &firsts)?;
            if keys > 0 {
                if let Ok(mut index) = store.index.lock() {
                    index.cancel_reserved(keys);
                }
            }
            return Err(e);
        }
    };
    let mut stored = Vec::with_capacity(total);
    let mut dispatch = Vec::with_capacity(total);
    let mut placed = placed.iter();
    for (d, first) in dests.iter().zip(&firsts) {
        let topic_ttl = store.topics.get(d.topic).and_then(|t| t.ttl_ms);
        let expiry = store.expire_at;
        for ((j, e), p) in d.entries.iter().enumerate().zip(placed.by_ref()) {
            let queue_offset = first + j as u64;
            stored.push(StoredAt {
                queue_offset,
                phys_offset: p.phys_offset,
            });
            dispatch.push(DispatchEntry {
                topic: d.topic.clone(),
                queue_id: d.queue_id,
                queue_offset,
                phys_offset: p.phys_offset,
                size: p.size,
                tag_hash: e.properties.get(PROPERTY_TAGS).map_or(0, |t| tag_hash(t)),
                keys: e.properties.get(PROPERTY_KEYS).cloned(),
                store_timestamp: ctx.now_ms,
                expire_at: expiry.and_then(|f| f(ctx.now_ms, &e.properties, topic_ttl)),
            });
        }
    }
    Ok(AppendedBatch {
        stored,
        dispatch,
        end: appender.log().write_pos(),
    })
}

/// Gives back the queue offsets reserved for `dests` (last first).
fn release(store: &Store, dests: &[Destination<'_>], firsts: &[u64]) -> Result<(), AppendError> {
    for (d, first) in dests.iter().zip(firsts).rev() {
        store.release_queue_offsets(d.topic, d.queue_id, *first)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fsutil::offset_file_name;
    use crate::store::testing::{append, entry, small_config};
    use crate::store::topics::TopicConfig;

    fn ctx() -> AppendContext {
        AppendContext {
            born_host: "127.0.0.1:9".parse().unwrap(),
            store_host: "127.0.0.1:2".parse().unwrap(),
            now_ms: 1000,
        }
    }

    fn bodies(n: usize, len: usize) -> Vec<AppendEntry> {
        (0..n)
            .map(|_| AppendEntry {
                flags: 0,
                born_timestamp: 1,
                properties: BTreeMap::new(),
                body: Bytes::from(vec![7u8; len]),
            })
            .collect()
    }

    #[test]
    fn destinations_are_stored_in_order_each_with_its_queue_and_origin() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&small_config(dir.path())).unwrap();
        append(&store, "t", 0, &[entry("before", None, None)]);
        store.topics.get_or_create("u", TopicConfig::with_queues(2)).unwrap();
        let (t, u): (Arc<str>, Arc<str>) = (Arc::from("t"), Arc::from("u"));
        let (a, b) = ("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
        let first = [entry("t1", None, None), entry("t2", None, None)];
        let second = [entry("u1", None, None)];
        let dests = [
            Destination {
                topic: &t,
                queue_id: 0,
                born_host: a,
                entries: &first,
            },
            Destination {
                topic: &u,
                queue_id: 1,
                born_host: b,
                entries: &second,
            },
        ];
        let mut appender = Appender::new(store.log.clone());
        let batch = append_to(&store, &mut appender, &dests, ctx()).unwrap();
        let seen: Vec<_> = batch
            .stored
            .iter()
            .map(|s| {
                let r = store.log.record_at(s.phys_offset).unwrap();
                (
                    r.topic,
                    r.queue_id,
                    r.queue_offset,
                    r.born_host,
                    String::from_utf8(r.body.to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("t".to_string(), 0, 1, a, "t1".to_string()),
                ("t".to_string(), 0, 2, a, "t2".to_string()),
                ("u".to_string(), 1, 0, b, "u1".to_string()),
            ]
        );
        assert_eq!(batch.dispatch.len(), 3);
        assert_eq!(batch.end, store.log.write_pos());
    }

    #[test]
    fn a_batch_failing_midway_stores_nothing_for_any_destination() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(dir.path());
        let (store, _) = Store::open(&cfg).unwrap();
        append(&store, "t", 0, &[entry("before", None, None)]);
        store.topics.get_or_create("u", TopicConfig::with_queues(2)).unwrap();
        let end = store.log.write_pos();
        // The next segment cannot be created (a directory holds its name):
        // a batch crossing into it fails after writing part of itself.
        let blocker = dir.path().join("commitlog").join(offset_file_name(cfg.segment_bytes));
        std::fs::create_dir(&blocker).unwrap();
        let (t, u): (Arc<str>, Arc<str>) = (Arc::from("t"), Arc::from("u"));
        let (first, second) = (bodies(30, 1000), bodies(60, 1000));
        let dests = [
            Destination {
                topic: &t,
                queue_id: 0,
                born_host: ctx().born_host,
                entries: &first,
            },
            Destination {
                topic: &u,
                queue_id: 1,
                born_host: ctx().born_host,
                entries: &second,
            },
            Destination {
                topic: &t,
                queue_id: 0,
                born_host: ctx().born_host,
                entries: &first[..2],
            },
        ];
        let mut appender = Appender::new(store.log.clone());
        let err = append_to(&store, &mut appender, &dests, ctx()).unwrap_err();
        assert!(matches!(err, AppendError::Io(_)), "{err}");
        assert_eq!(store.log.write_pos(), end, "nothing published");
        assert_eq!(store.log.segment_count(), 1);

        // Every destination's queue offsets were given back.
        std::fs::remove_dir(&blocker).unwrap();
        let small = [entry("t-after", None, None)];
        let more = [entry("u-after", None, None)];
        let again = [
            Destination {
                topic: &t,
                queue_id: 0,
                born_host: ctx().born_host,
                entries: &small,
            },
            Destination {
                topic: &u,
                queue_id: 1,
                born_host: ctx().born_host,
                entries: &more,
            },
        ];
        let batch = append_to(&store, &mut appender, &again, ctx()).unwrap();
        let offsets: Vec<u64> = batch.stored.iter().map(|s| s.queue_offset).collect();
        assert_eq!(offsets, [1, 0]);
        assert_eq!(batch.stored[0].phys_offset, end, "written where the failed batch began");
    }

    #[test]
    fn an_oversized_record_refuses_the_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(dir.path());
        let (store, _) = Store::open(&cfg).unwrap();
        append(&store, "t", 0, &[entry("before", None, None)]);
        let end = store.log.write_pos();
        let t: Arc<str> = Arc::from("t");
        let (fine, huge) = (bodies(3, 10), bodies(1, cfg.segment_bytes as usize));
        let dests = [
            Destination {
                topic: &t,
                queue_id: 0,
                born_host: ctx().born_host,
                entries: &fine,
            },
            Destination {
                topic: &t,
                queue_id: 1,
                born_host: ctx().born_host,
                entries: &huge,
            },
        ];
        let mut appender = Appender::new(store.log.clone());
        let err = append_to(&store, &mut appender, &dests, ctx()).unwrap_err();
        assert!(matches!(err, AppendError::TooLarge { .. }), "{err}");
        assert_eq!(store.log.write_pos(), end);
        let batch = append_batch(&store, &mut appender, &t, 0, &fine, ctx()).unwrap();
        assert_eq!(batch.stored[0].queue_offset, 1, "the offsets were given back");
    }
}
