//! Shared protocol types for the p2p file-sharing system.
//!
//! This crate does no IO and does not depend on tokio, so it compiles for `wasm32-unknown-unknown`
//! and is shared by the tracker, the peer and the dashboard.
//!
//! Modules:
//! - [`ids`]: [`FileId`], [`PeerId`] and [`Sha256Hash`] newtypes, shown and parsed as lowercase hex.
//! - [`manifest`]: chunking rules, chunk hashes, the hash chain that verifies each chunk against
//!   the file id, the Merkle tree over the chunk hashes and manifest validation.
//! - [`bitfield`]: which chunks a peer has.
//! - [`collection`]: folder collections (relative path, file id, size, executable bit) and
//!   their canonical encoding, whose SHA-256 is the collection's id.
//! - [`api`]: tracker REST and WebSocket types.
//! - [`wire`]: peer-to-peer frames (manifest, bitfield, have, request, chunk, reject…).
//! - [`admission`]: a tracker's signed admission of a peer to a private file (Ed25519).
//! - [`link`]: share links (`p2p1…`: trackers, id, peers, relays, an optional read grant) and
//!   read grants, the tracker's permission to read one id without an API key.
//! - [`peer_auth`]: the proof that a tracker request speaks for a peer id (registration proof,
//!   HMAC-SHA256).
//! - [`relay`]: relay hub frames (attach proof, streams, flow-control windows, punch control).
//! - [`punch`]: UDP hole-punching packets (rendezvous binding and probes).
//! - [`sha256_lanes`]: SHA-256 compression over up to four independent inputs at once (SHA-NI).
//!
//! Features:
//! - `openapi`: poem-openapi derives on the REST types (the tracker uses them to generate its spec).

pub mod admission;
pub mod api;
pub mod bitfield;
pub mod collection;
pub mod ids;
pub mod link;
pub mod manifest;
#[cfg(feature = "openapi")]
mod openapi;
pub mod peer_auth;
pub mod punch;
pub mod relay;
pub mod sha256_lanes;
pub mod wire;

pub use bitfield::Bitfield;
pub use ids::{FileId, PeerId, Sha256Hash};
pub use manifest::{
    CHUNK_SIZE, ChainHasher, ChunkError, Manifest, ManifestBuilder, ManifestError, MerkleTree,
};
