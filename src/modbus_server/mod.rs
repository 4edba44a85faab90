//! `[modbus_server]`: a Modbus TCP server, on tokio-modbus's, that answers other masters (Home
//! Assistant, evcc, a solar controller) for pmtr's meters, so that the bus keeps one master.
//!
//! Every meter is a unit (its address, or `unit = N`). A read is answered from the registers
//! of the meter's last good poll, as the meter presented them, when they hold it and are no
//! older than `max_age`; otherwise it is queued for the port task that owns the meter, which
//! runs it between its own polls (one request on the wire at a time, its polls first). What to
//! answer is decided in [`decide`]; this module only moves requests and answers. The server
//! never stands in front of a poll or a relay: it reads the status board and hands requests to
//! the port tasks through bounded queues.

pub use crate::config::cidr;
pub mod decide;

pub use cidr::Cidr;

use crate::bus::status::StatusBoard;
use crate::bus::{BusShared, NotQueued};
use crate::config::ModbusServerSettings;
use crate::modbus::{Exception, FrameError, Pdu, Reply};
use crate::sync::Locked;
use decide::{Answer, MeterView};
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_modbus::{ExceptionCode, Request as MbRequest, Response as MbResponse, SlaveRequest};

/// The server's counters, for the status API and `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    connections: AtomicU64,
    open: AtomicUsize,
    refused_not_allowed: AtomicU64,
    refused_over_limit: AtomicU64,
    requests: AtomicU64,
    from_cache: AtomicU64,
    passed_through: AtomicU64,
    writes: AtomicU64,
    exceptions: AtomicU64,
    busy: AtomicU64,
    silent: AtomicU64,
}

/// A copy of [`Counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ServerCounters {
    pub listen: String,
    pub connections: u64,
    pub open_connections: u64,
    pub refused_not_allowed: u64,
    pub refused_over_limit: u64,
    pub requests: u64,
    pub from_cache: u64,
    pub passed_through: u64,
    pub writes: u64,
    pub exceptions: u64,
    /// Of the exceptions: 0x06, a queue full or the request rate over its limit.
    pub busy: u64,
    /// Of the exceptions: 0x0B, the meter silent.
    pub silent: u64,
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The running server's shared parts.
pub struct ModbusServer {
    settings: ModbusServerSettings,
    units: HashMap<u8, (Arc<BusShared>, usize)>,
    status: Arc<StatusBoard>,
    pub counters: Arc<Counters>,
    listen: SocketAddr,
}

impl ModbusServer {
    /// The counters now.
    pub fn snapshot(counters: &Counters, listen: SocketAddr) -> ServerCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerCounters {
            listen: listen.to_string(),
            connections: get(&counters.connections),
            open_connections: counters.open.load(Ordering::Relaxed) as u64,
            refused_not_allowed: get(&counters.refused_not_allowed),
            refused_over_limit: get(&counters.refused_over_limit),
            requests: get(&counters.requests),
            from_cache: get(&counters.from_cache),
            passed_through: get(&counters.passed_through),
            writes: get(&counters.writes),
            exceptions: get(&counters.exceptions),
            busy: get(&counters.busy),
            silent: get(&counters.silent),
        }
    }

    fn allowed(&self, peer: SocketAddr) -> bool {
        let ip = peer.ip();
        if self.settings.allow.is_empty() {
            let ip = match ip {
                std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
                v4 => v4,
            };
            return ip.is_loopback();
        }
        self.settings.allow.iter().any(|c| c.contains(ip))
    }

    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<Connection> {
        if !self.allowed(peer) {
            add(&self.counters.refused_not_allowed);
            tracing::warn!(client = %peer, "Modbus TCP client refused: not in `allow`");
            return None;
        }
        let open = self.counters.open.fetch_add(1, Ordering::Relaxed);
        if open >= self.settings.max_connections {
            self.counters.open.fetch_sub(1, Ordering::Relaxed);
            add(&self.counters.refused_over_limit);
            tracing::warn!(client = %peer, max = self.settings.max_connections, "Modbus TCP client refused: too many connections");
            return None;
        }
        add(&self.counters.connections);
        tracing::debug!(client = %peer, "Modbus TCP client connected");
        Some(Connection { server: self.clone(), peer, window: Mutex::new((Instant::now(), 0)) })
    }

    /// The answer to one request of `peer`.
    async fn answer(
        self: Arc<Self>,
        peer: SocketAddr,
        req: SlaveRequest<'static>,
    ) -> Result<Option<MbResponse>, ExceptionCode> {
        let fail = |e: Exception| {
            add(&self.counters.exceptions);
            match e {
                decide::BUSY => add(&self.counters.busy),
                decide::TARGET_FAILED => add(&self.counters.silent),
                _ => {}
            }
            Err(ExceptionCode::new(e.code()))
        };
        let Some((bus, index)) = self.units.get(&req.slave).cloned() else {
            return fail(decide::PATH_UNAVAILABLE);
        };
        let Some(pdu) = to_pdu(&req.request) else { return fail(decide::ILLEGAL_FUNCTION) };
        let meter = &bus.meters[index];
        let now = Instant::now();
        let answer = self
            .status
            .update(&meter.name, |s| {
                let view = MeterView {
                    address: meter.address,
                    answering: s.state == crate::bus::status::MeterState::Ok,
                    raw: s.raw.as_deref(),
                    writable: &meter.writable,
                    max_age: self.settings.max_age,
                    now,
                };
                decide::decide(&pdu, &view)
            })
            .unwrap_or(Answer::Exception(decide::TARGET_FAILED));
        let request = match answer {
            Answer::Cached(words) => {
                add(&self.counters.from_cache);
                return Ok(Some(registers(&pdu, words)));
            }
            Answer::Exception(code) => return fail(code),
            Answer::PassThrough(request) => request,
        };
        let rx = match bus.pass_through(index, request) {
            Ok(rx) => rx,
            Err(NotQueued::Busy) => return fail(decide::BUSY),
            Err(NotQueued::NoPort) => return fail(decide::TARGET_FAILED),
        };
        // The requests ahead in the queue, this one, and the polls between them.
        let wait = bus.bus.timeout * (2 * bus.queue as u32 + 2) + Duration::from_secs(2);
        let result = match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return fail(decide::TARGET_FAILED), // the port task ended
            Err(_) => return fail(decide::BUSY),
        };
        add(&self.counters.passed_through);
        match result {
            Ok(Reply::Registers(words)) => Ok(Some(registers(&pdu, words))),
            Ok(Reply::Echo) => {
                add(&self.counters.writes);
                match &pdu {
                    Pdu::WriteSingle { register, value } => {
                        tracing::info!(client = %peer, meter = %meter.name, register, value, "Modbus TCP write passed to the meter");
                        Ok(Some(MbResponse::WriteSingleRegister(*register, *value)))
                    }
                    Pdu::WriteRegisters { start, values } => {
                        tracing::info!(client = %peer, meter = %meter.name, start, ?values, "Modbus TCP write passed to the meter");
                        Ok(Some(MbResponse::WriteMultipleRegisters(*start, values.len() as u16)))
                    }
                    _ => fail(decide::TARGET_FAILED),
                }
            }
            Ok(Reply::Bits(_)) => fail(decide::TARGET_FAILED),
            Err(FrameError::Exception(code)) => fail(code),
            Err(_) => fail(decide::TARGET_FAILED),
        }
    }
}

fn registers(pdu: &Pdu, words: Vec<u16>) -> MbResponse {
    match pdu {
        Pdu::ReadHolding { .. } => MbResponse::ReadHoldingRegisters(words),
        _ => MbResponse::ReadInputRegisters(words),
    }
}

/// The requests the server takes: register reads and writes.
fn to_pdu(r: &MbRequest<'_>) -> Option<Pdu> {
    Some(match r {
        MbRequest::ReadHoldingRegisters(start, count) => Pdu::ReadHolding { start: *start, count: *count },
        MbRequest::ReadInputRegisters(start, count) => Pdu::ReadInput { start: *start, count: *count },
        MbRequest::WriteSingleRegister(register, value) => {
            Pdu::WriteSingle { register: *register, value: *value }
        }
        MbRequest::WriteMultipleRegisters(start, values) => {
            Pdu::WriteRegisters { start: *start, values: values.to_vec() }
        }
        _ => return None,
    })
}

/// One client connection (tokio-modbus's service): its own request-rate window.
struct Connection {
    server: Arc<ModbusServer>,
    peer: SocketAddr,
    /// The start of the current second and the requests in it.
    window: Mutex<(Instant, u32)>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.server.counters.open.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(client = %self.peer, "Modbus TCP client gone");
    }
}

impl Connection {
    fn over_rate(&self) -> bool {
        let now = Instant::now();
        let mut w = self.window.locked();
        if now.saturating_duration_since(w.0) >= Duration::from_secs(1) {
            *w = (now, 0);
        }
        w.1 += 1;
        w.1 > self.server.settings.requests_per_second
    }
}

type Answering = Pin<Box<dyn Future<Output = Result<Option<MbResponse>, ExceptionCode>> + Send>>;

impl tokio_modbus::server::Service for Connection {
    type Request = SlaveRequest<'static>;
    type Response = Option<MbResponse>;
    type Exception = ExceptionCode;
    type Future = Answering;

    fn call(&self, req: Self::Request) -> Self::Future {
        let server = self.server.clone();
        add(&server.counters.requests);
        if self.over_rate() {
            add(&server.counters.exceptions);
            add(&server.counters.busy);
            return Box::pin(std::future::ready(Err(ExceptionCode::new(decide::BUSY.code()))));
        }
        Box::pin(server.answer(self.peer, req))
    }
}

impl ModbusServer {
    /// Binds the listener. Every meter of `buses` is a unit.
    pub async fn bind(
        settings: &ModbusServerSettings,
        buses: &[Arc<BusShared>],
        status: Arc<StatusBoard>,
    ) -> std::io::Result<(Arc<ModbusServer>, tokio::net::TcpListener)> {
        let listener = tokio::net::TcpListener::bind(settings.listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("Modbus TCP server: cannot listen on {}: {e}", settings.listen),
            )
        })?;
        let mut units = HashMap::new();
        for bus in buses {
            for (i, m) in bus.meters.iter().enumerate() {
                units.insert(m.unit_id(), (bus.clone(), i));
            }
        }
        let listen = listener.local_addr()?;
        let server = Arc::new(ModbusServer {
            settings: settings.clone(),
            units,
            status,
            counters: Arc::new(Counters::default()),
            listen,
        });
        Ok((server, listener))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Serves until `stop` turns true; open connections are closed then.
    pub async fn run(self: Arc<Self>, listener: tokio::net::TcpListener, mut stop: watch::Receiver<bool>) {
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let me = self.clone();
        let on_connected = move |stream: tokio::net::TcpStream, peer: SocketAddr| {
            let admitted = me.admit(peer);
            let _ = stream.set_nodelay(true);
            std::future::ready(Ok(admitted.map(|c| (c, stream))))
        };
        let on_error =
            |e: std::io::Error| tracing::debug!(error = %e, "Modbus TCP connection ended with an error");
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            r = server.serve(&on_connected, on_error) => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "Modbus TCP server stopped");
                }
            }
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}
