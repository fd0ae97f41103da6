//! The tracker under attack (issue #18): one test per attack, over real sockets on loopback,
//! in bounded loops. Each asserts that the tracker's memory grows by less than a documented
//! bound, that `/health` answers within 100 ms while the attack runs, and that the honest
//! action still works.
//!
//! The tests share one process, so they run one at a time (`SERIAL`) and memory is the
//! process's resident set. To measure another tracker instead (e.g. an older build for a
//! before/after table), set `P2P_ADVERSARY_URL=http://127.0.0.1:PORT` and
//! `P2P_ADVERSARY_PID=<its pid>`; it must accept the API key and admin password of
//! `common`. Then each test prints its figures (`FIGURE …`) and asserts nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use p2p_tracker::config::ServeArgs;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One attack at a time: memory is measured for the whole process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: u64 = 1024 * 1024;
/// How fast `/health` must answer during an attack.
const HEALTH_WITHIN: Duration = Duration::from_millis(100);

/// The tracker under attack: one started here, or an external one.
struct Target {
    base: String,
    addr: SocketAddr,
    /// The external tracker's process, whose memory is measured.
    pid: Option<u32>,
    local: Option<(TestTracker, TestDb)>,
}

impl Target {
    async fn start(args: ServeArgs) -> Self {
        if let Ok(base) = std::env::var("P2P_ADVERSARY_URL") {
            let addr = base
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .parse()
                .expect("P2P_ADVERSARY_URL is http://IP:PORT");
            let pid = std::env::var("P2P_ADVERSARY_PID")
                .ok()
                .and_then(|p| p.parse().ok());
            return Self {
                base,
                addr,
                pid,
                local: None,
            };
        }
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, args).await;
        Self {
            base: t.base.clone(),
            addr: t.tracker.addr,
            pid: None,
            local: Some((t, db)),
        }
    }

    fn external(&self) -> bool {
        self.local.is_none()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Resident memory of the tracker's process.
    fn rss(&self) -> u64 {
        let path = match self.pid {
            Some(pid) => format!("/proc/{pid}/status"),
            None => "/proc/self/status".to_owned(),
        };
        let status = std::fs::read_to_string(path).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    async fn stop(self) {
        if let Some((t, db)) = self.local {
            t.stop().await;
            db.cleanup().await;
        }
    }
}

/// Samples memory and `/health` latency (a fresh connection each time) until stopped. Each
/// round asks twice and keeps the faster answer: the machine running the tests is shared, and
/// one request descheduled for a moment says nothing about the tracker; a tracker that is slow
/// during the attack is slow both times.
struct Watch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, Duration, u32)>,
    base_rss: u64,
}

impl Watch {
    fn start(target: &Target) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let base_rss = target.rss();
        let (pid, url) = (target.pid, target.url("/health"));
        let rss = move || {
            Target {
                base: String::new(),
                addr: "127.0.0.1:1".parse().unwrap(),
                pid,
                local: None,
            }
            .rss()
        };
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut peak, mut slowest, mut failures) = (0u64, Duration::ZERO, 0u32);
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss());
                let mut best = Duration::MAX;
                let mut ok = false;
                for _ in 0..2 {
                    let client = reqwest::Client::builder()
                        .pool_max_idle_per_host(0)
                        .build()
                        .unwrap();
                    let started = Instant::now();
                    let answer =
                        tokio::time::timeout(Duration::from_secs(5), client.get(&url).send()).await;
                    if matches!(&answer, Ok(Ok(r)) if r.status() == 200) {
                        ok = true;
                        best = best.min(started.elapsed());
                    }
                }
                if ok {
                    slowest = slowest.max(best);
                } else {
                    failures += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (peak.max(rss()), slowest, failures)
        });
        Self {
            stop,
            task,
            base_rss,
        }
    }

    /// Stops, prints the figures and, for a tracker started here, checks them.
    async fn finish(self, target: &Target, attack: &str, max_growth: u64) {
        self.stop.store(true, Ordering::Relaxed);
        let (peak, slowest, failures) = self.task.await.unwrap();
        let growth = peak.saturating_sub(self.base_rss);
        println!(
            "FIGURE attack={attack} rss_growth_mib={:.1} health_max_ms={} health_failures={failures}",
            growth as f64 / MIB as f64,
            slowest.as_millis()
        );
        if target.external() {
            return;
        }
        assert!(
            growth < max_growth,
            "{attack}: memory grew {} MiB (bound {} MiB)",
            growth / MIB,
            max_growth / MIB
        );
        assert_eq!(failures, 0, "{attack}: /health failed during the attack");
        assert!(
            slowest < HEALTH_WITHIN,
            "{attack}: /health took {slowest:?} during the attack"
        );
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Registers a peer and announces a small file with the API key: the honest action.
/// Runs one attack (alone: memory is measured for the whole process) against a tracker started
/// with `args`, within `secs` seconds, and stops the tracker after it.
async fn attack(secs: u64, args: ServeArgs, run: impl AsyncFnOnce(&Target)) {
    let _serial = SERIAL.lock().await;
    within(secs, async {
        let target = Target::start(args).await;
        run(&target).await;
        target.stop().await;
    })
    .await;
}

/// [`attack`] for attacks measured only in process: skipped against an external tracker.
async fn in_process(secs: u64, args: ServeArgs, run: impl AsyncFnOnce(&Target)) {
    attack(secs, args, async |target| {
        if !target.external() {
            run(target).await;
        }
    })
    .await;
}

async fn honest_announce(target: &Target) {
    let (peer, token) = register_peer(target, 7000).await;
    let m = manifest("honest.bin", &content(100_000, 7));
    announce(target, &peer, &token, &m).await;
}

/// A read grant for `id` lasting `ttl_secs`, made with the API key.
async fn read_grant(target: &Target, id: &p2p_proto::FileId, ttl_secs: u64) -> String {
    let resp = http()
        .post(target.url(&format!("/api/files/{id}/grants?ttl_secs={ttl_secs}")))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json::<serde_json::Value>().await.unwrap()["grant"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `peer` (with its `token`) announces `m`, which must succeed.
async fn announce(target: &Target, peer: &p2p_proto::PeerId, token: &str, m: &p2p_proto::Manifest) {
    announce_from(&http(), target, peer, token, m).await;
}

/// [`announce`] with the client `c`.
async fn announce_from(
    c: &reqwest::Client,
    target: &Target,
    peer: &p2p_proto::PeerId,
    token: &str,
    m: &p2p_proto::Manifest,
) {
    let resp = c
        .post(target.url("/api/files/announce"))
        .header("X-API-Key", KEY)
        .header("X-Peer-Token", token)
        .json(&json!({"peer_id": peer, "file": m}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "honest announce");
}

/// Registers a fresh peer at 127.0.0.1:`port` with a proof of its key: its id and token.
async fn register_peer(target: &Target, port: u16) -> (p2p_proto::PeerId, String) {
    let peer = peer_id();
    let body = json!({"peer_id": peer, "addresses": ["127.0.0.1"], "port": port});
    let resp = register_proven(&http(), &target.base, KEY, &peer, body).await;
    assert_eq!(resp.status(), 200, "honest register");
    let answer: serde_json::Value = resp.json().await.unwrap();
    (peer, answer["peer_token"].as_str().unwrap().to_owned())
}

/// Reads until the peer closes (or `within` passes); whether it closed.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// How long after now the tracker closed `s`, if it did within `within`.
async fn closed_after(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    closed_within(s, within).await.then(|| started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_cost_nothing_before_authentication() {
    let mut args = serve_args();
    args.max_body_bytes = 64 * MIB as usize;
    attack(60, args, async |target| {
        let watch = Watch::start(target);
        // 24 sockets, each streaming up to 16 MiB of chunked body to an authenticated route
        // without credentials. The tracker answers 401 without reading; a tracker that
        // buffers bodies first holds 24 × 16 MiB.
        let sent = Arc::new(AtomicU64::new(0));
        let attackers: Vec<_> = (0..24)
            .map(|_| {
                let (addr, sent) = (target.addr, sent.clone());
                tokio::spawn(async move {
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    let head = "POST /api/files/announce HTTP/1.1\r\nHost: t\r\n\
                                Content-Type: application/json\r\n\
                                Transfer-Encoding: chunked\r\n\r\n";
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut chunk = b"10000\r\n".to_vec();
                    chunk.extend(std::iter::repeat_n(b' ', 0x10000));
                    chunk.extend(b"\r\n");
                    for _ in 0..256 {
                        let write = s.write_all(&chunk);
                        match tokio::time::timeout(Duration::from_secs(2), write).await {
                            Ok(Ok(())) => sent.fetch_add(0x10000, Ordering::Relaxed),
                            _ => return,
                        };
                    }
                })
            })
            .collect();
        for a in attackers {
            a.await.unwrap();
        }
        honest_announce(target).await;
        watch
            .finish(target, "chunked-body-before-auth", 32 * MIB)
            .await;
        println!(
            "FIGURE chunked-body-before-auth sent_mib={}",
            sent.load(Ordering::Relaxed) / MIB
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_chunked_body_is_cut_at_the_cap_while_streaming() {
    let mut args = serve_args();
    args.max_body_bytes = MIB as usize;
    in_process(60, args, async |target| {
        let watch = Watch::start(target);
        let mut s = TcpStream::connect(target.addr).await.unwrap();
        let head = format!(
            "POST /api/files/announce HTTP/1.1\r\nHost: t\r\nX-API-Key: {KEY}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut chunk = b"10000\r\n".to_vec();
        chunk.extend(std::iter::repeat_n(b' ', 0x10000));
        chunk.extend(b"\r\n");
        for _ in 0..64 {
            if s.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("payload_too_large"), "{answer}");
        honest_announce(target).await;
        watch
            .finish(target, "chunked-body-over-cap", 16 * MIB)
            .await;
    })
    .await;
}

/// Folder collection bodies sent for member grants (`POST /api/files/{C}/grants/members`, with
/// a valid read grant) are cut once they pass the largest collection (16 MiB), under a global
/// body cap four times that, and at most four are read at once (429 for more): eight sockets
/// each streaming 32 MiB make the tracker hold at most 4 × 16 MiB. The honest request works
/// after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_grant_bodies_are_cut_at_the_largest_collection() {
    use p2p_proto::collection::{Collection, Entry};
    let mut args = serve_args();
    args.max_body_bytes = 64 * MIB as usize;
    in_process(90, args, async |target| {
        let (peer, token) = register_peer(target, 7100).await;
        let member = manifest("member.bin", &content(10_000, 8));
        let folder = Collection::new(
            "folder",
            vec![Entry::file("member.bin", member.id, member.size, false)],
        )
        .unwrap()
        .encode();
        let list = manifest("folder.p2p-folder", &folder);
        for m in [&member, &list] {
            announce(target, &peer, &token, m).await;
        }
        let grant = read_grant(target, &list.id, 86_400).await;
        let path = format!("/api/files/{}/grants/members", list.id);

        let watch = Watch::start(target);
        let attackers: Vec<_> = (0..8)
            .map(|_| {
                let (addr, path, grant) = (target.addr, path.clone(), grant.clone());
                let head = format!(
                    "POST {path} HTTP/1.1\r\nHost: t\r\nX-Read-Grant: {grant}\r\n\
                     Content-Type: application/octet-stream\r\n\
                     Transfer-Encoding: chunked\r\n\r\n"
                );
                // 32 MiB.
                tokio::spawn(chunked_answer(addr, head, 0x10000, 512))
            })
            .collect();
        let mut cut = 0;
        for a in attackers {
            let answer = a.await.unwrap();
            if answer.starts_with("HTTP/1.1 413") {
                assert!(answer.contains("at most 16777216 bytes"), "{answer}");
                cut += 1;
            } else {
                assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
            }
        }
        assert!(cut >= 1, "no body was read and cut");
        let resp = http()
            .post(target.url(&path))
            .header("X-Read-Grant", &grant)
            .header("Content-Type", "application/octet-stream")
            .body(folder)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "the honest request");
        let answer: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(answer["grants"].as_array().unwrap().len(), 1);
        // 4 × 16 MiB of bodies and some slack. A buffer grown by doubling, copied as it grew,
        // had the tracker's memory grow 66-95 MiB over six runs; allocated once, 50-68 MiB.
        watch.finish(target, "member-grant-bodies", 80 * MIB).await;
        println!("FIGURE member-grant-bodies cut={cut} of 8");
    })
    .await;
}

/// Bodies are capped by route: a login, which anyone may send, at 16 KiB; other small
/// routes at 256 KiB; only announces and folder collections at `--max-body-bytes`. Sixty-four
/// unauthenticated logins each streaming 1 MiB are all cut with 413 at 16 KiB, a declared
/// length over it is refused before any byte is read, and an honest login still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_bodies_are_cut_at_a_few_kib() {
    let mut args = serve_args();
    args.max_body_bytes = 64 * MIB as usize;
    in_process(60, args, async |target| {
        let watch = Watch::start(target);
        let attackers: Vec<_> = (0..64)
            .map(|_| {
                let addr = target.addr;
                let head = "POST /api/auth/login HTTP/1.1\r\nHost: t\r\n\
                            Content-Type: application/json\r\n\
                            Transfer-Encoding: chunked\r\n\r\n";
                // 1 MiB.
                tokio::spawn(chunked_answer(addr, head.to_owned(), 0x4000, 64))
            })
            .collect();
        for a in attackers {
            let answer = a.await.unwrap();
            assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
            assert!(answer.contains("larger than 16384 bytes"), "{answer}");
        }
        // Declared: refused before the body is read.
        let mut s = TcpStream::connect(target.addr).await.unwrap();
        s.write_all(
            b"POST /api/auth/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Content-Length: 1048576\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        let resp = http()
            .post(target.url("/api/auth/login"))
            .json(&json!({"api_key": KEY}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "the honest login");
        watch.finish(target, "login-bodies", 16 * MIB).await;
    })
    .await;
}

/// Large bodies share `--max-body-bytes-in-flight`: eight authenticated announces that each
/// send 20 MiB of a 30 MiB body and stall hold at most the budget (64 MiB) between them, so
/// at least five are cut with 429 while they stream. Meanwhile small requests go through; once
/// the stalled bodies are gone, a large one is read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_share_one_budget() {
    const SENT: usize = 20 << 20;
    let mut args = serve_args();
    args.max_body_bytes = 32 * MIB as usize;
    args.guard.max_body_bytes_in_flight = 64 * MIB as usize;
    in_process(90, args, async |target| {
        let (_, token) = register_peer(target, 7200).await;
        let watch = Watch::start(target);
        let (release, released) = tokio::sync::watch::channel(false);
        let (answers, mut answer) = tokio::sync::mpsc::channel::<String>(8);
        let head = format!(
            "POST /api/files/announce HTTP/1.1\r\nHost: t\r\nX-API-Key: {KEY}\r\n\
             X-Peer-Token: {token}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            30 << 20
        );
        let mut attackers = Vec::new();
        for _ in 0..8 {
            let (addr, head, answers) = (target.addr, head.clone(), answers.clone());
            let mut released = released.clone();
            attackers.push(tokio::spawn(async move {
                let s = TcpStream::connect(addr).await.unwrap();
                let (mut r, mut w) = s.into_split();
                w.write_all(head.as_bytes()).await.unwrap();
                // Sends until all is sent or the answer comes, then waits for the answer until
                // released: a stalled body holds its share until its socket goes.
                let (piece, mut sent) = (vec![b' '; 64 << 10], 0);
                let mut buf = vec![0u8; 4096];
                let mut n = None;
                while sent < SENT && n.is_none() {
                    tokio::select! {
                        biased;
                        got = r.read(&mut buf) => n = Some(got.unwrap_or(0)),
                        wrote = w.write_all(&piece) => match wrote {
                            Ok(()) => sent += piece.len(),
                            // Cut while writing: the answer may be waiting still.
                            Err(_) => {
                                let read = tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf));
                                n = Some(read.await.ok().and_then(Result::ok).unwrap_or(0));
                            }
                        },
                    }
                }
                if n.is_none() {
                    tokio::select! {
                        got = r.read(&mut buf) => n = Some(got.unwrap_or(0)),
                        _ = released.wait_for(|r| *r) => {}
                    }
                }
                if let Some(n) = n {
                    let _ = answers.send(String::from_utf8_lossy(&buf[..n]).into_owned()).await;
                }
                let _ = released.wait_for(|r| *r).await;
                drop((r, w));
            }));
        }
        // 64 MiB hold at most three bodies of 20 MiB (less the free MiB of each).
        for _ in 0..5 {
            let cut = tokio::time::timeout(Duration::from_secs(30), answer.recv())
                .await
                .expect("five bodies cut")
                .unwrap();
            assert!(cut.starts_with("HTTP/1.1 429"), "{cut}");
            assert!(cut.contains("too many large request bodies"), "{cut}");
        }
        // Small requests need none of the budget.
        honest_announce(target).await;
        release.send(true).unwrap();
        for a in attackers {
            a.await.unwrap();
        }
        // A large body is read (and refused as malformed) once the stalled ones have let go
        // (which the tracker sees a moment after their sockets close). One cut while it was
        // sent may end in a reset rather than its 429: that is tried again too.
        let mut status = 0;
        for _ in 0..100 {
            let sent = http()
                .post(target.url("/api/files/announce"))
                .header("X-API-Key", KEY)
                .header("X-Peer-Token", &token)
                .header("Content-Type", "application/json")
                .body(vec![b' '; 12 << 20])
                .send()
                .await;
            status = sent.map_or(0, |r| r.status().as_u16());
            if status != 429 && status != 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(status, 400, "the large body once the budget is free");
        // The budget and a free MiB per body; 160 MiB and more without the budget.
        watch.finish(target, "body-budget", 112 * MIB).await;
    })
    .await;
}

/// Sends `head` on a fresh socket, then a chunked body of `pieces` chunks of `piece` bytes
/// (or until the tracker stops reading), while the answer is read as soon as it comes; the
/// answer's first 4 KiB.
async fn chunked_answer(addr: SocketAddr, head: String, piece: usize, pieces: usize) -> String {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    w.write_all(head.as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        let mut chunk = format!("{piece:x}\r\n").into_bytes();
        chunk.extend(std::iter::repeat_n(b'x', piece));
        chunk.extend(b"\r\n");
        for _ in 0..pieces {
            let write = w.write_all(&chunk);
            match tokio::time::timeout(Duration::from_secs(2), write).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    });
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), r.read(&mut answer))
        .await
        .unwrap()
        .unwrap_or(0);
    writer.abort();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// A WebSocket handshake on a raw socket; the socket, upgraded (or not: the status line).
async fn raw_ws(addr: SocketAddr, path: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") && got.len() < 8192 {
        if s.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        got.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    (s, status)
}

/// A masked client frame (mask key zero, so the payload goes as is).
fn ws_frame(first: bool, fin: bool, payload: &[u8]) -> Vec<u8> {
    let opcode = if first { 0x2 } else { 0x0 };
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    f.push(0x80 | 126);
    f.extend((payload.len() as u16).to_be_bytes());
    f.extend([0, 0, 0, 0]);
    f.extend(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_websockets_cannot_send_big_messages() {
    attack(60, serve_args(), async |target| {
        let watch = Watch::start(target);
        // 12 sockets without credentials, each sending a 16 MiB first message in 60 000-byte
        // fragments. The feed takes 8 KiB messages; an uncapped one buffers them all.
        let attackers: Vec<_> = (0..12)
            .map(|_| {
                let addr = target.addr;
                tokio::spawn(async move {
                    let (mut s, status) = raw_ws(addr, "/ws").await;
                    assert!(status.contains("101"), "{status}");
                    let payload = vec![b'x'; 60_000];
                    for i in 0..280 {
                        let frame = ws_frame(i == 0, false, &payload);
                        let write = s.write_all(&frame);
                        match tokio::time::timeout(Duration::from_secs(2), write).await {
                            Ok(Ok(())) => {}
                            _ => return,
                        }
                    }
                })
            })
            .collect();
        for a in attackers {
            a.await.unwrap();
        }
        // The honest client: the feed with a token.
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws?token={KEY}", target.addr))
                .await
                .unwrap();
        use futures_util::StreamExt;
        let hello = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(hello.to_text().unwrap().contains("hello"));
        watch
            .finish(target, "ws-fragmented-first-message", 32 * MIB)
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_waiting_to_authenticate_are_capped() {
    let mut args = serve_args();
    args.guard.max_pending_auth = 64;
    attack(60, args, async |target| {
        let watch = Watch::start(target);
        let mut waiting = Vec::new();
        let mut refused = 0;
        for _ in 0..200 {
            let (s, status) = raw_ws(target.addr, "/ws").await;
            if status.contains("101") {
                waiting.push(s);
            } else {
                assert!(status.contains("429"), "{status}");
                refused += 1;
            }
        }
        println!(
            "FIGURE pending-auth-cap waiting={} refused={refused}",
            waiting.len()
        );
        if !target.external() {
            assert_eq!(waiting.len(), 64);
        }
        // Credentials in the URL need no waiting room.
        let (_ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws?token={KEY}", target.addr))
                .await
                .unwrap();
        watch.finish(target, "ws-pending-auth", 16 * MIB).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_bounded_and_throttled() {
    attack(90, serve_args(), async |target| {
        let watch = Watch::start(target);
        // 150 concurrent wrong passwords for one account. Each check is argon2id (19 MiB);
        // unbounded, they all run at once.
        let c = http();
        let guesses: Vec<_> = (0..150)
            .map(|i| {
                let (c, url) = (c.clone(), target.url("/api/auth/login"));
                tokio::spawn(async move {
                    c.post(url)
                        .json(&json!({"username": ADMIN, "password": format!("guess {i}")}))
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for g in guesses {
            statuses.push(g.await.unwrap());
        }
        let throttled = statuses.iter().filter(|s| **s == 429).count();
        println!(
            "FIGURE login-flood throttled={throttled} refused={}",
            statuses.iter().filter(|s| **s == 401).count()
        );
        // Other accounts and API keys still log in.
        let resp = c
            .post(target.url("/api/auth/login"))
            .json(&json!({"api_key": KEY}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // Two argon2 checks at a time, each thread keeping its 19 MiB: 50 MiB here. With the
        // memory allocated afresh per check, the allocator kept 183-221 MiB (2.9 GiB with
        // the checks unbounded, issue #18).
        watch.finish(target, "login-flood", 80 * MIB).await;
        if !target.external() {
            assert!(throttled >= 100, "{statuses:?}");
            assert!(
                statuses.iter().all(|s| *s == 401 || *s == 429),
                "{statuses:?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_connections_are_closed() {
    let mut args = serve_args();
    args.guard.header_timeout_secs = 1;
    attack(60, args, async |target| {
        let watch = Watch::start(target);
        // 300 sockets sending a request head one byte at a time, 100 saying nothing.
        let window = 8;
        let attackers: Vec<_> = (0..400)
            .map(|i| {
                let addr = target.addr;
                tokio::spawn(async move {
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    let started = Instant::now();
                    if i >= 300 {
                        return closed_after(&mut s, Duration::from_secs(window)).await;
                    }
                    let head = b"GET /api/stats HTTP/1.1\r\nHost: t\r\nX-Padding: ";
                    for byte in head.iter().chain(std::iter::repeat(&b'a')) {
                        if started.elapsed() > Duration::from_secs(window) {
                            return None;
                        }
                        if s.write_all(&[*byte]).await.is_err()
                            || closed_within(&mut s, Duration::from_millis(250)).await
                        {
                            return Some(started.elapsed());
                        }
                    }
                    None
                })
            })
            .collect();
        let mut closed = 0;
        let mut silent: Vec<Option<Duration>> = Vec::new();
        for (i, a) in attackers.into_iter().enumerate() {
            let after = a.await.unwrap();
            closed += usize::from(after.is_some());
            if i >= 300 {
                silent.push(after);
            }
        }
        let silent_closed = silent.iter().flatten().count();
        let mut times: Vec<Duration> = silent.iter().flatten().copied().collect();
        times.sort();
        let at = |q: usize| times.get(times.len().saturating_sub(1) * q / 100).copied();
        println!(
            "FIGURE slowloris closed={closed}/400 silent_closed={silent_closed}/100 within_s={window} \
             silent_close_p50={:?} p98={:?} max={:?}",
            at(50),
            at(98),
            times.last()
        );
        honest_announce(target).await;
        watch.finish(target, "slowloris", 16 * MIB).await;
        if !target.external() {
            // Each is closed about a second after it connects. With tokio's default listen
            // backlog (128) up to a quarter of these 400 sockets stayed open all 8 s: the
            // kernel had dropped their final ACK and the tracker only accepted them after
            // SYN-ACK retransmits. A tracker without the timeout leaves them all open.
            assert_eq!(silent_closed, 100, "silent sockets left open: {}", 100 - silent_closed);
            assert_eq!(closed, 400, "slow sockets left open: {}", 400 - closed);
        }
    })
    .await;
}

/// CPU time (user + system) of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 (11 and 12 after the command name), in 1/100 s.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_without_spinning() {
    let mut args = serve_args();
    args.guard.max_connections = 32;
    args.guard.header_timeout_secs = 1;
    in_process(60, args, async |target| {
        let mut held = Vec::new();
        for _ in 0..96 {
            held.push(TcpStream::connect(target.addr).await.unwrap());
        }
        let before = cpu_time();
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let busy =
            cpu_time().saturating_sub(before).as_secs_f64() / started.elapsed().as_secs_f64();
        println!("FIGURE connection-cap cpu_share={busy:.2}");
        assert!(
            busy < 0.5,
            "the server spins at the cap: {busy:.2} of a core"
        );
        // The silent sockets time out slot by slot; honest work then goes through.
        drop(held);
        honest_announce(target).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarded_for_entries_do_not_dodge_the_rate_limit() {
    let mut args = serve_args();
    args.trust_proxy = true;
    args.rate_limit_rps = 1;
    args.rate_limit_burst = Some(3);
    attack(30, args, async |target| {
        let c = http();
        let mut limited = 0;
        for i in 0..20 {
            let resp = c
                .get(target.url("/api/stats"))
                .header("X-API-Key", KEY)
                // What the client wrote, then what the (one) trusted proxy appended.
                .header("X-Forwarded-For", format!("10.9.{i}.1, 192.0.2.7"))
                .send()
                .await
                .unwrap();
            limited += usize::from(resp.status() == 429);
        }
        println!("FIGURE forwarded-for-rotation limited={limited}/20");
        if !target.external() {
            assert!(limited >= 15, "only {limited} of 20 were limited");
            // Another client behind the proxy is not.
            let resp = c
                .get(target.url("/api/stats"))
                .header("X-API-Key", KEY)
                .header("X-Forwarded-For", "192.0.2.8")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scrapes_share_one_query_a_second_and_can_need_a_token() {
    let mut args = serve_args();
    args.guard.metrics_token = Some("scrape-secret".into());
    in_process(30, args, async |target| {
        let c = http();
        let scrape = || async {
            c.get(target.url("/metrics"))
                .bearer_auth("scrape-secret")
                .send()
                .await
                .unwrap()
        };
        let total = |text: &str| {
            text.lines()
                .find(|l| l.starts_with("p2p_tracker_peers "))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap()
        };
        let first = total(&scrape().await.text().await.unwrap());
        // A burst of scrapes is cheap: at most one stats query a second.
        let watch = Watch::start(target);
        let burst: Vec<_> = (0..200)
            .map(|_| {
                let (c, url) = (c.clone(), target.url("/metrics"));
                tokio::spawn(async move {
                    c.get(url)
                        .bearer_auth("scrape-secret")
                        .send()
                        .await
                        .unwrap()
                        .status()
                })
            })
            .collect();
        for b in burst {
            assert_eq!(b.await.unwrap(), 200);
        }
        watch.finish(target, "metrics-scrape-burst", 32 * MIB).await;
        // The figure is cached: a new peer shows up only once the second has passed.
        honest_announce(target).await;
        let started = Instant::now();
        let mut seen = first;
        while seen == first && started.elapsed() < Duration::from_secs(5) {
            seen = total(&scrape().await.text().await.unwrap());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen, first + 1);
        // Without the token: 401.
        let resp = c.get(target.url("/metrics")).send().await.unwrap();
        assert_error(resp, 401, "unauthorized").await;
    })
    .await;
}

mod relay {
    //! Attacks on the relay hub, with raw relay clients.

    use super::*;
    use curve25519_dalek::montgomery::MontgomeryPoint;
    use futures_util::{SinkExt, StreamExt};
    use p2p_proto::PeerId;
    use p2p_proto::relay::{CloseCode, RelayFrame, proof_mac};
    use tokio_tungstenite::tungstenite::Message;

    type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

    /// A peer's static key, from a seed.
    pub fn identity(seed: u64) -> ([u8; 32], PeerId) {
        // Not in the first byte: clamping clears its low bits.
        let mut secret = [7u8; 32];
        secret[8..16].copy_from_slice(&seed.to_le_bytes());
        (
            secret,
            PeerId(MontgomeryPoint::mul_base_clamped(secret).to_bytes()),
        )
    }

    pub async fn next(ws: &mut Ws) -> Option<RelayFrame> {
        loop {
            match ws.next().await? {
                Ok(Message::Binary(b)) => return RelayFrame::decode(b).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    pub async fn send(ws: &mut Ws, frame: &RelayFrame) -> bool {
        ws.send(Message::Binary(frame.to_vec().into()))
            .await
            .is_ok()
    }

    /// Attaches as the peer of `seed`; the socket and what the hub said after the proof.
    pub async fn attach(addr: SocketAddr, seed: u64) -> (Ws, Option<RelayFrame>) {
        attach_with(addr, seed, KEY).await
    }

    /// [`attach`] with the API key `key`.
    pub async fn attach_with(addr: SocketAddr, seed: u64, key: &str) -> (Ws, Option<RelayFrame>) {
        attach_as(addr, identity(seed).0, &format!("token={key}")).await
    }

    /// Attaches as the peer whose private key is `secret`, with `credential` (`token=…` or
    /// `grant=…`) in the query; the socket and what the hub said after the proof.
    async fn attach_as(
        addr: SocketAddr,
        secret: [u8; 32],
        credential: &str,
    ) -> (Ws, Option<RelayFrame>) {
        let id = PeerId(MontgomeryPoint::mul_base_clamped(secret).to_bytes());
        let url = format!("ws://{addr}/relay?peer_id={id}&{credential}");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let Some(RelayFrame::Challenge { server_key, nonce }) = next(&mut ws).await else {
            panic!("no challenge");
        };
        let shared = MontgomeryPoint(server_key).mul_clamped(secret).to_bytes();
        let mac = proof_mac(&shared, &server_key, &nonce, &id);
        send(&mut ws, &RelayFrame::Proof { peer_id: id, mac }).await;
        let answer = next(&mut ws).await;
        (ws, answer)
    }

    /// A share link's receiver, with a read grant instead of credentials, may dial the peers
    /// of the grant's file and nobody else; nobody may dial it; it is detached when the grant
    /// expires, and an expired grant no longer attaches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_grant_dials_its_file_s_peers_only_until_it_expires() {
        in_process(60, serve_args(), async |target| {
            let (seeder, token) = register_peer(target, 7200).await;
            let m = manifest("granted.bin", &content(5000, 3));
            announce(target, &seeder, &token, &m).await;
            let grant = read_grant(target, &m.id, 2).await;
            let (mut seeder_ws, answer) =
                attach_as(target.addr, peer_secret(&seeder), &format!("token={KEY}")).await;
            assert_eq!(answer, Some(RelayFrame::Attached));
            let (mut other_ws, _) = attach(target.addr, 50).await;
            let other = identity(50).1;
            let holder = peer_id();
            let (mut holder_ws, answer) =
                attach_as(target.addr, peer_secret(&holder), &format!("grant={grant}")).await;
            assert_eq!(answer, Some(RelayFrame::Attached));
            // Another attached peer is as if absent, and nobody reaches the holder.
            send(
                &mut holder_ws,
                &RelayFrame::Open {
                    stream: 1,
                    to: other,
                },
            )
            .await;
            let unknown = |stream| RelayFrame::Close {
                stream,
                code: CloseCode::UnknownPeer,
            };
            assert_eq!(next(&mut holder_ws).await, Some(unknown(1)));
            send(
                &mut other_ws,
                &RelayFrame::Open {
                    stream: 1,
                    to: holder,
                },
            )
            .await;
            assert_eq!(next(&mut other_ws).await, Some(unknown(1)));
            // The file's peer: a tunnel.
            honest_tunnel(&mut holder_ws, &mut seeder_ws, seeder, 3).await;
            // At the grant's expiry (2 s) the hub says so and ends the connection.
            loop {
                match tokio::time::timeout(Duration::from_secs(10), next(&mut holder_ws))
                    .await
                    .expect("detached at the expiry")
                {
                    Some(RelayFrame::Error { code, message }) => {
                        assert_eq!(code, p2p_proto::relay::error_code::EXPIRED, "{message}");
                        break;
                    }
                    Some(_) => {}
                    None => panic!("closed without saying why"),
                }
            }
            // Once the tracker's clock passes the expiry, the grant no longer attaches.
            target.local.as_ref().unwrap().0.clock.advance_ms(2_000);
            let id = holder;
            let url = format!("ws://{}/relay?peer_id={id}&grant={grant}", target.addr);
            assert!(tokio_tungstenite::connect_async(url).await.is_err());
            // The key's peers are unaffected.
            honest_tunnel(&mut other_ws, &mut seeder_ws, seeder, 5).await;
        })
        .await;
    }

    /// Opens a stream from `a` to `b`, sends `payload` and checks that `b` gets it.
    pub async fn honest_tunnel(a: &mut Ws, b: &mut Ws, to: PeerId, stream: u32) {
        send(a, &RelayFrame::Open { stream, to }).await;
        let data = bytes::Bytes::from_static(b"honest bytes");
        send(
            a,
            &RelayFrame::Data {
                stream,
                data: data.clone(),
            },
        )
        .await;
        let mut far = None;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), next(b))
                .await
                .unwrap()
            {
                Some(RelayFrame::Incoming { stream, .. }) => far = Some(stream),
                Some(RelayFrame::Data { stream, data: got }) if Some(stream) == far => {
                    assert_eq!(got, data);
                    return;
                }
                Some(_) => {}
                None => panic!("the honest peer's relay connection closed"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_opens_is_capped_per_connection() {
        in_process(60, serve_args(), async |target| {
            let (mut victim, _) = attach(target.addr, 1).await;
            let (mut attacker, _) = attach(target.addr, 2).await;
            let victim_id = identity(1).1;
            let (mut feed, _) =
                tokio_tungstenite::connect_async(format!("ws://{}/ws?token={KEY}", target.addr))
                    .await
                    .unwrap();
            let watch = Watch::start(target);
            // 100 000 Opens on one connection (the issue sent a million): one tunnel each,
            // and an event each to every feed client, without a cap.
            let sender = tokio::spawn(async move {
                for stream in 0..100_000u32 {
                    if !send(
                        &mut attacker,
                        &RelayFrame::Open {
                            stream,
                            to: victim_id,
                        },
                    )
                    .await
                    {
                        break;
                    }
                }
                attacker
            });
            let mut attacker = sender.await.unwrap();
            // Drain what the victim got (Incoming for the tunnels that opened).
            let mut incoming = 0;
            while let Ok(Some(frame)) =
                tokio::time::timeout(Duration::from_millis(300), next(&mut victim)).await
            {
                incoming += usize::from(matches!(frame, RelayFrame::Incoming { .. }));
            }
            let tunnels = target
                .local
                .as_ref()
                .unwrap()
                .0
                .tracker
                .state
                .metrics
                .relay_tunnels
                .get();
            println!("FIGURE relay-open-flood tunnels={tunnels} incoming={incoming}");
            assert!(tunnels <= 64, "{tunnels} tunnels open");
            // Events on the feed are paced.
            let mut events = 0;
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_millis(300), feed.next()).await
            {
                events += 1;
            }
            assert!(events < 400, "{events} events reached the feed");
            // Honest peers still tunnel.
            let (mut a, _) = attach(target.addr, 3).await;
            let (mut b, _) = attach(target.addr, 4).await;
            honest_tunnel(&mut a, &mut b, identity(4).1, 1).await;
            let _ = send(
                &mut attacker,
                &RelayFrame::Close {
                    stream: 0,
                    code: CloseCode::Gone,
                },
            )
            .await;
            watch.finish(target, "relay-open-flood", 64 * MIB).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_that_stops_stalls_nobody_else() {
        in_process(60, serve_args(), async |target| {
            let (mut sender, _) = attach(target.addr, 11).await;
            let (_stalled, _) = attach(target.addr, 12).await; // never read again
            let (mut honest, _) = attach(target.addr, 13).await;
            let watch = Watch::start(target);
            // Fill the stalled peer: eight streams of a full window each (64 MiB).
            let stalled_id = identity(12).1;
            let chunk = bytes::Bytes::from(vec![0u8; 64 * 1024]);
            for stream in 0..8u32 {
                send(
                    &mut sender,
                    &RelayFrame::Open {
                        stream,
                        to: stalled_id,
                    },
                )
                .await;
                for _ in 0..128 {
                    let data = chunk.clone();
                    if !send(&mut sender, &RelayFrame::Data { stream, data }).await {
                        break;
                    }
                }
            }
            // The same sender's tunnel to an honest peer still carries bytes at once.
            honest_tunnel(&mut sender, &mut honest, identity(13).1, 100).await;
            watch.finish(target, "relay-slow-reader", 64 * MIB).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_key_attaches_a_bounded_number_of_ids() {
        let mut args = serve_args();
        args.relay.relay_max_peers_per_key = 16;
        in_process(60, args, async |target| {
            let watch = Watch::start(target);
            let mut held = Vec::new();
            let mut refused = 0;
            for seed in 100..140 {
                let (ws, answer) = attach(target.addr, seed).await;
                match answer {
                    Some(RelayFrame::Attached) => held.push(ws),
                    _ => refused += 1,
                }
            }
            println!(
                "FIGURE relay-ids-per-key attached={} refused={refused}",
                held.len()
            );
            assert_eq!(held.len(), 16);
            // Once one leaves, another may attach.
            drop(held.pop());
            let mut attached = false;
            for _ in 0..50 {
                if matches!(attach(target.addr, 200).await.1, Some(RelayFrame::Attached)) {
                    attached = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(attached);
            watch.finish(target, "relay-ids-per-key", 32 * MIB).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn empty_data_frames_close_their_tunnel() {
        in_process(60, serve_args(), async |target| {
            let (mut a, _) = attach(target.addr, 21).await;
            let (mut b, _) = attach(target.addr, 22).await;
            send(
                &mut a,
                &RelayFrame::Open {
                    stream: 1,
                    to: identity(22).1,
                },
            )
            .await;
            let empty = bytes::Bytes::new();
            send(
                &mut a,
                &RelayFrame::Data {
                    stream: 1,
                    data: empty,
                },
            )
            .await;
            let closed = loop {
                match tokio::time::timeout(Duration::from_secs(5), next(&mut a))
                    .await
                    .unwrap()
                {
                    Some(RelayFrame::Close { stream: 1, code }) => break code,
                    Some(_) => {}
                    None => panic!("connection closed"),
                }
            };
            assert_eq!(closed, CloseCode::ProtocolViolation);
            honest_tunnel(&mut a, &mut b, identity(22).1, 3).await;
        })
        .await;
    }

    /// One side's part of a punch, from its `PunchBind`.
    #[derive(Debug, Clone, Copy)]
    pub struct PunchTicket {
        pub session: [u8; 16],
        pub token: [u8; 16],
        pub rendezvous: SocketAddr,
    }

    /// Waits for the `PunchBind` on `ws` (an answer to our request, or an invitation).
    pub async fn punch_ticket(ws: &mut Ws, tracker: SocketAddr) -> PunchTicket {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), next(ws))
                .await
                .expect("a PunchBind in time")
            {
                Some(RelayFrame::PunchBind {
                    session,
                    token,
                    udp_port,
                    ..
                }) => {
                    return PunchTicket {
                        session,
                        token,
                        rendezvous: SocketAddr::new(tracker.ip(), udp_port),
                    };
                }
                Some(_) => {}
                None => panic!("relay connection closed"),
            }
        }
    }

    /// The honest side of a punch, as the peer runs it (peer/src/net/punch.rs): `Bind` every
    /// 200 ms until `Check`, `Confirm` until `Bound` (a tracker without checks answers `Bound`
    /// to the `Bind`), then on the hub's `PunchGo` a probe to its address every 50 ms until the
    /// other side's probe arrives or 3 s pass. No go within 5 s: `None`. Otherwise the go's
    /// address and whether a probe came back from it.
    pub async fn honest_punch(ws: &mut Ws, t: PunchTicket) -> Option<(SocketAddr, bool)> {
        use p2p_proto::punch::PunchPacket;
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut packet = PunchPacket::Bind { token: t.token }.to_vec();
        let mut bound = false;
        let mut buf = [0u8; 128];
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let bind_deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let go = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(bind_deadline) => return None,
                _ = tick.tick(), if !bound => {
                    socket.send_to(&packet, t.rendezvous).await.unwrap();
                }
                frame = next(ws) => match frame {
                    Some(RelayFrame::PunchGo { session, addr }) if session == t.session => break addr,
                    Some(_) => {}
                    None => return None,
                },
                r = socket.recv_from(&mut buf) => {
                    let (n, _) = r.unwrap();
                    match PunchPacket::decode(&buf[..n]) {
                        Ok(PunchPacket::Check { cookie }) => {
                            packet = PunchPacket::Confirm { token: t.token, cookie }.to_vec();
                            socket.send_to(&packet, t.rendezvous).await.unwrap();
                        }
                        Ok(PunchPacket::Bound { .. }) => bound = true,
                        _ => {}
                    }
                }
            }
        };
        let probe = PunchPacket::Probe { session: t.session }.to_vec();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Some((go, false)),
                _ = tick.tick() => { let _ = socket.send_to(&probe, go).await; }
                r = socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r
                        && from == go
                        && PunchPacket::decode(&buf[..n]) == Ok(PunchPacket::Probe { session: t.session })
                    {
                        // Let the other side hear us too, as the peer does.
                        for _ in 0..3 {
                            let _ = socket.send_to(&probe, go).await;
                        }
                        return Some((go, true));
                    }
                }
            }
        }
    }

    /// Two honest peers punch to each other through the tracker; each learns the other's
    /// address and hears its probe.
    pub async fn honest_punch_pair(target: &Target, key: &str, seeds: (u64, u64)) {
        let (mut a, _) = attach_with(target.addr, seeds.0, key).await;
        let (mut b, _) = attach_with(target.addr, seeds.1, key).await;
        let to = identity(seeds.1).1;
        send(&mut a, &RelayFrame::PunchRequest { request: 1, to }).await;
        let ta = punch_ticket(&mut a, target.addr).await;
        let tb = punch_ticket(&mut b, target.addr).await;
        let (ra, rb) = tokio::join!(honest_punch(&mut a, ta), honest_punch(&mut b, tb));
        let (ra, rb) = (ra.expect("a got its go"), rb.expect("b got its go"));
        assert!(ra.1 && rb.1, "both heard the other's probe: {ra:?} {rb:?}");
    }

    /// Datagrams that reach `socket` until it has been quiet for 500 ms.
    async fn count_datagrams(socket: &tokio::net::UdpSocket) -> usize {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await
        {
            n += 1;
        }
        n
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_forged_bind_aims_nothing_at_a_third_party() {
        attack(60, serve_args(), async |target| {
            let watch = Watch::start(target);
            let (mut attacker, _) = attach(target.addr, 31).await;
            let (mut honest, _) = attach(target.addr, 32).await;
            // The third party: any address the attacker names, here a socket of our own.
            let victim = tokio::net::UdpSocket::bind("127.0.0.77:0").await.unwrap();
            let to = identity(32).1;
            send(&mut attacker, &RelayFrame::PunchRequest { request: 1, to }).await;
            let forged = punch_ticket(&mut attacker, target.addr).await;
            let invited = punch_ticket(&mut honest, target.addr).await;
            // The attacker's Bind with the victim's source address (sent from the victim's
            // socket: to the tracker that is what a forged source looks like). The invited
            // peer binds honestly and probes wherever the hub says.
            let bind = p2p_proto::punch::PunchPacket::Bind {
                token: forged.token,
            };
            victim
                .send_to(&bind.to_vec(), forged.rendezvous)
                .await
                .unwrap();
            let went = honest_punch(&mut honest, invited).await;
            let one_bind = count_datagrams(&victim).await;
            // A hundred more forged Binds on the same token.
            for _ in 0..100 {
                victim
                    .send_to(&bind.to_vec(), forged.rendezvous)
                    .await
                    .unwrap();
            }
            let hundred_binds = count_datagrams(&victim).await;
            println!(
                "FIGURE attack=punch-forged-bind victim_datagrams_one_bind={one_bind} \
                 victim_datagrams_100_more_binds={hundred_binds} honest_go={:?}",
                went.map(|(addr, _)| addr)
            );
            if !target.external() {
                assert!(
                    one_bind <= 1,
                    "one forged Bind: {one_bind} datagrams at the victim"
                );
                assert!(
                    went.is_none(),
                    "the hub sent the victim's address: {went:?}"
                );
                assert!(
                    hundred_binds <= usize::from(p2p_tracker::relay::punch::MAX_CHECKS_PER_SIDE),
                    "{hundred_binds} datagrams at the victim"
                );
            }
            // Honest peers still punch.
            honest_punch_pair(target, KEY, (33, 34)).await;
            watch.finish(target, "punch-forged-bind", 32 * MIB).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_credential_cannot_fill_the_punch_table() {
        const OTHER_KEY: &str = "test-key-other-principal";
        let mut args = serve_args();
        args.api_keys.push(OTHER_KEY.to_owned());
        args.relay.relay_max_peers_per_key = 100;
        attack(90, args, async |target| {
            let watch = Watch::start(target);
            // The attack: 65 made-up ids under one key, 64 punch requests each, all
            // to one more id of the same key (which reads what it gets).
            let (mut sink, _) = attach(target.addr, 500).await;
            let to = identity(500).1;
            let drain = tokio::spawn(async move { while next(&mut sink).await.is_some() {} });
            let mut granted = 0usize;
            let mut refused = 0usize;
            let mut held = Vec::new();
            for seed in 501..566 {
                let (mut ws, answer) = attach(target.addr, seed).await;
                assert!(matches!(answer, Some(RelayFrame::Attached)), "{answer:?}");
                for request in 1..=64u32 {
                    send(&mut ws, &RelayFrame::PunchRequest { request, to }).await;
                }
                let mut answered = 0;
                while answered < 64 {
                    match tokio::time::timeout(Duration::from_secs(5), next(&mut ws))
                        .await
                        .expect("an answer to each request")
                    {
                        Some(RelayFrame::PunchBind { request, .. }) if request != 0 => {
                            granted += 1;
                            answered += 1;
                        }
                        Some(RelayFrame::PunchFailed { .. }) => {
                            refused += 1;
                            answered += 1;
                        }
                        Some(_) => {}
                        None => panic!("attacker connection closed"),
                    }
                }
                held.push(ws);
            }
            println!("FIGURE attack=punch-table-fill sessions_granted={granted} refused={refused}");
            if !target.external() {
                assert!(
                    granted <= p2p_tracker::relay::punch::MAX_SESSIONS_PER_PRINCIPAL,
                    "one credential holds {granted} sessions"
                );
            }
            // Another credential's peers still punch, at once.
            honest_punch_pair(target, OTHER_KEY, (600, 601)).await;
            drop(held);
            drain.abort();
            watch.finish(target, "punch-table-fill", 32 * MIB).await;
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announce_stores_a_bounded_manifest() {
    let mut args = serve_args();
    args.guard.max_file_bytes = 1 << 30;
    args.max_body_bytes = 64 * MIB as usize;
    attack(60, args, async |target| {
        let c = http();
        let (peer, token) = register_peer(target, 7000).await;
        // 200 000 chunks of 16 MiB (3.2 TiB), as in the issue: a 27 MB body, made before the
        // memory is watched so that what is measured is the tracker's.
        let hashes: Vec<String> = (0..200_000u32)
            .map(|i| format!("{:064x}", u128::from(i) + 1))
            .collect();
        let chain: Vec<&String> = hashes.iter().skip(1).collect();
        let body = json!({
            "peer_id": peer,
            "file": {
                "id": "ab".repeat(32),
                "name": "huge.bin",
                "size": 200_000u64 * (16 << 20),
                "chunk_size": 16 << 20,
                "chunk_hashes": hashes,
                "merkle_root": "cd".repeat(32),
                "chain": chain,
            }
        });
        let body = serde_json::to_vec(&body).unwrap();
        drop(hashes);
        let watch = Watch::start(target);
        let resp = c
            .post(target.url("/api/files/announce"))
            .header("X-API-Key", KEY)
            .header("X-Peer-Token", &token)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        println!("FIGURE huge-manifest status={status}");
        // The same size in protocol chunks is over this tracker's file size limit.
        let mut m = manifest("big.bin", &content(10, 1));
        m.size = 2 << 30;
        let resp = c
            .post(target.url("/api/files/announce"))
            .header("X-API-Key", KEY)
            .header("X-Peer-Token", &token)
            .json(&json!({"peer_id": peer, "file": m}))
            .send()
            .await
            .unwrap();
        if !target.external() {
            assert_eq!(status, 400);
            let msg = assert_error(resp, 400, "bad_request").await;
            assert!(msg.contains("at most"), "{msg}");
        }
        honest_announce(target).await;
        // An authenticated 27 MB body is read and parsed before its chunk size is refused:
        // bounded by --max-body-bytes, not by the manifest it claims (80-88 MiB here, as the
        // JSON is parsed whole before it is checked).
        watch.finish(target, "huge-manifest", 160 * MIB).await;
    })
    .await;
}

/// Issue #18, "a peer's state belongs to its key": an API-key holder tries to take over
/// another peer's entry (re-register it elsewhere, heartbeat, announce and unannounce for it,
/// delete it) with no proof, its own key's proof, a proof for another id, a replayed proof,
/// no token, its own token and a forged one. Each is refused (401 `peer_proof` / `peer_token`,
/// 403 `forbidden`), the honest entry is unchanged, and the honest peer carries on. Also: a
/// flood of challenges costs no memory, stale nonces and tokens are refused, and an admin may
/// still remove a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_peers_entry_cannot_be_taken_over() {
    in_process(120, serve_args(), async |target| {
        let (t, _) = target.local.as_ref().unwrap();
        let c = http();
        let victim = peer_id();
        let challenge_json = challenge(&c, &target.base, KEY, &victim).await;
        let honest_proof = prove(peer_secret(&victim), &challenge_json);
        let body = json!({"peer_id": victim, "addresses": ["127.0.0.1"], "port": 7000,
                          "proof": honest_proof});
        let resp = t.post("/api/peers/register", &body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let victim_token = resp.json::<serde_json::Value>().await.unwrap()["peer_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let m = manifest("victim.bin", &content(100_000, 9));
        let announce = |token: &str, peer: &p2p_proto::PeerId, m: &p2p_proto::Manifest| {
            t.post("/api/files/announce", &json!({"peer_id": peer, "file": m}))
                .header("X-Peer-Token", token)
                .send()
        };
        assert_eq!(
            announce(&victim_token, &victim, &m).await.unwrap().status(),
            200
        );
        let entry = || async {
            let mut info = t.get_json(&format!("/api/peers/{victim}")).await;
            let swarm = t.get_json(&format!("/api/files/{}/peers", m.id)).await;
            // What the attacker must not change (last_seen moves only with the clock).
            for volatile in ["last_seen_ms", "online"] {
                info.as_object_mut().unwrap().remove(volatile);
            }
            (info, swarm)
        };
        let before = entry().await;
        assert_eq!(before.0["addresses"], json!(["127.0.0.1"]));

        let mallory = peer_id();
        let (_, mallory_token) = {
            let answer = t.register(&mallory, 6666).await;
            (mallory, answer["peer_token"].as_str().unwrap().to_owned())
        };
        // Mallory's token with the victim's id put in: the MAC no longer matches.
        let forged = format!("{}{}", hex::encode(victim.0), &mallory_token[64..]);
        let watch = Watch::start(target);
        let elsewhere = json!({"peer_id": victim, "addresses": ["127.66.66.66"], "port": 1});
        let with_proof = |proof: serde_json::Value| {
            let mut body = elsewhere.clone();
            body["proof"] = proof;
            body
        };
        let mut refused = std::collections::BTreeMap::<String, usize>::new();
        for round in 0..20 {
            let victim_challenge = challenge(&c, &target.base, KEY, &victim).await;
            let mallory_challenge = challenge(&c, &target.base, KEY, &mallory).await;
            let mut own_nonce = prove(peer_secret(&mallory), &mallory_challenge);
            own_nonce["mac"] = prove(peer_secret(&mallory), &victim_challenge)["mac"].clone();
            let registrations = [
                (
                    "register-no-proof",
                    elsewhere.clone(),
                    401,
                    "peer_proof",
                    "missing proof",
                ),
                (
                    "register-wrong-key",
                    with_proof(prove(peer_secret(&mallory), &victim_challenge)),
                    401,
                    "peer_proof",
                    "does not match",
                ),
                (
                    "register-other-ids-nonce",
                    with_proof(own_nonce),
                    401,
                    "peer_proof",
                    "not issued by this tracker for this peer id",
                ),
                (
                    "register-replayed-proof",
                    with_proof(honest_proof.clone()),
                    401,
                    "peer_proof",
                    "already used",
                ),
            ];
            for (name, body, status, code, says) in registrations {
                let resp = t.post("/api/peers/register", &body).send().await.unwrap();
                let msg = assert_error(resp, status, code).await;
                assert!(msg.contains(says), "{name}: {msg}");
                *refused.entry(name.to_owned()).or_default() += 1;
            }
            let beat =
                json!({"peer_id": victim, "connections": [{"peer_id": mallory, "path": "direct"}]});
            let bogus = manifest(&format!("bogus-{round}.bin"), &content(1000, round));
            let unannounce = format!("/api/files/{}/peers/{victim}", m.id);
            for (token, status, code) in [
                (None, 401, "peer_token"),
                (Some(mallory_token.as_str()), 403, "forbidden"),
                (Some(forged.as_str()), 401, "peer_token"),
            ] {
                let with = |r: reqwest::RequestBuilder| match token {
                    Some(tok) => r.header("X-Peer-Token", tok),
                    None => r,
                };
                let attempts = [
                    ("heartbeat", with(t.post("/api/peers/heartbeat", &beat))),
                    (
                        "announce",
                        with(t.post(
                            "/api/files/announce",
                            &json!({"peer_id": victim, "file": bogus}),
                        )),
                    ),
                    ("unannounce", with(t.delete(&unannounce))),
                    ("delete", with(t.delete(&format!("/api/peers/{victim}")))),
                ];
                for (name, req) in attempts {
                    let resp = req.send().await.unwrap();
                    assert_error(resp, status, code).await;
                    *refused
                        .entry(format!("{name}-{}", token.map_or("none", |_| "token")))
                        .or_default() += 1;
                }
            }
        }
        // A flood of challenges: nothing is kept per challenge.
        let flood = futures_util::future::join_all((0..8).map(|_| {
            let (c, base) = (c.clone(), target.base.clone());
            async move {
                for _ in 0..500 {
                    challenge(&c, &base, KEY, &peer_id()).await;
                }
            }
        }));
        flood.await;
        watch.finish(target, "peer-takeover", 16 * MIB).await;
        for (name, n) in &refused {
            println!("FIGURE attack=peer-takeover-{name} refused={n}");
        }

        // The victim's entry is as it was, and it carries on.
        assert_eq!(entry().await, before, "the honest entry is unchanged");
        let resp = t
            .post("/api/peers/heartbeat", &json!({"peer_id": victim}))
            .header("X-Peer-Token", &victim_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "the honest heartbeat");
        let own = manifest("victim-2.bin", &content(50_000, 10));
        assert_eq!(
            announce(&victim_token, &victim, &own)
                .await
                .unwrap()
                .status(),
            200
        );

        // A nonce is good for a minute.
        let stale = challenge(&c, &target.base, KEY, &victim).await;
        t.clock.advance_ms(60_000);
        let mut body = json!({"peer_id": victim, "addresses": ["127.0.0.1"], "port": 7000});
        body["proof"] = prove(peer_secret(&victim), &stale);
        let resp = t.post("/api/peers/register", &body).send().await.unwrap();
        let msg = assert_error(resp, 401, "peer_proof").await;
        assert!(msg.contains("expired"), "{msg}");
        // A token for its lifetime: then the peer proves its key again.
        t.clock.advance_ms(3_600_000);
        let resp = t
            .post("/api/peers/heartbeat", &json!({"peer_id": victim}))
            .header("X-Peer-Token", &victim_token)
            .send()
            .await
            .unwrap();
        let msg = assert_error(resp, 401, "peer_token").await;
        assert!(msg.contains("expired"), "{msg}");
        let fresh = register_proven(&c, &target.base, KEY, &victim, body).await;
        assert_eq!(fresh.status(), 200, "a fresh proof registers again");

        // A dashboard admin may remove any peer without its token.
        let login: serde_json::Value = c
            .post(target.url("/api/auth/login"))
            .json(&json!({"username": ADMIN, "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let resp = c
            .delete(target.url(&format!("/api/peers/{mallory}")))
            .bearer_auth(login["token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204, "admins remove peers");
    })
    .await;
}

/// Manifest squatting: a file id is the SHA-256 of the content, so the tracker cannot check a
/// manifest's chunk hashes or chain; it keeps every distinct manifest (variant) with its
/// announcers, and downloaders verify and fall back.
mod squatting {
    use super::*;

    use bytes::Bytes;
    use clap::Parser;
    use p2p_peer::Identity;
    use p2p_peer::config::DownloadCli;
    use p2p_peer::net::secure::{self, Role};
    use p2p_proto::wire::Frame;
    use p2p_proto::{Bitfield, FileId, Manifest, PeerId};
    use tokio::net::TcpListener;

    /// A second API key: another principal (the squatter's).
    pub const KEY2: &str = "squatter-key-9876543210";

    /// A manifest under `id` with other content's chunk hashes, Merkle root and chain:
    /// self-consistent, so the tracker takes it, but no content hashes to it.
    pub fn bogus(id: FileId, seed: u64) -> Manifest {
        let mut m = manifest("shared.bin", &content(500_000 + seed as usize * 4096, seed));
        m.id = id;
        m
    }

    /// A peer that offers every chunk of `m` and answers each request with garbage; counts
    /// the chunks it sent.
    pub async fn garbage_seeder(m: Manifest, served: Arc<AtomicU64>) -> (PeerId, u16) {
        let identity = Identity::from_secret(peer_secret(&peer_id()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let id = identity.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (id, m, served) = (id.clone(), m.clone(), served.clone());
                tokio::spawn(async move {
                    let (mut rx, mut tx, _) =
                        secure::handshake(stream, &id, Role::Responder, None).await?;
                    while let Some(frame) = rx.recv().await? {
                        match frame {
                            Frame::ManifestRequest { file_id } => {
                                let all = Bitfield::full(m.chunk_count());
                                tx.feed(&Frame::Manifest(m.clone()));
                                tx.feed(&Frame::Bitfield {
                                    file_id,
                                    chunk_count: all.len() as u32,
                                    bits: all.into_bytes().into(),
                                });
                                tx.flush().await?;
                            }
                            Frame::Request {
                                request_id,
                                file_id,
                                index,
                            } => {
                                let len = m.chunk_len(u64::from(index)) as usize;
                                served.fetch_add(1, Ordering::SeqCst);
                                tx.send(&Frame::Chunk {
                                    request_id,
                                    file_id,
                                    index,
                                    data: Bytes::from(vec![0xee; len]),
                                })
                                .await?;
                            }
                            _ => {}
                        }
                    }
                    Ok::<_, secure::SecureError>(())
                });
            }
        });
        (identity.peer_id(), port)
    }

    /// Registers `peer` (a [`peer_id`], with the proof of its key) at 127.0.0.1:`port` and
    /// announces `m` for it with `key`: the announce's status and the peer's token.
    pub async fn claim(
        target: &Target,
        key: &str,
        peer: &PeerId,
        port: u16,
        m: &Manifest,
    ) -> (u16, String) {
        let c = http();
        let body = json!({"peer_id": peer, "addresses": ["127.0.0.1"], "port": port});
        let resp = register_proven(&c, &target.base, key, peer, body).await;
        assert_eq!(resp.status(), 200, "register");
        let answer: serde_json::Value = resp.json().await.unwrap();
        let token = answer["peer_token"].as_str().unwrap().to_owned();
        let resp = c
            .post(target.url("/api/files/announce"))
            .header("X-API-Key", key)
            .header("X-Peer-Token", &token)
            .json(&json!({"peer_id": peer, "file": m}))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), token)
    }

    /// Peer arguments for the tracker at `base` with the honest key, data in `data`.
    pub fn node_cli(base: &str, data: &std::path::Path, hash: &FileId) -> DownloadCli {
        DownloadCli::try_parse_from([
            "p2p-download",
            "--tracker",
            base,
            "--api-key",
            KEY,
            "--data",
            data.to_str().unwrap(),
            "--port",
            "0",
            "--listen",
            "127.0.0.1",
            "--dht",
            "off",
            "--no-relay",
            "--no-punch",
            "--allow-local-addrs",
            &hash.to_string(),
        ])
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatted_file_id_still_downloads_from_its_honest_seeder() {
    use squatting::*;
    let mut args = serve_args();
    args.api_keys.push(KEY2.to_owned());
    attack(120, args, async |target| {
        let data = content(600_000, 41);
        let honest = manifest("shared.bin", &data);
        let watch = Watch::start(target);
        // The squatter announces first, with another principal's key, as many different
        // manifests of the honest file's id as the tracker keeps (4), from four peers: the
        // first serves garbage, the others listen nowhere.
        let served = Arc::new(AtomicU64::new(0));
        let (rogue, rogue_port) = garbage_seeder(bogus(honest.id, 1), served.clone()).await;
        let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let squatter_peers = [
            (rogue, rogue_port),
            (peer_id(), nowhere),
            (peer_id(), nowhere),
            (peer_id(), nowhere),
        ];
        for (seed, (peer, port)) in (1..).zip(&squatter_peers) {
            let (status, _) = claim(target, KEY2, peer, *port, &bogus(honest.id, seed)).await;
            assert_eq!(status, 200, "squatter's announce {seed}");
        }
        // The honest announce (another principal) is accepted.
        let probe = peer_id();
        let (status, probe_token) = claim(target, KEY, &probe, 9, &honest).await;
        println!("FIGURE squatting honest_announce_status={status}");
        if target.external() {
            watch.finish(target, "manifest-squatting", 96 * MIB).await;
            return;
        }
        assert_eq!(status, 200, "the honest announce after the squatter's");
        let resp = http()
            .delete(target.url(&format!("/api/peers/{probe}")))
            .header("X-API-Key", KEY)
            .header("X-Peer-Token", &probe_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);

        // A real seeder of the honest file, and a real download of it.
        let seed_dir = tempfile::tempdir().unwrap();
        std::fs::write(seed_dir.path().join("shared.bin"), &data).unwrap();
        let seeder = p2p_peer::node::Peer::start(
            &node_cli(&target.base, seed_dir.path(), &honest.id).node,
            true,
        )
        .await
        .unwrap();
        for (_, shared) in seeder.node.share_data_dir().await {
            assert_eq!(shared.unwrap().id, honest.id);
        }
        seeder.announce_now();
        let details = loop {
            let d: serde_json::Value = http()
                .get(target.url(&format!("/api/files/{}", honest.id)))
                .header("X-API-Key", KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let seeded =
                d["variants"].as_array().unwrap().iter().any(|v| {
                    v["merkle_root"] == honest.merkle_root.to_string() && v["seeders"] == 1
                });
            if seeded {
                break d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Every variant has one online announcer: the squatter's older ones come first.
        let order: Vec<String> = details["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["merkle_root"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(order.len(), 4, "{details}");
        assert_eq!(order[0], bogus(honest.id, 1).merkle_root.to_string());
        assert_eq!(order[3], honest.merkle_root.to_string());

        let down_dir = tempfile::tempdir().unwrap();
        p2p_peer::cli::run_download(node_cli(&target.base, down_dir.path(), &honest.id))
            .await
            .expect("the honest file downloads");
        assert_eq!(
            std::fs::read(down_dir.path().join("shared.bin")).unwrap(),
            data
        );
        assert!(
            served.load(Ordering::SeqCst) > 0,
            "the squatter's variant was tried first"
        );

        // The squatter cannot push the honest variant out: at the cap, with every variant
        // announced by online peers, its next one is refused.
        let (status, _) = claim(target, KEY2, &peer_id(), nowhere, &bogus(honest.id, 9)).await;
        assert_eq!(status, 409);
        let d: serde_json::Value = http()
            .get(target.url(&format!("/api/files/{}", honest.id)))
            .header("X-API-Key", KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            d["variants"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["merkle_root"] == honest.merkle_root.to_string())
        );
        seeder.stop().await;
        watch.finish(target, "manifest-squatting", 96 * MIB).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_stores_at_most_its_quota_of_manifests() {
    use squatting::*;
    let mut args = serve_args();
    args.api_keys.push(KEY2.to_owned());
    args.guard.max_manifests_per_principal = 50;
    attack(60, args, async |target| {
        let c = http();
        let squatter = peer_id();
        let watch = Watch::start(target);
        let (mut stored, mut refused) = (0u32, 0u32);
        let mut token = String::new();
        for i in 0..600u64 {
            let m = manifest(&format!("spam-{i}.bin"), &content(1000, 1_000 + i));
            let status = if i == 0 {
                let (status, t) = claim(target, KEY2, &squatter, 7000, &m).await;
                token = t;
                status
            } else {
                c.post(target.url("/api/files/announce"))
                    .header("X-API-Key", KEY2)
                    .header("X-Peer-Token", &token)
                    .json(&json!({"peer_id": squatter, "file": m}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            };
            match status {
                200 => stored += 1,
                403 => refused += 1,
                other => panic!("announce {i}: status {other}"),
            }
        }
        println!("FIGURE manifest-quota stored={stored} refused={refused}");
        if !target.external() {
            assert_eq!((stored, refused), (50, 550));
            let m = manifest("one-more.bin", &content(1000, 5));
            let resp = c
                .post(target.url("/api/files/announce"))
                .header("X-API-Key", KEY2)
                .header("X-Peer-Token", &token)
                .json(&json!({"peer_id": squatter, "file": m}))
                .send()
                .await
                .unwrap();
            let msg = assert_error(resp, 403, "quota_exceeded").await;
            assert!(msg.contains("quota of 50"), "{msg}");
        }
        // Another principal is not affected.
        honest_announce(target).await;
        watch.finish(target, "manifest-quota", 64 * MIB).await;
    })
    .await;
}

/// Read grant requests (`POST /api/files/{id}/grants`): floods from API-key holders and from
/// clients without credentials.
mod grant_flood {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use super::*;
    use p2p_proto::manifest::merkle_root;
    use p2p_proto::{FileId, Manifest, Sha256Hash};

    /// A manifest of `chunks` whole protocol chunks with made-up hashes under a made-up id: valid
    /// in form, which is all the tracker can check.
    pub fn made_up_manifest(name: &str, chunks: u32, seed: u8) -> Manifest {
        let hash = |i: u32, tag: u8| {
            let mut h = [seed; 32];
            h[0] = tag;
            h[1..5].copy_from_slice(&i.to_le_bytes());
            Sha256Hash(h)
        };
        let chunk_hashes: Vec<Sha256Hash> = (0..chunks).map(|i| hash(i, 1)).collect();
        Manifest {
            id: FileId(hash(u32::MAX, 0).0),
            name: name.to_owned(),
            size: u64::from(chunks) * u64::from(p2p_proto::CHUNK_SIZE),
            chunk_size: p2p_proto::CHUNK_SIZE,
            merkle_root: merkle_root(&chunk_hashes),
            chunk_hashes,
            chain: (1..chunks).map(|i| hash(i, 2)).collect(),
        }
    }

    /// What one flood request sends: the id, and the API key (if any).
    pub type Ask = (FileId, Option<String>);

    /// `conns` connections (one client each, kept alive) each send `per_conn` grant requests in
    /// turn to the tracker at `base`, the `n`th of connection `c` as `ask(c, n)`; how many got
    /// each status.
    pub async fn flood(
        base: String,
        conns: usize,
        per_conn: usize,
        ask: Arc<dyn Fn(usize, usize) -> Ask + Send + Sync>,
    ) -> BTreeMap<u16, usize> {
        let tasks: Vec<_> = (0..conns)
            .map(|c| {
                let (base, ask) = (base.clone(), ask.clone());
                tokio::spawn(async move {
                    let client = http();
                    let mut seen = BTreeMap::new();
                    for n in 0..per_conn {
                        let (id, key) = ask(c, n);
                        let mut req = client.post(format!("{base}/api/files/{id}/grants"));
                        if let Some(key) = key {
                            req = req.header("X-API-Key", key);
                        }
                        let status = req.send().await.unwrap().status().as_u16();
                        *seen.entry(status).or_insert(0) += 1;
                    }
                    seen
                })
            })
            .collect();
        let mut seen = BTreeMap::new();
        for t in tasks {
            for (status, n) in t.await.unwrap() {
                *seen.entry(status).or_insert(0) += n;
            }
        }
        seen
    }

    /// A made-up id that no file has.
    pub fn unknown_id(c: usize, n: usize) -> FileId {
        let mut id = [0xee; 32];
        id[..8].copy_from_slice(&(c as u64).to_le_bytes());
        id[8..16].copy_from_slice(&(n as u64).to_le_bytes());
        FileId(id)
    }

    /// A client whose requests come from `ip` (another address of 127.0.0.0/8).
    pub fn client_from(ip: &str) -> reqwest::Client {
        reqwest::Client::builder()
            .local_address(ip.parse::<IpAddr>().ok())
            .build()
            .unwrap()
    }

    /// An honest grant for `id` from `c`, used to read the file's details.
    pub async fn honest_grant(c: &reqwest::Client, target: &Target, id: &FileId) {
        let resp = c
            .post(target.url(&format!("/api/files/{id}/grants?ttl_secs=600")))
            .header("X-API-Key", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "the honest grant");
        let grant: serde_json::Value = resp.json().await.unwrap();
        let resp = c
            .get(target.url(&format!("/api/files/{id}")))
            .header("X-Read-Grant", grant["grant"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "reading with the honest grant");
    }

    pub async fn files_total(target: &Target) -> u64 {
        let resp = http()
            .get(target.url("/api/files"))
            .header("X-API-Key", KEY)
            .send()
            .await
            .unwrap();
        resp.json::<serde_json::Value>().await.unwrap()["total"]
            .as_u64()
            .unwrap()
    }
}

/// A flood of 3072 grant requests over 48 connections: a third with the API key for a file
/// with a 32 GiB manifest (131 072 chunk hashes, 8 MiB stored), a third with the key for ids
/// nobody announced, a third without credentials (none, or a made-up key). A grant needs only
/// to know that the file exists: the tracker must neither load the manifest for it nor store
/// anything for an unknown id; without credentials the answer is 401 before the id is looked at.
/// The honest grant works during the flood, the honest announce after it. (Before the fix each
/// grant loaded the manifest: 92 MiB of growth, 14 s for the flood, `/health` 126 ms.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_flood_loads_no_manifest_and_stores_nothing() {
    use grant_flood::*;
    use std::collections::BTreeMap;
    let mut args = serve_args();
    args.guard.max_file_bytes = 32 << 30;
    args.max_body_bytes = 64 * MIB as usize;
    attack(120, args, async |target| {
        let (peer, token) = register_peer(target, 7300).await;
        let big = made_up_manifest("big.bin", 1 << 17, 9);
        announce(target, &peer, &token, &big).await;
        let small = manifest("small.bin", &content(10_000, 4));
        announce(target, &peer, &token, &small).await;
        let stored = files_total(target).await;

        let watch = Watch::start(target);
        let started = Instant::now();
        let big_id = big.id;
        let attackers = tokio::spawn(flood(
            target.base.clone(),
            48,
            64,
            Arc::new(move |c, n| match c % 3 {
                0 => (big_id, Some(KEY.to_owned())),
                1 => (unknown_id(c, n), Some(KEY.to_owned())),
                _ if n % 2 == 0 => (unknown_id(c, n), None),
                _ => (unknown_id(c, n), Some(format!("p2pk_{}", "ab".repeat(32)))),
            }),
        ));
        honest_grant(&http(), target, &small.id).await;
        let seen = attackers.await.unwrap();
        let secs = started.elapsed().as_secs_f64();
        honest_announce(target).await;
        println!("FIGURE attack=grant-flood requests=3072 secs={secs:.1} statuses={seen:?}");
        assert_eq!(
            seen,
            BTreeMap::from([(201, 1024), (401, 1024), (404, 1024)]),
            "grants for the known file, 404 for unknown ids, 401 without credentials"
        );
        assert_eq!(
            files_total(target).await,
            stored + 1,
            "only the honest announce stored a file"
        );
        watch.finish(target, "grant-flood", 32 * MIB).await;
    })
    .await;
}

/// With a rate limit (20 requests a second in bursts of 40 per client address), a flood of 2048
/// grant requests over 32 connections from one address, half with the API key and half without
/// credentials, is answered 429 past that budget: the limit applies before authentication and
/// before any lookup. Another address keeps its own budget: its honest grant and announce go
/// through during the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_requests_are_rate_limited_per_client() {
    use grant_flood::*;
    let mut args = serve_args();
    args.rate_limit_rps = 20;
    args.rate_limit_burst = Some(40);
    in_process(60, args, async |target| {
        let honest = client_from("127.0.0.2");
        let peer = peer_id();
        let body = json!({"peer_id": peer, "addresses": ["127.0.0.2"], "port": 7400});
        let resp = register_proven(&honest, &target.base, KEY, &peer, body).await;
        assert_eq!(resp.status(), 200, "honest register");
        let answer: serde_json::Value = resp.json().await.unwrap();
        let token = answer["peer_token"].as_str().unwrap().to_owned();
        let m = manifest("granted.bin", &content(10_000, 5));
        announce_from(&honest, target, &peer, &token, &m).await;

        let watch = Watch::start(target);
        let started = Instant::now();
        let id = m.id;
        let attackers = tokio::spawn(flood(
            target.base.clone(),
            32,
            64,
            Arc::new(move |c, _| (id, (c % 2 == 0).then(|| KEY.to_owned()))),
        ));
        honest_grant(&honest, target, &m.id).await;
        let other = manifest("during.bin", &content(10_000, 6));
        announce_from(&honest, target, &peer, &token, &other).await;
        let seen = attackers.await.unwrap();
        let secs = started.elapsed().as_secs_f64();
        let answered: usize = seen
            .iter()
            .filter(|(s, _)| **s != 429)
            .map(|(_, n)| n)
            .sum();
        println!("FIGURE attack=grant-flood-limited secs={secs:.1} statuses={seen:?}");
        let budget = 40 + (20.0 * secs).ceil() as usize;
        assert!(
            answered <= budget,
            "{answered} of 2048 got past a budget of {budget}: {seen:?}"
        );
        assert_eq!(seen.get(&429).copied().unwrap_or(0), 2048 - answered);
        assert!(seen.keys().all(|s| [201, 401, 429].contains(s)), "{seen:?}");
        watch.finish(target, "grant-flood-limited", 32 * MIB).await;
    })
    .await;
}
