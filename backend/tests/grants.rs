//! Read grants (share links, docs/protocol.md §11) over real HTTP, on SQLite and PostgreSQL: a
//! grant reads its one id without an API key, its holder proves a peer id to be admitted (not
//! past the grant's expiry), and another id, an expired, forged or malformed grant, or no grant
//! at all is refused with a clear error. A folder collection's grant gets grants for its member
//! files, given the collection's bytes, ending with it; bytes that are not the collection, a
//! grant for another id or an expired one, and a collection with too many entries are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use p2p_proto::admission::Admission;
use p2p_proto::collection::{Collection, Entry, MAGIC, MAX_ENTRIES};
use p2p_proto::link::{READ_GRANT_HEADER, ReadGrant};
use p2p_proto::{FileId, Manifest, PeerId};
use serde_json::{Value, json};
use sha2::Digest;

#[tokio::test]
async fn read_grants_on_sqlite() {
    within(60, grants_work(&TestDb::sqlite())).await;
}

#[tokio::test]
async fn member_grants_on_sqlite() {
    within(60, member_grants_work(&TestDb::sqlite())).await;
}

#[tokio::test]
async fn member_grants_on_postgres() {
    let Some(url) = postgres_url() else {
        return skip(
            "member grants on PostgreSQL",
            "P2P_TEST_POSTGRES_URL is not set",
        );
    };
    let db = TestDb::postgres(&url);
    within(60, member_grants_work(&db)).await;
    db.cleanup().await;
}

#[tokio::test]
async fn read_grants_on_postgres() {
    let Some(url) = postgres_url() else {
        return skip(
            "read grants on PostgreSQL",
            "P2P_TEST_POSTGRES_URL is not set",
        );
    };
    let db = TestDb::postgres(&url);
    within(60, grants_work(&db)).await;
    db.cleanup().await;
}

/// A request without an API key, with `grant` as `X-Read-Grant`.
fn with_grant(t: &TestTracker, path: &str, grant: &str) -> reqwest::RequestBuilder {
    t.http
        .get(t.url(path))
        .header(READ_GRANT_HEADER, grant.to_owned())
}

/// A challenge for `peer` asked with a read grant, answered as `X-Peer-Proof`.
async fn proof_header(t: &TestTracker, grant: &str, peer: &PeerId) -> String {
    let resp = t
        .http
        .post(t.url("/api/peers/challenge"))
        .header(READ_GRANT_HEADER, grant.to_owned())
        .json(&json!({"peer_id": peer}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "a grant's holder gets a challenge");
    let challenge: Value = resp.json().await.unwrap();
    let proof = prove(peer_secret(peer), &challenge);
    format!(
        "{peer}.{}.{}",
        proof["nonce"].as_str().unwrap(),
        proof["mac"].as_str().unwrap()
    )
}

async fn grants_work(db: &TestDb) {
    let t = TestTracker::start(db, serve_args()).await;
    let seeder = peer_id();
    let reg = t.register(&seeder, 6881).await;
    let mut admission_key = [0u8; 32];
    hex::decode_to_slice(reg["admission_key"].as_str().unwrap(), &mut admission_key).unwrap();
    let m = manifest("shared.bin", &content(5000, 1));
    let other = manifest("other.bin", &content(5000, 2));
    for file in [&m, &other] {
        assert_eq!(t.announce(&seeder, file, None).await.status(), 200);
    }

    // Made by an authenticated caller, for a known file, for at most 30 days.
    let path = format!("/api/files/{}/grants", m.id);
    let resp = t.post(&path, &json!({})).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let info: Value = resp.json().await.unwrap();
    assert_eq!(info["file_id"], json!(m.id));
    assert_eq!(info["expires_in_secs"], 86_400, "a day by default");
    assert_eq!(info["expires_at_ms"], T0 + 86_400_000);
    let grant = info["grant"].as_str().unwrap().to_owned();
    assert_eq!(
        ReadGrant::from_hex(&grant).unwrap().file_id,
        m.id,
        "the grant names its id"
    );
    let resp = t
        .post(&format!("{path}?ttl_secs=2592001"), &json!({}))
        .send()
        .await
        .unwrap();
    let msg = assert_error(resp, 400, "bad_request").await;
    assert!(msg.contains("`ttl_secs` must be at most 2592000"), "{msg}");
    let resp = t
        .http
        .post(t.url(&path))
        .header(READ_GRANT_HEADER, grant.clone())
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "unauthorized").await;
    let unknown = format!("/api/files/{}/grants", "00".repeat(31) + "ff");
    let resp = t.post(&unknown, &json!({})).send().await.unwrap();
    assert_error(resp, 404, "not_found").await;

    // The grant reads its file's details and peers, without an API key.
    let resp = with_grant(&t, &format!("/api/files/{}", m.id), &grant)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let details: Value = resp.json().await.unwrap();
    assert_eq!(details["name"], "shared.bin");
    let peers_path = format!("/api/files/{}/peers", m.id);
    let resp = with_grant(&t, &peers_path, &grant).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let swarm: Value = resp.json().await.unwrap();
    assert_eq!(swarm["peers"][0]["peer_id"], json!(seeder));
    assert!(swarm.get("admission").is_none(), "nobody to admit: {swarm}");

    // Its holder proves a peer id it never registered and is admitted to the file, until
    // the admission's usual lifetime (shorter than the grant's); the token it gets admits it
    // again later.
    let leecher = peer_id();
    let proof = proof_header(&t, &grant, &leecher).await;
    let resp = with_grant(&t, &peers_path, &grant)
        .header("X-Peer-Proof", proof.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let swarm: Value = resp.json().await.unwrap();
    let a = Admission::from_hex(swarm["admission"].as_str().unwrap()).unwrap();
    assert_eq!((a.file_id, a.peer_id), (m.id, leecher));
    assert_eq!(a.expires_at_ms, T0 + 600_000);
    assert_eq!(a.check(&[admission_key], &m.id, &leecher, T0), Ok(()));
    let token = swarm["peer_token"].as_str().unwrap().to_owned();
    // A proof is good once.
    let resp = with_grant(&t, &peers_path, &grant)
        .header("X-Peer-Proof", proof)
        .send()
        .await
        .unwrap();
    let msg = assert_error(resp, 401, "peer_proof").await;
    assert!(msg.contains("already used"), "{msg}");
    let resp = with_grant(&t, &peers_path, &grant)
        .header("X-Peer-Proof", "nonsense")
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "peer_proof").await;
    let resp = with_grant(&t, &peers_path, &grant)
        .header("X-Peer-Token", token.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let again: Value = resp.json().await.unwrap();
    assert_eq!(
        Admission::from_hex(again["admission"].as_str().unwrap())
            .unwrap()
            .peer_id,
        leecher
    );

    // Another id: 403, saying which id the grant is for; nothing else is open to it.
    for other_path in [
        format!("/api/files/{}", other.id),
        format!("/api/files/{}/peers", other.id),
    ] {
        let resp = with_grant(&t, &other_path, &grant).send().await.unwrap();
        let msg = assert_error(resp, 403, "forbidden").await;
        assert!(
            msg.contains(&format!("the read grant is for {}, not {}", m.id, other.id)),
            "{msg}"
        );
    }
    for closed in ["/api/files", "/api/peers", "/api/stats"] {
        let resp = with_grant(&t, closed, &grant).send().await.unwrap();
        assert_error(resp, 401, "unauthorized").await;
    }
    let resp = t
        .http
        .post(t.url("/api/files/announce"))
        .header(READ_GRANT_HEADER, grant.clone())
        .header("X-Peer-Token", token)
        .json(&json!({"peer_id": leecher, "file": m}))
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "unauthorized").await;

    // Forged, malformed or missing: 401 with what is wrong.
    let mut forged = ReadGrant::from_hex(&grant).unwrap();
    forged.expires_at_ms += 1;
    let resp = with_grant(&t, &peers_path, &forged.to_hex())
        .send()
        .await
        .unwrap();
    let msg = assert_error(resp, 401, "read_grant").await;
    assert!(msg.contains("not issued by this tracker"), "{msg}");
    let resp = with_grant(&t, &peers_path, "abc").send().await.unwrap();
    let msg = assert_error(resp, 401, "read_grant").await;
    assert!(msg.contains("144 hex characters"), "{msg}");
    let resp = t.http.get(t.url(&peers_path)).send().await.unwrap();
    let msg = assert_error(resp, 401, "unauthorized").await;
    assert!(msg.contains("X-Read-Grant"), "{msg}");

    // A short grant caps the admission at its own expiry, and once it has expired every
    // use is refused, saying so.
    let resp = t
        .post(&format!("{path}?ttl_secs=60"), &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let short = resp.json::<Value>().await.unwrap()["grant"]
        .as_str()
        .unwrap()
        .to_owned();
    let proof = proof_header(&t, &short, &leecher).await;
    let swarm: Value = with_grant(&t, &peers_path, &short)
        .header("X-Peer-Proof", proof)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a = Admission::from_hex(swarm["admission"].as_str().unwrap()).unwrap();
    assert_eq!(a.expires_at_ms, T0 + 60_000, "not past the grant");
    t.clock.advance_ms(60_000);
    for p in [format!("/api/files/{}", m.id), peers_path.clone()] {
        let resp = with_grant(&t, &p, &short).send().await.unwrap();
        let msg = assert_error(resp, 401, "read_grant").await;
        assert!(msg.contains("expired"), "{msg}");
    }
    // The day-long grant still works.
    let resp = with_grant(&t, &peers_path, &grant).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    t.stop().await;
}

/// A grant for `id` lasting `ttl_secs`, made with the API key.
async fn grant_for(t: &TestTracker, id: &FileId, ttl_secs: u64) -> String {
    let resp = t
        .post(
            &format!("/api/files/{id}/grants?ttl_secs={ttl_secs}"),
            &json!({}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    resp.json::<Value>().await.unwrap()["grant"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `POST /api/files/{id}/grants/members` with `grant` (if any) and `body`.
async fn ask_members(
    t: &TestTracker,
    id: &FileId,
    grant: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = t
        .http
        .post(t.url(&format!("/api/files/{id}/grants/members")))
        .header("Content-Type", "application/octet-stream")
        .body(body);
    if let Some(g) = grant {
        req = req.header(READ_GRANT_HEADER, g.to_owned());
    }
    req.send().await.unwrap()
}

async fn member_grants_work(db: &TestDb) {
    // A body cap above the largest collection, so that the route's own cap is what refuses.
    let mut args = serve_args();
    args.max_body_bytes = 32 << 20;
    let t = TestTracker::start(db, args).await;
    let seeder = peer_id();
    t.register(&seeder, 6881).await;
    let (a, b) = (content(5000, 21), content(7000, 22));
    let (ma, mb) = (manifest("a.bin", &a), manifest("b.bin", &b));
    let empty = FileId(sha2::Sha256::digest(b"").into());
    let folder = Collection::new(
        "album",
        vec![
            Entry::file("x/a.bin", ma.id, 5000, false),
            Entry::file("b.bin", mb.id, 7000, true),
            // The same content twice, and an empty file: one grant, and none.
            Entry::file("copy of a.bin", ma.id, 5000, false),
            Entry::file("empty", empty, 0, false),
            Entry::empty_dir("nothing here"),
        ],
    )
    .unwrap();
    let bytes = folder.encode();
    let list = manifest("album.p2p-folder", &bytes);
    assert_eq!(list.id, folder.id());
    for m in [&list, &ma, &mb] {
        assert_eq!(t.announce(&seeder, m, None).await.status(), 200);
    }
    let grant = grant_for(&t, &list.id, 600).await;

    // With the collection's grant and bytes: a grant per member, ending with the collection's,
    // each reading its file and only that.
    let resp = ask_members(&t, &list.id, Some(&grant), bytes.clone()).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["collection_id"], json!(list.id));
    assert_eq!(answer["expires_at_ms"], T0 + 600_000);
    let grants: Vec<ReadGrant> = answer["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| ReadGrant::from_hex(g.as_str().unwrap()).unwrap())
        .collect();
    let mut ids: Vec<FileId> = grants.iter().map(|g| g.file_id).collect();
    ids.sort();
    let mut want = vec![ma.id, mb.id];
    want.sort();
    assert_eq!(ids, want, "one grant per distinct non-empty member");
    for g in &grants {
        assert_eq!(
            g.expires_at_ms,
            T0 + 600_000,
            "not past the collection's grant"
        );
        let resp = with_grant(&t, &format!("/api/files/{}", g.file_id), &g.to_hex())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let resp = with_grant(&t, &format!("/api/files/{}", list.id), &g.to_hex())
            .send()
            .await
            .unwrap();
        assert_error(resp, 403, "forbidden").await;
    }
    let member_grant = grants.iter().find(|g| g.file_id == ma.id).unwrap().to_hex();

    // Bytes that are not the collection: another valid collection, or garbage.
    let other = Collection::new("other", vec![Entry::file("a", mb.id, 7000, false)]).unwrap();
    for body in [other.encode(), b"not a collection".to_vec(), Vec::new()] {
        let resp = ask_members(&t, &list.id, Some(&grant), body).await;
        let msg = assert_error(resp, 400, "bad_request").await;
        assert!(
            msg.contains(&format!("the body is not the collection {}", list.id)),
            "{msg}"
        );
    }
    // A grant for another id (a member's): 403, whatever the body.
    let resp = ask_members(&t, &list.id, Some(&member_grant), bytes.clone()).await;
    let msg = assert_error(resp, 403, "forbidden").await;
    assert!(msg.contains("the read grant is for"), "{msg}");
    // A member's grant for the member's own route: its bytes are not a collection's.
    let resp = ask_members(&t, &ma.id, Some(&member_grant), a.clone()).await;
    let msg = assert_error(resp, 400, "bad_request").await;
    assert!(msg.contains("not a valid folder collection"), "{msg}");
    // No grant: 401. An API key instead: grants lasting a day.
    let resp = ask_members(&t, &list.id, None, bytes.clone()).await;
    let msg = assert_error(resp, 401, "unauthorized").await;
    assert!(msg.contains("X-Read-Grant"), "{msg}");
    let resp = t
        .http
        .post(t.url(&format!("/api/files/{}/grants/members", list.id)))
        .header("X-API-Key", KEY)
        .header("Content-Type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let by_key: Value = resp.json().await.unwrap();
    assert_eq!(by_key["expires_at_ms"], T0 + 86_400_000);
    assert_eq!(by_key["grants"].as_array().unwrap().len(), 2);
    // Declared over the largest collection: refused before a byte is read.
    let resp = ask_members(&t, &list.id, Some(&grant), vec![0; (16 << 20) + 1]).await;
    let msg = assert_error(resp, 413, "payload_too_large").await;
    assert!(msg.contains("16777216"), "{msg}");

    // Too many members: a list claiming more entries than a collection may have, announced as
    // a file so that a grant names it, is refused by the decoder (nothing allocated for it).
    let mut forged = MAGIC.to_vec();
    forged.extend([0, 4]);
    forged.extend(b"huge");
    forged.extend((MAX_ENTRIES as u32 + 1).to_be_bytes());
    forged.extend([1, 0, 1, b'a']);
    let huge: Manifest = manifest("huge.p2p-folder", &forged);
    assert_eq!(t.announce(&seeder, &huge, None).await.status(), 200);
    let huge_grant = grant_for(&t, &huge.id, 600).await;
    let resp = ask_members(&t, &huge.id, Some(&huge_grant), forged).await;
    let msg = assert_error(resp, 400, "bad_request").await;
    assert!(msg.contains("over the limit of 100000"), "{msg}");

    // Once the collection's grant has expired: 401, saying so.
    t.clock.advance_ms(600_000);
    let resp = ask_members(&t, &list.id, Some(&grant), bytes).await;
    let msg = assert_error(resp, 401, "read_grant").await;
    assert!(msg.contains("expired"), "{msg}");
    t.stop().await;
}
