//! Guards on the dependency tree that no compiler catches: the licence (MIT OR Apache-2.0, so
//! evalexpr stays on the MIT 11.x line: 12 and later are AGPL-3.0) and the Pi cross-builds
//! (rustls, never OpenSSL; no libudev). And one on the link: build.rs packs the executable's
//! relative relocations where the C library can load the result.

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

/// build.rs links `pmtr` with packed relative relocations (DT_RELR) when the C library it is
/// built on, and so runs on, is glibc 2.36 or later, and without them otherwise (an older
/// loader refuses such an executable).
#[test]
fn the_executable_packs_its_relocations_where_the_c_library_can_load_them() {
    let bin = env!("CARGO_BIN_EXE_pmtr");
    let libc = std::process::Command::new("getconf").arg("GNU_LIBC_VERSION").output().expect("getconf");
    let libc = String::from_utf8_lossy(&libc.stdout).trim().to_string();
    let version: Vec<u32> =
        libc.trim_start_matches("glibc ").split('.').map(|p| p.parse().expect("glibc x.y")).collect();
    let o = std::process::Command::new("readelf").args(["-d", bin]).output().expect("readelf (binutils)");
    assert!(o.status.success(), "readelf -d {bin}: {}", String::from_utf8_lossy(&o.stderr));
    let dynamic = String::from_utf8_lossy(&o.stdout);
    let elf = std::fs::read(bin).unwrap();
    let names_relr = elf.windows(17).any(|w| w == b"GLIBC_ABI_DT_RELR");
    if version >= vec![2, 36] {
        assert!(dynamic.contains("(RELR)"), "{libc}: {bin} has no DT_RELR:\n{dynamic}");
        assert!(names_relr, "{libc}: {bin} has DT_RELR but does not name GLIBC_ABI_DT_RELR");
    } else {
        assert!(!dynamic.contains("(RELR)") && !names_relr, "{libc} cannot load {bin}: it has DT_RELR");
    }
}
