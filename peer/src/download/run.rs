//! Running one download: open (or resume) its partial file, start a worker per connection to
//! each source peer, wait until the file is complete or every worker has given up, then
//! complete the file or save what there is for resuming.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use p2p_proto::Manifest;
use parking_lot::Mutex;
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
    let started = Instant::now();
    let claim = match ongoing::claim(data_dir, manifest.id).await {
        Ok(claim) => claim,
        // Another download of this file here completed meanwhile: its file is the result.
        Err(path) => {
            return Ok(DownloadReport {
                path,
                fetched_chunks: 0,
                peers: Vec::new(),
                elapsed: started.elapsed(),
            });
        }
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
    let workers = if already {
        Vec::new()
    } else {
        spawn_workers(&shared, identity, sources, &opts)
    };
    // The resume state is saved in the background, flushing outside the download's lock.
    let saver = tokio::spawn(save_periodically(
        shared.partial.clone(),
        shared.stop.clone(),
    ));
    let peers = wait(&shared, workers).await;
    let _ = saver.await;
    let path = finish(&shared, data_dir).await?;
    library.completed(&manifest.id, path.clone());
    claim.completed(path.clone());
    Ok(DownloadReport {
        path,
        fetched_chunks: shared.fetched.load(Ordering::Relaxed),
        peers,
        elapsed: started.elapsed(),
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

/// Starts a worker per connection to each source but this node (see
/// [`DownloadOptions::connections_per_peer`]), in order: each peer's main connection first.
fn spawn_workers(
    shared: &Arc<Shared>,
    identity: &Identity,
    sources: &[PeerAddr],
    opts: &DownloadOptions,
) -> Vec<JoinHandle<PeerReport>> {
    let peers: Vec<&PeerAddr> = sources
        .iter()
        .filter(|s| s.peer_id != identity.peer_id())
        .collect();
    let lanes = opts
        .connections_per_peer
        .unwrap_or_else(|| connections_per_peer(peers.len()));
    let mut workers = Vec::new();
    for peer in peers {
        for lane in Lane::for_peer(lanes) {
            let (shared, identity, peer) = (shared.clone(), identity.clone(), peer.clone());
            let opts = opts.clone();
            workers.push(tokio::spawn(async move {
                let mut report = PeerReport::new(peer.peer_id);
                let result = tokio::select! {
                    _ = shared.stop.cancelled() => Ok(()),
                    r = worker::run(&shared, &identity, &peer, lane, &opts, &mut report) => r,
                };
                if let Err(e) = result {
                    report.error = Some(e.to_string());
                }
                report.score = shared.scores.get(&peer.peer_id);
                shared.workers_ended.fetch_add(1, Ordering::SeqCst);
                shared.done.notify_one();
                report
            }));
        }
    }
    workers
}

/// Waits until the download is complete or every worker has given up, then stops the rest;
/// returns one report per peer.
async fn wait(shared: &Shared, workers: Vec<JoinHandle<PeerReport>>) -> Vec<PeerReport> {
    loop {
        let complete = shared.sched.lock().complete();
        if complete || shared.workers_ended.load(Ordering::SeqCst) == workers.len() {
            break;
        }
        shared.done.notified().await;
    }
    shared.stop.cancel();
    let mut reports = Vec::new();
    for w in workers {
        if let Ok(r) = w.await {
            reports.push(r);
        }
    }
    merge_lanes(reports)
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

/// Completes the file into `data_dir` when every chunk is there (its path); else saves the
/// resume state and says why the download stopped.
async fn finish(shared: &Shared, data_dir: &Path) -> Result<PathBuf, DownloadError> {
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
    let dest_dir = data_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let p = partial.lock().take().ok_or(DownloadError::Ended)?;
        p.finish(&dest_dir).map_err(DownloadError::from)
    })
    .await?
}
