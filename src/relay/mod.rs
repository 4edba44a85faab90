//! Relays: a [`Gpio`] trait with an rppal backend for the Pi and a fake one for tests and the
//! demo, and the [`RelayBank`] that drives the configured relays through it.
//!
//! Levels are logical: [`Level::On`] energises the relay's coil. `active_low` relays (most
//! relay boards) are switched on by driving their pin low.

pub use crate::config::Level;

/// Where a level meets the wiring (the word itself is the configuration's).
impl Level {
    /// The pin voltage that gives this level: high for on, unless `active_low`.
    pub fn pin_high(self, active_low: bool) -> bool {
        (self == Level::On) != active_low
    }
}

/// Why a relay could not be claimed or switched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("GPIO {pin}: {message}")]
    Pin { pin: u8, message: String },
    #[error("cannot open the GPIO: {0}")]
    Open(String),
}

/// Access to the GPIO pins (BCM numbers).
pub trait Gpio: Send {
    /// Claims `pin` as an output driven `high` (or low) from the first instant: no glitch to
    /// the other level while it is being set up. When the returned pin is dropped, the pin
    /// keeps its level (pmtr decides what to do on shutdown itself).
    fn claim(&mut self, pin: u8, high: bool) -> Result<Box<dyn Pin>, RelayError>;
}

/// One claimed output pin.
pub trait Pin: Send {
    fn write(&mut self, high: bool) -> Result<(), RelayError>;
}

pub mod bank;
pub mod fake;
mod rppal;

pub use self::rppal::RppalGpio;
pub use bank::RelayBank;
pub use fake::{FakeBoard, FakeGpio};

/// The GPIO the configuration asks for: the Pi's through rppal, or a fake one that logs to
/// `<state_dir>/fake-gpio.log` (returned with its board, for the demo).
pub fn open_gpio(gateway: &crate::config::Gateway) -> Result<(Box<dyn Gpio>, Option<FakeBoard>), RelayError> {
    match gateway.gpio {
        crate::config::GpioBackend::Rppal => Ok((Box::new(RppalGpio::open()?), None)),
        crate::config::GpioBackend::Fake => {
            let path = gateway.state_dir.join("fake-gpio.log");
            let board = FakeBoard::with_log(&path)
                .map_err(|e| RelayError::Open(format!("fake GPIO: cannot open {}: {e}", path.display())))?;
            Ok((Box::new(board.gpio()), Some(board)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Gateway, GpioBackend};

    fn gateway(dir: &std::path::Path, gpio: GpioBackend) -> Gateway {
        Gateway {
            name: "t".into(),
            state_dir: dir.join("state"),
            log_readings: false,
            gpio,
            control_socket: dir.join("state/control.sock"),
            health_interval: None,
            clock_sync_wait: std::time::Duration::ZERO,
            meters_dir: dir.join("meters.d"),
        }
    }

    #[test]
    fn the_fake_backend_logs_to_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (mut gpio, board) = open_gpio(&gateway(dir.path(), GpioBackend::Fake)).unwrap();
        let board = board.expect("the fake's board");
        gpio.claim(17, true).unwrap().write(false).unwrap();
        assert_eq!(board.level(17), Some(false));
        let log = std::fs::read_to_string(dir.path().join("state/fake-gpio.log")).unwrap();
        assert_eq!(log.lines().count(), 2, "{log}");
    }

    #[test]
    fn the_rppal_backend_off_a_pi_is_an_error() {
        if std::fs::read_to_string("/proc/device-tree/model").is_ok_and(|m| m.contains("Raspberry Pi")) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let err = open_gpio(&gateway(dir.path(), GpioBackend::Rppal)).err().expect("no GPIO here");
        assert!(err.to_string().contains("gateway.gpio = \"fake\""), "{err}");
    }
}
