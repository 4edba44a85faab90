//! `pmtr status`: ask the running daemon's status API and show what it says.

use crate::status::{view, Snapshot};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The URL a client on this machine uses for a daemon listening on `listen` (an "every
/// interface" address is reached on the loopback).
pub fn url_for(listen: SocketAddr, tls: bool) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, listen.port()))
}

/// Why the daemon's status could not be had; the text goes to stderr as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("cannot read the CA file {path}: {error}")]
    CaFile { path: String, error: String },
    #[error("{path} holds no PEM certificate: {error}")]
    NotPem { path: String, error: String },
    /// The HTTP client could not be built, and why.
    #[error("{0}")]
    Client(String),
    /// `causes` is the TLS error with its sources.
    #[error(
        "the certificate of {url} is not trusted ({causes}): give the certificate, or the CA \
         that signed it, with --ca FILE (and use the name or address the certificate is for)"
    )]
    Untrusted { url: String, causes: String },
    #[error(
        "no pmtr daemon answering at {url}: is `pmtr run` running (systemctl status pmtr), with \
         [status] enabled on that address?"
    )]
    NoDaemon { url: String },
    #[error("the pmtr daemon at {url} did not answer within {seconds} s")]
    Timeout { url: String, seconds: u64 },
    #[error("cannot ask {endpoint}: {error}")]
    Ask { endpoint: String, error: String },
    #[error("cannot read the answer of {endpoint}: {error}")]
    Read { endpoint: String, error: String },
    /// An answer other than 2xx: its status (`404 Not Found`) and the API's error message.
    #[error("{endpoint} answered {status}: {message}")]
    Refused { endpoint: String, status: String, message: String },
    #[error("the daemon at {url} answered something unexpected: {error}")]
    Unexpected { url: String, error: String },
}

impl FetchError {
    /// Nothing answered: no daemon runs there, or it is not reachable.
    pub fn unreachable(&self) -> bool {
        matches!(self, FetchError::NoDaemon { .. } | FetchError::Timeout { .. })
    }
}

/// Fetches `/api/status` from `url` (with the token, if any; over HTTPS trusting `ca` too).
pub async fn fetch(url: &str, token: Option<&str>, ca: Option<&Path>) -> Result<String, FetchError> {
    let endpoint = format!("{}/api/status", url.trim_end_matches('/'));
    let mut builder = reqwest::Client::builder().timeout(TIMEOUT);
    if let Some(ca) = ca {
        let path = || ca.display().to_string();
        let pem = std::fs::read(ca).map_err(|e| FetchError::CaFile { path: path(), error: e.to_string() })?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| FetchError::NotPem { path: path(), error: e.to_string() })?;
        builder = builder.add_root_certificate(cert);
    }
    let client = builder.build().map_err(|e| FetchError::Client(e.to_string()))?;
    let mut req = client.get(&endpoint);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let answer = req.send().await.map_err(|e| {
        let mut causes = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            causes = format!("{causes}: {s}");
            source = s.source();
        }
        if url.starts_with("https") && causes.contains("certificate") {
            FetchError::Untrusted { url: url.to_owned(), causes }
        } else if e.is_connect() {
            FetchError::NoDaemon { url: url.to_owned() }
        } else if e.is_timeout() {
            FetchError::Timeout { url: url.to_owned(), seconds: TIMEOUT.as_secs() }
        } else {
            FetchError::Ask { endpoint: endpoint.clone(), error: e.to_string() }
        }
    })?;
    let status = answer.status();
    let text = answer
        .text()
        .await
        .map_err(|e| FetchError::Read { endpoint: endpoint.clone(), error: e.to_string() })?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        return Err(FetchError::Refused { endpoint, status: status.to_string(), message });
    }
    Ok(text)
}

/// Prints the status as the compact view, or as JSON.
pub async fn show(url: &str, token: Option<&str>, ca: Option<&Path>, json: bool) -> Result<(), String> {
    let text = fetch(url, token, ca).await.map_err(|e| e.to_string())?;
    if json {
        println!("{}", text.trim_end());
        return Ok(());
    }
    let snapshot: Snapshot = serde_json::from_str(&text)
        .map_err(|e| format!("the daemon at {url} answered something unexpected: {e}"))?;
    print!("{}", view::render(&snapshot, &chrono::Local));
    Ok(())
}

/// `pmtr status --watch`: the live table every `interval` until Ctrl-C, redrawn in place on a
/// terminal and as plain blocks on a pipe; an unreachable daemon is said and asked again.
pub async fn watch(
    url: &str,
    token: Option<&str>,
    ca: Option<&Path>,
    interval: Duration,
) -> Result<(), String> {
    use super::live;
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal();
    let stop = super::stop_signal();
    tokio::pin!(stop);
    let mut events = live::Events::default();
    let mut last: Option<Snapshot> = None;
    // Since when, and why, the daemon does not answer.
    let mut failing: Option<(chrono::DateTime<chrono::Utc>, FetchError)> = None;
    let cursor = tty.then(live::HiddenCursor::hide);
    loop {
        let answer = tokio::select! {
            a = fetch(url, token, ca) => a,
            _ = &mut stop => break,
        };
        let now = chrono::Utc::now();
        let answer = answer.and_then(|text| {
            serde_json::from_str::<Snapshot>(&text)
                .map_err(|e| FetchError::Unexpected { url: url.to_owned(), error: e.to_string() })
        });
        match answer {
            Ok(snapshot) => {
                if let Some((since, _)) = failing.take() {
                    let down =
                        super::super::status::view::duration((now - since).num_seconds().max(0) as u64);
                    events.push(now, format!("the daemon answers again (after {down})"));
                }
                if let Some(before) = &last {
                    for e in live::changes(before, &snapshot) {
                        events.push(e.time, e.text);
                    }
                }
                last = Some(snapshot);
            }
            Err(message) => {
                if failing.as_ref().is_none_or(|(_, m)| *m != message) {
                    // How a failed fetch is shown: "daemon unreachable" when nothing answered.
                    let what = if message.unreachable() { "daemon unreachable" } else { "error" };
                    events.push(now, format!("{what}: {message}"));
                    failing = Some((failing.map_or(now, |(since, _)| since), message));
                }
            }
        }
        let mut lines =
            vec![format!("pmtr status --watch {url}, every {} (Ctrl-C to stop)", fmt_interval(interval))];
        if let Some((since, message)) = &failing {
            let what = if message.unreachable() { "daemon unreachable" } else { "no status" };
            lines.push(format!(
                "{what} since {}: {message} (asking again every {}; the table below is the last answer)",
                since.with_timezone(&chrono::Local).format("%H:%M:%S"),
                fmt_interval(interval)
            ));
        }
        lines.push(String::new());
        match &last {
            Some(s) => lines.extend(live::lines("pmtr", s, &events.recent(now), &chrono::Local)),
            None => {
                lines.push("EVENTS (last minute)".into());
                for e in events.recent(now) {
                    lines.push(format!(
                        "  {} {}",
                        e.time.with_timezone(&chrono::Local).format("%H:%M:%S"),
                        e.text
                    ));
                }
            }
        }
        if tty {
            print!("{}", live::redraw(&lines, live::width()));
        } else if let (Some((_, message)), true) = (&failing, last.is_some()) {
            // On a pipe, the stale table again and again says nothing: one line instead.
            println!(
                "{} daemon unreachable: {message}",
                now.with_timezone(&chrono::Local).format("%H:%M:%S")
            );
        } else {
            print!("{}", live::plain(&lines));
        }
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut stop => break,
        }
    }
    drop(cursor);
    println!("stopped watching {url}");
    Ok(())
}

fn fmt_interval(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_interface_is_reached_on_the_loopback() {
        assert_eq!(url_for("0.0.0.0:9780".parse().unwrap(), false), "http://127.0.0.1:9780");
        assert_eq!(url_for("[::]:9780".parse().unwrap(), false), "http://[::1]:9780");
        assert_eq!(url_for("127.0.0.2:81".parse().unwrap(), false), "http://127.0.0.2:81");
        assert_eq!(url_for("0.0.0.0:9780".parse().unwrap(), true), "https://127.0.0.1:9780");
    }
}
