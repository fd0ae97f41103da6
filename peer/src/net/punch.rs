//! UDP hole punching, then QUIC over the punched path.
//!
//! Both peers are attached to the tracker's relay hub, whose WebSocket carries the coordination
//! (see [`p2p_proto::relay`]): one side asks for a punch, and each side gets a session id and a
//! token. Each side then:
//!
//! 1. binds a fresh UDP socket and sends `Bind { token }` to the tracker's UDP port: the tracker
//!    sees where the datagram came from, which is this socket's address as the NATs rewrote it,
//!    and answers `Check { cookie }` there; the socket sends `Confirm { token, cookie }` back, so
//!    the tracker knows the address is really ours, until `Bound`, and waits for the hub's go,
//!    which carries the other side's address, confirmed the same way;
//! 2. sends `Probe { session }` to the other side's address every [`PROBE_EVERY`]. Its own
//!    outbound probe opens its NAT for replies from that address; once a probe from the other
//!    side arrives, both NATs are open. A probe may come from another port than the one the
//!    tracker saw (a NAT that maps per destination): the probe's source wins, as in ICE, but
//!    only at the IP the tracker confirmed, so a probe with a forged source cannot send our
//!    probes and QUIC packets to a third party;
//! 3. hands the socket to a QUIC endpoint. The asker connects; the invited side accepts.
//!
//! QUIC gives a reliable, congestion-controlled stream over the punched path, and the peer
//! protocol runs over one of its bidirectional streams unchanged, Noise handshake included.
//! TLS inside QUIC therefore does not authenticate anyone: the certificate is a throwaway
//! self-signed one and the client takes any (checking the handshake signature with it); the
//! Noise handshake inside the stream proves the peer id, as on every other path.
//!
//! Symmetric NATs give each destination a fresh port, so neither side's probes reach the other
//! and the punch times out; the connector then falls back to the relay.
//!
//! This module does the UDP and QUIC part only: the connector asks the relay hub for a
//! [`PunchTicket`] and hands it to [`Puncher::punch`]; invitations from other peers reach
//! [`Puncher::answer`] through the acceptor.
//!
//! Connections are pooled, one per peer: a later connection to the same peer opens another
//! QUIC stream on it, and either side may open streams. A pooled connection without streams is
//! closed after [`POOL_IDLE`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use p2p_proto::PeerId;
use p2p_proto::punch::{MAX_PUNCH_PACKET_LEN, PunchPacket};
use p2p_proto::relay::CloseCode;
use parking_lot::Mutex;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::net::ticket::PunchTicket;

/// How often `Bind` is resent to the tracker until the go.
pub const BIND_EVERY: Duration = Duration::from_millis(200);
/// How long both sides have to bind.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(5);
/// How often probes go out.
pub const PROBE_EVERY: Duration = Duration::from_millis(50);
/// How long probing may take before the punch is given up (symmetric NATs end here).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Probes sent after the first one from the other side arrived, so that it hears ours too.
const EXTRA_PROBES: usize = 3;
/// How long the QUIC handshake may take once the path is open.
pub const QUIC_TIMEOUT: Duration = Duration::from_secs(5);
/// A pooled connection without streams is closed after this.
pub const POOL_IDLE: Duration = Duration::from_secs(60);
/// ALPN of the peer protocol over QUIC.
const ALPN: &[u8] = b"p2p/1";
/// Streams accepted on pooled connections and not yet picked up by the server.
const ACCEPT_QUEUE: usize = 64;

/// Why a punch did not give a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PunchError {
    #[error("the tracker did not see both sides bind in time")]
    BindTimeout,
    #[error("the other peer does not punch: {0}")]
    Declined(CloseCode),
    #[error("no probe came back in time (a NAT maps per destination or drops UDP)")]
    NoPath,
    #[error("cannot resolve the tracker host {host:?}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the tracker host {0:?} has no address")]
    NoAddress(String),
    #[error("UDP socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("QUIC: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("QUIC: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("QUIC: the endpoint closed")]
    EndpointClosed,
    #[error("QUIC: handshake timed out")]
    HandshakeTimeout,
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS setup: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    CipherSuite(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// A QUIC stream (on a punched path) another peer opened to us.
#[derive(Debug)]
pub struct AcceptedStream {
    pub from: PeerId,
    pub stream: QuicStream,
}

/// A pooled connection and its endpoint (the endpoint owns the punched socket).
#[derive(Debug, Clone)]
struct Pooled {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    streams: Arc<AtomicUsize>,
}

/// Punches to peers and keeps the resulting QUIC connections.
#[derive(Debug)]
pub struct Puncher {
    tracker_host: String,
    client: quinn::ClientConfig,
    server: quinn::ServerConfig,
    pool: Mutex<HashMap<PeerId, Pooled>>,
    accepted: mpsc::Sender<AcceptedStream>,
    shutdown: CancellationToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Asked for the punch; connects.
    Client,
    /// Was invited; accepts.
    Server,
}

impl Puncher {
    /// A puncher using `tracker_host` (the tracker URL's host) for the UDP rendezvous. Streams
    /// other peers open arrive on the returned receiver.
    pub fn new(
        tracker_host: String,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Self>, mpsc::Receiver<AcceptedStream>), PunchError> {
        let (client, server) = quic_configs()?;
        let (accepted, rx) = mpsc::channel(ACCEPT_QUEUE);
        let puncher = Arc::new(Self {
            tracker_host,
            client,
            server,
            pool: Mutex::new(HashMap::new()),
            accepted,
            shutdown,
        });
        Ok((puncher, rx))
    }

    /// A new stream to `to` on the pooled connection, when there is a live one.
    pub async fn pooled_stream(&self, to: PeerId) -> Option<QuicStream> {
        let pooled = self.pooled(&to)?;
        open_stream(&pooled)
            .await
            .inspect_err(|e| tracing::debug!(peer = %to, error = %e, "pooled connection failed"))
            .ok()
    }

    /// Punches with `ticket` (from our request to the hub) and connects over the new path.
    pub async fn punch(self: &Arc<Self>, ticket: PunchTicket) -> Result<QuicStream, PunchError> {
        let pooled = self.establish(ticket, Side::Client).await?;
        open_stream(&pooled).await
    }

    /// Answers an invitation: punches from our side and accepts the other side's connection.
    pub async fn answer(self: &Arc<Self>, ticket: PunchTicket) -> Result<(), PunchError> {
        self.establish(ticket, Side::Server).await.map(drop)
    }

    fn pooled(&self, peer: &PeerId) -> Option<Pooled> {
        let mut pool = self.pool.lock();
        match pool.get(peer) {
            Some(p) if p.conn.close_reason().is_none() => Some(p.clone()),
            Some(_) => {
                pool.remove(peer);
                None
            }
            None => None,
        }
    }

    async fn establish(
        self: &Arc<Self>,
        ticket: PunchTicket,
        side: Side,
    ) -> Result<Pooled, PunchError> {
        let peer = ticket.peer;
        let host = ticket.host.as_deref().unwrap_or(&self.tracker_host);
        let rendezvous = rendezvous_addr(host, ticket.udp_port).await?;
        let socket = UdpSocket::bind(match rendezvous {
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
            SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
        })
        .await?;
        let remote = punch_path(&socket, rendezvous, ticket).await?;
        tracing::debug!(%peer, %remote, ?side, "hole punched");

        let mut endpoint_config = quinn::EndpointConfig::default();
        // Late probes (first byte 0x00) must be dropped, not read as greased QUIC packets.
        endpoint_config.grease_quic_bit(false);
        let server = (side == Side::Server).then(|| self.server.clone());
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            server,
            socket.into_std()?,
            Arc::new(quinn::TokioRuntime),
        )?;
        let conn = tokio::time::timeout(QUIC_TIMEOUT, async {
            let conn: Result<quinn::Connection, PunchError> = match side {
                Side::Client => Ok(endpoint
                    .connect_with(self.client.clone(), remote, "p2p")?
                    .await?),
                Side::Server => loop {
                    let incoming = endpoint.accept().await.ok_or(PunchError::EndpointClosed)?;
                    // Only the address the punch opened; anything else is not this session.
                    if incoming.remote_address() != remote {
                        incoming.refuse();
                        continue;
                    }
                    break Ok(incoming.await?);
                },
            };
            conn
        })
        .await
        .map_err(|_| PunchError::HandshakeTimeout)??;
        let pooled = Pooled {
            conn,
            endpoint,
            streams: Arc::new(AtomicUsize::new(0)),
        };
        if let Some(old) = self.pool.lock().insert(peer, pooled.clone()) {
            // Both sides punched at once: the older connection finishes its streams and idles out.
            tracing::debug!(%peer, "replacing a pooled connection");
            drop(old);
        }
        tokio::spawn(self.clone().accept_streams(peer, pooled.clone()));
        Ok(pooled)
    }

    /// Hands streams the other side opens on `pooled` to the server, and closes the connection
    /// once it has had no streams for [`POOL_IDLE`].
    async fn accept_streams(self: Arc<Self>, peer: PeerId, pooled: Pooled) {
        let mut idle_since = tokio::time::Instant::now();
        let mut check = tokio::time::interval(POOL_IDLE / 4);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = check.tick() => {
                    if pooled.streams.load(Ordering::Acquire) > 0 {
                        idle_since = tokio::time::Instant::now();
                    } else if idle_since.elapsed() >= POOL_IDLE {
                        break;
                    }
                }
                accepted = pooled.conn.accept_bi() => match accepted {
                    Ok((send, recv)) => {
                        let stream = QuicStream::new(&pooled, send, recv);
                        if self.accepted.send(AcceptedStream { from: peer, stream }).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "punched connection ended");
                        break;
                    }
                },
            }
        }
        pooled.conn.close(0u32.into(), b"idle");
        let mut pool = self.pool.lock();
        if pool
            .get(&peer)
            .is_some_and(|p| p.conn.stable_id() == pooled.conn.stable_id())
        {
            pool.remove(&peer);
        }
    }
}

/// The rendezvous of the hub at `host`, UDP `port`.
async fn rendezvous_addr(host: &str, port: u16) -> Result<SocketAddr, PunchError> {
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| PunchError::Resolve {
            host: host.to_owned(),
            source,
        })?
        .collect::<Vec<_>>();
    // IPv4 first: that is where NATs (and so punching) matter.
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| PunchError::NoAddress(host.to_owned()))
}

async fn open_stream(pooled: &Pooled) -> Result<QuicStream, PunchError> {
    let (send, recv) = pooled.conn.open_bi().await?;
    Ok(QuicStream::new(pooled, send, recv))
}

/// Binds at the rendezvous, then probes until the other side's probe arrives; returns the
/// address to talk to.
async fn punch_path(
    socket: &UdpSocket,
    rendezvous: SocketAddr,
    ticket: PunchTicket,
) -> Result<SocketAddr, PunchError> {
    let bind = PunchPacket::Bind {
        token: ticket.token,
    }
    .to_vec();
    let probe = PunchPacket::Probe {
        session: ticket.session,
    }
    .to_vec();
    let mut buf = [0u8; MAX_PUNCH_PACKET_LEN + 1];
    let mut go = ticket.go;

    // 1. Bind until the go: `Bind` until the rendezvous answers `Check` at our public address,
    // then `Confirm` with its cookie until it answers `Bound` (it believes the address only
    // then). The other side may get its go first and probe us already.
    let mut early: Option<SocketAddr> = None;
    let mut confirm: Option<Vec<u8>> = None;
    let mut bound = false;
    let mut tick = tokio::time::interval(BIND_EVERY);
    let bind_deadline = tokio::time::sleep(BIND_TIMEOUT);
    tokio::pin!(bind_deadline);
    let mut target = loop {
        tokio::select! {
            _ = &mut bind_deadline => return Err(PunchError::BindTimeout),
            addr = &mut go => match addr {
                Ok(Ok(addr)) => break addr,
                Ok(Err(code)) => return Err(PunchError::Declined(code)),
                Err(_) => return Err(PunchError::BindTimeout),
            },
            _ = tick.tick(), if !bound => {
                socket.send_to(confirm.as_deref().unwrap_or(&bind), rendezvous).await?;
            }
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                match PunchPacket::decode(&buf[..n]) {
                    Ok(PunchPacket::Probe { session }) if session == ticket.session => {
                        early = Some(from);
                    }
                    Ok(PunchPacket::Check { cookie }) if from == rendezvous && !bound => {
                        let packet = PunchPacket::Confirm { token: ticket.token, cookie }.to_vec();
                        socket.send_to(&packet, rendezvous).await?;
                        confirm = Some(packet);
                    }
                    Ok(PunchPacket::Bound { .. }) if from == rendezvous => bound = true,
                    _ => {}
                }
            }
        }
    };

    // 2. Probe until the other side's probe arrives. Its source wins over the address the
    // tracker confirmed only at that address's IP (a NAT that maps per destination picks
    // another port, not another address): a forged source cannot turn us to a third party.
    if let Some(from) = early.filter(|from| from.ip() == target.ip()) {
        target = from;
    } else {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        let deadline = tokio::time::sleep(PROBE_TIMEOUT);
        tokio::pin!(deadline);
        target = loop {
            tokio::select! {
                _ = &mut deadline => return Err(PunchError::NoPath),
                _ = tick.tick() => {
                    // Errors (an ICMP unreachable from an earlier probe) do not end the punch.
                    let _ = socket.send_to(&probe, target).await;
                }
                r = socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = r
                        && from.ip() == target.ip()
                        && PunchPacket::decode(&buf[..n]) == Ok(PunchPacket::Probe { session: ticket.session })
                    {
                        break from;
                    }
                }
            }
        };
    }
    // 3. The path is open both ways now; make sure the other side hears us too.
    for _ in 0..EXTRA_PROBES {
        let _ = socket.send_to(&probe, target).await;
    }
    Ok(target)
}

/// One bidirectional QUIC stream, as a byte stream for the Noise handshake and the peer
/// protocol. Holds its connection and endpoint alive.
#[derive(Debug)]
pub struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    streams: Arc<AtomicUsize>,
    _conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl QuicStream {
    fn new(pooled: &Pooled, send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        pooled.streams.fetch_add(1, Ordering::AcqRel);
        Self {
            send,
            recv,
            streams: pooled.streams.clone(),
            _conn: pooled.conn.clone(),
            _endpoint: pooled.endpoint.clone(),
        }
    }
}

impl Drop for QuicStream {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.send), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}

/// QUIC settings: windows large enough for a fast path (as for the relay's streams), keep-alives
/// so NAT mappings outlive quiet moments, and an idle timeout that ends dead paths.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20))
        .receive_window(quinn::VarInt::from_u32(32 << 20))
        .send_window(32 << 20)
        .keep_alive_interval(Some(Duration::from_secs(10)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(30)) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

fn quic_configs() -> Result<(quinn::ClientConfig, quinn::ServerConfig), PunchError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let cert = rcgen::generate_simple_self_signed(vec!["p2p".to_owned()])?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let server = QuicServerConfig::try_from(server)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport());

    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoiseAuthenticates(provider)))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    let client = QuicClientConfig::try_from(client)?;
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport());
    Ok((client, server))
}

/// Takes any certificate: the peer is authenticated by the Noise handshake inside the stream,
/// which pins its peer id. The TLS handshake's own signature is still checked, so the QUIC keys
/// belong to whoever holds the certificate's key.
#[derive(Debug)]
struct NoiseAuthenticates(Arc<CryptoProvider>);

impl ServerCertVerifier for NoiseAuthenticates {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered (QUIC requires it).
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_proto::punch::Nonce16;
    use tokio::sync::oneshot;

    type Go = oneshot::Sender<Result<SocketAddr, CloseCode>>;

    fn ticket(session: Nonce16, token: Nonce16) -> (PunchTicket, Go) {
        let (tx, go) = oneshot::channel();
        let t = PunchTicket {
            peer: PeerId([0; 32]),
            session,
            token,
            host: None,
            udp_port: 0,
            go,
        };
        (t, tx)
    }

    /// A stand-in rendezvous: answers nothing, records who bound.
    async fn rendezvous() -> (UdpSocket, SocketAddr) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = s.local_addr().unwrap();
        (s, a)
    }

    #[tokio::test]
    async fn two_sockets_find_each_other_and_the_probe_source_wins() {
        let (rv, rv_addr) = rendezvous().await;
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let (ta, go_a) = ticket([1; 16], [2; 16]);
        let (tb, go_b) = ticket([1; 16], [3; 16]);
        // The rendezvous checks each bind with a cookie, believes an address once its cookie
        // comes back from it, then says go with each other's address.
        let coordinator = tokio::spawn(async move {
            let cookie = |token: [u8; 16], from: SocketAddr| {
                let mut c = token;
                c[..2].copy_from_slice(&from.port().to_be_bytes());
                c
            };
            let mut seen = HashMap::new();
            let mut buf = [0u8; 64];
            while seen.len() < 2 {
                let (n, from) = rv.recv_from(&mut buf).await.unwrap();
                let reply = match PunchPacket::decode(&buf[..n]) {
                    Ok(PunchPacket::Bind { token }) => PunchPacket::Check {
                        cookie: cookie(token, from),
                    },
                    Ok(PunchPacket::Confirm { token, cookie: c }) => {
                        assert_eq!(c, cookie(token, from), "the cookie sent to this socket");
                        seen.insert(token, from);
                        PunchPacket::Bound { addr: from }
                    }
                    other => panic!("unexpected {other:?}"),
                };
                rv.send_to(&reply.to_vec(), from).await.unwrap();
            }
            go_a.send(Ok(seen[&[3; 16]])).unwrap();
            go_b.send(Ok(seen[&[2; 16]])).unwrap();
        });
        let (ra, rb) = tokio::join!(punch_path(&a, rv_addr, ta), punch_path(&b, rv_addr, tb));
        coordinator.await.unwrap();
        assert_eq!(ra.unwrap(), b_addr);
        assert_eq!(rb.unwrap(), a_addr);
    }

    #[tokio::test]
    async fn a_probe_from_another_ip_does_not_redirect_the_punch() {
        let (_rv, rv_addr) = rendezvous().await;
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a_addr = a.local_addr().unwrap();
        // The confirmed address never answers; a probe of the session comes from elsewhere.
        let confirmed = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let third = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        let (ta, go) = ticket([1; 16], [2; 16]);
        let session = ta.session;
        go.send(Ok(confirmed.local_addr().unwrap())).unwrap();
        let forger = tokio::spawn(async move {
            let probe = PunchPacket::Probe { session }.to_vec();
            for _ in 0..20 {
                third.send_to(&probe, a_addr).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // What reached the third party: nothing.
            let mut buf = [0u8; 64];
            tokio::time::timeout(Duration::from_millis(200), third.recv_from(&mut buf))
                .await
                .is_ok()
        });
        assert!(matches!(
            punch_path(&a, rv_addr, ta).await,
            Err(PunchError::NoPath)
        ));
        assert!(!forger.await.unwrap(), "a datagram reached the third party");
        // Another port at the confirmed IP (a NAT mapping per destination) does win.
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b_addr = b.local_addr().unwrap();
        let (ta, go) = ticket([1; 16], [2; 16]);
        go.send(Ok(confirmed.local_addr().unwrap())).unwrap();
        let other_port = tokio::spawn(async move {
            let probe = PunchPacket::Probe { session }.to_vec();
            b.send_to(&probe, a_addr).await.unwrap();
        });
        assert_eq!(punch_path(&a, rv_addr, ta).await.unwrap(), b_addr);
        other_port.await.unwrap();
    }

    #[tokio::test]
    async fn a_silent_peer_ends_in_no_path() {
        let (_rv, rv_addr) = rendezvous().await;
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // The other side "bound" at a socket nobody reads.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (ta, go) = ticket([1; 16], [2; 16]);
        go.send(Ok(silent.local_addr().unwrap())).unwrap();
        assert!(matches!(
            punch_path(&a, rv_addr, ta).await,
            Err(PunchError::NoPath)
        ));
        let (tc, declined) = ticket([1; 16], [2; 16]);
        declined.send(Err(CloseCode::Unsupported)).unwrap();
        assert!(matches!(
            punch_path(&a, rv_addr, tc).await,
            Err(PunchError::Declined(CloseCode::Unsupported))
        ));
        let (tb, _never) = ticket([1; 16], [2; 16]);
        assert!(matches!(
            tokio::time::timeout(Duration::from_secs(10), punch_path(&a, rv_addr, tb))
                .await
                .unwrap(),
            Err(PunchError::BindTimeout)
        ));
    }

    #[tokio::test]
    async fn quic_carries_bytes_both_ways_with_the_throwaway_certificate() {
        let (client, server) = quic_configs().unwrap();
        let server_ep = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server_ep.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let conn = server_ep.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let mut got = vec![0u8; 5];
            recv.read_exact(&mut got).await.unwrap();
            send.write_all(&got).await.unwrap();
            send.finish().unwrap();
            conn.closed().await;
        });
        let client_ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = client_ep
            .connect_with(client, addr, "p2p")
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"hello").await.unwrap();
        let mut back = vec![0u8; 5];
        recv.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        conn.close(0u32.into(), b"done");
        accept.await.unwrap();
    }
}
