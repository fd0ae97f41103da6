//! The relay client: one WebSocket to the tracker's `/relay`, many streams over it.
//!
//! [`spawn`] attaches (answering the hub's challenge with a proof of this peer's static key) and
//! keeps attaching again with backoff when the WebSocket drops. [`RelayClient::open`] opens a
//! stream to another attached peer; streams other peers open arrive on the [`Incoming`]
//! receiver. A [`RelayStream`] is an `AsyncRead + AsyncWrite`, so the Noise handshake of
//! [`super::secure`] runs through it end to end and the hub sees only ciphertext.
//!
//! Flow control: each direction of a stream may have [`INITIAL_WINDOW`] bytes in flight; the
//! receiving side grants more with `Window` frames as the application reads, so a slow reader
//! stops its sender and nothing here or at the hub grows without bound. Each stream is a
//! `tokio::io::duplex` pipe whose far end two small tasks bridge to the WebSocket.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use curve25519_dalek::montgomery::MontgomeryPoint;
use futures_util::{SinkExt, StreamExt};
use p2p_proto::PeerId;
use p2p_proto::relay::{
    CloseCode, INCOMING_STREAM_BIT, INITIAL_WINDOW, MAX_DATA_LEN, RelayFrame, RelayFrameError,
    error_code, proof_mac,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::InvalidHeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use crate::identity::Identity;
use crate::net::addr::RelayUrl;
use crate::net::ticket::PunchTicket;
use p2p_proto::punch::Nonce16;

/// How long attaching (connect, challenge, proof) may take.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes buffered between the application and a stream's bridge tasks.
const PIPE_BUFFER: usize = 256 * 1024;
/// Frames waiting for the WebSocket.
const OUTBOUND_QUEUE: usize = 256;
/// Incoming streams not yet picked up.
const INCOMING_QUEUE: usize = 64;
/// Incoming streams open at once, in all and from one peer: more are closed at once with
/// [`CloseCode::LimitExceeded`], so a peer opening stream after stream through the hub cannot
/// make us hold a pipe and two tasks for each.
pub const MAX_INCOMING_STREAMS: usize = 128;
pub const MAX_INCOMING_PER_PEER: usize = 8;
/// Punch invitations not yet picked up.
const INVITE_QUEUE: usize = 16;
/// How long the hub has to answer a punch request.
const PUNCH_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Grant credit back once this much was read. A grant crosses the hub and every task on the
/// way, which under load takes tens of milliseconds, so the sender should hear of room early:
/// with larger steps the relayed run of `bench/relay` waited on credit; smaller ones send more
/// grants through the hub without moving more data (figures in `bench/README.md`).
const GRANT_STEP: u32 = INITIAL_WINDOW / 16;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why the relay could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error("relay URL {0:?}: expected http(s)://host:port or ws(s)://host:port")]
    Url(String),
    #[error("relay URL: {0}")]
    Request(#[source] Box<tungstenite::Error>),
    #[error("the API key is not a valid header")]
    ApiKey(#[source] InvalidHeaderValue),
    #[error("cannot reach the relay: {0}")]
    Connect(#[source] Box<tungstenite::Error>),
    #[error("cannot reach the relay: timed out")]
    AttachTimeout,
    #[error("the relay refused us: {0}")]
    Refused(String),
    #[error("the relay refused the punch: {0}")]
    PunchRefused(CloseCode),
    #[error("relay protocol: {0}")]
    Decode(#[from] RelayFrameError),
    #[error("relay protocol: {0}")]
    Protocol(String),
    #[error("not attached to the relay")]
    NotAttached,
}

/// Where the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayStatus {
    Connecting,
    Attached,
    /// The last attempt failed; retrying after a backoff.
    Disconnected(String),
}

/// How to reach the hub.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `ws://host:port/relay` (see [`relay_url`]).
    pub url: RelayUrl,
    /// The tracker API key or JWT.
    pub token: Option<String>,
    /// Instead of a token: a read grant (hex), with which the hub lets this peer dial the
    /// peers of the grant's id only (a share link's receiver, which has no API key).
    pub grant: Option<String>,
}

/// The hub's URL for a tracker base URL: `http://t:8080` → `ws://t:8080/relay`.
pub fn relay_url(tracker: &str) -> Result<RelayUrl, RelayError> {
    let t = tracker.trim().trim_end_matches('/');
    let rest = |p: &str| t.strip_prefix(p).map(str::to_owned);
    let url = if let Some(r) = rest("http://") {
        format!("ws://{r}/relay")
    } else if let Some(r) = rest("https://") {
        format!("wss://{r}/relay")
    } else if t.starts_with("ws://") || t.starts_with("wss://") {
        format!("{t}/relay")
    } else if !t.is_empty() && !t.contains("://") {
        format!("ws://{t}/relay")
    } else {
        return Err(RelayError::Url(tracker.to_owned()));
    };
    Ok(RelayUrl::from(url))
}

/// The host of a hub's URL (`ws://t:8080/relay` → `t`), where its UDP rendezvous is.
fn url_host(url: &RelayUrl) -> Option<String> {
    let url = reqwest::Url::parse(url.as_str()).ok()?;
    url.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
}

/// The host of a tracker URL (`http://t:8080` → `t`), where its UDP rendezvous is.
pub fn tracker_host(tracker: &str) -> Result<String, RelayError> {
    let bad = || RelayError::Url(tracker.to_owned());
    let url = reqwest::Url::parse(relay_url(tracker)?.as_str()).map_err(|_| bad())?;
    // An IPv6 host without the brackets the URL writes: the form a socket address lookup takes.
    url.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .filter(|h| !h.is_empty())
        .ok_or_else(bad)
}

/// A stream another peer opened to us.
#[derive(Debug)]
pub struct Incoming {
    pub from: PeerId,
    pub stream: RelayStream,
}

/// A handle on the relay connection; cheap to clone.
#[derive(Debug, Clone)]
pub struct RelayClient {
    /// The hub to attach to; [`RelayClient::rehome`] changes it.
    url: Arc<watch::Sender<RelayUrl>>,
    commands: watch::Receiver<Option<mpsc::Sender<Command>>>,
    status: watch::Receiver<RelayStatus>,
    next_stream: Arc<AtomicU32>,
}

#[derive(Debug)]
enum Command {
    Open {
        stream: u32,
        to: PeerId,
        entry: StreamEntry,
        far: Far,
    },
    Close(u32),
    Punch {
        request: u32,
        to: PeerId,
        reply: oneshot::Sender<Result<PunchTicket, RelayError>>,
    },
    Decline(Nonce16),
}

/// The driver's view of one stream.
#[derive(Debug)]
struct StreamEntry {
    /// Who opened it, for a stream another peer opened to us.
    opened_by: Option<PeerId>,
    inbound: mpsc::UnboundedSender<Bytes>,
    credit: Arc<Semaphore>,
    closed: Arc<OnceLock<CloseCode>>,
}

impl StreamEntry {
    fn end(self, code: CloseCode) {
        let _ = self.closed.set(code);
        self.credit.close();
    }
}

/// One stream through the relay. Reads fail with the hub's reason when it closed the stream
/// abnormally (the peer is not attached, a limit was reached…).
#[derive(Debug)]
pub struct RelayStream {
    io: DuplexStream,
    peer: PeerId,
    closed: Arc<OnceLock<CloseCode>>,
}

impl RelayStream {
    /// The peer at the other end (as the hub vouches; the Noise handshake proves it).
    pub fn peer(&self) -> PeerId {
        self.peer
    }
}

impl AsyncRead for RelayStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                match this.closed.get() {
                    Some(code) if *code != CloseCode::Normal => Poll::Ready(Err(
                        std::io::Error::new(std::io::ErrorKind::ConnectionReset, code.to_string()),
                    )),
                    _ => Poll::Ready(Ok(())),
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for RelayStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl RelayClient {
    /// The hub this client attaches to (or tries to).
    pub fn url(&self) -> RelayUrl {
        self.url.borrow().clone()
    }

    /// Moves to the hub at `url`: ends the session with the current one (its streams end) and
    /// attaches there at once. Nothing happens when `url` is the current hub.
    pub fn rehome(&self, url: RelayUrl) {
        self.url.send_if_modified(|current| {
            let changed = *current != url;
            *current = url;
            changed
        });
    }

    /// The current status.
    pub fn status(&self) -> RelayStatus {
        self.status.borrow().clone()
    }

    /// The status as it changes (see [`watch::Receiver::changed`]).
    pub fn status_changes(&self) -> watch::Receiver<RelayStatus> {
        self.status.clone()
    }

    /// Waits until attached (or `timeout`).
    pub async fn wait_attached(&self, timeout: Duration) -> Result<(), RelayError> {
        let mut status = self.status.clone();
        tokio::time::timeout(timeout, status.wait_for(|s| *s == RelayStatus::Attached))
            .await
            .map_err(|_| RelayError::NotAttached)?
            .map_err(|_| RelayError::NotAttached)?;
        Ok(())
    }

    /// Opens a stream to `to`. Fails at once when not attached; when `to` is not attached the
    /// stream's first read fails with the hub's reason.
    pub async fn open(&self, to: PeerId) -> Result<RelayStream, RelayError> {
        let stream = self.next_id();
        let (app, entry, far) = new_stream(to);
        self.command(Command::Open {
            stream,
            to,
            entry,
            far,
        })
        .await?;
        Ok(app)
    }

    /// Tells the hub we will not punch in `session` (its asker falls back to the relay at once).
    pub async fn decline(&self, session: Nonce16) -> Result<(), RelayError> {
        self.command(Command::Decline(session)).await
    }

    /// A fresh stream or request id (high bit clear).
    fn next_id(&self) -> u32 {
        self.next_stream.fetch_add(1, Ordering::Relaxed) & !INCOMING_STREAM_BIT
    }

    /// Hands `command` to the attached session; fails at once when not attached.
    async fn command(&self, command: Command) -> Result<(), RelayError> {
        let commands = self
            .commands
            .borrow()
            .clone()
            .ok_or(RelayError::NotAttached)?;
        commands
            .send(command)
            .await
            .map_err(|_| RelayError::NotAttached)
    }

    /// Asks the hub to set up a hole punch with `to`; the ticket says how to bind.
    pub async fn punch(&self, to: PeerId) -> Result<PunchTicket, RelayError> {
        // Request ids share the stream counter; 0 is reserved for invitations.
        let request = self.next_id().max(1);
        let (reply, answer) = oneshot::channel();
        self.command(Command::Punch { request, to, reply }).await?;
        tokio::time::timeout(PUNCH_REQUEST_TIMEOUT, answer)
            .await
            .map_err(|_| RelayError::Protocol("no answer to the punch request".to_owned()))?
            .map_err(|_| RelayError::NotAttached)?
    }
}

/// A stream's application end, the driver's entry, and the bridge's end.
fn new_stream(peer: PeerId) -> (RelayStream, StreamEntry, Far) {
    let (app_io, far_io) = tokio::io::duplex(PIPE_BUFFER);
    let (inbound, inbound_rx) = mpsc::unbounded_channel();
    let credit = Arc::new(Semaphore::new(INITIAL_WINDOW as usize));
    let closed = Arc::new(OnceLock::new());
    (
        RelayStream {
            io: app_io,
            peer,
            closed: closed.clone(),
        },
        StreamEntry {
            opened_by: None,
            inbound,
            credit: credit.clone(),
            closed,
        },
        Far {
            io: far_io,
            inbound: inbound_rx,
            credit,
        },
    )
}

/// The far end of a stream's pipe, for its bridge tasks.
#[derive(Debug)]
struct Far {
    io: DuplexStream,
    inbound: mpsc::UnboundedReceiver<Bytes>,
    credit: Arc<Semaphore>,
}

/// Session-wide senders the bridge tasks use.
#[derive(Clone)]
struct Outbound {
    frames: mpsc::Sender<Message>,
    commands: mpsc::Sender<Command>,
}

/// Starts the client: attaches, serves streams, and attaches again when the connection drops,
/// until `shutdown`. Returns the handle and the receiver of incoming streams.
pub fn spawn(
    identity: Identity,
    config: RelayConfig,
    shutdown: CancellationToken,
) -> (RelayClient, mpsc::Receiver<Incoming>) {
    let (client, incoming, _invites) = spawn_with_punch(identity, config, shutdown);
    (client, incoming)
}

/// As [`spawn`], and also returns the receiver of punch invitations (other peers asking to
/// hole-punch to us); see [`crate::net::punch`].
pub fn spawn_with_punch(
    identity: Identity,
    config: RelayConfig,
    shutdown: CancellationToken,
) -> (
    RelayClient,
    mpsc::Receiver<Incoming>,
    mpsc::Receiver<PunchTicket>,
) {
    let (invites_tx, invites_rx) = mpsc::channel(INVITE_QUEUE);
    let (url_tx, mut url_rx) = watch::channel(config.url.clone());
    let url = Arc::new(url_tx);
    let (commands_tx, commands_rx) = watch::channel(None);
    let (status_tx, status_rx) = watch::channel(RelayStatus::Connecting);
    let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        let mut config = config;
        loop {
            config.url = url_rx.borrow_and_update().clone();
            let _ = status_tx.send(RelayStatus::Connecting);
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                // Moved to another hub meanwhile: try that one instead.
                Ok(()) = url_rx.changed() => continue,
                r = tokio::time::timeout(ATTACH_TIMEOUT, attach(&identity, &config)) => {
                    r.unwrap_or(Err(RelayError::AttachTimeout))
                }
            };
            let why = match attempt {
                Ok(ws) => {
                    backoff = BACKOFF_MIN;
                    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
                    let _ = commands_tx.send(Some(tx.clone()));
                    let _ = status_tx.send(RelayStatus::Attached);
                    tracing::info!(url = %config.url, "attached to the relay");
                    let links = SessionLinks {
                        incoming: &incoming_tx,
                        invites: &invites_tx,
                        host: url_host(&config.url),
                        url: &mut url_rx,
                    };
                    let why = run_session(ws, tx, rx, links, &shutdown).await;
                    let _ = commands_tx.send(None);
                    why
                }
                Err(e) => e.to_string(),
            };
            if shutdown.is_cancelled() {
                return;
            }
            tracing::debug!(reason = %why, "relay connection ended; retrying");
            let _ = status_tx.send(RelayStatus::Disconnected(why));
            if *url_rx.borrow() != config.url {
                // A new hub: no backoff, the old one's failures say nothing of it.
                backoff = BACKOFF_MIN;
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Ok(()) = url_rx.changed() => backoff = BACKOFF_MIN,
                _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(BACKOFF_MAX),
            }
        }
    });
    (
        RelayClient {
            url,
            commands: commands_rx,
            status: status_rx,
            next_stream: Arc::new(AtomicU32::new(1)),
        },
        incoming_rx,
        invites_rx,
    )
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects and proves our peer id.
async fn attach(identity: &Identity, config: &RelayConfig) -> Result<Ws, RelayError> {
    let url = format!("{}?peer_id={}", config.url, identity.peer_id());
    let mut request = url
        .into_client_request()
        .map_err(|e| RelayError::Request(Box::new(e)))?;
    if let Some(token) = &config.token {
        let value = HeaderValue::from_str(token).map_err(RelayError::ApiKey)?;
        request.headers_mut().insert("x-api-key", value);
    }
    if let Some(grant) = &config.grant {
        let value = HeaderValue::from_str(grant).map_err(RelayError::ApiKey)?;
        request.headers_mut().insert("x-read-grant", value);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| RelayError::Connect(Box::new(e)))?;
    let Some(RelayFrame::Challenge { server_key, nonce }) = next_frame(&mut ws).await? else {
        return Err(RelayError::Protocol("expected a challenge".to_owned()));
    };
    let shared = MontgomeryPoint(server_key)
        .mul_clamped(*identity.secret())
        .to_bytes();
    let peer_id = identity.peer_id();
    let proof = RelayFrame::Proof {
        peer_id,
        mac: proof_mac(&shared, &server_key, &nonce, &peer_id),
    };
    ws.send(Message::Binary(proof.to_vec().into()))
        .await
        .map_err(|e| RelayError::Connect(Box::new(e)))?;
    match next_frame(&mut ws).await? {
        Some(RelayFrame::Attached) => Ok(ws),
        Some(RelayFrame::Error { message, .. }) => Err(RelayError::Refused(message)),
        other => Err(RelayError::Protocol(format!(
            "expected attached, got {other:?}"
        ))),
    }
}

async fn next_frame(ws: &mut Ws) -> Result<Option<RelayFrame>, RelayError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                return Ok(Some(RelayFrame::decode(b)?));
            }
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(RelayError::Connect(Box::new(e))),
        }
    }
}

/// Where one session hands what arrives, and what ends it besides the WebSocket.
struct SessionLinks<'a> {
    incoming: &'a mpsc::Sender<Incoming>,
    invites: &'a mpsc::Sender<PunchTicket>,
    host: Option<String>,
    /// A change ends the session (the client moves to another hub).
    url: &'a mut watch::Receiver<RelayUrl>,
}

/// Serves one attached WebSocket until it ends; returns why.
async fn run_session(
    ws: Ws,
    commands_tx: mpsc::Sender<Command>,
    mut commands: mpsc::Receiver<Command>,
    links: SessionLinks<'_>,
    shutdown: &CancellationToken,
) -> String {
    let SessionLinks {
        incoming,
        invites,
        host,
        url,
    } = links;
    let (sink, mut source) = ws.split();
    let (frames, to_send) = mpsc::channel::<Message>(OUTBOUND_QUEUE);
    let writer = tokio::spawn(write_frames(sink, to_send));
    let mut session = Attached {
        out: Outbound {
            frames,
            commands: commands_tx,
        },
        streams: HashMap::new(),
        punches: Punches::default(),
        incoming,
        invites,
        host,
    };
    let why = loop {
        let step = tokio::select! {
            _ = shutdown.cancelled() => Err("shutting down".to_owned()),
            Ok(()) = url.changed() => Err("moving to another relay".to_owned()),
            command = commands.recv() => match command {
                Some(command) => session.on_command(command).await,
                None => Err("client dropped".to_owned()),
            },
            msg = source.next() => match msg {
                Some(Ok(Message::Binary(b))) => match RelayFrame::decode(b) {
                    Ok(frame) => session.on_frame(frame).await,
                    Err(e) => Err(format!("bad frame from the relay: {e}")),
                },
                Some(Ok(Message::Close(_))) | None => Err("the relay closed".to_owned()),
                Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(e.to_string()),
            },
        };
        if let Err(why) = step {
            break why;
        }
    };
    for (_, entry) in session.streams.drain() {
        entry.end(CloseCode::Gone);
    }
    drop(session);
    writer.abort();
    why
}

/// Sends the session's frames, batching whatever is queued into one flush, until the queue
/// closes or the WebSocket fails.
async fn write_frames(
    mut sink: futures_util::stream::SplitSink<Ws, Message>,
    mut to_send: mpsc::Receiver<Message>,
) {
    while let Some(first) = to_send.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            if sink.feed(msg).await.is_err() {
                return;
            }
            next = to_send.try_recv().ok();
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    let _ = sink.close().await;
}

/// One attached session's state: its streams and punches, and where new ones go.
struct Attached<'a> {
    out: Outbound,
    streams: HashMap<u32, StreamEntry>,
    punches: Punches,
    incoming: &'a mpsc::Sender<Incoming>,
    invites: &'a mpsc::Sender<PunchTicket>,
    /// The hub's host, where its punch rendezvous listens.
    host: Option<String>,
}

/// Why a session ends, for the status and the log.
type Ended = String;

impl Attached<'_> {
    /// Carries out a command from a [`RelayClient`].
    async fn on_command(&mut self, command: Command) -> Result<(), Ended> {
        let lost = || "connection lost".to_owned();
        match command {
            Command::Open {
                stream,
                to,
                entry,
                far,
            } => {
                self.streams.insert(stream, entry);
                // `Open` is queued before the bridge can queue any `Data` for the stream.
                send(&self.out.frames, &RelayFrame::Open { stream, to })
                    .await
                    .map_err(|_| lost())?;
                spawn_bridge(stream, far, self.out.clone());
            }
            Command::Close(stream) => {
                if let Some(entry) = self.streams.remove(&stream) {
                    entry.end(CloseCode::Normal);
                    let code = CloseCode::Normal;
                    let _ = send(&self.out.frames, &RelayFrame::Close { stream, code }).await;
                }
            }
            Command::Decline(session) => {
                send(&self.out.frames, &RelayFrame::PunchDecline { session })
                    .await
                    .map_err(|_| lost())?;
            }
            Command::Punch { request, to, reply } => {
                self.punches.requested.retain(|_, r| !r.is_closed());
                self.punches.requested.insert(request, reply);
                send(&self.out.frames, &RelayFrame::PunchRequest { request, to })
                    .await
                    .map_err(|_| lost())?;
            }
        }
        Ok(())
    }

    /// Handles a frame from the hub.
    async fn on_frame(&mut self, frame: RelayFrame) -> Result<(), Ended> {
        match frame {
            RelayFrame::Data { stream, data } => {
                if let Some(entry) = self.streams.get(&stream) {
                    let _ = entry.inbound.send(data);
                }
            }
            RelayFrame::Window { stream, credit } => {
                if let Some(entry) = self.streams.get(&stream) {
                    entry.credit.add_permits(credit as usize);
                }
            }
            RelayFrame::Close { stream, code } => {
                if let Some(entry) = self.streams.remove(&stream) {
                    entry.end(code);
                }
            }
            RelayFrame::Incoming { stream, from } => self.on_incoming(stream, from).await,
            RelayFrame::PunchBind {
                request,
                peer,
                session,
                token,
                udp_port,
            } => {
                let (tx, go) = oneshot::channel();
                let ticket = PunchTicket {
                    peer,
                    session,
                    token,
                    host: self.host.clone(),
                    udp_port,
                    go,
                };
                self.on_punch_bind(request, ticket, tx).await;
            }
            RelayFrame::PunchGo { session, addr } => {
                if let Some(go) = self.punches.go.remove(&session) {
                    let _ = go.send(Ok(addr));
                }
            }
            RelayFrame::PunchFailed { request, code } => self.punches.failed(request, code),
            RelayFrame::Error { code, message } => {
                tracing::warn!(code, %message, "relay error");
                if code == error_code::REPLACED {
                    return Err(message);
                }
            }
            other => tracing::debug!(?other, "unexpected relay frame"),
        }
        Ok(())
    }

    /// Another peer opened a stream to us: handed to whoever takes incoming streams, or closed
    /// when too many wait.
    async fn on_incoming(&mut self, stream: u32, from: PeerId) {
        let (mut total, mut theirs) = (0, 0);
        for e in self.streams.values() {
            if let Some(by) = e.opened_by {
                total += 1;
                theirs += usize::from(by == from);
            }
        }
        if total >= MAX_INCOMING_STREAMS || theirs >= MAX_INCOMING_PER_PEER {
            tracing::debug!(peer = %from, total, theirs, "too many relayed streams; closed");
            let code = CloseCode::LimitExceeded;
            let _ = send(&self.out.frames, &RelayFrame::Close { stream, code }).await;
            return;
        }
        let (app, mut entry, far) = new_stream(from);
        entry.opened_by = Some(from);
        match self.incoming.try_send(Incoming { from, stream: app }) {
            Ok(()) => {
                self.streams.insert(stream, entry);
                spawn_bridge(stream, far, self.out.clone());
            }
            Err(_) => {
                let code = CloseCode::Other(16);
                let _ = send(&self.out.frames, &RelayFrame::Close { stream, code }).await;
            }
        }
    }

    /// The hub hands out a punch ticket: for our request (`request` ≠ 0), or an invitation.
    async fn on_punch_bind(
        &mut self,
        request: u32,
        ticket: PunchTicket,
        go: oneshot::Sender<Result<std::net::SocketAddr, CloseCode>>,
    ) {
        let session = ticket.session;
        self.punches.go.retain(|_, g| !g.is_closed());
        self.punches.go.insert(session, go);
        if request == 0 {
            // Nobody picks invitations up (punching is off) or too many wait: decline, so the
            // asker moves on to the relay at once.
            if self.invites.try_send(ticket).is_err() {
                self.punches.go.remove(&session);
                let _ = send(&self.out.frames, &RelayFrame::PunchDecline { session }).await;
            }
        } else if let Some(reply) = self.punches.requested.remove(&request) {
            let punches = &mut self.punches;
            punches.sessions.retain(|_, s| punches.go.contains_key(s));
            punches.sessions.insert(request, session);
            let _ = reply.send(Ok(ticket));
        }
    }
}

/// Punches in progress on one attached session.
#[derive(Default)]
struct Punches {
    /// Our requests waiting for the hub's `PunchBind`.
    requested: HashMap<u32, oneshot::Sender<Result<PunchTicket, RelayError>>>,
    /// Sessions waiting for the hub's `PunchGo` (or an error when the other side declined).
    go: HashMap<Nonce16, oneshot::Sender<Result<std::net::SocketAddr, CloseCode>>>,
    /// The session of each of our requests that got its ticket, for a later `PunchFailed`.
    sessions: HashMap<u32, Nonce16>,
}

impl Punches {
    /// The hub says punch `request` failed: our request was refused, or the invited peer
    /// declined after we got our ticket.
    fn failed(&mut self, request: u32, code: CloseCode) {
        if let Some(reply) = self.requested.remove(&request) {
            let _ = reply.send(Err(RelayError::PunchRefused(code)));
        } else if let Some(go) = self
            .sessions
            .remove(&request)
            .and_then(|session| self.go.remove(&session))
        {
            let _ = go.send(Err(code));
        }
    }
}

async fn send(frames: &mpsc::Sender<Message>, frame: &RelayFrame) -> Result<(), ()> {
    frames
        .send(Message::Binary(frame.to_vec().into()))
        .await
        .map_err(|_| ())
}

/// Moves a stream's bytes: pipe → `Data` frames as credit allows, and `Data` frames → pipe with
/// credit granted back as the application takes them.
fn spawn_bridge(stream: u32, far: Far, out: Outbound) {
    let Far {
        io,
        mut inbound,
        credit,
    } = far;
    let (mut read, mut write) = tokio::io::split(io);
    let up = out.clone();
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(MAX_DATA_LEN);
        loop {
            buf.reserve(MAX_DATA_LEN);
            let want = MAX_DATA_LEN.min(buf.capacity());
            let n = match (&mut read).take(want as u64).read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            match credit.acquire_many(n as u32).await {
                Ok(permits) => permits.forget(),
                Err(_) => return,
            }
            let data = buf.split().freeze();
            if send(&up.frames, &RelayFrame::Data { stream, data })
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = up.commands.send(Command::Close(stream)).await;
    });
    tokio::spawn(async move {
        let mut consumed = 0u32;
        while let Some(data) = inbound.recv().await {
            if write.write_all(&data).await.is_err() {
                break;
            }
            consumed += data.len() as u32;
            if consumed >= GRANT_STEP {
                let grant = RelayFrame::Window {
                    stream,
                    credit: consumed,
                };
                consumed = 0;
                if send(&out.frames, &grant).await.is_err() {
                    break;
                }
            }
        }
        let _ = write.shutdown().await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls_follow_the_tracker_url() {
        let url = |t: &str| relay_url(t).unwrap().as_str().to_owned();
        assert_eq!(url("http://t:8080"), "ws://t:8080/relay");
        assert_eq!(url("https://t/"), "wss://t/relay");
        assert_eq!(url("t:9"), "ws://t:9/relay");
        assert_eq!(url("ws://t:1"), "ws://t:1/relay");
        assert!(relay_url("ftp://t").is_err());
        assert!(relay_url("").is_err());
    }

    #[test]
    fn tracker_hosts_for_the_rendezvous() {
        assert_eq!(tracker_host("http://t:8080").unwrap(), "t");
        assert_eq!(tracker_host("https://t/").unwrap(), "t");
        assert_eq!(tracker_host("203.0.113.1:9").unwrap(), "203.0.113.1");
        assert_eq!(tracker_host("http://[::1]:8080").unwrap(), "::1");
        assert_eq!(tracker_host("http://u:p@t:1").unwrap(), "t");
        assert!(tracker_host("http://:8080").is_err());
    }

    #[tokio::test]
    async fn a_wss_relay_url_speaks_tls() {
        // A tracker behind an HTTPS proxy: the relay client must start a TLS handshake (and
        // would verify the certificate against the web PKI roots).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = RelayConfig {
            url: relay_url(&format!("https://127.0.0.1:{port}")).unwrap(),
            token: None,
            grant: None,
        };
        let identity = Identity::generate().unwrap();
        let client = tokio::spawn(async move { attach(&identity, &config).await });
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut hello = [0u8; 3];
        conn.read_exact(&mut hello).await.unwrap();
        // A TLS record: handshake (0x16), version 3.x.
        assert_eq!(&hello[..2], &[0x16, 0x03], "{hello:?}");
        drop(conn);
        assert!(client.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_stream_closed_abnormally_reads_as_an_error_and_a_normal_close_as_eof() {
        for (code, fails) in [(CloseCode::UnknownPeer, true), (CloseCode::Normal, false)] {
            let (mut app, entry, far) = new_stream(PeerId([1; 32]));
            entry.end(code);
            drop(far);
            let result = app.read(&mut [0u8; 8]).await;
            assert_eq!(result.is_err(), fails, "{code:?}: {result:?}");
        }
    }
}
