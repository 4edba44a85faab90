//! The command-line grammar of a simulated meter: a [`SimMeterSpec`] from and to text such as
//! `pzem-016@4,volts=121.3,fault=bad-crc,every=3`, with its [`Profile`] and [`Fault`].

use super::{Fault, Hostile, Profile, SimSlave, DEFAULT_DEFINED, DEFAULT_PZEM};
use crate::meter::definition;
use crate::meter::Model;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A simulated meter as given on a command line: `MODEL@ADDR[,key=value...]`.
///
/// ```text
/// spec     = MODEL "@" ADDR { "," KEY "=" VALUE }
/// MODEL    = pzem-004t | pzem-014 | pzem-016 | rx380          (any case)
///          | a meter definition: built-in (sdm630, dds238, ...) or a user file's name
/// ADDR     = 1..247
/// volts=V  amps=A  pf=PF  hz=HZ     base values (RX380 and definitions: V phase-to-neutral
///                                   and A on each phase of a balanced load; PF may be
///                                   negative = export)
/// kwh=E                             starting energy counter (kWh)
/// threshold=W                       PZEM over-power alarm threshold (W)
/// max-block=N                       reads of more than N registers get exception 03 (RX380)
///                                   or 02 (a definition)
/// profile=steady | ramp:PCT_PER_S | step:AT_S:FACTOR | noise:PCT[:SEED] (default seed: ADDR)
///        | script:T=V;T=V;...       (times in s, increasing)
/// fault=none | no-reply | bad-crc | late:DELAY | exception:CODE | garbage
///                                   DELAY = milliseconds, or with a unit: 250ms, 1.5s
/// every=N                           the fault hits every Nth request only
/// ```
///
/// Keys and names are case-insensitive; aliases: `v`, `a`, `energy` (= kwh), `max_block`,
/// `noreply` and `silent` (= no-reply), `crc` (= bad-crc); exception codes may be hex (`0x04`).
///
/// Examples: `pzem-016@4`, `pzem-016@5,volts=121.3,amps=2.3`, `rx380@1,profile=ramp:0.5`,
/// `pzem-016@6,fault=bad-crc,every=3`, `pzem-016@4,profile=script:0=230;10=255;20=230`.
#[derive(Debug, Clone, PartialEq)]
pub struct SimMeterSpec {
    pub model: Model,
    pub address: u8,
    pub profile: Profile,
    pub fault: Fault,
    pub fault_every: Option<u32>,
    pub volts: Option<f64>,
    pub amps: Option<f64>,
    pub pf: Option<f64>,
    pub hz: Option<f64>,
    pub kwh: Option<f64>,
    pub threshold: Option<u16>,
    pub max_block: Option<u16>,
}

impl SimMeterSpec {
    /// A steady meter with default values.
    pub fn new(model: Model, address: u8) -> Self {
        SimMeterSpec {
            model,
            address,
            profile: Profile::Steady,
            fault: Fault::None,
            fault_every: None,
            volts: None,
            amps: None,
            pf: None,
            hz: None,
            kwh: None,
            threshold: None,
            max_block: None,
        }
    }

    /// The slave this spec describes.
    pub fn build(&self) -> SimSlave {
        let mut s = SimSlave::new(self.model, self.address)
            .profile(self.profile.clone())
            .fault(self.fault)
            .fault_every(self.fault_every)
            .max_block(self.max_block);
        if self.volts.is_some() || self.amps.is_some() || self.pf.is_some() || self.hz.is_some() {
            let (v, a, pf, hz) = if self.model.is_pzem() { DEFAULT_PZEM } else { DEFAULT_DEFINED };
            s = s.base_pzem(
                self.volts.unwrap_or(v),
                self.amps.unwrap_or(a),
                self.pf.unwrap_or(pf),
                self.hz.unwrap_or(hz),
            );
        }
        if let Some(kwh) = self.kwh {
            s = s.energy(kwh);
        }
        if let Some(w) = self.threshold {
            s = s.threshold(w);
        }
        s
    }
}

/// Why a simulated meter's text does not parse; the text goes to the user as is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("{key}: `{value}` is not a valid number")]
    NotANumber { key: String, value: String },
    #[error("{key}: `{value}` is not a finite number")]
    NotFinite { key: String, value: String },
    /// `form` is the profile's form, e.g. `` `ramp:PERCENT_PER_S` ``.
    #[error("profile `{profile}`: expected {form}")]
    ProfileForm { profile: String, form: &'static str },
    #[error("profile `{0}`: the noise amplitude must not be negative")]
    NegativeNoise(String),
    #[error("profile `{profile}`: script point `{point}` is not T=VOLTS")]
    ScriptPoint { profile: String, point: String },
    #[error("profile `{0}`: script times must increase")]
    ScriptOrder(String),
    #[error("unknown profile `{0}` (steady, ramp, step, noise, script)")]
    UnknownProfile(String),
    #[error("late: `{0}` must be between 0 and 1 hour")]
    LateRange(String),
    #[error("fault `{0}` takes no argument")]
    FaultArgument(String),
    #[error("fault `late` needs a delay: `late:200` (ms) or `late:1.5s`")]
    LateNeedsDelay,
    #[error("fault `{0}`: the exception code must be 1..255")]
    ExceptionCode(String),
    #[error("fault `exception` needs a code: `exception:4`")]
    ExceptionNeedsCode,
    #[error("fault `{0}`: the pattern is exceptions, headers or overlap")]
    HostilePattern(String),
    #[error("fault `{0}`: the length must be 1..4096 bytes")]
    HostileLength(String),
    #[error(
        "unknown fault `{0}` (none, no-reply, bad-crc, late:MS, exception:CODE, garbage, \
         hostile:PATTERN[:BYTES])"
    )]
    UnknownFault(String),
    #[error("`{0}`: expected MODEL@ADDRESS[,key=value...], e.g. pzem-016@4")]
    NoAddress(String),
    /// `known` lists the models and meter definitions, comma-separated.
    #[error("unknown meter model `{model}` (known: {known})")]
    UnknownModel { model: String, known: String },
    #[error("`{spec}`: the address must be 1..247, not `{address}`")]
    Address { spec: String, address: String },
    #[error("`{item}`: expected key=value (in `{spec}`)")]
    NotKeyValue { item: String, spec: String },
    #[error("{key} must not be negative, got `{value}`")]
    Negative { key: String, value: String },
    /// `min` is 0 for a PZEM, -1 (export) for an RX380.
    #[error("pf must be in {min}..1, got `{value}`")]
    PowerFactor { min: f64, value: String },
    #[error("max-block must be at least 1")]
    MaxBlockZero,
    #[error("`{key}` does not apply to a {model}")]
    NotForModel { key: String, model: Model },
    #[error("every must be at least 1")]
    EveryZero,
    #[error(
        "unknown key `{key}` in `{spec}` (volts, amps, pf, hz, kwh, threshold, max-block, \
         profile, fault, every)"
    )]
    UnknownKey { key: String, spec: String },
}

fn number<T: FromStr>(key: &str, v: &str) -> Result<T, SpecError> {
    v.trim().parse().map_err(|_| SpecError::NotANumber { key: key.to_owned(), value: v.to_owned() })
}

fn finite(key: &str, v: &str) -> Result<f64, SpecError> {
    let x: f64 = number(key, v)?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(SpecError::NotFinite { key: key.to_owned(), value: v.to_owned() })
    }
}

impl FromStr for Profile {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        let args: Vec<&str> = if arg.is_empty() { vec![] } else { arg.split(':').collect() };
        let want = |n: &[usize], form: &'static str| -> Result<(), SpecError> {
            if n.contains(&args.len()) {
                Ok(())
            } else {
                Err(SpecError::ProfileForm { profile: s.to_owned(), form })
            }
        };
        match kind.trim().to_ascii_lowercase().as_str() {
            "steady" => want(&[0], "`steady`").map(|_| Profile::Steady),
            "ramp" => {
                want(&[1], "`ramp:PERCENT_PER_S`")?;
                Ok(Profile::Ramp { per_s: finite("ramp", args[0])? })
            }
            "step" => {
                want(&[2], "`step:AT_S:FACTOR`")?;
                Ok(Profile::Step {
                    at_s: finite("step time", args[0])?,
                    factor: finite("step factor", args[1])?,
                })
            }
            "noise" => {
                want(&[1, 2], "`noise:PERCENT` or `noise:PERCENT:SEED`")?;
                let amplitude = finite("noise amplitude", args[0])?;
                if amplitude < 0.0 {
                    return Err(SpecError::NegativeNoise(s.to_owned()));
                }
                let seed = match args.get(1) {
                    Some(v) => number("noise seed", v)?,
                    None => 0,
                };
                Ok(Profile::Noise { amplitude, seed })
            }
            "script" => {
                let mut points = Vec::new();
                for p in arg.split(';').filter(|p| !p.trim().is_empty()) {
                    let (t, v) = p.split_once('=').ok_or_else(|| SpecError::ScriptPoint {
                        profile: s.to_owned(),
                        point: p.to_owned(),
                    })?;
                    let (t, v) = (finite("script time", t)?, finite("script volts", v)?);
                    if points.last().is_some_and(|&(last, _)| t <= last) {
                        return Err(SpecError::ScriptOrder(s.to_owned()));
                    }
                    points.push((t, v));
                }
                if points.is_empty() {
                    return Err(SpecError::ProfileForm {
                        profile: s.to_owned(),
                        form: "`script:T=VOLTS;T=VOLTS;...`",
                    });
                }
                Ok(Profile::Script(points))
            }
            other => Err(SpecError::UnknownProfile(other.to_owned())),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Profile::Steady => write!(f, "steady"),
            Profile::Ramp { per_s } => write!(f, "ramp:{per_s}"),
            Profile::Step { at_s, factor } => write!(f, "step:{at_s}:{factor}"),
            Profile::Noise { amplitude, seed } => write!(f, "noise:{amplitude}:{seed}"),
            Profile::Script(points) => {
                write!(f, "script:")?;
                for (i, (t, v)) in points.iter().enumerate() {
                    write!(f, "{}{t}={v}", if i > 0 { ";" } else { "" })?;
                }
                Ok(())
            }
            // Set through the API only (a recorded trace has no text form).
            Profile::Grid { trace, phase } => write!(f, "grid:{}s:L{}", trace.samples.len(), phase + 1),
        }
    }
}

fn parse_delay(s: &str) -> Result<Duration, SpecError> {
    let s = s.trim();
    let (num, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(sec) = s.strip_suffix('s') {
        (sec, 1.0)
    } else {
        (s, 1e-3)
    };
    let x = finite("late", num)?;
    if x < 0.0 || x * scale > 3600.0 {
        return Err(SpecError::LateRange(s.to_owned()));
    }
    Ok(Duration::from_secs_f64(x * scale))
}

impl FromStr for Fault {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        let kind = kind.trim().to_ascii_lowercase();
        let no_arg = |f: Fault| {
            if arg.is_empty() {
                Ok(f)
            } else {
                Err(SpecError::FaultArgument(s.to_owned()))
            }
        };
        match kind.as_str() {
            "none" => no_arg(Fault::None),
            "no-reply" | "noreply" | "silent" => no_arg(Fault::NoReply),
            "bad-crc" | "crc" => no_arg(Fault::BadCrc),
            "garbage" => no_arg(Fault::Garbage),
            "late" if !arg.is_empty() => Ok(Fault::Late(parse_delay(arg)?)),
            "late" => Err(SpecError::LateNeedsDelay),
            "exception" if !arg.is_empty() => {
                let code = arg.trim();
                let code = match code.strip_prefix("0x") {
                    Some(hex) => u8::from_str_radix(hex, 16).ok(),
                    None => code.parse().ok(),
                };
                match code {
                    Some(c) if c > 0 => Ok(Fault::Exception(c)),
                    _ => Err(SpecError::ExceptionCode(s.to_owned())),
                }
            }
            "exception" => Err(SpecError::ExceptionNeedsCode),
            "hostile" => {
                let (kind, len) = arg.split_once(':').unwrap_or((arg, "260"));
                let kind = Hostile::ALL
                    .into_iter()
                    .find(|h| h.name() == kind.trim())
                    .ok_or_else(|| SpecError::HostilePattern(s.to_owned()))?;
                match len.trim().parse::<u16>() {
                    Ok(n) if (1..=4096).contains(&n) => Ok(Fault::Hostile(kind, n)),
                    _ => Err(SpecError::HostileLength(s.to_owned())),
                }
            }
            other => Err(SpecError::UnknownFault(other.to_owned())),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::None => write!(f, "none"),
            Fault::NoReply => write!(f, "no-reply"),
            Fault::BadCrc => write!(f, "bad-crc"),
            Fault::Late(d) => write!(f, "late:{}ms", d.as_secs_f64() * 1000.0),
            Fault::Exception(c) => write!(f, "exception:{c}"),
            Fault::Garbage => write!(f, "garbage"),
            Fault::Hostile(kind, len) => write!(f, "hostile:{}:{len}", kind.name()),
        }
    }
}

/// The model `name` names for a simulated meter: a hand-written one (not the PMTR server, which
/// is simulated apart), else a meter definition by [`definition::resolve`]: the one of that
/// name used last (see [`SimMeterSpec::use_definitions`]), else the built-in.
fn model_named(name: &str) -> Option<Model> {
    if let Some(m) = Model::parse(name) {
        return Some(m);
    }
    [name.to_owned(), name.to_ascii_lowercase()].iter().find_map(|n| {
        let m = definition::resolve(n);
        definition::of(m).map(|_| m)
    })
}

impl SimMeterSpec {
    /// Makes the user definitions of `dir` (`*.toml`) known to [`SimMeterSpec`]'s parser, a
    /// file of a built-in's name replacing it. Returns what did not load (a missing folder is
    /// no error).
    pub fn use_definitions(dir: &std::path::Path) -> Vec<definition::DefError> {
        let (all, errors) = definition::catalogue(Some(dir));
        for (d, origin) in all {
            if origin != definition::Origin::BuiltIn {
                definition::intern(d);
            }
        }
        errors
    }
}

impl FromStr for SimMeterSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut parts = s.split(',');
        let head = parts.next().unwrap_or_default().trim();
        let (model, addr) = head.split_once('@').ok_or_else(|| SpecError::NoAddress(s.to_owned()))?;
        let model = model_named(model.trim()).ok_or_else(|| {
            let mut known: Vec<String> = Model::ALL.iter().map(|m| m.name().to_owned()).collect();
            for d in definition::built_in() {
                if !known.contains(&d.name) {
                    known.push(d.name);
                }
            }
            SpecError::UnknownModel { model: model.trim().to_owned(), known: known.join(", ") }
        })?;
        let address = match addr.trim().parse::<u8>() {
            Ok(a @ 1..=247) => a,
            _ => return Err(SpecError::Address { spec: s.to_owned(), address: addr.trim().to_owned() }),
        };
        let mut spec = SimMeterSpec::new(model, address);
        for kv in parts {
            if kv.trim().is_empty() {
                continue;
            }
            let (key, v) = kv
                .split_once('=')
                .ok_or_else(|| SpecError::NotKeyValue { item: kv.to_owned(), spec: s.to_owned() })?;
            let key = key.trim().to_ascii_lowercase();
            let positive = |x: f64| {
                if x >= 0.0 {
                    Ok(x)
                } else {
                    Err(SpecError::Negative { key: key.clone(), value: v.trim().to_owned() })
                }
            };
            match key.as_str() {
                "volts" | "v" => spec.volts = Some(positive(finite(&key, v)?)?),
                "amps" | "a" => spec.amps = Some(positive(finite(&key, v)?)?),
                "hz" => spec.hz = Some(positive(finite(&key, v)?)?),
                "kwh" | "energy" => spec.kwh = Some(positive(finite(&key, v)?)?),
                "pf" => {
                    let pf = finite(&key, v)?;
                    let range = if model.is_pzem() { 0.0..=1.0 } else { -1.0..=1.0 };
                    if !range.contains(&pf) {
                        return Err(SpecError::PowerFactor {
                            min: *range.start(),
                            value: v.trim().to_owned(),
                        });
                    }
                    spec.pf = Some(pf);
                }
                "threshold" if model.is_pzem() => spec.threshold = Some(number(&key, v)?),
                "max-block" | "max_block" if !model.is_pzem() => {
                    let n: u16 = number(&key, v)?;
                    if n == 0 {
                        return Err(SpecError::MaxBlockZero);
                    }
                    spec.max_block = Some(n);
                }
                "threshold" | "max-block" | "max_block" => {
                    return Err(SpecError::NotForModel { key: key.clone(), model });
                }
                "profile" => {
                    spec.profile = v.parse()?;
                    // Without a seed, meters at different addresses get different noise.
                    if let Profile::Noise { seed, .. } = &mut spec.profile {
                        if v.matches(':').count() == 1 {
                            *seed = u64::from(address);
                        }
                    }
                }
                "fault" => spec.fault = v.parse()?,
                "every" => match number::<u32>(&key, v)? {
                    0 => return Err(SpecError::EveryZero),
                    n => spec.fault_every = Some(n),
                },
                other => return Err(SpecError::UnknownKey { key: other.to_owned(), spec: s.to_owned() }),
            }
        }
        Ok(spec)
    }
}

impl fmt::Display for SimMeterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.model, self.address)?;
        let values =
            [("volts", self.volts), ("amps", self.amps), ("pf", self.pf), ("hz", self.hz), ("kwh", self.kwh)];
        for (k, v) in values {
            if let Some(v) = v {
                write!(f, ",{k}={v}")?;
            }
        }
        if let Some(w) = self.threshold {
            write!(f, ",threshold={w}")?;
        }
        if let Some(n) = self.max_block {
            write!(f, ",max-block={n}")?;
        }
        if self.profile != Profile::Steady {
            write!(f, ",profile={}", self.profile)?;
        }
        if self.fault != Fault::None {
            write!(f, ",fault={}", self.fault)?;
        }
        if let Some(n) = self.fault_every {
            write!(f, ",every={n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::pzem;

    #[test]
    fn parses_specs() {
        let s: SimMeterSpec = "pzem-016@4".parse().unwrap();
        assert_eq!(s, SimMeterSpec::new(Model::Pzem016, 4));
        let s: SimMeterSpec = "PZEM-016@5, volts=121.3, amps=2.3".parse().unwrap();
        assert_eq!((s.volts, s.amps, s.pf), (Some(121.3), Some(2.3), None));
        let s: SimMeterSpec = "rx380@1,profile=ramp:0.5".parse().unwrap();
        assert_eq!((s.model, s.profile.clone()), (Model::Rx380, Profile::Ramp { per_s: 0.5 }));
        let s: SimMeterSpec = "pzem-016@6,fault=no-reply".parse().unwrap();
        assert_eq!((s.fault, s.fault_every), (Fault::NoReply, None));
        let s: SimMeterSpec = "pzem-016@6,fault=bad-crc,every=3".parse().unwrap();
        assert_eq!((s.fault, s.fault_every), (Fault::BadCrc, Some(3)));
        let s: SimMeterSpec = "pzem-016@4,profile=script:0=230;10=255;20=230".parse().unwrap();
        assert_eq!(s.profile, Profile::Script(vec![(0.0, 230.0), (10.0, 255.0), (20.0, 230.0)]));
        let s: SimMeterSpec = "pzem-016@4,profile=noise:2".parse().unwrap();
        assert_eq!(s.profile, Profile::Noise { amplitude: 2.0, seed: 4 });
        let s: SimMeterSpec =
            "pzem-014@9,profile=noise:1.5:42,fault=late:250,threshold=100,kwh=3.5,pf=0.5,hz=60"
                .parse()
                .unwrap();
        assert_eq!(s.profile, Profile::Noise { amplitude: 1.5, seed: 42 });
        assert_eq!(s.fault, Fault::Late(Duration::from_millis(250)));
        assert_eq!((s.threshold, s.kwh, s.pf, s.hz), (Some(100), Some(3.5), Some(0.5), Some(60.0)));
        let s: SimMeterSpec =
            "rx380@2,max-block=12,fault=exception:0x04,profile=step:10:1.5,pf=-0.9".parse().unwrap();
        assert_eq!(s.max_block, Some(12));
        assert_eq!(s.fault, Fault::Exception(4));
        assert_eq!(s.profile, Profile::Step { at_s: 10.0, factor: 1.5 });
        assert_eq!(s.pf, Some(-0.9));
        assert_eq!(
            "pzem-016@1,fault=late:1.5s".parse::<SimMeterSpec>().unwrap().fault,
            Fault::Late(Duration::from_millis(1500))
        );
        assert_eq!("pzem-016@1,fault=garbage".parse::<SimMeterSpec>().unwrap().fault, Fault::Garbage);
    }

    #[test]
    fn spec_errors_say_what_is_wrong() {
        let err = |s: &str| s.parse::<SimMeterSpec>().unwrap_err().to_string();
        assert!(err("pzem-016").contains("MODEL@ADDRESS"));
        assert!(err("pzem-017@4").contains("unknown meter model `pzem-017`"));
        assert!(err("pzem-016@0").contains("1..247"));
        assert!(err("pzem-016@248").contains("1..247"));
        assert!(err("pzem-016@x").contains("1..247"));
        assert!(err("pzem-016@4,volts").contains("key=value"));
        assert!(err("pzem-016@4,volts=abc").contains("not a valid number"));
        assert!(err("pzem-016@4,volts=-1").contains("negative"));
        assert!(err("pzem-016@4,colour=red").contains("unknown key `colour`"));
        assert!(err("pzem-016@4,profile=zigzag").contains("unknown profile"));
        assert!(err("pzem-016@4,profile=ramp").contains("ramp:PERCENT_PER_S"));
        assert!(err("pzem-016@4,profile=script:10=230;5=250").contains("increase"));
        assert!(err("pzem-016@4,profile=script:").contains("script:T=VOLTS"));
        assert!(err("pzem-016@4,profile=script:10").contains("T=VOLTS"));
        assert!(err("pzem-016@4,fault=explode").contains("unknown fault"));
        assert!(err("pzem-016@4,fault=late").contains("needs a delay"));
        assert!(err("pzem-016@4,fault=exception:0").contains("1..255"));
        assert!(err("pzem-016@4,fault=bad-crc:3").contains("no argument"));
        assert!(err("pzem-016@4,every=0").contains("at least 1"));
        assert!(err("pzem-016@4,pf=1.5").contains("pf must be"));
        assert!(err("pzem-016@4,max-block=4").contains("does not apply"));
        assert!(err("rx380@4,threshold=4").contains("does not apply"));
    }

    #[test]
    fn meter_definitions_are_simulated_by_name() {
        let s: SimMeterSpec = "sdm630@3,volts=231,pf=-0.5,max-block=24".parse().unwrap();
        assert_eq!(s.model.name(), "sdm630");
        assert!(definition::of(s.model).is_some());
        assert_eq!((s.address, s.volts, s.pf, s.max_block), (3, Some(231.0), Some(-0.5), Some(24)));
        assert_eq!(s.to_string().parse::<SimMeterSpec>().unwrap(), s);
        assert_eq!("SDM630@3".parse::<SimMeterSpec>().unwrap().model, s.model);
        // The hand-written models keep their names.
        assert_eq!("pzem-016@1".parse::<SimMeterSpec>().unwrap().model, Model::Pzem016);
        assert_eq!("rx380@1".parse::<SimMeterSpec>().unwrap().model, Model::Rx380);
        let mut slave = "dds238@7,volts=229.5".parse::<SimMeterSpec>().unwrap().build();
        assert_eq!(slave.model().name(), "dds238");
        // dds238's voltage register (0x000C) is the 4th in its table, after three u32 counters.
        assert_eq!(slave.registers(0.0)[6], 2295);
        let err = "sdm631@3".parse::<SimMeterSpec>().unwrap_err().to_string();
        assert!(err.contains("unknown meter model `sdm631`") && err.contains("sdm630"), "{err}");
        let err = "sdm630@3,threshold=5".parse::<SimMeterSpec>().unwrap_err().to_string();
        assert!(err.contains("does not apply"), "{err}");
    }

    #[test]
    fn user_definitions_are_simulated_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mine = definition::BUILT_IN.iter().find(|(f, _)| *f == "dds238.toml").unwrap().1;
        let mine = mine.replace("name = \"dds238\"", "name = \"my-meter\"");
        std::fs::write(dir.path().join("my-meter.toml"), mine).unwrap();
        std::fs::write(dir.path().join("broken.toml"), "name = 3\n").unwrap();
        let errors = SimMeterSpec::use_definitions(dir.path());
        assert!(!errors.is_empty());
        assert!(errors.iter().all(|e| e.to_string().contains("broken.toml")), "{errors:?}");
        let s: SimMeterSpec = "my-meter@2".parse().unwrap();
        assert_eq!(definition::of(s.model).map(|d| d.name.as_str()), Some("my-meter"));
    }

    #[test]
    fn spec_round_trips_and_builds() {
        for text in [
            "pzem-016@4",
            "pzem-016@5,volts=121.3,amps=2.3",
            "rx380@1,max-block=12,profile=ramp:0.5",
            "pzem-016@6,fault=bad-crc,every=3",
            "pzem-004t@7,kwh=1.5,threshold=100,profile=script:0=230;10=255;20=230,fault=late:250ms",
            "pzem-014@8,profile=noise:2:9,fault=exception:4",
        ] {
            let spec: SimMeterSpec = text.parse().unwrap();
            assert_eq!(spec.to_string().parse::<SimMeterSpec>().unwrap(), spec, "{text}");
        }
        let mut s = "pzem-016@5,volts=121.3,amps=2.3".parse::<SimMeterSpec>().unwrap().build();
        assert_eq!(s.address(), 5);
        let regs = s.registers(0.0);
        assert_eq!(regs.to_vec(), pzem::encode(121.3, 2.3, 121.3 * 2.3, 0.0, 50.0, 1.0, false).to_vec());
        let s = "pzem-016@6,fault=bad-crc,every=3".parse::<SimMeterSpec>().unwrap().build();
        assert_eq!(s.current_fault(), (Fault::BadCrc, Some(3)));
    }
}
