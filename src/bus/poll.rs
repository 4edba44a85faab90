//! One poll of one meter: its requests in order, retries, the RX380 block fallback, decoding.

use crate::config::Meter;
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
    /// A PMTR_001_SRV's reboot sentinel and low-power flag.
    pub server: Option<(u16, bool)>,
}

/// Polls `meter`: every request of its current `plan`, each with up to `attempts` tries.
/// `observe` sees every transaction (for counters). A meter that refuses the block read of
/// plan 0 with "illegal address/value" moves to the next plan for good.
/// `Err` is the port failing; `Ok(Err)` is the meter failing.
pub async fn poll<L: Line>(
    t: &mut Transport<L>,
    meter: &Meter,
    plan: &mut usize,
    attempts: u32,
    timeout: Duration,
    observe: &mut (dyn FnMut(&Outcome) + Send),
) -> io::Result<Result<Polled, PollError>> {
    'plans: loop {
        let requests = meter.model.poll_requests(meter.address, *plan);
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
                    Err(FrameError::Exception(code @ (2 | 3))) if *plan + 1 < meter.model.plans() => {
                        tracing::info!(
                            meter = %meter.name,
                            "the meter refuses the block read (exception {code}); reading it in groups from now on"
                        );
                        *plan += 1;
                        continue 'plans;
                    }
                    // The meter answered: asking again will not change its mind.
                    Err(e @ FrameError::Exception(_)) => return Ok(Err(PollError::Frame(e))),
                    Err(e) => last = e,
                }
            }
            match got {
                Some(r) => replies.push(r),
                None => return Ok(Err(PollError::Frame(last))),
            }
        }
        if meter.model == crate::meter::Model::PmtrSrv {
            let image = crate::meter::RegisterImage::from_replies(&requests, &replies);
            let plan = crate::pmtr::registers::Plan::of(*plan);
            return Ok(crate::pmtr::registers::decode(&image, plan, meter.multiplier())
                .map(|t| Polled { samples: t.samples, server: Some((t.sentinel, t.low_power)) })
                .map_err(PollError::from));
        }
        return Ok(meter
            .model
            .decode(meter.address, *plan, &replies, meter.phase)
            .map(|samples| Polled { samples, server: None })
            .map_err(PollError::from));
    }
}
