//! Shared test harness: trackers on port 0 over SQLite temp files or PostgreSQL schemas,
//! HTTP and WebSocket clients, builders for manifests, and test peers with real X25519 keys
//! that register with a proof (challenge → proof → peer token).
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use curve25519_dalek::montgomery::MontgomeryPoint;
use p2p_proto::peer_auth::{PEER_TOKEN_HEADER, proof_mac};
use p2p_proto::{CHUNK_SIZE, Manifest, PeerId};
use p2p_tracker::app::{self, RunningTracker, RuntimeOptions};
use p2p_tracker::clock::ManualClock;
use p2p_tracker::config::ServeArgs;
use p2p_tracker::store::{PgStore, SqliteStore, Store};
use parking_lot::Mutex;
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
        rate_limit_replicas: 1,
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
        relay_url: None,
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
    /// The peer token of each peer registered with [`TestTracker::register`].
    tokens: Mutex<HashMap<PeerId, String>>,
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
            tokens: Mutex::new(HashMap::new()),
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

    /// The served OpenAPI spec, fetched without credentials (as a client generator would).
    pub async fn spec(&self) -> serde_json::Value {
        let resp = self
            .http
            .get(self.url("/api/openapi.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "GET /api/openapi.json");
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

    /// Registers a [`peer_id`] at 10.1.2.3:`port` with a proof; keeps its peer token.
    pub async fn register(&self, peer: &PeerId, port: u16) -> serde_json::Value {
        self.register_with(
            peer,
            serde_json::json!({"peer_id": peer, "addresses": ["10.1.2.3"], "port": port}),
        )
        .await
    }

    /// Registers `peer` with `body` (its proof added), expecting 200; keeps its peer token.
    pub async fn register_with(&self, peer: &PeerId, body: serde_json::Value) -> serde_json::Value {
        let resp = register_proven(&self.http, &self.base, KEY, peer, body).await;
        assert_eq!(resp.status(), 200, "register: {:?}", resp.text().await);
        let answer: serde_json::Value = resp.json().await.unwrap();
        let token = answer["peer_token"].as_str().expect("a peer token");
        self.tokens.lock().insert(*peer, token.to_owned());
        answer
    }

    /// The peer token of a peer registered here.
    pub fn token(&self, peer: &PeerId) -> String {
        self.tokens
            .lock()
            .get(peer)
            .cloned()
            .unwrap_or_else(|| panic!("peer {peer} was not registered by this test"))
    }

    /// POST with the API key and `peer`'s token (heartbeats, announces).
    pub fn peer_post(
        &self,
        peer: &PeerId,
        path: &str,
        body: &serde_json::Value,
    ) -> reqwest::RequestBuilder {
        self.post(path, body)
            .header(PEER_TOKEN_HEADER, self.token(peer))
    }

    /// DELETE with the API key and `peer`'s token (unregister, unannounce).
    pub fn peer_delete(&self, peer: &PeerId, path: &str) -> reqwest::RequestBuilder {
        self.delete(path)
            .header(PEER_TOKEN_HEADER, self.token(peer))
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
        self.peer_post(peer, "/api/files/announce", &body)
            .send()
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.tracker.stop().await.expect("clean stop");
    }
}

/// The private keys of the peers [`peer_id`] made, so tests can prove them.
static SECRETS: LazyLock<Mutex<HashMap<PeerId, [u8; 32]>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// A distinct peer id per call: the X25519 public key of a fresh private key, kept for
/// [`peer_secret`].
pub fn peer_id() -> PeerId {
    static N: AtomicU64 = AtomicU64::new(1);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let secret: [u8; 32] = Sha256::digest(format!("peer-{n}-{}", std::process::id())).into();
    let id = PeerId(MontgomeryPoint::mul_base_clamped(secret).to_bytes());
    SECRETS.lock().insert(id, secret);
    id
}

/// The private key of a peer id from [`peer_id`].
pub fn peer_secret(peer: &PeerId) -> [u8; 32] {
    *SECRETS
        .lock()
        .get(peer)
        .unwrap_or_else(|| panic!("{peer} was not made by peer_id()"))
}

/// The proof `{nonce, mac}` answering `challenge` (the JSON of `POST /api/peers/challenge`)
/// made with `secret`.
pub fn prove(secret: [u8; 32], challenge: &serde_json::Value) -> serde_json::Value {
    let hex32 = |field: &str| {
        let mut out = [0u8; 32];
        hex::decode_to_slice(challenge[field].as_str().unwrap(), &mut out).unwrap();
        out
    };
    let (tracker_key, nonce) = (hex32("tracker_key"), hex32("nonce"));
    let peer: PeerId = challenge["peer_id"].as_str().unwrap().parse().unwrap();
    let shared = MontgomeryPoint(tracker_key).mul_clamped(secret).to_bytes();
    serde_json::json!({
        "nonce": challenge["nonce"],
        "mac": hex::encode(proof_mac(&shared, &tracker_key, &nonce, &peer)),
    })
}

/// `POST /api/peers/challenge` for `peer` with `api_key`, expecting 200.
pub async fn challenge(
    http: &reqwest::Client,
    base: &str,
    api_key: &str,
    peer: &PeerId,
) -> serde_json::Value {
    let resp = http
        .post(format!("{base}/api/peers/challenge"))
        .header("X-API-Key", api_key)
        .json(&serde_json::json!({"peer_id": peer}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "challenge: {:?}", resp.text().await);
    resp.json().await.unwrap()
}

/// Registers `peer` (from [`peer_id`]) with `body` at the tracker at `base`: a challenge, then
/// the registration with its proof. The answer, whatever its status.
pub async fn register_proven(
    http: &reqwest::Client,
    base: &str,
    api_key: &str,
    peer: &PeerId,
    mut body: serde_json::Value,
) -> reqwest::Response {
    let challenge = challenge(http, base, api_key, peer).await;
    body["proof"] = prove(peer_secret(peer), &challenge);
    http.post(format!("{base}/api/peers/register"))
        .header("X-API-Key", api_key)
        .json(&body)
        .send()
        .await
        .unwrap()
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
