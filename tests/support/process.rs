//! The one wrapper for every process a test starts: the database and broker servers, aiosmtpd,
//! pymodbus, socat, chromedriver and `pmtr` itself.
//!
//! Include it from a test crate with
//! ```ignore
//! #[path = "support/process.rs"]
//! mod process;
//! ```
//!
//! A program that cannot be found is a panic that says how to install it (tests/run.sh installs
//! everything): nothing is skipped quietly. A process is signalled by PID, or by its process group
//! when started with [`Proc::start_group`] (a program that starts others of its own: socat's
//! forked children, chromium under chromedriver); it is always reaped, and killed at drop.
//!
//! Uses only std and `nix` (already a dependency of pmtr).

#![allow(dead_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// A started process, killed (with its group, if it has one) when dropped.
pub struct Proc {
    /// Taken only by [`Proc::wait_with_output`], which consumes the wrapper.
    child: Option<Child>,
    what: String,
    group: bool,
}

impl Proc {
    /// Starts `cmd`, called `what` in messages. A missing program panics with `install`, the way
    /// to get it.
    pub fn start(what: &str, cmd: &mut Command, install: &str) -> Proc {
        match cmd.spawn() {
            Ok(child) => Proc { child: Some(child), what: what.to_string(), group: false },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                panic!("{what} not found: install it with `{install}` (tests/run.sh does this)")
            }
            Err(e) => panic!("cannot start {what}: {e}"),
        }
    }

    /// As [`Proc::start`], in a process group of its own, which every signal reaches.
    pub fn start_group(what: &str, cmd: &mut Command, install: &str) -> Proc {
        let mut p = Proc::start(what, cmd.process_group(0), install);
        p.group = true;
        p
    }

    /// The program's name, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the process is still held")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the process is still held").id()
    }

    /// Its stdout, once, when it was started with `Stdio::piped()`.
    pub fn take_stdout(&mut self) -> ChildStdout {
        let what = self.what.clone();
        self.child().stdout.take().unwrap_or_else(|| panic!("{what}: stdout is not a pipe"))
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// Waits for the process to end by itself and collects what is left of its piped output.
    pub fn wait_with_output(mut self) -> Output {
        let child = self.child.take().expect("the process is still held");
        child.wait_with_output().unwrap_or_else(|e| panic!("{}: {e}", self.what))
    }

    /// Sends `sig` to the process (to its group if it has one).
    pub fn signal(&self, sig: Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let _ =
            if self.group { nix::sys::signal::killpg(pid, sig) } else { nix::sys::signal::kill(pid, sig) };
    }

    /// Waits for the process to end, at most `within`; `None` if it is still running then.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; always reaps the process. Returns false if
    /// SIGKILL was needed.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        if self.exited().is_some() {
            return true;
        }
        self.signal(Signal::SIGTERM);
        if self.wait_exit(grace).is_some() {
            return true;
        }
        self.kill();
        false
    }

    /// SIGKILL (to the group too, if it has one) and reap.
    pub fn kill(&mut self) {
        if self.group || self.exited().is_none() {
            self.signal(Signal::SIGKILL);
        }
        let _ = self.child().wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
    }
}
