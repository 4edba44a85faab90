//! Diagnostics: the errors with file, line, column and key; positions in the text; the key
//! paths of the parser's errors; "did you mean" suggestions.

use super::{Loader, Value};
use std::fmt;
use std::ops::Range;
use toml::de::{DeTable, DeValue};

/// The largest edit distance at which an unknown word gets a "did you mean".
pub(super) const MAX_SUGGESTION_DISTANCE: usize = 2;

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

/// Where the lines start, and which are plain ASCII (whose columns are byte counts).
pub(super) struct Lines {
    starts: Vec<usize>,
    ascii: Vec<bool>,
}

impl Lines {
    pub(super) fn new(src: &str) -> Self {
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
    pub(super) fn line_col(&self, src: &str, offset: usize) -> (usize, usize) {
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
pub(super) fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
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
pub(super) fn is_bare_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A key as written in a key path: bare when it can be, quoted otherwise.
pub(super) fn key_text(k: &str) -> String {
    if is_bare_key(k) {
        k.to_owned()
    } else {
        format!("{k:?}")
    }
}

pub(super) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key_text(key)
    } else {
        format!("{prefix}.{}", key_text(key))
    }
}

/// `meter[2] "gen"`, or `meter[2]` while the element has no string `name`.
pub(super) fn element_path(array: &str, index: usize, table: &DeTable<'_>) -> String {
    match table.get("name").and_then(|n| n.get_ref().as_str()) {
        Some(name) => format!("{array}[{index}] {name:?}"),
        None => format!("{array}[{index}]"),
    }
}

/// Every key and value of the tree with its key path, and the top-level sections (tables and
/// elements of arrays of tables, whose span is their header) with theirs.
#[derive(Default)]
pub(super) struct Paths {
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
pub(super) fn locate(src: &str, root: &DeTable<'_>, errors: &[Range<usize>]) -> Vec<String> {
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

impl Loader<'_> {
    /// Reports the parser's errors, and remembers where they are.
    pub(super) fn syntax_errors(&mut self, root: &DeTable<'_>, errors: &[toml::de::Error]) {
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

    pub(super) fn line(&self, offset: usize) -> usize {
        self.lines.line_col(self.src, offset).0
    }

    pub(super) fn error(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
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
    pub(super) fn is_damaged(&self, v: &Value<'_>) -> bool {
        let s = v.span();
        let before = self.damaged.partition_point(|&(start, _)| start <= s.end);
        s.is_empty() || before.checked_sub(1).is_some_and(|i| self.damaged[i].1 >= s.start)
    }

    pub(super) fn check_keys(&mut self, table: &DeTable<'_>, prefix: &str, allowed: &[&str]) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::bus::BUS_KEYS;
    use crate::config::load::meter::METER_KEYS;
    use crate::config::load::TOP_LEVEL_KEYS;
    use crate::meter::Model;

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
}
