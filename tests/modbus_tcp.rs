//! A bus of `kind = "tcp"` (Modbus TCP) against an independent server: pymodbus 3.16 serving a
//! PZEM-016 register image, worked out by hand below, at unit 4; `pmtr run` in process reads it
//! and the values in the status API are checked; a meter at a unit the server does not have
//! never gets a reading and does not stop the other. Then the server is stopped (a gap, the
//! meter searching) and started again (readings again). Needs `pymodbus==3.16.1` (tests/run.sh
//! installs it).

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/meter_api.rs"]
mod meter_api;
#[path = "support/servers.rs"]
mod servers;

use gateway::Daemon;
use meter_api::{meter_json, readings, until};
use pmtr::relay::FakeBoard;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The PZEM-016's input registers 0x0000..0x0009, as the meter presents them: voltage in 0.1 V;
/// current in mA and power in 0.1 W, each a 32-bit value low word first; energy in Wh, low word
/// first; frequency in 0.1 Hz; power factor in hundredths; the alarm flag.
/// 231.4 V, 5.678 A, 1250.3 W, 123,456 Wh (= 1 × 65536 + 57,920), 49.9 Hz, PF 0.95, no alarm.
const PZEM_IMAGE: [u16; 10] = [2314, 5678, 0, 12503, 0, 57920, 1, 499, 95, 0];

/// The pymodbus server, killed at drop.
struct Server(#[allow(dead_code)] servers::Proc);

impl Server {
    fn start(port: u16) -> Server {
        let ok = Command::new("python3")
            .args(["-c", "import pymodbus, sys; sys.exit(pymodbus.__version__ != '3.16.1')"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pymodbus==3.16.1 is required for this test and was not found: run tests/run.sh, which installs it");
        let images = serde_json::json!({ "4": { "start": 0, "ir": PZEM_IMAGE } });
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pymodbus_tcp_meters.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .arg(port.to_string())
            .arg(images.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut server = servers::Proc::start("python3", &mut cmd, "apt-get install python3");
        let mut buf = [0u8; 6];
        std::io::Read::read_exact(&mut server.take_stdout(), &mut buf)
            .expect("the pymodbus server did not start");
        assert_eq!(&buf, b"ready\n");
        Server(server)
    }
}

fn config(dir: &Path, tcp_port: u16, api: u16) -> pmtr::config::Config {
    let text = format!(
        r#"
[gateway]
name = "modbus-tcp-test"
state_dir = "{state}"
gpio = "fake"
[[bus]]
name = "lan"
kind = "tcp"
host = "127.0.0.1:{tcp_port}"
timeout = "300ms"
max_backoff = "2s"
[[meter]]
name = "main"
model = "pzem-016"
address = 4
poll = "200ms"
[[meter]]
name = "absent"
model = "pzem-016"
address = 9
poll = "200ms"
[status]
listen = "127.0.0.1:{api}"
"#,
        state = dir.join("state").display(),
    );
    pmtr::config::load_str(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// The values of [`PZEM_IMAGE`], as the status API shows them.
fn check_values(m: &Value) {
    let want =
        [("L1U", 231.4), ("L1I", 5.678), ("L1P", 1250.3), ("L1e", 123.456), ("L1f", 49.9), ("L1pf", 0.95)];
    meter_api::check_values(m, &want, 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modbus_tcp_meter_is_read_and_a_lost_server_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (tcp_port, api) = (servers::free_port(), servers::free_port());
    let server = Server::start(tcp_port);
    let base = format!("http://127.0.0.1:{api}");
    let board = FakeBoard::new();
    let daemon = Daemon::start(config(dir.path(), tcp_port, api), &board);

    let m = until(&base, "main", "a first reading", |m| m["state"] == "ok" && !m["reading"].is_null()).await;
    check_values(&m);
    assert_eq!(m["port"].as_str(), Some(format!("127.0.0.1:{tcp_port}").as_str()), "{m}");
    // The absent unit is probed (and gets no answer, or an exception) while main goes on.
    let absent = until(&base, "absent", "the absent unit probed twice", |m| {
        m["counters"]["probe_misses"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    assert_eq!(readings(&absent), 0, "{absent}");
    assert!(absent["reading"].is_null(), "{absent}");
    let before = readings(&meter_json(&base, "main").await.unwrap());
    let m = until(&base, "main", "more readings of main", |m| readings(m) >= before + 3).await;
    check_values(&m);

    // The server goes away: main is searched for, no reading is made up meanwhile.
    drop(server);
    let m =
        until(&base, "main", "main searching after the server is lost", |m| m["state"] == "searching").await;
    let frozen = readings(&m);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let m = meter_json(&base, "main").await.unwrap();
    assert_eq!(readings(&m), frozen, "no reading while the server is away: {m}");

    // Back: readings again.
    let _server = Server::start(tcp_port);
    let m = until(&base, "main", "readings again after the server is back", |m| {
        m["state"] == "ok" && readings(m) >= frozen + 2
    })
    .await;
    check_values(&m);
    daemon.stop().await;
}

/// `pmtr read --tcp HOST:PORT --unit N` and `pmtr scan --tcp HOST:PORT` against the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pmtr_read_and_scan_reach_a_modbus_tcp_unit() {
    let tcp_port = servers::free_port();
    let _server = Server::start(tcp_port);
    let host = format!("127.0.0.1:{tcp_port}");
    let pmtr = env!("CARGO_BIN_EXE_pmtr");
    // The server listens a moment after it says it is ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = tokio::process::Command::new(pmtr)
            .args(["read", "--tcp", &host, "--unit", "4", "--json"])
            .output()
            .await
            .unwrap();
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reading: Value = serde_json::from_slice(&out.stdout).unwrap();
    let value = |q: &str| {
        reading["samples"].as_array().unwrap().iter().find(|s| s["quantity"] == q).unwrap()["value"]
            .as_f64()
            .unwrap()
    };
    assert!((value("Voltage") - 231.4).abs() < 1e-9, "{reading}");
    assert!((value("ActiveEnergy") - 123.456).abs() < 1e-9, "{reading}");

    let out = tokio::process::Command::new(pmtr)
        .args(["scan", "--tcp", &host, "--addresses", "3-5", "--timeout", "300ms"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let four =
        text.lines().find(|l| l.split_whitespace().nth(1) == Some("4")).unwrap_or_else(|| panic!("{text}"));
    assert!(four.contains("pzem") && four.contains("231.4 V"), "{text}");
    // pymodbus answers for units it does not have with exception 4: listed as unknown, never as
    // a meter.
    assert_eq!(text.lines().filter(|l| l.contains("pzem")).count(), 1, "{text}");
}
