//! The relay hub and client against a real tracker in process (port 0): attach proofs,
//! impersonation, unknown peers, backpressure, byte limits, and downloads through the relay
//! alone and through a relayed and a direct seeder at once; UDP hole punches coordinated by the
//! hub (on loopback there is no NAT, so this checks the coordination, QUIC and pooling; the NAT
//! lab in nat.rs checks real NATs), and the fallback to the relay when punching is off. Every wait is on a readiness signal
//! (attach status, a read) with an overall timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::content;

use curve25519_dalek::montgomery::MontgomeryPoint;
use futures_util::{SinkExt, StreamExt};
use p2p_peer::Identity;
use p2p_peer::config::NodeArgs;
use p2p_peer::download::{DownloadOptions, download};
use p2p_peer::net::PeerAddr;
use p2p_peer::net::accept::{Acceptor, Inbound, Remote};
use p2p_peer::net::connector::Connector;
use p2p_peer::net::relay::{self, RelayClient, RelayConfig};
use p2p_peer::net::transport::ConnectionPath;
use p2p_peer::node::Node;
use p2p_peer::storage::{Library, manifest_for_file};
use p2p_peer::throttle::Throttle;
use p2p_peer::upload::Uploader;
use p2p_proto::relay::{CloseCode, INITIAL_WINDOW, RelayFrame, error_code, proof_mac};
use p2p_tracker::app::{self, RunningTracker, RuntimeOptions};
use p2p_tracker::config::{RelayArgs, ServeArgs};
use p2p_tracker::store::SqliteStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

const KEY: &str = "relay-test-key";

async fn within<F: Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out")
}

async fn tracker(dir: &Path, relay: RelayArgs) -> RunningTracker {
    tracker_with(dir, relay, &[]).await
}

async fn tracker_with(dir: &Path, relay: RelayArgs, flags: &[&str]) -> RunningTracker {
    let store = Arc::new(SqliteStore::open(&dir.join("tracker.db"), 4).await.unwrap());
    let mut all = vec![
        "--addr",
        "127.0.0.1:0",
        "--api-keys",
        KEY,
        "--rate-limit-rps",
        "0",
    ];
    all.extend(flags);
    let mut args = ServeArgs::from_flags(&all).unwrap();
    args.relay = relay;
    app::start(store, &args, RuntimeOptions::default())
        .await
        .unwrap()
}

/// A relay client attached as `identity`, with its incoming streams.
async fn attached(
    t: &RunningTracker,
    identity: &Identity,
    stop: &CancellationToken,
) -> (RelayClient, tokio::sync::mpsc::Receiver<relay::Incoming>) {
    let config = RelayConfig {
        url: relay::relay_url(&t.base_url()).unwrap(),
        token: Some(KEY.into()),
        grant: None,
    };
    let (client, incoming) = relay::spawn(identity.clone(), config, stop.clone());
    client.wait_attached(Duration::from_secs(10)).await.unwrap();
    (client, incoming)
}

/// A tracker and two peers attached to its relay: A opens streams, B receives them.
struct TwoPeers {
    t: RunningTracker,
    stop: CancellationToken,
    a: Identity,
    b: Identity,
    client_a: RelayClient,
    in_b: tokio::sync::mpsc::Receiver<relay::Incoming>,
    _dir: tempfile::TempDir,
}

impl TwoPeers {
    async fn start(limits: RelayArgs) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let t = tracker(dir.path(), limits).await;
        let stop = CancellationToken::new();
        let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let (client_a, _) = attached(&t, &a, &stop).await;
        let (_, in_b) = attached(&t, &b, &stop).await;
        Self {
            t,
            stop,
            a,
            b,
            client_a,
            in_b,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.t.stop().await.unwrap();
    }
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(t: &RunningTracker, claimed: &p2p_proto::PeerId) -> RawWs {
    let url = format!("ws://{}/relay?peer_id={claimed}&token={KEY}", t.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url.into_client_request().unwrap())
        .await
        .unwrap();
    ws
}

fn assert_bad_proof(answer: &Option<RelayFrame>) {
    assert!(
        matches!(
            answer,
            Some(RelayFrame::Error {
                code: error_code::BAD_PROOF,
                ..
            })
        ),
        "{answer:?}"
    );
}

async fn next_frame(ws: &mut RawWs) -> Option<RelayFrame> {
    loop {
        match ws.next().await? {
            Ok(Message::Binary(b)) => return Some(RelayFrame::decode(b).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Answers the challenge with a proof made with `secret` for `claim`.
async fn prove(ws: &mut RawWs, secret: [u8; 32], claim: p2p_proto::PeerId) -> Option<RelayFrame> {
    let Some(RelayFrame::Challenge { server_key, nonce }) = next_frame(ws).await else {
        panic!("no challenge");
    };
    let shared = MontgomeryPoint(server_key).mul_clamped(secret).to_bytes();
    let mac = proof_mac(&shared, &server_key, &nonce, &claim);
    ws.send(Message::Binary(
        RelayFrame::Proof {
            peer_id: claim,
            mac,
        }
        .to_vec()
        .into(),
    ))
    .await
    .unwrap();
    next_frame(ws).await
}

#[tokio::test]
async fn a_peer_attaches_only_as_itself() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        let t = tracker(dir.path(), RelayArgs::default()).await;
        let (mine, victim) = ([7u8; 32], Identity::generate().unwrap());
        let me = Identity::from_secret(mine);

        // The right key for the claimed id: attached.
        let mut ws = raw(&t, &me.peer_id()).await;
        assert_eq!(
            prove(&mut ws, mine, me.peer_id()).await,
            Some(RelayFrame::Attached)
        );
        drop(ws);

        // Claiming another peer's id with our key: refused, and the socket closes.
        let mut ws = raw(&t, &victim.peer_id()).await;
        let answer = prove(&mut ws, mine, victim.peer_id()).await;
        assert_bad_proof(&answer);
        assert_eq!(next_frame(&mut ws).await, None, "closed after the refusal");
        assert!(!t.state.relay.is_attached(&victim.peer_id()));

        // A valid proof for our own id, but presented on a connection claiming the victim's.
        let mut ws = raw(&t, &victim.peer_id()).await;
        let answer = prove(&mut ws, mine, me.peer_id()).await;
        assert_bad_proof(&answer);

        // No tracker credentials: the upgrade itself is refused.
        let url = format!("ws://{}/relay?peer_id={}", t.addr, me.peer_id());
        assert!(tokio_tungstenite::connect_async(url).await.is_err());
        t.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn opening_to_an_unknown_peer_fails_cleanly_and_the_connection_survives() {
    within(30, async {
        let mut p = TwoPeers::start(RelayArgs::default()).await;

        let nobody = Identity::generate().unwrap().peer_id();
        let mut s = p.client_a.open(nobody).await.unwrap();
        let err = s.read(&mut [0u8; 16]).await.unwrap_err();
        assert!(err.to_string().contains("not attached"), "{err}");

        // The same WebSocket still carries a stream to a real peer, both ways.
        let mut s = p.client_a.open(p.b.peer_id()).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut incoming = p.in_b.recv().await.unwrap();
        assert_eq!(incoming.from, p.a.peer_id());
        let mut buf = [0u8; 4];
        incoming.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        incoming.stream.write_all(b"pong").await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        let metrics = &p.t.state.metrics;
        assert_eq!(metrics.relay_tunnels.get(), 1);
        assert_eq!(metrics.relay_connections.get(), 2);
        let text = metrics.encode();
        assert!(text.contains("p2p_tracker_relay_bytes_total 8"), "{text}");
        // The live feed heard of the attaches and the tunnel.
        let (recent, mut events) = p.t.state.events.subscribe();
        for kind in ["relay_connected", "tunnel_opened"] {
            let tag = format!("\"type\":\"{kind}\"");
            assert!(
                recent.iter().any(|e| e.contains(&tag)),
                "no {kind} in {recent:?}"
            );
        }
        // Closing our end closes the tunnel.
        drop(s);
        while !events
            .recv()
            .await
            .unwrap()
            .contains("\"type\":\"tunnel_closed\"")
        {}
        assert_eq!(metrics.relay_tunnels.get(), 0);
        p.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_slow_reader_holds_back_the_sender_and_the_hub_queues_little() {
    within(60, async {
        let mut p = TwoPeers::start(RelayArgs::default()).await;

        // Twice what the window and both pipes can hold.
        let total = 2 * INITIAL_WINDOW as usize + 4 * 1024 * 1024;
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut s = p.client_a.open(p.b.peer_id()).await.unwrap();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            s.write_all(&sent).await.unwrap();
            s.shutdown().await.unwrap();
            s
        });
        let mut incoming = p.in_b.recv().await.unwrap();
        // Nobody reads: the writer cannot finish. (A fixed wait is the only way to observe
        // that something does not happen; it is not a readiness wait.)
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !writer.is_finished(),
            "{total} bytes went through to a reader that never read"
        );
        let queued = p.t.state.metrics.relay_queued_bytes.get();
        assert!(
            queued <= i64::from(INITIAL_WINDOW),
            "the hub queues at most a window: {queued}"
        );

        // Reading drains it all, intact.
        let mut got = Vec::with_capacity(total);
        incoming.stream.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "content differs");
        writer.await.unwrap();
        p.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_tunnel_is_cut_at_its_byte_limit() {
    within(30, async {
        let limit = 300 * 1024;
        let mut p = TwoPeers::start(RelayArgs {
            relay_max_tunnel_bytes: limit,
            ..RelayArgs::default()
        })
        .await;
        let mut s = p.client_a.open(p.b.peer_id()).await.unwrap();
        tokio::spawn(async move {
            let _ = s.write_all(&vec![1u8; 4 << 20]).await;
            s
        });
        let mut incoming = p.in_b.recv().await.unwrap();
        let mut got = Vec::new();
        let err = incoming.stream.read_to_end(&mut got).await.unwrap_err();
        assert!(
            err.to_string()
                .contains(&CloseCode::LimitExceeded.to_string()),
            "{err}"
        );
        assert!(
            got.len() as u64 <= limit,
            "{} bytes passed a {limit}-byte limit",
            got.len()
        );
        p.stop().await;
    })
    .await;
}

/// A seeder of `path` reachable only through the relay (no listener at all).
async fn relayed_seeder(t: &RunningTracker, path: &Path, stop: &CancellationToken) -> Identity {
    let identity = Identity::generate().unwrap();
    let library = Arc::new(Library::new());
    // Public: this test is about the transfer, not admission (see tests/admission.rs).
    library.visibility.set_all_public(true);
    library.share(path).await.unwrap();
    let (_client, incoming) = attached(t, &identity, stop).await;
    let uploader = Arc::new(Uploader::new(library, Arc::new(Throttle::new(None))));
    Acceptor::new(identity.clone(), uploader, stop.clone()).relayed(incoming);
    identity
}

/// A seeder of `path` listening on 127.0.0.1:0, uploading at most `limit` bytes/s.
async fn direct_seeder(path: &Path, stop: &CancellationToken, limit: Option<u64>) -> PeerAddr {
    let identity = Identity::generate().unwrap();
    let library = Arc::new(Library::new());
    // Public: this test is about the transfer, not admission (see tests/admission.rs).
    library.visibility.set_all_public(true);
    library.share(path).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let uploader = Arc::new(Uploader::new(library, Arc::new(Throttle::new(limit))));
    Acceptor::new(identity.clone(), uploader, stop.clone()).listen(listener);
    PeerAddr::new(identity.peer_id(), vec![addr])
}

/// A closed port: nothing listens there.
async fn dead_addr() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A tracker and a file of `len` bytes to share.
struct Shared {
    t: RunningTracker,
    stop: CancellationToken,
    data: Vec<u8>,
    path: std::path::PathBuf,
    manifest: p2p_proto::Manifest,
    dir: tempfile::TempDir,
}

impl Shared {
    async fn start(len: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let t = tracker(dir.path(), RelayArgs::default()).await;
        let data = content(len, len as u64);
        let path = dir.path().join("file.bin");
        std::fs::write(&path, &data).unwrap();
        let manifest = manifest_for_file(&path, "file.bin").unwrap();
        Self {
            t,
            stop: CancellationToken::new(),
            data,
            path,
            manifest,
            dir,
        }
    }

    /// A leecher attached to the relay, with a connector trying direct first.
    async fn leecher(&self, relay_only: bool) -> (Identity, Connector) {
        let me = Identity::generate().unwrap();
        let (relay, _) = attached(&self.t, &me, &self.stop).await;
        (me, Connector::new(Some(relay), relay_only))
    }

    /// Downloads from `sources` and checks the content.
    async fn leech(
        &self,
        sources: &[PeerAddr],
        pipeline: usize,
    ) -> p2p_peer::download::DownloadReport {
        let (me, connector) = self.leecher(false).await;
        let opts = DownloadOptions {
            pipeline,
            connector: Arc::new(connector),
            ..DownloadOptions::default()
        };
        fetch_checked(&me, &self.manifest, sources, opts, &self.data).await
    }

    async fn stop(self) {
        self.stop.cancel();
        self.t.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_seeder_without_a_reachable_address_is_downloaded_from_through_the_relay() {
    within(60, async {
        let f = Shared::start(3 * 1024 * 1024 + 77).await;
        let seeder = relayed_seeder(&f.t, &f.path, &f.stop).await;
        let source = PeerAddr::new(seeder.peer_id(), vec![dead_addr().await]);
        let report = f.leech(&[source], 16).await;
        assert_eq!(report.peers.len(), 1);
        assert_eq!(report.peers[0].path, Some(ConnectionPath::Relayed));
        assert_eq!(report.peers[0].bytes, f.data.len() as u64);
        f.stop().await;
    })
    .await;
}

#[tokio::test]
async fn one_download_pulls_from_a_direct_and_a_relayed_seeder_at_once() {
    within(60, async {
        let f = Shared::start(16 * 1024 * 1024 + 5).await;
        let relayed = relayed_seeder(&f.t, &f.path, &f.stop).await;
        // The direct seeder is held to 4 MiB/s, so it cannot finish alone before the relayed
        // one (whose handshake crosses the hub) is under way.
        let direct = direct_seeder(&f.path, &f.stop, Some(4 << 20)).await;
        let sources = [direct.clone(), PeerAddr::new(relayed.peer_id(), vec![])];
        let report = f.leech(&sources, 2).await;
        let by = |id| report.peers.iter().find(|p| p.peer_id == id).unwrap();
        let (d, r) = (by(direct.peer_id), by(relayed.peer_id()));
        assert_eq!(d.path, Some(ConnectionPath::Direct));
        assert_eq!(r.path, Some(ConnectionPath::Relayed));
        assert!(d.bytes > 0 && r.bytes > 0, "{:?}", report.peers);
        assert_eq!(d.bytes + r.bytes, f.data.len() as u64);
        f.stop().await;
    })
    .await;
}

#[tokio::test]
async fn relay_only_skips_direct_addresses() {
    within(30, async {
        let f = Shared::start(100_000).await;
        let relayed = relayed_seeder(&f.t, &f.path, &f.stop).await;
        let (_, connector) = f.leecher(true).await;
        // A direct address that works is still not used.
        let direct = direct_seeder(&f.path, &f.stop, None).await;
        let source = PeerAddr::new(relayed.peer_id(), direct.addrs);
        let (_s, path) = connector
            .connect(&source, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(path, ConnectionPath::Relayed);
        f.stop().await;
    })
    .await;
}

/// A whole peer node (relay, hole punching) on the tracker, with its own data dir.
async fn node(t: &RunningTracker, dir: &Path) -> Node {
    node_limited(t, dir, None).await
}

/// As [`node`], uploading at most `upload_limit` bytes/s.
async fn node_limited(t: &RunningTracker, dir: &Path, upload_limit: Option<u64>) -> Node {
    let args = NodeArgs {
        tracker: vec![t.base_url()],
        port: 0,
        data: dir.to_owned(),
        share_dir: None,
        api_key: Some(KEY.into()),
        link_ttl: 86_400,
        listen: "127.0.0.1".parse().unwrap(),
        announce_addrs: vec![],
        upload_limit,
        download_limit: None,
        pipeline: 16,
        stall_timeout: 60,
        dht: false,
        dht_port: 0,
        dht_bootstrap: vec![],
        relay_only: false,
        no_relay: false,
        relays: vec![],
        no_punch: false,
        allow_local_addrs: true,
        max_connections: 512,
        max_connections_per_addr: 32,
        idle_timeout: 90,
        // These nodes never register (no tracker session pins a key): the tests are about the
        // paths, so their files are public (admissions: tests/admission.rs).
        repin_tracker_keys: false,
        public: true,
    };
    let node = Node::start(&args).await.unwrap();
    node.relay
        .as_ref()
        .unwrap()
        .wait_attached(Duration::from_secs(10))
        .await
        .unwrap();
    node
}

/// Downloads `manifest` by `from` from `to`, which has no direct address, and checks it.
async fn fetch_unreachable(
    from: &Node,
    to: &Node,
    manifest: &p2p_proto::Manifest,
    data: &[u8],
) -> p2p_peer::download::DownloadReport {
    let source = PeerAddr::new(to.identity.peer_id(), vec![]);
    let opts = DownloadOptions {
        connector: from.connector.clone(),
        ..DownloadOptions::default()
    };
    fetch_checked(&from.identity, manifest, &[source], opts, data).await
}

/// Downloads `manifest` from `sources` into a fresh folder and checks the content is `data`.
async fn fetch_checked(
    me: &Identity,
    manifest: &p2p_proto::Manifest,
    sources: &[PeerAddr],
    opts: DownloadOptions,
    data: &[u8],
) -> p2p_peer::download::DownloadReport {
    let out = tempfile::tempdir().unwrap();
    let report = download(
        me,
        manifest,
        sources,
        out.path(),
        Arc::new(Library::new()),
        opts,
    )
    .await
    .unwrap();
    assert!(
        std::fs::read(&report.path).unwrap() == data,
        "content differs"
    );
    report
}

#[tokio::test]
async fn peers_without_direct_addresses_hole_punch_and_reuse_the_connection_both_ways() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let t = tracker(dir.path(), RelayArgs::default()).await;
        let (da, db) = (dir.path().join("a"), dir.path().join("b"));
        let (a, b) = (node(&t, &da).await, node(&t, &db).await);
        let file = |dir: &Path, name: &str, len: usize| {
            let data = content(len, len as u64);
            let path = dir.join(name);
            std::fs::write(&path, &data).unwrap();
            (path, data)
        };
        let (path_b, data_b) = file(&db, "from-b.bin", 2 * 1024 * 1024 + 3);
        let manifest_b = b.library.share(&path_b).await.unwrap();
        let report = fetch_unreachable(&a, &b, &manifest_b, &data_b).await;
        assert_eq!(report.peers[0].path, Some(ConnectionPath::HolePunched));
        assert_eq!(report.peers[0].bytes, data_b.len() as u64);
        assert_eq!(t.state.metrics.punch_requests.get(), 1);
        assert_eq!(t.state.metrics.punch_ready.get(), 1);

        // Again, and the other way round: both ride the pooled QUIC connection, no new punch.
        fetch_unreachable(&a, &b, &manifest_b, &data_b).await;
        let (path_a, data_a) = file(&da, "from-a.bin", 300_001);
        let manifest_a = a.library.share(&path_a).await.unwrap();
        let back = fetch_unreachable(&b, &a, &manifest_a, &data_a).await;
        assert_eq!(back.peers[0].path, Some(ConnectionPath::HolePunched));
        assert_eq!(
            t.state.metrics.punch_requests.get(),
            1,
            "the pool was not used"
        );
        assert_eq!(
            a.connector.paths().get(&b.identity.peer_id()),
            Some(&ConnectionPath::HolePunched)
        );
        a.shutdown();
        b.shutdown();
        t.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn one_download_pulls_over_direct_hole_punched_and_relayed_paths_at_once() {
    within(90, async {
        let f = Shared::start(12 * 1024 * 1024 + 9).await;
        // Direct and hole-punched seeders are held to 512 KiB/s each, so the relayed one (which
        // declines hole punches, so the leecher turns to the relay at once) has chunks to send.
        let direct = direct_seeder(&f.path, &f.stop, Some(512 << 10)).await;
        let punched_dir = f.dir.path().join("punched");
        let punched = node_limited(&f.t, &punched_dir, Some(512 << 10)).await;
        punched.library.share(&f.path).await.unwrap();
        let relayed = relayed_seeder(&f.t, &f.path, &f.stop).await;
        let leecher = node(&f.t, &f.dir.path().join("leecher")).await;
        let sources = [
            direct.clone(),
            PeerAddr::new(punched.identity.peer_id(), vec![]),
            PeerAddr::new(relayed.peer_id(), vec![]),
        ];
        let opts = DownloadOptions {
            pipeline: 2,
            connector: leecher.connector.clone(),
            ..DownloadOptions::default()
        };
        let report = fetch_checked(&leecher.identity, &f.manifest, &sources, opts, &f.data).await;
        let by = |id| report.peers.iter().find(|p| p.peer_id == id).unwrap();
        let paths = [
            (by(direct.peer_id), ConnectionPath::Direct),
            (by(punched.identity.peer_id()), ConnectionPath::HolePunched),
            (by(relayed.peer_id()), ConnectionPath::Relayed),
        ];
        for (peer, path) in paths {
            assert_eq!(peer.path, Some(path), "{:?}", report.peers);
            assert!(
                peer.bytes > 0,
                "{path} contributed nothing: {:?}",
                report.peers
            );
        }
        let total: u64 = report.peers.iter().map(|p| p.bytes).sum();
        assert_eq!(total, f.data.len() as u64);
        // Had the decline not reached the leecher, the relayed seeder alone would have waited
        // for the punch's bind timeout.
        assert!(
            report.elapsed < p2p_peer::net::punch::BIND_TIMEOUT,
            "took {:?}",
            report.elapsed
        );
        punched.shutdown();
        leecher.shutdown();
        f.stop().await;
    })
    .await;
}

#[tokio::test]
async fn without_the_rendezvous_the_connection_falls_back_to_the_relay() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let t = tracker_with(dir.path(), RelayArgs::default(), &["--udp-addr", "off"]).await;
        let (da, db) = (dir.path().join("a"), dir.path().join("b"));
        let (a, b) = (node(&t, &da).await, node(&t, &db).await);
        let data = content(500_000, 5);
        let path = db.join("f.bin");
        std::fs::write(&path, &data).unwrap();
        let manifest = b.library.share(&path).await.unwrap();
        let report = fetch_unreachable(&a, &b, &manifest, &data).await;
        assert_eq!(report.peers[0].path, Some(ConnectionPath::Relayed));
        assert_eq!(t.state.metrics.punch_ready.get(), 0);
        a.shutdown();
        b.shutdown();
        t.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn concurrent_downloads_from_one_peer_share_one_connection() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let seeder = Identity::generate().unwrap();
        let library = Arc::new(Library::new());
        // Public: this test is about the transfer, not admission (see tests/admission.rs).
        library.visibility.set_all_public(true);
        let mut files = Vec::new();
        for (i, len) in [(0, 3 * 1024 * 1024 + 1), (1, 2 * 1024 * 1024 + 7)] {
            let data = content(len, i);
            let path = dir.path().join(format!("f{i}.bin"));
            std::fs::write(&path, &data).unwrap();
            files.push((library.share(&path).await.unwrap(), data));
        }
        // A listener that counts the connections it accepts.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let uploader = Arc::new(Uploader::new(
            library.clone(),
            Arc::new(Throttle::new(None)),
        ));
        let acceptor = Acceptor::new(seeder.clone(), uploader, stop.clone());
        tokio::spawn(async move {
            while let Ok((stream, from)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                acceptor.accept(Inbound {
                    stream: Box::new(stream),
                    remote: Remote::Addr(from),
                });
            }
        });
        let me = Identity::generate().unwrap();
        let connector = Arc::new(Connector::direct());
        let source = [PeerAddr::new(seeder.peer_id(), vec![addr])];
        // One connection per download and peer (as on a machine with one core): the second
        // one a lone peer gets elsewhere is pooled the same way, but may still be on its way
        // when a small download ends.
        let opts = || DownloadOptions {
            connector: connector.clone(),
            connections_per_peer: Some(1),
            ..DownloadOptions::default()
        };
        let ((m0, d0), (m1, d1)) = (&files[0], &files[1]);
        tokio::join!(
            fetch_checked(&me, m0, &source, opts(), d0),
            fetch_checked(&me, m1, &source, opts(), d1),
        );
        // Later downloads reuse the same session too.
        fetch_checked(&me, m1, &source, opts(), d1).await;
        // A download dropped mid-transfer (as when a download stops its workers) leaves the
        // shared session intact for the one beside it and for the next.
        let (me2, src2, m0c) = (me.clone(), source.clone(), m0.clone());
        let conn2 = connector.clone();
        let dropped = tokio::spawn(async move {
            let out = tempfile::tempdir().unwrap();
            let opts = DownloadOptions {
                connector: conn2,
                throttle: Arc::new(Throttle::new(Some(256 << 10))),
                connections_per_peer: Some(1),
                ..DownloadOptions::default()
            };
            download(
                &me2,
                &m0c,
                &src2,
                out.path(),
                Arc::new(Library::new()),
                opts,
            )
            .await
        });
        // Held to 1 MiB/s (the bucket allows a second's burst), the other download of 2 MiB is
        // still running when the first is dropped.
        let slow = DownloadOptions {
            throttle: Arc::new(Throttle::new(Some(1 << 20))),
            ..opts()
        };
        let beside = fetch_checked(&me, m1, &source, slow, d1);
        tokio::pin!(beside);
        tokio::select! {
            _ = &mut beside => panic!("finished before the other download was dropped"),
            _ = tokio::time::sleep(Duration::from_millis(30)) => dropped.abort(),
        }
        beside.await;
        fetch_checked(&me, m0, &source, opts(), d0).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(connector.links(), 1);
        stop.cancel();
    })
    .await;
}
