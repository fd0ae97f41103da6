//! `/relay?peer_id=…`: the relay hub. Peers that cannot reach each other directly attach here
//! over one WebSocket each and open tunnels (streams) to other attached peers; the hub forwards
//! the tunnel bytes, which are the peers' own Noise ciphertext.
//!
//! Attaching needs the tracker's usual credentials (`?token=`, `X-API-Key` or `Authorization`)
//! and a proof of the peer id's private key: the hub sends a fresh X25519 key and a nonce, the
//! peer answers with [`proof_mac`] keyed by the Diffie-Hellman of its static key and that fresh
//! key, which the hub recomputes from its side. A second attach of the same id replaces the first.
//!
//! Flow control is per stream and enforced here: a side may send [`INITIAL_WINDOW`] bytes plus
//! what the receiver granted with `Window`; more is a protocol violation that closes the tunnel.
//! Per-tunnel and total byte limits and an idle timeout close tunnels.
//!
//! Fairness: the hub never waits for a peer's queue. Frames for a peer go into its queue at
//! once or, when it holds more than `max_queued_bytes` (or [`OUTBOUND_QUEUE`] frames), the peer
//! is dropped as too slow a reader: its own tunnels close, and nobody else waited for it.
//! One connection holds at most `max_tunnels` tunnels, one credential attaches at most
//! `max_peers_per_key` ids, empty `Data` and zero `Window` frames are protocol violations, and
//! tunnel events reach the live feed at most [`TUNNEL_EVENTS_PER_SEC`] a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use curve25519_dalek::montgomery::MontgomeryPoint;
use futures_util::{SinkExt, StreamExt};
use p2p_proto::PeerId;
use p2p_proto::api::Event;
use p2p_proto::relay::{
    CloseCode, INCOMING_STREAM_BIT, INITIAL_WINDOW, RelayFrame, error_code, macs_equal, proof_mac,
};
use parking_lot::Mutex;
use poem::web::websocket::{CloseCode as WsCloseCode, Message, WebSocketStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::RelayArgs;
use crate::events::EventBus;
use crate::metrics::Metrics;
use punch::{PunchRefusal, Rendezvous, Ticket};

pub mod punch;

/// How long a peer has to answer the challenge.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued towards one attached peer before it counts as too slow a reader.
const OUTBOUND_QUEUE: usize = 4096;
/// Tunnel events published a second at most (with a burst of as many); more are not shown.
const TUNNEL_EVENTS_PER_SEC: u32 = 50;
/// Largest grant a receiver may accumulate for one stream.
const MAX_ALLOWANCE: i64 = 64 * INITIAL_WINDOW as i64;

/// The relay's limits.
#[derive(Debug, Clone)]
pub struct RelayLimits {
    pub max_tunnel_bytes: u64,
    pub max_total_bytes: u64,
    pub idle: Duration,
    pub max_tunnels: usize,
    pub max_peers_per_key: usize,
    pub max_queued_bytes: u64,
}

impl From<&RelayArgs> for RelayLimits {
    fn from(a: &RelayArgs) -> Self {
        Self {
            max_tunnel_bytes: a.relay_max_tunnel_bytes,
            max_total_bytes: a.relay_max_total_bytes,
            idle: Duration::from_secs(a.relay_idle_secs),
            max_tunnels: a.relay_max_tunnels as usize,
            max_peers_per_key: a.relay_max_peers_per_key as usize,
            max_queued_bytes: a.relay_max_queued_bytes,
        }
    }
}

/// The attached peers and their tunnels.
#[derive(Debug)]
pub struct RelayHub {
    limits: RelayLimits,
    peers: Mutex<HashMap<PeerId, Arc<Conn>>>,
    next_conn: AtomicU64,
    relayed: AtomicU64,
    metrics: Arc<Metrics>,
    events: EventBus,
    shutdown: CancellationToken,
    started: Instant,
    /// Attached connections per credential (principal subject).
    per_key: Mutex<HashMap<String, usize>>,
    /// Paces tunnel events on the live feed.
    tunnel_events: governor::DefaultDirectRateLimiter,
    /// Hole-punch sessions coordinated over the attached WebSockets.
    pub punch: Rendezvous,
}

/// One attached peer.
#[derive(Debug)]
struct Conn {
    id: u64,
    peer_id: PeerId,
    /// Who attached it (the credential's subject).
    principal: String,
    /// Encoded frames, with the tunnel bytes in each (for the queued-bytes gauge).
    out: mpsc::Sender<(Vec<u8>, i64)>,
    /// Bytes of frames queued in `out`.
    queued: AtomicI64,
    max_queued: i64,
    /// Fired when the peer reads too slowly to keep up with what is queued for it.
    slow: CancellationToken,
    routes: Mutex<HashMap<u32, Route>>,
    next_incoming: AtomicU32,
    /// Fired when another attach replaces this one.
    replaced: CancellationToken,
}

/// Where one stream id of a connection leads.
#[derive(Clone)]
struct Route {
    peer: Arc<Conn>,
    /// The stream's id on the other connection.
    stream: u32,
    tunnel: Arc<Tunnel>,
    /// Bytes this side may still send.
    send_allowance: Arc<AtomicI64>,
    /// Bytes the other side may still send (what our `Window` frames add to).
    grant: Arc<AtomicI64>,
}

impl std::fmt::Debug for Route {
    // Not derived: a route points at a connection whose routes point back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("peer", &self.peer.peer_id)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Tunnel {
    opener: PeerId,
    target: PeerId,
    bytes: AtomicU64,
    /// Milliseconds since the hub started at the last data.
    last_active_ms: AtomicU64,
    closed: AtomicBool,
}

/// Why a stream frame ends its tunnel.
enum Verdict {
    Forward,
    Close(CloseCode),
}

impl Conn {
    /// Queues a frame for this peer without waiting. When its queue is full the peer reads
    /// too slowly: it is dropped (`slow` fires) and the frame with it.
    async fn send(&self, frame: &RelayFrame, metrics: &Metrics) {
        if !self.try_send_metered(frame, metrics) && !self.slow.is_cancelled() {
            tracing::info!(peer = %self.peer_id, "relay peer reads too slowly; dropping it");
            self.slow.cancel();
        }
    }

    fn try_send_metered(&self, frame: &RelayFrame, metrics: &Metrics) -> bool {
        let bytes = frame.to_vec();
        let len = bytes.len() as i64;
        let data = match frame {
            RelayFrame::Data { data, .. } => data.len() as i64,
            _ => 0,
        };
        if self.queued.fetch_add(len, Ordering::AcqRel) + len > self.max_queued {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        metrics.relay_queued_bytes.inc_by(data);
        if self.out.try_send((bytes, data)).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            metrics.relay_queued_bytes.dec_by(data);
            return false;
        }
        true
    }

    /// Queues a control frame without waiting; dropped when the peer's queue is full.
    fn try_send(&self, frame: &RelayFrame, metrics: &Metrics) -> bool {
        self.try_send_metered(frame, metrics)
    }

    fn route(&self, stream: u32) -> Option<Route> {
        self.routes.lock().get(&stream).cloned()
    }

    fn take_route(&self, stream: u32) -> Option<Route> {
        self.routes.lock().remove(&stream)
    }

    /// Tunnels open through this connection (opened by it or to it).
    fn tunnels(&self) -> usize {
        self.routes.lock().len()
    }
}

impl RelayHub {
    pub fn new(
        limits: RelayLimits,
        metrics: Arc<Metrics>,
        events: EventBus,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            limits,
            peers: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            relayed: AtomicU64::new(0),
            metrics,
            events,
            shutdown,
            started: Instant::now(),
            per_key: Mutex::new(HashMap::new()),
            tunnel_events: governor::RateLimiter::direct(governor::Quota::per_second(
                std::num::NonZeroU32::new(TUNNEL_EVENTS_PER_SEC)
                    .unwrap_or(std::num::NonZeroU32::MIN),
            )),
            punch: Rendezvous::default(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Queues `frame` for `peer` when it is attached.
    pub async fn send_to(&self, peer: &PeerId, frame: &RelayFrame) {
        let conn = self.peers.lock().get(peer).cloned();
        if let Some(conn) = conn {
            conn.send(frame, &self.metrics).await;
        }
    }

    /// Queues a control `frame` for `peer` without waiting: a peer that does not read its
    /// WebSocket must not hold up the caller (the rendezvous serves every punch on one task).
    /// The frame is dropped when its queue is full; that punch then times out.
    pub fn try_send_to(&self, peer: &PeerId, frame: &RelayFrame) {
        let conn = self.peers.lock().get(peer).cloned();
        if let Some(conn) = conn
            && !conn.try_send(frame, &self.metrics)
        {
            tracing::debug!(%peer, "relay queue full; punch frame dropped");
        }
    }

    /// A punch request: both peers get their ticket, or the asker hears why not.
    async fn punch_request(&self, conn: &Arc<Conn>, request: u32, to: PeerId) {
        self.metrics.punch_requests.inc();
        let target = self.peers.lock().get(&to).cloned();
        let (target, udp_port) = match (target, self.punch.udp_port()) {
            (Some(t), Some(port)) if request != 0 && to != conn.peer_id => (t, port),
            (None, _) => {
                let code = CloseCode::UnknownPeer;
                conn.send(&RelayFrame::PunchFailed { request, code }, &self.metrics)
                    .await;
                return;
            }
            (_, None) => {
                let code = CloseCode::Unsupported;
                conn.send(&RelayFrame::PunchFailed { request, code }, &self.metrics)
                    .await;
                return;
            }
            _ => {
                let code = CloseCode::ProtocolViolation;
                conn.send(&RelayFrame::PunchFailed { request, code }, &self.metrics)
                    .await;
                return;
            }
        };
        let [mine, theirs] = match self.punch.open(conn.peer_id, &conn.principal, request, to) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "punch refused");
                let code = match e {
                    PunchRefusal::Disabled => CloseCode::Unsupported,
                    PunchRefusal::Busy => CloseCode::LimitExceeded,
                };
                conn.send(&RelayFrame::PunchFailed { request, code }, &self.metrics)
                    .await;
                return;
            }
        };
        let bind = |request, peer, t: Ticket| RelayFrame::PunchBind {
            request,
            peer,
            session: t.session,
            token: t.token,
            udp_port,
        };
        target
            .send(&bind(0, conn.peer_id, theirs), &self.metrics)
            .await;
        conn.send(&bind(request, to, mine), &self.metrics).await;
    }

    /// One of `principal`'s places for an attached peer id, released when dropped; `None` when
    /// it has them all.
    fn key_slot(self: &Arc<Self>, principal: &str) -> Option<KeySlot> {
        let mut per_key = self.per_key.lock();
        let n = per_key.entry(principal.to_owned()).or_insert(0);
        if *n >= self.limits.max_peers_per_key {
            return None;
        }
        *n += 1;
        Some(KeySlot {
            hub: self.clone(),
            principal: principal.to_owned(),
        })
    }

    /// Whether `peer` is attached now.
    pub fn is_attached(&self, peer: &PeerId) -> bool {
        self.peers.lock().contains_key(peer)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs one WebSocket: the attach proof, then frames until it closes.
    pub async fn serve(
        self: Arc<Self>,
        stream: WebSocketStream,
        claimed: PeerId,
        principal: String,
        waiting: tokio::sync::OwnedSemaphorePermit,
    ) {
        let (mut sink, mut source) = stream.split();
        let peer_id = match attach(&mut sink, &mut source, claimed).await {
            Ok(id) => id,
            Err(reason) => {
                let refusal = RelayFrame::Error {
                    code: error_code::BAD_PROOF,
                    message: reason.clone(),
                };
                // A peer that does not read holds up nothing but this task, and not for long.
                let _ = tokio::time::timeout(ATTACH_TIMEOUT, async {
                    let _ = sink.send(Message::Binary(refusal.to_vec())).await;
                    let _ = sink
                        .send(Message::Close(Some((WsCloseCode::Policy, reason))))
                        .await;
                })
                .await;
                return;
            }
        };
        drop(waiting);
        let Some(_key_slot) = self.key_slot(&principal) else {
            let refusal = RelayFrame::Error {
                code: error_code::PROTOCOL,
                message: format!(
                    "this credential has {} peer ids attached already",
                    self.limits.max_peers_per_key
                ),
            };
            let _ = tokio::time::timeout(ATTACH_TIMEOUT, async {
                let _ = sink.send(Message::Binary(refusal.to_vec())).await;
                let _ = sink.close().await;
            })
            .await;
            return;
        };
        let (out, mut outbound) = mpsc::channel::<(Vec<u8>, i64)>(OUTBOUND_QUEUE);
        let conn = Arc::new(Conn {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            peer_id,
            principal,
            out,
            queued: AtomicI64::new(0),
            max_queued: i64::try_from(self.limits.max_queued_bytes).unwrap_or(i64::MAX),
            slow: CancellationToken::new(),
            routes: Mutex::new(HashMap::new()),
            next_incoming: AtomicU32::new(0),
            replaced: CancellationToken::new(),
        });
        let previous = self.peers.lock().insert(peer_id, conn.clone());
        if let Some(old) = previous {
            old.replaced.cancel();
        } else {
            self.metrics.relay_connections.inc();
        }
        self.events.publish(Event::RelayConnected { peer_id });
        tracing::info!(peer = %peer_id, "peer attached to the relay");

        // The writer: drains the queue into the WebSocket.
        let metrics = self.metrics.clone();
        let writer_conn = Arc::downgrade(&conn);
        let writer = tokio::spawn(async move {
            let first = RelayFrame::Attached.to_vec();
            if sink.send(Message::Binary(first)).await.is_err() {
                return sink;
            }
            while let Some((bytes, data)) = outbound.recv().await {
                let len = bytes.len() as i64;
                let sent = sink.send(Message::Binary(bytes)).await;
                metrics.relay_queued_bytes.dec_by(data);
                if let Some(c) = writer_conn.upgrade() {
                    c.queued.fetch_sub(len, Ordering::AcqRel);
                }
                if sent.is_err() {
                    break;
                }
            }
            sink
        });

        let sweep_every = (self.limits.idle / 4).max(Duration::from_millis(250));
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.tick().await;
        let replaced = conn.replaced.clone();
        let slow = conn.slow.clone();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = slow.cancelled() => break,
                _ = replaced.cancelled() => {
                    conn.send(&RelayFrame::Error {
                        code: error_code::REPLACED,
                        message: "this peer id attached again elsewhere".into(),
                    }, &self.metrics).await;
                    break;
                }
                _ = sweep.tick() => self.close_idle(&conn).await,
                incoming = source.next() => match incoming {
                    Some(Ok(Message::Binary(bytes))) => {
                        match RelayFrame::decode(Bytes::from(bytes)) {
                            Ok(frame) => self.handle(&conn, frame).await,
                            Err(e) => {
                                conn.send(&RelayFrame::Error {
                                    code: error_code::PROTOCOL,
                                    message: e.to_string(),
                                }, &self.metrics).await;
                                break;
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
            }
        }

        // Detach: end every tunnel of this connection, then stop writing.
        let routes: Vec<u32> = conn.routes.lock().keys().copied().collect();
        for stream in routes {
            self.close_tunnel(&conn, stream, None, CloseCode::Gone)
                .await;
        }
        let still_us = {
            let mut p = self.peers.lock();
            if p.get(&peer_id).is_some_and(|c| c.id == conn.id) {
                p.remove(&peer_id);
                true
            } else {
                false
            }
        };
        if still_us {
            self.metrics.relay_connections.dec();
            self.events.publish(Event::RelayDisconnected { peer_id });
        }
        tracing::info!(peer = %peer_id, "peer detached from the relay");
        // Dropping the last sender ends the writer once it has flushed the queue; a route
        // another connection added in the meantime may still hold one, hence the bound.
        drop(conn);
        if let Ok(Ok(mut sink)) = tokio::time::timeout(Duration::from_secs(5), writer).await {
            let _ = sink.close().await;
        }
    }

    async fn handle(&self, conn: &Arc<Conn>, frame: RelayFrame) {
        match frame {
            RelayFrame::Open { stream, to } => self.open(conn, stream, to).await,
            RelayFrame::Data { stream, data } => {
                let Some(route) = conn.route(stream) else {
                    // Late data for a stream the hub already closed: dropped.
                    return;
                };
                // An empty frame carries nothing but would cost a forward: not allowed.
                let verdict = if data.is_empty() {
                    Verdict::Close(CloseCode::ProtocolViolation)
                } else {
                    self.account(&route, data.len())
                };
                match verdict {
                    Verdict::Forward => {
                        route
                            .peer
                            .send(
                                &RelayFrame::Data {
                                    stream: route.stream,
                                    data,
                                },
                                &self.metrics,
                            )
                            .await;
                    }
                    Verdict::Close(code) => {
                        self.close_tunnel(conn, stream, Some(code), code).await;
                    }
                }
            }
            RelayFrame::Window { stream, credit } => {
                let Some(route) = conn.route(stream) else {
                    return;
                };
                let after =
                    route.grant.fetch_add(i64::from(credit), Ordering::AcqRel) + i64::from(credit);
                if credit == 0 || after > MAX_ALLOWANCE {
                    self.close_tunnel(
                        conn,
                        stream,
                        Some(CloseCode::ProtocolViolation),
                        CloseCode::ProtocolViolation,
                    )
                    .await;
                    return;
                }
                route
                    .peer
                    .send(
                        &RelayFrame::Window {
                            stream: route.stream,
                            credit,
                        },
                        &self.metrics,
                    )
                    .await;
            }
            RelayFrame::Close { stream, code } => {
                self.close_tunnel(conn, stream, None, code).await;
            }
            RelayFrame::PunchRequest { request, to } => {
                self.punch_request(conn, request, to).await;
            }
            RelayFrame::PunchDecline { session } => {
                if let Some((asker, request)) = self.punch.decline(&session, &conn.peer_id) {
                    let code = CloseCode::Unsupported;
                    self.send_to(&asker, &RelayFrame::PunchFailed { request, code })
                        .await;
                }
            }
            other => {
                conn.send(
                    &RelayFrame::Error {
                        code: error_code::PROTOCOL,
                        message: format!("unexpected frame {other:?} after attaching"),
                    },
                    &self.metrics,
                )
                .await;
            }
        }
    }

    async fn open(&self, conn: &Arc<Conn>, stream: u32, to: PeerId) {
        if stream & INCOMING_STREAM_BIT != 0 || conn.route(stream).is_some() {
            conn.send(
                &RelayFrame::Close {
                    stream,
                    code: CloseCode::ProtocolViolation,
                },
                &self.metrics,
            )
            .await;
            return;
        }
        let target = self
            .peers
            .lock()
            .get(&to)
            .cloned()
            .filter(|t| t.peer_id != conn.peer_id);
        let over_budget = (self.limits.max_total_bytes > 0
            && self.relayed.load(Ordering::Relaxed) >= self.limits.max_total_bytes)
            || conn.tunnels() >= self.limits.max_tunnels
            || target
                .as_ref()
                .is_some_and(|t| t.tunnels() >= self.limits.max_tunnels);
        let target = match target {
            Some(t) if !over_budget => t,
            found => {
                let code = if found.is_some() || over_budget {
                    CloseCode::LimitExceeded
                } else {
                    CloseCode::UnknownPeer
                };
                conn.send(&RelayFrame::Close { stream, code }, &self.metrics)
                    .await;
                return;
            }
        };
        let far = INCOMING_STREAM_BIT
            | (target.next_incoming.fetch_add(1, Ordering::Relaxed) & !INCOMING_STREAM_BIT);
        let tunnel = Arc::new(Tunnel {
            opener: conn.peer_id,
            target: to,
            bytes: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(self.now_ms()),
            closed: AtomicBool::new(false),
        });
        let near_allowance = Arc::new(AtomicI64::new(i64::from(INITIAL_WINDOW)));
        let far_allowance = Arc::new(AtomicI64::new(i64::from(INITIAL_WINDOW)));
        {
            let mut r = conn.routes.lock();
            r.insert(
                stream,
                Route {
                    peer: target.clone(),
                    stream: far,
                    tunnel: tunnel.clone(),
                    send_allowance: near_allowance.clone(),
                    grant: far_allowance.clone(),
                },
            );
        }
        {
            let mut r = target.routes.lock();
            r.insert(
                far,
                Route {
                    peer: conn.clone(),
                    stream,
                    tunnel,
                    send_allowance: far_allowance,
                    grant: near_allowance,
                },
            );
        }
        self.metrics.relay_tunnels.inc();
        if self.tunnel_events.check().is_ok() {
            self.events.publish(Event::TunnelOpened {
                from: conn.peer_id,
                to,
            });
        }
        target
            .send(
                &RelayFrame::Incoming {
                    stream: far,
                    from: conn.peer_id,
                },
                &self.metrics,
            )
            .await;
    }

    /// Charges `len` bytes to the route's window and the limits.
    fn account(&self, route: &Route, len: usize) -> Verdict {
        let len = len as i64;
        if route.send_allowance.fetch_sub(len, Ordering::AcqRel) < len {
            return Verdict::Close(CloseCode::ProtocolViolation);
        }
        let carried = route.tunnel.bytes.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
        let total = self.relayed.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
        self.metrics.relay_bytes.inc_by(len as u64);
        route
            .tunnel
            .last_active_ms
            .store(self.now_ms(), Ordering::Relaxed);
        if (self.limits.max_tunnel_bytes > 0 && carried > self.limits.max_tunnel_bytes)
            || (self.limits.max_total_bytes > 0 && total > self.limits.max_total_bytes)
        {
            return Verdict::Close(CloseCode::LimitExceeded);
        }
        Verdict::Forward
    }

    /// Ends the tunnel behind `conn`'s `stream`: tells the other side `far_code`, and this side
    /// `near_code` when the hub (not this side) ended it.
    async fn close_tunnel(
        &self,
        conn: &Arc<Conn>,
        stream: u32,
        near_code: Option<CloseCode>,
        far_code: CloseCode,
    ) {
        let Some(route) = conn.take_route(stream) else {
            return;
        };
        route.peer.take_route(route.stream);
        if let Some(code) = near_code {
            conn.send(&RelayFrame::Close { stream, code }, &self.metrics)
                .await;
        }
        route
            .peer
            .send(
                &RelayFrame::Close {
                    stream: route.stream,
                    code: far_code,
                },
                &self.metrics,
            )
            .await;
        if !route.tunnel.closed.swap(true, Ordering::AcqRel) {
            self.metrics.relay_tunnels.dec();
            let reason = near_code.unwrap_or(far_code).to_string();
            if self.tunnel_events.check().is_err() {
                return;
            }
            self.events.publish(Event::TunnelClosed {
                from: route.tunnel.opener,
                to: route.tunnel.target,
                bytes: route.tunnel.bytes.load(Ordering::Relaxed),
                reason,
            });
        }
    }

    async fn close_idle(&self, conn: &Arc<Conn>) {
        let now = self.now_ms();
        let idle_ms = self.limits.idle.as_millis() as u64;
        let idle: Vec<u32> = conn
            .routes
            .lock()
            .iter()
            .filter(|(_, route)| {
                now.saturating_sub(route.tunnel.last_active_ms.load(Ordering::Relaxed)) >= idle_ms
            })
            .map(|(s, _)| *s)
            .collect();
        for stream in idle {
            self.close_tunnel(conn, stream, Some(CloseCode::Idle), CloseCode::Idle)
                .await;
        }
    }
}

/// A credential's place for one attached peer id.
struct KeySlot {
    hub: Arc<RelayHub>,
    principal: String,
}

impl Drop for KeySlot {
    fn drop(&mut self) {
        let mut per_key = self.hub.per_key.lock();
        if let Some(n) = per_key.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_key.remove(&self.principal);
            }
        }
    }
}

type Sink = futures_util::stream::SplitSink<WebSocketStream, Message>;
type Source = futures_util::stream::SplitStream<WebSocketStream>;

/// Challenges the peer and checks its proof; the error is the reason shown to it.
async fn attach(sink: &mut Sink, source: &mut Source, claimed: PeerId) -> Result<PeerId, String> {
    let mut secret = [0u8; 32];
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut secret)
        .and_then(|()| getrandom::fill(&mut nonce))
        .map_err(|_| "no randomness".to_owned())?;
    let server_key = MontgomeryPoint::mul_base_clamped(secret).to_bytes();
    let challenge = RelayFrame::Challenge { server_key, nonce };
    sink.send(Message::Binary(challenge.to_vec()))
        .await
        .map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(ATTACH_TIMEOUT, async {
        loop {
            match source.next().await {
                Some(Ok(Message::Binary(b))) => return Some(b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await
    .map_err(|_| "no proof sent in time".to_owned())?
    .ok_or_else(|| "expected a binary proof frame".to_owned())?;
    let Ok(RelayFrame::Proof { peer_id, mac }) = RelayFrame::decode(Bytes::from(answer)) else {
        return Err("expected a proof frame".into());
    };
    if peer_id != claimed {
        return Err("the proof is for another peer id than ?peer_id".into());
    }
    let shared = MontgomeryPoint(peer_id.0).mul_clamped(secret).to_bytes();
    // A low-order "public key" gives an all-zero secret anyone can compute.
    if shared == [0u8; 32] {
        return Err("invalid peer id".into());
    }
    if !macs_equal(&mac, &proof_mac(&shared, &server_key, &nonce, &peer_id)) {
        return Err("the proof does not match the peer id".into());
    }
    Ok(peer_id)
}
