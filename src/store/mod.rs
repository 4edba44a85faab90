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
//! - Each sink runs on a thread of its own, and a task hands each record to every sink without
//!   waiting, so that a slow SD card, a hung disk or a large request never delays a
//!   poll, a trigger or a relay, nor another sink. [`Intake`] is the way in: it never waits
//!   either (a full queue drops, counted and logged).

pub mod csv;
pub mod health;
pub mod influx;
pub mod record;
pub mod schema;
pub mod sink;
pub mod spool;

use crate::config::{Config, SinkKind};
use crate::drops::Drops;
use crate::reading::Record;
use crate::sync::Locked;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sink::{Sink, SinkOptions, Writer};
use spool::{Spool, SpoolLimits};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
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
    /// The spool's size on disk changed: `bytes` now (sent by the sink each time it changes,
    /// so that a follower of the spool's fill need not read [`SinkStatus`] again and again).
    Spool { sink: String, bytes: u64 },
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
    /// Records in spool segments that could not be read (EIO), set aside as `*.damaged`.
    pub spool_unreadable: u64,
    /// Records lost before this sink because its queue was full (the sink was stuck).
    pub queue_dropped: u64,
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
        self.state.locked()
    }

    pub fn snapshot(&self) -> SinkState {
        self.lock().clone()
    }
}

/// The running storage: a task that hands each record to every sink, and one thread per sink,
/// so that a sink stuck on a hung disk or server never slows another.
pub struct Storage {
    pub sinks: Vec<Arc<SinkStatus>>,
    pub events: broadcast::Sender<StoreEvent>,
    /// The fan-out task, then each sink's thread: done when it has stopped.
    done: Vec<(String, oneshot::Receiver<()>)>,
}

/// How long [`Storage::join`] waits for the sinks at most: their own [`sink::STOP_BOUND`]
/// plus time for the spool's disk. A sink still running then (a hung disk) is left behind.
pub const JOIN_BOUND: Duration = Duration::from_secs(10);

/// Records queued for one sink before the newest are dropped (counted and logged): the sink is
/// stuck, and the others must not wait for it.
pub const SINK_QUEUE: usize = 4096;

/// Why storage could not start. A spool that cannot be opened is not one: the sink runs
/// without it, reports, and tries again.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("sink {sink}: {error}")]
    Writer { sink: String, error: influx::SetupError },
    #[error("cannot start the storage thread: {0}")]
    Thread(std::io::Error),
}

/// The hand-off into storage, for the trigger task, the buses and the health points: it never
/// waits. When storage cannot keep up, the record is dropped, counted and logged (at most
/// once a minute), and the caller goes on: no relay waits on storage.
#[derive(Clone, Debug)]
pub struct Intake {
    tx: mpsc::Sender<Record>,
    drops: Arc<Drops>,
}

/// Storage has stopped: nothing more can be handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl Intake {
    /// An intake and the receiving end to give to [`Storage::start`].
    pub fn channel(capacity: usize) -> (Intake, mpsc::Receiver<Record>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Intake::from(tx), rx)
    }

    /// Hands a record over without waiting. A full queue drops it (counted, logged).
    pub fn offer(&self, r: Record) -> Result<(), Closed> {
        match self.tx.try_send(r) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.drops.count();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
        }
    }

    /// Records dropped because storage's queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.drops.total()
    }
}

impl From<mpsc::Sender<Record>> for Intake {
    fn from(tx: mpsc::Sender<Record>) -> Self {
        Intake { tx, drops: Arc::new(Drops::new("records on their way to storage")) }
    }
}

/// The spool folder of a sink.
pub fn spool_dir(config: &Config, sink: &str) -> PathBuf {
    config.gateway.state_dir.join("spool").join(sink)
}

/// The writer of a configured sink.
pub fn writer_for(
    config: &Config,
    sink: &crate::config::Sink,
) -> Result<Box<dyn Writer>, influx::SetupError> {
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
    /// arrives on `records` (readings and state changes). A spool that cannot be opened (a
    /// read-only disk) does not stop pmtr: the sink writes from memory, reports (log, status,
    /// [`StoreEvent::SpoolError`]) and tries to open it again every
    /// [`sink::SPOOL_REOPEN_EVERY`].
    pub fn start(config: &Config, records: mpsc::Receiver<Record>) -> Result<Storage, StartError> {
        let (events, _) = broadcast::channel(256);
        let mut sinks = Vec::new();
        let mut statuses = Vec::new();
        for s in &config.sinks {
            let writer =
                writer_for(config, s).map_err(|error| StartError::Writer { sink: s.name.clone(), error })?;
            let dir = spool_dir(config, &s.name);
            let limits = SpoolLimits::new(s.spool_max);
            let status = Arc::new(SinkStatus::new(&s.name, writer.kind(), writer.target()));
            let spool = match Spool::open(&dir, limits) {
                Ok(spool) => spool,
                Err(error) => {
                    let message = format!("cannot open the spool at {}: {error}", dir.display());
                    tracing::error!(sink = %s.name, "{message}; writing without it (nothing is kept \
                        through an outage) and trying again every {:?}: pmtr needs a writable state_dir",
                        sink::SPOOL_REOPEN_EVERY);
                    status.lock().last_error = Some((chrono::Utc::now(), message.clone()));
                    let _ = events.send(StoreEvent::SpoolError { sink: s.name.clone(), error: message });
                    Spool::closed(&dir, limits)
                }
            };
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
        Ok(Storage { sinks: statuses, events, done: spawn(sinks, records)? })
    }

    /// Waits until every sink has written or spooled what it had (after the record channel
    /// closed), at most [`JOIN_BOUND`]: a sink stuck longer (a hung disk) is logged and left.
    pub async fn join(self) {
        let deadline = tokio::time::Instant::now() + JOIN_BOUND;
        for (name, done) in self.done {
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                tracing::error!(sink = %name, "storage did not stop within {JOIN_BOUND:?} (a hung disk \
                    or server?): stopping without it; what it held in memory may be lost");
            }
        }
    }
}

/// Starts the fan-out task and one thread per sink; returns what tells when each stopped.
fn spawn(
    sinks: Vec<Sink>,
    records: mpsc::Receiver<Record>,
) -> Result<Vec<(String, oneshot::Receiver<()>)>, StartError> {
    let mut done = Vec::new();
    let mut queues = Vec::new();
    for sink in sinks {
        let (tx, rx) = mpsc::channel(SINK_QUEUE);
        let name = sink.name().to_owned();
        queues.push(SinkQueue {
            tx,
            status: sink.status(),
            drops: Drops::new(format!("records for sink {name}")),
        });
        done.push((name.clone(), on_own_thread(&format!("pmtr-sink-{name}"), sink.run(rx))?));
    }
    done.insert(0, ("(fan-out)".into(), fan_out(run(queues, records))?));
    Ok(done)
}

/// The fan-out does no I/O (it only hands records on, never waiting): it runs as a task of the
/// runtime storage is started from, which saves a thread, and a wake-up of that thread for
/// every record; started outside a runtime, on a thread of its own.
fn fan_out(
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<oneshot::Receiver<()>, StartError> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            let (done_tx, done) = oneshot::channel();
            runtime.spawn(async move {
                task.await;
                let _ = done_tx.send(());
            });
            Ok(done)
        }
        Err(_) => on_own_thread("pmtr-storage", task),
    }
}

/// Runs `task` on a thread of its own with its own runtime; the receiver hears when it ended.
fn on_own_thread(
    name: &str,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<oneshot::Receiver<()>, StartError> {
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("cannot build the storage runtime: {e}");
                    return;
                }
            };
            runtime.block_on(task);
            let _ = done_tx.send(());
            // A writer's blocking file I/O that hangs (a dead disk) must not hold the thread.
            runtime.shutdown_background();
        })
        .map_err(StartError::Thread)?;
    Ok(done)
}

/// One sink's queue, as the fan-out sees it.
pub struct SinkQueue {
    pub tx: mpsc::Sender<Record>,
    pub status: Arc<SinkStatus>,
    pub drops: Drops,
}

/// Hands every record to every sink until `records` closes, never waiting: a sink whose
/// queue is full (stuck) loses the record, counted in its status and logged, and the others
/// go on. Closing the sinks' queues then lets each stop.
pub async fn run(sinks: Vec<SinkQueue>, mut records: mpsc::Receiver<Record>) {
    while let Some(r) = records.recv().await {
        for q in &sinks {
            if let Err(mpsc::error::TrySendError::Full(_)) = q.tx.try_send(r.clone()) {
                q.status.lock().queue_dropped += 1;
                q.drops.count();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sink::{Durability, WriteError, WriteFuture, Writer};
    use super::*;
    use crate::meter::{pzem, Model};
    use crate::reading::{Phase, Reading};
    use crate::relay::FakeBoard;
    use crate::trigger::run::Triggers;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// Blocks its thread on every write until the test lets go (a CSV file on a dead disk).
    struct Hung(Mutex<std::sync::mpsc::Receiver<()>>);

    impl Writer for Hung {
        fn kind(&self) -> &'static str {
            "hung"
        }
        fn target(&self) -> String {
            "a dead disk".into()
        }
        fn write(&mut self, _: &[Record]) -> WriteFuture {
            let _ = self.0.lock().unwrap().recv();
            Box::pin(async { Err(WriteError::Retry { message: "dead".into(), after: None }) })
        }
        fn render(&self, _: &[Record]) -> String {
            String::new()
        }
    }

    /// Counts the readings it writes.
    struct Counting(Arc<AtomicU64>);

    impl Writer for Counting {
        fn kind(&self) -> &'static str {
            "counting"
        }
        fn target(&self) -> String {
            "memory".into()
        }
        fn write(&mut self, batch: &[Record]) -> WriteFuture {
            let n = batch.iter().filter(|r| matches!(r, Record::Reading(_))).count();
            self.0.fetch_add(n as u64, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
        fn render(&self, _: &[Record]) -> String {
            String::new()
        }
    }

    fn sink(name: &str, writer: Box<dyn Writer>, dir: &std::path::Path) -> Sink {
        let spool = Spool::open(&dir.join(name), SpoolLimits::new(64 << 20)).unwrap();
        let opts = SinkOptions {
            name: name.into(),
            batch: 1000,
            flush_interval: Duration::from_millis(100),
            durability: Durability::Outage,
            sync_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        };
        let status = Arc::new(SinkStatus::new(name, writer.kind(), writer.target()));
        Sink::new(writer, spool, opts, status, broadcast::channel(16).0)
    }

    fn config(dir: &std::path::Path) -> Config {
        let text = format!(
            "[gateway]\nstate_dir = \"{}\"\ngpio = \"fake\"\n\
             [[bus]]\nname = \"b\"\nport = \"/dev/null\"\n\
             [[meter]]\nname = \"main\"\nmodel = \"pzem-016\"\naddress = 4\n\
             [[relay]]\nname = \"motor\"\npin = 17\ndefault = \"on\"\n\
             [[trigger]]\nname = \"overvoltage\"\nmeter = \"main\"\nwhen = \"L1U > 253\"\nrelays = [\"motor\"]\n",
            dir.display()
        );
        crate::config::load_str(&text, "t.toml").unwrap()
    }

    fn reading(volts: f64) -> Reading {
        let regs = pzem::encode(volts, 1.0, volts, 1.0, 50.0, 1.0, false);
        Reading {
            meter: "main".into(),
            model: Model::Pzem016,
            time: chrono::Utc::now(),
            samples: pzem::decode(&regs, Phase::L1).unwrap(),
            quality: Default::default(),
        }
    }

    /// Waits for `ok`, at most 60 s of wall time: a bound that only a hang reaches, not a
    /// timing assert (counted in wall time, not in polls: on a machine loaded by parallel
    /// builds, 10,000 polls of 1 ms took longer than the sinks' threads were given to run).
    async fn eventually(what: &str, ok: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("never: {what}");
    }

    /// One sink hangs for ever on its first write (its thread blocked in a file write): the
    /// trigger task still hands every reading on without waiting, the relay follows each
    /// tripping reading before the next is taken, and the other sink writes every reading.
    /// The hung sink's losses are counted.
    #[tokio::test]
    async fn a_hung_sink_slows_neither_another_sink_nor_the_relays() {
        let dir = tempfile::tempdir().unwrap();
        let (release, gate) = std::sync::mpsc::channel();
        let written = Arc::new(AtomicU64::new(0));
        let hung = sink("hung", Box::new(Hung(Mutex::new(gate))), dir.path());
        let hung_status = hung.status();
        let good = sink("good", Box::new(Counting(written.clone())), dir.path());
        let (intake, records) = Intake::channel(4096);
        let done = spawn(vec![hung, good], records).unwrap();
        let board = FakeBoard::new();
        let t = Triggers::start(&config(dir.path()), &mut board.gpio(), intake.clone()).unwrap();
        let total = 3 * SINK_QUEUE as u64;
        for i in 0..total {
            let high = i % 1000 == 999;
            t.readings.send(reading(if high { 260.0 } else { 230.0 })).await.unwrap();
            if high {
                eventually("the relay trips", || board.level(17) == Some(false)).await;
            } else if i % 1000 == 0 && i > 0 {
                eventually("the relay recovers", || board.level(17) == Some(true)).await;
            }
        }
        eventually("the good sink wrote every reading", || written.load(Ordering::SeqCst) == total).await;
        assert_eq!(intake.dropped(), 0, "the intake never filled");
        assert!(hung_status.snapshot().queue_dropped > 0, "the hung sink's losses are counted");
        t.join().await;
        drop(intake);
        drop(release); // the dead disk answers at last: every thread ends
        for (_, d) in done {
            let _ = d.await;
        }
    }

    /// A spool that cannot be opened (a read-only disk) does not stop storage from starting,
    /// so the relays, triggers and buses start too; the sink reports it.
    #[tokio::test]
    async fn storage_starts_when_a_spool_cannot_be_opened() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[gateway]\nstate_dir = \"{}\"\n[[bus]]\nname = \"b\"\nport = \"/dev/null\"\n\
             [[meter]]\nname = \"main\"\nmodel = \"pzem-016\"\naddress = 4\n\
             [[sink]]\nname = \"csv\"\ntype = \"csv\"\ndir = \"{}\"\n",
            dir.path().display(),
            dir.path().join("csv").display()
        );
        let config = crate::config::load_str(&text, "t.toml").unwrap();
        std::fs::write(dir.path().join("spool"), "in the way").unwrap();
        let (intake, records) = Intake::channel(16);
        let storage = Storage::start(&config, records).expect("storage starts");
        let state = storage.sinks[0].snapshot();
        assert!(state.last_error.is_some_and(|e| e.1.contains("cannot open the spool")));
        intake.offer(Record::Reading(reading(230.0))).unwrap();
        drop(intake);
        let sinks = storage.sinks.clone();
        storage.join().await;
        assert_eq!(sinks[0].snapshot().readings_written, 1, "written without a spool");
    }

    /// A sink whose thread hangs for ever (a dead disk) does not hold a stop: `join` returns
    /// after `JOIN_BOUND` and leaves it behind.
    #[tokio::test(start_paused = true)]
    async fn join_returns_after_its_bound_with_a_sink_hung_for_ever() {
        let dir = tempfile::tempdir().unwrap();
        let (release, gate) = std::sync::mpsc::channel();
        let hung = sink("hung", Box::new(Hung(Mutex::new(gate))), dir.path());
        let (intake, records) = Intake::channel(16);
        let storage = Storage {
            sinks: vec![hung.status()],
            events: broadcast::channel(1).0,
            done: spawn(vec![hung], records).unwrap(),
        };
        intake.offer(Record::Reading(reading(230.0))).unwrap();
        // Its first write, at the latest when the intake closes, hangs its thread for ever.
        drop(intake);
        let t0 = tokio::time::Instant::now();
        storage.join().await;
        assert_eq!(t0.elapsed(), JOIN_BOUND, "joined at the bound, not never");
        drop(release);
    }
}
