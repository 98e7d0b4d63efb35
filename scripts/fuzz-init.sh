#!/usr/bin/env bash
# Init-side fuzzing on stable Rust (proptest harnesses in tests/fuzz_init.rs), built --release.
# Usage: scripts/fuzz-init.sh [SECONDS]   (per target, default 30)
# Each fuzz_* target runs batches of PROPTEST_CASES cases (default 256) until SECONDS have
# passed, then prints "fuzz: <target>: <n> executions". A failure prints the shrunk input and
# the script exits non-zero (keep the input as a regression test in tests/fuzz_init.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
targets=(fuzz_answer_bytes fuzz_answer_json fuzz_config_merge fuzz_config_file fuzz_env_quoting
  fuzz_registry fuzz_names)
cargo test --quiet --release --test fuzz_init --no-run
status=0
for t in "${targets[@]}"; do
  if ! out=$(FUZZ_SECONDS="$secs" cargo test --quiet --release --test fuzz_init -- \
    --exact "$t" --nocapture 2>&1); then
    echo "$out" >&2
    echo "fuzz: $t: FAILED" >&2
    status=1
    continue
  fi
  grep '^fuzz: ' <<<"$out" || { echo "$out" >&2; echo "fuzz: $t: no count printed" >&2; status=1; }
done
exit $status
