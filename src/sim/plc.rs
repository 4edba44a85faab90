//! A simulated power-line bus of PMTR_001_SRV servers on a pseudo-terminal: the I/O shell
//! around [`PmtrServer`]s.
//!
//! The gateway opens the pty's slave side as if it were the serial port of its ES-1642NC
//! modem. A thread on the master side plays the medium:
//!
//! - Bytes the gateway writes go through the modem's UART (one character time each) and are
//!   gathered into a packet until 3.5 characters of silence; the packet reaches every server
//!   `transit` after its last byte — or, with `split_frames`, in two halves, the second
//!   `split_gap` after the first, as a modem may cut a frame. The medium keeps the order of
//!   the bytes: a packet never reaches the servers before the end of the one before it.
//! - A server's reply leaves its UART byte by byte; each byte reaches the gateway `transit`
//!   later, and the whole frame reaches every *other* server `transit` after its last byte:
//!   everyone hears everything, which is what the firmware's shared-bus quirks feed on.
//! - Collisions are not modelled: overlapping replies interleave byte by byte.
//!
//! Sim time (the servers' `t`) is seconds since [`PlcBus::spawn`]; the RTC's wall clock is
//! [`SystemTime::now`].

use super::pmtr_srv::PmtrServer;
use super::pty::{self, Served};
use crate::sync::Locked;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How a simulated power-line bus is set up.
#[derive(Debug, Clone)]
pub struct PlcBusOptions {
    /// A symlink created to the pty slave; its directory is created if missing.
    pub link: Option<PathBuf>,
    /// The servers, their `boot_t` in bus time (0 = at spawn).
    pub servers: Vec<PmtrServer>,
    /// One-way latency of the power-line modems.
    pub transit: Duration,
    /// One character on the UARTs (9600 8N1: 10 bits).
    pub char_time: Duration,
    /// Deliver every gateway frame to the servers in two halves.
    pub split_frames: bool,
    /// The delay between the halves (keep it under libmodbus' 0.5 s byte timeout).
    pub split_gap: Duration,
}

impl PlcBusOptions {
    /// No link, 150 ms transit, 9600 8N1, frames whole.
    pub fn new(servers: Vec<PmtrServer>) -> Self {
        PlcBusOptions {
            link: None,
            servers,
            transit: Duration::from_millis(150),
            char_time: crate::modbus::frame::char_time(9600, 8, false, 1),
            split_frames: false,
            split_gap: Duration::from_millis(40),
        }
    }
}

/// What the bus has carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlcStats {
    /// Bytes the gateway wrote.
    pub bytes_in: u64,
    /// Bytes written to the gateway.
    pub bytes_out: u64,
    /// Bytes the pty would not take.
    pub bytes_dropped: u64,
    /// Gateway packets delivered to the servers.
    pub packets: u64,
    /// Of those, split in two.
    pub splits: u64,
    /// Server frames put on the medium.
    pub replies: u64,
    pub running: bool,
    /// The I/O error that ended the thread, if one did.
    pub error: Option<String>,
}

struct State {
    servers: Vec<PmtrServer>,
    stats: PlcStats,
}

struct Shared {
    epoch: Instant,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }

    fn sim_t(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.epoch).as_secs_f64()
    }
}

/// PMTR_001_SRV servers on a simulated power-line bus.
pub struct PlcBus {
    shared: Arc<Shared>,
    served: Option<Served>,
    path: PathBuf,
}

impl PlcBus {
    /// Opens a pseudo-terminal, creates the link if asked, and starts the medium.
    pub fn spawn(opts: PlcBusOptions) -> io::Result<PlcBus> {
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            state: Mutex::new(State { servers: opts.servers, stats: PlcStats::default() }),
        });
        let pty = pty::open(opts.link.as_deref())?;
        let stop = Arc::new(AtomicBool::new(false));
        let medium = Medium {
            master: pty.master,
            shared: shared.clone(),
            stop: stop.clone(),
            transit: opts.transit,
            char_time: opts.char_time,
            gap: opts.char_time * 7 / 2,
            split: opts.split_frames.then_some(opts.split_gap),
        };
        shared.lock().stats.running = true;
        let thread = std::thread::Builder::new().name("pmtr-sim-plc".into()).spawn(move || medium.run());
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                if let Some(link) = &opts.link {
                    pty::remove_link(link);
                }
                return Err(e);
            }
        };
        let path = opts.link.clone().unwrap_or(pty.pts);
        Ok(PlcBus {
            shared,
            served: Some(Served { stop, thread: Some(thread), _slave: pty.slave, link: opts.link }),
            path,
        })
    }

    /// Where the gateway opens the port: the link if there is one, else `/dev/pts/N`.
    pub fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Bus time now: the servers' `t`.
    pub fn elapsed_s(&self) -> f64 {
        self.shared.sim_t(Instant::now())
    }

    /// Runs `f` on the server answering to unit `address` (see [`PmtrServer::unit`]).
    pub fn with_server<R>(&self, address: u8, f: impl FnOnce(&mut PmtrServer) -> R) -> Option<R> {
        let mut st = self.shared.lock();
        st.servers.iter_mut().find(|s| s.unit() == address).map(f)
    }

    /// Resets the server at `address` now; false if there is none.
    pub fn reboot(&self, address: u8) -> bool {
        let mut st = self.shared.lock();
        let Some(i) = st.servers.iter().position(|s| s.unit() == address) else { return false };
        let t = self.elapsed_s();
        st.servers[i].reboot(t);
        true
    }

    /// A copy of every server as it is now.
    pub fn servers(&self) -> Vec<PmtrServer> {
        self.shared.lock().servers.clone()
    }

    pub fn stats(&self) -> PlcStats {
        let mut s = self.shared.lock().stats.clone();
        s.running = self.served.as_ref().is_some_and(Served::running);
        s
    }
}

impl Drop for PlcBus {
    fn drop(&mut self) {
        if let Some(s) = self.served.take() {
            s.close();
        }
    }
}

impl std::fmt::Debug for PlcBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlcBus").field("path", &self.path).finish()
    }
}

/// Bytes on their way to the servers.
struct Delivery {
    at: Instant,
    /// The server that sent them (it does not hear itself).
    from: Option<usize>,
    bytes: Vec<u8>,
}

/// The medium's thread.
struct Medium {
    master: File,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    transit: Duration,
    char_time: Duration,
    gap: Duration,
    split: Option<Duration>,
}

impl Medium {
    fn run(mut self) {
        let end = self.serve();
        let mut st = self.shared.lock();
        st.stats.running = false;
        if let Err(e) = end {
            tracing::warn!(error = %e, "simulated power-line bus stopped");
            st.stats.error = Some(e.to_string());
        }
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut packet: Vec<u8> = Vec::new();
        let mut last_end = Instant::now();
        let mut deliveries: Vec<Delivery> = Vec::new();
        let mut to_gateway: VecDeque<(Instant, u8)> = VecDeque::new();
        // When the last byte the gateway sent reaches the servers: a later packet, or the
        // second half of a split one, is never delivered before it.
        let mut gateway_tail = Instant::now();
        let mut chunk = [0u8; 512];
        let tick = Duration::from_millis(5);
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            let mut next = now + tick;
            if !packet.is_empty() {
                next = next.min(last_end + self.gap);
            }
            if let Some(d) = deliveries.iter().map(|d| d.at).min() {
                next = next.min(d);
            }
            if let Some(&(at, _)) = to_gateway.front() {
                next = next.min(at);
            }
            let wait = next.saturating_duration_since(now);
            let ms = u16::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            if fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP)) {
                loop {
                    match self.master.read(&mut chunk) {
                        Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "pty closed")),
                        Ok(n) => {
                            let arrival = Instant::now();
                            for &b in &chunk[..n] {
                                last_end = arrival.max(last_end) + self.char_time;
                                packet.push(b);
                            }
                            self.shared.lock().stats.bytes_in += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // EIO: nobody has the slave open right now; wait for the gateway.
                        Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            let now = Instant::now();
            // A gateway packet ends with 3.5 characters of silence.
            if !packet.is_empty() && now >= last_end + self.gap {
                let bytes = std::mem::take(&mut packet);
                let at = (last_end + self.transit).max(gateway_tail);
                let mut st = self.shared.lock();
                st.stats.packets += 1;
                match self.split {
                    Some(gap) if bytes.len() >= 2 => {
                        st.stats.splits += 1;
                        let (a, b) = bytes.split_at(bytes.len() / 2);
                        deliveries.push(Delivery { at, from: None, bytes: a.to_vec() });
                        gateway_tail = at + gap;
                        deliveries.push(Delivery { at: gateway_tail, from: None, bytes: b.to_vec() });
                    }
                    _ => {
                        gateway_tail = at;
                        deliveries.push(Delivery { at, from: None, bytes });
                    }
                }
            }
            self.step_servers(now, &mut deliveries, &mut to_gateway);
            // Bytes due to the gateway.
            while let Some(&(at, b)) = to_gateway.front() {
                if at > Instant::now() {
                    break;
                }
                to_gateway.pop_front();
                match self.master.write(&[b]) {
                    Ok(1) => self.shared.lock().stats.bytes_out += 1,
                    Ok(_) => self.shared.lock().stats.bytes_dropped += 1,
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                        self.shared.lock().stats.bytes_dropped += 1
                    }
                    Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => {
                        self.shared.lock().stats.bytes_dropped += 1
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Delivers what is due to the servers, in time order, and runs them to `now`.
    fn step_servers(
        &self,
        now: Instant,
        deliveries: &mut Vec<Delivery>,
        to_gateway: &mut VecDeque<(Instant, u8)>,
    ) {
        deliveries.sort_by_key(|d| d.at);
        let due = deliveries.iter().take_while(|d| d.at <= now).count();
        let mut st = self.shared.lock();
        for d in deliveries.drain(..due) {
            let t = self.shared.sim_t(d.at);
            for (i, s) in st.servers.iter_mut().enumerate() {
                if d.from != Some(i) {
                    s.hear(&d.bytes, t);
                }
            }
        }
        let t = self.shared.sim_t(now);
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let mut sent = Vec::new();
        for (i, s) in st.servers.iter_mut().enumerate() {
            for (ts, frame) in s.run_until(t, wall) {
                sent.push((i, ts, frame));
            }
        }
        st.stats.replies += sent.len() as u64;
        drop(st);
        for (i, ts, frame) in sent {
            let start = self.shared.epoch + Duration::from_secs_f64(ts.max(0.0));
            let n = frame.len() as u32;
            let mut bytes: Vec<(Instant, u8)> = to_gateway.drain(..).collect();
            bytes.extend(
                frame
                    .iter()
                    .enumerate()
                    .map(|(k, &b)| (start + self.transit + self.char_time * (k as u32 + 1), b)),
            );
            bytes.sort_by_key(|&(at, _)| at);
            to_gateway.extend(bytes);
            deliveries.push(Delivery {
                at: start + self.char_time * n + self.transit,
                from: Some(i),
                bytes: frame,
            });
        }
    }
}
