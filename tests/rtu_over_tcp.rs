//! A bus of `kind = "rtu-over-tcp"`: a network converter played by our simulated PZEM-016 on a
//! pseudo-terminal behind a socat TCP relay, read by `pmtr run` in process; the connection is
//! then cut (the relay killed) and restored (started again), and the readings stop (a gap,
//! never a zero) and come back. Needs `socat` (tests/run.sh installs it).

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/servers.rs"]
mod servers;

use gateway::Daemon;
use pmtr::relay::FakeBoard;
use pmtr::sim::{SimPort, SimPortOptions};
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VOLTS: f64 = 228.7;
const AMPS: f64 = 1.234;

/// `socat TCP-LISTEN:port,fork FILE:tty`, in a process group of its own so that killing the
/// group also ends the child serving the open connection.
struct Relay(Child);

impl Relay {
    fn start(port: u16, tty: &Path) -> Relay {
        let child = Command::new("socat")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
            .arg(format!("FILE:{},raw,echo=0", tty.display()))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("socat is required for this test ({e}): install the Debian package `socat` (tests/run.sh does)")
            });
        Relay(child)
    }

    fn stop(mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
        std::mem::forget(self);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn config(dir: &Path, tcp_port: u16, api: u16) -> pmtr::config::Config {
    let text = format!(
        r#"
[gateway]
name = "rtu-tcp-test"
state_dir = "{state}"
gpio = "fake"
[[bus]]
name = "converter"
kind = "rtu-over-tcp"
host = "127.0.0.1:{tcp_port}"
timeout = "200ms"
max_backoff = "2s"
[[meter]]
name = "main"
model = "pzem-016"
address = 4
bus = "converter"
poll = "200ms"
[status]
listen = "127.0.0.1:{api}"
"#,
        state = dir.join("state").display(),
    );
    pmtr::config::load_str(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

async fn meter_json(base: &str) -> Option<Value> {
    let url = format!("{base}/api/meters/main");
    let r =
        tokio::task::spawn_blocking(move || servers::try_http("GET", &url, &[], b"")).await.unwrap().ok()?;
    (r.status == 200).then(|| serde_json::from_slice(&r.body).unwrap())
}

/// Waits (up to 20 s) until the meter's status satisfies `ok`.
async fn until(base: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(m) = meter_json(base).await {
            if ok(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "{what} within 20 s: {m}");
        } else {
            assert!(Instant::now() < deadline, "{what} within 20 s: no status API");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn readings(m: &Value) -> u64 {
    m["counters"]["readings"].as_u64().unwrap_or_else(|| panic!("no readings counter in {m}"))
}

fn check_values(m: &Value) {
    let v = &m["reading"]["values"];
    assert_eq!(v["L1U"].as_f64(), Some(VOLTS), "{m}");
    assert_eq!(v["L1I"].as_f64(), Some(AMPS), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_behind_a_converter_is_read_and_a_lost_connection_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let tty = dir.path().join("ttyConverter");
    let line = pmtr::config::LineSettings {
        baud: 9600,
        data_bits: 8,
        parity: pmtr::config::Parity::None,
        stop_bits: 1,
    };
    let sim = SimPort::spawn(SimPortOptions {
        link: Some(tty.clone()),
        line,
        turnaround: Duration::from_millis(5),
        meters: vec![format!("pzem-016@4,volts={VOLTS},amps={AMPS},pf=1,hz=50,kwh=3").parse().unwrap()],
    })
    .unwrap();
    let (tcp_port, api) = (servers::free_port(), servers::free_port());
    let relay = Relay::start(tcp_port, &tty);
    let base = format!("http://127.0.0.1:{api}");
    let board = FakeBoard::new();
    let daemon = Daemon::start(config(dir.path(), tcp_port, api), &board);

    let host = format!("127.0.0.1:{tcp_port}");
    let m = until(&base, "a first reading", |m| m["state"] == "ok" && !m["reading"].is_null()).await;
    check_values(&m);
    assert_eq!(m["port"].as_str(), Some(host.as_str()), "{m}");
    let m = until(&base, "three readings", |m| readings(m) >= 3).await;
    check_values(&m);
    assert_eq!(m["counters"]["crc_errors"], 0, "{m}");

    // The converter goes away: the meter is searched for, no reading is made up meanwhile.
    relay.stop();
    let m =
        until(&base, "the meter searching after the connection is lost", |m| m["state"] == "searching").await;
    let frozen = readings(&m);
    assert!(m["port"].is_null(), "{m}");
    // It stays so while the relay is down (the reconnection attempts are refused).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = meter_json(&base).await.unwrap();
    assert_eq!(readings(&m), frozen, "no reading while the converter is away: {m}");
    assert_eq!(m["state"], "searching", "{m}");

    // Back: readings again, with the meter's values.
    let _relay = Relay::start(tcp_port, &tty);
    let m = until(&base, "readings again after the connection is restored", |m| {
        m["state"] == "ok" && readings(m) >= frozen + 2
    })
    .await;
    check_values(&m);
    assert_eq!(m["port"].as_str(), Some(host.as_str()), "{m}");
    daemon.stop().await;
    assert!(sim.stats().bytes_in > 0);
}

/// `pmtr read --rtu-over-tcp HOST:PORT --address N` and `pmtr scan --rtu-over-tcp HOST:PORT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pmtr_read_and_scan_reach_a_meter_behind_a_converter() {
    let dir = tempfile::tempdir().unwrap();
    let tty = dir.path().join("ttyConverter");
    let line = pmtr::config::LineSettings {
        baud: 9600,
        data_bits: 8,
        parity: pmtr::config::Parity::None,
        stop_bits: 1,
    };
    let _sim = SimPort::spawn(SimPortOptions {
        link: Some(tty.clone()),
        line,
        turnaround: Duration::from_millis(5),
        meters: vec![format!("pzem-016@4,volts={VOLTS},amps={AMPS},pf=1,hz=50,kwh=3").parse().unwrap()],
    })
    .unwrap();
    let tcp_port = servers::free_port();
    let _relay = Relay::start(tcp_port, &tty);
    let host = format!("127.0.0.1:{tcp_port}");
    let pmtr = env!("CARGO_BIN_EXE_pmtr");
    // socat listens a moment after it starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = tokio::process::Command::new(pmtr)
            .args(["read", "--rtu-over-tcp", &host, "--address", "4", "--json"])
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
    let volts = reading["samples"].as_array().unwrap().iter().find(|s| s["quantity"] == "Voltage").unwrap();
    assert_eq!(volts["value"].as_f64(), Some(VOLTS), "{reading}");

    let out = tokio::process::Command::new(pmtr)
        .args(["scan", "--rtu-over-tcp", &host, "--addresses", "3-5", "--timeout", "200ms"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let found: Vec<&str> = text.lines().collect();
    assert_eq!(found.len(), 1, "only address 4 answers: {text}");
    assert!(found[0].split_whitespace().nth(1) == Some("4") && found[0].contains("pzem"), "{text}");
}
