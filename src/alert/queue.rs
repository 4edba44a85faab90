//! The outgoing mail queue: bounded, on disk under the state directory, so that alerts waiting
//! for an unreachable SMTP server survive a restart.
//!
//! One JSON file per message, `<id>.json` with a zero-padded increasing id, written atomically
//! (temporary file, fsync, rename); sent in id order; deleted once the server accepted it. When
//! the queue is full the oldest message goes, and the loss is counted. A file that cannot be
//! read is moved aside (`<name>.damaged`) and named in the warnings, never silently deleted.

use crate::sync::Locked;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One email waiting to be sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: u64,
    pub created: DateTime<Utc>,
    pub to: Vec<String>,
    pub subject: String,
    pub body: String,
}

/// The queue and its folder.
#[derive(Debug)]
pub struct Queue {
    dir: PathBuf,
    max: usize,
    items: VecDeque<Message>,
    next_id: u64,
    /// Messages dropped because the queue was full, since it was opened.
    pub dropped: u64,
}

impl Queue {
    /// Opens (creating) the queue in `dir`, holding at most `max` messages. Returns the
    /// warnings about files set aside.
    pub fn open(dir: &Path, max: usize) -> std::io::Result<(Queue, Vec<String>)> {
        std::fs::create_dir_all(dir)?;
        let mut warnings = Vec::new();
        let mut items = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path); // a write cut short: never acknowledged
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Message>(&b).map_err(|e| e.to_string()))
            {
                Ok(m) => items.push(m),
                Err(e) => {
                    let aside = path.with_extension("json.damaged");
                    let _ = std::fs::rename(&path, &aside);
                    warnings.push(format!("{}: {e}; moved to {}", path.display(), aside.display()));
                }
            }
        }
        items.sort_by_key(|m| m.id);
        let next_id = items.last().map_or(1, |m| m.id + 1);
        let mut q =
            Queue { dir: dir.to_path_buf(), max: max.max(1), items: items.into(), next_id, dropped: 0 };
        while q.items.len() > q.max {
            q.drop_oldest()?;
        }
        Ok((q, warnings))
    }

    fn file(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.json"))
    }

    fn drop_oldest(&mut self) -> std::io::Result<Option<Message>> {
        let Some(m) = self.items.pop_front() else { return Ok(None) };
        self.dropped += 1;
        remove(&self.file(m.id))?;
        Ok(Some(m))
    }

    /// Queues a message; returns the oldest one when it had to go to make room.
    pub fn push(
        &mut self,
        to: Vec<String>,
        subject: String,
        body: String,
        created: DateTime<Utc>,
    ) -> std::io::Result<Option<Message>> {
        let m = Message { id: self.next_id, created, to, subject, body };
        let path = self.file(m.id);
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&m).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.next_id += 1;
        self.items.push_back(m);
        if self.items.len() > self.max {
            return self.drop_oldest();
        }
        Ok(None)
    }

    /// The oldest message waiting.
    pub fn front(&self) -> Option<&Message> {
        self.items.front()
    }

    /// Removes the oldest message (sent, or refused for good).
    pub fn pop_front(&mut self) -> std::io::Result<Option<Message>> {
        let Some(m) = self.items.pop_front() else { return Ok(None) };
        remove(&self.file(m.id))?;
        Ok(Some(m))
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Runs `f` on the queue on a blocking thread: its file writes and fsyncs, and waiting for its
/// lock while another holds it for those, never hold the runtime thread (where the buses,
/// triggers and relays run). `None` if the blocking thread failed (logged).
pub async fn off_runtime<T: Send + 'static>(
    queue: &Arc<Mutex<Queue>>,
    f: impl FnOnce(&mut Queue) -> T + Send + 'static,
) -> Option<T> {
    let queue = queue.clone();
    match tokio::task::spawn_blocking(move || f(&mut queue.locked())).await {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(error = %e, "the alert queue's file work failed");
            None
        }
    }
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(q: &mut Queue, n: u32) -> Option<Message> {
        q.push(vec!["ops@example.test".into()], format!("s{n}"), format!("b{n}"), Utc::now()).unwrap()
    }

    #[test]
    fn order_survives_a_restart_and_sent_messages_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, w) = Queue::open(dir.path(), 10).unwrap();
        assert!(w.is_empty());
        for n in 0..3 {
            push(&mut q, n);
        }
        assert_eq!(q.pop_front().unwrap().unwrap().subject, "s0");
        drop(q);
        let (mut q, _) = Queue::open(dir.path(), 10).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q.front().unwrap().subject, "s1");
        push(&mut q, 3);
        let subjects: Vec<String> =
            std::iter::from_fn(|| q.pop_front().unwrap()).map(|m| m.subject).collect();
        assert_eq!(subjects, ["s1", "s2", "s3"], "a restart continues the numbering");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = Queue::open(dir.path(), 3).unwrap();
        for n in 0..3 {
            assert_eq!(push(&mut q, n), None);
        }
        assert_eq!(push(&mut q, 3).unwrap().subject, "s0");
        assert_eq!((q.len(), q.dropped), (3, 1));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn a_damaged_file_is_set_aside_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = Queue::open(dir.path(), 10).unwrap();
        push(&mut q, 0);
        drop(q);
        std::fs::write(dir.path().join("00000000000000000009.json"), "{not json").unwrap();
        std::fs::write(dir.path().join("00000000000000000010.json.tmp"), "cut short").unwrap();
        let (q, warnings) = Queue::open(dir.path(), 10).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(dir.path().join("00000000000000000009.json.damaged").exists());
        assert!(!dir.path().join("00000000000000000010.json.tmp").exists());
    }

    /// While the queue is held for a slow fsync (here: locked by another thread), the runtime
    /// thread keeps running other tasks: a queue write waits on a blocking thread.
    #[tokio::test]
    async fn queue_file_work_never_holds_the_runtime_thread() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(Mutex::new(Queue::open(dir.path(), 10).unwrap().0));
        let progressed = Arc::new(AtomicBool::new(false));
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let holder = {
            let (queue, progressed) = (queue.clone(), progressed.clone());
            std::thread::spawn(move || {
                let _held = queue.lock().unwrap();
                locked_tx.send(()).unwrap();
                // Hold the lock until the runtime shows progress (or 10 s: only a hang).
                for _ in 0..10_000 {
                    if progressed.load(Ordering::SeqCst) {
                        return true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                false
            })
        };
        locked_rx.recv().unwrap();
        let write = tokio::spawn({
            let queue = queue.clone();
            async move { off_runtime(&queue, |q| push(q, 1)).await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await; // the write task has been polled and waits
        }
        progressed.store(true, Ordering::SeqCst);
        assert!(holder.join().unwrap(), "the runtime ran while the queue was held");
        assert_eq!(write.await.unwrap(), Some(None), "then the write went through");
        assert_eq!(queue.lock().unwrap().len(), 1);
    }
}
