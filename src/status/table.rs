//! The daemon's relays and triggers as text tables (`pmtr relay list`, `pmtr trigger list`,
//! `pmtr status`).

use crate::control::{Forced, RelayStatus, TriggerStatus};
use chrono::{DateTime, TimeZone, Utc};
use std::fmt::Write as _;

fn time<Tz: TimeZone>(t: &DateTime<Utc>, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    t.with_timezone(tz).format("%Y-%m-%d %H:%M:%S").to_string()
}

fn forced<Tz: TimeZone>(f: &Forced, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let until = match &f.until {
        Some(t) => format!("until {}", time(t, tz)),
        None => "until released".to_string(),
    };
    format!("{} {until} by {}", f.level, f.by)
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// Columns padded to their widest cell, two spaces apart; the last one is not padded.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `pmtr relay list`: name, pin, level, default, forced (level, until, by), tripped by.
pub fn relay_table<Tz: TimeZone>(relays: &[RelayStatus], tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    if relays.is_empty() {
        return "no relays configured\n".to_string();
    }
    let rows = relays
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                if r.active_low { format!("{} (active low)", r.pin) } else { r.pin.to_string() },
                r.level.to_string(),
                r.default.to_string(),
                r.forced.as_ref().map_or_else(|| "-".to_string(), |f| forced(f, tz)),
                or_dash(r.tripped_by.join(", ")),
            ]
        })
        .collect();
    table(&["RELAY", "GPIO", "LEVEL", "DEFAULT", "FORCED", "TRIPPED BY"], rows)
}

/// `pmtr trigger list`: name, state, since, stale, dry run, values.
pub fn trigger_table<Tz: TimeZone>(triggers: &[TriggerStatus], tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    if triggers.is_empty() {
        return "no triggers configured\n".to_string();
    }
    let rows = triggers
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.state.clone(),
                t.since.as_ref().map_or_else(|| "-".to_string(), |s| time(s, tz)),
                yes_no(t.stale),
                yes_no(t.dry_run),
                or_dash(t.values.clone()),
            ]
        })
        .collect();
    table(&["TRIGGER", "STATE", "SINCE", "STALE", "DRY RUN", "VALUES"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::Level;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn relays_as_a_table() {
        let relays = vec![
            RelayStatus {
                name: "pump".into(),
                pin: 17,
                active_low: false,
                level: Level::On,
                default: Level::Off,
                forced: Some(Forced {
                    level: Level::On,
                    until: Some(t("2026-11-21T14:05:00Z")),
                    by: "uid 1000 pid 4242".into(),
                }),
                tripped_by: vec![],
            },
            RelayStatus {
                name: "heater".into(),
                pin: 27,
                active_low: true,
                level: Level::Off,
                default: Level::Off,
                forced: None,
                tripped_by: vec!["overvolt".into(), "night".into()],
            },
        ];
        let shown = relay_table(&relays, &Utc);
        assert_eq!(
            shown,
            "RELAY   GPIO             LEVEL  DEFAULT  FORCED                                             TRIPPED BY\n\
             pump    17               on     off      on until 2026-11-21 14:05:00 by uid 1000 pid 4242  -\n\
             heater  27 (active low)  off    off      -                                                  overvolt, night\n"
        );
        let mut r = relays[0].clone();
        r.forced.as_mut().unwrap().until = None;
        assert!(relay_table(&[r], &Utc).contains("on until released by uid 1000"));
        assert_eq!(relay_table(&[], &Utc), "no relays configured\n");
    }

    #[test]
    fn triggers_as_a_table() {
        let triggers = vec![TriggerStatus {
            name: "overvolt".into(),
            when: "L1U > 253".into(),
            state: "tripped".into(),
            dry_run: false,
            stale: true,
            since: Some(t("2026-11-21T10:00:00Z")),
            values: "L1U=254.2".into(),
            relays: vec!["pump".into()],
        }];
        let shown = trigger_table(&triggers, &Utc);
        assert_eq!(
            shown,
            "TRIGGER   STATE    SINCE                STALE  DRY RUN  VALUES\n\
             overvolt  tripped  2026-11-21 10:00:00  yes    no       L1U=254.2\n"
        );
        let mut quiet = triggers[0].clone();
        quiet.since = None;
        quiet.values = String::new();
        let shown = trigger_table(&[quiet], &Utc);
        assert!(shown.lines().nth(1).unwrap().ends_with("tripped  -      yes    no       -"), "{shown}");
        assert_eq!(trigger_table(&[], &Utc), "no triggers configured\n");
    }
}
