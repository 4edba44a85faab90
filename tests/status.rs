//! The status API, `/metrics` and `pmtr status` against the whole gateway: a simulated PZEM-016
//! with known values on a pseudo-terminal, `pmtr run` in process with a fake relay board, and
//! plain HTTP/1.1 requests from outside.

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/servers.rs"]
mod servers;
#[path = "support/smtp.rs"]
mod smtp;

use gateway::{simulator, Daemon, PIN};
use pmtr::relay::FakeBoard;
use pmtr::sim::SimPort;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "test-token-0123456789abcdef";
/// What the simulated meter serves (PZEM resolution: 0.1 V, 1 mA, 0.1 W, 0.1 Hz, 0.01).
const VOLTS: f64 = 231.5;
const AMPS: f64 = 2.345;
const PF: f64 = 0.9;
const HZ: f64 = 50.1;

const TRIGGER: &str = r#"
[[trigger]]
name = "overvoltage"
meter = "main"
when = "L1U > 253"
relays = ["motor"]
"#;

fn meter(dir: &Path) -> SimPort {
    simulator::spawn(
        &dir.join("ttyUSB0"),
        &[format!("pzem-016@4,volts={VOLTS},amps={AMPS},pf={PF},hz={HZ},kwh=12.5")],
    )
}

/// The gateway with its API on `listen`, plus `status` keys.
fn config(dir: &Path, listen: &str, status: &str) -> pmtr::config::Config {
    let rest = format!("{TRIGGER}\n[status]\nlisten = \"{listen}\"\n{status}");
    pmtr::config::load_str(&gateway::toml(dir, "status-test", &rest), "test.toml")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One request, off the runtime's threads.
async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> servers::HttpResponse {
    let (method, url, body) = (method.to_owned(), url.to_owned(), body.to_vec());
    let headers: Vec<(String, String)> =
        headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        servers::http_response(&method, &url, &h, &body)
    })
    .await
    .unwrap()
}

async fn get_json(url: &str) -> Value {
    let r = request("GET", url, &[], b"").await;
    assert_eq!(r.status, 200, "GET {url}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("GET {url}: {e}: {}", r.text()))
}

/// Waits until the meter has a reading in the API.
async fn first_reading(base: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = tokio::task::spawn_blocking({
            let url = format!("{base}/api/meters/main");
            move || servers::try_http("GET", &url, &[], b"")
        })
        .await
        .unwrap()
        {
            if r.status == 200 {
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                if !v["reading"].is_null() {
                    return v;
                }
            }
        }
        assert!(Instant::now() < deadline, "no reading in the status API within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of one series in Prometheus text.
fn series(text: &str, name: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '));
    let line = line.unwrap_or_else(|| panic!("no series {name} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_metrics_show_what_the_meter_serves() {
    let dir = tempfile::tempdir().unwrap();
    let _meter = meter(dir.path());
    let port = servers::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let board = FakeBoard::new();
    let daemon = Daemon::start(config(dir.path(), &format!("127.0.0.1:{port}"), ""), &board);

    let m = first_reading(&base).await;
    let v = &m["reading"]["values"];
    assert_eq!(v["L1U"].as_f64(), Some(VOLTS), "{m}");
    assert_eq!(v["L1I"].as_f64(), Some(AMPS), "{m}");
    assert_eq!(v["L1f"].as_f64(), Some(HZ), "{m}");
    assert_eq!(v["L1pf"].as_f64(), Some(PF), "{m}");
    let watts = v["L1P"].as_f64().unwrap();
    assert!(close(watts, VOLTS * AMPS * PF, 0.11), "{watts} W");
    assert!(v["L1e"].as_f64().unwrap() >= 12.5, "{m}");
    assert_eq!(m["address"], 4);
    assert_eq!(m["model"], "pzem-016");
    assert_eq!(m["state"], "ok");
    let tty = dir.path().join("ttyUSB0").display().to_string();
    assert_eq!(m["port"].as_str(), Some(tty.as_str()));

    let s = get_json(&format!("{base}/api/status")).await;
    assert_eq!(s["gateway"], "status-test");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["uptime_seconds"].as_u64().is_some());
    assert_eq!(s["ports"][&tty], serde_json::json!(["main"]), "the discovery map: {s}");
    let c = &s["meters"][0]["counters"];
    let polls = c["requests"].as_u64().unwrap() + c["probes"].as_u64().unwrap();
    assert!(polls >= c["readings"].as_u64().unwrap(), "{c}");
    assert!(c["readings"].as_u64().unwrap() >= 1);
    assert_eq!(c["crc_errors"], 0);
    assert_eq!(s["relays"][0]["name"], "motor");
    assert_eq!(s["relays"][0]["level"], "on");
    assert_eq!(s["triggers"][0]["name"], "overvoltage");
    assert_eq!(s["triggers"][0]["state"], "released");
    assert_eq!(s["sinks"][0]["kind"], "csv");
    assert!(s["sinks"][0]["spool_readings"].as_u64().is_some());
    assert_eq!(get_json(&format!("{base}/api/relays")).await[0]["default"], "on");
    assert_eq!(get_json(&format!("{base}/api/triggers")).await[0]["when"], "L1U > 253");
    assert_eq!(get_json(&format!("{base}/api/ports")).await[&tty][0], "main");
    assert_eq!(get_json(&format!("{base}/healthz")).await["status"], "ok");

    let r = request("GET", &format!("{base}/metrics"), &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    assert_eq!(series(&text, r#"pmtr_voltage_volts{meter="main",phase="l1"}"#), VOLTS);
    assert_eq!(series(&text, r#"pmtr_current_amperes{meter="main",phase="l1"}"#), AMPS);
    assert_eq!(series(&text, r#"pmtr_frequency_hertz{meter="main",phase="l1"}"#), HZ);
    assert!(close(series(&text, r#"pmtr_power_watts{meter="main",phase="l1"}"#), VOLTS * AMPS * PF, 0.11));
    let polls = series(&text, r#"pmtr_meter_requests_total{meter="main"}"#)
        + series(&text, r#"pmtr_meter_probes_total{meter="main"}"#);
    assert!(polls >= 1.0, "{text}");
    assert_eq!(series(&text, r#"pmtr_meter_timeouts_total{meter="main"}"#), 0.0);
    assert_eq!(series(&text, r#"pmtr_meter_crc_errors_total{meter="main"}"#), 0.0);
    assert_eq!(series(&text, r#"pmtr_relay_on{relay="motor"}"#), 1.0);
    assert_eq!(series(&text, r#"pmtr_trigger_tripped{trigger="overvoltage"}"#), 0.0);
    assert_eq!(series(&text, r#"pmtr_sink_up{sink="csv",kind="csv"}"#), 1.0);
    let written = r#"pmtr_sink_points_written_total{sink="csv",kind="csv"}"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = request("GET", &format!("{base}/metrics"), &[], b"").await.text();
        if series(&text, written) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no point written in 5 s:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let relays_on = board.level(PIN);
    daemon.stop().await;
    assert_eq!(relays_on, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_clear_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let _meter = meter(dir.path());
    let port = servers::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let board = FakeBoard::new();
    // No token: reads from the loopback work, writes are refused.
    let daemon = Daemon::start(config(dir.path(), &format!("127.0.0.1:{port}"), ""), &board);
    first_reading(&base).await;

    let error_of = |r: &servers::HttpResponse| -> String {
        assert_eq!(r.header("content-type"), Some("application/json"), "{}", r.text());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        v["error"].as_str().unwrap_or_else(|| panic!("no error message: {v}")).to_owned()
    };
    let r = request("GET", &format!("{base}/api/nothing"), &[], b"").await;
    assert_eq!(r.status, 404);
    assert!(error_of(&r).contains("/api/status"), "the endpoints are listed");
    let r = request("GET", &format!("{base}/api/meters/nosuch"), &[], b"").await;
    assert_eq!(r.status, 404);
    assert!(error_of(&r).contains("nosuch"));
    let r = request("GET", &format!("{base}/api/relays/motor/force"), &[], b"").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    error_of(&r);
    let r = request("DELETE", &format!("{base}/api/status"), &[], b"").await;
    assert_eq!(r.status, 405);
    let r = request("POST", &format!("{base}/api/relays/motor/force"), &[], br#"{"level":"off"}"#).await;
    assert_eq!(r.status, 403);
    assert!(error_of(&r).contains("token"), "{}", r.text());
    assert_eq!(board.level(PIN), Some(true), "nothing switched");
    daemon.stop().await;

    // With a token: wrong or missing tokens, bad bodies, unknown names, refusals.
    let port = servers::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let board = FakeBoard::new();
    let daemon = Daemon::start(
        config(dir.path(), &format!("127.0.0.1:{port}"), &format!("token = \"{TOKEN}\"")),
        &board,
    );
    first_reading(&base).await;
    let auth = format!("Bearer {TOKEN}");
    let good = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let force = format!("{base}/api/relays/motor/force");
    let r = request("POST", &force, &[], br#"{"level":"off"}"#).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"pmtr\""));
    error_of(&r);
    let r =
        request("POST", &force, &[("Authorization", "Bearer not-the-token-at-all")], br#"{"level":"off"}"#)
            .await;
    assert_eq!(r.status, 401);
    assert_eq!(error_of(&r), "wrong token");
    let r = request("POST", &force, &good, br#"{"level":"sideways"}"#).await;
    assert_eq!(r.status, 400);
    assert!(error_of(&r).contains("level"), "{}", r.text());
    let r = request("POST", &force, &good, b"level=off").await;
    assert_eq!(r.status, 400);
    let r = request("POST", &force, &good, br#"{"level":"off","for":"3 fortnights"}"#).await;
    assert_eq!(r.status, 400);
    assert!(error_of(&r).contains("for"));
    let big = vec![b' '; 64 * 1024];
    let r = request("POST", &force, &good, &big).await;
    assert_eq!(r.status, 413);
    error_of(&r);
    let r = request("POST", &format!("{base}/api/relays/nosuch/force"), &good, br#"{"level":"off"}"#).await;
    assert_eq!(r.status, 404);
    let r = request("POST", &format!("{base}/api/triggers/overvoltage/reset"), &good, b"").await;
    assert_eq!(r.status, 409, "not latched: {}", r.text());
    assert!(error_of(&r).contains("latch"), "{}", r.text());
    assert_eq!(board.events_of(PIN).len(), 1, "only the claim at start: {:?}", board.events_of(PIN));

    // And the right request does what it says, logged with who asked.
    let r = request("POST", &force, &good, br#"{"level":"off","for":"1h"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v["message"].as_str().unwrap().contains("forced off"), "{v}");
    assert_eq!(board.level(PIN), Some(false));
    let relays = get_json(&format!("{base}/api/relays")).await;
    assert_eq!(relays[0]["level"], "off");
    assert!(relays[0]["forced"]["by"].as_str().unwrap().starts_with("http 127.0.0.1:"), "{relays}");
    assert!(relays[0]["forced"]["until"].is_string());
    let r = request("POST", &format!("{base}/api/relays/motor/release"), &good, b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(board.level(PIN), Some(true));
    let text = request("GET", &format!("{base}/metrics"), &[], b"").await.text();
    assert_eq!(series(&text, r#"pmtr_relay_transitions_total{relay="motor"}"#), 2.0, "off and on again");
    daemon.stop().await;
    // The change is in storage with its cause.
    let changes: String = std::fs::read_dir(dir.path().join("csv"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("changes-"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(changes.contains("forced") && changes.contains("http 127.0.0.1:"), "{changes}");
}

/// Bound to every address with a token: the loopback reads without it, every write needs it.
/// (Reads from off the loopback need the token too; that decision is `authorize`'s, tested
/// with non-loopback peers in `src/status/http.rs`: the tests send no traffic to an address
/// outside 127.0.0.0/8.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_to_every_address_the_token_guards_writes() {
    let dir = tempfile::tempdir().unwrap();
    let _meter = meter(dir.path());
    let port = servers::free_port();
    let board = FakeBoard::new();
    let daemon = Daemon::start(
        config(dir.path(), &format!("0.0.0.0:{port}"), &format!("token = \"{TOKEN}\"")),
        &board,
    );
    let local = format!("http://127.0.0.1:{port}");
    first_reading(&local).await;
    for path in ["/api/status", "/api/meters/main", "/metrics"] {
        let r = request("GET", &format!("{local}{path}"), &[], b"").await;
        assert_eq!(r.status, 200, "the loopback reads without a token");
        // A wrong token is never ignored, even where none is needed.
        let r = request(
            "GET",
            &format!("{local}{path}"),
            &[("Authorization", "Bearer wrong-wrong-wrong-wrong")],
            b"",
        )
        .await;
        assert_eq!(r.status, 401);
    }
    assert_eq!(request("GET", &format!("{local}/healthz"), &[], b"").await.status, 200);
    let r = request("POST", &format!("{local}/api/relays/motor/force"), &[], br#"{"level":"off"}"#).await;
    assert_eq!(r.status, 401);
    assert_eq!(board.level(PIN), Some(true));
    let auth = format!("Bearer {TOKEN}");
    let r = request(
        "POST",
        &format!("{local}/api/relays/motor/force"),
        &[("Authorization", &auth)],
        br#"{"level":"off"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    board.wait_level(PIN, false, std::time::Duration::from_secs(5)).await.unwrap();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pmtr_status_shows_the_running_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let _meter = meter(dir.path());
    // L2 and L3 beside `main` on L1, the same voltage on each: a sound neutral.
    let phases: Vec<String> = [5, 6].iter().map(|a| format!("pzem-016@{a},volts={VOLTS}")).collect();
    let _phases = simulator::spawn(&dir.path().join("ttyUSB1"), &phases);
    let neutral = r#"
[[meter]]
name = "l2"
model = "pzem-016"
address = 5
phase = "L2"
poll = "200ms"
[[meter]]
name = "l3"
model = "pzem-016"
address = 6
phase = "L3"
poll = "200ms"
[[neutral]]
name = "supply"
meters = ["main", "l2", "l3"]
"#;
    let port = servers::free_port();
    let board = FakeBoard::new();
    let cfg_text = gateway::toml(
        dir.path(),
        "status-test",
        &format!("{TRIGGER}{neutral}\n[status]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let cfg = dir.path().join("pmtr.toml");
    std::fs::write(&cfg, &cfg_text).unwrap();
    let daemon = Daemon::start(pmtr::config::load_file(&cfg).unwrap(), &board);
    first_reading(&format!("http://127.0.0.1:{port}")).await;
    // The neutral set judged once all three phases have been read.
    let deadline = Instant::now() + Duration::from_secs(15);
    while get_json(&format!("http://127.0.0.1:{port}/api/status")).await["neutral"][0]["state"] != "ok" {
        assert!(Instant::now() < deadline, "the neutral set not `ok` within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let run = |args: Vec<String>| async move {
        let out =
            tokio::process::Command::new(env!("CARGO_BIN_EXE_pmtr")).args(&args).output().await.unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(vec!["status".into(), "--config".into(), cfg.display().to_string()]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with(&format!("pmtr {} on status-test, up ", env!("CARGO_PKG_VERSION"))), "{out}");
    let row = out.lines().find(|l| l.starts_with("main ")).unwrap_or_else(|| panic!("no meter row:\n{out}"));
    assert!(row.contains("b@4") && row.contains("pzem-016") && row.contains(" ok "), "{row}");
    assert!(row.contains(&format!("L1U={VOLTS}V")) && row.contains(&format!("L1I={AMPS}A")), "{row}");
    assert!(out.contains("motor") && out.contains("overvoltage") && out.contains("csv"), "{out}");
    // The neutral set: its state, a shift of a volt or less on equal phases, no evidence.
    let row =
        out.lines().find(|l| l.starts_with("supply ")).unwrap_or_else(|| panic!("no neutral row:\n{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "ok", "{row}");
    assert!(cells[2].parse::<f64>().is_ok_and(|v| v <= 1.0) && cells[3] == "V", "{row}");
    assert_eq!(cells[4], "0.00", "{row}");

    let url = format!("http://127.0.0.1:{port}");
    let (code, out, err) = run(vec!["status".into(), "--url".into(), url, "--json".into()]).await;
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let main = v["meters"].as_array().unwrap().iter().find(|m| m["name"] == "main").unwrap();
    assert_eq!(main["reading"]["values"]["L1U"].as_f64(), Some(VOLTS));
    assert_eq!(v["neutral"][0]["name"], "supply");
    daemon.stop().await;

    // Nobody there: a clear error, exit 1.
    let (code, _, err) = run(vec!["status".into(), "--config".into(), cfg.display().to_string()]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("no pmtr daemon answering at") && err.contains("pmtr run"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_api_answers_https_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let _meter = meter(dir.path());
    let (cert, key) = smtp::make_certificate(dir.path());
    let port = servers::free_port();
    let board = FakeBoard::new();
    let status = format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", cert.display(), key.display());
    let cfg_text = gateway::toml(
        dir.path(),
        "status-test",
        &format!("{TRIGGER}\n[status]\nlisten = \"127.0.0.1:{port}\"\n{status}"),
    );
    let cfg = dir.path().join("pmtr.toml");
    std::fs::write(&cfg, &cfg_text).unwrap();
    let daemon = Daemon::start(pmtr::config::load_file(&cfg).unwrap(), &board);

    // HTTPS with the certificate as the client's CA.
    let pem = std::fs::read(&cert).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/api/status");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        match client.get(&url).send().await {
            Ok(r) => break r,
            Err(e) => assert!(Instant::now() < deadline, "no HTTPS answer at {url}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.status(), 200);
    let v: Value = status.json().await.unwrap();
    assert_eq!(v["gateway"], "status-test");

    // Plain HTTP on the TLS port gets no answer.
    let plain = format!("http://127.0.0.1:{port}/api/status");
    let r = tokio::task::spawn_blocking(move || servers::try_http("GET", &plain, &[], b"")).await.unwrap();
    assert!(r.as_ref().map_or(true, |r| r.status != 200), "plain HTTP answered: {:?}", r.map(|r| r.text()));
    // A client that does not trust the certificate is refused.
    let untrusting = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    assert!(untrusting.get(&url).send().await.is_err());

    // `pmtr status`: from the configuration (https, the certificate as its CA), or --url and --ca.
    let run = |args: Vec<String>| async move {
        let out =
            tokio::process::Command::new(env!("CARGO_BIN_EXE_pmtr")).args(&args).output().await.unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(vec!["status".into(), "--config".into(), cfg.display().to_string()]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("status-test"), "{out}");
    let https = format!("https://localhost:{port}");
    let (code, _, err) = run(vec!["status".into(), "--url".into(), https.clone()]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("--ca"), "{err}");
    let (code, out, err) = run(vec![
        "status".into(),
        "--url".into(),
        https,
        "--ca".into(),
        cert.display().to_string(),
        "--json".into(),
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["gateway"], "status-test");
    daemon.stop().await;
}

/// Everything logged in this test binary, from the first call on.
fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let to = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(to.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
        logs
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_shows_in_the_config_the_logs_or_api_sinks() {
    const SECRETS: [&str; 4] = ["url-pass-1", "password-2", "token-3-abcdef", "status-token-4-0123456789"];
    let logs = captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let _meter = meter(dir.path());
    let port = servers::free_port();
    let board = FakeBoard::new();
    // Databases that are not there: their errors name the URL.
    let dead = servers::free_port();
    let rest = format!(
        "{TRIGGER}\n[[sink]]\nname = \"db1\"\ntype = \"influxdb1\"\nurl = \"http://admin:url-pass-1@127.0.0.1:{dead}\"\n\
         database = \"pmtr\"\nusername = \"admin\"\npassword = \"password-2\"\nflush_interval = \"100ms\"\n\
         [[sink]]\nname = \"db2\"\ntype = \"influxdb2\"\nurl = \"http://127.0.0.1:{dead}\"\norg = \"o\"\n\
         bucket = \"b\"\ntoken = \"token-3-abcdef\"\nflush_interval = \"100ms\"\n\
         [status]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"status-token-4-0123456789\"\n"
    );
    let config = pmtr::config::load_str(&gateway::toml(dir.path(), "status-test", &rest), "test.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    let shown = format!("{config:?} {config:#?}");
    for s in SECRETS {
        assert!(!shown.contains(s), "{s} in the Debug of the configuration: {shown}");
    }
    assert!(shown.contains("http://admin:(hidden)@127.0.0.1"), "{shown}");

    let daemon = Daemon::start(config, &board);
    let base = format!("http://127.0.0.1:{port}");
    first_reading(&base).await;
    // Wait until the first sink has failed (its error names the URL).
    let deadline = Instant::now() + Duration::from_secs(15);
    let sinks = loop {
        let sinks = get_json(&format!("{base}/api/sinks")).await;
        let failed = sinks.as_array().unwrap().iter().filter(|s| !s["last_error"].is_null()).count();
        if failed == 2 {
            break sinks;
        }
        assert!(Instant::now() < deadline, "the sinks did not fail within 15 s: {sinks}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    daemon.stop().await;
    let text = sinks.to_string();
    assert!(text.contains("http://admin:(hidden)@127.0.0.1"), "{text}");
    for s in SECRETS {
        assert!(!text.contains(s), "{s} in /api/sinks: {text}");
    }
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let ready = logged.lines().find(|l| l.contains("sink ready") && l.contains("db1"));
    assert!(
        ready.is_some_and(|l| l.contains("http://admin:(hidden)@")),
        "no sink line for db1 in:\n{logged}"
    );
    let failure = logged.lines().find(|l| l.contains("db1") && l.contains("cannot connect"));
    assert!(failure.is_some_and(|l| l.contains("(hidden)")), "no failure line for db1 in:\n{logged}");
    for s in SECRETS {
        assert!(!logged.contains(s), "{s} in the logs:\n{logged}");
    }
}

#[test]
fn a_tls_key_that_does_not_match_its_certificate_is_an_error_at_the_key() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (cert, _) = smtp::make_certificate(one.path());
    let (_, other_key) = smtp::make_certificate(two.path());
    let load = |cert: &Path, key: &Path| {
        let text = format!(
            "[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n[[meter]]\nname = \"m\"\nmodel = \"rx380\"\naddress = 1\n\
             [status]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        );
        pmtr::config::load_str(&text, "pmtr.toml").map(|_| ()).map_err(|e| e.to_string())
    };
    let e = load(&cert, &other_key).unwrap_err();
    assert!(e.starts_with("pmtr.toml:10:11: status.tls_key: ") && e.contains("cannot serve"), "{e}");
    // A certificate where the key should be, and a key where the certificate should be.
    let e = load(&other_key, &cert).unwrap_err();
    assert!(e.contains("pmtr.toml:9:12: status.tls_cert: ") && e.contains("no PEM certificate"), "{e}");
    assert!(e.contains("pmtr.toml:10:11: status.tls_key: ") && e.contains("no usable private key"), "{e}");
}

/// Reads `lines` into `seen` until `done(seen)`, for at most 20 s.
async fn read_until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    seen: &mut String,
    what: &str,
    done: impl Fn(&str) -> bool,
) {
    let limit = Instant::now() + Duration::from_secs(20);
    while !done(seen) {
        let left = limit.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, lines.next_line()).await {
            Ok(Ok(Some(l))) => {
                seen.push_str(&l);
                seen.push('\n');
            }
            other => panic!("{what}: not seen ({other:?}) in:\n{seen}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pmtr_status_watch_follows_the_daemon_until_it_goes_away() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let meter = meter(dir.path());
    let port = servers::free_port();
    let board = FakeBoard::new();
    let daemon = Daemon::start(config(dir.path(), &format!("127.0.0.1:{port}"), ""), &board);
    let url = format!("http://127.0.0.1:{port}");
    first_reading(&url).await;

    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pmtr"));
    cmd.args(["status", "--watch", "--interval", "200ms", "--url", &url])
        .stdout(std::process::Stdio::piped());
    let mut watch = servers::Proc::start("pmtr", &mut cmd, "cargo build");
    let stdout = tokio::process::ChildStdout::from_std(watch.take_stdout()).unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut seen = String::new();
    // A pipe: plain blocks, the table with the meter's values, the relay and the trigger.
    read_until(&mut lines, &mut seen, "the table", |s| {
        s.lines().any(|l| l.starts_with("main ") && l.contains(&format!(" {VOLTS} ")) && l.contains(" ok "))
            && s.lines().any(|l| l.starts_with("motor ") && l.contains(" on "))
            && s.lines().any(|l| l.starts_with("overvoltage ") && l.contains("released"))
    })
    .await;
    assert!(seen.starts_with(&format!("pmtr status --watch {url}, every 200ms")), "{seen}");
    assert!(!seen.contains('\x1b'), "no escape codes on a pipe: {seen:?}");

    // The voltage goes up: the trigger trips, the relay opens, both as events.
    meter.with_slave(4, |s| s.set_profile(pmtr::sim::Profile::Script(vec![(0.0, 260.0)]))).unwrap();
    read_until(&mut lines, &mut seen, "the trip as events", |s| {
        s.contains("trigger overvoltage tripped (L1U=260")
            && s.contains("relay motor switched off by overvoltage")
    })
    .await;

    // The daemon stops: said, and asked again.
    daemon.stop().await;
    read_until(&mut lines, &mut seen, "the daemon gone", |s| {
        s.matches(&format!("daemon unreachable: no pmtr daemon answering at {url}")).count() >= 2
    })
    .await;

    // Ctrl-C ends it cleanly.
    let pid = nix::unistd::Pid::from_raw(watch.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    read_until(&mut lines, &mut seen, "the goodbye", |s| s.contains(&format!("stopped watching {url}")))
        .await;
    let status = tokio::task::block_in_place(|| watch.wait_exit(Duration::from_secs(20)));
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_pmtr_status_watch_redraws_in_place() {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let _meter = meter(dir.path());
    let port = servers::free_port();
    let board = FakeBoard::new();
    let daemon = Daemon::start(config(dir.path(), &format!("127.0.0.1:{port}"), ""), &board);
    let url = format!("http://127.0.0.1:{port}");
    first_reading(&url).await;

    let size = nix::pty::Winsize { ws_row: 40, ws_col: 100, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let mut t = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pmtr"));
    cmd.args(["status", "--watch", "--interval", "200ms", "--url", &url])
        .stdout(std::fs::File::from(pty.slave));
    let mut watch = servers::Proc::start("pmtr", &mut cmd, "cargo build");
    // Our copy of the terminal's slave side goes with the command: the reader sees EIO at the end.
    drop(cmd);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut master = std::fs::File::from(pty.master);
    let into = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Until EIO: the watch has exited and closed the terminal.
        while let Ok(n @ 1..) = master.read(&mut buf) {
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let limit = Instant::now() + Duration::from_secs(20);
    while text().matches("\x1b[H").count() < 3 {
        assert!(Instant::now() < limit, "three frames: {:?}", text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = nix::unistd::Pid::from_raw(watch.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::task::block_in_place(|| watch.wait_exit(Duration::from_secs(20)));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    reader.join().unwrap();
    daemon.stop().await;
    let out = text();
    assert!(out.starts_with("\x1b[?25l\x1b[2J\x1b[H"), "{out:?}");
    let frame = out.split("\x1b[H").nth(2).unwrap().split("\x1b[J").next().unwrap();
    let lines: Vec<&str> = frame.lines().map(|l| l.trim_end_matches("\x1b[K")).collect();
    assert!(lines.iter().all(|l| l.chars().count() <= 100), "{lines:#?}");
    let main = lines.iter().find(|l| l.starts_with("main ")).unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(main.contains(&format!(" {VOLTS} ")) && main.contains(" ok "), "{main}");
    assert!(out.ends_with(&format!("\x1b[?25hstopped watching {url}\n")), "{out:?}");
}
