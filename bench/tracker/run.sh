#!/usr/bin/env bash
# Tracker load benchmark: 10k registered peers and 10k files, then oha (64 connections, 10 s
# each) against GET /api/files/{hash}/peers and POST /api/peers/heartbeat, on SQLite and on
# PostgreSQL; and, in the same run, opentracker answering HTTP announces under the same load
# (shared/baselines/opentracker-oha.sh). Prints requests/s, p99 and the ratio to opentracker.
#
# Needs: oha (`cargo install oha --locked`, or set OHA), Debian `opentracker` for the baseline,
# a PostgreSQL server for the PostgreSQL half (P2P_BENCH_POSTGRES_ADMIN_URL, default
# postgres://postgres@127.0.0.1:5432/postgres; skipped if it does not answer).
# Knobs: PEERS (10000), FILES (10000), PEERS_PER_FILE (3), DURATION (10s), CONNS (64).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/p2p-target}"
OHA=${OHA:-$(command -v oha || echo "$HOME/.cache/p2p-tools/bin/oha")}
[ -x "$OHA" ] || { echo "oha not found: cargo install oha --locked (or set OHA)"; exit 1; }
PEERS=${PEERS:-10000}; FILES=${FILES:-10000}; PER_FILE=${PEERS_PER_FILE:-3}
DURATION=${DURATION:-10s}; CONNS=${CONNS:-64}
PG_ADMIN=${P2P_BENCH_POSTGRES_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
KEY=bench-key

cargo build --release --locked --bin p2p-tracker --example bench_seed >/dev/null
BIN="$CARGO_TARGET_DIR/release/p2p-tracker"
SEED="$CARGO_TARGET_DIR/release/examples/bench_seed"
WORK=$(mktemp -d)
TRACKER_PID=""
# Nothing here may fail: under `set -e` a failing command (a `wait` on the killed tracker
# returns 143) would end the cleanup before the files and the database are gone.
cleanup() {
  if [ -n "$TRACKER_PID" ]; then
    kill "$TRACKER_PID" 2>/dev/null || true
    wait "$TRACKER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  if [ -n "${PG_DB:-}" ]; then psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $PG_DB" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# oha summary -> "rps p99_ms success_rate"
measure() {
  "$OHA" -z "$DURATION" -c "$CONNS" --no-tui --output-format json "$@" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); s=d["summary"]; p=d["latencyPercentiles"]
print("%.0f %.2f %.1f" % (s["requestsPerSec"], p["p99"]*1000, s["successRate"]*100))'
}

start_tracker() { # $1 = extra env assignment for the database
  local port=$((20000 + RANDOM % 20000))
  env -i PATH="$PATH" HOME="$HOME" RUST_LOG=warn API_KEYS=$KEY RATE_LIMIT_RPS=0 \
    P2P_DATA_DIR="$WORK/data" P2P_ADDR="127.0.0.1:$port" "$@" "$BIN" >"$WORK/tracker.log" 2>&1 &
  TRACKER_PID=$!
  BASE="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do curl -fs "$BASE/health" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "tracker did not start:"; cat "$WORK/tracker.log"; exit 1
}

stop_tracker() { kill "$TRACKER_PID"; wait "$TRACKER_PID" 2>/dev/null || true; TRACKER_PID=""; }

declare -A RESULT
bench_backend() { # $1 = name, rest = env for the database
  local name=$1; shift
  start_tracker "$@"
  read -r FILE_ID PEER_ID < <("$SEED" "$BASE" "$KEY" "$PEERS" "$FILES" "$PER_FILE")
  RESULT[$name-peers]=$(measure -H "X-API-Key: $KEY" "$BASE/api/files/$FILE_ID/peers")
  RESULT[$name-heartbeat]=$(measure -m POST -H "X-API-Key: $KEY" -H 'content-type: application/json' \
    -d "{\"peer_id\":\"$PEER_ID\"}" "$BASE/api/peers/heartbeat")
  stop_tracker
}

echo "tracker benchmark: $PEERS peers, $FILES files x $PER_FILE peers, oha -c $CONNS -z $DURATION, $(nproc) cores"
bench_backend sqlite
if psql "$PG_ADMIN" -qAtc 'SELECT 1' >/dev/null 2>&1; then
  PG_DB="p2p_bench_$$"
  psql "$PG_ADMIN" -qc "CREATE DATABASE $PG_DB" >/dev/null
  bench_backend postgres POSTGRES_URL="${PG_ADMIN%/*}/$PG_DB"
else
  echo "SKIPPED: PostgreSQL half ($PG_ADMIN does not answer)"
fi

OT_RPS="" OT_P99=""
if command -v opentracker >/dev/null; then
  OT=$(OHA="$OHA" bash ../shared/baselines/opentracker-oha.sh 2>&1 || true)
  OT_RPS=$(echo "$OT" | awk '/Requests\/sec/ {print $2}')
  OT_P99=$(echo "$OT" | awk '/99.00%/ {v=$3; if ($4 == "secs") v=v*1000; print v}')
else
  echo "SKIPPED: opentracker baseline (apt-get install opentracker)"
fi

printf '\n%-10s %-28s %10s %10s %8s %12s\n' backend endpoint "req/s" "p99 ms" "ok %" "vs opentr."
for key in sqlite-peers sqlite-heartbeat postgres-peers postgres-heartbeat; do
  [ -n "${RESULT[$key]:-}" ] || continue
  read -r rps p99 ok <<<"${RESULT[$key]}"
  ratio="-"; [ -n "$OT_RPS" ] && ratio=$(python3 -c "print(f'{$rps/$OT_RPS:.2f}x')")
  case $key in *-peers) ep="GET /api/files/{hash}/peers";; *) ep="POST /api/peers/heartbeat";; esac
  printf '%-10s %-28s %10s %10s %8s %12s\n' "${key%%-*}" "$ep" "$rps" "$p99" "$ok" "$ratio"
done
[ -n "$OT_RPS" ] && printf '%-10s %-28s %10s %10s\n' opentracker "GET /announce (baseline)" "$OT_RPS" "$OT_P99"
echo "goal: >= 1.5x opentracker's req/s with p99 < 5 ms"
