#!/usr/bin/env bash
# Runs every test: formatting and lints, the static builds (x86_64 and arm64), unit and
# integration tests against the real binaries (PID 1 in a PID namespace, the real broker daemon,
# a real registry, a real PostgreSQL, several broker hosts as containers, a real Chromium), the
# docker smoke tests and the packages (.debs, broker image, devcontainer Feature). Installs and
# starts what it needs first. This is what CI runs (.ci/run).
#
# Build once, then two lanes run side by side, since they share no port, directory or docker
# name: `cargo test` (every Rust test binary), and the docker lane (scripts/smoke.sh, then
# scripts/test-packages.sh). The docker lane's output is printed when both are done.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

scripts/setup.sh --deps

echo "== fmt and clippy"
cargo fmt --check
cargo clippy --all-targets -- -D warnings

echo "== static init (x86_64, then arm64 for tests/pid1_arm64.rs under qemu-aarch64-static)"
scripts/build-static.sh
scripts/build-static.sh --target aarch64
export SANDBOX_INIT_STATIC="$PWD/target/static/sandbox-init"
export SANDBOX_INIT_ARM64="$PWD/target/static/aarch64/sandbox-init"
echo "== arm64 broker (cross, once: tests/broker_arm64.rs under qemu, the arm64 .deb)"
scripts/build-broker.sh --target aarch64
export SANDBOX_SECRETS_ARM64="$PWD/target/aarch64-unknown-linux-gnu/release/sandbox-secrets"

echo "== build the tests and the release binaries once"
cargo test --all-targets --no-run --quiet
scripts/package.sh >/dev/null

echo "== test registry and PostgreSQL"
scripts/registry.sh start
scripts/postgres.sh start
cleanup() {
  scripts/registry.sh stop >/dev/null 2>&1 || true
  scripts/postgres.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
set -a
# shellcheck disable=SC1091
. "${SANDBOX_TEST_DIR:-/run/sandbox-init-test}/registry.env"
# shellcheck disable=SC1091
. "${SANDBOX_TEST_DIR:-/run/sandbox-init-test}/postgres.env"
set +a

echo "== docker lane (smoke, packages) in the background; cargo test in the foreground"
mkdir -p target
docker_log=target/test-docker-lane.log
(
  rc=0
  SANDBOX_INIT_REQUIRE_ALL=1 scripts/smoke.sh || rc=1
  SANDBOX_INIT_REQUIRE_ALL=1 scripts/test-packages.sh || rc=1
  exit $rc
) >"$docker_log" 2>&1 &
docker_lane=$!

cargo_rc=0
SANDBOX_INIT_REQUIRE_ALL=1 cargo test --all-targets --no-fail-fast || cargo_rc=$?

docker_rc=0
wait "$docker_lane" || docker_rc=$?
echo "== docker lane: smoke tests, packages, broker image, devcontainer Feature"
cat "$docker_log"

echo "== done in $((SECONDS - started)) s: cargo test exit $cargo_rc, docker lane exit $docker_rc"
((cargo_rc == 0 && docker_rc == 0))
