//! The live event feed: authentication, and events for registers, announces and expiry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(t: &TestTracker, query: &str) -> String {
    format!("ws://{}/ws{query}", t.tracker.addr)
}

/// The next JSON event whose type is not `hello` or a replayed older one we skip.
async fn next_event(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await.expect("stream open").expect("frame") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn next_of_type(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let e = next_event(ws).await;
        if e["type"] == ty {
            return e;
        }
    }
}

#[tokio::test]
async fn events_arrive_for_register_announce_and_leave() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        let (mut ws, _) = connect_async(ws_url(&t, &format!("?token={KEY}")))
            .await
            .unwrap();
        let hello = next_event(&mut ws).await;
        assert_eq!(hello["type"], "hello");

        let peer = peer_id();
        t.register(&peer, 6881).await;
        let joined = next_of_type(&mut ws, "peer_joined").await;
        assert_eq!(joined["peer_id"], json!(peer));
        assert_eq!(joined["port"], 6881);
        assert_eq!(joined["addresses"], json!(["10.1.2.3"]));
        assert_eq!(joined["ts_ms"], T0);

        let m = manifest("song.flac", &content(5000, 9));
        t.announce(&peer, &m, None).await;
        let announced = next_of_type(&mut ws, "file_announced").await;
        assert_eq!(announced["file_id"], m.id.to_string());
        assert_eq!(announced["name"], "song.flac");
        assert_eq!(announced["created"], true);
        assert_eq!(announced["complete"], true);

        // Silence past the TTL: the sweep (every 50 ms in tests) reports the peer as left.
        t.clock.advance_ms(91_000);
        let left = next_of_type(&mut ws, "peer_left").await;
        assert_eq!(left["peer_id"], json!(peer));
        assert_eq!(left["reason"], "expired");

        t.register(&peer, 6881).await;
        next_of_type(&mut ws, "peer_joined").await;
        t.peer_delete(&peer, &format!("/api/peers/{peer}"))
            .send()
            .await
            .unwrap();
        let left = next_of_type(&mut ws, "peer_left").await;
        assert_eq!(left["reason"], "unregistered");

        // A client joining later gets the recent events first.
        let (mut late, _) = connect_async(ws_url(&t, &format!("?token={KEY}")))
            .await
            .unwrap();
        assert_eq!(next_event(&mut late).await["type"], "hello");
        assert_eq!(next_event(&mut late).await["type"], "peer_joined");
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_feed_needs_credentials() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;

        // A bad token in the URL is refused before the upgrade.
        let err = connect_async(ws_url(&t, "?token=wrong")).await.unwrap_err();
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
            other => panic!("expected a 401, got {other}"),
        }

        // Without a token, the first message must carry one.
        let (mut ws, _) = connect_async(ws_url(&t, "")).await.unwrap();
        ws.send(Message::Text(json!({"token": "nope"}).to_string().into()))
            .await
            .unwrap();
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1008);
                assert!(frame.reason.contains("invalid"), "{}", frame.reason);
            }
            other => panic!("expected a policy close, got {other:?}"),
        }

        // A JWT from login works as the first message.
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
        let (mut ws, _) = connect_async(ws_url(&t, "")).await.unwrap();
        ws.send(Message::Text(
            json!({"token": login["token"]}).to_string().into(),
        ))
        .await
        .unwrap();
        assert_eq!(next_event(&mut ws).await["type"], "hello");
        let metrics = t
            .http
            .get(t.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("p2p_tracker_ws_clients 1"), "{metrics}");

        // The largest first message a client may send (8 KiB; the socket reads it through a
        // 1 KiB buffer) still gets through.
        let (mut big, _) = connect_async(ws_url(&t, "")).await.unwrap();
        let mut padded = json!({"token": KEY}).to_string();
        padded.insert_str(1, &" ".repeat(8 * 1024 - padded.len()));
        assert_eq!(padded.len(), 8 * 1024);
        big.send(Message::Text(padded.into())).await.unwrap();
        assert_eq!(next_event(&mut big).await["type"], "hello");
        t.stop().await;
    })
    .await;
}

/// Trackers sharing one PostgreSQL database share their events (LISTEN/NOTIFY): an event on
/// either reaches the `/ws` clients of both, once each and in the same order.
#[tokio::test]
async fn events_reach_the_clients_of_every_tracker_on_one_database() {
    let Some(url) = postgres_url() else {
        skip(
            "/ws events across trackers on one database",
            "no PostgreSQL (set P2P_TEST_POSTGRES_URL)",
        );
        return;
    };
    within(30, async {
        let db = TestDb::postgres(&url);
        let a = TestTracker::start(&db, serve_args()).await;
        let b = TestTracker::start(&db, serve_args()).await;
        let mut feeds = Vec::new();
        for t in [&a, &b] {
            let (mut ws, _) = connect_async(ws_url(t, &format!("?token={KEY}")))
                .await
                .unwrap();
            assert_eq!(next_event(&mut ws).await["type"], "hello");
            feeds.push(ws);
        }

        let (first, second, third) = (peer_id(), peer_id(), peer_id());
        a.register(&first, 6881).await;
        b.register(&second, 6882).await;
        let mut orders = Vec::new();
        for ws in &mut feeds {
            let mut joined = Vec::new();
            for _ in 0..2 {
                joined.push(next_of_type(ws, "peer_joined").await["peer_id"].clone());
            }
            orders.push(joined);
        }
        assert_eq!(orders[0], orders[1], "both trackers see one order");
        let mut seen = orders[0].clone();
        seen.sort_by_key(|v| v.to_string());
        let mut expected = vec![json!(first), json!(second)];
        expected.sort_by_key(|v| v.to_string());
        assert_eq!(seen, expected);

        // No copies: the next join on each feed is a new peer's.
        a.register(&third, 6883).await;
        for ws in &mut feeds {
            assert_eq!(
                next_of_type(ws, "peer_joined").await["peer_id"],
                json!(third)
            );
        }
        a.stop().await;
        b.stop().await;
        db.cleanup().await;
    })
    .await;
}
