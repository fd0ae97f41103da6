#!/usr/bin/env bash
# Daemon start-up over a large shared folder, and what the daemon costs once idle.
#
# The folder (on tmpfs, BENCH_TMPDIR, default /dev/shm) holds SMALL (10 000) small files of
# 1-8 KiB and LARGE (4) files of LARGE_MIB (256) MiB. `p2p-peer --daemon` (release build,
# `--dht off --no-relay`, no tracker listening: sharing does not wait for one) starts over it
# twice: the first start hashes everything, the restart reuses the index (`<data>/.p2p/`). For
# each, the time from launch until the daemon logs that the folder is in sync, and the bytes it
# read by then (`rchar` in /proc/PID/io). Then, over IDLE_SECS (10) of idleness, the bytes read
# and the CPU time used.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/p2p-target}"
SMALL=${SMALL:-10000}; LARGE=${LARGE:-4}; LARGE_MIB=${LARGE_MIB:-256}; IDLE_SECS=${IDLE_SECS:-10}
cargo build -q --release --locked -p p2p-peer --bin p2p-peer
BIN="$CARGO_TARGET_DIR/release/p2p-peer"
WORK=$(mktemp -d "${BENCH_TMPDIR:-/dev/shm}/p2p-daemon-bench.XXXXXX")
PID=""
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir "$WORK/share"
python3 - "$WORK/share" "$SMALL" "$LARGE" "$LARGE_MIB" <<'PY'
import os, random, sys
folder, small, large, large_mib = sys.argv[1], *map(int, sys.argv[2:])
rng = random.Random(1)
for i in range(small):
    with open(os.path.join(folder, f"small-{i:05}.txt"), "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 8192)))
block = bytearray(rng.randbytes(1 << 20))
for i in range(large):
    with open(os.path.join(folder, f"large-{i}.bin"), "wb") as f:
        for n in range(large_mib):
            block[:8] = (i * large_mib + n).to_bytes(8, "little")
            f.write(block)
PY
# Files younger than two seconds are hashed once they are that old (their timestamps must be
# able to show a later change; see peer/src/storage/stamp.rs): real folders are older.
sleep 2.5

rchar() { awk '/^rchar/ {print $2}' "/proc/$1/io"; }
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); split($0, f, " "); print int((f[12] + f[13]) * 1000 / hz)}' "/proc/$1/stat"; }

# Starts the daemon, waits until it logs that the folder is in sync; prints seconds and bytes read.
start() {
  local log="$WORK/daemon-$1.log" t0
  t0=$(date +%s.%N)
  RUST_LOG=info "$BIN" --daemon --data "$WORK/share" --tracker http://127.0.0.1:9 --port 0 \
    --listen 127.0.0.1 --allow-local-addrs --dht off --no-relay 2>"$log" &
  PID=$!
  until grep -q "the folder is in sync" "$log"; do
    kill -0 "$PID" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.02
  done
  printf "%-8s %6.2f s to in sync, read %6d MiB (%d bytes)\n" "$1" \
    "$(awk "BEGIN {print $(date +%s.%N) - $t0}")" "$(( $(rchar "$PID") >> 20 ))" "$(rchar "$PID")"
}

TOTAL=$(du -sm --apparent-size "$WORK/share" | cut -f1)
echo "daemon start-up: $SMALL small files + $LARGE x $LARGE_MIB MiB ($TOTAL MiB) in $WORK, $(nproc) cores"
start first
kill -TERM "$PID"; wait "$PID" || true
start restart
r0=$(rchar "$PID"); c0=$(cpu_ms "$PID")
sleep "$IDLE_SECS"
echo "idle     ${IDLE_SECS} s: read $(( $(rchar "$PID") - r0 )) bytes, $(( $(cpu_ms "$PID") - c0 )) ms of CPU"
kill -TERM "$PID"; wait "$PID" || true
PID=""
