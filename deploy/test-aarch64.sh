#!/usr/bin/env bash
# The test suite built for aarch64 (64-bit Raspberry Pi OS) and run under qemu-user on this
# machine: the library's unit tests and the integration tests that need no serial port.
# Prints cargo's output and keeps it in target/test-output-aarch64.txt (tests/run.sh counts
# its `test result:` lines). Exits non-zero if any test fails. Installs the cross toolchain
# when missing (deploy/cross-env.sh).
#
# What cannot run under qemu-user, and is left out:
# - serial ports: qemu-user 7.2 does not pass the termios2 ioctls (TCGETS2/TCSETS2) through, so
#   a port cannot even be opened. That rules out every test with a simulated meter on a
#   pseudo-terminal: alerts, bus_faults, cli, mqtt, pmtr_master, pmtr_sim, pymodbus_peer,
#   sim_vs_tokio_modbus, status and triggers, and the one such test in grafana and in storage.
# - running the pmtr binary from a test (CARGO_BIN_EXE_pmtr): the test runs under qemu, but the
#   child is an aarch64 executable the kernel cannot start without binfmt_misc ("Exec format
#   error"). tests/packages.rs runs the packaged binaries through qemu instead.
# The servers the remaining tests start (influxd, victoria-metrics, vmauth, aiosmtpd) run
# natively on 127.0.0.1 and answer the emulated tests as they answer native ones.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=deploy/cross-env.sh
. deploy/cross-env.sh

tests=(config_cases config_fuzz control dependencies email frame_fuzz grafana servers_selftest storage)
# Skipped by exact name: each runs the pmtr binary or needs a serial port (see above). A test
# renamed here runs again under qemu and fails: then skip it by its new name.
skip=(
    # control.rs: the `pmtr relay`/`pmtr trigger` commands, run as a child process
    cli_relay_list_as_a_table_and_as_json
    cli_trigger_list_and_reset
    cli_relay_force_and_release
    cli_finds_the_socket_in_the_configuration
    cli_without_a_daemon_says_what_to_do
    cli_the_socket_admits_its_group_only
    # email.rs: `pmtr test-email`, run as a child process
    a_wrong_password_is_a_permanent_authentication_error
    nothing_listening_is_a_retry_later_connect_error
    test_email_lists_every_step_and_exits_0_when_accepted
    test_email_over_implicit_tls
    # grafana.rs: simulated meters on a pseudo-terminal
    every_panel_query_of_every_dashboard_gives_its_series
    # storage.rs: a simulated meter and `pmtr run` as a child process
    kill_9_during_an_outage_loses_nothing_that_was_spooled
)

args=(--lib)
for t in "${tests[@]}"; do args+=(--test "$t"); done
filters=(--exact)
for s in "${skip[@]}"; do filters+=(--skip "$s"); done

mkdir -p target
echo "== cargo test --target aarch64-unknown-linux-gnu (under qemu-aarch64-static)"
cargo test --locked --no-fail-fast --target aarch64-unknown-linux-gnu "${args[@]}" -- "${filters[@]}" 2>&1 |
    tee target/test-output-aarch64.txt
