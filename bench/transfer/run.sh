#!/usr/bin/env bash
# Transfer benchmark: 1 GiB from one seeder to one leecher over loopback, for this project and,
# in the same run, for the baselines rqbit (bench/baselines/rqbit.sh) and aria2
# (bench/baselines/aria2.sh): BitTorrent, private torrents, peers given directly or through a
# local tracker. Prints MB/s, wall time and ratios.
#
# Needs: rqbit (crates.io) and Debian aria2, mktorrent and opentracker, found or installed by
# bench/baselines/tools.sh. BASELINES=skip runs ours and the floor alone (no ratios measured).
# SIZE_MIB (default 1024), PIPELINE (default 32), ROUNDS (default 2: each client runs that often,
# in turn, the order reversed every other round, and its best run counts).
# The run fails (non-zero exit, after the summary) if any run of ours or of the floor fails, or
# if a baseline fails in every round.
#
# Ours runs with peer/examples/transfer_bench.rs (seeder and leechers in one process, real TCP
# on loopback, Noise encryption, every chunk verified, whole-file SHA-256 checked at the end);
# one-to-one also runs with the seeder and the leecher in two processes, as rqbit's does.
# The swarm run (SWARM_MIB, default 256, to SWARM_LEECHERS, default 8) compares with rqbit:
# one rqbit seeder and 8 rqbit leechers given the seeder's address.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/baselines/tools.sh
# Every file of every client lives on tmpfs (BENCH_TMPDIR, default /dev/shm), so the figures
# compare the transfer engines, not this VM's disk (≈ 180-400 MB/s with fdatasync here). Ours
# flushes the download (fsync) before its atomic rename; on tmpfs that costs nothing, as for the
# others.
export TMPDIR="${BENCH_TMPDIR:-/dev/shm}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/p2p-target}"
SIZE_MIB=${SIZE_MIB:-1024}; PIPELINE=${PIPELINE:-32}; ROUNDS=${ROUNDS:-2}
# The baselines' programs first, so a missing one fails the run before anything is measured.
if [ "${BASELINES:-}" != skip ]; then
  RQBIT=$(need_rqbit)
  export RQBIT
  for tool in aria2c:aria2 mktorrent:mktorrent opentracker:opentracker; do
    need_apt_tool "${tool%%:*}" "${tool#*:}" >/dev/null
  done
fi
cargo build --release --locked -p p2p-peer --example transfer_bench --example floor_bench >/dev/null
# The files are gigabytes on tmpfs: whatever fails, they go.
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$WORK/file.bin"
SWARM_MIB=${SWARM_MIB:-256}; LEECHERS=${SWARM_LEECHERS:-8}
if [ "$SWARM_MIB" -le "$SIZE_MIB" ]; then
  head -c $((SWARM_MIB * 1024 * 1024)) "$WORK/file.bin" > "$WORK/swarm.bin"
else
  head -c $((SWARM_MIB * 1024 * 1024)) /dev/urandom > "$WORK/swarm.bin"
fi
# A seeder trusts the hashes it computed when sharing only once the file has been unchanged for
# two seconds (timestamps are coarse; see peer/src/storage/library.rs): real shared files are
# older than that, freshly generated benchmark files are not.
sleep 2.5

echo "transfer benchmark: $SIZE_MIB MiB, one seeder to one leecher, loopback, $(nproc) cores, files in $TMPDIR, best of $ROUNDS rounds"

# This VM hands out freshly allocated memory slowly and unevenly (writing 1 GiB into new tmpfs
# pages takes 0.5-3 s from one minute to the next), and whoever runs right after another client
# reuses the pages that client just freed. So every client runs ROUNDS times, in turn, and each
# figure below is the client's best run.

ours_1to1() {
  local out
  out=$("$CARGO_TARGET_DIR/release/examples/transfer_bench" "$WORK/file.bin" "$PIPELINE") || return 1
  echo "$out" >&2
  echo "$out" | awk '{print $3}'
}

# The same transfer with the seeder and the leecher in two processes (each with its own runtime),
# as two users' machines and the rqbit baseline run them.
ours_1to1_procs() {
  local bin="$CARGO_TARGET_DIR/release/examples/transfer_bench" seed out rc=0
  rm -f "$WORK/seed.json"
  "$bin" seed "$WORK/file.bin" "$WORK/seed.json" & seed=$!
  if wait_until 60 "the two-process seeder had not written $WORK/seed.json" test -f "$WORK/seed.json"; then
    out=$("$bin" leech "$WORK/seed.json" "$PIPELINE") || rc=1
  else
    rc=1
  fi
  kill $seed 2>/dev/null || true
  wait $seed 2>/dev/null || true
  [ $rc = 0 ] || return 1
  echo "$out" >&2
  echo "$out" | awk '{print $9}'
}

rqbit_1to1() { bash bench/baselines/rqbit.sh one-to-one "$WORK/file.bin" | awk '{print $1}'; }
aria_1to1() { bash bench/baselines/aria2.sh "$WORK/file.bin" | awk '{print $1}'; }
rqbit_swarm() { bash bench/baselines/rqbit.sh swarm "$WORK/swarm.bin" "$LEECHERS"; }

# The floor (peer/examples/floor_bench.rs): a minimal program doing only the work the protocol
# requires (read, loopback TCP, AES-256-GCM both ways, SHA-256, write into a new file), and the
# bare copy without hashing and encryption. Prints "copy_wall copy_ceiling full_wall full_ceiling".
floor_1to1() {
  local out
  out=$("$CARGO_TARGET_DIR/release/examples/floor_bench" "$WORK/file.bin" 1) || return 1
  echo "$out" | tail -n +2 >&2
  echo "$out" | awk '/^copy +[0-9]/ {c=$(NF-11); cc=$(NF-1)} /aes-gcm/ {f=$(NF-11); fc=$(NF-1)} END {print c, cc, f, fc}'
}

ours_swarm() {
  local out
  out=$("$CARGO_TARGET_DIR/release/examples/transfer_bench" "$WORK/swarm.bin" 16 "$LEECHERS") || return 1
  echo "$out" >&2
  echo "$out" | awk '{print $3}'
}

# This VM returns freed memory to its host (virtio-balloon free page reporting), and the first
# touch of such a page costs the host a fault: in a swarm run that followed a client which had
# freed less memory than the swarm needs, writing the leechers' files (the kernel's
# copy_folio_from_iter_atomic) took 26 % of the run's CPU instead of 3 %, and the whole run
# 2.6-3.5 s instead of 2.2-2.5. So before every client, 3 GiB are written to tmpfs and freed:
# each client then starts on memory the guest holds, as on a real machine.
settle() {
  head -c $((3 * 1024 * 1024 * 1024)) /dev/zero > "$WORK/settle" 2>/dev/null || true
  rm -f "$WORK/settle"
  sleep "${SETTLE_S:-1}"
}
declare -A FIGURES FAILURES
# One run of a client, on settled memory; its figure joins that client's list, a failure is
# counted (and its reason is already on stderr).
run_client() {
  local figure
  settle
  if figure=$($1) && [ -n "$figure" ]; then
    FIGURES[$1]="${FIGURES[$1]:-}$figure"$'\n'
  else
    echo "FAILED: $1 in round $round"
    FAILURES[$1]=$((${FAILURES[$1]:-0} + 1))
  fi
}
# Odd rounds run the clients in this order, even rounds in reverse (so ours is first in one
# round and last in the next), and the floor runs at the edges of a round.
if [ "${BASELINES:-}" = skip ]; then
  ORDER=(floor_1to1 ours_1to1 ours_1to1_procs ours_swarm)
  BASELINE_CLIENTS=()
else
  ORDER=(floor_1to1 ours_1to1 ours_1to1_procs rqbit_1to1 aria_1to1 ours_swarm rqbit_swarm)
  BASELINE_CLIENTS=(rqbit_1to1 aria_1to1 rqbit_swarm)
  echo "rqbit: $("$RQBIT" --version 2>/dev/null | head -1); aria2: $(aria2c --version | head -1)"
fi
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  if [ $((round % 2)) = 1 ]; then
    for client in "${ORDER[@]}"; do run_client "$client"; done
  else
    for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do run_client "${ORDER[i]}"; done
  fi
done 2>&1
figures() { printf '%s' "${FIGURES[$1]:-}"; }
# Each column's best over the rounds (one per line, so failed rounds drop out).
best_max() { python3 -c 'import sys; v = [float(x) for x in sys.stdin.read().split()]; print(f"{max(v):g}" if v else "")'; }
best_min() { python3 -c 'import sys; v = [float(x) for x in sys.stdin.read().split()]; print(f"{min(v):g}" if v else "")'; }
col() { figures "$1" | awk -v i="$2" '{print $i}'; }
OURS_MBS=$(figures ours_1to1 | best_max); PROCS_MBS=$(figures ours_1to1_procs | best_max)
RQ_MBS=$(figures rqbit_1to1 | best_max); ARIA_MBS=$(figures aria_1to1 | best_max)
OURS_SWARM_S=$(figures ours_swarm | best_min); RQ_SWARM_S=$(figures rqbit_swarm | best_min)
COPY_MBS=$(col floor_1to1 1 | best_max); COPY_CEIL=$(col floor_1to1 2 | best_max)
FLOOR_MBS=$(col floor_1to1 3 | best_max); FLOOR_CEIL=$(col floor_1to1 4 | best_max)

ratio() { [ -n "$1" ] && [ -n "$2" ] && python3 -c "print(f'{$1/$2:.2f}x')" || echo "not measured"; }
echo
echo "best of $ROUNDS rounds:"
echo "p2p one-to-one: $OURS_MBS MB/s; vs rqbit: $(ratio "$OURS_MBS" "$RQ_MBS"); vs aria2: $(ratio "$OURS_MBS" "$ARIA_MBS")"
echo "p2p one-to-one, two processes: $PROCS_MBS MB/s; vs rqbit: $(ratio "$PROCS_MBS" "$RQ_MBS")"
echo "rqbit one-to-one: ${RQ_MBS:--} MB/s; aria2 one-to-one: ${ARIA_MBS:--} MB/s"
echo "p2p 1->$LEECHERS swarm: ${OURS_SWARM_S} s; rqbit ${RQ_SWARM_S:--} s; ours takes $(ratio "$OURS_SWARM_S" "$RQ_SWARM_S") rqbit's time"
if [ -n "$FLOOR_MBS" ]; then
  echo "floor, same required work in a minimal program: $FLOOR_MBS MB/s (vs rqbit: $(ratio "$FLOOR_MBS" "$RQ_MBS")), CPU ceiling on $(nproc) cores $FLOOR_CEIL MB/s ($(ratio "$FLOOR_CEIL" "$RQ_MBS")); p2p reaches $(ratio "$OURS_MBS" "$FLOOR_CEIL") of the ceiling"
  echo "swarm floor: $LEECHERS x $SWARM_MIB MiB at that ceiling takes $(python3 -c "print(f'{$LEECHERS * $SWARM_MIB * 1.048576 / $FLOOR_CEIL:.2f}')") s"
  echo "bare copy (no hashing, no encryption): $COPY_MBS MB/s (vs rqbit: $(ratio "$COPY_MBS" "$RQ_MBS")), CPU ceiling $COPY_CEIL MB/s ($(ratio "$COPY_CEIL" "$RQ_MBS"))"
fi
[ "${BASELINES:-}" != skip ] || echo "BASELINES=skip: rqbit and aria2 did not run; the ratios to them are not measured"
echo "goal: >= 800 MB/s and >= 5x rqbit one-to-one; well below rqbit's time for the swarm"

STATUS=0
for client in floor_1to1 ours_1to1 ours_1to1_procs ours_swarm; do
  if [ -n "${FAILURES[$client]:-}" ]; then
    echo "FAILED: $client failed in ${FAILURES[$client]} of $ROUNDS rounds" >&2
    STATUS=1
  fi
done
for client in "${BASELINE_CLIENTS[@]}"; do
  if [ -z "${FIGURES[$client]:-}" ]; then
    echo "FAILED: the baseline $client failed in every round, so its ratio is not measured (BASELINES=skip runs without the baselines)" >&2
    STATUS=1
  fi
done
exit $STATUS
