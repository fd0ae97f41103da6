//! Tracker failover end to end: two trackers (in process, port 0, a SQLite database each), a
//! `p2p-peer --daemon` seeder and `p2p-download`s as real processes, all given both trackers.
//! Tracker 1 stops mid-download: the download finishes, the seeder registers and announces on
//! tracker 2 within seconds, and a new download finds the file through tracker 2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_tracker::app::{self, RunningTracker, RuntimeOptions};
use p2p_tracker::config::ServeArgs;
use p2p_tracker::store::SqliteStore;
use sha2::{Digest, Sha256};

use support::procs::{KEY, serve_args};

/// How soon the seeder must be listed on tracker 2 after tracker 1 stops: a heartbeat (1 s
/// here) finds tracker 1 gone, then a registration and an announce on tracker 2.
const REANNOUNCE_WITHIN: Duration = Duration::from_secs(15);

/// A tracker on any free port with its own database in `dir`, asking for heartbeats every second.
async fn tracker(dir: &Path) -> RunningTracker {
    let serve = ServeArgs {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        heartbeat_interval_secs: 1,
        ..serve_args(SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    std::fs::create_dir_all(dir).unwrap();
    let store = Arc::new(SqliteStore::open(&dir.join("tracker.db"), 4).await.unwrap());
    app::start(store, &serve, RuntimeOptions::default())
        .await
        .unwrap()
}

/// A peer binary given both trackers (`--tracker` repeated), on loopback, without the DHT.
fn peer_cmd(bin: &str, trackers: &[String], data: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for t in trackers {
        cmd.args(["--tracker", t]);
    }
    cmd.args([
        "--api-key",
        KEY,
        "--port",
        "0",
        "--listen",
        "127.0.0.1",
        "--allow-local-addrs",
        "--dht",
        "off",
    ])
    .arg("--data")
    .arg(data)
    .env("RUST_LOG", "info")
    .env("NO_COLOR", "1")
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

/// Polls `tracker` until it lists a peer for file `id` (at most `within`); returns how long it
/// took.
async fn listed(
    tracker: &str,
    id: &str,
    peer: &str,
    within: Duration,
    seeder: &support::Log,
) -> Duration {
    let http = reqwest::Client::new();
    let start = Instant::now();
    loop {
        let resp = http
            .get(format!("{tracker}/api/files/{id}/peers"))
            .header("X-API-Key", KEY)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            let body: serde_json::Value = resp.json().await.unwrap();
            let peers = body["peers"].as_array().unwrap();
            if peers.iter().any(|p| p["peer_id"] == peer) {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < within,
            "{tracker} never listed the seeder for {id}; the seeder's log:\n{}",
            seeder.tail(usize::MAX)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `p2p-download` to the end and checks the file it wrote.
fn download(trackers: &[String], dir: &Path, id: &str, name: &str, data: &[u8]) {
    let out = peer_cmd(env!("CARGO_BIN_EXE_p2p-download"), trackers, dir)
        .arg(id)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "p2p-download failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(dir.join(name)).unwrap() == data);
}

// Multi-threaded: the test blocks on child processes while the trackers serve them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_fail_over_to_the_second_tracker() {
    let work = tempfile::tempdir().unwrap();
    let t1 = tracker(&work.path().join("t1")).await;
    let t2 = tracker(&work.path().join("t2")).await;
    let trackers = [t1.base_url(), t2.base_url()];
    let seed_dir = work.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let data = support::content(6_000_000, 21);
    std::fs::write(seed_dir.join("film.mkv"), &data).unwrap();
    let id = hex::encode(Sha256::digest(&data));

    let mut seeder = peer_cmd(env!("CARGO_BIN_EXE_p2p-peer"), &trackers, &seed_dir)
        .arg("--daemon")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = support::Log::capture(seeder.stderr.take().unwrap());
    let line = log
        .wait_for(&mut seeder, &["peer listening"], Duration::from_secs(30))
        .await;
    // The seeder itself, not the download below: that one announces its progress too, and
    // fails over to tracker 2 on its own.
    let peer = line
        .split("peer_id=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let seeder = Killed(seeder);
    // The first tracker answers, so the seeder uses it (and only it: tracker 2 has its own
    // database and has not heard of the seeder).
    listed(&trackers[0], &id, &peer, Duration::from_secs(30), &log).await;

    // A download that runs while tracker 1 stops: 2 MiB/s, so it is under way for a while.
    let running_dir = work.path().join("running");
    let mut running = Killed(
        peer_cmd(env!("CARGO_BIN_EXE_p2p-download"), &trackers, &running_dir)
            .args(["--download-limit", "2M"])
            .arg(&id)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let running_log = support::Log::capture(running.0.stderr.take().unwrap());
    let state = running_dir.join(".partial").join(format!("{id}.state"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !state.exists() {
        assert!(
            running.0.try_wait().unwrap().is_none(),
            "the download ended before tracker 1 stopped:\n{}",
            running_log.tail(usize::MAX)
        );
        assert!(
            Instant::now() < deadline,
            "the download made no progress:\n{}",
            running_log.tail(usize::MAX)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    t1.stop().await.unwrap();

    // The seeder goes on to tracker 2 by itself: registers and announces there within seconds.
    let took = listed(&trackers[1], &id, &peer, REANNOUNCE_WITHIN, &log).await;
    assert!(
        log.count("now using this tracker") >= 1,
        "{}",
        log.tail(usize::MAX)
    );
    println!("the seeder was listed on tracker 2 {took:?} after tracker 1 stopped");

    // The running download was never held up by the tracker: it finishes from the seeder.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the running download hung");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "the running download failed:\n{}",
        running_log.tail(usize::MAX)
    );
    assert!(std::fs::read(running_dir.join("film.mkv")).unwrap() == data);

    // A new download, given both trackers with the first one dead, finds the file through
    // tracker 2.
    download(
        &trackers,
        &work.path().join("after"),
        &id,
        "film.mkv",
        &data,
    );
    drop(seeder);
    t2.stop().await.unwrap();
}
