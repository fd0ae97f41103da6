//! The connection strategy: how this peer reaches another one.
//!
//! Direct TCP to each of the peer's addresses first (each with the caller's timeout), then a UDP
//! hole punch coordinated through the relay hub (QUIC over the punched path, see
//! [`crate::net::punch`]), then a tunnel through the relay itself. In relay-only mode (a peer
//! that knows it cannot make outbound connections either) only the relay is tried.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::PeerId;
use p2p_proto::api::ConnectionPathKind;
use parking_lot::Mutex;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::download::Source;
use crate::identity::Identity;
use crate::net::link::Link;
use crate::net::punch::Puncher;
use crate::net::relay::RelayClient;

/// How a connection reaches the other peer.
///
/// Not called `Path` to keep clear of `std::path::Path`, which the download code uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionPath {
    /// TCP straight to the peer.
    Direct,
    /// QUIC over a UDP hole punched through both NATs.
    HolePunched,
    /// A tunnel through the tracker's WebSocket relay.
    Relayed,
}

impl std::fmt::Display for ConnectionPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::HolePunched => "hole-punched",
            Self::Relayed => "relayed",
        })
    }
}

/// The tracker API's name for the path.
impl From<ConnectionPath> for ConnectionPathKind {
    fn from(path: ConnectionPath) -> Self {
        match path {
            ConnectionPath::Direct => Self::Direct,
            ConnectionPath::HolePunched => Self::HolePunched,
            ConnectionPath::Relayed => Self::Relayed,
        }
    }
}

/// Any byte stream a connection can run over.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// A connected byte stream, before the Noise handshake.
pub type BoxedTransport = Box<dyn Transport>;

/// Why no path to a peer worked; says what each path answered.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(String);

/// A pooled session: the peer and the lane (0 for its main session).
type LinkKey = (PeerId, u8);

/// Chooses and opens a path to a peer.
#[derive(Debug, Default)]
pub struct Connector {
    relay: Option<RelayClient>,
    relay_only: bool,
    puncher: Option<Arc<Puncher>>,
    /// One session per peer and lane, shared by every download from it (lane 0 is the
    /// peer's session; see [`Connector::extra_link`] for the others).
    links: Mutex<HashMap<LinkKey, Arc<Link>>>,
    /// Held while a peer's link is being made, so concurrent downloads make one.
    link_gates: Mutex<HashMap<LinkKey, Arc<tokio::sync::Mutex<()>>>>,
    /// The path of the latest connection to each peer, for `peers` and `status`.
    last_paths: Mutex<HashMap<PeerId, ConnectionPath>>,
}

impl Connector {
    /// Direct TCP only (no relay configured).
    pub fn direct() -> Self {
        Self::default()
    }

    /// Direct first (unless `relay_only`), then `relay`.
    pub fn new(relay: Option<RelayClient>, relay_only: bool) -> Self {
        Self {
            relay,
            relay_only,
            puncher: None,
            links: Mutex::default(),
            link_gates: Mutex::default(),
            last_paths: Mutex::default(),
        }
    }

    /// Tries a hole punch with `puncher` when direct TCP fails (not in relay-only mode).
    pub fn with_puncher(mut self, puncher: Arc<Puncher>) -> Self {
        self.puncher = Some(puncher);
        self
    }

    /// The relay client, when one is configured.
    pub fn relay(&self) -> Option<&RelayClient> {
        self.relay.as_ref()
    }

    /// Whether direct connections are skipped.
    pub fn relay_only(&self) -> bool {
        self.relay_only
    }

    /// The path of the latest connection to each peer.
    pub fn paths(&self) -> HashMap<PeerId, ConnectionPath> {
        self.last_paths.lock().clone()
    }

    fn remember(&self, peer: PeerId, path: ConnectionPath) {
        self.last_paths.lock().insert(peer, path);
    }

    /// The session with `source`: the pooled one while it lives, else a new connection (each
    /// path in turn, see [`Connector::connect`]) and handshake.
    pub async fn link(
        &self,
        source: &Source,
        identity: &Identity,
        direct_timeout: Duration,
    ) -> Result<Arc<Link>, ConnectError> {
        self.link_on(source, identity, direct_timeout, 0, &self.order())
            .await
    }

    /// A further session with `source` beside its main one ([`Connector::link`]), so that
    /// several connections carry one download: lane 1, 2, … (lane 0 is the main session). Only
    /// over direct TCP, and only when the main session is direct too (`None` otherwise): a
    /// second relay tunnel would load the hub twice and split its per-tunnel byte limit, and a
    /// second hole-punched stream is unmeasured.
    pub async fn extra_link(
        &self,
        source: &Source,
        identity: &Identity,
        direct_timeout: Duration,
        lane: u8,
    ) -> Result<Option<Arc<Link>>, ConnectError> {
        let main = self.link(source, identity, direct_timeout).await?;
        if main.path() != ConnectionPath::Direct {
            return Ok(None);
        }
        self.link_on(
            source,
            identity,
            direct_timeout,
            lane,
            &[ConnectionPath::Direct],
        )
        .await
        .map(Some)
    }

    /// The pooled session with `source` on `lane`, else a new one over the first of `paths`
    /// that works.
    async fn link_on(
        &self,
        source: &Source,
        identity: &Identity,
        direct_timeout: Duration,
        lane: u8,
        paths: &[ConnectionPath],
    ) -> Result<Arc<Link>, ConnectError> {
        let key = (source.peer_id, lane);
        let gate = self.link_gates.lock().entry(key).or_default().clone();
        let _making = gate.lock().await;
        {
            let mut links = self.links.lock();
            links.retain(|_, l| !l.is_closed());
            if let Some(l) = links.get(&key) {
                if lane == 0 {
                    self.remember(source.peer_id, l.path());
                }
                return Ok(l.clone());
            }
        }
        // Each path in turn, as for `connect`; one that connects but carries no session (a
        // pooled QUIC connection whose peer is gone, say) counts as failed, and the next is tried.
        let mut failures = Vec::new();
        let mut made = None;
        for &path in paths {
            let opened = match self.open(source, path, direct_timeout).await {
                Ok(stream) => Link::open(stream, path, identity, source.peer_id)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match opened {
                Ok(link) => {
                    if lane == 0 {
                        self.remember(source.peer_id, path);
                    }
                    made = Some(link);
                    break;
                }
                Err(e) => failures.push(format!("{path}: {e}")),
            }
        }
        let link = made.ok_or_else(|| ConnectError(failures.join("; ")))?;
        self.links.lock().insert(key, link.clone());
        self.link_gates.lock().remove(&key);
        Ok(link)
    }

    /// Sessions open now (for tests and `status`).
    pub fn links(&self) -> usize {
        self.links
            .lock()
            .values()
            .filter(|l| !l.is_closed())
            .count()
    }

    /// Opens a stream to `source`, trying each path in turn.
    pub async fn connect(
        &self,
        source: &Source,
        direct_timeout: Duration,
    ) -> Result<(BoxedTransport, ConnectionPath), ConnectError> {
        let mut failures = Vec::new();
        for path in self.order() {
            match self.open(source, path, direct_timeout).await {
                Ok(stream) => {
                    self.remember(source.peer_id, path);
                    return Ok((stream, path));
                }
                Err(e) => failures.push(format!("{path}: {e}")),
            }
        }
        Err(ConnectError(failures.join("; ")))
    }

    /// The paths to try, in order: direct (unless relay-only), the hole punch (with a puncher,
    /// unless relay-only), the relay (when configured).
    fn order(&self) -> Vec<ConnectionPath> {
        let mut order = Vec::with_capacity(3);
        if !self.relay_only || self.relay.is_none() {
            order.push(ConnectionPath::Direct);
        }
        if self.puncher.is_some() && !self.relay_only {
            order.push(ConnectionPath::HolePunched);
        }
        if self.relay.is_some() {
            order.push(ConnectionPath::Relayed);
        }
        order
    }

    /// A stream to `source` over `path`.
    async fn open(
        &self,
        source: &Source,
        path: ConnectionPath,
        direct_timeout: Duration,
    ) -> Result<BoxedTransport, String> {
        match path {
            ConnectionPath::Direct => connect_direct(source, direct_timeout)
                .await
                .map(|s| Box::new(s) as BoxedTransport),
            ConnectionPath::HolePunched => {
                let puncher = self.puncher.as_ref().ok_or("no hole punching")?;
                puncher
                    .connect(source.peer_id)
                    .await
                    .map(|s| Box::new(s) as BoxedTransport)
                    .map_err(|e| {
                        tracing::debug!(peer = %source.peer_id, error = %e, "hole punch failed");
                        e.to_string()
                    })
            }
            ConnectionPath::Relayed => {
                let relay = self.relay.as_ref().ok_or("no relay")?;
                relay
                    .open(source.peer_id)
                    .await
                    .map(|s| Box::new(s) as BoxedTransport)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// TCP to the first of the peer's addresses that answers within `timeout`.
async fn connect_direct(source: &Source, timeout: Duration) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    for addr in &source.addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: timed out"),
        }
    }
    Err(last)
}
