//! The trigger engine, pure: readings and clock ticks in; relay levels, state changes and
//! "save now" out. No I/O, no clock of its own: [`Now`] is passed in, so every decision is
//! tested with scripted readings and exact times.
//!
//! - Each trigger keeps, per variable, a moving average (or the latest value) fed with the
//!   readings of its meters, timed by the gateway's monotonic clock at arrival: a wall-clock
//!   step (NTP at boot on a Pi without a real-time clock) never empties or freezes a window.
//! - A meter that has been silent for longer than the trigger's `stale_after` makes its values
//!   unknown; the trigger then does what `on_stale` says (see [`OnStale`]).
//! - A relay is forced by hand, or else tripped (the opposite of its default) while any of its
//!   live triggers is tripped, or else at its default. Dry-run triggers never count.

use super::expr::{ExprError, Expression};
use super::saved::{Saved, SavedTrigger};
use super::state::{Hysteresis, State, Transition};
use super::vars::{self, NeutralVar, Source};
use super::MovingAverage;
use crate::config::{Config, OnStale};
use crate::control::{Forced, RelayStatus, TriggerStatus};
use crate::reading::{trim, Cause, ChangeEvent, Reading, StateChange, Subject};
use crate::relay::Level;
use chrono::{DateTime, NaiveDateTime, Utc};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

/// The time, three ways.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic, since any fixed origin: hold, recovery, averages and staleness.
    pub mono: Duration,
    /// For the record.
    pub wall: DateTime<Utc>,
    /// The gateway's local time: the time-of-day variables. None while the clock is not known
    /// to be right (before NTP on a Pi with no real-time clock): they are unknown then.
    pub local: Option<NaiveDateTime>,
}

/// What the shell must do after a call.
#[derive(Debug, Default, PartialEq)]
pub struct Output {
    /// Relays (indices into the config's relays) to drive to a level, in order.
    pub switches: Vec<(usize, Level)>,
    /// To log, store and send to the alerts.
    pub changes: Vec<StateChange>,
    /// The saved state changed: write it (see [`Engine::saved`]).
    pub save: bool,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.switches.is_empty() && self.changes.is_empty() && !self.save
    }
}

enum Input {
    Average(MovingAverage),
    Latest(Option<f64>),
    Clock(vars::ClockVar),
}

struct TriggerRt {
    name: Arc<str>,
    when: String,
    expr: Expression,
    sources: Vec<Source>,
    inputs: Vec<Input>,
    /// The meters it reads (indices).
    meters: Vec<usize>,
    hyst: Hysteresis,
    relays: Vec<usize>,
    dry_run: bool,
    stale_after: Duration,
    on_stale: OnStale,
    stale: bool,
    values: Vec<Option<f64>>,
    since: Option<DateTime<Utc>>,
    /// The last evaluation failed (logged once, until it succeeds again).
    failing: bool,
}

impl TriggerRt {
    /// `L1U=254.2 L2U=231`: the values of the last evaluation.
    fn values_text(&self) -> String {
        let mut s = String::new();
        for (name, v) in self.expr.variables().iter().zip(&self.values) {
            if !s.is_empty() {
                s.push(' ');
            }
            match v {
                Some(v) => {
                    let _ = write!(s, "{name}={}", trim(*v));
                }
                None => {
                    let _ = write!(s, "{name}=?");
                }
            }
        }
        s
    }

    /// Whether the trigger holds its relays tripped.
    fn drives(&self) -> bool {
        !self.dry_run && self.hyst.is_tripped()
    }

    fn saved_class(&self) -> Option<bool> {
        match self.hyst.state() {
            State::Latched => Some(true),
            State::Tripped | State::Recovering { .. } => Some(false),
            _ => None,
        }
    }
}

struct RelayRt {
    name: Arc<str>,
    pin: u8,
    active_low: bool,
    default: Level,
    level: Level,
    forced: Option<Forced>,
    /// Its live triggers.
    drivers: Vec<usize>,
}

/// Every trigger and relay of a configuration.
pub struct Engine {
    triggers: Vec<TriggerRt>,
    relays: Vec<RelayRt>,
    meter_index: HashMap<String, usize>,
    /// Per meter, the triggers that read it.
    readers: Vec<Vec<usize>>,
    /// Per meter, when its last reading arrived.
    last_seen: Vec<Option<Duration>>,
    started: Duration,
    /// The `[[neutral]]` sets' detectors, fed every reading before the triggers see it.
    neutral: crate::neutral::watch::Watch,
    /// Per set, its meters (indices).
    set_meters: Vec<Vec<usize>>,
    /// The energy books of `today_kwh` and `today_cost`: kept by the engine itself from the
    /// readings it sees (the same pure books as the energy task's), None when no trigger reads them.
    energy: Option<crate::energy::Book>,
}

/// Why an engine cannot be built from a configuration (one that was loaded never fails: its
/// expressions were checked at load).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    #[error("trigger {trigger}: {error}")]
    Expression { trigger: String, error: ExprError },
    #[error("trigger {trigger}: no relay named {relay}")]
    NoRelay { trigger: String, relay: String },
}

/// Why a request by hand (force, release, reset) is refused; the text goes to the user as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedError {
    /// `hint` is empty or ` (did you mean …?)`.
    #[error("no relay named {name}{hint}")]
    NoRelay { name: String, hint: String },
    #[error("relay {0} is not forced")]
    NotForced(String),
    /// `hint` is empty or ` (did you mean …?)`.
    #[error("no trigger named {name}{hint}")]
    NoTrigger { name: String, hint: String },
    #[error("trigger {name} is not latched (it is {state}): only a latch is reset by hand")]
    NotLatched { name: String, state: &'static str },
}

impl Engine {
    /// Builds the engine of a loaded configuration (whose expressions were checked at load;
    /// an error here means the config was built by hand). Everything starts released, relays
    /// at their default; call [`Engine::restore`] before the first reading.
    pub fn new(config: &Config, now: Duration) -> Result<Engine, BuildError> {
        let meter_index: HashMap<String, usize> =
            config.meters.iter().enumerate().map(|(i, m)| (m.name.clone(), i)).collect();
        let mut relays: Vec<RelayRt> = config
            .relays
            .iter()
            .map(|r| RelayRt {
                name: r.name.as_str().into(),
                pin: r.pin,
                active_low: r.active_low,
                default: r.default,
                level: r.default,
                forced: None,
                drivers: Vec::new(),
            })
            .collect();
        let mut readers = vec![Vec::new(); config.meters.len()];
        let mut triggers = Vec::new();
        for (ti, t) in config.triggers.iter().enumerate() {
            let own = t.meter.as_ref().and_then(|m| meter_index.get(m).copied());
            let mut sources = Vec::new();
            let expr = Expression::compile(&t.when, &mut |name| {
                let s = vars::resolve(name, own, &config.meters, &config.neutral)?;
                sources.push(s);
                Ok(s.kind())
            })
            .map_err(|error| BuildError::Expression { trigger: t.name.clone(), error })?;
            let inputs = sources
                .iter()
                .map(|s| match s {
                    Source::Clock(c) => Input::Clock(*c),
                    // A verdict is already a judgement over time: never averaged.
                    Source::Neutral { .. } | Source::Energy { .. } => Input::Latest(None),
                    Source::Meter { quantity, .. } => match t.average {
                        Some(w) if !quantity.is_counter() => Input::Average(MovingAverage::new(w)),
                        _ => Input::Latest(None),
                    },
                })
                .collect();
            let mut meters = vars::meters_of(&sources);
            // A set of three single-phase meters gives its verdict at the reading of any of
            // them, and is stale when any of them is silent.
            for s in &sources {
                if let Source::Neutral { set, .. } = s {
                    let set_meters = config.neutral.get(*set).map(|n| n.meters()).unwrap_or_default();
                    meters.extend(set_meters.iter().filter_map(|m| meter_index.get(*m).copied()));
                }
            }
            meters.sort_unstable();
            meters.dedup();
            for &m in &meters {
                readers[m].push(ti);
            }
            let mut relay_ids = Vec::new();
            for r in &t.relays {
                let i = relays
                    .iter()
                    .position(|x| &*x.name == r)
                    .ok_or_else(|| BuildError::NoRelay { trigger: t.name.clone(), relay: r.clone() })?;
                if !t.dry_run {
                    relays[i].drivers.push(ti);
                }
                relay_ids.push(i);
            }
            triggers.push(TriggerRt {
                name: t.name.as_str().into(),
                when: t.when.clone(),
                values: vec![None; sources.len()],
                expr,
                sources,
                inputs,
                meters,
                hyst: Hysteresis::new(t.hold, t.recovery, t.latch),
                relays: relay_ids,
                dry_run: t.dry_run,
                stale_after: t.stale_after,
                on_stale: t.on_stale,
                stale: false,
                since: None,
                failing: false,
            });
        }
        let last_seen = vec![None; config.meters.len()];
        let neutral = crate::neutral::watch::Watch::new(config);
        let set_meters = config
            .neutral
            .iter()
            .map(|n| n.meters().iter().filter_map(|m| meter_index.get(*m).copied()).collect())
            .collect();
        // The energy books only when an expression reads them (`today_kwh`, `today_cost`).
        let energy = triggers
            .iter()
            .any(|t| t.sources.iter().any(|s| matches!(s, Source::Energy { .. })))
            .then(|| {
                crate::energy::Book::new(
                    crate::energy::run::zone(config),
                    config.energy.tariffs.clone(),
                    crate::energy::run::ranges(config),
                    Default::default(),
                )
            });
        Ok(Engine {
            triggers,
            relays,
            meter_index,
            readers,
            last_seen,
            started: now,
            neutral,
            set_meters,
            energy,
        })
    }

    /// The level relay `i` must have now.
    pub fn relay_level(&self, i: usize) -> Level {
        self.relays[i].level
    }

    /// Puts back the latched and tripped triggers and the forced relays of a previous run, and
    /// sets every relay's level from them: call before the relays are claimed. The changes
    /// say what was restored, and one `switched` per relay records its level at start.
    pub fn restore(&mut self, saved: &Saved, now: Now) -> Output {
        let mut out = Output::default();
        for (name, s) in &saved.triggers {
            let Some(t) = self.triggers.iter_mut().find(|t| &*t.name == name) else {
                tracing::warn!(trigger = %name, "a saved trip of a trigger that is no longer configured is dropped");
                continue;
            };
            if s.when != t.when {
                tracing::warn!(trigger = %name, saved = %s.when, now = %t.when,
                    "the expression changed since the trip was saved; the trip is kept");
            }
            t.hyst.restore(s.latched);
            t.since = Some(s.since);
            let latched = t.hyst.state() == State::Latched;
            out.changes.push(trigger_change(
                t,
                ChangeEvent::Restored,
                now.wall,
                format!("{} since {}", if latched { "latched" } else { "tripped" }, s.since.to_rfc3339())
                    .into(),
            ));
        }
        for (name, f) in &saved.relays {
            match self.relays.iter_mut().find(|r| &*r.name == name) {
                Some(r) if f.until.is_none_or(|u| u > now.wall) => r.forced = Some(f.clone()),
                Some(_) => {}
                None => {
                    tracing::warn!(relay = %name, "a saved force of a relay that is no longer configured is dropped")
                }
            }
        }
        for i in 0..self.relays.len() {
            let level = self.wanted(i);
            self.relays[i].level = level;
            let cause = match (&self.relays[i].forced, self.relays_tripped_by(i)) {
                (Some(f), _) => format!("start: forced {} by {}", f.level, f.by),
                (None, by) if !by.is_empty() => format!("start: tripped by {}", by.join(", ")),
                _ => "start".to_owned(),
            };
            let cause = Cause::Start(cause);
            let r = &self.relays[i];
            out.changes.push(relay_change(r, ChangeEvent::Switched, now.wall, cause));
        }
        out
    }

    /// What must survive a restart.
    pub fn saved(&self) -> Saved {
        let mut s = Saved::default();
        for t in &self.triggers {
            if let Some(latched) = t.saved_class() {
                s.triggers.insert(
                    t.name.to_string(),
                    SavedTrigger { latched, since: t.since.unwrap_or_default(), when: t.when.clone() },
                );
            }
        }
        for r in &self.relays {
            if let Some(f) = &r.forced {
                s.relays.insert(r.name.to_string(), f.clone());
            }
        }
        s
    }

    /// Goes on from the saved energy books (`today_kwh` continues across a restart).
    pub fn restore_energy(&mut self, books: crate::energy::Books) {
        if let Some(b) = &mut self.energy {
            b.books = books;
        }
    }

    /// A reading arrived.
    pub fn on_reading(&mut self, reading: &Reading, now: Now) -> Output {
        let mut out = Output::default();
        let Some(&m) = self.meter_index.get(&*reading.meter) else { return out };
        self.last_seen[m] = Some(now.mono);
        let today = self.energy.as_mut().map(|b| {
            b.record(reading);
            b.today(&reading.meter, reading.time)
        });
        if let Some(c) = self.neutral.on_reading(reading, now.mono) {
            out.changes.push(neutral_change(&c, now.wall));
        }
        let set = self.neutral.set_of(&reading.meter);
        let verdict = set.and_then(|s| self.neutral.verdict(s));
        for k in 0..self.readers[m].len() {
            let ti = self.readers[m][k];
            let t = &mut self.triggers[ti];
            for (source, input) in t.sources.iter().zip(&mut t.inputs) {
                if let (Source::Neutral { set: s, var, .. }, Input::Latest(l), Some(v)) =
                    (*source, &mut *input, verdict)
                {
                    if Some(s) == set {
                        *l = neutral_value(var, &v);
                    }
                    continue;
                }
                if let (Source::Energy { meter, var }, Input::Latest(l), Some((kwh, cost))) =
                    (*source, &mut *input, today)
                {
                    if meter == m {
                        *l = match var {
                            vars::EnergyVar::TodayKwh => Some(kwh),
                            vars::EnergyVar::TodayCost => cost,
                        };
                    }
                    continue;
                }
                let Source::Meter { meter, phase, quantity } = *source else { continue };
                if meter != m {
                    continue;
                }
                let Some(v) = reading.get(phase, quantity) else { continue };
                match input {
                    Input::Average(a) => a.push(now.mono, v),
                    Input::Latest(l) => *l = Some(v),
                    Input::Clock(_) => {}
                }
            }
            self.check_stale(ti, now, &mut out);
            self.evaluate(ti, now, &mut out);
        }
        out
    }

    /// Once a second: stale meters, triggers that read only the clock, expired forces.
    pub fn tick(&mut self, now: Now) -> Output {
        let mut out = Output::default();
        for ti in 0..self.triggers.len() {
            self.check_stale(ti, now, &mut out);
            if self.triggers[ti].meters.is_empty() {
                self.evaluate(ti, now, &mut out);
            }
        }
        for i in 0..self.relays.len() {
            let expired =
                self.relays[i].forced.as_ref().is_some_and(|f| f.until.is_some_and(|u| u <= now.wall));
            if expired {
                self.relays[i].forced = None;
                out.save = true;
                let r = &self.relays[i];
                out.changes.push(relay_change(
                    r,
                    ChangeEvent::Unforced,
                    now.wall,
                    "the force expired".into(),
                ));
                self.update_relay(i, now, "force expired", &mut out);
            }
        }
        out
    }

    /// Forces relay `name` to `level` until `until` (None: until released).
    pub fn force(
        &mut self,
        name: &str,
        level: Level,
        until: Option<DateTime<Utc>>,
        by: &str,
        now: Now,
    ) -> Result<Output, RefusedError> {
        let i = self.relay_index(name)?;
        let mut out = Output { save: true, ..Output::default() };
        self.relays[i].forced = Some(Forced { level, until, by: by.to_owned() });
        let r = &self.relays[i];
        let cause = match until {
            Some(u) => format!("forced {level} by {by} until {}", u.to_rfc3339()),
            None => format!("forced {level} by {by} until released"),
        };
        out.changes.push(StateChange {
            active: level == Level::On,
            ..relay_change(r, ChangeEvent::Forced, now.wall, cause.into())
        });
        self.update_relay(i, now, &format!("forced by {by}"), &mut out);
        Ok(out)
    }

    /// Releases the force on relay `name`: its triggers decide again, at once.
    pub fn release(&mut self, name: &str, by: &str, now: Now) -> Result<Output, RefusedError> {
        let i = self.relay_index(name)?;
        if self.relays[i].forced.take().is_none() {
            return Err(RefusedError::NotForced(name.to_owned()));
        }
        let mut out = Output { save: true, ..Output::default() };
        let r = &self.relays[i];
        out.changes.push(relay_change(
            r,
            ChangeEvent::Unforced,
            now.wall,
            format!("released by {by}").into(),
        ));
        self.update_relay(i, now, &format!("force released by {by}"), &mut out);
        Ok(out)
    }

    /// Resets latched trigger `name`. It starts released: if its condition still holds, it
    /// trips again after `hold`.
    pub fn reset(&mut self, name: &str, by: &str, now: Now) -> Result<Output, RefusedError> {
        let Some(ti) = self.triggers.iter().position(|t| &*t.name == name) else {
            let names: Vec<&str> = self.triggers.iter().map(|t| &*t.name).collect();
            return Err(RefusedError::NoTrigger {
                name: name.to_owned(),
                hint: super::expr_hint(name, &names),
            });
        };
        let t = &mut self.triggers[ti];
        if t.hyst.reset().is_none() {
            return Err(RefusedError::NotLatched { name: name.to_owned(), state: t.hyst.state().name() });
        }
        t.since = Some(now.wall);
        let mut out = Output { save: true, ..Output::default() };
        out.changes.push(trigger_change(t, ChangeEvent::Reset, now.wall, format!("reset by {by}").into()));
        self.update_relays_of(ti, now, &mut out);
        Ok(out)
    }

    pub fn trigger_status(&self) -> Vec<TriggerStatus> {
        self.triggers
            .iter()
            .map(|t| TriggerStatus {
                name: t.name.to_string(),
                when: t.when.clone(),
                state: t.hyst.state().name().to_owned(),
                dry_run: t.dry_run,
                stale: t.stale,
                since: t.since,
                values: t.values_text(),
                relays: t.relays.iter().map(|&r| self.relays[r].name.to_string()).collect(),
            })
            .collect()
    }

    /// Every `[[neutral]]` set's latest verdict.
    pub fn neutral_status(&self) -> Vec<crate::control::NeutralStatus> {
        self.neutral
            .verdicts()
            .map(|(name, v)| crate::control::NeutralStatus {
                name: name.to_string(),
                state: v.map_or("unknown", |v| v.state.as_str()).to_owned(),
                score: v.map(|v| v.score),
                shift: v.and_then(|v| v.shift),
            })
            .collect()
    }

    pub fn relay_status(&self) -> Vec<RelayStatus> {
        (0..self.relays.len())
            .map(|i| {
                let r = &self.relays[i];
                RelayStatus {
                    name: r.name.to_string(),
                    pin: r.pin,
                    active_low: r.active_low,
                    level: r.level,
                    default: r.default,
                    forced: r.forced.clone(),
                    tripped_by: self.relays_tripped_by(i),
                }
            })
            .collect()
    }

    fn relay_index(&self, name: &str) -> Result<usize, RefusedError> {
        self.relays.iter().position(|r| &*r.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.relays.iter().map(|r| &*r.name).collect();
            RefusedError::NoRelay { name: name.to_owned(), hint: super::expr_hint(name, &names) }
        })
    }

    fn relays_tripped_by(&self, i: usize) -> Vec<String> {
        self.relays[i]
            .drivers
            .iter()
            .filter(|&&t| self.triggers[t].drives())
            .map(|&t| self.triggers[t].name.to_string())
            .collect()
    }

    /// The level relay `i` must have: forced, else tripped while any live trigger is, else
    /// its default.
    fn wanted(&self, i: usize) -> Level {
        let r = &self.relays[i];
        if let Some(f) = &r.forced {
            return f.level;
        }
        if r.drivers.iter().any(|&t| self.triggers[t].drives()) {
            r.default.opposite()
        } else {
            r.default
        }
    }

    fn update_relay(&mut self, i: usize, now: Now, cause: &str, out: &mut Output) {
        let level = self.wanted(i);
        let r = &mut self.relays[i];
        if level == r.level {
            return;
        }
        r.level = level;
        out.switches.push((i, level));
        out.changes.push(relay_change(r, ChangeEvent::Switched, now.wall, cause.into()));
    }

    fn update_relays_of(&mut self, ti: usize, now: Now, out: &mut Output) {
        if self.triggers[ti].dry_run {
            return;
        }
        let cause = format!("trigger {} {}", self.triggers[ti].name, self.triggers[ti].hyst.state().name());
        for k in 0..self.triggers[ti].relays.len() {
            let i = self.triggers[ti].relays[k];
            self.update_relay(i, now, &cause, out);
        }
    }

    fn meter_stale(&self, m: usize, after: Duration, now: Duration) -> bool {
        now.saturating_sub(self.last_seen[m].unwrap_or(self.started)) > after
    }

    fn check_stale(&mut self, ti: usize, now: Now, out: &mut Output) {
        let t = &self.triggers[ti];
        let silent: Vec<usize> =
            t.meters.iter().copied().filter(|&m| self.meter_stale(m, t.stale_after, now.mono)).collect();
        let stale = !silent.is_empty();
        if stale == t.stale {
            return;
        }
        let mut names: Vec<&str> =
            self.meter_index.iter().filter(|(_, i)| silent.contains(i)).map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let t = &mut self.triggers[ti];
        t.stale = stale;
        let (event, cause) = if stale {
            let what = match t.on_stale {
                OnStale::Hold => "state held",
                OnStale::Trip => "tripping (on_stale = trip)",
                OnStale::Release => "releasing (on_stale = release)",
            };
            (
                ChangeEvent::Stale,
                format!("no reading from {} for over {:?}: {what}", names.join(", "), t.stale_after),
            )
        } else {
            (ChangeEvent::Fresh, "every meter answers again".to_owned())
        };
        out.changes.push(trigger_change(t, event, now.wall, cause.into()));
        if !stale {
            return;
        }
        for v in &mut t.values {
            *v = None;
        }
        let transition = match t.on_stale {
            OnStale::Hold => t.hyst.update(None, now.mono),
            OnStale::Trip => t.hyst.force_trip(),
            OnStale::Release => t.hyst.force_release(),
        };
        if let Some(tr) = transition {
            self.transition(ti, tr, now, "stale data".into(), out);
        }
    }

    fn evaluate(&mut self, ti: usize, now: Now, out: &mut Output) {
        let t = &mut self.triggers[ti];
        for (k, (source, input)) in t.sources.iter().zip(&mut t.inputs).enumerate() {
            let silent = match source {
                Source::Meter { meter, .. } | Source::Energy { meter, .. } => {
                    now.mono.saturating_sub(self.last_seen[*meter].unwrap_or(self.started)) > t.stale_after
                }
                // A set is as fresh as its most silent meter.
                Source::Neutral { set, .. } => self.set_meters.get(*set).is_none_or(|ms| {
                    ms.iter().any(|m| {
                        now.mono.saturating_sub(self.last_seen[*m].unwrap_or(self.started)) > t.stale_after
                    })
                }),
                Source::Clock(_) => false,
            };
            t.values[k] = match input {
                _ if silent => None,
                Input::Average(a) => a.value(now.mono),
                Input::Latest(l) => *l,
                Input::Clock(c) => now.local.map(|l| c.value(&l)),
            };
        }
        let condition = match t.expr.eval(&t.values) {
            Ok(c) => {
                t.failing = false;
                c
            }
            Err(e) => {
                if !t.failing {
                    tracing::error!(trigger = %t.name, error = %e, values = %t.values_text(),
                        "the expression cannot be evaluated: treated as unknown");
                    t.failing = true;
                }
                None
            }
        };
        if let Some(tr) = t.hyst.update(condition, now.mono) {
            let cause = Cause::Values(t.values_text());
            self.transition(ti, tr, now, cause, out);
        }
    }

    fn transition(&mut self, ti: usize, tr: Transition, now: Now, cause: Cause, out: &mut Output) {
        let t = &mut self.triggers[ti];
        t.since = Some(now.wall);
        let event = match (tr, t.dry_run) {
            (Transition::Tripped, false) => ChangeEvent::Tripped,
            (Transition::Latched, false) => ChangeEvent::Latched,
            (Transition::Released, false) => ChangeEvent::Released,
            (Transition::Tripped | Transition::Latched, true) => ChangeEvent::WouldTrip,
            (Transition::Released, true) => ChangeEvent::WouldRelease,
        };
        out.save = true;
        out.changes.push(trigger_change(t, event, now.wall, cause));
        self.update_relays_of(ti, now, out);
    }
}

/// A neutral variable's value in a verdict; None when the verdict has no displacement.
fn neutral_value(var: NeutralVar, v: &crate::neutral::Verdict) -> Option<f64> {
    match var {
        NeutralVar::Fault => Some(if v.state == crate::neutral::State::Fault { 1.0 } else { 0.0 }),
        NeutralVar::Shift => v.shift,
    }
}

/// A `[[neutral]]` set's change of state: `active` in fault, `held` when it was.
fn neutral_change(c: &crate::neutral::watch::Change, time: DateTime<Utc>) -> StateChange {
    use crate::neutral::State as N;
    let shift = c.verdict.shift.map_or("?".to_owned(), |s| format!("{s:.1} V"));
    StateChange {
        time,
        subject: Subject::Neutral,
        name: c.name.clone(),
        event: match c.verdict.state {
            N::Ok => ChangeEvent::NeutralOk,
            N::Suspect => ChangeEvent::NeutralSuspect,
            N::Fault => ChangeEvent::NeutralFault,
        },
        active: c.verdict.state == N::Fault,
        held: c.from == N::Fault,
        dry_run: false,
        cause: format!("shift {shift}, score {:.2}, was {}", c.verdict.score, c.from.as_str()).into(),
    }
}

/// A change of trigger `t`, as it stands now.
fn trigger_change(t: &TriggerRt, event: ChangeEvent, time: DateTime<Utc>, cause: Cause) -> StateChange {
    StateChange {
        time,
        subject: Subject::Trigger,
        name: t.name.clone(),
        event,
        active: t.hyst.is_tripped(),
        held: t.hyst.state() == State::Latched,
        dry_run: t.dry_run,
        cause,
    }
}

/// A change of relay `r`, as it stands now.
fn relay_change(r: &RelayRt, event: ChangeEvent, time: DateTime<Utc>, cause: Cause) -> StateChange {
    StateChange {
        time,
        subject: Subject::Relay,
        name: r.name.clone(),
        event,
        active: r.level == Level::On,
        held: r.forced.is_some(),
        dry_run: false,
        cause,
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("triggers", &self.triggers.len())
            .field("relays", &self.relays.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::{pzem, Model};
    use crate::reading::Phase;
    use chrono::TimeZone;

    const BASE: &str = r#"
[gateway]
gpio = "fake"
[[bus]]
name = "b"
port = "/dev/null"
[[meter]]
name = "main"
model = "pzem-016"
address = 4
[[meter]]
name = "gen"
model = "pzem-016"
address = 5
phase = "L2"
[[relay]]
name = "motor"
pin = 17
default = "on"
[[relay]]
name = "heater"
pin = 18
"#;

    fn engine(extra: &str) -> Engine {
        let config = crate::config::load_str(&format!("{BASE}{extra}"), "test.toml").unwrap();
        Engine::new(&config, Duration::ZERO).unwrap()
    }

    fn at(secs: f64) -> Now {
        let mono = Duration::from_secs_f64(secs);
        let wall = Utc.timestamp_opt(1_800_000_000, 0).unwrap() + mono;
        Now { mono, wall, local: Some(wall.naive_utc()) }
    }

    fn pzem_reading(meter: &str, phase: Phase, volts: f64, amps: f64, kwh: f64, t: Now) -> Reading {
        let regs = pzem::encode(volts, amps, volts * amps, kwh, 50.0, 1.0, false);
        Reading {
            meter: meter.into(),
            model: Model::Pzem016,
            time: t.wall,
            samples: pzem::decode(&regs, phase).unwrap(),
            quality: Default::default(),
        }
    }

    fn volts(e: &mut Engine, t: f64, v: f64) -> Output {
        e.on_reading(&pzem_reading("main", Phase::L1, v, 1.0, 1.0, at(t)), at(t))
    }

    /// Feeds one reading of `main` per second from `from` with the voltages given; returns
    /// (second, relay, level) of every switch and the events.
    type Script = (Vec<(u64, usize, Level)>, Vec<(u64, ChangeEvent)>);

    fn script(e: &mut Engine, from: u64, voltages: &[f64]) -> Script {
        let mut switches = Vec::new();
        let mut events = Vec::new();
        for (k, v) in voltages.iter().enumerate() {
            let t = from + k as u64;
            let out = volts(e, t as f64, *v);
            switches.extend(out.switches.iter().map(|(r, l)| (t, *r, *l)));
            events.extend(out.changes.iter().filter(|c| c.subject == Subject::Trigger).map(|c| (t, c.event)));
        }
        (switches, events)
    }

    /// An RX380 reading whose neutral sits at `n` (volts, in the plane of the phasors), with
    /// its phase and line voltages.
    fn rx380_reading(n: (f64, f64), t: Now) -> Reading {
        let corner = |deg: f64| (230.0 * deg.to_radians().cos(), 230.0 * deg.to_radians().sin());
        let c = [corner(90.0), corner(-30.0), corner(210.0)];
        let d = |a: (f64, f64), b: (f64, f64)| ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
        let mut samples: Vec<crate::reading::Sample> = [Phase::L1, Phase::L2, Phase::L3]
            .iter()
            .zip(c)
            .map(|(p, k)| crate::reading::Sample::new(*p, crate::reading::Quantity::Voltage, d(n, k)))
            .collect();
        for (p, (a, b)) in [(Phase::L12, (0, 1)), (Phase::L23, (1, 2)), (Phase::L31, (2, 0))] {
            samples.push(crate::reading::Sample::new(p, crate::reading::Quantity::Voltage, d(c[a], c[b])));
        }
        Reading {
            meter: "grid".into(),
            model: Model::Rx380,
            time: t.wall,
            samples,
            quality: Default::default(),
        }
    }

    const NEUTRAL: &str = r#"
[[meter]]
name = "grid"
model = "rx380"
address = 1
[[meter]]
name = "third"
model = "pzem-016"
address = 6
phase = "L3"
[[neutral]]
name = "supply"
meter = "grid"
[[neutral]]
name = "house"
meters = ["main", "gen", "third"]
[[trigger]]
name = "broken-neutral"
meter = "grid"
when = "neutral_fault == 1"
relays = ["motor"]
[[trigger]]
name = "house-neutral"
meter = "main"
when = "neutral_shift > 30"
relays = ["heater"]
"#;

    /// "Cut the heater when today's cost passes 5 EUR": 0.25 kWh a second at 0.5 EUR/kWh
    /// passes 5 EUR after 40 s, then the 3 s hold.
    #[test]
    fn a_budget_trigger_reads_today_cost() {
        let mut e = engine(
            r#"
[energy]
timezone = "UTC"
[[tariff]]
name = "home"
currency = "EUR"
price = 0.5
[[trigger]]
name = "budget"
meter = "main"
when = "today_cost > 5"
hold = "3s"
relays = ["motor"]
"#,
        );
        let mut switched = None;
        for s in 0..60u64 {
            let kwh = 100.0 + 0.25 * s as f64;
            let out =
                e.on_reading(&pzem_reading("main", Phase::L1, 230.0, 1.0, kwh, at(s as f64)), at(s as f64));
            if let Some((_, l)) = out.switches.first() {
                switched.get_or_insert((s, *l));
            }
        }
        assert_eq!(switched, Some((44, Level::Off)));
        let status = e.trigger_status();
        assert!(status[0].values.contains("today_cost=7.375"), "{}", status[0].values);
    }

    #[test]
    fn a_broken_neutral_trips_a_trigger_on_neutral_fault() {
        let mut e = engine(NEUTRAL);
        let mut switches = Vec::new();
        let mut sets = Vec::new();
        for s in 0..10u64 {
            let n = if s < 3 { (0.0, 0.0) } else { (45.0, -10.0) };
            let out = e.on_reading(&rx380_reading(n, at(s as f64)), at(s as f64));
            switches.extend(out.switches.iter().map(|(r, l)| (s, *r, *l)));
            sets.extend(
                out.changes.iter().filter(|c| c.subject == Subject::Neutral).map(|c| (s, c.event, c.active)),
            );
        }
        // Displaced from second 3; a fault after the 3 s hold, at second 6.
        assert_eq!(switches, [(6, 0, Level::Off)]);
        assert_eq!(sets, [(3, ChangeEvent::NeutralSuspect, false), (6, ChangeEvent::NeutralFault, true)]);
        let status = e.trigger_status();
        let t = status.iter().find(|t| t.name == "broken-neutral").unwrap();
        assert!(t.values.contains("neutral_fault=1"), "{}", t.values);
        let sets = e.neutral_status();
        assert_eq!((sets[0].name.as_str(), sets[0].state.as_str()), ("supply", "fault"));
        assert!((sets[0].shift.unwrap() - 46.1).abs() < 0.1, "{:?}", sets[0]);
        assert_eq!(
            (sets[1].name.as_str(), sets[1].state.as_str(), sets[1].shift),
            ("house", "unknown", None)
        );
    }

    #[test]
    fn neutral_variables_are_unknown_until_the_set_has_a_sample_and_a_round_makes_one() {
        let mut e = engine(NEUTRAL);
        // L1 and L2 alone make no sample of the house set: its shift is unknown.
        e.on_reading(&pzem_reading("main", Phase::L1, 280.0, 1.0, 1.0, at(0.0)), at(0.0));
        e.on_reading(&pzem_reading("gen", Phase::L2, 190.0, 1.0, 1.0, at(0.0)), at(0.0));
        let status = e.trigger_status();
        let t = status.iter().find(|t| t.name == "house-neutral").unwrap();
        assert!(t.values.contains("neutral_shift=?"), "{}", t.values);
        // L3 completes the round: 280/190/230 is a neutral about 50 V off centre.
        let out = e.on_reading(&pzem_reading("third", Phase::L3, 230.0, 1.0, 1.0, at(1.0)), at(1.0));
        assert_eq!(out.switches, [(1, Level::On)], "{out:?}");
        // L3 falls silent: the shift is unknown though L1 and L2 still read.
        for s in 2..40 {
            let t = at(f64::from(s));
            e.on_reading(&pzem_reading("main", Phase::L1, 280.0, 1.0, 1.0, t), t);
            e.on_reading(&pzem_reading("gen", Phase::L2, 190.0, 1.0, 1.0, t), t);
        }
        let status = e.trigger_status();
        let t = status.iter().find(|t| t.name == "house-neutral").unwrap();
        assert!(t.stale && t.values.contains("neutral_shift=?"), "{t:?}");
    }

    const OVERVOLTAGE: &str = r#"
[[trigger]]
name = "overvoltage"
meter = "main"
when = "L1U > 253"
hold = "5s"
recovery = "10s"
relays = ["motor"]
"#;

    #[test]
    fn trips_and_releases_at_the_exact_seconds() {
        let mut e = engine(OVERVOLTAGE);
        let mut v = vec![230.0; 3];
        v.extend([260.0; 8]);
        v.extend([230.0; 12]);
        let (switches, events) = script(&mut e, 0, &v);
        // True from t=3: trips at 3+5=8. False from t=11: releases at 11+10=21.
        assert_eq!(switches, vec![(8, 0, Level::Off), (21, 0, Level::On)]);
        assert_eq!(events, vec![(8, ChangeEvent::Tripped), (21, ChangeEvent::Released)]);
    }

    /// A threshold with a decimal, `L1U > 253.1`, against a PZEM that reads 253.1 V exactly
    /// (register 2531, scale 0.1), decoded as the daemon decodes it (by the `pzem-016`
    /// definition): 253.1 is not over 253.1, so it never trips, and 253.2 trips after the hold.
    /// `2531 × 0.1` is 253.10000000000002, which is over it (and `95 × 0.01` is
    /// 0.9500000000000001, over a power factor's 0.95).
    #[test]
    fn a_reading_of_exactly_the_threshold_is_not_over_it() {
        use crate::meter::driver::Reader;
        use crate::reading::Quantity;
        let reader = Reader::new(Model::Pzem016, 4);
        let plan = reader.first_plan(1);
        let read = |volts: f64, pf: f64, t: Now| {
            let regs = pzem::encode(volts, 1.0, volts, 1.0, 50.0, pf, false).to_vec();
            let samples = reader.decode(plan, &[regs]).unwrap().samples;
            Reading {
                meter: "main".into(),
                model: Model::Pzem016,
                time: t.wall,
                samples,
                quality: Default::default(),
            }
        };
        let r = read(253.1, 0.95, at(0.0));
        assert_eq!(r.get(Phase::L1, Quantity::Voltage), Some(253.1));
        assert_eq!(r.get(Phase::L1, Quantity::PowerFactor), Some(0.95));
        assert!(f64::from(2531u16) * 0.1 > 253.1, "the inexact product this test guards against");
        assert!(f64::from(95u16) * 0.01 > 0.95, "the inexact product this test guards against");
        let mut e = engine(
            r#"
[[trigger]]
name = "over"
meter = "main"
when = "L1U > 253.1 || L1pf > 0.95"
hold = "5s"
relays = ["motor"]
"#,
        );
        for s in 0..30 {
            let out = e.on_reading(&read(253.1, 0.95, at(f64::from(s))), at(f64::from(s)));
            assert!(out.switches.is_empty(), "253.1 V or a power factor of 0.95 tripped at {s} s: {out:?}");
        }
        let mut tripped = None;
        for s in 30..40 {
            let out = e.on_reading(&read(253.2, 0.95, at(f64::from(s))), at(f64::from(s)));
            if !out.switches.is_empty() {
                tripped.get_or_insert((s, out.switches));
            }
        }
        assert_eq!(tripped, Some((35, vec![(0, Level::Off)])), "253.2 V trips after the 5 s hold");
    }

    #[test]
    fn a_spike_shorter_than_hold_and_a_dip_shorter_than_recovery_change_nothing() {
        let mut e = engine(OVERVOLTAGE);
        let (switches, _) = script(&mut e, 0, &[230.0, 260.0, 260.0, 260.0, 260.0, 230.0, 230.0]);
        assert!(switches.is_empty(), "{switches:?}");
        let mut v = vec![260.0; 6];
        v.extend([230.0; 9]);
        v.extend([260.0; 3]);
        let (switches, _) = script(&mut e, 10, &v);
        assert_eq!(switches, vec![(15, 0, Level::Off)], "the 9 s dip does not release");
    }

    #[test]
    fn a_flapping_input_never_flaps_the_relay() {
        let mut e = engine(OVERVOLTAGE);
        let v: Vec<f64> = (0..200).map(|i| if i % 2 == 0 { 260.0 } else { 230.0 }).collect();
        let (switches, events) = script(&mut e, 0, &v);
        assert!(switches.is_empty() && events.is_empty(), "{switches:?} {events:?}");
    }

    #[test]
    fn averaging_filters_a_spike() {
        let mut e = engine(
            r#"
[[trigger]]
name = "avg"
meter = "main"
when = "L1U > 240"
average = "10s"
relays = ["heater"]
"#,
        );
        let mut v = vec![230.0; 10];
        v.push(300.0); // mean of 10 samples: 237 < 240
        v.extend([230.0; 5]);
        assert!(script(&mut e, 0, &v).0.is_empty());
        let (switches, _) = script(&mut e, 16, &[260.0; 10]);
        // Window (t-10, t]. At 16: seven at 230, the 300 and 260: 2400/10 = 240, not over.
        // At 17: 7 × 230 + 300 + 2 × 260 = 2430, a mean of 243.
        assert_eq!(switches.first().map(|s| s.0), Some(17), "{switches:?}");
    }

    #[test]
    fn energy_is_never_averaged() {
        let mut e = engine(
            r#"
[[trigger]]
name = "budget"
meter = "main"
when = "L1e > 10.0"
average = "1h"
relays = ["heater"]
"#,
        );
        let t = |s| at(s);
        for (s, kwh) in [(0.0, 9.0), (1.0, 9.5), (2.0, 10.2)] {
            let out = e.on_reading(&pzem_reading("main", Phase::L1, 230.0, 1.0, kwh, t(s)), t(s));
            assert_eq!(!out.switches.is_empty(), kwh > 10.0, "at {kwh} kWh (the mean would be 9.57)");
        }
    }

    #[test]
    fn dry_run_switches_nothing_and_says_what_it_would_do() {
        let mut e = engine(&OVERVOLTAGE.replace("relays =", "dry_run = true\nrelays ="));
        let mut v = vec![260.0; 6];
        v.extend([230.0; 11]);
        let (switches, events) = script(&mut e, 0, &v);
        assert!(switches.is_empty());
        assert_eq!(events, vec![(5, ChangeEvent::WouldTrip), (16, ChangeEvent::WouldRelease)]);
        assert_eq!(e.relay_level(0), Level::On);
    }

    #[test]
    fn a_latch_stays_until_reset_by_hand() {
        let mut e = engine(&OVERVOLTAGE.replace("relays =", "latch = true\nrelays ="));
        let mut v = vec![260.0; 6];
        v.extend([230.0; 100]);
        let (switches, events) = script(&mut e, 0, &v);
        assert_eq!(switches, vec![(5, 0, Level::Off)]);
        assert_eq!(events, vec![(5, ChangeEvent::Latched)]);
        assert!(e.saved().triggers["overvoltage"].latched);
        let out = e.reset("overvoltage", "uid 0 pid 1", at(200.0)).unwrap();
        assert_eq!(out.switches, vec![(0, Level::On)]);
        assert!(out.save);
        assert!(e.saved().triggers.is_empty());
        let err = e.reset("overvoltage", "uid 0 pid 1", at(201.0)).unwrap_err().to_string();
        assert!(err.contains("not latched"), "{err}");
        assert!(e
            .reset("overvoltag", "x", at(201.0))
            .unwrap_err()
            .to_string()
            .contains("did you mean overvoltage"));
    }

    #[test]
    fn a_relay_stays_tripped_while_any_of_its_triggers_is() {
        let mut e = engine(
            r#"
[[trigger]]
name = "high"
meter = "main"
when = "L1U > 253"
relays = ["heater"]
[[trigger]]
name = "current"
meter = "main"
when = "L1I > 10.0"
relays = ["heater"]
"#,
        );
        let r = |e: &mut Engine, t: f64, v: f64, i: f64| {
            e.on_reading(&pzem_reading("main", Phase::L1, v, i, 1.0, at(t)), at(t)).switches
        };
        assert_eq!(r(&mut e, 0.0, 260.0, 1.0), vec![(1, Level::On)]);
        assert_eq!(r(&mut e, 1.0, 260.0, 20.0), vec![]);
        assert_eq!(r(&mut e, 2.0, 230.0, 20.0), vec![], "still held by `current`");
        assert_eq!(r(&mut e, 3.0, 230.0, 1.0), vec![(1, Level::Off)]);
    }

    #[test]
    fn stale_data_hold_trip_release() {
        for (on_stale, want_level, want_event) in
            [("hold", Level::On, None), ("trip", Level::Off, Some(ChangeEvent::Tripped))]
        {
            let mut e =
                engine(&OVERVOLTAGE.replace(
                    "relays =",
                    &format!("stale_after = \"10s\"\non_stale = \"{on_stale}\"\nrelays ="),
                ));
            script(&mut e, 0, &[230.0; 3]);
            assert!(e.tick(at(12.0)).changes.is_empty(), "2 is the last reading: not stale at 12");
            let out = e.tick(at(12.5));
            let events: Vec<_> = out.changes.iter().map(|c| c.event).collect();
            assert_eq!(events[0], ChangeEvent::Stale, "{on_stale}");
            assert_eq!(events.get(1).copied(), want_event, "{on_stale}");
            assert_eq!(e.relay_level(0), want_level, "{on_stale}");
            let out = volts(&mut e, 20.0, 230.0);
            assert_eq!(out.changes[0].event, ChangeEvent::Fresh, "{on_stale}");
        }
        // Release: a tripped trigger lets go; a latched one does not.
        for (latch, want) in [(false, Level::On), (true, Level::Off)] {
            let mut e = engine(&OVERVOLTAGE.replace(
                "relays =",
                &format!("latch = {latch}\nstale_after = \"10s\"\non_stale = \"release\"\nrelays ="),
            ));
            script(&mut e, 0, &[260.0; 6]);
            assert_eq!(e.relay_level(0), Level::Off);
            e.tick(at(20.0));
            assert_eq!(e.relay_level(0), want, "latch = {latch}");
        }
    }

    #[test]
    fn stale_values_are_unknown_not_last_known() {
        let mut e = engine(
            &OVERVOLTAGE
                .replace("hold = \"5s\"", "hold = \"0s\"")
                .replace("relays =", "stale_after = \"10s\"\nrelays ="),
        );
        script(&mut e, 0, &[230.0]);
        e.tick(at(15.0));
        // A reading of another meter must not evaluate `main`'s old value.
        let out = e.on_reading(&pzem_reading("gen", Phase::L2, 300.0, 1.0, 1.0, at(16.0)), at(16.0));
        assert!(out.switches.is_empty());
        assert!(e.trigger_status()[0].stale);
    }

    #[test]
    fn a_force_overrides_and_its_release_hands_back() {
        let mut e = engine(OVERVOLTAGE);
        script(&mut e, 0, &[260.0; 6]);
        assert_eq!(e.relay_level(0), Level::Off);
        let until = at(100.0).wall;
        let out = e.force("motor", Level::On, Some(until), "uid 0 pid 9", at(10.0)).unwrap();
        assert_eq!(out.switches, vec![(0, Level::On)]);
        assert!(out.save && e.saved().relays.contains_key("motor"));
        assert!(script(&mut e, 11, &[260.0; 20]).0.is_empty(), "forced: triggers do not switch it");
        let out = e.tick(at(100.0));
        assert_eq!(out.switches, vec![(0, Level::Off)], "the force expired: the trip applies again");
        e.force("motor", Level::On, None, "x", at(101.0)).unwrap();
        assert_eq!(e.release("motor", "x", at(102.0)).unwrap().switches, vec![(0, Level::Off)]);
        assert!(e.release("motor", "x", at(103.0)).unwrap_err().to_string().contains("not forced"));
        assert!(e
            .force("motr", Level::On, None, "x", at(103.0))
            .unwrap_err()
            .to_string()
            .contains("did you mean motor"));
    }

    #[test]
    fn a_restart_restores_latches_and_forces_before_the_first_reading() {
        let cfg = OVERVOLTAGE.replace("relays =", "latch = true\nrelays =");
        let mut e = engine(&cfg);
        script(&mut e, 0, &[260.0; 6]);
        e.force("heater", Level::On, None, "uid 0 pid 1", at(7.0)).unwrap();
        let saved = e.saved();

        let mut again = engine(&cfg);
        let out = again.restore(&saved, at(0.0));
        assert_eq!(again.relay_level(0), Level::Off, "motor comes back tripped");
        assert_eq!(again.relay_level(1), Level::On, "heater comes back forced");
        let events: Vec<_> = out.changes.iter().map(|c| (c.subject, c.event)).collect();
        assert_eq!(
            events,
            vec![
                (Subject::Trigger, ChangeEvent::Restored),
                (Subject::Relay, ChangeEvent::Switched),
                (Subject::Relay, ChangeEvent::Switched)
            ]
        );
        assert!(script(&mut again, 1, &[230.0; 100]).0.is_empty(), "a latch ignores good data");
    }

    #[test]
    fn a_tripped_trigger_restored_releases_only_after_recovery() {
        let mut e = engine(OVERVOLTAGE);
        script(&mut e, 0, &[260.0; 6]);
        let mut again = engine(OVERVOLTAGE);
        again.restore(&e.saved(), at(0.0));
        assert_eq!(again.relay_level(0), Level::Off);
        let (switches, _) = script(&mut again, 1, &[230.0; 12]);
        assert_eq!(switches, vec![(11, 0, Level::On)]);
    }

    #[test]
    fn time_of_day_triggers_run_on_the_tick() {
        let mut e = engine(
            r#"
[[trigger]]
name = "night"
when = "hour >= 22 || hour < 6"
relays = ["heater"]
"#,
        );
        let local =
            |h: u32| chrono::NaiveDate::from_ymd_opt(2026, 11, 21).unwrap().and_hms_opt(h, 0, 0).unwrap();
        let now = |h: u32| Now { local: Some(local(h)), ..at(f64::from(h) * 3600.0) };
        assert!(e.tick(now(21)).switches.is_empty());
        assert_eq!(e.tick(now(22)).switches, vec![(1, Level::On)]);
        assert_eq!(e.tick(now(23)).switches, vec![]);
        let mut later = now(6);
        later.mono += Duration::from_secs(24 * 3600);
        assert_eq!(e.tick(later).switches, vec![(1, Level::Off)]);
    }

    /// Before the clock is known to be right, `hour` is unknown: the trigger neither trips nor
    /// releases on it (not false, not true), and acts on the first hour it can believe.
    #[test]
    fn time_of_day_is_unknown_until_the_clock_is_believed() {
        let mut e = engine(
            r#"
[[trigger]]
name = "night"
when = "hour >= 22 || hour < 6"
relays = ["heater"]
"#,
        );
        let unknown = |t: f64| Now { local: None, ..at(t) };
        for t in 0..10 {
            assert!(e.tick(unknown(f64::from(t))).switches.is_empty());
        }
        assert_eq!(e.trigger_status()[0].state, "released");
        let night = chrono::NaiveDate::from_ymd_opt(2026, 11, 21).unwrap().and_hms_opt(23, 0, 0).unwrap();
        assert_eq!(e.tick(Now { local: Some(night), ..at(10.0) }).switches, vec![(1, Level::On)]);
        // Tripped, then unknown again: it stays tripped (unknown releases nothing either).
        for t in 11..20 {
            assert!(e.tick(unknown(f64::from(t))).switches.is_empty());
        }
        assert_eq!(e.trigger_status()[0].state, "tripped");
    }

    #[test]
    fn another_meter_by_its_prefix() {
        let mut e = engine(
            r#"
[[trigger]]
name = "gen-running"
meter = "main"
when = "gen.L2I > 0.3 && L1U < 207"
relays = ["heater"]
"#,
        );
        let main = |t: f64, v: f64| pzem_reading("main", Phase::L1, v, 1.0, 1.0, at(t));
        let gen = |t: f64, i: f64| pzem_reading("gen", Phase::L2, 230.0, i, 1.0, at(t));
        assert!(e.on_reading(&main(0.0, 200.0), at(0.0)).switches.is_empty(), "gen unknown yet");
        assert_eq!(e.on_reading(&gen(0.5, 2.0), at(0.5)).switches, vec![(1, Level::On)]);
        assert_eq!(e.on_reading(&main(1.0, 230.0), at(1.0)).switches, vec![(1, Level::Off)]);
        let status = e.trigger_status();
        assert_eq!(status[0].values, "gen.L2I=2 L1U=230");
    }

    #[test]
    fn transitions_carry_the_values_that_caused_them() {
        let mut e = engine(&OVERVOLTAGE.replace("hold = \"5s\"", "hold = \"0s\""));
        let out = volts(&mut e, 0.0, 254.2);
        let trip = &out.changes[0];
        assert_eq!((trip.event, trip.cause.as_str(), trip.active), (ChangeEvent::Tripped, "L1U=254.2", true));
        let relay = &out.changes[1];
        assert_eq!(relay.subject, Subject::Relay);
        assert_eq!((relay.event, relay.active), (ChangeEvent::Switched, false));
        assert_eq!(relay.cause, "trigger overvoltage tripped");
    }
}
