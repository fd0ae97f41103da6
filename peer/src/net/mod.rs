//! Transports. Every path (TCP, hole-punched QUIC, relay tunnel) carries the same
//! Noise-encrypted frame stream from [`secure`].

pub mod secure;
