//! The send path of delayed messages, as plain functions: a message asking
//! for a delay level or a deliver-at time is stored in the delay topic (see
//! [`crate::actors::delay_scheduler`]), in the same atomic append as the
//! rest of its batch, and announced to the scheduler once stored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use actix::Message;

use super::commitlog_writer::{Append, AppendGroup};
use crate::clock::now_millis;
use crate::delivery::delay::{requested_delay, Delayed, DELAY_TOPIC};
use crate::error::{BrokerError, ErrorKind};
use crate::message::props;
use crate::store::append::{AppendEntry, Appended, StoredAt};

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

/// Messages just stored in the delay topic: (delay queue, offset, due at).
/// Sent to the `DelayScheduler` once their append is acknowledged.
#[derive(Message, Debug, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct Scheduled(pub Vec<(u32, u64, u64)>);

/// A producer's batch some of whose messages are delayed, as one atomic
/// append: immediate messages go to the real queue, each delayed one to
/// its delay queue (carrying its real topic, queue and due time).
#[derive(Debug)]
pub struct DelayedBatch {
    /// The writer's message: the immediate group first (if any), then one
    /// group per delay queue.
    pub append: Append,
    /// How to read the writer's answer back in batch order.
    pub pending: PendingDelays,
}

/// What a [`DelayedBatch`] needs once its append is acknowledged.
#[derive(Debug)]
pub struct PendingDelays {
    queue_id: u32,
    /// For each record in group order: its index in the producer's batch.
    positions: Vec<usize>,
    /// For each record in group order: (delay queue, due at) when delayed.
    dues: Vec<Option<(u32, u64)>>,
}

/// Splits a batch by destination (see [`DelayedBatch`]).
pub fn route_delays(
    topic: &str,
    queue_id: u32,
    born_host: SocketAddr,
    entries: Vec<AppendEntry>,
    delays: Vec<Option<Delayed>>,
) -> DelayedBatch {
    let mut immediate: Vec<(usize, AppendEntry)> = Vec::new();
    let mut held: BTreeMap<u32, Vec<(usize, u64, AppendEntry)>> = BTreeMap::new();
    for (i, (mut entry, delay)) in entries.into_iter().zip(delays).enumerate() {
        match delay {
            None => immediate.push((i, entry)),
            Some(d) => {
                let p = &mut entry.properties;
                p.insert(props::REAL_TOPIC.to_string(), topic.to_string());
                p.insert(props::REAL_QUEUE.to_string(), queue_id.to_string());
                p.insert(props::DUE_AT.to_string(), d.due_at.to_string());
                held.entry(d.delay_queue).or_default().push((i, d.due_at, entry));
            }
        }
    }
    let total = immediate.len() + held.values().map(Vec::len).sum::<usize>();
    let mut positions = Vec::with_capacity(total);
    let mut dues = Vec::with_capacity(total);
    let mut groups = Vec::with_capacity(1 + held.len());
    if !immediate.is_empty() {
        let entries = immediate
            .into_iter()
            .map(|(i, e)| {
                positions.push(i);
                dues.push(None);
                e
            })
            .collect();
        groups.push(AppendGroup {
            topic: Arc::from(topic),
            queue_id,
            born_host,
            entries,
        });
    }
    let delay_topic: Arc<str> = Arc::from(DELAY_TOPIC);
    for (delay_queue, items) in held {
        let entries = items
            .into_iter()
            .map(|(i, due, e)| {
                positions.push(i);
                dues.push(Some((delay_queue, due)));
                e
            })
            .collect();
        groups.push(AppendGroup {
            topic: delay_topic.clone(),
            queue_id: delay_queue,
            born_host,
            entries,
        });
    }
    DelayedBatch {
        append: Append { groups },
        pending: PendingDelays {
            queue_id,
            positions,
            dues,
        },
    }
}

impl PendingDelays {
    /// Puts the writer's answer (records in group order) back in batch
    /// order, and lists the delayed messages for the scheduler.
    pub fn finish(self, appended: Appended) -> (Appended, Scheduled) {
        let zero = StoredAt {
            queue_offset: 0,
            phys_offset: 0,
        };
        let mut stored = vec![zero; self.positions.len()];
        let mut scheduled = Vec::new();
        for ((at, i), due) in appended.stored.into_iter().zip(self.positions).zip(self.dues) {
            if let Some(s) = stored.get_mut(i) {
                *s = at;
            }
            if let Some((delay_queue, due_at)) = due {
                scheduled.push((delay_queue, at.queue_offset, due_at));
            }
        }
        let appended = Appended {
            queue_id: self.queue_id,
            store_host: appended.store_host,
            stored,
        };
        (appended, Scheduled(scheduled))
    }
}
