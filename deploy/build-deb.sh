#!/usr/bin/env bash
# The Debian packages of pmtr for Raspberry Pi OS, cross-compiled on an x86_64 Debian machine:
#   target/deb/pmtr_<version>_arm64.deb   aarch64-unknown-linux-gnu      (64-bit Pi OS)
#   target/deb/pmtr_<version>_armhf.deb   armv7-unknown-linux-gnueabihf  (32-bit Pi OS)
# Installs the cross compilers, qemu-user and dpkg-dev (apt) and the two Rust targets (rustup)
# when they are missing (deploy/cross-env.sh). Runs from any directory; a second run builds the
# same packages again (cargo rebuilds only what changed). What each package holds, and why:
# deploy/README.md (tests/packages.rs checks the packages against its list).
#
# PMTR_DEB_MAINTAINER overrides the Maintainer field.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022

# shellcheck source=deploy/cross-env.sh
. deploy/cross-env.sh

version=$(awk -F'"' '/^\[/ { pkg = ($0 == "[package]") } pkg && /^version *=/ { print $2; exit }' Cargo.toml)
[ -n "$version" ] || { echo "no version in Cargo.toml [package]" >&2; exit 1; }
maintainer=${PMTR_DEB_MAINTAINER:-"pmtr maintainers <maintainers@users.noreply.h-seed-cb42cd4a.example>"}
# Every file gets the time of the last commit: the same tree gives the same package.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || stat -c %Y Cargo.toml)}
export SOURCE_DATE_EPOCH

out=target/deb
mkdir -p "$out"

# build_deb TRIPLE DEB_ARCH GNU_PREFIX: cross-compile, stage the tree, write the package.
build_deb() {
    local triple=$1 arch=$2 gnu=$3
    echo "== cargo build --release --target $triple"
    cargo build --release --locked --target "$triple"

    local stage=$out/build/$arch
    local root=$stage/root
    rm -rf "$stage"
    mkdir -p "$root/DEBIAN"

    # The binary, stripped of everything the linker does not need (symbols, .comment).
    install -d "$root/usr/bin"
    "$gnu-strip" --remove-section=.comment --remove-section=.note --strip-unneeded \
        -o "$root/usr/bin/pmtr" "target/$triple/release/pmtr"
    chmod 0755 "$root/usr/bin/pmtr"

    install -D -m 0644 systemd/pmtr.service "$root/lib/systemd/system/pmtr.service"
    install -D -m 0644 config/pmtr.toml "$root/etc/pmtr/pmtr.toml"
    # Where user meter definitions go (gateway.meters_dir's default): empty.
    install -d -m 0755 "$root/etc/pmtr/meters.d"
    install -D -m 0644 deploy/udev/60-pmtr.rules "$root/lib/udev/rules.d/60-pmtr.rules"
    local f
    for f in grafana/dashboards/*.json grafana/provisioning/datasources/*.yaml grafana/provisioning/dashboards/*.yaml; do
        install -D -m 0644 "$f" "$root/usr/share/pmtr/$f"
    done
    install -D -m 0644 README.md "$root/usr/share/doc/pmtr/README.md"
    install -D -m 0644 deploy/debian/copyright "$root/usr/share/doc/pmtr/copyright"
    # A native package's changelog (Debian policy 12.7): the version and where it came from.
    local commit date
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    date=$(date -R -u -d "@$SOURCE_DATE_EPOCH")
    printf 'pmtr (%s) stable; urgency=medium\n\n  * Built by deploy/build-deb.sh from commit %s.\n\n -- %s  %s\n' \
        "$version" "$commit" "$maintainer" "$date" | gzip -9n >"$root/usr/share/doc/pmtr/changelog.gz"

    # Depends: the C library no older than the newest GLIBC_x.y symbol version the binary
    # imports, so that dpkg refuses an older system instead of the loader failing at start.
    local bin=$root/usr/bin/pmtr glibc needed lib depends="adduser"
    glibc=$("$gnu-objdump" -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -uV | tail -n 1)
    [ -n "$glibc" ] || { echo "$bin: no GLIBC_ symbol versions found" >&2; exit 1; }
    # Packed relative relocations (build.rs) name no symbol but the version GLIBC_ABI_DT_RELR,
    # which glibc has from 2.36 on.
    if "$gnu-readelf" -V "$bin" | grep -q 'GLIBC_ABI_DT_RELR'; then
        glibc=$(printf '%s\n2.36\n' "$glibc" | sort -V | tail -n 1)
    fi
    depends+=", libc6 (>= $glibc)"
    needed=$("$gnu-readelf" -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    for lib in $needed; do
        case "$lib" in
            libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux*.so.*) ;;
            libgcc_s.so.1) depends+=", libgcc-s1" ;;
            *)
                echo "$bin needs $lib: add its package to Depends in deploy/build-deb.sh" >&2
                exit 1
                ;;
        esac
    done
    echo "$arch: needs ${needed//$'\n'/ }; newest glibc symbol version GLIBC_$glibc"

    echo /etc/pmtr/pmtr.toml >"$root/DEBIAN/conffiles"
    for f in preinst postinst prerm postrm; do
        install -m 0755 "deploy/debian/$f" "$root/DEBIAN/$f"
    done
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
        >"$root/DEBIAN/md5sums"
    chmod 0644 "$root/DEBIAN/md5sums"

    # Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up, plus one per directory.
    local size
    size=$(find "$root" -path "$root/DEBIAN" -prune -o -mindepth 1 \( -type f -printf '%s\n' -o -printf '1024\n' \) |
        awk '{ k += int(($1 + 1023) / 1024) } END { print k }')
    cat >"$root/DEBIAN/control" <<EOF
Package: pmtr
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: $depends
Section: misc
Priority: optional
Description: metering gateway for the Raspberry Pi
 pmtr reads PZEM-004T/016 and RX380 energy meters and PMTR power-line
 servers over Modbus RTU (USB-RS485 adapters or the GPIO UART), switches
 relays on the Pi's GPIO from triggers on the readings, and stores them in
 InfluxDB 1.x/2.x/3.x or CSV, with alert mail, a local status API,
 Prometheus metrics and MQTT.
 .
 The service is installed enabled but not started: edit
 /etc/pmtr/pmtr.toml, check it with "pmtr check-config /etc/pmtr/pmtr.toml",
 then "systemctl start pmtr". Grafana dashboards: /usr/share/pmtr/grafana.
EOF
    chmod 0644 "$root/DEBIAN/control"

    find "$root" -exec touch --no-dereference -d "@$SOURCE_DATE_EPOCH" {} +
    local deb=$out/pmtr_${version}_${arch}.deb
    rm -f "$deb"
    dpkg-deb --build --root-owner-group -Zxz "$root" "$deb" >/dev/null
    echo "$deb: $(stat -c %s "$deb") bytes, Installed-Size $size KiB, Depends: $depends"
}

build_deb aarch64-unknown-linux-gnu arm64 aarch64-linux-gnu
build_deb armv7-unknown-linux-gnueabihf armhf arm-linux-gnueabihf
