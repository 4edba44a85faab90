//! One energy counter's lifetime total: it follows the meter's own counter, and when that counter
//! goes back (reset by hand, a 16-bit register wrapping, a new meter) the total continues from
//! where it was. Pure: readings in, energy parts and events out.
//!
//! What counts as what, decided on purpose (the README's "Energy and cost" repeats it):
//! - a step forward no larger than [`MAX_POWER_KW`] over the time between the two readings (plus
//!   [`SLACK_KWH`] for the meter's resolution) is use;
//! - a step back of at most [`jitter`] (0.01 kWh, or one step of a 32-bit float at the counter's
//!   value) is rounding: nothing is counted, the higher value stays the base, so the next step
//!   forward is not counted twice;
//! - a step back from the upper half of a known counter range (the PMTR server's 16-bit counter,
//!   6553.6 kWh × multiplier) to a value that makes the wrapped step plausible is a rollover,
//!   counted at once;
//! - any other break (back to below [`RESET_BELOW_KWH`]: a reset; back to anything else, or an implausible jump
//!   forward: another meter) is held until the next reading confirms it. If the next reading
//!   continues from the held one, the break is real: a reset counts the held value itself (the
//!   counter started from zero) and what follows it; a replacement counts only what follows. If
//!   the next reading continues from the old base instead, the held reading was a glitch and is
//!   dropped. Holding costs one poll of delay, never energy.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The largest power any meter pmtr reads can truly deliver, in kW: a step forward beyond
/// `MAX_POWER_KW × hours` since the previous reading is not use but a glitch or another meter.
pub const MAX_POWER_KW: f64 = 1000.0;
/// Always plausible on top of the power limit: a meter's resolution and rounding.
pub const SLACK_KWH: f64 = 0.1;
/// A step back this small is rounding, not a reset.
pub const JITTER_KWH: f64 = 0.01;

/// The spacing of 32-bit floats relative to their value, at most (2^-23): a counter a meter
/// sends as a float moves in steps of up to this fraction of itself (0.0625 kWh at 1,000,000 kWh),
/// and reads as the shortest decimal of the float ([`crate::meter::f32_decimal`]), which may lie
/// either side of the float's binary value.
pub const FLOAT_STEP: f64 = 1.0 / 8_388_608.0;

/// The largest step back between `a` and `b` that is rounding: [`JITTER_KWH`], or one float
/// step at the larger of them.
pub fn jitter(a: f64, b: f64) -> f64 {
    JITTER_KWH.max(a.abs().max(b.abs()) * FLOAT_STEP)
}

/// A drop to below this is a reset (the counter restarted from zero); a drop to anything higher
/// is another meter.
pub const RESET_BELOW_KWH: f64 = 1.0;

/// The range of the PMTR_001_SRV's energy registers (16 bits of 0.1 kWh) before its multiplier.
pub const PMTR_SRV_RANGE_KWH: f64 = 6553.6;

/// Why a reading broke the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Break {
    /// Back to near zero: reset by hand (or by `pmtr pzem reset-energy`).
    Reset,
    /// Back to a value far from zero, or an implausible jump forward: another meter.
    Replaced,
}

/// What a reading did to the counter, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The first reading of this counter: the total starts at the meter's value.
    Started,
    /// Use, counted.
    Counted,
    /// A small step back, ignored.
    Jitter,
    /// The counter wrapped at the top of its range; counted across.
    Wrapped,
    /// A break held until the next reading confirms it.
    Held(Break),
    /// A held break confirmed: the total continues from where it was.
    Confirmed(Break),
    /// The held reading was not confirmed: dropped as a glitch.
    Glitch,
    /// A reading no later than the previous one: ignored.
    Stale,
    /// A reading more than [`CLOCK_BACK`] older than the previous one: the clock was set back
    /// (it was wrong, then synchronised). The books start again from this reading, counting
    /// nothing for the step, rather than waiting until the clock passes the wrong time again.
    ClockBack,
}

/// How far back a reading's time may be before it is taken as the clock set back.
pub const CLOCK_BACK: chrono::Duration = chrono::Duration::hours(1);

/// Energy used between two instants, to be split by time over periods and tariffs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Part {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub kwh: f64,
}

/// A reading that broke the sequence, waiting for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub raw: f64,
    pub time: DateTime<Utc>,
    pub kind: Break,
}

/// One counter's books (saved on disk as they are).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    /// The lifetime total, kWh (or kVAh, kvarh): only grows, except when set by hand.
    pub total: f64,
    /// The meter's own counter at the base reading.
    pub raw: f64,
    /// When the base reading arrived.
    pub time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
}

/// The most energy that can plausibly flow between two instants.
pub fn max_step(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    let hours = (to - from).num_milliseconds().max(0) as f64 / 3_600_000.0;
    MAX_POWER_KW * hours + SLACK_KWH
}

impl Counter {
    /// A counter seen for the first time: its total starts at the meter's value, so that it
    /// reads like the meter's display (align it with `pmtr energy set`).
    pub fn start(raw: f64, time: DateTime<Utc>) -> Counter {
        Counter { total: raw, raw, time, pending: None }
    }

    /// Takes one reading of the meter's counter (`range`: the counter's known range, where it
    /// wraps) and returns what it did and the energy it counted, in time order.
    pub fn update(&mut self, raw: f64, time: DateTime<Utc>, range: Option<f64>) -> (Event, Vec<Part>) {
        let last = self.pending.map_or(self.time, |p| p.time.max(self.time));
        if !raw.is_finite() {
            return (Event::Stale, vec![]);
        }
        if last - time > CLOCK_BACK {
            self.pending = None;
            self.raw = raw;
            self.time = time;
            return (Event::ClockBack, vec![]);
        }
        if time <= last {
            return (Event::Stale, vec![]);
        }
        if let Some(p) = self.pending {
            let from_held = raw - p.raw;
            if from_held >= -jitter(raw, p.raw) && from_held <= max_step(p.time, time) {
                let mut parts = vec![];
                if p.kind == Break::Reset && p.raw > 0.0 {
                    parts.push(Part { from: self.time, to: p.time, kwh: p.raw });
                }
                if from_held > 0.0 {
                    parts.push(Part { from: p.time, to: time, kwh: from_held });
                }
                self.pending = None;
                self.rebase(raw.max(p.raw), time, &parts);
                return (Event::Confirmed(p.kind), parts);
            }
            let from_base = raw - self.raw;
            if from_base >= -jitter(raw, self.raw) && from_base <= max_step(self.time, time) {
                self.pending = None;
                let (_, parts) = self.step(raw, time, range);
                return (Event::Glitch, parts);
            }
            self.pending = None;
        }
        self.step(raw, time, range)
    }

    /// A reading against the base, with nothing pending.
    fn step(&mut self, raw: f64, time: DateTime<Utc>, range: Option<f64>) -> (Event, Vec<Part>) {
        let d = raw - self.raw;
        let limit = max_step(self.time, time);
        if (0.0..=limit).contains(&d) {
            let parts = if d > 0.0 { vec![Part { from: self.time, to: time, kwh: d }] } else { vec![] };
            self.rebase(raw, time, &parts);
            return (Event::Counted, parts);
        }
        if (-jitter(raw, self.raw)..0.0).contains(&d) {
            return (Event::Jitter, vec![]);
        }
        if d < 0.0 {
            if let Some(r) = range.filter(|r| *r > 0.0 && self.raw >= r / 2.0) {
                let wrapped = r - self.raw + raw;
                if (0.0..=limit).contains(&wrapped) {
                    let parts = vec![Part { from: self.time, to: time, kwh: wrapped }];
                    self.rebase(raw, time, &parts);
                    return (Event::Wrapped, parts);
                }
            }
        }
        let kind = if d < 0.0 && raw <= limit.min(RESET_BELOW_KWH) { Break::Reset } else { Break::Replaced };
        self.pending = Some(Pending { raw, time, kind });
        (Event::Held(kind), vec![])
    }

    fn rebase(&mut self, raw: f64, time: DateTime<Utc>, parts: &[Part]) {
        self.total += parts.iter().map(|p| p.kwh).sum::<f64>();
        self.raw = raw;
        self.time = time;
    }

    /// Aligns the total with the utility meter's display (`pmtr energy set`).
    pub fn set_total(&mut self, total: f64) {
        self.total = total;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn kwh(parts: &[Part]) -> f64 {
        parts.iter().map(|p| p.kwh).sum()
    }

    #[test]
    fn use_is_counted_and_the_first_reading_starts_at_the_meter() {
        let mut c = Counter::start(100.0, at(0));
        assert_eq!(c.total, 100.0);
        let (e, parts) = c.update(100.5, at(60), None);
        assert_eq!(e, Event::Counted);
        assert_eq!(parts, vec![Part { from: at(0), to: at(60), kwh: 0.5 }]);
        assert!(close(c.total, 100.5));
        let (e, parts) = c.update(100.5, at(120), None);
        assert_eq!((e, parts.len()), (Event::Counted, 0));
    }

    #[test]
    fn a_small_step_back_is_rounding_and_not_counted_twice() {
        let mut c = Counter::start(10.0, at(0));
        assert_eq!(c.update(9.995, at(5), None).0, Event::Jitter);
        let (_, parts) = c.update(10.2, at(10), None);
        assert!(close(kwh(&parts), 0.2));
        assert_eq!(parts[0].from, at(0));
        assert!(close(c.total, 10.2));
    }

    /// A float counter of a million kWh moves in steps of 0.0625 kWh: one step back is
    /// rounding (as a restart that reads it as its shortest decimal can give), two are not.
    #[test]
    fn one_float_step_back_on_a_large_counter_is_rounding() {
        let big = 1_000_000.0f32;
        let below = f64::from(f32::from_bits(big.to_bits() - 1));
        assert_eq!(f64::from(big) - below, 0.0625);
        let mut c = Counter::start(f64::from(big), at(0));
        assert_eq!(c.update(below, at(5), None).0, Event::Jitter);
        assert_eq!(c.update(f64::from(big) + 0.125, at(10), None).0, Event::Counted);
        assert!(close(c.total, f64::from(big) + 0.125));
        // Two steps back from the base of 1,000,000.125.
        assert_eq!(c.update(f64::from(big), at(15), None).0, Event::Held(Break::Replaced));
        // Small counters keep the 0.01 kWh.
        let mut c = Counter::start(10.0, at(0));
        assert_eq!(c.update(9.985, at(5), None).0, Event::Held(Break::Replaced));
    }

    #[test]
    fn a_reset_to_zero_is_held_then_confirmed_and_counts_what_was_used_since() {
        let mut c = Counter::start(1234.5, at(0));
        c.update(1234.6, at(10), None);
        let (e, parts) = c.update(0.02, at(20), None);
        assert_eq!((e, parts.len()), (Event::Held(Break::Reset), 0));
        assert!(close(c.total, 1234.6));
        let (e, parts) = c.update(0.05, at(30), None);
        assert_eq!(e, Event::Confirmed(Break::Reset));
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].from, parts[0].to), (at(10), at(20)));
        assert!(close(parts[0].kwh, 0.02) && close(parts[1].kwh, 0.03));
        assert!(close(c.total, 1234.65));
        let (_, parts) = c.update(0.15, at(40), None);
        assert!(close(kwh(&parts), 0.1));
        assert!(close(c.total, 1234.75));
    }

    #[test]
    fn a_reset_to_exactly_zero_counts_nothing_for_the_held_reading() {
        let mut c = Counter::start(50.0, at(0));
        c.update(0.0, at(10), None);
        let (e, parts) = c.update(0.0, at(20), None);
        assert_eq!((e, parts.len()), (Event::Confirmed(Break::Reset), 0));
        assert!(close(c.total, 50.0));
    }

    #[test]
    fn the_pmtr_server_counter_wraps_at_6553_6() {
        let mut c = Counter::start(6553.4, at(0));
        let (e, parts) = c.update(0.1, at(60), Some(PMTR_SRV_RANGE_KWH));
        assert_eq!(e, Event::Wrapped);
        assert!(close(kwh(&parts), 0.3), "{parts:?}");
        assert!(close(c.total, 6553.7));
        let (e, _) = c.update(0.4, at(120), Some(PMTR_SRV_RANGE_KWH));
        assert_eq!(e, Event::Counted);
        assert!(close(c.total, 6554.0));
    }

    #[test]
    fn a_wrap_with_a_multiplier_uses_the_scaled_range() {
        let range = PMTR_SRV_RANGE_KWH * 10.0;
        let mut c = Counter::start(65535.0, at(0));
        let (e, parts) = c.update(2.0, at(60), Some(range));
        assert_eq!(e, Event::Wrapped);
        assert!(close(kwh(&parts), 3.0));
    }

    #[test]
    fn a_drop_low_in_the_range_is_a_reset_not_a_wrap() {
        let mut c = Counter::start(1000.0, at(0));
        assert_eq!(c.update(0.0, at(60), Some(PMTR_SRV_RANGE_KWH)).0, Event::Held(Break::Reset));
    }

    #[test]
    fn a_replaced_meter_continues_from_the_total() {
        let mut c = Counter::start(5000.0, at(0));
        assert_eq!(c.update(312.0, at(3600), None).0, Event::Held(Break::Replaced));
        let (e, parts) = c.update(312.5, at(3660), None);
        assert_eq!(e, Event::Confirmed(Break::Replaced));
        assert!(close(kwh(&parts), 0.5));
        assert!(close(c.total, 5000.5));
        // A replacement reading higher than the old one: an implausible jump, same path.
        let mut c = Counter::start(100.0, at(0));
        assert_eq!(c.update(9000.0, at(5), None).0, Event::Held(Break::Replaced));
        assert_eq!(c.update(9000.001, at(10), None).0, Event::Confirmed(Break::Replaced));
        assert!(close(c.total, 100.001));
    }

    #[test]
    fn a_single_wild_reading_is_a_glitch() {
        let mut c = Counter::start(100.0, at(0));
        assert_eq!(c.update(60000.0, at(5), None).0, Event::Held(Break::Replaced));
        let (e, parts) = c.update(100.01, at(10), None);
        assert_eq!(e, Event::Glitch);
        assert!(close(kwh(&parts), 0.01));
        assert_eq!(parts[0].from, at(0));
        assert!(close(c.total, 100.01));
        assert_eq!(c.update(0.0, at(15), None).0, Event::Held(Break::Reset));
        assert_eq!(c.update(100.02, at(20), None).0, Event::Glitch);
        assert!(close(c.total, 100.02));
    }

    #[test]
    fn a_break_after_a_break_replaces_the_held_reading() {
        let mut c = Counter::start(100.0, at(0));
        c.update(50.0, at(5), None);
        assert_eq!(c.update(7000.0, at(10), None).0, Event::Held(Break::Replaced));
        assert_eq!(c.update(7000.0, at(15), None).0, Event::Confirmed(Break::Replaced));
        assert!(close(c.total, 100.0));
    }

    #[test]
    fn stale_and_non_finite_readings_are_ignored() {
        let mut c = Counter::start(1.0, at(10));
        assert_eq!(c.update(2.0, at(10), None).0, Event::Stale);
        assert_eq!(c.update(2.0, at(5), None).0, Event::Stale);
        assert_eq!(c.update(f64::NAN, at(20), None).0, Event::Stale);
        assert_eq!(c.total, 1.0);
    }

    #[test]
    fn a_clock_set_back_restarts_from_the_reading_instead_of_waiting() {
        let mut c = Counter::start(10.0, at(100_000));
        assert_eq!(c.update(10.5, at(100_000 - 60), None).0, Event::Stale);
        assert_eq!(c.update(10.5, at(0), None).0, Event::ClockBack);
        assert_eq!(c.total, 10.0);
        let (e, parts) = c.update(10.75, at(60), None);
        assert_eq!(e, Event::Counted);
        assert!(close(kwh(&parts), 0.25) && close(c.total, 10.25));
    }

    #[test]
    fn a_long_gap_allows_a_large_step() {
        let mut c = Counter::start(1.0, at(0));
        // 10 hours at 20 kW.
        assert_eq!(c.update(201.0, at(36_000), None).0, Event::Counted);
        assert!(close(c.total, 201.0));
    }

    mod property {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the meter says, the total never goes down and parts are never negative.
            #[test]
            fn the_total_never_decreases(readings in proptest::collection::vec((0.0f64..10_000.0, 1i64..4000), 1..60)) {
                let mut c = Counter::start(readings[0].0, at(0));
                let mut t = 0;
                for (raw, dt) in readings {
                    t += dt;
                    let before = c.total;
                    let (_, parts) = c.update(raw, at(t), Some(PMTR_SRV_RANGE_KWH));
                    prop_assert!(c.total >= before);
                    prop_assert!((c.total - before - kwh(&parts)).abs() < 1e-6);
                    for p in parts {
                        prop_assert!(p.kwh >= 0.0 && p.from < p.to);
                    }
                }
            }
        }
    }
}
