#!/usr/bin/env bash
# A real PostgreSQL for the shared-store tests and benchmarks: Debian's postgresql package, a
# cluster made by `initdb` as the unprivileged `postgres` user in a run directory, listening on
# a unix socket there and on 127.0.0.1:$SANDBOX_PG_PORT (54329 unless set), with one role and one
# database for the broker (password auth, scram-sha-256, random password per start).
#   scripts/postgres.sh start   start (idempotent), write the env file
#   scripts/postgres.sh stop    stop it and remove its cluster
#   scripts/postgres.sh env     print the env file's path (after start)
#   scripts/postgres.sh restart restart the running cluster (fast shutdown), keeping its data
# The env file (0600, root's) holds SANDBOX_TEST_POSTGRES: the store URL the tests give the
# broker through SANDBOX_SECRETS_STORE (never on a command line: it holds the password).
# SANDBOX_PG_LISTEN adds listen addresses (e.g. a docker bridge's) for the multi-host test.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${SANDBOX_TEST_DIR:-/run/sandbox-init-test}
PGROOT=${SANDBOX_PG_DIR:-/run/sandbox-init-pg}
PORT=${SANDBOX_PG_PORT:-54329}
LISTEN=127.0.0.1${SANDBOX_PG_LISTEN:+,$SANDBOX_PG_LISTEN}
ENV_FILE=$DIR/postgres.env
ROLE=sandbox_secrets
DB=sandbox_secrets

bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -n $d && -x $d/initdb ]] || { echo "postgres: Debian's postgresql is not installed (scripts/setup.sh --deps)" >&2; exit 1; }
  echo "$d"
}

as_pg() { runuser -u postgres -- "$@"; }

running() { [[ -f $PGROOT/data/postmaster.pid ]] && as_pg "$(bin)/pg_ctl" -D "$PGROOT/data" status >/dev/null 2>&1; }

stop() {
  if [[ -d $PGROOT/data ]] && running; then
    as_pg "$(bin)/pg_ctl" -D "$PGROOT/data" -m fast -w -t 30 stop >/dev/null || true
  fi
  rm -rf "$PGROOT" "$ENV_FILE"
}

start() {
  if [[ -f $ENV_FILE ]] && running; then
    echo "postgres: already running on 127.0.0.1:$PORT"; return 0
  fi
  stop
  id postgres >/dev/null 2>&1 || { echo "postgres: no postgres user (install postgresql)" >&2; exit 1; }
  if ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q .; then
    echo "postgres: port $PORT is taken: $(ss -Hltnp "sport = :$PORT"); set SANDBOX_PG_PORT" >&2; exit 1
  fi
  local b password
  b=$(bin)
  mkdir -p "$DIR" "$PGROOT"; chmod 0700 "$DIR"
  chown postgres: "$PGROOT"; chmod 0700 "$PGROOT"
  password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  # The password reaches initdb through a 0600 file of postgres's, never argv.
  install -o postgres -m 0600 /dev/null "$PGROOT/pwfile"
  printf '%s\n' "$password" > "$PGROOT/pwfile"
  as_pg "$b/initdb" -D "$PGROOT/data" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
    --pwfile="$PGROOT/pwfile" -E UTF8 --locale=C.UTF-8 >"$PGROOT/initdb.log" 2>&1 ||
    { cat "$PGROOT/initdb.log" >&2; exit 1; }
  rm -f "$PGROOT/pwfile"
  mkdir -p "$PGROOT/sock"; chown postgres: "$PGROOT/sock"
  # TLS: a CA of this cluster's own and a server certificate for localhost and 127.0.0.1, so the
  # tests can check that the broker verifies the server (the CA's public half is in the env
  # file; its key is thrown away).
  local tlsdir=$PGROOT/tls
  mkdir -p "$tlsdir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=sandbox-init test CA" -keyout "$tlsdir/ca.key" -out "$tlsdir/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$PGROOT/data/server.key" -out "$tlsdir/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$tlsdir/ext"
  openssl x509 -req -in "$tlsdir/server.csr" -CA "$tlsdir/ca.pem" -CAkey "$tlsdir/ca.key" \
    -CAcreateserial -days 2 -extfile "$tlsdir/ext" -out "$PGROOT/data/server.crt" 2>/dev/null
  rm -f "$tlsdir/ca.key" "$tlsdir/server.csr"
  chown postgres: "$PGROOT/data/server.key" "$PGROOT/data/server.crt"
  chmod 0600 "$PGROOT/data/server.key"
  chmod 0755 "$tlsdir"; chmod 0644 "$tlsdir/ca.pem"
  cat >> "$PGROOT/data/postgresql.conf" <<CONF
ssl = on
listen_addresses = '$LISTEN'
port = $PORT
unix_socket_directories = '$PGROOT/sock'
max_connections = 200
shared_buffers = 64MB
log_min_messages = warning
CONF
  # Any address may try (the multi-host test's containers); every one needs the password.
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGROOT/data/pg_hba.conf"
  as_pg "$b/pg_ctl" -D "$PGROOT/data" -l "$PGROOT/log" -w -t 60 start >/dev/null ||
    { cat "$PGROOT/log" >&2; exit 1; }
  # The broker's role owns its database; its password goes in through psql's stdin (the
  # password is base64 without quotes, so it needs no escaping).
  # CREATEDB: each test makes a fresh database of its own.
  as_pg psql -q -h "$PGROOT/sock" -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -f - >/dev/null <<SQL
CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$password';
CREATE DATABASE $DB OWNER $ROLE;
SQL
  umask 077
  cat > "$ENV_FILE" <<ENV
SANDBOX_TEST_POSTGRES=postgres://$ROLE:$password@127.0.0.1:$PORT/$DB?sslmode=disable
SANDBOX_TEST_POSTGRES_PORT=$PORT
SANDBOX_TEST_POSTGRES_CA=$tlsdir/ca.pem
SANDBOX_TEST_POSTGRES_ADMIN="runuser -u postgres -- psql -h $PGROOT/sock -p $PORT -U postgres"
ENV
  echo "postgres: running on 127.0.0.1:$PORT (env in $ENV_FILE)"
}

case ${1:-} in
  start) start ;;
  stop) stop; echo "postgres: stopped" ;;
  restart) running || { echo "postgres: not running" >&2; exit 1; }
    as_pg "$(bin)/pg_ctl" -D "$PGROOT/data" -l "$PGROOT/log" -m fast -w -t 60 restart >/dev/null
    echo "postgres: restarted" ;;
  env) [[ -f $ENV_FILE ]] || { echo "postgres: not started (scripts/postgres.sh start)" >&2; exit 1; }; echo "$ENV_FILE" ;;
  *) echo "usage: scripts/postgres.sh start|stop|env" >&2; exit 2 ;;
esac
