//! The task that owns one serial port: it polls the meters found on it, in turn, one request
//! in flight, and probes for the meters of its bus that no port has found yet. What to ask a
//! meter, how to decode it and what it is owed between polls are its driver's
//! ([`crate::meter::driver`]): this loop schedules and moves bytes.

use super::driver::MeterReport;
use super::poll::{poll, PollError, Polled};
use super::schedule::Schedule;
use super::status::MeterState;
use super::BusShared;
use crate::meter::driver::{Duties, DutyCall, Plan};
use crate::modbus::transport::{Line, Outcome, Transport};
use crate::reading::{EnergyGuard, Quality, Reading};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Per-meter state kept by a port task.
struct MeterSlot<L: Line> {
    schedule: Schedule,
    plan: Plan,
    /// Good polls so far (a definition reads some registers only every Nth poll).
    polls: u64,
    guard: EnergyGuard,
    /// What its model does between polls (a PMTR_001_SRV's time, relay actions, reboot
    /// sentinel).
    duties: Option<Box<dyn Duties<L>>>,
}

/// Why a port task ended.
#[derive(Debug)]
pub enum PortExit {
    Shutdown,
    Failed(std::io::Error),
}

/// Runs until shutdown or until the port fails (unplugged). Meters it had are released for
/// the other ports to find.
pub async fn run<L: Line>(
    port: String,
    line: L,
    shared: Arc<BusShared>,
    mut shutdown: watch::Receiver<bool>,
) -> PortExit {
    let bus = &shared.bus;
    let resync = super::driver::resync(bus, shared.meters.len());
    let gap = super::driver::frame_gap(bus, shared.meters.len());
    let mut t = Transport::new(line, &bus.line, gap).with_resync(resync).with_stop(shutdown.clone());
    let beat = shared.liveness.register(
        format!("bus {} port {port}", bus.name),
        super::liveness::port_limit(bus.timeout, bus.retries),
    );
    // A full readings channel (triggers or storage stuck) drops the reading: counted per meter,
    // and logged at most once a minute per port.
    let drops = crate::drops::Drops::new(format!("readings from bus {} port {port}", bus.name));
    let mut slots = meter_slots(&shared, &port);
    let mut queue = shared.open_queue(&port);
    // Whether a poll ran since the last request of a Modbus TCP client: on a bus whose polls
    // are always due, one such request goes between two polls, so none waits for ever.
    let mut polled = false;
    let exit = loop {
        if *shutdown.borrow() {
            break PortExit::Shutdown;
        }
        beat.busy();
        if polled {
            if let Ok(p) = queue.try_recv() {
                polled = false;
                if let Err(e) = pass_through(&mut t, p, bus.timeout).await {
                    break exit_on(e);
                }
                continue;
            }
        }
        let owners = shared.owners();
        // A meter's duties (a server's time, relay actions), one per turn, between polls.
        if let Err(e) = run_duties(&mut t, &shared, &port, &owners, &mut slots).await {
            break exit_on(e);
        }
        let next = earliest_due(&slots, &owners, &port);
        let i = match wait_for(next, &mut t, bus, &mut queue, &mut shutdown, &beat).await {
            Turn::Poll(i) => i,
            Turn::Again => continue,
            Turn::Exit(exit) => break exit,
        };
        match poll_meter(&mut t, &shared, &port, i, &mut slots[i], &drops).await {
            Ok(ran) => polled |= ran,
            Err(e) => break exit_on(e),
        }
    };
    shared.close_queue(&port);
    // On shutdown the map is kept (status still shows where each meter was); a failed port
    // gives its meters up so that the other ports look for them.
    shared.port_ended(&port, matches!(exit, PortExit::Failed(_)));
    exit
}

/// What the port task does next.
enum Turn {
    /// Poll meter `i`, due now.
    Poll(usize),
    /// Look again (a client's request ran, or the bus was rescanned).
    Again,
    Exit(PortExit),
}

/// Our meters and the meters nobody has: the earliest due, and when.
fn earliest_due<L: Line>(
    slots: &[MeterSlot<L>],
    owners: &[Option<String>],
    port: &str,
) -> Option<(usize, Instant)> {
    slots
        .iter()
        .enumerate()
        .filter(|(i, _)| owners[*i].as_deref().is_none_or(|p| p == port))
        .min_by_key(|(_, s)| s.schedule.due())
        .map(|(i, s)| (i, s.schedule.due()))
}

/// Waits until `next` (meter, due) is due; until then, runs the requests of Modbus TCP clients
/// for our meters (ours first: they only run while no poll is due). On a saturated bus the
/// next meter is already due: no timer round trip.
async fn wait_for<L: Line>(
    next: Option<(usize, Instant)>,
    t: &mut Transport<L>,
    bus: &crate::config::Bus,
    queue: &mut tokio::sync::mpsc::Receiver<super::PassThrough>,
    shutdown: &mut watch::Receiver<bool>,
    beat: &super::liveness::Beat,
) -> Turn {
    let Some((i, due)) = next else {
        // Every meter of the bus is on another port: wait for one to be released.
        beat.idle();
        return tokio::select! {
            _ = tokio::time::sleep(bus.rescan) => Turn::Again,
            _ = shutdown.changed() => Turn::Exit(PortExit::Shutdown),
        };
    };
    if due > Instant::now() {
        beat.idle();
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            Some(p) = queue.recv() => {
                beat.busy();
                return match pass_through(t, p, bus.timeout).await {
                    Ok(()) => Turn::Again,
                    Err(e) => Turn::Exit(exit_on(e)),
                };
            }
            _ = shutdown.changed() => return Turn::Exit(PortExit::Shutdown),
        }
        beat.busy();
    }
    Turn::Poll(i)
}

/// Polls meter `i` (ours, or a probe of one nobody has) and takes what came of it. False when
/// another port found it meanwhile and nothing was sent. `Err` is the port failing.
async fn poll_meter<L: Line>(
    t: &mut Transport<L>,
    shared: &BusShared,
    port: &str,
    i: usize,
    slot: &mut MeterSlot<L>,
    drops: &crate::drops::Drops,
) -> std::io::Result<bool> {
    let owners = shared.owners();
    let mine = owners[i].as_deref() == Some(port);
    if owners[i].is_some() && !mine {
        return Ok(false); // found elsewhere while we slept
    }
    let bus = &shared.bus;
    let meter = &shared.meters[i];
    let attempts = if mine { slot.schedule.attempts(bus.retries) } else { 1 };
    let status = &shared.status;
    let mut observe = |out: &Outcome| {
        status.update(&meter.name, |s| {
            if mine {
                s.counters.count(out);
            } else {
                s.counters.probes += 1;
                s.counters.stale_bytes += out.stale_bytes as u64;
                if out.result.is_err() {
                    s.counters.probe_misses += 1;
                }
            }
        });
    };
    let result = poll(t, meter, &mut slot.plan, slot.polls, attempts, bus.timeout, &mut observe).await?;
    let now = Instant::now();
    match result {
        Ok(p) => {
            slot.polls += 1;
            slot.schedule.succeeded(now);
            if (mine || shared.claim(i, port)) && !on_reading(shared, i, port, slot, p, now) {
                drops.count();
            }
        }
        Err(e) => on_failure(shared, i, port, slot, mine, e, now),
    }
    Ok(true)
}

/// Every meter of the bus as this port task schedules it.
fn meter_slots<L: Line>(shared: &BusShared, port: &str) -> Vec<MeterSlot<L>> {
    let bus = &shared.bus;
    let sentinel = super::driver::sentinel();
    let start = Instant::now();
    let remembered = shared.remembered_port_of();
    let n = shared.meters.len();
    shared
        .meters
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // Meters last seen on this port are tried first: the first reading comes without
            // waiting for other meters' probe timeouts.
            let first = remembered.get(i).and_then(|p| p.as_deref()) == Some(port);
            let due = if first { start } else { start + Duration::from_millis(1) };
            // Meter i of n is read i/n of a period later than the first, once found.
            let phase = m.poll * i as u32 / n.max(1) as u32;
            MeterSlot {
                schedule: Schedule::new(m.poll, bus.max_backoff, due).with_phase(phase),
                plan: super::driver::reader(m, 0).first_plan(n),
                polls: 0,
                guard: EnergyGuard::default(),
                duties: super::driver::duties(m, sentinel),
            }
        })
        .collect()
}

/// A good poll of meter `i`: its duties hear what it read, the reading goes out (false when
/// the readings channel was full and it was dropped), the status shows it.
fn on_reading<L: Line>(
    shared: &BusShared,
    i: usize,
    port: &str,
    slot: &mut MeterSlot<L>,
    polled: Polled,
    now: Instant,
) -> bool {
    let meter = &shared.meters[i];
    let status = &shared.status;
    if let (Some(d), Some(read)) = (slot.duties.as_mut(), polled.server) {
        d.after_poll(slot.plan, read, &MeterReport { status, name: &meter.name });
    }
    let samples = polled.samples;
    let backwards = slot.guard.check(&samples);
    let reading = Reading {
        meter: meter.name.as_str().into(),
        model: meter.model,
        time: chrono::Utc::now(),
        samples,
        quality: Quality { energy_backwards: backwards },
    };
    if backwards {
        tracing::warn!(meter = %meter.name, "energy counter went backwards (reset or rollover): flagged, not counted as use");
    }
    let dropped = shared.readings.try_send(reading.clone()).is_err();
    status.update(&meter.name, |s| {
        if s.state == MeterState::Failing {
            tracing::info!(meter = %meter.name, port = %port, "meter answers again");
        }
        s.state = MeterState::Ok;
        s.last_success = Some(reading.time);
        s.counters.readings += 1;
        s.counters.energy_backwards += u64::from(backwards);
        s.counters.readings_dropped += u64::from(dropped);
        s.last_reading = Some(reading);
        s.raw = Some(Arc::new(super::status::RawRegisters { at: now, blocks: polled.raw }));
    });
    !dropped
}

/// A failed poll of meter `i` (`mine`: a meter this port has, not a probe): back-off, status,
/// log, and a meter lost for long looked for on every port.
fn on_failure<L: Line>(
    shared: &BusShared,
    i: usize,
    port: &str,
    slot: &mut MeterSlot<L>,
    mine: bool,
    e: PollError,
    now: Instant,
) {
    let meter = &shared.meters[i];
    let status = &shared.status;
    slot.schedule.failed(now);
    if let PollError::Decode(crate::meter::DecodeError::Implausible { .. }) = &e {
        tracing::warn!(meter = %meter.name, port = %port, error = %e, "bad reading refused");
        status.update(&meter.name, |s| s.counters.bad_readings += 1);
    }
    if !mine {
        return;
    }
    let lost = slot.schedule.is_lost();
    let wait = slot.schedule.backoff();
    let first = status
        .update(&meter.name, |s| {
            let first = s.state == MeterState::Ok;
            s.state = MeterState::Failing;
            s.last_error = Some(e.to_string());
            first
        })
        .unwrap_or(false);
    if first {
        tracing::warn!(meter = %meter.name, port = %port, error = %e, "meter stopped answering; retrying with back-off");
    } else {
        tracing::debug!(meter = %meter.name, error = %e, next_try = ?wait, "meter still silent");
    }
    if lost && shared.port_count() > 1 && matches!(e, PollError::Frame(_)) {
        tracing::info!(meter = %meter.name, port = %port, "meter lost; looking for it on every port of the bus");
        shared.release(i, port);
    }
}

/// Runs one request of a Modbus TCP client (one attempt) and answers it; one whose client
/// gave up waiting is dropped unsent.
async fn pass_through<L: Line>(
    t: &mut Transport<L>,
    p: super::PassThrough,
    timeout: Duration,
) -> std::io::Result<()> {
    if p.reply.is_closed() {
        return Ok(());
    }
    let out = t.transact(&p.request, timeout).await?;
    let _ = p.reply.send(out.result);
    Ok(())
}

/// The end of a port task whose transport failed: a shutdown when the transport refused a
/// request because the daemon is stopping, a failed port otherwise.
fn exit_on(e: std::io::Error) -> PortExit {
    if crate::modbus::transport::is_stopping(&e) {
        PortExit::Shutdown
    } else {
        PortExit::Failed(e)
    }
}

/// Runs the first duty due of a meter on this port. True when one ran.
async fn run_duties<L: Line>(
    t: &mut Transport<L>,
    shared: &BusShared,
    port: &str,
    owners: &[Option<String>],
    slots: &mut [MeterSlot<L>],
) -> std::io::Result<bool> {
    let now = Instant::now();
    let believed = shared.clock.is_believed();
    let due = slots.iter().enumerate().position(|(i, s)| {
        owners[i].as_deref() == Some(port) && s.duties.as_ref().is_some_and(|d| d.due(now, believed))
    });
    let Some(i) = due else { return Ok(false) };
    let meter = &shared.meters[i];
    let slot = &mut slots[i];
    let Some(duties) = slot.duties.as_mut() else { return Ok(false) };
    let bus = &shared.bus;
    let report = MeterReport { status: &shared.status, name: &meter.name };
    let call = DutyCall {
        plan: slot.plan,
        address: meter.address,
        timeout: bus.timeout,
        attempts: 1 + bus.retries,
        now,
        clock_believed: believed,
        report: &report,
    };
    duties.run(t, call).await?;
    Ok(true)
}

#[cfg(test)]
mod stopping {
    use super::*;
    use crate::bus::status::MeterStatus;
    use std::collections::HashSet;
    use std::sync::Mutex;

    /// A bus whose meter never answers, with `timeout = "10s"` and `retries = 10`: a first
    /// poll of 11 tries, about 110 s.
    fn silent_bus(dir: &std::path::Path) -> (Arc<BusShared>, tokio::sync::mpsc::Receiver<Reading>) {
        let text = format!(
            r#"
[gateway]
state_dir = "{}"
[[bus]]
name = "b"
port = "/dev/null"
timeout = "10s"
retries = 10
[[meter]]
name = "m"
model = "pzem-016"
address = 4
"#,
            dir.display()
        );
        let config = crate::config::load_str(&text, "t.toml").unwrap();
        let (readings, rx) = tokio::sync::mpsc::channel(16);
        let status = Arc::new(crate::bus::status::StatusBoard::default());
        let meters = config.meters.clone();
        status.register("m", MeterStatus::searching("b".into(), 4, meters[0].model));
        let shared = Arc::new(BusShared {
            bus: config.buses[0].clone(),
            owners: Mutex::new(vec![Some("p".to_string())]),
            remembered: vec![Some("p".to_string())],
            meters,
            ports: Mutex::new(HashSet::new()),
            status,
            readings,
            memory: None,
            liveness: Arc::new(crate::bus::liveness::Liveness::default()),
            clock: crate::clock::WallClock::new(crate::clock::FakeSource::new(true), Duration::ZERO),
            passthrough: Mutex::new(Default::default()),
            queue: 1,
        });
        (shared, rx)
    }

    /// A bus whose polls are always due (each reply takes longer than the poll period): a
    /// request of a Modbus TCP client still goes on the wire, right after the next poll, and
    /// the polls go on after it.
    #[tokio::test(start_paused = true)]
    async fn a_client_request_goes_between_two_polls_on_a_saturated_bus() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let (shared, _readings) = silent_bus(dir.path());
        let mut shared = Arc::into_inner(shared).unwrap();
        shared.bus.timeout = Duration::from_millis(300);
        shared.bus.retries = 0;
        shared.meters[0].poll = Duration::from_millis(100);
        let shared = Arc::new(shared);
        let (line, mut meter) = tokio::io::duplex(4096);
        // The meter: 150 ms to answer anything (so a 100 ms poll is always due), FC04 with a
        // PZEM reading, FC03 with [7, 4]. It tells the function of each request it answers.
        let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut req = [0u8; 8];
            while meter.read_exact(&mut req).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let words: Vec<u16> = match req[1] {
                    4 => crate::meter::pzem::encode(230.0, 1.0, 230.0, 1.0, 50.0, 1.0, false).to_vec(),
                    _ => vec![7, 4],
                };
                let mut f = vec![4, req[1], (words.len() * 2) as u8];
                words.iter().for_each(|w| f.extend_from_slice(&w.to_be_bytes()));
                crate::modbus::crc::append_crc(&mut f);
                meter.write_all(&f).await.unwrap();
                let _ = heard_tx.send(req[1]);
            }
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run("p".into(), line, shared.clone(), stop_rx));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let answer = shared.pass_through(0, crate::modbus::Request::read_holding(4, 1, 2)).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), answer).await.expect("answered").unwrap();
        assert_eq!(got, Ok(crate::modbus::Reply::Registers(vec![7, 4])));
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop_tx.send(true).unwrap();
        let _ = task.await;
        let mut order = vec![];
        while let Ok(f) = heard.try_recv() {
            order.push(f);
        }
        let at = order.iter().position(|&f| f == 3).expect("the client's request went on the wire");
        assert!(at >= 3 && order[..at].iter().all(|&f| f == 4), "polls first: {order:?}");
        assert!(
            order[at + 1..].len() >= 3 && order[at + 1..].iter().all(|&f| f == 4),
            "polls after: {order:?}"
        );
    }

    /// Stop asked 25 s into a retry sequence of 11 × 10 s: the port task ends once the request
    /// in flight has timed out (at 30 s), not after the remaining eight tries.
    #[tokio::test(start_paused = true)]
    async fn a_stop_during_a_long_retry_sequence_ends_within_one_request_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, _readings) = silent_bus(dir.path());
        let (line, mut meter) = tokio::io::duplex(4096);
        // The meter's side reads every request and never answers; it counts them.
        let heard = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut n = 0usize;
            let mut buf = [0u8; 256];
            while let Ok(k) = meter.read(&mut buf).await {
                if k == 0 {
                    break;
                }
                n += k;
            }
            n / 8
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run("p".into(), line, shared, stop_rx));
        tokio::time::sleep(Duration::from_secs(25)).await;
        let asked = Instant::now();
        stop_tx.send(true).unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(11), task)
            .await
            .expect("the stop waited for the whole retry sequence")
            .unwrap();
        assert!(matches!(exit, PortExit::Shutdown), "{exit:?}");
        assert!(asked.elapsed() <= Duration::from_secs(10), "{:?}", asked.elapsed());
        assert_eq!(heard.await.unwrap(), 3, "three requests sent (0 s, 10 s, 20 s), none after the stop");
    }
}
