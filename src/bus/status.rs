//! Per-meter counters and state, shared read-only with whoever reports on the gateway, and
//! the events of each meter's state (ok, failing, searching) as the buses decide it.

use crate::modbus::transport::Outcome;
use crate::modbus::FrameError;
use crate::reading::Reading;
use crate::sync::Locked;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Counters of one meter's polls. Probes of a meter that is not (yet) on a port count only as
/// `probes` and `probe_misses`, so a meter found elsewhere shows no timeouts for them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub requests: u64,
    pub replies: u64,
    pub timeouts: u64,
    pub crc_errors: u64,
    pub exceptions: u64,
    pub foreign_frames: u64,
    pub short_frames: u64,
    pub garbled_frames: u64,
    pub malformed_frames: u64,
    /// Noise bytes received before a good reply.
    pub noise_bytes: u64,
    /// Bytes of late replies found waiting before a request, and dropped.
    pub stale_bytes: u64,
    pub readings: u64,
    /// Readings whose energy counter went backwards.
    pub energy_backwards: u64,
    /// Readings refused for an implausible value (not finite, or beyond its quantity's limit).
    pub bad_readings: u64,
    /// Readings the consumers could not take in time (queue full).
    pub readings_dropped: u64,
    pub probes: u64,
    pub probe_misses: u64,
}

impl Counters {
    /// Counts one transaction of a poll.
    pub fn count(&mut self, out: &Outcome) {
        self.requests += 1;
        self.noise_bytes += out.noise_bytes as u64;
        self.stale_bytes += out.stale_bytes as u64;
        match &out.result {
            Ok(_) => self.replies += 1,
            Err(FrameError::Timeout) => self.timeouts += 1,
            Err(FrameError::Crc) => self.crc_errors += 1,
            Err(FrameError::Exception(_)) => self.exceptions += 1,
            Err(FrameError::ForeignAddress(_)) => self.foreign_frames += 1,
            Err(FrameError::Short { .. }) => self.short_frames += 1,
            Err(FrameError::Garbled { .. }) => self.garbled_frames += 1,
            Err(FrameError::Malformed(_)) => self.malformed_frames += 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeterState {
    /// Not found on any port yet.
    Searching,
    /// Answering.
    Ok,
    /// Found, but its last polls failed: backing off.
    Failing,
}

#[derive(Debug, Clone, Serialize)]
pub struct MeterStatus {
    pub bus: String,
    pub address: u8,
    pub model: crate::meter::Model,
    pub port: Option<String>,
    pub state: MeterState,
    pub counters: Counters,
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_reading: Option<Reading>,
    /// A PMTR_001_SRV's duties (None for other models).
    pub server: Option<ServerStatus>,
    /// The registers of the last good poll, as the meter presented them (for the Modbus TCP
    /// server; not in the status API).
    #[serde(skip)]
    pub raw: Option<std::sync::Arc<RawRegisters>>,
}

/// The registers of one good poll and when they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRegisters {
    pub at: tokio::time::Instant,
    pub blocks: Vec<super::poll::RawBlock>,
}

impl MeterStatus {
    /// A meter not found yet: no port, nothing counted (a PMTR_001_SRV with its duties empty).
    pub fn searching(bus: String, address: u8, model: crate::meter::Model) -> MeterStatus {
        MeterStatus {
            bus,
            address,
            model,
            port: None,
            state: MeterState::Searching,
            counters: Counters::default(),
            last_success: None,
            last_error: None,
            last_reading: None,
            server: (model == crate::meter::Model::PmtrSrv).then(Default::default),
            raw: None,
        }
    }
}

/// What the gateway has done for a PMTR_001_SRV besides polling it (its driver's duties).
pub use crate::meter::pmtr_srv::ServerStatus;

/// A meter's state changed (or a meter was registered): sent by [`StatusBoard`] from the one
/// place the board changes a meter, so that whoever follows meters (MQTT availability, alerts)
/// is told rather than reading snapshots again and again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterEvent {
    pub meter: String,
    pub state: MeterState,
    /// The meter's last error, as the board has it after the change.
    pub last_error: Option<String>,
}

/// Meter events kept for a slow receiver before it lags. A receiver that lags has missed some
/// changes: it reads the board once ([`StatusBoard::events_now`]) and carries on from there.
pub const METER_EVENTS: usize = 256;

/// Everything the buses know, by meter name.
#[derive(Debug)]
pub struct StatusBoard {
    meters: Mutex<BTreeMap<String, MeterStatus>>,
    events: broadcast::Sender<MeterEvent>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard { meters: Mutex::default(), events: broadcast::channel(METER_EVENTS).0 }
    }
}

impl StatusBoard {
    /// Adds (or replaces) a meter; an event when its state is new or differs from before.
    pub fn register(&self, name: &str, status: MeterStatus) {
        let event =
            MeterEvent { meter: name.to_owned(), state: status.state, last_error: status.last_error.clone() };
        let before = self.lock().insert(name.to_string(), status).map(|s| s.state);
        if before != Some(event.state) {
            self.send(event);
        }
    }

    /// Runs `f` on one meter's status; an event when `f` changed the meter's state.
    pub fn update<R>(&self, name: &str, f: impl FnOnce(&mut MeterStatus) -> R) -> Option<R> {
        let (r, event) = {
            let mut meters = self.lock();
            let s = meters.get_mut(name)?;
            let before = s.state;
            let r = f(s);
            let event = (s.state != before).then(|| MeterEvent {
                meter: name.to_owned(),
                state: s.state,
                last_error: s.last_error.clone(),
            });
            (r, event)
        };
        if let Some(e) = event {
            self.send(e);
        }
        Some(r)
    }

    /// The meter events from now on (bounded: see [`METER_EVENTS`]).
    pub fn subscribe(&self) -> broadcast::Receiver<MeterEvent> {
        self.events.subscribe()
    }

    /// Every meter's state now, as events: where a new or lagging receiver starts from.
    pub fn events_now(&self) -> Vec<MeterEvent> {
        self.lock()
            .iter()
            .map(|(name, s)| MeterEvent {
                meter: name.clone(),
                state: s.state,
                last_error: s.last_error.clone(),
            })
            .collect()
    }

    fn send(&self, e: MeterEvent) {
        // No receiver is no error: nobody follows the meters.
        let _ = self.events.send(e);
    }

    pub fn snapshot(&self) -> BTreeMap<String, MeterStatus> {
        self.lock().clone()
    }

    /// Runs `f` on every meter's status without copying it (keep `f` short: the buses wait).
    pub fn for_each(&self, mut f: impl FnMut(&str, &MeterStatus)) {
        for (name, status) in self.lock().iter() {
            f(name, status);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, MeterStatus>> {
        // A poisoned lock only means a reader panicked mid-copy; the data is still whole.
        self.meters.locked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_counter() {
        let mut c = Counters::default();
        for e in [
            FrameError::Timeout,
            FrameError::Crc,
            FrameError::Exception(crate::modbus::Exception::IllegalDataAddress),
            FrameError::ForeignAddress(3),
            FrameError::Short { got: 1, want: 25 },
            FrameError::Garbled { bytes: 3 },
            FrameError::Malformed("x"),
        ] {
            c.count(&Outcome { result: Err(e), stale_bytes: 2, noise_bytes: 1 });
        }
        c.count(&Outcome { result: Ok(crate::modbus::Reply::Echo), stale_bytes: 0, noise_bytes: 0 });
        assert_eq!(c.requests, 8);
        assert_eq!(
            (c.replies, c.timeouts, c.crc_errors, c.exceptions, c.foreign_frames, c.short_frames),
            (1, 1, 1, 1, 1, 1)
        );
        assert_eq!((c.garbled_frames, c.malformed_frames, c.stale_bytes, c.noise_bytes), (1, 1, 14, 7));
    }

    fn board() -> StatusBoard {
        let b = StatusBoard::default();
        b.register("m", MeterStatus::searching("b".into(), 4, crate::meter::Model::Pzem016));
        b
    }

    /// A change of state is one event, with the error the board has; a change of anything
    /// else (counters, a reading) is none.
    #[test]
    fn a_state_change_is_exactly_one_event_and_no_change_none() {
        let b = board();
        let mut rx = b.subscribe();
        b.update("m", |s| s.counters.requests += 1);
        b.update("m", |s| s.state = MeterState::Searching);
        assert!(rx.try_recv().is_err(), "no change, no event");
        b.update("m", |s| s.state = MeterState::Ok);
        b.update("m", |s| s.counters.readings += 1);
        b.update("m", |s| {
            s.state = MeterState::Failing;
            s.last_error = Some("timeout".into());
        });
        b.update("m", |s| s.last_error = Some("crc".into()));
        assert_eq!(b.update("nobody", |s| s.state = MeterState::Ok), None);
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            got,
            [
                MeterEvent { meter: "m".into(), state: MeterState::Ok, last_error: None },
                MeterEvent {
                    meter: "m".into(),
                    state: MeterState::Failing,
                    last_error: Some("timeout".into())
                },
            ]
        );
        // Registering again in the same state says nothing; a new meter is told.
        b.register(
            "m",
            MeterStatus {
                state: MeterState::Failing,
                ..MeterStatus::searching("b".into(), 4, crate::meter::Model::Pzem016)
            },
        );
        assert!(rx.try_recv().is_err());
        b.register("n", MeterStatus::searching("b".into(), 5, crate::meter::Model::Pzem016));
        assert_eq!(rx.try_recv().map(|e| (e.meter, e.state)), Ok(("n".into(), MeterState::Searching)));
    }

    /// A receiver that falls behind by more than the channel holds is told how many it missed,
    /// reads the board once, and then follows the events again.
    #[test]
    fn a_lagging_receiver_recovers_from_the_board() {
        let b = board();
        let mut rx = b.subscribe();
        for i in 0..=METER_EVENTS {
            b.update("m", |s| s.state = if i % 2 == 0 { MeterState::Ok } else { MeterState::Failing });
        }
        assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Lagged(_))));
        let now = b.events_now();
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].state, MeterState::Ok, "the last of {} changes", METER_EVENTS + 1);
        // Lagged skips to the oldest kept: drain, then the next change arrives as usual.
        while rx.try_recv().is_ok() {}
        b.update("m", |s| s.state = MeterState::Searching);
        assert_eq!(rx.try_recv().map(|e| e.state), Ok(MeterState::Searching));
    }
}
