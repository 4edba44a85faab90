//! State files: the JSON files the gateway keeps across restarts (the triggers' latches and
//! forced relays, the energy books). Read leniently (missing is no error; a damaged file is moved
//! aside), written atomically (a temporary file, fsync, rename, fsync of the folder). A leaf of its
//! own so that `trigger` and `energy` share it without importing each other.

use std::io::Write;
use std::path::{Path, PathBuf};

/// What [`load_json`] found.
#[derive(Debug, PartialEq)]
pub enum Loaded<T> {
    Found(T),
    /// First start: nothing saved.
    Missing,
    /// The file could not be read or parsed; it was moved to `moved_to`.
    Damaged {
        error: String,
        moved_to: Option<PathBuf>,
    },
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
