//! Relay actions as the server stores them: the five slots, their register image and coils,
//! and the rules the firmware does not check itself (pmtr-server.md §8, §10). Pure.

use super::registers::{ACTION_TEXT_REGISTERS, COIL_ACTION_OPTIONS, COIL_COMMIT, HR_ACTION, HR_ACTION_TEXT};
use crate::config::ServerAction;
use crate::modbus::Request;

pub use crate::pmtr_action::{reserved_pin, LOOP_PASS_MS, MAX_PIN, PIN_ENTRIES, SLOTS, WINDOWS};

/// Registers per write of the text: a frame of 7 + 32 + 2 = 41 bytes, well within the
/// server's 64-byte receive buffer.
pub const TEXT_CHUNK: u16 = 16;

/// One relay-action slot as pmtr writes it to a server: its image in the server's registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionImage {
    /// The expression in the firmware's units (already converted and checked).
    pub text: String,
    /// 5 or 10 seconds.
    pub window: u8,
    /// Every entry a pin the firmware does not use; unused entries repeat the first pin.
    pub pins: [u8; PIN_ENTRIES],
    /// Recovery period in main-loop passes.
    pub recovery: u16,
    /// The level driven while the expression is true.
    pub level_high: bool,
    pub dry_run: bool,
    /// Automatic recovery; false latches until the server reboots.
    pub auto: bool,
}

impl ActionImage {
    /// What fills the slots the configuration does not use: never true, a dry run, window 5,
    /// its pins a repeat of `pin` (never driven: a dry run touches no pin).
    pub fn neutral(pin: u8) -> ActionImage {
        ActionImage {
            text: "0".into(),
            window: 5,
            pins: [pin; PIN_ENTRIES],
            recovery: 0,
            level_high: false,
            dry_run: true,
            auto: true,
        }
    }

    /// Registers HR151..156: slot and window, the pins two to a register (first in the high
    /// byte), the recovery period.
    pub fn head(&self, slot: u8) -> Vec<u16> {
        let mut regs = vec![u16::from(self.window) << 8 | u16::from(slot)];
        for pair in self.pins.chunks(2) {
            regs.push(u16::from(pair[0]) << 8 | u16::from(pair[1]));
        }
        regs.push(self.recovery);
        regs
    }

    /// Registers HR157..188: the text two characters to a register (first in the high byte),
    /// NUL-terminated and padded with NULs, so nothing of an older text is left behind.
    pub fn text_registers(&self) -> Vec<u16> {
        let mut bytes = self.text.as_bytes().to_vec();
        bytes.resize(2 * ACTION_TEXT_REGISTERS as usize, 0);
        bytes.chunks(2).map(|c| u16::from(c[0]) << 8 | u16::from(c[1])).collect()
    }

    /// Coils 2..4.
    pub fn options(&self) -> Vec<bool> {
        vec![self.level_high, self.dry_run, self.auto]
    }

    /// The writes that stage slot `slot` on the server at `address`, in order, then the commit.
    /// Each frame stays within the server's 64-byte receive buffer.
    pub fn requests(&self, address: u8, slot: u8) -> Vec<Request> {
        let mut out = vec![
            Request::write_coils(address, COIL_ACTION_OPTIONS, self.options()),
            Request::write_registers(address, HR_ACTION, self.head(slot)),
        ];
        let text = self.text_registers();
        for (i, chunk) in text.chunks(TEXT_CHUNK as usize).enumerate() {
            out.push(Request::write_registers(
                address,
                HR_ACTION_TEXT + i as u16 * TEXT_CHUNK,
                chunk.to_vec(),
            ));
        }
        out.push(Request::write_coil(address, COIL_COMMIT, true));
        out
    }
}

/// The configured action as a slot (the configuration describes it; this module knows the
/// server's slots).
impl ServerAction {
    /// The slot as sent to a server with the current (`legacy` false) or the legacy firmware.
    pub fn slot(&self, legacy: bool) -> Result<ActionImage, String> {
        let text = if legacy { self.legacy_text.clone()? } else { self.firmware_text.clone() };
        Ok(ActionImage {
            text,
            window: self.average,
            pins: pin_entries(&self.pins),
            recovery: recovery_passes(self.recovery.as_secs_f64()),
            level_high: self.level_high,
            dry_run: self.dry_run,
            auto: !self.latch,
        })
    }
}

/// Recovery seconds as the server counts them (loop passes), rounded up, at most 65535.
pub fn recovery_passes(seconds: f64) -> u16 {
    let passes = (seconds * 1000.0 / LOOP_PASS_MS as f64).ceil();
    passes.clamp(0.0, f64::from(u16::MAX)) as u16
}

/// The eight pin entries from the pins configured (1 to 8 of them).
pub fn pin_entries(pins: &[u8]) -> [u8; PIN_ENTRIES] {
    let first = pins.first().copied().unwrap_or(13);
    let mut out = [first; PIN_ENTRIES];
    for (o, p) in out.iter_mut().zip(pins) {
        *o = *p;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::Pdu;

    #[test]
    fn the_reference_register_image() {
        // pmtr-server.md §8: window 5, slot 0, pins 30, 32, …, 44, recovery 300, "L1U > 253.0".
        let slot = ActionImage {
            text: "L1U > 253.0".into(),
            window: 5,
            pins: [30, 32, 34, 36, 38, 40, 42, 44],
            recovery: 300,
            level_high: false,
            dry_run: false,
            auto: true,
        };
        let mut image = slot.head(0);
        image.extend(&slot.text_registers()[..6]);
        assert_eq!(
            image,
            [0x0500, 0x1E20, 0x2224, 0x2628, 0x2A2C, 0x012C, 0x4C31, 0x5520, 0x3E20, 0x3235, 0x332E, 0x3000]
        );
        assert_eq!(slot.options(), [false, false, true]);
    }

    #[test]
    fn every_frame_fits_the_receive_buffer_and_the_text_is_written_whole() {
        let slot = ActionImage { text: "x".repeat(63), ..ActionImage::neutral(22) };
        let reqs = slot.requests(9, 4);
        assert!(
            reqs.iter().all(|r| r.encode().len() <= 64),
            "{:?}",
            reqs.iter().map(|r| r.encode().len()).collect::<Vec<_>>()
        );
        let written: u16 = reqs
            .iter()
            .filter_map(|r| match &r.pdu {
                Pdu::WriteRegisters { start, values } if *start >= HR_ACTION_TEXT => {
                    Some(values.len() as u16)
                }
                _ => None,
            })
            .sum();
        assert_eq!(written, ACTION_TEXT_REGISTERS);
        // The last text register holds the NUL of a 63-character text.
        assert_eq!(slot.text_registers().last().map(|r| r & 0xFF), Some(0));
        assert!(matches!(reqs.last().unwrap().pdu, Pdu::WriteCoil { coil: COIL_COMMIT, on: true }));
        assert_eq!(slot.head(4)[0], 0x0504);
    }

    #[test]
    fn unused_pin_entries_repeat_the_first_pin() {
        assert_eq!(pin_entries(&[22, 23]), [22, 23, 22, 22, 22, 22, 22, 22]);
    }

    #[test]
    fn recovery_counts_loop_passes() {
        assert_eq!(recovery_passes(300.0), 250);
        assert_eq!(recovery_passes(0.0), 0);
        assert_eq!(recovery_passes(1.0), 1);
        assert_eq!(recovery_passes(1e9), u16::MAX);
    }

    #[test]
    fn the_firmwares_own_pins_are_reserved() {
        for p in [0, 1, 16, 19, 20, 31, 32, 36, 44, 69] {
            assert!(reserved_pin(p).is_some(), "{p}");
        }
        for p in [2, 13, 22, 30, 45, 54, 68] {
            assert!(reserved_pin(p).is_none(), "{p}");
        }
    }
}
