//! The one wiring of the flow, for `pmtr run` and `pmtr demo` alike:
//!
//! ```text
//!  buses ─▶ trigger task (relays first; none: a pass-through) ─▶ Outlet ─▶ log, copies (MQTT, demo), storage
//! ```
//!
//! The buses send each reading to the trigger task, which switches the relays and then hands
//! the reading on to its [`Outlet`]; nothing stands before a relay but the trigger engine and
//! the pin. Without relays or triggers the readings go through a pass-through to the same kind
//! of outlet. See [`crate::pipeline`].

use crate::bus::BusEngine;
use crate::config::Config;
use crate::pipeline::Outlet;
use crate::reading::Reading;
use crate::trigger::run::{Handover, Triggers};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Readings on their way from the buses to the pass-through.
const PASS_QUEUE: usize = 1024;

/// The buses, the relays and the way out, running.
pub struct Pipeline {
    pub engine: BusEngine,
    /// The trigger task, when the configuration has relays or triggers.
    pub triggers: Option<Triggers>,
    pass: Option<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts the buses. With `triggers` (started on their own outlet: relays first), every
    /// reading goes to them; without, straight to `out`.
    pub fn start(
        config: &Config,
        triggers: Option<Triggers>,
        out: Outlet,
        stop: watch::Receiver<bool>,
    ) -> Pipeline {
        match triggers {
            Some(t) => {
                drop(out);
                let engine = BusEngine::start(config, t.readings.clone(), stop);
                Pipeline { engine, triggers: Some(t), pass: None }
            }
            None => {
                let (tx, rx) = mpsc::channel::<Reading>(PASS_QUEUE);
                let pass = tokio::spawn(crate::pipeline::pass(rx, out));
                Pipeline { engine: BusEngine::start(config, tx, stop), triggers: None, pass: Some(pass) }
            }
        }
    }

    /// After the stop signal: the buses stop after their transaction in flight, then what they
    /// sent goes through the relays and out. The relays go per `on_shutdown`, or, with
    /// `handover` (a reload), stay as they are and come back with the trigger state.
    pub async fn stop(self, handover: bool) -> Option<Handover> {
        self.engine.join().await;
        if let Some(p) = self.pass {
            let _ = p.await;
        }
        match self.triggers {
            Some(t) if handover => t.hand_over().await,
            Some(t) => {
                t.join().await;
                None
            }
            None => None,
        }
    }
}
