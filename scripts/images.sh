#!/usr/bin/env bash
# Builds the sandbox images on the local Docker engine without pulling anything:
#   sandbox-init/minimal:latest       FROM scratch + Debian's busybox-static
#   sandbox-init/devcontainer:latest  FROM a debootstrap'd bookworm base, imported when missing
#   scripts/images.sh [minimal|devcontainer|base]...   (default: minimal and devcontainer)
# The debootstrap'd root is kept as a tarball in $BASE_CACHE (default
# /var/cache/sandbox-init/debian-base-bookworm-3.tar), so an engine that lost the image re-imports
# it instead of running debootstrap again.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BASE=sandbox-init/debian-base:bookworm-3
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_CACHE=${BASE_CACHE:-/var/cache/sandbox-init/debian-base-bookworm-3.tar}
images=("${@:-minimal devcontainer}")
# shellcheck disable=SC2206
images=(${images[*]})

[[ -x target/static/sandbox-init ]] || scripts/build-static.sh >/dev/null
ctx=$ROOT/target/images
rm -rf "$ctx"; mkdir -p "$ctx"

build() { # name dir
  local name=$1 dir=$ctx/$1
  mkdir -p "$dir"
  cp images/"$name"/Dockerfile "$dir/"
  cp target/static/sandbox-init "$dir/sandbox-init"
  cp images/profile.d/sandbox-secrets.sh "$dir/sandbox-secrets.sh"
  [[ $name == minimal ]] && cp /bin/busybox "$dir/busybox"
  echo "images: building sandbox-init/$name:latest"
  docker build --network host -q -t "sandbox-init/$name:latest" "$dir" > "$dir/build.log" 2>&1 ||
    { cat "$dir/build.log" >&2; exit 1; }
  # The credential helper link answers docker's protocol (`list` needs no socket).
  [[ $(docker run --rm --entrypoint /usr/local/bin/docker-credential-sandbox \
      "sandbox-init/$name:latest" list) == "{}" ]] ||
    { echo "images: docker-credential-sandbox missing or broken in sandbox-init/$name" >&2; exit 1; }
}

base() {
  docker image inspect "$BASE" >/dev/null 2>&1 && return 0
  if [[ -s $BASE_CACHE ]]; then
    echo "images: importing $BASE from $BASE_CACHE"
    docker import - "$BASE" < "$BASE_CACHE" >/dev/null && return 0
  fi
  echo "images: making $BASE with debootstrap --variant=minbase (a few minutes, once)"
  local rootfs
  rootfs=$(mktemp -d /var/tmp/sandbox-base.XXXXXX)
  # minbase alone: the broker links no OpenSSL (its TLS is rustls), so the broker image and the
  # .deb install test show it needs nothing more (bookworm-2 carried libssl3 for native-tls).
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" > "$ctx/debootstrap.log" 2>&1 ||
    { tail -20 "$ctx/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb
  mkdir -p "$(dirname "$BASE_CACHE")"
  tar -C "$rootfs" -c . > "$BASE_CACHE.tmp" && mv "$BASE_CACHE.tmp" "$BASE_CACHE"
  docker import - "$BASE" < "$BASE_CACHE" >/dev/null
  rm -rf "$rootfs"
}

file -b /bin/busybox | grep -q static || { echo "images: /bin/busybox is not static (install busybox-static)" >&2; exit 1; }
for image in "${images[@]}"; do
  case $image in
    minimal) build minimal ;;
    devcontainer) base; build devcontainer ;;
    base) base ;;
    *) echo "images: unknown image $image" >&2; exit 2 ;;
  esac
done
