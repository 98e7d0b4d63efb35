#!/usr/bin/env bash
# Injection cost (called by scripts/bench.sh INIT): the whole life of `sandbox-init -- /bin/true`
# with 0, 10, 100 secrets (+ a registry triplet) served by the real broker, and 1000 served by a
# static answer (the broker holds at most 200 per sandbox), against tini running the same child.
# Prints a Markdown section.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
INIT=${1:-$ROOT/target/static/sandbox-init}
RUNS=${BENCH_RUNS:-500}
cargo build --quiet --release --bin sandbox-secrets
SECRETS=$ROOT/target/release/sandbox-secrets

work=$(mktemp -d /tmp/sandbox-bench.XXXXXX)
export SANDBOX_SECRETS_STATE_DIR=$work/state SANDBOX_SECRETS_RUN_DIR=$work/run
# The init writes config.json here, not into root's own docker config.
export DOCKER_CONFIG=$work/docker
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
SANDBOX_SECRETS_LOG=warn "$SECRETS" serve 2> "$work/broker.log" &
for _ in $(seq 100); do [[ -S $SANDBOX_SECRETS_RUN_DIR/admin.sock ]] && break; sleep 0.05; done

value() { head -c 24 /dev/urandom | base64 -w0; }
declare -A sock
for n in 0 10 100; do
  user=bench$n
  for i in $(seq 1 $n); do
    value | "$SECRETS" set "BENCH_$i" --user "$user" --repos "octo/bench$n" >/dev/null
  done
  read -r _ dir < <("$SECRETS" sandbox create --user "$user" --repo "octo/bench$n")
  sock[$n]=$dir/secrets.sock
done
# 100 secrets and one registry triplet (97 + 3).
for i in $(seq 1 97); do value | "$SECRETS" set "BENCH_$i" --user benchreg --repos octo/benchreg >/dev/null; done
printf 'registry.example.test:5000' | "$SECRETS" set ACME_CONTAINER_REGISTRY_SERVER --user benchreg --repos octo/benchreg >/dev/null
printf 'robot' | "$SECRETS" set ACME_CONTAINER_REGISTRY_USER --user benchreg --repos octo/benchreg >/dev/null
value | "$SECRETS" set ACME_CONTAINER_REGISTRY_PASSWORD --user benchreg --repos octo/benchreg >/dev/null
read -r _ dir < <("$SECRETS" sandbox create --user benchreg --repo octo/benchreg)
sock[reg]=$dir/secrets.sock

# 1000 secrets: a static answer from a small Python server (the broker caps a sandbox at 200).
python3 - "$work/static.sock" <<'PY' &
import json, os, secrets, socketserver, sys
from http.server import BaseHTTPRequestHandler
body = json.dumps({"sandbox": "static", "repository": "octo/static", "secrets": [
    {"name": f"BENCH_{i}", "value": secrets.token_urlsafe(24)} for i in range(1000)]}).encode()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    def get_request(self):
        conn, _ = self.socket.accept(); return conn, ("local", 0)
S(sys.argv[1], H).serve_forever()
PY
for _ in $(seq 100); do [[ -S $work/static.sock ]] && break; sleep 0.05; done

hyperfine -N --warmup 30 --runs "$RUNS" --export-json "$work/inject.json" \
  -n 'tini -s' '/usr/bin/tini -s -- /bin/true' \
  -n 'tini-static -s' '/usr/bin/tini-static -s -- /bin/true' \
  -n 'sandbox-init, no socket' "$INIT --socket $work/absent.sock -- /bin/true" \
  -n 'sandbox-init, 0 secrets' "$INIT --socket ${sock[0]} -- /bin/true" \
  -n 'sandbox-init, 10 secrets' "$INIT --socket ${sock[10]} -- /bin/true" \
  -n 'sandbox-init, 100 secrets' "$INIT --socket ${sock[100]} -- /bin/true" \
  -n 'sandbox-init, 100 secrets incl. a registry triplet' "$INIT --socket ${sock[reg]} -- /bin/true" \
  -n 'sandbox-init, 1000 secrets (static Python answer)' "$INIT --socket $work/static.sock -- /bin/true" \
  > "$work/hyperfine.txt" 2>&1 || { cat "$work/hyperfine.txt" >&2; exit 1; }

echo "## Injection: start to the child's exec"
echo ""
echo "The whole life of \`init -- /bin/true\` (hyperfine -N, $RUNS runs each), the static musl"
echo "sandbox-init fetching from the real broker (release), against tini running the same child."
echo "Cost = mean − mean(tini -s), and the median's cost beside it (less moved by a busy host)."
echo "Targets (issue 11): 100 secrets plus a registry triplet at most +0.5 ms over tini -s, 100"
echo "secrets alone at most +0.3 ms. The 1000-secret row is served by a Python server (slower than"
echo "the broker). Load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)."
echo ""
python3 - "$work/inject.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
tini = r["tini -s"]["mean"]
tini_med = r["tini -s"]["median"]
print("| command | mean µs | σ µs | median µs | cost over tini µs (mean) | (median) | ÷ tini |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, x in r.items():
    print(f"| {name} | {x['mean']*1e6:.0f} | {x['stddev']*1e6:.0f} | {x['median']*1e6:.0f} | "
          f"{(x['mean']-tini)*1e6:.0f} | {(x['median']-tini_med)*1e6:.0f} | {x['mean']/tini:.2f} |")
PY
echo ""
