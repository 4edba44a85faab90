//! A simulated serial line on a pseudo-terminal: the I/O shell around [`SimSlave`]s.
//!
//! The gateway opens the pty's slave side (or a symlink to it) as if it were a USB-RS485
//! adapter; a thread on the master side plays the meters. A pty moves bytes instantly, so the
//! thread emulates the wire: a request of n bytes counts as received n character times after
//! its first byte arrived (or, when its length cannot be known from its first bytes, after
//! 3.5 characters of silence); the reply starts `turnaround` later, and its byte i is written
//! at `start + (i + 1) · char_time`, each against an absolute deadline so no drift builds up.

use super::pty::{self, sleep_until, Served, TICK};
use super::slave::{request_len, Fault, Response, SimMeterSpec, SimSlave};
use crate::config::LineSettings;
use crate::sync::Locked;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How a simulated port is set up.
#[derive(Debug, Clone, PartialEq)]
pub struct SimPortOptions {
    /// A symlink created to the pty slave (e.g. `/tmp/x/ttyUSB0`); its directory is created
    /// if missing, and a symlink already there is replaced.
    pub link: Option<PathBuf>,
    /// Gives the byte timing (the pty itself ignores baud rate and parity).
    pub line: LineSettings,
    /// The slaves' processing delay between the end of a request and the start of the reply.
    pub turnaround: Duration,
    /// The meters on this line.
    pub meters: Vec<SimMeterSpec>,
}

impl SimPortOptions {
    /// No link, a 5 ms turnaround.
    pub fn new(line: LineSettings, meters: Vec<SimMeterSpec>) -> Self {
        SimPortOptions { link: None, line, turnaround: Duration::from_millis(5), meters }
    }
}

/// What a simulated port has seen and done, over all its plugs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Frames received (any bytes ended by their expected length or by silence).
    pub frames: u64,
    /// CRC-valid frames for at least one of the meters (broadcasts included).
    pub requests: u64,
    /// Replies written to the line in full.
    pub replies: u64,
    /// Frames no meter took: bad CRC, noise, other addresses.
    pub ignored: u64,
    /// Frames more than one meter answered (their replies are ANDed, as on a wired-AND line).
    pub collisions: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Bytes the pty would not take (nobody reading and its buffer full).
    pub bytes_dropped: u64,
    /// Bytes written by [`SimPort::inject`].
    pub bytes_injected: u64,
    /// Pseudo-terminals opened (1 + replugs).
    pub plugs: u64,
    /// Whether the line thread is running now.
    pub running: bool,
    /// The I/O error that ended the line thread, if one did.
    pub error: Option<String>,
}

struct State {
    slaves: Vec<SimSlave>,
    stats: SimStats,
    inject: VecDeque<u8>,
}

struct Shared {
    /// Time 0 of the meters' profiles; kept across replugs.
    epoch: Instant,
    state: Mutex<State>,
}

impl Shared {
    /// The state, even after a panic elsewhere (there is nothing a panic could leave half-done
    /// that matters to a simulator).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.locked()
    }
}

/// Simulated meters on a pseudo-terminal.
pub struct SimPort {
    shared: Arc<Shared>,
    line: LineSettings,
    turnaround: Duration,
    pty: Option<Served>,
    path: PathBuf,
}

impl SimPort {
    /// Opens a pseudo-terminal, creates the link if asked, and starts serving the meters.
    pub fn spawn(opts: SimPortOptions) -> io::Result<SimPort> {
        let slaves = opts.meters.iter().map(SimMeterSpec::build).collect();
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            state: Mutex::new(State { slaves, stats: SimStats::default(), inject: VecDeque::new() }),
        });
        let mut port =
            SimPort { shared, line: opts.line, turnaround: opts.turnaround, pty: None, path: PathBuf::new() };
        port.plug(opts.link)?;
        Ok(port)
    }

    /// Where the gateway opens the port: the link if there is one, else `/dev/pts/N`. After
    /// [`SimPort::unplug`], the path it had.
    pub fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Pulls the adapter out: stops the thread, closes the pty and removes the link. A gateway
    /// holding the port open sees end-of-file or EIO.
    pub fn unplug(&mut self) {
        if let Some(pty) = self.pty.take() {
            pty.close();
        }
        self.shared.lock().inject.clear();
    }

    /// Plugs a new pseudo-terminal in (unplugging the current one first), with the same
    /// meters in the same state.
    pub fn replug(&mut self, new_link: Option<PathBuf>) -> io::Result<()> {
        self.unplug();
        self.plug(new_link)
    }

    /// Whether a pseudo-terminal is plugged in.
    pub fn is_plugged(&self) -> bool {
        self.pty.is_some()
    }

    fn plug(&mut self, link: Option<PathBuf>) -> io::Result<()> {
        let pty = pty::open(link.as_deref())?;
        let stop = Arc::new(AtomicBool::new(false));
        let wire = Wire {
            master: pty.master,
            shared: self.shared.clone(),
            stop: stop.clone(),
            char_time: self.line.char_time(),
            gap: self.line.frame_gap(),
            turnaround: self.turnaround,
        };
        {
            let mut st = self.shared.lock();
            st.stats.plugs += 1;
            st.stats.running = true;
            st.stats.error = None;
        }
        let thread = std::thread::Builder::new().name("pmtr-sim-port".into()).spawn(move || wire.run());
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                self.shared.lock().stats.running = false;
                if let Some(link) = &link {
                    pty::remove_link(link);
                }
                return Err(e);
            }
        };
        self.path = link.clone().unwrap_or(pty.pts);
        self.pty = Some(Served { stop, thread: Some(thread), _slave: pty.slave, link });
        Ok(())
    }

    /// Sets the fault of the meter now at `address`; false when there is none.
    pub fn set_fault(&self, address: u8, fault: Fault) -> bool {
        self.with_slave(address, |s| s.set_fault(fault)).is_some()
    }

    /// Sets the fault of the meter now at `address` and how often it strikes.
    pub fn set_fault_every(&self, address: u8, fault: Fault, every: Option<u32>) -> bool {
        self.with_slave(address, |s| {
            s.set_fault(fault);
            s.set_fault_every(every);
        })
        .is_some()
    }

    /// Runs `f` on the meter now at `address` (change its profile, read its counters...).
    pub fn with_slave<R>(&self, address: u8, f: impl FnOnce(&mut SimSlave) -> R) -> Option<R> {
        let mut st = self.shared.lock();
        st.slaves.iter_mut().find(|s| s.address() == address).map(f)
    }

    /// A copy of every meter as it is now.
    pub fn slaves(&self) -> Vec<SimSlave> {
        self.shared.lock().slaves.clone()
    }

    /// Seconds since the port was spawned: the `t` of the meters' profiles.
    pub fn elapsed_s(&self) -> f64 {
        self.shared.epoch.elapsed().as_secs_f64()
    }

    /// Puts raw bytes on the line (noise, a foreign frame), byte-timed, within ~10 ms. Dropped
    /// when unplugged.
    pub fn inject(&self, bytes: &[u8]) {
        if self.pty.is_some() {
            self.shared.lock().inject.extend(bytes.iter().copied());
        }
    }

    pub fn stats(&self) -> SimStats {
        let mut s = self.shared.lock().stats.clone();
        s.running = self.pty.as_ref().is_some_and(Served::running);
        s
    }
}

impl Drop for SimPort {
    fn drop(&mut self) {
        self.unplug();
    }
}

impl std::fmt::Debug for SimPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPort").field("path", &self.path).field("plugged", &self.pty.is_some()).finish()
    }
}

/// The longest Modbus RTU frame.
const MAX_FRAME: usize = 256;

/// The line thread.
struct Wire {
    master: File,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    char_time: Duration,
    gap: Duration,
    turnaround: Duration,
}

/// Why the line thread ends.
enum End {
    Stopped,
    Failed(io::Error),
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        End::Failed(e)
    }
}

impl Wire {
    fn run(mut self) {
        let end = self.serve();
        let mut st = self.shared.lock();
        st.stats.running = false;
        if let End::Failed(e) = end {
            st.stats.error = Some(e.to_string());
            tracing::warn!(error = %e, "simulated port stopped");
        }
    }

    fn serve(&mut self) -> End {
        // Bytes of the frame being received and the instant each one's last bit is on the wire.
        let mut rx: Vec<u8> = Vec::new();
        let mut ends: Vec<Instant> = Vec::new();
        let mut last_end = Instant::now();
        let mut chunk = [0u8; 512];
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return End::Stopped;
            }
            let injected: Vec<u8> = self.shared.lock().inject.drain(..).collect();
            if !injected.is_empty() {
                if let Err(e) = self.transmit(&injected, Instant::now(), Sent::Injected) {
                    return e;
                }
            }
            let wait = match ends.last() {
                Some(&end) => (end + self.gap).saturating_duration_since(Instant::now()).min(TICK),
                None => TICK,
            };
            let ms = wait.as_micros().div_ceil(1000) as u16;
            let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return End::Failed(e.into()),
            }
            let ready = fds[0].revents().unwrap_or(PollFlags::empty());
            if ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                loop {
                    match self.master.read(&mut chunk) {
                        Ok(0) => {
                            return End::Failed(io::Error::new(io::ErrorKind::UnexpectedEof, "pty closed"))
                        }
                        Ok(n) => {
                            let arrival = Instant::now();
                            for &b in &chunk[..n] {
                                last_end = arrival.max(last_end) + self.char_time;
                                rx.push(b);
                                ends.push(last_end);
                            }
                            self.shared.lock().stats.bytes_in += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return End::Failed(e),
                    }
                }
            }
            // Every frame that is complete now.
            loop {
                let now = Instant::now();
                // A frame of known length is there when its last byte is; another one when the
                // silence after it has lasted 3.5 characters.
                let (n, by_silence) = match (request_len(&rx), ends.last()) {
                    (Some(n), _) if rx.len() >= n => (n, false),
                    // No RTU frame is longer: a babbling line is cut into frames of this size.
                    _ if rx.len() >= MAX_FRAME => (MAX_FRAME, false),
                    (_, Some(&end)) if now >= end + self.gap => (rx.len(), true),
                    _ => break,
                };
                let frame: Vec<u8> = rx.drain(..n).collect();
                let frame_ends: Vec<Instant> = ends.drain(..n).collect();
                let Some(&frame_end) = frame_ends.last() else { break };
                let received = if by_silence { frame_end + self.gap } else { frame_end };
                if !sleep_until(received, &self.stop) {
                    return End::Stopped;
                }
                if let Some((reply, late)) = self.dispatch(&frame, received) {
                    // Capped at an hour: no delay, however absurd, can overflow the clock.
                    let start =
                        received + self.turnaround.saturating_add(late).min(Duration::from_secs(3600));
                    if let Err(e) = self.transmit(&reply, start, Sent::Reply) {
                        return e;
                    }
                    last_end = last_end.max(start + self.char_time * reply.len() as u32);
                }
            }
        }
    }

    /// Offers `frame` to every meter; the reply to send, if any, and its extra delay.
    fn dispatch(&self, frame: &[u8], received: Instant) -> Option<(Vec<u8>, Duration)> {
        let t = received.saturating_duration_since(self.shared.epoch).as_secs_f64();
        let mut st = self.shared.lock();
        st.stats.frames += 1;
        let mut took = false;
        let mut replies: Vec<(Vec<u8>, Duration)> = Vec::new();
        for s in st.slaves.iter_mut() {
            let before = s.counters().requests;
            match s.handle(frame, t) {
                Response::Reply(r) => replies.push((r, Duration::ZERO)),
                Response::ReplyLate(r, d) => replies.push((r, d)),
                Response::Silent => {}
            }
            took |= s.counters().requests > before;
        }
        if took {
            st.stats.requests += 1;
        } else {
            st.stats.ignored += 1;
        }
        if replies.len() > 1 {
            st.stats.collisions += 1;
        }
        let mut it = replies.into_iter();
        let first = it.next()?;
        Some(it.fold(first, |(mut acc, late), (r, d)| {
            if r.len() > acc.len() {
                acc.resize(r.len(), 0xFF);
            }
            acc.iter_mut().zip(r.iter()).for_each(|(a, b)| *a &= b);
            (acc, late.max(d))
        }))
    }

    /// Writes `bytes` one at a time, byte i at `start + (i + 1) · char_time`. Each byte is
    /// counted just before it goes out (and the reply or the injection with the last one), so
    /// whoever has read a byte finds it in the stats.
    fn transmit(&mut self, bytes: &[u8], start: Instant, what: Sent) -> Result<(), End> {
        for (i, b) in bytes.iter().enumerate() {
            if !sleep_until(start + self.char_time * (i as u32 + 1), &self.stop) {
                return Err(End::Stopped);
            }
            let last = i + 1 == bytes.len();
            let count = |st: &mut SimStats, k: i64| {
                st.bytes_out = st.bytes_out.saturating_add_signed(k);
                if last {
                    match what {
                        Sent::Reply => st.replies = st.replies.saturating_add_signed(k),
                        Sent::Injected => {
                            st.bytes_injected =
                                st.bytes_injected.saturating_add_signed(k * bytes.len() as i64)
                        }
                    }
                }
            };
            count(&mut self.shared.lock().stats, 1);
            let failed = match self.master.write(std::slice::from_ref(b)) {
                Ok(1) => None,
                Ok(_) => Some(None),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                    Some(None)
                }
                Err(e) => Some(Some(e)),
            };
            if let Some(error) = failed {
                let mut st = self.shared.lock();
                count(&mut st.stats, -1);
                match error {
                    None => st.stats.bytes_dropped += 1,
                    Some(e) => return Err(End::Failed(e)),
                }
            }
        }
        Ok(())
    }
}

/// What [`Wire::transmit`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Reply,
    Injected,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::{pzem, Model};
    use std::fs::OpenOptions;

    fn line(baud: u32) -> LineSettings {
        LineSettings::n81(baud)
    }

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
    }

    fn manual_meter() -> SimMeterSpec {
        "pzem-016@1,volts=220,amps=1,pf=1,hz=50".parse().unwrap()
    }

    /// Reads exactly `n` bytes or fails after `timeout`.
    fn read_n(f: &mut File, n: usize, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out with {} of {n} bytes: {got:02X?}", got.len());
            let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX));
            if fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) {
                let k = f.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..k]);
            }
        }
        got
    }

    /// No byte arrives within `d`.
    fn silent_for(f: &File, d: Duration) -> bool {
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::try_from(d).unwrap());
        !fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN))
    }

    #[test]
    fn answers_a_plain_file_open_with_wire_timing() {
        let opts = SimPortOptions::new(line(9600), vec![manual_meter()]);
        let turnaround = opts.turnaround;
        let port = SimPort::spawn(opts).unwrap();
        assert!(port.path().starts_with("/dev/pts"), "{}", port.path().display());
        let mut f = OpenOptions::new().read(true).write(true).open(port.path()).unwrap();
        let want = hex("01 04 14 08 98 03 E8 00 00 08 98 00 00 00 00 00 00 01 F4 00 64 00 00 63 CE");
        let ct = line(9600).char_time();
        for _ in 0..2 {
            let sent = Instant::now();
            f.write_all(&hex("01 04 00 00 00 0A 70 0D")).unwrap();
            assert_eq!(read_n(&mut f, 25, Duration::from_secs(2)), want);
            let took = sent.elapsed();
            // 8 request bytes on the wire, the turnaround, 25 reply bytes: a lower bound only.
            assert!(took >= ct * 25 + turnaround, "{took:?}");
            assert!(took >= ct * 33 + turnaround, "{took:?}");
        }
        let s = port.stats();
        assert_eq!((s.frames, s.requests, s.replies, s.bytes_in, s.bytes_out), (2, 2, 2, 16, 50));
        assert!(s.running);
        assert_eq!(s.plugs, 1);
    }

    #[test]
    fn several_meters_foreign_frames_faults_and_noise() {
        let meters = vec![
            "pzem-016@4,volts=121.3,amps=2.3".parse().unwrap(),
            "pzem-016@5".parse().unwrap(),
            "rx380@6".parse().unwrap(),
        ];
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("dev/ttyUSB0");
        let port = SimPort::spawn(SimPortOptions {
            link: Some(link.clone()),
            ..SimPortOptions::new(line(19200), meters)
        })
        .unwrap();
        assert_eq!(port.path(), link);
        let mut f = OpenOptions::new().read(true).write(true).open(&link).unwrap();
        let timeout = Duration::from_secs(2);

        let req = pzem::read_request(4).encode();
        f.write_all(&req).unwrap();
        let r = read_n(&mut f, 25, timeout);
        assert_eq!(r[3..5], [0x04, 0xBD]); // 121.3 V
                                           // Nobody at 7; a bad CRC for 5: silence.
        f.write_all(&pzem::read_request(7).encode()).unwrap();
        let mut bad = pzem::read_request(5).encode();
        bad[7] ^= 1;
        std::thread::sleep(Duration::from_millis(20));
        f.write_all(&bad).unwrap();
        assert!(silent_for(&f, Duration::from_millis(100)));
        // Noise ended by silence, then a good request: answered.
        f.write_all(&[0x55, 0x13]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        f.write_all(&crate::modbus::Request::read_input(6, 4034, 2).encode()).unwrap();
        assert_eq!(read_n(&mut f, 9, timeout)[..5], [6, 4, 4, 0, 0]);
        // Every other reply from 5 with a bad CRC.
        assert!(port.set_fault_every(5, Fault::BadCrc, Some(2)));
        assert!(!port.set_fault(9, Fault::NoReply));
        for i in 1..=4 {
            f.write_all(&pzem::read_request(5).encode()).unwrap();
            let r = read_n(&mut f, 25, timeout);
            assert_eq!(crate::modbus::crc::check_crc(&r), i % 2 == 1, "reply {i}");
        }
        // A late reply.
        port.set_fault(4, Fault::Late(Duration::from_millis(150)));
        let sent = Instant::now();
        f.write_all(&req).unwrap();
        let _ = read_n(&mut f, 25, timeout);
        assert!(sent.elapsed() >= Duration::from_millis(150));
        // Injected bytes arrive as they are.
        port.inject(&[0xDE, 0xAD]);
        assert_eq!(read_n(&mut f, 2, timeout), [0xDE, 0xAD]);
        let s = port.stats();
        assert_eq!(s.replies, 7);
        // Ignored: the frame to 7, the one with a bad CRC, the noise.
        assert_eq!((s.requests, s.ignored, s.frames), (7, 3, 10), "{s:?}");
        assert_eq!(s.bytes_injected, 2);
        assert_eq!(port.with_slave(5, |m| m.counters().faults), Some(2));
        drop(port);
        assert!(std::fs::symlink_metadata(&link).is_err(), "link removed on drop");
    }

    #[test]
    fn unplug_is_seen_and_replug_keeps_the_meters() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("ttyUSB0");
        let meters = vec!["pzem-016@1".parse().unwrap()];
        let mut port = SimPort::spawn(SimPortOptions {
            link: Some(link.clone()),
            ..SimPortOptions::new(line(9600), meters)
        })
        .unwrap();
        let mut f = OpenOptions::new().read(true).write(true).open(&link).unwrap();
        // Move the meter to address 9.
        let set = crate::modbus::Request::write_single(1, pzem::REG_ADDRESS, 9).encode();
        f.write_all(&set).unwrap();
        assert_eq!(read_n(&mut f, 8, Duration::from_secs(2)), set);

        let t0 = Instant::now();
        port.unplug();
        assert!(t0.elapsed() < Duration::from_millis(500));
        assert!(!port.is_plugged());
        assert!(std::fs::symlink_metadata(&link).is_err(), "link removed");
        let mut buf = [0u8; 8];
        match f.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => {}
            other => panic!("expected EOF or EIO, got {other:?}"),
        }
        assert!(!port.stats().running);

        let link2 = dir.path().join("ttyUSB7");
        port.replug(Some(link2.clone())).unwrap();
        assert_eq!(port.path(), link2);
        let mut f = OpenOptions::new().read(true).write(true).open(&link2).unwrap();
        f.write_all(&pzem::read_request(9).encode()).unwrap();
        let r = read_n(&mut f, 25, Duration::from_secs(2));
        assert_eq!(r[..3], [9, 4, 20]);
        let s = port.stats();
        assert_eq!((s.plugs, s.replies), (2, 2));
        assert!(s.running);
        assert_eq!(port.slaves()[0].model(), Model::Pzem016);
        let t0 = Instant::now();
        drop(port);
        assert!(t0.elapsed() < Duration::from_millis(500));
        assert!(std::fs::symlink_metadata(&link2).is_err());
    }

    #[test]
    fn a_frame_of_unknown_length_ends_with_silence() {
        let port = SimPort::spawn(SimPortOptions::new(line(9600), vec![manual_meter()])).unwrap();
        let mut f = OpenOptions::new().read(true).write(true).open(port.path()).unwrap();
        // FC 0x10 (write multiple): not a PZEM function, exception 01 after the silence.
        let mut req = vec![1, 0x10, 0, 1, 0, 1, 2, 0, 5];
        crate::modbus::crc::append_crc(&mut req);
        f.write_all(&req).unwrap();
        let mut want = vec![1, 0x90, 1];
        crate::modbus::crc::append_crc(&mut want);
        assert_eq!(read_n(&mut f, 5, Duration::from_secs(2)), want);
        // Two meters answering 0xF8 collide.
        drop(f);
        drop(port);
        let meters = vec!["pzem-016@1".parse().unwrap(), "pzem-016@2".parse().unwrap()];
        let port = SimPort::spawn(SimPortOptions::new(line(9600), meters)).unwrap();
        let mut f = OpenOptions::new().read(true).write(true).open(port.path()).unwrap();
        f.write_all(&hex("F8 03 00 02 00 01 31 A3")).unwrap();
        let r = read_n(&mut f, 7, Duration::from_secs(2));
        assert_eq!(r[..5], [0xF8, 3, 2, 0, 0]); // addresses 1 AND 2
        assert_eq!(port.stats().collisions, 1);
    }

    #[test]
    fn a_babbling_line_does_not_stop_the_meters() {
        let port = SimPort::spawn(SimPortOptions::new(line(115200), vec![manual_meter()])).unwrap();
        let mut f = OpenOptions::new().read(true).write(true).open(port.path()).unwrap();
        f.write_all(&[0x55; 1000]).unwrap();
        // 1000 characters take 87 ms at 115200 Bd; then the line falls silent.
        std::thread::sleep(Duration::from_millis(150));
        f.write_all(&pzem::read_request(1).encode()).unwrap();
        assert_eq!(read_n(&mut f, 25, Duration::from_secs(2))[..3], [1, 4, 20]);
        let s = port.stats();
        assert_eq!((s.bytes_in, s.requests, s.replies), (1008, 1, 1));
        assert!(s.ignored >= 4, "{s:?}");
    }
}
