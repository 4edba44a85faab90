//! The MQTT task: one task drives rumqttc's event loop (connect, reconnect with back-off,
//! keep-alive), another turns readings and state changes into messages.
//!
//! Nothing here can hold up a poll or a relay: records arrive on a broadcast channel (a slow
//! MQTT task only lags, and counts what it missed), and messages go to rumqttc's bounded queue
//! with `try_publish` (a full queue drops the message and counts it). While the broker is away,
//! readings are dropped and counted at once (the database keeps them); on every connection the
//! retained states (availability, relays, triggers, discovery) are published again from what
//! pmtr knows then, so that nothing stale stays on the broker.

use super::{Message, Topics};
use crate::backoff::Backoff;
use crate::bus::status::{MeterEvent, MeterState, StatusBoard};
use crate::config::{Config, MqttSettings};
use crate::control::{Caller, Command, Request, Response};
use crate::reading::Record;
use crate::sync::Locked;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, Transport};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// The first wait before connecting again; doubled up to `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How long a stop waits for the last messages (offline) to leave.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What the status API shows of MQTT.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MqttCounters {
    /// `host:port`.
    pub broker: String,
    pub connected: bool,
    /// Successful connections since start (1 means never reconnected).
    pub connections: u64,
    /// Messages handed to the client.
    pub published: u64,
    /// Messages dropped: the broker away or the queue full (readings only are ever dropped for
    /// good; states are published again at the next connection).
    pub dropped: u64,
    pub last_error: Option<String>,
}

/// What MQTT publishes from.
pub struct Sources {
    /// Every reading and state change (after the triggers have seen it).
    pub records: broadcast::Receiver<Record>,
    /// Meter availability: all of it at each connection, then each change as the board tells
    /// it.
    pub meters: Arc<StatusBoard>,
    /// Relay and trigger states at each connection (None without triggers and relays).
    pub commands: Option<mpsc::Sender<Command>>,
    /// The energy books, published every [`ENERGY_EVERY`] and at each connection.
    pub energy: Option<Arc<Mutex<crate::energy::Book>>>,
}

/// How often each meter's energy books are published.
pub const ENERGY_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("mqtt.ca_file {file}: {error}")]
    CaFile { file: PathBuf, error: String },
    #[error("mqtt TLS: {0}")]
    Tls(String),
}

/// The running MQTT tasks.
pub struct Mqtt {
    pub counters: Arc<Mutex<MqttCounters>>,
    publisher: tokio::task::JoinHandle<()>,
    connection: tokio::task::JoinHandle<()>,
}

/// What the event loop tells the publisher.
enum PublisherEvent {
    Connected,
    /// Home Assistant restarted (it published `online` on its status topic).
    HomeAssistantOnline,
}

/// rustls with the ring provider, the built-in web roots and the certificates of `ca_file`.
fn tls_config(settings: &MqttSettings) -> Result<rustls::ClientConfig, StartError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(file) = &settings.ca_file {
        let err = |error: String| StartError::CaFile { file: file.clone(), error };
        let pem = std::fs::read(file).map_err(|e| err(e.to_string()))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| err(e.to_string()))?;
            roots.add(cert).map_err(|e| err(e.to_string()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl Mqtt {
    /// Starts connecting to the broker; returns at once (a broker that is away is retried in
    /// the background).
    pub fn start(
        config: &Config,
        settings: &MqttSettings,
        sources: Sources,
        stop: watch::Receiver<bool>,
    ) -> Result<Mqtt, StartError> {
        let topics = Topics::new(settings, &config.gateway.name);
        let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
        options.set_keep_alive(settings.keep_alive);
        options.set_clean_session(true);
        options.set_max_packet_size(64 * 1024, 64 * 1024);
        options.set_last_will(LastWill::new(topics.status(), super::OFFLINE, QoS::AtLeastOnce, true));
        if let Some(user) = &settings.username {
            options.set_credentials(user, settings.password.as_ref().map_or("", |p| p.expose()));
        }
        if settings.tls {
            let tls = tls_config(settings)?;
            options
                .set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(tls))));
        }
        let (client, mut eventloop) = AsyncClient::new(options, settings.queue);
        eventloop.network_options.set_connection_timeout(10);
        let broker = format!("{}:{}", settings.host, settings.port);
        let counters = Arc::new(Mutex::new(MqttCounters { broker: broker.clone(), ..Default::default() }));
        let (link_tx, link_rx) = mpsc::channel(16);
        let (done_tx, done_rx) = watch::channel(false);
        let connection = tokio::spawn(drive(
            eventloop,
            topics.clone(),
            settings.clone(),
            counters.clone(),
            link_tx,
            done_rx,
        ));
        let publisher = Publisher {
            client,
            topics,
            discovery: settings.discovery.then(|| (*config).clone()),
            reading_qos: qos(settings.qos),
            retain_readings: settings.retain,
            counters: counters.clone(),
            meters_online: BTreeMap::new(),
            availability_stale: false,
        };
        let publisher = tokio::spawn(publisher.run(sources, link_rx, stop, done_tx));
        tracing::info!(broker = %broker, tls = settings.tls, prefix = %settings.topic_prefix,
            discovery = settings.discovery, "mqtt: connecting");
        Ok(Mqtt { counters, publisher, connection })
    }

    /// Waits until `offline` has been sent (or the broker is away) and the connection closed.
    pub async fn join(self) {
        let _ = self.publisher.await;
        let mut connection = self.connection;
        if tokio::time::timeout(STOP_GRACE, &mut connection).await.is_err() {
            connection.abort();
        }
    }
}

/// The waits between connection attempts: 1 s doubling to `max`, each drawn between half and
/// all of it, so that many gateways do not come back in step after a broker restart.
pub fn reconnect_backoff(max: Duration) -> Backoff {
    Backoff::new(FIRST_BACKOFF, max).with_jitter(0.5)
}

/// The connection: polls the event loop, waits with back-off after a failure.
async fn drive(
    mut eventloop: rumqttc::EventLoop,
    topics: Topics,
    settings: MqttSettings,
    counters: Arc<Mutex<MqttCounters>>,
    link: mpsc::Sender<PublisherEvent>,
    mut done: watch::Receiver<bool>,
) {
    let backoff = reconnect_backoff(settings.max_backoff);
    let mut failures = 0u32;
    let mut failing = false;
    let ha_status = topics.home_assistant_status();
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = async { let _ = done.wait_for(|d| *d).await; } => return,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                if failing {
                    tracing::info!(broker = %counters.locked().broker, "mqtt: connected again");
                } else {
                    tracing::info!(broker = %counters.locked().broker, "mqtt: connected");
                }
                failing = false;
                {
                    let mut c = counters.locked();
                    c.connected = true;
                    c.connections += 1;
                }
                if link.send(PublisherEvent::Connected).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p)))
                if p.topic == ha_status && p.payload.as_ref() == b"online" =>
            {
                let _ = link.try_send(PublisherEvent::HomeAssistantOnline);
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                let message = e.to_string();
                {
                    let mut c = counters.locked();
                    c.connected = false;
                    c.last_error = Some(message.clone());
                }
                if !failing {
                    tracing::warn!(broker = %counters.locked().broker, error = %message,
                        "mqtt: no connection to the broker; readings are not published until it is back \
                         (trying again with back-off)");
                    failing = true;
                } else {
                    tracing::debug!(error = %message, "mqtt: connection attempt failed");
                }
                failures = failures.saturating_add(1);
                let wait = backoff.wait(failures, rand::random::<f64>());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = async { let _ = done.wait_for(|d| *d).await; } => return,
                }
            }
        }
    }
}

struct Publisher {
    client: AsyncClient,
    topics: Topics,
    /// The configuration, when discovery documents are sent.
    discovery: Option<Config>,
    reading_qos: QoS,
    retain_readings: bool,
    counters: Arc<Mutex<MqttCounters>>,
    /// What was last published of each meter's availability.
    meters_online: BTreeMap<String, bool>,
    /// An availability could not be handed to the client (its queue full): the board is read
    /// again at the next record, until all are out.
    availability_stale: bool,
}

impl Publisher {
    async fn run(
        mut self,
        mut sources: Sources,
        mut link: mpsc::Receiver<PublisherEvent>,
        mut stop: watch::Receiver<bool>,
        done: watch::Sender<bool>,
    ) {
        let mut meter_events = sources.meters.subscribe();
        let mut meters_open = true;
        let mut records_open = true;
        let mut energy_tick = tokio::time::interval(ENERGY_EVERY);
        energy_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                l = link.recv() => match l {
                    Some(PublisherEvent::Connected) => self.on_connect(&sources).await,
                    Some(PublisherEvent::HomeAssistantOnline) => {
                        tracing::info!("mqtt: Home Assistant restarted: discovery sent again");
                        self.send_discovery();
                    }
                    None => break,
                },
                r = sources.records.recv(), if records_open => match r {
                    Ok(r) => {
                        if self.availability_stale {
                            self.meter_availability(&sources.meters, false);
                        }
                        self.on_record(&r);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => self.counters.locked().dropped += n,
                    Err(broadcast::error::RecvError::Closed) => records_open = false,
                },
                e = meter_events.recv(), if meters_open => match e {
                    Ok(e) => self.meter_event(&e),
                    // Changes were missed: the board, read once, says where every meter is now.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.meter_availability(&sources.meters, false),
                    Err(broadcast::error::RecvError::Closed) => meters_open = false,
                },
                _ = energy_tick.tick() => self.energy(&sources),
            }
        }
        // A clean stop says offline itself (the broker sends the last will only when the
        // connection is lost).
        if self.connected() {
            self.publish(self.topics.availability(false));
            let _ = self.client.try_disconnect();
        } else {
            let _ = done.send(true);
        }
        // Connected, the connection task ends when the disconnect has gone out (or is ended
        // after STOP_GRACE by `join`).
    }

    fn connected(&self) -> bool {
        self.counters.locked().connected
    }

    fn publish(&self, m: Message) -> bool {
        let q = if m.state { QoS::AtLeastOnce } else { self.reading_qos };
        match self.client.try_publish(m.topic, q, m.retain, m.payload) {
            Ok(()) => {
                self.counters.locked().published += 1;
                true
            }
            Err(_) => {
                self.counters.locked().dropped += 1;
                false
            }
        }
    }

    fn send_discovery(&self) {
        if let Some(config) = &self.discovery {
            for m in self.topics.discovery_documents(config) {
                self.publish(m);
            }
        }
    }

    async fn on_connect(&mut self, sources: &Sources) {
        self.publish(self.topics.availability(true));
        if self.discovery.is_some() {
            if let Err(e) = self.client.try_subscribe(self.topics.home_assistant_status(), QoS::AtLeastOnce) {
                tracing::debug!(error = %e, "mqtt: cannot subscribe to Home Assistant's status");
            }
            self.send_discovery();
        }
        self.meter_availability(&sources.meters, true);
        self.energy(sources);
        let Some(commands) = &sources.commands else { return };
        let (reply, answer) = oneshot::channel();
        let asked = commands.send(Command::within(
            Request::Status,
            Caller::Internal("mqtt"),
            reply,
            Duration::from_secs(5),
        ));
        match tokio::time::timeout(Duration::from_secs(5), async {
            asked.await.ok()?;
            answer.await.ok()
        })
        .await
        {
            Ok(Some(Response::Status { triggers, relays, neutral })) => {
                for n in &neutral {
                    for m in self.topics.neutral(n) {
                        self.publish(m);
                    }
                }
                for r in &relays {
                    for m in self.topics.relay(r) {
                        self.publish(m);
                    }
                }
                for t in &triggers {
                    for m in self.topics.trigger(t) {
                        self.publish(m);
                    }
                }
            }
            _ => tracing::warn!(
                "mqtt: the trigger task did not give the relay states; they follow at their next change"
            ),
        }
    }

    fn on_record(&mut self, r: &Record) {
        if !self.connected() {
            // The database keeps it; the broker is away.
            self.counters.locked().dropped += 1;
            return;
        }
        match r {
            Record::Reading(r) => {
                self.publish(self.topics.reading(r, self.retain_readings));
            }
            Record::Change(c) => {
                for m in self.topics.change(c) {
                    self.publish(m);
                }
            }
            // The gateway's own health goes to the database; the broker gets the status API's
            // view through the readings and states.
            Record::Health(_) => {}
            // The energy books go to the broker from the books themselves.
            Record::Energy(_) => {}
        }
    }

    /// Publishes each meter's energy books.
    fn energy(&self, sources: &Sources) {
        let Some(book) = &sources.energy else { return };
        if !self.connected() {
            return;
        }
        let views = book.locked().views(chrono::Utc::now());
        for e in &views {
            self.publish(self.topics.energy(e));
        }
    }

    /// Publishes each meter's availability when it changed (or every one, with `all`), from the
    /// board read once (at a connection, or after missed events).
    fn meter_availability(&mut self, meters: &StatusBoard, all: bool) {
        if !self.connected() {
            return;
        }
        self.availability_stale = false;
        for e in meters.events_now() {
            self.availability(e.meter, e.state == MeterState::Ok, all);
        }
    }

    /// One meter's state changed: its availability, if that changed.
    fn meter_event(&mut self, e: &MeterEvent) {
        if self.connected() {
            self.availability(e.meter.clone(), e.state == MeterState::Ok, false);
        }
    }

    fn availability(&mut self, name: String, online: bool, all: bool) {
        let changed = self.meters_online.get(&name) != Some(&online);
        if all || changed {
            if self.publish(self.topics.meter_available(&name, online)) {
                self.meters_online.insert(name, online);
            } else {
                self.availability_stale = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_to_its_ceiling_with_jitter() {
        let b = reconnect_backoff(Duration::from_secs(60));
        let waits: Vec<u64> = (1..=9).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // The fourth wait is 8 s before jitter.
        assert_eq!(b.wait(4, 0.0), Duration::from_secs(4));
        assert_eq!(b.wait(4, 1.0), Duration::from_secs(8));
        assert_eq!(b.wait(4, 7.0), Duration::from_secs(8));
    }

    /// With the broker away, a reading is counted as dropped at once and nothing waits: the
    /// publisher never blocks on the broker (tokio's paused clock: no real time passes).
    #[tokio::test(start_paused = true)]
    async fn a_broker_that_is_away_costs_a_dropped_count_not_a_wait() {
        let config = crate::config::load_str(
            "[[bus]]\nname = \"b\"\nport = \"/dev/null\"\n[[meter]]\nname = \"m\"\nmodel = \"pzem-016\"\naddress = 4\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = 1\nqueue = 10\n",
            "t.toml",
        )
        .unwrap();
        let (records, rx) = broadcast::channel(16);
        let (stop_tx, stop) = watch::channel(false);
        let meters = Arc::new(StatusBoard::default());
        let mqtt = Mqtt::start(
            &config,
            config.mqtt.as_ref().unwrap(),
            Sources { records: rx, meters, commands: None, energy: None },
            stop,
        )
        .unwrap();
        let reading = crate::reading::Reading {
            meter: "m".into(),
            model: crate::meter::Model::Pzem016,
            time: chrono::Utc::now(),
            samples: vec![],
            quality: Default::default(),
        };
        for _ in 0..100 {
            records.send(Record::Reading(reading.clone())).unwrap();
        }
        let t0 = tokio::time::Instant::now();
        while mqtt.counters.locked().dropped < 100 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(t0.elapsed() < Duration::from_millis(200), "{:?}", t0.elapsed());
        let c = mqtt.counters.locked().clone();
        assert!(!c.connected && c.published == 0, "{c:?}");
        stop_tx.send(true).unwrap();
        mqtt.join().await;
    }
}
