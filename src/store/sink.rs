//! One sink's loop: batches readings in memory, writes them, spools what cannot be written,
//! replays the spool, and decides what each failure means.
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
//! - **Database slower than the meters**: more than `MEMORY_LIMIT` readings waiting in memory
//!   go to the spool.
//! - **Back**: the spool is replayed oldest first in batches, between the live batches (which
//!   go first, so dashboards stay current).
//! - **The server refuses the request** (401, 403, 404: token, organisation, bucket or
//!   database wrong): logged as an error once, everything is kept in the spool, and the write
//!   is tried again every `5 × max_backoff`, never in a loop. Fixing the config and restarting
//!   sends it all.
//! - **The server refuses the points** (400, 422: malformed, type conflict): they can never be
//!   written; they are set aside in `<spool>/rejected.txt` (line protocol, for a human),
//!   counted, and the rest goes on.
//! - **Too large** (413): the batch size is halved.
//! - **Stop** (SIGTERM): the write in flight is awaited, what is in memory is written once more
//!   or spooled, the spool is synced.

use super::spool::{Cursor, Spool};
use super::{SinkState, SinkStatus, StoreEvent};
use crate::reading::Reading;
use rand::Rng;
use std::collections::VecDeque;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

/// Readings held in memory before a slow database makes them go to the spool.
pub const MEMORY_LIMIT: usize = 20_000;
/// Rejected points kept for a human, at most.
const REJECTED_MAX_BYTES: u64 = 16 << 20;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

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
    fn write(&mut self, batch: &[Reading]) -> WriteFuture;
    /// The batch as text for `rejected.txt`.
    fn render(&self, batch: &[Reading]) -> String;
    /// Points in a batch (InfluxDB: one per phase of each reading).
    fn points(&self, batch: &[Reading]) -> usize {
        batch.iter().map(super::schema::point_count).sum()
    }
}

/// When readings touch the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Only while the database is away or behind. A power cut loses what waits in memory
    /// (at most `flush_interval` of readings).
    Outage,
    /// Every reading is appended to the spool before it is sent: a power cut loses at most
    /// `sync_interval`, at the price of a disk write per reading.
    Always,
}

#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub name: String,
    /// Readings per write.
    pub batch: usize,
    pub flush_interval: Duration,
    pub durability: Durability,
    /// How often spool appends are made durable with fsync.
    pub sync_interval: Duration,
    pub max_backoff: Duration,
}

enum Source {
    Memory(Vec<Reading>),
    Spool(Cursor),
}

struct Flight {
    source: Source,
    readings: usize,
    points: usize,
    future: WriteFuture,
}

/// The state of one running sink.
pub struct Sink {
    writer: Box<dyn Writer>,
    spool: Spool,
    opts: SinkOptions,
    status: Arc<SinkStatus>,
    events: broadcast::Sender<StoreEvent>,
    memory: VecDeque<Reading>,
    flush_at: Option<Instant>,
    sync_at: Option<Instant>,
    /// Set while the database is failing: when to try again.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The error kind that made the sink stop writing, logged once.
    outage: Option<&'static str>,
    batch: usize,
    rejected_since_log: u64,
    rejected_logged_at: Option<Instant>,
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
            backoff: FIRST_BACKOFF,
            outage: None,
            batch,
            rejected_since_log: 0,
            rejected_logged_at: None,
        };
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

    /// Runs until `rx` closes (the buses stopped), then flushes or spools what is left.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Reading>) {
        let mut flight: Option<Flight> = None;
        let mut open = true;
        loop {
            let now = Instant::now();
            if flight.is_none() {
                flight = self.next_flight(now, !open);
            }
            if !open && flight.is_none() {
                break;
            }
            let wake = self.next_wake(flight.is_some());
            tokio::select! {
                r = rx.recv(), if open => match r {
                    Some(r) => self.accept(r),
                    None => {
                        open = false;
                        if let Some(t) = self.flush_at.as_mut() { *t = now; }
                    }
                },
                result = async { flight.as_mut().expect("guarded").future.as_mut().await }, if flight.is_some() => {
                    let f = flight.take().expect("guarded");
                    self.finish(f, result, !open);
                }
                _ = sleep_until(wake) => {}
            }
            if self.sync_at.is_some_and(|t| t <= Instant::now()) {
                self.sync();
            }
            self.publish();
        }
        // Shut down: what is still in memory goes to the spool.
        let rest: Vec<Reading> = self.memory.drain(..).collect();
        self.spool_readings(&rest);
        self.sync();
        self.publish();
        tracing::debug!(sink = %self.opts.name, spooled = self.spool.len(), "sink stopped");
    }

    fn next_wake(&self, flying: bool) -> Option<Instant> {
        let mut wake: Option<Instant> = self.sync_at;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        if !flying {
            match self.retry_at {
                Some(t) => consider(Some(t)),
                None => consider(self.flush_at),
            }
        }
        wake
    }

    fn accept(&mut self, r: Reading) {
        let down = self.retry_at.is_some();
        if self.opts.durability == Durability::Always || down {
            self.spool_readings(std::slice::from_ref(&r));
            if self.flush_at.is_none() {
                self.flush_at = Some(Instant::now() + self.opts.flush_interval);
            }
            return;
        }
        self.memory.push_back(r);
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + self.opts.flush_interval);
        }
        if self.memory.len() > MEMORY_LIMIT {
            tracing::debug!(sink = %self.opts.name, "database slower than the meters: spooling");
            let all: Vec<Reading> = self.memory.drain(..).collect();
            self.spool_readings(&all);
        }
    }

    /// What to write next, if anything is due.
    fn next_flight(&mut self, now: Instant, stopping: bool) -> Option<Flight> {
        if let Some(t) = self.retry_at {
            if t > now {
                return None;
            }
            if stopping {
                return None; // do not wait for a database that is away
            }
        }
        let down = self.retry_at.is_some();
        let due = self.flush_at.is_some_and(|t| t <= now) || self.memory.len() >= self.batch;
        if !down && !self.memory.is_empty() && due {
            let n = self.memory.len().min(self.batch);
            let batch: Vec<Reading> = self.memory.drain(..n).collect();
            if self.memory.is_empty() {
                self.flush_at = None;
            }
            let future = self.writer.write(&batch);
            return Some(Flight {
                readings: batch.len(),
                points: self.writer.points(&batch),
                source: Source::Memory(batch),
                future,
            });
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
            && !stopping
            && (self.spool.len() as usize) < self.batch
            && self.flush_at.is_some_and(|t| t > now)
        {
            return None;
        }
        match self.spool.read(self.batch) {
            Ok(b) => {
                let end = b.end?;
                if b.readings.is_empty() {
                    // Only damaged bytes: step over them.
                    if let Err(e) = self.spool.commit(end) {
                        self.spool_error("cannot move the spool cursor", &e);
                    }
                    return None;
                }
                if self.spool.is_empty() || self.spool.len() as usize <= b.readings.len() {
                    self.flush_at = None;
                }
                let future = self.writer.write(&b.readings);
                Some(Flight {
                    readings: b.readings.len(),
                    points: self.writer.points(&b.readings),
                    source: Source::Spool(end),
                    future,
                })
            }
            Err(e) => {
                self.spool_error("cannot read the spool", &e);
                self.retry_at = Some(now + self.opts.max_backoff);
                None
            }
        }
    }

    fn finish(&mut self, f: Flight, result: Result<(), WriteError>, stopping: bool) {
        let now = Instant::now();
        match result {
            Ok(()) => {
                if let Source::Spool(end) = f.source {
                    if let Err(e) = self.spool.commit(end) {
                        self.spool_error("cannot move the spool cursor", &e);
                    }
                }
                {
                    let mut s = self.status.lock();
                    s.readings_written += f.readings as u64;
                    s.points_written += f.points as u64;
                    s.last_write = Some(chrono::Utc::now());
                }
                if let Some(kind) = self.outage.take() {
                    let spooled = self.spool.len();
                    tracing::info!(sink = %self.opts.name, target = %self.writer.target(), spooled,
                        "{} again ({kind} is over); replaying the spool", self.writer.kind());
                    let _ = self.events.send(StoreEvent::Back { sink: self.opts.name.clone(), spooled });
                }
                self.retry_at = None;
                self.backoff = FIRST_BACKOFF;
            }
            Err(WriteError::TooLarge) if self.batch > 1 => {
                self.batch = (self.batch / 2).max(1);
                tracing::warn!(sink = %self.opts.name, batch = self.batch,
                    "the server found the request too large: batch size lowered");
                self.put_back(f.source);
            }
            Err(WriteError::TooLarge) => {
                let e = WriteError::Rejected { message: "a single reading is too large".into() };
                self.finish(Flight { future: Box::pin(async { Ok(()) }), ..f }, Err(e), stopping);
            }
            Err(WriteError::Rejected { message }) => {
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
            Err(e) => {
                let refused = matches!(e, WriteError::Refused { .. });
                let kind = if refused { "refusal" } else { "outage" };
                let message = e.to_string();
                self.status.lock().last_error = Some((chrono::Utc::now(), message.clone()));
                if self.outage.is_none() {
                    self.outage = Some(kind);
                    if refused {
                        tracing::error!(sink = %self.opts.name, target = %self.writer.target(),
                            "{} {message}. Check the sink's settings (token, org, bucket, database) and \
                             restart; readings are kept in the spool at {}, tried again every {:?}",
                            self.writer.kind(), self.spool.dir().display(), self.opts.max_backoff * 5);
                        let _ = self.events.send(StoreEvent::Refused { sink: self.opts.name.clone(), error: message });
                    } else {
                        tracing::warn!(sink = %self.opts.name, target = %self.writer.target(),
                            "cannot write to {}: {message}; readings go to the spool at {} until it is back",
                            self.writer.kind(), self.spool.dir().display());
                        let _ = self.events.send(StoreEvent::Down { sink: self.opts.name.clone(), error: message });
                    }
                } else {
                    tracing::debug!(sink = %self.opts.name, "write failed again: {message}");
                }
                let wait = match e {
                    WriteError::Refused { .. } => self.opts.max_backoff * 5,
                    WriteError::Retry { after: Some(after), .. } => after.min(self.opts.max_backoff * 5),
                    _ => {
                        let b = self.backoff;
                        self.backoff = (self.backoff * 2).min(self.opts.max_backoff);
                        b.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
                    }
                };
                self.retry_at = Some(now + wait);
                if let Source::Memory(batch) = f.source {
                    self.spool_readings(&batch);
                }
                if !stopping || self.opts.durability == Durability::Always {
                    let rest: Vec<Reading> = self.memory.drain(..).collect();
                    self.spool_readings(&rest);
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

    /// Appends to the spool. When the disk refuses, the readings stay in memory (up to a
    /// limit) and the error is reported.
    fn spool_readings(&mut self, readings: &[Reading]) {
        if readings.is_empty() {
            return;
        }
        match self.spool.append(readings) {
            Ok(dropped) => {
                if dropped > 0 {
                    tracing::warn!(sink = %self.opts.name, dropped, total_dropped = self.spool.dropped,
                        "spool full: the oldest readings were dropped (raise spool_max?)");
                    let _ = self.events.send(StoreEvent::Dropped { sink: self.opts.name.clone(), readings: dropped });
                }
                if self.sync_at.is_none() {
                    self.sync_at = Some(Instant::now() + self.opts.sync_interval);
                }
            }
            Err(e) => {
                self.spool_error("cannot append to the spool", &e);
                for r in readings {
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

    fn spool_error(&mut self, what: &str, e: &std::io::Error) {
        let message = format!("{what} at {}: {e}", self.spool.dir().display());
        tracing::error!(sink = %self.opts.name, "{message}");
        self.status.lock().last_error = Some((chrono::Utc::now(), message.clone()));
        let _ = self.events.send(StoreEvent::SpoolError { sink: self.opts.name.clone(), error: message });
    }

    fn set_aside(&mut self, memory_batch: &[Reading], f: &Flight, message: &str) {
        let text = if memory_batch.is_empty() {
            // The batch came from the spool and is still there (not committed yet).
            match self.spool.read(f.readings) {
                Ok(b) => self.writer.render(&b.readings),
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
        self.status.lock().rejected += f.readings as u64;
        self.rejected_since_log += f.readings as u64;
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

    fn publish(&mut self) {
        let oldest_memory = self.memory.front().map(|r| r.time);
        let oldest_spool = self.spool.oldest();
        let mut s = self.status.lock();
        let state: &mut SinkState = &mut s;
        state.healthy = self.retry_at.is_none();
        state.in_memory = self.memory.len() as u64;
        state.spool_readings = self.spool.len();
        state.spool_bytes = self.spool.bytes();
        state.spool_dropped = self.spool.dropped;
        state.disk_bytes_written = self.spool.bytes_written;
        state.oldest_unsent = match (oldest_memory, oldest_spool) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
