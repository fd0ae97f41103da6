//! Fills a running tracker for `bench/tracker`: registers N peers (each proving its key:
//! challenge, then registration with the proof) and announces M files, each held by a few
//! peers, over the real HTTP API. Prints one file id, one peer id and that peer's token, to
//! load.
//!
//! Usage: bench_seed BASE_URL API_KEY PEERS FILES PEERS_PER_FILE
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use anyhow::{Context, bail};
use curve25519_dalek::montgomery::MontgomeryPoint;
use p2p_proto::api::PeerChallenge;
use p2p_proto::manifest::{hash_chunk, merkle_root};
use p2p_proto::peer_auth::{PEER_TOKEN_HEADER, proof_mac};
use p2p_proto::{FileId, Manifest, PeerId};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// Bench peer `i`'s private key.
fn secret(i: usize) -> [u8; 32] {
    Sha256::digest(format!("bench-peer-{i}")).into()
}

fn peer(i: usize) -> PeerId {
    PeerId(MontgomeryPoint::mul_base_clamped(secret(i)).to_bytes())
}

/// The registration proof of peer `i` for `challenge`.
fn proof(i: usize, challenge: &PeerChallenge) -> anyhow::Result<serde_json::Value> {
    let mut tracker_key = [0u8; 32];
    hex::decode_to_slice(&challenge.tracker_key, &mut tracker_key)?;
    let mut nonce = [0u8; 32];
    hex::decode_to_slice(&challenge.nonce, &mut nonce)?;
    let shared = MontgomeryPoint(tracker_key)
        .mul_clamped(secret(i))
        .to_bytes();
    let mac = proof_mac(&shared, &tracker_key, &nonce, &peer(i));
    Ok(serde_json::json!({"nonce": challenge.nonce, "mac": hex::encode(mac)}))
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

/// POSTs `body` to `url` with the API key (and a peer token), limited by `gate`; any non-2xx
/// status is an error. The answer's JSON.
async fn post(
    http: reqwest::Client,
    url: String,
    key: String,
    token: Option<String>,
    gate: Arc<Semaphore>,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let _permit = gate.acquire().await?;
    let mut req = http.post(&url).header("X-API-Key", key).json(&body);
    if let Some(token) = token {
        req = req.header(PEER_TOKEN_HEADER, token);
    }
    let resp = req.send().await?;
    if !resp.status().is_success() {
        bail!("POST {url}: {}", resp.status());
    }
    Ok(resp.json().await?)
}

/// Registers peer `i` with a proof of its key; its peer token.
async fn register(
    http: reqwest::Client,
    base: String,
    key: String,
    gate: Arc<Semaphore>,
    i: usize,
) -> anyhow::Result<String> {
    let url = format!("{base}/api/peers/challenge");
    let body = serde_json::json!({"peer_id": peer(i)});
    let challenge = post(http.clone(), url, key.clone(), None, gate.clone(), body).await?;
    let challenge: PeerChallenge = serde_json::from_value(challenge)?;
    let body = serde_json::json!({
        "peer_id": peer(i),
        "addresses": [format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)],
        "port": 6881 + (i % 1000) as u16,
        "proof": proof(i, &challenge)?,
    });
    let url = format!("{base}/api/peers/register");
    let answer = post(http, url, key, None, gate, body).await?;
    answer["peer_token"]
        .as_str()
        .map(str::to_owned)
        .context("no peer_token in the registration's answer")
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

    let registrations: Vec<_> = (0..peers)
        .map(|i| {
            tokio::spawn(register(
                http.clone(),
                base.clone(),
                key.clone(),
                gate.clone(),
                i,
            ))
        })
        .collect();
    let mut tokens = Vec::with_capacity(peers);
    for t in registrations {
        tokens.push(t.await.context("register task")??);
    }
    let registered = started.elapsed();

    let mut tasks = Vec::new();
    for f in 0..files {
        for k in 0..per_file {
            let p = (f * 7 + k * 1009) % peers;
            let body = serde_json::json!({"peer_id": peer(p), "file": manifest(f)});
            let url = format!("{base}/api/files/announce");
            tasks.push(tokio::spawn(post(
                http.clone(),
                url,
                key.clone(),
                Some(tokens[p].clone()),
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
    println!(
        "{} {} {}",
        manifest(files / 2).id,
        peer(peers / 3),
        tokens[peers / 3]
    );
    Ok(())
}
