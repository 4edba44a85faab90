//! InfluxDB writers: v2 (`/api/v2/write`, InfluxDB 2.x and 3.x) through the `influxdb2` crate,
//! v1 (`/write`, InfluxDB 1.x) through the same `reqwest`. Both send the line protocol of
//! [`super::schema`] with millisecond timestamps: readings and state changes in one body.

use super::schema::LineProtocol;
use super::sink::{WriteError, WriteFuture, Writer};
use crate::config::{redact_urls, Secret};
use crate::reading::Record;
use std::time::Duration;

/// What an HTTP status means for the sink. Pure, shared by both versions.
pub fn classify(status: u16, body: &str, retry_after: Option<Duration>) -> WriteError {
    let text = body.trim();
    let text = if text.len() > 300 { &text[..text.floor_char_boundary_compat(300)] } else { text };
    let message = if text.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {text}") };
    match status {
        401 | 403 => WriteError::Refused { message: format!("{message} (wrong or missing token/password?)") },
        404 => WriteError::Refused { message: format!("{message} (unknown database, bucket or org?)") },
        413 => WriteError::TooLarge,
        408 | 429 => WriteError::Retry { message, after: retry_after },
        400 | 422 => {
            // InfluxDB 1.x answers 404 "database not found", but some proxies and 1.8's v2
            // endpoint answer 400 for a missing bucket: that is the configuration, not the data.
            // vmauth answers 400 "cannot find the provided auth token" to a wrong token.
            let lower = text.to_ascii_lowercase();
            if lower.contains("not found") && (lower.contains("database") || lower.contains("bucket")) {
                WriteError::Refused { message }
            } else if lower.contains("auth") || lower.contains("token") {
                WriteError::Refused { message: format!("{message} (wrong token?)") }
            } else if refuses_points(text) {
                WriteError::Rejected { message }
            } else {
                // Not the database speaking (a proxy's page, `http://` to an HTTPS port…):
                // nothing says the points are wrong, so they are kept and tried again.
                WriteError::Refused {
                    message: format!(
                        "{message} (not an answer of InfluxDB about the points: a proxy, or http:// to \
                         an https port? check the url)"
                    ),
                }
            }
        }
        400..=499 => WriteError::Refused { message },
        _ => WriteError::Retry { message, after: retry_after },
    }
}

/// Whether a 400/422 body is the database's own refusal of the points (only then are they set
/// aside for good):
/// - InfluxDB 1.x: JSON `{"error": "unable to parse …"}`, `{"error": "partial write: field type
///   conflict …"}`, `{"error": "partial write: points beyond retention policy dropped=N"}`;
/// - InfluxDB 2.x/3.x: JSON `{"code": "invalid", "message": "unable to parse …"}`, 422
///   `{"code": "unprocessable entity", "message": "failure writing points to database: partial
///   write: …"}`;
/// - VictoriaMetrics: text `cannot process influx line protocol data: incorrect influx line …`.
pub fn refuses_points(body: &str) -> bool {
    const POINT_ERRORS: [&str; 6] = [
        "unable to parse",
        "partial write",
        "field type conflict",
        "points beyond retention policy",
        "failure writing points",
        "invalid field format",
    ];
    let about_points = |t: &str| {
        let t = t.to_ascii_lowercase();
        POINT_ERRORS.iter().any(|e| t.contains(e))
    };
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(o)) => {
            if let Some(serde_json::Value::String(e)) = o.get("error") {
                return about_points(e);
            }
            let code = o.get("code").and_then(|c| c.as_str()).unwrap_or_default();
            let message = o.get("message").and_then(|m| m.as_str()).unwrap_or_default();
            matches!(code, "invalid" | "unprocessable entity") && about_points(message)
        }
        Ok(_) => false,
        Err(_) => {
            let lower = body.to_ascii_lowercase();
            lower.starts_with("cannot process influx line protocol data")
                || (lower.contains("influx line") && lower.contains("cannot parse"))
        }
    }
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

fn network_error(e: &reqwest::Error) -> WriteError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut message = format!("{what}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    // reqwest names the URL, with its credentials if it has any.
    WriteError::Retry { message: redact_urls(&message), after: None }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Why a writer could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// The URL (shown with any password hidden) does not parse, and why.
    #[error("url {url:?}: {error}")]
    Url { url: String, error: String },
    /// The HTTP client could not be built, and why.
    #[error("HTTP client: {0}")]
    Client(String),
}

impl SetupError {
    fn url(url: &str, error: impl std::fmt::Display) -> SetupError {
        SetupError::Url { url: redact_urls(url), error: error.to_string() }
    }
}

/// Settings of an InfluxDB v1 sink.
#[derive(Debug, Clone)]
pub struct V1Settings {
    pub url: String,
    pub database: String,
    pub retention_policy: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub timeout: Duration,
}

pub struct InfluxV1 {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    settings: V1Settings,
    lp: LineProtocol,
}

impl InfluxV1 {
    pub fn new(settings: V1Settings, lp: LineProtocol) -> Result<Self, SetupError> {
        let base = reqwest::Url::parse(&settings.url).map_err(|e| SetupError::url(&settings.url, e))?;
        let mut endpoint = base.join("write").map_err(|e| SetupError::url(&settings.url, e))?;
        if !base.path().ends_with('/') {
            // `http://host:8086/influx` means `/influx/write`.
            endpoint.set_path(&format!("{}/write", base.path()));
        }
        {
            let mut q = endpoint.query_pairs_mut();
            q.append_pair("db", &settings.database);
            q.append_pair("precision", "ms");
            if let Some(rp) = &settings.retention_policy {
                q.append_pair("rp", rp);
            }
        }
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("pmtr/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SetupError::Client(e.to_string()))?;
        Ok(InfluxV1 { client, endpoint, settings, lp })
    }
}

impl Writer for InfluxV1 {
    fn kind(&self) -> &'static str {
        "influxdb1"
    }

    fn target(&self) -> String {
        format!("{} database {}", redact_urls(&self.settings.url), self.settings.database)
    }

    fn write(&mut self, batch: &[Record]) -> WriteFuture {
        let (body, _) = self.lp.encode_batch(batch);
        let mut request = self.client.post(self.endpoint.clone()).body(body);
        if let Some(user) = &self.settings.username {
            request = request.basic_auth(user, self.settings.password.as_ref().map(Secret::expose));
        }
        Box::pin(async move {
            let response = request.send().await.map_err(|e| network_error(&e))?;
            let status = response.status().as_u16();
            if (200..300).contains(&status) {
                return Ok(());
            }
            let after = retry_after(response.headers());
            let text = response.text().await.unwrap_or_default();
            Err(classify(status, &text, after))
        })
    }

    fn render(&self, batch: &[Record]) -> String {
        self.lp.encode_batch(batch).0
    }
}

/// Settings of an InfluxDB v2/v3 sink.
#[derive(Debug, Clone)]
pub struct V2Settings {
    pub url: String,
    pub org: String,
    pub bucket: String,
    pub token: Secret,
    pub timeout: Duration,
}

pub struct InfluxV2 {
    client: influxdb2::Client,
    settings: V2Settings,
    lp: LineProtocol,
}

impl InfluxV2 {
    pub fn new(settings: V2Settings, lp: LineProtocol) -> Result<Self, SetupError> {
        // The crate panics on a URL it cannot parse: check first.
        reqwest::Url::parse(&settings.url).map_err(|e| SetupError::url(&settings.url, e))?;
        let builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .user_agent(concat!("pmtr/", env!("CARGO_PKG_VERSION")));
        let client = influxdb2::ClientBuilder::with_builder(
            builder,
            settings.url.clone(),
            settings.org.clone(),
            settings.token.expose().to_owned(),
        )
        .build()
        .map_err(|e| SetupError::Client(e.to_string()))?;
        Ok(InfluxV2 { client, settings, lp })
    }
}

impl Writer for InfluxV2 {
    fn kind(&self) -> &'static str {
        "influxdb2"
    }

    fn target(&self) -> String {
        format!(
            "{} org {} bucket {}",
            redact_urls(&self.settings.url),
            self.settings.org,
            self.settings.bucket
        )
    }

    fn write(&mut self, batch: &[Record]) -> WriteFuture {
        let (body, _) = self.lp.encode_batch(batch);
        let client = self.client.clone();
        let org = self.settings.org.clone();
        let bucket = self.settings.bucket.clone();
        Box::pin(async move {
            let result = client
                .write_line_protocol_with_precision(
                    &org,
                    &bucket,
                    body,
                    influxdb2::api::write::TimestampPrecision::Milliseconds,
                )
                .await;
            match result {
                Ok(()) => Ok(()),
                Err(influxdb2::RequestError::Http { status, text }) => {
                    Err(classify(status.as_u16(), &text, None))
                }
                Err(influxdb2::RequestError::ReqwestProcessing { source }) => Err(network_error(&source)),
                Err(e) => Err(WriteError::Retry { message: redact_urls(&e.to_string()), after: None }),
            }
        })
    }

    fn render(&self, batch: &[Record]) -> String {
        self.lp.encode_batch(batch).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the database's own words about the points send them to `rejected.txt`; any other
    /// 400/422 (a proxy, a TLS port spoken to in plain HTTP) keeps them for a retry.
    #[test]
    fn only_the_databases_refusal_of_points_rejects_them() {
        let rejected = [
            r#"{"error":"unable to parse 'pmtr,meter=a v=': missing field value"}"#,
            r#"{"error":"partial write: field type conflict: input field \"v\" on measurement \"pmtr\" is type integer, already exists as type float dropped=1"}"#,
            r#"{"error":"partial write: points beyond retention policy dropped=3"}"#,
            r#"{"code":"invalid","message":"unable to parse 'x': missing fields"}"#,
            r#"{"code":"unprocessable entity","message":"failure writing points to database: partial write: field type conflict"}"#,
            "cannot process influx line protocol data: incorrect influx line \"x\": cannot parse timestamp",
        ];
        for body in rejected {
            assert!(matches!(classify(400, body, None), WriteError::Rejected { .. }), "{body}");
        }
        let kept = [
            "<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n\
             <body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP request was sent \
             to HTTPS port</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>",
            "Bad Request",
            "",
            r#"{"error":"something else"}"#,
            r#"{"code":"invalid","message":"request body too large"}"#,
            r#"{"message":"unable to parse"}"#,
            "[1,2]",
        ];
        for body in kept {
            for status in [400, 422] {
                let e = classify(status, body, None);
                assert!(matches!(e, WriteError::Refused { .. }), "{status} {body}: {e:?}");
            }
        }
    }

    #[test]
    fn statuses() {
        assert!(matches!(classify(401, "unauthorized", None), WriteError::Refused { .. }));
        assert!(matches!(classify(403, "", None), WriteError::Refused { .. }));
        assert!(matches!(
            classify(404, r#"{"error":"database not found: \"x\""}"#, None),
            WriteError::Refused { .. }
        ));
        assert!(matches!(
            classify(400, r#"{"code":"not found","message":"bucket \"x\" not found"}"#, None),
            WriteError::Refused { .. }
        ));
        assert!(matches!(
            classify(400, r#"{"error":"partial write: field type conflict"}"#, None),
            WriteError::Rejected { .. }
        ));
        assert!(matches!(
            classify(400, r#"cannot find the provided auth token "Bearer x" in config"#, None),
            WriteError::Refused { .. }
        ));
        assert_eq!(classify(413, "", None), WriteError::TooLarge);
        assert!(matches!(
            classify(
                422,
                r#"{"code":"unprocessable entity","message":"failure writing points to database: partial write: field type conflict"}"#,
                None
            ),
            WriteError::Rejected { .. }
        ));
        assert_eq!(
            classify(429, "slow down", Some(Duration::from_secs(7))),
            WriteError::Retry { message: "HTTP 429: slow down".into(), after: Some(Duration::from_secs(7)) }
        );
        assert!(matches!(classify(500, "", None), WriteError::Retry { .. }));
        assert!(matches!(classify(503, "", None), WriteError::Retry { .. }));
        let long = "é".repeat(400);
        assert!(classify(500, &long, None).to_string().len() < 400);
    }
}
