//! Throughput through the relay against direct TCP, in one run on loopback: a tracker in
//! process (port 0), one seeder both listening and attached to the relay, and one leecher that
//! downloads the file twice, once over TCP and once relay-only. Prints MB/s and the ratio.
//! Used by `bench/relay`.
//!
//! Usage: relay_bench FILE [PIPELINE]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_peer::Identity;
use p2p_peer::download::{DownloadOptions, download};
use p2p_peer::net::PeerAddr;
use p2p_peer::net::accept::Acceptor;
use p2p_peer::net::connector::Connector;
use p2p_peer::net::relay::{self, RelayConfig};
use p2p_peer::net::transport::ConnectionPath;
use p2p_peer::storage::Library;
use p2p_peer::throttle::Throttle;
use p2p_peer::upload::Uploader;
use p2p_tracker::app::{self, RuntimeOptions};
use p2p_tracker::config::ServeArgs;
use p2p_tracker::store::SqliteStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const KEY: &str = "relay-bench-key";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    p2p_peer::init_tracing();
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::PathBuf::from(args.get(1).expect("usage: relay_bench FILE [PIPELINE]"));
    let pipeline = args.get(2).map(|p| p.parse()).transpose()?.unwrap_or(16);
    let work = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(&work.path().join("tracker.db"), 4).await?);
    let mut serve = ServeArgs::from_flags(&[
        "--addr",
        "127.0.0.1:0",
        "--api-keys",
        KEY,
        "--rate-limit-rps",
        "0",
    ])?;
    serve.relay.relay_max_tunnel_bytes = 0;
    let tracker = app::start(store, &serve, RuntimeOptions::default()).await?;
    let stop = CancellationToken::new();
    let config = RelayConfig {
        url: relay::relay_url(&tracker.base_url())?,
        token: Some(KEY.into()),
        grant: None,
    };

    // The seeder: listening on TCP and attached to the relay.
    let seeder = Identity::generate()?;
    let library = Arc::new(Library::new());
    // Public: this test is about the transfer, not admission (see tests/admission.rs).
    library.visibility.set_all_public(true);
    let manifest = library.share(&path).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let throttle = Arc::new(Throttle::new(None));
    let acceptor = Acceptor::new(
        seeder.clone(),
        Arc::new(Uploader::new(library, throttle)),
        stop.clone(),
    );
    acceptor.listen(listener);
    let (seed_relay, incoming) = relay::spawn(seeder.clone(), config.clone(), stop.clone());
    acceptor.relayed(incoming);
    seed_relay.wait_attached(Duration::from_secs(10)).await?;

    let leecher = Identity::generate()?;
    let (relay, _incoming) = relay::spawn(leecher.clone(), config, stop.clone());
    relay.wait_attached(Duration::from_secs(10)).await?;
    let source = PeerAddr::new(seeder.peer_id(), vec![addr]);
    let mut rates = Vec::new();
    for (name, connector) in [
        ("direct", Connector::direct()),
        ("relayed", Connector::new(Some(relay.clone()), true)),
    ] {
        let dir = tempfile::tempdir()?;
        let opts = DownloadOptions {
            pipeline,
            connector: Arc::new(connector),
            ..DownloadOptions::default()
        };
        let started = Instant::now();
        let report = download(
            &leecher,
            &manifest,
            std::slice::from_ref(&source),
            dir.path(),
            Arc::new(Library::new()),
            opts,
        )
        .await?;
        let secs = started.elapsed().as_secs_f64();
        let path = report.peers.first().and_then(|p| p.path);
        let want = if name == "direct" {
            ConnectionPath::Direct
        } else {
            ConnectionPath::Relayed
        };
        anyhow::ensure!(path == Some(want), "{name} run used {path:?}");
        let mbs = manifest.size as f64 / 1e6 / secs;
        println!(
            "{name}: {mbs:.0} MB/s ({secs:.2} s for {:.0} MB)",
            manifest.size as f64 / 1e6
        );
        rates.push(mbs);
    }
    println!("relayed/direct: {:.2}x (goal >= 0.5x)", rates[1] / rates[0]);
    stop.cancel();
    tracker.stop().await?;
    Ok(())
}
