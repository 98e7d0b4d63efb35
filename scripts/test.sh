#!/usr/bin/env bash
# Runs every test: formatting and lints, the static build, unit and integration tests against the
# real binaries (PID 1 in a PID namespace, the real broker daemon, a real registry), and the
# docker smoke tests. Installs what it needs first. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --deps

echo "== fmt and clippy"
cargo fmt --check
cargo clippy --all-targets -- -D warnings

echo "== static init"
scripts/build-static.sh

# --- pkg (issue 15): the arm64 init for tests/pid1_arm64.rs (run under qemu-aarch64-static) ---
echo "== static init, arm64"
scripts/build-static.sh --target aarch64
export SANDBOX_INIT_ARM64="$PWD/target/static/aarch64/sandbox-init"
# --- end pkg ---

echo "== test registry"
scripts/registry.sh start
trap 'scripts/registry.sh stop >/dev/null 2>&1 || true' EXIT
set -a
# shellcheck disable=SC1091
. "${SANDBOX_TEST_DIR:-/run/sandbox-init-test}/registry.env"
set +a
export SANDBOX_INIT_STATIC="$PWD/target/static/sandbox-init"

# --- PostgreSQL: the shared store's suite (tests/store_suite.rs runs every store test on it) ---
echo "== test PostgreSQL"
scripts/postgres.sh start
trap 'scripts/registry.sh stop >/dev/null 2>&1 || true; scripts/postgres.sh stop >/dev/null 2>&1 || true' EXIT
set -a
# shellcheck disable=SC1091
. "${SANDBOX_TEST_DIR:-/run/sandbox-init-test}/postgres.env"
set +a
# --- end PostgreSQL ---

echo "== cargo test"
SANDBOX_INIT_REQUIRE_ALL=1 cargo test --all-targets --no-fail-fast

if [[ -x scripts/smoke.sh ]]; then
  echo "== docker smoke tests"
  SANDBOX_INIT_REQUIRE_ALL=1 scripts/smoke.sh
fi

# --- pkg (issue 15): .debs in a clean container, the broker image, the devcontainer Feature ---
echo "== packages, broker image, devcontainer Feature"
SANDBOX_INIT_REQUIRE_ALL=1 scripts/test-packages.sh
# --- end pkg ---
