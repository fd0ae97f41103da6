//! Parallel downloads: one worker per connection to a source peer, each keeping several
//! requests in flight, pulling work from a shared scheduler (rarest chunk first, duplicates
//! only in the endgame). Every chunk is verified before it is written; a peer that sends bad
//! chunks is banned after [`DownloadOptions::max_strikes`]; a peer that vanishes costs only its
//! in-flight chunks.
//!
//! - [`run`]: [`download`] itself: opens the partial file, starts the workers (again, for a
//!   peer listed again after its workers ended), waits for them and completes (or saves the
//!   resume state).
//! - [`worker`]: one connection to one peer: connect → open (manifest, bitfield) → pump
//!   (requests out, chunks in) → drain; [`opening`] holds its first two steps, [`requests`]
//!   the requests it has out, [`lane`] what a peer's connections share, and [`grow`] when a
//!   peer gets more connections (where one alone is slow, as with packet loss).
//! - [`scheduler`]: which chunk to ask for next (rarest first, the endgame).
//! - [`retry`]: which peers are tried, and when one whose workers ended is tried again.
//! - [`score`]: each peer's throughput, latency and failures, and its share of the pipeline.
//! - [`state`]: what the workers of one download share, and how a stored chunk is accounted.
//! - [`store`]: verifying and writing chunks, and saving the resume state.
//! - [`ongoing`]: one download per file and data dir, in this process and across processes
//!   (a lock file); a second one waits for the first.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::PeerId;
use p2p_proto::manifest::ChunkError;
use parking_lot::Mutex;

use crate::admission::HeldAdmissions;
use crate::net::connector::{ConnectError, Connector};
use crate::net::secure::SecureError;
use crate::net::transport::ConnectionPath;
use crate::storage::{LockError, PartialError};
use crate::throttle::Throttle;

pub mod grow;
mod lane;
mod ongoing;
mod opening;
mod requests;
mod retry;
mod run;
mod scheduler;
mod score;
mod state;
mod store;
mod worker;

pub use ongoing::CompletedBy;
pub use run::{MoreSources, download, download_growing};
pub use score::{PeerScore, Scoreboard, Sizing, Source};

/// Tuning of a download.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Most requests in flight per connection to a peer: each gets about the peer's
    /// bandwidth-delay product (see [`Scoreboard`]), up to this. (Each of a peer's connections,
    /// see [`connections_per_peer`], keeps the whole pipeline; `bench/README.md` has the
    /// measurements behind that.)
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
    /// Connections per directly reachable peer; `None` chooses (see [`connections_per_peer`])
    /// and adds more to a peer while that makes the download faster (see [`grow`]).
    pub connections_per_peer: Option<u8>,
    /// The tracker's admissions of this peer to files: the one for the file is sent to each
    /// peer before asking it for the file, and again, renewed, before it expires.
    pub admissions: Arc<HeldAdmissions>,
    /// Where the finished file goes; `None`: the data dir (a folder download puts each file
    /// in its place in the tree).
    pub dest_dir: Option<PathBuf>,
    /// How long a download whose file's peers are listed again while it runs (see
    /// [`download_growing`]) waits without a chunk and without a worker before it gives up as
    /// stalled: peers whose workers ended are tried again when listed again, after a pause of
    /// 1 s doubling to 30 s. Without such a refresh it gives up as soon as no worker is left.
    pub stall_timeout: Duration,
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
            admissions: Arc::default(),
            dest_dir: None,
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// Connections a download opens to each directly reachable peer when the caller does not say:
/// two while it has fewer peers than this machine has cores, else one. More may follow where
/// they make the download faster (see [`grow`]).
///
/// A connection's chunks are received and decrypted by its link's reader task and hashed and
/// written by its download worker; those two tasks hand chunks to each other and so tend to
/// share a runtime thread, and one connection keeps about one core busy. A second connection
/// (its own reader and worker) lets another core join in; with as many peers as cores the
/// cores are busy anyway, and further connections only cost. The measurements are in
/// `bench/README.md` (`bench/transfer`).
pub fn connections_per_peer(peers: usize) -> u8 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if peers < cores { 2 } else { 1 }
}

/// Verified bytes received from each peer during a download, readable while it runs.
#[derive(Debug, Default)]
pub struct Contributions(Mutex<HashMap<PeerId, u64>>);

impl Contributions {
    fn add(&self, peer: PeerId, bytes: u64) {
        *self.0.lock().entry(peer).or_insert(0) += bytes;
    }

    /// Peers and their verified bytes, largest first.
    pub fn snapshot(&self) -> Vec<(PeerId, u64)> {
        let mut v: Vec<(PeerId, u64)> = self.0.lock().iter().map(|(p, b)| (*p, *b)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
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
    /// The file's peers serve it privately and admitted none of this peer's requests: the
    /// tracker did not admit it (or its peers do not trust that tracker). Not the manifest's
    /// fault, so no other manifest variant is tried for it.
    #[error("{missing} of {total} chunks missing: {reason}")]
    NotAdmitted {
        missing: u64,
        total: u64,
        /// What the first refusing peer said.
        reason: String,
    },
    /// The manifest contradicts itself; no peer can deliver the file as described.
    #[error("the manifest cannot be downloaded: {0}")]
    BadManifest(#[source] ChunkError),
    /// Writing the download failed (a full disk, say); what was written is kept for resuming.
    #[error("cannot write the download: {0}")]
    Disk(#[source] Arc<PartialError>),
    /// A background task (disk work, a worker) panicked.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The partial download was gone when it was to be saved or completed.
    #[error("the download has already ended")]
    Ended,
    /// A task storing chunks panicked; what was written is kept for resuming.
    #[error("the task storing chunks failed")]
    StoreTask,
    /// The lock that keeps two processes from downloading the same file at once.
    #[error(transparent)]
    Lock(#[from] LockError),
}

impl DownloadError {
    /// Whether the download failed for its manifest: no peer offering it delivered a chunk
    /// that verifies against it, or it contradicts itself. Another manifest announced under
    /// the same id (the tracker keeps every one) may do better; the disk and the like would
    /// fail another one alike.
    pub fn variant_failed(&self) -> bool {
        matches!(self, Self::Stalled { .. } | Self::BadManifest(_))
    }
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
    /// Whether it refused this peer as not admitted to the file (private).
    pub not_admitted: bool,
    /// Its throughput, latency and failures as measured.
    pub score: PeerScore,
    /// How it was reached, once connected.
    pub path: Option<ConnectionPath>,
}

impl PeerReport {
    fn new(peer_id: PeerId) -> Self {
        Self {
            peer_id,
            bytes: 0,
            bad_chunks: 0,
            banned: false,
            error: None,
            not_admitted: false,
            score: PeerScore::default(),
            path: None,
        }
    }
}

/// A finished download.
#[derive(Debug, Clone)]
pub struct DownloadReport {
    pub path: PathBuf,
    /// Chunks fetched in this run (not counting those resumed from disk).
    pub fetched_chunks: u64,
    pub peers: Vec<PeerReport>,
    pub elapsed: Duration,
    /// Set when another download of the file was under way here and this one waited for it
    /// and ended with its file (see [`ongoing`]).
    pub completed_by: Option<CompletedBy>,
}

/// Why one worker (one connection to one peer) stopped early.
#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("cannot connect: {0}")]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Secure(#[from] SecureError),
    /// The peer's session failed under this worker.
    #[error("the connection failed: {0}")]
    Link(#[source] Arc<SecureError>),
    #[error("peer closed the connection")]
    Closed,
    /// The peer sent an `Error` frame.
    #[error("the peer refused: {0}")]
    Refused(String),
    #[error("peer does not have the file")]
    NoFile,
    /// The file is private there and this peer holds no admission it accepts.
    #[error("{0}")]
    NotAdmitted(String),
    #[error("peer sent a different manifest")]
    WrongManifest,
    #[error("peer went silent")]
    Timeout,
    #[error("banned after {0} bad chunks")]
    Banned(u32),
    #[error("cannot write the download: {0}")]
    Disk(#[source] Arc<PartialError>),
    #[error("the task storing chunks failed")]
    StoreTask,
    #[error("the manifest cannot be downloaded: {0}")]
    BadManifest(#[source] ChunkError),
}

impl WorkerError {
    /// The worker error for a link that ended (with its error, when it failed).
    fn closed(why: Option<Arc<SecureError>>) -> Self {
        why.map_or(Self::Closed, Self::Link)
    }

    /// What stops the whole download, when no peer could do better (the disk, the manifest).
    fn fatal(&self) -> Option<DownloadError> {
        match self {
            Self::Disk(e) => Some(DownloadError::Disk(e.clone())),
            Self::StoreTask => Some(DownloadError::StoreTask),
            Self::BadManifest(e) => Some(DownloadError::BadManifest(e.clone())),
            _ => None,
        }
    }
}
