//! Tier 2: the neutral point located in the measured line triangle. Pure.
//!
//! Each sample gives the displacement directly ([`locate_neutral`]), so the rule is a
//! threshold with hysteresis in time: a displacement of at least `shift` held for
//! [`HOLD_ON`] seconds (× the sensitivity factor) is a fault, which clears once it has stayed
//! under [`CLEAR_RATIO`] × `shift` for [`HOLD_OFF`] seconds. The hold rides out short voltage
//! dips (a 50 % dip on one phase shows as a 38 V displacement while it lasts). A sample whose
//! readings do not describe one point (misfit over [`MAX_RESIDUAL`]) is no evidence either way.
//! The score is the displacement over `shift`.

use super::geometry::locate_neutral;
use super::{Settings, State, Verdict};

/// Seconds a displacement over the threshold must hold before it is a fault (normal).
pub const HOLD_ON: f64 = 3.0;
/// Seconds the displacement must stay low before a fault clears.
pub const HOLD_OFF: f64 = 30.0;
/// A fault clears under this fraction of the threshold; a suspect starts at half of it.
pub const CLEAR_RATIO: f64 = 0.7;
/// Misfit (volts, r.m.s.) over which a sample is ignored.
pub const MAX_RESIDUAL: f64 = 8.0;

#[derive(Debug, Clone)]
pub struct LineTier {
    settings: Settings,
    state: State,
    /// Since when the displacement has been over the threshold (for a fault) or under the
    /// clearing level (while in fault).
    since: Option<f64>,
    last: Verdict,
}

impl LineTier {
    pub fn new(settings: Settings) -> LineTier {
        LineTier { settings, state: State::Ok, since: None, last: Verdict::default() }
    }

    pub fn update(&mut self, now: f64, phase: [f64; 3], line: [f64; 3]) -> Verdict {
        let fix = match locate_neutral(phase, line) {
            Some(f) if f.residual <= MAX_RESIDUAL => f,
            _ => {
                self.last.shift = None;
                return self.last;
            }
        };
        let d = fix.displacement;
        let shift = self.settings.shift;
        let k = self.settings.sensitivity.factor();
        if self.state == State::Fault {
            if d < CLEAR_RATIO * shift {
                let since = *self.since.get_or_insert(now);
                if now - since >= HOLD_OFF * k {
                    self.state = State::Ok;
                    self.since = None;
                }
            } else {
                self.since = None;
            }
        } else if d >= shift {
            let since = *self.since.get_or_insert(now);
            self.state = if now - since >= HOLD_ON * k { State::Fault } else { State::Suspect };
            if self.state == State::Fault {
                self.since = None;
            }
        } else {
            self.since = None;
            self.state = if d >= 0.5 * shift { State::Suspect } else { State::Ok };
        }
        self.last = Verdict { state: self.state, score: d / shift, shift: Some(d) };
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neutral::geometry::Point;

    const VP: f64 = 230.0;

    fn set(n: Point) -> ([f64; 3], [f64; 3]) {
        let a = |deg: f64| Point::new(VP * deg.to_radians().cos(), VP * deg.to_radians().sin());
        let c = [a(90.0), a(-30.0), a(210.0)];
        (c.map(|k| n.dist(k)), [c[0].dist(c[1]), c[1].dist(c[2]), c[2].dist(c[0])])
    }

    #[test]
    fn line_tier_faults_after_the_hold_and_not_before() {
        let mut t = LineTier::new(Settings::default());
        let (u, l) = set(Point::new(0.0, 0.0));
        assert_eq!(t.update(0.0, u, l).state, State::Ok);
        let (u, l) = set(Point::new(25.0, 0.0));
        let v = t.update(1.0, u, l);
        assert_eq!(v.state, State::Suspect);
        assert!((v.shift.unwrap() - 25.0).abs() < 1e-6);
        assert_eq!(t.update(3.0, u, l).state, State::Suspect);
        assert_eq!(t.update(4.0, u, l).state, State::Fault);
    }

    #[test]
    fn line_tier_rides_out_a_short_dip() {
        let mut t = LineTier::new(Settings::default());
        let (u, l) = set(Point::new(0.0, -40.0));
        let (u0, l0) = set(Point::new(0.0, 0.0));
        for s in 0..100 {
            let s = f64::from(s);
            let v = if (s as i64) % 10 < 2 { t.update(s, u, l) } else { t.update(s, u0, l0) };
            assert_ne!(v.state, State::Fault, "at {s}");
        }
    }

    #[test]
    fn line_tier_fault_clears_only_after_staying_low() {
        let mut t = LineTier::new(Settings::default());
        let (u, l) = set(Point::new(60.0, 0.0));
        for s in 0..5 {
            t.update(f64::from(s), u, l);
        }
        assert_eq!(t.update(5.0, u, l).state, State::Fault);
        // Between the clearing level and the threshold: stays a fault.
        let (u1, l1) = set(Point::new(16.0, 0.0));
        assert_eq!(t.update(100.0, u1, l1).state, State::Fault);
        let (u0, l0) = set(Point::new(2.0, 0.0));
        assert_eq!(t.update(101.0, u0, l0).state, State::Fault);
        assert_eq!(t.update(130.0, u0, l0).state, State::Fault);
        assert_eq!(t.update(131.0, u0, l0).state, State::Ok);
    }

    #[test]
    fn line_tier_ignores_readings_that_describe_no_point() {
        let mut t = LineTier::new(Settings::default());
        let (mut u, l) = set(Point::new(0.0, 0.0));
        u[0] = 330.0;
        for s in 0..20 {
            let v = t.update(f64::from(s), u, l);
            assert_eq!(v.state, State::Ok);
            assert_eq!(v.shift, None);
        }
    }
}
