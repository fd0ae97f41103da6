//! The REST API over real HTTP: every endpoint, validation, auth failures and rate limiting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use futures_util::StreamExt;
use p2p_proto::Bitfield;
use serde_json::{Value, json};

#[tokio::test]
async fn health_metrics_and_docs_need_no_auth() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;

        let resp = t.http.get(t.url("/health")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let health: Value = resp.json().await.unwrap();
        assert_eq!(health["status"], "ok");
        assert_eq!(health["database"], "ok");
        assert_eq!(health["backend"], "sqlite");
        assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));

        let resp = t.http.get(t.url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .contains("openmetrics")
        );
        let text = resp.text().await.unwrap();
        for name in [
            "p2p_tracker_peers_online",
            "p2p_tracker_files",
            "p2p_tracker_relay_connections",
            "p2p_tracker_http_requests_total",
            "p2p_tracker_http_request_duration_seconds_bucket",
        ] {
            assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
        }
        assert!(
            text.contains(r#"route="/health""#),
            "requests are labelled by route"
        );

        let resp = t.http.get(t.url("/api/docs")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.text()
                .await
                .unwrap()
                .to_lowercase()
                .contains("swagger")
        );
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn openapi_spec_lists_every_route_with_security() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let spec = t.spec().await;
        assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
        let paths = spec["paths"].as_object().unwrap();
        for (path, method) in [
            ("/health", "get"),
            ("/metrics", "get"),
            ("/ws", "get"),
            ("/api/auth/login", "post"),
            ("/api/stats", "get"),
            ("/api/peers", "get"),
            ("/api/peers/challenge", "post"),
            ("/api/peers/register", "post"),
            ("/api/peers/heartbeat", "post"),
            ("/api/peers/{id}", "delete"),
            ("/api/peers/{id}", "get"),
            ("/api/files", "get"),
            ("/api/files/announce", "post"),
            ("/api/files/{hash}", "get"),
            ("/api/files/{hash}/peers", "get"),
        ] {
            let op = &paths
                .get(path)
                .unwrap_or_else(|| panic!("{path} missing from the spec"))[method];
            assert!(op.is_object(), "{method} {path} missing");
            let secured = op.get("security").is_some();
            let public = matches!(path, "/health" | "/metrics" | "/api/auth/login" | "/ws");
            assert_eq!(secured, !public, "security of {method} {path}");
        }
        let schemes = spec["components"]["securitySchemes"].as_object().unwrap();
        assert_eq!(schemes["ApiKey"]["name"], "X-API-Key");
        assert_eq!(schemes["Bearer"]["scheme"], "bearer");
        let schemas = &spec["components"]["schemas"];
        assert_eq!(
            schemas["ConnectionPathKind"]["enum"],
            json!(["direct", "hole_punched", "relayed"])
        );
        for object in ["HeartbeatRequest", "PeerInfo"] {
            assert!(
                schemas[object]["properties"]["connections"].is_object(),
                "{object} has connections"
            );
        }
        // Error responses are documented with the JSON error body.
        let announce = &paths["/api/files/announce"]["post"]["responses"];
        for status in [
            "200", "400", "401", "403", "404", "408", "409", "413", "415", "429",
        ] {
            assert!(
                announce.get(status).is_some(),
                "announce documents {status}"
            );
        }
        // The routes that change a peer's entry document the peer token they need.
        for (path, method) in [
            ("/api/peers/heartbeat", "post"),
            ("/api/peers/{id}", "delete"),
            ("/api/files/announce", "post"),
            ("/api/files/{hash}/peers/{peer_id}", "delete"),
        ] {
            let params = paths[path][method]["parameters"].as_array().unwrap();
            assert!(
                params
                    .iter()
                    .any(|p| p["name"] == "X-Peer-Token" && p["in"] == "header"),
                "{method} {path} documents X-Peer-Token: {params:?}"
            );
        }
        let register = &schemas["RegisterPeerRequest"]["properties"];
        assert!(register["proof"].is_object(), "registrations carry a proof");
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn auth_failures_are_clear_json_401s() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let url = t.url("/api/files");

        let msg = assert_error(t.http.get(&url).send().await.unwrap(), 401, "unauthorized").await;
        assert!(msg.contains("X-API-Key"), "{msg}");
        let msg = assert_error(
            t.http
                .get(&url)
                .header("X-API-Key", "wrong")
                .send()
                .await
                .unwrap(),
            401,
            "unauthorized",
        )
        .await;
        assert_eq!(msg, "invalid API key");
        assert_error(
            t.http.get(&url).bearer_auth("wrong").send().await.unwrap(),
            401,
            "unauthorized",
        )
        .await;
        assert_error(
            t.http.get(&url).bearer_auth("a.b.c").send().await.unwrap(),
            401,
            "unauthorized",
        )
        .await;
        assert_error(
            t.http
                .get(&url)
                .header("Authorization", "Basic abc")
                .send()
                .await
                .unwrap(),
            401,
            "unauthorized",
        )
        .await;
        // The key also works as a bearer token.
        let resp = t.http.get(&url).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn login_with_key_or_password_gives_a_working_jwt() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let login = |body: Value| t.http.post(t.url("/api/auth/login")).json(&body).send();

        let resp = login(json!({"username": ADMIN, "password": ADMIN_PASSWORD}))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let token: Value = resp.json().await.unwrap();
        assert_eq!(token["token_type"], "Bearer");
        assert_eq!(token["subject"], ADMIN);
        assert_eq!(token["role"], "admin");
        let jwt = token["token"].as_str().unwrap();
        let resp = t
            .http
            .get(t.url("/api/stats"))
            .bearer_auth(jwt)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);

        let resp = login(json!({"api_key": KEY})).await.unwrap();
        assert_eq!(resp.status(), 200);
        let token: Value = resp.json().await.unwrap();
        assert!(token["subject"].as_str().unwrap().starts_with("api-key:"));

        let msg = assert_error(
            login(json!({"username": ADMIN, "password": "wrong password"}))
                .await
                .unwrap(),
            401,
            "unauthorized",
        )
        .await;
        assert_eq!(msg, "wrong username or password");
        assert_error(
            login(json!({"username": "nobody", "password": "whatever1"}))
                .await
                .unwrap(),
            401,
            "unauthorized",
        )
        .await;
        assert_error(
            login(json!({"api_key": "nope"})).await.unwrap(),
            401,
            "unauthorized",
        )
        .await;
        assert_error(login(json!({})).await.unwrap(), 400, "bad_request").await;
        assert_error(
            t.http
                .post(t.url("/api/auth/login"))
                .header("content-type", "application/json")
                .body("{not json")
                .send()
                .await
                .unwrap(),
            400,
            "bad_request",
        )
        .await;
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn register_heartbeat_list_and_unregister_peers() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let peer = peer_id();
        let reg = t.register(&peer, 6881).await;
        assert_eq!(reg["peer_id"], json!(peer));
        assert_eq!(reg["observed_ip"], "127.0.0.1");
        assert_eq!(reg["heartbeat_interval_secs"], 30);
        assert_eq!(reg["peer_ttl_secs"], 90);
        assert_eq!(reg["peer_token_expires_in_secs"], 3600);

        t.clock.advance_ms(10_000);
        let resp = t
            .peer_post(
                &peer,
                "/api/peers/heartbeat",
                &json!({"peer_id": peer, "uploaded": 5, "downloaded": 7}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["next_heartbeat_secs"],
            30
        );

        let info = t.get_json(&format!("/api/peers/{peer}")).await;
        assert_eq!(info["online"], true);
        assert_eq!(info["last_seen_ms"], T0 + 10_000);
        assert_eq!(info["uploaded"], 5);
        assert_eq!(info["addresses"], json!(["10.1.2.3"]));

        let list = t.get_json("/api/peers?online=true").await;
        assert_eq!(list["total"], 1);
        assert_eq!(list["peers"][0]["peer_id"], json!(peer));

        // Peers that never registered have no token.
        let stranger = peer_id();
        let msg = assert_error(
            t.post("/api/peers/heartbeat", &json!({"peer_id": stranger}))
                .send()
                .await
                .unwrap(),
            401,
            "peer_token",
        )
        .await;
        assert!(msg.contains("X-Peer-Token"), "{msg}");

        let resp = t
            .peer_delete(&peer, &format!("/api/peers/{peer}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        assert_error(
            t.peer_delete(&peer, &format!("/api/peers/{peer}"))
                .send()
                .await
                .unwrap(),
            404,
            "not_found",
        )
        .await;
        // Peers the tracker forgot must register again.
        let msg = assert_error(
            t.peer_post(&peer, "/api/peers/heartbeat", &json!({"peer_id": peer}))
                .send()
                .await
                .unwrap(),
            404,
            "not_found",
        )
        .await;
        assert!(msg.contains("register again"), "{msg}");
        assert_error(
            t.delete("/api/peers/not-hex").send().await.unwrap(),
            400,
            "bad_request",
        )
        .await;
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn heartbeats_report_how_a_peer_is_connected() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let (peer, other, third) = (peer_id(), peer_id(), peer_id());
        t.register(&peer, 6881).await;
        let connections = json!([
            {"peer_id": other, "path": "direct"},
            {"peer_id": third, "path": "relayed"},
        ]);
        let beat = |body: &Value| t.peer_post(&peer, "/api/peers/heartbeat", body).send();
        let listed = || async {
            let list = t.get_json("/api/peers").await;
            assert_eq!(
                t.get_json(&format!("/api/peers/{peer}")).await["connections"],
                list["peers"][0]["connections"]
            );
            list["peers"][0]["connections"].clone()
        };
        assert_eq!(listed().await, json!([]), "none before a heartbeat");

        let resp = beat(&json!({"peer_id": peer, "connections": connections}))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(listed().await, connections);
        let resp = beat(&json!({"peer_id": peer})).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            listed().await,
            connections,
            "a beat without them keeps them"
        );

        let too_many: Vec<Value> = (0..=p2p_proto::api::MAX_PEER_CONNECTIONS)
            .map(|_| json!({"peer_id": peer_id(), "path": "direct"}))
            .collect();
        let pigeon = json!([{"peer_id": other, "path": "carrier pigeon"}]);
        for (bad, says) in [
            (
                json!(too_many),
                "`connections` must have at most 256 entries",
            ),
            (pigeon, "ConnectionPathKind"),
        ] {
            let resp = beat(&json!({"peer_id": peer, "connections": bad}))
                .await
                .unwrap();
            let message = assert_error(resp, 400, "bad_request").await;
            assert!(message.contains(says), "{message}");
        }
        assert_eq!(listed().await, connections, "refused beats change nothing");
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn malformed_registrations_are_rejected() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let peer = peer_id();
        for body in [
            json!({"peer_id": "abc", "port": 1}),
            json!({"peer_id": peer, "port": 70000}),
            json!({"peer_id": peer}),
        ] {
            let resp = t.post("/api/peers/register", &body).send().await.unwrap();
            assert_error(resp, 400, "bad_request").await;
        }
        // Well-formed but invalid: refused with a good proof too.
        for body in [
            json!({"peer_id": peer, "port": 0}),
            json!({"peer_id": peer, "port": 1, "addresses": ["http://evil"]}),
            json!({"peer_id": peer, "port": 1, "addresses": vec!["1.1.1.1"; 17]}),
            json!({"peer_id": peer, "port": 1, "name": "x".repeat(200)}),
        ] {
            let resp = register_proven(&t.http, &t.base, KEY, &peer, body).await;
            assert_error(resp, 400, "bad_request").await;
        }
        // Relay-only peers may register without a port.
        t.register_with(
            &peer,
            json!({"peer_id": peer, "port": 0, "relay_only": true}),
        )
        .await;
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn announce_list_get_and_file_peers() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let (seeder, leecher) = (peer_id(), peer_id());
        t.register(&seeder, 6881).await;
        t.register(&leecher, 6882).await;
        let data = content(3 * 256 * 1024 + 100, 1);
        let m = manifest("movie.mkv", &data);
        assert_eq!(m.chunk_count(), 4);

        let resp = t.announce(&seeder, &m, None).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["created"], true);
        assert_eq!(body["complete"], true);
        assert_eq!(body["chunks_have"], 4);

        let mut have = Bitfield::new(4);
        have.set(1);
        let resp = t.announce(&leecher, &m, Some(&have.to_base64())).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["created"], false);
        assert_eq!(body["complete"], false);
        assert_eq!(body["chunks_have"], 1);

        // The id is what sha256sum prints.
        let details = t.get_json(&format!("/api/files/{}", m.id)).await;
        assert_eq!(details["id"], m.id.to_string());
        assert_eq!(details["name"], "movie.mkv");
        assert_eq!(details["size"], data.len() as u64);
        assert_eq!(details["chunk_size"], 262144);
        assert_eq!(details["chunk_count"], 4);
        assert_eq!(details["chunk_hashes"], json!(m.chunk_hashes));
        assert_eq!(details["merkle_root"], m.merkle_root.to_string());
        assert_eq!(details["seeders"], 1);
        assert_eq!(details["leechers"], 1);

        let swarm = t.get_json(&format!("/api/files/{}/peers", m.id)).await;
        assert_eq!(swarm["chunk_count"], 4);
        let peers = swarm["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0]["peer_id"], json!(seeder), "whole copies first");
        assert_eq!(peers[0]["complete"], true);
        assert!(peers[0].get("have").is_none());
        assert_eq!(peers[0]["port"], 6881);
        assert_eq!(peers[0]["addresses"], json!(["10.1.2.3", "127.0.0.1"]));
        assert_eq!(peers[1]["complete"], false);
        assert_eq!(peers[1]["have"], have.to_base64());
        assert_eq!(peers[1]["chunks_have"], 1);

        let swarm = t
            .get_json(&format!("/api/files/{}/peers?exclude={leecher}", m.id))
            .await;
        assert_eq!(swarm["peers"].as_array().unwrap().len(), 1);

        // Listing with search and pagination.
        for i in 0..5 {
            let other = manifest(&format!("doc-{i}.pdf"), &content(1000, 100 + i));
            assert_eq!(t.announce(&seeder, &other, None).await.status(), 200);
            t.clock.advance_ms(1);
        }
        let list = t.get_json("/api/files?search=DOC&limit=2&offset=1").await;
        assert_eq!(list["total"], 5);
        assert_eq!(list["limit"], 2);
        let names: Vec<&str> = list["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["doc-3.pdf", "doc-2.pdf"], "newest first");
        let list = t.get_json("/api/files?search=movie").await;
        assert_eq!(list["total"], 1);
        assert_eq!(list["files"][0]["seeders"], 1);
        assert_eq!(list["files"][0]["leechers"], 1);
        assert_eq!(list["files"][0]["chunk_count"], 4);
        // LIKE wildcards in the search are literal.
        let list = t.get_json("/api/files?search=%25").await;
        assert_eq!(list["total"], 0);

        let stats = t.get_json("/api/stats").await;
        assert_eq!(stats["peers_online"], 2);
        assert_eq!(stats["files"], 6);
        assert_eq!(stats["total_bytes"], data.len() as u64 + 5000);

        // Unregistering the seeder removes it from the swarm.
        assert_eq!(
            t.peer_delete(&seeder, &format!("/api/peers/{seeder}"))
                .send()
                .await
                .unwrap()
                .status(),
            204
        );
        let swarm = t.get_json(&format!("/api/files/{}/peers", m.id)).await;
        assert_eq!(swarm["peers"].as_array().unwrap().len(), 1);
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn bad_announces_are_rejected_and_nothing_is_stored() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let peer = peer_id();
        t.register(&peer, 6881).await;
        let m = manifest("a.bin", &content(600_000, 2));

        let mut wrong_count = m.clone();
        wrong_count.chunk_hashes.pop();
        let msg = assert_error(
            t.announce(&peer, &wrong_count, None).await,
            400,
            "bad_request",
        )
        .await;
        assert!(msg.contains("chunk hashes"), "{msg}");

        let mut wrong_root = m.clone();
        wrong_root.chunk_hashes.swap(0, 1);
        let msg = assert_error(
            t.announce(&peer, &wrong_root, None).await,
            400,
            "bad_request",
        )
        .await;
        assert!(msg.contains("merkle"), "{msg}");

        let mut bad_chunk_size = m.clone();
        bad_chunk_size.chunk_size = 1000;
        assert_error(
            t.announce(&peer, &bad_chunk_size, None).await,
            400,
            "bad_request",
        )
        .await;

        let mut bad_name = m.clone();
        bad_name.name = "../../etc/passwd".into();
        assert_error(t.announce(&peer, &bad_name, None).await, 400, "bad_request").await;

        let msg = assert_error(
            t.announce(&peer, &m, Some("////")).await,
            400,
            "bad_request",
        )
        .await;
        assert!(msg.contains("bitfield"), "{msg}");

        for bad_id in ["xyz", &"0".repeat(63), &"g".repeat(64)] {
            let mut body = json!({"peer_id": peer, "file": m});
            body["file"]["id"] = json!(bad_id);
            assert_error(
                t.peer_post(&peer, "/api/files/announce", &body)
                    .send()
                    .await
                    .unwrap(),
                400,
                "bad_request",
            )
            .await;
        }
        let mut body = json!({"peer_id": peer, "file": m});
        body["file"]["size"] = json!(-5);
        assert_error(
            t.peer_post(&peer, "/api/files/announce", &body)
                .send()
                .await
                .unwrap(),
            400,
            "bad_request",
        )
        .await;
        body["file"]["size"] = json!("big");
        assert_error(
            t.peer_post(&peer, "/api/files/announce", &body)
                .send()
                .await
                .unwrap(),
            400,
            "bad_request",
        )
        .await;

        // A peer the tracker forgot (its token still valid) is told to register.
        let gone = peer_id();
        t.register(&gone, 6882).await;
        let resp = t.peer_delete(&gone, &format!("/api/peers/{gone}")).send();
        assert_eq!(resp.await.unwrap().status(), 204);
        let msg = assert_error(t.announce(&gone, &m, None).await, 404, "not_found").await;
        assert!(msg.contains("register"), "{msg}");

        assert_error(
            t.get(&format!("/api/files/{}", m.id)).send().await.unwrap(),
            404,
            "not_found",
        )
        .await;
        assert_error(
            t.get("/api/files/nothex").send().await.unwrap(),
            400,
            "bad_request",
        )
        .await;
        assert_error(
            t.get(&format!("/api/files/{}/peers", m.id))
                .send()
                .await
                .unwrap(),
            404,
            "not_found",
        )
        .await;

        // A contradicting announce of a stored file is kept as a second variant, beside the
        // stored one; the file's manifest is still the first (a tie in announcers: the older).
        assert_eq!(t.announce(&peer, &m, None).await.status(), 200);
        let other = manifest("a.bin", &content(700_000, 3));
        let mut contradicting = other.clone();
        contradicting.id = m.id;
        let second = peer_id();
        t.register(&second, 6883).await;
        let resp = t.announce(&second, &contradicting, None).await;
        assert_eq!(resp.status(), 200);
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(
            (answer["variant"].as_u64(), answer["created"].as_bool()),
            (Some(2), Some(false))
        );
        let stored = t.get_json(&format!("/api/files/{}", m.id)).await;
        assert_eq!(stored["size"], 600_000);
        assert_eq!(stored["merkle_root"], m.merkle_root.to_string());
        assert_eq!(stored["variant"], 1);
        assert_eq!(stored["variants"].as_array().unwrap().len(), 2);
        let v2 = t.get_json(&format!("/api/files/{}?variant=2", m.id)).await;
        assert_eq!(v2["merkle_root"], contradicting.merkle_root.to_string());
        let peers = t
            .get_json(&format!("/api/files/{}/peers?variant=2", m.id))
            .await;
        assert_eq!(peers["peers"][0]["peer_id"], second.to_string());
        assert_eq!(peers["peers"][0]["variant"], 2);
        assert_eq!(peers["peers"].as_array().unwrap().len(), 1);
        let msg = assert_error(
            t.get(&format!("/api/files/{}?variant=3", m.id))
                .send()
                .await
                .unwrap(),
            404,
            "not_found",
        )
        .await;
        assert!(msg.contains("variant 3"), "{msg}");

        // A body that is not JSON: 415, as the spec says.
        let resp = t
            .http
            .post(t.url("/api/files/announce"))
            .header("X-API-Key", KEY)
            .header("Content-Type", "text/plain")
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_error(resp, 415, "unsupported_media_type").await;

        // Unknown routes and bodies that are too big get JSON errors too.
        assert_error(
            t.get("/api/nothing").send().await.unwrap(),
            404,
            "not_found",
        )
        .await;
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    within(30, async {
        let db = TestDb::sqlite();
        let mut args = serve_args();
        args.max_body_bytes = 1024;
        let t = TestTracker::start(&db, args).await;
        let peer = peer_id();
        t.register(&peer, 1).await;
        let m = manifest("big.bin", &content(20 * 256 * 1024, 4));
        let resp = t.announce(&peer, &m, None).await;
        assert_error(resp, 413, "payload_too_large").await;
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    within(30, async {
        let db = TestDb::sqlite();
        let mut args = serve_args();
        args.rate_limit_rps = 2;
        args.rate_limit_burst = Some(3);
        let t = TestTracker::start(&db, args).await;
        let mut statuses = Vec::new();
        let mut limited = None;
        for _ in 0..10 {
            let resp = t.get("/api/stats").send().await.unwrap();
            statuses.push(resp.status().as_u16());
            if resp.status() == 429 && limited.is_none() {
                limited = Some(resp);
            }
        }
        assert_eq!(&statuses[..3], &[200, 200, 200], "the burst passes");
        let resp = limited.expect("some requests were limited");
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&retry), "Retry-After {retry}");
        assert_error(resp, 429, "rate_limited").await;
        // Health checks are never limited.
        for _ in 0..5 {
            assert_eq!(
                t.http.get(t.url("/health")).send().await.unwrap().status(),
                200
            );
        }
        let metrics = t
            .http
            .get(t.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("p2p_tracker_rate_limited_total"));
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn peers_missing_heartbeats_expire_and_can_return() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let (a, b) = (peer_id(), peer_id());
        t.register(&a, 1).await;
        t.register(&b, 2).await;
        let m = manifest("x.bin", &content(1000, 5));
        t.announce(&a, &m, None).await;
        t.announce(&b, &m, None).await;

        // b keeps beating, a falls silent for more than three intervals.
        for _ in 0..4 {
            t.clock.advance_ms(25_000);
            let resp = t
                .peer_post(&b, "/api/peers/heartbeat", &json!({"peer_id": b}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        let swarm = t.get_json(&format!("/api/files/{}/peers", m.id)).await;
        let ids: Vec<&Value> = swarm["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["peer_id"])
            .collect();
        assert_eq!(ids, vec![&json!(b)], "a is no longer handed out");
        let expired = t.tracker.state.swarm.expire_now().await.unwrap();
        assert!(expired.contains(&a) && !expired.contains(&b), "{expired:?}");
        let info = t.get_json(&format!("/api/peers/{a}")).await;
        assert_eq!(info["online"], false);
        let stats = t.get_json("/api/stats").await;
        assert_eq!(stats["peers_online"], 1);
        assert_eq!(stats["peers_total"], 2);

        // A heartbeat brings it back, with what it announced before.
        let resp = t
            .peer_post(&a, "/api/peers/heartbeat", &json!({"peer_id": a}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let swarm = t.get_json(&format!("/api/files/{}/peers", m.id)).await;
        assert_eq!(swarm["peers"].as_array().unwrap().len(), 2);
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_peer_withdraws_one_announce() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let (seeder, other) = (peer_id(), peer_id());
        t.register(&seeder, 1).await;
        t.register(&other, 2).await;
        let m = manifest("gone.bin", &content(300_000, 21));
        let kept = manifest("kept.bin", &content(300_000, 22));
        for (peer, file) in [(&seeder, &m), (&other, &m), (&seeder, &kept)] {
            assert_eq!(t.announce(peer, file, None).await.status(), 200);
        }
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws?token={KEY}", t.tracker.addr))
                .await
                .unwrap();

        let path = format!("/api/files/{}/peers/{seeder}", m.id);
        let unannounce = || t.peer_delete(&seeder, &path).send();
        assert_eq!(unannounce().await.unwrap().status(), 204);
        // The swarm no longer lists it; its other file and the other seeder stay.
        let swarm = t.get_json(&format!("/api/files/{}/peers", m.id)).await;
        let ids: Vec<&Value> = swarm["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["peer_id"])
            .collect();
        assert_eq!(ids, vec![&json!(other)]);
        let swarm = t.get_json(&format!("/api/files/{}/peers", kept.id)).await;
        assert_eq!(swarm["peers"][0]["peer_id"], json!(seeder));
        assert_eq!(
            t.get_json(&format!("/api/peers/{seeder}")).await["files"],
            1
        );

        // The dashboard hears of it.
        let event = loop {
            let msg = ws.next().await.unwrap().unwrap();
            let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
            if v["type"] == "file_unannounced" {
                break v;
            }
        };
        assert_eq!(event["file_id"], m.id.to_string());
        assert_eq!(event["peer_id"], json!(seeder));

        // Again: nothing to withdraw. An unknown peer is told to register.
        let msg = assert_error(unannounce().await.unwrap(), 404, "not_found").await;
        assert!(msg.contains("has not announced"), "{msg}");
        let stranger = peer_id();
        t.register(&stranger, 3).await;
        let resp = t.peer_delete(&stranger, &format!("/api/peers/{stranger}"));
        assert_eq!(resp.send().await.unwrap().status(), 204);
        let msg = assert_error(
            t.peer_delete(&stranger, &format!("/api/files/{}/peers/{stranger}", m.id))
                .send()
                .await
                .unwrap(),
            404,
            "not_found",
        )
        .await;
        assert!(msg.contains("not registered"), "{msg}");
        // Without the peer's token, or with another peer's, nothing is withdrawn.
        let kept_path = format!("/api/files/{}/peers/{seeder}", kept.id);
        let resp = t.delete(&kept_path).send().await.unwrap();
        assert_error(resp, 401, "peer_token").await;
        let resp = t.peer_delete(&other, &kept_path).send().await.unwrap();
        assert_error(resp, 403, "forbidden").await;
        // Like every peer-changing route it needs credentials.
        let resp = t.http.delete(t.url(&path)).send().await.unwrap();
        assert_error(resp, 401, "unauthorized").await;
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn bad_path_parameters_are_reported_by_name() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let file = manifest("x.bin", &content(10, 1)).id;
        for (path, name) in [
            ("/api/files/nothex".to_owned(), "hash"),
            ("/api/files/nothex/peers".to_owned(), "hash"),
            ("/api/peers/nothex".to_owned(), "id"),
            (format!("/api/files/{file}/peers/nothex"), "peer_id"),
        ] {
            let resp = if path.matches('/').count() == 5 {
                t.delete(&path).send().await.unwrap()
            } else {
                t.get(&path).send().await.unwrap()
            };
            let msg = assert_error(resp, 400, "bad_request").await;
            assert!(msg.contains(&format!("`{name}`")), "{path}: {msg}");
            assert!(!msg.contains("param0"), "{path}: {msg}");
        }
        let spec = t.spec().await;
        let params = &spec["paths"]["/api/files/{hash}/peers/{peer_id}"]["delete"]["parameters"];
        let names: Vec<&str> = params
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["X-Peer-Token", "hash", "peer_id"]);
        // The constraints the API enforces are in the spec: hex ids, the search length.
        assert_eq!(params[1]["schema"]["pattern"], "^[0-9a-fA-F]{64}$");
        let search = spec["paths"]["/api/files"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "search")
            .unwrap()
            .clone();
        assert_eq!(search["schema"]["maxLength"], 255);
        let long = "x".repeat(256);
        let resp = t
            .get(&format!("/api/files?search={long}"))
            .send()
            .await
            .unwrap();
        let msg = assert_error(resp, 400, "bad_request").await;
        assert!(msg.contains("search"), "{msg}");
        t.stop().await;
    })
    .await;
}

/// Private swarms (docs/protocol.md §9): the registration hands out the admission key; a lookup
/// of a file's peers with a peer token carries that peer's admission to the file, signed by it;
/// without a token there is none, and a bad token is a 401.
#[tokio::test]
async fn file_peers_with_a_peer_token_carry_a_signed_admission() {
    use p2p_proto::admission::Admission;
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let (seeder, leecher) = (peer_id(), peer_id());
        let reg = t.register(&seeder, 6881).await;
        let key_hex = reg["admission_key"].as_str().unwrap().to_owned();
        let mut key = [0u8; 32];
        hex::decode_to_slice(&key_hex, &mut key).unwrap();
        let reg = t.register(&leecher, 6882).await;
        assert_eq!(reg["admission_key"], json!(key_hex), "one key per tracker");
        let m = manifest("secret.bin", &content(1000, 3));
        let resp = t.announce(&seeder, &m, None).await;
        assert_eq!(resp.status(), 200);
        let variant = resp.json::<Value>().await.unwrap()["variant"].clone();

        let path = format!("/api/files/{}/peers", m.id);
        let plain = t.get_json(&path).await;
        assert!(plain.get("admission").is_none(), "{plain}");
        for query in [String::new(), format!("?variant={variant}")] {
            let resp = t
                .get(&format!("{path}{query}"))
                .header("X-Peer-Token", t.token(&leecher))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let body: Value = resp.json().await.unwrap();
            let a = Admission::from_hex(body["admission"].as_str().unwrap()).unwrap();
            assert_eq!((a.file_id, a.peer_id), (m.id, leecher));
            assert_eq!(a.expires_at_ms, T0 + 600_000);
            assert_eq!(a.check(&[key], &m.id, &leecher, T0), Ok(()));
        }
        let resp = t
            .get(&path)
            .header("X-Peer-Token", "00".repeat(72))
            .send()
            .await
            .unwrap();
        assert_error(resp, 401, "peer_token").await;
        t.stop().await;
    })
    .await;
}

/// A tracker with `--relay-url` (port 0: its own) lists itself in `GET /api/relays`; peers
/// register a home relay (a bad URL is a 400), and `/api/stats` sums the relay and `/ws`
/// counts of every tracker that reported in, not only the answering one's.
#[tokio::test]
async fn relay_fleet_lists_relays_and_sums_counts() {
    within(30, async {
        let db = TestDb::sqlite();
        let args = p2p_tracker::config::ServeArgs {
            relay_url: Some("http://127.0.0.1:0".into()),
            ..serve_args()
        };
        let t = TestTracker::start(&db, args).await;
        let own = t.base.clone();
        let relays = t.get_json("/api/relays").await;
        assert_eq!(relays["relays"][0]["url"], own.as_str(), "{relays}");
        assert_eq!(relays["relays"].as_array().unwrap().len(), 1);

        let peer = peer_id();
        for bad in ["ftp://r:1", "http://r/relay", "http://u:p@r:1", "x"] {
            let body = json!({"peer_id": peer, "port": 1, "relay": bad});
            let resp = register_proven(&t.http, &t.base, KEY, &peer, body).await;
            assert_error(resp, 400, "bad_request").await;
        }
        t.register_with(&peer, json!({"peer_id": peer, "port": 1, "relay": own}))
            .await;
        assert_eq!(
            t.get_json(&format!("/api/peers/{peer}")).await["relay"],
            own.as_str()
        );

        // Another tracker on the database reported 5 attachments and 2 /ws clients; a third
        // did too long ago to count.
        let store = db.open().await;
        let report = |id: &str, url: &str, attached, at| p2p_tracker::store::InstanceRecord {
            id: id.into(),
            relay_url: Some(url.into()),
            relay_attached: attached,
            ws_clients: 2,
            last_seen_ms: at,
        };
        store
            .put_instance(&report("other", "http://r2:1", 5, T0))
            .await
            .unwrap();
        store
            .put_instance(&report("gone", "http://r3:1", 7, T0 - 60_000))
            .await
            .unwrap();
        let stats = t.get_json("/api/stats").await;
        assert_eq!(stats["relay_connections"], 5, "{stats}");
        assert_eq!(stats["ws_clients"], 2, "{stats}");
        let relays = t.get_json("/api/relays").await;
        let urls: Vec<&str> = relays["relays"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["url"].as_str().unwrap())
            .collect();
        let mut want = vec!["http://r2:1", own.as_str()];
        want.sort();
        assert_eq!(urls, want);
        t.stop().await;
    })
    .await;
}

/// Whether a tracker on `db` with a `/ws` client (something to tell the fleet) writes a fleet
/// report within two report ticks. Its `/api/stats` counts the client either way.
async fn fleet_report_written(db: &TestDb) -> bool {
    use p2p_tracker::fleet::REPORT_EVERY;
    use std::time::{Duration, Instant};
    let t = TestTracker::start(db, serve_args()).await;
    let (_ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token={KEY}", t.tracker.addr))
            .await
            .unwrap();
    let store = db.open().await;
    let deadline = Instant::now() + 2 * REPORT_EVERY + Duration::from_millis(500);
    let (mut counted, mut written) = (false, false);
    while Instant::now() < deadline && !(counted && written) {
        counted = counted || t.get_json("/api/stats").await["ws_clients"] == 1;
        written = written || !store.live_instances(0).await.unwrap().is_empty();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(counted, "/api/stats did not count the /ws client");
    t.stop().await;
    written
}

/// A tracker on SQLite is alone on its database: it writes no fleet report while clients stay
/// connected (an idle tracker with attached peers would otherwise write every 4 s).
#[tokio::test]
async fn a_tracker_on_sqlite_writes_no_fleet_reports() {
    within(30, async {
        assert!(!fleet_report_written(&TestDb::sqlite()).await);
    })
    .await;
}

/// Trackers on PostgreSQL may share it: a tracker with a client reports in.
#[tokio::test]
async fn a_tracker_on_postgres_reports_to_the_fleet() {
    let Some(url) = postgres_url() else {
        return skip(
            "fleet reports on PostgreSQL",
            "P2P_TEST_POSTGRES_URL is not set",
        );
    };
    let db = TestDb::postgres(&url);
    within(30, async { assert!(fleet_report_written(&db).await) }).await;
    db.cleanup().await;
}

/// `--rate-limit-replicas N`: each of N replicas behind one balancer enforces 1/N of the rate
/// and burst (rounded up), so N replicas together allow the configured budget.
#[tokio::test]
async fn replicas_share_the_rate_limit() {
    within(30, async {
        let db = TestDb::sqlite();
        let mut args = serve_args();
        args.rate_limit_rps = 1;
        args.rate_limit_burst = Some(9);
        args.rate_limit_replicas = 3;
        let t = TestTracker::start(&db, args).await;
        let mut passed = 0;
        for _ in 0..9 {
            let resp = t.get("/api/stats").send().await.unwrap();
            passed += usize::from(resp.status() == 200);
        }
        // A third of the burst (3), and at most one more from the rate (1/3 per second,
        // rounded up to 1) if a second passed.
        assert!((3..=4).contains(&passed), "{passed} of 9 passed");
        t.stop().await;
    })
    .await;
}
