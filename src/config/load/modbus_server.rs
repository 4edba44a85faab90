//! `[modbus_server]`: the Modbus TCP server answering other masters for pmtr's meters.

use super::Loader;
use crate::config::cidr::Cidr;
use crate::config::ModbusServerSettings;
use std::time::Duration;
use toml::de::DeTable;

const KEYS: &[&str] =
    &["enabled", "listen", "allow", "max_age", "max_connections", "requests_per_second", "queue"];
const MAX_AGE_MAX: Duration = Duration::from_secs(86_400);

impl Loader<'_> {
    /// `[modbus_server]`: None when the table is missing or `enabled = false`.
    pub(super) fn modbus_server(&mut self, root: &DeTable<'_>) -> Option<ModbusServerSettings> {
        const PATH: &str = "modbus_server";
        let v = root.get(PATH)?;
        let Some(t) = v.get_ref().as_table() else {
            if !self.is_damaged(v) {
                self.wrong_type(v, PATH, "a table [modbus_server]");
            }
            return None;
        };
        self.check_keys(t, PATH, KEYS);
        let mut s = ModbusServerSettings::default();
        let enabled = t.get("enabled").and_then(|v| self.boolean(v, "modbus_server.enabled")).unwrap_or(true);
        if let Some(v) = t.get("listen") {
            if let Some(text) = self.non_empty_string(v, "modbus_server.listen") {
                match text.trim().parse::<std::net::SocketAddr>() {
                    Ok(a) => s.listen = a,
                    Err(_) => self.error(
                        v.span(),
                        "modbus_server.listen",
                        format!("{text:?} is not an address and port: write e.g. \"127.0.0.1:1502\" or \"0.0.0.0:502\""),
                    ),
                }
            }
        }
        if let Some(v) = t.get("allow") {
            match v.get_ref().as_array() {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let key = format!("modbus_server.allow[{i}]");
                        if let Some(text) = self.non_empty_string(item, &key) {
                            match text.parse::<Cidr>() {
                                Ok(c) => s.allow.push(c),
                                Err(why) => self.error(item.span(), key, why),
                            }
                        }
                    }
                }
                None if self.is_damaged(v) => {}
                None => self.wrong_type(
                    v,
                    "modbus_server.allow",
                    "an array of networks, e.g. [\"192.168.1.0/24\"]",
                ),
            }
        }
        if let Some(v) = t.get("max_age") {
            if let Some(d) = self.duration_in(v, "modbus_server.max_age", None, MAX_AGE_MAX) {
                s.max_age = d;
            }
        }
        if let Some(v) = t.get("max_connections") {
            if let Some(n) = self.integer_in(v, "modbus_server.max_connections", 1..=1024) {
                s.max_connections = n as usize;
            }
        }
        if let Some(v) = t.get("requests_per_second") {
            if let Some(n) = self.integer_in(v, "modbus_server.requests_per_second", 1..=1_000_000) {
                s.requests_per_second = n as u32;
            }
        }
        if let Some(v) = t.get("queue") {
            if let Some(n) = self.integer_in(v, "modbus_server.queue", 1..=64) {
                s.queue = n as usize;
            }
        }
        if enabled && !s.listen.ip().is_loopback() && s.allow.is_empty() {
            let span = t.get("listen").map_or(v.span(), |v| v.span());
            self.error(
                span,
                "modbus_server.listen",
                format!(
                    "{} is reachable from the network and Modbus has no authentication: list the client \
                     networks let in with `allow = [\"192.168.1.0/24\"]`, or listen on 127.0.0.1",
                    s.listen
                ),
            );
        }
        enabled.then_some(s)
    }
}
