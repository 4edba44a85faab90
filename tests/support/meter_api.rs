//! One meter as the status API shows it (`GET /api/meters/NAME`), for tests of the whole gateway:
//! read it, wait until it is as wanted, count its readings, check its values.
//!
//! Include it beside support/servers.rs (it uses its HTTP client):
//! ```ignore
//! #[path = "support/servers.rs"]
//! mod servers;
//! #[path = "support/meter_api.rs"]
//! mod meter_api;
//! ```

#![allow(dead_code)]

use crate::servers;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The meter `name` at the status API `base` (`http://HOST:PORT`), or None while the API is not
/// up or does not know it.
pub async fn meter_json(base: &str, name: &str) -> Option<Value> {
    let url = format!("{base}/api/meters/{name}");
    let r =
        tokio::task::spawn_blocking(move || servers::try_http("GET", &url, &[], b"")).await.unwrap().ok()?;
    (r.status == 200).then(|| serde_json::from_slice(&r.body).unwrap())
}

/// Waits (up to 20 s) until the meter's status satisfies `ok`; fails saying `what` it waited for.
pub async fn until(base: &str, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(m) = meter_json(base, name).await {
            if ok(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "{what} within 20 s: {m}");
        } else {
            assert!(Instant::now() < deadline, "{what} within 20 s: no status API");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The meter's count of readings.
pub fn readings(m: &Value) -> u64 {
    m["counters"]["readings"].as_u64().unwrap_or_else(|| panic!("no readings counter in {m}"))
}

/// Each variable of `want` in the meter's last reading, within `tolerance` (0: exactly).
pub fn check_values(m: &Value, want: &[(&str, f64)], tolerance: f64) {
    let v = &m["reading"]["values"];
    for &(name, want) in want {
        let got = v[name].as_f64().unwrap_or_else(|| panic!("no {name} in {m}"));
        assert!((got - want).abs() <= tolerance, "{name}: {got} instead of {want}: {m}");
    }
}
