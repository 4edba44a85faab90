//! The Grafana dashboards against real data: a real InfluxDB 1.x (Debian `influxd`) filled by
//! `pmtr run` (in process) from simulated meters (two PZEM-016 and an RX380 on a pseudo-terminal),
//! an SDM630 read by its definition from a pymodbus peer (THD, import and export energy), a relay on a fake GPIO board and a trigger that trips it, with health points every second,
//! and a `[[neutral]]` set on the RX380, which plays a supply whose neutral opens.
//! Then every template variable query and every panel query of every dashboard in
//! `grafana/dashboards/` runs against that database, with the variables filled in as Grafana
//! does, and must give what its panel draws: no error, at least one series, every selected
//! column with values, and one series per value of a variable it groups by (every meter,
//! relay, trigger, sink) whose points have the fields the query draws (every meter for
//! voltage, the SDM630 alone for THD). A new panel or dashboard is tested without touching this file.
//!
//! The type check of the same files against Grafana's schema is `grafana/check` (tests/run.sh).

// support/pymodbus.rs and support/servers.rs each hold their own copy of support/process.rs.
#![allow(clippy::duplicate_mod)]

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/pymodbus.rs"]
mod pymodbus;
#[path = "support/servers.rs"]
mod servers;

use gateway::{simulator, Daemon};
use pmtr::relay::FakeBoard;
use serde_json::Value;
use servers::Influx1;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

const DATABASE: &str = "pmtr";
/// What `$timeFilter` and `$__interval` become: the whole run, one-second buckets (the health
/// interval of the run, so counters differ from one bucket to the next).
const TIME_FILTER: &str = "time > now() - 1h";
/// What `$timeFilter` becomes in a panel with a time range of its own (`timeFrom`: the last 30
/// days, this month): the energy books' day and month points are stamped at their local
/// midnight, which may be more than an hour before the run. (A `timeShift`, as on last month's
/// panel, is not applied: the run has no data a month old.)
/// The column list entry of a regex of fields: at least one column of the series has values.
const ANY_COLUMN: &str = "*";
const PANEL_TIME_FILTER: &str = "time > now() - 62d";
const INTERVAL: &str = "1s";

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards")
}

/// An Eastron SDM630 (read by its built-in definition) on a pymodbus peer: the quantities only
/// meter definitions give (THD, import and export energy) reach the database. Input registers,
/// floats high word first (SDM630Modbus Protocol V1.8); the registers between read 0.
fn sdm630_peer() -> (pymodbus::Peer, PathBuf) {
    let mut ir = serde_json::Map::new();
    let mut put = |addr: u16, x: f32| {
        let b = x.to_bits();
        ir.insert(addr.to_string(), Value::from(b >> 16));
        ir.insert((addr + 1).to_string(), Value::from(b & 0xFFFF));
    };
    for (k, (u, thd)) in [(230.5, 2.5), (231.0, 2.75), (229.5, 3.0)].into_iter().enumerate() {
        put(2 * k as u16, u); // 30001..: phase voltages
        put(0x00EA + 2 * k as u16, thd); // 30235..: voltage THD
        put(0x00F0 + 2 * k as u16, 10.0 * thd); // 30241..: current THD
    }
    put(0x0048, 1234.5); // 30073: import active energy
    put(0x004A, 67.25); // 30075: export active energy
    put(0x0166, 0.0); // 30359..: the last register read
    put(0x016A, 0.0);
    let image = serde_json::json!({"1": {"ir": ir, "hr": {}, "fill": true}});
    pymodbus::start("pymodbus_sparse.py", &image)
}

fn config(dir: &Path, influx_url: &str, sdm630: &Path) -> String {
    format!(
        r#"
[gateway]
name = "testgw"
state_dir = "{state}"
gpio = "fake"
health_interval = "1s"
[[bus]]
name = "house"
ports = ["{ports}"]
baud = 9600
parity = "none"
timeout = "100ms"
rescan = "200ms"
[[bus]]
name = "board"
ports = ["{sdm630}"]
baud = 9600
parity = "none"
timeout = "1s"
rescan = "200ms"
[[meter]]
name = "feed"
model = "sdm630"
address = 1
bus = "board"
poll = "200ms"
[[meter]]
name = "mainA"
model = "pzem-016"
address = 4
bus = "house"
poll = "200ms"
[[meter]]
name = "mainB"
model = "pzem-016"
address = 5
phase = "L2"
bus = "house"
poll = "200ms"
[[meter]]
name = "plant"
model = "rx380"
address = 1
bus = "house"
poll = "200ms"
[[sink]]
name = "influx"
type = "influxdb1"
url = "{influx_url}"
database = "{DATABASE}"
flush_interval = "100ms"
[[relay]]
name = "water-heater"
pin = {pin}
default = "on"
[[tariff]]
name = "home"
currency = "EUR"
price = 0.30
standing_charge = 0.5
[[neutral]]
name = "plant-supply"
meter = "plant"
[[trigger]]
name = "overvoltage-B"
meter = "mainB"
when = "L2U > 126"
relays = ["water-heater"]
[[trigger]]
name = "plant-overload"
meter = "plant"
when = "P > 1000000"
dry_run = true
relays = ["water-heater"]
"#,
        state = dir.join("state").display(),
        ports = dir.join("ttyUSB*").display(),
        sdm630 = sdm630.display(),
        pin = gateway::PIN,
    )
}

/// A variable's values as Grafana would put them in a query: all of them (the dashboards'
/// multi-value variables default to All).
#[derive(Debug, Clone)]
struct Var {
    values: Vec<String>,
    multi: bool,
}

/// Characters a regex-escaped value needs escaped, as Grafana's InfluxQL interpolation does.
fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\^$.|?*+()[]{}/-".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Replaces `$name` (not followed by an identifier character), `${name}` and `[[name]]`.
fn replace_var(text: &str, name: &str, value: &str) -> String {
    let text = text.replace(&format!("${{{name}}}"), value).replace(&format!("[[{name}]]"), value);
    let pattern = format!("${name}");
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find(&pattern) {
        let after = &rest[i + pattern.len()..];
        out.push_str(&rest[..i]);
        if after.starts_with(|c: char| c.is_alphanumeric() || c == '_') {
            out.push_str(&pattern);
        } else {
            out.push_str(value);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The query with the dashboard's variables and Grafana's built-ins filled in. Panics when a
/// multi-value variable is used outside a regex (`/^$var$/`), or when a `$` is left over.
fn interpolate(query: &str, vars: &BTreeMap<String, Var>, what: &str) -> String {
    let mut q = query.to_owned();
    // Longest names first: `$meter` must not eat the start of `$meters`.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        let var = &vars[name];
        let escaped: Vec<String> = var.values.iter().map(|v| regex_escape(v)).collect();
        let in_regex =
            if escaped.len() == 1 { escaped[0].clone() } else { format!("({})", escaped.join("|")) };
        q = q.replace(&format!("/^${name}$/"), &format!("/^{in_regex}$/"));
        q = q.replace(&format!("/^${{{name}}}$/"), &format!("/^{in_regex}$/"));
        let plain = replace_var(&q, name, &var.values[0]);
        if plain != q && var.multi {
            panic!("{what}: the multi-value variable `{name}` is used outside /^${name}$/: {query}");
        }
        q = plain;
    }
    q = replace_var(&q, "timeFilter", TIME_FILTER);
    q = replace_var(&q, "__interval_ms", "1000");
    q = replace_var(&q, "__interval", INTERVAL);
    // A `$` may remain only as a regex's end anchor.
    let left = q
        .match_indices('$')
        .any(|(i, _)| q[i + 1..].starts_with(|c: char| c.is_alphanumeric() || c == '_' || c == '{'));
    assert!(
        !left && !q.contains("[["),
        "{what}: a variable is left in the query after filling in {vars:?}: {q}"
    );
    q
}

/// The columns a SELECT gives besides `time`: each expression's alias (`AS "x"`), or the name of
/// a bare field. The dashboards give every computed expression an alias so that the column names
/// (and the legends) do not depend on InfluxDB's defaults.
fn selected_columns(query: &str, what: &str) -> Vec<String> {
    let upper = query.to_ascii_uppercase();
    let start = upper.find("SELECT ").unwrap_or_else(|| panic!("{what}: not a SELECT: {query}")) + 7;
    let end = upper.find(" FROM ").unwrap_or_else(|| panic!("{what}: no FROM: {query}"));
    let list = &query[start..end];
    let mut items = Vec::new();
    let (mut depth, mut quoted, mut from) = (0, false, 0);
    for (i, c) in list.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                items.push(list[from..i].trim());
                from = i + 1;
            }
            _ => {}
        }
    }
    items.push(list[from..].trim());
    items
        .into_iter()
        .map(|item| {
            let unquote = |s: &str| s.trim().trim_matches('"').to_owned();
            // A function of a regex of fields (`last(/^cost_/)`) gives a column per field that
            // matches, named by InfluxDB (`last_cost_home`): checked as "any column".
            if item.contains("(/") {
                return ANY_COLUMN.to_owned();
            }
            match item.rfind(" AS ").or_else(|| item.rfind(" as ")) {
                Some(i) => unquote(&item[i + 4..]),
                None if item.starts_with('"') && item.ends_with('"') && item.matches('"').count() == 2 => {
                    unquote(item)
                }
                None => panic!("{what}: give `{item}` an alias (AS \"name\"): {query}"),
            }
        })
        .collect()
}

/// The tags of `GROUP BY` (quoted identifiers; `time(...)` left out).
fn grouped_tags(query: &str) -> Vec<String> {
    let upper = query.to_ascii_uppercase();
    let Some(i) = upper.find("GROUP BY ") else { return Vec::new() };
    let mut tags = Vec::new();
    let mut rest = &query[i + 9..];
    while let Some(a) = rest.find('"') {
        let Some(b) = rest[a + 1..].find('"') else { break };
        tags.push(rest[a + 1..a + 1 + b].to_owned());
        rest = &rest[a + b + 2..];
    }
    tags
}

/// Runs an InfluxQL statement; the first result, or a panic naming `what` with InfluxDB's error.
fn run(db: &Influx1, query: &str, what: &str) -> Value {
    let answer = db.query(DATABASE, query);
    let result = answer.pointer("/results/0").cloned().unwrap_or(Value::Null);
    if let Some(e) = result.get("error") {
        panic!("{what}: InfluxDB refused the query: {e}\n  {query}");
    }
    result
}

fn series(result: &Value) -> Vec<Value> {
    result.get("series").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// A template variable's values: a query variable runs its query (with the variables before
/// it filled in), a textbox or constant takes its text.
fn resolve(db: &Influx1, v: &Value, vars: &BTreeMap<String, Var>, what: &str) -> Var {
    let kind = v["type"].as_str().unwrap_or_default();
    let multi = v["multi"].as_bool().unwrap_or(false) || v["includeAll"].as_bool().unwrap_or(false);
    let values: Vec<String> = match kind {
        "query" => {
            let raw = v["query"].as_str().unwrap_or_else(|| panic!("{what}: query variable without a query"));
            let q = interpolate(raw, vars, what);
            let mut values = BTreeSet::new();
            for s in series(&run(db, &q, what)) {
                for row in s["values"].as_array().into_iter().flatten() {
                    values.insert(row[1].as_str().unwrap_or_else(|| panic!("{what}: {row}")).to_owned());
                }
            }
            assert!(!values.is_empty(), "{what}: the variable's query gives no values\n  {q}");
            values.into_iter().collect()
        }
        "textbox" | "constant" | "custom" => {
            let text = v.pointer("/current/value").and_then(Value::as_str).or_else(|| v["query"].as_str());
            vec![text
                .unwrap_or_else(|| panic!("{what}: no value"))
                .split(',')
                .next()
                .unwrap()
                .trim()
                .to_owned()]
        }
        other => panic!("{what}: variables of type {other:?} are not filled in by this test yet"),
    };
    Var { values, multi }
}

/// Every panel with its targets, rows opened (a collapsed row keeps its panels inside).
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten().cloned());
        } else {
            out.push(p.clone());
        }
    }
    out
}

/// The fields a SELECT draws: each quoted name right inside a call (`mean("voltage")`), and each
/// bare `"field"` item; None when one of them is a regex of fields.
fn drawn_fields(query: &str) -> Option<Vec<String>> {
    let upper = query.to_ascii_uppercase();
    let list = &query[upper.find("SELECT ")? + 7..upper.find(" FROM ")?];
    if list.contains("(/") {
        return None;
    }
    let mut fields: Vec<String> = list
        .match_indices("(\"")
        .filter_map(|(i, _)| list[i + 2..].split('"').next().map(str::to_owned))
        .collect();
    for item in list.split(',').map(str::trim).filter(|i| i.starts_with('"')) {
        fields.extend(item[1..].split('"').next().map(str::to_owned));
    }
    Some(fields)
}

/// The values of `tag` whose points have at least one of the fields `query` draws, over the
/// whole run; every value of the tag when the fields are not known.
fn reporting(db: &Influx1, query: &str, tag: &str) -> BTreeSet<String> {
    let upper = query.to_ascii_uppercase();
    let from = &query[upper.find(" FROM ").unwrap() + 6..];
    let measurement = from.split_whitespace().next().unwrap();
    let counts = match drawn_fields(query) {
        Some(fields) if !fields.is_empty() => {
            fields.iter().map(|f| format!("count(\"{f}\")")).collect::<Vec<_>>().join(", ")
        }
        _ => "count(*)".to_owned(),
    };
    let q = format!("SELECT {counts} FROM {measurement} WHERE {PANEL_TIME_FILTER} GROUP BY \"{tag}\"");
    series(&run(db, &q, &q))
        .iter()
        .filter(|s| {
            s["values"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|row| row.as_array().unwrap()[1..].iter().any(|v| v.as_u64().is_some_and(|n| n > 0)))
        })
        .filter_map(|s| s.pointer(&format!("/tags/{tag}")).and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// Checks one target; returns a line for the report.
fn check_target(
    db: &Influx1,
    target: &Value,
    vars: &BTreeMap<String, Var>,
    panel_range: bool,
    what: &str,
) -> String {
    assert_eq!(target["rawQuery"], true, "{what}: only raw InfluxQL queries are checked here");
    let raw = target["query"].as_str().unwrap_or_else(|| panic!("{what}: a target without a query"));
    let mut q = interpolate(raw, vars, what);
    if panel_range {
        q = q.replace(TIME_FILTER, PANEL_TIME_FILTER);
    }
    let columns = selected_columns(&q, what);
    let result = run(db, &q, what);
    let series = series(&result);
    assert!(!series.is_empty(), "{what}: the query gives no series\n  {q}");
    for column in &columns {
        if column == ANY_COLUMN {
            let any = series.iter().any(|s| {
                s["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|row| row.as_array().unwrap()[1..].iter().any(|v| !v.is_null()))
            });
            assert!(any, "{what}: no column matching its regex has a value\n  {q}");
            continue;
        }
        let mut has_value = false;
        for s in &series {
            let names: Vec<&str> =
                s["columns"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
            let at = names
                .iter()
                .position(|n| n == column)
                .unwrap_or_else(|| panic!("{what}: no column `{column}` in {names:?}\n  {q}"));
            has_value |= s["values"].as_array().unwrap().iter().any(|row| !row[at].is_null());
        }
        assert!(has_value, "{what}: column `{column}` has no value in any series\n  {q}");
    }
    for tag in grouped_tags(&q) {
        let found: BTreeSet<String> = series
            .iter()
            .map(|s| {
                s.pointer(&format!("/tags/{tag}"))
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| {
                        panic!("{what}: a series without the tag `{tag}` it is grouped by: {s}")
                    })
                    .to_owned()
            })
            .collect();
        if let Some(var) = vars.get(&tag) {
            // Every value of the variable whose points have the fields drawn (all meters for
            // voltage; only those that measure it for THD).
            let reporting = reporting(db, &q, &tag);
            let want: BTreeSet<String> =
                var.values.iter().filter(|v| reporting.contains(*v)).cloned().collect();
            assert_eq!(
                found, want,
                "{what}: one series per `{tag}` of the variable that has its fields\n  {q}"
            );
        }
    }
    let rows: usize = series.iter().map(|s| s["values"].as_array().map_or(0, Vec::len)).sum();
    format!("{what}: {} series, {rows} rows, columns {columns:?}", series.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_of_every_dashboard_gives_its_series() {
    let db = Influx1::start();
    db.create_database(DATABASE);
    let dir = tempfile::tempdir().unwrap();
    // mainB at 130 V trips `overvoltage-B` at its first reading; the dry-run trigger never does.
    let port = simulator::spawn(
        &dir.path().join("ttyUSB0"),
        &["pzem-016@4,volts=121", "pzem-016@5,volts=130", "rx380@1"],
    );
    // The RX380 plays a supply whose neutral opens after 1 s: the set `plant-supply` changes
    // state, which writes `pmtr_neutral` points.
    let trace = pmtr::sim::GridTrace::record(
        pmtr::sim::grid::Grid::new(5, 230.0).with_house([700.0, 400.0, 100.0]),
        120,
        Some(1),
    );
    let trace = std::sync::Arc::new(trace);
    port.with_slave(1, |s| s.set_profile(pmtr::sim::Profile::Grid { trace, phase: 0 })).unwrap();
    let (_peer, sdm630) = sdm630_peer();
    let config = pmtr::config::load_str(&config(dir.path(), &db.url(), &sdm630), "grafana.toml").unwrap();
    let board = FakeBoard::new();
    let daemon = Daemon::start(config, &board);
    board.wait_level(gateway::PIN, false, Duration::from_secs(10)).await.expect("the trigger cuts the relay");
    // Several health points (one a second) and a few seconds of readings.
    tokio::time::sleep(Duration::from_secs(5)).await;
    daemon.stop().await;

    let mut files: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let names: Vec<String> =
        files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in ["pmtr-overview.json", "pmtr-relays.json", "pmtr-health.json"] {
        assert!(names.iter().any(|n| n == want), "{want} is missing from {names:?}");
    }
    let mut report = Vec::new();
    let mut targets = 0;
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap())
            .unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        let mut vars = BTreeMap::new();
        for v in dashboard.pointer("/templating/list").and_then(Value::as_array).into_iter().flatten() {
            let var_name = v["name"].as_str().unwrap().to_owned();
            let what = format!("{name}: variable `{var_name}`");
            let var = resolve(&db, v, &vars, &what);
            report.push(format!("{what}: {:?}", var.values));
            vars.insert(var_name, var);
        }
        for want in ["gateway", "meter"] {
            assert!(vars.contains_key(want), "{name}: no template variable `{want}`");
        }
        assert_eq!(vars["gateway"].values, ["testgw"]);
        assert_eq!(vars["meter"].values, ["feed", "mainA", "mainB", "plant"], "{name}");
        let panels = panels(&dashboard);
        assert!(!panels.is_empty(), "{name}: no panels");
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            let list = panel["targets"].as_array().cloned().unwrap_or_default();
            assert!(!list.is_empty(), "{name}: panel \"{title}\" has no query");
            for t in &list {
                let what = format!("{name}: panel \"{title}\" query {}", t["refId"].as_str().unwrap_or("?"));
                report.push(check_target(&db, t, &vars, panel["timeFrom"].is_string(), &what));
                targets += 1;
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(targets >= 20, "only {targets} queries checked");
}

#[test]
fn variables_are_filled_in_as_grafana_does() {
    let mut vars = BTreeMap::new();
    vars.insert("meter".to_owned(), Var { values: vec!["a.b".into(), "c".into()], multi: true });
    vars.insert("tz".to_owned(), Var { values: vec!["Europe/Berlin".into()], multi: false });
    let q = interpolate(
        "SELECT x FROM m WHERE \"meter\" =~ /^$meter$/ AND $timeFilter GROUP BY time($__interval) tz('$tz')",
        &vars,
        "t",
    );
    assert_eq!(
        q,
        "SELECT x FROM m WHERE \"meter\" =~ /^(a\\.b|c)$/ AND time > now() - 1h GROUP BY time(1s) tz('Europe/Berlin')"
    );
    assert_eq!(
        selected_columns("SELECT non_negative_difference(last(\"a\")) AS \"a\", \"b\" FROM \"m\"", "t"),
        ["a", "b"]
    );
    assert_eq!(
        grouped_tags("SELECT x FROM m GROUP BY time(1s), \"meter\", \"phase\" fill(none)"),
        ["meter", "phase"]
    );
    assert_eq!(
        drawn_fields(
            "SELECT mean(\"a\") AS \"x\", non_negative_derivative(last(\"b\"), 1s) AS \"y\", \"c\" FROM m"
        ),
        Some(vec!["a".to_owned(), "b".to_owned(), "c".to_owned()])
    );
    assert_eq!(drawn_fields("SELECT last(/^cost_/) FROM m"), None);
}

#[test]
#[should_panic(expected = "is used outside")]
fn a_multi_value_variable_outside_a_regex_is_refused() {
    let mut vars = BTreeMap::new();
    vars.insert("meter".to_owned(), Var { values: vec!["a".into(), "b".into()], multi: true });
    interpolate("SELECT x FROM m WHERE \"meter\" = '$meter'", &vars, "t");
}
