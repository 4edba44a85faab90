//! `[[bus]]`: serial and network buses, their line settings and ports.

use super::diagnostics::{element_path, suggest};
use super::read::de;
use super::{BusDraft, Loader, Value};
use crate::config::{BusKind, Parity};
use std::time::Duration;
use toml::de::DeTable;

pub(super) const BUS_KEYS: &[&str] = &[
    "name",
    "port",
    "ports",
    "baud",
    "parity",
    "data_bits",
    "stop_bits",
    "timeout",
    "retries",
    "frame_gap",
    "max_backoff",
    "rescan",
    "kind",
    "host",
];

/// The baud rates a `[[bus]]` may use.
pub const BAUD_RATES: [u32; 9] = [1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200];

pub(super) const MIN_TIMEOUT: Duration = Duration::from_millis(10);

pub(super) const MAX_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) const MAX_RETRIES: i64 = 10;

pub(super) const MAX_FRAME_GAP: Duration = Duration::from_secs(1);

/// On a power-line bus the gap paces the servers, which take one frame per main loop (about
/// 1.2 s): two loops' worth fits.
pub(super) const MAX_POWER_LINE_FRAME_GAP: Duration = Duration::from_secs(3);

/// The shortest `max_backoff` and `rescan`: anything shorter would spin.
pub(super) const MIN_PERIOD: Duration = Duration::from_millis(100);

/// The longest bus `max_backoff` and `rescan`: an hour.
pub(super) const MAX_BUS_BACKOFF: Duration = Duration::from_secs(3600);

pub(super) const MAX_RESCAN: Duration = Duration::from_secs(3600);

impl Loader<'_> {
    pub(super) fn bus(&mut self, index: usize, element: &Value<'_>, t: &DeTable<'_>) -> BusDraft {
        let path = element_path("bus", index, t);
        self.check_keys(t, &path, BUS_KEYS);
        let key = |k: &str| format!("{path}.{k}");
        let mut bus = BusDraft {
            path: path.clone(),
            name: None,
            ports: None,
            baud: None,
            parity: None,
            data_bits: None,
            stop_bits: None,
            timeout: None,
            retries: None,
            frame_gap: None,
            max_backoff: None,
            rescan: None,
            kind: None,
        };
        match t.get("name") {
            Some(v) => {
                bus.name = self
                    .name(v, &key("name"), "it becomes a tag and, with `group_by = \"bus\"`, a CSV file name")
                    .map(|n| (n, v.span()))
            }
            None => self.error(element.span(), key("name"), "missing required key"),
        }
        // A bus over the network names a `host`, not serial ports.
        let network = t
            .get("kind")
            .and_then(|v| v.get_ref().as_str())
            .and_then(BusKind::parse)
            .filter(|k| k.is_network());
        if let Some(kind) = network {
            self.network_bus(element, t, &key, &mut bus, kind);
        } else if let Some((k, _)) = t.get_key_value("host") {
            self.error(
                k.span(),
                key("host"),
                "only for a bus of `kind = \"rtu-over-tcp\"` or `\"tcp\"`; a serial bus names its `port` or `ports`",
            );
        }
        match (t.get_key_value("port"), t.get_key_value("ports")) {
            _ if network.is_some() => {}
            (Some((pk, _)), Some((sk, _))) => {
                let (second, name) =
                    if pk.span().start > sk.span().start { (pk, "port") } else { (sk, "ports") };
                self.error(second.span(), key(name), "give either `port` or `ports`, not both");
            }
            (Some((_, v)), None) => {
                bus.ports = self.port_pattern(v, &key("port")).map(|p| vec![p]);
            }
            (None, Some((_, v))) => bus.ports = self.port_list(v, &key("ports")),
            (None, None) => self.error(
                element.span(),
                key("ports"),
                "missing required key (or `port` for a single one), e.g. ports = [\"/dev/ttyUSB*\"]",
            ),
        }
        if let Some(v) = t.get("baud") {
            if let Some(n) = self.integer(v, &key("baud")) {
                match u32::try_from(n).ok().filter(|b| BAUD_RATES.contains(b)) {
                    Some(b) => bus.baud = Some(b),
                    None => {
                        let rates: Vec<String> = BAUD_RATES.iter().map(u32::to_string).collect();
                        self.error(
                            v.span(),
                            key("baud"),
                            format!("unsupported baud rate {n}, expected one of {}", rates.join(", ")),
                        );
                    }
                }
            }
        }
        if let Some(v) = t.get("parity") {
            bus.parity = self.parity(v, &key("parity"));
        }
        if let Some(v) = t.get("data_bits") {
            bus.data_bits = self.one_of(v, &key("data_bits"), &[7, 8], "7 or 8");
        }
        if let Some(v) = t.get("stop_bits") {
            bus.stop_bits = self.one_of(v, &key("stop_bits"), &[1, 2], "1 or 2");
        }
        if let Some(v) = t.get("timeout") {
            bus.timeout = self.duration_in(v, &key("timeout"), Some(MIN_TIMEOUT), MAX_TIMEOUT);
        }
        if let Some(v) = t.get("retries") {
            bus.retries =
                self.integer_in(v, &key("retries"), 0..=MAX_RETRIES).and_then(|n| u32::try_from(n).ok());
        }
        if let Some(v) = t.get("frame_gap") {
            let power_line = t
                .get("kind")
                .and_then(|k| k.get_ref().as_str().and_then(BusKind::parse))
                .is_some_and(|k| k == BusKind::PowerLine);
            let max = if power_line { MAX_POWER_LINE_FRAME_GAP } else { MAX_FRAME_GAP };
            bus.frame_gap = self.duration_in(v, &key("frame_gap"), None, max);
        }
        if let Some(v) = t.get("max_backoff") {
            bus.max_backoff = self.duration_in(v, &key("max_backoff"), Some(MIN_PERIOD), MAX_BUS_BACKOFF);
        }
        if let Some(v) = t.get("rescan") {
            bus.rescan = self.duration_in(v, &key("rescan"), Some(MIN_PERIOD), MAX_RESCAN);
        }
        if let Some(v) = t.get("kind") {
            if let Some(s) = self.string(v, &key("kind")) {
                match BusKind::parse(&s) {
                    Some(k) => bus.kind = Some((k, v.span())),
                    None => {
                        let hint = match s.to_ascii_lowercase().replace(['_', ' '], "-").as_str() {
                            "powerline" | "plc" | "power-line" => " (did you mean \"power-line\"?)",
                            "rs-485" | "rs485" | "modbus" | "rtu" => " (did you mean \"rs485\"?)",
                            "modbus-tcp" | "modbustcp" | "mbap" => " (did you mean \"tcp\"?)",
                            "rtu-tcp" | "rtuovertcp" | "rtu-over-ip" | "tcp-rtu" => {
                                " (did you mean \"rtu-over-tcp\"?)"
                            }
                            _ => "",
                        };
                        self.error(
                            v.span(),
                            key("kind"),
                            format!(
                                "unknown bus kind {s:?}: \"rs485\" (the default), \"power-line\" \
                                 (PMTR_001_SRV servers behind a power-line modem), \"rtu-over-tcp\" \
                                 (RTU frames through a network converter) or \"tcp\" (Modbus TCP){hint}"
                            ),
                        );
                    }
                }
            }
        }
        bus
    }

    /// The `host = "H:P"` of a bus over the network (its only "port"), and no serial ports.
    pub(super) fn network_bus(
        &mut self,
        element: &Value<'_>,
        t: &DeTable<'_>,
        key: &dyn Fn(&str) -> String,
        bus: &mut BusDraft,
        kind: BusKind,
    ) {
        if kind == BusKind::Tcp {
            for k in ["baud", "parity", "data_bits", "stop_bits", "frame_gap"] {
                if let Some((k_span, _)) = t.get_key_value(k) {
                    self.error(
                        k_span.span(),
                        key(k),
                        "a Modbus TCP bus has no serial line (a gateway's serial side is set on the gateway)",
                    );
                }
            }
        }
        for k in ["port", "ports"] {
            if let Some((k_span, _)) = t.get_key_value(k) {
                self.error(
                    k_span.span(),
                    key(k),
                    "a bus over the network has no serial port: give its converter as `host = \"HOST:PORT\"`",
                );
            }
        }
        match t.get("host") {
            None => self.error(
                element.span(),
                key("host"),
                "missing required key, e.g. host = \"192.168.1.50:502\"",
            ),
            Some(v) => {
                if let Some(h) = self.non_empty_string(v, &key("host")) {
                    match crate::config::check_host(&h) {
                        Ok(()) => bus.ports = Some(vec![h]),
                        Err(why) => self.error(v.span(), key("host"), why),
                    }
                }
            }
        }
    }

    pub(super) fn port_pattern(&mut self, v: &Value<'_>, key: &str) -> Option<String> {
        let p = self.non_empty_string(v, key)?;
        if let Err(e) = glob::Pattern::new(&p) {
            self.error(v.span(), key, format!("invalid glob pattern {p:?}: {e}"));
            return None;
        }
        Some(p)
    }

    pub(super) fn port_list(&mut self, v: &Value<'_>, key: &str) -> Option<Vec<String>> {
        if self.is_damaged(v) {
            return None;
        }
        let Some(items) = v.get_ref().as_array() else {
            let message = if v.get_ref().is_str() {
                "an array of strings (or use `port` for one)"
            } else {
                "an array of strings"
            };
            self.wrong_type(v, key, message);
            return None;
        };
        if items.is_empty() {
            self.error(v.span(), key, "must not be empty: give at least one port path or pattern");
            return None;
        }
        let mut ports = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.port_pattern(item, &format!("{key}[{i}]")) {
                Some(p) => ports.push(p),
                None => ok = false,
            }
        }
        ok.then_some(ports)
    }

    pub(super) fn parity(&mut self, v: &Value<'_>, key: &str) -> Option<Parity> {
        if self.is_damaged(v) {
            return None;
        }
        if !v.get_ref().is_str() {
            self.wrong_type(v, key, "\"none\", \"even\" or \"odd\"");
            return None;
        }
        match de::<Parity>(v) {
            Ok(p) => Some(p),
            Err(_) => {
                let s = v.get_ref().as_str().unwrap_or_default();
                let words = ["none", "even", "odd"];
                let hint = match s.to_ascii_lowercase().as_str() {
                    "n" => Some("none"),
                    "e" => Some("even"),
                    "o" => Some("odd"),
                    _ => suggest(s, words),
                };
                let mut message = format!("unknown parity {s:?}, expected \"none\", \"even\" or \"odd\"");
                if let Some(h) = hint {
                    message.push_str(&format!(" (did you mean \"{h}\"?)"));
                }
                self.error(v.span(), key, message);
                None
            }
        }
    }

    pub(super) fn one_of(&mut self, v: &Value<'_>, key: &str, allowed: &[u8], text: &str) -> Option<u8> {
        let n = self.integer(v, key)?;
        match u8::try_from(n).ok().filter(|n| allowed.contains(n)) {
            Some(n) => Some(n),
            None => {
                self.error(v.span(), key, format!("{n} is not supported: must be {text}"));
                None
            }
        }
    }
}
