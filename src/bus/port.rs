//! The task that owns one serial port: it polls the meters found on it, in turn, one request
//! in flight, and probes for the meters of its bus that no port has found yet.

use super::poll::{poll, PollError};
use super::schedule::Schedule;
use super::status::MeterState;
use super::BusShared;
use crate::modbus::transport::{Line, Transport};
use crate::reading::{EnergyGuard, Quality, Reading};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Per-meter state kept by a port task.
struct Slot {
    schedule: Schedule,
    plan: usize,
    guard: EnergyGuard,
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
    let mut t = Transport::new(line, &bus.line, bus.frame_gap);
    let start = Instant::now();
    let remembered = shared.remembered_port_of();
    let mut slots: Vec<Slot> = shared
        .meters
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // Meters last seen on this port are tried first: the first reading comes without
            // waiting for other meters' probe timeouts.
            let first = remembered.get(i).and_then(|p| p.as_deref()) == Some(port.as_str());
            let due = if first { start } else { start + Duration::from_millis(1) };
            // Meter i of n is read i/n of a period later than the first, once found.
            let phase = m.poll * i as u32 / shared.meters.len().max(1) as u32;
            Slot {
                schedule: Schedule::new(m.poll, bus.max_backoff, due).with_phase(phase),
                plan: 0,
                guard: EnergyGuard::default(),
            }
        })
        .collect();
    let exit = loop {
        if *shutdown.borrow() {
            break PortExit::Shutdown;
        }
        let owners = shared.owners();
        // Meters of ours, and meters nobody has: the earliest due goes next.
        let next = slots
            .iter()
            .enumerate()
            .filter(|(i, _)| owners[*i].as_deref().is_none_or(|p| p == port))
            .min_by_key(|(_, s)| s.schedule.due())
            .map(|(i, s)| (i, s.schedule.due()));
        let Some((i, due)) = next else {
            // Every meter of the bus is on another port: wait for one to be released.
            tokio::select! {
                _ = tokio::time::sleep(bus.rescan) => continue,
                _ = shutdown.changed() => break PortExit::Shutdown,
            }
        };
        // On a saturated bus the next meter is already due: go on without a timer round trip.
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = shutdown.changed() => break PortExit::Shutdown,
            }
        }
        let owners = shared.owners();
        let mine = owners[i].as_deref() == Some(port.as_str());
        if owners[i].is_some() && !mine {
            continue; // found elsewhere while we slept
        }
        let meter = &shared.meters[i];
        let slot = &mut slots[i];
        let attempts = if mine { slot.schedule.attempts(bus.retries) } else { 1 };
        let status = &shared.status;
        let mut observe = |out: &crate::modbus::transport::Outcome| {
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
        let result = match poll(&mut t, meter, &mut slot.plan, attempts, bus.timeout, &mut observe).await {
            Ok(r) => r,
            Err(e) => break PortExit::Failed(e),
        };
        let now = Instant::now();
        match result {
            Ok(samples) => {
                slot.schedule.succeeded(now);
                if !mine && !shared.claim(i, &port) {
                    continue;
                }
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
                });
            }
            Err(e) => {
                slot.schedule.failed(now);
                if mine {
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
                        shared.release(i, &port);
                    }
                }
            }
        }
    };
    // On shutdown the map is kept (status still shows where each meter was); a failed port
    // gives its meters up so that the other ports look for them.
    shared.port_ended(&port, matches!(exit, PortExit::Failed(_)));
    exit
}
