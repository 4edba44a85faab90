//! The executable's steady-state functions are laid out together (`link/hot-text.ld`, written
//! by `link/hot-text.sh`, given to the linker by build.rs): the section is there, and the list
//! has not gone stale. A stale list still links, but lays out less of what the daemon runs, and
//! its resident memory grows back (BENCHMARKS.md, "Footprint"): when this fails, run
//! `link/hot-text.sh` again.

use std::collections::HashSet;
use std::process::Command;

/// The linker script's patterns: the `NAME` of each `*(.text.NAME .text.unlikely.NAME)`.
fn patterns() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/link/hot-text.ld");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("*(.text.")?.split([' ', ')']).next())
        .map(str::to_string)
        .collect()
}

/// `name` with every `{lead}{alphanumerics}_` written `{lead}*_` (at least `min` alphanumerics):
/// what `link/hot-text.sh` does to a v0 name's crate hashes (`Cs…_`) and back-references (`B…_`).
fn open(name: &str, lead: &str, min: usize) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(lead) {
            let run = after.bytes().take_while(u8::is_ascii_alphanumeric).count();
            if run >= min && after.as_bytes().get(run) == Some(&b'_') {
                out.push_str(lead);
                out.push_str("*_");
                rest = &after[run + 1..];
                continue;
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A symbol as the script names it (the generator's rule, for v0 and C names).
fn as_pattern(symbol: &str) -> String {
    let base = match symbol.rfind(".llvm.") {
        Some(i) if symbol[i + 6..].bytes().all(|b| b.is_ascii_digit()) => &symbol[..i],
        _ => symbol,
    };
    if base.starts_with("_R") {
        format!("{}*", open(&open(base, "Cs", 1), "B", 0))
    } else {
        base.to_string()
    }
}

fn tool_output(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} (binutils, which links every Rust program here): {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn the_opening_of_v0_names_matches_the_generator() {
    assert_eq!(
        as_pattern("_RNvNtCsjrHSEGnQ3l9_3std2rt19lang_start_internal"),
        "_RNvNtCs*_3std2rt19lang_start_internal*"
    );
    assert_eq!(
        as_pattern("_RNvMs0_NtNtNtCsjrHSEGnQ3l9_3std3sys6thread4unixNtB5_6Thread3new.llvm.361"),
        "_RNvMs0_NtNtNtCs*_3std3sys6thread4unixNtB*_6Thread3new*"
    );
    assert_eq!(as_pattern("main"), "main");
}

#[test]
fn the_steady_state_functions_are_laid_out_together() {
    let bin = env!("CARGO_BIN_EXE_pmtr");
    let patterns = patterns();
    assert!(patterns.len() >= 100, "link/hot-text.ld names {} functions", patterns.len());

    let sections = tool_output("readelf", &["-SW", bin]);
    let hot = sections.lines().find(|l| l.contains(" .text.hot "));
    assert!(
        hot.is_some(),
        "{bin} has no .text.hot section: is build.rs giving link/hot-text.ld to the linker?"
    );

    let symbols: HashSet<String> = tool_output("nm", &["--defined-only", bin])
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, kind, name) = (f.next()?, f.next()?, f.next()?);
            matches!(kind, "t" | "T" | "W" | "w").then(|| as_pattern(name))
        })
        .collect();
    let missing: Vec<&String> = patterns.iter().filter(|p| !symbols.contains(*p)).collect();
    let found = patterns.len() - missing.len();
    assert!(
        found * 100 >= patterns.len() * 80,
        "only {found} of link/hot-text.ld's {} functions are in {bin}: run link/hot-text.sh again \
         (missing, first 20: {:#?})",
        patterns.len(),
        &missing[..missing.len().min(20)]
    );
}
