//! Per-meter counters and state, shared read-only with whoever reports on the gateway.

use crate::modbus::transport::Outcome;
use crate::modbus::FrameError;
use crate::reading::Reading;
use crate::sync::Locked;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

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

/// Everything the buses know, by meter name.
#[derive(Debug, Default)]
pub struct StatusBoard {
    meters: Mutex<BTreeMap<String, MeterStatus>>,
}

impl StatusBoard {
    pub fn register(&self, name: &str, status: MeterStatus) {
        self.lock().insert(name.to_string(), status);
    }

    /// Runs `f` on one meter's status.
    pub fn update<R>(&self, name: &str, f: impl FnOnce(&mut MeterStatus) -> R) -> Option<R> {
        self.lock().get_mut(name).map(f)
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
}
