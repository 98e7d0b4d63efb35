#!/usr/bin/env bash
# A real private registry for the credentials tests: Debian's docker-registry with an htpasswd
# (bcrypt) user on 127.0.0.1:5000, and one image pushed into it.
#   scripts/registry.sh start   start (idempotent), push the image, write the env file
#   scripts/registry.sh stop    stop it and remove its state
# The env file (0600) holds SANDBOX_TEST_REGISTRY, _USER, _PASSWORD, _IMAGE for the tests.
# The password is random per start; it never appears in argv (htpasswd -i, skopeo --authfile).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${SANDBOX_TEST_DIR:-/run/sandbox-init-test}
REG=$DIR/registry
ADDR=127.0.0.1:5000
USER_NAME=sandbox-ci
IMAGE=$ADDR/private/hello:latest

stop() {
  if [[ -f $REG/pid ]]; then
    kill "$(cat "$REG/pid")" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$(cat "$REG/pid")" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -rf "$REG" "$DIR/registry.env"
}

start() {
  if [[ -f $DIR/registry.env && -f $REG/pid ]] && kill -0 "$(cat "$REG/pid")" 2>/dev/null; then
    echo "registry: already running on $ADDR"; return 0
  fi
  stop
  # Debian's package may have started its own service on :5000 (with a config we do not use).
  if ss -Hltn 'sport = :5000' 2>/dev/null | grep -q .; then
    service docker-registry stop >/dev/null 2>&1 || true
    pkill -f 'docker-registry serve /etc/docker/registry/config.yml' 2>/dev/null || true
    sleep 0.5
    ss -Hltnp 'sport = :5000' 2>/dev/null | grep -q . &&
      { echo "registry: port 5000 is taken: $(ss -Hltnp 'sport = :5000')" >&2; exit 1; }
  fi
  command -v docker-registry >/dev/null || { echo "registry: docker-registry not installed (scripts/setup.sh --deps)" >&2; exit 1; }
  mkdir -p "$REG/data"; chmod 0700 "$DIR" "$REG"
  local password
  password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  printf '%s\n' "$password" | htpasswd -B -i -c "$REG/htpasswd" "$USER_NAME" 2>/dev/null
  cat > "$REG/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REG/data
  delete:
    enabled: true
http:
  addr: $ADDR
auth:
  htpasswd:
    realm: sandbox-init-test
    path: $REG/htpasswd
YAML
  setsid docker-registry serve "$REG/config.yml" >"$REG/log" 2>&1 < /dev/null &
  echo $! > "$REG/pid"
  for _ in $(seq 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$ADDR/v2/" 2>/dev/null) == 401 ]] && break
    sleep 0.1
  done
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$ADDR/v2/" 2>/dev/null) == 401 ]] ||
    { echo "registry: did not come up; log:" >&2; cat "$REG/log" >&2; exit 1; }

  # The image: busybox from Debian's busybox-static on scratch, built by the local engine.
  local ctx=$REG/image
  mkdir -p "$ctx"
  cp /bin/busybox "$ctx/busybox"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nCMD ["/bin/busybox","echo","hello from the private registry"]\n' > "$ctx/Dockerfile"
  docker build -q -t sandbox-init-test/hello:latest "$ctx" >"$REG/build.log" 2>&1 ||
    { cat "$REG/build.log" >&2; exit 1; }
  local auth=$REG/push-auth.json
  ( umask 077
    printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$ADDR" "$(printf '%s:%s' "$USER_NAME" "$password" | base64 -w0)" > "$auth" )
  skopeo copy -q --dest-tls-verify=false --dest-authfile "$auth" \
    docker-daemon:sandbox-init-test/hello:latest "docker://$IMAGE"
  rm -f "$auth"

  ( umask 077
    cat > "$DIR/registry.env" <<ENV
SANDBOX_TEST_REGISTRY=$ADDR
SANDBOX_TEST_REGISTRY_USER=$USER_NAME
SANDBOX_TEST_REGISTRY_PASSWORD=$password
SANDBOX_TEST_REGISTRY_IMAGE=$IMAGE
ENV
  )
  echo "registry: $IMAGE pushed; env in $DIR/registry.env"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
