#!/usr/bin/env bash
# Baseline: rqbit (crates.io, the version pinned in tools.sh) on loopback, with a private torrent
# (mktorrent, 256 KiB pieces, as our chunks) whose seeder is given to every leecher directly: no
# DHT, local discovery, UPnP or tracker.
#
#   rqbit.sh one-to-one FILE         one seeder, one leecher; prints "MB/s seconds"
#   rqbit.sh swarm FILE LEECHERS     one seeder, LEECHERS leechers started together, each given
#                                    only the seeder; prints the seconds until all had the file
#
# The clock starts once the seeder has checked its copy and is live (its HTTP API says so), and
# stops when the last leecher process has exited (-e: exit when the download completes), so it
# includes the leechers' start-up, as a real download does. Every leecher's copy is compared
# with FILE byte for byte afterwards. Fails (non-zero, with the reason on stderr) if rqbit cannot
# be found or installed, a leecher fails or times out (600 s), or a copy differs.
# Files live in TMPDIR (bench/transfer/run.sh sets it to tmpfs).
set -euo pipefail
. "$(dirname "$0")/tools.sh"

MODE=${1:-}
FILE=${2:-}
case $MODE in
  one-to-one) LEECHERS=1 ;;
  swarm) LEECHERS=${3:-} ;;
  *) bench_fail "usage: rqbit.sh one-to-one FILE | rqbit.sh swarm FILE LEECHERS" ;;
esac
[ -f "$FILE" ] || bench_fail "rqbit.sh: $FILE is not a file"
[[ $LEECHERS =~ ^[1-9][0-9]*$ ]] || bench_fail "rqbit.sh swarm: LEECHERS must be a positive number"
RQBIT=$(need_rqbit)
MKTORRENT=$(need_apt_tool mktorrent mktorrent)

W=$(mktemp -d)
SEED=""
PIDS=()
# Nothing here may fail under `set -e` before the files are gone.
cleanup() {
  kill $SEED "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

NAME=$(basename "$FILE")
BYTES=$(stat -c %s "$FILE")
mkdir -p "$W/seed"
cp "$FILE" "$W/seed/$NAME"
"$MKTORRENT" -p -l 18 -a http://127.0.0.1:1/announce -o "$W/f.torrent" "$W/seed/$NAME" >/dev/null
G=(--disable-dht --disable-dht-persistence --disable-upnp-port-forward --disable-lsd
  --disable-trackers --listen-ip 127.0.0.1 --ipv4-only -v warn)
mapfile -t PORTS < <(free_ports $((LEECHERS + 2)))
SEED_PORT=${PORTS[0]}
API="127.0.0.1:${PORTS[1]}"

"$RQBIT" "${G[@]}" --listen-port "$SEED_PORT" --http-api-listen-addr "$API" \
  download -o "$W/seed" --overwrite "$W/f.torrent" >"$W/seed.log" 2>&1 &
SEED=$!
seeder_live() { curl -fsS "http://$API/torrents/0/stats/v1" | grep -q '"state":"live"'; }
wait_until 300 "the rqbit seeder was not live" seeder_live || {
  tail -5 "$W/seed.log" >&2
  exit 1
}

START=$(date +%s.%N)
for i in $(seq 1 "$LEECHERS"); do
  mkdir -p "$W/l$i"
  timeout 600 "$RQBIT" "${G[@]}" --listen-port "${PORTS[i + 1]}" \
    download --disable-http-api -o "$W/l$i" -e --initial-peers "127.0.0.1:$SEED_PORT" "$W/f.torrent" \
    >"$W/l$i.log" 2>&1 &
  PIDS+=($!)
done
RCS=()
for i in $(seq 1 "$LEECHERS"); do
  rc=0
  wait "${PIDS[i - 1]}" || rc=$?
  RCS+=("$rc")
done
END=$(date +%s.%N)
PIDS=()
FAILED=()
for i in $(seq 1 "$LEECHERS"); do
  if [ "${RCS[i - 1]}" != 0 ]; then
    FAILED+=("leecher $i exited with ${RCS[i - 1]}$([ "${RCS[i - 1]}" != 124 ] || echo ' (timed out)')")
  elif [ ! -f "$W/l$i/$NAME" ]; then
    FAILED+=("leecher $i exited with 0 but has no copy")
  elif ! cmp -s "$FILE" "$W/l$i/$NAME"; then
    FAILED+=("leecher $i's copy differs from $FILE")
  fi
done
if [ ${#FAILED[@]} != 0 ]; then
  printf 'rqbit: %s\n' "${FAILED[@]}" >&2
  tail -5 "$W/l1.log" >&2
  exit 1
fi

SECS=$(elapsed "$START" "$END")
if [ "$MODE" = one-to-one ]; then
  echo "rqbit 1->1: $(mb_per_s "$BYTES" "$SECS") MB/s ($SECS s for $((BYTES >> 20)) MiB, verified)" >&2
  echo "$(mb_per_s "$BYTES" "$SECS") $SECS"
else
  echo "rqbit 1->$LEECHERS: $SECS s until all $LEECHERS leechers had $((BYTES >> 20)) MiB (verified)" >&2
  echo "$SECS"
fi
