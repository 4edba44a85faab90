//! Triggers, the pure core: expressions, moving averages and the hysteresis state machine.
//!
//! - [`Expression`] (evalexpr 11.3, MIT): compiled once, every variable checked against the
//!   known names; evaluates to `Some(bool)`, or `None` when a variable has no value (a gap is
//!   unknown, never false).
//! - [`MovingAverage`]: simple mean of the samples inside a window (1 s to 1 h) over the
//!   readings' timestamps; no sample in the window, no value. Energy counters
//!   ([`Quantity::is_counter`](crate::reading::Quantity::is_counter)) are never averaged.
//! - [`Hysteresis`]: `hold`, `recovery` and `latch`; the clock is a `Duration` passed in.
//!
//! Variables keep the PMTR names in SI units ([`Sample::variable`](crate::reading::Sample::variable)):
//! `L1U L2U L3U` V, `L1I` A, `L1P` W, `L1e` kWh, `L1f` Hz, `L1pf`, `L12U L23U L31U`, totals
//! with no prefix (`P`, `e`, `f`, `pf`). Another meter's values carry its name as a prefix
//! (`gen.L1I`), and `hour`, `minute`, `weekday` (1 = Monday .. 7) give the time of day.
//! Relays, configuration, dry runs and the daemon wiring live elsewhere.

pub mod average;
pub mod expr;
pub mod state;

pub use average::MovingAverage;
pub use expr::{ExprError, Expression};
pub use state::{Hysteresis, State, Transition};

use crate::reading::Reading;

/// The trigger variables of one reading, by their PMTR names (`L1U`, `P`, …), unprefixed.
pub fn variables_of(reading: &Reading) -> impl Iterator<Item = (String, f64)> + '_ {
    reading.samples.iter().map(|s| (s.variable(), s.value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Phase, Quantity, Sample};

    #[test]
    fn variables_of_a_reading() {
        let samples = vec![
            Sample::new(Phase::L1, Quantity::Voltage, 230.0),
            Sample::new(Phase::Total, Quantity::ActivePower, 100.0),
        ];
        let r = Reading {
            meter: "main".into(),
            model: crate::meter::Model::Rx380,
            time: chrono::Utc::now(),
            samples,
            quality: Default::default(),
        };
        let v: Vec<_> = variables_of(&r).collect();
        assert_eq!(v, vec![("L1U".to_string(), 230.0), ("P".to_string(), 100.0)]);
    }
}
