//! When each meter is read next: a fixed cadence while it answers, an exponential back-off
//! (with one attempt per re-probe) while it does not. Pure: the clock is passed in.

use std::time::Duration;
use tokio::time::Instant;

/// Failed polls in a row after which a meter counts as lost (and, on a bus with several ports,
/// is searched for on the others).
pub const LOST_AFTER: u32 = 3;

#[derive(Debug, Clone)]
pub struct Schedule {
    poll: Duration,
    max_backoff: Duration,
    due: Instant,
    failures: u32,
    /// Added once, after the first success, to spread the meters of a bus over the period.
    phase: Duration,
}

impl Schedule {
    pub fn new(poll: Duration, max_backoff: Duration, due: Instant) -> Self {
        Schedule { poll, max_backoff: max_backoff.max(poll), due, failures: 0, phase: Duration::ZERO }
    }

    /// Shifts the cadence by `phase` after the first success: meter `i` of `n` on a bus gets
    /// `i × poll / n`, so that meters found together are not read back to back for ever.
    pub fn with_phase(mut self, phase: Duration) -> Self {
        self.phase = phase.min(self.poll);
        self
    }

    pub fn due(&self) -> Instant {
        self.due
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn is_lost(&self) -> bool {
        self.failures >= LOST_AFTER
    }

    /// Attempts allowed in this poll: the configured retries while the meter answers, one
    /// while it is failing, so that a dead meter costs at most one timeout per back-off period.
    pub fn attempts(&self, retries: u32) -> u32 {
        if self.failures == 0 {
            1 + retries
        } else {
            1
        }
    }

    /// The poll that was due at `self.due()` succeeded at `now`. The cadence is kept (no drift);
    /// a meter that fell more than a period behind (a saturated bus) is due again at once, and
    /// the earliest-due rule shares the bus round-robin: there is no burst to catch up.
    pub fn succeeded(&mut self, now: Instant) {
        self.failures = 0;
        self.due = (self.due + self.poll + std::mem::take(&mut self.phase)).max(now);
    }

    /// The poll failed at `now`: wait `poll × 2^failures`, capped at `max_backoff`.
    pub fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.due = now + self.backoff();
    }

    /// The wait after the current number of failures: `poll × 2^failures`, capped at
    /// `max_backoff`.
    pub fn backoff(&self) -> Duration {
        if self.failures == 0 {
            return self.poll;
        }
        crate::backoff::Backoff::new(self.poll.saturating_mul(2), self.max_backoff).delay(self.failures)
    }

    /// Puts the next poll at `at` (used to order first probes).
    pub fn set_due(&mut self, at: Instant) {
        self.due = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn cadence_without_drift() {
        let t0 = Instant::now();
        let mut s = Schedule::new(S, 60 * S, t0);
        // The poll takes 40 ms; the next is still due one period after the previous due time.
        s.succeeded(t0 + Duration::from_millis(40));
        assert_eq!(s.due(), t0 + S);
        s.succeeded(t0 + S + Duration::from_millis(40));
        assert_eq!(s.due(), t0 + 2 * S);
    }

    #[tokio::test(start_paused = true)]
    async fn the_phase_spreads_meters_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(S, 60 * S, t0).with_phase(S / 4);
        s.succeeded(t0);
        assert_eq!(s.due(), t0 + S + S / 4);
        s.succeeded(t0 + S + S / 4);
        assert_eq!(s.due(), t0 + 2 * S + S / 4);
    }

    #[tokio::test(start_paused = true)]
    async fn no_burst_after_falling_behind() {
        let t0 = Instant::now();
        let mut s = Schedule::new(S, 60 * S, t0);
        s.succeeded(t0 + 5 * S);
        assert_eq!(s.due(), t0 + 5 * S);
    }

    #[tokio::test(start_paused = true)]
    async fn dead_meter_backs_off_to_the_cap_with_single_attempts() {
        let t0 = Instant::now();
        let mut s = Schedule::new(S, 60 * S, t0);
        assert_eq!(s.attempts(2), 3);
        let mut now = t0;
        let mut waits = vec![];
        for _ in 0..8 {
            s.failed(now);
            waits.push((s.due() - now).as_secs());
            now = s.due();
            assert_eq!(s.attempts(2), 1);
        }
        assert_eq!(waits, vec![2, 4, 8, 16, 32, 60, 60, 60]);
        assert!(s.is_lost());
        s.succeeded(now);
        assert_eq!(s.attempts(2), 3);
        assert!(!s.is_lost());
        assert_eq!(s.due(), now + S);
    }

    #[tokio::test(start_paused = true)]
    async fn lost_after_three_failures() {
        let t0 = Instant::now();
        let mut s = Schedule::new(S, 60 * S, t0);
        s.failed(t0);
        s.failed(t0);
        assert!(!s.is_lost());
        s.failed(t0);
        assert!(s.is_lost());
    }
}
