//! Broken-neutral detection on a three-phase voltage set. Pure: readings and the time go in,
//! a [`Verdict`] comes out; no I/O, no clock.
//!
//! When the neutral conductor of a three-phase supply breaks, the loads of the three phases
//! end up in series across the line voltages: the load's neutral point leaves the centre of
//! the line triangle and one phase rises towards the line voltage while another sags. Two
//! tiers estimate how far it moved:
//!
//! - [`line::LineTier`], where the meter also measures the line voltages (RX380): the neutral
//!   point is located in the measured line triangle by least squares
//!   ([`geometry::locate_neutral`]) and measured from the source's star point, the point from
//!   which every side is seen under 120° ([`geometry::star_point`]), so that a source phase
//!   sagging or swelling on its own moves nothing; a displacement held over the threshold is
//!   a fault.
//! - [`magnitude::MagnitudeTier`], from the three phase magnitudes only (three PZEMs, a
//!   PMTR_001_SRV): the equilateral triangle that fits them ([`geometry::equilateral_fit`])
//!   gives a displacement and a line voltage; the evidence is the phases moving with the
//!   load while that line voltage stays put, which is what a floating neutral does and what
//!   grid disturbances (a sag on one phase, all phases drifting, noise) do not.
//!
//! Where the meters give the phase currents, both also measure the neutral's impedance from
//! the load steps ([`impedance::ImpedanceEstimate`]): a displacement over the threshold behind
//! a neutral of a few ohms is a fault at once, which finds a terminal loosening over minutes.
//!
//! [`seed::SeedRule`] is seed 001's magnitude rule taken literally, kept as the benchmark's
//! baseline.

pub mod geometry;
pub mod impedance;
pub mod line;
pub mod magnitude;
pub mod seed;
pub mod watch;

use serde::{Deserialize, Serialize};

/// The state of one voltage set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No sign of a displaced neutral.
    #[default]
    Ok,
    /// A displacement over the threshold, not yet confirmed (or half the threshold, held).
    Suspect,
    /// A broken neutral: confirmed, latched until the displacement has stayed low a while.
    Fault,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Suspect => "suspect",
            State::Fault => "fault",
        }
    }
}

pub use crate::config::Sensitivity;

/// A set's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Nominal phase voltage, volts (default 230).
    pub nominal: f64,
    /// The neutral displacement that is a fault, volts (default 20).
    pub shift: f64,
    pub sensitivity: Sensitivity,
}

impl Settings {
    /// A configured set's settings.
    pub fn of(set: &crate::config::NeutralSet) -> Settings {
        Settings { nominal: set.nominal, shift: set.shift, sensitivity: set.sensitivity }
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { nominal: 230.0, shift: 20.0, sensitivity: Sensitivity::Normal }
    }
}

/// What a detector says after a sample.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Verdict {
    pub state: State,
    /// The evidence: 1 or more confirms a fault (the tiers define it; see each).
    pub score: f64,
    /// The estimated neutral displacement, volts; `None` when the sample could not give one.
    pub shift: Option<f64>,
}

/// One set's detector: tier 2 on samples with line voltages, tier 1 on the others.
#[derive(Debug, Clone)]
pub struct Detector {
    line: line::LineTier,
    magnitude: magnitude::MagnitudeTier,
}

impl Detector {
    pub fn new(settings: Settings) -> Detector {
        Detector { line: line::LineTier::new(settings), magnitude: magnitude::MagnitudeTier::new(settings) }
    }

    /// A sample at `now` (seconds on any monotonic clock).
    pub fn update(&mut self, now: f64, sample: &Sample) -> Verdict {
        match sample.line {
            Some(l) => self.line.update(now, sample.phase, l, sample.current),
            None => self.magnitude.update(now, sample.phase, sample.current),
        }
    }
}

/// One moment of a voltage set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The phase voltages U1, U2, U3.
    pub phase: [f64; 3],
    /// The line voltages U12, U23, U31, where measured.
    pub line: Option<[f64; 3]>,
    /// The phase currents I1, I2, I3, where measured.
    pub current: Option<[f64; 3]>,
}
