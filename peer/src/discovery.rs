//! Turning addresses from the DHT into download sources. The DHT says only where someone
//! claims to have a file; [`probe`] connects there, learns the peer's id from the Noise
//! handshake and asks it for the manifest. Whoever answers, the content stays safe: the
//! manifest must be self-consistent and carry the requested id ([`check_manifest`]), every
//! chunk is verified against it, and the whole file against its id.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use p2p_proto::wire::Frame;
use p2p_proto::{FileId, Manifest, ManifestError, PeerId};
use tokio::net::TcpStream;

use crate::dht::{Dht, LOOKUP_TIMEOUT};
use crate::identity::Identity;
use crate::net::PeerAddr;
use crate::net::secure::{Role, SecureError};
use crate::net::session::{self, Session};

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
    tx.send(&Frame::ManifestRequest { file_id: *file }).await?;
    loop {
        match rx.recv().await?.ok_or(ProbeError::Closed)? {
            Frame::Manifest(manifest) => {
                check_manifest(&manifest, file)?;
                return Ok((peer_id, manifest));
            }
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
/// listening address). Peers whose manifests differ from the majority's are left out.
pub async fn dht_sources(
    dht: &Dht,
    identity: &Identity,
    file: &FileId,
    own: SocketAddr,
) -> DhtFind {
    let addrs: Vec<SocketAddr> = dht
        .find_peers(file, LOOKUP_TIMEOUT)
        .await
        .into_iter()
        .filter(|a| *a != own)
        .collect();
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
