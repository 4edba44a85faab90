//! Local time for energy: days that start at local midnight (23 or 25 hours long on the
//! daylight-saving changes), ISO weeks, months and years, and the split of the energy between two
//! readings over the local hours it spans (by time: each hour gets its share of the interval).

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::counter::Part;

/// The local date of an instant.
pub fn local_date(t: DateTime<Utc>, tz: Tz) -> NaiveDate {
    t.with_timezone(&tz).date_naive()
}

/// The instant a local day starts: midnight, or the first local time that exists after it in a
/// zone that changes its clocks at midnight.
pub fn day_start(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut naive = date.and_time(NaiveTime::MIN);
    for _ in 0..4 {
        if let Some(t) = tz.from_local_datetime(&naive).earliest() {
            return t.with_timezone(&Utc);
        }
        naive += Duration::minutes(30);
    }
    // No zone skips two hours; keep a defined answer all the same.
    Utc.from_utc_datetime(&date.and_time(NaiveTime::MIN))
}

/// The first local hour boundary strictly after `t` (offsets are whole quarter hours in every
/// zone, so the boundary is one of the next four UTC quarter hours).
pub fn next_hour(t: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    let quarter = 900;
    let mut s = t.timestamp().div_euclid(quarter) * quarter + quarter;
    loop {
        let u = Utc.timestamp_opt(s, 0).unwrap();
        if u.with_timezone(&tz).minute() == 0 {
            return u;
        }
        s += quarter;
    }
}

/// A part of energy within one local hour: its start (for the date and the price) and share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slice {
    pub from: DateTime<Utc>,
    pub kwh: f64,
}

/// Splits `part` at every local hour boundary inside it, by time. The slices add up to the part
/// exactly (the last one takes the rounding).
pub fn split(part: Part, tz: Tz) -> Vec<Slice> {
    let total_ms = (part.to - part.from).num_milliseconds();
    if total_ms <= 0 {
        return vec![Slice { from: part.from, kwh: part.kwh }];
    }
    let mut out = vec![];
    let mut from = part.from;
    let mut given = 0.0;
    loop {
        let next = next_hour(from, tz);
        if next >= part.to {
            out.push(Slice { from, kwh: part.kwh - given });
            return out;
        }
        let share = part.kwh * (next - from).num_milliseconds() as f64 / total_ms as f64;
        out.push(Slice { from, kwh: share });
        given += share;
        from = next;
    }
}

/// The periods `pmtr energy` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Today,
    Yesterday,
    /// The ISO week: from Monday.
    ThisWeek,
    ThisMonth,
    LastMonth,
    ThisYear,
}

impl Period {
    pub const ALL: [Period; 6] = [
        Period::Today,
        Period::Yesterday,
        Period::ThisWeek,
        Period::ThisMonth,
        Period::LastMonth,
        Period::ThisYear,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Period::Today => "today",
            Period::Yesterday => "yesterday",
            Period::ThisWeek => "this_week",
            Period::ThisMonth => "this_month",
            Period::LastMonth => "last_month",
            Period::ThisYear => "this_year",
        }
    }

    /// The local dates of the period that have begun on `today`: first and last, inclusive
    /// (a current period ends today).
    pub fn dates(self, today: NaiveDate) -> (NaiveDate, NaiveDate) {
        let first_of_month = today.with_day(1).unwrap_or(today);
        match self {
            Period::Today => (today, today),
            Period::Yesterday => {
                let y = today.pred_opt().unwrap_or(today);
                (y, y)
            }
            Period::ThisWeek => {
                (today - Duration::days(i64::from(today.weekday().num_days_from_monday())), today)
            }
            Period::ThisMonth => (first_of_month, today),
            Period::LastMonth => {
                let last = first_of_month.pred_opt().unwrap_or(first_of_month);
                (last.with_day(1).unwrap_or(last), last)
            }
            Period::ThisYear => (NaiveDate::from_ymd_opt(today.year(), 1, 1).unwrap_or(today), today),
        }
    }
}

/// The first local date any period still needs on `today` (older days can be forgotten).
pub fn oldest_needed(today: NaiveDate) -> NaiveDate {
    Period::ALL.iter().map(|p| p.dates(today).0).min().unwrap_or(today)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Europe::Berlin;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn berlin_days_are_23_and_25_hours_long_on_the_changes() {
        let len = |d: &str| {
            (day_start(date(d).succ_opt().unwrap(), Berlin) - day_start(date(d), Berlin)).num_hours()
        };
        assert_eq!(len("2026-03-29"), 23);
        assert_eq!(len("2026-10-25"), 25);
        assert_eq!(len("2026-07-01"), 24);
        assert_eq!(day_start(date("2026-03-29"), Berlin), utc("2026-03-28T23:00:00Z"));
        assert_eq!(day_start(date("2026-03-30"), Berlin), utc("2026-03-29T22:00:00Z"));
        assert_eq!(day_start(date("2026-10-26"), Berlin), utc("2026-10-25T23:00:00Z"));
    }

    #[test]
    fn hour_boundaries_follow_the_local_clock() {
        assert_eq!(next_hour(utc("2026-07-01T10:20:00Z"), Berlin), utc("2026-07-01T11:00:00Z"));
        assert_eq!(next_hour(utc("2026-07-01T11:00:00Z"), Berlin), utc("2026-07-01T12:00:00Z"));
        let kolkata: Tz = "Asia/Kolkata".parse().unwrap();
        assert_eq!(next_hour(utc("2026-07-01T10:20:00Z"), kolkata), utc("2026-07-01T10:30:00Z"));
    }

    #[test]
    fn energy_across_midnight_is_split_by_time() {
        // 22:50 to 23:20 UTC in summer is 00:50 to 01:20 in Berlin: split at 01:00 local.
        let p = Part { from: utc("2026-07-01T21:50:00Z"), to: utc("2026-07-01T22:20:00Z"), kwh: 3.0 };
        let s = split(p, Berlin);
        assert_eq!(s.len(), 2);
        assert_eq!(local_date(s[0].from, Berlin), date("2026-07-01"));
        assert_eq!(local_date(s[1].from, Berlin), date("2026-07-02"));
        assert!((s[0].kwh - 1.0).abs() < 1e-12 && (s[1].kwh - 2.0).abs() < 1e-12);
    }

    #[test]
    fn the_repeated_hour_in_october_is_two_slices() {
        // 00:30 UTC to 01:30 UTC on 2026-10-25 is 02:30 CEST to 02:30 CET.
        let p = Part { from: utc("2026-10-25T00:30:00Z"), to: utc("2026-10-25T01:30:00Z"), kwh: 1.0 };
        let s = split(p, Berlin);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].from, utc("2026-10-25T01:00:00Z"));
        assert!((s[0].kwh - 0.5).abs() < 1e-12);
    }

    #[test]
    fn periods_in_local_dates() {
        let today = date("2026-01-07"); // a Wednesday
        assert_eq!(Period::Today.dates(today), (today, today));
        assert_eq!(Period::Yesterday.dates(today), (date("2026-01-06"), date("2026-01-06")));
        assert_eq!(Period::ThisWeek.dates(today), (date("2026-01-05"), today));
        assert_eq!(Period::ThisMonth.dates(today), (date("2026-01-01"), today));
        assert_eq!(Period::LastMonth.dates(today), (date("2025-12-01"), date("2025-12-31")));
        assert_eq!(Period::ThisYear.dates(today), (date("2026-01-01"), today));
        assert_eq!(oldest_needed(today), date("2025-12-01"));
        assert_eq!(Period::ThisWeek.dates(date("2026-01-04")), (date("2025-12-29"), date("2026-01-04")));
        assert_eq!(Period::LastMonth.dates(date("2026-03-31")), (date("2026-02-01"), date("2026-02-28")));
    }

    mod property {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// The slices of a part add up to the part and each lies within one local hour.
            #[test]
            fn slices_add_up(start in 1_700_000_000i64..1_900_000_000, len in 1i64..200_000, kwh in 0.0f64..100.0) {
                let p = Part { from: Utc.timestamp_opt(start, 0).unwrap(), to: Utc.timestamp_opt(start + len, 0).unwrap(), kwh };
                let s = split(p, Berlin);
                let sum: f64 = s.iter().map(|x| x.kwh).sum();
                prop_assert!((sum - kwh).abs() < 1e-9);
                for w in s.windows(2) {
                    prop_assert!(w[0].from < w[1].from);
                    prop_assert!(w[1].from.with_timezone(&Berlin).minute() == 0);
                }
            }
        }
    }
}
