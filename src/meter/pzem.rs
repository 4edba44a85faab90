//! Peacefair PZEM-004T v3 / PZEM-014 / PZEM-016: one AC phase, FC04 registers 0x0000..0x0009,
//! 32-bit values low word first.

use super::{u32_lw, DecodeError};
use crate::modbus::frame::fc;
use crate::modbus::{Pdu, Request};
use crate::reading::{Phase, Quantity, Sample};

/// Answered by any PZEM whatever its address: only for set-up with one device on the line.
pub const GENERAL_ADDRESS: u8 = 0xF8;
/// Holding register with the over-power alarm threshold (W).
pub const REG_ALARM_THRESHOLD: u16 = 0x0001;
/// Holding register with the slave address.
pub const REG_ADDRESS: u16 = 0x0002;

pub fn read_request(address: u8) -> Request {
    Request::read_input(address, 0x0000, 10)
}

pub fn reset_energy_request(address: u8) -> Request {
    Request { address, pdu: Pdu::EchoCommand { function: fc::PZEM_RESET_ENERGY } }
}

/// Decodes the ten measurement registers.
pub fn decode(r: &[u16], phase: Phase) -> Result<Vec<Sample>, DecodeError> {
    if r.len() < 10 {
        return Err(DecodeError::Missing("PZEM measurement registers 0..9"));
    }
    Ok(vec![
        Sample::new(phase, Quantity::Voltage, f64::from(r[0]) * 0.1),
        Sample::new(phase, Quantity::Current, f64::from(u32_lw(r[1], r[2])) * 0.001),
        Sample::new(phase, Quantity::ActivePower, f64::from(u32_lw(r[3], r[4])) * 0.1),
        Sample::new(phase, Quantity::ActiveEnergy, f64::from(u32_lw(r[5], r[6])) / 1000.0),
        Sample::new(phase, Quantity::Frequency, f64::from(r[7]) * 0.1),
        Sample::new(phase, Quantity::PowerFactor, f64::from(r[8]) * 0.01),
        Sample::new(phase, Quantity::Alarm, if r[9] == 0 { 0.0 } else { 1.0 }),
    ])
}

/// The inverse of [`decode`], for simulators: SI values to the ten registers.
pub fn encode(volts: f64, amps: f64, watts: f64, kwh: f64, hz: f64, pf: f64, alarm: bool) -> [u16; 10] {
    let u32r = |v: f64| -> u32 { v.round().clamp(0.0, u32::MAX as f64) as u32 };
    let i = u32r(amps * 1000.0);
    let p = u32r(watts * 10.0);
    let e = u32r(kwh * 1000.0);
    [
        u32r(volts * 10.0).min(0xFFFF) as u16,
        i as u16,
        (i >> 16) as u16,
        p as u16,
        (p >> 16) as u16,
        e as u16,
        (e >> 16) as u16,
        u32r(hz * 10.0).min(0xFFFF) as u16,
        u32r(pf * 100.0).min(100) as u16,
        if alarm { 0xFFFF } else { 0 },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::frame::{scan_reply, Scan};
    use crate::modbus::Reply;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
    }

    fn decode_frame(frame: &str) -> Vec<Sample> {
        let Scan::Done { result: Ok(Reply::Registers(regs)), .. } = scan_reply(&read_request(1), &hex(frame))
        else {
            panic!("frame did not parse");
        };
        decode(&regs, Phase::L1).unwrap()
    }

    fn val(s: &[Sample], q: Quantity) -> f64 {
        s.iter().find(|x| x.quantity == q).unwrap().value
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn manual_example() {
        let s = decode_frame("01 04 14 08 98 03 E8 00 00 08 98 00 00 00 00 00 00 01 F4 00 64 00 00 63 CE");
        assert!(close(val(&s, Quantity::Voltage), 220.0));
        assert!(close(val(&s, Quantity::Current), 1.0));
        assert!(close(val(&s, Quantity::ActivePower), 220.0));
        assert!(close(val(&s, Quantity::ActiveEnergy), 0.0));
        assert!(close(val(&s, Quantity::Frequency), 50.0));
        assert!(close(val(&s, Quantity::PowerFactor), 1.0));
        assert!(close(val(&s, Quantity::Alarm), 0.0));
    }

    #[test]
    fn esphome_capture() {
        let s = decode_frame("01 04 14 08 D1 00 6C 00 00 00 F4 00 00 00 26 00 00 01 F4 00 64 00 00 51 34");
        assert!(close(val(&s, Quantity::Voltage), 225.7));
        assert!(close(val(&s, Quantity::Current), 0.108));
        assert!(close(val(&s, Quantity::ActivePower), 24.4));
        assert!(close(val(&s, Quantity::ActiveEnergy), 0.038));
    }

    #[test]
    fn high_words_shift_by_sixteen() {
        let s = decode_frame("01 04 14 09 10 11 70 00 01 3A F0 00 02 E2 40 00 01 01 F4 00 5A FF FF 58 73");
        assert!(close(val(&s, Quantity::Voltage), 232.0));
        assert!(close(val(&s, Quantity::Current), 70.0));
        assert!(close(val(&s, Quantity::ActivePower), 14616.0));
        assert!(close(val(&s, Quantity::ActiveEnergy), 123.456));
        assert!(close(val(&s, Quantity::PowerFactor), 0.9));
        assert!(close(val(&s, Quantity::Alarm), 1.0));
    }

    #[test]
    fn encode_is_the_inverse() {
        let regs = encode(232.0, 70.0, 14616.0, 123.456, 50.0, 0.9, true);
        assert_eq!(regs, [0x0910, 0x1170, 0x0001, 0x3AF0, 0x0002, 0xE240, 0x0001, 0x01F4, 0x005A, 0xFFFF]);
    }

    #[test]
    fn command_frames() {
        assert_eq!(reset_energy_request(1).encode(), hex("01 42 80 11"));
        assert_eq!(
            Request::write_single(GENERAL_ADDRESS, REG_ADDRESS, 4).encode(),
            hex("F8 06 00 02 00 04 3D A0")
        );
    }
}
