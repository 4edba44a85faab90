//! What the Modbus TCP server answers to one request for one meter. Pure: the meter's state,
//! its latest registers and the clock are passed in.

use crate::bus::status::RawRegisters;
use crate::modbus::{Exception, Pdu, Request};
use std::time::Duration;
use tokio::time::Instant;

/// The Modbus exceptions the server answers with.
pub const ILLEGAL_FUNCTION: Exception = Exception::IllegalFunction;
pub const BUSY: Exception = Exception::SlaveDeviceBusy;
pub const PATH_UNAVAILABLE: Exception = Exception::GatewayPathUnavailable;
pub const TARGET_FAILED: Exception = Exception::GatewayTargetFailed;

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// From the latest reading's registers.
    Cached(Vec<u16>),
    /// Sent to the meter through its bus.
    PassThrough(Request),
    /// An exception.
    Exception(Exception),
}

/// What the server knows of a meter when a request comes.
#[derive(Debug, Clone, Copy)]
pub struct MeterView<'a> {
    pub address: u8,
    /// Whether its last poll succeeded.
    pub answering: bool,
    pub raw: Option<&'a RawRegisters>,
    pub writable: &'a [u16],
    pub max_age: Duration,
    pub now: Instant,
}

/// The answer to `pdu` for the meter seen as `m`:
/// - a silent meter (its last poll failed, or it was never found): exception 0x0B, never stale
///   numbers;
/// - a read of registers its last poll read, no older than `max_age`: from them;
/// - any other read (FC03, FC04): through the bus;
/// - a write (FC06, FC16) of registers all listed in `writable`: through the bus; else, and
///   for every other function, exception 0x01.
pub fn decide(pdu: &Pdu, m: &MeterView<'_>) -> Answer {
    if !m.answering {
        return Answer::Exception(TARGET_FAILED);
    }
    let through = || Answer::PassThrough(Request { address: m.address, pdu: pdu.clone() });
    match pdu {
        Pdu::ReadHolding { start, count } | Pdu::ReadInput { start, count } => {
            let function = pdu.function();
            let fresh = m.raw.filter(|r| m.now.saturating_duration_since(r.at) <= m.max_age);
            match fresh.and_then(|r| r.blocks.iter().find_map(|b| b.slice(function, *start, *count))) {
                Some(words) => Answer::Cached(words.to_vec()),
                None => through(),
            }
        }
        Pdu::WriteSingle { register, .. } if m.writable.contains(register) => through(),
        Pdu::WriteRegisters { start, values }
            if !values.is_empty()
                && (0..values.len()).all(|k| {
                    u16::try_from(k)
                        .ok()
                        .and_then(|k| start.checked_add(k))
                        .is_some_and(|r| m.writable.contains(&r))
                }) =>
        {
            through()
        }
        _ => Answer::Exception(ILLEGAL_FUNCTION),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::poll::RawBlock;

    fn raw(at: Instant) -> RawRegisters {
        RawRegisters { at, blocks: vec![RawBlock { function: 4, start: 0, words: (100..110).collect() }] }
    }

    fn view<'a>(raw: Option<&'a RawRegisters>, now: Instant, writable: &'a [u16]) -> MeterView<'a> {
        MeterView { address: 4, answering: true, raw, writable, max_age: Duration::from_secs(10), now }
    }

    #[test]
    fn reads_of_polled_registers_come_from_the_cache_while_fresh() {
        let t0 = Instant::now();
        let r = raw(t0);
        let read = Pdu::ReadInput { start: 2, count: 3 };
        assert_eq!(decide(&read, &view(Some(&r), t0, &[])), Answer::Cached(vec![102, 103, 104]));
        assert_eq!(
            decide(&read, &view(Some(&r), t0 + Duration::from_secs(10), &[])),
            Answer::Cached(vec![102, 103, 104]),
            "as old as max_age still counts"
        );
        let through = Answer::PassThrough(Request { address: 4, pdu: read.clone() });
        assert_eq!(
            decide(&read, &view(Some(&r), t0 + Duration::from_millis(10_001), &[])),
            through,
            "too old"
        );
        assert_eq!(decide(&read, &view(None, t0, &[])), through, "nothing read yet");
    }

    #[test]
    fn registers_not_polled_go_through_the_bus() {
        let t0 = Instant::now();
        let r = raw(t0);
        for pdu in [
            Pdu::ReadInput { start: 8, count: 3 },
            Pdu::ReadHolding { start: 0, count: 1 },
            Pdu::ReadInput { start: 100, count: 1 },
        ] {
            assert_eq!(
                decide(&pdu, &view(Some(&r), t0, &[])),
                Answer::PassThrough(Request { address: 4, pdu: pdu.clone() }),
                "{pdu:?}"
            );
        }
    }

    #[test]
    fn a_silent_meter_is_0x0b_never_stale_numbers() {
        let t0 = Instant::now();
        let r = raw(t0);
        let mut v = view(Some(&r), t0, &[1]);
        v.answering = false;
        for pdu in [Pdu::ReadInput { start: 0, count: 1 }, Pdu::WriteSingle { register: 1, value: 5 }] {
            assert_eq!(decide(&pdu, &v), Answer::Exception(TARGET_FAILED));
        }
    }

    #[test]
    fn writes_pass_only_to_listed_registers() {
        let t0 = Instant::now();
        let v = view(None, t0, &[1, 2]);
        let one = Pdu::WriteSingle { register: 1, value: 3000 };
        assert_eq!(decide(&one, &v), Answer::PassThrough(Request { address: 4, pdu: one.clone() }));
        assert_eq!(
            decide(&Pdu::WriteSingle { register: 3, value: 1 }, &v),
            Answer::Exception(ILLEGAL_FUNCTION)
        );
        let two = Pdu::WriteRegisters { start: 1, values: vec![1, 2] };
        assert!(matches!(decide(&two, &v), Answer::PassThrough(_)));
        let over = Pdu::WriteRegisters { start: 2, values: vec![1, 2] };
        assert_eq!(decide(&over, &v), Answer::Exception(ILLEGAL_FUNCTION), "register 3 is not listed");
        let end = Pdu::WriteRegisters { start: u16::MAX, values: vec![1, 2] };
        assert_eq!(decide(&end, &view(None, t0, &[u16::MAX])), Answer::Exception(ILLEGAL_FUNCTION));
        assert_eq!(
            decide(&one, &view(None, t0, &[])),
            Answer::Exception(ILLEGAL_FUNCTION),
            "nothing writable"
        );
        let coil = Pdu::WriteCoil { coil: 1, on: true };
        assert_eq!(decide(&coil, &v), Answer::Exception(ILLEGAL_FUNCTION));
    }
}
