//! The `pmtr` binary as a user meets it, against simulated meters on pseudo-terminals.

#[path = "support/process.rs"]
mod process;
#[path = "support/simulator.rs"]
mod simulator;

use pmtr::sim::SimPort;
use process::Proc;
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
    simulator::spawn_with(link, simulator::line_8n1(), Duration::from_millis(2), meters)
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
    // No line settings given: 9600 8N1 and the three other defaults of the meter definitions.
    assert!(err.contains("40/40"), "progress reaches the end: {err}");
}

#[test]
fn the_demo_runs_by_itself() {
    let o = pmtr(&["demo", "--seconds", "4"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for m in ["mainA", "mainB", "gen", "workshop", "shed"] {
        assert!(out.lines().any(|l| l.starts_with(m) && l.contains("U=")), "{m} read: {out}");
    }
    // Not a terminal: plain lines, the events after `# `, the log on stderr.
    assert!(!out.contains('\x1b'), "no escape codes on a pipe: {out:?}");
    assert!(out.contains("# status API and live page on http://127.0.0.1:"), "{out}");
    assert!(err.contains("meter found"), "{err}");
}

/// Runs `pmtr demo ARGS` with its stdout on a pseudo-terminal of 50×150 (stderr a pipe):
/// what it wrote on the terminal (line ends as written by the program), its stderr, and
/// whether it succeeded.
fn demo_on_a_terminal(args: &[&str]) -> (String, String, bool) {
    use std::io::Read;
    let size = nix::pty::Winsize { ws_row: 50, ws_col: 150, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
    let mut t = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pmtr"));
    cmd.arg("demo")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::from(pty.slave))
        .stderr(std::process::Stdio::piped());
    let child = Proc::start("pmtr", &mut cmd, "cargo build");
    // Our copy of the terminal's slave side goes with the command: the reader sees EIO at the end.
    drop(cmd);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        // EIO once the demo has exited and closed the terminal.
        let _ = master.read_to_end(&mut out);
        out
    });
    let o = child.wait_with_output();
    let out = reader.join().unwrap();
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        o.status.success(),
    )
}

#[test]
fn on_a_terminal_the_demo_redraws_one_table_in_place() {
    let (out, err, ok) = demo_on_a_terminal(&["--seconds", "4", "--no-open"]);
    assert!(ok, "{err}\n{out}");
    assert!(err.is_empty(), "no log under the table: {err}");
    // Cleared once, then each frame from the top: every line cleared to its end, the rest of
    // the screen below the last one.
    assert!(out.starts_with("\x1b[?25l\x1b[2J"), "{out:?}");
    let frames: Vec<&str> = out.split("\x1b[H").skip(1).collect();
    assert!(frames.len() >= 3, "a frame a second: {}", frames.len());
    let last = frames.last().unwrap();
    let screen = last.split("\x1b[J").next().unwrap();
    assert!(screen.lines().all(|l| l.ends_with("\x1b[K")), "{screen:?}");
    let lines: Vec<&str> = screen.lines().map(|l| l.trim_end_matches("\x1b[K")).collect();
    assert!(lines.iter().all(|l| l.chars().count() <= 150), "cut to the terminal's width: {lines:#?}");
    let text = lines.join("\n");
    assert!(text.contains("live page: http://127.0.0.1:"), "{text}");
    let row = |name: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} row:\n{text}"))
    };
    // mainB's PZEM serves 119.8 V and 7.25 A; the RX380 three phases; the PMTR server its own.
    let main_b = row("mainB");
    assert!(main_b.contains(" ok ") && main_b.contains("119.8") && main_b.contains("7.25"), "{main_b}");
    assert!(row("workshop").contains(" ok "), "{text}");
    assert!(row("shed").contains("ttyPLC0 @5"), "{text}");
    let relay = row("water-heater");
    assert!(relay.contains(" on ") && relay.contains("default on"), "{relay}");
    assert!(row("overvoltage-B").contains("released"), "{text}");
    assert!(text.contains("EVENTS (last minute)") && text.contains("status API and live page on"), "{text}");
    // The summary after the table.
    assert!(out.contains("\x1b[?25h") && out.contains("written as CSV"), "{out}");
}

#[test]
fn with_log_the_demo_scrolls_plain_lines_even_on_a_terminal() {
    let (out, err, ok) = demo_on_a_terminal(&["--seconds", "3", "--log", "--no-open"]);
    assert!(ok, "{err}");
    assert!(!out.contains('\x1b'), "no escape codes: {out:?}");
    assert!(out.lines().any(|l| l.starts_with("mainB L2U=119.8V")), "{out}");
    assert!(out.contains("# status API and live page on http://127.0.0.1:"), "{out}");
    assert!(err.contains("meter found"), "the log: {err}");
}

/// A pipe whose reader has already gone, for a child's stdout: its first write fails, every
/// time (a reader closing after a line races a short output that fits in the pipe).
fn closed_pipe() -> std::process::Stdio {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    writer.into()
}

#[test]
fn a_closed_stdout_ends_the_one_shot_commands_quietly_by_sigpipe() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let p = sim(&dir.path().join("ttyUSB0"), &["pzem-016@4"]);
    let port = p.path().display().to_string();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pmtr.toml");
    // Port 9 (discard): nobody answers, `--watch` says so, again and again.
    let nobody = "http://127.0.0.1:9";
    let commands: [&[&str]; 4] = [
        &["read", "--port", &port, "--address", "4"],
        &["read", "--port", &port, "--address", "4", "--json"],
        &["check-config", example.to_str().unwrap()],
        &["status", "--watch", "--interval", "100ms", "--url", nobody],
    ];
    for args in commands {
        let o = Command::new(env!("CARGO_BIN_EXE_pmtr"))
            .args(args)
            .stdout(closed_pipe())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        // As `seq 1000000 | head` ends: status 141 in the shell, nothing said.
        assert_eq!(
            o.status.signal(),
            Some(nix::sys::signal::Signal::SIGPIPE as i32),
            "{args:?}: {:?}: {err}",
            o.status
        );
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
    }
}

#[test]
fn a_closed_stdout_stops_the_demo_cleanly() {
    use std::io::{BufRead, BufReader};
    // No end but Ctrl-C or a gone reader (the 120 s only keep a broken build from hanging).
    let mut demo = Command::new(env!("CARGO_BIN_EXE_pmtr"));
    demo.args(["demo", "--no-open", "--seconds", "120"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut demo = Proc::start("pmtr", &mut demo, "cargo build");
    let pid = demo.pid();
    let mut first = String::new();
    BufReader::new(demo.take_stdout()).read_line(&mut first).unwrap();
    assert!(first.starts_with("# 5 simulated meters"), "{first}");
    let o = demo.wait_with_output();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{:?}: {err}", o.status);
    assert!(err.contains("stdout closed: stopping the demo"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Stopped as at Ctrl-C: its pseudo-terminals and state removed.
    let dir = std::env::temp_dir().join(format!("pmtr-demo-{pid}"));
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn simulated_pmtr_servers_answer_pmtr_read() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyPLC0");
    let mut sim = Command::new(env!("CARGO_BIN_EXE_pmtr"));
    sim.args(["simulate", "--link", link.to_str().unwrap(), "pmtr-srv@5,volts=241.5,loop=200ms"])
        .arg("pmtr-srv@6,amps=4.5,loop=200ms")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut sim = Proc::start("pmtr", &mut sim, "cargo build");
    let mut first = String::new();
    BufReader::new(sim.take_stdout()).read_line(&mut first).unwrap();
    assert_eq!(first.trim(), link.display().to_string());
    let read = |address: &str| {
        let port = link.to_str().unwrap();
        let o =
            pmtr(&["read", "--port", port, "--address", address, "--model", "pmtr-srv", "--timeout", "3s"]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "server {address}: {err}");
        out
    };
    // `  L3U             241.500 V`
    let value = |out: &str, variable: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(variable)?.split_whitespace().next()?.parse::<f64>().ok())
    };
    let five = read("5");
    let six = read("6");
    assert_eq!(value(&five, "L3U "), Some(241.5), "{five}");
    assert_eq!(value(&six, "L2I "), Some(4.5), "{six}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sim.pid() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let o = sim.wait_with_output();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("simulator stopped") && err.contains("replies: "), "{err}");

    // Servers and RS-485 meters do not share a line.
    let o = pmtr(&["simulate", "pmtr-srv@5", "pzem-016@4"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("power-line modem"), "{:?}", text(&o));
}
