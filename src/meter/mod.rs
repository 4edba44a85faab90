//! Meter models: what to ask each one, and how to turn the registers into samples. Pure.
//! A model's name is a word of [`crate::reading`]; what the bus engine asks of a model is its
//! [`driver`].

pub mod definition;
pub mod driver;
pub mod pmtr_srv;
pub mod pzem;
pub mod rx380;

use crate::modbus::Request;
pub use crate::reading::Model;
use crate::reading::{Phase, Sample};

impl Model {
    /// Line settings the maker ships (baud, parity as 'N'/'E'), used as config defaults.
    pub fn default_line(self) -> (u32, char) {
        match self {
            Model::Rx380 => (19200, 'E'),
            Model::Defined(d) => d.default_line(),
            _ => (9600, 'N'),
        }
    }

    /// Whether it measures one phase, set by a meter's `phase` (the PZEMs, single-phase
    /// definitions).
    pub fn takes_phase(self) -> bool {
        self.is_pzem() || definition::of(self).is_some_and(|d| d.phases == 1)
    }

    /// Who makes it and its product name, for Home Assistant's device registry.
    pub fn maker_and_product(self) -> (&'static str, String) {
        match self {
            Model::Defined(d) => (d.maker(), d.product().to_owned()),
            m if m.is_pzem() => ("Peacefair", m.name().to_uppercase()),
            Model::PmtrSrv => ("PMTR", "PMTR_001_SRV".to_owned()),
            m => ("RX380", m.name().to_uppercase()),
        }
    }

    /// What a reading of this model holds, as (phase, quantity) pairs in reading order:
    /// decoded from a reply of equal registers (zeros; for a PMTR_001_SRV 12000, which reads as
    /// a server on its 12 V supply whose three PZEMs answer) by its first plan, so it always
    /// agrees with its [`driver::Reader`].
    pub fn sample_set(self, phase: Phase) -> Vec<(Phase, crate::reading::Quantity)> {
        if let Model::Defined(d) = self {
            return d.sample_set(phase);
        }
        let fill = if self == Model::PmtrSrv { 12_000 } else { 0 };
        let reader = driver::Reader { phase, ..driver::Reader::new(self, 1) };
        let plan = reader.plans()[0];
        let replies: Vec<Vec<u16>> = reader
            .requests(plan)
            .iter()
            .map(|r| match r.pdu {
                crate::modbus::Pdu::ReadInput { count, .. }
                | crate::modbus::Pdu::ReadHolding { count, .. } => {
                    vec![fill; usize::from(count)]
                }
                _ => Vec::new(),
            })
            .collect();
        reader
            .decode(plan, &replies)
            .map(|d| d.samples.iter().map(|s| (s.phase, s.quantity)).collect())
            .unwrap_or_default()
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

/// A meter's 32-bit float as the decimal it stands for: the shortest decimal that reads back
/// as `x` (what Rust prints for it), as an `f64`. A meter's 253.1 is 253.1, not
/// 253.10000610351562, the float's own binary value, so `L1U > 253.1` does not hold at it and
/// storage, CSV and MQTT show 253.1. Nothing is lost: the result reads back as `x` again
/// (`as f32`). NaN and the infinities stay what they are.
pub fn f32_decimal(x: f32) -> f64 {
    use std::fmt::Write;
    /// Room for the longest `{:e}` of an f32, "-1.1754942e-38" (14 bytes).
    struct Digits {
        bytes: [u8; 24],
        len: usize,
    }
    impl Write for Digits {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = self.len + s.len();
            self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?.copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }
    let wide = f64::from(x);
    if !x.is_finite() {
        return wide;
    }
    let mut d = Digits { bytes: [0; 24], len: 0 };
    if write!(d, "{x:e}").is_err() {
        return wide;
    }
    std::str::from_utf8(&d.bytes[..d.len]).ok().and_then(|s| s.parse().ok()).unwrap_or(wide)
}

#[cfg(test)]
mod tests {
    use super::f32_decimal;

    /// The decimal a float stands for: shortest, reading back as the float, what Rust prints
    /// for it; over a stride of every bit pattern, both signs, subnormals and the largest.
    #[test]
    fn a_float_reads_as_the_shortest_decimal_that_is_that_float() {
        assert_eq!(f32_decimal(253.1), 253.1);
        assert_eq!(f64::from(253.1f32), 253.100_006_103_515_62);
        assert_eq!(f32_decimal(12_345.6), 12_345.6);
        assert_eq!(f32_decimal(0.95), 0.95);
        assert_eq!(f32_decimal(-1500.25), -1500.25);
        assert_eq!(f32_decimal(f32::MAX), 3.402_823_5e38);
        assert_eq!(f32_decimal(f32::MIN_POSITIVE), 1.175_494_4e-38);
        assert_eq!(f32_decimal(f32::from_bits(1)), 1e-45);
        assert_eq!(f32_decimal(-0.0).to_bits(), (-0.0f64).to_bits());
        assert!(f32_decimal(f32::NAN).is_nan());
        assert_eq!(f32_decimal(f32::NEG_INFINITY), f64::NEG_INFINITY);
        let mut bits = 0u32;
        while let Some(next) = bits.checked_add(65_521) {
            let x = f32::from_bits(bits);
            if x.is_finite() {
                let d = f32_decimal(x);
                assert_eq!(d as f32, x, "{bits:#x}: {d} does not read back");
                assert_eq!(d, format!("{x}").parse::<f64>().unwrap(), "{bits:#x}");
            }
            bits = next;
        }
    }
}
