//! Triggers end to end: a simulated PZEM on a pseudo-terminal, the whole `pmtr run` in process
//! with a fake GPIO board, and a CSV sink as storage. The voltage crosses a threshold; the
//! relay must switch no earlier than `hold` / `recovery` allow, and every transition must be
//! in storage. A latched trip must survive a restart, with the relay back at its tripped level
//! before the first reading.

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/process.rs"]
mod process;

use gateway::{set_volts, sim, Daemon, PIN};
use pmtr::config::Config;
use pmtr::relay::FakeBoard;
use process::Proc;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

const TRIGGER: &str = r#"
[[trigger]]
name = "overvoltage"
meter = "main"
when = "L1U > 253"
hold = "1s"
recovery = "1s"
relays = ["motor"]
"#;

fn config(dir: &Path, extra: &str) -> Config {
    pmtr::config::load_str(&toml_of(dir, extra), "test.toml").unwrap()
}

fn toml_of(dir: &Path, extra: &str) -> String {
    gateway::toml(dir, "t", &format!("{TRIGGER}{extra}"))
}

fn csv_files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("csv"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    files.sort();
    files
}

/// The rows of the CSV files starting with `prefix`, split on commas (no quoted commas in
/// the columns read here), header rows left out.
fn csv_rows(dir: &Path, prefix: &str) -> Vec<Vec<String>> {
    csv_files(dir, prefix)
        .iter()
        .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| !l.starts_with("time"))
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

/// Runs the `pmtr` binary; returns its standard output, failing on a non-zero exit.
async fn pmtr(args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pmtr")).args(args).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "pmtr {args:?}: {}{}", text, String::from_utf8_lossy(&out.stderr));
    text
}

fn time_of(row: &[String]) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(&row[0]).unwrap().with_timezone(&chrono::Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voltage_crossing_switches_the_relay_after_hold_and_recovery_and_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let port = sim(dir.path(), 230.0);
    let board = FakeBoard::new();
    let daemon = Daemon::start(config(dir.path(), ""), &board);
    board
        .wait_level(PIN, true, Duration::from_secs(5))
        .await
        .expect("the relay is claimed at its default, on");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(board.events_of(PIN).len(), 1, "steady 230 V: no switching, {:?}", board.events_of(PIN));

    let crossed = Instant::now();
    set_volts(&port, 260.0);
    board.wait_level(PIN, false, Duration::from_secs(5)).await.expect("tripped: the relay goes off");
    let tripped = crossed.elapsed();
    assert!(tripped >= Duration::from_secs(1), "tripped {tripped:?} after the crossing, before hold");
    assert!(tripped < Duration::from_millis(2500), "tripped {tripped:?} after the crossing");

    let back = Instant::now();
    set_volts(&port, 230.0);
    board.wait_level(PIN, true, Duration::from_secs(5)).await.expect("released: the relay goes back on");
    let released = back.elapsed();
    assert!(
        released >= Duration::from_secs(1),
        "released {released:?} after the voltage fell, before recovery"
    );
    assert!(released < Duration::from_millis(2500), "released {released:?} after the voltage fell");
    daemon.stop().await;

    let writes: Vec<bool> = board.events_of(PIN).iter().map(|e| e.high).collect();
    assert_eq!(writes, vec![true, false, true], "claim on, trip off, release on");

    // Storage: the transitions, in order, next to the readings.
    let changes: Vec<(String, String, String, String)> = csv_rows(dir.path(), "changes-")
        .into_iter()
        .map(|r| (r[1].clone(), r[2].clone(), r[3].clone(), r[4].clone()))
        .collect();
    let want = |s: &str, n: &str, e: &str, a: &str| (s.to_owned(), n.to_owned(), e.to_owned(), a.to_owned());
    assert_eq!(
        changes,
        vec![
            want("relay", "motor", "switched", "1"),
            want("trigger", "overvoltage", "tripped", "1"),
            want("relay", "motor", "switched", "0"),
            want("trigger", "overvoltage", "released", "0"),
            want("relay", "motor", "switched", "1"),
        ]
    );
    assert!(!csv_rows(dir.path(), "main-").is_empty(), "readings are stored too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latched_trip_comes_back_before_the_first_reading_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = sim(dir.path(), 260.0);
    let latching = "latch = true";

    let board = FakeBoard::new();
    let daemon = Daemon::start(config(dir.path(), latching), &board);
    board.wait_level(PIN, false, Duration::from_secs(5)).await.expect("latched: the relay goes off");
    daemon.stop().await;
    let saved = std::fs::read_to_string(dir.path().join("state/triggers.json")).unwrap();
    assert!(saved.contains("\"latched\": true"), "{saved}");

    // The fault is gone, the daemon restarts: the relay must come back off, at once, and stay.
    set_volts(&port, 230.0);
    // What the first run stored is told apart by count, not by time: the CSV keeps milliseconds,
    // and a change recorded in the millisecond of the restart reads as earlier than it.
    let changes_before = csv_rows(dir.path(), "changes-").len();
    let readings_before = csv_rows(dir.path(), "main-").len();
    let board = FakeBoard::new();
    let daemon = Daemon::start(config(dir.path(), latching), &board);
    board.wait_level(PIN, false, Duration::from_secs(5)).await.expect("claimed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = board.events_of(PIN);
    assert_eq!(events.len(), 1, "claimed off and never switched: {events:?}");

    // Reset by hand, with the command line, through the daemon's control socket.
    let socket = dir.path().join("state/control.sock");
    let out = pmtr(&["trigger", "list", "--socket", socket.to_str().unwrap()]).await;
    assert!(out.contains("overvoltage") && out.contains("latched"), "{out}");
    let out = pmtr(&["trigger", "reset", "overvoltage", "--socket", socket.to_str().unwrap()]).await;
    assert!(out.contains("reset"), "{out}");
    board.wait_level(PIN, true, Duration::from_secs(5)).await.expect("reset: the relay goes back on");
    // A force for longer than anyone means is refused, not a panic of the daemon.
    let huge = pmtr::control::Request::Force {
        relay: "motor".into(),
        level: pmtr::relay::Level::Off,
        seconds: Some(u64::MAX),
    };
    match pmtr::control::client::request(&socket, &huge).await.unwrap() {
        pmtr::control::Response::Error { message } => {
            assert!(message.contains("at most 366 days"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Forced off for maintenance, then handed back.
    pmtr(&["relay", "force", "motor", "off", "--socket", socket.to_str().unwrap()]).await;
    board.wait_level(PIN, false, Duration::from_secs(5)).await.expect("forced off");
    pmtr(&["relay", "release", "motor", "--socket", socket.to_str().unwrap()]).await;
    board.wait_level(PIN, true, Duration::from_secs(5)).await.expect("released: its triggers decide");
    daemon.stop().await;
    assert!(!socket.exists(), "the socket is removed at stop");
    assert!(!events[0].high);
    let first_reading = csv_rows(dir.path(), "main-")
        .iter()
        .skip(readings_before)
        .map(|r| time_of(r))
        .min()
        .expect("readings after the restart");
    assert!(
        events[0].time <= first_reading,
        "the relay was claimed at {} after the first reading at {first_reading}",
        events[0].time
    );
    let restored = csv_rows(dir.path(), "changes-")
        .into_iter()
        .skip(changes_before)
        .map(|r| (r[2].clone(), r[3].clone()))
        .collect::<Vec<_>>();
    let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        restored,
        vec![
            s("overvoltage", "restored"),
            s("motor", "switched"),
            s("overvoltage", "reset"),
            s("motor", "switched"),
            s("motor", "forced"),
            s("motor", "switched"),
            s("motor", "unforced"),
            s("motor", "switched"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_a_latch_the_next_start_claims_the_relay_tripped() {
    use pmtr::relay::fake::wait_log_level;
    let dir = tempfile::tempdir().unwrap();
    let port = sim(dir.path(), 260.0);
    let text = toml_of(dir.path(), "latch = true");
    let file = dir.path().join("pmtr.toml");
    std::fs::write(&file, text).unwrap();
    let log = dir.path().join("state/fake-gpio.log");
    let start = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pmtr"));
        cmd.args(["run", "--config", file.to_str().unwrap()]).stderr(std::process::Stdio::null());
        Proc::start("pmtr", &mut cmd, "cargo build")
    };

    let mut first = start();
    let seen = wait_log_level(&log, PIN, false, Duration::from_secs(10)).await;
    assert!(seen.is_ok(), "no trip in the fake GPIO log: {seen:?}");
    // The save is written off the trigger task: give it its moment, then crash hard.
    let saved = dir.path().join("state/triggers.json");
    for _ in 0..100 {
        if std::fs::read_to_string(&saved).is_ok_and(|s| s.contains("\"latched\": true")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill(); // SIGKILL
    let lines_before = std::fs::read_to_string(&log).unwrap().lines().count();

    set_volts(&port, 230.0);
    let mut second = start();
    let claimed = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(line) = text.lines().nth(lines_before) {
            break line.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<String> =
        std::fs::read_to_string(&log).unwrap().lines().skip(lines_before).map(str::to_owned).collect();
    second.kill();
    assert!(claimed.ends_with(&format!("pin {PIN} low claim")), "the restart claimed {claimed:?}");
    assert_eq!(after.len(), 1, "and never switched it with good data: {after:?}");
}
