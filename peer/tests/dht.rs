//! Discovery through the DHT, on a private Mainline DHT on loopback (mainline's `Testnet`): a
//! seeder announces a file, and `p2p-download` with no working tracker finds it, fetches the
//! manifest from it and downloads. Also: unknown files, probes, and a DHT that cannot join.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mainline::Testnet;
use p2p_peer::Identity;
use p2p_peer::config::NodeArgs;
use p2p_peer::dht::{Dht, DhtConfig};
use p2p_peer::discovery::{self, ProbeError};
use p2p_peer::node::Node;
use p2p_proto::FileId;
use sha2::{Digest, Sha256};

/// A tracker URL where nothing listens.
const NO_TRACKER: &str = "http://127.0.0.1:1";
const OVERALL: Duration = Duration::from_secs(120);

/// A private DHT of a few nodes on 127.0.0.1; it stops when dropped.
async fn testnet() -> Testnet {
    tokio::task::spawn_blocking(|| Testnet::builder(4).build().unwrap())
        .await
        .unwrap()
}

/// A DHT node on 127.0.0.1 joining through `bootstrap`.
async fn loopback_dht(bootstrap: &[String]) -> Dht {
    let config = DhtConfig {
        bind: "127.0.0.1".parse().unwrap(),
        port: 0,
        bootstrap: bootstrap.to_vec(),
    };
    Dht::start(&config).await.unwrap()
}

fn node_args(data: &Path, bootstrap: &[String]) -> NodeArgs {
    NodeArgs {
        tracker: vec![NO_TRACKER.into()],
        port: 0,
        data: data.to_owned(),
        share_dir: None,
        api_key: None,
        link_ttl: 86_400,
        listen: "127.0.0.1".parse().unwrap(),
        announce_addrs: vec![],
        upload_limit: None,
        download_limit: None,
        pipeline: 16,
        stall_timeout: 60,
        dht: true,
        dht_port: 0,
        dht_bootstrap: bootstrap.to_vec(),
        relay_only: false,
        no_relay: true,
        relays: vec![],
        no_punch: false,
        allow_local_addrs: true,
        max_connections: 512,
        max_connections_per_addr: 32,
        idle_timeout: 90,
        repin_tracker_keys: false,
        public: true,
    }
}

/// A node sharing one file of `len` bytes, announced on the DHT (waits for the announce).
async fn seeder(dir: &Path, bootstrap: &[String], len: usize) -> (Node, Vec<u8>, FileId) {
    std::fs::create_dir_all(dir).unwrap();
    let data: Vec<u8> = (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(dir.join("movie.mkv"), &data).unwrap();
    let id = FileId(Sha256::digest(&data).into());
    let node = Node::start(&node_args(dir, bootstrap)).await.unwrap();
    let shared = node.share_data_dir().await;
    assert!(shared.iter().all(|(_, r)| r.is_ok()));
    let mut announced = node.dht_announcer.as_ref().unwrap().announced();
    node.announce_now();
    announced.wait_for(|n| *n >= 1).await.unwrap();
    (node, data, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_download_without_a_tracker_finds_the_seeder_through_the_dht() {
    tokio::time::timeout(OVERALL, async {
        let net = testnet().await;
        let work = tempfile::tempdir().unwrap();
        let (seed, data, id) = seeder(&work.path().join("seed"), &net.bootstrap, 1_500_000).await;

        let leech_dir = work.path().join("leech");
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_p2p-download"))
            .args(["--tracker", NO_TRACKER, "--port", "0", "--dht-port", "0"])
            .args([
                "--listen",
                "127.0.0.1",
                "--allow-local-addrs",
                "--dht-bootstrap",
            ])
            .arg(net.bootstrap.join(","))
            .arg("--data")
            .arg(&leech_dir)
            .arg(id.to_string())
            .env("RUST_LOG", "info")
            .env_remove("P2P_TRACKER")
            .env_remove("P2P_DHT")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "p2p-download failed:\n{stderr}");
        assert_eq!(std::fs::read(leech_dir.join("movie.mkv")).unwrap(), data);
        // All of it came from the seeder, found through the DHT.
        let line = format!("{}  {} bytes", seed.identity.peer_id(), data.len());
        assert!(stdout.contains(&line), "{stdout}");
        seed.shutdown();
    })
    .await
    .expect("finished in time");
}

#[tokio::test]
async fn an_unknown_file_has_no_peers() {
    tokio::time::timeout(OVERALL, async {
        let net = testnet().await;
        let dht = loopback_dht(&net.bootstrap).await;
        let unknown = FileId([0x5a; 32]);
        assert!(
            dht.find_peers(&unknown, Duration::from_secs(30))
                .await
                .is_empty()
        );
        let me = Identity::generate().unwrap();
        let own: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let found = discovery::dht_sources(&dht, &me, &unknown, own, true).await;
        assert!(found.manifest.is_none() && found.sources.is_empty());
    })
    .await
    .expect("finished in time");
}

#[tokio::test]
async fn a_probe_learns_the_peer_id_and_manifest_and_refuses_unknown_files() {
    tokio::time::timeout(OVERALL, async {
        let net = testnet().await;
        let work = tempfile::tempdir().unwrap();
        let (seed, data, id) = seeder(work.path(), &net.bootstrap, 300_000).await;
        let me = Identity::generate().unwrap();
        let (peer_id, manifest) = discovery::probe(&me, seed.addr, &id).await.unwrap();
        assert_eq!(peer_id, seed.identity.peer_id());
        assert_eq!((manifest.id, manifest.size), (id, data.len() as u64));
        let err = discovery::probe(&me, seed.addr, &FileId([1; 32]))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::NoFile), "{err}");
        // A lookup from another DHT node finds the seeder and yields it as a source.
        let dht = loopback_dht(&net.bootstrap).await;
        let own: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let found = discovery::dht_sources(&dht, &me, &id, own, true).await;
        assert_eq!(found.manifest, Some(manifest));
        assert_eq!(found.sources.len(), 1);
        assert_eq!(found.sources[0].peer_id, seed.identity.peer_id());
        seed.shutdown();
    })
    .await
    .expect("finished in time");
}

#[tokio::test]
async fn a_dht_that_cannot_join_does_not_stop_the_node() {
    tokio::time::timeout(OVERALL, async {
        let work = tempfile::tempdir().unwrap();
        // Nothing answers on UDP port 1.
        let bootstrap = vec!["127.0.0.1:1".to_owned()];
        let node = Node::start(&node_args(work.path(), &bootstrap))
            .await
            .unwrap();
        let dht = node.dht.clone().expect("the DHT node still runs");
        assert_eq!(dht.routing_table_size().await, 0);
        let file = FileId([3; 32]);
        assert!(dht.announce(&file, node.addr.port()).await.is_err());
        assert!(
            dht.find_peers(&file, Duration::from_secs(30))
                .await
                .is_empty()
        );
        node.shutdown();
    })
    .await
    .expect("finished in time");
}

/// Private files (the default) never go on the DHT; a file made public does, and a probe
/// for the private one is refused as not admitted.
#[tokio::test]
async fn only_public_files_are_announced_on_the_dht() {
    tokio::time::timeout(OVERALL, async {
        let net = testnet().await;
        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("private.txt"), b"for admitted peers only").unwrap();
        std::fs::write(work.path().join("public.txt"), b"for anyone").unwrap();
        let args = NodeArgs {
            public: false,
            ..node_args(work.path(), &net.bootstrap)
        };
        let node = Node::start(&args).await.unwrap();
        let mut ids = std::collections::HashMap::new();
        for (path, result) in node.share_data_dir().await {
            ids.insert(
                path.file_name().unwrap().to_str().unwrap().to_owned(),
                result.unwrap().id,
            );
        }
        let (private, public) = (ids["private.txt"], ids["public.txt"]);
        node.library.visibility.set_public(public, true).unwrap();
        let mut announced = node.dht_announcer.as_ref().unwrap().announced();
        node.announce_now();
        announced.wait_for(|n| *n >= 1).await.unwrap();

        let dht = loopback_dht(&net.bootstrap).await;
        let found = dht.find_peers(&public, Duration::from_secs(30)).await;
        assert!(
            found.iter().any(|a| a.port() == node.addr.port()),
            "{found:?}"
        );
        assert!(
            dht.find_peers(&private, Duration::from_secs(30))
                .await
                .is_empty()
        );
        assert_eq!(
            *announced.borrow(),
            1,
            "the private file was never announced"
        );
        let me = Identity::generate().unwrap();
        let err = discovery::probe(&me, node.addr, &private)
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::NotAdmitted(_)), "{err}");
        node.shutdown();
    })
    .await
    .expect("finished in time");
}
