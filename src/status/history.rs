//! The last hour of each meter, in memory, for the charts of the page at `/`.
//!
//! Per meter, one ring of [`BUCKETS`] buckets of [`BUCKET_SECONDS`] seconds (360 × 10 s: one
//! hour), each holding the mean of the readings that fell into it for the [`SERIES`]: voltage,
//! current and active power of L1, L2, L3 and the meter's total power. Every ring is allocated
//! when the history is made (one per configured meter) and never grows: a reading only
//! overwrites the bucket it falls into, so memory is bounded by the number of meters
//! ([`History::bytes`]) and a reading allocates nothing.
//!
//! The history is fed by a sampler that looks at the latest reading of each meter once a second
//! ([`History::sample`]), so nothing stands in front of the buses or the relays; a meter polled
//! faster than once a second has one reading a second in its means.

use crate::bus::status::StatusBoard;
use crate::reading::{Phase, Quantity, Reading};
use crate::sync::Locked;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The length of one bucket, in seconds.
pub const BUCKET_SECONDS: i64 = 10;
/// The buckets of one meter: an hour of 10 s buckets.
pub const BUCKETS: usize = 360;
/// What is kept, by trigger variable name.
pub const SERIES: [(Phase, Quantity); 10] = [
    (Phase::L1, Quantity::Voltage),
    (Phase::L2, Quantity::Voltage),
    (Phase::L3, Quantity::Voltage),
    (Phase::L1, Quantity::Current),
    (Phase::L2, Quantity::Current),
    (Phase::L3, Quantity::Current),
    (Phase::L1, Quantity::ActivePower),
    (Phase::L2, Quantity::ActivePower),
    (Phase::L3, Quantity::ActivePower),
    (Phase::Total, Quantity::ActivePower),
];
const S: usize = SERIES.len();

/// One bucket: its number (unix seconds / [`BUCKET_SECONDS`]) and the mean of each series.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    number: i64,
    mean: [f32; S],
    count: [u16; S],
}

const EMPTY: Bucket = Bucket { number: i64::MIN, mean: [0.0; S], count: [0; S] };

/// The bucket number of a time.
pub fn bucket_of(time: DateTime<Utc>) -> i64 {
    time.timestamp().div_euclid(BUCKET_SECONDS)
}

/// One meter's hour.
#[derive(Debug, Clone)]
pub struct Ring {
    buckets: Box<[Bucket]>,
    /// The time of the newest reading added (the sampler adds each reading once).
    newest: Option<DateTime<Utc>>,
}

impl Default for Ring {
    fn default() -> Self {
        Ring { buckets: vec![EMPTY; BUCKETS].into_boxed_slice(), newest: None }
    }
}

impl Ring {
    fn slot(number: i64) -> usize {
        number.rem_euclid(BUCKETS as i64) as usize
    }

    /// Adds a reading: false when it is not newer than the newest added (the same reading seen
    /// again), or older than the hour the ring holds.
    pub fn add(&mut self, reading: &Reading) -> bool {
        if self.newest.is_some_and(|t| reading.time <= t) {
            return false;
        }
        self.newest = Some(reading.time);
        let number = bucket_of(reading.time);
        let b = &mut self.buckets[Self::slot(number)];
        if b.number != number {
            *b = Bucket { number, ..EMPTY };
        }
        for sample in &reading.samples {
            let Some(k) = SERIES.iter().position(|&(p, q)| p == sample.phase && q == sample.quantity) else {
                continue;
            };
            if !sample.value.is_finite() || b.count[k] == u16::MAX {
                continue;
            }
            b.count[k] += 1;
            b.mean[k] += (sample.value as f32 - b.mean[k]) / f32::from(b.count[k]);
        }
        true
    }

    /// The mean of series `k` in bucket `number`, if the ring holds that bucket and it has one.
    pub fn mean(&self, number: i64, k: usize) -> Option<f32> {
        let b = &self.buckets[Self::slot(number)];
        (b.number == number && b.count[k] > 0).then_some(b.mean[k])
    }

    /// The buckets `first..=last` (at most the hour ending with `last`), as
    /// `{"L1U": [v or null, …], …}` (oldest first, to the thousandth), the series with no value
    /// left out.
    pub fn series(&self, first: i64, last: i64) -> Map<String, Value> {
        let first = first.max(last - BUCKETS as i64 + 1);
        let mut out = Map::new();
        for (k, &(phase, quantity)) in SERIES.iter().enumerate() {
            let values: Vec<Option<f64>> = (first..=last)
                .map(|n| self.mean(n, k).map(|v| (f64::from(v) * 1000.0).round() / 1000.0))
                .collect();
            if values.iter().any(Option::is_some) {
                out.insert(format!("{}{}", phase.prefix(), quantity.symbol()), json!(values));
            }
        }
        out
    }
}

/// The hour of every configured meter.
#[derive(Debug, Default)]
pub struct History {
    rings: Mutex<BTreeMap<String, Ring>>,
}

impl History {
    /// A ring for each of these meters, allocated now.
    pub fn new<'a>(meters: impl IntoIterator<Item = &'a str>) -> History {
        History { rings: Mutex::new(meters.into_iter().map(|m| (m.to_owned(), Ring::default())).collect()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Ring>> {
        self.rings.locked()
    }

    /// Adds a reading of a configured meter (others are ignored: nothing is allocated).
    pub fn add(&self, reading: &Reading) -> bool {
        self.lock().get_mut(&*reading.meter).is_some_and(|r| r.add(reading))
    }

    /// Adds the latest reading of each meter on `board` that is newer than the last one added.
    pub fn sample(&self, board: &StatusBoard) {
        let mut rings = self.lock();
        board.for_each(|name, status| {
            if let (Some(ring), Some(reading)) = (rings.get_mut(name), &status.last_reading) {
                ring.add(reading);
            }
        });
    }

    /// The bytes the rings take (fixed from the start).
    pub fn bytes(&self) -> usize {
        self.lock()
            .keys()
            .map(|name| name.len() + std::mem::size_of::<Ring>() + BUCKETS * std::mem::size_of::<Bucket>())
            .sum()
    }

    /// The hour ending at `now` of one meter (`only`) or of all, as the JSON of
    /// `GET /api/history`, from the bucket holding `since` (unix seconds) on when given (the
    /// page asks for what it lacks); None when `only` is not a configured meter.
    pub fn json(&self, now: DateTime<Utc>, only: Option<&str>, since: Option<i64>) -> Option<Value> {
        let last = bucket_of(now);
        let first =
            since.map_or(i64::MIN, |s| s.div_euclid(BUCKET_SECONDS)).clamp(last - BUCKETS as i64 + 1, last);
        let rings = self.lock();
        let mut meters = Map::new();
        for (name, ring) in rings.iter().filter(|(n, _)| only.is_none_or(|o| o == n.as_str())) {
            meters.insert(name.clone(), Value::Object(ring.series(first, last)));
        }
        if only.is_some() && meters.is_empty() {
            return None;
        }
        Some(json!({
            "bucket_seconds": BUCKET_SECONDS,
            "buckets": BUCKETS,
            "start": first * BUCKET_SECONDS,
            "meters": meters,
        }))
    }

    /// Samples `board` once a second until `stop` turns true.
    pub async fn run(
        self: std::sync::Arc<Self>,
        board: std::sync::Arc<StatusBoard>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(&board),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::Model;
    use crate::reading::{Quality, Sample};

    fn at(seconds: i64, volts: f64, watts: f64) -> Reading {
        Reading {
            meter: "m".into(),
            model: Model::Pzem016,
            time: DateTime::from_timestamp(seconds, 0).unwrap(),
            samples: vec![
                Sample::new(Phase::L1, Quantity::Voltage, volts),
                Sample::new(Phase::L1, Quantity::ActivePower, watts),
                Sample::new(Phase::L1, Quantity::Frequency, 50.0),
            ],
            quality: Quality::default(),
        }
    }

    const U: usize = 0;
    const P: usize = 6;

    #[test]
    fn a_bucket_holds_the_mean_of_its_readings() {
        let mut r = Ring::default();
        let t0 = 1_000_000_000; // a multiple of 10: bucket 100_000_000 starts here
        assert!(r.add(&at(t0, 230.0, 100.0)));
        assert!(r.add(&at(t0 + 4, 232.0, 200.0)));
        assert!(r.add(&at(t0 + 9, 234.0, 300.0)));
        assert!(r.add(&at(t0 + 10, 240.0, 0.0)), "the next bucket");
        assert_eq!(r.mean(t0 / 10, U), Some(232.0));
        assert_eq!(r.mean(t0 / 10, P), Some(200.0));
        assert_eq!(r.mean(t0 / 10 + 1, U), Some(240.0));
        assert_eq!(r.mean(t0 / 10, 1), None, "no L2U");
        assert!(!r.add(&at(t0 + 10, 999.0, 0.0)), "the same reading again is not counted");
        assert!(!r.add(&at(t0 + 5, 999.0, 0.0)), "nor an older one");
        assert_eq!(r.mean(t0 / 10 + 1, U), Some(240.0));
    }

    #[test]
    fn the_ring_keeps_one_hour_and_overwrites_the_oldest() {
        let mut r = Ring::default();
        let t0 = 2_000_000_000;
        for i in 0..(BUCKETS as i64 + 5) {
            assert!(r.add(&at(t0 + i * BUCKET_SECONDS, i as f64, 0.0)));
        }
        let first = t0 / 10;
        let last = first + BUCKETS as i64 + 4;
        assert_eq!(r.mean(last, U), Some((BUCKETS + 4) as f32));
        assert_eq!(r.mean(last - BUCKETS as i64 + 1, U), Some(5.0), "the oldest kept");
        assert_eq!(r.mean(first + 4, U), None, "overwritten by a bucket an hour later");
        let s = r.series(i64::MIN, last);
        let volts = s["L1U"].as_array().unwrap();
        assert_eq!(volts.len(), BUCKETS);
        assert_eq!(volts[0], json!(5.0));
        assert_eq!(volts[BUCKETS - 1], json!((BUCKETS + 4) as f32));
        assert!(!s.contains_key("L2U") && !s.contains_key("L1f"), "{:?}", s.keys());
        assert_eq!(r.buckets.len(), BUCKETS, "never grows");
    }

    #[test]
    fn a_gap_reads_as_null_and_an_hour_old_bucket_is_not_shown() {
        let mut r = Ring::default();
        let t0 = 1_500_000_000;
        r.add(&at(t0, 230.0, 1.0));
        r.add(&at(t0 + 30, 231.0, 1.0));
        let s = r.series(i64::MIN, t0 / 10 + 3);
        let volts = s["L1U"].as_array().unwrap();
        assert_eq!(&volts[BUCKETS - 4..], &[json!(230.0), Value::Null, Value::Null, json!(231.0)]);
        // An hour later, the first bucket's slot is the newest bucket's: not a value of now.
        let later = r.series(i64::MIN, t0 / 10 + BUCKETS as i64);
        assert_eq!(later["L1U"].as_array().unwrap()[BUCKETS - 1], Value::Null);
        assert_eq!(later["L1U"].as_array().unwrap()[2], json!(231.0));
        assert!(r.series(i64::MIN, t0 / 10 + 2 * BUCKETS as i64).is_empty(), "all older than the hour");
    }

    #[test]
    fn times_before_1970_and_odd_values_do_not_break_the_arithmetic() {
        let mut r = Ring::default();
        assert!(r.add(&at(-15, 1.0, f64::NAN)));
        assert_eq!(bucket_of(DateTime::from_timestamp(-15, 0).unwrap()), -2);
        assert_eq!(r.mean(-2, U), Some(1.0));
        assert_eq!(r.mean(-2, P), None, "NaN is not a value");
    }

    #[test]
    fn only_configured_meters_are_kept() {
        let h = History::new(["m", "other"]);
        assert!(h.add(&at(100, 230.0, 5.0)));
        let mut stranger = at(100, 1.0, 1.0);
        stranger.meter = "stranger".into();
        assert!(!h.add(&stranger));
        let now = DateTime::from_timestamp(105, 0).unwrap();
        let all = h.json(now, None, None).unwrap();
        assert_eq!(all["bucket_seconds"], 10);
        assert_eq!(all["start"], (10 - 359) * 10);
        assert_eq!(all["meters"]["m"]["L1U"][BUCKETS - 1], 230.0);
        assert_eq!(all["meters"]["other"], json!({}));
        assert!(all["meters"].get("stranger").is_none());
        assert_eq!(h.json(now, Some("m"), None).unwrap()["meters"].as_object().unwrap().len(), 1);
        assert!(h.json(now, Some("stranger"), None).is_none());
        // What the page lacks: from the bucket of `since` to now, and never more than the hour.
        h.add(&at(112, 231.23456, 5.0));
        let now = DateTime::from_timestamp(115, 0).unwrap();
        let since = h.json(now, None, Some(105)).unwrap();
        assert_eq!(since["start"], 100);
        assert_eq!(since["meters"]["m"]["L1U"], json!([230.0, 231.235]), "to the thousandth");
        assert_eq!(h.json(now, None, Some(0)).unwrap()["start"], 0);
        assert_eq!(h.json(now, None, Some(-100_000)).unwrap()["start"], (11 - 359) * 10);
        assert_eq!(h.json(now, None, Some(999)).unwrap()["meters"]["m"]["L1U"], json!([231.235]));
        assert_eq!(
            h.bytes(),
            2 * (std::mem::size_of::<Ring>() + BUCKETS * std::mem::size_of::<Bucket>()) + 6
        );
    }

    #[test]
    fn sampling_adds_each_latest_reading_once() {
        let board = StatusBoard::default();
        let mut status = crate::bus::status::MeterStatus::searching("b".into(), 1, Model::Pzem016);
        status.last_reading = Some(at(1000, 230.0, 1.0));
        board.register("m", status);
        let h = History::new(["m"]);
        h.sample(&board);
        h.sample(&board);
        board.update("m", |s| s.last_reading = Some(at(1001, 240.0, 1.0)));
        h.sample(&board);
        assert_eq!(h.lock()["m"].mean(100, U), Some(235.0), "230 and 240, each once");
    }
}
