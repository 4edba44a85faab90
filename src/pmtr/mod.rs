//! PMTR master mode: pmtr as the Modbus master of PMTR_001_SRV servers (Arduino three-phase
//! meters with relays) behind a power-line modem. A server is one more meter model on a bus
//! whose port is the modem; its extra duties run in the same bus task, between polls.
//!
//! - [`registers`]: the register map of the duties (the telemetry is a meter model's:
//!   `meter::pmtr_srv`);
//! - [`expr`]: relay-action expressions from SI units to the firmware's, checked against its
//!   grammar;
//! - [`action`]: the five slots as the server stores them, and their register images;
//! - [`duty`]: what each server is owed (time, actions, the reboot sentinel), a state machine;
//! - [`master`]: those duties as transactions on a bus;
//! - [`driver`]: the server's meter driver: what a poll tells, and the duties between polls.
//!
//! Every fact about the firmware comes from ../shared/reference/pmtr-server.md, cited by its
//! section numbers.

pub mod action;
pub mod driver;
pub mod duty;
pub use crate::pmtr_action::expr;
pub mod master;
pub mod registers;
