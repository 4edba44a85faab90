//! The books on disk: `<state_dir>/energy.json`, written atomically (like the trigger state), so
//! a power cut leaves the old file or the new one. A counter's total and its base reading are
//! saved together, so a restart from an older file loses nothing and counts nothing twice: the
//! first reading after it counts from that base.

use super::book::Books;
use std::path::{Path, PathBuf};

pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join("energy.json")
}

/// What [`load`] found: the books, nothing (first start), or a damaged file moved aside.
pub type Loaded = crate::state_file::Loaded<Books>;

/// Reads the saved books. A damaged file is moved aside (`energy.json.damaged`).
pub fn load(path: &Path) -> Loaded {
    crate::state_file::load_json(path)
}

/// Loads the books for a start, logging what was found; never fails.
pub fn load_logged(path: &Path) -> Books {
    match load(path) {
        Loaded::Found(b) => {
            tracing::info!(file = %path.display(), meters = b.meters.len(), "energy books loaded");
            b
        }
        Loaded::Missing => Books::default(),
        Loaded::Damaged { error, moved_to } => {
            tracing::error!(file = %path.display(), error = %error,
                moved_to = %moved_to.as_ref().map_or("(not moved)".to_string(), |p| p.display().to_string()),
                "energy books damaged: set aside, totals start again from the meters' counters");
            Books::default()
        }
    }
}

/// Writes the books atomically.
pub fn save(path: &Path, books: &Books) -> std::io::Result<()> {
    crate::state_file::write_atomically(path, &serde_json::to_vec(books).map_err(std::io::Error::other)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::counter::Counter;

    #[test]
    fn round_trip_and_damage_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let p = path_in(dir.path());
        assert_eq!(load(&p), Loaded::Missing);
        let mut books = Books::default();
        let m = books.meters.entry("main".into()).or_default();
        m.counters.insert("l1_energy".into(), Counter::start(12.5, chrono::DateTime::UNIX_EPOCH));
        m.days.entry("2026-07-01".parse().unwrap()).or_default().kwh = 3.25;
        save(&p, &books).unwrap();
        assert_eq!(load(&p), Loaded::Found(books));
        assert!(!p.with_extension("json.tmp").exists());
        std::fs::write(&p, "{\"meters\": {\"main\": ").unwrap();
        assert_eq!(load_logged(&p), Books::default());
        assert!(p.with_extension("json.damaged").exists() && !p.exists());
    }
}
