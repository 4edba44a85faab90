//! The top-level modules of the library import one another one way only: no module cycle.
//!
//! Each file under `src/` belongs to its top-level module (`src/x.rs` and `src/x/**` are `x`;
//! `lib.rs` and `main.rs` belong to none). Every `crate::NAME` path outside comments, strings and
//! `#[cfg(test)]` items (and each name of a `use crate::{a, b}` group) is an edge from the file's
//! module to `NAME`. A strongly connected group of two or more modules is a cycle; the test lists
//! each group with the file and line of every edge inside it. ARCHITECTURE.md says who may import
//! whom; this keeps it true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where one module names another: (from, to) → every "file:line".
type Edges = BTreeMap<(String, String), Vec<String>>;

#[test]
fn no_module_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = edges_in(&src);
    assert!(!edges.is_empty(), "no `crate::` paths found under {}", src.display());
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from.clone()).or_default().insert(to.clone());
        graph.entry(to.clone()).or_default();
    }
    let cycles: Vec<Vec<String>> = strongly_connected(&graph).into_iter().filter(|g| g.len() > 1).collect();
    if cycles.is_empty() {
        return;
    }
    let mut report = format!("{} module cycle group(s):\n", cycles.len());
    for group in &cycles {
        report += &format!("\n[{}]\n", group.join(", "));
        for ((from, to), places) in &edges {
            if group.contains(from) && group.contains(to) {
                report += &format!("  {from} -> {to}: {}\n", places.join(", "));
            }
        }
    }
    panic!("{report}");
}

/// Every edge between top-level modules of the crate whose sources are in `src`.
fn edges_in(src: &Path) -> Edges {
    let mut files = Vec::new();
    walk(src, &mut files);
    files.sort();
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(src, f)).collect();
    // Files that only a `#[cfg(test)] mod x;` brings in.
    let mut test_only: BTreeSet<PathBuf> = BTreeSet::new();
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let scan = scan(&text);
        for (name, path) in &scan.test_modules {
            test_only.insert(child_file(file, name, path.as_deref()));
        }
        found.push((file.clone(), scan.references));
    }
    let mut edges = Edges::new();
    for (file, references) in found {
        let Some(from) = module_of(src, &file) else { continue };
        if is_test_only(&file, &test_only) {
            continue;
        }
        let shown = file.strip_prefix(src.parent().unwrap_or(src)).unwrap_or(&file).display().to_string();
        for (to, line) in references {
            if to != from && modules.contains(&to) {
                let places = edges.entry((from.clone(), to)).or_default();
                let place = format!("{shown}:{line}");
                if places.last() != Some(&place) {
                    places.push(place);
                }
            }
        }
    }
    edges
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/x.rs` and `src/x/**` are `x`; `lib.rs` and `main.rs` are none.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let mut parts = rel.components();
    let first = parts.next()?.as_os_str().to_str()?;
    if parts.next().is_some() {
        return Some(first.to_string());
    }
    let stem = first.strip_suffix(".rs")?;
    (stem != "lib" && stem != "main").then(|| stem.to_string())
}

/// The file that `mod name;` (with an optional `#[path]`) in `parent` loads.
fn child_file(parent: &Path, name: &str, path: Option<&str>) -> PathBuf {
    let dir = parent.parent().unwrap_or(Path::new("."));
    let stem = parent.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let own_dir = if matches!(stem, "mod" | "lib" | "main") { dir.to_path_buf() } else { dir.join(stem) };
    match path {
        Some(p) => dir.join(p),
        None if own_dir.join(format!("{name}.rs")).exists() => own_dir.join(format!("{name}.rs")),
        None => own_dir.join(name).join("mod.rs"),
    }
}

/// A file is test-only when it, or a folder it sits in (`tests/mod.rs` and its children), is.
fn is_test_only(file: &Path, test_only: &BTreeSet<PathBuf>) -> bool {
    test_only.iter().any(|t| {
        file == t
            || (t.file_name().is_some_and(|n| n == "mod.rs")
                && t.parent().is_some_and(|d| file.starts_with(d)))
    })
}

/// What one file says: the `crate::` references outside tests, and its `#[cfg(test)] mod x;`s.
#[derive(Debug, Default, PartialEq)]
struct Scan {
    /// (first name after `crate::`, line).
    references: Vec<(String, usize)>,
    /// (module name, its `#[path]` if any).
    test_modules: Vec<(String, Option<String>)>,
}

fn scan(text: &str) -> Scan {
    let original: Vec<char> = text.chars().collect();
    let code = code_only(&original);
    let mut scan = Scan::default();
    let line_at = |i: usize| 1 + original[..i].iter().filter(|c| **c == '\n').count();
    let mut i = 0;
    while i < code.len() {
        if code[i] == '#' && starts_with(&code, i, "#[") {
            let end = closing(&code, i + 1);
            let attribute: String = code[i..end].iter().collect();
            if is_cfg_test(&attribute) {
                let (item_end, module) = skip_item(&code, &original, end);
                if let Some(m) = module {
                    scan.test_modules.push(m);
                }
                i = item_end;
                continue;
            }
            i = end;
            continue;
        }
        if starts_with(&code, i, "crate::") && (i == 0 || !is_ident(code[i - 1]) || code[i - 1] == '$') {
            let mut j = i + "crate::".len();
            if code.get(j) == Some(&'{') {
                let end = closing(&code, j);
                for (name, at) in group_names(&code, j + 1, end - 1) {
                    scan.references.push((name, line_at(at)));
                }
                i = end;
                continue;
            }
            let start = j;
            while j < code.len() && is_ident(code[j]) {
                j += 1;
            }
            if j > start {
                scan.references.push((code[start..j].iter().collect(), line_at(i)));
            }
            i = j;
            continue;
        }
        i += 1;
    }
    scan
}

/// The first name of each path in a `{a, b::c, d::{e, f}}` group between `from` and `to`.
fn group_names(code: &[char], from: usize, to: usize) -> Vec<(String, usize)> {
    let mut names = Vec::new();
    let mut depth = 0;
    let mut expecting = true;
    let mut i = from;
    while i < to {
        let c = code[i];
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => expecting = true,
            _ if expecting && depth == 0 && is_ident(c) => {
                let start = i;
                while i < to && is_ident(code[i]) {
                    i += 1;
                }
                names.push((code[start..i].iter().collect(), start));
                expecting = false;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// `#[cfg(test)]`, `#[cfg(all(test, …))]`: an item that exists only in the crate's unit tests.
fn is_cfg_test(attribute: &str) -> bool {
    let a: String = attribute.chars().filter(|c| !c.is_whitespace()).collect();
    a == "#[cfg(test)]" || a.starts_with("#[cfg(all(test,")
}

/// Skips the item after a `#[cfg(test)]` (further attributes, then up to its `;` or its closing
/// brace). Returns where it ends and, for `mod x;`, the name and `#[path]`.
fn skip_item(code: &[char], original: &[char], from: usize) -> (usize, Option<(String, Option<String>)>) {
    let mut i = from;
    let mut path = None;
    loop {
        while i < code.len() && code[i].is_whitespace() {
            i += 1;
        }
        if !starts_with(code, i, "#[") {
            break;
        }
        let end = closing(code, i + 1);
        let attribute: String = original[i..end].iter().collect();
        if let Some(rest) = attribute.strip_prefix("#[path") {
            path = rest.split('"').nth(1).map(str::to_string);
        }
        i = end;
    }
    let start = i;
    while i < code.len() && code[i] != ';' && code[i] != '{' {
        i += 1;
    }
    if i >= code.len() {
        return (i, None);
    }
    if code[i] == '{' {
        return (closing(code, i), None);
    }
    let head: String = code[start..i].iter().collect();
    let words: Vec<&str> = head.split_whitespace().collect();
    let module = match words.as_slice() {
        [.., "mod", name] => Some((name.to_string(), path)),
        _ => None,
    };
    (i + 1, module)
}

/// The index just past the bracket that closes the one at `open`.
fn closing(code: &[char], open: usize) -> usize {
    let (o, c) = match code[open] {
        '{' => ('{', '}'),
        '(' => ('(', ')'),
        _ => ('[', ']'),
    };
    let mut depth = 0;
    for (k, &ch) in code.iter().enumerate().skip(open) {
        if ch == o {
            depth += 1;
        } else if ch == c {
            depth -= 1;
            if depth == 0 {
                return k + 1;
            }
        }
    }
    code.len()
}

fn starts_with(code: &[char], i: usize, s: &str) -> bool {
    s.chars().enumerate().all(|(k, c)| code.get(i + k) == Some(&c))
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The source with comments, strings and character literals blanked (newlines kept), so that
/// only code is searched and indices and lines stay those of the original.
fn code_only(src: &[char]) -> Vec<char> {
    let mut out = src.to_vec();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(src.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let mut i = 0;
    while i < src.len() {
        let c = src[i];
        let next = src.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            let end = src[i..].iter().position(|c| *c == '\n').map_or(src.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            let mut k = i;
            while k < src.len() {
                if src[k] == '/' && src.get(k + 1) == Some(&'*') {
                    depth += 1;
                    k += 2;
                } else if src[k] == '*' && src.get(k + 1) == Some(&'/') {
                    depth -= 1;
                    k += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    k += 1;
                }
            }
            blank(&mut out, i, k);
            i = k;
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && (i == 0 || !is_ident(src[i - 1])) {
            // A raw string r"…" or r#"…"#.
            let mut k = i + 1;
            let mut hashes = 0;
            while src.get(k) == Some(&'#') {
                hashes += 1;
                k += 1;
            }
            if src.get(k) != Some(&'"') {
                i += 1;
                continue;
            }
            k += 1;
            while k < src.len() {
                if src[k] == '"' && (0..hashes).all(|h| src.get(k + 1 + h) == Some(&'#')) {
                    k += 1 + hashes;
                    break;
                }
                k += 1;
            }
            blank(&mut out, i, k);
            i = k;
        } else if c == '"' {
            let mut k = i + 1;
            while k < src.len() && src[k] != '"' {
                k += if src[k] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i, k + 1);
            i = k + 1;
        } else if c == '\'' {
            // A character literal ('a', '\n', '"'); otherwise a lifetime, left as it is.
            if next == Some('\\') {
                let end = src[i + 2..].iter().position(|c| *c == '\'').map_or(src.len(), |p| i + 2 + p + 1);
                blank(&mut out, i, end);
                i = end;
            } else if src.get(i + 2) == Some(&'\'') {
                blank(&mut out, i, i + 3);
                i += 3;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Tarjan's strongly connected components, each sorted, in a stable order.
fn strongly_connected(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        groups: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    group.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                group.sort();
                self.groups.push(group);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        groups: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.groups.sort();
    walk.groups
}

#[test]
fn the_cycle_finder_on_a_small_graph() {
    // a → b → c → a is one cycle; d ⇄ e another; f → a hangs off the first; g stands alone.
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "e"), ("e", "d"), ("f", "a"), ("e", "c")] {
        graph.entry(from.into()).or_default().insert(to.into());
        graph.entry(to.into()).or_default();
    }
    graph.entry("g".into()).or_default();
    let groups = strongly_connected(&graph);
    let cycles: Vec<Vec<&str>> =
        groups.iter().filter(|g| g.len() > 1).map(|g| g.iter().map(String::as_str).collect()).collect();
    assert_eq!(cycles, vec![vec!["a", "b", "c"], vec!["d", "e"]]);
    assert_eq!(groups.len(), 4, "{groups:?}"); // {a,b,c}, {d,e}, {f} and {g}
}

#[test]
fn the_cycle_finder_on_a_graph_without_cycles() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in [("config", "modbus"), ("bus", "config"), ("bus", "modbus"), ("app", "bus")] {
        graph.entry(from.into()).or_default().insert(to.into());
        graph.entry(to.into()).or_default();
    }
    assert!(strongly_connected(&graph).iter().all(|g| g.len() == 1));
}

#[test]
fn references_skip_comments_strings_and_tests() {
    let text = r##"//! See [`crate::doc_link`].
use crate::{alpha, beta::Thing, gamma::{self, x}};
use crate::delta::Word;
fn f() -> &'static str { let _c = '"'; let _ = crate::epsilon::go(); "crate::in_string" }
fn g() -> &'static str { r#"crate::in_raw"# }
/* crate::in_block */
#[cfg(test)]
mod tests {
    use crate::only_in_tests;
}
#[cfg(test)]
#[path = "x_tests.rs"]
mod x;
pub(crate) fn h() { crate::zeta::run() }
"##;
    let s = scan(text);
    let names: Vec<(&str, usize)> = s.references.iter().map(|(n, l)| (n.as_str(), *l)).collect();
    assert_eq!(
        names,
        vec![("alpha", 2), ("beta", 2), ("gamma", 2), ("delta", 3), ("epsilon", 4), ("zeta", 14)]
    );
    assert_eq!(s.test_modules, vec![("x".to_string(), Some("x_tests.rs".to_string()))]);
}
