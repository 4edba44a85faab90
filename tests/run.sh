#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests need (socat,
# pymodbus, influxdb, victoria-metrics, aiosmtpd, openssl, mosquitto, node and npm, chromium and
# chromedriver), then formatting,
# lints, the type check of the Grafana dashboards, and every test. CI runs
# exactly this (.ci/run). It also builds the Debian packages for the Pi and runs the tests built
# for aarch64 under qemu (deploy/build-deb.sh, deploy/test-aarch64.sh: see the end).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

echo "== installing test components"
missing=()
command -v socat >/dev/null || missing+=(socat)
# Real database servers for the storage tests (tests/support/servers.rs): InfluxDB 1.6, and
# VictoriaMetrics (its package also ships vmauth) as the InfluxDB 2 write endpoint.
command -v influxd >/dev/null || missing+=(influxdb)
command -v influx >/dev/null || missing+=(influxdb-client)
{ command -v victoria-metrics >/dev/null && command -v vmauth >/dev/null; } || missing+=(victoria-metrics)
# The email tests (tests/support/smtp.rs) make their server's certificate with `openssl req`.
command -v openssl >/dev/null || missing+=(openssl)
# The type check of the Grafana dashboards (grafana/check: @grafana/schema and tsc from npm).
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
# The MQTT tests (tests/mqtt.rs) run a real broker, and its clients help by hand.
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)
# The page test (tests/page.rs) drives Debian's chromium through chromedriver.
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# The unit file's checks (tests/systemd_unit.rs): systemd-analyze verify and security.
command -v systemd-analyze >/dev/null || missing+=(systemd)
# SIGHUP/SIGTERM tests (tests/service.rs) and the unit's ExecReload use /bin/kill.
[ -x /bin/kill ] || missing+=(procps)
if [ ${#missing[@]} -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! python3 -c 'import pymodbus, serial, sys; sys.exit(pymodbus.__version__ != "3.16.1")' 2>/dev/null; then
    python3 -m pip install --quiet "pymodbus[serial]==3.16.1"
fi
# The SMTP server of the email tests (STARTTLS, implicit TLS and AUTH through its Controller).
if ! python3 -c 'import aiosmtpd, sys; sys.exit(aiosmtpd.__version__ != "1.4.6")' 2>/dev/null; then
    python3 -m pip install --quiet "aiosmtpd==1.4.6"
fi
for tool in node npm; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install nodejs npm (the Grafana dashboard check needs it)" >&2; exit 1; }
done
for tool in rustfmt clippy-driver; do
    command -v "$tool" >/dev/null || { echo "missing $tool: rustup component add ${tool%-driver}" >&2; exit 1; }
done

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== grafana dashboards: type check against @grafana/schema (grafana/check)"
( cd grafana/check && npm ci --no-audit --no-fund --loglevel=error && npm run --silent check )
# The Pi packages first: tests/packages.rs (in cargo test) checks them, and fails without them.
echo "== Debian packages for the Pi (deploy/build-deb.sh)"
deploy/build-deb.sh
echo "== cargo test"
cargo test --locked --all-features 2>&1 | tee target/test-output.txt
echo "== aarch64 tests under qemu (deploy/test-aarch64.sh)"
deploy/test-aarch64.sh
echo "== summary"
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, i }' \
    target/test-output.txt target/test-output-aarch64.txt
