#!/usr/bin/env bash
# Instruction count of one start of the static init (callgrind): `sandbox-init -- /bin/true`
# against the real broker serving N secrets (default 100; values of 32 fixed characters, as
# bench-inject.sh's base64 ones), with `triplet` a registry triplet among them (97 + 3), as in
# bench-inject.sh. Deterministic, unlike wall-clock time, so it can be compared on a busy host.
#   scripts/profile-init.sh [N] [triplet]
# Builds the init with symbols (profile `init`, not stripped) in $PROF_TARGET (default
# /tmp/prof-target), or takes the binary $INIT (e.g. target/static/sandbox-init, or an older
# build to compare), prints the init's instruction total and leaves callgrind.out.* in
# $PROF_OUT (default target/profile) for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${1:-100}
TRIPLET=${2:-}
PROF_TARGET=${PROF_TARGET:-/tmp/prof-target}
PROF_OUT=${PROF_OUT:-$ROOT/target/profile}
if [[ -z ${INIT:-} ]]; then
  CARGO_PROFILE_INIT_STRIP=false CARGO_PROFILE_INIT_DEBUG=1 CARGO_TARGET_DIR=$PROF_TARGET \
    cargo build --quiet --profile init --target x86_64-unknown-linux-musl --no-default-features \
    --bin sandbox-init
  INIT=$PROF_TARGET/x86_64-unknown-linux-musl/init/sandbox-init
fi
# The broker only serves: a debug build is enough, its speed is not measured.
cargo build --quiet --bin sandbox-secrets
SECRETS=$ROOT/target/debug/sandbox-secrets

work=$(mktemp -d /tmp/sandbox-profile.XXXXXX)
export SANDBOX_SECRETS_STATE_DIR=$work/state SANDBOX_SECRETS_RUN_DIR=$work/run
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
SANDBOX_SECRETS_LOG=warn "$SECRETS" serve 2> "$work/broker.log" &
for _ in $(seq 200); do [[ -S $SANDBOX_SECRETS_RUN_DIR/admin.sock ]] && break; sleep 0.05; done

value() { printf 'v%031d' "$1"; }
plain=$N
[[ -n $TRIPLET ]] && plain=$((N - 3))
for i in $(seq 1 "$plain"); do
  value "$i" | "$SECRETS" set "BENCH_$i" --user prof --repos octo/prof >/dev/null
done
if [[ -n $TRIPLET ]]; then
  # (`set` warns while the triplet is incomplete.)
  printf 'registry.example.test:5000' |
    "$SECRETS" set ACME_CONTAINER_REGISTRY_SERVER --user prof --repos octo/prof >/dev/null 2>&1
  printf 'robot' |
    "$SECRETS" set ACME_CONTAINER_REGISTRY_USER --user prof --repos octo/prof >/dev/null 2>&1
  value 0 | "$SECRETS" set ACME_CONTAINER_REGISTRY_PASSWORD --user prof --repos octo/prof >/dev/null
fi
read -r _ dir < <("$SECRETS" sandbox create --user prof --repo octo/prof)

mkdir -p "$PROF_OUT"
rm -f "$PROF_OUT"/callgrind.out.*
# A fixed, small environment: the inherited variables are part of what the init composes.
env -i PATH=/usr/bin:/bin HOME=/root DOCKER_CONFIG="$work/docker" \
  valgrind --tool=callgrind --callgrind-out-file="$PROF_OUT/callgrind.out.%p" \
  "$INIT" --socket "$dir/secrets.sock" -- /bin/true 2> "$work/valgrind.log" ||
  { cat "$work/valgrind.log" >&2; exit 1; }
# The first file is the init's (lowest pid), the other the forked child's until its exec.
mapfile -t outs < <(ls "$PROF_OUT"/callgrind.out.* | sort -t. -k3 -n)
total() { sed -n 's/^summary: //p' "$1"; }
echo "init ($N secrets${TRIPLET:+, a registry triplet among them}): $(total "${outs[0]}") instructions"
for f in "${outs[@]:1}"; do echo "forked child, before exec: $(total "$f") instructions"; done
echo "binary: $INIT ($(stat -c %s "$INIT") bytes); profiles: ${outs[*]}"
