//! RX380 three-phase meter (Mikro "4000 block"): FC04, 32-bit values high word first, signed
//! total active and reactive power, power factor and frequency as single registers.
//!
//! Energy is read as the 64-bit counter at 4000 in Wh (the Mikro DPM680 map) and reported in kWh;
//! see the README for how to check this on a real meter.

use super::{DecodeError, RegisterImage};
use crate::reading::{Phase, Quantity, Sample};

pub const BLOCK_START: u16 = 4000;
pub const BLOCK_LEN: u16 = 40;

/// The hand-written decoder of the 40 registers 4000..4039 that the built-in `rx380`
/// definition replaced in the daemon: kept as the reference the definition is tested and
/// benchmarked against.
pub fn decode(img: &RegisterImage) -> Result<Vec<Sample>, DecodeError> {
    let miss = DecodeError::Missing;
    let u32v = |a: u16, what| img.u32_hw(a).ok_or(miss(what));
    let i32v = |a: u16, what| img.u32_hw(a).map(|v| v as i32).ok_or(miss(what));
    let e = |a: u16, what| img.i64_hw(a).map(|v| v as f64 / 1000.0).ok_or(miss(what));
    let mut s = vec![
        Sample::new(Phase::Total, Quantity::ActiveEnergy, e(4000, "active energy 4000")?),
        Sample::new(Phase::Total, Quantity::ApparentEnergy, e(4004, "apparent energy 4004")?),
        Sample::new(Phase::Total, Quantity::ReactiveEnergy, e(4008, "reactive energy 4008")?),
        Sample::new(Phase::Total, Quantity::ActivePower, f64::from(i32v(4012, "power 4012")?)),
        Sample::new(Phase::Total, Quantity::ApparentPower, f64::from(u32v(4014, "apparent power 4014")?)),
        Sample::new(Phase::Total, Quantity::ReactivePower, f64::from(i32v(4016, "reactive power 4016")?)),
        Sample::new(
            Phase::Total,
            Quantity::PowerFactor,
            f64::from(img.get(4018).ok_or(miss("power factor 4018"))? as i16) * 0.001,
        ),
        Sample::new(
            Phase::Total,
            Quantity::Frequency,
            f64::from(img.get(4019).ok_or(miss("frequency 4019"))?) * 0.01,
        ),
    ];
    for (phase, addr) in [(Phase::L1, 4020), (Phase::L2, 4022), (Phase::L3, 4024), (Phase::N, 4026)] {
        s.push(Sample::new(phase, Quantity::Current, f64::from(u32v(addr, "current 4020..4027")?) * 0.001));
    }
    for (phase, addr) in [
        (Phase::L12, 4028),
        (Phase::L23, 4030),
        (Phase::L31, 4032),
        (Phase::L1, 4034),
        (Phase::L2, 4036),
        (Phase::L3, 4038),
    ] {
        s.push(Sample::new(phase, Quantity::Voltage, f64::from(u32v(addr, "voltage 4028..4039")?) * 0.1));
    }
    Ok(s)
}

/// Values of one RX380 snapshot in SI units, for simulators.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub kwh: f64,
    pub kvah: f64,
    pub kvarh: f64,
    pub watts: f64,
    pub va: f64,
    pub var: f64,
    pub pf: f64,
    pub hz: f64,
    /// L1, L2, L3, N.
    pub amps: [f64; 4],
    /// L12, L23, L31.
    pub line_volts: [f64; 3],
    /// L1, L2, L3.
    pub phase_volts: [f64; 3],
}

/// The 40 registers 4000..4039 for `v` (the inverse of [`decode`]).
pub fn encode(v: &Snapshot) -> [u16; BLOCK_LEN as usize] {
    let mut r = [0u16; BLOCK_LEN as usize];
    let put32 = |r: &mut [u16], addr: u16, x: u32| {
        let i = (addr - BLOCK_START) as usize;
        r[i] = (x >> 16) as u16;
        r[i + 1] = x as u16;
    };
    let put64 = |r: &mut [u16], addr: u16, x: i64| {
        let i = (addr - BLOCK_START) as usize;
        for k in 0..4 {
            r[i + k] = (x >> (48 - 16 * k)) as u16;
        }
    };
    put64(&mut r, 4000, (v.kwh * 1000.0).round() as i64);
    put64(&mut r, 4004, (v.kvah * 1000.0).round() as i64);
    put64(&mut r, 4008, (v.kvarh * 1000.0).round() as i64);
    put32(&mut r, 4012, v.watts.round() as i32 as u32);
    put32(&mut r, 4014, v.va.round().max(0.0) as u32);
    put32(&mut r, 4016, v.var.round() as i32 as u32);
    r[18] = (v.pf * 1000.0).round() as i16 as u16;
    r[19] = (v.hz * 100.0).round() as u16;
    for (k, a) in v.amps.iter().enumerate() {
        put32(&mut r, 4020 + 2 * k as u16, (a * 1000.0).round().max(0.0) as u32);
    }
    for (k, u) in v.line_volts.iter().chain(v.phase_volts.iter()).enumerate() {
        put32(&mut r, 4028 + 2 * k as u16, (u * 10.0).round().max(0.0) as u32);
    }
    r
}

/// A snapshot with every sign worth testing (export power, negative PF), for tests.
#[cfg(test)]
pub(crate) fn test_snapshot() -> Snapshot {
    Snapshot {
        kwh: 123456.789,
        kvah: 130000.0,
        kvarh: 4000.5,
        watts: -1500.0,
        va: 1600.0,
        var: -200.0,
        pf: -0.9,
        hz: 50.0,
        amps: [1.5, 2.25, 3.0, 0.125],
        line_volts: [400.1, 401.2, 399.9],
        phase_volts: [233.0, 231.5, 230.0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::frame::{scan_reply, Scan};
    use crate::modbus::{Reply, Request};

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
    }

    fn regs(req: &Request, frame: &str) -> Vec<u16> {
        match scan_reply(req, &hex(frame)) {
            Scan::Done { result: Ok(Reply::Registers(r)), .. } => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reference_frames() {
        let v = Request::read_input(1, 4034, 2);
        let img =
            RegisterImage::from_replies(std::slice::from_ref(&v), &[regs(&v, "01 04 04 00 00 09 1A 7C 1F")]);
        assert_eq!(img.u32_hw(4034), Some(2330));

        let pf = Request::read_input(1, 4018, 2);
        let img = RegisterImage::from_replies(
            std::slice::from_ref(&pf),
            &[regs(&pf, "01 04 04 03 84 13 88 B6 BF")],
        );
        assert_eq!(img.get(4018), Some(900));
        assert_eq!(img.get(4019), Some(5000));

        let p = Request::read_input(1, 4012, 2);
        let img =
            RegisterImage::from_replies(std::slice::from_ref(&p), &[regs(&p, "01 04 04 FF FF FA 24 B9 1B")]);
        assert_eq!(img.u32_hw(4012).map(|v| v as i32), Some(-1500));
    }

    use super::test_snapshot as snapshot;

    #[test]
    fn decodes_every_quantity_in_both_plans() {
        let regs = encode(&snapshot());
        let reader = crate::meter::driver::Reader::new(crate::meter::Model::Rx380, 1);
        assert_eq!(reader.plans().len(), 2, "the block, then blocks of at most 12");
        for plan in reader.plans() {
            let reqs = reader.requests(plan);
            let replies: Vec<Vec<u16>> = reqs
                .iter()
                .map(|r| match r.pdu {
                    crate::modbus::Pdu::ReadInput { start, count } => {
                        regs[(start - BLOCK_START) as usize..][..count as usize].to_vec()
                    }
                    _ => unreachable!(),
                })
                .collect();
            let s = reader.decode(plan, &replies).unwrap().samples;
            let get = |p, q| s.iter().find(|x| x.phase == p && x.quantity == q).unwrap().value;
            assert!((get(Phase::Total, Quantity::ActiveEnergy) - 123456.789).abs() < 1e-6);
            assert_eq!(get(Phase::Total, Quantity::ActivePower), -1500.0, "signed power");
            assert_eq!(get(Phase::Total, Quantity::ReactivePower), -200.0);
            assert!((get(Phase::Total, Quantity::PowerFactor) + 0.9).abs() < 1e-9, "signed PF");
            assert_eq!(get(Phase::Total, Quantity::Frequency), 50.0);
            assert_eq!(get(Phase::L2, Quantity::Current), 2.25);
            assert_eq!(get(Phase::N, Quantity::Current), 0.125);
            assert!((get(Phase::L12, Quantity::Voltage) - 400.1).abs() < 1e-9);
            assert!((get(Phase::L3, Quantity::Voltage) - 230.0).abs() < 1e-9);
            assert_eq!(s.len(), 18);
        }
    }

    #[test]
    fn missing_registers_are_an_error_not_a_zero() {
        let req = Request::read_input(1, 4012, 8);
        let img = RegisterImage::from_replies(&[req], &[vec![0; 8]]);
        assert!(decode(&img).is_err());
    }
}
