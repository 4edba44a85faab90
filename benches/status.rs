//! Status and MQTT benchmarks (what a scrape or a reading costs the gateway's one core):
//!
//! 1. `metrics`: a snapshot of N meters (half PZEM-016, half RX380, each with a reading and
//!    counters) assembled and rendered as Prometheus text, as `GET /metrics` does (without the
//!    trigger task's answer);
//! 2. `json`: the same snapshot as the JSON of `GET /api/status`;
//! 3. `mqtt`: one reading's MQTT message (topic and JSON payload), PZEM and RX380; and the
//!    discovery documents of the whole configuration (sent at each connection).
//!
//! `cargo bench --bench status [-- metrics|json|mqtt]` (BENCH_N=N repetitions).

use chrono::Utc;
use pmtr::bus::status::{Counters, MeterState, MeterStatus};
use pmtr::meter::Model;
use pmtr::mqtt::Topics;
use pmtr::reading::{Phase, Quality, Reading, Sample};
use pmtr::status::{metrics, Parts, Snapshot};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

fn n() -> usize {
    std::env::var("BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000)
}

fn reading(name: &str, model: Model, i: usize) -> Reading {
    let samples = model
        .sample_set(Phase::L1)
        .into_iter()
        .enumerate()
        .map(|(k, (p, q))| Sample::new(p, q, 230.0 + (i * 7 + k) as f64 * 0.123))
        .collect();
    Reading { meter: name.into(), model, time: Utc::now(), samples, quality: Quality::default() }
}

fn model_of(i: usize) -> Model {
    if i % 2 == 0 {
        Model::Pzem016
    } else {
        Model::Rx380
    }
}

fn parts(meters: usize) -> Parts {
    let mut m = BTreeMap::new();
    for i in 0..meters {
        let name = format!("meter{i:03}");
        let model = model_of(i);
        m.insert(
            name.clone(),
            MeterStatus {
                bus: "house".into(),
                address: (i % 247 + 1) as u8,
                model,
                port: Some(format!("/dev/ttyUSB{}", i % 4)),
                state: MeterState::Ok,
                counters: Counters {
                    requests: 123_456,
                    replies: 123_400,
                    timeouts: 56,
                    readings: 123_400,
                    ..Default::default()
                },
                last_success: Some(Utc::now()),
                last_error: None,
                last_reading: Some(reading(&name, model, i)),
                server: None,
                raw: None,
            },
        );
    }
    Parts {
        gateway: "house-pi".into(),
        started: Utc::now(),
        time: Utc::now(),
        meters: m,
        control: Ok((Vec::new(), Vec::new())),
        neutral: Vec::new(),
        sinks: Vec::new(),
        alerts: None,
        mqtt: None,
        modbus_server: None,
        transitions: BTreeMap::new(),
        energy: Vec::new(),
    }
}

fn config(meters: usize) -> pmtr::config::Config {
    let mut src = String::from("[gateway]\nname = \"house-pi\"\n[[bus]]\nname = \"b\"\nport = \"/dev/null\"\nparity = \"none\"\nbaud = 9600\n");
    for i in 0..meters {
        src.push_str(&format!(
            "[[meter]]\nname = \"meter{i:03}\"\nmodel = \"{}\"\naddress = {}\n",
            model_of(i).name(),
            i % 247 + 1
        ));
    }
    src.push_str("[mqtt]\nhost = \"127.0.0.1\"\n");
    pmtr::config::load_str(&src, "bench.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `f` `reps` times; returns the mean time per run in microseconds.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..reps.min(100) {
        f();
    }
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / reps as f64
}

fn bench_metrics() {
    println!("metrics: assemble a snapshot and render /metrics");
    println!("{:>7}  {:>12}  {:>12}  {:>10}", "meters", "assemble µs", "render µs", "bytes");
    for meters in [1, 4, 16, 64] {
        let reps = (n() / meters).max(50);
        let assemble = time(reps, || {
            black_box(Snapshot::assemble(parts(meters)));
        });
        let snapshot = Snapshot::assemble(parts(meters));
        let mut bytes = 0;
        let render = time(reps, || {
            let text = metrics::render(black_box(&snapshot));
            bytes = text.len();
            black_box(text);
        });
        println!("{meters:>7}  {assemble:>12.1}  {render:>12.1}  {bytes:>10}");
    }
}

fn bench_json() {
    println!("json: GET /api/status's body");
    println!("{:>7}  {:>12}  {:>10}", "meters", "µs", "bytes");
    for meters in [1, 4, 16, 64] {
        let reps = (n() / meters).max(50);
        let snapshot = Snapshot::assemble(parts(meters));
        let mut bytes = 0;
        let us = time(reps, || {
            let v = serde_json::to_vec_pretty(black_box(&snapshot)).unwrap();
            bytes = v.len();
            black_box(v);
        });
        println!("{meters:>7}  {us:>12.1}  {bytes:>10}");
    }
}

fn bench_mqtt() {
    let config = config(16);
    let settings = config.mqtt.clone().unwrap();
    let topics = Topics::new(&settings, &config.gateway.name);
    println!("mqtt: one reading's message (topic + JSON payload)");
    for model in [Model::Pzem016, Model::Rx380] {
        let r = reading("meter001", model, 1);
        let reps = n() * 10;
        let mut bytes = 0;
        let us = time(reps, || {
            let m = topics.reading(black_box(&r), false);
            bytes = m.payload.len();
            black_box(m);
        });
        println!(
            "  {:<9} {:>7.0} ns  {:>4} bytes  ({} values)",
            model.name(),
            us * 1000.0,
            bytes,
            r.samples.len()
        );
    }
    let reps = (n() / 100).max(20);
    let mut count = 0;
    let mut bytes = 0;
    let us = time(reps, || {
        let docs = topics.discovery_documents(black_box(&config));
        count = docs.len();
        bytes = docs.iter().map(|d| d.payload.len()).sum();
        black_box(docs);
    });
    println!("  discovery of 16 meters: {count} documents, {bytes} bytes, {us:.0} µs");
}

fn main() {
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let run = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    if run("metrics") {
        bench_metrics();
    }
    if run("json") {
        bench_json();
    }
    if run("mqtt") {
        bench_mqtt();
    }
}
