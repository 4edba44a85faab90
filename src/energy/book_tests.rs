//! The books on scripted readings, with exact answers.

use super::*;
use crate::energy::counter::PMTR_SRV_RANGE_KWH;
use crate::energy::tariff::Rate;
use crate::meter::Model;
use crate::reading::{Quality, Sample};
use chrono_tz::Europe::Berlin;

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn reading(meter: &str, t: DateTime<Utc>, kwh: f64) -> Reading {
    Reading {
        meter: meter.into(),
        model: Model::Pzem016,
        time: t,
        samples: vec![Sample::new(Phase::L1, Quantity::ActiveEnergy, kwh)],
        quality: Quality::default(),
    }
}

fn night_and_day() -> Tariff {
    Tariff {
        name: "home".into(),
        currency: "EUR".into(),
        price: 0.30,
        standing_charge: 0.5,
        meters: vec![],
        rates: vec![Rate { days: [true; 7], from: 22, to: 6, price: 0.20 }],
    }
}

fn book() -> Book {
    Book::new(Berlin, vec![night_and_day()], BTreeMap::new(), Books::default())
}

fn period(b: &Book, meter: &str, now: DateTime<Utc>, p: Period) -> PeriodTotal {
    b.periods(meter, now).into_iter().find(|x| x.period == p).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Feeds `meter` a steady `kw` from `from` to `to` every `step` seconds, starting at `start` kWh;
/// returns the counter's last value.
fn steady(
    b: &mut Book,
    meter: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step: i64,
    start: f64,
    kw: f64,
) -> f64 {
    let mut t = from;
    let mut kwh = start;
    loop {
        b.record(&reading(meter, t, kwh));
        if t >= to {
            return kwh;
        }
        t += Duration::seconds(step);
        kwh += kw * step as f64 / 3600.0;
    }
}

#[test]
fn the_first_day_is_partial_and_a_whole_day_is_not() {
    let mut b = book();
    // Berlin summer: local midnight is 22:00 UTC.
    steady(&mut b, "main", utc("2026-07-01T10:00:00Z"), utc("2026-07-02T22:00:00Z"), 600, 100.0, 1.0);
    let now = utc("2026-07-02T22:00:00Z"); // 00:00 on 07-03 local
    let y = period(&b, "main", now, Period::Yesterday);
    assert_eq!((y.from, y.partial), (date("2026-07-02"), false));
    assert!(close(y.kwh, 24.0), "{}", y.kwh);
    let d = &b.books.meters["main"].days;
    assert!(d[&date("2026-07-01")].partial);
    // 12:00 to midnight local.
    assert!(close(d[&date("2026-07-01")].kwh, 12.0), "{}", d[&date("2026-07-01")].kwh);
    // This month started on the first day pmtr saw, mid-day: partial.
    assert!(period(&b, "main", now, Period::ThisMonth).partial);
}

#[test]
fn midnight_splits_a_reading_interval_by_time() {
    let mut b = book();
    b.record(&reading("main", utc("2026-07-01T21:50:00Z"), 10.0)); // 23:50 local
    b.record(&reading("main", utc("2026-07-01T22:10:00Z"), 12.0)); // 00:10 local
    let d = &b.books.meters["main"].days;
    assert!(close(d[&date("2026-07-01")].kwh, 1.0));
    assert!(close(d[&date("2026-07-02")].kwh, 1.0));
    assert!(!d[&date("2026-07-02")].partial);
    // Both halves at the night price.
    assert!(close(d[&date("2026-07-02")].cost["home"], 0.2));
}

#[test]
fn a_month_boundary_splits_into_last_month_and_this_month() {
    let mut b = book();
    // 2026-01-31 23:55 local (CET, UTC+1) to 2026-02-01 00:05 local.
    b.record(&reading("main", utc("2026-01-31T22:55:00Z"), 500.0));
    b.record(&reading("main", utc("2026-01-31T23:05:00Z"), 500.6));
    let now = utc("2026-01-31T23:05:00Z");
    let this = period(&b, "main", now, Period::ThisMonth);
    let last = period(&b, "main", now, Period::LastMonth);
    assert_eq!((this.from, last.from, last.to), (date("2026-02-01"), date("2026-01-01"), date("2026-01-31")));
    assert!(close(this.kwh, 0.3) && close(last.kwh, 0.3));
    assert!(!this.partial && last.partial);
    // One day of standing charge this month, 31 last month.
    assert!(close(this.costs[0].standing, 0.5) && close(last.costs[0].standing, 15.5));
    assert!(close(this.costs[0].energy, 0.06));
}

#[test]
fn the_spring_day_has_23_hours_and_the_autumn_day_25() {
    for (day, start, end, hours) in [
        ("2026-03-29", "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z", 23.0),
        ("2026-10-25", "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z", 25.0),
    ] {
        let mut b = book();
        // From an hour before the day to an hour after it, 1 kW, every 5 minutes.
        steady(&mut b, "main", utc(start) - Duration::hours(1), utc(end) + Duration::hours(1), 300, 0.0, 1.0);
        let d = &b.books.meters["main"].days[&date(day)];
        assert!(close(d.kwh, hours), "{day}: {}", d.kwh);
        assert!(!d.partial);
        // Night rate 22-6 local: 8 hours minus one in spring (02:00 does not exist), plus one
        // in autumn (02:00 twice).
        let night = if hours == 23.0 { 7.0 } else { 9.0 };
        assert!(close(d.cost["home"], night * 0.2 + (hours - night) * 0.3), "{day}: {}", d.cost["home"]);
    }
}

#[test]
fn a_tariff_boundary_between_two_readings_is_split_by_time() {
    let mut b = book();
    b.record(&reading("main", utc("2026-07-01T19:50:00Z"), 10.0)); // 21:50 local
    b.record(&reading("main", utc("2026-07-01T20:10:00Z"), 11.0)); // 22:10 local
    let d = &b.books.meters["main"].days[&date("2026-07-01")];
    assert!(close(d.cost["home"], 0.5 * 0.30 + 0.5 * 0.20));
}

#[test]
fn a_reset_mid_day_keeps_today_and_the_total() {
    let mut b = book();
    b.record(&reading("main", utc("2026-07-01T22:00:00Z"), 1000.0)); // local midnight
    b.record(&reading("main", utc("2026-07-02T08:00:00Z"), 1002.0)); // gap: partial
    let mut b = book();
    let last =
        steady(&mut b, "main", utc("2026-07-01T22:00:00Z"), utc("2026-07-02T08:00:00Z"), 60, 1000.0, 0.6);
    assert!(close(last, 1006.0));
    // Reset by hand: 0, then counting up again.
    let after =
        steady(&mut b, "main", utc("2026-07-02T08:01:00Z"), utc("2026-07-02T12:01:00Z"), 60, 0.01, 0.6);
    let total = b.totals().find(|(m, _, _)| *m == "main").unwrap().2;
    assert!(close(total, 1006.0 + after), "{total}");
    let today = period(&b, "main", utc("2026-07-02T12:01:00Z"), Period::Today);
    assert!(close(today.kwh, 6.0 + after), "{}", today.kwh);
    assert!(close(after, 0.01 + 2.4));
}

#[test]
fn the_pmtr_server_rollover_continues() {
    let mut b = book();
    b.ranges.insert("srv".into(), PMTR_SRV_RANGE_KWH);
    b.record(&reading("srv", utc("2026-07-01T10:00:00Z"), 6553.0));
    b.record(&reading("srv", utc("2026-07-01T10:05:00Z"), 6553.5));
    b.record(&reading("srv", utc("2026-07-01T10:10:00Z"), 0.2));
    let total = b.totals().next().unwrap().2;
    assert!(close(total, 6553.8), "{total}");
    assert!(close(b.books.meters["srv"].days[&date("2026-07-01")].kwh, 0.8));
}

#[test]
fn a_replaced_meter_continues_from_the_total_and_is_noted() {
    let mut b = book();
    b.record(&reading("main", utc("2026-07-01T10:00:00Z"), 4321.0));
    let notes = b.record(&reading("main", utc("2026-07-01T10:05:00Z"), 12.0));
    assert!(matches!(notes[0].event, Event::Held(_)));
    let notes = b.record(&reading("main", utc("2026-07-01T10:10:00Z"), 12.5));
    assert!(matches!(notes[0].event, Event::Confirmed(_)));
    assert!(close(notes[0].total, 4321.5));
    assert!(close(b.books.meters["main"].days[&date("2026-07-01")].kwh, 0.5));
}

#[test]
fn a_gap_marks_the_days_partial_and_guesses_nothing() {
    let mut b = book();
    b.record(&reading("main", utc("2026-07-01T10:00:00Z"), 10.0));
    b.record(&reading("main", utc("2026-07-03T10:00:00Z"), 58.0));
    let total = b.totals().next().unwrap().2;
    assert!(close(total, 58.0));
    let days = &b.books.meters["main"].days;
    for d in ["2026-07-01", "2026-07-02", "2026-07-03"] {
        assert!(days[&date(d)].partial && days[&date(d)].kwh == 0.0, "{d}");
    }
    b.record(&reading("main", utc("2026-07-03T10:10:00Z"), 58.5));
    let today = period(&b, "main", utc("2026-07-03T10:10:00Z"), Period::Today);
    assert!(today.partial && close(today.kwh, 0.5));
}

#[test]
fn a_restart_mid_day_from_the_saved_books_counts_like_no_restart() {
    let (from, mid, to) =
        (utc("2026-07-01T21:00:00Z"), utc("2026-07-02T09:00:00Z"), utc("2026-07-02T18:00:00Z"));
    let mut straight = book();
    steady(&mut straight, "main", from, to, 300, 50.0, 1.5);
    let mut first = book();
    let at_stop = steady(&mut first, "main", from, mid, 300, 50.0, 1.5);
    let json = serde_json::to_string(&first.books).unwrap();
    let mut second =
        Book::new(Berlin, vec![night_and_day()], BTreeMap::new(), serde_json::from_str(&json).unwrap());
    // The restart took four minutes: the next reading is the one that was due.
    steady(&mut second, "main", mid + Duration::seconds(300), to, 300, at_stop + 1.5 * 300.0 / 3600.0, 1.5);
    let (a, b) = (straight.periods("main", to), second.periods("main", to));
    assert!(close(a[0].kwh, b[0].kwh) && close(a[0].kwh, 30.0), "{} {}", a[0].kwh, b[0].kwh);
    assert!(close(a[0].costs[0].total, b[0].costs[0].total));
    assert!(!b[0].partial);
}

#[test]
fn today_is_not_partial_just_after_midnight_before_the_next_reading() {
    let mut b = book();
    steady(&mut b, "main", utc("2026-07-01T21:00:00Z"), utc("2026-07-01T21:59:50Z"), 10, 1.0, 1.0);
    assert!(!period(&b, "main", utc("2026-07-01T22:00:05Z"), Period::Today).partial);
    assert!(period(&b, "main", utc("2026-07-01T23:00:00Z"), Period::Today).partial);
}

#[test]
fn a_three_phase_meter_with_a_total_books_the_total_only() {
    let mut b = book();
    let r = |t: &str, e: f64| Reading {
        meter: "rx".into(),
        model: Model::Rx380,
        time: utc(t),
        samples: vec![
            Sample::new(Phase::Total, Quantity::ActiveEnergy, e),
            Sample::new(Phase::Total, Quantity::ReactiveEnergy, e / 2.0),
        ],
        quality: Quality::default(),
    };
    b.record(&r("2026-07-01T10:00:00Z", 100.0));
    b.record(&r("2026-07-01T10:05:00Z", 101.0));
    assert!(close(b.books.meters["rx"].days[&date("2026-07-01")].kwh, 1.0));
    let totals: Vec<_> = b.totals().map(|(_, n, t)| (n.to_string(), t)).collect();
    assert_eq!(totals, vec![("total_energy".into(), 101.0), ("total_reactive_energy".into(), 50.5)]);
}

/// A meter that counts imported and exported energy apart, and no active energy (a CHINT
/// DTSU666, an ABB B23): days and costs come from the imported energy, the total one first;
/// export is kept as a counter and costs nothing.
#[test]
fn a_meter_without_active_energy_books_its_imported_energy() {
    let mut b = book();
    let model = crate::meter::definition::resolve("dtsu666");
    let r = |t: &str, import: f64, export: f64| Reading {
        meter: "feed".into(),
        model,
        time: utc(t),
        samples: vec![
            Sample::new(Phase::L1, Quantity::ImportActiveEnergy, import / 3.0),
            Sample::new(Phase::Total, Quantity::ImportActiveEnergy, import),
            Sample::new(Phase::Total, Quantity::ExportActiveEnergy, export),
        ],
        quality: Quality::default(),
    };
    b.record(&r("2026-07-01T10:00:00Z", 300.0, 50.0));
    b.record(&r("2026-07-01T10:05:00Z", 303.0, 57.0));
    let day = &b.books.meters["feed"].days[&date("2026-07-01")];
    assert!(close(day.kwh, 3.0), "{day:?}");
}

#[test]
fn set_total_aligns_and_names_the_counter() {
    let mut b = book();
    b.record(&reading("main", utc("2026-07-01T10:00:00Z"), 10.0));
    assert_eq!(b.set_total("main", None, 12345.6), Ok(("l1_energy".into(), 10.0)));
    b.record(&reading("main", utc("2026-07-01T10:05:00Z"), 10.5));
    assert!(close(b.totals().next().unwrap().2, 12346.1));
    assert!(b.set_total("main", Some("l2_energy"), 1.0).unwrap_err().to_string().contains("l1_energy"));
    assert!(b.set_total("nope", None, 1.0).is_err());
    assert!(b.set_total("main", None, -1.0).is_err());
}

#[test]
fn old_days_are_forgotten() {
    let mut b = book();
    b.record(&reading("main", utc("2025-11-10T10:00:00Z"), 1.0));
    b.record(&reading("main", utc("2026-01-05T10:00:00Z"), 2.0));
    let days = &b.books.meters["main"].days;
    assert_eq!(days.keys().next(), Some(&date("2025-12-01")));
}

#[test]
fn a_tariff_for_other_meters_costs_nothing_here() {
    let mut t = night_and_day();
    t.meters = vec!["garage".into()];
    let mut b = Book::new(Berlin, vec![t], BTreeMap::new(), Books::default());
    b.record(&reading("main", utc("2026-07-01T10:00:00Z"), 1.0));
    b.record(&reading("main", utc("2026-07-01T10:05:00Z"), 2.0));
    assert!(b.periods("main", utc("2026-07-01T10:05:00Z"))[0].costs.is_empty());
}

/// Storage gets the totals and, per meter, the local day and month so far stamped at their
/// local midnight; closing adds yesterday and last month.
#[test]
fn points_for_storage_are_the_totals_and_the_day_and_month_at_their_start() {
    let mut b = book();
    b.record(&reading("main", utc("2026-06-30T21:50:00Z"), 10.0)); // 23:50 in Berlin
    b.record(&reading("main", utc("2026-06-30T22:10:00Z"), 11.0)); // 00:10 on July 1st
    let now = utc("2026-06-30T22:10:00Z");
    let points = b.points(now, false);
    let EnergyPoint::Total(t) = &points[0] else { panic!("{points:?}") };
    assert_eq!((&*t.meter, &*t.counter, t.kwh, t.time), ("main", "l1_energy", 11.0, now));
    let periods: Vec<&EnergyPeriod> = points
        .iter()
        .filter_map(|p| match p {
            EnergyPoint::Period(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(periods.len(), 2);
    let (day, month) = (periods[0], periods[1]);
    assert_eq!(
        (day.period, day.date, day.start),
        (PeriodKind::Day, date("2026-07-01"), utc("2026-06-30T22:00:00Z"))
    );
    assert_eq!((month.period, month.date, month.start), (PeriodKind::Month, date("2026-07-01"), day.start));
    assert!(close(day.kwh, 0.5) && close(month.kwh, 0.5));
    // 0.5 kWh at the night price and the day's standing charge.
    assert_eq!(&*day.costs[0].0, "home");
    assert!(close(day.costs[0].1, 0.5 * 0.20 + 0.5));
    let closing = b.points(now, true);
    let yesterday = closing
        .iter()
        .find_map(|p| match p {
            EnergyPoint::Period(p) if p.date == date("2026-06-30") && p.period == PeriodKind::Day => Some(p),
            _ => None,
        })
        .expect("yesterday on closing");
    assert!(close(yesterday.kwh, 0.5) && yesterday.partial, "seen from 23:50 only");
    assert_eq!(closing.len(), 5, "a total, today, this month, yesterday, last month");
}

mod property {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// With readings close enough together, the days add up to what the total grew by.
        #[test]
        fn days_add_up_to_the_total(steps in proptest::collection::vec((1i64..900, 0.0f64..0.2), 1..200)) {
            let mut b = book();
            let mut t = utc("2026-10-24T20:00:00Z");
            let mut kwh = 100.0;
            b.record(&reading("m", t, kwh));
            for (dt, used) in steps {
                t += Duration::seconds(dt);
                kwh += used;
                b.record(&reading("m", t, kwh));
            }
            let days: f64 = b.books.meters["m"].days.values().map(|d| d.kwh).sum();
            let total = b.totals().next().unwrap().2;
            prop_assert!((days - (total - 100.0)).abs() < 1e-6);
            prop_assert!((total - kwh).abs() < 1e-6);
        }
    }
}
