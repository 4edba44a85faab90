//! A PMTR_001_SRV's telemetry as a meter model: what to read, and how the registers become
//! samples in SI units. Pure. The numbers are the firmware's 0-based PDU addresses
//! (../shared/reference/pmtr-server.md §3-§5); what the master owes a server besides reading
//! it (its clock, relay actions, reboot sentinel) is the PMTR master's (`pmtr`).
//!
//! Two firmwares are met in the field:
//! - the current one (2024, "uint16"): scaled integers in HR78..114;
//! - the legacy one (2022): IEEE-754 floats, low word first, in HR80..145; HR78 does not exist
//!   there, so a read from 78 gets exception 02, which is how pmtr tells them apart.

use super::{DecodeError, RegisterImage};
use crate::modbus::Request;
use crate::reading::{Phase, Quantity, Sample};
use serde::Serialize;

/// Where pmtr keeps its reboot sentinel: a register the firmware never writes, and zeroes at
/// boot. Current firmware: HR115 (read with the telemetry for free). Legacy firmware: HR150,
/// which it reads at a time sync and never uses.
pub const SENTINEL_CURRENT: u16 = 115;
pub const SENTINEL_LEGACY: u16 = 150;

/// The 12 V supply below which the server saves power (and refreshes only its voltages); it
/// leaves that mode above 11.2 V.
pub const LOW_POWER_BELOW_MV: u16 = 10_800;

/// The ways of reading a server, tried in this order; a server that refuses one with
/// exception 02 or 03 is read the next way from then on (see [`super::driver::Reader::fallback`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Current firmware, HR78..115 in one read (an 81-byte reply): a bus with one server.
    Block,
    /// Current firmware in two reads (replies of 55 and 31 bytes), so that no reply overflows
    /// the 64-byte receive buffers of the other servers on a shared bus.
    Chunks,
    /// Legacy float firmware, in reads of at most 26 registers.
    Legacy,
}

impl Plan {
    pub const ALL: [Plan; 3] = [Plan::Block, Plan::Chunks, Plan::Legacy];

    /// The way to read a server that refused this one with exception 02 or 03.
    pub fn smaller(self) -> Option<Plan> {
        match self {
            Plan::Block => Some(Plan::Chunks),
            Plan::Chunks => Some(Plan::Legacy),
            Plan::Legacy => None,
        }
    }

    /// The first way to try: one block when the server is alone on its bus.
    pub fn first(servers_on_bus: usize) -> Plan {
        if servers_on_bus > 1 {
            Plan::Chunks
        } else {
            Plan::Block
        }
    }

    pub fn is_legacy(self) -> bool {
        self == Plan::Legacy
    }

    pub fn sentinel_register(self) -> u16 {
        if self.is_legacy() {
            SENTINEL_LEGACY
        } else {
            SENTINEL_CURRENT
        }
    }
}

/// The requests of one poll.
pub fn requests(address: u8, plan: Plan) -> Vec<Request> {
    match plan {
        Plan::Block => vec![Request::read_holding(address, 78, 38)],
        Plan::Chunks => vec![Request::read_holding(address, 78, 25), Request::read_holding(address, 103, 13)],
        Plan::Legacy => vec![
            Request::read_holding(address, 80, 24),
            Request::read_holding(address, 104, 12),
            Request::read_holding(address, 116, 26),
            Request::read_holding(address, SENTINEL_LEGACY, 1),
        ],
    }
}

/// A decoded poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub samples: Vec<Sample>,
    /// The sentinel register as read: 0 after a reboot.
    pub sentinel: u16,
    pub low_power: bool,
}

const PHASES: [Phase; 3] = [Phase::L1, Phase::L2, Phase::L3];

/// Decodes the registers of a poll of `plan`. `multiplier` scales active power and energy
/// (√3 for a meter wired across a delta). Values the server did not refresh are left out, never
/// stored as if new: a phase whose PZEM did not answer (frequency 0; the firmware then writes 0
/// everywhere) keeps only its voltage, and in low-power mode only voltages and supplies are
/// fresh.
pub fn decode(image: &RegisterImage, plan: Plan, multiplier: f64) -> Result<Telemetry, DecodeError> {
    if plan.is_legacy() {
        return decode_legacy(image, multiplier);
    }
    let reg = |a: u16| image.get(a).ok_or(DecodeError::Missing("a PMTR_001_SRV telemetry register"));
    let v12 = reg(79)?;
    let low_power = v12 < LOW_POWER_BELOW_MV;
    let mut samples = Vec::with_capacity(40);
    for (i, &phase) in PHASES.iter().enumerate() {
        let i = i as u16;
        samples.push(Sample::new(phase, Quantity::Voltage, f64::from(reg(80 + i)?) / 10.0));
        let answered = reg(92 + i)? != 0;
        if low_power || !answered {
            continue;
        }
        samples.push(Sample::new(phase, Quantity::Current, f64::from(reg(83 + i)?) / 100.0));
        samples.push(Sample::new(phase, Quantity::ActivePower, f64::from(reg(86 + i)?) * multiplier));
        samples.push(Sample::new(phase, Quantity::ActiveEnergy, f64::from(reg(89 + i)?) / 10.0 * multiplier));
        samples.push(Sample::new(phase, Quantity::Frequency, f64::from(reg(92 + i)?) / 10.0));
        samples.push(Sample::new(phase, Quantity::PowerFactor, f64::from(reg(95 + i)?) / 100.0));
        samples.push(Sample::new(phase, Quantity::VoltageAvg, f64::from(reg(98 + i)?) / 10.0));
        samples.push(Sample::new(phase, Quantity::CurrentAvg, f64::from(reg(101 + i)?) / 100.0));
        samples.push(Sample::new(phase, Quantity::ActivePowerAvg, f64::from(reg(104 + i)?) * multiplier));
        samples.push(Sample::new(phase, Quantity::FrequencyAvg, f64::from(reg(107 + i)?) / 10.0));
        // The firmware writes the averaged power factors at 110 + 2i (its stride bug).
        samples.push(Sample::new(phase, Quantity::PowerFactorAvg, f64::from(reg(110 + 2 * i)?) / 100.0));
    }
    samples.push(Sample::new(Phase::Total, Quantity::Supply5V, f64::from(reg(78)?) / 1000.0));
    samples.push(Sample::new(Phase::Total, Quantity::Supply12V, f64::from(v12) / 1000.0));
    samples.push(Sample::new(Phase::Total, Quantity::LowPower, f64::from(u8::from(low_power))));
    Ok(Telemetry { samples, sentinel: reg(SENTINEL_CURRENT)?, low_power })
}

/// A float in two registers, low word first ("CDAB").
fn float_lw(image: &RegisterImage, addr: u16) -> Result<f64, DecodeError> {
    let lo = image.get(addr).ok_or(DecodeError::Missing("a legacy PMTR_001_SRV register"))?;
    let hi = image.get(addr + 1).ok_or(DecodeError::Missing("a legacy PMTR_001_SRV register"))?;
    let v = super::f32_decimal(f32::from_bits(super::u32_lw(lo, hi)));
    // A NaN from a PZEM that did not answer is a gap, not a value.
    Ok(if v.is_finite() { v } else { f64::NAN })
}

fn decode_legacy(image: &RegisterImage, multiplier: f64) -> Result<Telemetry, DecodeError> {
    let mut samples = Vec::with_capacity(24);
    let push = |samples: &mut Vec<Sample>, phase, q, v: f64| {
        if !v.is_nan() {
            samples.push(Sample::new(phase, q, v));
        }
    };
    for (i, &phase) in PHASES.iter().enumerate() {
        let at = |base: u16| base + 2 * i as u16;
        let hz = float_lw(image, at(104))?;
        push(&mut samples, phase, Quantity::Voltage, float_lw(image, at(80))?);
        // The legacy firmware read two PZEMs and wrote 0 for L3: frequency 0 is no answer.
        if hz == 0.0 || hz.is_nan() {
            continue;
        }
        push(&mut samples, phase, Quantity::Current, float_lw(image, at(86))?);
        push(&mut samples, phase, Quantity::ActivePower, float_lw(image, at(92))? * multiplier);
        push(&mut samples, phase, Quantity::ActiveEnergy, float_lw(image, at(98))? * multiplier);
        push(&mut samples, phase, Quantity::Frequency, hz);
        push(&mut samples, phase, Quantity::PowerFactor, float_lw(image, at(110))?);
    }
    // Averages: one float per quantity, for L1 only (the other slots are written 0).
    if samples.iter().any(|s| s.phase == Phase::L1 && s.quantity == Quantity::Frequency) {
        for (base, q, m) in [
            (116, Quantity::VoltageAvg, 1.0),
            (122, Quantity::CurrentAvg, 1.0),
            (128, Quantity::ActivePowerAvg, multiplier),
            (134, Quantity::FrequencyAvg, 1.0),
            (140, Quantity::PowerFactorAvg, 1.0),
        ] {
            push(&mut samples, Phase::L1, q, float_lw(image, base)? * m);
        }
    }
    let sentinel = image
        .get(SENTINEL_LEGACY)
        .ok_or(DecodeError::Missing("the legacy PMTR_001_SRV sentinel register"))?;
    Ok(Telemetry { samples, sentinel, low_power: false })
}

/// What a poll of a server reads besides its samples: its reboot sentinel and whether it saves
/// power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerRead {
    /// The sentinel register as read: 0 after a reboot.
    pub sentinel: u16,
    pub low_power: bool,
}

impl Telemetry {
    /// What the master's duties need of this poll.
    pub fn server_read(&self) -> ServerRead {
        ServerRead { sentinel: self.sentinel, low_power: self.low_power }
    }
}

/// What the gateway has done for a PMTR_001_SRV besides polling it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServerStatus {
    /// "current" or "legacy" once known.
    pub firmware: Option<&'static str>,
    /// When its clock was last set.
    pub time_synced: Option<chrono::DateTime<chrono::Utc>>,
    pub time_syncs: u64,
    /// Relay-action slots taken by the server since its last reboot (of 5).
    pub slots_pushed: u8,
    pub slots_total: u64,
    /// Reboots seen (its reboot sentinel read back wiped).
    pub reboots: u64,
    pub low_power: bool,
    pub duty_failures: u64,
    pub last_duty_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(start: u16, regs: Vec<u16>) -> RegisterImage {
        RegisterImage::from_replies(&[Request::read_holding(1, start, regs.len() as u16)], &[regs])
    }

    /// HR78..115 of a server at 230.4 V, 1.23 A, 250 W, 12.3 kWh, 50 Hz, pf 0.88 on every phase.
    fn current_regs() -> Vec<u16> {
        let mut r = vec![0u16; 38];
        let mut set = |a: u16, v: u16| r[(a - 78) as usize] = v;
        set(78, 4987);
        set(79, 12_480);
        for i in 0..3 {
            set(80 + i, 2304);
            set(83 + i, 123);
            set(86 + i, 250);
            set(89 + i, 123);
            set(92 + i, 500);
            set(95 + i, 88);
            set(98 + i, 2300 + i);
            set(101 + i, 120);
            set(104 + i, 248);
            set(107 + i, 499);
            set(110 + 2 * i, 87 - i);
        }
        set(115, 0x5A17);
        r
    }

    fn value(t: &Telemetry, phase: Phase, q: Quantity) -> Option<f64> {
        t.samples.iter().find(|s| s.phase == phase && s.quantity == q).map(|s| s.value)
    }

    #[test]
    fn current_firmware_decodes_to_si_units() {
        let t = decode(&image(78, current_regs()), Plan::Block, 1.0).unwrap();
        assert_eq!(value(&t, Phase::L2, Quantity::Voltage), Some(230.4));
        assert_eq!(value(&t, Phase::L2, Quantity::Current), Some(1.23));
        assert_eq!(value(&t, Phase::L2, Quantity::ActivePower), Some(250.0));
        assert_eq!(value(&t, Phase::L2, Quantity::ActiveEnergy), Some(12.3));
        assert_eq!(value(&t, Phase::L2, Quantity::Frequency), Some(50.0));
        assert_eq!(value(&t, Phase::L2, Quantity::PowerFactor), Some(0.88));
        assert_eq!(value(&t, Phase::L3, Quantity::VoltageAvg), Some(230.2));
        assert_eq!(value(&t, Phase::L1, Quantity::FrequencyAvg), Some(49.9));
        assert_eq!(value(&t, Phase::Total, Quantity::Supply5V), Some(4.987));
        assert_eq!(value(&t, Phase::Total, Quantity::Supply12V), Some(12.48));
        assert_eq!(value(&t, Phase::Total, Quantity::LowPower), Some(0.0));
        assert_eq!(t.sentinel, 0x5A17);
        assert!(!t.low_power);
    }

    #[test]
    fn averaged_power_factors_are_read_where_the_firmware_writes_them() {
        // L2's average is at 112 and L3's at 114, not at 111 and 112.
        let t = decode(&image(78, current_regs()), Plan::Block, 1.0).unwrap();
        assert_eq!(value(&t, Phase::L1, Quantity::PowerFactorAvg), Some(0.87));
        assert_eq!(value(&t, Phase::L2, Quantity::PowerFactorAvg), Some(0.86));
        assert_eq!(value(&t, Phase::L3, Quantity::PowerFactorAvg), Some(0.85));
    }

    #[test]
    fn the_multiplier_scales_power_and_energy_only() {
        let t = decode(&image(78, current_regs()), Plan::Block, 3f64.sqrt()).unwrap();
        let p = value(&t, Phase::L1, Quantity::ActivePower).unwrap();
        assert!((p - 250.0 * 3f64.sqrt()).abs() < 1e-9);
        let e = value(&t, Phase::L1, Quantity::ActiveEnergy).unwrap();
        assert!((e - 12.3 * 3f64.sqrt()).abs() < 1e-9);
        assert!((value(&t, Phase::L1, Quantity::ActivePowerAvg).unwrap() - 248.0 * 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(value(&t, Phase::L1, Quantity::Current), Some(1.23));
    }

    #[test]
    fn a_silent_pzem_leaves_a_gap_not_zeros() {
        let mut regs = current_regs();
        for a in [80u16, 83, 86, 89, 92, 95] {
            regs[(a + 2 - 78) as usize] = 0; // L3's PZEM did not answer
        }
        let t = decode(&image(78, regs), Plan::Block, 1.0).unwrap();
        assert_eq!(value(&t, Phase::L3, Quantity::Voltage), Some(0.0));
        for q in [Quantity::Current, Quantity::ActiveEnergy, Quantity::Frequency, Quantity::VoltageAvg] {
            assert_eq!(value(&t, Phase::L3, q), None, "{q:?}");
        }
        assert!(value(&t, Phase::L2, Quantity::ActiveEnergy).is_some());
    }

    #[test]
    fn low_power_mode_keeps_only_fresh_values() {
        let mut regs = current_regs();
        regs[1] = 10_700;
        let t = decode(&image(78, regs), Plan::Block, 1.0).unwrap();
        assert!(t.low_power);
        assert_eq!(value(&t, Phase::Total, Quantity::LowPower), Some(1.0));
        assert_eq!(value(&t, Phase::L1, Quantity::Voltage), Some(230.4));
        assert_eq!(value(&t, Phase::L1, Quantity::Current), None);
        assert_eq!(value(&t, Phase::L1, Quantity::VoltageAvg), None);
        assert_eq!(value(&t, Phase::Total, Quantity::Supply12V), Some(10.7));
    }

    #[test]
    fn the_two_reads_decode_like_the_block() {
        let regs = current_regs();
        let reqs = requests(7, Plan::Chunks);
        let replies: Vec<Vec<u16>> = reqs
            .iter()
            .map(|r| match r.pdu {
                crate::modbus::Pdu::ReadHolding { start, count } => {
                    regs[(start - 78) as usize..(start - 78 + count) as usize].to_vec()
                }
                _ => unreachable!(),
            })
            .collect();
        let chunks = decode(&RegisterImage::from_replies(&reqs, &replies), Plan::Chunks, 1.0).unwrap();
        assert_eq!(chunks, decode(&image(78, regs), Plan::Block, 1.0).unwrap());
        // Every reply fits a 64-byte receive buffer.
        assert!(reqs.iter().all(|r| r.pdu.reply_len() <= 64));
    }

    #[test]
    fn legacy_replies_fit_the_receive_buffer_too() {
        assert!(requests(1, Plan::Legacy).iter().all(|r| r.pdu.reply_len() <= 64));
        assert!(requests(1, Plan::Block)[0].pdu.reply_len() > 64);
    }

    fn float_regs(v: f32) -> [u16; 2] {
        let b = v.to_bits();
        [b as u16, (b >> 16) as u16]
    }

    #[test]
    fn legacy_floats_are_low_word_first() {
        let mut regs = [0u16; 71]; // HR80..150
        let mut put = |a: u16, v: f32| {
            let [lo, hi] = float_regs(v);
            regs[(a - 80) as usize] = lo;
            regs[(a - 80 + 1) as usize] = hi;
        };
        for i in 0..2u16 {
            put(80 + 2 * i, 229.5);
            put(86 + 2 * i, 2.5);
            put(92 + 2 * i, 500.0);
            put(98 + 2 * i, 7.25);
            put(104 + 2 * i, 50.0);
            put(110 + 2 * i, 0.9);
        }
        put(116, 229.0);
        put(134, 49.9);
        regs[(150 - 80) as usize] = 0x1234;
        let reqs = requests(1, Plan::Legacy);
        let replies: Vec<Vec<u16>> = reqs
            .iter()
            .map(|r| match r.pdu {
                crate::modbus::Pdu::ReadHolding { start, count } => {
                    regs[(start - 80) as usize..(start - 80 + count) as usize].to_vec()
                }
                _ => unreachable!(),
            })
            .collect();
        let t = decode(&RegisterImage::from_replies(&reqs, &replies), Plan::Legacy, 1.0).unwrap();
        assert_eq!(value(&t, Phase::L1, Quantity::Voltage), Some(229.5));
        assert_eq!(value(&t, Phase::L2, Quantity::ActiveEnergy), Some(7.25));
        assert!((value(&t, Phase::L2, Quantity::PowerFactor).unwrap() - 0.9).abs() < 1e-6);
        assert_eq!(value(&t, Phase::L1, Quantity::VoltageAvg), Some(229.0));
        // L3 was never read by that firmware: its voltage 0 stays, the rest is a gap.
        assert_eq!(value(&t, Phase::L3, Quantity::Voltage), Some(0.0));
        assert_eq!(value(&t, Phase::L3, Quantity::Current), None);
        assert_eq!(t.sentinel, 0x1234);
    }
}
