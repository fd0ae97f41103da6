//! The dashboard in a real browser: headless Chromium driven by playwright-core
//! (`web/e2e/dashboard.mjs`) against a tracker on port 0. Needs the built dashboard
//! (`scripts/build-web.sh`), Chromium and `npm ci --prefix web/e2e`; prints SKIPPED without them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use p2p_tracker::clock::{Clock, ManualClock, SystemClock};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var("CHROMIUM").ok().map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/chromium")),
        Some(PathBuf::from("/usr/bin/chromium-browser")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

/// What is missing for this test, if anything.
fn missing() -> Option<String> {
    if !repo().join("web/dist/index.html").is_file() {
        return Some("the dashboard is not built (scripts/build-web.sh)".into());
    }
    if chromium().is_none() {
        return Some("Chromium is not installed (apt-get install chromium)".into());
    }
    if !repo().join("web/e2e/node_modules/playwright-core").is_dir() {
        return Some("playwright-core is not installed (npm ci --prefix web/e2e)".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed".into());
    }
    None
}

#[tokio::test]
async fn dashboard_login_live_updates_and_logout() {
    if let Some(why) = missing() {
        return skip("browser test of the dashboard", &why);
    }
    let db = TestDb::sqlite();
    let mut args = serve_args();
    args.dashboard_dir = Some(repo().join("web/dist"));
    let clock = ManualClock::new(SystemClock.now_ms());
    let t = TestTracker::start_at(&db, args, clock).await;
    let shots = std::env::var("P2P_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("p2p-dashboard-screenshots"));
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo().join("web/e2e/dashboard.mjs"))
        .current_dir(repo().join("web/e2e"))
        .env("BASE_URL", &t.base)
        .env("API_KEY", KEY)
        .env("ADMIN_USER", ADMIN)
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", chromium().unwrap())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("browser test finished in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    println!("screenshots in {}", shots.display());
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok: no console errors"));
    t.stop().await;
}
