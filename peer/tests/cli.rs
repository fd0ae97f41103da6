//! The binaries end to end: a tracker (in process, port 0), a `p2p-peer --daemon` seeder and
//! `p2p-download` as real processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_tracker::app::{self, RunningTracker, RuntimeOptions};
use p2p_tracker::config::ServeArgs;
use p2p_tracker::store::SqliteStore;
use sha2::{Digest, Sha256};

const KEY: &str = "cli-test-key";

fn serve_args(addr: SocketAddr) -> ServeArgs {
    ServeArgs {
        addr,
        api_keys: vec![KEY.into()],
        jwt_secret: None,
        jwt_ttl_secs: 3600,
        rate_limit_rps: 0,
        rate_limit_burst: None,
        trust_proxy: false,
        heartbeat_interval_secs: 30,
        heartbeat_misses: 3,
        admin_user: None,
        admin_password: None,
        swarm_cache_ms: 0,
        dashboard_dir: None,
        max_body_bytes: 1 << 26,
        udp_addr: None,
        relay: Default::default(),
    }
}

/// A tracker on `addr` (port 0 for any) keeping its database in `dir`.
async fn tracker_at(dir: &Path, addr: SocketAddr) -> RunningTracker {
    let store = Arc::new(SqliteStore::open(&dir.join("tracker.db"), 4).await.unwrap());
    app::start(store, &serve_args(addr), RuntimeOptions::default())
        .await
        .unwrap()
}

async fn tracker(dir: &Path) -> RunningTracker {
    tracker_at(dir, "127.0.0.1:0".parse().unwrap()).await
}

/// Starts `p2p-peer --daemon` sharing `dir`, and waits until the tracker lists it for `id`.
async fn seeder(url: &str, dir: &Path, id: &str, extra: &[&str]) -> Killed {
    let child = Killed(
        peer_cmd(env!("CARGO_BIN_EXE_p2p-peer"), url, dir)
            .arg("--daemon")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = http
            .get(format!("{url}/api/files/{id}/peers"))
            .header("X-API-Key", KEY)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            let body: serde_json::Value = resp.json().await.unwrap();
            if !body["peers"].as_array().unwrap().is_empty() {
                return child;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the seeder never announced the file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn peer_cmd(bin: &str, url: &str, data: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--tracker",
        url,
        "--api-key",
        KEY,
        "--port",
        "0",
        "--listen",
        "127.0.0.1",
        // A DHT that cannot join (nothing answers there) must not get in the tracker's way;
        // it also keeps these tests off the public DHT.
        "--dht-port",
        "0",
        "--dht-bootstrap",
        "127.0.0.1:1",
    ])
    .arg("--data")
    .arg(data)
    .env("RUST_LOG", "info")
    .env_remove("P2P_TRACKER")
    .env_remove("P2P_PORT");
    cmd
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// Multi-threaded: the test blocks on child processes while the tracker serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_seeds_and_p2p_download_fetches_and_verifies() {
    let work = tempfile::tempdir().unwrap();
    let t = tracker(work.path()).await;
    let url = t.base_url();
    let seed_dir = work.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(seed_dir.join("report.pdf"), &data).unwrap();
    let id = hex::encode(Sha256::digest(&data));

    let seeder = seeder(&url, &seed_dir, &id, &[]).await;

    let leech_dir = work.path().join("leech");
    let out = peer_cmd(env!("CARGO_BIN_EXE_p2p-download"), &url, &leech_dir)
        .arg(&id)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "p2p-download failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(leech_dir.join("report.pdf")).unwrap(), data);

    // An unknown file is a clear failure with a non-zero exit.
    let missing = "00".repeat(32);
    let out = peer_cmd(
        env!("CARGO_BIN_EXE_p2p-download"),
        &url,
        &work.path().join("other"),
    )
    .arg(&missing)
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not known"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The daemon stops cleanly on SIGTERM.
    let mut seeder = seeder;
    let status = Command::new("kill")
        .args(["-TERM", &seeder.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = seeder.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.stop().await.unwrap();
}

/// Runs `p2p-download` until `dir/.partial/<id>.state` shows up, then kills it with SIGKILL.
fn kill_mid_download(url: &str, dir: &Path, id: &str) {
    let mut child = Killed(
        peer_cmd(env!("CARGO_BIN_EXE_p2p-download"), url, dir)
            .arg(id)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let state = dir.join(".partial").join(format!("{id}.state"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !state.exists() {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "download ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "no progress was saved");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-KILL", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.0.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_download_resumes_and_survives_a_tracker_restart() {
    let work = tempfile::tempdir().unwrap();
    let t = tracker(work.path()).await;
    let url = t.base_url();
    let seed_dir = work.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let data: Vec<u8> = (0..24_000_000u32)
        .map(|i| (i.wrapping_mul(40_503) >> 7) as u8)
        .collect();
    std::fs::write(seed_dir.join("big.iso"), &data).unwrap();
    let id = hex::encode(Sha256::digest(&data));
    // A slow seeder (4 MiB/s), so the download can be killed half-way.
    let _seeder = seeder(&url, &seed_dir, &id, &["--upload-limit", "4M"]).await;

    let leech_dir = work.path().join("leech");
    kill_mid_download(&url, &leech_dir, &id);
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(leech_dir.join(".partial").join(format!("{id}.state"))).unwrap(),
    )
    .unwrap();
    assert!(state["have"].is_string());

    // The tracker restarts on the same data; the seeder re-registers by itself.
    let addr = t.addr;
    t.stop().await.unwrap();
    let t = tracker_at(work.path(), addr).await;

    let out = peer_cmd(env!("CARGO_BIN_EXE_p2p-download"), &url, &leech_dir)
        .arg(&id)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "resume failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(leech_dir.join("big.iso")).unwrap(), data);
    // Only the missing chunks crossed the network the second time.
    let fetched: u64 = stdout
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|b| b.parse::<u64>().ok())
        })
        .sum();
    assert!(
        fetched > 0 && fetched < data.len() as u64,
        "second run fetched {fetched} bytes:\n{stdout}"
    );
    t.stop().await.unwrap();
}
