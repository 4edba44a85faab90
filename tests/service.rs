//! `pmtr run` as systemd runs it: the real binary, with `$NOTIFY_SOCKET` (a datagram socket
//! this test reads), `$WATCHDOG_USEC` and `$JOURNAL_STREAM` set, a simulated PZEM on a
//! pseudo-terminal, relays on the fake GPIO, and real signals: SIGHUP with a broken and with a
//! good configuration, SIGTERM. And SIGTERM during a database outage, with a CSV sink as the
//! witness of every reading taken. And with its stdout and stderr gone: it goes on.

#[path = "support/servers.rs"]
mod servers;
#[path = "support/simulator.rs"]
mod simulator;

use pmtr::sim::SimPort;
use servers::{Managed, Proc, VictoriaMetrics};
use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn pzem(dir: &Path) -> SimPort {
    simulator::spawn_with(
        &dir.join("ttyUSB0"),
        simulator::line_8n1(),
        Duration::from_millis(2),
        &["pzem-016@4,volts=230"],
    )
}

/// The messages pmtr sends to "systemd", as they come.
struct NotifySocket {
    path: PathBuf,
    got: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                g.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        NotifySocket { path, got }
    }

    fn messages(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }

    fn count(&self, prefix: &str) -> usize {
        self.messages().iter().filter(|m| m.starts_with(prefix)).count()
    }

    /// Waits until `n` messages starting with `prefix` have come.
    fn wait_for(&self, prefix: &str, n: usize, log: &Path) {
        wait_until(
            Duration::from_secs(20),
            || self.count(prefix) >= n,
            || format!("{n} × {prefix:?} from pmtr; got {:?}\n{}", self.messages(), read(log)),
        );
    }
}

fn wait_until(within: Duration, mut done: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "waited {within:?} for {}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn signal(p: &Proc, s: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid() as i32), s).unwrap();
}

fn spawn(cfg: &Path, log: &Path, notify: Option<&NotifySocket>) -> Proc {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pmtr"));
    c.args(["run", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(n) = notify {
        // As systemd sets them for Type=notify, WatchdogSec=1s, output to the journal.
        c.env("NOTIFY_SOCKET", &n.path).env("WATCHDOG_USEC", "1000000").env("JOURNAL_STREAM", "8:12345");
    }
    Proc::start("pmtr", &mut c, "cargo build")
}

/// Waits for the process to end, at most `within`.
fn wait_exit(p: &mut Proc, within: Duration, log: &Path) -> std::process::ExitStatus {
    p.wait_exit(within).unwrap_or_else(|| {
        p.kill();
        panic!("pmtr did not exit within {within:?}\n{}", read(log))
    })
}

fn config(dir: &Path, extra_sink: bool) -> String {
    let mut s = format!(
        r#"[gateway]
name = "gw"
state_dir = "{state}"
gpio = "fake"

[[bus]]
name = "house"
ports = ["{ports}"]
timeout = "100ms"
rescan = "200ms"

[[meter]]
name = "main"
model = "pzem-016"
address = 4
poll = "200ms"

[[sink]]
name = "csv"
type = "csv"
dir = "{csv}"
flush_interval = "100ms"

[[relay]]
name = "motor"
pin = 17
default = "on"
on_shutdown = "default"

[[trigger]]
name = "over"
meter = "main"
when = "L1U > 100"
hold = "0s"
recovery = "1s"
relays = ["motor"]
"#,
        state = dir.join("state").display(),
        ports = dir.join("ttyUSB*").display(),
        csv = dir.join("csv").display(),
    );
    if extra_sink {
        s.push_str(&format!(
            "\n[[sink]]\nname = \"csv2\"\ntype = \"csv\"\ndir = \"{}\"\nflush_interval = \"100ms\"\n",
            dir.join("csv2").display()
        ));
    }
    s
}

/// Rows of the meter's CSV files in `dir` (every day's file).
fn csv_rows(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut rows = vec![];
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("main-") && name.ends_with(".csv") {
            rows.extend(read(&e.path()).lines().skip(1).map(str::to_string));
        }
    }
    rows
}

/// The fake GPIO's log: `(high, op)` of pin 17, in order.
fn pin_log(dir: &Path) -> Vec<(bool, String)> {
    read(&dir.join("state/fake-gpio.log"))
        .lines()
        .filter_map(pmtr::relay::fake::FakeEvent::parse_log_line)
        .filter(|(pin, _, _)| *pin == 17)
        .map(|(_, high, op)| (high, op.as_str().to_string()))
        .collect()
}

#[test]
fn notify_watchdog_reload_and_stop_as_under_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let _meter = pzem(dir.path());
    let cfg = dir.path().join("pmtr.toml");
    std::fs::write(&cfg, config(dir.path(), false)).unwrap();
    let notify = NotifySocket::bind(dir.path());
    let log = dir.path().join("pmtr.log");
    let mut p = spawn(&cfg, &log, Some(&notify));

    // Ready once started, with a status line; then fed the watchdog every half second.
    notify.wait_for("READY=1", 1, &log);
    let ready = notify.messages().into_iter().find(|m| m.starts_with("READY=1")).unwrap();
    assert!(ready.contains("\nSTATUS="), "{ready:?}");
    notify.wait_for("WATCHDOG=1", 3, &log);
    // 230 V > 100 V: the trigger trips and the relay (on by default) goes off.
    wait_until(
        Duration::from_secs(10),
        || pin_log(dir.path()).contains(&(false, "write".into())),
        || format!("the relay switched off: {:?}\n{}", pin_log(dir.path()), read(&log)),
    );
    wait_until(Duration::from_secs(10), || csv_rows(&dir.path().join("csv")).len() >= 3, || read(&log));

    // Five seconds after the start, the pages it touched go back; the daemon reads on, on
    // code mapped again from its file.
    wait_until(
        Duration::from_secs(20),
        || read(&log).contains("gave back the pages the start touched"),
        || format!("the start's pages given back\n{}", read(&log)),
    );
    let rows = csv_rows(&dir.path().join("csv")).len();
    wait_until(
        Duration::from_secs(10),
        || csv_rows(&dir.path().join("csv")).len() >= rows + 3,
        || format!("readings go on after the pages went back\n{}", read(&log)),
    );

    // SIGHUP with a broken file: reported with file, line and key; the old configuration runs on.
    let good = read(&cfg);
    std::fs::write(&cfg, good.replace("address = 4", "adress = 4")).unwrap();
    signal(&p, nix::sys::signal::Signal::SIGHUP);
    notify.wait_for("RELOADING=1", 1, &log);
    notify.wait_for("READY=1", 2, &log);
    wait_until(Duration::from_secs(10), || read(&log).contains("reload refused"), || read(&log));
    let text = read(&log);
    let refused = text.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(refused.starts_with("<3>"), "an error for journald: {refused}");
    let key = text.lines().find(|l| l.contains("adress")).unwrap_or_else(|| panic!("the key: {text}"));
    assert!(key.starts_with(&format!("<3>ERROR {}:", cfg.display())), "file, line and key: {key}");
    let rows = csv_rows(&dir.path().join("csv")).len();
    wait_until(
        Duration::from_secs(10),
        || csv_rows(&dir.path().join("csv")).len() >= rows + 5,
        || format!("readings go on after a refused reload\n{}", read(&log)),
    );
    assert!(p.exited().is_none(), "still running");

    // SIGHUP with a good file (a second sink): the new configuration runs; the relay was
    // handed over at its level, never back to its default on the way.
    let before_reload = pin_log(dir.path()).len();
    std::fs::write(&cfg, config(dir.path(), true)).unwrap();
    signal(&p, nix::sys::signal::Signal::SIGHUP);
    notify.wait_for("RELOADING=1", 2, &log);
    notify.wait_for("READY=1", 3, &log);
    wait_until(
        Duration::from_secs(10),
        || csv_rows(&dir.path().join("csv2")).len() >= 3,
        || format!("the new sink writes\n{}", read(&log)),
    );
    let during: Vec<(bool, String)> = pin_log(dir.path())[before_reload..].to_vec();
    assert_eq!(during, [(false, "claim".to_string())], "the relay across the reload");
    assert!(read(&log).contains("reloaded"), "{}", read(&log));

    // SIGHUP with a file that loads but cannot start (its control socket is held by another
    // process, as by a second pmtr): the previous configuration starts again, the relay still
    // handed over as it is. (A spool folder that cannot be opened no longer stops a start.)
    let before_reload = pin_log(dir.path()).len();
    let taken = dir.path().join("taken.sock");
    let _holder = std::os::unix::net::UnixListener::bind(&taken).unwrap();
    let blocked = config(dir.path(), true).replace(
        "gpio = \"fake\"\n",
        &format!("gpio = \"fake\"\ncontrol_socket = \"{}\"\n", taken.display()),
    );
    std::fs::write(&cfg, blocked).unwrap();
    signal(&p, nix::sys::signal::Signal::SIGHUP);
    notify.wait_for("RELOADING=1", 3, &log);
    notify.wait_for("READY=1", 4, &log);
    wait_until(
        Duration::from_secs(10),
        || read(&log).contains("starting the previous one again"),
        || read(&log),
    );
    let rows = csv_rows(&dir.path().join("csv2")).len();
    wait_until(
        Duration::from_secs(10),
        || csv_rows(&dir.path().join("csv2")).len() >= rows + 5,
        || format!("the previous configuration (with csv2) runs again\n{}", read(&log)),
    );
    let during: Vec<(bool, String)> = pin_log(dir.path())[before_reload..].to_vec();
    assert_eq!(during, [(false, "claim".to_string())], "the relay across the failed reload");

    // SIGTERM: STOPPING=1, on_shutdown = "default" puts the relay back on, exit 0.
    signal(&p, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut p, Duration::from_secs(30), &log);
    assert!(status.success(), "{status:?}\n{}", read(&log));
    assert_eq!(notify.count("STOPPING=1"), 1, "{:?}", notify.messages());
    assert_eq!(pin_log(dir.path()).last(), Some(&(true, "write".to_string())), "back to its default at stop");

    // Journald lines: a priority prefix, no timestamp of our own (journald adds it).
    let text = read(&log);
    for line in text.lines() {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].iter().any(|p| line.starts_with(p)),
            "no priority prefix: {line:?}"
        );
        assert!(!line.as_bytes()[3..].iter().take(4).all(u8::is_ascii_digit), "a timestamp: {line:?}");
    }
    assert!(text.lines().any(|l| l.starts_with("<6>") && l.contains("pmtr started")), "{text}");
}

#[test]
fn sigterm_during_an_outage_loses_nothing() {
    let mut vm = VictoriaMetrics::start();
    vm.stop();
    let dir = tempfile::tempdir().unwrap();
    let _meter = pzem(dir.path());
    let cfg = dir.path().join("pmtr.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nname = \"gw\"\nstate_dir = \"{state}\"\n\
             [[bus]]\nname = \"house\"\nports = [\"{port}\"]\ntimeout = \"100ms\"\n\
             [[meter]]\nname = \"main\"\nmodel = \"pzem-016\"\naddress = 4\npoll = \"100ms\"\n\
             [[sink]]\nname = \"influx\"\ntype = \"influxdb2\"\nurl = \"{url}\"\norg = \"o\"\nbucket = \"b\"\n\
             token = \"t\"\nmax_backoff = \"1s\"\n\
             [[sink]]\nname = \"witness\"\ntype = \"csv\"\ndir = \"{csv}\"\nflush_interval = \"100ms\"\n",
            state = dir.path().join("state").display(),
            port = dir.path().join("ttyUSB*").display(),
            url = vm.url(),
            csv = dir.path().join("csv").display(),
        ),
    )
    .unwrap();
    let log = dir.path().join("pmtr.log");
    let mut p = spawn(&cfg, &log, None);
    wait_until(Duration::from_secs(20), || csv_rows(&dir.path().join("csv")).len() >= 30, || read(&log));
    // SIGTERM while readings keep coming and the database is away.
    signal(&p, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut p, Duration::from_secs(30), &log);
    assert!(status.success(), "{status:?}\n{}", read(&log));

    // Every reading the witness has (the CSV sink writes all it got before exiting) comes
    // out of the spool into the database once it is back.
    let taken: BTreeSet<i64> = csv_rows(&dir.path().join("csv"))
        .iter()
        .map(|row| {
            let t = row.split(',').next().unwrap();
            chrono::DateTime::parse_from_rfc3339(t).unwrap_or_else(|e| panic!("{t}: {e}")).timestamp_millis()
        })
        .collect();
    assert!(taken.len() >= 30, "{}", taken.len());
    vm.restart();
    let log2 = dir.path().join("pmtr2.log");
    let mut p = spawn(&cfg, &log2, None);
    let stored = vm.timestamps_once_in("pmtr_voltage", &taken, Duration::from_secs(30));
    signal(&p, nix::sys::signal::Signal::SIGTERM);
    wait_exit(&mut p, Duration::from_secs(30), &log2);
    let missing: Vec<&i64> = taken.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} of {} readings taken before the SIGTERM never reached the database\n{}",
        missing.len(),
        taken.len(),
        read(&log)
    );
    assert!(read(&log).contains("spool"), "{}", read(&log));
}

#[test]
fn with_its_stdout_and_stderr_gone_the_daemon_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let _meter = pzem(dir.path());
    let cfg = dir.path().join("pmtr.toml");
    std::fs::write(&cfg, config(dir.path(), false)).unwrap();
    // Pipes whose readers have gone: every log line (info and up) fails to be written.
    let gone = || {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(reader);
        std::process::Stdio::from(writer)
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pmtr"));
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdout(gone())
        .stderr(gone());
    let mut p = Proc::start("pmtr", &mut cmd, "cargo build");
    let csv = dir.path().join("csv");
    let log = dir.path().join("no-log");
    // It reads, stores and switches the relay while the logging of each fails.
    wait_until(Duration::from_secs(20), || csv_rows(&csv).len() >= 3, || "3 rows".into());
    assert!(p.exited().is_none(), "pmtr ended: {:?}", p.exited());
    let rows = csv_rows(&csv).len();
    wait_until(Duration::from_secs(20), || csv_rows(&csv).len() >= rows + 3, || "more rows".into());
    assert!(pin_log(dir.path()).iter().any(|(high, _)| !high), "the trigger opened the relay");
    signal(&p, nix::sys::signal::Signal::SIGTERM);
    let status = wait_exit(&mut p, Duration::from_secs(10), &log);
    assert!(status.success(), "{status:?}");
}
