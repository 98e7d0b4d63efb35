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

[[ "${1:-}" == "--deps" ]] && exit 0

cargo build --quiet --release --bins
scripts/build-static.sh
