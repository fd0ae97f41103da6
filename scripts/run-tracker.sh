#!/usr/bin/env bash
# Builds the dashboard and runs the tracker with it embedded (embedded SQLite in ./tracker-data,
# listening on :8080 unless P2P_ADDR / --addr say otherwise). Extra arguments go to p2p-tracker.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/p2p-target}"
./scripts/build-web.sh
exec cargo run --release --locked --bin p2p-tracker -- "$@"
