#!/usr/bin/env bash
# Live secrets: change-to-visible over many watching inits, and the idle cost of one watch.
#   scripts/bench-live.sh [N]      N watching sandboxes (default 1000)
# Starts the release daemon on a temporary state/run dir, N sandboxes of one (user, repository),
# and per sandbox the static init (not PID 1: a subreaper, the same watch code) with
# `--on-change signal:WINCH --secrets-dir /dev/shm/...` over `sleep` (which ignores WINCH). Then
# `sandbox-secrets set` of a secret they all see, and for every sandbox the time from the start
# of the `set` to the moment its TOKEN file held the new value (the file's mtime, tmpfs
# timestamps: a few ms of granularity). Then one watching init alone for 60 s: its scheduler
# slices and context switches (all threads, /proc/<pid>/task/*/{schedstat,status}), beside an
# init with --on-change none. Prints a Markdown section; speed is measured here, never asserted.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-1000}
IDLE=${BENCH_LIVE_IDLE_SECS:-60}

cargo build --quiet --release --bin sandbox-secrets
scripts/build-static.sh >/dev/null
SECRETS=$ROOT/target/release/sandbox-secrets
INIT=$ROOT/target/static/sandbox-init

work=$(mktemp -d /tmp/bench-live.XXXXXX)
files=$(mktemp -d /dev/shm/bench-live.XXXXXX)
export SANDBOX_SECRETS_STATE_DIR=$work/state SANDBOX_SECRETS_RUN_DIR=$work/run
pids=()
cleanup() {
  ((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null
  [[ -n ${broker:-} ]] && kill "$broker" 2>/dev/null && wait "$broker" 2>/dev/null
  rm -rf "$work" "$files"
}
trap cleanup EXIT

"$SECRETS" serve > "$work/broker.log" 2>&1 &
broker=$!
for _ in $(seq 200); do [[ -S $SANDBOX_SECRETS_RUN_DIR/admin.sock ]] && break; sleep 0.05; done
printf '%s' "before" | "$SECRETS" set TOKEN --user mona --repos octo/hello >/dev/null

start_init() { # sandbox-dir files-dir on-change -> pid of the init
  SANDBOX_SECRETS_SOCKET=$1/secrets.sock setsid "$INIT" --on-change "$3" --secrets-dir "$2" \
    -- sleep 100000 > /dev/null 2>> "$work/inits.log" &
  echo $!
}

echo "bench-live: creating $N sandboxes and starting a watching init in each" >&2
t0=$(date +%s%N)
for i in $(seq "$N"); do
  read -r _ dir < <("$SECRETS" sandbox create --user mona --repo octo/hello)
  pids+=("$(start_init "$dir" "$files/$i" signal:WINCH)")
done
for i in $(seq "$N"); do
  for _ in $(seq 200); do [[ -f $files/$i/TOKEN ]] && break; sleep 0.05; done
done
echo "bench-live: $N inits watching after $(( ($(date +%s%N) - t0) / 1000000 )) ms" >&2
sleep 2

set_start=$(date +%s%N)
said=$(printf '%s' "after" | "$SECRETS" set TOKEN --user mona --repos octo/hello)
set_end=$(date +%s%N)
deadline=$(( $(date +%s) + 60 ))
for i in $(seq "$N"); do
  while [[ $(cat "$files/$i/TOKEN" 2>/dev/null) != after ]]; do
    (( $(date +%s) > deadline )) && { echo "bench-live: sandbox $i never saw the change" >&2; break; }
    sleep 0.01
  done
done
stats=$(python3 - "$files" "$N" "$set_start" "$set_end" <<'EOF'
import os, sys
files, n, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
lat = sorted((os.stat(f"{files}/{i}/TOKEN").st_mtime_ns - start) / 1e6 for i in range(1, n + 1))
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"{(end - start) / 1e6:.1f} {pick(0.5):.1f} {pick(0.99):.1f} {lat[-1]:.1f}")
EOF
)
read -r set_ms p50 p99 max <<< "$stats"
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/${pids[0]}/status")
threads=$(ls "/proc/${pids[0]}/task" | wc -l)
kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null || true
pids=()

# Idle: one watching init and one without a watch, side by side, for $IDLE seconds.
read -r _ dir < <("$SECRETS" sandbox create --user mona --repo octo/hello)
watching=$(start_init "$dir" "$files/idle-watch" signal:WINCH)
plain=$(SANDBOX_SECRETS_SOCKET=$dir/secrets.sock setsid "$INIT" -- sleep 100000 >/dev/null 2>&1 & echo $!)
pids+=("$watching" "$plain")
sleep 1
counts() { # pid -> "slices ctxt-switches" summed over its threads
  local slices=0 switches=0 t
  for t in /proc/"$1"/task/*; do
    slices=$(( slices + $(awk '{print $3}' "$t/schedstat") ))
    switches=$(( switches + $(awk '/ctxt_switches/ {s += $2} END {print s}' "$t/status") ))
  done
  echo "$slices $switches"
}
read -r w0 ws0 <<< "$(counts "$watching")"; read -r p0 ps0 <<< "$(counts "$plain")"
sleep "$IDLE"
read -r w1 ws1 <<< "$(counts "$watching")"; read -r p1 ps1 <<< "$(counts "$plain")"
watch_rss=$(awk '/VmRSS/ {print $2}' "/proc/$watching/status")
plain_rss=$(awk '/VmRSS/ {print $2}' "/proc/$plain/status")

cat <<EOF
## Live secrets: change to visible, with the real init watching

\`scripts/bench-live.sh $N\` (release daemon, static init $(stat -c %s "$INIT") bytes, shared
2-core machine): $N sandboxes of one (user, repository), each with the real init watching
(\`--on-change signal:WINCH --secrets-dir\` on tmpfs, over \`sleep\`; as a subreaper, the same
watch code as PID 1), then one \`sandbox-secrets set\` of a secret they all see. Visible = the
sandbox's TOKEN file holds the new value (its mtime; tmpfs timestamps have a few ms of
granularity), measured from the start of the \`set\`.

| measure | value |
| --- | ---: |
| watching inits | $N |
| \`set\` end to end (CLI start included) | $set_ms ms |
| change to visible, p50 | $p50 ms |
| change to visible, p99 | $p99 ms |
| change to visible, last of $N | $max ms |
| last one relative to the \`set\` returning (negative: before) | $(python3 -c "print(f'{$max - $set_ms:.1f}')") ms |
| RSS of one watching init (2 threads: supervisor, watch) | $rss_kib KiB ($threads threads) |

The \`set\` said: \`$said\`

Idle cost over ${IDLE} s (scheduler slices from \`/proc/<pid>/task/*/schedstat\`, context switches
from \`status\`, all threads of the init):

| init | slices | context switches | RSS |
| --- | ---: | ---: | ---: |
| \`--on-change signal:WINCH\` (watching) | $((w1 - w0)) | $((ws1 - ws0)) | $watch_rss KiB |
| \`--on-change none\` (no watch) | $((p1 - p0)) | $((ps1 - ps0)) | $plain_rss KiB |
EOF
