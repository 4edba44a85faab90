//! pmtr's bus engine against an independent Modbus implementation: a pymodbus 3.16 RTU server
//! on one end of a socat pseudo-terminal pair, serving a PZEM and an RX380 register image.
//! Needs `socat` and `pymodbus[serial]==3.16.1` (tests/run.sh installs both); fails, saying
//! so, when either is missing.

#[path = "support/pymodbus.rs"]
mod pymodbus;

use pmtr::bus::poll::poll;
use pmtr::config::LineSettings;
use pmtr::meter::driver::Reader;
use pmtr::meter::{pzem, rx380, Model};
use pmtr::modbus::transport::{open_serial, Transport};
use pmtr::modbus::{Exception, FrameError, Request};
use pmtr::reading::{Phase, Quantity, Sample};
use std::path::PathBuf;
use std::time::Duration;

fn pzem_image() -> Vec<u16> {
    pzem::encode(229.8, 4.321, 950.5, 1234.567, 50.1, 0.96, false).to_vec()
}

fn rx380_snapshot() -> rx380::Snapshot {
    rx380::Snapshot {
        kwh: 98765.432,
        kvah: 100000.0,
        kvarh: 1234.5,
        watts: -2500.0,
        va: 2700.0,
        var: 300.0,
        pf: -0.926,
        hz: 49.98,
        amps: [3.5, 3.25, 3.75, 0.5],
        line_volts: [398.0, 399.5, 401.0],
        phase_volts: [230.1, 229.9, 231.2],
    }
}

/// The pymodbus peer serving a PZEM at 4 and an RX380 at 1; returns it and the gateway's end.
fn start_peer() -> (pymodbus::Peer, PathBuf) {
    let images = serde_json::json!({
        "4": { "start": 0, "ir": pzem_image() },
        "1": { "start": 4000, "ir": rx380::encode(&rx380_snapshot()).to_vec() },
    });
    pymodbus::start("pymodbus_meters.py", &images)
}

fn line() -> LineSettings {
    LineSettings::DEFAULT
}

fn get(s: &[Sample], p: Phase, q: Quantity) -> f64 {
    s.iter().find(|x| x.phase == p && x.quantity == q).unwrap_or_else(|| panic!("{p:?} {q:?}")).value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pzem_and_rx380_read_from_pymodbus() {
    let (_peer, a) = start_peer();
    let stream = open_serial(a.to_str().unwrap(), &line()).unwrap();
    let mut t = Transport::new(stream, &line(), None);
    let timeout = Duration::from_millis(1000);

    let pz = pmtr::app::tools::adhoc_meter(Model::Pzem016, 4);
    let mut plan = Reader::new(Model::Pzem016, 4).first_plan(1);
    let s = poll(&mut t, &pz, &mut plan, 0, 3, timeout, &mut |_| {}).await.unwrap().unwrap().samples;
    assert!((get(&s, Phase::L1, Quantity::Voltage) - 229.8).abs() < 1e-9);
    assert!((get(&s, Phase::L1, Quantity::Current) - 4.321).abs() < 1e-9);
    assert!((get(&s, Phase::L1, Quantity::ActivePower) - 950.5).abs() < 1e-9);
    assert!((get(&s, Phase::L1, Quantity::ActiveEnergy) - 1234.567).abs() < 1e-9);
    assert!((get(&s, Phase::L1, Quantity::Frequency) - 50.1).abs() < 1e-9);
    assert!((get(&s, Phase::L1, Quantity::PowerFactor) - 0.96).abs() < 1e-9);

    let rx = pmtr::app::tools::adhoc_meter(Model::Rx380, 1);
    let block = Reader::new(Model::Rx380, 1).first_plan(1);
    let mut plan = block;
    let s = poll(&mut t, &rx, &mut plan, 0, 3, timeout, &mut |_| {}).await.unwrap().unwrap().samples;
    assert_eq!(plan, block, "pymodbus serves the whole block");
    let v = rx380_snapshot();
    assert!((get(&s, Phase::Total, Quantity::ActiveEnergy) - v.kwh).abs() < 1e-6);
    assert_eq!(get(&s, Phase::Total, Quantity::ActivePower), -2500.0);
    assert!((get(&s, Phase::Total, Quantity::PowerFactor) - v.pf).abs() < 1e-9);
    assert!((get(&s, Phase::Total, Quantity::Frequency) - 49.98).abs() < 1e-9);
    assert!((get(&s, Phase::L12, Quantity::Voltage) - 398.0).abs() < 1e-9);
    assert!((get(&s, Phase::L3, Quantity::Voltage) - 231.2).abs() < 1e-9);
    assert_eq!(get(&s, Phase::N, Quantity::Current), 0.5);

    // A register the device does not have: pymodbus answers with an exception, which we decode.
    let out = t.transact(&Request::read_input(4, 100, 2), timeout).await.unwrap();
    assert_eq!(out.result, Err(FrameError::Exception(Exception::IllegalDataAddress)));
    // An address nobody has. A real bus stays silent; pymodbus 3.16 answers for the missing
    // device with exception 4 even when told to ignore it. Either way no reading, and the next
    // read still works.
    let out = t.transact(&Request::read_input(9, 0, 10), Duration::from_millis(300)).await.unwrap();
    assert!(
        matches!(out.result, Err(FrameError::Timeout | FrameError::Exception(Exception::SlaveDeviceFailure))),
        "{out:?}"
    );
    let mut plan = Reader::new(Model::Pzem016, 4).first_plan(1);
    let s = poll(&mut t, &pz, &mut plan, 0, 3, timeout, &mut |_| {}).await.unwrap().unwrap().samples;
    assert!((get(&s, Phase::L1, Quantity::Voltage) - 229.8).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_finds_both_meters_on_a_pymodbus_port() {
    let (peer, a) = start_peer();
    let state = peer.dir.path().join("state");
    let text = format!(
        r#"
[gateway]
name = "peer"
state_dir = "{state}"
[[bus]]
name = "b"
ports = ["{port}"]
timeout = "1s"
[[meter]]
name = "pz"
model = "pzem-016"
address = 4
poll = "500ms"
[[meter]]
name = "rx"
model = "rx380"
address = 1
poll = "500ms"
"#,
        state = state.display(),
        port = a.display()
    );
    let config = pmtr::config::load_str(&text, "peer.toml").unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let engine = pmtr::bus::BusEngine::start(&config, tx, stop_rx);
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 2 {
        let r = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("both meters read within 20 s")
            .unwrap();
        seen.insert(r.meter.to_string());
    }
    let _ = stop_tx.send(true);
    let status = engine.status.clone();
    engine.join().await;
    let snap = status.snapshot();
    assert_eq!(snap["pz"].port.as_deref(), Some(a.to_str().unwrap()));
    assert_eq!(snap["rx"].port.as_deref(), Some(a.to_str().unwrap()));
    assert!(snap["pz"].counters.readings >= 1 && snap["rx"].counters.readings >= 1);
}
