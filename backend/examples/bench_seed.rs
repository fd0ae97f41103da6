//! Fills a running tracker for `bench/tracker`: registers N peers and announces M files, each
//! held by a few peers, over the real HTTP API. Prints one file id and one peer id to load.
//!
//! Usage: bench_seed BASE_URL API_KEY PEERS FILES PEERS_PER_FILE
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use anyhow::{Context, bail};
use p2p_proto::manifest::{hash_chunk, merkle_root};
use p2p_proto::{FileId, Manifest, PeerId};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

fn peer(i: usize) -> PeerId {
    PeerId(Sha256::digest(format!("bench-peer-{i}")).into())
}

/// A small synthetic manifest: 4 chunk hashes and 3 chain values derived from `i` (the tracker
/// cannot check content it never sees, only the manifest's consistency).
fn manifest(i: usize) -> Manifest {
    let chunk_hashes: Vec<_> = (0..4)
        .map(|c| hash_chunk(format!("{i}-{c}").as_bytes()))
        .collect();
    let chain = (0..3)
        .map(|c| hash_chunk(format!("{i}-chain-{c}").as_bytes()))
        .collect();
    Manifest {
        id: FileId(Sha256::digest(format!("bench-file-{i}")).into()),
        name: format!("file-{i:05}.bin"),
        size: 4 * 256 * 1024 - 17,
        chunk_size: 256 * 1024,
        merkle_root: merkle_root(&chunk_hashes),
        chunk_hashes,
        chain,
    }
}

/// POSTs `body` to `path` with the API key, limited by `gate`; any non-2xx status is an error.
async fn post(
    http: reqwest::Client,
    url: String,
    key: String,
    gate: Arc<Semaphore>,
    body: serde_json::Value,
) -> anyhow::Result<()> {
    let _permit = gate.acquire().await?;
    let resp = http
        .post(&url)
        .header("X-API-Key", key)
        .json(&body)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("POST {url}: {}", resp.status());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        bail!("usage: bench_seed BASE_URL API_KEY PEERS FILES PEERS_PER_FILE");
    }
    let base = args[1].clone();
    let key = args[2].clone();
    let peers: usize = args[3].parse()?;
    let files: usize = args[4].parse()?;
    let per_file: usize = args[5].parse()?;
    let http = reqwest::Client::new();
    let gate = Arc::new(Semaphore::new(32));
    let started = std::time::Instant::now();

    let mut tasks = Vec::new();
    for i in 0..peers {
        let body = serde_json::json!({
            "peer_id": peer(i),
            "addresses": [format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)],
            "port": 6881 + (i % 1000) as u16,
        });
        let url = format!("{base}/api/peers/register");
        tasks.push(tokio::spawn(post(
            http.clone(),
            url,
            key.clone(),
            gate.clone(),
            body,
        )));
    }
    for t in tasks.drain(..) {
        t.await.context("register task")??;
    }
    let registered = started.elapsed();

    for f in 0..files {
        for k in 0..per_file {
            let p = (f * 7 + k * 1009) % peers;
            let body = serde_json::json!({"peer_id": peer(p), "file": manifest(f)});
            let url = format!("{base}/api/files/announce");
            tasks.push(tokio::spawn(post(
                http.clone(),
                url,
                key.clone(),
                gate.clone(),
                body,
            )));
        }
    }
    for t in tasks {
        t.await.context("announce task")??;
    }
    eprintln!(
        "seeded {peers} peers in {:.1} s and {} announces in {:.1} s",
        registered.as_secs_f64(),
        files * per_file,
        (started.elapsed() - registered).as_secs_f64()
    );
    println!("{} {}", manifest(files / 2).id, peer(peers / 3));
    Ok(())
}
