//! Whether the gateway's wall clock can be believed. A Raspberry Pi has no real-time clock: it
//! boots on the time saved at its last shutdown (or 1970) until NTP sets it, so until then
//! time-of-day trigger variables and the time sent to PMTR servers would be wrong.
//!
//! The kernel knows: `adjtimex(2)` reports the clock unsynchronised (`TIME_ERROR`,
//! `STA_UNSYNC`) until an NTP client (systemd-timesyncd, chrony, ntpd) has disciplined it.
//! [`WallClock`] believes the clock once the kernel says it is synchronised, or once
//! `gateway.clock_sync_wait` has passed since the start without it (a Pi with no network, or
//! with a real-time clock and no NTP): then it warns and uses the clock as it is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Where the word "synchronised" comes from: the kernel, or a fake in tests.
pub trait SyncSource: Send + Sync {
    /// Whether the clock is synchronised now.
    fn synchronised(&self) -> bool;
}

/// The kernel's NTP state, read with `adjtimex(2)` (read only: `modes = 0`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Kernel;

/// Once the kernel said so in this process, the clock stays believed: it only drifts from
/// there (the kernel turns unsynchronised again after a long time without NTP, which must
/// not make a night-time trigger unknown on a gateway that lost its network).
static KERNEL_SYNCED: AtomicBool = AtomicBool::new(false);

impl SyncSource for Kernel {
    fn synchronised(&self) -> bool {
        if KERNEL_SYNCED.load(Ordering::Relaxed) {
            return true;
        }
        let synced = kernel_says_synchronised();
        if synced {
            KERNEL_SYNCED.store(true, Ordering::Relaxed);
        }
        synced
    }
}

#[cfg(target_os = "linux")]
fn kernel_says_synchronised() -> bool {
    use nix::libc;
    // SAFETY: `timex` is a plain C struct for which all zeroes is a valid value, and with
    // `modes = 0` adjtimex only reads the kernel's state into it.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    state >= 0 && state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0
}

#[cfg(not(target_os = "linux"))]
fn kernel_says_synchronised() -> bool {
    true
}

/// A source that says what a test tells it.
#[derive(Debug, Default)]
pub struct FakeSource(AtomicBool);

impl FakeSource {
    pub fn new(synchronised: bool) -> Arc<FakeSource> {
        Arc::new(FakeSource(AtomicBool::new(synchronised)))
    }

    pub fn set(&self, synchronised: bool) {
        self.0.store(synchronised, Ordering::Relaxed);
    }
}

impl SyncSource for FakeSource {
    fn synchronised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Whether the wall clock may be used: see the module docs.
pub struct WallClock {
    source: Arc<dyn SyncSource>,
    /// Past this, the clock is believed anyway.
    deadline: Instant,
    wait: Duration,
    believed: AtomicBool,
}

impl std::fmt::Debug for WallClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WallClock").field("wait", &self.wait).field("believed", &self.believed).finish()
    }
}

impl WallClock {
    /// Believes `source`, or the clock as it is once `wait` has passed from now.
    pub fn new(source: Arc<dyn SyncSource>, wait: Duration) -> Arc<WallClock> {
        let deadline =
            Instant::now().checked_add(wait).unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        Arc::new(WallClock { source, deadline, wait, believed: AtomicBool::new(false) })
    }

    /// The kernel's word, waiting at most `wait` (`gateway.clock_sync_wait`).
    pub fn system(wait: Duration) -> Arc<WallClock> {
        WallClock::new(Arc::new(Kernel), wait)
    }

    /// Whether the wall clock can be used now. Once true, true for good.
    pub fn is_believed(&self) -> bool {
        if self.believed.load(Ordering::Relaxed) {
            return true;
        }
        let synced = self.source.synchronised();
        if !synced && Instant::now() < self.deadline {
            return false;
        }
        if !self.believed.swap(true, Ordering::Relaxed) {
            if synced {
                tracing::info!(
                    "the system clock is synchronised: time-of-day triggers and PMTR server clocks use it"
                );
            } else {
                tracing::warn!(waited = ?self.wait,
                    "the kernel does not say the system clock is synchronised (no NTP?); using it as it is \
                     for time-of-day triggers and PMTR server clocks");
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_is_believed_once_synchronised_or_after_the_wait() {
        let source = FakeSource::new(false);
        let clock = WallClock::new(source.clone(), Duration::from_secs(600));
        assert!(!clock.is_believed());
        tokio::time::advance(Duration::from_secs(599)).await;
        assert!(!clock.is_believed(), "not yet: the wait is not over");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(clock.is_believed(), "the wait is over: used as it is");

        let clock = WallClock::new(source.clone(), Duration::from_secs(600));
        assert!(!clock.is_believed());
        source.set(true);
        assert!(clock.is_believed(), "synchronised: at once");
        source.set(false);
        assert!(clock.is_believed(), "once believed, for good");

        let clock = WallClock::new(FakeSource::new(false), Duration::ZERO);
        assert!(clock.is_believed(), "a wait of 0 s trusts the clock at once");
    }
}
