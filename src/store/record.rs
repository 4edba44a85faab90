//! Spool records: one [`Record`] (a reading, a state change, a health or an energy point) in a
//! checksummed, length-prefixed binary record, and a scanner that finds the good records in a
//! file that may have been cut short or damaged. Pure.
//!
//! ```text
//! record  = 0xA7 | len: u16 LE | crc32: u32 LE | payload (len bytes)
//!           crc32 covers the two length bytes and the payload
//! payload = flags: u8, then by bit 7 of flags:
//!   bit 7 clear: a reading (flags bit 0: energy counter went backwards)
//!         | time: i64 LE, nanoseconds since 1970 UTC
//!         | model: u8 (a hand-written model's position in `Model::ALL`, or 0xFF for a model
//!           defined by data: model name length: u8 | model name (UTF-8))
//!         | name length: u8 | name (UTF-8)
//!         | sample count: u8 | per sample: code: u8, value: f64 LE
//!           code = phase << 4 | quantity for quantities 0..15,
//!                  0x80 | phase << 4 | (quantity - 16) for quantities 16..31
//!   bit 7 set: a state change (flags bit 0: active, bit 1: held, bit 2: dry run)
//!         | time: i64 LE, nanoseconds since 1970 UTC
//!         | subject: u8 | event: u8 | name length: u8 | name (UTF-8)
//!         | cause length: u16 LE | cause (UTF-8, at most 1 KiB)
//!   bits 7 and 6 set (flags = 0xC0): a health point
//!         | time: i64 LE, nanoseconds since 1970 UTC
//!         | kind: u8 (0: a meter's polls, 1: a sink)
//!         | meter: bus name length: u8 | bus name | meter name length: u8 | meter name
//!           sink: sink name length: u8 | sink name
//!         | value count: u8 | values: u64 LE each, in the order of
//!           `MeterHealth::FIELDS` or `SinkHealth::FIELDS`
//!   bits 7, 6 and 5 set (flags = 0xE0): a point of the energy books
//!         | time: i64 LE, nanoseconds since 1970 UTC (when the books stood so)
//!         | kind: u8 (0: a lifetime total, 1: a period)
//!         | total: meter name length: u8 | meter name | counter name length: u8 | counter name
//!                | kwh: f64 LE
//!           period: start: i64 LE, nanoseconds | date: i32 LE, days from 0001-01-01
//!                | period: u8 (a position in `PeriodKind::ALL`) | partial: u8
//!                | meter name length: u8 | meter name | kwh: f64 LE
//!                | cost count: u8 | per cost: tariff name length: u8, tariff name, cost: f64 LE
//! ```
//!
//! A model defined by data (a meter definition) is recorded by its name, so a spool replays
//! whatever definitions are loaded then; a spool of earlier versions (model positions only)
//! replays as before, and an earlier pmtr skips a reading by name (unknown model) and logs it.
//! Hand-written models, phase, quantity, subject and event are positions in [`Model::ALL`], [`Phase::ALL`],
//! [`Quantity::ALL`], [`Subject::ALL`] and [`ChangeEvent::ALL`]. Unknown bits of the flags byte
//! are ignored.
//!
//! A PZEM reading (7 samples, a 7-letter name) takes 7 + 1 + 8 + 1 + 1 + 7 + 1 + 7 × 9 = 89
//! bytes; a state change with an 11-letter name and a 20-byte cause 7 + 1 + 8 + 2 + 1 + 11 + 2 +
//! 20 = 52. Reading records are the same as before state changes existed, so older spools
//! replay; an older pmtr, which ignores bit 7, must not replay a spool holding state changes.
//! Health points came later still: a state change never has bit 6 set, so readings and state
//! changes are written as before, and a health point (a PZEM meter on bus `house`: 7 + 1 + 8 + 1 +
//! 6 + 6 + 1 + 9 × 8 = 102 bytes) is told apart by bits 7 and 6. A pmtr from before health points
//! must not replay a spool holding them: it would take them for state changes (most of them
//! unreadable, skipped and logged). Energy points came after health points: neither a health
//! point (flags exactly 0xC0) nor a state change ever has bit 5 set with bits 7 and 6, so every
//! older record decodes as before; a pmtr from before energy points must not replay a spool
//! holding them (it takes them for health points of an unknown kind: skipped and logged).

use crate::meter::Model;
use crate::reading::{
    ChangeEvent, EnergyPeriod, EnergyPoint, EnergyTotal, Health, MeterHealth, PeriodKind, Phase, Quality,
    Quantity, Reading, Record, Sample, SinkHealth, StateChange, Subject,
};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

pub const MAGIC: u8 = 0xA7;
pub const HEADER: usize = 7;
/// The longest payload a record may have. The encoder's longest is 2,563 bytes (a health point
/// with two 255-byte names and 255 values; a reading with a 255-byte name and 255 samples is
/// 2,562), so a header claiming more is no record: this bounds what a resync through damage
/// checks at each position to 4 KiB instead of 64.
pub const MAX_PAYLOAD: usize = 4096;
/// Flags bit 7: the payload is a state change.
pub const CHANGE_FLAG: u8 = 0x80;
/// Flags bits 7 and 6: the payload is a health point.
pub const HEALTH_FLAGS: u8 = 0xC0;
/// Flags bits 7, 6 and 5: the payload is a point of the energy books.
pub const ENERGY_FLAGS: u8 = 0xE0;
/// The most tariffs a period point keeps in the spool (so that it fits [`MAX_PAYLOAD`] even
/// with 255-byte names).
pub const MAX_COSTS: usize = 12;
/// The longest cause kept; a longer one is cut at a character boundary.
pub const MAX_CAUSE: usize = 1024;

const PHASES: [Phase; 8] = Phase::ALL;
const QUANTITIES: [Quantity; 25] = Quantity::ALL;

/// The code byte of a sample: phase in bits 4..6, the quantity's position in the low nibble,
/// and bit 7 for the quantities past the sixteenth (so records of the first sixteen are the
/// same as before there were more).
fn sample_code(phase: Phase, quantity: Quantity) -> u8 {
    let q = index_of(&QUANTITIES, &quantity);
    let high = if q >= 16 { 0x80 } else { 0 };
    high | index_of(&PHASES, &phase) << 4 | (q & 15)
}

fn sample_of(code: u8) -> Result<(Phase, Quantity), PayloadError> {
    let phase = lookup(&PHASES, (code >> 4) & 7, "unknown phase")?;
    let q = (code & 15) + if code & 0x80 != 0 { 16 } else { 0 };
    Ok((phase, lookup(&QUANTITIES, q, "unknown quantity")?))
}

/// The model byte of a reading of a model defined by data: its name follows.
const MODEL_BY_NAME: u8 = 0xFF;

fn index_of<T: PartialEq>(all: &[T], x: &T) -> u8 {
    all.iter().position(|a| a == x).expect("every variant is listed") as u8
}

/// The longest start of `s` of at most `max` bytes that ends at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Appends the record of `record` to `out`. Names longer than 255 bytes and more than 255
/// samples cannot occur (config names are short, meters have a fixed sample set); they are
/// cut rather than refused so that a record is never lost. So is a cause over [`MAX_CAUSE`].
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[MAGIC, 0, 0, 0, 0, 0, 0]);
    match record {
        Record::Reading(r) => encode_reading(r, out),
        Record::Change(c) => encode_change(c, out),
        Record::Health(h) => encode_health(h, out),
        Record::Energy(e) => encode_energy(e, out),
    }
    let len = (out.len() - start - HEADER) as u16;
    out[start + 1..start + 3].copy_from_slice(&len.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&out[start + HEADER..]);
    out[start + 3..start + 7].copy_from_slice(&h.finalize().to_le_bytes());
}

fn push_time(time: &DateTime<Utc>, out: &mut Vec<u8>) {
    let nanos = time.timestamp_nanos_opt().unwrap_or(i64::MAX);
    out.extend_from_slice(&nanos.to_le_bytes());
}

fn push_name(name: &str, out: &mut Vec<u8>) {
    let name = cut(name, 255);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

fn encode_reading(reading: &Reading, out: &mut Vec<u8>) {
    out.push(u8::from(reading.quality.energy_backwards));
    push_time(&reading.time, out);
    match reading.model {
        Model::Defined(d) => {
            out.push(MODEL_BY_NAME);
            push_name(d.name(), out);
        }
        m => out.push(index_of(&Model::ALL, &m)),
    }
    push_name(&reading.meter, out);
    let samples = &reading.samples[..reading.samples.len().min(255)];
    out.push(samples.len() as u8);
    for s in samples {
        out.push(sample_code(s.phase, s.quantity));
        out.extend_from_slice(&s.value.to_le_bytes());
    }
}

fn encode_change(change: &StateChange, out: &mut Vec<u8>) {
    out.push(
        CHANGE_FLAG | u8::from(change.active) | u8::from(change.held) << 1 | u8::from(change.dry_run) << 2,
    );
    push_time(&change.time, out);
    out.push(index_of(&Subject::ALL, &change.subject));
    out.push(index_of(&ChangeEvent::ALL, &change.event));
    push_name(&change.name, out);
    let cause = cut(&change.cause, MAX_CAUSE);
    out.extend_from_slice(&(cause.len() as u16).to_le_bytes());
    out.extend_from_slice(cause.as_bytes());
}

fn encode_health(health: &Health, out: &mut Vec<u8>) {
    out.push(HEALTH_FLAGS);
    push_time(&health.time(), out);
    let values: &[u64] = match health {
        Health::Meter(m) => {
            out.push(0);
            push_name(&m.bus, out);
            push_name(&m.meter, out);
            &m.values()
        }
        Health::Sink(s) => {
            out.push(1);
            push_name(&s.sink, out);
            &s.values()
        }
    };
    out.push(values.len() as u8);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn encode_energy(point: &EnergyPoint, out: &mut Vec<u8>) {
    out.push(ENERGY_FLAGS);
    push_time(&point.time(), out);
    match point {
        EnergyPoint::Total(t) => {
            out.push(0);
            push_name(&t.meter, out);
            push_name(&t.counter, out);
            out.extend_from_slice(&t.kwh.to_le_bytes());
        }
        EnergyPoint::Period(p) => {
            out.push(1);
            push_time(&p.start, out);
            out.extend_from_slice(&chrono::Datelike::num_days_from_ce(&p.date).to_le_bytes());
            out.push(index_of(&PeriodKind::ALL, &p.period));
            out.push(u8::from(p.partial));
            push_name(&p.meter, out);
            out.extend_from_slice(&p.kwh.to_le_bytes());
            let costs = &p.costs[..p.costs.len().min(MAX_COSTS)];
            out.push(costs.len() as u8);
            for (tariff, cost) in costs {
                push_name(tariff, out);
                out.extend_from_slice(&cost.to_le_bytes());
            }
        }
    }
}

/// Why a payload with a good checksum still is not a record (written by a newer version).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable spool record: {0}")]
pub struct PayloadError(&'static str);

/// Meter, trigger and relay names repeat in every record; one `Arc<str>` per name is shared
/// by all records.
#[derive(Debug, Default)]
pub struct Names(HashMap<Box<str>, Arc<str>>, HashMap<Box<str>, Model>);

impl Names {
    /// The model a record names, looked up once per name.
    fn model(&mut self, name: &str) -> Model {
        if let Some(m) = self.1.get(name) {
            return *m;
        }
        let m = crate::meter::definition::resolve(name);
        self.1.insert(name.into(), m);
        m
    }

    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(a) = self.0.get(name) {
            return a.clone();
        }
        let a: Arc<str> = name.into();
        self.0.insert(name.into(), a.clone());
        a
    }
}

/// The bytes of a payload not read yet.
struct Payload<'a>(&'a [u8]);

impl<'a> Payload<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PayloadError> {
        if self.0.len() < n {
            return Err(PayloadError("too short"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, PayloadError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PayloadError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn time(&mut self) -> Result<DateTime<Utc>, PayloadError> {
        Ok(DateTime::<Utc>::from_timestamp_nanos(i64::from_le_bytes(self.array()?)))
    }

    fn str(&mut self, len: usize, what: &'static str) -> Result<&'a str, PayloadError> {
        std::str::from_utf8(self.take(len)?).map_err(|_| PayloadError(what))
    }

    fn end(&self) -> Result<(), PayloadError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(PayloadError("trailing bytes"))
        }
    }
}

fn lookup<T: Copy>(all: &[T], i: u8, what: &'static str) -> Result<T, PayloadError> {
    all.get(usize::from(i)).copied().ok_or(PayloadError(what))
}

/// Decodes a payload (the bytes after the header).
pub fn decode(payload: &[u8], names: &mut Names) -> Result<Record, PayloadError> {
    let mut p = Payload(payload);
    let flags = p.u8()?;
    if flags == ENERGY_FLAGS {
        decode_energy(p, names).map(Record::Energy)
    } else if flags & HEALTH_FLAGS == HEALTH_FLAGS {
        decode_health(p, names).map(Record::Health)
    } else if flags & CHANGE_FLAG != 0 {
        decode_change(flags, p, names).map(Record::Change)
    } else {
        decode_reading(flags, p, names).map(Record::Reading)
    }
}

fn decode_reading(flags: u8, mut p: Payload<'_>, names: &mut Names) -> Result<Reading, PayloadError> {
    let time = p.time()?;
    let model = match p.u8()? {
        MODEL_BY_NAME => {
            let len = usize::from(p.u8()?);
            let name = p.str(len, "model name")?;
            names.model(name)
        }
        i => lookup(&Model::ALL, i, "unknown model")?,
    };
    let name_len = usize::from(p.u8()?);
    let meter = names.get(p.str(name_len, "meter name")?);
    let count = usize::from(p.u8()?);
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let code = p.u8()?;
        let (phase, quantity) = sample_of(code)?;
        let value = f64::from_le_bytes(p.array()?);
        samples.push(Sample { phase, quantity, value });
    }
    p.end()?;
    Ok(Reading { meter, model, time, samples, quality: Quality { energy_backwards: flags & 1 != 0 } })
}

fn decode_change(flags: u8, mut p: Payload<'_>, names: &mut Names) -> Result<StateChange, PayloadError> {
    let time = p.time()?;
    let subject = lookup(&Subject::ALL, p.u8()?, "unknown subject")?;
    let event = lookup(&ChangeEvent::ALL, p.u8()?, "unknown event")?;
    let name_len = usize::from(p.u8()?);
    let name = names.get(p.str(name_len, "trigger or relay name")?);
    let cause_len = usize::from(u16::from_le_bytes(p.array()?));
    let cause = p.str(cause_len, "cause")?.into();
    p.end()?;
    Ok(StateChange {
        time,
        subject,
        name,
        event,
        active: flags & 1 != 0,
        held: flags & 2 != 0,
        dry_run: flags & 4 != 0,
        cause,
    })
}

fn health_values<const N: usize>(p: &mut Payload<'_>) -> Result<[u64; N], PayloadError> {
    if usize::from(p.u8()?) != N {
        return Err(PayloadError("health value count"));
    }
    let mut values = [0; N];
    for v in &mut values {
        *v = u64::from_le_bytes(p.array()?);
    }
    Ok(values)
}

fn decode_health(mut p: Payload<'_>, names: &mut Names) -> Result<Health, PayloadError> {
    let time = p.time()?;
    let health = match p.u8()? {
        0 => {
            let len = usize::from(p.u8()?);
            let bus = names.get(p.str(len, "bus name")?);
            let len = usize::from(p.u8()?);
            let meter = names.get(p.str(len, "meter name")?);
            Health::Meter(MeterHealth::from_values(time, bus, meter, health_values(&mut p)?))
        }
        1 => {
            let len = usize::from(p.u8()?);
            let sink = names.get(p.str(len, "sink name")?);
            Health::Sink(SinkHealth::from_values(time, sink, health_values(&mut p)?))
        }
        _ => return Err(PayloadError("unknown health kind")),
    };
    p.end()?;
    Ok(health)
}

fn decode_energy(mut p: Payload<'_>, names: &mut Names) -> Result<EnergyPoint, PayloadError> {
    let time = p.time()?;
    let point = match p.u8()? {
        0 => {
            let len = usize::from(p.u8()?);
            let meter = names.get(p.str(len, "meter name")?);
            let len = usize::from(p.u8()?);
            let counter = names.get(p.str(len, "counter name")?);
            let kwh = f64::from_le_bytes(p.array()?);
            EnergyPoint::Total(EnergyTotal { time, meter, counter, kwh })
        }
        1 => {
            let start = p.time()?;
            let date = chrono::NaiveDate::from_num_days_from_ce_opt(i32::from_le_bytes(p.array()?))
                .ok_or(PayloadError("period date"))?;
            let period = lookup(&PeriodKind::ALL, p.u8()?, "unknown period")?;
            let partial = p.u8()? != 0;
            let len = usize::from(p.u8()?);
            let meter = names.get(p.str(len, "meter name")?);
            let kwh = f64::from_le_bytes(p.array()?);
            let count = usize::from(p.u8()?);
            let mut costs = Vec::with_capacity(count);
            for _ in 0..count {
                let len = usize::from(p.u8()?);
                let tariff = names.get(p.str(len, "tariff name")?);
                costs.push((tariff, f64::from_le_bytes(p.array()?)));
            }
            EnergyPoint::Period(EnergyPeriod { time, start, date, meter, period, kwh, partial, costs })
        }
        _ => return Err(PayloadError("unknown energy point kind")),
    };
    p.end()?;
    Ok(point)
}

/// What the scanner finds at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A record whose checksum holds: `range` is the whole record, `payload` its payload.
    Record { range: Range<usize>, payload: Range<usize> },
    /// Bytes that are no record, up to the next good record.
    Damage(Range<usize>),
    /// The buffer ends inside what may be a record: with more bytes it could complete (a
    /// reader of a growing file waits), in a finished file it is a torn write.
    Incomplete(Range<usize>),
}

/// The record starting at `pos`, if one is complete and its checksum holds. `Err(true)` when
/// the buffer ends before the record could be checked.
fn record_at(buf: &[u8], pos: usize) -> Result<Item, bool> {
    let rest = &buf[pos..];
    if rest.is_empty() || rest[0] != MAGIC {
        return Err(false);
    }
    if rest.len() < HEADER {
        return Err(true);
    }
    let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
    if len > MAX_PAYLOAD {
        return Err(false);
    }
    if rest.len() < HEADER + len {
        return Err(true);
    }
    let crc = u32::from_le_bytes(rest[3..7].try_into().expect("4 bytes"));
    let mut h = crc32fast::Hasher::new();
    h.update(&rest[1..3]);
    h.update(&rest[HEADER..HEADER + len]);
    if h.finalize() != crc {
        return Err(false);
    }
    Ok(Item::Record { range: pos..pos + HEADER + len, payload: pos + HEADER..pos + HEADER + len })
}

/// Walks `buf` from `pos`: good records, and the damage between them. After damage the
/// scanner looks for the next position where a whole record with a good checksum starts, so
/// a flipped bit costs the one record it hit.
pub fn next_item(buf: &[u8], pos: usize) -> Option<Item> {
    if pos >= buf.len() {
        return None;
    }
    match record_at(buf, pos) {
        Ok(item) => Some(item),
        Err(incomplete) => {
            let mut p = pos + 1;
            while p < buf.len() {
                if record_at(buf, p).is_ok() {
                    return Some(Item::Damage(pos..p));
                }
                p += 1;
            }
            // No good record follows. A header that promises more bytes than are there may
            // still become a record.
            if incomplete {
                Some(Item::Incomplete(pos..buf.len()))
            } else {
                Some(Item::Damage(pos..buf.len()))
            }
        }
    }
}

/// All items of a finished buffer.
pub fn scan(buf: &[u8]) -> Vec<Item> {
    let mut items = Vec::new();
    let mut pos = 0;
    while let Some(item) = next_item(buf, pos) {
        pos = match &item {
            Item::Record { range, .. } => range.end,
            Item::Damage(r) | Item::Incomplete(r) => r.end,
        };
        items.push(item);
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn reading(i: u32) -> Record {
        Record::Reading(Reading {
            meter: format!("meter{}", i % 3).into(),
            model: Model::ALL[i as usize % 4],
            time: Utc.timestamp_nanos(1_763_726_400_123_456_789 + i64::from(i)),
            samples: vec![
                Sample::new(Phase::L1, Quantity::Voltage, 230.0 + f64::from(i) * 0.1),
                Sample::new(Phase::Total, Quantity::ActiveEnergy, 1e6 + f64::from(i)),
                Sample::new(Phase::L31, Quantity::Alarm, 1.0),
            ],
            quality: Quality { energy_backwards: i % 2 == 0 },
        })
    }

    /// Every subject, event and flag combination as `i` goes from 0 to 191.
    fn change(i: u32) -> Record {
        let i = i as usize;
        Record::Change(StateChange {
            time: Utc.timestamp_nanos(1_763_726_400_987_654_321 + i as i64),
            subject: Subject::ALL[i % 2],
            name: ["overvoltage", "boiler", "ünïcode-name"][i % 3].into(),
            event: ChangeEvent::ALL[(i / 2) % ChangeEvent::ALL.len()],
            active: i & 8 != 0,
            held: i & 16 != 0,
            dry_run: i & 32 != 0,
            cause: if i % 5 == 0 { String::new() } else { format!("L1U=254.{i} \"quoted\"\nline 2 ⚡") }
                .into(),
        })
    }

    fn records(n: u32) -> Vec<u8> {
        let mut buf = Vec::new();
        for i in 0..n {
            encode(&reading(i), &mut buf);
        }
        buf
    }

    fn decoded(buf: &[u8]) -> Vec<Record> {
        let mut names = Names::default();
        scan(buf)
            .into_iter()
            .filter_map(|it| match it {
                Item::Record { payload, .. } => Some(decode(&buf[payload], &mut names).unwrap()),
                _ => None,
            })
            .collect()
    }

    /// readings and changes in turn: `[r0, c0, r1, c1, ...]`, with where each record starts.
    fn mixed(n: u32) -> (Vec<Record>, Vec<u8>, Vec<usize>) {
        let all: Vec<Record> = (0..n).flat_map(|i| [reading(i), change(i)]).collect();
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for r in &all {
            starts.push(buf.len());
            encode(r, &mut buf);
        }
        starts.push(buf.len());
        (all, buf, starts)
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A reading of a model defined by data records the model by name and replays as that
    /// model; a name no definition has any more replays as a model known by name only, its
    /// samples kept.
    #[test]
    fn a_reading_of_a_definition_records_its_model_by_name() {
        let sdm = crate::meter::definition::resolve("sdm630");
        assert!(crate::meter::definition::of(sdm).is_some(), "the built-in sdm630 resolves");
        let gone = Model::named("my-own-meter");
        for model in [sdm, gone] {
            let r = Record::Reading(Reading {
                meter: "main".into(),
                model,
                time: Utc.timestamp_nanos(1_763_726_400_000_000_000),
                samples: vec![Sample::new(Phase::L2, Quantity::ImportActiveEnergy, 1234.5)],
                quality: Quality::default(),
            });
            let mut buf = Vec::new();
            encode(&r, &mut buf);
            assert!(buf.windows(model.name().len()).any(|w| w == model.name().as_bytes()), "{}", hex(&buf));
            let back = decoded(&buf);
            assert_eq!(back, vec![r]);
            let Record::Reading(back) = &back[0] else { unreachable!() };
            assert_eq!(back.model.name(), model.name());
        }
    }

    #[test]
    fn the_longest_records_fit_and_a_longer_header_is_damage_not_a_record_to_wait_for() {
        let long = "x".repeat(300);
        let all: Vec<(Phase, Quantity)> =
            PHASES.iter().flat_map(|p| QUANTITIES.iter().map(move |q| (*p, *q))).collect();
        let samples = all.iter().cycle().take(300).map(|(p, q)| Sample::new(*p, *q, 1.0)).collect();
        let reading = Record::Reading(Reading {
            meter: long.as_str().into(),
            model: Model::Rx380,
            time: Utc::now(),
            samples,
            quality: Quality::default(),
        });
        let Record::Change(c) = change(1) else { unreachable!() };
        let change =
            Record::Change(StateChange { name: long.as_str().into(), cause: "y".repeat(5000).into(), ..c });
        for r in [reading, change] {
            let mut out = vec![];
            encode(&r, &mut out);
            assert!(out.len() - HEADER <= MAX_PAYLOAD, "{} bytes", out.len() - HEADER);
            assert!(matches!(scan(&out)[..], [Item::Record { .. }]));
        }
        // A header claiming more than any record can hold is damage at once: a reader of a
        // growing file does not wait for it, and a resync does not check 64 KiB behind it.
        let mut buf = vec![MAGIC, 0x01, 0x10, 0, 0, 0, 0];
        buf.extend(records(1));
        match &scan(&buf)[..] {
            [Item::Damage(d), Item::Record { .. }] => assert_eq!(d.clone(), 0..7),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_trip_is_exact() {
        let buf = records(10);
        let back = decoded(&buf);
        assert_eq!(back, (0..10).map(reading).collect::<Vec<_>>());
    }

    #[test]
    fn readings_and_changes_round_trip_exactly() {
        let (all, buf, _) = mixed(192);
        assert_eq!(decoded(&buf), all);
        for e in ChangeEvent::ALL {
            assert!(all.iter().any(|r| matches!(r, Record::Change(c) if c.event == e)));
        }
    }

    #[test]
    fn reading_records_are_byte_for_byte_as_before_state_changes() {
        // Written by the encoder before state changes existed: old spools must still read.
        let r = Record::Reading(Reading {
            meter: "kitchen".into(),
            model: Model::Pzem016,
            time: Utc.timestamp_nanos(1_763_726_400_123_456_789),
            samples: vec![
                Sample::new(Phase::L2, Quantity::Voltage, 229.8),
                Sample::new(Phase::Total, Quantity::ActiveEnergy, 1234.567),
            ],
            quality: Quality { energy_backwards: true },
        });
        let old = "a72500f4efde7a01154d56f8d0037a1802076b69746368656e02109a99999999b96c407554e3a59b444a9340";
        let mut buf = Vec::new();
        encode(&r, &mut buf);
        assert_eq!(hex(&buf), old);
        assert_eq!(decoded(&buf), [r]);
    }

    #[test]
    fn state_change_layout() {
        let c = Record::Change(StateChange {
            time: Utc.timestamp_nanos(1_763_726_400_123_456_789),
            subject: Subject::Relay,
            name: "boiler-pump".into(),
            event: ChangeEvent::Forced,
            active: true,
            held: true,
            dry_run: false,
            cause: "manual (uid 1000) é".into(),
        });
        let mut buf = Vec::new();
        encode(&c, &mut buf);
        assert_eq!(buf.len(), 52, "the size the module documentation states");
        let payload = &buf[HEADER..];
        assert_eq!(payload[0], 0x83, "bit 7: a change; bits 0 and 1: active and held");
        assert_eq!(payload[1..9], 1_763_726_400_123_456_789i64.to_le_bytes());
        assert_eq!(payload[9..11], [1, 10], "Subject::ALL[1], ChangeEvent::ALL[10]");
        assert_eq!(payload[11], 11);
        assert_eq!(&payload[12..23], b"boiler-pump");
        assert_eq!(payload[23..25], [20, 0]);
        assert_eq!(&payload[25..], "manual (uid 1000) é".as_bytes());
        assert_eq!(decoded(&buf), [c]);
    }

    #[test]
    fn a_long_cause_and_name_are_cut_at_a_character_boundary() {
        let Record::Change(mut c) = change(1) else { unreachable!() };
        c.cause = format!("x{}", "é".repeat(600)).into(); // 1201 bytes
        c.name = "ü".repeat(200).into(); // 400 bytes
        let mut buf = Vec::new();
        encode(&Record::Change(c.clone()), &mut buf);
        let Record::Change(back) = &decoded(&buf)[0] else { panic!("not a change") };
        assert_eq!(back.cause.len(), 1023, "1 + 511 × 2 bytes: the last whole character within 1 KiB");
        assert!(c.cause.starts_with(back.cause.as_str()));
        assert_eq!(back.name.len(), 254);
        assert!(c.name.starts_with(&*back.name));
        assert_eq!((back.time, back.event, back.active), (c.time, c.event, c.active));
    }

    #[test]
    fn unknown_subject_or_event_or_bad_text_is_a_payload_error() {
        let mut buf = Vec::new();
        encode(&change(3), &mut buf);
        let payload = buf[HEADER..].to_vec();
        let mut names = Names::default();
        assert!(decode(&payload, &mut names).is_ok());
        let with = |at: usize, byte: u8| {
            let mut p = payload.clone();
            p[at] = byte;
            decode(&p, &mut Names::default())
        };
        assert_eq!(with(9, Subject::ALL.len() as u8), Err(PayloadError("unknown subject")));
        assert_eq!(with(9, 0xff), Err(PayloadError("unknown subject")));
        assert_eq!(with(10, ChangeEvent::ALL.len() as u8), Err(PayloadError("unknown event")));
        assert_eq!(with(12, 0xff), Err(PayloadError("trigger or relay name")));
        let cause_at = 12 + usize::from(payload[11]) + 2;
        assert_eq!(with(cause_at, 0xc3), Err(PayloadError("cause")));
        assert!(with(11, payload[11] + 1).is_err(), "a name length that eats into the cause");
        for len in 0..payload.len() {
            assert!(decode(&payload[..len], &mut names).is_err(), "cut to {len} bytes");
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert_eq!(decode(&longer, &mut names), Err(PayloadError("trailing bytes")));
    }

    #[test]
    fn pzem_reading_size() {
        let r = Record::Reading(Reading {
            meter: "kitchen".into(),
            model: Model::Pzem016,
            time: Utc::now(),
            samples: (0..7).map(|i| Sample::new(Phase::L1, QUANTITIES[i], 1.0)).collect(),
            quality: Quality::default(),
        });
        let mut buf = Vec::new();
        encode(&r, &mut buf);
        assert_eq!(buf.len(), 89, "the size the module documentation states");
    }

    #[test]
    fn a_torn_tail_is_incomplete_and_the_rest_survives() {
        let buf = records(5);
        let one = buf.len() / 5;
        for cut in 1..one {
            let torn = &buf[..buf.len() - cut];
            let items = scan(torn);
            assert_eq!(decoded(torn).len(), 4, "cut {cut}");
            assert!(
                matches!(items.last(), Some(Item::Incomplete(_)) | Some(Item::Damage(_))),
                "cut {cut}: {items:?}"
            );
        }
    }

    #[test]
    fn a_torn_state_change_at_the_end_costs_only_itself() {
        let (all, buf, starts) = mixed(3);
        let last = starts[starts.len() - 2];
        for end in last + 1..buf.len() {
            assert_eq!(decoded(&buf[..end]), all[..all.len() - 1], "cut at {end}");
        }
    }

    #[test]
    fn a_flipped_bit_costs_one_record() {
        let buf = records(5);
        let one = buf.len() / 5;
        for byte in 0..one {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[2 * one + byte] ^= 1 << bit;
                let back = decoded(&bad);
                assert_eq!(back.len(), 4, "byte {byte} bit {bit}");
                assert!(!back.contains(&reading(2)));
                assert!(scan(&bad).iter().any(|i| matches!(i, Item::Damage(_))));
            }
        }
    }

    #[test]
    fn damage_in_a_state_change_costs_it_alone_and_the_scanner_resyncs() {
        let (all, buf, starts) = mixed(3);
        // The second change (index 3) lies between readings 1 and 2.
        let (from, to) = (starts[3], starts[4]);
        for byte in from..to {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                let mut want = all.clone();
                want.remove(3);
                assert_eq!(decoded(&bad), want, "byte {byte} bit {bit}");
            }
        }
        // Garbage in its place, and a change cut in half before the next record.
        let mut bad = buf[..from].to_vec();
        bad.extend_from_slice(b"\xa7\xa7\x00garbage");
        bad.extend_from_slice(&buf[from..from + (to - from) / 2]);
        bad.extend_from_slice(&buf[to..]);
        let mut want = all.clone();
        want.remove(3);
        assert_eq!(decoded(&bad), want);
    }

    fn health(i: u32) -> Record {
        let time = Utc.timestamp_nanos(1_763_726_401_000_000_000 + i64::from(i));
        let n = u64::from(i);
        if i % 2 == 0 {
            let v = [n, n + 1, n + 2, n + 3, n + 4, n + 5, u64::MAX - n, 0, u64::from(i % 4 == 0)];
            Record::Health(Health::Meter(MeterHealth::from_values(
                time,
                ["house", "ünï"][i as usize % 2].into(),
                format!("main{}", i % 3).into(),
                v,
            )))
        } else {
            let v = [u64::from(i % 3 == 0), n * 7, n, n * 89, 0, n / 2, 3];
            Record::Health(Health::Sink(SinkHealth::from_values(time, "influx".into(), v)))
        }
    }

    #[test]
    fn health_points_round_trip_with_readings_and_changes() {
        let all: Vec<Record> =
            (0..40).flat_map(|i| [reading(i), health(i), change(i), health(i + 1)]).collect();
        let mut buf = Vec::new();
        for r in &all {
            encode(r, &mut buf);
        }
        assert_eq!(decoded(&buf), all);
    }

    fn energy_points() -> Vec<Record> {
        let time = Utc.timestamp_nanos(1_783_000_000_123_456_789);
        let total = EnergyTotal { time, meter: "mainA".into(), counter: "l1_energy".into(), kwh: 1234.567 };
        let period = EnergyPeriod {
            time,
            start: Utc.timestamp_nanos(1_782_943_200_000_000_000),
            date: "2026-07-01".parse().unwrap(),
            meter: "mainA".into(),
            period: PeriodKind::Day,
            kwh: 12.5,
            partial: true,
            costs: vec![("night".into(), 1.25), ("flat".into(), 3.5)],
        };
        let month =
            EnergyPeriod { period: PeriodKind::Month, partial: false, costs: vec![], ..period.clone() };
        [EnergyPoint::Total(total), EnergyPoint::Period(period), EnergyPoint::Period(month)]
            .into_iter()
            .map(Record::Energy)
            .collect()
    }

    /// Energy points go through the spool and come back the same, beside the older kinds.
    #[test]
    fn energy_points_round_trip_beside_readings_changes_and_health() {
        let mut all = energy_points();
        all.extend([reading(1), change(2), health(3)]);
        let mut buf = Vec::new();
        for r in &all {
            encode(r, &mut buf);
        }
        assert_eq!(decoded(&buf), all);
        let mut one = Vec::new();
        encode(&all[0], &mut one);
        assert_eq!(one[HEADER], ENERGY_FLAGS);
        assert_eq!(one.len(), HEADER + 1 + 8 + 1 + 6 + 10 + 8, "a total: 41 bytes");
        // The longest period point still fits.
        let Record::Energy(EnergyPoint::Period(p)) = &all[1] else { unreachable!() };
        let long: Arc<str> = "x".repeat(300).into();
        let costs = (0..300).map(|_| (long.clone(), 1.0)).collect();
        let big =
            Record::Energy(EnergyPoint::Period(EnergyPeriod { meter: long.clone(), costs, ..p.clone() }));
        let mut out = Vec::new();
        encode(&big, &mut out);
        assert!(out.len() - HEADER <= MAX_PAYLOAD, "{} bytes", out.len() - HEADER);
        let Record::Energy(EnergyPoint::Period(back)) = &decoded(&out)[0] else { panic!() };
        assert_eq!(back.costs.len(), MAX_COSTS);
        // A damaged kind or period is an error, not a guess.
        let mut bad = one[HEADER..].to_vec();
        bad[9] = 7;
        assert_eq!(decode(&bad, &mut Names::default()), Err(PayloadError("unknown energy point kind")));
    }

    /// A spool written before energy points existed replays as before: these bytes are a
    /// reading, a state change and a health point as the previous version wrote them.
    #[test]
    fn a_spool_from_before_energy_points_still_replays() {
        let health = "a75f0055b1568cc0154d56f8d0037a180005686f757365056d61696e41090100000000000000020000000000\
                      0000030000000000000004000000000000000500000000000000060000000000000007000000000000000800\
                      0000000000000100000000000000";
        let change = "a722008d1dcb3981154d56f8d0037a1800000b6f766572766f6c7461676509004c31553d3235342e32";
        let time = Utc.timestamp_nanos(1_763_726_400_123_456_789);
        let all = vec![
            Record::Health(Health::Meter(MeterHealth::from_values(
                time,
                "house".into(),
                "mainA".into(),
                [1, 2, 3, 4, 5, 6, 7, 8, 1],
            ))),
            Record::Change(StateChange {
                time,
                subject: Subject::Trigger,
                name: "overvoltage".into(),
                event: ChangeEvent::Tripped,
                active: true,
                held: false,
                dry_run: false,
                cause: "L1U=254.2".into(),
            }),
        ];
        let mut buf = Vec::new();
        for r in &all {
            encode(r, &mut buf);
        }
        assert_eq!(hex(&buf), format!("{health}{change}"), "the encoder writes the older kinds as before");
        assert_ne!(buf[HEADER], ENERGY_FLAGS);
        assert_eq!(decoded(&buf), all);
    }

    #[test]
    fn health_point_layout() {
        let h = Record::Health(Health::Meter(MeterHealth::from_values(
            Utc.timestamp_nanos(1_763_726_400_123_456_789),
            "house".into(),
            "mainA".into(),
            [1, 2, 3, 4, 5, 6, 7, 8, 1],
        )));
        let mut buf = Vec::new();
        encode(&h, &mut buf);
        assert_eq!(buf.len(), 102, "the size the module documentation states");
        let payload = &buf[HEADER..];
        assert_eq!(payload[0], 0xC0, "bits 7 and 6: a health point");
        assert_eq!(payload[1..9], 1_763_726_400_123_456_789i64.to_le_bytes());
        assert_eq!(payload[9], 0, "kind 0: a meter");
        assert_eq!(&payload[10..16], b"\x05house");
        assert_eq!(&payload[16..22], b"\x05mainA");
        assert_eq!(payload[22], 9);
        assert_eq!(payload[23..31], 1u64.to_le_bytes());
        assert_eq!(payload[87..], 1u64.to_le_bytes(), "the last value: answering");
        assert_eq!(decoded(&buf), [h]);

        let s = health(1);
        let mut buf = Vec::new();
        encode(&s, &mut buf);
        assert_eq!(buf[HEADER + 9], 1, "kind 1: a sink");
        assert_eq!(buf.len(), HEADER + 1 + 8 + 1 + 7 + 1 + 7 * 8);
    }

    #[test]
    fn unknown_health_kind_or_count_or_bad_name_is_a_payload_error() {
        let mut buf = Vec::new();
        encode(&health(2), &mut buf);
        let payload = buf[HEADER..].to_vec();
        let with = |at: usize, byte: u8| {
            let mut p = payload.clone();
            p[at] = byte;
            decode(&p, &mut Names::default())
        };
        assert!(with(0, 0xC0).is_ok());
        assert_eq!(with(9, 2), Err(PayloadError("unknown health kind")));
        assert_eq!(with(11, 0xff), Err(PayloadError("bus name")));
        let count_at =
            10 + 1 + usize::from(payload[10]) + 1 + usize::from(payload[11 + usize::from(payload[10])]);
        assert_eq!(with(count_at, 8), Err(PayloadError("health value count")));
        assert_eq!(with(count_at, 10), Err(PayloadError("health value count")));
        let mut names = Names::default();
        for len in 0..payload.len() {
            assert!(decode(&payload[..len], &mut names).is_err(), "cut to {len} bytes");
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert_eq!(decode(&longer, &mut names), Err(PayloadError("trailing bytes")));
    }

    #[test]
    fn damage_in_a_health_point_costs_it_alone() {
        let all = [reading(0), health(0), change(1), health(1), reading(2)];
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for r in &all {
            starts.push(buf.len());
            encode(r, &mut buf);
        }
        for k in [1usize, 3] {
            let end = starts.get(k + 1).copied().unwrap_or(buf.len());
            for byte in starts[k]..end {
                for bit in 0..8 {
                    let mut bad = buf.clone();
                    bad[byte] ^= 1 << bit;
                    let mut want = all.to_vec();
                    want.remove(k);
                    assert_eq!(decoded(&bad), want, "record {k} byte {byte} bit {bit}");
                }
            }
        }
        // Torn at the end: the health point alone is lost.
        let mut torn = Vec::new();
        for r in &all[..4] {
            encode(r, &mut torn);
        }
        let whole = torn.len();
        let last = whole - (starts[4] - starts[3]);
        for end in last + 1..whole {
            assert_eq!(decoded(&torn[..end]), all[..3], "cut at {end}");
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut names = Names::default();
            for it in scan(&bytes) {
                if let Item::Record { payload, .. } = it {
                    let _ = decode(&bytes[payload], &mut names);
                }
            }
        }

        #[test]
        fn any_payload_decodes_or_errs_without_panicking(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..200),
            kind in 0u8..3,
        ) {
            if let Some(flags) = bytes.first_mut() {
                *flags = match kind {
                    0 => *flags & !CHANGE_FLAG,
                    1 => (*flags | CHANGE_FLAG) & !0x40,
                    _ => HEALTH_FLAGS,
                };
            }
            let _ = decode(&bytes, &mut Names::default());
        }

        #[test]
        fn garbage_between_records_is_skipped(junk in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = records(2);
            let one = buf.len() / 2;
            let second = buf.split_off(one);
            buf.extend_from_slice(&junk);
            buf.extend_from_slice(&second);
            let back = decoded(&buf);
            prop_assert!(back.contains(&reading(0)));
            prop_assert!(back.contains(&reading(1)));
        }

        #[test]
        fn garbage_around_state_changes_is_skipped(
            junk in proptest::collection::vec(any::<u8>(), 0..64),
            i in 0u32..192,
        ) {
            let mut buf = Vec::new();
            encode(&change(i), &mut buf);
            buf.extend_from_slice(&junk);
            encode(&change(i + 1), &mut buf);
            let back = decoded(&buf);
            prop_assert!(back.contains(&change(i)));
            prop_assert!(back.contains(&change(i + 1)));
        }
    }
}
