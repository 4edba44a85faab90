//! The page's history rings (`src/status/history.rs`): memory for 30 meters over hours, and
//! proof that a reading allocates nothing once the rings are made.
//!
//! A counting global allocator counts every allocation of this process. 30 meters (half
//! PZEM-016, half RX380) get one reading a second each for `BENCH_HOURS` hours (default 3),
//! added through `History::sample` from a `StatusBoard` as the status API's sampler does
//! (each second the readings' times move on in place, so the board allocates nothing either).
//! Then `GET /api/history`'s body for all 30 meters.
//!
//! `cargo bench --bench history`

use chrono::{Duration, Utc};
use pmtr::bus::status::{MeterState, MeterStatus, StatusBoard};
use pmtr::meter::Model;
use pmtr::reading::{Phase, Quality, Reading, Sample};
use pmtr::status::history::{History, BUCKETS, BUCKET_SECONDS};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const METERS: usize = 30;

fn model_of(i: usize) -> Model {
    if i % 2 == 0 {
        Model::Pzem016
    } else {
        Model::Rx380
    }
}

fn reading(name: &str, model: Model, i: usize) -> Reading {
    let samples = model
        .sample_set(Phase::L1)
        .into_iter()
        .enumerate()
        .map(|(k, (p, q))| Sample::new(p, q, 230.0 + (i * 7 + k) as f64 * 0.123))
        .collect();
    Reading { meter: name.into(), model, time: Utc::now(), samples, quality: Quality::default() }
}

fn main() {
    let hours: i64 = std::env::var("BENCH_HOURS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let names: Vec<String> = (0..METERS).map(|i| format!("meter{i:03}")).collect();
    let board = StatusBoard::default();
    for (i, name) in names.iter().enumerate() {
        let mut s = MeterStatus::searching("house".into(), (i + 1) as u8, model_of(i));
        s.state = MeterState::Ok;
        s.last_reading = Some(reading(name, model_of(i), i));
        board.register(name, s);
    }

    let before = LIVE.load(Ordering::Relaxed);
    let history = History::new(names.iter().map(String::as_str));
    let made = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "history: {METERS} meters, {BUCKETS} buckets of {BUCKET_SECONDS} s each; heap taken by History::new: \
         {made} bytes ({:.1} KB a meter; History::bytes() = {})",
        made as f64 / METERS as f64 / 1024.0,
        history.bytes()
    );

    let seconds = hours * 3600;
    let live0 = LIVE.load(Ordering::Relaxed);
    let allocations0 = ALLOCATIONS.load(Ordering::Relaxed);
    let mut full_at = None;
    let t = Instant::now();
    for s in 0..seconds {
        // The buses' part: each meter's latest reading moves on one second, in place.
        for name in &names {
            board.update(name, |m| {
                if let Some(r) = m.last_reading.as_mut() {
                    r.time += Duration::seconds(1);
                }
            });
        }
        history.sample(black_box(&board));
        if s == BUCKETS as i64 * BUCKET_SECONDS {
            full_at = Some((ALLOCATIONS.load(Ordering::Relaxed), LIVE.load(Ordering::Relaxed)));
        }
    }
    let elapsed = t.elapsed();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations0;
    let grown = LIVE.load(Ordering::Relaxed) as i64 - live0 as i64;
    let readings = seconds as u64 * METERS as u64;
    let (full_allocations, full_live) = full_at.expect("at least an hour");
    println!(
        "{hours} h at one reading a second: {readings} readings, {allocations} allocations, heap grown by \
         {grown} bytes; after the first hour (rings full): {} allocations, {} bytes grown",
        ALLOCATIONS.load(Ordering::Relaxed) - full_allocations,
        LIVE.load(Ordering::Relaxed) as i64 - full_live as i64
    );
    println!(
        "sampling: {:.2} µs per sample of {METERS} meters ({:.0} ns a reading, with the in-place update)",
        elapsed.as_secs_f64() * 1e6 / seconds as f64,
        elapsed.as_secs_f64() * 1e9 / readings as f64
    );
    assert_eq!(allocations, 0, "a reading allocated");
    assert_eq!(grown, 0, "the history grew");

    let now = Utc::now() + Duration::seconds(seconds);
    let reps = 50;
    let mut bytes = 0;
    let t = Instant::now();
    for _ in 0..reps {
        let body = history.json(now, None, None).unwrap().to_string();
        bytes = body.len();
        black_box(body);
    }
    println!(
        "GET /api/history body for {METERS} meters: {:.2} ms, {:.1} KB",
        t.elapsed().as_secs_f64() * 1e3 / reps as f64,
        bytes as f64 / 1024.0
    );
    let t = Instant::now();
    for _ in 0..reps {
        let body = history.json(now, None, Some(now.timestamp() - 10)).unwrap().to_string();
        bytes = body.len();
        black_box(body);
    }
    println!(
        "the page's poll every 10 s (`?since=`, the last two buckets) for {METERS} meters: {:.1} µs, {:.1} KB",
        t.elapsed().as_secs_f64() * 1e6 / reps as f64,
        bytes as f64 / 1024.0
    );
    let one = history.json(now, Some("meter000"), None).unwrap().to_string().len();
    let three = history.json(now, Some("meter001"), None).unwrap().to_string().len();
    println!(
        "one meter: {:.1} KB (PZEM-016, 3 series), {:.1} KB (RX380)",
        one as f64 / 1024.0,
        three as f64 / 1024.0
    );
}
