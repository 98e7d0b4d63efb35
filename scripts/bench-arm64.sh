#!/usr/bin/env bash
# The arm64 init's size and startup (BENCHMARKS.md "PID 1 on arm64"). No arm64 machine here: the
# aarch64 binary runs under qemu-aarch64-static (user-mode emulation), so its times are the
# emulator's as much as the init's; the x86_64 build runs natively in the same hyperfine run
# for scale. `--version` under qemu is the floor: emulator start plus the init's own start,
# no fork, no command. Every row runs as PID 1 of a new PID namespace (`unshare -pf --mount-proc`,
# as in a container): qemu-user 7.2 refuses PR_SET_CHILD_SUBREAPER, which a non-PID-1 init needs.
#   scripts/bench-arm64.sh [RUNS]   (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-300}
scripts/build-static.sh >/dev/null
scripts/build-static.sh --target aarch64 >/dev/null
x86=target/static/sandbox-init arm=target/static/aarch64/sandbox-init
printf '| binary | bytes |\n| --- | ---: |\n'
printf '| sandbox-init x86_64 (static musl) | %s |\n' "$(stat -c %s $x86)"
printf '| sandbox-init aarch64 (static musl, rust-lld) | %s |\n' "$(stat -c %s $arm)"
echo
md=$(mktemp)
trap 'rm -f "$md"' EXIT
env -u SANDBOX_SECRETS_SOCKET hyperfine -N --warmup 20 --runs "$runs" --export-markdown "$md" --style none \
  -n "x86_64: sandbox-init -- /bin/true (native)" "unshare -pf --mount-proc $x86 -- /bin/true" \
  -n "aarch64: qemu-aarch64-static sandbox-init --version" "unshare -pf --mount-proc qemu-aarch64-static $arm --version" \
  -n "aarch64: qemu-aarch64-static sandbox-init -- /bin/true" "unshare -pf --mount-proc qemu-aarch64-static $arm -- /bin/true" >/dev/null 2>&1
cat "$md"
