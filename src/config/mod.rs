//! The typed configuration. `load` turns a TOML file into a [`Config`] or into every error it
//! has, each with file, line, column and key.

pub mod cidr;
mod load;
mod secret;
pub mod tariff;
pub mod vars;
mod words;

pub use crate::modbus::{LineSettings, Parity};
pub use load::{load_file, load_str, parse_duration, ConfigError, ConfigErrors};
pub use secret::{redact_urls, Secret};
pub use words::{topic_level, AlertKind, Durability, GroupBy, Level, Sensitivity, TimeZone};

use crate::meter::Model;
use crate::reading::Phase;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub gateway: Gateway,
    pub buses: Vec<Bus>,
    pub meters: Vec<Meter>,
    /// Where readings are written. A file with no `[[sink]]` gets one CSV sink in
    /// `<state_dir>/csv`.
    pub sinks: Vec<Sink>,
    pub relays: Vec<Relay>,
    pub triggers: Vec<Trigger>,
    /// `[alerts.email]`: how alert mail is sent. None when the file has no such table.
    pub email: Option<EmailSettings>,
    /// `[alerts]`: which events are mailed, and the limits against floods.
    pub alerts: Alerts,
    /// `[status]`: the local HTTP API and `/metrics`. On by default, on 127.0.0.1.
    pub status: StatusSettings,
    /// `[mqtt]`: readings and states to an MQTT broker, with Home Assistant discovery. None
    /// when the file has no `[mqtt]` table (or `enabled = false`).
    pub mqtt: Option<MqttSettings>,
    /// `[[neutral]]`: three-phase voltage sets watched for a broken neutral.
    pub neutral: Vec<NeutralSet>,
    /// `[modbus_server]`: the meters served to other Modbus masters. None when the file has no
    /// such table (or `enabled = false`).
    pub modbus_server: Option<ModbusServerSettings>,
    /// `[energy]` and `[[tariff]]`: the time zone of the energy periods, and prices.
    pub energy: EnergySettings,
}

/// `[modbus_server]`: a Modbus TCP server answering for every meter from its latest reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModbusServerSettings {
    /// Default 127.0.0.1:1502.
    pub listen: std::net::SocketAddr,
    /// The client networks let in; empty means loopback clients only (and is refused with a
    /// non-loopback `listen`).
    pub allow: Vec<cidr::Cidr>,
    /// The oldest a cached answer may be; older, the read goes to the meter. Default 10 s.
    pub max_age: Duration,
    /// Connections at once. Default 16.
    pub max_connections: usize,
    /// Requests a second for each connection; more are answered "busy" (0x06). Default 1000.
    pub requests_per_second: u32,
    /// Pass-through requests that may wait for one port; more are answered "busy". Default 4.
    pub queue: usize,
}

impl Default for ModbusServerSettings {
    fn default() -> Self {
        ModbusServerSettings {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 1502)),
            allow: Vec::new(),
            max_age: Duration::from_secs(10),
            max_connections: 16,
            requests_per_second: 1000,
            queue: 4,
        }
    }
}

impl Config {
    pub fn bus(&self, name: &str) -> Option<&Bus> {
        self.buses.iter().find(|b| b.name == name)
    }
    pub fn meter(&self, name: &str) -> Option<&Meter> {
        self.meters.iter().find(|m| m.name == name)
    }
    pub fn relay(&self, name: &str) -> Option<&Relay> {
        self.relays.iter().find(|r| r.name == name)
    }
    pub fn trigger(&self, name: &str) -> Option<&Trigger> {
        self.triggers.iter().find(|t| t.name == name)
    }
    pub fn neutral_set(&self, name: &str) -> Option<&NeutralSet> {
        self.neutral.iter().find(|n| n.name == name)
    }
    /// The set meter `name` belongs to (a meter is in one set at most).
    pub fn neutral_set_of(&self, meter: &str) -> Option<usize> {
        self.neutral.iter().position(|n| n.meters().contains(&meter))
    }
    pub fn meters_on<'a>(&'a self, bus: &'a str) -> impl Iterator<Item = &'a Meter> + 'a {
        self.meters.iter().filter(move |m| m.bus == bus)
    }
}

/// `[gateway]`: who this gateway is and where it keeps its state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gateway {
    /// Identity, used as the `gateway` tag in storage. Default: the host name.
    pub name: String,
    /// Where pmtr keeps its state (port map, spool). Default `/var/lib/pmtr`.
    pub state_dir: PathBuf,
    /// Log every reading at info level (for a first look; journald on an SD card does not
    /// need a line per reading). Default false.
    pub log_readings: bool,
    /// How relays are reached. Default rppal.
    pub gpio: GpioBackend,
    /// The control socket of `pmtr relay` and `pmtr trigger`. Default
    /// `<state_dir>/control.sock`.
    pub control_socket: PathBuf,
    /// How often the health points (`pmtr_bus` per meter, `pmtr_sink` per sink) are written;
    /// None (`"off"`) writes none. Default 60 s, 1 s to 1 h.
    pub health_interval: Option<Duration>,
    /// How long after the start time-of-day variables stay unknown and PMTR server clocks
    /// unset while the kernel does not say the clock is synchronised (see [`crate::clock`]).
    /// Default 10 min, 0 s (trust the clock at once, e.g. a real-time clock) to 24 h.
    pub clock_sync_wait: Duration,
    /// The folder of user meter definitions (`*.toml`), a relative path from the
    /// configuration file's folder. Default `/etc/pmtr/meters.d`; a missing folder holds none.
    pub meters_dir: PathBuf,
}

/// `[[bus]]`: one or more serial ports with the same line settings, where meters are looked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bus {
    pub name: String,
    /// Paths or glob patterns (`/dev/ttyUSB*`, `/dev/serial/by-id/*FTDI*`).
    pub ports: Vec<String>,
    pub line: LineSettings,
    /// How long to wait for a reply. Default 300 ms.
    pub timeout: Duration,
    /// Extra attempts after a failed one, within one poll. Default 2.
    pub retries: u32,
    /// Silence kept between frames; default 3.5 characters at the baud rate.
    pub frame_gap: Option<Duration>,
    /// The longest a dead meter waits between two re-probes. Default 60 s.
    pub max_backoff: Duration,
    /// How often the port patterns are matched again to find new or re-plugged adapters.
    /// Default 5 s.
    pub rescan: Duration,
    /// What the port is: an RS-485 adapter (default) or a power-line modem to PMTR_001_SRV
    /// servers.
    pub kind: BusKind,
}

/// `[[bus]] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BusKind {
    /// Meters on RS-485 (or TTL): answers within milliseconds.
    Rs485,
    /// PMTR_001_SRV servers behind a power-line modem (ES-1642NC): 9600 8N1, a server answers
    /// once per main loop (about 1.2 s), long timeouts, and the bus is resynchronised after
    /// every request that got no reply.
    PowerLine,
    /// RTU frames carried over a TCP stream by a network converter (an RS-485 to Ethernet or
    /// Wi-Fi gateway in transparent mode): the bus's `ports` holds its one `host:port`.
    RtuOverTcp,
    /// Modbus TCP (MBAP header, the meter's address as unit id): meters that speak it
    /// themselves, or behind a Modbus TCP gateway. `ports` holds its one `host:port`.
    Tcp,
}

impl BusKind {
    pub fn name(self) -> &'static str {
        match self {
            BusKind::Rs485 => "rs485",
            BusKind::PowerLine => "power-line",
            BusKind::RtuOverTcp => "rtu-over-tcp",
            BusKind::Tcp => "tcp",
        }
    }

    /// The kind named `s` in a configuration file.
    pub fn parse(s: &str) -> Option<BusKind> {
        [BusKind::Rs485, BusKind::PowerLine, BusKind::RtuOverTcp, BusKind::Tcp]
            .into_iter()
            .find(|k| k.name() == s)
    }

    /// Whether the bus is reached over the network (`host`) rather than a serial port.
    pub fn is_network(self) -> bool {
        matches!(self, BusKind::RtuOverTcp | BusKind::Tcp)
    }
}

/// Checks a `host = "HOST:PORT"`: a name or an address, and a TCP port (an IPv6 address in
/// brackets: `[fd00::7]:502`). The name is resolved when the bus connects, not at load.
pub fn check_host(h: &str) -> Result<(), String> {
    let Some((host, port)) = h.rsplit_once(':') else {
        return Err(format!("{h:?} has no port: give HOST:PORT, e.g. \"192.168.1.50:502\""));
    };
    let bare = host.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(host);
    if bare.is_empty() || bare.contains(char::is_whitespace) || (bare.contains(':') && bare == host) {
        return Err(format!(
            "{h:?}: expected HOST:PORT (an IPv6 address goes in brackets: \"[fd00::7]:502\")"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{h:?}: {port:?} is not a TCP port (1..=65535)")),
    }
}

/// `[[meter]]`: one meter on a bus.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Meter {
    pub name: String,
    pub model: Model,
    /// Modbus slave address, 1..=247.
    pub address: u8,
    /// The name of its bus.
    pub bus: String,
    /// How often it is read. Default 1 s.
    pub poll: Duration,
    /// Where a single-phase meter is connected (L1, L2 or L3). Default L1.
    pub phase: Phase,
    /// A PMTR_001_SRV's settings (`model = "pmtr-srv"` only).
    pub server: Option<ServerSettings>,
    /// Its unit id on the Modbus TCP server; None: its address.
    pub unit: Option<u8>,
    /// Holding registers a Modbus TCP client may write through the server (none by default).
    pub writable: Vec<u16>,
}

impl Meter {
    /// Its unit id on the Modbus TCP server.
    pub fn unit_id(&self) -> u8 {
        self.unit.unwrap_or(self.address)
    }
}

impl Meter {
    /// Whether it measures the three phase voltages (L1U, L2U, L3U).
    pub fn is_three_phase(&self) -> bool {
        let set = self.model.sample_set(self.phase);
        [Phase::L1, Phase::L2, Phase::L3]
            .iter()
            .all(|p| set.contains(&(*p, crate::reading::Quantity::Voltage)))
    }

    /// Whether it also measures the three line voltages (L12U, L23U, L31U).
    pub fn measures_line_voltages(&self) -> bool {
        let set = self.model.sample_set(self.phase);
        [Phase::L12, Phase::L23, Phase::L31]
            .iter()
            .all(|p| set.contains(&(*p, crate::reading::Quantity::Voltage)))
    }

    /// What active power and energy are multiplied by (1 but for a server with `multiplier`).
    pub fn multiplier(&self) -> f64 {
        self.server.as_ref().map_or(1.0, |s| s.multiplier)
    }
}

/// A PMTR_001_SRV's own settings, on its `[[meter]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerSettings {
    /// Multiplies active power and energy (√3 ≈ 1.732 for a meter across a delta). Default 1.
    pub multiplier: f64,
    /// How often the server's clock is set again, besides at start and after a reboot.
    /// Default 24 h; None with `time_sync = "off"`.
    pub time_sync: Option<Duration>,
    /// Whether pmtr owns the server's five relay-action slots: pushes the configured actions
    /// and neutralises the other slots. Default true.
    pub push_actions: bool,
    /// `[[meter.action]]`, at most five.
    pub actions: Vec<ServerAction>,
}

/// `[[meter.action]]`: a relay action evaluated by the server itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerAction {
    /// As written, in SI units.
    pub when: String,
    /// Converted to the current firmware's units, checked against its grammar.
    pub firmware_text: String,
    /// For the legacy float firmware (SI units), or why it cannot run there.
    pub legacy_text: Result<String, String>,
    /// The server's moving-average window: 5 or 10 s.
    pub average: u8,
    /// The Arduino pins driven, 1 to 8.
    pub pins: Vec<u8>,
    /// The level driven while the condition is true.
    pub level_high: bool,
    /// How long the condition must stay false before the pins go back.
    pub recovery: Duration,
    /// Stay tripped until the server reboots.
    pub latch: bool,
    pub dry_run: bool,
}

/// `[[sink]]`: one destination of the readings, with its own batch, spool and retries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sink {
    /// Names the spool folder (`<state_dir>/spool/<name>`) and the logs. Default: the type.
    pub name: String,
    pub kind: SinkKind,
    /// Readings per write. Default 1000.
    pub batch: usize,
    /// The longest a reading waits in memory before it is written. Default 1 s.
    pub flush_interval: Duration,
    /// HTTP request timeout. Default 10 s.
    pub timeout: Duration,
    /// When readings touch the disk. Default `outage`.
    pub durability: Durability,
    /// How often spool appends are made power-cut safe (fsync). Default 1 s.
    pub sync_interval: Duration,
    /// The longest wait between two tries while the database is away. Default 60 s.
    pub max_backoff: Duration,
    /// The most disk the spool may use. Default 512 MiB.
    pub spool_max: u64,
    /// InfluxDB measurement. Default `pmtr`.
    pub measurement: String,
}

/// The type of a sink and its own settings. `Debug` hides the password, the token, and the
/// credentials of a URL (`http://user:pass@host`).
#[derive(Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkKind {
    /// InfluxDB 1.x, `/write`.
    #[serde(rename = "influxdb1")]
    InfluxDb1 {
        #[serde(serialize_with = "secret::serialize_redacted_url")]
        url: String,
        database: String,
        retention_policy: Option<String>,
        username: Option<String>,
        #[serde(skip_serializing)]
        password: Option<Secret>,
    },
    /// InfluxDB 2.x and 3.x, `/api/v2/write`.
    #[serde(rename = "influxdb2")]
    InfluxDb2 {
        #[serde(serialize_with = "secret::serialize_redacted_url")]
        url: String,
        org: String,
        bucket: String,
        #[serde(skip_serializing)]
        token: Secret,
    },
    /// Daily CSV files.
    Csv { dir: PathBuf, group_by: GroupBy, timezone: TimeZone },
}

impl std::fmt::Debug for SinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkKind::InfluxDb1 { url, database, retention_policy, username, password } => f
                .debug_struct("InfluxDb1")
                .field("url", &redact_urls(url))
                .field("database", database)
                .field("retention_policy", retention_policy)
                .field("username", username)
                .field("password", password)
                .finish(),
            SinkKind::InfluxDb2 { url, org, bucket, token } => f
                .debug_struct("InfluxDb2")
                .field("url", &redact_urls(url))
                .field("org", org)
                .field("bucket", bucket)
                .field("token", token)
                .finish(),
            SinkKind::Csv { dir, group_by, timezone } => f
                .debug_struct("Csv")
                .field("dir", dir)
                .field("group_by", group_by)
                .field("timezone", timezone)
                .finish(),
        }
    }
}

impl SinkKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::InfluxDb1 { .. } => "influxdb1",
            SinkKind::InfluxDb2 { .. } => "influxdb2",
            SinkKind::Csv { .. } => "csv",
        }
    }
}

/// How the gateway reaches its relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpioBackend {
    /// The Pi's GPIO through rppal.
    Rppal,
    /// No hardware: levels are logged and written to `<state_dir>/fake-gpio.log`.
    Fake,
}

/// What a relay does when pmtr stops (a crash leaves every pin as it was, whatever this says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnShutdown {
    /// Keep the level it has: a restart or an upgrade never glitches the load.
    Hold,
    /// Go to the relay's `default` level.
    Default,
}

/// `[[relay]]`: one relay on a GPIO pin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Relay {
    pub name: String,
    /// BCM GPIO number, 0..=27.
    pub pin: u8,
    /// The pin is driven low to switch the relay on (most relay boards). Default false.
    pub active_low: bool,
    /// The level while none of its triggers is tripped, and at start when nothing was saved.
    /// Default off.
    pub default: Level,
    /// Default hold.
    pub on_shutdown: OnShutdown,
}

/// What a trigger does when a meter it reads goes silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStale {
    /// Keep the state the data last justified (the default).
    Hold,
    /// Trip (or latch), as if the condition had held: for protections that must fail safe.
    Trip,
    /// Release.
    Release,
}

/// `[energy]` and `[[tariff]]` (read by the `energy` module).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EnergySettings {
    /// An IANA zone (`Europe/Berlin`), checked. None: the gateway's own zone.
    pub timezone: Option<String>,
    pub tariffs: Vec<tariff::Tariff>,
}

/// `[[neutral]]`: a three-phase voltage set watched for a broken neutral (see
/// the `neutral` module).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NeutralSet {
    pub name: String,
    pub source: NeutralSource,
    /// Nominal phase voltage, volts. Default 230.
    pub nominal: f64,
    /// The neutral displacement that is a fault, volts. Default 20.
    pub shift: f64,
    /// Default normal.
    pub sensitivity: Sensitivity,
}

/// Where a set's three phase voltages come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NeutralSource {
    /// `meter = "x"`: one three-phase meter (with line voltages, tier 2; without, tier 1).
    Meter(String),
    /// `meters = ["a", "b", "c"]`: three single-phase meters on L1, L2 and L3 (tier 1).
    Meters([String; 3]),
}

impl NeutralSet {
    /// The names of its meters.
    pub fn meters(&self) -> Vec<&str> {
        match &self.source {
            NeutralSource::Meter(m) => vec![m.as_str()],
            NeutralSource::Meters(m) => m.iter().map(String::as_str).collect(),
        }
    }
}

/// `[[trigger]]`: an expression on moving averages, with hysteresis, driving relays.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trigger {
    pub name: String,
    /// The expression, evalexpr syntax (`L1U > 253 || L2U > 253`).
    pub when: String,
    /// Whose values the unprefixed variables are. None when every variable is prefixed or a
    /// time of day.
    pub meter: Option<String>,
    /// Every meter the expression reads (`meter` and the prefixes), found at load.
    pub meters: Vec<String>,
    /// Moving-average window, 1 s to 1 h; None: the latest reading.
    pub average: Option<Duration>,
    /// How long the condition must stay true before the trigger trips. Default 0.
    pub hold: Duration,
    /// How long it must stay false before the trigger releases. Default 0.
    pub recovery: Duration,
    /// The level of its relays while tripped: the opposite of their default.
    pub level: Level,
    pub relays: Vec<String>,
    /// Evaluate and log, never touch a relay. Default false.
    pub dry_run: bool,
    /// Stay tripped until reset by hand. Default false.
    pub latch: bool,
    /// Its transitions raise an alert. Default true.
    pub alert: bool,
    /// How long a meter may stay silent before the trigger calls its data stale. Default 30 s.
    pub stale_after: Duration,
    /// Default hold.
    pub on_stale: OnStale,
}

/// How the connection to the mail server is secured (`tls` in `[alerts.email]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailTls {
    /// Plain connection upgraded with STARTTLS, which the server must offer (port 587).
    Starttls,
    /// TLS from the first byte, "implicit TLS" or SMTPS (port 465).
    Tls,
    /// No encryption at all (port 25): only for a relay on the same host or network, and never
    /// with credentials.
    Plain,
}

impl EmailTls {
    /// The usual port of each kind: 587, 465, 25.
    pub fn default_port(self) -> u16 {
        match self {
            EmailTls::Starttls => 587,
            EmailTls::Tls => 465,
            EmailTls::Plain => 25,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EmailTls::Starttls => "starttls",
            EmailTls::Tls => "tls",
            EmailTls::Plain => "plain",
        }
    }
}

/// `[alerts.email]`: the mail server and the addresses of alert mail. The password is never
/// serialized nor shown by `Debug`.
#[derive(Clone, PartialEq, Serialize)]
pub struct EmailSettings {
    /// The mail server's host name or address.
    pub host: String,
    /// Default: 587 for starttls, 465 for tls, 25 for plain.
    pub port: u16,
    /// Default starttls.
    pub tls: EmailTls,
    /// Set together with the password, or neither.
    pub username: Option<String>,
    /// From `password`, `password_file` (first line, read at load) or `password_env`.
    #[serde(skip_serializing)]
    pub password: Option<Secret>,
    /// The sender mailbox, `pmtr <gw@example.org>` or `gw@example.org`.
    pub from: String,
    /// At least one recipient mailbox.
    pub to: Vec<String>,
    /// Put before every subject, followed by a space. Default `[pmtr]`.
    pub subject_prefix: String,
    /// A PEM file of certificates trusted in addition to the built-in web roots (for a
    /// self-signed server). Relative paths were resolved against the config file's folder.
    pub ca_file: Option<PathBuf>,
    /// For connecting and for each reply of the server. Default 30 s.
    pub timeout: Duration,
}

impl std::fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .field("from", &self.from)
            .field("to", &self.to)
            .field("subject_prefix", &self.subject_prefix)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `[alerts]`: which events become mail, to whom, and the limits against floods.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alerts {
    /// Alerts within this time of the first one waiting go out as one mail. Default 30 s.
    pub digest: Duration,
    /// The same kind of alert about the same subject at most once in this time. Default 5 min.
    pub min_interval: Duration,
    /// At most this many mails an hour. Default 20.
    pub max_per_hour: u32,
    /// A database unreachable for this long is an alert. Default 5 min.
    pub database_after: Duration,
    /// A meter that has not answered for this long is an alert. Default 1 min.
    pub meter_after: Duration,
    /// A spool fuller than this percentage of its `spool_max` is an alert. Default 80.
    pub spool_mark: u8,
    /// The kinds that are mailed. Default: all.
    #[serde(skip)]
    pub kinds: Vec<AlertKind>,
    /// Recipients of a kind instead of `email.to`.
    #[serde(skip)]
    pub route: Vec<(AlertKind, Vec<String>)>,
    /// The most mails kept waiting for the server (on disk). Default 1000.
    pub queue_max: usize,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            digest: Duration::from_secs(30),
            min_interval: Duration::from_secs(300),
            max_per_hour: 20,
            database_after: Duration::from_secs(300),
            meter_after: Duration::from_secs(60),
            spool_mark: 80,
            kinds: AlertKind::ALL.to_vec(),
            route: Vec::new(),
            queue_max: 1000,
        }
    }
}

impl Alerts {
    /// Who gets alerts of `kind`, given the default recipients.
    pub fn recipients<'a>(&'a self, kind: AlertKind, default: &'a [String]) -> &'a [String] {
        self.route.iter().find(|(k, _)| *k == kind).map_or(default, |(_, to)| to)
    }
}

/// `[status]`: the local HTTP API (`/api/...`), `/metrics` and what `pmtr status` reads. The
/// token is never serialized nor shown by `Debug`.
#[derive(Clone, PartialEq, Serialize)]
pub struct StatusSettings {
    /// Default true.
    pub enabled: bool,
    /// Default 127.0.0.1:9780. Any address other than a loopback one needs a `token`.
    pub listen: std::net::SocketAddr,
    /// From `token` or `token_file`. Needed for every write (relay force/release, trigger
    /// reset), and for reads from anywhere but the loopback interface.
    #[serde(skip_serializing)]
    pub token: Option<Secret>,
    /// Connections served at once (default [`DEFAULT_STATUS_CONNECTIONS`]); one more is
    /// closed at once.
    pub max_connections: usize,
    /// From `tls_cert` and `tls_key`: the listener speaks HTTPS only.
    pub tls: Option<StatusTls>,
}

impl Default for StatusSettings {
    fn default() -> Self {
        StatusSettings {
            enabled: true,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_STATUS_PORT)),
            token: None,
            max_connections: DEFAULT_STATUS_CONNECTIONS,
            tls: None,
        }
    }
}

/// The default port of the status API.
pub const DEFAULT_STATUS_PORT: u16 = 9780;
/// The default `[status] max_connections`.
pub const DEFAULT_STATUS_CONNECTIONS: usize = 32;

/// Where the daemon and the commands read the configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/pmtr/pmtr.toml";
/// A bus's `timeout` when the file gives none; `pmtr read` and the PZEM commands wait as long.
pub const DEFAULT_BUS_TIMEOUT: Duration = Duration::from_millis(300);
/// [`DEFAULT_BUS_TIMEOUT`] as written on a command line (a unit test checks they agree).
pub const DEFAULT_BUS_TIMEOUT_TEXT: &str = "300ms";
/// A bus's `retries` when the file gives none; `pmtr read` retries as often.
pub const DEFAULT_BUS_RETRIES: u32 = 2;

impl std::fmt::Debug for StatusSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusSettings")
            .field("enabled", &self.enabled)
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "(hidden)"))
            .field("max_connections", &self.max_connections)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The status API's certificate and key, read and checked at load: the server configuration
/// is ready to use. `Debug`, equality and serialization see only the file names.
#[derive(Clone, Serialize)]
pub struct StatusTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(skip_serializing)]
    pub server: std::sync::Arc<rustls::ServerConfig>,
}

impl PartialEq for StatusTls {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert && self.key == other.key
    }
}

impl std::fmt::Debug for StatusTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusTls").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

/// `[mqtt]`: the broker and the topic tree. The password is never serialized nor shown by
/// `Debug`.
#[derive(Clone, PartialEq, Serialize)]
pub struct MqttSettings {
    /// The broker's host name or address.
    pub host: String,
    /// Default 1883, or 8883 with `tls`.
    pub port: u16,
    /// TLS to the broker (rustls; the built-in web roots plus `ca_file`). Default false.
    pub tls: bool,
    /// PEM certificates trusted besides the built-in web roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Set together with the password, or neither.
    pub username: Option<String>,
    #[serde(skip_serializing)]
    pub password: Option<Secret>,
    /// Default `pmtr-<gateway>`.
    pub client_id: String,
    /// Every topic starts with it. Default `pmtr/<gateway>`.
    pub topic_prefix: String,
    /// Publish Home Assistant discovery documents. Default true.
    pub discovery: bool,
    /// Default `homeassistant`.
    pub discovery_prefix: String,
    /// The QoS of readings (0, 1 or 2). Default 0. Availability, states and discovery
    /// documents always go with QoS 1.
    pub qos: u8,
    /// Retain readings too (states, availability and discovery are always retained). Default
    /// false.
    pub retain: bool,
    /// Default 30 s.
    pub keep_alive: Duration,
    /// The longest wait between two connection attempts. Default 60 s.
    pub max_backoff: Duration,
    /// The most messages waiting for the connection; beyond, readings are dropped and
    /// counted. Default 1000.
    pub queue: usize,
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .field("client_id", &self.client_id)
            .field("topic_prefix", &self.topic_prefix)
            .field("discovery", &self.discovery)
            .field("discovery_prefix", &self.discovery_prefix)
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("keep_alive", &self.keep_alive)
            .field("max_backoff", &self.max_backoff)
            .field("queue", &self.queue)
            .finish()
    }
}

#[cfg(test)]
mod host_tests {
    use super::check_host;

    #[test]
    fn a_host_is_a_name_or_address_and_a_port() {
        for ok in ["192.168.1.50:502", "converter.lan:8899", "[fd00::7]:502", "localhost:1"] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        for bad in
            ["192.168.1.50", ":502", "fd00::7:502", "host:0", "host:65536", "host:x", "a b:502", "[]:502"]
        {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }
}
