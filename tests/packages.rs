//! The Debian packages that `deploy/build-deb.sh` writes to `target/deb/` (tests/run.sh builds
//! them before `cargo test`; a missing package fails these tests, it is never skipped): the files
//! against the table in deploy/README.md, the control fields and maintainer scripts, the
//! binaries' ELF headers, the binaries run under qemu-user, the udev rules, and, as root, the
//! maintainer scripts through install, upgrade, remove and purge in a private mount namespace
//! (tests/support/maintainer-scripts.sh).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One package's architecture: how to recognise and run its binary.
struct Arch {
    /// Debian's name.
    deb: &'static str,
    qemu: &'static str,
    /// The root for qemu's `-L`: the cross C library of Debian's libc6-*-cross.
    sysroot: &'static str,
    elf64: bool,
    /// ELF e_machine: EM_AARCH64 or EM_ARM.
    machine: u16,
    interpreter: &'static str,
}

const ARM64: Arch = Arch {
    deb: "arm64",
    qemu: "qemu-aarch64-static",
    sysroot: "/usr/aarch64-linux-gnu",
    elf64: true,
    machine: 183,
    interpreter: "/lib/ld-linux-aarch64.so.1",
};
const ARMHF: Arch = Arch {
    deb: "armhf",
    qemu: "qemu-arm-static",
    sysroot: "/usr/arm-linux-gnueabihf",
    elf64: false,
    machine: 40,
    interpreter: "/lib/ld-linux-armhf.so.3",
};
const ARCHES: [&Arch; 2] = [&ARM64, &ARMHF];

const MAINTAINER_SCRIPTS: [&str; 4] = ["preinst", "postinst", "prerm", "postrm"];

fn source(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn deb(arch: &Arch) -> PathBuf {
    let p = source(&format!("target/deb/pmtr_{VERSION}_{}.deb", arch.deb));
    assert!(
        p.is_file(),
        "{} is missing: run deploy/build-deb.sh first (tests/run.sh does, before cargo test)",
        p.display()
    );
    p
}

/// Runs `cmd`; a program that is not there is a panic saying what to install.
fn output(cmd: &mut Command, install: &str) -> Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{:?} not found: {install}", cmd.get_program())
        }
        Err(e) => panic!("{cmd:?}: {e}"),
    }
}

/// Runs `cmd`, which must succeed, and returns its stdout.
fn stdout_of(cmd: &mut Command, install: &str) -> String {
    let o = output(cmd, install);
    assert!(o.status.success(), "{cmd:?}: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

const DPKG: &str = "apt-get install dpkg-dev (deploy/build-deb.sh installs it)";
const QEMU: &str = "apt-get install qemu-user-static (deploy/build-deb.sh installs it)";

/// A package unpacked: `data` holds its files (`dpkg-deb -x`), `control` its DEBIAN files
/// (`dpkg-deb -e`).
struct Unpacked {
    _dir: tempfile::TempDir,
    data: PathBuf,
    control: PathBuf,
}

fn unpack(arch: &Arch) -> Unpacked {
    let deb = deb(arch);
    let dir = tempfile::tempdir().unwrap();
    let (data, control) = (dir.path().join("data"), dir.path().join("control"));
    stdout_of(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&data), DPKG);
    stdout_of(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control), DPKG);
    Unpacked { _dir: dir, data, control }
}

fn field(arch: &Arch, name: &str) -> String {
    stdout_of(Command::new("dpkg-deb").arg("-f").arg(deb(arch)).arg(name), DPKG).trim().to_string()
}

/// The rows of the table between `<!-- MARKER` and `<!-- /MARKER -->` in deploy/README.md, as
/// trimmed cells, without the header row and its separator.
fn readme_table(marker: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(source("deploy/README.md")).unwrap();
    let start = text
        .find(&format!("<!-- {marker}"))
        .unwrap_or_else(|| panic!("deploy/README.md has no `<!-- {marker}` section"));
    let len = text[start..]
        .find(&format!("<!-- /{marker} -->"))
        .unwrap_or_else(|| panic!("deploy/README.md: the `{marker}` section has no `<!-- /{marker} -->`"));
    let rows: Vec<Vec<String>> = text[start..start + len]
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    assert!(!rows.is_empty(), "deploy/README.md: the `{marker}` table is empty");
    rows
}

/// `text` without its surrounding backquotes, if it is one `code` span.
fn code(text: &str) -> Option<&str> {
    text.strip_prefix('`')?.strip_suffix('`').filter(|s| !s.contains('`'))
}

/// Package path → the cell "from" of deploy/README.md's table of package contents.
fn promised_files() -> BTreeMap<String, String> {
    readme_table("package-contents")
        .into_iter()
        .map(|row| {
            let path =
                code(&row[0]).unwrap_or_else(|| panic!("deploy/README.md: `{}` is not a `path`", row[0]));
            (path.to_string(), row.get(1).cloned().unwrap_or_default())
        })
        .collect()
}

#[test]
fn each_package_holds_exactly_the_files_deploy_readme_lists() {
    let promised = promised_files();
    assert!(promised.contains_key("/usr/bin/pmtr") && promised.contains_key("/etc/pmtr/pmtr.toml"));
    for arch in ARCHES {
        let deb = deb(arch);
        let listing = stdout_of(Command::new("dpkg-deb").arg("--contents").arg(&deb), DPKG);
        let mut files = BTreeSet::new();
        for line in listing.lines() {
            // drwxr-xr-x root/root         0 2026-11-21 23:35 ./etc/
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 6, "{}: unexpected line in dpkg-deb --contents: {line}", deb.display());
            let (mode, owner, path) = (f[0], f[1], f[5].trim_start_matches('.'));
            assert_eq!(owner, "root/root", "{}: {path} belongs to {owner}", deb.display());
            match mode.as_bytes()[0] {
                b'd' => assert_eq!(mode, "drwxr-xr-x", "{}: directory {path}", deb.display()),
                b'-' => {
                    let want = if path == "/usr/bin/pmtr" { "-rwxr-xr-x" } else { "-rw-r--r--" };
                    assert_eq!(mode, want, "{}: mode of {path}", deb.display());
                    files.insert(path.to_string());
                }
                _ => panic!("{}: {path} is {mode}: the packages hold plain files only", deb.display()),
            }
        }
        let listed: BTreeSet<String> = promised.keys().cloned().collect();
        let extra: Vec<_> = files.difference(&listed).collect();
        let missing: Vec<_> = listed.difference(&files).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "{}: in the package but not in deploy/README.md's table: {extra:?}; in the table but not in the package: {missing:?}",
            deb.display()
        );

        // The copies are their sources, byte for byte.
        let unpacked = unpack(arch);
        let mut compared = 0;
        for (path, from) in &promised {
            let Some(from) = code(from) else { continue };
            let src = source(from);
            assert!(
                src.is_file(),
                "deploy/README.md names {from} as the source of {path}; there is no such file"
            );
            let packaged = unpacked.data.join(path.trim_start_matches('/'));
            assert!(
                std::fs::read(&packaged).unwrap() == std::fs::read(&src).unwrap(),
                "{}: {path} differs from {from} (rebuild with deploy/build-deb.sh)",
                deb.display()
            );
            compared += 1;
        }
        assert!(compared >= 8, "only {compared} files compared with their sources");
    }
}

/// The newest `GLIBC_x.y` symbol version named in an ELF file (its version needs are strings in
/// .dynstr), or 2.36 if it names `GLIBC_ABI_DT_RELR` and nothing newer.
fn newest_glibc(elf: &[u8]) -> String {
    let mut newest: Option<Vec<u32>> = None;
    let tag = b"GLIBC_2.";
    let mut i = 0;
    while let Some(at) = elf[i..].windows(tag.len()).position(|w| w == tag) {
        let start = i + at + "GLIBC_".len();
        let end = start + elf[start..].iter().take_while(|b| b.is_ascii_digit() || **b == b'.').count();
        let parts: Vec<u32> = std::str::from_utf8(&elf[start..end])
            .unwrap()
            .split('.')
            .filter_map(|p| p.parse().ok())
            .collect();
        if newest.as_ref().is_none_or(|n| parts > *n) {
            newest = Some(parts);
        }
        i = end;
    }
    let mut newest = newest.expect("no GLIBC_2.x symbol version in the binary");
    // Packed relative relocations (build.rs) need the loader of glibc 2.36 or later.
    if elf.windows(17).any(|w| w == b"GLIBC_ABI_DT_RELR") && newest < vec![2, 36] {
        newest = vec![2, 36];
    }
    newest.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
}

#[test]
fn control_fields_conffiles_and_maintainer_scripts() {
    for arch in ARCHES {
        let deb = deb(arch);
        assert_eq!(field(arch, "Package"), "pmtr");
        assert_eq!(field(arch, "Version"), VERSION);
        assert_eq!(field(arch, "Architecture"), arch.deb, "{}", deb.display());
        assert_eq!(field(arch, "Section"), "misc");
        assert_eq!(field(arch, "Priority"), "optional");
        let maintainer = field(arch, "Maintainer");
        assert!(maintainer.contains(" <") && maintainer.ends_with('>'), "Maintainer: {maintainer}");
        assert!(field(arch, "Description").starts_with("metering gateway"));
        let size: u64 = field(arch, "Installed-Size").parse().expect("Installed-Size is a number");
        assert!((2_000..50_000).contains(&size), "Installed-Size {size} KiB");

        // Depends: the C library no older than what the binary imports.
        let unpacked = unpack(arch);
        let glibc = newest_glibc(&std::fs::read(unpacked.data.join("usr/bin/pmtr")).unwrap());
        let depends = field(arch, "Depends");
        let depends: Vec<&str> = depends.split(',').map(str::trim).collect();
        assert!(depends.contains(&"adduser"), "{}: Depends {depends:?}", deb.display());
        let libc = format!("libc6 (>= {glibc})");
        assert!(
            depends.contains(&libc.as_str()),
            "{}: the binary needs GLIBC_{glibc}, so Depends must have {libc}: {depends:?}",
            deb.display()
        );

        let control = &unpacked.control;
        assert_eq!(std::fs::read_to_string(control.join("conffiles")).unwrap(), "/etc/pmtr/pmtr.toml\n");
        let mut members: Vec<String> = std::fs::read_dir(control)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        members.sort();
        assert_eq!(members, ["conffiles", "control", "md5sums", "postinst", "postrm", "preinst", "prerm"]);
        for script in MAINTAINER_SCRIPTS {
            let path = control.join(script);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o755, "{}: DEBIAN/{script} has mode {mode:o}", deb.display());
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.starts_with("#!/bin/sh\n"), "DEBIAN/{script}: not a POSIX sh script");
            assert!(text.contains("\nset -e\n"), "DEBIAN/{script}: no `set -e`");
            let o = output(Command::new("sh").arg("-n").arg(&path), "sh (dash) is missing");
            assert!(o.status.success(), "sh -n DEBIAN/{script}: {}", String::from_utf8_lossy(&o.stderr));
        }

        // md5sums: every file, each sum right.
        let sums = std::fs::read_to_string(control.join("md5sums")).unwrap();
        assert_eq!(sums.lines().count(), promised_files().len(), "{}: md5sums:\n{sums}", deb.display());
        let o = output(
            Command::new("md5sum")
                .args(["--check", "--quiet", "--strict"])
                .arg(control.join("md5sums"))
                .current_dir(&unpacked.data),
            "md5sum (coreutils) is missing",
        );
        assert!(o.status.success(), "{}: md5sums: {}", deb.display(), String::from_utf8_lossy(&o.stdout));
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The program interpreter (PT_INTERP) of a little-endian ELF file.
fn interpreter(elf: &[u8], elf64: bool) -> Option<String> {
    let (phoff, phentsize, phnum) = if elf64 {
        (u64_at(elf, 0x20) as usize, u16_at(elf, 0x36) as usize, u16_at(elf, 0x38) as usize)
    } else {
        (u32_at(elf, 0x1c) as usize, u16_at(elf, 0x2a) as usize, u16_at(elf, 0x2c) as usize)
    };
    (0..phnum).map(|i| &elf[phoff + i * phentsize..]).find(|ph| u32_at(ph, 0) == 3).map(|ph| {
        let (offset, size) = if elf64 {
            (u64_at(ph, 8) as usize, u64_at(ph, 32) as usize)
        } else {
            (u32_at(ph, 4) as usize, u32_at(ph, 16) as usize)
        };
        String::from_utf8_lossy(&elf[offset..offset + size]).trim_end_matches('\0').to_string()
    })
}

#[test]
fn the_binaries_are_built_for_the_pi() {
    for arch in ARCHES {
        let unpacked = unpack(arch);
        let elf = std::fs::read(unpacked.data.join("usr/bin/pmtr")).unwrap();
        let what = format!("/usr/bin/pmtr of the {} package", arch.deb);
        assert_eq!(&elf[..4], b"\x7fELF", "{what}: not an ELF file");
        assert_eq!(elf[4], if arch.elf64 { 2 } else { 1 }, "{what}: ELF class");
        assert_eq!(elf[5], 1, "{what}: not little-endian");
        assert!(matches!(u16_at(&elf, 16), 2 | 3), "{what}: not an executable (e_type {})", u16_at(&elf, 16));
        assert_eq!(u16_at(&elf, 18), arch.machine, "{what}: e_machine");
        if !arch.elf64 {
            // ARM: EABI version 5, hard-float calling convention (VFP registers).
            let flags = u32_at(&elf, 0x24);
            assert_eq!(flags & 0xff00_0000, 0x0500_0000, "{what}: not EABI5 (e_flags {flags:#x})");
            assert_ne!(flags & 0x400, 0, "{what}: not hard-float (e_flags {flags:#x})");
        }
        assert_eq!(interpreter(&elf, arch.elf64).as_deref(), Some(arch.interpreter), "{what}: interpreter");
        // Stripped: no symbol table section name left.
        assert!(!elf.windows(8).any(|w| w == b".symtab\0"), "{what} is not stripped");
    }
}

/// The packaged binary of `arch` under qemu-user with `args`.
fn run_packaged(arch: &Arch, unpacked: &Unpacked, args: &[&OsStr]) -> Output {
    output(
        Command::new(arch.qemu)
            .arg("-L")
            .arg(arch.sysroot)
            .arg(unpacked.data.join("usr/bin/pmtr"))
            .args(args),
        QEMU,
    )
}

#[test]
fn the_packaged_binaries_run_under_qemu() {
    for arch in ARCHES {
        assert!(
            Path::new(arch.sysroot).join("lib").is_dir(),
            "{} is missing: apt-get install libc6-dev-{}-cross (deploy/build-deb.sh installs it)",
            arch.sysroot,
            if arch.deb == "arm64" { "arm64" } else { "armhf" }
        );
        let unpacked = unpack(arch);
        let o = run_packaged(arch, &unpacked, &["--version".as_ref()]);
        assert!(o.status.success(), "{} --version: {}", arch.deb, String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout), format!("pmtr {VERSION}\n"));

        let config = unpacked.data.join("etc/pmtr/pmtr.toml");
        let o = run_packaged(arch, &unpacked, &["check-config".as_ref(), config.as_os_str()]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{} check-config: {out}{}", arch.deb, String::from_utf8_lossy(&o.stderr));
        assert!(out.contains(": ok (1 bus(es), 3 meter(s)"), "{} check-config: {out}", arch.deb);

        // And it does check: a misspelt key is an error with its line.
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains("\naddress = 4\n"));
        let bad = unpacked.data.join("bad.toml");
        std::fs::write(&bad, text.replacen("\naddress = 4\n", "\nadress = 4\n", 1)).unwrap();
        let o = run_packaged(arch, &unpacked, &["check-config".as_ref(), bad.as_os_str()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{} check-config of a bad file: {err}", arch.deb);
        assert!(err.contains(".adress: unknown key (did you mean `address`?)"), "{}: {err}", arch.deb);
    }
}

/// build.rs packs the executable's relative relocations (DT_RELR) on both Pi targets, which
/// Debian's GNU ld for ARM cannot do: deploy/cross-env.sh links them with Rust's lld.
#[test]
fn the_packaged_binaries_pack_their_relative_relocations() {
    for arch in ARCHES {
        let out = readelf(arch, &["-d", "-S", "-W"]);
        assert!(out.contains("(RELR)"), "{}: no DT_RELR in its dynamic section:\n{out}", arch.deb);
        // What is left unpacked (relocations against symbols) is small: without packing, the
        // table holds a record for every pointer the loader adjusts (about 62,000, 1.5 MB).
        let size = section_size(arch, &out, &[".rela.dyn", ".rel.dyn"]);
        assert!(size < 64 * 1024, "{}: {size} bytes of unpacked relocations", arch.deb);
    }
}

/// The Pi's binaries lay out the daemon's steady-state functions together, as the x86 build
/// does (`link/hot-text.ld`, whose names are written on x86 and must match on ARM too: v0
/// symbol names with the crate hashes left open). About 0.4 MB on every architecture; a
/// section far smaller means the names stopped matching there.
#[test]
fn the_packaged_binaries_lay_out_their_steady_state_code_together() {
    for arch in ARCHES {
        let out = readelf(arch, &["-S", "-W"]);
        let size = section_size(arch, &out, &[".text.hot"]);
        assert!(size >= 200_000, "{}: .text.hot holds only {size} bytes", arch.deb);
    }
}

/// `readelf ARGS` of the packaged `usr/bin/pmtr`.
fn readelf(arch: &Arch, args: &[&str]) -> String {
    let unpacked = unpack(arch);
    let bin = unpacked.data.join("usr/bin/pmtr");
    let o = Command::new("readelf").args(args).arg(&bin).output().expect("readelf (binutils)");
    assert!(o.status.success(), "readelf {}: {}", bin.display(), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The size of the first of `names` in `readelf -S -W` output (the fourth field after the name).
fn section_size(arch: &Arch, readelf: &str, names: &[&str]) -> u64 {
    let line = readelf
        .lines()
        .find(|l| names.iter().any(|n| l.contains(&format!(" {n} "))))
        .unwrap_or_else(|| panic!("{}: no {names:?} section:\n{readelf}", arch.deb));
    line.split_whitespace()
        .skip_while(|w| !names.contains(w))
        .nth(4)
        .and_then(|w| u64::from_str_radix(w, 16).ok())
        .unwrap_or_else(|| panic!("{}: no size in {line:?}", arch.deb))
}

/// Whether `name` matches udev's shell-style `pattern` (`*`, `?`, `[a-z0-9]`; no `|`).
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, _) => name.is_empty(),
        (Some(b'*'), _) => glob(&pattern[1..], name) || (!name.is_empty() && glob(pattern, &name[1..])),
        (Some(_), None) => false,
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &name[1..]),
        (Some(b'['), Some(&c)) => {
            let end = pattern.iter().position(|&b| b == b']').expect("unclosed [ in a udev pattern");
            let class = &pattern[1..end];
            let mut i = 0;
            let mut hit = false;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= (class[i]..=class[i + 2]).contains(&c);
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit && glob(&pattern[end + 1..], &name[1..])
        }
        (Some(p), Some(c)) => p == c && glob(&pattern[1..], &name[1..]),
    }
}

/// One udev rule: its (key, operator, value) in order. Rejects unknown keys, operators that do
/// not fit the key, unquoted values and stray text, as udev's parser would.
fn parse_rule(line: &str) -> Result<Vec<(String, String, String)>, String> {
    const MATCH: [&str; 8] =
        ["ACTION", "KERNEL", "SUBSYSTEM", "KERNELS", "SUBSYSTEMS", "DRIVERS", "ATTR", "ATTRS"];
    const ASSIGN: [&str; 5] = ["GROUP", "MODE", "OWNER", "TAG", "SYMLINK"];
    let mut out = vec![];
    let mut rest = line.trim();
    while !rest.is_empty() {
        let key_len = rest.find(|c: char| !(c.is_ascii_uppercase() || c == '_')).unwrap_or(rest.len());
        let (name, mut after) = rest.split_at(key_len);
        let mut key = name.to_string();
        if let Some(attr) = after.strip_prefix('{') {
            let close = attr.find('}').ok_or(format!("unclosed {{ after {name}"))?;
            key = format!("{name}{{{}}}", &attr[..close]);
            after = &attr[close + 1..];
        }
        let op = ["==", "!=", "+=", "-=", ":=", "="]
            .into_iter()
            .find(|op| after.starts_with(op))
            .ok_or(format!("no operator after {key}"))?;
        let value_start =
            after[op.len()..].strip_prefix('"').ok_or(format!("{key}{op}: the value is not quoted"))?;
        let close = value_start.find('"').ok_or(format!("{key}{op}: unclosed quote"))?;
        let value = &value_start[..close];
        let is_match = op == "==" || op == "!=";
        let known = if name == "ENV" {
            key.len() > 5
        } else if is_match {
            MATCH.contains(&name) && (name.starts_with("ATTR") == (key.len() > name.len()))
        } else {
            ASSIGN.contains(&name) && key.len() == name.len()
        };
        if !known {
            return Err(format!(
                "{key}{op}\"{value}\": not a udev {} key",
                if is_match { "match" } else { "assignment" }
            ));
        }
        out.push((key, op.to_string(), value.to_string()));
        rest = value_start[close + 1..].trim_start();
        if !rest.is_empty() {
            rest = rest.strip_prefix(',').ok_or(format!("expected `,` before {rest}"))?.trim_start();
            if rest.is_empty() {
                return Err("a trailing comma".into());
            }
        }
    }
    if !out.iter().any(|(_, op, _)| op == "==" || op == "!=") || !out.iter().any(|(_, op, _)| op == "=") {
        return Err("a rule needs a match and an assignment".into());
    }
    Ok(out)
}

#[test]
fn the_udev_rule_parser_rejects_what_udev_rejects() {
    let good = r#"SUBSYSTEM=="tty", ATTRS{idVendor}=="1a86", GROUP="dialout", MODE="0660""#;
    assert_eq!(parse_rule(good).unwrap().len(), 4);
    for bad in [
        r#"SUBSYTEM=="tty", GROUP="dialout""#,
        r#"SUBSYSTEM=="tty" GROUP="dialout""#,
        r#"SUBSYSTEM=="tty", GROUP=dialout"#,
        r#"SUBSYSTEM=="tty", GROUP="dialout","#,
        r#"SUBSYSTEM=="tty", GROUP=="dialout""#,
        r#"SUBSYSTEM="tty", GROUP="dialout""#,
        r#"ATTRS=="x", GROUP="dialout""#,
        r#"SUBSYSTEM=="tty""#,
    ] {
        assert!(parse_rule(bad).is_err(), "accepted: {bad}");
    }
    assert!(glob(b"gpiomem[0-9]*", b"gpiomem4") && !glob(b"gpiomem[0-9]*", b"gpiomem"));
    assert!(glob(b"gpiochip*", b"gpiochip0") && !glob(b"gpiochip?", b"gpiochip12"));
}

#[test]
fn the_udev_rules_parse_and_cover_the_documented_adapters_and_the_gpio() {
    let unpacked = unpack(&ARM64);
    let path = unpacked.data.join("lib/udev/rules.d/60-pmtr.rules");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut rules = vec![];
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let rule = parse_rule(line).unwrap_or_else(|e| panic!("60-pmtr.rules:{}: {e}\n  {line}", n + 1));
        rules.push(rule.into_iter().map(|(k, op, v)| (format!("{k}{op}"), v)).collect::<BTreeMap<_, _>>());
    }

    // Every adapter of deploy/README.md's table, and no other.
    let mut documented = BTreeSet::new();
    for row in readme_table("udev-adapters") {
        let id = code(&row[1])
            .unwrap_or_else(|| panic!("deploy/README.md: adapter id {} is not `vvvv:pppp`", row[1]));
        let (vendor, product) = id.split_once(':').unwrap();
        documented.insert((vendor.to_string(), product.to_string()));
    }
    let mut covered = BTreeSet::new();
    for rule in rules.iter().filter(|r| r.contains_key("ATTRS{idVendor}==")) {
        let get = |k: &str| rule.get(k).map(String::as_str);
        assert_eq!(get("SUBSYSTEM=="), Some("tty"), "{rule:?}");
        assert_eq!((get("GROUP="), get("MODE=")), (Some("dialout"), Some("0660")), "{rule:?}");
        covered.insert((
            get("ATTRS{idVendor}==").unwrap().to_string(),
            get("ATTRS{idProduct}==").unwrap().to_string(),
        ));
    }
    assert_eq!(covered, documented, "60-pmtr.rules (left) against deploy/README.md's adapters (right)");
    assert!(documented.len() >= 9);

    // The GPIO devices of every Pi: group gpio, mode 0660.
    for (subsystem, device) in [
        ("bcm2835-gpiomem", "gpiomem"),
        ("rpi-gpiomem", "gpiomem0"),
        ("rpi-gpiomem", "gpiomem4"),
        ("gpio", "gpiochip0"),
    ] {
        let rule = rules.iter().find(|r| {
            r.get("KERNEL==").is_some_and(|k| glob(k.as_bytes(), device.as_bytes()))
                && r.get("SUBSYSTEM==").is_none_or(|s| s == subsystem)
        });
        let rule = rule.unwrap_or_else(|| panic!("60-pmtr.rules: no rule for /dev/{device}"));
        assert_eq!((rule["GROUP="].as_str(), rule["MODE="].as_str()), ("gpio", "0660"), "/dev/{device}");
    }

    // udevadm verify (systemd 253 and later) where there is one.
    let verify = Command::new("udevadm")
        .args(["verify", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if verify.is_ok_and(|s| s.success()) {
        let o = output(Command::new("udevadm").arg("verify").arg(&path), "");
        assert!(
            o.status.success(),
            "udevadm verify: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn preinst_refuses_an_armv6_pi() {
    for arch in ARCHES {
        let unpacked = unpack(arch);
        for (machine, refused) in [("armv6l", true), ("armv7l", false), ("aarch64", false)] {
            let bin = tempfile::tempdir().unwrap();
            let uname = bin.path().join("uname");
            std::fs::write(&uname, format!("#!/bin/sh\necho {machine}\n")).unwrap();
            std::fs::set_permissions(&uname, std::fs::Permissions::from_mode(0o755)).unwrap();
            let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap());
            let o = output(
                Command::new(unpacked.control.join("preinst")).arg("install").env("PATH", path),
                "sh (dash) is missing",
            );
            let err = String::from_utf8_lossy(&o.stderr);
            if refused {
                assert_eq!(o.status.code(), Some(1), "{} preinst on {machine}: {err}", arch.deb);
                assert!(err.contains("ARMv6") && err.contains("Zero 2"), "{err}");
            } else {
                assert!(o.status.success(), "{} preinst on {machine}: {err}", arch.deb);
            }
        }
    }
}

/// `key=value` lines of the state that tests/support/maintainer-scripts.sh wrote after `step`.
fn state(work: &Path, step: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(work.join(format!("state.{step}"))).unwrap();
    text.lines().map(|l| l.split_once('=').unwrap()).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn maintainer_scripts_through_install_upgrade_remove_and_purge() {
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        eprintln!("skipped: needs root for unshare --mount (tests/run.sh runs as root in CI)");
        return;
    }
    let unpacked = unpack(&ARM64);
    for mode in ["container", "pi"] {
        let work = tempfile::tempdir().unwrap();
        let o = output(
            Command::new("unshare")
                .args(["--mount", "sh"])
                .arg(source("tests/support/maintainer-scripts.sh"))
                .args([&unpacked.control, &unpacked.data, &work.path().to_path_buf()])
                .arg(mode),
            "apt-get install util-linux",
        );
        let outputs: String = ["install", "upgrade", "upgrade-disabled", "remove", "purge"]
            .iter()
            .map(|s| {
                format!(
                    "-- {s}:\n{}",
                    std::fs::read_to_string(work.path().join(format!("out.{s}"))).unwrap_or_default()
                )
            })
            .collect();
        assert!(
            o.status.success(),
            "{mode}: {}\n{}\n{outputs}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        let step = |s: &str| state(work.path(), s);
        let calls = |s: &str| step(s)["calls"].clone();
        let out = |s: &str| std::fs::read_to_string(work.path().join(format!("out.{s}"))).unwrap_or_default();
        let unit = "/lib/systemd/system/pmtr.service";

        // A first install: the user in its groups, the configuration readable by it only, the
        // unit enabled, not started, and what to do next.
        let s = step("install");
        let passwd: Vec<&str> = s["passwd"].split(':').collect();
        assert_eq!(passwd[0], "pmtr", "{mode}: no user pmtr: {s:?}\n{outputs}");
        assert!(passwd[2].parse::<u32>().unwrap() < 1000, "{mode}: pmtr is not a system user: {passwd:?}");
        assert_eq!(passwd[5], "/var/lib/pmtr");
        assert!(passwd[6].ends_with("nologin"), "{passwd:?}");
        let groups: BTreeSet<&str> = s["groups"].split(' ').collect();
        assert!(
            ["pmtr", "dialout", "gpio"].iter().all(|g| groups.contains(g)),
            "{mode}: pmtr is in {groups:?}"
        );
        assert_ne!(s["group_gpio"], "none");
        assert_eq!(s["conf"], "root:pmtr 640", "{mode}");
        assert_eq!((s["wants"].as_str(), s["mask"].as_str()), (unit, "none"), "{mode}: enabled");
        for line in
            ["edit /etc/pmtr/pmtr.toml", "pmtr check-config /etc/pmtr/pmtr.toml", "sudo systemctl start pmtr"]
        {
            assert!(
                out("install").contains(line),
                "{mode}: postinst does not say `{line}`:\n{}",
                out("install")
            );
        }

        // Upgrades: enabled stays enabled, disabled stays disabled, no first-install message.
        assert_eq!(step("upgrade")["wants"], unit, "{mode}");
        assert_eq!(step("upgrade-disabled")["wants"], "none", "{mode}: an upgrade enabled it again");
        assert!(!out("upgrade").contains("not started"), "{mode}: {}", out("upgrade"));
        assert_eq!(step("upgrade")["conf"], "root:pmtr 640");

        // Remove: the user, the configuration and the state stay; the unit is masked.
        let s = step("remove");
        assert!(s["passwd"].starts_with("pmtr:"), "{mode}: remove deleted the user");
        assert_eq!(
            (s["conf"].as_str(), s["state_dir"].as_str(), s["mask"].as_str()),
            ("root:pmtr 640", "yes", "/dev/null")
        );

        // Purge: the user, its group, the state and the unit's links go; the group gpio stays.
        let s = step("purge");
        assert_eq!((s["passwd"].as_str(), s["group_pmtr"].as_str()), ("none", "none"), "{mode}: {s:?}");
        assert_eq!(
            (s["state_dir"].as_str(), s["wants"].as_str(), s["mask"].as_str()),
            ("no", "none", "none")
        );
        assert_ne!(s["group_gpio"], "none", "{mode}: purge removed the group gpio");

        let all: Vec<String> =
            ["install", "upgrade", "upgrade-disabled", "remove", "purge"].map(calls).to_vec();
        if mode == "container" {
            // Neither systemd nor udev: no systemctl, deb-systemd-invoke or udevadm at all.
            assert!(all.iter().all(String::is_empty), "{mode}: {all:?}");
        } else {
            assert!(calls("install").contains("udevadm control --reload-rules;"), "{}", calls("install"));
            assert!(calls("install").contains("udevadm trigger --action=change --subsystem-match=tty;"));
            assert!(calls("install").contains("systemctl --system daemon-reload;"));
            assert!(!calls("install").contains("start"), "a first install starts pmtr: {}", calls("install"));
            assert!(
                calls("upgrade").contains("deb-systemd-invoke try-restart pmtr.service;"),
                "{}",
                calls("upgrade")
            );
            assert!(!calls("upgrade").contains(" start"), "{}", calls("upgrade"));
            assert!(
                calls("remove").starts_with("deb-systemd-invoke stop pmtr.service;"),
                "{}",
                calls("remove")
            );
            assert!(calls("purge").contains("daemon-reload"), "{}", calls("purge"));
        }
    }
}
