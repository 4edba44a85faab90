//! The one way the tests build a [`Reading`] by hand.
//!
//! Include it from a test crate with
//! ```ignore
//! #[path = "support/reading.rs"]
//! mod reading;
//! ```

#![allow(dead_code)]

use chrono::{DateTime, Utc};
use pmtr::meter::Model;
use pmtr::reading::{Phase, Quantity, Reading, Sample};

/// A reading of `meter`, a `model`, taken at `time`, of `samples` (phase, quantity, value), of
/// good quality (set `quality` on the result for another).
pub fn reading(
    meter: &str,
    model: Model,
    time: DateTime<Utc>,
    samples: impl IntoIterator<Item = (Phase, Quantity, f64)>,
) -> Reading {
    Reading {
        meter: meter.into(),
        model,
        time,
        samples: samples.into_iter().map(|(p, q, v)| Sample::new(p, q, v)).collect(),
        quality: Default::default(),
    }
}
