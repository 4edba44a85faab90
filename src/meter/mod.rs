//! Meter models: what to ask each one, and how to turn the registers into samples. Pure.

pub mod pzem;
pub mod rx380;

use crate::modbus::Request;
use crate::reading::{Phase, Sample};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The meter models pmtr knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Model {
    #[serde(rename = "pzem-004t")]
    Pzem004t,
    #[serde(rename = "pzem-014")]
    Pzem014,
    #[serde(rename = "pzem-016")]
    Pzem016,
    #[serde(rename = "rx380")]
    Rx380,
    /// A PMTR_001_SRV server (Arduino, three PZEM-004T, relays), usually behind a power-line
    /// modem.
    #[serde(rename = "pmtr-srv")]
    PmtrSrv,
}

impl Model {
    /// The spool stores positions in this array: add at the end only.
    pub const ALL: [Model; 5] =
        [Model::Pzem004t, Model::Pzem014, Model::Pzem016, Model::Rx380, Model::PmtrSrv];

    pub fn name(self) -> &'static str {
        match self {
            Model::Pzem004t => "pzem-004t",
            Model::Pzem014 => "pzem-014",
            Model::Pzem016 => "pzem-016",
            Model::Rx380 => "rx380",
            Model::PmtrSrv => "pmtr-srv",
        }
    }

    pub fn parse(s: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(s))
    }

    pub fn is_pzem(self) -> bool {
        matches!(self, Model::Pzem004t | Model::Pzem014 | Model::Pzem016)
    }

    /// Line settings the maker ships (baud, parity as 'N'/'E'), used as config defaults.
    pub fn default_line(self) -> (u32, char) {
        match self {
            Model::Rx380 => (19200, 'E'),
            _ => (9600, 'N'),
        }
    }

    /// How many ways of reading this model exist (see [`Model::poll_requests`]).
    pub fn plans(self) -> usize {
        match self {
            Model::Rx380 => 2,
            Model::PmtrSrv => crate::pmtr::registers::Plan::ALL.len(),
            _ => 1,
        }
    }

    /// The plan to start with, given how many meters share the bus (a PMTR_001_SRV alone on
    /// its bus is read in one block, else in chunks that spare the others' receive buffers).
    pub fn first_plan(self, meters_on_bus: usize) -> usize {
        match self {
            Model::PmtrSrv => crate::pmtr::registers::Plan::first(meters_on_bus).index(),
            _ => 0,
        }
    }

    /// The requests of one poll. `plan` selects a fallback layout (RX380: one block read, or
    /// one read per quantity group for meters that refuse long blocks).
    pub fn poll_requests(self, address: u8, plan: usize) -> Vec<Request> {
        match self {
            Model::Rx380 => rx380::requests(address, plan),
            Model::PmtrSrv => {
                crate::pmtr::registers::requests(address, crate::pmtr::registers::Plan::of(plan))
            }
            _ => vec![pzem::read_request(address)],
        }
    }

    /// Decodes the replies to [`Model::poll_requests`] (in the same order). `phase` is where a
    /// single-phase meter is connected.
    pub fn decode(
        self,
        address: u8,
        plan: usize,
        replies: &[Vec<u16>],
        phase: Phase,
    ) -> Result<Vec<Sample>, DecodeError> {
        let requests = self.poll_requests(address, plan);
        if requests.len() != replies.len() {
            return Err(DecodeError::Missing("a reply"));
        }
        match self {
            Model::Rx380 => {
                let image = RegisterImage::from_replies(&requests, replies);
                rx380::decode(&image)
            }
            Model::PmtrSrv => {
                let image = RegisterImage::from_replies(&requests, replies);
                let plan = crate::pmtr::registers::Plan::of(plan);
                crate::pmtr::registers::decode(&image, plan, 1.0).map(|t| t.samples)
            }
            _ => pzem::decode(&replies[0], phase),
        }
    }
}

impl Model {
    /// What a reading of this model holds, as (phase, quantity) pairs in reading order:
    /// decoded from a reply of equal registers (zeros; for a PMTR_001_SRV 12000, which reads as
    /// a server on its 12 V supply whose three PZEMs answer), so it always agrees with
    /// [`Model::decode`].
    pub fn sample_set(self, phase: Phase) -> Vec<(Phase, crate::reading::Quantity)> {
        let fill = if self == Model::PmtrSrv { 12_000 } else { 0 };
        let replies: Vec<Vec<u16>> = self
            .poll_requests(1, 0)
            .iter()
            .map(|r| match r.pdu {
                crate::modbus::Pdu::ReadInput { count, .. }
                | crate::modbus::Pdu::ReadHolding { count, .. } => {
                    vec![fill; usize::from(count)]
                }
                _ => Vec::new(),
            })
            .collect();
        self.decode(1, 0, &replies, phase)
            .map(|samples| samples.iter().map(|s| (s.phase, s.quantity)).collect())
            .unwrap_or_default()
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("register missing from the reply: {0}")]
    Missing(&'static str),
    /// A value no meter can report (not finite, or beyond its quantity's limit): the reading
    /// is refused whole.
    #[error("implausible {field} {value} on {phase} (beyond ±{limit}): reading refused")]
    Implausible { field: &'static str, phase: String, value: String, limit: String },
}

impl DecodeError {
    /// The first implausible sample of `samples`, as an error.
    pub fn first_implausible(samples: &[Sample]) -> Option<DecodeError> {
        samples.iter().find(|s| !s.is_plausible()).map(|s| DecodeError::Implausible {
            field: s.quantity.field(),
            phase: format!("{:?}", s.phase),
            value: s.value.to_string(),
            limit: s.quantity.limit().to_string(),
        })
    }
}

/// Registers gathered from one or more read replies, by address.
#[derive(Debug, Default, Clone)]
pub struct RegisterImage {
    spans: Vec<(u16, Vec<u16>)>,
}

impl RegisterImage {
    pub fn from_replies(requests: &[Request], replies: &[Vec<u16>]) -> Self {
        let spans = requests
            .iter()
            .zip(replies)
            .filter_map(|(req, regs)| match req.pdu {
                crate::modbus::Pdu::ReadInput { start, .. }
                | crate::modbus::Pdu::ReadHolding { start, .. } => Some((start, regs.clone())),
                _ => None,
            })
            .collect();
        RegisterImage { spans }
    }

    pub fn get(&self, addr: u16) -> Option<u16> {
        self.spans
            .iter()
            .find_map(|(start, regs)| addr.checked_sub(*start).and_then(|i| regs.get(i as usize).copied()))
    }

    /// Two registers, high word first.
    pub fn u32_hw(&self, addr: u16) -> Option<u32> {
        Some((u32::from(self.get(addr)?) << 16) | u32::from(self.get(addr + 1)?))
    }

    /// Four registers, high word first, signed.
    pub fn i64_hw(&self, addr: u16) -> Option<i64> {
        let mut v: u64 = 0;
        for i in 0..4 {
            v = (v << 16) | u64::from(self.get(addr + i)?);
        }
        Some(v as i64)
    }
}

/// Combines two registers, low word first (PZEM).
pub fn u32_lw(lo: u16, hi: u16) -> u32 {
    u32::from(lo) | (u32::from(hi) << 16)
}
