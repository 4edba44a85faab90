//! `pmtr simulate` serving meter definitions (built-in and user files) on a pseudo-terminal,
//! read back by `pmtr read --model`, the daemon's own poll path.

#[path = "support/process.rs"]
mod process;

use process::Proc;
use std::io::{BufRead, BufReader};
use std::process::Command;

/// `pmtr read --json` of the meter at `address` as `model`: (phase, quantity) → value.
fn read(port: &str, address: &str, model: &str, meters_dir: &str) -> Vec<(String, String, f64)> {
    let o = Command::new(env!("CARGO_BIN_EXE_pmtr"))
        .args(["read", "--port", port, "--address", address, "--model", model])
        .args(["--meters-dir", meters_dir, "--timeout", "3s", "--json"])
        .output()
        .expect("run pmtr read");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{model}@{address}: {err}");
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("a reading as JSON");
    assert_eq!(json["model"], model);
    json["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| {
            let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
            (text("phase"), text("quantity"), s["value"].as_f64().expect("a number"))
        })
        .collect()
}

fn value(samples: &[(String, String, f64)], phase: &str, quantity: &str) -> f64 {
    samples
        .iter()
        .find(|(p, q, _)| p == phase && q == quantity)
        .map(|s| s.2)
        .unwrap_or_else(|| panic!("no {phase} {quantity} in {samples:?}"))
}

#[test]
fn simulated_definitions_answer_pmtr_read() {
    let dir = tempfile::tempdir().unwrap();
    let meters_dir = dir.path().join("meters.d");
    std::fs::create_dir(&meters_dir).unwrap();
    // A user file: a copy of a built-in under its own name.
    let text =
        include_str!("../src/meter/library/dds238.toml").replace("name = \"dds238\"", "name = \"my-meter\"");
    std::fs::write(meters_dir.join("my-meter.toml"), text).unwrap();
    let link = dir.path().join("ttyUSB0");
    let mut sim = Command::new(env!("CARGO_BIN_EXE_pmtr"));
    sim.args(["simulate", "--link", link.to_str().unwrap(), "--meters-dir", meters_dir.to_str().unwrap()])
        .args(["sdm630@3,volts=231.5,amps=12.25,pf=0.9,hz=49.95", "my-meter@5,volts=229.7,amps=4.56"])
        .arg("sdm120@6,max-block=4")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut sim = Proc::start("pmtr", &mut sim, "cargo build");
    let mut first = String::new();
    BufReader::new(sim.take_stdout()).read_line(&mut first).unwrap();
    assert_eq!(first.trim(), link.display().to_string());
    let (port, dir_text) = (link.to_str().unwrap(), meters_dir.to_str().unwrap());

    let sdm = read(port, "3", "sdm630", dir_text);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs();
    assert!(close(value(&sdm, "L1", "Voltage"), 231.5), "{sdm:?}");
    assert!(close(value(&sdm, "L3", "Voltage"), 231.5), "{sdm:?}");
    assert!(close(value(&sdm, "L2", "Current"), 12.25), "{sdm:?}");
    assert!(close(value(&sdm, "Total", "ActivePower"), 3.0 * 231.5 * 12.25 * 0.9), "{sdm:?}");
    assert!(close(value(&sdm, "Total", "Frequency"), 49.95), "{sdm:?}");
    assert!(value(&sdm, "Total", "ImportActiveEnergy") >= 0.0, "{sdm:?}");

    let mine = read(port, "5", "my-meter", dir_text);
    assert!((value(&mine, "L1", "Voltage") - 229.7).abs() < 0.051, "{mine:?}");
    assert!((value(&mine, "L1", "Current") - 4.56).abs() < 0.011, "{mine:?}");

    // A meter that refuses reads of more than 4 registers is read in smaller blocks.
    let small = read(port, "6", "sdm120", dir_text);
    assert!(close(value(&small, "L1", "Voltage"), 230.0), "{small:?}");

    sim.signal(nix::sys::signal::Signal::SIGINT);
    let o = sim.wait_with_output();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("simulator stopped") && !err.contains("panicked"), "{err}");
}

#[test]
fn an_unknown_model_names_the_definitions() {
    let o = Command::new(env!("CARGO_BIN_EXE_pmtr")).args(["simulate", "sdm631@3"]).output().expect("pmtr");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown meter model `sdm631`") && err.contains("sdm630"), "{err}");
}
