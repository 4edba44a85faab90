//! `pmtr energy`: lifetime totals, periods and costs per meter from the saved books;
//! `pmtr energy set`: align a total, through the running daemon or in the file when it is stopped.

use crate::config::Config;
use crate::control::{ClientError, Request, Response};
use crate::energy::book::{Book, PeriodTotal};
use crate::energy::{run, saved};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt::Write;

#[derive(Serialize)]
struct Report<'a> {
    timezone: String,
    /// When the daemon last saved the books (it does every minute and at stop).
    saved: Option<DateTime<Utc>>,
    meters: Vec<MeterReport<'a>>,
}

#[derive(Serialize)]
struct MeterReport<'a> {
    meter: &'a str,
    /// Lifetime totals by counter name.
    totals: std::collections::BTreeMap<&'a str, f64>,
    periods: Vec<PeriodTotal>,
}

fn report<'a>(book: &'a Book, saved: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Report<'a> {
    let meters = book
        .books
        .meters
        .iter()
        .map(|(m, b)| MeterReport {
            meter: m,
            totals: b.counters.iter().map(|(n, c)| (n.as_str(), c.total)).collect(),
            periods: book.periods(m, now),
        })
        .collect();
    Report { timezone: book.tz.to_string(), saved, meters }
}

/// The human table.
pub fn table(book: &Book, saved: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let r = report(book, saved, now);
    let mut out = String::new();
    let when = saved
        .map_or("never".to_string(), |t| t.with_timezone(&book.tz).format("%Y-%m-%d %H:%M:%S").to_string());
    let _ =
        writeln!(out, "energy books saved {when} ({}); * partial: pmtr did not see all of it", r.timezone);
    if r.meters.is_empty() {
        let _ = writeln!(out, "no meter has been read yet");
    }
    for m in &r.meters {
        let _ = writeln!(out, "\n{}", m.meter);
        for (name, total) in &m.totals {
            let _ = writeln!(out, "  lifetime {name:<24} {total:>14.3}");
        }
        let tariffs: Vec<String> = m
            .periods
            .first()
            .map_or(vec![], |p| p.costs.iter().map(|c| format!("{} ({})", c.tariff, c.currency)).collect());
        let _ = write!(out, "  {:<12} {:<23} {:>12}", "period", "dates", "kWh");
        for t in &tariffs {
            let _ = write!(out, " {t:>16}");
        }
        out.push('\n');
        for p in &m.periods {
            let dates = if p.from == p.to { p.from.to_string() } else { format!("{}..{}", p.from, p.to) };
            let mark = if p.partial { "*" } else { "" };
            let _ = write!(out, "  {:<12} {dates:<23} {:>11.3}{mark:1}", p.period.name(), p.kwh);
            for c in &p.costs {
                let _ = write!(out, " {:>16.2}", c.total);
            }
            out.push('\n');
        }
    }
    out
}

/// `pmtr energy [--json]`.
pub fn show(config: &Config, json: bool) -> Result<(), String> {
    let path = saved::path_in(&config.gateway.state_dir);
    if let saved::Loaded::Damaged { error, .. } = saved::load(&path) {
        return Err(format!("{}: {error} (moved aside)", path.display()));
    }
    let saved_at = std::fs::metadata(&path).and_then(|m| m.modified()).ok().map(DateTime::<Utc>::from);
    let book = run::open(config, &path);
    let now = Utc::now();
    let text = if json {
        serde_json::to_string_pretty(&report(&book, saved_at, now)).map_err(|e| e.to_string())? + "\n"
    } else {
        table(&book, saved_at, now)
    };
    // A closed pipe (`| head`) ends the output, quietly.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    Ok(())
}

/// `pmtr energy set METER [COUNTER] VALUE`: through the daemon's control socket when it
/// answers; in the file when no pmtr runs.
pub async fn set(config: &Config, meter: &str, counter: Option<&str>, value: f64) -> Result<(), String> {
    let request = Request::EnergySet { meter: meter.into(), counter: counter.map(String::from), value };
    match crate::control::client::request(&config.gateway.control_socket, &request).await {
        Ok(Response::Done { message }) => {
            println!("{message}");
            return Ok(());
        }
        Ok(Response::Error { message }) => return Err(message),
        Ok(other) => return Err(format!("the daemon answered something unexpected: {other:?}")),
        // No daemon on the socket: the file, unless a pmtr without a socket runs.
        Err(ClientError::NotRunning { .. }) => {}
        Err(e) => return Err(e.to_string()),
    }
    if let Some(pid) = running(config) {
        return Err(format!(
            "pmtr runs (pid {pid}) without a control socket (it has one only with relays or triggers): \
             stop it (systemctl stop pmtr), set the total, start it again"
        ));
    }
    let path = saved::path_in(&config.gateway.state_dir);
    let mut book = run::open(config, &path);
    let (name, old) = book.set_total(meter, counter, value).map_err(|e| e.to_string())?;
    saved::save(&path, &book.books).map_err(|e| format!("{}: {e}", path.display()))?;
    tracing::info!(%meter, counter = %name, old, new = value, "energy total set by hand");
    println!("{meter} {name}: total set to {value} kWh (was {old}) in {}", path.display());
    Ok(())
}

/// The pid of a pmtr running on this state folder (its run marker, and the process alive).
fn running(config: &Config) -> Option<i32> {
    let text = std::fs::read_to_string(crate::alert::run::running_marker(config)).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    (alive && pid != std::process::id() as i32).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::book::Books;
    use crate::energy::tariff::Tariff;
    use crate::meter::Model;
    use crate::reading::{Phase, Quality, Quantity, Reading, Sample};

    #[test]
    fn the_table_shows_totals_periods_and_costs() {
        let tariff = Tariff {
            name: "home".into(),
            currency: "EUR".into(),
            price: 0.5,
            standing_charge: 0.0,
            meters: vec![],
            rates: vec![],
        };
        let mut book =
            Book::new(chrono_tz::Europe::Berlin, vec![tariff], Default::default(), Books::default());
        for (t, e) in [("2026-07-01T10:00:00Z", 10.0), ("2026-07-01T10:30:00Z", 12.0)] {
            book.record(&Reading {
                meter: "main".into(),
                model: Model::Pzem016,
                time: t.parse().unwrap(),
                samples: vec![Sample::new(Phase::L1, Quantity::ActiveEnergy, e)],
                quality: Quality::default(),
            });
        }
        let text = table(&book, None, "2026-07-01T11:00:00Z".parse().unwrap());
        assert!(text.contains("lifetime l1_energy"), "{text}");
        assert!(text.contains("12.000"), "{text}");
        let today = text.lines().find(|l| l.trim_start().starts_with("today")).unwrap();
        assert!(today.contains("2.000*") && today.contains("1.00"), "{today}");
    }
}
