//! The neutral's impedance, measured from the load steps. Pure.
//!
//! Behind a neutral of impedance Zn the house's neutral point sits at Zn × the neutral current
//! from the source's, so when a load switches the point moves by Zn × the change of the neutral
//! current. Magnitudes give both, as far as they can: the point located from the three phase
//! voltages ([`neutral_point`]) and the neutral current's change as each phase's load step
//! along its phase ([`load_vector`], currents in phase with their voltages). The slope of the
//! one against the other, by least squares over the steps of the last [`MEMORY`] seconds,
//! reads a sound supply (its neutral and, a part of it, its phases' impedance) at a few tenths
//! of an ohm whatever the grid does to the magnitudes, and a neutral loosening at its
//! impedance. Steps in which the grid moved the voltages are left out: the fitted line voltage
//! moving, or the point moving more than [`MOVE_BOUND`] volts per ampere of step (a sag
//! passing from one phase to another in the same second as a load step).
//!
//! Two corrections make it read the neutral itself, not less and not more:
//! - **The loads in parallel.** A load step `ΔI` does not move the point by `Zn·ΔI`: the point
//!   moving changes every phase's voltage and so every other load's current, against the step.
//!   By Millman's theorem the point moves by `ΔI / (Yn + ΣY)`, the neutral in parallel with the
//!   house's loads (`ΣY = Σ I_k / U_k`, about 15 Ω for 1.2 kW a phase). The slope `Zm` is that
//!   parallel impedance, and the neutral's is `Zm / (1 - Zm·ΣY)`: without it a 5 Ω neutral
//!   read 3.7 Ω.
//! - **The grid's noise.** A few small steps (lights, electronics: tenths of an ampere) on a
//!   grid whose voltages wander by tenths of a volt a second give a slope of an ohm or more by
//!   chance. The noise is measured where no load switched (steps under [`QUIET_STEP`], the
//!   point moving [`QUIET_MOVE`] volts at most): its variance per axis over [`NOISE_MEMORY`]
//!   seconds. The slope is taken one standard error low (`σ / √Σ|ΔI|²`): nothing for a
//!   kettle's 9 A, most of it for a few tenths of an ampere; and while that error is over
//!   [`MAX_ERROR`] the steps cannot tell.
//!
//! Both tiers use it (tier 1 without the two corrections, [`ImpedanceEstimate::uncorrected`]):
//! a displacement over `shift` behind [`FAULT_IMPEDANCE`] ohms or more is no transient (tier 2,
//! with both corrections: behind [`HOLD_IMPEDANCE`](super::line::HOLD_IMPEDANCE)).

use super::geometry::equilateral_fit;

/// Time constant of the neutral impedance estimate's memory, seconds.
pub const MEMORY: f64 = 20.0;
/// Time constant of the grid noise's measurement, seconds.
pub const NOISE_MEMORY: f64 = 60.0;
/// A step whose load changed by less than this (amperes, as [`load_vector`] gives it) is the
/// grid's noise alone, when the point moved by at most [`QUIET_MOVE`].
pub const QUIET_STEP: f64 = 0.05;
/// Volts the point may move in a quiet step that measures the noise: more is an event (the
/// neutral letting go, a sag beginning), not noise.
pub const QUIET_MOVE: f64 = 5.0;
/// The grid noise's variance (V² per axis) assumed until [`MIN_QUIET`] quiet steps measured it:
/// 0.5 V, more than a quiet grid and a 0.1 V meter give.
pub const DEFAULT_NOISE: f64 = 0.25;
/// The largest standard error (ohms) of an estimate: with fewer steps than that needs (a
/// noisy grid), the steps cannot tell.
pub const MAX_ERROR: f64 = 0.5;
/// Quiet steps (within [`NOISE_MEMORY`]) that measure the noise.
pub const MIN_QUIET: f64 = 3.0;
/// The smallest `1 - Zm·ΣY` the parallel correction divides by: a slope that says the neutral
/// is open reads 20 × itself, finite.
const MIN_PARALLEL: f64 = 0.05;
/// Load steps (Σ of their squares, A², within the estimate's memory) the estimate needs.
pub const EXCITATION: f64 = 1.0;
/// Neutral impedance, ohms, over which a displaced neutral is a fault: far above what a sound
/// supply and neutral show (tenths of an ohm), far below a floating neutral (the other
/// phases' loads in series, tens of ohms).
pub const FAULT_IMPEDANCE: f64 = 2.0;
/// Volts the neutral point may move per ampere of load step for the step to count: a neutral
/// far past [`FAULT_IMPEDANCE`] moves far at every step, and the tiers find it by that.
pub const MOVE_BOUND: f64 = 30.0;
/// Amperes of load step (as [`load_vector`] gives it) past which a step is no reading of
/// a house (a meter's garbage): left out of the estimate, which it would swamp.
pub const MAX_LOAD_STEP: f64 = 1000.0;
/// Volts the fitted side may move per ampere of load step by the supply's own impedance.
pub const SUPPLY_BOUND: f64 = 0.35;

/// The unit vectors of the three phases, 120° apart (L1 at 0°, L2 at -120°, L3 at 120°).
const PHASES: [(f64, f64); 3] =
    [(1.0, 0.0), (-0.5, -0.866_025_403_784_438_6), (-0.5, 0.866_025_403_784_438_6)];

/// The neutral point, as a vector from the centre of the equilateral triangle of side `side`
/// (the fit's) at distances `u` from its corners: |P - A_k|² = |P|² + R² - 2 P·A_k with
/// A_k = R e_k, and Σ (P·e_k) e_k = 3/2 P, so P = -(1 / 3R) Σ u_k² e_k.
pub fn neutral_point(u: [f64; 3], side: f64) -> (f64, f64) {
    let r = side / 3f64.sqrt();
    let (x, y) =
        u.iter().zip(PHASES).fold((0.0, 0.0), |(x, y), (v, (ex, ey))| (x + v * v * ex, y + v * v * ey));
    (-x / (3.0 * r), -y / (3.0 * r))
}

/// Each phase's load step between two samples, amperes: the change of its current beyond what
/// its voltage change alone gives a load of the same impedance (`I'·U/U'`). Voltages that move
/// with no load switching (the grid) give none.
pub fn phase_steps(u: [f64; 3], i: [f64; 3], u0: [f64; 3], i0: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|k| if u0[k] > 0.0 { i[k] - i0[k] * u[k] / u0[k] } else { i[k] })
}

/// How the loads changed between two samples as a vector: each phase's step
/// ([`phase_steps`]) along its phase. Currents taken in phase with their voltages: the neutral
/// current's change, as far as magnitudes can tell.
pub fn load_vector(u: [f64; 3], i: [f64; 3], u0: [f64; 3], i0: [f64; 3]) -> (f64, f64) {
    phase_steps(u, i, u0, i0)
        .iter()
        .zip(PHASES)
        .fold((0.0, 0.0), |(x, y), (step, (ex, ey))| (x + step * ex, y + step * ey))
}

/// The most admittance a house's loads are taken to have (siemens: 23 kA at 230 V), so that a
/// meter's garbage stays finite in the sums.
const MAX_ADMITTANCE: f64 = 100.0;

/// The admittance of the house's loads (siemens): Σ I_k / U_k.
fn admittance(u: [f64; 3], i: [f64; 3]) -> f64 {
    let y: f64 = (0..3).map(|k| if u[k] > 0.0 { i[k].abs() / u[k] } else { 0.0 }).sum();
    y.min(MAX_ADMITTANCE)
}

/// Steps longer than this (seconds) are a gap: nothing is measured across them.
pub const MAX_STEP: f64 = 10.0;

#[derive(Debug, Clone, Copy)]
struct Previous {
    time: f64,
    phase: [f64; 3],
    current: [f64; 3],
    side: f64,
    point: (f64, f64),
}

/// The estimate: sums decaying with [`MEMORY`] (the noise's with [`NOISE_MEMORY`]).
#[derive(Debug, Clone)]
pub struct ImpedanceEstimate {
    /// Whether [`ImpedanceEstimate::impedance`] corrects the slope for the loads in parallel
    /// and the grid's noise (tier 2), or gives it as it is (tier 1).
    corrected: bool,
    /// The last sample's time.
    time: Option<f64>,
    /// The last sample that gave a point and currents.
    previous: Option<Previous>,
    /// Σ ΔP·ΔI over the steps.
    moved_by_load: f64,
    /// Σ |ΔI|² over the steps.
    load_squared: f64,
    /// Σ ΣY·|ΔI|² over the steps: the loads' admittance (siemens) weighed as the steps are.
    admittance: f64,
    /// Σ |ΔP|² over the quiet steps, and their number (both decaying with [`NOISE_MEMORY`]).
    quiet_squared: f64,
    quiet: f64,
}

impl Default for ImpedanceEstimate {
    fn default() -> Self {
        ImpedanceEstimate::new()
    }
}

impl ImpedanceEstimate {
    /// The corrected estimate (tier 2).
    pub fn new() -> ImpedanceEstimate {
        ImpedanceEstimate {
            corrected: true,
            time: None,
            previous: None,
            moved_by_load: 0.0,
            load_squared: 0.0,
            admittance: 0.0,
            quiet_squared: 0.0,
            quiet: 0.0,
        }
    }

    /// The slope as it is, without the corrections (tier 1, whose false-alarm margin over a
    /// simulated year was measured with it; the corrected estimate under tier 1's rules gave
    /// false faults on a noisy grid, see BENCHMARKS.md).
    pub fn uncorrected() -> ImpedanceEstimate {
        ImpedanceEstimate { corrected: false, ..ImpedanceEstimate::new() }
    }

    /// A sample: the phase voltages and, where measured, the phase currents (none: nothing
    /// measured until the next sample with them).
    pub fn update(&mut self, now: f64, phase: [f64; 3], current: Option<[f64; 3]>) {
        // What was measured fades with the time passed, samples or not.
        if let Some(dt) = self.time.replace(now).map(|t| now - t).filter(|dt| *dt > 0.0) {
            let keep = (-dt / MEMORY).exp();
            self.moved_by_load *= keep;
            self.load_squared *= keep;
            self.admittance *= keep;
            let keep = (-dt / NOISE_MEMORY).exp();
            self.quiet_squared *= keep;
            self.quiet *= keep;
        }
        let current = current.filter(|c| c.iter().all(|i| i.is_finite()));
        let (Some(fit), Some(current)) = (equilateral_fit(phase), current) else {
            self.previous = None;
            return;
        };
        let point = neutral_point(phase, fit.side);
        if let Some(p) = self.previous {
            let dt = now - p.time;
            if dt > 0.0 && dt <= MAX_STEP {
                let (lx, ly) = load_vector(phase, current, p.phase, p.current);
                let amps = lx.hypot(ly);
                let side_moved = (fit.side - p.side).abs();
                let (dx, dy) = (point.0 - p.point.0, point.1 - p.point.1);
                let moved = dx.hypot(dy);
                if amps < QUIET_STEP && moved <= QUIET_MOVE {
                    self.quiet_squared += dx * dx + dy * dy;
                    self.quiet += 1.0;
                }
                if amps <= MAX_LOAD_STEP
                    && side_moved <= 1.0 + SUPPLY_BOUND * amps
                    && moved <= 2.0 + MOVE_BOUND * amps
                {
                    self.moved_by_load += dx * lx + dy * ly;
                    self.load_squared += amps * amps;
                    self.admittance += admittance(phase, current) * amps * amps;
                }
            }
        }
        self.previous = Some(Previous { time: now, phase, current, side: fit.side, point });
    }

    /// The neutral impedance the load steps of the estimate's memory show (ohms: the neutral
    /// point's movement along the load's change, per ampere, one standard error low and
    /// corrected for the loads in parallel), when they were enough to tell ([`EXCITATION`],
    /// [`MAX_ERROR`]).
    pub fn impedance(&self) -> Option<f64> {
        if !self.corrected {
            return (self.load_squared >= EXCITATION).then(|| self.moved_by_load / self.load_squared);
        }
        let noise =
            if self.quiet >= MIN_QUIET { self.quiet_squared / (2.0 * self.quiet) } else { DEFAULT_NOISE };
        // Enough steps to tell: the excitation, and a standard error within MAX_ERROR.
        if self.load_squared < EXCITATION.max(noise / (MAX_ERROR * MAX_ERROR)) {
            return None;
        }
        let slope = self.moved_by_load / self.load_squared - (noise / self.load_squared).sqrt();
        let parallel = 1.0 - slope * self.admittance / self.load_squared;
        Some(slope / parallel.max(MIN_PARALLEL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neutral::geometry::Point;
    use std::f64::consts::PI;

    const VP: f64 = 230.0;

    /// The magnitudes of a neutral point `n` in a balanced triangle with L1 at 90°.
    fn magnitudes(n: Point) -> [f64; 3] {
        let a = |deg: f64| Point::new(VP * deg.to_radians().cos(), VP * deg.to_radians().sin());
        [a(90.0), a(-30.0), a(210.0)].map(|c| n.dist(c))
    }

    /// The neutral point from the magnitudes, in the frame of the phases (L1 at 0°).
    #[test]
    fn neutral_point_is_where_the_magnitudes_put_it() {
        for (x, y) in [(0.0, 0.0), (12.0, -7.0), (-30.0, 45.0), (80.0, 10.0)] {
            let u = magnitudes(Point::new(x, y));
            let fit = equilateral_fit(u).unwrap();
            // `magnitudes` has L1 at 90°: the point turned by -90°.
            let (px, py) = neutral_point(u, fit.side);
            assert!((px - y).abs() < 1e-6 && (py + x).abs() < 1e-6, "{x} {y}: {px} {py}");
            assert!((px.hypot(py) - fit.displacement).abs() < 1e-6);
        }
    }

    /// The phase voltages and currents of a house on a balanced 230 V source behind a neutral of
    /// `zn` ohms, with resistive loads of `ohms` (infinite: none) on L1, L2, L3: each load's
    /// current in phase with its voltage (from the neutral point to its corner), the point at
    /// `zn` × the sum of the currents (Millman, solved by iteration). L1 at 90°, as
    /// [`magnitudes`] has it.
    fn behind_neutral(zn: f64, ohms: [f64; 3]) -> ([f64; 3], [f64; 3]) {
        let corner = |deg: f64| Point::new(VP * f64::cos(deg * PI / 180.0), VP * f64::sin(deg * PI / 180.0));
        let corners = [corner(90.0), corner(-30.0), corner(210.0)];
        let mut n = Point::new(0.0, 0.0);
        for _ in 0..100 {
            let (x, y) = corners
                .iter()
                .zip(ohms)
                .fold((0.0, 0.0), |(x, y), (c, r)| (x + zn * (c.x - n.x) / r, y + zn * (c.y - n.y) / r));
            n = Point::new(x, y);
        }
        let u = magnitudes(n);
        (u, [0, 1, 2].map(|k| u[k] / ohms[k]))
    }

    /// A sound neutral (0.3 Ω) on a grid whose voltages wander by up to 2 V a second, with
    /// only a 0.5 A load switching: by chance the slope of a few such steps reads well over the
    /// fault impedance; the estimate (one standard error low, and none while that error is
    /// over [`MAX_ERROR`]) never does.
    #[test]
    fn small_steps_on_a_noisy_grid_never_read_as_a_bad_neutral() {
        let mut e = ImpedanceEstimate::new();
        let mut seed = 12345u64;
        let mut noise = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 4.0
        };
        let (mut raw_max, mut max) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
        for s in 0..7200 {
            let ohms = [46.0, if (s / 2) % 2 == 1 { 460.0 } else { f64::INFINITY }, 46.0];
            let (u, _) = behind_neutral(0.3, ohms);
            // The grid's noise: the loads' currents follow it.
            let u = u.map(|v| v + noise());
            e.update(f64::from(s), u, Some([0, 1, 2].map(|k| u[k] / ohms[k])));
            if e.load_squared >= EXCITATION {
                raw_max = raw_max.max(e.moved_by_load / e.load_squared);
            }
            max = max.max(e.impedance().unwrap_or(f64::NEG_INFINITY));
        }
        // Tier 2 takes the hold away at the lower bar.
        let bar = crate::neutral::line::HOLD_IMPEDANCE;
        assert!(raw_max > FAULT_IMPEDANCE, "the case shows nothing: {raw_max}");
        assert!(max < bar, "{max} (raw {raw_max})");
    }

    #[test]
    fn the_estimate_reads_the_neutral_impedance_and_forgets_it() {
        // 3 Ω behind a 7.5 A load on L1 and a 0.6 A load switching on L2 every 2 s. The point
        // moves by less than 3 Ω × the step, since the loads' currents follow it back; the
        // estimate reads the neutral.
        let sample = |s: u32| {
            behind_neutral(3.0, [30.67, if (s / 2) % 2 == 1 { 383.3 } else { f64::INFINITY }, f64::INFINITY])
        };
        let mut e = ImpedanceEstimate::new();
        assert_eq!(e.impedance(), None);
        for s in 0..60 {
            let (u, i) = sample(s);
            e.update(f64::from(s), u, Some(i));
        }
        let z = e.impedance().unwrap();
        assert!((2.9..3.1).contains(&z), "{z}");
        // Without the loads' correction the slope reads the neutral in parallel with them.
        let y = e.admittance / e.load_squared;
        let parallel = 1.0 / (1.0 / 3.0 + y);
        assert!((z / (1.0 + z * y) - parallel).abs() < 0.01 * parallel && parallel < 2.9, "{z} {parallel}");
        // Samples without currents measure nothing, and what was measured fades.
        for s in 60..200 {
            e.update(f64::from(s), sample(s).0, None);
        }
        assert_eq!(e.impedance(), None);
    }
}
