#!/usr/bin/env bash
# Smoke tests in real containers on this machine's Docker engine, against the real broker on the
# host: both images (scripts/images.sh builds them), secrets in, fail-closed, docker stop, zombies,
# docker exec through profile.d and `sandbox-init exec`, a change reaching a running container
# (--on-change restart), registry credentials, --user. Prints `smoke: N passed, N failed`.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if ! docker info >/dev/null 2>&1; then
  echo "skipped: no docker (the engine does not answer)"
  [[ ${SANDBOX_INIT_REQUIRE_ALL:-} == 1 ]] && { echo "smoke: 0 passed, 1 failed"; exit 1; }
  exit 0
fi

set -e
cargo build --quiet --release --bin sandbox-secrets
scripts/build-static.sh >/dev/null
scripts/images.sh >/dev/null
set +e
SECRETS=$ROOT/target/release/sandbox-secrets

work=$(mktemp -d /tmp/sandbox-smoke.XXXXXX)
chmod 0755 "$work"
export SANDBOX_SECRETS_STATE_DIR=$work/state SANDBOX_SECRETS_RUN_DIR=$work/run
containers=()
cleanup() {
  ((${#containers[@]})) && docker rm -f "${containers[@]}" >/dev/null 2>&1
  [[ -n ${broker:-} ]] && kill "$broker" 2>/dev/null && wait "$broker" 2>/dev/null
  [[ -n ${own_registry:-} ]] && scripts/registry.sh stop >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); echo "FAILED: $*"; }
# expect NAME WANT GOT [context]
expect() { if [[ "$3" == "$2" ]]; then ok "$1"; else fail "$1: want [$2] got [$3] ${4:-}"; fi; }

start_broker() {
  "$SECRETS" serve >> "$work/broker.log" 2>&1 &
  broker=$!
  for _ in $(seq 100); do [[ -S $SANDBOX_SECRETS_RUN_DIR/admin.sock ]] && break; sleep 0.05; done
}
start_broker

VALUE='smoke-value-7d1f $HOME "quoted" '\''single'\'''
printf '%s' "$VALUE" | "$SECRETS" set SMOKE_TOKEN --user mona --repos octo/hello >/dev/null
printf '%s' "other-repo-only-5c2e" | "$SECRETS" set OTHER_TOKEN --user mona --repos octo/other >/dev/null
# The private registry (scripts/test.sh starts it; run alone, smoke starts and stops it).
REGISTRY_ENV=${SANDBOX_TEST_DIR:-/run/sandbox-init-test}/registry.env
if [[ ! -f $REGISTRY_ENV ]]; then
  scripts/registry.sh start >/dev/null && own_registry=1
fi
# shellcheck disable=SC1090
[[ -f $REGISTRY_ENV ]] && . "$REGISTRY_ENV"
if [[ -n ${SANDBOX_TEST_REGISTRY:-} ]]; then
  printf '%s' "$SANDBOX_TEST_REGISTRY" | "$SECRETS" set CI_CONTAINER_REGISTRY_SERVER --repo octo/hello >/dev/null
  printf '%s' "$SANDBOX_TEST_REGISTRY_USER" | "$SECRETS" set CI_CONTAINER_REGISTRY_USER --repo octo/hello >/dev/null
  printf '%s' "$SANDBOX_TEST_REGISTRY_PASSWORD" | "$SECRETS" set CI_CONTAINER_REGISTRY_PASSWORD --repo octo/hello >/dev/null
fi
read -r _ dir < <("$SECRETS" sandbox create --user mona --repo octo/hello)

run_suite() { # image user shell
  local img=sandbox-init/$1:latest user=$2 sh=$3 out code c t0
  echo "== $img"

  out=$(docker run --rm -v "$dir:/run/sandbox:ro" "$img" "$sh" -c 'printf %s "$SMOKE_TOKEN"; echo "|${OTHER_TOKEN:-absent}"')
  expect "$1: the command sees its secret, not another repository's" "$VALUE|absent" "$out"

  out=$(docker run --rm -e SANDBOX_INIT_LOG=info "$img" "$sh" -c 'echo "${SMOKE_TOKEN:-none}"' 2>"$work/err")
  expect "$1: no mount starts without secrets" "none" "$out"
  grep -qi "socket" "$work/err" && ok "$1: no mount says so at info level" || fail "$1: no info line: $(cat "$work/err")"

  # A dead broker: the socket file is there, nobody answers.
  mkdir -p "$work/dead-$1" && python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$work/dead-$1/secrets.sock"
  chmod 0666 "$work/dead-$1/secrets.sock"
  out=$(docker run --rm -v "$work/dead-$1:/run/sandbox:ro" "$img" "$sh" -c 'echo started' 2>"$work/err"); code=$?
  expect "$1: a dead broker fails closed (exit 1, nothing started)" "1|" "$code|$out" "$(cat "$work/err")"
  grep -q "secrets" "$work/err" && ok "$1: fail-closed message names the step" || fail "$1: message: $(cat "$work/err")"

  # docker stop of a server that handles SIGTERM: its own code, not the kill after 10 s.
  c=$(docker run -d -v "$dir:/run/sandbox:ro" "$img" "$sh" -c 'trap "exit 7" TERM; while :; do sleep 0.2; done'); containers+=("$c")
  sleep 1; docker stop -t 10 "$c" >/dev/null
  expect "$1: docker stop of a TERM-handling server returns its code" 7 "$(docker inspect -f '{{.State.ExitCode}}' "$c")"

  # docker stop of an interactive shell on a tty (docker run -it): ends without the SIGKILL.
  c=$(docker run -d -i -t -v "$dir:/run/sandbox:ro" "$img" "$sh" -i); containers+=("$c")
  sleep 1; t0=$(date +%s%N); docker stop -t 10 "$c" >/dev/null
  code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
  [[ $code != 137 ]] && ok "$1: docker stop of an interactive $sh ends it (exit $code, $(( ($(date +%s%N) - t0) / 1000000 )) ms)" ||
    fail "$1: interactive $sh was SIGKILLed after the timeout"

  # 2000 orphans: none stays a zombie.
  c=$(docker run -d "$img" "$sh" -c 'i=0; while [ $i -lt 2000 ]; do (sleep 0.05 &); i=$((i+1)); done; sleep 30'); containers+=("$c")
  sleep 4
  # The loop may still be forking on a slow host, and a child the shell has not waited for yet
  # is briefly a zombie of the shell, not of the init: a zombie that stays for 5 s is the failure.
  for _ in $(seq 20); do
    out=$(docker exec "$c" ps -o stat,pid,comm | awk '$1 ~ /^Z/' | wc -l)
    [[ $out == 0 ]] && break
    sleep 0.25
  done
  expect "$1: 2000 orphans leave no zombie" 0 "$out"
  docker rm -f "$c" >/dev/null

  # docker exec shells do not descend from PID 1: profile.d fetches the secrets.
  c=$(docker run -d -v "$dir:/run/sandbox:ro" "$img" sleep 60); containers+=("$c")
  out=$(docker exec "$c" "$sh" -lc 'printf %s "$SMOKE_TOKEN"')
  expect "$1: docker exec login shell sees the secret through profile.d" "$VALUE" "$out"
  out=$(docker exec -u "$user" "$c" "$sh" -lc 'id -un; printf %s "$SMOKE_TOKEN"')
  expect "$1: docker exec -u $user login shell sees it too" "$user
$VALUE" "$out"
  # Agents run commands through docker exec: `sandbox-init exec` gives them the secrets too.
  out=$(docker exec "$c" sandbox-init exec -- "$sh" -c 'printf %s "$SMOKE_TOKEN"')
  expect "$1: docker exec sandbox-init exec -- sees the secret as root" "$VALUE" "$out"
  out=$(docker exec -u "$user" "$c" sandbox-init exec -- "$sh" -c 'id -un; printf %s "$SMOKE_TOKEN"')
  expect "$1: docker exec -u $user sandbox-init exec -- sees it too" "$user
$VALUE" "$out"
  docker rm -f "$c" >/dev/null

  # --on-change restart: a `set` on the host reaches the running container's command.
  printf '%s' "live-$1-before" | "$SECRETS" set LIVE_TOKEN --user mona --repos octo/hello >/dev/null
  c=$(docker run -d -e SANDBOX_INIT_ON_CHANGE=restart -e SANDBOX_INIT_RESTART_GRACE=2 \
    -v "$dir:/run/sandbox:ro" "$img" "$sh" -c \
    'trap "exit 0" TERM; printf %s "$LIVE_TOKEN" > /tmp/seen; while :; do sleep 1 & wait $!; done')
  containers+=("$c")
  for _ in $(seq 50); do
    [[ $(docker exec "$c" cat /tmp/seen 2>/dev/null) == "live-$1-before" ]] && break; sleep 0.1
  done
  printf '%s' "live-$1-after" | "$SECRETS" set LIVE_TOKEN --user mona --repos octo/hello >/dev/null
  for _ in $(seq 100); do
    out=$(docker exec "$c" cat /tmp/seen 2>/dev/null)
    [[ $out == "live-$1-after" ]] && break; sleep 0.1
  done
  expect "$1: --on-change restart: a set reaches the running command" "live-$1-after" "$out"
  # The broker restarts under the running container; a change made once it is back arrives.
  kill "$broker" && wait "$broker" 2>/dev/null
  start_broker
  printf '%s' "live-$1-restarted" | "$SECRETS" set LIVE_TOKEN --user mona --repos octo/hello >/dev/null
  for _ in $(seq 150); do
    out=$(docker exec "$c" cat /tmp/seen 2>/dev/null)
    [[ $out == "live-$1-restarted" ]] && break; sleep 0.1
  done
  expect "$1: after a broker restart a change still reaches the running command" "live-$1-restarted" "$out"
  docker rm -f "$c" >/dev/null
  "$SECRETS" delete LIVE_TOKEN --user mona >/dev/null

  # No fail-open window: the broker is down, the sandbox directory has its marker; a new
  # container waits --secrets-timeout (5 s) for the socket, then exits 1 having started nothing.
  kill "$broker" && wait "$broker" 2>/dev/null
  out=$(docker run --rm -v "$dir:/run/sandbox:ro" "$img" "$sh" -c 'echo started' 2>"$work/err"); code=$?
  start_broker
  expect "$1: broker down, marker present: fails closed after the timeout" "1|" "$code|$out" "$(cat "$work/err")"
  grep -q "broker not serving" "$work/err" && ok "$1: the fail-closed message names the fix" ||
    fail "$1: message: $(cat "$work/err")"

  # --user: the command runs as the image's user, config.json is its own.
  out=$(docker run --rm -e SANDBOX_INIT_USER="$user" -v "$dir:/run/sandbox:ro" "$img" "$sh" -c \
    'id -un; stat -c "%U %a" "$HOME/.docker/config.json"; stat -c "%a" "$HOME/.docker"' | tr '\n' ' ')
  expect "$1: --user runs as $user and config.json is its own, 0600 in 0700" "$user $user 600 700 " "$out"
}

run_suite minimal dev sh
run_suite devcontainer vscode bash

if [[ -n ${SANDBOX_TEST_REGISTRY:-} ]]; then
  out=$(docker run --rm --network host -e SANDBOX_INIT_USER=vscode -v "$dir:/run/sandbox:ro" \
    sandbox-init/devcontainer:latest bash -c \
    'skopeo inspect --tls-verify=false --format "{{.Name}}" "docker://$0"' "$SANDBOX_TEST_REGISTRY_IMAGE" 2>"$work/err")
  expect "devcontainer: skopeo reaches the private image with the injected triplet" \
    "${SANDBOX_TEST_REGISTRY_IMAGE%:*}" "$out" "$(cat "$work/err")"
  # --registry-credentials helper: no password in config.json; skopeo runs the image's
  # docker-credential-sandbox link, which asks the socket.
  out=$(docker run --rm --network host -e SANDBOX_INIT_USER=vscode \
    -e SANDBOX_INIT_REGISTRY_CREDENTIALS=helper -v "$dir:/run/sandbox:ro" \
    sandbox-init/devcontainer:latest bash -c \
    'c=$HOME/.docker/config.json; n=$(skopeo inspect --tls-verify=false --authfile "$c" \
       --format "{{.Name}}" "docker://$0") && ! grep -q "\"auth\"" "$c" && grep -q "\"sandbox\"" "$c" &&
     echo "$n"' "$SANDBOX_TEST_REGISTRY_IMAGE" 2>"$work/err")
  expect "devcontainer: skopeo reaches the private image through docker-credential-sandbox" \
    "${SANDBOX_TEST_REGISTRY_IMAGE%:*}" "$out" "$(cat "$work/err")"
else
  fail "no test registry (scripts/registry.sh start) for the skopeo smoke test"
fi

# No value in the broker's log.
grep -qF "smoke-value-7d1f" "$work/broker.log" && fail "a value reached the broker log" || ok "no value in the broker log"

echo "smoke: $passed passed, $failed failed"
((failed == 0))
