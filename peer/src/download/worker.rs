//! One connection to one source peer: connect (the pooled session, or a new one), open (ask
//! for the manifest, learn which chunks the peer has), pump (keep the peer's share of the
//! pipeline full, take chunks as they come, store them beside receiving) and drain (store what
//! arrived, give back what was still asked).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use p2p_proto::sha256_lanes;
use p2p_proto::wire::{Frame, RejectCode};
use p2p_proto::{Bitfield, PeerId};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

use super::lane::Lane;
use super::opening::{connect, open};
use super::requests::{InFlight, without};
use super::state::Shared;
use super::store::{StoreOutcome, Stored, store_chunks};
use super::{DownloadOptions, PeerReport, Sizing, WorkerError};
use crate::admission::{RENEW_BEFORE, now_ms};
use crate::identity::Identity;
use crate::net::PeerAddr;
use crate::net::link::{LinkEvent, Subscription};
use crate::net::transport::ConnectionPath;

/// Fetches chunks from `peer` over `lane` until the download completes, the peer has nothing
/// more for it, or something fails; the report says what the peer did.
pub(super) async fn run(
    shared: &Shared,
    identity: &Identity,
    peer: &PeerAddr,
    lane: Lane,
    opts: &DownloadOptions,
    report: &mut PeerReport,
) -> Result<(), WorkerError> {
    // A lane stopped before it asked for anything ends here (nothing to give back).
    let stop = lane.stop.clone();
    let opened = tokio::select! {
        () = stop.cancelled() => return Ok(()),
        opened = connect_and_open(shared, identity, peer, &lane, opts, report) => opened?,
    };
    let Some((sub, peer_has, admission_sent)) = opened else {
        return Ok(()); // only direct peers get further connections
    };
    let mut worker = Worker::new(shared, opts, report, sub, peer_has, lane);
    worker.admission_sent = admission_sent;
    let result = worker.pump().await;
    worker.drain().await;
    result
}

/// The subscription to the file over `lane`, the chunks the peer has and the admission sent;
/// `None` for a further lane that may not connect.
async fn connect_and_open(
    shared: &Shared,
    identity: &Identity,
    peer: &PeerAddr,
    lane: &Lane,
    opts: &DownloadOptions,
    report: &mut PeerReport,
) -> Result<Option<(Subscription, Bitfield, Option<u64>)>, WorkerError> {
    if !lane.may_connect().await {
        return Ok(None);
    }
    let file = shared.manifest.id;
    let Some(mut sub) = connect(identity, peer, lane, opts, report, file).await? else {
        return Ok(None);
    };
    let (peer_has, admission_sent) = open(shared, opts, &mut sub).await?;
    Ok(Some((sub, peer_has, admission_sent)))
}

/// Frames a worker takes at once when they have already arrived, at most (chunks stop at
/// [`sha256_lanes::MAX_LANES`]).
const DRAIN_MAX: usize = 64;

/// A connection's worker once its session is open.
struct Worker<'a> {
    shared: &'a Shared,
    opts: &'a DownloadOptions,
    report: &'a mut PeerReport,
    peer: PeerId,
    sub: Subscription,
    /// The chunks the peer has, as it announced them.
    peer_has: Bitfield,
    /// Whether this connection counts the peer's chunks towards their availability: the main
    /// one does, once per peer (the others hear the same announcements).
    counts_sources: bool,
    sizing: Sizing,
    /// Whether chunks are stored on this task while the disk keeps up: only from plain TCP
    /// (relayed and punched streams keep the blocking pool, see `InlineIo`).
    in_place: bool,
    inflight: InFlight,
    /// Batches of chunks being stored off this task.
    stores: JoinSet<Vec<StoreOutcome>>,
    /// Chunks in `stores`, which count against the pipeline.
    storing: usize,
    /// The expiry of the admission last sent to the peer, if one was.
    admission_sent: Option<u64>,
    /// Changes when an endgame chunk was written (see [`Worker::cancel_had`]).
    cancels: watch::Receiver<u64>,
    /// In the endgame, when a chunk this peer may not duplicate yet becomes late.
    late_at: Option<Instant>,
    /// Cancelled when this connection alone is to end (see [`super::grow`]).
    stop: tokio_util::sync::CancellationToken,
}

/// What woke a worker up.
enum Wake {
    /// The download is over.
    Stop,
    Stored(Result<Vec<StoreOutcome>, JoinError>),
    /// The next event from the link, unless the peer went silent with requests outstanding.
    Received(Result<LinkEvent, tokio::time::error::Elapsed>),
    /// A chunk asked of several peers was written.
    Cancel,
    /// A chunk in flight elsewhere became late: this peer may duplicate it now.
    Late,
}

impl<'a> Worker<'a> {
    fn new(
        shared: &'a Shared,
        opts: &'a DownloadOptions,
        report: &'a mut PeerReport,
        sub: Subscription,
        peer_has: Bitfield,
        lane: Lane,
    ) -> Self {
        let in_place = sub.link().path() == ConnectionPath::Direct;
        let counts_sources = lane.index == 0;
        if counts_sources {
            let mut s = shared.sched.lock();
            for i in (0..peer_has.len()).filter(|&i| peer_has.get(i)) {
                s.add_source(i);
            }
        }
        Self {
            shared,
            opts,
            peer: report.peer_id,
            report,
            sub,
            peer_has,
            counts_sources,
            sizing: if in_place {
                Sizing::BandwidthDelay
            } else {
                Sizing::Queue
            },
            in_place,
            inflight: InFlight {
                by_id: HashMap::new(),
                asked: lane.asked,
            },
            stop: lane.stop,
            stores: JoinSet::new(),
            storing: 0,
            admission_sent: None,
            cancels: shared.cancels.subscribe(),
            late_at: None,
        }
    }

    /// Sends the peer a fresher admission when the one it has expires within
    /// [`RENEW_BEFORE`] and a later one is held (the download's refreshes of the file's peers
    /// bring them).
    fn renew_admission(&mut self) -> Result<(), WorkerError> {
        let Some(sent) = self.admission_sent else {
            return Ok(());
        };
        if now_ms().saturating_add(RENEW_BEFORE.as_millis() as u64) < sent {
            return Ok(());
        }
        match self.opts.admissions.get(&self.shared.manifest.id) {
            Some(fresh) if fresh.expires_at_ms > sent => {
                self.sub.send(vec![Frame::Admission(fresh)])?;
                self.admission_sent = Some(fresh.expires_at_ms);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Requests out, chunks in, until the download or the peer is done. The link reads frames
    /// on its own task (a frame read is not cancel-safe) and routes this file's here; storing
    /// runs beside receiving, a few chunks at a time.
    async fn pump(&mut self) -> Result<(), WorkerError> {
        loop {
            // A ban seen by another connection to this peer stops this one too.
            self.shared.check_ban(self.opts, self.report)?;
            self.renew_admission()?;
            self.top_up()?;
            let idle = self.inflight.by_id.is_empty() && self.storing == 0;
            if idle && (self.peer_has.is_complete() || self.shared.sched.lock().complete()) {
                return Ok(());
            }
            // With nothing asked of a partial peer, this waits for it to announce new chunks
            // (`Have`) or, in the endgame, for a chunk it may duplicate to be late (`late_at`,
            // only ever set for a partial peer); the download's completion stops the wait.
            match self.wait().await {
                Wake::Stop => return Ok(()),
                Wake::Stored(stored) => {
                    let outcomes = stored.map_err(|_| WorkerError::StoreTask)?;
                    self.storing -= outcomes.len();
                    self.shared
                        .on_stored_all(self.opts, self.report, outcomes)?;
                }
                Wake::Received(Err(_)) => {
                    self.shared.scores.record_failure(self.peer);
                    self.sub.link().close_if_silent(self.opts.request_timeout);
                    return Err(WorkerError::Timeout);
                }
                Wake::Received(Ok(first)) => self.received(first).await?,
                Wake::Cancel => self.cancel_had()?,
                Wake::Late => {}
            }
        }
    }

    /// Waits for the download's end, a batch stored, or the link (bounded by the request
    /// timeout while requests are out; not while only stores are pending).
    async fn wait(&mut self) -> Wake {
        let asked = !self.inflight.by_id.is_empty();
        let timeout = self.opts.request_timeout;
        let may_receive = self.storing == 0 || asked;
        let (sub, stores, cancels) = (&mut self.sub, &mut self.stores, &mut self.cancels);
        let late_at = self.late_at.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = self.shared.stop.cancelled() => Wake::Stop,
            _ = self.stop.cancelled() => Wake::Stop,
            _ = tokio::time::sleep_until(late_at.unwrap_or_else(tokio::time::Instant::now)),
                if late_at.is_some() => Wake::Late,
            Some(stored) = stores.join_next(), if !stores.is_empty() => Wake::Stored(stored),
            Ok(()) = cancels.changed(), if asked => Wake::Cancel,
            next = async move {
                if asked {
                    tokio::time::timeout(timeout, sub.recv()).await
                } else {
                    Ok(sub.recv().await)
                }
            }, if may_receive => Wake::Received(next),
        }
    }

    /// Handles `first` and the frames that arrived with it; the chunks among them are stored
    /// as one batch, after the peer is given its next requests (so it keeps sending while they
    /// are checked). Chunks received before the session ended are still stored.
    async fn received(&mut self, first: LinkEvent) -> Result<(), WorkerError> {
        let mut batch = Vec::new();
        let mut ended = None;
        for event in self.gather(first) {
            let handled = match event {
                LinkEvent::Closed(why) => Err(WorkerError::closed(why)),
                LinkEvent::Frame(frame) => self.on_frame(frame, &mut batch).await,
            };
            if let Err(e) = handled {
                ended = Some(e);
                break;
            }
        }
        if !batch.is_empty() {
            if ended.is_none()
                && let Err(e) = self.top_up()
            {
                ended = Some(e);
            }
            self.store(batch).await?;
        }
        ended.map_or(Ok(()), Err)
    }

    /// `first` and the events that arrived while this worker was busy, until a batch of
    /// chunks is full.
    fn gather(&mut self, first: LinkEvent) -> Vec<LinkEvent> {
        let is_chunk = |e: &LinkEvent| matches!(e, LinkEvent::Frame(Frame::Chunk { .. }));
        let mut chunks = usize::from(is_chunk(&first));
        let mut events = vec![first];
        while chunks < sha256_lanes::MAX_LANES && events.len() < DRAIN_MAX {
            let Some(event) = self.sub.try_recv() else {
                break;
            };
            chunks += usize::from(is_chunk(&event));
            events.push(event);
        }
        events
    }

    /// Handles one frame from the peer; a chunk it asked for goes into `batch`.
    async fn on_frame(
        &mut self,
        frame: Frame,
        batch: &mut Vec<(u64, Bytes)>,
    ) -> Result<(), WorkerError> {
        let (shared, peer) = (self.shared, self.peer);
        match frame {
            Frame::Chunk {
                request_id,
                index,
                data,
                ..
            } => {
                let Some((wanted, asked_at)) = self.inflight.by_id.remove(&request_id) else {
                    // Cancelled, or a duplicate.
                    shared
                        .wasted
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    return Ok(());
                };
                if u64::from(index) != wanted {
                    shared.strike(self.opts, self.report);
                    shared.scores.record_failure(peer);
                    shared.release(wanted);
                } else {
                    self.opts.throttle.consume(data.len()).await;
                    let len = data.len() as u64;
                    shared.scores.record_chunk(peer, len, asked_at.elapsed());
                    batch.push((wanted, data));
                }
            }
            Frame::Reject {
                request_id,
                code: RejectCode::NotAdmitted,
                message,
            } => {
                // Not the peer's fault, nor a sign it lacks the chunk: this peer is not
                // admitted (any more). The chunk goes back to the others.
                if let Some((index, _)) = self.inflight.by_id.remove(&request_id) {
                    shared.release(index);
                }
                return Err(WorkerError::NotAdmitted(message));
            }
            Frame::Reject { request_id, .. } => {
                if let Some((index, _)) = self.inflight.by_id.remove(&request_id) {
                    shared.scores.record_failure(peer);
                    shared.release(index);
                    self.peer_has = without(&self.peer_has, index);
                }
            }
            Frame::Have { index, .. } => {
                let index = u64::from(index);
                if index < self.peer_has.len() && !self.peer_has.get(index) {
                    self.peer_has.set(index);
                    if self.counts_sources {
                        shared.sched.lock().add_source(index);
                    }
                }
            }
            Frame::Bitfield {
                chunk_count, bits, ..
            } => self.announced(Bitfield::from_bytes(bits.to_vec(), u64::from(chunk_count)).ok()),
            Frame::Error { message, .. } => return Err(WorkerError::Refused(message)),
            _ => {}
        }
        Ok(())
    }

    /// The peer sent its whole bitfield again (it had too many news to tell one by one).
    fn announced(&mut self, fresh: Option<Bitfield>) {
        let Some(fresh) = fresh.filter(|f| f.len() == self.peer_has.len()) else {
            return;
        };
        if self.counts_sources {
            let mut s = self.shared.sched.lock();
            for i in (0..fresh.len()).filter(|&i| fresh.get(i) && !self.peer_has.get(i)) {
                s.add_source(i);
            }
        }
        self.peer_has = fresh;
    }

    /// Stores a batch of received chunks: on this task while the disk keeps up (plain TCP
    /// only), else on the blocking pool beside receiving.
    async fn store(&mut self, batch: Vec<(u64, Bytes)>) -> Result<(), WorkerError> {
        let sizes: Vec<(u64, u64)> = batch.iter().map(|(i, d)| (*i, d.len() as u64)).collect();
        let job = store_chunks(
            self.shared.manifest.clone(),
            self.shared.partial.clone(),
            batch,
        );
        if self.in_place && self.shared.io.inline() {
            let outcomes = self.shared.io.timed(job);
            self.shared
                .on_stored_all(self.opts, self.report, outcomes)?;
            // A task woken through a channel runs next on its waker's thread and cannot be
            // stolen from there, so this worker would stay on the thread of its link's reader;
            // yielding lets an idle thread take it, and the connections of a download spread
            // over the cores.
            tokio::task::yield_now().await;
        } else {
            self.storing += sizes.len();
            self.stores.spawn(async move {
                tokio::task::spawn_blocking(job).await.unwrap_or_else(|_| {
                    sizes
                        .into_iter()
                        .map(|(i, len)| (i, len, Err(WorkerError::StoreTask)))
                        .collect()
                })
            });
        }
        Ok(())
    }

    /// Withdraws the requests for chunks the download has meanwhile (another peer's copy of
    /// an endgame chunk was written first): the peer skips them if it has not begun sending,
    /// and its upload goes to chunks someone still needs. A chunk that arrives anyway is
    /// dropped as wasted.
    fn cancel_had(&mut self) -> Result<(), WorkerError> {
        let had: Vec<(u32, u64)> = {
            let s = self.shared.sched.lock();
            self.inflight
                .by_id
                .iter()
                .filter(|(_, (index, _))| s.has(*index))
                .map(|(id, (index, _))| (*id, *index))
                .collect()
        };
        if had.is_empty() {
            return Ok(());
        }
        let mut frames = Vec::with_capacity(had.len());
        for (request_id, index) in had {
            self.inflight.by_id.remove(&request_id);
            self.shared.release(index);
            frames.push(Frame::Cancel { request_id });
        }
        Ok(self.sub.send(frames)?)
    }

    /// Tops this peer's share of the pipeline up (chunks being stored count against it).
    fn top_up(&mut self) -> Result<(), WorkerError> {
        let (shared, opts) = (self.shared, self.opts);
        let (sizing, busy) = (self.sizing, self.storing);
        self.late_at =
            self.inflight
                .top_up(shared, opts, sizing, &self.sub, &self.peer_has, busy)?;
        Ok(())
    }

    /// Stores what already arrived (its chunks are still written before the worker reports)
    /// and gives back to the scheduler whatever was still asked of this peer.
    async fn drain(self) {
        let Self {
            shared,
            opts,
            report,
            sub,
            mut stores,
            inflight,
            stop,
            ..
        } = self;
        // A connection stopped alone gives its chunks back to the peer's other connections
        // too: they may ask the peer for them again, also as endgame duplicates.
        if stop.is_cancelled() {
            let mut asked = inflight.asked.lock();
            for (index, _) in inflight.by_id.values() {
                asked.remove(index);
            }
        }
        // The peer is told at once that nothing still asked of it is wanted from here: it skips
        // what it has not begun to send, and its upload goes to someone who still needs it (a
        // download that completed would otherwise still get every chunk it had asked for).
        // Nothing is lost if it cannot be told: the link is closing then.
        let cancels: Vec<Frame> = inflight
            .by_id
            .keys()
            .map(|&request_id| Frame::Cancel { request_id })
            .collect();
        if !cancels.is_empty() {
            let _ = sub.send(cancels);
        }
        // Unsubscribed first, so the link's reader never waits for this worker.
        drop(sub);
        while let Some(Ok(outcomes)) = stores.join_next().await {
            for (index, len, outcome) in outcomes {
                match outcome {
                    Ok(Stored::Written) => shared.credit(opts, report, index, len),
                    Err(e) => shared.fail(&e),
                    Ok(_) => {}
                }
                shared.release(index);
            }
        }
        for (_, (index, _)) in inflight.by_id {
            shared.release(index);
        }
    }
}
