//! The storage schema, the same for every writer: how a [`Record`] becomes InfluxDB points
//! (line protocol) and CSV rows. Pure.
//!
//! One reading gives one point per phase it measured:
//!
//! ```text
//! pmtr,gateway=house,meter=kitchen,model=pzem-016,phase=l1 voltage=229.8,current=1.234,power=270.1,energy=1234.567,frequency=50,power_factor=0.95,alarm=0i 1763726400123
//! ```
//!
//! - measurement: `pmtr` (per sink: `measurement = "..."`);
//! - tags: `gateway`, `meter`, `model`, `phase` (`l1 l2 l3 n l12 l23 l31 total`);
//! - fields: every [`Quantity`] by its [`Quantity::field`] name, always a float, except `alarm` and `low_power`
//!   (integer 0/1) and `energy_backwards` (integer 1, only on the points that carry an energy
//!   counter, only when the counter went backwards since the previous reading);
//! - time: the moment the meter's reply arrived, in milliseconds.
//!
//! One state change gives one point, in its own measurement per subject:
//!
//! ```text
//! pmtr_trigger,gateway=house,trigger=overvoltage event="tripped",tripped=1i,latched=0i,dry_run=0i,cause="L1U=254.2" 1763726400123
//! pmtr_relay,gateway=house,relay=boiler event="switched",on=0i,forced=0i,cause="trigger overvoltage" 1763726400123
//! pmtr_neutral,gateway=house,neutral=supply event="fault",fault=1i,was_fault=0i,cause="shift 38.2 V, score 1.27, was suspect" 1763726400123
//! ```
//!
//! - measurement: `<measurement>_trigger`, `<measurement>_relay` and `<measurement>_neutral`;
//! - tags: `gateway`, and `trigger`, `relay` or `neutral` (its name);
//! - fields: `event` (string, [`ChangeEvent::as_str`](crate::reading::ChangeEvent::as_str)) and `cause` (string, newlines made
//!   spaces); trigger: `tripped` (active), `latched` (held), `dry_run`; relay: `on` (active),
//!   `forced` (held); neutral set: `fault` (active), `was_fault` (held); each an integer 0/1;
//! - time: the moment of the change, in milliseconds.
//!
//! A health point (every `gateway.health_interval`) gives one point per meter and per sink:
//!
//! ```text
//! pmtr_bus,gateway=house,bus=house,meter=kitchen requests=120i,replies=118i,timeouts=2i,crc_errors=0i,exceptions=0i,frame_errors=0i,readings=118i,readings_dropped=0i,answering=1i 1763726400123
//! pmtr_sink,gateway=house,sink=influx healthy=1i,points_written=950i,spool_records=0i,spool_bytes=0i,spool_dropped=0i,rejected=0i,in_memory=3i 1763726400123
//! ```
//!
//! - measurement: `<measurement>_bus` and `<measurement>_sink`;
//! - tags: `gateway`, and `bus` and `meter`, or `sink`;
//! - fields: every counter of [`MeterHealth::FIELDS`] or [`SinkHealth::FIELDS`], integers,
//!   cumulative since pmtr started (spool and memory depths are levels).
//!
//! The energy books give a point per lifetime total and per local day and month:
//!
//! ```text
//! pmtr_energy,gateway=house,meter=kitchen,counter=l1_energy kwh=1234.567 1783000000123
//! pmtr_energy_period,gateway=house,meter=kitchen,period=day,start=2026-07-01 kwh=12.5,partial=0i,cost_night=1.25 1782943200000
//! ```
//!
//! - measurement: `<measurement>_energy` and `<measurement>_energy_period`;
//! - a total: tags `meter`, `counter`; field `kwh`; time: when the books were written;
//! - a period: tags `meter`, `period` (`day`, `month`), `start` (its first local date); fields
//!   `kwh`, `partial` (integer 0/1) and `cost_<tariff>` per tariff that applies (energy and
//!   standing charges); time: the period's start (local midnight), so each write replaces the
//!   last.

use crate::reading::{
    EnergyPoint, Health, MeterHealth, Phase, Quantity, Reading, Record, Sample, SinkHealth, StateChange,
    Subject,
};
use std::fmt::Write as _;

/// What must be escaped in a measurement name and in a tag key or value.
const MEASUREMENT_SPECIAL: &[char] = &[',', ' '];
const TAG_SPECIAL: &[char] = &[',', '=', ' '];

/// Line-protocol encoder for one sink's measurement and gateway tag.
#[derive(Debug, Clone)]
pub struct LineProtocol {
    /// Measurement name, escaped, followed by `,gateway=<escaped>`.
    prefix: String,
    /// The same for `<measurement>_trigger` and `<measurement>_relay`.
    trigger_prefix: String,
    relay_prefix: String,
    neutral_prefix: String,
    /// The same for `<measurement>_bus` and `<measurement>_sink`.
    bus_prefix: String,
    sink_prefix: String,
    /// The same for `<measurement>_energy` and `<measurement>_energy_period`.
    energy_prefix: String,
    period_prefix: String,
}

impl LineProtocol {
    pub fn new(measurement: &str, gateway: &str) -> Self {
        let with_gateway = |measurement: &str| {
            let mut prefix = String::new();
            escape_into(&mut prefix, measurement, MEASUREMENT_SPECIAL);
            prefix.push_str(",gateway=");
            escape_into(&mut prefix, gateway, TAG_SPECIAL);
            prefix
        };
        LineProtocol {
            prefix: with_gateway(measurement),
            trigger_prefix: with_gateway(&format!("{measurement}_trigger")),
            relay_prefix: with_gateway(&format!("{measurement}_relay")),
            neutral_prefix: with_gateway(&format!("{measurement}_neutral")),
            bus_prefix: with_gateway(&format!("{measurement}_bus")),
            sink_prefix: with_gateway(&format!("{measurement}_sink")),
            energy_prefix: with_gateway(&format!("{measurement}_energy")),
            period_prefix: with_gateway(&format!("{measurement}_energy_period")),
        }
    }

    /// Appends the points of `record`, one line each, to `out`. Returns the number of points.
    pub fn encode(&self, record: &Record, out: &mut String) -> usize {
        match record {
            Record::Reading(r) => self.encode_reading(r, out),
            Record::Change(c) => self.encode_change(c, out),
            Record::Health(h) => self.encode_health(h, out),
            Record::Energy(e) => self.encode_energy(e, out),
        }
    }

    /// Appends the one point of an energy record to `out`. Returns 1, or 0 for a total that
    /// is not a number (never written).
    pub fn encode_energy(&self, point: &EnergyPoint, out: &mut String) -> usize {
        match point {
            EnergyPoint::Total(t) => {
                if !t.kwh.is_finite() {
                    return 0;
                }
                out.push_str(&self.energy_prefix);
                for (tag, value) in [("meter", &t.meter), ("counter", &t.counter)] {
                    if !value.is_empty() {
                        let _ = write!(out, ",{tag}=");
                        escape_into(out, value, TAG_SPECIAL);
                    }
                }
                let _ = writeln!(out, " kwh={} {}", stored_value(t.kwh), t.time.timestamp_millis());
            }
            EnergyPoint::Period(p) => {
                out.push_str(&self.period_prefix);
                if !p.meter.is_empty() {
                    out.push_str(",meter=");
                    escape_into(out, &p.meter, TAG_SPECIAL);
                }
                let _ = write!(out, ",period={},start={}", p.period.as_str(), p.date);
                let kwh = if p.kwh.is_finite() { stored_value(p.kwh) } else { 0.0 };
                let _ = write!(out, " kwh={kwh},partial={}i", u8::from(p.partial));
                for (tariff, cost) in p.costs.iter().filter(|(_, c)| c.is_finite()) {
                    out.push_str(",cost_");
                    escape_into(out, tariff, TAG_SPECIAL);
                    let _ = write!(out, "={}", stored_value(*cost));
                }
                let _ = writeln!(out, " {}", p.start.timestamp_millis());
            }
        }
        1
    }

    /// Appends the one point of a health record to `out`. Returns 1.
    pub fn encode_health(&self, health: &Health, out: &mut String) -> usize {
        match health {
            Health::Meter(m) => {
                out.push_str(&self.bus_prefix);
                for (tag, value) in [("bus", &m.bus), ("meter", &m.meter)] {
                    if !value.is_empty() {
                        let _ = write!(out, ",{tag}=");
                        escape_into(out, value, TAG_SPECIAL);
                    }
                }
            }
            Health::Sink(s) => {
                out.push_str(&self.sink_prefix);
                if !s.sink.is_empty() {
                    out.push_str(",sink=");
                    escape_into(out, &s.sink, TAG_SPECIAL);
                }
            }
        }
        for (i, (field, value)) in health.fields().into_iter().enumerate() {
            let _ = write!(out, "{}{field}={value}i", if i == 0 { ' ' } else { ',' });
        }
        let _ = writeln!(out, " {}", health.time().timestamp_millis());
        1
    }

    /// Appends the points of `reading`, one line per phase, to `out`. Returns the number of
    /// points. Non-finite values cannot be written in line protocol and are left out.
    pub fn encode_reading(&self, reading: &Reading, out: &mut String) -> usize {
        let mut points = 0;
        let millis = reading.time.timestamp_millis();
        for phase in phases_of(&reading.samples) {
            let mut fields = 0;
            let start = out.len();
            out.push_str(&self.prefix);
            out.push_str(",meter=");
            escape_into(out, &reading.meter, TAG_SPECIAL);
            out.push_str(",model=");
            out.push_str(reading.model.name());
            out.push_str(",phase=");
            out.push_str(phase.tag());
            let mut has_counter = false;
            for s in reading.samples.iter().filter(|s| s.phase == phase) {
                if !s.value.is_finite() {
                    continue;
                }
                out.push(if fields == 0 { ' ' } else { ',' });
                out.push_str(s.quantity.field());
                out.push('=');
                push_value(out, s);
                has_counter |= s.quantity.is_counter();
                fields += 1;
            }
            if fields == 0 {
                out.truncate(start);
                continue;
            }
            if has_counter && reading.quality.energy_backwards {
                out.push_str(",energy_backwards=1i");
            }
            let _ = writeln!(out, " {millis}");
            points += 1;
        }
        points
    }

    /// Appends the one point of a state change to `out`. Returns 1.
    pub fn encode_change(&self, change: &StateChange, out: &mut String) -> usize {
        let (trigger, relay, neutral);
        let (prefix, flags): (&str, &[(&str, bool)]) = match change.subject {
            Subject::Trigger => {
                trigger = [("tripped", change.active), ("latched", change.held), ("dry_run", change.dry_run)];
                (&self.trigger_prefix, &trigger)
            }
            Subject::Relay => {
                relay = [("on", change.active), ("forced", change.held)];
                (&self.relay_prefix, &relay)
            }
            Subject::Neutral => {
                neutral = [("fault", change.active), ("was_fault", change.held)];
                (&self.neutral_prefix, &neutral)
            }
        };
        out.push_str(prefix);
        if !change.name.is_empty() {
            // An empty tag value is not line protocol: a nameless change has no name tag.
            out.push(',');
            out.push_str(change.subject.as_str());
            out.push('=');
            escape_into(out, &change.name, TAG_SPECIAL);
        }
        out.push_str(" event=");
        push_string_field(out, change.event.as_str());
        for (field, on) in flags {
            let _ = write!(out, ",{field}={}i", u8::from(*on));
        }
        out.push_str(",cause=");
        push_string_field(out, &change.cause);
        let _ = writeln!(out, " {}", change.time.timestamp_millis());
        1
    }

    /// The whole batch as one request body.
    pub fn encode_batch(&self, records: &[Record]) -> (String, usize) {
        let mut out = String::with_capacity(records.len() * 160);
        let points = records.iter().map(|r| self.encode(r, &mut out)).sum();
        (out, points)
    }
}

/// The phases present in `samples`, in the fixed [`Phase`] order.
pub fn phases_of(samples: &[Sample]) -> Vec<Phase> {
    let mut phases: Vec<Phase> = samples.iter().map(|s| s.phase).collect();
    phases.sort_unstable();
    phases.dedup();
    phases
}

/// How many points [`LineProtocol::encode`] makes of `record`: a reading one per phase, a
/// state change one.
pub fn point_count(record: &Record) -> usize {
    match record {
        Record::Reading(r) => phases_of(&r.samples).len(),
        Record::Change(_) | Record::Health(_) => 1,
        Record::Energy(EnergyPoint::Total(t)) => usize::from(t.kwh.is_finite()),
        Record::Energy(EnergyPoint::Period(_)) => 1,
    }
}

/// Field types are fixed: the flags `alarm` and `low_power` are integers, everything else a
/// float.
pub fn is_integer_field(q: Quantity) -> bool {
    matches!(q, Quantity::Alarm | Quantity::LowPower)
}

/// The value as stored: rounded to 1e-6 (far below any meter's resolution) so that scaled
/// register values print as the meter shows them (`225.7`, not `225.70000000000002`).
pub fn stored_value(v: f64) -> f64 {
    if v.abs() < 1e9 {
        (v * 1e6).round() / 1e6
    } else {
        v
    }
}

fn push_value(out: &mut String, s: &Sample) {
    if is_integer_field(s.quantity) {
        let _ = write!(out, "{}i", s.value.round() as i64);
    } else {
        // `{}` of an f64 is the shortest text that reads back to the same number; a whole
        // number prints without a dot, which line protocol still reads as a float.
        let _ = write!(out, "{}", stored_value(s.value));
    }
}

/// A line-protocol string field value: in double quotes, `"` and `\` escaped, line breaks
/// (which would end the line) made spaces.
fn push_string_field(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn escape_into(out: &mut String, s: &str, special: &[char]) {
    for c in s.chars() {
        if c == '\\' || special.contains(&c) {
            out.push('\\');
        }
        if c == '\n' {
            out.push_str("\\n");
            continue;
        }
        out.push(c);
    }
}

/// CSV columns after `time,meter,model,phase`: one per quantity, with its unit.
pub fn csv_header(quantities: &[Quantity]) -> String {
    let mut h = String::from("time,meter,model,phase");
    for q in quantities {
        h.push(',');
        h.push_str(q.field());
        if !q.unit().is_empty() {
            let _ = write!(h, " ({})", q.unit());
        }
    }
    h.push_str(",energy_backwards\n");
    h
}

/// The quantities a model reports, in column order: what its decoder gives
/// ([`Model::sample_set`](crate::meter::Model::sample_set)), in the order of [`Quantity::ALL`].
pub fn quantities_of(model: crate::meter::Model) -> Vec<Quantity> {
    let set = model.sample_set(crate::reading::Phase::L1);
    Quantity::ALL.into_iter().filter(|q| set.iter().any(|(_, x)| x == q)).collect()
}

/// One CSV row per point of `reading`, `time` already formatted.
pub fn csv_rows(reading: &Reading, time: &str, columns: &[Quantity], out: &mut String) -> usize {
    let mut rows = 0;
    for phase in phases_of(&reading.samples) {
        let _ = write!(out, "{time},{},{},{}", reading.meter, reading.model.name(), phase.tag());
        let mut has_counter = false;
        for q in columns {
            out.push(',');
            let sample = reading.samples.iter().find(|s| s.phase == phase && s.quantity == *q);
            if let Some(s) = sample.filter(|s| s.value.is_finite()) {
                has_counter |= q.is_counter();
                if is_integer_field(*q) {
                    let _ = write!(out, "{}", s.value.round() as i64);
                } else {
                    let _ = write!(out, "{}", stored_value(s.value));
                }
            }
        }
        out.push(',');
        if has_counter && reading.quality.energy_backwards {
            out.push('1');
        }
        out.push('\n');
        rows += 1;
    }
    rows
}

/// The header of the CSV file of state changes.
pub const CSV_CHANGES_HEADER: &str = "time,subject,name,event,active,held,dry_run,cause\n";

/// The CSV row of a state change, `time` already formatted. The name is quoted when it must
/// be, the cause always (RFC 4180: in double quotes, a quote doubled); line breaks in either
/// are made spaces, so that a row is a line.
pub fn csv_change_row(change: &StateChange, time: &str, out: &mut String) {
    let _ = write!(out, "{time},{},", change.subject.as_str());
    let name_needs_quotes = change.name.contains([',', '"', '\n', '\r']);
    push_csv_text(out, &change.name, name_needs_quotes);
    let bit = |b: bool| u8::from(b);
    let _ = write!(
        out,
        ",{},{},{},{},",
        change.event.as_str(),
        bit(change.active),
        bit(change.held),
        bit(change.dry_run)
    );
    push_csv_text(out, &change.cause, true);
    out.push('\n');
}

/// The header of the CSV file of health points: every counter of both kinds; a row leaves the
/// other kind's columns empty.
pub fn csv_health_header() -> String {
    let mut h = String::from("time,subject,name,bus");
    for f in MeterHealth::FIELDS.iter().chain(&SinkHealth::FIELDS) {
        h.push(',');
        h.push_str(f);
    }
    h.push('\n');
    h
}

/// The CSV row of a health point, `time` already formatted: subject `meter` (name: the
/// meter, bus: its bus) or `sink` (name: the sink, bus empty).
pub fn csv_health_row(health: &Health, time: &str, out: &mut String) {
    let (subject, name, bus, before, after) = match health {
        Health::Meter(m) => ("meter", &m.meter, &*m.bus, 0, SinkHealth::FIELDS.len()),
        Health::Sink(s) => ("sink", &s.sink, "", MeterHealth::FIELDS.len(), 0),
    };
    let _ = write!(out, "{time},{subject},");
    push_csv_text(out, name, name.contains([',', '"', '\n', '\r']));
    out.push(',');
    push_csv_text(out, bus, bus.contains([',', '"', '\n', '\r']));
    out.push_str(&",".repeat(before));
    for (_, v) in health.fields() {
        let _ = write!(out, ",{v}");
    }
    out.push_str(&",".repeat(after));
    out.push('\n');
}

/// The header of the CSV file of energy points.
pub const CSV_ENERGY_HEADER: &str = "time,meter,counter,period,start,kwh,partial,tariff,cost\n";

/// The CSV rows of an energy point, `time` (when the books were written) already formatted:
/// a total gives one row (`counter` and `kwh`); a period one row per tariff (`tariff`,
/// `cost`), or one with those empty when no tariff applies.
pub fn csv_energy_rows(point: &EnergyPoint, time: &str, out: &mut String) {
    let text = |out: &mut String, s: &str| push_csv_text(out, s, s.contains([',', '"', '\n', '\r']));
    let _ = write!(out, "{time},");
    match point {
        EnergyPoint::Total(t) => {
            text(out, &t.meter);
            out.push(',');
            text(out, &t.counter);
            let _ = writeln!(out, ",,,{},,,", stored_value(t.kwh));
        }
        EnergyPoint::Period(p) => {
            let row_start = out.len() - time.len() - 1;
            text(out, &p.meter);
            let _ = write!(
                out,
                ",,{},{},{},{}",
                p.period.as_str(),
                p.date,
                stored_value(p.kwh),
                u8::from(p.partial)
            );
            let head = out[row_start..].to_string();
            if p.costs.is_empty() {
                out.push_str(",,\n");
            }
            for (i, (tariff, cost)) in p.costs.iter().enumerate() {
                if i > 0 {
                    out.push_str(&head);
                }
                out.push(',');
                text(out, tariff);
                let _ = writeln!(out, ",{}", stored_value(*cost));
            }
        }
    }
}

fn push_csv_text(out: &mut String, s: &str, quoted: bool) {
    if quoted {
        out.push('"');
    }
    for c in s.chars() {
        match c {
            '"' if quoted => out.push_str("\"\""),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    if quoted {
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::Model;
    use crate::reading::{ChangeEvent, Quality};
    use chrono::TimeZone;

    fn change(subject: Subject, name: &str, event: ChangeEvent, cause: &str) -> StateChange {
        StateChange {
            time: chrono::Utc.timestamp_millis_opt(1_763_726_400_123).unwrap(),
            subject,
            name: name.into(),
            event,
            active: true,
            held: false,
            dry_run: false,
            cause: cause.into(),
        }
    }

    fn reading(samples: Vec<Sample>) -> Reading {
        Reading {
            meter: "kitchen".into(),
            model: Model::Pzem016,
            time: chrono::Utc.timestamp_millis_opt(1_763_726_400_123).unwrap(),
            samples,
            quality: Quality::default(),
        }
    }

    #[test]
    fn one_line_per_phase_with_fixed_types() {
        let r = reading(vec![
            Sample::new(Phase::L2, Quantity::Voltage, 2257.0 * 0.1),
            Sample::new(Phase::L2, Quantity::Current, 1.0),
            Sample::new(Phase::L2, Quantity::ActiveEnergy, 38.0 / 1000.0),
            Sample::new(Phase::L2, Quantity::Alarm, 1.0),
        ]);
        let lp = LineProtocol::new("pmtr", "house");
        let mut out = String::new();
        assert_eq!(lp.encode_reading(&r, &mut out), 1);
        assert_eq!(
            out,
            "pmtr,gateway=house,meter=kitchen,model=pzem-016,phase=l2 \
             voltage=225.7,current=1,energy=0.038,alarm=1i 1763726400123\n"
        );
    }

    #[test]
    fn three_phase_meter_gives_a_point_per_phase_in_order() {
        let mut r = reading(vec![
            Sample::new(Phase::Total, Quantity::ActiveEnergy, 5.0),
            Sample::new(Phase::L1, Quantity::Voltage, 230.0),
            Sample::new(Phase::L12, Quantity::Voltage, 400.0),
            Sample::new(Phase::N, Quantity::Current, 0.5),
        ]);
        r.model = Model::Rx380;
        r.quality.energy_backwards = true;
        let (body, points) = LineProtocol::new("pmtr", "g").encode_batch(&[r.into()]);
        assert_eq!(points, 4);
        let phases: Vec<&str> =
            body.lines().map(|l| l.split(' ').next().unwrap().rsplit('=').next().unwrap()).collect();
        assert_eq!(phases, ["l1", "n", "l12", "total"]);
        assert!(body.lines().last().unwrap().contains("energy=5,energy_backwards=1i "));
        assert!(!body.lines().next().unwrap().contains("energy_backwards"), "only on counter points");
    }

    #[test]
    fn escaping_and_non_finite_values() {
        let lp = LineProtocol::new("my meas", "gw,1=a b");
        let r = reading(vec![
            Sample::new(Phase::L1, Quantity::Voltage, f64::NAN),
            Sample::new(Phase::L1, Quantity::Current, 2.5),
            Sample::new(Phase::L3, Quantity::Voltage, f64::INFINITY),
        ]);
        let mut out = String::new();
        assert_eq!(lp.encode_reading(&r, &mut out), 1, "a phase with nothing finite is left out");
        assert!(out.starts_with("my\\ meas,gateway=gw\\,1\\=a\\ b,meter=kitchen"), "{out}");
        assert!(out.contains(" current=2.5 "));
    }

    #[test]
    fn stored_values_are_the_meters_digits() {
        assert_eq!(stored_value(2257.0 * 0.1), 225.7);
        assert_eq!(stored_value(123456.789), 123456.789);
        assert_eq!(stored_value(-0.9), -0.9);
        assert_eq!(stored_value(1e12 + 0.5), 1e12 + 0.5);
    }

    #[test]
    fn columns_follow_the_decoders() {
        use Quantity::*;
        assert_eq!(
            quantities_of(Model::Pzem004t),
            [Voltage, Current, ActivePower, ActiveEnergy, Frequency, PowerFactor, Alarm]
        );
        assert_eq!(
            quantities_of(Model::Rx380),
            [
                Voltage,
                Current,
                ActivePower,
                ApparentPower,
                ReactivePower,
                ActiveEnergy,
                ApparentEnergy,
                ReactiveEnergy,
                Frequency,
                PowerFactor
            ]
        );
    }

    #[test]
    fn csv_rows_follow_the_header() {
        let cols = quantities_of(Model::Pzem016);
        let header = csv_header(&cols);
        assert_eq!(
            header,
            "time,meter,model,phase,voltage (V),current (A),power (W),energy (kWh),frequency (Hz),\
             power_factor,alarm,energy_backwards\n"
        );
        let r = reading(vec![
            Sample::new(Phase::L1, Quantity::Voltage, 230.0),
            Sample::new(Phase::L1, Quantity::ActiveEnergy, 1.5),
            Sample::new(Phase::L1, Quantity::Alarm, 0.0),
        ]);
        let mut out = String::new();
        assert_eq!(csv_rows(&r, "2026-11-21T12:00:00.123+01:00", &cols, &mut out), 1);
        assert_eq!(out, "2026-11-21T12:00:00.123+01:00,kitchen,pzem-016,l1,230,,,1.5,,,0,\n");
        assert_eq!(out.split(',').count(), header.split(',').count());
    }

    #[test]
    fn a_trigger_change_is_one_point_of_its_own_measurement() {
        let lp = LineProtocol::new("pmtr", "house");
        let mut c = change(Subject::Trigger, "overvoltage", ChangeEvent::Tripped, "L1U=254.2 L2U=231");
        let mut out = String::new();
        assert_eq!(lp.encode_change(&c, &mut out), 1);
        c.active = false;
        c.held = true;
        c.dry_run = true;
        c.event = ChangeEvent::WouldRelease;
        c.time += chrono::Duration::milliseconds(1500);
        lp.encode(&Record::Change(c), &mut out);
        assert_eq!(
            out,
            "pmtr_trigger,gateway=house,trigger=overvoltage \
             event=\"tripped\",tripped=1i,latched=0i,dry_run=0i,cause=\"L1U=254.2 L2U=231\" 1763726400123\n\
             pmtr_trigger,gateway=house,trigger=overvoltage \
             event=\"would_release\",tripped=0i,latched=1i,dry_run=1i,cause=\"L1U=254.2 L2U=231\" 1763726401623\n"
        );
    }

    #[test]
    fn a_relay_change_is_one_point_of_its_own_measurement() {
        let lp = LineProtocol::new("energy", "house");
        let mut c = change(Subject::Relay, "boiler", ChangeEvent::Switched, "trigger overvoltage");
        c.active = false;
        let mut out = String::new();
        lp.encode_change(&c, &mut out);
        c.event = ChangeEvent::Forced;
        c.active = true;
        c.held = true;
        c.dry_run = true; // never written for a relay
        c.cause = Default::default();
        lp.encode_change(&c, &mut out);
        assert_eq!(
            out,
            "energy_relay,gateway=house,relay=boiler \
             event=\"switched\",on=0i,forced=0i,cause=\"trigger overvoltage\" 1763726400123\n\
             energy_relay,gateway=house,relay=boiler event=\"forced\",on=1i,forced=1i,cause=\"\" 1763726400123\n"
        );
    }

    #[test]
    fn state_change_tags_and_strings_are_escaped_and_stay_on_one_line() {
        let lp = LineProtocol::new("my meas", "gw,1=a b");
        let c =
            change(Subject::Trigger, "a b,c=d\\", ChangeEvent::Latched, "say \"hi\"\nC:\\temp\\\r\nend\\");
        let mut out = String::new();
        lp.encode_change(&c, &mut out);
        assert_eq!(
            out,
            "my\\ meas_trigger,gateway=gw\\,1\\=a\\ b,trigger=a\\ b\\,c\\=d\\\\ \
             event=\"latched\",tripped=1i,latched=0i,dry_run=0i,\
             cause=\"say \\\"hi\\\" C:\\\\temp\\\\  end\\\\\" 1763726400123\n"
        );
        assert_eq!(out.lines().count(), 1);
        // A change without a name has no name tag rather than an empty one.
        let mut out = String::new();
        lp.encode_change(&change(Subject::Relay, "", ChangeEvent::Unforced, ""), &mut out);
        assert!(out.starts_with("my\\ meas_relay,gateway=gw\\,1\\=a\\ b event=\"unforced\","), "{out}");
    }

    #[test]
    fn a_batch_mixes_readings_and_changes() {
        let r = reading(vec![Sample::new(Phase::L1, Quantity::Voltage, 230.0)]);
        let records = [
            Record::Reading(r),
            Record::Change(change(Subject::Relay, "boiler", ChangeEvent::Restored, "start")),
        ];
        let (body, points) = LineProtocol::new("pmtr", "g").encode_batch(&records);
        assert_eq!(points, 2);
        assert_eq!(records.iter().map(point_count).sum::<usize>(), 2);
        let measurements: Vec<&str> = body.lines().map(|l| l.split(',').next().unwrap()).collect();
        assert_eq!(measurements, ["pmtr", "pmtr_relay"]);
    }

    #[test]
    fn csv_change_rows_follow_their_header() {
        let mut out = String::from(CSV_CHANGES_HEADER);
        let mut c =
            change(Subject::Trigger, "overvoltage", ChangeEvent::WouldTrip, "L1U=254.2, \"high\"\r\nagain");
        c.dry_run = true;
        csv_change_row(&c, "2025-11-21T12:00:00.123Z", &mut out);
        let mut c = change(Subject::Relay, "odd,name", ChangeEvent::Unforced, "");
        c.active = false;
        c.held = true;
        csv_change_row(&c, "2025-11-21T12:00:01.000Z", &mut out);
        assert_eq!(
            out,
            "time,subject,name,event,active,held,dry_run,cause\n\
             2025-11-21T12:00:00.123Z,trigger,overvoltage,would_trip,1,0,1,\"L1U=254.2, \"\"high\"\"  again\"\n\
             2025-11-21T12:00:01.000Z,relay,\"odd,name\",unforced,0,1,0,\"\"\n"
        );
    }

    fn meter_health() -> Health {
        Health::Meter(MeterHealth::from_values(
            chrono::Utc.timestamp_millis_opt(1_763_726_400_123).unwrap(),
            "house bus".into(),
            "kitchen".into(),
            [120, 118, 2, 0, 0, 1, 118, 0, 1],
        ))
    }

    fn sink_health() -> Health {
        Health::Sink(SinkHealth::from_values(
            chrono::Utc.timestamp_millis_opt(1_763_726_400_123).unwrap(),
            "influx".into(),
            [0, 950, 12, 1068, 0, 0, 3],
        ))
    }

    #[test]
    fn health_points_are_integers_in_their_own_measurements() {
        let lp = LineProtocol::new("pmtr", "house");
        let mut out = String::new();
        assert_eq!(lp.encode(&Record::Health(meter_health()), &mut out), 1);
        assert_eq!(lp.encode(&Record::Health(sink_health()), &mut out), 1);
        assert_eq!(
            out,
            "pmtr_bus,gateway=house,bus=house\\ bus,meter=kitchen requests=120i,replies=118i,timeouts=2i,\
             crc_errors=0i,exceptions=0i,frame_errors=1i,readings=118i,readings_dropped=0i,answering=1i 1763726400123\n\
             pmtr_sink,gateway=house,sink=influx healthy=0i,points_written=950i,spool_records=12i,\
             spool_bytes=1068i,spool_dropped=0i,rejected=0i,in_memory=3i 1763726400123\n"
        );
        assert_eq!(point_count(&Record::Health(sink_health())), 1);
        let (body, points) = LineProtocol::new("energy", "g").encode_batch(&[Record::Health(meter_health())]);
        assert_eq!(points, 1);
        assert!(body.starts_with("energy_bus,gateway=g,"), "{body}");
    }

    #[test]
    fn csv_health_rows_follow_their_header() {
        let header = csv_health_header();
        assert_eq!(
            header,
            "time,subject,name,bus,requests,replies,timeouts,crc_errors,exceptions,frame_errors,readings,\
             readings_dropped,answering,healthy,points_written,spool_records,spool_bytes,spool_dropped,rejected,\
             in_memory\n"
        );
        let mut out = String::new();
        csv_health_row(&meter_health(), "T", &mut out);
        csv_health_row(&sink_health(), "T", &mut out);
        assert_eq!(
            out,
            "T,meter,kitchen,house bus,120,118,2,0,0,1,118,0,1,,,,,,,\n\
             T,sink,influx,,,,,,,,,,,0,950,12,1068,0,0,3\n"
        );
        for row in out.lines() {
            assert_eq!(row.split(',').count(), header.trim_end().split(',').count(), "{row}");
        }
    }

    fn energy_points() -> [EnergyPoint; 3] {
        use crate::reading::{EnergyPeriod, EnergyTotal, PeriodKind};
        let time = chrono::Utc.timestamp_millis_opt(1_783_000_000_123).unwrap();
        let total =
            EnergyTotal { time, meter: "kitchen".into(), counter: "l1_energy".into(), kwh: 1234.5670000001 };
        let day = EnergyPeriod {
            time,
            start: chrono::Utc.timestamp_millis_opt(1_782_943_200_000).unwrap(),
            date: "2026-07-01".parse().unwrap(),
            meter: "kitchen".into(),
            period: PeriodKind::Day,
            kwh: 12.5,
            partial: false,
            costs: vec![("night rate".into(), 1.25), ("flat".into(), 3.5)],
        };
        let month = EnergyPeriod { period: PeriodKind::Month, partial: true, costs: vec![], ..day.clone() };
        [EnergyPoint::Total(total), EnergyPoint::Period(day), EnergyPoint::Period(month)]
    }

    /// A total is a point at the time of the write; a period one at its start, with a cost
    /// field per tariff (its name escaped as a field key).
    #[test]
    fn energy_points_in_line_protocol() {
        let lp = LineProtocol::new("pmtr", "house");
        let mut out = String::new();
        for p in energy_points() {
            assert_eq!(lp.encode(&Record::Energy(p.clone()), &mut out), 1);
            assert_eq!(point_count(&Record::Energy(p)), 1);
        }
        assert_eq!(
            out,
            "pmtr_energy,gateway=house,meter=kitchen,counter=l1_energy kwh=1234.567 1783000000123\n\
             pmtr_energy_period,gateway=house,meter=kitchen,period=day,start=2026-07-01 kwh=12.5,partial=0i,cost_night\\ rate=1.25,cost_flat=3.5 1782943200000\n\
             pmtr_energy_period,gateway=house,meter=kitchen,period=month,start=2026-07-01 kwh=12.5,partial=1i 1782943200000\n"
        );
        let [EnergyPoint::Total(mut t), ..] = energy_points() else { unreachable!() };
        t.kwh = f64::NAN;
        let nan = Record::Energy(EnergyPoint::Total(t));
        assert_eq!((lp.encode(&nan, &mut String::new()), point_count(&nan)), (0, 0));
    }

    /// One CSV row per total, and per tariff of a period (one with the tariff empty without
    /// any); every row has the header's columns.
    #[test]
    fn energy_points_as_csv_rows() {
        let mut out = String::new();
        for p in energy_points() {
            csv_energy_rows(&p, "T", &mut out);
        }
        assert_eq!(
            out,
            "T,kitchen,l1_energy,,,1234.567,,,\n\
             T,kitchen,,day,2026-07-01,12.5,0,night rate,1.25\n\
             T,kitchen,,day,2026-07-01,12.5,0,flat,3.5\n\
             T,kitchen,,month,2026-07-01,12.5,1,,\n"
        );
        for row in out.lines() {
            assert_eq!(row.split(',').count(), CSV_ENERGY_HEADER.trim_end().split(',').count(), "{row}");
        }
    }
}
