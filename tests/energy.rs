//! Energy end to end: `pmtr run` in process reads a simulated PZEM-016 (230 V, 100 A: 23 kW)
//! whose counter is reset by hand in the middle of the run. The lifetime total continues from
//! where it was, and the energy booked over the run's days equals what the simulator delivered,
//! within what the books can see: they look at each meter's newest reading once a second and the
//! meter is polled every 200 ms, so the energy of up to 1.2 s (7.7 Wh at 23 kW) before the
//! reset, at the start and at the end may be missed, plus the PZEM's 1 Wh resolution: 20 Wh in all.
//!
//! The run writes to a real InfluxDB 1.x beside CSV and is stopped and started once before the
//! reset, so that storage holds a lifetime total from before the reset and one from after it.

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/servers.rs"]
mod servers;

use gateway::{simulator, Daemon};
use pmtr::energy::saved::{self, Loaded};
use pmtr::relay::FakeBoard;
use std::time::Duration;

const TOLERANCE_KWH: f64 = 0.020;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_reset_mid_run_keeps_the_total_and_the_day_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let port = simulator::spawn(&dir.path().join("ttyUSB0"), &["pzem-016@4,volts=230,amps=100,pf=1,kwh=100"]);
    let db = servers::Influx1::start();
    db.create_database("meters");
    let rest = format!(
        "[energy]\ntimezone = \"UTC\"\n[status]\nenabled = false\n\
         [[sink]]\nname = \"influx\"\ntype = \"influxdb1\"\nurl = \"{}\"\ndatabase = \"meters\"\nflush_interval = \"100ms\"\n",
        db.url()
    );
    let text = gateway::toml(dir.path(), "e", &rest);
    let config = pmtr::config::load_str(&text, "test.toml").unwrap();
    let board = FakeBoard::new();
    // A first run, stopped and started again: its stop writes the books before the reset.
    let daemon = Daemon::start(config.clone(), &board);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    daemon.stop().await;
    let daemon = Daemon::start(config, &board);
    tokio::time::sleep(Duration::from_millis(1500)).await;
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

    // In InfluxDB: the lifetime totals, one per stop, never go back across the reset and end
    // at the saved total.
    let rows = |q: &str| -> Vec<Vec<serde_json::Value>> {
        let v = db.query("meters", q);
        let values = &v["results"][0]["series"][0]["values"];
        values
            .as_array()
            .unwrap_or_else(|| panic!("{q}: {v}"))
            .iter()
            .map(|r| r.as_array().unwrap().clone())
            .collect()
    };
    let totals: Vec<f64> = rows("SELECT kwh FROM pmtr_energy WHERE meter = 'main' AND counter = 'l1_energy'")
        .iter()
        .map(|r| r[1].as_f64().unwrap())
        .collect();
    assert_eq!(totals.len(), 2, "a total at each stop: {totals:?}");
    assert!(totals[0] < before_reset && totals[0] > 100.0, "before the reset: {totals:?}");
    assert!(totals.windows(2).all(|w| w[1] >= w[0]), "the stored total went back: {totals:?}");
    assert!((totals[1] - counter.total).abs() < 1e-6, "{totals:?} saved {}", counter.total);
    // Today's point (one per day, each write replacing the last) is what the simulator delivered.
    let days = rows(
        "SELECT kwh, partial, \"start\" FROM pmtr_energy_period WHERE meter = 'main' AND period = 'day'",
    );
    let stored: f64 = days.iter().map(|r| r[1].as_f64().unwrap()).sum();
    assert!(
        (stored - delivered).abs() < TOLERANCE_KWH,
        "stored days {days:?}, the simulator delivered {delivered} kWh"
    );
    let today = days.last().unwrap();
    let start = chrono::DateTime::from_timestamp_millis(today[0].as_i64().unwrap()).unwrap();
    assert_eq!(today[3].as_str().unwrap(), start.date_naive().to_string(), "stamped at its start");
    assert_eq!(start.time(), chrono::NaiveTime::MIN, "UTC midnight");
    assert_eq!(days[0][2].as_i64(), Some(1), "the first day a meter is read is partial");
    // CSV got the same points.
    let csv = std::fs::read_dir(dir.path().join("csv"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("energy-"))
        .expect("an energy CSV file");
    let text = std::fs::read_to_string(csv).unwrap();
    assert!(text.starts_with("time,meter,counter,period,start,kwh,partial,tariff,cost\n"), "{text}");
    assert!(text.lines().any(|l| l.contains(",main,l1_energy,,,")), "{text}");
}
