//! One Modbus RTU transaction at a time over a byte stream: keep the inter-frame silence,
//! flush stale input, send, collect the reply until it is complete or the timeout runs out.
//!
//! pmtr speaks RTU itself rather than through tokio-modbus' client because the gateway must
//! tell a timeout from a CRC error, a foreign frame, a short frame and late bytes (each is a
//! counter), must flush what a late reply left behind before the next request, and must time
//! every request itself; tokio-modbus has no per-request timeout and resynchronises silently.
//! tokio-modbus is used in the tests as the independent client our simulators must satisfy.

use super::frame::{FrameError, Pdu, Reply, ReplyScanner, Request, Scan};
use super::{LineSettings, Parity};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// A byte stream that can drop what is waiting in its input buffer.
pub trait Line: AsyncRead + AsyncWrite + Unpin + Send {
    fn clear_input(&mut self) -> io::Result<()>;

    /// Stop watching for input for a while (the rest of a reply is known to be on the wire).
    fn park(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Watch for input again.
    fn unpark(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// A line that carries whole transactions itself (Modbus TCP) rather than RTU bytes: the
    /// transport hands each request to it.
    fn session(&mut self) -> Option<&mut dyn Session> {
        None
    }
}

/// Whole Modbus transactions over a connection that frames them itself (see
/// [`crate::modbus::tcp`]): the same [`Outcome`]s as RTU, so the same counters.
pub trait Session: Send {
    fn transact<'a>(
        &'a mut self,
        req: &'a Request,
        timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<Outcome>> + Send + 'a>>;
}

/// A serial port registered with tokio by pmtr itself, so that it can leave epoll while the
/// rest of a reply is on the wire: at 9600 baud a USB adapter (or a pty) hands bytes over one
/// at a time, and every byte would otherwise wake the gateway.
pub struct SerialLine {
    // Declared first so that it deregisters before `port` closes the descriptor.
    watch: Option<AsyncFd<RawFd>>,
    port: serialport::TTYPort,
}

impl std::fmt::Debug for SerialLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use serialport::SerialPort;
        f.debug_struct("SerialLine")
            .field("port", &self.port.name())
            .field("watched", &self.watch.is_some())
            .finish()
    }
}

/// Registers `fd` with the runtime's reactor.
fn register(fd: RawFd) -> io::Result<AsyncFd<RawFd>> {
    // SAFETY: `fd` belongs to the SerialLine's port, which stays open while the registration
    // lives (the registration is dropped first, see the field order).
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

impl SerialLine {
    fn new(port: serialport::TTYPort) -> io::Result<Self> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let fd = port.as_raw_fd();
        let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?);
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
        Ok(SerialLine { watch: Some(register(fd)?), port })
    }

    fn watch(&mut self) -> io::Result<&AsyncFd<RawFd>> {
        if self.watch.is_none() {
            self.watch = Some(register(self.port.as_raw_fd())?);
        }
        Ok(self.watch.as_ref().expect("just set"))
    }
}

fn raw_io(r: nix::Result<usize>) -> io::Result<usize> {
    r.map_err(io::Error::from)
}

impl AsyncRead for SerialLine {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let watch = this.watch()?;
        loop {
            let mut guard = ready!(watch.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| raw_io(nix::unistd::read(fd.as_raw_fd(), unfilled))) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for SerialLine {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let watch = this.watch()?;
        loop {
            let mut guard = ready!(watch.poll_write_ready(cx))?;
            // SAFETY: the descriptor is open for as long as the guard's AsyncFd.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(guard.get_inner().as_raw_fd()) };
            match guard.try_io(|_| raw_io(nix::unistd::write(fd, data))) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Line for SerialLine {
    fn clear_input(&mut self) -> io::Result<()> {
        use serialport::SerialPort;
        self.port.clear(serialport::ClearBuffer::Input).map_err(io::Error::from)
    }

    fn park(&mut self) -> io::Result<()> {
        if let Some(w) = self.watch.take() {
            let _fd = w.into_inner(); // deregisters; the port keeps the descriptor open
        }
        Ok(())
    }

    fn unpark(&mut self) -> io::Result<()> {
        self.watch().map(|_| ())
    }
}

/// A TCP stream to a converter that carries RTU frames (`kind = "rtu-over-tcp"`): what is
/// waiting is read and counted by the transport before each request, there is no driver
/// buffer to drop besides.
impl Line for tokio::net::TcpStream {
    fn clear_input(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Line for tokio::io::DuplexStream {
    fn clear_input(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What one transaction produced, with what was seen on the line around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub result: Result<Reply, FrameError>,
    /// Bytes waiting before the request went out (a late reply to an earlier request): dropped.
    pub stale_bytes: usize,
    /// Noise (or another slave's frame) received before our reply.
    pub noise_bytes: usize,
}

/// The serial side of a bus: owns the port.
pub struct Transport<L> {
    line: L,
    char_time: Duration,
    gap: Duration,
    /// When the line last fell silent (end of the last frame sent or received).
    quiet_since: Instant,
    precise_gap: bool,
    buf: Vec<u8>,
    resync: Option<Resync>,
    /// Turns true when the daemon stops: no request is sent after that.
    stop: Option<tokio::sync::watch::Receiver<bool>>,
    /// A sequence that must not be cut is running: `stop` waits for its end.
    holding: bool,
}

/// The error of a transaction refused because the daemon is stopping (see [`Transport::with_stop`]).
pub fn stopping_error() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "stopping: no further request is sent")
}

/// Whether `e` is [`stopping_error`].
pub fn is_stopping(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted && e.to_string().starts_with("stopping:")
}

/// What a shared power-line bus needs after a request that got no proper reply: the servers'
/// Modbus library then takes the next frame it hears for the missing reply and drops it, which
/// may be a request for one of them. So: wait for late bytes, drop them, and broadcast a
/// harmless frame of a reply's length for them to drop instead (pmtr-server.md §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resync {
    pub pause: Duration,
    pub frame: Request,
}

impl<L: Line> Transport<L> {
    pub fn new(line: L, settings: &LineSettings, frame_gap: Option<Duration>) -> Self {
        Transport {
            line,
            char_time: settings.char_time(),
            gap: frame_gap.unwrap_or_else(|| settings.frame_gap()),
            quiet_since: Instant::now(),
            precise_gap: true,
            buf: Vec::with_capacity(256),
            resync: None,
            stop: None,
            holding: false,
        }
    }

    /// Sends no request once `stop` turns true: every [`Transport::transact`] from then on
    /// fails at once with [`stopping_error`]. So a stop takes effect at the next request
    /// boundary of whatever runs on the line (a poll's retries, a server duty's frames), after
    /// at most the one request in flight.
    pub fn with_stop(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }

    fn stopping(&self) -> bool {
        !self.holding && self.stop.as_ref().is_some_and(|s| *s.borrow())
    }

    /// While `on`, a stop waits: for the few frames of a sequence that would leave a device
    /// in a harmful state if cut (a PMTR server told to take its clock from registers not yet
    /// written).
    pub fn hold_stop(&mut self, on: bool) {
        self.holding = on;
    }

    /// Resynchronises the bus after every failed transaction (see [`Resync`]).
    pub fn with_resync(mut self, resync: Option<Resync>) -> Self {
        self.resync = resync;
        self
    }

    async fn resync_now(&mut self) -> io::Result<()> {
        let Some(r) = self.resync.clone() else { return Ok(()) };
        tokio::time::sleep(r.pause).await;
        let late = self.drain_input().await?;
        self.keep_gap().await;
        let frame = r.frame.encode();
        self.line.write_all(&frame).await?;
        self.line.flush().await?;
        self.quiet_since = Instant::now() + self.char_time * frame.len() as u32;
        tracing::debug!(late_bytes = late, "bus resynchronised after a failed request");
        Ok(())
    }

    /// Runs one transaction. `Err` means the port itself failed (unplugged, closed); every
    /// protocol failure is an `Ok(Outcome)` with an `Err` result.
    pub async fn transact(&mut self, req: &Request, timeout: Duration) -> io::Result<Outcome> {
        if self.stopping() {
            return Err(stopping_error());
        }
        if let Some(session) = self.line.session() {
            return session.transact(req, timeout).await;
        }
        self.keep_gap().await;
        let stale_bytes = self.drain_input().await?;
        let frame = req.encode();
        self.line.write_all(&frame).await?;
        self.line.flush().await?;
        let sent = Instant::now() + self.char_time * frame.len() as u32;
        if req.is_broadcast() {
            self.quiet_since = sent;
            return Ok(Outcome { result: Ok(Reply::Echo), stale_bytes, noise_bytes: 0 });
        }
        let deadline = sent + timeout;
        self.buf.clear();
        let mut scanner = ReplyScanner::new(req);
        let mut chunk = [0u8; 256];
        loop {
            match tokio::time::timeout_at(deadline, self.line.read(&mut chunk)).await {
                Ok(Ok(0)) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "port closed")),
                Ok(Ok(n)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if let Scan::Done { result, skipped } = scanner.feed(&self.buf) {
                        self.quiet_since = Instant::now();
                        return Ok(Outcome { result, stale_bytes, noise_bytes: skipped });
                    }
                    // Once the header tells the reply's length, sleep through the bytes still
                    // on the wire instead of waking for each one (a USB adapter or a pty hands
                    // them over one by one at low baud rates).
                    if let Some(rest) = remaining_time(req, &self.buf, self.char_time) {
                        let wake = (Instant::now() + rest).min(deadline);
                        self.line.park()?;
                        tokio::time::sleep_until(wake).await;
                        self.line.unpark()?;
                    }
                    if self.buf.len() > 4096 {
                        // A babbling line: give up on this transaction.
                        let n = self.buf.len();
                        self.quiet_since = Instant::now();
                        return Ok(Outcome {
                            result: Err(FrameError::Garbled { bytes: n }),
                            stale_bytes,
                            noise_bytes: 0,
                        });
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    self.quiet_since = Instant::now();
                    let result = Err(scanner.at_timeout(&self.buf));
                    self.resync_now().await?;
                    return Ok(Outcome { result, stale_bytes, noise_bytes: 0 });
                }
            }
        }
    }

    /// The silence kept before each request.
    pub fn gap(&self) -> Duration {
        self.gap
    }

    /// Waits until the line has been quiet for the inter-frame gap, as the next request would
    /// before it is sent: a sequence that times a request (a PMTR server's clock) waits here
    /// first, so that the request then leaves at once.
    pub async fn settle(&mut self) {
        self.keep_gap().await;
    }

    /// Waits until the line has been quiet for the inter-frame gap. tokio's timer counts whole
    /// milliseconds and rounds up, which would stretch a 3.6 ms gap to 5 ms and cost a
    /// saturated 9600-baud bus 4 % of its reads: what is left after the timer's part is slept
    /// on a blocking-pool thread, to the tens of microseconds. On a bus with spare time the gap
    /// has passed long before the next poll and nothing waits at all.
    async fn keep_gap(&mut self) {
        let quiet = self.quiet_since + self.gap;
        let now = Instant::now();
        if now >= quiet {
            return;
        }
        if !self.precise_gap {
            tokio::time::sleep_until(quiet).await;
            return;
        }
        let coarse = quiet - Duration::from_millis(1);
        if now < coarse {
            tokio::time::sleep_until(coarse).await;
        }
        let rest = quiet.saturating_duration_since(Instant::now());
        if !rest.is_zero() {
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
        }
    }

    /// Uses tokio's timer alone for the inter-frame gap: for tests on a paused clock.
    pub fn coarse_timer(mut self) -> Self {
        self.precise_gap = false;
        self
    }

    /// Reads and counts whatever is already waiting, without waiting for more, then asks the
    /// driver to drop the rest. (A zero timeout would wait for the next timer tick.)
    async fn drain_input(&mut self) -> io::Result<usize> {
        use std::task::Waker;
        let mut total = 0;
        let mut chunk = [0u8; 256];
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let mut rb = tokio::io::ReadBuf::new(&mut chunk);
            match std::pin::Pin::new(&mut self.line).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "port closed"))
                }
                Poll::Ready(Ok(())) => total += rb.filled().len(),
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        self.line.clear_input()?;
        Ok(total)
    }

    pub fn line_mut(&mut self) -> &mut L {
        &mut self.line
    }
}

/// How long the bytes of a reply still on the wire take, less a margin for the timer's
/// resolution. With only the address byte in, the shortest reply (an exception, or a 4-byte
/// echo) is assumed; once the header gives the length, the rest of it. `None` when the bytes
/// are not our reply or there is too little left to sleep for.
fn remaining_time(req: &Request, buf: &[u8], char_time: Duration) -> Option<Duration> {
    // tokio's timer fires up to a millisecond late; waking early costs a wake-up or two,
    // waking late costs bus time.
    const MARGIN: Duration = Duration::from_millis(1);
    if *buf.first()? != req.address {
        return None;
    }
    let shortest = if matches!(req.pdu, Pdu::EchoCommand { .. }) { 4 } else { 5 };
    let total = match buf.get(1) {
        None => shortest,
        Some(f) if f & 0x80 != 0 => 5,
        Some(_)
            if matches!(req.pdu, Pdu::ReadInput { .. } | Pdu::ReadHolding { .. } | Pdu::ReadCoils { .. }) =>
        {
            match buf.get(2) {
                Some(&bc) => 5 + bc as usize,
                None => shortest,
            }
        }
        Some(_) => req.pdu.reply_len(),
    };
    let rest = char_time * total.checked_sub(buf.len())? as u32;
    rest.checked_sub(MARGIN).filter(|d| *d >= Duration::from_millis(1))
}

/// A port that could not be opened with the settings asked for.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("serial port {port}: {source}")]
    Open { port: String, source: tokio_serial::Error },
    #[error(
        "serial port {port} refused {setting} (it opens with parity none): {source}. Pseudo-terminals and some \
         USB adapters cannot do parity; set `parity = \"none\"` on the bus if the meter allows it"
    )]
    Setting { port: String, setting: String, source: tokio_serial::Error },
    #[error(
        "serial port {port} does not do {setting}. Pseudo-terminals and some USB adapters cannot do parity; \
         set `parity = \"none\"` on the bus if the meter allows it"
    )]
    Ignored { port: String, setting: String },
}

/// Some ports (pseudo-terminals among them) accept settings they cannot do and drop them
/// silently: read the settings back and name the first one that did not stick.
fn refused_setting(s: &serialport::TTYPort, line: &LineSettings) -> Option<String> {
    use serialport::SerialPort;
    let want_parity = match line.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    if let Ok(p) = s.parity() {
        if p != want_parity {
            return Some(format!(
                "parity {} (the port reports {})",
                format!("{:?}", line.parity).to_lowercase(),
                format!("{p:?}").to_lowercase()
            ));
        }
    }
    if let Ok(b) = s.baud_rate() {
        if b != line.baud {
            return Some(format!("baud {} (the port reports {b})", line.baud));
        }
    }
    let bits = |d: tokio_serial::DataBits| match d {
        tokio_serial::DataBits::Five => 5,
        tokio_serial::DataBits::Six => 6,
        tokio_serial::DataBits::Seven => 7,
        tokio_serial::DataBits::Eight => 8,
    };
    if let Ok(d) = s.data_bits() {
        if bits(d) != line.data_bits {
            return Some(format!("{} data bits (the port reports {})", line.data_bits, bits(d)));
        }
    }
    if let Ok(st) = s.stop_bits() {
        let n = if st == tokio_serial::StopBits::Two { 2 } else { 1 };
        if n != line.stop_bits {
            return Some(format!("{} stop bits (the port reports {n})", line.stop_bits));
        }
    }
    None
}

/// Opens `port` with `line` settings, naming the refused setting when the port refuses one.
pub fn open_serial(port: &str, line: &LineSettings) -> Result<SerialLine, OpenError> {
    let builder = |parity: Parity| {
        tokio_serial::new(port, line.baud)
            .data_bits(match line.data_bits {
                7 => tokio_serial::DataBits::Seven,
                _ => tokio_serial::DataBits::Eight,
            })
            .parity(match parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            })
            .stop_bits(match line.stop_bits {
                2 => tokio_serial::StopBits::Two,
                _ => tokio_serial::StopBits::One,
            })
            .timeout(Duration::from_millis(10))
    };
    match builder(line.parity).open_native() {
        Ok(s) => match refused_setting(&s, line) {
            None => SerialLine::new(s).map_err(|e| OpenError::Open { port: port.into(), source: e.into() }),
            Some(setting) => Err(OpenError::Ignored { port: port.into(), setting }),
        },
        Err(source) if line.parity != Parity::None => match builder(Parity::None).open_native() {
            Ok(_) => Err(OpenError::Setting {
                port: port.into(),
                setting: format!("parity {:?}", line.parity).to_lowercase(),
                source,
            }),
            Err(_) => Err(OpenError::Open { port: port.into(), source }),
        },
        Err(source) => Err(OpenError::Open { port: port.into(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::crc::append_crc;
    use tokio::io::duplex;

    fn settings() -> LineSettings {
        LineSettings::DEFAULT
    }

    fn pzem_reply() -> Vec<u8> {
        let mut f = vec![1, 4, 20];
        for r in crate::meter::pzem::encode(230.0, 1.0, 230.0, 1.0, 50.0, 1.0, false) {
            f.extend_from_slice(&r.to_be_bytes());
        }
        append_crc(&mut f);
        f
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_in_pieces_is_assembled() {
        let (a, mut b) = duplex(1024);
        let mut t = Transport::new(a, &settings(), None).coarse_timer();
        let req = Request::read_input(1, 0, 10);
        let slave = tokio::spawn(async move {
            let mut got = [0u8; 8];
            b.read_exact(&mut got).await.unwrap();
            let reply = pzem_reply();
            for part in reply.chunks(7) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                b.write_all(part).await.unwrap();
            }
            b
        });
        let out = t.transact(&req, Duration::from_millis(300)).await.unwrap();
        assert!(matches!(out.result, Ok(Reply::Registers(ref r)) if r.len() == 10), "{out:?}");
        drop(slave.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_transport_told_to_stop_sends_no_further_request_unless_holding() {
        let (a, mut b) = duplex(1024);
        let (stop, rx) = tokio::sync::watch::channel(false);
        let mut t = Transport::new(a, &settings(), None).coarse_timer().with_stop(rx);
        let req = Request::read_input(1, 0, 10);
        let out = t.transact(&req, Duration::from_millis(300)).await.unwrap();
        assert_eq!(out.result, Err(FrameError::Timeout));
        stop.send(true).unwrap();
        let err = t.transact(&req, Duration::from_millis(300)).await.unwrap_err();
        assert!(is_stopping(&err), "{err}");
        t.hold_stop(true);
        assert!(t.transact(&req, Duration::from_millis(300)).await.is_ok(), "a held sequence goes on");
        t.hold_stop(false);
        assert!(t.transact(&req, Duration::from_millis(300)).await.is_err());
        drop(t);
        let mut sent = Vec::new();
        b.read_to_end(&mut sent).await.unwrap();
        assert_eq!(sent.len(), 16, "two requests on the wire: before the stop and while held");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_a_timeout_after_exactly_the_timeout() {
        let (a, _b) = duplex(1024);
        let mut t = Transport::new(a, &settings(), None).coarse_timer();
        let start = Instant::now();
        let out = t.transact(&Request::read_input(1, 0, 10), Duration::from_millis(300)).await.unwrap();
        assert_eq!(out.result, Err(FrameError::Timeout));
        let took = start.elapsed();
        // gap + 8 request characters + the timeout
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(320), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_reply_is_flushed_and_counted_before_the_next_request() {
        let (a, mut b) = duplex(1024);
        let mut t = Transport::new(a, &settings(), None).coarse_timer();
        let req = Request::read_input(1, 0, 10);
        let out = t.transact(&req, Duration::from_millis(100)).await.unwrap();
        assert_eq!(out.result, Err(FrameError::Timeout));
        // The reply arrives after the timeout: it must not be taken for the next reply.
        let mut first = [0u8; 8];
        b.read_exact(&mut first).await.unwrap();
        b.write_all(&pzem_reply()).await.unwrap();
        let slave = tokio::spawn(async move {
            let mut got = [0u8; 8];
            b.read_exact(&mut got).await.unwrap();
            b.write_all(&[0x01, 0x84, 0x02, 0xC2, 0xC1]).await.unwrap();
            b
        });
        let out = t.transact(&req, Duration::from_millis(100)).await.unwrap();
        assert_eq!(out.result, Err(FrameError::Exception(crate::modbus::Exception::IllegalDataAddress)));
        assert_eq!(out.stale_bytes, 25);
        drop(slave.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn the_frame_gap_is_kept_between_transactions() {
        let (a, mut b) = duplex(1024);
        let mut t = Transport::new(a, &settings(), None).coarse_timer();
        let req = Request::read_input(1, 0, 10);
        let slave = tokio::spawn(async move {
            let mut times = vec![];
            for _ in 0..2 {
                let mut got = [0u8; 8];
                b.read_exact(&mut got).await.unwrap();
                times.push(Instant::now());
                b.write_all(&pzem_reply()).await.unwrap();
            }
            times
        });
        t.transact(&req, Duration::from_millis(100)).await.unwrap();
        let replied = Instant::now();
        t.transact(&req, Duration::from_millis(100)).await.unwrap();
        let times = slave.await.unwrap();
        assert!(times[1] - replied >= Duration::from_micros(3645), "{:?}", times[1] - replied);
    }

    #[test]
    fn sleeps_only_through_bytes_known_to_be_on_the_wire() {
        let c = Duration::from_millis(1); // 1 ms a character, for round figures
        let read = Request::read_input(1, 0, 10);
        // Address only: at least an exception's 5 bytes are coming, 4 still on the wire.
        assert_eq!(remaining_time(&read, &[1], c), Some(Duration::from_millis(3)));
        // Header known: 25 bytes in all.
        assert_eq!(remaining_time(&read, &[1, 4, 20], c), Some(Duration::from_millis(21)));
        assert_eq!(remaining_time(&read, &[1, 0x84], c), Some(Duration::from_millis(2)));
        // Nearly done, someone else's bytes, or more than announced: read as they come.
        let mut nearly = vec![1, 4, 20];
        nearly.resize(24, 0);
        assert_eq!(remaining_time(&read, &nearly, c), None);
        assert_eq!(remaining_time(&read, &[7, 4, 20], c), None);
        assert_eq!(remaining_time(&read, &[1, 4, 0, 0, 0, 0, 0], c), None);
        let reset = Request { address: 1, pdu: Pdu::EchoCommand { function: 0x42 } };
        assert_eq!(remaining_time(&reset, &[1], c), Some(Duration::from_millis(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_port_is_an_io_error() {
        let (a, b) = duplex(1024);
        drop(b);
        let mut t = Transport::new(a, &settings(), None).coarse_timer();
        assert!(t.transact(&Request::read_input(1, 0, 10), Duration::from_millis(100)).await.is_err());
    }
}
