//! Trigger benchmarks:
//!
//! 1. `eval`: evaluations per second of the seeds' example expressions, compiled once, on one
//!    core, with the values changing at every evaluation;
//! 2. `reading`: a reading through the engine (averages, expressions, hysteresis, arbitration)
//!    to the relay write, timed for each reading, on the calling thread;
//! 3. `task`: the same through the daemon's path on its single-threaded runtime: the readings
//!    channel, the trigger task, the relay bank and the fake GPIO's write, from `send` to the
//!    write's timestamp; and the floor of that path (a task that writes the pin at once).
//!
//! 4. `energy`: a reading through the engine when a budget trigger reads `today_cost`: the
//!    engine's own energy books (counter, split by local hour, tariff with a night rate) then
//!    the expression, timed for each reading, against the same trigger on `L1P`.
//!
//! `cargo bench --bench trigger [-- eval|reading|task|energy]` (BENCH_N=N evaluations per expression).

use chrono::Utc;
use pmtr::meter::Model;
use pmtr::reading::{Phase, Quality, Reading, Record};
use pmtr::relay::{FakeBoard, RelayBank};
use pmtr::trigger::run::Triggers;
use pmtr::trigger::vars;
use pmtr::trigger::{Engine, Expression, Now};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The examples of ../shared/seeds (000, "relay actions"), with their typos fixed, and two
/// of the issue's.
const SEED_EXPRESSIONS: &[&str] = &[
    "(L1U > 253) || (L2U > 253) || (L3U > 253)",
    "L1I > 16",
    "L1P > 1200",
    "L2e > 10",
    "(L1f < 49.1) && (L2f < 49.1) && (L3f < 49.1)",
    "L1I > 16 && hour >= 22",
    "gen.L1I > 0.3 && (L1U + L2U + L3U) / 3 < 207",
];

fn n() -> usize {
    std::env::var("BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(5_000_000)
}

const CONFIG: &str = r#"
[gateway]
gpio = "fake"
[[bus]]
name = "b"
port = "/dev/null"
[[meter]]
name = "main"
model = "pzem-016"
address = 4
[[meter]]
name = "gen"
model = "pzem-016"
address = 5
[[relay]]
name = "motor"
pin = 17
default = "on"
[[relay]]
name = "heater"
pin = 18
"#;

fn bench_eval() {
    let n = n();
    println!("expression evaluations, {n} per expression, one core:");
    let mut total = 0.0;
    for text in SEED_EXPRESSIONS {
        let mut kinds = Vec::new();
        let mut e = Expression::compile(text, &mut |name| {
            let k = if vars::ClockVar::ALL.iter().any(|(c, _)| *c == name) {
                pmtr::trigger::Kind::Integer
            } else {
                pmtr::trigger::Kind::Number
            };
            kinds.push(k);
            Ok(k)
        })
        .unwrap();
        let vars = e.variables().len();
        // 64 value sets, so that no evaluation sees the same values as the one before.
        let sets: Vec<Vec<Option<f64>>> = (0..64)
            .map(|i| (0..vars).map(|v| Some(200.0 + ((i * 7 + v * 13) % 64) as f64)).collect())
            .collect();
        let mut trues = 0u64;
        let t0 = Instant::now();
        for i in 0..n {
            if e.eval(black_box(&sets[i % 64])).unwrap() == Some(true) {
                trues += 1;
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        let rate = n as f64 / dt;
        total += rate;
        println!("  {:>12.0} evals/s  {:>6.0} ns  {text}  ({trues} true)", rate, dt * 1e9 / n as f64);
    }
    println!("  mean {:.0} evals/s", total / SEED_EXPRESSIONS.len() as f64);
}

fn pzem(meter: &str, volts: f64, amps: f64) -> Reading {
    let regs = pmtr::meter::pzem::encode(volts, amps, volts * amps, 12.0, 50.0, 0.95, false);
    Reading {
        meter: meter.into(),
        model: Model::Pzem016,
        time: Utc::now(),
        samples: pmtr::meter::pzem::decode(&regs, Phase::L1).unwrap(),
        quality: Quality::default(),
    }
}

fn triggers_config() -> pmtr::config::Config {
    // Five triggers on `main`, like a motor protection: one of them switches at every reading
    // (no hold, no recovery, the voltage alternating across its threshold).
    let text = format!(
        "{CONFIG}{}",
        r#"
[[trigger]]
name = "flip"
meter = "main"
when = "L1U > 240"
relays = ["motor"]
[[trigger]]
name = "overcurrent"
meter = "main"
when = "L1I > 16"
average = "10s"
hold = "5s"
recovery = "1m"
relays = ["heater"]
[[trigger]]
name = "power"
meter = "main"
when = "L1P > 1200"
average = "5s"
relays = ["heater"]
[[trigger]]
name = "frequency"
meter = "main"
when = "L1f < 49.1 || L1f > 50.9"
average = "2s"
hold = "1s"
relays = ["heater"]
[[trigger]]
name = "generator"
meter = "main"
when = "gen.L1I > 0.3 && L1U < 207"
hold = "2s"
dry_run = true
"#
    );
    pmtr::config::load_str(&text, "bench.toml").unwrap()
}

fn percentiles(mut ns: Vec<u64>) -> String {
    ns.sort_unstable();
    let p = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    format!(
        "p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, max {:.1} µs ({} samples)",
        p(0.5),
        p(0.99),
        p(0.999),
        *ns.last().unwrap() as f64 / 1000.0,
        ns.len()
    )
}

fn bench_reading() {
    reading_through_engine(200_000, None);
    // As in the daemon: a reading every 20 ms (a meter is read every 200 ms or more), the
    // thread idle in between.
    reading_through_engine(1_000, Some(Duration::from_millis(20)));
}

fn reading_through_engine(count: usize, idle: Option<Duration>) {
    let config = triggers_config();
    let board = FakeBoard::new();
    let mut gpio = board.gpio();
    let mut engine = Engine::new(&config, Duration::ZERO).unwrap();
    let mut bank = RelayBank::open(&config.relays, &mut gpio, |r| r.default).unwrap();
    let readings: Vec<Reading> =
        (0..1000).map(|i| pzem("main", if i % 2 == 0 { 250.0 } else { 230.0 }, 10.0)).collect();
    let t_start = Instant::now();
    let mut switching = Vec::with_capacity(count);
    for i in 0..count {
        let wall = Utc::now();
        let now = Now { mono: Duration::from_millis(i as u64 * 200), wall, local: Some(wall.naive_utc()) };
        if let Some(idle) = idle {
            std::thread::sleep(idle);
        }
        let t0 = Instant::now();
        let out = engine.on_reading(&readings[i % readings.len()], now);
        for (relay, level) in &out.switches {
            bank.set(*relay, *level).unwrap();
        }
        let dt = t0.elapsed().as_nanos() as u64;
        black_box(&out);
        if !out.switches.is_empty() {
            switching.push(dt);
        }
    }
    let secs = t_start.elapsed().as_secs_f64();
    match idle {
        None => {
            println!("reading → relay write, in the engine (5 triggers, 2 relays, fake GPIO), back to back:");
            println!("  every reading switches a relay: {}", percentiles(switching));
            println!("  {:.0} readings/s through the engine on one core", count as f64 / secs);
        }
        Some(idle) => {
            println!("the same with the thread idle {idle:?} before each reading (as in the daemon):");
            println!("  every reading switches a relay: {}", percentiles(switching));
        }
    }
}

/// Sends switching readings to `tx` every 20 ms and times each from the send to the write of
/// GPIO 17 on `board` (on by default, off above 240 V).
async fn send_to_write(tx: &tokio::sync::mpsc::Sender<Reading>, board: &FakeBoard) -> Vec<u64> {
    let mut latencies = Vec::new();
    for i in 0..2000 {
        let r = pzem("main", if i % 2 == 0 { 250.0 } else { 230.0 }, 10.0);
        let sent = Utc::now();
        tx.send(r).await.unwrap();
        let want_high = i % 2 != 0;
        board.wait_level(17, want_high, Duration::from_secs(1)).await.expect("the relay switches");
        let ev = board.events_of(17).last().cloned().unwrap();
        assert_eq!(ev.high, want_high);
        latencies.push((ev.time - sent).num_nanoseconds().unwrap_or(i64::MAX).max(0) as u64);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies
}

fn bench_task() {
    let config = triggers_config();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config;
    config.gateway.state_dir = dir.path().to_path_buf();
    // `pmtr run`'s runtime: one thread (the bus tasks, the consumer and the trigger task take
    // turns on it; storage has its own thread).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // The floor: a task that writes the pin as soon as a reading arrives, no engine.
        let board = FakeBoard::new();
        let mut pin = pmtr::relay::Gpio::claim(&mut board.gpio(), 17, true).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Reading>(1024);
        let floor = tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let volts = r.get(Phase::L1, pmtr::reading::Quantity::Voltage).unwrap();
                pin.write(volts <= 240.0).unwrap();
            }
        });
        let latencies = send_to_write(&tx, &board).await;
        drop(tx);
        let _ = floor.await;
        println!("reading sent to a task → pin write, no engine (the runtime's floor on this machine):");
        println!("  {}", percentiles(latencies));

        // The daemon's path: the trigger task with its engine, bank, storage and saved state.
        let board = FakeBoard::new();
        let mut gpio = board.gpio();
        let (store_tx, mut store_rx) = tokio::sync::mpsc::channel::<Record>(100_000);
        tokio::spawn(async move { while store_rx.recv().await.is_some() {} });
        let triggers = Triggers::start(&config, &mut gpio, store_tx).unwrap();
        let tx = triggers.readings.clone();
        let latencies = send_to_write(&tx, &board).await;
        drop(tx);
        println!("reading sent to the trigger task → relay write (engine, bank, fake GPIO; every");
        println!("switch also stored, broadcast and saved to disk):");
        println!("  {}", percentiles(latencies));
        triggers.join().await;
    });
}

fn main() {
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    if run("eval") {
        bench_eval();
    }
    if run("reading") {
        bench_reading();
    }
    if run("task") {
        bench_task();
    }
    if run("energy") {
        bench_energy();
    }
}

fn bench_energy() {
    for when in ["L1P > 4000", "today_cost > 5"] {
        let text = format!(
            "{CONFIG}[energy]\ntimezone = \"Europe/Berlin\"\n[[tariff]]\nname = \"home\"\ncurrency = \"EUR\"\nprice = 0.3\n\
             standing_charge = 0.4\n[[tariff.rate]]\nhours = \"22-6\"\nprice = 0.2\n\
             [[trigger]]\nname = \"budget\"\nmeter = \"main\"\nwhen = \"{when}\"\nrelays = [\"heater\"]\n"
        );
        let config = pmtr::config::load_str(&text, "bench.toml").unwrap();
        let mut engine = Engine::new(&config, Duration::ZERO).unwrap();
        let start = Utc::now();
        let count = 200_000;
        let mut times = Vec::with_capacity(count);
        for i in 0..count {
            // A reading every 200 ms at 3.6 kW: 0.2 Wh each; 11 hours of readings.
            let wall = start + chrono::Duration::milliseconds(i as i64 * 200);
            let mut r = pzem("main", 230.0, 15.65);
            r.time = wall;
            for s in &mut r.samples {
                if s.quantity == pmtr::reading::Quantity::ActiveEnergy {
                    s.value = 100.0 + i as f64 * 0.0002;
                }
            }
            let now =
                Now { mono: Duration::from_millis(i as u64 * 200), wall, local: Some(wall.naive_utc()) };
            let t0 = Instant::now();
            let out = engine.on_reading(&r, now);
            times.push(t0.elapsed().as_nanos() as u64);
            black_box(&out);
        }
        println!("reading through the engine, one trigger `{when}` (energy books only when it reads them):");
        println!("  {}", percentiles(times));
    }
}
