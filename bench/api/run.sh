#!/usr/bin/env bash
# The API benchmark: `callingbox serve` (release) on loopback, on SQLite and
# then on PostgreSQL, loaded by wrk from a separate process:
#   (a) POST /v1/calls: calls dispatched per second and latency percentiles;
#   (b) GET /v1/calls/{id}: requests per second and p50/p99.
# Each run lasts BENCH_SECONDS (15) at each of BENCH_CONNECTIONS (16 64).
#
# The calls go to a number the local carrier has no route for: each one is
# recorded, holds its credit, is planned, gets its conversation (agent loop,
# recognizer session) and is handed to the engine's SIP dialer, which fails
# it at once (`dial_failed`), releasing the hold. So the whole dispatch path
# runs, but no SIP or RTP is sent: thousands of ringing calls would measure
# the machine's UDP, not the API.
#
#   bench/api/run.sh                  # both databases; prints the table
#   BENCH_DATABASES=sqlite bench/api/run.sh
#
# Writes one JSON line per run to bench/results/api.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECONDS_PER_RUN=${BENCH_SECONDS:-15}
CONNECTIONS=${BENCH_CONNECTIONS:-16 64}
DATABASES=${BENCH_DATABASES:-sqlite postgres}
BIN=$ROOT/target/release/callingbox
RESULTS=$ROOT/bench/results/api.jsonl
export BENCH_DIR=$ROOT/bench/api

command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk, or ./dev setup)" >&2; exit 1; }
if [ -z "${BENCH_NO_BUILD:-}" ]; then
  cargo build --release -p callingbox
fi

WORK=$(mktemp -d /tmp/callingbox-api-bench.XXXXXX)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

api() { # method path [body]
  curl -sS -X "$1" "$BASE$2" -H "Authorization: Bearer $BENCH_KEY" \
    -H 'Content-Type: application/json' ${3:+-d "$3"}
}

json() { # field, from stdin
  python3 -c "import json, sys; print(json.load(sys.stdin)$1)"
}

calls_by_status() {
  curl -sS "$BASE/metrics" | sed -n 's/^callingbox_calls{status="\([a-z_]*\)"} \([0-9]*\)$/\1=\2/p' | tr '\n' ' '
}

run_wrk() { # label connections script url
  local label=$1 connections=$2 script=$3 url=$4 line
  line=$(wrk -t2 -c"$connections" -d"${SECONDS_PER_RUN}s" --latency -s "$BENCH_DIR/$script" "$url" |
    sed -n 's/^RESULT //p')
  [ -n "$line" ] || { echo "wrk printed no result for $label" >&2; exit 1; }
  echo "{\"database\": \"$DB\", \"test\": \"$label\", \"connections\": $connections, \"wrk\": $line, \"load\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"at\": \"$(date -u +%FT%TZ)\"}" |
    tee -a "$RESULTS"
}

for DB in $DATABASES; do
  case $DB in
    sqlite) export DATABASE_URL="sqlite://$WORK/bench.db" ;;
    postgres)
      ADMIN=$(scripts/test-postgres.sh)
      NAME=cbbench_$$
      psql -q "$ADMIN" -c "DROP DATABASE IF EXISTS $NAME" -c "CREATE DATABASE $NAME"
      export DATABASE_URL="${ADMIN%/*}/$NAME"
      ;;
    *) echo "unknown database $DB" >&2; exit 2 ;;
  esac
  BENCH_KEY=$("$BIN" keys create --org bench --name bench 2>/dev/null)
  export BENCH_KEY
  "$BIN" credits add --org bench 1000000 >/dev/null
  API_PORT=$(free_port)
  BASE=http://127.0.0.1:$API_PORT
  CALLINGBOX_LISTEN=127.0.0.1:$API_PORT CALLINGBOX_SIP_LISTEN=127.0.0.1:$(free_port) \
    RUST_LOG=${RUST_LOG:-warn} "$BIN" serve >"$WORK/serve-$DB.log" 2>&1 &
  SERVER_PID=$!
  # The local speech stack loads first (Whisper service, LLM, voice).
  for _ in $(seq 1 240); do
    curl -sf "$BASE/openapi.json" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/serve-$DB.log" >&2; exit 1; }
    sleep 0.5
  done
  NUMBER_ID=$(api GET '/v1/numbers/available?area_code=415&limit=1' | json '[0]["phone_number"]' |
    xargs -I{} curl -sS -X POST "$BASE/v1/numbers/purchase" -H "Authorization: Bearer $BENCH_KEY" \
      -H 'Content-Type: application/json' -d '{"phone_number": "{}"}' | json '["id"]')
  BENCH_AGENT=$(api POST /v1/agents "{\"name\": \"bench\", \"type\": \"outbound\", \"instructions\": \"Say hello.\", \"number_ids\": [\"$NUMBER_ID\"]}" | json '["id"]')
  # In the local range, never bought: no route, so the dial fails at once.
  export BENCH_AGENT BENCH_TO=+14155550150

  for c in $CONNECTIONS; do
    run_wrk dispatch "$c" dispatch.lua "$BASE/v1/calls"
    # Let the dispatched calls end before the next run.
    for _ in $(seq 1 120); do
      live=$(calls_by_status | grep -oE '(queued|initiated|ringing|in_progress)=[0-9]+' || true)
      [ -z "$live" ] && break
      sleep 0.5
    done
    echo "  calls now: $(calls_by_status)" >&2
  done
  CALL_ID=$(api GET '/v1/calls?limit=1' | json '["data"][0]["id"]')
  for c in $CONNECTIONS; do
    run_wrk get_call "$c" get_call.lua "$BASE/v1/calls/$CALL_ID"
  done
  kill "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
  if [ "$DB" = postgres ]; then psql -q "$ADMIN" -c "DROP DATABASE IF EXISTS $NAME"; fi
done
