//! Energy that adds up: lifetime totals per meter and counter that never go backwards (resets,
//! rollovers and replaced meters continue from the total), active energy per local day, week,
//! month and year across daylight-saving changes, and its cost under `[[tariff]]` tables.
//!
//! [`counter`] decides what a counter's step means, [`calendar`] cuts local time, [`tariff`]
//! prices an hour, [`book`] keeps the books of every meter; all pure. [`saved`] puts the books on
//! disk.

pub mod book;
pub mod calendar;
pub mod counter;
pub mod run;
pub mod saved;
pub use crate::config::tariff;

pub use book::{Book, Books, PeriodTotal};
pub use calendar::Period;
pub use tariff::{Rate, Tariff};
