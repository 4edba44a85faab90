//! The state that survives a restart: latched and tripped triggers, forced relays. Written
//! atomically (a temporary file, fsync, rename, fsync of the folder) at every change, so a
//! power cut leaves the old file or the new one, never half of one.

use crate::control::Forced;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    #[serde(default)]
    pub triggers: BTreeMap<String, SavedTrigger>,
    #[serde(default)]
    pub relays: BTreeMap<String, Forced>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedTrigger {
    /// Latched (reset by hand only), else tripped (recovery applies).
    pub latched: bool,
    pub since: DateTime<Utc>,
    /// The expression when it tripped, to warn when it changed.
    pub when: String,
}

pub use crate::state_file::{load_json, write_atomically};

/// What [`load`] found.
pub type Loaded<T = Saved> = crate::state_file::Loaded<T>;

pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join("triggers.json")
}

/// Reads the saved state. A damaged file is moved aside (`triggers.json.damaged`) so that
/// the next save does not hide the evidence.
pub fn load(path: &Path) -> Loaded {
    load_json(path)
}

/// Writes `saved` atomically.
pub fn save(path: &Path, saved: &Saved) -> std::io::Result<()> {
    write_atomically(path, &serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::Level;

    fn sample() -> Saved {
        let mut s = Saved::default();
        s.triggers.insert(
            "overvoltage".into(),
            SavedTrigger { latched: true, since: DateTime::UNIX_EPOCH, when: "L1U > 253".into() },
        );
        s.relays.insert("motor".into(), Forced { level: Level::Off, until: None, by: "uid 0 pid 1".into() });
        s
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = path_in(dir.path());
        assert_eq!(load(&p), Loaded::Missing);
        save(&p, &sample()).unwrap();
        assert_eq!(load(&p), Loaded::Found(sample()));
        assert!(!p.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_damaged_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let p = path_in(dir.path());
        std::fs::write(&p, "{\"triggers\": {\"x\": ").unwrap();
        let Loaded::Damaged { moved_to: Some(aside), .. } = load(&p) else { panic!("not damaged") };
        assert!(aside.exists() && !p.exists());
    }
}
