//! Simulated meters for tests, `pmtr demo` and `pmtr simulate`: Modbus RTU slaves that answer
//! like PZEM-004T/014/016 and RX380 meters or like any meter definition, on pseudo-terminals the gateway opens as if they
//! were USB-RS485 adapters; and PMTR_001_SRV servers on a simulated power-line bus.
//!
//! - [`grid`] is a three-phase supply and a house behind it (Millman), for the broken-neutral
//!   detector's tests and benchmark.
//! - [`slave`] is the pure core: a [`SimSlave`] turns a request frame and the time into a
//!   [`Response`], with values that follow a [`Profile`] and replies a [`Fault`] may spoil.
//!   [`SimMeterSpec`] describes one from a command-line string (`pzem-016@4,volts=121.3`).
//! - [`port`] is the I/O shell: a [`SimPort`] serves slaves on a pseudo-terminal with byte
//!   timing faithful to the baud rate, and can be unplugged and plugged back in.
//! - [`pmtr_srv`] is the pure core of a PMTR_001_SRV server ([`PmtrServer`]), firmware quirks
//!   included; [`pmtr_expr`] its relay-action expression language; [`plc`] the I/O shell, a
//!   [`PlcBus`] of such servers sharing a simulated power-line medium on a pseudo-terminal.

pub mod grid;
pub mod plc;
pub mod pmtr_expr;
pub mod pmtr_srv;
pub mod port;
mod pty;
pub mod slave;

pub use plc::{PlcBus, PlcBusOptions, PlcStats};
pub use pmtr_srv::{ActionSlot, Firmware, PmtrServer, ServerCounters, ServerValues};
pub use port::{SimPort, SimPortOptions, SimStats};
pub use slave::{Fault, GridTrace, Hostile, Profile, Response, SimMeterSpec, SimSlave, SpecError};
