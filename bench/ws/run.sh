#!/usr/bin/env bash
# WebSocket capacity: the release tracker's resident memory (RSS) with many idle sockets, on
# loopback. Holds RELAY_PEERS relay attachments (each with its key proof), TUNNELS tunnels
# between them, then WS_SOCKETS authenticated /ws event-feed sockets, all idle
# (backend/examples/ws_load.rs), and prints the RSS each step added: KiB per socket (or tunnel)
# and sockets per GiB. The goal: at least 100 000 idle /ws sockets per GiB (<= 10 KiB each).
#
# Knobs: WS_SOCKETS (20000), RELAY_PEERS (2000), TUNNELS (5000). Each socket is a file
# descriptor in the tracker and one in the load generator: the script raises the open-file
# limit to fit (as root when the hard limit is lower) or says why it cannot.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/baselines/tools.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/p2p-target}"
WS_SOCKETS=${WS_SOCKETS:-20000}; RELAY_PEERS=${RELAY_PEERS:-2000}; TUNNELS=${TUNNELS:-5000}
KEY=bench-key
SOCKETS=$((WS_SOCKETS + RELAY_PEERS))
# Tunnels a relay connection may hold: each peer of a pair holds one end of the pair's tunnels.
PAIRS=$((RELAY_PEERS / 2))
[ "$TUNNELS" -eq 0 ] || [ "$PAIRS" -gt 0 ] || bench_fail "TUNNELS needs RELAY_PEERS >= 2"
PER_CONN=$(( PAIRS > 0 ? (TUNNELS + PAIRS - 1) / PAIRS + 1 : 1 ))

FDS=$((SOCKETS + 512))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$FDS" ]; then
  ulimit -Hn "$FDS" 2>/dev/null ||
    bench_fail "need $FDS open files, the hard limit is $(ulimit -Hn): raise it (as root: ulimit -Hn $FDS) or lower WS_SOCKETS"
fi
ulimit -n "$FDS"

cargo build --release --locked --bin p2p-tracker --example ws_load >/dev/null
BIN="$CARGO_TARGET_DIR/release/p2p-tracker"
LOAD="$CARGO_TARGET_DIR/release/examples/ws_load"
WORK=$(mktemp -d)
TRACKER_PID=""
# Nothing here may fail: under `set -e` a failing command would end the cleanup early.
cleanup() {
  if [ -n "$TRACKER_PID" ]; then
    kill "$TRACKER_PID" 2>/dev/null || true
    wait "$TRACKER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(free_ports 1)
BASE="http://127.0.0.1:$PORT"
# Limits opened up for the load, nothing else: no rate limit, connections and relay peers per
# key above the counts, tunnels idle for longer than the run.
env -i PATH="$PATH" HOME="$HOME" RUST_LOG=warn API_KEYS=$KEY RATE_LIMIT_RPS=0 \
  P2P_DATA_DIR="$WORK/data" P2P_ADDR="127.0.0.1:$PORT" \
  P2P_MAX_CONNECTIONS=$((SOCKETS + 512)) P2P_RELAY_MAX_PEERS_PER_KEY=$((RELAY_PEERS + 1)) \
  P2P_RELAY_MAX_TUNNELS=$PER_CONN P2P_RELAY_IDLE_SECS=86400 \
  "$BIN" >"$WORK/tracker.log" 2>&1 &
TRACKER_PID=$!
wait_until 10 "the tracker did not answer /health" curl -fs "$BASE/health" || {
  cat "$WORK/tracker.log" >&2
  exit 1
}

echo "ws capacity: $WS_SOCKETS idle /ws sockets, $RELAY_PEERS relay attachments, $TUNNELS tunnels; loopback, $(nproc) cores"
"$LOAD" "$BASE" "$KEY" "$TRACKER_PID" "$WS_SOCKETS" "$RELAY_PEERS" "$TUNNELS" || {
  echo "--- tracker log (last 20 lines)" >&2
  tail -20 "$WORK/tracker.log" >&2
  exit 1
}
echo "goal: >= 100000 idle /ws sockets per GiB (<= 10 KiB each)"
