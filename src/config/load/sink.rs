//! `[[sink]]`: where readings are written.

use super::{element_path, suggest, Loader, Value};
use crate::config::{Durability, GroupBy, TimeZone};
use crate::config::{Gateway, Secret, Sink, SinkKind};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use toml::de::DeTable;

const COMMON_KEYS: &[&str] = &[
    "name",
    "type",
    "batch",
    "flush_interval",
    "timeout",
    "durability",
    "sync_interval",
    "max_backoff",
    "spool_max",
    "measurement",
];
const INFLUXDB1_KEYS: &[&str] =
    &["url", "database", "retention_policy", "username", "password", "password_file"];
const INFLUXDB2_KEYS: &[&str] = &["url", "org", "bucket", "token", "token_file"];
const CSV_KEYS: &[&str] = &["dir", "group_by", "timezone"];
const TYPES: &[&str] = &["influxdb1", "influxdb2", "csv"];

const DEFAULT_BATCH: usize = 1000;
const MAX_BATCH: i64 = 100_000;
const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_SINK_BACKOFF: Duration = Duration::from_secs(60);
const DEFAULT_SPOOL_MAX: u64 = 512 << 20;
const MIN_SPOOL_MAX: u64 = 1 << 20;
const DEFAULT_MEASUREMENT: &str = "pmtr";

/// Parses `"512MiB"`, `"2GB"`, `"100k"`: a whole number and a unit (B, k/KB, KiB, M/MB, MiB,
/// G/GB, GiB; decimal units are powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 =
        number.parse().map_err(|_| format!("invalid size {s:?}: write e.g. \"512MiB\" or \"2GB\""))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "" => return Err(format!("size {s:?} has no unit: write \"{n}MiB\" or \"{n}MB\"")),
        other => return Err(format!("unknown unit {other:?} in size {s:?} (B, KB, KiB, MB, MiB, GB, GiB)")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("size {s:?} is too large"))
}

impl Loader<'_> {
    /// Every `[[sink]]`, or the default CSV sink when there is none.
    pub(super) fn sinks(&mut self, root: &DeTable<'_>, gateway: &Gateway) -> Vec<Sink> {
        let Some(elements) = self.elements(root, "sink") else {
            return vec![default_csv(gateway)];
        };
        let mut sinks = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, v, t) in elements {
            let Some(sink) = self.sink(i, v, t, gateway) else { continue };
            let name_span = t.get("name").map_or(v.span(), |n| n.span());
            if let Some(first) = names.get(&sink.name) {
                let message = format!(
                    "two sinks are named {:?} (sink[{first}] too): give each its own `name`, it names its \
                     spool folder",
                    sink.name
                );
                self.error(name_span, format!("{}.name", element_path("sink", i, t)), message);
                continue;
            }
            names.insert(sink.name.clone(), i);
            sinks.push(sink);
        }
        if sinks.is_empty() && self.errors.is_empty() {
            sinks.push(default_csv(gateway));
        }
        sinks
    }

    /// One `[[sink]]`: its type, its name, the settings every sink has, then its own keys,
    /// in that order (the order of its errors).
    fn sink(
        &mut self,
        index: usize,
        element: &Value<'_>,
        t: &DeTable<'_>,
        gateway: &Gateway,
    ) -> Option<Sink> {
        let path = element_path("sink", index, t);
        let kind_name = self.sink_type(element, t, &path);
        let own: &[&str] = match kind_name {
            Some("influxdb1") => INFLUXDB1_KEYS,
            Some("influxdb2") => INFLUXDB2_KEYS,
            Some("csv") => CSV_KEYS,
            _ => &[],
        };
        let allowed: Vec<&str> = COMMON_KEYS.iter().chain(own).copied().collect();
        if kind_name.is_some() {
            self.check_keys(t, &path, &allowed);
        }
        let name = self.sink_name(t, &path)?;
        let mut sink = with_defaults(
            "",
            SinkKind::Csv { dir: PathBuf::new(), group_by: GroupBy::Meter, timezone: TimeZone::Local },
        );
        self.sink_settings(t, &path, &mut sink);
        let kind = match kind_name? {
            "influxdb1" => self.influxdb1(element, t, &path)?,
            "influxdb2" => self.influxdb2(element, t, &path)?,
            _ => self.csv(t, &path, gateway)?,
        };
        sink.name = name.unwrap_or_else(|| kind.type_name().to_owned());
        sink.kind = kind;
        Some(sink)
    }

    /// `type`: one of [`TYPES`], with a hint for the names people write instead.
    fn sink_type(&mut self, element: &Value<'_>, t: &DeTable<'_>, path: &str) -> Option<&'static str> {
        let key = |k: &str| format!("{path}.{k}");
        let Some(v) = t.get("type") else {
            self.error(
                element.span(),
                key("type"),
                format!("missing required key (one of: {})", TYPES.join(", ")),
            );
            return None;
        };
        let s = self.string(v, &key("type"))?;
        if let Some(k) = TYPES.iter().find(|k| k.eq_ignore_ascii_case(&s)) {
            return Some(k);
        }
        let mut message = format!("unknown sink type {s:?}, expected one of: {}", TYPES.join(", "));
        let hint = match s.to_ascii_lowercase().as_str() {
            "influxdb" | "influx" => Some("influxdb1 (InfluxDB 1.x) or influxdb2 (2.x and 3.x)"),
            "influxdb3" => Some("influxdb2 (InfluxDB 3 takes the v2 write API)"),
            _ => None,
        };
        if let Some(h) = hint.or_else(|| suggest(&s, TYPES.iter().copied())) {
            message.push_str(&format!(" (did you mean {h}?)"));
        }
        self.error(v.span(), key("type"), message);
        None
    }

    /// `name`, if given: Some(None) when absent, None when it is unusable (it names a folder).
    fn sink_name(&mut self, t: &DeTable<'_>, path: &str) -> Option<Option<String>> {
        let key = format!("{path}.name");
        let Some(v) = t.get("name") else { return Some(None) };
        let n = self.non_empty_string(v, &key)?;
        if !super::is_bare_key(&n) {
            self.error(
                v.span(),
                key,
                format!("invalid name {n:?}: use only letters, digits, `_` and `-` (it names a folder)"),
            );
            return None;
        }
        Some(Some(n))
    }

    /// The settings every sink has: batch, intervals, durability, spool size, measurement.
    fn sink_settings(&mut self, t: &DeTable<'_>, path: &str, sink: &mut Sink) {
        let key = |k: &str| format!("{path}.{k}");
        if let Some(v) = t.get("batch") {
            sink.batch =
                self.integer_in(v, &key("batch"), 1..=MAX_BATCH).map_or(DEFAULT_BATCH, |n| n as usize);
        }
        let ms = Duration::from_millis;
        for (name, min, max, field) in [
            ("flush_interval", ms(10), ms(3_600_000), &mut sink.flush_interval),
            ("timeout", ms(100), ms(600_000), &mut sink.timeout),
            ("sync_interval", ms(10), ms(3_600_000), &mut sink.sync_interval),
            ("max_backoff", ms(1000), ms(3_600_000), &mut sink.max_backoff),
        ] {
            if let Some(d) = t.get(name).and_then(|v| self.duration_in(v, &key(name), Some(min), max)) {
                *field = d;
            }
        }
        if let Some(v) = t.get("durability") {
            if let Some(s) = self.string(v, &key("durability")) {
                match s.as_str() {
                    "outage" => sink.durability = Durability::Outage,
                    "always" => sink.durability = Durability::Always,
                    _ => self.error(
                        v.span(),
                        key("durability"),
                        format!(
                            "unknown durability {s:?}: \"outage\" (the disk is written only while the \
                             database is away) or \"always\" (every reading is written to disk first)"
                        ),
                    ),
                }
            }
        }
        if let Some(v) = t.get("spool_max") {
            if let Some(s) = self.string(v, &key("spool_max")) {
                match parse_size(&s) {
                    Ok(n) if n >= MIN_SPOOL_MAX => sink.spool_max = n,
                    Ok(_) => self.error(v.span(), key("spool_max"), "too small: at least \"1MiB\""),
                    Err(e) => self.error(v.span(), key("spool_max"), e),
                }
            }
        }
        if let Some(v) = t.get("measurement") {
            if let Some(m) = self.non_empty_string(v, &key("measurement")) {
                sink.measurement = m;
            }
        }
    }

    /// A key every sink of a type needs, reported at the sink when it is missing.
    fn required(&mut self, element: &Value<'_>, t: &DeTable<'_>, path: &str, k: &str) -> Option<String> {
        let key = format!("{path}.{k}");
        match t.get(k) {
            Some(v) => self.non_empty_string(v, &key),
            None => {
                self.error(element.span(), key, "missing required key");
                None
            }
        }
    }

    fn influxdb1(&mut self, element: &Value<'_>, t: &DeTable<'_>, path: &str) -> Option<SinkKind> {
        let key = |k: &str| format!("{path}.{k}");
        let url = self.required(element, t, path, "url").and_then(|u| self.url(t, &u, &key("url")));
        let database = self.required(element, t, path, "database");
        let retention_policy =
            t.get("retention_policy").and_then(|v| self.non_empty_string(v, &key("retention_policy")));
        let username = t.get("username").and_then(|v| self.non_empty_string(v, &key("username")));
        let password = self.secret(t, "password", "password_file", path);
        if password.is_some() && username.is_none() {
            let span = t.get("password").or(t.get("password_file")).map_or(element.span(), |v| v.span());
            self.error(span, key("username"), "a password needs a `username`");
        }
        Some(SinkKind::InfluxDb1 { url: url?, database: database?, retention_policy, username, password })
    }

    fn influxdb2(&mut self, element: &Value<'_>, t: &DeTable<'_>, path: &str) -> Option<SinkKind> {
        let key = |k: &str| format!("{path}.{k}");
        let url = self.required(element, t, path, "url").and_then(|u| self.url(t, &u, &key("url")));
        let org = self.required(element, t, path, "org");
        let bucket = self.required(element, t, path, "bucket");
        let token = self.secret(t, "token", "token_file", path);
        if token.is_none() && !t.contains_key("token") && !t.contains_key("token_file") {
            self.error(
                element.span(),
                key("token"),
                "missing required key: `token` or `token_file` (an API token with write access \
                 to the bucket)",
            );
        }
        Some(SinkKind::InfluxDb2 { url: url?, org: org?, bucket: bucket?, token: token? })
    }

    fn csv(&mut self, t: &DeTable<'_>, path: &str, gateway: &Gateway) -> Option<SinkKind> {
        let key = |k: &str| format!("{path}.{k}");
        let dir = match t.get("dir") {
            Some(v) => PathBuf::from(self.non_empty_string(v, &key("dir"))?),
            None => gateway.state_dir.join("csv"),
        };
        let mut group_by = GroupBy::Meter;
        if let Some(v) = t.get("group_by") {
            match self.string(v, &key("group_by")).as_deref() {
                Some("meter") => group_by = GroupBy::Meter,
                Some("bus") => group_by = GroupBy::Bus,
                Some("gateway") => group_by = GroupBy::Gateway,
                Some(other) => self.error(
                    v.span(),
                    key("group_by"),
                    format!("unknown grouping {other:?}: \"meter\", \"bus\" or \"gateway\" (one file)"),
                ),
                None => {}
            }
        }
        let mut timezone = TimeZone::Local;
        if let Some(v) = t.get("timezone") {
            match self.string(v, &key("timezone")).as_deref() {
                Some("local") => timezone = TimeZone::Local,
                Some("utc") | Some("UTC") => timezone = TimeZone::Utc,
                Some(other) => {
                    self.error(v.span(), key("timezone"), format!("unknown {other:?}: \"local\" or \"utc\""))
                }
                None => {}
            }
        }
        Some(SinkKind::Csv { dir, group_by, timezone })
    }

    fn url(&mut self, t: &DeTable<'_>, url: &str, key: &str) -> Option<String> {
        let span = t.get("url").map(|v| v.span()).unwrap_or(0..0);
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                Some(url.trim_end_matches('/').to_owned())
            }
            Ok(_) => {
                let url = crate::config::redact_urls(url);
                self.error(span, key, format!("{url:?} is not an http:// or https:// URL"));
                None
            }
            Err(e) => {
                let url = crate::config::redact_urls(url);
                self.error(
                    span,
                    key,
                    format!("invalid URL {url:?}: {e} (write e.g. \"http://127.0.0.1:8086\")"),
                );
                None
            }
        }
    }

    /// A secret given inline (`token`) or in a file (`token_file`, first line). Relative
    /// paths are relative to the config file.
    pub(super) fn secret(&mut self, t: &DeTable<'_>, inline: &str, file: &str, path: &str) -> Option<Secret> {
        let key = |k: &str| format!("{path}.{k}");
        match (t.get(inline), t.get(file)) {
            (Some(v), Some(_)) => {
                self.error(v.span(), key(inline), format!("give `{inline}` or `{file}`, not both"));
                None
            }
            (Some(v), None) => self.non_empty_string(v, &key(inline)).map(Secret::from),
            (None, Some(v)) => {
                let name = self.non_empty_string(v, &key(file))?;
                let p = self.relative_to_config(&name);
                match std::fs::read_to_string(&p) {
                    Ok(text) => match text.lines().next().map(str::trim).filter(|l| !l.is_empty()) {
                        Some(secret) => Some(Secret::new(secret)),
                        None => {
                            self.error(v.span(), key(file), format!("{} is empty", p.display()));
                            None
                        }
                    },
                    Err(e) => {
                        self.error(v.span(), key(file), format!("cannot read {}: {e}", p.display()));
                        None
                    }
                }
            }
            (None, None) => None,
        }
    }
}

/// A sink of `kind` with every common setting at its default.
fn with_defaults(name: &str, kind: SinkKind) -> Sink {
    Sink {
        name: name.to_owned(),
        kind,
        batch: DEFAULT_BATCH,
        flush_interval: DEFAULT_FLUSH_INTERVAL,
        timeout: DEFAULT_HTTP_TIMEOUT,
        durability: Durability::Outage,
        sync_interval: DEFAULT_SYNC_INTERVAL,
        max_backoff: DEFAULT_SINK_BACKOFF,
        spool_max: DEFAULT_SPOOL_MAX,
        measurement: DEFAULT_MEASUREMENT.to_owned(),
    }
}

fn default_csv(gateway: &Gateway) -> Sink {
    with_defaults(
        "csv",
        SinkKind::Csv {
            dir: gateway.state_dir.join("csv"),
            group_by: GroupBy::Meter,
            timezone: TimeZone::Local,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("100 k"), Ok(100_000));
        assert!(parse_size("12").unwrap_err().contains("no unit"));
        assert!(parse_size("1.5GB").is_err());
        assert!(parse_size("9999999999999GiB").unwrap_err().contains("too large"));
    }
}
