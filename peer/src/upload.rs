//! Serving chunks: the per-connection loop that answers manifest and chunk requests from the
//! [`Library`], for every session the acceptor ([`crate::net::accept`]) opens.
//!
//! A public file is served to anyone; a private one (the default) only to a peer that sent an
//! `Admission` for it signed by a tracker this peer pinned ([`TrackerKeys`]), naming the file
//! and the peer id the handshake proved, not expired. Others get `Reject` code 5 (not
//! admitted) with the reason, whether or not the file is here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;

use p2p_proto::admission::Admission;
use p2p_proto::wire::{self, Frame, PROTOCOL_VERSION, RejectCode};
use p2p_proto::{FileId, PeerId};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::admission::{TrackerKeys, now_ms};
use crate::net::accept::Serve;
use crate::net::secure::{Outbox, SecureError, SecureReader, SecureWriter};
use crate::net::session::{Session, speaks_our_version};
use crate::net::transport::ConnectionPath;
use crate::storage::{ChunkBuf, Library, LibraryError};
use crate::throttle::Throttle;
use crate::upload_turns::{Connected, Turns};

/// Answers the sessions other peers open to us (see [`crate::net::accept::Acceptor`]) from
/// the library, within the upload limit.
#[derive(Debug)]
pub struct Uploader {
    library: Arc<Library>,
    throttle: Arc<Throttle>,
    trust: Arc<TrackerKeys>,
    /// Whose chunk is written next, across all connections.
    turns: Arc<Turns>,
}

impl Uploader {
    /// Serves `library`'s public files to anyone; its private files to nobody until
    /// [`Uploader::with_trust`] says whose admissions count.
    pub fn new(library: Arc<Library>, throttle: Arc<Throttle>) -> Self {
        let restarts_after_idle = crate::net::accept::tcp_restarts_after_idle();
        tracing::debug!(restarts_after_idle, "TCP restarts idle connections");
        Self {
            library,
            throttle,
            trust: Arc::default(),
            turns: Arc::new(Turns::new(restarts_after_idle)),
        }
    }

    /// Serves private files to peers that hold an admission signed by one of `trust`'s keys.
    pub fn with_trust(mut self, trust: Arc<TrackerKeys>) -> Self {
        self.trust = trust;
        self
    }
}

impl Serve for Uploader {
    /// Chunk reads run on the connection's task while the disk keeps up only over plain TCP
    /// (see [`crate::storage::InlineIo`] for why relayed and hole-punched streams do not).
    async fn serve(&self, session: Session, path: ConnectionPath) -> Result<(), SecureError> {
        let in_place = path == ConnectionPath::Direct;
        let gate = Gate::new(&self.library, &self.trust, session.remote);
        let connected = self.turns.connect(session.remote);
        serve_connection(
            session.reader,
            session.writer,
            gate,
            &self.throttle,
            &connected,
            in_place,
        )
        .await
    }
}

/// Chunk reads (and their hash checks) queued per connection. They run in place while the
/// disk keeps up (see [`crate::storage::InlineIo`]); on a slow disk they go to the blocking
/// pool, where this many overlap with encrypting and sending.
const READ_AHEAD: usize = 4;

/// Frames read from the peer and waiting for the serve loop.
const FRAMES_QUEUED: usize = 64;

/// How long announcements of new chunks (`Have`) wait for company: they go out with the next
/// frame sent or after this. A leecher writing hundreds of chunks a second then tells each of
/// its peers in a few messages, not one message (and one wake-up at the other end) per chunk.
const HAVE_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Files one connection may hold admissions for at once (an admission is tracker-signed, so
/// only a peer the tracker admitted to this many files reaches it).
const MAX_ADMITTED: usize = 256;
/// Admissions refused on one connection after which further ones are not checked (each check
/// of a pinned key's signature costs some 50 µs of CPU; a peer sending forgeries gets that much
/// of it, not more).
const MAX_REFUSED_ADMISSIONS: u32 = 64;

/// Which files one connection's peer may fetch: the public ones, and the private ones it sent
/// a valid admission for.
pub struct Gate<'a> {
    library: &'a Library,
    trust: &'a TrackerKeys,
    /// The peer at the other end, as the handshake proved it.
    remote: PeerId,
    /// Files admitted, until when (the admission's expiry plus the allowed clock skew).
    admitted: HashMap<FileId, u64>,
    /// Why the last admission sent for a file was refused, to tell the peer.
    refused: HashMap<FileId, String>,
    /// Admissions refused on this connection so far.
    refusals: u32,
}

impl<'a> Gate<'a> {
    pub fn new(library: &'a Library, trust: &'a TrackerKeys, remote: PeerId) -> Self {
        Self {
            library,
            trust,
            remote,
            admitted: HashMap::new(),
            refused: HashMap::new(),
            refusals: 0,
        }
    }

    /// Takes an admission the peer sent: kept when valid, else the reason is kept.
    fn present(&mut self, admission: &Admission) {
        let file = admission.file_id;
        if self.refusals >= MAX_REFUSED_ADMISSIONS {
            if self.refused.len() < MAX_ADMITTED {
                self.refused
                    .insert(file, "too many bad admissions on this connection".into());
            }
            return;
        }
        match self.trust.check(admission, &file, &self.remote) {
            Ok(()) => {
                if self.admitted.len() >= MAX_ADMITTED && !self.admitted.contains_key(&file) {
                    let now = now_ms();
                    self.admitted.retain(|_, until| *until > now);
                }
                if self.admitted.len() < MAX_ADMITTED || self.admitted.contains_key(&file) {
                    let until = admission
                        .expires_at_ms
                        .saturating_add(p2p_proto::admission::CLOCK_SKEW_MS);
                    let known = self.admitted.entry(file).or_insert(until);
                    *known = (*known).max(until);
                    self.refused.remove(&file);
                }
            }
            Err(e) => {
                self.refusals += 1;
                tracing::debug!(peer = %self.remote, %file, error = %e, "admission refused");
                if self.refused.len() < MAX_ADMITTED || self.refused.contains_key(&file) {
                    self.refused.insert(file, e.to_string());
                }
            }
        }
    }

    /// `None` when the peer may fetch `file`; else the `Reject` message saying why not.
    fn refusal(&self, file: &FileId) -> Option<String> {
        if self.library.is_public(file)
            || self
                .admitted
                .get(file)
                .is_some_and(|until| *until > now_ms())
        {
            return None;
        }
        let why = match (self.refused.get(file), self.admitted.contains_key(file)) {
            (Some(why), _) => why.clone(),
            (None, true) => {
                "the admission expired; ask the tracker for the file's peers again".into()
            }
            (None, false) => "no admission sent".into(),
        };
        Some(format!(
            "not admitted to {file}: {why} (a private file is served to peers the tracker admitted)"
        ))
    }
}

/// Answers one peer, whose session is open (our `Hello` sent), until it disconnects. Frames
/// are read on their own task (a frame read is not cancel-safe), chunk reads run ahead of
/// sending, and answers go out in request order, each chunk in its turn among the connections
/// of `connected`'s uploader. With `in_place`, chunk reads run on this task while the disk
/// keeps up.
pub async fn serve_connection<R, W>(
    rx: SecureReader<R>,
    tx: SecureWriter<W>,
    gate: Gate<'_>,
    throttle: &Throttle,
    connected: &Connected,
    in_place: bool,
) -> Result<(), SecureError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let (frames_tx, frames) = mpsc::channel(FRAMES_QUEUED);
    let withdrawn = Arc::new(Withdrawn::default());
    let reader = tokio::spawn(read_frames(rx, frames_tx, withdrawn.clone()));
    let answering = Answering {
        withdrawn,
        tx,
        library: gate.library,
        gate,
        throttle,
        connected,
        outboxes: Vec::new(),
        interested: HashSet::new(),
        haves_due: None,
    };
    let result = answering.run(frames, in_place).await;
    reader.abort();
    result
}

/// The chunk requests of one connection not answered yet (queued, read, or waiting for a turn
/// at sending), and which of those the peer withdrew (`Cancel`, sent in the endgame once
/// another peer's copy arrived): a withdrawn chunk is skipped unless its sending has begun,
/// so this upload goes to chunks that someone still needs. The frame reader records both as
/// it reads them, so a `Cancel` counts at once, however many frames wait before it. Holds at
/// most [`FRAMES_QUEUED`] + [`READ_AHEAD`] + 2 requests: the reader stops while that many
/// wait.
#[derive(Debug, Default)]
struct Withdrawn {
    /// Request id → whether it was withdrawn.
    answering: Mutex<HashMap<u32, bool>>,
    changed: Notify,
}

impl Withdrawn {
    fn asked(&self, request_id: u32) {
        self.answering.lock().insert(request_id, false);
    }

    /// The peer withdrew `request_id`; ignored unless it is waiting for its answer.
    fn withdraw(&self, request_id: u32) {
        if let Some(withdrawn) = self.answering.lock().get_mut(&request_id) {
            *withdrawn = true;
            self.changed.notify_waiters();
        }
    }

    /// Done with `request_id`: whether it was withdrawn.
    fn done(&self, request_id: u32) -> bool {
        self.answering.lock().remove(&request_id).unwrap_or(false)
    }

    fn is_withdrawn(&self, request_id: u32) -> bool {
        self.answering.lock().get(&request_id) == Some(&true)
    }

    /// Resolves once `request_id` is withdrawn.
    async fn withdrawal(&self, request_id: u32) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_withdrawn(request_id) {
                return;
            }
            changed.await;
        }
    }
}

/// One peer's connection as its serve loop sees it.
struct Answering<'a, W> {
    tx: SecureWriter<W>,
    /// Its requests being answered, and which the peer withdrew.
    withdrawn: Arc<Withdrawn>,
    library: &'a Library,
    gate: Gate<'a>,
    throttle: &'a Throttle,
    /// This connection among the uploader's others, for turns at sending.
    connected: &'a Connected,
    /// Send buffers of answered chunks, for the next ones (at most [`READ_AHEAD`] are in use).
    outboxes: Vec<Outbox>,
    /// Files this peer asked about: it hears of our new chunks of them as they arrive.
    interested: HashSet<FileId>,
    /// When the `Have`s fed since the last write must go out.
    haves_due: Option<Instant>,
}

/// What a frame from the peer asks of the serve loop.
enum Step {
    Continue,
    /// The peer is leaving (or speaks another version).
    Stop,
    /// Read this chunk (ahead of sending).
    Read {
        request_id: u32,
        file_id: FileId,
        index: u32,
    },
}

impl<W: AsyncWrite + Unpin> Answering<'_, W> {
    /// Serves the frames that arrive on `frames` until the peer leaves.
    async fn run(
        mut self,
        mut frames: mpsc::Receiver<Result<Frame, SecureError>>,
        in_place: bool,
    ) -> Result<(), SecureError> {
        let library = self.library;
        let mut reads = FuturesOrdered::new();
        let mut haves = library.subscribe();
        loop {
            tokio::select! {
                incoming = frames.recv(), if reads.len() < READ_AHEAD => {
                    let frame = match incoming {
                        Some(frame) => frame?,
                        None => return Ok(()),
                    };
                    match self.on_frame(frame).await? {
                        Step::Continue => {}
                        Step::Stop => return Ok(()),
                        // Withdrawn while it waited in the queue: not even read.
                        Step::Read { request_id, .. } if self.withdrawn.is_withdrawn(request_id) => {
                            self.withdrawn.done(request_id);
                        }
                        Step::Read { request_id, file_id, index } => {
                            let outbox = self.outboxes.pop().unwrap_or_default();
                            reads.push_back(answer(library, request_id, file_id, index, outbox, in_place));
                        }
                    }
                }
                have = haves.recv(), if !self.interested.is_empty() => {
                    self.on_have(have, &mut haves).await?;
                }
                // Any write sends the queued `Have`s too; this one is for when nothing else went.
                _ = tokio::time::sleep_until(self.haves_due.unwrap_or_else(Instant::now)),
                    if self.haves_due.is_some() => {
                    self.haves_due = None;
                    self.tx.flush().await?;
                }
                Some(reply) = reads.next(), if !reads.is_empty() => self.send(reply).await?,
            }
        }
    }

    /// Handles one frame from the peer.
    async fn on_frame(&mut self, frame: Frame) -> Result<Step, SecureError> {
        match frame {
            Frame::Hello {
                version,
                min_version,
                ..
            } if !speaks_our_version(version, min_version) => {
                self.tx
                    .send(&Frame::Error {
                        code: 1,
                        message: format!("protocol version {PROTOCOL_VERSION} only"),
                    })
                    .await?;
                return Ok(Step::Stop);
            }
            Frame::Admission(admission) => self.gate.present(&admission),
            Frame::ManifestRequest { file_id } => {
                if let Some(message) = self.gate.refusal(&file_id) {
                    self.tx
                        .send(&Frame::Reject {
                            request_id: 0,
                            code: RejectCode::NotAdmitted,
                            message,
                        })
                        .await?;
                    return Ok(Step::Continue);
                }
                self.interested.insert(file_id);
                for frame in &manifest_reply(self.library, file_id) {
                    self.tx.feed(frame);
                }
                self.tx.flush().await?;
            }
            Frame::Request {
                request_id,
                file_id,
                index,
            } => {
                if let Some(message) = self.gate.refusal(&file_id) {
                    self.withdrawn.done(request_id);
                    self.tx
                        .send(&Frame::Reject {
                            request_id,
                            code: RejectCode::NotAdmitted,
                            message,
                        })
                        .await?;
                    return Ok(Step::Continue);
                }
                return Ok(Step::Read {
                    request_id,
                    file_id,
                    index,
                });
            }
            Frame::Error { message, .. } => {
                tracing::debug!(%message, "peer reported an error");
                return Ok(Step::Stop);
            }
            // The other frames carry nothing an uploader needs (the frame reader took note of
            // `Cancel`s as it read them).
            _ => {}
        }
        Ok(Step::Continue)
    }

    /// Tells the peer of new chunks of the files it asked about: queued with whatever else is
    /// waiting (see [`HAVE_DELAY`]), or, when there were too many to tell one by one, as the
    /// whole picture again.
    async fn on_have(
        &mut self,
        have: Result<(FileId, u64), RecvError>,
        haves: &mut broadcast::Receiver<(FileId, u64)>,
    ) -> Result<(), SecureError> {
        match have {
            Ok(first) => {
                let mut next = Some(first);
                let mut queued = 0;
                while let Some((file_id, index)) = next.take() {
                    if self.interested.contains(&file_id) {
                        let index = index as u32;
                        self.tx.feed(&Frame::Have { file_id, index });
                        queued += 1;
                    }
                    if queued < 1024 {
                        next = haves.try_recv().ok();
                    }
                }
                if queued > 0 && self.haves_due.is_none() {
                    self.haves_due = Some(Instant::now() + HAVE_DELAY);
                }
            }
            Err(RecvError::Lagged(_)) => {
                for file_id in &self.interested {
                    for frame in manifest_reply(self.library, *file_id).into_iter().skip(1) {
                        self.tx.feed(&frame);
                    }
                }
                self.tx.flush().await?;
            }
            Err(RecvError::Closed) => self.interested.clear(),
        }
        Ok(())
    }

    /// Sends the answer to the oldest chunk request in its turn (see [`crate::upload_turns`]),
    /// within the upload limit, and keeps its buffer for a later one.
    async fn send(&mut self, reply: Reply) -> Result<(), SecureError> {
        let mut outbox = match reply {
            Reply::Chunk(mut chunk) => {
                let (throttle, tx, len) = (self.throttle, &mut self.tx, chunk.len);
                let withdrawn = &self.withdrawn;
                let send = async {
                    throttle.consume(len).await;
                    tx.send_outbox(&mut chunk.outbox).await
                };
                // Withdrawn before its turn came: nothing is sent.
                let sent = self
                    .connected
                    .in_turn_unless(len as u64, send, withdrawn.withdrawal(chunk.request_id))
                    .await;
                self.withdrawn.done(chunk.request_id);
                if let Some(sent) = sent {
                    sent?;
                }
                chunk.outbox
            }
            Reply::Reject(frame, outbox) => {
                if let Frame::Reject { request_id, .. } = &frame {
                    self.withdrawn.done(*request_id);
                }
                self.tx.send(&frame).await?;
                outbox
            }
        };
        outbox.clear();
        self.outboxes.push(outbox);
        Ok(())
    }
}

async fn read_frames<R: AsyncRead + Unpin>(
    mut rx: SecureReader<R>,
    out: mpsc::Sender<Result<Frame, SecureError>>,
    withdrawn: Arc<Withdrawn>,
) {
    loop {
        let next = rx.recv().await;
        // Seen at once, even while the serve loop waits for a turn to send that very chunk
        // or has frames queued before this one.
        match &next {
            Ok(Some(Frame::Request { request_id, .. })) => withdrawn.asked(*request_id),
            // Not queued: nothing else is done with it, and it must not wait behind requests.
            Ok(Some(Frame::Cancel { request_id })) => {
                withdrawn.withdraw(*request_id);
                continue;
            }
            _ => {}
        }
        let stop = !matches!(next, Ok(Some(_)));
        let item = match next {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        if out.send(item).await.is_err() || stop {
            return;
        }
    }
}

fn manifest_reply(library: &Library, file_id: FileId) -> Vec<Frame> {
    match library.get(&file_id) {
        Some(entry) => {
            let have = entry.have();
            vec![
                Frame::Manifest(entry.manifest.clone()),
                Frame::Bitfield {
                    file_id,
                    chunk_count: have.len() as u32,
                    bits: have.into_bytes().into(),
                },
            ]
        }
        None => vec![Frame::Reject {
            request_id: 0,
            code: RejectCode::UnknownFile,
            message: format!("file {file_id} is not shared here"),
        }],
    }
}

/// An answer to a chunk request.
enum Reply {
    /// The chunk, laid out for sending.
    Chunk(ChunkAnswer),
    /// A refusal, and the send buffer that was not needed.
    Reject(Frame, Outbox),
}

/// A `Chunk` frame read from disk straight into a send buffer.
#[derive(Debug)]
struct ChunkAnswer {
    outbox: Outbox,
    request_id: u32,
    file_id: FileId,
    index: u32,
    /// The chunk's length, once read.
    len: usize,
}

impl Default for ChunkAnswer {
    fn default() -> Self {
        Self {
            outbox: Outbox::default(),
            request_id: 0,
            file_id: FileId([0; 32]),
            index: 0,
            len: 0,
        }
    }
}

impl ChunkBuf for ChunkAnswer {
    fn room(&mut self, len: usize) -> Vec<&mut [u8]> {
        self.len = len;
        self.outbox.clear();
        let header = wire::chunk_header(self.request_id, self.file_id, self.index, len);
        self.outbox.put(&header);
        self.outbox.room(len)
    }
}

async fn answer(
    library: &Library,
    request_id: u32,
    file_id: FileId,
    index: u32,
    outbox: Outbox,
    in_place: bool,
) -> Reply {
    let chunk = ChunkAnswer {
        outbox,
        request_id,
        file_id,
        index,
        len: 0,
    };
    let (chunk, read) = library
        .read_chunk_into(&file_id, u64::from(index), chunk, in_place)
        .await;
    let Err(e) = read else {
        return Reply::Chunk(chunk);
    };
    let code = match e {
        LibraryError::UnknownFile(_) => RejectCode::UnknownFile,
        LibraryError::NotAvailable { .. } | LibraryError::Changed { .. } => {
            RejectCode::NotAvailable
        }
        _ => RejectCode::Other(255),
    };
    if matches!(e, LibraryError::Changed { .. } | LibraryError::Io { .. }) {
        tracing::warn!(error = %e, "cannot serve a chunk");
    }
    let reject = Frame::Reject {
        request_id,
        code,
        message: e.to_string(),
    };
    Reply::Reject(reject, chunk.outbox)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn withdrawals_keep_nothing_for_requests_not_waiting() {
        let w = Withdrawn::default();
        // A flood of `Cancel`s for requests never made (or long answered) stores nothing.
        for request_id in 0..100_000 {
            w.withdraw(request_id);
        }
        assert!(w.answering.lock().is_empty());
        // A request waiting for its answer is withdrawn, and a wait for that resolves.
        w.asked(7);
        w.asked(8);
        let waiting = w.withdrawal(7);
        tokio::pin!(waiting);
        assert!(
            futures_util::FutureExt::now_or_never(waiting.as_mut()).is_none(),
            "not withdrawn yet"
        );
        w.withdraw(7);
        waiting.await;
        assert!(w.is_withdrawn(7) && !w.is_withdrawn(8));
        assert!(w.done(7));
        assert!(!w.done(8));
        assert!(
            w.answering.lock().is_empty(),
            "answered requests are forgotten"
        );
    }
}
