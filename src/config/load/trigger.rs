//! `[[relay]]` and `[[trigger]]`: relays on GPIO pins, and the expressions that drive them.

use super::{element_path, suggest, Loader, Value};
use crate::config::vars;
use crate::config::Level;
use crate::config::{Meter, OnShutdown, OnStale, Relay, Trigger};
use crate::expr::{ExprError, Expression};
use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;
use toml::de::DeTable;

const RELAY_KEYS: &[&str] = &["name", "pin", "active_low", "default", "on_shutdown"];
const TRIGGER_KEYS: &[&str] = &[
    "name",
    "when",
    "meter",
    "average",
    "hold",
    "recovery",
    "level",
    "relays",
    "dry_run",
    "latch",
    "alert",
    "stale_after",
    "on_stale",
];

/// BCM GPIO numbers on the 40-pin header.
const MAX_PIN: i64 = 27;
const MIN_AVERAGE: Duration = Duration::from_secs(1);
const MAX_AVERAGE: Duration = Duration::from_secs(3600);
const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(30);

/// A trigger's timing keys, read.
struct Timing {
    average: Option<Duration>,
    hold: Duration,
    recovery: Duration,
    stale_after: Duration,
    on_stale: OnStale,
}

/// A relay with where it was written.
struct RelayDraft {
    relay: Relay,
    path: String,
    line: usize,
    default_written: bool,
}

impl Loader<'_> {
    /// Every `[[relay]]` and `[[trigger]]`, checked against each other and the meters.
    /// `meters` is None while the meters have errors: expressions are then not checked.
    pub(super) fn relays_and_triggers(
        &mut self,
        root: &DeTable<'_>,
        meters: Option<&[Meter]>,
    ) -> (Vec<Relay>, Vec<Trigger>) {
        let mut relays: Vec<RelayDraft> = Vec::new();
        if let Some(elements) = self.elements(root, "relay") {
            let mut pins: HashMap<u8, usize> = HashMap::new();
            let mut names: HashMap<String, usize> = HashMap::new();
            for (i, v, t) in elements {
                let Some(r) = self.relay(i, v, t) else { continue };
                let path = element_path("relay", i, t);
                if let Some(&first) = names.get(&r.name) {
                    let f = &relays[first];
                    let message = format!(
                        "duplicate relay name {:?}: already used by {} at line {}",
                        r.name, f.path, f.line
                    );
                    self.error(t.get("name").map_or(v.span(), |n| n.span()), format!("{path}.name"), message);
                    continue;
                }
                if let Some(&first) = pins.get(&r.pin) {
                    let f = &relays[first];
                    let message = format!(
                        "GPIO {} is already relay {:?} ({} at line {}): one pin drives one relay",
                        r.pin, f.relay.name, f.path, f.line
                    );
                    self.error(t.get("pin").map_or(v.span(), |n| n.span()), format!("{path}.pin"), message);
                    continue;
                }
                names.insert(r.name.clone(), relays.len());
                pins.insert(r.pin, relays.len());
                let default_written = t.contains_key("default");
                relays.push(RelayDraft { relay: r, path, line: self.line(v.span().start), default_written });
            }
        }
        let mut triggers = Vec::new();
        if let Some(elements) = self.elements(root, "trigger") {
            let mut names: HashMap<String, (String, usize)> = HashMap::new();
            for (i, v, t) in elements {
                let path = element_path("trigger", i, t);
                let Some(trigger) = self.trigger(i, v, t, meters, &relays) else { continue };
                if let Some((first, line)) = names.get(&trigger.name) {
                    let message = format!(
                        "duplicate trigger name {:?}: already used by {first} at line {line}",
                        trigger.name
                    );
                    self.error(t.get("name").map_or(v.span(), |n| n.span()), format!("{path}.name"), message);
                    continue;
                }
                names.insert(trigger.name.clone(), (path, self.line(v.span().start)));
                triggers.push(trigger);
            }
        }
        (relays.into_iter().map(|d| d.relay).collect(), triggers)
    }

    fn name_of(&mut self, t: &DeTable<'_>, element: &Value<'_>, path: &str, what: &str) -> Option<String> {
        let Some(v) = t.get("name") else {
            self.error(element.span(), format!("{path}.name"), "missing required key");
            return None;
        };
        let n = self.non_empty_string(v, &format!("{path}.name"))?;
        if !super::is_bare_key(&n) {
            self.error(
                v.span(),
                format!("{path}.name"),
                format!(
                    "invalid name {n:?}: use only letters, digits, `_` and `-` (it becomes the {what} tag)"
                ),
            );
            return None;
        }
        Some(n)
    }

    fn level(&mut self, v: &Value<'_>, key: &str) -> Option<Level> {
        let s = self.string(v, key)?;
        let level = Level::parse(&s);
        if level.is_none() {
            let hint = match s.to_ascii_lowercase().as_str() {
                "high" | "low" => {
                    " (levels are the relay's, not the pin's: \"on\" energises the coil; set \
                                   `active_low = true` on a relay board switched by a low pin)"
                }
                _ => "",
            };
            self.error(v.span(), key, format!("unknown level {s:?}: \"on\" or \"off\"{hint}"));
        }
        level
    }

    fn word<T: Copy>(&mut self, v: &Value<'_>, key: &str, words: &[(&str, T)], help: &str) -> Option<T> {
        let s = self.string(v, key)?;
        match words.iter().find(|(w, _)| *w == s) {
            Some((_, x)) => Some(*x),
            None => {
                self.error(v.span(), key, format!("unknown value {s:?}: {help}"));
                None
            }
        }
    }

    fn relay(&mut self, index: usize, element: &Value<'_>, t: &DeTable<'_>) -> Option<Relay> {
        let path = element_path("relay", index, t);
        self.check_keys(t, &path, RELAY_KEYS);
        let key = |k: &str| format!("{path}.{k}");
        let name = self.name_of(t, element, &path, "relay");
        let pin = match t.get("pin") {
            Some(v) => self.integer_in(v, &key("pin"), 0..=MAX_PIN).map(|p| p as u8),
            None => {
                self.error(element.span(), key("pin"), "missing required key (the BCM GPIO number, 0..=27)");
                None
            }
        };
        let mut relay = Relay {
            name: String::new(),
            pin: 0,
            active_low: false,
            default: Level::Off,
            on_shutdown: OnShutdown::Hold,
        };
        if let Some(b) = t.get("active_low").and_then(|v| self.boolean(v, &key("active_low"))) {
            relay.active_low = b;
        }
        if let Some(l) = t.get("default").and_then(|v| self.level(v, &key("default"))) {
            relay.default = l;
        }
        if let Some(v) = t.get("on_shutdown") {
            relay.on_shutdown = self.word(
                v,
                &key("on_shutdown"),
                &[("hold", OnShutdown::Hold), ("default", OnShutdown::Default)],
                "\"hold\" (keep the level it has) or \"default\" (go to the relay's default level)",
            )?;
        }
        relay.name = name?;
        relay.pin = pin?;
        Some(relay)
    }

    fn duration_key(
        &mut self,
        t: &DeTable<'_>,
        path: &str,
        k: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Option<Duration>> {
        match t.get(k) {
            None => Some(None),
            Some(v) => self.duration_in(v, &format!("{path}.{k}"), Some(min), max).map(Some),
        }
    }

    fn trigger(
        &mut self,
        index: usize,
        element: &Value<'_>,
        t: &DeTable<'_>,
        checked: Option<&[Meter]>,
        relays: &[RelayDraft],
    ) -> Option<Trigger> {
        let meters = checked.unwrap_or_default();
        let path = element_path("trigger", index, t);
        self.check_keys(t, &path, TRIGGER_KEYS);
        let name = self.name_of(t, element, &path, "trigger");
        let mut ok = name.is_some();
        let own = self.own_meter(t, &path, checked);
        let mut sources = Vec::new();
        let expr_ok = self.condition(element, t, &path, own, checked, &mut sources);
        ok &= expr_ok;
        let read = vars::meters_of(&sources);
        let timing = self.timing(t, &path, &read, meters, expr_ok, &mut ok);
        let [dry_run, latch, alert] = self.flags(t, &path, &mut ok);
        let (relay_names, relay_spans) = self.trigger_relays(t, &path, relays, &mut ok);
        let level = self.trip_level(t, &path, relays, &relay_names, &relay_spans, &mut ok);
        if !ok {
            return None;
        }
        Some(Trigger {
            name: name?,
            when: t.get("when").and_then(|v| v.get_ref().as_str()).unwrap_or_default().to_owned(),
            meter: own.flatten().map(|i| meters[i].name.clone()),
            meters: read.iter().map(|&m| meters[m].name.clone()).collect(),
            average: timing.average,
            hold: timing.hold,
            recovery: timing.recovery,
            level: level.unwrap_or(Level::On),
            relays: relay_names,
            dry_run,
            latch,
            alert,
            stale_after: timing.stale_after,
            on_stale: timing.on_stale,
        })
    }

    /// `meter`: the index of the trigger's own meter; `Some(None)` when it has none, None when
    /// the key is wrong (reported) or the meters themselves are not checked.
    fn own_meter(&mut self, t: &DeTable<'_>, path: &str, checked: Option<&[Meter]>) -> Option<Option<usize>> {
        let meters = checked.unwrap_or_default();
        let key = |k: &str| format!("{path}.{k}");
        match t.get("meter") {
            None => Some(None),
            Some(v) => match self.non_empty_string(v, &key("meter")) {
                None => None,
                Some(_) if checked.is_none() => None,
                Some(m) => match meters.iter().position(|x| x.name == m) {
                    Some(i) => Some(Some(i)),
                    None => {
                        let hint = suggest(&m, meters.iter().map(|x| x.name.as_str()))
                            .map(|s| format!(" (did you mean {s:?}?)"))
                            .unwrap_or_default();
                        self.error(v.span(), key("meter"), format!("no meter is named {m:?}{hint}"));
                        None
                    }
                },
            },
        }
    }

    /// `when`: the expression compiles against the meters and sets, its variables' sources in
    /// `sources`. False when it is missing or wrong (reported), or cannot be checked yet.
    fn condition(
        &mut self,
        element: &Value<'_>,
        t: &DeTable<'_>,
        path: &str,
        own: Option<Option<usize>>,
        checked: Option<&[Meter]>,
        sources: &mut Vec<vars::Source>,
    ) -> bool {
        let meters = checked.unwrap_or_default();
        let key = |k: &str| format!("{path}.{k}");
        match (t.get("when"), own) {
            (None, _) => {
                self.error(
                    element.span(),
                    key("when"),
                    "missing required key: the condition, e.g. when = \"L1U > 253\"",
                );
                false
            }
            (Some(v), own) => match self.string(v, &key("when")) {
                None => false,
                Some(text) if text.trim().is_empty() => {
                    self.error(v.span(), key("when"), "must not be empty");
                    false
                }
                // An unknown `meter` was reported; the expression is checked once it is fixed.
                Some(_) if own.is_none() || checked.is_none() => false,
                Some(text) => {
                    let own = own.flatten();
                    let neutral = self.neutral.clone();
                    // A `neutral_*` variable whose set had an error of its own (reported).
                    let incomplete = self.neutral_incomplete;
                    let mut unsettled = false;
                    match Expression::compile(&text, &mut |n| {
                        let s = vars::resolve(n, own, meters, &neutral).inspect_err(|_| {
                            unsettled |= incomplete && vars::needs_a_missing_set(n, own, meters, &neutral);
                        })?;
                        sources.push(s);
                        Ok(s.kind())
                    }) {
                        Ok(_) => true,
                        Err(_) if unsettled => false,
                        Err(e) => {
                            let span = self.span_in_string(v.span(), &text, &e);
                            self.error(span, key("when"), format!("`{}`: {e}", text.trim()));
                            false
                        }
                    }
                }
            },
        }
    }

    /// `average`, `hold`, `recovery`, `stale_after` (at least two polls of the slowest meter
    /// read, checked when the expression is) and `on_stale`.
    fn timing(
        &mut self,
        t: &DeTable<'_>,
        path: &str,
        read: &[usize],
        meters: &[Meter],
        expr_ok: bool,
        ok: &mut bool,
    ) -> Timing {
        let key = |k: &str| format!("{path}.{k}");
        let average = match self.duration_key(t, path, "average", MIN_AVERAGE, MAX_AVERAGE) {
            Some(a) => a,
            None => {
                *ok = false;
                None
            }
        };
        let mut durations = [Duration::ZERO; 2];
        for (k, slot) in ["hold", "recovery"].into_iter().zip(&mut durations) {
            match self.duration_key(t, path, k, Duration::ZERO, MAX_HOLD) {
                Some(d) => *slot = d.unwrap_or(Duration::ZERO),
                None => *ok = false,
            }
        }
        let stale_after = match self.duration_key(t, path, "stale_after", Duration::from_secs(1), MAX_AVERAGE)
        {
            Some(d) => d,
            None => {
                *ok = false;
                None
            }
        };
        let slowest = read.iter().map(|&m| meters[m].poll).max().unwrap_or(Duration::ZERO);
        let stale_after = match stale_after {
            Some(d) if d < slowest * 2 && expr_ok => {
                let v = t.get("stale_after").expect("written");
                self.error(
                    v.span(),
                    key("stale_after"),
                    format!(
                        "{d:?} is shorter than two polls of the meters it reads (the slowest is polled every \
                         {slowest:?}): the data would be called stale between two readings; use at least \
                         {:?}",
                        slowest * 2
                    ),
                );
                *ok = false;
                d
            }
            Some(d) => d,
            None => DEFAULT_STALE_AFTER.max(slowest * 3),
        };
        let on_stale = match t.get("on_stale") {
            None => OnStale::Hold,
            Some(v) => match self.word(
                v,
                &key("on_stale"),
                &[("hold", OnStale::Hold), ("trip", OnStale::Trip), ("release", OnStale::Release)],
                "\"hold\" (keep the state the data last justified), \"trip\" or \"release\"",
            ) {
                Some(s) => s,
                None => {
                    *ok = false;
                    OnStale::Hold
                }
            },
        };
        Timing { average, hold: durations[0], recovery: durations[1], stale_after, on_stale }
    }

    /// `dry_run`, `latch` and `alert` (false, false, true unless written).
    fn flags(&mut self, t: &DeTable<'_>, path: &str, ok: &mut bool) -> [bool; 3] {
        let key = |k: &str| format!("{path}.{k}");
        let mut flags = [false, false, true];
        for (k, slot) in ["dry_run", "latch", "alert"].into_iter().zip(&mut flags) {
            if let Some(v) = t.get(k) {
                match self.boolean(v, &key(k)) {
                    Some(b) => *slot = b,
                    None => *ok = false,
                }
            }
        }
        flags
    }

    /// `relays`: each a declared relay, listed once; their names and where each was written.
    fn trigger_relays(
        &mut self,
        t: &DeTable<'_>,
        path: &str,
        relays: &[RelayDraft],
        ok: &mut bool,
    ) -> (Vec<String>, Vec<Range<usize>>) {
        let key = |k: &str| format!("{path}.{k}");
        let mut relay_names: Vec<String> = Vec::new();
        let mut relay_spans: Vec<Range<usize>> = Vec::new();
        if let Some(v) = t.get("relays") {
            match v.get_ref().as_array() {
                Some(items) => {
                    for item in items {
                        let Some(r) = self.non_empty_string(item, &key("relays")) else {
                            *ok = false;
                            continue;
                        };
                        if relay_names.contains(&r) {
                            self.error(item.span(), key("relays"), format!("relay {r:?} is listed twice"));
                            *ok = false;
                        } else if !relays.iter().any(|d| d.relay.name == r) {
                            let message = if relays.is_empty() {
                                format!("no relay named {r:?}: declare it in a [[relay]] with its GPIO pin")
                            } else {
                                let hint = suggest(&r, relays.iter().map(|d| d.relay.name.as_str()))
                                    .map(|s| format!(" (did you mean {s:?}?)"))
                                    .unwrap_or_else(|| {
                                        let all: Vec<&str> =
                                            relays.iter().map(|d| d.relay.name.as_str()).collect();
                                        format!(" (relays: {})", all.join(", "))
                                    });
                                format!("no relay named {r:?}{hint}")
                            };
                            self.error(item.span(), key("relays"), message);
                            *ok = false;
                        } else {
                            relay_names.push(r);
                            relay_spans.push(item.span());
                        }
                    }
                }
                None if self.is_damaged(v) => *ok = false,
                None => {
                    self.wrong_type(v, &key("relays"), "an array of relay names, e.g. relays = [\"heater\"]");
                    *ok = false;
                }
            }
        }
        (relay_names, relay_spans)
    }

    /// The level the trigger's relays take while it is tripped: the opposite of their default,
    /// the same for all of them, and `level` when written must agree.
    fn trip_level(
        &mut self,
        t: &DeTable<'_>,
        path: &str,
        relays: &[RelayDraft],
        relay_names: &[String],
        relay_spans: &[Range<usize>],
        ok: &mut bool,
    ) -> Option<Level> {
        let key = |k: &str| format!("{path}.{k}");
        let written_level = match t.get("level") {
            None => None,
            Some(v) => match self.level(v, &key("level")) {
                Some(l) => Some((l, v.span())),
                None => {
                    *ok = false;
                    None
                }
            },
        };
        let mut level = written_level.as_ref().map(|(l, _)| *l);
        for (r, span) in relay_names.iter().zip(relay_spans) {
            let d = relays.iter().find(|d| &d.relay.name == r).expect("checked above");
            let trip = d.relay.default.opposite();
            match (written_level.as_ref(), level) {
                (Some((l, lspan)), _) if *l != trip => {
                    let how = if d.default_written { "" } else { ", as `default` is not set" };
                    self.error(
                        lspan.clone(),
                        key("level"),
                        format!(
                            "\"{l}\" is the default level of relay {:?} ({} at line {}{how}): a trigger switches \
                             its relays away from their default, so every trigger on {:?} must say \"{trip}\" \
                             (or leave `level` out)",
                            d.relay.name, d.path, d.line, d.relay.name
                        ),
                    );
                    *ok = false;
                }
                (None, Some(first)) if first != trip => {
                    self.error(
                        span.clone(),
                        key("relays"),
                        format!(
                            "relay {:?} is tripped \"{trip}\" (its default is \"{}\") but the trigger's other \
                             relays are tripped \"{first}\": a trigger switches all its relays the same way; use \
                             two triggers or change a relay's `default`",
                            d.relay.name, d.relay.default
                        ),
                    );
                    *ok = false;
                }
                _ => level = Some(trip),
            }
        }
        level
    }

    /// The span of what an expression error is about, inside the TOML string that holds the
    /// expression; the whole string when it cannot be found.
    pub(super) fn span_in_string(&self, span: Range<usize>, text: &str, e: &ExprError) -> Range<usize> {
        let Some(offset) = e.offset() else { return span };
        let raw = &self.src[span.clone()];
        let rest = &text[offset..];
        let len = rest
            .char_indices()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '.'))
            .map_or(rest.len(), |(i, _)| i)
            .max(rest.chars().next().map_or(0, char::len_utf8));
        let needle = &rest[..len];
        if needle.is_empty() {
            return span;
        }
        let nth = text[..offset].matches(needle).count();
        match raw.match_indices(needle).nth(nth) {
            Some((i, _)) => span.start + i..span.start + i + len,
            None => span,
        }
    }
}
