//! The slave's side: which master it follows, how far behind it is, and
//! how long to wait before trying again after a failure. Pure: the
//! follower actor feeds it what happened and `now` (ms).

/// What the follower is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Looking for the master (name servers or `replication.master`).
    Resolving,
    /// Connected to the master and copying its log.
    Following,
    /// The master refused this slave; the reason says what to do.
    Refused(String),
    /// The last attempt failed; trying again later.
    Retrying(String),
}

/// The slave's replication state.
#[derive(Debug, Clone)]
pub struct FollowerState {
    phase: Phase,
    master: Option<String>,
    /// End of the master's log as of its last answer.
    master_max: u64,
    /// End of this slave's log.
    local_end: u64,
    /// When the slave was last fully caught up (ms), for the lag in ms.
    caught_up_at: u64,
    failures: u32,
}

/// First pause after a failure; doubles up to [`RETRY_MAX_MS`].
pub const RETRY_FIRST_MS: u64 = 200;
/// Longest pause between attempts.
pub const RETRY_MAX_MS: u64 = 5_000;

impl FollowerState {
    /// A follower that has not found its master yet.
    pub fn new(now: u64) -> FollowerState {
        FollowerState {
            phase: Phase::Resolving,
            master: None,
            master_max: 0,
            local_end: 0,
            caught_up_at: now,
            failures: 0,
        }
    }

    /// The phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The master's address, once known.
    pub fn master(&self) -> Option<&str> {
        self.master.as_deref()
    }

    /// The master is `addr`.
    pub fn master_found(&mut self, addr: &str) {
        self.master = Some(addr.to_string());
    }

    /// The handshake succeeded; copying starts.
    pub fn following(&mut self) {
        self.phase = Phase::Following;
        self.failures = 0;
    }

    /// A chunk was stored: this log ends at `local_end`, the master's at
    /// `master_max`.
    pub fn progressed(&mut self, local_end: u64, master_max: u64, now: u64) {
        self.local_end = local_end;
        self.master_max = master_max.max(local_end);
        if self.local_end >= self.master_max {
            self.caught_up_at = now;
        }
    }

    /// How far behind: (bytes, ms since last caught up; 0 when caught up).
    pub fn lag(&self, now: u64) -> (u64, u64) {
        let bytes = self.master_max.saturating_sub(self.local_end);
        if bytes == 0 {
            return (0, 0);
        }
        (bytes, now.saturating_sub(self.caught_up_at))
    }

    /// An attempt failed for `why`: returns the pause before the next one,
    /// and whether this is news worth a log line (the first failure in a
    /// row, or a different reason).
    pub fn failed(&mut self, why: String) -> (u64, bool) {
        let news = !matches!(&self.phase, Phase::Retrying(w) | Phase::Refused(w) if *w == why);
        let pause = RETRY_FIRST_MS
            .saturating_mul(1u64 << self.failures.min(10))
            .min(RETRY_MAX_MS);
        self.failures = self.failures.saturating_add(1);
        self.phase = Phase::Retrying(why);
        (pause, news)
    }

    /// The master refused this slave (configuration): tries again at the
    /// longest pause, logging only a new reason.
    pub fn refused(&mut self, why: String) -> (u64, bool) {
        let news = !matches!(&self.phase, Phase::Refused(w) if *w == why);
        self.phase = Phase::Refused(why);
        (RETRY_MAX_MS, news)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_and_log_once_per_reason() {
        let mut f = FollowerState::new(0);
        assert_eq!(f.failed("refused".into()), (200, true));
        assert_eq!(f.failed("refused".into()), (400, false));
        assert_eq!(f.failed("reset".into()), (800, true));
        for _ in 0..10 {
            f.failed("reset".into());
        }
        assert_eq!(f.failed("reset".into()).0, RETRY_MAX_MS);
        f.following();
        assert_eq!(f.failed("x".into()).0, RETRY_FIRST_MS, "a success resets the backoff");
    }

    #[test]
    fn lag_is_bytes_behind_and_time_since_caught_up() {
        let mut f = FollowerState::new(0);
        f.progressed(100, 100, 1_000);
        assert_eq!(f.lag(1_500), (0, 0));
        f.progressed(100, 400, 2_000);
        assert_eq!(f.lag(2_500), (300, 1_500));
        f.progressed(400, 400, 3_000);
        assert_eq!(f.lag(3_000), (0, 0));
    }
}
