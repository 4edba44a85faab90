//! One-shot commands: `pmtr scan`, `pmtr read`, `pmtr pzem …`.

use crate::bus::poll::poll;
use crate::bus::scan::{scan, Found};
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

/// `pmtr scan`.
pub async fn run_scan(
    patterns: Vec<String>,
    addresses: Vec<u8>,
    bauds: Vec<u32>,
    parities: Vec<Parity>,
    timeout: Duration,
) -> anyhow::Result<Vec<Found>> {
    let ports = crate::bus::expand_ports(&patterns);
    if ports.is_empty() {
        bail!("no serial port matches {}; is the adapter plugged in? (`ls /dev/tty*`)", patterns.join(", "));
    }
    let mut lines = vec![];
    for &baud in &bauds {
        for &parity in &parities {
            lines.push(LineSettings::eight_bits(baud, parity));
        }
    }
    let total = ports.len() * lines.len() * addresses.len();
    eprintln!(
        "scanning {} port(s) × {} setting(s) × {} address(es), {} ms per silent address",
        ports.len(),
        lines.len(),
        addresses.len(),
        timeout.as_millis()
    );
    let progress = Arc::new(AtomicUsize::new(0));
    let bar = tokio::spawn(progress_bar(progress.clone(), total));
    let (found, errors) = scan(ports, lines, addresses, timeout, progress).await;
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
            let model = match f.model {
                Some(m) if m.is_pzem() => "pzem (004T/014/016)".to_string(),
                Some(m) => m.to_string(),
                None => "unknown device".to_string(),
            };
            println!(
                "{:<28} {:<12} {:>7}  {:<22} {}",
                f.port,
                f.line.to_string(),
                f.address,
                model,
                f.detail
            );
        }
    }
    Ok(found)
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
    let mut plan = crate::bus::driver::reader(&meter).first_plan(1);
    match poll(&mut t, &meter, &mut plan, attempts, timeout, &mut |_| {}).await {
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
) -> anyhow::Result<Vec<Found>> {
    crate::config::check_host(host).map_err(anyhow::Error::msg)?;
    let line = LineSettings::eight_bits(baud, parity);
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
            scan_on(Transport::new(session, &line, None), host, line, &addresses, timeout).await?
        }
        _ => {
            let stream = tcp_stream(host).await.with_context(|| format!("connecting to {host}"))?;
            scan_on(Transport::new(stream, &line, None), host, line, &addresses, timeout).await?
        }
    };
    if found.is_empty() {
        println!("no device answered");
    }
    for f in &found {
        let model = match f.model {
            Some(m) if m.is_pzem() => "pzem (004T/014/016)".to_string(),
            Some(m) => m.to_string(),
            None => "unknown device".to_string(),
        };
        println!("{:<28} {:>7}  {:<22} {}", f.port, f.address, model, f.detail);
    }
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
        if let Some((model, detail)) =
            crate::bus::scan::probe(&mut t, a, timeout).await.with_context(|| host.to_string())?
        {
            found.push(Found { port: host.to_owned(), line, address: a, model, detail });
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
