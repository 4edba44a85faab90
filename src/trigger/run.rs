//! The shell around the [`Engine`]: one task owns the engine and the relays; readings, a
//! one-second tick and control commands come in; relay writes, state changes (log, storage,
//! alerts) and the saved-state file go out.
//!
//! What happens to a relay on every path:
//!
//! | path | relay |
//! |---|---|
//! | start | claimed at the level the saved state gives (a latched or tripped trigger, a force), else its `default`: before the first reading, with no glitch |
//! | reading | switched when a trigger trips or releases (after `hold` / `recovery`) |
//! | stale data | per trigger `on_stale`: hold (default), trip or release; a latch is never released |
//! | manual | `pmtr relay force/release`, `pmtr trigger reset`: at once, logged with the caller |
//! | stop (SIGTERM) | `on_shutdown`: hold (default) keeps the level, default drives the default level |
//! | crash, kill -9, power kept | the pin keeps its level; the next start restores the saved state |
//! | config change | takes effect at the next start, with the saved state restored by trigger name |

use super::engine::{Engine, Now, Output};
use super::saved::{self, Loaded, Saved, SavedTrigger};
use crate::config::{Config, OnShutdown};
use crate::control::{Command, Request, Response};
use crate::reading::{ChangeEvent, Reading, Record, StateChange, Subject};
use crate::relay::{bank::RelayBank, Gpio, Level, RelayError};
use crate::store::Intake;
use chrono::Utc;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

/// The longest a force may be given for: a year.
const MAX_FORCE_SECONDS: u64 = 366 * 86_400;

/// Why the triggers could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("relays: {0}")]
    Relay(#[from] RelayError),
}

/// The running trigger task.
pub struct Triggers {
    /// Every reading goes here, as soon as it arrives.
    pub readings: mpsc::Sender<Reading>,
    /// Control commands (from the control socket).
    pub commands: mpsc::Sender<Command>,
    /// Every state change, for the alerts.
    pub events: broadcast::Sender<StateChange>,
    task: tokio::task::JoinHandle<()>,
    /// Set by [`Triggers::hand_over`]: the relays stay as they are for the next configuration.
    handover: Arc<AtomicBool>,
}

struct Shell {
    engine: Engine,
    bank: RelayBank,
    on_shutdown: Vec<(OnShutdown, Level)>,
    /// Storage's intake: never waits (a full queue drops, counted and logged), so that no
    /// relay waits on a disk or a database.
    store: Intake,
    events: broadcast::Sender<StateChange>,
    saved_path: PathBuf,
    /// The newest state to save; the saver task writes it off the trigger task, so that a
    /// slow SD card never delays a relay.
    saver: Option<watch::Sender<Saved>>,
    origin: Instant,
    /// Pass each reading on to storage after the triggers have seen it (`pmtr run`: the
    /// trigger task is where readings arrive, so no extra hop stands before a relay).
    forward: bool,
    log_readings: bool,
    handover: Arc<AtomicBool>,
}

impl Triggers {
    /// Restores the saved state, claims every relay at the level it gives (before any
    /// reading), and starts the task. Changes go to `store` and to [`Triggers::events`]; with
    /// `forward`, so does every reading, once the triggers have seen it.
    pub fn start(
        config: &Config,
        gpio: &mut dyn Gpio,
        store: impl Into<Intake>,
        forward: bool,
    ) -> Result<Triggers, StartError> {
        let store = store.into();
        let origin = Instant::now();
        let mut engine = Engine::new(config, Duration::ZERO).map_err(StartError::Config)?;
        let saved_path = saved::path_in(&config.gateway.state_dir);
        let saved = match saved::load(&saved_path) {
            Loaded::Found(s) => s,
            Loaded::Missing => Saved::default(),
            Loaded::Damaged { error, moved_to } => {
                // Nothing says which latches were set: every latching trigger starts latched,
                // so that a damaged file never releases a protection.
                tracing::error!(file = %saved_path.display(), error = %error,
                    moved_to = ?moved_to.as_ref().map(|p| p.display().to_string()),
                    "the saved trigger state is unreadable: every latching trigger starts latched; \
                     reset them with `pmtr trigger reset NAME` once checked");
                let mut s = Saved::default();
                for t in config.triggers.iter().filter(|t| t.latch) {
                    s.triggers.insert(
                        t.name.clone(),
                        SavedTrigger { latched: true, since: Utc::now(), when: t.when.clone() },
                    );
                }
                s
            }
        };
        let now = now(origin);
        let restored = engine.restore(&saved, now);
        let levels: Vec<(&str, Level)> =
            config.relays.iter().enumerate().map(|(i, r)| (r.name.as_str(), engine.relay_level(i))).collect();
        let bank = RelayBank::open(&config.relays, gpio, |r| {
            levels.iter().find(|(n, _)| *n == r.name).map_or(r.default, |(_, l)| *l)
        })?;
        let (readings_tx, readings) = mpsc::channel(1024);
        let (commands_tx, commands) = mpsc::channel(16);
        let (events, _) = broadcast::channel(256);
        let (saver, saver_rx) = watch::channel(engine.saved());
        let handover = Arc::new(AtomicBool::new(false));
        let saver_task = tokio::spawn(save_each(saved_path.clone(), saver_rx));
        let shell = Shell {
            saver: Some(saver),
            forward,
            log_readings: config.gateway.log_readings,
            engine,
            bank,
            on_shutdown: config.relays.iter().map(|r| (r.on_shutdown, r.default)).collect(),
            store,
            events: events.clone(),
            saved_path,
            origin,
            handover: handover.clone(),
        };
        let task = tokio::spawn(shell.run(restored, readings, commands, saver_task));
        Ok(Triggers { readings: readings_tx, commands: commands_tx, events, task, handover })
    }

    /// Waits until the task has stopped (after the readings channel closed): relays set per
    /// `on_shutdown`, state saved.
    pub async fn join(self) {
        let Triggers { readings, commands, task, .. } = self;
        drop(readings);
        drop(commands);
        let _ = task.await;
    }

    /// Stops as [`Triggers::join`] does, but for a configuration reload: the state is saved and
    /// every relay keeps its level whatever its `on_shutdown`, for the next configuration to
    /// claim from the saved state.
    pub async fn hand_over(self) {
        self.handover.store(true, Ordering::SeqCst);
        self.join().await
    }
}

/// Writes each new saved state (the newest only, when several came while writing).
async fn save_each(path: PathBuf, mut rx: watch::Receiver<Saved>) {
    while rx.changed().await.is_ok() {
        let s = rx.borrow_and_update().clone();
        let p = path.clone();
        match tokio::task::spawn_blocking(move || saved::save(&p, &s)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(file = %path.display(), error = %e,
                "cannot save the trigger state: a restart now would not restore it"),
            Err(e) => tracing::error!(error = %e, "the trigger state saver failed"),
        }
    }
}

/// The time now; `offset` is the local time's offset from UTC (looked up once a second, not
/// per reading: the lookup costs more than a whole evaluation).
fn now_at(origin: Instant, offset: chrono::FixedOffset) -> Now {
    let wall = Utc::now();
    Now { mono: origin.elapsed(), wall, local: wall.with_timezone(&offset).naive_local() }
}

fn local_offset() -> chrono::FixedOffset {
    *chrono::Local::now().offset()
}

fn now(origin: Instant) -> Now {
    now_at(origin, local_offset())
}

impl Shell {
    async fn run(
        mut self,
        restored: Output,
        mut readings: mpsc::Receiver<Reading>,
        mut commands: mpsc::Receiver<Command>,
        saver: tokio::task::JoinHandle<()>,
    ) {
        self.apply(restored).await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut commands_open = true;
        let mut offset = local_offset();
        loop {
            tokio::select! {
                biased;
                r = readings.recv() => match r {
                    Some(r) => {
                        let out = self.engine.on_reading(&r, now_at(self.origin, offset));
                        if !out.is_empty() {
                            self.apply(out).await;
                        }
                        if self.forward {
                            if self.log_readings {
                                tracing::info!("{r}");
                            }
                            if self.store.offer(Record::Reading(r)).is_err() {
                                tracing::error!("storage stopped: readings are no longer written");
                            }
                        }
                    }
                    None => break,
                },
                c = commands.recv(), if commands_open => match c {
                    Some(c) => self.command(c).await,
                    None => commands_open = false,
                },
                _ = tick.tick() => {
                    offset = local_offset();
                    let out = self.engine.tick(now_at(self.origin, offset));
                    if !out.is_empty() {
                        self.apply(out).await;
                    }
                }
            }
        }
        // The saver finishes what it has, then the final state is written here.
        self.saver = None;
        let _ = saver.await;
        self.shutdown().await;
    }

    async fn command(&mut self, c: Command) {
        let now = now(self.origin);
        let by = c.caller.to_string();
        let result = match &c.request {
            Request::Status => {
                let _ = c.reply.send(Response::Status {
                    triggers: self.engine.trigger_status(),
                    relays: self.engine.relay_status(),
                });
                return;
            }
            Request::Force { relay, level, seconds } => {
                let until = match seconds {
                    None => Ok(None),
                    Some(s) if *s <= MAX_FORCE_SECONDS => {
                        Ok(Some(now.wall + chrono::Duration::seconds(*s as i64)))
                    }
                    Some(_) => Err(format!(
                        "a force lasts at most {} days; leave the duration out to force until released",
                        MAX_FORCE_SECONDS / 86_400
                    )),
                };
                until.and_then(|until| {
                    self.engine.force(relay, *level, until, &by, now).map(|out| {
                        let how = until.map_or("until released".to_owned(), |u| {
                            format!("until {}", u.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S"))
                        });
                        (out, format!("relay {relay} forced {level} {how}"))
                    })
                })
            }
            Request::Release { relay } => self
                .engine
                .release(relay, &by, now)
                .map(|out| (out, format!("relay {relay} released: its triggers decide again"))),
            Request::Reset { trigger } => self
                .engine
                .reset(trigger, &by, now)
                .map(|out| (out, format!("trigger {trigger} reset: it trips again only after its hold"))),
        };
        let response = match result {
            Ok((out, message)) => {
                tracing::info!(request = ?c.request, by = %by, "{message}");
                self.apply(out).await;
                Response::Done { message }
            }
            Err(message) => {
                tracing::warn!(request = ?c.request, by = %by, "refused: {message}");
                Response::Error { message }
            }
        };
        let _ = c.reply.send(response);
    }

    async fn apply(&mut self, out: Output) {
        for (i, level) in out.switches {
            if let Err(e) = self.bank.set(i, level) {
                tracing::error!(error = %e, level = %level, "a relay could not be switched");
                let relay = self.bank.relay(i);
                let failed = StateChange {
                    time: Utc::now(),
                    subject: Subject::Relay,
                    name: relay.name.as_str().into(),
                    event: ChangeEvent::Failed,
                    active: level == Level::On,
                    held: false,
                    dry_run: false,
                    cause: format!("could not switch {level}: {e}"),
                };
                self.record(failed).await;
            }
        }
        for c in out.changes {
            self.record(c).await;
        }
        if out.save {
            if let Some(saver) = &self.saver {
                saver.send_replace(self.engine.saved());
            }
        }
    }

    async fn record(&mut self, c: StateChange) {
        let loud = matches!(
            c.event,
            ChangeEvent::Tripped
                | ChangeEvent::Latched
                | ChangeEvent::Stale
                | ChangeEvent::WouldTrip
                | ChangeEvent::Forced
        );
        if loud {
            tracing::warn!(dry_run = c.dry_run, "{c}");
        } else {
            tracing::info!(dry_run = c.dry_run, "{c}");
        }
        let _ = self.events.send(c.clone());
        if self.store.offer(Record::Change(c)).is_err() {
            tracing::error!("storage stopped: state changes are no longer written");
        }
    }

    async fn shutdown(mut self) {
        if let Err(e) = saved::save(&self.saved_path, &self.engine.saved()) {
            tracing::error!(file = %self.saved_path.display(), error = %e, "cannot save the trigger state");
        }
        if self.handover.load(Ordering::SeqCst) {
            self.bank.hand_over();
            return;
        }
        let wall = Utc::now();
        let status = self.engine.relay_status();
        let on_shutdown = std::mem::take(&mut self.on_shutdown);
        for (r, (on_shutdown, default)) in status.iter().zip(&on_shutdown) {
            if *on_shutdown == OnShutdown::Default && r.level != *default {
                self.record(StateChange {
                    time: wall,
                    subject: Subject::Relay,
                    name: r.name.as_str().into(),
                    event: ChangeEvent::Switched,
                    active: *default == Level::On,
                    held: false,
                    dry_run: false,
                    cause: "stop: on_shutdown = default".into(),
                })
                .await;
            }
        }
        self.bank.shutdown();
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::meter::{pzem, Model};
    use crate::reading::Phase;

    pub fn config(dir: &std::path::Path) -> Config {
        let text = format!(
            r#"
[gateway]
state_dir = "{}"
gpio = "fake"
[[bus]]
name = "b"
port = "/dev/null"
[[meter]]
name = "main"
model = "pzem-016"
address = 4
[[relay]]
name = "motor"
pin = 17
default = "on"
[[trigger]]
name = "overvoltage"
meter = "main"
when = "L1U > 253"
hold = "5s"
recovery = "10s"
stale_after = "10s"
on_stale = "trip"
relays = ["motor"]
"#,
            dir.display()
        );
        crate::config::load_str(&text, "t.toml").unwrap()
    }

    pub fn reading(volts: f64) -> Reading {
        let regs = pzem::encode(volts, 1.0, volts, 1.0, 50.0, 1.0, false);
        Reading {
            meter: "main".into(),
            model: Model::Pzem016,
            time: Utc::now(),
            samples: pzem::decode(&regs, Phase::L1).unwrap(),
            quality: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;
    use crate::relay::FakeBoard;

    /// The task on tokio's paused clock: one reading a second, over 253 V from 3 s to 12 s,
    /// then silence. The relay is off from 8 s (3 + hold) to 23 s (13 + recovery), and off
    /// again once the meter has been silent for `stale_after` (on_stale = trip).
    #[tokio::test(start_paused = true)]
    async fn the_task_keeps_hold_recovery_and_stale_to_the_second() {
        let dir = tempfile::tempdir().unwrap();
        let board = FakeBoard::new();
        let (store, mut stored) = mpsc::channel(1024);
        let drain = tokio::spawn(async move {
            let mut changes = Vec::new();
            while let Some(r) = stored.recv().await {
                if let Record::Change(c) = r {
                    changes.push((c.name.to_string(), c.event));
                }
            }
            changes
        });
        let t = Triggers::start(&config(dir.path()), &mut board.gpio(), store, false).unwrap();
        let mut off = Vec::new();
        for second in 0..30 {
            let volts = if (3..=12).contains(&second) { 260.0 } else { 230.0 };
            t.readings.send(reading(volts)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            if board.level(17) == Some(false) {
                off.push(second);
            }
            tokio::time::sleep(Duration::from_millis(990)).await;
        }
        assert_eq!(off, (8..23).collect::<Vec<_>>());
        // Silence: the last reading came at 29 s; stale after more than 10 s.
        tokio::time::sleep(Duration::from_millis(9_500)).await;
        assert_eq!(board.level(17), Some(true), "not stale yet");
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(board.level(17), Some(false), "stale: tripped");
        t.join().await;
        let changes = drain.await.unwrap();
        let events: Vec<ChangeEvent> =
            changes.iter().filter(|(n, _)| n == "overvoltage").map(|(_, e)| *e).collect();
        use ChangeEvent::*;
        assert_eq!(events, vec![Tripped, Released, Stale, Tripped]);
        let saved = saved::load(&saved::path_in(dir.path()));
        assert!(matches!(saved, Loaded::Found(s) if s.triggers.contains_key("overvoltage")), "saved at stop");
    }
}

#[cfg(test)]
mod failing {
    use super::tests_support::*;
    use super::*;

    /// A relay whose pin refuses the write: logged, stored and sent to the alerts as `failed`.
    #[tokio::test(start_paused = true)]
    async fn a_relay_that_cannot_be_switched_is_a_failed_change() {
        let dir = tempfile::tempdir().unwrap();
        let board = crate::relay::FakeBoard::new();
        let (store, mut stored) = mpsc::channel(1024);
        let t = Triggers::start(&config(dir.path()), &mut board.gpio(), store, false).unwrap();
        let mut events = t.events.subscribe();
        board.set_failing(17, true);
        for _ in 0..7 {
            t.readings.send(reading(260.0)).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        t.join().await;
        let mut failed = Vec::new();
        while let Ok(Record::Change(c)) = stored.try_recv() {
            if c.event == ChangeEvent::Failed {
                failed.push(c);
            }
        }
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].cause.starts_with("could not switch off"), "{}", failed[0].cause);
        let mut seen = false;
        while let Ok(c) = events.try_recv() {
            seen |= c.event == ChangeEvent::Failed;
        }
        assert!(seen, "sent to the alerts");
    }
}
