//! Moving averages over the readings' own timestamps.
//!
//! The value is the simple mean of the samples inside the window `(now - window, now]`, not a
//! time-weighted mean: meters are polled at a steady period, so both agree, and the simple mean
//! needs no interpolation across gaps. A window with no sample has no value: a gap is never a
//! zero. Energy counters are not averaged; the caller keeps their latest value.

use std::collections::VecDeque;
use std::time::Duration;

/// A moving average; times are `Duration`s since any fixed epoch, non-decreasing.
///
/// The sum is never kept by adding and subtracting (a running sum keeps the rounding of every
/// value that ever passed through it, and one huge value spoils it long after it left). The
/// window is split in two, as a queue made of two stacks: the older part keeps, for each of its
/// samples, the sum of that sample and all older ones still in it (computed afresh, oldest
/// last, each time the part is rebuilt), and the newer part a sum of additions only. A sample
/// leaving the window is popped with its partial sum, so the total is always a sum over the
/// samples in the window alone. Amortised O(1) per sample.
#[derive(Debug, Clone)]
pub struct MovingAverage {
    window: Duration,
    samples: VecDeque<(Duration, f64)>,
    /// Partial sums of the older part (the oldest `older.len()` samples): `older[k]` sums its
    /// `k + 1` newest samples, so the last entry is the sum of them all and popping it, as the
    /// oldest sample leaves, leaves the sum of the others.
    older: Vec<f64>,
    /// Sum of the samples after the older part.
    newer: f64,
}

impl MovingAverage {
    pub fn new(window: Duration) -> Self {
        MovingAverage { window, samples: VecDeque::new(), older: Vec::new(), newer: 0.0 }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Adds a sample taken at `t`. A value that is not finite is ignored (the decoders refuse
    /// them before they get here).
    pub fn push(&mut self, t: Duration, v: f64) {
        if !v.is_finite() {
            return;
        }
        self.samples.push_back((t, v));
        self.newer += v;
    }

    /// Makes every sample part of the older part, with fresh partial sums.
    fn rebuild(&mut self) {
        self.older.clear();
        let mut sum = 0.0;
        for &(_, v) in self.samples.iter().rev() {
            sum += v;
            self.older.push(sum);
        }
        self.newer = 0.0;
    }

    /// Mean of the samples newer than `now - window`; older ones are dropped. `None` when none.
    pub fn value(&mut self, now: Duration) -> Option<f64> {
        while let Some(&(t, _)) = self.samples.front() {
            if t + self.window > now {
                break;
            }
            if self.older.is_empty() {
                self.rebuild();
            }
            self.samples.pop_front();
            self.older.pop();
        }
        if self.samples.is_empty() {
            self.older.clear();
            self.newer = 0.0;
            return None;
        }
        let sum = self.older.last().copied().unwrap_or(0.0) + self.newer;
        Some(sum / self.samples.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    #[test]
    fn mean_of_samples_inside_the_window() {
        let mut a = MovingAverage::new(s(10));
        a.push(s(0), 1.0);
        a.push(s(5), 3.0);
        assert_eq!(a.value(s(5)), Some(2.0));
        a.push(s(10), 5.0);
        assert_eq!(a.value(s(10)), Some(4.0), "the sample at 0 is out");
    }

    #[test]
    fn gap_yields_no_value() {
        let mut a = MovingAverage::new(s(1));
        assert_eq!(a.value(s(0)), None);
        a.push(s(0), 7.0);
        assert_eq!(a.value(s(0)), Some(7.0));
        assert_eq!(a.value(s(3)), None);
    }

    #[test]
    fn one_hour_window_keeps_every_second() {
        let mut a = MovingAverage::new(s(3600));
        for t in 0..7200 {
            a.push(s(t), t as f64);
        }
        let v = a.value(s(7199)).unwrap();
        assert!((v - (3600.0 + 7199.0) / 2.0).abs() < 1e-6, "{v}");
    }

    /// One absurd value (a legacy float of 3.4e38 that got through) weighs on the mean only
    /// while it is in the window: once it is out, the mean is exactly that of the samples left.
    #[test]
    fn an_absurd_value_leaves_no_trace_once_out_of_the_window() {
        // More than 64 samples in the window: a running sum would never be recomputed.
        let mut a = MovingAverage::new(s(100));
        for t in 0..300 {
            a.push(s(t), if t == 50 { 3.4e38 } else { 230.0 + (t % 7) as f64 * 0.1 });
            let v = a.value(s(t)).unwrap();
            let inside: Vec<f64> = (t.saturating_sub(99)..=t)
                .map(|u| if u == 50 { 3.4e38 } else { 230.0 + (u % 7) as f64 * 0.1 })
                .collect();
            if !(50..150).contains(&t) {
                let mean = inside.iter().sum::<f64>() / inside.len() as f64;
                assert!((v - mean).abs() < 1e-9, "t = {t}: {v} against {mean}");
            }
        }
        a.push(s(300), f64::NAN);
        a.push(s(300), f64::INFINITY);
        assert!(a.value(s(300)).unwrap().is_finite(), "not finite: ignored");
    }

    /// A day of one sample a second through a 10-minute window, values over six orders of
    /// magnitude: the mean stays what a fresh sum over the window gives (no drift).
    #[test]
    fn the_mean_does_not_drift_over_a_long_run() {
        let mut a = MovingAverage::new(s(600));
        let value = |t: u64| ((t * 7919) % 1000) as f64 * 10f64.powi((t % 7) as i32 - 3) + 0.1;
        for t in 0..86_400 {
            a.push(s(t), value(t));
        }
        let v = a.value(s(86_399)).unwrap();
        let fresh: f64 = (86_400 - 600..86_400).map(value).sum::<f64>() / 600.0;
        assert!((v - fresh).abs() <= fresh * 1e-12, "{v} against {fresh}");
    }
}
