//! What flows from the buses and the gateway to its consumers: a meter's [`Reading`] (its
//! [`Sample`]s, each a [`Phase`] and a [`Quantity`]); and the [`Record`]s storage writes: readings,
//! trigger and relay [`StateChange`]s, the gateway's [`Health`] points and the energy books'
//! [`EnergyPoint`]s.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Where on the installation a value is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    L1,
    L2,
    L3,
    /// Neutral conductor.
    N,
    L12,
    L23,
    L31,
    /// The whole meter (sums, three-phase totals).
    Total,
}

impl Phase {
    /// The spool stores positions in this array: add new phases at the end only.
    pub const ALL: [Phase; 8] =
        [Phase::L1, Phase::L2, Phase::L3, Phase::N, Phase::L12, Phase::L23, Phase::L31, Phase::Total];

    /// The prefix of trigger variables: `L1`, `L12`, `N`, or empty for totals.
    pub fn prefix(self) -> &'static str {
        match self {
            Phase::L1 => "L1",
            Phase::L2 => "L2",
            Phase::L3 => "L3",
            Phase::N => "N",
            Phase::L12 => "L12",
            Phase::L23 => "L23",
            Phase::L31 => "L31",
            Phase::Total => "",
        }
    }

    /// Lower-case tag value for storage (`l1`, `l12`, `total`).
    pub fn tag(self) -> &'static str {
        match self {
            Phase::L1 => "l1",
            Phase::L2 => "l2",
            Phase::L3 => "l3",
            Phase::N => "n",
            Phase::L12 => "l12",
            Phase::L23 => "l23",
            Phase::L31 => "l31",
            Phase::Total => "total",
        }
    }
}

/// What is measured, always in SI units (energy in kWh, as meters and tariffs count it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Quantity {
    /// Volts.
    Voltage,
    /// Amperes.
    Current,
    /// Watts; negative is export.
    ActivePower,
    /// Volt-amperes.
    ApparentPower,
    /// Volt-amperes reactive.
    ReactivePower,
    /// Kilowatt-hours, a counter.
    ActiveEnergy,
    /// kVAh, a counter.
    ApparentEnergy,
    /// kvarh, a counter.
    ReactiveEnergy,
    /// Hertz.
    Frequency,
    /// Ratio, -1..1.
    PowerFactor,
    /// 1 when the meter's own alarm is raised, else 0.
    Alarm,
    /// Volts of a meter's own 5 V supply (PMTR_001_SRV).
    Supply5V,
    /// Volts of a meter's own 12 V supply (PMTR_001_SRV; below 10.8 V it saves power).
    Supply12V,
    /// 1 while the meter runs in low-power mode and refreshes only its voltages, else 0.
    LowPower,
    /// The meter's own moving averages (PMTR_001_SRV: 5 s), in the units of the quantity.
    VoltageAvg,
    CurrentAvg,
    ActivePowerAvg,
    FrequencyAvg,
    PowerFactorAvg,
    /// kWh taken from the grid, a counter.
    ImportActiveEnergy,
    /// kWh delivered to the grid, a counter.
    ExportActiveEnergy,
    /// kvarh imported, a counter.
    ImportReactiveEnergy,
    /// kvarh exported, a counter.
    ExportReactiveEnergy,
    /// Total harmonic distortion of the voltage, percent.
    VoltageThd,
    /// Total harmonic distortion of the current, percent.
    CurrentThd,
}

impl Quantity {
    /// Every quantity, in the column order of storage. The spool stores positions in this
    /// array: add new quantities at the end only.
    pub const ALL: [Quantity; 25] = [
        Quantity::Voltage,
        Quantity::Current,
        Quantity::ActivePower,
        Quantity::ApparentPower,
        Quantity::ReactivePower,
        Quantity::ActiveEnergy,
        Quantity::ApparentEnergy,
        Quantity::ReactiveEnergy,
        Quantity::Frequency,
        Quantity::PowerFactor,
        Quantity::Alarm,
        Quantity::Supply5V,
        Quantity::Supply12V,
        Quantity::LowPower,
        Quantity::VoltageAvg,
        Quantity::CurrentAvg,
        Quantity::ActivePowerAvg,
        Quantity::FrequencyAvg,
        Quantity::PowerFactorAvg,
        Quantity::ImportActiveEnergy,
        Quantity::ExportActiveEnergy,
        Quantity::ImportReactiveEnergy,
        Quantity::ExportReactiveEnergy,
        Quantity::VoltageThd,
        Quantity::CurrentThd,
    ];

    /// The suffix of trigger variables, after the PMTR names: `U I P e f pf`.
    pub fn symbol(self) -> &'static str {
        match self {
            Quantity::Voltage => "U",
            Quantity::Current => "I",
            Quantity::ActivePower => "P",
            Quantity::ApparentPower => "S",
            Quantity::ReactivePower => "Q",
            Quantity::ActiveEnergy => "e",
            Quantity::ApparentEnergy => "es",
            Quantity::ReactiveEnergy => "eq",
            Quantity::Frequency => "f",
            Quantity::PowerFactor => "pf",
            Quantity::Alarm => "alarm",
            Quantity::Supply5V => "V5",
            Quantity::Supply12V => "V12",
            Quantity::LowPower => "lowpower",
            Quantity::VoltageAvg => "Uavg",
            Quantity::CurrentAvg => "Iavg",
            Quantity::ActivePowerAvg => "Pavg",
            Quantity::FrequencyAvg => "favg",
            Quantity::PowerFactorAvg => "pfavg",
            Quantity::ImportActiveEnergy => "ei",
            Quantity::ExportActiveEnergy => "ee",
            Quantity::ImportReactiveEnergy => "eqi",
            Quantity::ExportReactiveEnergy => "eqe",
            Quantity::VoltageThd => "Uthd",
            Quantity::CurrentThd => "Ithd",
        }
    }

    /// Field name for storage.
    pub fn field(self) -> &'static str {
        match self {
            Quantity::Voltage => "voltage",
            Quantity::Current => "current",
            Quantity::ActivePower => "power",
            Quantity::ApparentPower => "apparent_power",
            Quantity::ReactivePower => "reactive_power",
            Quantity::ActiveEnergy => "energy",
            Quantity::ApparentEnergy => "apparent_energy",
            Quantity::ReactiveEnergy => "reactive_energy",
            Quantity::Frequency => "frequency",
            Quantity::PowerFactor => "power_factor",
            Quantity::Alarm => "alarm",
            Quantity::Supply5V => "supply_5v",
            Quantity::Supply12V => "supply_12v",
            Quantity::LowPower => "low_power",
            Quantity::VoltageAvg => "voltage_avg",
            Quantity::CurrentAvg => "current_avg",
            Quantity::ActivePowerAvg => "power_avg",
            Quantity::FrequencyAvg => "frequency_avg",
            Quantity::PowerFactorAvg => "power_factor_avg",
            Quantity::ImportActiveEnergy => "import_energy",
            Quantity::ExportActiveEnergy => "export_energy",
            Quantity::ImportReactiveEnergy => "import_reactive_energy",
            Quantity::ExportReactiveEnergy => "export_reactive_energy",
            Quantity::VoltageThd => "voltage_thd",
            Quantity::CurrentThd => "current_thd",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Quantity::Voltage | Quantity::VoltageAvg | Quantity::Supply5V | Quantity::Supply12V => "V",
            Quantity::Current | Quantity::CurrentAvg => "A",
            Quantity::ActivePower | Quantity::ActivePowerAvg => "W",
            Quantity::ApparentPower => "VA",
            Quantity::ReactivePower => "var",
            Quantity::ActiveEnergy | Quantity::ImportActiveEnergy | Quantity::ExportActiveEnergy => "kWh",
            Quantity::ApparentEnergy => "kVAh",
            Quantity::ReactiveEnergy | Quantity::ImportReactiveEnergy | Quantity::ExportReactiveEnergy => {
                "kvarh"
            }
            Quantity::VoltageThd | Quantity::CurrentThd => "%",
            Quantity::Frequency | Quantity::FrequencyAvg => "Hz",
            Quantity::PowerFactor | Quantity::PowerFactorAvg => "",
            Quantity::Alarm | Quantity::LowPower => "",
        }
    }

    /// The largest magnitude a meter can truly report for this quantity, in its unit. Far above
    /// any installation pmtr serves (current transformers and `multiplier` included) and far
    /// below what a garbled register or a float's 3.4e38 gives: a value beyond it is a bad
    /// reading, refused whole before it reaches the triggers or storage.
    pub fn limit(self) -> f64 {
        match self {
            Quantity::Voltage | Quantity::VoltageAvg => 1e6,
            Quantity::Current | Quantity::CurrentAvg => 1e6,
            Quantity::ActivePower
            | Quantity::ApparentPower
            | Quantity::ReactivePower
            | Quantity::ActivePowerAvg => 1e10,
            Quantity::ActiveEnergy
            | Quantity::ApparentEnergy
            | Quantity::ReactiveEnergy
            | Quantity::ImportActiveEnergy
            | Quantity::ExportActiveEnergy
            | Quantity::ImportReactiveEnergy
            | Quantity::ExportReactiveEnergy => 1e12,
            // Percent; distortion beyond a few hundred percent is a garbled register.
            Quantity::VoltageThd | Quantity::CurrentThd => 1e4,
            Quantity::Frequency | Quantity::FrequencyAvg => 1e3,
            // A ratio of magnitude 1 at most; a little over for meters that round.
            Quantity::PowerFactor | Quantity::PowerFactorAvg => 1.1,
            Quantity::Alarm | Quantity::LowPower => 1.0,
            Quantity::Supply5V | Quantity::Supply12V => 100.0,
        }
    }

    /// Counters are never averaged and may only grow.
    pub fn is_counter(self) -> bool {
        matches!(
            self,
            Quantity::ActiveEnergy
                | Quantity::ApparentEnergy
                | Quantity::ReactiveEnergy
                | Quantity::ImportActiveEnergy
                | Quantity::ExportActiveEnergy
                | Quantity::ImportReactiveEnergy
                | Quantity::ExportReactiveEnergy
        )
    }
}

/// One measured value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub phase: Phase,
    pub quantity: Quantity,
    pub value: f64,
}

impl Sample {
    pub fn new(phase: Phase, quantity: Quantity, value: f64) -> Self {
        Sample { phase, quantity, value }
    }

    /// Finite and within its quantity's [`Quantity::limit`].
    pub fn is_plausible(&self) -> bool {
        self.value.is_finite() && self.value.abs() <= self.quantity.limit()
    }

    /// The trigger variable name: `L1U`, `L12U`, `P` (total power), `L1e`.
    pub fn variable(&self) -> String {
        format!("{}{}", self.phase.prefix(), self.quantity.symbol())
    }
}

/// The meter models pmtr knows, by name (what each reads, and how, is the meter layer's): the
/// hand-written ones, and any model described by a definition file.
#[derive(Debug, Clone, Copy)]
pub enum Model {
    Pzem004t,
    Pzem014,
    Pzem016,
    Rx380,
    /// A PMTR_001_SRV server (Arduino, three PZEM-004T, relays), usually behind a power-line
    /// modem.
    PmtrSrv,
    /// A model described by data (the meter layer's definitions). Two are the same model when
    /// they are the same description: the meter layer keeps one copy of each distinct one.
    Defined(&'static dyn Described),
}

/// A model described by data, as far as the words downstream need it: its name, maker and
/// product, its line defaults and what a reading of it holds. The meter layer's definitions
/// are the descriptions; a model only known by name (a spooled reading of a definition since
/// removed, a status snapshot read by the CLI) is [`Model::named`].
pub trait Described: std::any::Any + Send + Sync + fmt::Debug {
    /// The name configurations use (`sdm630`).
    fn name(&self) -> &str;
    /// Who makes it (`Eastron`), empty when unknown.
    fn maker(&self) -> &str;
    /// Its product name (`SDM630-Modbus V2`), empty when unknown.
    fn product(&self) -> &str;
    /// Baud and parity ('N', 'E', 'O') it ships with.
    fn default_line(&self) -> (u32, char);
    /// What a reading of it holds on a meter connected to `phase`, as (phase, quantity) pairs
    /// in reading order.
    fn sample_set(&self, phase: Phase) -> Vec<(Phase, Quantity)>;
}

/// A model known only by its name.
#[derive(Debug)]
struct Named(String);

impl Described for Named {
    fn name(&self) -> &str {
        &self.0
    }
    fn maker(&self) -> &str {
        ""
    }
    fn product(&self) -> &str {
        ""
    }
    fn default_line(&self) -> (u32, char) {
        (9600, 'N')
    }
    fn sample_set(&self, _phase: Phase) -> Vec<(Phase, Quantity)> {
        Vec::new()
    }
}

impl Model {
    /// The hand-written models. The spool of earlier versions stores positions in this array.
    pub const ALL: [Model; 5] =
        [Model::Pzem004t, Model::Pzem014, Model::Pzem016, Model::Rx380, Model::PmtrSrv];

    pub fn name(self) -> &'static str {
        match self {
            Model::Pzem004t => "pzem-004t",
            Model::Pzem014 => "pzem-014",
            Model::Pzem016 => "pzem-016",
            Model::Rx380 => "rx380",
            Model::PmtrSrv => "pmtr-srv",
            Model::Defined(d) => d.name(),
        }
    }

    /// One of the hand-written models by name (case-insensitive).
    pub fn parse(s: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(s))
    }

    /// A hand-written model by name, else a model known only by its name (one copy per name
    /// for the life of the process).
    pub fn named(name: &str) -> Model {
        if let Some(m) = Model::parse(name) {
            return m;
        }
        static NAMED: std::sync::Mutex<Vec<&'static Named>> = std::sync::Mutex::new(Vec::new());
        let mut named = NAMED.lock().unwrap_or_else(|p| p.into_inner());
        let found = named.iter().find(|n| n.0 == name).copied();
        let n = found.unwrap_or_else(|| {
            let n: &'static Named = Box::leak(Box::new(Named(name.to_owned())));
            named.push(n);
            n
        });
        Model::Defined(n)
    }

    pub fn is_pzem(self) -> bool {
        matches!(self, Model::Pzem004t | Model::Pzem014 | Model::Pzem016)
    }

    /// The description of a model defined by data.
    pub fn described(self) -> Option<&'static dyn Described> {
        match self {
            Model::Defined(d) => Some(d),
            _ => None,
        }
    }
}

impl PartialEq for Model {
    fn eq(&self, other: &Model) -> bool {
        match (self, other) {
            (Model::Defined(a), Model::Defined(b)) => std::ptr::addr_eq(*a, *b),
            (Model::Defined(_), _) | (_, Model::Defined(_)) => false,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

impl Eq for Model {}

impl std::hash::Hash for Model {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state)
    }
}

impl Serialize for Model {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Model {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Model, D::Error> {
        let name = String::deserialize(d)?;
        Ok(Model::named(&name))
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How far a reading can be trusted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quality {
    /// An energy counter went backwards since the previous reading (reset by hand, rollover,
    /// or a glitch): the difference is not consumption.
    pub energy_backwards: bool,
}

/// Everything one poll of one meter produced. A failed poll produces no reading: a gap, never
/// a zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub meter: Arc<str>,
    pub model: Model,
    /// When the reply arrived.
    pub time: DateTime<Utc>,
    pub samples: Vec<Sample>,
    pub quality: Quality,
}

impl Reading {
    pub fn get(&self, phase: Phase, quantity: Quantity) -> Option<f64> {
        self.samples.iter().find(|s| s.phase == phase && s.quantity == quantity).map(|s| s.value)
    }
}

impl fmt::Display for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.meter)?;
        for s in &self.samples {
            write!(f, " {}={}{}", s.variable(), trim(s.value), s.quantity.unit())?;
        }
        if self.quality.energy_backwards {
            write!(f, " [energy counter went backwards]")?;
        }
        Ok(())
    }
}

/// A value with at most three decimals and no trailing zeros (`254.2`, `0`).
pub(crate) fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// What storage writes: a meter's reading, a change of state of a trigger or a relay, or a
/// periodic health point of the gateway itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    Reading(Reading),
    Change(StateChange),
    Health(Health),
    /// A point of the energy books: a lifetime total or a day's or month's energy and cost.
    Energy(EnergyPoint),
}

impl Record {
    pub fn time(&self) -> DateTime<Utc> {
        match self {
            Record::Reading(r) => r.time,
            Record::Change(c) => c.time,
            Record::Health(h) => h.time(),
            Record::Energy(e) => e.time(),
        }
    }
}

impl From<Health> for Record {
    fn from(h: Health) -> Self {
        Record::Health(h)
    }
}

impl From<EnergyPoint> for Record {
    fn from(e: EnergyPoint) -> Self {
        Record::Energy(e)
    }
}

/// A point of the energy books, written every minute as they are saved and at stop:
/// measurements `pmtr_energy` (a lifetime total) and `pmtr_energy_period` (a local day or month).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EnergyPoint {
    Total(EnergyTotal),
    Period(EnergyPeriod),
}

impl EnergyPoint {
    /// When the books stood so (the time of a CSV row; the stored time of a total).
    pub fn time(&self) -> DateTime<Utc> {
        match self {
            EnergyPoint::Total(t) => t.time,
            EnergyPoint::Period(p) => p.time,
        }
    }
}

/// One counter's lifetime total (never goes back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyTotal {
    pub time: DateTime<Utc>,
    pub meter: Arc<str>,
    /// `l1_energy`, `total_energy`, `total_reactive_energy`.
    pub counter: Arc<str>,
    pub kwh: f64,
}

/// Which period a period point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodKind {
    Day,
    Month,
}

impl PeriodKind {
    /// The spool stores positions in this array: add at the end only.
    pub const ALL: [PeriodKind; 2] = [PeriodKind::Day, PeriodKind::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::Day => "day",
            PeriodKind::Month => "month",
        }
    }
}

/// A local day's or month's active energy and cost so far, stored at the period's start so
/// that each write replaces the previous one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyPeriod {
    /// When the books stood so.
    pub time: DateTime<Utc>,
    /// The period's start: its local midnight (the stored time).
    pub start: DateTime<Utc>,
    /// Its first local date.
    pub date: chrono::NaiveDate,
    pub meter: Arc<str>,
    pub period: PeriodKind,
    pub kwh: f64,
    /// Some of it was not seen: the numbers are what was seen, never guessed.
    pub partial: bool,
    /// Cost per tariff (energy and standing charges), in the tariff's currency.
    pub costs: Vec<(Arc<str>, f64)>,
}

/// A health point, written every `gateway.health_interval`: the cumulative counters of one
/// meter's polls (measurement `pmtr_bus`) or the state of one sink (`pmtr_sink`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Health {
    Meter(MeterHealth),
    Sink(SinkHealth),
}

impl Health {
    pub fn time(&self) -> DateTime<Utc> {
        match self {
            Health::Meter(m) => m.time,
            Health::Sink(s) => s.time,
        }
    }

    /// The integer fields in their fixed order (storage column order, spool order).
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        match self {
            Health::Meter(m) => MeterHealth::FIELDS.iter().copied().zip(m.values()).collect(),
            Health::Sink(s) => SinkHealth::FIELDS.iter().copied().zip(s.values()).collect(),
        }
    }
}

/// One meter's poll counters since pmtr started (cumulative: they only grow until a restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterHealth {
    pub time: DateTime<Utc>,
    pub bus: Arc<str>,
    pub meter: Arc<str>,
    pub requests: u64,
    pub replies: u64,
    pub timeouts: u64,
    pub crc_errors: u64,
    /// Exception replies of the meter.
    pub exceptions: u64,
    /// Other bad frames: from another address, short, garbled, malformed.
    pub frame_errors: u64,
    pub readings: u64,
    /// Readings the consumers could not take in time.
    pub readings_dropped: u64,
    /// 1 while the meter answers, 0 while it is searched for or failing.
    pub answering: u64,
}

impl MeterHealth {
    /// Field names; the spool stores the values in this order: add at the end only.
    pub const FIELDS: [&'static str; 9] = [
        "requests",
        "replies",
        "timeouts",
        "crc_errors",
        "exceptions",
        "frame_errors",
        "readings",
        "readings_dropped",
        "answering",
    ];

    pub fn values(&self) -> [u64; 9] {
        [
            self.requests,
            self.replies,
            self.timeouts,
            self.crc_errors,
            self.exceptions,
            self.frame_errors,
            self.readings,
            self.readings_dropped,
            self.answering,
        ]
    }

    pub fn from_values(time: DateTime<Utc>, bus: Arc<str>, meter: Arc<str>, v: [u64; 9]) -> Self {
        let [requests, replies, timeouts, crc_errors, exceptions, frame_errors, readings, readings_dropped, answering] =
            v;
        MeterHealth {
            time,
            bus,
            meter,
            requests,
            replies,
            timeouts,
            crc_errors,
            exceptions,
            frame_errors,
            readings,
            readings_dropped,
            answering,
        }
    }
}

/// One sink's state when the point was made. The sink writes this point itself, so what it
/// says is at most one batch old (the point was made before the sink wrote it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkHealth {
    pub time: DateTime<Utc>,
    pub sink: Arc<str>,
    /// 1 while writes succeed, 0 during an outage.
    pub healthy: u64,
    /// Points written since start.
    pub points_written: u64,
    /// Records waiting in the spool (the spool depth), and its size on disk.
    pub spool_records: u64,
    pub spool_bytes: u64,
    /// Records lost to a full spool since start.
    pub spool_dropped: u64,
    /// Records the server refused for good since start.
    pub rejected: u64,
    /// Records waiting in memory.
    pub in_memory: u64,
}

impl SinkHealth {
    /// Field names; the spool stores the values in this order: add at the end only.
    pub const FIELDS: [&'static str; 7] = [
        "healthy",
        "points_written",
        "spool_records",
        "spool_bytes",
        "spool_dropped",
        "rejected",
        "in_memory",
    ];

    pub fn values(&self) -> [u64; 7] {
        [
            self.healthy,
            self.points_written,
            self.spool_records,
            self.spool_bytes,
            self.spool_dropped,
            self.rejected,
            self.in_memory,
        ]
    }

    pub fn from_values(time: DateTime<Utc>, sink: Arc<str>, v: [u64; 7]) -> Self {
        let [healthy, points_written, spool_records, spool_bytes, spool_dropped, rejected, in_memory] = v;
        SinkHealth {
            time,
            sink,
            healthy,
            points_written,
            spool_records,
            spool_bytes,
            spool_dropped,
            rejected,
            in_memory,
        }
    }
}

impl From<Reading> for Record {
    fn from(r: Reading) -> Self {
        Record::Reading(r)
    }
}

impl From<StateChange> for Record {
    fn from(c: StateChange) -> Self {
        Record::Change(c)
    }
}

/// Whose state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    Trigger,
    Relay,
    /// A `[[neutral]]` voltage set.
    Neutral,
}

impl Subject {
    /// The spool stores positions in this array: add at the end only.
    pub const ALL: [Subject; 3] = [Subject::Trigger, Subject::Relay, Subject::Neutral];

    pub fn as_str(self) -> &'static str {
        match self {
            Subject::Trigger => "trigger",
            Subject::Relay => "relay",
            Subject::Neutral => "neutral",
        }
    }
}

/// What happened to a trigger or a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeEvent {
    /// Trigger: the condition held for `hold`.
    Tripped,
    /// Trigger: the condition stayed false for `recovery` (or a latch was reset).
    Released,
    /// Trigger: tripped with `latch`; stays until reset by hand.
    Latched,
    /// Trigger: a latch reset by hand.
    Reset,
    /// Trigger in a dry run: would have tripped (no relay touched).
    WouldTrip,
    /// Trigger in a dry run: would have released.
    WouldRelease,
    /// Trigger: a meter it reads went silent.
    Stale,
    /// Trigger: every meter it reads answers again.
    Fresh,
    /// Trigger or relay: state restored from the state file at start.
    Restored,
    /// Relay: driven to a new level by its triggers (or to its default at start or stop).
    Switched,
    /// Relay: forced on or off by hand.
    Forced,
    /// Relay: a force released by hand (or expired); its triggers decide again.
    Unforced,
    /// Relay: could not be switched (the GPIO refused the write).
    Failed,
    /// Neutral set: back to `ok`.
    NeutralOk,
    /// Neutral set: `suspect`, a displacement not (or no longer) confirmed.
    NeutralSuspect,
    /// Neutral set: `fault`, a broken neutral.
    NeutralFault,
}

impl ChangeEvent {
    /// The spool stores positions in this array: add at the end only.
    pub const ALL: [ChangeEvent; 16] = [
        ChangeEvent::Tripped,
        ChangeEvent::Released,
        ChangeEvent::Latched,
        ChangeEvent::Reset,
        ChangeEvent::WouldTrip,
        ChangeEvent::WouldRelease,
        ChangeEvent::Stale,
        ChangeEvent::Fresh,
        ChangeEvent::Restored,
        ChangeEvent::Switched,
        ChangeEvent::Forced,
        ChangeEvent::Unforced,
        ChangeEvent::Failed,
        ChangeEvent::NeutralOk,
        ChangeEvent::NeutralSuspect,
        ChangeEvent::NeutralFault,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeEvent::Tripped => "tripped",
            ChangeEvent::Released => "released",
            ChangeEvent::Latched => "latched",
            ChangeEvent::Reset => "reset",
            ChangeEvent::WouldTrip => "would_trip",
            ChangeEvent::WouldRelease => "would_release",
            ChangeEvent::Stale => "stale",
            ChangeEvent::Fresh => "fresh",
            ChangeEvent::Restored => "restored",
            ChangeEvent::Switched => "switched",
            ChangeEvent::Forced => "forced",
            ChangeEvent::Unforced => "unforced",
            ChangeEvent::Failed => "failed",
            ChangeEvent::NeutralOk => "ok",
            ChangeEvent::NeutralSuspect => "suspect",
            ChangeEvent::NeutralFault => "fault",
        }
    }
}

/// A change of state of a trigger or a relay: logged, stored (measurements `pmtr_trigger` and
/// `pmtr_relay`), and sent to the alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    pub time: DateTime<Utc>,
    pub subject: Subject,
    /// The trigger's or the relay's name.
    pub name: Arc<str>,
    pub event: ChangeEvent,
    /// Relay: on (coil energised). Trigger: tripped, or would be in a dry run. Neutral set: in
    /// fault.
    pub active: bool,
    /// Relay: forced by hand. Trigger: latched. Neutral set: was in fault before this change.
    pub held: bool,
    /// Trigger: in a dry run (never touches a relay). Relay: always false.
    pub dry_run: bool,
    /// What caused it: its kind for the parts that act on it, its words for people.
    pub cause: Cause,
}

/// What caused a [`StateChange`]. The kind lives in memory, for the alerts and the status
/// API; storage and the broker keep the words (a change read back from the spool is
/// [`Cause::Said`]). Two causes are equal when they say the same.
#[derive(Debug, Clone, Eq)]
pub enum Cause {
    /// The values of the expression's variables when it changed (`L1U=254.2 L2U=231.0`).
    Values(String),
    /// A relay claimed at start, at the level its saved state gives (`start`,
    /// `start: tripped by overvoltage`).
    Start(String),
    /// Anything else, in words: `forced on by uid 1000`, `trigger overvoltage tripped`, a
    /// meter gone silent, a pin that refused the write.
    Said(String),
}

impl Cause {
    pub fn as_str(&self) -> &str {
        match self {
            Cause::Values(s) | Cause::Start(s) | Cause::Said(s) => s,
        }
    }
}

impl Default for Cause {
    fn default() -> Self {
        Cause::Said(String::new())
    }
}

impl std::ops::Deref for Cause {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Cause {
    fn from(s: String) -> Self {
        Cause::Said(s)
    }
}

impl From<&str> for Cause {
    fn from(s: &str) -> Self {
        Cause::Said(s.to_owned())
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<&str> for Cause {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for Cause {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl Serialize for Cause {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Cause {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Cause::Said)
    }
}

impl fmt::Display for StateChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.subject.as_str(), self.name, self.event.as_str())?;
        if self.subject == Subject::Relay && self.event != ChangeEvent::Unforced {
            f.write_str(if self.active { " on" } else { " off" })?;
        }
        if !self.cause.is_empty() {
            write!(f, " ({})", self.cause)?;
        }
        Ok(())
    }
}

/// Watches energy counters of one meter and flags any step backwards.
#[derive(Debug, Default, Clone)]
pub struct EnergyGuard {
    last: Vec<(Phase, Quantity, f64)>,
}

impl EnergyGuard {
    /// Checks `samples` against the previous reading and remembers them. Returns true when a
    /// counter went backwards by more than its resolution (1 Wh).
    pub fn check(&mut self, samples: &[Sample]) -> bool {
        let mut backwards = false;
        for s in samples.iter().filter(|s| s.quantity.is_counter()) {
            match self.last.iter_mut().find(|(p, q, _)| *p == s.phase && *q == s.quantity) {
                Some((_, _, last)) => {
                    if s.value < *last - 0.0005 {
                        backwards = true;
                    }
                    *last = s.value;
                }
                None => self.last.push((s.phase, s.quantity, s.value)),
            }
        }
        backwards
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_names_follow_pmtr() {
        assert_eq!(Sample::new(Phase::L1, Quantity::Voltage, 1.0).variable(), "L1U");
        assert_eq!(Sample::new(Phase::L12, Quantity::Voltage, 1.0).variable(), "L12U");
        assert_eq!(Sample::new(Phase::L1, Quantity::ActiveEnergy, 1.0).variable(), "L1e");
        assert_eq!(Sample::new(Phase::L1, Quantity::PowerFactor, 1.0).variable(), "L1pf");
        assert_eq!(Sample::new(Phase::Total, Quantity::ActivePower, 1.0).variable(), "P");
    }

    #[test]
    fn energy_guard_flags_steps_back_only() {
        let mut g = EnergyGuard::default();
        let e = |v| [Sample::new(Phase::L1, Quantity::ActiveEnergy, v)];
        assert!(!g.check(&e(10.0)));
        assert!(!g.check(&e(10.0)));
        assert!(!g.check(&e(10.001)));
        assert!(g.check(&e(0.0)), "reset to zero");
        assert!(!g.check(&e(0.002)), "counting again after the reset");
        assert!(!g.check(&[Sample::new(Phase::L1, Quantity::Voltage, 1.0)]));
    }
}

#[cfg(test)]
mod plausibility {
    use super::*;

    /// Every quantity has a limit; non-finite values and values past it are implausible, the
    /// limit itself is not.
    #[test]
    fn every_quantity_refuses_non_finite_and_values_past_its_limit() {
        for q in Quantity::ALL {
            let limit = q.limit();
            assert!(limit.is_finite() && limit > 0.0, "{q:?}");
            for v in [0.0, limit, -limit] {
                assert!(Sample::new(Phase::L1, q, v).is_plausible(), "{q:?} {v}");
            }
            for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, limit * 1.001, -limit * 1.001, 3.4e38] {
                assert!(!Sample::new(Phase::L1, q, v).is_plausible(), "{q:?} {v}");
            }
        }
    }
}
