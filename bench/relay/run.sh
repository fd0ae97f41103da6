#!/usr/bin/env bash
# Relay benchmark: one file (SIZE_MIB, default 256) from one seeder to one leecher on loopback,
# once over direct TCP and once through the tracker's WebSocket relay, in the same run
# (peer/examples/relay_bench.rs: tracker in process, Noise end to end, every chunk verified).
# Prints MB/s for each path and the ratio; the goal is relayed >= 0.5x direct.
set -euo pipefail
cd "$(dirname "$0")/../.."
# Files on tmpfs (BENCH_TMPDIR, default /dev/shm): the figures are about the paths, not the disk.
export TMPDIR="${BENCH_TMPDIR:-/dev/shm}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/p2p-target}"
SIZE_MIB=${SIZE_MIB:-256}; PIPELINE=${PIPELINE:-32}
cargo build --release --locked -p p2p-peer --example relay_bench >/dev/null
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$WORK/file.bin"
echo "relay benchmark: $SIZE_MIB MiB, one seeder to one leecher, loopback, $(nproc) cores"
"$CARGO_TARGET_DIR/release/examples/relay_bench" "$WORK/file.bin" "$PIPELINE"
