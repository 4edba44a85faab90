//! Health points: every `gateway.health_interval`, the counters of each meter's polls and the
//! state of each sink become [`Health`] records, written through storage like readings (so an
//! outage spools them too). Dashboards draw bus errors, spool depth and write errors from them
//! (measurements `pmtr_bus` and `pmtr_sink`).
//!
//! [`points`] builds the records from snapshots (pure); [`run`] is the timer around it.
//!
//! A sink's point is made from its state when the timer fires, before that sink has written
//! the point itself: what `pmtr_sink` says is at most one batch (`flush_interval`) behind.

use super::{SinkState, SinkStatus};
use crate::bus::status::{MeterState, MeterStatus, StatusBoard};
use crate::reading::{Health, MeterHealth, Record, SinkHealth};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The health records at `time`: one per meter (by name), then one per sink (in order).
pub fn points(
    time: DateTime<Utc>,
    meters: &BTreeMap<String, MeterStatus>,
    sinks: &[(&str, SinkState)],
) -> Vec<Record> {
    let mut out = Vec::with_capacity(meters.len() + sinks.len());
    for (name, m) in meters {
        let c = &m.counters;
        out.push(Record::Health(Health::Meter(MeterHealth {
            time,
            bus: m.bus.as_str().into(),
            meter: name.as_str().into(),
            requests: c.requests,
            replies: c.replies,
            timeouts: c.timeouts,
            crc_errors: c.crc_errors,
            exceptions: c.exceptions,
            frame_errors: c.foreign_frames + c.short_frames + c.garbled_frames + c.malformed_frames,
            readings: c.readings,
            readings_dropped: c.readings_dropped,
            answering: u64::from(m.state == MeterState::Ok),
        })));
    }
    for (name, s) in sinks {
        out.push(Record::Health(Health::Sink(SinkHealth {
            time,
            sink: (*name).into(),
            healthy: u64::from(s.healthy),
            points_written: s.points_written,
            spool_records: s.spool_readings,
            spool_bytes: s.spool_bytes,
            spool_dropped: s.spool_dropped,
            rejected: s.rejected,
            in_memory: s.in_memory,
        })));
    }
    out
}

/// Sends the health records to storage every `every` (the first after one interval) until
/// `stop` turns true or storage is gone. A late tick is not made up for: the next one follows
/// a whole interval later.
pub async fn run(
    every: Duration,
    meters: Arc<StatusBoard>,
    sinks: Vec<Arc<SinkStatus>>,
    store: impl Into<super::Intake>,
    mut stop: watch::Receiver<bool>,
) {
    let store = store.into();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let states: Vec<(&str, SinkState)> = sinks.iter().map(|s| (s.name.as_str(), s.snapshot())).collect();
        for record in points(Utc::now(), &meters.snapshot(), &states) {
            if store.offer(record).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::status::Counters;
    use crate::meter::Model;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    fn meter(bus: &str, state: MeterState) -> MeterStatus {
        MeterStatus {
            bus: bus.into(),
            address: 4,
            model: Model::Pzem016,
            port: None,
            state,
            counters: Counters::default(),
            last_success: None,
            last_error: None,
            last_reading: None,
            server: None,
            raw: None,
        }
    }

    #[test]
    fn a_point_per_meter_and_per_sink_with_its_counters() {
        let mut meters = BTreeMap::new();
        let mut a = meter("house", MeterState::Ok);
        a.counters = Counters {
            requests: 10,
            replies: 7,
            timeouts: 1,
            crc_errors: 2,
            exceptions: 3,
            foreign_frames: 1,
            short_frames: 1,
            garbled_frames: 1,
            malformed_frames: 1,
            readings: 6,
            readings_dropped: 1,
            probes: 99,
            ..Counters::default()
        };
        meters.insert("mainA".to_string(), a);
        meters.insert("gen".to_string(), meter("shed", MeterState::Failing));
        let sink = SinkState {
            healthy: false,
            points_written: 50,
            spool_readings: 12,
            spool_bytes: 1068,
            spool_dropped: 2,
            rejected: 1,
            in_memory: 4,
            ..SinkState::default()
        };
        let t = DateTime::from_timestamp_millis(1_763_726_400_123).unwrap();
        let records = points(t, &meters, &[("influx", sink)]);
        let Record::Health(Health::Meter(gen)) = &records[0] else { panic!("{records:?}") };
        assert_eq!((&*gen.meter, &*gen.bus, gen.answering, gen.requests), ("gen", "shed", 0, 0));
        let Record::Health(Health::Meter(a)) = &records[1] else { panic!("{records:?}") };
        assert_eq!(a.time, t);
        assert_eq!((&*a.meter, &*a.bus), ("mainA", "house"));
        assert_eq!(a.values(), [10, 7, 1, 2, 3, 4, 6, 1, 1]);
        let Record::Health(Health::Sink(s)) = &records[2] else { panic!("{records:?}") };
        assert_eq!(&*s.sink, "influx");
        assert_eq!(s.values(), [0, 50, 12, 1068, 2, 1, 4]);
        assert_eq!(records.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_writes_every_interval_until_stopped() {
        let board = Arc::new(StatusBoard::default());
        board.register("main", meter("b", MeterState::Ok));
        let sink = Arc::new(SinkStatus::new("csv", "csv", "/tmp".into()));
        let (tx, mut rx) = mpsc::channel(16);
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(run(Duration::from_secs(60), board.clone(), vec![sink.clone()], tx, stop));
        let start = Instant::now();
        let mut batches = Vec::new();
        for round in 1..=3u64 {
            let first = rx.recv().await.unwrap();
            assert_eq!(start.elapsed(), Duration::from_secs(60 * round), "round {round}");
            let second = rx.recv().await.unwrap();
            assert_eq!(start.elapsed(), Duration::from_secs(60 * round));
            batches.push((first, second));
            board.update("main", |m| m.counters.requests += 5);
            sink.lock().points_written += 100;
        }
        let requests: Vec<u64> = batches
            .iter()
            .map(|(m, _)| match m {
                Record::Health(Health::Meter(m)) => m.requests,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(requests, [0, 5, 10], "cumulative counters, read at each tick");
        let written: Vec<u64> = batches
            .iter()
            .map(|(_, s)| match s {
                Record::Health(Health::Sink(s)) => s.points_written,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(written, [0, 100, 200]);
        stop_tx.send(true).unwrap();
        task.await.unwrap();
        assert!(rx.recv().await.is_none(), "the task let go of storage");
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_ends_when_storage_is_gone() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let (_stop_tx, stop) = watch::channel(false);
        let board = Arc::new(StatusBoard::default());
        board.register("main", meter("b", MeterState::Ok));
        let started = Instant::now();
        run(Duration::from_secs(5), board, Vec::new(), tx, stop).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
