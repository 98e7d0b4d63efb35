#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on stable Rust and prints executions per target.
# Usage: scripts/fuzz.sh [SECONDS]   (per target; default 60)
# Targets are proptest harnesses built --release; a failure is shrunk, its seed is kept in a
# *.proptest-regressions file next to the test (commit it: it is replayed on every run).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-60}"
# Hang guard per target: the budget plus time to build, shrink and report.
GUARD=$((SECONDS_PER_TARGET * 2 + 600))
export BROKER_FUZZ_SECONDS="$SECONDS_PER_TARGET"
export PROPTEST_CASES="${PROPTEST_CASES:-5000}"
results=()

# run_target TEST_FILE TEST_NAME: runs one target under the hang guard, keeps its summary line.
run_target() {
  local file="$1" name="$2" out
  echo "== fuzz $file::$name (${SECONDS_PER_TARGET}s)"
  if ! out=$(timeout "$GUARD" cargo test --release --test "$file" -- --exact "$name" --nocapture 2>&1); then
    echo "$out" | tail -40
    echo "fuzz target $file::$name FAILED (seed kept in tests/$file.proptest-regressions)" >&2
    exit 1
  fi
  local line
  line=$(echo "$out" | grep -E '^fuzz [a-z_]+: ' | tail -1)
  echo "$line"
  results+=("$line")
}

broker_targets() {
  cargo build --release --tests --quiet
  run_target broker_fuzz fuzz_admin_parse_bytes
  run_target broker_fuzz fuzz_admin_parse_json
  run_target broker_fuzz fuzz_route_checks
  run_target broker_fuzz fuzz_name_rules
  run_target broker_fuzz fuzz_daemon_wire
}

# Init-side targets (answer parsing, config.json merging, `sandbox-init env` quoting, registry
# and name rules): tests/fuzz_init.rs, run by scripts/fuzz-init.sh with the same budget.
init_targets() {
  local out
  out=$(scripts/fuzz-init.sh "$SECONDS_PER_TARGET") || { echo "$out"; exit 1; }
  echo "$out"
  while IFS= read -r line; do results+=("$line"); done <<<"$out"
}

broker_targets
init_targets

echo "== fuzz summary (${SECONDS_PER_TARGET}s per target)"
printf '%s\n' "${results[@]}"
