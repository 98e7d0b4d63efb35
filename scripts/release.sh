#!/usr/bin/env bash
# Release artefacts into target/release-artifacts/:
#   sandbox-init-x86_64, sandbox-init-aarch64        the static inits (musl, profile `init`)
#   sandbox-secrets-x86_64, sandbox-secrets-aarch64  the brokers (glibc, dynamically linked;
#                                                    scripts/build-broker.sh, arm64 cross-built)
#   sandbox-secrets_<v>-1_amd64.deb, ..._arm64.deb   broker packages (scripts/package.sh)
#   sandbox-init_<v>-1_amd64.deb, ..._arm64.deb      init packages, both arches
#   sandbox-init-feature_<v>.tgz                     the devcontainer Feature with both inits
#   SHA256SUMS                                       of all of the above
# Each binary is built once: package.sh builds them, this script copies what it built.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/release-artifacts
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
rm -rf "$out"; mkdir -p "$out"

scripts/package.sh --arch arm64 >/dev/null
cp target/static/aarch64/sandbox-init "$out/sandbox-init-aarch64"
cp target/aarch64-unknown-linux-gnu/release/sandbox-secrets "$out/sandbox-secrets-aarch64"
# The amd64 run last: it leaves target/package staged for amd64.
scripts/package.sh >/dev/null
cp target/static/sandbox-init "$out/sandbox-init-x86_64"
cp target/release/sandbox-secrets "$out/sandbox-secrets-x86_64"
for deb in sandbox-init sandbox-secrets; do
  for a in amd64 arm64; do
    cp "$(ls -t target/debian/"$deb"_"$version"-*_"$a".deb | head -1)" "$out/"
  done
done

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
