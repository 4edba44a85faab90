#!/usr/bin/env bash
# Writes link/hot-text.ld: the functions the daemon runs once it has started, which build.rs
# has the linker lay out together at the start of the code (the output section `.text.hot`).
#
# Why: five seconds after it starts the daemon gives back the pages of its executable that it
# no longer needs (src/resident.rs); the kernel maps code back 64 KiB or a large folio at a
# time, so a steady-state function anywhere in 10 MB of code brings its neighbours with it.
# Laid out together, the steady state's ~0.4 MB of functions is all that comes back.
#
# How: the footprint set-up of the bus bench (`cargo bench --bench bus -- footprint`: 30
# simulated PZEM-016 on 3 ports, polled every second, the default CSV sink and status API),
# its daemon run under valgrind's callgrind, its clock believed from the start as on a Pi that
# NTP has set. The counts are zeroed 4 s after the daemon starts (before it gives its pages back
# at 5 s, so that the give-back and what follows it are in) and dumped 620 s later (the minute
# tasks run ten times, the ten-minute summary once). Every function of the executable that ran in
# that window is written as a linker-script pattern: v0 symbol names (.cargo/config.toml) with
# each crate's disambiguator and each back-reference left open, so that the same file matches
# the Pi's builds, whose crates hash differently.
#
# Needs valgrind (apt-get install valgrind) and python3. Takes about 12 minutes. Run it again
# when the steady state's code changes much: `cargo test --test hot_text` fails when fewer than
# 80 % of its patterns still name a function of the executable.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in valgrind callgrind_control callgrind_annotate python3; do
    command -v "$tool" >/dev/null || { echo "link/hot-text.sh needs $tool (apt-get install valgrind python3)" >&2; exit 1; }
done

# Building the bench builds target/release/pmtr too: the bench runs it.
bench=$(cargo bench --bench bus --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("target",{}).get("name")=="bus" and m.get("executable"): print(m["executable"])')
[ -x "$bench" ] || { echo "could not build the bus bench" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
BENCH_SECONDS=640 BENCH_WRAP="valgrind --tool=callgrind --demangle=no --callgrind-out-file=$work/cg" \
    "$bench" footprint >"$work/bench.log" 2>&1 &
bench_pid=$!
pid=""
for _ in $(seq 500); do
    pid=$(pgrep -f -- "--callgrind-out-file=$work/cg" | head -1 || true)
    [ -n "$pid" ] && break
    sleep 0.02
done
[ -n "$pid" ] || { echo "the daemon did not start under valgrind" >&2; cat "$work/bench.log" >&2; exit 1; }
sleep 4
callgrind_control -z "$pid" >/dev/null 2>&1
sleep 620
callgrind_control -d "$pid" >/dev/null 2>&1
wait "$bench_pid" || true
dump=$(ls "$work"/cg.* | head -1)
[ -s "$dump" ] || { echo "no callgrind dump" >&2; exit 1; }

nm --defined-only target/release/pmtr >"$work/nm.txt"
callgrind_annotate --threshold=100 "$dump" | python3 -c '
import re, sys
names = []
for line in sys.stdin:
    m = re.match(r"^\s*[\d,]+ \([^)]*\)\s+(?:[^:\s]*:)?(\S+) \[(.*)\]$", line.rstrip())
    # valgrind names the object of code outside .text (the .text.hot of a build that already
    # has this layout) "???": the executable'"'"'s symbol table says which names are its own
    if m and (m.group(2).endswith("/pmtr") or m.group(2) == "???"):
        names.append(re.sub(r"\x27\d+$", "", m.group(1)))   # recursion: name\x272

# rustc merges identical functions into aliases of one: callgrind gives one of the names, the
# section is named after the function that holds the code. Every name at the address is taken.
at, names_at = {}, {}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) == 3 and f[1] in "tTwW":
        at[f[2]] = f[0]
        names_at.setdefault(f[0], []).append(f[2])
names = [n for n in names if n in at]

def pattern(n):
    n = re.sub(r"\.llvm\.\d+$", "", n)
    if n.startswith("_R"):                     # v0: open the crate hashes and back-references
        n = re.sub(r"Cs[0-9A-Za-z]+_", "Cs*_", n)
        n = re.sub(r"B[0-9A-Za-z]*_", "B*_", n)
        return n + "*"
    if n.startswith("_ZN"):                    # a legacy name: v0 mangling is not in effect
        sys.exit(f"{n}: a legacy symbol name; is RUSTFLAGS replacing .cargo/config.toml?")
    return n                                   # C and #[no_mangle] names
seen, out = set(), []
for n in names:
    for alias in names_at[at[n]]:
        p = pattern(alias)
        if p not in seen:
            seen.add(p)
            out.append(p)
if len(out) < 100:
    sys.exit(f"only {len(out)} functions of the executable ran: did the daemon read its meters?")
print("/* The daemon'"'"'s steady-state functions, laid out together: written by link/hot-text.sh")
print("   (the reasons and how are there); build.rs hands it to the linker. A #[cold] function")
print("   is in a .text.unlikely. section. */")
print("SECTIONS\n{\n  .text.hot :\n  {")
for p in out:
    print(f"    *(.text.{p} .text.unlikely.{p})")
print("  }\n}\nINSERT BEFORE .text;")
' "$work/nm.txt" > link/hot-text.ld.new
mv link/hot-text.ld.new link/hot-text.ld
echo "link/hot-text.ld: $(grep -c '^    \*' link/hot-text.ld) functions"
