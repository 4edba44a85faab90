//! The whole gateway in a test: a simulated PZEM-016 (address 4) on a pseudo-terminal named
//! like a USB dongle, `pmtr run` in process with its relays on a fake GPIO board, and the
//! configuration they share (one meter `main` read every 200 ms, a CSV sink, a relay `motor`
//! on GPIO 17, on by default).

#![allow(dead_code)]

#[path = "simulator.rs"]
pub mod simulator;

use pmtr::config::Config;
use pmtr::relay::FakeBoard;
use pmtr::sim::{Profile, SimPort};
use std::path::Path;
use tokio::sync::oneshot;

/// The relay's pin.
pub const PIN: u8 = 17;

/// The PZEM at `volts`, on `<dir>/ttyUSB0`.
pub fn sim(dir: &Path, volts: f64) -> SimPort {
    simulator::spawn(&dir.join("ttyUSB0"), &[format!("pzem-016@4,volts={volts}")])
}

/// From now on the PZEM reads `volts`.
pub fn set_volts(port: &SimPort, volts: f64) {
    port.with_slave(4, |s| s.set_profile(Profile::Script(vec![(0.0, volts)]))).unwrap();
}

/// The shared configuration, gateway `name`, state and CSV under `dir`, then `rest` (triggers,
/// alerts…).
pub fn toml(dir: &Path, name: &str, rest: &str) -> String {
    format!(
        r#"
[gateway]
name = "{name}"
state_dir = "{state}"
gpio = "fake"
[[bus]]
name = "b"
ports = ["{ports}"]
timeout = "100ms"
rescan = "200ms"
[[meter]]
name = "main"
model = "pzem-016"
address = 4
poll = "200ms"
[[sink]]
type = "csv"
dir = "{csv}"
flush_interval = "100ms"
[[relay]]
name = "motor"
pin = {PIN}
default = "on"
{rest}
"#,
        state = dir.join("state").display(),
        ports = dir.join("ttyUSB*").display(),
        csv = dir.join("csv").display(),
    )
}

/// `pmtr run` in this process, with the relays on a fake board.
pub struct Daemon {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    pub fn start(config: Config, board: &FakeBoard) -> Daemon {
        let (stop, stopped) = oneshot::channel::<()>();
        let gpio = Box::new(board.gpio());
        let task = tokio::spawn(pmtr::app::run::run_with(config, Some(gpio), async move {
            let _ = stopped.await;
        }));
        Daemon { stop, task }
    }

    /// Stops it as SIGTERM would, and waits until it has.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}
