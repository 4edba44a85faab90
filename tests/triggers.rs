//! Triggers end to end: a simulated PZEM on a pseudo-terminal, the whole `pmtr run` in process
//! with a fake GPIO board, and a CSV sink as storage. The voltage crosses a threshold; the
//! relay must switch no earlier than `hold` / `recovery` allow, and every transition must be
//! in storage. A latched trip must survive a restart, with the relay back at its tripped level
//! before the first reading.

use pmtr::config::Config;
use pmtr::relay::FakeBoard;
use pmtr::sim::{Profile, SimPort, SimPortOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

const PIN: u8 = 17;

fn sim(dir: &Path, volts: f64) -> SimPort {
    let line = pmtr::config::LineSettings {
        baud: 9600,
        data_bits: 8,
        parity: pmtr::config::Parity::None,
        stop_bits: 1,
    };
    SimPort::spawn(SimPortOptions {
        link: Some(dir.join("ttyUSB0")),
        line,
        turnaround: Duration::from_millis(5),
        meters: vec![format!("pzem-016@4,volts={volts}").parse().unwrap()],
    })
    .unwrap()
}

fn config(dir: &Path, extra: &str) -> Config {
    let text = format!(
        r#"
[gateway]
name = "t"
state_dir = "{state}"
gpio = "fake"
[[bus]]
name = "b"
ports = ["{ports}"]
timeout = "100ms"
rescan = "200ms"
[[meter]]
name = "main"
model = "pzem-016"
address = 4
poll = "200ms"
[[sink]]
type = "csv"
dir = "{csv}"
flush_interval = "100ms"
[[relay]]
name = "motor"
pin = {PIN}
default = "on"
[[trigger]]
name = "overvoltage"
meter = "main"
when = "L1U > 253"
hold = "1s"
recovery = "1s"
relays = ["motor"]
{extra}
"#,
        state = dir.join("state").display(),
        ports = dir.join("ttyUSB*").display(),
        csv = dir.join("csv").display(),
    );
    pmtr::config::load_str(&text, "test.toml").unwrap()
}

/// `pmtr run` in this process, with the relays on `board`.
struct Daemon {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    fn start(config: Config, board: &FakeBoard) -> Daemon {
        let (stop, stopped) = oneshot::channel::<()>();
        let gpio = Box::new(board.gpio());
        let task = tokio::spawn(pmtr::app::run::run_with(config, Some(gpio), async move {
            let _ = stopped.await;
        }));
        Daemon { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn set_volts(port: &SimPort, volts: f64) {
    port.with_slave(4, |s| s.set_profile(Profile::Script(vec![(0.0, volts)]))).unwrap();
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
    let restart = chrono::Utc::now();
    let board = FakeBoard::new();
    let daemon = Daemon::start(config(dir.path(), latching), &board);
    board.wait_level(PIN, false, Duration::from_secs(5)).await.expect("claimed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    daemon.stop().await;

    let events = board.events_of(PIN);
    assert_eq!(events.len(), 1, "claimed off and never switched: {events:?}");
    assert!(!events[0].high);
    let first_reading = csv_rows(dir.path(), "main-")
        .iter()
        .map(|r| time_of(r))
        .filter(|t| *t >= restart)
        .min()
        .expect("readings after the restart");
    assert!(
        events[0].time <= first_reading,
        "the relay was claimed at {} after the first reading at {first_reading}",
        events[0].time
    );
    let restored = csv_rows(dir.path(), "changes-")
        .into_iter()
        .filter(|r| time_of(r) >= restart)
        .map(|r| (r[2].clone(), r[3].clone()))
        .collect::<Vec<_>>();
    assert_eq!(
        restored,
        vec![("overvoltage".to_owned(), "restored".to_owned()), ("motor".to_owned(), "switched".to_owned())]
    );
}
