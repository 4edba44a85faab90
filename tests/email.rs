//! Alert mail against a real SMTP server (aiosmtpd on 127.0.0.1, see tests/support/smtp.rs):
//! delivery over STARTTLS+AUTH and implicit TLS, and each way it can fail, through the library
//! and through `pmtr test-email`.

#[path = "support/servers.rs"]
mod servers;
#[path = "support/smtp.rs"]
mod smtp;

use pmtr::alert::email::{Mailer, SendError, Step};
use pmtr::config::{load_file, Config};
use smtp::{Mode, Smtp};
use std::path::Path;
use std::process::Command;

const HEAD: &str = "[gateway]\nname = \"house-pi\"\n[[bus]]\nname = \"house\"\nport = \"/dev/ttyUSB0\"\n\
                    [[meter]]\nname = \"mainA\"\nmodel = \"pzem-016\"\naddress = 4\n";

/// Writes a config with `email` as `[alerts.email]` into `dir` and loads it.
fn config(dir: &Path, email: &str) -> (std::path::PathBuf, Config) {
    let path = dir.join("pmtr.toml");
    std::fs::write(&path, format!("{HEAD}[alerts.email]\n{email}")).unwrap();
    let config = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    (path, config)
}

fn mailer(dir: &Path, email: &str) -> Mailer {
    let (_, c) = config(dir, email);
    Mailer::new(c.email.as_ref().expect("[alerts.email]")).unwrap_or_else(|e| panic!("{e}"))
}

async fn send(m: &Mailer) -> Result<(), SendError> {
    m.send(&["ops@example.test".to_owned()], "L1 over voltage", "mainA L1: 230 V → 254 V\n").await
}

/// `pmtr test-email --config FILE`: exit code and stdout.
fn test_email(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pmtr"))
        .args(["test-email", "--config"])
        .arg(config)
        .output()
        .expect("run pmtr");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout)
}

fn assert_delivered(server: &Smtp) {
    let mails = server.mails();
    assert_eq!(mails.len(), 1, "{mails:?}\n{}", server.log());
    let m = &mails[0];
    assert_eq!(m.subject, "[pmtr] L1 over voltage");
    assert_eq!(m.from, "pmtr <gw@example.test>");
    assert_eq!(m.to, "ops@example.test");
    assert_eq!(m.body.trim_end(), "mainA L1: 230 V → 254 V");
}

#[tokio::test]
async fn starttls_with_auth_delivers_one_mail() {
    let server = Smtp::start(Mode::StarttlsAuth);
    let m = mailer(server.dir(), &server.email_keys("starttls", Some(smtp::PASSWORD)));
    send(&m).await.unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_delivered(&server);
}

#[tokio::test]
async fn implicit_tls_with_auth_delivers_one_mail() {
    let server = Smtp::start(Mode::ImplicitTlsAuth);
    let m = mailer(server.dir(), &server.email_keys("tls", Some(smtp::PASSWORD)));
    send(&m).await.unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert_delivered(&server);
}

#[tokio::test]
async fn a_wrong_password_is_a_permanent_authentication_error() {
    let server = Smtp::start(Mode::StarttlsAuth);
    let m = mailer(server.dir(), &server.email_keys("starttls", Some("wrong")));
    let e = send(&m).await.unwrap_err();
    assert!(!e.is_retry_later(), "{e}");
    assert_eq!(e.step(), Step::Auth, "{e}");
    assert!(e.to_string().contains("authentication refused") && e.to_string().contains("535"), "{e}");
    assert!(server.mails().is_empty());

    let (path, _) = config(server.dir(), &server.email_keys("starttls", Some("wrong")));
    let (code, out) = test_email(&path);
    assert_eq!(code, 1);
    assert!(out.contains("  ok      TLS: STARTTLS"), "{out}");
    let failed = out.lines().find(|l| l.contains("FAILED")).unwrap_or_default();
    assert!(failed.starts_with("  FAILED  AUTH: authentication refused") && failed.contains("535"), "{out}");
    assert!(out.contains("  -       message: not tried"), "{out}");
}

#[tokio::test]
async fn plain_against_a_server_that_requires_starttls_is_refused_clearly() {
    let server = Smtp::start(Mode::StarttlsAuth);
    let m = mailer(server.dir(), &server.email_keys("plain", None));
    let e = send(&m).await.unwrap_err();
    assert!(!e.is_retry_later(), "{e}");
    assert_eq!(e.step(), Step::Tls, "{e}");
    assert!(
        e.to_string().contains("requires STARTTLS") && e.to_string().contains("set tls = \"starttls\""),
        "{e}"
    );
    assert!(server.mails().is_empty());
}

#[tokio::test]
async fn starttls_against_a_plain_only_server_fails_at_tls() {
    let server = Smtp::start(Mode::Plain);
    let m = mailer(server.dir(), &server.email_keys("starttls", None));
    let e = send(&m).await.unwrap_err();
    assert!(!e.is_retry_later(), "{e}");
    assert_eq!(e.step(), Step::Tls, "{e}");
    assert!(e.to_string().contains("does not offer STARTTLS"), "{e}");
    assert!(server.mails().is_empty());
}

#[tokio::test]
async fn an_untrusted_certificate_fails_at_tls_and_names_ca_file() {
    let server = Smtp::start(Mode::StarttlsAuth);
    let keys = server.email_keys("starttls", Some(smtp::PASSWORD));
    let keys: String = keys.lines().filter(|l| !l.starts_with("ca_file")).map(|l| format!("{l}\n")).collect();
    let m = mailer(server.dir(), &keys);
    let e = send(&m).await.unwrap_err();
    assert!(!e.is_retry_later(), "{e}");
    assert_eq!(e.step(), Step::Tls, "{e}");
    assert!(e.to_string().contains("not trusted") && e.to_string().contains("ca_file"), "{e}");
}

#[tokio::test]
async fn nothing_listening_is_a_retry_later_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = smtp::free_port();
    let keys = format!(
        "host = \"127.0.0.1\"\nport = {port}\nfrom = \"gw@example.test\"\nto = [\"ops@example.test\"]\n\
         timeout = \"5s\"\n"
    );
    let m = mailer(dir.path(), &keys);
    let e = send(&m).await.unwrap_err();
    assert!(e.is_retry_later(), "{e}");
    assert_eq!(e.step(), Step::Connect, "{e}");
    assert!(e.to_string().contains("refused the connection"), "{e}");

    let (path, _) = config(dir.path(), &keys);
    let (code, out) = test_email(&path);
    assert_eq!(code, 1);
    assert!(out.contains("  ok      DNS: 127.0.0.1 resolves to 127.0.0.1"), "{out}");
    assert!(out.contains("  FAILED  connect: 127.0.0.1:"), "{out}");
    assert!(out.contains("temporary"), "{out}");
}

#[tokio::test]
async fn test_email_lists_every_step_and_exits_0_when_accepted() {
    let server = Smtp::start(Mode::StarttlsAuth);
    let (path, _) = config(server.dir(), &server.email_keys("starttls", Some(smtp::PASSWORD)));
    let (code, out) = test_email(&path);
    assert_eq!(code, 0, "{out}\n{}", server.log());
    for step in [
        "DNS: ",
        "connect: ",
        "TLS: STARTTLS, certificate trusted",
        "AUTH: accepted as gateway",
        "message: accepted for ops@example.test: 250",
    ] {
        assert!(out.contains(&format!("  ok      {step}")), "{step} missing in:\n{out}");
    }
    let mails = server.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].subject, "[pmtr] test mail from house-pi");
}

#[tokio::test]
async fn test_email_over_implicit_tls() {
    let server = Smtp::start(Mode::ImplicitTlsAuth);
    let (path, _) = config(server.dir(), &server.email_keys("tls", Some(smtp::PASSWORD)));
    let (code, out) = test_email(&path);
    assert_eq!(code, 0, "{out}\n{}", server.log());
    assert!(out.contains("  ok      TLS: implicit TLS, certificate trusted"), "{out}");
    assert_eq!(server.mails().len(), 1);
}
