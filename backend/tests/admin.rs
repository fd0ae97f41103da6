//! Management over the REST API: admins create and revoke API keys and users, and remove files
//! and peers for everyone; viewers and peers (API keys) are refused with 403.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// A JWT for `username`.
async fn login(t: &TestTracker, username: &str, password: &str) -> String {
    let resp = t
        .http
        .post(t.url("/api/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "login as {username}");
    let body: Value = resp.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

fn with(token: &str, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("Authorization", format!("Bearer {token}"))
}

/// The next event of type `kind` on the feed.
async fn next_event(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    kind: &str,
) -> Value {
    loop {
        let msg = ws.next().await.unwrap().unwrap();
        let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        if v["type"] == kind {
            return v;
        }
    }
}

#[tokio::test]
async fn an_admin_creates_lists_and_revokes_api_keys() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let admin = login(&t, ADMIN, ADMIN_PASSWORD).await;

        let resp = with(&admin, t.http.post(t.url("/api/keys")))
            .json(&json!({"name": "laptop"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let created: Value = resp.json().await.unwrap();
        let (key, id) = (
            created["key"].as_str().unwrap().to_owned(),
            created["id"].as_str().unwrap().to_owned(),
        );
        assert!(key.starts_with("p2pk_") && key.len() == 69, "{created}");
        assert_eq!(created["name"], "laptop");

        // The new key works at once, and is listed without its secret.
        let stats = t
            .http
            .get(t.url("/api/stats"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(stats.status(), 200);
        let list: Value = with(&admin, t.http.get(t.url("/api/keys")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["keys"][0]["id"], json!(id));
        assert_eq!(list["keys"][0]["name"], "laptop");
        assert!(list["keys"][0].get("revoked_at_ms").is_none(), "{list}");
        assert!(!list.to_string().contains(&key), "the list shows no key");

        // Revoked: refused at once (the key cache forgets it), listed as revoked.
        let path = format!("/api/keys/{id}");
        let resp = with(&admin, t.http.delete(t.url(&path)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        let refused = t
            .http
            .get(t.url("/api/stats"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_error(refused, 401, "unauthorized").await;
        let list: Value = with(&admin, t.http.get(t.url("/api/keys")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(list["keys"][0]["revoked_at_ms"].is_u64(), "{list}");
        // Again: nothing to revoke. A bad name is refused.
        let again = with(&admin, t.http.delete(t.url(&path)))
            .send()
            .await
            .unwrap();
        let msg = assert_error(again, 404, "not_found").await;
        assert!(msg.contains(&id), "{msg}");
        for name in ["", "a\nb", &"x".repeat(65)] {
            let resp = with(&admin, t.http.post(t.url("/api/keys")))
                .json(&json!({ "name": name }))
                .send()
                .await
                .unwrap();
            let msg = assert_error(resp, 400, "bad_request").await;
            // The schema's rules, said in words: empty, a control character, too long.
            assert!(msg.starts_with("`name` must"), "{msg}");
        }
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_admin_manages_users_and_viewers_only_look() {
    within(60, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let admin = login(&t, ADMIN, ADMIN_PASSWORD).await;
        let create = |body: Value| {
            with(&admin, t.http.post(t.url("/api/users")))
                .json(&body)
                .send()
        };

        let resp = create(
            json!({"username": "watcher", "password": "look but not touch", "role": "viewer"}),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 201);
        let user: Value = resp.json().await.unwrap();
        assert_eq!(user["username"], "watcher");
        assert_eq!(user["role"], "viewer");
        assert!(user.get("password_hash").is_none());
        // Taken names, short passwords and unknown roles are refused.
        let taken =
            create(json!({"username": "watcher", "password": "another password", "role": "admin"}))
                .await
                .unwrap();
        assert_error(taken, 409, "conflict").await;
        let short = create(json!({"username": "bob", "password": "short", "role": "viewer"}))
            .await
            .unwrap();
        let msg = assert_error(short, 400, "bad_request").await;
        assert!(msg.contains("at least 8"), "{msg}");
        let role = create(json!({"username": "bob", "password": "long enough", "role": "root"}))
            .await
            .unwrap();
        let msg = assert_error(role, 400, "bad_request").await;
        assert!(
            msg.contains("`role` must match") && msg.contains("admin|viewer"),
            "{msg}"
        );

        let users: Value = with(&admin, t.http.get(t.url("/api/users")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let names: Vec<&str> = users["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap())
            .collect();
        assert_eq!(names, [ADMIN, "watcher"]);

        // The viewer sees, but every change is refused with 403; so are peers' API keys.
        let viewer = login(&t, "watcher", "look but not touch").await;
        let seeder = peer_id();
        t.register(&seeder, 7000).await;
        let m = manifest("kept.bin", &content(1000, 3));
        assert_eq!(t.announce(&seeder, &m, None).await.status(), 200);
        let files = with(&viewer, t.http.get(t.url("/api/files")))
            .send()
            .await
            .unwrap();
        assert_eq!(files.status(), 200);
        let file = format!("/api/files/{}", m.id);
        let peer = format!("/api/peers/{seeder}");
        for as_key in [false, true] {
            let who = |req: reqwest::RequestBuilder| {
                if as_key {
                    req.header("X-API-Key", KEY)
                } else {
                    req.header("Authorization", format!("Bearer {viewer}"))
                }
            };
            let refused = [
                who(t.http.get(t.url("/api/keys"))),
                who(t.http.post(t.url("/api/keys")).json(&json!({"name": "x"}))),
                who(t.http.delete(t.url("/api/keys/abcdef012345"))),
                who(t.http.get(t.url("/api/users"))),
                who(t
                    .http
                    .post(t.url("/api/users"))
                    .json(&json!({"username": "eve", "password": "long enough", "role": "admin"}))),
                who(t.http.delete(t.url("/api/users/admin"))),
                who(t.http.delete(t.url(&file))),
            ];
            for req in refused {
                let msg = assert_error(req.send().await.unwrap(), 403, "forbidden").await;
                assert!(msg.contains("needs an admin account"), "{msg}");
            }
        }
        // Nothing changed.
        assert_eq!(
            t.get_json(&format!("{file}/peers")).await["peers"][0]["peer_id"],
            json!(seeder)
        );
        assert_eq!(t.get_json(&peer).await["peer_id"], json!(seeder));

        // An admin cannot delete their own account; deleting another ends its logins.
        let own = with(&admin, t.http.delete(t.url(&format!("/api/users/{ADMIN}"))))
            .send()
            .await
            .unwrap();
        assert_error(own, 400, "bad_request").await;
        let gone = with(&admin, t.http.delete(t.url("/api/users/watcher")))
            .send()
            .await
            .unwrap();
        assert_eq!(gone.status(), 204);
        let relogin = t
            .http
            .post(t.url("/api/auth/login"))
            .json(&json!({"username": "watcher", "password": "look but not touch"}))
            .send()
            .await
            .unwrap();
        assert_error(relogin, 401, "unauthorized").await;
        let unknown = with(&admin, t.http.delete(t.url("/api/users/watcher")))
            .send()
            .await
            .unwrap();
        assert_error(unknown, 404, "not_found").await;
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn an_admin_removes_a_file_and_a_peer_for_everyone() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let admin = login(&t, ADMIN, ADMIN_PASSWORD).await;
        let (a, b) = (peer_id(), peer_id());
        t.register(&a, 7001).await;
        t.register(&b, 7002).await;
        let removed = manifest("unwanted.iso", &content(300_000, 11));
        let kept = manifest("kept.txt", &content(1000, 12));
        for (peer, file) in [(&a, &removed), (&b, &removed), (&a, &kept)] {
            assert_eq!(t.announce(peer, file, None).await.status(), 200);
        }
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws?token={KEY}", t.tracker.addr))
                .await
                .unwrap();

        let path = format!("/api/files/{}", removed.id);
        let resp = with(&admin, t.http.delete(t.url(&path)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        // Gone from lookups and listings, for every peer that had it; the other file stays.
        assert_error(t.get(&path).send().await.unwrap(), 404, "not_found").await;
        assert_error(
            t.get(&format!("{path}/peers")).send().await.unwrap(),
            404,
            "not_found",
        )
        .await;
        let files = t.get_json("/api/files").await;
        assert_eq!(files["total"], 1);
        assert_eq!(files["files"][0]["name"], "kept.txt");
        assert_eq!(t.get_json(&format!("/api/peers/{b}")).await["files"], 0);
        assert_eq!(t.get_json("/api/stats").await["files"], 1);
        let event = next_event(&mut ws, "file_removed").await;
        assert_eq!(event["file_id"], removed.id.to_string());
        assert_eq!(event["name"], "unwanted.iso");
        let again = with(&admin, t.http.delete(t.url(&path)))
            .send()
            .await
            .unwrap();
        assert_error(again, 404, "not_found").await;

        // A peer removed by an admin leaves with the reason "removed".
        let resp = with(&admin, t.http.delete(t.url(&format!("/api/peers/{a}"))))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        let event = next_event(&mut ws, "peer_left").await;
        assert_eq!(event["peer_id"], json!(a));
        assert_eq!(event["reason"], "removed");
        assert_error(
            t.get(&format!("/api/peers/{a}")).send().await.unwrap(),
            404,
            "not_found",
        )
        .await;
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_spec_documents_the_management_routes_and_their_403() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let spec = t.spec().await;
        let paths = &spec["paths"];
        for (path, method, ok) in [
            ("/api/keys", "get", "200"),
            ("/api/keys", "post", "201"),
            ("/api/keys/{key_id}", "delete", "204"),
            ("/api/users", "get", "200"),
            ("/api/users", "post", "201"),
            ("/api/users/{username}", "delete", "204"),
            ("/api/files/{hash}", "delete", "204"),
        ] {
            let op = &paths[path][method];
            assert!(op["security"].is_array(), "{method} {path} is secured");
            for status in [ok, "401", "403"] {
                assert!(
                    op["responses"].get(status).is_some(),
                    "{method} {path} documents {status}"
                );
            }
        }
        assert!(paths["/api/peers/{id}"]["delete"]["responses"]["204"].is_object());
        t.stop().await;
    })
    .await;
}
