//! Finding a file's manifest and peers: the discovery policy.
//!
//! [`Discovery::find`] asks the tracker (the file's manifest and its swarm) and the DHT at
//! once, and merges what both found, one entry per peer; either alone is enough, and with no
//! tracker the manifest comes from a peer. When the tracker has peers, the DHT may add to them
//! only within [`DHT_GRACE`].
//!
//! A file id is the SHA-256 of the content, so a tracker cannot check a manifest announced
//! under it, and keeps each distinct one (a *variant*) with the peers that announced it.
//! [`Discovery::find`] takes the variant most online peers announced and its peers only; the
//! others stay as fallbacks ([`Found::fallbacks`], [`Discovery::variant`]) for when a download
//! with it fails verification.
//!
//! The DHT says only where someone claims to have a file; [`probe`] connects there, learns the
//! peer's id from the Noise handshake and asks it for the manifest. Whoever answers, the
//! content stays safe: the manifest must be self-consistent and carry the requested id
//! ([`check_manifest`]), every chunk is verified against it, and the whole file against its id.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use p2p_proto::admission::Admission;
use p2p_proto::api::FilePeer;
use p2p_proto::link::ShareLink;
use p2p_proto::wire::{self, Frame, RejectCode};
use p2p_proto::{FileId, Manifest, ManifestError, PeerId};
use tokio::net::TcpStream;

use crate::admission::HeldAdmissions;
use crate::dht::{Dht, LOOKUP_TIMEOUT};
use crate::identity::Identity;
use crate::net::addr::is_local;
use crate::net::relay::relay_url;
use crate::net::secure::{Role, SecureError};
use crate::net::session::{self, Session};
use crate::net::{PeerAddr, RelayUrl};
use crate::tracker_client::{TrackerClient, TrackerError};

/// How long one probe (connect, handshake, manifest) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Probes run at once.
const PROBE_CONCURRENCY: usize = 16;

/// Why a manifest from a peer is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestCheckError {
    #[error("asked for file {wanted}, got the manifest of {got}")]
    WrongFile { wanted: FileId, got: FileId },
    #[error("inconsistent manifest: {0}")]
    Inconsistent(#[from] ManifestError),
}

/// Why a probe found no source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error(transparent)]
    Secure(#[from] SecureError),
    #[error("the peer is this node")]
    Myself,
    #[error("the peer does not have the file")]
    NoFile,
    /// The file is private there (only the tracker admits to it); the DHT finds public files.
    #[error("{0}")]
    NotAdmitted(String),
    #[error("the peer refused: {0}")]
    Refused(String),
    #[error("the peer closed the connection")]
    Closed,
    #[error(transparent)]
    Manifest(#[from] ManifestCheckError),
}

/// Accepts a manifest only if it describes the requested file and is self-consistent: its
/// Merkle root is the root over its chunk hashes and its size, chunk size and chunk count agree.
pub fn check_manifest(manifest: &Manifest, wanted: &FileId) -> Result<(), ManifestCheckError> {
    if manifest.id != *wanted {
        return Err(ManifestCheckError::WrongFile {
            wanted: *wanted,
            got: manifest.id,
        });
    }
    manifest.validate()?;
    Ok(())
}

/// Connects to `addr`, learns the peer's id from the handshake and fetches its manifest of
/// `file`; the connection is closed afterwards.
pub async fn probe(
    identity: &Identity,
    addr: SocketAddr,
    file: &FileId,
) -> Result<(PeerId, Manifest), ProbeError> {
    tokio::time::timeout(PROBE_TIMEOUT, run_probe(identity, addr, file))
        .await
        .map_err(|_| ProbeError::Timeout)?
}

async fn run_probe(
    identity: &Identity,
    addr: SocketAddr,
    file: &FileId,
) -> Result<(PeerId, Manifest), ProbeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let Session {
        reader: mut rx,
        writer: mut tx,
        remote: peer_id,
    } = session::open(stream, identity, Role::Initiator, None).await?;
    if peer_id == identity.peer_id() {
        return Err(ProbeError::Myself);
    }
    // The answer may be a manifest frame, larger than the default cap.
    rx.frame_cap().set(wire::MAX_MANIFEST_FRAME_LEN);
    tx.send(&Frame::ManifestRequest { file_id: *file }).await?;
    loop {
        match rx.recv().await?.ok_or(ProbeError::Closed)? {
            Frame::Manifest(manifest) => {
                check_manifest(&manifest, file)?;
                return Ok((peer_id, manifest));
            }
            Frame::Reject {
                code: RejectCode::NotAdmitted,
                message,
                ..
            } => return Err(ProbeError::NotAdmitted(message)),
            Frame::Reject { .. } => return Err(ProbeError::NoFile),
            Frame::Error { message, .. } => return Err(ProbeError::Refused(message)),
            _ => {}
        }
    }
}

/// What a DHT lookup found: the sources that answered with a good manifest, and that manifest.
#[derive(Debug, Default)]
pub struct DhtFind {
    /// The manifest most of the answering peers agree on.
    pub manifest: Option<Manifest>,
    /// The peers that offered that manifest.
    pub sources: Vec<PeerAddr>,
    /// Addresses the DHT gave.
    pub addresses: usize,
}

/// Looks `file` up on the DHT and probes every address found (but `own`, this node's own
/// listening address, and local ones unless `allow_local`, see [`is_local`]). Peers whose
/// manifests differ from the majority's are left out.
pub async fn dht_sources(
    dht: &Dht,
    identity: &Identity,
    file: &FileId,
    own: SocketAddr,
    allow_local: bool,
) -> DhtFind {
    let addrs: Vec<SocketAddr> = dialable(
        dht.find_peers(file, LOOKUP_TIMEOUT)
            .await
            .into_iter()
            .filter(|a| *a != own),
        allow_local,
    );
    let addresses = addrs.len();
    let offers: Vec<(PeerAddr, Manifest)> = futures_util::stream::iter(addrs)
        .map(|addr| async move {
            match probe(identity, addr, file).await {
                Ok((peer_id, manifest)) => Some((PeerAddr::new(peer_id, vec![addr]), manifest)),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "DHT peer unusable");
                    None
                }
            }
        })
        .buffer_unordered(PROBE_CONCURRENCY)
        .filter_map(std::future::ready)
        .collect()
        .await;
    let manifest = offers
        .iter()
        .max_by_key(|(_, m)| offers.iter().filter(|(_, o)| o.same_content(m)).count())
        .map(|(_, m)| m.clone());
    let mut sources = Vec::new();
    if let Some(m) = &manifest {
        for (source, _) in offers.into_iter().filter(|(_, o)| o.same_content(m)) {
            merge_sources(&mut sources, [source]);
        }
    }
    DhtFind {
        manifest,
        sources,
        addresses,
    }
}

/// Adds `more` to `sources`, one entry per peer id: what is new about a known peer is added
/// to its entry ([`PeerAddr::merge`]).
pub fn merge_sources(sources: &mut Vec<PeerAddr>, more: impl IntoIterator<Item = PeerAddr>) {
    for source in more {
        match sources.iter_mut().find(|s| s.peer_id == source.peer_id) {
            Some(known) => known.merge(source),
            None => sources.push(source),
        }
    }
}

/// How long a DHT lookup may add to a download the tracker already found peers for.
pub const DHT_GRACE: Duration = Duration::from_secs(3);
/// Peers asked of the tracker per file (per manifest variant).
const TRACKER_PEERS: u64 = 50;
/// Manifest variants of one file tried at most (the tracker keeps a few; this bounds what a
/// tracker that keeps more can make a download try).
pub const MAX_VARIANTS_TRIED: usize = 8;

/// A manifest of the file asked for, the peers offering it, and the tracker's other manifest
/// variants of the file to fall back to, best first.
#[derive(Debug, Clone)]
pub struct Found {
    pub manifest: Manifest,
    pub sources: Vec<PeerAddr>,
    pub fallbacks: Vec<u32>,
}

/// Why no manifest (or no way to ask for peers) was found. Each says what it was doing; its
/// cause is the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FindError {
    #[error("asking the tracker for the file")]
    File(#[source] TrackerError),
    #[error("the tracker answered with another file")]
    OtherFile,
    #[error("the tracker's manifest is inconsistent")]
    Manifest(#[source] ManifestError),
    #[error("asking the tracker for peers")]
    Peers(#[source] TrackerError),
    /// The tracker failed, and the DHT found no one either.
    #[error("no peer offered the file through the DHT either")]
    Nowhere(#[source] Box<FindError>),
}

impl FindError {
    /// Whether the tracker could not be reached (and the DHT, if asked, found nothing): the
    /// same lookup may succeed a moment later.
    pub fn tracker_unreachable(&self) -> bool {
        match self {
            Self::File(e) | Self::Peers(e) => e.is_unreachable(),
            Self::Nowhere(e) => e.tracker_unreachable(),
            Self::OtherFile | Self::Manifest(_) => false,
        }
    }
}

/// Where this node looks for files: the tracker and, when it runs, the DHT.
#[derive(Debug, Clone)]
pub struct Discovery {
    tracker: TrackerClient,
    dht: Option<Dht>,
    identity: Identity,
    /// Our own listening address (the DHT lists it too).
    own: SocketAddr,
    /// The relay hub this node attached to first, if any: the tracker's peers are reachable
    /// through their home relays (or, naming none, through ours).
    relay: Option<RelayUrl>,
    /// Whether local addresses from the tracker or the DHT are dialled ([`is_local`]).
    allow_local: bool,
    /// Where the tracker's admissions of this peer to the files it looks up are kept, for
    /// downloads to present.
    admissions: Arc<HeldAdmissions>,
    /// Whether peers are reached through their home relays without a relay of our own (a
    /// share link's receiver, whose connector visits the link's relays with its read grant),
    /// and the relay of those that name none (the link's tracker's).
    by_their_relays: Option<Option<RelayUrl>>,
}

impl Discovery {
    pub fn new(
        tracker: TrackerClient,
        dht: Option<Dht>,
        identity: Identity,
        own: SocketAddr,
        relay: Option<RelayUrl>,
    ) -> Self {
        Self {
            tracker,
            dht,
            identity,
            own,
            relay,
            allow_local: false,
            admissions: Arc::default(),
            by_their_relays: None,
        }
    }

    /// Keeps the home relays of the peers it finds even without a relay of our own, and gives
    /// those that name none `default` (their tracker's relay): the connector reaches them
    /// there (see [`crate::net::connector::Connector::allow_relay`]).
    pub fn by_their_relays(mut self, default: Option<RelayUrl>) -> Self {
        self.by_their_relays = Some(default);
        self
    }

    /// Keeps the admissions the tracker's answers carry in `admissions`.
    pub fn with_admissions(mut self, admissions: Arc<HeldAdmissions>) -> Self {
        self.admissions = admissions;
        self
    }

    /// This discovery asking `tracker` instead (a share link's trackers).
    pub fn with_tracker(&self, tracker: TrackerClient) -> Self {
        Self {
            tracker,
            ..self.clone()
        }
    }

    /// A share link's peers as download sources: their addresses this node may dial, and their
    /// home relays when this node has a relay to reach them by; not this node itself.
    pub fn link_sources(&self, link: &ShareLink) -> Vec<PeerAddr> {
        let me = self.identity.peer_id();
        let mut sources = Vec::new();
        for p in link.peers.iter().filter(|p| p.peer_id != me) {
            let source = PeerAddr::new(p.peer_id, dialable(p.addrs.clone(), self.allow_local));
            let home = p
                .relay
                .and_then(|i| link.relays.get(usize::from(i)))
                .and_then(|r| relay_url(r).ok());
            self.push_source(&mut sources, source, home);
        }
        sources
    }

    /// Adds `source` (with its `home` relay when this node can reach it there) to `sources`,
    /// unless it cannot be reached at all.
    fn push_source(&self, sources: &mut Vec<PeerAddr>, source: PeerAddr, home: Option<RelayUrl>) {
        let default = self.by_their_relays.as_ref();
        match (&self.relay, home) {
            (Some(_), Some(home)) => sources.push(source.with_relay(home)),
            (None, Some(home)) if default.is_some() => sources.push(source.with_relay(home)),
            (None, None) if default.is_some_and(Option::is_some) => {
                let relay = default.cloned().flatten();
                sources.push(match relay {
                    Some(relay) => source.with_relay(relay),
                    None => source,
                });
            }
            (Some(_), None) => sources.push(source),
            (None, _) if !source.addrs.is_empty() => sources.push(source),
            (None, _) => {}
        }
    }

    /// Dials local addresses the tracker or the DHT give too (`--allow-local-addrs`).
    pub fn allow_local_addrs(mut self, allow: bool) -> Self {
        self.allow_local = allow;
        self
    }

    /// The manifest of `id` and the peers to fetch it from: the tracker's and the DHT's
    /// together (one entry per peer). Either alone is enough; with no tracker the manifest
    /// comes from a peer.
    pub async fn find(&self, id: &FileId) -> Result<Found, FindError> {
        let lookup = self.dht.clone().map(|dht| {
            let (identity, own, id) = (self.identity.clone(), self.own, *id);
            let allow_local = self.allow_local;
            tokio::spawn(async move { dht_sources(&dht, &identity, &id, own, allow_local).await })
        });
        let from_tracker = self.tracker_sources(id).await;
        let Some(lookup) = lookup else {
            return from_tracker;
        };
        let found = match &from_tracker {
            // The tracker has peers: the DHT only adds to them, and may not hold the download
            // up.
            Ok(known) if !known.sources.is_empty() => {
                match tokio::time::timeout(DHT_GRACE, lookup).await {
                    Ok(found) => found.unwrap_or_default(),
                    Err(_) => DhtFind::default(),
                }
            }
            _ => lookup.await.unwrap_or_default(),
        };
        tracing::info!(
            addresses = found.addresses,
            usable = found.sources.len(),
            "DHT lookup"
        );
        let mut known = match from_tracker {
            Ok(known) => known,
            Err(e) => match found.manifest.clone() {
                Some(manifest) => Found {
                    manifest,
                    sources: Vec::new(),
                    fallbacks: Vec::new(),
                },
                None => return Err(FindError::Nowhere(Box::new(e))),
            },
        };
        // Peers offering other content under this id would be refused by the download anyway.
        if found
            .manifest
            .as_ref()
            .is_some_and(|m| m.same_content(&known.manifest))
        {
            merge_sources(&mut known.sources, found.sources);
        }
        Ok(known)
    }

    /// The tracker's manifest of `id` and its peers, as download sources: of the variant the
    /// most online peers announced that has a peer this node can reach; the other variants
    /// are the fallbacks.
    async fn tracker_sources(&self, id: &FileId) -> Result<Found, FindError> {
        let details = self.tracker.file(id).await.map_err(FindError::File)?;
        check_tracker_manifest(&details.manifest, id)?;
        if details.variants.is_empty() {
            // A tracker that keeps one manifest per file.
            return Ok(Found {
                manifest: details.manifest,
                sources: self.tracker_peers(id, None).await?,
                fallbacks: Vec::new(),
            });
        }
        let mut order = details.variants.clone();
        order.sort_by_key(|v| (std::cmp::Reverse(v.online()), v.variant));
        let mut fallbacks: Vec<u32> = order
            .iter()
            .map(|v| v.variant)
            .filter(|v| *v != details.variant)
            .take(MAX_VARIANTS_TRIED - 1)
            .collect();
        let sources = self.tracker_peers(id, Some(details.variant)).await?;
        if sources.is_empty()
            && let Some((manifest, sources)) = self.next_variant(id, &mut fallbacks).await
        {
            return Ok(Found {
                manifest,
                sources,
                fallbacks,
            });
        }
        Ok(Found {
            manifest: details.manifest,
            sources,
            fallbacks,
        })
    }

    /// The first of `fallbacks` (taken off the front) whose manifest is consistent and that has
    /// a peer to fetch it from; `None` when none is left.
    pub async fn next_variant(
        &self,
        id: &FileId,
        fallbacks: &mut Vec<u32>,
    ) -> Option<(Manifest, Vec<PeerAddr>)> {
        while !fallbacks.is_empty() {
            let variant = fallbacks.remove(0);
            match self.variant(id, variant).await {
                Ok((manifest, sources)) if !sources.is_empty() => return Some((manifest, sources)),
                Ok(_) => tracing::debug!(file = %id, variant, "no online peer has this variant"),
                Err(e) => tracing::warn!(file = %id, variant, error = %e, "unusable variant"),
            }
        }
        None
    }

    /// The tracker's manifest variant `variant` of `id` and the peers that announced it.
    pub async fn variant(
        &self,
        id: &FileId,
        variant: u32,
    ) -> Result<(Manifest, Vec<PeerAddr>), FindError> {
        let details = self
            .tracker
            .file_variant(id, variant)
            .await
            .map_err(FindError::File)?;
        check_tracker_manifest(&details.manifest, id)?;
        Ok((
            details.manifest,
            self.tracker_peers(id, Some(variant)).await?,
        ))
    }

    /// The tracker's number for the variant of `id` whose manifest is `manifest` (the one with
    /// its Merkle root); `None` when the tracker keeps one manifest per file or lists no such
    /// variant.
    pub async fn variant_of(&self, manifest: &Manifest) -> Result<Option<u32>, FindError> {
        let details = self
            .tracker
            .file(&manifest.id)
            .await
            .map_err(FindError::File)?;
        Ok(details
            .variants
            .iter()
            .find(|v| v.merkle_root == manifest.merkle_root)
            .map(|v| v.variant))
    }

    /// The peers the tracker lists for `id` now (those of `variant`, when given), as sources:
    /// asked again while a download runs, so that leechers which joined after it started are
    /// found.
    pub async fn tracker_peers(
        &self,
        id: &FileId,
        variant: Option<u32>,
    ) -> Result<Vec<PeerAddr>, FindError> {
        let me = Some(self.identity.peer_id());
        let swarm = match variant {
            Some(v) => {
                self.tracker
                    .variant_peers(id, v, me.as_ref(), TRACKER_PEERS)
                    .await
            }
            None => {
                self.tracker
                    .file_peers(id, me.as_ref(), TRACKER_PEERS)
                    .await
            }
        }
        .map_err(FindError::Peers)?;
        if let Some(text) = &swarm.admission {
            match Admission::from_hex(text) {
                Ok(a) if a.file_id == *id && Some(a.peer_id) == me => self.admissions.hold(a),
                Ok(_) => {
                    tracing::warn!(file = %id, "the tracker's admission is for another file or peer")
                }
                Err(e) => {
                    tracing::warn!(file = %id, error = %e, "unreadable admission from the tracker")
                }
            }
        }
        Ok(self.sources(swarm.peers).await)
    }

    /// The tracker's peers as download sources.
    async fn sources(&self, peers: Vec<FilePeer>) -> Vec<PeerAddr> {
        let mut sources = Vec::new();
        for p in peers {
            // A relay-only peer has no address worth dialling; without our own relay, a peer
            // without addresses cannot be reached at all.
            let addrs = if p.relay_only {
                Vec::new()
            } else {
                dialable(addresses(&p.addresses, p.port).await, self.allow_local)
            };
            let source = PeerAddr::new(p.peer_id, addrs);
            // Its home relay, where tunnels and punches to it go; without one, ours (the
            // connector's default). An unusable URL is no hint at all.
            let home = p.relay.as_deref().and_then(|r| relay_url(r).ok());
            self.push_source(&mut sources, source, home);
        }
        sources
    }
}

/// Accepts a manifest from the tracker only if it is of the file asked for and self-consistent.
fn check_tracker_manifest(manifest: &Manifest, id: &FileId) -> Result<(), FindError> {
    if manifest.id != *id {
        return Err(FindError::OtherFile);
    }
    manifest.validate().map_err(FindError::Manifest)
}

/// The addresses of `addrs` this node may dial: all with `allow_local`, else those not
/// [`is_local`] (the skipped ones are logged).
fn dialable(addrs: impl IntoIterator<Item = SocketAddr>, allow_local: bool) -> Vec<SocketAddr> {
    addrs
        .into_iter()
        .filter(|a| {
            let ok = allow_local || !is_local(a.ip());
            if !ok {
                tracing::debug!(addr = %a, "not dialling a local address (see --allow-local-addrs)");
            }
            ok
        })
        .collect()
}

/// Where a peer from the tracker can be dialled: its addresses (IPs, or names looked up now)
/// at `port`.
async fn addresses(addresses: &[String], port: u16) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for a in addresses {
        match a.parse::<IpAddr>() {
            Ok(ip) => out.push(SocketAddr::new(ip, port)),
            Err(_) => {
                if let Ok(found) = tokio::net::lookup_host((a.as_str(), port)).await {
                    out.extend(found);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let chunk_size = 16 * 1024;
        Manifest::of_bytes("a.bin", &vec![7u8; chunk_size * 2 + 100], chunk_size as u32).unwrap()
    }

    #[test]
    fn a_consistent_manifest_of_the_wanted_file_is_accepted() {
        let m = manifest();
        check_manifest(&m, &m.id).unwrap();
    }

    #[test]
    fn tampered_manifests_are_refused() {
        let good = manifest();
        let mut chunk = good.clone();
        chunk.chunk_hashes[1].0[0] ^= 1;
        assert!(matches!(
            check_manifest(&chunk, &good.id),
            Err(ManifestCheckError::Inconsistent(ManifestError::MerkleRoot))
        ));
        let mut size = good.clone();
        size.size += 64 * 1024;
        assert!(matches!(
            check_manifest(&size, &good.id),
            Err(ManifestCheckError::Inconsistent(_))
        ));
        let other = FileId([9; 32]);
        assert!(matches!(
            check_manifest(&good, &other),
            Err(ManifestCheckError::WrongFile { .. })
        ));
    }

    #[test]
    fn local_addresses_are_dialled_only_when_allowed() {
        let addrs: Vec<SocketAddr> = [
            "127.0.0.1:1",
            "169.254.169.254:80",
            "[::1]:2",
            "10.1.2.3:4",
            "[fe80::1]:5",
            "203.0.113.9:6",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let lan_and_public: Vec<SocketAddr> = vec![
            "10.1.2.3:4".parse().unwrap(),
            "203.0.113.9:6".parse().unwrap(),
        ];
        assert_eq!(dialable(addrs.clone(), false), lan_and_public);
        assert_eq!(dialable(addrs.clone(), true), addrs);
    }

    #[tokio::test]
    async fn a_tracker_host_name_resolving_to_loopback_is_not_dialled() {
        let found = addresses(&["localhost".to_owned()], 7).await;
        assert!(!found.is_empty());
        assert!(dialable(found, false).is_empty());
    }

    #[test]
    fn merging_keeps_one_entry_per_peer() {
        let a = PeerId([1; 32]);
        let b = PeerId([2; 32]);
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut sources = vec![PeerAddr::new(a, vec![addr(1)])];
        merge_sources(
            &mut sources,
            [
                PeerAddr::new(a, vec![addr(1), addr(2)]),
                PeerAddr::new(b, vec![addr(3)]),
            ],
        );
        assert_eq!(
            sources,
            vec![
                PeerAddr::new(a, vec![addr(1), addr(2)]),
                PeerAddr::new(b, vec![addr(3)]),
            ]
        );
    }
}
