//! Energy end to end: `pmtr run` in process reads a simulated PZEM-016 (230 V, 100 A: 23 kW)
//! whose counter is reset by hand in the middle of the run. The lifetime total continues from
//! where it was, and the energy booked over the run's days equals what the simulator delivered,
//! within what the books can see: they look at each meter's newest reading once a second and the
//! meter is polled every 200 ms, so the energy of up to 1.2 s (7.7 Wh at 23 kW) before the
//! reset, at the start and at the end may be missed, plus the PZEM's 1 Wh resolution: 20 Wh in all.

#[path = "support/gateway.rs"]
mod gateway;

use gateway::Daemon;
use pmtr::energy::saved::{self, Loaded};
use pmtr::relay::FakeBoard;
use pmtr::sim::{SimPort, SimPortOptions};
use std::time::Duration;

const TOLERANCE_KWH: f64 = 0.020;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_reset_mid_run_keeps_the_total_and_the_day_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let port = SimPort::spawn(SimPortOptions {
        link: Some(dir.path().join("ttyUSB0")),
        line: pmtr::config::LineSettings {
            baud: 9600,
            data_bits: 8,
            parity: pmtr::config::Parity::None,
            stop_bits: 1,
        },
        turnaround: Duration::from_millis(5),
        meters: vec!["pzem-016@4,volts=230,amps=100,pf=1,kwh=100".parse().unwrap()],
    })
    .unwrap();
    let text = gateway::toml(dir.path(), "e", "[energy]\ntimezone = \"UTC\"\n[status]\nenabled = false\n");
    let config = pmtr::config::load_str(&text, "test.toml").unwrap();
    let board = FakeBoard::new();
    let daemon = Daemon::start(config, &board);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let t = port.elapsed_s();
    let before_reset = port
        .with_slave(4, |s| {
            s.advance(t);
            let k = s.kwh();
            s.reset_energy();
            k
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    daemon.stop().await;
    let after_reset = port.with_slave(4, |s| s.kwh()).unwrap();
    assert!(before_reset > 100.01, "the simulator delivered {before_reset} kWh before the reset");

    let Loaded::Found(books) = saved::load(&saved::path_in(&dir.path().join("state"))) else {
        panic!("no energy books saved at stop")
    };
    let main = &books.meters["main"];
    let counter = &main.counters["l1_energy"];
    let booked: f64 = main.days.values().map(|d| d.kwh).sum();
    // The total started at the first reading, then grew by what was booked.
    let first = counter.total - booked;
    assert!((100.0..100.0 + TOLERANCE_KWH).contains(&first), "first reading {first}");
    // Across the reset the total went on from the last reading before it.
    let last_before = counter.total - counter.raw;
    assert!(
        last_before <= before_reset + 0.001 && before_reset - last_before < TOLERANCE_KWH,
        "total {} raw {} before reset {before_reset}",
        counter.total,
        counter.raw
    );
    assert!(counter.total > before_reset, "the total went on after the reset: {}", counter.total);
    let delivered = (before_reset - 100.0) + after_reset;
    assert!(
        (booked - delivered).abs() < TOLERANCE_KWH,
        "booked {booked} kWh, the simulator delivered {delivered} kWh"
    );
}
