//! Parallel downloads: one worker per source peer, each keeping several requests in flight,
//! pulling work from a shared scheduler (rarest chunk first, duplicates only in the endgame).
//! Every chunk is verified before it is written; a peer that sends bad chunks is banned after
//! [`DownloadOptions::max_strikes`]; a peer that vanishes costs only its in-flight chunks.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2p_proto::sha256_lanes;
use p2p_proto::wire::Frame;
use p2p_proto::{Bitfield, Manifest, PeerId};
use tokio::sync::Notify;

use crate::identity::Identity;
use crate::net::connector::{ConnectionPath, Connector};
use crate::net::link::{LinkEvent, Subscription};
use crate::net::secure::SecureError;
use crate::storage::{InlineIo, Library, PartialDownload, PartialError, VerifiedChunk};
use p2p_proto::manifest::ChunkError;

mod score;
use crate::throttle::Throttle;
pub use score::{PeerScore, Scoreboard, Sizing};

/// Where a file can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub peer_id: PeerId,
    pub addrs: Vec<SocketAddr>,
}

/// Tuning of a download.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Most requests in flight per connection to a peer: each gets about the peer's
    /// bandwidth-delay product (see [`Scoreboard`]), up to this. (Splitting it between a
    /// peer's two connections, see [`connections_per_peer`], measured no faster.)
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
    /// Connections per directly reachable peer; `None` chooses (see [`connections_per_peer`]).
    pub connections_per_peer: Option<u8>,
}

/// Connections a download opens to each directly reachable peer when the caller does not say:
/// two while it has fewer peers than this machine has cores, else one.
///
/// A connection's chunks are received and decrypted by its link's reader task and hashed and
/// written by its download worker; those two tasks hand chunks to each other and so tend to
/// share a runtime thread, and one connection keeps about one core busy. With a second
/// connection (its own reader and worker) the other core joins in: on two cores, 1 GiB from a
/// seeder in the same process arrives at 1.3-1.4 GB/s instead of 1.0-1.1 (`bench/transfer`);
/// a third gained nothing there. With as many peers as cores, the cores are busy anyway and
/// further connections only cost (the swarm of eight lost 10-20 % with two each).
pub fn connections_per_peer(peers: usize) -> u8 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if peers < cores { 2 } else { 1 }
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
            pipeline: 32,
            max_strikes: 3,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            throttle: Arc::new(Throttle::new(None)),
            contributions: Arc::new(Contributions::default()),
            connector: Arc::new(Connector::direct()),
            connections_per_peer: None,
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
    /// The manifest contradicts itself; no peer can deliver the file as described.
    #[error("the manifest cannot be downloaded: {0}")]
    BadManifest(ChunkError),
    /// Writing the download failed (a full disk, say); what was written is kept for resuming.
    #[error("cannot write the download: {0}")]
    Disk(String),
    #[error("background task failed")]
    Task,
}

/// What each peer did for a download.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerReport {
    pub peer_id: PeerId,
    /// Verified bytes it contributed (written into the download; endgame duplicates excluded).
    pub bytes: u64,
    pub bad_chunks: u32,
    pub banned: bool,
    /// Why its worker stopped early, if it did.
    pub error: Option<String>,
    /// Its throughput, latency and failures as measured.
    pub score: PeerScore,
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
    /// Requests in flight per chunk.
    in_flight: HashMap<u64, u32>,
    availability: Vec<u32>,
    /// Wanted chunks nobody is fetching as (availability, rank, index): rarest first, then by
    /// [`Order`]. Picking is a walk from the front, not a sort.
    queue: BTreeSet<(u32, u64, u64)>,
    order: Order,
}

/// Chunks this many apart in file order are shuffled among themselves (16 MiB). Within a
/// window each download has its own order, so leechers that start together ask the seeder for
/// different chunks and have something to trade; window by window the file still fills from
/// the front, so a download's writes and an uploader's reads stay close together.
const SHUFFLE_WINDOW: u64 = 64;

/// The tie-break among equally rare chunks: file order, permuted within each
/// [`SHUFFLE_WINDOW`] by `x ↦ (a·x + b) mod window` (a bijection, as `a` is odd).
#[derive(Debug, Clone, Copy)]
struct Order {
    a: u64,
    b: u64,
}

impl Order {
    /// Plain file order.
    #[cfg(test)]
    const FILE: Self = Self { a: 1, b: 0 };

    /// A per-download shuffle.
    fn random() -> Self {
        let mut seed = [0u8; 16];
        // Without randomness every download shuffles alike, which is still correct.
        let _ = getrandom::fill(&mut seed);
        let [a, b] = [&seed[..8], &seed[8..]].map(|h| {
            let mut w = [0u8; 8];
            w.copy_from_slice(h);
            u64::from_le_bytes(w)
        });
        Self { a: a | 1, b }
    }

    fn rank(&self, index: u64) -> u64 {
        let w = SHUFFLE_WINDOW;
        let x = index % w;
        index - x + (self.a.wrapping_mul(x).wrapping_add(self.b) % w)
    }
}

impl Scheduler {
    fn new(have: Bitfield, order: Order) -> Self {
        let queue = (0..have.len())
            .filter(|&i| !have.get(i))
            .map(|i| (0, order.rank(i), i))
            .collect();
        Self {
            availability: vec![0; have.len() as usize],
            have,
            in_flight: HashMap::new(),
            queue,
            order,
        }
    }

    fn key(&self, index: u64) -> (u32, u64, u64) {
        (
            self.availability[index as usize],
            self.order.rank(index),
            index,
        )
    }

    /// Up to `n` chunks `peer_has` for this peer: unrequested ones rarest first; once every
    /// missing chunk is requested somewhere, and if `endgame` allows this peer to, ones in
    /// flight elsewhere, least duplicated first.
    fn pick(
        &mut self,
        peer_has: &Bitfield,
        n: usize,
        skip: &HashMap<u64, ()>,
        endgame: bool,
    ) -> Vec<u64> {
        let mut picked: Vec<u64> = self
            .queue
            .iter()
            .filter(|(_, _, i)| peer_has.get(*i))
            .take(n)
            .map(|(_, _, i)| *i)
            .collect();
        for i in &picked {
            let key = self.key(*i);
            self.queue.remove(&key);
        }
        // The endgame: only once every missing chunk is already being fetched somewhere.
        if picked.is_empty() && self.queue.is_empty() && endgame {
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

    /// One request for `index` ended (answered, failed or abandoned).
    fn release(&mut self, index: u64) {
        if let Some(c) = self.in_flight.get_mut(&index) {
            *c -= 1;
            if *c == 0 {
                self.in_flight.remove(&index);
                if !self.have.get(index) {
                    let key = self.key(index);
                    self.queue.insert(key);
                }
            }
        }
    }

    /// One more connected peer has chunk `index`.
    fn add_source(&mut self, index: u64) {
        let (a, rank, _) = self.key(index);
        if self.queue.remove(&(a, rank, index)) {
            self.queue.insert((a + 1, rank, index));
        }
        self.availability[index as usize] += 1;
    }

    /// Records a verified chunk; whether it was new.
    fn got(&mut self, index: u64) -> bool {
        let fresh = !self.have.get(index);
        self.have.set(index);
        let key = self.key(index);
        self.queue.remove(&key);
        fresh
    }

    fn complete(&self) -> bool {
        self.have.is_complete()
    }
}

struct Shared {
    manifest: Arc<Manifest>,
    sched: Mutex<Scheduler>,
    /// Taken out when the download finishes.
    partial: Arc<Mutex<Option<PartialDownload>>>,
    /// What stopped the whole download early (a bad manifest, a failing disk).
    fatal: Mutex<Option<DownloadError>>,
    scores: Scoreboard,
    library: Arc<Library>,
    done: Notify,
    /// Workers that have ended. Counted before they notify `done`: a worker still returning
    /// its report is not "finished" yet as a task, and its wake-up must not be lost.
    workers_ended: AtomicUsize,
    /// Cancelled when the download is complete: workers stop and report.
    stop: tokio_util::sync::CancellationToken,
    fetched: Mutex<u64>,
    /// Bad chunks from each peer, over all its connections.
    strikes: Mutex<HashMap<PeerId, u32>>,
    /// Whether verifying and writing chunks runs in place (see [`InlineIo`]).
    io: InlineIo,
}

/// How often the resume state is saved while a download runs: at most this much work is
/// fetched again after a crash.
const SAVE_EVERY: Duration = Duration::from_secs(1);

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
    if partial.discarded() > 0 {
        tracing::warn!(
            file = %manifest.id,
            chunks = partial.discarded(),
            "resumed chunks no longer match; fetching them again"
        );
    }
    let have = partial.have().clone();
    library.insert(
        manifest.clone(),
        partial.part_path().to_owned(),
        have.clone(),
    );
    let chunk_count = manifest.chunk_count();
    let shared = Arc::new(Shared {
        manifest: Arc::new(manifest.clone()),
        sched: Mutex::new(Scheduler::new(have, Order::random())),
        partial: Arc::new(Mutex::new(Some(partial))),
        fatal: Mutex::new(None),
        scores: Scoreboard::default(),
        library: library.clone(),
        done: Notify::new(),
        workers_ended: AtomicUsize::new(0),
        stop: tokio_util::sync::CancellationToken::new(),
        fetched: Mutex::new(0),
        strikes: Mutex::default(),
        io: InlineIo::default(),
    });
    let already = shared.sched.lock().map(|s| s.complete()).unwrap_or(false);
    let mut workers = Vec::new();
    if !already {
        let peers: Vec<&Source> = sources
            .iter()
            .filter(|s| s.peer_id != identity.peer_id())
            .collect();
        let lanes = opts
            .connections_per_peer
            .unwrap_or_else(|| connections_per_peer(peers.len()))
            .max(1);
        let work = peers.into_iter().flat_map(|source| {
            // The lanes of one peer share what was asked of it (see `InFlight::asked`).
            let asked = Arc::new(Mutex::new(HashMap::new()));
            let (connected, main) = tokio::sync::watch::channel(None);
            let mut connected = Some(connected);
            (0..lanes).map(move |index| {
                let lane = Lane {
                    index,
                    asked: asked.clone(),
                    connected: if index == 0 { connected.take() } else { None },
                    main: main.clone(),
                };
                (source, lane)
            })
        });
        for (source, lane) in work {
            let (shared, identity, source) = (shared.clone(), identity.clone(), source.clone());
            let opts = opts.clone();
            workers.push(tokio::spawn(async move {
                let mut report = PeerReport {
                    peer_id: source.peer_id,
                    bytes: 0,
                    bad_chunks: 0,
                    banned: false,
                    error: None,
                    score: PeerScore::default(),
                    path: None,
                };
                let result = tokio::select! {
                    _ = shared.stop.cancelled() => Ok(()),
                    r = fetch_from(&shared, &identity, &source, lane, &opts, &mut report) => r,
                };
                if let Err(e) = result {
                    report.error = Some(e.to_string());
                }
                report.score = shared.scores.get(&source.peer_id);
                shared.workers_ended.fetch_add(1, Ordering::SeqCst);
                shared.done.notify_one();
                report
            }));
        }
    }
    // The resume state is saved in the background, flushing outside the download's lock.
    let saver = tokio::spawn(save_periodically(
        shared.partial.clone(),
        shared.stop.clone(),
    ));
    // Wait until complete or every worker has given up.
    let mut reports = Vec::new();
    loop {
        let complete = shared.sched.lock().map(|s| s.complete()).unwrap_or(false);
        if complete || shared.workers_ended.load(Ordering::SeqCst) == workers.len() {
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
    let reports = merge_lanes(reports);
    let _ = saver.await;
    let partial = shared.partial.clone();
    let (complete, missing) = {
        let s = shared.sched.lock().map_err(|_| DownloadError::Task)?;
        (s.complete(), s.have.len() - s.have.count_ones())
    };
    if !complete {
        let p = partial.clone();
        let saved = tokio::task::spawn_blocking(move || match p.lock().as_deref() {
            Ok(Some(p)) => p.save_state().map_err(DownloadError::from),
            _ => Err(DownloadError::Task),
        })
        .await
        .map_err(|_| DownloadError::Task)?;
        if let Some(fatal) = shared.fatal.lock().ok().and_then(|mut f| f.take()) {
            return Err(fatal);
        }
        saved?;
        return Err(DownloadError::Stalled {
            missing,
            total: chunk_count,
        });
    }
    let dest_dir = data_dir.to_owned();
    let path = tokio::task::spawn_blocking(move || {
        let p = partial
            .lock()
            .map_err(|_| DownloadError::Task)?
            .take()
            .ok_or(DownloadError::Task)?;
        p.finish(&dest_dir).map_err(DownloadError::from)
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

/// One of the connections a download has to a peer (see [`connections_per_peer`]).
#[derive(Debug)]
struct Lane {
    /// 0 for the peer's main connection.
    index: u8,
    /// Every chunk asked of this peer over any of its connections: the endgame duplicates a
    /// chunk to another peer, not to the same one over its other connection.
    asked: Arc<Mutex<HashMap<u64, ()>>>,
    /// The main connection's worker tells here whether its connection is direct TCP (dropped
    /// unsent if it could not connect) …
    connected: Option<tokio::sync::watch::Sender<Option<bool>>>,
    /// … and the others wait for that: only a direct peer gets further connections, and a peer
    /// that could not be reached is not tried again by each of them in turn.
    main: tokio::sync::watch::Receiver<Option<bool>>,
}

/// One report per peer from the reports of its connections' workers (see
/// [`DownloadOptions::connections_per_peer`]), which come in the order they were started, a
/// peer's main connection (lane 0) first: bytes and bad chunks add up; the main connection's
/// error and path stand, unless a further connection's worker saw the peer banned.
fn merge_lanes(reports: Vec<PeerReport>) -> Vec<PeerReport> {
    let mut merged: Vec<PeerReport> = Vec::new();
    for r in reports {
        let Some(m) = merged.iter_mut().find(|m| m.peer_id == r.peer_id) else {
            merged.push(r);
            continue;
        };
        m.bytes += r.bytes;
        m.bad_chunks += r.bad_chunks;
        if r.banned && !m.banned {
            m.banned = true;
            m.error = r.error;
        }
    }
    merged
}

/// Saves the resume state every [`SAVE_EVERY`] until `stop` (the final save is the caller's).
async fn save_periodically(
    partial: Arc<Mutex<Option<PartialDownload>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(SAVE_EVERY);
    tick.tick().await;
    let mut saved = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snapshot = match partial.lock().as_deref() {
            Ok(Some(p)) => {
                let written = Some(p.have().count_ones());
                if saved == written {
                    continue; // nothing new since the last save
                }
                saved = written;
                p.snapshot()
            }
            _ => continue,
        };
        let result = tokio::task::spawn_blocking(move || snapshot?.save()).await;
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "cannot save the resume state");
        }
    }
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
    #[error("the manifest cannot be downloaded: {0}")]
    BadManifest(ChunkError),
}

impl Shared {
    /// Stops the whole download for `e` if no peer could do better (the disk, the manifest).
    fn fail(&self, e: &WorkerError) {
        let fatal = match e {
            WorkerError::Disk(why) => DownloadError::Disk(why.clone()),
            WorkerError::BadManifest(why) => DownloadError::BadManifest(why.clone()),
            _ => return,
        };
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert(fatal);
        }
        self.stop.cancel();
    }
}

async fn fetch_from(
    shared: &Shared,
    identity: &Identity,
    source: &Source,
    lane: Lane,
    opts: &DownloadOptions,
    report: &mut PeerReport,
) -> Result<(), WorkerError> {
    let file_id = shared.manifest.id;
    if lane.index > 0 {
        let mut main = lane.main.clone();
        match main.wait_for(Option::is_some).await {
            Ok(direct) if *direct == Some(true) => {}
            _ => return Ok(()),
        }
    }
    let mut sub = None;
    // A pooled link may close between the pool and `subscribe`: then once more, afresh.
    for _ in 0..2 {
        let (connector, timeout) = (&opts.connector, opts.connect_timeout);
        let link = if lane.index == 0 {
            connector.link(source, identity, timeout).await.map(Some)
        } else {
            connector
                .extra_link(source, identity, timeout, lane.index)
                .await
        }
        .map_err(|e| WorkerError::Connect(e.to_string()))?;
        // Only direct peers get further connections.
        let Some(link) = link else { return Ok(()) };
        if let Some(connected) = &lane.connected {
            connected.send_replace(Some(link.path() == ConnectionPath::Direct));
        }
        report.path = Some(link.path());
        sub = link.subscribe(file_id);
        if sub.is_some() {
            break;
        }
    }
    let mut sub = sub.ok_or_else(|| WorkerError::Connect("the connection closed".into()))?;
    // Chunks from plain TCP are stored in place while the disk keeps up; relayed and punched
    // streams keep the blocking pool (see `InlineIo`), and size their pipelines differently.
    let in_place = sub.link().path() == ConnectionPath::Direct;
    let sizing = if in_place {
        Sizing::BandwidthDelay
    } else {
        Sizing::Queue
    };
    sub.send(vec![Frame::ManifestRequest { file_id }])?;

    // The peer's manifest (must be the same content) and which chunks it has.
    let mut peer_has: Option<Bitfield> = None;
    while peer_has.is_none() {
        let frame = match tokio::time::timeout(opts.request_timeout, sub.recv())
            .await
            .map_err(|_| WorkerError::Timeout)?
        {
            LinkEvent::Frame(f) => f,
            LinkEvent::Closed(why) => return Err(closed(why)),
        };
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
    // How many peers have each chunk is counted once per peer, by its main connection (the
    // others hear the same announcements).
    let counts_sources = lane.index == 0;
    if counts_sources && let Ok(mut s) = shared.sched.lock() {
        for i in (0..peer_has.len()).filter(|&i| peer_has.get(i)) {
            s.add_source(i);
        }
    }
    let peer = source.peer_id;

    // The link reads frames on its own task (a frame read is not cancel-safe) and routes this
    // file's to `sub`; verifying and writing chunks runs beside receiving, a few at a time.
    // Chunks that arrived together are checked together (see `store_chunks`).
    let mut stores: tokio::task::JoinSet<Vec<StoreOutcome>> = tokio::task::JoinSet::new();
    // Chunks in `stores`, which count against the pipeline.
    let mut storing = 0usize;
    let mut inflight = InFlight {
        by_id: HashMap::new(),
        asked: lane.asked,
    };
    let result = 'worker: loop {
        // A ban seen by another connection to this peer stops this one too.
        if let Err(e) = check_ban(shared, opts, report) {
            break Err(e);
        }
        // Keep this peer's share of the pipeline full (chunks being stored count against it).
        inflight.top_up(shared, opts, sizing, &sub, &peer_has, storing)?;
        let idle = inflight.by_id.is_empty() && storing == 0;
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
                let Ok(outcomes) = stored else {
                    break Err(WorkerError::Disk("writer task failed".into()));
                };
                storing -= outcomes.len();
                if let Err(e) = on_stored_all(shared, opts, report, outcomes) {
                    break Err(e);
                }
            }
            next = async {
                if inflight.by_id.is_empty() {
                    Ok(sub.recv().await)
                } else {
                    tokio::time::timeout(opts.request_timeout, sub.recv()).await
                }
            }, if storing == 0 || !inflight.by_id.is_empty() => {
                let first = match next {
                    Err(_) => {
                        shared.scores.record_failure(peer);
                        sub.link().close_if_silent(opts.request_timeout);
                        break Err(WorkerError::Timeout);
                    }
                    Ok(event) => event,
                };
                // Frames that arrived while this worker was busy come along, until a batch of
                // chunks is full.
                let mut events = vec![first];
                let mut chunks_seen = usize::from(is_chunk(&events[0]));
                while chunks_seen < sha256_lanes::MAX_LANES && events.len() < DRAIN_MAX {
                    let Some(event) = sub.try_recv() else { break };
                    chunks_seen += usize::from(is_chunk(&event));
                    events.push(event);
                }
                let mut batch: Vec<(u64, bytes::Bytes)> = Vec::new();
                let mut ended = None;
                for event in events {
                    let frame = match event {
                        LinkEvent::Closed(why) => {
                            ended = Some(closed(why));
                            break;
                        }
                        LinkEvent::Frame(f) => f,
                    };
                    match frame {
                        Frame::Chunk { request_id, index, data, .. } => {
                            let Some((wanted, asked_at)) = inflight.by_id.remove(&request_id) else {
                                continue;
                            };
                            if u64::from(index) != wanted {
                                strike(shared, opts, report);
                                shared.scores.record_failure(peer);
                                release(shared, wanted);
                            } else {
                                opts.throttle.consume(data.len()).await;
                                shared.scores.record_chunk(peer, data.len() as u64, asked_at.elapsed());
                                batch.push((wanted, data));
                            }
                        }
                        Frame::Reject { request_id, .. } => {
                            if let Some((index, _)) = inflight.by_id.remove(&request_id) {
                                shared.scores.record_failure(peer);
                                release(shared, index);
                                peer_has = without(peer_has, index);
                            }
                        }
                        Frame::Have { index, .. } => {
                            let index = u64::from(index);
                            if index < peer_has.len() && !peer_has.get(index) {
                                peer_has.set(index);
                                if counts_sources && let Ok(mut s) = shared.sched.lock() {
                                    s.add_source(index);
                                }
                            }
                        }
                        Frame::Bitfield { chunk_count, bits, .. } => {
                            if let Ok(fresh) = Bitfield::from_bytes(bits.to_vec(), u64::from(chunk_count))
                                && fresh.len() == peer_has.len()
                            {
                                if counts_sources && let Ok(mut s) = shared.sched.lock() {
                                    for i in (0..fresh.len()).filter(|&i| fresh.get(i) && !peer_has.get(i)) {
                                        s.add_source(i);
                                    }
                                }
                                peer_has = fresh;
                            }
                        }
                        Frame::Error { message, .. } => {
                            ended = Some(WorkerError::Connect(message));
                            break;
                        }
                        _ => {}
                    }
                }
                // Chunks received before the session ended are still stored. The peer gets its
                // next requests first, so it keeps sending while they are checked.
                if !batch.is_empty() {
                    if ended.is_none()
                        && let Err(e) = inflight.top_up(shared, opts, sizing, &sub, &peer_has, storing)
                    {
                        ended = Some(e.into());
                    }
                    let sizes: Vec<(u64, u64)> =
                        batch.iter().map(|(i, d)| (*i, d.len() as u64)).collect();
                    let job = store_chunks(shared, batch);
                    if in_place && shared.io.inline() {
                        let outcomes = shared.io.timed(job);
                        if let Err(e) = on_stored_all(shared, opts, report, outcomes) {
                            break 'worker Err(e);
                        }
                        // A task woken through a channel runs next on its waker's thread and
                        // cannot be stolen from there, so this worker would stay on the thread
                        // of its link's reader; yielding lets an idle thread take it, and the
                        // connections of a download spread over the cores.
                        tokio::task::yield_now().await;
                    } else {
                        storing += sizes.len();
                        stores.spawn(async move {
                            tokio::task::spawn_blocking(job).await.unwrap_or_else(|_| {
                                sizes
                                    .into_iter()
                                    .map(|(i, len)| {
                                        (i, len, Err(WorkerError::Disk("writer task failed".into())))
                                    })
                                    .collect()
                            })
                        });
                    }
                }
                if let Some(e) = ended {
                    break Err(e);
                }
            }
        }
    };
    drop(sub);
    // Chunks already received are still written before the worker reports.
    while let Some(Ok(outcomes)) = stores.join_next().await {
        for (index, len, outcome) in outcomes {
            match outcome {
                Ok(Stored::Written) => {
                    report.bytes += len;
                    opts.contributions.add(peer, len);
                    stored_ok(shared, index);
                }
                Err(e) => shared.fail(&e),
                Ok(_) => {}
            }
            release(shared, index);
        }
    }
    // Whatever was still asked of this peer goes back to the pool.
    for (_, (index, _)) in inflight.by_id {
        release(shared, index);
    }
    result
}

/// The worker error for a link that ended.
fn closed(why: Option<String>) -> WorkerError {
    why.map_or(WorkerError::Closed, WorkerError::Connect)
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
    let fresh = shared.sched.lock().is_ok_and(|mut s| s.got(index));
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

/// What became of a received chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// Verified and written: this peer's contribution.
    Written,
    /// Verified, but another peer's copy was written first (the endgame) or the download is
    /// over.
    Duplicate,
    /// It does not match its hash.
    Bad,
}

/// What a worker does with a stored chunk's outcome; an error ends the worker.
fn on_stored(
    shared: &Shared,
    opts: &DownloadOptions,
    report: &mut PeerReport,
    index: u64,
    len: u64,
    outcome: Result<Stored, WorkerError>,
) -> Result<(), WorkerError> {
    let peer = report.peer_id;
    match outcome {
        Ok(Stored::Written) => {
            report.bytes += len;
            opts.contributions.add(peer, len);
            stored_ok(shared, index);
        }
        Ok(Stored::Duplicate) => {}
        Ok(Stored::Bad) => {
            strike(shared, opts, report);
            shared.scores.record_failure(peer);
        }
        Err(e) => {
            shared.fail(&e);
            release(shared, index);
            return Err(e);
        }
    }
    release(shared, index);
    check_ban(shared, opts, report)
}

/// Ends the worker once its peer is banned: bad chunks count over all the peer's connections,
/// so a ban seen by one stops them all.
fn check_ban(
    shared: &Shared,
    opts: &DownloadOptions,
    report: &mut PeerReport,
) -> Result<(), WorkerError> {
    let strikes = shared.strikes_of(report.peer_id);
    if strikes >= opts.max_strikes {
        report.banned = true;
        return Err(WorkerError::Banned(strikes));
    }
    Ok(())
}

/// A bad chunk from the report's peer. Counted until the peer is banned (`max_strikes`), not
/// after: chunks of the same batch, or on its other connections, that were on their way when
/// it was banned change nothing.
fn strike(shared: &Shared, opts: &DownloadOptions, report: &mut PeerReport) {
    let Ok(mut strikes) = shared.strikes.lock() else {
        return;
    };
    let count = strikes.entry(report.peer_id).or_insert(0);
    if *count < opts.max_strikes {
        *count += 1;
        report.bad_chunks += 1;
    }
}

impl Shared {
    /// Bad chunks counted against `peer` so far.
    fn strikes_of(&self, peer: PeerId) -> u32 {
        self.strikes
            .lock()
            .map_or(0, |s| s.get(&peer).copied().unwrap_or(0))
    }
}

/// The requests a worker has out with its peer.
#[derive(Debug)]
struct InFlight {
    /// Request id → chunk index and when it was asked for.
    by_id: HashMap<u32, (u64, Instant)>,
    /// Every chunk asked of this peer, over any of its connections (see [`Scheduler::pick`]
    /// and [`Lane::asked`]).
    asked: Arc<Mutex<HashMap<u64, ()>>>,
}

impl InFlight {
    /// Tops this peer's share of the pipeline up to what its score allows; `busy` chunks
    /// received but still being stored count against it.
    fn top_up(
        &mut self,
        shared: &Shared,
        opts: &DownloadOptions,
        sizing: Sizing,
        sub: &Subscription,
        peer_has: &Bitfield,
        busy: usize,
    ) -> Result<(), SecureError> {
        let peer = sub.link().peer();
        let depth =
            shared
                .scores
                .pipeline(&peer, sizing, shared.manifest.chunk_size, opts.pipeline);
        let want = depth.saturating_sub(self.by_id.len() + busy);
        if want == 0 {
            return Ok(());
        }
        let endgame = shared.scores.may_endgame(&peer);
        let picked = match (shared.sched.lock(), self.asked.lock()) {
            (Ok(mut s), Ok(mut asked)) if !s.complete() => {
                let picked = s.pick(peer_has, want, &asked, endgame);
                for &index in &picked {
                    asked.insert(index, ());
                }
                picked
            }
            _ => Vec::new(),
        };
        if picked.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let file_id = shared.manifest.id;
        let mut requests = Vec::with_capacity(picked.len());
        for index in picked {
            let request_id = sub.next_request_id();
            self.by_id.insert(request_id, (index, now));
            requests.push(Frame::Request {
                request_id,
                file_id,
                index: index as u32,
            });
        }
        sub.send(requests)
    }
}

/// A received chunk's index, its length and what became of it.
type StoreOutcome = (u64, u64, Result<Stored, WorkerError>);

/// Frames a worker takes at once when they have already arrived, at most (chunks stop at
/// [`sha256_lanes::MAX_LANES`]).
const DRAIN_MAX: usize = 64;

fn is_chunk(event: &LinkEvent) -> bool {
    matches!(event, LinkEvent::Frame(Frame::Chunk { .. }))
}

/// What a worker does with the outcomes of a batch of stored chunks: each goes through
/// [`on_stored`]; the first error ends the worker, once all are accounted for.
fn on_stored_all(
    shared: &Shared,
    opts: &DownloadOptions,
    report: &mut PeerReport,
    outcomes: Vec<StoreOutcome>,
) -> Result<(), WorkerError> {
    let mut first_error = None;
    for (index, len, outcome) in outcomes {
        if let Err(e) = on_stored(shared, opts, report, index, len, outcome) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The blocking work of storing chunks that arrived together: their hashes are checked
/// together (interleaved, see [`p2p_proto::sha256_lanes`]) before the download's lock is
/// taken, then the good ones are written. Runs where [`Shared::io`] says.
fn store_chunks(
    shared: &Shared,
    chunks: Vec<(u64, bytes::Bytes)>,
) -> impl FnOnce() -> Vec<StoreOutcome> + Send + 'static {
    let (partial, manifest) = (shared.partial.clone(), shared.manifest.clone());
    move || {
        let lens: Vec<u64> = chunks.iter().map(|(_, d)| d.len() as u64).collect();
        VerifiedChunk::check_all(&manifest, chunks)
            .into_iter()
            .zip(lens)
            .map(|((index, checked), len)| {
                let outcome = match checked {
                    Ok(chunk) => write_chunk(&partial, index, &chunk),
                    Err(e @ ChunkError::Inconsistent(_)) => Err(WorkerError::BadManifest(e)),
                    Err(_) => Ok(Stored::Bad),
                };
                (index, len, outcome)
            })
            .collect()
    }
}

/// Writes a verified chunk into the download, unless it is there already or the download is
/// over.
fn write_chunk(
    partial: &Mutex<Option<PartialDownload>>,
    index: u64,
    chunk: &VerifiedChunk,
) -> Result<Stored, WorkerError> {
    let mut guard = partial
        .lock()
        .map_err(|_| WorkerError::Disk("lock poisoned".into()))?;
    let Some(p) = guard.as_mut() else {
        return Ok(Stored::Duplicate); // the download is over
    };
    if p.have().get(index) {
        return Ok(Stored::Duplicate);
    }
    p.write_verified(chunk)
        .map_err(|e| WorkerError::Disk(e.to_string()))?;
    Ok(Stored::Written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(len: u64, set: &[u64]) -> Bitfield {
        let mut b = Bitfield::new(len);
        for &i in set {
            b.set(i);
        }
        b
    }

    #[test]
    fn rarest_chunks_first_then_file_order() {
        let mut s = Scheduler::new(bits(6, &[0]), Order::FILE);
        let everything = Bitfield::full(6);
        for i in 1..6 {
            s.add_source(i); // the seeder
        }
        for i in [1, 2, 4] {
            s.add_source(i); // a partial peer
        }
        let none = HashMap::new();
        assert_eq!(s.pick(&everything, 2, &none, true), vec![3, 5]);
        assert_eq!(s.pick(&bits(6, &[1, 2, 4]), 5, &none, true), vec![1, 2, 4]);
        assert!(
            s.pick(&everything, 5, &none, false).is_empty(),
            "no endgame"
        );
    }

    #[test]
    fn equally_rare_chunks_are_shuffled_within_windows_only() {
        let w = SHUFFLE_WINDOW;
        let order = Order { a: 37, b: 11 };
        for window in 0..3 {
            let mut ranks: Vec<u64> = (window * w..(window + 1) * w)
                .map(|i| order.rank(i))
                .collect();
            assert_ne!(ranks, (window * w..(window + 1) * w).collect::<Vec<_>>());
            ranks.sort();
            assert_eq!(ranks, (window * w..(window + 1) * w).collect::<Vec<_>>());
        }
        // Two downloads starting together ask for different chunks first.
        let len = 3 * w + 5;
        let first = |order: Order| {
            let mut s = Scheduler::new(Bitfield::new(len), order);
            (0..len).for_each(|i| s.add_source(i));
            s.pick(&Bitfield::full(len), 8, &HashMap::new(), false)
        };
        let (x, y) = (first(Order { a: 3, b: 0 }), first(Order { a: 5, b: 7 }));
        assert!(x.iter().all(|i| *i < w) && y.iter().all(|i| *i < w));
        assert_ne!(x, y);
    }

    #[test]
    fn released_chunks_return_and_the_endgame_duplicates_least_requested() {
        let mut s = Scheduler::new(Bitfield::new(3), Order::FILE);
        let all = Bitfield::full(3);
        for i in 0..3 {
            s.add_source(i);
        }
        let none = HashMap::new();
        assert_eq!(s.pick(&all, 3, &none, true), vec![0, 1, 2]);
        s.release(1); // its peer vanished
        assert_eq!(s.pick(&all, 3, &none, true), vec![1]);
        assert!(s.got(0));
        s.release(0);
        assert!(!s.got(0), "already had it");
        // Every missing chunk is in flight: the endgame hands out duplicates, but not chunks
        // this peer was already asked for, and only to peers allowed to play it.
        let mut asked = HashMap::new();
        asked.insert(2, ());
        assert!(s.pick(&all, 3, &asked, false).is_empty());
        assert_eq!(s.pick(&all, 3, &asked, true), vec![1]);
        assert_eq!(s.in_flight.get(&1), Some(&2));
        s.release(1);
        s.release(1);
        assert!(s.got(1) && s.got(2));
        s.release(2);
        assert!(s.complete());
        assert!(s.queue.is_empty());
    }
}
