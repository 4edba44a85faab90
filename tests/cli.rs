//! The `pmtr` binary as a user meets it, against simulated meters on pseudo-terminals.

use pmtr::config::{LineSettings, Parity};
use pmtr::sim::{SimPort, SimPortOptions};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn pmtr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pmtr")).args(args).output().expect("run pmtr")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn sim(link: &Path, meters: &[&str]) -> SimPort {
    SimPort::spawn(SimPortOptions {
        link: Some(link.to_path_buf()),
        line: LineSettings { baud: 9600, data_bits: 8, parity: Parity::None, stop_bits: 1 },
        turnaround: Duration::from_millis(2),
        meters: meters.iter().map(|m| m.parse().unwrap()).collect(),
    })
    .unwrap()
}

#[test]
fn check_config_reports_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "[[bus]]\nname = \"b\"\nports = [\"/dev/ttyUSB*\"]\nbaud = 9601\n\n[[meter]]\nname = \"a\"\nmodel = \"pzem-016\"\nadress = 4\n",
    )
    .unwrap();
    let o = pmtr(&["check-config", f.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let f = f.display().to_string();
    assert!(err.contains(&format!("{f}:4:")), "baud error with its line: {err}");
    assert!(err.contains(&format!("{f}:9:")) && err.contains("address"), "typo with its line: {err}");
    assert!(err.lines().filter(|l| l.starts_with(&f)).count() >= 2, "{err}");
}

#[test]
fn the_shipped_example_config_checks() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pmtr.toml");
    let o = pmtr(&["check-config", example.to_str().unwrap()]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("ok"));
}

#[test]
fn read_one_meter_by_port_and_address() {
    let dir = tempfile::tempdir().unwrap();
    let p = sim(&dir.path().join("ttyUSB0"), &["pzem-016@4,volts=231.5,amps=2,pf=1"]);
    let port = p.path().display().to_string();
    let o = pmtr(&["read", "--port", &port, "--address", "4"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("L1U") && out.contains("231.500"), "{out}");
    let o = pmtr(&["read", "--port", &port, "--address", "4", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["model"], "pzem-016");
    let o = pmtr(&["read", "--port", &port, "--address", "9", "--timeout", "50ms"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("did not answer"), "{:?}", text(&o));
}

#[test]
fn read_a_configured_meter_by_name_finds_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let _a = sim(&dir.path().join("ttyUSB0"), &["pzem-016@6"]);
    let _b = sim(&dir.path().join("ttyUSB1"), &["pzem-016@4,volts=120.5"]);
    let cfg = dir.path().join("pmtr.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nstate_dir = \"{}\"\n[[bus]]\nname = \"house\"\nports = [\"{}\"]\n\
             [[meter]]\nname = \"mainA\"\nmodel = \"pzem-016\"\naddress = 4\n",
            dir.path().display(),
            dir.path().join("ttyUSB*").display()
        ),
    )
    .unwrap();
    let o = pmtr(&["read", "mainA", "--config", cfg.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("ttyUSB1"), "{err}");
    assert!(out.contains("120.500"), "{out}");
    let o = pmtr(&["read", "nosuch", "--config", cfg.to_str().unwrap()]);
    assert!(text(&o).1.contains("no meter named `nosuch`"), "{:?}", text(&o));
}

#[test]
fn pzem_set_address_alarm_threshold_and_reset_energy() {
    let dir = tempfile::tempdir().unwrap();
    let p = sim(&dir.path().join("ttyUSB0"), &["pzem-016@1"]);
    let port = p.path().display().to_string();
    let o = pmtr(&["pzem", "set-address", "--port", &port, "7"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("now answers at address 7"));
    assert!(pmtr(&["read", "--port", &port, "--address", "7"]).status.success());
    let o = pmtr(&["pzem", "alarm-threshold", "--port", &port, "--address", "7", "2300"]);
    assert!(o.status.success() && text(&o).0.contains("2300 W"), "{:?}", text(&o));
    let o = pmtr(&["pzem", "reset-energy", "--port", &port, "--address", "7"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = pmtr(&["pzem", "set-address", "--port", &port, "--address", "7", "0"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn scan_finds_both_models_on_two_ports() {
    let dir = tempfile::tempdir().unwrap();
    let _a = sim(&dir.path().join("ttyUSB0"), &["pzem-016@4"]);
    let _b = sim(&dir.path().join("ttyUSB1"), &["rx380@2"]);
    let pattern = dir.path().join("ttyUSB*").display().to_string();
    let o = pmtr(&["scan", "--ports", &pattern, "--addresses", "1-5", "--timeout", "50ms"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let row = |port: &str, model: &str| out.lines().any(|l| l.contains(port) && l.contains(model));
    assert!(row("ttyUSB0", "pzem"), "{out}");
    assert!(row("ttyUSB1", "rx380"), "{out}");
    assert_eq!(out.lines().count(), 3, "a header and two devices: {out}");
    assert!(err.contains("10/10"), "progress reaches the end: {err}");
}

#[test]
fn the_demo_runs_by_itself() {
    let o = pmtr(&["demo", "--seconds", "4"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for m in ["mainA", "mainB", "gen", "workshop"] {
        assert!(out.lines().any(|l| l.starts_with(m) && l.contains("U=")), "{m} read: {out}");
    }
}
