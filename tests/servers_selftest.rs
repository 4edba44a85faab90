//! Proves the real-server harness in tests/support/servers.rs: InfluxDB 1.6, VictoriaMetrics and
//! vmauth start on loopback, take writes, give them back, survive a restart, and are gone after
//! drop. Needs `influxdb` and `victoria-metrics` (Debian; tests/run.sh installs them) and fails,
//! saying so, when they are missing.

#[path = "support/servers.rs"]
mod servers;

use serde_json::json;
use servers::{http, try_http, Influx1, Managed, VictoriaMetrics, VmAuth};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

const TS: i64 = 1_700_000_000_000; // 2023-11-14, ms

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

fn influx_write(influx: &Influx1, db: &str, line: &str) {
    let url = format!("{}/write?db={db}&precision=ms", influx.url());
    let (status, body) = http("POST", &url, &[], line.as_bytes());
    assert_eq!(status, 204, "influxd /write: {body}");
}

fn influx_rows(influx: &Influx1, db: &str, q: &str) -> serde_json::Value {
    let v = influx.query(db, q);
    v["results"][0]["series"][0]["values"].clone()
}

#[test]
fn influx1_write_with_raw_http_and_query_back() {
    let influx = Influx1::start();
    eprintln!("influxd ready after {:?}", influx.startup_time());
    influx.create_database("x");
    influx_write(&influx, "x", &format!("power,meter=m1 w=12.5,kwh=100i {TS}"));

    let v = influx.query("x", "SELECT w, kwh, meter FROM power");
    assert_eq!(v["results"][0]["series"][0]["columns"], json!(["time", "w", "kwh", "meter"]), "{v}");
    assert_eq!(v["results"][0]["series"][0]["values"], json!([[TS, 12.5, 100, "m1"]]), "{v}");

    // Errors come back as data, not as a panic in query().
    let v = influx.query("x", "SELECT * FROM nothing_here");
    assert_eq!(v["results"][0].get("series"), None, "{v}");
    // influxd 1.6 has no InfluxDB 2 API.
    let (status, _) = http("POST", &format!("{}/api/v2/write?org=o&bucket=x", influx.url()), &[], b"m f=1");
    assert_eq!(status, 404);
}

#[test]
fn influx1_stop_and_restart_keep_port_and_data() {
    let mut influx = Influx1::start();
    let (url, pid) = (influx.url(), influx.pid());
    influx.create_database("meter");
    influx_write(&influx, "meter", &format!("power,meter=m1 w=1.5 {TS}"));

    let t = Instant::now();
    influx.stop();
    eprintln!("influxd stop took {:?}", t.elapsed());
    assert!(!alive(pid), "influxd {pid} still alive after stop()");
    assert!(try_http("GET", &format!("{url}/ping"), &[], b"").is_err(), "something still answers on {url}");

    influx.restart();
    eprintln!("influxd restart took {:?}", influx.startup_time());
    assert_eq!(influx.url(), url);
    assert_ne!(influx.pid(), pid);
    assert_eq!(influx_rows(&influx, "meter", "SELECT w FROM power"), json!([[TS, 1.5]]));

    influx_write(&influx, "meter", &format!("power,meter=m1 w=2.5 {}", TS + 1000));
    assert_eq!(influx_rows(&influx, "meter", "SELECT w FROM power"), json!([[TS, 1.5], [TS + 1000, 2.5]]));
}

/// restart() waits for its port when something else holds it for a moment.
#[test]
fn restart_waits_for_a_port_held_briefly() {
    let mut vm = VictoriaMetrics::start();
    vm.stop();
    let squatter = TcpListener::bind(("127.0.0.1", vm.port())).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        drop(squatter);
    });
    vm.restart();
    release.join().unwrap();
    assert!(vm.log().contains("address already in use"), "the port was not taken after all");
    assert_eq!(http("GET", &format!("{}/health", vm.url()), &[], b""), (200, "OK".to_string()));
}

#[test]
fn victoria_metrics_takes_influx2_writes() {
    let vm = VictoriaMetrics::start();
    eprintln!("victoria-metrics ready after {:?}", vm.startup_time());
    let url = format!("{}/api/v2/write?org=o&bucket=b&precision=ms", vm.url());
    let lines = format!("power,meter=m1 w=12.5,kwh=100i {TS}\npower,meter=m1 w=13.5,kwh=101i {}", TS + 1000);
    let (status, body) = http("POST", &url, &[("Authorization", "Token anything")], lines.as_bytes());
    assert_eq!(status, 204, "{body}");

    let mut rows = vm.wait_for_samples(r#"{__name__=~"power_.*"}"#, 4, Duration::from_secs(5));
    rows.sort_by_key(|r| r["metric"]["__name__"].as_str().unwrap_or_default().to_string());
    assert_eq!(servers::sample_count(&rows), 4, "{rows:?}");
    assert_eq!(rows[0]["metric"], json!({"__name__": "power_kwh", "meter": "m1"}));
    assert_eq!(rows[0]["values"], json!([100, 101]));
    assert_eq!(rows[1]["metric"], json!({"__name__": "power_w", "meter": "m1"}));
    assert_eq!(rows[1]["values"], json!([12.5, 13.5]));
    assert_eq!(rows[1]["timestamps"], json!([TS, TS + 1000]));

    // A line it cannot parse still gets 204; only the log says so.
    let (status, _) = http("POST", &url, &[], b"this is not line protocol");
    assert_eq!(status, 204);
}

#[test]
fn victoria_metrics_restart_keeps_port_and_data() {
    let mut vm = VictoriaMetrics::start();
    let (url, pid) = (vm.url(), vm.pid());
    let write = format!("{url}/api/v2/write?org=o&bucket=b&precision=ms");
    assert_eq!(http("POST", &write, &[], format!("up,meter=m1 v=1 {TS}").as_bytes()).0, 204);
    assert_eq!(servers::sample_count(&vm.wait_for_samples("up_v", 1, Duration::from_secs(5))), 1);

    let t = Instant::now();
    vm.stop();
    eprintln!("victoria-metrics stop took {:?}", t.elapsed());
    assert!(!alive(pid));
    assert!(try_http("GET", &format!("{url}/health"), &[], b"").is_err());
    vm.restart();
    eprintln!("victoria-metrics restart took {:?}", vm.startup_time());
    assert_eq!(vm.url(), url);

    assert_eq!(http("POST", &write, &[], format!("up,meter=m1 v=2 {}", TS + 1000).as_bytes()).0, 204);
    let rows = vm.wait_for_samples("up_v", 2, Duration::from_secs(5));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["values"], json!([1, 2]));
}

#[test]
fn vmauth_checks_the_token() {
    let vm = VictoriaMetrics::start();
    let auth = VmAuth::start(&vm.url(), "s3cret");
    eprintln!("vmauth ready after {:?}", auth.startup_time());
    let write = |measurement: &str, headers: &[(&str, &str)]| {
        let url = format!("{}/api/v2/write?org=o&bucket=b&precision=ms", auth.url());
        http("POST", &url, headers, format!("{measurement},meter=m1 v=1 {TS}").as_bytes())
    };

    assert_eq!(write("right", &[("Authorization", "Token s3cret")]).0, 204);
    let (status, body) = write("wrong", &[("Authorization", "Token nope")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cannot find the provided auth token"), "{body}");
    let (status, body) = write("none", &[]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("missing `Authorization` request header"), "{body}");

    let rows = vm.wait_for_samples(r#"{__name__=~"(right|wrong|none)_v"}"#, 1, Duration::from_secs(5));
    let names: Vec<_> = rows.iter().map(|r| r["metric"]["__name__"].as_str().unwrap()).collect();
    assert_eq!(names, ["right_v"]);
}

#[test]
fn drop_kills_every_server() {
    let pids = {
        let influx = Influx1::start();
        let vm = VictoriaMetrics::start();
        let auth = VmAuth::start(&vm.url(), "t");
        [influx.pid(), vm.pid(), auth.pid()]
    };
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived drop");
    }
}

/// The hand-written client against a scripted server: chunked bodies with several chunks and a
/// chunk extension, Content-Length bodies, and a 204 with no body.
#[test]
fn http_client_decodes_chunked_and_sized_bodies() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answers: [&[u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ];
    let server = std::thread::spawn(move || {
        let mut requests = Vec::new();
        for answer in answers {
            let (mut s, _) = listener.accept().unwrap();
            // Read the head, then as many body bytes as Content-Length says.
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            let complete = |req: &[u8]| {
                let text = String::from_utf8_lossy(req);
                let Some(end) = text.find("\r\n\r\n") else { return false };
                let len = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .map_or(0, |n| n.parse::<usize>().unwrap());
                req.len() >= end + 4 + len
            };
            while !complete(&req) {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).unwrap();
            requests.push(String::from_utf8(req).unwrap());
        }
        requests
    });
    assert_eq!(http("GET", &format!("{url}/a?x=1"), &[], b""), (200, "hello, world".to_string()));
    assert_eq!(http("POST", &format!("{url}/b"), &[("X-Y", "z")], b"body!"), (201, "abc".to_string()));
    assert_eq!(http("GET", &url, &[], b""), (204, String::new()));
    let requests = server.join().unwrap();
    assert!(requests[0].starts_with("GET /a?x=1 HTTP/1.1\r\n"), "{}", requests[0]);
    assert!(requests[0].contains("Connection: close\r\n"));
    assert!(requests[1].starts_with("POST /b HTTP/1.1\r\n"));
    assert!(requests[1].contains("Content-Length: 5\r\n") && requests[1].contains("X-Y: z\r\n"));
    assert!(requests[2].starts_with("GET / HTTP/1.1\r\n"));
}
