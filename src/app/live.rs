//! The live terminal view of `pmtr demo` and `pmtr status --watch`: one table of the meters
//! (values, state, age), relays (level, force, the triggers holding them), triggers (state,
//! since, values) and the events of the last minute, redrawn in place on a terminal and
//! printed as plain blocks when the output is a pipe or a file.
//!
//! Building the lines, fitting them and the redraw sequences are pure; only [`width`] and the
//! callers' `print!` touch the terminal.

use crate::bus::status::MeterState;
use crate::reading::{trim, Phase, Quantity, Sample};
use crate::status::table::table;
use crate::status::{view, MeterView, Snapshot};
use chrono::{DateTime, TimeZone, Utc};
use std::collections::VecDeque;

/// How long an event stays under the table.
pub const EVENT_WINDOW_S: i64 = 60;
/// At most this many events under the table (the newest).
pub const MAX_EVENTS: usize = 10;

/// Cursor to the top left corner.
pub const HOME: &str = "\x1b[H";
/// Clear from the cursor to the end of the line.
pub const CLEAR_LINE: &str = "\x1b[K";
/// Clear from the cursor to the end of the screen.
pub const CLEAR_BELOW: &str = "\x1b[J";
/// Clear the whole screen (once, before the first frame).
pub const CLEAR_SCREEN: &str = "\x1b[2J";
pub const HIDE_CURSOR: &str = "\x1b[?25l";
pub const SHOW_CURSOR: &str = "\x1b[?25h";

/// Hides the terminal's cursor while the table is drawn, and shows it again when dropped,
/// whichever way the caller ends (an error included).
pub struct HiddenCursor(());

impl HiddenCursor {
    /// Hides the cursor and clears the screen for the first frame.
    pub fn hide() -> HiddenCursor {
        super::print_out(format_args!("{HIDE_CURSOR}{CLEAR_SCREEN}"));
        HiddenCursor(())
    }
}

impl Drop for HiddenCursor {
    /// Never panics, a terminal gone included (a panic while unwinding would abort).
    fn drop(&mut self) {
        super::print_out(format_args!("{SHOW_CURSOR}"));
    }
}

/// Something that happened, shown for a minute under the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub time: DateTime<Utc>,
    pub text: String,
}

/// The events of the last minute, oldest first; older ones are dropped as new ones come.
#[derive(Debug, Default)]
pub struct Events(VecDeque<Event>);

impl Events {
    pub fn push(&mut self, time: DateTime<Utc>, text: impl Into<String>) {
        self.0.push_back(Event { time, text: text.into() });
        // Bounded whatever the clock says: the window only shows the newest anyway.
        while self.0.len() > 4 * MAX_EVENTS {
            self.0.pop_front();
        }
    }

    /// The events of the minute before `now`, at most [`MAX_EVENTS`], oldest first.
    pub fn recent(&mut self, now: DateTime<Utc>) -> Vec<Event> {
        while self.0.front().is_some_and(|e| (now - e.time).num_seconds() >= EVENT_WINDOW_S) {
            self.0.pop_front();
        }
        let skip = self.0.len().saturating_sub(MAX_EVENTS);
        self.0.iter().skip(skip).cloned().collect()
    }
}

/// The value of `q` as shown in one cell: the meter's total if it has one, else each phase
/// (`230.1/231.0/229.8`), with `decimals` decimals; frequency is one value.
fn cell(samples: &[Sample], q: Quantity, decimals: usize) -> String {
    let f = |x: f64| format!("{x:.decimals$}");
    let of_q = || samples.iter().filter(move |s| s.quantity == q);
    if let Some(total) = of_q().find(|s| s.phase == Phase::Total) {
        return f(total.value);
    }
    let phases: Vec<String> =
        of_q().filter(|s| matches!(s.phase, Phase::L1 | Phase::L2 | Phase::L3)).map(|s| f(s.value)).collect();
    match (phases.is_empty(), of_q().next()) {
        (_, None) => "-".to_owned(),
        (true, Some(s)) => f(s.value),
        (false, _) if q == Quantity::Frequency => phases[0].clone(),
        (false, _) => phases.join("/"),
    }
}

fn meter_row(m: &MeterView, now: DateTime<Utc>) -> Vec<String> {
    let state = match m.state {
        MeterState::Ok => "ok",
        MeterState::Failing => "FAILING",
        MeterState::Searching => "searching",
    };
    let samples = m.reading.as_ref().map(|r| r.values.0.as_slice()).unwrap_or(&[]);
    let age = m.reading.as_ref().map_or_else(|| "-".to_owned(), |r| age(r.time, now));
    let port = m.port.as_deref().map(|p| p.rsplit('/').next().unwrap_or(p)).unwrap_or("-");
    vec![
        m.name.clone(),
        format!("{port} @{}", m.address),
        state.to_owned(),
        age,
        cell(samples, Quantity::Voltage, 1),
        cell(samples, Quantity::Current, 2),
        cell(samples, Quantity::ActivePower, 0),
        cell(samples, Quantity::ActiveEnergy, 2),
        cell(samples, Quantity::Frequency, 1),
        cell(samples, Quantity::PowerFactor, 2),
    ]
}

/// `0.4s`, `12s`, `3m 05s`.
fn age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let ms = (now - then).num_milliseconds().max(0);
    if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        view::duration((ms / 1000) as u64)
    }
}

/// The table's lines (no line ends), times of events shown in `tz`.
pub fn lines<Tz: TimeZone>(title: &str, s: &Snapshot, events: &[Event], tz: &Tz) -> Vec<String>
where
    Tz::Offset: std::fmt::Display,
{
    let mut text = format!(
        "{title} · {} · up {} · {}\n\n",
        s.gateway,
        view::duration(s.uptime_seconds),
        s.time.with_timezone(tz).format("%H:%M:%S")
    );
    let rows = s.meters.iter().map(|m| meter_row(m, s.time)).collect();
    text.push_str(&table(&["METER", "PORT", "STATE", "AGE", "V", "A", "W", "kWh", "Hz", "PF"], rows));
    if let Some(e) = &s.control_error {
        text.push_str(&format!("\ntriggers and relays: {e}\n"));
    }
    if !s.relays.is_empty() {
        let rows = s
            .relays
            .iter()
            .map(|r| {
                let r = &r.status;
                let forced = match &r.forced {
                    None => "-".to_owned(),
                    Some(f) => match f.until {
                        None => format!("{} until released", f.level),
                        Some(t) => format!(
                            "{} for {}",
                            f.level,
                            view::duration((t - s.time).num_seconds().max(0) as u64)
                        ),
                    },
                };
                let held = if r.tripped_by.is_empty() { "-".to_owned() } else { r.tripped_by.join(", ") };
                vec![r.name.clone(), r.level.to_string(), format!("default {}", r.default), forced, held]
            })
            .collect();
        text.push('\n');
        text.push_str(&table(&["RELAY", "LEVEL", "DEFAULT", "FORCED", "HELD BY"], rows));
    }
    if !s.triggers.is_empty() {
        let rows = s
            .triggers
            .iter()
            .map(|t| {
                let mut state = t.state.clone();
                if t.dry_run {
                    state.push_str(" (dry run)");
                }
                if t.stale {
                    state.push_str(" (stale)");
                }
                vec![
                    t.name.clone(),
                    state,
                    t.since.map_or_else(|| "-".to_owned(), |since| age(since, s.time)),
                    if t.values.is_empty() { "-".to_owned() } else { t.values.clone() },
                ]
            })
            .collect();
        text.push('\n');
        text.push_str(&table(&["TRIGGER", "STATE", "FOR", "VALUES"], rows));
    }
    if !s.neutral.is_empty() {
        text.push('\n');
        text.push_str(&view::neutral_table(&s.neutral));
    }
    if !s.sinks.is_empty() {
        let sinks: Vec<String> = s
            .sinks
            .iter()
            .map(|k| {
                let st = &k.state;
                let health = if st.healthy { "ok" } else { "DOWN" };
                let spool = if st.spool_readings > 0 {
                    format!(", {} spooled", st.spool_readings)
                } else {
                    String::new()
                };
                format!("{} {health} ({} points{spool})", k.name, st.points_written)
            })
            .collect();
        text.push_str(&format!("\nsinks: {}\n", sinks.join("; ")));
    }
    text.push_str("\nEVENTS (last minute)\n");
    if events.is_empty() {
        text.push_str("  -\n");
    }
    for e in events {
        text.push_str(&format!("  {} {}\n", e.time.with_timezone(tz).format("%H:%M:%S"), e.text));
    }
    text.lines().map(str::to_owned).collect()
}

/// A line cut to `width` characters (the terminal would wrap it and push the table down).
fn fit(line: &str, width: usize) -> &str {
    match line.char_indices().nth(width) {
        Some((i, _)) => &line[..i],
        None => line,
    }
}

/// One frame redrawn in place: cursor home, every line cleared to its end, the rest of the
/// screen cleared; lines cut to `width` when it is known.
pub fn redraw(lines: &[String], width: Option<usize>) -> String {
    let mut out = String::from(HOME);
    for l in lines {
        out.push_str(width.map_or(l.as_str(), |w| fit(l, w)));
        out.push_str(CLEAR_LINE);
        out.push('\n');
    }
    out.push_str(CLEAR_BELOW);
    out
}

/// One frame as plain text for a pipe: the lines and a blank line after them.
pub fn plain(lines: &[String]) -> String {
    let mut out = lines.join("\n");
    out.push_str("\n\n");
    out
}

/// What changed between two snapshots of a daemon, as events: meters found, lost or failing,
/// trigger states, relay levels and forces, the states of `[[neutral]]` sets.
pub fn changes(before: &Snapshot, after: &Snapshot) -> Vec<Event> {
    let mut out = Vec::new();
    let mut push = |text: String| out.push(Event { time: after.time, text });
    for m in &after.meters {
        match before.meter(&m.name) {
            Some(b) if b.state != m.state => {
                let what = match m.state {
                    MeterState::Ok => format!("answers on {}", m.port.as_deref().unwrap_or("-")),
                    MeterState::Failing => {
                        format!("failing: {}", m.last_error.as_deref().unwrap_or("no answer"))
                    }
                    MeterState::Searching => "lost: searching the ports".to_owned(),
                };
                push(format!("meter {} {what}", m.name));
            }
            Some(b) if b.port != m.port && m.port.is_some() => {
                push(format!("meter {} moved to {}", m.name, m.port.as_deref().unwrap_or("-")))
            }
            _ => {}
        }
    }
    for t in &after.triggers {
        if let Some(b) = before.triggers.iter().find(|b| b.name == t.name) {
            if b.state != t.state {
                let values = if t.values.is_empty() { String::new() } else { format!(" ({})", t.values) };
                push(format!("trigger {} {}{values}", t.name, t.state));
            }
        }
    }
    for r in &after.relays {
        let r = &r.status;
        if let Some(b) = before.relays.iter().find(|b| b.status.name == r.name).map(|b| &b.status) {
            if b.level != r.level {
                let by = if r.tripped_by.is_empty() {
                    String::new()
                } else {
                    format!(" by {}", r.tripped_by.join(", "))
                };
                push(format!("relay {} switched {}{by}", r.name, r.level));
            }
            match (&b.forced, &r.forced) {
                (None, Some(f)) => push(format!("relay {} forced {} by {}", r.name, f.level, f.by)),
                (Some(_), None) => push(format!("relay {} released", r.name)),
                _ => {}
            }
        }
    }
    for n in &after.neutral {
        if before.neutral.iter().any(|b| b.name == n.name && b.state != n.state) {
            let shift = n.shift.map_or_else(String::new, |v| format!(" (shift {v:.1} V)"));
            push(format!("neutral {} {}{shift}", n.name, n.state));
        }
    }
    out
}

/// The terminal's width in columns, if stdout is one.
pub fn width() -> Option<usize> {
    let mut ws: nix::libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct it is given, which lives on the
    // stack for the call.
    let rc = unsafe { nix::libc::ioctl(nix::libc::STDOUT_FILENO, nix::libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some(ws.ws_col as usize)
}

/// Values as `L1U=230.1 …`, for the plain reading lines.
pub fn values(samples: &[Sample]) -> String {
    samples
        .iter()
        .map(|x| format!("{}={}{}", x.variable(), trim(x.value), x.quantity.unit()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::parts;

    fn snapshot() -> Snapshot {
        Snapshot::assemble(parts())
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_table_as_plain_strings() {
        let s = snapshot();
        let events = vec![Event { time: t("2026-11-21T10:00:01Z"), text: "trigger overvolt tripped".into() }];
        let lines = lines("pmtr demo", &s, &events, &Utc);
        let text = lines.join("\n");
        assert!(lines[0].starts_with("pmtr demo · "), "{text}");
        let row = |name: &str| {
            lines.iter().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {text}"))
        };
        let header = row("METER");
        let main = row("mainA ");
        for (col, value) in
            [("STATE", "ok"), ("V", "230.1"), ("A", "1.50"), ("kWh", "12.25"), ("PORT", "ttyUSB0 @4")]
        {
            let padded = format!("{header} ");
            let at = padded.find(&format!("  {col} ")).map(|i| i + 2).unwrap_or(0);
            assert_eq!(&main[at..at + value.len()], value, "{col} in\n{text}");
        }
        assert!(row("gen ").contains("searching"), "{text}");
        // The relay, its level, what holds it; the trigger and its values.
        let relay = row("pump ");
        assert!(
            relay.contains("off") && relay.contains("default on") && relay.contains("overvolt"),
            "{relay}"
        );
        let trigger = row("overvolt ");
        assert!(trigger.contains("tripped") && trigger.contains("L1U=254.2"), "{trigger}");
        // The `[[neutral]]` set: state, shift, score, under their header.
        assert!(row("NEUTRAL ").contains("SHIFT"), "{text}");
        let neutral = row("supply ");
        assert!(
            neutral.contains("FAULT") && neutral.contains("38.2 V") && neutral.contains("1.50"),
            "{neutral}"
        );
        assert!(text.contains("EVENTS (last minute)\n  10:00:01 trigger overvolt tripped"), "{text}");
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn three_phases_side_by_side_and_totals_alone() {
        let samples = vec![
            Sample::new(Phase::L1, Quantity::Voltage, 230.0),
            Sample::new(Phase::L2, Quantity::Voltage, 231.04),
            Sample::new(Phase::L3, Quantity::Voltage, 229.96),
            Sample::new(Phase::L1, Quantity::ActivePower, 100.0),
            Sample::new(Phase::Total, Quantity::ActivePower, 300.4),
            Sample::new(Phase::L1, Quantity::Frequency, 50.0),
            Sample::new(Phase::L2, Quantity::Frequency, 50.0),
        ];
        assert_eq!(cell(&samples, Quantity::Voltage, 1), "230.0/231.0/230.0");
        assert_eq!(cell(&samples, Quantity::ActivePower, 0), "300");
        assert_eq!(cell(&samples, Quantity::Frequency, 1), "50.0");
        assert_eq!(cell(&samples, Quantity::PowerFactor, 2), "-");
    }

    #[test]
    fn a_redraw_homes_clears_each_line_and_fits_the_width() {
        let lines = vec!["abcdef".to_owned(), "ü23".to_owned()];
        assert_eq!(redraw(&lines, Some(4)), "\x1b[Habcd\x1b[K\nü23\x1b[K\n\x1b[J");
        assert_eq!(redraw(&lines, None), "\x1b[Habcdef\x1b[K\nü23\x1b[K\n\x1b[J");
        assert_eq!(plain(&lines), "abcdef\nü23\n\n");
    }

    #[test]
    fn events_last_a_minute_and_the_newest_are_shown() {
        let mut e = Events::default();
        let t0 = t("2026-11-21T10:00:00Z");
        for i in 0..15 {
            e.push(t0 + chrono::Duration::seconds(i), format!("e{i}"));
        }
        let shown = e.recent(t0 + chrono::Duration::seconds(20));
        assert_eq!(shown.len(), MAX_EVENTS);
        assert_eq!(shown.first().unwrap().text, "e5");
        assert_eq!(shown.last().unwrap().text, "e14");
        let shown = e.recent(t0 + chrono::Duration::seconds(70));
        assert_eq!(shown.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(), ["e11", "e12", "e13", "e14"]);
        assert!(e.recent(t0 + chrono::Duration::seconds(200)).is_empty());
    }

    #[test]
    fn changes_between_two_snapshots() {
        let before = snapshot();
        let mut after = before.clone();
        after.time = t("2026-11-21T10:00:05Z");
        after.meters[0].state = MeterState::Ok;
        after.meters[0].port = Some("/dev/ttyUSB1".into());
        after.triggers[0].state = "released".into();
        after.triggers[0].values = "L1U=230".into();
        after.relays[0].status.level = crate::relay::Level::On;
        after.relays[0].status.tripped_by.clear();
        after.neutral[0].state = "suspect".into();
        after.neutral[0].shift = Some(22.04);
        let texts: Vec<String> = changes(&before, &after).into_iter().map(|e| e.text).collect();
        assert_eq!(
            texts,
            [
                "meter gen answers on /dev/ttyUSB1",
                "trigger overvolt released (L1U=230)",
                "relay pump switched on",
                "neutral supply suspect (shift 22.0 V)"
            ],
            "{texts:?}"
        );
        assert!(changes(&after, &after).is_empty());
    }
}
