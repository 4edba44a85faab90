# shellcheck shell=bash
# Sourced by deploy/build-deb.sh and deploy/test-aarch64.sh (bash): the cross toolchains for the
# Raspberry Pi, installed when missing, and the cargo settings that use them.
#
# apt: the Debian cross compilers and C libraries (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross
# for 64-bit Pi OS; gcc-arm-linux-gnueabihf, libc6-dev-armhf-cross for 32-bit), qemu-user-static
# to run what they build, dpkg-dev for the packages. rustup: the two Rust targets, added to the
# toolchain already installed (never `rustup update`, never another toolchain).

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

cross_apt_packages=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
    qemu-user-static dpkg-dev)
cross_targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

cross_missing=()
for p in "${cross_apt_packages[@]}"; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || cross_missing+=("$p")
done
if [ ${#cross_missing[@]} -gt 0 ]; then
    echo "== installing ${cross_missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${cross_missing[@]}"
fi
cross_installed_targets=$(rustup target list --installed)
for t in "${cross_targets[@]}"; do
    grep -qx "$t" <<<"$cross_installed_targets" || rustup target add "$t"
done
unset cross_missing cross_installed_targets

# Linkers: the Debian cross gcc. ring's C code finds the same compilers through the cc crate.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
# Linked by Rust's own lld (the toolchain's gcc-ld/ld.lld, which the cross gcc finds through -B
# and -fuse-ld=lld): bookworm's GNU ld for ARM (2.40) ignores `-z pack-relative-relocs`, which
# build.rs asks for (a DT_RELR table: about 1.5 MB less to read and keep at every start).
cross_gcc_ld="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/gcc-ld"
if [ ! -x "$cross_gcc_ld/ld.lld" ]; then
    echo "$cross_gcc_ld/ld.lld is missing: the Rust toolchain ships it (rust-lld)" >&2
    return 1 2>/dev/null || exit 1
fi
# These replace .cargo/config.toml's rustflags for the target, so they repeat its v0 symbol
# mangling, which link/hot-text.ld's names need.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C symbol-mangling-version=v0 -C link-arg=-fuse-ld=lld -C link-arg=-B$cross_gcc_ld"
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS="-C symbol-mangling-version=v0 -C link-arg=-fuse-ld=lld -C link-arg=-B$cross_gcc_ld"
unset cross_gcc_ld
# Runners for `cargo test`/`cargo run` with --target: qemu-user with the cross C library as root
# of the dynamic loader (no binfmt_misc needed).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm-static -L /usr/arm-linux-gnueabihf"
