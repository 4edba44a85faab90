//! A simulated meter as a Modbus RTU slave: frames in, frames out. Pure: no I/O and no clock;
//! the caller passes the time `t_s` (seconds since the simulation started) with every frame.
//!
//! The slave answers what a PZEM-004T/014/016 or an RX380 answers (meters.md §1 and §2), or
//! any meter definition's registers ([`defined`]); its values follow a [`Profile`] over time,
//! its energy counters integrate its power, and a [`Fault`] can spoil some or all of its
//! replies.

pub mod defined;
mod profile;
mod spec;

pub use profile::{Fault, GridTrace, Hostile, Profile};
pub use spec::{SimMeterSpec, SpecError};

use crate::meter::definition::Definition;
use crate::meter::{pzem, rx380, Model};
use crate::modbus::crc::{append_crc, check_crc};
use crate::modbus::frame::fc;
use profile::splitmix64;
use std::time::Duration;

/// What the slave puts on the line after a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Reply(Vec<u8>),
    /// A reply to be started this much later than the normal turnaround.
    ReplyLate(Vec<u8>, Duration),
    Silent,
}

/// What one slave has seen and done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlaveCounters {
    /// CRC-valid frames for this slave (its address, broadcast, and 0xF8 for PZEMs).
    pub requests: u64,
    /// Replies produced (faulty ones included).
    pub replies: u64,
    /// Requests a fault was applied to.
    pub faults: u64,
}

/// Expected length of a request frame from its first bytes: FC 03/04/06 → 8, FC 0x42 → 4.
/// `None` when the function is not known yet or not known at all: the frame then ends with
/// 3.5 characters of silence.
pub fn request_len(buf: &[u8]) -> Option<usize> {
    match *buf.get(1)? {
        fc::READ_HOLDING | fc::READ_INPUT | fc::WRITE_SINGLE => Some(8),
        fc::PZEM_RESET_ENERGY => Some(4),
        _ => None,
    }
}

/// PZEM measurement registers 0..=9.
const PZEM_INPUT_LEN: u16 = 10;
/// Largest register count one Modbus read may ask for.
const MAX_READ: u16 = 125;

/// A simulated meter.
#[derive(Debug, Clone)]
pub struct SimSlave {
    model: Model,
    /// The definition a defined model answers by.
    def: Option<&'static Definition>,
    address: u8,
    profile: Profile,
    fault: Fault,
    fault_every: Option<u32>,
    /// PZEM base values: volts, amps, power factor, hertz.
    pzem: (f64, f64, f64, f64),
    /// RX380 base values (its energy fields are the starting counters).
    rx: rx380::Snapshot,
    threshold: u16,
    max_block: Option<u16>,
    kwh: f64,
    kvah: f64,
    kvarh: f64,
    /// The part of `kwh` taken while power was positive (the rest was exported).
    import_kwh: f64,
    /// Time up to which energy has been integrated.
    last_t: f64,
    /// Requests to this slave that expect a reply (drives `fault_every`).
    addressed: u64,
    counters: SlaveCounters,
    rng: u64,
}

/// A balanced three-phase snapshot: `volts` phase-to-neutral and `amps` on each phase.
pub fn balanced_rx380(volts: f64, amps: f64, pf: f64, hz: f64) -> rx380::Snapshot {
    let va = 3.0 * volts * amps;
    rx380::Snapshot {
        kwh: 0.0,
        kvah: 0.0,
        kvarh: 0.0,
        watts: va * pf,
        va,
        var: va * (1.0 - pf * pf).max(0.0).sqrt(),
        pf,
        hz,
        amps: [amps, amps, amps, amps * 0.05],
        line_volts: [volts * 3f64.sqrt(); 3],
        phase_volts: [volts; 3],
    }
}

/// Default values: 230 V, 50 Hz; a PZEM draws 1 A at PF 1, an RX380 10 A per phase at PF 0.95.
const DEFAULT_PZEM: (f64, f64, f64, f64) = (230.0, 1.0, 1.0, 50.0);
/// A defined meter's default values, per phase: as an RX380's.
const DEFAULT_DEFINED: (f64, f64, f64, f64) = (230.0, 10.0, 0.95, 50.0);

impl SimSlave {
    /// A steady meter at `address` with default values (230 V, 50 Hz, PZEM 1 A at PF 1.00,
    /// RX380 and defined meters 10 A per phase at PF 0.95), energy 0, no fault, alarm
    /// threshold 23000 W (2300 W for the 10 A PZEM-014).
    pub fn new(model: Model, address: u8) -> Self {
        let def = crate::meter::definition::of(model);
        SimSlave {
            model,
            def,
            address,
            profile: Profile::Steady,
            fault: Fault::None,
            fault_every: None,
            pzem: if def.is_some() { DEFAULT_DEFINED } else { DEFAULT_PZEM },
            rx: balanced_rx380(230.0, 10.0, 0.95, 50.0),
            threshold: if model == Model::Pzem014 { 2300 } else { 23000 },
            max_block: None,
            kwh: 0.0,
            kvah: 0.0,
            kvarh: 0.0,
            import_kwh: 0.0,
            last_t: 0.0,
            addressed: 0,
            counters: SlaveCounters::default(),
            rng: splitmix64(u64::from(address) ^ 0x5EED),
        }
    }

    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self
    }

    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    /// Applies the fault only to every `n`th request that expects a reply (`None`: to all).
    pub fn fault_every(mut self, n: Option<u32>) -> Self {
        self.fault_every = n;
        self
    }

    /// Base values of a single phase. On an RX380: a balanced load of `amps` per phase at
    /// `volts` phase-to-neutral.
    pub fn base_pzem(mut self, volts: f64, amps: f64, pf: f64, hz: f64) -> Self {
        self.pzem = (volts, amps, pf, hz);
        self.rx = rx380::Snapshot {
            kwh: self.kwh,
            kvah: self.kvah,
            kvarh: self.kvarh,
            ..balanced_rx380(volts, amps, pf, hz)
        };
        self
    }

    /// Base values of an RX380, energy counters included. On a PZEM: L1's values.
    pub fn base_rx380(mut self, s: rx380::Snapshot) -> Self {
        self.rx = s;
        self.pzem = (s.phase_volts[0], s.amps[0], s.pf.abs(), s.hz);
        self.kwh = s.kwh;
        self.import_kwh = s.kwh;
        self.kvah = s.kvah;
        self.kvarh = s.kvarh;
        self
    }

    /// The starting active-energy counter, in kWh.
    pub fn energy(mut self, kwh: f64) -> Self {
        self.kwh = kwh.max(0.0);
        self.import_kwh = self.kwh;
        self.rx.kwh = self.kwh;
        self
    }

    /// The PZEM over-power alarm threshold (W).
    pub fn threshold(mut self, watts: u16) -> Self {
        self.threshold = watts;
        self
    }

    /// RX380: the longest read it accepts; longer ones get exception 03. A defined meter
    /// refuses them with exception 02.
    pub fn max_block(mut self, n: Option<u16>) -> Self {
        self.max_block = n;
        self
    }

    pub fn set_fault(&mut self, fault: Fault) {
        self.fault = fault;
    }

    pub fn set_fault_every(&mut self, n: Option<u32>) {
        self.fault_every = n;
    }

    pub fn set_profile(&mut self, profile: Profile) {
        self.profile = profile;
    }

    pub fn model(&self) -> Model {
        self.model
    }

    /// The current address (it changes when a PZEM is told a new one).
    pub fn address(&self) -> u8 {
        self.address
    }

    pub fn current_fault(&self) -> (Fault, Option<u32>) {
        (self.fault, self.fault_every)
    }

    pub fn counters(&self) -> SlaveCounters {
        self.counters
    }

    /// The active-energy counter (kWh) as last integrated.
    pub fn kwh(&self) -> f64 {
        self.kwh
    }

    /// Resets the energy counters to zero, as the PZEM's reset command does.
    pub fn reset_energy(&mut self) {
        self.kwh = 0.0;
        self.import_kwh = 0.0;
        self.kvah = 0.0;
        self.kvarh = 0.0;
    }

    /// Integrates energy up to `t_s` (time never runs backwards: an earlier `t_s` is ignored).
    /// Power is taken in steps of at most one second (at most 10 000 steps), at each step's
    /// middle; energy counts the magnitude of power (an exporting RX380 still counts up).
    pub fn advance(&mut self, t_s: f64) {
        if !t_s.is_finite() || t_s <= self.last_t {
            return;
        }
        let dt = t_s - self.last_t;
        let steps = dt.ceil().clamp(1.0, 10_000.0) as u64;
        let h = dt / steps as f64;
        for k in 0..steps {
            let t = self.last_t + (k as f64 + 0.5) * h;
            let (w, va, var) = self.powers(t);
            self.kwh += w.abs() * h / 3.6e6;
            self.import_kwh += w.max(0.0) * h / 3.6e6;
            self.kvah += va.abs() * h / 3.6e6;
            self.kvarh += var.abs() * h / 3.6e6;
        }
        self.last_t = t_s;
    }

    /// PZEM values at `t`: volts, amps, watts, pf, hz.
    fn pzem_values(&self, t: f64) -> (f64, f64, f64, f64, f64) {
        let (v0, a0, pf, hz) = self.pzem;
        let m = self.profile.mods(t);
        let v = m.volts.unwrap_or(v0 * m.kv).max(0.0);
        let a = (a0 * m.ki).max(0.0);
        (v, a, v * a * pf, pf, hz)
    }

    /// RX380 values at `t` (energy fields: the counters).
    fn rx_values(&self, t: f64) -> rx380::Snapshot {
        let m = self.profile.mods(t);
        let mut s = self.rx;
        if let Profile::Grid { trace, .. } = &self.profile {
            if let Some(g) = trace.at(t) {
                s.phase_volts = g.phase;
                s.line_volts = g.line;
            }
            s.kwh = self.kwh;
            s.kvah = self.kvah;
            s.kvarh = self.kvarh;
            return s;
        }
        let mean = s.phase_volts.iter().sum::<f64>() / 3.0;
        let kv = match m.volts {
            Some(v) if mean > 0.0 => v / mean,
            Some(v) => {
                s.phase_volts = [v; 3];
                s.line_volts = [v * 3f64.sqrt(); 3];
                1.0
            }
            None => m.kv,
        }
        .max(0.0);
        s.phase_volts.iter_mut().chain(s.line_volts.iter_mut()).for_each(|x| *x *= kv);
        s.amps.iter_mut().for_each(|x| *x *= m.ki);
        for p in [&mut s.watts, &mut s.va, &mut s.var] {
            *p *= kv * m.ki;
        }
        s.kwh = self.kwh;
        s.kvah = self.kvah;
        s.kvarh = self.kvarh;
        s
    }

    /// Active, apparent and reactive power at `t`.
    fn powers(&self, t: f64) -> (f64, f64, f64) {
        if let Some(def) = self.def {
            self.defined_powers(def, t)
        } else if self.model.is_pzem() {
            let (v, a, w, _, _) = self.pzem_values(t);
            let va = v * a;
            (w, va, (va * va - w * w).max(0.0).sqrt())
        } else {
            let s = self.rx_values(t);
            (s.watts, s.va, s.var)
        }
    }

    /// The measurement registers at `t_s` (PZEM: 0..=9; RX380: 4000..=4039; a defined meter:
    /// the words of its table's registers in table order), energy integrated up to `t_s` first.
    pub fn registers(&mut self, t_s: f64) -> Vec<u16> {
        self.advance(t_s);
        let t = t_s.max(self.last_t);
        if let Some(def) = self.def {
            self.defined_registers(def, t)
        } else if self.model.is_pzem() {
            let (v, a, w, pf, hz) = self.pzem_values(t);
            pzem::encode(v, a, w, self.kwh, hz, pf, w > f64::from(self.threshold)).to_vec()
        } else {
            rx380::encode(&self.rx_values(t)).to_vec()
        }
    }

    /// Answers one frame received at `t_s`.
    pub fn handle(&mut self, frame: &[u8], t_s: f64) -> Response {
        if frame.len() < 4 || !check_crc(frame) {
            return Response::Silent;
        }
        let addr = frame[0];
        let broadcast = addr == 0;
        let general = self.model.is_pzem() && addr == pzem::GENERAL_ADDRESS;
        if !(broadcast || general || addr == self.address) {
            return Response::Silent;
        }
        self.counters.requests += 1;
        self.advance(t_s);
        let mut fault = Fault::None;
        if !broadcast {
            self.addressed += 1;
            let due = self.fault_every.is_none_or(|n| self.addressed % u64::from(n.max(1)) == 0);
            if due && self.fault != Fault::None {
                fault = self.fault;
                self.counters.faults += 1;
            }
        }
        let function = frame[1];
        let body = &frame[..frame.len() - 2];
        let (reply, new_address) = match fault {
            Fault::NoReply => return Response::Silent,
            Fault::Exception(code) => (Some(exception(addr, function, code)), None),
            _ if self.def.is_some() => (self.def.and_then(|d| self.defined_request(d, body, t_s)), None),
            _ if self.model.is_pzem() => self.pzem_request(body, t_s),
            _ => (self.rx380_request(body, t_s), None),
        };
        if let Some(a) = new_address {
            self.address = a;
        }
        let Some(mut reply) = reply else {
            return Response::Silent;
        };
        if broadcast {
            return Response::Silent;
        }
        self.counters.replies += 1;
        match fault {
            Fault::BadCrc => {
                let n = reply.len();
                reply[n - 1] ^= 0x5A;
                Response::Reply(reply)
            }
            Fault::Garbage => {
                for b in reply.iter_mut() {
                    self.rng = splitmix64(self.rng);
                    *b = self.rng as u8;
                }
                Response::Reply(reply)
            }
            Fault::Late(d) => Response::ReplyLate(reply, d),
            Fault::Hostile(kind, len) => Response::Reply(kind.burst(addr, function, len.into())),
            _ => Response::Reply(reply),
        }
    }

    /// A PZEM request (CRC stripped): the reply, and a new address to take after it.
    fn pzem_request(&mut self, body: &[u8], t: f64) -> (Option<Vec<u8>>, Option<u8>) {
        let (addr, function) = (body[0], body[1]);
        match function {
            fc::READ_INPUT => {
                let Some((start, count)) = two_words(body) else { return (None, None) };
                if let Err(code) = check_read(start, count, 0, PZEM_INPUT_LEN - 1) {
                    return (Some(exception(addr, function, code)), None);
                }
                let regs = self.registers(t);
                (Some(read_reply(addr, function, &regs[start as usize..][..count as usize])), None)
            }
            fc::READ_HOLDING => {
                let Some((start, count)) = two_words(body) else { return (None, None) };
                if let Err(code) = check_read(start, count, 1, 2) {
                    return (Some(exception(addr, function, code)), None);
                }
                let regs = [self.threshold, u16::from(self.address)];
                (Some(read_reply(addr, function, &regs[start as usize - 1..][..count as usize])), None)
            }
            fc::WRITE_SINGLE => {
                let Some((register, value)) = two_words(body) else { return (None, None) };
                let echo = frame(body);
                match register {
                    pzem::REG_ALARM_THRESHOLD => {
                        self.threshold = value;
                        (Some(echo), None)
                    }
                    pzem::REG_ADDRESS => match value {
                        1..=247 => (Some(echo), Some(value as u8)),
                        _ => (Some(exception(addr, function, 3)), None),
                    },
                    _ => (Some(exception(addr, function, 2)), None),
                }
            }
            fc::PZEM_RESET_ENERGY => {
                if body.len() != 2 {
                    return (None, None);
                }
                self.reset_energy();
                (Some(frame(body)), None)
            }
            _ => (Some(exception(addr, function, 1)), None),
        }
    }

    /// An RX380 request (CRC stripped): the reply.
    fn rx380_request(&mut self, body: &[u8], t: f64) -> Option<Vec<u8>> {
        let (addr, function) = (body[0], body[1]);
        match function {
            fc::READ_INPUT | fc::READ_HOLDING => {
                let (start, count) = two_words(body)?;
                let last = rx380::BLOCK_START + rx380::BLOCK_LEN - 1;
                if let Err(code) = check_read(start, count, rx380::BLOCK_START, last) {
                    return Some(exception(addr, function, code));
                }
                if self.max_block.is_some_and(|m| count > m) {
                    return Some(exception(addr, function, 3));
                }
                let regs = self.registers(t);
                let from = (start - rx380::BLOCK_START) as usize;
                Some(read_reply(addr, function, &regs[from..][..count as usize]))
            }
            _ => Some(exception(addr, function, 1)),
        }
    }
}

/// The two 16-bit fields of an 8-byte request (body without CRC = 6 bytes).
fn two_words(body: &[u8]) -> Option<(u16, u16)> {
    if body.len() != 6 {
        return None;
    }
    Some((u16::from_be_bytes([body[2], body[3]]), u16::from_be_bytes([body[4], body[5]])))
}

/// Exception 03 for a bad count, 02 for registers outside `first..=last`.
fn check_read(start: u16, count: u16, first: u16, last: u16) -> Result<(), u8> {
    if count == 0 || count > MAX_READ {
        return Err(3);
    }
    let end = u32::from(start) + u32::from(count) - 1;
    if start < first || end > u32::from(last) {
        return Err(2);
    }
    Ok(())
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = body.to_vec();
    append_crc(&mut f);
    f
}

fn exception(addr: u8, function: u8, code: u8) -> Vec<u8> {
    frame(&[addr, function | 0x80, code])
}

fn read_reply(addr: u8, function: u8, regs: &[u16]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + 2 * regs.len());
    f.extend_from_slice(&[addr, function, (2 * regs.len()) as u8]);
    regs.iter().for_each(|r| f.extend_from_slice(&r.to_be_bytes()));
    append_crc(&mut f);
    f
}

/// The bytes of a reply, for tests.
#[cfg(test)]
fn tests_reply(r: Response) -> Vec<u8> {
    match r {
        Response::Reply(b) => b,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::frame::{scan_reply, Pdu, Reply, Request, Scan};

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
    }

    fn reply(r: Response) -> Vec<u8> {
        match r {
            Response::Reply(b) => b,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn regs_of(req: &Request, r: Response) -> Vec<u16> {
        match scan_reply(req, &reply(r)) {
            Scan::Done { result: Ok(Reply::Registers(r)), skipped: 0 } => r,
            other => panic!("{other:?}"),
        }
    }

    fn manual_pzem() -> SimSlave {
        SimSlave::new(Model::Pzem016, 1).base_pzem(220.0, 1.0, 1.0, 50.0)
    }

    #[test]
    fn manual_example_frame() {
        let mut s = manual_pzem();
        let r = s.handle(&hex("01 04 00 00 00 0A 70 0D"), 0.0);
        assert_eq!(
            reply(r),
            hex("01 04 14 08 98 03 E8 00 00 08 98 00 00 00 00 00 00 01 F4 00 64 00 00 63 CE")
        );
        assert_eq!(s.counters(), SlaveCounters { requests: 1, replies: 1, faults: 0 });
    }

    #[test]
    fn esphome_and_high_word_frames() {
        let mut s = SimSlave::new(Model::Pzem004t, 1).base_pzem(225.7, 0.108, 1.0, 50.0).energy(0.038);
        assert_eq!(
            reply(s.handle(&hex("01 04 00 00 00 0A 70 0D"), 0.0)),
            hex("01 04 14 08 D1 00 6C 00 00 00 F4 00 00 00 26 00 00 01 F4 00 64 00 00 51 34")
        );
        // 232 V · 70 A · 0.90 = 14616 W, above a 10 kW threshold: alarm.
        let mut s = SimSlave::new(Model::Pzem016, 1)
            .base_pzem(232.0, 70.0, 0.9, 50.0)
            .energy(123.456)
            .threshold(10_000);
        assert_eq!(
            reply(s.handle(&hex("01 04 00 00 00 0A 70 0D"), 0.0)),
            hex("01 04 14 09 10 11 70 00 01 3A F0 00 02 E2 40 00 01 01 F4 00 5A FF FF 58 73")
        );
    }

    #[test]
    fn sub_range_reads_and_general_address() {
        let mut s = manual_pzem();
        let req = Request::read_input(1, 1, 2);
        assert_eq!(regs_of(&req, s.handle(&req.encode(), 0.0)), vec![1000, 0]);
        // 0xF8 reaches any PZEM; the reply carries 0xF8.
        let r = reply(s.handle(&hex("F8 04 00 00 00 0A 64 64"), 0.0));
        assert_eq!(r[0], 0xF8);
        assert_eq!(&r[3..5], &[0x08, 0x98]);
        // Holding registers: threshold and address.
        let req = Request::read_holding(0xF8, 1, 2);
        assert_eq!(regs_of(&req, s.handle(&req.encode(), 0.0)), vec![23000, 1]);
        let req = Request::read_holding(4, 2, 1);
        let mut s4 = SimSlave::new(Model::Pzem016, 4);
        assert_eq!(reply(s4.handle(&req.encode(), 0.0)), hex("04 03 02 00 04 75 87"));
    }

    #[test]
    fn set_address_takes_effect_after_the_echo() {
        let mut s = manual_pzem();
        let set = hex("01 06 00 02 00 04 29 C9");
        assert_eq!(reply(s.handle(&set, 0.0)), set);
        assert_eq!(s.address(), 4);
        assert_eq!(s.handle(&hex("01 04 00 00 00 0A 70 0D"), 0.0), Response::Silent);
        let req = pzem::read_request(4);
        assert_eq!(regs_of(&req, s.handle(&req.encode(), 0.0))[0], 2200);
        // Through the general address: the echo comes from 0xF8.
        let set = hex("F8 06 00 02 00 01 FD A3");
        assert_eq!(reply(s.handle(&set, 0.0)), set);
        assert_eq!(s.address(), 1);
        // Invalid addresses are refused with exception 03 and change nothing.
        for bad in [0u16, 248, 0xFFFF] {
            let req = Request::write_single(1, pzem::REG_ADDRESS, bad);
            assert_eq!(scan_exception(&req, s.handle(&req.encode(), 0.0)), 3);
            assert_eq!(s.address(), 1);
        }
        // The threshold is writable and readable.
        let set = hex("01 06 00 01 08 FC DF 8B");
        assert_eq!(reply(s.handle(&set, 0.0)), set);
        let req = Request::read_holding(1, 1, 1);
        assert_eq!(regs_of(&req, s.handle(&req.encode(), 0.0)), vec![2300]);
    }

    #[test]
    fn broadcast_acts_silently() {
        let mut s = manual_pzem();
        let req = Request::write_single(0, pzem::REG_ADDRESS, 9);
        assert_eq!(s.handle(&req.encode(), 0.0), Response::Silent);
        assert_eq!(s.address(), 9);
        assert_eq!(s.handle(&pzem::read_request(0).encode(), 0.0), Response::Silent);
        assert_eq!(s.counters(), SlaveCounters { requests: 2, replies: 0, faults: 0 });
    }

    fn scan_exception(req: &Request, r: Response) -> u8 {
        match scan_reply(req, &reply(r)) {
            Scan::Done { result: Err(crate::modbus::FrameError::Exception(e)), skipped: 0 } => e.code(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_bursts_hold_no_good_frame_and_parse_from_their_spec() {
        let req = Request::read_input(1, 0, 10);
        for h in Hostile::ALL {
            let burst = h.burst(1, 4, 600);
            assert_eq!(burst.len(), 600);
            let mut s = crate::modbus::frame::ReplyScanner::new(&req);
            assert!(!matches!(s.feed(&burst), Scan::Done { result: Ok(_), .. }), "{}", h.name());
            let spec = format!("hostile:{}:600", h.name());
            assert_eq!(spec.parse::<Fault>(), Ok(Fault::Hostile(h, 600)));
            assert_eq!(Fault::Hostile(h, 600).to_string(), spec);
        }
        assert_eq!("hostile:headers".parse::<Fault>(), Ok(Fault::Hostile(Hostile::Headers, 260)));
        assert!("hostile:other".parse::<Fault>().is_err());
        assert!("hostile:headers:5000".parse::<Fault>().is_err());
    }

    #[test]
    fn energy_accumulates_and_resets() {
        let mut s = SimSlave::new(Model::Pzem016, 1).base_pzem(200.0, 5.0, 1.0, 50.0);
        // 1000 W for one hour.
        let regs = s.registers(3600.0);
        assert_eq!(crate::meter::u32_lw(regs[5], regs[6]), 1000);
        assert!((s.kwh() - 1.0).abs() < 1e-9);
        // Time never runs backwards.
        s.advance(10.0);
        assert!((s.kwh() - 1.0).abs() < 1e-9);
        let reset = hex("01 42 80 11");
        assert_eq!(reply(s.handle(&reset, 3600.0)), reset);
        assert_eq!(s.kwh(), 0.0);
        let regs = s.registers(3600.0 + 36.0);
        assert_eq!(crate::meter::u32_lw(regs[5], regs[6]), 10);
    }

    #[test]
    fn exceptions() {
        let mut s = manual_pzem();
        assert_eq!(reply(s.handle(&Request::read_input(1, 10, 1).encode(), 0.0)), exception(1, 4, 2));
        let req = Request::read_input(1, 5, 6);
        assert_eq!(scan_exception(&req, s.handle(&req.encode(), 0.0)), 2);
        let req = Request::read_input(1, 0, 0);
        assert_eq!(scan_exception(&req, s.handle(&req.encode(), 0.0)), 3);
        let req = Request::read_holding(1, 0, 1);
        assert_eq!(scan_exception(&req, s.handle(&req.encode(), 0.0)), 2);
        let req = Request::write_single(1, 7, 1);
        assert_eq!(scan_exception(&req, s.handle(&req.encode(), 0.0)), 2);
        // Unknown function: exception 01.
        let mut f = vec![1, 0x10, 0, 0, 0, 1, 2, 0, 0];
        append_crc(&mut f);
        assert_eq!(reply(s.handle(&f, 0.0)), exception(1, 0x10, 1));
        // Reference frame: illegal address to FC04.
        assert_eq!(exception(1, 4, 2), hex("01 84 02 C2 C1"));
    }

    #[test]
    fn ignores_bad_crc_foreign_addresses_and_junk() {
        let mut s = manual_pzem();
        let mut bad = hex("01 04 00 00 00 0A 70 0D");
        bad[7] ^= 1;
        assert_eq!(s.handle(&bad, 0.0), Response::Silent);
        assert_eq!(s.handle(&hex("02 04 00 00 00 0A 70 3E"), 0.0), Response::Silent);
        assert_eq!(s.handle(&[], 0.0), Response::Silent);
        assert_eq!(s.handle(&[0x01], 0.0), Response::Silent);
        // An RX380 does not answer 0xF8.
        let mut rx = SimSlave::new(Model::Rx380, 1);
        assert_eq!(rx.handle(&hex("F8 04 00 00 00 0A 64 64"), 0.0), Response::Silent);
        assert_eq!(s.counters().requests, 0);
        // Every function with fields around every boundary, CRC-valid: never a panic.
        let edges = [0u16, 1, 2, 3, 8, 9, 10, 11, 124, 125, 126, 3999, 4000, 4001, 4038, 4039, 4040, 0xFFFF];
        for function in 0..=255u8 {
            for &a in &edges {
                for &b in &edges {
                    for addr in [0u8, 1, 0xF8] {
                        let mut f = vec![addr, function];
                        f.extend_from_slice(&a.to_be_bytes());
                        f.extend_from_slice(&b.to_be_bytes());
                        append_crc(&mut f);
                        let mut p = manual_pzem();
                        let _ = p.handle(&f, 1.0);
                        let _ = p.handle(&frame(&[addr, function]), 1.0);
                        let mut r = SimSlave::new(Model::Rx380, 1).max_block(Some(8));
                        let _ = r.handle(&f, 1.0);
                    }
                }
            }
        }
        // Any bytes at all: never a panic.
        let mut seed = 1u64;
        for len in 0..300 {
            let mut f: Vec<u8> = (0..len)
                .map(|_| {
                    seed = splitmix64(seed);
                    seed as u8
                })
                .collect();
            if len >= 2 {
                f[0] = 1;
                f.truncate(f.len() - 2);
                append_crc(&mut f);
            }
            let _ = s.handle(&f, len as f64);
            let _ = rx.handle(&f, len as f64);
        }
    }

    #[test]
    fn faults() {
        let req = pzem::read_request(1).encode();
        let good = reply(manual_pzem().handle(&req, 0.0));

        let mut s = manual_pzem().fault(Fault::NoReply);
        assert_eq!(s.handle(&req, 0.0), Response::Silent);
        assert_eq!(s.counters(), SlaveCounters { requests: 1, replies: 0, faults: 1 });

        let mut s = manual_pzem().fault(Fault::Late(Duration::from_millis(300)));
        assert_eq!(s.handle(&req, 0.0), Response::ReplyLate(good.clone(), Duration::from_millis(300)));

        let mut s = manual_pzem().fault(Fault::Exception(4));
        assert_eq!(reply(s.handle(&hex("01 42 80 11"), 0.0)), hex("01 C2 04 70 A3"));

        let mut s = manual_pzem().fault(Fault::Garbage);
        let g = reply(s.handle(&req, 0.0));
        assert_eq!(g.len(), good.len());
        assert_ne!(g, good);

        // Every third reply has a bad CRC.
        let mut s = manual_pzem().fault(Fault::BadCrc).fault_every(Some(3));
        for i in 1..=9 {
            let r = reply(s.handle(&req, 0.0));
            assert_eq!(check_crc(&r), i % 3 != 0, "reply {i}");
            assert_eq!(r[..r.len() - 2], good[..good.len() - 2]);
        }
        assert_eq!(s.counters(), SlaveCounters { requests: 9, replies: 9, faults: 3 });

        // A fault stops the address change from happening (no-reply) but not with a bad CRC.
        let set = Request::write_single(1, pzem::REG_ADDRESS, 5).encode();
        let mut s = manual_pzem().fault(Fault::NoReply);
        let _ = s.handle(&set, 0.0);
        assert_eq!(s.address(), 1);
        s.set_fault(Fault::BadCrc);
        let _ = s.handle(&set, 0.0);
        assert_eq!(s.address(), 5);
    }

    use crate::meter::rx380::test_snapshot as rx_snapshot;

    #[test]
    fn rx380_reads() {
        let mut s = SimSlave::new(Model::Rx380, 1).base_rx380(rx_snapshot());
        let image = rx380::encode(&rx_snapshot());
        let req = Request::read_input(1, 4000, 40);
        assert_eq!(regs_of(&req, s.handle(&req.encode(), 0.0)), image.to_vec());
        // Sub-ranges, FC03 and FC04 alike, and the reference frame for 4034.
        for (start, count) in [(4034u16, 2u16), (4018, 2), (4012, 28), (4039, 1), (4000, 12)] {
            for req in [Request::read_input(1, start, count), Request::read_holding(1, start, count)] {
                let want = &image[(start - 4000) as usize..][..count as usize];
                assert_eq!(regs_of(&req, s.handle(&req.encode(), 0.0)), want, "{req:?}");
            }
        }
        let mut rx = SimSlave::new(Model::Rx380, 1).base_pzem(233.0, 1.0, 1.0, 50.0);
        let r = rx.handle(&hex("01 04 0F C2 00 02 D3 23"), 0.0);
        assert_eq!(reply(r), hex("01 04 04 00 00 09 1A 7C 1F"));
        // Outside the block: exception 02; writes: exception 01.
        for (start, count) in [(3999u16, 2u16), (4038, 3), (4040, 1), (0, 10)] {
            let req = Request::read_input(1, start, count);
            assert_eq!(scan_exception(&req, s.handle(&req.encode(), 0.0)), 2);
        }
        let req = Request::write_single(1, 4000, 1);
        assert_eq!(scan_exception(&req, s.handle(&req.encode(), 0.0)), 1);
        let reset = Request { address: 1, pdu: Pdu::EchoCommand { function: fc::PZEM_RESET_ENERGY } };
        assert_eq!(scan_exception(&reset, s.handle(&reset.encode(), 0.0)), 1);
    }

    #[test]
    fn rx380_max_block_forces_group_reads() {
        let mut s = SimSlave::new(Model::Rx380, 1).max_block(Some(12));
        let reader = crate::meter::driver::Reader::new(Model::Rx380, 1);
        let plans = reader.plans();
        let block = &reader.requests(plans[0])[0];
        assert_eq!(scan_exception(block, s.handle(&block.encode(), 0.0)), 3);
        for req in reader.requests(plans[1]) {
            let n = regs_of(&req, s.handle(&req.encode(), 0.0)).len();
            assert!(n <= 12);
        }
    }

    #[test]
    fn rx380_energy_counts_up() {
        let mut s = SimSlave::new(Model::Rx380, 1).base_pzem(230.0, 10.0, 1.0, 50.0);
        // 6900 W for 1000 s = 1916.67 Wh.
        let regs = s.registers(1000.0);
        let wh = (0..4).fold(0u64, |v, i| (v << 16) | u64::from(regs[i]));
        assert_eq!(wh, 1917);
    }

    #[test]
    fn a_grid_trace_gives_the_rx380_its_voltages_and_each_pzem_its_phase() {
        use crate::sim::grid::Grid;
        let trace = std::sync::Arc::new(GridTrace::record(
            Grid::new(3, 230.0).with_house([700.0, 400.0, 100.0]),
            20,
            Some(10),
        ));
        let rx = SimSlave::new(Model::Rx380, 1).profile(Profile::Grid { trace: trace.clone(), phase: 0 });
        let at = |t: f64| rx.rx_values(t);
        assert_eq!(at(4.5).phase_volts, trace.samples[4].phase);
        assert_eq!(at(4.5).line_volts, trace.samples[4].line);
        assert_eq!(at(99.0).phase_volts, trace.samples[19].phase, "the last sample after the end");
        assert!(trace.samples[19].displacement > 20.0, "the neutral opened at 10 s");
        let pzem = SimSlave::new(Model::Pzem016, 5)
            .base_pzem(230.0, 2.0, 1.0, 50.0)
            .profile(Profile::Grid { trace: trace.clone(), phase: 2 });
        assert_eq!(pzem.pzem_values(12.0).0, trace.samples[12].phase[2]);
    }

    #[test]
    fn profiles() {
        let v_at = |p: Profile, t: f64| {
            let mut s = SimSlave::new(Model::Pzem016, 1).base_pzem(230.0, 2.0, 1.0, 50.0).profile(p);
            let r = s.registers(t);
            (f64::from(r[0]) / 10.0, f64::from(crate::meter::u32_lw(r[1], r[2])) / 1000.0)
        };
        assert_eq!(v_at(Profile::Steady, 100.0), (230.0, 2.0));
        assert_eq!(v_at(Profile::Ramp { per_s: 0.5 }, 20.0), (253.0, 2.2));
        assert_eq!(v_at(Profile::Ramp { per_s: -10.0 }, 20.0), (0.0, 0.0));
        assert_eq!(v_at(Profile::Step { at_s: 5.0, factor: 2.0 }, 4.9), (230.0, 2.0));
        assert_eq!(v_at(Profile::Step { at_s: 5.0, factor: 2.0 }, 5.0), (460.0, 4.0));
        let script = Profile::Script(vec![(0.0, 230.0), (10.0, 255.0), (20.0, 230.0)]);
        assert_eq!(v_at(script.clone(), 9.99), (230.0, 2.0));
        assert_eq!(v_at(script.clone(), 10.0), (255.0, 2.0));
        assert_eq!(v_at(script.clone(), 19.0), (255.0, 2.0));
        assert_eq!(v_at(script, 25.0), (230.0, 2.0));
        assert_eq!(v_at(Profile::Script(vec![(5.0, 100.0)]), 1.0), (230.0, 2.0));
        // Noise: within bounds, deterministic, varying over time, seed-dependent.
        let noise = |seed| Profile::Noise { amplitude: 2.0, seed };
        let mut seen = std::collections::BTreeSet::new();
        for k in 0..100 {
            let t = k as f64 * 0.37;
            let (v, a) = v_at(noise(7), t);
            assert!((225.4..=234.6).contains(&v), "{v}");
            assert!((1.96..=2.04).contains(&a), "{a}");
            assert_eq!(v_at(noise(7), t), (v, a));
            seen.insert((v * 10.0) as i64);
        }
        assert!(seen.len() > 20);
        assert_ne!(
            (0..10).map(|k| v_at(noise(1), k as f64).0).collect::<Vec<_>>(),
            (0..10).map(|k| v_at(noise(2), k as f64).0).collect::<Vec<_>>()
        );
        // The same 100 ms slot gives the same values.
        assert_eq!(v_at(noise(3), 1.01), v_at(noise(3), 1.09));
    }

    #[test]
    fn rx380_script_scales_every_voltage() {
        let mut s = SimSlave::new(Model::Rx380, 1)
            .base_pzem(230.0, 10.0, 1.0, 50.0)
            .profile(Profile::Script(vec![(10.0, 253.0)]));
        let u =
            |r: &[u16], a: usize| f64::from((u32::from(r[a - 4000]) << 16) | u32::from(r[a - 3999])) / 10.0;
        let r = s.registers(10.0);
        assert_eq!(u(&r, 4034), 253.0);
        assert_eq!(u(&r, 4038), 253.0);
        assert!((u(&r, 4028) - 253.0 * 3f64.sqrt()).abs() < 0.06);
    }

    #[test]
    fn request_lengths() {
        assert_eq!(request_len(&[]), None);
        assert_eq!(request_len(&[1]), None);
        assert_eq!(request_len(&[1, 4]), Some(8));
        assert_eq!(request_len(&[1, 3, 0]), Some(8));
        assert_eq!(request_len(&[1, 6]), Some(8));
        assert_eq!(request_len(&[1, 0x42]), Some(4));
        assert_eq!(request_len(&[1, 0x10]), None);
    }
}
