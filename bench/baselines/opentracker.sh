#!/usr/bin/env bash
# Baseline: opentracker (Debian `opentracker`) answering BitTorrent HTTP announces on loopback
# under oha's load (DURATION, default 10s; CONNS, default 64 connections), the load
# bench/tracker/run.sh puts on our tracker.
#
#   opentracker.sh     prints "requests_per_s p99_ms success_percent"
#
# Every request is the same announce of a seeder (left=0) for one whitelisted info-hash, answered
# with a compact peer list. Before the load, one announce must get a proper answer (an
# interval, not a failure reason), and under it every response must be 2xx. Fails (non-zero,
# the reason on stderr) if opentracker or oha cannot be found or installed, or either check
# fails.
set -euo pipefail
. "$(dirname "$0")/tools.sh"

OPENTRACKER=$(need_apt_tool opentracker opentracker)
OHA=$(need_oha)
export OHA # oha_measure runs it

W=$(mktemp -d)
OT=""
cleanup() {
  [ -z "$OT" ] || kill "$OT" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

read -r HASH_HEX HASH_URL < <(python3 -c 'import hashlib, urllib.parse
digest = hashlib.sha1(b"p2p bench/baselines/opentracker.sh").digest()
print(digest.hex(), urllib.parse.quote(digest))')
# Debian's opentracker serves only whitelisted info-hashes; -w is relative to -d, its chroot,
# which must be readable after it drops root (mktemp's directory is not).
mkdir -m 755 "$W/tracker"
echo "$HASH_HEX" >"$W/tracker/whitelist"
chmod 644 "$W/tracker/whitelist"
PORT=$(free_ports 1)
(cd "$W/tracker" && exec "$OPENTRACKER" -i 127.0.0.1 -p "$PORT" -P "$PORT" -d "$W/tracker" -w whitelist) >"$W/log" 2>&1 &
OT=$!
ANNOUNCE="http://127.0.0.1:$PORT/announce?info_hash=$HASH_URL&peer_id=ABCDEFGHIJKLMNOPQRST&port=6881&uploaded=0&downloaded=0&left=0&compact=1"
announced() { curl -fs "$ANNOUNCE" | grep -aq '8:intervali'; }
wait_until 10 "opentracker did not answer an announce" announced || {
  echo "its answer: $(curl -s "$ANNOUNCE" || true)" >&2
  tail -5 "$W/log" >&2
  exit 1
}
oha_measure "$ANNOUNCE"
