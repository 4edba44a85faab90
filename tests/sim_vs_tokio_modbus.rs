//! Our meter simulators against an independent Modbus RTU master: tokio-modbus 0.17 over
//! tokio-serial, on the simulator's pseudo-terminal. Whatever tokio-modbus reads must be the
//! registers `pzem::encode` / `rx380::encode` give for the configured values.

use pmtr::config::LineSettings;
use pmtr::meter::{pzem, rx380};
use pmtr::sim::{SimMeterSpec, SimPort, SimPortOptions};
use std::time::Duration;
use tokio_modbus::client::{rtu, Context, Reader, Writer};
use tokio_modbus::slave::{Slave, SlaveContext};
use tokio_serial::SerialPortBuilderExt;

fn line(baud: u32) -> LineSettings {
    LineSettings::n81(baud)
}

fn spawn(baud: u32, meters: &[&str]) -> SimPort {
    let meters = meters.iter().map(|m| m.parse::<SimMeterSpec>().expect("meter spec")).collect();
    SimPort::spawn(SimPortOptions::new(line(baud), meters)).expect("pseudo-terminal")
}

fn attach(port: &SimPort, baud: u32, slave: u8) -> Context {
    let path = port.path().to_string_lossy().into_owned();
    let serial = tokio_serial::new(path, baud).open_native_async().expect("open the simulated port");
    rtu::attach_slave(serial, Slave(slave))
}

/// Runs a client call with a deadline, so that a silent simulator fails the test instead of
/// hanging it.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f).await.expect("no reply within 5 s")
}

#[tokio::test]
async fn pzem_registers_match_encode() {
    let port = spawn(9600, &["pzem-016@4,volts=121.3,amps=2.3,pf=0.95,hz=60,kwh=12.345"]);
    let mut ctx = attach(&port, 9600, 4);
    let regs = within(ctx.read_input_registers(0, 10)).await.expect("transport").expect("no exception");
    // Steady values; energy may have grown by a few mWh since the port started, so it is
    // compared within one register count.
    let watts = 121.3 * 2.3 * 0.95;
    let want = pzem::encode(121.3, 2.3, watts, 12.345, 60.0, 0.95, false);
    assert_eq!(regs[..5], want[..5], "volts, amps, watts");
    assert_eq!(regs[7..], want[7..], "hz, pf, alarm");
    let wh = |r: &[u16]| u32::from(r[5]) | (u32::from(r[6]) << 16);
    assert!((wh(&regs) as i64 - 12345).abs() <= 1, "energy {}", wh(&regs));
    // A sub-range, and the holding registers (threshold, address).
    let amps = within(ctx.read_input_registers(1, 2)).await.unwrap().unwrap();
    assert_eq!(amps, want[1..3]);
    let holding = within(ctx.read_holding_registers(1, 2)).await.unwrap().unwrap();
    assert_eq!(holding, [23000, 4]);
    // Outside the map: an exception, which tokio-modbus reports as such.
    let refused = within(ctx.read_input_registers(8, 5)).await.expect("transport");
    assert_eq!(refused, Err(tokio_modbus::ExceptionCode::IllegalDataAddress));
    assert_eq!(port.stats().replies, 4);
}

#[tokio::test]
async fn pzem_address_change_then_read_at_the_new_address() {
    let port = spawn(9600, &["pzem-016@4,volts=230,amps=1.5,pf=1"]);
    let mut ctx = attach(&port, 9600, 4);
    within(ctx.write_single_register(pzem::REG_ADDRESS, 7)).await.expect("transport").expect("echo");
    ctx.set_slave(Slave(7));
    let regs = within(ctx.read_input_registers(0, 10)).await.unwrap().unwrap();
    let want = pzem::encode(230.0, 1.5, 345.0, 0.0, 50.0, 1.0, false);
    assert_eq!(regs[..5], want[..5]);
    assert_eq!(regs[7..], want[7..]);
    let holding = within(ctx.read_holding_registers(2, 1)).await.unwrap().unwrap();
    assert_eq!(holding, [7]);
    assert_eq!(port.slaves()[0].address(), 7);
}

#[tokio::test]
async fn rx380_block_read_matches_encode() {
    let snapshot = rx380::Snapshot {
        kwh: 98765.432,
        kvah: 100000.0,
        kvarh: 1234.5,
        watts: -2500.0,
        va: 2700.0,
        var: 300.0,
        pf: -0.926,
        hz: 49.98,
        amps: [3.5, 3.25, 3.75, 0.5],
        line_volts: [398.0, 399.5, 401.0],
        phase_volts: [229.8, 230.6, 231.5],
    };
    let port = spawn(19200, &["rx380@1"]);
    port.with_slave(1, |s| *s = s.clone().base_rx380(snapshot)).expect("the RX380");
    let mut ctx = attach(&port, 19200, 1);
    let regs = within(ctx.read_input_registers(4000, 40)).await.expect("transport").expect("no exception");
    let want = rx380::encode(&snapshot);
    // The energy counters (4000..4011) grow with time; everything from 4012 on is exact.
    assert_eq!(regs[12..], want[12..]);
    let wh = |r: &[u16]| r[..4].iter().fold(0u64, |v, &x| (v << 16) | u64::from(x));
    let grown = wh(&regs) - wh(&want);
    assert!(grown <= 5, "energy grew by {grown} Wh");
    // FC03 on the same registers, and a group read as the gateway's fallback plan does it.
    let pf_hz = within(ctx.read_holding_registers(4018, 2)).await.unwrap().unwrap();
    assert_eq!(pf_hz, want[18..20]);
    let volts = within(ctx.read_input_registers(4028, 12)).await.unwrap().unwrap();
    assert_eq!(volts, want[28..]);
}

#[tokio::test]
async fn an_unplugged_port_ends_the_stream() {
    use tokio::io::AsyncReadExt;
    let mut port = spawn(9600, &["pzem-016@4"]);
    let path = port.path().to_string_lossy().into_owned();
    let mut serial = tokio_serial::new(path, 9600).open_native_async().expect("open the simulated port");
    port.unplug();
    let mut buf = [0u8; 16];
    match within(serial.read(&mut buf)).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("read {n} bytes from an unplugged port"),
    }
    assert!(!port.stats().running);
}
