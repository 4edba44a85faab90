//! `pmtr scan`: which devices answer on which port, at which address and line settings.

use crate::config::LineSettings;
use crate::meter::Model;
use crate::modbus::transport::{open_serial, Line, Transport};
use crate::modbus::{FrameError, Reply, Request};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One device that answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub port: String,
    pub line: LineSettings,
    pub address: u8,
    /// The model recognised, if any.
    pub model: Option<Model>,
    /// What it said, in words (e.g. "230.1 V" or "exception 2 to both reads").
    pub detail: String,
}

/// What a probe of one address learned.
pub async fn probe<L: Line>(
    t: &mut Transport<L>,
    address: u8,
    timeout: Duration,
) -> std::io::Result<Option<(Option<Model>, String)>> {
    let pz = t.transact(&crate::meter::pzem::read_request(address), timeout).await?;
    let first = match pz.result {
        Ok(Reply::Registers(r)) => {
            let s =
                crate::meter::pzem::decode(&r, crate::reading::Phase::L1).map_err(std::io::Error::other)?;
            return Ok(Some((Some(Model::Pzem016), format!("{:.1} V, {:.3} A", s[0].value, s[1].value))));
        }
        Err(FrameError::Timeout) => return Ok(None),
        Ok(Reply::Echo | Reply::Bits(_)) => "an echo".to_string(),
        Err(e) => e.to_string(),
    };
    // Something is there but it is no PZEM: try the RX380 map.
    let rx = t.transact(&Request::read_input(address, 4034, 2), timeout).await?;
    Ok(Some(match rx.result {
        Ok(Reply::Registers(r)) if r.len() == 2 => {
            let v = ((u32::from(r[0]) << 16) | u32::from(r[1])) as f64 * 0.1;
            (Some(Model::Rx380), format!("L1 {v:.1} V"))
        }
        Ok(_) => (None, format!("{first} to a PZEM read; an odd reply to an RX380 read")),
        Err(e) => (None, format!("{first} to a PZEM read; {e} to an RX380 read")),
    }))
}

/// Scans `ports` × `lines` × `addresses`, ports concurrently. `progress` counts probes done.
pub async fn scan(
    ports: Vec<String>,
    lines: Vec<LineSettings>,
    addresses: Vec<u8>,
    timeout: Duration,
    progress: Arc<AtomicUsize>,
) -> (Vec<Found>, Vec<String>) {
    let mut tasks = vec![];
    for port in ports {
        let (lines, addresses, progress) = (lines.clone(), addresses.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut found = vec![];
            let mut errors = vec![];
            for line in lines {
                let stream = match open_serial(&port, &line) {
                    Ok(s) => s,
                    Err(e) => {
                        errors.push(e.to_string());
                        progress.fetch_add(addresses.len(), Ordering::Relaxed);
                        continue;
                    }
                };
                let mut t = Transport::new(stream, &line, None);
                for &a in &addresses {
                    match probe(&mut t, a, timeout).await {
                        Ok(Some((model, detail))) => {
                            found.push(Found { port: port.clone(), line, address: a, model, detail })
                        }
                        Ok(None) => {}
                        Err(e) => {
                            errors.push(format!("serial port {port}: {e}"));
                            break;
                        }
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                }
            }
            (found, errors)
        }));
    }
    let mut found = vec![];
    let mut errors = vec![];
    for t in tasks {
        if let Ok((f, e)) = t.await {
            found.extend(f);
            errors.extend(e);
        }
    }
    found.sort_by(|a, b| (&a.port, a.line.baud, a.address).cmp(&(&b.port, b.line.baud, b.address)));
    (found, errors)
}

/// Why a list of slave addresses does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAddresses {
    #[error("`{0}` is not a slave address (1..247)")]
    NotAnAddress(String),
    #[error("`{0}`: the range runs backwards")]
    Backwards(String),
    #[error("no address given")]
    None,
}

/// Parses "1-247", "4,5,6" or "1-10,20".
pub fn parse_addresses(s: &str) -> Result<Vec<u8>, BadAddresses> {
    let mut out = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| -> Result<u8, BadAddresses> {
            x.trim()
                .parse::<u8>()
                .ok()
                .filter(|a| (1..=247).contains(a))
                .ok_or_else(|| BadAddresses::NotAnAddress(x.to_owned()))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(BadAddresses::Backwards(part.to_owned()));
                }
                out.extend(a..=b);
            }
            None => out.push(num(part)?),
        }
    }
    if out.is_empty() {
        return Err(BadAddresses::None);
    }
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists() {
        assert_eq!(parse_addresses("4,5,6").unwrap(), vec![4, 5, 6]);
        assert_eq!(parse_addresses("1-3, 10").unwrap(), vec![1, 2, 3, 10]);
        assert_eq!(parse_addresses("1-247").unwrap().len(), 247);
        assert!(parse_addresses("0-5").is_err());
        assert!(parse_addresses("248").is_err());
        assert!(parse_addresses("9-3").is_err());
        assert!(parse_addresses("").is_err());
    }
}
