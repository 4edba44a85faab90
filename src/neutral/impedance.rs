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
//! impedance while it is still small. Steps in which the grid moved the voltages are left out:
//! the fitted line voltage moving, or the point moving more than [`MOVE_BOUND`] volts per
//! ampere of step (a sag passing from one phase to another in the same second as a load step).
//! Both tiers use it: a displacement over `shift` behind [`FAULT_IMPEDANCE`] ohms or more is
//! no transient.

use super::geometry::equilateral_fit;

/// Time constant of the neutral impedance estimate's memory, seconds.
pub const MEMORY: f64 = 20.0;
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

/// The estimate: sums decaying with [`MEMORY`].
#[derive(Debug, Clone, Default)]
pub struct ImpedanceEstimate {
    /// The last sample's time.
    time: Option<f64>,
    /// The last sample that gave a point and currents.
    previous: Option<Previous>,
    /// Σ ΔP·ΔI over the steps.
    moved_by_load: f64,
    /// Σ |ΔI|² over the steps.
    load_squared: f64,
}

impl ImpedanceEstimate {
    pub fn new() -> ImpedanceEstimate {
        ImpedanceEstimate::default()
    }

    /// A sample: the phase voltages and, where measured, the phase currents (none: nothing
    /// measured until the next sample with them).
    pub fn update(&mut self, now: f64, phase: [f64; 3], current: Option<[f64; 3]>) {
        // What was measured fades with the time passed, samples or not.
        if let Some(dt) = self.time.replace(now).map(|t| now - t).filter(|dt| *dt > 0.0) {
            let keep = (-dt / MEMORY).exp();
            self.moved_by_load *= keep;
            self.load_squared *= keep;
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
                let moved = (point.0 - p.point.0).hypot(point.1 - p.point.1);
                if amps <= MAX_LOAD_STEP
                    && side_moved <= 1.0 + SUPPLY_BOUND * amps
                    && moved <= 2.0 + MOVE_BOUND * amps
                {
                    self.moved_by_load += (point.0 - p.point.0) * lx + (point.1 - p.point.1) * ly;
                    self.load_squared += amps * amps;
                }
            }
        }
        self.previous = Some(Previous { time: now, phase, current, side: fit.side, point });
    }

    /// The neutral impedance the load steps of the last [`MEMORY`] seconds show (ohms: the
    /// neutral point's movement along the load's change, per ampere), when they were enough
    /// to tell ([`EXCITATION`]).
    pub fn impedance(&self) -> Option<f64> {
        (self.load_squared >= EXCITATION).then(|| self.moved_by_load / self.load_squared)
    }

    /// The impedance over [`FAULT_IMPEDANCE`] × `k` (the sensitivity factor): 1 or more is a
    /// neutral whose displacement is no transient; 0 while the steps cannot tell.
    pub fn fault_ratio(&self, k: f64) -> f64 {
        self.impedance().map_or(0.0, |z| z / (FAULT_IMPEDANCE * k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neutral::geometry::Point;

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

    #[test]
    fn the_estimate_reads_the_neutral_impedance_and_forgets_it() {
        // 3 Ω behind a 7.5 A load on L1, a 0.4 A load switching on L2 every 2 s.
        let unit = |deg: f64| Point::new(deg.to_radians().cos(), deg.to_radians().sin());
        let sample = |s: u32| {
            let i = [7.5, if (s / 2) % 2 == 1 { 0.4 } else { 0.0 }, 0.0];
            let n = [90.0, -30.0, 210.0].iter().zip(i).fold(Point::new(0.0, 0.0), |p, (&deg, a)| {
                Point::new(p.x + 3.0 * a * unit(deg).x, p.y + 3.0 * a * unit(deg).y)
            });
            (magnitudes(n), i)
        };
        let mut e = ImpedanceEstimate::new();
        assert_eq!(e.impedance(), None);
        for s in 0..60 {
            let (u, i) = sample(s);
            e.update(f64::from(s), u, Some(i));
        }
        let z = e.impedance().unwrap();
        assert!((2.9..3.1).contains(&z), "{z}");
        // Samples without currents measure nothing, and what was measured fades.
        for s in 60..200 {
            e.update(f64::from(s), sample(s).0, None);
        }
        assert_eq!(e.impedance(), None);
    }
}
