//! The Raspberry Pi's GPIO through rppal (pure Rust over `/dev/gpiomem` and the GPIO character
//! device).

use super::{Gpio, Pin, RelayError};
use ::rppal::gpio;

/// The Pi's GPIO, opened once.
#[derive(Debug)]
pub struct RppalGpio {
    gpio: gpio::Gpio,
}

impl RppalGpio {
    /// Opens the GPIO. Off a Raspberry Pi (or without access to `/dev/gpiomem`) this is a
    /// [`RelayError::Open`] that says what to do.
    pub fn open() -> Result<RppalGpio, RelayError> {
        gpio::Gpio::new().map(|gpio| RppalGpio { gpio }).map_err(|e| RelayError::Open(open_advice(&e)))
    }
}

fn open_advice(e: &gpio::Error) -> String {
    match e {
        gpio::Error::UnknownModel => format!(
            "{e}: this does not look like a Raspberry Pi; set `gateway.gpio = \"fake\"` in the \
             configuration to try pmtr without hardware"
        ),
        gpio::Error::PermissionDenied(_) => format!(
            "{e}: run pmtr as a user in the `gpio` group (systemd: SupplementaryGroups=gpio), \
             or set `gateway.gpio = \"fake\"` to try pmtr without hardware"
        ),
        _ => format!("{e}; set `gateway.gpio = \"fake\"` to try pmtr without hardware"),
    }
}

impl Gpio for RppalGpio {
    fn claim(&mut self, pin: u8, high: bool) -> Result<Box<dyn Pin>, RelayError> {
        let p = self.gpio.get(pin).map_err(|e| RelayError::Pin {
            pin,
            message: match e {
                gpio::Error::PinUsed(_) => "already in use by pmtr: two relays on one pin?".to_string(),
                gpio::Error::PinNotAvailable(_) => "this Pi has no such GPIO (BCM numbers)".to_string(),
                e => e.to_string(),
            },
        })?;
        // The level is set before the pin becomes an output: no glitch to the other level.
        let mut out = if high { p.into_output_high() } else { p.into_output_low() };
        // pmtr decides what happens to the relay when it stops (`on_shutdown`): dropping the pin
        // must not turn it back into an input.
        out.set_reset_on_drop(false);
        Ok(Box::new(RppalPin(out)))
    }
}

struct RppalPin(gpio::OutputPin);

impl Pin for RppalPin {
    fn write(&mut self, high: bool) -> Result<(), RelayError> {
        if high {
            self.0.set_high();
        } else {
            self.0.set_low();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_a_pi() -> bool {
        std::fs::read_to_string("/proc/device-tree/model").is_ok_and(|m| m.contains("Raspberry Pi"))
    }

    #[test]
    fn off_a_pi_opening_is_an_error_that_says_what_to_do() {
        if on_a_pi() {
            eprintln!("skipped: this is a Raspberry Pi");
            return;
        }
        match RppalGpio::open() {
            Err(RelayError::Open(message)) => {
                assert!(message.contains("gateway.gpio = \"fake\""), "{message}");
                let shown = RelayError::Open(message).to_string();
                assert!(shown.starts_with("cannot open the GPIO: "), "{shown}");
            }
            Err(e) => panic!("expected RelayError::Open, got {e:?}"),
            Ok(g) => panic!("opened a GPIO off a Pi: {g:?}"),
        }
    }
}
