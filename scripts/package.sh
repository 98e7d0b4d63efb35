#!/usr/bin/env bash
# Builds the Debian packages with cargo-deb (metadata: Cargo.toml [package.metadata.deb]):
#   target/debian/sandbox-secrets_<v>-1_amd64.deb   broker, systemd unit, sysusers/tmpfiles,
#                                                   man pages, bash/zsh/fish completions
#   target/debian/sandbox-init_<v>-1_amd64.deb      static PID-1 init, /etc/profile.d snippet
#   scripts/package.sh [--arch amd64|arm64]   arm64: the same two packages, _arm64.deb, from the
#                                             cross-built broker (scripts/build-broker.sh --target
#                                             aarch64) and the aarch64 musl init
# Installs cargo-deb with `cargo install --locked cargo-deb` when missing (one compile, ~4 min on
# 2 cores). Prints the paths of the packages it wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=amd64
[[ "${1:-}" == --arch ]] && arch=${2:?--arch amd64|arm64}
case $arch in amd64 | arm64) ;; *) echo "package: unknown arch $arch" >&2; exit 2 ;; esac

if ! cargo deb --version >/dev/null 2>&1; then
  echo "package: installing cargo-deb (cargo install --locked cargo-deb)" >&2
  start=$SECONDS
  cargo install --locked --quiet cargo-deb >&2
  echo "package: cargo-deb installed in $((SECONDS - start)) s" >&2
fi
command -v dpkg-shlibdeps >/dev/null || echo "package: dpkg-dev missing; Depends stays minimal" >&2

stage=target/package
rm -rf "$stage"; mkdir -p "$stage"/{man,completions,static,profile.d}

# The init: the static binary of the arch, and the snippet pointing at the package's path.
if [[ $arch == arm64 ]]; then
  scripts/build-static.sh --target aarch64 >&2
  cp target/static/aarch64/sandbox-init "$stage/static/sandbox-init"
else
  scripts/build-static.sh >&2
  cp target/static/sandbox-init "$stage/static/sandbox-init"
fi
sed 's|/usr/local/bin/sandbox-init|/usr/bin/sandbox-init|g' images/profile.d/sandbox-secrets.sh \
  > "$stage/profile.d/sandbox-secrets.sh"

# The broker's man pages and completions (the same on every arch), written by the host's broker.
scripts/build-broker.sh >/dev/null
bin=target/release/sandbox-secrets
"$bin" man "$stage/man"
gzip -9n "$stage"/man/*.1
"$bin" completion bash > "$stage/completions/sandbox-secrets"
"$bin" completion zsh > "$stage/completions/_sandbox-secrets"
"$bin" completion fish > "$stage/completions/sandbox-secrets.fish"

if [[ $arch == arm64 ]]; then
  # cargo-deb reads the binary from target/aarch64-unknown-linux-gnu/release/, strips it with
  # aarch64-linux-gnu-strip (binutils of the cross gcc), and makes Depends with dpkg-shlibdeps.
  scripts/build-broker.sh --target aarch64 >&2
  cargo deb --no-build --target aarch64-unknown-linux-gnu --output target/debian/ | tail -1
  cargo deb --no-build --no-strip --variant init --target aarch64-unknown-linux-musl \
    --output target/debian/ | tail -1
else
  cargo deb --no-build --output target/debian/ | tail -1
  cargo deb --no-build --no-strip --variant init --output target/debian/ | tail -1
fi
