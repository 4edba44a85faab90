//! `pmtr pmtr …`: set-up commands for PMTR_001_SRV servers on a power-line bus, run with the
//! daemon stopped (the daemon does the same by itself: clocks at start, daily and after a
//! reboot; relay actions at start and after a reboot).

use crate::config::{Config, LineSettings, Meter};
use crate::modbus::transport::{open_serial, Line, Transport};
use crate::pmtr::master::{self, resync, Probe, ServerLink};
use anyhow::{anyhow, bail, Context};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The power-line modem's line: 9600 8N1.
pub fn modem_line() -> LineSettings {
    LineSettings::DEFAULT
}

/// A server found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundServer {
    pub address: u8,
    pub legacy: bool,
    /// Its 12 V supply (current firmware only).
    pub supply_12v_mv: Option<u16>,
}

/// Probes every address on one port; the bus is resynchronised after every silent address,
/// so a server right after an absent one is not missed (pmtr-server.md §11).
pub async fn scan_port<L: Line>(
    t: &mut Transport<L>,
    addresses: &[u8],
    timeout: Duration,
    progress: &AtomicUsize,
) -> std::io::Result<(Vec<FoundServer>, Vec<String>)> {
    let mut found = vec![];
    let mut odd = vec![];
    for &a in addresses {
        match master::probe(t, a, timeout).await? {
            Probe::Absent => {}
            Probe::Current { supply_12v_mv } => {
                found.push(FoundServer { address: a, legacy: false, supply_12v_mv: Some(supply_12v_mv) })
            }
            Probe::Legacy => found.push(FoundServer { address: a, legacy: true, supply_12v_mv: None }),
            Probe::Other(e) => odd.push(format!("address {a}: {e} (not a PMTR_001_SRV?)")),
        }
        progress.fetch_add(1, Ordering::Relaxed);
    }
    Ok((found, odd))
}

/// `pmtr pmtr scan`.
pub async fn run_scan(
    port: &str,
    addresses: Vec<u8>,
    timeout: Duration,
    add_to: Option<(&Path, &str)>,
) -> anyhow::Result<Vec<FoundServer>> {
    let line = modem_line();
    let stream = open_serial(port, &line)?;
    let mut t = Transport::new(stream, &line, None).with_resync(Some(resync()));
    let total = addresses.len();
    eprintln!(
        "scanning {port} for PMTR_001_SRV servers: {total} address(es), up to {} s each when silent",
        (timeout + Duration::from_secs(1)).as_secs_f64()
    );
    let progress = Arc::new(AtomicUsize::new(0));
    let bar = tokio::spawn(super::tools::progress_bar(progress.clone(), total));
    let result = scan_port(&mut t, &addresses, timeout, &progress).await;
    bar.abort();
    let (found, odd) = result.with_context(|| format!("port {port}"))?;
    eprintln!("{} {} server(s) found", super::tools::bar_line(total, total), found.len());
    for o in &odd {
        eprintln!("warning: {o}");
    }
    if found.is_empty() {
        println!("no server answered");
        return Ok(found);
    }
    println!("{:>7}  {:<8} 12 V supply", "address", "firmware");
    for f in &found {
        let supply = f.supply_12v_mv.map_or("-".to_string(), |mv| format!("{:.2} V", f64::from(mv) / 1000.0));
        println!("{:>7}  {:<8} {supply}", f.address, if f.legacy { "legacy" } else { "current" });
    }
    match add_to {
        Some((file, bus)) => {
            let added = add_to_config(file, bus, &found)?;
            println!("{added} server(s) added to {} on bus {bus:?}", file.display());
        }
        None => {
            println!(
                "\nTo poll them, add to the configuration (or run again with --add-to FILE --bus NAME):\n"
            );
            print!("{}", meter_blocks("plc", &found, &[]));
        }
    }
    Ok(found)
}

/// `[[meter]]` blocks for the servers found whose address `taken` does not list.
pub fn meter_blocks(bus: &str, found: &[FoundServer], taken: &[u8]) -> String {
    let mut out = String::new();
    for f in found.iter().filter(|f| !taken.contains(&f.address)) {
        out.push_str(&format!(
            "\n# Found by `pmtr pmtr scan` ({} firmware).\n[[meter]]\nname = \"{bus}-{}\"\nmodel = \"pmtr-srv\"\n\
             address = {}\nbus = \"{bus}\"\n",
            if f.legacy { "legacy" } else { "current" },
            f.address,
            f.address
        ));
    }
    out
}

/// Appends the servers not yet configured on `bus` to `file`, if the result loads.
fn add_to_config(file: &Path, bus: &str, found: &[FoundServer]) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let config = crate::config::load_str(&text, &file.display().to_string())
        .map_err(|e| anyhow!("{e}\nfix {} first", file.display()))?;
    let b = config.bus(bus).ok_or_else(|| anyhow!("{}: no bus named {bus:?}", file.display()))?;
    if b.kind != crate::config::BusKind::PowerLine {
        bail!("bus {bus:?} in {} is not `kind = \"power-line\"`", file.display());
    }
    let taken: Vec<u8> = config.meters_on(bus).map(|m| m.address).collect();
    let blocks = meter_blocks(bus, found, &taken);
    let added = found.iter().filter(|f| !taken.contains(&f.address)).count();
    if added == 0 {
        return Ok(0);
    }
    super::tools::append_checked(file, &text, &blocks, "servers")?;
    Ok(added)
}

/// The configured servers named (all when `names` is empty), with their bus's port, timeout
/// and retries.
fn servers<'c>(config: &'c Config, names: &[String]) -> anyhow::Result<Vec<&'c Meter>> {
    let all: Vec<&Meter> = config.meters.iter().filter(|m| m.server.is_some()).collect();
    if all.is_empty() {
        bail!("the configuration has no `model = \"pmtr-srv\"` meter");
    }
    if names.is_empty() {
        return Ok(all);
    }
    names
        .iter()
        .map(|n| {
            all.iter().copied().find(|m| &m.name == n).ok_or_else(|| {
                let known: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
                anyhow!("no server named {n:?} (servers: {})", known.join(", "))
            })
        })
        .collect()
}

/// Opens the server's bus and finds it: the first port of the bus where it answers. Returns
/// the transport and whether it runs the legacy firmware.
async fn open_server(
    config: &Config,
    m: &Meter,
) -> anyhow::Result<(Transport<crate::modbus::transport::SerialLine>, ServerLink, bool)> {
    let bus = config.bus(&m.bus).ok_or_else(|| anyhow!("{}: unknown bus", m.name))?;
    let ports = crate::bus::expand_ports(&bus.ports);
    let link = ServerLink { address: m.address, timeout: bus.timeout, attempts: 1 + bus.retries };
    let mut errors = vec![];
    for port in ports {
        let stream = match open_serial(&port, &bus.line) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        // No pacing by default (see `bus::driver::frame_gap`): with the daemon stopped, only
        // this command talks, to one server at a time (the next one may miss its first
        // request, which the resync and a retry cover).
        let mut t = Transport::new(stream, &bus.line, bus.frame_gap).with_resync(Some(resync()));
        for _ in 0..link.attempts {
            match master::probe(&mut t, m.address, bus.timeout).await? {
                Probe::Current { .. } => return Ok((t, link, false)),
                Probe::Legacy => return Ok((t, link, true)),
                Probe::Absent => continue,
                Probe::Other(e) => {
                    errors.push(format!("{port}: {e}"));
                    break;
                }
            }
        }
        errors.push(format!("{port}: no answer"));
    }
    bail!("server {} (address {}) not found: {}", m.name, m.address, errors.join("; "))
}

/// `pmtr pmtr sync-time`.
pub async fn run_sync_time(config: &Config, names: &[String]) -> anyhow::Result<()> {
    let mut failed = 0;
    for m in servers(config, names)? {
        let result = async {
            let (mut t, link, _) = open_server(config, m).await?;
            let synced = master::sync_time(&mut t, &link, 0, &mut |_| {}).await?;
            anyhow::Ok(synced)
        }
        .await;
        match result {
            Ok(s) => println!(
                "{}: clock set (round trip {} ms; the server adds 6 s to the {} written)",
                m.name,
                s.round_trip.as_millis(),
                s.written
            ),
            Err(e) => {
                failed += 1;
                eprintln!("{}: {e:#}", m.name);
            }
        }
    }
    if failed > 0 {
        bail!("{failed} server(s) not synchronised");
    }
    Ok(())
}

/// `pmtr pmtr push-actions`: all five slots of each server (configured, then neutral).
pub async fn run_push_actions(config: &Config, names: &[String]) -> anyhow::Result<()> {
    let mut failed = 0;
    for m in servers(config, names)? {
        let Some(server) = &m.server else { continue };
        if !server.push_actions {
            println!("{}: `push_actions = false`, left alone", m.name);
            continue;
        }
        let result = async {
            let (mut t, link, legacy) = open_server(config, m).await?;
            let configured = server
                .actions
                .iter()
                .map(|a| a.slot(legacy))
                .collect::<Result<Vec<_>, String>>()
                .map_err(|why| anyhow!("the legacy firmware cannot take an action: {why}"))?;
            for (n, slot) in crate::pmtr::duty::all_slots(&configured).iter().enumerate() {
                master::push_slot(&mut t, &link, n as u8, slot, &mut |_| {})
                    .await
                    .with_context(|| format!("slot {n}"))?;
                let what = server.actions.get(n).map_or("(unused: neutralised)".to_string(), |a| {
                    format!("{}  → sent as `{}`", a.when, slot.text)
                });
                println!("{}: slot {n} taken: {what}", m.name);
                let _ = std::io::stdout().flush();
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            failed += 1;
            eprintln!("{}: {e:#}", m.name);
        }
    }
    if failed > 0 {
        bail!("{failed} server(s) not set up");
    }
    Ok(())
}

/// Refuses to run while a daemon runs on this configuration (its run marker names a live
/// process, or its control socket answers): it owns the port, and two masters on one bus garble
/// each other's frames.
pub async fn refuse_if_daemon_runs(config: &Config) -> anyhow::Result<()> {
    let marker = crate::alert::run::running_marker(config);
    let pid = std::fs::read_to_string(&marker).ok().and_then(|s| s.trim().parse::<u32>().ok());
    let live = pid.filter(|&p| p != std::process::id() && Path::new(&format!("/proc/{p}")).exists());
    let socket = &config.gateway.control_socket;
    let answers = tokio::net::UnixStream::connect(socket).await.is_ok();
    if live.is_some() || answers {
        let why = match live {
            Some(p) => format!("process {p}, in {}", marker.display()),
            None => format!("its control socket {} answers", socket.display()),
        };
        bail!(
            "the pmtr daemon is running ({why}) and owns the bus: stop it first (`systemctl stop pmtr`). \
             It sets the servers' clocks and pushes their actions itself, at start, daily and after a reboot"
        );
    }
    Ok(())
}
