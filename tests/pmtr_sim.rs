//! The simulated power-line bus of PMTR_001_SRV servers, driven through its pseudo-terminal
//! with plain frames, as the gateway's PMTR master mode will: reads from several servers, the
//! shared-bus swallow quirk and the coil-11 resync, a time sync, the 64-byte RX buffer, a
//! relay-action commit and a reboot.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use pmtr::modbus::crc::{append_crc, check_crc};
use pmtr::sim::pmtr_srv::action_registers;
use pmtr::sim::{ActionSlot, Firmware, PlcBus, PlcBusOptions, PmtrServer, ServerValues};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LOOP: Duration = Duration::from_millis(250);
const TIMEOUT: Duration = Duration::from_secs(4);

fn server(address: u8, volts: f64) -> PmtrServer {
    let values = ServerValues { volts: [volts; 3], ..ServerValues::default() };
    PmtrServer::new(address, Firmware::Current, values, LOOP, 0.0)
}

fn bus(servers: Vec<PmtrServer>, split: bool) -> (PlcBus, File) {
    let bus = PlcBus::spawn(PlcBusOptions { split_frames: split, ..PlcBusOptions::new(servers) }).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(bus.path()).unwrap();
    (bus, f)
}

fn frame(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut f = vec![unit];
    f.extend_from_slice(pdu);
    append_crc(&mut f);
    f
}

fn read_hr(unit: u8, start: u16, n: u16) -> Vec<u8> {
    let [a, b] = start.to_be_bytes();
    frame(unit, &[3, a, b, 0, n as u8])
}

fn write_coil(unit: u8, coil: u8, on: bool) -> Vec<u8> {
    frame(unit, &[5, 0, coil, if on { 0xFF } else { 0 }, 0])
}

fn write_regs(unit: u8, start: u16, regs: &[u16]) -> Vec<u8> {
    let [a, b] = start.to_be_bytes();
    let mut pdu = vec![0x10, a, b, 0, regs.len() as u8, 2 * regs.len() as u8];
    regs.iter().for_each(|r| pdu.extend_from_slice(&r.to_be_bytes()));
    frame(unit, &pdu)
}

/// Exactly `n` bytes, or panics after `timeout`.
fn read_n(f: &mut File, n: usize, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out with {} of {n} bytes: {got:02X?}", got.len());
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX));
        if fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) {
            let k = f.read(&mut buf[..n - got.len()]).unwrap();
            got.extend_from_slice(&buf[..k]);
        }
    }
    got
}

/// No byte arrives within `d`.
fn silent_for(f: &File, d: Duration) -> bool {
    let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::try_from(d).unwrap());
    !fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN))
}

/// Sends `req`, reads an `n`-byte reply with a good CRC.
fn transact(f: &mut File, req: &[u8], n: usize) -> Vec<u8> {
    f.write_all(req).unwrap();
    let r = read_n(f, n, TIMEOUT);
    assert!(check_crc(&r), "{r:02X?}");
    r
}

fn regs(reply: &[u8]) -> Vec<u16> {
    reply[3..reply.len() - 2].chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect()
}

#[test]
fn reads_from_three_servers() {
    let (bus, mut f) = bus(vec![server(5, 230.0), server(9, 231.5), server(12, 228.0)], false);
    for _ in 0..2 {
        for (unit, want) in [(5, 2300), (9, 2315), (12, 2280)] {
            let r = transact(&mut f, &read_hr(unit, 80, 3), 11);
            assert_eq!(r[0], unit);
            assert_eq!(regs(&r), [want; 3]);
        }
    }
    // Each server heard the others' requests and replies, and took the replies for replies
    // (one frame per pass: the last ones may still be in their buffers for a pass or two).
    std::thread::sleep(LOOP * 3);
    for s in bus.servers() {
        let c = s.counters();
        assert_eq!((c.requests, c.replies, c.swallowed), (2, 2, 0), "unit {}: {c:?}", s.unit());
        assert_eq!(c.foreign, 4);
        assert_eq!(c.ignored_as_reply, 4);
    }
    let st = bus.stats();
    assert_eq!((st.packets, st.replies, st.bytes_out), (6, 6, 66));
    assert!(st.running);
}

#[test]
fn frames_split_in_transit_still_parse() {
    let (bus, mut f) = bus(vec![server(5, 230.0)], true);
    let r = transact(&mut f, &read_hr(5, 78, 4), 13);
    assert_eq!(regs(&r), [5000, 12491, 2300, 2300]);
    assert_eq!(bus.stats().splits, 1);
}

#[test]
fn a_split_frame_is_never_overtaken_by_the_next_one() {
    // Two packets 15 ms apart (more than 3.5 characters of silence), each cut in two 40 ms
    // apart: the second's first half must not arrive between the first's halves.
    let (bus, mut f) = bus(vec![server(5, 230.0)], true);
    f.write_all(&write_coil(0, 11, false)).unwrap();
    std::thread::sleep(Duration::from_millis(15));
    let r = transact(&mut f, &read_hr(5, 80, 1), 7);
    assert_eq!(regs(&r), [2300]);
    assert_eq!(bus.stats().splits, 2);
    let c = bus.with_server(5, |s| s.counters()).unwrap();
    assert_eq!((c.requests, c.replies, c.bad_frames), (2, 1, 0), "{c:?}");
}

#[test]
fn swallow_quirk_and_coil11_resync() {
    let (bus, mut f) = bus(vec![server(5, 230.0), server(9, 230.0)], false);
    // Nobody at 7; the next request, to 5, is taken for 7's reply by both servers.
    f.write_all(&read_hr(7, 80, 1)).unwrap();
    assert!(silent_for(&f, Duration::from_millis(1000)));
    f.write_all(&read_hr(5, 80, 1)).unwrap();
    assert!(silent_for(&f, Duration::from_millis(1500)), "swallowed");
    assert_eq!(bus.with_server(5, |s| s.counters().swallowed), Some(1));
    assert_eq!(bus.with_server(9, |s| s.counters().ignored_as_reply), Some(1));
    // The stray bytes went with the byte timeout. Again nobody at 7, then the resync
    // broadcast (FC 05, coil 11, 0) before talking to 5: it is eaten whole as 7's reply.
    f.write_all(&read_hr(7, 80, 1)).unwrap();
    assert!(silent_for(&f, Duration::from_millis(1000)));
    f.write_all(&write_coil(0, 11, false)).unwrap();
    assert!(silent_for(&f, Duration::from_millis(700)), "a broadcast is never answered");
    let r = transact(&mut f, &read_hr(5, 80, 1), 7);
    assert_eq!(regs(&r), [2300]);
    let c = bus.with_server(5, |s| s.counters()).unwrap();
    assert_eq!((c.swallowed, c.ignored_as_reply, c.foreign, c.requests), (2, 2, 2, 1), "{c:?}");
    assert_eq!(bus.with_server(5, |s| s.rx_pending()), Some(0));
}

#[test]
fn time_sync_sets_the_clock() {
    let (bus, mut f) = bus(vec![server(5, 230.0), server(9, 230.0)], false);
    assert_eq!(bus.with_server(5, |s| s.clock(0.0)), Some(None));
    // §7: coil 0 := 1 (broadcast), wait more than a loop, epoch (minus the firmware's 6 s),
    // coil 0 := 0 at once.
    f.write_all(&write_coil(0, 0, true)).unwrap();
    std::thread::sleep(LOOP * 2 + Duration::from_millis(300));
    assert!(bus.servers().iter().all(PmtrServer::syncing));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    // Delivery: 19 + 8 bytes on the UART and the transit.
    let epoch = (now + 0.03 + 0.15).round() as u64 - 6;
    let words: Vec<u16> = (0..4).map(|k| (epoch >> (16 * k)) as u16).chain([0]).collect();
    f.write_all(&write_regs(0, 146, &words)).unwrap();
    f.write_all(&write_coil(0, 0, false)).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    for s in bus.servers() {
        assert!(!s.syncing());
        assert_eq!(s.counters().time_syncs, 1);
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let clock = s.clock(bus.elapsed_s()).unwrap();
        assert!((clock - wall).abs() < 1.0, "unit {}: clock {clock} wall {wall}", s.unit());
    }
    assert!(silent_for(&f, Duration::from_millis(100)));
}

#[test]
fn rx_buffer_truncation_and_relay_action_commit() {
    let (bus, mut f) = bus(vec![server(5, 230.0)], false);
    // Coils 2..4 := [LOW, not dry run, AUTO].
    let r = transact(&mut f, &frame(5, &[0x0F, 0, 2, 0, 3, 1, 0b100]), 8);
    assert_eq!(r[..6], [5, 0x0F, 0, 2, 0, 3]);
    // The Python example of §8 as a whole 38-register block: 85 bytes, truncated.
    let pins = [30, 32, 34, 36, 38, 40, 42, 44];
    let image = action_registers(0, 5, pins, 300, "L1U > 253.0");
    assert_eq!(
        image[..12],
        [0x0500, 0x1E20, 0x2224, 0x2628, 0x2A2C, 0x012C, 0x4C31, 0x5520, 0x3E20, 0x3235, 0x332E, 0x3000]
    );
    let long = write_regs(5, 151, &image);
    assert_eq!(long.len(), 85);
    f.write_all(&long).unwrap();
    assert!(silent_for(&f, Duration::from_millis(1500)));
    let c = bus.with_server(5, |s| s.counters()).unwrap();
    assert_eq!((c.truncated, c.bytes_lost, c.bad_frames), (1, 22, 1), "{c:?}");
    // 27 registers (63 bytes) pass, then the other 11.
    let r = transact(&mut f, &write_regs(5, 151, &image[..27]), 8);
    assert_eq!(r[..6], [5, 0x10, 0, 151, 0, 27]);
    transact(&mut f, &write_regs(5, 178, &image[27..]), 8);
    // Commit, then poll coil 1 until the server has consumed it.
    assert_eq!(transact(&mut f, &write_coil(5, 1, true), 8), write_coil(5, 1, true));
    let coil1 = frame(5, &[1, 0, 1, 0, 1]);
    let deadline = Instant::now() + TIMEOUT;
    while transact(&mut f, &coil1, 6)[3] != 0 {
        assert!(Instant::now() < deadline, "coil 1 never cleared");
    }
    let want = ActionSlot {
        window: 5,
        pins,
        recovery: 300,
        text: "L1U > 253.0".into(),
        level_high: false,
        dry_run: false,
        auto: true,
    };
    assert_eq!(bus.with_server(5, |s| s.slots()[0].clone()), Some(Some(want)));
    assert_eq!(bus.with_server(5, |s| s.counters().commits), Some(1));
    // 2300 (0.1 V) > 253.0: tripped at once, all pins LOW.
    assert_eq!(bus.with_server(5, |s| s.pins().get(&44).copied()), Some(Some(false)));
}

#[test]
fn reboot_zeroes_the_tables() {
    let (bus, mut f) = bus(vec![server(5, 230.0)], false);
    let sentinel = frame(5, &[6, 0, 145, 0xBE, 0xEF]);
    assert_eq!(transact(&mut f, &sentinel, 8), sentinel);
    assert_eq!(regs(&transact(&mut f, &read_hr(5, 145, 1), 7)), [0xBEEF]);
    assert!(bus.reboot(5));
    assert!(!bus.reboot(6));
    assert_eq!(regs(&transact(&mut f, &read_hr(5, 145, 1), 7)), [0]);
    assert_eq!(bus.with_server(5, |s| s.counters().reboots), Some(1));
    drop(f);
    let t0 = Instant::now();
    drop(bus);
    assert!(t0.elapsed() < Duration::from_millis(500));
}
