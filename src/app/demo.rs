//! `pmtr demo` and `pmtr simulate`: the real engine against simulated meters on
//! pseudo-terminals.

use crate::bus::status::MeterState;
use crate::bus::Engine;
use crate::config::{LineSettings, Parity};
use crate::reading::{Phase, Quantity, Reading};
use crate::sim::{Profile, SimMeterSpec, SimPort, SimPortOptions};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The demo's configuration: the house monitor (three PZEM-016, one per USB dongle) and an
/// RX380 bus. `{dir}` is replaced by the demo's scratch directory.
pub const DEMO_CONFIG: &str = r#"
[gateway]
name = "demo"
state_dir = "{dir}/state"
log_readings = false

# Three USB-RS485 dongles whose names change at every boot: pmtr finds each PZEM by address.
[[bus]]
name = "house"
ports = ["{dir}/ttyUSB*"]
baud = 9600
timeout = "200ms"
rescan = "1s"
max_backoff = "4s"

# The RX380 speaks 19200 8E1 on a real bus; pseudo-terminals cannot do parity, so the demo
# runs it at 8N1.
[[bus]]
name = "factory"
ports = ["{dir}/ttyRX*"]
baud = 19200
parity = "none"
timeout = "300ms"

[[meter]]
name = "mainA"
model = "pzem-016"
address = 4
bus = "house"
poll = "1s"

[[meter]]
name = "mainB"
model = "pzem-016"
address = 5
bus = "house"
poll = "1s"
phase = "L2"

[[meter]]
name = "gen"
model = "pzem-016"
address = 6
bus = "house"
poll = "1s"

[[meter]]
name = "workshop"
model = "rx380"
address = 1
bus = "factory"
poll = "2s"

# No database needed: daily CSV files, one per meter, kept after the demo ends.
[[sink]]
type = "csv"
dir = "{csv}"

# A relay on GPIO 17 (a fake board in the demo) feeding a water heater, on by default, cut when
# mainB's voltage stays high: the demo raises it to 130 V from t=20 s to t=32 s.
[[relay]]
name = "water-heater"
pin = 17
default = "on"

[[trigger]]
name = "overvoltage-B"
meter = "mainB"
when = "L2U > 126"
average = "2s"
hold = "3s"
recovery = "5s"
relays = ["water-heater"]
"#;

/// Where the demo's CSV files go (kept after it ends, unlike its scratch directory).
pub fn demo_csv_dir() -> PathBuf {
    std::env::temp_dir().join("pmtr-demo-csv")
}

fn line(baud: u32) -> LineSettings {
    LineSettings { baud, data_bits: 8, parity: Parity::None, stop_bits: 1 }
}

fn spec(s: &str) -> anyhow::Result<SimMeterSpec> {
    s.parse::<SimMeterSpec>().map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs the demo for `duration` (or until Ctrl-C).
pub async fn run(duration: Option<Duration>) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("pmtr-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&dir, duration).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &std::path::Path, duration: Option<Duration>) -> anyhow::Result<()> {
    let port = |name: &str, baud: u32, meter: &str| -> anyhow::Result<SimPort> {
        Ok(SimPort::spawn(SimPortOptions {
            link: Some(dir.join(name)),
            line: line(baud),
            turnaround: Duration::from_millis(5),
            meters: vec![spec(meter)?],
        })?)
    };
    // Deliberately not in address order: the dongle names say nothing about the meters.
    let _a = port("ttyUSB0", 9600, "pzem-016@6,volts=120.1,amps=0,pf=1")?;
    let mut b = port("ttyUSB1", 9600, "pzem-016@4,volts=121.3,amps=12.5,pf=0.95,profile=noise:2")?;
    let c = port("ttyUSB2", 9600, "pzem-016@5,volts=119.8,amps=7.25,pf=0.9")?;
    c.with_slave(5, |s| s.set_profile(Profile::Script(vec![(20.0, 130.0), (32.0, 119.8)])));
    let _rx = port("ttyRX0", 19200, "rx380@1,profile=noise:1")?;

    let text = DEMO_CONFIG
        .replace("{dir}", &dir.display().to_string())
        .replace("{csv}", &demo_csv_dir().display().to_string());
    let config = crate::config::load_str(&text, "demo.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
    let (store_tx, store_rx) = mpsc::channel::<crate::reading::Record>(4096);
    let storage = crate::store::Storage::start(&config, store_rx)?;
    let board = crate::relay::FakeBoard::new();
    let triggers = crate::trigger::run::Triggers::start(&config, &mut board.gpio(), store_tx.clone(), false)?;
    let mut changes = triggers.events.subscribe();
    let (tx, mut rx) = mpsc::channel::<Reading>(256);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_rx_api = stop_rx.clone();
    let engine = Engine::start(&config, tx, stop_rx);
    let status = engine.status.clone();
    let tty = std::io::stdout().is_terminal();
    let start = tokio::time::Instant::now();
    let stop_at = duration.map(|d| start + d);
    let mut latest: BTreeMap<String, Reading> = BTreeMap::new();
    let mut events: Vec<String> =
        vec!["4 simulated meters on 4 pseudo-terminals; pmtr looks for them by address".into()];
    // The status API, as `pmtr run` serves it: `pmtr status --url …` or curl …/metrics.
    let api = match crate::status::http::StatusServer::bind(config.status.listen, None) {
        Ok(server) => {
            let url = crate::app::status::url_for(server.local_addr()?, false);
            events
                .push(format!("status API on {url}: try `pmtr status --url {url}` or `curl {url}/metrics`"));
            let mut sources = crate::status::http::Sources::new(&config, status.clone());
            sources.sinks = storage.sinks.clone();
            sources.commands = Some(triggers.commands.clone());
            tokio::spawn(sources.tally.clone().run(triggers.events.subscribe()));
            Some(tokio::spawn(server.run(std::sync::Arc::new(sources), stop_rx_api)))
        }
        Err(e) => {
            events.push(format!("no status API: {e}"));
            None
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut step = 0;
    let stop = crate::app::stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            Some(r) = rx.recv() => {
                if !tty {
                    println!("{r}");
                }
                let _ = triggers.readings.send(r.clone()).await;
                let _ = store_tx.send(r.clone().into()).await;
                latest.insert(r.meter.to_string(), r);
            }
            Ok(c) = changes.recv() => {
                let t = start.elapsed().as_secs();
                let line = format!("t={t}s: {c}");
                if !tty {
                    println!("# {line}");
                }
                events.push(line);
            }
            _ = tick.tick() => {
                let t = start.elapsed().as_secs();
                // Pull a dongle out and put it back under another name, as USB does.
                if step == 0 && t >= 10 {
                    b.unplug();
                    events.push(format!("t={t}s: unplugged ttyUSB1 (mainA's dongle)"));
                    step = 1;
                } else if step == 1 && t >= 14 {
                    b.replug(Some(dir.join("ttyUSB7")))?;
                    events.push(format!("t={t}s: plugged it back in as ttyUSB7"));
                    step = 2;
                }
                if tty {
                    render(&latest, &status.snapshot(), &events);
                } else if let Some(e) = events.last() {
                    if step > 0 && events.len() > 1 && e.starts_with(&format!("t={t}s")) {
                        println!("# {e}");
                    }
                }
                if stop_at.is_some_and(|s| tokio::time::Instant::now() >= s) {
                    break;
                }
            }
            _ = &mut stop => break,
        }
    }
    let _ = stop_tx.send(true);
    engine.join().await;
    if let Some(api) = api {
        let _ = api.await;
    }
    while let Ok(r) = rx.try_recv() {
        let _ = store_tx.send(r.into()).await;
    }
    triggers.join().await;
    drop(store_tx);
    storage.join().await;
    let snap = status.snapshot();
    println!();
    for (name, s) in &snap {
        println!(
            "{name:<10} port {:<24} readings {:>4}  requests {:>4}  timeouts {:>3}  crc {:>2}",
            s.port.as_deref().map(short).unwrap_or("-"),
            s.counters.readings,
            s.counters.requests,
            s.counters.timeouts,
            s.counters.crc_errors
        );
    }
    println!("\nReadings, trigger and relay changes were written as CSV to {}/", demo_csv_dir().display());
    Ok(())
}

fn short(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn render(
    latest: &BTreeMap<String, Reading>,
    status: &BTreeMap<String, crate::bus::status::MeterStatus>,
    events: &[String],
) {
    let mut out = String::from("\x1b[2J\x1b[H");
    out.push_str("pmtr demo: the real engine on simulated meters (Ctrl-C to stop)\n\n");
    out.push_str(&format!(
        "{:<10} {:<10} {:<9} {:>8} {:>9} {:>9} {:>11} {:>6} {:>5}  {}\n",
        "meter", "port", "state", "V", "A", "W", "kWh", "Hz", "PF", "requests/timeouts"
    ));
    for (name, s) in status {
        let r = latest.get(name);
        let phase = r.and_then(|r| r.samples.first()).map(|s| s.phase).unwrap_or(Phase::L1);
        let v = |q: Quantity, p: Phase| r.and_then(|r| r.get(p, q));
        let volts = v(Quantity::Voltage, phase).or(v(Quantity::Voltage, Phase::L1));
        let amps = v(Quantity::Current, phase).or(v(Quantity::Current, Phase::L1));
        let watts = v(Quantity::ActivePower, phase).or(v(Quantity::ActivePower, Phase::Total));
        let kwh = v(Quantity::ActiveEnergy, phase).or(v(Quantity::ActiveEnergy, Phase::Total));
        let hz = v(Quantity::Frequency, phase).or(v(Quantity::Frequency, Phase::Total));
        let pf = v(Quantity::PowerFactor, phase).or(v(Quantity::PowerFactor, Phase::Total));
        let f = |x: Option<f64>, d: usize| x.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "-".into());
        let state = match s.state {
            MeterState::Searching => "searching",
            MeterState::Ok => "ok",
            MeterState::Failing => "failing",
        };
        out.push_str(&format!(
            "{:<10} {:<10} {:<9} {:>8} {:>9} {:>9} {:>11} {:>6} {:>5}  {}/{}\n",
            name,
            s.port.as_deref().map(short).unwrap_or("-"),
            state,
            f(volts, 1),
            f(amps, 3),
            f(watts, 1),
            f(kwh, 3),
            f(hz, 1),
            f(pf, 2),
            s.counters.requests,
            s.counters.timeouts
        ));
    }
    out.push('\n');
    for e in events.iter().rev().take(5).rev() {
        out.push_str(&format!("  {e}\n"));
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// `pmtr simulate`: serve simulated meters on a pseudo-terminal until Ctrl-C.
pub async fn simulate(
    link: Option<PathBuf>,
    baud: u32,
    turnaround: Duration,
    meters: Vec<String>,
) -> anyhow::Result<()> {
    let specs = meters.iter().map(|m| spec(m)).collect::<anyhow::Result<Vec<_>>>()?;
    let port = SimPort::spawn(SimPortOptions { link, line: line(baud), turnaround, meters: specs })?;
    println!("{}", port.path().display());
    let _ = std::io::stdout().flush();
    tracing::info!(port = %port.path().display(), baud, meters = ?meters, "simulating");
    crate::app::stop_signal().await;
    let s = port.stats();
    tracing::info!(?s, "simulator stopped");
    Ok(())
}
