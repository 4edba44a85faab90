//! PMTR master mode against simulated PMTR_001_SRV servers on one simulated power-line bus
//! (src/sim/plc.rs; the servers model the firmware's quirks: one request per loop, the 64-byte
//! receive buffer, the shared-bus swallow, the +6 s clock offset, RAM wiped at reboot).
//!
//! - the daemon sets every server's clock and pushes five relay actions to each, slot by slot,
//!   and does both again by itself after a server reboots;
//! - a scan finds every server even when an absent address sits between two present ones (and,
//!   without the resync frame, it would not);
//! - `pmtr pmtr sync-time` and `push-actions`, and a legacy-firmware server whose expressions
//!   are sent in SI units;
//! - a stop cuts a relay-action push between two frames.

#[path = "support/process.rs"]
mod process;

use pmtr::app::servers::{self, scan_port, FoundServer};
use pmtr::config::load_str;
use pmtr::modbus::transport::{open_serial, Transport};
use pmtr::sim::{Firmware, PlcBus, PlcBusOptions, PmtrServer, ServerValues};
use process::Proc;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

/// Shorter than the real firmware's ~1.2 s, so that the suite runs in reasonable time; every
/// behaviour is the same per loop.
const LOOP: Duration = Duration::from_millis(200);

fn server(address: u8, firmware: Firmware, volts: f64) -> PmtrServer {
    let values = ServerValues { volts: [volts, volts + 1.0, volts + 2.0], ..ServerValues::default() };
    PmtrServer::new(address, firmware, values, LOOP, 0.0)
}

fn plc(dir: &Path, servers: Vec<PmtrServer>) -> PlcBus {
    let opts = PlcBusOptions {
        link: Some(dir.join("ttyPLC0")),
        transit: Duration::from_millis(40),
        split_frames: true,
        ..PlcBusOptions::new(servers)
    };
    PlcBus::spawn(opts).unwrap()
}

/// Five actions per server, in SI units, and what the firmware must receive.
const ACTIONS: [(&str, &str, &str); 5] = [
    ("L1U > 253 || L2U > 253 || L3U > 253", "L1U > 2530 || L2U > 2530 || L3U > 2530", "[22]"),
    ("L1I > 16", "L1I > 1600", "[23, 24]"),
    ("L3P > 2000 && L3pf < 0.5", "L3P > 2000 && L3pf < 50", "[25]"),
    ("L2f < 49.5", "L2f < 495", "[26]"),
    ("L1e > 100.5", "L1e > 1005", "[27, 28, 29]"),
];

fn config_text(dir: &Path, addresses: &[u8]) -> String {
    let mut s = format!(
        r#"
[gateway]
name = "plc-test"
state_dir = "{state}"
# The servers' clocks are checked against this machine's, whether or not NTP set it.
clock_sync_wait = "0s"
[[bus]]
name = "plc"
port = "{port}"
kind = "power-line"
timeout = "2s"
rescan = "500ms"
# The daemon's default pace is one loop of the real firmware (1.2 s); these servers loop every
# 200 ms, so the gap is set for them: two of their loops. Each server takes one frame a loop
# off its 63-byte receive buffer, and hears every frame on the bus; back to back, a reply of
# 55 bytes and the next request overflow it. Without a gap one request in fifteen
# went unanswered here (900 to 1,800 bytes lost per server in two minutes), and a server missed
# at the start waited a minute for its probe's back-off; with it, none is lost but at a reboot.
frame_gap = "400ms"
[[sink]]
type = "csv"
dir = "{csv}"
flush_interval = "200ms"
"#,
        state = dir.join("state").display(),
        port = dir.join("ttyPLC0").display(),
        csv = dir.join("csv").display(),
    );
    for a in addresses {
        s.push_str(&format!(
            "[[meter]]\nname = \"panel-{a}\"\nmodel = \"pmtr-srv\"\naddress = {a}\npoll = \"2s\"\n"
        ));
        for (when, _, pins) in ACTIONS {
            s.push_str(&format!(
                "[[meter.action]]\nwhen = \"{when}\"\npins = {pins}\nlevel = \"low\"\nrecovery = \"60s\"\n"
            ));
        }
    }
    s
}

/// Whether the server holds the five actions exactly as the firmware must see them.
fn holds_every_action(bus: &PlcBus, address: u8) -> Result<(), String> {
    let slots = bus.with_server(address, |s| s.slots()).ok_or("no such server")?;
    for (i, (slot, (_, sent, pins))) in slots.iter().zip(ACTIONS).enumerate() {
        let slot = slot.as_ref().ok_or(format!("slot {i} empty"))?;
        if slot.text != sent {
            return Err(format!("slot {i}: {:?} instead of {sent:?}", slot.text));
        }
        let want: Vec<u8> = pins.trim_matches(['[', ']']).split(", ").map(|p| p.parse().unwrap()).collect();
        let mut padded = [want[0]; 8];
        padded[..want.len()].copy_from_slice(&want);
        if slot.pins != padded {
            return Err(format!("slot {i}: pins {:?} instead of {padded:?}", slot.pins));
        }
        // 60 s at 1.2 s a loop; low when true, automatic recovery, no dry run, 5 s window.
        if (slot.window, slot.recovery, slot.level_high, slot.auto, slot.dry_run)
            != (5, 50, false, true, false)
        {
            return Err(format!("slot {i}: options {slot:?}"));
        }
    }
    Ok(())
}

async fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match ok() {
            Ok(()) => return,
            Err(e) if start.elapsed() > limit => panic!("{what}: not after {limit:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn clock_error(bus: &PlcBus, address: u8) -> Result<f64, String> {
    bus.with_server(address, |s| s.clock_error()).flatten().ok_or_else(|| "clock never set".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_sets_up_every_server_and_again_after_a_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let addresses = [3u8, 5, 9];
    let bus = plc(dir.path(), addresses.iter().map(|&a| server(a, Firmware::Current, 230.0)).collect());
    let config = load_str(&config_text(dir.path(), &addresses), "pmtr.toml").unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(pmtr::app::run::run_with(config.clone(), None, async move {
        let _ = stop_rx.await;
    }));

    for &a in &addresses {
        // The actions go first, then the clock.
        wait_for(&format!("server {a} set up"), Duration::from_secs(240), || {
            holds_every_action(&bus, a)?;
            clock_error(&bus, a).map(|_| ())
        })
        .await;
        // The frame gap is kept out of the timing: counted in, it would set the clock 0.4 s late.
        let err = clock_error(&bus, a).unwrap();
        assert!(err.abs() < 0.25, "server {a}: clock {err:+.3} s off");
    }
    let before = bus.with_server(5, |s| s.counters()).unwrap();
    assert_eq!(before.time_syncs, 1);

    // A reboot wipes its tables and slots; nobody asks, the gateway sees its sentinel wiped.
    assert!(bus.reboot(5));
    assert!(bus.with_server(5, |s| s.slots().iter().all(Option::is_none)).unwrap());
    // A deadline, not a speed: under load a failed duty backs off before it tries again.
    wait_for("server 5 set up again after its reboot", Duration::from_secs(240), || {
        holds_every_action(&bus, 5)?;
        let syncs = bus.with_server(5, |s| s.counters().time_syncs).unwrap_or(0);
        if syncs < 2 {
            return Err(format!("{syncs} time sync(s)"));
        }
        Ok(())
    })
    .await;
    assert!(clock_error(&bus, 5).unwrap().abs() < 0.25);
    // The others were left alone: one sync each.
    for a in [3, 9] {
        assert_eq!(bus.with_server(a, |s| s.counters().time_syncs), Some(1), "server {a}");
    }
    // What the pacing kept whole (see `config_text`); a reboot loses what was on its way.
    for a in addresses {
        let lost = bus.with_server(a, |s| s.counters().bytes_lost).unwrap();
        eprintln!("server {a}: {lost} byte(s) lost to a full receive buffer");
    }
    let _ = stop_tx.send(());
    daemon.await.unwrap().unwrap();

    // Their readings were stored like any meter's, in SI units.
    let csv = std::fs::read_dir(dir.path().join("csv"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("panel-9-"))
        .expect("a CSV file for panel-9");
    let text = std::fs::read_to_string(csv.path()).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    // One row per phase: the last row of `phase`, column `field`.
    let value = |phase: &str, field: &str| {
        let i = header
            .iter()
            .position(|h| h.split(' ').next() == Some(field))
            .unwrap_or_else(|| panic!("{field} in {header:?}"));
        let row: Vec<&str> =
            text.lines().rev().map(|l| l.split(',').collect::<Vec<_>>()).find(|r| r[3] == phase).unwrap();
        row[i].parse::<f64>().unwrap_or_else(|_| panic!("{phase} {field} = {:?}", row[i]))
    };
    assert_eq!(value("l2", "voltage"), 231.0);
    assert_eq!(value("l3", "voltage_avg"), 232.0);
    assert_eq!(value("l1", "current"), 1.0);
    assert_eq!(value("total", "low_power"), 0.0);
    assert!((value("total", "supply_12v") - 12.49).abs() < 0.02, "{}", value("total", "supply_12v"));
}

fn modem_transport(path: &Path, resync: bool) -> Transport<pmtr::modbus::transport::SerialLine> {
    let line = servers::modem_line();
    let stream = open_serial(path.to_str().unwrap(), &line).unwrap();
    Transport::new(stream, &line, None).with_resync(resync.then(pmtr::pmtr::master::resync))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_finds_every_server_around_an_absent_address() {
    let dir = tempfile::tempdir().unwrap();
    let bus = plc(
        dir.path(),
        vec![
            server(2, Firmware::Current, 230.0),
            server(4, Firmware::Current, 230.0),
            server(1, Firmware::LegacyFloat, 230.0),
        ],
    );
    // Address 3 is absent, between 2 and 4; the legacy server answers at 1 whatever its DIP.
    let progress = AtomicUsize::new(0);
    let mut t = modem_transport(&bus.path(), true);
    let (found, odd) = scan_port(&mut t, &[1, 2, 3, 4, 5], Duration::from_secs(1), &progress).await.unwrap();
    assert!(odd.is_empty(), "{odd:?}");
    let addrs: Vec<(u8, bool)> = found.iter().map(|f| (f.address, f.legacy)).collect();
    assert_eq!(addrs, [(1, true), (2, false), (4, false)]);
    assert_eq!(progress.load(std::sync::atomic::Ordering::Relaxed), 5);
    drop(t);

    // The control: the same scan without the resync frame misses the server after the gap
    // (it takes our request for the absent server's reply, and drops it).
    let mut t = modem_transport(&bus.path(), false);
    let (found, _) = scan_port(&mut t, &[3, 4], Duration::from_secs(1), &progress).await.unwrap();
    assert!(found.iter().all(|f| f.address != 4), "found {found:?}: the swallow quirk was not reproduced");
    let swallowed = bus.with_server(4, |s| s.counters().swallowed).unwrap();
    assert!(swallowed >= 1, "server 4 swallowed {swallowed} frames");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_blocks_fit_in_the_configuration() {
    let found = [
        FoundServer { address: 3, legacy: false, supply_12v_mv: Some(12_400) },
        FoundServer { address: 7, legacy: true, supply_12v_mv: None },
    ];
    let blocks = servers::meter_blocks("plc", &found, &[3]);
    let text = format!("[[bus]]\nname = \"plc\"\nport = \"/dev/ttyS0\"\nkind = \"power-line\"\n{blocks}");
    let config = load_str(&text, "pmtr.toml").unwrap();
    assert_eq!(config.meters.len(), 1);
    assert_eq!((config.meters[0].name.as_str(), config.meters[0].address), ("plc-7", 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_set_clocks_and_push_si_expressions_to_the_legacy_firmware() {
    let dir = tempfile::tempdir().unwrap();
    let bus =
        plc(dir.path(), vec![server(1, Firmware::LegacyFloat, 230.0), server(6, Firmware::Current, 230.0)]);
    let text = format!(
        r#"
[gateway]
state_dir = "{state}"
[[bus]]
name = "plc"
port = "{port}"
kind = "power-line"
timeout = "2s"
[[meter]]
name = "old"
model = "pmtr-srv"
address = 1
[[meter.action]]
when = "L1U > 253"
pins = [22]
level = "high"
recovery = "0s"
[[meter]]
name = "new"
model = "pmtr-srv"
address = 6
[[meter.action]]
when = "L1U > 253"
pins = [22]
level = "high"
"#,
        state = dir.path().join("state").display(),
        port = bus.path().display(),
    );
    let config = load_str(&text, "pmtr.toml").unwrap();
    // A daemon running on this configuration owns the bus: the commands refuse.
    let mut other =
        Proc::start("sleep", std::process::Command::new("sleep").arg("30"), "apt-get install coreutils");
    std::fs::create_dir_all(&config.gateway.state_dir).unwrap();
    let marker = config.gateway.state_dir.join("running");
    std::fs::write(&marker, format!("{}\n", other.pid())).unwrap();
    let err = servers::refuse_if_daemon_runs(&config).await.unwrap_err().to_string();
    assert!(err.contains(&format!("process {}", other.pid())) && err.contains("stop it first"), "{err}");
    other.kill();
    // A marker left by a crash names a dead process: no refusal.
    servers::refuse_if_daemon_runs(&config).await.unwrap();
    std::fs::remove_file(&marker).unwrap();
    servers::run_sync_time(&config, &[]).await.unwrap();
    for a in [1, 6] {
        let err = clock_error(&bus, a).unwrap();
        assert!(err.abs() < 1.0, "server {a}: clock {err:+.3} s off");
    }
    servers::run_push_actions(&config, &[]).await.unwrap();
    let old = bus.with_server(1, |s| s.slots()).unwrap();
    assert_eq!(old[0].as_ref().unwrap().text, "L1U > 253", "the legacy firmware compares SI values");
    let new = bus.with_server(6, |s| s.slots()).unwrap();
    assert_eq!(new[0].as_ref().unwrap().text, "L1U > 2530");
    // The four unused slots are neutralised: never true, dry run.
    for s in new[1..].iter().chain(&old[1..]) {
        let s = s.as_ref().unwrap();
        assert_eq!((s.text.as_str(), s.dry_run, s.window), ("0", true, 5));
    }
    let err = servers::run_sync_time(&config, &["nope".to_string()]).await.unwrap_err();
    assert!(err.to_string().contains("no server named \"nope\""), "{err}");
}

/// A stop asked in the middle of a relay-action push (after its second frame) takes effect at
/// the next frame: nothing more is sent, and the server never commits a half-staged slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_cuts_a_slot_push_between_frames() {
    let dir = tempfile::tempdir().unwrap();
    let bus = plc(dir.path(), vec![server(5, Firmware::Current, 230.0)]);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut t = modem_transport(&bus.path(), false).with_stop(stopping);
    let link = pmtr::pmtr::master::ServerLink { address: 5, timeout: Duration::from_secs(2), attempts: 3 };
    let slot = pmtr::pmtr::action::ActionImage {
        text: "L1U > 2530".into(),
        ..pmtr::pmtr::action::ActionImage::neutral(22)
    };
    let mut frames = 0;
    let result = pmtr::pmtr::master::push_slot(&mut t, &link, 0, &slot, &mut |_| {
        frames += 1;
        if frames == 2 {
            stop.send_replace(true);
        }
    })
    .await;
    match result {
        Err(pmtr::pmtr::master::DutyError::Port(e)) => {
            assert!(pmtr::modbus::transport::is_stopping(&e), "{e}")
        }
        other => panic!("not stopped: {other:?}"),
    }
    assert_eq!(frames, 2, "no frame after the stop");
    assert!(bus.with_server(5, |s| s.slots()[0].is_none()).unwrap(), "nothing committed");
}
