//! One-shot commands: `pmtr scan`, `pmtr read`, `pmtr pzem …`.

use crate::bus::poll::poll;
use crate::bus::scan::{scan, Found, Probed};
use crate::config::{BusKind, Config, LineSettings, Meter, Parity};
use crate::meter::{pzem, Model};
use crate::modbus::tcp::ModbusTcp;
use crate::modbus::transport::{open_serial, Line, Transport};
use crate::modbus::{Exception, FrameError, Reply, Request};
use crate::reading::{Phase, Reading};
use anyhow::{anyhow, bail, Context};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub fn parse_parity(s: &str) -> Result<Parity, String> {
    match s.to_ascii_lowercase().as_str() {
        "none" | "n" => Ok(Parity::None),
        "even" | "e" => Ok(Parity::Even),
        "odd" | "o" => Ok(Parity::Odd),
        _ => Err(format!("`{s}` is not a parity (none, even, odd)")),
    }
}

/// `pmtr scan`. `bauds` and `parities` empty: 9600 8N1 and the line defaults of the
/// definitions of the catalogue ([`crate::bus::scan::default_lines`]).
pub async fn run_scan(
    patterns: Vec<String>,
    addresses: Vec<u8>,
    bauds: Vec<u32>,
    parities: Vec<Parity>,
    timeout: Duration,
    meters_dir: &std::path::Path,
) -> anyhow::Result<Vec<Found>> {
    let ports = crate::bus::expand_ports(&patterns);
    if ports.is_empty() {
        bail!("no serial port matches {}; is the adapter plugged in? (`ls /dev/tty*`)", patterns.join(", "));
    }
    let catalogue = scan_catalogue(meters_dir);
    let lines = if bauds.is_empty() && parities.is_empty() {
        crate::bus::scan::default_lines(&catalogue)
    } else {
        let bauds = if bauds.is_empty() { vec![9600] } else { bauds };
        let parities = if parities.is_empty() { vec![Parity::None] } else { parities };
        let mut lines = vec![];
        for &baud in &bauds {
            for &parity in &parities {
                lines.push(LineSettings::eight_bits(baud, parity));
            }
        }
        lines
    };
    let total = ports.len() * lines.len() * addresses.len();
    eprintln!(
        "scanning {} port(s) × {} setting(s) ({}) × {} address(es), {} ms per silent address",
        ports.len(),
        lines.len(),
        lines.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", "),
        addresses.len(),
        timeout.as_millis()
    );
    let progress = Arc::new(AtomicUsize::new(0));
    let bar = tokio::spawn(progress_bar(progress.clone(), total));
    let (found, errors) = scan(ports, lines, addresses, timeout, Arc::new(catalogue.clone()), progress).await;
    bar.abort();
    let end = if std::io::stderr().is_terminal() { "\r" } else { "" };
    eprintln!("{end}{} {} device(s) found", bar_line(total, total), found.len());
    for e in &errors {
        eprintln!("warning: {e}");
    }
    if found.is_empty() {
        println!("no device answered");
    } else {
        println!("{:<28} {:<12} {:>7}  {:<22} reading", "port", "settings", "address", "model");
        for f in &found {
            println!(
                "{:<28} {:<12} {:>7}  {:<22} {}",
                f.port,
                f.line.to_string(),
                f.address,
                found_model(f),
                f.detail
            );
        }
    }
    unrecognised_note(&found, &catalogue);
    Ok(found)
}

/// The definitions a scan recognises models among: the built-ins and the user files of
/// `meters_dir` (their errors are warnings here: the files that load are used).
fn scan_catalogue(meters_dir: &std::path::Path) -> Vec<crate::meter::definition::Definition> {
    let (all, errors) = crate::meter::definition::catalogue(Some(meters_dir));
    for e in &errors {
        eprintln!("warning: {e}");
    }
    all.into_iter().map(|(d, _)| d).collect()
}

/// The model column of a device found.
fn found_model(f: &Found) -> String {
    match f.model {
        _ if f.candidates.len() > 1 => f.candidates.join(" or "),
        Some(m) if m.is_pzem() && f.candidates.is_empty() => "pzem (004T/014/016)".to_string(),
        Some(m) => m.to_string(),
        None => "unknown device".to_string(),
    }
}

/// When a device was not named, which definitions a scan cannot recognise (no `[[probe]]`).
fn unrecognised_note(found: &[Found], catalogue: &[crate::meter::definition::Definition]) {
    if found.iter().any(|f| f.model.is_none() && f.candidates.is_empty()) {
        let none = crate::bus::scan::unprobed(catalogue);
        if !none.is_empty() {
            eprintln!(
                "note: these definitions have no probe and cannot be recognised by a scan: {}; try `pmtr read \
                 --model NAME` at the address",
                none.join(", ")
            );
        }
    }
}

/// The model `--add-to` writes for a device found, or why it writes none.
pub fn model_to_add(f: &Found) -> Result<String, String> {
    match (f.candidates.as_slice(), f.model) {
        ([one], _) => Ok(one.clone()),
        ([_, _, ..], _) => Err(format!("its probe fits {}: add it by hand", f.candidates.join(" or "))),
        ([], Some(m)) if m.is_pzem() => {
            Err("a PZEM: add it by hand as pzem-004t, pzem-014 or pzem-016 (its label)".into())
        }
        ([], Some(m)) => Ok(m.to_string()),
        ([], None) => Err("no model recognised: add it by hand with its model".into()),
    }
}

/// `[[meter]]` blocks for the devices of `found` that `--add-to` adds to `bus`: those with one
/// model, at an address not in `taken`, found at the bus's line settings (`line`, None for a
/// bus without one). Returns the text and, for each device left out, its address and why. Pure.
pub fn scan_blocks(
    bus: &str,
    found: &[Found],
    taken: &[u8],
    line: Option<LineSettings>,
) -> (String, usize, Vec<(u8, String)>) {
    let (mut out, mut added, mut skipped) = (String::new(), 0, Vec::new());
    for f in found {
        let why = if taken.contains(&f.address) {
            Err(format!("address {} is already configured on bus {bus:?}", f.address))
        } else if line.is_some_and(|l| l != f.line) {
            Err(format!(
                "found at {}, but bus {bus:?} is at {}: put it on a bus with its settings",
                f.line,
                line.unwrap_or(f.line)
            ))
        } else {
            model_to_add(f)
        };
        match why {
            Ok(model) => {
                added += 1;
                out.push_str(&format!(
                    "\n# Found by `pmtr scan` ({}).\n[[meter]]\nname = \"{bus}-{}\"\nmodel = \"{model}\"\n\
                     address = {}\nbus = \"{bus}\"\n",
                    f.detail.replace('\n', " "),
                    f.address,
                    f.address
                ));
            }
            Err(e) => skipped.push((f.address, e)),
        }
    }
    (out, added, skipped)
}

/// `pmtr scan --add-to FILE --bus NAME`: appends the devices found with one model to `file`,
/// if the result loads; says why each other device is left out.
pub fn add_found(file: &std::path::Path, bus: &str, found: &[Found]) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file.display().to_string();
    let config = crate::config::load_str(&text, &name).map_err(|e| anyhow!("{e}\nfix {name} first"))?;
    let b = config.bus(bus).ok_or_else(|| anyhow!("{name}: no bus named {bus:?}"))?;
    if b.kind == BusKind::PowerLine {
        bail!("bus {bus:?} in {name} is a power-line bus: use `pmtr pmtr scan --add-to`");
    }
    let line = (b.kind == BusKind::Rs485).then_some(b.line);
    let taken: Vec<u8> = config.meters_on(bus).map(|m| m.address).collect();
    let (blocks, added, skipped) = scan_blocks(bus, found, &taken, line);
    for (a, why) in &skipped {
        eprintln!("address {a} not added: {why}");
    }
    if added == 0 {
        return Ok(0);
    }
    append_checked(file, &text, &blocks, "devices")?;
    Ok(added)
}

/// Writes `text` with `blocks` appended to `file` (replacing it at once), if the result loads
/// as a configuration; else writes nothing and says the `what` found would not fit.
pub(crate) fn append_checked(
    file: &std::path::Path,
    text: &str,
    blocks: &str,
    what: &str,
) -> anyhow::Result<()> {
    let name = file.display().to_string();
    let mut new = text.to_owned();
    if !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(blocks);
    crate::config::load_str(&new, &name)
        .map_err(|e| anyhow!("the {what} found would not fit in {name} ({e}); nothing written"))?;
    let tmp = file.with_extension("toml.tmp");
    std::fs::write(&tmp, &new)
        .and_then(|_| std::fs::rename(&tmp, file))
        .with_context(|| format!("writing {name}"))
}

pub(crate) async fn progress_bar(done: Arc<AtomicUsize>, total: usize) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty { Duration::from_millis(200) } else { Duration::from_secs(5) };
    loop {
        tokio::time::sleep(every).await;
        let line = bar_line(done.load(Ordering::Relaxed).min(total), total);
        if tty {
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{line}");
        }
    }
}

pub(crate) fn bar_line(done: usize, total: usize) -> String {
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    format!("[{}{}] {done}/{total}", "#".repeat(filled), "-".repeat(width - filled))
}

/// Where `pmtr read` should look: a configured meter, or an explicit port.
pub struct ReadTarget {
    pub ports: Vec<String>,
    pub line: LineSettings,
    pub meter: Meter,
    pub timeout: Duration,
    pub retries: u32,
    /// How `ports` are reached: serial ports, or one `HOST:PORT` of a network bus.
    pub kind: crate::config::BusKind,
}

impl ReadTarget {
    pub fn from_config(config: &Config, name: &str) -> anyhow::Result<Self> {
        let meter = config.meter(name).cloned().ok_or_else(|| {
            let names: Vec<_> = config.meters.iter().map(|m| m.name.as_str()).collect();
            anyhow!("no meter named `{name}` in the configuration (meters: {})", names.join(", "))
        })?;
        let bus = config.bus(&meter.bus).ok_or_else(|| anyhow!("meter {name}: unknown bus {}", meter.bus))?;
        Ok(ReadTarget {
            ports: if bus.kind.is_network() {
                bus.ports.clone()
            } else {
                crate::bus::expand_ports(&bus.ports)
            },
            line: bus.line,
            timeout: bus.timeout,
            retries: bus.retries,
            meter,
            kind: bus.kind,
        })
    }
}

/// `pmtr read`: one reading, from whichever port answers for the meter.
pub async fn run_read(target: ReadTarget) -> anyhow::Result<Reading> {
    if target.ports.is_empty() {
        bail!(
            "meter {}: no serial port matches the bus patterns; is the adapter plugged in?",
            target.meter.name
        );
    }
    let mut tasks = vec![];
    for port in target.ports.clone() {
        let (meter, line, timeout, retries, kind) =
            (target.meter.clone(), target.line, target.timeout, target.retries, target.kind);
        tasks.push(tokio::spawn(async move {
            let attempts = 1 + retries;
            let connect = |e: std::io::Error| format!("{port}: cannot connect: {e}");
            match kind {
                BusKind::Tcp => {
                    let session = ModbusTcp::connect(&port, CONNECT_TIMEOUT).await.map_err(connect)?;
                    read_on(Transport::new(session, &line, None), port, meter, attempts, timeout).await
                }
                BusKind::RtuOverTcp => {
                    let stream = tcp_stream(&port).await.map_err(connect)?;
                    read_on(Transport::new(stream, &line, None), port, meter, attempts, timeout).await
                }
                BusKind::Rs485 | BusKind::PowerLine => {
                    let stream = open_serial(&port, &line).map_err(|e| e.to_string())?;
                    read_on(Transport::new(stream, &line, None), port, meter, attempts, timeout).await
                }
            }
        }));
    }
    let mut errors = vec![];
    for t in tasks {
        match t.await {
            Ok(Ok((port, samples))) => {
                let m = &target.meter;
                eprintln!("{} ({}, address {}) on {port}", m.name, m.model, m.address);
                return Ok(Reading {
                    meter: m.name.as_str().into(),
                    model: m.model,
                    time: chrono::Utc::now(),
                    samples,
                    quality: Default::default(),
                });
            }
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    bail!(
        "meter {} (address {}) did not answer: {}. Check wiring (A/B), power on the meter's AC input, the address \
         (`pmtr scan`) and the line settings",
        target.meter.name,
        target.meter.address,
        errors.join("; ")
    )
}

/// How long `pmtr read` and `pmtr scan` wait for a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

async fn tcp_stream(host: &str) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(host))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to the connection"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One poll of `meter` on `t`.
async fn read_on<L: Line>(
    mut t: Transport<L>,
    port: String,
    meter: Meter,
    attempts: u32,
    timeout: Duration,
) -> Result<(String, Vec<crate::reading::Sample>), String> {
    let mut plan = crate::bus::driver::reader(&meter, 0).first_plan(1);
    match poll(&mut t, &meter, &mut plan, 0, attempts, timeout, &mut |_| {}).await {
        Ok(Ok(polled)) => Ok((port, polled.samples)),
        Ok(Err(e)) => Err(format!("{port}: {e}")),
        Err(e) => Err(format!("{port}: {e}")),
    }
}

/// `pmtr scan --tcp HOST:PORT` or `--rtu-over-tcp HOST:PORT`: the units (addresses) behind one
/// network device, gateway or converter.
pub async fn run_network_scan(
    kind: BusKind,
    host: &str,
    addresses: Vec<u8>,
    baud: u32,
    parity: Parity,
    timeout: Duration,
    meters_dir: &std::path::Path,
) -> anyhow::Result<Vec<Found>> {
    crate::config::check_host(host).map_err(anyhow::Error::msg)?;
    let line = LineSettings::eight_bits(baud, parity);
    let catalogue = scan_catalogue(meters_dir);
    eprintln!(
        "scanning {} address(es) on {host} ({}), {} ms per silent address",
        addresses.len(),
        kind.name(),
        timeout.as_millis()
    );
    let found = match kind {
        BusKind::Tcp => {
            let session = ModbusTcp::connect(host, CONNECT_TIMEOUT)
                .await
                .with_context(|| format!("connecting to {host}"))?;
            scan_on(Transport::new(session, &line, None), host, line, &addresses, timeout, &catalogue).await?
        }
        _ => {
            let stream = tcp_stream(host).await.with_context(|| format!("connecting to {host}"))?;
            scan_on(Transport::new(stream, &line, None), host, line, &addresses, timeout, &catalogue).await?
        }
    };
    if found.is_empty() {
        println!("no device answered");
    }
    for f in &found {
        println!("{:<28} {:>7}  {:<22} {}", f.port, f.address, found_model(f), f.detail);
    }
    unrecognised_note(&found, &catalogue);
    Ok(found)
}

/// Probes `addresses` in turn. A gateway's "no path" or "target failed to respond" exception
/// (0x0A, 0x0B) is an absent unit, like silence.
async fn scan_on<L: Line>(
    mut t: Transport<L>,
    host: &str,
    line: LineSettings,
    addresses: &[u8],
    timeout: Duration,
    catalogue: &[crate::meter::definition::Definition],
) -> anyhow::Result<Vec<Found>> {
    let mut found = vec![];
    for &a in addresses {
        let first = t.transact(&pzem::read_request(a), timeout).await.with_context(|| host.to_string())?;
        if matches!(
            first.result,
            Err(FrameError::Timeout
                | FrameError::Exception(Exception::GatewayPathUnavailable | Exception::GatewayTargetFailed))
        ) {
            continue;
        }
        if let Some(p) =
            crate::bus::scan::probe(&mut t, a, timeout, catalogue).await.with_context(|| host.to_string())?
        {
            let Probed { model, candidates, detail } = p;
            found.push(Found { port: host.to_owned(), line, address: a, model, candidates, detail });
        }
    }
    Ok(found)
}

/// Prints a reading as a table.
pub fn print_reading(r: &Reading) {
    println!("{} {}", r.meter, r.time.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S %Z"));
    for s in &r.samples {
        println!("  {:<8} {:>14.3} {}", s.variable(), s.value, s.quantity.unit());
    }
}

/// A meter description for the one-shot commands that name a port instead of a meter.
pub fn adhoc_meter(model: Model, address: u8) -> Meter {
    Meter {
        name: format!("{}@{}", model, address),
        model,
        address,
        bus: "cli".into(),
        poll: Duration::from_secs(1),
        phase: Phase::L1,
        server: None,
        unit: None,
        writable: Vec::new(),
    }
}

async fn one_transaction(
    port: &str,
    line: &LineSettings,
    req: Request,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let stream = open_serial(port, line)?;
    let mut t = Transport::new(stream, line, None);
    let mut last = FrameError::Timeout;
    for _ in 0..3 {
        let out = t.transact(&req, timeout).await.with_context(|| format!("serial port {port}"))?;
        match out.result {
            Ok(r) => return Ok(r),
            Err(e @ FrameError::Exception(_)) => bail!("slave {} on {port} refused: {e}", req.address),
            Err(e) => last = e,
        }
    }
    bail!("slave {} on {port}: {last}", req.address)
}

/// `pmtr pzem set-address`: writes a new slave address. Sent to `address` (default 0xF8, the
/// general address, which only works with a single PZEM on the line) and verified by reading it
/// back at the new address.
pub async fn pzem_set_address(port: &str, address: u8, new: u8, timeout: Duration) -> anyhow::Result<()> {
    if !(1..=247).contains(&new) {
        bail!("{new} is not a valid slave address (1..247)");
    }
    let line = pzem_line();
    let req = Request::write_single(address, pzem::REG_ADDRESS, u16::from(new));
    one_transaction(port, &line, req, timeout).await?;
    match one_transaction(port, &line, Request::read_holding(new, pzem::REG_ADDRESS, 1), timeout).await? {
        Reply::Registers(r) if r.first() == Some(&u16::from(new)) => {
            println!("the PZEM on {port} now answers at address {new}");
            Ok(())
        }
        other => bail!("the address was written but reading it back at {new} gave {other:?}"),
    }
}

/// `pmtr pzem reset-energy`.
pub async fn pzem_reset_energy(port: &str, address: u8, timeout: Duration) -> anyhow::Result<()> {
    one_transaction(port, &pzem_line(), pzem::reset_energy_request(address), timeout).await?;
    println!("energy counter of the PZEM at address {address} on {port} reset to 0");
    Ok(())
}

/// `pmtr pzem alarm-threshold`: reads it, or writes `watts` and reads it back.
pub async fn pzem_alarm_threshold(
    port: &str,
    address: u8,
    watts: Option<u16>,
    timeout: Duration,
) -> anyhow::Result<u16> {
    let line = pzem_line();
    if let Some(w) = watts {
        one_transaction(port, &line, Request::write_single(address, pzem::REG_ALARM_THRESHOLD, w), timeout)
            .await?;
    }
    match one_transaction(port, &line, Request::read_holding(address, pzem::REG_ALARM_THRESHOLD, 1), timeout)
        .await?
    {
        Reply::Registers(r) if !r.is_empty() => {
            println!("alarm threshold of the PZEM at address {address} on {port}: {} W", r[0]);
            Ok(r[0])
        }
        other => bail!("unexpected reply {other:?}"),
    }
}

fn pzem_line() -> LineSettings {
    LineSettings::DEFAULT
}

/// `pmtr meters list`: the built-in definitions and the user files of `dir`.
pub fn meters_list(dir: &std::path::Path) -> std::process::ExitCode {
    use crate::meter::definition::{catalogue, Origin};
    let (all, errors) = catalogue(Some(dir));
    println!("{:<14} {:<10} {:<6} {:<34} from", "name", "maker", "phases", "model");
    for (d, origin) in &all {
        let from = match origin {
            Origin::BuiltIn => "built in".to_string(),
            Origin::File(p) => p.display().to_string(),
            Origin::Overrides(p) => format!("{} (overrides the built-in)", p.display()),
        };
        println!("{:<14} {:<10} {:<6} {:<34} {from}", d.name, d.maker, d.phases, d.model);
    }
    for e in &errors {
        eprintln!("{e}");
    }
    if errors.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!("{} error(s) in the files of {}", errors.len(), dir.display());
        std::process::ExitCode::from(1)
    }
}

/// `pmtr meters show NAME`: a definition's table, and the requests a poll sends by each plan.
pub fn meters_show(name: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    use crate::meter::definition::format::phase_name;
    use crate::meter::definition::{find, ByteOrder, Plan, ProbeTest, WordOrder};
    let d = find(name, Some(dir)).ok_or_else(|| unknown_definition(name, dir))?;
    println!("{} — {} {}", d.name, d.maker, d.model);
    if !d.description.is_empty() {
        println!("{}", d.description);
    }
    let edition = if d.source.edition.is_empty() { String::new() } else { format!(", {}", d.source.edition) };
    println!("source: {}{edition}", d.source.title);
    let parity = d.line.parity;
    println!(
        "line: {} {}{parity}{}, address {}; {} phase(s)",
        d.line.baud, 8, d.line.stop_bits, d.line.address, d.phases
    );
    println!(
        "read: at most {} registers per request, gaps up to {}{}",
        d.read.max_block,
        d.read.max_gap,
        if d.read.even { ", even start and count" } else { "" }
    );
    let marked = |own: bool| {
        d.registers.iter().filter(move |r| r.no_value.is_some_and(|m| (Some(m) != r.ty.max_bits()) == own))
    };
    let at_max = marked(false).count();
    if at_max > 0 {
        println!(
            "no value: {at_max} register(s) holding their type's largest value (left out of the reading)"
        );
    }
    let own: Vec<String> = marked(true)
        .filter_map(|r| r.no_value.map(|m| format!("0x{:04X} holding {m:#X}", r.address)))
        .collect();
    if !own.is_empty() {
        println!("no value: {} (left out of the reading)", own.join(", "));
    }
    for p in &d.probe {
        let test = match p.test {
            ProbeTest::Equals(v) => format!("= {v}"),
            ProbeTest::Range { min, max } => format!(
                "in {}..{}",
                min.map(|v| v.to_string()).unwrap_or_default(),
                max.map(|v| v.to_string()).unwrap_or_default()
            ),
        };
        println!("probe: {} 0x{:04X} {} {test}", p.function.name(), p.address, p.ty.name());
    }
    println!();
    println!(
        "{:<8} {:<7} {:<5} {:<10} {:>10} {:<24} {:<6} {:<8} unit",
        "function", "address", "type", "order", "scale", "quantity", "phase", "every"
    );
    for r in &d.registers {
        let order = match (r.word_order, r.byte_order) {
            (_, _) if r.width() == 1 && r.byte_order == ByteOrder::Big => "-".to_string(),
            (WordOrder::HighFirst, ByteOrder::Big) => "high".into(),
            (WordOrder::LowFirst, ByteOrder::Big) => "low".into(),
            (WordOrder::HighFirst, ByteOrder::Little) => "high/le".into(),
            (WordOrder::LowFirst, ByteOrder::Little) => "low/le".into(),
        };
        let offset = if r.offset != 0.0 { format!(" +{}", r.offset) } else { String::new() };
        println!(
            "{:<8} 0x{:04X}  {:<5} {:<10} {:>10} {:<24} {:<6} {:<8} {}",
            r.function.name(),
            r.address,
            r.ty.name(),
            order,
            format!("{}{offset}", r.scale),
            r.quantity.field(),
            r.phase.map_or("meter", phase_name),
            r.every,
            r.quantity.unit()
        );
    }
    for (k, plan) in d.plans().into_iter().enumerate() {
        let layout = d.layout(plan, 0);
        let what = match plan {
            Plan::Blocks { max_block, max_gap } => {
                format!("blocks of at most {max_block}, gaps up to {max_gap}")
            }
            Plan::Values => "one value per request".into(),
        };
        if k == 0 {
            println!();
            println!("a poll: {} request(s)", layout.blocks.len());
            for b in &layout.blocks {
                println!("  FC{:02} 0x{:04X} +{}", b.function.code(), b.start, b.count);
            }
            println!("after exception 02 or 03, from then on:");
        } else {
            println!("  {what}: {} request(s)", layout.blocks.len());
        }
    }
    Ok(())
}

/// `pmtr meters check FILE...`: every error of each file; exit 1 if any.
pub fn meters_check(files: &[std::path::PathBuf]) -> std::process::ExitCode {
    let mut bad = 0;
    for f in files {
        match crate::meter::definition::load_file(f) {
            Ok(d) => {
                println!("{}: ok ({} `{}`, {} registers)", f.display(), d.maker, d.name, d.registers.len())
            }
            Err(e) => {
                eprintln!("{e}");
                eprintln!("{} error(s) in {}", e.0.len(), f.display());
                bad += 1;
            }
        }
    }
    if bad == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}

fn unknown_definition(name: &str, dir: &std::path::Path) -> anyhow::Error {
    let names: Vec<String> =
        crate::meter::definition::catalogue(Some(dir)).0.into_iter().map(|(d, _)| d.name).collect();
    let mut steps = 0;
    let near = names
        .iter()
        .filter_map(|n| crate::spelling::distance_within(name, n, 2, &mut steps).map(|d| (d, n)))
        .min()
        .map(|(_, n)| format!(" (did you mean `{n}`?)"))
        .unwrap_or_default();
    anyhow!("unknown meter model `{name}`{near}; known: {}", names.join(", "))
}

/// A meter model by name: a user definition of `dir` of that name, else one of the
/// hand-written models, else a built-in definition (the order of a configuration's `model`).
pub fn choose_model(name: &str, dir: &std::path::Path) -> anyhow::Result<Model> {
    let (all, _) = crate::meter::definition::catalogue(Some(dir));
    crate::meter::definition::model_named(name, &all).ok_or_else(|| unknown_definition(name, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(address: u8, model: Option<Model>, candidates: &[&str]) -> Found {
        Found {
            port: "/dev/ttyUSB0".into(),
            line: LineSettings::DEFAULT,
            address,
            model,
            candidates: candidates.iter().map(|c| c.to_string()).collect(),
            detail: "probe: holding 0xFC02 = 112".into(),
        }
    }

    #[test]
    fn add_to_writes_one_model_and_says_why_not_for_the_others() {
        let sdm = crate::meter::definition::resolve("sdm630");
        let all = [
            found(1, Some(sdm), &["sdm630"]),
            found(2, None, &["sdm630", "my-sdm630"]),
            found(3, None, &[]),
            found(4, Some(Model::Pzem016), &[]),
            found(5, Some(Model::Rx380), &[]),
            found(6, Some(sdm), &["sdm630"]),
            Found { line: LineSettings::n81(2400), ..found(7, Some(sdm), &["sdm630"]) },
        ];
        let (text, added, skipped) = scan_blocks("main", &all, &[6], Some(LineSettings::DEFAULT));
        assert_eq!(added, 2);
        assert!(
            text.contains("name = \"main-1\"\nmodel = \"sdm630\"\naddress = 1\nbus = \"main\""),
            "{text}"
        );
        assert!(text.contains("model = \"rx380\"\naddress = 5"), "{text}");
        let want =
            [(2, "sdm630 or my-sdm630"), (3, "no model"), (4, "PZEM"), (6, "already"), (7, "2400 8N1")];
        assert_eq!(skipped.len(), want.len(), "{skipped:?}");
        for ((a, why), (wa, words)) in skipped.iter().zip(want) {
            assert!(*a == wa && why.contains(words), "{a}: {why}");
        }
    }
}
