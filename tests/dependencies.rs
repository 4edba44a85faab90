//! Guards on the dependency tree that no compiler catches: the licence (MIT OR Apache-2.0, so
//! evalexpr stays on the MIT 11.x line: 12 and later are AGPL-3.0) and the Pi cross-builds
//! (rustls, never OpenSSL; no libudev).

fn locked_packages() -> Vec<(String, String)> {
    let lock =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).expect("Cargo.lock");
    let mut out = vec![];
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let Some(v) = line.strip_prefix("version = ") {
            if let Some(n) = name.take() {
                out.push((n, v.trim_matches('"').to_string()));
            }
        }
    }
    assert!(out.len() > 20, "Cargo.lock parsed to {} packages", out.len());
    out
}

#[test]
fn evalexpr_stays_on_the_mit_line() {
    for (name, version) in locked_packages() {
        if name == "evalexpr" {
            assert!(version.starts_with("11."), "evalexpr {version} is AGPL-3.0; pin \"=11.3\"");
        }
    }
}

#[test]
fn no_openssl_no_libudev() {
    for (name, version) in locked_packages() {
        assert!(
            !matches!(name.as_str(), "openssl-sys" | "openssl" | "native-tls" | "libudev-sys" | "libudev"),
            "{name} {version} is in the tree: use the rustls features and no libudev, so the Pi cross-builds need no target C libraries"
        );
    }
}

/// lettre's default features pull native-tls (OpenSSL on Linux): pmtr uses
/// `tokio1-rustls-tls` with `default-features = false`.
#[test]
fn lettre_uses_rustls_not_native_tls() {
    let packages = locked_packages();
    assert!(packages.iter().any(|(n, _)| n == "lettre"), "lettre is not in Cargo.lock");
    let lock =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).expect("Cargo.lock");
    let lettre = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"lettre\""))
        .expect("lettre's entry in Cargo.lock");
    // Dependency lines read ` "rustls 0.23.46",` (the version only when two are locked).
    let deps: Vec<&str> = lettre
        .lines()
        .filter_map(|l| l.trim().strip_prefix('"'))
        .filter_map(|l| l.trim_end_matches(',').trim_end_matches('"').split(' ').next())
        .collect();
    for forbidden in ["native-tls", "tokio-native-tls", "openssl", "boring"] {
        assert!(
            !deps.contains(&forbidden),
            "lettre depends on {forbidden}: keep default-features = false and the tokio1-rustls-tls feature"
        );
    }
    assert!(deps.contains(&"rustls"), "lettre has no rustls dependency: {deps:?}");
}
