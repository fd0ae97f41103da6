//! The OpenAPI spec against the API it describes. Every operation in the served spec gets a
//! valid request and a set of bad ones (no credentials, wrong credentials, no or a wrong
//! `Content-Type`, malformed JSON, bodies too large or too slow, invalid ids and parameters,
//! another peer's token, a non-admin caller, the rate limit), and every status that comes back
//! must be one the spec documents for that operation, with the JSON error body. An operation
//! the tables below do not know fails the test, so a new route is probed too. The constraints
//! the API enforces are in the spec, with the values the code uses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use p2p_proto::PeerId;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `--max-body-bytes` of the probed tracker.
const MAX_BODY: usize = 64 * 1024;
/// An id of the right shape that names nothing.
const UNKNOWN_HEX: &str = "00000000000000000000000000000000000000000000000000000000000000ff";

/// How a request authenticates.
#[derive(Clone, Debug)]
enum Cred {
    None,
    Key(String),
    Bearer(String),
}

/// A request body.
#[derive(Clone, Debug)]
enum Body {
    Json(Value),
    /// Bytes with this `Content-Type` (none when `None`).
    Raw(Option<&'static str>, Vec<u8>),
}

/// One request to an operation.
#[derive(Clone, Debug)]
struct Req {
    /// Values of the path's `{parameters}`.
    params: BTreeMap<&'static str, String>,
    /// The query string, without `?`.
    query: String,
    cred: Cred,
    headers: Vec<(&'static str, String)>,
    body: Option<Body>,
}

impl Req {
    fn new(cred: Cred) -> Self {
        Self {
            params: BTreeMap::new(),
            query: String::new(),
            cred,
            headers: Vec::new(),
            body: None,
        }
    }
    fn param(mut self, name: &'static str, value: impl ToString) -> Self {
        self.params.insert(name, value.to_string());
        self
    }
    fn query(mut self, q: impl Into<String>) -> Self {
        self.query = q.into();
        self
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
        self
    }
    fn json(mut self, body: Value) -> Self {
        self.body = Some(Body::Json(body));
        self
    }
}

/// An operation of the spec.
#[derive(Clone, Debug)]
struct Op {
    id: String,
    method: String,
    /// The path template, e.g. `/api/files/{hash}`.
    path: String,
    spec: Value,
}

impl Op {
    fn documented(&self) -> BTreeSet<u16> {
        self.spec["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|s| s.parse().unwrap())
            .collect()
    }
    fn secured(&self) -> bool {
        self.spec.get("security").is_some()
    }
    fn has_body(&self) -> bool {
        self.spec.get("requestBody").is_some()
    }
    fn is_websocket(&self) -> bool {
        self.documented().contains(&101)
    }
    fn params_in(&self, place: &str) -> Vec<Value> {
        self.spec["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["in"] == place).cloned().collect())
            .unwrap_or_default()
    }
    fn url_path(&self, req: &Req) -> String {
        let mut path = self.path.clone();
        for (name, value) in &req.params {
            path = path.replace(&format!("{{{name}}}"), value);
        }
        assert!(
            !path.contains('{'),
            "{}: unfilled parameter in {path}",
            self.id
        );
        if req.query.is_empty() {
            path
        } else {
            format!("{path}?{}", req.query)
        }
    }
}

/// What a probe got back.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// The JSON error body, for statuses >= 400.
    error_body: Option<Value>,
}

/// Every answer seen, checked against the spec at the end.
#[derive(Default)]
struct Ledger {
    seen: Vec<(String, String, u16)>,
    failures: Vec<String>,
}

impl Ledger {
    fn record(&mut self, op: &Op, probe: &str, answer: &Answer, expected: Option<u16>) {
        let status = answer.status;
        self.seen.push((op.id.clone(), probe.to_owned(), status));
        if !op.documented().contains(&status) {
            self.failures.push(format!(
                "{} {} ({probe}): {status} is not documented (documented: {:?})",
                op.method,
                op.path,
                op.documented()
            ));
        }
        if let Some(want) = expected
            && want != status
        {
            self.failures.push(format!(
                "{} {} ({probe}): expected {want}, got {status} {:?}",
                op.method, op.path, answer.error_body
            ));
        }
        if status >= 400 {
            let body = answer.error_body.as_ref();
            let ok = body.is_some_and(|b| b["error"].is_string() && b["message"].is_string());
            if !ok {
                self.failures.push(format!(
                    "{} {} ({probe}): {status} without the JSON error body: {body:?}",
                    op.method, op.path
                ));
            }
        }
    }
}

async fn send(t: &TestTracker, op: &Op, req: &Req) -> Answer {
    let method: reqwest::Method = op.method.to_uppercase().parse().unwrap();
    let mut b = t.http.request(method, t.url(&op.url_path(req)));
    b = match &req.cred {
        Cred::None => b,
        Cred::Key(k) => b.header("X-API-Key", k),
        Cred::Bearer(tok) => b.header("Authorization", format!("Bearer {tok}")),
    };
    for (name, value) in &req.headers {
        b = b.header(*name, value);
    }
    b = match &req.body {
        None => b,
        Some(Body::Json(v)) => b.json(v),
        Some(Body::Raw(ct, bytes)) => {
            let b = b.body(bytes.clone());
            match ct {
                Some(ct) => b.header("Content-Type", *ct),
                None => b,
            }
        }
    };
    let resp = b.send().await.unwrap();
    let status = resp.status().as_u16();
    let is_json = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("application/json"));
    let text = resp.text().await.unwrap();
    let error_body = (status >= 400 && is_json)
        .then(|| serde_json::from_str(&text).ok())
        .flatten();
    Answer { status, error_body }
}

/// A request written by hand on a fresh connection: `head` is the request line and headers
/// (without the blank line), `body` what follows. Reads the answer to the end.
async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> Answer {
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        s.write_all(body).await.unwrap();
        let mut buf = Vec::new();
        // The server may close without reading what it refused; what it sent still arrives.
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP answer to {head:?}: {text:?}"));
        let error_body = text
            .split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str(b).ok());
        Answer { status, error_body }
    })
    .await
    .expect("raw request answered")
}

fn auth_header(cred: &Cred) -> String {
    match cred {
        Cred::None => String::new(),
        Cred::Key(k) => format!("\r\nX-API-Key: {k}"),
        Cred::Bearer(t) => format!("\r\nAuthorization: Bearer {t}"),
    }
}

/// A WebSocket upgrade; its status (101 when upgraded).
async fn upgrade(t: &TestTracker, op: &Op, req: &Req) -> Answer {
    let url = format!("ws://{}{}", t.tracker.addr, op.url_path(req));
    match tokio_tungstenite::connect_async(url).await {
        Ok((ws, resp)) => {
            drop(ws);
            Answer {
                status: resp.status().as_u16(),
                error_body: None,
            }
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Answer {
            status: resp.status().as_u16(),
            error_body: resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok()),
        },
        Err(e) => panic!("upgrade to {}: {e}", op.path),
    }
}

fn operations(spec: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push(Op {
                id: op["operationId"].as_str().unwrap().to_owned(),
                method: method.clone(),
                path: path.clone(),
                spec: op.clone(),
            });
        }
    }
    ops
}

/// The tracker's state the valid requests need.
struct World {
    key: Cred,
    admin: Cred,
    /// Registered; announced `file`.
    a: PeerId,
    /// Registered; another peer's token for A's routes.
    b: PeerId,
    b_token: String,
    /// Registered, to be unregistered by the valid request.
    d: PeerId,
    file: p2p_proto::Manifest,
    /// Announced by A, removed by the valid request.
    removable: p2p_proto::FileId,
    /// Announced by A, unannounced by the valid request.
    unannounceable: p2p_proto::FileId,
    /// A database API key's id, revoked by the valid request.
    key_id: String,
    /// A folder collection (of `file`) announced by A: its encoding.
    folder: Vec<u8>,
}

async fn admin_jwt(t: &TestTracker) -> String {
    let body = json!({"username": ADMIN, "password": ADMIN_PASSWORD});
    let resp = t
        .http
        .post(t.url("/api/auth/login"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn world(t: &TestTracker) -> World {
    let admin = Cred::Bearer(admin_jwt(t).await);
    let (a, b, d) = (peer_id(), peer_id(), peer_id());
    for (p, port) in [(&a, 7001), (&b, 7002), (&d, 7003)] {
        t.register(p, port).await;
    }
    let file = manifest("probe.bin", &content(300_000, 1));
    let removable = manifest("removable.bin", &content(1000, 2));
    let unannounceable = manifest("unannounce.bin", &content(1000, 3));
    let folder = p2p_proto::collection::Collection::new(
        "probe",
        vec![p2p_proto::collection::Entry::file(
            "probe.bin",
            file.id,
            file.size,
            false,
        )],
    )
    .unwrap()
    .encode();
    let list = manifest("probe.p2p-folder", &folder);
    for m in [&file, &removable, &unannounceable, &list] {
        assert_eq!(t.announce(&a, m, None).await.status(), 200);
    }
    let resp = t
        .http
        .post(t.url("/api/keys"))
        .json(&json!({"name": "to revoke"}))
        .header("Authorization", format!("Bearer {}", bearer(&admin)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let key_id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = t
        .http
        .post(t.url("/api/users"))
        .json(&json!({"username": "to-delete", "password": "long enough", "role": "viewer"}))
        .header("Authorization", format!("Bearer {}", bearer(&admin)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    World {
        key: Cred::Key(KEY.to_owned()),
        admin,
        a,
        b,
        b_token: t.token(&b),
        d,
        file,
        removable: removable.id,
        unannounceable: unannounceable.id,
        key_id,
        folder,
    }
}

/// The id of the world's folder collection.
fn folder_id(w: &World) -> p2p_proto::FileId {
    use sha2::Digest;
    p2p_proto::FileId(sha2::Sha256::digest(&w.folder).into())
}

fn bearer(c: &Cred) -> &str {
    match c {
        Cred::Bearer(t) => t,
        _ => unreachable!(),
    }
}

/// A registration body for `peer` with a fresh proof.
async fn proven(t: &TestTracker, peer: &PeerId) -> Value {
    let ch = challenge(&t.http, &t.base, KEY, peer).await;
    json!({"peer_id": peer, "addresses": ["10.1.2.3"], "port": 7000,
           "proof": prove(peer_secret(peer), &ch)})
}

/// The valid request of each operation and its status. Operations missing here fail the test.
async fn valid(t: &TestTracker, w: &World, op: &Op) -> Option<(Req, u16)> {
    let key = || Req::new(w.key.clone());
    let admin = || Req::new(w.admin.clone());
    let token = |p: &PeerId| t.token(p);
    Some(match op.id.as_str() {
        "health" | "metrics" => (Req::new(Cred::None), 200),
        "stats" | "list_peers" | "list_files" | "list_relays" => (key(), 200),
        "login" => (Req::new(Cred::None).json(json!({"api_key": KEY})), 200),
        "peer_challenge" => (key().json(json!({"peer_id": w.a})), 200),
        "register_peer" => (key().json(proven(t, &w.a).await), 200),
        "heartbeat" => (
            key()
                .header("X-Peer-Token", token(&w.a))
                .json(json!({"peer_id": w.a})),
            200,
        ),
        "get_peer" => (key().param("id", w.a), 200),
        "unregister_peer" => (
            key().param("id", w.d).header("X-Peer-Token", token(&w.d)),
            204,
        ),
        "announce_file" => (
            key()
                .header("X-Peer-Token", token(&w.a))
                .json(json!({"peer_id": w.a, "file": w.file})),
            200,
        ),
        "get_file" => (key().param("hash", w.file.id), 200),
        "file_peers" => (key().param("hash", w.file.id), 200),
        "create_read_grant" => (key().param("hash", w.file.id), 201),
        "create_member_grants" => (
            Req {
                body: Some(Body::Raw(
                    Some("application/octet-stream"),
                    w.folder.clone(),
                )),
                ..key()
            }
            .param("hash", folder_id(w)),
            200,
        ),
        "remove_file" => (admin().param("hash", w.removable), 204),
        "unannounce_file" => (
            key()
                .param("hash", w.unannounceable)
                .param("peer_id", w.a)
                .header("X-Peer-Token", token(&w.a)),
            204,
        ),
        "events" => (Req::new(Cred::None).query(format!("token={KEY}")), 101),
        "relay" => (
            Req::new(Cred::None).query(format!("peer_id={}&token={KEY}", w.a)),
            101,
        ),
        "list_api_keys" | "list_users" => (admin(), 200),
        "create_api_key" => (admin().json(json!({"name": "probe"})), 201),
        "revoke_api_key" => (admin().param("key_id", &w.key_id), 204),
        "create_user" => (
            admin().json(json!({"username": "probe", "password": "long enough", "role": "viewer"})),
            201,
        ),
        "delete_user" => (admin().param("username", "to-delete"), 204),
        _ => return None,
    })
}

/// Requests particular to one operation: what it refuses beyond the generic probes.
async fn special(
    t: &TestTracker,
    w: &World,
    op: &Op,
    base: &Req,
) -> Vec<(String, Req, Option<u16>)> {
    let mut out: Vec<(String, Req, Option<u16>)> = Vec::new();
    let mut add =
        |what: &str, req: Req, status: Option<u16>| out.push((what.to_owned(), req, status));
    match op.id.as_str() {
        "login" => {
            add(
                "wrong key",
                base.clone().json(json!({"api_key": "nope"})),
                Some(401),
            );
            add(
                "neither key nor password",
                base.clone().json(json!({})),
                Some(400),
            );
            // --login-failures-per-minute 3 here: the test checks that one got 429.
            let wrong = json!({"username": "nobody", "password": "wrong password"});
            for _ in 0..5 {
                add("wrong password", base.clone().json(wrong.clone()), None);
            }
        }
        "register_peer" => {
            let mut body = proven(t, &w.b).await;
            body.as_object_mut().unwrap().remove("proof");
            add("no proof", base.clone().json(body.clone()), Some(401));
            let mut bad = proven(t, &w.b).await;
            bad["proof"]["mac"] = json!(UNKNOWN_HEX);
            add("wrong proof", base.clone().json(bad), Some(401));
            let mut bad = proven(t, &w.b).await;
            bad["proof"]["mac"] = json!("zz");
            add("malformed proof", base.clone().json(bad), Some(400));
            let mut bad = proven(t, &w.b).await;
            bad["name"] = json!("bell\u{7}");
            add(
                "control character in name",
                base.clone().json(bad),
                Some(400),
            );
            let mut bad = proven(t, &w.b).await;
            bad["addresses"] = json!(vec!["10.0.0.1"; 17]);
            add("17 addresses", base.clone().json(bad), Some(400));
            let mut bad = proven(t, &w.b).await;
            bad["addresses"] = json!(["http://x/"]);
            add("a URL as address", base.clone().json(bad), Some(400));
            let mut bad = proven(t, &w.b).await;
            bad["port"] = json!(70000);
            add("port out of range", base.clone().json(bad), Some(400));
        }
        "heartbeat" => {
            let many: Vec<Value> = (0..257)
                .map(|_| json!({"peer_id": w.b, "path": "direct"}))
                .collect();
            add(
                "257 connections",
                base.clone()
                    .json(json!({"peer_id": w.a, "connections": many})),
                Some(400),
            );
            add(
                "unknown path kind",
                base.clone().json(
                    json!({"peer_id": w.a, "connections": [{"peer_id": w.b, "path": "teleport"}]}),
                ),
                Some(400),
            );
        }
        "announce_file" => {
            let mut bad = json!({"peer_id": w.a, "file": w.file});
            bad["file"]["chunk_size"] = json!(1000);
            add("chunk size out of range", base.clone().json(bad), Some(400));
            let mut bad = json!({"peer_id": w.a, "file": w.file});
            bad["file"]["name"] = json!("../x");
            add("path in name", base.clone().json(bad), Some(400));
            let mut bad = json!({"peer_id": w.a, "file": w.file});
            bad["have"] = json!("not base64!");
            add("bad have", base.clone().json(bad), Some(400));
            // A second variant while the first has an online announcer
            // (--max-manifest-variants 1 here).
            let mut other = manifest("other.bin", &content(300_000, 9));
            other.id = w.file.id;
            let b = base
                .clone()
                .header("X-Peer-Token", t.token(&w.b))
                .json(json!({"peer_id": w.b, "file": other}));
            add("another variant", b, Some(409));
            // New files until the quota (--max-manifests-per-principal 5) is spent: the
            // test checks that one of them got 403.
            for n in 0..6u64 {
                let m = manifest(&format!("quota-{n}.bin"), &content(1000, 100 + n));
                let req = base.clone().json(json!({"peer_id": w.a, "file": m}));
                add("a new file", req, None);
            }
        }
        "create_read_grant" => {
            add(
                "ttl over 30 days",
                base.clone().query("ttl_secs=2592001"),
                Some(400),
            );
            add("ttl of 0", base.clone().query("ttl_secs=0"), Some(400));
            add(
                "ttl not a number",
                base.clone().query("ttl_secs=x"),
                Some(400),
            );
        }
        "create_member_grants" => {
            let grant = |id: p2p_proto::FileId| async move {
                let resp = t
                    .post(&format!("/api/files/{id}/grants"), &json!({}))
                    .send()
                    .await
                    .unwrap();
                resp.json::<Value>().await.unwrap()["grant"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            };
            let by_grant = Req {
                cred: Cred::None,
                ..base.clone()
            };
            add(
                "the collection's read grant",
                by_grant
                    .clone()
                    .header("X-Read-Grant", grant(folder_id(w)).await),
                Some(200),
            );
            add(
                "a read grant of another id",
                by_grant
                    .clone()
                    .header("X-Read-Grant", grant(w.file.id).await),
                Some(403),
            );
            add(
                "a malformed read grant",
                by_grant.header("X-Read-Grant", "zz"),
                Some(401),
            );
            add(
                "a body that is not the collection",
                Req {
                    body: Some(Body::Raw(
                        Some("application/octet-stream"),
                        b"not it".to_vec(),
                    )),
                    ..base.clone()
                },
                Some(400),
            );
        }
        "get_file" | "file_peers" => {
            // A read grant instead of credentials: for this id it reads, for another it is
            // refused.
            let resp = t
                .post(
                    &format!("/api/files/{}/grants", w.unannounceable),
                    &json!({}),
                )
                .send()
                .await
                .unwrap();
            let other: Value = resp.json().await.unwrap();
            let grant = other["grant"].as_str().unwrap().to_owned();
            add(
                "a read grant of another id",
                Req {
                    cred: Cred::None,
                    ..base.clone()
                }
                .header("X-Read-Grant", grant),
                Some(403),
            );
            add(
                "a malformed read grant",
                Req {
                    cred: Cred::None,
                    ..base.clone()
                }
                .header("X-Read-Grant", "zz"),
                Some(401),
            );
            if op.id == "file_peers" {
                add(
                    "a malformed peer proof",
                    base.clone().header("X-Peer-Proof", "zz"),
                    Some(401),
                );
            }
            add(
                "no such variant",
                base.clone().query("variant=99"),
                Some(404),
            );
            add(
                "variant not a number",
                base.clone().query("variant=x"),
                Some(400),
            );
        }
        "list_files" => {
            let long = "x".repeat(256);
            add(
                "search too long",
                base.clone().query(format!("search={long}")),
                Some(400),
            );
            add(
                "limit not a number",
                base.clone().query("limit=x"),
                Some(400),
            );
        }
        "list_peers" => add(
            "online not a boolean",
            base.clone().query("online=maybe"),
            Some(400),
        ),
        "unregister_peer" => {
            let admin = Req::new(w.admin.clone()).param("id", UNKNOWN_HEX);
            add("admin, unknown peer", admin, Some(404));
        }
        "create_user" => {
            let dup = json!({"username": ADMIN, "password": "long enough", "role": "viewer"});
            add("name taken", base.clone().json(dup), Some(409));
            let bad = json!({"username": "x", "password": "short", "role": "viewer"});
            add("short password", base.clone().json(bad), Some(400));
            let bad = json!({"username": "x", "password": "long enough", "role": "root"});
            add("unknown role", base.clone().json(bad), Some(400));
            let bad =
                json!({"username": "x".repeat(65), "password": "long enough", "role": "viewer"});
            add("name too long", base.clone().json(bad), Some(400));
        }
        "create_api_key" => {
            add(
                "empty name",
                base.clone().json(json!({"name": ""})),
                Some(400),
            );
            add(
                "name too long",
                base.clone().json(json!({"name": "k".repeat(65)})),
                Some(400),
            );
        }
        "delete_user" => {
            add(
                "own account",
                base.clone().param("username", ADMIN),
                Some(400),
            );
            add(
                "name too long",
                base.clone().param("username", "u".repeat(65)),
                Some(400),
            );
        }
        _ => {}
    }
    out
}

/// The generic bad requests of an operation, derived from its spec, with the status each must
/// get (None: any documented one).
fn generic(w: &World, op: &Op, base: &Req) -> Vec<(String, Req, Option<u16>)> {
    let mut out = Vec::new();
    if op.secured() {
        out.push((
            "no credentials".into(),
            Req {
                cred: Cred::None,
                ..base.clone()
            },
            Some(401),
        ));
        let wrong = Req {
            cred: Cred::Key("wrong-key".into()),
            ..base.clone()
        };
        out.push(("wrong API key".into(), wrong, Some(401)));
        let wrong = Req {
            cred: Cred::Bearer("not.a.jwt".into()),
            ..base.clone()
        };
        out.push(("wrong bearer token".into(), wrong, Some(401)));
        if matches!(base.cred, Cred::Bearer(_)) {
            // Admin operations: a peer's API key may not.
            let peer = Req {
                cred: w.key.clone(),
                ..base.clone()
            };
            out.push(("not an admin".into(), peer, Some(403)));
        }
    }
    if let Some(Body::Json(valid)) = &base.body {
        let bytes = serde_json::to_vec(valid).unwrap();
        for (what, ct, bytes, status) in [
            ("no Content-Type", None, bytes.clone(), 415),
            (
                "Content-Type text/plain",
                Some("text/plain"),
                bytes.clone(),
                415,
            ),
            (
                "malformed JSON",
                Some("application/json"),
                b"{\"peer".to_vec(),
                400,
            ),
            (
                "a JSON array",
                Some("application/json"),
                b"[]".to_vec(),
                400,
            ),
        ] {
            let req = Req {
                body: Some(Body::Raw(ct, bytes)),
                ..base.clone()
            };
            out.push((what.into(), req, Some(status)));
        }
    }
    for p in op.params_in("path") {
        let name = p["name"].as_str().unwrap();
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        let bad = if name == "username" {
            "u".repeat(65)
        } else {
            "nothex".into()
        };
        out.push((
            format!("invalid {name}"),
            base.clone().param(name, bad),
            Some(400),
        ));
        if p["schema"]["pattern"] == "^[0-9a-fA-F]{64}$" {
            // Unknown: 404, or 403 where the peer token names another peer.
            out.push((
                format!("unknown {name}"),
                base.clone().param(name, UNKNOWN_HEX),
                None,
            ));
        }
    }
    for p in op.params_in("header") {
        if p["name"] == "X-Peer-Token" {
            // A lookup of a file's peers names no peer: the token only asks for the asking
            // peer's admission, so without one (or with any valid one) it is answered.
            let optional = op.id == "file_peers";
            let needed = |status| (!optional).then_some(status);
            let mut none = base.clone();
            none.headers.retain(|(n, _)| *n != "X-Peer-Token");
            out.push(("no peer token".into(), none, needed(401)));
            // A token that is not one sends the peer to register again, like a missing one.
            let malformed = base.clone().header("X-Peer-Token", "zz");
            out.push(("malformed peer token".into(), malformed, Some(401)));
            let empty = base.clone().header("X-Peer-Token", "");
            out.push(("empty peer token".into(), empty, needed(401)));
            let other = base.clone().header("X-Peer-Token", w.b_token.clone());
            out.push(("another peer's token".into(), other, needed(403)));
        }
    }
    out
}

/// Requests written by hand: a declared body over the limit (every operation), and for
/// operations with a body a chunked one over the limit and one that stops arriving.
async fn raw_probes(t: &TestTracker, op: &Op, base: &Req) -> Vec<(String, Answer, u16)> {
    let addr = t.tracker.addr;
    let target = op.url_path(base);
    let method = op.method.to_uppercase();
    let mut head = format!("{method} {target} HTTP/1.1{}", auth_header(&base.cred));
    for (name, value) in &base.headers {
        head.push_str(&format!("\r\n{name}: {value}"));
    }
    let mut out = Vec::new();
    let declared = format!("{head}\r\nContent-Length: {}", MAX_BODY + 1);
    out.push((
        "declared body over the limit".to_owned(),
        raw(addr, &declared, b"").await,
        413,
    ));
    if op.has_body() {
        let json = format!("{head}\r\nContent-Type: application/json");
        let chunked = format!("{json}\r\nTransfer-Encoding: chunked");
        let mut body = format!("{:x}\r\n", MAX_BODY + 1).into_bytes();
        body.resize(body.len() + MAX_BODY + 1, b' ');
        out.push((
            "chunked body over the limit".to_owned(),
            raw(addr, &chunked, &body).await,
            413,
        ));
        // --body-timeout-secs 1 here
        let slow = format!("{json}\r\nContent-Length: 100");
        out.push((
            "body stops arriving".to_owned(),
            raw(addr, &slow, b"{\"peer_id\"").await,
            408,
        ));
    }
    out
}

/// The WebSocket operations: upgrades with and without credentials, a plain GET, bad
/// parameters.
async fn websocket_probes(t: &TestTracker, op: &Op, valid: &Req) -> Vec<(String, Answer, u16)> {
    let mut out = Vec::new();
    let plain = send(t, op, valid).await;
    out.push(("not an upgrade".to_owned(), plain, 400));
    let anonymous = Req {
        query: valid.query.replace(&format!("token={KEY}"), ""),
        ..valid.clone()
    };
    // The feed takes its token in the first message; the relay needs it at once.
    let status = if op.id == "events" { 101 } else { 401 };
    out.push((
        "no credentials".to_owned(),
        upgrade(t, op, &anonymous).await,
        status,
    ));
    let wrong = Req {
        query: valid.query.replace(&format!("token={KEY}"), "token=wrong"),
        ..valid.clone()
    };
    out.push(("wrong token".to_owned(), upgrade(t, op, &wrong).await, 401));
    for p in op.params_in("query") {
        if p["schema"]["pattern"].is_string() {
            let name = p["name"].as_str().unwrap();
            let q = format!("{name}=nothex&token={KEY}");
            let bad = Req {
                query: q,
                ..valid.clone()
            };
            out.push((format!("invalid {name}"), upgrade(t, op, &bad).await, 400));
        }
    }
    out.push(("valid".to_owned(), upgrade(t, op, valid).await, 101));
    out
}

fn tracker_args() -> p2p_tracker::config::ServeArgs {
    let mut args = serve_args();
    args.max_body_bytes = MAX_BODY;
    args.guard.body_timeout_secs = 1;
    args.guard.login_failures_per_minute = 3;
    args.guard.max_manifest_variants = 1;
    args.guard.max_manifests_per_principal = 5;
    args
}

#[tokio::test]
async fn every_status_an_operation_returns_is_in_its_spec() {
    within(120, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, tracker_args()).await;
        let spec = t.spec().await;
        let ops = operations(&spec);
        let w = world(&t).await;
        let mut ledger = Ledger::default();
        let mut unknown = Vec::new();
        for op in &ops {
            let Some((valid_req, valid_status)) = valid(&t, &w, op).await else {
                unknown.push(format!("{} {} ({})", op.method, op.path, op.id));
                continue;
            };
            if op.is_websocket() {
                for (what, answer, want) in websocket_probes(&t, op, &valid_req).await {
                    ledger.record(op, &what, &answer, Some(want));
                }
                for (what, answer, want) in raw_probes(&t, op, &valid_req).await {
                    ledger.record(op, &what, &answer, Some(want));
                }
                continue;
            }
            for (what, req, want) in generic(&w, op, &valid_req) {
                ledger.record(op, &what, &send(&t, op, &req).await, want);
            }
            for (what, req, want) in special(&t, &w, op, &valid_req).await {
                ledger.record(op, &what, &send(&t, op, &req).await, want);
            }
            for (what, answer, want) in raw_probes(&t, op, &valid_req).await {
                ledger.record(op, &what, &answer, Some(want));
            }
            let answer = send(&t, op, &valid_req).await;
            ledger.record(op, "valid", &answer, Some(valid_status));
        }
        assert!(
            unknown.is_empty(),
            "operations this test has no valid request for (add them to `valid`): {unknown:?}"
        );
        // The statuses only a sequence of requests reaches.
        for (op, probe, status) in [
            ("announce_file", "a new file", 403),
            ("login", "wrong password", 429),
        ] {
            assert!(
                ledger
                    .seen
                    .iter()
                    .any(|(o, p, s)| o == op && p == probe && *s == status),
                "{op}: no {probe} got {status}"
            );
        }
        let mut table: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
        for (op, _, status) in &ledger.seen {
            table.entry(op).or_default().insert(*status);
        }
        for (op, statuses) in &table {
            println!("{op:>16}: {statuses:?}");
        }
        println!("{} requests", ledger.seen.len());
        assert!(
            ledger.failures.is_empty(),
            "{} failures:\n{}",
            ledger.failures.len(),
            ledger.failures.join("\n")
        );
        t.stop().await;
    })
    .await;
}

/// Rate-limited operations document 429; `/health` and `/metrics` are not limited.
#[tokio::test]
async fn the_rate_limit_is_documented_where_it_applies() {
    within(60, async {
        let db = TestDb::sqlite();
        let mut args = tracker_args();
        args.rate_limit_rps = 1;
        args.rate_limit_burst = Some(1);
        let t = TestTracker::start(&db, args).await;
        let spec = t.spec().await;
        let mut ledger = Ledger::default();
        for op in operations(&spec) {
            let mut req = Req::new(Cred::None);
            for p in op.params_in("path") {
                let name: &'static str = Box::leak(p["name"].as_str().unwrap().into());
                let value = match name {
                    "key_id" => "000000000000".to_owned(),
                    "username" => "nobody".to_owned(),
                    _ => UNKNOWN_HEX.to_owned(),
                };
                req = req.param(name, value);
            }
            if op.has_body() {
                req = req.json(json!({}));
            }
            let mut limited = false;
            for n in 0..3 {
                let answer = send(&t, &op, &req).await;
                limited |= answer.status == 429;
                ledger.record(&op, &format!("request {n}"), &answer, None);
            }
            let exempt = matches!(op.path.as_str(), "/health" | "/metrics");
            assert_eq!(limited, !exempt, "{} {}: rate limited", op.method, op.path);
            assert_eq!(
                op.documented().contains(&429),
                !exempt,
                "{} {} documents 429",
                op.method,
                op.path
            );
        }
        assert!(ledger.failures.is_empty(), "{}", ledger.failures.join("\n"));
        t.stop().await;
    })
    .await;
}

/// Every schema in the spec, with where it is.
fn walk<'a>(at: String, v: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(m) => {
            out.push((at.clone(), v));
            for (k, child) in m {
                walk(format!("{at}/{k}"), child, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                walk(format!("{at}/{i}"), child, out);
            }
        }
        _ => {}
    }
}

/// The schema of `property` of the component `schema`, or of its array items.
fn property<'a>(spec: &'a Value, schema: &str, property: &str) -> &'a Value {
    let p = &spec["components"]["schemas"][schema]["properties"][property];
    assert!(p.is_object(), "{schema}.{property} is in the spec");
    p
}

#[tokio::test]
async fn the_spec_carries_the_constraints_the_api_enforces() {
    within(30, async {
        use p2p_proto::manifest::{MAX_CHUNK_SIZE, MAX_CHUNKS, MAX_NAME_LEN, MIN_CHUNK_SIZE};
        use p2p_tracker::auth::accounts::MAX_NAME_CHARS;
        use p2p_tracker::auth::password::MIN_PASSWORD_LEN;
        use p2p_tracker::auth::peer_proof::TOKEN_LEN;

        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let spec = t.spec().await;

        // Every error status is documented with the JSON error body.
        for op in operations(&spec) {
            for (status, resp) in op.spec["responses"].as_object().unwrap() {
                // /health's 503 is its own answer (the database is down), not an error.
                let degraded = op.path == "/health" && status == "503";
                if status.parse::<u16>().unwrap() >= 400 && !degraded {
                    let content = resp["content"].as_object().unwrap();
                    let (media, json) = content.iter().next().unwrap();
                    assert!(media.starts_with("application/json"), "{media}");
                    assert_eq!(
                        json["schema"]["$ref"], "#/components/schemas/ErrorBody",
                        "{} {} {status}",
                        op.method, op.path
                    );
                }
            }
        }

        // Every hex id (file ids, peer ids, digests) has its pattern, wherever it appears.
        let mut all = Vec::new();
        walk(String::new(), &spec, &mut all);
        let mut ids = 0;
        for (at, schema) in &all {
            if matches!(
                schema["format"].as_str(),
                Some("file-id" | "peer-id" | "sha256")
            ) {
                ids += 1;
                assert_eq!(schema["pattern"], "^[0-9a-fA-F]{64}$", "{at}");
            }
        }
        assert!(ids > 20, "only {ids} hex ids found");
        for op in operations(&spec) {
            for p in op.params_in("path") {
                assert!(
                    p["schema"]["pattern"].is_string() || p["schema"]["maxLength"].is_number(),
                    "{} {}: path parameter {} is unconstrained",
                    op.method,
                    op.path,
                    p["name"]
                );
            }
            for p in op.params_in("header") {
                if p["name"] == "X-Peer-Token" {
                    // Not a pattern: a malformed token is a 401 like an expired one (the
                    // peer's cue to register again), not a 400.
                    let says = p["description"].as_str().unwrap_or_default();
                    assert!(
                        says.contains(&format!("{} hex characters", TOKEN_LEN * 2)),
                        "{} {}: {says}",
                        op.method,
                        op.path
                    );
                }
            }
        }

        // The limits, with the values the code uses.
        let addresses = property(&spec, "RegisterPeerRequest", "addresses");
        assert_eq!(addresses["maxItems"], p2p_tracker::swarm::MAX_ADDRESSES);
        for label in ["name", "version"] {
            let p = property(&spec, "RegisterPeerRequest", label);
            assert_eq!(p["maxLength"], 128, "{label}");
            assert!(p["pattern"].is_string(), "{label}");
        }
        for field in ["nonce", "mac"] {
            assert_eq!(
                property(&spec, "PeerProof", field)["pattern"],
                format!("^[0-9a-fA-F]{{{}}}$", p2p_proto::peer_auth::NONCE_LEN * 2)
            );
        }
        assert_eq!(
            property(&spec, "HeartbeatRequest", "connections")["maxItems"],
            p2p_proto::api::MAX_PEER_CONNECTIONS
        );
        let chunk_size = property(&spec, "Manifest", "chunk_size");
        assert_eq!(chunk_size["minimum"].as_f64(), Some(MIN_CHUNK_SIZE.into()));
        assert_eq!(chunk_size["maximum"].as_f64(), Some(MAX_CHUNK_SIZE.into()));
        assert_eq!(
            property(&spec, "Manifest", "chunk_hashes")["maxItems"],
            MAX_CHUNKS
        );
        assert_eq!(
            property(&spec, "Manifest", "chain")["maxItems"],
            MAX_CHUNKS - 1
        );
        let name = property(&spec, "Manifest", "name");
        assert_eq!(name["maxLength"], MAX_NAME_LEN);
        assert_eq!(name["minLength"], 1);
        let have = property(&spec, "AnnounceRequest", "have");
        assert_eq!(have["maxLength"], (MAX_CHUNKS / 8).div_ceil(3) * 4);
        for (schema, field) in [
            ("CreateUserRequest", "username"),
            ("CreateApiKeyRequest", "name"),
        ] {
            let p = property(&spec, schema, field);
            assert_eq!(p["maxLength"], MAX_NAME_CHARS, "{schema}.{field}");
            assert_eq!(p["minLength"], 1, "{schema}.{field}");
        }
        assert_eq!(
            property(&spec, "CreateUserRequest", "password")["minLength"],
            MIN_PASSWORD_LEN
        );
        let role = property(&spec, "CreateUserRequest", "role")["pattern"]
            .as_str()
            .unwrap()
            .to_owned();
        for r in [p2p_proto::api::role::ADMIN, p2p_proto::api::role::VIEWER] {
            assert!(role.contains(r), "{role} admits {r}");
        }
        let search = op_param(&spec, "/api/files", "get", "search");
        assert_eq!(search["schema"]["maxLength"], 255);
        t.stop().await;
    })
    .await;
}

fn op_param(spec: &Value, path: &str, method: &str, name: &str) -> Value {
    spec["paths"][path][method]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
        .clone()
}
