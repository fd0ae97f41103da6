#!/usr/bin/env bash
# SHA-256 speed per core: one stream against 2-4 interleaved lanes (p2p_proto::sha256_lanes),
# over 256 KiB chunks. Downloads check the chunks that arrive together this way.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/p2p-target}"
cargo build -q --release --locked -p p2p-proto --example sha256_lanes_bench
grep -m1 "model name" /proc/cpuinfo || true
echo "SHA extensions: $(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no)"
"$CARGO_TARGET_DIR/release/examples/sha256_lanes_bench"
