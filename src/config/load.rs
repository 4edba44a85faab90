//! The configuration loader: TOML text → [`Config`], or every error it has at once.
//!
//! The text is parsed with `toml`'s recoverable parser into a spanned tree, so a syntax error
//! does not hide the rest of the file: every key the parser could recover is still checked.
//! Each value is then deserialized on its own, with serde, from its spanned value, so that
//! every error carries the file, the line, the column and the key path, in the form
//! `FILE:LINE:COL: KEY: MESSAGE`:
//!
//! ```text
//! pmtr.toml:14:1: meter[1] "mainB".adress: unknown key (did you mean `address`?)
//! ```
//!
//! Elements of `[[bus]]` and `[[meter]]` are named by their position in their array, followed
//! by their name when it is known: `meter[2] "gen".address`, `bus[0].ports`.

mod bus;
mod diagnostics;
mod email;
mod energy;
mod meter;
mod modbus_server;
mod neutral;
mod read;
mod server;
mod sink;
mod status;
mod trigger;

use super::{Bus, BusKind, Config, Gateway, GpioBackend, LineSettings, Meter, Parity};
use crate::meter::definition::{Definition, Origin};
use crate::meter::Model;
use crate::reading::Phase;
use diagnostics::{element_path, is_bare_key, suggest, Lines};
pub use diagnostics::{ConfigError, ConfigErrors};
pub use read::parse_duration;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Every top-level key of the file. The loader reads `gateway`, `bus` and `meter` itself; any
/// other key listed here is accepted and left alone, for the subsystem that owns it to read.
/// A subsystem that adds a section adds its key here.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "gateway",
    "bus",
    "meter",
    "sink",
    "relay",
    "trigger",
    "alerts",
    "status",
    "mqtt",
    "neutral",
    "modbus_server",
    "energy",
    "tariff",
];

const GATEWAY_KEYS: &[&str] = &[
    "name",
    "state_dir",
    "log_readings",
    "gpio",
    "control_socket",
    "health_interval",
    "clock_sync_wait",
    "meters_dir",
];
/// `gateway.clock_sync_wait`: the default, and the longest.
const DEFAULT_CLOCK_SYNC_WAIT: Duration = Duration::from_secs(600);
const CLOCK_SYNC_WAIT_MAX: Duration = Duration::from_secs(86_400);
/// `gateway.health_interval`: the default, and the limits of a duration.
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(60);
const HEALTH_INTERVAL_MIN: Duration = Duration::from_secs(1);
const HEALTH_INTERVAL_MAX: Duration = Duration::from_secs(3600);

const FALLBACK_GATEWAY_NAME: &str = "pmtr";
const DEFAULT_STATE_DIR: &str = "/var/lib/pmtr";
/// `gateway.meters_dir`: where user meter definitions are looked for.
pub const DEFAULT_METERS_DIR: &str = "/etc/pmtr/meters.d";
const FALLBACK_BAUD: u32 = 9600;
const FALLBACK_PARITY: Parity = Parity::None;
const DEFAULT_DATA_BITS: u8 = 8;
const DEFAULT_STOP_BITS: u8 = 1;
const DEFAULT_TIMEOUT: Duration = super::DEFAULT_BUS_TIMEOUT;
const DEFAULT_RETRIES: u32 = super::DEFAULT_BUS_RETRIES;
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
const DEFAULT_RESCAN: Duration = Duration::from_secs(5);
const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// A PMTR_001_SRV answers once per main loop (about 1.2 s): each is read every 5 s by default,
/// and never more often than every 2 s.
const DEFAULT_SERVER_POLL: Duration = Duration::from_secs(5);
/// A power-line request waits for the server's next loop and the modem's transit both ways.
const DEFAULT_POWER_LINE_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads and validates a configuration file. A file that cannot be read gives one error at
/// line 0, column 0.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(src) => load_str(&src, &file),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file,
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }])),
    }
}

/// Validates a configuration. `file` is only used in the errors.
pub fn load_str(src: &str, file: &str) -> Result<Config, ConfigErrors> {
    let (root, syntax_errors) = DeTable::parse_recoverable(src);
    let root = root.into_inner();
    let mut l = Loader::new(src, file);
    l.syntax_errors(&root, &syntax_errors);
    let config = l.config(&root);
    let mut errors = l.errors;
    // The configuration's own errors first, then those of the meter definition files.
    errors.sort_by(|a, b| {
        (a.file != file, &a.file, a.line, a.column).cmp(&(b.file != file, &b.file, b.line, b.column))
    });
    errors.dedup();
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(ConfigErrors(errors)),
    }
}

type Value<'i> = Spanned<DeValue<'i>>;

struct BusDraft {
    path: String,
    name: Option<(String, Range<usize>)>,
    ports: Option<Vec<String>>,
    baud: Option<u32>,
    parity: Option<Parity>,
    data_bits: Option<u8>,
    stop_bits: Option<u8>,
    timeout: Option<Duration>,
    retries: Option<u32>,
    frame_gap: Option<Duration>,
    max_backoff: Option<Duration>,
    rescan: Option<Duration>,
    kind: Option<(BusKind, Range<usize>)>,
}

struct MeterDraft {
    path: String,
    span: Range<usize>,
    name: Option<(String, Range<usize>)>,
    model: Option<Model>,
    address: Option<(u8, Range<usize>)>,
    /// The bus as written; after the cross-checks, the bus it is on (None if unknown).
    bus: Option<(String, Range<usize>)>,
    bus_written: bool,
    poll: Option<(Duration, Range<usize>)>,
    phase: Option<(Phase, Range<usize>)>,
    server: Option<crate::config::ServerSettings>,
    unit: Option<(u8, Range<usize>)>,
    writable: Vec<u16>,
}

struct Loader<'s> {
    src: &'s str,
    file: &'s str,
    lines: Lines,
    /// Spans of syntax errors, by start, each with the largest end so far: a value the parser
    /// had to guess is not checked further.
    damaged: Vec<(usize, usize)>,
    errors: Vec<ConfigError>,
    /// The `[[neutral]]` sets, once read: trigger expressions resolve their variables.
    neutral: Vec<super::NeutralSet>,
    /// A `[[neutral]]` table had an error (reported) and is missing from `neutral`: a trigger's
    /// `neutral_*` variable that finds no set is not reported a second time.
    neutral_incomplete: bool,
    /// The user's meter definitions, the files of `gateway.meters_dir` (the built-ins are
    /// looked up when a meter names one).
    definitions: Vec<(Definition, Origin)>,
}

impl<'s> Loader<'s> {
    fn new(src: &'s str, file: &'s str) -> Self {
        Loader {
            src,
            file,
            lines: Lines::new(src),
            damaged: Vec::new(),
            errors: Vec::new(),
            neutral: Vec::new(),
            neutral_incomplete: false,
            definitions: Vec::new(),
        }
    }

    fn config(&mut self, root: &DeTable<'_>) -> Option<Config> {
        self.check_keys(root, "", TOP_LEVEL_KEYS);

        let gateway = self.gateway(root.get("gateway"));
        let gateway_name = gateway.name.clone();
        self.definitions(&gateway.meters_dir);

        let buses: Vec<BusDraft> = match self.elements(root, "bus") {
            Some(elements) => elements.into_iter().map(|(i, v, t)| self.bus(i, v, t)).collect(),
            None => Vec::new(),
        };

        if root.get("meter").is_none_or(|v| v.get_ref().as_array().is_some_and(|a| a.is_empty())) {
            self.error(0..0, "meter", "no [[meter]] declared");
        }
        let mut meters: Vec<MeterDraft> = match self.elements(root, "meter") {
            Some(elements) => elements.into_iter().map(|(i, v, t)| self.meter(i, v, t)).collect(),
            None => Vec::new(),
        };

        self.cross_check(&buses, &mut meters);
        if root.contains_key("modbus_server") {
            self.distinct_units(&meters);
        }
        let sinks = self.sinks(root, &gateway);
        // Triggers are checked against the meters as they will be (assemble fills defaults);
        // while a meter has an error, expressions are not checked (they would only repeat it).
        let mut config = if self.errors.is_empty() { self.assemble(gateway, buses, meters) } else { None };
        let neutral = self.neutral_sets(root, config.as_ref().map(|c| &c.meters[..]));
        self.neutral = neutral.clone();
        let (relays, triggers) = self.relays_and_triggers(root, config.as_ref().map(|c| &c.meters[..]));
        let (alerts, email) = self.alerts(root);
        let status = self.status(root);
        let mqtt = self.mqtt(root, &gateway_name);
        let modbus_server = self.modbus_server(root);
        let energy = self.energy(root, config.as_ref().map(|c| &c.meters[..]));
        if !self.errors.is_empty() {
            return None;
        }
        let mut config = config.take()?;
        config.sinks = sinks;
        config.relays = relays;
        config.triggers = triggers;
        config.email = email;
        config.alerts = alerts;
        config.status = status;
        config.mqtt = mqtt;
        config.neutral = neutral;
        config.modbus_server = modbus_server;
        config.energy = energy;
        Some(config)
    }

    fn gateway(&mut self, v: Option<&Value<'_>>) -> Gateway {
        let mut gateway = Gateway {
            name: String::new(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            log_readings: false,
            gpio: GpioBackend::Rppal,
            control_socket: PathBuf::new(),
            health_interval: Some(DEFAULT_HEALTH_INTERVAL),
            clock_sync_wait: DEFAULT_CLOCK_SYNC_WAIT,
            meters_dir: PathBuf::from(DEFAULT_METERS_DIR),
        };
        let mut name = None;
        let mut socket = None;
        if let Some(v) = v {
            if let Some(t) = v.get_ref().as_table() {
                self.check_keys(t, "gateway", GATEWAY_KEYS);
                if let Some(v) = t.get("name") {
                    name = self.name(
                        v,
                        "gateway.name",
                        "it becomes a tag, an MQTT topic level and a CSV file name",
                    );
                }
                if let Some(dir) =
                    t.get("state_dir").and_then(|v| self.non_empty_string(v, "gateway.state_dir"))
                {
                    gateway.state_dir = PathBuf::from(dir);
                }
                if let Some(dir) =
                    t.get("meters_dir").and_then(|v| self.non_empty_string(v, "gateway.meters_dir"))
                {
                    // Relative to the configuration file's folder.
                    let base = Path::new(self.file).parent().unwrap_or(Path::new(""));
                    gateway.meters_dir = base.join(dir);
                }
                if let Some(b) = t.get("log_readings").and_then(|v| self.boolean(v, "gateway.log_readings")) {
                    gateway.log_readings = b;
                }
                if let Some(v) = t.get("gpio") {
                    if let Some(s) = self.string(v, "gateway.gpio") {
                        match s.as_str() {
                            "rppal" => gateway.gpio = GpioBackend::Rppal,
                            "fake" => gateway.gpio = GpioBackend::Fake,
                            _ => self.error(
                                v.span(),
                                "gateway.gpio",
                                format!(
                                    "unknown GPIO backend {s:?}: \"rppal\" (the Pi's pins) or \"fake\" \
                                     (no hardware: levels go to the log and <state_dir>/fake-gpio.log)"
                                ),
                            ),
                        }
                    }
                }
                if let Some(path) =
                    t.get("control_socket").and_then(|v| self.non_empty_string(v, "gateway.control_socket"))
                {
                    socket = Some(PathBuf::from(path));
                }
                if let Some(v) = t.get("health_interval") {
                    if v.get_ref().as_str().is_some_and(|s| s.trim() == "off") {
                        gateway.health_interval = None;
                    } else if let Some(d) = self.duration_in(
                        v,
                        "gateway.health_interval",
                        Some(HEALTH_INTERVAL_MIN),
                        HEALTH_INTERVAL_MAX,
                    ) {
                        gateway.health_interval = Some(d);
                    }
                }
                if let Some(d) = t.get("clock_sync_wait").and_then(|v| {
                    self.duration_in(v, "gateway.clock_sync_wait", Some(Duration::ZERO), CLOCK_SYNC_WAIT_MAX)
                }) {
                    gateway.clock_sync_wait = d;
                }
            } else if !self.is_damaged(v) {
                self.wrong_type(v, "gateway", "a table [gateway]");
            }
        }
        gateway.name = name.unwrap_or_else(default_gateway_name);
        gateway.control_socket = socket.unwrap_or_else(|| gateway.state_dir.join("control.sock"));
        gateway
    }

    fn assemble(
        &mut self,
        gateway: Gateway,
        buses: Vec<BusDraft>,
        meters: Vec<MeterDraft>,
    ) -> Option<Config> {
        let mut config = Config {
            gateway,
            buses: Vec::new(),
            meters: Vec::new(),
            sinks: Vec::new(),
            relays: Vec::new(),
            triggers: Vec::new(),
            email: None,
            alerts: Default::default(),
            status: Default::default(),
            mqtt: None,
            modbus_server: None,
            neutral: Vec::new(),
            energy: Default::default(),
        };
        for m in meters {
            let (Some((name, _)), Some(model), Some((address, _)), Some((bus, _))) =
                (m.name, m.model, m.address, m.bus)
            else {
                self.error(m.span, m.path, "internal error: incomplete meter");
                return None;
            };
            config.meters.push(Meter {
                name,
                model,
                address,
                bus,
                poll: m.poll.map(|(d, _)| d).unwrap_or(if model == Model::PmtrSrv {
                    DEFAULT_SERVER_POLL
                } else {
                    DEFAULT_POLL
                }),
                server: m.server,
                phase: m.phase.map_or(Phase::L1, |(p, _)| p),
                unit: m.unit.map(|(u, _)| u),
                writable: m.writable,
            });
        }
        for b in buses {
            let (Some((name, _)), Some(ports)) = (b.name, b.ports) else {
                self.error(0..0, b.path, "internal error: incomplete bus");
                return None;
            };
            let models: Vec<Model> = config.meters_on(&name).map(|m| m.model).collect();
            let kind = b.kind.map_or(BusKind::Rs485, |(k, _)| k);
            let baud = b.baud.or_else(|| agreed(&models, |m| m.default_line().0)).unwrap_or(FALLBACK_BAUD);
            let parity = b
                .parity
                .or_else(|| agreed(&models, |m| parity_of(m.default_line().1)))
                .unwrap_or(FALLBACK_PARITY);
            config.buses.push(Bus {
                name,
                ports,
                line: LineSettings {
                    baud,
                    data_bits: b.data_bits.unwrap_or(DEFAULT_DATA_BITS),
                    parity,
                    stop_bits: b.stop_bits.unwrap_or(DEFAULT_STOP_BITS),
                },
                timeout: b.timeout.unwrap_or(match kind {
                    BusKind::PowerLine => DEFAULT_POWER_LINE_TIMEOUT,
                    BusKind::Rs485 | BusKind::RtuOverTcp | BusKind::Tcp => DEFAULT_TIMEOUT,
                }),
                kind,
                retries: b.retries.unwrap_or(DEFAULT_RETRIES),
                frame_gap: b.frame_gap,
                max_backoff: b.max_backoff.unwrap_or(DEFAULT_MAX_BACKOFF),
                rescan: b.rescan.unwrap_or(DEFAULT_RESCAN),
            });
        }
        Some(config)
    }
}

/// What every model says, if they all say the same.
fn agreed<T: PartialEq>(models: &[Model], f: impl Fn(Model) -> T) -> Option<T> {
    let first = f(*models.first()?);
    models.iter().all(|&m| f(m) == first).then_some(first)
}

/// The parity letter of [`Model::default_line`].
fn parity_of(letter: char) -> Parity {
    match letter {
        'E' => Parity::Even,
        'O' => Parity::Odd,
        _ => Parity::None,
    }
}

/// The host name from `/etc/hostname`, or `pmtr`.
fn default_gateway_name() -> String {
    gateway_name_of_host(std::fs::read_to_string("/etc/hostname").ok().as_deref())
}

/// The first label of a host name, as a valid gateway name (letters, digits, `_` and `-`), or
/// `pmtr` when nothing is left.
fn gateway_name_of_host(hostname: Option<&str>) -> String {
    hostname
        .and_then(|s| s.lines().next())
        .and_then(|l| l.trim().split('.').next())
        .map(|l| {
            l.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| FALLBACK_GATEWAY_NAME.to_owned())
}

#[cfg(test)]
mod tests {
    use super::read::MAX_DURATION;
    use super::*;
    use crate::relay::Level;

    const EXAMPLE: &str = include_str!("../../config/pmtr.toml");

    fn errors(src: &str) -> Vec<String> {
        match load_str(src, "t.toml") {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn two_actions_of_one_server_on_one_pin_are_refused_naming_both() {
        let text = r#"
[[bus]]
name = "plc"
port = "/dev/ttyS0"
kind = "power-line"
[[meter]]
name = "panel"
model = "pmtr-srv"
address = 5
[[meter.action]]
name = "overvoltage"
when = "L1U > 253"
pins = [22]
level = "low"
[[meter.action]]
when = "L1I > 16"
pins = [23, 22]
level = "low"
"#;
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("t.toml:17:13:"), "{}", e[0]);
        assert!(
            e[0].contains("action[1].pins[1]: pin 22 is also driven by action[0] \"overvoltage\""),
            "{}",
            e[0]
        );
        assert!(e[0].contains("action[1] (when = \"L1I > 16\")"), "{}", e[0]);
        assert!(e[0].contains("own pins") && e[0].contains("`||`"), "{}", e[0]);
        // Different pins, or the same pin on another server: accepted.
        assert!(errors(&text.replace("pins = [23, 22]", "pins = [23]")).is_empty());
    }

    #[test]
    fn the_example_loads() {
        let config = load_str(EXAMPLE, "pmtr.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.meters.len(), 3);
        let names: Vec<&str> = config.meters.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["mainA", "mainB", "gen"]);
        let addresses: Vec<u8> = config.meters.iter().map(|m| m.address).collect();
        assert_eq!(addresses, [4, 5, 6]);
        assert!(config.meters.iter().all(|m| m.model == Model::Pzem016 && m.poll == Duration::from_secs(5)));
        let house = config.bus("house").unwrap();
        assert_eq!(house.ports, ["/dev/ttyUSB*"]);
        assert_eq!(house.line.to_string(), "9600 8N1");
    }

    /// The example with the commented-out TOML between the line containing `from` and the one
    /// containing `until` uncommented: each `# code` line there becomes `rewrite(code)`, or stays
    /// commented when that is None.
    fn uncommented(from: &str, until: &str, rewrite: impl Fn(&str) -> Option<String>) -> String {
        let mut out = String::new();
        let mut in_block = false;
        for line in EXAMPLE.lines() {
            if line.contains(from) {
                in_block = true;
            }
            if line.contains(until) {
                in_block = false;
            }
            match line.strip_prefix("# ").filter(|_| in_block).and_then(&rewrite) {
                Some(code) => out.push_str(&code),
                None => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn the_commented_out_sink_examples_load_too() {
        let out =
            uncommented("[[sink]]: where readings are written", "Relays and triggers: relays", |code| {
                if code.contains("password_file") || code.starts_with("[[sink]]:") {
                    None
                } else if code.starts_with("token_file") {
                    Some("token = \"x\"".into())
                } else {
                    (code.starts_with("[[") || code.contains(" = ")).then(|| code.into())
                }
            });
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        let kinds: Vec<&str> = config.sinks.iter().map(|s| s.kind.type_name()).collect();
        assert_eq!(kinds, ["influxdb1", "influxdb2", "csv"]);
        let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["influx", "influx2", "csv"]);
    }

    #[test]
    fn the_commented_out_relay_and_trigger_load_too() {
        let out = uncommented("Relays and triggers: relays", "[alerts.email]: alert mail", |code| {
            (code.starts_with("[[") || code.contains(" = ")).then(|| code.into())
        });
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(config.gateway.gpio, crate::config::GpioBackend::Rppal);
        let r = &config.relays[0];
        assert_eq!((r.name.as_str(), r.pin, r.active_low, r.default), ("water-heater", 17, true, Level::On));
        let t = &config.triggers[0];
        assert_eq!(
            (t.name.as_str(), t.level, t.meters.clone()),
            ("heater-guard", Level::Off, vec!["mainA".to_owned()])
        );
        assert_eq!(
            (t.hold, t.recovery, t.average),
            (Duration::from_secs(5), Duration::from_secs(120), Some(Duration::from_secs(10)))
        );
    }

    #[test]
    fn the_commented_out_email_block_loads_too() {
        let out = uncommented("[alerts.email]: alert mail", "[status]: the local HTTP API", |code| {
            // The files it names do not exist here.
            if code.starts_with("password_file") {
                Some("password = \"x\"".into())
            } else if code.starts_with("ca_file") {
                None
            } else {
                (code == "[alerts.email]" || code == "[alerts]" || code.contains(" = ")).then(|| code.into())
            }
        });
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        let a = &config.alerts;
        assert_eq!(
            (a.digest, a.min_interval, a.max_per_hour),
            (Duration::from_secs(30), Duration::from_secs(300), 20)
        );
        assert_eq!((a.spool_mark, a.queue_max, a.kinds.len()), (80, 1000, 12));
        let boss = a.recipients(crate::alert::policy::AlertKind::TriggerTripped, &[]);
        assert_eq!(boss, ["ops@example.org", "boss@example.org"]);
        let e = config.email.expect("[alerts.email]");
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("smtp.example.org", 587, crate::config::EmailTls::Starttls)
        );
        assert_eq!(
            (e.username.as_deref(), e.password.as_ref().map(crate::config::Secret::expose)),
            (Some("gateway@example.org"), Some("x"))
        );
        assert_eq!(
            (e.from.as_str(), e.to.clone()),
            ("pmtr <gateway@example.org>", vec!["ops@example.org".to_owned()])
        );
        assert_eq!((e.subject_prefix.as_str(), e.timeout), ("[pmtr]", Duration::from_secs(30)));
    }

    #[test]
    fn the_commented_out_power_line_block_loads_too() {
        let out = uncommented(
            "PMTR_001_SRV servers behind a power-line modem",
            "[[sink]]: where readings are written",
            |code| (code.starts_with('[') || code.contains(" = ")).then(|| code.into()),
        );
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        let m = config.meter("panel-1").unwrap();
        assert_eq!(config.bus(&m.bus).unwrap().kind, BusKind::PowerLine);
        let action = &m.server.as_ref().unwrap().actions[0];
        assert_eq!(action.firmware_text, "L1U > 2530 || L2U > 2530 || L3U > 2530");
        assert_eq!(
            (action.pins.as_slice(), action.level_high, action.recovery),
            (&[22u8][..], false, Duration::from_secs(300))
        );
    }

    #[test]
    fn the_commented_out_modbus_server_block_loads_too() {
        let out = uncommented(
            "[modbus_server]: a Modbus TCP server",
            "[energy] and [[tariff]]: energy per day",
            |code| (code == "[modbus_server]" || code.contains(" = ")).then(|| code.into()),
        );
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        let s = config.modbus_server.expect("[modbus_server]");
        assert_eq!(s.listen.to_string(), "127.0.0.1:1502");
        assert_eq!(s.allow.iter().map(ToString::to_string).collect::<Vec<_>>(), ["192.168.1.0/24"]);
        assert_eq!(
            (s.max_age, s.max_connections, s.requests_per_second, s.queue),
            (Duration::from_secs(10), 16, 1000, 4)
        );
    }

    #[test]
    fn the_commented_out_converter_block_loads_too() {
        let out = uncommented(
            "Meters behind a network converter",
            "PMTR_001_SRV servers behind a power-line modem",
            |code| (code.starts_with('[') || code.contains(" = ")).then(|| code.into()),
        );
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        let bus = config.bus(&config.meter("ev").unwrap().bus).unwrap();
        assert_eq!(
            (bus.kind, bus.ports.as_slice()),
            (BusKind::RtuOverTcp, &["192.168.1.50:8899".to_owned()][..])
        );
        assert_eq!(bus.timeout, Duration::from_millis(500));
        let lan = config.bus(&config.meter("heat-pump").unwrap().bus).unwrap();
        assert_eq!(lan.kind, BusKind::Tcp);
    }

    #[test]
    fn the_commented_out_rx380_block_loads_too() {
        // Uncomment every line that is commented-out TOML in the RX380 block.
        let out = uncommented("RX380 three-phase meter", "[[sink]]: where readings are written", |code| {
            (code.starts_with('[') || code.contains(" = ")).then(|| code.into())
        });
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        let rx = config.meter("rx380").unwrap();
        assert_eq!((rx.model, rx.address, rx.poll), (Model::Rx380, 1, Duration::from_secs(10)));
        assert_eq!(config.bus(&rx.bus).unwrap().line.to_string(), "19200 8E1");
    }

    #[test]
    fn the_commented_out_energy_block_loads() {
        let out = uncommented(
            "[energy] and [[tariff]]: energy per day",
            "[[neutral]]: a three-phase supply",
            |code| {
                (!code.contains("]]:") && (code.starts_with('[') || code.contains(" = ")))
                    .then(|| code.into())
            },
        );
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(config.energy.timezone.as_deref(), Some("America/Chicago"));
        let t = &config.energy.tariffs[0];
        assert_eq!((t.name.as_str(), t.price, t.standing_charge, t.rates.len()), ("utility", 0.16, 0.35, 2));
        assert_eq!((t.rates[0].from, t.rates[0].to, t.rates[1].price), (22, 6, 0.11));
        assert_eq!(t.meters, ["mainA", "mainB"]);
    }

    #[test]
    fn the_commented_out_neutral_sets_load_with_the_meters_they_name() {
        let meters = uncommented("RX380 three-phase meter", "[[sink]]: where readings are written", |code| {
            (code.starts_with('[') || code.contains(" = ")).then(|| code.into())
        });
        let neutral = uncommented("[[neutral]]: a three-phase supply", "no such line", |code| {
            (!code.contains("]]:") && (code.starts_with('[') || code.contains(" = "))).then(|| code.into())
        });
        let start = neutral.find("# [[neutral]]: a three-phase supply").unwrap();
        let out = format!("{meters}\n{}", &neutral[start..]);
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        let sets: Vec<(&str, Vec<&str>, f64, f64)> =
            config.neutral.iter().map(|n| (n.name.as_str(), n.meters(), n.nominal, n.shift)).collect();
        assert_eq!(sets, [("supply", vec!["rx380"], 230.0, 20.0), ("panel", vec!["panel-1"], 230.0, 20.0)]);
        assert_eq!(config.neutral[0].sensitivity, crate::neutral::Sensitivity::Normal);
    }

    #[test]
    fn the_command_line_timeout_default_is_the_buses() {
        let cli = crate::app::parse_duration_arg(crate::config::DEFAULT_BUS_TIMEOUT_TEXT);
        assert_eq!(cli, Ok(crate::config::DEFAULT_BUS_TIMEOUT));
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_durations_allowed_do_not_overflow_the_bus_schedule() {
        let src = "[[bus]]\nname = \"b\"\nport = \"/dev/x\"\nmax_backoff = \"1h\"\nrescan = \"1h\"\n\
                   [[meter]]\nname = \"m\"\nmodel = \"rx380\"\naddress = 1\npoll = \"24h\"\n";
        let c = load_str(src, "t.toml").unwrap();
        let (bus, meter) = (&c.buses[0], &c.meters[0]);
        let t0 = tokio::time::Instant::now();
        // The phase of the last of 247 meters, and a thousand failures in a row.
        let phase = meter.poll * 246 / 247;
        let mut s = crate::bus::schedule::Schedule::new(meter.poll, bus.max_backoff, t0).with_phase(phase);
        for _ in 0..1000 {
            s.failed(t0);
        }
        assert_eq!(s.due(), t0 + meter.poll, "the back-off is capped by max_backoff, at least poll");
        s.succeeded(t0);
        assert_eq!(s.due(), t0 + 2 * meter.poll + phase);
    }

    #[test]
    fn no_duration_key_accepts_more_than_a_year() {
        // Every key goes through `duration_in`, which caps its maximum at MAX_DURATION.
        for (key, table) in [
            ("max_backoff", "[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n"),
            ("health_interval", "[gateway]\n"),
        ] {
            let src = format!("{table}{key} = \"3000000000000000h\"\n");
            let e = errors(&src);
            assert!(e.iter().any(|e| e.contains(key) && e.contains("out of range")), "{e:?}");
        }
        assert!(MAX_DURATION.as_secs().checked_mul(1 << 16).is_some());
    }

    #[test]
    fn a_gateway_named_after_its_host_is_a_valid_name() {
        assert_eq!(gateway_name_of_host(Some("house-pi\n")), "house-pi");
        assert_eq!(gateway_name_of_host(Some("pi.example.org\n")), "pi");
        assert_eq!(gateway_name_of_host(Some("../../x y\n")), "pmtr");
        assert_eq!(gateway_name_of_host(Some("a b/c\n")), "abc");
        assert_eq!(gateway_name_of_host(Some("")), "pmtr");
        assert_eq!(gateway_name_of_host(None), "pmtr");
        for h in ["house-pi", "pi.example.org", "a b/c", "", "../.."] {
            assert!(is_bare_key(&gateway_name_of_host(Some(h))), "{h:?}");
        }
    }

    #[test]
    fn bare_integer_durations_suggest_a_string() {
        let src = "[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n[[meter]]\nname = \"m\"\nmodel = \"rx380\"\naddress = 1\npoll = 5\n";
        assert_eq!(
            errors(src),
            [
                r#"t.toml:8:8: meter[0] "m".poll: found integer 5: a duration is a string with a unit, write "5s" (units: ms, s, m, h)"#
            ]
        );
    }

    #[test]
    fn syntax_errors_in_a_value_do_not_give_a_second_error() {
        // `5 5` is recovered as a string: no "expected an integer" on top of the syntax error.
        let e = errors("[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n[[meter]]\nname = \"m\"\nmodel = \"rx380\"\naddress = 5 5\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("t.toml:7:11: meter[0] \"m\".address: "), "{e:?}");
    }

    #[test]
    fn a_duplicate_key_is_named_after_its_section() {
        let e = errors("[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n[[meter]]\nname = \"m\"\nmodel = \"rx380\"\naddress = 1\nname = \"n\"\n");
        assert_eq!(e, ["t.toml:8:1: meter[0] \"m\".name: duplicate key"]);
    }

    #[test]
    fn a_megabyte_key_gets_no_suggestion() {
        // The cost of one comparison is bounded in crate::spelling (counted in steps there).
        let key = format!("adress{}", "s".repeat(1 << 20));
        let e = errors(&format!("[gateway]\n{key} = 1\n"));
        let e: Vec<&String> = e.iter().filter(|e| e.contains("unknown key")).collect();
        assert_eq!(e.len(), 1);
        assert!(!e[0].contains("did you mean"), "{:.200}", e[0]);
    }

    #[test]
    fn unknown_keys_say_what_is_expected_when_nothing_is_close() {
        let e = errors("[gateway]\nzzz = 1\n");
        assert!(e.contains(
            &"t.toml:2:1: gateway.zzz: unknown key (expected one of: name, state_dir, log_readings, gpio, control_socket, health_interval, clock_sync_wait, meters_dir)"
                .to_owned()
        ));
    }

    #[test]
    fn health_interval_is_a_duration_or_off() {
        let with = |v: &str| {
            let text = format!(
                "[gateway]\nhealth_interval = {v}\n[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n\
                 [[meter]]\nname = \"m\"\nmodel = \"pzem-016\"\naddress = 1\n"
            );
            load_str(&text, "t.toml").map(|c| c.gateway.health_interval).map_err(|e| e.to_string())
        };
        assert_eq!(with("\"10s\""), Ok(Some(Duration::from_secs(10))));
        assert_eq!(with("\"1h\""), Ok(Some(Duration::from_secs(3600))));
        assert_eq!(with("\"off\""), Ok(None));
        let e = with("\"500ms\"").unwrap_err();
        assert!(e.starts_with("t.toml:2:19: gateway.health_interval: 500ms is out of range"), "{e}");
        let e = with("60").unwrap_err();
        assert!(e.contains("gateway.health_interval: found integer 60: a duration is a string"), "{e}");
        let e = with("\"2h\"").unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = with("\"never\"").unwrap_err();
        assert!(e.starts_with("t.toml:2:19: gateway.health_interval: "), "{e}");
        let e = with("true").unwrap_err();
        assert!(e.starts_with("t.toml:2:19: gateway.health_interval: "), "{e}");
    }

    #[test]
    fn syntax_errors_are_named_after_their_key() {
        let e = errors(
            "[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n[[meter]]\nname = \"m\"\nmodel = rx380\naddress = 1\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("t.toml:6:9: meter[0] \"m\".model: "), "{e:?}");
    }

    /// `gateway.meters_dir` (relative to the configuration's folder): a user definition is a
    /// model, a user file named like a built-in replaces it, and a broken file's errors are
    /// the configuration's, with their own file, line and column, after the file's own.
    #[test]
    fn user_meter_definitions_are_models_and_their_errors_are_the_configurations() {
        let dir = tempfile::tempdir().unwrap();
        let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/meters");
        std::fs::create_dir(dir.path().join("meters.d")).unwrap();
        std::fs::copy(cases.join("good.toml"), dir.path().join("meters.d/good.toml")).unwrap();
        // An SDM120 of the user's own: holding registers instead of input registers.
        let own = crate::meter::definition::BUILT_IN.iter().find(|(f, _)| *f == "sdm120.toml").unwrap().1;
        let own = own.replacen("function = \"input\"", "function = \"holding\"", 1);
        assert!(own.contains("function = \"holding\""));
        std::fs::write(dir.path().join("meters.d/sdm120.toml"), own).unwrap();
        let config = |model: &str| {
            format!(
                "[gateway]\nmeters_dir = \"meters.d\"\n[[bus]]\nname = \"b\"\nport = \"/dev/null\"\n\
                 [[meter]]\nname = \"m\"\nmodel = \"{model}\"\naddress = 1\n"
            )
        };
        let path = dir.path().join("pmtr.toml");
        std::fs::write(&path, config("my-meter")).unwrap();
        let c = load_file(&path).unwrap();
        let def = crate::meter::definition::of(c.meters[0].model).expect("a definition");
        assert_eq!((def.name.as_str(), c.buses[0].line.parity), ("my-meter", Parity::Even));
        std::fs::write(&path, config("sdm120")).unwrap();
        let c = load_file(&path).unwrap();
        let def = crate::meter::definition::of(c.meters[0].model).expect("a definition");
        assert_eq!(def.read.function, crate::meter::definition::Function::Holding, "the user's file wins");
        // A hand-written model stays itself.
        std::fs::write(&path, config("pzem-016")).unwrap();
        assert_eq!(load_file(&path).unwrap().meters[0].model, Model::Pzem016);

        std::fs::copy(cases.join("errors.toml"), dir.path().join("meters.d/errors.toml")).unwrap();
        std::fs::write(&path, config("my-meterr")).unwrap();
        let e: Vec<String> = load_file(&path).unwrap_err().0.iter().map(|e| e.to_string()).collect();
        assert!(e[0].contains("pmtr.toml:8:9: meter[0] \"m\".model: unknown model \"my-meterr\""), "{e:?}");
        assert!(e[0].contains("(did you mean `my-meter`?)"), "{e:?}");
        let errors_file = dir.path().join("meters.d/errors.toml").display().to_string();
        assert!(e[1].starts_with(&format!("{errors_file}:1:8: name: ")), "{e:?}");
        let expected = std::fs::read_to_string(cases.join("errors.expected")).unwrap();
        assert_eq!(e.len(), 1 + expected.lines().filter(|l| l.starts_with("errors.toml:")).count(), "{e:?}");
    }

    /// What the README's "Broken neutral" says of the built-in definitions: which take part as
    /// one three-phase meter with line voltages, which with phase voltages only, which as
    /// single-phase meters.
    #[test]
    fn built_in_definitions_take_part_in_neutral_sets_as_the_readme_says() {
        let meter = |model: &str| {
            let src = format!(
                "[[bus]]\nname = \"b\"\nport = \"/dev/null\"\n[[meter]]\nname = \"m\"\nmodel = \"{model}\"\naddress = 1\n"
            );
            load_str(&src, "t.toml").unwrap().meters.remove(0)
        };
        for name in ["sdm630", "dtsu666", "sdm72d-m-v2", "abb-b23"] {
            let m = meter(name);
            assert!(m.is_three_phase() && m.measures_line_voltages(), "{name}");
        }
        let m = meter("orno-we516");
        assert!(m.is_three_phase() && !m.measures_line_voltages());
        for name in ["sdm120", "sdm230", "ddsu666", "dds238", "orno-we514", "abb-b21"] {
            let m = meter(name);
            assert!(m.model.takes_phase() && !m.is_three_phase(), "{name}");
        }
    }

    #[test]
    fn unreadable_file() {
        let e = load_file(Path::new("/nonexistent/pmtr.toml")).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!((e.0[0].line, e.0[0].column), (0, 0));
        assert!(e.to_string().starts_with("/nonexistent/pmtr.toml:0:0: cannot read the file: "), "{e}");
    }

    #[test]
    fn defaults() {
        let c = load_str(
            "[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n[[meter]]\nname = \"m\"\nmodel = \"pzem-004t\"\naddress = 1\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.gateway.state_dir, PathBuf::from("/var/lib/pmtr"));
        assert!(!c.gateway.log_readings);
        assert!(!c.gateway.name.is_empty());
        assert_eq!(c.gateway.health_interval, Some(Duration::from_secs(60)));
        let b = &c.buses[0];
        assert_eq!(b.line.to_string(), "9600 8N1");
        assert_eq!((b.timeout, b.retries, b.frame_gap), (Duration::from_millis(300), 2, None));
        assert_eq!((b.max_backoff, b.rescan), (Duration::from_secs(60), Duration::from_secs(5)));
        let m = &c.meters[0];
        assert_eq!((m.bus.as_str(), m.poll, m.phase), ("b", Duration::from_secs(1), Phase::L1));
    }

    #[test]
    fn mixed_models_fall_back_to_9600_8n1() {
        let c = load_str(
            "[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n\
             [[meter]]\nname = \"p\"\nmodel = \"pzem-016\"\naddress = 1\n\
             [[meter]]\nname = \"r\"\nmodel = \"rx380\"\naddress = 2\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.buses[0].line.to_string(), "9600 8N1");
    }
}
