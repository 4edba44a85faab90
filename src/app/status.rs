//! `pmtr status`: ask the running daemon's status API and show what it says.

use crate::status::{view, Snapshot};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The URL a client on this machine uses for a daemon listening on `listen` (an "every
/// interface" address is reached on the loopback).
pub fn url_for(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// Fetches `/api/status` from `url` (with the token, if any). Err holds the message for stderr.
pub async fn fetch(url: &str, token: Option<&str>) -> Result<String, String> {
    let endpoint = format!("{}/api/status", url.trim_end_matches('/'));
    let client = reqwest::Client::builder().timeout(TIMEOUT).build().map_err(|e| e.to_string())?;
    let mut req = client.get(&endpoint);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let answer = req.send().await.map_err(|e| {
        if e.is_connect() {
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
pub async fn show(url: &str, token: Option<&str>, json: bool) -> Result<(), String> {
    let text = fetch(url, token).await?;
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
        assert_eq!(url_for("0.0.0.0:9780".parse().unwrap()), "http://127.0.0.1:9780");
        assert_eq!(url_for("[::]:9780".parse().unwrap()), "http://[::1]:9780");
        assert_eq!(url_for("127.0.0.2:81".parse().unwrap()), "http://127.0.0.2:81");
    }
}
