//! Triggers: user expressions on moving averages, with hold/recovery hysteresis and latches,
//! driving relays.
//!
//! The pure core, tested without ports or clocks:
//! - [`Expression`] (evalexpr 11.3, MIT): compiled and checked once; a gap makes it unknown,
//!   never false. [`vars`]: what each variable name reads.
//! - [`MovingAverage`]: the mean of the samples inside a window (1 s to 1 h); no sample, no
//!   value. Energy counters are never averaged.
//! - [`Hysteresis`]: `hold`, `recovery` and `latch` of one trigger.
//! - [`Engine`]: every trigger and relay of a config: readings and ticks in, relay levels and
//!   [`StateChange`](crate::reading::StateChange)s out. [`saved`]: what survives a restart.
//!
//! The shell that runs it against real relays, storage and the control socket is
//! [`run`](crate::trigger::run).

pub mod average;
pub mod engine;
pub mod expr;
pub mod run;
pub mod saved;
pub mod state;
pub mod vars;

pub use average::MovingAverage;
pub use engine::{Engine, Now, Output};
pub use expr::{ExprError, Expression, Kind};
pub use state::{Hysteresis, State, Transition};

/// " (did you mean X, Y?)" for the candidates within edit distance 2 of `word`
/// (case-insensitive, closest first, at most 3), or "".
pub fn expr_hint(word: &str, candidates: &[&str]) -> String {
    let mut steps = 0;
    let mut scored: Vec<(usize, &str)> = candidates
        .iter()
        .filter_map(|c| crate::spelling::distance_within(word, c, 2, &mut steps).map(|d| (d, *c)))
        .collect();
    scored.sort();
    let close: Vec<&str> = scored.into_iter().take(3).map(|(_, c)| c).collect();
    if close.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", close.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints() {
        assert_eq!(expr_hint("L1V", &["L1U", "L1I", "P"]), " (did you mean L1I, L1U?)");
        assert_eq!(expr_hint("zzzz", &["L1U"]), "");
    }

    #[test]
    fn a_megabyte_variable_gets_no_hint() {
        assert_eq!(expr_hint(&"L".repeat(1 << 20), &["L1U", "L1I", "P"]), "");
    }
}
