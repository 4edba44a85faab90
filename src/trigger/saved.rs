//! The state that survives a restart: latched and tripped triggers, forced relays. Written
//! atomically (a temporary file, fsync, rename, fsync of the folder) at every change, so a
//! power cut leaves the old file or the new one, never half of one.

use crate::control::Forced;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
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

/// What [`load`] (or [`load_json`] for another file) found.
#[derive(Debug, PartialEq)]
pub enum Loaded<T = Saved> {
    Found(T),
    /// First start: nothing saved.
    Missing,
    /// The file could not be read or parsed; it was moved to `moved_to`.
    Damaged {
        error: String,
        moved_to: Option<PathBuf>,
    },
}

pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join("triggers.json")
}

/// Reads the saved state. A damaged file is moved aside (`triggers.json.damaged`) so that
/// the next save does not hide the evidence.
pub fn load(path: &Path) -> Loaded {
    load_json(path)
}

/// Reads a JSON state file: missing is no error, and a file that does not parse is moved aside
/// (`<name>.json.damaged`) so that the next save does not hide the evidence.
pub fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Loaded<T> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return Loaded::Damaged { error: e.to_string(), moved_to: None },
    };
    match serde_json::from_str(&text) {
        Ok(s) => Loaded::Found(s),
        Err(e) => {
            let aside = path.with_extension("json.damaged");
            let moved_to = std::fs::rename(path, &aside).ok().map(|_| aside);
            Loaded::Damaged { error: e.to_string(), moved_to }
        }
    }
}

/// Writes `saved` atomically.
pub fn save(path: &Path, saved: &Saved) -> std::io::Result<()> {
    write_atomically(path, &serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?)
}

/// Writes `bytes` and a newline to `path` atomically: a temporary file beside it, fsync,
/// rename, fsync of the folder (the energy books are saved the same way).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
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
