//! Seed 001's magnitude rule taken literally: the benchmark's baseline, not used by the
//! daemon. Pure.
//!
//! 1. Pre-check: some phase more than 10 % from nominal.
//! 2. ε = the highest phase ÷ nominal; of the other two, one must be at least and the other
//!    at most the seed's ratio √(4 + 12ε²)/(4ε) × nominal ([`seed_ratio`]).
//! 3. The angles between the phases derived from the magnitudes with the nominal line voltage
//!    (√3 × nominal) must sum to 360° within [`ANGLE_TOLERANCE`] (the seed gives no figure).
//! 4. Each sample's weight is Σ|ΔUk| since the previous sample; a sample passing 2 and 3 adds
//!    it to the score, one failing them subtracts it (the score stays at or above 0).
//! 5. A score of [`THRESHOLD`] volts (the seed gives no figure) raises the fault; it stays
//!    while the score does.

use super::geometry::{angles_from_magnitudes, seed_ratio};
use super::{Settings, State, Verdict};

pub const ANGLE_TOLERANCE: f64 = 5.0;
pub const THRESHOLD: f64 = 30.0;

#[derive(Debug, Clone)]
pub struct SeedRule {
    nominal: f64,
    score: f64,
    previous: Option<[f64; 3]>,
}

impl SeedRule {
    pub fn new(settings: Settings) -> SeedRule {
        SeedRule { nominal: settings.nominal, score: 0.0, previous: None }
    }

    pub fn update(&mut self, _now: f64, u: [f64; 3]) -> Verdict {
        let vp = self.nominal;
        let weight: f64 = self.previous.map_or(0.0, |p| u.iter().zip(p).map(|(a, b)| (a - b).abs()).sum());
        self.previous = Some(u);
        if u.iter().any(|v| (v / vp - 1.0).abs() > 0.1) {
            let top = (0..3).max_by(|&a, &b| u[a].total_cmp(&u[b])).unwrap_or(0);
            let eps = u[top] / vp;
            let lim = seed_ratio(eps) * vp;
            let (a, b) = (u[(top + 1) % 3], u[(top + 2) % 3]);
            let bound = a.min(b) <= lim && a.max(b) >= lim;
            let angles = angles_from_magnitudes(u, 3f64.sqrt() * vp);
            let closed = angles.is_some_and(|a| (a.iter().sum::<f64>() - 360.0).abs() <= ANGLE_TOLERANCE);
            if bound && closed {
                self.score += weight;
            } else {
                self.score = (self.score - weight).max(0.0);
            }
        }
        let state = if self.score >= THRESHOLD {
            State::Fault
        } else if self.score > 0.0 {
            State::Suspect
        } else {
            State::Ok
        };
        Verdict { state, score: self.score / THRESHOLD, shift: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_rule_literal_misses_the_symmetric_broken_neutral() {
        // 253 V on L1, 219.4 V on L2 and L3: a neutral displaced 23 V along L1's median,
        // moving; the seed's ratio (0.978) wants one of L2, L3 above 225 V.
        let mut r = SeedRule::new(Settings::default());
        for s in 0..100 {
            let w = if s % 2 == 0 { 0.0 } else { 2.0 };
            let u = [253.0 + w, 219.4 - w / 2.0, 219.4 - w / 2.0];
            assert_ne!(r.update(f64::from(s), u).state, State::Fault);
        }
    }

    #[test]
    fn seed_rule_literal_confirms_an_asymmetric_moving_displacement() {
        use crate::neutral::geometry::Point;
        let vp: f64 = 230.0;
        let a = |deg: f64| Point::new(vp * deg.to_radians().cos(), vp * deg.to_radians().sin());
        let c = [a(90.0), a(-30.0), a(210.0)];
        let mut r = SeedRule::new(Settings::default());
        let mut last = State::Ok;
        for s in 0..20 {
            let n = Point::new(if s % 2 == 0 { -20.0 } else { -30.0 }, -30.0);
            last = r.update(f64::from(s), c.map(|k| n.dist(k))).state;
        }
        assert_eq!(last, State::Fault);
    }
}
