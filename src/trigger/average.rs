//! Moving averages over the readings' own timestamps.
//!
//! The value is the simple mean of the samples inside the window `(now - window, now]`, not a
//! time-weighted mean: meters are polled at a steady period, so both agree, and the simple mean
//! needs no interpolation across gaps. A window with no sample has no value: a gap is never a
//! zero. Energy counters are not averaged; the caller keeps their latest value.

use std::collections::VecDeque;
use std::time::Duration;

/// A moving average; times are `Duration`s since any fixed epoch, non-decreasing.
#[derive(Debug, Clone)]
pub struct MovingAverage {
    window: Duration,
    samples: VecDeque<(Duration, f64)>,
    sum: f64,
}

impl MovingAverage {
    pub fn new(window: Duration) -> Self {
        MovingAverage { window, samples: VecDeque::new(), sum: 0.0 }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Adds a sample taken at `t`.
    pub fn push(&mut self, t: Duration, v: f64) {
        self.samples.push_back((t, v));
        self.sum += v;
    }

    /// Mean of the samples newer than `now - window`; older ones are dropped. `None` when none.
    pub fn value(&mut self, now: Duration) -> Option<f64> {
        while let Some(&(t, v)) = self.samples.front() {
            if t + self.window <= now {
                self.samples.pop_front();
                self.sum -= v;
            } else {
                break;
            }
        }
        if self.samples.is_empty() {
            self.sum = 0.0;
            return None;
        }
        // Recompute now and then to stop rounding drift from accumulating.
        if self.samples.len() <= 64 {
            self.sum = self.samples.iter().map(|s| s.1).sum();
        }
        Some(self.sum / self.samples.len() as f64)
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
}
