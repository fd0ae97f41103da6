//! Private swarms (issue 20 item 3): a peer serves a private file only to a peer that presents
//! the tracker's admission to it. In-process uploaders on loopback, raw clients with their own
//! keys, and admissions signed by a test "tracker" key; then the real thing: a tracker, a
//! `p2p-peer --daemon` seeder and `p2p-download` as processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_peer::Identity;
use p2p_peer::admission::{HeldAdmissions, TrackerKeys, now_ms};
use p2p_peer::download::{DownloadError, DownloadOptions, download};
use p2p_peer::net::PeerAddr;
use p2p_peer::net::accept::Acceptor;
use p2p_peer::net::secure::{Role, SecureReader, SecureWriter};
use p2p_peer::net::session;
use p2p_peer::storage::Library;
use p2p_peer::throttle::Throttle;
use p2p_peer::tracker_client::TrackerClient;
use p2p_peer::upload::Uploader;
use p2p_proto::admission::{Admission, AdmissionSigner};
use p2p_proto::api::RegisterPeerRequest;
use p2p_proto::wire::{self, Frame, RejectCode};
use p2p_proto::{FileId, Manifest, PeerId};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use support::procs::{KEY, Killed, tracker, tracker_at};

const OVERALL: Duration = Duration::from_secs(120);

/// A seeder of one private file (its library's default) trusting `tracker`'s admissions.
struct Seeder {
    addr: SocketAddr,
    peer_id: PeerId,
    manifest: Manifest,
    data: Vec<u8>,
    library: Arc<Library>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn seeder(tracker: &AdmissionSigner) -> Seeder {
    let dir = tempfile::tempdir().unwrap();
    let data = support::content(700_000, 5);
    let path = dir.path().join("secret.bin");
    std::fs::write(&path, &data).unwrap();
    let library = Arc::new(Library::new());
    let manifest = library.share(&path).await.unwrap();
    assert!(!library.is_public(&manifest.id), "private by default");
    let keys = Arc::new(TrackerKeys::default());
    keys.pin("http://tracker.test", tracker.public_key())
        .unwrap();
    let identity = Identity::generate().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let uploader = Uploader::new(library.clone(), Arc::new(Throttle::new(None))).with_trust(keys);
    Acceptor::new(identity.clone(), Arc::new(uploader), stop.clone()).listen(listener);
    Seeder {
        addr,
        peer_id: identity.peer_id(),
        manifest,
        data,
        library,
        stop,
        _dir: dir,
    }
}

type Reader = SecureReader<ReadHalf<TcpStream>>;
type Writer = SecureWriter<WriteHalf<TcpStream>>;

/// A raw client session to `addr` as `me`.
async fn raw(me: &Identity, addr: SocketAddr) -> (Reader, Writer) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let s = session::open(stream, me, Role::Initiator, None)
        .await
        .unwrap();
    s.reader.frame_cap().set(wire::MAX_MANIFEST_FRAME_LEN);
    (s.reader, s.writer)
}

/// The next frame that is not `Hello`.
async fn next(rx: &mut Reader) -> Frame {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an answer in time")
            .unwrap()
            .expect("the connection stays open")
        {
            Frame::Hello { .. } => {}
            f => return f,
        }
    }
}

/// Reads the answer to a `ManifestRequest`: a "not admitted" reject saying `why`.
async fn expect_not_admitted(rx: &mut Reader, why: &str) {
    refused_frame(next(rx).await, 0, why);
}

/// Asserts `frame` is a "not admitted" rejection of `request_id` saying `why`.
fn refused_frame(frame: Frame, request_id: u32, why: &str) {
    match frame {
        Frame::Reject {
            request_id: r,
            code: RejectCode::NotAdmitted,
            message,
        } => {
            assert_eq!(r, request_id);
            assert!(message.contains(why), "{message:?} should say {why:?}");
            assert!(message.contains("not admitted"), "{message}");
        }
        other => panic!("expected a not-admitted reject, got {other:?}"),
    }
}

/// Asks for the manifest and chunk 0 of `file`, after `admission` if given; the two answers.
async fn ask(me: &Identity, s: &Seeder, admission: Option<Admission>) -> (Frame, Frame) {
    let (mut rx, mut tx) = raw(me, s.addr).await;
    let file_id = s.manifest.id;
    if let Some(a) = admission {
        tx.feed(&Frame::Admission(a));
    }
    tx.feed(&Frame::ManifestRequest { file_id });
    tx.send(&Frame::Request {
        request_id: 7,
        file_id,
        index: 0,
    })
    .await
    .unwrap();
    let first = next(&mut rx).await;
    let mut second = next(&mut rx).await;
    if matches!(second, Frame::Bitfield { .. }) {
        second = next(&mut rx).await;
    }
    (first, second)
}

/// Asserts both answers are "not admitted" rejections saying `why`.
fn refused(answers: (Frame, Frame), why: &str) {
    refused_frame(answers.0, 0, why);
    refused_frame(answers.1, 7, why);
}

#[tokio::test]
async fn a_private_file_is_served_only_with_the_trackers_admission_for_this_peer_and_file() {
    tokio::time::timeout(OVERALL, async {
        let tracker = AdmissionSigner::from_seed(&[1; 32]);
        let s = seeder(&tracker).await;
        let me = Identity::generate().unwrap();
        let (file, later) = (s.manifest.id, now_ms() + 600_000);

        // No admission; an admission signed by a key the seeder never pinned; one for another
        // file; one for another peer (stolen: this client is not that peer); an expired one;
        // and a valid one whose expiry was stretched (the signature no longer matches).
        refused(ask(&me, &s, None).await, "no admission sent");
        let forger = AdmissionSigner::from_seed(&[2; 32]);
        let forged = forger.admit(&file, &me.peer_id(), later);
        refused(ask(&me, &s, Some(forged)).await, "not registered with");
        let other_file = tracker.admit(&FileId([9; 32]), &me.peer_id(), later);
        refused(ask(&me, &s, Some(other_file)).await, "no admission sent");
        let someone_else = Identity::generate().unwrap().peer_id();
        let stolen = tracker.admit(&file, &someone_else, later);
        refused(ask(&me, &s, Some(stolen)).await, "for peer");
        let expired = tracker.admit(&file, &me.peer_id(), now_ms() - 120_000);
        refused(ask(&me, &s, Some(expired)).await, "expired");
        let mut stretched = tracker.admit(&file, &me.peer_id(), now_ms() - 120_000);
        stretched.expires_at_ms = later;
        refused(ask(&me, &s, Some(stretched)).await, "signature");

        // The tracker's admission of this peer to this file: the manifest and the chunk.
        let good = tracker.admit(&file, &me.peer_id(), later);
        let (manifest, chunk) = ask(&me, &s, Some(good)).await;
        assert!(
            matches!(manifest, Frame::Manifest(ref m) if m.id == file),
            "{manifest:?}"
        );
        let chunk_len = s.manifest.chunk_len(0) as usize;
        match chunk {
            Frame::Chunk {
                request_id: 7,
                data,
                ..
            } => assert_eq!(&data[..], &s.data[..chunk_len]),
            other => panic!("expected the chunk, got {other:?}"),
        }

        // Made public, it is served to anyone.
        s.library.visibility.set_public(file, true).unwrap();
        let (manifest, _) = ask(&me, &s, None).await;
        assert!(matches!(manifest, Frame::Manifest(_)), "{manifest:?}");
        s.stop.cancel();
    })
    .await
    .expect("finished in time");
}

/// A connection sending forged admissions under the pinned key gets 64 checked, then none:
/// its next admission, even a good one, is not looked at; another connection is served.
#[tokio::test]
async fn forged_admissions_cost_a_bounded_number_of_signature_checks() {
    tokio::time::timeout(OVERALL, async {
        let tracker = AdmissionSigner::from_seed(&[4; 32]);
        let s = seeder(&tracker).await;
        let me = Identity::generate().unwrap();
        let good = tracker.admit(&s.manifest.id, &me.peer_id(), now_ms() + 600_000);
        let (mut rx, mut tx) = raw(&me, s.addr).await;
        for i in 0..200u64 {
            let mut forged = good;
            forged.signature[0] ^= 1;
            forged.expires_at_ms += i;
            tx.feed(&Frame::Admission(forged));
        }
        tx.feed(&Frame::Admission(good));
        tx.send(&Frame::ManifestRequest {
            file_id: s.manifest.id,
        })
        .await
        .unwrap();
        expect_not_admitted(&mut rx, "too many bad admissions").await;
        let (manifest, _) = ask(&me, &s, Some(good)).await;
        assert!(matches!(manifest, Frame::Manifest(_)), "{manifest:?}");
        s.stop.cancel();
    })
    .await
    .expect("finished in time");
}

#[tokio::test]
async fn a_download_presents_its_admission_and_without_one_says_it_was_not_admitted() {
    tokio::time::timeout(OVERALL, async {
        let tracker = AdmissionSigner::from_seed(&[3; 32]);
        let s = seeder(&tracker).await;
        let source = [PeerAddr::new(s.peer_id, vec![s.addr])];
        let me = Identity::generate().unwrap();

        // Without an admission: refused, said clearly, and not blamed on the seeder.
        let out = tempfile::tempdir().unwrap();
        let err = download(
            &me,
            &s.manifest,
            &source,
            out.path(),
            Arc::new(Library::new()),
            DownloadOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, DownloadError::NotAdmitted { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("not admitted"), "{text}");
        assert!(text.contains(&s.peer_id.to_string()), "{text}");
        assert!(!err.variant_failed(), "another manifest would not help");

        // With the tracker's admission, it completes (the latest one held is sent).
        let held = Arc::new(HeldAdmissions::default());
        held.hold(tracker.admit(&s.manifest.id, &me.peer_id(), now_ms() - 120_000));
        held.hold(tracker.admit(&s.manifest.id, &me.peer_id(), now_ms() + 600_000));
        let opts = DownloadOptions {
            admissions: held,
            ..DownloadOptions::default()
        };
        let report = download(
            &me,
            &s.manifest,
            &source,
            out.path(),
            Arc::new(Library::new()),
            opts,
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&report.path).unwrap(), s.data);
        assert_eq!(report.peers[0].bad_chunks, 0);
        s.stop.cancel();
    })
    .await
    .expect("finished in time");
}

fn peer_cmd(bin: &str, url: &str, data: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--tracker", url, "--api-key", KEY, "--port", "0"])
        .args(["--listen", "127.0.0.1", "--allow-local-addrs"])
        .args(["--dht", "off", "--no-relay"])
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", "info")
        .env_remove("P2P_TRACKER")
        .env_remove("P2P_PORT")
        .env_remove("P2P_PUBLIC");
    cmd
}

/// A real tracker, a private `p2p-peer --daemon` seeder: a peer the tracker never admitted,
/// and one that presents another peer's admission, are refused with the reason; `p2p-download`
/// (admitted through the tracker) fetches the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_real_tracker_only_admitted_peers_fetch_a_private_file() {
    tokio::time::timeout(OVERALL, async {
        let work = tempfile::tempdir().unwrap();
        let t = tracker(work.path()).await;
        let url = t.base_url();
        let seed_dir = work.path().join("seed");
        std::fs::create_dir_all(&seed_dir).unwrap();
        let data = support::content(2_000_000, 11);
        std::fs::write(seed_dir.join("plans.pdf"), &data).unwrap();
        let manifest =
            p2p_peer::storage::manifest_for_file(&seed_dir.join("plans.pdf"), "plans.pdf").unwrap();
        let id = manifest.id;
        let _seed = Killed(
            peer_cmd(env!("CARGO_BIN_EXE_p2p-peer"), &url, &seed_dir)
                .arg("--daemon")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let client = TrackerClient::new(&url, Some(KEY.into())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let seed = loop {
            if let Ok(swarm) = client.file_peers(&id, None, 10).await
                && let Some(p) = swarm.peers.first()
            {
                // Without a peer token the tracker admits nobody.
                assert_eq!(swarm.admission, None);
                break p.clone();
            }
            assert!(Instant::now() < deadline, "the seeder never announced");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let seed_addr = SocketAddr::new("127.0.0.1".parse().unwrap(), seed.port);

        // A raw client with its own key, never admitted.
        let stranger = Identity::generate().unwrap();
        let (mut rx, mut tx) = raw(&stranger, seed_addr).await;
        tx.send(&Frame::ManifestRequest { file_id: id })
            .await
            .unwrap();
        expect_not_admitted(&mut rx, "no admission sent").await;

        // A registered peer gets an admission with its lookup; presented by another key it
        // is refused.
        let admitted = Identity::generate().unwrap();
        let registered = TrackerClient::new(&url, Some(KEY.into())).unwrap();
        let resp = registered
            .register(&admitted, &downloader_registration(&admitted))
            .await
            .unwrap();
        assert_eq!(resp.admission_key.as_ref().map(String::len), Some(64));
        let swarm = registered.file_peers(&id, None, 10).await.unwrap();
        let admission = Admission::from_hex(swarm.admission.as_deref().unwrap()).unwrap();
        assert_eq!(
            (admission.file_id, admission.peer_id),
            (id, admitted.peer_id())
        );
        let (mut rx, mut tx) = raw(&stranger, seed_addr).await;
        tx.feed(&Frame::Admission(admission));
        tx.send(&Frame::ManifestRequest { file_id: id })
            .await
            .unwrap();
        expect_not_admitted(&mut rx, "for peer").await;
        // Its rightful holder is served.
        let (mut rx, mut tx) = raw(&admitted, seed_addr).await;
        tx.feed(&Frame::Admission(admission));
        tx.send(&Frame::ManifestRequest { file_id: id })
            .await
            .unwrap();
        assert!(matches!(next(&mut rx).await, Frame::Manifest(m) if m.id == id));

        // The honest download through the tracker.
        let leech_dir = work.path().join("leech");
        let out = peer_cmd(env!("CARGO_BIN_EXE_p2p-download"), &url, &leech_dir)
            .arg(id.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "p2p-download failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(leech_dir.join("plans.pdf")).unwrap(), data);
    })
    .await
    .expect("finished in time");
}

/// A private `p2p-peer --daemon` seeding `dir` (`--dht off --no-relay`), its log read as it
/// comes; returned once its folder is shared, with the address it listens on.
async fn logged_seeder(
    url: &str,
    dir: &Path,
    extra: &[&str],
) -> (Killed, support::Log, SocketAddr) {
    let mut child = peer_cmd(env!("CARGO_BIN_EXE_p2p-peer"), url, dir)
        .arg("--daemon")
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = support::Log::capture(child.stderr.take().unwrap());
    let within = Duration::from_secs(30);
    let line = log.wait_for(&mut child, &["peer listening"], within).await;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .parse()
        .unwrap();
    log.wait_for(&mut child, &["the folder is in sync"], within)
        .await;
    (Killed(child), log, addr)
}

/// The registration of a peer that only downloads (relay-only, serving nothing).
fn downloader_registration(me: &Identity) -> RegisterPeerRequest {
    RegisterPeerRequest {
        peer_id: me.peer_id(),
        addresses: vec![],
        port: 1,
        udp_port: None,
        relay_only: true,
        relay: None,
        name: None,
        version: None,
        proof: None,
    }
}

/// A registered peer's admission to `id`, from `url`'s answer to its lookup.
async fn admission_from(url: &str, me: &Identity, id: &FileId) -> Admission {
    let client = TrackerClient::new(url, Some(KEY.into())).unwrap();
    client
        .register(me, &downloader_registration(me))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(swarm) = client.file_peers(id, None, 10).await
            && !swarm.peers.is_empty()
        {
            return Admission::from_hex(swarm.admission.as_deref().unwrap()).unwrap();
        }
        assert!(Instant::now() < deadline, "the seeder never announced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the seeder at `addr` serves `id`'s manifest to `me` presenting `admission`; the
/// reason of its refusal otherwise.
async fn served(
    me: &Identity,
    addr: SocketAddr,
    id: FileId,
    admission: Admission,
) -> Result<(), String> {
    let (mut rx, mut tx) = raw(me, addr).await;
    tx.feed(&Frame::Admission(admission));
    tx.send(&Frame::ManifestRequest { file_id: id })
        .await
        .unwrap();
    match next(&mut rx).await {
        Frame::Manifest(m) if m.id == id => Ok(()),
        Frame::Reject {
            code: RejectCode::NotAdmitted,
            message,
            ..
        } => Err(message),
        other => panic!("expected the manifest or a refusal, got {other:?}"),
    }
}

/// Issue 20: the tracker's admission key pinned at registration is kept in the data dir. A
/// seeder restarted while the tracker is down serves its private file to a peer holding an
/// admission of that tracker (a full download, verified). Then a tracker answering at the
/// same URL with another key is refused, with a clear error naming the way out: the pinned key
/// stays the one trusted (the file unchanged), until the seeder is started with
/// `--repin-tracker-keys`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_tracker_keys_survive_a_restart_and_a_changed_key_is_refused() {
    tokio::time::timeout(OVERALL, async {
        let work = tempfile::tempdir().unwrap();
        let t = tracker(work.path()).await;
        let (url, addr) = (t.base_url(), t.addr);
        let seed_dir = work.path().join("seed");
        std::fs::create_dir_all(&seed_dir).unwrap();
        let data = support::content(1_500_000, 12);
        std::fs::write(seed_dir.join("ledger.bin"), &data).unwrap();
        let manifest =
            p2p_peer::storage::manifest_for_file(&seed_dir.join("ledger.bin"), "ledger.bin")
                .unwrap();
        let id = manifest.id;
        let (seed, _, _) = logged_seeder(&url, &seed_dir, &[]).await;
        let me = Identity::generate().unwrap();
        let admission = admission_from(&url, &me, &id).await;
        let pins = p2p_peer::storage::PinFile::in_data_dir(&seed_dir);
        let pinned = std::fs::read(pins.path()).unwrap();
        assert!(
            String::from_utf8_lossy(&pinned).contains(&hex::encode(admission.tracker_key)),
            "{}",
            String::from_utf8_lossy(&pinned)
        );

        // The tracker goes down; the seeder restarts without it.
        drop(seed);
        t.stop().await.unwrap();
        let (seed, seed_log, seed_addr) = logged_seeder(&url, &seed_dir, &[]).await;
        assert_eq!(served(&me, seed_addr, id, admission).await, Ok(()));
        let held = Arc::new(HeldAdmissions::default());
        held.hold(admission);
        let out = tempfile::tempdir().unwrap();
        let seed_id = Identity::load_or_create(&seed_dir).unwrap().peer_id();
        let report = download(
            &me,
            &manifest,
            &[PeerAddr::new(seed_id, vec![seed_addr])],
            out.path(),
            Arc::new(Library::new()),
            DownloadOptions {
                admissions: held,
                ..DownloadOptions::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&report.path).unwrap(), data);

        // Another tracker (another secret) answers at the same URL: the seeder registers with
        // it, refuses its key, and says how to trust it.
        let other_db = work.path().join("other");
        std::fs::create_dir_all(&other_db).unwrap();
        let t2 = tracker_at(&other_db, addr).await;
        let mut seed = seed;
        let refused = seed_log
            .wait_for(
                &mut seed.0,
                &["tracker admission key not pinned", "--repin-tracker-keys"],
                Duration::from_secs(30),
            )
            .await;
        assert!(
            refused.contains(&hex::encode(admission.tracker_key)),
            "{refused}"
        );
        assert!(refused.contains("ERROR"), "{refused}");
        let other = admission_from(&url, &me, &id).await;
        assert_ne!(other.tracker_key, admission.tracker_key);
        let why = served(&me, seed_addr, id, other).await.unwrap_err();
        assert!(why.contains("not registered with"), "{why}");
        assert_eq!(served(&me, seed_addr, id, admission).await, Ok(()));
        assert_eq!(
            std::fs::read(pins.path()).unwrap(),
            pinned,
            "the pin is kept"
        );

        // Told to, the seeder trusts the new key instead.
        drop(seed);
        let (_seed, seed_log, seed_addr) =
            logged_seeder(&url, &seed_dir, &["--repin-tracker-keys"]).await;
        let _ = seed_log;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read(pins.path()).unwrap() == pinned {
            assert!(Instant::now() < deadline, "the new key was never pinned");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(served(&me, seed_addr, id, other).await, Ok(()));
        assert!(served(&me, seed_addr, id, admission).await.is_err());
        t2.stop().await.unwrap();
    })
    .await
    .expect("finished in time");
}

/// Chunk `index` of `data`, the content `m` describes.
fn chunk_of(m: &Manifest, data: &[u8], index: u32) -> bytes::Bytes {
    let start = index as usize * m.chunk_size as usize;
    let len = m.chunk_len(u64::from(index)) as usize;
    bytes::Bytes::copy_from_slice(&data[start..start + len])
}

/// A long download sends its peers a fresher admission once the one it sent nears its expiry
/// and a later one is held (the refreshes of the file's peers bring them). The seeder here
/// records the admissions it is sent.
#[tokio::test]
async fn a_long_download_renews_its_admission_with_its_peers() {
    use p2p_peer::net::secure;
    tokio::time::timeout(OVERALL, async {
        let tracker = AdmissionSigner::from_seed(&[5; 32]);
        let dir = tempfile::tempdir().unwrap();
        let data = Arc::new(support::content(1_500_000, 8));
        let path = dir.path().join("long.bin");
        std::fs::write(&path, &*data).unwrap();
        let m = p2p_peer::storage::manifest_for_file(&path, "long.bin").unwrap();
        let seed = Identity::generate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(parking_lot::Mutex::new(Vec::<Admission>::new()));
        {
            let (seed, m, data, seen) = (seed.clone(), m.clone(), data.clone(), seen.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (seed, m, data, seen) =
                        (seed.clone(), m.clone(), data.clone(), seen.clone());
                    tokio::spawn(async move {
                        let (mut rx, mut tx, _) =
                            secure::handshake(stream, &seed, Role::Responder, None).await?;
                        while let Some(frame) = rx.recv().await? {
                            match frame {
                                Frame::Admission(a) => seen.lock().push(a),
                                Frame::ManifestRequest { file_id } => {
                                    let all = p2p_proto::Bitfield::full(m.chunk_count());
                                    tx.feed(&Frame::Manifest(m.clone()));
                                    tx.send(&Frame::Bitfield {
                                        file_id,
                                        chunk_count: all.len() as u32,
                                        bits: all.into_bytes().into(),
                                    })
                                    .await?;
                                }
                                Frame::Request {
                                    request_id,
                                    file_id,
                                    index,
                                } => {
                                    let data = chunk_of(&m, &data, index);
                                    tx.send(&Frame::Chunk {
                                        request_id,
                                        file_id,
                                        index,
                                        data,
                                    })
                                    .await?;
                                }
                                _ => {}
                            }
                        }
                        Ok::<_, secure::SecureError>(())
                    });
                }
            });
        }
        let me = Identity::generate().unwrap();
        let held = Arc::new(HeldAdmissions::default());
        // Expiring within the renewal margin from the start.
        let first = tracker.admit(&m.id, &me.peer_id(), now_ms() + 60_000);
        held.hold(first);
        let fresh = tracker.admit(&m.id, &me.peer_id(), now_ms() + 600_000);
        let later = held.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            later.hold(fresh);
        });
        let opts = DownloadOptions {
            admissions: held,
            // About 3 s for the file, so the fresh admission arrives mid-download.
            throttle: Arc::new(Throttle::new(Some(500_000))),
            connections_per_peer: Some(1),
            pipeline: 2,
            ..DownloadOptions::default()
        };
        let out = tempfile::tempdir().unwrap();
        let report = download(
            &me,
            &m,
            &[PeerAddr::new(seed.peer_id(), vec![addr])],
            out.path(),
            Arc::new(Library::new()),
            opts,
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&report.path).unwrap(), *data);
        assert_eq!(*seen.lock(), vec![first, fresh], "sent once, renewed once");
    })
    .await
    .expect("finished in time");
}
