//! Broken-neutral detection end to end on the physics simulator, in simulated time: the supply
//! and house of `pmtr::sim::grid` give, every simulated second, the readings an RX380 (phase
//! and line voltages) and three PZEM-016 on L1, L2, L3 would give; the trigger engine (the
//! same one the daemon runs, with its `[[neutral]]` detectors) gets them with the simulated
//! time, and a trigger on `neutral_fault` of each set drives a relay.
//!
//! A neutral breaking under changing load must trip both triggers; healthy unbalanced loads, a
//! one-phase sag, an all-phase swell and an unstable grid must never trip them.
//!
//! And once through the whole gateway: three simulated PZEM-016 on a pseudo-terminal play a
//! recorded trace of the simulator (their voltages, one phase each), `pmtr run` reads them,
//! and a trigger on `neutral_fault` switches the fake relay off once the neutral opens.

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/reading.rs"]
mod test_reading;

use pmtr::config::load_str;
use pmtr::meter::Model;
use pmtr::reading::{Phase, Quantity, Reading};
use pmtr::relay::Level;
use pmtr::sim::grid::{Disturbance, Grid, GridSample};
use pmtr::trigger::engine::{Engine, Now};
use std::time::Duration;

const CONFIG: &str = r#"
[gateway]
gpio = "fake"
[[bus]]
name = "b"
port = "/dev/null"
[[meter]]
name = "main"
model = "rx380"
address = 1
[[meter]]
name = "house-l1"
model = "pzem-016"
address = 4
[[meter]]
name = "house-l2"
model = "pzem-016"
address = 5
phase = "L2"
[[meter]]
name = "house-l3"
model = "pzem-016"
address = 6
phase = "L3"
[[neutral]]
name = "supply"
meter = "main"
[[neutral]]
name = "house"
meters = ["house-l1", "house-l2", "house-l3"]
[[relay]]
name = "mains"
pin = 17
default = "on"
[[relay]]
name = "house-mains"
pin = 18
default = "on"
[[trigger]]
name = "broken-neutral"
meter = "main"
when = "neutral_fault == 1"
relays = ["mains"]
latch = true
[[trigger]]
name = "house-broken-neutral"
meter = "house-l1"
when = "neutral_fault == 1"
relays = ["house-mains"]
latch = true
"#;

fn now(t: u64) -> Now {
    let mono = Duration::from_secs(t);
    let wall = chrono::DateTime::UNIX_EPOCH + mono;
    Now { mono, wall, local: None }
}

fn reading(meter: &str, model: Model, t: Now, samples: Vec<(Phase, f64)>) -> Reading {
    test_reading::reading(meter, model, t.wall, samples.into_iter().map(|(p, v)| (p, Quantity::Voltage, v)))
}

/// The readings of one simulated second: the RX380's, then each PZEM's.
fn readings(s: &GridSample, t: Now) -> Vec<Reading> {
    let phases = [Phase::L1, Phase::L2, Phase::L3];
    let mut rx: Vec<(Phase, f64)> = phases.into_iter().zip(s.phase).collect();
    rx.extend([Phase::L12, Phase::L23, Phase::L31].into_iter().zip(s.line));
    let mut out = vec![reading("main", Model::Rx380, t, rx)];
    for (k, name) in ["house-l1", "house-l2", "house-l3"].iter().enumerate() {
        out.push(reading(name, Model::Pzem016, t, vec![(phases[k], s.phase[k])]));
    }
    out
}

/// What a run saw: the first second each relay was switched off (index 0: the RX380's set,
/// 1: the PZEMs'), and the first second the true displacement reached 20 V.
struct Seen {
    off: [Option<u64>; 2],
    reached_20v: Option<u64>,
}

/// Runs `grid` for `seconds` from second `from`, one sample a second.
fn run(e: &mut Engine, grid: &mut Grid, from: u64, seconds: u64) -> Seen {
    let mut off = [None; 2];
    let mut reached_20v = None;
    for t in from..from + seconds {
        let s = grid.step(1.0);
        if s.displacement >= 20.0 && reached_20v.is_none() {
            reached_20v = Some(t);
        }
        for r in readings(&s, now(t)) {
            for (relay, level) in e.on_reading(&r, now(t)).switches {
                if level == Level::Off && off[relay].is_none() {
                    off[relay] = Some(t);
                }
            }
        }
    }
    Seen { off, reached_20v }
}

fn engine() -> Engine {
    let config = load_str(CONFIG, "pmtr.toml").unwrap_or_else(|e| panic!("{e}"));
    Engine::new(&config, Duration::ZERO).unwrap()
}

#[test]
fn a_neutral_breaking_under_changing_load_trips_both_sets_triggers() {
    for seed in 0..5 {
        let mut e = engine();
        let mut grid = Grid::new(100 + seed, 230.0).with_house([600.0, 400.0, 200.0]);
        assert_eq!(run(&mut e, &mut grid, 0, 600).off, [None, None], "seed {seed}: before the break");
        grid.set_neutral(None);
        let seen = run(&mut e, &mut grid, 600, 600);
        let (off, reached) = (seen.off, seen.reached_20v);
        let reached = reached.expect("an open neutral under this load displaces it past 20 V");
        let [Some(line), Some(pzem)] = off else { panic!("seed {seed}: not tripped: {off:?}") };
        assert!(line >= 600 && line <= reached + 60, "seed {seed}: RX380 set at {line}, 20 V at {reached}");
        assert!(pzem >= 600 && pzem <= reached + 300, "seed {seed}: PZEM set at {pzem}, 20 V at {reached}");
    }
}

#[test]
fn healthy_neutrals_never_trip_whatever_the_grid_does() {
    let scenarios: [(&str, [f64; 3], Disturbance); 4] = [
        ("unbalanced loads", [720.0, 400.0, 40.0], Disturbance::None),
        (
            "one phase sags up to 15 % for up to 60 s every 10 min",
            [600.0, 400.0, 200.0],
            Disturbance::OnePhase { depth: 0.15, max_seconds: 60.0, every: 600.0 },
        ),
        (
            "all phases swell up to 10 % for up to 5 min every 15 min",
            [600.0, 400.0, 200.0],
            Disturbance::AllPhases { depth: 0.1, max_seconds: 300.0, every: 900.0 },
        ),
        (
            "an unstable grid",
            [600.0, 400.0, 200.0],
            Disturbance::Unstable { sigma: 0.002, step: 0.04, every: 30.0 },
        ),
    ];
    for (i, (name, base, disturbance)) in scenarios.into_iter().enumerate() {
        let mut e = engine();
        let mut grid = Grid::new(7 + i as u64, 230.0).with_house(base);
        grid.disturbance = disturbance;
        // Six simulated hours each.
        let seen = run(&mut e, &mut grid, 0, 6 * 3600);
        assert_eq!(seen.off, [None, None], "{name}");
        assert_eq!(seen.reached_20v, None, "{name}: the simulated neutral itself stayed sound");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_gateway_three_pzems_on_a_breaking_neutral_switch_the_relay_off() {
    use gateway::{Daemon, PIN};
    use pmtr::relay::FakeBoard;
    use pmtr::sim::{GridTrace, Profile};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    // The neutral opens 8 s after the port starts; the trace lasts 10 minutes.
    let trace =
        Arc::new(GridTrace::record(Grid::new(11, 230.0).with_house([600.0, 400.0, 200.0]), 600, Some(8)));
    let port =
        gateway::simulator::spawn(&dir.path().join("ttyUSB0"), &["pzem-016@4", "pzem-016@5", "pzem-016@6"]);
    for (k, address) in [4u8, 5, 6].into_iter().enumerate() {
        port.with_slave(address, |s| s.set_profile(Profile::Grid { trace: trace.clone(), phase: k }))
            .unwrap();
    }
    let extra = r#"
[[meter]]
name = "l2"
model = "pzem-016"
address = 5
phase = "L2"
poll = "200ms"
[[meter]]
name = "l3"
model = "pzem-016"
address = 6
phase = "L3"
poll = "200ms"
[[neutral]]
name = "house"
meters = ["main", "l2", "l3"]
[[trigger]]
name = "broken-neutral"
meter = "main"
when = "neutral_fault == 1"
relays = ["motor"]
latch = true
"#;
    let config =
        load_str(&gateway::toml(dir.path(), "t", extra), "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let board = FakeBoard::new();
    let daemon = Daemon::start(config, &board);
    board
        .wait_level(PIN, true, Duration::from_secs(5))
        .await
        .expect("the relay is claimed at its default, on");
    board
        .wait_level(PIN, false, Duration::from_secs(60))
        .await
        .expect("the neutral opened: the trigger on neutral_fault switches the relay off");
    let opened_at = port.elapsed_s();
    assert!(opened_at >= 8.0, "switched off at {opened_at:.1} s, before the neutral opened at 8 s");
    daemon.stop().await;
    let changes: String = std::fs::read_dir(dir.path().join("csv"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("changes"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(changes.contains(",neutral,house,fault,"), "the set's fault is stored:\n{changes}");
    assert!(changes.contains(",trigger,broken-neutral,latched,"), "and the trigger's latch:\n{changes}");
}
