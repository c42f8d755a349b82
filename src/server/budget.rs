//! A connection's response budget in bytes: what its requests and unwritten
//! responses may hold (see the module docs of `connection`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Budget bytes held by one request or response; given back on drop.
#[derive(Debug)]
pub(super) struct Held {
    budget: Arc<BudgetState>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
            self.budget.freed.notify_waiters();
        }
    }
}

/// The shared counter behind a [`Budget`] and its [`Held`] parts.
#[derive(Debug)]
struct BudgetState {
    used: AtomicUsize,
    total: usize,
    freed: Notify,
}

/// A connection's response budget, in bytes. A reservation waits until it
/// fits (or nothing at all is held); a built response then holds its real
/// size at once, even past the total (it exists already; waiting would only
/// risk every request waiting for another), and the next reservation waits
/// until the client has read enough.
#[derive(Debug, Clone)]
pub(super) struct Budget(Arc<BudgetState>);

impl Budget {
    /// A budget of `total` bytes (at least 1).
    pub(super) fn new(total: usize) -> Budget {
        Budget(Arc::new(BudgetState {
            used: AtomicUsize::new(0),
            total: total.max(1),
            freed: Notify::new(),
        }))
    }

    /// Takes `bytes` if they fit now.
    pub(super) fn try_take(&self, bytes: usize) -> bool {
        let s = &self.0;
        s.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used == 0 || used.saturating_add(bytes) <= s.total).then(|| used + bytes)
            })
            .is_ok()
    }

    /// Takes `bytes`, waiting until they fit.
    pub(super) async fn take(&self, bytes: usize) -> Held {
        loop {
            let freed = self.0.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_take(bytes) {
                return Held {
                    budget: self.0.clone(),
                    bytes,
                };
            }
            freed.await;
        }
    }

    /// Makes `held` hold `bytes` (its response's real size).
    pub(super) fn resize(&self, held: &mut Held, bytes: usize) {
        if bytes < held.bytes {
            self.0.used.fetch_sub(held.bytes - bytes, Ordering::AcqRel);
            self.0.freed.notify_waiters();
        } else {
            self.0.used.fetch_add(bytes - held.bytes, Ordering::AcqRel);
        }
        held.bytes = bytes;
    }

    /// True when no bytes are held (nothing in flight or unwritten).
    pub(super) fn is_idle(&self) -> bool {
        self.0.used.load(Ordering::Acquire) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[actix_rt::test]
    async fn reservations_wait_for_written_responses() {
        let budget = Budget::new(10);
        let mut a = budget.take(4).await;
        let b = budget.take(6).await;
        // Full: the next reservation waits.
        let waiting = budget.take(4);
        tokio::pin!(waiting);
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut waiting)
            .await
            .is_err());
        // A response larger than its reservation goes past the total...
        budget.resize(&mut a, 7);
        assert_eq!(budget.0.used.load(Ordering::Acquire), 13);
        drop(b);
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut waiting)
            .await
            .is_err());
        // ...and once it is written the reader goes on.
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(1), &mut waiting)
            .await
            .unwrap();
        assert_eq!(c.bytes, 4);
        drop(c);
        assert!(budget.is_idle());
        // A reservation larger than the whole budget goes alone.
        let big = budget.take(100).await;
        assert!(!budget.try_take(1));
        drop(big);
        assert!(budget.is_idle());
    }
}
