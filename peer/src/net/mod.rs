//! Transports. Every path (TCP, hole-punched QUIC, relay tunnel) carries the same
//! Noise-encrypted frame stream from [`secure`].
//!
//! - [`secure`]: the Noise handshake and the encrypted frame stream.
//! - [`relay`]: the client of the tracker's relay hub (streams multiplexed on one WebSocket).
//! - [`punch`]: UDP hole punching coordinated through the relay hub, then QUIC over the path.
//! - [`connector`]: the strategy choosing a path per peer (direct, hole-punched, relayed).
//! - [`link`]: one encrypted session per peer, shared by every download from it.

pub mod connector;
pub mod link;
pub mod punch;
pub mod relay;
pub mod secure;
