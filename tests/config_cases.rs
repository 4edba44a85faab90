//! Fixture-driven tests of the configuration loader, in the style of Telegraf's.
//!
//! Every directory under `tests/cases/config/` is one case, named after what it guards. It holds
//! a `pmtr.toml` and exactly one of:
//!
//! - `expected.txt`: the exact error lines `load_str` must give, one per line, in order, with the
//!   file shown as `pmtr.toml`;
//! - `ok.txt`: the file must load, and each `key = value` line is a fact about the result, with
//!   keys in the file's own vocabulary (`bus[0].baud = 19200`, `meter "gen".address = 6`,
//!   `meters = 3`, `alerts.email.port = 587`). A file holding only the word `ok` checks nothing more. Lines starting with
//!   `#` are comments.
//!
//! After a deliberate change of messages, `PMTR_BLESS=1 cargo test --test config_cases` rewrites
//! every `expected.txt` from the current output (review the diff before committing).

use pmtr::config::{
    load_str, Bus, Config, EmailSettings, Meter, MqttSettings, NeutralSet, NeutralSource, Relay, Trigger,
};
use std::fs;
use std::path::{Path, PathBuf};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/config")
}

/// Picks an element by `[index]` or by ` "name"`, returning it and the rest of the key.
fn select<'a, 'k, T>(items: &'a [T], name_of: fn(&T) -> &str, sel: &'k str) -> Option<(&'a T, &'k str)> {
    if let Some(rest) = sel.strip_prefix('[') {
        let (index, rest) = rest.split_once(']')?;
        Some((items.get(index.parse::<usize>().ok()?)?, rest))
    } else {
        let rest = sel.strip_prefix(" \"")?;
        let (name, rest) = rest.split_once('"')?;
        Some((items.iter().find(|x| name_of(x) == name)?, rest))
    }
}

fn bus_fact(b: &Bus, key: &str) -> Option<String> {
    Some(match key {
        "name" => b.name.clone(),
        "ports" => format!("{:?}", b.ports),
        "baud" => b.line.baud.to_string(),
        "parity" => format!("{:?}", b.line.parity).to_lowercase(),
        "data_bits" => b.line.data_bits.to_string(),
        "stop_bits" => b.line.stop_bits.to_string(),
        "line" => b.line.to_string(),
        "timeout" => format!("{:?}", b.timeout),
        "retries" => b.retries.to_string(),
        "frame_gap" => b.frame_gap.map_or("none".to_owned(), |d| format!("{d:?}")),
        "max_backoff" => format!("{:?}", b.max_backoff),
        "rescan" => format!("{:?}", b.rescan),
        "kind" => b.kind.name().to_owned(),
        _ => return None,
    })
}

fn meter_fact(m: &Meter, key: &str) -> Option<String> {
    Some(match key {
        "name" => m.name.clone(),
        "model" => m.model.to_string(),
        "address" => m.address.to_string(),
        "bus" => m.bus.clone(),
        "poll" => format!("{:?}", m.poll),
        "phase" => format!("{:?}", m.phase),
        "multiplier" => m.multiplier().to_string(),
        "time_sync" => m.server.as_ref()?.time_sync.map_or("off".to_owned(), |d| format!("{d:?}")),
        "push_actions" => m.server.as_ref()?.push_actions.to_string(),
        "actions" => m.server.as_ref()?.actions.len().to_string(),
        _ => {
            // `action[N].sent`, `.average`, `.pins`, `.level`, `.recovery`, `.latch`, `.dry_run`.
            let rest = key.strip_prefix("action[")?;
            let (i, field) = rest.split_once("].")?;
            let a = m.server.as_ref()?.actions.get(i.parse::<usize>().ok()?)?;
            match field {
                "sent" => a.firmware_text.clone(),
                "sent_legacy" => a.legacy_text.clone().unwrap_or_else(|e| format!("error: {e}")),
                "average" => a.average.to_string(),
                "pins" => format!("{:?}", a.pins),
                "level" => if a.level_high { "high" } else { "low" }.to_owned(),
                "recovery" => format!("{:?}", a.recovery),
                "latch" => a.latch.to_string(),
                "dry_run" => a.dry_run.to_string(),
                _ => return None,
            }
        }
    })
}

fn relay_fact(r: &Relay, key: &str) -> Option<String> {
    Some(match key {
        "pin" => r.pin.to_string(),
        "active_low" => r.active_low.to_string(),
        "default" => r.default.to_string(),
        "on_shutdown" => format!("{:?}", r.on_shutdown).to_lowercase(),
        _ => return None,
    })
}

fn trigger_fact(t: &Trigger, key: &str) -> Option<String> {
    Some(match key {
        "when" => t.when.clone(),
        "meter" => t.meter.clone().unwrap_or_else(|| "none".to_owned()),
        "meters" => format!("{:?}", t.meters),
        "average" => t.average.map_or("none".to_owned(), |d| format!("{d:?}")),
        "hold" => format!("{:?}", t.hold),
        "recovery" => format!("{:?}", t.recovery),
        "level" => t.level.to_string(),
        "relays" => format!("{:?}", t.relays),
        "dry_run" => t.dry_run.to_string(),
        "latch" => t.latch.to_string(),
        "alert" => t.alert.to_string(),
        "stale_after" => format!("{:?}", t.stale_after),
        "on_stale" => format!("{:?}", t.on_stale).to_lowercase(),
        _ => return None,
    })
}

fn email_fact(e: &EmailSettings, key: &str) -> Option<String> {
    Some(match key {
        "host" => e.host.clone(),
        "port" => e.port.to_string(),
        "tls" => e.tls.name().to_owned(),
        "username" => e.username.clone().unwrap_or_else(|| "none".to_owned()),
        // Never the password itself: whether there is one.
        "password" => if e.password.is_some() { "set" } else { "none" }.to_owned(),
        "from" => e.from.clone(),
        "to" => format!("{:?}", e.to),
        "subject_prefix" => e.subject_prefix.clone(),
        "ca_file" => e.ca_file.as_ref().map_or("none".to_owned(), |p| p.display().to_string()),
        "timeout" => format!("{:?}", e.timeout),
        _ => return None,
    })
}

fn mqtt_fact(m: &MqttSettings, key: &str) -> Option<String> {
    Some(match key {
        "host" => m.host.clone(),
        "port" => m.port.to_string(),
        "tls" => m.tls.to_string(),
        "ca_file" => m.ca_file.as_ref().map_or("none".to_owned(), |p| p.display().to_string()),
        "username" => m.username.clone().unwrap_or_else(|| "none".to_owned()),
        // Never the password itself: whether there is one.
        "password" => if m.password.is_some() { "set" } else { "none" }.to_owned(),
        "client_id" => m.client_id.clone(),
        "topic_prefix" => m.topic_prefix.clone(),
        "discovery" => m.discovery.to_string(),
        "discovery_prefix" => m.discovery_prefix.clone(),
        "qos" => m.qos.to_string(),
        "retain" => m.retain.to_string(),
        "keep_alive" => format!("{:?}", m.keep_alive),
        "max_backoff" => format!("{:?}", m.max_backoff),
        "queue" => m.queue.to_string(),
        _ => return None,
    })
}

fn neutral_fact(c: &Config, n: &NeutralSet, key: &str) -> Option<String> {
    Some(match key {
        "name" => n.name.clone(),
        "meter" => match &n.source {
            NeutralSource::Meter(m) => m.clone(),
            NeutralSource::Meters(_) => "none".to_owned(),
        },
        "meters" => format!("{:?}", n.meters()),
        // Which tier watches it: line voltages where its one meter measures them.
        "tier" => match &n.source {
            NeutralSource::Meter(m) if c.meter(m)?.measures_line_voltages() => "line voltages",
            _ => "magnitudes",
        }
        .to_owned(),
        "nominal" => n.nominal.to_string(),
        "shift" => n.shift.to_string(),
        "sensitivity" => format!("{:?}", n.sensitivity).to_lowercase(),
        _ => return None,
    })
}

/// The value of a fact key, rendered as `ok.txt` writes it.
fn fact(c: &Config, key: &str) -> Option<String> {
    match key {
        "buses" => return Some(c.buses.len().to_string()),
        "meters" => return Some(c.meters.len().to_string()),
        "gateway.name" => return Some(c.gateway.name.clone()),
        "gateway.state_dir" => return Some(c.gateway.state_dir.display().to_string()),
        "gateway.log_readings" => return Some(c.gateway.log_readings.to_string()),
        "gateway.gpio" => return Some(format!("{:?}", c.gateway.gpio).to_lowercase()),
        "gateway.control_socket" => return Some(c.gateway.control_socket.display().to_string()),
        "gateway.health_interval" => {
            return Some(c.gateway.health_interval.map_or("off".to_owned(), |d| format!("{d:?}")))
        }
        "relays" => return Some(c.relays.len().to_string()),
        "triggers" => return Some(c.triggers.len().to_string()),
        "alerts.email" => return Some(if c.email.is_some() { "set" } else { "none" }.to_owned()),
        "status.enabled" => return Some(c.status.enabled.to_string()),
        "status.listen" => return Some(c.status.listen.to_string()),
        // Never the token itself: whether there is one.
        "status.token" => return Some(if c.status.token.is_some() { "set" } else { "none" }.to_owned()),
        "mqtt" => return Some(if c.mqtt.is_some() { "set" } else { "none" }.to_owned()),
        "neutral" => return Some(c.neutral.len().to_string()),
        "energy.timezone" => return Some(c.energy.timezone.clone().unwrap_or_else(|| "gateway".into())),
        "tariffs" => return Some(c.energy.tariffs.len().to_string()),
        _ => {}
    }
    if let Some(sel) = key.strip_prefix("tariff") {
        let (t, rest) = select(&c.energy.tariffs, |t| &t.name, sel)?;
        return Some(match rest.strip_prefix('.')? {
            "currency" => t.currency.clone(),
            "price" => t.price.to_string(),
            "standing_charge" => t.standing_charge.to_string(),
            "meters" => format!("{:?}", t.meters),
            "rates" => t
                .rates
                .iter()
                .map(|r| format!("{:?} {}-{} {}", r.days, r.from, r.to, r.price))
                .collect::<Vec<_>>()
                .join("; "),
            _ => return None,
        });
    }
    if let Some(k) = key.strip_prefix("mqtt.") {
        return mqtt_fact(c.mqtt.as_ref()?, k);
    }
    if let Some(k) = key.strip_prefix("alerts.email.") {
        return email_fact(c.email.as_ref()?, k);
    }
    if let Some(sel) = key.strip_prefix("neutral") {
        let (n, rest) = select(&c.neutral, |n| &n.name, sel)?;
        return neutral_fact(c, n, rest.strip_prefix('.')?);
    }
    if let Some(sel) = key.strip_prefix("bus") {
        let (b, rest) = select(&c.buses, |b| &b.name, sel)?;
        return bus_fact(b, rest.strip_prefix('.')?);
    }
    if let Some(sel) = key.strip_prefix("relay") {
        let (r, rest) = select(&c.relays, |r| &r.name, sel)?;
        return relay_fact(r, rest.strip_prefix('.')?);
    }
    if let Some(sel) = key.strip_prefix("trigger") {
        let (t, rest) = select(&c.triggers, |t| &t.name, sel)?;
        return trigger_fact(t, rest.strip_prefix('.')?);
    }
    if let Some(sel) = key.strip_prefix("meter") {
        let (m, rest) = select(&c.meters, |m| &m.name, sel)?;
        return meter_fact(m, rest.strip_prefix('.')?);
    }
    None
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect()
}

/// Checks one case; returns what is wrong with it.
fn check(dir: &Path, bless: bool) -> Result<(), String> {
    let src = fs::read_to_string(dir.join("pmtr.toml")).map_err(|e| format!("cannot read pmtr.toml: {e}"))?;
    let expected = fs::read_to_string(dir.join("expected.txt")).ok();
    let ok = fs::read_to_string(dir.join("ok.txt")).ok();
    let result = load_str(&src, "pmtr.toml");
    match (expected, ok) {
        (None, None) => Err("has neither expected.txt nor ok.txt".into()),
        (Some(_), Some(_)) => Err("has both expected.txt and ok.txt".into()),
        (Some(expected), None) => {
            let actual = match &result {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            };
            if bless && !actual.is_empty() {
                fs::write(dir.join("expected.txt"), format!("{actual}\n")).map_err(|e| e.to_string())?;
                return Ok(());
            }
            let (want, got) = (lines(&expected), lines(&actual));
            if want.is_empty() {
                return Err("expected.txt is empty: use ok.txt for a file that must load".into());
            }
            if want != got {
                return Err(format!(
                    "errors differ\n--- expected\n{}\n--- actual{}\n{}",
                    want.join("\n"),
                    if result.is_ok() { " (the file loads)" } else { "" },
                    got.join("\n")
                ));
            }
            Ok(())
        }
        (None, Some(ok)) => {
            let config = result.map_err(|e| format!("should load, but:\n{e}"))?;
            let mut wrong = Vec::new();
            for line in lines(&ok) {
                let line = line.trim();
                if line == "ok" || line.starts_with('#') {
                    continue;
                }
                let Some((key, want)) = line.split_once(" = ") else {
                    wrong.push(format!("ok.txt: not `key = value`: {line}"));
                    continue;
                };
                match fact(&config, key.trim()) {
                    Some(got) if got == want.trim() => {}
                    Some(got) => wrong.push(format!("{key}: expected {}, got {got}", want.trim())),
                    None => wrong.push(format!("{key}: no such fact")),
                }
            }
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(wrong.join("\n"))
            }
        }
    }
}

#[test]
fn config_cases() {
    let bless = std::env::var_os("PMTR_BLESS").is_some();
    let root = cases_dir();
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", root.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no case under {}", root.display());
    let failures: Vec<String> = dirs
        .iter()
        .filter_map(|dir| {
            let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
            check(dir, bless).err().map(|why| format!("== case {name}: {why}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n\n")
    );
    eprintln!("{} configuration cases passed", dirs.len());
}

#[test]
fn the_shipped_example_loads() {
    let src = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pmtr.toml")).unwrap();
    let config = load_str(&src, "pmtr.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fact(&config, "meter \"gen\".address").as_deref(), Some("6"));
    assert_eq!(fact(&config, "bus[0].line").as_deref(), Some("9600 8N1"));
}

/// The commented `[status]` and `[mqtt]` examples of the shipped file, uncommented, load and
/// give what their comments say.
#[test]
fn the_shipped_status_and_mqtt_examples_load_uncommented() {
    let src = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pmtr.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let mut section = None;
    for line in src.lines() {
        if let Some(s) = ["# [status]", "# [mqtt]"].into_iter().find(|s| line.trim_end() == *s) {
            section = Some(s);
        } else if !line.starts_with("# ") || line.starts_with("# ---") {
            section = None;
        }
        let Some(_) = section else { continue };
        let code = line.trim_start_matches("# ");
        if code.starts_with(' ') || code.starts_with('#') {
            continue; // a continued comment
        }
        // Files the examples name are made in a temporary folder.
        let code = code.split("  #").next().unwrap().trim_end().to_owned();
        let code = match code.split_once(" = \"/etc/pmtr/") {
            Some((key, file)) => {
                let file = file.trim_end_matches('"');
                let path = dir.path().join(file);
                let content = if file.ends_with(".pem") {
                    fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap()
                } else {
                    "0123456789abcdef0123456789abcdef\n".to_owned()
                };
                fs::write(&path, content).unwrap();
                format!("{key} = \"{}\"", path.display())
            }
            None => code,
        };
        text.push_str(&code);
        text.push('\n');
    }
    assert!(text.contains("[status]") && text.contains("[mqtt]"), "{text}");
    let file = format!("[[bus]]\nname = \"b\"\nports = [\"/dev/ttyUSB*\"]\n[[meter]]\nname = \"m\"\nmodel = \"pzem-016\"\naddress = 4\n{text}");
    // The examples turn TLS on where a CA file is given.
    let file = file.replace("tls = false", "tls = true").replace("port = 1883", "port = 8883");
    let config = load_str(&file, "pmtr.toml").unwrap_or_else(|e| panic!("{e}\n{file}"));
    assert_eq!(fact(&config, "status.listen").as_deref(), Some("127.0.0.1:9780"));
    assert_eq!(fact(&config, "status.token").as_deref(), Some("set"));
    assert_eq!(fact(&config, "mqtt.host").as_deref(), Some("192.168.1.10"));
    assert_eq!(fact(&config, "mqtt.password").as_deref(), Some("set"));
    assert_eq!(fact(&config, "mqtt.topic_prefix").as_deref(), Some("pmtr/house-pi"));
    assert_eq!(fact(&config, "mqtt.keep_alive").as_deref(), Some("30s"));
    assert_eq!(fact(&config, "mqtt.queue").as_deref(), Some("1000"));
}
