//! The hysteresis state machine of one trigger: pure, the clock is passed in.
//!
//! An unknown condition (a gap in the data) keeps the current state and does not advance the
//! hold or recovery timer: the timer restarts from the next known value, so a trigger never
//! trips or releases on data it has not seen.

use std::time::Duration;

/// Where a trigger stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Released,
    /// Condition true since `since`, hold running.
    Pending {
        since: Duration,
    },
    Tripped,
    /// Condition false since `since` while tripped, recovery running.
    Recovering {
        since: Duration,
    },
    /// Tripped and latched: stays until [`Hysteresis::reset`].
    Latched,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Released => "released",
            State::Pending { .. } => "pending",
            State::Tripped => "tripped",
            State::Recovering { .. } => "recovering",
            State::Latched => "latched",
        }
    }
}

/// What changed on an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Tripped,
    Released,
    /// Tripped with `latch` set.
    Latched,
}

/// Hold, recovery and latch of one trigger.
#[derive(Debug, Clone)]
pub struct Hysteresis {
    hold: Duration,
    recovery: Duration,
    latch: bool,
    state: State,
}

impl Hysteresis {
    pub fn new(hold: Duration, recovery: Duration, latch: bool) -> Self {
        Hysteresis { hold, recovery, latch, state: State::Released }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the output is on (tripped, recovering or latched).
    pub fn is_tripped(&self) -> bool {
        matches!(self.state, State::Tripped | State::Recovering { .. } | State::Latched)
    }

    /// Releases a latched trigger. Returns `Released` when it was latched.
    pub fn reset(&mut self) -> Option<Transition> {
        if self.state == State::Latched {
            self.state = State::Released;
            Some(Transition::Released)
        } else {
            None
        }
    }

    /// Trips now, whatever the condition (stale data with `on_stale = "trip"`): latches when
    /// `latch` is set. Returns the transition when the output was off.
    pub fn force_trip(&mut self) -> Option<Transition> {
        match self.state {
            State::Released | State::Pending { .. } => {
                self.state = if self.latch { State::Latched } else { State::Tripped };
                Some(if self.latch { Transition::Latched } else { Transition::Tripped })
            }
            State::Recovering { .. } => {
                self.state = State::Tripped;
                None
            }
            State::Tripped | State::Latched => None,
        }
    }

    /// Releases now (stale data with `on_stale = "release"`). A latch is only ever reset by
    /// hand: a latched trigger stays latched.
    pub fn force_release(&mut self) -> Option<Transition> {
        match self.state {
            State::Tripped | State::Recovering { .. } => {
                self.state = State::Released;
                Some(Transition::Released)
            }
            State::Pending { .. } => {
                self.state = State::Released;
                None
            }
            State::Released | State::Latched => None,
        }
    }

    /// Puts back a state saved before a restart: `Tripped` or `Latched` (a latched state on a
    /// trigger whose config no longer latches comes back tripped). Timers start afresh.
    pub fn restore(&mut self, latched: bool) {
        self.state = if latched && self.latch { State::Latched } else { State::Tripped };
    }

    /// Feeds the condition at `now` (non-decreasing). `None` condition: see the module docs.
    pub fn update(&mut self, condition: Option<bool>, now: Duration) -> Option<Transition> {
        let Some(cond) = condition else {
            self.state = match self.state {
                State::Pending { .. } => State::Released,
                State::Recovering { .. } => State::Tripped,
                s => s,
            };
            return None;
        };
        match (self.state, cond) {
            (State::Released, true) => {
                self.state = State::Pending { since: now };
                self.check_hold(now)
            }
            (State::Pending { .. }, true) => self.check_hold(now),
            (State::Pending { .. }, false) => {
                self.state = State::Released;
                None
            }
            (State::Tripped, false) => {
                self.state = State::Recovering { since: now };
                self.check_recovery(now)
            }
            (State::Recovering { .. }, false) => self.check_recovery(now),
            (State::Recovering { .. }, true) => {
                self.state = State::Tripped;
                None
            }
            (State::Released, false) | (State::Tripped, true) | (State::Latched, _) => None,
        }
    }

    fn check_hold(&mut self, now: Duration) -> Option<Transition> {
        let State::Pending { since } = self.state else { return None };
        if now.saturating_sub(since) >= self.hold {
            if self.latch {
                self.state = State::Latched;
                Some(Transition::Latched)
            } else {
                self.state = State::Tripped;
                Some(Transition::Tripped)
            }
        } else {
            None
        }
    }

    fn check_recovery(&mut self, now: Duration) -> Option<Transition> {
        let State::Recovering { since } = self.state else { return None };
        if now.saturating_sub(since) >= self.recovery {
            self.state = State::Released;
            Some(Transition::Released)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    /// Runs one update per second over `input` from t = 0; returns (time, transition).
    fn run(h: &mut Hysteresis, input: &[Option<bool>]) -> Vec<(u64, Transition)> {
        input
            .iter()
            .enumerate()
            .filter_map(|(t, c)| h.update(*c, s(t as u64)).map(|x| (t as u64, x)))
            .collect()
    }

    #[test]
    fn trips_exactly_at_first_true_plus_hold() {
        let mut h = Hysteresis::new(s(5), s(5), false);
        let mut input = vec![Some(false); 3];
        input.extend(vec![Some(true); 10]);
        assert_eq!(run(&mut h, &input), vec![(8, Transition::Tripped)]);
    }

    #[test]
    fn spike_shorter_than_hold_never_trips() {
        let mut h = Hysteresis::new(s(5), s(5), false);
        let input = [false, true, true, true, true, false, false].map(Some);
        assert!(run(&mut h, &input).is_empty());
        assert_eq!(h.state(), State::Released);
    }

    #[test]
    fn dip_shorter_than_recovery_never_releases() {
        let mut h = Hysteresis::new(s(0), s(5), false);
        let input = [true, false, false, false, true, true].map(Some);
        assert_eq!(run(&mut h, &input), vec![(0, Transition::Tripped)]);
        assert!(h.is_tripped());
    }

    #[test]
    fn flapping_input_never_flaps_the_output() {
        let mut h = Hysteresis::new(s(3), s(3), false);
        let input: Vec<_> = (0..100).map(|t| Some(t % 2 == 0)).collect();
        assert!(run(&mut h, &input).is_empty());
        let mut h = Hysteresis::new(s(0), s(3), false);
        assert_eq!(run(&mut h, &input), vec![(0, Transition::Tripped)]);
    }

    #[test]
    fn latch_stays_until_reset() {
        let mut h = Hysteresis::new(s(1), s(1), true);
        let mut input = vec![Some(true); 2];
        input.extend(vec![Some(false); 20]);
        assert_eq!(run(&mut h, &input), vec![(1, Transition::Latched)]);
        assert_eq!(h.state(), State::Latched);
        assert_eq!(h.reset(), Some(Transition::Released));
        assert_eq!(h.state(), State::Released);
        assert_eq!(h.reset(), None);
    }

    #[test]
    fn zero_hold_trips_at_once() {
        let mut h = Hysteresis::new(Duration::ZERO, Duration::ZERO, false);
        assert_eq!(h.update(Some(true), s(7)), Some(Transition::Tripped));
        assert_eq!(h.update(Some(false), s(8)), Some(Transition::Released));
    }

    #[test]
    fn forced_trip_and_release() {
        let mut h = Hysteresis::new(s(5), s(5), false);
        assert_eq!(h.update(Some(true), s(0)), None);
        assert_eq!(h.force_trip(), Some(Transition::Tripped), "a pending hold trips at once");
        assert_eq!(h.force_trip(), None);
        assert_eq!(h.force_release(), Some(Transition::Released));
        assert_eq!(h.force_release(), None);
        let mut l = Hysteresis::new(s(5), s(5), true);
        assert_eq!(l.force_trip(), Some(Transition::Latched));
        assert_eq!(l.force_release(), None, "a latch is reset by hand only");
        assert_eq!(l.state(), State::Latched);
    }

    #[test]
    fn restore_puts_back_tripped_or_latched() {
        let mut h = Hysteresis::new(s(5), s(5), true);
        h.restore(true);
        assert_eq!(h.state(), State::Latched);
        let mut h = Hysteresis::new(s(5), s(5), false);
        h.restore(true);
        assert_eq!(h.state(), State::Tripped, "no longer latching: tripped, recovery applies");
        assert_eq!(h.update(Some(false), s(10)), None);
        assert_eq!(h.update(Some(false), s(15)), Some(Transition::Released));
    }

    #[test]
    fn gap_keeps_state_and_restarts_timers() {
        let mut h = Hysteresis::new(s(3), s(3), false);
        let input = [Some(true), Some(true), None, Some(true), Some(true), Some(true), Some(true)];
        assert_eq!(run(&mut h, &input), vec![(6, Transition::Tripped)]);
        assert_eq!(h.update(None, s(7)), None);
        assert!(h.is_tripped());
    }
}
