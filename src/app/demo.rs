//! `pmtr demo` and `pmtr simulate`: the real engine against simulated meters on
//! pseudo-terminals.

use super::pipeline::Pipeline;
use crate::app::{live, print_out};
use crate::bus::status::MeterStatus;
use crate::config::LineSettings;
use crate::pipeline::Outlet;
use crate::reading::Record;
use crate::sim::{
    Firmware, PlcBus, PlcBusOptions, PmtrServer, Profile, ServerValues, SimMeterSpec, SimPort, SimPortOptions,
};
use chrono::Utc;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

/// The demo's configuration: the house monitor (three PZEM-016, one per USB dongle) and an
/// RX380 bus. `{dir}` is replaced by the demo's scratch directory.
pub const DEMO_CONFIG: &str = r#"
[gateway]
name = "demo"
state_dir = "{dir}/state"
log_readings = false
# Trust this machine's clock at once for the PMTR server's clock (no waiting for NTP).
clock_sync_wait = "0s"

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

# A PMTR_001_SRV behind a power-line modem (the demo's server loops faster than the real
# ~1.2 s): pmtr sets its clock and pushes its relay action, which the server then evaluates
# by itself, even with the power-line link down.
[[bus]]
name = "garden"
port = "{dir}/ttyPLC0"
kind = "power-line"
timeout = "2s"

[[meter]]
name = "shed"
model = "pmtr-srv"
address = 5
bus = "garden"
poll = "2s"
time_sync = "1h"

[[meter.action]]
when = "L1U > 253 || L2U > 253 || L3U > 253"
pins = [22]
level = "low"
recovery = "60s"

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

# The workshop's supply watched for a broken neutral (its RX380 measures the line voltages
# too): the demo's workshop neutral breaks at t=45 s, and the trigger cuts the workshop's
# mains and keeps them cut until `pmtr trigger reset broken-neutral`.
[[neutral]]
name = "supply"
meter = "workshop"

[[relay]]
name = "workshop-mains"
pin = 27
default = "on"

[[trigger]]
name = "broken-neutral"
meter = "workshop"
when = "neutral_fault == 1"
relays = ["workshop-mains"]
latch = true
"#;

/// When the demo's workshop neutral breaks, seconds after the start.
pub const NEUTRAL_BREAKS_AT: u64 = 45;

/// Where the demo's CSV files go (kept after it ends, unlike its scratch directory).
pub fn demo_csv_dir() -> PathBuf {
    std::env::temp_dir().join("pmtr-demo-csv")
}

fn line(baud: u32) -> LineSettings {
    LineSettings::n81(baud)
}

fn spec(s: &str) -> anyhow::Result<SimMeterSpec> {
    s.parse::<SimMeterSpec>().map_err(|e| anyhow::anyhow!("{e}"))
}

/// How `pmtr demo` shows what happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The live table, redrawn in place (stdout is a terminal).
    Table,
    /// Scrolling lines: one per reading, `# ` before events (`--log`, or not a terminal).
    Lines,
}

impl Output {
    /// The table on a terminal unless the log is asked for.
    pub fn choose(log: bool) -> Output {
        if !log && std::io::stdout().is_terminal() {
            Output::Table
        } else {
            Output::Lines
        }
    }
}

/// What `pmtr demo` is asked.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this long (None: at Ctrl-C).
    pub duration: Option<Duration>,
    pub output: Output,
    /// Try to open the live page in a browser.
    pub open: bool,
}

/// Runs the demo for `duration` (or until Ctrl-C).
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("pmtr-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&dir, opts).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The PMTR_001_SRV of the demo: its unit address, and its loop (shorter than the real
/// firmware's ~1.2 s so that the demo shows its duties within seconds).
const SERVER: u8 = 5;
const SERVER_LOOP: Duration = Duration::from_millis(400);

/// Opens `url` in the desktop's browser when there is a display; never fails the demo.
fn open_page(url: &str) -> Result<(), String> {
    if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        return Err("no display".into());
    }
    let child = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("xdg-open: {e}"))?;
    // Reaped in the background: xdg-open returns once the browser has the page.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(())
}

/// The demo's simulated meters: three PZEM-016 and an RX380 on pseudo-terminals (not in address
/// order: the dongle names say nothing about the meters), and a PMTR_001_SRV on a power-line
/// bus. They run until dropped.
struct Simulators {
    _a: SimPort,
    /// mainA's dongle, unplugged and plugged back in under another name during the demo.
    b: SimPort,
    _c: SimPort,
    _rx: SimPort,
    plc: PlcBus,
}

impl Simulators {
    fn spawn(dir: &std::path::Path) -> anyhow::Result<Simulators> {
        let port = |name: &str, baud: u32, meter: &str| -> anyhow::Result<SimPort> {
            Ok(SimPort::spawn(SimPortOptions {
                link: Some(dir.join(name)),
                line: line(baud),
                turnaround: Duration::from_millis(5),
                meters: vec![spec(meter)?],
            })?)
        };
        let _a = port("ttyUSB0", 9600, "pzem-016@6,volts=120.1,amps=0,pf=1")?;
        let b = port("ttyUSB1", 9600, "pzem-016@4,volts=121.3,amps=12.5,pf=0.95,profile=noise:2")?;
        let c = port("ttyUSB2", 9600, "pzem-016@5,volts=119.8,amps=7.25,pf=0.9")?;
        c.with_slave(5, |s| s.set_profile(Profile::Script(vec![(20.0, 130.0), (32.0, 119.8)])));
        // The workshop's RX380 reads a simulated supply (a 230 V source, unbalanced loads switching
        // behind it) whose neutral opens at NEUTRAL_BREAKS_AT.
        let rx = port("ttyRX0", 19200, "rx380@1")?;
        let workshop = crate::sim::grid::Grid::new(7, 230.0).with_house([3000.0, 1500.0, 300.0]);
        let trace = std::sync::Arc::new(crate::sim::GridTrace::record(
            workshop,
            900,
            Some(NEUTRAL_BREAKS_AT as usize),
        ));
        rx.with_slave(1, |s| s.set_profile(Profile::Grid { trace, phase: 0 }));
        // A PMTR_001_SRV behind a power-line modem: pmtr sets its clock and pushes its action.
        let values = ServerValues {
            volts: [229.6, 231.2, 230.4],
            amps: [3.2, 1.1, 0.4],
            pf: [0.97, 0.9, 1.0],
            kwh: [12.5, 3.25, 0.75],
            ..ServerValues::default()
        };
        let server = PmtrServer::new(SERVER, Firmware::Current, values, SERVER_LOOP, 0.0);
        let plc = PlcBus::spawn(PlcBusOptions {
            link: Some(dir.join("ttyPLC0")),
            transit: Duration::from_millis(40),
            ..PlcBusOptions::new(vec![server])
        })?;
        Ok(Simulators { _a, b, _c: c, _rx: rx, plc })
    }
}

async fn run_in(dir: &std::path::Path, opts: DemoOptions) -> anyhow::Result<()> {
    let sims = Simulators::spawn(dir)?;
    let mut b = sims.b;
    let plc = sims.plc;

    let text = DEMO_CONFIG
        .replace("{dir}", &dir.display().to_string())
        .replace("{csv}", &demo_csv_dir().display().to_string());
    let config = crate::config::load_str(&text, "demo.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
    // The flow of `pmtr run`: buses, relays first, then the log, storage and a copy of each
    // record for the lines printed here.
    let (store_tx, store_rx) = crate::store::Intake::channel(4096);
    let storage = crate::store::Storage::start(&config, store_rx)?;
    let (out, copies) = Outlet::new(store_tx).logging(config.gateway.log_readings).with_copies(1024);
    let mut records = copies.subscribe();
    drop(copies);
    let board = crate::relay::FakeBoard::new();
    let triggers = crate::trigger::run::Triggers::start(&config, &mut board.gpio(), out.clone())?;
    let mut changes = triggers.events.subscribe();
    let commands = triggers.commands.clone();
    let tally_events = triggers.events.subscribe();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_rx_api = stop_rx.clone();
    let pipeline = Pipeline::start(&config, Some(triggers), out, stop_rx);
    let status = pipeline.engine.status.clone();
    let table = opts.output == Output::Table;
    let start = tokio::time::Instant::now();
    let stop_at = opts.duration.map(|d| start + d);
    let mut events = live::Events::default();
    // Set when stdout is closed (`pmtr demo | head`): the demo then stops as at Ctrl-C,
    // removing its files, and exits 0.
    let closed = std::cell::Cell::new(false);
    let say = |events: &mut live::Events, text: String| {
        if !table && !print_out(format_args!("# {text}\n")) {
            closed.set(true);
        }
        events.push(Utc::now(), text);
    };
    say(
        &mut events,
        "5 simulated meters: 4 on pseudo-terminals (pmtr looks for them by address), 1 PMTR server on a power-line bus"
            .into(),
    );
    let mut sources = crate::status::http::Sources::new(&config, status.clone());
    sources.sinks = storage.sinks.clone();
    sources.commands = Some(commands);
    tokio::spawn(sources.tally.clone().run(tally_events));
    let sources = std::sync::Arc::new(sources);
    // The status API, as `pmtr run` serves it, with the live page at `/`; on another port
    // when another pmtr already has the usual one.
    let listen = config.status.listen;
    let bound = crate::status::http::StatusServer::bind(listen, None).or_else(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            crate::status::http::StatusServer::bind((listen.ip(), 0).into(), None)
        }
        _ => Err(e),
    });
    let mut page = None;
    let api = match bound.and_then(|server| Ok((server.local_addr()?, server))) {
        Ok((addr, server)) => {
            let url = crate::app::status::url_for(addr, false);
            page =
                Some(format!("live page: {url}/  ·  pmtr status --watch --url {url}  ·  curl {url}/metrics"));
            say(&mut events, format!("status API and live page on {url}/"));
            if opts.open {
                match open_page(&format!("{url}/")) {
                    Ok(()) => say(&mut events, format!("opening {url}/ in the browser")),
                    Err(why) => {
                        say(&mut events, format!("not opening a browser ({why}): open {url}/ yourself"))
                    }
                }
            }
            Some(tokio::spawn(server.run(sources.clone(), stop_rx_api)))
        }
        Err(e) => {
            say(&mut events, format!("no status API: {e}"));
            None
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut step = 0;
    let mut duties = Duties::default();
    let stop = crate::app::stop_signal();
    tokio::pin!(stop);
    let cursor = table.then(live::HiddenCursor::hide);
    loop {
        tokio::select! {
            Ok(r) = records.recv() => {
                if let Record::Reading(r) = r {
                    if !table && !print_out(format_args!("{r}\n")) {
                        closed.set(true);
                    }
                }
            }
            Ok(c) = changes.recv() => say(&mut events, c.to_string()),
            _ = tick.tick() => {
                let t = start.elapsed().as_secs();
                // Pull a dongle out and put it back under another name, as USB does.
                if step == 0 && t >= 10 {
                    b.unplug();
                    say(&mut events, "unplugged ttyUSB1 (mainA's dongle)".into());
                    step = 1;
                } else if step == 1 && t >= 14 {
                    b.replug(Some(dir.join("ttyUSB7")))?;
                    say(&mut events, "plugged it back in as ttyUSB7".into());
                    step = 2;
                } else if step == 2 && t >= NEUTRAL_BREAKS_AT {
                    say(&mut events, "the workshop's neutral breaks (simulated)".into());
                    step = 3;
                }
                for text in duties.seen(&status.snapshot(), |a| held(&plc, a)) {
                    say(&mut events, text);
                }
                if table {
                    let snapshot = sources.snapshot(true).await;
                    let mut lines = vec![
                        "pmtr demo: the real engine on simulated meters (Ctrl-C to stop, --log for the log)".to_owned(),
                    ];
                    lines.extend(page.clone());
                    lines.push(String::new());
                    lines.extend(live::lines("pmtr", &snapshot, &events.recent(snapshot.time), &chrono::Local));
                    if !print_out(format_args!("{}", live::redraw(&lines, live::width()))) {
                        closed.set(true);
                    }
                }
                if stop_at.is_some_and(|s| tokio::time::Instant::now() >= s) {
                    break;
                }
            }
            _ = &mut stop => break,
        }
        if closed.get() {
            tracing::info!("stdout closed: stopping the demo");
            break;
        }
    }
    drop(cursor);
    let _ = stop_tx.send(true);
    pipeline.stop(false).await;
    if let Some(api) = api {
        let _ = api.await;
    }
    storage.join().await;
    print_summary(&status.snapshot());
    Ok(())
}

/// What each meter went through, and where the CSV files are, printed when the demo ends.
fn print_summary(snap: &std::collections::BTreeMap<String, MeterStatus>) {
    print_out(format_args!("\n"));
    for (name, s) in snap {
        print_out(format_args!(
            "{name:<10} port {:<24} readings {:>4}  requests {:>4}  timeouts {:>3}  crc {:>2}\n",
            s.port.as_deref().map(short).unwrap_or("-"),
            s.counters.readings,
            s.counters.requests,
            s.counters.timeouts,
            s.counters.crc_errors
        ));
    }
    print_out(format_args!(
        "\nReadings, trigger and relay changes were written as CSV to {}/\n",
        demo_csv_dir().display()
    ));
}

fn short(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// What the demo's PMTR server has been given, as the gateway and the server itself report
/// it: an event each time its clock is set and when its action slots are all pushed.
#[derive(Debug, Default)]
struct Duties {
    time_syncs: u64,
    slots_total: u64,
}

/// What a simulated server holds: its clock's error, and the texts of its live actions.
type Held = (Option<f64>, Vec<String>);

/// What [`Duties::seen`] reads of the simulated server at an address.
fn held(plc: &PlcBus, address: u8) -> Option<Held> {
    plc.with_server(address, |s| {
        let actions = s
            .slots()
            .iter()
            .flatten()
            .filter(|a| !a.dry_run)
            .map(|a| format!("\"{}\" on pin {}", a.text, a.pins[0]))
            .collect();
        (s.clock_error(), actions)
    })
}

impl Duties {
    /// The events since the last call, from the gateway's status of each server and what the
    /// server at an address holds (`server`).
    fn seen(
        &mut self,
        meters: &BTreeMap<String, MeterStatus>,
        server: impl Fn(u8) -> Option<Held>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (name, m) in meters {
            let Some(srv) = &m.server else { continue };
            let (clock, actions) = server(m.address).unwrap_or_default();
            if srv.time_syncs > self.time_syncs {
                self.time_syncs = srv.time_syncs;
                let error = clock
                    .map(|e| format!(": its clock now reads this machine's time ({e:+.2} s)"))
                    .unwrap_or_default();
                out.push(format!("{name} (PMTR server {}) clock set{error}", m.address));
            }
            if srv.slots_total > self.slots_total && srv.slots_pushed == 5 {
                self.slots_total = srv.slots_total;
                out.push(format!(
                    "{name} (PMTR server {}) took its relay actions: it evaluates {}",
                    m.address,
                    if actions.is_empty() { "nothing".to_owned() } else { actions.join(", ") }
                ));
            }
        }
        out
    }
}

/// `pmtr simulate`: serve simulated meters on a pseudo-terminal until Ctrl-C: Modbus RTU
/// meters on an RS-485 line, or PMTR_001_SRV servers (`pmtr-srv@5`) on a power-line medium.
pub async fn simulate(
    link: Option<PathBuf>,
    baud: u32,
    turnaround: Duration,
    meters: Vec<String>,
) -> anyhow::Result<()> {
    let servers = meters.iter().filter(|m| is_server(m)).count();
    if servers > 0 {
        if servers < meters.len() {
            anyhow::bail!(
                "PMTR servers (pmtr-srv@N) talk through a power-line modem, not on an RS-485 line: \
                 simulate them apart from the other meters"
            );
        }
        return simulate_servers(link, &meters).await;
    }
    let specs = meters.iter().map(|m| spec(m)).collect::<anyhow::Result<Vec<_>>>()?;
    let port = SimPort::spawn(SimPortOptions { link, line: line(baud), turnaround, meters: specs })?;
    // The link for whoever started the simulator; it goes on simulating if nobody reads it.
    print_out(format_args!("{}\n", port.path().display()));
    tracing::info!(port = %port.path().display(), baud, meters = ?meters, "simulating");
    crate::app::stop_signal().await;
    let s = port.stats();
    tracing::info!(?s, "simulator stopped");
    Ok(())
}

fn is_server(spec: &str) -> bool {
    spec.split(['@', ',']).next().is_some_and(|m| m.trim().eq_ignore_ascii_case("pmtr-srv"))
}

/// A PMTR_001_SRV as `pmtr simulate` takes it: `pmtr-srv@ADDRESS[,key=value...]` with volts,
/// amps, pf, hz, kwh (the three phases alike), loop (its main loop, default 1.2s) and
/// firmware (current or legacy).
pub fn parse_server(s: &str) -> Result<PmtrServer, String> {
    let mut parts = s.split(',');
    let head = parts.next().unwrap_or_default().trim();
    let address = match head.split_once('@').map(|(_, a)| a.trim().parse::<u8>()) {
        Some(Ok(a @ 1..=247)) => a,
        _ => {
            return Err(format!("`{s}`: expected pmtr-srv@ADDRESS (1..247)[,key=value...], e.g. pmtr-srv@5"))
        }
    };
    let mut values = ServerValues::default();
    let mut period = Duration::from_millis(1200);
    let mut firmware = Firmware::Current;
    for kv in parts.map(str::trim).filter(|kv| !kv.is_empty()) {
        let (key, v) = kv.split_once('=').ok_or_else(|| format!("`{kv}`: expected key=value (in `{s}`)"))?;
        let (key, v) = (key.trim().to_ascii_lowercase(), v.trim());
        let number = || match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
            _ => Err(format!("{key} must be a number of at least 0, not `{v}` (in `{s}`)")),
        };
        match key.as_str() {
            "volts" | "v" => values.volts = [number()?; 3],
            "amps" | "a" => values.amps = [number()?; 3],
            "pf" => match number()? {
                pf if pf <= 1.0 => values.pf = [pf; 3],
                _ => return Err(format!("pf must be 0..1, not `{v}` (in `{s}`)")),
            },
            "hz" => values.hz = number()?,
            "kwh" | "energy" => values.kwh = [number()?; 3],
            "loop" => match crate::config::parse_duration(v) {
                Ok(d) if d >= Duration::from_millis(50) => period = d,
                _ => return Err(format!("loop must be a duration of at least 50ms, e.g. 1.2s, not `{v}`")),
            },
            "firmware" => {
                firmware = match v {
                    "current" => Firmware::Current,
                    "legacy" => Firmware::LegacyFloat,
                    _ => return Err(format!("firmware is current or legacy, not `{v}`")),
                }
            }
            _ => {
                let keys = ["volts", "amps", "pf", "hz", "kwh", "loop", "firmware"];
                let mut steps = 0;
                let hint = keys
                    .iter()
                    .filter_map(|k| crate::spelling::distance_within(&key, k, 2, &mut steps).map(|d| (d, *k)))
                    .min()
                    .map(|(_, k)| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                return Err(format!(
                    "unknown key `{key}` for a PMTR server{hint} (known: {})",
                    keys.join(", ")
                ));
            }
        }
    }
    Ok(PmtrServer::new(address, firmware, values, period, 0.0))
}

/// PMTR_001_SRV servers on one simulated power-line bus (9600 8N1, 150 ms each way), until
/// Ctrl-C; what the master gives them (clock, relay actions) is logged as it arrives.
async fn simulate_servers(link: Option<PathBuf>, specs: &[String]) -> anyhow::Result<()> {
    let servers =
        specs.iter().map(|s| parse_server(s)).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
    let mut units: Vec<u8> = servers.iter().map(PmtrServer::unit).collect();
    units.sort_unstable();
    if let Some(w) = units.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!("two servers answer to unit {} on the same bus", w[0]);
    }
    let bus = PlcBus::spawn(PlcBusOptions { link, ..PlcBusOptions::new(servers) })?;
    // The link for whoever started the simulator; it goes on simulating if nobody reads it.
    print_out(format_args!("{}\n", bus.path().display()));
    tracing::info!(port = %bus.path().display(), servers = ?specs, "simulating PMTR servers on a power-line bus (9600 8N1)");
    let stop = crate::app::stop_signal();
    tokio::pin!(stop);
    let mut seen: BTreeMap<u8, (bool, usize)> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                for s in bus.servers() {
                    let clock = s.clock_error();
                    let actions: Vec<String> =
                        s.slots().iter().flatten().filter(|a| !a.dry_run).map(|a| a.text.clone()).collect();
                    let was = seen.insert(s.unit(), (clock.is_some(), actions.len())).unwrap_or((false, 0));
                    if let (Some(e), false) = (clock, was.0) {
                        tracing::info!(unit = s.unit(), error_s = format!("{e:+.2}"), "server clock set by the master");
                    }
                    if actions.len() != was.1 {
                        tracing::info!(unit = s.unit(), ?actions, "server relay actions now");
                    }
                }
            }
        }
    }
    tracing::info!(stats = ?bus.stats(), "simulator stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_loads() {
        let text = DEMO_CONFIG.replace("{dir}", "/tmp/pmtr-demo-x").replace("{csv}", "/tmp/pmtr-demo-csv");
        let c = crate::config::load_str(&text, "demo.toml").unwrap_or_else(|e| panic!("{e}"));
        let shed = c.meters.iter().find(|m| m.name == "shed").expect("the PMTR server");
        assert_eq!(shed.address, SERVER);
        assert_eq!(c.meters.len(), 5);
        assert_eq!(c.neutral.len(), 1, "the workshop's supply");
    }

    #[test]
    fn the_servers_clock_and_actions_are_said_once() {
        use crate::bus::status::ServerStatus;
        let mut meters = BTreeMap::new();
        let mut shed = MeterStatus::searching("garden".into(), 5, crate::meter::Model::PmtrSrv);
        meters.insert("shed".to_owned(), shed.clone());
        let holds = |_: u8| Some((Some(0.004), vec!["\"L1U > 2530\" on pin 22".to_owned()]));
        let mut d = Duties::default();
        assert!(d.seen(&meters, holds).is_empty(), "nothing done yet");
        // Four slots of five: not yet.
        shed.server = Some(ServerStatus { slots_pushed: 4, slots_total: 4, ..ServerStatus::default() });
        meters.insert("shed".to_owned(), shed.clone());
        assert!(d.seen(&meters, holds).is_empty());
        shed.server =
            Some(ServerStatus { slots_pushed: 5, slots_total: 5, time_syncs: 1, ..ServerStatus::default() });
        meters.insert("shed".to_owned(), shed.clone());
        assert_eq!(
            d.seen(&meters, holds),
            [
                "shed (PMTR server 5) clock set: its clock now reads this machine's time (+0.00 s)",
                "shed (PMTR server 5) took its relay actions: it evaluates \"L1U > 2530\" on pin 22"
            ]
        );
        assert!(d.seen(&meters, holds).is_empty(), "said once");
    }

    #[test]
    fn a_server_from_the_command_line() {
        assert!(is_server("pmtr-srv@5") && is_server("PMTR-SRV@5,volts=1") && !is_server("pzem-016@4"));
        let s = parse_server("pmtr-srv@5,volts=240,amps=2.5,pf=0.8,hz=49.9,kwh=3,loop=300ms").unwrap();
        assert_eq!(s.unit(), 5);
        assert_eq!(s.firmware(), Firmware::Current);
        let v = s.values();
        assert_eq!((v.volts, v.amps, v.pf, v.hz, v.kwh), ([240.0; 3], [2.5; 3], [0.8; 3], 49.9, [3.0; 3]));
        assert_eq!(
            parse_server("pmtr-srv@7,firmware=legacy").unwrap().unit(),
            1,
            "the legacy firmware is unit 1"
        );
        for (bad, says) in [
            ("pmtr-srv", "pmtr-srv@ADDRESS"),
            ("pmtr-srv@0", "1..247"),
            ("pmtr-srv@5,volt=230", "did you mean `volts`"),
            ("pmtr-srv@5,pf=2", "pf must be 0..1"),
            ("pmtr-srv@5,loop=1ms", "at least 50ms"),
            ("pmtr-srv@5,amps", "key=value"),
        ] {
            let e = parse_server(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
