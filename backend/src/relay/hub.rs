//! The hub's routing state and its rules: which peer ids are attached, which tunnels join
//! them, what each side may still send, and when a tunnel or an attachment ends.
//!
//! Nothing here touches a socket. An attached peer is an [`Attachment`] with a bounded queue of
//! encoded frames; the socket loop ([`super::conn`]) feeds the hub what it reads and writes out
//! what the queue holds. Every rule answers at once, without waiting for any peer, so a slow
//! reader stalls nobody but itself (it is dropped when its queue overflows).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use p2p_proto::api::Event;
use p2p_proto::relay::{CloseCode, INCOMING_STREAM_BIT, INITIAL_WINDOW, RelayFrame, error_code};
use p2p_proto::{FileId, PeerId};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::punch::{PunchRefusal, Rendezvous, Ticket};
use crate::config::RelayArgs;
use crate::events::EventBus;
use crate::metrics::Metrics;

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
    peers: Mutex<HashMap<PeerId, Arc<Attachment>>>,
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

/// What an attachment let in by a read grant (a share link's receiver, with no credentials) may
/// do: open tunnels to the peers that had announced the grant's id when it attached, until the
/// grant expires. Nobody may open a tunnel to it or punch to it: it dials, it is not reachable.
#[derive(Debug, Clone)]
pub struct DialScope {
    /// The id the grant is for.
    pub file: FileId,
    /// The peers it may dial.
    pub peers: HashSet<PeerId>,
    /// When the grant expires: the attachment ends then.
    pub until: Instant,
}

/// One attached peer: who it is and the queue of frames on their way to it.
#[derive(Debug)]
pub(super) struct Attachment {
    id: u64,
    pub(super) peer_id: PeerId,
    /// Who attached it (the credential's subject).
    principal: String,
    /// Encoded frames, with the tunnel bytes in each (for the queued-bytes gauge).
    out: mpsc::Sender<(Vec<u8>, i64)>,
    /// Bytes of frames queued in `out`.
    queued: AtomicI64,
    max_queued: i64,
    /// Fired when the peer reads too slowly to keep up with what is queued for it.
    pub(super) slow: CancellationToken,
    routes: Mutex<HashMap<u32, Route>>,
    next_incoming: AtomicU32,
    /// Fired when another attach replaces this one.
    pub(super) replaced: CancellationToken,
    /// Set when a read grant let it in ([`DialScope`]).
    pub(super) scope: Option<DialScope>,
}

/// What [`RelayHub::attach`] hands the socket loop.
pub(super) struct Attached {
    pub(super) conn: Arc<Attachment>,
    pub(super) outbound: Outbound,
    /// The credential's place; the attachment counts against it until this drops.
    pub(super) slot: KeySlot,
}

/// The receiving end of an attachment's queue, for the socket writer.
#[derive(Debug)]
pub(super) struct Outbound {
    rx: mpsc::Receiver<(Vec<u8>, i64)>,
    conn: Weak<Attachment>,
    metrics: Arc<Metrics>,
}

/// A frame taken from the queue, still counted as queued until [`Outbound::release`].
#[derive(Debug)]
pub(super) struct Taken {
    len: i64,
    data: i64,
}

impl Outbound {
    /// The next encoded frame, or `None` once every sender is gone.
    pub(super) async fn next(&mut self) -> Option<(Vec<u8>, Taken)> {
        let (bytes, data) = self.rx.recv().await?;
        let len = bytes.len() as i64;
        Some((bytes, Taken { len, data }))
    }

    /// The frame left the hub (it was written, or the socket failed).
    pub(super) fn release(&self, taken: Taken) {
        self.metrics.relay_queued_bytes.dec_by(taken.data);
        if let Some(c) = self.conn.upgrade() {
            c.queued.fetch_sub(taken.len, Ordering::AcqRel);
        }
    }
}

/// Why an attach is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum AttachRefusal {
    #[error("this credential has {0} peer ids attached already")]
    TooManyIds(usize),
}

/// Where one stream id of a connection leads.
#[derive(Clone)]
struct Route {
    peer: Arc<Attachment>,
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

/// Whether a stream frame is forwarded or ends its tunnel.
enum Verdict {
    Forward,
    Close(CloseCode),
}

impl Attachment {
    /// Queues a frame for this peer without waiting. When its queue is full the peer reads
    /// too slowly: it is dropped (`slow` fires) and the frame with it.
    pub(super) fn send(&self, frame: &RelayFrame, metrics: &Metrics) {
        if !self.try_send(frame, metrics) && !self.slow.is_cancelled() {
            tracing::info!(peer = %self.peer_id, "relay peer reads too slowly; dropping it");
            self.slow.cancel();
        }
    }

    /// Queues a frame without waiting; `false` (and the frame dropped) when the queue is full.
    fn try_send(&self, frame: &RelayFrame, metrics: &Metrics) -> bool {
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

    pub(super) fn limits(&self) -> &RelayLimits {
        &self.limits
    }

    /// Fired when the tracker shuts down.
    pub(super) fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Whether `peer` is attached now.
    pub fn is_attached(&self, peer: &PeerId) -> bool {
        self.peers.lock().contains_key(peer)
    }

    /// Queues `frame` for `peer` when it is attached; a peer whose queue is full is dropped.
    pub fn send_to(&self, peer: &PeerId, frame: &RelayFrame) {
        let conn = self.peers.lock().get(peer).cloned();
        if let Some(conn) = conn {
            conn.send(frame, &self.metrics);
        }
    }

    /// Queues a control `frame` for `peer` and drops it when the queue is full (that punch
    /// then times out); the peer stays attached.
    pub fn try_send_to(&self, peer: &PeerId, frame: &RelayFrame) {
        let conn = self.peers.lock().get(peer).cloned();
        if let Some(conn) = conn
            && !conn.try_send(frame, &self.metrics)
        {
            tracing::debug!(%peer, "relay queue full; punch frame dropped");
        }
    }

    /// [`RelayHub::attach_scoped`] with credentials.
    #[cfg(test)]
    pub(super) fn attach(
        self: &Arc<Self>,
        peer_id: PeerId,
        principal: String,
    ) -> Result<Attached, AttachRefusal> {
        self.attach_scoped(peer_id, principal, None)
    }

    /// Attaches `peer_id` (its key proven) for `principal`, limited to `scope` when a read
    /// grant (not a credential) let it in. A second attach of the same id replaces the first,
    /// whose `replaced` fires.
    pub(super) fn attach_scoped(
        self: &Arc<Self>,
        peer_id: PeerId,
        principal: String,
        scope: Option<DialScope>,
    ) -> Result<Attached, AttachRefusal> {
        let slot = self
            .key_slot(&principal)
            .ok_or(AttachRefusal::TooManyIds(self.limits.max_peers_per_key))?;
        let (out, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let conn = Arc::new(Attachment {
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
            scope,
        });
        let previous = self.peers.lock().insert(peer_id, conn.clone());
        if let Some(old) = previous {
            old.replaced.cancel();
        } else {
            self.metrics.relay_connections.inc();
        }
        self.events.publish(Event::RelayConnected { peer_id });
        tracing::info!(peer = %peer_id, "peer attached to the relay");
        let outbound = Outbound {
            rx,
            conn: Arc::downgrade(&conn),
            metrics: self.metrics.clone(),
        };
        Ok(Attached {
            conn,
            outbound,
            slot,
        })
    }

    /// Ends every tunnel of `conn` and forgets it (unless another attach replaced it already).
    pub(super) fn detach(&self, conn: &Arc<Attachment>) {
        let routes: Vec<u32> = conn.routes.lock().keys().copied().collect();
        for stream in routes {
            self.close_tunnel(conn, stream, None, CloseCode::Gone);
        }
        let peer_id = conn.peer_id;
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
    }

    /// Tells `conn` why the hub ends it.
    pub(super) fn refuse(&self, conn: &Attachment, code: u8, message: String) {
        conn.send(&RelayFrame::Error { code, message }, &self.metrics);
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

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Acts on one frame `conn` sent after attaching.
    pub(super) fn handle(&self, conn: &Arc<Attachment>, frame: RelayFrame) {
        match frame {
            RelayFrame::Open { stream, to } => self.open(conn, stream, to),
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
                        let stream = route.stream;
                        route
                            .peer
                            .send(&RelayFrame::Data { stream, data }, &self.metrics);
                    }
                    Verdict::Close(code) => self.close_tunnel(conn, stream, Some(code), code),
                }
            }
            RelayFrame::Window { stream, credit } => {
                let Some(route) = conn.route(stream) else {
                    return;
                };
                let after =
                    route.grant.fetch_add(i64::from(credit), Ordering::AcqRel) + i64::from(credit);
                if credit == 0 || after > MAX_ALLOWANCE {
                    let code = CloseCode::ProtocolViolation;
                    self.close_tunnel(conn, stream, Some(code), code);
                    return;
                }
                let stream = route.stream;
                route
                    .peer
                    .send(&RelayFrame::Window { stream, credit }, &self.metrics);
            }
            RelayFrame::Close { stream, code } => self.close_tunnel(conn, stream, None, code),
            RelayFrame::PunchRequest { request, to } => self.punch_request(conn, request, to),
            RelayFrame::PunchDecline { session } => {
                if let Some((asker, request)) = self.punch.decline(&session, &conn.peer_id) {
                    let code = CloseCode::Unsupported;
                    self.send_to(&asker, &RelayFrame::PunchFailed { request, code });
                }
            }
            other => self.refuse(
                conn,
                error_code::PROTOCOL,
                format!("unexpected frame {other:?} after attaching"),
            ),
        }
    }

    fn open(&self, conn: &Arc<Attachment>, stream: u32, to: PeerId) {
        if stream & INCOMING_STREAM_BIT != 0 || conn.route(stream).is_some() {
            let code = CloseCode::ProtocolViolation;
            conn.send(&RelayFrame::Close { stream, code }, &self.metrics);
            return;
        }
        // A grant's holder reaches the peers of its id only, and nobody reaches it: to either,
        // the others are not there.
        let allowed = conn
            .scope
            .as_ref()
            .is_none_or(|s| s.peers.contains(&to) && Instant::now() < s.until);
        let target = self
            .peers
            .lock()
            .get(&to)
            .cloned()
            .filter(|t| allowed && t.peer_id != conn.peer_id && t.scope.is_none());
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
                conn.send(&RelayFrame::Close { stream, code }, &self.metrics);
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
        conn.routes.lock().insert(
            stream,
            Route {
                peer: target.clone(),
                stream: far,
                tunnel: tunnel.clone(),
                send_allowance: near_allowance.clone(),
                grant: far_allowance.clone(),
            },
        );
        target.routes.lock().insert(
            far,
            Route {
                peer: conn.clone(),
                stream,
                tunnel,
                send_allowance: far_allowance,
                grant: near_allowance,
            },
        );
        self.metrics.relay_tunnels.inc();
        if self.tunnel_events.check().is_ok() {
            self.events.publish(Event::TunnelOpened {
                from: conn.peer_id,
                to,
            });
        }
        let from = conn.peer_id;
        target.send(&RelayFrame::Incoming { stream: far, from }, &self.metrics);
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
    fn close_tunnel(
        &self,
        conn: &Arc<Attachment>,
        stream: u32,
        near_code: Option<CloseCode>,
        far_code: CloseCode,
    ) {
        let Some(route) = conn.take_route(stream) else {
            return;
        };
        route.peer.take_route(route.stream);
        if let Some(code) = near_code {
            conn.send(&RelayFrame::Close { stream, code }, &self.metrics);
        }
        route.peer.send(
            &RelayFrame::Close {
                stream: route.stream,
                code: far_code,
            },
            &self.metrics,
        );
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

    /// Closes `conn`'s tunnels that carried nothing for the idle limit.
    pub(super) fn close_idle(&self, conn: &Arc<Attachment>) {
        self.close_idle_at(conn, self.now_ms());
    }

    fn close_idle_at(&self, conn: &Arc<Attachment>, now_ms: u64) {
        let idle_ms = self.limits.idle.as_millis() as u64;
        let idle: Vec<u32> = conn
            .routes
            .lock()
            .iter()
            .filter(|(_, route)| {
                now_ms.saturating_sub(route.tunnel.last_active_ms.load(Ordering::Relaxed))
                    >= idle_ms
            })
            .map(|(s, _)| *s)
            .collect();
        for stream in idle {
            let code = CloseCode::Idle;
            self.close_tunnel(conn, stream, Some(code), code);
        }
    }

    /// A punch request: both peers get their ticket, or the asker hears why not.
    fn punch_request(&self, conn: &Arc<Attachment>, request: u32, to: PeerId) {
        self.metrics.punch_requests.inc();
        let failed = |code| conn.send(&RelayFrame::PunchFailed { request, code }, &self.metrics);
        // Neither side of a punch may be a grant's holder: it reaches peers through the relay.
        let target = match conn.scope {
            Some(_) => None,
            None => self
                .peers
                .lock()
                .get(&to)
                .cloned()
                .filter(|t| t.scope.is_none()),
        };
        let (target, udp_port) = match (target, self.punch.udp_port()) {
            (Some(t), Some(port)) if request != 0 && to != conn.peer_id => (t, port),
            (None, _) => return failed(CloseCode::UnknownPeer),
            (_, None) => return failed(CloseCode::Unsupported),
            _ => return failed(CloseCode::ProtocolViolation),
        };
        let [mine, theirs] = match self.punch.open(conn.peer_id, &conn.principal, request, to) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "punch refused");
                return failed(match e {
                    PunchRefusal::Disabled => CloseCode::Unsupported,
                    PunchRefusal::Busy => CloseCode::LimitExceeded,
                });
            }
        };
        let bind = |request, peer, t: Ticket| RelayFrame::PunchBind {
            request,
            peer,
            session: t.session,
            token: t.token,
            udp_port,
        };
        target.send(&bind(0, conn.peer_id, theirs), &self.metrics);
        conn.send(&bind(request, to, mine), &self.metrics);
    }
}

/// A credential's place for one attached peer id.
pub(super) struct KeySlot {
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

#[cfg(test)]
mod tests {
    use p2p_proto::relay::MAX_DATA_LEN;

    use super::*;
    use crate::clock::SystemClock;

    fn limits() -> RelayLimits {
        RelayLimits {
            max_tunnel_bytes: 0,
            max_total_bytes: 0,
            idle: Duration::from_secs(60),
            max_tunnels: 4,
            max_peers_per_key: 8,
            max_queued_bytes: 64 << 20,
        }
    }

    fn hub(limits: RelayLimits) -> Arc<RelayHub> {
        Arc::new(RelayHub::new(
            limits,
            Arc::new(Metrics::new()),
            EventBus::new(Arc::new(SystemClock)),
            CancellationToken::new(),
        ))
    }

    fn id(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    /// What the hub queued for an attachment so far, in order.
    fn drain(out: &mut Outbound) -> Vec<RelayFrame> {
        let mut frames = Vec::new();
        while let Ok((bytes, data)) = out.rx.try_recv() {
            out.release(Taken {
                len: bytes.len() as i64,
                data,
            });
            frames.push(RelayFrame::decode(bytes::Bytes::from(bytes)).unwrap());
        }
        frames
    }

    /// The hub told this attachment, and nothing else, that `stream` closed with `code`.
    fn expect_close(out: &mut Outbound, stream: u32, code: CloseCode) {
        assert_eq!(drain(out), [RelayFrame::Close { stream, code }]);
    }

    fn data(stream: u32, len: usize) -> RelayFrame {
        RelayFrame::Data {
            stream,
            data: bytes::Bytes::from(vec![1u8; len]),
        }
    }

    /// `a` opens stream 1 to `b`; the stream's id on `b`'s side.
    fn open(hub: &RelayHub, a: &Attached, b: &mut Attached) -> u32 {
        hub.handle(
            &a.conn,
            RelayFrame::Open {
                stream: 1,
                to: b.conn.peer_id,
            },
        );
        match drain(&mut b.outbound)[..] {
            [RelayFrame::Incoming { stream, from }] if from == a.conn.peer_id => stream,
            ref other => panic!("expected Incoming, got {other:?}"),
        }
    }

    /// Sends `len` bytes on `stream` in frames of the largest size.
    fn send_bytes(hub: &RelayHub, from: &Attached, stream: u32, mut len: usize) {
        while len > 0 {
            let n = len.min(MAX_DATA_LEN);
            hub.handle(&from.conn, data(stream, n));
            len -= n;
        }
    }

    fn data_bytes(frames: &[RelayFrame]) -> usize {
        frames
            .iter()
            .map(|f| match f {
                RelayFrame::Data { data, .. } => data.len(),
                other => panic!("expected data, got {other:?}"),
            })
            .sum()
    }

    #[test]
    fn a_side_sends_its_window_and_no_more() {
        let hub = hub(limits());
        let mut a = hub.attach(id(1), "k".into()).unwrap();
        let mut b = hub.attach(id(2), "k".into()).unwrap();
        let far = open(&hub, &a, &mut b);
        assert_ne!(far & INCOMING_STREAM_BIT, 0);
        send_bytes(&hub, &a, 1, INITIAL_WINDOW as usize);
        assert_eq!(data_bytes(&drain(&mut b.outbound)), INITIAL_WINDOW as usize);
        assert_eq!(hub.metrics.relay_bytes.get(), u64::from(INITIAL_WINDOW));
        // One byte past the window ends the tunnel on both sides.
        hub.handle(&a.conn, data(1, 1));
        let code = CloseCode::ProtocolViolation;
        expect_close(&mut a.outbound, 1, code);
        expect_close(&mut b.outbound, far, code);
        assert_eq!(hub.metrics.relay_tunnels.get(), 0);
        // Late data for the closed stream is dropped quietly.
        hub.handle(&a.conn, data(1, 1));
        assert!(drain(&mut a.outbound).is_empty() && drain(&mut b.outbound).is_empty());
        // An empty frame is not free: it closes its tunnel.
        let far = open(&hub, &a, &mut b);
        hub.handle(&a.conn, data(1, 0));
        expect_close(&mut b.outbound, far, code);
    }

    #[test]
    fn a_read_grant_s_holder_dials_its_id_s_peers_only_and_is_not_reachable() {
        let hub = hub(limits());
        let mut seeder = hub.attach(id(1), "k".into()).unwrap();
        let mut other = hub.attach(id(2), "k".into()).unwrap();
        let scope = |until| DialScope {
            file: FileId([9; 32]),
            peers: [id(1)].into_iter().collect(),
            until,
        };
        let later = Instant::now() + Duration::from_secs(60);
        let mut holder = hub
            .attach_scoped(id(3), "grant".into(), Some(scope(later)))
            .unwrap();
        // The seeder of its id: a tunnel, both ways.
        let far = open(&hub, &holder, &mut seeder);
        send_bytes(&hub, &seeder, far, 100);
        assert_eq!(data_bytes(&drain(&mut holder.outbound)), 100);
        // Another attached peer: as if it were not there.
        hub.handle(
            &holder.conn,
            RelayFrame::Open {
                stream: 3,
                to: id(2),
            },
        );
        expect_close(&mut holder.outbound, 3, CloseCode::UnknownPeer);
        assert!(drain(&mut other.outbound).is_empty());
        // Nobody opens a tunnel or punches to it.
        hub.handle(
            &other.conn,
            RelayFrame::Open {
                stream: 1,
                to: id(3),
            },
        );
        expect_close(&mut other.outbound, 1, CloseCode::UnknownPeer);
        hub.handle(
            &other.conn,
            RelayFrame::PunchRequest {
                request: 7,
                to: id(3),
            },
        );
        assert_eq!(
            drain(&mut other.outbound),
            [RelayFrame::PunchFailed {
                request: 7,
                code: CloseCode::UnknownPeer
            }]
        );
        hub.handle(
            &holder.conn,
            RelayFrame::PunchRequest {
                request: 7,
                to: id(1),
            },
        );
        assert_eq!(
            drain(&mut holder.outbound),
            [RelayFrame::PunchFailed {
                request: 7,
                code: CloseCode::UnknownPeer
            }]
        );
        assert!(drain(&mut seeder.outbound).is_empty());
        // Once the grant has expired, no new tunnel (the socket loop also ends it).
        let mut expired = hub
            .attach_scoped(id(4), "grant".into(), Some(scope(Instant::now())))
            .unwrap();
        hub.handle(
            &expired.conn,
            RelayFrame::Open {
                stream: 1,
                to: id(1),
            },
        );
        expect_close(&mut expired.outbound, 1, CloseCode::UnknownPeer);
        // Holders count against their grant's place like a key's peers.
        let limited = hub_with_peers_per_key(1);
        let _first = limited
            .attach_scoped(id(5), "grant".into(), Some(scope(later)))
            .unwrap();
        assert!(matches!(
            limited.attach_scoped(id(6), "grant".into(), Some(scope(later))),
            Err(AttachRefusal::TooManyIds(1))
        ));
    }

    fn hub_with_peers_per_key(n: usize) -> Arc<RelayHub> {
        hub(RelayLimits {
            max_peers_per_key: n,
            ..limits()
        })
    }

    #[test]
    fn grants_extend_the_window_and_bad_grants_close() {
        let hub = hub(limits());
        let mut a = hub.attach(id(1), "k".into()).unwrap();
        let mut b = hub.attach(id(2), "k".into()).unwrap();
        let far = open(&hub, &a, &mut b);
        hub.handle(
            &b.conn,
            RelayFrame::Window {
                stream: far,
                credit: 100,
            },
        );
        assert_eq!(
            drain(&mut a.outbound),
            [RelayFrame::Window {
                stream: 1,
                credit: 100
            }]
        );
        send_bytes(&hub, &a, 1, INITIAL_WINDOW as usize + 100);
        assert_eq!(
            data_bytes(&drain(&mut b.outbound)),
            INITIAL_WINDOW as usize + 100
        );
        assert!(drain(&mut a.outbound).is_empty());
        // A zero grant is a protocol violation (it would cost a forward for nothing).
        hub.handle(
            &b.conn,
            RelayFrame::Window {
                stream: far,
                credit: 0,
            },
        );
        let code = CloseCode::ProtocolViolation;
        expect_close(&mut b.outbound, far, code);
        expect_close(&mut a.outbound, 1, code);
        // So is granting more than the largest allowance.
        let far = open(&hub, &a, &mut b);
        let credit = u32::try_from(MAX_ALLOWANCE).unwrap();
        hub.handle(
            &b.conn,
            RelayFrame::Window {
                stream: far,
                credit,
            },
        );
        expect_close(&mut b.outbound, far, code);
    }

    #[test]
    fn opens_are_checked_and_capped() {
        let hub = hub(limits());
        let mut a = hub.attach(id(1), "k".into()).unwrap();
        let mut b = hub.attach(id(2), "k".into()).unwrap();
        let mut close_code = |stream, to| {
            hub.handle(&a.conn, RelayFrame::Open { stream, to });
            match drain(&mut a.outbound)[..] {
                [RelayFrame::Close { stream: s, code }] if s == stream => Some(code),
                [] => None,
                ref other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(close_code(1, id(9)), Some(CloseCode::UnknownPeer));
        assert_eq!(close_code(1, id(1)), Some(CloseCode::UnknownPeer), "self");
        assert_eq!(
            close_code(INCOMING_STREAM_BIT | 1, id(2)),
            Some(CloseCode::ProtocolViolation),
            "the hub's id space"
        );
        for stream in 1..=4 {
            assert_eq!(close_code(stream, id(2)), None);
        }
        assert_eq!(
            close_code(1, id(2)),
            Some(CloseCode::ProtocolViolation),
            "reused id"
        );
        assert_eq!(close_code(5, id(2)), Some(CloseCode::LimitExceeded));
        assert_eq!(hub.metrics.relay_tunnels.get(), 4);
        // The target's tunnels count too: a third peer cannot open to the full one.
        let c = hub.attach(id(3), "k".into()).unwrap();
        hub.handle(
            &c.conn,
            RelayFrame::Open {
                stream: 1,
                to: id(2),
            },
        );
        drop(drain(&mut b.outbound));
        let mut c = c;
        expect_close(&mut c.outbound, 1, CloseCode::LimitExceeded);
    }

    #[test]
    fn byte_limits_and_idleness_close_tunnels() {
        let hub = hub(RelayLimits {
            max_tunnel_bytes: 1000,
            ..limits()
        });
        let mut a = hub.attach(id(1), "k".into()).unwrap();
        let mut b = hub.attach(id(2), "k".into()).unwrap();
        open(&hub, &a, &mut b);
        hub.handle(&a.conn, data(1, 1000));
        hub.handle(&a.conn, data(1, 1));
        expect_close(&mut a.outbound, 1, CloseCode::LimitExceeded);
        drop(drain(&mut b.outbound));
        let far = open(&hub, &a, &mut b);
        hub.close_idle_at(&a.conn, hub.now_ms() + 1);
        assert!(drain(&mut a.outbound).is_empty(), "not idle yet");
        hub.close_idle_at(&a.conn, hub.now_ms() + 60_000);
        let code = CloseCode::Idle;
        expect_close(&mut a.outbound, 1, code);
        expect_close(&mut b.outbound, far, code);
    }

    #[test]
    fn detaching_closes_tunnels_and_a_second_attach_replaces() {
        let hub = hub(limits());
        let a = hub.attach(id(1), "k".into()).unwrap();
        let mut b = hub.attach(id(2), "k".into()).unwrap();
        let far = open(&hub, &a, &mut b);
        let again = hub.attach(id(1), "k".into()).unwrap();
        assert!(a.conn.replaced.is_cancelled());
        // The replaced connection's detach ends its tunnels but leaves the new attachment.
        hub.detach(&a.conn);
        expect_close(&mut b.outbound, far, CloseCode::Gone);
        assert!(hub.is_attached(&id(1)));
        assert_eq!(hub.metrics.relay_connections.get(), 2);
        hub.detach(&again.conn);
        assert!(!hub.is_attached(&id(1)));
        assert_eq!(hub.metrics.relay_connections.get(), 1);
    }

    #[test]
    fn a_credential_attaches_a_bounded_number_of_ids() {
        let hub = hub(RelayLimits {
            max_peers_per_key: 2,
            ..limits()
        });
        let first = hub.attach(id(1), "k".into()).unwrap();
        let _second = hub.attach(id(2), "k".into()).unwrap();
        assert_eq!(
            hub.attach(id(3), "k".into()).err(),
            Some(AttachRefusal::TooManyIds(2))
        );
        assert!(hub.attach(id(3), "other".into()).is_ok(), "another key");
        hub.detach(&first.conn);
        drop(first);
        assert!(
            hub.attach(id(3), "k".into()).is_ok(),
            "the place is free again"
        );
    }

    #[test]
    fn a_slow_reader_is_dropped_and_the_sender_is_not() {
        let hub = hub(RelayLimits {
            max_queued_bytes: 4 * MAX_DATA_LEN as u64,
            max_tunnels: 64,
            ..limits()
        });
        let mut a = hub.attach(id(1), "k".into()).unwrap();
        let mut b = hub.attach(id(2), "k".into()).unwrap();
        // `b` never reads: a full frame on each of eight streams overflows its queue.
        for stream in 1..=8 {
            hub.handle(&a.conn, RelayFrame::Open { stream, to: id(2) });
            hub.handle(&a.conn, data(stream, MAX_DATA_LEN));
        }
        assert!(b.conn.slow.is_cancelled());
        assert!(!a.conn.slow.is_cancelled());
        assert!(
            drain(&mut a.outbound).is_empty(),
            "the sender heard nothing bad"
        );
        // The queue never held more than its bound.
        assert!(b.conn.queued.load(Ordering::Relaxed) <= 4 * MAX_DATA_LEN as i64);
        drop(drain(&mut b.outbound));
        assert_eq!(b.conn.queued.load(Ordering::Relaxed), 0);
    }
}
