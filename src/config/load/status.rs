//! `[status]`: the local HTTP API and `/metrics`; `[mqtt]`: the broker, the topic tree and
//! Home Assistant discovery.

use super::{Loader, Value};
use crate::config::{MqttSettings, StatusSettings, StatusTls};
use std::time::Duration;
use toml::de::DeTable;

const STATUS_KEYS: &[&str] =
    &["enabled", "listen", "token", "token_file", "max_connections", "tls_cert", "tls_key"];
/// The most `max_connections` may be: each costs a file descriptor (the unit allows 8192).
const MAX_STATUS_CONNECTIONS: i64 = 1024;
const MQTT_KEYS: &[&str] = &[
    "enabled",
    "host",
    "port",
    "tls",
    "ca_file",
    "username",
    "password",
    "password_file",
    "client_id",
    "topic_prefix",
    "discovery",
    "discovery_prefix",
    "qos",
    "retain",
    "keep_alive",
    "max_backoff",
    "queue",
];
/// A token shorter than this is refused: it guards relays that switch real loads.
const MIN_TOKEN_LENGTH: usize = 16;
const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
const DEFAULT_MQTT_BACKOFF: Duration = Duration::from_secs(60);
const DEFAULT_QUEUE: usize = 1000;

impl Loader<'_> {
    /// `[status]`, with its defaults when the table is missing.
    pub(super) fn status(&mut self, root: &DeTable<'_>) -> StatusSettings {
        const PATH: &str = "status";
        let mut s = StatusSettings::default();
        let Some(v) = root.get(PATH) else { return s };
        let Some(t) = v.get_ref().as_table() else {
            if !self.is_damaged(v) {
                self.wrong_type(v, PATH, "a table [status]");
            }
            return s;
        };
        self.check_keys(t, PATH, STATUS_KEYS);
        if let Some(b) = t.get("enabled").and_then(|v| self.boolean(v, "status.enabled")) {
            s.enabled = b;
        }
        if let Some(v) = t.get("listen") {
            if let Some(text) = self.non_empty_string(v, "status.listen") {
                match text.trim().parse::<std::net::SocketAddr>() {
                    Ok(a) => s.listen = a,
                    Err(_) => self.error(
                        v.span(),
                        "status.listen",
                        format!(
                            "{text:?} is not an address and port: write e.g. \"127.0.0.1:9780\", \
                             \"0.0.0.0:9780\" (every interface, needs a token) or \"[::1]:9780\""
                        ),
                    ),
                }
            }
        }
        s.token = self.secret(t, "token", "token_file", PATH);
        let token_key = ["token", "token_file"].into_iter().find(|k| t.contains_key(*k));
        if let (Some(token), Some(k)) = (&s.token, token_key) {
            let token = token.expose();
            if token.chars().count() < MIN_TOKEN_LENGTH || token.chars().any(char::is_whitespace) {
                let span = t.get(k).map_or(v.span(), |v| v.span());
                self.error(
                    span,
                    format!("status.{k}"),
                    format!(
                        "the token must be at least {MIN_TOKEN_LENGTH} characters without spaces \
                         (e.g. the output of `openssl rand -hex 24`)"
                    ),
                );
            }
        }
        if let Some(v) = t.get("max_connections") {
            if let Some(n) = self.integer_in(v, "status.max_connections", 1..=MAX_STATUS_CONNECTIONS) {
                s.max_connections = n as usize;
            }
        }
        match (t.get("tls_cert"), t.get("tls_key")) {
            (None, None) => {}
            (Some(c), Some(k)) => s.tls = self.status_tls(c, k),
            (Some(given), None) | (None, Some(given)) => {
                let missing = if t.contains_key("tls_cert") { "tls_key" } else { "tls_cert" };
                self.error(
                    given.span(),
                    format!("status.{missing}"),
                    "give both `tls_cert` (the certificate chain, PEM) and `tls_key` (its private key, PEM)",
                );
            }
        }
        if s.enabled && !s.listen.ip().is_loopback() && token_key.is_none() {
            let span = t.get("listen").map_or(v.span(), |v| v.span());
            self.error(
                span,
                "status.listen",
                format!(
                    "{} is reachable from the network: set `token` or `token_file` too (clients then \
                     send `Authorization: Bearer TOKEN`), or listen on 127.0.0.1",
                    s.listen
                ),
            );
        }
        s
    }

    /// The certificate chain and key of the status API, read now: a missing file, a file
    /// without PEM, or a key that does not match the certificate is an error at the key.
    fn status_tls(&mut self, cert_v: &Value<'_>, key_v: &Value<'_>) -> Option<StatusTls> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let cert_name = self.non_empty_string(cert_v, "status.tls_cert");
        let key_name = self.non_empty_string(key_v, "status.tls_key");
        let cert = self.relative_to_config(&cert_name?);
        let key = self.relative_to_config(&key_name?);
        let chain = match std::fs::read(&cert) {
            Err(e) => Err(format!("cannot read {}: {e}", cert.display())),
            Ok(bytes) => match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
                Ok(chain) if !chain.is_empty() => Ok(chain),
                Ok(_) => {
                    Err(format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", cert.display()))
                }
                Err(e) => Err(format!("{}: bad PEM: {e}", cert.display())),
            },
        };
        let chain = chain.map_err(|e| self.error(cert_v.span(), "status.tls_cert", e)).ok();
        let private = match std::fs::read(&key) {
            Err(e) => Err(format!("cannot read {}: {e}", key.display())),
            Ok(bytes) => PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                format!(
                    "{} holds no usable private key ({e}): give the PEM key (-----BEGIN PRIVATE KEY-----, \
                     RSA or EC) of the certificate, unencrypted",
                    key.display()
                )
            }),
        };
        let private = private.map_err(|e| self.error(key_v.span(), "status.tls_key", e)).ok();
        let (chain, private) = (chain?, private?);
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())
            .and_then(|b| {
                b.with_no_client_auth().with_single_cert(chain, private).map_err(|e| e.to_string())
            });
        match server {
            Ok(mut server) => {
                server.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(StatusTls { cert, key, server: std::sync::Arc::new(server) })
            }
            Err(e) => {
                let message = format!("{} cannot serve {}: {e}", key.display(), cert.display());
                self.error(key_v.span(), "status.tls_key", message);
                None
            }
        }
    }

    /// `[mqtt]`, or None when the table is missing or `enabled = false`.
    pub(super) fn mqtt(&mut self, root: &DeTable<'_>, gateway: &str) -> Option<MqttSettings> {
        const PATH: &str = "mqtt";
        let key = |k: &str| format!("{PATH}.{k}");
        let element = root.get(PATH)?;
        let Some(t) = element.get_ref().as_table() else {
            if !self.is_damaged(element) {
                self.wrong_type(element, PATH, "a table [mqtt]");
            }
            return None;
        };
        self.check_keys(t, PATH, MQTT_KEYS);
        let enabled = t.get("enabled").and_then(|v| self.boolean(v, &key("enabled"))).unwrap_or(true);

        let host = match t.get("host") {
            Some(v) => self.non_empty_string(v, &key("host")).and_then(|h| {
                let h = h.trim().to_owned();
                if h.contains(['/', ':', ' ']) && h.parse::<std::net::Ipv6Addr>().is_err() {
                    self.error(
                        v.span(),
                        key("host"),
                        format!(
                            "{h:?} is not a host name: write only the name or address (the port goes \
                             in `port`, TLS in `tls = true`)"
                        ),
                    );
                    return None;
                }
                Some(h)
            }),
            None => {
                self.error(
                    element.span(),
                    key("host"),
                    "missing required key (the broker, e.g. host = \"192.168.1.10\")",
                );
                None
            }
        };
        let tls = t.get("tls").and_then(|v| self.boolean(v, &key("tls"))).unwrap_or(false);
        let port = match t.get("port") {
            Some(v) => self.integer_in(v, &key("port"), 1..=65535).map(|p| p as u16),
            None => Some(if tls { 8883 } else { 1883 }),
        };
        let ca_file = t.get("ca_file").map(|v| self.ca_file(v, &key("ca_file")));
        if let (Some(v), false) = (t.get("ca_file"), tls) {
            self.error(v.span(), key("ca_file"), "a CA file is only used with `tls = true`");
        }

        let username = t.get("username").and_then(|v| self.non_empty_string(v, &key("username")));
        let password = self.secret(t, "password", "password_file", PATH);
        let secret_span = ["password", "password_file"].iter().find_map(|k| t.get(*k).map(|v| v.span()));
        if let (None, Some(span)) = (t.get("username"), &secret_span) {
            self.error(span.clone(), key("username"), "a password needs a `username`");
        }

        let client_id = match t.get("client_id") {
            Some(v) => self.non_empty_string(v, &key("client_id")).and_then(|c| {
                if c.len() > 128 || c.contains(char::is_whitespace) {
                    self.error(v.span(), key("client_id"), "at most 128 characters, no spaces");
                    return None;
                }
                Some(c)
            }),
            None => Some(format!("pmtr-{}", crate::config::topic_level(gateway))),
        };
        let topic_prefix = match t.get("topic_prefix") {
            Some(v) => self.topic(v, &key("topic_prefix")),
            None => Some(format!("pmtr/{}", crate::config::topic_level(gateway))),
        };
        let discovery = t.get("discovery").and_then(|v| self.boolean(v, &key("discovery"))).unwrap_or(true);
        let discovery_prefix = match t.get("discovery_prefix") {
            Some(v) => self.topic(v, &key("discovery_prefix")),
            None => Some("homeassistant".to_owned()),
        };
        let qos = match t.get("qos") {
            Some(v) => self.integer_in(v, &key("qos"), 0..=2).map(|q| q as u8),
            None => Some(0),
        };
        let retain = t.get("retain").and_then(|v| self.boolean(v, &key("retain"))).unwrap_or(false);
        let mut keep_alive = DEFAULT_KEEP_ALIVE;
        if let Some(d) = t.get("keep_alive").and_then(|v| {
            self.duration_in(v, &key("keep_alive"), Some(Duration::from_secs(5)), Duration::from_secs(3600))
        }) {
            keep_alive = d;
        }
        let mut max_backoff = DEFAULT_MQTT_BACKOFF;
        if let Some(d) = t.get("max_backoff").and_then(|v| {
            self.duration_in(v, &key("max_backoff"), Some(Duration::from_secs(1)), Duration::from_secs(3600))
        }) {
            max_backoff = d;
        }
        let queue = match t.get("queue") {
            Some(v) => self.integer_in(v, &key("queue"), 10..=100_000).map(|n| n as usize),
            None => Some(DEFAULT_QUEUE),
        };
        if !enabled {
            return None;
        }
        Some(MqttSettings {
            host: host?,
            port: port?,
            tls,
            ca_file: match ca_file {
                Some(checked) => Some(checked?),
                None => None,
            },
            username,
            password,
            client_id: client_id?,
            topic_prefix: topic_prefix?,
            discovery,
            discovery_prefix: discovery_prefix?,
            qos: qos?,
            retain,
            keep_alive,
            max_backoff,
            queue: queue?,
        })
    }

    /// A topic prefix: levels separated by `/`, no wildcard, no empty level.
    fn topic(&mut self, v: &Value<'_>, key: &str) -> Option<String> {
        let s = self.non_empty_string(v, key)?;
        let problem = if s.contains(['+', '#']) {
            Some("must not contain the wildcards + or #")
        } else if s.starts_with('/') || s.ends_with('/') || s.contains("//") {
            Some("must have no empty level (no leading or trailing `/`, no `//`)")
        } else if s.chars().any(|c| c.is_control() || c == ' ') || s.starts_with('$') {
            Some("must have no spaces, control characters or leading `$`")
        } else {
            None
        };
        match problem {
            Some(p) => {
                self.error(v.span(), key, format!("{s:?}: a topic prefix {p}, e.g. \"pmtr/house-pi\""));
                None
            }
            None => Some(s),
        }
    }
}
