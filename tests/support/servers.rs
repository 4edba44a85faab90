//! Real database servers on 127.0.0.1 for integration tests, plus a tiny HTTP/1.1 client.
//!
//! Include it from a test crate with
//! ```ignore
//! #[path = "support/servers.rs"]
//! mod servers;
//! ```
//!
//! * [`Influx1`]: Debian's `influxd` 1.6 (package `influxdb`). It has the 1.x API only
//!   (`/write`, `/query`, `/ping`); `/api/v2/*` answers 404.
//! * [`VictoriaMetrics`]: Debian's `victoria-metrics` 1.79. It accepts the InfluxDB 2 write API
//!   (`POST /api/v2/write`, 204) but ignores `org`, `bucket` and the token, and stores only numbers
//!   as series `<measurement>_<field>`. Bad lines still get 204 (the error is only logged: see
//!   [`VictoriaMetrics::log`]).
//! * [`VmAuth`]: Debian's `vmauth` (same package as `victoria-metrics`) in front of a
//!   VictoriaMetrics, to check that a token is really sent.
//! * [`Mosquitto`]: Debian's `mosquitto` 2.0 MQTT broker, anonymous, without persistence (a
//!   restart forgets retained messages: what is retained afterwards was published again).
//!
//! Every server runs in its own temporary directory (config, data and the server's log), listens
//! on free loopback ports only, and is killed by PID on drop. A missing binary is a panic that says
//! what to install (tests/run.sh installs everything); nothing is skipped quietly.
//!
//! Uses only std, `tempfile`, `serde_json` and `nix` (already dependencies of pmtr).

#![allow(dead_code)]

#[path = "process.rs"]
pub mod process;

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub use process::Proc;

/// How long a server may take to answer its health check.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long Drop waits after SIGTERM before it sends SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(5);
/// How long `stop()` waits after SIGTERM before it sends SIGKILL (a graceful stop flushes data).
const STOP_GRACE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 by hand
// ---------------------------------------------------------------------------------------------

/// A parsed HTTP response. The body has had any chunked transfer-encoding removed.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names as sent by the server; use [`HttpResponse::header`] for a lookup.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request with `Connection: close`; panics if the server cannot be reached or the
/// answer is not HTTP. Returns the status and the body as text.
///
/// `url` is `http://HOST:PORT/path?query`. A `Content-Length` header is added for every method
/// except a body-less GET/HEAD/DELETE; `Host` and `Connection` are always added.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let r = http_response(method, url, headers, body);
    (r.status, r.text())
}

/// Like [`http`], but returns the headers too.
pub fn http_response(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    try_http(method, url, headers, body).unwrap_or_else(|e| panic!("HTTP {method} {url} failed: {e}"))
}

/// Like [`http_response`], but returns connection errors instead of panicking (for polling, and
/// for checking that a stopped server is really gone).
pub fn try_http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> io::Result<HttpResponse> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("not an http:// URL: {url}")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no address for {authority}")))?;

    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;

    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    let bodyless = matches!(method, "GET" | "HEAD" | "DELETE") && body.is_empty();
    let user_length = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if !bodyless && !user_length {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request)?;
    stream.flush()?;

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn parse_response(raw: &[u8], head_request: bool) -> io::Result<HttpResponse> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad(format!("no end of headers in {:?}", String::from_utf8_lossy(raw))))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("not an HTTP/1.x status line: {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut resp = HttpResponse { status, headers, body: Vec::new() };

    let rest = &raw[end + 4..];
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|te| te.split(',').any(|t| t.trim().eq_ignore_ascii_case("chunked")));
    resp.body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len.parse().map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
        if rest.len() < len {
            return Err(bad(format!("body cut short: {} of {len} bytes", rest.len())));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(resp)
}

/// Removes chunked transfer-encoding (chunk extensions and trailers are ignored).
fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol =
            data.windows(2).position(|w| w == b"\r\n").ok_or_else(|| bad("chunk size line cut short"))?;
        let line = std::str::from_utf8(&data[..eol]).map_err(|_| bad("chunk size is not UTF-8"))?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| bad(format!("bad chunk size {line:?}")))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(bad("chunk cut short"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Percent-encoding for a query-string value or an `application/x-www-form-urlencoded` field.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

// ---------------------------------------------------------------------------------------------
// Ports and processes
// ---------------------------------------------------------------------------------------------

/// Ports already handed out in this test process, so that parallel tests never get the same one.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free loopback port: bind 127.0.0.1:0, read the port, drop the listener. A port is never
/// handed out twice in one process.
pub fn free_port() -> u16 {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let port =
            TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port();
        if handed.insert(port) {
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// Spawns the server `bin` with its stdout and stderr appended to `log` (after a `=== bin args`
/// line that starts this run) and its working directory in `cwd`. `install` is the package hint
/// for a missing binary.
fn spawn(bin: &'static str, args: &[String], cwd: &Path, log: &Path, install: &str) -> Proc {
    let mut out = OpenOptions::new().create(true).append(true).open(log).expect("open server log");
    let _ = writeln!(out, "=== {bin} {}", args.join(" "));
    let err = out.try_clone().expect("clone log handle");
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(cwd).stdin(Stdio::null()).stdout(out).stderr(err);
    // influxd reads INFLUXDB_* variables as config overrides: keep the tests hermetic.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("INFLUXDB_") {
            cmd.env_remove(k);
        }
    }
    Proc::start(bin, &mut cmd, install)
}

/// The last `lines` lines of a log file.
fn log_tail(log: &Path, lines: usize) -> String {
    let text =
        std::fs::read_to_string(log).unwrap_or_else(|e| format!("(cannot read {}: {e})", log.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub enum Ready {
    Up,
    /// The process exited (its status); true when the log says the address was taken, which is
    /// worth a retry on other ports.
    Exited(String, bool),
}

/// Polls `probe` until it is true, the process exits, or the start timeout passes (panic).
fn wait_ready(proc: &mut Proc, log: &Path, mut probe: impl FnMut() -> bool) -> Ready {
    let start = Instant::now();
    loop {
        if let Some(status) = proc.exited() {
            let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
            let this_run = &text[text.rfind(&format!("=== {} ", proc.what())).unwrap_or(0)..];
            let taken = this_run.contains("address already in use");
            if taken {
                eprintln!("{}: a port was taken meanwhile ({status})", proc.what());
            }
            return Ready::Exited(status.to_string(), taken);
        }
        if probe() {
            return Ready::Up;
        }
        if start.elapsed() > START_TIMEOUT {
            proc.kill();
            panic!(
                "{} did not become ready within {:?}; its log ends:\n{}",
                proc.what(),
                START_TIMEOUT,
                log_tail(log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn get_is(url: &str, want_status: u16, want_body: Option<&str>) -> bool {
    match try_http("GET", url, &[], b"") {
        Ok(r) => r.status == want_status && want_body.is_none_or(|b| r.text().trim() == b),
        Err(_) => false,
    }
}

/// A server the tests stop, crash and start again by PID, keeping its data and ports.
pub trait Managed {
    /// The program's name, for messages.
    const NAME: &'static str;
    /// Its process while it runs.
    fn slot(&mut self) -> &mut Option<Proc>;
    /// Starts it on its ports with its data, and waits until it answers.
    fn launch(&mut self) -> Ready;
    /// Fails the test, with the end of the server's log.
    fn fail(&self, what: &str) -> !;

    /// Graceful stop: SIGTERM by PID and wait (SIGKILL after 15 s). The data stays.
    fn stop(&mut self) {
        if let Some(mut p) = self.slot().take() {
            if !p.terminate(STOP_GRACE) {
                eprintln!("{} needed SIGKILL to stop", Self::NAME);
            }
        }
    }

    /// Crash: SIGKILL by PID and wait. The data stays (what was not yet flushed may be lost).
    fn kill(&mut self) {
        if let Some(mut p) = self.slot().take() {
            p.kill();
        }
    }

    /// Starts again on the same ports with the same data (stops first if still running).
    ///
    /// While the server was down, some outgoing connection may have been given its port as a
    /// local port; a start that finds the port taken is retried for up to 2 s.
    fn restart(&mut self) {
        self.stop();
        for attempt in 1..=10 {
            match self.launch() {
                Ready::Up => return,
                Ready::Exited(_, true) if attempt < 10 => std::thread::sleep(Duration::from_millis(200)),
                Ready::Exited(status, _) => self.fail(&format!("exited during restart ({status})")),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// InfluxDB 1.6
// ---------------------------------------------------------------------------------------------

/// Debian's `influxd` 1.6.7 on two free loopback ports (HTTP and the backup/RPC port), with its
/// meta, data and WAL directories in a temporary directory.
///
/// Only the HTTP API and the RPC port listen: no UDP/Graphite/collectd/OpenTSDB, no ifql, no unix
/// socket, no pprof handlers, no usage reporting, no `_internal` monitor database.
pub struct Influx1 {
    proc: Option<Proc>,
    http_port: u16,
    rpc_port: u16,
    startup: Duration,
    dir: TempDir,
}

impl Influx1 {
    /// Starts influxd and waits until `GET /ping` answers 204 (panics after 15 s with the log).
    pub fn start() -> Influx1 {
        for attempt in 1..=3 {
            let dir = tempfile::Builder::new().prefix("pmtr-influx1-").tempdir().expect("tempdir");
            let mut server = Influx1 {
                proc: None,
                http_port: free_port(),
                rpc_port: free_port(),
                startup: Duration::ZERO,
                dir,
            };
            server.write_config();
            match server.launch() {
                Ready::Up => return server,
                Ready::Exited(_, true) if attempt < 3 => continue,
                Ready::Exited(status, _) => server.fail(&format!("exited during start ({status})")),
            }
        }
        unreachable!()
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("influxdb.conf")
    }

    /// The server's stdout and stderr (all starts appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("influxd.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The temporary directory holding config, meta, data, wal and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn write_config(&self) {
        let d = self.dir.path().display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
        let conf = format!(
            r#"reporting-enabled = false
bind-address = "127.0.0.1:{rpc}"

[meta]
  dir = "{d}/meta"

[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"

[http]
  enabled = true
  bind-address = "127.0.0.1:{http}"
  auth-enabled = false
  pprof-enabled = false
  debug-pprof-enabled = false
  unix-socket-enabled = false
  https-enabled = false

[ifql]
  enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = true
"#,
            rpc = self.rpc_port,
            http = self.http_port,
        );
        std::fs::write(self.config_path(), conf).expect("write influxdb.conf");
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn port(&self) -> u16 {
        self.http_port
    }

    /// How long the last start or restart took until `/ping` answered.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The PID of the running server (panics when stopped).
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("influxd is stopped").pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// `CREATE DATABASE name` (panics on an error).
    pub fn create_database(&self, name: &str) {
        let q = format!("CREATE DATABASE \"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""));
        let v = self.query("", &q);
        if let Some(err) = v.pointer("/results/0/error") {
            panic!("{q} failed: {err}");
        }
    }

    /// `POST /query?db=DB&epoch=ms` with the form field `q`; returns the JSON answer (panics if
    /// the status is not 200). Statement errors come back inside `results[i].error`. An empty
    /// `db` omits the parameter.
    pub fn query(&self, db: &str, influxql: &str) -> Value {
        let mut url = format!("{}/query?epoch=ms", self.url());
        if !db.is_empty() {
            url.push_str(&format!("&db={}", urlencode(db)));
        }
        let body = format!("q={}", urlencode(influxql));
        let (status, text) = http("POST", &url, &[FORM], body.as_bytes());
        assert_eq!(status, 200, "influxd query {influxql:?} failed: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("influxd answered non-JSON ({e}): {text}"))
    }
}

impl Managed for Influx1 {
    const NAME: &'static str = "influxd";
    fn slot(&mut self) -> &mut Option<Proc> {
        &mut self.proc
    }
    fn launch(&mut self) -> Ready {
        let t0 = Instant::now();
        let args = vec!["-config".to_string(), self.config_path().display().to_string()];
        let mut proc = spawn("influxd", &args, self.dir.path(), &self.log_path(), "apt-get install influxdb");
        let ping = format!("{}/ping", self.url());
        let ready = wait_ready(&mut proc, &self.log_path(), || get_is(&ping, 204, None));
        self.startup = t0.elapsed();
        self.proc = Some(proc);
        ready
    }

    fn fail(&self, what: &str) -> ! {
        panic!("influxd {what}; its log ends:\n{}", log_tail(&self.log_path(), 40))
    }
}

impl Drop for Influx1 {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(DROP_GRACE);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// VictoriaMetrics
// ---------------------------------------------------------------------------------------------

/// Debian's `victoria-metrics` 1.79 on a free loopback port with its storage in a temporary
/// directory: `-retentionPeriod=100y` (old fixture timestamps are kept),
/// `-search.latencyOffset=0s` and `-search.disableCache` (fresh samples are visible to queries at
/// once). Graphite/Influx-TCP/OpenTSDB listeners and self-scraping are off by default.
pub struct VictoriaMetrics {
    proc: Option<Proc>,
    port: u16,
    startup: Duration,
    dir: TempDir,
}

impl VictoriaMetrics {
    /// Starts VictoriaMetrics and waits until `GET /health` answers `OK` (panics after 15 s).
    pub fn start() -> VictoriaMetrics {
        for attempt in 1..=3 {
            let dir = tempfile::Builder::new().prefix("pmtr-vm-").tempdir().expect("tempdir");
            let mut server = VictoriaMetrics { proc: None, port: free_port(), startup: Duration::ZERO, dir };
            match server.launch() {
                Ready::Up => return server,
                Ready::Exited(_, true) if attempt < 3 => continue,
                Ready::Exited(status, _) => server.fail(&format!("exited during start ({status})")),
            }
        }
        unreachable!()
    }

    fn data_path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("victoria-metrics.log")
    }

    /// The server's log so far (VictoriaMetrics logs rejected lines here, yet answers 204).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How long the last start or restart took until `/health` answered.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("victoria-metrics is stopped").pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// `GET /internal/force_flush`: makes recently ingested samples searchable.
    pub fn force_flush(&self) {
        let (status, body) = http("GET", &format!("{}/internal/force_flush", self.url()), &[], b"");
        assert_eq!(status, 200, "force_flush failed: {body}");
    }

    /// `POST /api/v1/export` with `match[]=SELECTOR`: one JSON object per series,
    /// `{"metric":{"__name__":..,labels..},"values":[..],"timestamps":[ms..]}`.
    pub fn export(&self, match_selector: &str) -> Vec<Value> {
        let body = format!("match[]={}", urlencode(match_selector));
        let (status, text) = http("POST", &format!("{}/api/v1/export", self.url()), &[FORM], body.as_bytes());
        assert_eq!(status, 200, "export {match_selector:?} failed: {text}");
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad export line ({e}): {l}")))
            .collect()
    }

    /// The timestamps (ms) of `metric`'s samples, once they include every one of `want` (or
    /// what there is after `within`).
    pub fn timestamps_once_in(
        &self,
        metric: &str,
        want: &std::collections::BTreeSet<i64>,
        within: Duration,
    ) -> std::collections::BTreeSet<i64> {
        let deadline = Instant::now() + within;
        loop {
            self.force_flush();
            let got: std::collections::BTreeSet<i64> = self
                .export(metric)
                .iter()
                .flat_map(|row| {
                    row["timestamps"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t.as_i64().unwrap())
                        .collect::<Vec<_>>()
                })
                .collect();
            if want.is_subset(&got) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Force-flushes and polls [`export`](Self::export) until the series matching `selector` hold
    /// at least `expected_count` samples in total, or `timeout` passes. Returns what it has then;
    /// the caller asserts. Ingestion is asynchronous: use this rather than one export.
    pub fn wait_for_samples(&self, selector: &str, expected_count: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            self.force_flush();
            let rows = self.export(selector);
            if sample_count(&rows) >= expected_count || Instant::now() >= deadline {
                return rows;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Managed for VictoriaMetrics {
    const NAME: &'static str = "victoria-metrics";
    fn slot(&mut self) -> &mut Option<Proc> {
        &mut self.proc
    }
    fn launch(&mut self) -> Ready {
        let t0 = Instant::now();
        let args = vec![
            format!("-storageDataPath={}", self.data_path().display()),
            format!("-httpListenAddr=127.0.0.1:{}", self.port),
            "-retentionPeriod=100y".to_string(),
            "-search.latencyOffset=0s".to_string(),
            "-search.disableCache".to_string(),
        ];
        let mut proc = spawn(
            "victoria-metrics",
            &args,
            self.dir.path(),
            &self.log_path(),
            "apt-get install victoria-metrics",
        );
        let health = format!("{}/health", self.url());
        let ready = wait_ready(&mut proc, &self.log_path(), || get_is(&health, 200, Some("OK")));
        self.startup = t0.elapsed();
        self.proc = Some(proc);
        ready
    }

    fn fail(&self, what: &str) -> ! {
        panic!("victoria-metrics {what}; its log ends:\n{}", log_tail(&self.log_path(), 40))
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(DROP_GRACE);
        }
    }
}

/// The total number of samples (sum of the `values` lengths) in an export.
pub fn sample_count(rows: &[Value]) -> usize {
    rows.iter().map(|r| r["values"].as_array().map_or(0, Vec::len)).sum()
}

// ---------------------------------------------------------------------------------------------
// vmauth
// ---------------------------------------------------------------------------------------------

/// Debian's `vmauth` 1.79 on a free loopback port, proxying everything to one VictoriaMetrics for
/// one bearer token.
///
/// Observed answers (vmauth 1.79.5, `POST /api/v2/write?org=o&bucket=b&precision=ms`):
/// * `Authorization: Token RIGHT` → **204** (proxied; `Authorization: Bearer RIGHT` too).
/// * `Authorization: Token WRONG` → **400 Bad Request**, body
///   `cannot find the provided auth token "Bearer WRONG" in config` (vmauth rewrites the `Token`
///   scheme to `Bearer`, so the message says `Bearer`). Not 401/403.
/// * no `Authorization` header → **401 Unauthorized**, body ``missing `Authorization` request
///   header``, with `Www-Authenticate: Basic realm="Restricted"`.
/// * right token while the VictoriaMetrics behind it is down → **502 Bad Gateway**.
/// * `GET /health` → 200 `OK` from vmauth itself, with no token and whatever the backend's state.
pub struct VmAuth {
    proc: Option<Proc>,
    port: u16,
    startup: Duration,
    dir: TempDir,
}

impl VmAuth {
    /// Starts vmauth in front of `backend_url` (e.g. [`VictoriaMetrics::url`]) accepting
    /// `bearer_token`, and waits until its `/health` answers (panics after 15 s).
    pub fn start(backend_url: &str, bearer_token: &str) -> VmAuth {
        let yaml_token = bearer_token.replace('\\', "\\\\").replace('"', "\\\"");
        for attempt in 1..=3 {
            let dir = tempfile::Builder::new().prefix("pmtr-vmauth-").tempdir().expect("tempdir");
            let mut server = VmAuth { proc: None, port: free_port(), startup: Duration::ZERO, dir };
            let auth = server.dir.path().join("auth.yml");
            let yaml = format!("users:\n- bearer_token: \"{yaml_token}\"\n  url_prefix: \"{backend_url}\"\n");
            std::fs::write(&auth, yaml).expect("write auth.yml");
            let t0 = Instant::now();
            let args = vec![
                format!("-auth.config={}", auth.display()),
                format!("-httpListenAddr=127.0.0.1:{}", server.port),
            ];
            let log = server.log_path();
            let mut proc =
                spawn("vmauth", &args, server.dir.path(), &log, "apt-get install victoria-metrics");
            let health = format!("{}/health", server.url());
            let ready = wait_ready(&mut proc, &log, || get_is(&health, 200, None));
            server.startup = t0.elapsed();
            server.proc = Some(proc);
            match ready {
                Ready::Up => return server,
                Ready::Exited(_, true) if attempt < 3 => continue,
                Ready::Exited(status, _) => {
                    panic!("vmauth exited during start ({status}); its log ends:\n{}", log_tail(&log, 40))
                }
            }
        }
        unreachable!()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("vmauth is stopped").pid()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("vmauth.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for VmAuth {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(DROP_GRACE);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mosquitto
// ---------------------------------------------------------------------------------------------

/// Debian's `mosquitto` 2.0 on a free loopback port, anonymous, `persistence false`, its config
/// and log in a temporary directory; or, with [`Mosquitto::start_secure`], a TLS listener and a
/// plain one, both requiring a user and password.
pub struct Mosquitto {
    proc: Option<Proc>,
    port: u16,
    tls_port: Option<u16>,
    dir: TempDir,
}

impl Mosquitto {
    /// Starts mosquitto and waits until it accepts connections (panics after 15 s).
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(None)
    }

    /// Two listeners, both refusing anonymous clients: TLS with `cert` and `key` on
    /// [`Mosquitto::tls_port`], plain on [`Mosquitto::port`]. The one account is `user` with
    /// `password` (made with `mosquitto_passwd`).
    pub fn start_secure(cert: &Path, key: &Path, user: &str, password: &str) -> Mosquitto {
        Mosquitto::start_with(Some((cert, key, user, password)))
    }

    fn start_with(secure: Option<(&Path, &Path, &str, &str)>) -> Mosquitto {
        for attempt in 1..=3 {
            let dir = tempfile::Builder::new().prefix("pmtr-mosquitto-").tempdir().expect("tempdir");
            let mut server = Mosquitto { proc: None, port: free_port(), tls_port: None, dir };
            let mut conf = format!(
                "per_listener_settings false\npersistence false\nlog_dest stderr\nlog_type error\n\
                 log_type warning\nlog_type notice\nlog_type information\nlistener {} 127.0.0.1\n",
                server.port
            );
            match secure {
                None => conf.push_str("allow_anonymous true\n"),
                Some((cert, key, user, password)) => {
                    let passwd = server.dir.path().join("passwd");
                    let out = Command::new("mosquitto_passwd")
                        .arg("-b")
                        .arg("-c")
                        .arg(&passwd)
                        .args([user, password])
                        .output()
                        .unwrap_or_else(|e| {
                            panic!("mosquitto_passwd cannot run ({e}): install it with `apt-get install mosquitto`")
                        });
                    assert!(
                        out.status.success(),
                        "mosquitto_passwd: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    // mosquitto drops root for its own user, which must read the files.
                    for f in [&passwd, cert, key] {
                        let _ =
                            std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o644));
                    }
                    let _ = std::fs::set_permissions(
                        server.dir.path(),
                        std::os::unix::fs::PermissionsExt::from_mode(0o755),
                    );
                    let tls_port = free_port();
                    server.tls_port = Some(tls_port);
                    conf.push_str(&format!(
                        "allow_anonymous false\npassword_file {}\nlistener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
                        passwd.display(),
                        cert.display(),
                        key.display()
                    ));
                }
            }
            std::fs::write(server.config_path(), conf).expect("write mosquitto.conf");
            match server.launch() {
                Ready::Up => return server,
                Ready::Exited(_, true) if attempt < 3 => continue,
                Ready::Exited(status, _) => server.fail(&format!("exited during start ({status})")),
            }
        }
        unreachable!()
    }

    /// The TLS listener's port ([`Mosquitto::start_secure`] only).
    pub fn tls_port(&self) -> u16 {
        self.tls_port.expect("mosquitto was started without TLS")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("mosquitto is stopped").pid()
    }
}

impl Managed for Mosquitto {
    const NAME: &'static str = "mosquitto";
    fn slot(&mut self) -> &mut Option<Proc> {
        &mut self.proc
    }
    fn launch(&mut self) -> Ready {
        let args = vec!["-c".to_string(), self.config_path().display().to_string()];
        let mut proc = spawn(
            "mosquitto",
            &args,
            self.dir.path(),
            &self.log_path(),
            "apt-get install mosquitto mosquitto-clients",
        );
        let ports: Vec<u16> = std::iter::once(self.port).chain(self.tls_port).collect();
        let ready = wait_ready(&mut proc, &self.log_path(), || {
            ports.iter().all(|p| {
                TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], *p)),
                    Duration::from_millis(200),
                )
                .is_ok()
            })
        });
        self.proc = Some(proc);
        ready
    }

    fn fail(&self, what: &str) -> ! {
        panic!("mosquitto {what}; its log ends:\n{}", log_tail(&self.log_path(), 40))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(DROP_GRACE);
        }
    }
}
