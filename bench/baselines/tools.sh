# shellcheck shell=bash
# Sourced by the benchmark scripts: finds, or installs, the outside programs they run, and the
# helpers the baselines share. Each `need_*` function prints the program's path on stdout, or
# says on stderr what is missing and how to get it, and fails.
#
# Where each comes from (bench/README.md, "Baselines"):
# - Rust programs (rqbit, oha): crates.io, at the version pinned below, with
#   `cargo install --locked CRATE --version V --root $P2P_TOOLS_DIR` (default ~/.cache/p2p-tools,
#   the cache scripts/build-web.sh and .ci/run use too). RQBIT=path or OHA=path uses another build.
# - Debian programs (aria2c, mktorrent, opentracker): `apt-get install PACKAGE`, as root or through
#   passwordless sudo. On another system install them yourself; the error says which package.
# BENCH_INSTALL=0 never installs anything: a missing program is then an error.

TOOLS_DIR=${P2P_TOOLS_DIR:-$HOME/.cache/p2p-tools}
RQBIT_VERSION=${RQBIT_VERSION:-9.1.0}
OHA_VERSION=${OHA_VERSION:-1.16.0}

bench_fail() {
  echo "bench: $*" >&2
  exit 1
}

# need_cargo_tool BIN CRATE VERSION OVERRIDE: OVERRIDE if not empty, else BIN on PATH, else
# TOOLS_DIR/bin/BIN, installed there from crates.io if absent or not at VERSION.
need_cargo_tool() {
  local bin=$1 crate=$2 version=$3 override=$4
  if [ -n "$override" ]; then
    [ -x "$override" ] || bench_fail "$override (given for $bin) is not an executable file"
    echo "$override"
    return
  fi
  if command -v "$bin" >/dev/null 2>&1; then
    command -v "$bin"
    return
  fi
  if ! "$TOOLS_DIR/bin/$bin" --version 2>/dev/null | grep -q " $version\$"; then
    [ "${BENCH_INSTALL:-1}" != 0 ] ||
      bench_fail "$bin $version not found (cargo install --locked $crate --version $version --root $TOOLS_DIR; BENCH_INSTALL=0 forbids installing it here)"
    echo "bench: installing $crate $version from crates.io into $TOOLS_DIR (several minutes, once)" >&2
    # Its own build directory, not the project's target dir.
    env -u CARGO_TARGET_DIR cargo install -q --locked "$crate" --version "$version" --root "$TOOLS_DIR" >&2 ||
      bench_fail "cargo install --locked $crate --version $version failed"
  fi
  echo "$TOOLS_DIR/bin/$bin"
}

need_rqbit() { need_cargo_tool rqbit rqbit "$RQBIT_VERSION" "${RQBIT:-}"; }
need_oha() { need_cargo_tool oha oha "$OHA_VERSION" "${OHA:-}"; }

# need_apt_tool BIN PACKAGE: BIN on PATH, else installed with apt-get.
need_apt_tool() {
  local bin=$1 pkg=$2 sudo=""
  if command -v "$bin" >/dev/null 2>&1; then
    command -v "$bin"
    return
  fi
  [ "${BENCH_INSTALL:-1}" != 0 ] ||
    bench_fail "$bin not found (Debian: apt-get install $pkg; BENCH_INSTALL=0 forbids installing it here)"
  command -v apt-get >/dev/null 2>&1 ||
    bench_fail "$bin not found and this system has no apt-get: install the package that provides $bin (Debian: $pkg)"
  if [ "$(id -u)" != 0 ]; then
    sudo -n true 2>/dev/null || bench_fail "$bin not found: run 'sudo apt-get install $pkg' (no passwordless sudo here)"
    sudo="sudo -n"
  fi
  echo "bench: installing $pkg (Debian apt)" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null 2>&1 || {
    $sudo apt-get update -qq >/dev/null 2>&1
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
  } || bench_fail "apt-get install $pkg failed"
  command -v "$bin" || bench_fail "apt-get install $pkg did not provide $bin"
}

# free_ports N: N distinct TCP ports on 127.0.0.1 that were free a moment ago, one a line (for
# programs that cannot report the port they bound).
free_ports() {
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 0.1 s until it succeeds; after SECONDS
# it says "WHAT within SECONDS s" and fails.
wait_until() {
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench: $what within $secs s" >&2
  return 1
}

# oha_measure ARGS...: oha for DURATION (10s) with CONNS (64) connections; prints
# "requests_per_s p99_ms success_percent". Fails if any response is not 2xx: a load test that
# measured errors measured nothing.
oha_measure() {
  "$OHA" -z "${DURATION:-10s}" -c "${CONNS:-64}" --no-tui --output-format json "$@" |
    python3 -c 'import json, sys
d = json.load(sys.stdin); s = d["summary"]; p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution") or {}
bad = {c: n for c, n in codes.items() if not c.startswith("2")}
if bad or not codes:
    sys.exit("bench: oha got responses other than 2xx: %s" % (bad or "no responses at all"))
print("%.0f %.2f %.1f" % (s["requestsPerSec"], p["p99"] * 1000, s["successRate"] * 100))'
}

# elapsed START END: END - START in seconds (from `date +%s.%N`), three decimals.
elapsed() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.3f}")' "$1" "$2"; }

# mb_per_s BYTES SECONDS: decimal megabytes per second, rounded.
mb_per_s() { python3 -c 'import sys; print(round(int(sys.argv[1]) / 1e6 / float(sys.argv[2])))' "$1" "$2"; }
