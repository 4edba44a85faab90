//! Broken-neutral detection on the simulated supply (`pmtr::sim::grid`), seeded and
//! reproducible:
//!
//! 1. `broken`: a house runs 10 minutes on a sound neutral, then the neutral opens; for each
//!    load imbalance, BENCH_TRIALS houses (default 200) with their own seeds. Counted from the
//!    first second the true displacement reaches 20 V: how many are detected within 10 s,
//!    within 60 s, within the hour, and the median and worst times.
//! 2. `healthy`: BENCH_DAYS simulated days (default 73) of each healthy scenario, each day a
//!    house of its own seed: fault onsets per day. `BENCH_DAYS=365` gives a year of each;
//!    `BENCH_ONLY=text` only the scenarios whose name contains it.
//! 3. `fixed`: tier 2's neutral impedance estimate against the truth behind a neutral of fixed
//!    impedance (0.5 to 5 Ω), 50 houses each.
//!
//! The first two for tier 2 (line voltages), tier 1 (magnitudes) and seed 001's rule taken literally.
//! `cargo bench --bench neutral [-- broken|healthy|fixed]`; the default run takes about a minute.
//! `BENCH_SEED=n` shifts every house's seed (other houses, to check a change on seeds it was
//! not made on); `BENCH_TRACE=n` prints the first n cases tier 2 finds more than 10 s late and
//! the first n tier 1 finds more than 60 s late, second by second (with the tier's neutral
//! impedance estimate, the true one, and tier 2's count of floating steps); `BENCH_DIAG=1` says of tier 2's
//! late cases how many its hold would be late on too if fed the true displacement, and how far
//! the estimate reads from the truth around the 20 V mark; `BENCH_ZDIAG=1` prints tier 1's
//! neutral impedance estimate against the truth for its loosening cases not yet found 0, 30
//! and 60 s after the 20 V mark, and of each healthy scenario the largest estimate while the
//! fitted displacement is over 20 V, its largest impedance evidence (the estimate over the bar
//! the displacement sets, the fitted side steady; 1 is a fault) and each fault onset, and tier
//! 2's largest count of floating steps, largest impedance estimate, largest reading and
//! largest held displacement.

use pmtr::neutral::line::LineTier;
use pmtr::neutral::magnitude::MagnitudeTier;
use pmtr::neutral::seed::SeedRule;
use pmtr::neutral::{Settings, State, Verdict};
use pmtr::sim::grid::{Appliance, Complex, Disturbance, Grid, GridSample};
use std::time::Instant;

const NAMES: [&str; 3] = ["tier 2 (line voltages)", "tier 1 (magnitudes)", "seed 001 literal"];

struct Detectors {
    line: LineTier,
    magnitude: MagnitudeTier,
    seed: SeedRule,
}

impl Detectors {
    fn new() -> Detectors {
        let s = Settings::default();
        Detectors { line: LineTier::new(s), magnitude: MagnitudeTier::new(s), seed: SeedRule::new(s) }
    }

    fn update(&mut self, t: f64, s: &GridSample) -> [State; 3] {
        self.verdicts(t, s).map(|v| v.state)
    }

    fn verdicts(&mut self, t: f64, s: &GridSample) -> [Verdict; 3] {
        [
            self.line.update(t, s.phase, s.line, Some(s.current)),
            self.magnitude.update(t, s.phase, Some(s.current)),
            self.seed.update(t, s.phase),
        ]
    }
}

/// A second of a broken-neutral case, for the traces: the time, the simulator's sample, the
/// three verdicts, and the neutral impedance tier 2 and tier 1 estimate and the true one.
type Logged = (f64, GridSample, [Verdict; 3], [Option<f64>; 4]);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn house(seed: u64, imbalance: f64) -> Grid {
    Grid::new(seed, 230.0).with_house([400.0 * (1.0 + imbalance), 400.0, 400.0 * (1.0 - imbalance)])
}

fn broken() {
    let trials = env("BENCH_TRIALS", 200);
    // BENCH_SEED=n: other houses (each seed shifted by n), to check a change on seeds it was not made on.
    let base_seed = 1000 + env("BENCH_SEED", 0) as u64;
    let trace = env("BENCH_TRACE", 0);
    let mut traced = [0usize; 3];
    let diag = env("BENCH_DIAG", 0) > 0;
    let zdiag = env("BENCH_ZDIAG", 0) > 0;
    println!("## Broken neutral: {trials} houses per imbalance and way of breaking, 10 min sound, then 1 h watched\n");
    println!("| base loads L1/L2/L3 (W) | neutral | detector | reached 20 V | within 10 s | within 60 s | within 1 h | median | worst | false alarms before the break |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (imbalance, degrade) in [0.0, 0.25, 0.5, 0.9].into_iter().flat_map(|i| [(i, false), (i, true)]) {
        let mut reached = 0;
        let mut times: [Vec<f64>; 3] = Default::default();
        let mut missed = [0usize; 3];
        let mut early = [0usize; 3];
        // BENCH_DIAG=1: why tier 2 is late (over 10 s). Tier 2's own hold rule fed the true
        // displacement (a perfect estimate) is late too; or the estimate reads under the truth.
        let (mut late2, mut oracle_late, mut biases) = (0usize, 0usize, Vec::new());
        for trial in 0..trials {
            let mut g = house(base_seed + trial as u64, imbalance);
            let mut log: Vec<Logged> = Vec::new();
            let mut d = Detectors::new();
            let mut t = 0.0;
            for _ in 0..600 {
                t += 1.0;
                let s = g.step(1.0);
                for (k, st) in d.update(t, &s).iter().enumerate() {
                    if *st == State::Fault {
                        early[k] += 1;
                    }
                }
            }
            let healthy = g.neutral.unwrap_or(Complex::new(0.25, 0.05));
            if !degrade {
                g.set_neutral(None);
            }
            let mut t20 = None;
            let mut found: [Option<f64>; 3] = [None; 3];
            for i in 0..3600 {
                t += 1.0;
                if degrade {
                    // A loosening connection: ×1000 in 10 minutes, then open.
                    let f = 1000f64.powf(f64::from(i) / 600.0);
                    g.set_neutral(if i < 600 {
                        Some(Complex::new(healthy.re * f, healthy.im * f))
                    } else {
                        None
                    });
                }
                let s = g.step(1.0);
                if t20.is_none() && s.displacement >= 20.0 {
                    t20 = Some(t);
                }
                let v = d.verdicts(t, &s);
                if zdiag && degrade {
                    if let Some(t0) = t20 {
                        if [0.0, 30.0, 60.0].contains(&(t - t0)) && found[1].is_none() {
                            println!(
                                "  trial {trial} +{:.0}s Z {:.2?} true Zn {:.2} fit d {:.1?} true d {:.1} score {:.2}",
                                t - t0,
                                d.magnitude.impedance(),
                                g.neutral.map_or(f64::INFINITY, |z| z.abs()),
                                v[1].shift,
                                s.displacement,
                                v[1].score
                            );
                        }
                    }
                }
                for (k, st) in v.iter().enumerate() {
                    if st.state == State::Fault && found[k].is_none() {
                        found[k] = Some(t);
                    }
                }
                if trace > 0 || diag {
                    log.push((
                        t,
                        s,
                        v,
                        [
                            d.line.impedance(),
                            d.magnitude.impedance(),
                            g.neutral.map(|z| z.abs()),
                            Some(d.line.floating_steps()),
                        ],
                    ));
                }
            }
            let Some(t20) = t20 else { continue };
            if diag && found[0].is_none_or(|f| f - t20 > 10.0) {
                late2 += 1;
                let mut over = 0.0;
                let mut oracle = None;
                for (t, s, _, _) in log.iter().filter(|(t, _, _, _)| *t >= t20) {
                    over = if s.displacement >= 20.0 { over + 1.0 } else { f64::max(over - 1.0, 0.0) };
                    if over > pmtr::neutral::line::HOLD_ON {
                        oracle = Some(*t);
                        break;
                    }
                }
                if oracle.is_none_or(|o| o - t20 > 10.0) {
                    oracle_late += 1;
                }
                let w: Vec<f64> = log
                    .iter()
                    .filter(|(t, _, v, _)| (*t - t20).abs() <= 10.0 && v[0].shift.is_some())
                    .map(|(_, s, v, _)| v[0].shift.unwrap_or(0.0) - s.displacement)
                    .collect();
                biases.push(w.iter().sum::<f64>() / w.len().max(1) as f64);
            }
            // BENCH_TRACE=n: print the first n cases (over all rows) each tier found late,
            // tier 2 more than 10 s, tier 1 more than 60 s, second by second from 20 s before
            // the 20 V mark.
            for k in 0..2 {
                let late = found[k].is_none_or(|f| f - t20 > if k == 0 { 10.0 } else { 60.0 });
                if late && traced[k] < trace {
                    traced[k] += 1;
                    println!(
                        "trace: {} seed {} imbalance {imbalance} degrade {degrade}",
                        NAMES[k],
                        base_seed + trial as u64
                    );
                    let end = found[k].unwrap_or(t20 + 400.0);
                    for (t, s, v, z) in log.iter().filter(|(t, _, _, _)| *t >= t20 - 20.0 && *t <= end) {
                        println!(
                            "  t {:+5.0} true {:5.1} est {:5.1} score {:6.3} {:?} U {:5.1} {:5.1} {:5.1} I {:5.1} {:5.1} {:5.1} Z {:.2?} Zn {:.2?} F {:.2?}",
                            t - t20,
                            s.displacement,
                            v[k].shift.unwrap_or(f64::NAN),
                            v[k].score,
                            v[k].state,
                            s.phase[0], s.phase[1], s.phase[2],
                            s.current[0], s.current[1], s.current[2],
                            z[k], z[2], z[3]
                        );
                    }
                }
            }
            reached += 1;
            for k in 0..3 {
                match found[k] {
                    Some(f) => times[k].push((f - t20).max(0.0)),
                    None => missed[k] += 1,
                }
            }
        }
        if diag {
            biases.sort_by(f64::total_cmp);
            println!(
                "diag: tier 2 late {late2}; the hold on the true displacement late too {oracle_late}; estimate - truth around the 20 V mark, median {:.2} V, quartiles {:.2} {:.2}",
                biases.get(biases.len() / 2).unwrap_or(&f64::NAN),
                biases.get(biases.len() / 4).unwrap_or(&f64::NAN),
                biases.get(3 * biases.len() / 4).unwrap_or(&f64::NAN),
            );
        }
        for k in 0..3 {
            let v = &mut times[k];
            v.sort_by(f64::total_cmp);
            let within = |s: f64| v.iter().filter(|x| **x <= s).count();
            let pct = |n: usize| if reached == 0 { 0.0 } else { 100.0 * n as f64 / reached as f64 };
            let median = v.get(v.len() / 2).map_or("-".into(), |x| format!("{x:.0} s"));
            let worst = if missed[k] > 0 {
                "never".into()
            } else {
                v.last().map_or("-".into(), |x| format!("{x:.0} s"))
            };
            println!(
                "| {:.0}/{:.0}/{:.0} | {} | {} | {}/{} | {:.1} % | {:.1} % | {:.1} % | {} | {} | {} |",
                400.0 * (1.0 + imbalance),
                400.0,
                400.0 * (1.0 - imbalance),
                if degrade { "degrades over 10 min" } else { "opens" },
                NAMES[k],
                reached,
                trials,
                pct(within(10.0)),
                pct(within(60.0)),
                pct(v.len()),
                median,
                worst,
                early[k]
            );
        }
    }
    println!();
}

fn healthy() {
    let days = env("BENCH_DAYS", 73);
    // BENCH_SEED=n shifts every day's seed by n.
    let base_seed = env("BENCH_SEED", 0) as u64;
    let zdiag = env("BENCH_ZDIAG", 0) > 0;
    let sags = Disturbance::OnePhase { depth: 0.2, max_seconds: 60.0, every: 600.0 };
    let scenarios: [(&str, f64, Disturbance); 10] = [
        ("balanced loads, quiet grid", 0.0, Disturbance::None),
        ("unbalanced loads (720/400/40 W base)", 0.8, Disturbance::None),
        ("one phase sags up to 20 % for up to 60 s, every 10 min", 0.5, sags),
        (
            "all phases swell up to 10 % for up to 5 min, every 15 min",
            0.5,
            Disturbance::AllPhases { depth: 0.1, max_seconds: 300.0, every: 900.0 },
        ),
        ("all phases drift (5 % r.m.s.)", 0.5, Disturbance::Drift { depth: 0.05 }),
        (
            "unstable grid (0.2 % noise/s, 4 % steps per phase every 30 s)",
            0.5,
            Disturbance::Unstable { sigma: 0.002, step: 0.04, every: 30.0 },
        ),
        (
            "one phase 5-25 % low for up to 30 min, every 2 h",
            0.5,
            Disturbance::OnePhase { depth: 0.25, max_seconds: 1800.0, every: 7200.0 },
        ),
        (
            "a 7.4 kW car charger on L1 (1 h on, 2 h off), unstable grid",
            0.5,
            Disturbance::Unstable { sigma: 0.002, step: 0.04, every: 30.0 },
        ),
        ("a motor starting on L1 (87 A for 1-2 s, every 10 min)", 0.5, Disturbance::None),
        ("a motor starting on L1 (87 A for 1-2 s, every 10 min), one phase sags as above", 0.5, sags),
    ];
    println!("## Healthy neutral: {days} simulated days per scenario\n");
    println!("| scenario | {} | {} | {} | largest true displacement |", NAMES[0], NAMES[1], NAMES[2]);
    println!("|---|---|---|---|---|");
    // BENCH_ONLY=text: only the scenarios whose name contains it.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    for (i, (name, imbalance, disturbance)) in scenarios.iter().enumerate() {
        if !name.contains(only.as_str()) {
            continue;
        }
        let mut onsets = [0usize; 3];
        let mut worst: f64 = 0.0;
        let mut zmax: f64 = f64::NEG_INFINITY;
        let mut floating_max: f64 = 0.0;
        let mut held_max: f64 = 0.0;
        let mut evidence_max: f64 = 0.0;
        let mut shown_max: f64 = 0.0;
        let mut line_z_max: f64 = 0.0;
        let mut line_d_max: f64 = 0.0;
        for day in 0..days {
            let mut g = house(((i as u64 + 1) << 32) + base_seed + day as u64, *imbalance);
            g.disturbance = *disturbance;
            if name.contains("charger") {
                g.appliances.push(Appliance::new(0, 7400.0, 0.99, 230.0, 3600.0, 7200.0));
            }
            if name.contains("motor") {
                // A compressor's start: 20 kVA at a power factor of 0.5 for a second or two.
                let mut start = Appliance::new(0, 10_000.0, 0.5, 230.0, 1.0, 600.0);
                start.max_on = 2.0;
                g.appliances.push(start);
            }
            let mut d = Detectors::new();
            let mut prev = [State::Ok; 3];
            for s in 0..86_400 {
                let sample = g.step(1.0);
                worst = worst.max(sample.displacement);
                let vs = d.verdicts(f64::from(s), &sample);
                let st = vs.map(|v| v.state);
                for k in 0..3 {
                    if st[k] == State::Fault && prev[k] != State::Fault {
                        onsets[k] += 1;
                        if k == 1 && zdiag {
                            println!(
                                "  onset day {day} s {s}: Z {:?} true {:.1} V",
                                d.magnitude.impedance(),
                                sample.displacement
                            );
                        }
                    }
                }
                if zdiag {
                    floating_max = floating_max.max(d.line.floating_steps());
                    held_max = held_max.max(d.line.held_floor().unwrap_or(0.0));
                    evidence_max = evidence_max.max(d.magnitude.impedance_evidence());
                    shown_max = shown_max.max(d.magnitude.shown_evidence());
                    line_z_max = line_z_max.max(d.line.impedance().unwrap_or(0.0));
                    line_d_max = line_d_max.max(vs[0].shift.unwrap_or(0.0));
                    if let (Some(z), true) = (d.magnitude.impedance(), vs[1].shift.is_some_and(|x| x >= 20.0))
                    {
                        zmax = zmax.max(z);
                    }
                }
                prev = st;
            }
        }
        if zdiag {
            println!("  largest impedance estimate over 20 V: {zmax:.2} ohm");
            println!("  tier 1's largest impedance evidence, steady and over 20 V (1 is a fault): {evidence_max:.2}");
            println!(
                "  tier 1's largest evidence within {} s of a steady 20 V (1 is a fault): {shown_max:.2}",
                pmtr::neutral::magnitude::SHOWN_TIME
            );
            println!("  tier 2's largest count of floating steps: {floating_max:.2}");
            println!("  tier 2's largest impedance estimate: {line_z_max:.2} ohm; largest displacement: {line_d_max:.1} V");
            println!(
                "  tier 2's largest held displacement (lowest of {} s): {held_max:.1} V",
                pmtr::neutral::line::HELD_TIME
            );
        }
        let per_day = |n: usize| format!("{n} ({:.3}/day)", n as f64 / days as f64);
        println!(
            "| {name} | {} | {} | {} | {worst:.1} V |",
            per_day(onsets[0]),
            per_day(onsets[1]),
            per_day(onsets[2])
        );
    }
    println!();
}

/// Tier 2's impedance estimate (the corrected one) behind a neutral of fixed impedance (the healthy angle, 11°),
/// 50 houses each, sampled every 30 s from the 5th to the 20th minute: what it reads against
/// the truth.
fn fixed() {
    println!("## Neutral impedance estimate (tier 2) behind a fixed neutral: 50 houses, every 30 s from 5 to 20 min\n");
    println!("| neutral | base loads L1/L2/L3 (W) | estimate / truth: 10th percentile | median | 90th percentile |");
    println!("|---|---|---|---|---|");
    for zn in [0.5, 1.0, 2.0, 3.0, 5.0] {
        for imbalance in [0.0, 0.5] {
            let mut ratios = vec![];
            for trial in 0..50 {
                let mut g = house(7000 + trial, imbalance);
                g.set_neutral(Some(Complex::polar(zn, 0.2f64.atan())));
                let mut m = LineTier::new(Settings::default());
                for t in 0..1200 {
                    let s = g.step(1.0);
                    m.update(f64::from(t), s.phase, s.line, Some(s.current));
                    if t >= 300 && t % 30 == 0 {
                        ratios.extend(m.impedance().map(|z| z / zn));
                    }
                }
            }
            ratios.sort_by(f64::total_cmp);
            let q = |f: f64| {
                ratios.get(((ratios.len().max(1) - 1) as f64 * f) as usize).copied().unwrap_or(f64::NAN)
            };
            println!(
                "| {zn} Ω | {:.0}/400/{:.0} | {:.2} | {:.2} | {:.2} |",
                400.0 * (1.0 + imbalance),
                400.0 * (1.0 - imbalance),
                q(0.1),
                q(0.5),
                q(0.9)
            );
        }
    }
    println!();
}

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let want = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let start = Instant::now();
    if want("broken") {
        broken();
    }
    if want("healthy") {
        healthy();
    }
    if want("fixed") {
        fixed();
    }
    eprintln!("({:.1} s)", start.elapsed().as_secs_f64());
}
