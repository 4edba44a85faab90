//! Fuzzing of the configuration loader: whatever the text, `load_str` returns, without
//! panicking, either a configuration that keeps the documented invariants or errors that point
//! inside the text, sorted by position.

use pmtr::config::{load_str, Config, ConfigErrors};
use proptest::prelude::*;
use proptest::sample::Index;

const EXAMPLE: &str = include_str!("../config/pmtr.toml");

fn check(src: &str) -> Result<(), TestCaseError> {
    match load_str(src, "fuzz.toml") {
        Ok(config) => check_config(&config),
        Err(errors) => check_errors(src, &errors),
    }
}

fn check_config(c: &Config) -> Result<(), TestCaseError> {
    prop_assert!(!c.meters.is_empty());
    for m in &c.meters {
        prop_assert!((1..=247).contains(&m.address), "address {}", m.address);
        prop_assert!(!m.name.is_empty());
        prop_assert!(c.bus(&m.bus).is_some(), "meter {} on undeclared bus {}", m.name, m.bus);
    }
    for b in &c.buses {
        prop_assert!(!b.ports.is_empty());
        prop_assert!(matches!(b.line.data_bits, 7 | 8) && matches!(b.line.stop_bits, 1 | 2));
    }
    Ok(())
}

fn check_errors(src: &str, errors: &ConfigErrors) -> Result<(), TestCaseError> {
    prop_assert!(!errors.0.is_empty(), "an Err without errors");
    let lines = src.split('\n').count();
    let mut last = (0, 0);
    for e in &errors.0 {
        prop_assert!(e.line >= 1 && e.line <= lines, "line {} of {lines}: {e}", e.line);
        prop_assert!(e.column >= 1, "{e}");
        prop_assert!((e.line, e.column) >= last, "not sorted: {errors}");
        last = (e.line, e.column);
        prop_assert!(e.to_string().starts_with("fuzz.toml:"));
    }
    Ok(())
}

/// Lines that look like a pmtr configuration, good and bad.
fn toml_line() -> impl Strategy<Value = String> {
    let header = prop::sample::select(vec![
        "[[bus]]",
        "[[meter]]",
        "[gateway]",
        "[bus]",
        "[meter]",
        "[[meters]]",
        "[[bus",
        "[",
        "]]",
        "[a.b]",
        "[[bus.x]]",
        "[gateway.x]",
        "[status]",
        "[mqtt]",
    ])
    .prop_map(str::to_owned);
    let key = prop::sample::select(vec![
        "name",
        "model",
        "address",
        "bus",
        "poll",
        "phase",
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
        "state_dir",
        "log_readings",
        "listen",
        "token",
        "host",
        "tls",
        "qos",
        "topic_prefix",
        "keep_alive",
        "adress",
        "a.b",
        "\"quoted key\"",
        "name.x",
        "",
    ]);
    let value = prop_oneof![
        prop::sample::select(vec![
            "\"house\"",
            "\"pzem-016\"",
            "\"rx380\"",
            "\"RX380\"",
            "\"L2\"",
            "\"even\"",
            "\"E\"",
            "\"5s\"",
            "\"1.5s\"",
            "\"500ms\"",
            "\"0.0.0.0:9780\"",
            "\"pmtr/#\"",
            "\"-1s\"",
            "\"99999999999999999999h\"",
            "\"\"",
            "\"/dev/ttyUSB*\"",
            "[\"/dev/ttyUSB*\"]",
            "[\"[\"]",
            "[]",
            "[1, \"a\"]",
            "{ name = \"x\" }",
            "0",
            "1",
            "4",
            "247",
            "248",
            "0xF8",
            "-1",
            "9223372036854775807",
            "99999999999999999999",
            "1.5",
            "nan",
            "inf",
            "true",
            "1979-05-27",
            "\"unterminated",
            "'literal'",
            "\"\"\"multi\nline\"\"\"",
            "= =",
            "",
        ])
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|n| n.to_string()),
        "[a-z0-9.\"]{0,12}",
    ];
    prop_oneof![
        2 => header,
        6 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "\\PC{0,30}",
        1 => Just(String::new()),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(Index, usize),
    Insert(Index, String),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    Uncomment(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), prop_oneof!["\\PC{1,8}", toml_line().prop_map(|l| format!("\n{l}\n"))])
            .prop_map(|(i, s)| Mutation::Insert(i, s)),
        any::<Index>().prop_map(Mutation::DuplicateLine),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        any::<Index>().prop_map(Mutation::Uncomment),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    match m {
        Mutation::Delete(at, n) if !chars.is_empty() => {
            let start = at.index(chars.len());
            let end = (start + n).min(chars.len());
            chars.drain(start..end);
            chars.into_iter().collect()
        }
        Mutation::Insert(at, s) => {
            let at = at.index(chars.len() + 1);
            chars.splice(at..at, s.chars());
            chars.into_iter().collect()
        }
        Mutation::DuplicateLine(at) => {
            let i = at.index(lines.len());
            let line = lines[i].clone();
            lines.insert(i, line);
            lines.join("\n")
        }
        Mutation::SwapLines(a, b) => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
            lines.join("\n")
        }
        Mutation::Uncomment(at) => {
            let i = at.index(lines.len());
            lines[i] = lines[i].trim_start_matches(['#', ' ']).to_owned();
            lines.join("\n")
        }
        Mutation::Delete(..) => text.to_owned(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text(src in any::<String>()) {
        check(&src)?;
    }

    #[test]
    fn arbitrary_bytes_as_text(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn toml_like_text(lines in prop::collection::vec(toml_line(), 0..40)) {
        check(&lines.join("\n"))?;
    }

    #[test]
    fn mutations_of_the_example(mutations in prop::collection::vec(mutation(), 1..8)) {
        let mut text = EXAMPLE.to_owned();
        for m in &mutations {
            text = apply(&text, m);
        }
        check(&text)?;
    }
}

#[test]
fn the_example_itself() {
    check(EXAMPLE).unwrap();
    assert!(load_str(EXAMPLE, "pmtr.toml").is_ok());
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    for open in ["[", "{a="] {
        let src = format!("x = {}", open.repeat(10_000));
        check(&src).unwrap();
    }
    check(&"[".repeat(100_000)).unwrap();
    check(&"a.".repeat(10_000)).unwrap();
}
