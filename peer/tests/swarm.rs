//! Downloads over real TCP on loopback between in-process peers: several seeders at once, a
//! seeder that corrupts chunks, one that vanishes mid-transfer, and resuming partial data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::content;

use bytes::Bytes;
use p2p_peer::Identity;
use p2p_peer::download::{DownloadOptions, download, download_growing};
use p2p_peer::net::PeerAddr;
use p2p_peer::net::accept::Acceptor;
use p2p_peer::net::connector::Connector;
use p2p_peer::net::secure::{self, Role};
use p2p_peer::net::session;
use p2p_peer::storage::{Library, PartialDownload, manifest_with_chunk_size};
use p2p_peer::throttle::Throttle;
use p2p_peer::upload::Uploader;
use p2p_proto::wire::Frame;
use p2p_proto::{Bitfield, Manifest};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A peer sharing `path`, listening on 127.0.0.1:0.
async fn seeder(path: &Path, stop: &CancellationToken) -> PeerAddr {
    let library = Arc::new(Library::new());
    // Public: this test is about the transfer, not admission (see tests/admission.rs).
    library.visibility.set_all_public(true);
    library.share(path).await.unwrap();
    serving(library, stop).await
}

/// A new peer serving `library` on 127.0.0.1:0.
async fn serving(library: Arc<Library>, stop: &CancellationToken) -> PeerAddr {
    let identity = Identity::generate().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let uploader = Arc::new(Uploader::new(library, Arc::new(Throttle::new(None))));
    Acceptor::new(identity.clone(), uploader, stop.clone()).listen(listener);
    PeerAddr::new(identity.peer_id(), vec![addr])
}

/// A peer that claims every chunk of `m`, then answers requests with garbage (`Bad`), serves
/// `after` chunks correctly and drops the connection (`Vanish`), serves every chunk correctly
/// under whatever manifest it was given (`Faithful`), or never answers a request (`Silent`).
#[derive(Clone, Copy)]
enum Misbehaviour {
    Bad,
    Vanish {
        after: usize,
    },
    Faithful,
    Silent,
    /// Another leecher: it has every chunk but `lacks`, answers each request after `delay`,
    /// and after `stall_after` answers never answers again (the connection stays open).
    Leecher {
        lacks: u32,
        delay: Duration,
        stall_after: Option<usize>,
    },
    /// Serves every chunk, each `per_chunk` after its request is read, one at a time per
    /// connection (each connection slow by itself, as with packet loss) or, `one_at_a_time`,
    /// one at a time over all its connections (its upload the bound).
    Paced {
        per_chunk: Duration,
        one_at_a_time: bool,
    },
}

/// What a [`rogue`] peer was sent: chunk requests and their withdrawals (`Cancel`).
#[derive(Default)]
struct Asked {
    requests: AtomicUsize,
    cancels: AtomicUsize,
    /// Connections accepted.
    connections: AtomicUsize,
}

async fn rogue(
    m: Manifest,
    data: Arc<Vec<u8>>,
    how: Misbehaviour,
    stop: CancellationToken,
    asked: Arc<Asked>,
) -> PeerAddr {
    let identity = Identity::generate().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let id = identity.clone();
    let upload = Arc::new(tokio::sync::Mutex::new(()));
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => a.unwrap(),
            };
            asked.connections.fetch_add(1, Ordering::SeqCst);
            let (id, m, data) = (id.clone(), m.clone(), data.clone());
            let (asked, upload) = (asked.clone(), upload.clone());
            tokio::spawn(async move {
                let (mut rx, mut tx, _) =
                    secure::handshake(stream, &id, Role::Responder, None).await?;
                let mut served = 0;
                while let Some(frame) = rx.recv().await? {
                    match frame {
                        Frame::ManifestRequest { file_id } => {
                            let mut all = Bitfield::full(m.chunk_count());
                            if let Misbehaviour::Leecher { lacks, .. } = how {
                                all = Bitfield::new(m.chunk_count());
                                (0..m.chunk_count())
                                    .filter(|&i| i != u64::from(lacks))
                                    .for_each(|i| all.set(i));
                            }
                            tx.feed(&Frame::Manifest(m.clone()));
                            tx.feed(&Frame::Bitfield {
                                file_id,
                                chunk_count: all.len() as u32,
                                bits: all.into_bytes().into(),
                            });
                            tx.flush().await?;
                        }
                        Frame::Cancel { .. } => {
                            asked.cancels.fetch_add(1, Ordering::SeqCst);
                        }
                        Frame::Request { .. } if matches!(how, Misbehaviour::Silent) => {
                            asked.requests.fetch_add(1, Ordering::SeqCst);
                        }
                        Frame::Request {
                            request_id,
                            file_id,
                            index,
                        } => {
                            let start = index as usize * m.chunk_size as usize;
                            let len = m.chunk_len(u64::from(index)) as usize;
                            let payload = match how {
                                Misbehaviour::Bad => Bytes::from(vec![0xee; len]),
                                Misbehaviour::Vanish { after } => {
                                    if served == after {
                                        return Ok::<_, secure::SecureError>(());
                                    }
                                    Bytes::copy_from_slice(&data[start..start + len])
                                }
                                Misbehaviour::Leecher {
                                    delay, stall_after, ..
                                } => {
                                    if stall_after.is_some_and(|n| served >= n) {
                                        asked.requests.fetch_add(1, Ordering::SeqCst);
                                        continue;
                                    }
                                    tokio::time::sleep(delay).await;
                                    Bytes::copy_from_slice(&data[start..start + len])
                                }
                                Misbehaviour::Paced {
                                    per_chunk,
                                    one_at_a_time,
                                } => {
                                    let _turn = match one_at_a_time {
                                        true => Some(upload.lock().await),
                                        false => None,
                                    };
                                    tokio::time::sleep(per_chunk).await;
                                    Bytes::copy_from_slice(&data[start..start + len])
                                }
                                Misbehaviour::Faithful | Misbehaviour::Silent => {
                                    Bytes::copy_from_slice(&data[start..start + len])
                                }
                            };
                            served += 1;
                            asked.requests.fetch_add(1, Ordering::SeqCst);
                            tx.send(&Frame::Chunk {
                                request_id,
                                file_id,
                                index,
                                data: payload,
                            })
                            .await?;
                        }
                        _ => {}
                    }
                }
                Ok(())
            });
        }
    });
    PeerAddr::new(identity.peer_id(), vec![addr])
}

/// A [`rogue`] peer for the fixture's file.
async fn rogue_for(f: &Fixture, how: Misbehaviour) -> PeerAddr {
    rogue_counted(f, how).await.0
}

/// A [`rogue`] peer for the fixture's file, and what it was asked.
async fn rogue_counted(f: &Fixture, how: Misbehaviour) -> (PeerAddr, Arc<Asked>) {
    let asked = Arc::new(Asked::default());
    let source = rogue(
        f.manifest.clone(),
        f.data.clone(),
        how,
        f.stop.clone(),
        asked.clone(),
    )
    .await;
    (source, asked)
}

struct Fixture {
    dir: tempfile::TempDir,
    data: Arc<Vec<u8>>,
    manifest: Manifest,
    stop: CancellationToken,
}

fn fixture(len: usize) -> Fixture {
    fixture_chunked(len, p2p_proto::CHUNK_SIZE)
}

/// A file of `len` bytes in chunks of `chunk` bytes.
fn fixture_chunked(len: usize, chunk: u32) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = content(len, 42);
    let path = dir.path().join("video.bin");
    std::fs::write(&path, &data).unwrap();
    let manifest = manifest_with_chunk_size(&path, "video.bin", chunk).unwrap();
    Fixture {
        dir,
        data: Arc::new(data),
        manifest,
        stop: CancellationToken::new(),
    }
}

async fn leech(
    f: &Fixture,
    sources: &[PeerAddr],
    opts: DownloadOptions,
) -> (p2p_peer::download::DownloadReport, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let me = Identity::generate().unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        download(
            &me,
            &f.manifest,
            sources,
            out.path(),
            Arc::new(Library::new()),
            opts,
        ),
    )
    .await
    .expect("download finished in time")
    .expect("download succeeded");
    assert_eq!(
        std::fs::read(&report.path).unwrap(),
        *f.data,
        "content matches"
    );
    (report, out)
}

/// A download of the fixture's file into `out` by a new peer, with default options.
async fn try_leech(
    f: &Fixture,
    sources: &[PeerAddr],
    out: &Path,
) -> Result<p2p_peer::download::DownloadReport, p2p_peer::download::DownloadError> {
    let me = Identity::generate().unwrap();
    let library = Arc::new(Library::new());
    let opts = DownloadOptions::default();
    download(&me, &f.manifest, sources, out, library, opts).await
}

#[tokio::test]
async fn three_seeders_all_contribute_and_a_corrupting_one_is_banned() {
    let f = fixture(8 * 1024 * 1024 + 1234);
    let path = f.dir.path().join("video.bin");
    let mut sources = Vec::new();
    for _ in 0..3 {
        sources.push(seeder(&path, &f.stop).await);
    }
    let bad = rogue_for(&f, Misbehaviour::Bad).await;
    sources.push(bad.clone());
    let opts = DownloadOptions {
        pipeline: 2,
        max_strikes: 3,
        ..DownloadOptions::default()
    };
    let live = opts.contributions.clone();
    let (report, _out) = leech(&f, &sources, opts).await;
    // The live per-peer figures agree with the final report.
    let live_total: u64 = live.snapshot().iter().map(|(_, b)| b).sum();
    let report_total: u64 = report.peers.iter().map(|p| p.bytes).sum();
    assert_eq!(live_total, report_total);
    assert!(live.snapshot().iter().all(|(p, _)| *p != bad.peer_id));
    assert_eq!(report.fetched_chunks, f.manifest.chunk_count());
    for honest in &sources[..3] {
        let r = report
            .peers
            .iter()
            .find(|r| r.peer_id == honest.peer_id)
            .unwrap();
        assert!(
            r.bytes > 0,
            "every honest seeder contributed: {:?}",
            report.peers
        );
        assert_eq!(r.bad_chunks, 0);
    }
    let r = report
        .peers
        .iter()
        .find(|r| r.peer_id == bad.peer_id)
        .unwrap();
    assert_eq!(r.bytes, 0);
    assert!(r.banned && r.bad_chunks == 3, "{r:?}");
    f.stop.cancel();
}

#[tokio::test]
async fn two_connections_to_one_peer_share_its_work_and_its_strikes() {
    let f = fixture(8 * 1024 * 1024 + 99);
    let path = f.dir.path().join("video.bin");
    // A single seeder over two connections: both are opened, the peer gets one report. At
    // 4 MiB/s (after a second's burst) the download lasts long enough for the second
    // connection, which is made once the first is up, whatever the machine's load.
    let good = seeder(&path, &f.stop).await;
    let connector = Arc::new(Connector::direct());
    let opts = DownloadOptions {
        connections_per_peer: Some(2),
        connector: connector.clone(),
        throttle: Arc::new(Throttle::new(Some(4 << 20))),
        ..DownloadOptions::default()
    };
    let (report, _out) = leech(&f, std::slice::from_ref(&good), opts).await;
    assert_eq!(connector.links(), 2);
    assert_eq!(report.peers.len(), 1, "{:?}", report.peers);
    assert_eq!(report.peers[0].bytes, f.data.len() as u64);
    assert_eq!(report.fetched_chunks, f.manifest.chunk_count());
    // A corrupting peer is banned after `max_strikes` bad chunks over all its connections,
    // not per connection; bad chunks still on their way then count no more.
    let bad = rogue_for(&f, Misbehaviour::Bad).await;
    let opts = DownloadOptions {
        connections_per_peer: Some(2),
        pipeline: 1,
        max_strikes: 3,
        ..DownloadOptions::default()
    };
    let (report, _out) = leech(&f, &[good, bad.clone()], opts).await;
    assert_eq!(report.peers.len(), 2, "{:?}", report.peers);
    let r = report
        .peers
        .iter()
        .find(|r| r.peer_id == bad.peer_id)
        .unwrap();
    assert!(r.banned && r.bytes == 0, "{r:?}");
    assert_eq!(r.bad_chunks, 3, "{r:?}");
    f.stop.cancel();
}

#[tokio::test]
async fn the_endgame_does_not_ask_a_peer_again_over_its_other_connection() {
    // Eight chunks and one peer over two connections: every chunk is in flight on one of
    // them early on, and the endgame may only duplicate a chunk to a different peer.
    let f = fixture(8 * 256 * 1024 - 5);
    let (source, served) = rogue_counted(&f, Misbehaviour::Faithful).await;
    for _ in 0..3 {
        let before = served.requests.load(Ordering::SeqCst);
        let opts = DownloadOptions {
            connections_per_peer: Some(2),
            ..DownloadOptions::default()
        };
        leech(&f, std::slice::from_ref(&source), opts).await;
        let sent = served.requests.load(Ordering::SeqCst) - before;
        assert_eq!(sent as u64, f.manifest.chunk_count(), "chunks sent");
    }
    f.stop.cancel();
}

#[tokio::test]
async fn a_peer_vanishing_mid_transfer_costs_only_its_chunks() {
    let f = fixture(4 * 1024 * 1024);
    let path = f.dir.path().join("video.bin");
    let flaky = rogue_for(&f, Misbehaviour::Vanish { after: 2 }).await;
    let good = seeder(&path, &f.stop).await;
    let opts = DownloadOptions {
        pipeline: 4,
        ..DownloadOptions::default()
    };
    let (report, _out) = leech(&f, &[flaky.clone(), good], opts).await;
    let r = report
        .peers
        .iter()
        .find(|r| r.peer_id == flaky.peer_id)
        .unwrap();
    assert!(r.error.is_some(), "{r:?}");
    f.stop.cancel();
}

#[tokio::test]
async fn resumes_with_only_the_missing_chunks() {
    let f = fixture(3 * 1024 * 1024);
    let path = f.dir.path().join("video.bin");
    let out = tempfile::tempdir().unwrap();
    // An earlier run got the even chunks, then died.
    {
        let mut p = PartialDownload::open(out.path(), &f.manifest).unwrap();
        for i in (0..f.manifest.chunk_count()).step_by(2) {
            let start = (i * 262_144) as usize;
            let end = start + f.manifest.chunk_len(i) as usize;
            assert!(p.write_chunk(i, &f.data[start..end]).unwrap());
        }
        p.save_state().unwrap();
    }
    let source = seeder(&path, &f.stop).await;
    let report = try_leech(&f, &[source], out.path()).await.unwrap();
    assert_eq!(
        report.fetched_chunks,
        f.manifest.chunk_count() / 2,
        "only the odd chunks were fetched"
    );
    assert_eq!(std::fs::read(&report.path).unwrap(), *f.data);
    f.stop.cancel();
}

#[tokio::test]
async fn a_download_without_good_sources_fails_cleanly_and_keeps_progress() {
    let f = fixture(1024 * 1024);
    let bad = rogue_for(&f, Misbehaviour::Bad).await;
    let nobody = PeerAddr::new(
        Identity::generate().unwrap().peer_id(),
        vec!["127.0.0.1:1".parse().unwrap()],
    );
    let out = tempfile::tempdir().unwrap();
    let err = try_leech(&f, &[bad, nobody], out.path()).await.unwrap_err();
    assert!(err.to_string().contains("no peer could provide"), "{err}");
    assert!(
        out.path()
            .join(".partial")
            .join(format!("{}.state", f.manifest.id))
            .exists()
    );
    f.stop.cancel();
}

#[tokio::test]
async fn a_peer_that_cannot_be_reached_is_tried_once_not_once_per_connection() {
    // A listener that hangs up on every connection: no Noise session can be made with it.
    let f = fixture(1024 * 1024);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let dead = PeerAddr::new(Identity::generate().unwrap().peer_id(), vec![addr]);
    let out = tempfile::tempdir().unwrap();
    let opts = DownloadOptions {
        connections_per_peer: Some(2),
        ..DownloadOptions::default()
    };
    let me = Identity::generate().unwrap();
    let library = Arc::new(Library::new());
    let err = download(&me, &f.manifest, &[dead], out.path(), library, opts)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no peer could provide"), "{err}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    f.stop.cancel();
}

#[tokio::test]
async fn a_manifest_whose_chain_contradicts_its_chunk_hashes_fails_without_blaming_peers() {
    let mut f = fixture(2 * 1024 * 1024);
    // Consistent by its Merkle root, but one chain value is wrong: no chunk after it can pass.
    f.manifest.chain[3].0[0] ^= 0x80;
    f.manifest.validate().unwrap();
    let peer = rogue_for(&f, Misbehaviour::Faithful).await;
    let out = tempfile::tempdir().unwrap();
    let err = try_leech(&f, &[peer], out.path()).await.unwrap_err();
    assert!(
        matches!(err, p2p_peer::download::DownloadError::BadManifest(_)),
        "{err}"
    );
    assert!(
        err.to_string().contains("manifest is inconsistent"),
        "{err}"
    );
    // The chunks that did pass are kept, with the resume state.
    assert!(
        out.path()
            .join(".partial")
            .join(format!("{}.state", f.manifest.id))
            .exists()
    );
    f.stop.cancel();
}

/// A peer offering only some chunks of the file (a partial download).
async fn partial_peer(
    f: &Fixture,
    keep: impl Fn(u64) -> bool,
    stop: &CancellationToken,
) -> PeerAddr {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut p = PartialDownload::open(&dir, &f.manifest).unwrap();
    for i in (0..f.manifest.chunk_count()).filter(|i| keep(*i)) {
        let start = (i * 262_144) as usize;
        let end = start + f.manifest.chunk_len(i) as usize;
        assert!(p.write_chunk(i, &f.data[start..end]).unwrap());
    }
    let library = Arc::new(Library::new());
    // Public: this test is about the transfer, not admission (see tests/admission.rs).
    library.visibility.set_all_public(true);
    library.insert(
        f.manifest.clone(),
        p.part_path().to_owned(),
        p.have().clone(),
    );
    serving(library, stop).await
}

#[tokio::test]
async fn partial_peers_serve_the_chunks_they_have() {
    let f = fixture(4 * 1024 * 1024 + 77);
    let evens = partial_peer(&f, |i| i % 2 == 0, &f.stop).await;
    let odds = partial_peer(&f, |i| i % 2 == 1, &f.stop).await;
    let (report, _out) = leech(
        &f,
        &[evens.clone(), odds.clone()],
        DownloadOptions::default(),
    )
    .await;
    for p in [&evens, &odds] {
        let r = report
            .peers
            .iter()
            .find(|r| r.peer_id == p.peer_id)
            .unwrap();
        assert!(r.bytes > 0 && r.error.is_none(), "{r:?}");
    }
    f.stop.cancel();
}

/// The same file downloaded twice at once into one folder: the second waits for the first and
/// ends with its file; there is one copy, complete.
#[tokio::test]
async fn a_second_download_of_the_same_file_joins_the_first() {
    let f = fixture(4 * 1024 * 1024 + 99);
    let seed = seeder(&f.dir.path().join("video.bin"), &f.stop).await;
    let out = tempfile::tempdir().unwrap();
    let sources = [seed];
    let (a, b) = tokio::join!(
        try_leech(&f, &sources, out.path()),
        try_leech(&f, &sources, out.path())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.path, b.path);
    assert_eq!(std::fs::read(&a.path).unwrap(), *f.data);
    let files: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .collect();
    assert_eq!(files.len(), 1, "one copy: {files:?}");
    assert_eq!(
        a.fetched_chunks + b.fetched_chunks,
        f.manifest.chunk_count()
    );
    f.stop.cancel();
}

/// A download uses the peers found while it runs (the tracker asked again): here the first
/// source has only the even chunks, and the peer with the odd ones arrives later, listed with
/// the first again (which gets no second worker).
#[tokio::test]
async fn peers_found_while_a_download_runs_are_fetched_from_too() {
    let f = fixture(4 * 1024 * 1024 + 5);
    let evens = partial_peer(&f, |i| i % 2 == 0, &f.stop).await;
    let odds = partial_peer(&f, |i| i % 2 == 1, &f.stop).await;
    let (found, more) = tokio::sync::mpsc::channel(1);
    let out = tempfile::tempdir().unwrap();
    let me = Identity::generate().unwrap();
    let run = download_growing(
        &me,
        &f.manifest,
        std::slice::from_ref(&evens),
        Some(more),
        out.path(),
        Arc::new(Library::new()),
        DownloadOptions::default(),
    );
    let later = async {
        found.send(vec![evens.clone(), odds.clone()]).await.unwrap();
        found
    };
    let (report, _found) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(run, later) })
            .await
            .expect("download finished in time");
    let report = report.expect("download succeeded");
    assert_eq!(std::fs::read(&report.path).unwrap(), *f.data);
    assert_eq!(report.peers.len(), 2, "{:?}", report.peers);
    for p in [&evens, &odds] {
        let r = report
            .peers
            .iter()
            .find(|r| r.peer_id == p.peer_id)
            .unwrap();
        assert!(r.bytes > 0, "{r:?}");
    }
    f.stop.cancel();
}

/// Peers that ask a seeder for chunks and never read them hold no turn at sending for long
/// (see `p2p_peer::upload_turns`): with more of them than chunks written at once (even at a
/// fast upload), an honest download from the same seeder still completes.
#[tokio::test]
async fn peers_that_never_read_do_not_hold_up_an_honest_download() {
    let f = fixture(8 * 1024 * 1024 + 99);
    let seed = seeder(&f.dir.path().join("video.bin"), &f.stop).await;
    let chunks = f.manifest.chunk_count() as u32;
    let mut stalled = Vec::new();
    for _ in 0..2 * p2p_peer::upload_turns::SENDERS_FAST {
        let me = Identity::generate().unwrap();
        let stream = TcpStream::connect(seed.addrs[0]).await.unwrap();
        let mut s = session::open(stream, &me, Role::Initiator, None)
            .await
            .unwrap();
        for request_id in 0..64 {
            s.writer.feed(&Frame::Request {
                request_id,
                file_id: f.manifest.id,
                index: request_id % chunks,
            });
        }
        s.writer.flush().await.unwrap();
        // Held open, never read: their socket buffers fill and the seeder's writes block.
        stalled.push(s);
    }
    let (report, _out) = leech(&f, std::slice::from_ref(&seed), DownloadOptions::default()).await;
    assert_eq!(report.peers.len(), 1);
    assert_eq!(report.peers[0].bytes, f.data.len() as u64);
    drop(stalled);
    f.stop.cancel();
}

/// In the endgame a chunk in flight at a peer that is slow to send it is asked of another
/// too; once a copy is written, the requests still out for it are withdrawn (`Cancel`), so
/// the slow peer's upload goes to chunks someone still needs.
#[tokio::test]
async fn endgame_duplicates_are_withdrawn_once_a_copy_is_written() {
    let f = fixture(64 * 256 * 1024 - 7);
    let seed = seeder(&f.dir.path().join("video.bin"), &f.stop).await;
    let (silent, asked) = rogue_counted(&f, Misbehaviour::Silent).await;
    let (report, _out) = leech(&f, &[silent, seed], DownloadOptions::default()).await;
    assert_eq!(report.fetched_chunks, f.manifest.chunk_count());
    let requests = asked.requests.load(Ordering::SeqCst);
    assert!(
        requests > 1,
        "the silent peer was asked for chunks: {requests}"
    );
    // Each withdrawal goes out when its chunk is written; the last chunk's may race with
    // the download's end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while asked.cancels.load(Ordering::SeqCst) + 1 < requests {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {requests} requests withdrawn",
            asked.cancels.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.stop.cancel();
}

/// Between leechers a chunk is asked twice only once its request is late: one that stops
/// answering (its connection open) holds the download up for about twice its usual time per
/// chunk, not for the request timeout, and the other leecher delivers the chunks it sat on.
#[tokio::test]
async fn a_leecher_that_stops_answering_is_overtaken_once_its_chunks_are_late() {
    let f = fixture(32 * 256 * 1024 - 5);
    let delay = Duration::from_millis(20);
    let (stalling, asked) = rogue_counted(
        &f,
        Misbehaviour::Leecher {
            lacks: 0,
            delay,
            stall_after: Some(14),
        },
    )
    .await;
    let (other, _) = rogue_counted(
        &f,
        Misbehaviour::Leecher {
            lacks: 1,
            delay,
            stall_after: None,
        },
    )
    .await;
    let opts = DownloadOptions {
        request_timeout: Duration::from_secs(120),
        stall_timeout: Duration::from_secs(120),
        connections_per_peer: Some(1),
        ..DownloadOptions::default()
    };
    let started = std::time::Instant::now();
    let (report, _out) = leech(&f, &[stalling, other], opts).await;
    let took = started.elapsed();
    assert_eq!(report.fetched_chunks, f.manifest.chunk_count());
    let requests = asked.requests.load(Ordering::SeqCst);
    assert!(
        requests > 8,
        "the stalling leecher sat on chunks: {requests} asked"
    );
    // 32 chunks at 20 ms from one peer take 0.6 s; the timeout would be 120 s.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    f.stop.cancel();
}

/// An uploader skips the chunks a peer withdrew before their turn at sending came, however
/// many frames were queued before the `Cancel`; `Cancel`s for requests it was never sent
/// cost nothing (nothing is kept for them), and the peer is still served.
#[tokio::test]
async fn withdrawn_requests_are_not_sent_and_stray_cancels_change_nothing() {
    let f = fixture(64 * 256 * 1024 - 3);
    let seed = seeder(&f.dir.path().join("video.bin"), &f.stop).await;
    let chunks = f.manifest.chunk_count() as u32;
    let me = Identity::generate().unwrap();
    let stream = TcpStream::connect(seed.addrs[0]).await.unwrap();
    let mut s = session::open(stream, &me, Role::Initiator, None)
        .await
        .unwrap();
    for request_id in 0..100_000 {
        s.writer.feed(&Frame::Cancel {
            request_id: 1_000_000 + request_id,
        });
    }
    // Every chunk asked for, and all but the last withdrawn at once.
    for request_id in 0..chunks {
        s.writer.feed(&Frame::Request {
            request_id,
            file_id: f.manifest.id,
            index: request_id,
        });
    }
    for request_id in 0..chunks - 1 {
        s.writer.feed(&Frame::Cancel { request_id });
    }
    s.writer.flush().await.unwrap();
    let mut withdrawn_sent = 0;
    let last = loop {
        match tokio::time::timeout(Duration::from_secs(30), s.reader.recv())
            .await
            .expect("an answer in time")
            .unwrap()
        {
            Some(Frame::Chunk {
                request_id, data, ..
            }) if request_id == chunks - 1 => break data,
            Some(Frame::Chunk { .. }) => withdrawn_sent += 1,
            Some(_) => {}
            None => panic!("the seeder closed the connection"),
        }
    };
    let at = (chunks as usize - 1) * 256 * 1024;
    assert_eq!(&last[..], &f.data[at..]);
    // Only chunks whose sending had begun before their `Cancel` was read still came.
    assert!(
        withdrawn_sent <= 8,
        "{withdrawn_sent} of {} withdrawn chunks sent",
        chunks - 1
    );
    f.stop.cancel();
}

/// Where each connection to a peer is slow by itself (as a TCP connection under packet loss
/// is, whatever the link), the download opens more to it and keeps them while they make it
/// faster: twice as many, then twice as many again. Every chunk arrives once, intact.
#[tokio::test]
async fn a_peer_whose_every_connection_is_slow_gets_more_of_them() {
    // 800 chunks of 16 KiB, twenty a second per connection: a try of twice as many starts
    // after some 3 s and is judged 3 s later, long before the endgame.
    let f = fixture_chunked(800 * 16_384 - 5, 16_384);
    let paced = Misbehaviour::Paced {
        per_chunk: Duration::from_millis(50),
        one_at_a_time: false,
    };
    let (source, asked) = rogue_counted(&f, paced).await;
    let (report, _out) = leech(&f, &[source], DownloadOptions::default()).await;
    assert_eq!(report.fetched_chunks, f.manifest.chunk_count());
    assert_eq!(report.peers[0].bytes, f.data.len() as u64);
    let start = usize::from(p2p_peer::download::connections_per_peer(1));
    let opened = asked.connections.load(Ordering::SeqCst);
    assert!(
        opened >= 4 * start,
        "twice the {start} connections kept and twice as many again tried: {opened} opened"
    );
    f.stop.cancel();
}

/// Where the peer's upload, not each connection, is the bound, the connections tried stop
/// again and give back what they had asked for: the download completes, every chunk once.
#[tokio::test]
async fn more_connections_that_are_not_faster_stop_and_the_download_completes() {
    // 800 chunks of 16 KiB, some eighty a second over all connections.
    let f = fixture_chunked(800 * 16_384 - 5, 16_384);
    let paced = Misbehaviour::Paced {
        per_chunk: Duration::from_millis(12),
        one_at_a_time: true,
    };
    let (source, asked) = rogue_counted(&f, paced).await;
    let (report, _out) = leech(&f, &[source], DownloadOptions::default()).await;
    assert_eq!(report.fetched_chunks, f.manifest.chunk_count());
    let start = usize::from(p2p_peer::download::connections_per_peer(1));
    // One try of twice as many; a later try would reuse their sessions.
    assert_eq!(asked.connections.load(Ordering::SeqCst), 2 * start);
    // Stopped: they withdrew what they had asked for (a download that completes has nothing
    // out, and the peer reads a withdrawal only after the requests before it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while asked.cancels.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connections tried were never stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.stop.cancel();
}

/// A caller that fixes the connections per peer gets no more, however slow each is.
#[tokio::test]
async fn fixed_connections_per_peer_do_not_grow() {
    let f = fixture_chunked(96 * 16_384, 16_384);
    let paced = Misbehaviour::Paced {
        per_chunk: Duration::from_millis(50),
        one_at_a_time: false,
    };
    let (source, asked) = rogue_counted(&f, paced).await;
    let opts = DownloadOptions {
        connections_per_peer: Some(1),
        ..DownloadOptions::default()
    };
    leech(&f, &[source], opts).await;
    assert_eq!(asked.connections.load(Ordering::SeqCst), 1);
    f.stop.cancel();
}
