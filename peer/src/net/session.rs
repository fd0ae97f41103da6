//! Opening a session, the same way for the side that dialled and the side that accepted: the
//! Noise handshake ([`secure::handshake`]), which proves the other side's peer id, then each
//! side's `Hello`. Neither side waits for the other's `Hello` before going on, so opening costs
//! no round trip beyond the handshake's; whoever needs the other's version checks it when the
//! frame arrives ([`speaks_our_version`]).

use p2p_proto::PeerId;
use p2p_proto::wire::{Frame, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};

use crate::identity::Identity;
use crate::net::secure::{self, Role, SecureError, SecureReader, SecureWriter};
use crate::net::transport::BoxedTransport;

/// The name peers announce in `Hello`.
pub const AGENT: &str = concat!("p2p-peer/", env!("CARGO_PKG_VERSION"));

/// An open session: the encrypted frame stream's two halves and the peer at the other end.
#[derive(Debug)]
pub struct Session<S = BoxedTransport> {
    pub reader: SecureReader<ReadHalf<S>>,
    pub writer: SecureWriter<WriteHalf<S>>,
    /// The other side's peer id, as the handshake proved it.
    pub remote: PeerId,
}

/// Runs the handshake on `stream` in `role` (with `expected`, a remote with another key is
/// refused) and sends our `Hello`.
pub async fn open<S>(
    stream: S,
    identity: &Identity,
    role: Role,
    expected: Option<PeerId>,
) -> Result<Session<S>, SecureError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (reader, mut writer, remote) = secure::handshake(stream, identity, role, expected).await?;
    writer.send(&hello()).await?;
    Ok(Session {
        reader,
        writer,
        remote,
    })
}

/// This peer's `Hello`.
pub fn hello() -> Frame {
    Frame::Hello {
        version: PROTOCOL_VERSION,
        min_version: PROTOCOL_VERSION,
        agent: AGENT.into(),
    }
}

/// Whether a peer whose `Hello` says it speaks versions `min_version..=version` speaks ours.
pub fn speaks_our_version(version: u16, min_version: u16) -> bool {
    version >= PROTOCOL_VERSION && min_version <= PROTOCOL_VERSION
}
