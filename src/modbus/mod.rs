//! Modbus RTU: CRC, frames, and the serial transport that carries one transaction at a time.

pub mod crc;
pub mod frame;
pub mod tcp;
pub mod transport;

pub use frame::{Exception, FrameError, Pdu, Reply, Request};
