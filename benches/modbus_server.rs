//! The Modbus TCP server (`[modbus_server]`) on simulated PZEM-016s at 9600 baud:
//!
//! 1. `cache`: reads of the polled registers (FC04 0..9, answered from the latest reading) by
//!    tokio-modbus TCP clients on 127.0.0.1, one client then 16 at once, each request sent when
//!    the last was answered: requests per second and latency percentiles; and meanwhile the
//!    meter's own polls (every 200 ms), counted against the period;
//! 2. `passthrough`: reads of registers pmtr does not poll (FC03 1..2, sent through the bus),
//!    one at a time, on an idle bus (one meter read every 10 s) and on a busy one (three meters
//!    read every 100 ms, more than the line can carry): latency percentiles.
//!
//! `cargo bench --bench modbus_server [-- cache|passthrough]` (BENCH_SECONDS=N per cache case,
//! default 5; BENCH_N=N pass-through reads per case, default 50).

use pmtr::bus::BusEngine;
use pmtr::modbus_server::ModbusServer;
use pmtr::sim::{SimPort, SimPortOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_modbus::client::Reader;
use tokio_modbus::slave::Slave;

fn seconds() -> u64 {
    std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5)
}

fn n() -> usize {
    std::env::var("BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(50)
}

fn sim(dir: &Path, addresses: &[u8]) -> SimPort {
    let line = pmtr::config::LineSettings::DEFAULT;
    SimPort::spawn(SimPortOptions {
        link: Some(dir.join("ttyUSB0")),
        line,
        turnaround: Duration::from_millis(5),
        meters: addresses.iter().map(|a| format!("pzem-016@{a},volts=230,amps=1").parse().unwrap()).collect(),
    })
    .unwrap()
}

struct Gateway {
    engine: BusEngine,
    stop: tokio::sync::watch::Sender<bool>,
    port: u16,
    readings: Arc<std::sync::atomic::AtomicU64>,
}

/// The bus engine and the Modbus TCP server, as `pmtr run` starts them, on `dir`'s simulated port.
async fn start(dir: &Path, addresses: &[u8], poll: &str) -> Gateway {
    let mut text = format!(
        "[gateway]\nstate_dir = \"{}\"\n[[bus]]\nname = \"b\"\nports = [\"{}\"]\ntimeout = \"200ms\"\n\
         [modbus_server]\nlisten = \"127.0.0.1:0\"\nrequests_per_second = 1000000\nmax_connections = 64\n",
        dir.join("state").display(),
        dir.join("ttyUSB*").display()
    );
    for a in addresses {
        text.push_str(&format!(
            "[[meter]]\nname = \"m{a}\"\nmodel = \"pzem-016\"\naddress = {a}\npoll = \"{poll}\"\n"
        ));
    }
    let config = pmtr::config::load_str(&text, "bench.toml").unwrap_or_else(|e| panic!("{e}"));
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let readings = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = readings.clone();
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let engine = BusEngine::start(&config, tx, stop_rx.clone());
    let settings = config.modbus_server.clone().unwrap();
    let (server, listener) =
        ModbusServer::bind(&settings, &engine.buses, engine.status.clone()).await.unwrap();
    let port = server.local_addr().port();
    tokio::spawn(server.run(listener, stop_rx));
    // Every meter read once.
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.status.snapshot().values().any(|m| m.last_reading.is_none()) {
        assert!(Instant::now() < deadline, "the meters were not read within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Gateway { engine, stop, port, readings }
}

async fn client(port: u16, unit: u8) -> tokio_modbus::client::Context {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    tokio_modbus::client::tcp::connect_slave(addr, Slave(unit)).await.unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

async fn cache_case(g: &Gateway, clients: usize, window: Duration) {
    let before = g.readings.load(std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    let mut tasks = vec![];
    for _ in 0..clients {
        let port = g.port;
        tasks.push(tokio::spawn(async move {
            let mut ctx = client(port, 1).await;
            let mut lat = Vec::with_capacity(200_000);
            let end = Instant::now() + window;
            while Instant::now() < end {
                let t = Instant::now();
                let words = ctx.read_input_registers(0, 10).await.unwrap().unwrap();
                lat.push(t.elapsed());
                assert_eq!(words.len(), 10);
            }
            lat
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let took = start.elapsed();
    let polls = g.readings.load(std::sync::atomic::Ordering::Relaxed) - before;
    all.sort();
    println!(
        "| {clients} | {} | {:.0} | {} | {} | {} | {polls} of {:.0} |",
        all.len(),
        all.len() as f64 / took.as_secs_f64(),
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        ms(*all.last().unwrap()),
        took.as_secs_f64() / 0.2,
    );
}

async fn passthrough_case(what: &str, g: &Gateway, reads: usize) {
    let mut ctx = client(g.port, 1).await;
    let mut lat = vec![];
    for _ in 0..reads {
        let t = Instant::now();
        let words = ctx.read_holding_registers(1, 2).await.unwrap().unwrap();
        lat.push(t.elapsed());
        assert_eq!(words[1], 1);
        // Not back to back: each read finds the bus wherever its polls have it.
        tokio::time::sleep(Duration::from_millis(37)).await;
    }
    lat.sort();
    println!(
        "| {what} | {reads} | {} | {} | {} | {} |",
        ms(lat[0]),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let wanted: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    // As `pmtr run`: a multi-thread runtime on the machine's cores (here 2).
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if run("cache") {
        let window = Duration::from_secs(seconds());
        println!("## Modbus TCP server: reads from the cache (FC04 0..9, one PZEM-016 polled every 200 ms)");
        println!("| clients | requests | requests/s | p50 | p99 | max | polls in the window (of period) |");
        println!("|---|---|---|---|---|---|---|");
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let _sim = sim(dir.path(), &[1]);
            let g = start(dir.path(), &[1], "200ms").await;
            cache_case(&g, 1, window).await;
            cache_case(&g, 16, window).await;
            let _ = g.stop.send(true);
            g.engine.join().await;
        });
    }
    if run("passthrough") {
        println!("## Modbus TCP server: reads through the bus (FC03 1..2, not polled), one at a time");
        println!("| bus | reads | min | p50 | p99 | max |");
        println!("|---|---|---|---|---|---|");
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let _sim = sim(dir.path(), &[1]);
            let g = start(dir.path(), &[1], "10s").await;
            passthrough_case("idle (1 meter, read every 10 s)", &g, n()).await;
            let _ = g.stop.send(true);
            g.engine.join().await;
        });
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let _sim = sim(dir.path(), &[1, 2, 3]);
            let g = start(dir.path(), &[1, 2, 3], "100ms").await;
            passthrough_case("busy (3 meters, each read every 100 ms: saturated)", &g, n()).await;
            let _ = g.stop.send(true);
            g.engine.join().await;
        });
    }
}
