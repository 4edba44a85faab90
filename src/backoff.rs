//! How long to wait before trying again after failures in a row: one rule for the buses, the
//! storage sinks, MQTT, alert mails and a PMTR server's duties. Pure (the random draw is passed
//! in), no `crate::` imports.

use std::time::Duration;

/// Waits that start at `first`, double with each failure in a row, and stop growing at `max`.
/// With `jitter` j (0..=1), each wait is drawn between (1 - j) and all of that, so that many
/// gateways failing together do not come back together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub jitter: f64,
}

/// Doublings beyond which a wait grows no more (2^16 times `first`).
const MAX_DOUBLINGS: u32 = 16;

impl Backoff {
    /// Waits from `first` doubling to `max`, without jitter.
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max, jitter: 0.0 }
    }

    /// The same waits, each drawn between (1 - `jitter`) and all of it.
    pub const fn with_jitter(self, jitter: f64) -> Backoff {
        Backoff { jitter, ..self }
    }

    /// The wait after `failures` failures in a row, before jitter: `first` after the first,
    /// doubling, at most `max` (zero before any failure).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doublings = (failures - 1).min(MAX_DOUBLINGS);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }

    /// The wait after `failures` failures in a row, with `random` a draw in 0..1 (clamped):
    /// between (1 - jitter) × [`Backoff::delay`] (at 0) and all of it (at 1).
    pub fn wait(&self, failures: u32, random: f64) -> Duration {
        let jitter = self.jitter.clamp(0.0, 1.0);
        let delay = self.delay(failures);
        let factor = 1.0 - jitter + jitter * random.clamp(0.0, 1.0);
        // Never past the delay, and no panic on a wait too long for a float.
        Duration::try_from_secs_f64(delay.as_secs_f64() * factor).map_or(delay, |w| w.min(delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn waits_double_from_the_first_to_the_cap() {
        let b = Backoff::new(S(1), S(60));
        let waits: Vec<u64> = (1..=9).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.delay(0), Duration::ZERO, "no failure, no wait");
        assert_eq!(Backoff::new(S(10), S(300)).delay(6), S(300), "320 s capped");
    }

    /// However many failures, the wait stays at the cap: no overflow, no wrap to a short wait.
    #[test]
    fn the_cap_holds_for_ever() {
        let b = Backoff::new(S(1), S(3600));
        for n in [17, 32, 33, 64, 1000, u32::MAX] {
            assert_eq!(b.delay(n), S(3600), "{n}");
        }
        let huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        assert_eq!(huge.delay(u32::MAX), Duration::MAX, "saturates");
        assert_eq!(huge.with_jitter(0.5).wait(u32::MAX, 1.0), Duration::MAX, "no float overflow");
        let small_cap = Backoff::new(S(1), S(1) * (1 << 20));
        assert_eq!(small_cap.delay(u32::MAX), S(1) * (1 << MAX_DOUBLINGS), "at most 2^16 × first");
    }

    #[test]
    fn jitter_draws_between_its_bounds() {
        let b = Backoff::new(S(1), S(60)).with_jitter(0.5);
        assert_eq!(b.wait(4, 0.0), S(4), "half of 8 s at the lowest draw");
        assert_eq!(b.wait(4, 1.0), S(8), "all of it at the highest");
        assert_eq!(b.wait(4, 7.0), S(8), "a draw out of range is clamped");
        assert_eq!(b.wait(4, -1.0), S(4));
        // A seeded source: every wait inside its bounds, and the bounds reached.
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for n in 1..=12 {
            let full = b.delay(n);
            for _ in 0..100 {
                let w = b.wait(n, next());
                assert!(w >= full / 2 && w <= full, "{n}: {w:?} of {full:?}");
            }
        }
        let none = Backoff::new(S(1), S(60));
        assert_eq!(none.wait(3, 0.0), S(4), "no jitter: the delay itself");
        assert_eq!(none.with_jitter(1.0).wait(3, 0.25), S(1));
    }
}
