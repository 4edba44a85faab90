//! An independent Modbus RTU peer: a pymodbus 3.16 server on one end of a socat pseudo-terminal
//! pair, serving register images given as JSON. Used by `tests/pymodbus_peer.rs` (the bus
//! engine) and `tests/definitions.rs` (the meter definitions).
//!
//! Include it from a test crate with
//! ```ignore
//! #[path = "support/pymodbus.rs"]
//! mod pymodbus;
//! ```
//!
//! Needs `socat` and `pymodbus[serial]==3.16.1` (tests/run.sh installs both); fails, saying so,
//! when either is missing.

#![allow(dead_code)]

#[path = "process.rs"]
mod process;

use process::Proc;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// socat and pymodbus, killed at drop, and the folder of the pseudo-terminals' links.
pub struct Peer {
    processes: Vec<Proc>,
    pub dir: tempfile::TempDir,
}

fn need(cmd: &str, args: &[&str], what: &str) {
    let ok = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{what} is required for this test and was not found: run tests/run.sh, which installs it");
}

fn wait_for(path: &Path) {
    for _ in 0..200 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} did not appear", path.display());
}

/// Starts the socat pair and `script` (under `tests/peers/`) on its end B at 9600 baud with
/// `images` as its argument; returns the peer and end A, the gateway's side.
pub fn start(script: &str, images: &serde_json::Value) -> (Peer, PathBuf) {
    need("socat", &["-V"], "socat (Debian package `socat`)");
    need("python3", &["-c", "import pymodbus, serial"], "pymodbus[serial]==3.16.1 (PyPI)");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("ttyA"), dir.path().join("ttyB"));
    let mut socat = Command::new("socat");
    socat
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stderr(Stdio::null());
    let socat = Proc::start("socat", &mut socat, "apt-get install socat");
    let mut peer = Peer { processes: vec![socat], dir };
    wait_for(&a);
    wait_for(&b);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers").join(script);
    let mut py = Command::new("python3");
    py.arg(&script).arg(&b).arg("9600").arg(images.to_string()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut py = Proc::start("python3", &mut py, "apt-get install python3");
    let mut out = py.take_stdout();
    peer.processes.push(py);
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut buf).expect("pymodbus server did not start");
    assert_eq!(&buf, b"ready\n");
    // StartSerialServer opens the port just after printing.
    std::thread::sleep(Duration::from_millis(700));
    (peer, a)
}
