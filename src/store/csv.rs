//! The CSV sink: plain daily files for people with no database.
//!
//! `<dir>/<group>-<YYYY-MM-DD>.csv`, one per day and meter group (each meter, each bus, or
//! all meters in one file), a header row, ISO 8601 timestamps with their UTC offset, one row
//! per point (the same points as InfluxDB), `.` as decimal separator and `,` between columns.
//!
//! State changes of triggers and relays go to `<dir>/changes-<YYYY-MM-DD>.csv` (same clock,
//! same day boundary), one row each: `time,subject,name,event,active,held,dry_run,cause`. A
//! meter group that happens to be called `changes` writes its readings to
//! `changes.readings-<YYYY-MM-DD>.csv` instead, so that the two never share a file.
//!
//! Health points (every `gateway.health_interval`) go to `<dir>/health-<YYYY-MM-DD>.csv`, one
//! row per meter and per sink: `time,subject,name,bus,` then every counter (see
//! [`csv_health_header`]). A meter group called `health` writes to
//! `health.readings-<YYYY-MM-DD>.csv`.
//!
//! Points of the energy books go to `<dir>/energy-<YYYY-MM-DD>.csv` by the day they were
//! written: `time,meter,counter,period,start,kwh,partial,tariff,cost` (see
//! [`csv_energy_rows`]). A meter group called `energy` writes to
//! `energy.readings-<YYYY-MM-DD>.csv`.

use super::schema::{
    csv_change_row, csv_energy_rows, csv_header, csv_health_header, csv_health_row, csv_rows, quantities_of,
    CSV_CHANGES_HEADER, CSV_ENERGY_HEADER,
};
use super::sink::{WriteError, WriteFuture, Writer};
use crate::meter::Model;
use crate::reading::{Quantity, Record};
use crate::sync::Locked;
use chrono::{DateTime, Local, NaiveDate, SecondsFormat, Utc};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use crate::config::{GroupBy, TimeZone};

/// The CSV writer: its files live behind a lock so that each write runs on a blocking
/// thread (`spawn_blocking`), never on the sink's loop: a slow or hung disk holds only its
/// own write.
pub struct CsvWriter {
    dir: PathBuf,
    files: Arc<Mutex<CsvFiles>>,
}

struct CsvFiles {
    dir: PathBuf,
    zone: TimeZone,
    /// meter → group name.
    groups: HashMap<String, String>,
    /// group → columns.
    columns: HashMap<String, Vec<Quantity>>,
    open: HashMap<String, (NaiveDate, File)>,
    /// The open file of state changes.
    changes: Option<(NaiveDate, File)>,
    /// The open file of health points.
    health: Option<(NaiveDate, File)>,
    /// The open file of energy points.
    energy: Option<(NaiveDate, File)>,
}

/// The file name stem of state changes.
const CHANGES: &str = "changes";
/// The file name stem of health points.
const HEALTH: &str = "health";
/// The file name stem of energy points.
const ENERGY: &str = "energy";

fn columns_for(models: impl IntoIterator<Item = Model>) -> Vec<Quantity> {
    let models: Vec<Model> = models.into_iter().collect();
    Quantity::ALL.into_iter().filter(|q| models.iter().any(|m| quantities_of(*m).contains(q))).collect()
}

impl CsvWriter {
    /// `meters`: (meter, bus, model) of every configured meter.
    pub fn new(
        dir: PathBuf,
        group_by: GroupBy,
        zone: TimeZone,
        gateway: &str,
        meters: &[(String, String, Model)],
    ) -> Self {
        let files = CsvFiles::new(dir.clone(), group_by, zone, gateway, meters);
        CsvWriter { dir, files: Arc::new(Mutex::new(files)) }
    }

    /// Writes a batch now, on this thread: every row of it durably (fsync), or none.
    pub fn write_now(&mut self, batch: &[Record]) -> std::io::Result<()> {
        self.files.locked().write_all(batch)
    }
}

impl CsvFiles {
    pub fn new(
        dir: PathBuf,
        group_by: GroupBy,
        zone: TimeZone,
        gateway: &str,
        meters: &[(String, String, Model)],
    ) -> Self {
        let mut groups = HashMap::new();
        let mut models: HashMap<String, Vec<Model>> = HashMap::new();
        for (meter, bus, model) in meters {
            let group = match group_by {
                GroupBy::Meter => meter.clone(),
                GroupBy::Bus => bus.clone(),
                GroupBy::Gateway => gateway.to_owned(),
            };
            models.entry(group.clone()).or_default().push(*model);
            groups.insert(meter.clone(), group);
        }
        let columns = models.into_iter().map(|(g, ms)| (g, columns_for(ms))).collect();
        CsvFiles {
            dir,
            zone,
            groups,
            columns,
            open: HashMap::new(),
            changes: None,
            health: None,
            energy: None,
        }
    }

    fn stamp(&self, t: DateTime<Utc>) -> (NaiveDate, String) {
        match self.zone {
            TimeZone::Utc => (t.date_naive(), t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            TimeZone::Local => {
                let l = t.with_timezone(&Local);
                (l.date_naive(), l.to_rfc3339_opts(SecondsFormat::Millis, false))
            }
        }
    }

    /// Writes a batch: all its rows, synced to the disk, or none of them. When a file fails
    /// in the middle of a batch, every file it touched is cut back to its length before it, so
    /// that the retry never writes a row twice; the open files are dropped (reopened on the
    /// next try: a remounted stick).
    fn write_all(&mut self, batch: &[Record]) -> std::io::Result<()> {
        let mut touched: Vec<(File, u64)> = Vec::new();
        let result = self.write_now(batch, &mut touched).and_then(|()| {
            for (f, _) in &touched {
                f.sync_data()?;
                BATCH_SYNCS.with(|c| c.set(c.get() + 1));
            }
            Ok(())
        });
        if result.is_err() {
            for (f, len) in &touched {
                if let Err(e) = f.set_len(*len) {
                    tracing::warn!(dir = %self.dir.display(), "cannot cut a CSV file back after a failed \
                        write ({e}): the retry may repeat rows");
                }
            }
            self.open.clear();
            self.changes = None;
            self.health = None;
        }
        result
    }

    fn file(&mut self, group: &str, day: NaiveDate) -> std::io::Result<&mut File> {
        let stale = self.open.get(group).is_none_or(|(d, _)| *d != day);
        if stale {
            std::fs::create_dir_all(&self.dir)?;
            let renamed;
            let stem = if group == CHANGES || group == HEALTH || group == ENERGY {
                renamed = format!("{group}.readings");
                &renamed
            } else {
                group
            };
            let f = open_with_header(
                &self.dir.join(format!("{stem}-{day}.csv")),
                &csv_header(&self.columns[group]),
            )?;
            self.open.insert(group.to_owned(), (day, f));
        }
        Ok(&mut self.open.get_mut(group).expect("just opened").1)
    }

    fn changes_file(&mut self, day: NaiveDate) -> std::io::Result<&mut File> {
        if self.changes.as_ref().is_none_or(|(d, _)| *d != day) {
            std::fs::create_dir_all(&self.dir)?;
            let f = open_with_header(&self.dir.join(format!("{CHANGES}-{day}.csv")), CSV_CHANGES_HEADER)?;
            self.changes = Some((day, f));
        }
        Ok(&mut self.changes.as_mut().expect("just opened").1)
    }

    fn health_file(&mut self, day: NaiveDate) -> std::io::Result<&mut File> {
        if self.health.as_ref().is_none_or(|(d, _)| *d != day) {
            std::fs::create_dir_all(&self.dir)?;
            let f = open_with_header(&self.dir.join(format!("{HEALTH}-{day}.csv")), &csv_health_header())?;
            self.health = Some((day, f));
        }
        Ok(&mut self.health.as_mut().expect("just opened").1)
    }

    fn energy_file(&mut self, day: NaiveDate) -> std::io::Result<&mut File> {
        if self.energy.as_ref().is_none_or(|(d, _)| *d != day) {
            std::fs::create_dir_all(&self.dir)?;
            let f = open_with_header(&self.dir.join(format!("{ENERGY}-{day}.csv")), CSV_ENERGY_HEADER)?;
            self.energy = Some((day, f));
        }
        Ok(&mut self.energy.as_mut().expect("just opened").1)
    }

    /// Appends the rows of a batch; `touched` gets each file written with its length before.
    fn write_now(&mut self, batch: &[Record], touched: &mut Vec<(File, u64)>) -> std::io::Result<()> {
        // Rows per (group, day), in arrival order; state changes per day.
        let mut out: Vec<(String, NaiveDate, String)> = Vec::new();
        let mut changes: Vec<(NaiveDate, String)> = Vec::new();
        let mut health: Vec<(NaiveDate, String)> = Vec::new();
        let mut energy: Vec<(NaiveDate, String)> = Vec::new();
        for r in batch {
            let r = match r {
                Record::Reading(r) => r,
                Record::Change(c) => {
                    let (day, time) = self.stamp(c.time);
                    let i = match changes.iter().position(|(d, _)| *d == day) {
                        Some(i) => i,
                        None => {
                            changes.push((day, String::new()));
                            changes.len() - 1
                        }
                    };
                    csv_change_row(c, &time, &mut changes[i].1);
                    continue;
                }
                Record::Health(h) => {
                    let (day, time) = self.stamp(h.time());
                    let i = match health.iter().position(|(d, _)| *d == day) {
                        Some(i) => i,
                        None => {
                            health.push((day, String::new()));
                            health.len() - 1
                        }
                    };
                    csv_health_row(h, &time, &mut health[i].1);
                    continue;
                }
                Record::Energy(e) => {
                    let (day, time) = self.stamp(e.time());
                    let i = match energy.iter().position(|(d, _)| *d == day) {
                        Some(i) => i,
                        None => {
                            energy.push((day, String::new()));
                            energy.len() - 1
                        }
                    };
                    csv_energy_rows(e, &time, &mut energy[i].1);
                    continue;
                }
            };
            let group = match self.groups.get(&*r.meter) {
                Some(g) => g.clone(),
                None => {
                    self.groups.insert(r.meter.to_string(), r.meter.to_string());
                    // A meter not configured (a spooled reading of one since removed): its
                    // model's columns, and any its reading has besides (a model known only
                    // by name has none of its own).
                    let mut columns = columns_for([r.model]);
                    for q in Quantity::ALL {
                        if !columns.contains(&q) && r.samples.iter().any(|s| s.quantity == q) {
                            columns.push(q);
                        }
                    }
                    self.columns.insert(r.meter.to_string(), columns);
                    r.meter.to_string()
                }
            };
            let (day, time) = self.stamp(r.time);
            let i = match out.iter().position(|(g, d, _)| *g == group && *d == day) {
                Some(i) => i,
                None => {
                    out.push((group.clone(), day, String::new()));
                    out.len() - 1
                }
            };
            let columns = &self.columns[&group];
            csv_rows(r, &time, columns, &mut out[i].2);
        }
        for (group, day, text) in out {
            append(self.file(&group, day)?, &text, touched)?;
        }
        for (day, text) in changes {
            append(self.changes_file(day)?, &text, touched)?;
        }
        for (day, text) in health {
            append(self.health_file(day)?, &text, touched)?;
        }
        for (day, text) in energy {
            append(self.energy_file(day)?, &text, touched)?;
        }
        Ok(())
    }
}

thread_local! {
    /// Files synced at the end of a batch by this thread, for the test that guards it.
    static BATCH_SYNCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Appends `text` to `f`, noting the file and its length before in `touched` (once per file).
fn append(f: &mut File, text: &str, touched: &mut Vec<(File, u64)>) -> std::io::Result<()> {
    let len = f.metadata()?.len();
    touched.push((f.try_clone()?, len));
    f.write_all(text.as_bytes())
}

/// Opens `path` to append, writing `header` first when the file is new or empty (then the
/// header and the folder entry are synced, so that a power cut never leaves rows without it).
fn open_with_header(path: &std::path::Path, header: &str) -> std::io::Result<File> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    if f.metadata()?.len() == 0 {
        f.write_all(header.as_bytes())?;
        f.sync_data()?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(f)
}

impl Writer for CsvWriter {
    fn kind(&self) -> &'static str {
        "csv"
    }

    fn target(&self) -> String {
        self.dir.display().to_string()
    }

    fn write(&mut self, batch: &[Record]) -> WriteFuture {
        let dir = self.dir.clone();
        let failed = move |e: std::io::Error| WriteError::Retry {
            message: format!("cannot write CSV in {}: {e}", dir.display()),
            after: None,
        };
        let files = self.files.clone();
        let batch = batch.to_vec();
        let job = move || files.locked().write_all(&batch);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let handle = runtime.spawn_blocking(job);
                Box::pin(async move {
                    match handle.await {
                        Ok(result) => result.map_err(failed),
                        Err(e) => Err(failed(std::io::Error::other(e))),
                    }
                })
            }
            Err(_) => {
                let result = job().map_err(failed);
                Box::pin(async move { result })
            }
        }
    }

    fn render(&self, batch: &[Record]) -> String {
        let mut s = String::new();
        for r in batch {
            match r {
                Record::Reading(r) => {
                    csv_rows(r, &r.time.to_rfc3339(), &columns_for([r.model]), &mut s);
                }
                Record::Change(c) => csv_change_row(c, &c.time.to_rfc3339(), &mut s),
                Record::Health(h) => csv_health_row(h, &h.time().to_rfc3339(), &mut s),
                Record::Energy(e) => csv_energy_rows(e, &e.time().to_rfc3339(), &mut s),
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{ChangeEvent, Phase, Quality, Reading, Sample, StateChange, Subject};
    use chrono::TimeZone as _;

    fn reading(meter: &str, model: Model, ms: i64) -> Record {
        Record::Reading(Reading {
            meter: meter.into(),
            model,
            time: Utc.timestamp_millis_opt(ms).unwrap(),
            samples: vec![
                Sample::new(Phase::L1, Quantity::Voltage, 230.1),
                Sample::new(Phase::Total, Quantity::ActiveEnergy, 12.5),
            ],
            quality: Quality::default(),
        })
    }

    fn change(subject: Subject, name: &str, event: ChangeEvent, ms: i64, cause: &str) -> Record {
        Record::Change(StateChange {
            time: Utc.timestamp_millis_opt(ms).unwrap(),
            subject,
            name: name.into(),
            event,
            active: event != ChangeEvent::Released,
            held: event == ChangeEvent::Forced,
            dry_run: false,
            cause: cause.into(),
        })
    }

    #[test]
    fn one_file_per_day_and_group_with_one_header() {
        let dir = tempfile::tempdir().unwrap();
        let meters = vec![
            ("a".to_string(), "bus1".to_string(), Model::Pzem016),
            ("b".to_string(), "bus1".to_string(), Model::Rx380),
        ];
        let day1 = 1_763_683_200_000; // 2025-11-21T00:00:00Z
        let day2 = day1 + 86_400_000;
        let mut w = CsvWriter::new(dir.path().into(), GroupBy::Bus, TimeZone::Utc, "gw", &meters);
        w.write_now(&[reading("a", Model::Pzem016, day1 + 1), reading("b", Model::Rx380, day1 + 2)]).unwrap();
        w.write_now(&[reading("a", Model::Pzem016, day1 + 3), reading("a", Model::Pzem016, day2)]).unwrap();
        drop(w);
        // A restart appends without a second header.
        let mut w = CsvWriter::new(dir.path().into(), GroupBy::Bus, TimeZone::Utc, "gw", &meters);
        w.write_now(&[reading("b", Model::Rx380, day2 + 5)]).unwrap();

        let f1 = std::fs::read_to_string(dir.path().join("bus1-2025-11-21.csv")).unwrap();
        let f2 = std::fs::read_to_string(dir.path().join("bus1-2025-11-22.csv")).unwrap();
        assert_eq!(f1.lines().filter(|l| l.starts_with("time,")).count(), 1);
        assert_eq!(f1.lines().count(), 1 + 6, "3 readings × 2 phases");
        assert_eq!(f2.lines().count(), 1 + 4);
        assert!(f1.lines().nth(1).unwrap().starts_with("2025-11-21T00:00:00.001Z,a,pzem-016,l1,230.1,"));
        let header_cols = f1.lines().next().unwrap().split(',').count();
        assert!(f1.lines().chain(f2.lines()).all(|l| l.split(',').count() == header_cols));
        assert!(
            f1.starts_with("time,meter,model,phase,voltage (V),current (A),power (W),apparent_power (VA)")
        );
    }

    #[test]
    fn a_missing_folder_is_a_retryable_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let mut w = CsvWriter::new(file.join("csv"), GroupBy::Meter, TimeZone::Local, "gw", &[]);
        let r = tokio_test_block_on(w.write(&[reading("a", Model::Pzem016, 0)]));
        assert!(matches!(r, Err(WriteError::Retry { .. })), "{r:?}");
    }

    #[test]
    fn state_changes_go_to_a_daily_changes_file_with_one_header() {
        let dir = tempfile::tempdir().unwrap();
        let meters = vec![("a".to_string(), "bus1".to_string(), Model::Pzem016)];
        let day1 = 1_763_683_200_000; // 2025-11-21T00:00:00Z
        let day2 = day1 + 86_400_000;
        let new = || CsvWriter::new(dir.path().into(), GroupBy::Meter, TimeZone::Utc, "gw", &meters);
        let mut w = new();
        w.write_now(&[
            reading("a", Model::Pzem016, day1 + 1),
            change(Subject::Trigger, "overvoltage", ChangeEvent::Tripped, day1 + 2, "L1U=254.2 \"high\""),
            change(Subject::Relay, "boiler", ChangeEvent::Switched, day1 + 2, "trigger overvoltage"),
            change(Subject::Trigger, "overvoltage", ChangeEvent::Released, day2 - 1, "L1U=230,0"),
        ])
        .unwrap();
        w.write_now(&[change(Subject::Relay, "boiler", ChangeEvent::Forced, day2 + 7, "manual\n(uid 1000)")])
            .unwrap();
        drop(w);
        // A restart appends without a second header.
        new().write_now(&[change(Subject::Relay, "boiler", ChangeEvent::Unforced, day2 + 8, "")]).unwrap();

        let c1 = std::fs::read_to_string(dir.path().join("changes-2025-11-21.csv")).unwrap();
        let c2 = std::fs::read_to_string(dir.path().join("changes-2025-11-22.csv")).unwrap();
        assert_eq!(
            c1,
            "time,subject,name,event,active,held,dry_run,cause\n\
             2025-11-21T00:00:00.002Z,trigger,overvoltage,tripped,1,0,0,\"L1U=254.2 \"\"high\"\"\"\n\
             2025-11-21T00:00:00.002Z,relay,boiler,switched,1,0,0,\"trigger overvoltage\"\n\
             2025-11-21T23:59:59.999Z,trigger,overvoltage,released,0,0,0,\"L1U=230,0\"\n"
        );
        assert_eq!(
            c2,
            "time,subject,name,event,active,held,dry_run,cause\n\
             2025-11-22T00:00:00.007Z,relay,boiler,forced,1,1,0,\"manual (uid 1000)\"\n\
             2025-11-22T00:00:00.008Z,relay,boiler,unforced,1,0,0,\"\"\n"
        );
        let a = std::fs::read_to_string(dir.path().join("a-2025-11-21.csv")).unwrap();
        assert_eq!(a.lines().count(), 1 + 2, "the reading stays in its own file");
        assert!(!dir.path().join("a-2025-11-22.csv").exists());
    }

    #[test]
    fn state_changes_follow_the_local_clock_like_readings() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = CsvWriter::new(dir.path().into(), GroupBy::Gateway, TimeZone::Local, "gw", &[]);
        let t = Utc.timestamp_millis_opt(1_763_726_400_123).unwrap();
        let local = t.with_timezone(&Local);
        w.write_now(&[change(Subject::Relay, "boiler", ChangeEvent::Switched, 1_763_726_400_123, "x")])
            .unwrap();
        let f = dir.path().join(format!("changes-{}.csv", local.date_naive()));
        let text = std::fs::read_to_string(&f).unwrap();
        let stamp = local.to_rfc3339_opts(SecondsFormat::Millis, false);
        assert!(text.lines().nth(1).unwrap().starts_with(&format!("{stamp},relay,boiler,")), "{text}");
    }

    #[test]
    fn health_points_go_to_a_daily_health_file_apart_from_a_meter_called_health() {
        use crate::reading::{Health, MeterHealth, SinkHealth};
        let dir = tempfile::tempdir().unwrap();
        let meters = vec![("health".to_string(), "bus1".to_string(), Model::Pzem016)];
        let day = 1_763_683_200_000;
        let t = Utc.timestamp_millis_opt(day + 5).unwrap();
        let meter = Health::Meter(MeterHealth::from_values(
            t,
            "bus1".into(),
            "health".into(),
            [3, 2, 1, 0, 0, 0, 2, 0, 1],
        ));
        let sink = Health::Sink(SinkHealth::from_values(t, "csv".into(), [1, 10, 0, 0, 0, 0, 1]));
        let new = || CsvWriter::new(dir.path().into(), GroupBy::Meter, TimeZone::Utc, "gw", &meters);
        new().write_now(&[reading("health", Model::Pzem016, day), meter.into()]).unwrap();
        new().write_now(&[sink.into()]).unwrap();
        let health = std::fs::read_to_string(dir.path().join("health-2025-11-21.csv")).unwrap();
        assert_eq!(
            health,
            format!(
                "{}2025-11-21T00:00:00.005Z,meter,health,bus1,3,2,1,0,0,0,2,0,1,,,,,,,\n\
                 2025-11-21T00:00:00.005Z,sink,csv,,,,,,,,,,,1,10,0,0,0,0,1\n",
                csv_health_header()
            )
        );
        let readings = std::fs::read_to_string(dir.path().join("health.readings-2025-11-21.csv")).unwrap();
        assert_eq!(readings.lines().count(), 1 + 2);
    }

    #[test]
    fn a_meter_called_changes_keeps_its_readings_apart() {
        let dir = tempfile::tempdir().unwrap();
        let meters = vec![("changes".to_string(), "bus1".to_string(), Model::Pzem016)];
        let mut w = CsvWriter::new(dir.path().into(), GroupBy::Meter, TimeZone::Utc, "gw", &meters);
        let day = 1_763_683_200_000;
        w.write_now(&[
            reading("changes", Model::Pzem016, day),
            change(Subject::Relay, "boiler", ChangeEvent::Switched, day, ""),
        ])
        .unwrap();
        let readings = std::fs::read_to_string(dir.path().join("changes.readings-2025-11-21.csv")).unwrap();
        let changes = std::fs::read_to_string(dir.path().join("changes-2025-11-21.csv")).unwrap();
        assert!(readings.starts_with("time,meter,model,phase,"));
        assert_eq!(readings.lines().count(), 3);
        assert_eq!(changes.lines().count(), 2);
        assert!(changes.starts_with(CSV_CHANGES_HEADER));
    }

    fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    /// A writer, one file a meter, for PZEMs "a" and "b" on "bus1".
    fn meters_a_and_b(dir: &std::path::Path) -> CsvWriter {
        let meters = vec![
            ("a".to_string(), "bus1".to_string(), Model::Pzem016),
            ("b".to_string(), "bus1".to_string(), Model::Pzem016),
        ];
        CsvWriter::new(dir.into(), GroupBy::Meter, TimeZone::Utc, "gw", &meters)
    }

    /// A file failing in the middle of a batch (here: the second meter's file cannot be
    /// opened) leaves none of the batch in the files written before it, so that the retry
    /// writes each row once.
    #[test]
    fn a_file_failing_mid_batch_is_cut_back_so_the_retry_writes_each_row_once() {
        let dir = tempfile::tempdir().unwrap();
        let day = 1_763_683_200_000; // 2025-11-21T00:00:00Z
        let mut w = meters_a_and_b(dir.path());
        w.write_now(&[reading("a", Model::Pzem016, day)]).unwrap();
        let blocked = dir.path().join("b-2025-11-21.csv");
        std::fs::create_dir(&blocked).unwrap();
        let batch = [reading("a", Model::Pzem016, day + 1), reading("b", Model::Pzem016, day + 2)];
        assert!(w.write_now(&batch).is_err());
        let a = std::fs::read_to_string(dir.path().join("a-2025-11-21.csv")).unwrap();
        assert_eq!(a.lines().count(), 1 + 2, "header and the first batch only (2 rows):\n{a}");
        std::fs::remove_dir(&blocked).unwrap();
        w.write_now(&batch).unwrap();
        let a = std::fs::read_to_string(dir.path().join("a-2025-11-21.csv")).unwrap();
        let b = std::fs::read_to_string(blocked).unwrap();
        assert_eq!((a.lines().count(), b.lines().count()), (1 + 4, 1 + 2), "each row once:\n{a}\n{b}");
    }

    /// Rows count as written (and the spool's cursor moves past them) only once every file
    /// the batch touched is synced to the disk.
    #[test]
    fn a_batch_is_synced_to_every_file_it_touched_before_it_counts_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let day = 1_763_683_200_000; // 2025-11-21T00:00:00Z
        let mut w = meters_a_and_b(dir.path());
        let before = BATCH_SYNCS.with(|c| c.get());
        w.write_now(&[
            reading("a", Model::Pzem016, day),
            reading("b", Model::Pzem016, day + 1),
            change(Subject::Relay, "boiler", ChangeEvent::Switched, day + 2, "x"),
        ])
        .unwrap();
        assert_eq!(BATCH_SYNCS.with(|c| c.get()) - before, 3, "a, b and the changes file");
    }
}
