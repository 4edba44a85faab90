use super::*;

const PERIOD: f64 = 0.25;

fn server(address: u8) -> PmtrServer {
    PmtrServer::new(address, Firmware::Current, ServerValues::default(), Duration::from_millis(250), 0.0)
}

fn frame(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut f = vec![unit];
    f.extend_from_slice(pdu);
    append_crc(&mut f);
    f
}

fn read(unit: u8, fc: u8, start: u16, n: u16) -> Vec<u8> {
    let [a, b] = start.to_be_bytes();
    let [c, d] = n.to_be_bytes();
    frame(unit, &[fc, a, b, c, d])
}

fn write_coil(unit: u8, coil: u16, on: bool) -> Vec<u8> {
    let [a, b] = coil.to_be_bytes();
    frame(unit, &[5, a, b, if on { 0xFF } else { 0 }, 0])
}

fn write_coils(unit: u8, start: u16, bits: &[bool]) -> Vec<u8> {
    let [a, b] = start.to_be_bytes();
    let mut pdu = vec![0x0F, a, b, 0, bits.len() as u8, bits.len().div_ceil(8) as u8];
    for chunk in bits.chunks(8) {
        pdu.push(chunk.iter().enumerate().fold(0, |acc, (k, &on)| acc | (u8::from(on) << k)));
    }
    frame(unit, &pdu)
}

fn write_regs(unit: u8, start: u16, regs: &[u16]) -> Vec<u8> {
    let [a, b] = start.to_be_bytes();
    let mut pdu = vec![0x10, a, b, 0, regs.len() as u8, 2 * regs.len() as u8];
    regs.iter().for_each(|r| pdu.extend_from_slice(&r.to_be_bytes()));
    frame(unit, &pdu)
}

/// The registers of a FC 03/04 reply.
fn regs(reply: &[u8]) -> Vec<u16> {
    assert!(check_crc(reply), "{reply:02X?}");
    reply[3..reply.len() - 2].chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect()
}

/// Hears `f` at `t`, runs to `until`; the replies.
fn ask(s: &mut PmtrServer, f: &[u8], t: f64, until: f64) -> Vec<(f64, Vec<u8>)> {
    s.hear(f, t);
    s.run_until(until, 0.0)
}

fn only_reply(s: &mut PmtrServer, f: &[u8], t: f64) -> Vec<u8> {
    let mut r = ask(s, f, t, t + 2.0);
    assert_eq!(r.len(), 1, "one reply to {f:02X?}: {r:02X?}");
    r.remove(0).1
}

fn exception(unit: u8, fc: u8, code: u8) -> Vec<u8> {
    frame(unit, &[fc | 0x80, code])
}

#[test]
fn one_request_handled_per_pass() {
    let mut s = server(5);
    s.run_until(0.01, 0.0); // first pass at 0
    let (a, b) = (read(5, 3, 80, 1), read(5, 3, 81, 2));
    s.hear(&[a.clone(), b.clone()].concat(), 0.1);
    let r = s.run_until(0.3, 0.0);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, PERIOD, "answered at the next pass's poll");
    assert_eq!(regs(&r[0].1), [2300]);
    let r = s.run_until(0.6, 0.0);
    assert_eq!((r.len(), r[0].0), (1, 2.0 * PERIOD));
    assert_eq!(regs(&r[0].1), [2300, 2300]);
    let c = s.counters();
    assert_eq!((c.requests, c.replies, c.passes), (2, 2, 3));
}

#[test]
fn rx_buffer_truncates_long_frames() {
    let mut s = server(5);
    s.run_until(0.01, 0.0);
    // 38 registers from HR151: an 85-byte frame arriving between passes.
    let long = write_regs(5, 151, &action_registers(0, 5, [7; 8], 0, "L1U > 2530"));
    assert_eq!(long.len(), 85);
    assert!(ask(&mut s, &long, 0.1, 2.0).is_empty());
    let c = s.counters();
    assert_eq!((c.truncated, c.bytes_lost, c.bad_frames, c.requests), (1, 22, 1, 0));
    assert_eq!(s.holding(151), Some(0));
    // 27 registers: 63 bytes, they fit.
    let fits = write_regs(5, 151, &action_registers(0, 5, [7; 8], 0, "L1U > 2530")[..27]);
    assert_eq!(fits.len(), RX_BUFFER_BYTES);
    let r = only_reply(&mut s, &fits, 2.1);
    assert_eq!(r, frame(5, &[0x10, 0, 151, 0, 27]));
    assert_eq!(s.holding(151), Some(0x0500));
    assert_eq!(s.counters().truncated, 1);
    // 28 registers (65 bytes) are cut too.
    let r = ask(&mut s, &write_regs(5, 151, &[1; 28]), 4.1, 6.0);
    assert!(r.is_empty());
    assert_eq!(s.counters().truncated, 2);
}

#[test]
fn a_long_frame_passes_while_the_server_polls() {
    // In sync mode the server reads continuously: the 85-byte frame is not truncated.
    let mut s = server(5);
    ask(&mut s, &write_coil(0, 0, true), 0.1, 0.3);
    assert!(s.syncing());
    let long = write_regs(5, 151, &action_registers(1, 10, [7; 8], 0, "1"));
    let r = only_reply(&mut s, &long, 0.4);
    assert_eq!(r[..6], [5, 0x10, 0, 151, 0, 38]);
    assert_eq!(s.counters().truncated, 0);
}

#[test]
fn length_based_parsing_joins_split_frames() {
    let mut s = server(5);
    s.run_until(0.01, 0.0);
    let f = read(5, 3, 78, 2);
    // Split between two passes: the poll at 0.25 waits for the rest.
    s.hear(&f[..3], 0.2);
    s.hear(&f[3..], 0.3);
    let r = s.run_until(0.4, 0.0);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 0.3, "answered when the last byte came");
    assert_eq!(regs(&r[0].1), [5000, 12491]);
    // Split, the rest later than the byte timeout: dropped.
    s.hear(&f[..3], 0.45);
    s.hear(&f[3..], 1.3);
    assert!(s.run_until(3.0, 0.0).is_empty());
    // The first 3 bytes time out; the last 5 are read as a frame for unit 0x4E, FC 0, which
    // wants 8 bytes: they time out too.
    assert_eq!(s.counters().bad_frames, 2);
    // Two frames in one chunk are two frames.
    let two = [read(5, 1, 0, 12), read(5, 2, 40, 12)].concat();
    s.hear(&two, 3.1);
    let r = s.run_until(4.0, 0.0);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].1, frame(5, &[1, 2, 0, 0]));
    assert_eq!(r[1].1, frame(5, &[2, 2, 0, 0]));
}

#[test]
fn foreign_request_swallows_the_next_frame() {
    let mut s = server(5);
    s.run_until(0.01, 0.0);
    // A request to absent unit 7, then ours: ours is taken for unit 7's reply.
    assert!(ask(&mut s, &read(7, 3, 78, 2), 0.1, 0.3).is_empty());
    assert!(ask(&mut s, &read(5, 3, 78, 2), 0.6, 0.8).is_empty());
    let c = s.counters();
    assert_eq!((c.foreign, c.ignored_as_reply, c.swallowed), (1, 1, 1));
    // Parsed as a reply of byte count 0 (the start's high byte): 5 bytes; 3 stray bytes stay,
    // and the next poll drops them after the byte timeout.
    assert_eq!(s.rx_pending(), 3);
    assert!(s.run_until(2.0, 0.0).is_empty());
    assert_eq!(s.rx_pending(), 0);
    assert_eq!(s.counters().bad_frames, 1);
    // Now it answers.
    assert_eq!(regs(&only_reply(&mut s, &read(5, 3, 78, 2), 2.1)), [5000, 12491]);
}

#[test]
fn foreign_reply_is_consumed_cleanly() {
    let mut s = server(5);
    s.run_until(0.01, 0.0);
    // Unit 9 is asked and answers (a 79-byte reply would overflow; 37 registers is 79 bytes).
    s.hear(&read(9, 3, 78, 10), 0.1);
    let reply9 = frame(9, &[[3, 20].as_slice(), &[0; 20]].concat());
    s.hear(&reply9, 0.4);
    let r = ask(&mut s, &read(5, 3, 80, 1), 0.6, 1.5);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 3.0 * PERIOD, "one pass per frame: the request, the reply, ours");
    let c = s.counters();
    assert_eq!((c.foreign, c.ignored_as_reply, c.swallowed, c.bad_frames), (1, 1, 0, 0));
}

#[test]
fn coil11_broadcast_resyncs() {
    let mut s = server(5);
    s.run_until(0.01, 0.0);
    let resync = write_coil(0, 11, false);
    // After a request to an absent unit, the broadcast is eaten as its reply, whole (8 bytes).
    ask(&mut s, &read(7, 3, 78, 2), 0.1, 0.3);
    assert!(ask(&mut s, &resync, 0.4, 0.6).is_empty());
    assert_eq!(s.rx_pending(), 0);
    assert_eq!(s.counters().ignored_as_reply, 1);
    assert_eq!(regs(&only_reply(&mut s, &read(5, 3, 80, 1), 0.7)), [2300]);
    // Without one, it is executed: a harmless write, no reply.
    let before = s.counters().requests;
    assert!(ask(&mut s, &resync, 3.1, 3.6).is_empty());
    assert_eq!(s.counters().requests, before + 1);
    assert_eq!(s.coil(11), Some(false));
}

#[test]
fn broadcast_is_executed_not_answered() {
    let mut s = server(5);
    assert!(ask(&mut s, &write_coil(0, 6, true), 0.1, 1.0).is_empty());
    assert_eq!(s.coil(6), Some(true));
    assert!(ask(&mut s, &write_regs(0, 145, &[0xBEEF]), 1.1, 2.0).is_empty());
    assert_eq!(s.holding(145), Some(0xBEEF));
    let c = s.counters();
    assert_eq!((c.requests, c.replies), (2, 0));
}

#[test]
fn tables_and_exceptions() {
    let mut s = server(5);
    s.run_until(0.01, 0.0);
    let mut t = 0.1;
    let mut check = |s: &mut PmtrServer, f: Vec<u8>, want: Vec<u8>| {
        assert_eq!(only_reply(s, &f, t), want, "reply to {f:02X?}");
        t += 2.0;
    };
    check(&mut s, read(5, 1, 0, 12), frame(5, &[1, 2, 0, 0]));
    check(&mut s, read(5, 1, 0, 13), exception(5, 1, 2));
    check(&mut s, read(5, 2, 39, 1), exception(5, 2, 2));
    check(&mut s, read(5, 3, 77, 1), exception(5, 3, 2));
    check(&mut s, read(5, 3, 188, 1), frame(5, &[3, 2, 0, 0]));
    check(&mut s, read(5, 3, 188, 2), exception(5, 3, 2));
    check(&mut s, read(5, 4, 200, 2), frame(5, &[4, 4, 0, 0, 0, 0]));
    check(&mut s, read(5, 4, 202, 1), exception(5, 4, 2));
    check(&mut s, read(5, 3, 78, 0), exception(5, 3, 3));
    check(&mut s, read(5, 3, 78, 126), exception(5, 3, 3));
    check(&mut s, write_regs(5, 181, &[1; 9]), exception(5, 0x10, 2));
    check(&mut s, frame(5, &[5, 0, 3, 0x12, 0x34]), exception(5, 5, 3));
    check(&mut s, frame(5, &[0x2B]), exception(5, 0x2B, 1));
    check(
        &mut s,
        frame(5, &[0x11]),
        frame(5, &[0x11, 10, 180, 0xFF, b'L', b'M', b'B', b'3', b'.', b'1', b'.', b'4']),
    );
    check(&mut s, frame(5, &[6, 0, 150, 0x12, 0x34]), frame(5, &[6, 0, 150, 0x12, 0x34]));
    check(
        &mut s,
        frame(5, &[0x16, 0, 150, 0x00, 0xFF, 0xAB, 0x00]),
        frame(5, &[0x16, 0, 150, 0x00, 0xFF, 0xAB, 0x00]),
    );
    assert_eq!(s.holding(150), Some(0xAB34));
    check(
        &mut s,
        frame(5, &[0x17, 0, 150, 0, 1, 0, 149, 0, 1, 2, 0x55, 0xAA]),
        frame(5, &[0x17, 2, 0xAB, 0x34]),
    );
    assert_eq!(s.holding(149), Some(0x55AA));
    // FC 07: no reply at all.
    assert!(ask(&mut s, &frame(5, &[7]), t, t + 2.0).is_empty());
    assert_eq!(s.counters().exceptions, 10);
}

#[test]
fn quantity_exception_sleeps_and_flushes() {
    let mut s = server(5);
    s.run_until(0.01, 0.0);
    s.hear(&read(5, 3, 78, 0), 0.1);
    s.hear(&read(5, 3, 78, 1), 0.3); // heard during the sleep: flushed
    let r = s.run_until(3.0, 0.0);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0], (PERIOD + BYTE_TIMEOUT_S, exception(5, 3, 3)));
}

#[test]
fn tables_zeroed_at_boot() {
    let mut s =
        PmtrServer::new(5, Firmware::Current, ServerValues::default(), Duration::from_millis(250), 1.0);
    assert_eq!(s.holding(80), Some(0));
    // The reply of the very first poll: the registers are filled after it.
    let r = ask(&mut s, &read(5, 3, 78, 3), 0.5, 1.01);
    assert_eq!(regs(&r[0].1), [0, 0, 0]);
    assert_eq!(s.holding(80), Some(2300));
}

#[test]
fn registers_current_firmware() {
    let v = ServerValues {
        volts: [230.1, 231.0, 229.96],
        amps: [0.29, 1.234, 0.0],
        pf: [0.5, 1.0, 0.99],
        hz: 50.02,
        kwh: [12.3456, 0.0, 6553.6],
        v5: 4.987,
        v12: 12.5,
    };
    let mut s = PmtrServer::new(5, Firmware::Current, v, Duration::from_millis(250), 0.0);
    s.run_until(10.0, 0.0);
    let hr: Vec<u16> = (78..=115).map(|a| s.holding(a).unwrap()).collect();
    // DC buses: mV; the 12 V one through the 10-bit ADC.
    assert_eq!(hr[..2], [4987, 12491]);
    // U floor(10 V) — 229.96 V is 2300 in the PZEM's 0.1 V; I floor(100 A) truncates 1.234 A.
    assert_eq!(hr[2..8], [2301, 2310, 2300, 29, 123, 0]);
    // P floor(0.5 + W): 33.4 W, 285.1 W; E floor(10 kWh), saturated; f; pf.
    assert_eq!(hr[8..17], [33, 285, 0, 123, 0, 65535, 500, 500, 500]);
    assert_eq!(hr[17..20], [50, 100, 99]);
    // 5 s averages, pf with the stride bug: L2 at 112, L3 at 114, 111 and 113 never written.
    assert_eq!(hr[20..23], [2301, 2310, 2300]);
    assert_eq!(hr[32..37], [50, 0, 100, 0, 99]);
    assert_eq!(hr[37], 0);
}

#[test]
fn moving_average_zero_propagation() {
    let mut s = server(5);
    s.run_until(10.0, 0.0);
    assert_eq!((s.holding(83), s.holding(101)), (Some(100), Some(100)));
    let mut v = ServerValues::default();
    v.amps[0] = 0.0;
    v.amps[1] = 3.0;
    s.set_values(v);
    s.run_until(20.0, 0.0);
    // A real 0 A never enters the average: it stays at the last non-zero value.
    assert_eq!((s.holding(83), s.holding(101)), (Some(0), Some(100)));
    assert_eq!((s.holding(84), s.holding(102)), (Some(300), Some(300)));
    assert_eq!(s.holding(104), Some(230), "the power average too");
}

#[test]
fn moving_average_is_cumulative_then_5_s() {
    let mut s = server(5);
    s.run_until(5.1, 0.0); // samples at 1..5 s of 230.0 V
    let mut v = ServerValues::default();
    v.volts[0] = 240.0;
    s.set_values(v);
    // Pass at 5.25 reads 240 V; samples at 6 and 7 s: avg of 2300 ×3 and 2400 ×2.
    s.run_until(7.1, 0.0);
    assert_eq!(s.holding(98), Some(2340));
    s.run_until(12.1, 0.0);
    assert_eq!(s.holding(98), Some(2400));
}

#[test]
fn low_power_mode() {
    let mut s = server(5);
    s.run_until(2.0, 0.0);
    let passes = s.counters().passes;
    let mut v = ServerValues { v12: 10.5, ..ServerValues::default() };
    v.volts = [220.0; 3];
    v.amps = [2.0; 3];
    s.set_values(v);
    // A commit pending: never consumed in low-power mode.
    ask(&mut s, &write_coil(5, 1, true), 2.1, 2.2);
    s.run_until(12.1, 0.0);
    assert!(s.low_power());
    assert!(s.holding(79).unwrap() < 10800);
    assert_eq!((s.holding(80), s.holding(83)), (Some(2200), Some(100)), "only voltages refreshed");
    assert_eq!(s.holding(98), Some(2300), "averages not written");
    assert_eq!(s.coil(1), Some(true), "coil 1 never cleared");
    // Passes 5× slower: 10 s at 1.25 s.
    assert!((8..=9).contains(&(s.counters().passes - passes)), "{}", s.counters().passes - passes);
    s.set_v12(11.1); // inside the hysteresis: stays
    s.run_until(20.0, 0.0);
    assert!(s.low_power());
    s.set_v12(11.5);
    s.run_until(30.0, 0.0);
    assert!(!s.low_power());
    assert_eq!(s.holding(83), Some(200));
    assert_eq!(s.coil(1), Some(false));
}

#[test]
fn legacy_float_layout() {
    let mut s =
        PmtrServer::new(9, Firmware::LegacyFloat, ServerValues::default(), Duration::from_millis(250), 0.0);
    assert_eq!(s.unit(), 1, "legacy firmware ignores the DIP switch");
    s.run_until(10.0, 0.0);
    assert!(ask(&mut s, &read(9, 3, 80, 2), 10.1, 11.0).is_empty());
    // That was a request for another unit: resync before talking to unit 1.
    assert!(ask(&mut s, &write_coil(0, 11, false), 11.0, 11.3).is_empty());
    assert_eq!(s.counters().ignored_as_reply, 1);
    assert_eq!(only_reply(&mut s, &read(1, 3, 78, 2), 11.1), exception(1, 3, 2));
    let r = regs(&only_reply(&mut s, &read(1, 3, 80, 36), 13.1));
    let float = |i: usize| f32::from_bits(u32::from(r[i + 1]) << 16 | u32::from(r[i]));
    assert_eq!(r[0], 0x0000, "CDAB: the low word first");
    assert_eq!(r[1], 0x4366);
    assert_eq!([float(0), float(2), float(4)], [230.0, 230.0, 0.0], "L3 forced to 0");
    assert_eq!([float(6), float(12), float(24), float(30)], [1.0, 230.0, 50.0, 1.0]);
    let avg = regs(&only_reply(&mut s, &read(1, 3, 116, 30), 15.1));
    let avg = |i: usize| f32::from_bits(u32::from(avg[i + 1]) << 16 | u32::from(avg[i]));
    assert_eq!([avg(0), avg(2), avg(6), avg(12), avg(18), avg(24)], [230.0, 0.0, 1.0, 230.0, 50.0, 1.0]);
}

/// Broadcast sync as §7's procedure does it.
fn sync(s: &mut PmtrServer, epoch: u64, t: f64) {
    ask(s, &write_coil(0, 0, true), t, t + 0.01);
    s.run_until(t + PERIOD + 0.01, 0.0);
    assert!(s.syncing());
    let w: Vec<u16> = (0..4).map(|k| (epoch >> (16 * k)) as u16).chain([0]).collect();
    assert!(ask(s, &write_regs(0, 146, &w), t + 1.0, t + 1.0).is_empty());
    assert!(ask(s, &write_coil(0, 0, false), t + 1.1, t + 1.1).is_empty());
}

#[test]
fn time_sync_adds_six_seconds() {
    let mut s = server(5);
    assert_eq!(s.clock(1.0), None);
    sync(&mut s, 1_725_000_000, 0.1);
    assert!(!s.syncing());
    assert_eq!(s.holding(146), Some(0x6940));
    assert_eq!(s.holding(147), Some(0x66D1));
    assert_eq!(s.clock(1.2), Some(1_725_000_006.0));
    assert_eq!(s.clock(11.2), Some(1_725_000_016.0));
    let c = s.counters();
    assert_eq!((c.sync_entries, c.time_syncs, c.sync_timeouts), (1, 1, 0));
    assert!(s.averages_running());
    s.run_until(12.0, 1_725_000_016.8);
    assert!((s.clock_error().unwrap() - 0.0).abs() < 1e-9);
    // The clock survives a reboot (the DS3231 has a battery).
    s.reboot(13.0);
    assert_eq!(s.clock(14.2), Some(1_725_000_019.0));
}

#[test]
fn time_sync_answers_promptly() {
    let mut s = server(5);
    ask(&mut s, &write_coil(5, 0, true), 0.1, 0.3);
    assert!(s.syncing());
    let r = ask(&mut s, &read(5, 3, 80, 1), 0.4, 0.4);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 0.4, "no loop delay in sync mode");
}

#[test]
fn time_sync_timeout_freezes_averages() {
    let mut s = server(5);
    s.run_until(6.0, 0.0);
    ask(&mut s, &write_coil(5, 0, true), 6.1, 6.2);
    s.run_until(30.0, 0.0);
    let c = s.counters();
    assert_eq!((c.sync_entries, c.sync_timeouts), (2, 1), "coil 0 still 1: it re-entered sync mode");
    // Time out once, then clear coil 0 between passes: the averages stay frozen.
    let mut s = server(5);
    s.run_until(6.0, 0.0);
    ask(&mut s, &write_coil(5, 0, true), 6.1, 6.2);
    s.run_until(26.3, 0.0); // timed out at 26.25, then the next pass polls at 26.5
    assert!(!s.syncing());
    assert_eq!(s.counters().sync_timeouts, 1);
    assert!(only_reply(&mut s, &write_coil(5, 0, false), 26.4)[..2] == [5, 5]);
    assert!(!s.averages_running());
    let v = ServerValues { volts: [240.0; 3], ..ServerValues::default() };
    s.set_values(v);
    s.run_until(40.0, 0.0);
    assert_eq!(s.holding(80), Some(2400));
    assert_eq!(s.holding(98), Some(2300), "frozen averages");
    assert_eq!(s.clock(40.0), None);
}

/// Pushes a relay action: coils 2..4, the registers in writes of at most 27 registers (§8:
/// 151..156, then the text in 16-register halves), coil 1.
fn push(s: &mut PmtrServer, unit: u8, t: f64, regs: &[u16], coils: [bool; 3]) -> f64 {
    assert_eq!(only_reply(s, &write_coils(unit, 2, &coils), t)[..2], [unit, 0x0F]);
    let mut t = t + 2.0;
    let chunks: Vec<(u16, &[u16])> = if regs.len() <= 27 {
        vec![(151, regs)] // the Python client's single write
    } else {
        vec![(151, &regs[..6]), (157, &regs[6..22]), (173, &regs[22..])]
    };
    for (start, chunk) in chunks {
        assert_eq!(only_reply(s, &write_regs(unit, start, chunk), t)[..2], [unit, 0x10]);
        t += 2.0;
    }
    assert_eq!(only_reply(s, &write_coil(unit, 1, true), t)[..2], [unit, 5]);
    s.run_until(t + 2.0, 0.0);
    t + 2.0
}

const PY_PINS: [u8; 8] = [30, 32, 34, 36, 38, 40, 42, 44];

#[test]
fn relay_action_commit_register_image() {
    let image = action_registers(0, 5, PY_PINS, 300, "L1U > 253.0");
    let want =
        [0x0500, 0x1E20, 0x2224, 0x2628, 0x2A2C, 0x012C, 0x4C31, 0x5520, 0x3E20, 0x3235, 0x332E, 0x3000];
    assert_eq!(image[..12], want);
    assert_eq!(image.len(), 38);
    let mut s = server(127);
    s.run_until(6.0, 0.0);
    push(&mut s, 127, 6.1, &want, [false, false, true]);
    assert_eq!(s.coil(1), Some(false), "coil 1 cleared after consuming");
    let slot = ActionSlot {
        window: 5,
        pins: PY_PINS,
        recovery: 300,
        text: "L1U > 253.0".into(),
        level_high: false,
        dry_run: false,
        auto: true,
    };
    assert_eq!(s.slots()[0], Some(slot));
    assert_eq!(s.counters().commits, 1);
    // 2300 > 253.0 on the current firmware: tripped, every pin LOW.
    assert_eq!(s.pins(), PY_PINS.iter().map(|&p| (p, false)).collect());
    assert!(s.trip_state(0).unwrap().tripped);
}

#[test]
fn relay_action_auto_recovery_counts_passes() {
    let mut s = server(5);
    s.run_until(6.0, 0.0);
    let t = push(&mut s, 5, 6.1, &action_registers(1, 5, [9; 8], 4, "L1I > 150"), [true, false, true]);
    assert!(s.pins().is_empty(), "nothing written before the first trip");
    let mut v = ServerValues::default();
    v.amps[0] = 2.0;
    s.set_values(v.clone());
    s.run_until(t + 10.0, 0.0);
    assert_eq!(s.pins().get(&9), Some(&true));
    v.amps[0] = 1.0;
    s.set_values(v);
    // The 5 s average falls under 1.5 A about 3 s later, then 4 passes before the revert.
    let t0 = t + 10.0;
    let mut reverted = None;
    for k in 1..80 {
        let tk = t0 + f64::from(k) * 0.1;
        s.run_until(tk, 0.0);
        if s.pins().get(&9) == Some(&false) {
            reverted = Some(tk - t0);
            break;
        }
    }
    let dt = reverted.expect("reverted");
    assert!((3.0..5.0).contains(&dt), "{dt}");
    assert!(s.trip_state(1).unwrap().tripped, "IsTripped is never cleared");
}

#[test]
fn relay_action_manual_latches_and_dry_run_does_nothing() {
    let mut s = server(5);
    s.run_until(6.0, 0.0);
    let t = push(
        &mut s,
        5,
        6.1,
        &action_registers(2, 10, [3, 4, 3, 4, 3, 4, 3, 4], 0, "L2U > 2200"),
        [true, false, false],
    );
    assert_eq!(s.pins().get(&3), Some(&true));
    let v = ServerValues { volts: [210.0; 3], ..ServerValues::default() };
    s.set_values(v);
    s.run_until(t + 20.0, 0.0);
    assert_eq!(s.pins().get(&3), Some(&true), "MANUAL latches");
    // Re-committing does not clear the latch either.
    let t = push(
        &mut s,
        5,
        t + 20.1,
        &action_registers(2, 10, [3, 4, 3, 4, 3, 4, 3, 4], 0, "0"),
        [true, false, false],
    );
    assert_eq!(s.pins().get(&4), Some(&true));
    assert!(s.trip_state(2).unwrap().tripped);
    // Dry run: true expression, no pins.
    push(&mut s, 5, t + 0.1, &action_registers(3, 5, [50; 8], 0, "1"), [true, true, true]);
    assert_eq!(s.pins().get(&50), None);
    assert!(!s.trip_state(3).unwrap().tripped);
}

#[test]
fn relay_action_window_must_be_5_or_10() {
    let mut s = server(5);
    s.run_until(6.0, 0.0);
    // Window 0 (the "unused" marker) becomes 1, 30 becomes 20: neither evaluates.
    let t = push(&mut s, 5, 6.1, &action_registers(0, 0, [8; 8], 0, "1"), [true, false, true]);
    let t = push(&mut s, 5, t, &action_registers(1, 30, [8; 8], 0, "1"), [true, false, true]);
    let slots = s.slots();
    assert_eq!((slots[0].as_ref().unwrap().window, slots[1].as_ref().unwrap().window), (1, 20));
    let undefined = s.counters().undefined_results;
    s.run_until(t + 2.0, 0.0);
    assert!(s.counters().undefined_results > undefined);
    assert!(s.pins().is_empty());
    // So does an expression that does not compile.
    let t = push(&mut s, 5, t + 2.1, &action_registers(2, 5, [8; 8], 0, "L1U >"), [true, false, true]);
    let undefined = s.counters().undefined_results;
    s.run_until(t + 1.0, 0.0);
    assert!(s.counters().undefined_results >= undefined + 3 * 3);
    assert!(s.pins().is_empty());
}

#[test]
fn relay_action_slot_5_is_ignored() {
    let mut s = server(5);
    s.run_until(1.0, 0.0);
    push(&mut s, 5, 1.1, &action_registers(5, 5, [8; 8], 0, "1"), [true, false, true]);
    assert_eq!(s.coil(1), Some(false));
    assert!(s.slots().iter().all(Option::is_none));
    assert_eq!((s.counters().commits, s.counters().commits_ignored), (1, 1));
}

#[test]
fn relay_action_legacy_uses_si_units() {
    let mut s =
        PmtrServer::new(9, Firmware::LegacyFloat, ServerValues::default(), Duration::from_millis(250), 0.0);
    s.run_until(6.0, 0.0);
    push(
        &mut s,
        1,
        6.1,
        &action_registers(0, 5, [9; 8], 0, "L1U > 229.5 && L1U < 230.5"),
        [true, false, true],
    );
    assert_eq!(s.pins().get(&9), Some(&true));
}

#[test]
fn reboot_zeroes_the_tables() {
    let mut s = server(5);
    s.run_until(6.0, 0.0);
    ask(&mut s, &write_regs(5, 145, &[0xBEEF]), 6.1, 7.0);
    let t = push(&mut s, 5, 7.1, &action_registers(0, 5, [9; 8], 0, "1"), [true, false, true]);
    ask(&mut s, &write_coil(5, 7, true), t, t + 1.0);
    assert_eq!(s.holding(145), Some(0xBEEF));
    assert!(s.slots()[0].is_some());
    s.reboot(t + 1.0);
    assert_eq!((s.holding(145), s.holding(80), s.coil(7)), (Some(0), Some(0), Some(false)));
    assert!(s.slots().iter().all(Option::is_none));
    assert!(s.pins().is_empty());
    s.run_until(t + 1.1, 0.0);
    assert_eq!(s.holding(80), Some(2300), "the first pass fills them again");
    assert_eq!(s.holding(145), Some(0));
    assert_eq!(s.counters().reboots, 1);
}

#[test]
fn frame_lengths_as_libmodbus() {
    let q = |b: &[u8]| b.iter().copied().collect::<VecDeque<u8>>();
    assert_eq!(frame_len(&q(&[5]), false), FrameLen::Need);
    assert_eq!(frame_len(&q(&[5, 3]), false), FrameLen::Need);
    assert_eq!(frame_len(&q(&[5, 3, 0, 78, 0, 2]), false), FrameLen::Bytes(8));
    assert_eq!(frame_len(&q(&[5, 0x10, 0, 151, 0, 38, 76]), false), FrameLen::Bytes(85));
    assert_eq!(frame_len(&q(&[5, 0x11]), false), FrameLen::Bytes(4));
    assert_eq!(frame_len(&q(&[5, 0x10, 0, 151, 0, 124, 248]), false), FrameLen::TooLong(7));
    // As replies: FC 03 by its byte count, FC 05/10 8 bytes, exceptions 5.
    assert_eq!(frame_len(&q(&[5, 3, 74]), true), FrameLen::Bytes(79));
    assert_eq!(frame_len(&q(&[5, 3, 0]), true), FrameLen::Bytes(5));
    assert_eq!(frame_len(&q(&[0, 5, 0, 11, 0, 0]), true), FrameLen::Bytes(8));
    assert_eq!(frame_len(&q(&[5, 0x83, 2]), true), FrameLen::Bytes(5));
}
