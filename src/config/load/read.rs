//! Typed readers: each value of the file read as what its key expects (strings, numbers,
//! booleans, names, durations, arrays of tables), with an error naming the key when it is not.

use super::diagnostics::is_bare_key;
use super::{Loader, Value};
use serde::de::DeserializeOwned;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::de::{DeTable, DeValue, ValueDeserializer};

/// No duration key of the file may exceed this (a year), whatever its own maximum says: well
/// within what an `Instant` or a `Duration` product can hold.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

/// Parses a duration: a decimal number and a unit, `ms`, `s`, `m` or `h` (`"500ms"`, `"5s"`,
/// `"1.5s"`, `"1m"`, `"1h"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "units: ms, s, m, h";
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty duration: write e.g. \"5s\" ({UNITS})"));
    }
    if t.starts_with('-') {
        return Err(format!("negative duration \"{s}\""));
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() || number == "." {
        return Err(format!("invalid duration \"{s}\": expected a number and a unit, e.g. \"5s\" ({UNITS})"));
    }
    let unit_nanos: u128 = match unit.trim_start() {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => {
            return Err(format!(
                "duration \"{s}\" has no unit: write \"{number}s\" or \"{number}ms\" ({UNITS})"
            ))
        }
        other => return Err(format!("unknown unit \"{other}\" in duration \"{s}\" ({UNITS})")),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if frac.contains('.') {
        return Err(format!("invalid number in duration \"{s}\""));
    }
    let overflow = || format!("duration \"{s}\" is too long");
    let mut nanos: u128 = 0;
    for d in int.bytes() {
        nanos =
            nanos.checked_mul(10).and_then(|n| n.checked_add(u128::from(d - b'0'))).ok_or_else(overflow)?;
    }
    nanos = nanos.checked_mul(unit_nanos).ok_or_else(overflow)?;
    // Fractional digits beyond the nanosecond are dropped.
    let mut scale = unit_nanos;
    for d in frac.bytes() {
        scale /= 10;
        nanos = nanos.checked_add(u128::from(d - b'0') * scale).ok_or_else(overflow)?;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| overflow())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// A duration as a user writes it: `"500ms"`, `"10s"`, `"24h"`, `"90m"`; odd values as Rust
/// shows them (`"1.5s"`).
pub(super) fn show(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    match (secs, nanos) {
        (0, n) if n % 1_000_000 == 0 => format!("{}ms", n / 1_000_000),
        (s, 0) if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        _ => format!("{d:?}"),
    }
}

/// Deserializes one value with serde.
pub(super) fn de<T: DeserializeOwned>(v: &Value<'_>) -> Result<T, String> {
    T::deserialize(ValueDeserializer::from(v.clone())).map_err(|e| e.message().to_owned())
}

impl Loader<'_> {
    /// A path as written in the config file: relative paths are relative to the file's folder.
    pub(super) fn relative_to_config(&self, name: &str) -> PathBuf {
        let p = Path::new(name);
        if p.is_relative() {
            Path::new(self.file).parent().unwrap_or(Path::new(".")).join(p)
        } else {
            p.to_path_buf()
        }
    }

    /// `integer 5`, `string "5s"`, `table`.
    pub(super) fn describe(&self, v: &Value<'_>) -> String {
        let kind = v.get_ref().type_str();
        match self.src.get(v.span()) {
            Some(text) if !text.is_empty() && text.len() <= 40 && !text.contains('\n') => {
                format!("{kind} {text}")
            }
            _ => kind.to_owned(),
        }
    }

    /// A number, integer or float (`expected` names it in the error: "a number of volts").
    pub(super) fn number(&mut self, v: &Value<'_>, key: &str, expected: &str) -> Option<f64> {
        if self.is_damaged(v) {
            return None;
        }
        match v.get_ref() {
            DeValue::Integer(_) => de::<i64>(v).ok().map(|n| n as f64),
            DeValue::Float(_) => de::<f64>(v).ok(),
            _ => {
                self.wrong_type(v, key, expected);
                None
            }
        }
    }

    pub(super) fn wrong_type(&mut self, v: &Value<'_>, key: &str, expected: &str) {
        let found = self.describe(v);
        self.error(v.span(), key, format!("expected {expected}, found {found}"));
    }

    pub(super) fn string(&mut self, v: &Value<'_>, key: &str) -> Option<String> {
        if self.is_damaged(v) {
            return None;
        }
        if !v.get_ref().is_str() {
            self.wrong_type(v, key, "a string");
            return None;
        }
        match de::<String>(v) {
            Ok(s) => Some(s),
            Err(e) => {
                self.error(v.span(), key, e);
                None
            }
        }
    }

    pub(super) fn non_empty_string(&mut self, v: &Value<'_>, key: &str) -> Option<String> {
        let s = self.string(v, key)?;
        if s.trim().is_empty() {
            self.error(v.span(), key, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub(super) fn boolean(&mut self, v: &Value<'_>, key: &str) -> Option<bool> {
        if self.is_damaged(v) {
            return None;
        }
        if !v.get_ref().is_bool() {
            self.wrong_type(v, key, "true or false");
            return None;
        }
        de::<bool>(v).map_err(|e| self.error(v.span(), key, e)).ok()
    }

    pub(super) fn integer(&mut self, v: &Value<'_>, key: &str) -> Option<i64> {
        if self.is_damaged(v) {
            return None;
        }
        if !v.get_ref().is_integer() {
            self.wrong_type(v, key, "an integer");
            return None;
        }
        de::<i64>(v).map_err(|e| self.error(v.span(), key, e)).ok()
    }

    pub(super) fn integer_in(&mut self, v: &Value<'_>, key: &str, range: RangeInclusive<i64>) -> Option<i64> {
        let n = self.integer(v, key)?;
        if !range.contains(&n) {
            self.error(
                v.span(),
                key,
                format!("{n} is out of range: must be {}..={}", range.start(), range.end()),
            );
            return None;
        }
        Some(n)
    }

    /// A name made of `[A-Za-z0-9_-]`: meter, bus and gateway names become tags, topic levels
    /// and CSV file names, where `/`, `..` or a space would escape or break them. `why` says
    /// where the name goes.
    pub(super) fn name(&mut self, v: &Value<'_>, key: &str, why: &str) -> Option<String> {
        let name = self.non_empty_string(v, key)?;
        if is_bare_key(&name) {
            return Some(name);
        }
        self.error(
            v.span(),
            key,
            format!("invalid name {name:?}: use only letters, digits, `_` and `-` ({why})"),
        );
        None
    }

    /// A duration within `min..=max`. A bare number is rejected with the string to write
    /// instead, in the first unit among s, ms, m and h that puts it within the limits.
    ///
    /// Every duration key has a maximum (no key may leave it open): the daemon adds these
    /// durations to instants and multiplies back-offs by them, and a value like
    /// `"3000000000000000h"` would overflow there. The maxima are in the README's tables.
    pub(super) fn duration_in(
        &mut self,
        v: &Value<'_>,
        key: &str,
        min: Option<Duration>,
        max: Duration,
    ) -> Option<Duration> {
        if self.is_damaged(v) {
            return None;
        }
        let max = Some(max.min(MAX_DURATION));
        let within = |d: Duration| min.is_none_or(|min| d >= min) && max.is_none_or(|max| d <= max);
        if matches!(v.get_ref(), DeValue::Integer(_) | DeValue::Float(_)) {
            let number = self.src.get(v.span()).unwrap_or_default().to_owned();
            let written = ["s", "ms", "m", "h"]
                .into_iter()
                .map(|unit| format!("{number}{unit}"))
                .find(|d| parse_duration(d).is_ok_and(within))
                .or_else(|| Some(format!("{number}s")).filter(|d| parse_duration(d).is_ok()))
                .unwrap_or_else(|| "5s".to_owned());
            let kind = v.get_ref().type_str();
            let message = format!(
                "found {kind} {number}: a duration is a string with a unit, write \"{written}\" \
                 (units: ms, s, m, h)"
            );
            self.error(v.span(), key, message);
            return None;
        }
        let s = self.string(v, key)?;
        let d = parse_duration(&s).map_err(|e| self.error(v.span(), key, e)).ok()?;
        let message = match (min, max) {
            _ if within(d) => return Some(d),
            (Some(min), Some(max)) => {
                format!("{} is out of range: must be {}..={}", show(d), show(min), show(max))
            }
            (None, Some(max)) => format!("{} is too long: must be at most {}", show(d), show(max)),
            (_, None) => return Some(d),
        };
        self.error(v.span(), key, message);
        None
    }

    /// The elements of a top-level array of tables (`[[bus]]`), with their index. None when
    /// the key is absent.
    pub(super) fn elements<'t, 'i>(
        &mut self,
        root: &'t DeTable<'i>,
        key: &str,
    ) -> Option<Vec<(usize, &'t Value<'i>, &'t DeTable<'i>)>> {
        let v = root.get(key)?;
        let Some(items) = v.get_ref().as_array() else {
            if self.is_damaged(v) {
                return Some(Vec::new());
            }
            let message = if v.get_ref().is_table() {
                format!("expected an array of tables: write [[{key}]], not [{key}]")
            } else {
                format!("expected an array of tables [[{key}]], found {}", self.describe(v))
            };
            self.error(v.span(), key, message);
            return Some(Vec::new());
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref().as_table() {
                Some(t) => out.push((i, item, t)),
                None if self.is_damaged(item) => {}
                None => self.wrong_type(item, &format!("{key}[{i}]"), "a table"),
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("5s", Duration::from_secs(5)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.25ms", Duration::from_micros(250)),
            (" 10 s ", Duration::from_secs(10)),
            ("0s", Duration::ZERO),
        ];
        for (s, d) in ok {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
        assert_eq!(parse_duration("2.s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        for bad in
            ["", "s", "5", "5sec", "-5s", "1.2.3s", "5 x", "1e3s", "ms", ".s", "99999999999999999999999h"]
        {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_duration("5").unwrap_err().contains("\"5s\""));
        assert!(parse_duration("5sec").unwrap_err().contains("units: ms, s, m, h"));
    }
}
