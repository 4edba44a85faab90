//! Trigger variables: what each name in an expression reads. Pure.
//! Here, in `config`, because they are resolved against the configured meters and neutral sets:
//! the loader checks every trigger with them and the engine reads through them (re-exported as
//! `trigger::vars`).
//!
//! - `L1U`, `L12U`, `P`, `L1e`…: the trigger's own `meter`, by the PMTR names
//!   ([`Sample::variable`](crate::reading::Sample::variable)), in SI units, energy in kWh.
//! - `gen.L1I`: meter `gen`'s value. A meter whose name has `-` is written with `_`
//!   (`house_l2.L2U` for meter `house-l2`), since `-` is a minus in an expression.
//! - `neutral_fault` (1 while the meter's `[[neutral]]` set is in `fault`, else 0) and
//!   `neutral_shift` (its estimated neutral displacement, volts): a meter in a set; unknown
//!   until the set has had its first sample.
//! - `today_kwh` (the meter's active energy since local midnight, kWh) and `today_cost` (its
//!   cost today under the first `[[tariff]]` that applies to it, standing charge included): any
//!   meter; unknown until its first reading, and `today_cost` while no tariff applies.
//! - `hour` (0–23), `minute` (0–59), `weekday` (1 = Monday … 7 = Sunday), `day` (1–31),
//!   `month` (1–12): the gateway's local time, whole numbers.

use super::{Meter, NeutralSet};
use crate::expr::Kind;
use crate::reading::{Phase, Quantity};
use chrono::{Datelike, Timelike};

/// A time-of-day variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockVar {
    Hour,
    Minute,
    Weekday,
    Day,
    Month,
}

impl ClockVar {
    pub const ALL: [(&'static str, ClockVar); 5] = [
        ("hour", ClockVar::Hour),
        ("minute", ClockVar::Minute),
        ("weekday", ClockVar::Weekday),
        ("day", ClockVar::Day),
        ("month", ClockVar::Month),
    ];

    /// Its value at local time `t`.
    pub fn value<T: Datelike + Timelike>(self, t: &T) -> f64 {
        f64::from(match self {
            ClockVar::Hour => t.hour(),
            ClockVar::Minute => t.minute(),
            ClockVar::Weekday => t.weekday().number_from_monday(),
            ClockVar::Day => t.day(),
            ClockVar::Month => t.month(),
        })
    }
}

/// Where a variable's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `meter` is an index into the config's meters.
    Meter {
        meter: usize,
        phase: Phase,
        quantity: Quantity,
    },
    Clock(ClockVar),
    /// A broken-neutral variable of set `set` (an index into the config's `neutral`), read
    /// through `meter`, one of its meters.
    Neutral {
        set: usize,
        meter: usize,
        var: NeutralVar,
    },
    /// Today's energy or cost of `meter` (kept by the `energy` module).
    Energy {
        meter: usize,
        var: EnergyVar,
    },
}

/// An energy-book variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnergyVar {
    /// `today_kwh`.
    TodayKwh,
    /// `today_cost`.
    TodayCost,
}

impl EnergyVar {
    pub const ALL: [(&'static str, EnergyVar); 2] =
        [("today_kwh", EnergyVar::TodayKwh), ("today_cost", EnergyVar::TodayCost)];
}

/// A broken-neutral variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeutralVar {
    /// `neutral_fault`: 1 in `fault`, else 0.
    Fault,
    /// `neutral_shift`: the estimated displacement, volts.
    Shift,
}

impl NeutralVar {
    pub const ALL: [(&'static str, NeutralVar); 2] =
        [("neutral_fault", NeutralVar::Fault), ("neutral_shift", NeutralVar::Shift)];
}

impl Source {
    pub fn kind(self) -> Kind {
        match self {
            Source::Meter { quantity: Quantity::Alarm, .. }
            | Source::Clock(_)
            | Source::Neutral { var: NeutralVar::Fault, .. } => Kind::Integer,
            Source::Meter { .. } | Source::Neutral { .. } | Source::Energy { .. } => Kind::Number,
        }
    }
}

/// The meters (indices) that `sources` read, in order, once each.
pub fn meters_of(sources: &[Source]) -> Vec<usize> {
    let mut meters: Vec<usize> = sources
        .iter()
        .filter_map(|s| match s {
            Source::Meter { meter, .. } | Source::Neutral { meter, .. } | Source::Energy { meter, .. } => {
                Some(*meter)
            }
            Source::Clock(_) => None,
        })
        .collect();
    meters.sort_unstable();
    meters.dedup();
    meters
}

/// How meter `name` is written as a prefix.
pub fn prefix_of(name: &str) -> String {
    name.replace('-', "_")
}

/// The variable names a meter offers, unprefixed, with what they read.
pub fn meter_variables(m: &Meter) -> Vec<(String, Phase, Quantity)> {
    m.model
        .sample_set(m.phase)
        .into_iter()
        .map(|(p, q)| (format!("{}{}", p.prefix(), q.symbol()), p, q))
        .collect()
}

/// Whether `name` is a broken-neutral variable (`neutral_fault`, `<meter>.neutral_shift`) of a
/// meter that exists but that no set in `neutral` lists: the one error of [`resolve`] that a
/// `[[neutral]]` table with an error of its own (and so missing from `neutral`) explains.
pub fn needs_a_missing_set(name: &str, own: Option<usize>, meters: &[Meter], neutral: &[NeutralSet]) -> bool {
    let (meter, var) = match name.split_once('.') {
        Some((prefix, var)) => (meters.iter().position(|m| prefix_of(&m.name) == prefix), var),
        None => (own, name),
    };
    let Some(m) = meter.and_then(|i| meters.get(i)) else { return false };
    NeutralVar::ALL.iter().any(|(n, _)| *n == var)
        && !neutral.iter().any(|n| n.meters().contains(&m.name.as_str()))
}

/// Why a name in an expression reads nothing; the text goes to the user as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownVariable {
    /// `hint` is ` (did you mean …?)`, ` (meters: …)` or empty.
    #[error("no meter is named `{prefix}`{hint}")]
    NoMeter { prefix: String, hint: String },
    /// An unprefixed name that is no time variable (`clock` lists them), and no `meter` to read.
    #[error(
        "not a time variable ({clock}), and the trigger has no `meter` for unprefixed names: \
         set `meter = \"…\"` or write `<meter>.{name}`"
    )]
    NoOwnMeter { name: String, clock: String },
    #[error("meter \"{meter}\" is in no [[neutral]] set: `{var}` needs one that lists it")]
    NoNeutralSet { meter: String, var: String },
    /// `model` is the meter's model (with its phase for a single-phase meter), `close` is
    /// ` (did you mean …?)` or empty, `has` the variables it has, space-separated.
    #[error("meter \"{meter}\" ({model}) has no `{var}`{close}; it has {has}")]
    NoSuchVariable { meter: String, model: String, var: String, close: String, has: String },
}

/// The callbacks of [`Expression::compile`](super::Expression::compile) say why in plain text.
impl From<UnknownVariable> for String {
    fn from(e: UnknownVariable) -> String {
        e.to_string()
    }
}

/// Resolves `name` for a trigger whose unprefixed variables read meter `own` (an index into
/// `meters`); `neutral` are the config's voltage sets. The error says why, in the user's
/// words, with close names when there are any.
pub fn resolve(
    name: &str,
    own: Option<usize>,
    meters: &[Meter],
    neutral: &[NeutralSet],
) -> Result<Source, UnknownVariable> {
    if let Some((_, c)) = ClockVar::ALL.iter().find(|(n, _)| *n == name) {
        return Ok(Source::Clock(*c));
    }
    let (meter, var) = match name.split_once('.') {
        Some((prefix, var)) => {
            let Some(i) = meters.iter().position(|m| prefix_of(&m.name) == prefix) else {
                let names: Vec<String> = meters.iter().map(|m| prefix_of(&m.name)).collect();
                return Err(UnknownVariable::NoMeter {
                    prefix: prefix.to_owned(),
                    hint: hint(prefix, names.iter().map(String::as_str), "meters"),
                });
            };
            (i, var)
        }
        None => match own {
            Some(i) => (i, name),
            None => {
                let clock: Vec<&str> = ClockVar::ALL.iter().map(|(n, _)| *n).collect();
                return Err(UnknownVariable::NoOwnMeter { name: name.to_owned(), clock: clock.join(", ") });
            }
        },
    };
    let m = &meters[meter];
    let set = neutral.iter().position(|n| n.meters().contains(&m.name.as_str()));
    if let Some((_, v)) = NeutralVar::ALL.iter().find(|(n, _)| *n == var) {
        return match set {
            Some(set) => Ok(Source::Neutral { set, meter, var: *v }),
            None => Err(UnknownVariable::NoNeutralSet { meter: m.name.clone(), var: var.to_owned() }),
        };
    }
    if let Some((_, v)) = EnergyVar::ALL.iter().find(|(n, _)| *n == var) {
        return Ok(Source::Energy { meter, var: *v });
    }
    let offered = meter_variables(m);
    if let Some((_, phase, quantity)) = offered.iter().find(|(n, _, _)| n == var) {
        return Ok(Source::Meter { meter, phase: *phase, quantity: *quantity });
    }
    let mut names: Vec<&str> = offered.iter().map(|(n, _, _)| n.as_str()).collect();
    if set.is_some() {
        names.extend(NeutralVar::ALL.iter().map(|(n, _)| *n));
    }
    names.extend(EnergyVar::ALL.iter().map(|(n, _)| *n));
    let close = crate::spelling::expr_hint(var, &names);
    let on = if m.model.takes_phase() { format!(" on {:?}", m.phase) } else { String::new() };
    Err(UnknownVariable::NoSuchVariable {
        meter: m.name.clone(),
        model: format!("{}{on}", m.model),
        var: var.to_owned(),
        close,
        has: names.join(" "),
    })
}

fn hint<'a>(word: &str, candidates: impl Iterator<Item = &'a str>, _what: &str) -> String {
    let c: Vec<&str> = candidates.collect();
    let close = crate::spelling::expr_hint(word, &c);
    if close.is_empty() && !c.is_empty() {
        format!(" (meters: {})", c.join(", "))
    } else {
        close
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::Model;
    use std::time::Duration;

    fn meter(name: &str, model: Model, phase: Phase) -> Meter {
        Meter {
            name: name.into(),
            model,
            address: 1,
            bus: "b".into(),
            poll: Duration::from_secs(1),
            phase,
            server: None,
            unit: None,
            writable: Vec::new(),
        }
    }

    fn meters() -> Vec<Meter> {
        vec![meter("main", Model::Rx380, Phase::L1), meter("house-l2", Model::Pzem016, Phase::L2)]
    }

    #[test]
    fn names_resolve() {
        let m = meters();
        let s = |n: &str| resolve(n, Some(0), &m, &[]);
        assert_eq!(s("L12U"), Ok(Source::Meter { meter: 0, phase: Phase::L12, quantity: Quantity::Voltage }));
        assert_eq!(
            s("P"),
            Ok(Source::Meter { meter: 0, phase: Phase::Total, quantity: Quantity::ActivePower })
        );
        assert_eq!(
            s("house_l2.L2I"),
            Ok(Source::Meter { meter: 1, phase: Phase::L2, quantity: Quantity::Current })
        );
        assert_eq!(s("hour"), Ok(Source::Clock(ClockVar::Hour)));
        assert_eq!(s("house_l2.L2alarm").unwrap().kind(), Kind::Integer);
    }

    #[test]
    fn errors_say_why() {
        let m = meters();
        let e = resolve("house_l2.L1U", Some(0), &m, &[]).unwrap_err().to_string();
        assert!(e.contains("pzem-016 on L2") && e.contains("(did you mean L2U") && e.contains("L2pf"), "{e}");
        let e = resolve("gen.L1I", Some(0), &m, &[]).unwrap_err().to_string();
        assert!(e.contains("no meter is named `gen`") && e.contains("main"), "{e}");
        let e = resolve("L1U", None, &m, &[]).unwrap_err().to_string();
        assert!(e.contains("set `meter"), "{e}");
        let e = resolve("e", Some(1), &m, &[]).unwrap_err().to_string();
        assert!(e.contains("has no `e`"), "{e}");
    }

    #[test]
    fn neutral_variables_resolve_for_the_meters_of_a_set_only() {
        let m = meters();
        let sets = [NeutralSet {
            name: "supply".into(),
            source: crate::config::NeutralSource::Meter("main".into()),
            nominal: 230.0,
            shift: 20.0,
            sensitivity: crate::neutral::Sensitivity::Normal,
        }];
        let s = resolve("neutral_fault", Some(0), &m, &sets).unwrap();
        assert_eq!(s, Source::Neutral { set: 0, meter: 0, var: NeutralVar::Fault });
        assert_eq!(s.kind(), Kind::Integer);
        assert_eq!(
            resolve("main.neutral_shift", None, &m, &sets),
            Ok(Source::Neutral { set: 0, meter: 0, var: NeutralVar::Shift })
        );
        let e = resolve("house_l2.neutral_fault", Some(0), &m, &sets).unwrap_err().to_string();
        assert!(e.contains("in no [[neutral]] set"), "{e}");
        let e = resolve("neutral_falt", Some(0), &m, &sets).unwrap_err().to_string();
        assert!(e.contains("neutral_fault"), "{e}");
    }

    #[test]
    fn clock_values() {
        let t = chrono::NaiveDate::from_ymd_opt(2026, 11, 21).unwrap().and_hms_opt(22, 30, 0).unwrap();
        assert_eq!(ClockVar::Hour.value(&t), 22.0);
        assert_eq!(ClockVar::Minute.value(&t), 30.0);
        assert_eq!(ClockVar::Weekday.value(&t), 6.0, "2026-11-21 is a Saturday");
        assert_eq!(ClockVar::Month.value(&t), 11.0);
    }
}
