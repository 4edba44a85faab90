//! A meter model as data: a definition file (TOML) names the maker's document, the line
//! defaults and a register table; one generic engine turns it into requests ([`plan`]) and
//! replies into samples. Pure: no I/O here but [`load_dir`], which reads a folder of user
//! files.
//!
//! The format is in the README ("Meter definitions"); [`format`] parses and checks a file,
//! reporting every error at once with its line and column.

pub mod format;
pub mod plan;

pub use format::{parse, DefError, DefErrors};
pub use plan::{Block, Layout, Plan};

use crate::reading::{Phase, Quantity};
use std::path::{Path, PathBuf};

/// Which Modbus read a register is read by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Function {
    /// Function 04, input registers.
    Input,
    /// Function 03, holding registers.
    Holding,
}

impl Function {
    pub fn name(self) -> &'static str {
        match self {
            Function::Input => "input",
            Function::Holding => "holding",
        }
    }

    /// The Modbus function code.
    pub fn code(self) -> u8 {
        match self {
            Function::Input => 4,
            Function::Holding => 3,
        }
    }
}

/// How a value is encoded in its registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegType {
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// One register: 1 when it is not zero, else 0 (a meter's alarm flag).
    Bool,
}

impl RegType {
    pub const ALL: [RegType; 9] = [
        RegType::U16,
        RegType::I16,
        RegType::U32,
        RegType::I32,
        RegType::U64,
        RegType::I64,
        RegType::F32,
        RegType::F64,
        RegType::Bool,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RegType::U16 => "u16",
            RegType::I16 => "i16",
            RegType::U32 => "u32",
            RegType::I32 => "i32",
            RegType::U64 => "u64",
            RegType::I64 => "i64",
            RegType::F32 => "f32",
            RegType::F64 => "f64",
            RegType::Bool => "bool",
        }
    }

    /// Registers it takes.
    pub fn width(self) -> u16 {
        match self {
            RegType::U16 | RegType::I16 | RegType::Bool => 1,
            RegType::U32 | RegType::I32 | RegType::F32 => 2,
            RegType::U64 | RegType::I64 | RegType::F64 => 4,
        }
    }

    /// Every bit of its width set: the largest raw value its words can hold.
    pub fn all_ones(self) -> u64 {
        u64::MAX >> (64 - 16 * u32::from(self.width()))
    }

    /// The raw bits of its largest value, for an integer type: all ones unsigned, 0x7FFF…
    /// signed (what ABB meters answer for a value they do not have). None for floats and bool.
    pub fn max_bits(self) -> Option<u64> {
        let ones = self.all_ones();
        match self {
            RegType::U16 | RegType::U32 | RegType::U64 => Some(ones),
            RegType::I16 | RegType::I32 | RegType::I64 => Some(ones >> 1),
            RegType::F32 | RegType::F64 | RegType::Bool => None,
        }
    }
}

/// The order of the registers of a value wider than one register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WordOrder {
    /// The most significant register first (most meters).
    HighFirst,
    /// The least significant register first (PZEM).
    LowFirst,
}

/// The order of the two bytes inside each register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    Big,
    Little,
}

/// The maker's document a definition's table comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    pub title: String,
    pub edition: String,
}

/// The line settings a meter ships with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineDefaults {
    pub baud: u32,
    /// 'N', 'E' or 'O'.
    pub parity: char,
    pub stop_bits: u8,
    pub address: u8,
}

/// How the meter is read: defaults of its registers, and what it accepts in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSettings {
    pub function: Function,
    pub word_order: WordOrder,
    pub byte_order: ByteOrder,
    /// The most registers one request asks for.
    pub max_block: u16,
    /// The most unused registers read across to merge two runs into one request.
    pub max_gap: u16,
    /// Every request starts at an even address and asks for an even count (Eastron).
    pub even: bool,
    /// The block limits to read by after the meter refuses a request (exception 02 or 03).
    pub fallback: Fallback,
    /// Every integer register's largest value (all ones unsigned, 0x7FFF… signed) means the
    /// meter has no value there (ABB): the sample is left out of the reading.
    pub no_value_max: bool,
}

/// The block limits a meter is read by after it refuses a request with exception 02 or 03.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Half the limit at each refusal, down to the widest register, then one value per
    /// request.
    Halve,
    /// These limits in turn, each smaller than the one before (the first `len` of `limits`),
    /// and nothing smaller after them: a meter refusing the last is asked the same again at
    /// its next poll. None at all for a meter that always answers its block (the PZEM).
    Listed { limits: [u16; Fallback::MAX_LISTED], len: u8 },
}

impl Fallback {
    /// The most limits a `fallback` list gives.
    pub const MAX_LISTED: usize = 4;

    /// The limits listed (none for [`Fallback::Halve`]).
    pub fn listed(&self) -> Option<&[u16]> {
        match self {
            Fallback::Halve => None,
            Fallback::Listed { limits, len } => Some(&limits[..usize::from(*len)]),
        }
    }
}

impl ReadSettings {
    /// What a file's `[read]` table starts from: input registers, high word first, big-endian
    /// bytes, blocks up to the Modbus limit, gaps of up to 8 registers read across, any start.
    pub const DEFAULT: ReadSettings = ReadSettings {
        function: Function::Input,
        word_order: WordOrder::HighFirst,
        byte_order: ByteOrder::Big,
        max_block: format::MODBUS_MAX_READ,
        max_gap: 8,
        even: false,
        fallback: Fallback::Halve,
        no_value_max: false,
    };
}

/// What a probe register must hold for the meter to be this model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProbeTest {
    Equals(f64),
    Range { min: Option<f64>, max: Option<f64> },
}

/// A register read to recognise the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeRegister {
    pub function: Function,
    pub address: u16,
    pub ty: RegType,
    pub word_order: WordOrder,
    pub byte_order: ByteOrder,
    pub test: ProbeTest,
}

/// One value of the table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Register {
    pub function: Function,
    pub address: u16,
    pub ty: RegType,
    pub word_order: WordOrder,
    pub byte_order: ByteOrder,
    /// SI value = raw × scale + offset.
    pub scale: f64,
    pub offset: f64,
    /// `1 / scale` when that is a whole number (0.1 → 10): dividing by it gives the decimal
    /// value a meter means (2301 / 10 = 230.1, where 2301 × 0.1 = 230.10000000000002).
    pub divisor: Option<f64>,
    pub quantity: Quantity,
    /// None: the meter's own phase (a single-phase meter's `phase` setting).
    pub phase: Option<Phase>,
    /// Read every Nth poll (1: every poll).
    pub every: u32,
    /// The raw bits (the words put together by word and byte order) that mean the meter has
    /// no value here: the sample is left out of the reading rather than the reading refused.
    pub no_value: Option<u64>,
}

impl Register {
    /// Registers it takes.
    pub fn width(&self) -> u16 {
        self.ty.width()
    }

    /// The phase it reports on, for a meter on `meter_phase`.
    pub fn phase_on(&self, meter_phase: Phase) -> Phase {
        self.phase.unwrap_or(meter_phase)
    }

    /// Whether it is read on poll number `poll` (the first poll is 0).
    pub fn due(&self, poll: u64) -> bool {
        poll % u64::from(self.every.max(1)) == 0
    }
}

/// A meter model.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    pub name: String,
    pub maker: String,
    pub model: String,
    pub description: String,
    pub source: Source,
    /// 1 or 3.
    pub phases: u8,
    pub line: LineDefaults,
    pub read: ReadSettings,
    pub probe: Vec<ProbeRegister>,
    pub registers: Vec<Register>,
}

impl crate::reading::Described for Definition {
    fn name(&self) -> &str {
        &self.name
    }

    fn maker(&self) -> &str {
        &self.maker
    }

    fn product(&self) -> &str {
        &self.model
    }

    fn default_line(&self) -> (u32, char) {
        (self.line.baud, self.line.parity)
    }

    /// Every (phase, quantity) of the table once, in table order (the order a poll decodes
    /// them in), registers read only every Nth poll included.
    fn sample_set(&self, phase: Phase) -> Vec<(Phase, Quantity)> {
        let mut out: Vec<(Phase, Quantity)> = Vec::with_capacity(self.registers.len());
        for r in &self.registers {
            let pair = (r.phase_on(phase), r.quantity);
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
        out
    }
}

/// The definitions in use, one copy of each distinct one for the life of the process (a
/// configuration loaded again with the same files finds the same copies; an edited file adds
/// one).
static INTERNED: std::sync::Mutex<Vec<&'static Definition>> = std::sync::Mutex::new(Vec::new());

/// `def` as a model: its one copy, made if it is new.
pub fn intern(def: Definition) -> crate::reading::Model {
    let mut all = INTERNED.lock().unwrap_or_else(|p| p.into_inner());
    let found = all.iter().rev().find(|d| ***d == def).copied();
    let d = found.unwrap_or_else(|| {
        let d: &'static Definition = Box::leak(Box::new(def));
        all.push(d);
        d
    });
    crate::reading::Model::Defined(d)
}

/// The definition a model is read by, if it is a model defined by a definition (not a
/// hand-written one, nor one known only by name).
pub fn of(model: crate::reading::Model) -> Option<&'static Definition> {
    let d: &'static dyn std::any::Any = model.described()?;
    d.downcast_ref::<Definition>()
}

/// The definition a meter of `model` is read by: a defined model's own; for the PZEMs and the
/// RX380, whose names stay words of their own (configurations, the spool, `pmtr pzem`), the
/// built-in `pzem-016` and `rx380`, each parsed alone the first time it is needed; none for a
/// PMTR_001_SRV (its telemetry comes with its duties) or a model known only by name.
pub fn read_by(model: crate::reading::Model) -> Option<&'static Definition> {
    use crate::reading::Model;
    use std::sync::OnceLock;
    static PZEM: OnceLock<Option<Definition>> = OnceLock::new();
    static RX380: OnceLock<Option<Definition>> = OnceLock::new();
    let one = |cell: &'static OnceLock<Option<Definition>>, file: &str| {
        cell.get_or_init(|| {
            BUILT_IN.iter().find(|(f, _)| *f == file).and_then(|(f, text)| parse(text, f).ok())
        })
        .as_ref()
    };
    match model {
        Model::Defined(_) => of(model),
        Model::Rx380 => one(&RX380, "rx380.toml"),
        m if m.is_pzem() => one(&PZEM, "pzem-016.toml"),
        _ => None,
    }
}

/// The model a meter named `name` (case-insensitive) is read as, among `catalogue` (a whole
/// catalogue, or only the user files: the built-ins are then parsed only if no user file nor
/// hand-written model has the name): a user definition of that name, else a hand-written
/// model, else a built-in definition.
pub fn model_named(name: &str, catalogue: &[(Definition, Origin)]) -> Option<crate::reading::Model> {
    let def = |user: bool| {
        catalogue
            .iter()
            .find(|(d, o)| d.name.eq_ignore_ascii_case(name) && (*o != Origin::BuiltIn) == user)
            .map(|(d, _)| intern(d.clone()))
    };
    let built_in =
        || built_in_parsed().iter().find(|d| d.name.eq_ignore_ascii_case(name)).map(|d| intern(d.clone()));
    def(true).or_else(|| crate::reading::Model::parse(name)).or_else(|| def(false)).or_else(built_in)
}

/// The model named `name`: a hand-written one; else the definition of that name used last
/// (the one the configuration loaded), else the built-in of that name; else a model known
/// only by its name. For records that name their model (the spool).
pub fn resolve(name: &str) -> crate::reading::Model {
    if let Some(m) = crate::reading::Model::parse(name) {
        return m;
    }
    let used =
        INTERNED.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().find(|d| d.name == name).copied();
    if let Some(d) = used {
        return crate::reading::Model::Defined(d);
    }
    match built_in_parsed().iter().find(|d| d.name == name) {
        Some(d) => intern(d.clone()),
        None => crate::reading::Model::named(name),
    }
}

/// The built-in definitions, compiled into the binary: (file name, text).
pub const BUILT_IN: &[(&str, &str)] = &[
    ("sdm120.toml", include_str!("../library/sdm120.toml")),
    ("sdm230.toml", include_str!("../library/sdm230.toml")),
    ("sdm630.toml", include_str!("../library/sdm630.toml")),
    ("sdm72d.toml", include_str!("../library/sdm72d.toml")),
    ("sdm72d-m-v2.toml", include_str!("../library/sdm72d-m-v2.toml")),
    ("ddsu666.toml", include_str!("../library/ddsu666.toml")),
    ("dtsu666.toml", include_str!("../library/dtsu666.toml")),
    ("dds238.toml", include_str!("../library/dds238.toml")),
    ("orno-we514.toml", include_str!("../library/orno-we514.toml")),
    ("orno-we516.toml", include_str!("../library/orno-we516.toml")),
    ("abb-b23.toml", include_str!("../library/abb-b23.toml")),
    ("abb-b21.toml", include_str!("../library/abb-b21.toml")),
    ("pzem-016.toml", include_str!("../library/pzem-016.toml")),
    ("rx380.toml", include_str!("../library/rx380.toml")),
];

/// The built-in definitions, parsed. A built-in that does not load is a bug (a test loads
/// them all); it is left out rather than stopping anything.
pub fn built_in() -> Vec<Definition> {
    built_in_parsed().to_vec()
}

/// The built-in definitions, parsed once per process.
fn built_in_parsed() -> &'static [Definition] {
    static PARSED: std::sync::OnceLock<Vec<Definition>> = std::sync::OnceLock::new();
    PARSED.get_or_init(|| BUILT_IN.iter().filter_map(|(file, text)| parse(text, file).ok()).collect())
}

/// Where a definition of the catalogue comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    BuiltIn,
    /// A user file.
    File(PathBuf),
    /// A user file that replaces the built-in of the same name.
    Overrides(PathBuf),
}

/// The built-ins and the user files of `dir` (`*.toml`, in name order), a user file replacing
/// a built-in of the same name; with the errors of the user files that did not load. A
/// missing folder is no error (it holds no user files).
pub fn catalogue(dir: Option<&Path>) -> (Vec<(Definition, Origin)>, Vec<DefError>) {
    let (user, errors) = user_files(dir);
    let mut all: Vec<(Definition, Origin)> = built_in().into_iter().map(|d| (d, Origin::BuiltIn)).collect();
    for (d, origin) in user {
        match all.iter().position(|(b, _)| b.name == d.name) {
            Some(i) => all[i] = (d, origin),
            None => all.push((d, origin)),
        }
    }
    (all, errors)
}

/// The user files of `dir` alone (the built-ins are not parsed), each `Origin::File`, or
/// `Origin::Overrides` when a built-in has its name; with the errors of the files that did
/// not load, and of a second file with a name already taken.
pub fn user_files(dir: Option<&Path>) -> (Vec<(Definition, Origin)>, Vec<DefError>) {
    let mut all: Vec<(Definition, Origin)> = Vec::new();
    let mut errors = Vec::new();
    let Some(dir) = dir else { return (all, errors) };
    for (path, loaded) in load_dir(dir) {
        match loaded {
            Ok(d) if all.iter().any(|(u, _)| u.name == d.name) => errors.push(DefError::whole(
                &path.display().to_string(),
                format!("a second definition named `{}` (the first one is kept)", d.name),
            )),
            Ok(d) if is_built_in_name(&d.name) => all.push((d, Origin::Overrides(path))),
            Ok(d) => all.push((d, Origin::File(path))),
            Err(e) => errors.extend(e.0),
        }
    }
    (all, errors)
}

/// Whether a built-in definition is named `name` (each is in a file of its name).
fn is_built_in_name(name: &str) -> bool {
    BUILT_IN.iter().any(|(file, _)| file.strip_suffix(".toml") == Some(name))
}

/// Every `*.toml` file of `dir`, in name order, loaded.
pub fn load_dir(dir: &Path) -> Vec<(PathBuf, Result<Definition, DefErrors>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let loaded = load_file(&p);
            (p, loaded)
        })
        .collect()
}

/// One definition file.
pub fn load_file(path: &Path) -> Result<Definition, DefErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &file),
        Err(e) => Err(DefErrors(vec![DefError::whole(&file, format!("cannot read the file: {e}"))])),
    }
}

/// The definition named `name` (case-insensitive) among the built-ins and the files of `dir`.
pub fn find(name: &str, dir: Option<&Path>) -> Option<Definition> {
    catalogue(dir).0.into_iter().map(|(d, _)| d).find(|d| d.name.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests;
