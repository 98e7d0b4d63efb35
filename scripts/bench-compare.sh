#!/usr/bin/env bash
# Broker fetch throughput of this tree against a baseline commit, in one run: the baseline
# (BENCH_BASELINE, default 04f3b02, the commit before the broker reshape) is checked out in a
# temporary `git worktree` and built there (release, its own target directory: nothing shared with
# this tree), both daemons are seeded with the same 100 secrets, and the same `examples/loadgen`
# rows (this tree's loadgen) run against each daemon in turn, alternating which goes first,
# BENCH_ROUNDS times (default 2; the mean is shown). Prints a Markdown section with both figures
# and their ratio. BENCH_SECONDS (default 5) per row and round; BENCH_BASELINE_TARGET keeps the
# baseline's build between runs (default: a temporary directory, removed afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BASE=${BENCH_BASELINE:-04f3b02}
SECONDS_EACH=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-2}
cargo build --quiet --release --bin sandbox-secrets --example loadgen
LOADGEN=$ROOT/target/release/examples/loadgen

base_rev=$(git rev-parse --short "$BASE^{commit}")
head_rev=$(git rev-parse --short HEAD)
[[ -z $(git status --porcelain --untracked-files=no) ]] || head_rev="$head_rev+changes"

work=$(mktemp -d /tmp/sandbox-compare.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done
  git -C "$ROOT" worktree remove --force "$work/baseline" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
git worktree add --detach --quiet "$work/baseline" "$base_rev"
base_target=${BENCH_BASELINE_TARGET:-$work/baseline-target}
(cd "$work/baseline" && CARGO_TARGET_DIR=$base_target cargo build --quiet --release --bin sandbox-secrets)

# The same values for both daemons; they never leave this directory (0700) or reach argv.
mkdir -m 0700 "$work/values"
for i in $(seq 50); do
  head -c 32 /dev/urandom | base64 -w0 > "$work/values/user_$i"
  head -c 32 /dev/urandom | base64 -w0 > "$work/values/repo_$i"
done

# start NAME BINARY: a daemon with its own state and run directories; sets SOCKET_<NAME>.
start() {
  local name=$1 bin=$2 dir=$work/$1
  export SANDBOX_SECRETS_STATE_DIR=$dir/state SANDBOX_SECRETS_RUN_DIR=$dir/run
  SANDBOX_SECRETS_LOG=warn "$bin" serve 2> "$work/$name.log" &
  pids+=($!)
  for _ in $(seq 200); do [[ -S $SANDBOX_SECRETS_RUN_DIR/admin.sock ]] && break; sleep 0.05; done
  for i in $(seq 50); do
    "$bin" set "BENCH_USER_$i" --user mona --repos octo/bench < "$work/values/user_$i" >/dev/null
    "$bin" set "BENCH_REPO_$i" --repo octo/bench < "$work/values/repo_$i" >/dev/null
  done
  local sandbox
  read -r _ sandbox < <("$bin" sandbox create --user mona --repo octo/bench)
  printf -v "SOCKET_$name" '%s' "$sandbox/secrets.sock"
}
start base "$base_target/release/sandbox-secrets"
start head "$ROOT/target/release/sandbox-secrets"
bytes_base=$(curl -s --unix-socket "$SOCKET_base" http://localhost/v1/secrets | wc -c)
bytes_head=$(curl -s --unix-socket "$SOCKET_head" http://localhost/v1/secrets | wc -c)

echo "## Broker: sandbox fetches, $head_rev against $base_rev"
echo ""
echo "Both daemons (release builds; $base_rev built in a temporary worktree) run side by side, one"
echo "sandbox each whose answer holds the same 100 secrets ($bytes_base and $bytes_head bytes);"
echo "\`examples/loadgen\` of this tree sends the same rows to each in turn, the first alternating,"
echo "${SECONDS_EACH} s per row, mean of $ROUNDS rounds (\`scripts/bench-compare.sh\`)."
echo ""
echo "| mode | clients | $base_rev fetches/s | $head_rev fetches/s | ÷ | $base_rev p99 µs | $head_rev p99 µs | errors |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for mode in new-conn keep-alive; do
  for clients in 1 4 16 64; do
    lines=()
    for round in $(seq "$ROUNDS"); do
      if ((round % 2)); then order=(base head); else order=(head base); fi
      for who in "${order[@]}"; do
        socket=SOCKET_$who
        lines+=("$who $("$LOADGEN" --socket "${!socket}" --clients "$clients" --seconds "$SECONDS_EACH" --"$mode")")
      done
    done
    python3 - "$mode" "$clients" "${lines[@]}" <<'EOF'
import json, sys
mode, clients, lines = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
runs = {"base": [], "head": []}
for line in lines:
    who, text = line.split(" ", 1)
    runs[who].append(json.loads(text))
mean = lambda who, k: sum(r[k] for r in runs[who]) / len(runs[who])
errors = sum(r["errors"] for rs in runs.values() for r in rs)
print("| %s | %d | %.0f | %.0f | %.2f | %.0f | %.0f | %d |" % (mode, clients,
      mean("base", "requests_per_s"), mean("head", "requests_per_s"),
      mean("head", "requests_per_s") / mean("base", "requests_per_s"),
      mean("base", "p99_us"), mean("head", "p99_us"), errors))
EOF
  done
done
echo ""
