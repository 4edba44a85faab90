//! A definition file: TOML text → [`Definition`], or every error it has at once, each as
//! `FILE:LINE:COL: KEY: MESSAGE` with a "did you mean" where a word is misspelt.

use super::{
    ByteOrder, Definition, Fallback, Function, LineDefaults, ProbeRegister, ProbeTest, ReadSettings, RegType,
    Register, Source, WordOrder,
};
use crate::reading::{Phase, Quantity};
use std::fmt;
use std::ops::Range;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

/// The most registers one Modbus read may ask for.
pub const MODBUS_MAX_READ: u16 = 125;

const TOP_KEYS: &[&str] =
    &["name", "maker", "model", "description", "source", "phases", "line", "read", "probe", "register"];
const SOURCE_KEYS: &[&str] = &["title", "edition"];
const LINE_KEYS: &[&str] = &["baud", "parity", "stop_bits", "address"];
const READ_KEYS: &[&str] =
    &["function", "word_order", "byte_order", "max_block", "max_gap", "even", "fallback", "no_value"];
const PROBE_KEYS: &[&str] =
    &["address", "type", "function", "word_order", "byte_order", "equals", "min", "max"];
const REGISTER_KEYS: &[&str] = &[
    "address",
    "type",
    "function",
    "word_order",
    "byte_order",
    "scale",
    "offset",
    "quantity",
    "phase",
    "every",
    "no_value",
];
const PHASE_NAMES: &[&str] = &["L1", "L2", "L3", "N", "L12", "L23", "L31", "total"];

/// One error of a definition file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefError {
    pub file: String,
    /// 1-based; 0 when the error is about the whole file.
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

impl DefError {
    /// An error about the whole file.
    pub fn whole(file: &str, message: impl Into<String>) -> Self {
        DefError { file: file.to_owned(), line: 0, column: 0, key: String::new(), message: message.into() }
    }
}

impl fmt::Display for DefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.key.is_empty()) {
            (0, _) => write!(f, "{}: {}", self.file, self.message),
            (_, true) => write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message),
            _ => write!(f, "{}:{}:{}: {}: {}", self.file, self.line, self.column, self.key, self.message),
        }
    }
}

/// Every error of a definition file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefErrors(pub Vec<DefError>);

impl fmt::Display for DefErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DefErrors {}

type Value<'i> = Spanned<DeValue<'i>>;

/// Parses and checks a definition. `file` is only used in the errors.
pub fn parse(src: &str, file: &str) -> Result<Definition, DefErrors> {
    let mut c = Checker { src, file, errors: Vec::new() };
    // Every syntax error at once; the rest is checked only in a file that parses (what the
    // parser recovers around an error would only bring errors of its own).
    let (root, syntax) = DeTable::parse_recoverable(src);
    for e in &syntax {
        c.error(e.span().unwrap_or(0..0), "", e.message().trim().to_owned());
    }
    let def = if syntax.is_empty() { c.definition(root.get_ref()) } else { None };
    let mut errors = c.errors;
    errors.sort_by_key(|e| (e.line, e.column));
    errors.dedup();
    match def {
        Some(d) if errors.is_empty() => Ok(d),
        _ => Err(DefErrors(errors)),
    }
}

/// The closest word of `candidates` to `word`, within two edits.
fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut steps = 0;
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        if let Some(d) = crate::spelling::distance_within(word, c, 2, &mut steps) {
            if d < c.chars().count() && best.is_none_or(|(b, _)| d < b) {
                best = Some((d, c));
            }
        }
    }
    best.map(|(_, c)| c)
}

fn unknown(what: &str, word: &str, known: &[&str]) -> String {
    match suggest(word, known.iter().copied()) {
        Some(s) => format!("unknown {what} `{word}` (did you mean `{s}`?)"),
        None => format!("unknown {what} `{word}` (known: {})", known.join(", ")),
    }
}

/// A quantity by its storage field name (`voltage`, `import_energy`).
pub fn quantity_by_name(name: &str) -> Option<Quantity> {
    Quantity::ALL.into_iter().find(|q| q.field() == name)
}

/// A phase by name (`L1`, `L12`, `N`, `total`), case-insensitive.
pub fn phase_by_name(name: &str) -> Option<Phase> {
    PHASE_NAMES.iter().position(|p| p.eq_ignore_ascii_case(name)).map(|i| {
        [Phase::L1, Phase::L2, Phase::L3, Phase::N, Phase::L12, Phase::L23, Phase::L31, Phase::Total][i]
    })
}

/// A phase's name in a definition file.
pub fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Total => "total",
        p => p.prefix(),
    }
}

struct Checker<'s> {
    src: &'s str,
    file: &'s str,
    errors: Vec<DefError>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let offset = span.start.min(self.src.len());
        let before = &self.src[..floor_char(self.src, offset)];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        self.errors.push(DefError {
            file: self.file.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn check_keys(&mut self, table: &DeTable<'_>, prefix: &str, allowed: &[&str]) {
        for k in table.keys() {
            let name: &str = k.get_ref();
            if !allowed.contains(&name) {
                let msg = match suggest(name, allowed.iter().copied()) {
                    Some(s) => format!("unknown key (did you mean `{s}`?)"),
                    None => format!("unknown key (expected one of: {})", allowed.join(", ")),
                };
                self.error(k.span(), &join(prefix, name), msg);
            }
        }
    }

    fn wrong(&mut self, v: &Value<'_>, key: &str, expected: &str) {
        let found = v.get_ref().type_str();
        self.error(v.span(), key, format!("expected {expected}, found {found}"));
    }

    fn string(&mut self, v: &Value<'_>, key: &str) -> Option<String> {
        match v.get_ref().as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                self.wrong(v, key, "a string");
                None
            }
        }
    }

    fn integer(&mut self, v: &Value<'_>, key: &str, range: Range<i64>, expected: &str) -> Option<i64> {
        if !v.get_ref().is_integer() {
            self.wrong(v, key, expected);
            return None;
        }
        match i64::deserialize_from(v) {
            Ok(n) if range.contains(&n) => Some(n),
            Ok(n) => {
                self.error(v.span(), key, format!("{n} is out of range: {expected}"));
                None
            }
            Err(e) => {
                self.error(v.span(), key, e);
                None
            }
        }
    }

    fn number(&mut self, v: &Value<'_>, key: &str) -> Option<f64> {
        let n = match v.get_ref() {
            DeValue::Integer(_) => i64::deserialize_from(v).ok().map(|n| n as f64),
            DeValue::Float(_) => f64::deserialize_from(v).ok(),
            _ => {
                self.wrong(v, key, "a number");
                return None;
            }
        };
        match n {
            Some(x) if x.is_finite() => Some(x),
            _ => {
                self.error(v.span(), key, "must be a finite number");
                None
            }
        }
    }

    fn boolean(&mut self, v: &Value<'_>, key: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong(v, key, "true or false");
                None
            }
        }
    }

    /// One word of `known` (case-insensitive), as its index.
    fn word(&mut self, v: &Value<'_>, key: &str, what: &str, known: &[&str]) -> Option<usize> {
        let s = self.string(v, key)?;
        match known.iter().position(|k| k.eq_ignore_ascii_case(&s)) {
            Some(i) => Some(i),
            None => {
                self.error(v.span(), key, unknown(what, &s, known));
                None
            }
        }
    }

    fn function(&mut self, v: &Value<'_>, key: &str) -> Option<Function> {
        self.word(v, key, "function", &["input", "holding"]).map(|i| [Function::Input, Function::Holding][i])
    }

    fn word_order(&mut self, v: &Value<'_>, key: &str) -> Option<WordOrder> {
        self.word(v, key, "word order", &["high-first", "low-first"])
            .map(|i| [WordOrder::HighFirst, WordOrder::LowFirst][i])
    }

    fn byte_order(&mut self, v: &Value<'_>, key: &str) -> Option<ByteOrder> {
        self.word(v, key, "byte order", &["big", "little"]).map(|i| [ByteOrder::Big, ByteOrder::Little][i])
    }

    fn reg_type(&mut self, v: &Value<'_>, key: &str) -> Option<RegType> {
        let names: Vec<&str> = RegType::ALL.iter().map(|t| t.name()).collect();
        self.word(v, key, "type", &names).map(|i| RegType::ALL[i])
    }

    fn table<'a, 'i>(&mut self, v: &'a Value<'i>, key: &str) -> Option<&'a DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong(v, key, "a table");
                None
            }
        }
    }

    /// An array of tables (`[[register]]`).
    fn tables<'a, 'i>(
        &mut self,
        v: &'a Value<'i>,
        key: &str,
    ) -> Vec<(usize, &'a Value<'i>, &'a DeTable<'i>)> {
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(v, key, "an array of tables");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::Table(t) => out.push((i, item, t)),
                _ => self.wrong(item, &format!("{key}[{i}]"), "a table"),
            }
        }
        out
    }

    fn definition(&mut self, root: &DeTable<'_>) -> Option<Definition> {
        self.check_keys(root, "", TOP_KEYS);
        let whole = 0..0;
        let mut ok = true;
        let required_string = |c: &mut Self, key: &str| -> Option<String> {
            match root.get(key) {
                Some(v) => {
                    let s = c.string(v, key)?;
                    if s.trim().is_empty() {
                        c.error(v.span(), key, "must not be empty");
                        return None;
                    }
                    Some(s)
                }
                None => {
                    c.error(whole.clone(), key, "missing (required)");
                    None
                }
            }
        };
        let name = required_string(self, "name");
        if let (Some(n), Some(v)) = (&name, root.get("name")) {
            if !n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_') {
                self.error(
                    v.span(),
                    "name",
                    format!("invalid name {n:?}: use lower-case letters, digits, `-` and `_`"),
                );
                ok = false;
            }
        }
        let maker = required_string(self, "maker");
        let model = required_string(self, "model");
        let description = match root.get("description") {
            Some(v) => self.string(v, "description"),
            None => Some(String::new()),
        };
        let source = match root.get("source") {
            Some(v) => self.source(v),
            None => {
                self.error(
                    whole.clone(),
                    "source",
                    "missing (required): the maker's document, { title, edition }",
                );
                None
            }
        };
        let phases_value = root.get("phases");
        let phases = match phases_value {
            Some(v) => match self.integer(v, "phases", 1..4, "1 or 3")? {
                n @ (1 | 3) => Some(n as u8),
                n => {
                    self.error(v.span(), "phases", format!("{n}: a meter has 1 or 3 phases"));
                    None
                }
            },
            None => {
                self.error(whole.clone(), "phases", "missing (required): 1 or 3");
                None
            }
        };
        let line = self.line(root.get("line"));
        let read = self.read(root.get("read"));
        let probe = match root.get("probe") {
            Some(v) => self.probe(v),
            None => Some(Vec::new()),
        };
        let registers = match root.get("register") {
            Some(v) => {
                let (good, ok) = self.registers(v, phases.unwrap_or(3), read);
                if let Some(read) = read {
                    self.whole_table(v, &good, &read);
                }
                ok.then(|| good.into_iter().map(|(_, r)| r).collect::<Vec<_>>())
            }
            None => {
                self.error(whole, "register", "missing: a definition reads at least one [[register]]");
                None
            }
        };
        if !ok || !self.errors.is_empty() {
            return None;
        }
        Some(Definition {
            name: name?,
            maker: maker?,
            model: model?,
            description: description?,
            source: source?,
            phases: phases?,
            line: line?,
            read: read?,
            probe: probe?,
            registers: registers?,
        })
    }

    fn source(&mut self, v: &Value<'_>) -> Option<Source> {
        let t = self.table(v, "source")?;
        self.check_keys(t, "source", SOURCE_KEYS);
        let title = match t.get("title") {
            Some(v) => self.string(v, "source.title"),
            None => {
                self.error(v.span(), "source.title", "missing (required): the document's title");
                None
            }
        };
        let edition = match t.get("edition") {
            Some(v) => self.string(v, "source.edition"),
            None => Some(String::new()),
        };
        Some(Source { title: title?, edition: edition? })
    }

    fn line(&mut self, v: Option<&Value<'_>>) -> Option<LineDefaults> {
        let mut line = LineDefaults { baud: 9600, parity: 'N', stop_bits: 1, address: 1 };
        let Some(v) = v else { return Some(line) };
        let t = self.table(v, "line")?;
        self.check_keys(t, "line", LINE_KEYS);
        let mut ok = true;
        if let Some(b) = t.get("baud") {
            match self.integer(b, "line.baud", 300..4_000_001, "a baud rate, 300..4000000") {
                Some(n) => line.baud = n as u32,
                None => ok = false,
            }
        }
        if let Some(p) = t.get("parity") {
            match self.word(p, "line.parity", "parity", &["none", "even", "odd"]) {
                Some(i) => line.parity = ['N', 'E', 'O'][i],
                None => ok = false,
            }
        }
        if let Some(s) = t.get("stop_bits") {
            match self.integer(s, "line.stop_bits", 1..3, "1 or 2") {
                Some(n) => line.stop_bits = n as u8,
                None => ok = false,
            }
        }
        if let Some(a) = t.get("address") {
            match self.integer(a, "line.address", 1..248, "a slave address, 1..247") {
                Some(n) => line.address = n as u8,
                None => ok = false,
            }
        }
        ok.then_some(line)
    }

    fn read(&mut self, v: Option<&Value<'_>>) -> Option<ReadSettings> {
        let mut read = ReadSettings::DEFAULT;
        let Some(v) = v else { return Some(read) };
        let t = self.table(v, "read")?;
        self.check_keys(t, "read", READ_KEYS);
        let mut ok = true;
        if let Some(x) = t.get("function") {
            match self.function(x, "read.function") {
                Some(f) => read.function = f,
                None => ok = false,
            }
        }
        if let Some(x) = t.get("word_order") {
            match self.word_order(x, "read.word_order") {
                Some(w) => read.word_order = w,
                None => ok = false,
            }
        }
        if let Some(x) = t.get("byte_order") {
            match self.byte_order(x, "read.byte_order") {
                Some(b) => read.byte_order = b,
                None => ok = false,
            }
        }
        if let Some(x) = t.get("max_block") {
            match self.integer(
                x,
                "read.max_block",
                1..i64::from(MODBUS_MAX_READ) + 1,
                "registers per request, 1..125",
            ) {
                Some(n) => read.max_block = n as u16,
                None => ok = false,
            }
        }
        if let Some(x) = t.get("max_gap") {
            match self.integer(x, "read.max_gap", 0..i64::from(MODBUS_MAX_READ), "registers, 0..124") {
                Some(n) => read.max_gap = n as u16,
                None => ok = false,
            }
        }
        if let Some(x) = t.get("even") {
            match self.boolean(x, "read.even") {
                Some(b) => read.even = b,
                None => ok = false,
            }
        }
        if let Some(x) = t.get("no_value") {
            match self.word(x, "read.no_value", "marker", &["max", "none"]) {
                Some(i) => read.no_value_max = i == 0,
                None => ok = false,
            }
        }
        // A bad list is reported and read as the default, so that the table is still checked
        // against the block limit.
        if let Some(f) = t.get("fallback").and_then(|x| self.fallback(x, &read)) {
            read.fallback = f;
        }
        if read.even && read.max_block < 2 {
            if let Some(x) = t.get("max_block") {
                self.error(
                    x.span(),
                    "read.max_block",
                    "an `even` meter needs blocks of at least 2 registers",
                );
                ok = false;
            }
        }
        ok.then_some(read)
    }

    /// `read.fallback`: the block limits to fall back through, each smaller than the one before
    /// (and than `max_block`), even for an `even` meter; `[]` for none.
    fn fallback(&mut self, v: &Value<'_>, read: &ReadSettings) -> Option<Fallback> {
        let key = "read.fallback";
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(v, key, "a list of block limits, largest first (e.g. [20, 12]), or [] for none");
            return None;
        };
        if items.len() > Fallback::MAX_LISTED {
            let msg = format!("{} limits: at most {} can be listed", items.len(), Fallback::MAX_LISTED);
            self.error(v.span(), key, msg);
            return None;
        }
        let mut limits = [0u16; Fallback::MAX_LISTED];
        let mut above = read.max_block;
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let at = format!("{key}[{i}]");
            let Some(n) =
                self.integer(item, &at, 1..i64::from(MODBUS_MAX_READ) + 1, "registers per request, 1..125")
            else {
                ok = false;
                continue;
            };
            let n = n as u16;
            if n >= above {
                let what = if i == 0 { "`read.max_block`" } else { "the limit before it" };
                self.error(item.span(), &at, format!("{n} is not smaller than {what} ({above})"));
                ok = false;
            } else if read.even && n % 2 == 1 {
                self.error(item.span(), &at, format!("{n} is odd: an `even` meter is read in even blocks"));
                ok = false;
            }
            limits[i] = n;
            above = n;
        }
        ok.then_some(Fallback::Listed { limits, len: items.len() as u8 })
    }

    /// A register's `no_value`: "max" (its type's largest value), "none", or the raw value
    /// itself (the words put together, as an unsigned number that fits the type); only for
    /// integer types. `Some(None)`: no marker.
    fn no_value(&mut self, v: &Value<'_>, key: &str, ty: RegType) -> Option<Option<u64>> {
        let Some(max) = ty.max_bits() else {
            self.error(
                v.span(),
                key,
                format!("a {} has no no-value marker: only integer registers do", ty.name()),
            );
            return None;
        };
        if v.get_ref().is_str() {
            return self.word(v, key, "marker", &["max", "none"]).map(|i| (i == 0).then_some(max));
        }
        // Up to the type's all ones (a TOML integer stops below 2^63: a 64-bit marker above
        // that is "max").
        let end = i64::try_from(ty.all_ones()).map_or(i64::MAX, |m| m + 1);
        let expected = format!("\"max\", \"none\" or the raw value, 0..{end:#X}");
        let n = self.integer(v, key, 0..end, &expected)?;
        Some(Some(n as u64))
    }

    fn address(&mut self, t: &DeTable<'_>, at: &Value<'_>, key: &str) -> Option<u16> {
        match t.get("address") {
            Some(a) => self
                .integer(a, &format!("{key}.address"), 0..0x1_0000, "a register address, 0..65535")
                .map(|n| n as u16),
            None => {
                self.error(at.span(), &format!("{key}.address"), "missing (required)");
                None
            }
        }
    }

    fn probe(&mut self, v: &Value<'_>) -> Option<Vec<ProbeRegister>> {
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item, t) in self.tables(v, "probe") {
            let key = format!("probe[{i}]");
            self.check_keys(t, &key, PROBE_KEYS);
            let address = self.address(t, item, &key);
            let ty = match t.get("type") {
                Some(x) => self.reg_type(x, &format!("{key}.type")),
                None => Some(RegType::U16),
            };
            let function = t
                .get("function")
                .map_or(Some(Function::Holding), |x| self.function(x, &format!("{key}.function")));
            let word_order = t
                .get("word_order")
                .map_or(Some(WordOrder::HighFirst), |x| self.word_order(x, &format!("{key}.word_order")));
            let byte_order = t
                .get("byte_order")
                .map_or(Some(ByteOrder::Big), |x| self.byte_order(x, &format!("{key}.byte_order")));
            let num = |c: &mut Self, k: &str| t.get(k).map(|x| c.number(x, &format!("{key}.{k}")));
            let test = match (num(self, "equals"), num(self, "min"), num(self, "max")) {
                (Some(e), None, None) => e.map(ProbeTest::Equals),
                (None, min, max) if min.is_some() || max.is_some() => match (min, max) {
                    (Some(None), _) | (_, Some(None)) => None,
                    (min, max) => Some(ProbeTest::Range { min: min.flatten(), max: max.flatten() }),
                },
                _ => {
                    self.error(item.span(), &key, "give `equals`, or `min` and/or `max`");
                    None
                }
            };
            match (address, ty, function, word_order, byte_order, test) {
                (Some(address), Some(ty), Some(function), Some(word_order), Some(byte_order), Some(test)) => {
                    out.push(ProbeRegister { function, address, ty, word_order, byte_order, test })
                }
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// The registers that are well formed, with their index; and whether all are.
    fn registers(
        &mut self,
        v: &Value<'_>,
        phases: u8,
        read: Option<ReadSettings>,
    ) -> (Vec<(usize, Register)>, bool) {
        let read = read.unwrap_or(ReadSettings::DEFAULT);
        let mut out = Vec::new();
        let mut ok = true;
        let items = self.tables(v, "register");
        if items.is_empty() {
            self.error(v.span(), "register", "a definition reads at least one [[register]]");
            return (out, false);
        }
        for (i, item, t) in items {
            let key = format!("register[{i}]");
            self.check_keys(t, &key, REGISTER_KEYS);
            let address = self.address(t, item, &key);
            let ty = match t.get("type") {
                Some(x) => self.reg_type(x, &format!("{key}.type")),
                None => {
                    self.error(item.span(), &format!("{key}.type"), "missing (required)");
                    None
                }
            };
            let function = t
                .get("function")
                .map_or(Some(read.function), |x| self.function(x, &format!("{key}.function")));
            let word_order = t
                .get("word_order")
                .map_or(Some(read.word_order), |x| self.word_order(x, &format!("{key}.word_order")));
            let byte_order = t
                .get("byte_order")
                .map_or(Some(read.byte_order), |x| self.byte_order(x, &format!("{key}.byte_order")));
            let scale = t.get("scale").map_or(Some(1.0), |x| self.number(x, &format!("{key}.scale")));
            if let (Some(s), Some(x)) = (scale, t.get("scale")) {
                if s == 0.0 {
                    self.error(x.span(), &format!("{key}.scale"), "must not be zero");
                    ok = false;
                }
            }
            let offset = t.get("offset").map_or(Some(0.0), |x| self.number(x, &format!("{key}.offset")));
            let quantity = match t.get("quantity") {
                Some(x) => {
                    let names: Vec<&str> = Quantity::ALL.iter().map(|q| q.field()).collect();
                    self.word(x, &format!("{key}.quantity"), "quantity", &names).map(|i| Quantity::ALL[i])
                }
                None => {
                    self.error(item.span(), &format!("{key}.quantity"), "missing (required)");
                    None
                }
            };
            let phase = match t.get("phase") {
                Some(x) => self.word(x, &format!("{key}.phase"), "phase", PHASE_NAMES).and_then(|i| {
                    let p = phase_by_name(PHASE_NAMES[i])?;
                    if phases == 1 && p != Phase::Total {
                        self.error(
                            x.span(),
                            &format!("{key}.phase"),
                            format!("`{}` on a single-phase meter (`phases = 1`): leave `phase` out, or say `total`", PHASE_NAMES[i]),
                        );
                        return None;
                    }
                    Some(if phases == 1 { None } else { Some(p) })
                }),
                None => Some(if phases == 1 { None } else { Some(Phase::Total) }),
            };
            let every = match t.get("every") {
                Some(x) => self
                    .integer(x, &format!("{key}.every"), 1..1_000_001, "a number of polls, 1..1000000")
                    .map(|n| n as u32),
                None => Some(1),
            };
            let no_value = match (t.get("no_value"), ty) {
                (Some(x), Some(ty)) => self.no_value(x, &format!("{key}.no_value"), ty),
                (Some(_), None) => None,
                (None, ty) => Some(ty.filter(|_| read.no_value_max).and_then(RegType::max_bits)),
            };
            if let (Some(a), Some(ty), Some(x)) = (address, ty, t.get("address")) {
                if u32::from(a) + u32::from(ty.width()) > 0x1_0000 {
                    self.error(
                        x.span(),
                        &format!("{key}.address"),
                        format!("a {} at {a} runs past register 65535", ty.name()),
                    );
                    ok = false;
                }
            }
            match (
                address,
                ty,
                function,
                word_order,
                byte_order,
                scale,
                offset,
                quantity,
                phase,
                (every, no_value),
            ) {
                (
                    Some(address),
                    Some(ty),
                    Some(function),
                    Some(word_order),
                    Some(byte_order),
                    Some(scale),
                    Some(offset),
                    Some(quantity),
                    Some(phase),
                    (Some(every), Some(no_value)),
                ) => out.push((
                    i,
                    Register {
                        function,
                        address,
                        ty,
                        word_order,
                        byte_order,
                        scale,
                        offset,
                        divisor: divisor(scale),
                        quantity,
                        phase,
                        every,
                        no_value,
                    },
                )),
                _ => ok = false,
            }
        }
        (out, ok)
    }

    /// Checks across registers: overlaps, a (phase, quantity) filled twice, widths within the
    /// block limit.
    fn whole_table(&mut self, v: &Value<'_>, regs: &[(usize, Register)], read: &ReadSettings) {
        let DeValue::Array(items) = v.get_ref() else { return };
        let span = |i: usize| items.get(i).map_or(0..0, |x| x.span());
        let last = |r: &Register| u32::from(r.address) + u32::from(r.width()) - 1;
        for (k, &(i, r)) in regs.iter().enumerate() {
            let key = format!("register[{i}]");
            let own =
                super::plan::group(&[(r.function, r.address, r.width())], super::Plan::Values, read.even);
            let need = own.first().map_or(0, |(b, _)| b.count);
            let smallest = read.fallback.listed().and_then(|l| l.last().copied());
            if need > read.max_block {
                let msg = format!(
                    "a {} at {} needs a request of {need} registers, over `read.max_block` = {}",
                    r.ty.name(),
                    r.address,
                    read.max_block
                );
                self.error(span(i), &key, msg);
            } else if let Some(last) = smallest.filter(|&l| need > l) {
                let msg = format!(
                    "a {} at {} needs a request of {need} registers, over the last `read.fallback` limit, {last}",
                    r.ty.name(),
                    r.address,
                );
                self.error(span(i), &key, msg);
            }
            for &(j, s) in &regs[..k] {
                let overlap = s.function == r.function
                    && u32::from(s.address) <= last(&r)
                    && u32::from(r.address) <= last(&s);
                if overlap {
                    let msg = format!(
                        "{} registers {}..{} overlap register[{j}] ({}..{})",
                        r.function.name(),
                        r.address,
                        last(&r),
                        s.address,
                        last(&s)
                    );
                    self.error(span(i), &key, msg);
                }
                if s.phase == r.phase && s.quantity == r.quantity {
                    let phase = r.phase.map_or("the meter's phase", phase_name);
                    let msg = format!("{} on {phase} is already filled by register[{j}]", r.quantity.field());
                    self.error(span(i), &key, msg);
                }
            }
        }
    }
}

/// `1 / scale` when it is a whole number above 1.
fn divisor(scale: f64) -> Option<f64> {
    let d = 1.0 / scale;
    (scale > 0.0 && scale < 1.0 && (d - d.round()).abs() < 1e-9 * d).then(|| d.round())
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

trait DeserializeFrom: Sized {
    fn deserialize_from(v: &Value<'_>) -> Result<Self, String>;
}

impl<T: serde::de::DeserializeOwned> DeserializeFrom for T {
    fn deserialize_from(v: &Value<'_>) -> Result<Self, String> {
        T::deserialize(ValueDeserializer::from(v.clone())).map_err(|e| e.message().to_owned())
    }
}
