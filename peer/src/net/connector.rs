//! The connection strategy: how this peer reaches another one.
//!
//! Direct TCP to each of the peer's addresses first (each with the caller's timeout), then a UDP
//! hole punch coordinated through the relay hub (QUIC over the punched path, see
//! [`crate::net::punch`]), then a tunnel through the relay itself. In relay-only mode (a peer
//! that knows it cannot make outbound connections either) only the relay is tried. Inbound
//! connections take the mirror path through [`crate::net::accept::Acceptor`].
//!
//! Punches and tunnels go through the *target's* home relay: our own when it names none or the
//! same, else a visiting connection to its hub, opened on demand (at most
//! [`MAX_VISITED_RELAYS`]) and only to relays we know (the fleet the tracker lists and our own
//! configuration: a peer's entry must not make us send our credentials to any host).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::PeerId;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::identity::Identity;
use crate::net::addr::{PeerAddr, RelayUrl};
use crate::net::link::Link;
use crate::net::punch::{PunchError, Puncher};
use crate::net::relay::{self, RelayClient, RelayConfig, RelayError, RelayStatus};
use crate::net::secure::SecureError;
use crate::net::transport::{BoxedTransport, ConnectionPath};

/// Why one path to a peer did not give a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("no address")]
    NoAddress,
    #[error("{addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: timed out")]
    TcpTimeout { addr: SocketAddr },
    #[error("no hole punching")]
    NoPuncher,
    #[error("no relay")]
    NoRelay,
    /// The peer is attached to another hub than ours, and we visit no other.
    #[error("the peer is on another relay")]
    OtherRelay,
    /// The peer names a home relay that is not one of the fleet's.
    #[error("the peer's relay {0} is not a known relay")]
    UnknownRelay(RelayUrl),
    /// As many other relays are visited already, all in use.
    #[error("{0} other relays are visited already")]
    TooManyRelays(usize),
    /// The hub did not set the punch up.
    #[error("relay: {0}")]
    PunchRequest(#[source] RelayError),
    #[error(transparent)]
    Punch(#[from] PunchError),
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// A stream was opened, but the handshake on it failed.
    #[error(transparent)]
    Session(#[from] SecureError),
}

/// Why no path to a peer worked: what each path answered, in the order they were tried.
#[derive(Debug)]
pub struct ConnectError {
    failures: Vec<(ConnectionPath, PathError)>,
}

impl ConnectError {
    /// Each path tried and why it failed.
    pub fn failures(&self) -> &[(ConnectionPath, PathError)] {
        &self.failures
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.failures.is_empty() {
            return f.write_str("no path to try");
        }
        for (i, (path, error)) in self.failures.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{path}: {error}")?;
        }
        Ok(())
    }
}

/// The cause is the last path's failure (the fallback that was tried last); the others are in
/// [`ConnectError::failures`] and the message.
impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failures
            .last()
            .map(|(_, e)| e as &(dyn std::error::Error + 'static))
    }
}

/// A pooled session: the peer and the lane (0 for its main session).
type LinkKey = (PeerId, u8);

/// Other peers' home relays visited at once, at most.
pub const MAX_VISITED_RELAYS: usize = 8;
/// How long a visit to another relay may take to attach.
const VISIT_ATTACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Visiting other peers' home relays: how to attach, which relays are known, the visits.
#[derive(Debug)]
struct Visits {
    identity: Identity,
    token: Option<String>,
    shutdown: CancellationToken,
    known: Mutex<HashSet<RelayUrl>>,
    /// Relays visited with a read grant instead of the token (a share link's, see
    /// [`Connector::allow_relay`]).
    grants: Mutex<HashMap<RelayUrl, String>>,
    clients: Mutex<HashMap<RelayUrl, (RelayClient, CancellationToken)>>,
}

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
    /// Connections to other peers' home relays, when enabled.
    visits: Option<Visits>,
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
            ..Self::default()
        }
    }

    /// Tries a hole punch with `puncher` (coordinated through the relay) when direct TCP fails
    /// (not in relay-only mode).
    pub fn with_puncher(mut self, puncher: Arc<Puncher>) -> Self {
        self.puncher = Some(puncher);
        self
    }

    /// Reaches peers homed on other relays of `known` by attaching there too, as `identity`
    /// with `token`, until `shutdown`.
    pub fn with_visits(
        mut self,
        identity: Identity,
        token: Option<String>,
        shutdown: CancellationToken,
    ) -> Self {
        self.visits = Some(Visits {
            identity,
            token,
            shutdown,
            known: Mutex::new(HashSet::new()),
            grants: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
        });
        self
    }

    /// Lets peers homed on `url` be reached there by attaching with `grant` (a share link's
    /// read grant, hex) instead of the token: the hub then lets this peer dial the peers of the
    /// grant's id only. For a peer without credentials (and so without a home relay); a relay
    /// visited already keeps the credential it was visited with.
    pub fn allow_relay(&self, url: RelayUrl, grant: String) {
        if let Some(v) = &self.visits {
            v.known.lock().insert(url.clone());
            v.grants.lock().insert(url, grant);
        }
    }

    /// Replaces the relays that may be visited (the fleet and our own configuration).
    pub fn set_known_relays(&self, relays: impl IntoIterator<Item = RelayUrl>) {
        if let Some(v) = &self.visits {
            *v.known.lock() = relays.into_iter().collect();
        }
    }

    /// Moves our home relay to `url` (see [`RelayClient::rehome`]), ending a visit there first:
    /// one peer id attached twice to one hub would replace itself back and forth.
    pub fn rehome(&self, url: RelayUrl) {
        if let Some(v) = &self.visits
            && let Some((_, stop)) = v.clients.lock().remove(&url)
        {
            stop.cancel();
        }
        if let Some(home) = &self.relay {
            home.rehome(url);
        }
    }

    /// The other relays visited now.
    pub fn visited(&self) -> Vec<RelayUrl> {
        self.visits
            .as_ref()
            .map(|v| v.clients.lock().keys().cloned().collect())
            .unwrap_or_default()
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

    /// The session with `peer`: the pooled one while it lives, else a new connection (each
    /// path in turn, see [`Connector::connect`]) and handshake.
    pub async fn link(
        &self,
        peer: &PeerAddr,
        identity: &Identity,
        direct_timeout: Duration,
    ) -> Result<Arc<Link>, ConnectError> {
        self.link_on(peer, identity, direct_timeout, 0, &self.order())
            .await
    }

    /// A further session with `peer` beside its main one ([`Connector::link`]), so that
    /// several connections carry one download: lane 1, 2, … (lane 0 is the main session). Only
    /// over direct TCP, and only when the main session is direct too (`None` otherwise): a
    /// second relay tunnel would load the hub twice and split its per-tunnel byte limit, and a
    /// second hole-punched stream is unmeasured.
    pub async fn extra_link(
        &self,
        peer: &PeerAddr,
        identity: &Identity,
        direct_timeout: Duration,
        lane: u8,
    ) -> Result<Option<Arc<Link>>, ConnectError> {
        let main = self.link(peer, identity, direct_timeout).await?;
        if main.path() != ConnectionPath::Direct {
            return Ok(None);
        }
        self.link_on(
            peer,
            identity,
            direct_timeout,
            lane,
            &[ConnectionPath::Direct],
        )
        .await
        .map(Some)
    }

    /// The pooled session with `peer` on `lane`, else a new one over the first of `paths`
    /// that works.
    async fn link_on(
        &self,
        peer: &PeerAddr,
        identity: &Identity,
        direct_timeout: Duration,
        lane: u8,
        paths: &[ConnectionPath],
    ) -> Result<Arc<Link>, ConnectError> {
        let key = (peer.peer_id, lane);
        let gate = self.link_gates.lock().entry(key).or_default().clone();
        let _making = gate.lock().await;
        if let Some(link) = self.pooled(key) {
            return Ok(link);
        }
        // Each path in turn, as for `connect`; one that connects but carries no session (a
        // pooled QUIC connection whose peer is gone, say) counts as failed, and the next is tried.
        let mut failures = Vec::new();
        let mut made = None;
        for &path in paths {
            let opened = match self.open(peer, path, direct_timeout).await {
                Ok(stream) => Link::open(stream, path, identity, peer.peer_id)
                    .await
                    .map_err(PathError::from),
                Err(e) => Err(e),
            };
            match opened {
                Ok(link) => {
                    made = Some(link);
                    break;
                }
                Err(e) => failures.push((path, e)),
            }
        }
        let link = made.ok_or(ConnectError { failures })?;
        if lane == 0 {
            self.remember(peer.peer_id, link.path());
        }
        self.links.lock().insert(key, link.clone());
        self.link_gates.lock().remove(&key);
        Ok(link)
    }

    /// The live pooled session for `key`, dropping closed ones.
    fn pooled(&self, key: LinkKey) -> Option<Arc<Link>> {
        let link = {
            let mut links = self.links.lock();
            links.retain(|_, l| !l.is_closed());
            links.get(&key).cloned()
        }?;
        if key.1 == 0 {
            self.remember(key.0, link.path());
        }
        Some(link)
    }

    /// Sessions open now (for tests and `status`).
    pub fn links(&self) -> usize {
        self.links
            .lock()
            .values()
            .filter(|l| !l.is_closed())
            .count()
    }

    /// Opens a stream to `peer`, trying each path in turn.
    pub async fn connect(
        &self,
        peer: &PeerAddr,
        direct_timeout: Duration,
    ) -> Result<(BoxedTransport, ConnectionPath), ConnectError> {
        let mut failures = Vec::new();
        for path in self.order() {
            match self.open(peer, path, direct_timeout).await {
                Ok(stream) => {
                    self.remember(peer.peer_id, path);
                    return Ok((stream, path));
                }
                Err(e) => failures.push((path, e)),
            }
        }
        Err(ConnectError { failures })
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
        if self.relay.is_some()
            || self
                .visits
                .as_ref()
                .is_some_and(|v| !v.grants.lock().is_empty())
        {
            order.push(ConnectionPath::Relayed);
        }
        order
    }

    /// A stream to `peer` over `path`.
    async fn open(
        &self,
        peer: &PeerAddr,
        path: ConnectionPath,
        direct_timeout: Duration,
    ) -> Result<BoxedTransport, PathError> {
        let to = peer.peer_id;
        match path {
            ConnectionPath::Direct => connect_direct(&peer.addrs, direct_timeout)
                .await
                .map(|s| Box::new(s) as BoxedTransport),
            ConnectionPath::HolePunched => {
                let puncher = self.puncher.as_ref().ok_or(PathError::NoPuncher)?;
                if let Some(stream) = puncher.pooled_stream(to).await {
                    return Ok(Box::new(stream));
                }
                let ticket = self
                    .relay_for(peer)
                    .await?
                    .punch(to)
                    .await
                    .map_err(PathError::PunchRequest)?;
                let stream = puncher.punch(ticket).await.inspect_err(|e| {
                    tracing::debug!(peer = %to, error = %e, "hole punch failed");
                })?;
                Ok(Box::new(stream))
            }
            ConnectionPath::Relayed => {
                let stream = self.relay_for(peer).await?.open(to).await?;
                Ok(Box::new(stream))
            }
        }
    }

    /// The relay to reach `peer` through: ours when the peer names no relay or ours, else a
    /// visit to its home relay (a known one).
    async fn relay_for(&self, peer: &PeerAddr) -> Result<RelayClient, PathError> {
        let home = self.relay.as_ref();
        let url = match (&peer.relay, home) {
            (Some(url), Some(home)) if *url == home.url() => return Ok(home.clone()),
            (Some(url), _) => url,
            (None, Some(home)) => return Ok(home.clone()),
            (None, None) => return Err(PathError::NoRelay),
        };
        let visits = self.visits.as_ref().ok_or(if home.is_some() {
            PathError::OtherRelay
        } else {
            PathError::NoRelay
        })?;
        let client = visits.client(url)?;
        client.wait_attached(VISIT_ATTACH_TIMEOUT).await?;
        Ok(client)
    }
}

impl Visits {
    /// The visit to `url`, started now if there is none.
    fn client(&self, url: &RelayUrl) -> Result<RelayClient, PathError> {
        if !self.known.lock().contains(url) {
            return Err(PathError::UnknownRelay(url.clone()));
        }
        let mut clients = self.clients.lock();
        if let Some((client, _)) = clients.get(url) {
            return Ok(client.clone());
        }
        if clients.len() >= MAX_VISITED_RELAYS {
            // Make room by ending visits that are not attached (their relay is gone).
            clients.retain(|_, (c, stop)| {
                let keep = c.status() == RelayStatus::Attached;
                if !keep {
                    stop.cancel();
                }
                keep
            });
            if clients.len() >= MAX_VISITED_RELAYS {
                return Err(PathError::TooManyRelays(clients.len()));
            }
        }
        let stop = self.shutdown.child_token();
        let grant = self.grants.lock().get(url).cloned();
        let config = RelayConfig {
            url: url.clone(),
            // A grant where one was given for this relay, never with the token.
            token: if grant.is_some() {
                None
            } else {
                self.token.clone()
            },
            grant,
        };
        // Streams other peers open to us there are refused (the receiver is dropped): we visit
        // to reach the peers homed there, and serve on our own home relay.
        let (client, _incoming) = relay::spawn(self.identity.clone(), config, stop.clone());
        tracing::debug!(%url, "visiting another peer's home relay");
        clients.insert(url.clone(), (client.clone(), stop));
        Ok(client)
    }
}

/// TCP to the first of `addrs` that answers within `timeout`; the last failure otherwise.
async fn connect_direct(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, PathError> {
    let mut last = PathError::NoAddress;
    for &addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(source)) => last = PathError::Tcp { addr, source },
            Err(_) => last = PathError::TcpTimeout { addr },
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(port: u16) -> RelayUrl {
        RelayUrl::from(format!("ws://127.0.0.1:{port}/relay"))
    }

    /// A connector whose home relay (and every visited one) is a closed port.
    fn connector(shutdown: &CancellationToken) -> Connector {
        let identity = Identity::from_secret([7; 32]);
        let config = RelayConfig {
            url: url(1),
            token: Some("secret-key".into()),
            grant: None,
        };
        let (home, _incoming) = relay::spawn(identity.clone(), config, shutdown.clone());
        Connector::new(Some(home), true).with_visits(identity, None, shutdown.clone())
    }

    #[tokio::test]
    async fn a_peer_entry_cannot_send_us_to_an_unknown_relay() {
        let shutdown = CancellationToken::new();
        let c = connector(&shutdown);
        let peer = PeerAddr::new(PeerId([1; 32]), vec![]).with_relay(url(9));
        match c.relay_for(&peer).await {
            Err(PathError::UnknownRelay(u)) => assert_eq!(u, url(9)),
            other => panic!("expected UnknownRelay, got {other:?}"),
        }
        assert!(c.visited().is_empty(), "nothing was dialled");
        // Without a hint, or naming our own: our home relay.
        let ours = PeerAddr::new(PeerId([1; 32]), vec![]).with_relay(url(1));
        assert_eq!(c.relay_for(&ours).await.unwrap().url(), url(1));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn visits_are_bounded_and_dead_ones_make_room() {
        let shutdown = CancellationToken::new();
        let c = connector(&shutdown);
        let visits = c.visits.as_ref().unwrap();
        c.set_known_relays((2..40).map(url));
        for port in 2..40 {
            // Closed ports: never attached, so each new visit may replace them.
            visits.client(&url(port)).unwrap();
            assert!(c.visited().len() <= MAX_VISITED_RELAYS);
        }
        // Moving home to a visited relay ends that visit (one id attached twice would
        // replace itself back and forth).
        let last = url(39);
        assert!(c.visited().contains(&last));
        c.rehome(last.clone());
        assert!(!c.visited().contains(&last));
        assert_eq!(c.relay().unwrap().url(), last);
        shutdown.cancel();
    }
}
