//! The reply scanner on hostile bytes (issue: one reply once kept `pmtr run` busy for ever).
//!
//! For a normal PZEM reply and for each hostile pattern of the simulator ([`Hostile`]) at
//! 260, 1024 and 4096 bytes (the transport's cap), the scan's work units
//! ([`ReplyScanner::work`]: positions looked at, CRC bytes, queue operations) and its time, fed
//! in one piece and fed byte by byte as a slow line hands bytes over, plus the verdict.
//! Pseudo-random bytes are measured the same way.
//!
//! `cargo bench --bench scan` (BENCH_N=N repetitions, default 200).

use pmtr::modbus::crc::append_crc;
use pmtr::modbus::frame::{ReplyScanner, Request, Scan};
use pmtr::sim::Hostile;
use std::hint::black_box;
use std::time::Instant;

fn n() -> u32 {
    std::env::var("BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(200)
}

/// Work, time per scan and the verdict for `bytes` fed in pieces of `piece` bytes.
fn measure(req: &Request, bytes: &[u8], piece: usize) -> (u64, f64, String) {
    let run = || {
        let mut s = ReplyScanner::new(req);
        let mut verdict = Scan::NeedMore;
        let mut end = 0;
        while end < bytes.len() && verdict == Scan::NeedMore {
            end = (end + piece).min(bytes.len());
            verdict = s.feed(black_box(&bytes[..end]));
        }
        let verdict = match verdict {
            Scan::NeedMore => format!("at timeout: {}", s.at_timeout(bytes)),
            Scan::Done { result: Ok(_), skipped } => format!("reply after {skipped} bytes"),
            Scan::Done { result: Err(e), .. } => e.to_string(),
        };
        (s.work(), verdict)
    };
    let (work, verdict) = run();
    let reps = n();
    let t = Instant::now();
    for _ in 0..reps {
        black_box(run());
    }
    (work, t.elapsed().as_secs_f64() / reps as f64, verdict)
}

fn row(what: &str, req: &Request, bytes: &[u8]) {
    let (w1, t1, v) = measure(req, bytes, bytes.len().max(1));
    let (w2, t2, _) = measure(req, bytes, 1);
    println!(
        "{what:<22} {:>5} B  one piece: {w1:>8} units {:>9.1} µs ({:>5.1} units/B)  byte by byte: {w2:>8} units {:>9.1} µs  {v}",
        bytes.len(),
        t1 * 1e6,
        w1 as f64 / bytes.len() as f64,
        t2 * 1e6,
    );
}

fn main() {
    let req = Request::read_input(1, 0, 10);
    let mut reply = vec![1u8, 4, 20];
    reply.extend((0..20u8).map(|i| i.wrapping_mul(37)));
    append_crc(&mut reply);
    row("normal PZEM reply", &req, &reply);
    for len in [260usize, 1024, 4096] {
        for h in Hostile::ALL {
            row(&format!("hostile {}", h.name()), &req, &h.burst(1, 4, len));
        }
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let random: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        row("pseudo-random", &req, &random);
    }
}
