#!/usr/bin/env bash
# Builds the release broker `sandbox-secrets` (glibc, dynamically linked) for the host or arm64,
# and checks with `file` that the binary is of that architecture. Prints "<path> <bytes>".
#   scripts/build-broker.sh                   -> target/release/sandbox-secrets                            (x86_64)
#   scripts/build-broker.sh --target aarch64  -> target/aarch64-unknown-linux-gnu/release/sandbox-secrets (arm64)
# arm64 is aarch64-unknown-linux-gnu (rustup target added when missing), compiled and linked by
# Debian's cross gcc (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross: scripts/setup.sh): the C in
# rusqlite's bundled SQLite and in ring needs a C compiler for the target, the link an aarch64
# glibc. No OpenSSL anywhere (TLS is rustls + ring), so no cross libssl. The binary runs here
# under `qemu-aarch64-static -L /usr/aarch64-linux-gnu` (tests/broker_arm64.rs). Cargo rebuilds
# nothing on a second call: scripts/package.sh and scripts/release.sh both call this.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/arch.sh
. scripts/lib/arch.sh
parse_arch build-broker "$@"

if [[ $arch == aarch64 ]]; then
  t=aarch64-unknown-linux-gnu
  cc=aarch64-linux-gnu-gcc
  command -v $cc >/dev/null ||
    { echo "build-broker: $cc missing (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)" >&2; exit 1; }
  rustup target list --installed 2>/dev/null | grep -qx $t || rustup target add $t >&2
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=$cc \
    CC_aarch64_unknown_linux_gnu=$cc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
    cargo build --quiet --release --target $t --bin sandbox-secrets
  bin=target/$t/release/sandbox-secrets
  want="ARM aarch64"
else
  cargo build --quiet --release --bin sandbox-secrets
  bin=target/release/sandbox-secrets
  want="x86-64"
fi

desc=$(file -b "$bin")
[[ $desc == *"$want"* ]] || { echo "build-broker: $bin is not $want: $desc" >&2; exit 1; }
echo "$bin $(stat -c %s "$bin")"
