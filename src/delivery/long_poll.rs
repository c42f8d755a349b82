//! The long-poll table of a queue: requests parked until a message at
//! their offset arrives or their deadline passes. A plain state machine:
//! time comes in as milliseconds, nothing here does I/O.

/// A parked request.
#[derive(Debug)]
pub struct Parked<T> {
    /// The queue offset the pull waits for.
    pub offset: u64,
    /// When to give up, in the caller's millisecond clock.
    pub deadline: u64,
    /// Whatever the caller needs to answer it.
    pub waiter: T,
}

/// Pulls waiting for data.
#[derive(Debug)]
pub struct LongPolls<T> {
    parked: Vec<Parked<T>>,
}

impl<T> Default for LongPolls<T> {
    fn default() -> Self {
        LongPolls { parked: Vec::new() }
    }
}

impl<T> LongPolls<T> {
    /// Parks a pull waiting for `offset` until `deadline`.
    pub fn park(&mut self, offset: u64, deadline: u64, waiter: T) {
        self.parked.push(Parked {
            offset,
            deadline,
            waiter,
        });
    }

    /// Number of parked pulls.
    pub fn len(&self) -> usize {
        self.parked.len()
    }

    /// Number of parked requests whose waiter `pred` picks.
    pub fn count(&self, pred: impl Fn(&T) -> bool) -> usize {
        self.parked.iter().filter(|p| pred(&p.waiter)).count()
    }

    /// True when nothing is parked.
    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    /// Removes and returns the pulls that data below `max_offset` can serve.
    pub fn take_ready(&mut self, max_offset: u64) -> Vec<Parked<T>> {
        self.take_where(|p| p.offset < max_offset)
    }

    /// Removes and returns the pulls whose deadline is at or before `now`.
    pub fn take_expired(&mut self, now: u64) -> Vec<Parked<T>> {
        self.take_where(|p| p.deadline <= now)
    }

    /// Removes and returns the pulls `pred` picks (e.g. those whose
    /// requester has gone away).
    pub fn take_matching(&mut self, pred: impl Fn(&Parked<T>) -> bool) -> Vec<Parked<T>> {
        self.take_where(pred)
    }

    /// Removes and returns every parked pull.
    pub fn take_all(&mut self) -> Vec<Parked<T>> {
        std::mem::take(&mut self.parked)
    }

    /// The earliest deadline, to arm one timer for.
    pub fn next_deadline(&self) -> Option<u64> {
        self.parked.iter().map(|p| p.deadline).min()
    }

    fn take_where(&mut self, pred: impl Fn(&Parked<T>) -> bool) -> Vec<Parked<T>> {
        let (out, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked).into_iter().partition(|p| pred(p));
        self.parked = keep;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_data_wakes_only_pulls_it_can_serve() {
        let mut lp = LongPolls::default();
        lp.park(5, 1000, "a");
        lp.park(7, 900, "b");
        assert_eq!(lp.next_deadline(), Some(900));
        assert!(lp.take_ready(5).is_empty(), "offset 5 needs max > 5");
        let woke: Vec<_> = lp.take_ready(6).into_iter().map(|p| p.waiter).collect();
        assert_eq!(woke, ["a"]);
        assert_eq!(lp.len(), 1);
    }

    #[test]
    fn deadlines_expire_in_order() {
        let mut lp = LongPolls::default();
        lp.park(1, 100, 1);
        lp.park(1, 200, 2);
        assert!(lp.take_expired(99).is_empty());
        assert_eq!(
            lp.take_expired(100).into_iter().map(|p| p.waiter).collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(lp.next_deadline(), Some(200));
        assert_eq!(lp.take_all().len(), 1);
        assert!(lp.is_empty() && lp.next_deadline().is_none());
    }
}
