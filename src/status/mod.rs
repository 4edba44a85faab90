//! Seeing inside the running gateway: one [`Snapshot`] of everything (meters and their latest
//! readings, bus counters, which meter is on which port, triggers and relays, sinks and
//! spools, alerts, MQTT, uptime and version), assembled from the shared status of each part,
//! and three ways to show it: JSON ([`http`], `/api/...`), Prometheus text ([`metrics`],
//! `/metrics`) and a compact text view for `pmtr status` ([`view`]).
//!
//! Assembling and rendering are pure; [`http`] is the only I/O.

pub mod history;
pub mod http;
pub mod metrics;
pub mod table;
pub mod view;

use crate::bus::status::{Counters, MeterState, MeterStatus};
use crate::control::{NeutralStatus, RelayStatus, TriggerStatus};
use crate::meter::Model;
use crate::mqtt::run::MqttCounters;
use crate::reading::{ChangeEvent, Phase, Quantity, Sample, StateChange, Subject};
use crate::store::SinkState;
use crate::sync::Locked;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Everything about the running gateway at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub gateway: String,
    pub version: String,
    pub started: DateTime<Utc>,
    pub time: DateTime<Utc>,
    pub uptime_seconds: u64,
    pub meters: Vec<MeterView>,
    /// Which meters answer on which port (the discovery map); ports with none are left out.
    pub ports: BTreeMap<String, Vec<String>>,
    pub triggers: Vec<TriggerStatus>,
    pub relays: Vec<RelayView>,
    /// Why triggers and relays are missing, when the trigger task did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_error: Option<String>,
    /// The `[[neutral]]` sets: state, score and displacement.
    #[serde(default)]
    pub neutral: Vec<NeutralStatus>,
    pub sinks: Vec<SinkView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttCounters>,
    /// The Modbus TCP server's counters (when `[modbus_server]` is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modbus_server: Option<crate::modbus_server::ServerCounters>,
    /// The energy books: lifetime totals, periods and costs per meter (see `crate::energy`).
    #[serde(default)]
    pub energy: Vec<crate::energy::book::MeterEnergy>,
}

/// One meter: where it is, how its polls go, and its latest reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterView {
    pub name: String,
    pub bus: String,
    pub address: u8,
    pub model: Model,
    pub port: Option<String>,
    pub state: MeterState,
    pub counters: Counters,
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub reading: Option<ReadingView>,
}

/// A reading with its values under their trigger variable names, in SI units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingView {
    pub time: DateTime<Utc>,
    pub values: Values,
    pub energy_backwards: bool,
}

/// The samples of a reading, as the JSON object `{"L1U": 230.1, "L1I": 1.2, …}` (in the
/// meter's order).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Values(pub Vec<Sample>);

/// The phase and quantity of a trigger variable name (`L1U`, `L12U`, `P`, `es`).
pub fn parse_variable(name: &str) -> Option<(Phase, Quantity)> {
    Phase::ALL.into_iter().find_map(|p| {
        let rest = name.strip_prefix(p.prefix())?;
        Quantity::ALL.into_iter().find(|q| q.symbol() == rest).map(|q| (p, q))
    })
}

impl Serialize for Values {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for sample in &self.0 {
            m.serialize_entry(&sample.variable(), &sample.value)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Values;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of values by variable name")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Values, A::Error> {
                let mut out = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, Option<f64>>()? {
                    if let (Some((phase, quantity)), Some(value)) = (parse_variable(&name), value) {
                        out.push(Sample::new(phase, quantity, value));
                    }
                }
                Ok(Values(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// A relay, and how often it changed level since start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayView {
    #[serde(flatten)]
    pub status: RelayStatus,
    /// Level changes since start (by triggers or by hand; the claim at start is not one).
    pub transitions: u64,
}

/// One sink and its spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkView {
    pub name: String,
    pub kind: String,
    pub target: String,
    #[serde(flatten)]
    pub state: SinkState,
}

/// The alert task's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertView {
    pub alerts: u64,
    pub mails_queued: u64,
    pub mails_sent: u64,
    pub mails_refused: u64,
    pub mails_dropped: u64,
}

impl From<&crate::alert::run::AlertCounters> for AlertView {
    fn from(c: &crate::alert::run::AlertCounters) -> Self {
        AlertView {
            alerts: c.alerts,
            mails_queued: c.mails_queued,
            mails_sent: c.mails_sent,
            mails_refused: c.mails_refused,
            mails_dropped: c.mails_dropped,
        }
    }
}

/// The parts of a snapshot, as read from each part of the gateway.
pub struct Parts {
    pub gateway: String,
    pub started: DateTime<Utc>,
    pub time: DateTime<Utc>,
    pub meters: BTreeMap<String, MeterStatus>,
    /// The trigger task's answer; Ok(empty) when there are no triggers and relays.
    pub control: Result<(Vec<TriggerStatus>, Vec<RelayStatus>), String>,
    /// The `[[neutral]]` sets, from the same answer (empty when it failed).
    pub neutral: Vec<NeutralStatus>,
    pub sinks: Vec<SinkView>,
    pub alerts: Option<AlertView>,
    pub mqtt: Option<MqttCounters>,
    pub modbus_server: Option<crate::modbus_server::ServerCounters>,
    pub transitions: BTreeMap<String, u64>,
    pub energy: Vec<crate::energy::book::MeterEnergy>,
}

impl Snapshot {
    /// Puts the parts together.
    pub fn assemble(p: Parts) -> Snapshot {
        let mut ports: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let meters: Vec<MeterView> = p
            .meters
            .into_iter()
            .map(|(name, s)| {
                if let Some(port) = &s.port {
                    ports.entry(port.clone()).or_default().push(name.clone());
                }
                MeterView {
                    reading: s.last_reading.map(|r| ReadingView {
                        time: r.time,
                        energy_backwards: r.quality.energy_backwards,
                        values: Values(r.samples),
                    }),
                    name,
                    bus: s.bus,
                    address: s.address,
                    model: s.model,
                    port: s.port,
                    state: s.state,
                    counters: s.counters,
                    last_success: s.last_success,
                    last_error: s.last_error,
                }
            })
            .collect();
        let (triggers, relays, control_error) = match p.control {
            Ok((t, r)) => (t, r, None),
            Err(e) => (Vec::new(), Vec::new(), Some(e)),
        };
        let relays = relays
            .into_iter()
            .map(|status| RelayView {
                transitions: p.transitions.get(&status.name).copied().unwrap_or(0),
                status,
            })
            .collect();
        Snapshot {
            gateway: p.gateway,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: p.started,
            time: p.time,
            uptime_seconds: (p.time - p.started).num_seconds().max(0) as u64,
            meters,
            ports,
            triggers,
            relays,
            control_error,
            neutral: p.neutral,
            sinks: p.sinks,
            alerts: p.alerts,
            mqtt: p.mqtt,
            modbus_server: p.modbus_server,
            energy: p.energy,
        }
    }

    pub fn meter(&self, name: &str) -> Option<&MeterView> {
        self.meters.iter().find(|m| m.name == name)
    }
}

/// Relay level changes counted from the state changes, by relay name.
#[derive(Debug, Default)]
pub struct Tally {
    transitions: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    /// Counts one change: every `switched` of a relay is a new level of its pin, except its
    /// claim at start ([`Cause::Start`](crate::reading::Cause::Start)).
    pub fn count(&self, c: &StateChange) {
        let at_start = matches!(c.cause, crate::reading::Cause::Start(_));
        if c.subject == Subject::Relay && c.event == ChangeEvent::Switched && !at_start {
            let mut t = self.transitions.locked();
            *t.entry(c.name.to_string()).or_default() += 1;
        }
    }

    pub fn transitions(&self) -> BTreeMap<String, u64> {
        self.transitions.locked().clone()
    }

    /// Counts every change of `changes` until it closes.
    pub async fn run(self: std::sync::Arc<Self>, mut changes: tokio::sync::broadcast::Receiver<StateChange>) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match changes.recv().await {
                Ok(c) => self.count(&c),
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!("status: {n} state changes not counted (lagged)")
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::reading::{Quality, Reading};

    pub fn parts() -> Parts {
        let reading = Reading {
            meter: "mainA".into(),
            model: Model::Pzem016,
            time: "2026-11-21T10:00:00.500Z".parse().unwrap(),
            samples: vec![
                Sample::new(Phase::L1, Quantity::Voltage, 230.1),
                Sample::new(Phase::L1, Quantity::Current, 1.5),
                Sample::new(Phase::L1, Quantity::ActiveEnergy, 12.25),
            ],
            quality: Quality::default(),
        };
        let mut meters = BTreeMap::new();
        meters.insert(
            "mainA".to_owned(),
            MeterStatus {
                bus: "house".into(),
                address: 4,
                model: Model::Pzem016,
                port: Some("/dev/ttyUSB0".into()),
                state: MeterState::Ok,
                counters: Counters {
                    requests: 10,
                    replies: 9,
                    timeouts: 1,
                    readings: 9,
                    ..Counters::default()
                },
                last_success: Some(reading.time),
                last_error: Some("timeout".into()),
                last_reading: Some(reading),
                server: None,
                raw: None,
            },
        );
        meters.insert("gen".to_owned(), MeterStatus::searching("house".into(), 6, Model::Rx380));
        let relay = RelayStatus {
            name: "pump".into(),
            pin: 17,
            active_low: true,
            level: crate::relay::Level::Off,
            default: crate::relay::Level::On,
            forced: None,
            tripped_by: vec!["overvolt".into()],
        };
        let trigger = TriggerStatus {
            name: "overvolt".into(),
            when: "L1U > 253".into(),
            state: "tripped".into(),
            dry_run: false,
            stale: false,
            since: Some("2026-11-21T09:59:00Z".parse().unwrap()),
            values: "L1U=254.2".into(),
            relays: vec!["pump".into()],
        };
        Parts {
            gateway: "house-pi".into(),
            started: "2026-11-21T08:00:00Z".parse().unwrap(),
            time: "2026-11-21T10:00:01Z".parse().unwrap(),
            meters,
            control: Ok((vec![trigger], vec![relay])),
            neutral: vec![NeutralStatus {
                name: "supply".into(),
                state: "fault".into(),
                score: Some(1.5),
                shift: Some(38.25),
            }],
            sinks: vec![SinkView {
                name: "influx".into(),
                kind: "influxdb2".into(),
                target: "http://db:8086".into(),
                state: SinkState {
                    healthy: false,
                    points_written: 100,
                    spool_readings: 7,
                    spool_dropped: 2,
                    ..SinkState::default()
                },
            }],
            alerts: Some(AlertView { alerts: 3, mails_sent: 1, ..AlertView::default() }),
            mqtt: None,
            modbus_server: None,
            transitions: [("pump".to_owned(), 4)].into_iter().collect(),
            energy: vec![crate::energy::book::MeterEnergy {
                meter: "main".into(),
                totals: [("l1_energy".to_owned(), 1234.5)].into_iter().collect(),
                periods: vec![crate::energy::book::PeriodTotal {
                    period: crate::energy::Period::Today,
                    from: "2026-11-21".parse().unwrap(),
                    to: "2026-11-21".parse().unwrap(),
                    kwh: 3.25,
                    partial: true,
                    costs: vec![crate::energy::book::Cost {
                        tariff: "home".into(),
                        currency: "EUR".into(),
                        energy: 0.975,
                        standing: 0.5,
                        total: 1.475,
                    }],
                }],
            }],
        }
    }

    #[test]
    fn a_snapshot_puts_the_parts_together() {
        let s = Snapshot::assemble(parts());
        assert_eq!(s.uptime_seconds, 7201);
        assert_eq!(s.ports.get("/dev/ttyUSB0"), Some(&vec!["mainA".to_owned()]));
        assert_eq!(s.ports.len(), 1, "a meter not found is on no port");
        assert_eq!(s.relays[0].transitions, 4);
        let m = s.meter("mainA").unwrap();
        assert_eq!(m.reading.as_ref().unwrap().values.0.len(), 3);
        assert!(s.meter("gen").unwrap().reading.is_none());
    }

    #[test]
    fn the_json_reads_back_the_same() {
        let s = Snapshot::assemble(parts());
        let text = serde_json::to_string(&s).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["meters"][1]["reading"]["values"]["L1U"], 230.1);
        assert_eq!(v["meters"][1]["counters"]["timeouts"], 1);
        assert_eq!(v["relays"][0]["name"], "pump");
        assert_eq!(v["relays"][0]["level"], "off");
        assert_eq!(v["sinks"][0]["spool_readings"], 7);
        let back: Snapshot = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn variable_names_parse_back() {
        for p in Phase::ALL {
            for q in Quantity::ALL {
                let name = Sample::new(p, q, 0.0).variable();
                assert_eq!(parse_variable(&name), Some((p, q)), "{name}");
            }
        }
        assert_eq!(parse_variable("L2V"), None);
    }

    #[test]
    fn relay_transitions_count_level_changes() {
        let t = Tally::default();
        use crate::reading::Cause;
        let change = |event, active, cause: Cause| StateChange {
            time: Utc::now(),
            subject: Subject::Relay,
            name: "pump".into(),
            event,
            active,
            held: false,
            dry_run: false,
            cause,
        };
        t.count(&change(ChangeEvent::Switched, true, Cause::Start("start".into()))); // the claim at start
        t.count(&change(ChangeEvent::Switched, true, Cause::Start("start: forced on by uid 0 pid 1".into())));
        t.count(&change(ChangeEvent::Forced, false, "forced off by http 127.0.0.1:5".into()));
        t.count(&change(ChangeEvent::Switched, false, "forced by http 127.0.0.1:5".into()));
        t.count(&change(ChangeEvent::Failed, true, "could not switch on".into()));
        t.count(&change(ChangeEvent::Unforced, false, "released by uid 0 pid 1".into()));
        t.count(&change(ChangeEvent::Switched, true, "trigger overvolt".into()));
        assert_eq!(t.transitions().get("pump"), Some(&2));
    }
}
