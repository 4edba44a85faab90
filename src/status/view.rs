//! A [`Snapshot`] as a compact text view, for `pmtr status` in an ssh session.

use super::table::{relay_table, table, trigger_table};
use super::Snapshot;
use crate::bus::status::MeterState;
use crate::control::NeutralStatus;
use crate::reading::trim;
use chrono::{DateTime, TimeZone, Utc};
use std::fmt::Write as _;

/// `2h 03m`, `4d 1h`, `12s`.
pub fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60, seconds % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// How old a reading is, as `0.4s` or `3m 05s`.
fn age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let ms = (now - then).num_milliseconds().max(0);
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        duration((ms / 1000) as u64)
    }
}

/// The whole view, times shown in `tz`.
pub fn render<Tz: TimeZone>(s: &Snapshot, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pmtr {} on {}, up {} (since {})",
        s.version,
        s.gateway,
        duration(s.uptime_seconds),
        s.started.with_timezone(tz).format("%Y-%m-%d %H:%M:%S")
    );
    out.push('\n');

    out.push_str(&meter_table(s));
    out.push('\n');
    out.push_str(&counter_table(s));
    if let Some(e) = &s.control_error {
        let _ = writeln!(out, "\ntriggers and relays: {e}");
    }
    if !s.relays.is_empty() {
        out.push('\n');
        let relays: Vec<_> = s.relays.iter().map(|r| r.status.clone()).collect();
        out.push_str(&relay_table(&relays, tz));
    }
    if !s.triggers.is_empty() {
        out.push('\n');
        out.push_str(&trigger_table(&s.triggers, tz));
    }
    if !s.neutral.is_empty() {
        out.push('\n');
        out.push_str(&neutral_table(&s.neutral));
    }

    out.push('\n');
    out.push_str(&sink_table(s));
    services(&mut out, s);
    out
}

/// Each meter: where it is, its state, its latest reading.
fn meter_table(s: &Snapshot) -> String {
    let rows = s
        .meters
        .iter()
        .map(|m| {
            let state = match m.state {
                MeterState::Ok => "ok",
                MeterState::Failing => "FAILING",
                MeterState::Searching => "searching",
            };
            let (age, values) = match &m.reading {
                Some(r) => (
                    age(r.time, s.time),
                    r.values
                        .0
                        .iter()
                        .map(|x| format!("{}={}{}", x.variable(), trim(x.value), x.quantity.unit()))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                None => ("-".to_owned(), "-".to_owned()),
            };
            vec![
                m.name.clone(),
                format!("{}@{}", m.bus, m.address),
                m.model.name().to_owned(),
                m.port.clone().unwrap_or_else(|| "-".to_owned()),
                state.to_owned(),
                age,
                values,
            ]
        })
        .collect();
    table(&["METER", "BUS@ADDR", "MODEL", "PORT", "STATE", "AGE", "LATEST READING"], rows)
}

/// Each meter's counters and its last error.
fn counter_table(s: &Snapshot) -> String {
    let rows = s
        .meters
        .iter()
        .map(|m| {
            let c = &m.counters;
            let frames = c.foreign_frames + c.short_frames + c.garbled_frames + c.malformed_frames;
            vec![
                m.name.clone(),
                c.requests.to_string(),
                c.replies.to_string(),
                c.timeouts.to_string(),
                c.crc_errors.to_string(),
                c.exceptions.to_string(),
                frames.to_string(),
                c.readings.to_string(),
                m.last_error.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    table(
        &[
            "METER",
            "REQUESTS",
            "REPLIES",
            "TIMEOUTS",
            "CRC",
            "EXCEPTIONS",
            "BAD FRAMES",
            "READINGS",
            "LAST ERROR",
        ],
        rows,
    )
}

/// Each sink: its state, what it wrote, its spool.
fn sink_table(s: &Snapshot) -> String {
    let rows = s
        .sinks
        .iter()
        .map(|k| {
            let st = &k.state;
            vec![
                k.name.clone(),
                k.kind.clone(),
                if st.healthy { "ok" } else { "DOWN" }.to_owned(),
                st.points_written.to_string(),
                format!("{} ({})", st.spool_readings, bytes(st.spool_bytes)),
                st.spool_dropped.to_string(),
                st.last_error.as_ref().map_or_else(|| "-".to_owned(), |(_, e)| e.clone()),
            ]
        })
        .collect();
    table(&["SINK", "KIND", "STATE", "POINTS", "SPOOL", "DROPPED", "LAST ERROR"], rows)
}

/// One line each for MQTT, the alerts and the Modbus TCP server, when they run.
fn services(out: &mut String, s: &Snapshot) {
    if let Some(m) = &s.mqtt {
        let _ = writeln!(
            out,
            "\nmqtt {}: {}, {} published, {} dropped, {} connection(s){}",
            m.broker,
            if m.connected { "connected" } else { "NOT CONNECTED" },
            m.published,
            m.dropped,
            m.connections,
            match (&m.last_error, m.connected) {
                (Some(e), false) => format!(" ({e})"),
                _ => String::new(),
            }
        );
    }
    if let Some(a) = &s.alerts {
        let _ = writeln!(
            out,
            "{}alerts: {} raised, {} mails sent, {} waiting, {} refused, {} dropped",
            if s.mqtt.is_some() { "" } else { "\n" },
            a.alerts,
            a.mails_sent,
            a.mails_queued,
            a.mails_refused,
            a.mails_dropped
        );
    }
    if let Some(m) = &s.modbus_server {
        let _ = writeln!(
            out,
            "{}modbus server {}: {} client(s) now, {} requests ({} from cache, {} through the bus, {} writes), \
             {} exceptions ({} busy, {} silent), {} clients refused",
            if s.mqtt.is_some() || s.alerts.is_some() { "" } else { "\n" },
            m.listen,
            m.open_connections,
            m.requests,
            m.from_cache,
            m.passed_through,
            m.writes,
            m.exceptions,
            m.busy,
            m.silent,
            m.refused_not_allowed + m.refused_over_limit
        );
    }
}

/// The `[[neutral]]` sets (see "Broken neutral" in the README): name, state (`ok`, `suspect`,
/// `FAULT` in capitals like every failure in these views, `unknown` before the first sample),
/// the neutral's estimated shift in volts, and the evidence score (1 or more is a fault).
pub fn neutral_table(sets: &[NeutralStatus]) -> String {
    let rows = sets
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                if n.state == "fault" { "FAULT".to_owned() } else { n.state.clone() },
                n.shift.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} V")),
                n.score.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}")),
            ]
        })
        .collect();
    table(&["NEUTRAL", "STATE", "SHIFT", "SCORE"], rows)
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_words() {
        assert_eq!(duration(12), "12s");
        assert_eq!(duration(185), "3m 05s");
        assert_eq!(duration(7380), "2h 03m");
        assert_eq!(duration(4 * 86_400 + 3600 + 5), "4d 1h");
        assert_eq!(bytes(2048), "2.0 KiB");
    }

    #[test]
    fn the_modbus_server_line() {
        let mut s = Snapshot::assemble(super::super::tests::parts());
        s.modbus_server = Some(crate::modbus_server::ServerCounters {
            listen: "127.0.0.1:1502".into(),
            open_connections: 2,
            requests: 100,
            from_cache: 90,
            passed_through: 8,
            writes: 1,
            exceptions: 2,
            busy: 1,
            silent: 1,
            refused_not_allowed: 3,
            ..Default::default()
        });
        let text = render(&s, &Utc);
        assert!(
            text.contains(
                "modbus server 127.0.0.1:1502: 2 client(s) now, 100 requests (90 from cache, 8 through the bus, \
                 1 writes), 2 exceptions (1 busy, 1 silent), 3 clients refused"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_whole_view() {
        let s = Snapshot::assemble(super::super::tests::parts());
        let text = render(&s, &Utc);
        let expected = "\
pmtr VERSION on house-pi, up 2h 00m (since 2026-11-21 08:00:00)

METER  BUS@ADDR  MODEL     PORT          STATE      AGE   LATEST READING
gen    house@6   rx380     -             searching  -     -
mainA  house@4   pzem-016  /dev/ttyUSB0  ok         0.5s  L1U=230.1V L1I=1.5A L1e=12.25kWh

METER  REQUESTS  REPLIES  TIMEOUTS  CRC  EXCEPTIONS  BAD FRAMES  READINGS  LAST ERROR
gen    0         0        0         0    0           0           0         -
mainA  10        9        1         0    0           0           9         timeout

RELAY  GPIO             LEVEL  DEFAULT  FORCED  TRIPPED BY
pump   17 (active low)  off    on       -       overvolt

TRIGGER   STATE    SINCE                STALE  DRY RUN  VALUES
overvolt  tripped  2026-11-21 09:59:00  no     no       L1U=254.2

NEUTRAL  STATE  SHIFT   SCORE
supply   FAULT  38.2 V  1.50

SINK    KIND       STATE  POINTS  SPOOL    DROPPED  LAST ERROR
influx  influxdb2  DOWN   100     7 (0 B)  2        -

alerts: 3 raised, 1 mails sent, 0 waiting, 0 refused, 0 dropped
"
        .replace("VERSION", env!("CARGO_PKG_VERSION"));
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn neutral_sets_with_their_state_shift_and_score() {
        let set = |name: &str, state: &str, score, shift| NeutralStatus {
            name: name.into(),
            state: state.into(),
            score,
            shift,
        };
        let text = neutral_table(&[
            set("supply", "ok", Some(0.0), Some(1.04)),
            set("house-l2", "suspect", Some(0.456), Some(23.96)),
            set("barn", "fault", Some(1.2), Some(61.0)),
            set("new", "unknown", None, None),
        ]);
        let expected = "\
NEUTRAL   STATE    SHIFT   SCORE
supply    ok       1.0 V   0.00
house-l2  suspect  24.0 V  0.46
barn      FAULT    61.0 V  1.20
new       unknown  -       -
";
        assert_eq!(text, expected, "\n{text}");
    }
}
