//! The bus engine over pseudo-terminals against simulated meters in trouble: a dead meter, a
//! meter that dies, garbage on the line, bad CRCs, an adapter unplugged and re-plugged under
//! another name, a port that refuses its settings.

#[path = "support/simulator.rs"]
mod simulator;

use pmtr::bus::status::MeterStatus;
use pmtr::bus::BusEngine;
use pmtr::config::{Config, LineSettings, Parity};
use pmtr::reading::Reading;
use pmtr::sim::{Fault, SimPort};
use simulator::{line_8n1 as line, spawn as sim};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

fn sim_at(link: &Path, line: LineSettings, meters: &[&str]) -> SimPort {
    simulator::spawn_with(link, line, Duration::from_millis(5), meters)
}

fn config(dir: &Path, pattern: &str, extra_bus: &str, meters: &[(&str, u8)]) -> Config {
    let mut text = format!(
        "[gateway]\nname = \"t\"\nstate_dir = \"{}\"\nlog_readings = false\n\
         [[bus]]\nname = \"b\"\nports = [\"{}\"]\ntimeout = \"100ms\"\nretries = 2\nrescan = \"200ms\"\n\
         max_backoff = \"2s\"\n{extra_bus}\n",
        dir.join("state").display(),
        dir.join(pattern).display()
    );
    for (name, address) in meters {
        text += &format!(
            "[[meter]]\nname = \"{name}\"\nmodel = \"pzem-016\"\naddress = {address}\npoll = \"200ms\"\n"
        );
    }
    pmtr::config::load_str(&text, "test.toml").unwrap()
}

struct Run {
    engine: BusEngine,
    rx: mpsc::Receiver<Reading>,
    stop: watch::Sender<bool>,
}

fn start(config: &Config) -> Run {
    let (tx, rx) = mpsc::channel(1024);
    let (stop, stop_rx) = watch::channel(false);
    Run { engine: BusEngine::start(config, tx, stop_rx), rx, stop }
}

impl Run {
    /// Collects readings for `d`.
    async fn collect(&mut self, d: Duration) -> Vec<(Instant, Reading)> {
        let end = Instant::now() + d;
        let mut out = vec![];
        while let Ok(Some(r)) = tokio::time::timeout_at(end, self.rx.recv()).await {
            out.push((Instant::now(), r));
        }
        out
    }

    async fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        mut f: impl FnMut(&Reading, &BTreeMap<String, MeterStatus>) -> bool,
    ) {
        let end = Instant::now() + within;
        loop {
            let r = tokio::time::timeout_at(end, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("{what}: not within {within:?}; status {:#?}", self.engine.status.snapshot())
                })
                .expect("engine ended");
            if f(&r, &self.engine.status.snapshot()) {
                return;
            }
        }
    }

    async fn stop(self) -> BTreeMap<String, MeterStatus> {
        let _ = self.stop.send(true);
        let status = self.engine.status.clone();
        self.engine.join().await;
        status.snapshot()
    }
}

fn count(readings: &[(Instant, Reading)], meter: &str) -> usize {
    readings.iter().filter(|(_, r)| &*r.meter == meter).count()
}

fn max_gap(readings: &[(Instant, Reading)], meter: &str) -> Duration {
    let t: Vec<Instant> = readings.iter().filter(|(_, r)| &*r.meter == meter).map(|(t, _)| *t).collect();
    t.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_that_dies_costs_the_others_at_most_its_timeout_budget() {
    let dir = tempfile::tempdir().unwrap();
    let port = sim(&dir.path().join("ttyUSB0"), &["pzem-016@4", "pzem-016@5"]);
    let cfg = config(dir.path(), "ttyUSB*", "", &[("good", 4), ("dying", 5)]);
    let mut run = start(&cfg);
    run.wait_for("both meters found", Duration::from_secs(5), |_, s| s.values().all(|m| m.port.is_some()))
        .await;
    port.set_fault(5, Fault::NoReply);
    let readings = run.collect(Duration::from_secs(4)).await;
    let status = run.stop().await;
    // 200 ms poll; a dying meter's poll is at most 3 tries × 100 ms, then one try per back-off.
    let budget = Duration::from_millis(200 + 3 * 100 + 150);
    assert!(max_gap(&readings, "good") <= budget, "good meter stalled for {:?}", max_gap(&readings, "good"));
    assert!(count(&readings, "good") >= 14, "good meter read {} times in 4 s", count(&readings, "good"));
    assert!(count(&readings, "dying") <= 1, "a silent meter makes no readings (gaps, never zeros)");
    let dying = &status["dying"].counters;
    // 3 tries, then single tries after 0.4, 0.8, 1.6, 2 s waits: no more than 3 + 4 timeouts in 4 s.
    assert!(dying.timeouts >= 3 && dying.timeouts <= 7, "timeouts {}", dying.timeouts);
    assert_eq!(status["good"].counters.timeouts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_absent_from_the_start_is_probed_with_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let _port = sim(&dir.path().join("ttyUSB0"), &["pzem-016@4"]);
    let cfg = config(dir.path(), "ttyUSB*", "", &[("here", 4), ("absent", 9)]);
    let mut run = start(&cfg);
    let readings = run.collect(Duration::from_secs(4)).await;
    let status = run.stop().await;
    assert!(count(&readings, "here") >= 15, "{}", count(&readings, "here"));
    assert_eq!(count(&readings, "absent"), 0);
    let absent = &status["absent"];
    assert!(absent.port.is_none());
    assert!(absent.counters.probes <= 6, "probes {}", absent.counters.probes);
    assert_eq!(absent.counters.timeouts, 0, "probes are not timeouts of a found meter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_bad_crcs_are_counted_and_survived() {
    let dir = tempfile::tempdir().unwrap();
    let port = sim(&dir.path().join("ttyUSB0"), &["pzem-016@4", "pzem-016@5,fault=bad-crc,every=3"]);
    let cfg = config(dir.path(), "ttyUSB*", "", &[("clean", 4), ("noisy", 5)]);
    let mut run = start(&cfg);
    run.wait_for("both meters found", Duration::from_secs(5), |_, s| s.values().all(|m| m.port.is_some()))
        .await;
    let mut readings = vec![];
    for i in 0..20u8 {
        port.inject(&[0x55, 0xAA, i, 0x04, 0x01, 0xFF]);
        readings.extend(run.collect(Duration::from_millis(150)).await);
    }
    let status = run.stop().await;
    assert!(count(&readings, "clean") >= 8, "{}", count(&readings, "clean"));
    assert!(count(&readings, "noisy") >= 5, "{}", count(&readings, "noisy"));
    let noisy = &status["noisy"].counters;
    assert!(noisy.crc_errors >= 2, "{noisy:?}");
    let total_noise: u64 =
        status.values().map(|s| s.counters.stale_bytes + s.counters.noise_bytes).sum::<u64>()
            + status.values().map(|s| s.counters.garbled_frames + s.counters.crc_errors).sum::<u64>();
    assert!(total_noise > 0, "{status:#?}");
    for (_, r) in &readings {
        let v = r.get(pmtr::reading::Phase::L1, pmtr::reading::Quantity::Voltage).unwrap();
        assert!(v > 100.0, "a garbled frame never becomes a reading: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_replugged_under_another_name_is_found_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = sim(&dir.path().join("ttyUSB0"), &["pzem-016@4"]);
    let _b = sim(&dir.path().join("ttyUSB1"), &["pzem-016@5"]);
    let cfg = config(dir.path(), "ttyUSB*", "", &[("mainA", 4), ("mainB", 5)]);
    let mut run = start(&cfg);
    let first = dir.path().join("ttyUSB0").display().to_string();
    run.wait_for("mainA found on ttyUSB0", Duration::from_secs(5), |_, s| {
        s["mainA"].port.as_deref() == Some(first.as_str()) && s["mainB"].port.is_some()
    })
    .await;
    a.unplug();
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.replug(Some(dir.path().join("ttyUSB7"))).unwrap();
    let second = dir.path().join("ttyUSB7").display().to_string();
    run.wait_for("mainA found again on ttyUSB7", Duration::from_secs(10), |r, s| {
        &*r.meter == "mainA" && s["mainA"].port.as_deref() == Some(second.as_str())
    })
    .await;
    let readings = run.collect(Duration::from_secs(1)).await;
    assert!(count(&readings, "mainA") >= 3 && count(&readings, "mainB") >= 3);
    let remembered = std::fs::read_to_string(dir.path().join("state/ports.json")).unwrap();
    assert!(remembered.contains("ttyUSB7"), "{remembered}");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meters_on_separate_dongles_are_matched_by_address() {
    // The house monitor: three dongles, names unrelated to the meters on them.
    let dir = tempfile::tempdir().unwrap();
    let _p = [
        sim(&dir.path().join("ttyUSB0"), &["pzem-016@6"]),
        sim(&dir.path().join("ttyUSB1"), &["pzem-016@4"]),
        sim(&dir.path().join("ttyUSB2"), &["pzem-016@5"]),
    ];
    let cfg = config(dir.path(), "ttyUSB*", "", &[("mainA", 4), ("mainB", 5), ("gen", 6)]);
    let mut run = start(&cfg);
    run.wait_for("all three found", Duration::from_secs(5), |_, s| s.values().all(|m| m.port.is_some()))
        .await;
    let status = run.stop().await;
    let port = |m: &str| status[m].port.clone().unwrap();
    assert!(port("mainA").ends_with("ttyUSB1"));
    assert!(port("mainB").ends_with("ttyUSB2"));
    assert!(port("gen").ends_with("ttyUSB0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rx380_refusing_the_block_is_read_in_groups() {
    let dir = tempfile::tempdir().unwrap();
    let _p = sim(&dir.path().join("ttyRX0"), &["rx380@1,max-block=12"]);
    let text = format!(
        "[gateway]\nstate_dir = \"{}\"\n[[bus]]\nname = \"f\"\nports = [\"{}\"]\nbaud = 19200\nparity = \"none\"\n\
         [[meter]]\nname = \"rx\"\nmodel = \"rx380\"\naddress = 1\npoll = \"200ms\"\n",
        dir.path().join("state").display(),
        dir.path().join("ttyRX*").display()
    );
    let cfg = pmtr::config::load_str(&text, "t.toml").unwrap();
    let mut run = start(&cfg);
    run.wait_for("an RX380 reading", Duration::from_secs(5), |r, _| r.samples.len() == 18).await;
    let status = run.stop().await;
    let c = &status["rx"].counters;
    assert!(c.exceptions + c.probe_misses >= 1, "the block read was refused once: {c:?}");
}

#[tokio::test]
async fn a_port_that_refuses_parity_is_named_with_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let p = sim(&dir.path().join("ttyRX0"), &["rx380@1"]);
    let even = LineSettings { parity: Parity::Even, ..line() };
    let path = p.path().display().to_string();
    let err = pmtr::modbus::transport::open_serial(&path, &even).unwrap_err().to_string();
    assert!(err.contains(&path) && err.contains("parity even"), "{err}");
}

/// Fails the whole test process if the runtime thread is kept busy for `limit`: a test on a
/// current-thread runtime cannot time itself out while a future burns the CPU.
fn watchdog(what: &'static str, limit: Duration) -> std::sync::mpsc::Sender<()> {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
            eprintln!("{what}: the runtime thread did not come back within {limit:?}");
            std::process::exit(101);
        }
    });
    done
}

/// `pmtr run` has one runtime thread: a meter answering with bursts built to defeat the frame
/// scanner (the one that froze it, and two more patterns) must cost the other meters, on its
/// port and on another, no more than its timeout budget, and be counted as bad frames.
#[tokio::test(flavor = "current_thread")]
async fn a_hostile_reply_never_stalls_the_other_meters() {
    let _done = watchdog("hostile replies", Duration::from_secs(90));
    for hostile in pmtr::sim::Hostile::ALL {
        let dir = tempfile::tempdir().unwrap();
        // At 115200 baud a whole burst of 1000 bytes (87 ms) arrives within the 100 ms timeout.
        let fast = LineSettings { baud: 115_200, ..line() };
        let shared = sim_at(&dir.path().join("ttyUSB0"), fast, &["pzem-016@1", "pzem-016@2"]);
        let _other = sim_at(&dir.path().join("ttyUSB1"), fast, &["pzem-016@4"]);
        let cfg = config(
            dir.path(),
            "ttyUSB*",
            "baud = 115200",
            &[("hostile", 1), ("neighbour", 2), ("elsewhere", 4)],
        );
        let mut run = start(&cfg);
        run.wait_for("all meters found", Duration::from_secs(10), |_, s| {
            s.values().all(|m| m.port.is_some())
        })
        .await;
        let before = run.engine.status.snapshot()["hostile"].counters.clone();
        shared.set_fault(1, Fault::Hostile(hostile, 1000));
        let readings = run.collect(Duration::from_secs(4)).await;
        let status = run.stop().await;
        let name = hostile.name();
        // Another port is not touched at all: its 200 ms polls stay on time.
        let gap = max_gap(&readings, "elsewhere");
        assert!(gap <= Duration::from_millis(600), "{name}: the meter on the other port stalled for {gap:?}");
        assert!(count(&readings, "elsewhere") >= 14, "{name}: {}", count(&readings, "elsewhere"));
        // The same port: the hostile meter costs at most its tries (3 × 100 ms) per round.
        let gap = max_gap(&readings, "neighbour");
        assert!(
            gap <= Duration::from_millis(200 + 3 * 100 + 400),
            "{name}: the neighbour stalled for {gap:?}"
        );
        assert_eq!(count(&readings, "hostile"), 0, "{name}: a hostile burst became a reading");
        let (c, b) = (&status["hostile"].counters, &before);
        let bad = (c.crc_errors + c.garbled_frames + c.short_frames + c.malformed_frames)
            - (b.crc_errors + b.garbled_frames + b.short_frames + b.malformed_frames);
        assert!(bad >= 3, "{name}: {c:?}");
        // At most a poll already on the wire when the fault was set was answered.
        assert!(c.replies <= b.replies + 1, "{name}: {c:?}");
    }
}
