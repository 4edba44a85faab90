//! `[energy]`: the time zone of the energy periods; `[[tariff]]`: prices for the cost.

use super::{element_path, suggest, Loader, Value};
use crate::config::tariff::{parse_days, parse_hours, Rate, Tariff};
use crate::config::{EnergySettings, Meter};
use std::collections::HashMap;
use toml::de::DeTable;

const ENERGY_KEYS: &[&str] = &["timezone"];
const TARIFF_KEYS: &[&str] = &["name", "currency", "price", "standing_charge", "meters", "rate"];
const RATE_KEYS: &[&str] = &["days", "hours", "price"];
/// A price above this per kWh (or per day) is a typo, whatever the currency's unit.
const MAX_PRICE: f64 = 1e6;

impl Loader<'_> {
    /// `[energy]` and every `[[tariff]]`. `meters` is None while the meters have errors.
    pub(super) fn energy(&mut self, root: &DeTable<'_>, meters: Option<&[Meter]>) -> EnergySettings {
        let mut settings = EnergySettings::default();
        if let Some(v) = root.get("energy") {
            match v.get_ref().as_table() {
                Some(t) => {
                    self.check_keys(t, "energy", ENERGY_KEYS);
                    if let Some(v) = t.get("timezone") {
                        settings.timezone = self.timezone(v, "energy.timezone");
                    }
                }
                None if self.is_damaged(v) => {}
                None => self.wrong_type(v, "energy", "a table [energy]"),
            }
        }
        let Some(elements) = self.elements(root, "tariff") else { return settings };
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, element, t) in elements {
            let path = element_path("tariff", i, t);
            let key = |k: &str| format!("{path}.{k}");
            self.check_keys(t, &path, TARIFF_KEYS);
            let mut ok = true;
            let name = match t.get("name") {
                Some(v) => {
                    self.name(v, &key("name"), "it names the tariff in storage, MQTT and `pmtr energy`")
                }
                None => {
                    self.error(element.span(), key("name"), "missing required key: the tariff's name");
                    None
                }
            };
            if let (Some(n), Some(v)) = (&name, t.get("name")) {
                if let Some(line) = names.get(n) {
                    self.error(
                        v.span(),
                        key("name"),
                        format!("duplicate tariff name {n:?}: already used at line {line}"),
                    );
                    ok = false;
                } else {
                    names.insert(n.clone(), self.line(v.span().start));
                }
            }
            let currency = match t.get("currency") {
                Some(v) => self.non_empty_string(v, &key("currency")),
                None => {
                    self.error(
                        element.span(),
                        key("currency"),
                        "missing required key: the currency (\"EUR\", \"USD\")",
                    );
                    None
                }
            };
            let price = match t.get("price") {
                Some(v) => self.price(v, &key("price")),
                None => {
                    self.error(element.span(), key("price"), "missing required key: the price per kWh");
                    None
                }
            };
            let standing_charge = match t.get("standing_charge") {
                Some(v) => self.price(v, &key("standing_charge")),
                None => Some(0.0),
            };
            let mut tariff_meters = Vec::new();
            if let Some(v) = t.get("meters") {
                match v.get_ref().as_array() {
                    Some(items) => {
                        for (j, item) in items.iter().enumerate() {
                            let k = format!("{}[{j}]", key("meters"));
                            let Some(m) = self.string(item, &k) else {
                                ok = false;
                                continue;
                            };
                            if let Some(all) = meters {
                                if !all.iter().any(|x| x.name == m) {
                                    let hint = suggest(&m, all.iter().map(|x| x.name.as_str()))
                                        .map_or(String::new(), |s| format!(" (did you mean \"{s}\"?)"));
                                    self.error(item.span(), k, format!("no [[meter]] named {m:?}{hint}"));
                                    ok = false;
                                    continue;
                                }
                            }
                            tariff_meters.push(m);
                        }
                    }
                    None if self.is_damaged(v) => ok = false,
                    None => {
                        self.wrong_type(v, &key("meters"), "an array of meter names");
                        ok = false;
                    }
                }
            }
            let mut rates = Vec::new();
            if let Some(v) = t.get("rate") {
                match v.get_ref().as_array() {
                    Some(items) => {
                        for (j, item) in items.iter().enumerate() {
                            let rpath = format!("{}[{j}]", key("rate"));
                            match item.get_ref().as_table() {
                                Some(rt) => match self.rate(item, rt, &rpath) {
                                    Some(r) => rates.push(r),
                                    None => ok = false,
                                },
                                None => {
                                    self.wrong_type(item, &rpath, "a table");
                                    ok = false;
                                }
                            }
                        }
                    }
                    None => {
                        if !self.is_damaged(v) {
                            self.wrong_type(v, &key("rate"), "an array of tables [[tariff.rate]]");
                        }
                        ok = false;
                    }
                }
            }
            if let (true, Some(name), Some(currency), Some(price), Some(standing_charge)) =
                (ok, name, currency, price, standing_charge)
            {
                settings.tariffs.push(Tariff {
                    name,
                    currency,
                    price,
                    standing_charge,
                    meters: tariff_meters,
                    rates,
                });
            }
        }
        settings
    }

    fn rate(&mut self, element: &Value<'_>, t: &DeTable<'_>, path: &str) -> Option<Rate> {
        let key = |k: &str| format!("{path}.{k}");
        self.check_keys(t, path, RATE_KEYS);
        let days = match t.get("days") {
            Some(v) => {
                let s = self.string(v, &key("days"))?;
                parse_days(&s).map_err(|e| self.error(v.span(), key("days"), e)).ok()
            }
            None => Some([true; 7]),
        };
        let hours = match t.get("hours") {
            Some(v) => {
                let s = self.string(v, &key("hours"))?;
                parse_hours(&s).map_err(|e| self.error(v.span(), key("hours"), e)).ok()
            }
            None => Some((0, 0)),
        };
        let price = match t.get("price") {
            Some(v) => self.price(v, &key("price")),
            None => {
                self.error(
                    element.span(),
                    key("price"),
                    "missing required key: the price per kWh in these hours",
                );
                None
            }
        };
        let ((from, to), days, price) = (hours?, days?, price?);
        Some(Rate { days, from, to, price })
    }

    fn price(&mut self, v: &Value<'_>, key: &str) -> Option<f64> {
        let p = self.number(v, key, "a price (a number)")?;
        if !(0.0..=MAX_PRICE).contains(&p) {
            self.error(
                v.span(),
                key,
                format!("{p} is out of range: a price is 0 or more (at most {MAX_PRICE})"),
            );
            return None;
        }
        Some(p)
    }

    fn timezone(&mut self, v: &Value<'_>, key: &str) -> Option<String> {
        let s = self.string(v, key)?;
        if s.parse::<chrono_tz::Tz>().is_ok() {
            return Some(s);
        }
        let hint = suggest(&s, chrono_tz::TZ_VARIANTS.iter().map(|z| z.name()))
            .map_or(String::new(), |s| format!(" (did you mean \"{s}\"?)"));
        self.error(
            v.span(),
            key,
            format!("unknown time zone {s:?}{hint}: an IANA name like \"Europe/Berlin\""),
        );
        None
    }
}
