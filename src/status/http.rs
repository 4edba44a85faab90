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

use super::{AlertView, Parts, SinkView, Snapshot, Tally};
use crate::bus::status::StatusBoard;
use crate::config::Config;
use crate::control::{Caller, Command, Request, Response};
use crate::mqtt::run::MqttCounters;
use crate::relay::Level;
use crate::store::SinkStatus;
use chrono::{DateTime, Utc};
use hyper::body::HttpBody;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::AddrStream;
use hyper::service::{make_service_fn, service_fn};
use hyper::{Body, Method, StatusCode};
use serde::Deserialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// The largest request body read (a force is a few dozen bytes).
pub const MAX_BODY: usize = 4096;
/// How long a request waits for the trigger task.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// A client must send its request head within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
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
        ["healthz"] => ("GET", Route::Health),
        ["metrics"] => ("GET", Route::Metrics),
        ["api", "status"] => ("GET", Route::Status),
        ["api", "meters"] => ("GET", Route::Meters),
        ["api", "meters", name] if !name.is_empty() => ("GET", Route::Meter(name.to_string())),
        ["api", "ports"] => ("GET", Route::Ports),
        ["api", "triggers"] => ("GET", Route::Triggers),
        ["api", "relays"] => ("GET", Route::Relays),
        ["api", "sinks"] => ("GET", Route::Sinks),
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

/// The force request of a body, or the message of a 400.
pub fn force_request(relay: &str, body: &[u8]) -> Result<Request, String> {
    let b: ForceBody = serde_json::from_slice(body).map_err(|e| {
        format!("bad body ({e}): send JSON like {{\"level\":\"off\",\"for\":\"2h\"}} (`for` is optional)")
    })?;
    let seconds = match (&b.duration, b.seconds) {
        (Some(_), Some(_)) => return Err("give `for` or `seconds`, not both".into()),
        (Some(d), None) => {
            let d = crate::config::parse_duration(d).map_err(|e| format!("`for`: {e}"))?;
            if d < Duration::from_secs(1) || d > MAX_FORCE {
                return Err("`for`: a force lasts from 1s to 366 days".into());
            }
            Some(d.as_secs())
        }
        (None, Some(s)) if s == 0 || s > MAX_FORCE.as_secs() => {
            return Err("`seconds`: a force lasts from 1 s to 366 days".into())
        }
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
    pub tally: Arc<Tally>,
    pub relays: Vec<String>,
    pub triggers: Vec<String>,
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
            tally: Arc::new(Tally::default()),
            relays: config.relays.iter().map(|r| r.name.clone()).collect(),
            triggers: config.triggers.iter().map(|t| t.name.clone()).collect(),
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
        let control = if control && self.commands.is_some() {
            match self.ask(Request::Status, Caller::Internal("status API")).await {
                Ok(Response::Status { triggers, relays }) => Ok((triggers, relays)),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e),
            }
        } else {
            Ok((Vec::new(), Vec::new()))
        };
        Snapshot::assemble(Parts {
            gateway: self.gateway.clone(),
            started: self.started,
            time: Utc::now(),
            meters: self.meters.snapshot(),
            control,
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
            alerts: self
                .alerts
                .as_ref()
                .map(|a| AlertView::from(&*a.lock().unwrap_or_else(|e| e.into_inner()))),
            mqtt: self.mqtt.as_ref().map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).clone()),
            transitions: self.tally.transitions(),
        })
    }
}

/// A bound status API, ready to [`run`](StatusServer::run).
pub struct StatusServer {
    listener: std::net::TcpListener,
    token: Option<String>,
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
        Ok(StatusServer { listener, token })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` turns true.
    pub async fn run(self, sources: Arc<Sources>, mut stop: watch::Receiver<bool>) {
        let token: Arc<Option<String>> = Arc::new(self.token);
        let make = make_service_fn(move |conn: &AddrStream| {
            let remote = conn.remote_addr();
            let sources = sources.clone();
            let token = token.clone();
            async move {
                Ok::<_, Infallible>(service_fn(move |req| {
                    let sources = sources.clone();
                    let token = token.clone();
                    async move { Ok::<_, Infallible>(handle(req, remote, &sources, token.as_deref()).await) }
                }))
            }
        });
        let server = match hyper::Server::from_tcp(self.listener) {
            Ok(b) => b.http1_header_read_timeout(HEADER_TIMEOUT).serve(make),
            Err(e) => {
                tracing::error!(error = %e, "status API: cannot serve");
                return;
            }
        };
        let graceful = server.with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = graceful.await {
            tracing::error!(error = %e, "status API stopped");
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

/// Reads the body, at most [`MAX_BODY`] bytes.
async fn body(mut b: Body) -> Result<Vec<u8>, Reply> {
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
                     /api/triggers, /api/relays, /api/sinks, /metrics, /healthz; POST \
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
    if route != Route::Health {
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
            let bytes = match body(req.into_body()).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            match force_request(&relay, &bytes) {
                Ok(request) => act(sources, request, remote).await,
                Err(message) => error(StatusCode::BAD_REQUEST, message),
            }
        }
        Route::Release(relay) => act(sources, Request::Release { relay }, remote).await,
        Route::Reset(trigger) => act(sources, Request::Reset { trigger }, remote).await,
    }
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
        assert_eq!(route(&get, "/"), Err(Refusal::NotFound));
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
}
