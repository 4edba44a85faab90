//! pmtr: a metering gateway for the Raspberry Pi.
//!
//! Data flows one way: [`config`] → [`bus`] (one task per serial port, polling the [`meter`]s
//! found on it) → [`reading::Reading`]s → consumers. Pure logic (frames, decoders, schedules)
//! lives apart from I/O so that most of it is tested without ports or clocks.

pub mod alert;
pub mod app;
pub mod backoff;
pub mod bus;
pub mod clock;
pub mod config;
pub mod control;
pub mod drops;
pub mod energy;
pub mod expr;
pub mod meter;
pub mod modbus;
pub mod modbus_server;
pub mod mqtt;
pub mod neutral;
pub mod pipeline;
pub mod pmtr;
pub mod pmtr_action;
pub mod reading;
pub mod relay;
pub mod resident;
pub mod sim;
pub mod spelling;
pub mod state_file;
pub mod status;
pub mod store;
pub mod sync;
pub mod trigger;
