//! `systemd/pmtr.service` as systemd reads it: `systemd-analyze verify` finds nothing to say
//! about it (with the binary where the unit names it), and the sandboxing scores under 2.5 with
//! `systemd-analyze security --offline=yes`, the figure the README gives.

use std::path::Path;
use std::process::Command;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/pmtr.service");

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze").args(args).output().unwrap_or_else(|e| {
        panic!(
            "systemd-analyze cannot run ({e}): it comes with the `systemd` package (apt-get install systemd)"
        )
    })
}

/// The overall exposure `systemd-analyze security` gives the unit.
fn exposure() -> f64 {
    let out = systemd_analyze(&["security", "--offline=yes", "--no-pager", UNIT]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for pmtr.service:"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    line.split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure in {line:?}"))
}

#[test]
fn the_sandboxing_scores_under_2_5_and_the_readme_says_so() {
    let score = exposure();
    assert!(score < 2.5, "exposure {score}: tighten systemd/pmtr.service");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let claim = format!("exposure level **{score:.1}**");
    assert!(readme.contains(&claim), "README.md should say {claim:?} (what systemd-analyze gives now)");
}

#[test]
fn the_unit_verifies_clean() {
    // A root with the binary and the unit where the package puts them, and systemd's own units.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in ["usr/bin", "bin", "lib/systemd/system"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::copy(env!("CARGO_BIN_EXE_pmtr"), r.join("usr/bin/pmtr")).unwrap();
    std::fs::copy("/bin/kill", r.join("bin/kill")).expect("/bin/kill (procps)");
    for e in
        std::fs::read_dir("/lib/systemd/system").expect("systemd's units in /lib/systemd/system").flatten()
    {
        let p = e.path();
        if p.is_file() {
            std::fs::copy(&p, r.join("lib/systemd/system").join(e.file_name())).unwrap();
        }
    }
    std::fs::copy(UNIT, r.join("lib/systemd/system/pmtr.service")).unwrap();
    let out = systemd_analyze(&["verify", "--man=no", &format!("--root={}", r.display()), "pmtr.service"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
    assert!(Path::new(&r.join("usr/bin/pmtr")).exists());
}

#[test]
fn the_unit_is_what_the_daemon_does() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    // pmtr sends READY=1 and feeds the watchdog (tests/service.rs checks that it does).
    assert!(has("Type=notify") && has("NotifyAccess=main"), "{unit}");
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")), "{unit}");
    // SIGHUP reloads (tests/service.rs), SIGTERM stops within the stop timeout.
    assert!(has("ExecReload=/bin/kill -HUP $MAINPID"), "{unit}");
    assert!(has("Restart=on-failure"), "{unit}");
    assert!(has("ExecStart=/usr/bin/pmtr run --config /etc/pmtr/pmtr.toml"), "{unit}");
    assert!(has("SupplementaryGroups=dialout gpio") && has("User=pmtr"), "{unit}");
    assert!(has("StateDirectory=pmtr") && has("ConfigurationDirectory=pmtr"), "{unit}");
}

#[test]
fn the_unit_leaves_descriptors_beyond_the_status_api_connections() {
    // `[status] max_connections` is at most 1024: the soft limit of 1024 would let the API take
    // every descriptor the spool, the ports and the state files need.
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let limit: u64 = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("LimitNOFILE="))
        .unwrap_or_else(|| panic!("no LimitNOFILE= in the unit:\n{unit}"))
        .parse()
        .expect("LimitNOFILE= a number");
    assert!(limit >= 1024 + 4096, "LimitNOFILE={limit}");
}
