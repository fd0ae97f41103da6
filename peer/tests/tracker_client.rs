//! The tracker client and session against a real tracker in process (port 0, SQLite in a
//! temp dir). Waits are on the tracker's event feed or the session's status, each bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_peer::identity::Identity;
use p2p_peer::tracker_client::{
    Announcements, Connections, SessionHandle, SessionStatus, SessionTiming, TrackerClient,
    TrackerError, spawn_session,
};
use p2p_proto::api::{
    AnnounceRequest, ConnectionPathKind, Event, EventMessage, HeartbeatRequest,
    MAX_PEER_CONNECTIONS, PeerConnection, PeerInfo, RegisterPeerRequest,
};
use p2p_proto::{Bitfield, CHUNK_SIZE, FileId, Manifest, PeerId};
use p2p_tracker::app::{self, RunningTracker, RuntimeOptions};
use p2p_tracker::config::ServeArgs;
use p2p_tracker::store::SqliteStore;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use support::procs::{KEY, serve_args};

/// A tracker on `addr` (port 0 for any) keeping its database in `dir`.
async fn tracker_at(dir: &Path, addr: SocketAddr) -> RunningTracker {
    tracker_with(dir, serve_args(addr)).await
}

async fn tracker_with(dir: &Path, args: ServeArgs) -> RunningTracker {
    let store = Arc::new(SqliteStore::open(&dir.join("tracker.db"), 4).await.unwrap());
    app::start(store, &args, RuntimeOptions::default())
        .await
        .unwrap()
}

async fn tracker(dir: &Path) -> RunningTracker {
    tracker_at(dir, "127.0.0.1:0".parse().unwrap()).await
}

fn client(t: &RunningTracker) -> TrackerClient {
    TrackerClient::new(&t.base_url(), Some(KEY.into())).unwrap()
}

/// Runs `f` with an overall timeout so no test hangs.
async fn within<F: Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out")
}

/// Test peer `n`'s key pair.
fn identity(n: u8) -> Identity {
    Identity::from_secret(Sha256::digest([b'p', n, std::process::id() as u8]).into())
}

fn peer_id(n: u8) -> PeerId {
    identity(n).peer_id()
}

/// Registers test peer `n` (proving its key); its peer token.
async fn registered(c: &TrackerClient, n: u8) -> String {
    c.register(&identity(n), &register_request(peer_id(n)))
        .await
        .unwrap()
        .peer_token
}

fn register_request(peer: PeerId) -> RegisterPeerRequest {
    RegisterPeerRequest {
        peer_id: peer,
        addresses: vec!["127.0.0.1".into()],
        port: 7000,
        udp_port: None,
        relay_only: false,
        relay: None,
        name: Some("test peer".into()),
        version: None,
        proof: None,
    }
}

/// The manifest of `len` bytes of deterministic content.
fn manifest(name: &str, len: usize, seed: u8) -> Manifest {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    Manifest::of_bytes(name, &data, CHUNK_SIZE).unwrap()
}

fn heartbeat(peer: PeerId) -> HeartbeatRequest {
    HeartbeatRequest {
        peer_id: peer,
        uploaded: Some(1),
        downloaded: None,
        connections: None,
    }
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The tracker's events: those it already keeps (all of them, on a fresh tracker), then live.
struct Feed {
    backlog: std::collections::VecDeque<Arc<str>>,
    live: broadcast::Receiver<Arc<str>>,
}

fn events(t: &RunningTracker) -> Feed {
    let (backlog, live) = t.state.events.subscribe();
    Feed {
        backlog: backlog.into(),
        live,
    }
}

impl Feed {
    /// Waits for the next event matching `want`.
    async fn next(&mut self, want: impl Fn(&Event) -> bool) {
        loop {
            let json = match self.backlog.pop_front() {
                Some(json) => json,
                None => self.live.recv().await.expect("event feed open"),
            };
            let msg: EventMessage = serde_json::from_str(&json).unwrap();
            if want(&msg.event) {
                return;
            }
        }
    }
}

fn announced_by(event: &Event, peer: PeerId, file: FileId) -> bool {
    matches!(event, Event::FileAnnounced { peer_id, file_id, .. } if *peer_id == peer && *file_id == file)
}

#[tokio::test]
async fn register_heartbeat_announce_and_swarm_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let t = tracker(dir.path()).await;
    let c = client(&t);
    within(20, async {
        let (seeder, leecher) = (peer_id(1), peer_id(2));
        let reg = c
            .register(&identity(1), &register_request(seeder))
            .await
            .unwrap();
        assert_eq!(reg.peer_id, seeder);
        assert_eq!(reg.heartbeat_interval_secs, 30);
        assert_eq!(reg.observed_ip, "127.0.0.1");
        assert_eq!(reg.peer_token_expires_in_secs, 3600);
        let seeder_token = reg.peer_token;
        let leecher_token = registered(&c, 2).await;
        let beat = c
            .heartbeat(&seeder_token, &heartbeat(seeder))
            .await
            .unwrap();
        assert_eq!(beat.next_heartbeat_secs, 30);
        assert_eq!(beat.peer_token, None, "a fresh token is not renewed");
        // The token speaks for its own peer only.
        let err = c
            .heartbeat(&seeder_token, &heartbeat(leecher))
            .await
            .unwrap_err();
        assert!(matches!(err, TrackerError::Unauthorized(_)), "{err:?}");

        // Three chunks: the seeder has all, the leecher only the first.
        let m = manifest("round trip.bin", 2 * CHUNK_SIZE as usize + 100, 1);
        let a = c
            .announce(
                &seeder_token,
                &AnnounceRequest {
                    peer_id: seeder,
                    file: m.clone(),
                    have: None,
                },
            )
            .await
            .unwrap();
        assert!(a.created && a.complete);
        assert_eq!((a.file_id, a.chunks_have), (m.id, 3));
        let mut have = Bitfield::new(3);
        have.set(0);
        let a = c
            .announce(
                &leecher_token,
                &AnnounceRequest {
                    peer_id: leecher,
                    file: m.clone(),
                    have: Some(have.to_base64()),
                },
            )
            .await
            .unwrap();
        assert!(!a.created && !a.complete);
        assert_eq!(a.chunks_have, 1);

        let details = c.file(&m.id).await.unwrap();
        assert_eq!(details.manifest, m);
        assert_eq!(
            (details.chunk_count, details.seeders, details.leechers),
            (3, 1, 1)
        );

        let swarm = c.file_peers(&m.id, Some(&seeder), 10).await.unwrap();
        assert_eq!((swarm.file_id, swarm.chunk_count), (m.id, 3));
        assert_eq!(swarm.peers.len(), 1);
        let p = &swarm.peers[0];
        assert_eq!(p.peer_id, leecher);
        assert_eq!((p.port, p.complete, p.chunks_have), (7000, false, 1));
        assert_eq!(p.have.as_deref(), Some(have.to_base64().as_str()));
        let swarm = c.file_peers(&m.id, None, 10).await.unwrap();
        assert_eq!(swarm.peers.len(), 2);
        assert_eq!(swarm.peers[0].peer_id, seeder, "whole copies first");

        let list = c.list_files("ROUND", 0, 10).await.unwrap();
        assert_eq!(list.total, 1);
        assert_eq!(list.files[0].id, m.id);
        assert_eq!(c.list_files("absent", 0, 10).await.unwrap().total, 0);

        assert_eq!(c.peer(&seeder).await.unwrap().files, 1);
        assert!(matches!(
            c.file(&manifest("other", 10, 9).id).await,
            Err(TrackerError::NotFound(_))
        ));

        c.unregister(&seeder_token, &seeder).await.unwrap();
        assert!(matches!(
            c.peer(&seeder).await,
            Err(TrackerError::NotFound(_))
        ));
        // Unregistering twice is fine.
        c.unregister(&seeder_token, &seeder).await.unwrap();
    })
    .await;
    t.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_peer_bad_manifest_and_manifest_variants_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let t = tracker(dir.path()).await;
    let c = client(&t);
    within(20, async {
        // A peer the tracker forgot (its token still good) is told to register again.
        let stranger = peer_id(3);
        let stranger_token = registered(&c, 3).await;
        c.unregister(&stranger_token, &stranger).await.unwrap();
        let err = c
            .heartbeat(&stranger_token, &heartbeat(stranger))
            .await
            .unwrap_err();
        let TrackerError::UnknownPeer(message) = &err else {
            panic!("{err:?}")
        };
        assert!(
            message.contains("not registered"),
            "the tracker's message: {message}"
        );
        assert!(!err.is_unreachable());

        let m = manifest("a.bin", 1000, 2);
        let announce = |peer, file: &Manifest| AnnounceRequest {
            peer_id: peer,
            file: file.clone(),
            have: None,
        };
        assert!(matches!(
            c.announce(&stranger_token, &announce(stranger, &m)).await,
            Err(TrackerError::UnknownPeer(_))
        ));
        // Without a token: register (with a proof) for one.
        assert!(matches!(
            c.announce("", &announce(stranger, &m)).await,
            Err(TrackerError::PeerToken(_))
        ));

        let peer = peer_id(4);
        let token = registered(&c, 4).await;
        c.announce(&token, &announce(peer, &m)).await.unwrap();
        // Same id, other content: kept as a second manifest variant, with its own peers.
        let mut other = manifest("a.bin", 2000, 3);
        other.id = m.id;
        assert_eq!(
            c.announce(&token, &announce(peer, &other))
                .await
                .unwrap()
                .variant,
            2
        );
        let details = c.file_variant(&m.id, 2).await.unwrap();
        assert_eq!((details.variant, details.manifest.size), (2, other.size));
        let swarm = c.variant_peers(&m.id, 2, None, 10).await.unwrap();
        assert_eq!(swarm.peers[0].variant, Some(2));
        assert!(matches!(
            c.variant_peers(&m.id, 1, None, 10).await,
            Ok(s) if s.peers.is_empty()
        ));
        assert!(matches!(
            c.file_variant(&m.id, 7).await,
            Err(TrackerError::NotFound(_))
        ));
        // A Merkle root that does not match the chunk hashes.
        let mut bad = manifest("b.bin", 1000, 4);
        bad.merkle_root = m.merkle_root;
        assert!(matches!(
            c.announce(&token, &announce(peer, &bad)).await,
            Err(TrackerError::BadRequest(_))
        ));
        let mut bad_have = announce(peer, &manifest("c.bin", 1000, 5));
        bad_have.have = Some("not base64!".into());
        assert!(matches!(
            c.announce(&token, &bad_have).await,
            Err(TrackerError::BadRequest(_))
        ));
    })
    .await;
    t.stop().await.unwrap();
}

#[tokio::test]
async fn unannounce_tells_not_announced_from_unknown_peer() {
    let dir = tempfile::tempdir().unwrap();
    let t = tracker(dir.path()).await;
    let c = client(&t);
    within(20, async {
        let peer = peer_id(6);
        let token = registered(&c, 6).await;
        let m = manifest("withdrawn.bin", 1000, 6);
        c.announce(
            &token,
            &AnnounceRequest {
                peer_id: peer,
                file: m.clone(),
                have: None,
            },
        )
        .await
        .unwrap();
        c.unannounce(&token, &peer, &m.id).await.unwrap();
        assert!(
            c.file_peers(&m.id, None, 10)
                .await
                .unwrap()
                .peers
                .is_empty()
        );
        let again = c.unannounce(&token, &peer, &m.id).await.unwrap_err();
        assert!(matches!(again, TrackerError::NotFound(_)), "{again:?}");
        let other_token = registered(&c, 7).await;
        c.unregister(&other_token, &peer_id(7)).await.unwrap();
        let stranger = c
            .unannounce(&other_token, &peer_id(7), &m.id)
            .await
            .unwrap_err();
        assert!(
            matches!(stranger, TrackerError::UnknownPeer(_)),
            "{stranger:?}"
        );
    })
    .await;
    t.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_or_missing_api_key_is_unauthorized() {
    let dir = tempfile::tempdir().unwrap();
    let t = tracker(dir.path()).await;
    within(20, async {
        for key in [Some("wrong-key".to_owned()), None] {
            let c = TrackerClient::new(&t.base_url(), key).unwrap();
            let err = c
                .register(&identity(5), &register_request(peer_id(5)))
                .await
                .unwrap_err();
            assert!(matches!(err, TrackerError::Unauthorized(_)), "{err:?}");
            assert!(matches!(
                c.list_files("", 0, 10).await,
                Err(TrackerError::Unauthorized(_))
            ));
        }
    })
    .await;
    t.stop().await.unwrap();
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let c = TrackerClient::new(&format!("http://{}", closed_port()), Some(KEY.into())).unwrap();
    within(20, async {
        let err = c
            .register(&identity(6), &register_request(peer_id(6)))
            .await
            .unwrap_err();
        assert!(err.is_unreachable(), "{err:?}");
        assert!(
            c.heartbeat("token", &heartbeat(peer_id(6)))
                .await
                .unwrap_err()
                .is_unreachable()
        );
        assert!(
            c.unregister("token", &peer_id(6))
                .await
                .unwrap_err()
                .is_unreachable()
        );
    })
    .await;
}

/// A library the test changes while the session runs.
#[derive(Clone, Default)]
struct Files(Arc<Mutex<Vec<AnnounceRequest>>>);

impl Files {
    fn add(&self, peer: PeerId, file: &Manifest) {
        self.0.lock().unwrap().push(AnnounceRequest {
            peer_id: peer,
            file: file.clone(),
            have: None,
        });
    }

    fn source(&self) -> Announcements {
        let files = self.0.clone();
        Arc::new(move || files.lock().unwrap().clone())
    }
}

fn no_connections() -> Connections {
    Arc::new(Vec::new)
}

/// Asks the tracker for `peer` in its peer list until `want` holds (sessions in these tests
/// heartbeat every 200 ms); bounded by the caller's `within`.
async fn listed_until(c: &TrackerClient, peer: PeerId, want: impl Fn(&PeerInfo) -> bool) {
    loop {
        let list = c.peers(false).await.unwrap();
        if list.peers.iter().any(|p| p.peer_id == peer && want(p)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A session of test peer `n` announcing `files`, with fast timing and no connections to
/// report.
fn files_session(
    c: &TrackerClient,
    n: u8,
    files: &Files,
    shutdown: &CancellationToken,
) -> SessionHandle {
    spawn_session(
        c.clone(),
        identity(n),
        register_request(peer_id(n)),
        files.source(),
        no_connections(),
        fast(),
        shutdown.clone(),
    )
}

fn fast() -> SessionTiming {
    SessionTiming {
        heartbeat: Some(Duration::from_millis(200)),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
    }
}

#[tokio::test]
async fn session_announces_reregisters_when_forgotten_and_unregisters_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let t = tracker(dir.path()).await;
    let c = client(&t);
    let peer = peer_id(7);
    let (first, second) = (manifest("first", 5000, 7), manifest("second", 6000, 8));
    let files = Files::default();
    files.add(peer, &first);
    let shutdown = CancellationToken::new();
    within(20, async {
        let mut feed = events(&t);
        let session = files_session(&c, 7, &files, &shutdown);
        feed.next(|e| announced_by(e, peer, first.id)).await;
        session
            .subscribe()
            .wait_for(|s| *s == SessionStatus::Registered)
            .await
            .unwrap();
        assert!(session.is_registered());

        // A new share is announced at once, not at the next heartbeat.
        files.add(peer, &second);
        session.announce_now();
        feed.next(|e| announced_by(e, peer, second.id)).await;

        // The tracker forgets the peer and its announces (as after an expiry or a restart on
        // fresh data): the next heartbeat gets 404, the session registers and announces again.
        let token = registered(&c, 7).await;
        c.unregister(&token, &peer).await.unwrap();
        feed.next(|e| matches!(e, Event::PeerLeft { peer_id, .. } if *peer_id == peer))
            .await;
        feed.next(|e| matches!(e, Event::PeerJoined { peer_id, .. } if *peer_id == peer))
            .await;
        feed.next(|e| announced_by(e, peer, first.id)).await;
        feed.next(|e| announced_by(e, peer, second.id)).await;
        for id in [first.id, second.id] {
            let swarm = c.file_peers(&id, None, 10).await.unwrap();
            assert_eq!(swarm.peers.len(), 1);
            assert_eq!(swarm.peers[0].peer_id, peer);
        }

        shutdown.cancel();
        session.stopped().await;
        assert_eq!(session.status(), SessionStatus::Stopped);
        assert!(matches!(
            c.peer(&peer).await,
            Err(TrackerError::NotFound(_))
        ));
    })
    .await;
    t.stop().await.unwrap();
}

#[tokio::test]
async fn session_announces_a_renamed_file_again_under_its_new_name() {
    let dir = tempfile::tempdir().unwrap();
    let t = tracker(dir.path()).await;
    let c = client(&t);
    let peer = peer_id(9);
    let (file, other) = (manifest("before.txt", 5000, 9), manifest("other", 6000, 10));
    let files = Files::default();
    files.add(peer, &file);
    files.add(peer, &other);
    let shutdown = CancellationToken::new();
    within(20, async {
        let mut feed = events(&t);
        let session = files_session(&c, 9, &files, &shutdown);
        feed.next(|e| announced_by(e, peer, file.id)).await;
        feed.next(|e| announced_by(e, peer, other.id)).await;

        // The same content under a new name (a rename in the daemon's folder): announced
        // again, with the new name; the file that left is not announced again.
        {
            let mut list = files.0.lock().unwrap();
            list[0].file.name = "after.txt".into();
            list.remove(1);
        }
        session.announce_now();
        feed.next(|e| {
            matches!(e, Event::FileAnnounced { file_id, name, peer_id, .. }
                if *file_id == file.id && name == "after.txt" && *peer_id == peer)
        })
        .await;
        // Once: the next announce is the file that left coming back, not the renamed one.
        session.announce_now();
        files.add(peer, &other);
        session.announce_now();
        let next = std::cell::Cell::new(None);
        feed.next(|e| match e {
            Event::FileAnnounced { file_id, .. } => {
                next.set(Some(*file_id));
                true
            }
            _ => false,
        })
        .await;
        assert_eq!(next.get(), Some(other.id));
        shutdown.cancel();
        session.stopped().await;
    })
    .await;
    t.stop().await.unwrap();
}

#[tokio::test]
async fn session_retries_until_the_tracker_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    // Hold the port with a listener that accepts and hangs up: the session's first attempt
    // fails, and we know it tried.
    let stand_in = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stand_in.local_addr().unwrap();
    let c = TrackerClient::new(&format!("http://{addr}"), Some(KEY.into())).unwrap();
    let peer = peer_id(8);
    let file = manifest("late", 3000, 9);
    let files = Files::default();
    files.add(peer, &file);
    let shutdown = CancellationToken::new();
    within(20, async {
        let session = files_session(&c, 8, &files, &shutdown);
        let (conn, _) = stand_in.accept().await.unwrap();
        drop(conn);
        drop(stand_in);
        assert_eq!(session.status(), SessionStatus::Registering);

        let t = tracker_at(dir.path(), addr).await;
        let mut feed = events(&t);
        session
            .subscribe()
            .wait_for(|s| *s == SessionStatus::Registered)
            .await
            .unwrap();
        // The announce may already be done by now; then the tracker has it.
        if c.file_peers(&file.id, None, 10)
            .await
            .map_or(true, |s| s.peers.is_empty())
        {
            feed.next(|e| announced_by(e, peer, file.id)).await;
        }
        assert_eq!(
            c.file_peers(&file.id, None, 10).await.unwrap().peers[0].peer_id,
            peer
        );

        shutdown.cancel();
        session.stopped().await;
        t.stop().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn session_stops_while_the_tracker_is_unreachable() {
    let c = TrackerClient::new(&format!("http://{}", closed_port()), Some(KEY.into())).unwrap();
    let shutdown = CancellationToken::new();
    let session = spawn_session(
        c,
        identity(9),
        register_request(peer_id(9)),
        Files::default().source(),
        no_connections(),
        SessionTiming::default(),
        shutdown.clone(),
    );
    shutdown.cancel();
    within(5, session.stopped()).await;
    assert_eq!(session.status(), SessionStatus::Stopped);
}

#[tokio::test]
async fn session_reports_connections_with_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let t = tracker(dir.path()).await;
    let c = client(&t);
    let peer = peer_id(10);
    let to = |n, path| PeerConnection {
        peer_id: peer_id(n),
        path,
    };
    let (direct, relayed) = (
        to(11, ConnectionPathKind::Direct),
        to(12, ConnectionPathKind::Relayed),
    );
    let current = Arc::new(Mutex::new(vec![relayed, direct]));
    let connections: Connections = {
        let current = current.clone();
        Arc::new(move || current.lock().unwrap().clone())
    };
    let shutdown = CancellationToken::new();
    within(20, async {
        let mut feed = events(&t);
        let session = spawn_session(
            c.clone(),
            identity(10),
            register_request(peer),
            Files::default().source(),
            connections,
            fast(),
            shutdown.clone(),
        );
        let mut expected = vec![direct, relayed];
        expected.sort_by_key(|c| c.peer_id);
        listed_until(&c, peer, |p| p.connections == expected).await;

        // More than the tracker takes: the session sends what it accepts, and keeps beating.
        let many: Vec<_> = (0..=MAX_PEER_CONNECTIONS)
            .map(|n| PeerConnection {
                peer_id: PeerId(Sha256::digest(n.to_le_bytes()).into()),
                path: ConnectionPathKind::HolePunched,
            })
            .collect();
        *current.lock().unwrap() = many;
        listed_until(&c, peer, |p| p.connections.len() == MAX_PEER_CONNECTIONS).await;
        assert!(session.is_registered());

        // Registering again clears the tracker's list; the session sends it again although it
        // did not change.
        *current.lock().unwrap() = vec![direct];
        listed_until(&c, peer, |p| p.connections == [direct]).await;
        let token = registered(&c, 10).await;
        c.unregister(&token, &peer).await.unwrap();
        feed.next(|e| matches!(e, Event::PeerLeft { peer_id, .. } if *peer_id == peer))
            .await;
        feed.next(|e| matches!(e, Event::PeerJoined { peer_id, .. } if *peer_id == peer))
            .await;
        listed_until(&c, peer, |p| p.connections == [direct]).await;

        shutdown.cancel();
        session.stopped().await;
    })
    .await;
    t.stop().await.unwrap();
}

/// The tracker comes back with another secret (as after a rotation): it knows the peer but
/// refuses its token. The session proves its key again, gets a fresh token and carries on
/// (its announce, which needs the token, arrives).
#[tokio::test]
async fn session_proves_its_key_again_when_the_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = serve_args("127.0.0.1:0".parse().unwrap());
    args.jwt_secret = Some("the first secret of this tracker, 32+ bytes".into());
    let t = tracker_with(dir.path(), args.clone()).await;
    let addr = t.addr;
    let c = client(&t);
    let (peer, file) = (peer_id(13), manifest("kept", 4000, 13));
    let files = Files::default();
    files.add(peer, &file);
    let shutdown = CancellationToken::new();
    within(20, async {
        let mut feed = events(&t);
        let session = files_session(&c, 13, &files, &shutdown);
        feed.next(|e| announced_by(e, peer, file.id)).await;
        t.stop().await.unwrap();

        args.addr = addr;
        args.jwt_secret = Some("another secret, so other token keys, 32+ bytes".into());
        let t = tracker_with(dir.path(), args).await;
        let mut feed = events(&t);
        feed.next(|e| announced_by(e, peer, file.id)).await;
        session
            .subscribe()
            .wait_for(|s| *s == SessionStatus::Registered)
            .await
            .unwrap();
        shutdown.cancel();
        session.stopped().await;
        assert!(
            matches!(c.peer(&peer).await, Err(TrackerError::NotFound(_))),
            "it unregistered with its new token"
        );
        t.stop().await.unwrap();
    })
    .await;
}

/// A gateway whose tracker is down: answers every request with `503` (as a proxy does).
async fn gateway_503() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                // The request head and its small body arrive together on loopback.
                let _ = s.read(&mut buf).await;
                let body = r#"{"error":"unavailable","message":"no upstream"}"#;
                let resp = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn client_uses_the_first_tracker_that_answers_and_fails_over() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (t1, t2) = (tracker(d1.path()).await, tracker(d2.path()).await);
    let dead = format!("http://{}", closed_port());
    let gateway = format!("http://{}", gateway_503().await);
    let c = TrackerClient::with_failover(
        &[dead.clone(), gateway.clone(), t1.base_url(), t2.base_url()],
        Some(KEY.into()),
    )
    .unwrap();
    assert_eq!(c.base_urls().len(), 4);
    assert_eq!(c.base_url(), dead);
    within(30, async {
        // Refused, then a 503: both skipped; the first that answers is used, and stays in use.
        let token = registered(&c, 40).await;
        assert_eq!(c.base_url(), t1.base_url());
        assert_eq!(c.current_index(), 2);
        c.heartbeat(&token, &heartbeat(peer_id(40))).await.unwrap();
        assert_eq!(c.base_url(), t1.base_url());
        // An answer that is an error is still an answer: no failover on a 401.
        assert!(matches!(
            c.heartbeat("not a token", &heartbeat(peer_id(40))).await,
            Err(TrackerError::PeerToken(_))
        ));
        assert_eq!(c.base_url(), t1.base_url());
        t1.stop().await.unwrap();
        // Tracker 1 is gone: the call goes on to the next in the list, tracker 2, which does
        // not know the peer (nor tracker 1's tokens: its own database and secret).
        assert!(matches!(
            c.heartbeat(&token, &heartbeat(peer_id(40))).await,
            Err(TrackerError::UnknownPeer(_) | TrackerError::PeerToken(_))
        ));
        assert_eq!(c.base_url(), t2.base_url());
        registered(&c, 40).await;
        let on_t2 = TrackerClient::new(&t2.base_url(), Some(KEY.into())).unwrap();
        on_t2.peer(&peer_id(40)).await.unwrap();
    })
    .await;
    t2.stop().await.unwrap();
}

#[tokio::test]
async fn every_tracker_down_is_unreachable_and_one_tracker_behaves_as_before() {
    let dead = [closed_port(), closed_port()].map(|a| format!("http://{a}"));
    let c = TrackerClient::with_failover(&dead, Some(KEY.into())).unwrap();
    within(20, async {
        let err = c
            .register(&identity(42), &register_request(peer_id(42)))
            .await
            .unwrap_err();
        assert!(err.is_unreachable(), "{err:?}");
        // Both back off now; a retry still tries one of them rather than failing without asking.
        let err = c
            .heartbeat("token", &heartbeat(peer_id(42)))
            .await
            .unwrap_err();
        assert!(err.is_unreachable(), "{err:?}");
    })
    .await;
    assert!(matches!(
        TrackerClient::with_failover(&[] as &[&str], None),
        Err(TrackerError::Config(_))
    ));
    assert!(matches!(
        TrackerClient::with_failover(&["http://t:1", "ftp://t"], None),
        Err(TrackerError::Config(_))
    ));
    let same = TrackerClient::with_failover(&["http://t:1/", "t:1"], None).unwrap();
    assert_eq!(same.base_urls(), ["http://t:1"]);
}

#[tokio::test]
async fn session_moves_to_the_next_tracker_and_registers_and_announces_there() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (t1, t2) = (tracker(d1.path()).await, tracker(d2.path()).await);
    let c =
        TrackerClient::with_failover(&[t1.base_url(), t2.base_url()], Some(KEY.into())).unwrap();
    let peer = peer_id(43);
    let file = manifest("failover", 7000, 43);
    let files = Files::default();
    files.add(peer, &file);
    let shutdown = CancellationToken::new();
    within(30, async {
        let mut feed1 = events(&t1);
        let mut feed2 = events(&t2);
        let session = files_session(&c, 43, &files, &shutdown);
        feed1.next(|e| announced_by(e, peer, file.id)).await;
        assert_eq!(c.base_url(), t1.base_url());
        t1.stop().await.unwrap();
        // The next heartbeat cannot reach tracker 1; tracker 2 does not know the peer (its own
        // database): the session registers there and announces the library again.
        feed2
            .next(|e| matches!(e, Event::PeerJoined { peer_id, .. } if *peer_id == peer))
            .await;
        feed2.next(|e| announced_by(e, peer, file.id)).await;
        session
            .subscribe()
            .wait_for(|s| *s == SessionStatus::Registered)
            .await
            .unwrap();
        assert_eq!(c.base_url(), t2.base_url());
        let swarm = c.file_peers(&file.id, None, 10).await.unwrap();
        assert_eq!(swarm.peers.len(), 1);
        shutdown.cancel();
        session.stopped().await;
        // It unregistered from the tracker it was using.
        assert!(matches!(
            c.peer(&peer).await,
            Err(TrackerError::NotFound(_))
        ));
    })
    .await;
    t2.stop().await.unwrap();
}

/// A tracker that answers with a body that never ends (chunked, 1 MiB a chunk, until the
/// client hangs up) costs the peer at most the answer cap (96 MiB) before it gets a clear
/// error; a real tracker still answers after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_answer_is_cut_off_at_the_cap() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(60, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 4096];
            let _ = s.read(&mut head).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let chunk = vec![b' '; 1 << 20];
            let mut sent = 0u64;
            // Bounded: 1 GiB at most, should the client never stop reading.
            while sent < 1 << 30 {
                let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                if s.write_all(&framed).await.is_err() {
                    break;
                }
                sent += chunk.len() as u64;
            }
            sent
        });
        // The peak resident size: what reading the answer cost at its largest.
        let rss = || {
            std::fs::read_to_string("/proc/self/status")
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        let before = rss();
        let c = TrackerClient::new(&format!("http://{addr}"), Some(KEY.into())).unwrap();
        let err = c.relays().await.unwrap_err();
        let grown = rss().saturating_sub(before);
        let sent = server.await.unwrap();
        println!("FIGURE endless-answer sent_mib={} peak_rss_growth_mib={}", sent >> 20, grown >> 20);
        assert!(
            matches!(&err, TrackerError::InvalidResponse(m) if m.contains("larger than 96 MiB")),
            "{err}"
        );
        assert!(sent < 1 << 30, "the client read on past the cap");
        assert!(grown < 256 << 20, "memory grew {} MiB", grown >> 20);

        let dir = tempfile::tempdir().unwrap();
        let t = tracker(dir.path()).await;
        let honest = client(&t);
        honest.relays().await.unwrap();
        t.stop().await.unwrap();
    })
    .await;
}
