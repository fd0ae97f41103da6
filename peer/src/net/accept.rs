//! Inbound connections, the mirror of the [`crate::net::connector::Connector`]: every path by
//! which a peer can reach us (a TCP listener, streams through the relay, streams on
//! hole-punched QUIC connections) hands its streams to one [`Acceptor::accept`], which opens
//! the session ([`session::open`], as the dialling side does) and gives it to the one
//! [`Serve`] handler the node runs (the uploader). Limits on inbound work belong here, where
//! every path passes.

use std::net::SocketAddr;
use std::sync::Arc;

use p2p_proto::PeerId;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::identity::Identity;
use crate::net::punch::{AcceptedStream, Puncher};
use crate::net::relay::{Incoming, RelayClient};
use crate::net::secure::{Role, SecureError};
use crate::net::session::{self, Session};
use crate::net::ticket::PunchTicket;
use crate::net::transport::{BoxedTransport, ConnectionPath};

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

/// Accepts inbound streams from every path and serves each with `H`. Cheap to clone.
#[derive(Debug)]
pub struct Acceptor<H> {
    identity: Identity,
    handler: Arc<H>,
    shutdown: CancellationToken,
}

impl<H> Clone for Acceptor<H> {
    fn clone(&self) -> Self {
        Self {
            identity: self.identity.clone(),
            handler: self.handler.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

impl<H: Serve> Acceptor<H> {
    /// Serves as `identity` with `handler` until `shutdown`.
    pub fn new(identity: Identity, handler: Arc<H>, shutdown: CancellationToken) -> Self {
        Self {
            identity,
            handler,
            shutdown,
        }
    }

    /// Accepts TCP connections on `listener` until shutdown.
    pub fn listen(&self, listener: TcpListener) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let (stream, addr) = tokio::select! {
                    _ = this.shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
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
    pub fn accept(&self, inbound: Inbound) {
        let this = self.clone();
        tokio::spawn(async move {
            let path = inbound.path();
            let Inbound { stream, remote } = inbound;
            let served = async {
                let session = session::open(stream, &this.identity, Role::Responder, None).await?;
                tracing::debug!(%remote, peer = %session.remote, "peer connected");
                this.handler.serve(session, path).await
            };
            tokio::select! {
                _ = this.shutdown.cancelled() => {}
                result = served => if let Err(e) = result {
                    tracing::debug!(%remote, error = %e, "connection ended");
                }
            }
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
