//! The page at `/` in a real headless browser: Debian's chromium driven through chromedriver's
//! WebDriver HTTP API, against `pmtr run` with a simulated PZEM-016 and a fake relay board.
//! The values on the page are the simulator's; a relay forced from the page with the API token
//! switches the fake GPIO, and without it (or with a wrong one) the page shows the API's
//! refusal and the relay stays; no console errors; screenshots under the target directory
//! (`target/tmp/page/`).

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/servers.rs"]
mod servers;

use gateway::{simulator, Daemon, PIN};
use pmtr::relay::FakeBoard;
use pmtr::sim::SimPort;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "page-token-0123456789abcdef";
const VOLTS: f64 = 231.5;
const AMPS: f64 = 2.345;
const PF: f64 = 0.9;
const HZ: f64 = 50.1;
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn meter(dir: &Path) -> SimPort {
    simulator::spawn(
        &dir.join("ttyUSB0"),
        &[format!("pzem-016@4,volts={VOLTS},amps={AMPS},pf={PF},hz={HZ},kwh=12.5")],
    )
}

fn config(dir: &Path, listen: &str) -> pmtr::config::Config {
    let rest = format!(
        "[[trigger]]\nname = \"overvoltage\"\nmeter = \"main\"\nwhen = \"L1U > 253\"\nrelays = [\"motor\"]\n\
         [status]\nlisten = \"{listen}\"\ntoken = \"{TOKEN}\"\n"
    );
    pmtr::config::load_str(&gateway::toml(dir, "page-test", &rest), "test.toml")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// chromedriver on a free port, in its own process group (with the chromium it starts), killed
/// at drop.
struct Driver {
    _process: servers::Proc,
    url: String,
    http: reqwest::Client,
    session: Option<String>,
    profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        for (bin, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(bin).exists(),
                "{bin} not found: the page test needs Debian's chromium and chromedriver \
                 (`apt-get install {package}`; tests/run.sh installs chromium and chromium-driver)"
            );
        }
        let port = servers::free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}")).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let driver = Driver {
            _process: servers::Proc::start_group(CHROMEDRIVER, &mut cmd, "apt-get install chromium-driver"),
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
            session: None,
            profile: tempfile::Builder::new().prefix("pmtr-chromium-").tempdir().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = driver.http.get(format!("{}/status", driver.url)).send().await {
                if r.status().is_success() {
                    return driver;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer on port {port} within 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b.to_string());
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = r.status();
        let bytes = r.bytes().await.unwrap();
        let v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}: {}", String::from_utf8_lossy(&bytes)));
        assert!(status.is_success(), "WebDriver {method} {path}: {status}: {v}");
        v["value"].clone()
    }

    /// A new chromium session (headless, no network of its own, a fresh profile).
    async fn open(&mut self, width: u32, height: u32) {
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", self.profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = self.send(reqwest::Method::POST, "/session", Some(caps)).await;
        self.session = Some(v["sessionId"].as_str().expect("a session id").to_owned());
        // Every error of the page's scripts, collected from before they run.
        self.session_post(
            "/goog/cdp/execute",
            json!({"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source":
                "window.__errors = []; \
                 window.addEventListener('error', e => window.__errors.push(String(e.message))); \
                 window.addEventListener('unhandledrejection', e => window.__errors.push('rejection: ' + e.reason)); \
                 const ce = console.error; console.error = (...a) => { window.__errors.push(a.join(' ')); ce(...a); };"
            }}),
        )
        .await;
    }

    async fn session_post(&self, path: &str, body: Value) -> Value {
        let s = self.session.as_ref().expect("no session");
        self.send(reqwest::Method::POST, &format!("/session/{s}{path}"), Some(body)).await
    }

    async fn session_get(&self, path: &str) -> Value {
        let s = self.session.as_ref().expect("no session");
        self.send(reqwest::Method::GET, &format!("/session/{s}{path}"), None).await
    }

    async fn go(&self, url: &str) {
        self.session_post("/url", json!({ "url": url })).await;
    }

    async fn script(&self, script: &str) -> Value {
        self.session_post("/execute/sync", json!({ "script": script, "args": [] })).await
    }

    /// Waits until `script` returns something other than null or false (within 20 s).
    async fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.script(script).await;
            if !v.is_null() && v != json!(false) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: not on the page within 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.session_post("/element", json!({"using": "css selector", "value": css})).await;
        let id =
            e.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("an element id");
        self.session_post(&format!("/element/{id}/clear"), json!({})).await;
        self.session_post(&format!("/element/{id}/value"), json!({ "text": text })).await;
    }

    async fn click(&self, css: &str) {
        let e = self.session_post("/element", json!({"using": "css selector", "value": css})).await;
        let id =
            e.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("an element id");
        self.session_post(&format!("/element/{id}/click"), json!({})).await;
    }

    /// Clicks the button of the relay row `relay` that reads `text` (rows are redrawn every 2 s,
    /// so it is found and clicked in one step).
    async fn relay_button(&self, relay: &str, text: &str) {
        let found = self
            .script(&format!(
                "const b = [...document.querySelectorAll('[data-relay=\"{relay}\"] button')]\
                 .find(b => b.textContent === '{text}'); if (b) b.click(); return !!b;"
            ))
            .await;
        assert_eq!(found, json!(true), "no button {text} for relay {relay}");
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.session_get("/screenshot").await;
        let png = base64(v.as_str().expect("base64 PNG"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("page");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    /// The browser's log entries of level SEVERE.
    async fn severe_log(&self) -> Vec<String> {
        let v = self.session_post("/se/log", json!({"type": "browser"})).await;
        v.as_array()
            .expect("log entries")
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn quit(mut self) {
        if let Some(s) = self.session.take() {
            self.send(reqwest::Method::DELETE, &format!("/session/{s}"), None).await;
        }
    }
}

/// Standard base64, as WebDriver sends screenshots.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> =
        text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Waits until the API's history has a voltage of `main`.
async fn history_of_main(base: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let url = format!("{base}/api/history?meter=main");
        let r = tokio::task::spawn_blocking(move || servers::try_http("GET", &url, &[], b"")).await.unwrap();
        if let Ok(r) = r {
            assert_eq!(r.status, 200, "{}", r.text());
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            if v["meters"]["main"]["L1U"].as_array().is_some_and(|a| a.iter().any(|x| !x.is_null())) {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "no history of meter main within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The message the page shows.
const MSG: &str = "document.getElementById('msg').textContent";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_meter_and_forces_a_relay_only_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let _meter = meter(dir.path());
    let port = servers::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let board = FakeBoard::new();
    let daemon = Daemon::start(config(dir.path(), &format!("127.0.0.1:{port}")), &board);

    // The history behind the charts: the simulator's values, one hour of 10 s buckets.
    let h = history_of_main(&base).await;
    assert_eq!((h["bucket_seconds"].as_i64(), h["buckets"].as_u64()), (Some(10), Some(360)), "{h}");
    let volts: Vec<f64> =
        h["meters"]["main"]["L1U"].as_array().unwrap().iter().filter_map(Value::as_f64).collect();
    assert!(volts.iter().all(|v| *v == VOLTS), "{volts:?}");

    let mut browser = Driver::start().await;
    browser.open(1100, 1500).await;
    browser.go(&format!("{base}/")).await;

    // The values on the page are the simulator's.
    let value = |var: &str| {
        format!("const e = document.querySelector('[data-meter=\"main\"] [data-var=\"{var}\"]'); return e && e.dataset.value")
    };
    let shown = |v: Value| v.as_str().and_then(|s| s.parse::<f64>().ok()).unwrap();
    assert_eq!(shown(browser.wait_for("L1U of main", &value("L1U")).await), VOLTS);
    assert_eq!(shown(browser.script(&value("L1I")).await), AMPS);
    assert_eq!(shown(browser.script(&value("L1f")).await), HZ);
    assert_eq!(shown(browser.script(&value("L1pf")).await), PF);
    let watts = shown(browser.script(&value("L1P")).await);
    assert!((watts - VOLTS * AMPS * PF).abs() <= 0.11, "{watts} W");
    let text = browser.script("return document.querySelector('[data-meter=\"main\"]').textContent").await;
    let text = text.as_str().unwrap();
    assert!(text.contains("231.5") && text.contains("2.345") && text.contains("pzem-016"), "{text}");
    assert!(text.contains("read ") && text.contains(" ago"), "the age of the reading: {text}");
    // The chart of the last hour, the relay, the trigger, the sink and the bus.
    browser
        .wait_for("the voltage chart", "return !!document.querySelector('svg[data-chart=\"main:U\"] path')")
        .await;
    let row = |what: &str, name: &str, attr: &str| {
        format!("const e = document.querySelector('[data-{what}=\"{name}\"]'); return e && e.dataset.{attr}")
    };
    assert_eq!(browser.script(&row("relay", "motor", "level")).await, "on");
    assert_eq!(browser.script(&row("relay", "motor", "forced")).await, "");
    assert_eq!(browser.script(&row("trigger", "overvoltage", "state")).await, "released");
    let sink = browser.script("return document.querySelector('[data-sink=\"csv\"]').textContent").await;
    assert!(sink.as_str().unwrap().contains("healthy"), "{sink}");
    let bus = browser.script("return document.querySelector('[data-bus=\"b\"]').textContent").await;
    assert!(bus.as_str().unwrap().contains("1/1 answering"), "{bus}");
    // The energy books of the meter (a PZEM counts energy), and no broken-neutral part
    // without a `[[neutral]]` set; a set's row as the page draws it.
    let energy = browser
        .wait_for(
            "the energy of main",
            "const e = document.querySelector('[data-energy=\"main\"]'); return e && e.textContent",
        )
        .await;
    assert!(energy.as_str().unwrap().contains("kWh"), "{energy}");
    assert_eq!(browser.script("return document.getElementById('energy-part').hidden").await, json!(false));
    assert_eq!(browser.script("return document.getElementById('neutral-part').hidden").await, json!(true));
    let set = browser
        .script("return neutralRow({name: 'supply', state: 'fault', shift: 38.2, score: 1.5}).textContent")
        .await;
    assert_eq!(set, json!("supplyFAULT38.20 V1.50"));
    browser.screenshot("page.png").await;
    // The page asks only for the buckets it lacks and shifts its hour along.
    let merged = browser
        .script(
            "return merge({bucket_seconds: 10, buckets: 3, start: 100, meters: {m: {U: [1, 2, null]}}}, \
             {bucket_seconds: 10, buckets: 3, start: 120, meters: {m: {U: [3, 4], P: [5, null]}, n: {}}})",
        )
        .await;
    assert_eq!(
        merged,
        json!({"bucket_seconds": 10, "buckets": 3, "start": 110,
               "meters": {"m": {"U": [2, 3, 4], "P": [null, 5, null]}, "n": {}}}),
        "{merged}"
    );

    // Without a token: the API's refusal on the page, and the relay stays on.
    let switches = board.events_of(PIN).len();
    browser.relay_button("motor", "Off").await;
    let refusal =
        browser.wait_for("the refusal", &format!("return {MSG}.includes('refused') && {MSG}")).await;
    let refusal = refusal.as_str().unwrap();
    assert!(refusal.contains("401") && refusal.contains("a token is needed"), "{refusal}");
    // A wrong token: refused as well.
    browser.type_into("#token", "not-the-token").await;
    browser.click("#token-save").await;
    browser.relay_button("motor", "Off").await;
    let wrong =
        browser.wait_for("the refusal", &format!("return {MSG}.includes('wrong token') && {MSG}")).await;
    assert!(wrong.as_str().unwrap().contains("401"), "{wrong}");
    assert_eq!(board.level(PIN), Some(true), "a refused force moved the relay");
    assert_eq!(board.events_of(PIN).len(), switches, "{:?}", board.events_of(PIN));

    // With the token, kept in the tab's session storage: the fake GPIO switches.
    browser.type_into("#token", TOKEN).await;
    browser.click("#token-save").await;
    assert_eq!(browser.script("return sessionStorage.getItem('pmtr-token')").await, TOKEN);
    browser.relay_button("motor", "Off").await;
    board.wait_level(PIN, false, Duration::from_secs(5)).await.unwrap();
    browser
        .wait_for(
            "the forced relay",
            "return document.querySelector('[data-relay=\"motor\"]').dataset.forced === 'off'",
        )
        .await;
    assert_eq!(browser.script(&row("relay", "motor", "level")).await, "off");
    let done = browser.script(&format!("return {MSG}")).await;
    assert!(done.as_str().unwrap().starts_with("force motor off"), "{done}");
    browser.screenshot("page-forced.png").await;
    browser.relay_button("motor", "Release").await;
    board.wait_level(PIN, true, Duration::from_secs(5)).await.unwrap();

    // On a phone's width nothing runs off the side.
    browser.session_post("/window/rect", json!({"width": 390, "height": 844})).await;
    let fits = browser
        .wait_for(
            "the phone layout",
            "return document.documentElement.scrollWidth <= window.innerWidth + 1 || null",
        )
        .await;
    assert_eq!(fits, true);
    browser.screenshot("page-phone.png").await;

    // No script errors; in the browser's log only the refused requests.
    assert_eq!(browser.script("return window.__errors").await, json!([]));
    let severe: Vec<String> = browser
        .severe_log()
        .await
        .into_iter()
        // The refused force, and the reads while the wrong token was kept (a wrong token is
        // never ignored): the browser logs every 401.
        .filter(|m| {
            !(m.contains("status of 401")
                && ["/api/relays/motor/force", "/api/status", "/api/history"].iter().any(|p| m.contains(p)))
        })
        .collect();
    assert!(severe.is_empty(), "console errors: {severe:#?}");
    browser.quit().await;
    daemon.stop().await;
}
