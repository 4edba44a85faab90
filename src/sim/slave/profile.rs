//! What a simulated meter's values do over time ([`Profile`], [`GridTrace`]) and what goes wrong
//! with its replies ([`Fault`], [`Hostile`]). Pure.

use std::time::Duration;

/// How the values move away from the base values as time `t` (seconds) passes.
///
/// Every profile yields a voltage factor and a current factor; powers follow from both (PZEM:
/// `W = V·A·PF`; RX380: W, VA and var are scaled by the product of the two factors).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Profile {
    /// The base values, always.
    #[default]
    Steady,
    /// Voltage and current both scale by `1 + per_s·t/100` (`per_s` percent per second,
    /// negative for a fall; the factor stops at 0), so power scales by its square.
    Ramp { per_s: f64 },
    /// Voltage and current are multiplied by `factor` from `t = at_s` on.
    Step { at_s: f64, factor: f64 },
    /// Voltage and current each move by an independent pseudo-random amount in
    /// ±`amplitude` percent. Deterministic: a function of `seed` and of `t` only, with a new
    /// draw every 100 ms of `t` (so two reads in the same 100 ms agree).
    Noise { amplitude: f64, seed: u64 },
    /// A piecewise-constant voltage script of `(t, volts)` points in increasing `t`: from each
    /// point's `t` on, the (phase-to-neutral) voltage is its `volts`; before the first point it
    /// is the base voltage. Current is unchanged. RX380: all six voltages scale by the ratio of
    /// the scripted voltage to the mean base phase voltage.
    Script(Vec<(f64, f64)>),
    /// The voltages of a recorded [`GridTrace`] (one sample a second of `sim::grid`, a supply
    /// and a house whose neutral may break): an RX380 gives its phase and line voltages, a
    /// PZEM the voltage of phase `phase` (0, 1, 2 for L1, L2, L3). Current is unchanged. After
    /// the trace's end, its last sample.
    Grid { trace: std::sync::Arc<GridTrace>, phase: usize },
}

/// Voltages recorded from [`crate::sim::grid::Grid`], one sample a second from `t = 0`.
#[derive(Debug, Clone, PartialEq)]
pub struct GridTrace {
    pub samples: Vec<crate::sim::grid::GridSample>,
}

impl GridTrace {
    /// `seconds` seconds of `grid`, its neutral opened at `open_at` seconds (None: never).
    pub fn record(mut grid: crate::sim::grid::Grid, seconds: usize, open_at: Option<usize>) -> GridTrace {
        let samples = (0..seconds.max(1))
            .map(|t| {
                if Some(t) == open_at {
                    grid.set_neutral(None);
                }
                grid.step(1.0)
            })
            .collect();
        GridTrace { samples }
    }

    /// The sample at `t` seconds.
    pub fn at(&self, t: f64) -> Option<&crate::sim::grid::GridSample> {
        let i = if t.is_finite() && t > 0.0 { t as usize } else { 0 };
        self.samples.get(i.min(self.samples.len().saturating_sub(1)))
    }
}

/// Factors a profile applies at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Mods {
    pub(super) kv: f64,
    pub(super) ki: f64,
    /// Absolute voltage (script), instead of `kv`.
    pub(super) volts: Option<f64>,
}

impl Profile {
    pub(super) fn mods(&self, t: f64) -> Mods {
        let both = |k: f64| Mods { kv: k, ki: k, volts: None };
        match self {
            Profile::Steady => both(1.0),
            Profile::Ramp { per_s } => both((1.0 + per_s * t / 100.0).max(0.0)),
            Profile::Step { at_s, factor } => both(if t >= *at_s { *factor } else { 1.0 }),
            Profile::Noise { amplitude, seed } => {
                let slot = (t * 10.0).floor() as i64;
                let a = amplitude / 100.0;
                Mods {
                    kv: (1.0 + a * unit_noise(*seed, slot, 1)).max(0.0),
                    ki: (1.0 + a * unit_noise(*seed, slot, 2)).max(0.0),
                    volts: None,
                }
            }
            Profile::Script(points) => Mods {
                kv: 1.0,
                ki: 1.0,
                volts: points.iter().take_while(|(at, _)| *at <= t).last().map(|(_, v)| *v),
            },
            Profile::Grid { trace, phase } => {
                Mods { kv: 1.0, ki: 1.0, volts: trace.at(t).and_then(|s| s.phase.get(*phase).copied()) }
            }
        }
    }
}

/// SplitMix64: a small, fixed, portable mixer (the values must not change with a crate update).
pub(super) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A deterministic number in [-1, 1] from a seed, a time slot and a channel.
fn unit_noise(seed: u64, slot: i64, channel: u64) -> f64 {
    let h = splitmix64(seed ^ splitmix64(slot as u64 ^ splitmix64(channel)));
    (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// What goes wrong with a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// The meter does not hear the request: no action, no reply (a dead or unpowered meter).
    NoReply,
    /// The reply goes out with its CRC spoiled.
    BadCrc,
    /// The reply starts this much later than it should.
    Late(Duration),
    /// The meter refuses with this exception code, and does not act.
    Exception(u8),
    /// The reply is replaced by as many pseudo-random bytes.
    Garbage,
    /// The reply is replaced by this many bytes built to defeat a frame scanner (see
    /// [`Hostile`]); none of them makes a good frame for the request.
    Hostile(Hostile, u16),
}

/// Replies that look like the start of the one asked for, again and again, and never are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// Our address and function with the largest byte count (`01 04 FF`), then exception
    /// headers `01 84 01 84 …` that never end in a good CRC: one burst of 260 bytes of these
    /// once kept a scanner that retried from every offset busy for ever.
    Exceptions,
    /// `01 04 FF` over and over: a candidate every third byte, each claiming 260 bytes.
    Headers,
    /// `01 04 02 01 04 02 …`: a candidate every third byte, each complete after seven bytes and
    /// each failing its CRC.
    Overlap,
}

impl Hostile {
    pub const ALL: [Hostile; 3] = [Hostile::Exceptions, Hostile::Headers, Hostile::Overlap];

    pub fn name(self) -> &'static str {
        match self {
            Hostile::Exceptions => "exceptions",
            Hostile::Headers => "headers",
            Hostile::Overlap => "overlap",
        }
    }

    /// `len` bytes of this pattern, in answer to `function` from slave `address`.
    pub fn burst(self, address: u8, function: u8, len: usize) -> Vec<u8> {
        let unit: Vec<u8> = match self {
            Hostile::Exceptions => vec![address, function | 0x80],
            Hostile::Headers => vec![address, function, 0xFF],
            Hostile::Overlap => vec![address, function, 0x02],
        };
        let head: &[u8] = match self {
            Hostile::Exceptions => &[address, function, 0xFF],
            _ => &[],
        };
        head.iter().chain(unit.iter().cycle()).copied().take(len).collect()
    }
}
