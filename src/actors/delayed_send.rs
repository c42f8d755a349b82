//! The send path of delayed messages: a message asking for a delay level or
//! a deliver-at time is stored in the delay topic (see
//! [`crate::actors::delay_scheduler`]) and handed to the scheduler.

use std::collections::BTreeMap;

use actix::Addr;

use super::delay_scheduler::{DelayScheduler, Scheduled};
use super::services::{AppendBatch, BrokerServices};
use crate::clock::now_millis;
use crate::delivery::delay::{requested_delay, Delayed, DELAY_TOPIC};
use crate::delivery::props;
use crate::error::{BrokerError, ErrorKind};
use crate::store::append::AppendEntry;
use crate::wire::send::{SendResponse, StoredAt};

/// Checks a batch's delivery properties in one pass: a `TTL` must be a
/// number of milliseconds. Returns each entry's delay when any entry asks
/// for one, `None` for an ordinary batch.
pub fn check_batch(entries: &[AppendEntry], max_delay_ms: u64) -> Result<Option<Vec<Option<Delayed>>>, BrokerError> {
    let mut asks_delay = false;
    for e in entries {
        if let Some(bad) = e.properties.get(props::TTL).filter(|v| v.parse::<u64>().is_err()) {
            return Err(BrokerError::new(
                ErrorKind::InvalidArgument,
                format!("TTL {bad:?} is not a number of milliseconds"),
            ));
        }
        asks_delay |= e.properties.contains_key(props::DELAY_LEVEL) || e.properties.contains_key(props::DELIVER_AT);
    }
    if !asks_delay {
        return Ok(None);
    }
    let delays = delays_of(entries, max_delay_ms)?;
    Ok(delays.iter().any(Option::is_some).then_some(delays))
}

/// The delay each entry of a batch asks for; errors name the bad property.
fn delays_of(entries: &[AppendEntry], max_delay_ms: u64) -> Result<Vec<Option<Delayed>>, BrokerError> {
    let now = now_millis();
    entries
        .iter()
        .map(|e| {
            requested_delay(&e.properties, now, max_delay_ms)
                .map_err(|m| BrokerError::new(ErrorKind::InvalidArgument, m))
        })
        .collect()
}

/// Stores a batch some of whose messages are delayed: immediate ones go
/// to the real queue, delayed ones to their delay queue. The response
/// lists, in batch order, where each was stored (for a delayed message:
/// its place in the delay topic, which its message id locates). Appends go
/// through `services`; the delayed ones are announced to `scheduler`.
pub async fn send_with_delays(
    services: &BrokerServices,
    scheduler: &Addr<DelayScheduler>,
    req: AppendBatch,
    delays: Vec<Option<Delayed>>,
) -> Result<SendResponse, BrokerError> {
    let mut stored = vec![
        StoredAt {
            queue_offset: 0,
            phys_offset: 0
        };
        req.entries.len()
    ];
    let mut immediate: Vec<(usize, AppendEntry)> = Vec::new();
    let mut held: BTreeMap<u32, Vec<(usize, u64, AppendEntry)>> = BTreeMap::new();
    for (i, (entry, delay)) in req.entries.into_iter().zip(delays).enumerate() {
        let mut entry = entry;
        match delay {
            None => immediate.push((i, entry)),
            Some(d) => {
                entry
                    .properties
                    .insert(props::REAL_TOPIC.to_string(), req.topic.clone());
                entry
                    .properties
                    .insert(props::REAL_QUEUE.to_string(), req.queue_id.to_string());
                entry.properties.insert(props::DUE_AT.to_string(), d.due_at.to_string());
                held.entry(d.delay_queue).or_default().push((i, d.due_at, entry));
            }
        }
    }
    if !immediate.is_empty() {
        let (idx, entries): (Vec<usize>, Vec<AppendEntry>) = immediate.into_iter().unzip();
        let resp = services
            .append_from(&req.topic, req.queue_id, entries, req.born_host)
            .await?;
        for (i, s) in idx.into_iter().zip(resp.stored) {
            stored[i] = s;
        }
    }
    for (delay_queue, items) in held {
        let mut idx = Vec::with_capacity(items.len());
        let mut dues = Vec::with_capacity(items.len());
        let mut entries = Vec::with_capacity(items.len());
        for (i, due, e) in items {
            idx.push(i);
            dues.push(due);
            entries.push(e);
        }
        let resp = services
            .append_from(DELAY_TOPIC, delay_queue, entries, req.born_host)
            .await?;
        let scheduled = resp
            .stored
            .iter()
            .zip(&dues)
            .map(|(s, due)| (delay_queue, s.queue_offset, *due))
            .collect();
        scheduler.do_send(Scheduled(scheduled));
        for (i, s) in idx.into_iter().zip(resp.stored) {
            stored[i] = s;
        }
    }
    Ok(SendResponse {
        queue_id: req.queue_id,
        store_host: services.store_host,
        stored,
    })
}
