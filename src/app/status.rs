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

/// Fetches `/api/status` from `url` (with the token, if any; over HTTPS trusting `ca` too).
/// Err holds the message for stderr.
pub async fn fetch(url: &str, token: Option<&str>, ca: Option<&Path>) -> Result<String, String> {
    let endpoint = format!("{}/api/status", url.trim_end_matches('/'));
    let mut builder = reqwest::Client::builder().timeout(TIMEOUT);
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read the CA file {}: {e}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("{} holds no PEM certificate: {e}", ca.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    let client = builder.build().map_err(|e| e.to_string())?;
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
            format!(
                "the certificate of {url} is not trusted ({causes}): give the certificate, or the CA \
                 that signed it, with --ca FILE (and use the name or address the certificate is for)"
            )
        } else if e.is_connect() {
            format!(
                "no pmtr daemon answering at {url}: is `pmtr run` running (systemctl status pmtr), with \
                 [status] enabled on that address?"
            )
        } else if e.is_timeout() {
            format!("the pmtr daemon at {url} did not answer within {} s", TIMEOUT.as_secs())
        } else {
            format!("cannot ask {endpoint}: {e}")
        }
    })?;
    let status = answer.status();
    let text = answer.text().await.map_err(|e| format!("cannot read the answer of {endpoint}: {e}"))?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        return Err(format!("{endpoint} answered {status}: {message}"));
    }
    Ok(text)
}

/// Prints the status as the compact view, or as JSON.
pub async fn show(url: &str, token: Option<&str>, ca: Option<&Path>, json: bool) -> Result<(), String> {
    let text = fetch(url, token, ca).await?;
    if json {
        println!("{}", text.trim_end());
        return Ok(());
    }
    let snapshot: Snapshot = serde_json::from_str(&text)
        .map_err(|e| format!("the daemon at {url} answered something unexpected: {e}"))?;
    print!("{}", view::render(&snapshot, &chrono::Local));
    Ok(())
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
