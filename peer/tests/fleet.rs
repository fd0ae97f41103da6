//! The relay fleet end to end, all real processes on one PostgreSQL database (a fresh schema
//! per run), every port 0: two API trackers and two relays (`p2p-tracker --relay-url`), a
//! relay-only seeder A homed on relay 1 (`p2p-peer --daemon --relay R1,R2`) and downloaders
//! B homed on relay 2 (`p2p-download --relay R2,R1`), all given both trackers.
//!
//! 1. B downloads A's file through A's home relay: relay 1 carries the bytes, relay 2 none.
//! 2. Relay 1 is killed: A re-homes to relay 2 and registers it within 10 s; the fleet list
//!    drops relay 1; a new download completes (through relay 2).
//! 3. Tracker 1 is killed: A goes on with tracker 2, and a download given both trackers finds
//!    and fetches the file through tracker 2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use p2p_tracker::store::PgStore;
use sha2::{Digest, Sha256};
use support::Log;
use support::procs::relayed_bytes;

const KEY: &str = "fleet-test-key";
/// The proof's bound on re-homing after the home relay dies.
const REHOME_WITHIN: Duration = Duration::from_secs(10);
const FILE_LEN: usize = 3_000_000;

struct Proc {
    child: Child,
    log: Log,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Log::capture(child.stderr.take().unwrap());
        Self { child, log }
    }

    /// Kills it at once (SIGKILL: no clean leaving).
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// The value of `key=` in a log line.
fn field(line: &str, key: &str) -> String {
    let at = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line}"));
    line[at + key.len() + 1..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn tracker_binary() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_p2p-peer")).with_file_name("p2p-tracker");
    assert!(
        bin.is_file(),
        "this test runs the tracker binary {}, which is missing: a workspace build makes it",
        bin.display()
    );
    bin
}

/// A `p2p-tracker` process on the database, any free port; returns it and its base URL.
async fn tracker(db: &str, data: &Path, extra: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(tracker_binary());
    cmd.args([
        "--addr",
        "127.0.0.1:0",
        "--api-keys",
        KEY,
        "--rate-limit-rps",
        "0",
        "--heartbeat-interval-secs",
        "1",
        "--swarm-cache-ms",
        "0",
        "--db-wait-secs",
        "0",
        "--postgres-url",
        db,
    ])
    .arg("--data-dir")
    .arg(data)
    .args(extra)
    .env("RUST_LOG", "info")
    .env("NO_COLOR", "1")
    .env_remove("DATABASE_URL")
    .env_remove("POSTGRES_URL")
    .env_remove("P2P_RELAY_URL");
    let mut proc = Proc::spawn(cmd);
    let line = proc
        .log
        .wait_for(
            &mut proc.child,
            &["p2p-tracker listening"],
            Duration::from_secs(60),
        )
        .await;
    let url = format!("http://{}", field(&line, "addr"));
    (proc, url)
}

/// A peer binary given both trackers and its relays, in order; loopback, no DHT.
fn peer_cmd(bin: &str, trackers: &[String], relays: &[&str], data: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for t in trackers {
        cmd.args(["--tracker", t]);
    }
    for r in relays {
        cmd.args(["--relay", r]);
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
        "--no-punch",
    ])
    .arg("--data")
    .arg(data)
    .env("RUST_LOG", "info")
    .env("NO_COLOR", "1")
    .env_remove("P2P_TRACKER")
    .env_remove("P2P_RELAY")
    .env_remove("P2P_PORT");
    cmd
}

async fn get_json(url: &str) -> Option<serde_json::Value> {
    let resp = reqwest::Client::new()
        .get(url)
        .header("X-API-Key", KEY)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// Polls until `check` holds for the JSON at `url` (at most `within`); returns how long it took.
async fn until(
    url: &str,
    within: Duration,
    what: &str,
    log: &Log,
    check: impl Fn(&serde_json::Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if get_json(url).await.is_some_and(|v| check(&v)) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{what} did not happen within {within:?} ({url}: {:?}); the seeder's log:\n{}",
            get_json(url).await,
            log.tail(80)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `p2p-download` homed on `relays` to the end and checks the file it wrote.
fn download(trackers: &[String], relays: &[&str], dir: &Path, id: &str, data: &[u8]) -> String {
    let out = peer_cmd(env!("CARGO_BIN_EXE_p2p-download"), trackers, relays, dir)
        .arg(id)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "p2p-download failed:\n{log}");
    assert!(std::fs::read(dir.join("fleet.bin")).unwrap() == data);
    log
}

/// A fresh schema for this run, and the URL that puts the processes in it.
async fn database(url: &str) -> (String, String) {
    let schema = format!(
        "fleet_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    // Creates the schema and migrates it, so the trackers start on a ready database.
    PgStore::connect_in_schema(url, 2, Some(&schema))
        .await
        .expect("connect to PostgreSQL");
    let sep = if url.contains('?') { '&' } else { '?' };
    (format!("{url}{sep}options[search_path]={schema}"), schema)
}

// Multi-threaded: the test blocks on child processes while it polls the trackers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_home_on_a_relay_fleet_and_survive_a_relay_and_a_tracker() {
    let Some(pg) = std::env::var("P2P_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        return support::skip("relay fleet", "P2P_TEST_POSTGRES_URL is not set");
    };
    let (db, schema) = database(&pg).await;
    let work = tempfile::tempdir().unwrap();
    let dir = |name: &str| work.path().join(name);

    let (t1, t1_url) = tracker(&db, &dir("t1"), &["--udp-addr", "off"]).await;
    let (_t2, t2_url) = tracker(&db, &dir("t2"), &["--udp-addr", "off"]).await;
    let relay_flag = ["--relay-url", "http://127.0.0.1:0"];
    let (r1, r1_url) = tracker(&db, &dir("r1"), &relay_flag).await;
    let (r2, r2_url) = tracker(&db, &dir("r2"), &relay_flag).await;
    let trackers = [t1_url.clone(), t2_url.clone()];

    // Relays join the fleet by starting: either API tracker lists both.
    let fleet_of = |v: &serde_json::Value| -> Vec<String> {
        let mut urls: Vec<String> = v["relays"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["url"].as_str().unwrap().to_owned())
            .collect();
        urls.sort();
        urls
    };
    let mut both = vec![r1_url.clone(), r2_url.clone()];
    both.sort();
    let quiet = Log::default();
    until(
        &format!("{t1_url}/api/relays"),
        Duration::from_secs(10),
        "listing both relays",
        &quiet,
        |v| fleet_of(v) == both,
    )
    .await;

    // A: relay-only, homed on relay 1 (relay 2 next).
    let seed_dir = dir("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let data = support::content(FILE_LEN, 0xf1ee7);
    std::fs::write(seed_dir.join("fleet.bin"), &data).unwrap();
    let id = hex::encode(Sha256::digest(&data));
    let mut seeder = peer_cmd(
        env!("CARGO_BIN_EXE_p2p-peer"),
        &trackers,
        &[&r1_url, &r2_url],
        &seed_dir,
    );
    seeder.args(["--daemon", "--relay-only"]);
    let mut a = Proc::spawn(seeder);
    let line = a
        .log
        .wait_for(&mut a.child, &["peer listening"], Duration::from_secs(30))
        .await;
    let a_id = field(&line, "peer_id");
    let a_entry = format!("{t2_url}/api/peers/{a_id}");
    until(
        &a_entry,
        Duration::from_secs(30),
        "A registering relay 1",
        &a.log,
        |v| v["relay"] == r1_url.as_str(),
    )
    .await;
    until(
        &format!("{t2_url}/api/files/{id}/peers"),
        Duration::from_secs(30),
        "A's file listed with relay 1",
        &a.log,
        |v| {
            v["peers"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["relay"] == r1_url.as_str()))
        },
    )
    .await;
    // The dashboard's relay count is the fleet's (A on relay 1), not the API tracker's own 0.
    until(
        &format!("{t1_url}/api/stats"),
        Duration::from_secs(10),
        "the relay count summed over the fleet",
        &a.log,
        |v| v["relay_connections"].as_u64() >= Some(1),
    )
    .await;

    // 1. B, homed on relay 2, downloads through A's home relay, relay 1.
    let b_log = download(&trackers, &[&r2_url, &r1_url], &dir("b1"), &id, &data);
    assert!(
        b_log.contains(&format!("attached to the relay url=ws://{}", &r2_url[7..])),
        "B did not home on relay 2:\n{b_log}"
    );
    let (via_r1, via_r2) = (relayed_bytes(&r1_url).await, relayed_bytes(&r2_url).await);
    assert!(via_r1 >= FILE_LEN as u64, "relay 1 carried {via_r1} bytes");
    assert_eq!(
        via_r2, 0,
        "relay 2 carried bytes of a peer homed on relay 1"
    );
    println!("download 1: through relay 1 ({via_r1} bytes relayed)");

    // 2. Relay 1 dies: A re-homes to relay 2 and registers it within 10 s.
    r1.kill();
    let took = until(
        &a_entry,
        REHOME_WITHIN,
        "A re-homing to relay 2",
        &a.log,
        |v| v["relay"] == r2_url.as_str(),
    )
    .await;
    println!("A re-homed to relay 2 and registered it {took:?} after relay 1 was killed");
    // The fleet forgets the dead relay once its report is stale (10 s).
    until(
        &format!("{t2_url}/api/relays"),
        Duration::from_secs(20),
        "the fleet dropping relay 1",
        &a.log,
        |v| fleet_of(v) == vec![r2_url.clone()],
    )
    .await;
    download(&trackers, &[&r2_url, &r1_url], &dir("b2"), &id, &data);
    let via_r2 = relayed_bytes(&r2_url).await;
    assert!(via_r2 >= FILE_LEN as u64, "relay 2 carried {via_r2} bytes");
    println!("download 2: through relay 2 ({via_r2} bytes relayed)");

    // 3. Tracker 1 dies: A registers and announces through tracker 2, and downloads given
    // both trackers look up and fetch through tracker 2.
    t1.kill();
    a.log
        .wait_for(
            &mut a.child,
            &["now using this tracker", &t2_url],
            Duration::from_secs(20),
        )
        .await;
    let seen = get_json(&a_entry).await.unwrap()["last_seen_ms"]
        .as_u64()
        .unwrap();
    until(
        &a_entry,
        Duration::from_secs(10),
        "A heartbeating through tracker 2",
        &a.log,
        |v| v["last_seen_ms"].as_u64() > Some(seen) && v["relay"] == r2_url.as_str(),
    )
    .await;
    let b3 = download(&trackers, &[&r2_url], &dir("b3"), &id, &data);
    assert!(b3.contains("now using this tracker"), "{b3}");
    println!("download 3: with tracker 1 dead, through tracker 2");

    drop(a);
    drop(r2);
    drop(_t2);
    let store = PgStore::connect_in_schema(&pg, 2, Some(&schema))
        .await
        .unwrap();
    store.drop_schema(&schema).await.unwrap();
}
