#!/bin/sh
# The sandbox-init devcontainer Feature's install step. The devcontainer CLI runs it as root at
# image build time, in the Feature's directory, with the options as environment variables
# (TARGETUSER, SECRETS, SOCKET) and _REMOTE_USER / _CONTAINER_USER set. It installs the static
# binary for this machine (bin/sandbox-init-<arch>, shipped in the Feature), the entrypoint the
# Feature's "entrypoint" execs (sandbox-init as PID 1, the devcontainer's command its child), and
# the /etc/profile.d snippet that gives `docker exec` login shells the same secrets.
set -eu
cd "$(dirname "$0")"

TARGETUSER=${TARGETUSER:-}
SECRETS=${SECRETS:-auto}
SOCKET=${SOCKET:-/run/sandbox/secrets.sock}

fail() { echo "sandbox-init feature: $*" >&2; exit 1; }

case $SECRETS in auto | required | optional) ;; *) fail "option secrets must be auto, required or optional, not '$SECRETS'" ;; esac
case $SOCKET in /*) ;; *) fail "option socket must be an absolute path, not '$SOCKET'" ;; esac
case $SOCKET in *[!A-Za-z0-9/._-]*) fail "option socket may hold only letters, digits and / . _ - ('$SOCKET')" ;; esac

user=$TARGETUSER
[ -n "$user" ] || user=${_REMOTE_USER:-}
[ "$user" = root ] && user=
case $user in *[!A-Za-z0-9._-]*) fail "targetUser '$user' is not a user name" ;; esac
if [ -n "$user" ] && ! grep -q "^$user:" /etc/passwd; then
    fail "targetUser '$user' is not in /etc/passwd (create the user first, or list this Feature after the one that does)"
fi

arch=$(uname -m)
case $arch in
    x86_64 | amd64) bin=bin/sandbox-init-x86_64 ;;
    aarch64 | arm64) bin=bin/sandbox-init-aarch64 ;;
    *) fail "no sandbox-init binary for $arch (x86_64 and aarch64 are built)" ;;
esac
[ -f "$bin" ] || fail "$bin is missing from the Feature (scripts/release.sh puts it there)"

install -D -m 0755 "$bin" /usr/local/bin/sandbox-init
/usr/local/bin/sandbox-init --version >/dev/null || fail "/usr/local/bin/sandbox-init does not run here"

install -d -m 0755 /usr/local/share/sandbox-init /etc/profile.d
# The entrypoint: defaults from the options, each still overridable by the container's env.
{
    echo '#!/bin/sh'
    echo '# Written by the sandbox-init devcontainer Feature: sandbox-init becomes PID 1 and runs the'
    echo '# devcontainer command (or, when there is none, the keep-alive loop the CLI would run).'
    echo "export SANDBOX_SECRETS_SOCKET=\"\${SANDBOX_SECRETS_SOCKET:-$SOCKET}\""
    [ -n "$user" ] && echo "export SANDBOX_INIT_USER=\"\${SANDBOX_INIT_USER:-$user}\""
    echo '[ $# -gt 0 ] || set -- /bin/sh -c '"'"'trap "exit 0" TERM; while sleep 1 & wait $!; do :; done'"'"
    echo "exec /usr/local/bin/sandbox-init --secrets \"\${SANDBOX_INIT_SECRETS:-$SECRETS}\" -- \"\$@\""
} > /usr/local/share/sandbox-init/entrypoint.sh
chmod 0755 /usr/local/share/sandbox-init/entrypoint.sh

{
    echo "# sandbox-init Feature: the socket it was installed with, unless the container sets one."
    echo "SANDBOX_SECRETS_SOCKET=\"\${SANDBOX_SECRETS_SOCKET:-$SOCKET}\"; export SANDBOX_SECRETS_SOCKET"
    cat sandbox-secrets.sh
} > /etc/profile.d/sandbox-secrets.sh
chmod 0644 /etc/profile.d/sandbox-secrets.sh
install -d -m 0755 "$(dirname "$SOCKET")"

echo "sandbox-init feature: installed $(/usr/local/bin/sandbox-init --version | head -n1) for ${user:-the container user}, secrets $SECRETS, socket $SOCKET"
