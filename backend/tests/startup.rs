//! Start-up as deployed: `/metrics` on its own listener (`--metrics-addr`), and a database that
//! is not ready when the tracker starts (`--db-wait-secs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::*;
use p2p_tracker::app;
use p2p_tracker::config::DbArgs;

#[tokio::test]
async fn metrics_answer_on_the_metrics_address_only() {
    within(30, async {
        let db = TestDb::sqlite();
        let mut args = serve_args();
        args.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        let t = TestTracker::start(&db, args).await;
        let metrics_addr = t.tracker.metrics_addr.expect("a metrics listener");
        assert_ne!(metrics_addr.port(), t.tracker.addr.port());

        let resp = t
            .http
            .get(format!("http://{metrics_addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(
            text.contains("p2p_tracker_peers_online"),
            "metrics missing:\n{text}"
        );

        // The main port serves everything else, but not /metrics; the metrics port only that.
        let main_metrics = t.http.get(t.url("/metrics")).send().await.unwrap();
        assert_eq!(main_metrics.status(), 404);
        assert_eq!(t.get("/health").send().await.unwrap().status(), 200);
        let other = t
            .http
            .get(format!("http://{metrics_addr}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 404);
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn metrics_stay_on_the_main_port_without_a_metrics_address() {
    within(30, async {
        let db = TestDb::sqlite();
        let t = TestTracker::start(&db, serve_args()).await;
        assert_eq!(t.tracker.metrics_addr, None);
        let resp = t.http.get(t.url("/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        t.stop().await;
    })
    .await;
}

/// The database's front door closes the first connection unanswered, as a server that is not
/// ready yet does, and passes the next ones to the test PostgreSQL. The tracker's store opening
/// retries (after 1 s) instead of failing.
#[tokio::test]
async fn the_store_waits_for_a_database_that_is_not_ready_yet() {
    let Some(url) = postgres_url() else {
        return skip(
            "the_store_waits_for_a_database_that_is_not_ready_yet",
            "P2P_TEST_POSTGRES_URL is not set",
        );
    };
    within(60, async {
        // A schema of its own, created (and migrated) beforehand.
        let db = TestDb::postgres(&url);
        db.open().await;
        let TestDb::Postgres { schema, .. } = &db else {
            unreachable!()
        };

        let real = reqwest::Url::parse(&url).unwrap();
        let backend = format!(
            "{}:{}",
            real.host_str().unwrap(),
            real.port().unwrap_or(5432)
        );
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut through_front = real.clone();
        through_front.set_host(Some("127.0.0.1")).unwrap();
        through_front
            .set_port(Some(front.local_addr().unwrap().port()))
            .unwrap();
        through_front
            .query_pairs_mut()
            .append_pair("options", &format!("-c search_path={schema}"));

        let accepted = Arc::new(AtomicU32::new(0));
        let counter = accepted.clone();
        let door = tokio::spawn(async move {
            loop {
                let (mut client, _) = front.accept().await.unwrap();
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    drop(client); // not ready yet
                    continue;
                }
                let backend = backend.clone();
                tokio::spawn(async move {
                    let mut server = tokio::net::TcpStream::connect(backend).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });

        let data = tempfile::tempdir().unwrap();
        let args = DbArgs {
            data_dir: data.path().to_owned(),
            postgres_url: Some(through_front.to_string()),
            database_url: None,
            db_max_connections: 2,
            db_wait_secs: 30,
        };
        let store = app::open_store(&args)
            .await
            .expect("opens once the database is ready");
        store.ping().await.expect("the database answers");
        assert!(
            accepted.load(Ordering::SeqCst) >= 2,
            "the first connection was refused, so a second was made"
        );

        // Without waiting, the same refusal is final.
        accepted.store(0, Ordering::SeqCst);
        let once = DbArgs {
            db_wait_secs: 0,
            ..args
        };
        assert!(app::open_store(&once).await.is_err());
        door.abort();
        db.cleanup().await;
    })
    .await;
}
