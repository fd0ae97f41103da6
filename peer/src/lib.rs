//! The peer node of the p2p file-sharing system.
//!
//! Modules:
//! - [`identity`]: the peer's persistent X25519 static key; its public half is the peer id.
//! - [`net`]: transports; [`net::secure`] is the Noise-encrypted frame stream every connection
//!   (TCP, hole-punched QUIC, relay tunnel) runs.

pub mod identity;
pub mod net;

pub use identity::Identity;
