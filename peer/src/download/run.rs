//! Running one download: open (or resume) its partial file, start a worker per connection to
//! each source peer (and to the peers that refreshes of the file's peers bring, trying again
//! those whose workers ended, see [`super::retry`]), wait until the file is complete or no peer
//! can carry it on, then complete the file or save what there is for resuming.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use p2p_proto::{Manifest, PeerId};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use super::grow::{GROW_BELOW, Growth, MOST_CONNECTIONS, MOST_LANES, Sample, Step};
use super::lane::{Lane, LaneGroup};
use super::ongoing;
use super::retry::{Ending, Retries};
use super::scheduler::{Order, Scheduler};
use super::state::Shared;
use super::store::save_periodically;
use super::{
    DownloadError, DownloadOptions, DownloadReport, PeerReport, connections_per_peer, worker,
};
use crate::identity::Identity;
use crate::net::PeerAddr;
use crate::storage::{Library, PartialDownload};

/// Source peers found while a download runs: each message lists the file's peers again (the
/// tracker asked again, say); peers the download uses now are skipped, new ones are tried, and
/// those whose workers ended are tried again after a pause (see [`super::retry`]).
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
    let shared = Arc::new(Shared::new(manifest.clone(), sched, partial, library));
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
    let peers = wait(&shared, workers, more, opts.stall_timeout).await;
    let _ = saver.await;
    let path = finish(&shared, opts.dest_dir.as_deref().unwrap_or(data_dir))
        .await
        .map_err(|e| not_admitted(e, &peers))?;
    claim.completed(path.clone()).await;
    tracing::debug!(
        file = %manifest.name,
        fetched_chunks = shared.fetched.load(Ordering::Relaxed),
        wasted_bytes = shared.wasted.load(Ordering::Relaxed),
        "download finished"
    );
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

/// How a worker ended: its report, whether its peer is never to be tried again, and its lane.
type WorkerEnd = (PeerReport, bool, u8);

/// The lanes of a peer's try: what they share, the peer's address, and how many were started.
#[derive(Debug)]
struct Lanes {
    group: LaneGroup,
    addr: PeerAddr,
    started: u8,
}

/// One try of a peer: its workers still running, and what those that ended said.
#[derive(Debug, Default)]
struct Try {
    running: usize,
    /// The try's lanes while it runs: more may be added (see [`super::grow`]).
    group: Option<Lanes>,
    /// The reports of the workers that ended, with their lanes.
    lanes: Vec<(u8, PeerReport)>,
    /// Whether any worker that ended found the peer never to be tried again.
    never: bool,
}

impl Try {
    /// Accounts for one of the try's workers that ended (`None`: it panicked). Once it was the
    /// last, says how the try ended and gives its lanes' merged report (`None` if every
    /// worker panicked), and the try starts afresh.
    fn ended(&mut self, end: Option<WorkerEnd>) -> Option<(Ending, Option<PeerReport>)> {
        self.running = self.running.saturating_sub(1);
        if let Some((report, never, lane)) = end {
            self.never |= never;
            self.lanes.push((lane, report));
        }
        if self.running > 0 {
            return None;
        }
        let mut lanes = std::mem::take(&mut self.lanes);
        let never = std::mem::take(&mut self.never);
        self.group = None;
        // In the order they were started, whatever the order they ended in.
        lanes.sort_by_key(|(lane, _)| *lane);
        let lanes = lanes.into_iter().map(|(_, report)| report).collect();
        let Some(this_try) = merge_lanes(lanes).pop() else {
            return Some((Ending::Never, None));
        };
        let how = if never || this_try.banned {
            Ending::Never
        } else if this_try.bytes > 0 {
            Ending::Delivered
        } else {
            Ending::Fruitless
        };
        Some((how, Some(this_try)))
    }
}

/// The workers of a download: one per connection to each source peer but this node (see
/// [`DownloadOptions::connections_per_peer`]), each peer's main connection first. A peer whose
/// workers all ended is tried again when it is listed again, after a pause ([`Retries`]).
struct Workers<'a> {
    shared: &'a Arc<Shared>,
    identity: &'a Identity,
    opts: &'a DownloadOptions,
    retries: Retries,
    tasks: JoinSet<WorkerEnd>,
    /// The peer of each running worker.
    peer_of: HashMap<tokio::task::Id, PeerId>,
    /// Each peer's current try: its workers running now and what those that ended said.
    tries: HashMap<PeerId, Try>,
    /// One report per peer tried, over all its tries, in the order they were first tried.
    reports: Vec<PeerReport>,
    /// The connections being tried (see [`super::grow`]): their peer and how to stop them.
    trial: Option<(PeerId, Vec<CancellationToken>)>,
    /// Whether a peer's workers started since the last measurement (see [`super::grow`]).
    new_peer: bool,
}

impl<'a> Workers<'a> {
    fn new(shared: &'a Arc<Shared>, identity: &'a Identity, opts: &'a DownloadOptions) -> Self {
        Self {
            shared,
            identity,
            opts,
            retries: Retries::new(identity.peer_id(), Instant::now()),
            tasks: JoinSet::new(),
            peer_of: HashMap::new(),
            tries: HashMap::new(),
            reports: Vec::new(),
            trial: None,
            new_peer: false,
        }
    }

    /// Starts workers for the peers of `sources` that have none, unless they are to wait
    /// before they are tried again (see [`Retries::listed`]).
    fn add(&mut self, sources: &[PeerAddr]) {
        let now = Instant::now();
        let new: Vec<&PeerAddr> = sources
            .iter()
            .filter(|s| self.retries.listed(s, now))
            .collect();
        for peer in new {
            self.start(peer.clone());
        }
    }

    /// Starts the workers of the peers whose pause before another try is over.
    fn start_due(&mut self) {
        for peer in self.retries.due(Instant::now()) {
            self.start(peer);
        }
    }

    /// Starts `peer`'s workers, one per connection.
    fn start(&mut self, peer: PeerAddr) {
        if !self.reports.iter().any(|r| r.peer_id == peer.peer_id) {
            // Its place in the reports, filled in as its tries end.
            self.reports.push(PeerReport::new(peer.peer_id));
        }
        let count = self
            .opts
            .connections_per_peer
            .unwrap_or_else(|| connections_per_peer(self.retries.known()));
        let (group, lanes) = LaneGroup::new(count);
        let started = lanes.len() as u8;
        for lane in lanes {
            self.spawn(peer.clone(), lane);
        }
        let id = peer.peer_id;
        self.tries.entry(id).or_default().group = Some(Lanes {
            group,
            addr: peer,
            started,
        });
        self.new_peer = true;
    }

    /// The peer that may get more connections (see [`super::grow`]): the one delivering most
    /// among those with room for more ([`Workers::room`]).
    fn may_grow(&self) -> Option<PeerId> {
        let left = self.connections_left();
        self.tries
            .keys()
            .filter_map(|peer| {
                let throughput = self.shared.scores.get(peer).throughput.unwrap_or(0.0);
                (self.room(peer, throughput, left) > 0).then_some((*peer, throughput))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(peer, _)| peer)
    }

    /// How many more connections `peer`, delivering `throughput`, may get with `left` more
    /// allowed in all: as many as it has, if it is reached directly and each of them carries
    /// less than [`GROW_BELOW`], within [`MOST_LANES`] to it.
    fn room(&self, peer: &PeerId, throughput: f64, left: usize) -> u8 {
        let Some(lanes) = self.tries.get(peer).and_then(|t| t.group.as_ref()) else {
            return 0;
        };
        let started = lanes.started;
        if !lanes.group.direct() || throughput / f64::from(started) >= GROW_BELOW {
            return 0;
        }
        started
            .min(MOST_LANES.saturating_sub(started))
            .min(u8::try_from(left).unwrap_or(u8::MAX))
    }

    /// The connections a download may still add within [`MOST_CONNECTIONS`], over those
    /// started to the peers being tried now.
    fn connections_left(&self) -> usize {
        let started: usize = self
            .tries
            .values()
            .filter_map(|t| t.group.as_ref())
            .map(|lanes| usize::from(lanes.started))
            .sum();
        MOST_CONNECTIONS.saturating_sub(started)
    }

    /// Starts `more` further connections to `peer`, as a try that [`Workers::back`] undoes
    /// (the try before, if any, was kept).
    fn grow(&mut self, peer: PeerId, more: u8) {
        self.trial = None;
        if more == 0 {
            return;
        }
        let Some(lanes) = self.tries.get_mut(&peer).and_then(|t| t.group.as_mut()) else {
            return;
        };
        let first = lanes.started;
        lanes.started += more;
        let stops: Vec<CancellationToken> = (0..more).map(|_| CancellationToken::new()).collect();
        let new: Vec<Lane> = (first..first + more)
            .zip(&stops)
            .map(|(index, stop)| lanes.group.lane(index, stop.clone()))
            .collect();
        let addr = lanes.addr.clone();
        tracing::debug!(%peer, lanes = first + more, "trying more connections to a peer");
        for lane in new {
            self.spawn(addr.clone(), lane);
        }
        self.trial = Some((peer, stops));
    }

    /// Stops the connections of the try under way (they were not faster).
    fn back(&mut self) {
        let Some((peer, stops)) = self.trial.take() else {
            return;
        };
        for stop in &stops {
            stop.cancel();
        }
        if let Some(lanes) = self.tries.get_mut(&peer).and_then(|t| t.group.as_mut()) {
            lanes.started = lanes.started.saturating_sub(stops.len() as u8);
            tracing::debug!(%peer, lanes = lanes.started, "more connections stopped: not faster, or a new peer came");
        }
    }

    fn spawn(&mut self, peer: PeerAddr, lane: Lane) {
        let (shared, identity) = (self.shared.clone(), self.identity.clone());
        let opts = self.opts.clone();
        let (peer_id, index) = (peer.peer_id, lane.index);
        let task = self.tasks.spawn(async move {
            let mut report = PeerReport::new(peer.peer_id);
            let result = tokio::select! {
                _ = shared.stop.cancelled() => Ok(()),
                r = worker::run(&shared, &identity, &peer, lane, &opts, &mut report) => r,
            };
            let mut never = false;
            if let Err(e) = result {
                report.not_admitted = matches!(e, super::WorkerError::NotAdmitted(_));
                never = matches!(e, super::WorkerError::WrongManifest);
                report.error = Some(e.to_string());
            }
            report.score = shared.scores.get(&peer.peer_id);
            (report, never, index)
        });
        self.peer_of.insert(task.id(), peer_id);
        self.tries.entry(peer_id).or_default().running += 1;
    }

    /// Accounts for a worker that ended; when it was its peer's last, the peer may be tried
    /// again later.
    fn ended(&mut self, joined: Result<(tokio::task::Id, WorkerEnd), JoinError>) {
        let (id, ended) = match joined {
            Ok((id, end)) => (id, Some(end)),
            Err(e) => (e.id(), None),
        };
        let Some(peer) = self.peer_of.remove(&id) else {
            return;
        };
        let Some(tried) = self.tries.get_mut(&peer) else {
            return;
        };
        let Some((how, this_try)) = tried.ended(ended) else {
            return;
        };
        if self.trial.as_ref().is_some_and(|(p, _)| *p == peer) {
            self.trial = None;
        }
        let Some(this_try) = this_try else {
            // Its workers panicked: not tried again.
            self.retries.ended(&peer, how, Instant::now());
            return;
        };
        if let Some(e) = &this_try.error
            && how != Ending::Never
        {
            tracing::debug!(%peer, error = %e, "peer ended; to be tried again when listed again");
        }
        self.retries.ended(&peer, how, Instant::now());
        if let Some(earlier) = self.reports.iter_mut().find(|r| r.peer_id == peer) {
            merge_tries(earlier, this_try);
        }
    }
}

/// Waits until the download is complete or no peer can carry it on, starting workers for the
/// peers `more` brings meanwhile (and trying those whose workers ended again, see
/// [`Workers`]), then stops the rest; returns one report per peer.
///
/// No peer can carry it on once no worker runs and nothing may start one: at once when no
/// refresh of the file's peers is running (no `more`) and no peer waits for another try; else
/// once no chunk has come for [`DownloadOptions::stall_timeout`].
async fn wait(
    shared: &Shared,
    mut workers: Workers<'_>,
    mut more: Option<MoreSources>,
    stall_timeout: Duration,
) -> Vec<PeerReport> {
    let mut fetched = shared.fetched.load(Ordering::Relaxed);
    let mut progress_at = Instant::now();
    let mut growth = Growth::new(u64::from(shared.manifest.chunk_size));
    let mut measure = tokio::time::interval(GROWTH_TICK);
    measure.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let grows = workers.opts.connections_per_peer.is_none();
    loop {
        if shared.sched.lock().complete() {
            break;
        }
        workers.start_due();
        let now_fetched = shared.fetched.load(Ordering::Relaxed);
        if now_fetched != fetched {
            (fetched, progress_at) = (now_fetched, Instant::now());
        }
        let stalled_at = progress_at + stall_timeout;
        let idle = workers.retries.live() == 0;
        if idle {
            let pending = workers.retries.next_due().is_some();
            if (more.is_none() && !pending) || Instant::now() >= stalled_at {
                break;
            }
        }
        // Wakes for the next retry due, and, with no worker running, for the stall deadline.
        let wake = [workers.retries.next_due(), idle.then_some(stalled_at)]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            () = shared.done.notified() => {}
            Some(ended) = workers.tasks.join_next_with_id() => workers.ended(ended),
            found = recv(&mut more) => match found {
                Some(sources) => workers.add(&sources),
                None => more = None,
            },
            () = tokio::time::sleep_until(wake.map_or_else(tokio::time::Instant::now, Into::into)),
                if wake.is_some() => {}
            _ = measure.tick(), if grows => workers.measure(&mut growth),
        }
    }
    shared.stop.cancel();
    while let Some(ended) = workers.tasks.join_next_with_id().await {
        workers.ended(ended);
    }
    workers.reports
}

/// How often a download measures what it receives, to judge more connections by.
const GROWTH_TICK: Duration = Duration::from_millis(250);

impl Workers<'_> {
    /// One measurement for [`Growth`], and the step it says to take.
    fn measure(&mut self, growth: &mut Growth) {
        let peer = match &self.trial {
            Some((peer, _)) => Some(*peer),
            None => self.may_grow(),
        };
        let score = peer.map(|peer| (peer, self.shared.scores.get(&peer)));
        let room = score.as_ref().map_or(0, |(peer, score)| {
            let throughput = score.throughput.unwrap_or(0.0);
            self.room(peer, throughput, self.connections_left())
        });
        let chunk = u64::from(self.shared.manifest.chunk_size);
        let sample = Sample {
            received: self.shared.fetched.load(Ordering::Relaxed) * chunk,
            peer: score.map(|(peer, score)| (peer, score.received)),
            may_grow: room > 0,
            measurable: self.shared.sched.lock().unasked() > 0,
            new_peer: std::mem::take(&mut self.new_peer),
        };
        match growth.tick(Instant::now(), sample) {
            // More to the peer measured (after a try, the same one again; that one was kept).
            Some(Step::More) => {
                if let Some(peer) = peer {
                    self.grow(peer, room);
                }
            }
            Some(Step::Back) => self.back(),
            None => {}
        }
    }
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

/// Adds a later try of a peer to the report of its earlier ones: bytes and bad chunks add up, a
/// ban stands, and the latest try says how it ended.
fn merge_tries(earlier: &mut PeerReport, later: PeerReport) {
    earlier.bytes += later.bytes;
    earlier.bad_chunks += later.bad_chunks;
    if earlier.banned {
        return;
    }
    earlier.banned = later.banned;
    earlier.error = later.error;
    earlier.not_admitted = later.not_admitted;
    earlier.score = later.score;
    earlier.path = later.path.or(earlier.path.take());
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
    let (dest_dir, library, id) = (
        dest_dir.to_owned(),
        shared.library.clone(),
        shared.manifest.id,
    );
    tokio::task::spawn_blocking(move || {
        let p = partial.lock().take().ok_or(DownloadError::Ended)?;
        let completion = p.complete(&dest_dir)?;
        // Peers fetching from the partial file find it at its new path from the moment it
        // moves (see `Library::complete_with`).
        library
            .complete_with(&id, || completion.place())
            .map_err(DownloadError::from)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(peer: PeerId, bytes: u64) -> PeerReport {
        PeerReport {
            bytes,
            ..PeerReport::new(peer)
        }
    }

    #[test]
    fn a_try_that_any_lane_found_never_worth_retrying_is_never_retried() {
        let peer = PeerId([7; 32]);
        for never_lane in [0u8, 1] {
            let mut t = Try {
                running: 2,
                ..Try::default()
            };
            // The lane that saw a wrong manifest ends first or last; the other delivered.
            let (first, last) = if never_lane == 0 { (0, 1) } else { (1, 0) };
            assert!(
                t.ended(Some((report(peer, 0), never_lane == first, first)))
                    .is_none()
            );
            let (how, merged) = t
                .ended(Some((report(peer, 1 << 18), never_lane == last, last)))
                .unwrap();
            assert_eq!(
                how,
                Ending::Never,
                "the wrong manifest was seen on lane {never_lane}"
            );
            assert_eq!(merged.unwrap().bytes, 1 << 18);
        }
    }

    #[test]
    fn a_try_ends_with_its_last_lane_and_the_next_starts_afresh() {
        let peer = PeerId([7; 32]);
        let mut t = Try {
            running: 2,
            ..Try::default()
        };
        assert!(t.ended(Some((report(peer, 0), true, 1))).is_none());
        assert_eq!(t.ended(None).map(|(how, _)| how), Some(Ending::Never));
        // The next try of the same peer: nothing of the last one carries over.
        t.running = 1;
        let (how, merged) = t.ended(Some((report(peer, 5), false, 0))).unwrap();
        assert_eq!(how, Ending::Delivered);
        assert_eq!(merged.unwrap().bytes, 5);
        t.running = 1;
        let (how, _) = t.ended(Some((report(peer, 0), false, 0))).unwrap();
        assert_eq!(how, Ending::Fruitless);
        t.running = 1;
        assert_eq!(
            t.ended(None).map(|(how, r)| (how, r.is_none())),
            Some((Ending::Never, true))
        );
    }
}
