//! A serial line's settings (baud, data bits, parity, stop bits) and the timing they give. A
//! Modbus word: the configuration describes each bus's line with it (re-exported as
//! `config::LineSettings`), and the RTU transport times frames by it.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Serial line settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineSettings {
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
}

impl LineSettings {
    /// 8 data bits and 1 stop bit, the framing of every meter pmtr reads, at `baud` with
    /// `parity`.
    pub const fn eight_bits(baud: u32, parity: Parity) -> LineSettings {
        LineSettings { baud, data_bits: 8, parity, stop_bits: 1 }
    }

    /// 8N1 at `baud`.
    pub const fn n81(baud: u32) -> LineSettings {
        LineSettings::eight_bits(baud, Parity::None)
    }

    /// 9600 8N1: the PZEMs' and the power-line modem's line, and a bus's default.
    pub const DEFAULT: LineSettings = LineSettings::n81(9600);

    pub fn char_time(&self) -> Duration {
        super::frame::char_time(self.baud, self.data_bits, self.parity != Parity::None, self.stop_bits)
    }

    pub fn frame_gap(&self) -> Duration {
        super::frame::inter_frame_gap(self.char_time(), self.baud)
    }
}

impl std::fmt::Display for LineSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        write!(f, "{} {}{}{}", self.baud, self.data_bits, p, self.stop_bits)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    None,
    Even,
    Odd,
}
