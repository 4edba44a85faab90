//! The configuration loader: TOML text → [`Config`], or every error it has at once.
//!
//! The text is parsed with `toml`'s recoverable parser into a spanned tree, so a syntax error
//! does not hide the rest of the file: every key the parser could recover is still checked.
//! Each value is then deserialized on its own, with serde, from its spanned value, so that
//! every error carries the file, the line, the column and the key path, in the form
//! `FILE:LINE:COL: KEY: MESSAGE`:
//!
//! ```text
//! pmtr.toml:14:1: meter[1] "mainB".adress: unknown key (did you mean `address`?)
//! ```
//!
//! Elements of `[[bus]]` and `[[meter]]` are named by their position in their array, followed
//! by their name when it is known: `meter[2] "gen".address`, `bus[0].ports`.

mod email;
mod energy;
mod modbus_server;
mod neutral;
mod server;
mod sink;
mod status;
mod trigger;

use super::{Bus, BusKind, Config, Gateway, GpioBackend, LineSettings, Meter, Parity};
use crate::meter::Model;
use crate::reading::Phase;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

/// Every top-level key of the file. The loader reads `gateway`, `bus` and `meter` itself; any
/// other key listed here is accepted and left alone, for the subsystem that owns it to read.
/// A subsystem that adds a section adds its key here.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "gateway",
    "bus",
    "meter",
    "sink",
    "relay",
    "trigger",
    "alerts",
    "status",
    "mqtt",
    "neutral",
    "modbus_server",
    "energy",
    "tariff",
];

const GATEWAY_KEYS: &[&str] =
    &["name", "state_dir", "log_readings", "gpio", "control_socket", "health_interval", "clock_sync_wait"];
/// `gateway.clock_sync_wait`: the default, and the longest.
const DEFAULT_CLOCK_SYNC_WAIT: Duration = Duration::from_secs(600);
const CLOCK_SYNC_WAIT_MAX: Duration = Duration::from_secs(86_400);
/// `gateway.health_interval`: the default, and the limits of a duration.
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(60);
const HEALTH_INTERVAL_MIN: Duration = Duration::from_secs(1);
const HEALTH_INTERVAL_MAX: Duration = Duration::from_secs(3600);
const BUS_KEYS: &[&str] = &[
    "name",
    "port",
    "ports",
    "baud",
    "parity",
    "data_bits",
    "stop_bits",
    "timeout",
    "retries",
    "frame_gap",
    "max_backoff",
    "rescan",
    "kind",
    "host",
];
const METER_KEYS: &[&str] = &[
    "name",
    "model",
    "address",
    "bus",
    "poll",
    "phase",
    "unit",
    "writable",
    "multiplier",
    "time_sync",
    "push_actions",
    "action",
];

/// The baud rates a `[[bus]]` may use.
pub const BAUD_RATES: [u32; 9] = [1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200];

const FALLBACK_GATEWAY_NAME: &str = "pmtr";
const DEFAULT_STATE_DIR: &str = "/var/lib/pmtr";
const FALLBACK_BAUD: u32 = 9600;
const FALLBACK_PARITY: Parity = Parity::None;
const DEFAULT_DATA_BITS: u8 = 8;
const DEFAULT_STOP_BITS: u8 = 1;
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(300);
const MIN_TIMEOUT: Duration = Duration::from_millis(10);
const MAX_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RETRIES: u32 = 2;
const MAX_RETRIES: i64 = 10;
const MAX_FRAME_GAP: Duration = Duration::from_secs(1);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
const DEFAULT_RESCAN: Duration = Duration::from_secs(5);
/// The shortest `max_backoff` and `rescan`: anything shorter would spin.
const MIN_PERIOD: Duration = Duration::from_millis(100);
const DEFAULT_POLL: Duration = Duration::from_secs(1);
const MIN_POLL: Duration = Duration::from_millis(100);
/// The longest `poll`: once a day.
const MAX_POLL: Duration = Duration::from_secs(86_400);
/// The longest bus `max_backoff` and `rescan`: an hour.
const MAX_BUS_BACKOFF: Duration = Duration::from_secs(3600);
const MAX_RESCAN: Duration = Duration::from_secs(3600);
/// No duration key of the file may exceed this (a year), whatever its own maximum says: well
/// within what an `Instant` or a `Duration` product can hold.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);
/// A PMTR_001_SRV answers once per main loop (about 1.2 s): each is read every 5 s by default,
/// and never more often than every 2 s.
const DEFAULT_SERVER_POLL: Duration = Duration::from_secs(5);
const MIN_SERVER_POLL: Duration = Duration::from_secs(2);
/// A power-line request waits for the server's next loop and the modem's transit both ways.
const DEFAULT_POWER_LINE_TIMEOUT: Duration = Duration::from_secs(5);
const PZEM_GENERAL_ADDRESS: i64 = 0xF8;
/// The largest edit distance at which an unknown word gets a "did you mean".
const MAX_SUGGESTION_DISTANCE: usize = 2;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the file could not be read at all.
    pub line: usize,
    /// 1-based, in characters; 0 when the file could not be read at all.
    pub column: usize,
    /// The key path, e.g. `meter[2] "gen".address`; empty when the error is about the file.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem of a configuration file, sorted by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and validates a configuration file. A file that cannot be read gives one error at
/// line 0, column 0.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(src) => load_str(&src, &file),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file,
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }])),
    }
}

/// Validates a configuration. `file` is only used in the errors.
pub fn load_str(src: &str, file: &str) -> Result<Config, ConfigErrors> {
    let (root, syntax_errors) = DeTable::parse_recoverable(src);
    let root = root.into_inner();
    let mut l = Loader::new(src, file);
    l.syntax_errors(&root, &syntax_errors);
    let config = l.config(&root);
    let mut errors = l.errors;
    errors.sort_by_key(|e| (e.line, e.column));
    errors.dedup();
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Parses a duration: a decimal number and a unit, `ms`, `s`, `m` or `h` (`"500ms"`, `"5s"`,
/// `"1.5s"`, `"1m"`, `"1h"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "units: ms, s, m, h";
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty duration: write e.g. \"5s\" ({UNITS})"));
    }
    if t.starts_with('-') {
        return Err(format!("negative duration \"{s}\""));
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() || number == "." {
        return Err(format!("invalid duration \"{s}\": expected a number and a unit, e.g. \"5s\" ({UNITS})"));
    }
    let unit_nanos: u128 = match unit.trim_start() {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => {
            return Err(format!(
                "duration \"{s}\" has no unit: write \"{number}s\" or \"{number}ms\" ({UNITS})"
            ))
        }
        other => return Err(format!("unknown unit \"{other}\" in duration \"{s}\" ({UNITS})")),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if frac.contains('.') {
        return Err(format!("invalid number in duration \"{s}\""));
    }
    let overflow = || format!("duration \"{s}\" is too long");
    let mut nanos: u128 = 0;
    for d in int.bytes() {
        nanos =
            nanos.checked_mul(10).and_then(|n| n.checked_add(u128::from(d - b'0'))).ok_or_else(overflow)?;
    }
    nanos = nanos.checked_mul(unit_nanos).ok_or_else(overflow)?;
    // Fractional digits beyond the nanosecond are dropped.
    let mut scale = unit_nanos;
    for d in frac.bytes() {
        scale /= 10;
        nanos = nanos.checked_add(u128::from(d - b'0') * scale).ok_or_else(overflow)?;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| overflow())?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// A duration as a user writes it: `"500ms"`, `"10s"`, `"24h"`, `"90m"`; odd values as Rust
/// shows them (`"1.5s"`).
fn show(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    match (secs, nanos) {
        (0, n) if n % 1_000_000 == 0 => format!("{}ms", n / 1_000_000),
        (s, 0) if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        _ => format!("{d:?}"),
    }
}

type Value<'i> = Spanned<DeValue<'i>>;

/// Deserializes one value with serde.
fn de<T: DeserializeOwned>(v: &Value<'_>) -> Result<T, String> {
    T::deserialize(ValueDeserializer::from(v.clone())).map_err(|e| e.message().to_owned())
}

/// Where the lines start, and which are plain ASCII (whose columns are byte counts).
struct Lines {
    starts: Vec<usize>,
    ascii: Vec<bool>,
}

impl Lines {
    fn new(src: &str) -> Self {
        let starts: Vec<usize> =
            std::iter::once(0).chain(src.match_indices('\n').map(|(i, _)| i + 1)).collect();
        let ascii = starts
            .iter()
            .enumerate()
            .map(|(i, &start)| {
                src.as_bytes()[start..starts.get(i + 1).copied().unwrap_or(src.len())].is_ascii()
            })
            .collect();
        Lines { starts, ascii }
    }

    /// 1-based line and column (in characters) of a byte offset. Never panics: the offset is
    /// clamped to the text and moved back to a character boundary.
    fn line_col(&self, src: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(src.len());
        while !src.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0).min(offset);
        let column = if self.ascii.get(line - 1).copied().unwrap_or(false) {
            offset - start
        } else {
            src[start..offset].chars().count()
        };
        (line, column + 1)
    }
}

/// The closest candidate within [`MAX_SUGGESTION_DISTANCE`] edits (case-insensitive), if any.
/// Words over [`crate::spelling::LONGEST`] characters get none and cost nothing.
fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut steps = 0;
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        let Some(d) = crate::spelling::distance_within(word, c, MAX_SUGGESTION_DISTANCE, &mut steps) else {
            continue;
        };
        if d < c.chars().count() && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// `[A-Za-z0-9_-]+`: a TOML bare key, and what a meter name may be made of.
fn is_bare_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A key as written in a key path: bare when it can be, quoted otherwise.
fn key_text(k: &str) -> String {
    if is_bare_key(k) {
        k.to_owned()
    } else {
        format!("{k:?}")
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key_text(key)
    } else {
        format!("{prefix}.{}", key_text(key))
    }
}

/// `meter[2] "gen"`, or `meter[2]` while the element has no string `name`.
fn element_path(array: &str, index: usize, table: &DeTable<'_>) -> String {
    match table.get("name").and_then(|n| n.get_ref().as_str()) {
        Some(name) => format!("{array}[{index}] {name:?}"),
        None => format!("{array}[{index}]"),
    }
}

/// Every key and value of the tree with its key path, and the top-level sections (tables and
/// elements of arrays of tables, whose span is their header) with theirs.
#[derive(Default)]
struct Paths {
    spans: Vec<(Range<usize>, String)>,
    sections: Vec<(usize, String)>,
}

impl Paths {
    fn of(root: &DeTable<'_>) -> Self {
        let mut paths = Paths::default();
        paths.walk(root, "", 0);
        paths
    }

    fn walk(&mut self, table: &DeTable<'_>, prefix: &str, depth: usize) {
        for (k, v) in table.iter() {
            let path = join(prefix, k.get_ref());
            self.spans.push((k.span(), path.clone()));
            self.spans.push((v.span(), path.clone()));
            match v.get_ref() {
                DeValue::Table(t) => {
                    if depth == 0 {
                        self.sections.push((v.span().start, path.clone()));
                    }
                    self.walk(t, &path, depth + 1);
                }
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        match item.get_ref() {
                            DeValue::Table(t) => {
                                let path = element_path(&path, i, t);
                                self.spans.push((item.span(), path.clone()));
                                if depth == 0 {
                                    self.sections.push((item.span().start, path.clone()));
                                }
                                self.walk(t, &path, depth + 1);
                            }
                            _ => self.spans.push((item.span(), format!("{path}[{i}]"))),
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// The key paths of syntax errors: for each, the innermost key or value around it (end
/// included: an unterminated string ends where its error is), or else the section it is in
/// (with the key, for a duplicate key, which is not in the tree), or else `toml`.
///
/// One sweep over the spans, sorted, so that a file with thousands of errors stays fast: keys
/// and values nest or are disjoint, so the innermost span around a position is on top of a
/// stack of the spans open there.
fn locate(src: &str, root: &DeTable<'_>, errors: &[Range<usize>]) -> Vec<String> {
    let Paths { mut spans, mut sections } = Paths::of(root);
    spans.retain(|(s, _)| !s.is_empty());
    spans.sort_by_key(|(s, _)| (s.start, std::cmp::Reverse(s.end)));
    sections.sort_by_key(|(start, _)| *start);
    let mut order: Vec<usize> = (0..errors.len()).collect();
    order.sort_by_key(|&i| errors[i].start);
    let mut out = vec![String::new(); errors.len()];
    let (mut stack, mut next, mut sections_before) = (Vec::<usize>::new(), 0, 0);
    for i in order {
        let at = errors[i].start;
        while let Some((span, _)) = spans.get(next).filter(|(s, _)| s.start <= at) {
            while stack.last().is_some_and(|&top| spans[top].0.end < span.start) {
                stack.pop();
            }
            stack.push(next);
            next += 1;
        }
        while stack.last().is_some_and(|&top| spans[top].0.end < at) {
            stack.pop();
        }
        while sections.get(sections_before).is_some_and(|(start, _)| *start <= at) {
            sections_before += 1;
        }
        out[i] = if let Some(&top) = stack.last() {
            spans[top].1.clone()
        } else if let Some((_, path)) = sections_before.checked_sub(1).map(|s| &sections[s]) {
            match src.get(errors[i].clone()) {
                Some(k) if is_bare_key(k) => join(path, k),
                _ => path.clone(),
            }
        } else {
            "toml".to_owned()
        };
    }
    out
}

struct BusDraft {
    path: String,
    name: Option<(String, Range<usize>)>,
    ports: Option<Vec<String>>,
    baud: Option<u32>,
    parity: Option<Parity>,
    data_bits: Option<u8>,
    stop_bits: Option<u8>,
    timeout: Option<Duration>,
    retries: Option<u32>,
    frame_gap: Option<Duration>,
    max_backoff: Option<Duration>,
    rescan: Option<Duration>,
    kind: Option<(BusKind, Range<usize>)>,
}

struct MeterDraft {
    path: String,
    span: Range<usize>,
    name: Option<(String, Range<usize>)>,
    model: Option<Model>,
    address: Option<(u8, Range<usize>)>,
    /// The bus as written; after the cross-checks, the bus it is on (None if unknown).
    bus: Option<(String, Range<usize>)>,
    bus_written: bool,
    poll: Option<(Duration, Range<usize>)>,
    phase: Option<(Phase, Range<usize>)>,
    server: Option<crate::config::ServerSettings>,
    unit: Option<(u8, Range<usize>)>,
    writable: Vec<u16>,
}

struct Loader<'s> {
    src: &'s str,
    file: &'s str,
    lines: Lines,
    /// Spans of syntax errors, by start, each with the largest end so far: a value the parser
    /// had to guess is not checked further.
    damaged: Vec<(usize, usize)>,
    errors: Vec<ConfigError>,
    /// The `[[neutral]]` sets, once read: trigger expressions resolve their variables.
    neutral: Vec<super::NeutralSet>,
    /// A `[[neutral]]` table had an error (reported) and is missing from `neutral`: a trigger's
    /// `neutral_*` variable that finds no set is not reported a second time.
    neutral_incomplete: bool,
}

impl<'s> Loader<'s> {
    fn new(src: &'s str, file: &'s str) -> Self {
        Loader {
            src,
            file,
            lines: Lines::new(src),
            damaged: Vec::new(),
            errors: Vec::new(),
            neutral: Vec::new(),
            neutral_incomplete: false,
        }
    }

    /// Reports the parser's errors, and remembers where they are.
    fn syntax_errors(&mut self, root: &DeTable<'_>, errors: &[toml::de::Error]) {
        let spans: Vec<Range<usize>> = errors.iter().map(|e| e.span().unwrap_or(0..0)).collect();
        let keys = locate(self.src, root, &spans);
        for ((e, span), key) in errors.iter().zip(&spans).zip(keys) {
            self.error(span.clone(), key, e.message().trim().to_owned());
        }
        self.damaged = spans.iter().map(|s| (s.start, s.end)).collect();
        self.damaged.sort_unstable();
        let mut furthest = 0;
        for d in &mut self.damaged {
            furthest = furthest.max(d.1);
            d.1 = furthest;
        }
    }

    /// A path as written in the config file: relative paths are relative to the file's folder.
    fn relative_to_config(&self, name: &str) -> PathBuf {
        let p = Path::new(name);
        if p.is_relative() {
            Path::new(self.file).parent().unwrap_or(Path::new(".")).join(p)
        } else {
            p.to_path_buf()
        }
    }

    fn line(&self, offset: usize) -> usize {
        self.lines.line_col(self.src, offset).0
    }

    fn error(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = self.lines.line_col(self.src, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    /// A value with no span is a placeholder of the parser's recovery; one that touches a
    /// syntax error was guessed. Either way its syntax error has been reported.
    fn is_damaged(&self, v: &Value<'_>) -> bool {
        let s = v.span();
        let before = self.damaged.partition_point(|&(start, _)| start <= s.end);
        s.is_empty() || before.checked_sub(1).is_some_and(|i| self.damaged[i].1 >= s.start)
    }

    /// `integer 5`, `string "5s"`, `table`.
    fn describe(&self, v: &Value<'_>) -> String {
        let kind = v.get_ref().type_str();
        match self.src.get(v.span()) {
            Some(text) if !text.is_empty() && text.len() <= 40 && !text.contains('\n') => {
                format!("{kind} {text}")
            }
            _ => kind.to_owned(),
        }
    }

    /// A number, integer or float (`expected` names it in the error: "a number of volts").
    fn number(&mut self, v: &Value<'_>, key: &str, expected: &str) -> Option<f64> {
        if self.is_damaged(v) {
            return None;
        }
        match v.get_ref() {
            DeValue::Integer(_) => de::<i64>(v).ok().map(|n| n as f64),
            DeValue::Float(_) => de::<f64>(v).ok(),
            _ => {
                self.wrong_type(v, key, expected);
                None
            }
        }
    }

    fn wrong_type(&mut self, v: &Value<'_>, key: &str, expected: &str) {
        let found = self.describe(v);
        self.error(v.span(), key, format!("expected {expected}, found {found}"));
    }

    fn check_keys(&mut self, table: &DeTable<'_>, prefix: &str, allowed: &[&str]) {
        for k in table.keys() {
            let name: &str = k.get_ref();
            if allowed.contains(&name) || k.span().is_empty() {
                continue;
            }
            let message = match suggest(name, allowed.iter().copied()) {
                Some(s) => format!("unknown key (did you mean `{s}`?)"),
                None => format!("unknown key (expected one of: {})", allowed.join(", ")),
            };
            self.error(k.span(), join(prefix, name), message);
        }
    }

    fn string(&mut self, v: &Value<'_>, key: &str) -> Option<String> {
        if self.is_damaged(v) {
            return None;
        }
        if !v.get_ref().is_str() {
            self.wrong_type(v, key, "a string");
            return None;
        }
        match de::<String>(v) {
            Ok(s) => Some(s),
            Err(e) => {
                self.error(v.span(), key, e);
                None
            }
        }
    }

    fn non_empty_string(&mut self, v: &Value<'_>, key: &str) -> Option<String> {
        let s = self.string(v, key)?;
        if s.trim().is_empty() {
            self.error(v.span(), key, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, v: &Value<'_>, key: &str) -> Option<bool> {
        if self.is_damaged(v) {
            return None;
        }
        if !v.get_ref().is_bool() {
            self.wrong_type(v, key, "true or false");
            return None;
        }
        de::<bool>(v).map_err(|e| self.error(v.span(), key, e)).ok()
    }

    fn integer(&mut self, v: &Value<'_>, key: &str) -> Option<i64> {
        if self.is_damaged(v) {
            return None;
        }
        if !v.get_ref().is_integer() {
            self.wrong_type(v, key, "an integer");
            return None;
        }
        de::<i64>(v).map_err(|e| self.error(v.span(), key, e)).ok()
    }

    fn integer_in(&mut self, v: &Value<'_>, key: &str, range: RangeInclusive<i64>) -> Option<i64> {
        let n = self.integer(v, key)?;
        if !range.contains(&n) {
            self.error(
                v.span(),
                key,
                format!("{n} is out of range: must be {}..={}", range.start(), range.end()),
            );
            return None;
        }
        Some(n)
    }

    /// A name made of `[A-Za-z0-9_-]`: meter, bus and gateway names become tags, topic levels
    /// and CSV file names, where `/`, `..` or a space would escape or break them. `why` says
    /// where the name goes.
    fn name(&mut self, v: &Value<'_>, key: &str, why: &str) -> Option<String> {
        let name = self.non_empty_string(v, key)?;
        if is_bare_key(&name) {
            return Some(name);
        }
        self.error(
            v.span(),
            key,
            format!("invalid name {name:?}: use only letters, digits, `_` and `-` ({why})"),
        );
        None
    }

    /// A duration within `min..=max`. A bare number is rejected with the string to write
    /// instead, in the first unit among s, ms, m and h that puts it within the limits.
    ///
    /// Every duration key has a maximum (no key may leave it open): the daemon adds these
    /// durations to instants and multiplies back-offs by them, and a value like
    /// `"3000000000000000h"` would overflow there. The maxima are in the README's tables.
    fn duration_in(
        &mut self,
        v: &Value<'_>,
        key: &str,
        min: Option<Duration>,
        max: Duration,
    ) -> Option<Duration> {
        if self.is_damaged(v) {
            return None;
        }
        let max = Some(max.min(MAX_DURATION));
        let within = |d: Duration| min.is_none_or(|min| d >= min) && max.is_none_or(|max| d <= max);
        if matches!(v.get_ref(), DeValue::Integer(_) | DeValue::Float(_)) {
            let number = self.src.get(v.span()).unwrap_or_default().to_owned();
            let written = ["s", "ms", "m", "h"]
                .into_iter()
                .map(|unit| format!("{number}{unit}"))
                .find(|d| parse_duration(d).is_ok_and(within))
                .or_else(|| Some(format!("{number}s")).filter(|d| parse_duration(d).is_ok()))
                .unwrap_or_else(|| "5s".to_owned());
            let kind = v.get_ref().type_str();
            let message = format!(
                "found {kind} {number}: a duration is a string with a unit, write \"{written}\" \
                 (units: ms, s, m, h)"
            );
            self.error(v.span(), key, message);
            return None;
        }
        let s = self.string(v, key)?;
        let d = parse_duration(&s).map_err(|e| self.error(v.span(), key, e)).ok()?;
        let message = match (min, max) {
            _ if within(d) => return Some(d),
            (Some(min), Some(max)) => {
                format!("{} is out of range: must be {}..={}", show(d), show(min), show(max))
            }
            (None, Some(max)) => format!("{} is too long: must be at most {}", show(d), show(max)),
            (_, None) => return Some(d),
        };
        self.error(v.span(), key, message);
        None
    }

    /// The elements of a top-level array of tables (`[[bus]]`), with their index. None when
    /// the key is absent.
    fn elements<'t, 'i>(
        &mut self,
        root: &'t DeTable<'i>,
        key: &str,
    ) -> Option<Vec<(usize, &'t Value<'i>, &'t DeTable<'i>)>> {
        let v = root.get(key)?;
        let Some(items) = v.get_ref().as_array() else {
            if self.is_damaged(v) {
                return Some(Vec::new());
            }
            let message = if v.get_ref().is_table() {
                format!("expected an array of tables: write [[{key}]], not [{key}]")
            } else {
                format!("expected an array of tables [[{key}]], found {}", self.describe(v))
            };
            self.error(v.span(), key, message);
            return Some(Vec::new());
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref().as_table() {
                Some(t) => out.push((i, item, t)),
                None if self.is_damaged(item) => {}
                None => self.wrong_type(item, &format!("{key}[{i}]"), "a table"),
            }
        }
        Some(out)
    }

    fn config(&mut self, root: &DeTable<'_>) -> Option<Config> {
        self.check_keys(root, "", TOP_LEVEL_KEYS);

        let gateway = self.gateway(root.get("gateway"));
        let gateway_name = gateway.name.clone();

        let buses: Vec<BusDraft> = match self.elements(root, "bus") {
            Some(elements) => elements.into_iter().map(|(i, v, t)| self.bus(i, v, t)).collect(),
            None => Vec::new(),
        };

        if root.get("meter").is_none_or(|v| v.get_ref().as_array().is_some_and(|a| a.is_empty())) {
            self.error(0..0, "meter", "no [[meter]] declared");
        }
        let mut meters: Vec<MeterDraft> = match self.elements(root, "meter") {
            Some(elements) => elements.into_iter().map(|(i, v, t)| self.meter(i, v, t)).collect(),
            None => Vec::new(),
        };

        self.cross_check(&buses, &mut meters);
        if root.contains_key("modbus_server") {
            self.distinct_units(&meters);
        }
        let sinks = self.sinks(root, &gateway);
        // Triggers are checked against the meters as they will be (assemble fills defaults);
        // while a meter has an error, expressions are not checked (they would only repeat it).
        let mut config = if self.errors.is_empty() { self.assemble(gateway, buses, meters) } else { None };
        let neutral = self.neutral_sets(root, config.as_ref().map(|c| &c.meters[..]));
        self.neutral = neutral.clone();
        let (relays, triggers) = self.relays_and_triggers(root, config.as_ref().map(|c| &c.meters[..]));
        let (alerts, email) = self.alerts(root);
        let status = self.status(root);
        let mqtt = self.mqtt(root, &gateway_name);
        let modbus_server = self.modbus_server(root);
        let energy = self.energy(root, config.as_ref().map(|c| &c.meters[..]));
        if !self.errors.is_empty() {
            return None;
        }
        let mut config = config.take()?;
        config.sinks = sinks;
        config.relays = relays;
        config.triggers = triggers;
        config.email = email;
        config.alerts = alerts;
        config.status = status;
        config.mqtt = mqtt;
        config.neutral = neutral;
        config.modbus_server = modbus_server;
        config.energy = energy;
        Some(config)
    }

    fn gateway(&mut self, v: Option<&Value<'_>>) -> Gateway {
        let mut gateway = Gateway {
            name: String::new(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            log_readings: false,
            gpio: GpioBackend::Rppal,
            control_socket: PathBuf::new(),
            health_interval: Some(DEFAULT_HEALTH_INTERVAL),
            clock_sync_wait: DEFAULT_CLOCK_SYNC_WAIT,
        };
        let mut name = None;
        let mut socket = None;
        if let Some(v) = v {
            if let Some(t) = v.get_ref().as_table() {
                self.check_keys(t, "gateway", GATEWAY_KEYS);
                if let Some(v) = t.get("name") {
                    name = self.name(
                        v,
                        "gateway.name",
                        "it becomes a tag, an MQTT topic level and a CSV file name",
                    );
                }
                if let Some(dir) =
                    t.get("state_dir").and_then(|v| self.non_empty_string(v, "gateway.state_dir"))
                {
                    gateway.state_dir = PathBuf::from(dir);
                }
                if let Some(b) = t.get("log_readings").and_then(|v| self.boolean(v, "gateway.log_readings")) {
                    gateway.log_readings = b;
                }
                if let Some(v) = t.get("gpio") {
                    if let Some(s) = self.string(v, "gateway.gpio") {
                        match s.as_str() {
                            "rppal" => gateway.gpio = GpioBackend::Rppal,
                            "fake" => gateway.gpio = GpioBackend::Fake,
                            _ => self.error(
                                v.span(),
                                "gateway.gpio",
                                format!(
                                    "unknown GPIO backend {s:?}: \"rppal\" (the Pi's pins) or \"fake\" \
                                     (no hardware: levels go to the log and <state_dir>/fake-gpio.log)"
                                ),
                            ),
                        }
                    }
                }
                if let Some(path) =
                    t.get("control_socket").and_then(|v| self.non_empty_string(v, "gateway.control_socket"))
                {
                    socket = Some(PathBuf::from(path));
                }
                if let Some(v) = t.get("health_interval") {
                    if v.get_ref().as_str().is_some_and(|s| s.trim() == "off") {
                        gateway.health_interval = None;
                    } else if let Some(d) = self.duration_in(
                        v,
                        "gateway.health_interval",
                        Some(HEALTH_INTERVAL_MIN),
                        HEALTH_INTERVAL_MAX,
                    ) {
                        gateway.health_interval = Some(d);
                    }
                }
                if let Some(d) = t.get("clock_sync_wait").and_then(|v| {
                    self.duration_in(v, "gateway.clock_sync_wait", Some(Duration::ZERO), CLOCK_SYNC_WAIT_MAX)
                }) {
                    gateway.clock_sync_wait = d;
                }
            } else if !self.is_damaged(v) {
                self.wrong_type(v, "gateway", "a table [gateway]");
            }
        }
        gateway.name = name.unwrap_or_else(default_gateway_name);
        gateway.control_socket = socket.unwrap_or_else(|| gateway.state_dir.join("control.sock"));
        gateway
    }

    fn bus(&mut self, index: usize, element: &Value<'_>, t: &DeTable<'_>) -> BusDraft {
        let path = element_path("bus", index, t);
        self.check_keys(t, &path, BUS_KEYS);
        let key = |k: &str| format!("{path}.{k}");
        let mut bus = BusDraft {
            path: path.clone(),
            name: None,
            ports: None,
            baud: None,
            parity: None,
            data_bits: None,
            stop_bits: None,
            timeout: None,
            retries: None,
            frame_gap: None,
            max_backoff: None,
            rescan: None,
            kind: None,
        };
        match t.get("name") {
            Some(v) => {
                bus.name = self
                    .name(v, &key("name"), "it becomes a tag and, with `group_by = \"bus\"`, a CSV file name")
                    .map(|n| (n, v.span()))
            }
            None => self.error(element.span(), key("name"), "missing required key"),
        }
        // A bus over the network names a `host`, not serial ports.
        let network = t
            .get("kind")
            .and_then(|v| v.get_ref().as_str())
            .and_then(BusKind::parse)
            .filter(|k| k.is_network());
        if let Some(kind) = network {
            self.network_bus(element, t, &key, &mut bus, kind);
        } else if let Some((k, _)) = t.get_key_value("host") {
            self.error(
                k.span(),
                key("host"),
                "only for a bus of `kind = \"rtu-over-tcp\"` or `\"tcp\"`; a serial bus names its `port` or `ports`",
            );
        }
        match (t.get_key_value("port"), t.get_key_value("ports")) {
            _ if network.is_some() => {}
            (Some((pk, _)), Some((sk, _))) => {
                let (second, name) =
                    if pk.span().start > sk.span().start { (pk, "port") } else { (sk, "ports") };
                self.error(second.span(), key(name), "give either `port` or `ports`, not both");
            }
            (Some((_, v)), None) => {
                bus.ports = self.port_pattern(v, &key("port")).map(|p| vec![p]);
            }
            (None, Some((_, v))) => bus.ports = self.port_list(v, &key("ports")),
            (None, None) => self.error(
                element.span(),
                key("ports"),
                "missing required key (or `port` for a single one), e.g. ports = [\"/dev/ttyUSB*\"]",
            ),
        }
        if let Some(v) = t.get("baud") {
            if let Some(n) = self.integer(v, &key("baud")) {
                match u32::try_from(n).ok().filter(|b| BAUD_RATES.contains(b)) {
                    Some(b) => bus.baud = Some(b),
                    None => {
                        let rates: Vec<String> = BAUD_RATES.iter().map(u32::to_string).collect();
                        self.error(
                            v.span(),
                            key("baud"),
                            format!("unsupported baud rate {n}, expected one of {}", rates.join(", ")),
                        );
                    }
                }
            }
        }
        if let Some(v) = t.get("parity") {
            bus.parity = self.parity(v, &key("parity"));
        }
        if let Some(v) = t.get("data_bits") {
            bus.data_bits = self.one_of(v, &key("data_bits"), &[7, 8], "7 or 8");
        }
        if let Some(v) = t.get("stop_bits") {
            bus.stop_bits = self.one_of(v, &key("stop_bits"), &[1, 2], "1 or 2");
        }
        if let Some(v) = t.get("timeout") {
            bus.timeout = self.duration_in(v, &key("timeout"), Some(MIN_TIMEOUT), MAX_TIMEOUT);
        }
        if let Some(v) = t.get("retries") {
            bus.retries =
                self.integer_in(v, &key("retries"), 0..=MAX_RETRIES).and_then(|n| u32::try_from(n).ok());
        }
        if let Some(v) = t.get("frame_gap") {
            bus.frame_gap = self.duration_in(v, &key("frame_gap"), None, MAX_FRAME_GAP);
        }
        if let Some(v) = t.get("max_backoff") {
            bus.max_backoff = self.duration_in(v, &key("max_backoff"), Some(MIN_PERIOD), MAX_BUS_BACKOFF);
        }
        if let Some(v) = t.get("rescan") {
            bus.rescan = self.duration_in(v, &key("rescan"), Some(MIN_PERIOD), MAX_RESCAN);
        }
        if let Some(v) = t.get("kind") {
            if let Some(s) = self.string(v, &key("kind")) {
                match BusKind::parse(&s) {
                    Some(k) => bus.kind = Some((k, v.span())),
                    None => {
                        let hint = match s.to_ascii_lowercase().replace(['_', ' '], "-").as_str() {
                            "powerline" | "plc" | "power-line" => " (did you mean \"power-line\"?)",
                            "rs-485" | "rs485" | "modbus" | "rtu" => " (did you mean \"rs485\"?)",
                            "modbus-tcp" | "modbustcp" | "mbap" => " (did you mean \"tcp\"?)",
                            "rtu-tcp" | "rtuovertcp" | "rtu-over-ip" | "tcp-rtu" => {
                                " (did you mean \"rtu-over-tcp\"?)"
                            }
                            _ => "",
                        };
                        self.error(
                            v.span(),
                            key("kind"),
                            format!(
                                "unknown bus kind {s:?}: \"rs485\" (the default), \"power-line\" \
                                 (PMTR_001_SRV servers behind a power-line modem), \"rtu-over-tcp\" \
                                 (RTU frames through a network converter) or \"tcp\" (Modbus TCP){hint}"
                            ),
                        );
                    }
                }
            }
        }
        bus
    }

    /// The `host = "H:P"` of a bus over the network (its only "port"), and no serial ports.
    fn network_bus(
        &mut self,
        element: &Value<'_>,
        t: &DeTable<'_>,
        key: &dyn Fn(&str) -> String,
        bus: &mut BusDraft,
        kind: BusKind,
    ) {
        if kind == BusKind::Tcp {
            for k in ["baud", "parity", "data_bits", "stop_bits", "frame_gap"] {
                if let Some((k_span, _)) = t.get_key_value(k) {
                    self.error(
                        k_span.span(),
                        key(k),
                        "a Modbus TCP bus has no serial line (a gateway's serial side is set on the gateway)",
                    );
                }
            }
        }
        for k in ["port", "ports"] {
            if let Some((k_span, _)) = t.get_key_value(k) {
                self.error(
                    k_span.span(),
                    key(k),
                    "a bus over the network has no serial port: give its converter as `host = \"HOST:PORT\"`",
                );
            }
        }
        match t.get("host") {
            None => self.error(
                element.span(),
                key("host"),
                "missing required key, e.g. host = \"192.168.1.50:502\"",
            ),
            Some(v) => {
                if let Some(h) = self.non_empty_string(v, &key("host")) {
                    match super::check_host(&h) {
                        Ok(()) => bus.ports = Some(vec![h]),
                        Err(why) => self.error(v.span(), key("host"), why),
                    }
                }
            }
        }
    }

    /// A list of register numbers (0..=65535).
    fn register_list(&mut self, v: &Value<'_>, key: &str) -> Vec<u16> {
        if self.is_damaged(v) {
            return Vec::new();
        }
        let Some(items) = v.get_ref().as_array() else {
            self.wrong_type(v, key, "an array of register numbers, e.g. [1, 2]");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(n) = self.integer_in(item, &format!("{key}[{i}]"), 0..=65535) {
                out.push(n as u16);
            }
        }
        out
    }

    /// Every meter served by the Modbus TCP server needs its own unit id.
    fn distinct_units(&mut self, meters: &[MeterDraft]) {
        let mut seen: Vec<(u8, &str)> = Vec::new();
        for m in meters {
            let (Some((name, _)), Some(unit)) =
                (&m.name, m.unit.as_ref().map(|u| u.0).or(m.address.as_ref().map(|a| a.0)))
            else {
                continue;
            };
            if let Some((_, other)) = seen.iter().find(|(u, _)| *u == unit) {
                let span = m.unit.as_ref().map_or(m.span.clone(), |u| u.1.clone());
                let key = format!("{}.unit", m.path);
                self.error(
                    span,
                    key,
                    format!(
                        "unit {unit} on the Modbus TCP server is also meter {other:?}'s: give one of them its own \
                         `unit = N` (1..=247)"
                    ),
                );
            } else {
                seen.push((unit, name));
            }
        }
    }

    fn port_pattern(&mut self, v: &Value<'_>, key: &str) -> Option<String> {
        let p = self.non_empty_string(v, key)?;
        if let Err(e) = glob::Pattern::new(&p) {
            self.error(v.span(), key, format!("invalid glob pattern {p:?}: {e}"));
            return None;
        }
        Some(p)
    }

    fn port_list(&mut self, v: &Value<'_>, key: &str) -> Option<Vec<String>> {
        if self.is_damaged(v) {
            return None;
        }
        let Some(items) = v.get_ref().as_array() else {
            let message = if v.get_ref().is_str() {
                "an array of strings (or use `port` for one)"
            } else {
                "an array of strings"
            };
            self.wrong_type(v, key, message);
            return None;
        };
        if items.is_empty() {
            self.error(v.span(), key, "must not be empty: give at least one port path or pattern");
            return None;
        }
        let mut ports = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.port_pattern(item, &format!("{key}[{i}]")) {
                Some(p) => ports.push(p),
                None => ok = false,
            }
        }
        ok.then_some(ports)
    }

    fn parity(&mut self, v: &Value<'_>, key: &str) -> Option<Parity> {
        if self.is_damaged(v) {
            return None;
        }
        if !v.get_ref().is_str() {
            self.wrong_type(v, key, "\"none\", \"even\" or \"odd\"");
            return None;
        }
        match de::<Parity>(v) {
            Ok(p) => Some(p),
            Err(_) => {
                let s = v.get_ref().as_str().unwrap_or_default();
                let words = ["none", "even", "odd"];
                let hint = match s.to_ascii_lowercase().as_str() {
                    "n" => Some("none"),
                    "e" => Some("even"),
                    "o" => Some("odd"),
                    _ => suggest(s, words),
                };
                let mut message = format!("unknown parity {s:?}, expected \"none\", \"even\" or \"odd\"");
                if let Some(h) = hint {
                    message.push_str(&format!(" (did you mean \"{h}\"?)"));
                }
                self.error(v.span(), key, message);
                None
            }
        }
    }

    fn one_of(&mut self, v: &Value<'_>, key: &str, allowed: &[u8], text: &str) -> Option<u8> {
        let n = self.integer(v, key)?;
        match u8::try_from(n).ok().filter(|n| allowed.contains(n)) {
            Some(n) => Some(n),
            None => {
                self.error(v.span(), key, format!("{n} is not supported: must be {text}"));
                None
            }
        }
    }

    fn meter(&mut self, index: usize, element: &Value<'_>, t: &DeTable<'_>) -> MeterDraft {
        let path = element_path("meter", index, t);
        self.check_keys(t, &path, METER_KEYS);
        let key = |k: &str| format!("{path}.{k}");
        let mut meter = MeterDraft {
            path: path.clone(),
            span: element.span(),
            name: None,
            model: None,
            address: None,
            bus: None,
            bus_written: t.contains_key("bus"),
            poll: None,
            phase: None,
            server: None,
            unit: None,
            writable: Vec::new(),
        };
        for required in ["name", "model", "address"] {
            if !t.contains_key(required) {
                self.error(element.span(), key(required), "missing required key");
            }
        }
        if let Some(v) = t.get("name") {
            meter.name = self
                .name(v, &key("name"), "it becomes a tag and an expression prefix")
                .map(|n| (n, v.span()));
        }
        if let Some(v) = t.get("model") {
            if let Some(s) = self.string(v, &key("model")) {
                meter.model = Model::parse(&s);
                if meter.model.is_none() {
                    let names: Vec<&str> = Model::ALL.iter().map(|m| m.name()).collect();
                    let mut message = format!("unknown model {s:?}, expected one of: {}", names.join(", "));
                    if let Some(h) = suggest(&s, names.iter().copied()) {
                        message.push_str(&format!(" (did you mean `{h}`?)"));
                    }
                    self.error(v.span(), key("model"), message);
                }
            }
        }
        if let Some(v) = t.get("address") {
            if let Some(n) = self.integer(v, &key("address")) {
                match n {
                    1..=247 => meter.address = Some((n as u8, v.span())),
                    0 => self.error(
                        v.span(),
                        key("address"),
                        "0 is the broadcast address, slaves never answer: use 1..=247",
                    ),
                    PZEM_GENERAL_ADDRESS => self.error(
                        v.span(),
                        key("address"),
                        "0xF8 is the PZEM general address, answered by every PZEM: only for set-up with one \
                         device, use `pmtr pzem set-address`",
                    ),
                    _ => self.error(
                        v.span(),
                        key("address"),
                        format!("{n} is not a slave address: use 1..=247"),
                    ),
                }
            }
        }
        if let Some(v) = t.get("bus") {
            meter.bus = self.non_empty_string(v, &key("bus")).map(|b| (b, v.span()));
        }
        if let Some(v) = t.get("poll") {
            let min = if meter.model == Some(Model::PmtrSrv) { MIN_SERVER_POLL } else { MIN_POLL };
            meter.poll = self.duration_in(v, &key("poll"), Some(min), MAX_POLL).map(|d| (d, v.span()));
        }
        if meter.model == Some(Model::PmtrSrv) {
            meter.server = Some(self.server(&path, t));
        } else if meter.model.is_some() {
            for k in server::SERVER_KEYS {
                if let Some((kk, _)) = t.get_key_value(*k) {
                    self.error(
                        kk.span(),
                        key(k),
                        format!("`{k}` is only for PMTR_001_SRV servers (`model = \"pmtr-srv\"`)"),
                    );
                }
            }
        }
        if let Some(v) = t.get("unit") {
            meter.unit = self.integer_in(v, &key("unit"), 1..=247).map(|n| (n as u8, v.span()));
        }
        if let Some(v) = t.get("writable") {
            meter.writable = self.register_list(v, &key("writable"));
        }
        if let Some(v) = t.get("phase") {
            if let Some(s) = self.string(v, &key("phase")) {
                let phase = match s.to_ascii_uppercase().as_str() {
                    "L1" => Some(Phase::L1),
                    "L2" => Some(Phase::L2),
                    "L3" => Some(Phase::L3),
                    _ => None,
                };
                match phase {
                    Some(p) => meter.phase = Some((p, v.span())),
                    None => self.error(
                        v.span(),
                        key("phase"),
                        format!("unknown phase {s:?}, expected \"L1\", \"L2\" or \"L3\""),
                    ),
                }
            }
        }
        if let (Some(model), Some((_, span))) = (meter.model, &meter.phase) {
            if !model.is_pzem() {
                self.error(
                    span.clone(),
                    key("phase"),
                    format!(
                        "`phase` is only for single-phase PZEM meters; an {model} measures all three \
                         phases: remove this key"
                    ),
                );
            }
        }
        meter
    }

    fn cross_check(&mut self, buses: &[BusDraft], meters: &mut [MeterDraft]) {
        let mut bus_names: HashMap<&str, &BusDraft> = HashMap::new();
        for b in buses {
            let Some((name, span)) = &b.name else { continue };
            if let Some(first) = bus_names.get(name.as_str()) {
                let line = first.name.as_ref().map_or(0, |(_, s)| self.line(s.start));
                let message =
                    format!("duplicate bus name {name:?}: already used by {} at line {line}", first.path);
                self.error(span.clone(), format!("{}.name", b.path), message);
            } else {
                bus_names.insert(name, b);
            }
        }
        let declared: Vec<String> =
            buses.iter().filter_map(|b| b.name.as_ref()).map(|(n, _)| format!("{n:?}")).collect();

        let mut meter_names: HashMap<String, (String, usize)> = HashMap::new();
        let mut addresses: HashMap<(String, u8), (String, usize)> = HashMap::new();
        for m in meters.iter_mut() {
            if let Some((name, span)) = &m.name {
                if let Some((path, line)) = meter_names.get(name) {
                    let message =
                        format!("duplicate meter name {name:?}: already used by {path} at line {line}");
                    self.error(span.clone(), format!("{}.name", m.path), message);
                } else {
                    meter_names.insert(name.clone(), (m.path.clone(), self.line(span.start)));
                }
            }

            // Resolve the bus.
            // A bus without a valid name (already reported) might be the one meant.
            let all_named = buses.iter().all(|b| b.name.is_some());
            match &m.bus {
                Some((bus, span)) if !bus_names.contains_key(bus.as_str()) && all_named => {
                    let message = if buses.is_empty() {
                        format!("unknown bus {bus:?}: no [[bus]] is declared")
                    } else {
                        let mut message = format!("unknown bus {bus:?}");
                        if let Some(s) = suggest(bus, bus_names.keys().copied()) {
                            message.push_str(&format!(" (did you mean {s:?}?)"));
                        }
                        message.push_str(&format!("; declared: {}", declared.join(", ")));
                        message
                    };
                    self.error(span.clone(), format!("{}.bus", m.path), message);
                    m.bus = None;
                }
                Some((bus, _)) if !bus_names.contains_key(bus.as_str()) => m.bus = None,
                Some(_) => {}
                None if m.bus_written => {}
                None => match buses {
                    [] => self.error(
                        m.span.clone(),
                        format!("{}.bus", m.path),
                        "missing required key: no [[bus]] is declared",
                    ),
                    [only] => m.bus = only.name.clone(),
                    _ => self.error(
                        m.span.clone(),
                        format!("{}.bus", m.path),
                        format!(
                            "missing required key: there are {} buses ({})",
                            buses.len(),
                            declared.join(", ")
                        ),
                    ),
                },
            }

            let kind =
                m.bus.as_ref().and_then(|(b, _)| bus_names.get(b.as_str())).and_then(|b| b.kind.clone());
            if let (Some((BusKind::PowerLine, kind_span)), Some(model)) = (kind, m.model) {
                if model != Model::PmtrSrv {
                    let line = self.line(kind_span.start);
                    self.error(
                        m.span.clone(),
                        format!("{}.model", m.path),
                        format!(
                            "a {model} cannot be reached on a power-line bus (line {line}): only PMTR_001_SRV \
                             servers (`model = \"pmtr-srv\"`) answer behind the modem; give it an RS-485 bus"
                        ),
                    );
                }
            }
            if let (Some((bus, _)), Some((address, span))) = (&m.bus, &m.address) {
                let line = self.line(span.start);
                match addresses.get(&(bus.clone(), *address)) {
                    Some((first, first_line)) => {
                        let message = format!(
                            "address {address} is already used on bus {bus:?} by {first} (line {first_line})"
                        );
                        self.error(span.clone(), format!("{}.address", m.path), message);
                    }
                    None => {
                        addresses.insert((bus.clone(), *address), (m.path.clone(), line));
                    }
                }
            }
        }
    }

    fn assemble(
        &mut self,
        gateway: Gateway,
        buses: Vec<BusDraft>,
        meters: Vec<MeterDraft>,
    ) -> Option<Config> {
        let mut config = Config {
            gateway,
            buses: Vec::new(),
            meters: Vec::new(),
            sinks: Vec::new(),
            relays: Vec::new(),
            triggers: Vec::new(),
            email: None,
            alerts: Default::default(),
            status: Default::default(),
            mqtt: None,
            modbus_server: None,
            neutral: Vec::new(),
            energy: Default::default(),
        };
        for m in meters {
            let (Some((name, _)), Some(model), Some((address, _)), Some((bus, _))) =
                (m.name, m.model, m.address, m.bus)
            else {
                self.error(m.span, m.path, "internal error: incomplete meter");
                return None;
            };
            config.meters.push(Meter {
                name,
                model,
                address,
                bus,
                poll: m.poll.map(|(d, _)| d).unwrap_or(if model == Model::PmtrSrv {
                    DEFAULT_SERVER_POLL
                } else {
                    DEFAULT_POLL
                }),
                server: m.server,
                phase: m.phase.map_or(Phase::L1, |(p, _)| p),
                unit: m.unit.map(|(u, _)| u),
                writable: m.writable,
            });
        }
        for b in buses {
            let (Some((name, _)), Some(ports)) = (b.name, b.ports) else {
                self.error(0..0, b.path, "internal error: incomplete bus");
                return None;
            };
            let models: Vec<Model> = config.meters_on(&name).map(|m| m.model).collect();
            let kind = b.kind.map_or(BusKind::Rs485, |(k, _)| k);
            let baud = b.baud.or_else(|| agreed(&models, |m| m.default_line().0)).unwrap_or(FALLBACK_BAUD);
            let parity = b
                .parity
                .or_else(|| agreed(&models, |m| parity_of(m.default_line().1)))
                .unwrap_or(FALLBACK_PARITY);
            config.buses.push(Bus {
                name,
                ports,
                line: LineSettings {
                    baud,
                    data_bits: b.data_bits.unwrap_or(DEFAULT_DATA_BITS),
                    parity,
                    stop_bits: b.stop_bits.unwrap_or(DEFAULT_STOP_BITS),
                },
                timeout: b.timeout.unwrap_or(match kind {
                    BusKind::PowerLine => DEFAULT_POWER_LINE_TIMEOUT,
                    BusKind::Rs485 | BusKind::RtuOverTcp | BusKind::Tcp => DEFAULT_TIMEOUT,
                }),
                kind,
                retries: b.retries.unwrap_or(DEFAULT_RETRIES),
                frame_gap: b.frame_gap,
                max_backoff: b.max_backoff.unwrap_or(DEFAULT_MAX_BACKOFF),
                rescan: b.rescan.unwrap_or(DEFAULT_RESCAN),
            });
        }
        Some(config)
    }
}

/// What every model says, if they all say the same.
fn agreed<T: PartialEq>(models: &[Model], f: impl Fn(Model) -> T) -> Option<T> {
    let first = f(*models.first()?);
    models.iter().all(|&m| f(m) == first).then_some(first)
}

/// The parity letter of [`Model::default_line`].
fn parity_of(letter: char) -> Parity {
    match letter {
        'E' => Parity::Even,
        'O' => Parity::Odd,
        _ => Parity::None,
    }
}

/// The host name from `/etc/hostname`, or `pmtr`.
fn default_gateway_name() -> String {
    gateway_name_of_host(std::fs::read_to_string("/etc/hostname").ok().as_deref())
}

/// The first label of a host name, as a valid gateway name (letters, digits, `_` and `-`), or
/// `pmtr` when nothing is left.
fn gateway_name_of_host(hostname: Option<&str>) -> String {
    hostname
        .and_then(|s| s.lines().next())
        .and_then(|l| l.trim().split('.').next())
        .map(|l| {
            l.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| FALLBACK_GATEWAY_NAME.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::Level;

    const EXAMPLE: &str = include_str!("../../config/pmtr.toml");

    fn errors(src: &str) -> Vec<String> {
        match load_str(src, "t.toml") {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn two_actions_of_one_server_on_one_pin_are_refused_naming_both() {
        let text = r#"
[[bus]]
name = "plc"
port = "/dev/ttyS0"
kind = "power-line"
[[meter]]
name = "panel"
model = "pmtr-srv"
address = 5
[[meter.action]]
name = "overvoltage"
when = "L1U > 253"
pins = [22]
level = "low"
[[meter.action]]
when = "L1I > 16"
pins = [23, 22]
level = "low"
"#;
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("t.toml:17:13:"), "{}", e[0]);
        assert!(
            e[0].contains("action[1].pins[1]: pin 22 is also driven by action[0] \"overvoltage\""),
            "{}",
            e[0]
        );
        assert!(e[0].contains("action[1] (when = \"L1I > 16\")"), "{}", e[0]);
        assert!(e[0].contains("own pins") && e[0].contains("`||`"), "{}", e[0]);
        // Different pins, or the same pin on another server: accepted.
        assert!(errors(&text.replace("pins = [23, 22]", "pins = [23]")).is_empty());
    }

    #[test]
    fn the_example_loads() {
        let config = load_str(EXAMPLE, "pmtr.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.meters.len(), 3);
        let names: Vec<&str> = config.meters.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["mainA", "mainB", "gen"]);
        let addresses: Vec<u8> = config.meters.iter().map(|m| m.address).collect();
        assert_eq!(addresses, [4, 5, 6]);
        assert!(config.meters.iter().all(|m| m.model == Model::Pzem016 && m.poll == Duration::from_secs(5)));
        let house = config.bus("house").unwrap();
        assert_eq!(house.ports, ["/dev/ttyUSB*"]);
        assert_eq!(house.line.to_string(), "9600 8N1");
    }

    /// The example with the commented-out TOML between the line containing `from` and the one
    /// containing `until` uncommented: each `# code` line there becomes `rewrite(code)`, or stays
    /// commented when that is None.
    fn uncommented(from: &str, until: &str, rewrite: impl Fn(&str) -> Option<String>) -> String {
        let mut out = String::new();
        let mut in_block = false;
        for line in EXAMPLE.lines() {
            if line.contains(from) {
                in_block = true;
            }
            if line.contains(until) {
                in_block = false;
            }
            match line.strip_prefix("# ").filter(|_| in_block).and_then(&rewrite) {
                Some(code) => out.push_str(&code),
                None => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn the_commented_out_sink_examples_load_too() {
        let out =
            uncommented("[[sink]]: where readings are written", "Relays and triggers: relays", |code| {
                if code.contains("password_file") || code.starts_with("[[sink]]:") {
                    None
                } else if code.starts_with("token_file") {
                    Some("token = \"x\"".into())
                } else {
                    (code.starts_with("[[") || code.contains(" = ")).then(|| code.into())
                }
            });
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        let kinds: Vec<&str> = config.sinks.iter().map(|s| s.kind.type_name()).collect();
        assert_eq!(kinds, ["influxdb1", "influxdb2", "csv"]);
        let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["influx", "influx2", "csv"]);
    }

    #[test]
    fn the_commented_out_relay_and_trigger_load_too() {
        let out = uncommented("Relays and triggers: relays", "[alerts.email]: alert mail", |code| {
            (code.starts_with("[[") || code.contains(" = ")).then(|| code.into())
        });
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(config.gateway.gpio, crate::config::GpioBackend::Rppal);
        let r = &config.relays[0];
        assert_eq!((r.name.as_str(), r.pin, r.active_low, r.default), ("water-heater", 17, true, Level::On));
        let t = &config.triggers[0];
        assert_eq!(
            (t.name.as_str(), t.level, t.meters.clone()),
            ("heater-guard", Level::Off, vec!["mainA".to_owned()])
        );
        assert_eq!(
            (t.hold, t.recovery, t.average),
            (Duration::from_secs(5), Duration::from_secs(120), Some(Duration::from_secs(10)))
        );
    }

    #[test]
    fn the_commented_out_email_block_loads_too() {
        let out = uncommented("[alerts.email]: alert mail", "[status]: the local HTTP API", |code| {
            // The files it names do not exist here.
            if code.starts_with("password_file") {
                Some("password = \"x\"".into())
            } else if code.starts_with("ca_file") {
                None
            } else {
                (code == "[alerts.email]" || code == "[alerts]" || code.contains(" = ")).then(|| code.into())
            }
        });
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        let a = &config.alerts;
        assert_eq!(
            (a.digest, a.min_interval, a.max_per_hour),
            (Duration::from_secs(30), Duration::from_secs(300), 20)
        );
        assert_eq!((a.spool_mark, a.queue_max, a.kinds.len()), (80, 1000, 12));
        let boss = a.recipients(crate::alert::policy::AlertKind::TriggerTripped, &[]);
        assert_eq!(boss, ["ops@example.org", "boss@example.org"]);
        let e = config.email.expect("[alerts.email]");
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("smtp.example.org", 587, crate::config::EmailTls::Starttls)
        );
        assert_eq!(
            (e.username.as_deref(), e.password.as_ref().map(crate::config::Secret::expose)),
            (Some("gateway@example.org"), Some("x"))
        );
        assert_eq!(
            (e.from.as_str(), e.to.clone()),
            ("pmtr <gateway@example.org>", vec!["ops@example.org".to_owned()])
        );
        assert_eq!((e.subject_prefix.as_str(), e.timeout), ("[pmtr]", Duration::from_secs(30)));
    }

    #[test]
    fn the_commented_out_power_line_block_loads_too() {
        let out = uncommented(
            "PMTR_001_SRV servers behind a power-line modem",
            "[[sink]]: where readings are written",
            |code| (code.starts_with('[') || code.contains(" = ")).then(|| code.into()),
        );
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        let m = config.meter("panel-1").unwrap();
        assert_eq!(config.bus(&m.bus).unwrap().kind, BusKind::PowerLine);
        let action = &m.server.as_ref().unwrap().actions[0];
        assert_eq!(action.firmware_text, "L1U > 2530 || L2U > 2530 || L3U > 2530");
        assert_eq!(
            (action.pins.as_slice(), action.level_high, action.recovery),
            (&[22u8][..], false, Duration::from_secs(300))
        );
    }

    #[test]
    fn the_commented_out_modbus_server_block_loads_too() {
        let out = uncommented(
            "[modbus_server]: a Modbus TCP server",
            "[energy] and [[tariff]]: energy per day",
            |code| (code == "[modbus_server]" || code.contains(" = ")).then(|| code.into()),
        );
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        let s = config.modbus_server.expect("[modbus_server]");
        assert_eq!(s.listen.to_string(), "127.0.0.1:1502");
        assert_eq!(s.allow.iter().map(ToString::to_string).collect::<Vec<_>>(), ["192.168.1.0/24"]);
        assert_eq!(
            (s.max_age, s.max_connections, s.requests_per_second, s.queue),
            (Duration::from_secs(10), 16, 1000, 4)
        );
    }

    #[test]
    fn the_commented_out_converter_block_loads_too() {
        let out = uncommented(
            "Meters behind a network converter",
            "PMTR_001_SRV servers behind a power-line modem",
            |code| (code.starts_with('[') || code.contains(" = ")).then(|| code.into()),
        );
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        let bus = config.bus(&config.meter("ev").unwrap().bus).unwrap();
        assert_eq!(
            (bus.kind, bus.ports.as_slice()),
            (BusKind::RtuOverTcp, &["192.168.1.50:8899".to_owned()][..])
        );
        assert_eq!(bus.timeout, Duration::from_millis(500));
        let lan = config.bus(&config.meter("heat-pump").unwrap().bus).unwrap();
        assert_eq!(lan.kind, BusKind::Tcp);
    }

    #[test]
    fn the_commented_out_rx380_block_loads_too() {
        // Uncomment every line that is commented-out TOML in the RX380 block.
        let out = uncommented("RX380 three-phase meter", "[[sink]]: where readings are written", |code| {
            (code.starts_with('[') || code.contains(" = ")).then(|| code.into())
        });
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        let rx = config.meter("rx380").unwrap();
        assert_eq!((rx.model, rx.address, rx.poll), (Model::Rx380, 1, Duration::from_secs(10)));
        assert_eq!(config.bus(&rx.bus).unwrap().line.to_string(), "19200 8E1");
    }

    #[test]
    fn the_commented_out_energy_block_loads() {
        let out = uncommented(
            "[energy] and [[tariff]]: energy per day",
            "[[neutral]]: a three-phase supply",
            |code| {
                (!code.contains("]]:") && (code.starts_with('[') || code.contains(" = ")))
                    .then(|| code.into())
            },
        );
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(config.energy.timezone.as_deref(), Some("America/Chicago"));
        let t = &config.energy.tariffs[0];
        assert_eq!((t.name.as_str(), t.price, t.standing_charge, t.rates.len()), ("utility", 0.16, 0.35, 2));
        assert_eq!((t.rates[0].from, t.rates[0].to, t.rates[1].price), (22, 6, 0.11));
        assert_eq!(t.meters, ["mainA", "mainB"]);
    }

    #[test]
    fn the_commented_out_neutral_sets_load_with_the_meters_they_name() {
        let meters = uncommented("RX380 three-phase meter", "[[sink]]: where readings are written", |code| {
            (code.starts_with('[') || code.contains(" = ")).then(|| code.into())
        });
        let neutral = uncommented("[[neutral]]: a three-phase supply", "no such line", |code| {
            (!code.contains("]]:") && (code.starts_with('[') || code.contains(" = "))).then(|| code.into())
        });
        let start = neutral.find("# [[neutral]]: a three-phase supply").unwrap();
        let out = format!("{meters}\n{}", &neutral[start..]);
        let config = load_str(&out, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{out}"));
        let sets: Vec<(&str, Vec<&str>, f64, f64)> =
            config.neutral.iter().map(|n| (n.name.as_str(), n.meters(), n.nominal, n.shift)).collect();
        assert_eq!(sets, [("supply", vec!["rx380"], 230.0, 20.0), ("panel", vec!["panel-1"], 230.0, 20.0)]);
        assert_eq!(config.neutral[0].sensitivity, crate::neutral::Sensitivity::Normal);
    }

    #[test]
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("5s", Duration::from_secs(5)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("1.5s", Duration::from_millis(1500)),
            ("0.25ms", Duration::from_micros(250)),
            (" 10 s ", Duration::from_secs(10)),
            ("0s", Duration::ZERO),
        ];
        for (s, d) in ok {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
        assert_eq!(parse_duration("2.s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        for bad in
            ["", "s", "5", "5sec", "-5s", "1.2.3s", "5 x", "1e3s", "ms", ".s", "99999999999999999999999h"]
        {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_duration("5").unwrap_err().contains("\"5s\""));
        assert!(parse_duration("5sec").unwrap_err().contains("units: ms, s, m, h"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_durations_allowed_do_not_overflow_the_bus_schedule() {
        let src = "[[bus]]\nname = \"b\"\nport = \"/dev/x\"\nmax_backoff = \"1h\"\nrescan = \"1h\"\n\
                   [[meter]]\nname = \"m\"\nmodel = \"rx380\"\naddress = 1\npoll = \"24h\"\n";
        let c = load_str(src, "t.toml").unwrap();
        let (bus, meter) = (&c.buses[0], &c.meters[0]);
        let t0 = tokio::time::Instant::now();
        // The phase of the last of 247 meters, and a thousand failures in a row.
        let phase = meter.poll * 246 / 247;
        let mut s = crate::bus::schedule::Schedule::new(meter.poll, bus.max_backoff, t0).with_phase(phase);
        for _ in 0..1000 {
            s.failed(t0);
        }
        assert_eq!(s.due(), t0 + meter.poll, "the back-off is capped by max_backoff, at least poll");
        s.succeeded(t0);
        assert_eq!(s.due(), t0 + 2 * meter.poll + phase);
    }

    #[test]
    fn no_duration_key_accepts_more_than_a_year() {
        // Every key goes through `duration_in`, which caps its maximum at MAX_DURATION.
        for (key, table) in [
            ("max_backoff", "[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n"),
            ("health_interval", "[gateway]\n"),
        ] {
            let src = format!("{table}{key} = \"3000000000000000h\"\n");
            let e = errors(&src);
            assert!(e.iter().any(|e| e.contains(key) && e.contains("out of range")), "{e:?}");
        }
        assert!(MAX_DURATION.as_secs().checked_mul(1 << 16).is_some());
    }

    #[test]
    fn a_gateway_named_after_its_host_is_a_valid_name() {
        assert_eq!(gateway_name_of_host(Some("house-pi\n")), "house-pi");
        assert_eq!(gateway_name_of_host(Some("pi.example.org\n")), "pi");
        assert_eq!(gateway_name_of_host(Some("../../x y\n")), "pmtr");
        assert_eq!(gateway_name_of_host(Some("a b/c\n")), "abc");
        assert_eq!(gateway_name_of_host(Some("")), "pmtr");
        assert_eq!(gateway_name_of_host(None), "pmtr");
        for h in ["house-pi", "pi.example.org", "a b/c", "", "../.."] {
            assert!(is_bare_key(&gateway_name_of_host(Some(h))), "{h:?}");
        }
    }

    #[test]
    fn bare_integer_durations_suggest_a_string() {
        let src = "[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n[[meter]]\nname = \"m\"\nmodel = \"rx380\"\naddress = 1\npoll = 5\n";
        assert_eq!(
            errors(src),
            [
                r#"t.toml:8:8: meter[0] "m".poll: found integer 5: a duration is a string with a unit, write "5s" (units: ms, s, m, h)"#
            ]
        );
    }

    #[test]
    fn line_and_column() {
        let src = "ab\ncdé\n\nxyz";
        let lines = Lines::new(src);
        let at = |offset| lines.line_col(src, offset);
        assert_eq!(at(0), (1, 1));
        assert_eq!(at(1), (1, 2));
        assert_eq!(at(2), (1, 3)); // the newline itself
        assert_eq!(at(3), (2, 1));
        assert_eq!(at(5), (2, 3)); // 'é', two bytes
        assert_eq!(at(6), (2, 3)); // inside 'é': back to its start
        assert_eq!(at(7), (2, 4));
        assert_eq!(at(8), (3, 1));
        assert_eq!(at(9), (4, 1));
        assert_eq!(at(12), (4, 4)); // end of text
        assert_eq!(at(1000), (4, 4)); // clamped
        assert_eq!(Lines::new("").line_col("", 0), (1, 1));
        assert_eq!(Lines::new("a\r\nb").line_col("a\r\nb", 3), (2, 1));
    }

    #[test]
    fn syntax_errors_in_a_value_do_not_give_a_second_error() {
        // `5 5` is recovered as a string: no "expected an integer" on top of the syntax error.
        let e = errors("[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n[[meter]]\nname = \"m\"\nmodel = \"rx380\"\naddress = 5 5\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("t.toml:7:11: meter[0] \"m\".address: "), "{e:?}");
    }

    #[test]
    fn a_duplicate_key_is_named_after_its_section() {
        let e = errors("[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n[[meter]]\nname = \"m\"\nmodel = \"rx380\"\naddress = 1\nname = \"n\"\n");
        assert_eq!(e, ["t.toml:8:1: meter[0] \"m\".name: duplicate key"]);
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("adress", METER_KEYS.iter().copied()), Some("address"));
        assert_eq!(suggest("meters", TOP_LEVEL_KEYS.iter().copied()), Some("meter"));
        assert_eq!(suggest("buss", TOP_LEVEL_KEYS.iter().copied()), Some("bus"));
        assert_eq!(suggest("Baud", BUS_KEYS.iter().copied()), Some("baud"));
        assert_eq!(suggest("bsu", TOP_LEVEL_KEYS.iter().copied()), Some("bus")); // a transposition is one edit
        assert_eq!(suggest("stopbits", BUS_KEYS.iter().copied()), Some("stop_bits"));
        assert_eq!(suggest("pzem16", Model::ALL.iter().map(|m| m.name())), Some("pzem-016"));
        assert_eq!(suggest("x", TOP_LEVEL_KEYS.iter().copied()), None);
        assert_eq!(suggest("influxdb", TOP_LEVEL_KEYS.iter().copied()), None);
        assert_eq!(suggest("", TOP_LEVEL_KEYS.iter().copied()), None);
    }

    #[test]
    fn a_megabyte_key_gets_no_suggestion() {
        // The cost of one comparison is bounded in crate::spelling (counted in steps there).
        let key = format!("adress{}", "s".repeat(1 << 20));
        let e = errors(&format!("[gateway]\n{key} = 1\n"));
        let e: Vec<&String> = e.iter().filter(|e| e.contains("unknown key")).collect();
        assert_eq!(e.len(), 1);
        assert!(!e[0].contains("did you mean"), "{:.200}", e[0]);
    }

    #[test]
    fn unknown_keys_say_what_is_expected_when_nothing_is_close() {
        let e = errors("[gateway]\nzzz = 1\n");
        assert!(e.contains(
            &"t.toml:2:1: gateway.zzz: unknown key (expected one of: name, state_dir, log_readings, gpio, control_socket, health_interval, clock_sync_wait)"
                .to_owned()
        ));
    }

    #[test]
    fn health_interval_is_a_duration_or_off() {
        let with = |v: &str| {
            let text = format!(
                "[gateway]\nhealth_interval = {v}\n[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n\
                 [[meter]]\nname = \"m\"\nmodel = \"pzem-016\"\naddress = 1\n"
            );
            load_str(&text, "t.toml").map(|c| c.gateway.health_interval).map_err(|e| e.to_string())
        };
        assert_eq!(with("\"10s\""), Ok(Some(Duration::from_secs(10))));
        assert_eq!(with("\"1h\""), Ok(Some(Duration::from_secs(3600))));
        assert_eq!(with("\"off\""), Ok(None));
        let e = with("\"500ms\"").unwrap_err();
        assert!(e.starts_with("t.toml:2:19: gateway.health_interval: 500ms is out of range"), "{e}");
        let e = with("60").unwrap_err();
        assert!(e.contains("gateway.health_interval: found integer 60: a duration is a string"), "{e}");
        let e = with("\"2h\"").unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = with("\"never\"").unwrap_err();
        assert!(e.starts_with("t.toml:2:19: gateway.health_interval: "), "{e}");
        let e = with("true").unwrap_err();
        assert!(e.starts_with("t.toml:2:19: gateway.health_interval: "), "{e}");
    }

    #[test]
    fn syntax_errors_are_named_after_their_key() {
        let e = errors(
            "[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n[[meter]]\nname = \"m\"\nmodel = rx380\naddress = 1\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("t.toml:6:9: meter[0] \"m\".model: "), "{e:?}");
    }

    #[test]
    fn display() {
        let e = ConfigError {
            file: "pmtr.toml".into(),
            line: 14,
            column: 1,
            key: "meter[1].adress".into(),
            message: "unknown key (did you mean `address`?)".into(),
        };
        assert_eq!(e.to_string(), "pmtr.toml:14:1: meter[1].adress: unknown key (did you mean `address`?)");
        let both = ConfigErrors(vec![e.clone(), e]);
        assert_eq!(both.to_string().lines().count(), 2);
    }

    #[test]
    fn unreadable_file() {
        let e = load_file(Path::new("/nonexistent/pmtr.toml")).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!((e.0[0].line, e.0[0].column), (0, 0));
        assert!(e.to_string().starts_with("/nonexistent/pmtr.toml:0:0: cannot read the file: "), "{e}");
    }

    #[test]
    fn defaults() {
        let c = load_str(
            "[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n[[meter]]\nname = \"m\"\nmodel = \"pzem-004t\"\naddress = 1\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.gateway.state_dir, PathBuf::from("/var/lib/pmtr"));
        assert!(!c.gateway.log_readings);
        assert!(!c.gateway.name.is_empty());
        assert_eq!(c.gateway.health_interval, Some(Duration::from_secs(60)));
        let b = &c.buses[0];
        assert_eq!(b.line.to_string(), "9600 8N1");
        assert_eq!((b.timeout, b.retries, b.frame_gap), (Duration::from_millis(300), 2, None));
        assert_eq!((b.max_backoff, b.rescan), (Duration::from_secs(60), Duration::from_secs(5)));
        let m = &c.meters[0];
        assert_eq!((m.bus.as_str(), m.poll, m.phase), ("b", Duration::from_secs(1), Phase::L1));
    }

    #[test]
    fn mixed_models_fall_back_to_9600_8n1() {
        let c = load_str(
            "[[bus]]\nname = \"b\"\nport = \"/dev/x\"\n\
             [[meter]]\nname = \"p\"\nmodel = \"pzem-016\"\naddress = 1\n\
             [[meter]]\nname = \"r\"\nmodel = \"rx380\"\naddress = 2\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.buses[0].line.to_string(), "9600 8N1");
    }
}
