//! A PMTR_001_SRV's duties as a meter driver's ([`crate::meter::driver::Duties`]): the bus
//! engine reads the server like any meter and, between polls, asks this driver whether a duty
//! is due and lets it run. What a poll tells (a reboot, low power, the firmware) and what a
//! duty did go to the log and the server's status from here.

use super::action::ActionImage;
use super::duty::{all_slots, Duties, Duty, Restart};
use super::master::{self, DutyError, ServerLink};
use crate::meter::driver::{self, DutyCall, DutyRun, Plan, Report};
use crate::meter::pmtr_srv::{self, ServerRead};
use crate::modbus::transport::{Line, Outcome, Transport};
use std::time::Duration;

/// The relay actions to push, as the configuration gives them.
#[derive(Debug, Clone)]
pub struct Actions {
    /// The slots for the current firmware.
    pub current: Result<Vec<ActionImage>, String>,
    /// The slots for the legacy firmware, or why it cannot take them (it compares SI values).
    pub legacy: Result<Vec<ActionImage>, String>,
    /// Each action's condition as configured, for the log.
    pub when: Vec<String>,
}

/// One server's driver.
#[derive(Debug, Clone)]
pub struct ServerDriver {
    duties: Duties,
    actions: Actions,
}

impl ServerDriver {
    /// `sync_every`: how often the clock is set again (None: only at start and after a
    /// reboot); `push`: whether pmtr owns the server's slots; `sentinel`: this run's reboot
    /// sentinel (see [`sentinel_value`]).
    pub fn new(sync_every: Option<Duration>, push: bool, sentinel: u16, actions: Actions) -> ServerDriver {
        ServerDriver { duties: Duties::new(sync_every, push, sentinel), actions }
    }
}

/// A non-zero value for this run's reboot sentinels (a server with another value was set up by
/// an earlier run, or by someone else).
pub fn sentinel_value() -> u16 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    ((t.subsec_nanos() ^ std::process::id()) as u16).max(1)
}

fn is_legacy(plan: Plan) -> bool {
    plan.server().is_some_and(|p| p.is_legacy())
}

impl<L: Line> driver::Duties<L> for ServerDriver {
    fn after_poll(&mut self, plan: Plan, read: ServerRead, report: &dyn Report) {
        let meter = report.meter();
        if let Some(Restart::Rebooted { read }) = self.duties.on_telemetry(read.sentinel, read.low_power) {
            tracing::warn!(
                meter = %meter, sentinel = read,
                "server rebooted (its registers were wiped): setting its clock and pushing its relay actions again"
            );
            report.server(&mut |srv| {
                srv.reboots += 1;
                srv.slots_pushed = 0;
            });
        }
        let legacy = is_legacy(plan);
        report.server(&mut |srv| {
            if read.low_power && !srv.low_power {
                tracing::warn!(meter = %meter, "server in low-power mode (12 V supply under 10.8 V): only its voltages are fresh");
            }
            srv.low_power = read.low_power;
            srv.firmware = Some(if legacy { "legacy" } else { "current" });
        });
    }

    fn due(&self, now: tokio::time::Instant, clock_believed: bool) -> bool {
        self.duties.next_when(now, clock_believed).is_some()
    }

    fn run<'a>(&'a mut self, t: &'a mut Transport<L>, call: DutyCall<'a>) -> DutyRun<'a> {
        Box::pin(async move {
            let Some(duty) = self.duties.next_when(call.now, call.clock_believed) else { return Ok(()) };
            let result = self.run_duty(t, duty, &call).await;
            let now = tokio::time::Instant::now();
            match result {
                Ok(()) => self.duties.done(duty, now),
                Err(DutyError::Port(e)) => return Err(e),
                Err(e) => self.failed(duty, e, now, call.report),
            }
            Ok(())
        })
    }
}

impl ServerDriver {
    /// One duty's transactions, and what they did to the log and status.
    async fn run_duty<L: Line>(
        &self,
        t: &mut Transport<L>,
        duty: Duty,
        call: &DutyCall<'_>,
    ) -> Result<(), DutyError> {
        let report = call.report;
        let meter = report.meter();
        let link = ServerLink { address: call.address, timeout: call.timeout, attempts: call.attempts };
        let mut observe = |out: &Outcome| report.count(out);
        match duty {
            Duty::SyncTime => {
                let synced = master::sync_time(t, &link, self.duties.ms_field(), &mut observe).await?;
                tracing::info!(
                    meter = %meter, round_trip = ?synced.round_trip,
                    "server clock set (it takes the time about 1.5 round trips after it is sent)"
                );
                report.server(&mut |srv| {
                    srv.time_synced = Some(chrono::Utc::now());
                    srv.time_syncs += 1;
                });
                Ok(())
            }
            Duty::PushSlot(n) => {
                let configured =
                    if is_legacy(call.plan) { &self.actions.legacy } else { &self.actions.current };
                let configured = match configured {
                    Ok(c) => c,
                    Err(why) => {
                        // Only for the legacy firmware, which compares SI values: the current
                        // firmware's text was checked at load.
                        tracing::error!(meter = %meter, "the server runs the legacy firmware, which cannot take this relay action: {why}");
                        return Err(DutyError::Unexpected { step: "relay action for the legacy firmware" });
                    }
                };
                let slots_to_send = all_slots(configured);
                let s = &slots_to_send[usize::from(n)];
                master::push_slot(t, &link, n, s, &mut observe).await?;
                match self.actions.when.get(usize::from(n)) {
                    Some(when) => {
                        tracing::info!(meter = %meter, slot = n, when = %when, sent = %s.text, "relay action taken by the server")
                    }
                    None => tracing::debug!(meter = %meter, slot = n, "unused relay-action slot neutralised"),
                }
                report.server(&mut |srv| {
                    srv.slots_pushed = n + 1;
                    srv.slots_total += 1;
                });
                Ok(())
            }
            Duty::WriteSentinel => {
                let register = call.plan.server().unwrap_or(pmtr_srv::Plan::Block).sentinel_register();
                master::write_sentinel(t, &link, register, self.duties.sentinel(), &mut observe).await
            }
        }
    }

    /// A duty that failed: tried again after a back-off; logged (every tenth time after the
    /// first as a warning) and shown.
    fn failed(&mut self, duty: Duty, e: DutyError, now: tokio::time::Instant, report: &dyn Report) {
        let meter = report.meter();
        let wait = self.duties.failed(now);
        let failures = self.duties.failures();
        if failures == 1 || failures % 10 == 0 {
            tracing::warn!(meter = %meter, duty = %duty, error = %e, retry_in = ?wait, failures, "server duty failed");
        } else {
            tracing::debug!(meter = %meter, duty = %duty, error = %e, retry_in = ?wait, "server duty failed again");
        }
        report.server(&mut |srv| {
            srv.duty_failures += 1;
            srv.last_duty_error = Some(format!("{duty}: {e}"));
        });
    }
}
