#!/usr/bin/env bash
# Broker throughput (called by scripts/bench.sh): sandbox fetches per second against the real
# daemon, 100 secrets in the answer (50 user + 50 repository), with a new connection per request
# (what an init does) and with keep-alive, for several client counts; prints a Markdown section.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_EACH=${BENCH_SECONDS:-5}
cargo build --quiet --release --bin sandbox-secrets --example loadgen
SECRETS=$ROOT/target/release/sandbox-secrets
LOADGEN=$ROOT/target/release/examples/loadgen

work=$(mktemp -d /tmp/sandbox-bench.XXXXXX)
export SANDBOX_SECRETS_STATE_DIR=$work/state SANDBOX_SECRETS_RUN_DIR=$work/run
trap '[[ -n ${broker:-} ]] && kill "$broker" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
SANDBOX_SECRETS_LOG=warn "$SECRETS" serve 2> "$work/broker.log" &
broker=$!
for _ in $(seq 100); do [[ -S $SANDBOX_SECRETS_RUN_DIR/admin.sock ]] && break; sleep 0.05; done
for i in $(seq 50); do
  head -c 32 /dev/urandom | base64 -w0 | "$SECRETS" set "BENCH_USER_$i" --user mona --repos octo/bench >/dev/null
  head -c 32 /dev/urandom | base64 -w0 | "$SECRETS" set "BENCH_REPO_$i" --repo octo/bench >/dev/null
done
read -r _ dir < <("$SECRETS" sandbox create --user mona --repo octo/bench)
bytes=$(curl -s --unix-socket "$dir/secrets.sock" http://localhost/v1/secrets | wc -c)

echo "## Broker: sandbox fetches"
echo ""
echo "The real daemon (release build), one sandbox whose answer holds 100 secrets ($bytes bytes),"
echo "\`examples/loadgen\` on the same 2 cores for ${SECONDS_EACH} s per row. Target: >= 20000/s"
echo "with a new connection per request."
echo ""
echo "| mode | clients | fetches/s | p50 µs | p99 µs | errors | ÷ target |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for mode in new-conn keep-alive; do
  for clients in 1 4 16 64; do
    line=$("$LOADGEN" --socket "$dir/secrets.sock" --clients "$clients" --seconds "$SECONDS_EACH" --"$mode")
    python3 -c 'import json, sys
r = json.loads(sys.argv[1])
print("| %s | %d | %.0f | %d | %d | %d | %.2f |" % (r["mode"], r["clients"], r["requests_per_s"],
      r["p50_us"], r["p99_us"], r["errors"], r["requests_per_s"] / 20000))' "$line"
  done
done
echo ""
