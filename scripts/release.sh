#!/usr/bin/env bash
# Release artefacts into target/release-artifacts/:
#   sandbox-init-x86_64, sandbox-init-aarch64        the static inits (musl, profile `init`)
#   sandbox-secrets-x86_64                           the broker (glibc; the host's arch)
#   sandbox-secrets_<v>-1_amd64.deb                  broker package (scripts/package.sh)
#   sandbox-init_<v>-1_amd64.deb, ..._arm64.deb      init packages, both arches
#   sandbox-init-feature_<v>.tgz                     the devcontainer Feature with both inits
#   SHA256SUMS                                       of all of the above
# The broker is built for the host only: an aarch64 broker needs an aarch64 glibc toolchain
# (gcc-aarch64-linux-gnu and a cross libsqlite build), not installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/release-artifacts
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
rm -rf "$out"; mkdir -p "$out"

scripts/package.sh --arch arm64 >/dev/null
arm_deb=$(ls -t target/debian/sandbox-init_"$version"-*_arm64.deb | head -1)
cp target/static/aarch64/sandbox-init "$out/sandbox-init-aarch64"
# The amd64 run last: it leaves target/package staged for amd64.
scripts/package.sh >/dev/null
cp target/static/sandbox-init "$out/sandbox-init-x86_64"
cp target/release/sandbox-secrets "$out/sandbox-secrets-x86_64"
cp "$arm_deb" "$out/"
cp "$(ls -t target/debian/sandbox-init_"$version"-*_amd64.deb | head -1)" "$out/"
cp "$(ls -t target/debian/sandbox-secrets_"$version"-*_amd64.deb | head -1)" "$out/"

# The Feature, as the devcontainer CLI expects a Feature's directory, with both binaries.
feature=$(mktemp -d)
trap 'rm -rf "$feature"' EXIT
mkdir -p "$feature/bin"
cp images/feature/sandbox-init/* "$feature/"
cp images/profile.d/sandbox-secrets.sh "$feature/"
cp "$out/sandbox-init-x86_64" "$out/sandbox-init-aarch64" "$feature/bin/"
tar -C "$feature" --owner=0 --group=0 --sort=name -czf "$out/sandbox-init-feature_$version.tgz" .

(cd "$out" && sha256sum -- * > SHA256SUMS)
ls -l "$out" | tail -n +2
