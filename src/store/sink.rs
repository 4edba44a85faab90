//! One sink's loop: batches records (readings and state changes) in memory, writes them,
//! spools what cannot be written, replays the spool, and decides what each failure means. A
//! state change goes the same way as a reading; "readings" below means both.
//!
//! The decisions, in one place:
//! - **Database keeping up** (durability `outage`): readings wait in memory for at most
//!   `flush_interval` or until `batch` are there, then go in one write. Nothing touches the disk.
//! - **A write fails and may succeed later** (network, timeout, 5xx, 429): the batch goes to the
//!   spool, the sink is *down*: every new reading is appended to the spool as it arrives (so a
//!   `kill -9` loses nothing; a power cut at most `sync_interval`), and the oldest spooled batch
//!   is tried again after a back-off (1 s doubling to `max_backoff`, each wait drawn between
//!   half and all of it, or the server's `Retry-After`). The first failure of an outage is
//!   logged as a warning, the rest at debug level; the end of the outage is logged with the
//!   number of readings to replay.
//! - **Database slow but answering**: a write in the air longer than `flush_interval`, or
//!   readings waiting longer than that behind it, send what waits in memory to the spool
//!   (synced at once), and every new reading too until the write ends. More than
//!   `MEMORY_LIMIT` readings in memory go to the spool as well.
//! - **Back**: the spool is replayed oldest first in batches, between the live batches (which
//!   go first, so dashboards stay current).
//! - **The server refuses the request** (401, 403, 404: token, organisation, bucket or
//!   database wrong): logged as an error once, everything is kept in the spool, and the write
//!   is tried again every `5 × max_backoff`, never in a loop. Fixing the config and restarting
//!   sends it all.
//! - **The server refuses the points** (400, 422 with the database's own refusal: malformed,
//!   type conflict; see [`super::influx::refuses_points`]): they can never be written; they are
//!   set aside in `<spool>/rejected.txt` (line protocol, for a human), counted, and the rest
//!   goes on.
//! - **A spool segment cannot be read** (EIO): it is set aside as `*.damaged`, its records
//!   counted and reported, and the rest goes on. **The spool cannot be opened** (read-only
//!   disk): the sink writes from memory and tries to open it every `SPOOL_REOPEN_EVERY`.
//! - **Too large** (413): the batch size is halved.
//! - **Stop** (SIGTERM, reload), bounded by `STOP_BOUND` whatever the spool holds: the write
//!   in flight is awaited and what is in memory written until then; the rest is spooled, the
//!   spool synced and left for the next start (never replayed at stop).

use super::spool::{self, Cursor, Spool};
use super::{SinkState, SinkStatus, StoreEvent};
use crate::backoff::Backoff;
use crate::reading::Record;
use rand::Rng;
use std::collections::VecDeque;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

/// Records held in memory before a slow database makes them go to the spool.
pub const MEMORY_LIMIT: usize = 20_000;
/// Rejected points kept for a human, at most.
const REJECTED_MAX_BYTES: u64 = 16 << 20;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest a sink takes to stop (SIGTERM, reload) once its records channel closed,
/// however full its spool: the write in flight and what is in memory get this long, the rest
/// goes to the spool for the next start.
pub const STOP_BOUND: Duration = Duration::from_secs(5);
/// How often a spool that could not be opened is tried again.
pub const SPOOL_REOPEN_EVERY: Duration = Duration::from_secs(30);
const SPOOL_ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// Why a write failed, as the sink must act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// May succeed later: network, timeout, 5xx, 429. `after`: the server's Retry-After.
    Retry { message: String, after: Option<Duration> },
    /// The server refuses this sink's settings (token, organisation, bucket, database).
    Refused { message: String },
    /// The server refuses these points; sending them again cannot help.
    Rejected { message: String },
    /// The request was too large.
    TooLarge,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Retry { message, .. } => write!(f, "{message}"),
            WriteError::Refused { message } => write!(f, "refused: {message}"),
            WriteError::Rejected { message } => write!(f, "points rejected: {message}"),
            WriteError::TooLarge => write!(f, "request too large"),
        }
    }
}

pub type WriteFuture = Pin<Box<dyn Future<Output = Result<(), WriteError>> + Send>>;

/// A destination. `write` encodes the batch at once and returns the sending part.
pub trait Writer: Send {
    /// `influxdb1`, `influxdb2`, `csv`.
    fn kind(&self) -> &'static str;
    /// Where it writes (URL and database, folder), for logs and status.
    fn target(&self) -> String;
    fn write(&mut self, batch: &[Record]) -> WriteFuture;
    /// The batch as text for `rejected.txt`.
    fn render(&self, batch: &[Record]) -> String;
    /// Points in a batch (InfluxDB: one per phase of each reading, one per state change).
    fn points(&self, batch: &[Record]) -> usize {
        batch.iter().map(super::schema::point_count).sum()
    }
}

pub use crate::config::Durability;

#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub name: String,
    /// Records per write.
    pub batch: usize,
    pub flush_interval: Duration,
    pub durability: Durability,
    /// How often spool appends are made durable with fsync.
    pub sync_interval: Duration,
    pub max_backoff: Duration,
}

enum Source {
    Memory(Vec<Record>),
    Spool(Cursor),
}

struct Flight {
    source: Source,
    /// Records in the batch, and how many of them are readings, state changes and health
    /// points (the rest are energy points, counted in `points` only).
    records: usize,
    readings: usize,
    changes: usize,
    health: usize,
    points: usize,
    /// For a batch from memory: when the write has taken too long (`flush_interval`) and
    /// what arrives meanwhile goes to the spool.
    late_at: Option<Instant>,
    future: WriteFuture,
}

fn readings_in(batch: &[Record]) -> usize {
    batch.iter().filter(|r| matches!(r, Record::Reading(_))).count()
}

fn changes_in(batch: &[Record]) -> usize {
    batch.iter().filter(|r| matches!(r, Record::Change(_))).count()
}

fn health_in(batch: &[Record]) -> usize {
    batch.iter().filter(|r| matches!(r, Record::Health(_))).count()
}

/// A sink's back-off: 1 s doubling to `max_backoff`, each wait drawn between half and all of it.
fn sink_backoff(max_backoff: Duration) -> Backoff {
    Backoff::new(FIRST_BACKOFF, max_backoff).with_jitter(0.5)
}

/// What [`decide`] looks at when a write has finished.
#[derive(Debug, Clone)]
struct Facts {
    /// Records per write now.
    batch: usize,
    /// The outage in progress, if any (`outage`, `refusal`).
    outage: Option<&'static str>,
    /// Failed writes in a row so far.
    failures: u32,
    max_backoff: Duration,
    durability: Durability,
    /// The sink is stopping.
    stopping: bool,
    /// A random draw in 0..=1: where the wait falls between half the back-off and all of it.
    random: f64,
}

/// How an outage begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// Writes fail (network, server away): tried again after a back-off.
    Down,
    /// The server refuses the sink's settings: tried again every `5 × max_backoff`.
    Refused,
}

/// What a finished write leads to.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Written (a spooled batch's cursor moves on); `over`: the outage this ends.
    Written { over: Option<&'static str> },
    /// Too large: the batch goes back, and batches are cut to `batch` records.
    Halve { batch: usize },
    /// Refused for good: set aside in `rejected.txt` (a spooled batch's cursor moves on).
    SetAside { message: String },
    /// Failed: tried again after `wait`, with `failures` in a row from then on; `starts` when
    /// it is the first failure of an outage. The batch goes to the spool, and so does what
    /// waits in memory when `spool_memory`.
    Failed { message: String, starts: Option<Outage>, wait: Duration, failures: u32, spool_memory: bool },
}

/// Decides what a finished write leads to (pure: [`Sink::apply`] acts).
fn decide(result: Result<(), WriteError>, facts: &Facts) -> Outcome {
    let e = match result {
        Ok(()) => return Outcome::Written { over: facts.outage },
        Err(WriteError::TooLarge) if facts.batch > 1 => {
            return Outcome::Halve { batch: (facts.batch / 2).max(1) }
        }
        Err(WriteError::TooLarge) => {
            return Outcome::SetAside { message: "a single record is too large".into() }
        }
        Err(WriteError::Rejected { message }) => return Outcome::SetAside { message },
        Err(e) => e,
    };
    let starts = match (facts.outage, &e) {
        (Some(_), _) => None,
        (None, WriteError::Refused { .. }) => Some(Outage::Refused),
        (None, _) => Some(Outage::Down),
    };
    let slowest = facts.max_backoff * 5;
    let (wait, failures) = match &e {
        WriteError::Refused { .. } => (slowest, facts.failures),
        WriteError::Retry { after: Some(after), .. } => ((*after).min(slowest), facts.failures),
        _ => {
            let failures = facts.failures.saturating_add(1);
            (sink_backoff(facts.max_backoff).wait(failures, facts.random), failures)
        }
    };
    Outcome::Failed {
        message: e.to_string(),
        starts,
        wait,
        failures,
        spool_memory: !facts.stopping || facts.durability == Durability::Always,
    }
}

/// The state of one running sink.
pub struct Sink {
    writer: Box<dyn Writer>,
    spool: Spool,
    opts: SinkOptions,
    status: Arc<SinkStatus>,
    events: broadcast::Sender<StoreEvent>,
    memory: VecDeque<Record>,
    flush_at: Option<Instant>,
    sync_at: Option<Instant>,
    /// Set while the database is failing: when to try again.
    retry_at: Option<Instant>,
    /// Failed writes in a row (how far the back-off has grown).
    failures: u32,
    /// The error kind that made the sink stop writing, logged once.
    outage: Option<&'static str>,
    batch: usize,
    rejected_since_log: u64,
    rejected_logged_at: Option<Instant>,
    /// Set while a write has been in the air longer than `flush_interval` (a database slow
    /// but answering): new records go to the spool until it answers.
    behind: bool,
    /// Set while the spool could not be opened: when to try again.
    reopen_at: Option<Instant>,
    /// Spool errors are logged and sent as events at most once a minute.
    spool_error_logged_at: Option<Instant>,
    spool_errors_since_log: u64,
    /// The spool's size last sent as a [`StoreEvent::Spool`].
    spool_told: u64,
}

impl Sink {
    pub fn new(
        writer: Box<dyn Writer>,
        spool: Spool,
        opts: SinkOptions,
        status: Arc<SinkStatus>,
        events: broadcast::Sender<StoreEvent>,
    ) -> Self {
        let batch = opts.batch.max(1);
        let mut sink = Sink {
            writer,
            spool,
            opts,
            status,
            events,
            memory: VecDeque::new(),
            flush_at: None,
            sync_at: None,
            retry_at: None,
            failures: 0,
            outage: None,
            batch,
            rejected_since_log: 0,
            rejected_logged_at: None,
            behind: false,
            reopen_at: None,
            spool_error_logged_at: None,
            spool_errors_since_log: 0,
            spool_told: 0,
        };
        if !sink.spool.is_open() {
            // The first try comes soon, and its failure reaches the alerts (which subscribe
            // once storage has started).
            sink.reopen_at = Some(Instant::now() + Duration::from_secs(1));
        }
        if !sink.spool.is_empty() {
            tracing::info!(
                sink = %sink.opts.name,
                readings = sink.spool.len(),
                bytes = sink.spool.bytes(),
                dir = %sink.spool.dir().display(),
                "spool holds readings from before the restart; replaying them"
            );
        }
        sink.publish();
        sink
    }

    pub fn name(&self) -> &str {
        &self.opts.name
    }

    pub fn status(&self) -> Arc<SinkStatus> {
        self.status.clone()
    }

    /// Runs until `rx` closes (the buses stopped), then stops within [`STOP_BOUND`]: see
    /// [`Sink::stop`].
    pub async fn run(mut self, mut rx: mpsc::Receiver<Record>) {
        let mut flight: Option<Flight> = None;
        loop {
            let now = Instant::now();
            self.reopen_spool(now);
            if flight.is_none() {
                flight = self.next_flight(now);
            }
            let wake = self.next_wake(flight.as_ref());
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => self.accept(r),
                    None => break,
                },
                result = async { flight.as_mut().expect("guarded").future.as_mut().await }, if flight.is_some() => {
                    let f = flight.take().expect("guarded");
                    self.behind = false;
                    self.finish(f, result, false);
                }
                _ = sleep_until(wake) => {}
            }
            let now = Instant::now();
            if let Some(f) = &flight {
                self.check_slow(f, now);
            }
            if self.sync_at.is_some_and(|t| t <= now) {
                self.sync();
            }
            self.publish();
        }
        self.stop(flight).await;
    }

    /// A write in the air longer than `flush_interval`, or readings in memory waiting longer
    /// than that behind it: the database is slow but answering. What waits in memory goes to
    /// the spool (synced at once) and so does every new record until the write ends, so that a
    /// power cut never loses more than the readings of `flush_interval` before a write and
    /// those of the write in flight.
    fn check_slow(&mut self, f: &Flight, now: Instant) {
        let flight_late = f.late_at.is_some_and(|t| t <= now);
        let memory_late = !self.memory.is_empty() && self.flush_at.is_some_and(|t| t <= now);
        // Once behind, new records go to the spool as they arrive: nothing more to do until the
        // write ends (what the spool could not take stays in memory, not tried again here).
        if self.behind || !(flight_late || memory_late) || !self.spool.is_open() {
            return;
        }
        tracing::debug!(sink = %self.opts.name, "database slower than flush_interval: spooling");
        self.behind = true;
        let waiting: Vec<Record> = self.memory.drain(..).collect();
        if !waiting.is_empty() {
            self.spool_records(&waiting);
            self.sync();
        }
        if self.flush_at.is_none() && !self.spool.is_empty() {
            self.flush_at = Some(now + self.opts.flush_interval);
        }
    }

    /// Stop, bounded whatever the spool holds: the write in flight is awaited and what is in
    /// memory written (while the database answers) until [`STOP_BOUND`] has passed; what is not
    /// written by then goes to the spool, which is synced. The spool is not replayed: what it
    /// holds is sent after the next start.
    async fn stop(mut self, flight: Option<Flight>) {
        let deadline = Instant::now() + STOP_BOUND;
        let mut flight = flight;
        loop {
            if flight.is_none() && self.retry_at.is_none() && !self.memory.is_empty() {
                flight = Some(self.memory_flight(Instant::now()));
            }
            let Some(mut f) = flight.take() else { break };
            match tokio::time::timeout_at(deadline, f.future.as_mut()).await {
                Ok(result) => self.finish(f, result, true),
                Err(_) => {
                    tracing::warn!(sink = %self.opts.name, target = %self.writer.target(),
                        "stopping: a write to {} did not end within {STOP_BOUND:?}; its records are \
                         kept in the spool for the next start", self.writer.kind());
                    if let Source::Memory(batch) = f.source {
                        self.spool_records(&batch);
                    }
                    break;
                }
            }
        }
        let rest: Vec<Record> = self.memory.drain(..).collect();
        self.spool_records(&rest);
        self.sync();
        self.publish();
        tracing::debug!(sink = %self.opts.name, spooled = self.spool.len(), "sink stopped");
    }

    /// While the spool could not be opened (a read-only disk), tries again every
    /// [`SPOOL_REOPEN_EVERY`].
    fn reopen_spool(&mut self, now: Instant) {
        if self.reopen_at.is_none_or(|t| t > now) {
            return;
        }
        match self.spool.reopen() {
            Ok(()) => {
                self.reopen_at = None;
                tracing::info!(sink = %self.opts.name, dir = %self.spool.dir().display(),
                    readings = self.spool.len(), "the spool is open again");
                if !self.spool.is_empty() && self.flush_at.is_none() {
                    self.flush_at = Some(now);
                }
            }
            Err(e) => {
                self.reopen_at = Some(now + SPOOL_REOPEN_EVERY);
                self.spool_error("cannot open the spool", &e);
            }
        }
    }

    fn next_wake(&self, flight: Option<&Flight>) -> Option<Instant> {
        let mut wake: Option<Instant> = self.sync_at;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        consider(self.reopen_at);
        match flight {
            None => match self.retry_at {
                Some(t) => consider(Some(t)),
                None => consider(self.flush_at),
            },
            Some(f) => {
                // Only what `check_slow` can act on: once behind, or without a spool to spill
                // to, a deadline already passed would wake this loop again and again.
                if !self.behind && self.spool.is_open() {
                    consider(f.late_at);
                    if !self.memory.is_empty() {
                        consider(self.flush_at);
                    }
                }
            }
        }
        wake
    }

    fn accept(&mut self, r: Record) {
        let down = self.retry_at.is_some();
        if self.opts.durability == Durability::Always || down || self.behind {
            self.spool_records(std::slice::from_ref(&r));
            if self.flush_at.is_none() {
                self.flush_at = Some(Instant::now() + self.opts.flush_interval);
            }
            return;
        }
        self.memory.push_back(r);
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + self.opts.flush_interval);
        }
        if self.memory.len() > MEMORY_LIMIT && self.spool.is_open() {
            tracing::debug!(sink = %self.opts.name, "database slower than the meters: spooling");
            let all: Vec<Record> = self.memory.drain(..).collect();
            self.spool_records(&all);
        } else if self.memory.len() > MEMORY_LIMIT * 5 {
            // No spool to spill to (it could not be opened): memory is the only queue, and it
            // is bounded; the oldest reading goes and is counted.
            self.memory.pop_front();
            self.spool.dropped += 1;
        }
    }

    /// What to write next, if anything is due.
    fn next_flight(&mut self, now: Instant) -> Option<Flight> {
        if self.retry_at.is_some_and(|t| t > now) {
            return None;
        }
        let down = self.retry_at.is_some();
        let due = self.flush_at.is_some_and(|t| t <= now) || self.memory.len() >= self.batch;
        // While down, readings stay in memory only when the spool could not take them: then
        // they are the probe.
        let send_memory = if down { self.spool.is_empty() } else { due };
        if !self.memory.is_empty() && send_memory {
            return Some(self.memory_flight(now));
        }
        if self.spool.is_empty() {
            if self.memory.is_empty() {
                self.flush_at = None;
            }
            return None;
        }
        // In `always` mode the spool is the queue: wait for a batch or the flush interval.
        if self.opts.durability == Durability::Always
            && !down
            && (self.spool.len() as usize) < self.batch
            && self.flush_at.is_some_and(|t| t > now)
        {
            return None;
        }
        match self.spool.read(self.batch) {
            Ok(b) => {
                let end = b.end?;
                if b.records.is_empty() {
                    // Only damaged bytes: step over them.
                    if let Err(e) = self.spool.commit(end) {
                        self.spool_error("cannot move the spool cursor", &e);
                    }
                    return None;
                }
                if self.spool.is_empty() || self.spool.len() as usize <= b.records.len() {
                    self.flush_at = None;
                }
                let future = self.writer.write(&b.records);
                Some(Flight {
                    records: b.records.len(),
                    readings: readings_in(&b.records),
                    changes: changes_in(&b.records),
                    health: health_in(&b.records),
                    points: self.writer.points(&b.records),
                    source: Source::Spool(end),
                    late_at: None,
                    future,
                })
            }
            Err(e) if spool::is_transient(&e) => {
                self.spool_error("cannot read the spool", &e);
                self.retry_at = Some(now + self.opts.max_backoff);
                None
            }
            Err(e) => {
                // One unreadable segment (EIO) must not stop every write: it is set aside
                // for a human, its records counted, and the rest goes on.
                match self.spool.set_aside_front() {
                    Ok((lost, aside)) => {
                        self.status.lock().spool_unreadable += lost;
                        let what = format!(
                            "cannot read a spool segment ({lost} records); set aside as {}",
                            aside.display()
                        );
                        self.spool_error(&what, &e);
                    }
                    Err(e2) => {
                        self.spool_error("cannot read the spool, nor set the segment aside", &e2);
                        self.retry_at = Some(now + self.opts.max_backoff);
                    }
                }
                None
            }
        }
    }

    /// The next batch from memory, sent now.
    fn memory_flight(&mut self, now: Instant) -> Flight {
        let n = self.memory.len().min(self.batch);
        let batch: Vec<Record> = self.memory.drain(..n).collect();
        if self.memory.is_empty() {
            self.flush_at = None;
        }
        let future = self.writer.write(&batch);
        Flight {
            records: batch.len(),
            readings: readings_in(&batch),
            changes: changes_in(&batch),
            health: health_in(&batch),
            points: self.writer.points(&batch),
            source: Source::Memory(batch),
            late_at: Some(now + self.opts.flush_interval),
            future,
        }
    }

    fn finish(&mut self, f: Flight, result: Result<(), WriteError>, stopping: bool) {
        let facts = Facts {
            batch: self.batch,
            outage: self.outage,
            failures: self.failures,
            max_backoff: self.opts.max_backoff,
            durability: self.opts.durability,
            stopping,
            random: rand::thread_rng().gen_range(0.0..=1.0),
        };
        let outcome = decide(result, &facts);
        self.apply(f, outcome, Instant::now());
    }

    /// Does what [`decide`] said: the spool, the status, the log, the events.
    fn apply(&mut self, f: Flight, outcome: Outcome, now: Instant) {
        match outcome {
            Outcome::Written { over } => {
                if let Source::Spool(end) = f.source {
                    if let Err(e) = self.spool.commit(end) {
                        self.spool_error("cannot move the spool cursor", &e);
                    }
                }
                {
                    let mut s = self.status.lock();
                    s.readings_written += f.readings as u64;
                    s.changes_written += f.changes as u64;
                    s.health_written += f.health as u64;
                    s.points_written += f.points as u64;
                    s.last_write = Some(chrono::Utc::now());
                }
                if let Some(kind) = over {
                    self.outage = None;
                    let spooled = self.spool.len();
                    tracing::info!(sink = %self.opts.name, target = %self.writer.target(), spooled,
                        "{} again ({kind} is over); replaying the spool", self.writer.kind());
                    let _ = self.events.send(StoreEvent::Back { sink: self.opts.name.clone(), spooled });
                }
                self.retry_at = None;
                self.failures = 0;
            }
            Outcome::Halve { batch } => {
                self.batch = batch;
                tracing::warn!(sink = %self.opts.name, batch = self.batch,
                    "the server found the request too large: batch size lowered");
                self.put_back(f.source);
            }
            Outcome::SetAside { message } => {
                let batch = match &f.source {
                    Source::Memory(b) => b.clone(),
                    Source::Spool(_) => Vec::new(),
                };
                self.set_aside(&batch, &f, &message);
                if let Source::Spool(end) = f.source {
                    if let Err(e) = self.spool.commit(end) {
                        self.spool_error("cannot move the spool cursor", &e);
                    }
                }
            }
            Outcome::Failed { message, starts, wait, failures, spool_memory } => {
                self.status.lock().last_error = Some((chrono::Utc::now(), message.clone()));
                match starts {
                    Some(Outage::Refused) => {
                        self.outage = Some("refusal");
                        tracing::error!(sink = %self.opts.name, target = %self.writer.target(),
                            "{} {message}. Check the sink's settings (token, org, bucket, database) and \
                             restart; readings are kept in the spool at {}, tried again every {:?}",
                            self.writer.kind(), self.spool.dir().display(), self.opts.max_backoff * 5);
                        let _ = self
                            .events
                            .send(StoreEvent::Refused { sink: self.opts.name.clone(), error: message });
                    }
                    Some(Outage::Down) => {
                        self.outage = Some("outage");
                        tracing::warn!(sink = %self.opts.name, target = %self.writer.target(),
                            "cannot write to {}: {message}; readings go to the spool at {} until it is back",
                            self.writer.kind(), self.spool.dir().display());
                        let _ = self
                            .events
                            .send(StoreEvent::Down { sink: self.opts.name.clone(), error: message });
                    }
                    None => tracing::debug!(sink = %self.opts.name, "write failed again: {message}"),
                }
                self.failures = failures;
                self.retry_at = Some(now + wait);
                if let Source::Memory(batch) = f.source {
                    self.spool_records(&batch);
                }
                if spool_memory {
                    let rest: Vec<Record> = self.memory.drain(..).collect();
                    self.spool_records(&rest);
                }
            }
        }
    }

    fn put_back(&mut self, source: Source) {
        if let Source::Memory(batch) = source {
            for r in batch.into_iter().rev() {
                self.memory.push_front(r);
            }
        }
    }

    /// Appends to the spool. When the disk refuses, the records stay in memory (up to a
    /// limit) and the error is reported.
    fn spool_records(&mut self, records: &[Record]) {
        if records.is_empty() {
            return;
        }
        match self.spool.append(records) {
            Ok(dropped) => {
                if dropped > 0 {
                    tracing::warn!(sink = %self.opts.name, dropped, total_dropped = self.spool.dropped,
                        "spool full: the oldest readings were dropped (raise spool_max?)");
                    let _ = self
                        .events
                        .send(StoreEvent::Dropped { sink: self.opts.name.clone(), readings: dropped });
                }
                if self.sync_at.is_none() {
                    self.sync_at = Some(Instant::now() + self.opts.sync_interval);
                }
            }
            Err(e) => {
                self.spool_error("cannot append to the spool", &e);
                for r in records {
                    if self.memory.len() >= MEMORY_LIMIT * 5 {
                        self.memory.pop_front();
                        self.spool.dropped += 1;
                    }
                    self.memory.push_back(r.clone());
                }
            }
        }
    }

    fn sync(&mut self) {
        self.sync_at = None;
        if let Err(e) = self.spool.sync() {
            self.spool_error("cannot sync the spool", &e);
        }
    }

    /// Logs, records and sends a spool error: at most once a minute (with the number of
    /// errors since), so that a read-only disk does not flood the log and the mailbox.
    fn spool_error(&mut self, what: &str, e: &std::io::Error) {
        let message = format!("{what} at {}: {e}", self.spool.dir().display());
        self.status.lock().last_error = Some((chrono::Utc::now(), message.clone()));
        self.spool_errors_since_log += 1;
        let now = Instant::now();
        if self.spool_error_logged_at.is_some_and(|t| now.duration_since(t) < SPOOL_ERROR_LOG_EVERY) {
            tracing::debug!(sink = %self.opts.name, "{message}");
            return;
        }
        let more = self.spool_errors_since_log - 1;
        if more > 0 {
            tracing::error!(sink = %self.opts.name, "{message} ({more} more spool errors in the last minute)");
        } else {
            tracing::error!(sink = %self.opts.name, "{message}");
        }
        self.spool_errors_since_log = 0;
        self.spool_error_logged_at = Some(now);
        let _ = self.events.send(StoreEvent::SpoolError { sink: self.opts.name.clone(), error: message });
    }

    fn set_aside(&mut self, memory_batch: &[Record], f: &Flight, message: &str) {
        let text = if memory_batch.is_empty() {
            // The batch came from the spool and is still there (not committed yet).
            match self.spool.read(f.records) {
                Ok(b) => self.writer.render(&b.records),
                Err(_) => String::new(),
            }
        } else {
            self.writer.render(memory_batch)
        };
        let path = self.spool.dir().join("rejected.txt");
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        if size < REJECTED_MAX_BYTES {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut file| file.write_all(format!("# {message}\n{text}").as_bytes()));
            if let Err(e) = written {
                tracing::warn!(file = %path.display(), "cannot keep the rejected points: {e}");
            }
        }
        self.status.lock().rejected += f.records as u64;
        self.rejected_since_log += f.records as u64;
        let now = Instant::now();
        if self.rejected_logged_at.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(600)) {
            tracing::error!(sink = %self.opts.name, readings = self.rejected_since_log, file = %path.display(),
                "{} rejected points: {message}. They cannot be written as they are; kept in the file for you",
                self.writer.kind());
            let _ = self.events.send(StoreEvent::Rejected {
                sink: self.opts.name.clone(),
                readings: self.rejected_since_log,
                error: message.to_owned(),
            });
            self.rejected_since_log = 0;
            self.rejected_logged_at = Some(now);
        }
    }

    /// The status, and a [`StoreEvent::Spool`] when the spool's size moved by a hundredth of
    /// its limit or more since the last one, or it emptied (so a filling spool is a hundred
    /// events at most, not one per batch).
    fn publish(&mut self) {
        let oldest_memory = self.memory.front().map(Record::time);
        let oldest_spool = self.spool.oldest();
        let bytes = self.spool.bytes();
        let step = (self.spool.max_bytes() / 100).max(1);
        let spool_changed =
            bytes != self.spool_told && (bytes == 0 || bytes.abs_diff(self.spool_told) >= step);
        let mut s = self.status.lock();
        let state: &mut SinkState = &mut s;
        state.healthy = self.retry_at.is_none();
        state.in_memory = self.memory.len() as u64;
        state.spool_readings = self.spool.len();
        state.spool_bytes = bytes;
        state.spool_dropped = self.spool.dropped;
        state.disk_bytes_written = self.spool.bytes_written;
        state.oldest_unsent = match (oldest_memory, oldest_spool) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        drop(s);
        if spool_changed {
            self.spool_told = bytes;
            let _ = self.events.send(StoreEvent::Spool { sink: self.opts.name.clone(), bytes });
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::Model;
    use crate::reading::{ChangeEvent, Phase, Quality, Quantity, Reading, Sample, StateChange, Subject};
    use crate::store::spool::SpoolLimits;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake {
        /// What the next writes answer; empty means Ok.
        script: VecDeque<Result<(), WriteError>>,
        /// The answer once the script is used up.
        then: Option<WriteError>,
        written: Vec<u64>,
        attempts: Vec<(Instant, usize)>,
        /// How long each write takes (5 ms when not set); `hang`: it never ends.
        delay: Option<Duration>,
        hang: bool,
    }

    struct FakeWriter(Arc<Mutex<Fake>>);

    impl Writer for FakeWriter {
        fn kind(&self) -> &'static str {
            "fake"
        }
        fn target(&self) -> String {
            "nowhere".into()
        }
        fn write(&mut self, batch: &[Record]) -> WriteFuture {
            let mut f = self.0.lock().unwrap();
            f.attempts.push((Instant::now(), batch.len()));
            let result = match f.script.pop_front() {
                Some(r) => r,
                None => f.then.clone().map_or(Ok(()), Err),
            };
            if result.is_ok() {
                f.written.extend(batch.iter().map(id));
            }
            let (delay, hang) = (f.delay.unwrap_or(Duration::from_millis(5)), f.hang);
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(delay).await;
                result
            })
        }
        fn render(&self, batch: &[Record]) -> String {
            format!("{} readings\n", batch.len())
        }
    }

    /// The number a test record carries.
    fn id(r: &Record) -> u64 {
        match r {
            Record::Reading(r) => r.samples[0].value as u64,
            Record::Change(c) => c.cause.parse().unwrap(),
            Record::Health(h) => h.fields()[0].1,
            Record::Energy(e) => (e.time().timestamp_millis() - 1_700_000_000_000) as u64,
        }
    }

    fn reading(i: u64) -> Record {
        Record::Reading(Reading {
            meter: "m".into(),
            model: Model::Pzem016,
            time: chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + i as i64).unwrap(),
            samples: vec![Sample::new(Phase::L1, Quantity::Voltage, i as f64)],
            quality: Quality::default(),
        })
    }

    fn change(i: u64) -> Record {
        Record::Change(StateChange {
            time: chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + i as i64).unwrap(),
            subject: Subject::Relay,
            name: "boiler".into(),
            event: ChangeEvent::Switched,
            active: i % 2 == 0,
            held: false,
            dry_run: false,
            cause: i.to_string().into(),
        })
    }

    fn health(i: u64) -> Record {
        let time = chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + i as i64).unwrap();
        Record::Health(crate::reading::Health::Sink(crate::reading::SinkHealth::from_values(
            time,
            "influx".into(),
            [i, 0, 0, 0, 0, 0, 0],
        )))
    }

    fn energy(i: u64) -> Record {
        let time = chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + i as i64).unwrap();
        Record::Energy(crate::reading::EnergyPoint::Total(crate::reading::EnergyTotal {
            time,
            meter: "m".into(),
            counter: "l1_energy".into(),
            kwh: 1.0,
        }))
    }

    struct Rig {
        fake: Arc<Mutex<Fake>>,
        status: Arc<SinkStatus>,
        events: broadcast::Receiver<StoreEvent>,
        tx: mpsc::Sender<Record>,
        task: tokio::task::JoinHandle<()>,
        dir: tempfile::TempDir,
    }

    /// The next event but the spool's sizes (which come with every change of the spool).
    fn event(
        events: &mut broadcast::Receiver<StoreEvent>,
    ) -> Result<StoreEvent, broadcast::error::TryRecvError> {
        loop {
            match events.try_recv() {
                Ok(StoreEvent::Spool { .. }) => continue,
                e => return e,
            }
        }
    }

    fn rig(fake: Fake, durability: Durability, dir: Option<tempfile::TempDir>) -> Rig {
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let spool = Spool::open(dir.path(), SpoolLimits::new(64 << 20)).unwrap();
        rig_on(fake, durability, dir, spool)
    }

    fn rig_on(fake: Fake, durability: Durability, dir: tempfile::TempDir, spool: Spool) -> Rig {
        let fake = Arc::new(Mutex::new(fake));
        let status = Arc::new(SinkStatus {
            name: "t".into(),
            kind: "fake",
            target: "nowhere".into(),
            state: std::sync::Mutex::new(SinkState::default()),
        });
        let (events_tx, events) = broadcast::channel(64);
        let opts = SinkOptions {
            name: "t".into(),
            batch: 10,
            flush_interval: Duration::from_secs(1),
            durability,
            sync_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        };
        let sink = Sink::new(Box::new(FakeWriter(fake.clone())), spool, opts, status.clone(), events_tx);
        let (tx, rx) = mpsc::channel(1000);
        let task = tokio::spawn(sink.run(rx));
        Rig { fake, status, events, tx, task, dir }
    }

    async fn feed(rig: &Rig, range: std::ops::Range<u64>, every: Duration) {
        for i in range {
            rig.tx.send(reading(i)).await.unwrap();
            tokio::time::sleep(every).await;
        }
    }

    fn retry() -> WriteError {
        WriteError::Retry { message: "connection refused".into(), after: None }
    }

    #[tokio::test(start_paused = true)]
    async fn keeping_up_touches_no_disk_and_batches_by_size_and_time() {
        let rig = rig(Fake::default(), Durability::Outage, None);
        feed(&rig, 0..25, Duration::from_millis(10)).await; // 25 readings in 250 ms
        tokio::time::sleep(Duration::from_secs(2)).await;
        {
            let f = rig.fake.lock().unwrap();
            assert_eq!(f.written, (0..25).collect::<Vec<_>>());
            let sizes: Vec<usize> = f.attempts.iter().map(|a| a.1).collect();
            assert_eq!(sizes, [10, 10, 5], "two full batches, then the rest after flush_interval");
        }
        let s = rig.status.snapshot();
        assert_eq!((s.disk_bytes_written, s.spool_readings, s.readings_written), (0, 0, 25));
        assert_eq!(std::fs::read_dir(rig.dir.path()).unwrap().count(), 0);
        drop(rig.tx);
        rig.task.await.unwrap();
    }

    /// The spool's size goes out as events: while it fills, one each time it moved by a
    /// hundredth of its limit (not one per batch); one when it has emptied; none while it
    /// stays empty.
    #[tokio::test(start_paused = true)]
    async fn the_spool_size_is_told_by_steps_and_when_it_empties() {
        let fake = Fake { script: VecDeque::from(vec![Err(retry()); 4]), ..Fake::default() };
        let dir = tempfile::tempdir().unwrap();
        let limits = SpoolLimits { max_bytes: 64 << 10, segment_bytes: 4 << 10 };
        let spool = Spool::open(dir.path(), limits).unwrap();
        let mut rig = rig_on(fake, Durability::Outage, dir, spool);
        feed(&rig, 0..200, Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_secs(120)).await;
        let mut sizes = Vec::new();
        while let Ok(e) = rig.events.try_recv() {
            if let StoreEvent::Spool { sink, bytes } = e {
                assert_eq!(sink, "t");
                sizes.push(bytes);
            }
        }
        assert_eq!(rig.status.snapshot().spool_bytes, 0, "replayed");
        assert_eq!(rig.fake.lock().unwrap().written.len(), 200);
        let (last, filling) = sizes.split_last().expect("events");
        assert_eq!(*last, 0, "emptied: told");
        assert!(!filling.is_empty() && filling.iter().all(|b| *b > 0), "{sizes:?}");
        for w in filling.windows(2) {
            assert!(w[0].abs_diff(w[1]) >= (64 << 10) / 100, "a step of 1% at least: {sizes:?}");
        }
        // Writes that keep up leave the empty spool alone: no event.
        feed(&rig, 200..230, Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(rig.events.try_recv().is_err());
        drop(rig.tx);
        rig.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_spools_backs_off_and_replays_everything_once() {
        let fake = Fake { script: VecDeque::from(vec![Err(retry()); 8]), ..Fake::default() };
        let mut rig = rig(fake, Durability::Outage, None);
        feed(&rig, 0..300, Duration::from_millis(200)).await; // one minute of readings
        tokio::time::sleep(Duration::from_secs(120)).await;
        let f = rig.fake.lock().unwrap();
        let mut written = f.written.clone();
        written.sort_unstable();
        assert_eq!(written, (0..300).collect::<Vec<_>>(), "every reading once");
        // Back-off: 8 failures, each wait at least half of 1, 2, 4, ... 60 s.
        let fails: Vec<Instant> = f.attempts.iter().take(9).map(|a| a.0).collect();
        for (i, w) in fails.windows(2).enumerate() {
            let min = Duration::from_secs(1 << i).min(Duration::from_secs(60)) / 2;
            assert!(w[1] - w[0] >= min, "wait {i}: {:?} < {min:?}", w[1] - w[0]);
        }
        let s = rig.status.snapshot();
        assert!(s.healthy);
        assert_eq!(s.spool_readings, 0);
        assert!(s.disk_bytes_written > 0);
        assert!(s.last_error.as_ref().is_some_and(|e| e.1.contains("connection refused")));
        assert!(matches!(event(&mut rig.events), Ok(StoreEvent::Down { .. })));
        assert!(matches!(event(&mut rig.events), Ok(StoreEvent::Back { .. })));
        assert!(event(&mut rig.events).is_err(), "one event each way, not one per failure");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_reported_once_and_not_retried_in_a_loop() {
        let fake = Fake { then: Some(WriteError::Refused { message: "HTTP 401".into() }), ..Fake::default() };
        let mut rig = rig(fake, Durability::Outage, None);
        feed(&rig, 0..100, Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let attempts = rig.fake.lock().unwrap().attempts.len();
        // One try, then one every 5 minutes for the rest of the hour and a bit.
        assert!((2..=15).contains(&attempts), "{attempts} attempts in an hour");
        let s = rig.status.snapshot();
        assert_eq!(s.spool_readings, 100, "everything kept");
        assert!(!s.healthy);
        assert!(matches!(event(&mut rig.events), Ok(StoreEvent::Refused { .. })));
        assert!(event(&mut rig.events).is_err());
        // The user fixes the token: everything goes.
        rig.fake.lock().unwrap().then = None;
        tokio::time::sleep(Duration::from_secs(400)).await;
        assert_eq!(rig.fake.lock().unwrap().written, (0..100).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn rejected_points_are_set_aside_and_the_rest_goes_on() {
        let fake = Fake {
            script: VecDeque::from(vec![Err(WriteError::Rejected { message: "type conflict".into() })]),
            ..Fake::default()
        };
        let mut rig = rig(fake, Durability::Outage, None);
        feed(&rig, 0..30, Duration::from_millis(1)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(rig.fake.lock().unwrap().written, (10..30).collect::<Vec<_>>());
        assert_eq!(rig.status.snapshot().rejected, 10);
        let kept = std::fs::read_to_string(rig.dir.path().join("rejected.txt")).unwrap();
        assert_eq!(kept, "# type conflict\n10 readings\n");
        assert!(matches!(event(&mut rig.events), Ok(StoreEvent::Rejected { readings: 10, .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn too_large_halves_the_batch() {
        let fake = Fake { script: VecDeque::from(vec![Err(WriteError::TooLarge)]), ..Fake::default() };
        let rig = rig(fake, Durability::Outage, None);
        feed(&rig, 0..10, Duration::from_millis(1)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let f = rig.fake.lock().unwrap();
        assert_eq!(f.written, (0..10).collect::<Vec<_>>());
        assert_eq!(f.attempts.iter().map(|a| a.1).collect::<Vec<_>>(), [10, 5, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_during_an_outage_keeps_everything_for_the_next_start() {
        let fake = Fake { then: Some(retry()), ..Fake::default() };
        let rig1 = rig(fake, Durability::Outage, None);
        feed(&rig1, 0..50, Duration::from_millis(100)).await;
        drop(rig1.tx);
        rig1.task.await.unwrap();
        assert_eq!(rig1.status.snapshot().spool_readings, 50);
        // Next start, database back.
        let rig2 = rig(Fake::default(), Durability::Outage, Some(rig1.dir));
        feed(&rig2, 50..60, Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut written = rig2.fake.lock().unwrap().written.clone();
        written.sort_unstable();
        assert_eq!(written, (0..60).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn stop_while_healthy_writes_what_is_in_memory() {
        let rig = rig(Fake::default(), Durability::Outage, None);
        feed(&rig, 0..5, Duration::from_millis(1)).await;
        drop(rig.tx);
        rig.task.await.unwrap();
        assert_eq!(rig.fake.lock().unwrap().written, [0, 1, 2, 3, 4]);
        assert_eq!(rig.status.snapshot().spool_readings, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn always_durability_writes_ahead_and_sends_in_order() {
        let rig = rig(Fake::default(), Durability::Always, None);
        feed(&rig, 0..25, Duration::from_millis(10)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(rig.fake.lock().unwrap().written, (0..25).collect::<Vec<_>>());
        let s = rig.status.snapshot();
        assert_eq!(s.spool_readings, 0);
        assert!(s.disk_bytes_written >= 25 * 29, "every reading went to disk first");
    }

    #[tokio::test(start_paused = true)]
    async fn state_changes_go_the_way_of_readings_and_are_counted_apart() {
        let fake = Fake { script: VecDeque::from(vec![Err(retry()); 2]), ..Fake::default() };
        let rig = rig(fake, Durability::Outage, None);
        for i in 0..30 {
            let r = if i % 3 == 2 { change(i) } else { reading(i) };
            rig.tx.send(r).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut written = rig.fake.lock().unwrap().written.clone();
        written.sort_unstable();
        assert_eq!(written, (0..30).collect::<Vec<_>>(), "every record once, through the spool");
        let s = rig.status.snapshot();
        assert!(s.disk_bytes_written > 0, "the outage went through the spool");
        assert_eq!((s.readings_written, s.changes_written, s.points_written), (20, 10, 30));
        assert_eq!((s.spool_readings, s.in_memory), (0, 0));
        drop(rig.tx);
        rig.task.await.unwrap();
    }

    /// Energy points go the way of readings through an outage; they count as points, never
    /// as readings, changes or health points.
    #[tokio::test(start_paused = true)]
    async fn energy_points_go_the_way_of_readings_and_count_as_points_only() {
        let fake = Fake { script: VecDeque::from(vec![Err(retry()); 2]), ..Fake::default() };
        let rig = rig(fake, Durability::Outage, None);
        for i in 0..20 {
            rig.tx.send(if i % 2 == 0 { energy(i) } else { reading(i) }).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut written = rig.fake.lock().unwrap().written.clone();
        written.sort_unstable();
        assert_eq!(written, (0..20).collect::<Vec<_>>(), "every record once, through the spool");
        let s = rig.status.snapshot();
        assert!(s.disk_bytes_written > 0, "the outage went through the spool");
        assert_eq!((s.readings_written, s.changes_written, s.health_written), (10, 0, 0));
        assert_eq!(s.points_written, 20);
        drop(rig.tx);
        rig.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn health_points_go_the_way_of_readings_and_are_counted_apart() {
        let fake = Fake { script: VecDeque::from(vec![Err(retry()); 2]), ..Fake::default() };
        let rig = rig(fake, Durability::Outage, None);
        for i in 0..30 {
            let r = match i % 3 {
                0 => health(i),
                1 => change(i),
                _ => reading(i),
            };
            rig.tx.send(r).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut written = rig.fake.lock().unwrap().written.clone();
        written.sort_unstable();
        assert_eq!(written, (0..30).collect::<Vec<_>>(), "every record once, through the spool");
        let s = rig.status.snapshot();
        assert!(s.disk_bytes_written > 0, "the outage went through the spool");
        assert_eq!((s.readings_written, s.changes_written, s.health_written), (10, 10, 10));
        assert_eq!(s.points_written, 30);
        assert_eq!((s.spool_readings, s.in_memory), (0, 0));
    }

    /// A record that is only in memory: neither acknowledged by the server nor in the spool.
    fn only_in_memory(rig: &Rig, fed: u64) -> u64 {
        let s = rig.status.snapshot();
        fed - s.readings_written - s.spool_readings
    }

    /// Stop (SIGTERM, reload) with the database back and a big spool: what is in memory is
    /// written, the spool is left for the next start, and it takes at most `STOP_BOUND`
    /// (replaying 100,000 records at 5 ms a batch of 10 would take 50 s).
    #[tokio::test(start_paused = true)]
    async fn stop_takes_a_bounded_time_however_full_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(dir.path(), SpoolLimits::new(64 << 20)).unwrap();
            for chunk in (0..100_000u64).collect::<Vec<_>>().chunks(1000) {
                spool.append(&chunk.iter().map(|i| reading(*i)).collect::<Vec<_>>()).unwrap();
            }
            spool.sync().unwrap();
        }
        let rig = rig(Fake::default(), Durability::Outage, Some(dir));
        feed(&rig, 1_000_000..1_000_005, Duration::from_millis(1)).await;
        let t0 = Instant::now();
        drop(rig.tx);
        rig.task.await.unwrap();
        assert!(t0.elapsed() <= STOP_BOUND, "stop took {:?}", t0.elapsed());
        let written = rig.fake.lock().unwrap().written.clone();
        assert!((1_000_000..1_000_005).all(|i| written.contains(&i)), "memory written at stop");
        let left = rig.status.snapshot().spool_readings;
        assert!(left >= 99_000, "the spool is left for the next start: {left}");
        let reopened = Spool::open(rig.dir.path(), SpoolLimits::new(64 << 20)).unwrap();
        assert_eq!(reopened.len(), left, "and is there after the restart");
    }

    /// Stop while a write never ends (a server that accepts and never answers): cut at
    /// `STOP_BOUND`, its records and those in memory go to the spool.
    #[tokio::test(start_paused = true)]
    async fn a_write_that_never_ends_is_cut_at_stop_and_its_records_spooled() {
        let rig = rig(Fake { hang: true, ..Fake::default() }, Durability::Outage, None);
        feed(&rig, 0..25, Duration::from_millis(10)).await;
        let t0 = Instant::now();
        drop(rig.tx);
        rig.task.await.unwrap();
        assert!(t0.elapsed() <= STOP_BOUND + Duration::from_millis(10), "stop took {:?}", t0.elapsed());
        let mut spool = Spool::open(rig.dir.path(), SpoolLimits::new(64 << 20)).unwrap();
        let mut kept: Vec<u64> = spool.read(100).unwrap().records.iter().map(id).collect();
        kept.sort_unstable();
        assert_eq!(kept, (0..25).collect::<Vec<_>>(), "the batch in the air and memory, kept");
    }

    /// `durability = "outage"` with a database that answers, slowly (30 s a write): what
    /// waits goes to the spool, so that only the write in flight and at most
    /// `flush_interval` of readings are ever only in memory; all arrive once in the end.
    #[tokio::test(start_paused = true)]
    async fn a_slow_database_leaves_at_most_flush_interval_of_readings_only_in_memory() {
        let fake = Fake { delay: Some(Duration::from_secs(30)), ..Fake::default() };
        let rig = rig(fake, Durability::Outage, None);
        // 10 readings a second: one flush_interval (1 s) holds 10, a batch holds 10.
        let mut worst = 0;
        for i in 0..600 {
            rig.tx.send(reading(i)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            worst = worst.max(only_in_memory(&rig, i + 1));
        }
        assert!(worst <= 20, "{worst} readings only in memory (a batch in flight and 1 s of readings)");
        assert!(rig.status.snapshot().disk_bytes_written > 0, "the rest waited in the spool");
        rig.fake.lock().unwrap().delay = None;
        tokio::time::sleep(Duration::from_secs(120)).await;
        let mut written = rig.fake.lock().unwrap().written.clone();
        written.sort_unstable();
        assert_eq!(written, (0..600).collect::<Vec<_>>(), "every reading once");
    }

    /// A spool segment that cannot be read (EIO; here one cut short behind pmtr's back, which
    /// fails the same read) is set aside as
    /// `*.damaged`, its records counted and a `SpoolError` sent; the rest is written.
    #[tokio::test(start_paused = true)]
    async fn an_unreadable_spool_segment_is_set_aside_counted_alerted_and_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let small = SpoolLimits { max_bytes: 64 << 20, segment_bytes: 1000 };
        {
            let mut spool = Spool::open(dir.path(), small).unwrap();
            for i in 0..40 {
                spool.append(&[reading(i)]).unwrap();
            }
        }
        let spool = Spool::open(dir.path(), small).unwrap();
        let mut rig = rig_on(Fake::default(), Durability::Outage, dir, spool);
        let mut segments: Vec<_> = std::fs::read_dir(rig.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        segments.sort();
        let first = segments[0].clone();
        let in_first: u64 =
            first.file_name().unwrap().to_str().unwrap().split('.').nth(1).unwrap().parse().unwrap();
        std::fs::OpenOptions::new().write(true).open(&first).unwrap().set_len(20).unwrap();
        feed(&rig, 100..105, Duration::from_millis(10)).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut written = rig.fake.lock().unwrap().written.clone();
        written.sort_unstable();
        let expected: Vec<u64> = (in_first..40).chain(100..105).collect();
        assert_eq!(written, expected, "everything but the unreadable segment");
        let s = rig.status.snapshot();
        assert_eq!((s.spool_unreadable, s.spool_readings), (in_first, 0));
        assert!(first.with_extension("damaged").exists(), "kept for a human");
        assert!(matches!(event(&mut rig.events), Ok(StoreEvent::SpoolError { .. })));
    }

    /// A spool that cannot be opened (read-only disk; here a file where its folder goes):
    /// the sink still writes from memory, reports, opens it once it can and spools again.
    #[tokio::test(start_paused = true)]
    async fn a_spool_that_cannot_be_opened_does_not_stop_the_writes_and_is_opened_later() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("spool");
        std::fs::write(&blocked, "in the way").unwrap();
        assert!(Spool::open(&blocked, SpoolLimits::new(64 << 20)).is_err());
        let spool = Spool::closed(&blocked, SpoolLimits::new(64 << 20));
        let mut rig = rig_on(Fake::default(), Durability::Outage, dir, spool);
        feed(&rig, 0..20, Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(rig.fake.lock().unwrap().written, (0..20).collect::<Vec<_>>(), "written from memory");
        std::fs::remove_file(&blocked).unwrap();
        tokio::time::sleep(SPOOL_REOPEN_EVERY).await;
        assert!(blocked.is_dir(), "opened again");
        rig.fake.lock().unwrap().then = Some(retry());
        feed(&rig, 20..30, Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(rig.status.snapshot().spool_readings, 10, "an outage is spooled again");
        assert!(matches!(event(&mut rig.events), Ok(StoreEvent::SpoolError { .. })), "reported");
    }

    /// Without a spool (it cannot be opened) and without a database, at most
    /// `5 × MEMORY_LIMIT` records wait in memory; beyond, the oldest are dropped and counted.
    #[tokio::test(start_paused = true)]
    async fn without_spool_or_database_memory_is_bounded_and_the_excess_counted() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("spool");
        std::fs::write(&blocked, "in the way").unwrap();
        let spool = Spool::closed(&blocked, SpoolLimits::new(64 << 20));
        let fake = Fake { then: Some(retry()), ..Fake::default() };
        let rig = rig_on(fake, Durability::Outage, dir, spool);
        let fed = MEMORY_LIMIT as u64 * 5 + 50;
        for i in 0..fed {
            rig.tx.send(reading(i)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = rig.status.snapshot();
        assert!(s.in_memory <= MEMORY_LIMIT as u64 * 5, "{} in memory", s.in_memory);
        assert!(s.spool_dropped >= 40, "the excess is counted: {}", s.spool_dropped);
        assert!(s.in_memory + s.spool_dropped + 10 >= fed, "all accounted for but a batch in flight");
    }
}

#[cfg(test)]
mod deciding {
    use super::*;

    fn facts() -> Facts {
        Facts {
            batch: 8,
            outage: None,
            failures: 2,
            max_backoff: Duration::from_secs(60),
            durability: Durability::Outage,
            stopping: false,
            random: 0.0,
        }
    }

    fn retry(after: Option<u64>) -> Result<(), WriteError> {
        Err(WriteError::Retry { message: "timeout".into(), after: after.map(Duration::from_secs) })
    }

    #[test]
    fn a_write_ends_the_outage_in_progress() {
        assert_eq!(decide(Ok(()), &facts()), Outcome::Written { over: None });
        let down = Facts { outage: Some("outage"), ..facts() };
        assert_eq!(decide(Ok(()), &down), Outcome::Written { over: Some("outage") });
    }

    #[test]
    fn too_large_halves_the_batch_down_to_one_record_then_sets_it_aside() {
        assert_eq!(decide(Err(WriteError::TooLarge), &facts()), Outcome::Halve { batch: 4 });
        assert_eq!(
            decide(Err(WriteError::TooLarge), &Facts { batch: 3, ..facts() }),
            Outcome::Halve { batch: 1 }
        );
        assert_eq!(
            decide(Err(WriteError::TooLarge), &Facts { batch: 1, ..facts() }),
            Outcome::SetAside { message: "a single record is too large".into() }
        );
        let rejected = Err(WriteError::Rejected { message: "bad field".into() });
        assert_eq!(decide(rejected, &facts()), Outcome::SetAside { message: "bad field".into() });
    }

    #[test]
    fn the_first_failure_starts_an_outage_and_backs_off_with_jitter() {
        // Two failures so far: the third waits 4 s (1 s doubled twice), drawn at its lowest half.
        let Outcome::Failed { message, starts, wait, failures, spool_memory } = decide(retry(None), &facts())
        else {
            panic!("a failure")
        };
        assert_eq!((message.as_str(), starts), ("timeout", Some(Outage::Down)));
        assert_eq!((wait, failures), (Duration::from_secs(2), 3), "half of 4 s; one failure more");
        let next = sink_backoff(Duration::from_secs(60)).delay(failures + 1);
        assert_eq!(next, Duration::from_secs(8), "doubled");
        assert!(spool_memory);
        let top = Facts { random: 1.0, ..facts() };
        let Outcome::Failed { wait, .. } = decide(retry(None), &top) else { panic!("a failure") };
        assert_eq!(wait, Duration::from_secs(4), "at most the whole back-off");
        let again = Facts { outage: Some("outage"), failures: 6, random: 1.0, ..facts() };
        let Outcome::Failed { starts, wait, .. } = decide(retry(None), &again) else { panic!("a failure") };
        assert_eq!((starts, wait), (None, Duration::from_secs(60)), "no second start; capped at max_backoff");
    }

    #[test]
    fn retry_after_and_refusals_wait_as_told_capped_at_five_max_backoffs() {
        let Outcome::Failed { wait, failures, .. } = decide(retry(Some(30)), &facts()) else { panic!() };
        assert_eq!((wait, failures), (Duration::from_secs(30), 2), "the back-off does not grow");
        let Outcome::Failed { wait, .. } = decide(retry(Some(3600)), &facts()) else { panic!() };
        assert_eq!(wait, Duration::from_secs(300));
        let refused = Err(WriteError::Refused { message: "bad token".into() });
        let Outcome::Failed { message, starts, wait, .. } = decide(refused, &facts()) else { panic!() };
        assert_eq!(
            (message.as_str(), starts, wait),
            ("refused: bad token", Some(Outage::Refused), Duration::from_secs(300))
        );
    }

    #[test]
    fn a_stop_keeps_memory_out_of_the_spool_unless_durability_is_always() {
        let stopping = Facts { stopping: true, ..facts() };
        assert!(matches!(decide(retry(None), &stopping), Outcome::Failed { spool_memory: false, .. }));
        let always = Facts { durability: Durability::Always, ..stopping };
        assert!(matches!(decide(retry(None), &always), Outcome::Failed { spool_memory: true, .. }));
    }
}
