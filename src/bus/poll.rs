//! One poll of one meter: the requests of its plan in order, retries, the fallback to smaller
//! blocks after an exception, decoding. What each of those is for a model is its driver's.

use crate::config::Meter;
use crate::meter::driver::Plan;
use crate::meter::pmtr_srv::ServerRead;
use crate::modbus::transport::{Line, Outcome, Transport};
use crate::modbus::{FrameError, Reply};
use crate::reading::Sample;
use std::io;
use std::time::Duration;

/// Why a poll produced no reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    #[error("{0}")]
    Frame(FrameError),
    #[error("{0}")]
    Decode(#[from] crate::meter::DecodeError),
    #[error("unexpected reply (echo to a read)")]
    Unexpected,
}

/// What a good poll gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Polled {
    pub samples: Vec<Sample>,
    /// A PMTR_001_SRV's reboot sentinel and low-power flag, for its duties.
    pub server: Option<ServerRead>,
    /// The registers as the meter presented them, one block a request (the Modbus TCP server
    /// answers from them).
    pub raw: Vec<RawBlock>,
}

/// Registers read in one request, as they came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBlock {
    /// 3 (holding) or 4 (input).
    pub function: u8,
    pub start: u16,
    pub words: Vec<u16>,
}

impl RawBlock {
    /// The words `start..start + count` read with `function`, if this block holds them all.
    pub fn slice(&self, function: u8, start: u16, count: u16) -> Option<&[u16]> {
        let from = usize::from(start.checked_sub(self.start)?);
        (function == self.function).then_some(())?;
        self.words.get(from..from + usize::from(count))
    }
}

fn raw_blocks(requests: &[crate::modbus::Request], replies: &[Vec<u16>]) -> Vec<RawBlock> {
    use crate::modbus::Pdu;
    requests
        .iter()
        .zip(replies)
        .filter_map(|(req, words)| match req.pdu {
            Pdu::ReadHolding { start, .. } => Some(RawBlock { function: 3, start, words: words.clone() }),
            Pdu::ReadInput { start, .. } => Some(RawBlock { function: 4, start, words: words.clone() }),
            _ => None,
        })
        .collect()
}

/// The reading as decoded, unless one of its values is implausible (not finite, or beyond its
/// quantity's limit: a garbled register, a float of 3.4e38): then it is refused whole, so that
/// such a value never reaches the triggers' averages or storage.
fn plausible(p: Polled) -> Result<Polled, crate::meter::DecodeError> {
    match crate::meter::DecodeError::first_implausible(&p.samples) {
        Some(e) => Err(e),
        None => Ok(p),
    }
}

/// Polls `meter`: every request of its current `plan` (for its good poll number `n`: a
/// definition reads some registers only every Nth poll), each with up to `attempts` tries.
/// `observe` sees every transaction (for counters). A meter whose exception moves it to a
/// fallback plan ([`crate::meter::driver::Reader::fallback`]) is read by it for good.
/// `Err` is the port failing; `Ok(Err)` is the meter failing.
pub async fn poll<L: Line>(
    t: &mut Transport<L>,
    meter: &Meter,
    plan: &mut Plan,
    n: u64,
    attempts: u32,
    timeout: Duration,
    observe: &mut (dyn FnMut(&Outcome) + Send),
) -> io::Result<Result<Polled, PollError>> {
    let reader = super::driver::reader(meter, n);
    'plans: loop {
        let requests = reader.requests(*plan);
        let mut replies = Vec::with_capacity(requests.len());
        for req in &requests {
            let mut last = FrameError::Timeout;
            let mut got = None;
            for _ in 0..attempts.max(1) {
                let out = t.transact(req, timeout).await?;
                observe(&out);
                match out.result {
                    Ok(Reply::Registers(r)) => {
                        got = Some(r);
                        break;
                    }
                    Ok(Reply::Echo | Reply::Bits(_)) => return Ok(Err(PollError::Unexpected)),
                    Err(FrameError::Exception(e)) => match reader.fallback(*plan, e) {
                        Some(smaller) => {
                            tracing::info!(
                                meter = %meter.name,
                                "the meter refuses the block read ({e}); reading it in smaller blocks from now on"
                            );
                            *plan = smaller;
                            continue 'plans;
                        }
                        // The meter answered: asking again will not change its mind.
                        None => return Ok(Err(PollError::Frame(FrameError::Exception(e)))),
                    },
                    Err(e) => last = e,
                }
            }
            match got {
                Some(r) => replies.push(r),
                None => return Ok(Err(PollError::Frame(last))),
            }
        }
        let polled = reader.decode(*plan, &replies).map(|d| Polled {
            samples: d.samples,
            server: d.server,
            raw: raw_blocks(&requests, &replies),
        });
        return Ok(polled.and_then(plausible).map_err(PollError::from));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Phase, Quantity, Sample};

    fn polled(quantity: Quantity, value: f64) -> Polled {
        Polled {
            samples: vec![
                Sample::new(Phase::L1, Quantity::Voltage, 230.0),
                Sample::new(Phase::L2, quantity, value),
            ],
            server: None,
            raw: vec![],
        }
    }

    #[test]
    fn a_raw_block_gives_the_words_it_holds_and_no_others() {
        let b = RawBlock { function: 4, start: 10, words: vec![1, 2, 3, 4] };
        assert_eq!(b.slice(4, 10, 4), Some(&[1, 2, 3, 4][..]));
        assert_eq!(b.slice(4, 11, 2), Some(&[2, 3][..]));
        assert_eq!(b.slice(4, 12, 3), None, "past the end");
        assert_eq!(b.slice(4, 9, 1), None, "before the start");
        assert_eq!(b.slice(3, 10, 1), None, "another function");
    }

    /// A reading with a value no meter can report (a legacy float of 3.4e38, a garbled
    /// register, not a number) is refused whole, naming the value; real extremes pass.
    #[test]
    fn an_implausible_value_refuses_the_whole_reading() {
        for (q, bad) in [
            (Quantity::Voltage, 3.4e38),
            (Quantity::Current, f64::NAN),
            (Quantity::ActivePower, f64::NEG_INFINITY),
            (Quantity::PowerFactor, 2.0),
            (Quantity::Frequency, 4_294_967.0),
            (Quantity::ActiveEnergy, -3.4e38),
        ] {
            let e = plausible(polled(q, bad)).unwrap_err();
            assert!(matches!(e, crate::meter::DecodeError::Implausible { .. }), "{e}");
            assert!(e.to_string().contains(q.field()) && e.to_string().contains("L2"), "{e}");
        }
        for (q, good) in [
            (Quantity::Voltage, 400_000.0),
            (Quantity::Current, 65_535.0),
            (Quantity::ActivePower, -5e9),
            (Quantity::PowerFactor, -1.0),
            (Quantity::Frequency, 400.0),
            (Quantity::ActiveEnergy, 99_999_999.0),
        ] {
            assert!(plausible(polled(q, good)).is_ok(), "{q:?} {good}");
        }
    }
}
