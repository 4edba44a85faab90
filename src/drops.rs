//! Records and readings dropped on a full queue: counted, and logged at most once a minute
//! with the number since the last line, so that a stuck consumer is seen without a log flood.

use crate::sync::Locked;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How often a drop is logged at most.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// The drops of one queue.
#[derive(Debug)]
pub struct Drops {
    /// What is dropped and where, for the log line: "readings from bus b1 to the triggers".
    what: String,
    total: AtomicU64,
    /// When the last line was logged, and the drops since.
    log: Mutex<(Option<Instant>, u64)>,
}

impl Drops {
    pub fn new(what: impl Into<String>) -> Self {
        Drops { what: what.into(), total: AtomicU64::new(0), log: Mutex::new((None, 0)) }
    }

    /// Counts one drop; logs a warning when none was logged in the last [`LOG_EVERY`].
    /// Returns whether it logged.
    pub fn count(&self) -> bool {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let mut log = self.log.locked();
        log.1 += 1;
        let now = Instant::now();
        if log.0.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return false;
        }
        tracing::warn!(
            dropped = log.1,
            total,
            "{} dropped: the queue was full (its consumer is stuck or \
            too slow); {} since the last such line",
            self.what,
            log.1
        );
        *log = (Some(now), 0);
        true
    }

    /// Drops since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drops_are_counted_each_and_logged_once_a_minute() {
        let d = Drops::new("readings");
        let logged: usize = (0..1000).map(|_| d.count()).filter(|l| *l).count();
        assert_eq!((d.total(), logged), (1000, 1), "every drop counted, one line");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!d.count(), "not again within the minute");
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(d.count(), "again after a minute");
        assert_eq!(d.total(), 1002);
    }
}
