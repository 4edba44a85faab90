//! The CSV sink: plain daily files for people with no database.
//!
//! `<dir>/<group>-<YYYY-MM-DD>.csv`, one per day and meter group (each meter, each bus, or
//! all meters in one file), a header row, ISO 8601 timestamps with their UTC offset, one row
//! per point (the same points as InfluxDB), `.` as decimal separator and `,` between columns.

use super::schema::{csv_header, csv_rows, quantities_of};
use super::sink::{WriteError, WriteFuture, Writer};
use crate::meter::Model;
use crate::reading::{Quantity, Reading};
use chrono::{DateTime, Local, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

/// Which meters share a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Meter,
    Bus,
    /// One file for the whole gateway, named after it.
    Gateway,
}

/// The clock of the timestamps and of the day boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeZone {
    Local,
    Utc,
}

pub struct CsvWriter {
    dir: PathBuf,
    zone: TimeZone,
    /// meter → group name.
    groups: HashMap<String, String>,
    /// group → columns.
    columns: HashMap<String, Vec<Quantity>>,
    open: HashMap<String, (NaiveDate, File)>,
}

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
        CsvWriter { dir, zone, groups, columns, open: HashMap::new() }
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

    fn file(&mut self, group: &str, day: NaiveDate) -> std::io::Result<&mut File> {
        let stale = self.open.get(group).is_none_or(|(d, _)| *d != day);
        if stale {
            std::fs::create_dir_all(&self.dir)?;
            let path = self.dir.join(format!("{group}-{day}.csv"));
            let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
            if f.metadata()?.len() == 0 {
                f.write_all(csv_header(&self.columns[group]).as_bytes())?;
            }
            self.open.insert(group.to_owned(), (day, f));
        }
        Ok(&mut self.open.get_mut(group).expect("just opened").1)
    }

    fn write_now(&mut self, batch: &[Reading]) -> std::io::Result<()> {
        // Rows per (group, day), in arrival order.
        let mut out: Vec<(String, NaiveDate, String)> = Vec::new();
        for r in batch {
            let group = match self.groups.get(&*r.meter) {
                Some(g) => g.clone(),
                None => {
                    self.groups.insert(r.meter.to_string(), r.meter.to_string());
                    self.columns.insert(r.meter.to_string(), columns_for([r.model]));
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
            let f = self.file(&group, day)?;
            f.write_all(text.as_bytes())?;
        }
        Ok(())
    }
}

impl Writer for CsvWriter {
    fn kind(&self) -> &'static str {
        "csv"
    }

    fn target(&self) -> String {
        self.dir.display().to_string()
    }

    fn write(&mut self, batch: &[Reading]) -> WriteFuture {
        let result = self.write_now(batch).map_err(|e| {
            // A dropped file handle is reopened on the next try (a remounted stick).
            self.open.clear();
            WriteError::Retry {
                message: format!("cannot write CSV in {}: {e}", self.dir.display()),
                after: None,
            }
        });
        Box::pin(async move { result })
    }

    fn render(&self, batch: &[Reading]) -> String {
        let mut s = String::new();
        for r in batch {
            csv_rows(r, &r.time.to_rfc3339(), &columns_for([r.model]), &mut s);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Phase, Quality, Sample};
    use chrono::TimeZone as _;

    fn reading(meter: &str, model: Model, ms: i64) -> Reading {
        Reading {
            meter: meter.into(),
            model,
            time: Utc.timestamp_millis_opt(ms).unwrap(),
            samples: vec![
                Sample::new(Phase::L1, Quantity::Voltage, 230.1),
                Sample::new(Phase::Total, Quantity::ActiveEnergy, 12.5),
            ],
            quality: Quality::default(),
        }
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

    fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }
}
