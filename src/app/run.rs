//! `pmtr run`: the daemon.

use super::pipeline::Pipeline;
use super::systemd::Notifier;
use crate::bus::liveness::Liveness;
use crate::bus::status::StatusBoard;
use crate::config::Config;
use crate::control::ControlServer;
use crate::mqtt::run::Mqtt;
use crate::pipeline::Outlet;
use crate::relay::{FakeBoard, Gpio};
use crate::status::http::StatusServer;
use crate::status::Tally;
use crate::store::Storage;
use crate::sync::Locked;
use crate::trigger::run::{Handover, Triggers};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How often a one-line summary per meter is logged (counters instead of log floods).
const SUMMARY_EVERY: Duration = Duration::from_secs(600);

/// What the daemon is told from outside: SIGTERM/SIGINT, SIGHUP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Stop,
    Reload,
}

/// How `pmtr run` sits in its service manager.
pub struct Service {
    /// The file SIGHUP reads again (none: a reload is refused, the configuration stays).
    pub config_path: Option<PathBuf>,
    /// systemd's notification socket (`Type=notify`).
    pub notifier: Notifier,
    /// systemd's `WatchdogSec=`: pings at half of it while the bus engine makes progress.
    pub watchdog: Option<Duration>,
}

impl Service {
    /// As systemd (or a terminal) started us: `$NOTIFY_SOCKET`, `$WATCHDOG_USEC`.
    pub fn from_env(config_path: PathBuf) -> Service {
        Service {
            config_path: Some(config_path),
            notifier: Notifier::from_env(),
            watchdog: super::systemd::watchdog_interval(),
        }
    }

    /// No service manager, no file (tests, the demo).
    pub fn none() -> Service {
        Service { config_path: None, notifier: Notifier::none(), watchdog: None }
    }
}

/// Runs the gateway until `stop` resolves (no reload, no service manager).
pub async fn run(config: Config, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    run_with(config, None, stop).await
}

/// As [`run`], with the relays on `gpio` instead of the configured backend (tests, demo).
pub async fn run_with(
    config: Config,
    gpio: Option<Box<dyn Gpio>>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(1);
    let serve = serve(Service::none(), config, gpio, rx);
    tokio::pin!(serve);
    tokio::select! {
        r = &mut serve => return r,
        _ = stop => {}
    }
    let _ = tx.send(Signal::Stop).await;
    serve.await
}

/// The daemon: runs `config` until [`Signal::Stop`] (or until `signals` closes), reloading on
/// [`Signal::Reload`].
///
/// A reload reads the file again. A file with errors is reported (every error, with file,
/// line and key) and the running configuration stays. A good one replaces the running one in
/// this process: the buses stop after their transaction in flight, storage writes or spools
/// what it holds, the trigger state is saved and handed over from memory (a failed save loses
/// nothing) with the relays at their level (never per `on_shutdown`); then everything starts
/// again on the new configuration, the relays claimed at the level that state gives, and a pin
/// the new configuration no longer uses is let go per its old relay's `on_shutdown`. If the new configuration cannot start
/// (a pin or a port taken, storage refusing), the previous one is started again.
pub async fn serve(
    service: Service,
    config: Config,
    mut gpio: Option<Box<dyn Gpio>>,
    mut signals: mpsc::Receiver<Signal>,
) -> anyhow::Result<()> {
    let Service { config_path, notifier, watchdog } = service;
    let notifier = Arc::new(notifier);
    if let Err(e) = std::fs::create_dir_all(&config.gateway.state_dir) {
        tracing::warn!(dir = %config.gateway.state_dir.display(), error = %e,
            "cannot create the state directory; the port map will not be remembered");
    }
    // A marker of the run in progress: found at start, the previous run did not stop cleanly.
    let marker = crate::alert::run::running_marker(&config);
    let unclean = marker.exists();
    if unclean {
        tracing::warn!("the previous run did not stop cleanly (a crash, a kill or a power cut)");
    }
    if let Err(e) = std::fs::write(&marker, format!("{}\n", std::process::id())) {
        tracing::warn!(file = %marker.display(), error = %e, "cannot write the run marker");
    }
    let current: Arc<Mutex<Option<Watched>>> = Arc::new(Mutex::new(None));
    let dog = watchdog.map(|every| {
        tracing::info!(interval = ?every, "systemd watchdog on: fed while every bus task makes progress");
        tokio::spawn(feed_watchdog(every, notifier.clone(), current.clone()))
    });
    // The pages the start touched go back a few seconds after each start and reload.
    let started = Arc::new(tokio::sync::Notify::new());
    let give_back = tokio::spawn(give_back_pages(started.clone()));
    let mut config = config;
    let mut previous: Option<Config> = None;
    let mut first = true;
    // The trigger state and pins the last generation handed over at a reload.
    let mut handover: Option<Handover> = None;
    let result = loop {
        let generation =
            match Generation::start(&config, gpio.as_deref_mut(), unclean && first, &mut handover).await {
                Ok(g) => g,
                Err(e) => match previous.take() {
                    Some(old) => {
                        tracing::error!(
                            "the new configuration cannot start: {e:#}; starting the previous one again"
                        );
                        config = old;
                        continue;
                    }
                    None => break Err(e),
                },
            };
        first = false;
        *lock(&current) =
            Some(Watched { liveness: generation.liveness.clone(), status: generation.status.clone() });
        notifier.ready(&summary(&generation.status));
        started.notify_one();
        let next = loop {
            match signals.recv().await {
                None | Some(Signal::Stop) => break None,
                Some(Signal::Reload) => {
                    notifier.reloading();
                    match reload(config_path.as_deref()) {
                        Some(new) => break Some(new),
                        None => notifier.ready(&summary(&generation.status)),
                    }
                }
            }
        };
        *lock(&current) = None;
        match next {
            None => {
                notifier.stopping();
                tracing::info!("stopping");
                generation.stop(false).await;
                break Ok(());
            }
            Some(new) => {
                tracing::info!("reloading: stopping the running configuration");
                handover = generation.stop(true).await;
                previous = Some(std::mem::replace(&mut config, new));
                tracing::info!("reloaded: starting on the new configuration");
            }
        }
    };
    if let Some(d) = dog {
        d.abort();
    }
    give_back.abort();
    if result.is_ok() {
        let _ = std::fs::remove_file(&marker);
        tracing::info!("stopped");
    }
    result
}

/// Gives back the pages touched once ([`crate::resident`]): [`crate::resident::SETTLE`] after
/// each start and reload, and every [`crate::resident::EVERY`]. Off the runtime's thread.
async fn give_back_pages(started: Arc<tokio::sync::Notify>) {
    let mut first = true;
    loop {
        if tokio::time::timeout(crate::resident::EVERY, started.notified()).await.is_ok() {
            tokio::time::sleep(crate::resident::SETTLE).await;
        }
        match tokio::task::spawn_blocking(crate::resident::give_back).await {
            Ok(Ok(g)) if first => tracing::info!(
                "gave back the pages the start touched: {} KiB mapped from files, resident {} -> {} KiB",
                g.mapped_kib,
                g.rss_before_kib,
                g.rss_after_kib
            ),
            Ok(Ok(g)) => tracing::debug!(
                "gave back pages touched since: {} KiB mapped from files, resident {} -> {} KiB",
                g.mapped_kib,
                g.rss_before_kib,
                g.rss_after_kib
            ),
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot read /proc/self/smaps: pages not given back"),
            Err(_) => {}
        }
        first = false;
    }
}

/// Reads the configuration again for SIGHUP; `None` (logged) when it cannot be used.
fn reload(path: Option<&std::path::Path>) -> Option<Config> {
    let Some(path) = path else {
        tracing::warn!("reload asked, but this run has no configuration file to read again");
        return None;
    };
    match crate::config::load_file(path) {
        Ok(c) => Some(c),
        Err(errors) => {
            // One line each (journald gives each line of its own the default priority).
            tracing::error!(
                "reload refused, the running configuration stays: {} error(s) in {}",
                errors.0.len(),
                path.display()
            );
            for e in &errors.0 {
                tracing::error!("{e}");
            }
            None
        }
    }
}

/// What the watchdog looks at: the running generation's bus engine.
struct Watched {
    liveness: Arc<Liveness>,
    status: Arc<StatusBoard>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.locked()
}

/// A one-line state for `systemctl status`.
fn summary(status: &StatusBoard) -> String {
    let meters = status.snapshot();
    let ok = meters.values().filter(|m| m.state == crate::bus::status::MeterState::Ok).count();
    format!("{ok} of {} meter(s) answering", meters.len())
}

/// Pings systemd at half the watchdog interval while every port task makes progress (and
/// while this runtime runs at all). A stuck task stops the pings: systemd restarts pmtr.
async fn feed_watchdog(every: Duration, notifier: Arc<Notifier>, current: Arc<Mutex<Option<Watched>>>) {
    let mut tick = tokio::time::interval(every / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stuck_logged = false;
    let mut last_status = String::new();
    loop {
        tick.tick().await;
        let (verdict, status) = match &*lock(&current) {
            Some(w) => (w.liveness.check(tokio::time::Instant::now()), Some(summary(&w.status))),
            // Between two configurations: nothing is polling, nothing can be stuck.
            None => (Ok(()), None),
        };
        match verdict {
            Ok(()) => {
                notifier.watchdog();
                stuck_logged = false;
                if let Some(s) = status.filter(|s| *s != last_status) {
                    notifier.status(&s);
                    last_status = s;
                }
            }
            Err(stuck) => {
                if !stuck_logged {
                    tracing::error!("bus engine stuck: {stuck}; no longer feeding the systemd watchdog, which restarts pmtr");
                    notifier.status(&format!("stuck: {stuck}"));
                    notifier.watchdog_trigger();
                    stuck_logged = true;
                }
            }
        }
    }
}

/// Everything one configuration runs: storage, triggers and relays, the buses, alerts, MQTT,
/// the status API. It owns each part from the moment it starts, so that a part that cannot
/// start stops those before it ([`Generation::stop`] stops what is there).
struct Generation {
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    storage: Option<Storage>,
    /// The control socket's task.
    control: Option<JoinHandle<()>>,
    /// The buses, the relays and the way out.
    pipeline: Option<Pipeline>,
    /// The energy books, beside the flow (they read the status board).
    energy: Option<crate::energy::run::Energy>,
    health: Option<JoinHandle<()>>,
    summary: Option<JoinHandle<()>>,
    alerting: Option<crate::alert::run::Alerting>,
    mqtt: Option<Mqtt>,
    status_api: Option<JoinHandle<()>>,
    /// The buses' state and progress, for the watchdog and `systemctl status`.
    status: Arc<StatusBoard>,
    liveness: Arc<Liveness>,
}

impl Generation {
    /// Starts `config`; if a part cannot start, what started before it stops (the relays
    /// handed over as they are, back into `handover`, for the previous configuration).
    async fn start(
        config: &Config,
        gpio: Option<&mut (dyn Gpio + 'static)>,
        unclean: bool,
        handover: &mut Option<Handover>,
    ) -> anyhow::Result<Generation> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut g = Generation {
            stop_tx,
            stop_rx,
            storage: None,
            control: None,
            pipeline: None,
            energy: None,
            health: None,
            summary: None,
            alerting: None,
            mqtt: None,
            status_api: None,
            status: Arc::default(),
            liveness: Arc::default(),
        };
        match g.start_parts(config, gpio, unclean, handover).await {
            Ok(()) => {
                tracing::info!(
                    gateway = %config.gateway.name,
                    buses = config.buses.len(),
                    meters = config.meters.len(),
                    version = env!("CARGO_PKG_VERSION"),
                    "pmtr started"
                );
                Ok(g)
            }
            Err(e) => {
                if let Some(h) = g.stop(true).await {
                    *handover = Some(h);
                }
                Err(e)
            }
        }
    }

    /// The parts in the order that keeps the relays first: storage, the relays and triggers,
    /// the buses, then what only observes.
    async fn start_parts(
        &mut self,
        config: &Config,
        gpio: Option<&mut (dyn Gpio + 'static)>,
        unclean: bool,
        handover: &mut Option<Handover>,
    ) -> anyhow::Result<()> {
        // The status API only observes (and relays have the control socket): a port that is
        // taken costs the API, never the metering or the relays.
        let status_server = bind_status_api(config);
        // Into storage nothing waits: a full queue drops the record (counted, logged).
        let (store, store_rx) = crate::store::Intake::channel(4096);
        // Readings and changes leave the relays through one outlet: logged, copied to MQTT (a
        // broadcast that never waits: a slow MQTT task lags and counts what it missed), stored.
        let out = Outlet::new(store.clone()).logging(config.gateway.log_readings);
        let (out, records) = match &config.mqtt {
            Some(_) => {
                let (out, copies) = out.with_copies(1024);
                (out, Some(copies))
            }
            None => (out, None),
        };
        let storage = self.storage.insert(Storage::start(config, store_rx)?);
        let store_events = storage.events.subscribe();
        let sinks = storage.sinks.clone();
        // Triggers and relays come up before the buses: every relay is at its restored level
        // before the first reading.
        let (energy_tx, energy_rx) = crate::energy::run::requests();
        let triggers = self.start_relays(config, gpio, out.clone(), handover, energy_tx)?;
        // Relays first: with triggers the buses send to the trigger task, which hands each
        // reading on once the relays have seen it.
        let pipeline = self.pipeline.insert(Pipeline::start(config, triggers, out, self.stop_rx.clone()));
        self.status = pipeline.engine.status.clone();
        self.liveness = pipeline.engine.liveness.clone();
        let modbus_server = start_modbus_server(config, &pipeline.engine, self.stop_rx.clone()).await;
        let triggers = pipeline.triggers.as_ref();
        let changes = triggers.map(|t| t.events.subscribe());
        let tally = Arc::new(Tally::default());
        if let Some(t) = triggers {
            tokio::spawn(tally.clone().run(t.events.subscribe()));
        }
        let commands = triggers.map(|t| t.commands.clone());
        self.start_beside(config, &store, energy_rx, &sinks);
        self.summary = Some(tokio::spawn(log_summaries(self.status.clone(), sinks.clone())));
        let book = self.energy.as_ref().map(|e| e.book.clone());
        // What only observes, each with its own bounded way in.
        self.alerting = match &config.email {
            Some(email) => {
                let sources = crate::alert::run::Sources {
                    changes,
                    store: store_events,
                    sinks: sinks.clone(),
                    meters: self.status.clone(),
                    unclean,
                };
                Some(crate::alert::run::Alerting::start(config, email, sources, self.stop_rx.clone())?)
            }
            None => {
                tracing::info!("no [alerts.email]: nothing is mailed (the events are in this log)");
                None
            }
        };
        if let (Some(settings), Some(records)) = (&config.mqtt, &records) {
            let sources = crate::mqtt::run::Sources {
                records: records.subscribe(),
                meters: self.status.clone(),
                commands: commands.clone(),
                energy: book.clone(),
            };
            self.mqtt = Some(Mqtt::start(config, settings, sources, self.stop_rx.clone())?);
        }
        self.status_api = status_server.map(|server| {
            let mut sources = crate::status::http::Sources::new(config, self.status.clone());
            sources.sinks = sinks;
            sources.commands = commands;
            sources.alerts = self.alerting.as_ref().map(|a| a.counters.clone());
            sources.mqtt = self.mqtt.as_ref().map(|m| m.counters.clone());
            sources.modbus_server = modbus_server;
            sources.energy = book;
            sources.tally = tally;
            if let Ok(addr) = server.local_addr() {
                tracing::info!(
                    listen = %addr,
                    token = config.status.token.is_some(),
                    tls = config.status.tls.is_some(),
                    max_connections = config.status.max_connections,
                    "status API ready"
                );
            }
            tokio::spawn(server.run(Arc::new(sources), self.stop_rx.clone()))
        });
        Ok(())
    }

    /// The control socket, the GPIO and the trigger task, when the configuration has relays
    /// or triggers (none: the pins of a previous configuration are let go).
    fn start_relays(
        &mut self,
        config: &Config,
        gpio: Option<&mut (dyn Gpio + 'static)>,
        out: Outlet,
        handover: &mut Option<Handover>,
        energy: mpsc::Sender<crate::control::Command>,
    ) -> anyhow::Result<Option<Triggers>> {
        if config.relays.is_empty() && config.triggers.is_empty() {
            if let Some(h) = handover.take() {
                // No relay left in the new configuration: every pin of the old one is let go
                // per its relay's `on_shutdown`.
                h.release();
            }
            return Ok(None);
        }
        // The control socket first: a second pmtr on the same state folder stops here, before
        // it touches a relay.
        let server = match ControlServer::bind(&config.gateway.control_socket) {
            Ok(server) => Some(server),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(e.into()),
            Err(e) => {
                tracing::error!(error = %e,
                    "no control socket: `pmtr relay` and `pmtr trigger` will not reach this daemon");
                None
            }
        };
        let mut opened: Box<dyn Gpio>;
        let gpio: &mut (dyn Gpio + 'static) = match gpio {
            Some(g) => g,
            None => {
                opened = if config.relays.is_empty() {
                    Box::new(FakeBoard::new().gpio())
                } else {
                    crate::relay::open_gpio(&config.gateway)?.0
                };
                opened.as_mut()
            }
        };
        let t = Triggers::start_after(config, gpio, out, handover)?;
        tracing::info!(relays = config.relays.len(), triggers = config.triggers.len(), "triggers ready");
        if let Some(server) = server {
            tracing::info!(socket = %server.path().display(), "control socket ready");
            // `pmtr energy set` goes to the energy books, the rest to the trigger task.
            let (routed, from_socket) = mpsc::channel(16);
            tokio::spawn(crate::energy::run::route(from_socket, t.commands.clone(), energy));
            self.control = Some(tokio::spawn(server.run(routed, self.stop_rx.clone())));
        }
        Ok(Some(t))
    }

    /// Beside the flow, reading the status board: the energy books (`pmtr_energy`,
    /// `pmtr_energy_period`) and the health points (`pmtr_bus`, `pmtr_sink`), both through
    /// storage, never waiting.
    fn start_beside(
        &mut self,
        config: &Config,
        store: &crate::store::Intake,
        energy: mpsc::Receiver<crate::control::Command>,
        sinks: &[Arc<crate::store::SinkStatus>],
    ) {
        let status = &self.status;
        let stop = &self.stop_rx;
        self.energy = Some(crate::energy::run::Energy::start(
            config,
            status.clone(),
            energy,
            store.clone(),
            stop.clone(),
        ));
        self.health = config.gateway.health_interval.map(|every| {
            tokio::spawn(crate::store::health::run(
                every,
                status.clone(),
                sinks.to_vec(),
                store.clone(),
                stop.clone(),
            ))
        });
    }

    /// Stops everything that started, in the order that loses nothing: the buses after their
    /// transaction in flight, then the readings they sent through triggers and storage
    /// (written, or spooled). The relays go per `on_shutdown`, or, for a reload (`handover`),
    /// stay as they are and are returned, with the trigger state in memory, for the next
    /// generation.
    async fn stop(self, handover: bool) -> Option<Handover> {
        let _ = self.stop_tx.send(true);
        if let Some(s) = self.summary {
            s.abort();
        }
        if let Some(e) = self.energy {
            e.join().await;
        }
        if let Some(h) = self.health {
            let _ = h.await;
        }
        if let Some(c) = self.control {
            let _ = c.await;
        }
        let mut handed = None;
        if let Some(p) = self.pipeline {
            handed = p.stop(handover).await;
        }
        if let Some(s) = self.storage {
            s.join().await;
        }
        if let Some(a) = self.alerting {
            a.join().await;
        }
        if let Some(m) = self.mqtt {
            m.join().await;
        }
        if let Some(s) = self.status_api {
            let _ = s.await;
        }
        handed
    }
}

/// The status API's socket, when it is enabled and free (a port that is taken is logged and
/// costs the API only).
fn bind_status_api(config: &Config) -> Option<StatusServer> {
    if !config.status.enabled {
        return None;
    }
    match StatusServer::bind(
        config.status.listen,
        config.status.token.as_ref().map(|t| t.expose().to_owned()),
    ) {
        Ok(server) => Some(
            server
                .with_limits(crate::status::http::Limits {
                    max_connections: config.status.max_connections,
                    ..Default::default()
                })
                .with_tls(config.status.tls.as_ref().map(|t| t.server.clone())),
        ),
        Err(e) => {
            tracing::error!("{e}; running without the status API");
            None
        }
    }
}

/// The Modbus TCP server, when configured: it reads the status board and queues requests for
/// the port tasks; a port that is taken costs the server, never the metering.
async fn start_modbus_server(
    config: &Config,
    engine: &crate::bus::BusEngine,
    stop: watch::Receiver<bool>,
) -> Option<(Arc<crate::modbus_server::Counters>, std::net::SocketAddr)> {
    let settings = config.modbus_server.as_ref()?;
    match crate::modbus_server::ModbusServer::bind(settings, &engine.buses, engine.status.clone()).await {
        Ok((server, listener)) => {
            tracing::info!(listen = %server.local_addr(), allow = ?settings.allow.iter().map(ToString::to_string).collect::<Vec<_>>(), "Modbus TCP server ready");
            let counters = (server.counters.clone(), server.local_addr());
            tokio::spawn(server.run(listener, stop));
            Some(counters)
        }
        Err(e) => {
            tracing::error!("{e}; running without the Modbus TCP server");
            None
        }
    }
}

/// One line per meter and per sink every [`SUMMARY_EVERY`]: counters instead of log floods.
async fn log_summaries(status: Arc<StatusBoard>, sinks: Vec<Arc<crate::store::SinkStatus>>) {
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        for (name, s) in status.snapshot() {
            let c = &s.counters;
            tracing::info!(
                meter = %name, port = s.port.as_deref().unwrap_or("-"), state = ?s.state,
                readings = c.readings, requests = c.requests, timeouts = c.timeouts, crc_errors = c.crc_errors,
                exceptions = c.exceptions, "meter summary"
            );
        }
        for sink in &sinks {
            let s = sink.snapshot();
            tracing::info!(
                sink = %sink.name, healthy = s.healthy, readings = s.readings_written, points = s.points_written,
                spooled = s.spool_readings, spool_bytes = s.spool_bytes, dropped = s.spool_dropped,
                rejected = s.rejected, "sink summary"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn drain(rx: &UnixDatagram) -> Vec<String> {
        let mut out = vec![];
        let mut buf = [0u8; 512];
        while let Ok(n) = rx.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_is_fed_while_the_ports_make_progress_and_starved_when_one_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_nonblocking(true).unwrap();
        let notifier = Arc::new(Notifier::to_path(&path).unwrap());
        let liveness = Arc::new(Liveness::default());
        let beat = liveness.register("bus house port /dev/ttyUSB0", Duration::from_secs(60));
        let current = Arc::new(Mutex::new(Some(Watched {
            liveness: liveness.clone(),
            status: Arc::new(StatusBoard::default()),
        })));
        let dog = tokio::spawn(feed_watchdog(Duration::from_secs(30), notifier, current.clone()));
        // Busy in short stretches, idle in between: pinged every 15 s.
        for _ in 0..8 {
            beat.busy();
            tokio::time::sleep(Duration::from_secs(10)).await;
            beat.idle();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let fed = drain(&rx);
        // t = 0, 15 … 105, and 120 if the tick comes before this look.
        let pings = fed.iter().filter(|m| *m == "WATCHDOG=1").count();
        assert!((8..=9).contains(&pings), "{fed:?}");
        assert!(fed.iter().any(|m| m == "STATUS=0 of 0 meter(s) answering"), "{fed:?}");
        // The port hangs in a transaction: fed until its 60 s are up, then never again.
        beat.busy();
        tokio::time::sleep(Duration::from_secs(61)).await;
        let before = drain(&rx);
        let pings = before.iter().filter(|m| *m == "WATCHDOG=1").count();
        assert!((4..=5).contains(&pings), "{before:?}");
        tokio::time::sleep(Duration::from_secs(300)).await;
        let after = drain(&rx);
        assert!(!after.iter().any(|m| m == "WATCHDOG=1"), "{after:?}");
        assert!(after.iter().any(|m| m == "WATCHDOG=trigger"), "{after:?}");
        assert!(
            after.iter().any(|m| m.starts_with("STATUS=stuck: bus house port /dev/ttyUSB0")),
            "{after:?}"
        );
        // Between two configurations (a reload) nothing polls: fed again.
        *lock(&current) = None;
        tokio::time::sleep(Duration::from_secs(16)).await;
        assert!(drain(&rx).iter().any(|m| m == "WATCHDOG=1"));
        dog.abort();
    }
}
