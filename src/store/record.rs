//! Spool records: one reading in a checksummed, length-prefixed binary record, and a scanner
//! that finds the good records in a file that may have been cut short or damaged. Pure.
//!
//! ```text
//! record  = 0xA7 | len: u16 LE | crc32: u32 LE | payload (len bytes)
//!           crc32 covers the two length bytes and the payload
//! payload = flags: u8 (bit 0: energy counter went backwards)
//!         | time: i64 LE, nanoseconds since 1970 UTC
//!         | model: u8 | name length: u8 | name (UTF-8)
//!         | sample count: u8 | per sample: phase << 4 | quantity: u8, value: f64 LE
//! ```
//!
//! A PZEM reading (7 samples, a 7-letter name) takes 7 + 1 + 8 + 1 + 1 + 7 + 1 + 7 × 9 = 89
//! bytes.

use crate::meter::Model;
use crate::reading::{Phase, Quality, Quantity, Reading, Sample};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

pub const MAGIC: u8 = 0xA7;
pub const HEADER: usize = 7;
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

const PHASES: [Phase; 8] = Phase::ALL;
const QUANTITIES: [Quantity; 11] = Quantity::ALL;

fn index_of<T: PartialEq>(all: &[T], x: &T) -> u8 {
    all.iter().position(|a| a == x).expect("every variant is listed") as u8
}

/// Appends the record of `reading` to `out`. Names longer than 255 bytes and more than 255
/// samples cannot occur (config names are short, meters have a fixed sample set); they are
/// cut rather than refused so that a reading is never lost.
pub fn encode(reading: &Reading, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[MAGIC, 0, 0, 0, 0, 0, 0]);
    out.push(u8::from(reading.quality.energy_backwards));
    let nanos = reading.time.timestamp_nanos_opt().unwrap_or(i64::MAX);
    out.extend_from_slice(&nanos.to_le_bytes());
    out.push(index_of(&Model::ALL, &reading.model));
    let mut name = &reading.meter[..reading.meter.len().min(255)];
    while !reading.meter.is_char_boundary(name.len()) {
        name = &name[..name.len() - 1];
    }
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    let samples = &reading.samples[..reading.samples.len().min(255)];
    out.push(samples.len() as u8);
    for s in samples {
        out.push(index_of(&PHASES, &s.phase) << 4 | index_of(&QUANTITIES, &s.quantity));
        out.extend_from_slice(&s.value.to_le_bytes());
    }
    let len = (out.len() - start - HEADER) as u16;
    out[start + 1..start + 3].copy_from_slice(&len.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&out[start + HEADER..]);
    out[start + 3..start + 7].copy_from_slice(&h.finalize().to_le_bytes());
}

/// Why a payload with a good checksum still is not a reading (written by a newer version).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable spool record: {0}")]
pub struct PayloadError(&'static str);

/// Meter names repeat in every record; one `Arc<str>` per name is shared by all readings.
#[derive(Debug, Default)]
pub struct Names(HashMap<Box<str>, Arc<str>>);

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(a) = self.0.get(name) {
            return a.clone();
        }
        let a: Arc<str> = name.into();
        self.0.insert(name.into(), a.clone());
        a
    }
}

/// Decodes a payload (the bytes after the header).
pub fn decode(payload: &[u8], names: &mut Names) -> Result<Reading, PayloadError> {
    let mut p = payload;
    let mut take = |n: usize| -> Result<&[u8], PayloadError> {
        if p.len() < n {
            return Err(PayloadError("too short"));
        }
        let (a, b) = p.split_at(n);
        p = b;
        Ok(a)
    };
    let flags = take(1)?[0];
    let nanos = i64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
    let model = *Model::ALL.get(usize::from(take(1)?[0])).ok_or(PayloadError("unknown model"))?;
    let name_len = usize::from(take(1)?[0]);
    let name = std::str::from_utf8(take(name_len)?).map_err(|_| PayloadError("meter name"))?;
    let meter = names.get(name);
    let count = usize::from(take(1)?[0]);
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let code = take(1)?[0];
        let phase = *PHASES.get(usize::from(code >> 4)).ok_or(PayloadError("unknown phase"))?;
        let quantity = *QUANTITIES.get(usize::from(code & 15)).ok_or(PayloadError("unknown quantity"))?;
        let value = f64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        samples.push(Sample { phase, quantity, value });
    }
    if !p.is_empty() {
        return Err(PayloadError("trailing bytes"));
    }
    Ok(Reading {
        meter,
        model,
        time: DateTime::<Utc>::from_timestamp_nanos(nanos),
        samples,
        quality: Quality { energy_backwards: flags & 1 != 0 },
    })
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

    fn reading(i: u32) -> Reading {
        Reading {
            meter: format!("meter{}", i % 3).into(),
            model: Model::ALL[i as usize % 4],
            time: Utc.timestamp_nanos(1_763_726_400_123_456_789 + i64::from(i)),
            samples: vec![
                Sample::new(Phase::L1, Quantity::Voltage, 230.0 + f64::from(i) * 0.1),
                Sample::new(Phase::Total, Quantity::ActiveEnergy, 1e6 + f64::from(i)),
                Sample::new(Phase::L31, Quantity::Alarm, 1.0),
            ],
            quality: Quality { energy_backwards: i % 2 == 0 },
        }
    }

    fn records(n: u32) -> Vec<u8> {
        let mut buf = Vec::new();
        for i in 0..n {
            encode(&reading(i), &mut buf);
        }
        buf
    }

    fn decoded(buf: &[u8]) -> Vec<Reading> {
        let mut names = Names::default();
        scan(buf)
            .into_iter()
            .filter_map(|it| match it {
                Item::Record { payload, .. } => Some(decode(&buf[payload], &mut names).unwrap()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn round_trip_is_exact() {
        let buf = records(10);
        let back = decoded(&buf);
        assert_eq!(back, (0..10).map(reading).collect::<Vec<_>>());
    }

    #[test]
    fn pzem_reading_size() {
        let r = Reading {
            meter: "kitchen".into(),
            model: Model::Pzem016,
            time: Utc::now(),
            samples: (0..7).map(|i| Sample::new(Phase::L1, QUANTITIES[i], 1.0)).collect(),
            quality: Quality::default(),
        };
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
    }
}
