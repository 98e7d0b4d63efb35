#!/usr/bin/env bash
# Broker at scale: one real daemon (release build) grown to 1k, 10k and 18k live sandboxes by 16
# concurrent `sandbox create` clients. At each size: create throughput, the daemon's RSS and its
# growth per sandbox since 10 sandboxes, one fetch's p99 (one client, a new connection per
# request, as an init) against the figure at 10 sandboxes. At the largest size: restart (SIGTERM,
# start, time until every sandbox socket is back in its directory) and, on the restarted daemon,
# the p99 of fetches going to every sandbox in turn (answer cache misses included). The kernel's
# side: the growth of the system-wide slab (/proc/meminfo Slab) per sandbox, noisy on a shared host.
# The run directory is on tmpfs (/dev/shm, as /run is on a host; BENCH_SCALE_RUN_BASE moves it),
# the state directory on disk (mktemp under /tmp).
# Prints a Markdown section. BENCH_SCALE_SIZES (default "1000 10000 18000") and BENCH_SECONDS
# (per fetch row, default 5) shorten a trial run. Needs a hard RLIMIT_NOFILE above the largest
# size (each sandbox holds one descriptor; the daemon raises its soft limit to the hard one).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_EACH=${BENCH_SECONDS:-5}
read -r -a SIZES <<< "${BENCH_SCALE_SIZES:-1000 10000 18000}"
cargo build --quiet --release --bin sandbox-secrets --example loadgen
SECRETS=$ROOT/target/release/sandbox-secrets
LOADGEN=$ROOT/target/release/examples/loadgen

largest=${SIZES[-1]}
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && ((hard < largest + 200)); then
  echo "bench-scale: the hard descriptor limit is $hard; $largest sandboxes need about $((largest + 200)) (ulimit -Hn, LimitNOFILE)" >&2
  exit 1
fi

work=$(mktemp -d /tmp/sandbox-scale.XXXXXX)
run_base=$(mktemp -d "${BENCH_SCALE_RUN_BASE:-/dev/shm}/sandbox-scale-run.XXXXXX")
export SANDBOX_SECRETS_STATE_DIR=$work/state SANDBOX_SECRETS_RUN_DIR=$run_base/run
broker=
cleanup() {
  [[ -n $broker ]] && kill "$broker" 2>/dev/null
  for _ in $(seq 200); do [[ -n $broker ]] && kill -0 "$broker" 2>/dev/null || break; sleep 0.05; done
  rm -rf "$work" "$run_base"
}
trap cleanup EXIT

start() {
  SANDBOX_SECRETS_LOG=warn "$SECRETS" serve 2>> "$work/broker.log" &
  broker=$!
  for _ in $(seq 200); do [[ -S $SANDBOX_SECRETS_RUN_DIR/admin.sock ]] && return; sleep 0.05; done
  echo "bench-scale: the daemon did not start" >&2
  cat "$work/broker.log" >&2
  exit 1
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$broker/status"; }
slab_kib() { awk '/^Slab:/ { print $2 }' /proc/meminfo; }
field() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
# Creates sandboxes until $1 are live, from 16 clients; prints the loadgen line.
grow_to() {
  local have
  have=$(find "$SANDBOX_SECRETS_RUN_DIR/sandboxes" -mindepth 1 -maxdepth 1 -type d | wc -l)
  "$LOADGEN" --socket "$SANDBOX_SECRETS_RUN_DIR/admin.sock" --create mona:octo/bench \
    --clients 16 --count $(($1 - have)) --seconds 600
}
p99() { field "$("$LOADGEN" "$@" --clients 1 --new-conn --seconds "$SECONDS_EACH")" p99_us; }

start
for i in $(seq 50); do
  head -c 32 /dev/urandom | base64 -w0 | "$SECRETS" set "BENCH_USER_$i" --user mona --repos octo/bench >/dev/null
  head -c 32 /dev/urandom | base64 -w0 | "$SECRETS" set "BENCH_REPO_$i" --repo octo/bench >/dev/null
done
read -r _ first < <("$SECRETS" sandbox create --user mona --repo octo/bench)
grow_to 10 > /dev/null
hot=$first/secrets.sock
p99 --socket "$hot" > /dev/null # warm-up
base_p99=$(p99 --socket "$hot")
base_spread=$(p99 --spread "$SANDBOX_SECRETS_RUN_DIR/sandboxes")
sleep 0.3
base_rss=$(rss_kib)
base_slab=$(slab_kib)

rows=()
for n in "${SIZES[@]}"; do
  line=$(grow_to "$n")
  rate=$(field "$line" requests_per_s)
  errors=$(field "$line" errors)
  sleep 0.3
  rss=$(rss_kib)
  slab=$(slab_kib)
  per=$(python3 -c 'import sys; print("%.2f" % ((int(sys.argv[2]) - int(sys.argv[1])) / (int(sys.argv[4]) - int(sys.argv[3]))))' "$base_rss" "$rss" 10 "$n")
  hot_p99=$(p99 --socket "$hot")
  kper=$(python3 -c "print('%.2f' % (($slab - $base_slab) / ($n - 10)))")
  rows+=("$(printf '| %d | %.0f | %d | %d | %s | %s | %d | %.2f |' "$n" "$rate" "$errors" $((rss / 1024)) "$per" "$kper" "$hot_p99" "$(python3 -c "print($hot_p99 / $base_p99)")")")
done

# Restart: every socket is removed at SIGTERM; time from the start of `serve` until all are back.
sockets=$work/sockets.txt
find "$SANDBOX_SECRETS_RUN_DIR/sandboxes" -mindepth 2 -maxdepth 2 -name secrets.sock > "$sockets"
live=$(wc -l < "$sockets")
kill -TERM "$broker"
while kill -0 "$broker" 2>/dev/null; do sleep 0.02; done
broker=
restart=$(python3 - "$SECRETS" "$sockets" "$work/broker.log" "$work/pid" <<'EOF'
import os, subprocess, sys, time
secrets, listing, log, pidfile = sys.argv[1:]
left = set(open(listing).read().split())
env = dict(os.environ, SANDBOX_SECRETS_LOG="warn")
t0 = time.monotonic()
p = subprocess.Popen([secrets, "serve"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=open(log, "a"), env=env)
open(pidfile, "w").write(str(p.pid))
# A socket once back stays, so the listing is walked once, waiting at the first one missing:
# about one stat per socket in all. (Re-checking every missing socket each round cost ~18k stats
# per round on the same 2 cores the daemon was starting on.)
missing = sorted(left)
while missing and time.monotonic() - t0 < 120:
    if os.path.exists(missing[-1]):
        missing.pop()
    else:
        time.sleep(0.001)
print("%.3f" % (time.monotonic() - t0) if not missing else "timeout (%d sockets missing)" % len(missing))
EOF
)
broker=$(cat "$work/pid")
sleep 0.3
restart_rss=$(rss_kib)
spread_p99=$(p99 --spread "$SANDBOX_SECRETS_RUN_DIR/sandboxes")
after_p99=$(p99 --socket "$hot")

echo "## Scale: a host full of sandboxes"
echo ""
echo "The real daemon (release build, \`scripts/bench-scale.sh\`), 100 secrets per answer (50 user +"
echo "50 repository), grown from 10 sandboxes to each size by \`examples/loadgen --create\` with 16"
echo "concurrent clients. Memory is VmRSS; per sandbox = (RSS - RSS at 10 sandboxes) / (n - 10)."
echo "Kernel slab: the growth of /proc/meminfo Slab over the same span (system-wide: socket, inode,"
echo "dentry, epoll entry; noisy when other work runs). Run directory on tmpfs, state on ext4."
echo "Fetch p99: one client, a new connection per request, ${SECONDS_EACH} s, always to the same"
echo "sandbox. Targets: <= 2 KiB per sandbox, p99 within 1.2x of the 10-sandbox figure,"
echo ">= 5000 creates/s, restart <= 2 s at 18k."
echo ""
echo "| sandboxes | creates/s | create errors | RSS MiB | KiB per sandbox | kernel slab KiB per sandbox | fetch p99 µs | ÷ at 10 |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '| 10 | | | %d | | | %d | 1.00 |\n' $((base_rss / 1024)) "$base_p99"
printf '%s\n' "${rows[@]}"
echo ""
echo "Restart with $live sandboxes (SIGTERM, then \`serve\` until every socket is back in its"
echo "directory): **$restart s**; RSS of the restarted daemon $((restart_rss / 1024)) MiB. On it, one"
echo "fetch's p99 is $after_p99 µs to the same sandbox, $spread_p99 µs with each fetch going to the next of"
echo "the $live sandboxes (answer cache misses included; $base_spread µs over the 10 at the start)."
echo ""
