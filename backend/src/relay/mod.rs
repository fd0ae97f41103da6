//! `/relay?peer_id=…`: the relay hub. Peers that cannot reach each other directly attach here
//! over one WebSocket each and open tunnels (streams) to other attached peers; the hub forwards
//! the tunnel bytes, which are the peers' own Noise ciphertext.
//!
//! Attaching needs the tracker's usual credentials (`?token=`, `X-API-Key` or `Authorization`),
//! or a read grant (`?grant=` or `X-Read-Grant`: a share link's receiver, which has no
//! credentials; it may only dial the peers of the grant's id, is not reachable, and is detached
//! when the grant expires, see [`DialScope`]), and a proof of the peer id's private key: the hub sends a fresh X25519 key and a nonce, the
//! peer answers with [`proof_mac`](p2p_proto::relay::proof_mac) keyed by the Diffie-Hellman of its static key and that fresh
//! key, which the hub recomputes from its side. A second attach of the same id replaces the first.
//!
//! Flow control is per stream and enforced here: a side may send [`INITIAL_WINDOW`](p2p_proto::relay::INITIAL_WINDOW) bytes plus
//! what the receiver granted with `Window`; more is a protocol violation that closes the tunnel.
//! Per-tunnel and total byte limits and an idle timeout close tunnels.
//!
//! Fairness: the hub never waits for a peer's queue. Frames for a peer go into its queue at
//! once or, when it holds more than `max_queued_bytes` (or 4096 frames), the peer
//! is dropped as too slow a reader: its own tunnels close, and nobody else waited for it.
//! One connection holds at most `max_tunnels` tunnels, one credential attaches at most
//! `max_peers_per_key` ids, empty `Data` and zero `Window` frames are protocol violations, and
//! tunnel events reach the live feed at most 50 a second.
//!
//! Modules:
//! - [`hub`]: the routing state and its rules (attachments, tunnels, windows, caps), with no
//!   socket in it;
//! - [`conn`]: one peer's WebSocket: the attach proof, then read a frame, ask the hub, write;
//! - [`punch`]: the hole-punch rendezvous (sessions and the UDP port).

mod conn;
mod hub;
pub mod punch;

pub use conn::{ATTACH_TIMEOUT, serve};
pub use hub::{DialScope, RelayHub, RelayLimits};
