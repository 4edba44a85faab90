//! Modbus: RTU frames and their CRC, the serial transport that carries one transaction at a time,
//! and Modbus TCP ([`tcp`]) for buses on the network.

pub mod crc;
pub mod frame;
pub mod line;
pub mod tcp;
pub mod transport;

pub use frame::{Exception, FrameError, Pdu, Reply, Request};
pub use line::{LineSettings, Parity};
