//! A real SMTP server on 127.0.0.1 for integration tests: aiosmtpd 1.4.6 (PyPI), started by PID
//! in its own temporary directory, storing what it receives in a Maildir.
//!
//! Include it from a test crate beside support/servers.rs (whose process wrapper it uses) with
//! ```ignore
//! #[path = "support/servers.rs"]
//! mod servers;
//! #[path = "support/smtp.rs"]
//! mod smtp;
//! ```
//!
//! Three modes ([`Mode`]): plain (no TLS, no AUTH), STARTTLS required with AUTH, and implicit
//! TLS with AUTH (aiosmtpd's `Controller(ssl_context=...)`). The account is `gateway` / `s3cret`
//! ([`USER`], [`PASSWORD`]). TLS modes use a leaf certificate (CA:FALSE, as rustls requires) for
//! `localhost` and `127.0.0.1`, made with `openssl req` in the server's directory: give
//! [`Smtp::cert_path`] as `ca_file`.
//!
//! A missing aiosmtpd or openssl is a panic that says to run tests/run.sh: nothing is skipped
//! quietly.

#![allow(dead_code)]

use crate::servers::Proc;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const USER: &str = "gateway";
pub const PASSWORD: &str = "s3cret";
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The server script: `smtp_server.py MODE PORT MAILDIR [CERT KEY]`.
const SCRIPT: &str = r#"
import ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword

def auth(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == b"gateway" and data.password == b"s3cret"
    return AuthResult(success=ok, handled=False)

mode, port, maildir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "plain":
    c = Controller(Mailbox(maildir), hostname="127.0.0.1", port=port)
else:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[4], sys.argv[5])
    if mode == "starttls":
        c = Controller(Mailbox(maildir), hostname="127.0.0.1", port=port, tls_context=ctx,
                       require_starttls=True, authenticator=auth, auth_required=True,
                       auth_require_tls=True)
    elif mode == "tls":
        c = Controller(Mailbox(maildir), hostname="127.0.0.1", port=port, ssl_context=ctx,
                       server_hostname="localhost", authenticator=auth, auth_required=True,
                       auth_require_tls=False)
    else:
        sys.exit("unknown mode " + mode)
c.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"#;

/// Reads a Maildir file and prints it as JSON with the decoded subject, addresses and body.
const READ_MAIL: &str = r#"
import email, email.policy, json, sys
m = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=email.policy.default)
print(json.dumps({"subject": str(m["subject"]), "from": str(m["from"]), "to": str(m["to"]),
                  "body": m.get_body(("plain",)).get_content()}))
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No TLS, no AUTH.
    Plain,
    /// STARTTLS required before MAIL FROM and AUTH; AUTH required.
    StarttlsAuth,
    /// TLS from the first byte; AUTH required.
    ImplicitTlsAuth,
}

/// One received mail, decoded.
#[derive(Debug, Clone)]
pub struct Mail {
    pub subject: String,
    pub from: String,
    pub to: String,
    pub body: String,
}

pub struct Smtp {
    proc: Proc,
    port: u16,
    mode: Mode,
    dir: TempDir,
    pub startup: Duration,
}

fn require_aiosmtpd() {
    let ok = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success());
    match ok {
        Ok(true) => {}
        Ok(false) => {
            panic!("aiosmtpd not installed: run tests/run.sh (python3 -m pip install aiosmtpd==1.4.6)")
        }
        Err(e) => panic!("python3 cannot be started ({e}): aiosmtpd needs it; run tests/run.sh"),
    }
}

/// A free loopback port (bind :0, read it, let go).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// A leaf certificate and its key for localhost and 127.0.0.1, in `dir`.
pub fn make_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "3650", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .output();
    match out {
        Ok(o) if o.status.success() => (cert, key),
        Ok(o) => panic!("openssl req failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            panic!("openssl not installed: run tests/run.sh (apt-get install openssl)")
        }
        Err(e) => panic!("cannot run openssl: {e}"),
    }
}

impl Smtp {
    /// Starts aiosmtpd in `mode` on a free port and waits until the port accepts.
    pub fn start(mode: Mode) -> Smtp {
        Smtp::start_on(mode, free_port())
    }

    /// As [`Smtp::start`], on `port` (a server that comes up where a client already waits).
    pub fn start_on(mode: Mode, port: u16) -> Smtp {
        require_aiosmtpd();
        let t0 = Instant::now();
        let dir = tempfile::Builder::new().prefix("pmtr-smtp-").tempdir().expect("tempdir");
        let script = dir.path().join("smtp_server.py");
        std::fs::write(&script, SCRIPT).expect("write the server script");
        let maildir = dir.path().join("maildir");
        let mode_word = match mode {
            Mode::Plain => "plain",
            Mode::StarttlsAuth => "starttls",
            Mode::ImplicitTlsAuth => "tls",
        };
        let mut cmd = Command::new("python3");
        cmd.arg(&script).arg(mode_word).arg(port.to_string()).arg(&maildir);
        if mode != Mode::Plain {
            let (cert, key) = make_certificate(dir.path());
            cmd.arg(cert).arg(key);
        }
        let log = std::fs::File::create(dir.path().join("smtp.log")).expect("create the server log");
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        let proc = Proc::start("python3", &mut cmd, "apt-get install python3");
        let mut server = Smtp { proc, port, mode, dir, startup: Duration::ZERO };
        loop {
            if let Some(status) = server.proc.exited() {
                panic!("aiosmtpd exited during start ({status}); its log:\n{}", server.log());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() && server.log().contains("ready") {
                break;
            }
            if t0.elapsed() > START_TIMEOUT {
                panic!(
                    "aiosmtpd did not listen on port {port} within {START_TIMEOUT:?}; log:\n{}",
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        server.startup = t0.elapsed();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's certificate (TLS modes): the `ca_file` to give.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("smtp.log")).unwrap_or_default()
    }

    /// Every mail in the Maildir's `new/`, in the order they arrived, decoded.
    pub fn mails(&self) -> Vec<Mail> {
        let new = self.dir.path().join("maildir/new");
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&new) {
            Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
            Err(_) => return Vec::new(),
        };
        // Maildir names are `<seconds>.M<microseconds>P<pid>Q<n>.<host>`, the microseconds not
        // zero-padded: sort by the numbers, in delivery order.
        files.sort_by_key(|f| {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            let secs: u64 = name.split('.').next().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
            let usec: u64 = name
                .split_once(".M")
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|d| d.parse().ok())
                .unwrap_or(u64::MAX);
            (secs, usec, name)
        });
        files
            .iter()
            .map(|f| {
                let out = Command::new("python3").arg("-c").arg(READ_MAIL).arg(f).output().expect("python3");
                assert!(
                    out.status.success(),
                    "cannot parse {}: {}",
                    f.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).expect("JSON from the mail reader");
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                Mail { subject: s("subject"), from: s("from"), to: s("to"), body: s("body") }
            })
            .collect()
    }

    /// A config file's `[alerts.email]` for this server (no `[alerts.email]` header).
    pub fn email_keys(&self, tls: &str, password: Option<&str>) -> String {
        let mut s = format!(
            "host = \"127.0.0.1\"\nport = {}\ntls = \"{tls}\"\nfrom = \"pmtr <gw@example.test>\"\n\
             to = [\"ops@example.test\"]\ntimeout = \"5s\"\n",
            self.port
        );
        if self.mode != Mode::Plain {
            s.push_str(&format!("ca_file = {:?}\n", self.cert_path().display().to_string()));
        }
        if let Some(p) = password {
            s.push_str(&format!("username = \"{USER}\"\npassword = \"{p}\"\n"));
        }
        s
    }
}
