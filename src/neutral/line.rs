//! Tier 2: the neutral point located in the measured line triangle. Pure.
//!
//! Each sample gives the displacement directly ([`locate_neutral`]), measured from the
//! source's star point, so the rule is a threshold with hysteresis in time: the time the
//! displacement spends at or over `shift` is counted up, the time under it counted down (to
//! zero), and a count of [`HOLD_ON`] seconds (× the sensitivity factor) is a fault. Counting
//! down instead of starting again lets a neutral that hovers around the threshold (a
//! loosening terminal) be confirmed while it crosses back and forth, and still rides out
//! short transients (a motor start). The hold is for a displacement that jumps over the
//! threshold from the neutral's usual level; where that level (the displacement's average over
//! [`LEVEL_TIME`] seconds) has itself crept up towards the threshold, as behind a loosening
//! terminal, a crossing is no transient, and the hold shrinks in proportion, from [`HOLD_ON`]
//! with the level at half the threshold or under to [`HOLD_MIN`] with the level at the
//! threshold (two seconds over in a row). A fault clears once the displacement has stayed under
//! [`CLEAR_RATIO`] × `shift` for [`HOLD_OFF`] seconds. A sample whose readings do not describe
//! one point (misfit over [`MAX_RESIDUAL`]) is no evidence either way. The score is the
//! displacement over `shift`.
//!
//! Where the meter gives the phase currents, the load steps also measure the neutral's
//! impedance ([`ImpedanceEstimate`]); behind [`HOLD_IMPEDANCE`] ohms or more (× the
//! sensitivity factor) there is no hold, since a displacement over the threshold behind a
//! neutral that bad is no transient, and a loosening one hovering at the threshold is
//! confirmed the first time it touches it. The bar is under tier 1's
//! [`FAULT_IMPEDANCE`](super::impedance::FAULT_IMPEDANCE), which is a fault by itself there;
//! here it only takes the hold away, and this estimate, from the located point, is the
//! tighter one (behind a fixed 1 Ω, 1.2 at its 90th percentile).
//!
//! A displacement can also sit at the threshold, as behind a terminal loosening under a steady
//! neutral current: its readings swing a volt either way with the loads (19.4, 20.1, 19.8,
//! 20.2, 19.1, …), each second over the threshold alone, so a hold never completes, and a
//! threshold taken to the tenth of a volt misses it by the meter's own error. Such a
//! displacement is *held*: it has not left [`HELD_RATIO`] × `shift` for [`HELD_TIME`] seconds
//! (× the sensitivity factor), which no transient from a sound neutral's level does, and there
//! is no hold either.
//!
//! Where there is no hold (held, behind a bad neutral, or floating, below), the threshold has a
//! guard: a reading at or over [`HELD_GUARD`] × `shift` is a fault. 5 % of 20 V is a volt,
//! about an RX380's class 0.5 error on each phase voltage; without the guard, a displacement
//! whose truth is 20.1 V read as 19.9 V goes on for as long as the loads keep it there. And a
//! reading within the guard that the hold rode out as a possible transient is a fault once the
//! hold is gone, if that was within the last [`HELD_TIME`] seconds (× the sensitivity factor):
//! the steps after it (a neutral that lets go leaps out and often falls back as the loads
//! rebalance) showed it was no transient.
//!
//! An open neutral behind a lightly loaded house is too bad for the estimate to read: each
//! small load that switches throws the point tens of volts per ampere (the loads' own parallel
//! impedance), which the estimate leaves out as no reading of a neutral. Here the line
//! triangle tells those steps apart from a source that moved: the point jumping
//! [`FLOAT_MOVE`] volts or more with a load, the line voltages still ([`floating_step`]), is
//! a neutral that holds nothing. They are counted, each count fading with a time constant of
//! [`FLOAT_MEMORY`] seconds, and a count of [`FLOAT_STEPS`] (× the sensitivity factor) takes
//! the hold away too: three steps within about 50 s at normal sensitivity, since the first
//! has faded a little by the second (five at low, one at high).
//!
//! The hold itself stays for what it is for: a displacement that jumps over the threshold from
//! a lower level for a second or two (a motor's inrush on a sound neutral).

use super::geometry::{locate_neutral, Point};
use super::impedance::{load_vector, ImpedanceEstimate, MOVE_BOUND};
use super::{Settings, State, Verdict};
use std::collections::VecDeque;

/// Seconds a displacement over the threshold must hold before it is a fault (normal).
pub const HOLD_ON: f64 = 3.0;
/// The shortest hold, seconds (normal), when the displacement's level has reached the threshold.
pub const HOLD_MIN: f64 = 1.0;
/// Time constant of the displacement's level (its moving average), seconds.
pub const LEVEL_TIME: f64 = 60.0;
/// Seconds the displacement must stay low before a fault clears.
pub const HOLD_OFF: f64 = 30.0;
/// A fault clears under this fraction of the threshold; a suspect starts at half of it.
pub const CLEAR_RATIO: f64 = 0.7;
/// Misfit (volts, r.m.s.) over which a sample is ignored.
pub const MAX_RESIDUAL: f64 = 8.0;
/// Volts the point must move in one step, the line triangle holding, to be a floating step.
pub const FLOAT_MOVE: f64 = 5.0;
/// Volts the line voltages may move in a floating step: the source held still.
pub const LINE_STEADY: f64 = 1.0;
/// Amperes of load step a floating step needs: a load switched, not a reading's noise.
pub const FLOAT_LOAD: f64 = 0.1;
/// Time constant of the floating steps' count, seconds.
pub const FLOAT_MEMORY: f64 = 60.0;
/// Floating steps (counted over [`FLOAT_MEMORY`], × the sensitivity factor) that show a
/// neutral no longer holds.
pub const FLOAT_STEPS: f64 = 2.0;
/// Ohms (× the sensitivity factor) of neutral, as the load steps read it, behind which a
/// displacement over the threshold is no transient: no hold. Behind a fixed neutral the
/// estimate reads 0.5 Ω as 0.68 and 1 Ω as 1.2 at the 90th percentile; a floating one tens of
/// ohms. A sound supply's estimate has a tail (up to 1.6 Ω in a simulated year of an unstable
/// grid, several ohms while a phase sags), but only from small steps: a motor's start, the
/// transient the hold is for, is a step of tens of amperes, which reads the neutral as it is.
pub const HOLD_IMPEDANCE: f64 = 1.5;
/// Seconds (× the sensitivity factor) a displacement must stay at or over [`HELD_RATIO`] ×
/// `shift` to be held.
pub const HELD_TIME: f64 = 10.0;
/// The fraction of `shift` a held displacement has not left.
pub const HELD_RATIO: f64 = 0.85;
/// The fraction of `shift` at which a displacement with no hold (held, behind a bad neutral,
/// after floating steps) is a fault: the threshold's guard.
pub const HELD_GUARD: f64 = 0.95;

/// What a step is measured from: the previous sample that located the point and gave currents.
#[derive(Debug, Clone, Copy)]
struct StepFrom {
    time: f64,
    offset: Point,
    phase: [f64; 3],
    line: [f64; 3],
    current: [f64; 3],
}

/// Whether the step from `a` to `b` is a floating step: the point moved [`FLOAT_MOVE`] volts or
/// more, further than [`MOVE_BOUND`] volts per ampere of the load that switched (at least
/// [`FLOAT_LOAD`]), while no line voltage moved more than [`LINE_STEADY`]. A sound neutral moves
/// the point by its fraction of an ohm times the step; a source that moves moves the triangle.
/// Only a neutral that no longer holds the point (the loads' own parallel impedance, tens of
/// ohms, behind it) gives such a step. Pure.
fn floating_step(a: &StepFrom, b: &StepFrom) -> bool {
    let (lx, ly) = load_vector(b.phase, b.current, a.phase, a.current);
    let amps = lx.hypot(ly);
    let moved = a.offset.dist(b.offset);
    let steady = (0..3).all(|k| (b.line[k] - a.line[k]).abs() <= LINE_STEADY);
    amps >= FLOAT_LOAD && moved >= FLOAT_MOVE && moved > 2.0 + MOVE_BOUND * amps && steady
}

#[derive(Debug, Clone)]
pub struct LineTier {
    settings: Settings,
    state: State,
    /// Seconds counted over the threshold (less those under it), while not in fault.
    over: f64,
    /// Since when the displacement has been under the clearing level, while in fault.
    low_since: Option<f64>,
    /// The time of the previous sample that described a point.
    previous: Option<f64>,
    /// The displacement's moving average over about [`LEVEL_TIME`] seconds (0 with no history).
    level: f64,
    last: Verdict,
    /// The neutral's impedance from the load steps, where the meter gives the currents.
    neutral: ImpedanceEstimate,
    /// The last sample a step is measured from, where the meter gives the currents.
    step_from: Option<StepFrom>,
    /// Floating steps ([`floating_step`]), decaying with [`FLOAT_MEMORY`].
    floating: f64,
    /// When the count last faded.
    floating_time: Option<f64>,
    /// The displacements of the last [`HELD_TIME`] seconds (× the sensitivity factor), with
    /// their times, and the last one before them: whether the displacement is held.
    recent: VecDeque<(f64, f64)>,
    /// The lowest of them, as the last sample found it ([`LineTier::held_floor`]).
    floor: Option<f64>,
}

/// Steps longer than this (seconds) are a gap: no time is counted across them.
pub const MAX_STEP: f64 = 10.0;

impl LineTier {
    pub fn new(settings: Settings) -> LineTier {
        LineTier {
            settings,
            state: State::Ok,
            over: 0.0,
            low_since: None,
            previous: None,
            level: 0.0,
            last: Verdict::default(),
            neutral: ImpedanceEstimate::new(),
            step_from: None,
            floating: 0.0,
            floating_time: None,
            recent: VecDeque::new(),
            floor: None,
        }
    }

    /// A sample: the phase and line voltages and, where measured, the phase currents.
    pub fn update(
        &mut self,
        now: f64,
        phase: [f64; 3],
        line: [f64; 3],
        current: Option<[f64; 3]>,
    ) -> Verdict {
        self.neutral.update(now, phase, current);
        let fix = match locate_neutral(phase, line) {
            Some(f) if f.residual <= MAX_RESIDUAL => f,
            _ => {
                self.last.shift = None;
                return self.last;
            }
        };
        self.count_floating(now, fix.offset, phase, line, current);
        let d = fix.displacement;
        let shift = self.settings.shift;
        let k = self.settings.sensitivity.factor();
        // The time this sample stands for: since the previous one, unless that was a gap.
        let dt = match self.previous.replace(now) {
            Some(p) if now > p && now - p <= MAX_STEP => now - p,
            _ => 0.0,
        };
        if dt == 0.0 {
            // The first sample, or one after a gap: nothing before it is known to be held.
            self.recent.clear();
        }
        self.floor = self.held(now, k);
        if self.state == State::Fault {
            if d < CLEAR_RATIO * shift {
                let since = *self.low_since.get_or_insert(now);
                if now - since >= HOLD_OFF * k {
                    self.state = State::Ok;
                    self.low_since = None;
                    self.over = 0.0;
                }
            } else {
                self.low_since = None;
            }
        } else {
            // No transient: a held displacement, or one behind a neutral the load steps show
            // bad (no hold). Such a displacement is a fault within the guard of the threshold.
            let hold = self.hold(k);
            let steady = hold == 0.0 || self.floor.is_some_and(|floor| floor >= HELD_RATIO * shift);
            // A reading within the guard in the window, held off then as a possible transient,
            // and a hold gone since (the load steps show the neutral bad): no transient.
            let shown = hold == 0.0 && self.recent.iter().any(|&(_, d)| d >= HELD_GUARD * shift);
            // The first sample over the threshold counts one second (the readings it stands
            // for were over it): a fault needs HOLD_ON seconds more.
            if d >= shift {
                self.over += if self.over == 0.0 { 1.0 } else { dt };
            } else {
                self.over = (self.over - dt).max(0.0);
            }
            self.state = if self.over > hold || (steady && d >= HELD_GUARD * shift) || shown {
                self.over = 0.0;
                State::Fault
            } else if d >= 0.5 * shift || self.over > 0.0 {
                State::Suspect
            } else {
                State::Ok
            };
        }
        self.recent.push_back((now, d));
        self.level += (1.0 - (-dt / LEVEL_TIME).exp()) * (d - self.level);
        self.last = Verdict { state: self.state, score: d / shift, shift: Some(d) };
        self.last
    }

    /// Counts the step from the previous sample if it is a floating one; the count fades.
    fn count_floating(
        &mut self,
        now: f64,
        offset: Point,
        phase: [f64; 3],
        line: [f64; 3],
        current: Option<[f64; 3]>,
    ) {
        // The count fades with the time passed, steps measured or not.
        if let Some(then) = self.floating_time.replace(now).filter(|t| now > *t) {
            self.floating *= (-(now - then) / FLOAT_MEMORY).exp();
        }
        let Some(current) = current.filter(|c| c.iter().all(|i| i.is_finite())) else {
            self.step_from = None;
            return;
        };
        let b = StepFrom { time: now, offset, phase, line, current };
        if let Some(a) = self.step_from.replace(b) {
            if now > a.time && now - a.time <= MAX_STEP && floating_step(&a, &b) {
                self.floating += 1.0;
            }
        }
    }

    /// The lowest displacement of the last [`HELD_TIME`] × `k` seconds before `now` (the
    /// samples in that window and the last one before it), or `None` while the samples do not
    /// yet reach that far back. Drops the samples no longer needed.
    fn held(&mut self, now: f64, k: f64) -> Option<f64> {
        let start = now - HELD_TIME * k;
        // Keep the last sample at or before the window's start: it stood for the time up to it.
        while self.recent.get(1).is_some_and(|&(t, _)| t <= start) {
            self.recent.pop_front();
        }
        let &(first, _) = self.recent.front()?;
        (first <= start).then(|| self.recent.iter().map(|&(_, d)| d).fold(f64::INFINITY, f64::min))
    }

    /// The lowest displacement of the [`HELD_TIME`] seconds (× the sensitivity factor) before
    /// the last sample, `None` while the samples did not reach that far back: held at
    /// [`HELD_RATIO`] × `shift` or more, a displacement reaching [`HELD_GUARD`] × `shift` is a
    /// fault without a hold.
    pub fn held_floor(&self) -> Option<f64> {
        self.floor
    }

    /// The floating steps counted ([`floating_step`], fading over [`FLOAT_MEMORY`]).
    pub fn floating_steps(&self) -> f64 {
        self.floating
    }

    /// The neutral impedance the load steps show ([`ImpedanceEstimate`]), when they can tell.
    pub fn impedance(&self) -> Option<f64> {
        self.neutral.impedance()
    }

    /// The seconds over the threshold that confirm a fault, given the displacement's level
    /// and the neutral's impedance: none behind a neutral of [`HOLD_IMPEDANCE`] ohms or more
    /// (× the sensitivity factor), or after
    /// [`FLOAT_STEPS`] floating steps, whose displacement is no transient (then the first
    /// reading at [`HELD_GUARD`] × `shift` is a fault).
    fn hold(&self, k: f64) -> f64 {
        if self.neutral.impedance().is_some_and(|z| z >= HOLD_IMPEDANCE * k)
            || self.floating >= FLOAT_STEPS * k
        {
            return 0.0;
        }
        let shift = self.settings.shift;
        let room = ((shift - self.level) / (0.5 * shift)).clamp(0.0, 1.0);
        (HOLD_ON * room).max(HOLD_MIN) * k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neutral::geometry::Point;
    use crate::neutral::Sensitivity;

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
        assert_eq!(t.update(0.0, u, l, None).state, State::Ok);
        let (u, l) = set(Point::new(25.0, 0.0));
        let v = t.update(1.0, u, l, None);
        assert_eq!(v.state, State::Suspect);
        assert!((v.shift.unwrap() - 25.0).abs() < 1e-6);
        assert_eq!(t.update(3.0, u, l, None).state, State::Suspect);
        assert_eq!(t.update(4.0, u, l, None).state, State::Fault);
    }

    #[test]
    fn line_tier_rides_out_a_short_dip() {
        let mut t = LineTier::new(Settings::default());
        let (u, l) = set(Point::new(0.0, -40.0));
        let (u0, l0) = set(Point::new(0.0, 0.0));
        for s in 0..100 {
            let s = f64::from(s);
            let v = if (s as i64) % 10 < 2 { t.update(s, u, l, None) } else { t.update(s, u0, l0, None) };
            assert_ne!(v.state, State::Fault, "at {s}");
        }
    }

    #[test]
    fn line_tier_confirms_a_displacement_that_hovers_around_the_threshold() {
        // A loosening neutral: 22 V, 22 V, 18 V, 22 V, … The count goes down under the
        // threshold instead of starting again, so two seconds over for each one under confirm.
        let mut t = LineTier::new(Settings::default());
        let (hi, hl) = set(Point::new(22.0, 0.0));
        let (lo, ll) = set(Point::new(18.0, 0.0));
        let mut states = vec![];
        for s in 0..9 {
            let v = if s % 3 == 2 {
                t.update(f64::from(s), lo, ll, None)
            } else {
                t.update(f64::from(s), hi, hl, None)
            };
            states.push(v.state);
        }
        assert!(!states[..5].contains(&State::Fault), "{states:?}");
        assert!(states.contains(&State::Fault), "{states:?}");
        // Under the threshold as often as over it, and 18 V is over 85 % of it: held, a fault
        // once the samples reach 10 s back (at 11 s, the first 22 V after that).
        let mut t = LineTier::new(Settings::default());
        let states: Vec<State> = (0..12)
            .map(|s| {
                let (u, l) = if s % 2 == 0 { (lo, ll) } else { (hi, hl) };
                t.update(f64::from(s), u, l, None).state
            })
            .collect();
        assert_eq!(states.iter().position(|s| *s == State::Fault), Some(11), "{states:?}");
        // Under 85 % of it as often as over it: never.
        let (lo, ll) = set(Point::new(16.0, 0.0));
        let mut t = LineTier::new(Settings::default());
        for s in 0..600 {
            let v = if s % 2 == 0 {
                t.update(f64::from(s), lo, ll, None)
            } else {
                t.update(f64::from(s), hi, hl, None)
            };
            assert_ne!(v.state, State::Fault, "at {s}");
        }
    }

    #[test]
    fn line_tier_confirms_at_once_a_neutral_that_crept_up_to_the_threshold() {
        // A loosening terminal: the displacement creeps from 10 V to 16.9 V over five minutes
        // (not yet held: under 85 % of the threshold), then crosses 20 V. Its level has crept
        // up towards the threshold, so the crossing is no transient: two seconds over confirm
        // it (the full hold would take four).
        let mut t = LineTier::new(Settings::default());
        for s in 0..300 {
            let (u, l) = set(Point::new(10.0 + 6.9 * f64::from(s) / 300.0, 0.0));
            assert_ne!(t.update(f64::from(s), u, l, None).state, State::Fault, "at {s}");
        }
        let (u, l) = set(Point::new(20.5, 0.0));
        assert_eq!(t.update(300.0, u, l, None).state, State::Suspect);
        assert_eq!(t.update(301.0, u, l, None).state, State::Fault);
        // The same crossing from a sound neutral's level (3 V) is held the full time.
        let mut t = LineTier::new(Settings::default());
        let (u0, l0) = set(Point::new(3.0, 0.0));
        for s in 0..300 {
            t.update(f64::from(s), u0, l0, None);
        }
        let states: Vec<State> = (300..305).map(|s| t.update(f64::from(s), u, l, None).state).collect();
        assert_eq!(states, [State::Suspect, State::Suspect, State::Suspect, State::Fault, State::Fault]);
    }

    #[test]
    fn line_tier_still_rides_out_single_seconds_over_a_high_level() {
        // A displacement sitting at 16.5 V (a heavily loaded sound neutral, or a loose one not
        // yet at the threshold), touching 21 V for a second at a time: never two in a row, and
        // it leaves 85 % of the threshold (17 V) every other second, so it is not held.
        let mut t = LineTier::new(Settings::default());
        let (lo, ll) = set(Point::new(0.0, 16.5));
        let (hi, hl) = set(Point::new(0.0, 21.0));
        for s in 0..1200 {
            let v = if s % 2 == 1 {
                t.update(f64::from(s), hi, hl, None)
            } else {
                t.update(f64::from(s), lo, ll, None)
            };
            assert_ne!(v.state, State::Fault, "at {s}");
        }
    }

    /// The first second at which tier 2 (sensitivity `sens`) is in fault on a displacement of
    /// `d(s)` volts at second `s`, over `seconds` seconds.
    fn first_fault(sens: Sensitivity, seconds: u32, d: impl Fn(u32) -> f64) -> Option<u32> {
        let mut t = LineTier::new(Settings { sensitivity: sens, ..Settings::default() });
        (0..seconds).find(|&s| {
            let (u, l) = set(Point::new(d(s), 0.0));
            t.update(f64::from(s), u, l, None).state == State::Fault
        })
    }

    #[test]
    fn line_tier_confirms_a_displacement_held_at_the_threshold() {
        // A loosening terminal under a steady neutral current: five minutes at a sound
        // neutral's 5 V, then the displacement sits at the threshold, its readings swinging
        // with the loads (18.5, 19.5, 20.2, 18.8, ...), never two seconds over 20 V in a row,
        // which the hold alone would never confirm. Once it has not left 17 V (85 %) for 10 s,
        // the first reading at or over 19 V (95 %) is a fault: at 310 s, 20.2 V.
        let swing = [18.5, 19.5, 20.2, 18.8];
        let d = |s: u32| if s < 300 { 5.0 } else { swing[(s as usize - 300) % 4] };
        assert_eq!(first_fault(Sensitivity::Normal, 400, d), Some(310));
        // At low sensitivity it must have held 20 s: 321 s is the first reading over 19 V.
        assert_eq!(first_fault(Sensitivity::Low, 400, d), Some(321));
        // At high sensitivity, 5 s.
        assert_eq!(first_fault(Sensitivity::High, 400, d), Some(305));
        // The same swing 3 V lower (15.5 to 17.2 V) leaves 17 V: never held, never a fault.
        assert_eq!(first_fault(Sensitivity::Normal, 1200, |s| d(s) - 3.0), None);
    }

    #[test]
    fn line_tier_takes_a_steady_displacement_within_the_guard_for_a_fault() {
        // 19.5 V, under the 20 V threshold but within its 5 % guard, held from the first sample:
        // a fault once the samples reach 10 s back, and not before.
        assert_eq!(first_fault(Sensitivity::Normal, 60, |_| 19.5), Some(10));
        // Just under the guard (18.9 V): never.
        assert_eq!(first_fault(Sensitivity::Normal, 600, |_| 18.9), None);
        // A meter silent for a minute: what came before the gap is not known to be held.
        let mut t = LineTier::new(Settings::default());
        let (u, l) = set(Point::new(19.5, 0.0));
        for s in 0..6 {
            assert_eq!(t.update(f64::from(s), u, l, None).state, State::Suspect, "at {s}");
        }
        for s in 60..70 {
            assert_eq!(t.update(f64::from(s), u, l, None).state, State::Suspect, "at {s}");
            assert_eq!(t.held_floor(), None, "at {s}");
        }
        assert_eq!(t.update(70.0, u, l, None).state, State::Fault);
        assert!((t.held_floor().unwrap() - 19.5).abs() < 1e-6);
    }

    #[test]
    fn line_tier_counts_no_time_across_a_gap() {
        let mut t = LineTier::new(Settings::default());
        let (u, l) = set(Point::new(40.0, 0.0));
        assert_eq!(t.update(0.0, u, l, None).state, State::Suspect);
        // The meter was silent for a minute: the minute counts nothing, the count goes on from
        // the next samples.
        for s in [60.0, 61.0, 62.0] {
            assert_eq!(t.update(s, u, l, None).state, State::Suspect, "at {s}");
        }
        assert_eq!(t.update(63.0, u, l, None).state, State::Fault);
    }

    #[test]
    fn line_tier_fault_clears_only_after_staying_low() {
        let mut t = LineTier::new(Settings::default());
        let (u, l) = set(Point::new(60.0, 0.0));
        for s in 0..5 {
            t.update(f64::from(s), u, l, None);
        }
        assert_eq!(t.update(5.0, u, l, None).state, State::Fault);
        // Between the clearing level and the threshold: stays a fault.
        let (u1, l1) = set(Point::new(16.0, 0.0));
        assert_eq!(t.update(100.0, u1, l1, None).state, State::Fault);
        let (u0, l0) = set(Point::new(2.0, 0.0));
        assert_eq!(t.update(101.0, u0, l0, None).state, State::Fault);
        assert_eq!(t.update(130.0, u0, l0, None).state, State::Fault);
        assert_eq!(t.update(131.0, u0, l0, None).state, State::Ok);
    }

    #[test]
    fn line_tier_ignores_readings_that_describe_no_point() {
        let mut t = LineTier::new(Settings::default());
        let (mut u, l) = set(Point::new(0.0, 0.0));
        u[0] = 330.0;
        for s in 0..20 {
            let v = t.update(f64::from(s), u, l, None);
            assert_eq!(v.state, State::Ok);
            assert_eq!(v.shift, None);
        }
    }

    /// A neutral of `zn` ohms behind `amps` on L1 (in phase with L1): the set and the currents.
    fn behind(zn: f64, amps: f64) -> ([f64; 3], [f64; 3], [f64; 3]) {
        // L1 is at 90° in `set`.
        let (u, l) = set(Point::new(0.0, zn * amps));
        (u, l, [amps, 0.0, 0.0])
    }

    /// A tier's states over two minutes of `sample(second)`, given the currents or not.
    fn states(sample: &dyn Fn(u32) -> ([f64; 3], [f64; 3], [f64; 3]), currents: bool) -> Vec<State> {
        let mut t = LineTier::new(Settings::default());
        (0..120)
            .map(|s| {
                let (u, l, i) = sample(s);
                t.update(f64::from(s), u, l, currents.then_some(i)).state
            })
            .collect()
    }

    /// The first fault of two minutes of `sample(second)` with the currents, and the first
    /// second the load steps show a neutral of [`HOLD_IMPEDANCE`] or more with a reading within
    /// the guard in the last [`HELD_TIME`] seconds.
    fn fault_and_shown(sample: &dyn Fn(u32) -> ([f64; 3], [f64; 3], [f64; 3])) -> (Option<u32>, Option<u32>) {
        let mut t = LineTier::new(Settings::default());
        let (mut fault, mut shown, mut over) = (None, None, Vec::new());
        for s in 0..120 {
            let (u, l, i) = sample(s);
            let v = t.update(f64::from(s), u, l, Some(i));
            if v.shift.is_some_and(|d| d >= HELD_GUARD * Settings::default().shift) {
                over.push(s);
            }
            let recent = over.iter().any(|&o| s - o <= HELD_TIME as u32);
            if shown.is_none() && recent && t.impedance().is_some_and(|z| z >= HOLD_IMPEDANCE) {
                shown = Some(s);
            }
            if fault.is_none() && v.state == State::Fault {
                fault = Some(s);
            }
        }
        (fault, shown)
    }

    #[test]
    fn line_tier_with_currents_confirms_a_neutral_of_a_few_ohms_once_the_steps_show_it() {
        // 3 Ω behind 5.5 A on L1 (16.5 V, under the 17 V that would make it held); one second
        // in four a load more: 7 A (21 V), single seconds over, which the hold rides out; or
        // 6.4 A (19.2 V), never over the threshold, but behind a neutral that bad, within its
        // 5 % guard. The fault comes the second the steps show the neutral bad, a reading
        // within the guard in the last 10 s.
        for peak in [7.0, 6.4] {
            let sample = |s: u32| behind(3.0, if s % 4 == 3 { peak } else { 5.5 });
            assert!(!states(&sample, false).contains(&State::Fault), "{peak} A");
            let (fault, shown) = fault_and_shown(&sample);
            assert!(fault.is_some_and(|s| s < 30) && fault == shown, "{peak} A: {fault:?} {shown:?}");
        }
    }

    #[test]
    fn line_tier_with_currents_takes_no_hold_behind_a_neutral_of_one_and_a_half_ohms() {
        // A load on L1 at 16 V (under the 17 V that would make it held) and one second in four
        // a load more at 20.8 V: single seconds over, which the hold rides out behind 1.2 Ω;
        // behind 1.6 Ω the steps show a neutral over [`HOLD_IMPEDANCE`], and the reading over
        // the threshold is a fault.
        for zn in [1.2, 1.6] {
            let sample = |s: u32| behind(zn, if s % 4 == 3 { 20.8 } else { 16.0 } / zn);
            assert!(!states(&sample, false).contains(&State::Fault), "{zn} Ω");
            let (fault, shown) = fault_and_shown(&sample);
            if zn < HOLD_IMPEDANCE {
                assert_eq!((fault, shown), (None, None), "{zn} Ω");
            } else {
                assert!(fault.is_some_and(|s| s < 30) && fault == shown, "{zn} Ω: {fault:?} {shown:?}");
            }
        }
    }

    #[test]
    fn line_tier_with_currents_still_rides_out_a_transient_on_a_sound_neutral() {
        // 0.3 Ω: an 80 A inrush on L1 for two seconds pushes the neutral 24 V out.
        let mut t = LineTier::new(Settings::default());
        for s in 0..300 {
            let amps = match s % 60 {
                30 | 31 => 80.0,
                n => 2.0 + f64::from(n % 3),
            };
            let (u, l, i) = behind(0.3, amps);
            let v = t.update(f64::from(s), u, l, Some(i));
            assert_ne!(v.state, State::Fault, "at {s}: {v:?}");
            assert_eq!(t.floating, 0.0, "at {s}: the inrush moved the point by 0.3 Ω × 78 A");
        }
        assert!(t.impedance().is_some_and(|z| z < 0.5), "{:?}", t.impedance());
    }

    /// A house on a balanced 230 V source with its neutral open: resistive loads of `ohms` on
    /// L1, L2, L3, the neutral point where their currents sum to zero (Millman). The set and
    /// the currents.
    fn floating(ohms: [f64; 3]) -> ([f64; 3], [f64; 3], [f64; 3]) {
        let a = |deg: f64| Point::new(VP * deg.to_radians().cos(), VP * deg.to_radians().sin());
        let c = [a(90.0), a(-30.0), a(210.0)];
        let y = ohms.map(|r| 1.0 / r);
        let total: f64 = y.iter().sum();
        let n = Point::new(
            (0..3).map(|k| y[k] * c[k].x).sum::<f64>() / total,
            (0..3).map(|k| y[k] * c[k].y).sum::<f64>() / total,
        );
        let (u, l) = set(n);
        (u, l, [0, 1, 2].map(|k| u[k] / ohms[k]))
    }

    /// Each phase's load in a house of 400 W a phase, ohms.
    const BASE: f64 = 230.0 * 230.0 / 400.0;

    /// The house's loads with `r` ohms more switched on on phase `k`.
    fn with(k: usize, r: f64) -> [f64; 3] {
        let mut ohms = [BASE; 3];
        ohms[k] = 1.0 / (1.0 / BASE + 1.0 / r);
        ohms
    }

    #[test]
    fn line_tier_with_currents_confirms_an_open_neutral_the_first_second_over() {
        // 400 W a phase and the neutral open: a 0.4 A load on L1 or L2 for a second throws the
        // point 16 V out, a 0.58 A one on L1 23 V, one second in six; the rest of the time the
        // loads balance. Single seconds over, which the hold alone rides out; but each switch
        // moved the point 40 V per ampere with the line triangle still: the neutral holds
        // nothing, and the first second over is a fault.
        let sample = |s: u32| {
            floating(match s % 6 {
                1 => with(0, 575.0),
                3 => with(1, 575.0),
                5 => with(0, 400.0),
                _ => [BASE; 3],
            })
        };
        assert!(floating(with(0, 400.0)).0[0] < 230.0 - 20.0, "the case puts L1 over 20 V out");
        let run = |currents: bool| states(&sample, currents);
        assert!(!run(false).contains(&State::Fault));
        let with_currents = run(true);
        assert_eq!(with_currents.iter().position(|s| *s == State::Fault), Some(5), "{with_currents:?}");
    }

    #[test]
    fn line_tier_confirms_a_held_off_reading_once_the_steps_show_the_neutral_bad() {
        // 400 W a phase and the neutral open, the loads balanced but for three switchings: a
        // 0.58 A load on L1 for second 60 (23 V out, one second over, which the hold rides
        // out), and a 0.4 A one on L2 for second `then` (16 V, under the guard). Each switching
        // on and off is a floating step; the third shows the neutral holds nothing, and the
        // reading over the threshold within the last 10 s was no transient.
        for (then, fault) in [(62, Some(62)), (66, Some(66)), (72, None)] {
            let sample = |s: u32| {
                floating(match s {
                    60 => with(0, 400.0),
                    s if s == then => with(1, 575.0),
                    _ => [BASE; 3],
                })
            };
            let with_currents = states(&sample, true);
            assert_eq!(
                with_currents.iter().position(|s| *s == State::Fault),
                fault,
                "{then}: {with_currents:?}"
            );
            assert!(!states(&sample, false).contains(&State::Fault), "{then}");
        }
    }

    #[test]
    fn line_tier_takes_any_currents_without_a_panic() {
        // Odd currents between sets that jump, so that every one is weighed as a step.
        let mut t = LineTier::new(Settings::default());
        let odd = [f64::NAN, f64::INFINITY, -f64::INFINITY, 0.0, -5.0, f64::MAX, f64::MIN_POSITIVE, 1e300];
        let mut s = 0.0;
        for a in odd {
            for b in odd {
                for n in [Point::new(40.0, 0.0), Point::new(-20.0, 35.0), Point::new(0.0, 0.0)] {
                    let (u, l) = set(n);
                    let v = t.update(s, u, l, Some([a, b, 1.0]));
                    assert!(v.score.is_finite() && t.floating_steps().is_finite(), "{a} {b}: {v:?}");
                    s += 1.0;
                }
            }
        }
    }

    #[test]
    fn floating_steps_take_the_hold_away_at_a_count_of_two() {
        // 400 W a phase and the neutral open; a 0.4 A load on L2 switched on at second 60, off
        // at 61, on at 62: three floating steps. Two are 1.98 (the first faded for a second):
        // the hold stays; the third takes it away. Low sensitivity counts to four, high to one.
        let on = with(1, 575.0);
        for (sensitivity, gone_at) in
            [(Sensitivity::Normal, Some(62)), (Sensitivity::Low, None), (Sensitivity::High, Some(60))]
        {
            let mut t = LineTier::new(Settings { sensitivity, ..Settings::default() });
            let k = sensitivity.factor();
            let mut gone = None;
            for s in 0..=62 {
                let (u, l, i) = floating(if matches!(s, 60 | 62) { on } else { [BASE; 3] });
                t.update(f64::from(s), u, l, Some(i));
                if gone.is_none() && t.hold(k) == 0.0 {
                    gone = Some(s);
                }
            }
            assert_eq!(gone, gone_at, "{sensitivity:?}: count {}", t.floating_steps());
            assert!(t.floating_steps() > 2.9 && t.floating_steps() < 3.0, "{}", t.floating_steps());
        }
    }

    #[test]
    fn floating_steps_fade_while_the_meter_gives_no_currents() {
        let mut t = LineTier::new(Settings::default());
        let (u, l) = set(Point::new(3.0, 0.0));
        t.update(0.0, u, l, Some([1.0; 3]));
        t.floating = 3.0;
        for s in 1..=600 {
            t.update(f64::from(s), u, l, None);
        }
        assert!(t.floating_steps() < 0.01, "{}", t.floating_steps());
    }

    #[test]
    fn a_floating_step_needs_a_load_switching_and_the_line_triangle_still() {
        let at = |time: f64, x: f64, line: f64, amps: f64| StepFrom {
            time,
            offset: Point::new(x, 0.0),
            phase: [230.0; 3],
            line: [line; 3],
            current: [amps, 1.0, 1.0],
        };
        let from = at(0.0, 0.0, 400.0, 1.0);
        // 16 V for 0.4 A: the neutral holds nothing.
        assert!(floating_step(&from, &at(1.0, 16.0, 400.2, 1.4)));
        // The same with the line voltages moving 3 V: the source moved.
        assert!(!floating_step(&from, &at(1.0, 16.0, 403.0, 1.4)));
        // 16 V for no load switching: a reading's noise, not a load's step.
        assert!(!floating_step(&from, &at(1.0, 16.0, 400.0, 1.0)));
        // 16 V for 10 A: 1.6 Ω, for the impedance estimate to weigh.
        assert!(!floating_step(&from, &at(1.0, 16.0, 400.0, 11.0)));
        // 3 V for 0.05 A: too small a move to tell.
        assert!(!floating_step(&from, &at(1.0, 3.0, 400.0, 1.05)));
    }
}
