#!/usr/bin/env bash
# Tests what platforms install, in real containers on this machine's Docker engine, from the
# debootstrap'd bookworm base (scripts/images.sh base; nothing pulled):
#   debs     both .deb files (scripts/package.sh) `dpkg -i`'d into a clean container; the broker
#            started there as the unit starts it (its ExecStart, User, LimitNOFILE), a secret and
#            a sandbox made, the init fetching it; man pages, completions, profile.d; purge.
#            The unit itself: `systemd-analyze verify` on the host, from the extracted .deb.
#            The arm64 .debs (scripts/package.sh --arch arm64): Architecture arm64, aarch64
#            binaries, the broker's Depends those of an arm64 glibc binary (no libssl, no cross
#            package), the same files as amd64's; the packaged arm64 broker runs under qemu.
#   broker   images/broker built and run non-root with its volumes until docker says healthy
#            (HEALTHCHECK = `sandbox-secrets health`), then served end to end.
#   feature  images/feature/sandbox-init applied the way the devcontainer CLI applies a Feature
#            (options and _REMOTE_USER as env, then its entrypoint line in the CLI's /bin/sh -c
#            wrapper), then: sandbox-init is PID 1, the command runs as the remote user with the
#            secret, docker exec login shells get it, registry credentials written, fail closed.
# Every docker name starts with pkg-. Prints `packages: N passed, N failed`.
#   scripts/test-packages.sh [debs|broker|feature]...   (default: all three)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BASE=sandbox-init/debian-base:bookworm-3
parts=("${@:-debs broker feature}")
# shellcheck disable=SC2206
parts=(${parts[*]})

if ! docker info >/dev/null 2>&1; then
  echo "skipped: no docker (the engine does not answer)"
  [[ ${SANDBOX_INIT_REQUIRE_ALL:-} == 1 ]] && { echo "packages: 0 passed, 1 failed"; exit 1; }
  exit 0
fi

set -e
scripts/package.sh --arch arm64 >/dev/null
scripts/package.sh >/dev/null # last: leaves target/package staged for amd64
scripts/images.sh base >/dev/null
set +e

work=$(mktemp -d /tmp/pkg-test.XXXXXX)
chmod 0755 "$work"
tag=$$
containers=() images=() volumes=()
cleanup() {
  ((${#containers[@]})) && docker rm -f "${containers[@]}" >/dev/null 2>&1
  ((${#images[@]})) && docker rmi -f "${images[@]}" >/dev/null 2>&1
  ((${#volumes[@]})) && docker volume rm -f "${volumes[@]}" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failed=$((failed + 1)); echo "FAILED: $*"; }
# expect NAME WANT GOT [context]
expect() { if [[ "$3" == "$2" ]]; then ok "$1"; else fail "$1: want [$2] got [$3] ${4:-}"; fi; }
# contains NAME NEEDLE HAYSTACK
contains() { if [[ "$3" == *"$2"* ]]; then ok "$1"; else fail "$1: [$2] not in [$3]"; fi; }
# wait_for DESC SECONDS CMD...: polls CMD until it succeeds
wait_for() {
  local desc=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "timed out waiting for $desc" >&2
  return 1
}
build_image() { # name context
  images+=("$1")
  docker build --network none -q -t "$1" "$2" > "$2/build.log" 2>&1 ||
    { cat "$2/build.log" >&2; return 1; }
}

VALUE='pkg-value-4b7e $HOME "dq" '\''sq'\'' end'
SECRETS_DEB=$(ls target/debian/sandbox-secrets_*_amd64.deb)
INIT_DEB=$(ls target/debian/sandbox-init_*_amd64.deb)
SECRETS_ARM_DEB=$(ls target/debian/sandbox-secrets_*_arm64.deb)
INIT_ARM_DEB=$(ls target/debian/sandbox-init_*_arm64.deb)

# The files of a .deb, one path a line, sorted.
deb_files() { dpkg-deb -c "$1" | awk '{print $6}' | sort; }

test_arm64_debs() {
  echo "== arm64 debs: $(basename "$SECRETS_ARM_DEB") $(basename "$INIT_ARM_DEB")"
  expect "the arm64 broker .deb: sandbox-secrets, Architecture arm64" "sandbox-secrets arm64" \
    "$(dpkg-deb -f "$SECRETS_ARM_DEB" Package Architecture | cut -d' ' -f2 | tr '\n' ' ' | sed 's/ $//')"
  expect "the arm64 init .deb: sandbox-init, Architecture arm64" "sandbox-init arm64" \
    "$(dpkg-deb -f "$INIT_ARM_DEB" Package Architecture | cut -d' ' -f2 | tr '\n' ' ' | sed 's/ $//')"
  # dpkg-shlibdeps on the cross binary: libc6 of arm64 (the cross glibc's shlibs name it
  # `libc6:arm64`, the package's own arch) and passwd for the maintainer scripts; no OpenSSL.
  local deps
  deps=$(dpkg-deb -f "$SECRETS_ARM_DEB" Depends)
  if [[ $deps =~ ^libc6(:arm64)?\ \(\>=\ 2\.[0-9]+\),\ passwd$ ]]; then
    ok "the arm64 broker depends on the arm64 glibc and passwd only ($deps)"
  else
    fail "the arm64 broker's Depends: want libc6[:arm64] (>= 2.N), passwd; got [$deps]"
  fi
  deps=$(dpkg-deb -f "$SECRETS_DEB" Depends)
  if [[ $deps == *libc6* && $deps != *libssl* ]]; then
    ok "the amd64 broker depends on no libssl (TLS is rustls): $deps"
  else
    fail "the amd64 broker's Depends: want libc6 and no libssl; got [$deps]"
  fi
  local root=$work/arm64-root bin
  mkdir -p "$root"
  dpkg-deb -x "$SECRETS_ARM_DEB" "$root/secrets"
  dpkg-deb -x "$INIT_ARM_DEB" "$root/init"
  bin=$root/secrets/usr/bin/sandbox-secrets
  contains "the packaged broker is an aarch64 glibc binary" \
    "ARM aarch64, version 1 (SYSV), dynamically linked, interpreter /lib/ld-linux-aarch64.so.1" \
    "$(file -b "$bin")"
  contains "the packaged broker is stripped" "stripped" "$(file -b "$bin" | grep -o ', stripped')"
  contains "the packaged arm64 init is a static aarch64 binary" "ARM aarch64" \
    "$(file -b "$root/init/usr/bin/sandbox-init" | grep 'statically linked')"
  expect "the arm64 broker .deb holds the same files as amd64's" "$(deb_files "$SECRETS_DEB")" \
    "$(deb_files "$SECRETS_ARM_DEB")"
  expect "the arm64 init .deb holds the same files as amd64's" "$(deb_files "$INIT_DEB")" \
    "$(deb_files "$INIT_ARM_DEB")"
  contains "the packaged arm64 broker runs (qemu-aarch64-static, the cross glibc)" \
    "sandbox-secrets $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" \
    "$(qemu-aarch64-static -L /usr/aarch64-linux-gnu "$bin" --version 2>&1)"
}

test_debs() {
  echo "== debs: $(basename "$SECRETS_DEB") $(basename "$INIT_DEB")"
  # The unit, verified on the host from the package's own files.
  local root=$work/deb-root unit
  dpkg-deb -x "$SECRETS_DEB" "$root"
  unit=$(cd "$root" && find . -name sandbox-secrets.service | head -1)
  if [[ -z $unit ]]; then
    fail "the sandbox-secrets .deb ships sandbox-secrets.service"
  else
    ok "the sandbox-secrets .deb ships ${unit#.}"
    local out
    # On the host's systemd: the package's unit with ExecStart pointing at the extracted binary
    # (verify checks it exists), its man: link against the extracted man pages. Any line of
    # output (an unknown key, a bad value) fails.
    mkdir -p "$work/unit"
    sed "s|^ExecStart=/usr/bin/sandbox-secrets|ExecStart=$root/usr/bin/sandbox-secrets|" \
      "$root/${unit#./}" > "$work/unit/sandbox-secrets.service"
    out=$(MANPATH=$root/usr/share/man systemd-analyze verify --man=yes "$work/unit/sandbox-secrets.service" 2>&1)
    expect "systemd-analyze verify of the unit is clean" "0:" "$?:$out"
  fi
  local sec
  sec=$(cd "$root" && grep -h -E '^(LimitNOFILE|ProtectSystem|ProtectHome|NoNewPrivileges|PrivateTmp|RestrictAddressFamilies|StateDirectory|RuntimeDirectory|User)=' "${unit#./}" | sort | tr '\n' ' ')
  expect "the unit's limits, hardening and directories" \
    "LimitNOFILE=131072 NoNewPrivileges=yes PrivateTmp=yes ProtectHome=yes ProtectSystem=strict RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 RuntimeDirectory=sandbox-secrets StateDirectory=sandbox-secrets User=sandbox-secrets " "$sec"

  local ctx=$work/debs img=pkg-debs:$tag c=pkg-debs-$tag
  mkdir -p "$ctx"
  cp "$SECRETS_DEB" "$INIT_DEB" "$ctx/"
  cat > "$ctx/Dockerfile" <<EOF
FROM $BASE
COPY *.deb /tmp/debs/
RUN dpkg -i /tmp/debs/*.deb && rm -rf /tmp/debs
EOF
  if ! build_image "$img" "$ctx"; then fail "dpkg -i of both packages in a clean bookworm"; return; fi
  ok "dpkg -i of both packages in a clean bookworm"
  containers+=("$c")
  # The unit's LimitNOFILE, as systemd would set it; capped at this machine's own hard limit
  # (a container host may not grant more: then the cap is said).
  local limit hard
  limit=$(sed -n 's/^LimitNOFILE=//p' "$root/${unit#./}")
  hard=$(ulimit -Hn)
  if [[ $hard != unlimited ]] && ((hard < limit)); then
    echo "note: LimitNOFILE=$limit is over this machine's hard limit ($hard): the broker runs with $hard"
    limit=$hard
  fi
  docker run -d --name "$c" --network none --ulimit "nofile=$limit:$limit" "$img" sleep infinity >/dev/null
  x() { docker exec "$c" "$@"; }
  expect "both packages installed" "install ok installed
install ok installed" "$(x dpkg-query -W -f='${Status}\n' sandbox-secrets sandbox-init)"
  expect "the service user exists, no login shell" "/usr/sbin/nologin" "$(x getent passwd sandbox-secrets | cut -d: -f7)"
  expect "the state directory: 0700, the service user's" "700 sandbox-secrets" "$(x stat -c '%a %U' /var/lib/sandbox-secrets)"
  # Start the broker as the unit would: its ExecStart, as its User, under its LimitNOFILE.
  local unitfile
  unitfile=$(x sh -c 'dpkg -L sandbox-secrets | grep "/sandbox-secrets.service$"')
  local start user
  start=$(x sed -n 's/^ExecStart=//p' "$unitfile")
  user=$(x sed -n 's/^User=//p' "$unitfile")
  docker exec -d "$c" sh -c "ulimit -n $limit && exec setpriv --reuid=$user --regid=$user --init-groups --no-new-privs $start >/tmp/broker.log 2>&1"
  if ! wait_for "the packaged broker" 20 docker exec -u "$user" "$c" sandbox-secrets health; then
    fail "the packaged broker serves: $(x cat /tmp/broker.log)"
    return
  fi
  ok "the packaged broker serves (sandbox-secrets health as $user)"
  contains "the broker raised its descriptor limit to the unit's" "descriptor_limit=$limit" "$(x cat /tmp/broker.log)"
  expect "root's admin command reaches the service user's daemon (sudo sandbox-secrets ...)" \
    "no secrets" "$(x sandbox-secrets list --user mona 2>&1 | grep -o 'no secrets' | head -1)"
  local admin=(docker exec -i -u "$user" "$c" sandbox-secrets)
  printf '%s' "$VALUE" | "${admin[@]}" set DEB_TOKEN --user mona --repos octo/deb >/dev/null
  local id dir
  read -r id dir < <("${admin[@]}" sandbox create --user mona --repo octo/deb)
  expect "sandbox create prints a directory under the unit's RuntimeDirectory" "/run/sandbox-secrets/sandboxes/$id" "$dir"
  expect "the packaged init fetches the secret" "export DEB_TOKEN=" \
    "$(x env SANDBOX_SECRETS_SOCKET="$dir/secrets.sock" sandbox-init env | grep -o '^export DEB_TOKEN=')"
  expect "the packaged init hands it to the command byte for byte" "$VALUE" \
    "$(x env SANDBOX_SECRETS_SOCKET="$dir/secrets.sock" sandbox-init -- sh -c 'printf %s "$DEB_TOKEN"')"
  expect "the packaged profile.d snippet gives login shells the secret" "$VALUE" \
    "$(x env SANDBOX_SECRETS_SOCKET="$dir/secrets.sock" bash -lc 'printf %s "$DEB_TOKEN"')"
  expect "man pages: sandbox-secrets(1) and one per subcommand" "ok" \
    "$(x sh -c 'test -s /usr/share/man/man1/sandbox-secrets.1.gz && test -s /usr/share/man/man1/sandbox-secrets-set.1.gz && zcat /usr/share/man/man1/sandbox-secrets-set.1.gz | grep -q EXAMPLES && echo ok')"
  expect "completions for bash, zsh and fish" "ok" \
    "$(x sh -c 'grep -q "complete .* sandbox-secrets" /usr/share/bash-completion/completions/sandbox-secrets && test -s /usr/share/zsh/vendor-completions/_sandbox-secrets && test -s /usr/share/fish/vendor_completions.d/sandbox-secrets.fish && echo ok')"
  contains "the bash completion completes subcommands" "sandbox" \
    "$(x bash -c '. /usr/share/bash-completion/completions/sandbox-secrets; f=$(complete -p sandbox-secrets | sed -n "s/.*-F \([^ ]*\).*/\1/p"); COMP_WORDS=(sandbox-secrets sa); COMP_CWORD=1; COMP_LINE="sandbox-secrets sa"; COMP_POINT=${#COMP_LINE}; "$f" sandbox-secrets sa sandbox-secrets; echo "${COMPREPLY[*]}"')"
  local grep_out
  grep_out=$(x sh -c "grep -rl 'pkg-value-4b7e' /tmp/broker.log /var/log 2>/dev/null; true")
  expect "no log holds the value" "" "$grep_out"
  # Purge: the broker stopped, the package and its state removed.
  x sh -c 'kill $(pidof sandbox-secrets)' >/dev/null 2>&1
  wait_for "the broker to stop" 10 sh -c "! docker exec $c pidof sandbox-secrets"
  x dpkg --purge sandbox-secrets sandbox-init >/dev/null 2>&1
  expect "dpkg --purge removes both packages and the state" "gone" \
    "$(x sh -c 'test ! -e /usr/bin/sandbox-secrets && test ! -e /usr/bin/sandbox-init && test ! -e /var/lib/sandbox-secrets && echo gone')"
}

test_broker() {
  echo "== broker image"
  local ctx=$work/broker img=pkg-broker:$tag c=pkg-broker-$tag vol=pkg-broker-state-$tag
  mkdir -p "$ctx"
  cp images/broker/Dockerfile target/release/sandbox-secrets "$ctx/"
  if ! build_image "$img" "$ctx"; then fail "images/broker builds"; return; fi
  ok "images/broker builds"
  expect "the image runs as uid 10001" "10001:10001" "$(docker image inspect -f '{{.Config.User}}' "$img")"
  expect "state and run directories are volumes" "map[/run/sandbox-secrets:{} /var/lib/sandbox-secrets:{}]" \
    "$(docker image inspect -f '{{.Config.Volumes}}' "$img")"
  # The run directory bind-mounted from the host, as a platform would (owned by the image's uid).
  local run=$work/broker-run
  install -d -m 0755 -o 10001 -g 10001 "$run"
  containers+=("$c"); volumes+=("$vol")
  docker run -d --name "$c" --network none --health-interval 1s --health-start-period 30s \
    -v "$vol:/var/lib/sandbox-secrets" -v "$run:/run/sandbox-secrets" "$img" >/dev/null
  local state=""
  for _ in $(seq 60); do
    state=$(docker inspect -f '{{.State.Health.Status}}' "$c" 2>/dev/null)
    [[ $state == healthy ]] && break
    sleep 0.5
  done
  expect "docker reports the broker healthy (HEALTHCHECK sandbox-secrets health)" "healthy" "$state" "$(docker logs "$c" 2>&1 | tail -5)"
  expect "the broker runs as uid 10001" "10001" "$(docker exec "$c" sh -c 'stat -c %u /proc/1')"
  printf '%s' "$VALUE" | docker exec -i "$c" sandbox-secrets set IMG_TOKEN --repo octo/img >/dev/null
  local id dir
  read -r id dir < <(docker exec "$c" sandbox-secrets sandbox create --user mona --repo octo/img)
  expect "a sandbox socket appears in the host's run directory" "socket" "$(stat -c %F "$run/sandboxes/$id/secrets.sock" 2>/dev/null | grep -o socket)"
  expect "the host's init fetches from the containerised broker" "$VALUE" \
    "$(SANDBOX_SECRETS_SOCKET=$run/sandboxes/$id/secrets.sock target/static/sandbox-init -- sh -c 'printf %s "$IMG_TOKEN"')"
  expect "the state volume holds the store and key, 0600" "600 600" \
    "$(docker exec "$c" stat -c %a /var/lib/sandbox-secrets/secrets.db /var/lib/sandbox-secrets/key | tr '\n' ' ' | sed 's/ $//')"
  # A restart keeps the store (volume) and the sandbox.
  docker restart -t 10 "$c" >/dev/null
  wait_for "the broker after a restart" 30 docker exec "$c" sandbox-secrets health
  expect "after a restart the sandbox is served again" "$VALUE" \
    "$(SANDBOX_SECRETS_SOCKET=$run/sandboxes/$id/secrets.sock target/static/sandbox-init -- sh -c 'printf %s "$IMG_TOKEN"')"
  docker stop -t 10 "$c" >/dev/null
  expect "docker stop: the broker drains and exits 0" "0" "$(docker inspect -f '{{.State.ExitCode}}' "$c")"
  expect "no log line holds the value" "" "$(docker logs "$c" 2>&1 | grep -o 'pkg-value-4b7e')"
}

test_feature() {
  echo "== devcontainer Feature"
  local ctx=$work/feature img=pkg-feature:$tag c=pkg-feature-$tag f
  f=$ctx/sandbox-init_0
  mkdir -p "$f/bin"
  cp images/feature/sandbox-init/* "$f/"
  cp images/profile.d/sandbox-secrets.sh "$f/"
  cp target/static/sandbox-init "$f/bin/sandbox-init-x86_64"
  # The devcontainer CLI's way: options upper-cased into devcontainer-features.env, the
  # built-in variables beside them, both sourced with `set -a` before install.sh runs as root.
  cat > "$f/devcontainer-features.env" <<'EOF'
TARGETUSER=""
SECRETS="required"
SOCKET="/run/sandbox/secrets.sock"
EOF
  cat > "$f/devcontainer-features.builtin.env" <<'EOF'
_CONTAINER_USER=root
_REMOTE_USER=vscode
_CONTAINER_USER_HOME=/root
_REMOTE_USER_HOME=/home/vscode
EOF
  cat > "$ctx/Dockerfile" <<EOF
FROM $BASE
RUN useradd --create-home --shell /bin/bash --uid 1000 --user-group vscode
COPY sandbox-init_0 /tmp/dev-container-features/sandbox-init_0
RUN cd /tmp/dev-container-features/sandbox-init_0 \\
 && chmod +x ./install.sh \\
 && set -a && . ./devcontainer-features.builtin.env && . ./devcontainer-features.env && set +a \\
 && ./install.sh
EOF
  if ! build_image "$img" "$ctx"; then fail "install.sh applies as the devcontainer CLI runs it"; return; fi
  ok "install.sh applies as the devcontainer CLI runs it"
  # A bad option is refused at build time, naming it.
  sed 's/^SECRETS=.*/SECRETS="sometimes"/' "$f/devcontainer-features.env" > "$work/bad.env"
  local bad
  bad=$(cd "$f" && env -i PATH="$PATH" sh -c "set -a; . $work/bad.env; set +a; ./install.sh" 2>&1)
  contains "a bad option value is refused, naming the option" "option secrets must be auto, required or optional" "$bad"

  # The broker on the host, a sandbox for (mona, octo/feat) with a value and a registry triplet.
  local state=$work/f-state run=$work/f-run bin=$ROOT/target/release/sandbox-secrets
  "$bin" serve --state-dir "$state" --run-dir "$run" > "$work/f-broker.log" 2>&1 &
  local broker=$!
  wait_for "the host broker" 20 "$bin" --run-dir "$run" health
  local s=("$bin" --run-dir "$run")
  printf '%s' "$VALUE" | "${s[@]}" set FEATURE_TOKEN --user mona --repos octo/feat >/dev/null
  printf '%s' "registry.example.test" | "${s[@]}" set F_CONTAINER_REGISTRY_SERVER --repo octo/feat >/dev/null 2>&1
  printf '%s' "robot" | "${s[@]}" set F_CONTAINER_REGISTRY_USER --repo octo/feat >/dev/null 2>&1
  printf '%s' "pw-9d2" | "${s[@]}" set F_CONTAINER_REGISTRY_PASSWORD --repo octo/feat >/dev/null 2>&1
  local id dir
  read -r id dir < <("${s[@]}" sandbox create --user mona --repo octo/feat)

  # The container as the devcontainer CLI starts it: /bin/sh -c with the Feature's entrypoint
  # line, overrideCommand (no command of the image's).
  local ep
  ep=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["entrypoint"])' images/feature/sandbox-init/devcontainer-feature.json)
  local script="echo Container started
trap \"exit 0\" 15
$ep
exec \"\$@\"
while sleep 1 & wait \$!; do :; done"
  containers+=("$c")
  docker run -d --name "$c" --network none -v "$dir:/run/sandbox:ro" --entrypoint /bin/sh "$img" -c "$script" - >/dev/null
  wait_for "the Feature's container" 20 sh -c "docker exec $c cat /proc/1/task/1/children | grep -q '[0-9]'"
  # PID 1 is not dumpable (sandbox-init's choice): its /proc entries need CAP_SYS_PTRACE, which
  # a docker exec lacks, so they are read from the host (its pid there).
  local hostpid
  hostpid=$(docker inspect -f '{{.State.Pid}}' "$c")
  expect "sandbox-init is PID 1" "sandbox-init /usr/local/bin/sandbox-init" \
    "$(docker exec "$c" cat /proc/1/comm) $(readlink "/proc/$hostpid/exe")"
  local child
  child=$(docker exec "$c" cat /proc/1/task/1/children | awk '{print $1}')
  expect "PID 1's command runs as the remote user (vscode)" "1000" \
    "$(docker exec "$c" awk '/^Uid:/{print $2}' "/proc/$child/status")"
  expect "PID 1's command has the secret in its environment" "FEATURE_TOKEN=$VALUE" \
    "$(docker exec -u vscode "$c" sh -c "tr '\\0' '\\n' < /proc/$child/environ | grep '^FEATURE_TOKEN='")"
  expect "PID 1's own environment holds no secret" "readable:" \
    "$(cat "/proc/$hostpid/environ" >/dev/null && printf readable: && tr '\0' '\n' < "/proc/$hostpid/environ" | grep FEATURE_TOKEN)"
  expect "a docker exec login shell of the remote user gets it (profile.d)" "$VALUE" \
    "$(docker exec -u vscode "$c" bash -lc 'printf %s "$FEATURE_TOKEN"')"
  expect "sandbox-init exec gives it to a docker exec command" "$VALUE" \
    "$(docker exec -u vscode "$c" sandbox-init exec -- sh -c 'printf %s "$FEATURE_TOKEN"')"
  expect "registry credentials in the remote user's ~/.docker/config.json" "$(printf 'robot:pw-9d2' | base64)" \
    "$(docker exec "$c" cat /home/vscode/.docker/config.json |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["auths"]["registry.example.test"]["auth"])' 2>&1)"
  expect "config.json belongs to the remote user, 0600" "600 vscode" \
    "$(docker exec "$c" stat -c '%a %U' /home/vscode/.docker/config.json)"
  docker stop -t 10 "$c" >/dev/null
  expect "docker stop: the init forwards SIGTERM, the command exits, the container exits 0" "0" \
    "$(docker inspect -f '{{.State.ExitCode}}' "$c")"
  # secrets=required and no sandbox mounted: nothing starts.
  local out code
  out=$(docker run --rm --network none --entrypoint /bin/sh "$img" -c "$script" - 2>&1)
  code=$?
  expect "secrets=required without a mounted socket: exit 1 before the command" "1" "$code" "$out"
  kill "$broker" 2>/dev/null; wait "$broker" 2>/dev/null
}

for part in "${parts[@]}"; do
  case $part in
    debs) test_debs; test_arm64_debs ;;
    broker) test_broker ;;
    feature) test_feature ;;
    *) echo "test-packages: unknown part $part" >&2; exit 2 ;;
  esac
done
echo "packages: $passed passed, $failed failed"
((failed == 0))
