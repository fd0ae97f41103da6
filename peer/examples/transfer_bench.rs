//! One seeder to N leechers over loopback TCP, in one process: prints MB/s. Leechers serve
//! each other the chunks they already have, as in a real swarm. Used by `bench/transfer`.
//!
//! Usage: transfer_bench FILE [PIPELINE] [LEECHERS]
//!
//! Or with the seeder and the leecher in two processes, each with its own runtime, as two
//! users' machines (and the rqbit baseline) run them: `transfer_bench seed FILE INFO` in one,
//! then `transfer_bench leech INFO [PIPELINE]` in the other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;

use p2p_peer::Identity;
use p2p_peer::download::{DownloadOptions, download};
use p2p_peer::net::PeerAddr;
use p2p_peer::net::accept::Acceptor;
use p2p_peer::storage::Library;
use p2p_peer::throttle::Throttle;
use p2p_peer::upload::Uploader;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A listening peer with its own library.
async fn peer(stop: &CancellationToken) -> anyhow::Result<(Identity, Arc<Library>, PeerAddr)> {
    let identity = Identity::generate()?;
    let library = Arc::new(Library::new());
    // Public: this test is about the transfer, not admission (see tests/admission.rs).
    library.visibility.set_all_public(true);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let throttle = Arc::new(Throttle::new(None));
    let uploader = Arc::new(Uploader::new(library.clone(), throttle));
    Acceptor::new(identity.clone(), uploader, stop.clone()).listen(listener);
    let source = PeerAddr::new(identity.peer_id(), vec![addr]);
    Ok((identity, library, source))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("seed") => return seed_process(&args[2..]).await,
        Some("leech") => return leech_process(&args[2..]).await,
        _ => {}
    }
    let path = std::path::PathBuf::from(
        args.get(1)
            .expect("usage: transfer_bench FILE [PIPELINE] [LEECHERS]"),
    );
    let pipeline = args.get(2).map(|p| p.parse()).transpose()?.unwrap_or(16);
    let leechers: usize = args.get(3).map(|p| p.parse()).transpose()?.unwrap_or(1);
    let stop = CancellationToken::new();
    let (_seed_id, seed_lib, seed_source) = peer(&stop).await?;
    let t = Instant::now();
    let manifest = seed_lib.share(&path).await?;
    let hashed = t.elapsed();

    let mut peers = Vec::new();
    for _ in 0..leechers {
        peers.push(peer(&stop).await?);
    }
    let out = tempfile::tempdir()?;
    let started = Instant::now();
    let mut jobs = Vec::new();
    for (i, (identity, library, _)) in peers.iter().enumerate() {
        let mut sources = vec![seed_source.clone()];
        sources.extend(
            peers
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| p.2.clone()),
        );
        let dir = out.path().join(format!("leecher-{i}"));
        let (identity, library, manifest) = (identity.clone(), library.clone(), manifest.clone());
        let opts = DownloadOptions {
            pipeline,
            ..DownloadOptions::default()
        };
        jobs.push(tokio::spawn(async move {
            download(&identity, &manifest, &sources, &dir, library, opts).await
        }));
    }
    let mut from_seeder = 0u64;
    for job in jobs {
        let report = job.await??;
        from_seeder += report
            .peers
            .iter()
            .filter(|p| p.peer_id == seed_source.peer_id)
            .map(|p| p.bytes)
            .sum::<u64>();
    }
    let secs = started.elapsed().as_secs_f64();
    let mb = manifest.size as f64 / 1e6;
    if leechers == 1 {
        println!(
            "p2p 1->1: {:.0} MB/s ({secs:.2} s for {mb:.0} MB; hashing the seed took {:.2} s)",
            mb / secs,
            hashed.as_secs_f64()
        );
    } else {
        println!(
            "p2p 1->{leechers}: {secs:.2} s until all {leechers} leechers had {mb:.0} MB \
             ({:.0} MB/s delivered in total; {:.0}% of it from the seeder, the rest leecher to leecher)",
            mb * leechers as f64 / secs,
            from_seeder as f64 / (manifest.size as f64 * leechers as f64) * 100.0
        );
    }
    stop.cancel();
    Ok(())
}

/// `seed FILE INFO`: shares FILE and writes what a leecher needs (manifest, peer id, address) to
/// INFO, then serves until killed.
async fn seed_process(args: &[String]) -> anyhow::Result<()> {
    let [file, info, ..] = args else {
        anyhow::bail!("usage: transfer_bench seed FILE INFO");
    };
    let stop = CancellationToken::new();
    let (_id, library, source) = peer(&stop).await?;
    let manifest = library.share(std::path::Path::new(file)).await?;
    let json = serde_json::json!({
        "manifest": manifest,
        "peer_id": source.peer_id.to_string(),
        "addr": source.addrs[0].to_string(),
    });
    // Written whole, then renamed: a leecher never reads half of it.
    let tmp = format!("{info}.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&json)?)?;
    std::fs::rename(&tmp, info)?;
    std::future::pending::<()>().await;
    Ok(())
}

/// `leech INFO [PIPELINE]`: downloads from the seeder INFO names, in this process, and prints
/// MB/s.
async fn leech_process(args: &[String]) -> anyhow::Result<()> {
    let Some(info) = args.first() else {
        anyhow::bail!("usage: transfer_bench leech INFO [PIPELINE]");
    };
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(info)?)?;
    let manifest: p2p_proto::manifest::Manifest = serde_json::from_value(info["manifest"].clone())?;
    let field = |name: &str| info[name].as_str().map(str::to_owned);
    let source = PeerAddr::new(
        field("peer_id").context("no peer_id")?.parse()?,
        vec![field("addr").context("no addr")?.parse()?],
    );
    let pipeline = args.get(1).map(|p| p.parse()).transpose()?.unwrap_or(16);
    let stop = CancellationToken::new();
    let (identity, library, _) = peer(&stop).await?;
    let out = tempfile::tempdir()?;
    let started = Instant::now();
    let opts = DownloadOptions {
        pipeline,
        ..DownloadOptions::default()
    };
    download(&identity, &manifest, &[source], out.path(), library, opts).await?;
    let secs = started.elapsed().as_secs_f64();
    let mb = manifest.size as f64 / 1e6;
    println!(
        "p2p 1->1, seeder and leecher in two processes: {:.0} MB/s ({secs:.2} s for {mb:.0} MB)",
        mb / secs
    );
    stop.cancel();
    Ok(())
}
