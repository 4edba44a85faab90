//! `[alerts]`: which events become mail and the limits against floods, and `[alerts.email]`,
//! the mail server alert mail goes through.

use super::{suggest, Loader, Value};
use crate::config::AlertKind;
use crate::config::{Alerts, EmailSettings, EmailTls};
use lettre::message::Mailbox;
use std::path::PathBuf;
use std::time::Duration;
use toml::de::{DeTable, DeValue};

const ALERTS_KEYS: &[&str] = &[
    "email",
    "digest",
    "min_interval",
    "max_per_hour",
    "database_after",
    "meter_after",
    "spool_mark",
    "kinds",
    "route",
    "queue_max",
];
const EMAIL_KEYS: &[&str] = &[
    "host",
    "port",
    "tls",
    "username",
    "password",
    "password_file",
    "password_env",
    "from",
    "to",
    "subject_prefix",
    "ca_file",
    "timeout",
];
const TLS_WORDS: [&str; 3] = ["starttls", "tls", "plain"];
const DEFAULT_SUBJECT_PREFIX: &str = "[pmtr]";
const DEFAULT_EMAIL_TIMEOUT: Duration = Duration::from_secs(30);
const MIN_EMAIL_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_EMAIL_TIMEOUT: Duration = Duration::from_secs(600);

impl Loader<'_> {
    /// `[alerts]` and its `email` table, if any.
    pub(super) fn alerts(&mut self, root: &DeTable<'_>) -> (Alerts, Option<EmailSettings>) {
        let mut alerts = Alerts::default();
        let Some(v) = root.get("alerts") else { return (alerts, None) };
        let Some(t) = v.get_ref().as_table() else {
            if !self.is_damaged(v) {
                self.wrong_type(v, "alerts", "a table [alerts]");
            }
            return (alerts, None);
        };
        self.check_keys(t, "alerts", ALERTS_KEYS);
        self.alert_limits(t, &mut alerts);
        let Some(e) = t.get("email") else { return (alerts, None) };
        let Some(et) = e.get_ref().as_table() else {
            if !self.is_damaged(e) {
                self.wrong_type(e, "alerts.email", "a table [alerts.email]");
            }
            return (alerts, None);
        };
        (alerts, self.email(e, et))
    }

    fn alert_limits(&mut self, t: &DeTable<'_>, a: &mut Alerts) {
        let s = Duration::from_secs;
        for (k, min, max, field) in [
            ("digest", Duration::ZERO, s(600), &mut a.digest),
            ("min_interval", Duration::ZERO, s(86_400), &mut a.min_interval),
            ("database_after", Duration::ZERO, s(86_400), &mut a.database_after),
            ("meter_after", s(1), s(86_400), &mut a.meter_after),
        ] {
            if let Some(d) =
                t.get(k).and_then(|v| self.duration_in(v, &format!("alerts.{k}"), Some(min), max))
            {
                *field = d;
            }
        }
        if let Some(n) =
            t.get("max_per_hour").and_then(|v| self.integer_in(v, "alerts.max_per_hour", 1..=1000))
        {
            a.max_per_hour = n as u32;
        }
        if let Some(n) = t.get("spool_mark").and_then(|v| self.integer_in(v, "alerts.spool_mark", 1..=100)) {
            a.spool_mark = n as u8;
        }
        if let Some(n) = t.get("queue_max").and_then(|v| self.integer_in(v, "alerts.queue_max", 1..=100_000))
        {
            a.queue_max = n as usize;
        }
        let names: Vec<&str> = AlertKind::ALL.iter().map(|k| k.name()).collect();
        if let Some(v) = t.get("kinds") {
            match v.get_ref().as_array() {
                Some(items) => {
                    a.kinds.clear();
                    for (i, item) in items.iter().enumerate() {
                        let key = format!("alerts.kinds[{i}]");
                        if let Some(k) =
                            self.string(item, &key).and_then(|n| self.alert_kind(item, &n, &key, &names))
                        {
                            a.kinds.push(k);
                        }
                    }
                }
                None if self.is_damaged(v) => {}
                None => {
                    self.wrong_type(v, "alerts.kinds", "an array of alert kinds, e.g. [\"trigger_tripped\"]")
                }
            }
        }
        if let Some(v) = t.get("route") {
            match v.get_ref().as_table() {
                Some(rt) => {
                    for (k, to) in rt.iter() {
                        let name: &str = k.get_ref();
                        let key = format!("alerts.route.{name}");
                        let Some(kind) = self.alert_kind_at(k.span(), name, &key, &names) else { continue };
                        if let Some(list) = self.mailboxes(to, &key) {
                            a.route.push((kind, list));
                        }
                    }
                }
                None if self.is_damaged(v) => {}
                None => self.wrong_type(
                    v,
                    "alerts.route",
                    "a table of kind = [recipients], e.g. [alerts.route] trigger_tripped = [\"ops@example.org\"]",
                ),
            }
        }
    }

    fn alert_kind(&mut self, v: &Value<'_>, name: &str, key: &str, names: &[&str]) -> Option<AlertKind> {
        self.alert_kind_at(v.span(), name, key, names)
    }

    fn alert_kind_at(
        &mut self,
        span: std::ops::Range<usize>,
        name: &str,
        key: &str,
        names: &[&str],
    ) -> Option<AlertKind> {
        let kind = AlertKind::parse(name);
        if kind.is_none() {
            let hint = suggest(name, names.iter().copied())
                .map(|s| format!(" (did you mean {s:?}?)"))
                .unwrap_or_else(|| format!(" (kinds: {})", names.join(", ")));
            self.error(span, key, format!("unknown alert kind {name:?}{hint}"));
        }
        kind
    }

    fn email(&mut self, element: &Value<'_>, t: &DeTable<'_>) -> Option<EmailSettings> {
        const PATH: &str = "alerts.email";
        let key = |k: &str| format!("{PATH}.{k}");
        self.check_keys(t, PATH, EMAIL_KEYS);
        let required = |l: &mut Self, k: &str, what: &str| -> Option<String> {
            match t.get(k) {
                Some(v) => l.non_empty_string(v, &key(k)),
                None => {
                    l.error(element.span(), key(k), format!("missing required key ({what})"));
                    None
                }
            }
        };

        let host = required(self, "host", "the mail server, e.g. host = \"smtp.example.org\"");
        let host = host.and_then(|h| {
            let h = h.trim().to_owned();
            if h.contains(['/', ':', ' ']) && h.parse::<std::net::Ipv6Addr>().is_err() {
                let span = t.get("host").map_or(element.span(), |v| v.span());
                self.error(
                    span,
                    key("host"),
                    format!("{h:?} is not a host name: write only the name (the port goes in `port`)"),
                );
                return None;
            }
            Some(h)
        });

        let mut tls = EmailTls::Starttls;
        if let Some(v) = t.get("tls") {
            if let Some(s) = self.string(v, &key("tls")) {
                match s.to_ascii_lowercase().as_str() {
                    "starttls" => tls = EmailTls::Starttls,
                    "tls" => tls = EmailTls::Tls,
                    "plain" => tls = EmailTls::Plain,
                    other => {
                        let mut message = format!(
                            "unknown {s:?}: \"starttls\" (port 587, the default), \"tls\" (implicit TLS, \
                             port 465) or \"plain\" (no encryption, port 25)"
                        );
                        let hint = match other {
                            "ssl" | "smtps" | "implicit" => Some("tls"),
                            "none" | "off" | "false" => Some("plain"),
                            "start_tls" | "start-tls" => Some("starttls"),
                            _ => suggest(other, TLS_WORDS),
                        };
                        if let Some(h) = hint {
                            message.push_str(&format!(" (did you mean \"{h}\"?)"));
                        }
                        self.error(v.span(), key("tls"), message);
                    }
                }
            }
        }
        let port = match t.get("port") {
            Some(v) => self.integer_in(v, &key("port"), 1..=65535).map(|p| p as u16),
            None => Some(tls.default_port()),
        };

        let username = t.get("username").and_then(|v| self.non_empty_string(v, &key("username")));
        let password = self.email_password(t, element);
        let secret_span = ["password", "password_file", "password_env"]
            .iter()
            .find_map(|k| t.get(*k).map(|v| v.span()))
            .unwrap_or(element.span());
        let has_password =
            t.contains_key("password") || t.contains_key("password_file") || t.contains_key("password_env");
        match (t.get("username"), has_password) {
            (Some(v), false) => self.error(
                v.span(),
                key("password"),
                "a username needs a password: give `password`, `password_file` or `password_env`",
            ),
            (None, true) => self.error(secret_span.clone(), key("username"), "a password needs a `username`"),
            _ => {}
        }
        if tls == EmailTls::Plain && (t.contains_key("username") || has_password) {
            let span = t.get("username").map_or(secret_span, |v| v.span());
            self.error(
                span,
                key("username"),
                "credentials are never sent over a plain connection: use tls = \"starttls\" or \"tls\", \
                 or remove `username` and the password for a relay that needs none",
            );
        }

        let from = required(self, "from", "the sender, e.g. from = \"pmtr <gateway@example.org>\"")
            .and_then(|f| self.mailbox(t.get("from"), &f, &key("from")));

        let to = match t.get("to") {
            None => {
                self.error(
                    element.span(),
                    key("to"),
                    "missing required key (the recipients, e.g. to = [\"ops@example.org\"])",
                );
                None
            }
            Some(v) => self.mailboxes(v, &key("to")),
        };

        let mut subject_prefix = DEFAULT_SUBJECT_PREFIX.to_owned();
        if let Some(v) = t.get("subject_prefix") {
            if let Some(s) = self.string(v, &key("subject_prefix")) {
                if s.contains(['\r', '\n']) {
                    self.error(v.span(), key("subject_prefix"), "must be one line");
                } else {
                    subject_prefix = s;
                }
            }
        }

        let ca_file = t.get("ca_file").map(|v| self.ca_file(v, &key("ca_file")));

        let mut timeout = DEFAULT_EMAIL_TIMEOUT;
        if let Some(v) = t.get("timeout") {
            if let Some(d) = self.duration_in(v, &key("timeout"), Some(MIN_EMAIL_TIMEOUT), MAX_EMAIL_TIMEOUT)
            {
                timeout = d;
            }
        }

        Some(EmailSettings {
            host: host?,
            port: port?,
            tls,
            username,
            password,
            from: from?,
            to: to?,
            subject_prefix,
            ca_file: match ca_file {
                Some(checked) => Some(checked?),
                None => None,
            },
            timeout,
        })
    }

    /// `password`, `password_file` or `password_env`: at most one of them.
    fn email_password(&mut self, t: &DeTable<'_>, element: &Value<'_>) -> Option<crate::config::Secret> {
        const PATH: &str = "alerts.email";
        let given: Vec<&str> = ["password", "password_file", "password_env"]
            .into_iter()
            .filter(|k| t.contains_key(*k))
            .collect();
        if given.len() > 1 {
            let second = t.get(given[1]).map_or(element.span(), |v| v.span());
            self.error(
                second,
                format!("{PATH}.{}", given[1]),
                format!(
                    "give one of `password`, `password_file` and `password_env`, not {}",
                    given.join(" and ")
                ),
            );
            return None;
        }
        if given.first() != Some(&"password_env") {
            return self.secret(t, "password", "password_file", PATH);
        }
        let v = t.get("password_env")?;
        let key = format!("{PATH}.password_env");
        let name = self.non_empty_string(v, &key)?;
        match std::env::var(&name) {
            Ok(p) if !p.trim().is_empty() => Some(crate::config::Secret::new(p.trim())),
            Ok(_) => {
                self.error(v.span(), key, format!("the environment variable {name} is empty"));
                None
            }
            Err(std::env::VarError::NotPresent) => {
                self.error(
                    v.span(),
                    key,
                    format!(
                        "the environment variable {name} is not set (under systemd, set it with \
                         `Environment=` or `EnvironmentFile=` in a unit override)"
                    ),
                );
                None
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                self.error(v.span(), key, format!("the environment variable {name} is not UTF-8"));
                None
            }
        }
    }

    fn mailbox(&mut self, v: Option<&Value<'_>>, text: &str, key: &str) -> Option<String> {
        let span = v.map_or(0..0, |v| v.span());
        match text.parse::<Mailbox>() {
            Ok(_) => Some(text.trim().to_owned()),
            Err(_) => {
                self.error(
                    span,
                    key,
                    format!(
                        "{text:?} is not a mail address: write \"name@example.org\" or \
                         \"Name <name@example.org>\""
                    ),
                );
                None
            }
        }
    }

    fn mailboxes(&mut self, v: &Value<'_>, key: &str) -> Option<Vec<String>> {
        if self.is_damaged(v) {
            return None;
        }
        let items = match v.get_ref() {
            DeValue::Array(items) => items,
            DeValue::String(_) => {
                self.wrong_type(v, key, "an array of mail addresses (write to = [\"ops@example.org\"])");
                return None;
            }
            _ => {
                self.wrong_type(v, key, "an array of mail addresses");
                return None;
            }
        };
        if items.is_empty() {
            self.error(v.span(), key, "must not be empty: give at least one recipient");
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let k = format!("{key}[{i}]");
            match self.non_empty_string(item, &k).and_then(|s| self.mailbox(Some(item), &s, &k)) {
                Some(m) => out.push(m),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// The path, relative to the config file's folder, of a readable PEM file with at least one
    /// certificate.
    pub(super) fn ca_file(&mut self, v: &Value<'_>, key: &str) -> Option<PathBuf> {
        let name = self.non_empty_string(v, key)?;
        let p = self.relative_to_config(&name);
        match std::fs::read_to_string(&p) {
            Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => Some(p),
            Ok(_) => {
                self.error(
                    v.span(),
                    key,
                    format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", p.display()),
                );
                None
            }
            Err(e) => {
                self.error(v.span(), key, format!("cannot read {}: {e}", p.display()));
                None
            }
        }
    }
}
