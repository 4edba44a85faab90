//! Talking to systemd: `sd_notify` (READY, RELOADING, STOPPING, STATUS, WATCHDOG) over the
//! datagram socket named by `$NOTIFY_SOCKET`, and the watchdog interval from `$WATCHDOG_USEC`.
//! Outside systemd both are absent and every call here does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// The notification socket, when systemd gave one (`Type=notify`).
pub struct Notifier {
    socket: Option<(UnixDatagram, Target)>,
}

enum Target {
    Path(std::path::PathBuf),
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket); a notifier that
    /// sends nothing without it.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let name = name.to_string_lossy().into_owned();
            let target = match name.strip_prefix('@') {
                #[cfg(any(target_os = "linux", target_os = "android"))]
                Some(abs) => Target::Abstract(abs.as_bytes().to_vec()),
                #[cfg(not(any(target_os = "linux", target_os = "android")))]
                Some(_) => return None,
                None if name.starts_with('/') => Target::Path(name.into()),
                None => {
                    tracing::warn!(socket = %name, "NOTIFY_SOCKET is neither a path nor @name: not telling systemd");
                    return None;
                }
            };
            match UnixDatagram::unbound() {
                Ok(s) => Some((s, target)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create a socket to notify systemd");
                    None
                }
            }
        });
        Notifier { socket }
    }

    /// To the socket at `path` (tests).
    pub fn to_path(path: &std::path::Path) -> std::io::Result<Notifier> {
        Ok(Notifier { socket: Some((UnixDatagram::unbound()?, Target::Path(path.to_path_buf()))) })
    }

    /// Sends nothing, ever (tests, `pmtr demo`).
    pub fn none() -> Notifier {
        Notifier { socket: None }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `state` (newline-separated `KEY=value` lines). Failures are logged once at debug:
    /// systemd gone away is no reason to stop metering.
    pub fn notify(&self, state: &str) {
        let Some((socket, target)) = &self.socket else { return };
        let sent = match target {
            Target::Path(p) => socket.send_to(state.as_bytes(), p),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
            }
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "cannot notify systemd");
        }
    }

    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    /// `RELOADING=1` with the monotonic time systemd ≥ 253 asks for (older ones ignore it).
    pub fn reloading(&self) {
        let usec = monotonic_usec();
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the configuration"));
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=stopping: writing what is in flight");
    }

    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={status}"));
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    /// Tells systemd the watchdog is hungry now (`WATCHDOG=trigger`): pmtr found itself stuck.
    pub fn watchdog_trigger(&self) {
        self.notify("WATCHDOG=trigger");
    }
}

/// The watchdog interval systemd expects pings within (`WatchdogSec=`), when it is meant for
/// this process (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0)
}

/// Under systemd (journald adds the time, and reads a `<N>` priority prefix).
pub fn under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { socket: Some((UnixDatagram::unbound().unwrap(), Target::Path(path))) };
        assert!(n.enabled());
        n.ready("3 meters");
        n.watchdog();
        let mut buf = [0u8; 256];
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1\nSTATUS=3 meters");
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"WATCHDOG=1");
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("pmtr-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier {
            socket: Some((UnixDatagram::unbound().unwrap(), Target::Abstract(name.into_bytes()))),
        };
        n.stopping();
        let mut buf = [0u8; 256];
        let k = rx.recv(&mut buf).unwrap();
        assert!(buf[..k].starts_with(b"STOPPING=1\n"), "{:?}", String::from_utf8_lossy(&buf[..k]));
    }

    #[test]
    fn no_socket_sends_nothing() {
        let n = Notifier::none();
        assert!(!n.enabled());
        n.ready("x");
    }
}
