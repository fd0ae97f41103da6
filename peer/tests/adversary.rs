//! Attacks on a running `p2p-peer --daemon` on loopback (issue 20), one test per attack: each
//! measures the daemon (resident memory, open file descriptors, CPU time and log lines, read
//! from `/proc` and its stderr), asserts they stay under the bounds below, and checks that an
//! honest download from the daemon completes during the attack and after it.
//!
//! Attackers connect from 127.0.0.2 and up (Linux routes all of 127.0.0.0/8 to loopback), the
//! honest downloader from 127.0.0.1, so per-address caps tell them apart as they would tell
//! apart hosts. Every loop is bounded; figures are printed (`--nocapture`) for the record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_peer::Identity;
use p2p_peer::download::{DownloadOptions, download};
use p2p_peer::net::PeerAddr;
use p2p_peer::net::relay::{self, RelayConfig, RelayStream};
use p2p_peer::net::secure::{self, Outbox, Role, SecureReader};
use p2p_peer::storage::{ChunkBuf, Library, manifest_for_file};
use p2p_proto::wire::MAX_MANIFEST_FRAME_LEN;
use p2p_proto::{CHUNK_SIZE, Manifest, PeerId};
use tokio::io::ReadHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// The daemon's resident memory may grow by at most this during an attack (it starts near
/// 20 MiB; an honest 8 MiB download alone adds a few MiB of buffers).
const RSS_GROWTH_BOUND_KIB: u64 = 48 * 1024;
/// The file the daemon shares.
const FILE_LEN: usize = 8 * 1024 * 1024 + 4321;
const OVERALL: Duration = Duration::from_secs(120);
const KEY: &str = "adversary-test-key";

/// A `p2p-peer --daemon` sharing one file, with its log.
struct Daemon {
    child: Child,
    log: support::Log,
    addr: SocketAddr,
    peer: PeerId,
    manifest: Manifest,
    data: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts the daemon with `flags` (beyond `--daemon --port 0 --listen 127.0.0.1 --dht off`),
    /// with at most `fd_limit` open files when given; waits until it listens and shares.
    async fn start(tracker: &str, flags: &[&str], fd_limit: Option<u32>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = support::content(FILE_LEN, 20);
        let path = dir.path().join("honest.bin");
        std::fs::write(&path, &data).unwrap();
        let manifest = manifest_for_file(&path, "honest.bin").unwrap();
        // `P2P_ADVERSARY_BIN` runs the attacks against another build (the one before these
        // defences, for the figures they are compared with); the flags it lacks are left out.
        let other = std::env::var("P2P_ADVERSARY_BIN").ok();
        let bin = other.as_deref().unwrap_or(env!("CARGO_BIN_EXE_p2p-peer"));
        let mut kept = Vec::new();
        let mut flags = flags.iter();
        while let Some(&flag) = flags.next() {
            match flag {
                "--idle-timeout" | "--max-connections" | "--max-connections-per-addr"
                    if other.is_some() =>
                {
                    flags.next();
                }
                _ => kept.push(flag),
            }
        }
        let mut cmd = match fd_limit {
            // `exec` keeps the pid: the process measured is the daemon.
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["--daemon", "--tracker", tracker, "--api-key", KEY])
            .args(["--port", "0", "--listen", "127.0.0.1", "--dht", "off"])
            .args(other.is_none().then_some("--allow-local-addrs"))
            // Public: the honest downloader here is a bare in-process download (most of these
            // daemons have no tracker to admit it); admissions are tests/admission.rs's.
            .args(other.is_none().then_some("--public"))
            .arg("--data")
            .arg(dir.path())
            .args(kept)
            .env("RUST_LOG", "info")
            // Builds before colour followed the terminal (P2P_ADVERSARY_BIN) honour NO_COLOR.
            .env("NO_COLOR", "1")
            .env_remove("P2P_TRACKER")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let log = support::Log::capture(child.stderr.take().unwrap());
        let mut daemon = Self {
            child,
            log,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            peer: PeerId([0; 32]),
            manifest,
            data,
            _dir: dir,
        };
        let line = daemon.wait_for("peer listening").await;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap();
        daemon.addr = addr.parse().unwrap();
        daemon.wait_for("the folder is in sync").await;
        daemon.peer = Identity::load_or_create(daemon._dir.path())
            .unwrap()
            .peer_id();
        daemon
    }

    /// Waits (at most 30 s) for a log line containing `what`; returns it.
    async fn wait_for(&mut self, what: &str) -> String {
        let within = Duration::from_secs(30);
        self.log.wait_for(&mut self.child, &[what], within).await
    }

    fn log(&self) -> String {
        self.log.tail(40)
    }

    fn count(&self, what: &str) -> usize {
        self.log.count(what)
    }

    /// Lines logged so far.
    fn logged(&self) -> usize {
        self.log.len()
    }

    /// Asserts the daemon logged at most a few lines a second since `since` lines (`started`):
    /// an attack must not fill the log.
    fn assert_quiet_log(&self, since: usize, started: Instant) {
        let lines = self.logged() - since;
        let allowed = 5 + 2 * started.elapsed().as_secs() as usize;
        assert!(
            lines <= allowed,
            "{lines} lines logged during the attack:\n{}",
            self.log()
        );
        println!("log: {lines} lines in {:?}", started.elapsed());
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn sample(&self) -> Sample {
        Sample::of(self.pid())
    }

    /// Downloads the shared file from 127.0.0.1 into a new folder; panics unless it arrives
    /// whole within a minute.
    async fn honest_download(&self) -> Duration {
        let out = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let source = PeerAddr::new(self.peer, vec![self.addr]);
        let report = tokio::time::timeout(
            Duration::from_secs(60),
            download(
                &Identity::generate().unwrap(),
                &self.manifest,
                &[source],
                out.path(),
                Arc::new(Library::new()),
                DownloadOptions::default(),
            ),
        )
        .await
        .expect("the honest download finished in time")
        .expect("the honest download succeeded");
        assert_eq!(std::fs::read(&report.path).unwrap(), self.data);
        start.elapsed()
    }
}

/// What `/proc` says of a process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
    cpu_ms: u64,
}

impl Sample {
    fn of(pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Self {
            rss_kib,
            fds,
            cpu_ms: ticks * 1000 / clock_ticks_per_second(),
        }
    }
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Asserts the growth from `before` to `after` is within [`RSS_GROWTH_BOUND_KIB`], and prints
/// both.
fn report(attack: &str, before: Sample, peak: Sample, after: Sample) {
    let peak = Sample {
        rss_kib: peak.rss_kib.max(after.rss_kib),
        fds: peak.fds.max(after.fds),
        ..peak
    };
    println!(
        "{attack}: RSS {} → peak {} → {} KiB; fds {} → peak {} → {}",
        before.rss_kib, peak.rss_kib, after.rss_kib, before.fds, peak.fds, after.fds
    );
    let growth = peak.rss_kib.saturating_sub(before.rss_kib);
    assert!(
        growth <= RSS_GROWTH_BOUND_KIB,
        "{attack}: RSS grew by {growth} KiB (bound {RSS_GROWTH_BOUND_KIB})"
    );
}

/// A TCP connection to `to` from the loopback address 127.0.0.`host`.
async fn connect_from(host: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)),
        0,
    ))?;
    socket.connect(to).await
}

type Reader = SecureReader<ReadHalf<TcpStream>>;

/// Reads until the daemon closes the session (or `within` passes); whether it closed it.
async fn closed_within(rx: &mut Reader, within: Duration) -> bool {
    tokio::time::timeout(within, async { while let Ok(Some(_)) = rx.recv().await {} })
        .await
        .is_ok()
}

/// 1000 completed handshakes, then silence: the daemon serves at most its per-address cap of
/// them at once (8 here, from each of 4 addresses), closes the rest at once and the served
/// ones at the idle timeout (2 s here); an honest download completes while they are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sessions_are_capped_and_closed_at_the_idle_timeout() {
    tokio::time::timeout(OVERALL, async {
        let flags = [
            "--no-relay",
            "--idle-timeout",
            "2",
            "--max-connections",
            "40",
            "--max-connections-per-addr",
            "8",
        ];
        let d = Daemon::start("http://127.0.0.1:1", &flags, None).await;
        let before = d.sample();
        let (lines, attack_start) = (d.logged(), Instant::now());
        let mut held = Vec::new();
        let mut refused = 0;
        let started = Instant::now();
        for i in 0..1000u32 {
            let host = 2 + (i % 4) as u8;
            let Ok(stream) = connect_from(host, d.addr).await else {
                refused += 1;
                continue;
            };
            // A fresh identity per session: keys cost an attacker nothing.
            let attacker = Identity::generate().unwrap();
            let handshake = secure::handshake(stream, &attacker, Role::Initiator, None);
            match tokio::time::timeout(Duration::from_secs(5), handshake).await {
                Ok(Ok((rx, tx, _))) => held.push((rx, tx)),
                _ => refused += 1,
            }
        }
        let peak = d.sample();
        println!(
            "handshake flood: {} sessions held, {refused} refused, in {:?}; {before:?} → {peak:?}",
            held.len(),
            started.elapsed()
        );
        assert!(
            held.len() <= 4 * 8,
            "{} sessions served at once",
            held.len()
        );
        // Honest work goes on meanwhile (the caps leave room for 127.0.0.1).
        let during = d.honest_download().await;
        // Every held session is closed by the daemon at its idle timeout.
        let wait = Duration::from_secs(8);
        for (rx, _) in &mut held {
            assert!(
                closed_within(rx, wait).await,
                "a silent session stayed open"
            );
        }
        drop(held);
        let after_download = d.honest_download().await;
        let after = d.sample();
        println!("honest downloads: {during:?} during, {after_download:?} after");
        report("handshake flood", before, peak, after);
        d.assert_quiet_log(lines, attack_start);
        assert!(
            peak.fds <= before.fds + 40 + 8,
            "fds {} → {}",
            before.fds,
            peak.fds
        );
        assert!(
            after.fds <= before.fds + 8,
            "fds {} → {}",
            before.fds,
            after.fds
        );
    })
    .await
    .unwrap();
}

/// 8 connections each streaming 60 MiB of an unfinished 64 MiB `Manifest` frame: an uploader
/// is never sent more than small requests, so each is refused at the frame's length, before
/// its body is buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_are_refused_before_they_are_buffered() {
    tokio::time::timeout(OVERALL, async {
        let d = Daemon::start("http://127.0.0.1:1", &["--no-relay"], None).await;
        let before = d.sample();
        let (lines, attack_start) = (d.logged(), Instant::now());
        let attacks: Vec<_> = (0..8u8)
            .map(|i| {
                let addr = d.addr;
                tokio::spawn(async move {
                    let stream = connect_from(2 + i, addr).await.unwrap();
                    let id = Identity::generate().unwrap();
                    let (_rx, mut tx, _) = secure::handshake(stream, &id, Role::Initiator, None)
                        .await
                        .unwrap();
                    let mut outbox = Outbox::default();
                    let mut start = MAX_MANIFEST_FRAME_LEN.to_be_bytes().to_vec();
                    start.push(0x03);
                    outbox.put(&start);
                    let mib = vec![0u8; 1 << 20];
                    let mut sent = 0usize;
                    for _ in 0..60 {
                        outbox.put(&mib);
                        if tx.send_outbox(&mut outbox).await.is_err() {
                            break;
                        }
                        sent += 1 << 20;
                    }
                    sent
                })
            })
            .collect();
        let during = d.honest_download().await;
        let mut peak = d.sample();
        let mut sent = Vec::new();
        for a in attacks {
            sent.push(a.await.unwrap());
            let now = d.sample();
            if now.rss_kib > peak.rss_kib {
                peak = now;
            }
        }
        println!(
            "oversized frames: MiB accepted per connection {:?}; {before:?} → {peak:?}",
            sent.iter().map(|s| s >> 20).collect::<Vec<_>>()
        );
        for s in &sent {
            assert!(*s < 16 << 20, "{s} bytes of an oversized frame were taken");
        }
        let after_download = d.honest_download().await;
        let after = d.sample();
        println!("honest downloads: {during:?} during, {after_download:?} after");
        report("oversized frames", before, peak, after);
        d.assert_quiet_log(lines, attack_start);
    })
    .await
    .unwrap();
}

/// With a 64-descriptor limit and 100 connections that never handshake, accepting fails for
/// want of descriptors: the accept loop pauses (5 ms doubling to 1 s) and logs at most once a
/// second, instead of spinning. Once they are gone (the handshake timeout closes them), an
/// honest download completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_back_off_instead_of_spinning() {
    tokio::time::timeout(OVERALL, async {
        let d = Daemon::start("http://127.0.0.1:1", &["--no-relay"], Some(64)).await;
        let before = d.sample();
        let mut idle = Vec::new();
        for i in 0..100u8 {
            if let Ok(s) = connect_from(2 + i % 4, d.addr).await {
                idle.push(s);
            }
        }
        // Measure 3 s of the daemon out of descriptors.
        let failures_before = d.count("accept failed");
        let cpu_before = d.sample().cpu_ms;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let peak = d.sample();
        let failures = d.count("accept failed") - failures_before;
        let cpu = peak.cpu_ms - cpu_before;
        println!(
            "fd exhaustion: {failures} log lines and {cpu} ms CPU in 3 s ({} connections open); \
             {before:?} → {peak:?}",
            idle.len()
        );
        assert!(failures >= 1, "descriptors never ran out:\n{}", d.log());
        assert!(failures <= 4, "{failures} accept failures logged in 3 s");
        assert!(cpu <= 600, "{cpu} ms of CPU in 3 s");
        assert!(peak.fds <= 64 + 1, "{} descriptors", peak.fds);
        drop(idle);
        let after_download = d.honest_download().await;
        let after = d.sample();
        println!("honest download after: {after_download:?}");
        report("fd exhaustion", before, peak, after);
    })
    .await
    .unwrap();
}

/// A peer attached to the relay opens 5 000 streams to the daemon through it: the daemon's
/// relay client serves at most 8 from one peer (128 in all) and closes the rest at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_relayed_streams_is_capped() {
    tokio::time::timeout(OVERALL, async {
        let work = tempfile::tempdir().unwrap();
        let tracker = tracker(work.path()).await;
        let url = tracker.base_url();
        let mut d = Daemon::start(&url, &["--no-punch"], None).await;
        d.wait_for("attached to the relay").await;
        let before = d.sample();
        let (lines, attack_start) = (d.logged(), Instant::now());
        let stop = CancellationToken::new();
        let config = RelayConfig {
            url: relay::relay_url(&url).unwrap(),
            token: Some(KEY.to_owned()),
            grant: None,
        };
        let (client, _incoming) = relay::spawn(Identity::generate().unwrap(), config, stop.clone());
        client.wait_attached(Duration::from_secs(10)).await.unwrap();
        let mut streams: Vec<RelayStream> = Vec::new();
        for _ in 0..5_000 {
            streams.push(client.open(d.peer).await.unwrap());
        }
        // The daemon has seen every Open once a stream opened after them is answered: its
        // Noise handshake gets through (or is refused) only after the rest were handled.
        let probe = client.open(d.peer).await.unwrap();
        let id = Identity::generate().unwrap();
        let answered = tokio::time::timeout(
            Duration::from_secs(30),
            secure::handshake(probe, &id, Role::Initiator, None),
        )
        .await
        .is_ok();
        assert!(answered, "the daemon never answered the last stream");
        // The daemon closed all but its cap of them at once: reading those fails now.
        let mut closed = 0;
        let mut byte = [0u8; 1];
        for s in &mut streams {
            let read = tokio::io::AsyncReadExt::read(s, &mut byte);
            if let Ok(Err(_)) = tokio::time::timeout(Duration::from_millis(1), read).await {
                closed += 1;
            }
        }
        println!(
            "relay stream flood: {closed} of {} streams closed by the daemon; {before:?} → {:?}",
            streams.len(),
            d.sample()
        );
        assert!(closed >= streams.len() - 128, "only {closed} closed");
        let during = d.honest_download().await;
        let peak = d.sample();
        drop(streams);
        let after_download = d.honest_download().await;
        let after = d.sample();
        println!("honest downloads: {during:?} during, {after_download:?} after");
        report("relay stream flood", before, peak, after);
        d.assert_quiet_log(lines, attack_start);
        stop.cancel();
        drop(d);
        tracker.stop().await.unwrap();
    })
    .await
    .unwrap();
}

async fn tracker(dir: &Path) -> p2p_tracker::app::RunningTracker {
    use p2p_tracker::app::{self, RuntimeOptions};
    use p2p_tracker::config::ServeArgs;
    use p2p_tracker::store::SqliteStore;
    let store = Arc::new(SqliteStore::open(&dir.join("tracker.db"), 4).await.unwrap());
    let args = ServeArgs::from_flags(&["--addr", "127.0.0.1:0", "--rate-limit-rps", "0"]).unwrap();
    let args = ServeArgs {
        api_keys: vec![KEY.into()],
        ..args
    };
    app::start(store, &args, RuntimeOptions::default())
        .await
        .unwrap()
}

/// A tracker lists a "peer" at loopback, link-local and a name resolving to loopback: without
/// `--allow-local-addrs` none of them is dialled (a listener there sees no connection); with
/// it (as on one machine) they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracker_cannot_make_a_peer_dial_local_addresses() {
    use p2p_peer::discovery::Discovery;
    use p2p_peer::tracker_client::TrackerClient;
    use p2p_proto::api::{AnnounceRequest, RegisterPeerRequest};
    tokio::time::timeout(OVERALL, async {
        let work = tempfile::tempdir().unwrap();
        let t = tracker(work.path()).await;
        let client = TrackerClient::new(&t.base_url(), Some(KEY.to_owned())).unwrap();
        // Something on this host the tracker wants us to reach.
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = target.local_addr().unwrap().port();
        let dialled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn({
            let dialled = dialled.clone();
            async move {
                while target.accept().await.is_ok() {
                    dialled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        let fake_identity = Identity::generate().unwrap();
        let fake = fake_identity.peer_id();
        let mut addresses = vec!["127.0.0.1", "169.254.169.254", "::1", "fe80::1"];
        addresses.push("localhost");
        let token = client
            .register(
                &fake_identity,
                &RegisterPeerRequest {
                    peer_id: fake,
                    addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
                    port,
                    udp_port: None,
                    relay_only: false,
                    relay: None,
                    name: None,
                    version: None,
                    proof: None,
                },
            )
            .await
            .unwrap()
            .peer_token;
        let data = support::content(100_000, 3);
        let manifest = Manifest::of_bytes("bait.bin", &data, CHUNK_SIZE).unwrap();
        client
            .announce(
                &token,
                &AnnounceRequest {
                    peer_id: fake,
                    file: manifest.clone(),
                    have: None,
                },
            )
            .await
            .unwrap();
        let me = Identity::generate().unwrap();
        let own = SocketAddr::from(([127, 0, 0, 1], 9));
        let discovery = Discovery::new(client.clone(), None, me.clone(), own, None);
        let sources = discovery.find(&manifest.id).await.unwrap().sources;
        assert!(sources.is_empty(), "local addresses offered: {sources:?}");
        assert_eq!(dialled.load(std::sync::atomic::Ordering::SeqCst), 0);

        // Allowed, the tracker's loopback address is what it says.
        let discovery = discovery.allow_local_addrs(true);
        let sources = discovery.find(&manifest.id).await.unwrap().sources;
        let addrs = &sources[0].addrs;
        assert!(
            addrs.contains(&SocketAddr::from(([127, 0, 0, 1], port))),
            "{addrs:?}"
        );
        t.stop().await.unwrap();
    })
    .await
    .unwrap();
}

/// A shared file whose name carries a bidi override (`invoice<U+202E>fdp.exe` shows
/// as `invoiceexe.pdf`) or a Windows device name arrives under a safe name.
#[tokio::test]
async fn hostile_file_names_are_not_written_as_given() {
    use p2p_peer::net::accept::Acceptor;
    use p2p_peer::throttle::Throttle;
    use p2p_peer::upload::Uploader;
    for (hostile, safe) in [
        ("invoice\u{202E}fdp.exe", "invoice_fdp.exe"),
        ("CON.txt", "_CON.txt"),
        ("zero\u{200B}width", "zero_width"),
    ] {
        let src = tempfile::tempdir().unwrap();
        let path = src.path().join(hostile);
        let data = support::content(300_000, 9);
        std::fs::write(&path, &data).unwrap();
        let library = Arc::new(Library::new());
        // Public: this test is about the transfer, not admission (see tests/admission.rs).
        library.visibility.set_all_public(true);
        let manifest = library.share(&path).await.unwrap();
        assert_eq!(manifest.name, hostile, "the name travels as it is");
        let stop = CancellationToken::new();
        let identity = Identity::generate().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let uploader = Arc::new(Uploader::new(library, Arc::new(Throttle::new(None))));
        Acceptor::new(identity.clone(), uploader, stop.clone()).listen(listener);
        let out = tempfile::tempdir().unwrap();
        let report = download(
            &Identity::generate().unwrap(),
            &manifest,
            &[PeerAddr::new(identity.peer_id(), vec![addr])],
            out.path(),
            Arc::new(Library::new()),
            DownloadOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(report.path, out.path().join(safe));
        assert_eq!(std::fs::read(&report.path).unwrap(), data);
        stop.cancel();
    }
}
