//! Where readings and state changes go once the relays have seen them: one [`Outlet`].
//!
//! ```text
//!  buses ─ Reading ─▶ trigger task (relays first) ─┐
//!              └────▶ pass-through (no relays) ────┴─▶ Outlet ─┬─▶ log (log_readings)
//!                                                              ├─▶ copies (MQTT, the demo): broadcast
//!                                                              └─▶ storage: Intake
//! ```
//!
//! Every hand-off in an outlet is bounded and never waits: a full storage queue drops the
//! record (counted, logged), a slow reader of the copies lags and counts what it missed. So no
//! consumer slows a relay, a poll or another consumer.

use crate::reading::{Reading, Record};
use crate::store::{Closed, Intake};
use tokio::sync::{broadcast, mpsc};

/// The fan-out after the relays: the log, the copies, storage.
#[derive(Clone)]
pub struct Outlet {
    storage: Intake,
    copies: Option<broadcast::Sender<Record>>,
    log_readings: bool,
}

impl Outlet {
    /// Records to `storage` only, readings not logged.
    pub fn new(storage: Intake) -> Outlet {
        Outlet { storage, copies: None, log_readings: false }
    }

    /// Each reading logged at info (the gateway's `log_readings`).
    pub fn logging(mut self, log_readings: bool) -> Outlet {
        self.log_readings = log_readings;
        self
    }

    /// A copy of every record to the receivers of the sender returned (`capacity` records
    /// before a slow receiver lags).
    pub fn with_copies(mut self, capacity: usize) -> (Outlet, broadcast::Sender<Record>) {
        let (tx, _) = broadcast::channel(capacity);
        self.copies = Some(tx.clone());
        (self, tx)
    }

    /// Hands `r` on without waiting; `Err` once storage has stopped.
    pub fn offer(&self, r: Record) -> Result<(), Closed> {
        if self.log_readings {
            if let Record::Reading(reading) = &r {
                tracing::info!("{reading}");
            }
        }
        if let Some(copies) = &self.copies {
            if copies.receiver_count() > 0 {
                let _ = copies.send(r.clone());
            }
        }
        self.storage.offer(r)
    }
}

impl From<Intake> for Outlet {
    fn from(storage: Intake) -> Outlet {
        Outlet::new(storage)
    }
}

impl From<mpsc::Sender<Record>> for Outlet {
    fn from(tx: mpsc::Sender<Record>) -> Outlet {
        Outlet::new(tx.into())
    }
}

/// The way from the buses to the outlet when no relay stands on it: each reading handed on as
/// it comes, until `readings` closes or storage stops.
pub async fn pass(mut readings: mpsc::Receiver<Reading>, out: Outlet) {
    while let Some(r) = readings.recv().await {
        if out.offer(Record::Reading(r)).is_err() {
            tracing::error!("storage stopped: readings are no longer written");
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading() -> Reading {
        Reading {
            meter: "m1".into(),
            model: crate::meter::Model::Pzem016,
            time: chrono::Utc::now(),
            samples: vec![],
            quality: Default::default(),
        }
    }

    /// Each record goes to storage and to every copy; a copy nobody reads costs nothing and
    /// holds up nothing; storage gone ends the pass-through.
    #[tokio::test]
    async fn every_record_goes_to_storage_and_to_the_copies() {
        let (intake, mut stored) = Intake::channel(4);
        let (out, copies) = Outlet::new(intake).logging(true).with_copies(4);
        let mut copy = copies.subscribe();
        out.offer(Record::Reading(reading())).unwrap();
        assert!(matches!(stored.try_recv(), Ok(Record::Reading(r)) if &*r.meter == "m1"));
        assert!(matches!(copy.try_recv(), Ok(Record::Reading(r)) if &*r.meter == "m1"));
        // More than the copies hold: the reader lags, storage still gets all (its own bound).
        drop(copy);
        for _ in 0..4 {
            out.offer(Record::Reading(reading())).unwrap();
        }
        assert_eq!(std::iter::from_fn(|| stored.try_recv().ok()).count(), 4);
        let (tx, rx) = mpsc::channel(4);
        tx.send(reading()).await.unwrap();
        drop(stored);
        pass(rx, out).await; // storage gone: returns at the first reading
    }
}
