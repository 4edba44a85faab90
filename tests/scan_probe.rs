//! `pmtr scan` names the model by the definitions' probes, against an independent register
//! image: a pymodbus RTU server (tests/support/pymodbus.rs) serving registers written here by
//! hand from the makers' documents, not from our definition files. Needs `socat` and
//! `pymodbus[serial]==3.16.1` (tests/run.sh installs both); fails, saying so, when either is
//! missing.

#[path = "support/pymodbus.rs"]
mod pymodbus;

use serde_json::json;
use std::process::Command;

/// An IEEE 754 float as two registers, high word first (Eastron's input registers).
fn f32_words(x: f32) -> [u16; 2] {
    let b = x.to_bits();
    [(b >> 16) as u16, b as u16]
}

/// Floats at their registers, as an image's register map.
fn floats(values: &[(u16, f32)]) -> serde_json::Map<String, serde_json::Value> {
    values
        .iter()
        .flat_map(|&(a, x)| {
            let w = f32_words(x);
            [(a.to_string(), json!(w[0])), ((a + 1).to_string(), json!(w[1]))]
        })
        .collect()
}

/// The devices on the peer:
/// 1. an Eastron SDM120: input registers from 0 (voltage 30001, current 30007, frequency 30071,
///    as floats; the reserved ones between read 0) and
///    the "meter code" of the Eastron protocol documents, holding register 464515 (0xFC02),
///    0x0020 for an SDM120. Its floats at input 0 also answer the PZEM read: the probe must win.
/// 2. an Eastron SDM630: meter code 0x0070 at the same register.
/// 3. an ABB B23: its type designation in ASCII from holding 0x8960 ("B23 112-100": the bytes
///    'B' '2' '3' ' ' are 0x42 0x32 0x33 0x20).
/// 4. a device that refuses every register of the probes (holding 0x000C alone, a voltage in
///    0.1 V): found, but no model named.
/// 5. an Eastron SDM72D-M-1 (the first SDM72D-M, totals only): no voltage at input 0, so it
///    refuses the PZEM read; total power 30053 (input 0x0034) and import energy 30073 (0x0048)
///    as floats, and the meter code its user manual (V1.4) gives, 00 84, at holding 464515.
/// 6. a CHINT DTSU666: the parameter registers of its user manual (ZTY0.464.1448): net = 0
///    (three-phase four-wire) at 0x0003, bAud = 3 (9600) at 0x002D, Addr = 6 at 0x002E; and
///    its line voltages U12 and U23 as floats in tenths of a volt from 0x2000 (400.1 V and
///    399.8 V).
/// 7. a Hiking DDS238-2 ZN/S: voltage 230.4 V (2304) at 0x000C, frequency 49.99 Hz (4999) at
///    0x0011, the reserved 0x0012-0x0014 at 0, and 0x0015 = address 7 (high byte), baud code 1
///    (9600, low byte).
/// 8. an Eastron SDM230: meter code 0x002B at holding 464515.
/// 9. an ORNO OR-WE-516: the baud rate, 9600, at 0x0003 and the frequency, 50.0 Hz as a float
///    high word first (0x4248 0x0000), at 0x0014.
/// 10. a CHINT DDSU666: voltage 229.8 V and current 4.25 A as floats from holding 0x2000
///     (appendix A of its manual).
fn images() -> serde_json::Value {
    let sdm120_ir = floats(&[(0, 231.5), (6, 4.75), (0x46, 50.02)]);
    let sdm72d_ir = floats(&[(0x34, 1520.0), (0x48, 8765.5)]);
    let mut dtsu666_hr = floats(&[(0x2000, 4001.0), (0x2002, 3998.0)]);
    dtsu666_hr.extend([
        ("3".to_string(), json!(0)),
        ("45".to_string(), json!(3)),
        ("46".to_string(), json!(6)),
    ]);
    json!({
        "1": { "ir": sdm120_ir, "hr": { "64514": 0x0020 }, "fill": true },
        "2": { "ir": {}, "hr": { "64514": 0x0070 }, "fill": false },
        "3": { "ir": {}, "hr": { "35168": 0x4232, "35169": 0x3320, "35170": 0x3131, "35171": 0x322D },
               "fill": false },
        "4": { "ir": {}, "hr": { "12": 2304 }, "fill": false },
        "5": { "ir": sdm72d_ir, "hr": { "64514": 0x0084 }, "fill": false },
        "6": { "ir": {}, "hr": dtsu666_hr, "fill": false },
        "7": { "ir": {}, "hr": { "12": 2304, "17": 4999, "18": 0, "19": 0, "20": 0, "21": 0x0701 },
               "fill": false },
        "8": { "ir": {}, "hr": { "64514": 0x002B }, "fill": false },
        "9": { "ir": {}, "hr": { "3": 9600, "20": 0x4248, "21": 0 }, "fill": false },
        "10": { "ir": {}, "hr": floats(&[(0x2000, 229.8), (0x2002, 4.25)]), "fill": false },
    })
}

fn pmtr(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_pmtr")).args(args).output().expect("pmtr");
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

/// The model column of the row of `address` (the columns: port, settings as "9600 8N1",
/// address, model padded to 22, reading).
fn model_of(out: &str, address: u8) -> String {
    let a = address.to_string();
    let row = out
        .lines()
        .find(|l| l.split_whitespace().nth(3) == Some(a.as_str()))
        .unwrap_or_else(|| panic!("no row for address {address}: {out}"));
    let rest = &row[row.find(&format!(" {a}  ")).unwrap() + a.len() + 3..];
    rest.split("  ").next().unwrap().trim().to_string()
}

#[test]
fn scan_names_the_model_by_its_probe() {
    let (_peer, port) = pymodbus::start("pymodbus_sparse.py", &images());
    let port = port.to_str().unwrap();
    let none = tempfile::tempdir().unwrap();
    let dir = none.path().to_str().unwrap();
    // A configuration whose bus already has a meter at address 2.
    let cfg = none.path().join("pmtr.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nstate_dir = \"{dir}\"\n[[bus]]\nname = \"house\"\nports = [\"{port}\"]\n\
             [[meter]]\nname = \"heat-pump\"\nmodel = \"sdm630\"\naddress = 2\n"
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let (ok, out, err) = pmtr(&[
        "scan",
        "--ports",
        port,
        "--addresses",
        "1-10",
        "--timeout",
        "300ms",
        "--meters-dir",
        dir,
        "--add-to",
        cfg,
        "--bus",
        "house",
    ]);
    assert!(ok, "{err}");
    assert_eq!(model_of(&out, 1), "sdm120", "{out}");
    assert_eq!(model_of(&out, 2), "sdm630", "{out}");
    assert_eq!(model_of(&out, 3), "abb-b23", "{out}");
    assert_eq!(model_of(&out, 4), "unknown device", "{out}");
    assert_eq!(model_of(&out, 5), "sdm72d", "{out}");
    assert_eq!(model_of(&out, 6), "dtsu666", "{out}");
    assert_eq!(model_of(&out, 7), "dds238", "{out}");
    assert_eq!(model_of(&out, 8), "sdm230", "{out}");
    assert_eq!(model_of(&out, 9), "orno-we516", "{out}");
    assert_eq!(model_of(&out, 10), "ddsu666", "{out}");
    assert_eq!(out.lines().count(), 12, "a header, ten devices and the --add-to line: {out}");
    // No line settings given: 9600 8N1 and the definitions' own (2400 8N1, 9600 8E1, 19200 8E1).
    assert!(err.contains("4 setting(s)") && err.contains("2400 8N1"), "{err}");
    assert!(err.contains("40/40"), "progress reaches the end: {err}");
    // The unnamed device: which definitions a scan cannot recognise.
    assert!(err.contains("no probe") && err.contains("pzem-016"), "{err}");
    // --add-to: the eight new devices with one model each; address 2 is taken, 4 has no model.
    assert!(out.contains("8 device(s) added"), "{out}");
    let written = std::fs::read_to_string(cfg).unwrap();
    assert!(
        written.contains("name = \"house-1\"\nmodel = \"sdm120\"\naddress = 1\nbus = \"house\""),
        "{written}"
    );
    assert!(written.contains("name = \"house-3\"\nmodel = \"abb-b23\"\naddress = 3"), "{written}");
    assert!(written.contains("name = \"house-5\"\nmodel = \"sdm72d\"\naddress = 5"), "{written}");
    assert!(written.contains("name = \"house-9\"\nmodel = \"orno-we516\"\naddress = 9"), "{written}");
    assert_eq!(written.matches("[[meter]]").count(), 9, "{written}");
    assert!(err.contains("address 2 not added") && err.contains("address 4 not added"), "{err}");
    assert!(pmtr(&["check-config", cfg]).0, "the file still loads");

    // A user definition with the SDM630's probe: both fit, none is named.
    let twin = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/meter/library/sdm630.toml"),
    )
    .unwrap()
    .replace("name = \"sdm630\"", "name = \"my-sdm630\"");
    std::fs::write(none.path().join("my-sdm630.toml"), twin).unwrap();
    let (ok, out, err) = pmtr(&[
        "scan",
        "--ports",
        port,
        "--addresses",
        "2",
        "--baud",
        "9600",
        "--timeout",
        "300ms",
        "--meters-dir",
        dir,
    ]);
    assert!(ok, "{err}");
    assert_eq!(model_of(&out, 2), "sdm630 or my-sdm630", "{out}");
    assert!(err.contains("1 setting(s)"), "{err}");
}
