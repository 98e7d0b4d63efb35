#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on stable Rust and prints executions per target.
# Usage: scripts/fuzz.sh [SECONDS] [broker|init]   (per target; default 60; both sides)
# Targets are proptest harnesses (tests/broker_fuzz.rs, tests/fuzz_init.rs) built --release, run
# by the one runner in tests/support/fuzz.rs: FUZZ_SECONDS per target, batches of
# PROPTEST_CASES cases (default 256). A failure is shrunk; its seed is kept in a
# tests/<file>.proptest-regressions file (commit it: it is replayed on every run).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
side="${2:-all}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS] [broker|init]" >&2; exit 2 ;; esac
case "$side" in all | broker | init) ;; *) echo "usage: $0 [SECONDS] [broker|init]" >&2; exit 2 ;; esac
export FUZZ_SECONDS="$secs"
export PROPTEST_CASES="${PROPTEST_CASES:-256}"
# Hang guard per target: the budget plus time to build, shrink and report.
guard=$((secs * 2 + 600))

declare -A targets=(
  [broker_fuzz]="fuzz_admin_parse_bytes fuzz_admin_parse_json fuzz_route_checks fuzz_name_rules fuzz_daemon_wire"
  [fuzz_init]="fuzz_answer_bytes fuzz_answer_json fuzz_config_merge fuzz_config_file fuzz_env_quoting fuzz_registry fuzz_names"
)
files=()
[[ $side == all || $side == broker ]] && files+=(broker_fuzz)
[[ $side == all || $side == init ]] && files+=(fuzz_init)

cargo build --release --tests --quiet
results=()
status=0
for file in "${files[@]}"; do
  for t in ${targets[$file]}; do
    echo "== fuzz $file::$t (${secs}s)"
    if ! out=$(timeout "$guard" cargo test --quiet --release --test "$file" -- --exact "$t" --nocapture 2>&1); then
      echo "$out" | tail -40 >&2
      echo "fuzz: $t: FAILED (seed kept in tests/$file.proptest-regressions)" >&2
      status=1
      continue
    fi
    lines=$(grep '^fuzz: ' <<<"$out") || { echo "$out" >&2; echo "fuzz: $t: no count printed" >&2; status=1; continue; }
    echo "$lines"
    while IFS= read -r line; do results+=("$line"); done <<<"$lines"
  done
done

echo "== fuzz summary (${secs}s per target)"
printf '%s\n' "${results[@]}"
exit $status
