//! One seeder to one leecher over loopback TCP, in one process: prints MB/s. Used by
//! `bench/transfer`. Usage: transfer_bench FILE [PIPELINE]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use p2p_peer::Identity;
use p2p_peer::download::{DownloadOptions, Source, download};
use p2p_peer::storage::Library;
use p2p_peer::throttle::Throttle;
use p2p_peer::upload::serve;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path =
        std::path::PathBuf::from(args.get(1).expect("usage: transfer_bench FILE [PIPELINE]"));
    let pipeline = args.get(2).map(|p| p.parse()).transpose()?.unwrap_or(16);
    let seed_lib = Arc::new(Library::new());
    let t = Instant::now();
    let manifest = seed_lib.share(&path).await?;
    let hashed = t.elapsed();
    let identity = Identity::generate()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        identity.clone(),
        seed_lib,
        Arc::new(Throttle::new(None)),
        stop.clone(),
    ));
    let out = tempfile::tempdir()?;
    let me = Identity::generate()?;
    let source = Source {
        peer_id: identity.peer_id(),
        addrs: vec![addr],
    };
    let opts = DownloadOptions {
        pipeline,
        ..DownloadOptions::default()
    };
    let report = download(
        &me,
        &manifest,
        &[source],
        out.path(),
        Arc::new(Library::new()),
        opts,
    )
    .await?;
    let secs = report.elapsed.as_secs_f64();
    let mb = manifest.size as f64 / 1e6;
    println!(
        "p2p 1->1: {:.0} MB/s ({:.2} s for {:.0} MB; hashing the seed took {:.2} s)",
        mb / secs,
        secs,
        mb,
        hashed.as_secs_f64()
    );
    stop.cancel();
    Ok(())
}
