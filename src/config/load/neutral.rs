//! `[[neutral]]`: three-phase voltage sets watched for a broken neutral.

use super::{element_path, suggest, Loader, Value};
use crate::config::Sensitivity;
use crate::config::{Meter, NeutralSet, NeutralSource};
use crate::reading::Phase;
use std::collections::HashMap;
use std::ops::Range;
use toml::de::{DeTable, DeValue};

const NEUTRAL_KEYS: &[&str] = &["name", "meter", "meters", "nominal", "shift", "sensitivity"];
const PHASES: [Phase; 3] = [Phase::L1, Phase::L2, Phase::L3];

impl Loader<'_> {
    /// Every `[[neutral]]`. `meters` is None while the meters have errors: the meter names are
    /// then not checked.
    pub(super) fn neutral_sets(&mut self, root: &DeTable<'_>, meters: Option<&[Meter]>) -> Vec<NeutralSet> {
        let mut sets: Vec<NeutralSet> = Vec::new();
        let Some(elements) = self.elements(root, "neutral") else { return sets };
        // Where each set name and each meter was first used: (path, line).
        let mut names: HashMap<String, (String, usize)> = HashMap::new();
        let mut used: HashMap<String, (String, usize)> = HashMap::new();
        for (i, element, t) in elements {
            let path = element_path("neutral", i, t);
            let key = |k: &str| format!("{path}.{k}");
            self.check_keys(t, &path, NEUTRAL_KEYS);
            let mut ok = true;

            let name = match t.get("name") {
                Some(v) => self.name(v, &key("name"), "it names the set in the status API, MQTT and storage"),
                None => {
                    self.error(element.span(), key("name"), "missing required key: the set's name");
                    None
                }
            };
            if let (Some(n), Some(v)) = (&name, t.get("name")) {
                if let Some((p, line)) = names.get(n) {
                    let message =
                        format!("duplicate neutral set name {n:?}: already used by {p} at line {line}");
                    self.error(v.span(), key("name"), message);
                    ok = false;
                } else {
                    names.insert(n.clone(), (path.clone(), self.line(v.span().start)));
                }
            }

            let source = match (t.get("meter"), t.get("meters")) {
                (Some(v), Some(_)) => {
                    self.error(
                        v.span(),
                        key("meter"),
                        "give either `meter` (one three-phase meter) or `meters` (three single-phase \
                         meters on L1, L2, L3), not both",
                    );
                    None
                }
                (None, None) => {
                    self.error(
                        element.span(),
                        key("meter"),
                        "missing required key: `meter = \"…\"` (a three-phase meter) or \
                         `meters = [\"…\", \"…\", \"…\"]` (single-phase meters on L1, L2, L3)",
                    );
                    None
                }
                (Some(v), None) => self
                    .string(v, &key("meter"))
                    .and_then(|m| self.set_meter(v, &key("meter"), &m, meters, None).then_some(m))
                    .map(NeutralSource::Meter),
                (None, Some(v)) => self.set_meters(v, &key("meters"), meters).map(NeutralSource::Meters),
            };
            ok &= source.is_some();

            // A meter in two sets would get two verdicts for its `neutral_*` variables.
            if let Some(s) = &source {
                let spans = Self::meter_spans(t, &path);
                let listed: Vec<&String> = match s {
                    NeutralSource::Meter(m) => vec![m],
                    NeutralSource::Meters(m) => m.iter().collect(),
                };
                for (j, m) in listed.into_iter().enumerate() {
                    let (span, k) = spans.get(j).cloned().unwrap_or((element.span(), key("meter")));
                    if let Some((p, line)) = used.get(m) {
                        let message = format!(
                            "meter {m:?} is already in {p} at line {line}: a meter belongs to one set"
                        );
                        self.error(span, k, message);
                        ok = false;
                    } else {
                        used.insert(m.clone(), (path.clone(), self.line(span.start)));
                    }
                }
            }

            let nominal = match t.get("nominal") {
                Some(v) => self.number_in(v, &key("nominal"), 50.0, 500.0),
                None => Some(230.0),
            };
            let shift = match t.get("shift") {
                Some(v) => self.number_in(v, &key("shift"), 1.0, 200.0),
                None => Some(20.0),
            };
            if let (Some(n), Some(s), Some(v)) = (nominal, shift, t.get("shift")) {
                if s >= 0.5 * n {
                    let message =
                        format!("{s} V is more than half the nominal {n} V: no neutral moves that far");
                    self.error(v.span(), key("shift"), message);
                    ok = false;
                }
            }
            let sensitivity = match t.get("sensitivity") {
                None => Some(Sensitivity::Normal),
                Some(v) => match self.string(v, &key("sensitivity")).as_deref() {
                    None => None,
                    Some("low") => Some(Sensitivity::Low),
                    Some("normal") => Some(Sensitivity::Normal),
                    Some("high") => Some(Sensitivity::High),
                    Some(other) => {
                        let hint = suggest(other, ["low", "normal", "high"])
                            .map_or(String::new(), |s| format!(" (did you mean \"{s}\"?)"));
                        let message = format!("unknown sensitivity {other:?}{hint}: low, normal or high");
                        self.error(v.span(), key("sensitivity"), message);
                        None
                    }
                },
            };
            if let (true, Some(name), Some(source), Some(nominal), Some(shift), Some(sensitivity)) =
                (ok, name, source, nominal, shift, sensitivity)
            {
                sets.push(NeutralSet { name, source, nominal, shift, sensitivity });
            } else {
                self.neutral_incomplete = true;
            }
        }
        sets
    }

    /// The span and key of each meter name written in set `path` (`meter`, or each of `meters`).
    fn meter_spans(t: &DeTable<'_>, path: &str) -> Vec<(Range<usize>, String)> {
        if let Some(v) = t.get("meter") {
            return vec![(v.span(), format!("{path}.meter"))];
        }
        match t.get("meters").map(|v| v.get_ref()) {
            Some(DeValue::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(j, item)| (item.span(), format!("{path}.meters[{j}]")))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Checks that `name` is a meter fit for a set: three-phase when `phase` is None, else a
    /// single-phase meter on `phase`. Reports why not.
    fn set_meter(
        &mut self,
        v: &Value<'_>,
        key: &str,
        name: &str,
        meters: Option<&[Meter]>,
        phase: Option<Phase>,
    ) -> bool {
        let Some(meters) = meters else { return true };
        let Some(m) = meters.iter().find(|m| m.name == name) else {
            let hint = match suggest(name, meters.iter().map(|m| m.name.as_str())) {
                Some(s) => format!(" (did you mean {s:?}?)"),
                None => {
                    let all: Vec<String> = meters.iter().map(|m| format!("{:?}", m.name)).collect();
                    format!("; declared: {}", all.join(", "))
                }
            };
            self.error(v.span(), key, format!("unknown meter {name:?}{hint}"));
            return false;
        };
        match phase {
            None if !m.is_three_phase() => {
                let message = format!(
                    "meter {name:?} ({}) measures one phase: give three single-phase meters as \
                     `meters = [L1, L2, L3]`, or a three-phase meter here",
                    m.model
                );
                self.error(v.span(), key, message);
                false
            }
            Some(_) if m.is_three_phase() => {
                let message = format!(
                    "meter {name:?} ({}) measures three phases: give it alone as `meter = {name:?}`",
                    m.model
                );
                self.error(v.span(), key, message);
                false
            }
            Some(p) if m.phase != p => {
                let message = format!(
                    "meter {name:?} is on {:?} (its `phase`), but this place in `meters` is {p:?}: \
                     list the meters in the order L1, L2, L3, or set `phase = \"{p:?}\"` on it",
                    m.phase
                );
                self.error(v.span(), key, message);
                false
            }
            _ => true,
        }
    }

    /// `meters = ["a", "b", "c"]`: three single-phase meters on L1, L2, L3.
    fn set_meters(&mut self, v: &Value<'_>, key: &str, meters: Option<&[Meter]>) -> Option<[String; 3]> {
        if self.is_damaged(v) {
            return None;
        }
        let Some(items) = v.get_ref().as_array() else {
            self.wrong_type(v, key, "an array of three meter names (L1, L2, L3)");
            return None;
        };
        if items.len() != 3 {
            let message =
                format!("{} meters given: a set is three single-phase meters, on L1, L2 and L3", items.len());
            self.error(v.span(), key, message);
            return None;
        }
        let mut names: Vec<String> = Vec::new();
        let mut ok = true;
        for (j, item) in items.iter().enumerate() {
            let k = format!("{key}[{j}]");
            let Some(name) = self.string(item, &k) else {
                ok = false;
                continue;
            };
            if names.contains(&name) {
                self.error(item.span(), k, format!("meter {name:?} is listed twice: one meter per phase"));
                ok = false;
                continue;
            }
            ok &= self.set_meter(item, &k, &name, meters, Some(PHASES[j]));
            names.push(name);
        }
        if !ok {
            return None;
        }
        names.try_into().ok()
    }

    /// A number (integer or float) within `min..=max`.
    fn number_in(&mut self, v: &Value<'_>, key: &str, min: f64, max: f64) -> Option<f64> {
        let n = self.number(v, key, "a number of volts")?;
        if !(min..=max).contains(&n) {
            self.error(v.span(), key, format!("{n} is out of range: must be {min}..={max} V"));
            return None;
        }
        Some(n)
    }
}
