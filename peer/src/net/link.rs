//! One encrypted session per remote peer, shared by every download from it.
//!
//! The peer protocol names the file in every request and answer that needs it (`Request`,
//! `Chunk`, `Bitfield`, `Have`, `Manifest`), so one Noise session can carry several downloads at
//! once. A [`Link`] owns the session: its reader task routes each incoming frame to the download
//! of that file ([`Subscription`]), request ids are unique per link, and writes from all
//! downloads go through one writer. `Reject` answers to a manifest request carry no file, but
//! the uploader answers in order, so they go to the oldest manifest request waiting.
//!
//! The [`crate::net::connector::Connector`] keeps one link per peer and hands it to every
//! download; a link whose session failed is replaced by a fresh connection on the next use, and
//! one without downloads for [`LINK_IDLE`] closes itself.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_proto::wire::{Frame, PROTOCOL_VERSION};
use p2p_proto::{FileId, PeerId};
use tokio::io::WriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::identity::Identity;
use crate::net::connector::{BoxedTransport, ConnectionPath};
use crate::net::secure::{self, Role, SecureError, SecureReader, SecureWriter};
use crate::upload::AGENT;

/// A link without downloads closes after this.
pub const LINK_IDLE: Duration = Duration::from_secs(60);
/// Frames queued for one download before the link's reader waits for it.
const SUBSCRIPTION_QUEUE: usize = 64;

/// What a download hears from its link.
#[derive(Debug)]
pub enum LinkEvent {
    Frame(Frame),
    /// The session ended (with the reason, when it failed).
    Closed(Option<String>),
}

#[derive(Debug, Default)]
struct Routes {
    subs: HashMap<FileId, mpsc::Sender<LinkEvent>>,
    /// Request id → the file it asked for, until answered.
    requests: HashMap<u32, FileId>,
    /// Manifest requests waiting for an answer, oldest first.
    manifests: VecDeque<FileId>,
    idle_since: Option<tokio::time::Instant>,
}

/// One Noise session to one peer.
#[derive(Debug)]
pub struct Link {
    peer: PeerId,
    path: ConnectionPath,
    tx: tokio::sync::Mutex<SecureWriter<WriteHalf<BoxedTransport>>>,
    routes: Mutex<Routes>,
    next_request: AtomicU32,
    closed: CancellationToken,
}

impl Link {
    /// Runs the handshake on `stream` (which must reach `peer`) and starts routing.
    pub async fn open(
        stream: BoxedTransport,
        path: ConnectionPath,
        identity: &Identity,
        peer: PeerId,
    ) -> Result<Arc<Self>, SecureError> {
        let (rx, mut tx, _) =
            secure::handshake(stream, identity, Role::Initiator, Some(peer)).await?;
        tx.feed(&Frame::Hello {
            version: PROTOCOL_VERSION,
            min_version: PROTOCOL_VERSION,
            agent: AGENT.into(),
        });
        tx.flush().await?;
        let link = Arc::new(Self {
            peer,
            path,
            tx: tokio::sync::Mutex::new(tx),
            routes: Mutex::new(Routes {
                idle_since: Some(tokio::time::Instant::now()),
                ..Routes::default()
            }),
            next_request: AtomicU32::new(1),
            closed: CancellationToken::new(),
        });
        tokio::spawn(route(Arc::downgrade(&link), rx, link.closed.clone()));
        Ok(link)
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

    /// Starts a download of `file` on this link; `None` while another one of the same file
    /// runs on it.
    pub fn subscribe(self: &Arc<Self>, file: FileId) -> Option<Subscription> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
        let mut routes = self.routes.lock().ok()?;
        if routes.subs.contains_key(&file) || self.is_closed() {
            return None;
        }
        routes.subs.insert(file, tx);
        routes.idle_since = None;
        Some(Subscription {
            link: self.clone(),
            file,
            rx,
        })
    }

    /// Writes `frames` and flushes, recording requests for routing.
    async fn send(&self, file: FileId, frames: &[Frame]) -> Result<(), SecureError> {
        if let Ok(mut routes) = self.routes.lock() {
            for f in frames {
                match f {
                    Frame::Request { request_id, .. } => {
                        routes.requests.insert(*request_id, file);
                    }
                    Frame::ManifestRequest { file_id } => routes.manifests.push_back(*file_id),
                    _ => {}
                }
            }
        }
        let mut tx = self.tx.lock().await;
        for f in frames {
            tx.feed(f);
        }
        let sent = tx.flush().await;
        if sent.is_err() {
            self.closed.cancel();
        }
        sent
    }

    /// Where an incoming frame goes.
    fn route_of(&self, frame: &Frame) -> Vec<mpsc::Sender<LinkEvent>> {
        let Ok(mut r) = self.routes.lock() else {
            return Vec::new();
        };
        let file = match frame {
            Frame::Manifest(m) => Some(m.id),
            Frame::Bitfield { file_id, .. } => {
                if let Some(at) = r.manifests.iter().position(|f| f == file_id) {
                    r.manifests.remove(at);
                }
                Some(*file_id)
            }
            Frame::Have { file_id, .. } => Some(*file_id),
            Frame::Chunk {
                request_id,
                file_id,
                ..
            } => {
                r.requests.remove(request_id);
                Some(*file_id)
            }
            Frame::Reject { request_id: 0, .. } => r.manifests.pop_front(),
            Frame::Reject { request_id, .. } => r.requests.remove(request_id),
            Frame::Error { .. } => return r.subs.values().cloned().collect(),
            _ => None,
        };
        file.and_then(|f| r.subs.get(&f).cloned())
            .into_iter()
            .collect()
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
                    .ok()
                    .and_then(|r| r.idle_since)
                    .is_some_and(|t| t.elapsed() >= LINK_IDLE);
                if idle {
                    break None;
                }
            }
            next = rx.recv() => match next {
                Ok(Some(frame)) => {
                    let Some(link) = link.upgrade() else { break None };
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
                Err(e) => break Some(e.to_string()),
            },
        }
    };
    closed.cancel();
    if let Some(link) = link.upgrade() {
        let subs: Vec<_> = link
            .routes
            .lock()
            .map(|r| r.subs.values().cloned().collect())
            .unwrap_or_default();
        for s in subs {
            let _ = s.send(LinkEvent::Closed(why.clone())).await;
        }
    }
}

/// One download's share of a link. Dropping it ends the download's routes.
#[derive(Debug)]
pub struct Subscription {
    link: Arc<Link>,
    file: FileId,
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

    /// Sends frames (requests, cancels…) for this download.
    pub async fn send(&self, frames: &[Frame]) -> Result<(), SecureError> {
        self.link.send(self.file, frames).await
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
        if let Ok(mut r) = self.link.routes.lock() {
            r.subs.remove(&self.file);
            let file = self.file;
            r.requests.retain(|_, f| *f != file);
            r.manifests.retain(|f| *f != file);
            if r.subs.is_empty() {
                r.idle_since = Some(tokio::time::Instant::now());
            }
        }
    }
}
