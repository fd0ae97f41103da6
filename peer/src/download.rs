//! Parallel downloads: one worker per source peer, each keeping several requests in flight,
//! pulling work from a shared scheduler (rarest chunk first, duplicates only in the endgame).
//! Every chunk is verified before it is written; a peer that sends bad chunks is banned after
//! [`DownloadOptions::max_strikes`]; a peer that vanishes costs only its in-flight chunks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2p_proto::wire::{Frame, PROTOCOL_VERSION};
use p2p_proto::{Bitfield, Manifest, PeerId};
use tokio::sync::Notify;

use crate::identity::Identity;
use crate::net::connector::{ConnectionPath, Connector};
use crate::net::secure::{self, Role, SecureError};
use crate::storage::{Library, PartialDownload, PartialError, PrefixHash, chunk_matches};
use crate::throttle::Throttle;
use crate::upload::AGENT;

/// Where a file can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub peer_id: PeerId,
    pub addrs: Vec<SocketAddr>,
}

/// Tuning of a download.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Requests kept in flight per peer.
    pub pipeline: usize,
    /// Bad chunks after which a peer is banned.
    pub max_strikes: u32,
    /// How long to wait for a TCP connection.
    pub connect_timeout: Duration,
    /// How long a peer may stay silent with requests outstanding.
    pub request_timeout: Duration,
    /// The download bandwidth limit shared by all downloads.
    pub throttle: Arc<Throttle>,
    /// Verified bytes per peer so far, for live progress displays.
    pub contributions: Arc<Contributions>,
    /// How peers are reached (direct TCP, then the relay when one is configured).
    pub connector: Arc<Connector>,
}

/// Verified bytes received from each peer during a download, readable while it runs.
#[derive(Debug, Default)]
pub struct Contributions(Mutex<HashMap<PeerId, u64>>);

impl Contributions {
    fn add(&self, peer: PeerId, bytes: u64) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(peer).or_insert(0) += bytes;
        }
    }

    /// Peers and their verified bytes, largest first.
    pub fn snapshot(&self) -> Vec<(PeerId, u64)> {
        let mut v: Vec<(PeerId, u64)> = self
            .0
            .lock()
            .map(|m| m.iter().map(|(p, b)| (*p, *b)).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

impl Default for DownloadOptions {
    fn default() -> Self {
        Self {
            pipeline: 16,
            max_strikes: 3,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            throttle: Arc::new(Throttle::new(None)),
            contributions: Arc::new(Contributions::default()),
            connector: Arc::new(Connector::direct()),
        }
    }
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    #[error(transparent)]
    Partial(#[from] PartialError),
    #[error("no peer could provide {missing} of {total} chunks")]
    Stalled { missing: u64, total: u64 },
    #[error("background task failed")]
    Task,
}

/// What each peer did for a download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReport {
    pub peer_id: PeerId,
    /// Verified bytes received from it.
    pub bytes: u64,
    pub bad_chunks: u32,
    pub banned: bool,
    /// Why its worker stopped early, if it did.
    pub error: Option<String>,
    /// How it was reached, once connected.
    pub path: Option<ConnectionPath>,
}

/// A finished download.
#[derive(Debug, Clone)]
pub struct DownloadReport {
    pub path: PathBuf,
    /// Chunks fetched in this run (not counting those resumed from disk).
    pub fetched_chunks: u64,
    pub peers: Vec<PeerReport>,
    pub elapsed: Duration,
}

/// Which chunks are wanted, which are being fetched, how many peers have each.
#[derive(Debug)]
struct Scheduler {
    have: Bitfield,
    in_flight: HashMap<u64, u32>,
    availability: Vec<u32>,
}

impl Scheduler {
    /// Up to `n` chunks `peer_has` for this peer: unrequested ones rarest first; once every
    /// missing chunk is requested somewhere, ones in flight elsewhere (the endgame), least
    /// duplicated first.
    fn pick(&mut self, peer_has: &Bitfield, n: usize, skip: &HashMap<u64, ()>) -> Vec<u64> {
        let mut fresh: Vec<u64> = (0..self.have.len())
            .filter(|&i| !self.have.get(i) && peer_has.get(i) && !self.in_flight.contains_key(&i))
            .collect();
        fresh.sort_by_key(|&i| self.availability[i as usize]);
        let mut picked: Vec<u64> = fresh.into_iter().take(n).collect();
        // The endgame: only once every missing chunk is already being fetched somewhere.
        let all_requested =
            (0..self.have.len()).all(|i| self.have.get(i) || self.in_flight.contains_key(&i));
        if picked.is_empty() && all_requested {
            let mut dup: Vec<(u32, u64)> = self
                .in_flight
                .iter()
                .filter(|(i, _)| peer_has.get(**i) && !skip.contains_key(i))
                .map(|(i, c)| (*c, *i))
                .collect();
            dup.sort();
            picked = dup.into_iter().take(n).map(|(_, i)| i).collect();
        }
        for i in &picked {
            *self.in_flight.entry(*i).or_insert(0) += 1;
        }
        picked
    }

    fn release(&mut self, index: u64) {
        if let Some(c) = self.in_flight.get_mut(&index) {
            *c -= 1;
            if *c == 0 {
                self.in_flight.remove(&index);
            }
        }
    }

    fn complete(&self) -> bool {
        self.have.is_complete()
    }
}

struct Shared {
    manifest: Manifest,
    sched: Mutex<Scheduler>,
    /// Taken out when the download finishes.
    partial: Arc<Mutex<Option<PartialDownload>>>,
    /// The whole-file hash, computed as chunks arrive.
    prefix: Arc<Mutex<PrefixHash>>,
    library: Arc<Library>,
    done: Notify,
    /// Cancelled when the download is complete: workers stop and report.
    stop: tokio_util::sync::CancellationToken,
    fetched: Mutex<u64>,
}

/// Downloads `manifest` from `sources` into `data_dir` (partial data in `data_dir/.partial`,
/// offered to other peers while it grows). Resumes from earlier partial data.
pub async fn download(
    identity: &Identity,
    manifest: &Manifest,
    sources: &[Source],
    data_dir: &Path,
    library: Arc<Library>,
    opts: DownloadOptions,
) -> Result<DownloadReport, DownloadError> {
    let started = Instant::now();
    let (m, dir) = (manifest.clone(), data_dir.to_owned());
    let partial = tokio::task::spawn_blocking(move || PartialDownload::open(&dir, &m))
        .await
        .map_err(|_| DownloadError::Task)??;
    let have = partial.have().clone();
    library.insert(
        manifest.clone(),
        partial.part_path().to_owned(),
        have.clone(),
    );
    let chunk_count = manifest.chunk_count();
    let shared = Arc::new(Shared {
        manifest: manifest.clone(),
        sched: Mutex::new(Scheduler {
            have,
            in_flight: HashMap::new(),
            availability: vec![0; chunk_count as usize],
        }),
        partial: Arc::new(Mutex::new(Some(partial))),
        prefix: Arc::new(Mutex::new(PrefixHash::default())),
        library: library.clone(),
        done: Notify::new(),
        stop: tokio_util::sync::CancellationToken::new(),
        fetched: Mutex::new(0),
    });
    let already = shared.sched.lock().map(|s| s.complete()).unwrap_or(false);
    let mut workers = Vec::new();
    if !already {
        for source in sources.iter().filter(|s| s.peer_id != identity.peer_id()) {
            let (shared, identity, source) = (shared.clone(), identity.clone(), source.clone());
            let opts = opts.clone();
            workers.push(tokio::spawn(async move {
                let mut report = PeerReport {
                    peer_id: source.peer_id,
                    bytes: 0,
                    bad_chunks: 0,
                    banned: false,
                    error: None,
                    path: None,
                };
                let result = tokio::select! {
                    _ = shared.stop.cancelled() => Ok(()),
                    r = fetch_from(&shared, &identity, &source, &opts, &mut report) => r,
                };
                if let Err(e) = result {
                    report.error = Some(e.to_string());
                }
                shared.done.notify_one();
                report
            }));
        }
    }
    // Wait until complete or every worker has given up.
    let mut reports = Vec::new();
    loop {
        let complete = shared.sched.lock().map(|s| s.complete()).unwrap_or(false);
        if complete || workers.iter().all(|w| w.is_finished()) {
            break;
        }
        shared.done.notified().await;
    }
    shared.stop.cancel();
    for w in workers {
        if let Ok(r) = w.await {
            reports.push(r);
        }
    }
    let partial = shared.partial.clone();
    let (complete, missing) = {
        let s = shared.sched.lock().map_err(|_| DownloadError::Task)?;
        (s.complete(), s.have.len() - s.have.count_ones())
    };
    if !complete {
        let p = partial.clone();
        tokio::task::spawn_blocking(move || match p.lock().as_deref() {
            Ok(Some(p)) => p.save_state().map_err(DownloadError::from),
            _ => Err(DownloadError::Task),
        })
        .await
        .map_err(|_| DownloadError::Task)??;
        return Err(DownloadError::Stalled {
            missing,
            total: chunk_count,
        });
    }
    let dest_dir = data_dir.to_owned();
    let prefix = shared.prefix.clone();
    let path = tokio::task::spawn_blocking(move || {
        let p = partial
            .lock()
            .map_err(|_| DownloadError::Task)?
            .take()
            .ok_or(DownloadError::Task)?;
        let prefix = std::mem::take(&mut *prefix.lock().map_err(|_| DownloadError::Task)?);
        p.finish_with(&dest_dir, prefix)
            .map_err(DownloadError::from)
    })
    .await
    .map_err(|_| DownloadError::Task)??;
    library.completed(&manifest.id, path.clone());
    let fetched = shared.fetched.lock().map(|f| *f).unwrap_or(0);
    Ok(DownloadReport {
        path,
        fetched_chunks: fetched,
        peers: reports,
        elapsed: started.elapsed(),
    })
}

#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error(transparent)]
    Secure(#[from] SecureError),
    #[error("peer does not have the file")]
    NoFile,
    #[error("peer sent a different manifest")]
    WrongManifest,
    #[error("peer went silent")]
    Timeout,
    #[error("banned after {0} bad chunks")]
    Banned(u32),
    #[error("peer closed the connection")]
    Closed,
    #[error("cannot write the download: {0}")]
    Disk(String),
}

async fn fetch_from(
    shared: &Shared,
    identity: &Identity,
    source: &Source,
    opts: &DownloadOptions,
    report: &mut PeerReport,
) -> Result<(), WorkerError> {
    let (stream, path) = opts
        .connector
        .connect(source, opts.connect_timeout)
        .await
        .map_err(|e| WorkerError::Connect(e.to_string()))?;
    report.path = Some(path);
    let (mut rx, mut tx, _) =
        secure::handshake(stream, identity, Role::Initiator, Some(source.peer_id)).await?;
    let file_id = shared.manifest.id;
    tx.feed(&Frame::Hello {
        version: PROTOCOL_VERSION,
        min_version: PROTOCOL_VERSION,
        agent: AGENT.into(),
    });
    tx.feed(&Frame::ManifestRequest { file_id });
    tx.flush().await?;

    // The peer's manifest (must be the same content) and which chunks it has.
    let mut peer_has: Option<Bitfield> = None;
    while peer_has.is_none() {
        let frame = tokio::time::timeout(opts.request_timeout, rx.recv())
            .await
            .map_err(|_| WorkerError::Timeout)??
            .ok_or(WorkerError::Closed)?;
        match frame {
            Frame::Manifest(m) if !m.same_content(&shared.manifest) => {
                return Err(WorkerError::WrongManifest);
            }
            Frame::Bitfield {
                chunk_count, bits, ..
            } => {
                let b = Bitfield::from_bytes(bits.to_vec(), u64::from(chunk_count))
                    .ok()
                    .filter(|b| b.len() == shared.manifest.chunk_count())
                    .ok_or(WorkerError::WrongManifest)?;
                peer_has = Some(b);
            }
            Frame::Reject { .. } => return Err(WorkerError::NoFile),
            Frame::Error { message, .. } => return Err(WorkerError::Connect(message)),
            _ => {}
        }
    }
    let mut peer_has = peer_has.unwrap_or_default();
    if let Ok(mut s) = shared.sched.lock() {
        for i in 0..peer_has.len() {
            if peer_has.get(i) {
                s.availability[i as usize] += 1;
            }
        }
    }

    // Frames are read on their own task (a frame read is not cancel-safe); verifying and
    // writing chunks runs beside receiving, a few at a time.
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel(64);
    let reader = tokio::spawn(async move {
        loop {
            let next = rx.recv().await;
            let last = !matches!(next, Ok(Some(_)));
            if frames_tx.send(next).await.is_err() || last {
                return;
            }
        }
    });
    let mut stores: tokio::task::JoinSet<(u64, u64, Result<bool, WorkerError>)> =
        tokio::task::JoinSet::new();
    let mut outstanding: HashMap<u32, u64> = HashMap::new();
    let mut asked: HashMap<u64, ()> = HashMap::new();
    let mut next_id: u32 = 1;
    let result = loop {
        // Keep the pipeline full (chunks being stored still count against it).
        let want = opts
            .pipeline
            .saturating_sub(outstanding.len() + stores.len());
        if want > 0 {
            let picked = match shared.sched.lock() {
                Ok(mut s) if !s.complete() => s.pick(&peer_has, want, &asked),
                _ => Vec::new(),
            };
            for index in picked {
                outstanding.insert(next_id, index);
                asked.insert(index, ());
                tx.feed(&Frame::Request {
                    request_id: next_id,
                    file_id,
                    index: index as u32,
                });
                next_id = next_id.wrapping_add(1);
            }
            tx.flush().await?;
        }
        let idle = outstanding.is_empty() && stores.is_empty();
        if idle
            && (peer_has.is_complete() || shared.sched.lock().map(|s| s.complete()).unwrap_or(true))
        {
            break Ok(());
        }
        // With nothing asked of a partial peer, wait for it to announce new chunks (`Have`);
        // the download's completion stops this wait.
        tokio::select! {
            _ = shared.stop.cancelled() => break Ok(()),
            Some(stored) = stores.join_next(), if !stores.is_empty() => {
                let Ok((index, len, outcome)) = stored else {
                    break Err(WorkerError::Disk("writer task failed".into()));
                };
                match outcome {
                    Ok(true) => {
                        report.bytes += len;
                        opts.contributions.add(source.peer_id, len);
                        stored_ok(shared, index);
                    }
                    Ok(false) => report.bad_chunks += 1,
                    Err(e) => break Err(e),
                }
                release(shared, index);
                if report.bad_chunks >= opts.max_strikes {
                    report.banned = true;
                    break Err(WorkerError::Banned(report.bad_chunks));
                }
            }
            next = async {
                if outstanding.is_empty() {
                    Ok(frames.recv().await)
                } else {
                    tokio::time::timeout(opts.request_timeout, frames.recv()).await
                }
            }, if stores.is_empty() || !outstanding.is_empty() => {
                let frame = match next {
                    Err(_) => break Err(WorkerError::Timeout),
                    Ok(None) | Ok(Some(Ok(None))) => break Err(WorkerError::Closed),
                    Ok(Some(Err(e))) => break Err(e.into()),
                    Ok(Some(Ok(Some(f)))) => f,
                };
                match frame {
                    Frame::Chunk { request_id, index, data, .. } => {
                        let Some(wanted) = outstanding.remove(&request_id) else { continue };
                        if u64::from(index) != wanted {
                            report.bad_chunks += 1;
                            release(shared, wanted);
                        } else {
                            opts.throttle.consume(data.len()).await;
                            let len = data.len() as u64;
                            let job = store_chunk(
                                shared.partial.clone(),
                                shared.prefix.clone(),
                                shared.manifest.clone(),
                                wanted,
                                data,
                            );
                            stores.spawn(async move { (wanted, len, job.await) });
                        }
                    }
                    Frame::Reject { request_id, .. } => {
                        if let Some(index) = outstanding.remove(&request_id) {
                            release(shared, index);
                            peer_has = without(peer_has, index);
                        }
                    }
                    Frame::Have { index, .. } => {
                        let index = u64::from(index);
                        if index < peer_has.len() && !peer_has.get(index) {
                            peer_has.set(index);
                            if let Ok(mut s) = shared.sched.lock() {
                                s.availability[index as usize] += 1;
                            }
                        }
                    }
                    Frame::Bitfield { chunk_count, bits, .. } => {
                        if let Ok(fresh) = Bitfield::from_bytes(bits.to_vec(), u64::from(chunk_count))
                            && fresh.len() == peer_has.len()
                        {
                            if let Ok(mut s) = shared.sched.lock() {
                                for i in (0..fresh.len()).filter(|&i| fresh.get(i) && !peer_has.get(i)) {
                                    s.availability[i as usize] += 1;
                                }
                            }
                            peer_has = fresh;
                        }
                    }
                    Frame::Error { message, .. } => break Err(WorkerError::Connect(message)),
                    _ => {}
                }
            }
        }
    };
    reader.abort();
    // Chunks already received are still written before the worker reports.
    while let Some(Ok((index, len, outcome))) = stores.join_next().await {
        if let Ok(true) = outcome {
            report.bytes += len;
            opts.contributions.add(source.peer_id, len);
            stored_ok(shared, index);
        }
        release(shared, index);
    }
    // Whatever was still asked of this peer goes back to the pool.
    for (_, index) in outstanding {
        release(shared, index);
    }
    result
}

fn without(mut have: Bitfield, index: u64) -> Bitfield {
    let mut fresh = Bitfield::new(have.len());
    for i in (0..have.len()).filter(|&i| i != index && have.get(i)) {
        fresh.set(i);
    }
    have = fresh;
    have
}

/// Records a verified, written chunk.
fn stored_ok(shared: &Shared, index: u64) {
    let fresh = match shared.sched.lock() {
        Ok(mut s) => {
            let fresh = !s.have.get(index);
            s.have.set(index);
            fresh
        }
        Err(_) => false,
    };
    if fresh {
        shared.library.mark_have(&shared.manifest.id, index);
        if let Ok(mut f) = shared.fetched.lock() {
            *f += 1;
        }
    }
}

fn release(shared: &Shared, index: u64) {
    if let Ok(mut s) = shared.sched.lock() {
        s.release(index);
    }
    shared.done.notify_one();
}

/// Verifies and writes a chunk off the reactor; `Ok(false)` for a bad one. The hash is checked
/// before the download's lock is taken; the chunk then feeds the running whole-file hash. Saves
/// the resume state every 16 chunks.
async fn store_chunk(
    partial: Arc<Mutex<Option<PartialDownload>>>,
    prefix: Arc<Mutex<PrefixHash>>,
    manifest: Manifest,
    index: u64,
    data: bytes::Bytes,
) -> Result<bool, WorkerError> {
    tokio::task::spawn_blocking(move || {
        let disk = |e: PartialError| WorkerError::Disk(e.to_string());
        if !chunk_matches(&manifest, index, &data).map_err(disk)? {
            return Ok(false);
        }
        {
            let mut guard = partial
                .lock()
                .map_err(|_| WorkerError::Disk("lock poisoned".into()))?;
            let Some(p) = guard.as_mut() else {
                return Ok(false);
            };
            if p.have().get(index) {
                return Ok(true); // an endgame duplicate: already written
            }
            p.write_verified(index, &data).map_err(disk)?;
            if p.have().count_ones() % 16 == 0 {
                p.save_state().map_err(disk)?;
            }
        }
        if let Ok(mut prefix) = prefix.lock() {
            prefix.feed(index, data);
        }
        Ok::<_, WorkerError>(true)
    })
    .await
    .map_err(|_| WorkerError::Disk("writer task failed".into()))?
}
