//! Transports: opening, authenticating and carrying sessions between peers, for whoever uses
//! them; nothing here knows of downloads or uploads. Every path (TCP, hole-punched QUIC, relay
//! tunnel) carries the same Noise-encrypted frame stream from [`secure`].
//!
//! - [`addr`]: a peer's address (peer id, socket addresses, relay hint), passed by every layer.
//! - [`transport`]: a byte stream before the handshake, and which path it took.
//! - [`secure`]: the Noise handshake and the encrypted frame stream.
//! - [`session`]: opening a session (handshake, then `Hello`), the same on both sides.
//! - [`connector`]: outbound: the strategy choosing a path per peer (direct, hole-punched,
//!   relayed) and the pool of sessions.
//! - [`accept`]: inbound: every path's streams into one serve function.
//! - [`link`]: one encrypted session per peer, shared by every download from it.
//! - [`relay`]: the client of the tracker's relay hub (streams multiplexed on one WebSocket).
//! - [`punch`]: UDP hole punching and QUIC over the punched path.
//! - [`ticket`]: what the relay hub hands each side of a punch (shared by `relay` and `punch`).

pub mod accept;
pub mod addr;
pub mod connector;
pub mod link;
pub mod punch;
pub mod relay;
pub mod secure;
pub mod session;
pub mod ticket;
pub mod transport;

pub use addr::{PeerAddr, RelayUrl};
