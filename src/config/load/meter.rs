//! `[[meter]]`: each meter, its model, address and bus, and the checks across buses and meters.

use super::diagnostics::{element_path, suggest};
use super::{BusDraft, Loader, MeterDraft, Value};
use crate::config::BusKind;
use crate::meter::Model;
use crate::reading::Phase;
use std::collections::HashMap;
use std::time::Duration;
use toml::de::DeTable;

pub(super) const METER_KEYS: &[&str] = &[
    "name",
    "model",
    "address",
    "bus",
    "poll",
    "phase",
    "unit",
    "writable",
    "multiplier",
    "time_sync",
    "push_actions",
    "action",
];

pub(super) const MIN_POLL: Duration = Duration::from_millis(100);

/// The longest `poll`: once a day.
pub(super) const MAX_POLL: Duration = Duration::from_secs(86_400);

pub(super) const MIN_SERVER_POLL: Duration = Duration::from_secs(2);

pub(super) const PZEM_GENERAL_ADDRESS: i64 = 0xF8;

impl Loader<'_> {
    /// Loads the user's meter definitions, the files of `dir`, whose errors are the
    /// configuration's (with their own file, line and column).
    pub(super) fn definitions(&mut self, dir: &std::path::Path) {
        // The user files only: the built-ins are parsed when a meter names one (a start of a
        // PZEM-only gateway parses none).
        let (all, errors) = crate::meter::definition::user_files(Some(dir));
        self.definitions = all;
        for e in errors {
            self.errors.push(super::ConfigError {
                file: e.file,
                line: e.line,
                column: e.column,
                key: e.key,
                message: e.message,
            });
        }
    }

    /// The model `name` names (case-insensitive): a user definition file of that name, else
    /// a hand-written model, else a built-in definition.
    pub(super) fn model_named(&self, name: &str) -> Option<Model> {
        crate::meter::definition::model_named(name, &self.definitions)
    }

    /// Every model name a meter can have.
    pub(super) fn model_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Model::ALL.iter().map(|m| m.name().to_owned()).collect();
        let built_in = crate::meter::definition::built_in();
        for name in built_in.iter().map(|d| &d.name).chain(self.definitions.iter().map(|(d, _)| &d.name)) {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    /// A list of register numbers (0..=65535).
    pub(super) fn register_list(&mut self, v: &Value<'_>, key: &str) -> Vec<u16> {
        if self.is_damaged(v) {
            return Vec::new();
        }
        let Some(items) = v.get_ref().as_array() else {
            self.wrong_type(v, key, "an array of register numbers, e.g. [1, 2]");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(n) = self.integer_in(item, &format!("{key}[{i}]"), 0..=65535) {
                out.push(n as u16);
            }
        }
        out
    }

    /// Every meter served by the Modbus TCP server needs its own unit id.
    pub(super) fn distinct_units(&mut self, meters: &[MeterDraft]) {
        let mut seen: Vec<(u8, &str)> = Vec::new();
        for m in meters {
            let (Some((name, _)), Some(unit)) =
                (&m.name, m.unit.as_ref().map(|u| u.0).or(m.address.as_ref().map(|a| a.0)))
            else {
                continue;
            };
            if let Some((_, other)) = seen.iter().find(|(u, _)| *u == unit) {
                let span = m.unit.as_ref().map_or(m.span.clone(), |u| u.1.clone());
                let key = format!("{}.unit", m.path);
                self.error(
                    span,
                    key,
                    format!(
                        "unit {unit} on the Modbus TCP server is also meter {other:?}'s: give one of them its own \
                         `unit = N` (1..=247)"
                    ),
                );
            } else {
                seen.push((unit, name));
            }
        }
    }

    pub(super) fn meter(&mut self, index: usize, element: &Value<'_>, t: &DeTable<'_>) -> MeterDraft {
        let path = element_path("meter", index, t);
        self.check_keys(t, &path, METER_KEYS);
        let key = |k: &str| format!("{path}.{k}");
        let mut meter = MeterDraft {
            path: path.clone(),
            span: element.span(),
            name: None,
            model: None,
            address: None,
            bus: None,
            bus_written: t.contains_key("bus"),
            poll: None,
            phase: None,
            server: None,
            unit: None,
            writable: Vec::new(),
        };
        for required in ["name", "model", "address"] {
            if !t.contains_key(required) {
                self.error(element.span(), key(required), "missing required key");
            }
        }
        if let Some(v) = t.get("name") {
            meter.name = self
                .name(v, &key("name"), "it becomes a tag and an expression prefix")
                .map(|n| (n, v.span()));
        }
        if let Some(v) = t.get("model") {
            if let Some(s) = self.string(v, &key("model")) {
                meter.model = self.model_named(&s);
                if meter.model.is_none() {
                    let names = self.model_names();
                    let mut message = format!(
                        "unknown model {s:?}, expected one of: {} (or a definition file in `gateway.meters_dir`)",
                        names.join(", ")
                    );
                    if let Some(h) = suggest(&s, names.iter().map(String::as_str)) {
                        message.push_str(&format!(" (did you mean `{h}`?)"));
                    }
                    self.error(v.span(), key("model"), message);
                }
            }
        }
        if let Some(v) = t.get("address") {
            if let Some(n) = self.integer(v, &key("address")) {
                match n {
                    1..=247 => meter.address = Some((n as u8, v.span())),
                    0 => self.error(
                        v.span(),
                        key("address"),
                        "0 is the broadcast address, slaves never answer: use 1..=247",
                    ),
                    PZEM_GENERAL_ADDRESS => self.error(
                        v.span(),
                        key("address"),
                        "0xF8 is the PZEM general address, answered by every PZEM: only for set-up with one \
                         device, use `pmtr pzem set-address`",
                    ),
                    _ => self.error(
                        v.span(),
                        key("address"),
                        format!("{n} is not a slave address: use 1..=247"),
                    ),
                }
            }
        }
        if let Some(v) = t.get("bus") {
            meter.bus = self.non_empty_string(v, &key("bus")).map(|b| (b, v.span()));
        }
        if let Some(v) = t.get("poll") {
            let min = if meter.model == Some(Model::PmtrSrv) { MIN_SERVER_POLL } else { MIN_POLL };
            meter.poll = self.duration_in(v, &key("poll"), Some(min), MAX_POLL).map(|d| (d, v.span()));
        }
        if meter.model == Some(Model::PmtrSrv) {
            meter.server = Some(self.server(&path, t));
        } else if meter.model.is_some() {
            for k in super::server::SERVER_KEYS {
                if let Some((kk, _)) = t.get_key_value(*k) {
                    self.error(
                        kk.span(),
                        key(k),
                        format!("`{k}` is only for PMTR_001_SRV servers (`model = \"pmtr-srv\"`)"),
                    );
                }
            }
        }
        if let Some(v) = t.get("unit") {
            meter.unit = self.integer_in(v, &key("unit"), 1..=247).map(|n| (n as u8, v.span()));
        }
        if let Some(v) = t.get("writable") {
            meter.writable = self.register_list(v, &key("writable"));
        }
        if let Some(v) = t.get("phase") {
            if let Some(s) = self.string(v, &key("phase")) {
                let phase = match s.to_ascii_uppercase().as_str() {
                    "L1" => Some(Phase::L1),
                    "L2" => Some(Phase::L2),
                    "L3" => Some(Phase::L3),
                    _ => None,
                };
                match phase {
                    Some(p) => meter.phase = Some((p, v.span())),
                    None => self.error(
                        v.span(),
                        key("phase"),
                        format!("unknown phase {s:?}, expected \"L1\", \"L2\" or \"L3\""),
                    ),
                }
            }
        }
        if let (Some(model), Some((_, span))) = (meter.model, &meter.phase) {
            if !model.takes_phase() {
                self.error(
                    span.clone(),
                    key("phase"),
                    format!(
                        "`phase` is only for single-phase meters (the PZEMs, single-phase definitions); `{model}` \
                         measures all three phases: remove this key"
                    ),
                );
            }
        }
        meter
    }

    pub(super) fn cross_check(&mut self, buses: &[BusDraft], meters: &mut [MeterDraft]) {
        let mut bus_names: HashMap<&str, &BusDraft> = HashMap::new();
        for b in buses {
            let Some((name, span)) = &b.name else { continue };
            if let Some(first) = bus_names.get(name.as_str()) {
                let line = first.name.as_ref().map_or(0, |(_, s)| self.line(s.start));
                let message =
                    format!("duplicate bus name {name:?}: already used by {} at line {line}", first.path);
                self.error(span.clone(), format!("{}.name", b.path), message);
            } else {
                bus_names.insert(name, b);
            }
        }
        let declared: Vec<String> =
            buses.iter().filter_map(|b| b.name.as_ref()).map(|(n, _)| format!("{n:?}")).collect();

        let mut meter_names: HashMap<String, (String, usize)> = HashMap::new();
        let mut addresses: HashMap<(String, u8), (String, usize)> = HashMap::new();
        for m in meters.iter_mut() {
            if let Some((name, span)) = &m.name {
                if let Some((path, line)) = meter_names.get(name) {
                    let message =
                        format!("duplicate meter name {name:?}: already used by {path} at line {line}");
                    self.error(span.clone(), format!("{}.name", m.path), message);
                } else {
                    meter_names.insert(name.clone(), (m.path.clone(), self.line(span.start)));
                }
            }

            // Resolve the bus.
            // A bus without a valid name (already reported) might be the one meant.
            let all_named = buses.iter().all(|b| b.name.is_some());
            match &m.bus {
                Some((bus, span)) if !bus_names.contains_key(bus.as_str()) && all_named => {
                    let message = if buses.is_empty() {
                        format!("unknown bus {bus:?}: no [[bus]] is declared")
                    } else {
                        let mut message = format!("unknown bus {bus:?}");
                        if let Some(s) = suggest(bus, bus_names.keys().copied()) {
                            message.push_str(&format!(" (did you mean {s:?}?)"));
                        }
                        message.push_str(&format!("; declared: {}", declared.join(", ")));
                        message
                    };
                    self.error(span.clone(), format!("{}.bus", m.path), message);
                    m.bus = None;
                }
                Some((bus, _)) if !bus_names.contains_key(bus.as_str()) => m.bus = None,
                Some(_) => {}
                None if m.bus_written => {}
                None => match buses {
                    [] => self.error(
                        m.span.clone(),
                        format!("{}.bus", m.path),
                        "missing required key: no [[bus]] is declared",
                    ),
                    [only] => m.bus = only.name.clone(),
                    _ => self.error(
                        m.span.clone(),
                        format!("{}.bus", m.path),
                        format!(
                            "missing required key: there are {} buses ({})",
                            buses.len(),
                            declared.join(", ")
                        ),
                    ),
                },
            }

            let kind =
                m.bus.as_ref().and_then(|(b, _)| bus_names.get(b.as_str())).and_then(|b| b.kind.clone());
            if let (Some((BusKind::PowerLine, kind_span)), Some(model)) = (kind, m.model) {
                if model != Model::PmtrSrv {
                    let line = self.line(kind_span.start);
                    self.error(
                        m.span.clone(),
                        format!("{}.model", m.path),
                        format!(
                            "a {model} cannot be reached on a power-line bus (line {line}): only PMTR_001_SRV \
                             servers (`model = \"pmtr-srv\"`) answer behind the modem; give it an RS-485 bus"
                        ),
                    );
                }
            }
            if let (Some((bus, _)), Some((address, span))) = (&m.bus, &m.address) {
                let line = self.line(span.start);
                match addresses.get(&(bus.clone(), *address)) {
                    Some((first, first_line)) => {
                        let message = format!(
                            "address {address} is already used on bus {bus:?} by {first} (line {first_line})"
                        );
                        self.error(span.clone(), format!("{}.address", m.path), message);
                    }
                    None => {
                        addresses.insert((bus.clone(), *address), (m.path.clone(), line));
                    }
                }
            }
        }
    }
}
