# sandbox-secrets: export this sandbox's secrets into login shells.
# `docker exec` sessions do not descend from the container's PID 1, so they do not inherit the
# secrets it put into its child's environment; this asks the same socket again. Quiet when the
# binary or the socket is missing; never prints a value (errors go to stderr, values only into
# the shell's environment). Install as /etc/profile.d/sandbox-secrets.sh.
if [ -x /usr/local/bin/sandbox-init ] && [ -S "${SANDBOX_SECRETS_SOCKET:-/run/sandbox/secrets.sock}" ]; then
    eval "$(/usr/local/bin/sandbox-init env)"
fi
