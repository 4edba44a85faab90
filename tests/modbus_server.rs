//! pmtr's Modbus TCP server (`[modbus_server]`) against independent clients, pymodbus's TCP
//! client and tokio-modbus's, while `pmtr run` keeps polling a simulated PZEM-016 (unit 4) on
//! a pseudo-terminal, next to a meter that never answers (unit 5): the registers served equal
//! the meter's own; registers pmtr does not poll are read through the bus; a write of a
//! register not listed in `writable` is refused (0x01) and a listed one reaches the meter; the
//! silent meter gives 0x0B; a client off the allow list is refused; and the simulator saw every
//! request whole, one at a time. Needs `pymodbus==3.16.1` (tests/run.sh installs it).

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/servers.rs"]
mod servers;

use gateway::{simulator, Daemon};
use pmtr::relay::FakeBoard;
use pmtr::sim::SimPort;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::slave::{Slave, SlaveContext};

fn sim(dir: &Path) -> SimPort {
    // 23 W: the energy register moves by one Wh every 2.6 minutes, so the registers hold still
    // for the length of the test.
    simulator::spawn(
        &dir.join("ttyUSB0"),
        &["pzem-016@4,volts=231.5,amps=0.1,pf=1,hz=50,kwh=12.5", "pzem-016@5,fault=no-reply"],
    )
}

fn config(dir: &Path, modbus: u16, api: u16, limits: &str) -> pmtr::config::Config {
    let text = format!(
        r#"
[gateway]
name = "modbus-server-test"
state_dir = "{state}"
gpio = "fake"
[[bus]]
name = "b"
ports = ["{ports}"]
timeout = "100ms"
max_backoff = "1s"
[[meter]]
name = "main"
model = "pzem-016"
address = 4
poll = "200ms"
writable = [1]
[[meter]]
name = "ghost"
model = "pzem-016"
address = 5
poll = "200ms"
[modbus_server]
listen = "127.0.0.1:{modbus}"
allow = ["127.0.0.1/32"]
max_age = "5s"
queue = 2
{limits}
[status]
listen = "127.0.0.1:{api}"
"#,
        state = dir.join("state").display(),
        ports = dir.join("ttyUSB*").display(),
    );
    pmtr::config::load_str(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

async fn get_json(url: &str) -> Option<Value> {
    let url = url.to_owned();
    let r =
        tokio::task::spawn_blocking(move || servers::try_http("GET", &url, &[], b"")).await.unwrap().ok()?;
    (r.status == 200).then(|| serde_json::from_slice(&r.body).unwrap())
}

async fn client(port: u16) -> Context {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    tokio_modbus::client::tcp::connect_slave(addr, Slave(4))
        .await
        .expect("connect to pmtr's Modbus TCP server")
}

fn exception(r: tokio_modbus::Result<Vec<u16>>) -> Option<u8> {
    match r {
        Ok(Err(code)) => Some(u8::from(code)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_masters_read_and_write_through_pmtr_while_it_polls() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import pymodbus, sys; sys.exit(pymodbus.__version__ != '3.16.1')"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "pymodbus==3.16.1 is required for this test and was not found: run tests/run.sh, which installs it"
    );
    let dir = tempfile::tempdir().unwrap();
    let sim = sim(dir.path());
    let (modbus, api) = (servers::free_port(), servers::free_port());
    let board = FakeBoard::new();
    let daemon = Daemon::start(config(dir.path(), modbus, api, ""), &board);
    let base = format!("http://127.0.0.1:{api}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(m) = get_json(&format!("{base}/api/meters/main")).await {
            if m["state"] == "ok" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no reading of main within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let registers = || sim.with_slave(4, |s| s.registers(sim.elapsed_s())).unwrap();

    // tokio-modbus's client: the meter's registers, from the cache.
    let mut ctx = client(modbus).await;
    let served = ctx.read_input_registers(0, 10).await.unwrap().unwrap();
    assert_eq!(served, registers(), "the registers as the meter presents them");
    assert_eq!(ctx.read_input_registers(3, 4).await.unwrap().unwrap(), registers()[3..7].to_vec());
    // Holding registers 1 (alarm threshold) and 2 (address): not polled, read through the bus.
    let holding = ctx.read_holding_registers(1, 2).await.unwrap().unwrap();
    assert_eq!(holding[1], 4, "the meter's own address register");
    // A write of a listed register reaches the meter; another is refused with 0x01.
    ctx.write_single_register(1, 3000).await.unwrap().unwrap();
    assert_eq!(
        ctx.read_holding_registers(1, 1).await.unwrap().unwrap(),
        vec![3000],
        "read back from the meter"
    );
    let refused = ctx.write_single_register(2, 9).await.unwrap();
    assert_eq!(refused.map_err(u8::from), Err(0x01));
    // The silent meter: 0x0B, never numbers.
    ctx.set_slave(Slave(5));
    assert_eq!(exception(ctx.read_input_registers(0, 10).await), Some(0x0B));
    // A unit no meter has: 0x0A.
    ctx.set_slave(Slave(77));
    assert_eq!(exception(ctx.read_input_registers(0, 10).await), Some(0x0A));

    // Eight clients at once, reads of registers not polled: each through the bus, one at a
    // time; a full queue answers busy (0x06).
    let mut tasks = vec![];
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut ctx = client(modbus).await;
            let mut out = vec![];
            for _ in 0..5 {
                out.push(ctx.read_holding_registers(1, 2).await.unwrap().map_err(u8::from));
            }
            out
        }));
    }
    let (mut served, mut busy) = (0, 0);
    for t in tasks {
        for r in t.await.unwrap() {
            match r {
                Ok(words) => {
                    assert_eq!(words, vec![3000, 4]);
                    served += 1;
                }
                Err(0x06) => busy += 1,
                Err(other) => panic!("exception {other:#04x}"),
            }
        }
    }
    assert!(served >= 8, "{served} served, {busy} busy");

    // pymodbus's client, while pmtr polls.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/pymodbus_tcp_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .args([modbus.to_string(), "4".into(), "5".into()])
        .output()
        .await
        .unwrap();
    let py: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    let words: Vec<u16> = serde_json::from_value(py["input"]["registers"].clone()).unwrap();
    assert_eq!(words, registers(), "{py}");
    assert_eq!(py["holding"]["registers"], serde_json::json!([3000, 4]), "{py}");
    assert_eq!(py["write_refused"]["exception"], 1, "{py}");
    assert_eq!(py["silent"]["exception"], 0x0B, "{py}");

    // A client off the allow list (127.0.0.2 while only 127.0.0.1/32 is allowed): closed.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(format!("127.0.0.1:{modbus}").parse().unwrap()).await.unwrap();
    let mut stranger = tokio_modbus::client::tcp::attach_slave(stream, Slave(4));
    let r = tokio::time::timeout(Duration::from_secs(5), stranger.read_input_registers(0, 10)).await;
    assert!(matches!(r, Ok(Err(_))), "the stranger got an answer: {r:?}");

    let s = get_json(&format!("{base}/api/status")).await.unwrap();
    let c = &s["modbus_server"];
    assert_eq!(c["refused_not_allowed"], 1, "{c}");
    assert!(c["from_cache"].as_u64().unwrap() >= 3, "{c}");
    assert!(c["passed_through"].as_u64().unwrap() >= 10, "{c}");
    assert_eq!(c["writes"], 1, "{c}");
    assert!(c["silent"].as_u64().unwrap() >= 2, "{c}");
    let metrics =
        tokio::task::spawn_blocking(move || servers::http("GET", &format!("{base}/metrics"), &[], b""))
            .await
            .unwrap();
    assert!(metrics.1.contains("pmtr_modbus_server_writes_total 1"), "{}", metrics.1);

    // The meter kept being polled meanwhile, and the line carried whole requests one at a
    // time: every frame the simulator received was a request for one of its meters (two
    // requests on the wire at once would run together into a frame none takes).
    let main = get_json(&format!("http://127.0.0.1:{api}/api/meters/main")).await.unwrap();
    assert_eq!(main["state"], "ok", "{main}");
    assert_eq!(main["counters"]["crc_errors"], 0, "{main}");
    daemon.stop().await;
    let stats = sim.stats();
    assert_eq!(stats.ignored, 0, "{stats:?}");
    assert_eq!(stats.collisions, 0, "{stats:?}");
    assert_eq!(stats.frames, stats.requests, "{stats:?}");
}

/// `max_connections` and `requests_per_second`: a client past the first is closed at once; a
/// request past the rate in one second is answered busy (0x06).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_request_rate_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let _sim = sim(dir.path());
    let (modbus, api) = (servers::free_port(), servers::free_port());
    let board = FakeBoard::new();
    let limits = "max_connections = 1\nrequests_per_second = 5";
    let daemon = Daemon::start(config(dir.path(), modbus, api, limits), &board);
    let base = format!("http://127.0.0.1:{api}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_json(&format!("{base}/api/meters/main")).await.is_none_or(|m| m["state"] != "ok") {
        assert!(Instant::now() < deadline, "no reading of main within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut first = client(modbus).await;
    let mut answers = vec![];
    for _ in 0..10 {
        answers.push(first.read_input_registers(0, 10).await.unwrap().map_err(u8::from).map(|w| w.len()));
    }
    // Ten requests take milliseconds: the first five of the second are served, the rest busy
    // (a second boundary in between lets a few more through, never all ten).
    assert!(answers[..5].iter().all(|a| *a == Ok(10)), "{answers:?}");
    assert!(answers.contains(&Err(0x06)), "{answers:?}");
    let mut second = client(modbus).await;
    let r = tokio::time::timeout(Duration::from_secs(5), second.read_input_registers(0, 10)).await;
    assert!(matches!(r, Ok(Err(_))), "a second client was served: {r:?}");
    let s = get_json(&format!("{base}/api/status")).await.unwrap();
    assert_eq!(s["modbus_server"]["refused_over_limit"], 1, "{s}");
    assert_eq!(s["modbus_server"]["open_connections"], 1, "{s}");
    assert!(s["modbus_server"]["busy"].as_u64().unwrap() >= 1, "{s}");
    drop(first);
    daemon.stop().await;
}
