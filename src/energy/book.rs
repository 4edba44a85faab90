//! The books of every meter: lifetime totals per energy counter, and the active energy and its
//! cost per local day, from which the periods are summed. Pure: readings and instants in,
//! totals out; the daemon saves [`Books`] and feeds readings.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::calendar::{self, Period};
use super::counter::{Counter, Event, Part};
use super::tariff::Tariff;
use crate::reading::{EnergyPeriod, EnergyPoint, EnergyTotal, PeriodKind, Phase, Quantity, Reading};

/// The longest time between two readings whose energy is still split over hours, days and
/// tariffs by time. Beyond it (the gateway was down, the meter silent) the energy still joins
/// the lifetime total, but no period gets it: the days it spans are marked partial.
pub const MAX_GAP: Duration = Duration::hours(1);

/// What is saved on disk: everything needed to go on after a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Books {
    #[serde(default)]
    pub meters: BTreeMap<String, MeterBooks>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterBooks {
    /// By counter name: `l1_energy`, `total_reactive_energy`.
    #[serde(default)]
    pub counters: BTreeMap<String, Counter>,
    /// Active energy and cost per local date.
    #[serde(default)]
    pub days: BTreeMap<NaiveDate, Day>,
}

/// One local day of one meter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Day {
    pub kwh: f64,
    /// Energy cost by tariff name (standing charges are added per period).
    #[serde(default)]
    pub cost: BTreeMap<String, f64>,
    /// Some of the day was not seen: pmtr started during it, or a gap longer than [`MAX_GAP`].
    #[serde(default)]
    pub partial: bool,
}

/// The name of a counter in the books and in `pmtr energy set`: `l1_energy`, `total_energy`.
pub fn counter_name(phase: Phase, quantity: Quantity) -> String {
    format!("{}_{}", phase.tag(), quantity.field())
}

/// Something worth a log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub meter: String,
    pub counter: String,
    pub event: Event,
    pub raw: f64,
    pub total: f64,
}

/// One meter's totals and periods, as the status API and `/metrics` show them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterEnergy {
    pub meter: String,
    /// Lifetime totals by counter name.
    pub totals: BTreeMap<String, f64>,
    pub periods: Vec<PeriodTotal>,
}

/// One period of one meter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeriodTotal {
    pub period: Period,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub kwh: f64,
    /// Some of it was not seen: the numbers are what was seen, never guessed.
    pub partial: bool,
    pub costs: Vec<Cost>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub tariff: String,
    pub currency: String,
    /// For the energy.
    pub energy: f64,
    /// Standing charges of the period's days so far.
    pub standing: f64,
    pub total: f64,
}

/// The books and what they need to keep them.
#[derive(Debug, Clone)]
pub struct Book {
    pub tz: Tz,
    pub tariffs: Vec<Tariff>,
    /// Known counter ranges per meter (where the counter wraps), kWh.
    pub ranges: BTreeMap<String, f64>,
    pub books: Books,
}

/// Why a total cannot be set by hand; the text goes to the user as is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SetTotalError {
    #[error("{0} is not a total (a number of kWh, 0 or more)")]
    NotATotal(f64),
    #[error("meter `{meter}` has no energy books yet")]
    NoBooks { meter: String },
    /// `counters` lists the meter's counters, comma-separated.
    #[error("meter `{meter}` has several energy counters: name one of {counters}")]
    WhichCounter { meter: String, counters: String },
    /// `known` lists the meter's counters, comma-separated.
    #[error("meter `{meter}` has no counter `{counter}` (it has {known})")]
    NoCounter { meter: String, counter: String, known: String },
}

impl Book {
    pub fn new(tz: Tz, tariffs: Vec<Tariff>, ranges: BTreeMap<String, f64>, books: Books) -> Book {
        Book { tz, tariffs, ranges, books }
    }

    /// Takes one reading. Returns the events worth a log line (everything but plain use).
    pub fn record(&mut self, reading: &Reading) -> Vec<Note> {
        let meter: &str = &reading.meter;
        let range = self.ranges.get(meter).copied();
        // The counter days and costs are counted from: active energy, or imported active
        // energy on a meter that counts only import and export apart (CHINT DTSU666, ABB).
        let feed = if reading.samples.iter().any(|s| s.quantity == Quantity::ActiveEnergy) {
            Quantity::ActiveEnergy
        } else {
            Quantity::ImportActiveEnergy
        };
        let has_total = reading.get(Phase::Total, feed).is_some();
        let tz = self.tz;
        let book = self.books.meters.entry(meter.to_string()).or_default();
        let mut notes = vec![];
        for s in reading.samples.iter().filter(|s| s.quantity.is_counter()) {
            let name = counter_name(s.phase, s.quantity);
            let feeds = s.quantity == feed && (s.phase == Phase::Total || !has_total);
            let (event, parts, span, total) = match book.counters.get_mut(&name) {
                None => {
                    let c = Counter::start(s.value, reading.time);
                    let total = c.total;
                    book.counters.insert(name.clone(), c);
                    (Event::Started, vec![], None, total)
                }
                Some(c) => {
                    let before = c.time;
                    let (event, parts) = c.update(s.value, reading.time, range);
                    let span = (c.time > before).then_some((before, c.time));
                    (event, parts, span, c.total)
                }
            };
            if feeds {
                if event == Event::Started {
                    book.days.entry(calendar::local_date(reading.time, tz)).or_default().partial = true;
                }
                if let Some((from, to)) = span {
                    add(book, &self.tariffs, meter, tz, from, to, &parts);
                }
            }
            if !matches!(event, Event::Counted | Event::Jitter | Event::Stale) {
                notes.push(Note { meter: meter.to_string(), counter: name, event, raw: s.value, total });
            }
        }
        let keep = calendar::oldest_needed(calendar::local_date(reading.time, tz));
        if book.days.first_key_value().is_some_and(|(d, _)| *d < keep) {
            book.days = book.days.split_off(&keep);
        }
        notes
    }

    /// Aligns a total with the utility meter's display. `counter` may be left out when the meter
    /// has one active energy counter. Returns the counter's name and its old total.
    pub fn set_total(
        &mut self,
        meter: &str,
        counter: Option<&str>,
        value: f64,
    ) -> Result<(String, f64), SetTotalError> {
        if !value.is_finite() || value < 0.0 {
            return Err(SetTotalError::NotATotal(value));
        }
        let book = self
            .books
            .meters
            .get_mut(meter)
            .ok_or_else(|| SetTotalError::NoBooks { meter: meter.to_owned() })?;
        let name = match counter {
            Some(c) => c.to_string(),
            None => {
                let active: Vec<&String> = book.counters.keys().filter(|k| k.ends_with("_energy")).collect();
                let total = counter_name(Phase::Total, Quantity::ActiveEnergy);
                match active.as_slice() {
                    [one] => one.to_string(),
                    _ if active.contains(&&total) => total,
                    _ => {
                        return Err(SetTotalError::WhichCounter {
                            meter: meter.to_owned(),
                            counters: book.counters.keys().cloned().collect::<Vec<_>>().join(", "),
                        })
                    }
                }
            }
        };
        let known = book.counters.keys().cloned().collect::<Vec<_>>().join(", ");
        let c = book.counters.get_mut(&name).ok_or_else(|| SetTotalError::NoCounter {
            meter: meter.to_owned(),
            counter: name.clone(),
            known,
        })?;
        let old = c.total;
        c.set_total(value);
        Ok((name, old))
    }

    /// The lifetime totals: meter, counter name, total.
    pub fn totals(&self) -> impl Iterator<Item = (&str, &str, f64)> + '_ {
        self.books
            .meters
            .iter()
            .flat_map(|(m, b)| b.counters.iter().map(move |(n, c)| (m.as_str(), n.as_str(), c.total)))
    }

    /// Every meter's totals and periods at `now`.
    pub fn views(&self, now: DateTime<Utc>) -> Vec<MeterEnergy> {
        self.books
            .meters
            .iter()
            .map(|(m, b)| MeterEnergy {
                meter: m.clone(),
                totals: b.counters.iter().map(|(n, c)| (n.clone(), c.total)).collect(),
                periods: self.periods(m, now),
            })
            .collect()
    }

    /// What storage gets of the books at `now`: every lifetime total, and per meter its
    /// `today` and `this_month` so far; with `closing` (the first write of a new local day, or
    /// of a run) also `yesterday` and `last_month`, their last word after a midnight. A
    /// period's point is stamped with its start (local midnight), so each write replaces the
    /// previous one. A period with no day in the books gets no point.
    pub fn points(&self, now: DateTime<Utc>, closing: bool) -> Vec<EnergyPoint> {
        let mut out: Vec<EnergyPoint> = self
            .totals()
            .map(|(meter, counter, kwh)| {
                EnergyPoint::Total(EnergyTotal {
                    time: now,
                    meter: meter.into(),
                    counter: counter.into(),
                    kwh,
                })
            })
            .collect();
        for (meter, book) in &self.books.meters {
            for p in self.periods(meter, now) {
                // A period the books saw nothing of gets no point (no zeros for the days before
                // a meter was first read).
                if book.days.range(p.from..=p.to).next().is_none() {
                    continue;
                }
                let kind = match p.period {
                    Period::Today => PeriodKind::Day,
                    Period::ThisMonth => PeriodKind::Month,
                    Period::Yesterday if closing => PeriodKind::Day,
                    Period::LastMonth if closing => PeriodKind::Month,
                    _ => continue,
                };
                out.push(EnergyPoint::Period(EnergyPeriod {
                    time: now,
                    start: calendar::day_start(p.from, self.tz),
                    date: p.from,
                    meter: meter.as_str().into(),
                    period: kind,
                    kwh: p.kwh,
                    partial: p.partial,
                    costs: p.costs.iter().map(|c| (c.tariff.as_str().into(), c.total)).collect(),
                }));
            }
        }
        out
    }

    /// Today's active energy of `meter` at `now`, and its cost under the first tariff that
    /// applies to it (standing charge included), None without one.
    pub fn today(&self, meter: &str, now: DateTime<Utc>) -> (f64, Option<f64>) {
        let day = self.books.meters.get(meter).and_then(|b| b.days.get(&calendar::local_date(now, self.tz)));
        let kwh = day.map_or(0.0, |d| d.kwh);
        let cost = self
            .tariffs
            .iter()
            .find(|t| t.applies_to(meter))
            .map(|t| t.standing_charge + day.and_then(|d| d.cost.get(&t.name)).copied().unwrap_or(0.0));
        (kwh, cost)
    }

    /// The periods of one meter as they stand at `now`.
    pub fn periods(&self, meter: &str, now: DateTime<Utc>) -> Vec<PeriodTotal> {
        let today = calendar::local_date(now, self.tz);
        let empty = MeterBooks::default();
        let book = self.books.meters.get(meter).unwrap_or(&empty);
        let tariffs: Vec<&Tariff> = self.tariffs.iter().filter(|t| t.applies_to(meter)).collect();
        // The newest instant the books have seen this meter up to.
        let seen_to = book.counters.values().map(|c| c.time).max();
        Period::ALL
            .iter()
            .map(|&period| {
                let (from, to) = period.dates(today);
                let mut kwh = 0.0;
                let mut partial = false;
                let mut energy = vec![0.0; tariffs.len()];
                let mut day = from;
                let mut days = 0u32;
                while day <= to {
                    days += 1;
                    match book.days.get(&day) {
                        Some(d) => {
                            kwh += d.kwh;
                            partial |= d.partial;
                            for (e, t) in energy.iter_mut().zip(&tariffs) {
                                *e += d.cost.get(&t.name).copied().unwrap_or(0.0);
                            }
                        }
                        // Not seen at all, unless it is today and the last reading (just before
                        // midnight) is recent: the next one will open it.
                        None => {
                            let fresh = day == today
                                && seen_to.is_some_and(|s| {
                                    now - s <= MAX_GAP && calendar::local_date(s, self.tz) < day
                                });
                            partial |= !fresh;
                        }
                    }
                    let Some(next) = day.succ_opt() else { break };
                    day = next;
                }
                let costs = tariffs
                    .iter()
                    .zip(energy)
                    .map(|(t, energy)| {
                        let standing = t.standing_charge * f64::from(days);
                        Cost {
                            tariff: t.name.clone(),
                            currency: t.currency.clone(),
                            energy,
                            standing,
                            total: energy + standing,
                        }
                    })
                    .collect();
                PeriodTotal { period, from, to, kwh, partial, costs }
            })
            .collect()
    }
}

/// Books the energy `parts` a counter counted over `from..to` (its base moved that far).
fn add(
    book: &mut MeterBooks,
    tariffs: &[Tariff],
    meter: &str,
    tz: Tz,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    parts: &[Part],
) {
    let (first, last) = (calendar::local_date(from, tz), calendar::local_date(to, tz));
    let gap = to - from > MAX_GAP;
    let mut day = first;
    while day <= last {
        let d = book.days.entry(day).or_default();
        d.partial |= gap;
        let Some(next) = day.succ_opt() else { break };
        day = next;
    }
    if gap {
        return;
    }
    for part in parts {
        for slice in calendar::split(*part, tz) {
            let d = book.days.entry(calendar::local_date(slice.from, tz)).or_default();
            d.kwh += slice.kwh;
            for t in tariffs.iter().filter(|t| t.applies_to(meter)) {
                *d.cost.entry(t.name.clone()).or_default() += slice.kwh * t.price_at(slice.from, tz);
            }
        }
    }
}

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
