//! The alert task: events in (trigger and relay changes, storage events, the meters' state
//! events, an unclean stop), the policy, the on-disk queue, and a sender that never blocks anything
//! else: polling and relays do not wait for mail, and an unreachable server is retried with
//! back-off while the queue (bounded, on disk) keeps what waits.

use super::email::{Mailer, SendError};
use super::events;
use super::policy::{render, Alert, AlertKind, Limits, Policy};
use super::queue::{off_runtime, Queue};
use super::watch::{MeterWatch, StorageWatch};
use crate::backoff::Backoff;
use crate::bus::status::{MeterEvent, MeterState, StatusBoard};
use crate::config::{Alerts, Config, EmailSettings};
use crate::reading::StateChange;
use crate::store::{SinkStatus, StoreEvent};
use crate::sync::Locked;
use chrono::Utc;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch, Notify};
use tokio::time::Instant;

/// The first wait after a failed send; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Where alerts come from.
pub struct Sources {
    pub changes: Option<broadcast::Receiver<StateChange>>,
    pub store: broadcast::Receiver<StoreEvent>,
    /// The sinks, read once at the start (and after missed storage events) for their spool's
    /// size; then [`StoreEvent::Spool`] tells each change.
    pub sinks: Vec<Arc<SinkStatus>>,
    /// The meters: read once at the start (and after missed events), then followed through
    /// their state events.
    pub meters: Arc<StatusBoard>,
    /// The previous run did not stop cleanly.
    pub unclean: bool,
}

/// Counters of the alert task (for status pages).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertCounters {
    pub alerts: u64,
    pub mails_queued: u64,
    pub mails_sent: u64,
    /// Refused for good by the server (logged).
    pub mails_refused: u64,
    /// Dropped from a full queue.
    pub mails_dropped: u64,
}

/// The running alert task.
pub struct Alerting {
    pub counters: Arc<Mutex<AlertCounters>>,
    task: tokio::task::JoinHandle<()>,
    sender: tokio::task::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("alert mail: {0}")]
    Mailer(#[from] super::email::EmailError),
    #[error("alert queue {dir}: {error}")]
    Queue { dir: PathBuf, error: std::io::Error },
}

/// The marker of a run in progress: present at start means the last run did not stop cleanly.
pub fn running_marker(config: &Config) -> PathBuf {
    config.gateway.state_dir.join("running")
}

impl Alerting {
    /// Starts the alert task and its sender. Stops when `stop` turns true: alerts still inside
    /// their digest window are queued (and sent at the next start if not now).
    pub fn start(
        config: &Config,
        email: &EmailSettings,
        sources: Sources,
        stop: watch::Receiver<bool>,
    ) -> Result<Alerting, StartError> {
        let mailer = Mailer::new(email)?;
        let dir = config.gateway.state_dir.join("alerts");
        let (queue, warnings) = Queue::open(&dir, config.alerts.queue_max)
            .map_err(|error| StartError::Queue { dir: dir.clone(), error })?;
        for w in warnings {
            tracing::warn!("alert queue: {w}");
        }
        if !queue.is_empty() {
            tracing::info!(waiting = queue.len(), "alert mails from the previous run are waiting to be sent");
        }
        let queue = Arc::new(Mutex::new(queue));
        let wake = Arc::new(Notify::new());
        let counters = Arc::new(Mutex::new(AlertCounters::default()));
        let sender =
            tokio::spawn(send_loop(mailer, queue.clone(), wake.clone(), counters.clone(), stop.clone()));
        let producer = Producer {
            settings: config.alerts.clone(),
            to: email.to.clone(),
            gateway: config.gateway.name.clone(),
            trigger_alerts: config.triggers.iter().map(|t| (t.name.clone(), t.alert)).collect(),
            spool_max: config.sinks.iter().map(|s| (s.name.clone(), s.spool_max)).collect(),
            policies: HashMap::new(),
            queue,
            pending: Vec::new(),
            wake,
            counters: counters.clone(),
            origin: Instant::now(),
        };
        let task = tokio::spawn(producer.run(sources, stop));
        Ok(Alerting { counters, task, sender })
    }

    pub async fn join(self) {
        let _ = self.task.await;
        let _ = self.sender.await;
    }
}

struct Producer {
    settings: Alerts,
    to: Vec<String>,
    gateway: String,
    trigger_alerts: HashMap<String, bool>,
    spool_max: HashMap<String, u64>,
    /// One policy per set of recipients: a digest goes to the people of its alerts.
    policies: HashMap<Vec<String>, Policy>,
    queue: Arc<Mutex<Queue>>,
    /// Mails due, waiting for [`Producer::write_pending`] to put them in the queue.
    pending: Vec<(Vec<String>, String, String)>,
    wake: Arc<Notify>,
    counters: Arc<Mutex<AlertCounters>>,
    origin: Instant,
}

impl Producer {
    async fn run(mut self, mut s: Sources, mut stop: watch::Receiver<bool>) {
        let mut storage = StorageWatch::new(self.settings.database_after, self.settings.spool_mark);
        let mut meters = MeterWatch::new(self.settings.meter_after);
        let mut meter_events = s.meters.subscribe();
        let mut meters_open = true;
        // Where the events start from: the board and the sinks as they are now.
        for e in s.meters.events_now() {
            self.meter_event(&mut meters, &e);
        }
        let mut spools = spool_sizes(&s.sinks);
        if s.unclean {
            self.push(Alert {
                kind: AlertKind::UncleanStop,
                time: Utc::now(),
                subject: String::new(),
                summary: "pmtr started after an unclean stop (a crash, a kill or a power cut)".into(),
                details: vec![(
                    "what was kept".into(),
                    "latched and tripped triggers, forced relays and spooled readings were restored".into(),
                )],
            });
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut changes_open = s.changes.is_some();
        let mut store_open = true;
        loop {
            tokio::select! {
                c = async { s.changes.as_mut().expect("open").recv().await }, if changes_open => match c {
                    Ok(c) => {
                        let alerts = self.trigger_alerts.get(&*c.name).copied().unwrap_or(true);
                        if let Some(a) = events::from_change(&c, alerts) {
                            self.push(a);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("the alert task missed {n} trigger and relay changes (too many at once)");
                    }
                    Err(broadcast::error::RecvError::Closed) => changes_open = false,
                },
                e = s.store.recv(), if store_open => match e {
                    Ok(StoreEvent::Spool { sink, bytes }) => {
                        spools.insert(sink, bytes);
                    }
                    Ok(e) => {
                        for a in storage.event(&e, self.mono(), Utc::now()) {
                            self.push(a);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("the alert task missed {n} storage events");
                        // The spools' sizes, read once, are right again.
                        spools = spool_sizes(&s.sinks);
                    }
                    Err(broadcast::error::RecvError::Closed) => store_open = false,
                },
                e = meter_events.recv(), if meters_open => match e {
                    Ok(e) => self.meter_event(&mut meters, &e),
                    // Changes were missed: the board, read once, says where every meter is now.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for e in s.meters.events_now() {
                            self.meter_event(&mut meters, &e);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => meters_open = false,
                },
                // No snapshot is read here: the tick works on what the events told.
                _ = tick.tick() => self.tick(&mut storage, &mut meters, &spools),
                _ = stop.changed() => break,
            }
            self.write_pending().await;
        }
        // Whatever waits in a digest window goes to the queue now: nothing is lost at a stop.
        self.flush(true);
        self.write_pending().await;
    }

    /// The time-based part of the policy (down or silent for long enough, spool marks, digest
    /// windows), on what the events told.
    fn tick(&mut self, storage: &mut StorageWatch, meters: &mut MeterWatch, spools: &BTreeMap<String, u64>) {
        let now = self.mono();
        let wall = Utc::now();
        let fill = spools.iter().map(|(n, b)| (n.as_str(), *b, self.spool_max.get(n).copied().unwrap_or(0)));
        let alerts = storage.tick(now, wall, fill);
        for a in alerts.into_iter().chain(meters.tick(now, wall)) {
            self.push(a);
        }
        self.flush(false);
    }

    fn meter_event(&mut self, meters: &mut MeterWatch, e: &MeterEvent) {
        let ok = e.state == MeterState::Ok;
        for a in meters.event(&e.meter, ok, e.last_error.as_deref(), self.mono(), Utc::now()) {
            self.push(a);
        }
    }

    fn mono(&self) -> Duration {
        self.origin.elapsed()
    }

    fn push(&mut self, a: Alert) {
        if !self.settings.kinds.contains(&a.kind) {
            return;
        }
        tracing::info!(kind = a.kind.name(), "alert: {}", a.summary);
        self.counters.locked().alerts += 1;
        let to = self.settings.recipients(a.kind, &self.to).to_vec();
        let limits = Limits {
            digest: self.settings.digest,
            min_interval: self.settings.min_interval,
            per_hour: self.settings.max_per_hour,
        };
        let now = self.mono();
        self.policies.entry(to).or_insert_with(|| Policy::new(limits)).push(a, now);
        if self.settings.digest.is_zero() {
            self.flush(false);
        }
    }

    /// Takes the digests that are due (all of them when `all`) for [`Producer::write_pending`].
    fn flush(&mut self, all: bool) {
        let now = self.mono();
        let offset = *chrono::Local::now().offset();
        for (to, policy) in &mut self.policies {
            let at = if all { policy.next_due().map_or(now, |d| d.max(now)) } else { now };
            let Some(d) = policy.due(at) else { continue };
            let (subject, body) = render(&d, &self.gateway, "", offset);
            self.pending.push((to.clone(), subject, body));
        }
    }

    /// Writes the mails due to the queue (a file and an fsync each) on a blocking thread.
    async fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mails = std::mem::take(&mut self.pending);
        let counters = self.counters.clone();
        let queued = off_runtime(&self.queue, move |q| {
            let mut queued = false;
            for (to, subject, body) in mails {
                let mut c = counters.locked();
                match q.push(to, subject, body, Utc::now()) {
                    Ok(dropped) => {
                        c.mails_queued += 1;
                        if let Some(m) = dropped {
                            c.mails_dropped += 1;
                            tracing::warn!(subject = %m.subject, "the alert queue is full: its oldest mail was dropped");
                        }
                        queued = true;
                    }
                    Err(e) => tracing::error!(error = %e, "cannot queue an alert mail"),
                }
            }
            queued
        })
        .await;
        if queued == Some(true) {
            self.wake.notify_one();
        }
    }
}

/// Each sink's spool size now, by name.
fn spool_sizes(sinks: &[Arc<SinkStatus>]) -> BTreeMap<String, u64> {
    sinks.iter().map(|k| (k.name.clone(), k.snapshot().spool_bytes)).collect()
}

/// Sends the queue's mails in order; waits with back-off while the server is unreachable.
async fn send_loop(
    mailer: Mailer,
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    counters: Arc<Mutex<AlertCounters>>,
    mut stop: watch::Receiver<bool>,
) {
    let backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut failures = 0u32;
    loop {
        let next = off_runtime(&queue, |q| q.front().cloned()).await.flatten();
        let Some(m) = next else {
            tokio::select! {
                _ = wake.notified() => continue,
                _ = stop.changed() => return,
            }
        };
        let result = tokio::select! {
            r = mailer.send(&m.to, &m.subject, &m.body) => r,
            _ = stop.changed() => return,
        };
        match result {
            Ok(()) => {
                failures = 0;
                tracing::info!(subject = %m.subject, to = ?m.to, "alert mail sent");
                counters.locked().mails_sent += 1;
                if let Some(Err(e)) = off_runtime(&queue, |q| q.pop_front()).await {
                    tracing::error!(error = %e, "cannot remove a sent alert mail from the queue: it may go twice");
                }
            }
            Err(e @ SendError::Permanent { .. }) => {
                tracing::error!(error = %e, subject = %m.subject,
                    "the mail server refused an alert mail for good; it is dropped (check with `pmtr test-email`)");
                counters.locked().mails_refused += 1;
                let _ = off_runtime(&queue, |q| q.pop_front()).await;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = backoff.delay(failures);
                tracing::warn!(error = %e, retry_in = ?wait, "alert mail not sent; it waits in the queue");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::status::MeterStatus;

    /// A meter's silence and return reach the alerts as the board's events, the silence once
    /// `meter_after` has passed since it stopped answering, each once (tokio's paused clock).
    #[tokio::test(start_paused = true)]
    async fn a_meter_silent_for_meter_after_and_back_are_told_by_the_board() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::load_str(
            "[[bus]]\nname = \"b\"\nport = \"/dev/null\"\n[[meter]]\nname = \"m\"\nmodel = \"pzem-016\"\naddress = 4\n\
             [alerts.email]\nhost = \"127.0.0.1\"\nport = 1\nfrom = \"pmtr@example.org\"\nto = [\"me@example.org\"]\n",
            "t.toml",
        )
        .unwrap();
        config.gateway.state_dir = dir.path().to_owned();
        config.alerts.digest = Duration::ZERO;
        let email = config.email.clone().expect("[alerts.email]");
        let board = Arc::new(StatusBoard::default());
        board.register("m", MeterStatus::searching("b".into(), 4, crate::meter::Model::Pzem016));
        board.update("m", |s| s.state = MeterState::Ok);
        let (_store_tx, store) = broadcast::channel(16);
        let (stop_tx, stop) = watch::channel(false);
        let sources =
            Sources { changes: None, store, sinks: Vec::new(), meters: board.clone(), unclean: false };
        let alerting = Alerting::start(&config, &email, sources, stop).unwrap();
        let alerts = || alerting.counters.locked().alerts;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(alerts(), 0, "answering");
        board.update("m", |s| {
            s.state = MeterState::Failing;
            s.last_error = Some("timeout".into());
        });
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(alerts(), 0, "not yet meter_after");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(alerts(), 1, "silent");
        board.update("m", |s| s.state = MeterState::Searching);
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert_eq!(alerts(), 1, "once");
        board.update("m", |s| s.state = MeterState::Ok);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(alerts(), 2, "back");
        stop_tx.send(true).unwrap();
        alerting.join().await;
    }
}
