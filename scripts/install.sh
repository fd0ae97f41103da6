#!/usr/bin/env bash
# Builds the dashboard and installs the binaries p2p-tracker, p2p-peer and p2p-download into
# $PREFIX/bin (default ~/.cargo/bin, which rustup puts on the PATH), sharing the build cache with
# the other scripts ($CARGO_TARGET_DIR, default ~/.cache/p2p-target).
#   ./scripts/install.sh                 # into ~/.cargo/bin
#   PREFIX=/usr/local ./scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/p2p-target}"
PREFIX="${PREFIX:-${CARGO_HOME:-$HOME/.cargo}}"
./scripts/build-web.sh
cargo install --locked --quiet --path backend --root "$PREFIX"
cargo install --locked --quiet --path peer --root "$PREFIX"
for bin in p2p-tracker p2p-peer p2p-download; do
  echo "install: $PREFIX/bin/$bin"
done
case ":$PATH:" in
  *":$PREFIX/bin:"*) ;;
  *) echo "install: $PREFIX/bin is not on your PATH; add it, e.g. export PATH=\"$PREFIX/bin:\$PATH\"" ;;
esac
