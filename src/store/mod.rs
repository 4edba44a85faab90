//! Storage: every reading and every state change to every sink, exactly once, across outages,
//! restarts and power cuts.
//!
//! ```text
//!  buses ─ Reading ──────┐
//!                        ├─ Record ─▶ fan-out ─▶ sink "influx" : memory batch ─▶ writer (InfluxDB v2)
//!  triggers, relays ─────┘                │                        └─▶ spool (disk, only when needed)
//!    StateChange                          └───▶ sink "csv"    : memory batch ─▶ writer (daily CSV)
//! ```
//!
//! A [`Record`] is a meter's [`Reading`](crate::reading::Reading) or a trigger's or relay's
//! [`StateChange`](crate::reading::StateChange); both take the same way through batches, retries
//! and the spool, and each sink writes both (InfluxDB: measurements `pmtr`, `pmtr_trigger`,
//! `pmtr_relay`; CSV: the meter files and `changes-YYYY-MM-DD.csv`). So do the periodic
//! [`Health`](crate::reading::Health) points (`pmtr_bus`, `pmtr_sink`; `health-YYYY-MM-DD.csv`).
//!
//! - [`schema`]: records as points and rows (pure); [`record`]: the spool's record format
//!   (pure); [`spool`]: segment files; [`sink`]: the loop of one sink and its decisions;
//!   [`influx`] and [`csv`]: the writers.
//! - Storage runs on its own thread with its own runtime, so that a slow SD card or a large
//!   request never delays a poll on the buses.

pub mod csv;
pub mod health;
pub mod influx;
pub mod record;
pub mod schema;
pub mod sink;
pub mod spool;

use crate::config::{Config, SinkKind};
use crate::reading::Record;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sink::{Sink, SinkOptions, Writer};
use spool::{Spool, SpoolLimits};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, mpsc, oneshot};

/// What the other parts (alerts, status API) hear from storage.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StoreEvent {
    /// Writes fail; readings and state changes go to the spool.
    Down { sink: String, error: String },
    /// The server refuses the sink's settings (token, bucket…); records are kept.
    Refused { sink: String, error: String },
    /// Writes succeed again; `spooled` records are being replayed.
    Back { sink: String, spooled: u64 },
    /// The spool was full: the oldest records (readings and state changes) were dropped.
    Dropped { sink: String, readings: u64 },
    /// The server refused points that can never be written; set aside in `rejected.txt`
    /// (`readings` counts records, state changes included).
    Rejected { sink: String, readings: u64, error: String },
    /// The spool itself failed (disk full, read-only).
    SpoolError { sink: String, error: String },
}

/// The numbers of one sink, for status pages and metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SinkState {
    /// False while writes fail.
    pub healthy: bool,
    /// Meter readings written.
    pub readings_written: u64,
    /// Trigger and relay state changes written.
    pub changes_written: u64,
    /// Health points written (`gateway.health_interval`).
    pub health_written: u64,
    /// Points written: one per phase of each reading, one per state change.
    pub points_written: u64,
    /// Records (readings and state changes) waiting in memory.
    pub in_memory: u64,
    /// Records waiting in the spool, and its size on disk.
    pub spool_readings: u64,
    pub spool_bytes: u64,
    /// Records lost to a full spool since start.
    pub spool_dropped: u64,
    /// Records the server refused for good (kept in `rejected.txt`).
    pub rejected: u64,
    /// Bytes written to the spool since start.
    pub disk_bytes_written: u64,
    /// The time of the oldest record not yet written.
    pub oldest_unsent: Option<DateTime<Utc>>,
    pub last_write: Option<DateTime<Utc>>,
    pub last_error: Option<(DateTime<Utc>, String)>,
}

#[derive(Debug)]
pub struct SinkStatus {
    pub name: String,
    pub kind: &'static str,
    pub target: String,
    state: Mutex<SinkState>,
}

impl SinkStatus {
    pub fn new(name: &str, kind: &'static str, target: String) -> Self {
        SinkStatus {
            name: name.to_owned(),
            kind,
            target,
            state: Mutex::new(SinkState { healthy: true, ..SinkState::default() }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> SinkState {
        self.lock().clone()
    }
}

/// The running storage thread.
pub struct Storage {
    pub sinks: Vec<Arc<SinkStatus>>,
    pub events: broadcast::Sender<StoreEvent>,
    done: oneshot::Receiver<()>,
}

/// Why storage could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("sink {sink}: cannot open the spool at {dir}: {error} (pmtr needs a writable state_dir)")]
    Spool { sink: String, dir: PathBuf, error: std::io::Error },
    #[error("sink {sink}: {error}")]
    Writer { sink: String, error: String },
    #[error("cannot start the storage thread: {0}")]
    Thread(std::io::Error),
}

/// The spool folder of a sink.
pub fn spool_dir(config: &Config, sink: &str) -> PathBuf {
    config.gateway.state_dir.join("spool").join(sink)
}

/// The writer of a configured sink.
pub fn writer_for(config: &Config, sink: &crate::config::Sink) -> Result<Box<dyn Writer>, String> {
    let lp = schema::LineProtocol::new(&sink.measurement, &config.gateway.name);
    Ok(match &sink.kind {
        SinkKind::InfluxDb1 { url, database, retention_policy, username, password } => {
            Box::new(influx::InfluxV1::new(
                influx::V1Settings {
                    url: url.clone(),
                    database: database.clone(),
                    retention_policy: retention_policy.clone(),
                    username: username.clone(),
                    password: password.clone(),
                    timeout: sink.timeout,
                },
                lp,
            )?)
        }
        SinkKind::InfluxDb2 { url, org, bucket, token } => Box::new(influx::InfluxV2::new(
            influx::V2Settings {
                url: url.clone(),
                org: org.clone(),
                bucket: bucket.clone(),
                token: token.clone(),
                timeout: sink.timeout,
            },
            lp,
        )?),
        SinkKind::Csv { dir, group_by, timezone } => {
            let meters: Vec<_> =
                config.meters.iter().map(|m| (m.name.clone(), m.bus.clone(), m.model)).collect();
            Box::new(csv::CsvWriter::new(dir.clone(), *group_by, *timezone, &config.gateway.name, &meters))
        }
    })
}

impl Storage {
    /// Opens every sink's spool (recovering what a crash left) and starts writing what
    /// arrives on `records` (readings and state changes). Returns when the sinks are ready;
    /// fails if a spool cannot be opened, so that pmtr never runs without its safety net.
    pub fn start(config: &Config, records: mpsc::Receiver<Record>) -> Result<Storage, StartError> {
        let (events, _) = broadcast::channel(256);
        let mut sinks = Vec::new();
        let mut statuses = Vec::new();
        for s in &config.sinks {
            let writer =
                writer_for(config, s).map_err(|error| StartError::Writer { sink: s.name.clone(), error })?;
            let dir = spool_dir(config, &s.name);
            let spool = Spool::open(&dir, SpoolLimits::new(s.spool_max))
                .map_err(|error| StartError::Spool { sink: s.name.clone(), dir: dir.clone(), error })?;
            let status = Arc::new(SinkStatus::new(&s.name, writer.kind(), writer.target()));
            tracing::info!(sink = %s.name, kind = writer.kind(), target = %writer.target(),
                spool = %dir.display(), "sink ready");
            let opts = SinkOptions {
                name: s.name.clone(),
                batch: s.batch,
                flush_interval: s.flush_interval,
                durability: s.durability,
                sync_interval: s.sync_interval,
                max_backoff: s.max_backoff,
            };
            sinks.push(Sink::new(writer, spool, opts, status.clone(), events.clone()));
            statuses.push(status);
        }
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("pmtr-storage".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                runtime.block_on(run(sinks, records));
                let _ = done_tx.send(());
            })
            .map_err(StartError::Thread)?;
        Ok(Storage { sinks: statuses, events, done })
    }

    /// Waits until every sink has written or spooled what it had (after the record channel
    /// closed).
    pub async fn join(self) {
        let _ = self.done.await;
    }
}

/// Fans records out to the sinks until `records` closes, then lets each finish.
pub async fn run(sinks: Vec<Sink>, mut records: mpsc::Receiver<Record>) {
    let mut senders = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for sink in sinks {
        let (tx, rx) = mpsc::channel(4096);
        senders.push(tx);
        tasks.spawn(sink.run(rx));
    }
    while let Some(r) = records.recv().await {
        if let Some((last, rest)) = senders.split_last() {
            for tx in rest {
                let _ = tx.send(r.clone()).await;
            }
            let _ = last.send(r).await;
        }
    }
    drop(senders);
    while tasks.join_next().await.is_some() {}
}
