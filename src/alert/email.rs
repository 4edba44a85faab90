//! Alert mail over SMTP: lettre's tokio transport with rustls, set up from `[alerts.email]`.
//!
//! [`Mailer::send`] is what the daemon's alert task ([`super::run`]) uses;
//! [`Mailer::send_step_by_step`] (behind `pmtr test-email`) runs the same dialogue one step at a
//! time (DNS, connect, TLS, AUTH, message) and says which step failed. Either way a failure is a
//! [`SendError`] that says whether trying again later can help.

use crate::config::{EmailSettings, EmailTls};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::Error as SmtpError;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::error::Error as _;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// One step of the SMTP dialogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Resolving the host name.
    Dns,
    /// The TCP connection and the server's greeting.
    Connect,
    /// The TLS handshake (implicit or after STARTTLS) and the certificate check.
    Tls,
    /// Logging in.
    Auth,
    /// MAIL FROM, RCPT TO and the message itself.
    Message,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Dns => "DNS",
            Step::Connect => "connect",
            Step::Tls => "TLS",
            Step::Auth => "AUTH",
            Step::Message => "message",
        })
    }
}

/// Settings that cannot be turned into a mailer.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("cannot read ca_file {}: {source}", path.display())]
    CaFile { path: PathBuf, source: std::io::Error },
    #[error("ca_file {}: {reason}: give a PEM file with the server's certificate", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error("{key} {address:?} is not a mail address: {reason}")]
    Address { key: &'static str, address: String, reason: String },
    #[error("cannot set up TLS for {host}: {reason}")]
    Tls { host: String, reason: String },
}

/// Why a mail was not sent: either trying again later may work (the server or the network is
/// away, or the server said 4xx), or it will not until something is changed (5xx such as a
/// refused password or recipient, an untrusted certificate, a server without STARTTLS).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("{step} failed: {message} (temporary: try again later)")]
    RetryLater { step: Step, message: String },
    #[error("{step} failed: {message}")]
    Permanent { step: Step, message: String },
}

impl SendError {
    pub fn step(&self) -> Step {
        match self {
            SendError::RetryLater { step, .. } | SendError::Permanent { step, .. } => *step,
        }
    }

    /// True when sending the same mail later may succeed.
    pub fn is_retry_later(&self) -> bool {
        matches!(self, SendError::RetryLater { .. })
    }

    /// What went wrong and what to do, without the step.
    pub fn message(&self) -> &str {
        match self {
            SendError::RetryLater { message, .. } | SendError::Permanent { message, .. } => message,
        }
    }
}

/// Sends alert mail with the settings of `[alerts.email]`.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    settings: EmailSettings,
    from: Mailbox,
    tls: Option<TlsParameters>,
    credentials: Option<Credentials>,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Mailer {
    /// Checks the addresses, reads `ca_file` and sets up the transport. Call it inside a tokio
    /// runtime: lettre's connection pool starts its clean-up task here.
    pub fn new(settings: &EmailSettings) -> Result<Mailer, EmailError> {
        let from = settings.from.parse::<Mailbox>().map_err(|e| EmailError::Address {
            key: "from",
            address: settings.from.clone(),
            reason: e.to_string(),
        })?;
        for to in &settings.to {
            to.parse::<Mailbox>().map_err(|e| EmailError::Address {
                key: "to",
                address: to.clone(),
                reason: e.to_string(),
            })?;
        }
        let tls = match settings.tls {
            EmailTls::Plain => None,
            EmailTls::Starttls | EmailTls::Tls => Some(tls_parameters(settings)?),
        };
        let credentials = match (&settings.username, &settings.password) {
            (Some(user), Some(password)) => {
                Some(Credentials::new(user.clone(), password.expose().to_owned()))
            }
            _ => None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.clone())
            .port(settings.port)
            .timeout(Some(settings.timeout))
            .tls(match (&tls, settings.tls) {
                (Some(p), EmailTls::Tls) => Tls::Wrapper(p.clone()),
                (Some(p), _) => Tls::Required(p.clone()),
                (None, _) => Tls::None,
            });
        if let Some(c) = &credentials {
            builder = builder.credentials(c.clone());
        }
        Ok(Mailer { transport: builder.build(), settings: settings.clone(), from, tls, credentials })
    }

    pub fn settings(&self) -> &EmailSettings {
        &self.settings
    }

    /// The message: plain UTF-8 text, the subject after `subject_prefix`.
    fn message(&self, to: &[String], subject: &str, body: &str) -> Result<Message, SendError> {
        let permanent = |message: String| SendError::Permanent { step: Step::Message, message };
        if to.is_empty() {
            return Err(permanent("no recipient: give at least one address".into()));
        }
        let prefix = self.settings.subject_prefix.trim();
        let subject = if prefix.is_empty() { subject.to_owned() } else { format!("{prefix} {subject}") };
        let mut builder = Message::builder().from(self.from.clone()).subject(subject);
        for address in to {
            let mailbox = address
                .parse::<Mailbox>()
                .map_err(|e| permanent(format!("{address:?} is not a mail address: {e}")))?;
            builder = builder.to(mailbox);
        }
        builder
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_owned())
            .map_err(|e| permanent(format!("cannot build the message: {e}")))
    }

    /// Sends one mail through lettre's transport.
    pub async fn send(&self, to: &[String], subject: &str, body: &str) -> Result<(), SendError> {
        let message = self.message(to, subject, body)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) => Err(classify(&e, None, &self.settings)),
        }
    }

    /// Sends one mail one step at a time, calling `report` with each step that succeeded and
    /// what it found; a failure names its step.
    pub async fn send_step_by_step(
        &self,
        to: &[String],
        subject: &str,
        body: &str,
        mut report: impl FnMut(Step, String),
    ) -> Result<(), SendError> {
        let s = &self.settings;
        let message = self.message(to, subject, body)?;
        let timeout = s.timeout;
        let retry = |step, message| SendError::RetryLater { step, message };

        // DNS.
        let addresses: Vec<SocketAddr> =
            match tokio::time::timeout(timeout, tokio::net::lookup_host((s.host.as_str(), s.port))).await {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(e)) => {
                    return Err(retry(
                        Step::Dns,
                        format!(
                            "cannot resolve {:?}: {e}: check `host`, and the network and DNS of this machine",
                            s.host
                        ),
                    ))
                }
                Err(_) => {
                    return Err(retry(
                        Step::Dns,
                        format!("no DNS answer for {:?} within {timeout:?}", s.host),
                    ))
                }
            };
        if addresses.is_empty() {
            return Err(retry(Step::Dns, format!("{:?} resolves to no address", s.host)));
        }
        let list: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
        report(Step::Dns, format!("{} resolves to {}", s.host, list.join(", ")));

        // TCP connect, by hand: tells "nothing listens" from everything after it.
        let mut reached = None;
        let mut last_error = String::new();
        for addr in &addresses {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_stream)) => {
                    reached = Some(*addr);
                    break;
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    last_error = format!(
                        "{addr} refused the connection: nothing listens there; is the mail server \
                         running, and is `port` ({}) right?",
                        s.port
                    );
                }
                Ok(Err(e)) => last_error = format!("cannot connect to {addr}: {e}"),
                Err(_) => {
                    last_error =
                        format!("no answer from {addr} within {timeout:?}: a firewall, or the wrong `port`?")
                }
            }
        }
        let Some(addr) = reached else {
            return Err(retry(Step::Connect, last_error));
        };

        // The greeting and EHLO, then TLS.
        let hello = ClientId::default();
        let wrapper = match s.tls {
            EmailTls::Tls => self.tls.clone(),
            _ => None,
        };
        let mut conn =
            AsyncSmtpConnection::connect_tokio1(addr, Some(timeout), &hello, wrapper, None).await.map_err(
                |e| classify(&e, Some(if s.tls == EmailTls::Tls { Step::Tls } else { Step::Connect }), s),
            )?;
        match (s.tls, &self.tls) {
            (EmailTls::Tls, _) => {
                report(Step::Connect, format!("{addr} accepted the TCP connection"));
                report(Step::Tls, format!("implicit TLS, certificate trusted for {}", s.host));
            }
            (EmailTls::Starttls, Some(params)) => {
                report(Step::Connect, format!("{addr}: the server greeted"));
                conn.starttls(params.clone(), &hello).await.map_err(|e| classify(&e, Some(Step::Tls), s))?;
                report(Step::Tls, format!("STARTTLS, certificate trusted for {}", s.host));
            }
            _ => {
                report(Step::Connect, format!("{addr}: the server greeted"));
                report(Step::Tls, "none (tls = \"plain\"): the mail travels unencrypted".to_owned());
            }
        }

        // AUTH.
        match &self.credentials {
            Some(c) => {
                let reply =
                    conn.auth(DEFAULT_MECHANISMS, c).await.map_err(|e| classify(&e, Some(Step::Auth), s))?;
                let user = s.username.as_deref().unwrap_or_default();
                report(Step::Auth, format!("accepted as {user}: {}", reply_text(&reply)));
            }
            None => report(Step::Auth, "none (no username configured)".to_owned()),
        }

        // The message.
        let reply = conn
            .send(message.envelope(), &message.formatted())
            .await
            .map_err(|e| classify(&e, Some(Step::Message), s))?;
        report(Step::Message, format!("accepted for {}: {}", to.join(", "), reply_text(&reply)));
        let _ = conn.quit().await;
        Ok(())
    }
}

fn tls_parameters(s: &EmailSettings) -> Result<TlsParameters, EmailError> {
    let mut builder = TlsParameters::builder(s.host.clone());
    if let Some(path) = &s.ca_file {
        let pem = std::fs::read(path).map_err(|source| EmailError::CaFile { path: path.clone(), source })?;
        let bad = |reason: String| EmailError::BadCa { path: path.clone(), reason };
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(bad("no PEM certificate in it".into()));
        }
        let cert = Certificate::from_pem(&pem).map_err(|e| bad(e.to_string()))?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build_rustls().map_err(|e| EmailError::Tls { host: s.host.clone(), reason: e.to_string() })
}

fn reply_text(r: &lettre::transport::smtp::response::Response) -> String {
    format!("{} {}", r.code(), r.message().collect::<Vec<_>>().join(" "))
}

/// Every message of an error and its sources, without repeats.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = s.source();
    }
    None
}

/// Turns a lettre error into a [`SendError`]. `step` is the step it happened in, when known;
/// otherwise it is told from the error.
fn classify(e: &SmtpError, step: Option<Step>, s: &EmailSettings) -> SendError {
    let text = chain(e);
    let lower = text.to_lowercase();
    let retry = |step, message| SendError::RetryLater { step, message };
    let permanent = |step, message| SendError::Permanent { step, message };

    if let Some(code) = e.status() {
        // The server's reply: "535 5.7.8 Authentication credentials invalid".
        let said = e.source().map(|s| s.to_string()).unwrap_or_default();
        let reply = format!("{code} {said}").trim().to_owned();
        let said = said.to_lowercase();
        let code = code.to_string();
        if code == "530" && said.contains("starttls") {
            return permanent(
                Step::Tls,
                format!("the server requires STARTTLS ({reply}): set tls = \"starttls\""),
            );
        }
        let auth = matches!(code.as_str(), "535" | "534" | "538" | "454")
            && (step.is_none() || step == Some(Step::Auth))
            || step == Some(Step::Auth);
        if e.is_transient() {
            let step = if auth { Step::Auth } else { step.unwrap_or(Step::Message) };
            return retry(step, format!("the server answered {reply}"));
        }
        if auth {
            return permanent(
                Step::Auth,
                format!(
                    "authentication refused, the server answered {reply}: check `username` and the password"
                ),
            );
        }
        if code == "530" {
            return permanent(
                Step::Auth,
                format!("the server requires authentication ({reply}): set `username` and a password"),
            );
        }
        return permanent(step.unwrap_or(Step::Message), format!("the server refused it: {reply}"));
    }
    if e.is_client() {
        if lower.contains("starttls is not supported") {
            return permanent(
                Step::Tls,
                format!(
                    "{}:{} does not offer STARTTLS: if it speaks TLS from the start (port 465) set \
                     tls = \"tls\"; a relay without encryption needs tls = \"plain\"",
                    s.host, s.port
                ),
            );
        }
        if lower.contains("authentication mechanism") {
            return permanent(
                Step::Auth,
                "the server offers no AUTH PLAIN or LOGIN on this connection".to_owned(),
            );
        }
        return permanent(step.unwrap_or(Step::Message), text);
    }
    if e.is_timeout() {
        return retry(step.unwrap_or(Step::Connect), format!("no answer within {:?}", s.timeout));
    }
    let kind = io_kind(e);
    if kind == Some(std::io::ErrorKind::ConnectionRefused) {
        return retry(
            Step::Connect,
            format!(
                "{}:{} refused the connection: nothing listens there; is the mail server running, \
                 and is `port` right?",
                s.host, s.port
            ),
        );
    }
    let tls_like = e.is_tls()
        || lower.contains("certificate")
        || lower.contains("handshake")
        || lower.contains("corrupt message")
        || kind == Some(std::io::ErrorKind::InvalidData);
    if step == Some(Step::Tls) || (step.is_none() && tls_like) {
        if lower.contains("certificate") {
            return permanent(
                Step::Tls,
                format!(
                    "the server's certificate is not trusted ({text}): for a self-signed server give \
                     its certificate in `ca_file`; check that `host` is the name in the certificate"
                ),
            );
        }
        if lower.contains("corrupt message") || lower.contains("invalidcontenttype") {
            return permanent(
                Step::Tls,
                format!(
                    "the server does not speak TLS on port {} ({text}): for port 587 use tls = \
                     \"starttls\"",
                    s.port
                ),
            );
        }
        return retry(Step::Tls, format!("the TLS handshake failed: {text}"));
    }
    retry(step.unwrap_or(Step::Connect), text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings() -> EmailSettings {
        EmailSettings {
            host: "127.0.0.1".into(),
            port: 2525,
            tls: EmailTls::Plain,
            username: None,
            password: None,
            from: "pmtr <gw@example.test>".into(),
            to: vec!["ops@example.test".into()],
            subject_prefix: "[pmtr]".into(),
            ca_file: None,
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn the_subject_is_prefixed_and_the_body_is_utf8() {
        let m = Mailer::new(&settings()).unwrap();
        let msg = m.message(&["a@example.test".into()], "L1 high", "230 V → 254 V").unwrap();
        let text = String::from_utf8(msg.formatted()).unwrap();
        assert!(text.contains("Subject: [pmtr] L1 high"), "{text}");
        assert!(text.contains("Content-Type: text/plain; charset=utf-8"), "{text}");
        assert_eq!(msg.envelope().to().len(), 1);
    }

    #[tokio::test]
    async fn no_recipient_is_a_permanent_error() {
        let m = Mailer::new(&settings()).unwrap();
        let e = m.message(&[], "s", "b").unwrap_err();
        assert!(!e.is_retry_later());
        assert_eq!(e.step(), Step::Message);
    }

    #[tokio::test]
    async fn a_bad_address_is_refused_when_the_mailer_is_made() {
        let mut s = settings();
        s.to = vec!["not an address".into()];
        let e = Mailer::new(&s).unwrap_err();
        assert!(e.to_string().contains("to \"not an address\" is not a mail address"), "{e}");
    }

    #[test]
    fn the_password_is_not_in_debug_output() {
        let mut s = settings();
        s.username = Some("gateway".into());
        s.password = Some("s3cret".into());
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(!serde_json::to_string(&s).unwrap().contains("s3cret"));
    }
}
