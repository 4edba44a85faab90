//! The built-in meter definitions against an independent register image: a pymodbus RTU server
//! (on one end of a socat pseudo-terminal pair) serves registers written here by hand from
//! each maker's register document (addresses, types, word order and scales as the document
//! gives them, not taken from our definition files), and `pmtr read --model NAME` must report
//! every value. Distinct values everywhere; signed values and float word order included.
//! Needs `socat` and `pymodbus[serial]==3.16.1` (tests/run.sh installs both); fails, saying
//! so, when either is missing.
//!
//! The same images are read by `pmtr run` too, all meters at once on one bus, and every value
//! must reach the CSV files, `/metrics`, MQTT and its Home Assistant discovery documents (with
//! the classes of the README's "Quantities" table), and a trigger on their variables; needs
//! mosquitto as well (tests/run.sh installs it).
//!
//! Also: the user-definition fixtures of `tests/cases/meters/` through `pmtr meters check`.

// support/pymodbus.rs and support/servers.rs each hold their own copy of support/process.rs.
#![allow(clippy::duplicate_mod)]

#[path = "support/pymodbus.rs"]
mod pymodbus;

#[path = "support/servers.rs"]
mod servers;

use pmtr::reading::{Phase, Quantity};
use pmtr::relay::FakeBoard;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use servers::Mosquitto;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One meter's register image and what must be read from it.
#[derive(Default)]
struct Meter {
    ir: BTreeMap<u16, u16>,
    hr: BTreeMap<u16, u16>,
    /// Reserved registers read 0 (else they are refused with exception 02).
    fill: bool,
    /// (phase, quantity, value) as `pmtr read --json` names them.
    want: Vec<(&'static str, &'static str, f64)>,
    /// (phase, quantity) of the table that the meter answers with its "no value" marker: left
    /// out of every reading, still announced to Home Assistant.
    absent: Vec<(&'static str, &'static str)>,
}

impl Meter {
    fn new(fill: bool) -> Self {
        Meter { fill, ..Default::default() }
    }

    fn put(&mut self, holding: bool, addr: u16, words: &[u16]) {
        let map = if holding { &mut self.hr } else { &mut self.ir };
        for (k, w) in words.iter().enumerate() {
            assert!(map.insert(addr + k as u16, *w).is_none(), "register {addr:#x} twice in the test image");
        }
    }

    /// An IEEE 754 float, high word first, whose SI value is `x × factor`, `x` read as the
    /// decimal it stands for (its shortest form: 12345.6, not 12345.599609375).
    fn f32(&mut self, holding: bool, addr: u16, x: f32, factor: f64, phase: &'static str, q: &'static str) {
        let b = x.to_bits();
        self.put(holding, addr, &[(b >> 16) as u16, b as u16]);
        self.want.push((phase, q, x.to_string().parse::<f64>().unwrap() * factor));
    }

    /// An integer of `words` registers (high word first), whose SI value is `raw × factor`.
    fn int(&mut self, addr: u16, raw: i64, words: u16, factor: f64, phase: &'static str, q: &'static str) {
        let w: Vec<u16> = (0..words).map(|k| (raw >> (16 * (words - 1 - k))) as u16).collect();
        self.put(true, addr, &w);
        self.want.push((phase, q, raw as f64 * factor));
    }

    /// The meter answers ABB's "no value" `words` at `addr` instead of its (phase, quantity):
    /// the value leaves `want` for `absent`.
    fn no_value(&mut self, addr: u16, words: &[u16], phase: &'static str, q: &'static str) {
        for (k, w) in words.iter().enumerate() {
            assert!(
                self.hr.insert(addr + k as u16, *w).is_some(),
                "register {addr:#x} not in the test image"
            );
        }
        let before = self.want.len();
        self.want.retain(|&(p, wq, _)| (p, wq) != (phase, q));
        assert_eq!(self.want.len() + 1, before, "{phase} {q} not in the test image");
        self.absent.push((phase, q));
    }

    fn json(&self) -> serde_json::Value {
        let m = |map: &BTreeMap<u16, u16>| -> serde_json::Map<String, serde_json::Value> {
            map.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect()
        };
        serde_json::json!({ "ir": m(&self.ir), "hr": m(&self.hr), "fill": self.fill })
    }
}

/// Eastron SDM630 (SDM630Modbus Protocol V1.8): input registers, floats high word first.
fn sdm630(fill: bool) -> Meter {
    let mut m = Meter::new(fill);
    let three = |m: &mut Meter, base: u16, v: [f32; 3], q| {
        for (k, (x, p)) in v.into_iter().zip(["L1", "L2", "L3"]).enumerate() {
            m.f32(false, base + 2 * k as u16, x, 1.0, p, q);
        }
    };
    three(&mut m, 0x0000, [230.1, 231.2, 229.3], "Voltage"); // 30001..
    three(&mut m, 0x0006, [5.5, 6.25, 7.75], "Current"); // 30007..
    three(&mut m, 0x000C, [1200.5, -350.25, 800.0], "ActivePower"); // 30013..
    three(&mut m, 0x0012, [1300.0, 400.5, 850.0], "ApparentPower"); // 30019..
    three(&mut m, 0x0018, [100.0, -50.5, 25.0], "ReactivePower"); // 30025..
    three(&mut m, 0x001E, [0.92, -0.87, 0.94], "PowerFactor"); // 30031..
    m.f32(false, 0x0034, 1650.25, 1.0, "Total", "ActivePower"); // 30053
    m.f32(false, 0x0038, 2550.5, 1.0, "Total", "ApparentPower"); // 30057
    m.f32(false, 0x003C, 74.5, 1.0, "Total", "ReactivePower"); // 30061
    m.f32(false, 0x003E, 0.9, 1.0, "Total", "PowerFactor"); // 30063
    m.f32(false, 0x0046, 49.95, 1.0, "Total", "Frequency"); // 30071
    m.f32(false, 0x0048, 12345.6, 1.0, "Total", "ImportActiveEnergy"); // 30073
    m.f32(false, 0x004A, 789.1, 1.0, "Total", "ExportActiveEnergy"); // 30075
    m.f32(false, 0x004C, 321.5, 1.0, "Total", "ImportReactiveEnergy"); // 30077
    m.f32(false, 0x004E, 45.25, 1.0, "Total", "ExportReactiveEnergy"); // 30079
    m.f32(false, 0x00C8, 398.5, 1.0, "L12", "Voltage"); // 30201
    m.f32(false, 0x00CA, 399.25, 1.0, "L23", "Voltage");
    m.f32(false, 0x00CC, 400.75, 1.0, "L31", "Voltage");
    m.f32(false, 0x00E0, 1.125, 1.0, "N", "Current"); // 30225
    three(&mut m, 0x00EA, [2.1, 2.2, 2.3], "VoltageThd"); // 30235..
    three(&mut m, 0x00F0, [10.5, 11.5, 12.5], "CurrentThd"); // 30241..
    m.f32(false, 0x00F8, 2.25, 1.0, "Total", "VoltageThd"); // 30249
    m.f32(false, 0x00FA, 11.75, 1.0, "Total", "CurrentThd"); // 30251
    m.f32(false, 0x0156, 13134.7, 1.0, "Total", "ActiveEnergy"); // 30343
    m.f32(false, 0x0158, 366.75, 1.0, "Total", "ReactiveEnergy"); // 30345
    three(&mut m, 0x015A, [4000.5, 4100.25, 4245.0], "ImportActiveEnergy"); // 30347..
    three(&mut m, 0x0160, [100.5, 200.25, 488.0], "ExportActiveEnergy"); // 30353..
    three(&mut m, 0x0166, [4101.0, 4300.5, 4733.0], "ActiveEnergy"); // 30359..
    m
}

/// Eastron SDM120 (SDM120-Modbus Protocol V2.4): input registers, floats high word first;
/// single-phase, so every value is on the meter's phase (L1 for `pmtr read`).
fn sdm120() -> Meter {
    let mut m = Meter::new(true);
    for (addr, x, q) in [
        (0x0000, 231.5, "Voltage"),
        (0x0006, 4.75, "Current"),
        (0x000C, -1050.5, "ActivePower"),
        (0x0012, 1099.75, "ApparentPower"),
        (0x0018, -120.25, "ReactivePower"),
        (0x001E, -0.95, "PowerFactor"),
        (0x0046, 50.02, "Frequency"),
        (0x0048, 2345.5, "ImportActiveEnergy"),
        (0x004A, 123.25, "ExportActiveEnergy"),
        (0x004C, 45.5, "ImportReactiveEnergy"),
        (0x004E, 12.75, "ExportReactiveEnergy"),
        (0x0156, 2468.75, "ActiveEnergy"),
        (0x0158, 58.25, "ReactiveEnergy"),
    ] {
        m.f32(false, addr, x, 1.0, "L1", q);
    }
    m
}

/// CHINT DTSU666 (user manual ZTW0.464.0104): holding registers, floats high word first, in
/// 0.1 V, 0.001 A, 0.1 W and var, 0.001 PF, 0.01 Hz; energies in kWh.
fn dtsu666() -> Meter {
    let mut m = Meter::new(true);
    for (addr, x, f, p, q) in [
        (0x2000, 3985.0, 0.1, "L12", "Voltage"),
        (0x2002, 3992.0, 0.1, "L23", "Voltage"),
        (0x2004, 4007.0, 0.1, "L31", "Voltage"),
        (0x2006, 2301.0, 0.1, "L1", "Voltage"),
        (0x2008, 2312.0, 0.1, "L2", "Voltage"),
        (0x200A, 2293.0, 0.1, "L3", "Voltage"),
        (0x200C, 5500.0, 0.001, "L1", "Current"),
        (0x200E, 6250.0, 0.001, "L2", "Current"),
        (0x2010, 7750.0, 0.001, "L3", "Current"),
        (0x2012, 16502.5, 0.1, "Total", "ActivePower"),
        (0x2014, 12005.0, 0.1, "L1", "ActivePower"),
        (0x2016, -3502.5, 0.1, "L2", "ActivePower"),
        (0x2018, 8000.0, 0.1, "L3", "ActivePower"),
        (0x201A, 745.0, 0.1, "Total", "ReactivePower"),
        (0x201C, 1000.0, 0.1, "L1", "ReactivePower"),
        (0x201E, -505.0, 0.1, "L2", "ReactivePower"),
        (0x2020, 250.0, 0.1, "L3", "ReactivePower"),
        (0x202A, 900.0, 0.001, "Total", "PowerFactor"),
        (0x202C, 920.0, 0.001, "L1", "PowerFactor"),
        (0x202E, -870.0, 0.001, "L2", "PowerFactor"),
        (0x2030, 940.0, 0.001, "L3", "PowerFactor"),
        (0x2044, 4995.0, 0.01, "Total", "Frequency"),
        (0x101E, 12345.6, 1.0, "Total", "ImportActiveEnergy"),
        (0x1020, 4000.5, 1.0, "L1", "ImportActiveEnergy"),
        (0x1022, 4100.25, 1.0, "L2", "ImportActiveEnergy"),
        (0x1024, 4245.0, 1.0, "L3", "ImportActiveEnergy"),
        (0x1028, 789.1, 1.0, "Total", "ExportActiveEnergy"),
        (0x102A, 100.5, 1.0, "L1", "ExportActiveEnergy"),
        (0x102C, 200.25, 1.0, "L2", "ExportActiveEnergy"),
        (0x102E, 488.0, 1.0, "L3", "ExportActiveEnergy"),
    ] {
        m.f32(true, addr, x, f, p, q);
    }
    m
}

/// Hiking DDS238-2 ZN/S (community register table): holding registers, integers.
fn dds238() -> Meter {
    let mut m = Meter::new(true);
    m.int(0x0000, 1_234_567, 2, 0.01, "L1", "ActiveEnergy");
    m.int(0x0008, 12_345, 2, 0.01, "L1", "ExportActiveEnergy");
    m.int(0x000A, 1_222_222, 2, 0.01, "L1", "ImportActiveEnergy");
    m.int(0x000C, 2306, 1, 0.1, "L1", "Voltage");
    m.int(0x000D, 475, 1, 0.01, "L1", "Current");
    m.int(0x000E, -1050, 1, 1.0, "L1", "ActivePower");
    m.int(0x000F, -2, 1, 1.0, "L1", "ReactivePower");
    m.int(0x0010, 917, 1, 0.001, "L1", "PowerFactor");
    m.int(0x0011, 4999, 1, 0.01, "L1", "Frequency");
    // Address 4 (high byte), 9600 baud (low byte 1): not a reading.
    m.put(true, 0x0015, &[0x0401]);
    m
}

/// ABB B23 (B23/B24 user manual, Modbus chapter): holding registers, integers high word first.
fn abb_b23() -> Meter {
    let mut m = Meter::new(true);
    m.int(0x5000, 1_234_567, 4, 0.01, "Total", "ImportActiveEnergy");
    m.int(0x5004, 78_910, 4, 0.01, "Total", "ExportActiveEnergy");
    m.int(0x500C, 32_150, 4, 0.01, "Total", "ImportReactiveEnergy");
    m.int(0x5010, 4_525, 4, 0.01, "Total", "ExportReactiveEnergy");
    for (k, (raw, p)) in [(400_050, "L1"), (410_025, "L2"), (424_500, "L3")].into_iter().enumerate() {
        m.int(0x5460 + 4 * k as u16, raw, 4, 0.01, p, "ImportActiveEnergy");
    }
    for (k, (raw, p)) in [(10_050, "L1"), (20_025, "L2"), (48_800, "L3")].into_iter().enumerate() {
        m.int(0x546C + 4 * k as u16, raw, 4, 0.01, p, "ExportActiveEnergy");
    }
    // L1-N, L2-N, L3-N, L1-L2, L3-L2, L1-L3 in 0.1 V.
    for (k, (raw, p)) in
        [(2301, "L1"), (2312, "L2"), (2293, "L3"), (3985, "L12"), (3992, "L23"), (4007, "L31")]
            .into_iter()
            .enumerate()
    {
        m.int(0x5B00 + 2 * k as u16, raw, 2, 0.1, p, "Voltage");
    }
    for (k, (raw, p)) in [(550, "L1"), (625, "L2"), (775, "L3"), (112, "N")].into_iter().enumerate() {
        m.int(0x5B0C + 2 * k as u16, raw, 2, 0.01, p, "Current");
    }
    for (base, q, v) in [
        (0x5B14, "ActivePower", [165_025, 120_050, -35_025, 80_000]),
        (0x5B1C, "ReactivePower", [7_450, 10_000, -5_050, 2_500]),
        (0x5B24, "ApparentPower", [255_050, 130_000, 40_050, 85_000]),
    ] {
        for (k, (raw, p)) in v.into_iter().zip(["Total", "L1", "L2", "L3"]).enumerate() {
            m.int(base + 2 * k as u16, raw, 2, 0.01, p, q);
        }
    }
    m.int(0x5B2C, 4995, 1, 0.01, "Total", "Frequency");
    m.int(0x5B3A, -900, 1, 0.001, "Total", "PowerFactor");
    for (k, (raw, p)) in [(923, "L1"), (-874, "L2"), (941, "L3")].into_iter().enumerate() {
        m.int(0x5B3B + k as u16, raw, 1, 0.001, p, "PowerFactor");
    }
    // "B23 " at 0x8960 (the probe; not a reading).
    m.put(true, 0x8960, &[0x4232, 0x3320]);
    m
}

/// CHINT DDSU666 (manual appendix A): holding registers, floats high word first, power in kW
/// and kvar.
fn ddsu666() -> Meter {
    let mut m = Meter::new(true);
    for (addr, x, f, q) in [
        (0x2000, 230.15, 1.0, "Voltage"),
        (0x2002, 4.75, 1.0, "Current"),
        (0x2004, -1.0505, 1000.0, "ActivePower"),
        (0x2006, -0.12025, 1000.0, "ReactivePower"),
        (0x200A, -0.95, 1.0, "PowerFactor"),
        (0x200E, 50.02, 1.0, "Frequency"),
        (0x4000, 2345.5, 1.0, "ImportActiveEnergy"),
        (0x400A, 123.25, 1.0, "ExportActiveEnergy"),
    ] {
        m.f32(true, addr, x, f, "L1", q);
    }
    m
}

/// ORNO OR-WE-514 (register description OR-WE-514&OR-WE-515): holding registers, integers
/// high word first; power in 0.001 kW, signed.
fn orno_we514() -> Meter {
    let mut m = Meter::new(true);
    m.int(0x0130, 5002, 1, 0.01, "L1", "Frequency");
    m.int(0x0131, 23015, 1, 0.01, "L1", "Voltage");
    m.int(0x0139, 4750, 2, 0.001, "L1", "Current");
    m.int(0x0140, -1050, 2, 1.0, "L1", "ActivePower");
    m.int(0x0148, -120, 2, 1.0, "L1", "ReactivePower");
    m.int(0x0150, 1100, 2, 1.0, "L1", "ApparentPower");
    m.int(0x0158, -950, 1, 0.001, "L1", "PowerFactor");
    m.int(0xA000, 246_875, 2, 0.01, "L1", "ActiveEnergy");
    m.int(0xA01E, 5825, 2, 0.01, "L1", "ReactiveEnergy");
    m
}

/// ORNO OR-WE-516 (OR-WE-516 register list): holding registers, floats high word first;
/// power in kW, kvar and kVA.
fn orno_we516() -> Meter {
    let mut m = Meter::new(true);
    let mut put = |addr: u16, v: [f32; 4], f: f64, q: &'static str, total_first: bool| {
        let phases: [&'static str; 4] =
            if total_first { ["Total", "L1", "L2", "L3"] } else { ["L1", "L2", "L3", "-"] };
        for (k, (x, p)) in v.into_iter().zip(phases).enumerate() {
            if p != "-" {
                m.f32(true, addr + 2 * k as u16, x, f, p, q);
            }
        }
    };
    put(0x000E, [230.1, 231.2, 229.3, 0.0], 1.0, "Voltage", false);
    put(0x0016, [5.5, 6.25, 7.75, 0.0], 1.0, "Current", false);
    put(0x001C, [1.65025, 1.2005, -0.35025, 0.8], 1000.0, "ActivePower", true);
    put(0x0024, [0.0745, 0.1, -0.0505, 0.025], 1000.0, "ReactivePower", true);
    put(0x002C, [2.5505, 1.3, 0.4005, 0.85], 1000.0, "ApparentPower", true);
    put(0x0034, [0.9, 0.92, -0.87, 0.94], 1.0, "PowerFactor", true);
    put(0x0100, [13134.7, 4101.0, 4300.5, 4733.0], 1.0, "ActiveEnergy", true);
    put(0x0108, [12345.6, 4000.5, 4100.25, 4245.0], 1.0, "ImportActiveEnergy", true);
    put(0x0110, [789.1, 100.5, 200.25, 488.0], 1.0, "ExportActiveEnergy", true);
    m.f32(true, 0x0014, 49.95, 1.0, "Total", "Frequency");
    m.f32(true, 0x0118, 366.75, 1.0, "Total", "ReactiveEnergy");
    m.f32(true, 0x0120, 321.5, 1.0, "Total", "ImportReactiveEnergy");
    m.f32(true, 0x0128, 45.25, 1.0, "Total", "ExportReactiveEnergy");
    m
}

/// Eastron SDM230 (SDM230 Protocol, 2018-03): the SDM120's registers, input, floats high word
/// first.
fn sdm230() -> Meter {
    let mut m = Meter::new(true);
    for (addr, x, q) in [
        (0x0000, 228.75, "Voltage"),
        (0x0006, 12.5, "Current"),
        (0x000C, 2750.25, "ActivePower"),
        (0x0012, 2860.5, "ApparentPower"),
        (0x0018, 310.75, "ReactivePower"),
        (0x001E, 0.961, "PowerFactor"),
        (0x0046, 49.97, "Frequency"),
        (0x0048, 8765.25, "ImportActiveEnergy"),
        (0x004A, 12.5, "ExportActiveEnergy"),
        (0x004C, 654.75, "ImportReactiveEnergy"),
        (0x004E, 3.25, "ExportReactiveEnergy"),
        (0x0156, 8777.75, "ActiveEnergy"),
        (0x0158, 658.0, "ReactiveEnergy"),
    ] {
        m.f32(false, addr, x, 1.0, "L1", q);
    }
    m
}

/// Eastron SDM72D-M-2 (SDM72DM-V2 User Manual V1.1): input registers, floats high word first.
fn sdm72d_m_v2() -> Meter {
    let mut m = Meter::new(true);
    for (base, q, v) in [
        (0x0000, "Voltage", [230.5, 231.5, 232.5]),
        (0x0006, "Current", [10.25, 11.25, 12.25]),
        (0x000C, "ActivePower", [2300.5, -150.25, 2800.0]),
        (0x0012, "ApparentPower", [2360.0, 2600.5, 2850.0]),
        (0x0018, "ReactivePower", [120.0, -130.5, 140.0]),
        (0x001E, "PowerFactor", [0.975, -0.058, 0.982]),
    ] {
        for (k, (x, p)) in v.into_iter().zip(["L1", "L2", "L3"]).enumerate() {
            m.f32(false, base + 2 * k as u16, x, 1.0, p, q);
        }
    }
    m.f32(false, 0x0034, 4950.25, 1.0, "Total", "ActivePower");
    m.f32(false, 0x0038, 7810.5, 1.0, "Total", "ApparentPower");
    m.f32(false, 0x003C, 129.5, 1.0, "Total", "ReactivePower");
    m.f32(false, 0x003E, 0.634, 1.0, "Total", "PowerFactor");
    m.f32(false, 0x0046, 50.01, 1.0, "Total", "Frequency");
    m.f32(false, 0x0048, 54321.5, 1.0, "Total", "ImportActiveEnergy");
    m.f32(false, 0x004A, 1234.25, 1.0, "Total", "ExportActiveEnergy");
    m.f32(false, 0x00C8, 399.5, 1.0, "L12", "Voltage");
    m.f32(false, 0x00CA, 401.25, 1.0, "L23", "Voltage");
    m.f32(false, 0x00CC, 400.5, 1.0, "L31", "Voltage");
    m.f32(false, 0x00E0, 2.375, 1.0, "N", "Current");
    m.f32(false, 0x0156, 55555.75, 1.0, "Total", "ActiveEnergy");
    m.f32(false, 0x0158, 987.5, 1.0, "Total", "ReactiveEnergy");
    m
}

/// ABB B21 (the single-phase subset of the B23 map): holding registers, integers high word first.
fn abb_b21() -> Meter {
    let mut m = Meter::new(true);
    m.int(0x5000, 765_432, 4, 0.01, "L1", "ImportActiveEnergy");
    m.int(0x5004, 1_234, 4, 0.01, "L1", "ExportActiveEnergy");
    m.int(0x5B00, 2297, 2, 0.1, "L1", "Voltage");
    m.int(0x5B0C, 1_234, 2, 0.01, "L1", "Current");
    m.int(0x5B14, -275_050, 2, 0.01, "L1", "ActivePower");
    m.int(0x5B1C, 12_345, 2, 0.01, "L1", "ReactivePower");
    m.int(0x5B24, 283_400, 2, 0.01, "L1", "ApparentPower");
    m.int(0x5B2C, 5003, 1, 0.01, "L1", "Frequency");
    m.int(0x5B3A, -971, 1, 0.001, "L1", "PowerFactor");
    m
}

/// An ABB B21 that has no reactive power nor power factor: it answers ABB's "no value" (the
/// type's largest value) there, and the reading leaves them out.
fn abb_b21_without_reactive() -> Meter {
    let mut m = abb_b21();
    m.no_value(0x5B1C, &[0x7FFF, 0xFFFF], "L1", "ReactivePower");
    m.no_value(0x5B3A, &[0x7FFF], "L1", "PowerFactor");
    m
}

/// An ABB B23 without per-phase power factors: it answers ABB's "no value" there (0x7FFF for
/// an i16), and the reading leaves them out.
fn abb_b23_without_phase_power_factors() -> Meter {
    let mut m = abb_b23();
    for (k, p) in ["L1", "L2", "L3"].into_iter().enumerate() {
        m.no_value(0x5B3B + k as u16, &[0x7FFF], p, "PowerFactor");
    }
    m
}

/// The meters on the peer: (model, address, image).
fn meters() -> Vec<(&'static str, u8, Meter)> {
    vec![
        ("sdm630", 1, sdm630(true)),
        ("sdm120", 2, sdm120()),
        ("dtsu666", 3, dtsu666()),
        ("dds238", 4, dds238()),
        ("abb-b23", 5, abb_b23()),
        ("ddsu666", 6, ddsu666()),
        ("orno-we514", 7, orno_we514()),
        ("orno-we516", 8, orno_we516()),
        ("sdm230", 9, sdm230()),
        ("sdm72d-m-v2", 10, sdm72d_m_v2()),
        ("abb-b21", 12, abb_b21()),
        ("abb-b21", 13, abb_b21_without_reactive()),
        ("abb-b23", 14, abb_b23_without_phase_power_factors()),
        // An SDM630 that refuses its reserved registers: read by the fallback.
        ("sdm630", 11, sdm630(false)),
    ]
}

fn start_peer(meters: &[(&str, u8, Meter)]) -> (pymodbus::Peer, PathBuf) {
    let images: serde_json::Map<String, serde_json::Value> =
        meters.iter().map(|(_, addr, m)| (addr.to_string(), m.json())).collect();
    pymodbus::start("pymodbus_sparse.py", &serde_json::Value::Object(images))
}

fn pmtr(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pmtr")).args(args).output().expect("pmtr")
}

#[test]
fn built_in_definitions_read_an_independent_register_image() {
    let meters = meters();
    let (_peer, port) = start_peer(&meters);
    let port = port.to_str().unwrap();
    for (model, address, m) in &meters {
        let address = address.to_string();
        let out = pmtr(&[
            "read",
            "--port",
            port,
            "--address",
            &address,
            "--model",
            model,
            "--baud",
            "9600",
            "--parity",
            "none",
            "--timeout",
            "1s",
            "--meters-dir",
            "/nonexistent",
            "--json",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{model}@{address}: {stderr}");
        // A meter that refuses its reserved registers is read by the fallback, in smaller
        // blocks; one that answers them is read in its largest blocks.
        assert_eq!(stderr.contains("in smaller blocks"), !m.fill, "{model}@{address}: {stderr}");
        let reading: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reading["model"], *model);
        let samples = reading["samples"].as_array().unwrap();
        assert_eq!(
            samples.len(),
            m.want.len(),
            "{model}@{address}: every value of the table, no more:\n{samples:#?}"
        );
        for (phase, q, want) in &m.want {
            let got = samples
                .iter()
                .find(|s| s["phase"] == *phase && s["quantity"] == *q)
                .unwrap_or_else(|| panic!("{model}@{address}: no {phase} {q}"))["value"]
                .as_f64()
                .unwrap();
            assert!(
                (got - want).abs() <= 1e-9 * (1.0 + want.abs()),
                "{model}@{address} {phase} {q}: read {got}, the document gives {want}"
            );
        }
    }
}

#[test]
fn meters_check_reports_every_error_of_a_user_file() {
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/meters");
    let good = cases.join("good.toml");
    let out = pmtr(&["meters", "check", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let bad = cases.join("errors.toml");
    let out = pmtr(&["meters", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let want = std::fs::read_to_string(cases.join("errors.expected")).unwrap();
    let got = String::from_utf8_lossy(&out.stderr).replace(&format!("{}/", cases.display()), "");
    assert_eq!(got, want);

    // A user file overrides the built-in of its name, and the list says so; `show` reads it.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&good).unwrap().replace("name = \"my-meter\"", "name = \"sdm120\"");
    std::fs::write(dir.path().join("sdm120.toml"), text).unwrap();
    std::fs::copy(&good, dir.path().join("mine.toml")).unwrap();
    let out = pmtr(&["meters", "list", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    let list = String::from_utf8_lossy(&out.stdout);
    let line = list.lines().find(|l| l.starts_with("sdm120 ")).unwrap();
    assert!(line.contains("(overrides the built-in)"), "{line}");
    assert!(list.lines().any(|l| l.starts_with("my-meter ")), "{list}");
    let out = pmtr(&["meters", "show", "my-meter", "--dir", dir.path().to_str().unwrap()]);
    let show = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(show.contains("FC03 0x0000 +12"), "{show}");

    // ABB's "no value" marker is shown.
    let out = pmtr(&["meters", "show", "abb-b23", "--dir", "/nonexistent"]);
    let show = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(show.contains("register(s) holding their type's largest value"), "{show}");
}

// The daemon
// ---------------------------------------------------------------------------------------------

const GATEWAY: &str = "defs";
const NODE: &str = "pmtr_defs";
const PIN: u8 = 17;
/// How long the daemon may take to read every meter once, or the broker to hand a message.
const WAIT: Duration = Duration::from_secs(30);

/// The name of meter `address` in the daemon's configuration.
fn meter_name(address: u8) -> String {
    format!("m{address}")
}

/// A quantity as `pmtr read --json` names it.
fn quantity(name: &str) -> Quantity {
    serde_json::from_value(serde_json::json!(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn phase(name: &str) -> Phase {
    serde_json::from_value(serde_json::json!(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Whether `got` is the document's value as stored (rounded to 1e-6).
fn same(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-6 + 1e-9 * want.abs()
}

/// The daemon's configuration: one bus on the peer, every meter of `meters` by its model, a CSV
/// file per meter, the status API, MQTT, and a trigger on a fake relay whose expression reads
/// definition-only variables of two meters (tight around the image's values: it trips only
/// if each is read right).
fn daemon_toml(dir: &Path, port: &Path, api: u16, broker: u16, meters: &[(&str, u8, Meter)]) -> String {
    let mut t = format!(
        r#"
[gateway]
name = "{GATEWAY}"
state_dir = "{state}"
gpio = "fake"
meters_dir = "{defs}"
[[bus]]
name = "defs"
ports = ["{port}"]
baud = 9600
parity = "none"
timeout = "1s"
rescan = "200ms"
[[sink]]
type = "csv"
dir = "{csv}"
group_by = "meter"
flush_interval = "100ms"
[status]
listen = "127.0.0.1:{api}"
[mqtt]
host = "127.0.0.1"
port = {broker}
keep_alive = "5s"
max_backoff = "1s"
[[relay]]
name = "load"
pin = {PIN}
default = "on"
[[trigger]]
name = "definitions"
meter = "m1"
when = "ei > 12345.5 && ee < 789.2 && L2U > 231.1 && Uthd > 2.24 && L3Ithd > 12.4 && m2.L1eqe > 12.7 && m5.L31U > 400.6"
relays = ["load"]
"#,
        state = dir.join("state").display(),
        defs = dir.join("meters.d").display(),
        port = port.display(),
        csv = dir.join("csv").display(),
    );
    for (model, address, _) in meters {
        t.push_str(&format!(
            "[[meter]]\nname = \"{}\"\nmodel = \"{model}\"\naddress = {address}\npoll = \"500ms\"\n",
            meter_name(*address)
        ));
    }
    t
}

/// Every row of a meter's CSV files, as (phase tag, field → value).
fn csv_rows(dir: &Path, meter: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut rows = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return rows };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(&format!("{meter}-")) && name.ends_with(".csv")) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let mut lines = text.lines();
        let Some(header) = lines.next() else { continue };
        // `voltage (V)` is the field `voltage`.
        let fields: Vec<&str> = header.split(',').map(|h| h.split(" (").next().unwrap()).collect();
        for line in lines {
            let cells: BTreeMap<String, String> =
                fields.iter().zip(line.split(',')).map(|(f, c)| (f.to_string(), c.to_string())).collect();
            rows.push((cells["phase"].clone(), cells));
        }
    }
    rows
}

/// The Home Assistant classes of each trigger symbol, as the README's "Quantities" table gives
/// them: symbol → (unit, device class, state class).
fn readme_classes() -> BTreeMap<String, (String, Option<String>, String)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let table = readme.split("### Quantities").nth(1).expect("README has a Quantities section");
    let table = table.split("\n## ").next().unwrap();
    let mut out = BTreeMap::new();
    for line in table.lines().filter(|l| l.starts_with("| ") && l.contains('`')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [_, unit, symbol, _, classes] = cells[..] else { panic!("README Quantities row: {line}") };
        let (class, state) = classes.split_once(" / ").unwrap_or_else(|| panic!("{line}"));
        let class = (class != "none").then(|| class.to_owned());
        out.insert(symbol.trim_matches('`').to_owned(), (unit.to_owned(), class, state.to_owned()));
    }
    out
}

/// The maker and model of a built-in definition, read from its file.
fn maker_and_model(model: &str) -> (String, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("src/meter/library/{model}.toml"));
    let doc: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    (doc["maker"].as_str().unwrap().to_owned(), doc["model"].as_str().unwrap().to_owned())
}

/// A client subscribed to the gateway's and Home Assistant's topics, keeping the latest
/// message of each topic.
struct Subscriber {
    seen: Arc<Mutex<BTreeMap<String, String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    async fn start(port: u16) -> Subscriber {
        let mut options = MqttOptions::new(format!("defs-{}", std::process::id()), "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 100);
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client.subscribe(format!("pmtr/{GATEWAY}/#"), QoS::AtLeastOnce).await.unwrap();
                        client.subscribe("homeassistant/#", QoS::AtLeastOnce).await.unwrap();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let payload = String::from_utf8_lossy(&p.payload).into_owned();
                        log.lock().unwrap().insert(p.topic.clone(), payload);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Subscriber { seen, task }
    }

    /// Waits until every topic of `topics` has come; panics naming those that have not.
    async fn wait(&self, topics: &[String]) -> BTreeMap<String, serde_json::Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.seen.lock().unwrap().clone();
            let missing: Vec<&String> = topics.iter().filter(|t| !seen.contains_key(*t)).collect();
            if missing.is_empty() {
                return topics
                    .iter()
                    .map(|t| {
                        (t.clone(), serde_json::from_str(&seen[t]).unwrap_or_else(|e| panic!("{t}: {e}")))
                    })
                    .collect();
            }
            assert!(Instant::now() < deadline, "nothing within {WAIT:?} on {missing:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn get(url: &str) -> Option<String> {
    let r = servers::try_http("GET", url, &[], b"").ok()?;
    (r.status == 200).then(|| String::from_utf8_lossy(&r.body).into_owned())
}

/// One part of the status API's answer, for a failure message.
fn status(api: u16, part: &str) -> String {
    let Some(body) = get(&format!("http://127.0.0.1:{api}/api/status")) else { return "(no answer)".into() };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    serde_json::to_string_pretty(&v[part]).unwrap_or_default()
}

/// `pmtr run` reads every built-in image at once, by definition, and everything downstream
/// carries each value: the CSV columns, `/metrics`, the MQTT state, Home Assistant discovery
/// (maker and model from the definition file, classes as the README's table gives them), and
/// a trigger on definition-only variables of two meters, which trips its relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reads_every_built_in_definition_and_everything_downstream_follows() {
    let meters = meters();
    let (_peer, port) = start_peer(&meters);
    let broker = tokio::task::spawn_blocking(Mosquitto::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("meters.d")).unwrap();
    let api = servers::free_port();
    let toml = daemon_toml(dir.path(), &port, api, broker.port(), &meters);
    let config = pmtr::config::load_str(&toml, "t.toml").unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let board = FakeBoard::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(pmtr::app::run::run_with(config, Some(Box::new(board.gpio())), async move {
        let _ = stopped.await;
    }));

    // Every meter's first reading in its CSV file, one row per phase it measures.
    let csv = dir.path().join("csv");
    let deadline = Instant::now() + WAIT;
    loop {
        let missing: Vec<String> = meters
            .iter()
            .filter(|(_, address, m)| {
                let rows = csv_rows(&csv, &meter_name(*address));
                m.want.iter().any(|(p, _, _)| !rows.iter().any(|(tag, _)| tag == phase(p).tag()))
            })
            .map(|(model, address, _)| format!("{} ({model}@{address})", meter_name(*address)))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "within {WAIT:?}, no reading in the CSV files of {missing:?}; the meters: {}",
            status(api, "meters")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The CSV: the definition's columns, each value the document gives (the first row of each
    // phase is the first reading).
    for (model, address, m) in &meters {
        let name = meter_name(*address);
        let rows = csv_rows(&csv, &name);
        for (p, q, want) in &m.want {
            let (field, tag) = (quantity(q).field(), phase(p).tag());
            let row = &rows.iter().find(|(t, _)| t == tag).unwrap().1;
            assert_eq!(row["model"], *model, "{name}");
            let cell = row.get(field).unwrap_or_else(|| panic!("{name} ({model}): no CSV column {field}"));
            let got: f64 =
                cell.parse().unwrap_or_else(|_| panic!("{name} ({model}) {tag} {field}: `{cell}`"));
            assert!(same(got, *want), "{name} ({model}) CSV {tag} {field}: {got}, the document gives {want}");
        }
        for (p, q) in &m.absent {
            let (field, tag) = (quantity(q).field(), phase(p).tag());
            let row = &rows.iter().find(|(t, _)| t == tag).unwrap().1;
            let cell = row.get(field).map_or("", String::as_str);
            assert_eq!(cell, "", "{name} ({model}) CSV {tag} {field}: the meter has no value there");
        }
    }

    // `/metrics`: a gauge per value, named per quantity.
    let metrics = tokio::task::spawn_blocking(move || get(&format!("http://127.0.0.1:{api}/metrics")))
        .await
        .unwrap()
        .expect("/metrics answers");
    for (model, address, m) in &meters {
        let name = meter_name(*address);
        for (p, q, want) in &m.want {
            let (gauge, _) = pmtr::status::metrics::reading_metric(quantity(q));
            let series = format!("{gauge}{{meter=\"{name}\",phase=\"{}\"}} ", phase(p).tag());
            let line = metrics
                .lines()
                .find(|l| l.starts_with(&series))
                .unwrap_or_else(|| panic!("{name} ({model}): no `{series}` in /metrics"));
            let got: f64 = line[series.len()..].parse().unwrap();
            assert!(same(got, *want), "{name} ({model}) /metrics {line}: the document gives {want}");
        }
        for (p, q) in &m.absent {
            let (gauge, _) = pmtr::status::metrics::reading_metric(quantity(q));
            let series = format!("{gauge}{{meter=\"{name}\",phase=\"{}\"}} ", phase(p).tag());
            assert!(
                !metrics.contains(&series),
                "{name} ({model}): `{series}` in /metrics, the meter has no value"
            );
        }
    }

    // MQTT: each meter's state holds every value; its discovery documents, one per value and
    // no more, carry the definition's maker and model and the README's classes.
    let classes = readme_classes();
    let mqtt = Subscriber::start(broker.port()).await;
    let mut topics = Vec::new();
    for (_, address, m) in &meters {
        let name = meter_name(*address);
        topics.push(format!("pmtr/{GATEWAY}/meter/{name}/state"));
        for (p, q, _) in &m.want {
            let variable = format!("{}{}", phase(p).prefix(), quantity(q).symbol());
            topics.push(format!("homeassistant/sensor/{NODE}/{name}_{variable}/config"));
        }
    }
    let seen = mqtt.wait(&topics).await;
    let all = mqtt.seen.lock().unwrap().clone();
    for (model, address, m) in &meters {
        let name = meter_name(*address);
        let state = &seen[&format!("pmtr/{GATEWAY}/meter/{name}/state")];
        let (maker, product) = maker_and_model(model);
        for (p, q, want) in &m.want {
            let (p, q) = (phase(p), quantity(q));
            let variable = format!("{}{}", p.prefix(), q.symbol());
            let got = state[&variable]
                .as_f64()
                .unwrap_or_else(|| panic!("{name} ({model}): no {variable} in {state}"));
            assert!(same(got, *want), "{name} ({model}) MQTT {variable}: {got}, the document gives {want}");
            let doc = &seen[&format!("homeassistant/sensor/{NODE}/{name}_{variable}/config")];
            let (unit, class, state_class) = classes
                .get(q.symbol())
                .unwrap_or_else(|| panic!("README Quantities has no `{}`", q.symbol()));
            let it = format!("{name} ({model}) discovery of {variable}: {doc}");
            assert_eq!(doc["device_class"].as_str(), class.as_deref(), "{it}");
            assert_eq!(doc["state_class"].as_str(), Some(state_class.as_str()), "{it}");
            assert_eq!(doc["unit_of_measurement"].as_str().unwrap_or(""), unit, "{it}");
            assert_eq!(doc["value_template"], format!("{{{{ value_json.{variable} }}}}"), "{it}");
            assert_eq!(doc["device"]["manufacturer"].as_str(), Some(maker.as_str()), "{it}");
            assert_eq!(doc["device"]["model"].as_str(), Some(product.as_str()), "{it}");
        }
        let state_topic = format!("pmtr/{GATEWAY}/meter/{name}/state");
        let sensors = all
            .iter()
            .filter(|(t, _)| t.starts_with("homeassistant/"))
            .filter(|(_, d)| {
                serde_json::from_str::<serde_json::Value>(d).unwrap()["state_topic"] == state_topic
            })
            .count();
        for (p, q) in &m.absent {
            let variable = format!("{}{}", phase(p).prefix(), quantity(q).symbol());
            assert!(
                state.get(&variable).is_none(),
                "{name} ({model}): {variable} in {state}, the meter has no value"
            );
        }
        assert_eq!(
            sensors,
            m.want.len() + m.absent.len(),
            "{name} ({model}): one discovery document per value of the table, no more"
        );
    }

    // The trigger on definition-only variables trips (at a reading of its meter once the
    // others have theirs), and its relay goes off.
    let trigger = format!("pmtr/{GATEWAY}/trigger/definitions/state");
    let deadline = Instant::now() + WAIT;
    while mqtt.seen.lock().unwrap().get(&trigger).map(String::as_str) != Some("ON") {
        assert!(
            Instant::now() < deadline,
            "the trigger did not trip within {WAIT:?}: {}",
            status(api, "triggers")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(board.level(PIN), Some(false));

    let _ = stop.send(());
    daemon.await.unwrap().unwrap();
}
