//! Manual control of the running daemon: reset a latch, force a relay for maintenance, release
//! the force, list triggers and relays. `pmtr relay …` and `pmtr trigger …` talk to the daemon
//! over a Unix socket (`gateway.control_socket`), one JSON request and one JSON response per
//! line. The socket's file permissions (0660) are the access control; every action is logged
//! with the caller's uid and pid.

pub mod client;
pub mod server;

pub use client::ClientError;
pub use server::ControlServer;

use crate::relay::Level;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// Every trigger and relay, as they stand.
    Status,
    /// Force a relay to `level` whatever its triggers say, for `seconds` (None: until released).
    Force { relay: String, level: Level, seconds: Option<u64> },
    /// Release a force: the relay's triggers decide again.
    Release { relay: String },
    /// Reset a latched trigger.
    Reset { trigger: String },
    /// Align a meter's lifetime energy total (`pmtr energy set`); `counter` may be left out when
    /// the meter has one.
    EnergySet { meter: String, counter: Option<String>, value: f64 },
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    /// Done; `message` says what changed ("relay motor forced off until 14:05").
    Done { message: String },
    Status {
        triggers: Vec<TriggerStatus>,
        relays: Vec<RelayStatus>,
        /// The `[[neutral]]` sets (absent from an older daemon's answer).
        #[serde(default)]
        neutral: Vec<NeutralStatus>,
    },
    /// Refused or failed, with the reason (unknown relay, not latched, not allowed…).
    Error { message: String },
}

/// Who is asking (from the socket's peer credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uid {} pid {}", self.uid, self.pid)
    }
}

/// Who sent a request, as logged and stored with what it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A process on the control socket (`pmtr relay`, `pmtr trigger`).
    Socket(Peer),
    /// A client of the status API that gave the token.
    Http(std::net::SocketAddr),
    /// pmtr itself (the MQTT task asking for the states).
    Internal(&'static str),
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Socket(p) => p.fmt(f),
            Caller::Http(addr) => write!(f, "http {addr}"),
            Caller::Internal(what) => f.write_str(what),
        }
    }
}

/// A request on its way to the trigger engine, with the channel for its response.
#[derive(Debug)]
pub struct Command {
    pub request: Request,
    pub caller: Caller,
    pub reply: oneshot::Sender<Response>,
    /// When the asker stops waiting: a request still queued then is dropped, never applied
    /// (the asker was told it failed; a force or reset arriving minutes later would surprise).
    pub deadline: tokio::time::Instant,
}

impl Command {
    /// A request whose asker waits [`server::REPLY_TIMEOUT`] from now.
    pub fn new(request: Request, caller: Caller, reply: oneshot::Sender<Response>) -> Command {
        Command::within(request, caller, reply, server::REPLY_TIMEOUT)
    }

    /// A request whose asker waits `timeout` from now.
    pub fn within(
        request: Request,
        caller: Caller,
        reply: oneshot::Sender<Response>,
        timeout: std::time::Duration,
    ) -> Command {
        Command { request, caller, reply, deadline: tokio::time::Instant::now() + timeout }
    }

    /// Whether the asker has given up (its time is up, or it is gone): then the request must
    /// not be applied.
    pub fn expired(&self, now: tokio::time::Instant) -> bool {
        now >= self.deadline || self.reply.is_closed()
    }
}

/// One `[[neutral]]` set, as the trigger task's detectors see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeutralStatus {
    pub name: String,
    /// `ok`, `suspect`, `fault`, or `unknown` before the set's first sample.
    pub state: String,
    /// The evidence; 1 or more confirms a fault. None before the first sample.
    pub score: Option<f64>,
    /// The estimated neutral displacement, volts; None when the last sample gave none.
    pub shift: Option<f64>,
}

/// One trigger, as `pmtr trigger list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerStatus {
    pub name: String,
    pub when: String,
    /// released, pending, tripped, recovering, latched.
    pub state: String,
    pub dry_run: bool,
    /// A meter it reads is silent.
    pub stale: bool,
    /// When it last changed state.
    pub since: Option<DateTime<Utc>>,
    /// The values of its variables at the last evaluation (`L1U=254.2 L2U=231`).
    pub values: String,
    pub relays: Vec<String>,
}

/// One relay, as `pmtr relay list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayStatus {
    pub name: String,
    pub pin: u8,
    pub active_low: bool,
    pub level: Level,
    pub default: Level,
    /// Forced by hand: the level, and until when (None: until released).
    pub forced: Option<Forced>,
    /// The triggers that hold it tripped now.
    pub tripped_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forced {
    pub level: Level,
    pub until: Option<DateTime<Utc>>,
    /// Who forced it (`uid 1000 pid 4242`).
    pub by: String,
}
