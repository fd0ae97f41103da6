//! The swarm lab in small (bench/swarm/lab.py, whose full run is `bench/swarm/run.sh`): one
//! seeder and four leechers on shaped links in network namespaces (the seeder 40 Mbit/s up,
//! each leecher 20 Mbit/s up and 100 Mbit/s down), real `p2p-tracker` and `p2p-peer` processes,
//! all leechers starting together; once on the links as they are and once 20 ms apart with 1 %
//! of packets lost between two peers (`--rtt-ms`, `--loss-pct`: the delay line of
//! `peer/examples/delay_line.rs` on every port). It checks what must hold on any machine, not
//! how fast: every leecher ends with a byte-identical copy, the leechers' uploads carried part
//! of the swarm (the seeder sent less than all of the bytes delivered; the seeder alone would
//! have had to send 4 copies), a round trip through the delay lines takes at least the delay
//! they add, and they dropped packets at about the rate asked, one packet at a time.
//!
//! Needs root, `ip` and `tc` (iproute2), `ethtool`, `curl` and python3; without them it prints
//! `SKIPPED: swarm lab: …`, a failure under `P2P_REQUIRE_ALL=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

/// lab.py's exit status when the lab cannot be built here.
const CANNOT_RUN: i32 = 77;

#[test]
fn leechers_complete_and_upload_to_each_other() {
    let bins = Path::new(env!("CARGO_BIN_EXE_p2p-peer")).parent().unwrap();
    let tracker = bins.join("p2p-tracker");
    assert!(
        tracker.is_file(),
        "the swarm lab runs {}, which is missing: build it with `cargo build -p p2p-tracker` \
         (a workspace build makes it)",
        tracker.display()
    );
    let delay_line = bins.join("examples/delay_line");
    assert!(
        delay_line.is_file(),
        "the swarm lab runs {}, which is missing: build it with \
         `cargo build -p p2p-peer --example delay_line` (a workspace test build makes it)",
        delay_line.display()
    );
    // The links as they are, then 20 ms apart and lossy; one after the other, since each lab
    // raises the host's neighbour table limits for its run and puts them back afterwards.
    for (rtt_ms, loss_pct) in [(0, 0.0), (20, 1.0)] {
        let Some((stdout, ours)) = run_lab(bins, rtt_ms, loss_pct) else {
            return;
        };
        let leechers = ours["leechers"].as_array().unwrap();
        assert_eq!(leechers.len(), 4, "{ours}");
        let share = ours["seed_share"].as_f64().unwrap();
        assert!(
            share < 0.9,
            "the seeder sent {:.0} % of the bytes the leechers received: the leechers did not \
             upload to each other\n{stdout}",
            share * 100.0
        );
        // A peer's round trip to the tracker crosses its own port's delay line both ways: half
        // the round trip between two peers. Nothing can make it shorter; a delay line that
        // passed frames straight through would.
        let rtt = ours["tracker_rtt_ms"].as_f64().unwrap();
        let least = f64::from(rtt_ms) / 2.0;
        assert!(
            rtt >= least,
            "a round trip to the tracker took {rtt:.1} ms, under the {least} ms the delay lines \
             add\n{stdout}"
        );
        if loss_pct > 0.0 {
            // Each packet between two peers crosses two delay lines; each drops a frame with
            // the probability that makes `loss_pct` over both. Tens of thousands of frames
            // cross, so the share lost lies well within half to twice that.
            let counts = &ours["delay_line"];
            let frames = counts["frames"].as_f64().unwrap();
            let lost = counts["lost"].as_f64().unwrap();
            let each = 1.0 - (1.0 - loss_pct / 100.0).sqrt();
            assert!(frames > 10_000.0, "{counts}\n{stdout}");
            assert!(
                (each / 2.0..each * 2.0).contains(&(lost / frames)),
                "the delay lines lost {lost} of {frames} frames, where each should lose {:.2} %\n\
                 {stdout}",
                each * 100.0
            );
            assert_eq!(
                counts["gso"].as_u64(),
                Some(0),
                "frames of several packets crossed: a loss would drop a burst\n{stdout}"
            );
        }
    }
}

/// Runs the lab with peers `rtt_ms` apart and `loss_pct` of the packets between two peers
/// lost: its output and our client's results, or `None` when the lab cannot run here
/// (reported as skipped).
fn run_lab(bins: &Path, rtt_ms: u32, loss_pct: f64) -> Option<(String, serde_json::Value)> {
    let lab = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/swarm/lab.py");
    let work = tempfile::tempdir().unwrap();
    let json = work.path().join("results.json");
    let out = match Command::new("python3")
        .arg(&lab)
        .arg("--bin-dir")
        .arg(bins)
        .args([
            "--leechers",
            "4",
            "--patterns",
            "together",
            "--size-mib",
            "8",
        ])
        .args(["--seed-up", "40", "--leech-up", "20", "--leech-down", "100"])
        .arg("--rtt-ms")
        .arg(rtt_ms.to_string())
        .arg("--loss-pct")
        .arg(loss_pct.to_string())
        .args(["--timeout", "120", "--json"])
        .arg(&json)
        .env("TMPDIR", work.path())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            support::skip("swarm lab", &format!("cannot run python3: {e}"));
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if out.status.code() == Some(CANNOT_RUN) {
        let why = stderr.trim().trim_start_matches("swarm lab: SKIPPED: ");
        support::skip("swarm lab", why);
        return None;
    }
    assert!(
        out.status.success(),
        "the swarm lab failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    Some((stdout, results[0]["ours"].clone()))
}
