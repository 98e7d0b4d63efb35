#!/usr/bin/env bash
# Benchmarks, side by side with the peers in one run, written to BENCHMARKS.md.
#   scripts/bench.sh            all sections
#   scripts/bench.sh pid1       one section (pid1, broker, inject)
# Speed is measured here, never asserted in tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/bench
mkdir -p "$OUT"
sections=("${@:-pid1 broker inject}")
# shellcheck disable=SC2206
sections=(${sections[*]})

scripts/setup.sh --deps >/dev/null
scripts/build-static.sh >/dev/null
cargo build --quiet --release --bins --examples 2>/dev/null || cargo build --quiet --release --bins
INIT=$ROOT/target/static/sandbox-init

report=$OUT/report.md
: > "$report"
say() { printf '%s\n' "$*" >> "$report"; }

pid1() {
  say "## PID 1: size, startup, memory"
  say ""
  # Sizes: the musl build above, and the static-glibc fallback built here for comparison.
  RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" cargo build --quiet --profile init \
    --target x86_64-unknown-linux-gnu --no-default-features --bin sandbox-init
  local glibc=$ROOT/target/x86_64-unknown-linux-gnu/init/sandbox-init
  say "| binary | bytes | target |"
  say "| --- | ---: | --- |"
  say "| sandbox-init (static musl) | $(stat -c %s "$INIT") | <= 1000000 |"
  say "| sandbox-init (static glibc, +crt-static) | $(stat -c %s "$glibc") | <= 1800000 |"
  say "| tini-static 0.19 (Debian) | $(stat -c %s /usr/bin/tini-static) | |"
  say "| catatonit 0.1.7 (Debian, static) | $(stat -c %s /usr/bin/catatonit) | |"
  say "| dumb-init 1.2.5 (Debian, dynamic) | $(stat -c %s /usr/bin/dumb-init) | |"
  say ""

  # Startup: the whole life of `init -- /bin/true`, no broker socket present, not PID 1
  # (each init as a subreaper where it has the flag).
  hyperfine -N --warmup 50 --runs 1000 --export-json "$OUT/startup.json" \
    -n 'true' '/bin/true' \
    -n 'sandbox-init' "$INIT -- /bin/true" \
    -n 'tini-static' '/usr/bin/tini-static -s -- /bin/true' \
    -n 'tini' '/usr/bin/tini -s -- /bin/true' \
    -n 'dumb-init' '/usr/bin/dumb-init /bin/true' \
    -n 'catatonit' '/usr/bin/catatonit -- /bin/true' > "$OUT/startup.txt" 2>&1
  say "Startup: \`init -- /bin/true\` (no broker socket), hyperfine -N, 1000 runs, mean ± σ;"
  say "overhead = mean − mean(/bin/true); ratio against tini-static."
  say ""
  python3 - "$OUT/startup.json" >> "$report" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
base = r["true"]["mean"]
ref = r["tini-static"]["mean"] - base
print("| command | mean µs | σ µs | overhead µs | overhead ÷ tini-static's |")
print("| --- | ---: | ---: | ---: | ---: |")
for name, x in r.items():
    over = x["mean"] - base
    ratio = "" if name == "true" else f"{over / ref:.2f}"
    print(f"| {name} | {x['mean']*1e6:.0f} | {x['stddev']*1e6:.0f} | {over*1e6:.0f} | {ratio} |")
PY
  say ""

  # Peak RSS of PID 1 while it supervises `sleep`, read from its own /proc/<pid>/status.
  say "Memory of the init while supervising \`sleep 2\` as real PID 1 (\`unshare -pf --mount-proc\`),"
  say "VmHWM and VmRSS from the init's own /proc/<pid>/status after 0.5 s:"
  say ""
  say "| init | VmHWM KiB | VmRSS KiB |"
  say "| --- | ---: | ---: |"
  local name cmd
  for name in sandbox-init tini-static dumb-init catatonit; do
    case $name in
      sandbox-init) cmd=("$INIT" -- sleep 2) ;;
      tini-static) cmd=(/usr/bin/tini-static -- sleep 2) ;;
      dumb-init) cmd=(/usr/bin/dumb-init sleep 2) ;;
      catatonit) cmd=(/usr/bin/catatonit -- sleep 2) ;;
    esac
    unshare -pf --mount-proc "${cmd[@]}" &
    local outer=$! pid=""
    for _ in $(seq 50); do pid=$(pgrep -P "$outer" | head -1 || true); [[ -n $pid ]] && break; sleep 0.05; done
    sleep 0.5
    local hwm rss
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    say "| $name | $hwm | $rss |"
    wait "$outer" || true
  done
  say ""
}

broker() { [[ -x scripts/bench-broker.sh ]] && scripts/bench-broker.sh >> "$report"; true; }
inject() { [[ -x scripts/bench-inject.sh ]] && scripts/bench-inject.sh "$INIT" >> "$report"; true; }

for s in "${sections[@]}"; do "$s"; done

{
  echo "# Benchmarks"
  echo ""
  echo "Made by \`scripts/bench.sh ${*:-}\` on $(date -u +%Y-%m-%d), $(nproc) cores,"
  echo "$(uname -r), $(rustc --version). Lower is better except where a rate is shown."
  echo ""
  cat "$report"
} > BENCHMARKS.md
cat BENCHMARKS.md
