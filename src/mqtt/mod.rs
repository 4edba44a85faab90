//! MQTT: readings, relay and trigger states to a broker, and Home Assistant discovery so that
//! every meter and relay appears in Home Assistant by itself.
//!
//! The topic tree (`P` is `topic_prefix`, default `pmtr/<gateway>`):
//!
//! ```text
//! P/status                         online | offline        retained; the last will says offline
//! P/meter/<meter>/state            {"time":…,"L1U":230.1,…} a JSON object per reading (SI units)
//! P/meter/<meter>/availability     online | offline        retained; offline while it is silent
//! P/relay/<relay>/state            ON | OFF                retained
//! P/relay/<relay>/attributes       {"default":"on","forced":…,"tripped_by":[…]}   retained
//! P/trigger/<trigger>/state        ON | OFF (tripped)      retained
//! P/trigger/<trigger>/attributes   {"state":"latched","event":…,"cause":…}        retained
//! ```
//!
//! Discovery documents go to `<discovery_prefix>/<component>/pmtr_<gateway>/<object>/config`,
//! retained, one per value of each meter (`sensor`) and one per relay and trigger
//! (`binary_sensor`: pmtr takes no relay commands over MQTT; see the README).
//!
//! This module is pure: it builds topics and payloads. [`run`] moves them.

pub mod run;

use crate::config::{Config, Meter, MqttSettings};
use crate::control::{NeutralStatus, RelayStatus, TriggerStatus};
use crate::reading::{Phase, Quantity, Reading, StateChange, Subject};
use serde_json::{json, Value};
use std::fmt::Write as _;

pub use crate::config::topic_level;

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// Kept across reconnects (states, availability, discovery): published again on every
    /// connection. Readings are not.
    pub state: bool,
}

impl Message {
    fn state(topic: String, payload: impl Into<Vec<u8>>) -> Message {
        Message { topic, payload: payload.into(), retain: true, state: true }
    }
}

/// The topic tree of one gateway.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
    discovery_prefix: String,
    /// `pmtr_<gateway>`: the discovery node id and the gateway device's identifier.
    node: String,
}

pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

impl Topics {
    pub fn new(settings: &MqttSettings, gateway: &str) -> Topics {
        Topics {
            prefix: settings.topic_prefix.clone(),
            discovery_prefix: settings.discovery_prefix.clone(),
            node: format!("pmtr_{}", topic_level(gateway)),
        }
    }

    /// The gateway's availability (and last will).
    pub fn status(&self) -> String {
        format!("{}/status", self.prefix)
    }
    pub fn meter_state(&self, meter: &str) -> String {
        format!("{}/meter/{}/state", self.prefix, topic_level(meter))
    }
    /// A meter's energy books: lifetime totals, periods and costs (see "Energy and cost").
    pub fn meter_energy(&self, meter: &str) -> String {
        format!("{}/meter/{}/energy", self.prefix, topic_level(meter))
    }
    pub fn meter_availability(&self, meter: &str) -> String {
        format!("{}/meter/{}/availability", self.prefix, topic_level(meter))
    }
    pub fn relay_state(&self, relay: &str) -> String {
        format!("{}/relay/{}/state", self.prefix, topic_level(relay))
    }
    pub fn relay_attributes(&self, relay: &str) -> String {
        format!("{}/relay/{}/attributes", self.prefix, topic_level(relay))
    }
    pub fn trigger_state(&self, trigger: &str) -> String {
        format!("{}/trigger/{}/state", self.prefix, topic_level(trigger))
    }
    pub fn trigger_attributes(&self, trigger: &str) -> String {
        format!("{}/trigger/{}/attributes", self.prefix, topic_level(trigger))
    }
    pub fn neutral_state(&self, set: &str) -> String {
        format!("{}/neutral/{}/state", self.prefix, topic_level(set))
    }
    pub fn neutral_attributes(&self, set: &str) -> String {
        format!("{}/neutral/{}/attributes", self.prefix, topic_level(set))
    }
    /// Home Assistant announces its own restarts here: discovery is sent again then.
    pub fn home_assistant_status(&self) -> String {
        format!("{}/status", self.discovery_prefix)
    }
    fn discovery(&self, component: &str, object: &str) -> String {
        format!("{}/{component}/{}/{}/config", self.discovery_prefix, self.node, topic_level(object))
    }

    /// The gateway online (or offline, the last will).
    pub fn availability(&self, online: bool) -> Message {
        Message::state(self.status(), if online { ONLINE } else { OFFLINE })
    }

    pub fn meter_available(&self, meter: &str, online: bool) -> Message {
        Message::state(self.meter_availability(meter), if online { ONLINE } else { OFFLINE })
    }

    /// A meter's energy books, retained: `{"lifetime":{"l1_energy":1234.5},"periods":{"today":
    /// {"kwh":3.25,"partial":false,"cost":{"home":1.2}},…}}` (costs with standing charges).
    pub fn energy(&self, e: &crate::energy::book::MeterEnergy) -> Message {
        let periods: serde_json::Map<String, Value> = e
            .periods
            .iter()
            .map(|p| {
                let cost: serde_json::Map<String, Value> =
                    p.costs.iter().map(|c| (c.tariff.clone(), json!(round6(c.total)))).collect();
                (
                    p.period.name().to_owned(),
                    json!({"kwh": round6(p.kwh), "partial": p.partial, "cost": cost}),
                )
            })
            .collect();
        let lifetime: serde_json::Map<String, Value> =
            e.totals.iter().map(|(n, t)| (n.clone(), json!(round6(*t)))).collect();
        Message::state(
            self.meter_energy(&e.meter),
            json!({"lifetime": lifetime, "periods": periods}).to_string(),
        )
    }

    /// Home Assistant sensors of a meter's energy books: each lifetime total and today's and this
    /// month's energy (`total_increasing`: the dashboard takes a drop as a new cycle), and
    /// today's cost per tariff (`monetary`, `total`).
    fn energy_discovery(&self, m: &Meter, config: &Config, device: &Value, origin: &Value) -> Vec<Message> {
        let mut sensors: Vec<(String, String, String, &str, &str, String)> = Vec::new();
        for (phase, quantity) in m.model.sample_set(m.phase) {
            if !quantity.is_counter() {
                continue;
            }
            let counter = crate::energy::book::counter_name(phase, quantity);
            let class = if quantity == Quantity::ActiveEnergy { "energy" } else { "" };
            sensors.push((
                format!("lifetime_{counter}"),
                format!("Lifetime {}", entity_name(phase, quantity).to_lowercase()),
                format!("{{{{ value_json.lifetime.{counter} }}}}"),
                class,
                "total_increasing",
                quantity.unit().to_owned(),
            ));
        }
        for (period, name) in [("today", "Energy today"), ("this_month", "Energy this month")] {
            sensors.push((
                format!("{period}_kwh"),
                name.to_owned(),
                format!("{{{{ value_json.periods.{period}.kwh }}}}"),
                "energy",
                "total_increasing",
                "kWh".to_owned(),
            ));
        }
        for t in config.energy.tariffs.iter().filter(|t| t.applies_to(&m.name)) {
            sensors.push((
                format!("today_cost_{}", t.name),
                format!("Cost today ({})", t.name),
                format!("{{{{ value_json.periods.today.cost['{}'] }}}}", t.name),
                "monetary",
                "total",
                t.currency.clone(),
            ));
        }
        sensors
            .into_iter()
            .map(|(key, name, template, class, state_class, unit)| {
                let object = format!("{}_{key}", m.name);
                let mut doc = json!({
                    "name": name,
                    "unique_id": format!("{}_{}", self.node, topic_level(&object)),
                    "state_topic": self.meter_energy(&m.name),
                    "value_template": template,
                    "state_class": state_class,
                    "unit_of_measurement": unit,
                    "availability_topic": self.status(),
                    "device": device,
                    "origin": origin,
                });
                if !class.is_empty() {
                    doc["device_class"] = class.into();
                }
                Message::state(self.discovery("sensor", &object), doc.to_string())
            })
            .collect()
    }

    /// A reading as one JSON object: its time and every value under its trigger variable name
    /// (`L1U`, `P`, `e`…), in SI units, rounded to 1e-6 as storage does.
    pub fn reading(&self, r: &Reading, retain: bool) -> Message {
        Message {
            topic: self.meter_state(&r.meter),
            payload: reading_json(r).into_bytes(),
            retain,
            state: false,
        }
    }

    /// A relay as its status gives it: ON/OFF, and its attributes.
    pub fn relay(&self, r: &RelayStatus) -> [Message; 2] {
        let attributes = json!({
            "level": r.level,
            "default": r.default,
            "forced": r.forced,
            "tripped_by": r.tripped_by,
            "pin": r.pin,
            "active_low": r.active_low,
        });
        [
            Message::state(self.relay_state(&r.name), on_off(r.level == crate::relay::Level::On)),
            Message::state(self.relay_attributes(&r.name), attributes.to_string()),
        ]
    }

    /// A trigger as its status gives it: ON while tripped (or latched), and its attributes.
    pub fn trigger(&self, t: &TriggerStatus) -> [Message; 2] {
        let tripped = matches!(t.state.as_str(), "tripped" | "recovering" | "latched");
        let attributes = json!({
            "state": t.state,
            "since": t.since,
            "dry_run": t.dry_run,
            "stale": t.stale,
            "values": t.values,
            "relays": t.relays,
        });
        [
            Message::state(self.trigger_state(&t.name), on_off(tripped)),
            Message::state(self.trigger_attributes(&t.name), attributes.to_string()),
        ]
    }

    /// A `[[neutral]]` set as it stands (at each connection): ON in fault.
    pub fn neutral(&self, n: &NeutralStatus) -> [Message; 2] {
        let attributes = json!({"state": n.state, "score": n.score, "shift": n.shift});
        [
            Message::state(self.neutral_state(&n.name), on_off(n.state == "fault")),
            Message::state(self.neutral_attributes(&n.name), attributes.to_string()),
        ]
    }

    /// A state change as it happens: the new ON/OFF state and what caused it.
    pub fn change(&self, c: &StateChange) -> [Message; 2] {
        let attributes = json!({
            "event": c.event.as_str(),
            "time": c.time,
            "held": c.held,
            "dry_run": c.dry_run,
            "cause": c.cause,
        });
        match c.subject {
            Subject::Relay => [
                Message::state(self.relay_state(&c.name), on_off(c.active)),
                Message::state(self.relay_attributes(&c.name), attributes.to_string()),
            ],
            Subject::Trigger => [
                Message::state(self.trigger_state(&c.name), on_off(c.active)),
                Message::state(self.trigger_attributes(&c.name), attributes.to_string()),
            ],
            // ON in fault; the attributes' event is its state (ok, suspect, fault).
            Subject::Neutral => [
                Message::state(self.neutral_state(&c.name), on_off(c.active)),
                Message::state(self.neutral_attributes(&c.name), attributes.to_string()),
            ],
        }
    }

    fn gateway_device(&self, gateway: &str) -> Value {
        json!({
            "identifiers": [self.node],
            "name": format!("pmtr {gateway}"),
            "manufacturer": "pmtr",
            "model": "metering gateway",
            "sw_version": env!("CARGO_PKG_VERSION"),
        })
    }

    /// Every discovery document of the configuration: one sensor per value of each meter
    /// (a device per meter, attached to the gateway's device), a binary sensor per relay and
    /// per trigger (on the gateway's device).
    pub fn discovery_documents(&self, config: &Config) -> Vec<Message> {
        let gateway = &config.gateway.name;
        let origin = json!({"name": "pmtr", "sw": env!("CARGO_PKG_VERSION")});
        let mut out = Vec::new();
        for m in &config.meters {
            out.extend(self.meter_discovery(m, gateway, &origin));
            let device = json!({"identifiers": [format!("{}_{}", self.node, topic_level(&m.name))]});
            out.extend(self.energy_discovery(m, config, &device, &origin));
        }
        for r in &config.relays {
            let object = format!("relay_{}", r.name);
            let doc = json!({
                "name": format!("Relay {}", r.name),
                "unique_id": format!("{}_{}", self.node, topic_level(&object)),
                "state_topic": self.relay_state(&r.name),
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "power",
                "json_attributes_topic": self.relay_attributes(&r.name),
                "availability_topic": self.status(),
                "device": self.gateway_device(gateway),
                "origin": origin,
            });
            out.push(Message::state(self.discovery("binary_sensor", &object), doc.to_string()));
        }
        for t in &config.triggers {
            let object = format!("trigger_{}", t.name);
            let doc = json!({
                "name": format!("Trigger {}", t.name),
                "unique_id": format!("{}_{}", self.node, topic_level(&object)),
                "state_topic": self.trigger_state(&t.name),
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "problem",
                "json_attributes_topic": self.trigger_attributes(&t.name),
                "availability_topic": self.status(),
                "device": self.gateway_device(gateway),
                "origin": origin,
            });
            out.push(Message::state(self.discovery("binary_sensor", &object), doc.to_string()));
        }
        for n in &config.neutral {
            let object = format!("neutral_{}", n.name);
            let doc = json!({
                "name": format!("Broken neutral {}", n.name),
                "unique_id": format!("{}_{}", self.node, topic_level(&object)),
                "state_topic": self.neutral_state(&n.name),
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "problem",
                "json_attributes_topic": self.neutral_attributes(&n.name),
                "availability_topic": self.status(),
                "device": self.gateway_device(gateway),
                "origin": origin,
            });
            out.push(Message::state(self.discovery("binary_sensor", &object), doc.to_string()));
        }
        out
    }

    fn meter_discovery(&self, m: &Meter, gateway: &str, origin: &Value) -> Vec<Message> {
        let (maker, product) = m.model.maker_and_product();
        let device = json!({
            "identifiers": [format!("{}_{}", self.node, topic_level(&m.name))],
            "name": m.name,
            "model": product,
            "manufacturer": maker,
            "via_device": self.node,
        });
        let availability = json!([
            {"topic": self.status()},
            {"topic": self.meter_availability(&m.name)},
        ]);
        let _ = gateway;
        m.model
            .sample_set(m.phase)
            .into_iter()
            .map(|(phase, quantity)| {
                let variable = format!("{}{}", phase.prefix(), quantity.symbol());
                let object = format!("{}_{variable}", m.name);
                let id = format!("{}_{}", self.node, topic_level(&object));
                let mut doc = json!({
                    "name": entity_name(phase, quantity),
                    "unique_id": id,
                    "state_topic": self.meter_state(&m.name),
                    "availability": availability,
                    "availability_mode": "all",
                    "device": device,
                    "origin": origin,
                });
                let d = doc.as_object_mut().expect("an object");
                let component = if quantity == Quantity::Alarm {
                    d.insert(
                        "value_template".into(),
                        format!("{{{{ 'ON' if value_json.{variable} else 'OFF' }}}}").into(),
                    );
                    d.insert("device_class".into(), "problem".into());
                    "binary_sensor"
                } else {
                    d.insert("value_template".into(), format!("{{{{ value_json.{variable} }}}}").into());
                    let (class, state_class) = home_assistant_class(quantity);
                    if let Some(c) = class {
                        d.insert("device_class".into(), c.into());
                    }
                    d.insert("state_class".into(), state_class.into());
                    if !quantity.unit().is_empty() {
                        d.insert("unit_of_measurement".into(), quantity.unit().into());
                    }
                    "sensor"
                };
                Message::state(self.discovery(component, &object), doc.to_string())
            })
            .collect()
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "ON"
    } else {
        "OFF"
    }
}

/// The entity's name within its device: `L1 voltage`, `Power`, `L12 voltage`.
fn entity_name(phase: Phase, quantity: Quantity) -> String {
    let what = match quantity {
        Quantity::Voltage => "voltage",
        Quantity::Current => "current",
        Quantity::ActivePower => "power",
        Quantity::ApparentPower => "apparent power",
        Quantity::ReactivePower => "reactive power",
        Quantity::ActiveEnergy => "energy",
        Quantity::ApparentEnergy => "apparent energy",
        Quantity::ReactiveEnergy => "reactive energy",
        Quantity::Frequency => "frequency",
        Quantity::PowerFactor => "power factor",
        Quantity::Alarm => "alarm",
        Quantity::Supply5V => "5 V supply",
        Quantity::Supply12V => "12 V supply",
        Quantity::LowPower => "low power",
        Quantity::VoltageAvg => "voltage 5 s average",
        Quantity::CurrentAvg => "current 5 s average",
        Quantity::ActivePowerAvg => "power 5 s average",
        Quantity::FrequencyAvg => "frequency 5 s average",
        Quantity::PowerFactorAvg => "power factor 5 s average",
        Quantity::ImportActiveEnergy => "import energy",
        Quantity::ExportActiveEnergy => "export energy",
        Quantity::ImportReactiveEnergy => "import reactive energy",
        Quantity::ExportReactiveEnergy => "export reactive energy",
        Quantity::VoltageThd => "voltage THD",
        Quantity::CurrentThd => "current THD",
    };
    match phase {
        Phase::Total => {
            let mut c = what.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
        }
        p => format!("{} {what}", p.prefix()),
    }
}

/// Home Assistant's device class (None where it has none that takes the unit) and state
/// class: energy counters are `total_increasing`, so that its energy dashboard takes them.
fn home_assistant_class(q: Quantity) -> (Option<&'static str>, &'static str) {
    match q {
        Quantity::Voltage | Quantity::VoltageAvg | Quantity::Supply5V | Quantity::Supply12V => {
            (Some("voltage"), "measurement")
        }
        Quantity::Current | Quantity::CurrentAvg => (Some("current"), "measurement"),
        Quantity::ActivePower | Quantity::ActivePowerAvg => (Some("power"), "measurement"),
        Quantity::ApparentPower => (Some("apparent_power"), "measurement"),
        Quantity::ReactivePower => (Some("reactive_power"), "measurement"),
        Quantity::ActiveEnergy | Quantity::ImportActiveEnergy | Quantity::ExportActiveEnergy => {
            (Some("energy"), "total_increasing")
        }
        Quantity::ApparentEnergy
        | Quantity::ReactiveEnergy
        | Quantity::ImportReactiveEnergy
        | Quantity::ExportReactiveEnergy => (None, "total_increasing"),
        Quantity::VoltageThd | Quantity::CurrentThd => (None, "measurement"),
        Quantity::Frequency | Quantity::FrequencyAvg => (Some("frequency"), "measurement"),
        Quantity::PowerFactor | Quantity::PowerFactorAvg => (Some("power_factor"), "measurement"),
        Quantity::Alarm | Quantity::LowPower => (None, "measurement"),
    }
}

/// Rounded to 1e-6, as readings are.
fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// A value as JSON: rounded to 1e-6; `null` for what JSON cannot hold.
fn push_number(out: &mut String, v: f64) {
    let r = (v * 1e6).round() / 1e6;
    if r.is_finite() {
        let _ = write!(out, "{r}");
    } else {
        out.push_str("null");
    }
}

/// `{"time":"2026-11-21T10:00:00.123Z","L1U":230.1,…,"energy_backwards":false}`.
pub fn reading_json(r: &Reading) -> String {
    let mut out = String::with_capacity(64 + 24 * r.samples.len());
    out.push_str("{\"time\":\"");
    let _ = write!(out, "{}", r.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
    out.push('"');
    for s in &r.samples {
        out.push_str(",\"");
        out.push_str(s.phase.prefix());
        out.push_str(s.quantity.symbol());
        out.push_str("\":");
        push_number(&mut out, s.value);
    }
    let _ = write!(out, ",\"energy_backwards\":{}}}", r.quality.energy_backwards);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Quality, Sample};

    fn settings() -> MqttSettings {
        MqttSettings {
            host: "localhost".into(),
            port: 1883,
            tls: false,
            ca_file: None,
            username: None,
            password: None,
            client_id: "pmtr-house-pi".into(),
            topic_prefix: "pmtr/house-pi".into(),
            discovery: true,
            discovery_prefix: "homeassistant".into(),
            qos: 0,
            retain: false,
            keep_alive: std::time::Duration::from_secs(30),
            max_backoff: std::time::Duration::from_secs(60),
            queue: 100,
        }
    }

    fn config() -> Config {
        let src = r#"
[gateway]
name = "house_pi"
[[bus]]
name = "b"
ports = ["/dev/ttyUSB*"]
[[meter]]
name = "mainA"
model = "pzem-016"
address = 4
phase = "L2"
[[meter]]
name = "plant"
model = "rx380"
address = 1
bus = "b"
[[relay]]
name = "pump"
pin = 17
[[trigger]]
name = "overvolt"
meter = "mainA"
when = "L2U > 253"
relays = ["pump"]
[[tariff]]
name = "home"
currency = "EUR"
price = 0.3
meters = ["mainA"]
"#;
        crate::config::load_str(src, "t.toml").unwrap()
    }

    fn reading() -> Reading {
        Reading {
            meter: "mainA".into(),
            model: crate::meter::Model::Pzem016,
            time: "2026-11-21T10:00:00.123Z".parse().unwrap(),
            samples: vec![
                Sample::new(Phase::L2, Quantity::Voltage, 230.1),
                Sample::new(Phase::L2, Quantity::Current, 1.2345678),
                Sample::new(Phase::L2, Quantity::ActiveEnergy, 1234.567),
                Sample::new(Phase::L2, Quantity::Frequency, f64::NAN),
            ],
            quality: Quality::default(),
        }
    }

    #[test]
    fn names_become_safe_topic_levels() {
        assert_eq!(topic_level("mainA"), "mainA");
        assert_eq!(topic_level("house pi/2#+"), "house_pi_2__");
        assert_eq!(topic_level("wärme"), "w_rme");
        assert_eq!(topic_level(""), "_");
    }

    #[test]
    fn the_topic_tree() {
        let t = Topics::new(&settings(), "house pi");
        assert_eq!(t.status(), "pmtr/house-pi/status");
        assert_eq!(t.meter_state("mainA"), "pmtr/house-pi/meter/mainA/state");
        assert_eq!(t.meter_availability("mainA"), "pmtr/house-pi/meter/mainA/availability");
        assert_eq!(t.relay_state("pump"), "pmtr/house-pi/relay/pump/state");
        assert_eq!(t.trigger_state("over volt"), "pmtr/house-pi/trigger/over_volt/state");
        assert_eq!(t.home_assistant_status(), "homeassistant/status");
        assert_eq!(
            t.availability(false),
            Message {
                topic: "pmtr/house-pi/status".into(),
                payload: b"offline".to_vec(),
                retain: true,
                state: true
            }
        );
    }

    #[test]
    fn a_reading_is_one_json_object_in_si_units() {
        let t = Topics::new(&settings(), "house-pi");
        let m = t.reading(&reading(), false);
        assert_eq!(m.topic, "pmtr/house-pi/meter/mainA/state");
        assert!(!m.retain && !m.state);
        let text = String::from_utf8(m.payload).unwrap();
        assert_eq!(
            text,
            r#"{"time":"2026-11-21T10:00:00.123Z","L2U":230.1,"L2I":1.234568,"L2e":1234.567,"L2f":null,"energy_backwards":false}"#
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["L2U"], 230.1);
    }

    #[test]
    fn relay_and_trigger_states_are_retained_on_off() {
        let t = Topics::new(&settings(), "house-pi");
        let r = RelayStatus {
            name: "pump".into(),
            pin: 17,
            active_low: false,
            level: crate::relay::Level::On,
            default: crate::relay::Level::Off,
            forced: None,
            tripped_by: vec!["overvolt".into()],
        };
        let [state, attrs] = t.relay(&r);
        assert_eq!(
            (state.topic.as_str(), state.payload.as_slice(), state.retain),
            ("pmtr/house-pi/relay/pump/state", &b"ON"[..], true)
        );
        let a: Value = serde_json::from_slice(&attrs.payload).unwrap();
        assert_eq!(a["tripped_by"], json!(["overvolt"]));
        assert_eq!(a["default"], "off");
        let c = StateChange {
            time: "2026-11-21T10:00:00Z".parse().unwrap(),
            subject: Subject::Trigger,
            name: "overvolt".into(),
            event: crate::reading::ChangeEvent::Released,
            active: false,
            held: false,
            dry_run: false,
            cause: "L2U=230".into(),
        };
        let [state, attrs] = t.change(&c);
        assert_eq!(
            (state.topic.as_str(), state.payload.as_slice()),
            ("pmtr/house-pi/trigger/overvolt/state", &b"OFF"[..])
        );
        let a: Value = serde_json::from_slice(&attrs.payload).unwrap();
        assert_eq!((a["event"].as_str(), a["cause"].as_str()), (Some("released"), Some("L2U=230")));
    }

    #[test]
    fn a_neutral_set_is_a_problem_binary_sensor_on_in_fault() {
        let src = r#"
[[bus]]
name = "b"
ports = ["/dev/ttyUSB*"]
[[meter]]
name = "plant"
model = "rx380"
address = 1
[[neutral]]
name = "supply"
meter = "plant"
"#;
        let config = crate::config::load_str(src, "t.toml").unwrap();
        let t = Topics::new(&settings(), "house-pi");
        let docs = t.discovery_documents(&config);
        let doc = docs.iter().find(|m| m.topic.ends_with("/neutral_supply/config")).expect("discovered");
        assert!(doc.topic.starts_with("homeassistant/binary_sensor/"), "{}", doc.topic);
        let d: Value = serde_json::from_slice(&doc.payload).unwrap();
        assert_eq!(d["device_class"], "problem");
        assert_eq!(d["state_topic"], "pmtr/house-pi/neutral/supply/state");
        let c = StateChange {
            time: "2026-11-21T10:00:00Z".parse().unwrap(),
            subject: Subject::Neutral,
            name: "supply".into(),
            event: crate::reading::ChangeEvent::NeutralFault,
            active: true,
            held: false,
            dry_run: false,
            cause: "shift 38.2 V, score 1.27, was suspect".into(),
        };
        let [state, attrs] = t.change(&c);
        assert_eq!(
            (state.topic.as_str(), state.payload.as_slice(), state.retain),
            ("pmtr/house-pi/neutral/supply/state", &b"ON"[..], true)
        );
        let a: Value = serde_json::from_slice(&attrs.payload).unwrap();
        assert_eq!(a["event"], "fault");
    }

    /// Lifetime totals and today's energy are `total_increasing` (Home Assistant's energy
    /// dashboard takes them; a drop at midnight is a new cycle); a cost is `monetary`, `total`.
    #[test]
    fn energy_books_are_published_and_discovered() {
        let config = config();
        let t = Topics::new(&settings(), &config.gateway.name);
        let docs = t.discovery_documents(&config);
        let find = |topic: &str| -> Value {
            let m = docs.iter().find(|m| m.topic == topic).unwrap_or_else(|| panic!("no {topic}"));
            serde_json::from_slice(&m.payload).unwrap()
        };
        let life = find("homeassistant/sensor/pmtr_house_pi/mainA_lifetime_l2_energy/config");
        assert_eq!(
            (
                life["device_class"].as_str(),
                life["state_class"].as_str(),
                life["unit_of_measurement"].as_str()
            ),
            (Some("energy"), Some("total_increasing"), Some("kWh"))
        );
        assert_eq!(life["state_topic"], "pmtr/house-pi/meter/mainA/energy");
        assert_eq!(life["value_template"], "{{ value_json.lifetime.l2_energy }}");
        let today = find("homeassistant/sensor/pmtr_house_pi/mainA_today_kwh/config");
        assert_eq!(today["state_class"], "total_increasing");
        assert_eq!(today["value_template"], "{{ value_json.periods.today.kwh }}");
        let cost = find("homeassistant/sensor/pmtr_house_pi/mainA_today_cost_home/config");
        assert_eq!(
            (cost["device_class"].as_str(), cost["state_class"].as_str()),
            (Some("monetary"), Some("total"))
        );
        assert_eq!(cost["unit_of_measurement"], "EUR");
        // The tariff is mainA's only.
        assert!(!docs.iter().any(|m| m.topic.contains("plant_today_cost")));
        let reactive = find("homeassistant/sensor/pmtr_house_pi/plant_lifetime_total_reactive_energy/config");
        assert!(reactive.get("device_class").is_none());

        let e = crate::status::tests::parts().energy.remove(0);
        let m = t.energy(&e);
        assert!(m.retain);
        assert_eq!(m.topic, "pmtr/house-pi/meter/main/energy");
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["lifetime"]["l1_energy"], 1234.5);
        assert_eq!(v["periods"]["today"]["kwh"], 3.25);
        assert_eq!(v["periods"]["today"]["partial"], true);
        assert_eq!(v["periods"]["today"]["cost"]["home"], 1.475);
    }

    #[test]
    fn discovery_gives_every_value_a_sensor_with_its_classes() {
        let config = config();
        let t = Topics::new(&settings(), &config.gateway.name);
        let docs = t.discovery_documents(&config);
        let find = |topic: &str| -> Value {
            let m = docs.iter().find(|m| m.topic == topic).unwrap_or_else(|| {
                panic!("no {topic} in {:#?}", docs.iter().map(|d| &d.topic).collect::<Vec<_>>())
            });
            assert!(m.retain);
            serde_json::from_slice(&m.payload).unwrap()
        };
        let v = find("homeassistant/sensor/pmtr_house_pi/mainA_L2U/config");
        assert_eq!(v["device_class"], "voltage");
        assert_eq!(v["unit_of_measurement"], "V");
        assert_eq!(v["state_class"], "measurement");
        assert_eq!(v["state_topic"], "pmtr/house-pi/meter/mainA/state");
        assert_eq!(v["value_template"], "{{ value_json.L2U }}");
        assert_eq!(v["unique_id"], "pmtr_house_pi_mainA_L2U");
        assert_eq!(v["name"], "L2 voltage");
        assert_eq!(v["availability_mode"], "all");
        assert_eq!(v["availability"][0]["topic"], "pmtr/house-pi/status");
        assert_eq!(v["availability"][1]["topic"], "pmtr/house-pi/meter/mainA/availability");
        assert_eq!(v["device"]["identifiers"][0], "pmtr_house_pi_mainA");
        assert_eq!(v["device"]["via_device"], "pmtr_house_pi");
        let e = find("homeassistant/sensor/pmtr_house_pi/mainA_L2e/config");
        assert_eq!(
            (e["device_class"].as_str(), e["state_class"].as_str(), e["unit_of_measurement"].as_str()),
            (Some("energy"), Some("total_increasing"), Some("kWh"))
        );
        let pf = find("homeassistant/sensor/pmtr_house_pi/mainA_L2pf/config");
        assert!(pf.get("unit_of_measurement").is_none(), "{pf}");
        let alarm = find("homeassistant/binary_sensor/pmtr_house_pi/mainA_L2alarm/config");
        assert_eq!(alarm["device_class"], "problem");
        let p = find("homeassistant/sensor/pmtr_house_pi/plant_P/config");
        assert_eq!((p["name"].as_str(), p["device_class"].as_str()), (Some("Power"), Some("power")));
        let eq = find("homeassistant/sensor/pmtr_house_pi/plant_eq/config");
        assert!(eq.get("device_class").is_none());
        assert_eq!(eq["unit_of_measurement"], "kvarh");
        let relay = find("homeassistant/binary_sensor/pmtr_house_pi/relay_pump/config");
        assert_eq!(relay["state_topic"], "pmtr/house-pi/relay/pump/state");
        assert_eq!(relay["availability_topic"], "pmtr/house-pi/status");
        assert!(relay.get("command_topic").is_none(), "no relay commands over MQTT");
        let trig = find("homeassistant/binary_sensor/pmtr_house_pi/trigger_overvolt/config");
        assert_eq!(trig["device_class"], "problem");
        // Unique ids are unique.
        let mut ids: Vec<String> = docs
            .iter()
            .map(|d| {
                serde_json::from_slice::<Value>(&d.payload).unwrap()["unique_id"].as_str().unwrap().to_owned()
            })
            .collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);
        // A PZEM gives 7 values, an RX380 many more, one relay, one trigger.
        assert!(n > 7 + 2 + 10, "{n}");
    }
}
