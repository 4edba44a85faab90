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
//! | reload | handed over at its level with the state in memory ([`Triggers::hand_over`], [`Triggers::start_after`]) |
//! | reload, pin no longer owned | driven per its old relay's `on_shutdown`, and let go |

use super::engine::{Engine, Now, Output};
use super::saved::{self, Loaded, Saved, SavedTrigger};
use crate::config::{Config, OnShutdown};
use crate::control::{Command, Request, Response};
use crate::pipeline::Outlet;
use crate::reading::{ChangeEvent, Reading, Record, StateChange, Subject};
use crate::relay::{bank::RelayBank, Gpio, Level, RelayError};
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
    task: tokio::task::JoinHandle<Option<Handover>>,
    /// Set by [`Triggers::hand_over`]: the relays stay as they are for the next configuration.
    handover: Arc<AtomicBool>,
}

/// What a configuration reload passes from one trigger task to the next: the trigger state as
/// it is in memory (never the file, which is older when a save failed) and the relays' pins,
/// still claimed at their levels.
pub struct Handover {
    saved: Saved,
    bank: RelayBank,
}

impl Handover {
    /// The state handed over (latches, trips, forces).
    pub fn saved(&self) -> &Saved {
        &self.saved
    }

    /// For a configuration with no relay at all: every pin is let go per its relay's
    /// `on_shutdown`.
    pub fn release(self) {
        self.bank.keep_orphans(&[]).release_orphans();
    }
}

struct Shell {
    engine: Engine,
    bank: RelayBank,
    on_shutdown: Vec<(OnShutdown, Level)>,
    /// Where each reading goes once the relays have seen it, and each change: never waits (a
    /// full queue drops, counted and logged), so that no relay waits on a disk, a database or
    /// a broker.
    out: Outlet,
    events: broadcast::Sender<StateChange>,
    saved_path: PathBuf,
    /// The newest state to save; the saver task writes it off the trigger task, so that a
    /// slow SD card never delays a relay.
    saver: Option<watch::Sender<Saved>>,
    origin: Instant,
    /// Whether the wall clock can be believed (time-of-day variables are unknown until then).
    clock: Arc<crate::clock::WallClock>,
    handover: Arc<AtomicBool>,
}

impl Triggers {
    /// Restores the saved state, claims every relay at the level it gives (before any
    /// reading), and starts the task. Every reading, once the triggers have seen it, and every
    /// change go to `out`; changes to [`Triggers::events`] too.
    pub fn start(
        config: &Config,
        gpio: &mut dyn Gpio,
        out: impl Into<Outlet>,
    ) -> Result<Triggers, StartError> {
        Triggers::start_after(config, gpio, out, &mut None)
    }

    /// As [`Triggers::start`], after a reload: with a `handover` from the previous task, the
    /// state comes from it, not from the file; the pins the new configuration claims again are
    /// taken over at their levels, and the pins it no longer owns are let go per their old
    /// relay's `on_shutdown` once the new relays are claimed. If the relays cannot be claimed,
    /// `handover` gets back the state and the pins not yet let go, for the previous
    /// configuration to start with.
    pub fn start_after(
        config: &Config,
        gpio: &mut dyn Gpio,
        out: impl Into<Outlet>,
        handover: &mut Option<Handover>,
    ) -> Result<Triggers, StartError> {
        let out = out.into();
        let origin = Instant::now();
        let clock = crate::clock::WallClock::system(config.gateway.clock_sync_wait);
        let mut engine =
            Engine::new(config, Duration::ZERO).map_err(|e| StartError::Config(e.to_string()))?;
        // `today_kwh` goes on from the books the energy task saved (read only: that task sets a
        // damaged file aside and says so).
        let energy = crate::energy::saved::path_in(&config.gateway.state_dir);
        if let Ok(text) = std::fs::read_to_string(&energy) {
            engine.restore_energy(serde_json::from_str(&text).unwrap_or_default());
        }
        let saved_path = saved::path_in(&config.gateway.state_dir);
        let (saved, orphans) = match handover.take() {
            Some(Handover { saved, bank }) => (Some(saved), Some(bank.keep_orphans(&config.relays))),
            None => (None, None),
        };
        let handed_over = saved.is_some();
        let saved = match saved.map(Loaded::Found).unwrap_or_else(|| saved::load(&saved_path)) {
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
                // Written at once: a crash before the next change must find these latches,
                // not a missing file that would release them.
                if let Err(e) = saved::save(&saved_path, &s) {
                    tracing::error!(file = %saved_path.display(), error = %e,
                        "cannot save the rebuilt trigger state: a restart now would not restore it");
                }
                s
            }
        };
        let now = now(origin, clock.is_believed());
        let restored = engine.restore(&saved, now);
        let levels: Vec<(&str, Level)> =
            config.relays.iter().enumerate().map(|(i, r)| (r.name.as_str(), engine.relay_level(i))).collect();
        let bank = match RelayBank::open(&config.relays, gpio, |r| {
            levels.iter().find(|(n, _)| *n == r.name).map_or(r.default, |(_, l)| *l)
        }) {
            Ok(bank) => bank,
            Err(e) => {
                if handed_over {
                    *handover = orphans.map(|bank| Handover { saved: saved.clone(), bank });
                }
                return Err(e.into());
            }
        };
        if let Some(orphans) = orphans {
            orphans.release_orphans();
        }
        let (readings_tx, readings) = mpsc::channel(1024);
        let (commands_tx, commands) = mpsc::channel(16);
        let (events, _) = broadcast::channel(256);
        let (saver, saver_rx) = watch::channel(engine.saved());
        if handed_over {
            // The file may be older than the state handed over (a save failed): write it.
            saver.send_modify(|_| ());
        }
        let handover = Arc::new(AtomicBool::new(false));
        let saver_task = tokio::spawn(save_each(saved_path.clone(), saver_rx));
        let shell = Shell {
            saver: Some(saver),
            engine,
            bank,
            on_shutdown: config.relays.iter().map(|r| (r.on_shutdown, r.default)).collect(),
            out,
            events: events.clone(),
            saved_path,
            origin,
            clock,
            handover: handover.clone(),
        };
        let task = tokio::spawn(shell.run(restored, readings, commands, saver_task));
        Ok(Triggers { readings: readings_tx, commands: commands_tx, events, task, handover })
    }

    /// Waits until the task has stopped (after the readings channel closed): relays set per
    /// `on_shutdown`, state saved.
    pub async fn join(self) {
        self.finish().await;
    }

    async fn finish(self) -> Option<Handover> {
        let Triggers { readings, commands, task, .. } = self;
        drop(readings);
        drop(commands);
        task.await.ok().flatten()
    }

    /// Stops as [`Triggers::join`] does, but for a configuration reload: the state is saved
    /// (if it can be) and handed over from memory with the pins still claimed, every relay at
    /// its level whatever its `on_shutdown`, for [`Triggers::start_after`].
    pub async fn hand_over(self) -> Option<Handover> {
        self.handover.store(true, Ordering::SeqCst);
        self.finish().await
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
/// per reading: the lookup costs more than a whole evaluation), None while the wall clock is
/// not believed (the time-of-day variables are unknown then).
fn now_at(origin: Instant, offset: Option<chrono::FixedOffset>) -> Now {
    let wall = Utc::now();
    Now { mono: origin.elapsed(), wall, local: offset.map(|o| wall.with_timezone(&o).naive_local()) }
}

fn local_offset() -> chrono::FixedOffset {
    *chrono::Local::now().offset()
}

fn now(origin: Instant, believed: bool) -> Now {
    now_at(origin, believed.then(local_offset))
}

impl Shell {
    async fn run(
        mut self,
        restored: Output,
        mut readings: mpsc::Receiver<Reading>,
        mut commands: mpsc::Receiver<Command>,
        saver: tokio::task::JoinHandle<()>,
    ) -> Option<Handover> {
        self.apply(restored).await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut commands_open = true;
        let mut offset = self.clock.is_believed().then(local_offset);
        loop {
            tokio::select! {
                biased;
                r = readings.recv() => match r {
                    Some(r) => {
                        let out = self.engine.on_reading(&r, now_at(self.origin, offset));
                        if !out.is_empty() {
                            self.apply(out).await;
                        }
                        if self.out.offer(Record::Reading(r)).is_err() {
                            tracing::error!("storage stopped: readings are no longer written");
                        }
                    }
                    None => break,
                },
                c = commands.recv(), if commands_open => match c {
                    Some(c) => self.command(c).await,
                    None => commands_open = false,
                },
                _ = tick.tick() => {
                    offset = self.clock.is_believed().then(local_offset);
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
        self.shutdown().await
    }

    async fn command(&mut self, c: Command) {
        if c.expired(Instant::now()) {
            // The asker was already told it failed: applying it now would surprise.
            tracing::warn!(request = ?c.request, by = %c.caller,
                "control request dropped, not applied: it waited past its deadline (the trigger task was busy)");
            return;
        }
        let now = now(self.origin, self.clock.is_believed());
        let by = c.caller.to_string();
        let result = match &c.request {
            Request::Status => {
                let _ = c.reply.send(Response::Status {
                    triggers: self.engine.trigger_status(),
                    relays: self.engine.relay_status(),
                    neutral: self.engine.neutral_status(),
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
                    self.engine.force(relay, *level, until, &by, now).map_err(|e| e.to_string()).map(|out| {
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
                .map_err(|e| e.to_string())
                .map(|out| (out, format!("relay {relay} released: its triggers decide again"))),
            Request::Reset { trigger } => self
                .engine
                .reset(trigger, &by, now)
                .map_err(|e| e.to_string())
                .map(|out| (out, format!("trigger {trigger} reset: it trips again only after its hold"))),
            // The control socket routes these to the energy books; none should come here.
            Request::EnergySet { .. } => Err("energy totals are not kept by the trigger task".to_string()),
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
                    cause: format!("could not switch {level}: {e}").into(),
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
        if self.out.offer(Record::Change(c)).is_err() {
            tracing::error!("storage stopped: state changes are no longer written");
        }
    }

    async fn shutdown(mut self) -> Option<Handover> {
        let saved = self.engine.saved();
        if let Err(e) = saved::save(&self.saved_path, &saved) {
            tracing::error!(file = %self.saved_path.display(), error = %e, "cannot save the trigger state");
        }
        if self.handover.load(Ordering::SeqCst) {
            return Some(Handover { saved, bank: self.bank });
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
        None
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::meter::{pzem, Model};
    use crate::reading::Phase;

    pub fn config(dir: &std::path::Path) -> Config {
        config_edited(dir, |t| t)
    }

    /// The config of [`config`], its text changed by `edit` first.
    pub fn config_edited(dir: &std::path::Path, edit: impl Fn(String) -> String) -> Config {
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
        crate::config::load_str(&edit(text), "t.toml").unwrap()
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
        let t = Triggers::start(&config(dir.path()), &mut board.gpio(), store).unwrap();
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
        let t = Triggers::start(&config(dir.path()), &mut board.gpio(), store).unwrap();
        let mut events = t.events.subscribe();
        board.set_failing(17, true);
        for _ in 0..7 {
            t.readings.send(reading(260.0)).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        t.join().await;
        let mut failed = Vec::new();
        // The readings come through too, once the relays have seen them.
        while let Ok(r) = stored.try_recv() {
            let Record::Change(c) = r else { continue };
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

#[cfg(test)]
mod keeping_state {
    use super::tests_support::*;
    use super::*;
    use crate::relay::FakeBoard;

    fn latching(t: String) -> String {
        t.replace("on_stale = \"trip\"", "on_stale = \"hold\"\nlatch = true")
    }

    fn storage() -> mpsc::Sender<Record> {
        let (store, mut stored) = mpsc::channel(1024);
        tokio::spawn(async move { while stored.recv().await.is_some() {} });
        store
    }

    async fn status(t: &Triggers) -> (Vec<crate::control::TriggerStatus>, Vec<crate::control::RelayStatus>) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = Request::Status;
        t.commands
            .send(Command::new(request, crate::control::Caller::Internal("test"), reply))
            .await
            .unwrap();
        match answer.await.unwrap() {
            Response::Status { triggers, relays, .. } => (triggers, relays),
            other => panic!("{other:?}"),
        }
    }

    async fn trip(t: &Triggers) {
        for _ in 0..7 {
            t.readings.send(reading(260.0)).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// A damaged file: every latch is rebuilt and written at once, so that a crash (the task
    /// gone without its stop) before any change still finds the latch at the next start.
    #[tokio::test(start_paused = true)]
    async fn a_latch_rebuilt_from_a_damaged_file_survives_a_crash_right_after_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_edited(dir.path(), latching);
        let path = saved::path_in(dir.path());
        std::fs::write(&path, "{\"triggers\": {\"overvoltage\": ").unwrap();
        let board = FakeBoard::new();
        let t = Triggers::start(&config, &mut board.gpio(), storage()).unwrap();
        assert_eq!(board.level(17), Some(false), "latched at start: the motor is off");
        // kill -9: the task ends without saving or driving anything.
        t.task.abort();
        let _ = t.task.await;
        assert!(matches!(saved::load(&path), Loaded::Found(s) if s.triggers["overvoltage"].latched));
        let board = FakeBoard::new();
        let t = Triggers::start(&config, &mut board.gpio(), storage()).unwrap();
        assert_eq!(board.level(17), Some(false), "still latched after the crash");
        assert_eq!(status(&t).await.0[0].state, "latched");
        t.join().await;
    }

    /// A save that fails (read-only or full disk), then a reload: the new task starts from the
    /// state in memory, not from the older file, so no latch or force is lost and no relay
    /// switches.
    #[tokio::test(start_paused = true)]
    async fn a_reload_after_a_failed_save_keeps_the_latches_and_forces_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_edited(dir.path(), |t| {
            latching(t)
                .replace("[[trigger]]", "[[relay]]\nname = \"fan\"\npin = 22\ndefault = \"off\"\n[[trigger]]")
        });
        let board = FakeBoard::new();
        let t = Triggers::start(&config, &mut board.gpio(), storage()).unwrap();
        // Every save fails from here on: the temporary file's name is taken by a folder.
        let path = saved::path_in(dir.path());
        std::fs::create_dir(path.with_extension("json.tmp")).unwrap();
        trip(&t).await;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let force = Request::Force { relay: "fan".into(), level: Level::On, seconds: None };
        t.commands.send(Command::new(force, crate::control::Caller::Internal("test"), reply)).await.unwrap();
        assert!(matches!(answer.await.unwrap(), Response::Done { .. }));
        assert_eq!((board.level(17), board.level(22)), (Some(false), Some(true)));
        let handover = t.hand_over().await.expect("handed over");
        assert!(!path.exists(), "nothing could be saved");
        let events = board.events().len();
        let mut handover = Some(handover);
        let t = Triggers::start_after(&config, &mut board.gpio(), storage(), &mut handover).unwrap();
        let (triggers, relays) = status(&t).await;
        assert_eq!(triggers[0].state, "latched");
        assert_eq!(relays[1].forced.as_ref().map(|f| f.level), Some(Level::On));
        assert_eq!((board.level(17), board.level(22)), (Some(false), Some(true)), "no relay switched");
        assert!(
            board.events()[events..].iter().all(|e| e.op == crate::relay::fake::FakeOp::Claim),
            "claimed again at the same levels, never written: {:?}",
            board.events()
        );
        t.join().await;
    }

    /// A reload that removes a relay or moves it to another pin: the pin no longer owned is
    /// driven per its old relay's `on_shutdown`, and let go.
    #[tokio::test(start_paused = true)]
    async fn a_reload_drives_pins_no_longer_owned_per_their_old_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let with_fan = |t: String| {
            t.replace(
                "[[trigger]]",
                "[[relay]]\nname = \"fan\"\npin = 22\ndefault = \"off\"\non_shutdown = \"default\"\n[[trigger]]",
            )
            .replace("default = \"on\"", "default = \"on\"\non_shutdown = \"default\"")
        };
        let config = config_edited(dir.path(), with_fan);
        let board = FakeBoard::new();
        let t = Triggers::start(&config, &mut board.gpio(), storage()).unwrap();
        trip(&t).await;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let force = Request::Force { relay: "fan".into(), level: Level::On, seconds: None };
        t.commands.send(Command::new(force, crate::control::Caller::Internal("test"), reply)).await.unwrap();
        answer.await.unwrap();
        assert_eq!((board.level(17), board.level(22)), (Some(false), Some(true)));
        // The fan is removed; the motor moves from pin 17 to pin 5.
        let next = config_edited(dir.path(), |t| t.replace("pin = 17", "pin = 5"));
        let mut handover = t.hand_over().await;
        let t = Triggers::start_after(&next, &mut board.gpio(), storage(), &mut handover).unwrap();
        assert!(handover.is_none());
        assert_eq!(board.level(5), Some(false), "the motor, still tripped, on its new pin");
        assert_eq!(board.level(17), Some(true), "its old pin: back to its default (on)");
        assert_eq!(board.level(22), Some(false), "the removed fan: back to its default (off)");
        assert!(!board.is_claimed(17) && !board.is_claimed(22), "let go");
        t.join().await;
    }

    /// The new relays cannot be claimed: the state and the pins not yet let go come back, for
    /// the previous configuration to start with.
    #[tokio::test(start_paused = true)]
    async fn a_reload_that_cannot_claim_its_pins_gives_the_state_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_edited(dir.path(), latching);
        let board = FakeBoard::new();
        let t = Triggers::start(&config, &mut board.gpio(), storage()).unwrap();
        trip(&t).await;
        let next = config_edited(dir.path(), |t| latching(t).replace("pin = 17", "pin = 5"));
        board.set_failing(5, true);
        let mut handover = t.hand_over().await;
        assert!(Triggers::start_after(&next, &mut board.gpio(), storage(), &mut handover).is_err());
        assert!(handover.as_ref().is_some_and(|h| h.saved().triggers["overvoltage"].latched));
        assert_eq!(board.level(17), Some(false), "the old pin untouched");
        let t = Triggers::start_after(&config, &mut board.gpio(), storage(), &mut handover).unwrap();
        assert_eq!(status(&t).await.0[0].state, "latched");
        assert_eq!(board.level(17), Some(false));
        t.join().await;
    }

    /// A control request that waited in the queue past its asker's deadline (the asker was told
    /// it failed) is dropped, never applied later.
    #[tokio::test(start_paused = true)]
    async fn a_control_request_past_its_deadline_is_dropped_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let board = FakeBoard::new();
        let t = Triggers::start(&config(dir.path()), &mut board.gpio(), storage()).unwrap();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let force = Request::Force { relay: "motor".into(), level: Level::Off, seconds: None };
        let late = Command::within(
            force.clone(),
            crate::control::Caller::Internal("test"),
            reply,
            Duration::from_secs(5),
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        t.commands.send(late).await.unwrap();
        assert!(answer.await.is_err(), "no answer: the asker had given up");
        assert_eq!(board.level(17), Some(true), "not forced off");
        assert!(status(&t).await.1[0].forced.is_none());
        // In time: applied.
        let (reply, answer) = tokio::sync::oneshot::channel();
        t.commands.send(Command::new(force, crate::control::Caller::Internal("test"), reply)).await.unwrap();
        assert!(matches!(answer.await.unwrap(), Response::Done { .. }));
        assert_eq!(board.level(17), Some(false));
        t.join().await;
    }
}
