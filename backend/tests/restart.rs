//! Restarting the tracker loses nothing: peers, files, chunk hashes, users, keys and the JWT
//! secret. In-process on both backends; as a real process (with SIGTERM) on SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

async fn survives_restart(db: TestDb) {
    let t = TestTracker::start(&db, serve_args()).await;
    let peer = peer_id();
    t.register(&peer, 7000).await;
    let m = manifest("keep.bin", &content(600_000, 11));
    assert_eq!(t.announce(&peer, &m, None).await.status(), 200);
    let login: Value = t
        .http
        .post(t.url("/api/auth/login"))
        .json(&json!({"username": ADMIN, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = login["token"].as_str().unwrap().to_owned();
    let peer_token = t.token(&peer);
    let clock = t.clock.clone();
    t.stop().await;

    // Same database, no admin bootstrap this time: the user must come from storage.
    let mut args = serve_args();
    args.admin_user = None;
    args.admin_password = None;
    let t = TestTracker::start_at(&db, args, clock).await;
    let resp = t
        .http
        .get(t.url("/api/stats"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "JWTs from before the restart stay valid"
    );
    let details = t.get_json(&format!("/api/files/{}", m.id)).await;
    assert_eq!(details["chunk_hashes"], json!(m.chunk_hashes));
    assert_eq!(details["merkle_root"], m.merkle_root.to_string());
    let swarm = t.get_json(&format!("/api/files/{}/peers", m.id)).await;
    assert_eq!(swarm["peers"][0]["peer_id"], json!(peer));
    assert_eq!(swarm["peers"][0]["port"], 7000);
    // The peer-token key derives from the persisted secret: the peer's token still works.
    let resp = t
        .post("/api/peers/heartbeat", &json!({"peer_id": peer}))
        .header("X-Peer-Token", &peer_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "peer tokens survive the restart");
    let resp = t
        .http
        .post(t.url("/api/auth/login"))
        .json(&json!({"username": ADMIN, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "users persist");
    t.stop().await;
    db.cleanup().await;
}

#[tokio::test]
async fn sqlite_restart_loses_nothing() {
    within(60, survives_restart(TestDb::sqlite())).await;
}

#[tokio::test]
async fn postgres_restart_loses_nothing() {
    let Some(url) = postgres_url() else {
        return skip("postgres restart", "P2P_TEST_POSTGRES_URL is not set");
    };
    within(60, survives_restart(TestDb::postgres(&url))).await;
}

const BIN: &str = env!("CARGO_BIN_EXE_p2p-tracker");

fn tracker_cmd(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("P2P_DATA_DIR", dir)
        .env("RUST_LOG", "info");
    cmd
}

/// Starts the tracker binary on port 0 and reads its address from the log.
fn spawn_tracker(dir: &std::path::Path) -> (Child, String) {
    let mut child = tracker_cmd(dir)
        .args(["--addr", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("p2p-tracker listening") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("tracker logs its address");
    // A log read through a pipe has no colour codes.
    assert!(!line.contains('\u{1b}'), "{line:?}");
    let addr = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (child, format!("http://{addr}"))
}

fn sigterm_and_wait(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "clean exit on SIGTERM, got {status}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tracker did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn binary_cli_users_keys_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let out = tracker_cmd(dir.path())
        .args(["key", "create", "--name", "laptop"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("p2pk_"), "{key}");

    let out = tracker_cmd(dir.path())
        .args(["user", "add", "bob"])
        .env("P2P_USER_PASSWORD", "hunter2hunter2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tracker_cmd(dir.path())
        .args(["user", "add", "eve"])
        .env("P2P_USER_PASSWORD", "short")
        .output()
        .unwrap();
    assert!(!out.status.success(), "short passwords are refused");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("password") && !said.contains('\u{1b}'),
        "a plain message on a pipe: {said:?}"
    );
    let listed = tracker_cmd(dir.path())
        .args(["key", "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains("laptop") && !listed.contains(&key),
        "keys are never shown again"
    );

    let http = reqwest::Client::new();
    let (child, base) = spawn_tracker(dir.path());
    let peer = peer_id();
    let resp = within(
        10,
        register_proven(
            &http,
            &base,
            &key,
            &peer,
            json!({"peer_id": peer, "port": 6881}),
        ),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = http
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"username": "bob", "password": "hunter2hunter2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    sigterm_and_wait(child);

    // Revoke the key offline; the restarted tracker refuses it and still knows the peer.
    let id = listed.split_whitespace().next().unwrap().to_owned();
    let out = tracker_cmd(dir.path())
        .args(["key", "revoke", &id])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (child, base) = spawn_tracker(dir.path());
    let resp = http
        .get(format!("{base}/api/peers/{peer}"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let login: Value = http
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"username": "bob", "password": "hunter2hunter2"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = http
        .get(format!("{base}/api/peers/{peer}"))
        .bearer_auth(login["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the peer survived the restart");
    sigterm_and_wait(child);
}
