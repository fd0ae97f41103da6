//! What every path carries: a byte stream, before the Noise handshake, and which path it took.

use p2p_proto::api::ConnectionPathKind;
use tokio::io::{AsyncRead, AsyncWrite};

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
