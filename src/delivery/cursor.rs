//! One consumer group's delivery state on one queue.
//!
//! Offsets below `committed` are settled. Between `committed` and `next`
//! every offset is either settled (acknowledged, filtered out, or written to
//! the dead-letter topic) or has a `Slot`: in flight until its ack
//! deadline, waiting for a retry, or being dead-lettered. `next` is the
//! first offset never delivered. The committed offset therefore never passes
//! an unsettled message, whatever order acknowledgements arrive in.
//!
//! In orderly mode a queue delivers one message at a time: nothing is
//! claimed while an earlier message is unsettled, and a NACKed message is
//! retried in place.

use std::collections::{BTreeMap, BTreeSet};

use super::{DeadLetterReason, RetryPolicy};

/// A message handed out for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Queue offset.
    pub offset: u64,
    /// 1 for the first delivery, 2 for the first redelivery, …
    pub delivery: u32,
}

/// A message that must be copied to the group's dead-letter topic; once the
/// copy is stored call [`Cursor::dead_lettered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetter {
    /// Queue offset.
    pub offset: u64,
    /// How often it was delivered.
    pub deliveries: u32,
    /// Why.
    pub reason: DeadLetterReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    InFlight { deadline: u64, deliveries: u32 },
    Waiting { due: u64, deliveries: u32 },
    DeadLettering { deliveries: u32 },
}

/// Counts for descriptions and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CursorStats {
    /// The offset that may be committed: everything below is settled.
    pub committed: u64,
    /// First offset never delivered.
    pub next: u64,
    /// Delivered, awaiting ACK/NACK.
    pub in_flight: usize,
    /// Waiting for a redelivery.
    pub waiting: usize,
}

/// A group's delivery state on one queue (see the module docs).
#[derive(Debug, Clone)]
pub struct Cursor {
    committed: u64,
    next: u64,
    slots: BTreeMap<u64, Slot>,
    /// (ack deadline, offset) of in-flight messages.
    deadlines: BTreeSet<(u64, u64)>,
    /// (due time, offset) of messages waiting for a retry.
    retries: BTreeSet<(u64, u64)>,
    /// Settled offsets at or above `committed`.
    settled: BTreeSet<u64>,
}

impl Cursor {
    /// A cursor resuming at a committed offset.
    pub fn new(committed: u64) -> Cursor {
        Cursor {
            committed,
            next: committed,
            slots: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            retries: BTreeSet::new(),
            settled: BTreeSet::new(),
        }
    }

    /// The offset that may be committed.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Figures for descriptions and metrics.
    pub fn stats(&self) -> CursorStats {
        CursorStats {
            committed: self.committed,
            next: self.next,
            in_flight: self.deadlines.len(),
            waiting: self.retries.len(),
        }
    }

    /// Claims up to `limit` messages to deliver now, each in flight until
    /// `now + ack_timeout_ms`: due retries first (oldest offset first), then
    /// offsets never delivered, below `max_offset`. In orderly mode at most
    /// one, and only when nothing earlier is unsettled.
    pub fn claim(
        &mut self,
        now: u64,
        limit: usize,
        max_offset: u64,
        ack_timeout_ms: u64,
        orderly: bool,
        policy: &RetryPolicy,
    ) -> Vec<Claim> {
        let deadline = now.saturating_add(ack_timeout_ms);
        let mut out = Vec::new();
        let mut limit = limit;
        if orderly {
            if let Some((&offset, &slot)) = self.slots.range(..self.next).next() {
                // The head of the line is unsettled: only it may go, when due.
                if let Slot::Waiting { due, deliveries } = slot {
                    if due <= now && limit > 0 {
                        out.push(self.redeliver(offset, deliveries, deadline));
                    }
                }
                return out;
            }
            limit = limit.min(1);
        } else {
            let due: Vec<(u64, u64)> = self.retries.range(..=(now, u64::MAX)).take(limit).copied().collect();
            let mut due: Vec<u64> = due.into_iter().map(|(_, o)| o).collect();
            due.sort_unstable();
            for offset in due {
                if let Some(Slot::Waiting { deliveries, .. }) = self.slots.get(&offset).copied() {
                    out.push(self.redeliver(offset, deliveries, deadline));
                }
            }
        }
        while out.len() < limit && self.next < max_offset && self.next - self.committed < policy.max_unsettled {
            let offset = self.next;
            self.next += 1;
            // Settled or dead-lettered ahead of the cursor (TTL expiry).
            if self.settled.contains(&offset) || self.slots.contains_key(&offset) {
                continue;
            }
            self.put(
                offset,
                Slot::InFlight {
                    deadline,
                    deliveries: 1,
                },
            );
            out.push(Claim { offset, delivery: 1 });
        }
        self.advance();
        out
    }

    /// Moves the cursor up to `min`, a queue's new minimum after retention
    /// deleted what lay below it: offsets below are forgotten (in flight,
    /// waiting or settled) and the group continues from `min`. Returns how
    /// many offsets were skipped without ever being delivered.
    pub fn skip_below(&mut self, min: u64) -> u64 {
        if self.committed >= min {
            return 0;
        }
        let skipped = min.saturating_sub(self.next);
        let below: Vec<u64> = self.slots.range(..min).map(|(o, _)| *o).collect();
        for offset in below {
            self.remove(offset);
        }
        self.settled = self.settled.split_off(&min);
        self.committed = min;
        self.next = self.next.max(min);
        self.advance();
        skipped
    }

    /// True when [`Cursor::claim`] would hand something out now.
    pub fn has_ready(&self, now: u64, max_offset: u64, orderly: bool, policy: &RetryPolicy) -> bool {
        if orderly {
            return match self.slots.range(..self.next).next() {
                Some((_, Slot::Waiting { due, .. })) => *due <= now,
                Some(_) => false,
                None => self.next < max_offset,
            };
        }
        self.retries.first().is_some_and(|(due, _)| *due <= now)
            || (self.next < max_offset && self.next - self.committed < policy.max_unsettled)
    }

    /// A claimed message is not for this group (its tag does not match the
    /// group's filter): settle it unseen.
    pub fn skip(&mut self, offset: u64) {
        if matches!(self.slots.get(&offset), Some(Slot::InFlight { .. })) {
            self.remove(offset);
            self.settle(offset);
        }
    }

    /// A claimed message must not be delivered after all (its TTL passed):
    /// it goes to the dead-letter topic instead.
    pub fn reject_claim(&mut self, offset: u64, reason: DeadLetterReason) -> Option<DeadLetter> {
        match self.slots.get(&offset).copied() {
            Some(Slot::InFlight { deliveries, .. }) => Some(self.dead_letter(offset, deliveries - 1, reason)),
            _ => None,
        }
    }

    /// Settles an in-flight or waiting message; false when it is not
    /// unsettled here (already settled, never delivered, or being
    /// dead-lettered).
    pub fn ack(&mut self, offset: u64) -> bool {
        match self.slots.get(&offset) {
            Some(Slot::InFlight { .. } | Slot::Waiting { .. }) => {
                self.remove(offset);
                self.settle(offset);
                true
            }
            _ => false,
        }
    }

    /// A consumer rejected an in-flight message. With `requeue` it is
    /// redelivered after the retry backoff, unless it has used up its
    /// retries; without, or when it has, it is dead-lettered. `None` when
    /// the message was not in flight (an ack timeout already requeued it).
    pub fn nack(
        &mut self,
        offset: u64,
        requeue: bool,
        now: u64,
        policy: &RetryPolicy,
    ) -> Option<Result<(), DeadLetter>> {
        let Some(Slot::InFlight { deliveries, .. }) = self.slots.get(&offset).copied() else {
            return None;
        };
        Some(self.fail(
            offset,
            deliveries,
            requeue,
            now.saturating_add(policy.backoff(deliveries)),
            policy,
        ))
    }

    /// Requeues (for immediate redelivery) every in-flight message whose ack
    /// deadline passed; returns those that used up their retries.
    pub fn expire_deadlines(&mut self, now: u64, policy: &RetryPolicy) -> Vec<DeadLetter> {
        let expired: Vec<(u64, u64)> = self.deadlines.range(..=(now, u64::MAX)).copied().collect();
        let mut out = Vec::new();
        for (_, offset) in expired {
            if let Some(Slot::InFlight { deliveries, .. }) = self.slots.get(&offset).copied() {
                if let Err(dl) = self.fail(offset, deliveries, true, now, policy) {
                    out.push(dl);
                }
            }
        }
        out
    }

    /// TTL expiry of `offset` for this group: unless it is settled or in a
    /// consumer's hands, it goes to the dead-letter topic and is never
    /// delivered (also when the cursor has not reached it yet).
    pub fn expire(&mut self, offset: u64) -> Option<DeadLetter> {
        if offset < self.committed || self.settled.contains(&offset) {
            return None;
        }
        match self.slots.get(&offset).copied() {
            Some(Slot::Waiting { deliveries, .. }) => {
                Some(self.dead_letter(offset, deliveries, DeadLetterReason::Expired))
            }
            Some(_) => None,
            None if offset >= self.next => Some(self.dead_letter(offset, 0, DeadLetterReason::Expired)),
            None => None,
        }
    }

    /// The dead-letter copy of `offset` is stored: it is settled.
    pub fn dead_lettered(&mut self, offset: u64) {
        if matches!(self.slots.get(&offset), Some(Slot::DeadLettering { .. })) {
            self.remove(offset);
            self.settle(offset);
        }
    }

    /// Messages whose dead-letter copy is still to be written.
    #[cfg(test)]
    pub fn dead_lettering(&self) -> Vec<(u64, u32)> {
        self.slots
            .iter()
            .filter_map(|(o, s)| match s {
                Slot::DeadLettering { deliveries } => Some((*o, *deliveries)),
                _ => None,
            })
            .collect()
    }

    /// When something next changes by itself: the earliest ack deadline or
    /// retry due after `now`.
    pub fn next_wakeup(&self, now: u64) -> Option<u64> {
        let deadline = self.deadlines.first().map(|(t, _)| *t);
        let retry = self.retries.range((now.saturating_add(1), 0)..).next().map(|(t, _)| *t);
        match (deadline, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn redeliver(&mut self, offset: u64, deliveries: u32, deadline: u64) -> Claim {
        let delivery = deliveries + 1;
        self.put(
            offset,
            Slot::InFlight {
                deadline,
                deliveries: delivery,
            },
        );
        Claim { offset, delivery }
    }

    fn fail(
        &mut self,
        offset: u64,
        deliveries: u32,
        requeue: bool,
        due: u64,
        policy: &RetryPolicy,
    ) -> Result<(), DeadLetter> {
        if !requeue {
            return Err(self.dead_letter(offset, deliveries, DeadLetterReason::Rejected));
        }
        if deliveries > policy.max_retries {
            return Err(self.dead_letter(offset, deliveries, DeadLetterReason::MaxDeliveries));
        }
        self.put(offset, Slot::Waiting { due, deliveries });
        Ok(())
    }

    fn dead_letter(&mut self, offset: u64, deliveries: u32, reason: DeadLetterReason) -> DeadLetter {
        self.put(offset, Slot::DeadLettering { deliveries });
        DeadLetter {
            offset,
            deliveries,
            reason,
        }
    }

    fn put(&mut self, offset: u64, slot: Slot) {
        self.remove(offset);
        match slot {
            Slot::InFlight { deadline, .. } => {
                self.deadlines.insert((deadline, offset));
            }
            Slot::Waiting { due, .. } => {
                self.retries.insert((due, offset));
            }
            Slot::DeadLettering { .. } => {}
        }
        self.slots.insert(offset, slot);
    }

    fn remove(&mut self, offset: u64) {
        match self.slots.remove(&offset) {
            Some(Slot::InFlight { deadline, .. }) => {
                self.deadlines.remove(&(deadline, offset));
            }
            Some(Slot::Waiting { due, .. }) => {
                self.retries.remove(&(due, offset));
            }
            _ => {}
        }
    }

    fn settle(&mut self, offset: u64) {
        self.settled.insert(offset);
        self.advance();
    }

    fn advance(&mut self) {
        while self.committed < self.next && self.settled.remove(&self.committed) {
            self.committed += 1;
        }
    }
}

#[cfg(test)]
mod tests;
