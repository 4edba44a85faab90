//! Decoding a reading by a meter definition against today's hand-written decoders.
//!
//! Per reading: the PZEM's ten registers by `pzem::decode` and by the `pzem-016` definition
//! (and, as a reference, by straight-line code with the definition's exact scaling);
//! the RX380's forty by `rx380::decode` and by the `rx380` definition; a PZEM poll's requests
//! and decoding by the hand-written driver (before) and by the driver's reader (now);
//! and a full SDM630 poll (three replies, 60 values) by its definition. Also the time to plan a
//! poll (group the registers into requests), which the daemon does once per plan, not per
//! reading.
//!
//! `cargo bench --bench definition` (BENCH_N=N readings, default 2000000).

use pmtr::meter::definition::{built_in, Definition};
use pmtr::meter::driver::Reader;
use pmtr::meter::{pzem, rx380, u32_lw, Model};
use pmtr::modbus::Pdu;
use pmtr::reading::{Phase, Quantity, Sample};
use std::hint::black_box;
use std::time::Instant;

fn n() -> u32 {
    std::env::var("BENCH_N").ok().and_then(|s| s.parse().ok()).unwrap_or(2_000_000)
}

/// Nanoseconds per call of `f`, best of three runs.
fn time(reps: u32, mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() * 1e9 / f64::from(reps)
        })
        .fold(f64::INFINITY, f64::min)
}

/// Nanoseconds per call of `f`, one run.
fn time1(reps: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() * 1e9 / f64::from(reps)
}

/// A reference, not a decoder of the daemon: the PZEM's registers decoded by straight-line code
/// with the definition's exact scaling (`raw / 10`, not `raw * 0.1`) and its plausibility check
/// fused in, which is the best a definition compiled into code could do. Checked against the
/// definition's output bit for bit before it is timed.
#[inline(never)]
fn pzem_exact(r: &[u16], phase: Phase) -> Option<Vec<Sample>> {
    let [v, i_lo, i_hi, p_lo, p_hi, e_lo, e_hi, hz, pf, alarm, ..] = *r else {
        return None;
    };
    let lw = |lo, hi| f64::from(u32_lw(lo, hi));
    let s = [
        (Quantity::Voltage, f64::from(v) / 10.0),
        (Quantity::Current, lw(i_lo, i_hi) / 1000.0),
        (Quantity::ActivePower, lw(p_lo, p_hi) / 10.0),
        (Quantity::ActiveEnergy, lw(e_lo, e_hi) / 1000.0),
        (Quantity::Frequency, f64::from(hz) / 10.0),
        (Quantity::PowerFactor, f64::from(pf) / 100.0),
        (Quantity::Alarm, f64::from(u8::from(alarm != 0))),
    ];
    let mut ok = true;
    for (q, x) in s {
        ok &= x.abs() <= q.limit();
    }
    ok.then(|| s.iter().map(|&(q, x)| Sample::new(phase, q, x)).collect())
}

fn def(name: &str) -> Definition {
    built_in().into_iter().find(|d| d.name == name).expect("built-in")
}

fn main() {
    let reps = n();
    println!("{:<44} {:>12}", "decode", "ns/reading");

    let regs = pzem::encode(229.8, 4.321, 950.5, 1234.567, 50.1, 0.96, false).to_vec();
    let hand = time(reps, || {
        black_box(pzem::decode(black_box(&regs), Phase::L1).unwrap());
    });
    let checked = time(reps, || {
        let s = pzem::decode(black_box(&regs), Phase::L1).unwrap();
        black_box(pmtr::meter::DecodeError::first_implausible(&s));
        black_box(s);
    });
    let d = def("pzem-016");
    let layout = d.layout(d.first_plan(), 0);
    let replies = vec![regs.clone()];
    let by_def = time(reps, || {
        black_box(layout.decode(&d, black_box(&replies), Phase::L1).unwrap());
    });
    assert_eq!(
        pzem_exact(&regs, Phase::L1).unwrap(),
        layout.decode(&d, &replies, Phase::L1).unwrap(),
        "the straight-line reference decodes as the definition does"
    );
    let mut out = Vec::new();
    let reuse = time(reps, || {
        layout.decode_into(&d, black_box(&replies), Phase::L1, &mut out).unwrap();
        black_box(&out);
    });
    // The same three interleaved in short rounds, so that a load that comes and goes falls on
    // all of them alike: the fastest round and the median of each.
    let rounds = 200;
    let per = (reps / 100).max(1);
    let mut t: [Vec<f64>; 5] = Default::default();
    for _ in 0..rounds {
        t[0].push(time1(per, || {
            let s = pzem::decode(black_box(&regs), Phase::L1).unwrap();
            black_box(pmtr::meter::DecodeError::first_implausible(&s));
            black_box(s);
        }));
        t[1].push(time1(per, || {
            black_box(layout.decode(&d, black_box(&replies), Phase::L1).unwrap());
        }));
        t[2].push(time1(per, || {
            layout.decode_into(&d, black_box(&replies), Phase::L1, &mut out).unwrap();
            black_box(&out);
        }));
        t[3].push(time1(per, || {
            black_box(pzem_exact(black_box(&regs), Phase::L1).unwrap());
        }));
        // What both decoders pay before decoding anything: the samples' allocation and its
        // release (seven samples, as the PZEM gives).
        t[4].push(time1(per, || {
            black_box(Vec::<Sample>::with_capacity(black_box(7)));
        }));
    }
    let [h, dd, di, ex, alloc] = t.map(|mut v| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2])
    });
    println!("{:<44} {:>12.1}", "PZEM, hand-written (pzem::decode)", hand);
    println!("{:<44} {:>12.1}", "PZEM, hand-written + plausibility (a poll)", checked);
    println!("{:<44} {:>12.1}", "PZEM, definition pzem-016", by_def);
    println!("{:<44} {:>12.1}", "PZEM, definition, samples buffer reused", reuse);
    println!("PZEM interleaved, {rounds} rounds of {per}: fastest round / median round, ns/reading");
    println!("{:<44} {:>12.1} {:>8.1}", "  hand-written + plausibility (a poll)", h.0, h.1);
    println!("{:<44} {:>12.1} {:>8.1}", "  definition pzem-016", dd.0, dd.1);
    println!("{:<44} {:>12.1} {:>8.1}", "  definition, samples buffer reused", di.0, di.1);
    println!("{:<44} {:>12.1} {:>8.1}", "  straight-line, exact scaling (reference)", ex.0, ex.1);
    println!("{:<44} {:>12.1} {:>8.1}", "  allocating and freeing 7 samples, alone", alloc.0, alloc.1);
    println!("{:<44} {:>12.2} {:>8.2}", "  definition / hand-written", dd.0 / h.0, dd.1 / h.1);
    println!("{:<44} {:>12.2} {:>8.2}", "  reference / hand-written", ex.0 / h.0, ex.1 / h.1);

    // What a poll of the daemon does besides moving bytes: its requests, then the decoding of
    // the replies with the plausibility check. Before: the hand-written PZEM driver. Now: the
    // driver's reader, which reads a PZEM by the built-in `pzem-016` (the layout planned once
    // and kept).
    let reader = Reader::new(Model::Pzem016, 1);
    let plan = reader.first_plan(1);
    let mut t: [Vec<f64>; 2] = Default::default();
    for _ in 0..rounds {
        t[0].push(time1(per, || {
            black_box(vec![pzem::read_request(black_box(1))]);
            let s = pzem::decode(black_box(&regs), Phase::L1).unwrap();
            black_box(pmtr::meter::DecodeError::first_implausible(&s));
            black_box(s);
        }));
        t[1].push(time1(per, || {
            black_box(reader.requests(black_box(plan)));
            let d = reader.decode(plan, black_box(&replies)).unwrap();
            black_box(pmtr::meter::DecodeError::first_implausible(&d.samples));
            black_box(d);
        }));
    }
    let [h, dd] = t.map(|mut v| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2])
    });
    println!("PZEM, a poll's requests and decoding, {rounds} rounds: fastest / median round, ns/poll");
    println!("{:<44} {:>12.1} {:>8.1}", "  hand-written driver (before)", h.0, h.1);
    println!("{:<44} {:>12.1} {:>8.1}", "  driver by pzem-016 (now)", dd.0, dd.1);
    println!("{:<44} {:>12.2} {:>8.2}", "  now / before", dd.0 / h.0, dd.1 / h.1);

    let rx = vec![rx380::encode(&rx380::Snapshot {
        kwh: 98765.432,
        kvah: 100000.0,
        kvarh: 1234.5,
        watts: -2500.0,
        va: 2700.0,
        var: 300.0,
        pf: -0.926,
        hz: 49.98,
        amps: [3.5, 3.25, 3.75, 0.5],
        line_volts: [398.0, 399.5, 401.0],
        phase_volts: [230.1, 229.9, 231.2],
    })
    .to_vec()];
    let rx_request = [pmtr::modbus::Request::read_input(1, rx380::BLOCK_START, rx380::BLOCK_LEN)];
    let hand = time(reps / 4, || {
        let image = pmtr::meter::RegisterImage::from_replies(&rx_request, black_box(&rx));
        let s = rx380::decode(&image).unwrap();
        black_box(pmtr::meter::DecodeError::first_implausible(&s));
        black_box(s);
    });
    let d = def("rx380");
    let layout = d.layout(d.first_plan(), 0);
    let by_def = time(reps / 4, || {
        black_box(layout.decode(&d, black_box(&rx), Phase::L1).unwrap());
    });
    println!("{:<44} {:>12.1}", "RX380, hand-written + plausibility (a poll)", hand);
    println!("{:<44} {:>12.1}", "RX380, definition rx380", by_def);

    let d = def("sdm630");
    let layout = d.layout(d.first_plan(), 0);
    let replies: Vec<Vec<u16>> = layout
        .requests(1)
        .iter()
        .map(|r| match r.pdu {
            Pdu::ReadInput { count, .. } => (0..count).map(|k| if k % 2 == 0 { 0x3F00 } else { 0 }).collect(),
            _ => unreachable!(),
        })
        .collect();
    let sdm = time(reps / 8, || {
        black_box(layout.decode(&d, black_box(&replies), Phase::L1).unwrap());
    });
    println!("{:<44} {:>12.1}", format!("SDM630, definition ({} values, 3 replies)", layout.values()), sdm);

    let plan = time(reps / 64, || {
        black_box(d.layout(d.first_plan(), black_box(0)));
    });
    println!("{:<44} {:>12.1}", "SDM630, planning a poll (once per plan)", plan);
}
