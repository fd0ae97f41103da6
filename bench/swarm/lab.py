#!/usr/bin/env python3
"""Swarm lab: one seeder and N leechers on emulated access links, in network namespaces.

Every peer gets its own namespace joined to a switch (a bridge in a hub namespace, where the
tracker runs) by a veth pair. `tbf` shapes each direction: a peer's upload on its own end of the
pair, its download on the hub's end. The kernel here has no `netem` (nor `fq` or `etf`, which
would honour departure times an eBPF program set), so by default links add no latency and no
loss: what is emulated is bandwidth and the queue in front of it (bench/README.md).

`--rtt-ms R` adds a round trip of R ms between two peers (R/2 to the tracker): a delay line in
user space (peer/examples/delay_line.rs, built as an example) joins each peer's port to the
switch and holds every frame R/4 each way; the lab prints the measured round trip to the
tracker. `--loss-pct P` has the same delay line drop packets at random, P % between two peers
each way, with segmentation offload off so that each frame is one packet (needs ethtool); the
lab prints what the lines counted.

For each scenario (N leechers, all starting together or joining over JOIN seconds) it runs our
peers (`p2p-tracker`, one `p2p-peer --daemon` seeder, N `p2p-peer` shells each told to
`download` the file and kept running afterwards so they keep uploading) and, with
`--clients ours,rqbit`, rqbit with opentracker on the same links, and prints:

- the fluid-model lower bound T* = max(F/U_seed, F/D_min, N*F/(U_seed + sum U_leech)) (for the
  joining pattern also the last join + F/D_min), our time and time / T*; for the joining pattern
  also the bound when a leecher uploads only after it joined (U_seed*T + sum U_leech*(T -
  join_i) >= N*F), which T* ignores;
- the share of the N*F bytes delivered that the seeder uploaded (its interface's byte counter),
  and what the leechers' interfaces received, as a multiple of N*F (Ethernet/IP/TCP headers,
  the ACKs of their own uploads, retransmissions and chunks received twice: 1.08-1.12 with
  ours);
- each leecher's completion time and peak RSS (VmHWM), the seeder's peak RSS;
- how much of their upload capacity the leechers and the seeder used, and how idle the machine's
  cores were (under 5 %, the cores rather than the links may bound the run); `--timeline`
  prints these second by second, with what each leecher had received by then;
- rqbit's time in the same lab and ours / rqbit's.

Every copy is compared with the original. Exit status: 0 when every run completed and verified,
1 when one failed, 77 when the lab cannot run here (not root, or `ip`/`tc` missing).
Only namespaces this script creates are touched (names start with p2psw<pid>), and they are
removed on exit. The kernel's neighbour (ARP/NDP) table limits are shared by all namespaces;
the lab raises them to fit (N+2)^2 entries while it runs and puts them back afterwards (see
`neighbour_room`). `--congestion` picks the peers' TCP congestion control (default: the host's);
one the host has but does not allow in namespaces is allowed for the run and the list put back
afterwards (`allow_congestion`). Nothing talks to the outside world: addresses are in
10.77.0.0/16, inside the lab.
"""

import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77
KEY = "swarm-lab-key"
TRACKER_IP = "10.77.0.1"
TRACKER_PORT = 8080
OT_PORT = 6969
PEER_PORT = 7000
RQ_API_PORT = 3030


def die(msg, code=1):
    print(f"swarm lab: {msg}", file=sys.stderr)
    sys.exit(code)


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def preflight(args):
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "tc", "curl"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (Debian: iproute2, curl)"
    if args.loss_pct and shutil.which("ethtool") is None:
        return "--loss-pct needs `ethtool` (Debian: ethtool) to turn segmentation offload off"
    probe = f"p2pswprobe{os.getpid()}"
    try:
        sh("ip", "netns", "add", probe)
        sh("ip", "-n", probe, "link", "add", "name", "a", "type", "veth", "peer", "name", "b")
        sh("ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "a", "root", "tbf",
           "rate", "10mbit", "burst", "64kb", "latency", "50ms")
    except subprocess.CalledProcessError as e:
        return f"cannot build a namespace with a tbf qdisc: {e.stderr.strip()}"
    finally:
        sh("ip", "netns", "del", probe, check=False)
    return None


# The kernel's ARP and NDP tables are shared by every network namespace (only the first
# namespace may set their limits), and the lab needs about (N+2)^2 entries: every peer's
# namespace learns every other peer, the hub learns them all. Past gc_thresh3 (1024 by
# default, reached at N = 32) the kernel logs "neighbor table overflow" and a namespace that
# starts talking late cannot resolve anyone: the last leechers to join had no network for
# ~40 s, until old entries were collected, and reached the tracker and the others late or
# only through the relay. The limits are raised for the run and put back afterwards.
NEIGH_LIMITS = [f"/proc/sys/net/{v}/neigh/default/gc_thresh{i}" for v in ("ipv4", "ipv6") for i in (1, 2, 3)]


def neighbour_room(n):
    """Raises the neighbour tables' limits to fit N leechers; returns what to restore."""
    need = 4 * (n + 2) ** 2
    saved = {}
    for path in NEIGH_LIMITS:
        try:
            with open(path) as f:
                cur = int(f.read())
        except (OSError, ValueError):
            continue
        want = {"1": need // 4, "2": need, "3": 2 * need}[path[-1]]
        if cur < want:
            try:
                with open(path, "w") as f:
                    f.write(str(want))
                saved[path] = cur
            except OSError as e:
                print(f"swarm lab: cannot raise {path} to {want} ({e}); with more than about 30 leechers "
                      "the neighbour table overflows and late peers lose their network", file=sys.stderr)
    return saved


ALLOWED_CC = "/proc/sys/net/ipv4/tcp_allowed_congestion_control"


def allow_congestion(cc):
    """Lets every namespace pick the congestion control `cc` for the run (a namespace other than
    the host's may only pick what net.ipv4.tcp_allowed_congestion_control lists, and hosts list
    few: this one allowed reno and bbr, not cubic, the default of Linux, Windows and macOS);
    returns what to restore."""
    if not cc:
        return {}
    try:
        with open(ALLOWED_CC) as f:
            allowed = f.read().split()
    except OSError:
        return {}
    if cc in allowed:
        return {}
    try:
        with open(ALLOWED_CC, "w") as f:
            f.write(" ".join(allowed + [cc]))
    except OSError as e:
        die(f"cannot allow the congestion control {cc} in namespaces ({e}); the host has "
            f"{sh('sysctl', '-n', 'net.ipv4.tcp_available_congestion_control').stdout.strip()}")
    return {ALLOWED_CC: " ".join(allowed)}


def restore(saved):
    for path, value in saved.items():
        try:
            with open(path, "w") as f:
                f.write(str(value))
        except OSError:
            pass


class Lab:
    """Namespaces, links and processes of one scenario; `close` removes them all."""

    def __init__(self, work, args, n):
        self.work = work
        self.args = args
        self.n = n
        self.prefix = f"p2psw{os.getpid()}"
        self.hub = f"{self.prefix}h"
        self.namespaces = []
        self.procs = []
        self.links = {}  # ns -> (ip, up_mbit, down_mbit)

    def ns_name(self, role):
        return f"{self.prefix}{role}"

    def build(self):
        self.add_ns(self.hub)
        sh("ip", "-n", self.hub, "link", "add", "name", "br0", "type", "bridge")
        if self.args.loss_pct:
            no_offload(self.hub, "br0")
        sh("ip", "-n", self.hub, "addr", "add", f"{TRACKER_IP}/16", "dev", "br0")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        sh("ip", "-n", self.hub, "link", "set", "lo", "up")
        self.link("s", "10.77.1.1", self.args.seed_up, self.args.seed_down)
        for i in range(1, self.n + 1):
            self.link(f"l{i}", f"10.77.2.{i}", self.args.leech_up, self.args.leech_down)
        if uses_delay_line(self.args):
            # One delay line joins every peer's port to its switch port, each way: a round trip
            # between two peers crosses four of them, a packet from one peer to another two (so
            # each drops a packet with the probability that makes the loss between two peers
            # --loss-pct; between a peer and the tracker it is about half that).
            pairs = [f"p{role}:q{role}" for role in ["s", *(f"l{i}" for i in range(1, self.n + 1))]]
            loss = 1 - math.sqrt(1 - self.args.loss_pct / 100)
            d = self.spawn("delay_line", self.hub, [self.args.delay_line, "--loss", f"{loss:.9f}",
                                                    str(round(self.args.rtt_ms * 250)), *pairs])
            d.must_live = True
            wait_until("the delay line is ready", 30, lambda: "ready" in self.log("delay_line", "out"), self)

    def add_ns(self, ns):
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)

    def link(self, role, ip, up, down):
        ns = self.ns_name(role)
        self.add_ns(ns)
        port = f"p{role}"
        sh("ip", "-n", self.hub, "link", "add", "name", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        if uses_delay_line(self.args):
            # The peer's port and a second pair's end (q) are joined by the delay line; the
            # pair's other end (r) is on the switch. Neither joined end has an address or
            # answers ARP, so frames cross only through the delay line.
            q, r = f"q{role}", f"r{role}"
            sh("ip", "-n", self.hub, "link", "add", "name", q, "type", "veth", "peer", "name", r)
            sh("ip", "-n", self.hub, "link", "set", r, "master", "br0", "up")
            for dev in (port, q):
                sh("ip", "netns", "exec", self.hub, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1")
                sh("ip", "-n", self.hub, "link", "set", dev, "arp", "off", "up")
        else:
            sh("ip", "-n", self.hub, "link", "set", port, "master", "br0", "up")
        if self.args.loss_pct:
            no_offload(ns, "eth0")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/16", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        if self.args.congestion:
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.tcp_congestion_control={self.args.congestion}")
        if self.args.slow_start_after_idle is not None:
            sh("ip", "netns", "exec", ns, "sysctl", "-qw",
               f"net.ipv4.tcp_slow_start_after_idle={self.args.slow_start_after_idle}")
        # Upload: what leaves the peer's end. Download: what the switch sends it.
        shape(ns, "eth0", up)
        shape(self.hub, port, down)
        self.links[ns] = (ip, up, down)

    def spawn(self, name, ns, argv, stdin=None, env=None):
        out = open(os.path.join(self.work, f"{name}.out"), "w")
        err = open(os.path.join(self.work, f"{name}.err"), "w")
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=stdin, stdout=out, stderr=err,
                             env=env, start_new_session=True)
        p.lab_name = name
        self.procs.append(p)
        return p

    def tx_bytes(self, ns):
        return int(sh("ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/statistics/tx_bytes").stdout)

    def rx_bytes(self, ns):
        return int(sh("ip", "netns", "exec", ns, "cat", "/sys/class/net/eth0/statistics/rx_bytes").stdout)

    def curl(self, url, ns=None, headers=()):
        cmd = ["ip", "netns", "exec", ns or self.hub, "curl", "-sf", "-m", "2"]
        for h in headers:
            cmd += ["-H", h]
        r = subprocess.run(cmd + [url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return r.stdout if r.returncode == 0 else None

    def log(self, name, kind):
        """What process `name` has written to its stdout ("out") or stderr ("err") so far."""
        try:
            with open(os.path.join(self.work, f"{name}.{kind}")) as f:
                return f.read()
        except OSError:
            return ""

    def line_counts(self):
        """What the delay line has counted until now (see delay_line.rs), or None without one."""
        if not uses_delay_line(self.args):
            return None
        time.sleep(1.2)  # it reports at most once a second
        counts = None
        for l in self.log("delay_line", "out").splitlines(keepends=True):
            if l.startswith("delay_line: frames=") and l.endswith("\n"):
                try:
                    counts = {k: int(v) for k, v in (kv.split("=") for kv in l.split(": ", 1)[1].split())}
                except ValueError:
                    pass
        return counts

    def log_tail(self, name, lines=8):
        return "".join(self.log(name, "err").splitlines(keepends=True)[-lines:])

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for ns in self.namespaces:
            # Anything still running in it (children that left the process group) goes too.
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)


def uses_delay_line(args):
    return bool(args.rtt_ms or args.loss_pct)


def no_offload(ns, dev):
    """Frames leave `dev` one packet each, so that the delay line's loss drops packets, not TSO
    bursts of up to 45 of them."""
    sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off")


def shape(ns, dev, mbit):
    # burst: at least a few full-size packets at this rate per timer tick; limit: ~50 ms of queue,
    # a home router's buffer rather than an unbounded one.
    sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{mbit}mbit",
       "burst", "64kb", "latency", "50ms")


def wait_until(what, timeout, probe, lab, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        for p in lab.procs:
            if getattr(p, "must_live", False) and p.poll() is not None:
                raise LabError(f"{p.lab_name} exited ({p.returncode}) while waiting: {what}\n{lab.log_tail(p.lab_name)}")
        time.sleep(interval)
    raise LabError(f"timed out after {timeout} s: {what}")


class LabError(Exception):
    pass


# Runs in the hub namespace: every SAMPLE_EVERY seconds, one line of each port's byte counters
# (`rx` on the hub's end of a peer's pair is what the peer uploaded, `tx` what it downloaded).
SAMPLER = r"""
import os, sys, time
every = float(sys.argv[1])
ports = sorted(p for p in os.listdir("/sys/class/net") if p.startswith("p"))
out = sys.stdout
# A hub port receives what its peer uploads (rx) and sends what its peer downloads (tx); the
# machine's CPU time (all cores, in clock ticks) shows whether the cores or the links bound a run.
out.write("t " + " ".join(ports) + " " + " ".join("tx:" + p for p in ports) + " cpu_idle cpu_all\n")
t0 = time.monotonic()
while True:
    row = []
    for kind in ("rx_bytes", "tx_bytes"):
        for p in ports:
            with open(f"/sys/class/net/{p}/statistics/{kind}") as f:
                row.append(f.read().strip())
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    row += [str(ticks[3] + ticks[4]), str(sum(ticks))]
    out.write(f"{time.monotonic() - t0:.3f} " + " ".join(row) + "\n")
    out.flush()
    time.sleep(every)
"""
SAMPLE_EVERY = 0.25
# Below this share of idle core time the machine, not the links, may bound a run: the kernel's
# packet work (veths, bridge, shapers) grows with N, and BBR paces inside TCP without `fq`.
CPU_BOUND = 0.05
BOUND_BY_CPU = " (the cores, not the links, bound this run)"


class Uploads:
    """What each peer uploaded and downloaded over time, from the samples of the hub's ports, and
    how busy the machine's cores were."""

    def __init__(self, lab):
        self.lab = lab
        self.path = os.path.join(lab.work, "uploads.out")
        self.proc = lab.spawn("uploads", lab.hub, [sys.executable, "-c", SAMPLER, str(SAMPLE_EVERY)])
        self.t0 = time.monotonic()

    def read(self):
        """(times since the sampler started, {column: [values]}): a port's name for what its peer
        uploaded, "tx:" and the name for what it downloaded, cpu_idle and cpu_all in ticks"""
        with open(self.path) as f:
            lines = f.read().splitlines()
        ports = lines[0].split()[1:]
        rows = [l.split() for l in lines[1:] if len(l.split()) == len(ports) + 1]
        times = [float(r[0]) for r in rows]
        return times, {p: [int(r[i + 1]) for r in rows] for i, p in enumerate(ports)}

    def usage(self, start, end, n, leech_up_mbit, seed_up_mbit, size):
        """Share of the leechers' and of the seeder's upload capacity used between `start` and
        `end` (monotonic times), the share of the cores' time left idle, and for each second the
        per-peer upload rates in Mbit/s, what each leecher had received (as a share of the file
        `size`, headers included) and the cores' idle share."""
        times, ports = self.read()
        a, b = start - self.t0, end - self.t0
        idx = [i for i, t in enumerate(times) if a - SAMPLE_EVERY <= t <= b + SAMPLE_EVERY]
        if len(idx) < 2:
            return None
        i0, i1 = idx[0], idx[-1]
        span = times[i1] - times[i0]
        sent = {p: v[i1] - v[i0] for p, v in ports.items()}
        cpu_idle, cpu_all = ports["cpu_idle"], ports["cpu_all"]
        leech = sum(sent.get(f"pl{i}", 0) for i in range(1, n + 1))
        per_sec = []
        step = max(1, round(1 / SAMPLE_EVERY))
        for j in range(i0, i1, step):
            k = min(j + step, i1)
            dt = times[k] - times[j]
            rates = {p: (v[k] - v[j]) * 8 / dt / 1e6 for p, v in ports.items()}
            got = {i: (ports[f"tx:pl{i}"][k] - ports[f"tx:pl{i}"][i0]) / size for i in range(1, n + 1)}
            idle = (cpu_idle[k] - cpu_idle[j]) / max(1, cpu_all[k] - cpu_all[j])
            per_sec.append((times[j] - a, rates, got, idle))
        return {
            "leech_use": leech * 8 / (n * leech_up_mbit * 1e6 * span),
            "seed_use": sent.get("ps", 0) * 8 / (seed_up_mbit * 1e6 * span),
            "cpu_idle": (cpu_idle[i1] - cpu_idle[i0]) / max(1, cpu_all[i1] - cpu_all[i0]),
            "per_sec": per_sec,
        }


CONNECT_TIMER = r"""
import socket, sys, time
best = None
for _ in range(5):
    t = time.monotonic()
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    took = time.monotonic() - t
    best = took if best is None else min(best, took)
print(best * 1000)
"""


def connect_ms(ns, ip, port):
    """The least of five TCP connects from namespace `ns` to ip:port, in ms: one round trip
    (half a round trip between two peers: two crossings of delay lines instead of four)."""
    out = sh("ip", "netns", "exec", ns, sys.executable, "-c", CONNECT_TIMER, ip, str(port))
    return float(out.stdout)


def received(lab, n):
    """Bytes the leechers' interfaces have received (headers, duplicates and all)."""
    return sum(lab.rx_bytes(lab.ns_name(f"l{i}")) for i in range(1, n + 1))


def peak_rss_mib(pid):
    """VmHWM of a process (`ip netns exec` execs its command, so the pid is the program's)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def fluid_bound(args, n, size, joins):
    mbps = 1e6 / 8
    u_seed = args.seed_up * mbps
    d_min = args.leech_down * mbps
    total_up = u_seed + n * args.leech_up * mbps
    t = max(size / u_seed, size / d_min, n * size / total_up)
    return max(t, max(joins) + size / d_min)


def arrival_bound(args, n, size, joins):
    """The fluid bound when leechers upload only once they have joined: the least T with
    U_seed*T + sum U_leech*max(0, T - join_i) >= N*F (and at least `fluid_bound`). T* assumes
    every leecher uploads from the start, which the joining pattern does not allow."""
    mbps = 1e6 / 8
    u_seed, u_leech = args.seed_up * mbps, args.leech_up * mbps

    def capacity(t):
        return u_seed * t + sum(u_leech * max(0.0, t - j) for j in joins)

    lo, hi = 0.0, n * size / u_seed + max(joins) + 1
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if capacity(mid) >= n * size else (mid, hi)
    return max(hi, fluid_bound(args, n, size, joins))


def run_ours(lab, args, n, pattern, original, size, name, file_id):
    bins = args.bin_dir
    tracker_data = os.path.join(lab.work, "tracker")
    os.makedirs(tracker_data)
    t = lab.spawn("tracker", lab.hub, [os.path.join(bins, "p2p-tracker"), "--addr", f"{TRACKER_IP}:{TRACKER_PORT}",
                                       "--api-keys", KEY, "--rate-limit-rps", "0", "--data-dir", tracker_data])
    t.must_live = True
    api = f"http://{TRACKER_IP}:{TRACKER_PORT}"
    wait_until("the tracker answers /health", 60, lambda: lab.curl(f"{api}/health"), lab)
    tracker_rtt = connect_ms(lab.ns_name("s"), TRACKER_IP, TRACKER_PORT)

    def peer_args(data):
        return ["--tracker", api, "--api-key", KEY, "--port", str(PEER_PORT), "--dht", "off", "--data", data,
                *args.peer_arg]

    seed_dir = os.path.join(lab.work, "seed")
    os.makedirs(seed_dir)
    os.link(original, os.path.join(seed_dir, name))  # a hard link: no second copy in memory
    # The seeder trusts a file's hashes once it has been unchanged for two seconds.
    past = time.time() - 60
    os.utime(os.path.join(seed_dir, name), (past, past))
    seed_ns = lab.ns_name("s")
    s = lab.spawn("seeder", seed_ns, [os.path.join(bins, "p2p-peer"), *peer_args(seed_dir), "--daemon"])
    s.must_live = True

    def seeder_listed():
        body = lab.curl(f"{api}/api/files/{file_id}/peers", headers=[f"X-API-Key: {KEY}"])
        return body and json.loads(body).get("peers")

    wait_until("the tracker lists the seeder", 120, seeder_listed, lab)
    seed_tx0 = lab.tx_bytes(seed_ns)
    rx0 = received(lab, n)
    uploads = Uploads(lab)

    joins = join_times(args, n, pattern)
    leechers = []
    start = time.monotonic()
    for i in range(1, n + 1):
        delay = start + joins[i - 1] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        data = os.path.join(lab.work, f"l{i}")
        os.makedirs(data)
        p = lab.spawn(f"leecher{i}", lab.ns_name(f"l{i}"), [os.path.join(bins, "p2p-peer"), *peer_args(data)],
                      stdin=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
        p.must_live = True
        p.stdin.write(f"download {file_id}\n".encode())
        p.stdin.flush()
        leechers.append({"i": i, "proc": p, "path": os.path.join(data, name), "joined": time.monotonic() - start})

    pending = {l["i"] for l in leechers}

    def all_done():
        now = time.monotonic() - start
        for l in leechers:
            if l["i"] in pending and os.path.exists(l["path"]):
                l["done"] = now
                pending.discard(l["i"])
        return not pending

    wait_until(f"all {n} leechers complete", args.timeout, all_done, lab, interval=0.05)
    took = max(l["done"] for l in leechers)
    seed_up = lab.tx_bytes(seed_ns) - seed_tx0
    rx = received(lab, n) - rx0
    usage = uploads.usage(start, start + took, n, args.leech_up, args.seed_up, size)
    for l in leechers:
        verify(l["path"], original, f"our leecher {l['i']}")
        l["rss"] = peak_rss_mib(l["proc"].pid)
    return {
        "time": took,
        "usage": usage,
        "joins": joins,
        "seed_share": seed_up / (n * size),
        "received": rx / (n * size),
        "leechers": [(l["i"], l["joined"], l["done"], l["rss"]) for l in leechers],
        "seed_rss": peak_rss_mib(s.pid),
        "tracker_rtt_ms": tracker_rtt,
    }


def run_rqbit(lab, args, n, pattern, original, size, name):
    seed_dir = os.path.join(lab.work, "rq-seed")
    os.makedirs(seed_dir)
    os.link(original, os.path.join(seed_dir, name))  # a hard link: no second copy in memory
    torrent = os.path.join(lab.work, "f.torrent")
    sh(args.mktorrent, "-p", "-l", "18", "-a", f"http://{TRACKER_IP}:{OT_PORT}/announce", "-o", torrent,
       os.path.join(seed_dir, name))
    info_hash = torrent_info_hash(torrent)
    ot_dir = os.path.join(lab.work, "ot")
    os.makedirs(ot_dir)
    os.chmod(ot_dir, 0o755)
    with open(os.path.join(ot_dir, "whitelist"), "w") as f:
        f.write(info_hash + "\n")
    os.chmod(os.path.join(ot_dir, "whitelist"), 0o644)
    # Debian's opentracker serves only whitelisted info-hashes; -w is relative to -d, its chroot.
    ot = lab.spawn("opentracker", lab.hub, [args.opentracker, "-i", TRACKER_IP, "-p", str(OT_PORT), "-P",
                                            str(OT_PORT), "-d", ot_dir, "-w", "whitelist"])
    ot.must_live = True
    wait_until("opentracker answers", 30,
               lambda: lab.curl(f"http://{TRACKER_IP}:{OT_PORT}/stats") is not None or ot.poll() is None, lab)

    common = ["--disable-dht", "--disable-dht-persistence", "--disable-upnp-port-forward", "--disable-lsd",
              "--ipv4-only", "-v", "warn", "--listen-port", str(PEER_PORT)]
    seed_ns = lab.ns_name("s")
    seed_ip = lab.links[seed_ns][0]
    env = {**os.environ, "HOME": seed_dir}
    s = lab.spawn("rq-seeder", seed_ns, [args.rqbit, *common, "--http-api-listen-addr", f"{seed_ip}:{RQ_API_PORT}",
                                         "download", "-o", seed_dir, "--overwrite", torrent], env=env)
    s.must_live = True

    def stats(ip, ns):
        body = lab.curl(f"http://{ip}:{RQ_API_PORT}/torrents/0/stats/v1", ns=ns)
        return json.loads(body) if body else None

    wait_until("the rqbit seeder is live", 120,
               lambda: (stats(seed_ip, seed_ns) or {}).get("state") == "live", lab)
    seed_tx0 = lab.tx_bytes(seed_ns)
    rx0 = received(lab, n)
    uploads = Uploads(lab)
    joins = join_times(args, n, pattern)
    leechers = []
    start = time.monotonic()
    for i in range(1, n + 1):
        delay = start + joins[i - 1] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        ns = lab.ns_name(f"l{i}")
        ip = lab.links[ns][0]
        data = os.path.join(lab.work, f"rq-l{i}")
        os.makedirs(data)
        p = lab.spawn(f"rq-leecher{i}", ns, [args.rqbit, *common, "--http-api-listen-addr", f"{ip}:{RQ_API_PORT}",
                                             "download", "-o", data, torrent], env={**os.environ, "HOME": data})
        p.must_live = True
        leechers.append({"i": i, "proc": p, "ns": ns, "ip": ip, "path": os.path.join(data, name),
                         "joined": time.monotonic() - start})
    pending = {l["i"] for l in leechers}

    def all_done():
        now = time.monotonic() - start
        for l in leechers:
            if l["i"] in pending:
                st = stats(l["ip"], l["ns"])
                if st and st.get("finished"):
                    l["done"] = now
                    l["uploaded"] = st.get("uploaded_bytes", 0)
                    pending.discard(l["i"])
        return not pending

    wait_until(f"all {n} rqbit leechers complete", args.timeout, all_done, lab, interval=0.2)
    took = max(l["done"] for l in leechers)
    seed_up = lab.tx_bytes(seed_ns) - seed_tx0
    rx = received(lab, n) - rx0
    usage = uploads.usage(start, start + took, n, args.leech_up, args.seed_up, size)
    for l in leechers:
        verify(l["path"], original, f"rqbit leecher {l['i']}")
        l["rss"] = peak_rss_mib(l["proc"].pid)
    return {
        "time": took,
        "usage": usage,
        "seed_share": seed_up / (n * size),
        "received": rx / (n * size),
        "leechers": [(l["i"], l["joined"], l["done"], l["rss"]) for l in leechers],
        "seed_rss": peak_rss_mib(s.pid),
    }


def join_times(args, n, pattern):
    if pattern == "together":
        return [0.0] * n
    return [args.join_secs * i / n for i in range(n)]


def verify(path, original, who):
    with open(path, "rb") as a, open(original, "rb") as b:
        while True:
            x, y = a.read(1 << 20), b.read(1 << 20)
            if x != y:
                raise LabError(f"{who}'s copy differs from the original")
            if not x:
                return


def bdecode(data, i=0):
    c = data[i:i + 1]
    if c == b"i":
        j = data.index(b"e", i)
        return int(data[i + 1:j]), j + 1
    if c in (b"l", b"d"):
        i += 1
        items = []
        while data[i:i + 1] != b"e":
            v, i = bdecode(data, i)
            items.append(v)
        if c == b"l":
            return items, i + 1
        return dict(zip(items[::2], items[1::2])), i + 1
    j = data.index(b":", i)
    length = int(data[i:j])
    return data[j + 1:j + 1 + length], j + 1 + length


def torrent_info_hash(path):
    data = open(path, "rb").read()
    # The info dictionary's bytes as they are in the file: find where its value starts and ends.
    key = b"4:info"
    start = data.index(key) + len(key)
    _, end = bdecode(data, start)
    return hashlib.sha1(data[start:end]).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", required=True, help="directory with p2p-tracker and p2p-peer")
    ap.add_argument("--leechers", default="8,16,32", help="comma-separated N")
    ap.add_argument("--patterns", default="together,joining", help="together and/or joining")
    ap.add_argument("--join-secs", type=float, default=10.0)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--seed-up", type=float, default=100, help="Mbit/s")
    ap.add_argument("--seed-down", type=float, default=100, help="Mbit/s")
    ap.add_argument("--leech-up", type=float, default=20, help="Mbit/s")
    ap.add_argument("--leech-down", type=float, default=100, help="Mbit/s")
    ap.add_argument("--clients", default="ours", help="ours and/or rqbit")
    ap.add_argument("--rqbit")
    ap.add_argument("--opentracker")
    ap.add_argument("--mktorrent")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--peer-arg", action="append", default=[], help="extra argument for every p2p-peer")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    ap.add_argument("--congestion", default="",
                    help="every peer's TCP congestion control, e.g. cubic (the default of Linux, Windows and "
                         "macOS) or bbr (default: the host's); allowed in namespaces for the run if the host "
                         "has it but does not allow it")
    ap.add_argument("--rtt-ms", type=float, default=0,
                    help="round trip to add between two peers (half of it to the tracker): a delay line "
                         "(peer/examples/delay_line.rs) holds every frame for a quarter of it at each peer's "
                         "port, each way; default 0, none")
    ap.add_argument("--loss-pct", type=float, default=0,
                    help="packets lost at random between two peers, each way, in percent: the delay line "
                         "drops them, with segmentation offload off so that a frame is one packet; default 0")
    ap.add_argument("--delay-line", help="the delay_line binary (default: BIN_DIR/examples/delay_line)")
    ap.add_argument("--slow-start-after-idle", type=int, choices=(0, 1),
                    help="every peer's net.ipv4.tcp_slow_start_after_idle (default: the kernel's, 1): with 1, "
                         "a connection idle for a retransmission timeout restarts from a small window "
                         "(cubic and reno; bbr keeps its pace)")
    ap.add_argument("--timeline", action="store_true", help="print every peer's upload rate, second by second")
    args = ap.parse_args()
    if args.rtt_ms < 0:
        die("--rtt-ms must not be negative")
    if not 0 <= args.loss_pct < 50:
        die("--loss-pct must be at least 0 and under 50")
    if uses_delay_line(args):
        args.delay_line = args.delay_line or os.path.join(args.bin_dir, "examples", "delay_line")
        if not os.access(args.delay_line, os.X_OK):
            die(f"--rtt-ms and --loss-pct need the delay line at {args.delay_line}: build it with "
                "`cargo build --release -p p2p-peer --example delay_line`, or pass --delay-line")
    # A killed lab (SIGTERM, SIGHUP) unwinds like Ctrl-C: every `finally` removes its
    # namespaces, links and processes.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))

    why = preflight(args)
    if why:
        die(f"SKIPPED: {why}", SKIP)
    clients = args.clients.split(",")
    if "rqbit" in clients and not (args.rqbit and args.opentracker and args.mktorrent):
        die("--clients rqbit needs --rqbit, --opentracker and --mktorrent")

    root = tempfile.mkdtemp(prefix="p2p-swarm-", dir=os.environ.get("TMPDIR", "/tmp"))
    os.chmod(root, 0o755)  # opentracker drops root and must still read its whitelist
    size = args.size_mib << 20
    original = os.path.join(root, "file.bin")
    with open(original, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            left -= len(chunk)
    with open(original, "rb") as f:
        file_id = hashlib.file_digest(f, "sha256").hexdigest()
    name = "swarm.bin"
    print(f"swarm lab: {args.size_mib} MiB, seeder {args.seed_up:g}/{args.seed_down:g} Mbit/s up/down, "
          f"leechers {args.leech_up:g}/{args.leech_down:g} Mbit/s, "
          f"{f'a {args.rtt_ms:g} ms round trip between peers' if args.rtt_ms else 'no added latency'}, "
          f"{f'{args.loss_pct:g} % of packets lost between two peers' if args.loss_pct else 'no loss'}, "
          f"TCP {args.congestion or sh('sysctl', '-n', 'net.ipv4.tcp_congestion_control').stdout.strip()}"
          f"{'' if args.slow_start_after_idle is None else f' (slow start after idle {args.slow_start_after_idle})'}, "
          f"{os.cpu_count()} cores", flush=True)
    results = []
    failed = False
    allowed = {}
    try:
        allowed = allow_congestion(args.congestion)
        for n in [int(x) for x in args.leechers.split(",")]:
            for pattern in args.patterns.split(","):
                if pattern not in ("together", "joining"):
                    die(f"unknown pattern {pattern}")
                row = {"n": n, "pattern": pattern}
                row["bound"] = fluid_bound(args, n, size, join_times(args, n, pattern))
                row["arrival_bound"] = arrival_bound(args, n, size, join_times(args, n, pattern))
                for client in clients:
                    work = os.path.join(root, f"{client}-{n}-{pattern}")
                    os.makedirs(work)
                    lab = Lab(work, args, n)
                    saved = neighbour_room(n)
                    try:
                        lab.build()
                        if client == "ours":
                            row[client] = run_ours(lab, args, n, pattern, original, size, name, file_id)
                        else:
                            row[client] = run_rqbit(lab, args, n, pattern, original, size, name)
                        row[client]["delay_line"] = lab.line_counts()
                    except (LabError, subprocess.CalledProcessError) as e:
                        detail = e.stderr if isinstance(e, subprocess.CalledProcessError) else ""
                        print(f"swarm lab: {client} N={n} {pattern}: FAILED: {e} {detail}", file=sys.stderr)
                        row[client] = {"error": str(e)}
                        failed = True
                    finally:
                        lab.close()
                        restore(saved)
                        for d in os.listdir(work):
                            p = os.path.join(work, d)
                            if os.path.isdir(p) and not args.keep:
                                shutil.rmtree(p, ignore_errors=True)
                report(row, clients, args.timeline)
                results.append(row)
    finally:
        restore(allowed)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        if args.keep:
            print(f"swarm lab: logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if failed else 0)


def report(row, clients, timeline=False):
    n, bound = row["n"], row["bound"]
    line = f"N={n:<3} {row['pattern']:<8} T*={bound:6.2f} s"
    arrival = row.get("arrival_bound", bound)
    if arrival > bound + 1e-6:
        line += f" (uploading only once joined: {arrival:.2f} s = {arrival / bound:.2f} T*)"
    ours = row.get("ours")
    if ours and "time" in ours:
        line += f" | ours {ours['time']:6.2f} s = {ours['time'] / bound:.2f} T*, seeder sent {ours['seed_share']:.0%}"
        if "received" in ours:
            line += f", leechers received {ours['received']:.2f}x N*F"
        if ours.get("tracker_rtt_ms", 0) >= 1:
            line += f", round trip to the tracker {ours['tracker_rtt_ms']:.0f} ms"
        rss = [l[3] for l in ours["leechers"] if l[3]]
        if rss:
            line += f", RSS leecher max {max(rss):.0f} MiB, seeder {ours['seed_rss'] or 0:.0f} MiB"
    rq = row.get("rqbit")
    if rq and "time" in rq:
        line += f" | rqbit {rq['time']:6.2f} s = {rq['time'] / bound:.2f} T*, seeder sent {rq['seed_share']:.0%}"
        if "received" in rq:
            line += f", leechers received {rq['received']:.2f}x N*F"
        if ours and "time" in ours:
            line += f" | ours/rqbit {ours['time'] / rq['time']:.2f}"
    print(line, flush=True)
    for client in clients:
        r = row.get(client)
        if r and "leechers" in r:
            done = " ".join(f"{l[2]:.1f}" for l in sorted(r["leechers"], key=lambda l: l[2]))
            print(f"        {client} completions (s): {done}", flush=True)
        counts = r.get("delay_line") if r else None
        if counts:
            frames = max(1, counts["frames"])
            line = (f"        {client} delay lines: {counts['lost']} of {counts['frames']} frames lost at random "
                    f"({counts['lost'] / frames:.2%}), {counts['refused']} refused by a full shaper queue")
            if counts["full"]:
                line += f", {counts['full']} dropped past the line's own limit"
            if counts["gso"]:
                line += f", {counts['gso']} frames of several packets (TSO/GSO)"
            print(line, flush=True)
        usage = r.get("usage") if r else None
        if usage:
            print(f"        {client} uploads used: leechers {usage['leech_use']:.0%} of their capacity, "
                  f"the seeder {usage['seed_use']:.0%}; the cores idle {usage['cpu_idle']:.0%}"
                  f"{BOUND_BY_CPU if usage['cpu_idle'] < CPU_BOUND else ''}", flush=True)
            if timeline:
                for t, rates, got, idle in usage["per_sec"]:
                    leech = " ".join(f"{rates.get(f'pl{i}', 0):4.1f}" for i in range(1, n + 1))
                    had = " ".join(f"{got[i]:4.0%}" for i in range(1, n + 1))
                    print(f"          t={t:5.1f} s seeder {rates.get('ps', 0):5.1f} | leechers {leech} Mbit/s"
                          f" | received {had} | cores idle {idle:.0%}", flush=True)


if __name__ == "__main__":
    main()
