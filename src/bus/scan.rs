//! `pmtr scan`: which devices answer on which port, at which address and line settings, and
//! which model each one is: the PZEM and RX380 reads first (as they always were), then the
//! probes of the meter definitions (`[[probe]]`), decided by [`recognise`] (pure).

use crate::config::LineSettings;
use crate::meter::definition::{self, Block, Definition, Function, ProbeRegister, ProbeTest};
use crate::meter::Model;
use crate::modbus::transport::{open_serial, Line, Transport};
use crate::modbus::{FrameError, Parity, Reply, Request};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One device that answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub port: String,
    pub line: LineSettings,
    pub address: u8,
    /// The model recognised, if any: the one definition whose probe matched, else the PZEM
    /// or RX380 the first reads found.
    pub model: Option<Model>,
    /// The definitions whose probe matched (one, or several the probes cannot tell apart).
    pub candidates: Vec<String>,
    /// What it said, in words (e.g. "230.1 V" or "exception 2 to both reads").
    pub detail: String,
}

/// The most probe requests sent to one address that answered: a meter that stays silent to
/// registers it does not have costs at most this many timeouts.
pub const MAX_PROBE_READS: usize = 9;

/// The most registers one probe request asks for.
const MAX_PROBE_BLOCK: u16 = 32;

/// The words a device gave to the probe requests, by (function, register address).
pub type Answers = BTreeMap<(Function, u16), u16>;

/// The requests that read the probe registers of `defs`: registers of the same function that
/// overlap or touch are read by one request (the SDM family shares one probe register, the
/// ABB family another), at most [`MAX_PROBE_BLOCK`] registers each; never across a gap, since
/// a meter may refuse a request that covers a register it lacks. At most [`MAX_PROBE_READS`]
/// requests: those serving the most definitions first (then by function and address); the
/// definitions whose probe a request left out are not tried. Pure.
pub fn probe_reads(defs: &[Definition]) -> Vec<Block> {
    let mut spans: Vec<(Function, u32, u32)> = defs
        .iter()
        .flat_map(|d| &d.probe)
        .map(|p| (p.function, u32::from(p.address), u32::from(p.address) + u32::from(p.ty.width())))
        .collect();
    spans.sort();
    spans.dedup();
    let mut blocks: Vec<(Function, u32, u32)> = Vec::new();
    for (f, start, end) in spans {
        match blocks.last_mut() {
            Some((bf, bs, be))
                if *bf == f && start <= *be && end.max(*be) - *bs <= u32::from(MAX_PROBE_BLOCK) =>
            {
                *be = end.max(*be)
            }
            _ => blocks.push((f, start, end)),
        }
    }
    let mut blocks: Vec<Block> = blocks
        .into_iter()
        .map(|(function, start, end)| Block { function, start: start as u16, count: (end - start) as u16 })
        .collect();
    let served = |b: &Block| defs.iter().filter(|d| d.probe.iter().any(|p| covers(b, p))).count();
    blocks.sort_by_key(|b| std::cmp::Reverse(served(b)));
    blocks.truncate(MAX_PROBE_READS);
    blocks.sort_by_key(|b| (b.function, b.start));
    blocks
}

fn covers(b: &Block, p: &ProbeRegister) -> bool {
    let (start, end) = (u32::from(b.start), u32::from(b.start) + u32::from(b.count));
    b.function == p.function
        && u32::from(p.address) >= start
        && u32::from(p.address) + u32::from(p.ty.width()) <= end
}

/// Records the words of a reply to the probe request `b`.
pub fn record(answers: &mut Answers, b: &Block, words: &[u16]) {
    for (k, &w) in words.iter().take(usize::from(b.count)).enumerate() {
        answers.insert((b.function, b.start.wrapping_add(k as u16)), w);
    }
}

/// A probe register's value among `answers`, if every word of it was answered.
pub fn probe_value(p: &ProbeRegister, answers: &Answers) -> Option<f64> {
    let words: Option<Vec<u16>> =
        (0..p.ty.width()).map(|k| answers.get(&(p.function, p.address.wrapping_add(k))).copied()).collect();
    Some(definition::plan::raw(&words?, p.ty, p.word_order, p.byte_order))
}

/// Whether `v` passes the probe's test.
fn passes(test: ProbeTest, v: f64) -> bool {
    match test {
        ProbeTest::Equals(x) => v == x,
        ProbeTest::Range { min, max } => min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m),
    }
}

/// The definitions of `catalogue` whose probe matched `answers`: every probe register of the
/// definition answered and passed its test. A definition without a `[[probe]]` never matches
/// (it cannot be recognised). Pure.
pub fn recognise<'a>(catalogue: &'a [Definition], answers: &Answers) -> Vec<&'a Definition> {
    catalogue
        .iter()
        .filter(|d| {
            !d.probe.is_empty()
                && d.probe.iter().all(|p| probe_value(p, answers).is_some_and(|v| passes(p.test, v)))
        })
        .collect()
}

/// The names of the definitions of `catalogue` that have no probe: `pmtr scan` cannot name
/// them.
pub fn unprobed(catalogue: &[Definition]) -> Vec<&str> {
    catalogue.iter().filter(|d| d.probe.is_empty()).map(|d| d.name.as_str()).collect()
}

/// The line settings a scan tries when the user gives none: 9600 8N1 first (the PZEMs' and a
/// bus's default), then each other default of the definitions of `catalogue` (2400 8N1 for
/// an SDM120, 9600 8E1 for the ORNO and ABB meters, 19200 8E1 for the RX380), once each.
pub fn default_lines(catalogue: &[Definition]) -> Vec<LineSettings> {
    let mut out = vec![LineSettings::DEFAULT];
    for d in catalogue {
        let parity = match d.line.parity {
            'E' => Parity::Even,
            'O' => Parity::Odd,
            _ => Parity::None,
        };
        let line = LineSettings::eight_bits(d.line.baud, parity);
        if !out.contains(&line) {
            out.push(line);
        }
    }
    out
}

/// What a probe of one address learned.
#[derive(Debug, Clone, PartialEq)]
pub struct Probed {
    pub model: Option<Model>,
    pub candidates: Vec<String>,
    pub detail: String,
}

/// Probes one address: the PZEM read (a silent address costs this one timeout), then, if
/// something answered but no PZEM, the RX380 read, then the definitions' probe reads
/// ([`probe_reads`] of `catalogue`). A definition whose probe matches names the model (over
/// a PZEM or RX380 guess: any meter with input registers at 0 answers the PZEM read); several
/// are listed, none named.
pub async fn probe<L: Line>(
    t: &mut Transport<L>,
    address: u8,
    timeout: Duration,
    catalogue: &[Definition],
) -> std::io::Result<Option<Probed>> {
    let pz = t.transact(&crate::meter::pzem::read_request(address), timeout).await?;
    let mut guess = None;
    let first = match pz.result {
        Ok(Reply::Registers(r)) => match crate::meter::pzem::decode(&r, crate::reading::Phase::L1) {
            Ok(s) => {
                guess = Some((Model::Pzem016, format!("{:.1} V, {:.3} A", s[0].value, s[1].value)));
                String::new()
            }
            Err(e) => e.to_string(),
        },
        Err(FrameError::Timeout) => return Ok(None),
        Ok(Reply::Echo | Reply::Bits(_)) => "an echo".to_string(),
        Err(e) => e.to_string(),
    };
    let mut other = String::new();
    if guess.is_none() {
        // Something is there but it is no PZEM: try the RX380 map.
        let rx = t.transact(&Request::read_input(address, 4034, 2), timeout).await?;
        match rx.result {
            Ok(Reply::Registers(r)) if r.len() == 2 => {
                let v = ((u32::from(r[0]) << 16) | u32::from(r[1])) as f64 * 0.1;
                guess = Some((Model::Rx380, format!("L1 {v:.1} V")));
            }
            Ok(_) => other = format!("{first} to a PZEM read; an odd reply to an RX380 read"),
            Err(e) => other = format!("{first} to a PZEM read; {e} to an RX380 read"),
        }
    }
    let mut answers = Answers::new();
    for b in probe_reads(catalogue) {
        let req = match b.function {
            Function::Input => Request::read_input(address, b.start, b.count),
            Function::Holding => Request::read_holding(address, b.start, b.count),
        };
        if let Ok(Reply::Registers(r)) = t.transact(&req, timeout).await?.result {
            if r.len() == usize::from(b.count) {
                record(&mut answers, &b, &r);
            }
        }
    }
    let matched = recognise(catalogue, &answers);
    let candidates: Vec<String> = matched.iter().map(|d| d.name.clone()).collect();
    Ok(Some(match (matched.as_slice(), guess) {
        ([d], _) => {
            Probed { model: Some(definition::intern((*d).clone())), candidates, detail: shows(d, &answers) }
        }
        ([], Some((m, detail))) => Probed { model: Some(m), candidates, detail },
        ([], None) => Probed { model: None, candidates, detail: other },
        (_, _) => {
            let detail = format!("its probe fits {}: give the model by hand", candidates.join(" or "));
            Probed { model: None, candidates, detail }
        }
    }))
}

/// What a matched definition's probe registers held, in words ("holding 0xFC02 = 112").
fn shows(d: &Definition, answers: &Answers) -> String {
    let values: Vec<String> = d
        .probe
        .iter()
        .map(|p| {
            let v = probe_value(p, answers).unwrap_or(f64::NAN);
            format!("{} 0x{:04X} = {v}", p.function.name(), p.address)
        })
        .collect();
    format!("probe: {}", values.join(", "))
}

/// Scans `ports` × `lines` × `addresses`, ports concurrently, recognising models among
/// `catalogue`. An address found on a port is not probed again at the later line settings.
/// `progress` counts probes done.
pub async fn scan(
    ports: Vec<String>,
    lines: Vec<LineSettings>,
    addresses: Vec<u8>,
    timeout: Duration,
    catalogue: Arc<Vec<Definition>>,
    progress: Arc<AtomicUsize>,
) -> (Vec<Found>, Vec<String>) {
    let mut tasks = vec![];
    for port in ports {
        let (lines, addresses, progress, catalogue) =
            (lines.clone(), addresses.clone(), progress.clone(), catalogue.clone());
        tasks.push(tokio::spawn(async move {
            let mut found: Vec<Found> = vec![];
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
                    if found.iter().any(|f| f.address == a) {
                        progress.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    match probe(&mut t, a, timeout, &catalogue).await {
                        Ok(Some(p)) => found.push(Found {
                            port: port.clone(),
                            line,
                            address: a,
                            model: p.model,
                            candidates: p.candidates,
                            detail: p.detail,
                        }),
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
    use crate::meter::definition::plan::encode;

    /// The words a device would give for `p` holding `x`.
    fn answer(answers: &mut Answers, p: &ProbeRegister, x: f64) {
        for (k, w) in encode(x, p.ty, p.word_order, p.byte_order).into_iter().enumerate() {
            answers.insert((p.function, p.address + k as u16), w);
        }
    }

    /// A value that passes the test, and one just outside it.
    fn pass_and_miss(t: ProbeTest) -> (f64, f64) {
        match t {
            ProbeTest::Equals(x) => (x, x + 1.0),
            // A range from 0 (an unsigned register): missed above it.
            ProbeTest::Range { min: Some(m), max: Some(hi) } if m <= 0.0 => (m, hi + 1.0),
            ProbeTest::Range { min: Some(m), .. } => (m, m - 1.0),
            ProbeTest::Range { min: None, max: Some(m) } => (m, m + 1.0),
            ProbeTest::Range { .. } => unreachable!("a range has a bound"),
        }
    }

    #[test]
    fn each_built_in_with_a_probe_is_recognised_by_its_own_values_and_not_by_a_near_miss() {
        let all = definition::built_in();
        let probed: Vec<&Definition> = all.iter().filter(|d| !d.probe.is_empty()).collect();
        assert!(
            probed.len() >= 10,
            "the SDM and ABB families, the ORNOs, the CHINTs and the DDS238 have probes"
        );
        for d in probed {
            let mut good = Answers::new();
            for p in &d.probe {
                answer(&mut good, p, pass_and_miss(p.test).0);
            }
            let names: Vec<&str> = recognise(&all, &good).iter().map(|m| m.name.as_str()).collect();
            assert_eq!(names, [d.name.as_str()], "{}", d.name);
            for (k, p) in d.probe.iter().enumerate() {
                let mut bad = good.clone();
                answer(&mut bad, p, pass_and_miss(p.test).1);
                assert!(!recognise(&all, &bad).iter().any(|m| m.name == d.name), "{} probe {k}", d.name);
                // A probe register the device did not answer: not recognised either.
                let mut silent = good.clone();
                silent.remove(&(p.function, p.address));
                assert!(!recognise(&all, &silent).iter().any(|m| m.name == d.name), "{} probe {k}", d.name);
            }
        }
    }

    /// An OR-WE-516 answers 0x0111, the low half of its exported energy's float, which may
    /// be in the WE-514's 1..4; it has no voltage at 0x0131, so it is not named a WE-514.
    #[test]
    fn an_orno_we516_is_not_taken_for_a_we514() {
        let all = definition::built_in();
        let mut we516 = Answers::new();
        let bits = 12.5f32.to_bits() & 0xFFFF_0000 | 3;
        we516.insert((Function::Holding, 0x0110), (bits >> 16) as u16);
        we516.insert((Function::Holding, 0x0111), bits as u16);
        assert!(recognise(&all, &we516).is_empty());
        let mut we514 = we516.clone();
        we514.insert((Function::Holding, 0x0131), 23_010);
        let names: Vec<&str> = recognise(&all, &we514).iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["orno-we514"]);
    }

    #[test]
    fn overlapping_probes_give_every_match_and_no_probe_gives_none() {
        let mut all = definition::built_in();
        let mut twin = all.iter().find(|d| d.name == "sdm630").unwrap().clone();
        twin.name = "my-sdm630".into();
        all.push(twin);
        let mut a = Answers::new();
        a.insert((Function::Holding, 0xFC02), 0x0070);
        let names: Vec<&str> = recognise(&all, &a).iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["sdm630", "my-sdm630"]);
        // A device answering every register with anything: no definition without a probe matches.
        let mut everything = Answers::new();
        for f in [Function::Input, Function::Holding] {
            for addr in 0..=0xFFFFu16 {
                everything.insert((f, addr), 0);
            }
        }
        let unprobed = unprobed(&all);
        assert!(unprobed.contains(&"rx380") && unprobed.contains(&"pzem-016"), "{unprobed:?}");
        assert!(recognise(&all, &everything).iter().all(|d| !d.probe.is_empty()));
    }

    #[test]
    fn probe_reads_share_requests_and_are_bounded() {
        let all = definition::built_in();
        let reads = probe_reads(&all);
        // Every probe register of every definition is covered.
        for d in &all {
            for p in &d.probe {
                assert!(reads.iter().any(|b| covers(b, p)), "{} 0x{:04X}", d.name, p.address);
            }
        }
        // The four Eastron probes share one request, the two ABB ones another.
        let sdm = Block { function: Function::Holding, start: 0xFC02, count: 1 };
        let abb = Block { function: Function::Holding, start: 0x8960, count: 2 };
        assert!(reads.contains(&sdm) && reads.contains(&abb), "{reads:?}");
        let probes: usize = all.iter().map(|d| d.probe.len()).sum();
        assert!(reads.len() < probes, "{reads:?}");
        // Overlapping and touching registers merge; a gap does not.
        let mut d = all[0].clone();
        let p = d.probe.first().copied().unwrap_or(ProbeRegister {
            function: Function::Holding,
            address: 0,
            ty: definition::RegType::U16,
            word_order: definition::WordOrder::HighFirst,
            byte_order: definition::ByteOrder::Big,
            test: ProbeTest::Equals(1.0),
        });
        let at = |address: u16, ty| ProbeRegister { address, ty, ..p };
        d.probe = vec![
            at(100, definition::RegType::U32),
            at(101, definition::RegType::U16),
            at(102, definition::RegType::U16),
            at(110, definition::RegType::U16),
        ];
        let reads = probe_reads(std::slice::from_ref(&d));
        assert_eq!(
            reads,
            [
                Block { function: p.function, start: 100, count: 3 },
                Block { function: p.function, start: 110, count: 1 }
            ]
        );
        // Many definitions with far-apart probes: at most MAX_PROBE_READS requests.
        let many: Vec<Definition> = (0..20u16)
            .map(|k| {
                let mut d = d.clone();
                d.probe = vec![at(1000 * k, definition::RegType::U16)];
                d
            })
            .collect();
        assert_eq!(probe_reads(&many).len(), MAX_PROBE_READS);
    }

    #[test]
    fn default_lines_start_at_9600_8n1_and_add_the_definitions_defaults_once() {
        let lines = default_lines(&definition::built_in());
        assert_eq!(lines[0], LineSettings::DEFAULT);
        for l in [
            LineSettings::n81(2400),
            LineSettings::eight_bits(9600, Parity::Even),
            LineSettings::eight_bits(19200, Parity::Even),
        ] {
            assert_eq!(lines.iter().filter(|x| **x == l).count(), 1, "{l} in {lines:?}");
        }
        assert_eq!(lines.len(), 4, "{lines:?}");
    }

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
