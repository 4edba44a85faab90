//! A GPIO with no hardware, for tests and the demo: it records every claim and write, keeps the
//! level of each pin, and can append one line per operation to a log file so that a test
//! running the `pmtr` binary sees the switching:
//!
//! ```text
//! 2026-11-21T10:00:00.123Z pin 17 high claim
//! 2026-11-21T10:00:04.500Z pin 17 low write
//! ```
//!
//! [`FakeGpio`] is the [`Gpio`] handed to the relay bank; [`FakeBoard`] is a cloneable view of
//! the same pins for the test that watches them.

use super::{Gpio, Pin, RelayError};
use crate::sync::Locked;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// What happened to a pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeOp {
    /// Claimed as an output at this level.
    Claim,
    /// Written while claimed.
    Write,
}

impl FakeOp {
    pub fn as_str(self) -> &'static str {
        match self {
            FakeOp::Claim => "claim",
            FakeOp::Write => "write",
        }
    }
}

/// One recorded claim or write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeEvent {
    /// 1, 2, 3… in the order the board saw them.
    pub seq: u64,
    pub pin: u8,
    pub high: bool,
    pub op: FakeOp,
    pub time: DateTime<Utc>,
}

impl FakeEvent {
    /// The event as a line of the log file (no newline).
    pub fn log_line(&self) -> String {
        format!(
            "{} pin {} {} {}",
            self.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            self.pin,
            if self.high { "high" } else { "low" },
            self.op.as_str()
        )
    }

    /// Reads a line of the log file back: `(pin, high, op)`.
    pub fn parse_log_line(line: &str) -> Option<(u8, bool, FakeOp)> {
        let mut words = line.split_whitespace();
        let _time = words.next()?;
        if words.next()? != "pin" {
            return None;
        }
        let pin = words.next()?.parse().ok()?;
        let high = match words.next()? {
            "high" => true,
            "low" => false,
            _ => return None,
        };
        let op = match words.next()? {
            "claim" => FakeOp::Claim,
            "write" => FakeOp::Write,
            _ => return None,
        };
        Some((pin, high, op))
    }
}

#[derive(Default)]
struct BoardState {
    events: Vec<FakeEvent>,
    levels: HashMap<u8, bool>,
    claimed: HashSet<u8>,
    failing: HashSet<u8>,
    log: Option<(PathBuf, File)>,
}

struct Shared {
    state: Mutex<BoardState>,
    /// The sequence number of the latest event, for waiters.
    seq: watch::Sender<u64>,
}

/// A cloneable handle on the fake pins: what was done to them, and their levels now.
#[derive(Clone)]
pub struct FakeBoard {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeBoard").field("levels", &self.lock().levels).finish()
    }
}

impl Default for FakeBoard {
    fn default() -> Self {
        FakeBoard::new()
    }
}

impl FakeBoard {
    /// A board with every pin unclaimed and no log file.
    pub fn new() -> FakeBoard {
        FakeBoard {
            shared: Arc::new(Shared { state: Mutex::new(BoardState::default()), seq: watch::channel(0).0 }),
        }
    }

    /// A board that also appends one line per claim and write to `path` (its folder is created
    /// when missing).
    pub fn with_log(path: &Path) -> std::io::Result<FakeBoard> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let board = FakeBoard::new();
        board.lock().log = Some((path.to_path_buf(), file));
        Ok(board)
    }

    /// The [`Gpio`] that drives this board's pins.
    pub fn gpio(&self) -> FakeGpio {
        FakeGpio { board: self.clone() }
    }

    /// Every claim and write so far, oldest first.
    pub fn events(&self) -> Vec<FakeEvent> {
        self.lock().events.clone()
    }

    /// The events of one pin.
    pub fn events_of(&self, pin: u8) -> Vec<FakeEvent> {
        self.lock().events.iter().filter(|e| e.pin == pin).cloned().collect()
    }

    /// The pin's level now (true: high); None if it was never claimed.
    pub fn level(&self, pin: u8) -> Option<bool> {
        self.lock().levels.get(&pin).copied()
    }

    /// Whether a live [`Pin`] holds it.
    pub fn is_claimed(&self, pin: u8) -> bool {
        self.lock().claimed.contains(&pin)
    }

    /// Makes claims and writes of `pin` fail (true) or work again (false), as a pin whose
    /// driver went away would.
    pub fn set_failing(&self, pin: u8, failing: bool) {
        let mut s = self.lock();
        if failing {
            s.failing.insert(pin);
        } else {
            s.failing.remove(&pin);
        }
    }

    /// Waits until `pin` is at `high` (true) or low, at most `timeout`. Returns the level seen
    /// last (None: never claimed) when the time is up.
    pub async fn wait_level(&self, pin: u8, high: bool, timeout: Duration) -> Result<(), Option<bool>> {
        let mut seq = self.shared.seq.subscribe();
        let reached = tokio::time::timeout(timeout, async {
            loop {
                if self.level(pin) == Some(high) {
                    return;
                }
                if seq.changed().await.is_err() {
                    // The board owns the sender: it cannot go while `self` lives.
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        reached.map_err(|_| self.level(pin))
    }

    fn lock(&self) -> MutexGuard<'_, BoardState> {
        // A test that panicked while holding the lock leaves the state as consistent as any
        // other moment: keep going.
        self.shared.state.locked()
    }

    fn record(&self, pin: u8, high: bool, op: FakeOp) -> Result<(), RelayError> {
        let mut s = self.lock();
        if s.failing.contains(&pin) {
            return Err(RelayError::Pin {
                pin,
                message: format!("fake failure: the test made this pin fail its {}", op.as_str()),
            });
        }
        match op {
            FakeOp::Claim if !s.claimed.insert(pin) => {
                return Err(RelayError::Pin {
                    pin,
                    message: "already claimed: two relays on one pin?".to_string(),
                })
            }
            FakeOp::Write if !s.claimed.contains(&pin) => {
                return Err(RelayError::Pin { pin, message: "written after it was released".to_string() })
            }
            _ => {}
        }
        let seq = s.events.len() as u64 + 1;
        let event = FakeEvent { seq, pin, high, op, time: Utc::now() };
        tracing::debug!(pin, high, op = op.as_str(), "fake GPIO");
        if let Some((path, file)) = &mut s.log {
            if let Err(e) = writeln!(file, "{}", event.log_line()) {
                tracing::warn!("fake GPIO: cannot append to {}: {e}", path.display());
            }
        }
        s.levels.insert(pin, high);
        s.events.push(event);
        drop(s);
        self.shared.seq.send_replace(seq);
        Ok(())
    }

    fn release(&self, pin: u8) {
        self.lock().claimed.remove(&pin);
    }
}

/// The [`Gpio`] of a [`FakeBoard`]. Each pin can be claimed once at a time; dropping the claimed
/// pin keeps its level and makes it free again.
#[derive(Debug, Clone)]
pub struct FakeGpio {
    board: FakeBoard,
}

impl FakeGpio {
    /// A GPIO on a new board of its own; see [`FakeGpio::board`].
    pub fn new() -> FakeGpio {
        FakeBoard::new().gpio()
    }

    /// The board these pins are on, to watch them.
    pub fn board(&self) -> FakeBoard {
        self.board.clone()
    }
}

impl Default for FakeGpio {
    fn default() -> Self {
        FakeGpio::new()
    }
}

impl Gpio for FakeGpio {
    fn claim(&mut self, pin: u8, high: bool) -> Result<Box<dyn Pin>, RelayError> {
        self.board.record(pin, high, FakeOp::Claim)?;
        Ok(Box::new(FakePin { pin, board: self.board.clone() }))
    }
}

struct FakePin {
    pin: u8,
    board: FakeBoard,
}

impl Pin for FakePin {
    fn write(&mut self, high: bool) -> Result<(), RelayError> {
        self.board.record(self.pin, high, FakeOp::Write)
    }
}

impl Drop for FakePin {
    fn drop(&mut self) {
        self.board.release(self.pin);
    }
}

/// A pin that did not reach its level in time, with the log as it was then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pin {pin} not {} within {timeout:?}; the log:\n{log}", if *.high { "high" } else { "low" })]
pub struct LevelNotSeen {
    pub pin: u8,
    pub high: bool,
    pub timeout: Duration,
    pub log: String,
}

/// Waits until the log file at `path` (written by a `pmtr` process with `gateway.gpio =
/// "fake"`) says `pin` is at `high` or low, at most `timeout`, reading it every 20 ms. Returns
/// the file's text either way, for the test's message.
pub async fn wait_log_level(
    path: &Path,
    pin: u8,
    high: bool,
    timeout: Duration,
) -> Result<String, LevelNotSeen> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let last = text.lines().rev().filter_map(FakeEvent::parse_log_line).find(|(p, _, _)| *p == pin);
        if matches!(last, Some((_, h, _)) if h == high) {
            return Ok(text);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LevelNotSeen { pin, high, timeout, log: text });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_claims_and_writes_in_order() {
        let mut gpio = FakeGpio::new();
        let board = gpio.board();
        let mut a = gpio.claim(17, true).unwrap();
        let mut b = gpio.claim(27, false).unwrap();
        a.write(false).unwrap();
        b.write(true).unwrap();
        let e = board.events();
        let seen: Vec<_> = e.iter().map(|e| (e.seq, e.pin, e.high, e.op)).collect();
        assert_eq!(
            seen,
            vec![
                (1, 17, true, FakeOp::Claim),
                (2, 27, false, FakeOp::Claim),
                (3, 17, false, FakeOp::Write),
                (4, 27, true, FakeOp::Write),
            ]
        );
        assert!(e.windows(2).all(|w| w[0].time <= w[1].time));
        assert_eq!(board.level(17), Some(false));
        assert_eq!(board.level(27), Some(true));
        assert_eq!(board.level(4), None);
        assert_eq!(board.events_of(27).len(), 2);
    }

    #[test]
    fn a_pin_is_claimed_once_and_keeps_its_level_when_dropped() {
        let mut gpio = FakeGpio::new();
        let board = gpio.board();
        let pin = gpio.claim(5, true).unwrap();
        let err = gpio.claim(5, false).err().expect("second claim refused");
        assert!(matches!(err, RelayError::Pin { pin: 5, .. }), "{err}");
        assert_eq!(board.level(5), Some(true), "the refused claim changed nothing");
        assert!(board.is_claimed(5));
        drop(pin);
        assert!(!board.is_claimed(5));
        assert_eq!(board.level(5), Some(true), "dropping leaves the level");
        assert_eq!(board.events().len(), 1);
        gpio.claim(5, false).expect("free again after the drop");
    }

    #[test]
    fn a_failing_pin_returns_errors() {
        let mut gpio = FakeGpio::new();
        let board = gpio.board();
        let mut pin = gpio.claim(6, false).unwrap();
        board.set_failing(6, true);
        assert!(matches!(pin.write(true), Err(RelayError::Pin { pin: 6, .. })));
        assert_eq!(board.level(6), Some(false));
        board.set_failing(6, false);
        pin.write(true).unwrap();
        assert_eq!(board.level(6), Some(true));
        board.set_failing(7, true);
        assert!(gpio.claim(7, true).is_err());
        assert!(!board.is_claimed(7));
    }

    #[test]
    fn the_log_file_has_one_line_per_operation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/fake-gpio.log");
        let board = FakeBoard::with_log(&path).unwrap();
        let mut gpio = board.gpio();
        let mut p = gpio.claim(17, true).unwrap();
        p.write(false).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].ends_with("Z pin 17 high claim"), "{text}");
        assert!(lines[1].ends_with("Z pin 17 low write"), "{text}");
        let time = lines[0].split(' ').next().unwrap();
        assert!(DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
        assert_eq!(time.len(), "2026-11-21T10:00:00.123Z".len());
        assert_eq!(FakeEvent::parse_log_line(lines[1]), Some((17, false, FakeOp::Write)));
        assert_eq!(FakeEvent::parse_log_line("garbage"), None);
        // Appends: a second board on the same file keeps the first one's lines.
        let again = FakeBoard::with_log(&path).unwrap();
        drop(p);
        again.gpio().claim(17, true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
    }

    #[tokio::test]
    async fn wait_level_sees_a_write_from_another_task() {
        let mut gpio = FakeGpio::new();
        let board = gpio.board();
        let mut pin = gpio.claim(22, false).unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            pin.write(true).unwrap();
            pin
        });
        board.wait_level(22, true, Duration::from_secs(5)).await.unwrap();
        let _pin = writer.await.unwrap();
        // Already there: at once.
        board.wait_level(22, true, Duration::ZERO).await.unwrap();
        assert_eq!(board.wait_level(22, false, Duration::from_millis(20)).await, Err(Some(true)));
        assert_eq!(board.wait_level(9, false, Duration::from_millis(1)).await, Err(None));
    }

    #[tokio::test]
    async fn wait_log_level_reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake-gpio.log");
        let board = FakeBoard::with_log(&path).unwrap();
        let mut pin = board.gpio().claim(17, false).unwrap();
        assert!(wait_log_level(&path, 17, true, Duration::from_millis(30)).await.is_err());
        pin.write(true).unwrap();
        let text = wait_log_level(&path, 17, true, Duration::from_secs(5)).await.unwrap();
        assert!(text.contains("pin 17 high write"), "{text}");
    }
}
