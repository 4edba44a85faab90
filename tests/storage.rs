//! Storage against real servers on 127.0.0.1: InfluxDB 1.x (Debian `influxdb`),
//! VictoriaMetrics as the InfluxDB v2 write endpoint, with `vmauth` checking the token.
//! Outages are real: the server process is stopped and started again; `kill -9` is real.

#[path = "support/servers.rs"]
mod servers;

use pmtr::config::{load_str, Config, LineSettings, Parity};
use pmtr::meter::Model;
use pmtr::reading::{Phase, Quality, Quantity, Reading, Record, Sample};
use pmtr::sim::{SimPort, SimPortOptions};
use pmtr::store::schema::stored_value;
use pmtr::store::spool::{Spool, SpoolLimits};
use pmtr::store::{Storage, StoreEvent};
use servers::{Influx1, VictoriaMetrics, VmAuth};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

fn config(state_dir: &Path, sink: &str) -> Config {
    let text = format!(
        "[gateway]\nname = \"testgw\"\nstate_dir = \"{}\"\n\
         [[bus]]\nname = \"b\"\nport = \"/dev/null-pmtr\"\n\
         [[meter]]\nname = \"kitchen\"\nmodel = \"pzem-016\"\naddress = 4\nbus = \"b\"\n\
         [[meter]]\nname = \"plant\"\nmodel = \"rx380\"\naddress = 1\nbus = \"b\"\n\
         {sink}",
        state_dir.display()
    );
    load_str(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

fn base_ms() -> i64 {
    chrono::Utc::now().timestamp_millis() / 1000 * 1000 - 3_600_000
}

fn pzem(base: i64, i: i64) -> Reading {
    let f = i as f64;
    Reading {
        meter: "kitchen".into(),
        model: Model::Pzem016,
        time: chrono::DateTime::from_timestamp_millis(base + i * 10).unwrap(),
        samples: vec![
            Sample::new(Phase::L2, Quantity::Voltage, (2300.0 + f) * 0.1),
            Sample::new(Phase::L2, Quantity::Current, (1000.0 + f) * 0.001),
            Sample::new(Phase::L2, Quantity::ActivePower, (2300.0 + f) * 0.1),
            Sample::new(Phase::L2, Quantity::ActiveEnergy, (123_456.0 + f) / 1000.0),
            Sample::new(Phase::L2, Quantity::Frequency, 49.9),
            Sample::new(Phase::L2, Quantity::PowerFactor, 0.97),
            Sample::new(Phase::L2, Quantity::Alarm, (i % 2) as f64),
        ],
        quality: Quality { energy_backwards: i == 3 },
    }
}

fn rx380(base: i64, i: i64) -> Reading {
    let mut samples = vec![
        Sample::new(Phase::Total, Quantity::ActiveEnergy, 123_456.789),
        Sample::new(Phase::Total, Quantity::ActivePower, -1500.0),
        Sample::new(Phase::Total, Quantity::ReactivePower, -200.0),
        Sample::new(Phase::Total, Quantity::PowerFactor, -0.9),
        Sample::new(Phase::Total, Quantity::Frequency, 50.0),
    ];
    for (k, p) in [Phase::L1, Phase::L2, Phase::L3, Phase::N].into_iter().enumerate() {
        samples.push(Sample::new(p, Quantity::Current, 1.0 + k as f64 * 0.25));
    }
    for (k, p) in
        [Phase::L1, Phase::L2, Phase::L3, Phase::L12, Phase::L23, Phase::L31].into_iter().enumerate()
    {
        samples.push(Sample::new(p, Quantity::Voltage, 230.0 + k as f64 * 0.1));
    }
    Reading {
        meter: "plant".into(),
        model: Model::Rx380,
        time: chrono::DateTime::from_timestamp_millis(base + i * 10 + 5).unwrap(),
        samples,
        quality: Quality::default(),
    }
}

/// (measurement_field, meter, phase, ms) → value of every point the readings make.
fn expected(readings: &[Reading]) -> BTreeMap<(String, String, String, i64), f64> {
    let mut m = BTreeMap::new();
    for r in readings {
        for s in &r.samples {
            let key = (
                s.quantity.field().to_owned(),
                r.meter.to_string(),
                s.phase.tag().to_owned(),
                r.time.timestamp_millis(),
            );
            m.insert(key, stored_value(s.value));
        }
        if r.quality.energy_backwards {
            for s in r.samples.iter().filter(|s| s.quantity.is_counter()) {
                let key = (
                    "energy_backwards".into(),
                    r.meter.to_string(),
                    s.phase.tag().to_owned(),
                    r.time.timestamp_millis(),
                );
                m.insert(key, 1.0);
            }
        }
    }
    m
}

/// Runs storage on `records`, then closes the channel and waits for it to finish.
fn write_all(config: &Config, records: Vec<Record>) -> Vec<pmtr::store::SinkState> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (tx, rx) = mpsc::channel(records.len() + 1);
        let storage = Storage::start(config, rx).unwrap();
        let sinks = storage.sinks.clone();
        for r in records {
            tx.send(r).await.unwrap();
        }
        drop(tx);
        storage.join().await;
        sinks.iter().map(|s| s.snapshot()).collect()
    })
}

#[test]
fn influxdb1_stores_every_value_tag_and_type() {
    let db = Influx1::start();
    db.create_database("meters");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("[[sink]]\ntype = \"influxdb1\"\nurl = \"{}\"\ndatabase = \"meters\"\n", db.url()),
    );
    let base = base_ms();
    let mut readings: Vec<Reading> = (0..20).map(|i| pzem(base, i)).collect();
    readings.extend((0..5).map(|i| rx380(base, i)));
    let want = expected(&readings);
    let states = write_all(&cfg, readings.into_iter().map(Record::from).collect());
    assert_eq!(states[0].readings_written, 25);
    assert_eq!(states[0].points_written, 20 + 5 * 8, "RX380: 8 phases");
    assert_eq!(states[0].disk_bytes_written, 0, "no disk writes while the database keeps up");

    let v = db.query("meters", "SELECT * FROM pmtr");
    let series = &v["results"][0]["series"][0];
    let columns: Vec<&str> =
        series["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    let col =
        |name: &str| columns.iter().position(|c| *c == name).unwrap_or_else(|| panic!("no column {name}"));
    let rows = series["values"].as_array().unwrap();
    assert_eq!(rows.len(), 60, "one point per reading and phase");
    let mut got = BTreeMap::new();
    for row in rows {
        assert_eq!(row[col("gateway")], "testgw");
        let meter = row[col("meter")].as_str().unwrap().to_owned();
        let model = row[col("model")].as_str().unwrap();
        assert_eq!(model, if meter == "kitchen" { "pzem-016" } else { "rx380" });
        let phase = row[col("phase")].as_str().unwrap().to_owned();
        let t = row[col("time")].as_i64().unwrap();
        for (i, c) in columns.iter().enumerate() {
            if ["time", "gateway", "meter", "model", "phase"].contains(c) || row[i].is_null() {
                continue;
            }
            got.insert((c.to_string(), meter.clone(), phase.clone(), t), row[i].as_f64().unwrap());
        }
    }
    assert_eq!(got, want);

    let types = db.query("meters", "SHOW FIELD KEYS FROM pmtr");
    let types: BTreeMap<String, String> = types["results"][0]["series"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_owned(), r[1].as_str().unwrap().to_owned()))
        .collect();
    for (field, ty) in &types {
        let int = field == "alarm" || field == "energy_backwards";
        assert_eq!(ty, if int { "integer" } else { "float" }, "{field}");
    }
    assert_eq!(types.len(), 9, "the fields these readings carry: {types:?}");
}

fn vm_points(vm: &VictoriaMetrics, expect: usize) -> BTreeMap<(String, String, String, i64), f64> {
    let rows = vm.wait_for_samples("{__name__=~\"pmtr_.*\"}", expect, Duration::from_secs(15));
    let mut got = BTreeMap::new();
    for row in rows {
        let m = &row["metric"];
        assert_eq!(m["gateway"], "testgw");
        let field = m["__name__"].as_str().unwrap().strip_prefix("pmtr_").unwrap().to_owned();
        let meter = m["meter"].as_str().unwrap().to_owned();
        let phase = m["phase"].as_str().unwrap().to_owned();
        let ts = row["timestamps"].as_array().unwrap();
        let vs = row["values"].as_array().unwrap();
        for (t, v) in ts.iter().zip(vs) {
            let key = (field.clone(), meter.clone(), phase.clone(), t.as_i64().unwrap());
            assert!(got.insert(key.clone(), v.as_f64().unwrap()).is_none(), "{key:?} twice");
        }
    }
    got
}

#[test]
fn influxdb2_writes_through_the_token_check_and_a_wrong_token_keeps_everything() {
    let vm = VictoriaMetrics::start();
    let auth = VmAuth::start(&vm.url(), "s3cret-token");
    let base = base_ms();
    let mut readings: Vec<Reading> = (0..30).map(|i| pzem(base, i)).collect();
    readings.extend((0..4).map(|i| rx380(base, i)));
    let want = expected(&readings);

    // A wrong token first: refused, reported once, everything kept in the spool.
    let dir = tempfile::tempdir().unwrap();
    let sink = |token: &str| {
        format!(
            "[[sink]]\nname = \"influx\"\ntype = \"influxdb2\"\nurl = \"{}\"\norg = \"home\"\nbucket = \"meters\"\n\
             token = \"{token}\"\nflush_interval = \"50ms\"\n",
            auth.url()
        )
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (state, events) = rt.block_on(async {
        let cfg = config(dir.path(), &sink("wrong"));
        let (tx, rx) = mpsc::channel(100);
        let storage = Storage::start(&cfg, rx).unwrap();
        let mut events = storage.events.subscribe();
        for r in readings.clone() {
            tx.send(r.into()).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while storage.sinks[0].snapshot().spool_readings < readings.len() as u64 && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(tx);
        let sinks = storage.sinks.clone();
        storage.join().await;
        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            seen.push(e);
        }
        (sinks[0].snapshot(), seen)
    });
    assert!(!state.healthy);
    assert_eq!(state.spool_readings, readings.len() as u64, "{state:?}");
    assert_eq!(state.rejected, 0);
    assert!(matches!(&events[..], [StoreEvent::Refused { .. }]), "{events:?}");
    assert_eq!(vm_points(&vm, 0).len(), 0);

    // The user fixes the token and restarts: the spool goes out, nothing twice.
    let states = write_all(&config(dir.path(), &sink("s3cret-token")), Vec::new());
    assert!(states[0].healthy);
    assert_eq!(states[0].readings_written, readings.len() as u64);
    let got = vm_points(&vm, want.len());
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
}

#[test]
fn an_outage_loses_nothing_and_duplicates_nothing() {
    let mut vm = VictoriaMetrics::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[[sink]]\ntype = \"influxdb2\"\nurl = \"{}\"\norg = \"o\"\nbucket = \"b\"\ntoken = \"t\"\n\
             flush_interval = \"100ms\"\nmax_backoff = \"1s\"\ntimeout = \"2s\"\n",
            vm.url()
        ),
    );
    let base = base_ms();
    let readings: Vec<Reading> = (0..400).map(|i| pzem(base, i)).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (during, after) = rt.block_on(async {
        let (tx, rx) = mpsc::channel(1000);
        let storage = Storage::start(&cfg, rx).unwrap();
        let mut during = 0;
        for (i, r) in readings.iter().enumerate() {
            if i == 100 {
                vm.stop();
            }
            if i == 300 {
                during = storage.sinks[0].snapshot().spool_readings;
                vm.restart();
            }
            tx.send(r.clone().into()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = storage.sinks[0].snapshot();
            if (s.spool_readings == 0 && s.in_memory == 0 && s.healthy) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(tx);
        let sinks = storage.sinks.clone();
        storage.join().await;
        (during, sinks[0].snapshot())
    });
    assert!(during >= 150, "readings went to the spool during the outage: {during}");
    assert!(after.disk_bytes_written > 0);
    assert_eq!(after.readings_written, 400, "{after:?}");
    let want = expected(&readings);
    let got = vm_points(&vm, want.len());
    assert_eq!(got.len(), want.len(), "every point once");
    assert_eq!(got, want);
}

fn spooled(dir: &Path) -> Vec<Record> {
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
    }
    let mut s = Spool::open(copy.path(), SpoolLimits::new(1 << 30)).unwrap();
    let mut out = Vec::new();
    loop {
        let b = s.read(10_000).unwrap();
        let Some(end) = b.end else { break };
        out.extend(b.records);
        s.commit(end).unwrap();
    }
    out
}

fn start_pmtr(cfg: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pmtr"))
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start pmtr")
}

#[test]
fn kill_9_during_an_outage_loses_nothing_that_was_spooled() {
    let mut vm = VictoriaMetrics::start();
    vm.stop();
    let dir = tempfile::tempdir().unwrap();
    let _meter = SimPort::spawn(SimPortOptions {
        link: Some(dir.path().join("ttyUSB0")),
        line: LineSettings { baud: 9600, data_bits: 8, parity: Parity::None, stop_bits: 1 },
        turnaround: Duration::from_millis(2),
        meters: vec!["pzem-016@4,profile=noise:2".parse().unwrap()],
    })
    .unwrap();
    let cfg = dir.path().join("pmtr.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nname = \"testgw\"\nstate_dir = \"{state}\"\nlog_readings = false\n\
             [[bus]]\nname = \"house\"\nports = [\"{port}\"]\n\
             [[meter]]\nname = \"kitchen\"\nmodel = \"pzem-016\"\naddress = 4\npoll = \"100ms\"\n\
             [[sink]]\nname = \"influx\"\ntype = \"influxdb2\"\nurl = \"{url}\"\norg = \"o\"\nbucket = \"b\"\n\
             token = \"t\"\nmax_backoff = \"1s\"\n",
            state = dir.path().join("state").display(),
            port = dir.path().join("ttyUSB*").display(),
            url = vm.url(),
        ),
    )
    .unwrap();
    let log = dir.path().join("pmtr.log");
    let mut p = start_pmtr(&cfg, &log);
    let spool_dir = dir.path().join("state/spool/influx");
    let deadline = Instant::now() + Duration::from_secs(20);
    while spooled_count(&spool_dir) < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    p.kill().unwrap(); // SIGKILL
    p.wait().unwrap();
    let before = spooled(&spool_dir);
    assert!(
        before.len() >= 20,
        "readings spooled before the kill: {}\n{}",
        before.len(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    vm.restart();
    let mut p = start_pmtr(&cfg, &log.with_extension("2.log"));
    let want: BTreeSet<i64> = before.iter().map(|r| r.time().timestamp_millis()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = BTreeSet::new();
    while Instant::now() < deadline {
        vm.force_flush();
        got = vm
            .export("pmtr_voltage")
            .iter()
            .flat_map(|row| {
                row["timestamps"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect::<Vec<_>>()
            })
            .collect();
        if want.is_subset(&got) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    p.wait().unwrap();
    let missing: Vec<&i64> = want.difference(&got).collect();
    assert!(missing.is_empty(), "{} of {} spooled readings never arrived", missing.len(), want.len());
    let text = std::fs::read_to_string(log.with_extension("2.log")).unwrap();
    assert!(text.contains("replaying"), "{text}");
}

fn spooled_count(dir: &Path) -> usize {
    if !dir.exists() {
        return 0;
    }
    spooled(dir).len()
}
