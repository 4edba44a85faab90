//! Simulated meters for tests, `pmtr demo` and `pmtr simulate`: Modbus RTU slaves that answer
//! like PZEM-004T/014/016 and RX380 meters, on pseudo-terminals the gateway opens as if they
//! were USB-RS485 adapters.
//!
//! - [`slave`] is the pure core: a [`SimSlave`] turns a request frame and the time into a
//!   [`Response`], with values that follow a [`Profile`] and replies a [`Fault`] may spoil.
//!   [`SimMeterSpec`] describes one from a command-line string (`pzem-016@4,volts=121.3`).
//! - [`port`] is the I/O shell: a [`SimPort`] serves slaves on a pseudo-terminal with byte
//!   timing faithful to the baud rate, and can be unplugged and plugged back in.

pub mod port;
pub mod slave;

pub use port::{SimPort, SimPortOptions, SimStats};
pub use slave::{Fault, Profile, Response, SimMeterSpec, SimSlave};
