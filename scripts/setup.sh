#!/usr/bin/env bash
# Installs what building, testing, the demo and the benchmarks need on a fresh Debian 12 machine,
# then builds both binaries. Idempotent: skips what is already there.
#   scripts/setup.sh            packages + musl target + debug and static builds
#   scripts/setup.sh --deps     packages + musl target only
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  tini dumb-init catatonit hyperfine      # peers for the benchmark, init reference behaviour
  skopeo docker-registry apache2-utils    # real registry and client for the credentials tests
  busybox-static debootstrap              # images built without pulling anything
  util-linux procps file bsdextrautils    # unshare, script, ps, file
  bash ca-certificates curl iproute2 python3 git   # git: the GIT_CONFIG_* attack test
  chromium chromium-driver fonts-dejavu-core       # the settings page in a real browser (scripts/browser.sh)
  qemu-user-static tmux dpkg-dev systemd  # arm64 PID-1 tests, the hidden-prompt test, .debs, unit verify
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross  # the arm64 broker (scripts/build-broker.sh), run under qemu
  postgresql openssl                      # the shared store: its tests, their CA and certificates
)

need=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl; then
  rustup target add x86_64-unknown-linux-musl ||
    echo "setup: musl target unavailable; scripts/build-static.sh falls back to static glibc"
fi

# The docker engine: the registry image, the smoke tests and the container tests need it. A CI
# run may find it stopped (the session that started it has ended): start it and wait for it.
ensure_docker() {
  docker info >/dev/null 2>&1 && return 0
  if ! command -v dockerd >/dev/null; then
    echo "setup: installing docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io >/dev/null
  fi
  echo "setup: the docker engine does not answer; starting dockerd (log: /var/log/sandbox-init-dockerd.log)"
  setsid dockerd >>/var/log/sandbox-init-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 120); do
    docker info >/dev/null 2>&1 && { echo "setup: docker engine up"; return 0; }
    sleep 0.5
  done
  echo "setup: dockerd did not come up in 60 s; last lines of its log:" >&2
  tail -n 20 /var/log/sandbox-init-dockerd.log >&2
  return 1
}
ensure_docker

[[ "${1:-}" == "--deps" ]] && exit 0

cargo build --quiet --release --bins
scripts/build-static.sh
