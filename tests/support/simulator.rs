//! Simulated meters on a pseudo-terminal, on the line the real ones use (9600 baud, 8N1): the one
//! way the tests build a [`SimPort`].
//!
//! Include it from a test crate with
//! ```ignore
//! #[path = "support/simulator.rs"]
//! mod simulator;
//! ```
//! (support/gateway.rs includes it as `gateway::simulator`).

#![allow(dead_code)]

use pmtr::config::LineSettings;
use pmtr::sim::{SimPort, SimPortOptions};
use std::path::Path;
use std::time::Duration;

/// 9600 baud, 8 data bits, no parity, 1 stop bit.
pub fn line_8n1() -> LineSettings {
    LineSettings::DEFAULT
}

/// `meters` (`pmtr simulate` specs, e.g. `pzem-016@4,volts=230`) answering on a pseudo-terminal
/// linked at `link`, 5 ms after each request.
pub fn spawn<S: AsRef<str>>(link: &Path, meters: &[S]) -> SimPort {
    spawn_with(link, line_8n1(), Duration::from_millis(5), meters)
}

/// As [`spawn`], on `line` and answering `turnaround` after each request.
pub fn spawn_with<S: AsRef<str>>(
    link: &Path,
    line: LineSettings,
    turnaround: Duration,
    meters: &[S],
) -> SimPort {
    SimPort::spawn(SimPortOptions {
        link: Some(link.to_path_buf()),
        line,
        turnaround,
        meters: meters
            .iter()
            .map(|m| m.as_ref().parse().unwrap_or_else(|e| panic!("meter spec {:?}: {e}", m.as_ref())))
            .collect(),
    })
    .unwrap()
}
