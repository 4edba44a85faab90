//! Tariffs: a price per kWh by weekday and local hour, and an optional standing charge per day.
//! Here, in `config`, because a tariff is what the file describes; `energy` prices with it
//! (and re-exports it as `energy::tariff`).

use chrono::{DateTime, Datelike, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use serde::Serialize;

/// A `[[tariff]]` table, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tariff {
    pub name: String,
    /// A label printed with costs (`EUR`, `USD`); pmtr converts nothing.
    pub currency: String,
    /// Per kWh, when no rate matches.
    pub price: f64,
    /// Per day, added once for every day of a period that has begun.
    pub standing_charge: f64,
    /// The meters it applies to; empty: all.
    pub meters: Vec<String>,
    /// Time-of-use rates, the first that matches wins.
    pub rates: Vec<Rate>,
}

/// A price for some hours of some weekdays.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rate {
    /// Monday first.
    pub days: [bool; 7],
    /// Local hours `from..to`; `to <= from` wraps past midnight (`22-6`: 22:00 to 06:00), and
    /// `from == to` is the whole day. The weekday is the one of the hour itself.
    pub from: u8,
    pub to: u8,
    pub price: f64,
}

impl Rate {
    pub fn matches(&self, weekday: Weekday, hour: u8) -> bool {
        if !self.days[weekday.num_days_from_monday() as usize] {
            return false;
        }
        if self.from < self.to {
            (self.from..self.to).contains(&hour)
        } else if self.from > self.to {
            hour >= self.from || hour < self.to
        } else {
            true
        }
    }
}

impl Tariff {
    pub fn applies_to(&self, meter: &str) -> bool {
        self.meters.is_empty() || self.meters.iter().any(|m| m == meter)
    }

    /// The price per kWh at an instant, in the zone of the periods.
    pub fn price_at(&self, t: DateTime<Utc>, tz: Tz) -> f64 {
        let local = t.with_timezone(&tz);
        let hour = local.hour() as u8;
        self.rates.iter().find(|r| r.matches(local.weekday(), hour)).map_or(self.price, |r| r.price)
    }
}

/// Why a tariff's `days` or `hours` do not parse; `0` is the text (or the item) as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRange {
    #[error("`{0}` is not a weekday or a range of them (mon-fri, sat,sun, all)")]
    Days(String),
    #[error("`{0}` is not an hour range like 7-22 or 22-6 (whole hours, 0 to 24)")]
    Hours(String),
}

/// The configuration loader reports it in plain text.
impl From<BadRange> for String {
    fn from(e: BadRange) -> String {
        e.to_string()
    }
}

/// Parses `mon-fri`, `sat,sun`, `all` into weekday flags (Monday first).
pub fn parse_days(s: &str) -> Result<[bool; 7], BadRange> {
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let index = |n: &str| {
        let n = n.trim().to_ascii_lowercase();
        NAMES
            .iter()
            .position(|x| n.starts_with(x) && NAMES.iter().filter(|y| n.starts_with(**y)).count() == 1)
    };
    let mut days = [false; 7];
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok([true; 7]);
    }
    for item in s.split(',') {
        let (a, b) = match item.split_once('-') {
            Some((a, b)) => (a, b),
            None => (item, item),
        };
        let (Some(a), Some(b)) = (index(a), index(b)) else {
            return Err(BadRange::Days(item.to_owned()));
        };
        let mut i = a;
        loop {
            days[i] = true;
            if i == b {
                break;
            }
            i = (i + 1) % 7;
        }
    }
    Ok(days)
}

/// Parses `22-6` (hours, local) into `(from, to)`.
pub fn parse_hours(s: &str) -> Result<(u8, u8), BadRange> {
    let bad = || BadRange::Hours(s.to_owned());
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: u8 = a.trim().parse().map_err(|_| bad())?;
    let b: u8 = b.trim().parse().map_err(|_| bad())?;
    if a > 24 || b > 24 {
        return Err(bad());
    }
    Ok((a % 24, b % 24))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Europe::Berlin;

    pub fn night_and_day() -> Tariff {
        Tariff {
            name: "home".into(),
            currency: "EUR".into(),
            price: 0.30,
            standing_charge: 0.5,
            meters: vec![],
            rates: vec![Rate { days: [true; 7], from: 22, to: 6, price: 0.20 }],
        }
    }

    #[test]
    fn rates_by_local_hour_and_weekday() {
        let t = night_and_day();
        assert_eq!(t.price_at("2026-07-01T19:59:59Z".parse().unwrap(), Berlin), 0.30);
        assert_eq!(t.price_at("2026-07-01T20:00:00Z".parse().unwrap(), Berlin), 0.20);
        assert_eq!(t.price_at("2026-07-02T03:59:00Z".parse().unwrap(), Berlin), 0.20);
        assert_eq!(t.price_at("2026-07-02T04:00:00Z".parse().unwrap(), Berlin), 0.30);
        let weekend = Rate { days: parse_days("sat-sun").unwrap(), from: 0, to: 0, price: 0.1 };
        assert!(weekend.matches(Weekday::Sun, 13) && !weekend.matches(Weekday::Mon, 13));
    }

    #[test]
    fn days_and_hours_parse() {
        assert_eq!(parse_days("mon-fri").unwrap(), [true, true, true, true, true, false, false]);
        assert_eq!(parse_days("fri-mon").unwrap(), [true, false, false, false, true, true, true]);
        assert_eq!(parse_days("sat, sun").unwrap(), [false, false, false, false, false, true, true]);
        assert_eq!(parse_days("All").unwrap(), [true; 7]);
        assert!(parse_days("mon-fry").is_err());
        assert_eq!(parse_hours("22-6").unwrap(), (22, 6));
        assert_eq!(parse_hours("0-24").unwrap(), (0, 0));
        assert!(parse_hours("7").is_err() && parse_hours("7-25").is_err());
    }
}
