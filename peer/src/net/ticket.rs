//! A hole punch's ticket: what the relay hub hands each side of a punch ([`crate::net::relay`]
//! receives it, [`crate::net::punch`] uses it), so that neither module needs the other.

use std::net::SocketAddr;

use p2p_proto::PeerId;
use p2p_proto::punch::Nonce16;
use p2p_proto::relay::CloseCode;
use tokio::sync::oneshot;

/// One side's part of a punch session, as the hub handed it out.
#[derive(Debug)]
pub struct PunchTicket {
    /// The other side (as the hub says; the Noise handshake proves it).
    pub peer: PeerId,
    pub session: Nonce16,
    pub token: Nonce16,
    /// The host of the hub that coordinates the punch (its relay URL's host), where its
    /// rendezvous listens; `None`: the puncher's own default (the tracker's host).
    pub host: Option<String>,
    /// The hub's rendezvous port.
    pub udp_port: u16,
    /// Fires with the other side's address once both are bound, or why the punch is off.
    pub go: oneshot::Receiver<Result<SocketAddr, CloseCode>>,
}
