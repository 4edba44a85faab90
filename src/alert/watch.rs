//! Watches that turn storage events and the meters' state events into alerts, on transitions
//! only. Pure: times are monotonic `Duration`s passed in, wall times only label the alerts.

use super::policy::{Alert, AlertKind};
use crate::store::StoreEvent;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

fn alert(
    kind: AlertKind,
    time: DateTime<Utc>,
    subject: &str,
    summary: String,
    details: Vec<(&str, String)>,
) -> Alert {
    Alert {
        kind,
        time,
        subject: subject.to_owned(),
        summary,
        details: details.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

#[derive(Debug, Default)]
struct SinkWatch {
    down_since: Option<(Duration, DateTime<Utc>, String)>,
    alerted: bool,
    filling: bool,
}

/// The sinks: a database unreachable for longer than `after`, and back; a spool past its mark;
/// readings dropped by a full spool.
#[derive(Debug)]
pub struct StorageWatch {
    after: Duration,
    mark_percent: u8,
    sinks: HashMap<String, SinkWatch>,
}

impl StorageWatch {
    pub fn new(after: Duration, mark_percent: u8) -> Self {
        StorageWatch { after, mark_percent, sinks: HashMap::new() }
    }

    /// An event of storage at `now`.
    pub fn event(&mut self, e: &StoreEvent, now: Duration, wall: DateTime<Utc>) -> Vec<Alert> {
        match e {
            StoreEvent::Down { sink, error } | StoreEvent::Refused { sink, error } => {
                let w = self.sinks.entry(sink.clone()).or_default();
                if w.down_since.is_none() {
                    w.down_since = Some((now, wall, error.clone()));
                }
                Vec::new()
            }
            StoreEvent::Back { sink, spooled } => {
                let w = self.sinks.entry(sink.clone()).or_default();
                let since = w.down_since.take();
                if !std::mem::take(&mut w.alerted) {
                    return Vec::new();
                }
                let mut details = vec![("readings to replay", spooled.to_string())];
                if let Some((_, since, _)) = since {
                    details.push(("down since", since.to_rfc3339()));
                }
                vec![alert(
                    AlertKind::DatabaseBack,
                    wall,
                    sink,
                    format!("sink {sink}: the database is back"),
                    details,
                )]
            }
            StoreEvent::Dropped { sink, readings } => vec![alert(
                AlertKind::SpoolDropped,
                wall,
                sink,
                format!("sink {sink}: the spool was full, {readings} readings dropped"),
                vec![("what to do", "bring the database back, or raise `spool_max`".into())],
            )],
            StoreEvent::SpoolError { sink, error } => vec![alert(
                AlertKind::SpoolDropped,
                wall,
                sink,
                format!("sink {sink}: the spool failed, readings may be lost"),
                vec![("error", error.clone())],
            )],
            StoreEvent::Rejected { .. } | StoreEvent::Spool { .. } => Vec::new(),
        }
    }

    /// Once in a while: databases down for longer than `after`, and spool fill levels
    /// (`(sink, bytes, max)`).
    pub fn tick<'a>(
        &mut self,
        now: Duration,
        wall: DateTime<Utc>,
        spools: impl IntoIterator<Item = (&'a str, u64, u64)>,
    ) -> Vec<Alert> {
        let mut out = Vec::new();
        let mut names: Vec<&String> = self.sinks.keys().collect();
        names.sort();
        let names: Vec<String> = names.into_iter().cloned().collect();
        for sink in names {
            let w = self.sinks.get_mut(&sink).expect("listed");
            if let Some((since, since_wall, error)) = &w.down_since {
                if !w.alerted && now.saturating_sub(*since) >= self.after {
                    w.alerted = true;
                    out.push(alert(
                        AlertKind::DatabaseDown,
                        wall,
                        &sink,
                        format!("sink {sink}: the database has been unreachable for {:?}", self.after),
                        vec![
                            ("since", since_wall.to_rfc3339()),
                            ("error", error.clone()),
                            ("readings", "kept in the spool".into()),
                        ],
                    ));
                }
            }
        }
        for (sink, bytes, max) in spools {
            let w = self.sinks.entry(sink.to_owned()).or_default();
            let percent = bytes.saturating_mul(100).checked_div(max).unwrap_or(0);
            if !w.filling && percent >= u64::from(self.mark_percent) {
                w.filling = true;
                out.push(alert(
                    AlertKind::SpoolFilling,
                    wall,
                    sink,
                    format!("sink {sink}: the spool is {percent}% full"),
                    vec![
                        ("size", format!("{bytes} of {max} bytes")),
                        ("when full", "the oldest readings go".into()),
                    ],
                ));
            } else if w.filling && percent + 10 < u64::from(self.mark_percent) {
                w.filling = false;
            }
        }
        out
    }
}

#[derive(Debug, Default)]
struct MeterWatchState {
    /// Since when the meter has not answered (not ok: failing or searching).
    down_since: Option<Duration>,
    last_error: Option<String>,
    silent: bool,
}

/// The meters: not answering for longer than `after`, and back. Told each change of a meter's
/// state as it happens ([`MeterWatch::event`]); asked the time now and then
/// ([`MeterWatch::tick`]).
#[derive(Debug)]
pub struct MeterWatch {
    after: Duration,
    meters: BTreeMap<String, MeterWatchState>,
}

impl MeterWatch {
    pub fn new(after: Duration) -> Self {
        MeterWatch { after, meters: BTreeMap::new() }
    }

    /// Meter `name` is answering (`ok`) or not since `now`, its last error `error`: a meter
    /// that was silent and answers again is an alert.
    pub fn event(
        &mut self,
        name: &str,
        ok: bool,
        error: Option<&str>,
        now: Duration,
        wall: DateTime<Utc>,
    ) -> Vec<Alert> {
        let w = self.meters.entry(name.to_owned()).or_default();
        if ok {
            w.down_since = None;
            if std::mem::take(&mut w.silent) {
                return vec![alert(
                    AlertKind::MeterBack,
                    wall,
                    name,
                    format!("meter {name} answers again"),
                    Vec::new(),
                )];
            }
        } else {
            w.down_since.get_or_insert(now);
            w.last_error = error.map(str::to_owned);
        }
        Vec::new()
    }

    /// The meters not answering for `after` by `now` (each once, until it answers again).
    pub fn tick(&mut self, now: Duration, wall: DateTime<Utc>) -> Vec<Alert> {
        let mut out = Vec::new();
        for (name, w) in &mut self.meters {
            let Some(since) = w.down_since else { continue };
            if !w.silent && now.saturating_sub(since) >= self.after {
                w.silent = true;
                let mut details = vec![("silent for", format!("{:?}", self.after))];
                if let Some(e) = &w.last_error {
                    details.push(("last error", e.clone()));
                }
                out.push(alert(
                    AlertKind::MeterSilent,
                    wall,
                    name,
                    format!("meter {name} has not answered for {:?}", self.after),
                    details,
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    fn kinds(a: &[Alert]) -> Vec<AlertKind> {
        a.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn a_short_outage_is_no_alert_a_long_one_is_and_its_end_too() {
        let wall = Utc::now();
        let mut w = StorageWatch::new(s(300), 80);
        let down = StoreEvent::Down { sink: "influx".into(), error: "connection refused".into() };
        let back = StoreEvent::Back { sink: "influx".into(), spooled: 12 };
        assert!(w.event(&down, s(0), wall).is_empty());
        assert!(w.tick(s(299), wall, []).is_empty());
        assert!(w.event(&back, s(299), wall).is_empty(), "back within 5 min: nothing to say");
        w.event(&down, s(400), wall);
        w.event(&down, s(500), wall);
        assert_eq!(kinds(&w.tick(s(700), wall, [])), [AlertKind::DatabaseDown]);
        assert!(w.tick(s(800), wall, []).is_empty(), "once");
        let a = w.event(&back, s(900), wall);
        assert_eq!(kinds(&a), [AlertKind::DatabaseBack]);
        assert_eq!(a[0].details[0], ("readings to replay".to_owned(), "12".to_owned()));
    }

    #[test]
    fn the_spool_mark_alerts_once_until_it_drains() {
        let wall = Utc::now();
        let mut w = StorageWatch::new(s(300), 80);
        assert!(w.tick(s(0), wall, [("influx", 79, 100)]).is_empty());
        assert_eq!(kinds(&w.tick(s(1), wall, [("influx", 80, 100)])), [AlertKind::SpoolFilling]);
        assert!(w.tick(s(2), wall, [("influx", 95, 100)]).is_empty());
        assert!(w.tick(s(3), wall, [("influx", 75, 100)]).is_empty(), "not yet rearmed");
        assert!(w.tick(s(4), wall, [("influx", 60, 100)]).is_empty());
        assert_eq!(kinds(&w.tick(s(5), wall, [("influx", 85, 100)])), [AlertKind::SpoolFilling]);
        let dropped = StoreEvent::Dropped { sink: "influx".into(), readings: 500 };
        assert_eq!(kinds(&w.event(&dropped, s(6), wall)), [AlertKind::SpoolDropped]);
    }

    #[test]
    fn a_meter_silent_for_longer_than_after_and_back() {
        let wall = Utc::now();
        let mut w = MeterWatch::new(s(60));
        assert!(w.event("main", false, None, s(0), wall).is_empty());
        assert!(w.event("main", true, None, s(10), wall).is_empty());
        assert!(w.tick(s(30), wall).is_empty());
        assert!(w.event("main", false, Some("crc"), s(30), wall).is_empty());
        assert!(w.event("main", false, Some("timeout"), s(40), wall).is_empty());
        assert!(w.tick(s(89), wall).is_empty());
        let a = w.tick(s(90), wall);
        assert_eq!(kinds(&a), [AlertKind::MeterSilent]);
        assert_eq!(a[0].details[1], ("last error".to_owned(), "timeout".to_owned()));
        assert!(w.tick(s(200), wall).is_empty(), "once");
        assert_eq!(kinds(&w.event("main", true, None, s(201), wall)), [AlertKind::MeterBack]);
        assert!(w.event("main", true, None, s(202), wall).is_empty(), "once");
        // A meter never found is silent after `after` from the start.
        assert_eq!(kinds(&w.event("gen", false, None, s(300), wall)), []);
        assert_eq!(kinds(&w.tick(s(359), wall)), []);
        assert_eq!(kinds(&w.tick(s(360), wall)), [AlertKind::MeterSilent]);
    }
}
