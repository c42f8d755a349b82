//! The master's view of its slaves: how far each has confirmed, how far
//! behind it is, and which sync-replication waiters its confirmations
//! release. Pure: every input carries `now` (ms).

use std::collections::{BTreeMap, VecDeque};

/// Identifies one waiting acknowledgement.
pub type WaiterId = u64;

/// One slave as the master sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveProgress {
    /// The slave's client address (from its handshake).
    pub addr: String,
    /// Everything below this is stored on the slave.
    pub confirmed: u64,
    /// When it last fetched, ms.
    pub last_fetch_ms: u64,
}

/// How far one slave is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lag {
    /// Bytes of the master's log the slave has not confirmed.
    pub bytes: u64,
    /// How long the oldest unconfirmed append has waited, ms (0 when
    /// caught up).
    pub ms: u64,
}

/// What a sync acknowledgement does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A slave has it already.
    Ready,
    /// No slave is connected: answer "stored on the master only" at once.
    NoSlave,
    /// Wait for a confirmation or the deadline.
    Pending(WaiterId),
}

/// Appends remembered for the lag in ms (the oldest are dropped).
const APPEND_HISTORY: usize = 4096;

/// The master's replication bookkeeping.
#[derive(Debug)]
pub struct ReplicaSet {
    /// A slave not fetching for this long counts as gone.
    idle_ms: u64,
    slaves: BTreeMap<u64, SlaveProgress>,
    /// Waiting acknowledgements by the log end they need, and deadline.
    waiters: BTreeMap<(u64, WaiterId), u64>,
    next_waiter: WaiterId,
    /// (end, when appended) of recent appends, oldest first.
    appends: VecDeque<(u64, u64)>,
    end: u64,
}

impl ReplicaSet {
    /// An empty set; a slave silent for `idle_ms` is dropped.
    pub fn new(idle_ms: u64) -> ReplicaSet {
        ReplicaSet {
            idle_ms,
            slaves: BTreeMap::new(),
            waiters: BTreeMap::new(),
            next_waiter: 1,
            appends: VecDeque::new(),
            end: 0,
        }
    }

    /// The log now ends at `end` (appended at `now`).
    pub fn appended(&mut self, end: u64, now: u64) {
        if end <= self.end {
            return;
        }
        self.end = end;
        if self.appends.len() == APPEND_HISTORY {
            self.appends.pop_front();
        }
        self.appends.push_back((end, now));
    }

    /// Slave `id` (at `addr`) confirmed that everything below `from` is
    /// stored there (a fetch from there, or an ack). Confirmations only move
    /// forward (a pipelined fetch and an ack may be handled out of order);
    /// a slave that shakes hands again starts over ([`Self::slave_gone`]).
    /// Returns the waiters this releases.
    pub fn fetched(&mut self, id: u64, addr: &str, from: u64, now: u64) -> Vec<WaiterId> {
        let slave = self.slaves.entry(id).or_insert_with(|| SlaveProgress {
            addr: addr.to_string(),
            confirmed: from,
            last_fetch_ms: now,
        });
        addr.clone_into(&mut slave.addr);
        slave.confirmed = slave.confirmed.max(from);
        let from = slave.confirmed;
        slave.last_fetch_ms = now;
        let released: Vec<(u64, WaiterId)> = self.waiters.range(..=(from, WaiterId::MAX)).map(|(k, _)| *k).collect();
        for k in &released {
            self.waiters.remove(k);
        }
        released.into_iter().map(|(_, id)| id).collect()
    }

    /// A batch ending at `end` waits for a slave until `deadline`.
    pub fn wait(&mut self, end: u64, now: u64, deadline: u64) -> Wait {
        if self.best_confirmed(now).is_some_and(|c| c >= end) {
            return Wait::Ready;
        }
        if !self.any_live(now) {
            return Wait::NoSlave;
        }
        let id = self.next_waiter;
        self.next_waiter += 1;
        self.waiters.insert((end, id), deadline);
        Wait::Pending(id)
    }

    /// Forgets a waiter (answered another way, or its caller gave up).
    pub fn cancel(&mut self, id: WaiterId) {
        self.waiters.retain(|&(_, w), _| w != id);
    }

    /// Waiters past their deadline at `now` (removed), and slaves that
    /// stopped fetching are dropped.
    pub fn tick(&mut self, now: u64) -> Vec<WaiterId> {
        let idle = self.idle_ms;
        self.slaves.retain(|_, s| now.saturating_sub(s.last_fetch_ms) < idle);
        let expired: Vec<(u64, WaiterId)> = self
            .waiters
            .iter()
            .filter(|(_, &deadline)| deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in &expired {
            self.waiters.remove(k);
        }
        expired.into_iter().map(|(_, id)| id).collect()
    }

    /// Forgets slave `id` (its connection closed).
    pub fn slave_gone(&mut self, id: u64) {
        self.slaves.remove(&id);
    }

    /// The connected slaves by id.
    pub fn slaves(&self) -> &BTreeMap<u64, SlaveProgress> {
        &self.slaves
    }

    /// Waiters not yet answered.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// How far slave `id` is behind at `now`.
    pub fn lag(&self, id: u64, now: u64) -> Option<Lag> {
        let s = self.slaves.get(&id)?;
        let bytes = self.end.saturating_sub(s.confirmed);
        let ms = self
            .appends
            .iter()
            .find(|(end, _)| *end > s.confirmed)
            .map_or(0, |(_, at)| now.saturating_sub(*at));
        Some(Lag {
            bytes,
            ms: if bytes == 0 { 0 } else { ms },
        })
    }

    fn live(&self, now: u64) -> impl Iterator<Item = &SlaveProgress> {
        let idle = self.idle_ms;
        self.slaves
            .values()
            .filter(move |s| now.saturating_sub(s.last_fetch_ms) < idle)
    }

    fn any_live(&self, now: u64) -> bool {
        self.live(now).next().is_some()
    }

    fn best_confirmed(&self, now: u64) -> Option<u64> {
        self.live(now).map(|s| s.confirmed).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirmation_releases_the_waiters_it_covers() {
        let mut r = ReplicaSet::new(5_000);
        r.appended(100, 0);
        assert_eq!(r.wait(100, 0, 3_000), Wait::NoSlave, "no slave: answered at once");
        assert!(r.fetched(1, "s1", 0, 0).is_empty());
        let Wait::Pending(a) = r.wait(100, 1, 3_000) else {
            panic!()
        };
        r.appended(200, 2);
        let Wait::Pending(b) = r.wait(200, 2, 3_000) else {
            panic!()
        };
        assert_eq!(r.fetched(1, "s1", 150, 3), vec![a]);
        assert_eq!(r.fetched(1, "s1", 200, 4), vec![b]);
        assert_eq!(r.wait(200, 5, 3_000), Wait::Ready);
        assert_eq!(r.waiting(), 0);
    }

    #[test]
    fn waiters_expire_and_silent_slaves_are_dropped() {
        let mut r = ReplicaSet::new(1_000);
        r.fetched(2, "s2", 0, 0);
        r.appended(10, 0);
        let Wait::Pending(w) = r.wait(10, 0, 500) else { panic!() };
        assert!(r.tick(499).is_empty());
        assert_eq!(r.tick(500), vec![w]);
        assert_eq!(r.slaves().len(), 1);
        r.tick(1_000);
        assert!(r.slaves().is_empty(), "no fetch for the idle time");
        assert_eq!(r.wait(10, 1_000, 2_000), Wait::NoSlave);
    }

    #[test]
    fn lag_counts_bytes_and_the_age_of_the_oldest_unconfirmed_append() {
        let mut r = ReplicaSet::new(10_000);
        r.fetched(1, "s", 0, 0);
        r.appended(100, 1_000);
        r.appended(300, 1_500);
        assert_eq!(r.lag(1, 2_000), Some(Lag { bytes: 300, ms: 1_000 }));
        r.fetched(1, "s", 100, 2_000);
        assert_eq!(r.lag(1, 2_000), Some(Lag { bytes: 200, ms: 500 }));
        r.fetched(1, "s", 300, 2_100);
        assert_eq!(r.lag(1, 2_100), Some(Lag::default()));
        assert_eq!(r.lag(9, 0), None);
    }

    #[test]
    fn cancel_forgets_a_waiter() {
        let mut r = ReplicaSet::new(10_000);
        r.fetched(1, "s", 0, 0);
        let Wait::Pending(w) = r.wait(10, 0, 100) else { panic!() };
        r.cancel(w);
        assert!(r.fetched(1, "s", 10, 1).is_empty());
    }
}
