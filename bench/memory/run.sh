#!/usr/bin/env bash
# Peak memory by file size: one `p2p-download` of a file from one `p2p-peer --daemon` seeder
# through a real `p2p-tracker`, all release builds on loopback (`--dht off --no-relay`), for
# each size in SIZES_MIB (default "1024 10240"). Prints per size the time, the rate, and the
# peak RSS (VmHWM) of the download and of the seeder; the goal (issue 22) is a download under
# 100 MiB whatever the size, so the two sizes should show about the same figures.
#
# The original file is written to BENCH_DISKDIR (default /var/tmp: 10 GiB does not belong in
# RAM) and the download goes to BENCH_TMPDIR (default /dev/shm); each needs the largest size
# free. Exits non-zero if a download fails or its copy differs.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/p2p-target}"
SIZES_MIB=${SIZES_MIB:-"1024 10240"}
KEY=bench-memory-key
cargo build -q --release --locked -p p2p-peer -p p2p-tracker --bin p2p-peer --bin p2p-download --bin p2p-tracker
BIN="$CARGO_TARGET_DIR/release"
SRC=$(mktemp -d "${BENCH_DISKDIR:-/var/tmp}/p2p-memory-src.XXXXXX")
WORK=$(mktemp -d "${BENCH_TMPDIR:-/dev/shm}/p2p-memory.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$SRC" "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
wait_log() { # wait_log FILE TEXT PID SECONDS
  local deadline=$((SECONDS + $4))
  until grep -q "$2" "$1"; do
    kill -0 "$3" 2>/dev/null || { echo "memory: the process exited:"; tail -20 "$1"; exit 1; }
    [ $SECONDS -lt $deadline ] || { echo "memory: no '$2' within $4 s:"; tail -20 "$1"; exit 1; }
    sleep 0.1
  done
}

PORT=$(free_port)
"$BIN/p2p-tracker" --addr "127.0.0.1:$PORT" --api-keys "$KEY" --rate-limit-rps 0 \
  --data-dir "$WORK/tracker" >"$WORK/tracker.log" 2>&1 &
PIDS+=($!)
URL="http://127.0.0.1:$PORT"
for _ in $(seq 1 100); do curl -sf "$URL/health" >/dev/null && break; sleep 0.1; done
curl -sf "$URL/health" >/dev/null || { echo "memory: the tracker did not start"; cat "$WORK/tracker.log"; exit 1; }

echo "peak memory by file size: $(nproc) cores, loopback, release builds, originals in $SRC, downloads in $WORK"
printf "%-9s %9s %10s %22s %20s\n" size time rate "download peak RSS" "seeder peak RSS"
for mib in $SIZES_MIB; do
  rm -rf "$SRC/seed" "$WORK/leech"
  mkdir -p "$SRC/seed"
  head -c $((mib * 1024 * 1024)) /dev/urandom >"$SRC/seed/file.bin"
  id=$(sha256sum "$SRC/seed/file.bin" | cut -d' ' -f1)
  # The seeder hashes only files at least two seconds old (peer/src/storage/stamp.rs).
  sleep 2.5
  common=(--tracker "$URL" --api-key "$KEY" --port 0 --listen 127.0.0.1 --allow-local-addrs
    --dht off --no-relay)
  RUST_LOG=info "$BIN/p2p-peer" --daemon --data "$SRC/seed" "${common[@]}" >"$WORK/seeder.log" 2>&1 &
  seeder=$!
  PIDS+=("$seeder")
  wait_log "$WORK/seeder.log" "the folder is in sync" "$seeder" $((60 + mib / 50))
  # Listed once its announce has landed.
  for _ in $(seq 1 100); do
    curl -sf -H "X-API-Key: $KEY" "$URL/api/files/$id/peers" | grep -q peer_id && break
    sleep 0.1
  done
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$WORK/download.rss" \
    "$BIN/p2p-download" --data "$WORK/leech" "${common[@]}" "$id" >"$WORK/download.log" 2>&1 ||
    { echo "memory: the download of $mib MiB failed:"; tail -20 "$WORK/download.log"; exit 1; }
  t=$(awk "BEGIN {print $(date +%s.%N) - $t0}")
  cmp -s "$SRC/seed/file.bin" "$WORK/leech/file.bin" || { echo "memory: the copy of $mib MiB differs"; exit 1; }
  seeder_kib=$(hwm_kib "$seeder")
  printf "%-9s %7.1f s %6.0f MB/s %18.1f MiB %16.1f MiB\n" "$mib MiB" "$t" \
    "$(awk "BEGIN {print $mib * 1.048576 / $t}")" \
    "$(awk "BEGIN {print $(cat "$WORK/download.rss") / 1024}")" "$(awk "BEGIN {print $seeder_kib / 1024}")"
  kill "$seeder"
  wait "$seeder" 2>/dev/null || true
  rm -rf "$WORK/leech" "$SRC/seed"
done
