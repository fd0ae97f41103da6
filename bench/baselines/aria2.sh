#!/usr/bin/env bash
# Baseline: aria2 (Debian `aria2`) one seeder to one leecher on loopback, over BitTorrent with a
# private torrent (mktorrent, 256 KiB pieces). aria2 learns of peers only through a tracker (or
# DHT), so a local opentracker (Debian `opentracker`), whitelisting this torrent alone,
# introduces the seeder to the leecher. No DHT, local discovery or peer exchange.
#
#   aria2.sh FILE      prints "MB/s seconds"
#
# The clock starts once the tracker counts the seeder as complete (a scrape says so: the seeder
# has checked its copy and announced), and stops when the leecher process exits
# (--seed-time=0: as soon as the download completes); the leecher's copy is then compared with
# FILE byte for byte. Fails (non-zero, the reason on stderr) if a program cannot be found or
# installed, the leecher fails or times out (600 s), or the copy differs.
# Files live in TMPDIR (bench/transfer/run.sh sets it to tmpfs).
set -euo pipefail
. "$(dirname "$0")/tools.sh"

FILE=${1:-}
[ -f "$FILE" ] || bench_fail "usage: aria2.sh FILE"
ARIA2C=$(need_apt_tool aria2c aria2)
MKTORRENT=$(need_apt_tool mktorrent mktorrent)
OPENTRACKER=$(need_apt_tool opentracker opentracker)

W=$(mktemp -d)
PIDS=()
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

NAME=$(basename "$FILE")
BYTES=$(stat -c %s "$FILE")
mkdir -p "$W/seed" "$W/leech"
mkdir -m 755 "$W/tracker"
# The seeder only reads its copy, so a link does (a copy where links cannot be made).
ln "$FILE" "$W/seed/$NAME" 2>/dev/null || cp "$FILE" "$W/seed/$NAME"
read -r TRACKER_PORT SEED_PORT LEECH_PORT < <(free_ports 3 | paste -sd ' ')
"$MKTORRENT" -p -l 18 -a "http://127.0.0.1:$TRACKER_PORT/announce" -o "$W/f.torrent" "$W/seed/$NAME" >/dev/null
# The info-hash (SHA-1 of the bencoded info dictionary), in hex for the whitelist and
# percent-encoded for the scrape.
read -r HASH_HEX HASH_URL < <(python3 - "$W/f.torrent" <<'PY'
import hashlib, sys, urllib.parse
data = open(sys.argv[1], 'rb').read()
def end(i):  # index just past the bencoded value starting at i
    c = data[i:i+1]
    if c == b'i': return data.index(b'e', i) + 1
    if c in (b'l', b'd'):
        i += 1
        while data[i:i+1] != b'e': i = end(i)
        return i + 1
    colon = data.index(b':', i)
    return colon + 1 + int(data[i:colon])
start = data.index(b'4:info') + 6
digest = hashlib.sha1(data[start:end(start)]).digest()
print(digest.hex(), urllib.parse.quote(digest))
PY
)
echo "$HASH_HEX" >"$W/tracker/whitelist"
chmod 644 "$W/tracker/whitelist"
# Debian's opentracker serves only whitelisted info-hashes; -w is relative to -d, its chroot,
# which must be readable after it drops root.
(cd "$W/tracker" && exec "$OPENTRACKER" -i 127.0.0.1 -p "$TRACKER_PORT" -P "$TRACKER_PORT" \
  -d "$W/tracker" -w whitelist) >"$W/tracker.log" 2>&1 &
PIDS+=($!)
SCRAPE="http://127.0.0.1:$TRACKER_PORT/scrape?info_hash=$HASH_URL"
wait_until 10 "opentracker was not answering" curl -fs "$SCRAPE" || {
  tail -5 "$W/tracker.log" >&2
  exit 1
}

A=(--enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=false
  --file-allocation=none --bt-max-peers=0 --max-overall-upload-limit=0
  --max-overall-download-limit=0 -q)
"$ARIA2C" "${A[@]}" --dir="$W/seed" --listen-port="$SEED_PORT" --check-integrity=true \
  --seed-ratio=0 --seed-time=10 "$W/f.torrent" >"$W/seed.log" 2>&1 &
PIDS+=($!)
seeder_known() { curl -fs "$SCRAPE" | grep -aq '8:completei1e'; }
wait_until 300 "the aria2 seeder had not announced itself complete to opentracker" seeder_known || {
  tail -5 "$W/seed.log" >&2
  exit 1
}

START=$(date +%s.%N)
RC=0
timeout 600 "$ARIA2C" "${A[@]}" --dir="$W/leech" --listen-port="$LEECH_PORT" --seed-time=0 \
  "$W/f.torrent" >"$W/leech.log" 2>&1 || RC=$?
END=$(date +%s.%N)
if [ "$RC" != 0 ] || ! cmp -s "$FILE" "$W/leech/$NAME"; then
  echo "aria2: the leecher exited with $RC$([ "$RC" != 124 ] || echo " (timed out)"); its copy $([ -f "$W/leech/$NAME" ] && echo differs || echo is missing)" >&2
  tail -5 "$W/leech.log" >&2
  exit 1
fi
SECS=$(elapsed "$START" "$END")
echo "aria2 1->1: $(mb_per_s "$BYTES" "$SECS") MB/s ($SECS s for $((BYTES >> 20)) MiB, verified)" >&2
echo "$(mb_per_s "$BYTES" "$SECS") $SECS"
