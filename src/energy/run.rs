//! The thin shell around the books: every second it takes each meter's newest reading from the
//! bus status board (counters are cumulative, so a reading skipped between two looks loses
//! nothing), saves the books every [`SAVE_EVERY`] and at stop. It stands beside the flow of
//! readings, never in front of the triggers, relays or storage.

use super::book::{Book, Note};
use super::counter::{Event, PMTR_SRV_RANGE_KWH};
use super::saved;
use crate::bus::status::StatusBoard;
use crate::config::Config;
use crate::control::{Command, Request, Response};
use crate::meter::Model;
use crate::sync::Locked;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How often the books are written to disk (and at stop). A crash loses no energy: the saved
/// base reading and total go together, the first reading after a restart counts from them.
pub const SAVE_EVERY: Duration = Duration::from_secs(60);
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The running books.
pub struct Energy {
    pub book: Arc<Mutex<Book>>,
    task: JoinHandle<()>,
}

/// The channel of `pmtr energy set` requests (made before the control socket starts).
pub fn requests() -> (mpsc::Sender<Command>, mpsc::Receiver<Command>) {
    mpsc::channel(8)
}

/// Passes the control socket's requests on: energy totals to the books, the rest to the
/// trigger task.
pub async fn route(
    mut from: mpsc::Receiver<Command>,
    triggers: mpsc::Sender<Command>,
    energy: mpsc::Sender<Command>,
) {
    while let Some(c) = from.recv().await {
        let to = if matches!(c.request, Request::EnergySet { .. }) { &energy } else { &triggers };
        if let Err(mpsc::error::SendError(c)) = to.send(c).await {
            let _ = c.reply.send(Response::Error { message: "the daemon is stopping".into() });
        }
    }
}

/// The zone of the periods: `[energy] timezone`, else the gateway's own (`TZ`,
/// `/etc/timezone`, the `/etc/localtime` link), else UTC.
pub fn zone(config: &Config) -> Tz {
    if let Some(tz) = config.energy.timezone.as_deref().and_then(|z| z.parse().ok()) {
        return tz;
    }
    system_zone().unwrap_or(Tz::UTC)
}

fn system_zone() -> Option<Tz> {
    let from_env = std::env::var("TZ").ok().map(|z| z.trim_start_matches(':').to_string());
    let from_file = || std::fs::read_to_string("/etc/timezone").ok().map(|s| s.trim().to_string());
    let from_link = || {
        let target = std::fs::read_link("/etc/localtime").ok()?;
        let s = target.to_string_lossy().into_owned();
        s.split_once("zoneinfo/").map(|(_, z)| z.to_string())
    };
    [from_env, from_file(), from_link()].into_iter().flatten().find_map(|z| z.parse().ok())
}

/// The counter ranges known from the configuration: a PMTR server's 16-bit energy registers.
pub fn ranges(config: &Config) -> BTreeMap<String, f64> {
    config
        .meters
        .iter()
        .filter(|m| m.model == Model::PmtrSrv)
        .map(|m| (m.name.clone(), PMTR_SRV_RANGE_KWH * m.multiplier()))
        .collect()
}

/// The books as configured, from the saved file.
pub fn open(config: &Config, path: &Path) -> Book {
    Book::new(zone(config), config.energy.tariffs.clone(), ranges(config), saved::load_logged(path))
}

impl Energy {
    pub fn start(
        config: &Config,
        status: Arc<StatusBoard>,
        requests: mpsc::Receiver<Command>,
        store: crate::store::Intake,
        stop: watch::Receiver<bool>,
    ) -> Energy {
        let path = saved::path_in(&config.gateway.state_dir);
        let book = Arc::new(Mutex::new(open(config, &path)));
        tracing::info!(timezone = %book.locked().tz, tariffs = config.energy.tariffs.len(), "energy books ready");
        let meters: Vec<String> = config.meters.iter().map(|m| m.name.clone()).collect();
        let task = tokio::spawn(run(book.clone(), meters, status, path, requests, store, stop));
        Energy { book, task }
    }

    /// Waits for the task's last save after the stop signal.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

async fn run(
    book: Arc<Mutex<Book>>,
    meters: Vec<String>,
    status: Arc<StatusBoard>,
    path: PathBuf,
    mut requests: mpsc::Receiver<Command>,
    store: crate::store::Intake,
    mut stop: watch::Receiver<bool>,
) {
    let mut points = Points { store, last_day: None };
    let mut seen: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    let mut look = tokio::time::interval(LOOK_EVERY);
    let mut save = tokio::time::interval(SAVE_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    save.tick().await;
    let mut dirty = false;
    let mut open = true;
    loop {
        tokio::select! {
            _ = look.tick() => dirty |= take_readings(&book, &meters, &status, &mut seen),
            _ = save.tick(), if dirty => {
                write(&book, &path);
                points.send(&book);
                dirty = false;
            }
            r = requests.recv(), if open => match r {
                Some(c) => {
                    let Request::EnergySet { meter, counter, value } = &c.request else {
                        let _ = c.reply.send(Response::Error { message: "not an energy request".into() });
                        continue;
                    };
                    let result = book.locked().set_total(meter, counter.as_deref(), *value);
                    let response = match result {
                        Ok((counter, old)) => {
                            tracing::info!(%meter, %counter, old, new = value, by = %c.caller, "energy total set by hand");
                            write(&book, &path);
                            points.send(&book);
                            Response::Done { message: format!("{meter} {counter}: total set to {value} kWh (was {old})") }
                        }
                        Err(e) => Response::Error { message: e.to_string() },
                    };
                    let _ = c.reply.send(response);
                }
                None => open = false,
            },
            _ = stop.changed() => break,
        }
    }
    take_readings(&book, &meters, &status, &mut seen);
    write(&book, &path);
    points.send(&book);
}

/// The books' points on their way to storage, handed over without waiting (a full queue
/// drops them, counted; the next write a minute later replaces them).
struct Points {
    store: crate::store::Intake,
    /// The local date of the last write: the first write of a new day closes the last one.
    last_day: Option<chrono::NaiveDate>,
}

impl Points {
    fn send(&mut self, book: &Mutex<Book>) {
        let now = Utc::now();
        let book = book.locked();
        let today = super::calendar::local_date(now, book.tz);
        let closing = self.last_day != Some(today);
        self.last_day = Some(today);
        for p in book.points(now, closing) {
            if self.store.offer(p.into()).is_err() {
                return;
            }
        }
    }
}

/// Books every meter's newest reading not booked yet. True when any was.
fn take_readings(
    book: &Mutex<Book>,
    meters: &[String],
    status: &StatusBoard,
    seen: &mut BTreeMap<String, DateTime<Utc>>,
) -> bool {
    let mut any = false;
    for m in meters {
        let Some(Some(r)) = status.update(m, |s| s.last_reading.clone()) else { continue };
        if seen.get(m).is_some_and(|t| *t >= r.time) {
            continue;
        }
        seen.insert(m.clone(), r.time);
        let notes = book.locked().record(&r);
        notes.iter().for_each(log);
        any = true;
    }
    any
}

fn log(n: &Note) {
    let (meter, counter, raw, total) = (&n.meter, &n.counter, n.raw, n.total);
    match n.event {
        Event::Started => {
            tracing::info!(%meter, %counter, raw, total, "energy counter seen first: total starts at the meter's value")
        }
        Event::Wrapped => {
            tracing::info!(%meter, %counter, raw, total, "energy counter wrapped at the top of its range: counted across")
        }
        Event::Held(kind) => {
            tracing::warn!(%meter, %counter, raw, total, ?kind, "energy counter broke its sequence: held until the next reading confirms it")
        }
        Event::Confirmed(kind) => {
            tracing::warn!(%meter, %counter, raw, total, ?kind, "energy counter restarted: the total continues from where it was")
        }
        Event::Glitch => {
            tracing::warn!(%meter, %counter, raw, total, "energy reading not confirmed: dropped as a glitch")
        }
        Event::ClockBack => {
            tracing::warn!(%meter, %counter, raw, total, "the clock went back more than an hour: energy counted again from this reading")
        }
        Event::Stale | Event::Counted | Event::Jitter => {}
    }
}

fn write(book: &Mutex<Book>, path: &Path) {
    let books = book.locked().books.clone();
    if let Err(e) = saved::save(path, &books) {
        tracing::error!(file = %path.display(), error = %e, "cannot save the energy books (they stay in memory)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::status::MeterStatus;
    use crate::control::Caller;
    use crate::reading::{Phase, Quality, Quantity, Reading, Sample};
    use saved::Loaded;

    fn reading(t: &str, kwh: f64) -> Reading {
        Reading {
            meter: "main".into(),
            model: Model::Pzem016,
            time: t.parse().unwrap(),
            samples: vec![Sample::new(Phase::L1, Quantity::ActiveEnergy, kwh)],
            quality: Quality::default(),
        }
    }

    /// The control socket's requests: energy totals to the books, everything else to the
    /// triggers.
    #[tokio::test]
    async fn the_router_sends_energy_requests_to_the_books() {
        let (to_router, from) = mpsc::channel(4);
        let (triggers, mut at_triggers) = mpsc::channel(4);
        let (energy, mut at_energy) = mpsc::channel(4);
        tokio::spawn(route(from, triggers, energy));
        let set = Request::EnergySet { meter: "m".into(), counter: None, value: 1.0 };
        for r in [set.clone(), Request::Status] {
            let (reply, _) = tokio::sync::oneshot::channel();
            to_router.send(Command::new(r, Caller::Internal("test"), reply)).await.unwrap();
        }
        assert_eq!(at_energy.recv().await.unwrap().request, set);
        assert_eq!(at_triggers.recv().await.unwrap().request, Request::Status);
    }

    /// The task books what the status board shows, takes `energy set`, and saves at stop; the
    /// next start goes on from the file.
    #[tokio::test(start_paused = true)]
    async fn books_readings_sets_totals_and_saves_at_stop() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[gateway]\nstate_dir = \"{}\"\n[energy]\ntimezone = \"Europe/Berlin\"\n[[bus]]\nname = \"b\"\nports = [\"/dev/null\"]\n\
             [[meter]]\nname = \"main\"\nmodel = \"pzem-016\"\naddress = 1\n",
            dir.path().display()
        );
        let config = crate::config::load_str(&text, "pmtr.toml").unwrap();
        let status = Arc::new(StatusBoard::default());
        status.register("main", MeterStatus::searching("b".into(), 1, Model::Pzem016));
        let (stop_tx, stop) = watch::channel(false);
        let (tx, rx) = requests();
        let (store, mut stored) = crate::store::Intake::channel(64);
        let energy = Energy::start(&config, status.clone(), rx, store, stop);
        for (t, kwh) in [("2026-07-01T10:00:00Z", 5.0), ("2026-07-01T10:00:05Z", 5.25)] {
            status.update("main", |s| s.last_reading = Some(reading(t, kwh)));
            tokio::time::sleep(LOOK_EVERY * 2).await;
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let set = Request::EnergySet { meter: "main".into(), counter: None, value: 100.0 };
        tx.send(Command::new(set, Caller::Internal("test"), reply)).await.unwrap();
        assert!(matches!(answer.await.unwrap(), Response::Done { .. }));
        status.update("main", |s| s.last_reading = Some(reading("2026-07-01T10:00:10Z", 5.5)));
        tokio::time::sleep(LOOK_EVERY * 2).await;
        stop_tx.send(true).unwrap();
        energy.join().await;
        let Loaded::Found(books) = saved::load(&saved::path_in(dir.path())) else { panic!("not saved") };
        let main = &books.meters["main"];
        assert_eq!(main.counters["l1_energy"].total, 100.25);
        assert_eq!(main.days[&"2026-07-01".parse().unwrap()].kwh, 0.5);
        assert_eq!(open(&config, &saved::path_in(dir.path())).books, books);
        // Storage got the points of each write (the set by hand, the stop): the last total
        // is the saved one.
        let mut last_total = None;
        while let Ok(r) = stored.try_recv() {
            if let crate::reading::Record::Energy(crate::reading::EnergyPoint::Total(t)) = r {
                last_total = Some(t.kwh);
            }
        }
        assert_eq!(last_total, Some(100.25));
    }
}
