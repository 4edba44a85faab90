//! The words the configuration describes the gateway with, which the parts then use: a relay's
//! [`Level`], a sink's [`Durability`], a CSV sink's [`GroupBy`] and [`TimeZone`], an
//! [`AlertKind`], a neutral set's [`Sensitivity`], an MQTT [`topic_level`]. They live here, not
//! in the part that acts on them, so that imports run one way: `relay`, `store`, `alert`,
//! `neutral` and `mqtt` import `config`, and `config` imports none of them (each part re-exports
//! its word under its old path).

use serde::{Deserialize, Serialize};

/// A relay's logical level: a `[[relay]]`'s `default` and a `[[trigger]]`'s `level`. The
/// relay bank, the control socket, MQTT and the status API use it; `relay` adds the pin side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Off,
    On,
}

impl Level {
    pub fn opposite(self) -> Level {
        match self {
            Level::Off => Level::On,
            Level::On => Level::Off,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::On => "on",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        match s.to_ascii_lowercase().as_str() {
            "on" => Some(Level::On),
            "off" => Some(Level::Off),
            _ => None,
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When readings touch the disk: a `[[sink]]`'s `durability`, which the sink obeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Only while the database is away or behind. A power cut loses what waits in memory
    /// (at most `flush_interval` of readings).
    Outage,
    /// Every reading is appended to the spool before it is sent: a power cut loses at most
    /// `sync_interval`, at the price of a disk write per reading.
    Always,
}

/// Which meters share a file: a CSV `[[sink]]`'s `group_by`, which the CSV writer obeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Meter,
    Bus,
    /// One file for the whole gateway, named after it.
    Gateway,
}

/// The clock of the timestamps and of the day boundary: a CSV `[[sink]]`'s `timezone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeZone {
    Local,
    Utc,
}

/// What an alert is about: `[alerts]` names the kinds mailed and routed; the alert policy
/// sorts and limits by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    /// A trigger tripped or latched (or would have, in a dry run).
    TriggerTripped,
    /// A trigger released, or its latch was reset.
    TriggerReleased,
    /// A relay forced by hand, or its force released.
    RelayForced,
    /// A relay could not be switched.
    RelayFailed,
    /// A meter stopped answering.
    MeterSilent,
    /// A meter answers again.
    MeterBack,
    /// The database has been unreachable for longer than the set time.
    DatabaseDown,
    DatabaseBack,
    /// The spool filled past its mark.
    SpoolFilling,
    /// The spool was full: readings were dropped.
    SpoolDropped,
    /// The daemon started after an unclean stop.
    UncleanStop,
    /// A `[[neutral]]` set found a broken neutral, or left that fault.
    NeutralFault,
}

impl AlertKind {
    pub const ALL: [AlertKind; 12] = [
        AlertKind::TriggerTripped,
        AlertKind::TriggerReleased,
        AlertKind::RelayForced,
        AlertKind::RelayFailed,
        AlertKind::MeterSilent,
        AlertKind::MeterBack,
        AlertKind::DatabaseDown,
        AlertKind::DatabaseBack,
        AlertKind::SpoolFilling,
        AlertKind::SpoolDropped,
        AlertKind::UncleanStop,
        AlertKind::NeutralFault,
    ];

    /// The name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::TriggerTripped => "trigger_tripped",
            AlertKind::TriggerReleased => "trigger_released",
            AlertKind::RelayForced => "relay_forced",
            AlertKind::RelayFailed => "relay_failed",
            AlertKind::MeterSilent => "meter_silent",
            AlertKind::MeterBack => "meter_back",
            AlertKind::DatabaseDown => "database_down",
            AlertKind::DatabaseBack => "database_back",
            AlertKind::SpoolFilling => "spool_filling",
            AlertKind::SpoolDropped => "spool_dropped",
            AlertKind::UncleanStop => "unclean_stop",
            AlertKind::NeutralFault => "neutral_fault",
        }
    }

    pub fn parse(s: &str) -> Option<AlertKind> {
        AlertKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// How quickly evidence confirms a fault: faster is more exposed to grid disturbances. A
/// `[[neutral]]` set's `sensitivity`; the detectors scale their evidence by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Sensitivity {
    Low,
    #[default]
    Normal,
    High,
}

impl Sensitivity {
    /// The factor on the evidence a fault needs (and on the hold times).
    pub fn factor(self) -> f64 {
        match self {
            Sensitivity::Low => 2.0,
            Sensitivity::Normal => 1.0,
            Sensitivity::High => 0.5,
        }
    }
}

/// A name made safe as one topic level and as a Home Assistant object id: ASCII letters,
/// digits, `_` and `-`; anything else becomes `_`. The configuration derives the MQTT client
/// id and topic prefix from the gateway's name with it; MQTT builds every topic with it.
pub fn topic_level(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    if s.is_empty() {
        "_".to_owned()
    } else {
        s
    }
}
