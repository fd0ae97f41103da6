//! Rows as the databases return them, and their conversion into domain types.
//!
//! The `FromRow` derives are generic over the row type, so both backends share these.

use p2p_proto::api::{FilePeer, FileSummary, ManifestVariant, PeerConnection, PeerInfo, Stats};
use p2p_proto::{Bitfield, FileId, Manifest, Sha256Hash};

use super::{ApiKeyRecord, Presence, StoreError, UserRecord};

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// Parses a stored hex id.
pub(super) fn parse_id<T: std::str::FromStr>(s: &str) -> Result<T, StoreError> {
    s.parse().map_err(|_| corrupt(format_args!("bad id {s:?}")))
}

fn to_u64(v: i64) -> u64 {
    v.max(0) as u64
}

fn to_u16(v: i64) -> Result<u16, StoreError> {
    u16::try_from(v).map_err(|_| corrupt(format_args!("bad port {v}")))
}

fn parse_addresses(json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|_| corrupt("bad address list"))
}

fn parse_connections(json: &str) -> Result<Vec<PeerConnection>, StoreError> {
    serde_json::from_str(json).map_err(|_| corrupt("bad connection list"))
}

#[derive(sqlx::FromRow)]
pub(super) struct IdRow {
    pub id: String,
}

#[derive(sqlx::FromRow)]
pub(super) struct PresenceRow {
    online: bool,
    last_seen: i64,
}

impl From<PresenceRow> for Presence {
    fn from(r: PresenceRow) -> Self {
        Presence {
            online: r.online,
            last_seen_ms: to_u64(r.last_seen),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct IdPresenceRow {
    pub id: String,
    online: bool,
    last_seen: i64,
}

impl From<IdPresenceRow> for Presence {
    fn from(r: IdPresenceRow) -> Self {
        Presence {
            online: r.online,
            last_seen_ms: to_u64(r.last_seen),
        }
    }
}

/// Lines up the prior states a heartbeat batch read with the batch's beats (`None`: unknown).
pub(super) fn presence_per_beat(
    ids: &[String],
    found: Vec<IdPresenceRow>,
) -> Vec<Option<Presence>> {
    let before: std::collections::HashMap<String, Presence> = found
        .into_iter()
        .map(|r| (r.id.clone(), r.into()))
        .collect();
    ids.iter().map(|id| before.get(id).copied()).collect()
}

#[derive(sqlx::FromRow)]
pub(super) struct PeerRow {
    id: String,
    addresses: String,
    port: i64,
    udp_port: Option<i64>,
    relay_only: bool,
    relay: Option<String>,
    observed_ip: String,
    name: Option<String>,
    version: Option<String>,
    registered_at: i64,
    last_seen: i64,
    live: bool,
    files: i64,
    uploaded: i64,
    downloaded: i64,
    connections: String,
}

impl TryFrom<PeerRow> for PeerInfo {
    type Error = StoreError;

    fn try_from(r: PeerRow) -> Result<Self, StoreError> {
        Ok(PeerInfo {
            peer_id: parse_id(&r.id)?,
            addresses: parse_addresses(&r.addresses)?,
            port: to_u16(r.port)?,
            udp_port: r.udp_port.map(to_u16).transpose()?,
            relay_only: r.relay_only,
            relay: r.relay,
            observed_ip: r.observed_ip,
            name: r.name,
            version: r.version,
            online: r.live,
            registered_at_ms: to_u64(r.registered_at),
            last_seen_ms: to_u64(r.last_seen),
            files: to_u64(r.files),
            uploaded: to_u64(r.uploaded),
            downloaded: to_u64(r.downloaded),
            connections: parse_connections(&r.connections)?,
        })
    }
}

/// A stored variant that has an announced manifest's content.
#[derive(sqlx::FromRow)]
pub(super) struct VariantMatchRow {
    pub variant: i64,
    chain_len: i64,
}

impl VariantMatchRow {
    /// Whether the variant has no chain yet (it was stored before chains were kept) while `m`
    /// brings one.
    pub fn lacks_chain(&self, m: &Manifest) -> bool {
        self.chain_len == 0 && !m.chain.is_empty()
    }
}

/// A variant number as stored.
pub(super) fn to_variant(v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(format_args!("bad variant number {v}")))
}

/// A list of 32-byte values stored as one blob.
pub(super) fn hashes_blob(hashes: &[Sha256Hash]) -> Vec<u8> {
    hashes.iter().flat_map(|h| h.0).collect()
}

fn hashes_of_blob(blob: &[u8], what: &str) -> Result<Vec<Sha256Hash>, StoreError> {
    if !blob.len().is_multiple_of(32) {
        return Err(corrupt(format!(
            "{what} blob is not a multiple of 32 bytes"
        )));
    }
    Ok(blob
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            Sha256Hash(h)
        })
        .collect())
}

#[derive(sqlx::FromRow)]
pub(super) struct VariantRow {
    variant: i64,
    name: String,
    size: i64,
    chunk_count: i64,
    merkle_root: String,
    created_at: i64,
    seeders: i64,
    leechers: i64,
}

impl TryFrom<VariantRow> for ManifestVariant {
    type Error = StoreError;

    fn try_from(r: VariantRow) -> Result<Self, StoreError> {
        Ok(ManifestVariant {
            variant: to_variant(r.variant)?,
            name: r.name,
            size: to_u64(r.size),
            chunk_count: to_u64(r.chunk_count),
            merkle_root: parse_id(&r.merkle_root)?,
            seeders: to_u64(r.seeders),
            leechers: to_u64(r.leechers),
            created_at_ms: to_u64(r.created_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct VariantManifestRow {
    name: String,
    size: i64,
    chunk_size: i64,
    merkle_root: String,
    chunk_hashes: Vec<u8>,
    chain: Vec<u8>,
}

impl VariantManifestRow {
    pub fn into_manifest(self, id: FileId) -> Result<Manifest, StoreError> {
        Ok(Manifest {
            id,
            name: self.name,
            size: to_u64(self.size),
            chunk_size: u32::try_from(self.chunk_size).map_err(|_| corrupt("bad chunk size"))?,
            chunk_hashes: hashes_of_blob(&self.chunk_hashes, "chunk hash")?,
            merkle_root: parse_id(&self.merkle_root)?,
            chain: hashes_of_blob(&self.chain, "chain")?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct FileSummaryRow {
    id: String,
    name: String,
    size: i64,
    chunk_size: i64,
    chunk_count: i64,
    merkle_root: String,
    created_at: i64,
    seeders: i64,
    leechers: i64,
}

impl TryFrom<FileSummaryRow> for FileSummary {
    type Error = StoreError;

    fn try_from(r: FileSummaryRow) -> Result<Self, StoreError> {
        Ok(FileSummary {
            id: parse_id::<FileId>(&r.id)?,
            name: r.name,
            size: to_u64(r.size),
            chunk_size: u32::try_from(r.chunk_size).map_err(|_| corrupt("bad chunk size"))?,
            chunk_count: to_u64(r.chunk_count),
            merkle_root: parse_id(&r.merkle_root)?,
            seeders: to_u64(r.seeders),
            leechers: to_u64(r.leechers),
            created_at_ms: to_u64(r.created_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct FilePeerRow {
    id: String,
    addresses: String,
    observed_ip: String,
    port: i64,
    udp_port: Option<i64>,
    relay_only: bool,
    relay: Option<String>,
    have: Option<Vec<u8>>,
    chunks_have: i64,
    last_seen: i64,
    variant: i64,
    /// Chunks of the claim's variant.
    chunk_count: i64,
}

impl FilePeerRow {
    pub fn into_api(self) -> Result<FilePeer, StoreError> {
        let chunk_count = to_u64(self.chunk_count);
        let mut addresses = parse_addresses(&self.addresses)?;
        // The address the tracker saw comes last: announced addresses may be more direct
        // (a LAN address), the observed one works across NAT for outbound-capable peers.
        if !addresses.contains(&self.observed_ip) {
            addresses.push(self.observed_ip);
        }
        let have = match self.have {
            Some(bytes) => Some(
                Bitfield::from_bytes(bytes, chunk_count)
                    .map_err(corrupt)?
                    .to_base64(),
            ),
            None => None,
        };
        Ok(FilePeer {
            peer_id: parse_id(&self.id)?,
            addresses,
            port: to_u16(self.port)?,
            udp_port: self.udp_port.map(to_u16).transpose()?,
            relay_only: self.relay_only,
            relay: self.relay,
            complete: have.is_none(),
            have,
            chunks_have: to_u64(self.chunks_have),
            last_seen_ms: to_u64(self.last_seen),
            variant: Some(to_variant(self.variant)?),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct StatsRow {
    peers_online: i64,
    peers_total: i64,
    files: i64,
    total_bytes: i64,
}

impl From<StatsRow> for Stats {
    fn from(r: StatsRow) -> Self {
        Stats {
            peers_online: to_u64(r.peers_online),
            peers_total: to_u64(r.peers_total),
            files: to_u64(r.files),
            total_bytes: to_u64(r.total_bytes),
            relay_connections: 0,
            ws_clients: 0,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    username: String,
    password_hash: String,
    role: String,
    created_at: i64,
}

impl From<UserRow> for UserRecord {
    fn from(r: UserRow) -> Self {
        UserRecord {
            username: r.username,
            password_hash: r.password_hash,
            role: r.role,
            created_at_ms: to_u64(r.created_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct ApiKeyRow {
    id: String,
    name: String,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl From<ApiKeyRow> for ApiKeyRecord {
    fn from(r: ApiKeyRow) -> Self {
        ApiKeyRecord {
            id: r.id,
            name: r.name,
            created_at_ms: to_u64(r.created_at),
            revoked_at_ms: r.revoked_at.map(to_u64),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct InstanceRow {
    id: String,
    relay_url: Option<String>,
    relay_attached: i64,
    ws_clients: i64,
    last_seen: i64,
}

impl From<InstanceRow> for super::InstanceRecord {
    fn from(r: InstanceRow) -> Self {
        Self {
            id: r.id,
            relay_url: r.relay_url,
            relay_attached: to_u64(r.relay_attached),
            ws_clients: to_u64(r.ws_clients),
            last_seen_ms: to_u64(r.last_seen),
        }
    }
}
