//! How the `pmtr` executable is linked.
//!
//! On glibc Linux its relative relocations are packed (`-z pack-relative-relocs`, a DT_RELR
//! table): a position-independent executable otherwise carries a 24-byte record for every
//! pointer the loader must adjust (about 1.5 MB here), which the loader reads at each start
//! and which stays resident. Packed, it is a few tens of kilobytes, and the daemon's resident
//! memory falls by about 2 MiB (BENCHMARKS.md, "Footprint"). The executable then needs glibc
//! 2.36 or later (it names the `GLIBC_ABI_DT_RELR` version), so a native build on an older
//! system does not pack; `deploy/build-deb.sh` writes the floor into the packages' Depends. A
//! linker that does not know the option (GNU ld before 2.41 for ARM) warns and links as
//! before; `deploy/cross-env.sh` links the Pi builds with Rust's lld.
//!
//! Its steady-state functions are laid out together at the start of its code: the linker
//! script `link/hot-text.ld` (an `INSERT BEFORE .text`, which GNU ld and lld both take as an
//! addition to their default layout) names them; `link/hot-text.sh` writes it and says why.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/hot-text.ld");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    let hot = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("link/hot-text.ld");
    if hot.is_file() {
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", hot.display());
    }
    // A native build runs where it is built: pack only if this C library can load it. A cross
    // build is for the Pi packages, built against Debian bookworm's C library (2.36).
    if var("HOST") == var("TARGET") && !host_glibc_at_least(2, 36) {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}

/// Whether `getconf GNU_LIBC_VERSION` ("glibc 2.36") says at least `major.minor`.
fn host_glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.trim().trim_start_matches("glibc ").split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b))) => (a, b) >= (major, minor),
        _ => false,
    }
}
