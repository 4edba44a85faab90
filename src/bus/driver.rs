//! Which driver reads each configured meter ([`crate::meter::driver`]), and what a bus kind
//! needs of the line: the one place where the bus engine names a model's code. The port loop
//! itself only calls the drivers built here.

use crate::config::{Bus, BusKind, Meter};
use crate::meter::driver::{Duties, Reader};
use crate::meter::pmtr_srv::ServerStatus;
use crate::modbus::transport::{Line, Outcome, Resync};
use crate::pmtr::driver::{Actions, ServerDriver};
use std::time::Duration;

/// How `meter` is read at its good poll number `poll` (the first is 0).
pub fn reader(meter: &Meter, poll: u64) -> Reader {
    Reader {
        model: meter.model,
        address: meter.address,
        phase: meter.phase,
        multiplier: meter.multiplier(),
        poll,
    }
}

/// What `meter` is owed between polls, if anything (a PMTR_001_SRV's duties). `sentinel`:
/// this run's reboot sentinel.
pub fn duties<L: Line>(meter: &Meter, sentinel: u16) -> Option<Box<dyn Duties<L>>> {
    let s = meter.server.as_ref()?;
    let slots = |legacy| s.actions.iter().map(|a| a.slot(legacy)).collect::<Result<Vec<_>, String>>();
    let actions = Actions {
        current: slots(false),
        legacy: slots(true),
        when: s.actions.iter().map(|a| a.when.clone()).collect(),
    };
    Some(Box::new(ServerDriver::new(s.time_sync, s.push_actions, sentinel, actions)))
}

/// This run's reboot sentinel for the servers of a port.
pub fn sentinel() -> u16 {
    crate::pmtr::driver::sentinel_value()
}

/// Whether `meters` servers share a power-line bus: each then hears the others' frames, which
/// the bus's resync and pacing are for.
fn servers_share(bus: &Bus, meters: usize) -> bool {
    bus.kind == BusKind::PowerLine && meters > 1
}

/// What the line needs after a miss: several servers behind one power-line modem have their
/// receivers resynchronised.
pub fn resync(bus: &Bus, meters: usize) -> Option<Resync> {
    servers_share(bus, meters).then(crate::pmtr::master::resync)
}

/// The silence kept before each request: the bus's `frame_gap`; else, on a power-line bus of
/// several servers, one server loop ([`crate::pmtr::master::SHARED_BUS_GAP`]); else the line's
/// 3.5 characters (None).
pub fn frame_gap(bus: &Bus, meters: usize) -> Option<Duration> {
    bus.frame_gap.or_else(|| servers_share(bus, meters).then_some(crate::pmtr::master::SHARED_BUS_GAP))
}

/// A meter's counters and status on the status board, for its driver's duties.
pub struct MeterReport<'a> {
    pub status: &'a super::status::StatusBoard,
    pub name: &'a str,
}

impl crate::meter::driver::Report for MeterReport<'_> {
    fn meter(&self) -> &str {
        self.name
    }

    fn count(&self, out: &Outcome) {
        self.status.update(self.name, |s| s.counters.count(out));
    }

    fn server(&self, update: &mut (dyn FnMut(&mut ServerStatus) + Send)) {
        self.status.update(self.name, |s| {
            if let Some(srv) = s.server.as_mut() {
                update(srv);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus(kind: &str, gap: Option<&str>) -> Bus {
        let gap = gap.map_or(String::new(), |g| format!("frame_gap = \"{g}\"\n"));
        let text = format!(
            "[[bus]]\nname = \"b\"\nport = \"/dev/ttyS0\"\nkind = \"{kind}\"\n{gap}[[meter]]\nname = \"m\"\nmodel = \"pmtr-srv\"\naddress = 1\n"
        );
        crate::config::load_str(&text, "t.toml").unwrap().buses[0].clone()
    }

    #[test]
    fn several_servers_on_a_power_line_bus_are_paced_by_one_server_loop() {
        assert_eq!(frame_gap(&bus("power-line", None), 3), Some(Duration::from_millis(1200)));
        // One server hears no one else's frames; a configured gap wins; RS-485 is untouched.
        assert_eq!(frame_gap(&bus("power-line", None), 1), None);
        assert_eq!(frame_gap(&bus("power-line", Some("400ms")), 3), Some(Duration::from_millis(400)));
        assert_eq!(frame_gap(&bus("power-line", Some("0s")), 3), Some(Duration::ZERO));
        assert_eq!(frame_gap(&bus("rs485", None), 3), None);
    }
}
