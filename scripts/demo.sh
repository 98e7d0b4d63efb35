#!/usr/bin/env bash
# The main job, end to end on this machine: set up, start the broker, store a secret for a
# repository, make a sandbox for it, and run sandbox-init as PID 1 of a new PID namespace with
# the sandbox's socket, printing the injected variable. Everything lives in a temp dir and is
# cleaned up at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
BIN=$PWD/target/release
INIT=$PWD/target/static/sandbox-init

work=$(mktemp -d /tmp/sandbox-demo.XXXXXX)
export SANDBOX_SECRETS_STATE_DIR=$work/state SANDBOX_SECRETS_RUN_DIR=$work/run
cleanup() { [[ -n ${broker:-} ]] && kill "$broker" 2>/dev/null && wait "$broker" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$BIN/sandbox-secrets" serve 2> "$work/broker.log" &
broker=$!
for _ in $(seq 100); do [[ -S $SANDBOX_SECRETS_RUN_DIR/admin.sock ]] && break; sleep 0.05; done

echo "+ printf 'hello-from-the-broker' | sandbox-secrets set DEMO_TOKEN --user mona --repos octo/hello"
printf 'hello-from-the-broker' | "$BIN/sandbox-secrets" set DEMO_TOKEN --user mona --repos octo/hello
echo "+ printf 'not-for-you' | sandbox-secrets set OTHER_TOKEN --user mona --repos octo/other"
printf 'not-for-you' | "$BIN/sandbox-secrets" set OTHER_TOKEN --user mona --repos octo/other
echo "+ sandbox-secrets plan --user mona --repo octo/hello"
"$BIN/sandbox-secrets" plan --user mona --repo octo/hello
echo "+ sandbox-secrets sandbox create --user mona --repo octo/hello"
read -r id dir < <("$BIN/sandbox-secrets" sandbox create --user mona --repo octo/hello)
echo "$id $dir"

echo "+ unshare -pf --mount-proc sandbox-init --socket $dir/secrets.sock -- sh -c '...'"
unshare -pf --mount-proc "$INIT" --socket "$dir/secrets.sock" -- \
  sh -c 'echo "I am PID $$ under sandbox-init (PID 1); DEMO_TOKEN=$DEMO_TOKEN; OTHER_TOKEN=${OTHER_TOKEN:-<absent>}"'

if docker info >/dev/null 2>&1; then
  echo "+ docker run --rm -v $dir:/run/sandbox sandbox-init/minimal sh -c '...'"
  scripts/images.sh minimal >/dev/null
  docker run --rm -v "$dir:/run/sandbox" sandbox-init/minimal:latest \
    sh -c 'echo "in a container, PID 1 is $(cat /proc/1/comm); DEMO_TOKEN=$DEMO_TOKEN"'
else
  echo "(no Docker engine answers: the container part of the demo is left out)"
fi
