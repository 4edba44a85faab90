//! A bus over the network: one TCP connection to a converter (`kind = "rtu-over-tcp"`) or to a
//! Modbus TCP device or gateway (`kind = "tcp"`), that the port task ([`super::port::run`]) owns
//! like a serial port. The connection is opened, and
//! opened again when it is lost, with a back-off; while it is down its meters are searching
//! (a gap in the data, never a zero).

use super::port::{self, PortExit};
use super::BusShared;
use crate::backoff::Backoff;
use crate::sync::Locked;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The first wait before connecting again.
pub const FIRST_WAIT: Duration = Duration::from_secs(1);
/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that lived this long was a good one: the next loss starts the back-off afresh.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// When to connect again: 1 s after a failure, doubling up to the bus's `max_backoff`; a
/// connection that stayed up for [`STABLE_AFTER`] starts the series afresh. Pure: the clock is
/// passed in.
#[derive(Debug, Clone)]
pub struct Reconnect {
    backoff: Backoff,
    /// Failures in a row.
    failures: u32,
}

impl Reconnect {
    pub fn new(max: Duration) -> Self {
        Reconnect { backoff: Backoff::new(FIRST_WAIT, max.max(FIRST_WAIT)), failures: 0 }
    }

    /// A connection attempt failed, or a connection opened at `opened` was lost at `now`
    /// (`opened` is `None` for an attempt that did not connect): how long to wait.
    pub fn failed(&mut self, opened: Option<Instant>, now: Instant) -> Duration {
        if opened.is_some_and(|o| now.saturating_duration_since(o) >= STABLE_AFTER) {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.backoff.delay(self.failures)
    }
}

/// An open connection of either kind.
enum Connection {
    Rtu(tokio::net::TcpStream),
    Tcp(crate::modbus::tcp::ModbusTcp),
}

async fn connect(kind: crate::config::BusKind, host: &str) -> std::io::Result<Connection> {
    if kind == crate::config::BusKind::Tcp {
        return crate::modbus::tcp::ModbusTcp::connect(host, CONNECT_TIMEOUT).await.map(Connection::Tcp);
    }
    let stream = tokio::net::TcpStream::connect(host).await?;
    let _ = stream.set_nodelay(true);
    Ok(Connection::Rtu(stream))
}

/// Keeps one connection to the bus's host until shutdown.
pub async fn supervise(shared: Arc<BusShared>, mut shutdown: watch::Receiver<bool>) {
    let Some(host) = shared.bus.ports.first().cloned() else { return };
    let mut reconnect = Reconnect::new(shared.bus.max_backoff);
    let mut complained = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let attempt = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, connect(shared.bus.kind, &host)) => r,
            _ = shutdown.changed() => break,
        };
        let mut opened = None;
        match attempt {
            Ok(Ok(connection)) => {
                tracing::info!(bus = %shared.bus.name, host = %host, kind = shared.bus.kind.name(), "connected");
                complained = false;
                opened = Some(Instant::now());
                shared.ports.locked().insert(host.clone());
                let (name, s, stop) = (host.clone(), shared.clone(), shutdown.clone());
                let task = match connection {
                    Connection::Rtu(stream) => tokio::spawn(port::run(name, stream, s, stop)),
                    Connection::Tcp(session) => tokio::spawn(port::run(name, session, s, stop)),
                };
                match task.await {
                    Ok(PortExit::Shutdown) => break,
                    Ok(PortExit::Failed(e)) => {
                        tracing::warn!(bus = %shared.bus.name, host = %host, error = %e, "connection lost; connecting again")
                    }
                    Err(e) => {
                        tracing::error!(bus = %shared.bus.name, host = %host, error = %e, "port task ended abnormally; connecting again");
                        shared.port_ended(&host, true);
                    }
                }
            }
            Ok(Err(e)) => {
                if !complained {
                    tracing::warn!(bus = %shared.bus.name, host = %host, error = %e, "cannot connect; trying again with back-off");
                }
                complained = true;
            }
            Err(_) => {
                if !complained {
                    tracing::warn!(bus = %shared.bus.name, host = %host, timeout = ?CONNECT_TIMEOUT, "no answer to the connection; trying again with back-off");
                }
                complained = true;
            }
        }
        let wait = reconnect.failed(opened, Instant::now());
        tracing::debug!(bus = %shared.bus.name, host = %host, wait = ?wait, "next connection attempt");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_max_backoff_and_a_stable_connection_starts_it_afresh() {
        let t0 = Instant::now();
        let mut r = Reconnect::new(Duration::from_secs(10));
        let waits: Vec<u64> = (0..6).map(|_| r.failed(None, t0).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        // A connection that dropped at once does not reset the series.
        assert_eq!(r.failed(Some(t0), t0 + Duration::from_secs(1)), Duration::from_secs(10));
        // One that lived long enough does.
        assert_eq!(r.failed(Some(t0), t0 + STABLE_AFTER), FIRST_WAIT);
        assert_eq!(r.failed(None, t0), Duration::from_secs(2));
    }

    #[test]
    fn a_max_backoff_under_the_first_wait_is_the_first_wait() {
        let mut r = Reconnect::new(Duration::from_millis(100));
        assert_eq!(r.failed(None, Instant::now()), FIRST_WAIT);
        assert_eq!(r.failed(None, Instant::now()), FIRST_WAIT);
    }
}
