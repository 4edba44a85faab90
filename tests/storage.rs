//! Storage against real servers on 127.0.0.1: InfluxDB 1.x (Debian `influxdb`),
//! VictoriaMetrics as the InfluxDB v2 write endpoint, with `vmauth` checking the token.
//! Outages are real: the server process is stopped and started again; `kill -9` is real.
//! Readings and trigger/relay state changes go the same way and are read back field by field.

#[path = "support/reading.rs"]
mod reading;
#[path = "support/servers.rs"]
mod servers;
#[path = "support/simulator.rs"]
mod simulator;

use pmtr::config::{load_str, Config};
use pmtr::meter::Model;
use pmtr::reading::{ChangeEvent, Phase, Quality, Quantity, Reading, Record, StateChange, Subject};
use pmtr::store::schema::stored_value;
use pmtr::store::spool::{Spool, SpoolLimits};
use pmtr::store::{Storage, StoreEvent};
use reading::reading;
use serde_json::{json, Value};
use servers::{Influx1, Managed, Proc, VictoriaMetrics, VmAuth};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Waits until the first sink has written everything (spool and memory empty, healthy), at
/// most `within`; the caller's assertions say what was missing.
async fn until_drained(storage: &Storage, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let s = storage.sinks[0].snapshot();
        if (s.spool_readings == 0 && s.in_memory == 0 && s.healthy) || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
    let time = chrono::DateTime::from_timestamp_millis(base + i * 10).unwrap();
    let samples = [
        (Phase::L2, Quantity::Voltage, (2300.0 + f) * 0.1),
        (Phase::L2, Quantity::Current, (1000.0 + f) * 0.001),
        (Phase::L2, Quantity::ActivePower, (2300.0 + f) * 0.1),
        (Phase::L2, Quantity::ActiveEnergy, (123_456.0 + f) / 1000.0),
        (Phase::L2, Quantity::Frequency, 49.9),
        (Phase::L2, Quantity::PowerFactor, 0.97),
        (Phase::L2, Quantity::Alarm, (i % 2) as f64),
    ];
    Reading {
        quality: Quality { energy_backwards: i == 3 },
        ..reading("kitchen", Model::Pzem016, time, samples)
    }
}

fn rx380(base: i64, i: i64) -> Reading {
    let mut samples = vec![
        (Phase::Total, Quantity::ActiveEnergy, 123_456.789),
        (Phase::Total, Quantity::ActivePower, -1500.0),
        (Phase::Total, Quantity::ReactivePower, -200.0),
        (Phase::Total, Quantity::PowerFactor, -0.9),
        (Phase::Total, Quantity::Frequency, 50.0),
    ];
    for (k, p) in [Phase::L1, Phase::L2, Phase::L3, Phase::N].into_iter().enumerate() {
        samples.push((p, Quantity::Current, 1.0 + k as f64 * 0.25));
    }
    for (k, p) in
        [Phase::L1, Phase::L2, Phase::L3, Phase::L12, Phase::L23, Phase::L31].into_iter().enumerate()
    {
        samples.push((p, Quantity::Voltage, 230.0 + k as f64 * 0.1));
    }
    let time = chrono::DateTime::from_timestamp_millis(base + i * 10 + 5).unwrap();
    reading("plant", Model::Rx380, time, samples)
}

/// Triggers tripping and releasing, relays switched and forced, in the order a day might bring
/// them; names and causes with the characters line protocol must escape. `k` shifts the times
/// (10 ms steps, between the readings' times).
fn changes(base: i64, k: i64) -> Vec<StateChange> {
    let change = |n: i64, subject, name: &str, event, active, held, dry_run, cause: &str| StateChange {
        time: chrono::DateTime::from_timestamp_millis(base + (k + n) * 10 + 3).unwrap(),
        subject,
        name: name.into(),
        event,
        active,
        held,
        dry_run,
        cause: cause.into(),
    };
    use ChangeEvent::*;
    use Subject::{Relay, Trigger};
    vec![
        change(0, Trigger, "overvoltage", Tripped, true, false, false, "L1U=254.2 L2U=231"),
        change(0, Relay, "boiler", Switched, false, false, false, "trigger overvoltage"),
        change(1, Trigger, "undervoltage", WouldTrip, true, false, true, "L1U=190.5"),
        change(2, Relay, "pump 2,a=b", Forced, true, true, false, "manual (uid 1000) \"now\"\nC:\\x ⚡"),
        change(3, Trigger, "overvoltage", Released, false, false, false, ""),
        change(3, Relay, "boiler", Switched, true, false, false, "trigger overvoltage released"),
        change(4, Trigger, "alarm", Latched, true, true, false, "alarm=1"),
        change(5, Relay, "pump 2,a=b", Unforced, false, false, false, "manual (uid 0)"),
        change(6, Trigger, "alarm", Reset, false, false, false, "manual (uid 1000)"),
    ]
}

/// The fields of a state change as InfluxDB 1.x answers them: (measurement, name, ms) → fields.
fn expected_changes(changes: &[StateChange]) -> BTreeMap<(String, String, i64), BTreeMap<String, Value>> {
    let mut m = BTreeMap::new();
    for c in changes {
        let bit = |b: bool| json!(i64::from(b));
        let mut fields = BTreeMap::from([
            ("event".to_owned(), json!(c.event.as_str())),
            ("cause".to_owned(), json!(c.cause.replace('\n', " "))),
        ]);
        let flags = match c.subject {
            Subject::Trigger => vec![("tripped", c.active), ("latched", c.held), ("dry_run", c.dry_run)],
            Subject::Relay => vec![("on", c.active), ("forced", c.held)],
            Subject::Neutral => vec![("fault", c.active), ("was_fault", c.held)],
        };
        for (f, b) in flags {
            fields.insert(f.to_owned(), bit(b));
        }
        let key = (format!("pmtr_{}", c.subject.as_str()), c.name.to_string(), c.time.timestamp_millis());
        assert!(m.insert(key, fields).is_none(), "test data: one change per name and time");
    }
    m
}

/// Readings and state changes in turn, as the consumer and the triggers would send them.
fn mixed(readings: &[Reading], changes: &[StateChange]) -> Vec<Record> {
    let mut all: Vec<Record> = readings.iter().cloned().map(Record::from).collect();
    all.extend(changes.iter().cloned().map(Record::from));
    all.sort_by_key(Record::time);
    all
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
    let rows = vm.wait_for_samples("{__name__=~\"pmtr_.*\",meter!=\"\"}", expect, Duration::from_secs(15));
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
            // The spool's sizes come with every change of the spool: not what this test is about.
            if !matches!(e, StoreEvent::Spool { .. }) {
                seen.push(e);
            }
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
        until_drained(&storage, Duration::from_secs(30)).await;
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

/// The rows of one measurement: (measurement, name tag, ms) → the other columns.
fn influx1_changes(
    db: &Influx1,
    measurement: &str,
    tag: &str,
) -> BTreeMap<(String, String, i64), BTreeMap<String, Value>> {
    let v = db.query("meters", &format!("SELECT * FROM {measurement}"));
    let series = &v["results"][0]["series"][0];
    let columns: Vec<&str> =
        series["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    let mut got = BTreeMap::new();
    for row in series["values"].as_array().unwrap() {
        let mut fields = BTreeMap::new();
        let (mut name, mut t) = (String::new(), 0);
        for (c, v) in columns.iter().zip(row.as_array().unwrap()) {
            match *c {
                "time" => t = v.as_i64().unwrap(),
                "gateway" => assert_eq!(v, "testgw"),
                c if c == tag => name = v.as_str().unwrap().to_owned(),
                _ if v.is_null() => {}
                c => {
                    fields.insert(c.to_owned(), v.clone());
                }
            }
        }
        assert!(got.insert((measurement.to_owned(), name, t), fields).is_none());
    }
    got
}

fn influx1_keys(db: &Influx1, what: &str, measurement: &str) -> Vec<Vec<String>> {
    let v = db.query("meters", &format!("SHOW {what} KEYS FROM {measurement}"));
    v["results"][0]["series"][0]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .collect()
}

#[test]
fn influxdb1_stores_state_changes_beside_readings() {
    let db = Influx1::start();
    db.create_database("meters");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[[sink]]\ntype = \"influxdb1\"\nurl = \"{}\"\ndatabase = \"meters\"\nbatch = 4\n",
            db.url()
        ),
    );
    let base = base_ms();
    let readings: Vec<Reading> = (0..10).map(|i| pzem(base, i)).collect();
    let changes = changes(base, 0);
    let records = mixed(&readings, &changes);
    assert!(matches!(records[1], Record::Change(_)), "readings and changes interleave");
    let states = write_all(&cfg, records);
    assert_eq!(states[0].readings_written, 10);
    assert_eq!(states[0].changes_written, changes.len() as u64);
    assert_eq!(states[0].points_written, 10 + changes.len() as u64, "one point per PZEM reading and change");
    assert_eq!(states[0].rejected, 0);

    let mut got = influx1_changes(&db, "pmtr_trigger", "trigger");
    got.extend(influx1_changes(&db, "pmtr_relay", "relay"));
    assert_eq!(got, expected_changes(&changes));
    // The readings are all there, untouched by the changes beside them.
    let count = db.query("meters", "SELECT count(voltage) FROM pmtr");
    assert_eq!(count["results"][0]["series"][0]["values"][0][1], 10);

    let keys = |what, m| influx1_keys(&db, what, m);
    assert_eq!(keys("TAG", "pmtr_trigger"), [["gateway"], ["trigger"]]);
    assert_eq!(keys("TAG", "pmtr_relay"), [["gateway"], ["relay"]]);
    let types = |m| -> Vec<(String, String)> {
        keys("FIELD", m).into_iter().map(|r| (r[0].clone(), r[1].clone())).collect()
    };
    let field = |n: &str, t: &str| (n.to_owned(), t.to_owned());
    assert_eq!(
        types("pmtr_trigger"),
        [
            field("cause", "string"),
            field("dry_run", "integer"),
            field("event", "string"),
            field("latched", "integer"),
            field("tripped", "integer")
        ]
    );
    assert_eq!(
        types("pmtr_relay"),
        [
            field("cause", "string"),
            field("event", "string"),
            field("forced", "integer"),
            field("on", "integer")
        ]
    );
}

/// (series, trigger or relay name, ms) → value of the state-change series in VictoriaMetrics.
fn vm_changes(vm: &VictoriaMetrics, expect: usize) -> BTreeMap<(String, String, i64), f64> {
    let rows =
        vm.wait_for_samples("{__name__=~\"pmtr_(trigger|relay)_.*\"}", expect, Duration::from_secs(15));
    let mut got = BTreeMap::new();
    for row in rows {
        let m = &row["metric"];
        assert_eq!(m["gateway"], "testgw");
        let series = m["__name__"].as_str().unwrap().to_owned();
        let subject = if series.starts_with("pmtr_trigger_") { "trigger" } else { "relay" };
        let name = m[subject].as_str().unwrap_or_else(|| panic!("no {subject} label: {m}")).to_owned();
        assert!(m.get("meter").is_none(), "{m}");
        let ts = row["timestamps"].as_array().unwrap();
        let vs = row["values"].as_array().unwrap();
        for (t, v) in ts.iter().zip(vs) {
            let key = (series.clone(), name.clone(), t.as_i64().unwrap());
            assert!(got.insert(key.clone(), v.as_f64().unwrap()).is_none(), "{key:?} twice");
        }
    }
    got
}

/// What VictoriaMetrics makes of the changes: a series `<measurement>_<field>` per field; it
/// keeps numbers only, so the string fields `event` and `cause` become series of 0.
fn vm_expected_changes(changes: &[StateChange]) -> BTreeMap<(String, String, i64), f64> {
    let mut m = BTreeMap::new();
    for ((measurement, name, t), fields) in expected_changes(changes) {
        for (field, v) in fields {
            m.insert((format!("{measurement}_{field}"), name.clone(), t), v.as_f64().unwrap_or(0.0));
        }
    }
    m
}

#[test]
fn influxdb2_state_changes_reach_victoria_metrics_through_the_token_check() {
    let vm = VictoriaMetrics::start();
    let auth = VmAuth::start(&vm.url(), "s3cret-token");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[[sink]]\ntype = \"influxdb2\"\nurl = \"{}\"\norg = \"home\"\nbucket = \"meters\"\n\
             token = \"s3cret-token\"\nbatch = 5\n",
            auth.url()
        ),
    );
    let base = base_ms();
    let readings: Vec<Reading> = (0..12).map(|i| pzem(base, i)).collect();
    let changes = changes(base, 0);
    let states = write_all(&cfg, mixed(&readings, &changes));
    assert!(states[0].healthy, "{:?}", states[0]);
    assert_eq!((states[0].readings_written, states[0].changes_written), (12, changes.len() as u64));
    let want = vm_expected_changes(&changes);
    assert_eq!(want.len(), 5 * 5 + 4 * 4, "5 trigger changes of 5 series, 4 relay changes of 4");
    assert_eq!(vm_changes(&vm, want.len()), want);
    let readings_want = expected(&readings);
    assert_eq!(vm_points(&vm, readings_want.len()), readings_want);
    let log = vm.log();
    assert!(!log.contains("cannot parse"), "VictoriaMetrics refused a line:\n{log}");
}

#[test]
fn state_changes_spooled_during_an_outage_arrive_once_after_it() {
    let mut vm = VictoriaMetrics::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[[sink]]\nname = \"vm\"\ntype = \"influxdb2\"\nurl = \"{}\"\norg = \"o\"\nbucket = \"b\"\n\
             token = \"t\"\nflush_interval = \"50ms\"\nmax_backoff = \"1s\"\ntimeout = \"2s\"\n",
            vm.url()
        ),
    );
    let base = base_ms();
    let readings: Vec<Reading> = (0..60).map(|i| pzem(base, i)).collect();
    // Each set falls among the times of the readings sent with it.
    let before = changes(base, 0);
    let during = changes(base, 20);
    let after = changes(base, 40);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // First run: the database is up, then goes away; what follows is spooled; pmtr stops.
    let first = rt.block_on(async {
        let (tx, rx) = mpsc::channel(1000);
        let storage = Storage::start(&cfg, rx).unwrap();
        for r in mixed(&readings[..20], &before) {
            tx.send(r).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while storage.sinks[0].snapshot().points_written < 20 + before.len() as u64
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        vm.stop();
        for r in mixed(&readings[20..40], &during) {
            tx.send(r).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(tx);
        let sinks = storage.sinks.clone();
        storage.join().await;
        sinks[0].snapshot()
    });
    assert_eq!(first.changes_written, before.len() as u64, "{first:?}");
    assert!(!first.healthy);
    let spool: Vec<Record> = spooled(&dir.path().join("spool/vm"));
    let spooled_changes: Vec<&StateChange> =
        spool.iter().filter_map(|r| if let Record::Change(c) = r { Some(c) } else { None }).collect();
    assert_eq!(spooled_changes, during.iter().collect::<Vec<_>>(), "the changes of the outage, on disk");

    // The database is back; pmtr starts again, replays the spool and writes new records.
    vm.restart();
    let second = rt.block_on(async {
        let (tx, rx) = mpsc::channel(1000);
        let storage = Storage::start(&cfg, rx).unwrap();
        for r in mixed(&readings[40..], &after) {
            tx.send(r).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        until_drained(&storage, Duration::from_secs(20)).await;
        drop(tx);
        let sinks = storage.sinks.clone();
        storage.join().await;
        sinks[0].snapshot()
    });
    assert!(second.healthy, "{second:?}");
    assert_eq!(second.changes_written, (during.len() + after.len()) as u64, "{second:?}");
    assert_eq!(first.readings_written + second.readings_written, 60);

    let all: Vec<StateChange> = [before, during, after].concat();
    let want = vm_expected_changes(&all);
    let got = vm_changes(&vm, want.len());
    assert_eq!(got.len(), want.len(), "every change once");
    assert_eq!(got, want);
    let readings_want = expected(&readings);
    assert_eq!(vm_points(&vm, readings_want.len()), readings_want);
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

fn start_pmtr(cfg: &Path, log: &Path) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pmtr"));
    cmd.args(["run", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap());
    Proc::start("pmtr", &mut cmd, "cargo build")
}

#[test]
fn kill_9_during_an_outage_loses_nothing_that_was_spooled() {
    let mut vm = VictoriaMetrics::start();
    vm.stop();
    let dir = tempfile::tempdir().unwrap();
    let _meter = simulator::spawn_with(
        &dir.path().join("ttyUSB0"),
        simulator::line_8n1(),
        Duration::from_millis(2),
        &["pzem-016@4,profile=noise:2"],
    );
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
    p.kill(); // SIGKILL
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
    let got = vm.timestamps_once_in("pmtr_voltage", &want, Duration::from_secs(30));
    p.signal(nix::sys::signal::Signal::SIGTERM);
    p.wait_exit(Duration::from_secs(60)).expect("pmtr stops on SIGTERM");
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

/// Only InfluxDB's own refusal of points sets them aside: its real answers (InfluxDB 1.6, a
/// field type conflict and a line it cannot parse) are recognised, and pmtr's batch hitting a
/// conflict goes to `rejected.txt`; a proxy's 400 page ("plain HTTP request was sent to HTTPS
/// port") keeps everything in the spool for a retry.
#[test]
fn only_influxdbs_own_refusal_rejects_points_and_a_proxys_400_keeps_them() {
    let db = Influx1::start();
    db.create_database("meters");
    let base = base_ms();
    let write = |line: &str| {
        servers::http("POST", &format!("{}/write?db=meters&precision=ms", db.url()), &[], line.as_bytes())
    };
    let (status, body) = write("pmtr,meter=kitchen v=");
    assert_eq!(status, 400);
    assert!(pmtr::store::influx::refuses_points(&body), "InfluxDB's parse error: {body}");
    // `alarm` is an integer in pmtr's points: a string there first makes them conflict.
    let (status, _) =
        write(&format!("pmtr,gateway=testgw,meter=kitchen,model=pzem-016,phase=l1 alarm=\"x\" {base}"));
    assert_eq!(status, 204);
    let (status, body) =
        write(&format!("pmtr,gateway=testgw,meter=kitchen,model=pzem-016,phase=l1 alarm=1i {base}"));
    assert_eq!(status, 400);
    assert!(pmtr::store::influx::refuses_points(&body), "InfluxDB's type conflict: {body}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!(
            "[[sink]]\nname = \"db\"\ntype = \"influxdb1\"\nurl = \"{}\"\ndatabase = \"meters\"\n",
            db.url()
        ),
    );
    let states = write_all(&cfg, (0..5).map(|i| Record::from(pzem(base, i))).collect());
    assert_eq!(states[0].rejected, 5, "the database refused them: {states:?}");
    assert!(dir.path().join("spool/db/rejected.txt").exists());

    // A TLS port spoken to in plain HTTP, behind nginx.
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", proxy.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in proxy.incoming() {
            let Ok(mut s) = stream else { return };
            let mut buf = [0u8; 65536];
            let _ = s.read(&mut buf);
            let page = "<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n\
                <body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP request was sent to \
                HTTPS port</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
            let _ = write!(
                s,
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("[[sink]]\nname = \"db\"\ntype = \"influxdb1\"\nurl = \"{url}\"\ndatabase = \"meters\"\n"),
    );
    let states = write_all(&cfg, (0..5).map(|i| Record::from(pzem(base, i))).collect());
    assert_eq!((states[0].rejected, states[0].spool_readings), (0, 5), "kept for a retry: {states:?}");
    assert!(states[0].last_error.as_ref().is_some_and(|e| e.1.contains("plain HTTP")), "{states:?}");
    assert!(!dir.path().join("spool/db/rejected.txt").exists());
}
