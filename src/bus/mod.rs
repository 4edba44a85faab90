//! The bus engine. Each configured bus names port patterns; every port that matches gets one
//! task that owns it ([`port::run`]). Meters are found by their slave address on whichever
//! port answers for them, and found again when an adapter is re-plugged under another name.
//!
//! ```text
//! bus supervisor ──(glob every `rescan`)──► port task per path ──► Reading ──► mpsc
//!        └──── shared: which meter is on which port, status board, remembered ports
//! ```

pub mod driver;
pub mod liveness;
pub mod network;
pub mod poll;
pub mod port;
pub mod scan;
pub mod schedule;
pub mod status;

use crate::config::{Bus, Config, Meter};
use crate::reading::Reading;
use crate::sync::Locked;
use status::{MeterState, MeterStatus, StatusBoard};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What the port tasks of one bus share.
pub struct BusShared {
    pub bus: Bus,
    pub meters: Vec<Meter>,
    /// Which port each meter (by index) is on.
    owners: Mutex<Vec<Option<String>>>,
    ports: Mutex<HashSet<String>>,
    pub status: Arc<StatusBoard>,
    pub readings: mpsc::Sender<Reading>,
    memory: Option<PortMemory>,
    remembered: Vec<Option<String>>,
    /// Where the port tasks tell that they make progress (for the systemd watchdog).
    pub liveness: Arc<liveness::Liveness>,
    /// Whether the gateway's clock can be sent to PMTR servers.
    pub clock: Arc<crate::clock::WallClock>,
    /// Each port task's queue of requests from the Modbus TCP server, by port.
    pub(crate) passthrough: Mutex<HashMap<String, mpsc::Sender<PassThrough>>>,
    /// How many such requests may wait for one port.
    pub(crate) queue: usize,
}

/// A request of a Modbus TCP client for a meter, run by the port task that has the meter
/// between its own polls (see [`BusShared::pass_through`]).
pub struct PassThrough {
    pub request: crate::modbus::Request,
    pub reply: tokio::sync::oneshot::Sender<Result<crate::modbus::Reply, crate::modbus::FrameError>>,
}

/// Why a request could not be queued for a meter's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotQueued {
    /// No port has the meter now.
    NoPort,
    /// As many requests as allowed wait already.
    Busy,
}

impl BusShared {
    fn lock_owners(&self) -> std::sync::MutexGuard<'_, Vec<Option<String>>> {
        self.owners.locked()
    }

    pub fn owners(&self) -> Vec<Option<String>> {
        self.lock_owners().clone()
    }

    /// Ports remembered from the last run, by meter index.
    pub fn remembered_port_of(&self) -> Vec<Option<String>> {
        self.remembered.clone()
    }

    /// Queues `request` for the port that has meter `i`: the port task runs it when none of
    /// its own polls is due, and answers on the returned channel.
    pub fn pass_through(
        &self,
        i: usize,
        request: crate::modbus::Request,
    ) -> Result<
        tokio::sync::oneshot::Receiver<Result<crate::modbus::Reply, crate::modbus::FrameError>>,
        NotQueued,
    > {
        let port = self.lock_owners().get(i).cloned().flatten().ok_or(NotQueued::NoPort)?;
        let sender = self.passthrough.locked().get(&port).cloned();
        let sender = sender.ok_or(NotQueued::NoPort)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        match sender.try_send(PassThrough { request, reply }) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(NotQueued::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(NotQueued::NoPort),
        }
    }

    /// The queue of a port task starting on `port`.
    pub(crate) fn open_queue(&self, port: &str) -> mpsc::Receiver<PassThrough> {
        let (tx, rx) = mpsc::channel(self.queue.max(1));
        self.passthrough.locked().insert(port.to_owned(), tx);
        rx
    }

    pub(crate) fn close_queue(&self, port: &str) {
        self.passthrough.locked().remove(port);
    }

    pub fn port_count(&self) -> usize {
        self.ports.locked().len()
    }

    /// Records that meter `i` answered on `port`. False if another port has it already (two
    /// meters share one address on different ports).
    pub fn claim(&self, i: usize, port: &str) -> bool {
        let mut owners = self.lock_owners();
        match owners[i].as_deref() {
            Some(p) if p == port => return true,
            Some(p) => {
                tracing::warn!(
                    meter = %self.meters[i].name, address = self.meters[i].address, kept = %p, also = %port,
                    "the address answers on two ports; keeping the first. Give each meter its own address, \
                     or one bus per port"
                );
                return false;
            }
            None => owners[i] = Some(port.to_string()),
        }
        let map = owners.clone();
        drop(owners);
        let m = &self.meters[i];
        tracing::info!(meter = %m.name, address = m.address, port = %port, "meter found");
        self.status.update(&m.name, |s| s.port = Some(port.to_string()));
        if let Some(mem) = &self.memory {
            mem.save(&self.meters, &map);
        }
        true
    }

    pub fn release(&self, i: usize, port: &str) {
        let mut owners = self.lock_owners();
        if owners[i].as_deref() == Some(port) {
            owners[i] = None;
            self.status.update(&self.meters[i].name, |s| {
                s.port = None;
                s.state = MeterState::Searching;
            });
        }
    }

    fn port_ended(&self, port: &str, release: bool) {
        if release {
            for i in 0..self.meters.len() {
                self.release(i, port);
            }
        }
        self.ports.locked().remove(port);
    }
}

/// Remembers which port each meter was found on (`<state_dir>/ports.json`), so that the next
/// start polls known ports first. Written only when the map changes.
#[derive(Debug, Clone)]
pub struct PortMemory {
    path: PathBuf,
}

impl PortMemory {
    pub fn new(state_dir: &Path) -> Self {
        PortMemory { path: state_dir.join("ports.json") }
    }

    pub fn load(&self) -> BTreeMap<String, String> {
        std::fs::read(&self.path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    fn save(&self, meters: &[Meter], owners: &[Option<String>]) {
        let mut all = self.load();
        for (m, o) in meters.iter().zip(owners) {
            if let Some(p) = o {
                all.insert(m.name.clone(), p.clone());
            }
        }
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = self.path.with_extension("json.tmp");
        let res = serde_json::to_vec_pretty(&all)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = res {
            tracing::debug!(path = %self.path.display(), error = %e, "could not remember the port map");
        }
    }
}

/// The bus engine running: one supervisor per bus, and what they share with the rest.
pub struct BusEngine {
    pub status: Arc<StatusBoard>,
    /// Whether every port task makes progress: see [`liveness`].
    pub liveness: Arc<liveness::Liveness>,
    /// Every bus with meters (for the Modbus TCP server).
    pub buses: Vec<Arc<BusShared>>,
    tasks: Vec<JoinHandle<()>>,
}

impl BusEngine {
    /// Starts one supervisor per bus. Readings go to `readings`; `shutdown` set to true stops
    /// every task after its transaction in flight.
    pub fn start(
        config: &Config,
        readings: mpsc::Sender<Reading>,
        shutdown: watch::Receiver<bool>,
    ) -> BusEngine {
        let status = Arc::new(StatusBoard::default());
        let liveness = Arc::new(liveness::Liveness::default());
        let memory = PortMemory::new(&config.gateway.state_dir);
        let remembered = memory.load();
        let claimed = Arc::new(Mutex::new(HashSet::new()));
        let clock = crate::clock::WallClock::system(config.gateway.clock_sync_wait);
        let mut tasks = vec![];
        let mut buses = vec![];
        // Buses without meters claim no port.
        let active: Vec<Bus> =
            config.buses.iter().filter(|b| config.meters_on(&b.name).next().is_some()).cloned().collect();
        let active = Arc::new(active);
        for (index, bus) in active.iter().enumerate() {
            let meters: Vec<Meter> = config.meters_on(&bus.name).cloned().collect();
            for m in &meters {
                status.register(&m.name, MeterStatus::searching(bus.name.clone(), m.address, m.model));
            }
            let shared = Arc::new(BusShared {
                bus: bus.clone(),
                owners: Mutex::new(vec![None; meters.len()]),
                remembered: meters.iter().map(|m| remembered.get(&m.name).cloned()).collect(),
                meters,
                ports: Mutex::new(HashSet::new()),
                status: status.clone(),
                readings: readings.clone(),
                memory: Some(memory.clone()),
                liveness: liveness.clone(),
                clock: clock.clone(),
                passthrough: Mutex::new(HashMap::new()),
                queue: config.modbus_server.as_ref().map_or(1, |s| s.queue),
            });
            buses.push(shared.clone());
            if bus.kind.is_network() {
                tasks.push(tokio::spawn(network::supervise(shared, shutdown.clone())));
                continue;
            }
            let all = Arc::clone(&active);
            tasks.push(tokio::spawn(supervise(shared, index, all, claimed.clone(), shutdown.clone())));
        }
        BusEngine { status, liveness, buses, tasks }
    }

    /// Waits for every bus task to end (after shutdown).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// How sure a pattern is about the device it names: an exact path, then a stable
/// `/dev/serial/` name, then any glob.
fn specificity(pattern: &str) -> u8 {
    if !pattern.contains(['*', '?', '[']) {
        2
    } else if pattern.starts_with("/dev/serial/") {
        1
    } else {
        0
    }
}

fn device_of(path: &str) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path))
}

/// Which of `buses` a device belongs to when several buses' patterns match it: the most
/// specific match wins (see [`specificity`]), and among equals the bus declared first. So
/// `/dev/serial/by-id/usb-FTDI_…` on an RX380 bus beats `/dev/ttyUSB*` on a PZEM bus.
pub fn port_owner(device: &Path, buses: &[Bus]) -> Option<usize> {
    let mut best: Option<(u8, usize)> = None;
    for (i, bus) in buses.iter().enumerate().filter(|(_, b)| !b.kind.is_network()) {
        for pattern in &bus.ports {
            let score = specificity(pattern);
            if best.is_some_and(|(s, _)| s >= score) {
                continue;
            }
            if expand_ports(std::slice::from_ref(pattern)).iter().any(|p| device_of(p) == device) {
                best = Some((score, i));
            }
        }
    }
    best.map(|(_, i)| i)
}

/// Paths matching the bus patterns now, in a stable order.
pub fn expand_ports(patterns: &[String]) -> Vec<String> {
    let mut out = vec![];
    for p in patterns {
        match glob::glob(p) {
            Ok(paths) => {
                for path in paths.flatten() {
                    let s = path.to_string_lossy().into_owned();
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
            }
            Err(_) => {
                if Path::new(p).exists() && !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
    }
    out
}

/// One bus: match its patterns every `rescan`, give each new port a task, forget ports whose
/// task ended (unplugged), so that a re-plugged adapter is picked up under its new name.
async fn supervise(
    shared: Arc<BusShared>,
    index: usize,
    buses: Arc<Vec<Bus>>,
    claimed: Arc<Mutex<HashSet<PathBuf>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: HashMap<String, (PathBuf, JoinHandle<port::PortExit>)> = HashMap::new();
    let mut complained: HashSet<String> = HashSet::new();
    loop {
        // Reap ended port tasks.
        let ended: Vec<String> =
            running.iter().filter(|(_, (_, h))| h.is_finished()).map(|(p, _)| p.clone()).collect();
        for p in ended {
            if let Some((canon, h)) = running.remove(&p) {
                claimed.locked().remove(&canon);
                match h.await {
                    Ok(port::PortExit::Failed(e)) => {
                        tracing::warn!(bus = %shared.bus.name, port = %p, error = %e, "port lost (unplugged?); its meters will be searched for on every port")
                    }
                    Ok(port::PortExit::Shutdown) => {}
                    Err(e) => {
                        // A bug, not the line: give the port's meters back and open it afresh.
                        tracing::error!(bus = %shared.bus.name, port = %p, error = %e, "port task ended abnormally; reopening it");
                        shared.port_ended(&p, true);
                    }
                }
            }
        }
        if *shutdown.borrow() {
            break;
        }
        for path in expand_ports(&shared.bus.ports) {
            if running.contains_key(&path) {
                continue;
            }
            let canon = device_of(&path);
            if let Some(owner) = port_owner(&canon, &buses).filter(|&o| o != index) {
                if complained.insert(path.clone()) {
                    tracing::info!(
                        bus = %shared.bus.name, port = %path, owner = %buses[owner].name,
                        "the port also matches another bus, whose pattern names it more precisely: left to it"
                    );
                }
                continue;
            }
            if !claimed.locked().insert(canon.clone()) {
                continue; // another bus (or another name of this port) has it
            }
            match crate::modbus::transport::open_serial(&path, &shared.bus.line) {
                Ok(line) => {
                    complained.remove(&path);
                    tracing::info!(bus = %shared.bus.name, port = %path, settings = %shared.bus.line, "port opened");
                    shared.ports.locked().insert(path.clone());
                    let h = tokio::spawn(port::run(path.clone(), line, shared.clone(), shutdown.clone()));
                    running.insert(path, (canon, h));
                }
                Err(e) => {
                    claimed.locked().remove(&canon);
                    if complained.insert(path.clone()) {
                        tracing::error!(bus = %shared.bus.name, "{e}");
                    }
                }
            }
        }
        if running.is_empty() && complained.is_empty() {
            tracing::debug!(bus = %shared.bus.name, patterns = ?shared.bus.ports, "no port matches yet");
        }
        tokio::select! {
            _ = tokio::time::sleep(shared.bus.rescan) => {}
            _ = shutdown.changed() => {}
        }
    }
    for (_, (_, h)) in running {
        let _ = h.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bus(name: &str, ports: &[String]) -> Bus {
        Bus {
            name: name.into(),
            ports: ports.to_vec(),
            line: crate::config::LineSettings::DEFAULT,
            timeout: Duration::from_millis(300),
            retries: 2,
            frame_gap: None,
            max_backoff: Duration::from_secs(60),
            rescan: Duration::from_secs(5),
            kind: crate::config::BusKind::Rs485,
        }
    }

    #[test]
    fn the_most_specific_pattern_owns_a_port() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["ttyUSB0", "ttyUSB1"] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        std::os::unix::fs::symlink(dir.path().join("ttyUSB1"), dir.path().join("rx380-adapter")).unwrap();
        let glob = dir.path().join("ttyUSB*").display().to_string();
        let exact = dir.path().join("rx380-adapter").display().to_string();
        let buses = [bus("house", std::slice::from_ref(&glob)), bus("plant", &[exact])];
        let dev = |n: &str| device_of(&dir.path().join(n).display().to_string());
        assert_eq!(port_owner(&dev("ttyUSB0"), &buses), Some(0));
        // Both match ttyUSB1; the exact name (through its link) wins over the glob.
        assert_eq!(port_owner(&dev("ttyUSB1"), &buses), Some(1));
        // Equal patterns: the bus declared first.
        let twins = [bus("a", std::slice::from_ref(&glob)), bus("b", &[glob])];
        assert_eq!(port_owner(&dev("ttyUSB1"), &twins), Some(0));
        assert_eq!(port_owner(&dev("nothing"), &twins), None);
    }

    #[test]
    fn stable_names_are_more_specific_than_globs() {
        assert_eq!(specificity("/dev/ttyAMA0"), 2);
        assert_eq!(specificity("/dev/serial/by-id/usb-FTDI_*"), 1);
        assert_eq!(specificity("/dev/ttyUSB*"), 0);
    }
}
