//! Real processes for the end-to-end tests: a tracker in process (port 0, SQLite), `p2p-peer`
//! and `p2p-download` started with loopback-only options.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_tracker::app::{self, RunningTracker, RuntimeOptions};
use p2p_tracker::config::ServeArgs;
use p2p_tracker::store::SqliteStore;

pub const KEY: &str = "cli-test-key";

pub fn serve_args(addr: SocketAddr) -> ServeArgs {
    ServeArgs {
        addr,
        api_keys: vec![KEY.into()],
        jwt_secret: None,
        jwt_ttl_secs: 3600,
        rate_limit_rps: 0,
        rate_limit_burst: None,
        rate_limit_replicas: 1,
        trust_proxy: false,
        heartbeat_interval_secs: 30,
        heartbeat_misses: 3,
        admin_user: None,
        admin_password: None,
        swarm_cache_ms: 0,
        dashboard_dir: None,
        max_body_bytes: 1 << 26,
        udp_addr: None,
        metrics_addr: None,
        relay_url: None,
        relay: Default::default(),
        guard: Default::default(),
    }
}

/// A tracker on `addr` (port 0 for any) keeping its database in `dir`.
pub async fn tracker_at(dir: &Path, addr: SocketAddr) -> RunningTracker {
    let store = Arc::new(SqliteStore::open(&dir.join("tracker.db"), 4).await.unwrap());
    app::start(store, &serve_args(addr), RuntimeOptions::default())
        .await
        .unwrap()
}

pub async fn tracker(dir: &Path) -> RunningTracker {
    tracker_at(dir, "127.0.0.1:0".parse().unwrap()).await
}

/// Starts `p2p-peer --daemon` sharing `dir`, and waits until the tracker lists it for `id`.
pub async fn seeder(url: &str, dir: &Path, id: &str, extra: &[&str]) -> Killed {
    let child = Killed(
        peer_cmd(env!("CARGO_BIN_EXE_p2p-peer"), url, dir)
            .arg("--daemon")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_announced(url, id).await;
    child
}

/// A `p2p-peer` shell on `data` (with `extra` arguments) driven through pipes, as a script
/// would: its stdin, and its stdout line by line (read on a thread of its own).
pub fn piped_shell(
    url: &str,
    data: &Path,
    extra: &[&str],
) -> (
    Killed,
    std::process::ChildStdin,
    std::sync::mpsc::Receiver<String>,
) {
    use std::io::BufRead;
    let mut shell = Killed(
        peer_cmd(env!("CARGO_BIN_EXE_p2p-peer"), url, data)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdin = shell.0.stdin.take().unwrap();
    let lines = std::io::BufReader::new(shell.0.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    (shell, stdin, rx)
}

/// Waits (at most 30 s) until the tracker lists a peer for `id`.
pub async fn wait_announced(url: &str, id: &str) {
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
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the file {id} was never announced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn peer_cmd(bin: &str, url: &str, data: &Path) -> Command {
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
        // The tracker lists these peers at 127.0.0.1.
        "--allow-local-addrs",
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

pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGTERM and waits (at most 15 s) for a clean exit.
pub async fn terminate(child: &mut Killed) {
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `p2p-download <id>` (`--dht off --no-relay`) into `dir`, for at most a minute.
pub async fn download(url: &str, dir: &Path, id: &str) -> std::process::Output {
    let mut cmd = peer_cmd(env!("CARGO_BIN_EXE_p2p-download"), url, dir);
    cmd.args(["--dht", "off", "--no-relay"]).arg(id);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut buf).await;
        buf
    });
    match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
        Ok(status) => {
            let mut out = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(child.stdout.as_mut().unwrap(), &mut out)
                .await;
            std::process::Output {
                status: status.unwrap(),
                stdout: out,
                stderr: err.await.unwrap(),
            }
        }
        Err(_) => {
            child.kill().await.unwrap();
            panic!(
                "p2p-download hung:\n{}",
                String::from_utf8_lossy(&err.await.unwrap())
            );
        }
    }
}

/// Runs `p2p-download <id>` (with `extra` options) into `dir` until `ready` holds (looked at
/// every 20 ms, for at most 60 s), then kills it with SIGKILL.
pub fn kill_download_when(
    url: &str,
    dir: &Path,
    id: &str,
    extra: &[&str],
    ready: impl Fn() -> bool,
) {
    let mut child = Killed(
        peer_cmd(env!("CARGO_BIN_EXE_p2p-download"), url, dir)
            .args(extra)
            .arg(id)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "download ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "the download made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-KILL", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.0.wait();
}

/// A tracker's answer to `GET {url}{path}` with the API key, as JSON.
pub async fn api_json(url: &str, path: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{url}{path}"))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The bytes a tracker's relay hub carried so far (`p2p_tracker_relay_bytes_total`).
pub async fn relayed_bytes(url: &str) -> u64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("p2p_tracker_relay_bytes_total "))
        .unwrap_or_else(|| panic!("no relay byte counter in {url}/metrics"))
        .trim()
        .parse()
        .unwrap()
}
