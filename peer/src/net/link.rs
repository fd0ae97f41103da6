//! One encrypted session per remote peer, shared by every download from it.
//!
//! The peer protocol names the file in every request and answer that needs it (`Request`,
//! `Chunk`, `Bitfield`, `Have`, `Manifest`), so one Noise session can carry several downloads at
//! once. A [`Link`] owns the session: its reader task routes each incoming frame to the downloads
//! ([`Subscription`]s) of that file, answers only to the one that asked (request ids are unique
//! per link), and writes from all downloads go through one writer task. `Reject` answers to a
//! manifest request carry no file, but the uploader answers in order, so they go to the oldest
//! manifest request waiting.
//!
//! The [`crate::net::connector::Connector`] keeps one link per peer and hands it to every
//! download; a link whose session failed is replaced by a fresh connection on the next use, and
//! one without downloads for [`LINK_IDLE`] closes itself.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use p2p_proto::wire::{self, Frame};
use p2p_proto::{FileId, PeerId};
use parking_lot::Mutex;
use tokio::io::WriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::identity::Identity;
use crate::net::secure::{FrameCap, Role, SecureError, SecureReader, SecureWriter};
use crate::net::session::{self, Session};
use crate::net::transport::{BoxedTransport, ConnectionPath};

/// A link without downloads closes after this.
pub const LINK_IDLE: Duration = Duration::from_secs(60);
/// A link that has sent nothing for this long sends a `KeepAlive`, so the uploader (which
/// closes sessions idle for its idle timeout, 90 s by default) keeps a link that waits for
/// news of new chunks.
pub const KEEPALIVE: Duration = Duration::from_secs(30);
/// Frames queued for one download before the link's reader waits for it.
const SUBSCRIPTION_QUEUE: usize = 64;

/// What a download hears from its link.
#[derive(Debug)]
pub enum LinkEvent {
    Frame(Frame),
    /// The session ended (with the error, when it failed; shared by every download on it).
    Closed(Option<Arc<SecureError>>),
}

#[derive(Debug, Default)]
struct Routes {
    /// Subscription id → its file and where its frames go.
    subs: HashMap<u64, (FileId, mpsc::Sender<LinkEvent>)>,
    next_sub: u64,
    /// Request id → the subscription that sent it, until answered.
    requests: HashMap<u32, u64>,
    /// Manifest requests waiting for an answer (file, subscription), oldest first.
    manifests: VecDeque<(FileId, u64)>,
    idle_since: Option<tokio::time::Instant>,
}

/// Frames to write, in order.
type Write = Vec<Frame>;

/// One Noise session to one peer.
#[derive(Debug)]
pub struct Link {
    peer: PeerId,
    path: ConnectionPath,
    /// To the writer task, which owns the session's write half: a write is never cut short by
    /// a download that stops while it waits (a Noise message half sent would break the session
    /// for every other download on it).
    writes: mpsc::UnboundedSender<Write>,
    routes: Mutex<Routes>,
    next_request: AtomicU32,
    /// When a frame last arrived, in milliseconds since `started`.
    last_rx_ms: AtomicU64,
    started: tokio::time::Instant,
    closed: CancellationToken,
    /// The reader's frame cap: a manifest's size only while a manifest request waits.
    frame_cap: FrameCap,
}

impl Link {
    /// Opens the session on `stream` (which must reach `peer`) and starts routing.
    pub async fn open(
        stream: BoxedTransport,
        path: ConnectionPath,
        identity: &Identity,
        peer: PeerId,
    ) -> Result<Arc<Self>, SecureError> {
        let Session {
            reader: rx,
            writer: tx,
            ..
        } = session::open(stream, identity, Role::Initiator, Some(peer)).await?;
        let (writes, queue) = mpsc::unbounded_channel();
        let frame_cap = rx.frame_cap().clone();
        let link = Arc::new(Self {
            peer,
            path,
            writes,
            routes: Mutex::new(Routes {
                idle_since: Some(tokio::time::Instant::now()),
                ..Routes::default()
            }),
            next_request: AtomicU32::new(1),
            last_rx_ms: AtomicU64::new(0),
            started: tokio::time::Instant::now(),
            closed: CancellationToken::new(),
            frame_cap,
        });
        tokio::spawn(write(tx, queue, link.closed.clone()));
        tokio::spawn(route(Arc::downgrade(&link), rx, link.closed.clone()));
        Ok(link)
    }

    /// Ends the session when nothing has arrived on it for `silence`: a worker timed out on a
    /// path that may have died without a reset, and the next download should reconnect.
    pub fn close_if_silent(&self, silence: Duration) {
        let last = Duration::from_millis(self.last_rx_ms.load(Ordering::Relaxed));
        if self.started.elapsed().saturating_sub(last) >= silence {
            tracing::debug!(peer = %self.peer, "closing a silent link");
            self.closed.cancel();
        }
    }

    pub fn peer(&self) -> PeerId {
        self.peer
    }

    pub fn path(&self) -> ConnectionPath {
        self.path
    }

    /// Whether the session has ended (a new link is needed).
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Starts a download of `file` on this link; `None` once the link has closed.
    pub fn subscribe(self: &Arc<Self>, file: FileId) -> Option<Subscription> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
        let mut routes = self.routes.lock();
        if self.is_closed() {
            return None;
        }
        let id = routes.next_sub;
        routes.next_sub += 1;
        routes.subs.insert(id, (file, tx));
        routes.idle_since = None;
        Some(Subscription {
            link: self.clone(),
            id,
            rx,
        })
    }

    /// Queues `frames` for the writer task, recording requests for routing. Routes are recorded
    /// and frames queued under one lock, so the wire order is the order of the records. It does
    /// not wait for the write: a failed write closes the link, which every download on it hears
    /// as `Closed`.
    fn send(&self, sub: u64, frames: Vec<Frame>) -> Result<(), SecureError> {
        let mut routes = self.routes.lock();
        for f in &frames {
            match f {
                Frame::Request { request_id, .. } => {
                    routes.requests.insert(*request_id, sub);
                }
                Frame::ManifestRequest { file_id } => {
                    routes.manifests.push_back((*file_id, sub));
                    self.frame_cap.set(wire::MAX_MANIFEST_FRAME_LEN);
                }
                _ => {}
            }
        }
        self.writes
            .send(frames)
            .map_err(|_| SecureError::Io(std::io::ErrorKind::BrokenPipe.into()))
    }

    /// Where an incoming frame goes: answers to the subscription that asked, news about a
    /// file (`Manifest`, `Bitfield`, `Have`) to every subscription of that file.
    fn route_of(&self, frame: &Frame) -> Vec<mpsc::Sender<LinkEvent>> {
        let mut r = self.routes.lock();
        let targets = self.route_locked(&mut r, frame);
        if r.manifests.is_empty() {
            self.frame_cap.set(wire::MAX_FRAME_LEN);
        }
        targets
    }

    fn route_locked(&self, r: &mut Routes, frame: &Frame) -> Vec<mpsc::Sender<LinkEvent>> {
        let to_sub = |r: &Routes, id: Option<u64>| -> Vec<mpsc::Sender<LinkEvent>> {
            id.and_then(|id| r.subs.get(&id))
                .map(|(_, tx)| tx.clone())
                .into_iter()
                .collect()
        };
        let file = match frame {
            Frame::Manifest(m) => m.id,
            Frame::Bitfield { file_id, .. } => {
                if let Some(at) = r.manifests.iter().position(|(f, _)| f == file_id) {
                    r.manifests.remove(at);
                }
                *file_id
            }
            Frame::Have { file_id, .. } => *file_id,
            Frame::Chunk { request_id, .. } | Frame::Reject { request_id, .. }
                if *request_id != 0 =>
            {
                let sub = r.requests.remove(request_id);
                return to_sub(r, sub);
            }
            Frame::Reject { .. } => {
                let sub = r.manifests.pop_front().map(|(_, sub)| sub);
                return to_sub(r, sub);
            }
            Frame::Error { .. } => return r.subs.values().map(|(_, tx)| tx.clone()).collect(),
            _ => return Vec::new(),
        };
        r.subs
            .values()
            .filter(|(f, _)| *f == file)
            .map(|(_, tx)| tx.clone())
            .collect()
    }
}

/// Writes what downloads queue, one batch at a time, until the link closes; then drops the
/// write half (with the reader's half, that closes the connection).
async fn write(
    mut tx: SecureWriter<WriteHalf<BoxedTransport>>,
    mut queue: mpsc::UnboundedReceiver<Write>,
    closed: CancellationToken,
) {
    let mut last_write = tokio::time::Instant::now();
    loop {
        let frames = tokio::select! {
            _ = closed.cancelled() => return,
            next = queue.recv() => match next {
                Some(w) => w,
                None => return,
            },
            _ = tokio::time::sleep_until(last_write + KEEPALIVE) => vec![Frame::KeepAlive],
        };
        last_write = tokio::time::Instant::now();
        for f in &frames {
            tx.feed(f);
        }
        // Whatever else is queued goes out in the same flush.
        while let Ok(more) = queue.try_recv() {
            for f in &more {
                tx.feed(f);
            }
        }
        if let Err(e) = tx.flush().await {
            tracing::debug!(error = %e, "link write failed");
            closed.cancel();
            return;
        }
    }
}

/// Reads the session and hands each frame to its download; ends the link when the session
/// ends or has been idle for [`LINK_IDLE`].
async fn route(
    link: std::sync::Weak<Link>,
    mut rx: SecureReader<tokio::io::ReadHalf<BoxedTransport>>,
    closed: CancellationToken,
) {
    let mut check = tokio::time::interval(LINK_IDLE / 4);
    let why = loop {
        tokio::select! {
            _ = closed.cancelled() => break None,
            _ = check.tick() => {
                let Some(link) = link.upgrade() else { break None };
                let idle = link
                    .routes
                    .lock()
                    .idle_since
                    .is_some_and(|t| t.elapsed() >= LINK_IDLE);
                if idle {
                    break None;
                }
            }
            next = rx.recv() => match next {
                Ok(Some(frame)) => {
                    let Some(link) = link.upgrade() else { break None };
                    let now = link.started.elapsed().as_millis() as u64;
                    link.last_rx_ms.store(now, Ordering::Relaxed);
                    let targets = link.route_of(&frame);
                    drop(link);
                    let last = targets.len().saturating_sub(1);
                    let mut frame = Some(frame);
                    for (i, t) in targets.into_iter().enumerate() {
                        let f = if i == last { frame.take() } else { frame.clone() };
                        if let Some(f) = f {
                            let _ = t.send(LinkEvent::Frame(f)).await;
                        }
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(Arc::new(e)),
            },
        }
    };
    closed.cancel();
    if let Some(link) = link.upgrade() {
        let subs: Vec<_> = link
            .routes
            .lock()
            .subs
            .values()
            .map(|(_, tx)| tx.clone())
            .collect();
        for s in subs {
            let _ = s.send(LinkEvent::Closed(why.clone())).await;
        }
    }
}

/// One download's share of a link. Dropping it ends the download's routes.
#[derive(Debug)]
pub struct Subscription {
    link: Arc<Link>,
    id: u64,
    rx: mpsc::Receiver<LinkEvent>,
}

impl Subscription {
    /// The next frame for this download; `Closed` once the session ended.
    pub async fn recv(&mut self) -> LinkEvent {
        match self.rx.recv().await {
            Some(e) => e,
            None => LinkEvent::Closed(None),
        }
    }

    /// A frame that has already arrived, without waiting; `None` if there is none yet (a
    /// closed session shows in the next [`Subscription::recv`]).
    pub fn try_recv(&mut self) -> Option<LinkEvent> {
        self.rx.try_recv().ok()
    }

    /// Sends frames (requests, cancels…) for this download, in order, without waiting.
    pub fn send(&self, frames: Vec<Frame>) -> Result<(), SecureError> {
        self.link.send(self.id, frames)
    }

    /// A request id no other download on this link uses.
    pub fn next_request_id(&self) -> u32 {
        loop {
            let id = self.link.next_request.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut r = self.link.routes.lock();
        r.subs.remove(&self.id);
        let id = self.id;
        r.requests.retain(|_, s| *s != id);
        // Waiting manifest requests stay queued: a late `Reject` for one must still pop its
        // own entry (its answer is dropped then), not the next download's.
        if r.subs.is_empty() {
            r.idle_since = Some(tokio::time::Instant::now());
        }
    }
}
