#!/usr/bin/env bash
# Swarm benchmark: one seeder and N leechers (N = 8, 16, 32) on emulated access links in network
# namespaces (bench/swarm/lab.py: veth pairs, a bridge, tbf on each direction), all leechers
# starting together and joining over 10 s; ours (p2p-tracker, p2p-peer) and rqbit with
# opentracker in the same lab, same links, same run. Prints, per scenario, the fluid-model lower
# bound T*, our time / T*, the seeder's share of the bytes delivered, each leecher's completion
# time, peak RSS, and ours / rqbit's time.
#
# Needs root (network namespaces), iproute2 and curl; rqbit (crates.io), Debian opentracker and
# mktorrent, found or installed by bench/baselines/tools.sh. BASELINES=skip runs ours alone.
# LEECHERS (default 8,16,32), PATTERNS (together,joining), SIZE_MIB (64), SEED_UP / SEED_DOWN /
# LEECH_UP / LEECH_DOWN in Mbit/s (100/100/20/100), JOIN_SECS (10). Other arguments go to
# lab.py, e.g. `--congestion cubic` (the default of users' systems; the host's otherwise),
# `--rtt-ms 40` (a round trip between peers, made by peer/examples/delay_line.rs),
# `--loss-pct 1` (packets lost at random between two peers, by the same delay line; needs
# ethtool) or `--timeline`. Exits non-zero if any run fails (a leecher times out, a copy differs, a
# process dies).
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/baselines/tools.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/p2p-target}"
export TMPDIR="${BENCH_TMPDIR:-/dev/shm}"

[ "$(id -u)" = 0 ] || bench_fail "bench/swarm needs root for its network namespaces (run it with sudo)"
ARGS=()
CLIENTS=ours
if [ "${BASELINES:-}" != skip ]; then
  ARGS+=(--rqbit "$(need_rqbit)" --opentracker "$(need_apt_tool opentracker opentracker)"
    --mktorrent "$(need_apt_tool mktorrent mktorrent)")
  CLIENTS=ours,rqbit
else
  echo "swarm: BASELINES=skip: rqbit does not run, ours / rqbit is not measured"
fi
need_apt_tool curl curl >/dev/null
cargo build --release --locked -p p2p-peer -p p2p-tracker --bin p2p-peer --bin p2p-tracker \
  --example delay_line >/dev/null

exec python3 bench/swarm/lab.py --bin-dir "$CARGO_TARGET_DIR/release" --clients "$CLIENTS" "${ARGS[@]}" \
  --leechers "${LEECHERS:-8,16,32}" --patterns "${PATTERNS:-together,joining}" \
  --size-mib "${SIZE_MIB:-64}" --join-secs "${JOIN_SECS:-10}" \
  --seed-up "${SEED_UP:-100}" --seed-down "${SEED_DOWN:-100}" \
  --leech-up "${LEECH_UP:-20}" --leech-down "${LEECH_DOWN:-100}" "$@"
