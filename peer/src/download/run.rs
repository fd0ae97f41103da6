//! Running one download: open (or resume) its partial file, start a worker per connection to
//! each source peer, wait until the file is complete or every worker has given up, then
//! complete the file or save what there is for resuming.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use p2p_proto::{Manifest, PeerId};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::lane::Lane;
use super::ongoing;
use super::scheduler::{Order, Scheduler};
use super::state::Shared;
use super::store::save_periodically;
use super::{
    DownloadError, DownloadOptions, DownloadReport, PeerReport, connections_per_peer, worker,
};
use crate::identity::Identity;
use crate::net::PeerAddr;
use crate::storage::{Library, PartialDownload};

/// Source peers found while a download runs: each message lists peers that may be new (the
/// tracker asked again, say); peers the download already uses are skipped.
pub type MoreSources = mpsc::Receiver<Vec<PeerAddr>>;

/// Downloads `manifest` from `sources` into `data_dir` (partial data in `data_dir/.partial`,
/// offered to other peers while it grows). Resumes from earlier partial data.
pub async fn download(
    identity: &Identity,
    manifest: &Manifest,
    sources: &[PeerAddr],
    data_dir: &Path,
    library: Arc<Library>,
    opts: DownloadOptions,
) -> Result<DownloadReport, DownloadError> {
    download_growing(identity, manifest, sources, None, data_dir, library, opts).await
}

/// [`download`], also fetching from the peers that `more` brings while it runs: in a swarm,
/// the leechers that joined after this one started have chunks to offer too.
pub async fn download_growing(
    identity: &Identity,
    manifest: &Manifest,
    sources: &[PeerAddr],
    more: Option<MoreSources>,
    data_dir: &Path,
    library: Arc<Library>,
    opts: DownloadOptions,
) -> Result<DownloadReport, DownloadError> {
    let started = Instant::now();
    let claim = match ongoing::claim(data_dir, manifest).await {
        Ok(claim) => claim,
        // Another download of this file here completed meanwhile: its file is the result.
        Err(ongoing::NotClaimed::Joined(joined)) => {
            tracing::info!(file = %manifest.name, path = %joined.path.display(), "the other download completed the file");
            return Ok(DownloadReport {
                path: joined.path,
                fetched_chunks: 0,
                peers: Vec::new(),
                elapsed: started.elapsed(),
                completed_by: Some(joined.by),
            });
        }
        Err(ongoing::NotClaimed::Lock(e)) => return Err(e.into()),
        Err(ongoing::NotClaimed::Task(e)) => return Err(e.into()),
    };
    let partial = open_partial(manifest, data_dir, &library).await?;
    let sched = Scheduler::new(partial.have().clone(), Order::random());
    let partial = Arc::new(Mutex::new(Some(partial)));
    let shared = Arc::new(Shared::new(
        manifest.clone(),
        sched,
        partial,
        library.clone(),
    ));
    let already = shared.sched.lock().complete();
    let mut workers = Workers::new(&shared, identity, &opts);
    if !already {
        workers.add(sources);
    }
    // The resume state is saved in the background, flushing outside the download's lock.
    let saver = tokio::spawn(save_periodically(
        shared.partial.clone(),
        shared.stop.clone(),
    ));
    let peers = wait(&shared, workers, more).await;
    let _ = saver.await;
    let path = finish(&shared, opts.dest_dir.as_deref().unwrap_or(data_dir))
        .await
        .map_err(|e| not_admitted(e, &peers))?;
    library.completed(&manifest.id, path.clone());
    claim.completed(path.clone()).await;
    Ok(DownloadReport {
        path,
        fetched_chunks: shared.fetched.load(Ordering::Relaxed),
        peers,
        elapsed: started.elapsed(),
        completed_by: None,
    })
}

/// Opens the partial file of `manifest` (resuming what an earlier run wrote) and offers it in
/// the library.
async fn open_partial(
    manifest: &Manifest,
    data_dir: &Path,
    library: &Library,
) -> Result<PartialDownload, DownloadError> {
    let (m, dir) = (manifest.clone(), data_dir.to_owned());
    let partial = tokio::task::spawn_blocking(move || PartialDownload::open(&dir, &m)).await??;
    if partial.discarded() > 0 {
        tracing::warn!(
            file = %manifest.id,
            chunks = partial.discarded(),
            "resumed chunks no longer match; fetching them again"
        );
    }
    library.insert(
        manifest.clone(),
        partial.part_path().to_owned(),
        partial.have().clone(),
    );
    Ok(partial)
}

/// The workers of a download: one per connection to each source peer but this node (see
/// [`DownloadOptions::connections_per_peer`]), each peer's main connection first.
struct Workers<'a> {
    shared: &'a Arc<Shared>,
    identity: &'a Identity,
    opts: &'a DownloadOptions,
    /// Peers that have workers (or are this node).
    known: HashSet<PeerId>,
    handles: Vec<JoinHandle<PeerReport>>,
}

impl<'a> Workers<'a> {
    fn new(shared: &'a Arc<Shared>, identity: &'a Identity, opts: &'a DownloadOptions) -> Self {
        Self {
            shared,
            identity,
            opts,
            known: HashSet::from([identity.peer_id()]),
            handles: Vec::new(),
        }
    }

    /// Starts workers for the peers of `sources` that have none yet.
    fn add(&mut self, sources: &[PeerAddr]) {
        let new: Vec<&PeerAddr> = sources
            .iter()
            .filter(|s| self.known.insert(s.peer_id))
            .collect();
        if new.is_empty() {
            return;
        }
        let lanes = self
            .opts
            .connections_per_peer
            .unwrap_or_else(|| connections_per_peer(self.known.len() - 1));
        for peer in new {
            for lane in Lane::for_peer(lanes) {
                self.spawn(peer.clone(), lane);
            }
        }
    }

    fn spawn(&mut self, peer: PeerAddr, lane: Lane) {
        let (shared, identity) = (self.shared.clone(), self.identity.clone());
        let opts = self.opts.clone();
        self.handles.push(tokio::spawn(async move {
            let mut report = PeerReport::new(peer.peer_id);
            let result = tokio::select! {
                _ = shared.stop.cancelled() => Ok(()),
                r = worker::run(&shared, &identity, &peer, lane, &opts, &mut report) => r,
            };
            if let Err(e) = result {
                report.not_admitted = matches!(e, super::WorkerError::NotAdmitted(_));
                report.error = Some(e.to_string());
            }
            report.score = shared.scores.get(&peer.peer_id);
            shared.workers_ended.fetch_add(1, Ordering::SeqCst);
            shared.done.notify_one();
            report
        }));
    }
}

/// Waits until the download is complete or every worker has given up, starting workers for the
/// new peers `more` brings meanwhile, then stops the rest; returns one report per peer.
async fn wait(
    shared: &Shared,
    mut workers: Workers<'_>,
    mut more: Option<MoreSources>,
) -> Vec<PeerReport> {
    loop {
        let complete = shared.sched.lock().complete();
        if complete || shared.workers_ended.load(Ordering::SeqCst) == workers.handles.len() {
            break;
        }
        tokio::select! {
            () = shared.done.notified() => {}
            found = recv(&mut more) => match found {
                Some(sources) => workers.add(&sources),
                None => more = None,
            },
        }
    }
    shared.stop.cancel();
    let mut reports = Vec::new();
    for w in workers.handles {
        if let Ok(r) = w.await {
            reports.push(r);
        }
    }
    merge_lanes(reports)
}

/// The next message of `more`; never, without one.
async fn recv(more: &mut Option<MoreSources>) -> Option<Vec<PeerAddr>> {
    match more {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
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

/// A stalled download whose peers refused it as not admitted says so, with what the first of
/// them said.
fn not_admitted(e: DownloadError, peers: &[PeerReport]) -> DownloadError {
    let refused = peers.iter().find(|p| p.not_admitted);
    match (e, refused) {
        (DownloadError::Stalled { missing, total }, Some(p)) => DownloadError::NotAdmitted {
            missing,
            total,
            reason: format!(
                "peer {} refused: {}",
                p.peer_id,
                p.error.clone().unwrap_or_default()
            ),
        },
        (e, _) => e,
    }
}

/// Completes the file into `dest_dir` when every chunk is there (its path); else saves the
/// resume state and says why the download stopped.
async fn finish(shared: &Shared, dest_dir: &Path) -> Result<PathBuf, DownloadError> {
    let (complete, missing) = {
        let s = shared.sched.lock();
        (s.complete(), s.missing())
    };
    let partial = shared.partial.clone();
    if !complete {
        let saved = tokio::task::spawn_blocking(move || match partial.lock().as_ref() {
            Some(p) => p.save_state().map_err(DownloadError::from),
            None => Err(DownloadError::Ended),
        })
        .await?;
        if let Some(fatal) = shared.fatal.lock().take() {
            return Err(fatal);
        }
        saved?;
        return Err(DownloadError::Stalled {
            missing,
            total: shared.manifest.chunk_count(),
        });
    }
    let dest_dir = dest_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let p = partial.lock().take().ok_or(DownloadError::Ended)?;
        p.finish(&dest_dir).map_err(DownloadError::from)
    })
    .await?
}
