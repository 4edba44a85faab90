//! Secrets of the configuration (passwords, tokens) and URLs that may carry one: whatever shows
//! them (`Debug` of the configuration, log lines, `/api/sinks`, error messages) shows
//! `(hidden)` instead.

use serde::Serialize;
use std::fmt;

/// What a secret shows instead of itself.
pub const HIDDEN: &str = "(hidden)";

/// A password or token. `Debug`, `Display` and serialization show `(hidden)`; only
/// [`Secret::expose`] gives the text, where it is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }

    /// The secret itself, for the request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(HIDDEN)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(HIDDEN)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(HIDDEN)
    }
}

/// `text` with the credentials of every URL in it hidden: `http://user:pass@host/x` becomes
/// `http://user:(hidden)@host/x`, and `https://TOKEN@host` becomes `https://(hidden)@host`.
/// Linear in the text; text without `://` comes back as it is.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority ends at a path, a query, a fragment, or where a URL cannot go on.
        let end = after
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>' | ')' | ',') || c.is_whitespace()
            })
            .unwrap_or(after.len());
        let (authority, tail) = after.split_at(end);
        match authority.rfind('@') {
            Some(userinfo_end) => {
                match authority[..userinfo_end].split_once(':') {
                    Some((user, _)) if !user.is_empty() => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(HIDDEN);
                    }
                    _ => out.push_str(HIDDEN),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Serializes a URL with its credentials hidden (`#[serde(serialize_with = ...)]`).
pub(super) fn serialize_redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_urls(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows_itself() {
        let s = Secret::new("s3cret-token");
        assert_eq!(format!("{s:?} {s} {:?}", Some(&s)), "(hidden) (hidden) Some((hidden))");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"(hidden)\"");
        assert_eq!(s.expose(), "s3cret-token");
    }

    #[test]
    fn a_serialized_sink_hides_its_secrets() {
        let kind = crate::config::SinkKind::InfluxDb1 {
            url: "http://admin:url-pass@db:8086".into(),
            database: "pmtr".into(),
            retention_policy: None,
            username: Some("admin".into()),
            password: Some("pass-word".into()),
        };
        for shown in [serde_json::to_string(&kind).unwrap(), format!("{kind:?}")] {
            assert!(!shown.contains("url-pass") && !shown.contains("pass-word"), "{shown}");
            assert!(shown.contains("http://admin:(hidden)@db:8086"), "{shown}");
        }
    }

    #[test]
    fn url_credentials_are_hidden_wherever_they_are() {
        assert_eq!(redact_urls("http://db:8086"), "http://db:8086");
        assert_eq!(redact_urls("http://admin:pw@db:8086/x?y=1"), "http://admin:(hidden)@db:8086/x?y=1");
        assert_eq!(redact_urls("https://tok3n@db"), "https://(hidden)@db");
        assert_eq!(redact_urls("https://:pw@db"), "https://(hidden)@db");
        assert_eq!(
            redact_urls("error sending request for url (http://u:p@w@h:1/write?db=x): refused"),
            "error sending request for url (http://u:(hidden)@h:1/write?db=x): refused"
        );
        assert_eq!(
            redact_urls("a http://u:p@h b https://v:q@i"),
            "a http://u:(hidden)@h b https://v:(hidden)@i"
        );
        assert_eq!(redact_urls("no url: a@b"), "no url: a@b");
        assert_eq!(redact_urls("://"), "://");
        assert_eq!(redact_urls("é://ü:ö@ä"), "é://ü:(hidden)@ä");
    }
}
