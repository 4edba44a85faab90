//! Bus benchmarks on simulated meters (byte-timed pseudo-terminals):
//!
//! 1. bus efficiency: back-to-back PZEM reads on one 9600-baud bus against the physical limit,
//!    and full reads of SDM630s (a meter definition: three requests a read) against theirs;
//! 2. ports in parallel: 4 buses against 1;
//! 3. footprint: `pmtr run` polling 30 meters on 3 ports every second (RSS, CPU);
//! 4. start to first reading with known ports;
//! 5. a power-line bus of three PMTR_001_SRV servers at the real firmware's 1.2 s loop (the
//!    simulated modem, 150 ms each way, frames split), paced by the default gap (one loop),
//!    by none (4 ms, the 3.5 characters) and by two loops: the set-up of the three, then
//!    readings, requests unanswered and bytes the servers' receive buffers lost.
//!
//! `cargo bench --bench bus [-- efficiency|sdm630|parallel|footprint|start|power-line]`
//! (BENCH_SECONDS=N to change the measuring window, default 20; at least 120 for power-line).
//! BENCH_WRAP="CMD ARGS" runs the footprint's daemon under a tool (`link/hot-text.sh` gives
//! `valgrind --tool=callgrind …`): `CMD ARGS pmtr run --config …`.

use pmtr::bus::BusEngine;
use pmtr::config::LineSettings;
use pmtr::sim::{SimPort, SimPortOptions};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

const TURNAROUND: Duration = Duration::from_millis(5);

fn line() -> LineSettings {
    LineSettings::DEFAULT
}

fn seconds() -> u64 {
    std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20)
}

fn sim_port(link: &Path, model: &str, addresses: std::ops::RangeInclusive<u8>) -> SimPort {
    SimPort::spawn(SimPortOptions {
        link: Some(link.to_path_buf()),
        line: line(),
        turnaround: TURNAROUND,
        meters: addresses.map(|a| format!("{model}@{a}").parse().unwrap()).collect(),
    })
    .expect("simulator")
}

/// A config with one bus per port, `per_port` PZEMs each, all polled every `poll`.
fn config_text(dir: &Path, ports: usize, per_port: u8, poll: &str, log: bool) -> String {
    config_of("pzem-016", dir, ports, per_port, poll, log)
}

/// A config with one bus per port, `per_port` meters of `model` each, all polled every `poll`.
fn config_of(model: &str, dir: &Path, ports: usize, per_port: u8, poll: &str, log: bool) -> String {
    let mut t = format!(
        "[gateway]\nname = \"bench\"\nstate_dir = \"{}\"\nlog_readings = {log}\n",
        dir.join("state").display()
    );
    for p in 0..ports {
        t += &format!(
            "[[bus]]\nname = \"b{p}\"\nports = [\"{}\"]\ntimeout = \"200ms\"\n",
            dir.join(format!("ttyUSB{p}")).display()
        );
        for k in 0..per_port {
            let a = p as u8 * per_port + k + 1;
            t += &format!("[[meter]]\nname = \"m{a}\"\nmodel = \"{model}\"\naddress = {a}\nbus = \"b{p}\"\npoll = \"{poll}\"\n");
        }
    }
    t
}

/// Readings per second of PZEMs over the window, once every meter has been found.
async fn reads_per_second(ports: usize, per_port: u8, window: Duration) -> f64 {
    model_reads_per_second("pzem-016", ports, per_port, window).await
}

/// Readings per second of meters of `model` over the window, once every meter has been found.
async fn model_reads_per_second(model: &str, ports: usize, per_port: u8, window: Duration) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let _sims: Vec<SimPort> = (0..ports)
        .map(|p| {
            let first = p as u8 * per_port + 1;
            sim_port(&dir.path().join(format!("ttyUSB{p}")), model, first..=first + per_port - 1)
        })
        .collect();
    // Polled every 100 ms, eight meters saturate a 9600-baud bus: reads go back to back.
    let config =
        pmtr::config::load_str(&config_of(model, dir.path(), ports, per_port, "100ms", false), "bench.toml")
            .expect("bench config");
    let (tx, mut rx) = mpsc::channel(4096);
    let (stop_tx, stop_rx) = watch::channel(false);
    let engine = BusEngine::start(&config, tx, stop_rx);
    let total = ports * per_port as usize;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < total {
        let r = rx.recv().await.unwrap();
        seen.insert(r.meter.clone());
    }
    while rx.try_recv().is_ok() {}
    let start = tokio::time::Instant::now();
    let mut n = 0u64;
    while let Ok(Some(_)) = tokio::time::timeout_at(start + window, rx.recv()).await {
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    engine.join().await;
    rate
}

/// What a window on the power-line bus gave.
struct PlcFigures {
    /// From the start until every server held its five relay actions and its clock was set.
    setup: Duration,
    setup_unanswered: u64,
    setup_bytes_lost: u64,
    readings_per_minute: f64,
    requests: u64,
    unanswered: u64,
    bytes_lost_per_minute: f64,
}

/// Three servers on one simulated power-line bus, polled every 5 s (the default), each given
/// five relay actions and its clock, with `frame_gap` or the default gap: how long the set-up
/// took, then figures over `window` of polls alone.
async fn power_line(frame_gap: Option<&str>, window: Duration) -> PlcFigures {
    use pmtr::sim::{Firmware, PlcBus, PlcBusOptions, PmtrServer, ServerValues};
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyPLC0");
    let addresses = [1u8, 2, 3];
    let servers = addresses
        .iter()
        .map(|&a| {
            PmtrServer::new(a, Firmware::Current, ServerValues::default(), Duration::from_millis(1200), 0.0)
        })
        .collect();
    let opts = PlcBusOptions { link: Some(link.clone()), split_frames: true, ..PlcBusOptions::new(servers) };
    let bus = PlcBus::spawn(opts).expect("simulated power-line bus");
    let mut text = format!(
        "[gateway]\nname = \"bench\"\nstate_dir = \"{}\"\nclock_sync_wait = \"0s\"\n[[bus]]\nname = \"plc\"\nport = \"{}\"\nkind = \"power-line\"\n",
        dir.path().join("state").display(),
        link.display()
    );
    if let Some(gap) = frame_gap {
        text += &format!("frame_gap = \"{gap}\"\n");
    }
    for a in addresses {
        text += &format!("[[meter]]\nname = \"srv{a}\"\nmodel = \"pmtr-srv\"\naddress = {a}\n");
        for (k, when) in ["L1U > 253", "L1I > 16", "L3P > 2000 && L3pf < 0.5", "L2f < 49.5", "L1e > 100.5"]
            .iter()
            .enumerate()
        {
            text += &format!("[[meter.action]]\nwhen = \"{when}\"\npins = [{}]\nlevel = \"low\"\n", 22 + k);
        }
    }
    let config = pmtr::config::load_str(&text, "bench.toml").expect("bench config");
    let (tx, mut rx) = mpsc::channel(4096);
    let (stop_tx, stop_rx) = watch::channel(false);
    let engine = BusEngine::start(&config, tx, stop_rx);
    let began = tokio::time::Instant::now();
    let set_up = || {
        addresses.iter().all(|&a| {
            bus.with_server(a, |s| s.slots().iter().all(Option::is_some) && s.counters().time_syncs > 0)
                .unwrap()
        })
    };
    let mut shown = began;
    while !set_up() {
        while rx.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(100)).await;
        if shown.elapsed() >= Duration::from_secs(30) {
            shown = tokio::time::Instant::now();
            for a in addresses {
                let (srv, state, misses) = engine
                    .status
                    .update(&format!("srv{a}"), |s| {
                        (s.server.clone(), format!("{:?}", s.state), s.counters.probe_misses)
                    })
                    .unwrap();
                if let Some(srv) = srv {
                    eprintln!(
                        "  {:.0} s: server {a} {state} ({misses} probe(s) missed): {} slot(s) pushed, {} duty failure(s), last: {:?}",
                        began.elapsed().as_secs_f64(),
                        srv.slots_pushed,
                        srv.duty_failures,
                        srv.last_duty_error
                    );
                }
            }
        }
    }
    let setup = began.elapsed();
    while rx.try_recv().is_ok() {}
    let counters = |engine: &BusEngine| {
        addresses.iter().fold((0u64, 0u64), |(req, to), a| {
            let c = engine
                .status
                .update(&format!("srv{a}"), |s| (s.counters.requests, s.counters.timeouts))
                .unwrap();
            (req + c.0, to + c.1)
        })
    };
    let lost = || -> u64 {
        addresses.iter().map(|&a| bus.with_server(a, |s| s.counters().bytes_lost).unwrap()).sum()
    };
    let (req0, to0) = counters(&engine);
    let lost0 = lost();
    let start = tokio::time::Instant::now();
    let mut n = 0u64;
    while let Ok(Some(_)) = tokio::time::timeout_at(start + window, rx.recv()).await {
        n += 1;
    }
    let minutes = start.elapsed().as_secs_f64() / 60.0;
    let (req1, to1) = counters(&engine);
    let figures = PlcFigures {
        setup,
        setup_unanswered: to0,
        setup_bytes_lost: lost0,
        readings_per_minute: n as f64 / minutes / addresses.len() as f64,
        requests: req1 - req0,
        unanswered: to1 - to0,
        bytes_lost_per_minute: (lost() - lost0) as f64 / minutes / addresses.len() as f64,
    };
    let _ = stop_tx.send(true);
    engine.join().await;
    figures
}

fn proc_stat(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, rss_kib)
}

struct Sims(Vec<std::process::Child>);
impl Drop for Sims {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Three `pmtr simulate` processes with ten meters each, so the simulators' own work is not
/// counted against the daemon.
fn spawn_sims(bin: &str, dir: &Path) -> Sims {
    let mut sims = Sims(vec![]);
    // The simulators run a copy of the executable: pages they map are not the daemon's.
    let copy = dir.join("pmtr-simulate");
    std::fs::copy(bin, &copy).expect("copy the executable for the simulators");
    let bin = copy.to_str().expect("a UTF-8 temporary path");
    for p in 0..3u8 {
        let link = dir.join(format!("ttyUSB{p}"));
        let mut cmd = Command::new(bin);
        cmd.arg("simulate").arg("--link").arg(&link);
        for k in 1..=10u8 {
            cmd.arg(format!("pzem-016@{}", p * 10 + k));
        }
        sims.0.push(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("pmtr simulate"));
        for _ in 0..200 {
            if link.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    sims
}

fn footprint(bin: &str, window: Duration) -> (f64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let _sims = spawn_sims(bin, dir.path());
    let cfg = dir.path().join("pmtr.toml");
    // The clock believed from the start, as on a Pi that NTP or a real-time clock has set: the
    // steady state of every Pi after its first minutes (an unsynchronised clock is believed
    // after `clock_sync_wait`, 10 minutes; this machine's kernel never says it is synchronised).
    let text = config_text(dir.path(), 3, 10, "1s", false).replacen(
        "[gateway]\n",
        "[gateway]\nclock_sync_wait = \"0s\"\n",
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let wrap = std::env::var("BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut command = match words.next() {
        Some(tool) => {
            let mut c = Command::new(tool);
            c.args(words).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut child = command
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pmtr run");
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(10)); // discovery and warm-up
    let (cpu0, _) = proc_stat(pid);
    let t0 = Instant::now();
    let mut max_rss = 0;
    while t0.elapsed() < window {
        std::thread::sleep(Duration::from_secs(1));
        max_rss = max_rss.max(proc_stat(pid).1);
    }
    let (cpu1, _) = proc_stat(pid);
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    let cpu = (cpu1 - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let _ = child.kill();
    let _ = child.wait();
    (cpu, max_rss, hwm)
}

/// Time from spawning `pmtr run` to its first reading on stderr, ports known from a previous run.
fn start_to_first_reading(bin: &str, runs: usize) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let _sims = spawn_sims(bin, dir.path());
    let cfg = dir.path().join("pmtr.toml");
    std::fs::write(&cfg, config_text(dir.path(), 3, 10, "1s", true)).unwrap();
    let mut times = vec![];
    for i in 0..=runs {
        let t0 = Instant::now();
        let mut child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pmtr run");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        for l in stderr.lines().map_while(Result::ok) {
            if l.contains("L1U=") {
                break;
            }
        }
        let took = t0.elapsed();
        if i > 0 {
            times.push(took); // run 0 learns the ports
        } else {
            std::thread::sleep(Duration::from_millis(1500)); // let it remember every meter
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    times.sort();
    times
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let window = Duration::from_secs(seconds());
    let bin = env!("CARGO_BIN_EXE_pmtr");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let c = line().char_time().as_secs_f64();
    let gap = line().frame_gap().as_secs_f64();
    let per_read = (8.0 + 25.0) * c + TURNAROUND.as_secs_f64() + gap;
    let limit = 1.0 / per_read;
    println!("## Bus efficiency (9600 8N1, turnaround {} ms, 8 PZEMs, back to back)", TURNAROUND.as_millis());
    println!(
        "physical limit: 1 / ((8 + 25) chars × {:.4} ms + {} ms turnaround + {:.3} ms gap) = 1 / {:.2} ms = {:.2} reads/s",
        c * 1e3,
        TURNAROUND.as_millis(),
        gap * 1e3,
        per_read * 1e3,
        limit
    );
    if run("efficiency") || run("parallel") {
        let one = rt.block_on(reads_per_second(1, 8, window));
        println!(
            "measured: {one:.2} reads/s = {:.1} % of the limit ({}s window)",
            one / limit * 100.0,
            window.as_secs()
        );
        if run("parallel") {
            println!("\n## Ports in parallel (4 buses × 8 PZEMs)");
            let four = rt.block_on(reads_per_second(4, 8, window));
            println!("1 bus {one:.2} reads/s, 4 buses {four:.2} reads/s: {:.2} ×", four / one);
        }
    }

    if run("sdm630") {
        // A full read by the definition's first plan: every request and reply, each followed
        // by the turnaround or the gap, as for the PZEM.
        let model = pmtr::meter::definition::resolve("sdm630");
        let def = pmtr::meter::definition::of(model).expect("the built-in sdm630");
        let blocks = def.layout(def.first_plan(), 0).blocks;
        let chars: u32 = blocks.iter().map(|b| 8 + 5 + 2 * u32::from(b.count)).sum();
        let n = blocks.len() as f64;
        let per_read = f64::from(chars) * c + n * (TURNAROUND.as_secs_f64() + gap);
        let limit = 1.0 / per_read;
        println!(
            "\n## SDM630 full reads (9600 8N1, turnaround {} ms, 4 SDM630s, back to back)",
            TURNAROUND.as_millis()
        );
        let shown: Vec<String> = blocks.iter().map(|b| format!("0x{:04X} +{}", b.start, b.count)).collect();
        println!(
            "physical limit: {} requests ({}), {chars} chars × {:.4} ms + {n} × ({} ms turnaround + {:.3} ms gap) = {:.2} ms = {:.3} reads/s",
            blocks.len(),
            shown.join(", "),
            c * 1e3,
            TURNAROUND.as_millis(),
            gap * 1e3,
            per_read * 1e3,
            limit
        );
        let got = rt.block_on(model_reads_per_second("sdm630", 1, 4, window));
        println!(
            "measured: {got:.3} reads/s = {:.1} % of the limit ({}s window)",
            got / limit * 100.0,
            window.as_secs()
        );
    }

    if run("footprint") {
        let w = window.max(Duration::from_secs(30));
        println!("\n## Footprint: pmtr run, 30 meters on 3 ports, 1 s poll ({}s window)", w.as_secs());
        let (cpu, rss, hwm) = footprint(bin, w);
        println!(
            "CPU {cpu:.2} % of one core; RSS max {:.2} MiB (VmHWM {:.2} MiB)",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }

    if run("power-line") {
        let w = window.max(Duration::from_secs(120));
        println!(
            "\n## Power-line bus: 3 servers, 1.2 s loops, 150 ms transit, polled every 5 s ({}s window each)",
            w.as_secs()
        );
        println!(
            "| frame_gap | set-up of the 3 (s) | unanswered, bytes lost in it | readings / server / min | requests | unanswered | bytes lost / server / min |"
        );
        println!("|---|---|---|---|---|---|---|");
        // BENCH_GAPS="4ms,default" picks the rows.
        let gaps = std::env::var("BENCH_GAPS").unwrap_or_else(|_| "4ms,default,2400ms".into());
        for gap in gaps.split(',').map(|g| (g != "default").then_some(g)) {
            let f = rt.block_on(power_line(gap, w));
            println!(
                "| {} | {:.0} | {}, {} | {:.1} | {} | {} ({:.1} %) | {:.0} |",
                gap.unwrap_or("default (1200ms)"),
                f.setup.as_secs_f64(),
                f.setup_unanswered,
                f.setup_bytes_lost,
                f.readings_per_minute,
                f.requests,
                f.unanswered,
                f.unanswered as f64 * 100.0 / f.requests.max(1) as f64,
                f.bytes_lost_per_minute
            );
        }
    }

    if run("start") {
        println!("\n## Start to first reading, ports known (5 runs)");
        let t = start_to_first_reading(bin, 5);
        println!(
            "min {:.0} ms, median {:.0} ms, max {:.0} ms",
            t[0].as_secs_f64() * 1e3,
            t[t.len() / 2].as_secs_f64() * 1e3,
            t[t.len() - 1].as_secs_f64() * 1e3
        );
    }
}
