//! Alerts end to end, through a real SMTP server (aiosmtpd on 127.0.0.1): the whole `pmtr run`
//! in process on a simulated PZEM with a fake relay board.
//!
//! - A tripped trigger gives exactly one mail, with its values, through STARTTLS and AUTH.
//! - With the mail server away, the alerts wait in the queue on disk, across a restart of the
//!   daemon, and arrive once each, in order, when the server comes up.

#[path = "support/servers.rs"]
mod servers;
#[path = "support/smtp.rs"]
mod smtp;

#[path = "support/gateway.rs"]
mod gateway;

use gateway::{set_volts, sim, Daemon};
use pmtr::relay::FakeBoard;
use smtp::{Mode, Smtp};
use std::path::Path;
use std::time::Duration;

fn config(dir: &Path, alerts: &str, email: &str) -> pmtr::config::Config {
    let rest = format!(
        r#"
[[trigger]]
name = "overvoltage"
meter = "main"
when = "L1U > 253"
hold = "1s"
relays = ["motor"]
[alerts]
{alerts}
[alerts.email]
{email}
"#
    );
    std::fs::write(dir.join("pmtr.toml"), gateway::toml(dir, "house-pi", &rest)).unwrap();
    pmtr::config::load_file(&dir.join("pmtr.toml")).unwrap_or_else(|e| panic!("{e}"))
}

async fn wait_for_mails(server: &Smtp, n: usize, within: Duration) -> Vec<smtp::Mail> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mails = server.mails();
        if mails.len() >= n || tokio::time::Instant::now() >= deadline {
            return mails;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tripped_trigger_sends_exactly_one_mail_with_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let server = Smtp::start(Mode::StarttlsAuth);
    let _port = sim(dir.path(), 260.0);
    let cfg = config(dir.path(), "digest = \"1s\"", &server.email_keys("starttls", Some(smtp::PASSWORD)));
    let board = FakeBoard::new();
    let daemon = Daemon::start(cfg, &board);
    board.wait_level(17, false, Duration::from_secs(10)).await.expect("tripped");
    wait_for_mails(&server, 1, Duration::from_secs(15)).await;
    // Steady overvoltage: no other transition, so no other mail.
    tokio::time::sleep(Duration::from_secs(3)).await;
    daemon.stop().await;
    let mails = server.mails();
    assert_eq!(mails.len(), 1, "{mails:?}\n{}", server.log());
    let m = &mails[0];
    assert_eq!(m.subject, "[pmtr] house-pi: trigger overvoltage tripped");
    assert!(m.to.contains("ops@example.test"), "{m:?}");
    assert!(m.body.contains("Gateway house-pi"), "{}", m.body);
    assert!(m.body.contains("values: L1U=260"), "{}", m.body);
    assert!(m.body.contains(" UTC)"), "both times: {}", m.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_mail_server_away_alerts_wait_on_disk_across_a_restart_and_arrive_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // The port stays ours while the server is "away": something accepts there and hangs up at
    // once, so that no other test's server can take it meanwhile.
    let away = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let smtp_port = away.local_addr().unwrap().port();
    let hang_up = tokio::spawn(async move {
        while let Ok((conn, _)) = away.accept().await {
            drop(conn);
        }
    });
    let email = format!(
        "host = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"plain\"\nfrom = \"gw@example.test\"\n\
         to = [\"ops@example.test\"]\ntimeout = \"2s\"\n"
    );
    let alerts = "digest = \"0s\"\nmin_interval = \"0s\"";
    let port = sim(dir.path(), 260.0);

    // First run: tripped, then released; both alerts queue while the server is away.
    let board = FakeBoard::new();
    let daemon = Daemon::start(config(dir.path(), alerts, &email), &board);
    board.wait_level(17, false, Duration::from_secs(10)).await.expect("tripped");
    set_volts(&port, 230.0);
    board.wait_level(17, true, Duration::from_secs(10)).await.expect("released");
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.stop().await;
    let queued = std::fs::read_dir(dir.path().join("state/alerts")).unwrap().count();
    assert_eq!(queued, 2, "two mails wait on disk");

    // The server comes up; the daemon restarts: the queue is sent, in order, once.
    hang_up.abort();
    let _ = hang_up.await;
    let server = Smtp::start_on(Mode::Plain, smtp_port);
    let board = FakeBoard::new();
    let daemon = Daemon::start(config(dir.path(), alerts, &email), &board);
    wait_for_mails(&server, 2, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    daemon.stop().await;
    let mails = server.mails().into_iter().map(|m| m.subject).collect::<Vec<_>>();
    assert_eq!(
        mails,
        vec!["[pmtr] house-pi: trigger overvoltage tripped", "[pmtr] house-pi: trigger overvoltage released"],
        "{}",
        server.log()
    );
    assert_eq!(std::fs::read_dir(dir.path().join("state/alerts")).unwrap().count(), 0, "the queue is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_trigger_is_one_digest_not_a_flood() {
    let dir = tempfile::tempdir().unwrap();
    let server = Smtp::start(Mode::Plain);
    let port = sim(dir.path(), 230.0);
    // No hold, no recovery: every reading across the threshold is a transition.
    let cfg = config(
        dir.path(),
        "digest = \"2s\"\nmin_interval = \"5m\"\nmax_per_hour = 3",
        &server.email_keys("plain", None),
    );
    let mut cfg = cfg;
    cfg.triggers[0].hold = Duration::ZERO;
    let board = FakeBoard::new();
    let daemon = Daemon::start(cfg, &board);
    board.wait_level(17, true, Duration::from_secs(10)).await.expect("claimed");
    for i in 0..20 {
        set_volts(&port, if i % 2 == 0 { 260.0 } else { 230.0 });
        tokio::time::sleep(Duration::from_millis(450)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    daemon.stop().await;
    let switches = board.events_of(17).len() - 1;
    assert!(switches >= 10, "the relay followed the flapping ({switches} switches)");
    let mails = server.mails();
    assert_eq!(mails.len(), 1, "{} transitions, one mail: {mails:?}", switches);
    let body = &mails[0].body;
    assert!(mails[0].subject.contains("2 alerts"), "{}", mails[0].subject);
    assert!(
        body.contains("trigger overvoltage tripped") && body.contains("trigger overvoltage released"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_after_an_unclean_stop_is_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let server = Smtp::start(Mode::Plain);
    let _port = sim(dir.path(), 230.0);
    let cfg = config(dir.path(), "digest = \"0s\"", &server.email_keys("plain", None));
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("state/running"), "4242\n").unwrap(); // as a crash leaves it
    let board = FakeBoard::new();
    let daemon = Daemon::start(cfg, &board);
    let mails = wait_for_mails(&server, 1, Duration::from_secs(10)).await;
    daemon.stop().await;
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0].subject.contains("started after an unclean stop"), "{}", mails[0].subject);
    assert!(!dir.path().join("state/running").exists(), "a clean stop removes the marker");
}
