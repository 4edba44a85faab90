//! What a PMTR_001_SRV's relay action may be: the firmware's limits (slots, pins, windows) and
//! its expression dialect ([`expr`]). A leaf of its own (no `crate::` import): the configuration
//! checks each `[[meter.action]]` with it at load, and `pmtr` builds and sends the slots (it
//! re-exports these as `pmtr::action::*` and `pmtr::expr`).

pub mod expr;

/// Slots per server.
pub const SLOTS: usize = 5;
/// Pin entries per slot: all eight are driven, so unused ones repeat a real pin.
pub const PIN_ENTRIES: usize = 8;
/// The moving-average windows the firmware has (any other leaves the result uninitialised).
pub const WINDOWS: [u8; 2] = [5, 10];
/// The server counts the recovery period in main-loop passes, about this long each.
pub const LOOP_PASS_MS: u64 = 1200;
/// The Mega 2560's digital pins are 0..=69 (A0..A15 are 54..69).
pub const MAX_PIN: u8 = 69;

/// Pins the firmware itself uses, and what for: an action must not drive them.
pub fn reserved_pin(pin: u8) -> Option<&'static str> {
    Some(match pin {
        0 | 1 => "the USB serial port",
        16 | 17 => "Serial2, the PZEM modules",
        18 | 19 => "Serial1, the power-line modem",
        20 | 21 => "I²C, the DS3231 clock",
        31 => "the RS-485 driver enable",
        32..=35 => "the ADG333A switch between the PZEMs",
        36..=44 => "the address DIP switch and its supply",
        69 => "A15, the 12 V supply sense",
        _ => return None,
    })
}
