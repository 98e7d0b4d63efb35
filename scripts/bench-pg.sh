#!/usr/bin/env bash
# The PostgreSQL store beside SQLite, in one run (release build, real daemons, the PostgreSQL of
# scripts/postgres.sh on this machine): sandbox fetch throughput (cache warm), admin `set`
# throughput and latency, and change-to-visible on another host (a watch on broker B woken by a
# set through broker A). Prints a Markdown section for BENCHMARKS.md ("PostgreSQL store").
#   BENCH_SECONDS (5) per fetch row, BENCH_SETS (2000) sets per store, BENCH_CHANGES (1000),
#   BENCH_SCALE (10000) sandboxes then BENCH_SCALE_CHANGES (200) more changes.
#   BENCH_ONLY=changes skips the fetch and set rows.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_EACH=${BENCH_SECONDS:-5}
SETS=${BENCH_SETS:-2000}
CHANGES=${BENCH_CHANGES:-1000}
SCALE=${BENCH_SCALE:-10000}
SCALE_CHANGES=${BENCH_SCALE_CHANGES:-200}
cargo build --quiet --release --bin sandbox-secrets --example loadgen
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
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME [store-url]: a broker with its own state and run directories.
start() {
  local name=$1 store=${2:-}
  mkdir -p "$work/$name"; chmod 700 "$work/$name"
  [[ -n ${3:-} ]] && { mkdir -m 700 -p "$work/$name/state"; install -m 0600 "$3" "$work/$name/state/key"; }
  SANDBOX_SECRETS_STORE=$store SANDBOX_SECRETS_HOST_ID=$name SANDBOX_SECRETS_LOG=warn \
    "$SECRETS" serve --state-dir "$work/$name/state" --run-dir "$work/$name/run" \
    2> "$work/$name.log" &
  pids+=($!)
  for _ in $(seq 200); do [[ -S $work/$name/run/admin.sock ]] && return 0; sleep 0.05; done
  cat "$work/$name.log" >&2; exit 1
}
cli() { local name=$1; shift; "$SECRETS" --run-dir "$work/$name/run" "$@"; }

start sqlite
start pg-a "$BENCH_URL"
start pg-b "$BENCH_URL" "$work/pg-a/state/key"

# Fetches: the same 100 secrets (50 user + 50 repository) in each store.
for b in sqlite pg-a; do
  for i in $(seq 50); do
    head -c 32 /dev/urandom | base64 -w0 | cli "$b" set "BENCH_USER_$i" --user mona --repos octo/bench >/dev/null
    head -c 32 /dev/urandom | base64 -w0 | cli "$b" set "BENCH_REPO_$i" --repo octo/bench >/dev/null
  done
done
read -r _ dir_sqlite < <(cli sqlite sandbox create --user mona --repo octo/bench)
read -r _ dir_pg < <(cli pg-b sandbox create --user mona --repo octo/bench)

echo "## PostgreSQL store"
echo ""
echo "\`scripts/bench-pg.sh\` (release build): brokers on SQLite and on PostgreSQL 15 (Debian's,"
echo "\`scripts/postgres.sh\`, on the same 2 shared cores, fsync on), measured in one run."
echo ""
if [[ ${BENCH_ONLY:-} != changes ]]; then
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

# Admin sets and change-to-visible: python over the admin and sandbox sockets.
BENCH_ONLY=${BENCH_ONLY:-} SECRETS_BIN=$SECRETS python3 - "$work" "$SETS" "$CHANGES" "$SCALE" "$SCALE_CHANGES" <<'PY'
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
