//! The control socket for real: a `ControlServer` in a temporary folder, an in-test "engine" task
//! answering its commands, and clients — the library's and the `pmtr` binary's.

use pmtr::control::client::{self, ClientError};
use pmtr::control::server::{MAX_LINE, SOCKET_MODE};
use pmtr::control::{
    Caller, Command, ControlServer, Forced, Peer, RelayStatus, Request, Response, TriggerStatus,
};
use pmtr::relay::Level;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

fn status() -> Response {
    Response::Status {
        triggers: vec![TriggerStatus {
            name: "overvolt".into(),
            when: "L1U > 253".into(),
            state: "latched".into(),
            dry_run: false,
            stale: false,
            since: Some("2026-11-21T10:00:00Z".parse().unwrap()),
            values: "L1U=254.2".into(),
            relays: vec!["pump".into()],
        }],
        relays: vec![
            RelayStatus {
                name: "pump".into(),
                pin: 17,
                active_low: false,
                level: Level::Off,
                default: Level::On,
                forced: None,
                tripped_by: vec!["overvolt".into()],
            },
            RelayStatus {
                name: "heater".into(),
                pin: 27,
                active_low: true,
                level: Level::On,
                default: Level::Off,
                forced: Some(Forced { level: Level::On, until: None, by: "uid 0 pid 1".into() }),
                tripped_by: vec![],
            },
        ],
        neutral: vec![],
    }
}

/// What the in-test engine answers.
fn engine_answer(request: &Request) -> Response {
    let relays = ["pump", "heater"];
    match request {
        Request::Status => status(),
        Request::Force { relay, level, seconds } if relays.contains(&relay.as_str()) => Response::Done {
            message: match seconds {
                Some(s) => format!("relay {relay} forced {level} for {s} s"),
                None => format!("relay {relay} forced {level} until released"),
            },
        },
        Request::Release { relay } if relays.contains(&relay.as_str()) => {
            Response::Done { message: format!("relay {relay} released") }
        }
        Request::Force { relay, .. } | Request::Release { relay } => {
            Response::Error { message: format!("no relay `{relay}` (known: pump, heater)") }
        }
        Request::Reset { trigger } if trigger == "overvolt" => {
            Response::Done { message: "trigger overvolt reset".into() }
        }
        Request::Reset { trigger } => {
            Response::Error { message: format!("trigger `{trigger}` is not latched") }
        }
        Request::EnergySet { meter, .. } => Response::Error { message: format!("no books for {meter}") },
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Answers,
    /// Takes the commands and never answers.
    Silent,
}

struct Daemon {
    path: PathBuf,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    seen: Arc<Mutex<Vec<(Request, Peer)>>>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn seen(&self) -> Vec<(Request, Peer)> {
        self.seen.lock().unwrap().clone()
    }

    async fn stop(self) -> PathBuf {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.server).await.expect("stops at once").unwrap();
        self.path
    }
}

fn spawn_engine(mut commands: mpsc::Receiver<Command>, mode: Engine) -> Arc<Mutex<Vec<(Request, Peer)>>> {
    let seen = Arc::new(Mutex::new(vec![]));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut unanswered = vec![];
        while let Some(c) = commands.recv().await {
            let Caller::Socket(peer) = c.caller else { panic!("not a socket caller: {}", c.caller) };
            log.lock().unwrap().push((c.request.clone(), peer));
            match mode {
                Engine::Answers => {
                    let _ = c.reply.send(engine_answer(&c.request));
                }
                Engine::Silent => unanswered.push(c.reply),
            }
        }
    });
    seen
}

fn serve(dir: tempfile::TempDir, path: PathBuf, server: ControlServer, mode: Engine) -> Daemon {
    let (tx, rx) = mpsc::channel(8);
    let (stop, stopped) = watch::channel(false);
    let seen = spawn_engine(rx, mode);
    let server = tokio::spawn(server.run(tx, stopped));
    Daemon { path, stop, server, seen, _dir: dir }
}

async fn start() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let server = ControlServer::bind(&path).unwrap();
    serve(dir, path, server, Engine::Answers)
}

/// A raw connection, to send what the library's client never would.
struct Raw {
    rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: tokio::net::unix::OwnedWriteHalf,
}

impl Raw {
    async fn connect(path: &Path) -> Raw {
        let (rd, wr) = UnixStream::connect(path).await.unwrap().into_split();
        Raw { rd: BufReader::new(rd), wr }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.unwrap();
    }

    /// The next answer; None when the server closed the connection.
    async fn answer(&mut self) -> Option<Response> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(5), self.rd.read_line(&mut line))
            .await
            .expect("an answer in time")
            .unwrap();
        (n > 0).then(|| serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")))
    }
}

fn error_message(r: Response) -> String {
    match r {
        Response::Error { message } => message,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn request_and_response_round_trip() {
    let d = start().await;
    assert_eq!(client::request(&d.path, &Request::Status).await.unwrap(), status());
    let force = Request::Force { relay: "pump".into(), level: Level::On, seconds: Some(60) };
    assert_eq!(
        client::request(&d.path, &force).await.unwrap(),
        Response::Done { message: "relay pump forced on for 60 s".into() }
    );
    let unknown = Request::Release { relay: "nope".into() };
    let answer = client::request(&d.path, &unknown).await.unwrap();
    assert!(error_message(answer).contains("no relay `nope`"));
    assert_eq!(
        d.seen().into_iter().map(|(r, _)| r).collect::<Vec<_>>(),
        vec![Request::Status, force, unknown]
    );

    // Several requests on one connection, answered in order.
    let mut raw = Raw::connect(&d.path).await;
    raw.send(b"{\"request\":\"reset\",\"trigger\":\"overvolt\"}\n{\"request\":\"status\"}\n").await;
    assert_eq!(raw.answer().await, Some(Response::Done { message: "trigger overvolt reset".into() }));
    assert_eq!(raw.answer().await, Some(status()));
    d.stop().await;
}

/// This process's effective uid and gid: the owner of a file it creates.
fn me() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let f = tempfile::NamedTempFile::new().unwrap();
    let m = f.as_file().metadata().unwrap();
    (m.uid(), m.gid())
}

#[tokio::test]
async fn the_peer_is_the_caller() {
    let d = start().await;
    client::request(&d.path, &Request::Status).await.unwrap();
    let (_, peer) = d.seen().pop().unwrap();
    let (uid, gid) = me();
    assert_eq!(peer.uid, uid);
    assert_eq!(peer.gid, gid);
    assert_eq!(peer.pid, std::process::id() as i32);
    d.stop().await;
}

#[tokio::test]
async fn a_garbage_line_gets_an_error_and_the_connection_goes_on() {
    let d = start().await;
    let mut raw = Raw::connect(&d.path).await;
    raw.send(b"hello\n").await;
    let message = error_message(raw.answer().await.unwrap());
    assert!(message.contains("not a request") && message.contains("{\"request\":\"status\"}"), "{message}");
    raw.send(b"{\"request\":\"explode\"}\n\xff\xfe\n").await;
    error_message(raw.answer().await.unwrap());
    error_message(raw.answer().await.unwrap());
    // Blank lines are skipped, not answered.
    raw.send(b"\n  \n{\"request\":\"status\"}\n").await;
    assert_eq!(raw.answer().await, Some(status()));
    assert_eq!(d.seen().len(), 1, "only the good request reached the engine");
    d.stop().await;
}

#[tokio::test]
async fn an_oversize_line_gets_an_error_and_the_connection_goes_on() {
    let d = start().await;
    let mut raw = Raw::connect(&d.path).await;
    let mut big = vec![b'x'; MAX_LINE + 1];
    big.push(b'\n');
    // Written by another task: the server reads it while this one waits for the answer.
    let (rd, mut wr) = (raw.rd, raw.wr);
    let writer = tokio::spawn(async move {
        wr.write_all(&big).await.unwrap();
        wr.write_all(b"{\"request\":\"status\"}\n").await.unwrap();
        wr
    });
    raw = Raw { rd, wr: writer.await.unwrap() };
    let message = error_message(raw.answer().await.unwrap());
    assert!(message.contains("64 KiB"), "{message}");
    assert_eq!(raw.answer().await, Some(status()));
    // A line of exactly the limit is read (and is garbage here, not too long).
    let mut limit = vec![b' '; MAX_LINE - 2];
    limit.insert(0, b'{');
    limit.push(b'}');
    limit.push(b'\n');
    raw.send(&limit).await;
    let message = error_message(raw.answer().await.unwrap());
    assert!(message.contains("not a request"), "{message}");
    d.stop().await;
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "the stale file is there");
    let server = ControlServer::bind(&path).expect("a stale socket is replaced");
    let d = serve(dir, path, server, Engine::Answers);
    assert_eq!(client::request(&d.path, &Request::Status).await.unwrap(), status());
    d.stop().await;
}

#[tokio::test]
async fn a_live_socket_is_refused_and_left_working() {
    let d = start().await;
    let err = ControlServer::bind(&d.path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains("another pmtr is running"), "{err}");
    assert_eq!(client::request(&d.path, &Request::Status).await.unwrap(), status());
    d.stop().await;
}

#[test]
fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    std::fs::write(&path, "precious").unwrap();
    let err = ControlServer::bind(&path).unwrap_err().to_string();
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[test]
fn the_socket_has_mode_0660_in_a_folder_made_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/run/control.sock");
    let server = ControlServer::bind(&path).unwrap();
    assert_eq!(server.path(), path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, SOCKET_MODE);
    assert_eq!(SOCKET_MODE, 0o660);
    let names: Vec<_> =
        std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec!["control.sock"], "no temporary file left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_at_once() {
    let d = start().await;
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let path = d.path.clone();
            tokio::spawn(async move {
                let req = if i % 2 == 0 {
                    Request::Status
                } else {
                    Request::Force { relay: "heater".into(), level: Level::Off, seconds: Some(i) }
                };
                (req.clone(), client::request(&path, &req).await.unwrap())
            })
        })
        .collect();
    for c in clients {
        let (req, answer) = c.await.unwrap();
        assert_eq!(answer, engine_answer(&req));
    }
    assert_eq!(d.seen().len(), 20);
    d.stop().await;
}

#[tokio::test]
async fn a_slow_client_does_not_block_the_others() {
    let d = start().await;
    let mut slow = Raw::connect(&d.path).await;
    slow.send(b"{\"request\":").await;
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(client::request(&d.path, &Request::Status).await.unwrap(), status());
    }
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    // The slow one finishes its line and gets its answer too.
    slow.send(b"\"status\"}\n").await;
    assert_eq!(slow.answer().await, Some(status()));
    d.stop().await;
}

#[tokio::test]
async fn an_engine_that_does_not_answer_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let server = ControlServer::bind(&path).unwrap().with_reply_timeout(Duration::from_millis(200));
    let d = serve(dir, path, server, Engine::Silent);
    let started = Instant::now();
    let req = Request::Reset { trigger: "overvolt".into() };
    let message = error_message(client::request(&d.path, &req).await.unwrap());
    assert!(message.contains("the daemon did not answer within 200 ms"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(d.seen().len(), 1);
    d.stop().await;
}

#[tokio::test]
async fn an_engine_that_is_gone_gets_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let server = ControlServer::bind(&path).unwrap();
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(server.run(tx, stopped));
    let message = error_message(client::request(&path, &Request::Status).await.unwrap());
    assert!(message.contains("the daemon is stopping"), "{message}");
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn the_socket_is_removed_on_stop_and_connections_closed() {
    let d = start().await;
    let mut open = Raw::connect(&d.path).await;
    open.send(b"{\"request\":\"status\"}\n").await;
    assert_eq!(open.answer().await, Some(status()));
    let path = d.stop().await;
    assert!(!path.exists(), "socket file removed");
    assert_eq!(open.answer().await, None, "the open connection was closed");
    let err = client::request(&path, &Request::Status).await.unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
}

#[tokio::test]
async fn a_stop_sender_that_goes_away_stops_the_server() {
    let d = start().await;
    let Daemon { path, stop, server, _dir, .. } = d;
    drop(stop);
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
    assert!(!path.exists());
}

#[tokio::test]
async fn client_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("control.sock");
    let err = client::request(&missing, &Request::Status).await.unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "no pmtr daemon listening at {}: is `pmtr run` running? (systemctl status pmtr)",
            missing.display()
        )
    );
    // A stale socket file: nobody listens either.
    drop(std::os::unix::net::UnixListener::bind(&missing).unwrap());
    let err = client::request(&missing, &Request::Status).await.unwrap_err();
    assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
    std::fs::remove_file(&missing).unwrap();

    // A listener that answers nonsense, closes at once, or never answers.
    let odd = tokio::net::UnixListener::bind(&missing).unwrap();
    let server = tokio::spawn(async move {
        let mut held = vec![];
        for answer in [Some(&b"nonsense\n"[..]), None, Some(&b""[..])] {
            let (mut s, _) = odd.accept().await.unwrap();
            let mut line = String::new();
            let (rd, mut wr) = s.split();
            BufReader::new(rd).read_line(&mut line).await.unwrap();
            match answer {
                Some(bytes) => {
                    wr.write_all(bytes).await.unwrap();
                    held.push(s);
                }
                None => drop(s),
            }
        }
        held
    });
    let err = client::request(&missing, &Request::Status).await.unwrap_err();
    assert!(matches!(err, ClientError::BadAnswer { .. }) && err.to_string().contains("bad answer"), "{err}");
    let err = client::request(&missing, &Request::Status).await.unwrap_err();
    assert!(err.to_string().contains("closed the connection without answering"), "{err}");
    let err =
        client::request_within(&missing, &Request::Status, Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("did not answer within 0.2 s"), "{err}");
    drop(server.await.unwrap());
}

#[tokio::test]
async fn permission_denied_says_to_join_the_group() {
    if me().0 == 0 {
        eprintln!("skipped here: root is never denied (see cli_the_socket_admits_its_group_only)");
        return;
    }
    let d = start().await;
    std::fs::set_permissions(&d.path, std::fs::Permissions::from_mode(0o000)).unwrap();
    let err = client::request(&d.path, &Request::Status).await.unwrap_err();
    assert!(matches!(err, ClientError::PermissionDenied { .. }), "{err}");
    assert!(err.to_string().contains("add yourself to the socket's group"), "{err}");
    d.stop().await;
}

// ---- the `pmtr` binary against the in-test daemon ----

async fn pmtr(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pmtr")).args(&args).output().expect("run pmtr")
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_relay_list_as_a_table_and_as_json() {
    let d = start().await;
    let socket = d.path.to_str().unwrap();
    let o = pmtr(&["relay", "list", "--socket", socket]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("RELAY") && lines[0].contains("TRIPPED BY"), "{out}");
    assert!(
        lines[1].starts_with("pump") && lines[1].contains("17") && lines[1].ends_with("overvolt"),
        "{out}"
    );
    assert!(
        lines[2].contains("27 (active low)") && lines[2].contains("on until released by uid 0 pid 1"),
        "{out}"
    );

    let o = pmtr(&["relay", "list", "--socket", socket, "--json"]).await;
    assert!(o.status.success(), "{:?}", text(&o));
    let relays: Vec<RelayStatus> = serde_json::from_slice(&o.stdout).unwrap();
    let Response::Status { relays: expected, .. } = status() else { unreachable!() };
    assert_eq!(relays, expected);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_trigger_list_and_reset() {
    let d = start().await;
    let socket = d.path.to_str().unwrap();
    let o = pmtr(&["trigger", "list", "--socket", socket]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.starts_with("TRIGGER") && out.contains("DRY RUN"), "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with("overvolt  latched"), "{out}");
    assert!(out.contains("L1U=254.2"), "{out}");

    let o = pmtr(&["trigger", "list", "--json", "--socket", socket]).await;
    let triggers: Vec<TriggerStatus> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(triggers[0].name, "overvolt");

    let o = pmtr(&["trigger", "reset", "overvolt", "--socket", socket]).await;
    assert_eq!(text(&o).0, "trigger overvolt reset\n");
    assert!(o.status.success());
    let o = pmtr(&["trigger", "reset", "calm", "--socket", socket]).await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o), (String::new(), "error: trigger `calm` is not latched\n".to_string()));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_relay_force_and_release() {
    let d = start().await;
    let socket = d.path.to_str().unwrap();
    let o = pmtr(&["relay", "force", "pump", "on", "--for", "2h", "--socket", socket]).await;
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(text(&o).0, "relay pump forced on for 7200 s\n");
    let o = pmtr(&["relay", "force", "heater", "OFF", "--socket", socket]).await;
    assert_eq!(text(&o).0, "relay heater forced off until released\n");
    let o = pmtr(&["relay", "release", "pump", "--socket", socket]).await;
    assert_eq!(text(&o).0, "relay pump released\n");
    let o = pmtr(&["relay", "force", "fan", "on", "--socket", socket]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("error: no relay `fan`"), "{:?}", text(&o));
    let seen: Vec<_> = d.seen().into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        seen[..3],
        [
            Request::Force { relay: "pump".into(), level: Level::On, seconds: Some(7200) },
            Request::Force { relay: "heater".into(), level: Level::Off, seconds: None },
            Request::Release { relay: "pump".into() },
        ]
    );
    // The pmtr process is the peer.
    assert!(d.seen().iter().all(|(_, p)| p.pid != std::process::id() as i32 && p.pid > 0));

    // Refused by the command line: nothing reaches the daemon.
    for bad in [&["maybe"][..], &["on", "--for", "500ms"], &["on", "--for", "soon"]] {
        let mut args = vec!["relay", "force", "pump"];
        args.extend_from_slice(bad);
        args.extend_from_slice(&["--socket", socket]);
        let o = pmtr(&args).await;
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {:?}", text(&o));
    }
    assert_eq!(d.seen().len(), 4);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_finds_the_socket_in_the_configuration() {
    let d = start().await;
    let cfg = d._dir.path().join("pmtr.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\n\
             [[bus]]\nname = \"house\"\nports = [\"/dev/ttyUSB*\"]\n\
             [[meter]]\nname = \"main\"\nmodel = \"pzem-016\"\naddress = 4\n",
            d._dir.path().display(),
            d.path.display()
        ),
    )
    .unwrap();
    let o = pmtr(&["relay", "release", "heater", "--config", cfg.to_str().unwrap()]).await;
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(text(&o).0, "relay heater released\n");
    // --socket wins over the configuration.
    let elsewhere = d._dir.path().join("elsewhere.sock");
    let o =
        pmtr(&["relay", "list", "-c", cfg.to_str().unwrap(), "--socket", elsewhere.to_str().unwrap()]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains(&elsewhere.display().to_string()), "{:?}", text(&o));
    d.stop().await;
}

#[test]
fn cli_without_a_daemon_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pmtr"))
        .args(["relay", "list", "--socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let (out, err) = text(&o);
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "error: no pmtr daemon listening at {}: is `pmtr run` running? (systemctl status pmtr)\n",
            socket.display()
        )
    );
    // No configuration either: its errors, and the way out.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pmtr"))
        .args(["trigger", "list", "--config", dir.path().join("none.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o).1;
    assert!(err.contains("cannot read the file") && err.contains("--socket PATH"), "{err}");
}

/// As root, runs `pmtr` as another user (setpriv) against the 0660 socket: a stranger is turned
/// away with the permission message, a member of the socket's group gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_the_socket_admits_its_group_only() {
    if me().0 != 0 || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root and setpriv to act as another user");
        return;
    }
    let d = start().await;
    let (_, group) = me();
    std::fs::set_permissions(d._dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = d.path.to_str().unwrap();
    let as_user = |gid: u32| {
        let gid = gid.to_string();
        let socket = socket.to_string();
        async move {
            let args = ["--reuid", "65534", "--regid", &gid, "--clear-groups", env!("CARGO_BIN_EXE_pmtr")];
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            tokio::task::spawn_blocking(move || {
                std::process::Command::new("/usr/bin/setpriv")
                    .args(&args)
                    .args(["relay", "release", "pump", "--socket", &socket])
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let o = as_user(65534).await;
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert_eq!(
        text(&o).1,
        format!(
            "error: permission denied on {socket}: run as root or add yourself to the socket's group (ls -l {socket})\n"
        )
    );
    assert!(d.seen().is_empty());
    let o = as_user(group).await;
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(d.seen()[0].1.uid, 65534, "the daemon sees who asked");
    d.stop().await;
}
