#!/usr/bin/env bash
# Starts (once) a throwaway PostgreSQL server for the tests on port 55432,
# owned by the `postgres` system user, trust auth on loopback only, and
# prints its admin URL. The API tests create a fresh database per test.
set -euo pipefail
PORT=55432
DATA=/tmp/callingbox-pg
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
URL="postgres://postgres@127.0.0.1:$PORT/postgres"
run_as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; elif [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; else sudo -u postgres "$@"; fi
}
if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then
  echo "$URL"; exit 0
fi
if [ ! -f "$DATA/PG_VERSION" ]; then
  mkdir -p "$DATA" && chown postgres:postgres "$DATA" 2>/dev/null || true
  run_as_postgres "$BIN/initdb" -D "$DATA" -U postgres --auth=trust >/dev/null
fi
run_as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
  -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
echo "$URL"
