//! The configured relays, each on its claimed pin: the one owner of the GPIO outputs.

use super::{Gpio, Level, Pin, RelayError};
use crate::config::{self, OnShutdown};

/// One configured relay on its claimed pin, at its level.
struct RelayPin {
    relay: config::Relay,
    pin: Box<dyn Pin>,
    level: Level,
}

/// The configured relays, in configuration order, and their levels.
pub struct RelayBank {
    slots: Vec<RelayPin>,
}

impl std::fmt::Debug for RelayBank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.slots.iter().map(|s| (&s.relay.name, s.level))).finish()
    }
}

fn voltage(high: bool) -> &'static str {
    if high {
        "high"
    } else {
        "low"
    }
}

impl RelayBank {
    /// Claims the pin of every relay, driven from the first instant at `initial(relay)` (the
    /// caller restores the saved state, or gives the default). All or nothing: an error names the
    /// relay and its pin, and the pins claimed before it are let go with their levels as they are.
    pub fn open(
        relays: &[config::Relay],
        gpio: &mut dyn Gpio,
        initial: impl Fn(&config::Relay) -> Level,
    ) -> Result<RelayBank, RelayError> {
        let mut slots = Vec::with_capacity(relays.len());
        for relay in relays {
            let level = initial(relay);
            let high = level.pin_high(relay.active_low);
            let pin = gpio.claim(relay.pin, high).map_err(|e| in_relay(e, relay, "claim"))?;
            tracing::info!(
                relay = %relay.name,
                level = %level,
                pin = relay.pin,
                "relay {} {level} (GPIO {} {}{})",
                relay.name,
                relay.pin,
                voltage(high),
                if relay.active_low { ", active low" } else { "" }
            );
            slots.push(RelayPin { relay: relay.clone(), pin, level });
        }
        Ok(RelayBank { slots })
    }

    /// Switches relay `index` to `level`. Ok(true) when it changed, Ok(false) when it already was
    /// at that level (nothing is written). On an error the relay keeps the level it had as far as
    /// the bank knows. Panics on an index out of range, like a slice.
    pub fn set(&mut self, index: usize, level: Level) -> Result<bool, RelayError> {
        let slot = &mut self.slots[index];
        if slot.level == level {
            return Ok(false);
        }
        let high = level.pin_high(slot.relay.active_low);
        slot.pin.write(high).map_err(|e| in_relay(e, &slot.relay, "switch"))?;
        slot.level = level;
        tracing::info!(
            relay = %slot.relay.name,
            level = %level,
            pin = slot.relay.pin,
            "relay {} {level} (GPIO {} {})",
            slot.relay.name,
            slot.relay.pin,
            voltage(high)
        );
        Ok(true)
    }

    /// The level relay `index` is at. Panics on an index out of range.
    pub fn level(&self, index: usize) -> Level {
        self.slots[index].level
    }

    /// The configuration of relay `index`. Panics on an index out of range.
    pub fn relay(&self, index: usize) -> &config::Relay {
        &self.slots[index].relay
    }

    /// The index of the relay called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.relay.name == name)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Lets go of the pins as each relay's `on_shutdown` says: `default` drives the relay's
    /// default level first, `hold` leaves it as it is. Logs what it did; a pin that cannot be
    /// written is logged and the others still get their turn.
    pub fn shutdown(mut self) {
        for i in 0..self.slots.len() {
            let (name, pin, on_shutdown, default, level) = {
                let s = &self.slots[i];
                (s.relay.name.clone(), s.relay.pin, s.relay.on_shutdown, s.relay.default, s.level)
            };
            match on_shutdown {
                OnShutdown::Hold => {
                    tracing::info!(relay = %name, level = %level, pin, "relay {name} holds {level} (on_shutdown = hold)")
                }
                OnShutdown::Default => match self.set(i, default) {
                    Ok(true) => {
                        tracing::info!(relay = %name, "relay {name} back to its default (on_shutdown = default)")
                    }
                    Ok(false) => tracing::info!(relay = %name, level = %level, pin,
                        "relay {name} stays {level}, its default (on_shutdown = default)"),
                    Err(e) => tracing::warn!(relay = %name, pin,
                        "{e}; relay {name} may still be {level}: check it by hand"),
                },
            }
        }
        // Dropping the pins leaves their levels as they are.
    }

    /// Lets go of every pin at its level, whatever `on_shutdown` says (a configuration
    /// reload: the next bank claims them again at the level the saved state gives).
    pub fn hand_over(self) {
        for s in &self.slots {
            tracing::debug!(relay = %s.relay.name, level = %s.level, pin = s.relay.pin, "relay handed over as it is");
        }
    }

    /// For a reload: lets go of the pins that `next` (the new configuration's relays) claims
    /// again, at their levels, and keeps the others, the pins no longer owned (a relay removed,
    /// or moved to another pin). The caller drives those per their old relay's `on_shutdown`
    /// with [`RelayBank::release_orphans`] once the new bank holds its pins, or hands them
    /// back if the new configuration cannot start.
    pub fn keep_orphans(self, next: &[config::Relay]) -> RelayBank {
        let (handed, orphans): (Vec<RelayPin>, Vec<RelayPin>) =
            self.slots.into_iter().partition(|s| next.iter().any(|r| r.pin == s.relay.pin));
        RelayBank { slots: handed }.hand_over();
        RelayBank { slots: orphans }
    }

    /// Lets go of pins no longer owned by any relay after a reload, each per its old relay's
    /// `on_shutdown` (as at a stop): without this a removed relay would stay at its last level
    /// for ever, driven by nobody.
    pub fn release_orphans(self) {
        for s in &self.slots {
            tracing::warn!(relay = %s.relay.name, pin = s.relay.pin, on_shutdown = ?s.relay.on_shutdown,
                "relay {} is no longer configured on GPIO {}: the pin is let go per its on_shutdown",
                s.relay.name, s.relay.pin);
        }
        self.shutdown();
    }
}

fn in_relay(e: RelayError, relay: &config::Relay, what: &str) -> RelayError {
    match e {
        RelayError::Pin { pin, message } => RelayError::Pin {
            pin,
            message: format!("cannot {what} it for relay `{}`: {message}", relay.name),
        },
        RelayError::Open(message) => RelayError::Pin {
            pin: relay.pin,
            message: format!("cannot {what} it for relay `{}`: {message}", relay.name),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::fake::{FakeBoard, FakeOp};

    fn relay(
        name: &str,
        pin: u8,
        active_low: bool,
        default: Level,
        on_shutdown: OnShutdown,
    ) -> config::Relay {
        config::Relay { name: name.to_string(), pin, active_low, default, on_shutdown }
    }

    fn two() -> Vec<config::Relay> {
        vec![
            relay("pump", 17, false, Level::Off, OnShutdown::Default),
            relay("heater", 27, true, Level::Off, OnShutdown::Hold),
        ]
    }

    /// (pin, high, op) of every event.
    fn ops(board: &FakeBoard) -> Vec<(u8, bool, FakeOp)> {
        board.events().iter().map(|e| (e.pin, e.high, e.op)).collect()
    }

    #[test]
    fn claims_every_pin_at_its_initial_level_with_active_low_mapped() {
        let board = FakeBoard::new();
        let relays = two();
        let bank = RelayBank::open(&relays, &mut board.gpio(), |r| r.default).unwrap();
        assert_eq!(bank.len(), 2);
        assert!(!bank.is_empty());
        // Off: the plain relay's pin low, the active-low one's pin high.
        assert_eq!(ops(&board), vec![(17, false, FakeOp::Claim), (27, true, FakeOp::Claim)]);
        assert_eq!((bank.level(0), bank.level(1)), (Level::Off, Level::Off));

        let board = FakeBoard::new();
        let bank = RelayBank::open(&relays, &mut board.gpio(), |r| {
            if r.name == "heater" {
                Level::On
            } else {
                Level::Off
            }
        })
        .unwrap();
        assert_eq!(ops(&board), vec![(17, false, FakeOp::Claim), (27, false, FakeOp::Claim)]);
        assert_eq!(bank.level(1), Level::On);
        assert_eq!(bank.index_of("heater"), Some(1));
        assert_eq!(bank.index_of("nope"), None);
        assert_eq!(bank.relay(1).pin, 27);
    }

    #[test]
    fn set_writes_the_pin_voltage_only_on_a_change() {
        let board = FakeBoard::new();
        let mut bank = RelayBank::open(&two(), &mut board.gpio(), |r| r.default).unwrap();
        assert_eq!(bank.set(0, Level::On), Ok(true));
        assert_eq!(bank.set(1, Level::On), Ok(true));
        assert_eq!(board.level(17), Some(true));
        assert_eq!(board.level(27), Some(false), "active low: on is a low pin");
        let before = board.events().len();
        assert_eq!(bank.set(0, Level::On), Ok(false));
        assert_eq!(bank.set(1, Level::On), Ok(false));
        assert_eq!(board.events().len(), before, "no write when unchanged");
        assert_eq!(bank.set(1, Level::Off), Ok(true));
        assert_eq!(board.level(27), Some(true));
        assert_eq!(bank.level(1), Level::Off);
    }

    #[test]
    fn a_claim_that_fails_names_the_relay_and_pin() {
        let board = FakeBoard::new();
        board.set_failing(27, true);
        let err = RelayBank::open(&two(), &mut board.gpio(), |r| r.default).unwrap_err();
        let shown = err.to_string();
        assert!(matches!(err, RelayError::Pin { pin: 27, .. }), "{shown}");
        assert!(shown.contains("GPIO 27") && shown.contains("relay `heater`"), "{shown}");
        // All or nothing: the pin claimed before it is free again, at the level it was given.
        assert!(!board.is_claimed(17));
        assert_eq!(board.level(17), Some(false));
    }

    #[test]
    fn two_relays_on_one_pin_are_refused() {
        let board = FakeBoard::new();
        let relays = vec![
            relay("a", 5, false, Level::Off, OnShutdown::Hold),
            relay("b", 5, false, Level::Off, OnShutdown::Hold),
        ];
        let err = RelayBank::open(&relays, &mut board.gpio(), |r| r.default).unwrap_err().to_string();
        assert!(err.contains("GPIO 5") && err.contains("relay `b`"), "{err}");
    }

    #[test]
    fn a_write_that_fails_is_returned_and_the_level_kept() {
        let board = FakeBoard::new();
        let mut bank = RelayBank::open(&two(), &mut board.gpio(), |r| r.default).unwrap();
        board.set_failing(17, true);
        let err = bank.set(0, Level::On).unwrap_err();
        assert!(err.to_string().contains("relay `pump`"), "{err}");
        assert_eq!(bank.level(0), Level::Off);
        board.set_failing(17, false);
        assert_eq!(bank.set(0, Level::On), Ok(true), "tried again once the pin works");
    }

    #[test]
    fn shutdown_drives_default_relays_and_holds_the_others() {
        let board = FakeBoard::new();
        let mut bank = RelayBank::open(&two(), &mut board.gpio(), |r| r.default).unwrap();
        bank.set(0, Level::On).unwrap();
        bank.set(1, Level::On).unwrap();
        bank.shutdown();
        assert_eq!(board.level(17), Some(false), "pump: on_shutdown = default, back to off");
        assert_eq!(board.level(27), Some(false), "heater: on_shutdown = hold, still on (active low)");
        assert!(!board.is_claimed(17) && !board.is_claimed(27));
        let last: Vec<_> = ops(&board).into_iter().skip(4).collect();
        assert_eq!(last, vec![(17, false, FakeOp::Write)], "one write, for the pump only");
    }

    #[test]
    fn shutdown_writes_nothing_for_a_relay_already_at_its_default() {
        let board = FakeBoard::new();
        let bank = RelayBank::open(&two(), &mut board.gpio(), |r| r.default).unwrap();
        bank.shutdown();
        assert_eq!(board.events().len(), 2, "the two claims only");
    }

    #[test]
    fn a_pin_no_longer_owned_after_a_reload_goes_per_its_old_on_shutdown() {
        let board = FakeBoard::new();
        let old = vec![
            relay("pump", 17, false, Level::Off, OnShutdown::Default),
            relay("heater", 27, false, Level::Off, OnShutdown::Hold),
            relay("fan", 22, false, Level::Off, OnShutdown::Default),
        ];
        let mut bank = RelayBank::open(&old, &mut board.gpio(), |_| Level::On).unwrap();
        // pump moves to pin 5, heater is removed, fan stays.
        let next = vec![
            relay("pump", 5, false, Level::Off, OnShutdown::Default),
            relay("fan", 22, false, Level::Off, OnShutdown::Default),
        ];
        bank.set(2, Level::On).unwrap();
        let orphans = bank.keep_orphans(&next);
        assert!(!board.is_claimed(22), "the fan's pin is free for the next bank, as it is");
        assert_eq!(board.level(22), Some(true));
        assert!(board.is_claimed(17) && board.is_claimed(27), "orphans held until the next bank runs");
        let new = RelayBank::open(&next, &mut board.gpio(), |_| Level::On).unwrap();
        orphans.release_orphans();
        assert_eq!(board.level(17), Some(false), "pump's old pin: on_shutdown = default, off");
        assert_eq!(board.level(27), Some(true), "heater: on_shutdown = hold, stays on");
        assert!(!board.is_claimed(17) && !board.is_claimed(27));
        assert_eq!(new.level(0), Level::On);
        assert_eq!(board.level(5), Some(true));
    }

    #[test]
    fn shutdown_goes_on_past_a_failing_pin() {
        let board = FakeBoard::new();
        let relays = vec![
            relay("a", 5, false, Level::Off, OnShutdown::Default),
            relay("b", 6, false, Level::Off, OnShutdown::Default),
        ];
        let mut bank = RelayBank::open(&relays, &mut board.gpio(), |_| Level::On).unwrap();
        board.set_failing(5, true);
        assert!(bank.set(0, Level::On).is_ok(), "unchanged: nothing written, no error");
        bank.shutdown();
        assert_eq!(board.level(5), Some(true), "could not be written");
        assert_eq!(board.level(6), Some(false), "the next one still went to its default");
    }
}
