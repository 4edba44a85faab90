//! Is the bus engine making progress? Each port task holds a [`Beat`]: busy while it talks to
//! its meters, idle while it waits for the next one to be due. A task busy for longer than
//! its bound is stuck (a bug: every transaction has a timeout), and the systemd watchdog is no
//! longer fed, so systemd restarts pmtr. Pure bookkeeping: the clock is tokio's, so the tests
//! run on a paused one.

use crate::sync::Locked;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Default)]
pub struct Liveness {
    tasks: Mutex<Vec<Entry>>,
    next_id: Mutex<u64>,
}

struct Entry {
    id: u64,
    name: String,
    limit: Duration,
    busy_since: Option<Instant>,
}

/// A task that has been busy for too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    pub task: String,
    pub busy_for: Duration,
    pub limit: Duration,
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} has been busy for {} s (at most {} s expected)",
            self.task,
            self.busy_for.as_secs(),
            self.limit.as_secs()
        )
    }
}

impl Liveness {
    /// Registers a task, idle, that may be busy for at most `limit` at a stretch.
    pub fn register(self: &Arc<Self>, name: impl Into<String>, limit: Duration) -> Beat {
        let id = {
            let mut n = self.next_id.locked();
            *n += 1;
            *n
        };
        self.lock().push(Entry { id, name: name.into(), limit, busy_since: None });
        Beat { liveness: Arc::clone(self), id }
    }

    /// The task busy the longest past its limit, if any.
    pub fn check(&self, now: Instant) -> Result<(), Stuck> {
        let tasks = self.lock();
        let worst = tasks
            .iter()
            .filter_map(|e| {
                let busy_for = now.saturating_duration_since(e.busy_since?);
                (busy_for > e.limit).then(|| Stuck { task: e.name.clone(), busy_for, limit: e.limit })
            })
            .max_by_key(|s| s.busy_for - s.limit);
        worst.map_or(Ok(()), Err)
    }

    /// How many tasks are registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.tasks.locked()
    }

    fn set(&self, id: u64, busy_since: Option<Instant>) {
        if let Some(e) = self.lock().iter_mut().find(|e| e.id == id) {
            e.busy_since = busy_since;
        }
    }
}

/// A task's handle; dropping it (the task ended) unregisters the task.
pub struct Beat {
    liveness: Arc<Liveness>,
    id: u64,
}

impl Beat {
    /// The task starts work that must end within its limit.
    pub fn busy(&self) {
        self.liveness.set(self.id, Some(Instant::now()));
    }

    /// The task waits (for a due time, a signal): it cannot be stuck while it does.
    pub fn idle(&self) {
        self.liveness.set(self.id, None);
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        self.liveness.lock().retain(|e| e.id != self.id);
    }
}

/// How long a port task may be busy at a stretch: one duty (a slot push waits up to twice
/// `max(4 × timeout, 10 s)` for the server's commit) and one poll (every attempt timing out,
/// with its resynchronisation pause), with room to spare.
pub fn port_limit(timeout: Duration, retries: u32) -> Duration {
    Duration::from_secs(60) + timeout * 30 + timeout.max(Duration::from_secs(1)) * 4 * (retries + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_busy_past_its_limit_is_stuck_and_an_idle_one_never_is() {
        let l = Arc::new(Liveness::default());
        let a = l.register("bus house port /dev/ttyUSB0", Duration::from_secs(60));
        let b = l.register("bus plc port /dev/ttyUSB1", Duration::from_secs(200));
        assert_eq!(l.len(), 2);
        a.busy();
        b.idle();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(l.check(Instant::now()), Ok(()));
        tokio::time::advance(Duration::from_secs(2)).await;
        let stuck = l.check(Instant::now()).unwrap_err();
        assert_eq!(stuck.task, "bus house port /dev/ttyUSB0");
        assert_eq!(stuck.busy_for, Duration::from_secs(61));
        assert_eq!(
            stuck.to_string(),
            "bus house port /dev/ttyUSB0 has been busy for 61 s (at most 60 s expected)"
        );
        // Progress (idle again, or a new stretch of work) clears it.
        a.idle();
        assert_eq!(l.check(Instant::now()), Ok(()));
        a.busy();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(l.check(Instant::now()), Ok(()));
        // Idle for an hour is fine: waiting is not hanging.
        a.idle();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(l.check(Instant::now()), Ok(()));
        // A task that ended (an unplugged adapter) is forgotten, even mid-work.
        b.busy();
        drop(b);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(l.check(Instant::now()), Ok(()));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn the_port_limit_covers_a_slot_push_and_a_failing_poll() {
        // A PZEM bus: 300 ms timeout, 2 retries.
        assert_eq!(port_limit(Duration::from_millis(300), 2), Duration::from_secs(81));
        // A power-line bus: 5 s timeout; a slot push may wait 2 × 20 s for its commit.
        let plc = port_limit(Duration::from_secs(5), 2);
        assert_eq!(plc, Duration::from_secs(270));
        assert!(plc > Duration::from_secs(2 * 20 + 5 * 5 * 3));
    }
}
