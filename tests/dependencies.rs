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
