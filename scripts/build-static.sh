#!/usr/bin/env bash
# Builds the static release sandbox-init (profile `init`: opt-level z, LTO, panic=abort, strip)
# and checks with `file` that it is static. musl first; static glibc as the fallback.
# Non-PIE (relocation-model=static), like Debian's tini-static and catatonit: the relocation
# tables of a static-pie cost ~50 KB, and the init's stack, heap and mmaps stay randomized.
#   scripts/build-static.sh                   -> target/static/sandbox-init          (x86_64)
#   scripts/build-static.sh --target aarch64  -> target/static/aarch64/sandbox-init  (arm64)
# arm64 is aarch64-unknown-linux-musl (rustup target added when missing), linked by rust-lld
# with the target's self-contained musl CRT objects: no cross gcc needed. It runs here under
# qemu-user-static (tests/pid1_arm64.rs). Prints "<path> <bytes> <libc>".
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/arch.sh
. scripts/lib/arch.sh
parse_arch build-static "$@"

build() { # target [RUSTFLAGS]
  RUSTFLAGS="${2:-}" cargo build --quiet --profile init --target "$1" \
    --no-default-features --bin sandbox-init
}

if [[ $arch == aarch64 ]]; then
  out=target/static/aarch64
  mkdir -p "$out"
  t=aarch64-unknown-linux-musl
  rustup target list --installed 2>/dev/null | grep -qx $t || rustup target add $t >&2
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
    build $t "-C relocation-model=static -C linker-flavor=ld.lld -C link-self-contained=yes"
  libc=musl
  cp target/$t/init/sandbox-init "$out/sandbox-init"
  desc=$(file -b "$out/sandbox-init")
  [[ $desc == *"ARM aarch64"* ]] || { echo "build-static: $out/sandbox-init is not aarch64: $desc" >&2; exit 1; }
else
  out=target/static
  mkdir -p "$out"
  if rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl &&
    build x86_64-unknown-linux-musl "-C relocation-model=static"; then
    libc=musl
    cp target/x86_64-unknown-linux-musl/init/sandbox-init "$out/sandbox-init"
  else
    echo "build-static: musl target not available, building static glibc" >&2
    build x86_64-unknown-linux-gnu "-C target-feature=+crt-static -C relocation-model=static"
    libc=glibc
    cp target/x86_64-unknown-linux-gnu/init/sandbox-init "$out/sandbox-init"
  fi
fi

desc=$(file -b "$out/sandbox-init")
case "$desc" in
  *"statically linked"* | *"static-pie linked"*) ;;
  *) echo "build-static: $out/sandbox-init is not static: $desc" >&2; exit 1 ;;
esac
size=$(stat -c %s "$out/sandbox-init")
budget=$([[ $libc == musl ]] && echo 1000000 || echo 1800000)
((size <= budget)) || echo "build-static: warning: $size bytes is over the $libc budget of $budget (BENCHMARKS.md)" >&2
echo "$out/sandbox-init $size $libc"
