#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, and every test of the workspace.
#
# Optional parts find what they need themselves and print a SKIPPED line when it is missing:
#   PostgreSQL  P2P_TEST_POSTGRES_URL, or a server answering on 127.0.0.1:5432 (database "test").
#   Browser     the dashboard (built here by scripts/build-web.sh), Chromium (/usr/bin/chromium
#               or CHROMIUM), and playwright-core (installed here into web/e2e with npm).
#   Deployment  scripts/check-deploy.sh: Nix and Kubernetes checks (nix-bin, nixpkgs-fmt, deadnix,
#               kubectl, kubernetes-validate, yamllint); the NixOS module tests need NIXPKGS_LIB,
#               a copy of nixpkgs' lib (.ci/run points it at ../shared/nixpkgs-lib).
#   NAT lab     peer/tests/nat.rs: root, iproute2, iptables, procps (sysctl) and curl.
#   Swarm lab   peer/tests/swarm_lab.rs: root, iproute2, ethtool, curl and python3.
# With P2P_REQUIRE_ALL=1 (as in CI) a skip is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/p2p-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if [ -z "${P2P_TEST_POSTGRES_URL:-}" ] && command -v psql >/dev/null 2>&1; then
  candidate="postgres://postgres@127.0.0.1:5432/test"
  if timeout 5 psql "$candidate" -qAtc 'SELECT 1' >/dev/null 2>&1; then
    export P2P_TEST_POSTGRES_URL="$candidate"
    echo "test.sh: using PostgreSQL at $candidate"
  fi
fi
[ -n "${P2P_TEST_POSTGRES_URL:-}" ] || echo "test.sh: no PostgreSQL found; its tests will print SKIPPED"

echo "== dashboard assets"
if ! ./scripts/build-web.sh; then
  echo "SKIPPED: dashboard build (scripts/build-web.sh failed); the browser test will skip too"
  [ "${P2P_REQUIRE_ALL:-}" != 1 ] || exit 1
fi
if [ ! -d web/e2e/node_modules/playwright-core ] && command -v npm >/dev/null 2>&1; then
  npm ci --prefix web/e2e --silent --no-audit --no-fund ||
    echo "test.sh: npm ci in web/e2e failed; the browser test will print SKIPPED"
fi

echo "== deployment files (Nix, Kubernetes)"
./scripts/check-deploy.sh

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== fuzz targets build"
cargo check --quiet --locked --manifest-path fuzz/Cargo.toml
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  # Show the output of passing tests too, so SKIPPED lines are visible.
  cargo nextest run --workspace --locked --no-fail-fast --success-output immediate \
    --status-level fail --final-status-level slow
else
  cargo test --workspace --locked --no-fail-fast -- --nocapture
fi
