//! Transports. Every path (TCP, hole-punched QUIC, relay tunnel) carries the same
//! Noise-encrypted frame stream from [`secure`].
//!
//! - [`secure`]: the Noise handshake and the encrypted frame stream.
//! - [`relay`]: the client of the tracker's relay hub (streams multiplexed on one WebSocket).
//! - [`connector`]: the strategy choosing a path per peer (direct, then relayed).

pub mod connector;
pub mod relay;
pub mod secure;
