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
pub use crate::expr;
pub mod run;
pub mod saved;
pub mod state;
pub use crate::config::vars;

pub use average::MovingAverage;
pub use engine::{Engine, Now, Output};
pub use expr::{ExprError, Expression, Kind};
pub use state::{Hysteresis, State, Transition};

pub use crate::spelling::expr_hint;
