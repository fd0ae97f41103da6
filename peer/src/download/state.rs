//! What the workers of one download share (the scheduler, the partial file, the peers' scores
//! and strikes) and how each stored chunk is accounted: credited to its peer, counted against
//! it when bad, or stopping the whole download when the disk or the manifest fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use p2p_proto::{Manifest, PeerId};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::scheduler::Scheduler;
use super::store::{Partial, StoreOutcome, Stored};
use super::{DownloadError, DownloadOptions, PeerReport, Scoreboard, WorkerError};
use crate::storage::{InlineIo, Library};

pub(super) struct Shared {
    pub(super) manifest: Arc<Manifest>,
    pub(super) sched: Mutex<Scheduler>,
    /// Taken out when the download finishes.
    pub(super) partial: Partial,
    /// What stopped the whole download early (a bad manifest, a failing disk).
    pub(super) fatal: Mutex<Option<DownloadError>>,
    pub(super) scores: Scoreboard,
    pub(super) library: Arc<Library>,
    /// Woken when a chunk's request ends, for the download to check on.
    pub(super) done: Notify,
    /// Cancelled when the download is complete: workers stop and report.
    pub(super) stop: CancellationToken,
    /// Chunks fetched (and new) in this run.
    pub(super) fetched: AtomicU64,
    /// Bytes of chunks received but not used: another copy was written first (the endgame),
    /// or the request had been cancelled.
    pub(super) wasted: AtomicU64,
    /// Bumped when a chunk asked of several peers (the endgame) is written: each worker then
    /// cancels its own requests for chunks the download has (see `Worker::cancel_had`).
    pub(super) cancels: watch::Sender<u64>,
    /// Bad chunks from each peer, over all its connections.
    strikes: Mutex<HashMap<PeerId, u32>>,
    /// Whether verifying and writing chunks runs in place (see [`InlineIo`]).
    pub(super) io: InlineIo,
}

impl Shared {
    pub(super) fn new(
        manifest: Manifest,
        sched: Scheduler,
        partial: Partial,
        library: Arc<Library>,
    ) -> Self {
        Self {
            manifest: Arc::new(manifest),
            sched: Mutex::new(sched),
            partial,
            fatal: Mutex::new(None),
            scores: Scoreboard::default(),
            library,
            done: Notify::new(),
            stop: CancellationToken::new(),
            fetched: AtomicU64::new(0),
            wasted: AtomicU64::new(0),
            cancels: watch::Sender::new(0),
            strikes: Mutex::default(),
            io: InlineIo::default(),
        }
    }

    /// One request for chunk `index` ended (answered, failed or abandoned).
    pub(super) fn release(&self, index: u64) {
        self.sched.lock().release(index);
        self.done.notify_one();
    }

    /// Credits a verified, written chunk to the report's peer.
    pub(super) fn credit(
        &self,
        opts: &DownloadOptions,
        report: &mut PeerReport,
        index: u64,
        len: u64,
    ) {
        report.bytes += len;
        opts.contributions.add(report.peer_id, len);
        let (fresh, duplicated) = {
            let mut s = self.sched.lock();
            (s.got(index), s.requests(index) > 1)
        };
        if fresh {
            self.library.mark_have(&self.manifest.id, index);
            self.fetched.fetch_add(1, Ordering::Relaxed);
        }
        if duplicated {
            self.cancels.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Accounts for a batch of stored chunks (see [`Shared::on_stored`]); the first error ends
    /// the worker, once all are accounted for.
    pub(super) fn on_stored_all(
        &self,
        opts: &DownloadOptions,
        report: &mut PeerReport,
        outcomes: Vec<StoreOutcome>,
    ) -> Result<(), WorkerError> {
        let mut first_error = None;
        for (index, len, outcome) in outcomes {
            if let Err(e) = self.on_stored(opts, report, index, len, outcome) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// What a worker does with a stored chunk's outcome; an error ends the worker.
    fn on_stored(
        &self,
        opts: &DownloadOptions,
        report: &mut PeerReport,
        index: u64,
        len: u64,
        outcome: Result<Stored, WorkerError>,
    ) -> Result<(), WorkerError> {
        match outcome {
            Ok(Stored::Written) => self.credit(opts, report, index, len),
            Ok(Stored::Duplicate) => {
                self.wasted.fetch_add(len, Ordering::Relaxed);
            }
            Ok(Stored::Bad) => {
                self.strike(opts, report);
                self.scores.record_failure(report.peer_id);
            }
            Err(e) => {
                self.fail(&e);
                self.release(index);
                return Err(e);
            }
        }
        self.release(index);
        self.check_ban(opts, report)
    }

    /// A bad chunk from the report's peer. Counted until the peer is banned (`max_strikes`),
    /// not after: chunks of the same batch, or on its other connections, that were on their
    /// way when it was banned change nothing.
    pub(super) fn strike(&self, opts: &DownloadOptions, report: &mut PeerReport) {
        let mut strikes = self.strikes.lock();
        let count = strikes.entry(report.peer_id).or_insert(0);
        if *count < opts.max_strikes {
            *count += 1;
            report.bad_chunks += 1;
        }
    }

    /// Ends the worker once its peer is banned: bad chunks count over all the peer's
    /// connections, so a ban seen by one stops them all.
    pub(super) fn check_ban(
        &self,
        opts: &DownloadOptions,
        report: &mut PeerReport,
    ) -> Result<(), WorkerError> {
        let strikes = self
            .strikes
            .lock()
            .get(&report.peer_id)
            .copied()
            .unwrap_or(0);
        if strikes >= opts.max_strikes {
            report.banned = true;
            return Err(WorkerError::Banned(strikes));
        }
        Ok(())
    }

    /// Stops the whole download for `e` if no peer could do better (the disk, the manifest).
    pub(super) fn fail(&self, e: &WorkerError) {
        let Some(fatal) = e.fatal() else {
            return;
        };
        self.fatal.lock().get_or_insert(fatal);
        self.stop.cancel();
    }
}
