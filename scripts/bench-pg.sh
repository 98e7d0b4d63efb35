#!/usr/bin/env bash
# The PostgreSQL store beside SQLite, in one run (release build, real daemons, the PostgreSQL of
# scripts/postgres.sh on this machine): sandbox fetch throughput (cache warm), admin `set`
# throughput and latency, and change-to-visible on another host (a watch on broker B woken by a
# set through broker A). Prints a Markdown section for BENCHMARKS.md ("PostgreSQL store").
#   BENCH_SECONDS (5) per fetch row, BENCH_SETS (2000) sets per store, BENCH_CHANGES (1000),
#   BENCH_SCALE (10000) sandboxes then BENCH_SCALE_CHANGES (200) more changes.
#   BENCH_ONLY=changes skips the fetch and set rows; BENCH_ONLY=fetch runs only the fetch rows.
#   BENCH_ONLY=coldstart measures only the cold start of one host's broker against a store full of
#   other hosts' sandboxes: BENCH_COLD_HOSTS (10) brokers, one host id each, fill one PostgreSQL
#   store in turn with BENCH_COLD_SANDBOXES (10000) sandboxes each (16 concurrent creates, then the
#   broker is stopped: its sandboxes stay in the store); the last host's broker is then stopped
#   (SIGTERM) and started again, timed until every one of its sockets is back in its directory
#   (as scripts/bench-scale.sh measures a restart), with its RSS; the same for a SQLite broker with
#   BENCH_COLD_SANDBOXES sandboxes. Run directories on tmpfs (/dev/shm, as /run is on a host).
#   Needs a hard RLIMIT_NOFILE above BENCH_COLD_SANDBOXES + 200 (a broker holds one descriptor per
#   sandbox of its own host).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_EACH=${BENCH_SECONDS:-5}
SETS=${BENCH_SETS:-2000}
CHANGES=${BENCH_CHANGES:-1000}
SCALE=${BENCH_SCALE:-10000}
SCALE_CHANGES=${BENCH_SCALE_CHANGES:-200}
ONLY=${BENCH_ONLY:-}
COLD_HOSTS=${BENCH_COLD_HOSTS:-10}
COLD_SANDBOXES=${BENCH_COLD_SANDBOXES:-10000}
case $ONLY in
  '' | changes | fetch) ;;
  coldstart)
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < COLD_SANDBOXES + 200)); then
      echo "bench-pg: the hard descriptor limit is $hard; $COLD_SANDBOXES sandboxes on one host need about $((COLD_SANDBOXES + 200)) (ulimit -Hn)" >&2
      exit 1
    fi ;;
  *) echo "bench-pg: BENCH_ONLY is '', changes, fetch or coldstart, not '$ONLY'" >&2; exit 2 ;;
esac
cargo build --quiet --release --bin sandbox-secrets --example loadgen
# The machine's load before the run (1, 5, 15 min): the cores are shared.
load=$(cut -d' ' -f1-3 /proc/loadavg)
SECRETS=$ROOT/target/release/sandbox-secrets
LOADGEN=$ROOT/target/release/examples/loadgen

scripts/postgres.sh start >/dev/null
set -a
# shellcheck disable=SC1091
. "$(scripts/postgres.sh env)"
set +a
DB=bench_$$
ADMIN_URL=${SANDBOX_TEST_POSTGRES%%\?*}
BENCH_URL="${ADMIN_URL%/*}/$DB?sslmode=disable"
psql_admin() { PGPASSWORD=$(sed -E 's|.*://[^:]+:([^@]+)@.*|\1|' <<<"$SANDBOX_TEST_POSTGRES") \
  psql -X -q -h 127.0.0.1 -p "$SANDBOX_TEST_POSTGRES_PORT" -U sandbox_secrets -d sandbox_secrets "$@"; }
psql_admin -c "CREATE DATABASE $DB" >/dev/null

work=$(mktemp -d /tmp/sandbox-bench-pg.XXXXXX)
# Run directories (sockets): beside the state, or on tmpfs for the cold start's many sockets.
runs=$work
[[ $ONLY == coldstart ]] && runs=$(mktemp -d /dev/shm/sandbox-bench-pg-run.XXXXXX)
pids=()
declare -A pid_of=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 600); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  done
  wait 2>/dev/null || true
  psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
  [[ $runs == "$work" ]] || rm -rf "$runs"
}
trap cleanup EXIT

# start NAME [store-url] [key-file]: a broker with its own state and run directories, host id NAME.
start() {
  local name=$1 store=${2:-}
  mkdir -p "$work/$name" "$runs/$name"; chmod 700 "$work/$name" "$runs/$name"
  if [[ -n ${3:-} ]]; then
    mkdir -m 700 -p "$work/$name/state"; install -m 0600 "$3" "$work/$name/state/key"
  fi
  SANDBOX_SECRETS_STORE=$store SANDBOX_SECRETS_HOST_ID=$name SANDBOX_SECRETS_LOG=warn \
    "$SECRETS" serve --state-dir "$work/$name/state" --run-dir "$runs/$name/run" \
    2>> "$work/$name.log" &
  pids+=($!)
  pid_of[$name]=$!
  for _ in $(seq 200); do [[ -S $runs/$name/run/admin.sock ]] && return 0; sleep 0.05; done
  cat "$work/$name.log" >&2; exit 1
}
cli() { local name=$1; shift; "$SECRETS" --run-dir "$runs/$name/run" "$@"; }
# stop NAME: SIGTERM and wait for the broker to exit.
stop() {
  local p=${pid_of[$1]}
  kill -TERM "$p"
  while kill -0 "$p" 2>/dev/null; do sleep 0.02; done
  wait "$p" 2>/dev/null || true
}
rss_mib() { awk '/^VmRSS:/ { printf "%d", $2 / 1024 }' "/proc/${pid_of[$1]}/status"; }
field() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
# secrets NAME: the same 100 secrets (50 user + 50 repository) through broker NAME.
secrets() {
  for i in $(seq 50); do
    head -c 32 /dev/urandom | base64 -w0 | cli "$1" set "BENCH_USER_$i" --user mona --repos octo/bench >/dev/null
    head -c 32 /dev/urandom | base64 -w0 | cli "$1" set "BENCH_REPO_$i" --repo octo/bench >/dev/null
  done
}
# fill NAME N: N sandboxes created through broker NAME by 16 concurrent clients; prints creates/s.
fill() {
  local line
  line=$("$LOADGEN" --socket "$runs/$1/run/admin.sock" --create mona:octo/bench --clients 16 \
    --count "$2" --seconds 3600)
  [[ $(field "$line" errors) == 0 ]] || echo "bench-pg: creates on $1: $line" >&2
  printf '%.0f' "$(field "$line" requests_per_s)"
}
# restart NAME STORE: SIGTERM the broker NAME, start it again; writes to $work/NAME.restart
# "stop_s store_s all_s": the stop, then from exec until the admin socket is bound (the store
# opened and read: the admin socket is bound after) and until every sandbox socket of the
# broker is back in its directory.
restart() {
  local name=$1 store=$2 run=$runs/$1/run t0 t1
  find "$run/sandboxes" -mindepth 2 -maxdepth 2 -name secrets.sock > "$work/$name.sockets"
  t0=$(date +%s.%N)
  stop "$name"
  t1=$(date +%s.%N)
  SANDBOX_SECRETS_STORE=$store SANDBOX_SECRETS_HOST_ID=$name SANDBOX_SECRETS_LOG=warn \
    python3 - "$SECRETS" "$work/$name/state" "$run" "$work/$name.sockets" "$work/$name.log" \
    "$work/$name.pid" > "$work/$name.times" <<'EOF'
import os, subprocess, sys, time
secrets, state, run, listing, log, pidfile = sys.argv[1:]
left = set(open(listing).read().split())
admin = os.path.join(run, "admin.sock")
t0 = time.monotonic()
p = subprocess.Popen([secrets, "serve", "--state-dir", state, "--run-dir", run],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "a"))
open(pidfile, "w").write(str(p.pid))
up = None
while left and time.monotonic() - t0 < 300:
    if up is None and os.path.exists(admin):
        up = time.monotonic() - t0
    left = {s for s in left if not os.path.exists(s)}
    if left:
        time.sleep(0.002)
if left:
    sys.exit("bench-pg: %d sockets still missing after 300 s" % len(left))
print("%.3f %.3f" % (up if up is not None else time.monotonic() - t0, time.monotonic() - t0))
EOF
  pid_of[$name]=$(cat "$work/$name.pid")
  pids+=("${pid_of[$name]}")
  printf '%.3f %s\n' "$(python3 -c "print($t1 - $t0)")" "$(cat "$work/$name.times")" > "$work/$name.restart"
}

if [[ $ONLY == coldstart ]]; then
  hosts=$COLD_HOSTS n=$COLD_SANDBOXES
  fills=()
  # One store, $hosts host ids in turn; the first host's key goes to the others.
  for h in $(seq "$hosts"); do
    if ((h == 1)); then start h1 "$BENCH_URL"; secrets h1; else start "h$h" "$BENCH_URL" "$work/h1/state/key"; fi
    fills+=("$(fill "h$h" "$n")")
    ((h == hosts)) || stop "h$h"
  done
  last=h$hosts
  pg_before=$(rss_mib "$last")
  restart "$last" "$BENCH_URL"
  read -r pg_stop pg_store pg_all < "$work/$last.restart"
  sleep 0.3
  pg_rss=$(rss_mib "$last")
  pg_status=$(cli "$last" status --json)
  pg_first=$("$LOADGEN" --spread "$runs/$last/run/sandboxes" --clients 16 --count "$n" --seconds 600)
  pg_size=$(psql_admin -At -c "SELECT pg_size_pretty(pg_database_size('$DB'))")
  stop "$last"
  # SQLite, one host: the same number of sandboxes of its own.
  start sqlite
  secrets sqlite
  sq_fill=$(fill sqlite "$n")
  sq_before=$(rss_mib sqlite)
  restart sqlite ""
  read -r sq_stop sq_store sq_all < "$work/sqlite.restart"
  sleep 0.3
  sq_rss=$(rss_mib sqlite)
  sq_status=$(cli sqlite status --json)
  sq_first=$("$LOADGEN" --spread "$runs/sqlite/run/sandboxes" --clients 16 --count "$n" --seconds 600)
  sq_size=$(du -sk "$work/sqlite/state" | awk '{ printf "%.1f MB", $1 / 1024 }')
  stop sqlite
  # What each restarted broker says it serves: all of its host's sandboxes, and the store's count.
  check() {
    python3 -c 'import json, sys
s = json.loads(sys.argv[2]); here, total = int(sys.argv[3]), int(sys.argv[4])
if (s["sandboxes_here"], s["sandboxes_total"]) != (here, total):
    sys.exit("bench-pg: %s after the cold start: %s sandboxes here, %s in the store; expected %d, %d"
             % (sys.argv[1], s["sandboxes_here"], s["sandboxes_total"], here, total))' "$@"
  }
  check postgres "$pg_status" "$n" $((hosts * n))
  check sqlite "$sq_status" "$n" "$n"
  total=$((hosts * n))
  echo "## PostgreSQL store: cold start of one host's broker"
  echo ""
  echo "\`BENCH_ONLY=coldstart scripts/bench-pg.sh\` (release build, $hosts hosts x $n sandboxes):"
  echo "one PostgreSQL store filled by $hosts brokers in turn, one host id each (\`examples/loadgen"
  echo "--create\`, 16 concurrent clients; each broker stopped after its $n: its sandboxes stay in"
  echo "the store), then the broker of host $last stopped (SIGTERM) and started again; a SQLite broker"
  echo "with $n sandboxes of its own the same way, in the same run. Store read = from exec until"
  echo "the admin socket is bound (it is bound once the store is opened and read); all sockets = until"
  echo "every one of the host's $n sandbox sockets is back in its directory. Run directories on tmpfs."
  echo "Load average before the run: $load."
  echo ""
  echo "| store | holds | this host's | stop s | store read s | all sockets s | RSS MiB before | RSS MiB after start | store size |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  echo "| postgres | $total | $n | $pg_stop | $pg_store | $pg_all | $pg_before | $pg_rss | $pg_size |"
  echo "| sqlite | $n | $n | $sq_stop | $sq_store | $sq_all | $sq_before | $sq_rss | $sq_size |"
  echo ""
  echo "First fetch of each of the host's $n sandboxes right after the start (\`loadgen --spread\`, 16"
  echo "clients, a new connection each, every answer a cache miss):"
  echo ""
  echo "| store | fetches/s | p50 µs | p99 µs | errors |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for row in "postgres $pg_first" "sqlite $sq_first"; do
    python3 -c 'import json, sys
r = json.loads(sys.argv[2])
print("| %s | %.0f | %d | %d | %d |" % (sys.argv[1], r["requests_per_s"], r["p50_us"], r["p99_us"], r["errors"]))' "${row%% *}" "${row#* }"
  done
  echo ""
  echo "Creates/s while filling (store holding 0, $n, ... sandboxes before each host's turn): PostgreSQL ${fills[*]}; SQLite $sq_fill."
  echo ""
  exit 0
fi

start sqlite
start pg-a "$BENCH_URL"
start pg-b "$BENCH_URL" "$work/pg-a/state/key"

# Fetches: the same 100 secrets (50 user + 50 repository) in each store.
for b in sqlite pg-a; do secrets "$b"; done
read -r _ dir_sqlite < <(cli sqlite sandbox create --user mona --repo octo/bench)
read -r _ dir_pg < <(cli pg-b sandbox create --user mona --repo octo/bench)

echo "## PostgreSQL store"
echo ""
echo "\`scripts/bench-pg.sh\` (release build): brokers on SQLite and on PostgreSQL 15 (Debian's,"
echo "\`scripts/postgres.sh\`, on the same 2 shared cores, fsync on), measured in one run (load"
echo "average before it: $load)."
echo ""
if [[ $ONLY != changes ]]; then
echo "Sandbox fetches (answer of 100 secrets, cache warm, \`examples/loadgen\`, ${SECONDS_EACH} s per"
echo "row; the PostgreSQL sandbox lives on broker B, its secrets were set through broker A):"
echo ""
echo "| store | mode | clients | fetches/s | p50 µs | p99 µs | errors |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
for mode in new-conn keep-alive; do
  for clients in 1 16; do
    for b in sqlite postgres; do
      d=$dir_sqlite; [[ $b == postgres ]] && d=$dir_pg
      line=$("$LOADGEN" --socket "$d/secrets.sock" --clients "$clients" --seconds "$SECONDS_EACH" --"$mode")
      python3 -c 'import json, sys
r = json.loads(sys.argv[2])
print("| %s | %s | %d | %.0f | %d | %d | %d |" % (sys.argv[1], r["mode"], r["clients"],
      r["requests_per_s"], r["p50_us"], r["p99_us"], r["errors"]))' "$b" "$line"
    done
  done
done
echo ""
fi
[[ $ONLY == fetch ]] && exit 0

# Admin sets and change-to-visible: python over the admin and sandbox sockets.
BENCH_ONLY=$ONLY SECRETS_BIN=$SECRETS python3 - "$work" "$SETS" "$CHANGES" "$SCALE" "$SCALE_CHANGES" <<'PY'
import json, os, socket, sys, threading, time

work, sets, changes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
scale, scale_changes = int(sys.argv[4]), int(sys.argv[5])

def exchange(path, raw, timeout=60):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall(raw)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head.decode(), body

def admin_set(broker, name, repo, value):
    body = json.dumps({"name": name, "repo": repo, "value": value}).encode()
    raw = (b"POST /v1/admin/secrets/set HTTP/1.1\r\nHost: l\r\nConnection: close\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    code, _, text = exchange(f"{work}/{broker}/run/admin.sock", raw)
    if code != 200:
        raise SystemExit(f"set on {broker}: {code} {text[:200]}")

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

if os.environ.get("BENCH_ONLY") != "changes":
  print("Admin `set` over the admin socket (repository secrets, each client on its own repository"
        " cycling over 100 names, a new value each time; acknowledged = committed):")
  print("")
  print("| store | clients | sets | sets/s | p50 ms | p99 ms |")
  print("| --- | ---: | ---: | ---: | ---: | ---: |")
  for clients in (1, 16):
      for label, broker in (("sqlite", "sqlite"), ("postgres", "pg-a")):
          lat = []
          lock = threading.Lock()
          per = sets // clients
          def run(c):
              mine = []
              for i in range(per):
                  t = time.perf_counter()
                  admin_set(broker, "S%d" % (i % 100), "octo/set%d-%d" % (clients, c), "v%d" % i)
                  mine.append(time.perf_counter() - t)
              with lock:
                  lat.extend(mine)
          started = time.perf_counter()
          ts = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
          for t in ts: t.start()
          for t in ts: t.join()
          took = time.perf_counter() - started
          print("| %s | %d | %d | %.0f | %.2f | %.2f |" % (label, clients, len(lat), len(lat) / took,
                pct(lat, 50) * 1e3, pct(lat, 99) * 1e3))
  print("")

# Change-to-visible: a watch on broker B's sandbox, a set through broker A; the time from the
# set being sent to the watch answering with the new value.
def change_to_visible(repo, n):
    out = os.popen(f"{os.environ.get('SECRETS_BIN')} --run-dir {work}/pg-b/run sandbox create --user mona --repo {repo}").read().split()
    sock = out[1] + "/secrets.sock"
    admin_set("pg-a", "W", repo, "v0")
    deadline = time.time() + 30
    while True:
        code, head, body = exchange(sock, b"GET /v1/secrets HTTP/1.1\r\nHost: l\r\nConnection: close\r\n\r\n")
        if b'"v0"' in body or time.time() > deadline:
            break
        time.sleep(0.01)
    def etag(head):
        for line in head.split("\r\n"):
            k, _, v = line.partition(":")
            if k.lower() == "etag":
                return v.strip()
    tag = etag(head)
    lat, setlat = [], []
    for i in range(1, n + 1):
        result = {}
        def watch():
            raw = ("GET /v1/secrets HTTP/1.1\r\nHost: l\r\nConnection: close\r\nIf-None-Match: %s\r\n"
                   "Prefer: wait=10\r\n\r\n" % tag).encode()
            result["r"] = exchange(sock, raw)
            result["t"] = time.perf_counter()
        w = threading.Thread(target=watch)
        w.start()
        time.sleep(0.002)  # the watch is registered before the change
        t0 = time.perf_counter()
        admin_set("pg-a", "W", repo, "v%d" % i)
        setlat.append(time.perf_counter() - t0)
        w.join()
        code, head, body = result["r"]
        if code != 200 or (b'"v%d"' % i) not in body:
            raise SystemExit(f"change {i}: watch answered {code}: {body[:200]}")
        lat.append(result["t"] - t0)
        tag = etag(head)
    return setlat, lat

def rows(label, setlat, lat):
    print("| %s | set through A acknowledged | %.2f | %.2f | %.2f |" % (label, pct(setlat, 50) * 1e3, pct(setlat, 99) * 1e3, max(setlat) * 1e3))
    print("| %s | visible to the watch on B | %.2f | %.2f | %.2f |" % (label, pct(lat, 50) * 1e3, pct(lat, 99) * 1e3, max(lat) * 1e3))

setlat, lat = change_to_visible("octo/watch", changes)
print("Change-to-visible on another host: each change a `set` through broker A while a watch"
      " (`If-None-Match`, long-poll) waits on a sandbox of broker B; from the set being sent to the"
      " watch's answer with the new value (the set's own round trip included). Then again with"
      " %d more sandboxes in the store (created through A), since broker B re-reads the whole"
      " store on each change:" % scale)
print("")
print("| store holds | what | p50 ms | p99 ms | max ms |")
print("| --- | --- | ---: | ---: | ---: |")
rows("%d changes, a few rows" % changes, setlat, lat)

# Scale: `scale` sandboxes created through A from 16 clients.
def create(c, k):
    body = json.dumps({"user": "u%d" % c, "repo": "octo/scale%d" % c}).encode()
    raw = (b"POST /v1/admin/sandboxes/create HTTP/1.1\r\nHost: l\r\nConnection: close\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    for _ in range(k):
        code, _, text = exchange(f"{work}/pg-a/run/admin.sock", raw)
        if code != 200:
            raise SystemExit(f"create: {code} {text[:200]}")
started = time.perf_counter()
ts = [threading.Thread(target=create, args=(c, scale // 16)) for c in range(16)]
for t in ts: t.start()
for t in ts: t.join()
made = time.perf_counter() - started
setlat, lat = change_to_visible("octo/watch2", scale_changes)
rows("%d changes, %d sandboxes" % (scale_changes, scale // 16 * 16), setlat, lat)
print("")
print("(%d sandboxes created through broker A in %.1f s, %.0f/s.)" % (scale // 16 * 16, made, scale // 16 * 16 / made))
print("")
PY
