//! Inbound connections, the mirror of the [`crate::net::connector::Connector`]: every path by
//! which a peer can reach us (a TCP listener, streams through the relay, streams on
//! hole-punched QUIC connections) hands its streams to one [`Acceptor::accept`], which opens
//! the session ([`session::open`], as the dialling side does) and gives it to the one
//! [`Serve`] handler the node runs (the uploader). Limits on inbound work belong here, where
//! every path passes ([`InboundLimits`]): how many sessions in all, per remote address and per
//! peer id; how long a session may stay silent and a frame take to arrive; how large a frame
//! may be (an uploader is only ever asked small things); and accept errors back off.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use p2p_proto::PeerId;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::identity::Identity;
use crate::net::punch::{AcceptedStream, Puncher};
use crate::net::relay::{Incoming, RelayClient};
use crate::net::secure::{ReadDeadlines, Role, SecureError};
use crate::net::session::{self, Session};
use crate::net::ticket::PunchTicket;
use crate::net::transport::{BoxedTransport, ConnectionPath};

/// Connections the kernel completes and queues before the node accepts them (capped by
/// `net.core.somaxconn`). tokio's `TcpListener::bind` takes 128: past it, in a burst of
/// leechers, Linux drops a client's final ACK and only takes the connection after SYN-ACK
/// retransmits, seconds later.
pub const LISTEN_BACKLOG: u32 = 1024;

/// A TCP listener on `addr` with a backlog of [`LISTEN_BACKLOG`] and `SO_REUSEADDR`.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What serves sessions other peers open to us.
pub trait Serve: Send + Sync + 'static {
    /// Serves one authenticated session, reached over `path`, until the peer leaves.
    fn serve(
        &self,
        session: Session,
        path: ConnectionPath,
    ) -> impl Future<Output = Result<(), SecureError>> + Send;
}

/// Where an inbound stream came from, before the handshake says who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remote {
    /// A TCP connection from this address.
    Addr(SocketAddr),
    /// A stream through the relay from the peer the hub vouches for.
    Relayed(PeerId),
    /// A stream on the hole-punched connection with this peer.
    Punched(PeerId),
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(addr) => write!(f, "{addr}"),
            Self::Relayed(peer) => write!(f, "relay:{peer}"),
            Self::Punched(peer) => write!(f, "quic:{peer}"),
        }
    }
}

/// A stream another peer opened to us.
pub struct Inbound {
    pub stream: BoxedTransport,
    pub remote: Remote,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// The path the stream took.
    pub fn path(&self) -> ConnectionPath {
        match self.remote {
            Remote::Addr(_) => ConnectionPath::Direct,
            Remote::Relayed(_) => ConnectionPath::Relayed,
            Remote::Punched(_) => ConnectionPath::HolePunched,
        }
    }
}

/// Punch invitations answered at once; more are declined (their askers fall back to the relay),
/// so a peer asking again and again cannot make us hold many sockets.
const MAX_ANSWERING: usize = 32;

/// The largest frame an inbound session may send (its body): the uploader is asked only
/// `Hello`, `ManifestRequest`, `Request`, `Cancel`, `KeepAlive` and `Error`, none over
/// about 1 KiB. Anything larger ends the session before it is buffered.
pub const MAX_INBOUND_FRAME: u32 = 16 * 1024;
/// The unsent bytes an accepted TCP socket holds before a write waits (`TCP_NOTSENT_LOWAT`;
/// bytes in flight, the congestion window, are not limited). Without it the kernel takes
/// whole chunks into each socket's buffer and the split of a slow upload among connections is
/// TCP's; with half a chunk, whoever serves the sessions decides the order bytes leave in
/// (see [`crate::upload_turns`]), and a socket still has the next bytes ready when its last
/// write returns.
pub const NOT_SENT_LOW_WATER: u32 = 128 * 1024;
/// Whether this host's TCP starts a connection that sent nothing for a retransmission timeout
/// again from a small window: on Linux unless `net.ipv4.tcp_slow_start_after_idle` is 0 or
/// the default congestion control is BBR, which paces from its estimate instead (cubic, reno
/// and the others restart); where `/proc` cannot be read (other systems), yes, as RFC 5681
/// recommends. Reads the network namespace the caller runs in; the uploader asks once.
pub fn tcp_restarts_after_idle() -> bool {
    let read = |name: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).ok();
    restarts_after_idle(
        read("tcp_slow_start_after_idle").as_deref(),
        read("tcp_congestion_control").as_deref(),
    )
}

fn restarts_after_idle(slow_start_after_idle: Option<&str>, congestion: Option<&str>) -> bool {
    if slow_start_after_idle.is_some_and(|v| v.trim() == "0") {
        return false;
    }
    !congestion.is_some_and(|cc| cc.trim().starts_with("bbr"))
}

/// Sessions served at once from one peer id (a download opens a few lanes, a probe one more).
pub const MAX_PER_PEER: usize = 16;
/// The first pause after a failed accept (doubling up to [`ACCEPT_BACKOFF_MAX`]).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Repeated warnings (accept failures, refused connections) are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// Bounds on inbound work. Every inbound path counts towards them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundLimits {
    /// Sessions (and handshakes) at once, in all.
    pub max_connections: usize,
    /// At once from one IPv4 address or IPv6 /64 (TCP), or one peer id before its handshake
    /// (relay, QUIC).
    pub max_per_addr: usize,
    /// A session from which no frame began for this long is closed (downloaders send a
    /// `KeepAlive` every [`crate::net::link::KEEPALIVE`]).
    pub idle_timeout: Duration,
    /// A frame must arrive whole this long after its first byte.
    pub frame_timeout: Duration,
}

impl Default for InboundLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_per_addr: 32,
            idle_timeout: Duration::from_secs(90),
            frame_timeout: Duration::from_secs(30),
        }
    }
}

/// Who holds inbound sessions now.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_addr: HashMap<Source, usize>,
    by_peer: HashMap<PeerId, usize>,
}

/// What an inbound stream is counted under before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Ip(IpAddr),
    Peer(PeerId),
}

/// One inbound session's place in the counts, given back when it ends.
#[derive(Debug)]
struct Slot {
    counts: Arc<Mutex<Counts>>,
    source: Source,
    peer: Option<PeerId>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock();
        c.total -= 1;
        decrement(&mut c.by_addr, &self.source);
        if let Some(peer) = &self.peer {
            decrement(&mut c.by_peer, peer);
        }
    }
}

/// The address a connection from `ip` counts under: an IPv6 host usually holds a whole /64,
/// so its connections count under that.
fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// A warning logged at most once per [`WARN_EVERY`], with how many were left out since.
#[derive(Debug, Default)]
struct RareWarning {
    last: Mutex<Option<Instant>>,
    left_out: AtomicU64,
}

impl RareWarning {
    /// `Some(left out since the last one)` when it is time to log again.
    fn due(&self) -> Option<u64> {
        let mut last = self.last.lock();
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.left_out.swap(0, Ordering::Relaxed))
    }
}

/// Accepts inbound streams from every path and serves each with `H`. Cheap to clone.
#[derive(Debug)]
pub struct Acceptor<H> {
    identity: Identity,
    handler: Arc<H>,
    shutdown: CancellationToken,
    limits: InboundLimits,
    counts: Arc<Mutex<Counts>>,
    refused: Arc<RareWarning>,
}

impl<H> Clone for Acceptor<H> {
    fn clone(&self) -> Self {
        Self {
            identity: self.identity.clone(),
            handler: self.handler.clone(),
            shutdown: self.shutdown.clone(),
            limits: self.limits,
            counts: self.counts.clone(),
            refused: self.refused.clone(),
        }
    }
}

impl<H: Serve> Acceptor<H> {
    /// Serves as `identity` with `handler` until `shutdown`, within the default limits.
    pub fn new(identity: Identity, handler: Arc<H>, shutdown: CancellationToken) -> Self {
        Self {
            identity,
            handler,
            shutdown,
            limits: InboundLimits::default(),
            counts: Arc::default(),
            refused: Arc::default(),
        }
    }

    /// The same within `limits`.
    pub fn with_limits(mut self, limits: InboundLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Inbound sessions (and handshakes) open now.
    pub fn open_sessions(&self) -> usize {
        self.counts.lock().total
    }

    /// A place for a stream from `remote`, unless a cap is reached.
    fn slot(&self, remote: Remote) -> Option<Slot> {
        let source = match remote {
            Remote::Addr(addr) => Source::Ip(counted_as(addr.ip())),
            Remote::Relayed(peer) | Remote::Punched(peer) => Source::Peer(peer),
        };
        let mut c = self.counts.lock();
        let from_source = c.by_addr.get(&source).copied().unwrap_or(0);
        if c.total >= self.limits.max_connections || from_source >= self.limits.max_per_addr {
            return None;
        }
        c.total += 1;
        *c.by_addr.entry(source).or_default() += 1;
        Some(Slot {
            counts: self.counts.clone(),
            source,
            peer: None,
        })
    }

    /// Counts `slot` under `peer` too, unless that peer has [`MAX_PER_PEER`] sessions.
    fn claim_peer(&self, slot: &mut Slot, peer: PeerId) -> bool {
        let mut c = self.counts.lock();
        let n = c.by_peer.entry(peer).or_default();
        if *n >= MAX_PER_PEER {
            return false;
        }
        *n += 1;
        slot.peer = Some(peer);
        true
    }

    fn warn_refused(&self, remote: Remote, why: &str) {
        if let Some(left_out) = self.refused.due() {
            tracing::warn!(%remote, left_out, "inbound connection refused: {why}");
        }
    }

    /// Accepts TCP connections on `listener` until shutdown. A failed accept (out of file
    /// descriptors, say) pauses the loop, doubling from 5 ms to 1 s while it keeps failing,
    /// and is logged at most once a second.
    pub fn listen(&self, listener: TcpListener) {
        let this = self.clone();
        tokio::spawn(async move {
            let failures = RareWarning::default();
            let mut backoff = ACCEPT_BACKOFF_MIN;
            loop {
                let accepted = tokio::select! {
                    _ = this.shutdown.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let (stream, addr) = match accepted {
                    Ok(a) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        a
                    }
                    Err(e) => {
                        if let Some(left_out) = failures.due() {
                            tracing::warn!(error = %e, left_out, ?backoff, "accept failed; pausing");
                        }
                        tokio::select! {
                            _ = this.shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(NOT_SENT_LOW_WATER);
                this.accept(Inbound {
                    stream: Box::new(stream),
                    remote: Remote::Addr(addr),
                });
            }
        });
    }

    /// Accepts the streams other peers open to us through the relay, until shutdown.
    pub fn relayed(&self, incoming: mpsc::Receiver<Incoming>) {
        self.accept_from(incoming, |i| Inbound {
            stream: Box::new(i.stream),
            remote: Remote::Relayed(i.from),
        });
    }

    /// Accepts the streams other peers open to us on hole-punched connections, until shutdown.
    pub fn punched(&self, accepted: mpsc::Receiver<AcceptedStream>) {
        self.accept_from(accepted, |a| Inbound {
            stream: Box::new(a.stream),
            remote: Remote::Punched(a.from),
        });
    }

    /// Accepts what `incoming` yields, as `inbound` makes it an [`Inbound`].
    fn accept_from<T: Send + 'static>(
        &self,
        mut incoming: mpsc::Receiver<T>,
        inbound: impl Fn(T) -> Inbound + Send + 'static,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = this.shutdown.cancelled() => return,
                    next = incoming.recv() => next,
                };
                let Some(item) = next else {
                    return;
                };
                this.accept(inbound(item));
            }
        });
    }

    /// Serves `inbound` on a task of its own: opens the session, then hands it to the handler,
    /// until the peer leaves or shutdown. Every inbound path ends here.
    /// Refused at once (the stream dropped) when a cap of [`InboundLimits`] is reached.
    pub fn accept(&self, inbound: Inbound) {
        let Some(mut slot) = self.slot(inbound.remote) else {
            self.warn_refused(inbound.remote, "too many connections");
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let path = inbound.path();
            let Inbound { stream, remote } = inbound;
            let served = async {
                let mut session =
                    session::open(stream, &this.identity, Role::Responder, None).await?;
                if !this.claim_peer(&mut slot, session.remote) {
                    this.warn_refused(remote, "too many connections from one peer");
                    return Ok(());
                }
                session.reader.frame_cap().set(MAX_INBOUND_FRAME);
                session.reader.set_deadlines(ReadDeadlines {
                    idle: Some(this.limits.idle_timeout),
                    frame: Some(this.limits.frame_timeout),
                });
                tracing::debug!(%remote, peer = %session.remote, "peer connected");
                this.handler.serve(session, path).await
            };
            tokio::select! {
                _ = this.shutdown.cancelled() => {}
                result = served => if let Err(e) = result {
                    tracing::debug!(%remote, error = %e, "connection ended");
                }
            }
            drop(slot);
        });
    }
}

/// Answers the hole-punch invitations the relay hands us (each on its own task, at most
/// [`MAX_ANSWERING`] at once; the rest are declined through `relay`) until `shutdown`. The
/// streams the punched peers then open arrive through [`Acceptor::punched`].
pub fn answer_punches(
    mut invites: mpsc::Receiver<PunchTicket>,
    puncher: Arc<Puncher>,
    relay: RelayClient,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_ANSWERING));
        loop {
            let ticket = tokio::select! {
                _ = shutdown.cancelled() => return,
                t = invites.recv() => match t {
                    Some(t) => t,
                    None => return,
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(peer = %ticket.peer, "too many hole punches at once; declined");
                let _ = relay.decline(ticket.session).await;
                continue;
            };
            let puncher = puncher.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let peer = ticket.peer;
                if let Err(e) = puncher.answer(ticket).await {
                    tracing::debug!(%peer, error = %e, "answering a hole punch failed");
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl Serve for Nothing {
        async fn serve(&self, _: Session, _: ConnectionPath) -> Result<(), SecureError> {
            Ok(())
        }
    }

    #[test]
    fn tcp_restarts_after_idle_unless_turned_off_or_bbr() {
        assert!(restarts_after_idle(Some("1\n"), Some("cubic\n")));
        assert!(restarts_after_idle(Some("1\n"), Some("reno\n")));
        assert!(!restarts_after_idle(Some("0\n"), Some("cubic\n")));
        assert!(!restarts_after_idle(Some("1\n"), Some("bbr\n")));
        assert!(!restarts_after_idle(None, Some("bbr")));
        // Not Linux (no /proc): restarts, as RFC 5681 recommends.
        assert!(restarts_after_idle(None, None));
    }

    #[test]
    fn caps_count_in_all_per_address_and_per_peer() {
        let limits = InboundLimits {
            max_connections: 5,
            max_per_addr: 2,
            ..InboundLimits::default()
        };
        let acceptor = Acceptor::new(
            Identity::generate().unwrap(),
            Arc::new(Nothing),
            CancellationToken::new(),
        )
        .with_limits(limits);
        let from = |host: u8| Remote::Addr(SocketAddr::from(([127, 0, 0, host], 1000)));
        let v6 = |addr: &str| counted_as(addr.parse().unwrap());
        assert_eq!(v6("2001:db8:1:2:3:4:5:6"), v6("2001:db8:1:2::9"), "one /64");
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        assert_eq!(v6("::ffff:10.0.0.1"), v6("10.0.0.1"));
        let a1 = acceptor.slot(from(2)).unwrap();
        let a2 = acceptor.slot(from(2)).unwrap();
        assert!(acceptor.slot(from(2)).is_none(), "per address");
        let relayed = Remote::Relayed(PeerId([9; 32]));
        let r1 = acceptor.slot(relayed).unwrap();
        let r2 = acceptor.slot(relayed).unwrap();
        assert!(acceptor.slot(relayed).is_none(), "per relayed peer");
        let b1 = acceptor.slot(from(3)).unwrap();
        assert!(acceptor.slot(from(4)).is_none(), "in all");
        assert_eq!(acceptor.open_sessions(), 5);
        drop(a1);
        let mut a3 = acceptor.slot(from(2)).unwrap();
        assert_eq!(acceptor.open_sessions(), 5);

        // Per peer id, after the handshake.
        let peer = PeerId([7; 32]);
        drop((a2, r1, r2, b1));
        let mut held = Vec::new();
        assert!(acceptor.claim_peer(&mut a3, peer));
        let limits = InboundLimits {
            max_connections: 100,
            max_per_addr: 100,
            ..limits
        };
        let acceptor = acceptor.with_limits(limits);
        for _ in 1..MAX_PER_PEER {
            let mut s = acceptor.slot(from(5)).unwrap();
            assert!(acceptor.claim_peer(&mut s, peer));
            held.push(s);
        }
        let mut one_more = acceptor.slot(from(5)).unwrap();
        assert!(!acceptor.claim_peer(&mut one_more, peer));
        drop(a3);
        assert!(
            acceptor.claim_peer(&mut one_more, peer),
            "a place came free"
        );
        drop((held, one_more));
        assert_eq!(acceptor.open_sessions(), 0);
        assert!(acceptor.counts.lock().by_peer.is_empty());
        assert!(acceptor.counts.lock().by_addr.is_empty());
    }
}
