//! A [`Snapshot`] as Prometheus text (exposition format 0.0.4), for `GET /metrics`.
//!
//! Readings are gauges named after the quantity and its unit (`pmtr_voltage_volts{meter,phase}`),
//! counters end in `_total`. Every family has its `# HELP` and `# TYPE`, and its samples
//! together.

use super::Snapshot;
use crate::bus::status::{Counters, MeterState};
use crate::reading::Quantity;
use std::fmt::Write as _;

/// The gauge of each quantity: its name and help.
pub fn reading_metric(q: Quantity) -> (&'static str, &'static str) {
    match q {
        Quantity::Voltage => ("pmtr_voltage_volts", "Voltage of the latest reading."),
        Quantity::Current => ("pmtr_current_amperes", "Current of the latest reading."),
        Quantity::ActivePower => {
            ("pmtr_power_watts", "Active power of the latest reading (negative: export).")
        }
        Quantity::ApparentPower => {
            ("pmtr_apparent_power_voltamperes", "Apparent power of the latest reading.")
        }
        Quantity::ReactivePower => ("pmtr_reactive_power_vars", "Reactive power of the latest reading."),
        Quantity::ActiveEnergy => ("pmtr_energy_kilowatthours", "The meter's active energy counter."),
        Quantity::ApparentEnergy => {
            ("pmtr_apparent_energy_kilovoltamperehours", "The meter's apparent energy counter.")
        }
        Quantity::ReactiveEnergy => {
            ("pmtr_reactive_energy_kilovarhours", "The meter's reactive energy counter.")
        }
        Quantity::Frequency => ("pmtr_frequency_hertz", "Frequency of the latest reading."),
        Quantity::PowerFactor => ("pmtr_power_factor", "Power factor of the latest reading (-1..1)."),
        Quantity::Alarm => ("pmtr_alarm", "The meter's own alarm (1 raised)."),
        Quantity::Supply5V => ("pmtr_supply_5v_volts", "The meter's own 5 V supply (PMTR_001_SRV)."),
        Quantity::Supply12V => ("pmtr_supply_12v_volts", "The meter's own 12 V supply (PMTR_001_SRV)."),
        Quantity::LowPower => ("pmtr_low_power", "The meter saves power and refreshes only voltages (1)."),
        Quantity::VoltageAvg => ("pmtr_voltage_avg_volts", "The meter's own moving average of the voltage."),
        Quantity::CurrentAvg => {
            ("pmtr_current_avg_amperes", "The meter's own moving average of the current.")
        }
        Quantity::ActivePowerAvg => ("pmtr_power_avg_watts", "The meter's own moving average of the power."),
        Quantity::FrequencyAvg => {
            ("pmtr_frequency_avg_hertz", "The meter's own moving average of the frequency.")
        }
        Quantity::PowerFactorAvg => {
            ("pmtr_power_factor_avg", "The meter's own moving average of the power factor.")
        }
        Quantity::ImportActiveEnergy => {
            ("pmtr_import_energy_kilowatthours", "The meter's imported active energy counter.")
        }
        Quantity::ExportActiveEnergy => {
            ("pmtr_export_energy_kilowatthours", "The meter's exported active energy counter.")
        }
        Quantity::ImportReactiveEnergy => {
            ("pmtr_import_reactive_energy_kilovarhours", "The meter's imported reactive energy counter.")
        }
        Quantity::ExportReactiveEnergy => {
            ("pmtr_export_reactive_energy_kilovarhours", "The meter's exported reactive energy counter.")
        }
        Quantity::VoltageThd => ("pmtr_voltage_thd_percent", "Total harmonic distortion of the voltage (%)."),
        Quantity::CurrentThd => ("pmtr_current_thd_percent", "Total harmonic distortion of the current (%)."),
    }
}

/// The per-meter bus counters: name, help, field.
/// A counter family: its name, help, and how it is read from its source.
type Family<T> = (&'static str, &'static str, fn(&T) -> u64);

const METER_COUNTERS: &[Family<Counters>] = &[
    ("pmtr_meter_requests_total", "Requests sent to the meter.", |c| c.requests),
    ("pmtr_meter_replies_total", "Good replies from the meter.", |c| c.replies),
    ("pmtr_meter_probes_total", "Requests that looked for the meter on a port.", |c| c.probes),
    ("pmtr_meter_probe_misses_total", "Probes the meter did not answer (on another port, or away).", |c| {
        c.probe_misses
    }),
    ("pmtr_meter_timeouts_total", "Requests the meter did not answer in time.", |c| c.timeouts),
    ("pmtr_meter_crc_errors_total", "Replies with a bad CRC.", |c| c.crc_errors),
    ("pmtr_meter_exceptions_total", "Modbus exception replies.", |c| c.exceptions),
    ("pmtr_meter_frame_errors_total", "Foreign, short, garbled or malformed frames.", |c| {
        c.foreign_frames + c.short_frames + c.garbled_frames + c.malformed_frames
    }),
    ("pmtr_meter_noise_bytes_total", "Noise bytes before a good reply.", |c| c.noise_bytes),
    ("pmtr_meter_readings_total", "Readings made.", |c| c.readings),
    ("pmtr_meter_readings_dropped_total", "Readings the consumers could not take in time.", |c| {
        c.readings_dropped
    }),
    ("pmtr_meter_energy_backwards_total", "Readings whose energy counter went backwards.", |c| {
        c.energy_backwards
    }),
    (
        "pmtr_meter_bad_readings_total",
        "Readings refused for a value not finite or past its quantity's limit.",
        |c| c.bad_readings,
    ),
];

/// Escapes a label value: backslash, double quote and line feed.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A float as Prometheus writes it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// The whole snapshot as Prometheus text.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(1024 + 2048 * s.meters.len());
    let gw = label(&s.gateway);
    family(&mut out, "pmtr_info", "gauge", "The gateway: its name and pmtr's version.");
    let _ = writeln!(out, "pmtr_info{{gateway=\"{gw}\",version=\"{}\"}} 1", label(&s.version));
    family(&mut out, "pmtr_uptime_seconds", "gauge", "Seconds since pmtr started.");
    let _ = writeln!(out, "pmtr_uptime_seconds {}", s.uptime_seconds);

    readings(&mut out, s);
    meters(&mut out, s);
    relays(&mut out, s);
    triggers(&mut out, s);
    neutral(&mut out, s);
    sinks(&mut out, s);
    alerts(&mut out, s);
    mqtt(&mut out, s);
    modbus_server(&mut out, s);
    energy(&mut out, s);
    out
}

/// Readings: one family per quantity, in the order of storage.
fn readings(out: &mut String, s: &Snapshot) {
    for q in Quantity::ALL {
        let (name, help) = reading_metric(q);
        let mut started = false;
        for m in &s.meters {
            let Some(r) = &m.reading else { continue };
            for sample in r.values.0.iter().filter(|x| x.quantity == q) {
                if !started {
                    family(out, name, "gauge", help);
                    started = true;
                }
                let _ = writeln!(
                    out,
                    "{name}{{meter=\"{}\",phase=\"{}\"}} {}",
                    label(&m.name),
                    sample.phase.tag(),
                    number(sample.value)
                );
            }
        }
    }
}

/// Each meter: when its latest reading came, whether it answers, its counters.
fn meters(out: &mut String, s: &Snapshot) {
    family(
        out,
        "pmtr_meter_reading_timestamp_seconds",
        "gauge",
        "When the latest reading arrived (Unix time).",
    );
    for m in &s.meters {
        if let Some(r) = &m.reading {
            let t = r.time.timestamp_millis() as f64 / 1000.0;
            let _ = writeln!(
                out,
                "pmtr_meter_reading_timestamp_seconds{{meter=\"{}\"}} {}",
                label(&m.name),
                number(t)
            );
        }
    }
    family(
        out,
        "pmtr_meter_up",
        "gauge",
        "1 while the meter answers, 0 while it is searched for or failing.",
    );
    for m in &s.meters {
        let _ = writeln!(
            out,
            "pmtr_meter_up{{meter=\"{}\",bus=\"{}\",model=\"{}\",address=\"{}\",port=\"{}\"}} {}",
            label(&m.name),
            label(&m.bus),
            m.model.name(),
            m.address,
            label(m.port.as_deref().unwrap_or("")),
            u8::from(m.state == MeterState::Ok)
        );
    }
    for (name, help, field) in METER_COUNTERS {
        family(out, name, "counter", help);
        for m in &s.meters {
            let _ = writeln!(out, "{name}{{meter=\"{}\"}} {}", label(&m.name), field(&m.counters));
        }
    }
}

/// Each relay: its level, whether it is forced, its level changes.
fn relays(out: &mut String, s: &Snapshot) {
    if !s.relays.is_empty() {
        family(out, "pmtr_relay_on", "gauge", "1 while the relay's coil is energised.");
        for r in &s.relays {
            let on = r.status.level == crate::relay::Level::On;
            let _ = writeln!(out, "pmtr_relay_on{{relay=\"{}\"}} {}", label(&r.status.name), u8::from(on));
        }
        family(out, "pmtr_relay_forced", "gauge", "1 while the relay is forced by hand.");
        for r in &s.relays {
            let _ = writeln!(
                out,
                "pmtr_relay_forced{{relay=\"{}\"}} {}",
                label(&r.status.name),
                u8::from(r.status.forced.is_some())
            );
        }
        family(out, "pmtr_relay_transitions_total", "counter", "Level changes of the relay since start.");
        for r in &s.relays {
            let _ = writeln!(
                out,
                "pmtr_relay_transitions_total{{relay=\"{}\"}} {}",
                label(&r.status.name),
                r.transitions
            );
        }
    }
}

/// Each trigger: tripped, stale.
fn triggers(out: &mut String, s: &Snapshot) {
    if !s.triggers.is_empty() {
        family(out, "pmtr_trigger_tripped", "gauge", "1 while the trigger is tripped (or latched).");
        for t in &s.triggers {
            let tripped = matches!(t.state.as_str(), "tripped" | "recovering" | "latched");
            let _ =
                writeln!(out, "pmtr_trigger_tripped{{trigger=\"{}\"}} {}", label(&t.name), u8::from(tripped));
        }
        family(out, "pmtr_trigger_stale", "gauge", "1 while a meter the trigger reads is silent.");
        for t in &s.triggers {
            let _ =
                writeln!(out, "pmtr_trigger_stale{{trigger=\"{}\"}} {}", label(&t.name), u8::from(t.stale));
        }
    }
}

/// Each broken-neutral set: fault, suspect, shift, score.
fn neutral(out: &mut String, s: &Snapshot) {
    if !s.neutral.is_empty() {
        family(
            out,
            "pmtr_neutral_fault",
            "gauge",
            "1 while the [[neutral]] set is in fault (a broken neutral).",
        );
        for n in &s.neutral {
            let _ = writeln!(
                out,
                "pmtr_neutral_fault{{set=\"{}\"}} {}",
                label(&n.name),
                u8::from(n.state == "fault")
            );
        }
        family(out, "pmtr_neutral_suspect", "gauge", "1 while the [[neutral]] set is suspect.");
        for n in &s.neutral {
            let _ = writeln!(
                out,
                "pmtr_neutral_suspect{{set=\"{}\"}} {}",
                label(&n.name),
                u8::from(n.state == "suspect")
            );
        }
        family(out, "pmtr_neutral_shift_volts", "gauge", "The estimated neutral displacement of the set.");
        for n in s.neutral.iter().filter(|n| n.shift.is_some_and(f64::is_finite)) {
            let _ = writeln!(
                out,
                "pmtr_neutral_shift_volts{{set=\"{}\"}} {}",
                label(&n.name),
                n.shift.unwrap_or(0.0)
            );
        }
        family(out, "pmtr_neutral_score", "gauge", "The set's evidence of a broken neutral; 1 confirms.");
        for n in s.neutral.iter().filter(|n| n.score.is_some_and(f64::is_finite)) {
            let _ =
                writeln!(out, "pmtr_neutral_score{{set=\"{}\"}} {}", label(&n.name), n.score.unwrap_or(0.0));
        }
    }
}

/// Each sink: health, what it wrote, lost and holds.
fn sinks(out: &mut String, s: &Snapshot) {
    type SinkFamily = (&'static str, &'static str, &'static str, fn(&crate::store::SinkState) -> u64);
    let sink_families: &[SinkFamily] = &[
        ("pmtr_sink_up", "gauge", "1 while writes to the sink succeed.", |x| u64::from(x.healthy)),
        ("pmtr_sink_points_written_total", "counter", "Points written.", |x| x.points_written),
        ("pmtr_sink_readings_written_total", "counter", "Readings written.", |x| x.readings_written),
        ("pmtr_sink_changes_written_total", "counter", "Trigger and relay state changes written.", |x| {
            x.changes_written
        }),
        ("pmtr_sink_dropped_total", "counter", "Records lost to a full spool.", |x| x.spool_dropped),
        ("pmtr_sink_rejected_total", "counter", "Records the server refused for good.", |x| x.rejected),
        ("pmtr_sink_memory_records", "gauge", "Records waiting in memory.", |x| x.in_memory),
        ("pmtr_sink_spool_records", "gauge", "Records waiting in the spool (its depth).", |x| {
            x.spool_readings
        }),
        ("pmtr_sink_spool_bytes", "gauge", "Size of the spool on disk.", |x| x.spool_bytes),
    ];
    for (name, kind, help, field) in sink_families {
        family(out, name, kind, help);
        for sink in &s.sinks {
            let _ = writeln!(
                out,
                "{name}{{sink=\"{}\",kind=\"{}\"}} {}",
                label(&sink.name),
                label(&sink.kind),
                field(&sink.state)
            );
        }
    }
}

/// The alert counters.
fn alerts(out: &mut String, s: &Snapshot) {
    if let Some(a) = &s.alerts {
        for (name, help, v) in [
            ("pmtr_alerts_total", "Alerts raised.", a.alerts),
            ("pmtr_alert_mails_sent_total", "Alert mails the server accepted.", a.mails_sent),
            ("pmtr_alert_mails_refused_total", "Alert mails the server refused for good.", a.mails_refused),
            ("pmtr_alert_mails_dropped_total", "Alert mails dropped from a full queue.", a.mails_dropped),
        ] {
            family(out, name, "counter", help);
            let _ = writeln!(out, "{name} {v}");
        }
    }
}

/// The MQTT client.
fn mqtt(out: &mut String, s: &Snapshot) {
    if let Some(m) = &s.mqtt {
        family(out, "pmtr_mqtt_connected", "gauge", "1 while connected to the MQTT broker.");
        let _ = writeln!(out, "pmtr_mqtt_connected {}", u8::from(m.connected));
        for (name, help, v) in [
            ("pmtr_mqtt_connections_total", "Connections made to the broker.", m.connections),
            ("pmtr_mqtt_messages_published_total", "Messages handed to the MQTT client.", m.published),
            ("pmtr_mqtt_messages_dropped_total", "Messages dropped (broker away, queue full).", m.dropped),
        ] {
            family(out, name, "counter", help);
            let _ = writeln!(out, "{name} {v}");
        }
    }
}

/// The Modbus TCP server.
fn modbus_server(out: &mut String, s: &Snapshot) {
    if let Some(m) = &s.modbus_server {
        family(out, "pmtr_modbus_server_open_connections", "gauge", "Modbus TCP clients connected now.");
        let _ = writeln!(out, "pmtr_modbus_server_open_connections {}", m.open_connections);
        for (name, help, v) in [
            ("pmtr_modbus_server_connections_total", "Modbus TCP clients let in.", m.connections),
            (
                "pmtr_modbus_server_refused_not_allowed_total",
                "Clients refused: not in `allow`.",
                m.refused_not_allowed,
            ),
            (
                "pmtr_modbus_server_refused_over_limit_total",
                "Clients refused: max_connections reached.",
                m.refused_over_limit,
            ),
            ("pmtr_modbus_server_requests_total", "Requests received.", m.requests),
            (
                "pmtr_modbus_server_from_cache_total",
                "Reads answered from the latest reading's registers.",
                m.from_cache,
            ),
            (
                "pmtr_modbus_server_passed_through_total",
                "Requests run on the bus for a client.",
                m.passed_through,
            ),
            ("pmtr_modbus_server_writes_total", "Writes passed to a meter.", m.writes),
            ("pmtr_modbus_server_exceptions_total", "Requests answered with an exception.", m.exceptions),
            (
                "pmtr_modbus_server_busy_total",
                "Exceptions 0x06: a queue full or the request rate over its limit.",
                m.busy,
            ),
            ("pmtr_modbus_server_silent_total", "Exceptions 0x0B: the meter silent.", m.silent),
        ] {
            family(out, name, "counter", help);
            let _ = writeln!(out, "{name} {v}");
        }
    }
}

/// The energy books: lifetime totals, and each period's energy, partial flag and cost.
fn energy(out: &mut String, s: &Snapshot) {
    if s.energy.is_empty() {
        return;
    }
    let name = "pmtr_energy_lifetime_kilowatthours_total";
    family(
        out,
        name,
        "counter",
        "Lifetime total of an energy counter: never goes back on a reset, rollover or new meter.",
    );
    for m in &s.energy {
        for (counter, total) in &m.totals {
            let _ = writeln!(
                out,
                "{name}{{meter=\"{}\",counter=\"{}\"}} {}",
                label(&m.meter),
                label(counter),
                number(*total)
            );
        }
    }
    for (name, help) in [
        ("pmtr_energy_period_kilowatthours", "Active energy of a local period (today, this_month, ...)."),
        ("pmtr_energy_period_partial", "1 when pmtr did not see all of the period."),
    ] {
        family(out, name, "gauge", help);
        for m in &s.energy {
            for p in &m.periods {
                let v = if name.ends_with("partial") { f64::from(u8::from(p.partial)) } else { p.kwh };
                let _ = writeln!(
                    out,
                    "{name}{{meter=\"{}\",period=\"{}\"}} {}",
                    label(&m.meter),
                    p.period.name(),
                    number(v)
                );
            }
        }
    }
    let name = "pmtr_energy_period_cost";
    let mut started = false;
    for m in &s.energy {
        for p in &m.periods {
            for c in &p.costs {
                if !started {
                    family(
                        out,
                        name,
                        "gauge",
                        "Cost of a local period under a tariff, standing charge included.",
                    );
                    started = true;
                }
                let _ = writeln!(
                    out,
                    "{name}{{meter=\"{}\",period=\"{}\",tariff=\"{}\",currency=\"{}\"}} {}",
                    label(&m.meter),
                    p.period.name(),
                    label(&c.tariff),
                    label(&c.currency),
                    number(c.total)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn readings_and_counters_as_prometheus_text() {
        let s = Snapshot::assemble(super::super::tests::parts());
        let text = render(&s);
        assert_eq!(value_of(&text, r#"pmtr_voltage_volts{meter="mainA",phase="l1"}"#), Some("230.1"));
        assert_eq!(value_of(&text, r#"pmtr_current_amperes{meter="mainA",phase="l1"}"#), Some("1.5"));
        assert_eq!(value_of(&text, r#"pmtr_energy_kilowatthours{meter="mainA",phase="l1"}"#), Some("12.25"));
        assert_eq!(value_of(&text, r#"pmtr_meter_timeouts_total{meter="mainA"}"#), Some("1"));
        assert_eq!(value_of(&text, r#"pmtr_meter_requests_total{meter="gen"}"#), Some("0"));
        assert_eq!(
            value_of(
                &text,
                r#"pmtr_meter_up{meter="mainA",bus="house",model="pzem-016",address="4",port="/dev/ttyUSB0"}"#
            ),
            Some("1")
        );
        assert_eq!(
            value_of(&text, r#"pmtr_meter_reading_timestamp_seconds{meter="mainA"}"#),
            Some("1795255200.5")
        );
        assert_eq!(value_of(&text, r#"pmtr_relay_on{relay="pump"}"#), Some("0"));
        assert_eq!(value_of(&text, r#"pmtr_relay_transitions_total{relay="pump"}"#), Some("4"));
        assert_eq!(value_of(&text, r#"pmtr_trigger_tripped{trigger="overvolt"}"#), Some("1"));
        assert_eq!(value_of(&text, r#"pmtr_neutral_fault{set="supply"}"#), Some("1"));
        assert_eq!(value_of(&text, r#"pmtr_neutral_suspect{set="supply"}"#), Some("0"));
        assert_eq!(value_of(&text, r#"pmtr_neutral_shift_volts{set="supply"}"#), Some("38.25"));
        assert_eq!(value_of(&text, r#"pmtr_neutral_score{set="supply"}"#), Some("1.5"));
        assert_eq!(value_of(&text, r#"pmtr_sink_up{sink="influx",kind="influxdb2"}"#), Some("0"));
        assert_eq!(value_of(&text, r#"pmtr_sink_spool_records{sink="influx",kind="influxdb2"}"#), Some("7"));
        assert_eq!(value_of(&text, r#"pmtr_sink_dropped_total{sink="influx",kind="influxdb2"}"#), Some("2"));
        assert_eq!(value_of(&text, "pmtr_alerts_total"), Some("3"));
        assert_eq!(value_of(&text, "pmtr_uptime_seconds"), Some("7201"));
        assert!(value_of(&text, "pmtr_mqtt_connected").is_none(), "no MQTT configured");
    }

    #[test]
    fn energy_totals_periods_and_costs() {
        let text = render(&Snapshot::assemble(super::super::tests::parts()));
        let v = |k: &str| value_of(&text, k);
        assert_eq!(
            v(r#"pmtr_energy_lifetime_kilowatthours_total{meter="main",counter="l1_energy"}"#),
            Some("1234.5")
        );
        assert_eq!(v(r#"pmtr_energy_period_kilowatthours{meter="main",period="today"}"#), Some("3.25"));
        assert_eq!(v(r#"pmtr_energy_period_partial{meter="main",period="today"}"#), Some("1"));
        assert_eq!(
            v(r#"pmtr_energy_period_cost{meter="main",period="today",tariff="home",currency="EUR"}"#),
            Some("1.475")
        );
    }

    #[test]
    fn every_family_is_declared_once_with_its_samples_together() {
        let text = render(&Snapshot::assemble(super::super::tests::parts()));
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(seen.insert(name.clone()), "{name} declared twice");
                current = name;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "sample {line} outside its family");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok() || value == "NaN", "{line}");
            }
        }
        assert!(seen.len() > 25, "{}", seen.len());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("a\nb"), "a\\nb");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
    }
}
