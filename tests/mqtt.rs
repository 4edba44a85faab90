//! MQTT against a real broker: Debian's mosquitto on 127.0.0.1, started, stopped and killed by
//! PID (tests/support/servers.rs), with the whole gateway on a simulated PZEM. A test client
//! (rumqttc) subscribes and checks topics, payloads and retained flags: readings, relay and
//! trigger states, Home Assistant discovery documents, the last will of a killed `pmtr run`,
//! and the states published again after a broker restart.
//!
//! Without mosquitto these tests fail and say what to install (tests/run.sh installs it).

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/servers.rs"]
mod servers;
#[path = "support/smtp.rs"]
mod smtp;

use gateway::{set_volts, sim, Daemon, PIN};
use pmtr::relay::FakeBoard;
use pmtr::sim::Fault;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use servers::{Managed, Mosquitto};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const GATEWAY: &str = "mqtt-test";
const PREFIX: &str = "pmtr/mqtt-test";
const NODE: &str = "pmtr_mqtt-test";
const WAIT: Duration = Duration::from_secs(15);

const TRIGGER: &str = r#"
[[trigger]]
name = "overvoltage"
meter = "main"
when = "L1U > 253"
relays = ["motor"]
"#;

fn toml(dir: &Path, broker: u16, api: u16) -> String {
    let rest = format!(
        "{TRIGGER}\n[status]\nlisten = \"127.0.0.1:{api}\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {broker}\n\
         keep_alive = \"5s\"\nmax_backoff = \"1s\"\n"
    );
    gateway::toml(dir, GATEWAY, &rest)
}

#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: String,
    retain: bool,
}

/// A test client subscribed to pmtr's and Home Assistant's topics, keeping all it receives.
struct Watcher {
    seen: Arc<Mutex<Vec<Msg>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    async fn start(port: u16) -> Watcher {
        Watcher::start_as(port, None).await
    }

    /// A client with a user name and password.
    async fn start_as(port: u16, credentials: Option<(&str, &str)>) -> Watcher {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let id = format!(
            "watcher-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(1 << 20, 1 << 20);
        if let Some((user, password)) = credentials {
            options.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client.subscribe(format!("{PREFIX}/#"), QoS::AtLeastOnce).await.unwrap();
                        client.subscribe("homeassistant/#", QoS::AtLeastOnce).await.unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => log.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: String::from_utf8_lossy(&p.payload).into_owned(),
                        retain: p.retain,
                    }),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(WAIT, subscribed).await.expect("the test client subscribes").unwrap();
        Watcher { seen, task }
    }

    /// Waits for a message on `topic` whose payload passes `ok`.
    async fn wait(&self, topic: &str, ok: impl Fn(&Msg) -> bool) -> Msg {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(m) = self.seen.lock().unwrap().iter().find(|m| m.topic == topic && ok(m)) {
                return m.clone();
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = self
                    .seen
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|m| m.topic.starts_with(PREFIX))
                    .map(|m| format!("{} {} (retain {})", m.topic, m.payload, m.retain))
                    .collect();
                panic!(
                    "nothing as wanted on {topic} within {WAIT:?}; seen on {PREFIX}:\n{}",
                    seen.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn payload(&self, topic: &str, payload: &str) -> Msg {
        self.wait(topic, |m| m.payload == payload).await
    }

    fn all(&self) -> Vec<Msg> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a client subscribing now gets as retained on `topic`.
async fn retained(broker: u16, topic: &str) -> Msg {
    let w = Watcher::start(broker).await;
    w.wait(topic, |m| m.retain).await
}

/// The status, or None while the API is not up yet.
async fn try_api(port: u16) -> Option<Value> {
    let url = format!("http://127.0.0.1:{port}/api/status");
    let r =
        tokio::task::spawn_blocking(move || servers::try_http("GET", &url, &[], b"")).await.unwrap().ok()?;
    (r.status == 200).then(|| serde_json::from_slice(&r.body).unwrap())
}

async fn api(port: u16) -> Value {
    let url = format!("http://127.0.0.1:{port}/api/status");
    let r = tokio::task::spawn_blocking(move || servers::http_response("GET", &url, &[], b"")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

fn json(m: &Msg) -> Value {
    serde_json::from_str(&m.payload).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", m.topic, m.payload))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_states_and_discovery_reach_the_broker() {
    let broker = tokio::task::spawn_blocking(Mosquitto::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let meter = sim(dir.path(), 230.0);
    let board = FakeBoard::new();
    let api_port = servers::free_port();
    let config = pmtr::config::load_str(&toml(dir.path(), broker.port(), api_port), "t.toml").unwrap();
    let daemon = Daemon::start(config, &board);
    // A reading first, so that every retained state is out before the test client comes.
    let early = Watcher::start(broker.port()).await;
    early.wait(&format!("{PREFIX}/meter/main/state"), |_| true).await;
    drop(early);

    let w = Watcher::start(broker.port()).await;
    w.payload(&format!("{PREFIX}/status"), "online").await;
    w.payload(&format!("{PREFIX}/meter/main/availability"), "online").await;
    w.payload(&format!("{PREFIX}/relay/motor/state"), "ON").await;
    w.payload(&format!("{PREFIX}/trigger/overvoltage/state"), "OFF").await;
    // Retained: a client that comes later gets them at once.
    for (topic, payload) in [
        ("status", "online"),
        ("meter/main/availability", "online"),
        ("relay/motor/state", "ON"),
        ("trigger/overvoltage/state", "OFF"),
    ] {
        let m = retained(broker.port(), &format!("{PREFIX}/{topic}")).await;
        assert_eq!(m.payload, payload, "{topic}");
    }
    let attrs = json(&w.wait(&format!("{PREFIX}/relay/motor/attributes"), |_| true).await);
    assert_eq!((attrs["default"].as_str(), attrs["pin"].as_u64()), (Some("on"), Some(PIN as u64)), "{attrs}");

    // Home Assistant discovery: retained, one sensor per value, the relay and the trigger.
    let voltage = w.wait(&format!("homeassistant/sensor/{NODE}/main_L1U/config"), |_| true).await;
    assert!(voltage.retain, "discovery documents are retained");
    let v = json(&voltage);
    assert_eq!(v["state_topic"].as_str(), Some(format!("{PREFIX}/meter/main/state").as_str()));
    assert_eq!((v["device_class"].as_str(), v["unit_of_measurement"].as_str()), (Some("voltage"), Some("V")));
    assert_eq!(v["value_template"], "{{ value_json.L1U }}");
    assert_eq!(v["unique_id"].as_str(), Some(format!("{NODE}_main_L1U").as_str()));
    assert_eq!(v["availability"][0]["topic"].as_str(), Some(format!("{PREFIX}/status").as_str()));
    assert_eq!(v["device"]["model"], "PZEM-016");
    let energy = json(&w.wait(&format!("homeassistant/sensor/{NODE}/main_L1e/config"), |_| true).await);
    assert_eq!(
        (energy["device_class"].as_str(), energy["state_class"].as_str()),
        (Some("energy"), Some("total_increasing"))
    );
    assert_eq!(energy["unit_of_measurement"], "kWh");
    for object in ["main_L1I", "main_L1P", "main_L1f", "main_L1pf"] {
        w.wait(&format!("homeassistant/sensor/{NODE}/{object}/config"), |m| m.retain).await;
    }
    w.wait(&format!("homeassistant/binary_sensor/{NODE}/main_L1alarm/config"), |m| m.retain).await;
    let r =
        json(&w.wait(&format!("homeassistant/binary_sensor/{NODE}/relay_motor/config"), |m| m.retain).await);
    assert_eq!(r["state_topic"].as_str(), Some(format!("{PREFIX}/relay/motor/state").as_str()));
    assert!(r.get("command_topic").is_none());
    let t = json(
        &w.wait(&format!("homeassistant/binary_sensor/{NODE}/trigger_overvoltage/config"), |m| m.retain)
            .await,
    );
    assert_eq!(t["device_class"], "problem");

    // Readings: JSON in SI units, the values the meter serves, not retained.
    let reading = w.wait(&format!("{PREFIX}/meter/main/state"), |m| !m.retain).await;
    let r = json(&reading);
    assert_eq!(r["L1U"].as_f64(), Some(230.0), "{r}");
    assert!(r["time"].as_str().unwrap().ends_with('Z'));
    assert!(r["L1I"].is_number() && r["L1P"].is_number() && r["L1e"].is_number() && r["L1f"].is_number());

    // Over the threshold: the trigger trips and the relay goes off, both published at once.
    set_volts(&meter, 260.0);
    w.wait(&format!("{PREFIX}/meter/main/state"), |m| json(m)["L1U"].as_f64() == Some(260.0)).await;
    w.payload(&format!("{PREFIX}/trigger/overvoltage/state"), "ON").await;
    w.payload(&format!("{PREFIX}/relay/motor/state"), "OFF").await;
    assert_eq!(retained(broker.port(), &format!("{PREFIX}/relay/motor/state")).await.payload, "OFF");
    let a = json(
        &w.wait(&format!("{PREFIX}/trigger/overvoltage/attributes"), |m| m.payload.contains("tripped")).await,
    );
    assert!(a["cause"].as_str().unwrap().contains("L1U=260"), "{a}");
    assert_eq!(board.level(PIN), Some(false));
    let s = api(api_port).await;
    assert_eq!(s["mqtt"]["connected"], true);
    assert!(s["mqtt"]["published"].as_u64().unwrap() > 10);

    // The meter stops answering: its availability goes offline when the bus decides so (the
    // status board's event), and online again at its next reading.
    assert!(meter.set_fault(4, Fault::NoReply));
    w.payload(&format!("{PREFIX}/meter/main/availability"), "offline").await;
    let again = Watcher::start(broker.port()).await;
    assert!(meter.set_fault(4, Fault::None));
    again.payload(&format!("{PREFIX}/meter/main/availability"), "online").await;

    // A clean stop says offline itself.
    daemon.stop().await;
    w.wait(&format!("{PREFIX}/status"), |m| m.payload == "offline").await;
    let late = Watcher::start(broker.port()).await;
    let m = late.payload(&format!("{PREFIX}/status"), "offline").await;
    assert!(m.retain);
    let m = late.payload(&format!("{PREFIX}/relay/motor/state"), "OFF").await;
    assert!(m.retain, "the last relay state stays on the broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_will_says_offline_when_pmtr_is_killed() {
    let broker = tokio::task::spawn_blocking(Mosquitto::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _meter = sim(dir.path(), 230.0);
    let cfg = dir.path().join("pmtr.toml");
    std::fs::write(&cfg, toml(dir.path(), broker.port(), servers::free_port())).unwrap();
    let log = dir.path().join("pmtr.log");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pmtr"));
    cmd.args(["run", "--config", cfg.to_str().unwrap()]).stderr(std::fs::File::create(&log).unwrap());
    let mut pmtr = servers::Proc::start("pmtr", &mut cmd, "cargo build");
    let w = Watcher::start(broker.port()).await;
    w.payload(&format!("{PREFIX}/status"), "online").await;
    w.wait(&format!("{PREFIX}/meter/main/state"), |_| true).await;

    pmtr.kill(); // SIGKILL
    let t0 = Instant::now();
    let will = w.payload(&format!("{PREFIX}/status"), "offline").await;
    eprintln!("last will after {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(8), "within 1.5 keep-alives at the latest");
    let _ = will;
    let late = Watcher::start(broker.port()).await;
    let m = late.payload(&format!("{PREFIX}/status"), "offline").await;
    assert!(m.retain, "the last will is retained");
    assert!(!std::fs::read_to_string(&log).unwrap().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pmtr_connects_again_after_a_broker_restart_and_never_stalls() {
    let mut broker = tokio::task::spawn_blocking(Mosquitto::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _meter = sim(dir.path(), 230.0);
    let board = FakeBoard::new();
    let api_port = servers::free_port();
    let config = pmtr::config::load_str(&toml(dir.path(), broker.port(), api_port), "t.toml").unwrap();
    let daemon = Daemon::start(config, &board);
    let w = Watcher::start(broker.port()).await;
    w.wait(&format!("{PREFIX}/meter/main/state"), |_| true).await;
    drop(w);

    // The broker away: readings go on (the bus, the relays and storage never wait on MQTT).
    broker = tokio::task::spawn_blocking(move || {
        broker.stop();
        broker
    })
    .await
    .unwrap();
    let readings = |s: &Value| s["meters"][0]["counters"]["readings"].as_u64().unwrap();
    let before = api(api_port).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = api(api_port).await;
    assert!(
        readings(&during) >= readings(&before) + 8,
        "polls every 200 ms go on: {} then {}",
        readings(&before),
        readings(&during)
    );
    assert_eq!(during["mqtt"]["connected"], false, "{}", during["mqtt"]);
    assert!(
        during["mqtt"]["dropped"].as_u64().unwrap() >= 8,
        "readings dropped and counted: {}",
        during["mqtt"]
    );
    assert!(during["mqtt"]["last_error"].is_string());

    // Back: without persistence the broker forgot everything, so what is retained now was
    // published again by pmtr.
    broker = tokio::task::spawn_blocking(move || {
        broker.restart();
        broker
    })
    .await
    .unwrap();
    let w = Watcher::start(broker.port()).await;
    w.payload(&format!("{PREFIX}/status"), "online").await;
    let r = w.wait(&format!("{PREFIX}/meter/main/state"), |m| !m.retain).await;
    w.payload(&format!("{PREFIX}/meter/main/availability"), "online").await;
    for (topic, payload) in [
        ("status", "online"),
        ("meter/main/availability", "online"),
        ("relay/motor/state", "ON"),
        ("trigger/overvoltage/state", "OFF"),
    ] {
        let m = retained(broker.port(), &format!("{PREFIX}/{topic}")).await;
        assert_eq!(m.payload, payload, "{topic}");
    }
    retained(broker.port(), &format!("homeassistant/sensor/{NODE}/main_L1U/config")).await;
    assert_eq!(json(&r)["L1U"].as_f64(), Some(230.0));
    // No reading from the outage arrives late: the first one after the restart is fresh.
    let first_time = w
        .all()
        .iter()
        .find(|m| m.topic == format!("{PREFIX}/meter/main/state"))
        .map(|m| json(m)["time"].as_str().unwrap().to_owned())
        .unwrap();
    let first: chrono::DateTime<chrono::Utc> = first_time.parse().unwrap();
    assert!(chrono::Utc::now() - first < chrono::Duration::seconds(3), "stale reading {first_time}");
    let after = api(api_port).await;
    assert_eq!(after["mqtt"]["connected"], true);
    assert_eq!(after["mqtt"]["connections"], 2, "{}", after["mqtt"]);
    daemon.stop().await;
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_credentials() {
    let certs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(certs.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (cert, key) = smtp::make_certificate(certs.path());
    let broker = {
        let (cert, key) = (cert.clone(), key.clone());
        tokio::task::spawn_blocking(move || Mosquitto::start_secure(&cert, &key, "pmtr", "s3cret-mqtt"))
            .await
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let _meter = sim(dir.path(), 230.0);
    let secure = |password: &str, api: u16| {
        let rest = format!(
            "{TRIGGER}\n[status]\nlisten = \"127.0.0.1:{api}\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\
             tls = true\nca_file = \"{}\"\nusername = \"pmtr\"\npassword = \"{password}\"\nmax_backoff = \"1s\"\n",
            broker.tls_port(),
            cert.display()
        );
        pmtr::config::load_str(&gateway::toml(dir.path(), GATEWAY, &rest), "t.toml")
            .unwrap_or_else(|e| panic!("{e}"))
    };

    // A wrong password: refused, said in the status, and the gateway runs on.
    let api_port = servers::free_port();
    let board = FakeBoard::new();
    let daemon = Daemon::start(secure("wrong", api_port), &board);
    let deadline = Instant::now() + WAIT;
    let s = loop {
        let s = try_api(api_port).await.unwrap_or_default();
        if s["mqtt"]["last_error"].is_string() && s["meters"][0]["counters"]["readings"].as_u64() > Some(0) {
            break s;
        }
        assert!(Instant::now() < deadline, "no connection error within {WAIT:?}: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(s["mqtt"]["connected"], false);
    assert!(s["mqtt"]["last_error"].as_str().unwrap().to_lowercase().contains("refused"), "{}", s["mqtt"]);
    daemon.stop().await;

    // The right one, over TLS with the private certificate: published.
    let api_port = servers::free_port();
    let daemon = Daemon::start(secure("s3cret-mqtt", api_port), &board);
    let w = Watcher::start_as(broker.port(), Some(("pmtr", "s3cret-mqtt"))).await;
    w.payload(&format!("{PREFIX}/status"), "online").await;
    let r = w.wait(&format!("{PREFIX}/meter/main/state"), |_| true).await;
    assert_eq!(json(&r)["L1U"].as_f64(), Some(230.0));
    let s = api(api_port).await;
    assert_eq!(s["mqtt"]["connected"], true);
    assert_eq!(s["mqtt"]["broker"], format!("127.0.0.1:{}", broker.tls_port()));
    daemon.stop().await;
    assert!(
        broker.log().contains("pmtr-mqtt-test") || broker.log().contains("New client"),
        "{}",
        broker.log()
    );
}
