//! A PMTR_001_SRV's own keys on its `[[meter]]`: `multiplier`, `time_sync`, `push_actions` and
//! `[[meter.action]]`, the relay actions the server evaluates itself.

use super::{Loader, Value};
use crate::config::{ServerAction, ServerSettings};
use crate::pmtr_action::expr::{self, Units};
use crate::pmtr_action::{self as action, reserved_pin, MAX_PIN, SLOTS, WINDOWS};
use std::time::Duration;
use toml::de::DeTable;

/// The keys only a `pmtr-srv` meter may have.
pub(super) const SERVER_KEYS: &[&str] = &["multiplier", "time_sync", "push_actions", "action"];
const ACTION_KEYS: &[&str] = &["name", "when", "average", "pins", "level", "recovery", "latch", "dry_run"];

const DEFAULT_TIME_SYNC: Duration = Duration::from_secs(24 * 3600);
const MIN_TIME_SYNC: Duration = Duration::from_secs(3600);
/// The longest `time_sync`: a week (a server's clock drifts seconds a day).
const MAX_TIME_SYNC: Duration = Duration::from_secs(7 * 86_400);
/// The longest `average` read before the 5 s / 10 s check.
const MAX_AVERAGE: Duration = Duration::from_secs(3600);
/// The recovery register holds 65535 loop passes.
fn max_recovery() -> Duration {
    Duration::from_millis(u64::from(u16::MAX) * action::LOOP_PASS_MS)
}

/// How an error names an action: `action[1] "pump guard" (when = "L1I > 16")`.
fn action_label(i: usize, t: &DeTable<'_>, when: &str) -> String {
    match t.get("name").and_then(|n| n.get_ref().as_str()) {
        Some(name) => format!("action[{i}] \"{name}\" (when = \"{when}\")"),
        None => format!("action[{i}] (when = \"{when}\")"),
    }
}

impl Loader<'_> {
    /// The server settings of meter `path` (a `pmtr-srv`).
    pub(super) fn server(&mut self, path: &str, t: &DeTable<'_>) -> ServerSettings {
        let key = |k: &str| format!("{path}.{k}");
        let mut s = ServerSettings {
            multiplier: 1.0,
            time_sync: Some(DEFAULT_TIME_SYNC),
            push_actions: true,
            actions: Vec::new(),
        };
        if let Some(v) = t.get("multiplier") {
            if let Some(m) = self.positive_number(v, &key("multiplier")) {
                s.multiplier = m;
            }
        }
        if let Some(v) = t.get("time_sync") {
            if v.get_ref().as_str() == Some("off") {
                s.time_sync = None;
            } else {
                s.time_sync = self
                    .duration_in(v, &key("time_sync"), Some(MIN_TIME_SYNC), MAX_TIME_SYNC)
                    .or(s.time_sync);
            }
        }
        if let Some(b) = t.get("push_actions").and_then(|v| self.boolean(v, &key("push_actions"))) {
            s.push_actions = b;
        }
        if let Some(v) = t.get("action") {
            let Some(items) = v.get_ref().as_array() else {
                if !self.is_damaged(v) {
                    let message = if v.get_ref().is_table() {
                        "expected an array of tables: write [[meter.action]], not [meter.action]".to_string()
                    } else {
                        format!("expected an array of tables [[meter.action]], found {}", self.describe(v))
                    };
                    self.error(v.span(), key("action"), message);
                }
                return s;
            };
            if items.len() > SLOTS {
                self.error(
                    items[SLOTS].span(),
                    format!("{path}.action[{SLOTS}]"),
                    format!("a server has {SLOTS} relay-action slots: {} actions are too many", items.len()),
                );
            }
            // Each pin and the action that drives it: the firmware has no arbitration (every
            // loop it runs slots 0 to 4 in turn, each writing its pins), so two actions on one
            // pin make the later slot overwrite the earlier every loop and the relay pulses.
            let mut drivers: Vec<(u8, String)> = Vec::new();
            for (i, item) in items.iter().enumerate().take(SLOTS) {
                let akey = format!("{path}.action[{i}]");
                match item.get_ref().as_table() {
                    Some(at) => {
                        if let Some(a) = self.server_action(&akey, item, at, s.multiplier) {
                            let name = action_label(i, at, &a.when);
                            let pin_items = at.get("pins").and_then(|p| p.get_ref().as_array());
                            for (k, pin) in a.pins.iter().enumerate() {
                                if let Some((_, other)) = drivers.iter().find(|(p, _)| p == pin) {
                                    let span =
                                        pin_items.and_then(|p| p.get(k)).map_or(item.span(), |p| p.span());
                                    self.error(
                                        span,
                                        format!("{akey}.pins[{k}]"),
                                        format!(
                                            "pin {pin} is also driven by {other}: the server runs its actions in turn \
                                             every loop with no arbitration, so {name} would overwrite it every loop \
                                             and the relay would pulse; give each action its own pins, or make them \
                                             one action joined with `||`"
                                        ),
                                    );
                                }
                            }
                            drivers.extend(a.pins.iter().map(|p| (*p, name.clone())));
                            s.actions.push(a);
                        }
                    }
                    None if self.is_damaged(item) => {}
                    None => self.wrong_type(item, &akey, "a table"),
                }
            }
            if !s.push_actions && !s.actions.is_empty() {
                self.error(
                    t.get("push_actions").map_or(v.span(), |p| p.span()),
                    key("push_actions"),
                    "`push_actions = false` leaves the server's slots alone, so its [[meter.action]] would never \
                     be sent: remove one or the other",
                );
            }
        }
        s
    }

    fn positive_number(&mut self, v: &Value<'_>, key: &str) -> Option<f64> {
        let n = self.number(v, key, "a number")?;
        if !(n > 0.0 && n <= 1000.0) {
            self.error(v.span(), key, format!("{n} is out of range: must be above 0 and at most 1000"));
            return None;
        }
        Some(n)
    }

    fn server_action(
        &mut self,
        path: &str,
        element: &Value<'_>,
        t: &DeTable<'_>,
        multiplier: f64,
    ) -> Option<ServerAction> {
        if let Some((k, _)) = t.get_key_value("hold") {
            self.error(
                k.span(),
                format!("{path}.hold"),
                "the server has no hold time: it acts at the first loop where the condition is true; \
                 smooth with `average = \"10s\"`, or use a [[trigger]] on the Pi",
            );
        }
        let allowed: Vec<&str> = ACTION_KEYS.iter().copied().chain(["hold"]).collect();
        self.check_keys(t, path, &allowed);
        let key = |k: &str| format!("{path}.{k}");
        let mut ok = true;
        let mut texts = None;
        match t.get("when") {
            None => {
                self.error(
                    element.span(),
                    key("when"),
                    "missing required key: the condition, e.g. \"L1U > 253\"",
                );
                ok = false;
            }
            Some(v) => match self.non_empty_string(v, &key("when")) {
                None => ok = false,
                Some(text) => match expr::convert(&text, &Units::current(multiplier)) {
                    Ok(firmware) => {
                        let legacy =
                            expr::convert(&text, &Units { scaled: false, multiplier }).map_err(|e| e.message);
                        texts = Some((text, firmware, legacy));
                    }
                    Err(e) => {
                        let as_trigger =
                            crate::expr::ExprError::Type { offset: e.offset, message: String::new() };
                        let span = self.span_in_string(v.span(), &text, &as_trigger);
                        self.error(span, key("when"), format!("`{}`: {}", text.trim(), e.message));
                        ok = false;
                    }
                },
            },
        }
        let mut average = 5;
        if let Some(v) = t.get("average") {
            match self.duration_in(v, &key("average"), None, MAX_AVERAGE) {
                Some(d) if WINDOWS.iter().any(|w| Duration::from_secs(u64::from(*w)) == d) => {
                    average = d.as_secs() as u8
                }
                Some(d) => {
                    self.error(
                        v.span(),
                        key("average"),
                        format!(
                            "{d:?}: the server averages over 5 s or 10 s only (any other window leaves its result \
                             undefined)"
                        ),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        let pins = match t.get("pins") {
            None => {
                self.error(
                    element.span(),
                    key("pins"),
                    "missing required key: the Arduino pins to drive, e.g. [22]",
                );
                None
            }
            Some(v) => self.action_pins(v, &key("pins")),
        };
        ok &= pins.is_some();
        let mut level_high = false;
        if let Some(v) = t.get("level") {
            match self.string(v, &key("level")).as_deref() {
                Some("high") => level_high = true,
                Some("low") => level_high = false,
                Some(other) => {
                    self.error(
                        v.span(),
                        key("level"),
                        format!("unknown level {other:?}: \"high\" or \"low\" (the level driven while the condition is true)"),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        } else {
            self.error(
                element.span(),
                key("level"),
                "missing required key: \"high\" or \"low\", the level the pins are driven to while the condition \
                 is true (the opposite after recovery)",
            );
            ok = false;
        }
        let recovery = match t.get("recovery") {
            Some(v) => self.duration_in(v, &key("recovery"), None, max_recovery()),
            None => Some(Duration::from_secs(60)),
        };
        ok &= recovery.is_some();
        let latch = t.get("latch").and_then(|v| self.boolean(v, &key("latch"))).unwrap_or(false);
        let dry_run = t.get("dry_run").and_then(|v| self.boolean(v, &key("dry_run"))).unwrap_or(false);
        let (when, firmware_text, legacy_text) = texts?;
        if !ok {
            return None;
        }
        Some(ServerAction {
            when,
            firmware_text,
            legacy_text,
            average,
            pins: pins?,
            level_high,
            recovery: recovery?,
            latch,
            dry_run,
        })
    }

    fn action_pins(&mut self, v: &Value<'_>, key: &str) -> Option<Vec<u8>> {
        if self.is_damaged(v) {
            return None;
        }
        let Some(items) = v.get_ref().as_array() else {
            self.wrong_type(v, key, "an array of pin numbers, e.g. [22, 23]");
            return None;
        };
        if items.is_empty() || items.len() > action::PIN_ENTRIES {
            self.error(v.span(), key, format!("give 1 to {} pins", action::PIN_ENTRIES));
            return None;
        }
        let mut pins = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let k = format!("{key}[{i}]");
            let n = self.integer_in(item, &k, 0..=i64::from(MAX_PIN))?;
            let pin = n as u8;
            if let Some(why) = reserved_pin(pin) {
                self.error(item.span(), k, format!("pin {pin} is used by the server's firmware ({why})"));
                return None;
            }
            if pins.contains(&pin) {
                self.error(item.span(), k, format!("pin {pin} is listed twice"));
                return None;
            }
            pins.push(pin);
        }
        Some(pins)
    }
}
