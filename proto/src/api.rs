//! Tracker REST and WebSocket types, shared by the tracker, the peer and the dashboard.
//!
//! Times are Unix milliseconds (`*_ms`). Bitfields travel as base64 strings (see
//! [`crate::Bitfield`]). With the `openapi` feature these types carry poem-openapi derives.

use serde::{Deserialize, Serialize};

use crate::ids::{FileId, PeerId, Sha256Hash};
use crate::manifest::Manifest;

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `bad_request`, `unauthorized`, `not_found`, `conflict`.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
}

/// `POST /api/auth/login`: either an API key, or a username and password.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct LoginRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub password: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct LoginResponse {
    /// A JWT, accepted wherever an API key is (`Authorization: Bearer <token>`).
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
    pub expires_at_ms: u64,
    /// Who the token is for: a user name, or `api-key:<id>`.
    pub subject: String,
    pub role: String,
}

/// `POST /api/peers/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct RegisterPeerRequest {
    pub peer_id: PeerId,
    /// IP addresses or host names the peer listens on (at most 16, each an IP address or a
    /// host name of at most 253 characters). Empty: the tracker uses the address the request
    /// came from.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        oai(default, validator(max_items = 16, min_length = 1, max_length = 253))
    )]
    pub addresses: Vec<String>,
    /// TCP port of the peer protocol.
    pub port: u16,
    /// UDP port for QUIC / hole punching, if the peer has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub udp_port: Option<u16>,
    /// The peer cannot accept inbound connections; reach it through the relay.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", oai(default))]
    pub relay_only: bool,
    /// The peer's home relay (`http(s)://host:port`, as `GET /api/relays` lists it): where
    /// others open tunnels and hole punches to it. Absent: the relay of the tracker it uses.
    /// At most 256 bytes, no path, query or user info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        oai(skip_serializing_if_is_none, validator(max_length = 256))
    )]
    pub relay: Option<String>,
    /// A display name: at most 128 characters, no control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        oai(
            skip_serializing_if_is_none,
            validator(max_length = 128, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")
        )
    )]
    pub name: Option<String>,
    /// The peer software's version: at most 128 characters, no control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        oai(
            skip_serializing_if_is_none,
            validator(max_length = 128, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")
        )
    )]
    pub version: Option<String>,
    /// Proof of possession of `peer_id`'s private key, answering a challenge from
    /// `POST /api/peers/challenge`. Required: a registration without one is refused with 401.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub proof: Option<PeerProof>,
}

/// `POST /api/peers/challenge`: the peer id that is about to register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct PeerChallengeRequest {
    pub peer_id: PeerId,
}

/// A challenge to prove possession of a peer id's private key (see [`crate::peer_auth`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct PeerChallenge {
    pub peer_id: PeerId,
    /// The tracker's long-lived X25519 public key, 64 hex characters.
    pub tracker_key: String,
    /// 64 hex characters, opaque to the peer; valid for `peer_id` only.
    pub nonce: String,
    /// Seconds the nonce stays valid.
    pub expires_in_secs: u64,
}

/// The answer to a [`PeerChallenge`], sent with the registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct PeerProof {
    /// The challenge's nonce, as received (64 hex characters).
    #[cfg_attr(feature = "openapi", oai(validator(pattern = "^[0-9a-fA-F]{64}$")))]
    pub nonce: String,
    /// [`crate::peer_auth::proof_mac`], 64 hex characters.
    #[cfg_attr(feature = "openapi", oai(validator(pattern = "^[0-9a-fA-F]{64}$")))]
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct RegisterPeerResponse {
    pub peer_id: PeerId,
    /// The address the tracker saw the request come from.
    pub observed_ip: String,
    /// How often to send heartbeats.
    pub heartbeat_interval_secs: u32,
    /// A peer not heard from for this long is offline.
    pub peer_ttl_secs: u32,
    /// Send this in the `X-Peer-Token` header of heartbeats, announces, unannounces and the
    /// unregistration of this peer id.
    pub peer_token: String,
    /// Seconds until `peer_token` expires; heartbeats hand out a fresh one before then.
    pub peer_token_expires_in_secs: u64,
    /// The tracker's Ed25519 public key (64 hex characters), which signs admissions to
    /// private files (see [`crate::admission`]): the peer serves its private files to the
    /// holders of admissions this key signed. Absent from trackers that do not admit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub admission_key: Option<String>,
}

/// `POST /api/peers/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct HeartbeatRequest {
    pub peer_id: PeerId,
    /// Bytes uploaded since the peer started, for statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub uploaded: Option<u64>,
    /// Bytes downloaded since the peer started, for statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub downloaded: Option<u64>,
    /// How the peer last reached each other peer, at most [`MAX_PEER_CONNECTIONS`] entries.
    /// Replaces the list the tracker has; absent: the list is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        oai(skip_serializing_if_is_none, validator(max_items = 256))
    )]
    pub connections: Option<Vec<PeerConnection>>,
}

/// Most entries a heartbeat's `connections` may have.
pub const MAX_PEER_CONNECTIONS: usize = 256;

/// How a connection between two peers runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
#[serde(rename_all = "snake_case")]
pub enum ConnectionPathKind {
    /// TCP straight to the other peer.
    Direct,
    /// QUIC over a UDP hole punched through both NATs.
    HolePunched,
    /// A tunnel through the tracker's relay.
    Relayed,
}

impl std::fmt::Display for ConnectionPathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::HolePunched => "hole-punched",
            Self::Relayed => "relayed",
        })
    }
}

/// One peer's latest outgoing connection to another peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct PeerConnection {
    /// The other peer.
    pub peer_id: PeerId,
    pub path: ConnectionPathKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct HeartbeatResponse {
    pub next_heartbeat_secs: u32,
    /// A fresh peer token when the one sent has less than half its lifetime left; send it from
    /// now on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub peer_token: Option<String>,
    /// Seconds until the fresh `peer_token` expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub peer_token_expires_in_secs: Option<u64>,
}

/// A registered peer, as listed by `GET /api/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub addresses: Vec<String>,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub udp_port: Option<u16>,
    pub relay_only: bool,
    /// Its home relay, when it registered one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub relay: Option<String>,
    pub observed_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub version: Option<String>,
    pub online: bool,
    pub registered_at_ms: u64,
    pub last_seen_ms: u64,
    /// Files this peer has announced.
    pub files: u64,
    pub uploaded: u64,
    pub downloaded: u64,
    /// How this peer last reached each other peer, as its heartbeats reported.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", oai(default))]
    pub connections: Vec<PeerConnection>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct PeerList {
    pub peers: Vec<PeerInfo>,
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
}

/// `POST /api/files/announce`: the announcing peer has this file, whole or in part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct AnnounceRequest {
    pub peer_id: PeerId,
    pub file: Manifest,
    /// Base64 bitfield of the chunks the peer has (most significant bit first, standard
    /// alphabet with padding, one bit per chunk of the manifest). Absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        oai(
            skip_serializing_if_is_none,
            validator(max_length = 174764, pattern = "^[A-Za-z0-9+/]*={0,2}$")
        )
    )]
    pub have: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct AnnounceResponse {
    pub file_id: FileId,
    /// Whether this announce made the file known to the tracker.
    pub created: bool,
    pub chunks_have: u64,
    pub complete: bool,
    /// The manifest variant the peer's claim is filed under (see [`ManifestVariant`]); 0 from
    /// trackers that keep one manifest per file.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", oai(default))]
    pub variant: u32,
}

/// One file in `GET /api/files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct FileSummary {
    pub id: FileId,
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    pub chunk_count: u64,
    pub merkle_root: Sha256Hash,
    /// Online peers with the whole file.
    pub seeders: u64,
    /// Online peers with part of it.
    pub leechers: u64,
    pub created_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct FileList {
    pub files: Vec<FileSummary>,
    /// Files matching the search, over all pages.
    pub total: u64,
    pub offset: u64,
    pub limit: u64,
}

/// `GET /api/files/{hash}`: a manifest of the file plus swarm figures.
///
/// A file id is the SHA-256 of the content, so the tracker cannot tell a true manifest from a
/// false one: it keeps each distinct manifest announced under an id (a *variant*) with the
/// peers that announced it. The manifest here is the asked-for variant, by default the one
/// with the most online announcers; `variants` lists them all, best first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct FileDetails {
    #[serde(flatten)]
    #[cfg_attr(feature = "openapi", oai(flatten))]
    pub manifest: Manifest,
    pub chunk_count: u64,
    /// Online peers with the whole file, over all variants.
    pub seeders: u64,
    /// Online peers with part of it, over all variants.
    pub leechers: u64,
    pub created_at_ms: u64,
    /// Which variant `manifest` is; 0 from trackers that keep one manifest per file.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", oai(default))]
    pub variant: u32,
    /// Every variant of the file, most online announcers first (ties: the oldest first).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", oai(default))]
    pub variants: Vec<ManifestVariant>,
}

/// One distinct manifest announced under a file id, and who announced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct ManifestVariant {
    /// Its number within the file (`?variant=` of `GET /api/files/{hash}` and its peers).
    pub variant: u32,
    pub name: String,
    pub size: u64,
    pub chunk_count: u64,
    pub merkle_root: Sha256Hash,
    /// Online announcers with the whole file.
    pub seeders: u64,
    /// Online announcers with part of it.
    pub leechers: u64,
    pub created_at_ms: u64,
}

impl ManifestVariant {
    /// Its online announcers.
    pub fn online(&self) -> u64 {
        self.seeders + self.leechers
    }
}

/// One online peer that has (part of) a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct FilePeer {
    pub peer_id: PeerId,
    /// Where to dial the peer: its announced addresses, then the address the tracker saw.
    pub addresses: Vec<String>,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub udp_port: Option<u16>,
    /// Reach this peer through the relay only.
    pub relay_only: bool,
    /// Its home relay (see [`RegisterPeerRequest::relay`]): open tunnels and punches to it
    /// there. Absent: the relay of the tracker it uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub relay: Option<String>,
    pub complete: bool,
    /// Base64 bitfield of the chunks it has; absent when complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub have: Option<String>,
    pub chunks_have: u64,
    pub last_seen_ms: u64,
    /// The manifest variant the peer announced (see [`ManifestVariant`]); absent from trackers
    /// that keep one manifest per file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub variant: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct FilePeers {
    pub file_id: FileId,
    /// Chunks of the asked-for variant (without `variant`: of the manifest the file is listed
    /// with); each peer's `have` has its own variant's chunk count.
    pub chunk_count: u64,
    pub peers: Vec<FilePeer>,
    /// With the asking peer's `X-Peer-Token`: the tracker's admission of that peer to the file
    /// ([`crate::admission::Admission`], 336 hex characters), which the file's peers ask for
    /// before they serve a private file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub admission: Option<String>,
    /// For a lookup with an `X-Peer-Proof` (a read grant's holder that never registered): a
    /// peer token for the proven peer id, to send as `X-Peer-Token` on its later lookups of
    /// the file (each then carries a fresh admission) instead of proving its key again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub peer_token: Option<String>,
}

/// A read grant: the tracker's signed permission to read one file's (or folder collection's)
/// details and peers until an expiry, without an API key ([`crate::link::ReadGrant`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct ReadGrantInfo {
    pub file_id: FileId,
    /// The grant, 144 hex characters: send it as `X-Read-Grant`, or carry it in a share link.
    pub grant: String,
    /// Unix milliseconds, the tracker's clock.
    pub expires_at_ms: u64,
    pub expires_in_secs: u64,
}

/// Read grants for a folder collection's member files, from
/// `POST /api/files/{hash}/grants/members`: what a share link's holder needs to download each
/// member without an API key. Every grant ends when the collection's grant does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct MemberGrants {
    /// The collection the grants are for.
    pub collection_id: FileId,
    /// Unix milliseconds, the tracker's clock: the collection grant's expiry.
    pub expires_at_ms: u64,
    /// One grant (144 hex characters, naming its file id) per distinct member file, in the
    /// collection's order; empty files have none (nobody needs to ask for them).
    pub grants: Vec<String>,
}

/// One relay of the fleet: a tracker that publishes its relay hub (`--relay-url`) and has
/// reported in recently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct RelayInfo {
    /// `http(s)://host:port`; its hub is at `/relay` (WebSocket) and its hole-punch rendezvous
    /// on the same host's UDP port the hub announces.
    pub url: String,
    /// Peers attached to it at its last report.
    pub attached: u64,
    pub last_seen_ms: u64,
}

/// `GET /api/relays`: the relays peers may choose a home relay from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct RelayList {
    pub relays: Vec<RelayInfo>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct Health {
    /// `ok`, or `degraded` when the database cannot be reached.
    pub status: String,
    pub version: String,
    /// `ok` or `unreachable`.
    pub database: String,
    /// `sqlite` or `postgres`.
    pub backend: String,
}

/// `GET /api/stats`: the swarm at a glance (the dashboard's overview).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct Stats {
    pub peers_online: u64,
    pub peers_total: u64,
    pub files: u64,
    /// Sum of all files' sizes.
    pub total_bytes: u64,
    /// Peers attached to the relay hubs of every tracker on the database (each reports every
    /// few seconds; the answering tracker's own figure is current).
    pub relay_connections: u64,
    /// `/ws` clients of every tracker on the database, counted as `relay_connections`.
    pub ws_clients: u64,
}

/// Roles of dashboard users and API keys.
pub mod role {
    /// May manage API keys, users, files and peers.
    pub const ADMIN: &str = "admin";
    /// A dashboard user who sees everything and changes nothing.
    pub const VIEWER: &str = "viewer";
    /// What API keys act as: peers registering, announcing and looking up.
    pub const PEER: &str = "peer";
}

/// An API key as listed: never the key itself, which only its creator sees once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct ApiKeyInfo {
    /// 12 hex characters; the principal of a request made with the key is `api-key:<id>`.
    pub id: String,
    pub name: String,
    pub created_at_ms: u64,
    /// Set once the key is revoked; it is refused from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub revoked_at_ms: Option<u64>,
}

/// `GET /api/keys`: every API key stored in the database, revoked ones included (keys from
/// the tracker's `API_KEYS` setting are not listed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct ApiKeyList {
    pub keys: Vec<ApiKeyInfo>,
}

/// `POST /api/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct CreateApiKeyRequest {
    /// What the key is for (1-64 characters, no control characters), e.g. the peer's host.
    #[cfg_attr(
        feature = "openapi",
        oai(validator(min_length = 1, max_length = 64, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"))
    )]
    pub name: String,
}

/// A new API key: `key` is shown this once; the tracker keeps only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct CreatedApiKey {
    /// `p2pk_` and 64 hex characters: give it to a peer (`--api-key`).
    pub key: String,
    pub id: String,
    pub name: String,
    pub created_at_ms: u64,
}

/// A dashboard user (never the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct UserInfo {
    pub username: String,
    /// `admin` or `viewer` (see [`role`]).
    pub role: String,
    pub created_at_ms: u64,
}

/// `GET /api/users`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct UserList {
    pub users: Vec<UserInfo>,
}

/// `POST /api/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct CreateUserRequest {
    /// 1-64 characters without control characters.
    #[cfg_attr(
        feature = "openapi",
        oai(validator(min_length = 1, max_length = 64, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$"))
    )]
    pub username: String,
    /// At least 8 characters.
    #[cfg_attr(feature = "openapi", oai(validator(min_length = 8)))]
    pub password: String,
    /// `admin` or `viewer`.
    #[cfg_attr(feature = "openapi", oai(validator(pattern = "^(admin|viewer)$")))]
    pub role: String,
}

/// Why a peer left the swarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// It unregistered itself.
    Unregistered,
    /// It missed its heartbeats.
    Expired,
    /// An admin removed it (`DELETE /api/peers/{id}`).
    Removed,
}

/// A live event on `/ws`, sent as a JSON text message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// First message after authentication.
    Hello {
        version: String,
    },
    PeerJoined {
        peer_id: PeerId,
        addresses: Vec<String>,
        port: u16,
        relay_only: bool,
        /// The address the tracker saw the peer's request come from (empty if unknown); others
        /// reach the peer there when it registered no addresses.
        #[serde(default)]
        observed_ip: String,
    },
    PeerLeft {
        peer_id: PeerId,
        reason: LeaveReason,
    },
    FileAnnounced {
        file_id: FileId,
        name: String,
        size: u64,
        peer_id: PeerId,
        complete: bool,
        /// The file was new to the tracker.
        created: bool,
    },
    /// `peer_id` no longer offers the file (it withdrew its announce).
    FileUnannounced {
        file_id: FileId,
        peer_id: PeerId,
    },
    /// An admin removed the file for everyone (`DELETE /api/files/{hash}`): no peer is listed
    /// for it any more and it left the listings.
    FileRemoved {
        file_id: FileId,
        name: String,
    },
    RelayConnected {
        peer_id: PeerId,
    },
    RelayDisconnected {
        peer_id: PeerId,
    },
    /// A relay tunnel from `from` to `to` was opened.
    TunnelOpened {
        from: PeerId,
        to: PeerId,
    },
    /// A relay tunnel closed after carrying `bytes` (both directions).
    TunnelClosed {
        from: PeerId,
        to: PeerId,
        bytes: u64,
        reason: String,
    },
    /// The client read too slowly and this many events were dropped for it.
    Lagged {
        missed: u64,
    },
}

/// An [`Event`] with its time: `{"ts_ms": …, "type": "peer_joined", …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMessage {
    pub ts_ms: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// First message a `/ws` client may send instead of passing `?token=` in the URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsAuth {
    /// A JWT or an API key.
    pub token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_shape() {
        let msg = EventMessage {
            ts_ms: 5,
            event: Event::PeerLeft {
                peer_id: PeerId([0xab; 32]),
                reason: LeaveReason::Expired,
            },
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"ts_ms":5,"type":"peer_left","peer_id":"{}","reason":"expired"}}"#,
                "ab".repeat(32)
            )
        );
        assert_eq!(serde_json::from_str::<EventMessage>(&json).unwrap(), msg);
    }

    #[test]
    fn heartbeat_connections_json_shape() {
        let peer = PeerId([0xab; 32]);
        let old_peer = format!(r#"{{"peer_id":"{peer}"}}"#);
        let beat: HeartbeatRequest = serde_json::from_str(&old_peer).unwrap();
        assert_eq!(beat.connections, None, "absent means unchanged");
        assert_eq!(serde_json::to_string(&beat).unwrap(), old_peer);

        let beat = HeartbeatRequest {
            connections: Some(vec![PeerConnection {
                peer_id: peer,
                path: ConnectionPathKind::HolePunched,
            }]),
            ..beat
        };
        let json = serde_json::to_string(&beat).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"peer_id":"{peer}","connections":[{{"peer_id":"{peer}","path":"hole_punched"}}]}}"#
            )
        );
        assert_eq!(
            serde_json::from_str::<HeartbeatRequest>(&json).unwrap(),
            beat
        );
    }
}
