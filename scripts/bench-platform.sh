#!/usr/bin/env bash
# Platform API throughput: metadata GETs (a user's secret list) and PUTs (a value update) per
# second over HTTP with 16 clients (one keep-alive connection each), beside the same operations
# on the unix admin socket: the same daemon, the same store code, two doors. Prints a Markdown
# section for BENCHMARKS.md ("Platform API"). Release build; 20 secrets in the listed scope.
#   scripts/bench-platform.sh            (BENCH_SECONDS=5 per row by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_EACH=${BENCH_SECONDS:-5}
CLIENTS=${BENCH_CLIENTS:-16}
cargo build --quiet --release --bin sandbox-secrets --example platform_load
SECRETS=$ROOT/target/release/sandbox-secrets
LOAD=$ROOT/target/release/examples/platform_load

work=$(mktemp -d /tmp/platform-bench.XXXXXX)
export SANDBOX_SECRETS_STATE_DIR=$work/state SANDBOX_SECRETS_RUN_DIR=$work/run
trap '[[ -n ${broker:-} ]] && kill "$broker" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
SANDBOX_SECRETS_LOG=info "$SECRETS" serve --http 127.0.0.1:0 2> "$work/broker.log" &
broker=$!
for _ in $(seq 200); do grep -q "platform API listening" "$work/broker.log" 2>/dev/null && break; sleep 0.05; done
addr=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/broker.log" | head -1)
addr=${addr#http://}
token=$("$SECRETS" token create --platform 2>/dev/null | tail -1)
for i in $(seq 20); do
  head -c 32 /dev/urandom | base64 -w0 | "$SECRETS" set "BENCH_$i" --user mona --repos octo/load >/dev/null
done

echo "## Platform API"
echo ""
echo "\`scripts/bench-platform.sh\`: the real daemon (release build) with \`--http 127.0.0.1:0\`,"
echo "\`examples/platform_load\` on the same 2 cores, $CLIENTS clients each on one keep-alive"
echo "connection, ${SECONDS_EACH} s per row. \`get\` lists one user's 20 secrets (metadata, no"
echo "value); \`put\` updates one secret's value (each client its own secret; every PUT is a"
echo "durable SQLite commit, group-committed). The admin rows send the same operations to the"
echo "unix admin socket: both doors run the same \`carry_out\`. The daemon logs at its default level"
echo "(info: one audit line per change)."
echo ""
echo "| door | op | clients | requests/s | p50 µs | p99 µs | errors |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
for op in get put; do
  for door in http admin; do
    if [[ $door == http ]]; then
      line=$("$LOAD" --http "$addr" --token "$token" --op "$op" --clients "$CLIENTS" --seconds "$SECONDS_EACH")
    else
      line=$("$LOAD" --admin "$SANDBOX_SECRETS_RUN_DIR/admin.sock" --op "$op" --clients "$CLIENTS" --seconds "$SECONDS_EACH")
    fi
    python3 -c 'import json, sys
r = json.loads(sys.argv[1])
print("| %s | %s | %d | %.0f | %d | %d | %d |" % (r["door"], r["op"], r["clients"],
      r["requests_per_s"], r["p50_us"], r["p99_us"], r["errors"]))' "$line"
  done
done
echo ""
