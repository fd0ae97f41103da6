//! The NAT lab: real NATs on this machine, built from network namespaces, veth pairs, a Linux
//! bridge and iptables, with the real binaries (`p2p-tracker`, `p2p-peer --daemon`,
//! `p2p-download`) moving a file across them. Each scenario checks the file's SHA-256 and the
//! path the download took (`direct`, `hole-punched`, `relayed`).
//!
//! ```text
//!   "internet" namespace: bridge br0, 203.0.113.0/24 (TEST-NET-3), tracker on 203.0.113.1:8080
//!        │                                 │
//!   public peer                       router namespace: wan 203.0.113.10N, ip_forward=1,
//!   203.0.113.1N/24                   MASQUERADE, FORWARD and INPUT stateful (as home routers)
//!                                          │ lan 10.0.N.1/24
//!                                     LAN peer namespace: 10.0.N.2/24, default via 10.0.N.1
//! ```
//!
//! Needs root, `ip` (iproute2), `sysctl` (procps), iptables (`iptables-nft`, else `iptables-legacy`: the first
//! that works inside a namespace) and `curl` (the test asks the tracker from inside the lab).
//! Without them each scenario prints `SKIPPED: NAT lab: …`, a failure under
//! `P2P_REQUIRE_ALL=1`. The tracker is the workspace's `p2p-tracker` binary next to `p2p-peer`.
//!
//! Namespaces are named `p2pnat-<pid>-<scenario>-…`, so scenarios running in parallel processes
//! (nextest) or threads (cargo test) never clash. A lab kills its processes and deletes its
//! namespaces on drop, panics included; a test process killed before that leaves namespaces
//! that the next lab sweeps away (their pid is gone).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use p2p_proto::api::{FilePeer, FilePeers};
use sha2::{Digest, Sha256};
use support::{content, skip};

const KEY: &str = "nat-lab-key";
const TRACKER_IP: &str = "203.0.113.1";
const TRACKER_PORT: u16 = 8080;
/// Every peer has a namespace to itself, so a fixed port is always free.
const PEER_PORT: &str = "7000";
const PREFIX: &str = "p2pnat-";
/// Everything a scenario does, setting up the lab included.
const TIMEOUT: Duration = Duration::from_secs(90);
/// The iptables front ends to try, in order.
const IPTABLES: [&str; 2] = ["iptables-nft", "iptables-legacy"];
/// A few chunks and a partial last one.
const FILE_LEN: usize = 3 * 256 * 1024 + 12_345;

#[derive(Debug, Clone, Copy)]
enum Nat {
    /// Endpoint-independent mapping (MASQUERADE keeps the source port when it is free),
    /// stateful filtering: only replies come in.
    Cone,
    /// A cone NAT whose router also drops all UDP, both ways: no hole can be punched.
    ConeWithoutUdp,
    /// A new random port (50000-60000) for every new flow, so for every destination.
    Symmetric,
}

/// Where a peer sits.
#[derive(Debug, Clone, Copy)]
enum Site {
    Public,
    Behind(Nat),
}

/// A peer's place in the lab.
struct Host {
    /// The namespace its processes run in.
    ns: String,
    /// Its address on the internet: its own, or its router's.
    public_ip: String,
}

struct Proc {
    label: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    /// Expected to run until the lab ends (the tracker, the seeder).
    daemon: bool,
}

struct Lab {
    /// `p2pnat-<pid>-<scenario>`: the prefix of every namespace of this lab.
    name: String,
    /// The namespace holding the bridge and the tracker.
    inet: String,
    iptables: &'static str,
    deadline: Instant,
    procs: Vec<Proc>,
    namespaces: Vec<String>,
    bridge_ports: u8,
    publics: u8,
    routers: u8,
    work: tempfile::TempDir,
}

impl Lab {
    /// The internet namespace with its bridge, or `None` (after a SKIPPED line) when this
    /// machine cannot build the lab.
    fn new(scenario: &str) -> Option<Self> {
        if let Err(why) = preflight() {
            skip("NAT lab", &why);
            return None;
        }
        let name = format!("{PREFIX}{}-{scenario}", std::process::id());
        sweep_stale(&name);
        let mut lab = Self {
            inet: format!("{name}-inet"),
            name,
            iptables: IPTABLES[0],
            deadline: Instant::now() + TIMEOUT,
            procs: Vec::new(),
            namespaces: Vec::new(),
            bridge_ports: 0,
            publics: 0,
            routers: 0,
            work: tempfile::tempdir().unwrap(),
        };
        let inet = lab.inet.clone();
        if let Err(why) = lab.add_ns(&inet) {
            skip(
                "NAT lab",
                &format!("cannot create a network namespace: {why}"),
            );
            return None;
        }
        let Some(iptables) = IPTABLES.into_iter().find(|i| iptables_works(&inet, i)) else {
            skip(
                "NAT lab",
                &format!("none of {IPTABLES:?} can add NAT rules in a network namespace"),
            );
            return None;
        };
        lab.iptables = iptables;
        run(&format!("ip -n {inet} link add br0 type bridge"));
        run(&format!("ip -n {inet} addr add {TRACKER_IP}/24 dev br0"));
        run(&format!("ip -n {inet} link set br0 up"));
        Some(lab)
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), String> {
        let out = Command::new("ip")
            .args(["netns", "add", ns])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        self.namespaces.push(ns.to_owned());
        run(&format!("ip -n {ns} link set lo up"));
        Ok(())
    }

    fn new_ns(&mut self, role: &str) -> String {
        let ns = format!("{}-{role}", self.name);
        self.add_ns(&ns)
            .unwrap_or_else(|e| panic!("cannot create namespace {ns}: {e}"));
        ns
    }

    /// Plugs `ns` into the internet's bridge as interface `ifname` with address `ip`.
    fn attach(&mut self, ns: &str, ifname: &str, ip: &str) {
        self.bridge_ports += 1;
        let port = format!("v{}", self.bridge_ports);
        let inet = &self.inet;
        run(&format!(
            "ip -n {inet} link add {port} type veth peer name {ifname} netns {ns}"
        ));
        run(&format!("ip -n {inet} link set {port} master br0 up"));
        run(&format!("ip -n {ns} addr add {ip}/24 dev {ifname}"));
        run(&format!("ip -n {ns} link set {ifname} up"));
    }

    fn host(&mut self, site: Site) -> Host {
        match site {
            Site::Public => {
                self.publics += 1;
                let ns = self.new_ns(&format!("p{}", self.publics));
                let ip = format!("203.0.113.{}", 10 + self.publics);
                self.attach(&ns, "eth0", &ip);
                Host { ns, public_ip: ip }
            }
            Site::Behind(nat) => self.behind_nat(nat),
        }
    }

    /// A LAN namespace behind a router namespace of its own.
    fn behind_nat(&mut self, nat: Nat) -> Host {
        self.routers += 1;
        let n = self.routers;
        let router = self.new_ns(&format!("r{n}"));
        let lan = self.new_ns(&format!("l{n}"));
        let wan_ip = format!("203.0.113.{}", 100 + n);
        self.attach(&router, "wan", &wan_ip);
        let (gateway, lan_ip) = (format!("10.0.{n}.1"), format!("10.0.{n}.2"));
        run(&format!(
            "ip -n {router} link add lan type veth peer name eth0 netns {lan}"
        ));
        run(&format!("ip -n {router} addr add {gateway}/24 dev lan"));
        run(&format!("ip -n {router} link set lan up"));
        run(&format!("ip -n {lan} addr add {lan_ip}/24 dev eth0"));
        run(&format!("ip -n {lan} link set eth0 up"));
        run(&format!("ip -n {lan} route add default via {gateway}"));
        run(&format!(
            "ip netns exec {router} sysctl -qw net.ipv4.ip_forward=1"
        ));
        for rule in router_rules(nat) {
            run(&format!("ip netns exec {router} {} {rule}", self.iptables));
        }
        Host {
            ns: lan,
            public_ip: wan_ip,
        }
    }

    /// Starts `bin args…` inside `ns`, its output going to files in the lab's directory.
    fn spawn<S: AsRef<OsStr>>(
        &mut self,
        label: &str,
        ns: &str,
        bin: &Path,
        args: impl IntoIterator<Item = S>,
        daemon: bool,
    ) -> usize {
        let stdout = self.work.path().join(format!("{label}.stdout"));
        let stderr = self.work.path().join(format!("{label}.stderr"));
        // A clean environment: no P2P_*, API_KEYS or POSTGRES_URL from the caller's.
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.procs.push(Proc {
            label: label.to_owned(),
            child,
            stdout,
            stderr,
            daemon,
        });
        self.procs.len() - 1
    }

    /// Polls `probe` until it gives a value; fails when a daemon exits or time runs out.
    fn wait_until<T>(&mut self, what: &str, mut probe: impl FnMut(&mut Self) -> Option<T>) -> T {
        loop {
            if let Some(v) = probe(self) {
                return v;
            }
            for i in 0..self.procs.len() {
                let p = &mut self.procs[i];
                if p.daemon
                    && let Ok(Some(status)) = p.child.try_wait()
                {
                    let label = p.label.clone();
                    self.fail(&format!(
                        "{label} exited ({status}) while waiting until {what}"
                    ));
                }
            }
            if Instant::now() > self.deadline {
                self.fail(&format!(
                    "timed out ({TIMEOUT:?} for the scenario) waiting until {what}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` on the tracker, from inside the internet namespace.
    fn api(&self, path: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.inet, "curl", "-sf", "-m", "2", "-H"])
            .arg(format!("X-API-Key: {KEY}"))
            .arg(format!("http://{TRACKER_IP}:{TRACKER_PORT}{path}"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.procs[i].stderr).unwrap_or_default()
    }

    /// Starts the tracker on the internet and waits until it answers.
    fn tracker(&mut self) {
        let bin = tracker_binary();
        let data = self.work.path().join("tracker");
        let inet = self.inet.clone();
        let addr = format!("{TRACKER_IP}:{TRACKER_PORT}");
        let args: [&OsStr; 8] = [
            "--addr".as_ref(),
            addr.as_ref(),
            "--api-keys".as_ref(),
            KEY.as_ref(),
            "--rate-limit-rps".as_ref(),
            "0".as_ref(),
            "--data-dir".as_ref(),
            data.as_ref(),
        ];
        self.spawn("tracker", &inet, &bin, args, true);
        self.wait_until("the tracker answers /health", |lab| lab.api("/health"));
    }

    fn peer_args(data: &Path) -> Vec<String> {
        let tracker = format!("http://{TRACKER_IP}:{TRACKER_PORT}");
        let data = data.display().to_string();
        [
            "--tracker",
            &tracker,
            "--api-key",
            KEY,
            "--port",
            PEER_PORT,
            "--dht",
            "off",
            "--data",
            &data,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Shares `data` as `name` from `host` with `p2p-peer --daemon`; returns the file id and
    /// the seeder as the tracker lists it, once it is listed and attached to the relay.
    fn seed(&mut self, host: &Host, name: &str, data: &[u8]) -> (String, FilePeer) {
        let dir = self.work.path().join("seed");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
        let id = hex::encode(Sha256::digest(data));
        let mut args = Self::peer_args(&dir);
        args.push("--daemon".into());
        let seeder = self.spawn(
            "seeder",
            &host.ns,
            Path::new(env!("CARGO_BIN_EXE_p2p-peer")),
            args,
            true,
        );
        // Attached, or a relayed download could not reach it yet.
        self.wait_until("the seeder is attached to the relay", |lab| {
            lab.log(seeder)
                .contains("attached to the relay")
                .then_some(())
        });
        let listed = self.wait_until("the tracker lists the seeder for the file", |lab| {
            let body = lab.api(&format!("/api/files/{id}/peers"))?;
            let swarm: FilePeers = serde_json::from_str(&body).ok()?;
            swarm.peers.into_iter().next()
        });
        (id, listed)
    }

    /// Runs `p2p-download id` on `host`; returns the downloaded bytes, its report (stdout) and
    /// how long it took. Fails unless it exits 0.
    fn download(&mut self, host: &Host, id: &str, name: &str) -> (Vec<u8>, String, Duration) {
        let dir = self.work.path().join("leech");
        let mut args = Self::peer_args(&dir);
        args.push(id.to_owned());
        let started = Instant::now();
        let i = self.spawn(
            "download",
            &host.ns,
            Path::new(env!("CARGO_BIN_EXE_p2p-download")),
            args,
            false,
        );
        let status: ExitStatus = self.wait_until("p2p-download finishes", |lab| {
            lab.procs[i].child.try_wait().unwrap()
        });
        let took = started.elapsed();
        if !status.success() {
            self.fail(&format!("p2p-download failed ({status})"));
        }
        let report = std::fs::read_to_string(&self.procs[i].stdout).unwrap();
        let got = std::fs::read(dir.join(name))
            .unwrap_or_else(|e| self.fail(&format!("p2p-download succeeded but {name}: {e}")));
        (got, report, took)
    }

    /// Panics with `what` and the end of every process's output.
    fn fail(&self, what: &str) -> ! {
        let mut msg = format!("NAT lab {}: {what}\n", self.name);
        for p in &self.procs {
            for (stream, path) in [("stdout", &p.stdout), ("stderr", &p.stderr)] {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                if lines.is_empty() {
                    continue;
                }
                let tail = &lines[lines.len().saturating_sub(25)..];
                let _ = writeln!(msg, "--- {} {stream} (last {} lines)", p.label, tail.len());
                for l in tail {
                    let _ = writeln!(msg, "{l}");
                }
            }
        }
        panic!("{msg}");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            remove_ns(ns);
        }
    }
}

/// Why this machine cannot build the lab, if it cannot.
fn preflight() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if euid != Some("0") {
        return Err("needs root (network namespaces, iptables)".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("curl", "curl"), ("sysctl", "procps")] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Err(format!("`{tool}` is missing (apt-get install {package})"));
        }
    }
    if !IPTABLES
        .iter()
        .any(|i| Command::new(i).arg("-V").output().is_ok())
    {
        return Err("`iptables` is missing (apt-get install iptables)".into());
    }
    Ok(())
}

/// Whether `iptables` can add the lab's kinds of rules in `ns` (nf_tables or the legacy x_tables
/// may be missing from the kernel); leaves no rule behind.
fn iptables_works(ns: &str, iptables: &str) -> bool {
    [
        "-t nat -A POSTROUTING -p udp -j MASQUERADE --to-ports 50000-60000 --random",
        "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-t nat -F",
        "-F",
    ]
    .iter()
    .all(|rule| {
        Command::new("ip")
            .args(["netns", "exec", ns, iptables])
            .args(rule.split_whitespace())
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The router's rules: the NAT, then a home router's stateful filter (only replies come in,
/// and nothing unsolicited reaches the router itself: an unsolicited packet it accepted would
/// leave a conntrack entry that later breaks hole punching).
fn router_rules(nat: Nat) -> Vec<&'static str> {
    let mut rules = match nat {
        Nat::Cone | Nat::ConeWithoutUdp => vec!["-t nat -A POSTROUTING -o wan -j MASQUERADE"],
        Nat::Symmetric => vec![
            "-t nat -A POSTROUTING -o wan -p udp -j MASQUERADE --to-ports 50000-60000 --random",
            "-t nat -A POSTROUTING -o wan -p tcp -j MASQUERADE --to-ports 50000-60000 --random",
        ],
    };
    if matches!(nat, Nat::ConeWithoutUdp) {
        rules.push("-A FORWARD -p udp -j DROP");
    }
    rules.extend([
        "-A FORWARD -i lan -o wan -j ACCEPT",
        "-A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A FORWARD -j DROP",
        "-A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A INPUT -i wan -j DROP",
    ]);
    rules
}

/// Runs a set-up command (words split on whitespace); a failure is a bug in the lab.
fn run(cmd: &str) {
    let mut words = cmd.split_whitespace();
    let out = Command::new(words.next().unwrap_or_default())
        .args(words)
        .output()
        .unwrap_or_else(|e| panic!("`{cmd}`: {e}"));
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Deletes namespaces left by test processes that are gone, and this scenario's own from an
/// earlier process that had the same pid.
fn sweep_stale(own: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = ns
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .filter(|pid| pid.parse::<u32>().is_ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() || ns.starts_with(&format!("{own}-")) {
            remove_ns(ns);
        }
    }
}

/// Kills what still runs in `ns` (it would keep the namespace alive), then deletes it.
fn remove_ns(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
}

/// `p2p-tracker`, built by the workspace next to the peer's binaries.
fn tracker_binary() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_p2p-peer")).with_file_name("p2p-tracker");
    assert!(
        bin.is_file(),
        "the NAT lab runs the tracker binary {}, which is missing: build it with \
         `cargo build -p p2p-tracker` (a workspace build makes it)",
        bin.display()
    );
    bin
}

/// The path in `p2p-download`'s report line for `peer`: `  <peer>  <n> bytes (<path>)`.
fn report_path(report: &str, peer: &str) -> Option<String> {
    report
        .lines()
        .find(|l| l.trim_start().starts_with(peer))
        .and_then(|l| l.split_once(" bytes (")?.1.split_once(')'))
        .map(|(path, _)| path.to_owned())
}

/// Seeds a file at `seeder`, downloads it at `leecher`, checks the content and that the
/// download went over `expected`.
fn transfer(scenario: &str, seeder: Site, leecher: Site, expected: &str) {
    let Some(mut lab) = Lab::new(scenario) else {
        return;
    };
    lab.tracker();
    let seed_host = lab.host(seeder);
    let leech_host = lab.host(leecher);
    let data = content(FILE_LEN, 0x5eed);
    let (id, listed) = lab.seed(&seed_host, "lab.bin", &data);
    let (got, report, took) = lab.download(&leech_host, &id, "lab.bin");
    if hex::encode(Sha256::digest(&got)) != id {
        lab.fail("the downloaded file's SHA-256 is not the file's id");
    }
    let seeder_id = listed.peer_id.to_string();
    let Some(path) = report_path(&report, &seeder_id) else {
        lab.fail(&format!("no report line for the seeder {seeder_id}"));
    };
    println!(
        "NAT lab {scenario}: seeder {seeder:?} (internet address {}, registered {:?} port {}), \
         leecher {leecher:?} (internet address {}): {path} in {:.1} s",
        seed_host.public_ip,
        listed.addresses,
        listed.port,
        leech_host.public_ip,
        took.as_secs_f64()
    );
    if path != expected {
        lab.fail(&format!(
            "the file arrived intact, but {path}; expected {expected}"
        ));
    }
}

const PUBLIC: Site = Site::Public;
const CONE: Site = Site::Behind(Nat::Cone);
const CONE_WITHOUT_UDP: Site = Site::Behind(Nat::ConeWithoutUdp);
const SYMMETRIC: Site = Site::Behind(Nat::Symmetric);

#[test]
fn public_to_public_is_direct() {
    transfer("s1", PUBLIC, PUBLIC, "direct");
}

#[test]
fn cone_nat_downloading_from_public_is_direct() {
    transfer("s2", PUBLIC, CONE, "direct");
}

/// Nothing dials in through a NAT over TCP: the NAT'd seeder is reached through a punched hole.
#[test]
fn public_downloading_from_cone_nat_is_hole_punched() {
    transfer("s3", CONE, PUBLIC, "hole-punched");
}

/// The same without UDP through the router: only the relay is left.
#[test]
fn public_downloading_from_cone_nat_without_udp_is_relayed() {
    transfer("s3b", CONE_WITHOUT_UDP, PUBLIC, "relayed");
}

#[test]
fn cone_nat_to_cone_nat_is_hole_punched() {
    transfer("s4", CONE, CONE, "hole-punched");
}

/// Symmetric NATs map every destination to a new port, so no punched hole is found: relay.
#[test]
fn symmetric_nat_to_symmetric_nat_is_relayed() {
    transfer("s5", SYMMETRIC, SYMMETRIC, "relayed");
}
