//! `pmtr run`: the daemon.

use crate::bus::Engine;
use crate::config::Config;
use crate::control::ControlServer;
use crate::mqtt::run::Mqtt;
use crate::reading::{Reading, Record};
use crate::relay::{FakeBoard, Gpio};
use crate::status::http::StatusServer;
use crate::status::Tally;
use crate::store::Storage;
use crate::trigger::run::Triggers;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// How often a one-line summary per meter is logged (counters instead of log floods).
const SUMMARY_EVERY: Duration = Duration::from_secs(600);

/// Runs the gateway until SIGINT/SIGTERM (or until `stop` resolves).
pub async fn run(config: Config, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    run_with(config, None, stop).await
}

/// As [`run`], with the relays on `gpio` instead of the configured backend (tests, demo).
pub async fn run_with(
    config: Config,
    gpio: Option<Box<dyn Gpio>>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if let Err(e) = std::fs::create_dir_all(&config.gateway.state_dir) {
        tracing::warn!(dir = %config.gateway.state_dir.display(), error = %e,
            "cannot create the state directory; the port map will not be remembered");
    }
    // The status API only observes (and relays have the control socket): a port that is
    // taken costs the API, never the metering or the relays.
    let status_server = if config.status.enabled {
        match StatusServer::bind(config.status.listen, config.status.token.clone()) {
            Ok(server) => Some(server),
            Err(e) => {
                tracing::error!("{e}; running without the status API");
                None
            }
        }
    } else {
        None
    };
    // A marker of the run in progress: found at start, the previous run did not stop cleanly.
    let marker = crate::alert::run::running_marker(&config);
    let unclean = marker.exists();
    if unclean {
        tracing::warn!("the previous run did not stop cleanly (a crash, a kill or a power cut)");
    }
    if let Err(e) = std::fs::write(&marker, format!("{}\n", std::process::id())) {
        tracing::warn!(file = %marker.display(), error = %e, "cannot write the run marker");
    }
    let (store_tx, store_rx) = mpsc::channel::<Record>(4096);
    // With MQTT, records pass a tee on their way to storage: a broadcast that never waits
    // (a slow MQTT task lags and counts what it missed).
    let (records, store_rx) = match &config.mqtt {
        Some(_) => {
            let (tee_tx, _) = broadcast::channel::<Record>(1024);
            let (to_storage, from_tee) = mpsc::channel::<Record>(4096);
            tokio::spawn(tee(store_rx, tee_tx.clone(), to_storage));
            (Some(tee_tx), from_tee)
        }
        None => (None, store_rx),
    };
    let storage = Storage::start(&config, store_rx)?;
    let store_events = storage.events.subscribe();
    let sinks = storage.sinks.clone();
    // Triggers and relays come up before the buses: every relay is at its restored level
    // before the first reading.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_rx_alerts = stop_rx.clone();
    let stop_rx_mqtt = stop_rx.clone();
    let stop_rx_status = stop_rx.clone();
    let mut control = None;
    let triggers = if config.relays.is_empty() && config.triggers.is_empty() {
        None
    } else {
        // The control socket first: a second pmtr on the same state folder stops here, before
        // it touches a relay.
        match ControlServer::bind(&config.gateway.control_socket) {
            Ok(server) => control = Some(server),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(e.into()),
            Err(e) => tracing::error!(error = %e,
                "no control socket: `pmtr relay` and `pmtr trigger` will not reach this daemon"),
        }
        let mut gpio = match gpio {
            Some(g) => g,
            None if config.relays.is_empty() => Box::new(FakeBoard::new().gpio()),
            None => crate::relay::open_gpio(&config.gateway)?.0,
        };
        let t = Triggers::start(&config, gpio.as_mut(), store_tx.clone(), true)?;
        tracing::info!(relays = config.relays.len(), triggers = config.triggers.len(), "triggers ready");
        Some(t)
    };
    let control = match (control, &triggers) {
        (Some(server), Some(t)) => {
            tracing::info!(socket = %server.path().display(), "control socket ready");
            Some(tokio::spawn(server.run(t.commands.clone(), stop_rx.clone())))
        }
        _ => None,
    };
    // With triggers, readings go straight from the buses to the trigger task, which passes
    // each on to storage once the relays have seen it: no hop stands before a relay.
    let (tx, mut rx) = mpsc::channel::<Reading>(1024);
    let engine = match &triggers {
        Some(t) => {
            drop(tx); // the consumer below then ends at once, letting go of its storage sender
            Engine::start(&config, t.readings.clone(), stop_rx)
        }
        None => Engine::start(&config, tx, stop_rx),
    };
    let status = engine.status.clone();
    let alerting = match &config.email {
        Some(email) => {
            let sources = crate::alert::run::Sources {
                changes: triggers.as_ref().map(|t| t.events.subscribe()),
                store: store_events,
                sinks: sinks.clone(),
                meters: status.clone(),
                unclean,
            };
            Some(crate::alert::run::Alerting::start(&config, email, sources, stop_rx_alerts)?)
        }
        None => {
            tracing::info!("no [alerts.email]: nothing is mailed (the events are in this log)");
            None
        }
    };
    let tally = Arc::new(Tally::default());
    if let Some(t) = &triggers {
        tokio::spawn(tally.clone().run(t.events.subscribe()));
    }
    let commands = triggers.as_ref().map(|t| t.commands.clone());
    let mqtt = match (&config.mqtt, &records) {
        (Some(settings), Some(records)) => {
            let sources = crate::mqtt::run::Sources {
                records: records.subscribe(),
                meters: status.clone(),
                commands: commands.clone(),
            };
            Some(Mqtt::start(&config, settings, sources, stop_rx_mqtt)?)
        }
        _ => None,
    };
    drop(records);
    let status_api = status_server.map(|server| {
        let mut sources = crate::status::http::Sources::new(&config, status.clone());
        sources.sinks = sinks.clone();
        sources.commands = commands.clone();
        sources.alerts = alerting.as_ref().map(|a| a.counters.clone());
        sources.mqtt = mqtt.as_ref().map(|m| m.counters.clone());
        sources.tally = tally.clone();
        if let Ok(addr) = server.local_addr() {
            tracing::info!(listen = %addr, token = config.status.token.is_some(), "status API ready");
        }
        tokio::spawn(server.run(Arc::new(sources), stop_rx_status))
    });
    tracing::info!(
        gateway = %config.gateway.name,
        buses = config.buses.len(),
        meters = config.meters.len(),
        version = env!("CARGO_PKG_VERSION"),
        "pmtr started"
    );
    // Health points (`pmtr_bus`, `pmtr_sink`) through storage, like readings.
    let health = config.gateway.health_interval.map(|every| {
        tokio::spawn(crate::store::health::run(
            every,
            status.clone(),
            sinks.clone(),
            store_tx.clone(),
            stop_tx.subscribe(),
        ))
    });
    let log_readings = config.gateway.log_readings;
    let consumer = tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            if log_readings {
                tracing::info!("{r}");
            }
            if store_tx.send(r.into()).await.is_err() {
                tracing::error!("storage stopped: readings are no longer written");
                break;
            }
        }
    });
    let summary = tokio::spawn(async move {
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
    });
    stop.await;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    engine.join().await;
    summary.abort();
    if let Some(h) = health {
        let _ = h.await;
    }
    let _ = consumer.await;
    if let Some(c) = control {
        let _ = c.await;
    }
    if let Some(t) = triggers {
        t.join().await;
    }
    storage.join().await;
    if let Some(a) = alerting {
        a.join().await;
    }
    if let Some(m) = mqtt {
        m.join().await;
    }
    if let Some(s) = status_api {
        let _ = s.await;
    }
    let _ = std::fs::remove_file(&marker);
    tracing::info!("stopped");
    Ok(())
}

/// Passes every record on to storage, and a copy to `copies` (never waiting on it).
async fn tee(
    mut from: mpsc::Receiver<Record>,
    copies: broadcast::Sender<Record>,
    storage: mpsc::Sender<Record>,
) {
    while let Some(r) = from.recv().await {
        if copies.receiver_count() > 0 {
            let _ = copies.send(r.clone());
        }
        if storage.send(r).await.is_err() {
            break;
        }
    }
}
