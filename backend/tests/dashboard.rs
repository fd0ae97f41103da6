//! `/dashboard/`: served from a folder, client-side routes, traversal refused, and a clear page
//! when the assets were not built.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[tokio::test]
async fn serves_assets_and_client_routes() {
    within(30, async {
        let dist = tempfile::tempdir().unwrap();
        std::fs::write(dist.path().join("index.html"), "<html>app</html>").unwrap();
        std::fs::create_dir(dist.path().join("pkg")).unwrap();
        std::fs::write(dist.path().join("pkg/p2p_web.js"), "export {}").unwrap();
        std::fs::write(dist.path().join("pkg/p2p_web_bg.wasm"), b"\0asm").unwrap();
        let db = TestDb::sqlite();
        let mut args = serve_args();
        args.dashboard_dir = Some(dist.path().to_owned());
        let t = TestTracker::start(&db, args).await;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();

        for (path, target) in [("/", "/dashboard/"), ("/dashboard", "/dashboard/")] {
            let resp = http.get(t.url(path)).send().await.unwrap();
            assert!(resp.status().is_redirection(), "{path}");
            assert_eq!(resp.headers()["location"], target);
        }
        let resp = http.get(t.url("/dashboard/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert_eq!(resp.text().await.unwrap(), "<html>app</html>");
        let resp = http
            .get(t.url("/dashboard/pkg/p2p_web_bg.wasm"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-type"], "application/wasm");
        let resp = http
            .get(t.url("/dashboard/pkg/p2p_web.js"))
            .send()
            .await
            .unwrap();
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
        // A client-side route gets the app; a missing asset is a 404.
        let resp = http
            .get(t.url("/dashboard/files/abc"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.text().await.unwrap(), "<html>app</html>");
        let resp = http
            .get(t.url("/dashboard/pkg/missing.js"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        let resp = http
            .get(t.url("/dashboard/%2e%2e/%2e%2e/etc/passwd"))
            .send()
            .await
            .unwrap();
        assert!(resp.status() == 404 || resp.status() == 400);
        t.stop().await;
    })
    .await;
}

#[tokio::test]
async fn says_when_the_assets_were_not_built() {
    within(30, async {
        let empty = tempfile::tempdir().unwrap();
        let db = TestDb::sqlite();
        let mut args = serve_args();
        args.dashboard_dir = Some(empty.path().to_owned());
        let t = TestTracker::start(&db, args).await;
        let resp = t.http.get(t.url("/dashboard/")).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        let page = resp.text().await.unwrap();
        assert!(page.contains("dashboard was not built"), "{page}");
        assert!(page.contains("scripts/build-web.sh"));
        t.stop().await;
    })
    .await;
}
