//! A simulated meter of any meter definition: the values of its table by quantity and phase,
//! encoded as the table says (type, word and byte order, scale and offset), and its probe
//! registers holding what the probe expects. Pure.

use super::{check_read, exception, read_reply, two_words, Profile, SimSlave};
use crate::meter::definition::{plan, Definition, Function, ProbeTest, Register};
use crate::modbus::frame::fc;
use crate::reading::{Phase, Quantity};

/// Total harmonic distortion a simulated meter reports, percent: voltage, current.
pub const THD: (f64, f64) = (2.5, 6.0);

/// Neutral current of a defined three-phase meter, as a fraction of a phase current.
const NEUTRAL_SHARE: f64 = 0.05;

/// The values of a defined meter at one instant: phase-to-neutral and line voltages, the
/// current of each phase, power factor and frequency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Instant3 {
    pub(super) volts: [f64; 3],
    pub(super) line: [f64; 3],
    pub(super) amps: f64,
    pub(super) pf: f64,
    pub(super) hz: f64,
}

impl Instant3 {
    /// Active, apparent and reactive power of phase `k` (reactive: an inductive load, >= 0).
    fn powers(&self, k: usize) -> (f64, f64, f64) {
        let va = self.volts[k] * self.amps;
        (va * self.pf, va, va * (1.0 - self.pf * self.pf).max(0.0).sqrt())
    }
}

/// The registers at 0..3 for L1..L3, None for anything else.
fn phase_index(p: Phase) -> Option<usize> {
    match p {
        Phase::L1 => Some(0),
        Phase::L2 => Some(1),
        Phase::L3 => Some(2),
        _ => None,
    }
}

impl SimSlave {
    /// How many phases the definition measures (1 or 3).
    fn phases(def: &Definition) -> usize {
        usize::from(def.phases.clamp(1, 3))
    }

    /// A defined meter's values at `t`: the base values moved by the profile, balanced over
    /// the phases (a grid trace gives each phase its own voltage).
    pub(super) fn defined_now(&self, t: f64) -> Instant3 {
        let (v, a, _, _, _) = self.pzem_values(t);
        let (_, _, pf, hz) = self.pzem;
        if let Profile::Grid { trace, .. } = &self.profile {
            if let Some(g) = trace.at(t) {
                return Instant3 { volts: g.phase, line: g.line, amps: a, pf, hz };
            }
        }
        Instant3 { volts: [v; 3], line: [v * 3f64.sqrt(); 3], amps: a, pf, hz }
    }

    /// Active, apparent and reactive power of the whole meter at `t`.
    pub(super) fn defined_powers(&self, def: &Definition, t: f64) -> (f64, f64, f64) {
        let now = self.defined_now(t);
        (0..Self::phases(def))
            .map(|k| now.powers(k))
            .fold((0.0, 0.0, 0.0), |(w, va, var), (a, b, c)| (w + a, va + b, var + c))
    }

    /// The value of `quantity` on `phase` (None: the meter's own, L1 here) at `t`, in its
    /// unit; counters as last integrated (a phase's share of a counter is the total over the
    /// phases).
    pub(super) fn defined_value(
        &self,
        def: &Definition,
        quantity: Quantity,
        phase: Option<Phase>,
        t: f64,
    ) -> f64 {
        let n = Self::phases(def);
        let now = self.defined_now(t);
        let phase = phase.unwrap_or(Phase::L1);
        let k = phase_index(phase);
        // A per-phase value, else the meter's whole (sum or mean over its phases).
        let each = |f: &dyn Fn(usize) -> f64, sum: bool| match k {
            Some(k) => f(k),
            None => {
                let total: f64 = (0..n).map(f).sum();
                if sum {
                    total
                } else {
                    total / n as f64
                }
            }
        };
        let share = |counter: f64| if k.is_some() { counter / n as f64 } else { counter };
        match quantity {
            Quantity::Voltage | Quantity::VoltageAvg => match phase {
                Phase::L12 => now.line[0],
                Phase::L23 => now.line[1],
                Phase::L31 => now.line[2],
                Phase::N => 0.0,
                _ => each(&|k| now.volts[k], false),
            },
            Quantity::Current | Quantity::CurrentAvg => match phase {
                Phase::N if n > 1 => now.amps * NEUTRAL_SHARE,
                Phase::N => now.amps,
                _ => each(&|_| now.amps, true),
            },
            Quantity::ActivePower | Quantity::ActivePowerAvg => each(&|k| now.powers(k).0, true),
            Quantity::ApparentPower => each(&|k| now.powers(k).1, true),
            Quantity::ReactivePower => each(&|k| now.powers(k).2, true),
            Quantity::PowerFactor | Quantity::PowerFactorAvg => now.pf,
            Quantity::Frequency | Quantity::FrequencyAvg => now.hz,
            Quantity::ActiveEnergy => share(self.kwh),
            Quantity::ApparentEnergy => share(self.kvah),
            Quantity::ReactiveEnergy => share(self.kvarh),
            Quantity::ImportActiveEnergy => share(self.import_kwh),
            Quantity::ExportActiveEnergy => share((self.kwh - self.import_kwh).max(0.0)),
            // The load is inductive: all its reactive energy is imported.
            Quantity::ImportReactiveEnergy => share(self.kvarh),
            Quantity::ExportReactiveEnergy => 0.0,
            Quantity::VoltageThd => THD.0,
            Quantity::CurrentThd => THD.1,
            Quantity::Supply5V => 5.0,
            Quantity::Supply12V => 12.0,
            Quantity::Alarm | Quantity::LowPower => 0.0,
        }
    }

    /// The words of register `r` at `t`: its value turned back into the raw number by its
    /// scale and offset, encoded by its type, word and byte order.
    pub(super) fn register_words(&self, def: &Definition, r: &Register, t: f64) -> Vec<u16> {
        let x = self.defined_value(def, r.quantity, r.phase, t) - r.offset;
        let raw = match r.divisor {
            Some(d) => x * d,
            None if r.scale != 0.0 => x / r.scale,
            None => 0.0,
        };
        plan::encode(raw, r.ty, r.word_order, r.byte_order)
    }

    /// The words of every register of the table at `t`, in table order.
    pub(super) fn defined_registers(&self, def: &Definition, t: f64) -> Vec<u16> {
        def.registers.iter().flat_map(|r| self.register_words(def, r, t)).collect()
    }

    /// A read of `count` registers from `start` by `function` at `t`: the table's registers and
    /// the probe's in the range, 0 between them; `None` when the range holds none of them.
    fn defined_image(
        &self,
        def: &Definition,
        function: Function,
        start: u16,
        count: u16,
        t: f64,
    ) -> Option<Vec<u16>> {
        let (start, end) = (u32::from(start), u32::from(start) + u32::from(count));
        let mut image = vec![0u16; usize::from(count)];
        let mut filled = vec![false; usize::from(count)];
        let mut any = false;
        let mut put = |address: u16, words: &[u16], image: &mut Vec<u16>| {
            for (i, &w) in words.iter().enumerate() {
                let a = u32::from(address) + i as u32;
                if (start..end).contains(&a) && !filled[(a - start) as usize] {
                    image[(a - start) as usize] = w;
                    filled[(a - start) as usize] = true;
                    any = true;
                }
            }
        };
        let overlaps = |address: u16, width: u16| {
            let a = u32::from(address);
            a < end && a + u32::from(width) > start
        };
        for r in def.registers.iter().filter(|r| r.function == function && overlaps(r.address, r.width())) {
            put(r.address, &self.register_words(def, r, t), &mut image);
        }
        for p in def.probe.iter().filter(|p| p.function == function && overlaps(p.address, p.ty.width())) {
            let x = match p.test {
                ProbeTest::Equals(x) => x,
                ProbeTest::Range { min: Some(lo), max: Some(hi) } => (lo + hi) / 2.0,
                ProbeTest::Range { min, max } => min.or(max).unwrap_or(0.0),
            };
            put(p.address, &plan::encode(x, p.ty, p.word_order, p.byte_order), &mut image);
        }
        any.then_some(image)
    }

    /// A request to a defined meter (CRC stripped): the reply. Reads of its registers answer;
    /// a read that holds none of them, or more than `max_block` registers, gets exception 02;
    /// anything else exception 01.
    pub(super) fn defined_request(&mut self, def: &Definition, body: &[u8], t: f64) -> Option<Vec<u8>> {
        let (addr, function) = (body[0], body[1]);
        let by = match function {
            fc::READ_INPUT => Function::Input,
            fc::READ_HOLDING => Function::Holding,
            _ => return Some(exception(addr, function, 1)),
        };
        let (start, count) = two_words(body)?;
        if let Err(code) = check_read(start, count, 0, u16::MAX) {
            return Some(exception(addr, function, code));
        }
        if self.max_block.is_some_and(|m| count > m) {
            return Some(exception(addr, function, 2));
        }
        self.advance(t);
        let t = t.max(self.last_t);
        match self.defined_image(def, by, start, count, t) {
            Some(regs) => Some(read_reply(addr, function, &regs)),
            None => Some(exception(addr, function, 2)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::definition;
    use crate::meter::driver::{Plan, Reader};
    use crate::meter::Model;
    use crate::modbus::frame::{scan_reply, Reply, Scan};
    use crate::modbus::{Exception, FrameError};
    use crate::reading::Sample;
    use crate::sim::{Fault, Response};

    fn model(name: &str) -> Model {
        let m = definition::resolve(name);
        assert!(definition::of(m).is_some(), "{name} is a built-in definition");
        m
    }

    /// One poll of `reader` by `plan` against `slave` at `t`, as the bus does it: the samples,
    /// or the exception of the first refused request.
    fn poll(slave: &mut SimSlave, reader: &Reader, plan: Plan, t: f64) -> Result<Vec<Sample>, Exception> {
        let mut replies = Vec::new();
        for req in reader.requests(plan) {
            let bytes = match slave.handle(&req.encode(), t) {
                Response::Reply(b) => b,
                other => panic!("{req:?}: {other:?}"),
            };
            match scan_reply(&req, &bytes) {
                Scan::Done { result: Ok(Reply::Registers(r)), skipped: 0 } => replies.push(r),
                Scan::Done { result: Err(FrameError::Exception(e)), .. } => return Err(e),
                other => panic!("{req:?}: {other:?}"),
            }
        }
        Ok(reader.decode(plan, &replies).expect("decodes").samples)
    }

    /// The samples of a full read, falling back to smaller plans after refusals as the bus
    /// does; with the plan that worked.
    fn read(slave: &mut SimSlave, reader: &Reader, t: f64) -> (Plan, Vec<Sample>) {
        let mut plan = reader.first_plan(1);
        loop {
            match poll(slave, reader, plan, t) {
                Ok(samples) => return (plan, samples),
                Err(e) => plan = reader.fallback(plan, e).expect("a smaller plan"),
            }
        }
    }

    fn get(samples: &[Sample], phase: Phase, q: Quantity) -> f64 {
        samples.iter().find(|s| s.phase == phase && s.quantity == q).map(|s| s.value).unwrap_or_else(|| {
            panic!("no {phase:?} {q:?} in {samples:?}");
        })
    }

    /// Every sample of the reading is the slave's own value for its (phase, quantity),
    /// within `tolerance` (relative, with an absolute floor of the same size).
    fn all_match(slave: &SimSlave, def: &Definition, samples: &[Sample], t: f64, tolerance: f64) {
        assert_eq!(samples.len(), def.registers.len());
        for (s, r) in samples.iter().zip(&def.registers) {
            let want = slave.defined_value(def, r.quantity, r.phase, t);
            let step = if r.divisor.is_some() || r.scale != 1.0 { r.scale.abs() } else { 1.0 };
            let close = (s.value - want).abs() <= tolerance * want.abs().max(1.0) + step;
            assert!(close, "{}: {:?} {:?} = {}, want {want}", def.name, s.phase, s.quantity, s.value);
        }
    }

    #[test]
    fn an_sdm630_reads_back_its_floats_on_every_phase() {
        let m = model("sdm630");
        let def = definition::of(m).unwrap();
        let mut slave = SimSlave::new(m, 3).base_pzem(231.5, 12.25, 0.9, 49.95).energy(1234.5);
        let reader = Reader::new(m, 3);
        let (plan, samples) = read(&mut slave, &reader, 3600.0);
        assert_eq!(plan, reader.first_plan(1), "read in its largest blocks");
        assert_eq!(reader.requests(plan).len(), 3);
        let f32_eps = f64::from(f32::EPSILON);
        for (s, r) in samples.iter().zip(&def.registers) {
            let want = slave.defined_value(def, r.quantity, r.phase, 3600.0);
            assert!((s.value - want).abs() <= 2.0 * f32_eps * want.abs(), "{:?} {:?}", s.phase, s.quantity);
        }
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1.0);
        assert!(close(get(&samples, Phase::L2, Quantity::Voltage), 231.5));
        assert!(close(get(&samples, Phase::L12, Quantity::Voltage), 231.5 * 3f64.sqrt()));
        assert!(close(get(&samples, Phase::L3, Quantity::Current), 12.25));
        assert!(close(get(&samples, Phase::L1, Quantity::ActivePower), 231.5 * 12.25 * 0.9));
        assert!(close(get(&samples, Phase::Total, Quantity::ActivePower), 3.0 * 231.5 * 12.25 * 0.9));
        assert!(close(get(&samples, Phase::Total, Quantity::Frequency), 49.95));
        assert!(close(get(&samples, Phase::Total, Quantity::PowerFactor), 0.9));
        assert!(close(get(&samples, Phase::L1, Quantity::VoltageThd), THD.0));
        assert!(close(get(&samples, Phase::L1, Quantity::CurrentThd), THD.1));
        // An hour of 3 × 2551.6 W on top of the starting counter, all imported.
        let kwh = 1234.5 + 3.0 * 231.5 * 12.25 * 0.9 / 1000.0;
        assert!(close(get(&samples, Phase::Total, Quantity::ImportActiveEnergy), kwh));
        assert!(close(get(&samples, Phase::Total, Quantity::ActiveEnergy), kwh));
        assert_eq!(get(&samples, Phase::Total, Quantity::ExportActiveEnergy), 0.0);
        // The counters grow from one read to the next.
        let (_, later) = read(&mut slave, &reader, 7200.0);
        assert!(get(&later, Phase::Total, Quantity::ImportActiveEnergy) > kwh + 7.0);
    }

    #[test]
    fn exporting_counts_up_the_export_counter() {
        let m = model("sdm630");
        let mut slave = SimSlave::new(m, 1).base_pzem(230.0, 10.0, -1.0, 50.0).energy(10.0);
        let reader = Reader::new(m, 1);
        let (_, s) = read(&mut slave, &reader, 1000.0);
        assert!(get(&s, Phase::Total, Quantity::ActivePower) < -6899.0);
        assert_eq!(get(&s, Phase::Total, Quantity::ImportActiveEnergy), 10.0);
        let exported = get(&s, Phase::Total, Quantity::ExportActiveEnergy);
        assert!((exported - 6900.0 * 1000.0 / 3.6e6).abs() < 1e-3, "{exported}");
    }

    #[test]
    fn integer_meters_read_back_their_scaled_values() {
        for (name, address) in [("dds238", 7u8), ("orno-we514", 2), ("ddsu666", 9)] {
            let m = model(name);
            let def = definition::of(m).unwrap();
            let mut slave = SimSlave::new(m, address).base_pzem(229.7, 4.56, 0.87, 50.02).energy(321.09);
            let reader = Reader::new(m, address);
            let (plan, samples) = read(&mut slave, &reader, 60.0);
            assert_eq!(plan, reader.first_plan(1), "{name}");
            all_match(&slave, def, &samples, 60.0, 1e-6);
            let v = get(&samples, Phase::L1, Quantity::Voltage);
            assert!((v - 229.7).abs() < 0.051, "{name}: {v}");
            let a = get(&samples, Phase::L1, Quantity::Current);
            assert!((a - 4.56).abs() < 0.011, "{name}: {a}");
        }
    }

    #[test]
    fn a_low_word_first_meter_reads_back_its_values() {
        // The PZEM's definition: 32-bit values low word first.
        let def = definition::built_in().into_iter().find(|d| d.name == "pzem-016").unwrap();
        assert!(def
            .registers
            .iter()
            .any(|r| r.width() == 2 && r.word_order == definition::WordOrder::LowFirst));
        let m = definition::intern(def);
        let def = definition::of(m).unwrap();
        // 230 V × 300 A = 69 kW: the power's high word is not zero.
        let mut slave = SimSlave::new(m, 4).base_pzem(230.0, 300.0, 1.0, 50.0).energy(100.0);
        let reader = Reader::new(m, 4);
        let (_, samples) = read(&mut slave, &reader, 10.0);
        all_match(&slave, def, &samples, 10.0, 1e-9);
        assert_eq!(get(&samples, Phase::L1, Quantity::ActivePower), 69000.0);
        assert_eq!(get(&samples, Phase::L1, Quantity::Current), 300.0);
    }

    #[test]
    fn a_meter_that_refuses_big_blocks_is_read_in_smaller_ones() {
        let m = model("sdm630");
        let def = definition::of(m).unwrap();
        let mut slave = SimSlave::new(m, 1).max_block(Some(24));
        let reader = Reader::new(m, 1);
        let first = reader.first_plan(1);
        assert_eq!(poll(&mut slave, &reader, first, 0.0).unwrap_err(), Exception::IllegalDataAddress);
        let (plan, samples) = read(&mut slave, &reader, 0.0);
        assert_ne!(plan, first);
        assert!(reader.requests(plan).iter().all(|q| match q.pdu {
            crate::modbus::frame::Pdu::ReadInput { count, .. } => count <= 24,
            _ => false,
        }));
        all_match(&slave, def, &samples, 0.0, 1e-6);
    }

    #[test]
    fn probes_hold_what_they_expect_and_unknown_registers_are_refused() {
        use crate::modbus::Request;
        for def in definition::built_in().into_iter().filter(|d| !d.probe.is_empty()) {
            let m = definition::intern(def);
            let def = definition::of(m).unwrap();
            let mut slave = SimSlave::new(m, 1);
            for p in &def.probe {
                let req = match p.function {
                    Function::Input => Request::read_input(1, p.address, p.ty.width()),
                    Function::Holding => Request::read_holding(1, p.address, p.ty.width()),
                };
                let words =
                    match scan_reply(&req, &super::super::tests_reply(slave.handle(&req.encode(), 0.0))) {
                        Scan::Done { result: Ok(Reply::Registers(r)), .. } => r,
                        other => panic!("{}: {other:?}", def.name),
                    };
                let x = plan::raw(&words, p.ty, p.word_order, p.byte_order);
                let ok = match p.test {
                    ProbeTest::Equals(v) => x == v,
                    ProbeTest::Range { min, max } => {
                        min.is_none_or(|lo| x >= lo) && max.is_none_or(|hi| x <= hi)
                    }
                };
                assert!(ok, "{}: probe at {:#06x} reads {x}", def.name, p.address);
            }
        }
        // Registers of no table nor probe: exception 02; a write: exception 01.
        let m = model("dds238");
        let mut slave = SimSlave::new(m, 1);
        let req = Request::read_holding(1, 0x4000, 2);
        let r = super::super::tests_reply(slave.handle(&req.encode(), 0.0));
        assert!(matches!(
            scan_reply(&req, &r),
            Scan::Done { result: Err(FrameError::Exception(Exception::IllegalDataAddress)), .. }
        ));
        // The table's input-register twin (dds238 is read by holding registers): refused too.
        let req = Request::read_input(1, 0x000C, 1);
        let r = super::super::tests_reply(slave.handle(&req.encode(), 0.0));
        assert!(matches!(scan_reply(&req, &r), Scan::Done { result: Err(FrameError::Exception(_)), .. }));
        let req = Request::write_single(1, 0x000C, 1);
        let r = super::super::tests_reply(slave.handle(&req.encode(), 0.0));
        assert!(matches!(
            scan_reply(&req, &r),
            Scan::Done { result: Err(FrameError::Exception(Exception::IllegalFunction)), .. }
        ));
    }

    #[test]
    fn faults_spoil_a_defined_meters_replies_too() {
        let m = model("sdm630");
        let reader = Reader::new(m, 1);
        let req = &reader.requests(reader.first_plan(1))[0];
        let mut silent = SimSlave::new(m, 1).fault(Fault::NoReply);
        assert_eq!(silent.handle(&req.encode(), 0.0), Response::Silent);
        let mut bad = SimSlave::new(m, 1).fault(Fault::BadCrc).fault_every(Some(2));
        let good = super::super::tests_reply(bad.handle(&req.encode(), 0.0));
        assert!(crate::modbus::crc::check_crc(&good));
        let spoiled = super::super::tests_reply(bad.handle(&req.encode(), 0.0));
        assert!(!crate::modbus::crc::check_crc(&spoiled));
        let mut late = SimSlave::new(m, 1).fault(Fault::Late(std::time::Duration::from_millis(40)));
        assert!(matches!(late.handle(&req.encode(), 0.0), Response::ReplyLate(_, d) if d.as_millis() == 40));
        // Other addresses are not its business.
        assert_eq!(SimSlave::new(m, 2).handle(&req.encode(), 0.0), Response::Silent);
    }
}
