//! Shared test harness: trackers on port 0 over SQLite temp files or PostgreSQL schemas,
//! HTTP and WebSocket clients, and builders for manifests.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use p2p_proto::{CHUNK_SIZE, Manifest, PeerId};
use p2p_tracker::app::{self, RunningTracker, RuntimeOptions};
use p2p_tracker::clock::ManualClock;
use p2p_tracker::config::ServeArgs;
use p2p_tracker::store::{PgStore, SqliteStore, Store};
use sha2::{Digest, Sha256};

pub const KEY: &str = "test-key-0123456789";
pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "correct horse battery";

/// Fails the test when `P2P_REQUIRE_ALL=1` (CI), else prints a SKIPPED line.
pub fn skip(what: &str, why: &str) {
    if std::env::var("P2P_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{what} cannot run under P2P_REQUIRE_ALL=1: {why}");
    }
    println!("SKIPPED: {what}: {why}");
}

/// The PostgreSQL URL for tests, if one is configured.
pub fn postgres_url() -> Option<String> {
    std::env::var("P2P_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Where a test's data lives; dropped at the end of the test.
pub enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres { url: String, schema: String },
}

impl TestDb {
    pub fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().expect("tempdir"))
    }

    /// A fresh schema in the test PostgreSQL database.
    pub fn postgres(url: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let schema = format!(
            "t_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        Self::Postgres {
            url: url.to_owned(),
            schema,
        }
    }

    pub async fn open(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(dir) => Arc::new(
                SqliteStore::open(&dir.path().join("tracker.db"), 4)
                    .await
                    .expect("open sqlite"),
            ),
            Self::Postgres { url, schema } => Arc::new(
                PgStore::connect_in_schema(url, 4, Some(schema))
                    .await
                    .expect("connect postgres"),
            ),
        }
    }

    /// Runs one SQL statement with one blob parameter (`$1`) straight on the database, behind
    /// the store's back: for tests of rows an older version left.
    pub async fn execute_raw(&self, sql: &str, blob: Vec<u8>) {
        use sqlx::Connection;
        match self {
            Self::Sqlite(dir) => {
                let url = format!("sqlite://{}", dir.path().join("tracker.db").display());
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query(sql).bind(blob).execute(&mut c).await.unwrap();
            }
            Self::Postgres { url, schema } => {
                let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query(&format!("SET search_path TO {schema}"))
                    .execute(&mut c)
                    .await
                    .unwrap();
                sqlx::query(sql).bind(blob).execute(&mut c).await.unwrap();
            }
        }
    }

    /// Drops the PostgreSQL schema (SQLite temp dirs clean themselves up).
    pub async fn cleanup(&self) {
        if let Self::Postgres { url, schema } = self {
            let store = PgStore::connect_in_schema(url, 2, Some(schema))
                .await
                .unwrap();
            store.drop_schema(schema).await.unwrap();
        }
    }
}

pub fn serve_args() -> ServeArgs {
    ServeArgs {
        addr: "127.0.0.1:0".parse().unwrap(),
        api_keys: vec![KEY.to_owned()],
        jwt_secret: None,
        jwt_ttl_secs: 3600,
        rate_limit_rps: 0,
        rate_limit_burst: None,
        trust_proxy: false,
        heartbeat_interval_secs: 30,
        heartbeat_misses: 3,
        admin_user: Some(ADMIN.to_owned()),
        admin_password: Some(ADMIN_PASSWORD.to_owned()),
        swarm_cache_ms: 1000,
        dashboard_dir: None,
        max_body_bytes: 8 * 1024 * 1024,
        udp_addr: None,
        metrics_addr: None,
        relay: Default::default(),
        guard: Default::default(),
    }
}

/// A tracker on 127.0.0.1:0 with a manual clock.
pub struct TestTracker {
    pub tracker: RunningTracker,
    pub clock: ManualClock,
    pub http: reqwest::Client,
    pub base: String,
}

pub const T0: u64 = 1_800_000_000_000;

impl TestTracker {
    pub async fn start(db: &TestDb, args: ServeArgs) -> Self {
        Self::start_at(db, args, ManualClock::new(T0)).await
    }

    pub async fn start_at(db: &TestDb, args: ServeArgs, clock: ManualClock) -> Self {
        let store = db.open().await;
        let tracker = app::start(
            store,
            &args,
            RuntimeOptions {
                clock: Arc::new(clock.clone()),
                sweep_interval: Duration::from_millis(50),
                shutdown_grace: Duration::from_secs(2),
            },
        )
        .await
        .expect("tracker starts");
        let base = tracker.base_url();
        Self {
            tracker,
            clock,
            http: reqwest::Client::new(),
            base,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).header("X-API-Key", KEY)
    }

    /// GET with the API key, expecting 200 and JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let resp = self.get(path).send().await.unwrap();
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.json().await.unwrap()
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .header("X-API-Key", KEY)
            .json(body)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.delete(self.url(path)).header("X-API-Key", KEY)
    }

    pub async fn register(&self, peer: &PeerId, port: u16) -> serde_json::Value {
        let resp = self
            .post(
                "/api/peers/register",
                &serde_json::json!({"peer_id": peer, "addresses": ["10.1.2.3"], "port": port}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "register: {:?}", resp.text().await);
        resp.json().await.unwrap()
    }

    pub async fn announce(
        &self,
        peer: &PeerId,
        m: &Manifest,
        have: Option<&str>,
    ) -> reqwest::Response {
        let mut body = serde_json::json!({"peer_id": peer, "file": m});
        if let Some(h) = have {
            body["have"] = serde_json::json!(h);
        }
        self.post("/api/files/announce", &body)
            .send()
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.tracker.stop().await.expect("clean stop");
    }
}

/// A distinct peer id per call.
pub fn peer_id() -> PeerId {
    static N: AtomicU64 = AtomicU64::new(1);
    let n = N.fetch_add(1, Ordering::SeqCst);
    PeerId(Sha256::digest(format!("peer-{n}-{}", std::process::id())).into())
}

/// Deterministic pseudo-random content.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The manifest of `data` with the default chunk size.
pub fn manifest(name: &str, data: &[u8]) -> Manifest {
    Manifest::of_bytes(name, data, CHUNK_SIZE).expect("a valid manifest")
}

/// Asserts a JSON error body with the given status and code.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(resp.status(), status);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "error bodies are JSON"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    body["message"].as_str().unwrap().to_owned()
}

/// Runs `f` with an overall timeout so no test hangs.
pub async fn within<F: Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out")
}
