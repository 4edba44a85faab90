//! The local status API: JSON under `/api/`, Prometheus text at `/metrics`, and the manual
//! relay controls (force, release, reset), which go to the trigger task through the same
//! command channel as the control socket.
//!
//! Access: reads from the loopback interface need nothing; reads from elsewhere need the token
//! (`Authorization: Bearer TOKEN`). Writes always need the token; without one configured they
//! are refused (403), so that the API never gives a local user more than the control socket's
//! file mode does. Tokens are compared in constant time.
//!
//! Handlers read shared snapshots (no lock is held across an await) and never wait on a bus
//! or a relay: a slow client costs only its own connection.
//!
//! Connections: at most [`Limits::max_connections`] at once (one more is closed at once, so
//! descriptors stay for the spool, the ports and the state files); a head must arrive within
//! 10 s, a body within 10 s, and a connection that moves no byte for 30 s is closed. With a
//! certificate (`[status] tls_cert`, `tls_key`) the listener speaks HTTPS only.

use super::{AlertView, Parts, SinkView, Snapshot, Tally};
use crate::bus::status::StatusBoard;
use crate::config::Config;
use crate::control::{Caller, Command, Request, Response};
use crate::mqtt::run::MqttCounters;
use crate::relay::Level;
use crate::store::SinkStatus;
use crate::sync::Locked;
use chrono::{DateTime, Utc};
use hyper::body::HttpBody;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Body, Method, StatusCode};
use serde::Deserialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

/// The largest request body read (a force is a few dozen bytes).
pub const MAX_BODY: usize = 4096;
/// How long a request waits for the trigger task.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// A client must send its request head within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send its request body within this time.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that moves no byte for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest force, as the control socket allows it.
const MAX_FORCE: Duration = Duration::from_secs(366 * 86_400);

/// What the API can be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Status,
    Meters,
    Meter(String),
    Ports,
    Triggers,
    Relays,
    Sinks,
    Metrics,
    /// The page at `/` (no data in it: it reads the API like any client).
    Page,
    /// The last hour of the meters (`?meter=NAME` for one), for the page's charts.
    History,
    Force(String),
    Release(String),
    Reset(String),
}

impl Route {
    /// Writes change a relay.
    pub fn is_write(&self) -> bool {
        matches!(self, Route::Force(_) | Route::Release(_) | Route::Reset(_))
    }
}

/// Why a request is refused before it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    /// The path exists with these methods only.
    Method(&'static str),
}

/// The route of `method` `path` (without its query).
pub fn route(method: &Method, path: &str) -> Result<Route, Refusal> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let (want, r) = match segments.as_slice() {
        [] => ("GET", Route::Page),
        ["healthz"] => ("GET", Route::Health),
        ["metrics"] => ("GET", Route::Metrics),
        ["api", "status"] => ("GET", Route::Status),
        ["api", "meters"] => ("GET", Route::Meters),
        ["api", "meters", name] if !name.is_empty() => ("GET", Route::Meter(name.to_string())),
        ["api", "ports"] => ("GET", Route::Ports),
        ["api", "triggers"] => ("GET", Route::Triggers),
        ["api", "relays"] => ("GET", Route::Relays),
        ["api", "sinks"] => ("GET", Route::Sinks),
        ["api", "history"] => ("GET", Route::History),
        ["api", "relays", name, "force"] if !name.is_empty() => ("POST", Route::Force(name.to_string())),
        ["api", "relays", name, "release"] if !name.is_empty() => ("POST", Route::Release(name.to_string())),
        ["api", "triggers", name, "reset"] if !name.is_empty() => ("POST", Route::Reset(name.to_string())),
        _ => return Err(Refusal::NotFound),
    };
    if method.as_str() == want || (want == "GET" && method == Method::HEAD) {
        Ok(r)
    } else {
        Err(Refusal::Method(want))
    }
}

/// Why access is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// 401: a token is needed and none was given.
    TokenMissing,
    /// 401: the token given is not the one configured.
    TokenWrong,
    /// 403: writes are off (no token configured).
    WritesOff,
    /// 403: reads from outside the loopback interface with no token configured.
    NotLoopback,
}

/// Equal, in a time that depends only on the lengths.
pub fn same_token(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The access rules. `authorization` is the `Authorization` header as sent.
pub fn authorize(
    token: Option<&str>,
    loopback: bool,
    authorization: Option<&str>,
    write: bool,
) -> Result<(), Denied> {
    let given = authorization.map(|h| {
        let h = h.trim();
        h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")).unwrap_or("").trim()
    });
    match (token, given) {
        (Some(t), Some(g)) => {
            if same_token(t.as_bytes(), g.as_bytes()) {
                Ok(())
            } else {
                Err(Denied::TokenWrong)
            }
        }
        (Some(_), None) if write || !loopback => Err(Denied::TokenMissing),
        (Some(_), None) => Ok(()),
        (None, _) if write => Err(Denied::WritesOff),
        (None, _) if !loopback => Err(Denied::NotLoopback),
        (None, _) => Ok(()),
    }
}

/// The body of `POST /api/relays/{name}/force`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceBody {
    pub level: Level,
    /// How long, as a duration string ("30m", "2h"); none: until released.
    #[serde(default, rename = "for")]
    pub duration: Option<String>,
    /// The same in seconds (give `for` or `seconds`, not both).
    #[serde(default)]
    pub seconds: Option<u64>,
}

/// Why a force request's body is refused (a 400, with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadForce {
    /// Not the JSON of a force, and why.
    #[error("bad body ({0}): send JSON like {{\"level\":\"off\",\"for\":\"2h\"}} (`for` is optional)")]
    Body(String),
    #[error("give `for` or `seconds`, not both")]
    Both,
    /// `for` is not a duration, and why.
    #[error("`for`: {0}")]
    Duration(String),
    #[error("`for`: a force lasts from 1s to 366 days")]
    ForTooLong,
    #[error("`seconds`: a force lasts from 1 s to 366 days")]
    SecondsTooLong,
}

/// The force request of a body, or why it is refused.
pub fn force_request(relay: &str, body: &[u8]) -> Result<Request, BadForce> {
    let b: ForceBody = serde_json::from_slice(body).map_err(|e| BadForce::Body(e.to_string()))?;
    let seconds = match (&b.duration, b.seconds) {
        (Some(_), Some(_)) => return Err(BadForce::Both),
        (Some(d), None) => {
            let d = crate::config::parse_duration(d).map_err(BadForce::Duration)?;
            if d < Duration::from_secs(1) || d > MAX_FORCE {
                return Err(BadForce::ForTooLong);
            }
            Some(d.as_secs())
        }
        (None, Some(s)) if s == 0 || s > MAX_FORCE.as_secs() => return Err(BadForce::SecondsTooLong),
        (None, s) => s,
    };
    Ok(Request::Force { relay: relay.to_owned(), level: b.level, seconds })
}

/// Everything the API reads, shared with the rest of the daemon.
pub struct Sources {
    pub gateway: String,
    pub started: DateTime<Utc>,
    pub meters: Arc<StatusBoard>,
    pub sinks: Vec<Arc<SinkStatus>>,
    /// The trigger task (None without triggers and relays).
    pub commands: Option<mpsc::Sender<Command>>,
    pub alerts: Option<Arc<Mutex<crate::alert::run::AlertCounters>>>,
    pub mqtt: Option<Arc<Mutex<MqttCounters>>>,
    /// The Modbus TCP server's counters and its address.
    pub modbus_server: Option<(Arc<crate::modbus_server::Counters>, std::net::SocketAddr)>,
    pub tally: Arc<Tally>,
    /// The last hour of each configured meter, sampled from `meters` while the API runs.
    pub history: Arc<super::history::History>,
    pub relays: Vec<String>,
    pub triggers: Vec<String>,
    /// The energy books (None in tests that do not keep them).
    pub energy: Option<Arc<Mutex<crate::energy::Book>>>,
}

impl Sources {
    /// The names of `config`'s relays and triggers, the rest empty.
    pub fn new(config: &Config, meters: Arc<StatusBoard>) -> Sources {
        Sources {
            gateway: config.gateway.name.clone(),
            started: Utc::now(),
            meters,
            sinks: Vec::new(),
            commands: None,
            alerts: None,
            mqtt: None,
            modbus_server: None,
            tally: Arc::new(Tally::default()),
            history: Arc::new(super::history::History::new(config.meters.iter().map(|m| m.name.as_str()))),
            relays: config.relays.iter().map(|r| r.name.clone()).collect(),
            triggers: config.triggers.iter().map(|t| t.name.clone()).collect(),
            energy: None,
        }
    }

    /// Asks the trigger task, waiting at most [`CONTROL_TIMEOUT`].
    async fn ask(&self, request: Request, caller: Caller) -> Result<Response, String> {
        let Some(commands) = &self.commands else {
            return Err("no triggers or relays are configured".into());
        };
        let (reply, answer) = oneshot::channel();
        let exchange = async {
            commands
                .send(Command::within(request, caller, reply, CONTROL_TIMEOUT))
                .await
                .map_err(|_| "the daemon is stopping".to_string())?;
            answer.await.map_err(|_| "the trigger task dropped the request".to_string())
        };
        tokio::time::timeout(CONTROL_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err("the trigger task did not answer within 5 s".into()))
    }

    /// Everything now; with `control`, the triggers and relays too (one question to the
    /// trigger task).
    pub async fn snapshot(&self, control: bool) -> Snapshot {
        let (control, neutral) = if control && self.commands.is_some() {
            match self.ask(Request::Status, Caller::Internal("status API")).await {
                Ok(Response::Status { triggers, relays, neutral }) => (Ok((triggers, relays)), neutral),
                Ok(other) => (Err(format!("unexpected answer {other:?}")), Vec::new()),
                Err(e) => (Err(e), Vec::new()),
            }
        } else {
            (Ok((Vec::new(), Vec::new())), Vec::new())
        };
        Snapshot::assemble(Parts {
            gateway: self.gateway.clone(),
            started: self.started,
            time: Utc::now(),
            meters: self.meters.snapshot(),
            control,
            neutral,
            sinks: self
                .sinks
                .iter()
                .map(|s| SinkView {
                    name: s.name.clone(),
                    kind: s.kind.to_owned(),
                    target: s.target.clone(),
                    state: s.snapshot(),
                })
                .collect(),
            alerts: self.alerts.as_ref().map(|a| AlertView::from(&*a.locked())),
            mqtt: self.mqtt.as_ref().map(|m| m.locked().clone()),
            modbus_server: self
                .modbus_server
                .as_ref()
                .map(|(c, listen)| crate::modbus_server::ModbusServer::snapshot(c, *listen)),
            transitions: self.tally.transitions(),
            energy: self.energy.as_ref().map_or(Vec::new(), |b| b.locked().views(Utc::now())),
        })
    }
}

/// How long connections may take and how many are served at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once (`[status] max_connections`); one more is closed at once.
    pub max_connections: usize,
    /// A request head (and a TLS handshake) must arrive within this.
    pub head: Duration,
    /// A request body must arrive within this.
    pub body: Duration,
    /// A connection with no byte read or written for this long is closed: an idle keep-alive,
    /// a client that stopped sending, or one that pipelines requests without reading the answers.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: crate::config::DEFAULT_STATUS_CONNECTIONS,
            head: HEADER_TIMEOUT,
            body: BODY_TIMEOUT,
            idle: IDLE_TIMEOUT,
        }
    }
}

/// A bound status API, ready to [`run`](StatusServer::run).
pub struct StatusServer {
    listener: std::net::TcpListener,
    token: Option<String>,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl StatusServer {
    /// Binds `listen` now, so that a taken port stops pmtr at start with a clear message.
    pub fn bind(listen: SocketAddr, token: Option<String>) -> std::io::Result<StatusServer> {
        let listener = std::net::TcpListener::bind(listen).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "status API: cannot listen on {listen}: {e} (another pmtr running? set [status] listen \
                     to another port, or enabled = false)"
                ),
            )
        })?;
        listener.set_nonblocking(true)?;
        Ok(StatusServer { listener, token, limits: Limits::default(), tls: None })
    }

    /// Serves with these limits instead of the defaults.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = Limits { max_connections: limits.max_connections.max(1), ..limits };
        self
    }

    /// Serves HTTPS only, with this server configuration (from `[status] tls_cert`/`tls_key`).
    pub fn with_tls(mut self, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        self.tls = tls;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` turns true, then lets the requests in flight finish (at most
    /// [`STOP_GRACE`]).
    pub async fn run(self, sources: Arc<Sources>, mut stop: watch::Receiver<bool>) {
        let listener = match tokio::net::TcpListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "status API: cannot serve");
                return;
            }
        };
        // The page's charts: the latest readings, sampled once a second while the API runs.
        tokio::spawn(sources.history.clone().run(sources.meters.clone(), stop.clone()));
        let shared = Arc::new(Shared {
            sources,
            token: self.token,
            limits: self.limits,
            tls: self.tls.map(tokio_rustls::TlsAcceptor::from),
        });
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        let mut connections = tokio::task::JoinSet::new();
        let mut refusals = RefusalLog::default();
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stop.wait_for(|s| *s) => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (EMFILE) or a connection reset before accept: wait a
                    // little rather than spin on a listener that stays readable.
                    refusals.accept_failed(&e);
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                refusals.over_cap(remote, self.limits.max_connections);
                if shared.tls.is_none() {
                    let _ = stream.try_write(BUSY.as_bytes());
                }
                drop(stream);
                continue;
            };
            connections.spawn(connection(stream, remote, shared.clone(), permit, stop.clone()));
        }
        drop(listener);
        let drained = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_GRACE, drained).await.is_err() {
            connections.abort_all();
        }
    }
}

/// What every connection of one server shares.
struct Shared {
    sources: Arc<Sources>,
    token: Option<String>,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The answer to a connection over the cap (plain HTTP only), written if the socket takes it.
const BUSY: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
                    Connection: close\r\nContent-Length: 68\r\n\r\n\
                    {\"error\":\"too many connections to the status API: try again later\"}\n";
/// How long a failed accept (no descriptor left) waits before the next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How long a stop waits for the requests in flight.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often refused connections are logged at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Refused connections and failed accepts, logged at most once a minute each.
#[derive(Default)]
struct RefusalLog {
    refused: u64,
    refused_logged: Option<tokio::time::Instant>,
    failed: u64,
    failed_logged: Option<tokio::time::Instant>,
}

impl RefusalLog {
    fn due(last: &mut Option<tokio::time::Instant>) -> bool {
        let now = tokio::time::Instant::now();
        if last.is_some_and(|t| now < t + REFUSAL_LOG_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    fn over_cap(&mut self, remote: SocketAddr, cap: usize) {
        self.refused += 1;
        if Self::due(&mut self.refused_logged) {
            tracing::warn!(
                client = %remote,
                refused = self.refused,
                "status API: {cap} connections open ([status] max_connections): new ones are closed at once"
            );
        }
    }

    fn accept_failed(&mut self, e: &std::io::Error) {
        self.failed += 1;
        if Self::due(&mut self.failed_logged) {
            tracing::warn!(error = %e, failed = self.failed, "status API: cannot accept a connection");
        }
    }
}

/// When a connection last moved a byte, in milliseconds since it was accepted.
#[derive(Clone)]
struct Activity {
    start: tokio::time::Instant,
    last: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Activity { start: tokio::time::Instant::now(), last: Arc::new(AtomicU64::new(0)) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// A stream that records its [`Activity`].
struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One connection, holding its `permit` until it closes.
async fn connection(
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
    stop: watch::Receiver<bool>,
) {
    let _permit = permit;
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let io = Watched { inner: stream, activity: activity.clone() };
    match &shared.tls {
        None => serve(io, remote, &shared, &activity, stop).await,
        Some(acceptor) => match tokio::time::timeout(shared.limits.head, acceptor.accept(io)).await {
            Ok(Ok(tls)) => serve(tls, remote, &shared, &activity, stop).await,
            Ok(Err(e)) => tracing::debug!(client = %remote, error = %e, "status API: TLS handshake failed"),
            Err(_) => tracing::debug!(client = %remote, "status API: no TLS handshake in time"),
        },
    }
}

/// HTTP/1.1 on `io` until the client closes, goes idle, or the server stops.
async fn serve<I>(
    io: I,
    remote: SocketAddr,
    shared: &Arc<Shared>,
    activity: &Activity,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let for_service = shared.clone();
    let service = service_fn(move |req| {
        let shared = for_service.clone();
        async move {
            let reply =
                handle(req, remote, &shared.sources, shared.token.as_deref(), shared.limits.body).await;
            Ok::<_, Infallible>(reply)
        }
    });
    let conn = hyper::server::conn::Http::new()
        .http1_only(true)
        .http1_keep_alive(true)
        .http1_header_read_timeout(shared.limits.head)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let idle = shared.limits.idle;
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %remote, error = %e, "status API: connection ended");
                }
                return;
            }
            _ = tokio::time::sleep_until(activity.last() + idle) => {
                if activity.last() + idle <= tokio::time::Instant::now() {
                    tracing::debug!(client = %remote, "status API: connection idle for {idle:?}, closed");
                    return;
                }
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

type Reply = hyper::Response<Body>;

fn json_reply<T: serde::Serialize>(status: StatusCode, v: &T) -> Reply {
    let body = serde_json::to_vec_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    let mut r = hyper::Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    json_reply(status, &serde_json::json!({ "error": message.into() }))
}

/// Reads the body, at most [`MAX_BODY`] bytes within `within`.
async fn body(b: Body, within: Duration) -> Result<Vec<u8>, Reply> {
    match tokio::time::timeout(within, body_bytes(b)).await {
        Ok(read) => read,
        Err(_) => {
            Err(error(StatusCode::REQUEST_TIMEOUT, format!("the body did not arrive within {within:?}")))
        }
    }
}

async fn body_bytes(mut b: Body) -> Result<Vec<u8>, Reply> {
    let too_large =
        || error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is limited to {MAX_BODY} bytes"));
    if b.size_hint().lower() > MAX_BODY as u64 {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) = b.data().await {
        let chunk =
            chunk.map_err(|e| error(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")))?;
        if out.len() + chunk.len() > MAX_BODY {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn handle(
    req: hyper::Request<Body>,
    remote: SocketAddr,
    sources: &Sources,
    token: Option<&str>,
    body_timeout: Duration,
) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = match route(&method, &path) {
        Ok(r) => r,
        Err(Refusal::NotFound) => {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "no such endpoint {path}: GET /api/status, /api/meters, /api/meters/NAME, /api/ports, \
                     /api/triggers, /api/relays, /api/sinks, /api/history, /metrics, /healthz, / (the page); POST \
                     /api/relays/NAME/force, /api/relays/NAME/release, /api/triggers/NAME/reset"
                ),
            )
        }
        Err(Refusal::Method(allowed)) => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}: use {allowed}"),
            );
            r.headers_mut().insert(ALLOW, HeaderValue::from_static(allowed));
            return r;
        }
    };
    let loopback = remote.ip().is_loopback();
    // The page and the health check carry no data; the page reads the API with the token.
    if route != Route::Health && route != Route::Page {
        let authorization = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        if let Err(denied) = authorize(token, loopback, authorization, route.is_write()) {
            if route.is_write() || !loopback {
                tracing::warn!(client = %remote, path = %path, reason = ?denied, "status API: request refused");
            }
            return refused(denied);
        }
    }
    match route {
        Route::Health => json_reply(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        Route::Page => page(),
        Route::History => {
            let query = req.uri().query().unwrap_or("");
            let meter = query_value(query, "meter");
            let since = query_value(query, "since").and_then(|s| s.parse::<i64>().ok());
            match sources.history.json(Utc::now(), meter.as_deref(), since) {
                Some(v) => {
                    let mut r = hyper::Response::new(Body::from(v.to_string()));
                    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    r
                }
                None => error(
                    StatusCode::NOT_FOUND,
                    format!("no meter {:?} in the configuration", meter.unwrap_or_default()),
                ),
            }
        }
        Route::Metrics => {
            let text = super::metrics::render(&sources.snapshot(true).await);
            let mut r = hyper::Response::new(Body::from(text));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            r
        }
        Route::Status => json_reply(StatusCode::OK, &sources.snapshot(true).await),
        Route::Meters => json_reply(StatusCode::OK, &sources.snapshot(false).await.meters),
        Route::Ports => json_reply(StatusCode::OK, &sources.snapshot(false).await.ports),
        Route::Sinks => json_reply(StatusCode::OK, &sources.snapshot(false).await.sinks),
        Route::Meter(name) => match sources.snapshot(false).await.meter(&name) {
            Some(m) => json_reply(StatusCode::OK, m),
            None => error(StatusCode::NOT_FOUND, format!("no meter {name:?} in the configuration")),
        },
        Route::Triggers | Route::Relays => {
            let s = sources.snapshot(true).await;
            if let Some(e) = s.control_error {
                return error(StatusCode::SERVICE_UNAVAILABLE, e);
            }
            if route == Route::Triggers {
                json_reply(StatusCode::OK, &s.triggers)
            } else {
                json_reply(StatusCode::OK, &s.relays)
            }
        }
        Route::Force(relay) | Route::Release(relay) if !sources.relays.contains(&relay) => {
            error(StatusCode::NOT_FOUND, format!("no relay {relay:?} in the configuration"))
        }
        Route::Reset(trigger) if !sources.triggers.contains(&trigger) => {
            error(StatusCode::NOT_FOUND, format!("no trigger {trigger:?} in the configuration"))
        }
        Route::Force(relay) => {
            let bytes = match body(req.into_body(), body_timeout).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match force_request(&relay, &bytes) {
                Ok(request) => act(sources, request, remote).await,
                Err(why) => error(StatusCode::BAD_REQUEST, why.to_string()),
            }
        }
        Route::Release(relay) => act(sources, Request::Release { relay }, remote).await,
        Route::Reset(trigger) => act(sources, Request::Reset { trigger }, remote).await,
    }
}

/// The page at `/`, compiled in.
pub const PAGE: &str = include_str!("page.html");

fn page() -> Reply {
    let mut r = hyper::Response::new(Body::from(PAGE));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Nothing from elsewhere: the page reads only this API.
    h.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
             img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    r
}

/// The value of `key` in a query string (`meter=main&x=1`), `%XX` and `+` decoded.
pub fn query_value(query: &str, key: &str) -> Option<String> {
    let raw = query.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(bytes[i + 1]) * 16 + hex(bytes[i + 2]));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn refused(denied: Denied) -> Reply {
    let (status, message) = match denied {
        Denied::TokenMissing => {
            (StatusCode::UNAUTHORIZED, "a token is needed: send `Authorization: Bearer TOKEN`")
        }
        Denied::TokenWrong => (StatusCode::UNAUTHORIZED, "wrong token"),
        Denied::WritesOff => (
            StatusCode::FORBIDDEN,
            "relay control over HTTP is off: set `token` (or `token_file`) in [status], or use `pmtr relay` \
             and `pmtr trigger` on the gateway",
        ),
        Denied::NotLoopback => {
            (StatusCode::FORBIDDEN, "only the loopback interface may read without a token")
        }
    };
    let mut r = error(status, message);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"pmtr\""));
    }
    r
}

/// A force, release or reset: to the trigger task, logged with who asked.
async fn act(sources: &Sources, request: Request, remote: SocketAddr) -> Reply {
    let caller = Caller::Http(remote);
    tracing::info!(by = %caller, request = ?request, "status API: relay control asked");
    match sources.ask(request, caller).await {
        Ok(Response::Done { message }) => {
            json_reply(StatusCode::OK, &serde_json::json!({ "message": message }))
        }
        Ok(Response::Error { message }) => error(StatusCode::CONFLICT, message),
        Ok(other) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected answer {other:?}")),
        Err(message) => error(StatusCode::SERVICE_UNAVAILABLE, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_their_methods() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(route(&get, "/api/status"), Ok(Route::Status));
        assert_eq!(route(&get, "/api/status/"), Ok(Route::Status));
        assert_eq!(route(&Method::HEAD, "/metrics"), Ok(Route::Metrics));
        assert_eq!(route(&get, "/api/meters/mainA"), Ok(Route::Meter("mainA".into())));
        assert_eq!(route(&post, "/api/relays/pump/force"), Ok(Route::Force("pump".into())));
        assert_eq!(route(&post, "/api/relays/pump/release"), Ok(Route::Release("pump".into())));
        assert_eq!(route(&post, "/api/triggers/t/reset"), Ok(Route::Reset("t".into())));
        assert_eq!(route(&get, "/api/relays/pump/force"), Err(Refusal::Method("POST")));
        assert_eq!(route(&post, "/api/status"), Err(Refusal::Method("GET")));
        assert_eq!(route(&Method::DELETE, "/metrics"), Err(Refusal::Method("GET")));
        assert_eq!(route(&get, "/api/nothing"), Err(Refusal::NotFound));
        assert_eq!(route(&get, "/"), Ok(Route::Page));
        assert_eq!(route(&get, "/api/history"), Ok(Route::History));
        assert_eq!(route(&post, "/"), Err(Refusal::Method("GET")));
        assert_eq!(route(&get, "/api/meters//x"), Err(Refusal::NotFound));
        assert!(Route::Force("x".into()).is_write() && !Route::Relays.is_write());
    }

    #[test]
    fn who_may_do_what() {
        let t = Some("0123456789abcdef");
        let good = Some("Bearer 0123456789abcdef");
        // No token configured: the loopback reads, nobody writes.
        assert_eq!(authorize(None, true, None, false), Ok(()));
        assert_eq!(authorize(None, true, None, true), Err(Denied::WritesOff));
        assert_eq!(authorize(None, true, good, true), Err(Denied::WritesOff));
        assert_eq!(authorize(None, false, None, false), Err(Denied::NotLoopback));
        // A token: the loopback reads without it; off loopback and for writes it is needed.
        assert_eq!(authorize(t, true, None, false), Ok(()));
        assert_eq!(authorize(t, false, None, false), Err(Denied::TokenMissing));
        assert_eq!(authorize(t, false, good, false), Ok(()));
        assert_eq!(authorize(t, true, None, true), Err(Denied::TokenMissing));
        assert_eq!(authorize(t, true, good, true), Ok(()));
        assert_eq!(authorize(t, false, good, true), Ok(()));
        assert_eq!(authorize(t, true, Some("Bearer 0123456789abcdeX"), true), Err(Denied::TokenWrong));
        assert_eq!(
            authorize(t, true, Some("Basic abc"), false),
            Err(Denied::TokenWrong),
            "a wrong token is never ignored"
        );
        assert_eq!(authorize(t, false, Some("Bearer"), false), Err(Denied::TokenWrong));
    }

    #[test]
    fn query_values() {
        assert_eq!(query_value("meter=main", "meter").as_deref(), Some("main"));
        assert_eq!(query_value("x=1&meter=a%20b+c", "meter").as_deref(), Some("a b c"));
        assert_eq!(query_value("meters=x", "meter"), None);
        assert_eq!(query_value("meter=%4", "meter").as_deref(), Some("%4"));
        assert_eq!(query_value("meter=%zz%", "meter").as_deref(), Some("%zz%"));
        assert_eq!(query_value("meter=%+f", "meter").as_deref(), Some("% f"));
        assert_eq!(query_value("meter=%ff", "meter"), None, "not UTF-8");
    }

    #[test]
    fn the_page_needs_nothing_from_elsewhere() {
        for needle in
            ["src=\"http", "href=\"http", "src=\"//", "href=\"//", "url(", "@import", "fetch(\"http"]
        {
            assert!(!PAGE.contains(needle), "the page refers to {needle}");
        }
        assert!(PAGE.contains("<meta name=\"viewport\""));
        assert!(PAGE.len() < 40_000, "{} bytes", PAGE.len());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abc", b"abd"));
        assert!(!same_token(b"abc", b"abcd"));
        assert!(!same_token(b"", b"a"));
    }

    #[test]
    fn force_bodies() {
        assert_eq!(
            force_request("pump", br#"{"level":"off","for":"2h"}"#),
            Ok(Request::Force { relay: "pump".into(), level: Level::Off, seconds: Some(7200) })
        );
        assert_eq!(
            force_request("pump", br#"{"level":"on"}"#),
            Ok(Request::Force { relay: "pump".into(), level: Level::On, seconds: None })
        );
        assert_eq!(
            force_request("pump", br#"{"level":"on","seconds":60}"#),
            Ok(Request::Force { relay: "pump".into(), level: Level::On, seconds: Some(60) })
        );
        for bad in [
            &br#"{"level":"up"}"#[..],
            br#"{"level":"on","for":"2 parsecs"}"#,
            br#"{"level":"on","for":"10ms"}"#,
            br#"{"level":"on","for":"1h","seconds":3600}"#,
            br#"{"level":"on","seconds":0}"#,
            br#"{"level":"on","colour":"red"}"#,
            b"not json",
            b"",
        ] {
            assert!(force_request("pump", bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_busy_answer_is_well_formed() {
        let (head, body) = BUSY.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }

    mod serving {
        use super::super::*;
        use crate::bus::status::StatusBoard;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpStream;

        const TOKEN: &str = "0123456789abcdef0123";
        const GET: &[u8] = b"GET /api/status HTTP/1.1\r\nHost: pmtr\r\nConnection: close\r\n\r\n";

        /// A status API on a free loopback port, with a token, relay `pump` and `limits`.
        fn start(limits: Limits) -> (SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
            let src = "[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n[[meter]]\nname = \"m\"\nmodel = \"rx380\"\naddress = 1\n";
            let config = crate::config::load_str(src, "t.toml").unwrap();
            let mut sources = Sources::new(&config, Arc::new(StatusBoard::default()));
            sources.relays = vec!["pump".into()];
            let server = StatusServer::bind("127.0.0.1:0".parse().unwrap(), Some(TOKEN.into()))
                .unwrap()
                .with_limits(limits);
            let addr = server.local_addr().unwrap();
            let (stop, stop_rx) = watch::channel(false);
            (addr, stop, tokio::spawn(server.run(Arc::new(sources), stop_rx)))
        }

        /// Everything the server sends until it closes (within a minute of the test's clock).
        async fn rest(c: &mut TcpStream) -> String {
            let mut out = Vec::new();
            match tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut out)).await {
                Ok(_) => String::from_utf8_lossy(&out).into_owned(),
                Err(_) => panic!("the server kept the connection open: {}", String::from_utf8_lossy(&out)),
            }
        }

        async fn get(addr: SocketAddr) -> String {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(GET).await.unwrap();
            rest(&mut c).await
        }

        fn limits(max_connections: usize) -> Limits {
            Limits { max_connections, ..Limits::default() }
        }

        #[tokio::test(start_paused = true)]
        async fn connections_over_the_cap_are_closed_and_idle_ones_time_out_so_others_are_served() {
            let (addr, _stop, _task) = start(limits(3));
            assert!(get(addr).await.starts_with("HTTP/1.1 200 OK"));
            // A client takes every connection and sends nothing.
            let mut hogs = Vec::new();
            for _ in 0..3 {
                hogs.push(TcpStream::connect(addr).await.unwrap());
            }
            tokio::time::sleep(Duration::from_millis(10)).await; // accepted
            let t0 = tokio::time::Instant::now();
            // One more is closed at once, with a 503.
            let mut over = TcpStream::connect(addr).await.unwrap();
            let answer = rest(&mut over).await;
            assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
            assert!(t0.elapsed() < Duration::from_secs(1), "closed at once, not after a timeout");
            let answer = get(addr).await;
            assert!(!answer.contains("200 OK"), "{answer}");
            // The hogs are closed by the head timeout, and then another client is served.
            for hog in &mut hogs {
                assert_eq!(rest(hog).await, "");
            }
            assert!(t0.elapsed() <= HEADER_TIMEOUT + Duration::from_secs(1), "{:?}", t0.elapsed());
            assert!(get(addr).await.starts_with("HTTP/1.1 200 OK"));
        }

        #[tokio::test(start_paused = true)]
        async fn an_idle_keep_alive_connection_is_closed() {
            let (addr, _stop, _task) = start(limits(1));
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: pmtr\r\n\r\n").await.unwrap();
            let mut buf = vec![0; 4096];
            let n = c.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
            let t0 = tokio::time::Instant::now();
            // The connection is kept alive, then closed when idle: the one slot is free again.
            assert_eq!(rest(&mut c).await, "");
            assert!(t0.elapsed() <= IDLE_TIMEOUT + Duration::from_secs(1), "{:?}", t0.elapsed());
            assert!(get(addr).await.starts_with("HTTP/1.1 200 OK"));
        }

        #[tokio::test(start_paused = true)]
        async fn a_client_pipelining_requests_without_reading_the_answers_loses_its_connection() {
            let (addr, _stop, _task) = start(limits(1));
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let c = socket.connect(addr).await.unwrap();
            let (_unread, mut w) = c.into_split();
            // Requests for ever, answers never read: the server's writes stop, then its reads.
            let hog = tokio::spawn(async move {
                let many = b"GET /healthz HTTP/1.1\r\nHost: pmtr\r\n\r\n".repeat(256);
                while w.write_all(&many).await.is_ok() {}
            });
            let t0 = tokio::time::Instant::now();
            tokio::time::sleep(IDLE_TIMEOUT + Duration::from_secs(1)).await;
            // The one connection the server allows is free again.
            let answer = get(addr).await;
            assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
            assert!(t0.elapsed() <= IDLE_TIMEOUT + Duration::from_secs(2), "{:?}", t0.elapsed());
            hog.abort();
        }

        #[tokio::test(start_paused = true)]
        async fn a_head_sent_a_byte_at_a_time_is_cut_off() {
            let (addr, _stop, _task) = start(limits(1));
            let mut c = TcpStream::connect(addr).await.unwrap();
            let t0 = tokio::time::Instant::now();
            // One byte every 5 s: the connection is never idle, but the head never ends.
            for b in GET.iter().take(20) {
                if c.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                if t0.elapsed() > HEADER_TIMEOUT + Duration::from_secs(5) {
                    break;
                }
            }
            let answer = rest(&mut c).await;
            assert!(!answer.contains("200 OK"), "{answer}");
            assert!(t0.elapsed() <= HEADER_TIMEOUT + Duration::from_secs(6), "{:?}", t0.elapsed());
            assert!(get(addr).await.starts_with("HTTP/1.1 200 OK"));
        }

        #[tokio::test(start_paused = true)]
        async fn a_body_that_stops_coming_gets_a_408() {
            let (addr, _stop, _task) = start(limits(1));
            let mut c = TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST /api/relays/pump/force HTTP/1.1\r\nHost: pmtr\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"level\":"
            );
            c.write_all(head.as_bytes()).await.unwrap();
            let t0 = tokio::time::Instant::now();
            let mut buf = vec![0; 4096];
            let n = tokio::time::timeout(Duration::from_secs(60), c.read(&mut buf)).await.unwrap().unwrap();
            let answer = String::from_utf8_lossy(&buf[..n]);
            assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
            assert!(t0.elapsed() <= BODY_TIMEOUT + Duration::from_secs(1), "{:?}", t0.elapsed());
        }

        async fn ask(addr: SocketAddr, head: &str) -> String {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(format!("{head}Host: pmtr\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
            rest(&mut c).await
        }

        #[tokio::test(start_paused = true)]
        async fn the_page_and_its_history_follow_the_read_rules() {
            let (addr, _stop, _task) = start(limits(4));
            let page = ask(addr, "GET / HTTP/1.1\r\n").await;
            assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
            assert!(page.contains("content-type: text/html; charset=utf-8"), "{page}");
            assert!(page.contains("content-security-policy: default-src 'none'"), "{page}");
            assert!(page.ends_with(PAGE));
            // A wrong token is refused even for the page's data, as for every read.
            let wrong = ask(addr, "GET /api/history HTTP/1.1\r\nAuthorization: Bearer nope\r\n").await;
            assert!(wrong.starts_with("HTTP/1.1 401 "), "{wrong}");
            let history = ask(addr, "GET /api/history HTTP/1.1\r\n").await;
            assert!(history.starts_with("HTTP/1.1 200 OK"), "{history}");
            let body: serde_json::Value =
                serde_json::from_str(history.split("\r\n\r\n").nth(1).unwrap()).unwrap();
            assert_eq!(body["meters"]["m"], serde_json::json!({}), "no reading yet: {body}");
            let one = ask(addr, "GET /api/history?meter=m HTTP/1.1\r\n").await;
            assert!(one.starts_with("HTTP/1.1 200 OK"), "{one}");
            let none = ask(addr, "GET /api/history?meter=x HTTP/1.1\r\n").await;
            assert!(none.starts_with("HTTP/1.1 404 ") && none.contains("no meter \\\"x\\\""), "{none}");
        }

        #[tokio::test(start_paused = true)]
        async fn a_stop_closes_the_listener_and_ends_the_server() {
            let (addr, stop, task) = start(limits(4));
            let _idle = TcpStream::connect(addr).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            stop.send_replace(true);
            tokio::time::timeout(STOP_GRACE + Duration::from_secs(1), task).await.unwrap().unwrap();
            assert!(TcpStream::connect(addr).await.is_err());
        }
    }
}
