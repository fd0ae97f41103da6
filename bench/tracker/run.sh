#!/usr/bin/env bash
# Tracker load benchmark: 10k registered peers and 10k files, then oha (64 connections, 10 s
# each) against GET /api/files/{hash}/peers and POST /api/peers/heartbeat, on SQLite and on
# PostgreSQL; and, in the same run, the baseline: opentracker answering HTTP announces under the
# same load (bench/baselines/opentracker.sh). Prints requests/s, p99 and the ratio to opentracker.
#
# Needs: oha (crates.io) and Debian `opentracker`, found or installed by bench/baselines/tools.sh;
# a PostgreSQL server for the PostgreSQL half (P2P_BENCH_POSTGRES_ADMIN_URL, default
# postgres://postgres@127.0.0.1:5432/postgres; SKIPPED if it does not answer, an error under
# P2P_REQUIRE_ALL=1).
# Knobs: PEERS (10000), FILES (10000), PEERS_PER_FILE (3), DURATION (10s), CONNS (64).
# BASELINES=skip runs without opentracker (no ratios); otherwise a baseline that cannot run is
# an error.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/baselines/tools.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/p2p-target}"
PEERS=${PEERS:-10000}; FILES=${FILES:-10000}; PER_FILE=${PEERS_PER_FILE:-3}
export DURATION=${DURATION:-10s} CONNS=${CONNS:-64}
PG_ADMIN=${P2P_BENCH_POSTGRES_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
KEY=bench-key

# The programs first, so a missing one fails the run before anything is measured.
OHA=$(need_oha)
export OHA
if [ "${BASELINES:-}" != skip ]; then need_apt_tool opentracker opentracker >/dev/null; fi

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

start_tracker() { # $@ = extra env assignments for the database
  local port
  port=$(free_ports 1)
  env -i PATH="$PATH" HOME="$HOME" RUST_LOG=warn API_KEYS=$KEY RATE_LIMIT_RPS=0 \
    P2P_DATA_DIR="$WORK/data" P2P_ADDR="127.0.0.1:$port" "$@" "$BIN" >"$WORK/tracker.log" 2>&1 &
  TRACKER_PID=$!
  BASE="http://127.0.0.1:$port"
  wait_until 10 "the tracker did not answer /health" curl -fs "$BASE/health" || {
    cat "$WORK/tracker.log" >&2
    exit 1
  }
}

stop_tracker() { kill "$TRACKER_PID"; wait "$TRACKER_PID" 2>/dev/null || true; TRACKER_PID=""; }

declare -A RESULT
bench_backend() { # $1 = name, rest = env for the database
  local name=$1; shift
  start_tracker "$@"
  read -r FILE_ID PEER_ID PEER_TOKEN < <("$SEED" "$BASE" "$KEY" "$PEERS" "$FILES" "$PER_FILE")
  RESULT[$name-peers]=$(oha_measure -H "X-API-Key: $KEY" "$BASE/api/files/$FILE_ID/peers")
  RESULT[$name-heartbeat]=$(oha_measure -m POST -H "X-API-Key: $KEY" -H "X-Peer-Token: $PEER_TOKEN" \
    -H 'content-type: application/json' \
    -d "{\"peer_id\":\"$PEER_ID\"}" "$BASE/api/peers/heartbeat")
  stop_tracker
}

echo "tracker benchmark: $PEERS peers, $FILES files x $PER_FILE peers, oha -c $CONNS -z $DURATION, $(nproc) cores"
echo "oha: $("$OHA" --version)"
bench_backend sqlite
if psql "$PG_ADMIN" -qAtc 'SELECT 1' >/dev/null 2>&1; then
  PG_DB="p2p_bench_$$"
  psql "$PG_ADMIN" -qc "CREATE DATABASE $PG_DB" >/dev/null
  bench_backend postgres POSTGRES_URL="${PG_ADMIN%/*}/$PG_DB"
else
  echo "SKIPPED: PostgreSQL half ($PG_ADMIN does not answer)"
  [ "${P2P_REQUIRE_ALL:-}" != 1 ] || bench_fail "P2P_REQUIRE_ALL=1 and PostgreSQL does not answer"
fi

OT_RPS="" OT_P99=""
if [ "${BASELINES:-}" = skip ]; then
  echo "SKIPPED: opentracker baseline (BASELINES=skip): the ratios are not measured"
else
  OT=$(bash bench/baselines/opentracker.sh) ||
    bench_fail "the opentracker baseline failed (above); BASELINES=skip runs without it"
  read -r OT_RPS OT_P99 _ <<<"$OT"
fi

printf '\n%-11s %-28s %10s %10s %8s %12s\n' backend endpoint "req/s" "p99 ms" "ok %" "vs opentr."
for key in sqlite-peers sqlite-heartbeat postgres-peers postgres-heartbeat; do
  [ -n "${RESULT[$key]:-}" ] || continue
  read -r rps p99 ok <<<"${RESULT[$key]}"
  ratio="-"; [ -z "$OT_RPS" ] || ratio=$(python3 -c "print(f'{$rps/$OT_RPS:.2f}x')")
  case $key in *-peers) ep="GET /api/files/{hash}/peers";; *) ep="POST /api/peers/heartbeat";; esac
  printf '%-11s %-28s %10s %10s %8s %12s\n' "${key%%-*}" "$ep" "$rps" "$p99" "$ok" "$ratio"
done
[ -z "$OT_RPS" ] || printf '%-11s %-28s %10s %10s\n' opentracker "GET /announce (baseline)" "$OT_RPS" "$OT_P99"
echo "goal: >= 1.5x opentracker's req/s with p99 < 5 ms"
