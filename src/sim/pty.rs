//! Pseudo-terminals for the simulators: opening one raw with a non-blocking master, the
//! optional symlink to its slave side, and the thread that serves it.

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest a simulator thread blocks before looking at its stop flag.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// A freshly opened pseudo-terminal.
pub(crate) struct OpenedPty {
    /// Non-blocking; the simulator's end.
    pub master: File,
    /// Raw mode; kept open so the pty lives on between the gateway's opens.
    pub slave: OwnedFd,
    /// `/dev/pts/N`.
    pub pts: PathBuf,
}

/// Opens a raw pseudo-terminal and creates `link` to its slave side if asked.
pub(crate) fn open(link: Option<&Path>) -> io::Result<OpenedPty> {
    let pty = nix::pty::openpty(None, None)?;
    let mut t = tcgetattr(&pty.slave)?;
    cfmakeraw(&mut t);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &t)?;
    let flags = OFlag::from_bits_truncate(fcntl(pty.master.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(pty.master.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    let pts = nix::unistd::ttyname(pty.slave.as_fd())?;
    if let Some(link) = link {
        make_link(&pts, link)?;
    }
    Ok(OpenedPty { master: File::from(pty.master), slave: pty.slave, pts })
}

/// A symlink at `link` to `target`; its directory is created if missing, and a symlink
/// already there is replaced.
pub(crate) fn make_link(target: &Path, link: &Path) -> io::Result<()> {
    if let Some(dir) = link.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    remove_link(link);
    std::os::unix::fs::symlink(target, link)
}

/// Removes `link` if it is a symlink (never a file someone put there).
pub(crate) fn remove_link(link: &Path) {
    if std::fs::symlink_metadata(link).is_ok_and(|m| m.file_type().is_symlink()) {
        let _ = std::fs::remove_file(link);
    }
}

/// Sleeps until `deadline`; false if asked to stop meanwhile.
pub(crate) fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(TICK));
    }
}

/// A plugged-in pseudo-terminal and the thread serving it.
pub(crate) struct Served {
    pub stop: Arc<AtomicBool>,
    pub thread: Option<JoinHandle<()>>,
    /// Held so that the pty lives on between the gateway's opens.
    pub _slave: OwnedFd,
    pub link: Option<PathBuf>,
}

impl Served {
    /// Whether the thread still runs.
    pub fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the thread (which owns the master), closes the slave and removes the link.
    pub fn close(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(link) = &self.link {
            remove_link(link);
        }
    }
}
