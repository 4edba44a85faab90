//! Every configured voltage set's detector, fed the gateway's readings. Pure: a reading and
//! the time go in, a state change (if any) comes out.
//!
//! A three-phase meter gives a sample per reading. Three single-phase meters give a sample
//! once each of them has read again since the last one (a round), and only if their readings
//! lie within [`MAX_SKEW`] of each other: voltages read a long time apart describe no one
//! moment.

use super::{Detector, Sample, State, Verdict};
use crate::config::{Config, NeutralSource};
use crate::reading::{Phase, Quantity, Reading};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The largest spread of the times of three single-phase readings that make one sample.
pub const MAX_SKEW: Duration = Duration::from_secs(10);

const PHASES: [Phase; 3] = [Phase::L1, Phase::L2, Phase::L3];
const LINES: [Phase; 3] = [Phase::L12, Phase::L23, Phase::L31];

/// A set's state changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Index of the set in the config's `neutral`.
    pub set: usize,
    pub name: Arc<str>,
    pub from: State,
    pub verdict: Verdict,
}

/// Where a meter's voltages go.
#[derive(Debug, Clone, Copy)]
enum SetPart {
    /// A three-phase meter: the whole set.
    Whole,
    /// One phase of a set of three single-phase meters (0, 1, 2 for L1, L2, L3).
    Phase(usize),
}

/// One single-phase meter's part of the next sample.
#[derive(Debug, Clone, Copy)]
struct Pending {
    time: Duration,
    volts: f64,
    amps: Option<f64>,
}

#[derive(Debug, Clone)]
struct SetRt {
    name: Arc<str>,
    detector: Detector,
    /// Three single-phase meters: each phase's latest voltage and current with its time,
    /// taken since the last sample.
    pending: [Option<Pending>; 3],
    verdict: Option<Verdict>,
}

/// The detectors of every `[[neutral]]`.
#[derive(Debug, Clone)]
pub struct Watch {
    sets: Vec<SetRt>,
    /// Meter name → (set, slot).
    meters: HashMap<Arc<str>, (usize, SetPart)>,
}

impl Watch {
    pub fn new(config: &Config) -> Watch {
        let mut meters = HashMap::new();
        let sets = config
            .neutral
            .iter()
            .enumerate()
            .map(|(i, n)| {
                match &n.source {
                    NeutralSource::Meter(m) => {
                        meters.insert(Arc::from(m.as_str()), (i, SetPart::Whole));
                    }
                    NeutralSource::Meters(ms) => {
                        for (k, m) in ms.iter().enumerate() {
                            meters.insert(Arc::from(m.as_str()), (i, SetPart::Phase(k)));
                        }
                    }
                }
                SetRt {
                    name: n.name.as_str().into(),
                    detector: Detector::new(super::Settings::of(n)),
                    pending: [None; 3],
                    verdict: None,
                }
            })
            .collect();
        Watch { sets, meters }
    }

    /// The set meter `name` belongs to.
    pub fn set_of(&self, meter: &str) -> Option<usize> {
        self.meters.get(meter).map(|(s, _)| *s)
    }

    /// Set `i`'s latest verdict; None before its first sample.
    pub fn verdict(&self, i: usize) -> Option<Verdict> {
        self.sets.get(i).and_then(|s| s.verdict)
    }

    /// Every set's name and latest verdict, in the config's order.
    pub fn verdicts(&self) -> impl Iterator<Item = (&Arc<str>, Option<Verdict>)> {
        self.sets.iter().map(|s| (&s.name, s.verdict))
    }

    /// A reading arrived at `now` (the gateway's monotonic clock). Returns the set's state
    /// change, if this reading made a sample that changed it.
    pub fn on_reading(&mut self, reading: &Reading, now: Duration) -> Option<Change> {
        let &(i, slot) = self.meters.get(&reading.meter)?;
        let set = &mut self.sets[i];
        let all = |v: [Option<f64>; 3]| match v {
            [Some(a), Some(b), Some(c)] => Some([a, b, c]),
            _ => None,
        };
        let sample = match slot {
            SetPart::Whole => Sample {
                phase: all(PHASES.map(|p| reading.get(p, Quantity::Voltage)))?,
                line: all(LINES.map(|p| reading.get(p, Quantity::Voltage))),
                current: all(PHASES.map(|p| reading.get(p, Quantity::Current))),
            },
            SetPart::Phase(k) => {
                // A single-phase meter reports its voltage on the phase it is configured on.
                let of = |q: Quantity| {
                    reading
                        .samples
                        .iter()
                        .find(|s| s.quantity == q && PHASES.contains(&s.phase))
                        .map(|s| s.value)
                };
                let volts = of(Quantity::Voltage)?;
                set.pending[k] = Some(Pending { time: now, volts, amps: of(Quantity::Current) });
                let [Some(a), Some(b), Some(c)] = set.pending else { return None };
                let times = [a.time, b.time, c.time];
                let (first, last) = (times.iter().min()?, times.iter().max()?);
                if *last - *first > MAX_SKEW {
                    // Drop the stale ones; the round goes on with the fresh.
                    for p in &mut set.pending {
                        if p.is_some_and(|p| now - p.time > MAX_SKEW) {
                            *p = None;
                        }
                    }
                    return None;
                }
                set.pending = [None; 3];
                Sample {
                    phase: [a.volts, b.volts, c.volts],
                    line: None,
                    current: all([a.amps, b.amps, c.amps]),
                }
            }
        };
        if sample.phase.iter().chain(sample.line.iter().flatten()).any(|v| !v.is_finite()) {
            return None;
        }
        let before = set.verdict.map(|v| v.state);
        let verdict = set.detector.update(now.as_secs_f64(), &sample);
        set.verdict = Some(verdict);
        // The first verdict is a change only when it is not `ok`.
        let from = before.unwrap_or(State::Ok);
        (from != verdict.state).then(|| Change { set: i, name: set.name.clone(), from, verdict })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::meter::Model;
    use crate::neutral::geometry::Point;
    use crate::reading::{Quality, Sample};

    const CONFIG: &str = r#"
[[bus]]
name = "b"
port = "/dev/null"

[[meter]]
name = "main"
model = "rx380"
address = 1
bus = "b"

[[meter]]
name = "a"
model = "pzem-016"
address = 4
bus = "b"

[[meter]]
name = "b2"
model = "pzem-016"
address = 5
phase = "L2"
bus = "b"

[[meter]]
name = "c"
model = "pzem-016"
address = 6
phase = "L3"
bus = "b"

[[neutral]]
name = "supply"
meter = "main"

[[neutral]]
name = "house"
meters = ["a", "b2", "c"]
"#;

    fn voltages(n: Point) -> ([f64; 3], [f64; 3]) {
        let a = |deg: f64| Point::new(230.0 * deg.to_radians().cos(), 230.0 * deg.to_radians().sin());
        let c = [a(90.0), a(-30.0), a(210.0)];
        (c.map(|k| n.dist(k)), [c[0].dist(c[1]), c[1].dist(c[2]), c[2].dist(c[0])])
    }

    fn reading(meter: &str, model: Model, samples: Vec<(Phase, f64)>) -> Reading {
        Reading {
            meter: meter.into(),
            model,
            time: chrono::DateTime::UNIX_EPOCH,
            samples: samples
                .into_iter()
                .map(|(phase, value)| Sample { phase, quantity: Quantity::Voltage, value })
                .collect(),
            quality: Quality::default(),
        }
    }

    fn rx380(n: Point) -> Reading {
        let (u, l) = voltages(n);
        let mut s: Vec<(Phase, f64)> = PHASES.into_iter().zip(u).collect();
        s.extend(LINES.into_iter().zip(l));
        reading("main", Model::Rx380, s)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_three_phase_meter_with_line_voltages_faults_and_says_so_once() {
        let config = load_str(CONFIG, "pmtr.toml").unwrap();
        let mut w = Watch::new(&config);
        assert_eq!(w.verdict(0), None);
        assert_eq!(w.on_reading(&rx380(Point::new(0.0, 0.0)), secs(0)), None);
        assert_eq!(w.verdict(0).unwrap().state, State::Ok);
        let mut changes = vec![];
        for s in 1..10 {
            changes.extend(w.on_reading(&rx380(Point::new(40.0, 0.0)), secs(s)));
        }
        let states: Vec<(State, State)> = changes.iter().map(|c| (c.from, c.verdict.state)).collect();
        assert_eq!(states, [(State::Ok, State::Suspect), (State::Suspect, State::Fault)]);
        assert_eq!(&*changes[1].name, "supply");
        assert!((changes[1].verdict.shift.unwrap() - 40.0).abs() < 1e-6);
        assert_eq!(w.set_of("main"), Some(0));
        assert_eq!(w.set_of("a"), Some(1));
        assert_eq!(w.verdict(1), None, "the other set saw nothing");
    }

    #[test]
    fn three_single_phase_meters_make_one_sample_per_round() {
        let config = load_str(CONFIG, "pmtr.toml").unwrap();
        let mut w = Watch::new(&config);
        let (u, _) = voltages(Point::new(0.0, 0.0));
        let names = [("a", Phase::L1), ("b2", Phase::L2), ("c", Phase::L3)];
        for (k, (m, p)) in names.iter().enumerate() {
            w.on_reading(&reading(m, Model::Pzem016, vec![(*p, u[k])]), secs(k as u64));
            assert_eq!(w.verdict(1).is_some(), k == 2, "after {m}");
        }
        // A reading from far apart is no sample with the others.
        w.on_reading(&reading("a", Model::Pzem016, vec![(Phase::L1, 300.0)]), secs(10));
        w.on_reading(&reading("b2", Model::Pzem016, vec![(Phase::L2, 300.0)]), secs(30));
        w.on_reading(&reading("c", Model::Pzem016, vec![(Phase::L3, 300.0)]), secs(31));
        assert_eq!(w.verdict(1).unwrap().shift.map(|s| s < 1.0), Some(true), "no sample made");
    }

    #[test]
    fn readings_without_voltages_or_of_other_meters_change_nothing() {
        let config = load_str(CONFIG, "pmtr.toml").unwrap();
        let mut w = Watch::new(&config);
        assert_eq!(w.on_reading(&reading("main", Model::Rx380, vec![(Phase::L1, 230.0)]), secs(1)), None);
        assert_eq!(w.on_reading(&reading("other", Model::Rx380, vec![]), secs(1)), None);
        let mut r = rx380(Point::new(0.0, 0.0));
        r.samples[0].value = f64::NAN;
        assert_eq!(w.on_reading(&r, secs(2)), None);
        assert_eq!(w.verdict(0), None);
    }
}
