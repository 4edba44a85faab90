//! What the gateway owes each server besides polling it: the time, its relay actions, and the
//! sentinel that tells a reboot. A pure state machine; the bus task asks [`Duties::next`]
//! between polls, runs the duty, and reports back.
//!
//! ```text
//! found ─► write sentinel ─► push slots 0..4 ─► sync time ─► (poll; sync daily)
//!   ▲                                                              │
//!   └──────────── sentinel read back as anything else (reboot) ◄───┘
//! ```
//! The sentinel goes first: from then on every poll checks it, so a server that reboots in the
//! middle of its setup (RAM wiped, the slots pushed so far lost) is seen and set up again
//! whole. (Written last, a sentinel landing on a server that had just rebooted would hide
//! that reboot for good, and the server would stay without the actions pushed before it.)
//! Then the relay actions: a server found, or rebooted, protects nothing until it has them,
//! and they need no clock. The clock is set only once the gateway's own clock is believed (see
//! [`crate::clock`]); until then the rest goes on without it.

use super::action::ActionImage;
use crate::backoff::Backoff;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    SyncTime,
    PushSlot(u8),
    WriteSentinel,
}

impl std::fmt::Display for Duty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Duty::SyncTime => write!(f, "time sync"),
            Duty::PushSlot(s) => write!(f, "relay action slot {s}"),
            Duty::WriteSentinel => write!(f, "reboot sentinel"),
        }
    }
}

/// Why the duties start over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// The sentinel read back as something else: the server's RAM was wiped.
    Rebooted { read: u16 },
}

/// The longest wait before a failed duty is tried again.
pub const MAX_RETRY: Duration = Duration::from_secs(300);
/// The longest wait while the server does not hold all its relay actions (found, or rebooted):
/// it protects nothing until then, so it is never left for minutes.
pub const UNPROTECTED_MAX_RETRY: Duration = Duration::from_secs(30);
const FIRST_RETRY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Duties {
    /// How often the clock is set again; None: only at start and after a reboot.
    sync_every: Option<Duration>,
    /// Whether pmtr owns the server's slots (pushes all five).
    push: bool,
    sentinel: u16,
    synced_at: Option<Instant>,
    need_sync: bool,
    /// Slots pushed in this round.
    pushed: u8,
    sentinel_set: bool,
    low_power: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

impl Duties {
    /// Everything pending. `sentinel` must not be 0 (the value of a wiped register).
    pub fn new(sync_every: Option<Duration>, push: bool, sentinel: u16) -> Duties {
        Duties {
            sync_every,
            push,
            sentinel: sentinel.max(1),
            synced_at: None,
            need_sync: true,
            pushed: 0,
            sentinel_set: false,
            low_power: false,
            failures: 0,
            retry_at: None,
        }
    }

    pub fn sentinel(&self) -> u16 {
        self.sentinel
    }

    /// The sentinel value to leave in the time-sync millisecond field (which the legacy
    /// firmware's sentinel register is): the sentinel once it is set, else 0.
    pub fn ms_field(&self) -> u16 {
        if self.sentinel_set {
            self.sentinel
        } else {
            0
        }
    }

    /// Whether the setup after start or reboot is complete (the clock aside, which waits for
    /// the gateway's own).
    pub fn settled(&self) -> bool {
        self.sentinel_set && !self.unprotected()
    }

    /// What a poll read: the sentinel register and the low-power flag.
    pub fn on_telemetry(&mut self, sentinel: u16, low_power: bool) -> Option<Restart> {
        self.low_power = low_power;
        if self.sentinel_set && sentinel != self.sentinel {
            self.need_sync = true;
            self.pushed = 0;
            self.sentinel_set = false;
            self.failures = 0;
            self.retry_at = None;
            return Some(Restart::Rebooted { read: sentinel });
        }
        None
    }

    /// The duty due now, if any, with the gateway's clock believed.
    pub fn next(&self, now: Instant) -> Option<Duty> {
        self.next_when(now, true)
    }

    /// Whether relay actions are still to be pushed.
    fn unprotected(&self) -> bool {
        self.push && (self.pushed as usize) < super::action::SLOTS
    }

    /// The duty due now, if any. `clock_believed`: whether the gateway's own clock can be sent
    /// (see [`crate::clock`]); while not, the clock is not set and the rest goes on.
    pub fn next_when(&self, now: Instant, clock_believed: bool) -> Option<Duty> {
        if self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        if !self.sentinel_set {
            return Some(Duty::WriteSentinel);
        }
        // In low-power mode the server takes no slot (it never clears the commit coil).
        if self.unprotected() && !self.low_power {
            return Some(Duty::PushSlot(self.pushed));
        }
        let daily = self.sync_every.zip(self.synced_at).is_some_and(|(every, at)| now >= at + every);
        ((self.need_sync || daily) && clock_believed).then_some(Duty::SyncTime)
    }

    pub fn done(&mut self, duty: Duty, now: Instant) {
        self.failures = 0;
        self.retry_at = None;
        match duty {
            Duty::SyncTime => {
                self.need_sync = false;
                self.synced_at = Some(now);
            }
            Duty::PushSlot(s) if s == self.pushed => self.pushed += 1,
            Duty::PushSlot(_) => {}
            Duty::WriteSentinel => self.sentinel_set = true,
        }
    }

    /// A duty failed: it is tried again after a back-off (10 s, doubling, at most 5 min; at
    /// most [`UNPROTECTED_MAX_RETRY`] while relay actions are still to be pushed). Returns the
    /// wait.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let cap = if self.unprotected() { UNPROTECTED_MAX_RETRY } else { MAX_RETRY };
        self.failures += 1;
        let wait = Backoff::new(FIRST_RETRY, cap).delay(self.failures);
        self.retry_at = Some(now + wait);
        wait
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The five slots to push: the configured ones, then neutral ones (never true, dry run) so
/// that a slot dropped from the configuration stops acting.
pub fn all_slots(configured: &[ActionImage]) -> Vec<ActionImage> {
    let pin = configured.first().map_or(13, |s| s.pins[0]);
    let mut out: Vec<ActionImage> = configured.iter().take(super::action::SLOTS).cloned().collect();
    while out.len() < super::action::SLOTS {
        out.push(ActionImage::neutral(pin));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_all(d: &mut Duties, now: Instant) -> Vec<Duty> {
        let mut seen = vec![];
        while let Some(duty) = d.next(now) {
            seen.push(duty);
            d.done(duty, now);
        }
        seen
    }

    #[test]
    fn setup_syncs_then_pushes_every_slot_then_sets_the_sentinel() {
        let now = Instant::now();
        let mut d = Duties::new(Some(Duration::from_secs(86_400)), true, 0x5A17);
        let seen = run_all(&mut d, now);
        assert_eq!(
            seen,
            [
                Duty::WriteSentinel,
                Duty::PushSlot(0),
                Duty::PushSlot(1),
                Duty::PushSlot(2),
                Duty::PushSlot(3),
                Duty::PushSlot(4),
                Duty::SyncTime,
            ]
        );
        assert!(d.settled());
        assert_eq!(d.on_telemetry(0x5A17, false), None);
        assert_eq!(d.next(now), None);
    }

    #[test]
    fn a_wiped_sentinel_starts_everything_over() {
        let now = Instant::now();
        let mut d = Duties::new(None, true, 7);
        run_all(&mut d, now);
        assert_eq!(d.on_telemetry(0, false), Some(Restart::Rebooted { read: 0 }));
        assert!(!d.settled());
        assert_eq!(run_all(&mut d, now).len(), 7);
    }

    /// A server that reboots in the middle of its setup (after some slots were pushed) is seen
    /// at the next poll, since the sentinel went first, and set up again whole.
    #[test]
    fn a_reboot_during_the_setup_starts_it_over() {
        let now = Instant::now();
        let mut d = Duties::new(Some(Duration::from_secs(86_400)), true, 7);
        for duty in [Duty::WriteSentinel, Duty::PushSlot(0), Duty::PushSlot(1)] {
            assert_eq!(d.next(now), Some(duty));
            d.done(duty, now);
        }
        assert_eq!(d.on_telemetry(7, false), None);
        assert_eq!(d.on_telemetry(0, false), Some(Restart::Rebooted { read: 0 }), "its RAM was wiped");
        assert_eq!(run_all(&mut d, now).len(), 7, "everything again: {d:?}");
        assert!(d.settled());
    }

    #[test]
    fn before_the_sentinel_is_set_any_value_is_fine() {
        let mut d = Duties::new(None, true, 7);
        assert_eq!(d.on_telemetry(1234, false), None);
        assert_eq!(d.on_telemetry(0, false), None);
    }

    #[test]
    fn the_clock_is_set_again_daily() {
        let now = Instant::now();
        let day = Duration::from_secs(86_400);
        let mut d = Duties::new(Some(day), false, 7);
        assert_eq!(run_all(&mut d, now), [Duty::WriteSentinel, Duty::SyncTime]);
        assert_eq!(d.next(now + day - Duration::from_secs(1)), None);
        assert_eq!(d.next(now + day), Some(Duty::SyncTime));
        let mut never = Duties::new(None, false, 7);
        run_all(&mut never, now);
        assert_eq!(never.next(now + day * 400), None);
    }

    #[test]
    fn failures_back_off_and_the_duty_is_tried_again() {
        let now = Instant::now();
        let mut d = Duties::new(None, false, 7);
        d.done(Duty::WriteSentinel, now);
        assert_eq!(d.failed(now), Duration::from_secs(10));
        assert_eq!(d.next(now + Duration::from_secs(9)), None);
        assert_eq!(d.next(now + Duration::from_secs(10)), Some(Duty::SyncTime));
        assert_eq!(d.failed(now), Duration::from_secs(20));
        for _ in 0..10 {
            d.failed(now);
        }
        assert_eq!(d.failed(now), MAX_RETRY);
    }

    /// A rebooted server (its slots wiped) whose duties keep failing on a busy bus: it is
    /// tried again at least every 30 s until it holds its actions, never after minutes of
    /// back-off; and a clock set that fails, or is held, never stands before its actions.
    #[test]
    fn a_rebooted_server_gets_its_actions_back_promptly_whatever_failed_before() {
        let t0 = Instant::now();
        let mut d = Duties::new(Some(Duration::from_secs(86_400)), true, 7);
        run_all(&mut d, t0);
        assert_eq!(d.on_telemetry(0, false), Some(Restart::Rebooted { read: 0 }));
        assert_eq!(d.next(t0), Some(Duty::WriteSentinel));
        d.done(Duty::WriteSentinel, t0);
        let mut now = t0;
        let mut waited = Duration::ZERO;
        for _ in 0..20 {
            assert_eq!(d.next(now), Some(Duty::PushSlot(0)), "the actions first, whatever failed");
            let wait = d.failed(now);
            assert!(wait <= UNPROTECTED_MAX_RETRY, "{wait:?}");
            now += wait;
            waited += wait;
        }
        assert!(waited <= Duration::from_secs(20 * 30));
        for s in 0..5 {
            assert_eq!(d.next(now), Some(Duty::PushSlot(s)));
            d.done(Duty::PushSlot(s), now);
        }
        assert_eq!(d.next(now), Some(Duty::SyncTime), "then the clock");
        assert_eq!(d.failed(now), Duration::from_secs(10), "protected: the normal back-off again");
    }

    /// While the gateway's clock is not believed, the server's clock is not set: its actions
    /// and sentinel go on, and the clock is set as soon as it is believed.
    #[test]
    fn the_server_clock_is_held_until_the_gateway_clock_is_believed() {
        let now = Instant::now();
        let mut d = Duties::new(Some(Duration::from_secs(86_400)), true, 7);
        let mut seen = vec![];
        while let Some(duty) = d.next_when(now, false) {
            seen.push(duty);
            d.done(duty, now);
        }
        assert!(!seen.contains(&Duty::SyncTime), "{seen:?}");
        assert_eq!(seen.len(), 6, "five slots and the sentinel: {seen:?}");
        assert!(d.settled());
        assert_eq!(d.next_when(now, false), None);
        assert_eq!(d.next_when(now, true), Some(Duty::SyncTime));
        d.done(Duty::SyncTime, now);
        assert_eq!(d.next_when(now, true), None);
    }

    #[test]
    fn no_slot_is_pushed_in_low_power_mode() {
        let now = Instant::now();
        let mut d = Duties::new(None, true, 7);
        d.done(Duty::WriteSentinel, now);
        d.on_telemetry(7, true);
        assert_eq!(d.next(now), Some(Duty::SyncTime), "the clock can be set meanwhile");
        d.done(Duty::SyncTime, now);
        assert_eq!(d.next(now), None, "no slot");
        assert!(!d.settled());
        assert_eq!(d.on_telemetry(7, false), None);
        assert_eq!(d.next(now), Some(Duty::PushSlot(0)));
    }

    #[test]
    fn unused_slots_are_neutralised() {
        let slot = ActionImage { text: "L1U > 2530".into(), pins: [22; 8], ..ActionImage::neutral(22) };
        let all = all_slots(std::slice::from_ref(&slot));
        assert_eq!(all.len(), 5);
        assert_eq!(all[0], slot);
        assert!(all[1..].iter().all(|s| s.text == "0" && s.dry_run && s.window == 5 && s.pins == [22; 8]));
    }
}
