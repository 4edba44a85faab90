//! Storage benchmarks:
//!
//! 1. spool append: 1,000,000 PZEM readings appended one at a time, as during an outage
//!    (points per second, bytes per point, with the final fsync);
//! 2. spool replay: a spool of 1,000,000 points sent by the real sink loop to the local
//!    InfluxDB-compatible server (VictoriaMetrics `/api/v2/write`), while checking that all
//!    arrived.
//!
//! 3. stop and reload: a sink over a spool of 1,000,000 and of 5,000,000 PZEM readings, the
//!    database back (a writer in the process answering each batch of 1000 after 5 ms, about the
//!    200,000 points/s of a local server) and replaying: the time from the closing of its records
//!    channel to the end of the sink (stop), and the time to open the spool and the sink again
//!    (the start half of a reload). No server needed.
//!
//! `cargo bench --bench storage [-- append|replay|stop]` (BENCH_POINTS=N to change the count of
//! the first two; BENCH_STOP=N,M for the third).

#[path = "../tests/support/servers.rs"]
mod servers;

use pmtr::meter::Model;
use pmtr::reading::{Phase, Quality, Quantity, Reading, Record, Sample};
use pmtr::store::influx::{InfluxV2, V2Settings};
use pmtr::store::schema::LineProtocol;
use pmtr::store::sink::{Durability, Sink, SinkOptions, WriteFuture, Writer};
use pmtr::store::spool::{Spool, SpoolLimits};
use pmtr::store::SinkStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn points() -> u64 {
    std::env::var("BENCH_POINTS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000)
}

fn reading(base: i64, i: u64) -> Reading {
    let f = i as f64;
    Reading {
        meter: ["kitchen", "heatpump", "garage"][i as usize % 3].into(),
        model: Model::Pzem016,
        time: chrono::DateTime::from_timestamp_millis(base + i as i64).unwrap(),
        samples: vec![
            Sample::new(Phase::L1, Quantity::Voltage, 230.0 + (f % 100.0) * 0.1),
            Sample::new(Phase::L1, Quantity::Current, (f % 1000.0) * 0.001),
            Sample::new(Phase::L1, Quantity::ActivePower, (f % 3000.0) * 0.1),
            Sample::new(Phase::L1, Quantity::ActiveEnergy, 1234.0 + f * 0.001),
            Sample::new(Phase::L1, Quantity::Frequency, 50.0),
            Sample::new(Phase::L1, Quantity::PowerFactor, 0.95),
            Sample::new(Phase::L1, Quantity::Alarm, 0.0),
        ],
        quality: Quality::default(),
    }
}

fn fill(spool: &mut Spool, n: u64, base: i64, one_by_one: bool) -> Duration {
    let t0 = Instant::now();
    if one_by_one {
        for i in 0..n {
            spool.append(&[reading(base, i).into()]).unwrap();
        }
    } else {
        let mut i = 0;
        while i < n {
            let batch: Vec<Record> = (i..(i + 1000).min(n)).map(|k| reading(base, k).into()).collect();
            spool.append(&batch).unwrap();
            i += 1000;
        }
    }
    spool.sync().unwrap();
    t0.elapsed()
}

fn append() {
    let n = points();
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "target".into())).unwrap();
    let mut spool = Spool::open(dir.path(), SpoolLimits::new(4 << 30)).unwrap();
    let base = chrono::Utc::now().timestamp_millis() - 86_400_000;
    let took = fill(&mut spool, n, base, true);
    let bytes = spool.bytes();
    println!(
        "spool append: {n} PZEM readings (1 point each) one at a time in {:.2} s = {:.0} points/s; \
         {bytes} bytes on disk = {:.1} bytes/point",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        bytes as f64 / n as f64
    );
}

fn replay() {
    let n = points();
    let vm = servers::VictoriaMetrics::start();
    let dir = tempfile::tempdir_in("target").unwrap();
    let mut spool = Spool::open(dir.path(), SpoolLimits::new(4 << 30)).unwrap();
    let base = chrono::Utc::now().timestamp_millis() - 2 * 86_400_000;
    fill(&mut spool, n, base, false);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let took = rt.block_on(async {
        let writer = InfluxV2::new(
            V2Settings {
                url: vm.url(),
                org: "o".into(),
                bucket: "b".into(),
                token: "t".into(),
                timeout: Duration::from_secs(30),
            },
            LineProtocol::new("pmtr", "bench"),
        )
        .unwrap();
        let status = Arc::new(SinkStatus::new("bench", "influxdb2", vm.url()));
        let (events, _) = tokio::sync::broadcast::channel(16);
        let opts = SinkOptions {
            name: "bench".into(),
            batch: 1000,
            flush_interval: Duration::from_secs(1),
            durability: Durability::Outage,
            sync_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let t0 = Instant::now();
        let task = tokio::spawn(Sink::new(Box::new(writer), spool, opts, status.clone(), events).run(rx));
        loop {
            let s = status.snapshot();
            if s.spool_readings == 0 {
                break;
            }
            assert!(s.healthy, "{s:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = t0.elapsed();
        drop(tx);
        task.await.unwrap();
        took
    });
    println!(
        "spool replay: {n} points to VictoriaMetrics /api/v2/write in batches of 1000 in {:.2} s = {:.0} points/s",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    let rows = vm.wait_for_samples("pmtr_voltage", n as usize, Duration::from_secs(60));
    let arrived = servers::sample_count(&rows);
    println!("  arrived: {arrived} of {n} voltage samples");
    assert_eq!(arrived as u64, n, "every replayed point arrived");
}

/// A database that takes 5 ms per batch: 200,000 records/s in batches of 1000.
struct Fast;

impl Writer for Fast {
    fn kind(&self) -> &'static str {
        "fast"
    }
    fn target(&self) -> String {
        "in process".into()
    }
    fn write(&mut self, _: &[Record]) -> WriteFuture {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(())
        })
    }
    fn render(&self, _: &[Record]) -> String {
        String::new()
    }
}

fn stop() {
    let counts: Vec<u64> = std::env::var("BENCH_STOP")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000_000, 5_000_000]);
    let opts = SinkOptions {
        name: "bench".into(),
        batch: 1000,
        flush_interval: Duration::from_secs(1),
        durability: Durability::Outage,
        sync_interval: Duration::from_secs(1),
        max_backoff: Duration::from_secs(60),
    };
    let limits = SpoolLimits::new(1 << 30);
    for n in counts {
        let dir =
            tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "target".into())).unwrap();
        let base = chrono::Utc::now().timestamp_millis() - 3 * 86_400_000;
        let mut spool = Spool::open(dir.path(), limits).unwrap();
        fill(&mut spool, n, base, false);
        let bytes = spool.bytes();
        drop(spool);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (open, stop, left, rate) = rt.block_on(async {
            let status = Arc::new(SinkStatus::new("bench", "fast", "in process".into()));
            let (events, _) = tokio::sync::broadcast::channel(16);
            let t0 = Instant::now();
            let spool = Spool::open(dir.path(), limits).unwrap();
            let sink = Sink::new(Box::new(Fast), spool, opts.clone(), status.clone(), events);
            let open = t0.elapsed();
            let (tx, rx) = tokio::sync::mpsc::channel(4096);
            let task = tokio::spawn(sink.run(rx));
            // Live readings while the spool replays, for a second; then SIGTERM.
            let t_run = Instant::now();
            for i in 0..100u64 {
                tx.send(reading(base + 86_400_000, i).into()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let replayed = n - status.snapshot().spool_readings;
            let rate = replayed as f64 / t_run.elapsed().as_secs_f64();
            let t1 = Instant::now();
            drop(tx);
            task.await.unwrap();
            (open, t1.elapsed(), status.snapshot().spool_readings, rate)
        });
        println!(
            "stop and reload: spool of {n} PZEM readings ({:.0} MiB), database back and replaying: \
             stop in {:.3} s, spool and sink opened again in {:.3} s; {left} readings left in the \
             spool for the next start (it replayed {rate:.0} readings/s before the stop: replaying \
             the rest at stop would have taken {:.0} s)",
            bytes as f64 / (1 << 20) as f64,
            stop.as_secs_f64(),
            open.as_secs_f64(),
            left as f64 / rate,
        );
    }
}

fn main() {
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let run = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    if run("append") {
        append();
    }
    if run("replay") {
        replay();
    }
    if run("stop") {
        stop();
    }
}
