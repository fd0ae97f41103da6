//! Finding peers without the tracker: a node of the BitTorrent Mainline DHT (the `mainline`
//! crate) on which the peer announces the files it has ([`spawn_announcer`]) and looks up who
//! else has one ([`Dht::find_peers`]).
//!
//! Files are stored under an info-hash derived from the file id with a domain separator
//! ([`info_hash`]), so our entries never collide with BitTorrent torrents. The DHT gives only
//! addresses; [`crate::discovery`] learns which peer answers at each.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mainline::async_dht::AsyncDht;
use mainline::{Id, errors::PutQueryError};
use p2p_proto::FileId;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::storage::Library;

/// Prefixed to the file id before hashing it into an info-hash.
pub const INFO_HASH_DOMAIN: &[u8] = b"p2p-dht/1";
/// How often every file is announced again; DHT nodes forget announces after about 30 min.
pub const REANNOUNCE_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// How soon announces that failed (say, before the node bootstrapped) are tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(60);
/// The longest a lookup may take; a lookup usually ends sooner, when the query converges.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Addresses kept from one lookup.
pub const MAX_LOOKUP_PEERS: usize = 100;

/// Why the DHT could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DhtError {
    #[error("cannot start the DHT node on {addr}: {source}")]
    Start {
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
    /// The DHT (like the `mainline` crate) is IPv4 only.
    #[error("the DHT needs an IPv4 listen address, not {0}")]
    NotIpv4(IpAddr),
    #[error("cannot announce {file} on the DHT: {source}")]
    Announce {
        file: FileId,
        #[source]
        source: PutQueryError,
    },
    #[error("the DHT node stopped")]
    Stopped,
}

/// The 20-byte DHT key of a file: the first 20 bytes of SHA-256(`p2p-dht/1` ‖ file id).
pub fn info_hash(file: &FileId) -> [u8; 20] {
    let digest = Sha256::new()
        .chain_update(INFO_HASH_DOMAIN)
        .chain_update(file.0)
        .finalize();
    let mut out = [0u8; 20];
    out.copy_from_slice(&digest[..20]);
    out
}

fn dht_id(file: &FileId) -> Id {
    Id::from(info_hash(file))
}

/// How to run the DHT node.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// Address to bind the UDP socket to (the DHT is IPv4 only).
    pub bind: IpAddr,
    /// UDP port; when it is taken, any free port is used instead. 0: any free port.
    pub port: u16,
    /// `host:port` of nodes to join the DHT through; empty: mainline's public routers.
    pub bootstrap: Vec<String>,
}

/// A running DHT node. Cheap to clone; the node stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Dht {
    inner: AsyncDht,
    local_addr: SocketAddrV4,
}

impl Dht {
    /// Binds the UDP socket and starts joining the DHT in the background. Bootstrap names that
    /// do not resolve are logged and skipped: a DHT that cannot join is useless, not fatal.
    pub async fn start(config: &DhtConfig) -> Result<Self, DhtError> {
        let bind = match config.bind {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip) if ip.is_unspecified() => Ipv4Addr::UNSPECIFIED,
            other => return Err(DhtError::NotIpv4(other)),
        };
        let bootstrap = if config.bootstrap.is_empty() {
            None
        } else {
            Some(resolve_bootstrap(&config.bootstrap).await)
        };
        let mut tried = Vec::new();
        let ports = if config.port == 0 {
            vec![0]
        } else {
            vec![config.port, 0]
        };
        for port in ports {
            let mut builder = mainline::Dht::builder();
            builder.bind_address(bind).port(port);
            if let Some(nodes) = &bootstrap {
                builder.bootstrap(nodes);
            }
            // Building binds the socket and, for the default routers, resolves their names:
            // blocking work, kept off the reactor.
            let built = tokio::task::spawn_blocking(move || builder.build())
                .await
                .map_err(|_| DhtError::Stopped)?;
            match built {
                Ok(dht) => {
                    let inner = dht.as_async();
                    let local_addr = inner.info().await.local_addr();
                    tracing::info!(addr = %local_addr, "DHT node started");
                    return Ok(Self { inner, local_addr });
                }
                Err(source) => {
                    let addr = SocketAddrV4::new(bind, port);
                    if port != 0 {
                        tracing::info!(%addr, error = %source, "DHT port busy; using any free port");
                    }
                    tried.push(DhtError::Start { addr, source });
                }
            }
        }
        Err(tried.pop().unwrap_or(DhtError::Stopped))
    }

    /// The UDP address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::V4(self.local_addr)
    }

    /// Tells the DHT that this peer serves `file` on TCP `port` (at the address the DHT nodes
    /// see this node's packets come from).
    pub async fn announce(&self, file: &FileId, port: u16) -> Result<(), DhtError> {
        self.inner
            .announce_peer(dht_id(file), Some(port))
            .await
            .map(|_| ())
            .map_err(|source| DhtError::Announce {
                file: *file,
                source,
            })
    }

    /// Addresses announced for `file`, without duplicates, at most [`MAX_LOOKUP_PEERS`]. Ends
    /// when the lookup converges or after `timeout`; nothing found is an empty list.
    pub async fn find_peers(&self, file: &FileId, timeout: Duration) -> Vec<SocketAddr> {
        let mut found = BTreeSet::new();
        let mut replies = self.inner.get_peers(dht_id(file));
        let deadline = Instant::now() + timeout;
        while found.len() < MAX_LOOKUP_PEERS {
            match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(peers)) => found.extend(peers.into_iter().map(SocketAddr::V4)),
                Ok(None) | Err(_) => break,
            }
        }
        found.into_iter().take(MAX_LOOKUP_PEERS).collect()
    }

    /// How many other DHT nodes this node knows (0 until it has joined).
    pub async fn routing_table_size(&self) -> usize {
        self.inner.to_bootstrap().await.len()
    }
}

/// Resolves `host:port` bootstrap nodes to IPv4 addresses, logging those that do not resolve.
async fn resolve_bootstrap(nodes: &[String]) -> Vec<SocketAddrV4> {
    let mut out = Vec::new();
    for node in nodes {
        let node = node.trim();
        match tokio::net::lookup_host(node).await {
            Ok(addrs) => out.extend(addrs.filter_map(|a| match a {
                SocketAddr::V4(a) => Some(a),
                SocketAddr::V6(_) => None,
            })),
            Err(e) => tracing::warn!(node, error = %e, "cannot resolve a DHT bootstrap node"),
        }
    }
    out
}

/// Asks the announcer to announce files it has not announced yet. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AnnouncerHandle {
    wake: Arc<Notify>,
    announced: watch::Receiver<u64>,
}

impl AnnouncerHandle {
    /// Announces files new to the library (shared, or being downloaded) without waiting.
    pub fn announce_now(&self) {
        self.wake.notify_one();
    }

    /// Successful announces so far, to wait on.
    pub fn announced(&self) -> watch::Receiver<u64> {
        self.announced.clone()
    }
}

/// Announces every public file in `library` (private ones are never told to the DHT),
/// complete or partial, with the TCP `port`: new files when
/// woken, all of them every `every`, failed ones again after [`RETRY_INTERVAL`]. The first
/// failure in a row is logged as a warning, the rest quietly, so a DHT that cannot join does
/// not flood the log.
pub fn spawn_announcer(
    dht: Dht,
    library: Arc<Library>,
    port: u16,
    every: Duration,
    shutdown: CancellationToken,
) -> AnnouncerHandle {
    let wake = Arc::new(Notify::new());
    let (count_tx, announced) = watch::channel(0u64);
    let handle = AnnouncerHandle {
        wake: wake.clone(),
        announced,
    };
    tokio::spawn(async move {
        let mut done: HashSet<FileId> = HashSet::new();
        let mut next_full = Instant::now();
        let mut warned = false;
        loop {
            let full = Instant::now() >= next_full;
            if full {
                next_full = Instant::now() + every;
            }
            let current: HashSet<FileId> = library
                .list_public()
                .into_iter()
                .map(|(m, _)| m.id)
                .collect();
            // A file that left the library (and may come back) is no longer announced.
            done.retain(|id| current.contains(id));
            let due: Vec<FileId> = current
                .into_iter()
                .filter(|id| full || !done.contains(id))
                .collect();
            let mut failed = false;
            for id in due {
                let result = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = dht.announce(&id, port) => r,
                };
                match result {
                    Ok(()) => {
                        done.insert(id);
                        warned = false;
                        count_tx.send_modify(|n| *n += 1);
                        tracing::debug!(file = %id, "announced on the DHT");
                    }
                    Err(e) => {
                        failed = true;
                        done.remove(&id);
                        if warned {
                            tracing::debug!(error = %e, "DHT announce failed");
                        } else {
                            warned = true;
                            tracing::warn!(error = %e, "DHT announce failed; will retry");
                        }
                    }
                }
            }
            let wait_until = if failed {
                next_full.min(Instant::now() + RETRY_INTERVAL)
            } else {
                next_full
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => {}
                // The periodic re-announce of everything, or a retry of what failed.
                _ = tokio::time::sleep_until(wait_until) => {}
            }
        }
    });
    handle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_hash_is_domain_separated_sha256() {
        // sha256("p2p-dht/1" ‖ 32 zero bytes), first 20 bytes.
        assert_eq!(
            hex::encode(info_hash(&FileId([0; 32]))),
            "0c2911c76d3aca284f99886c152e20037291b87c"
        );
        let counting: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            hex::encode(info_hash(&FileId(counting))),
            "98003ceb4aa42b3441036c4238270f1647d3bbdd"
        );
        // Not the plain truncation a BitTorrent v2 info-hash would be.
        assert_ne!(info_hash(&FileId(counting))[..], counting[..20]);
    }

    #[tokio::test]
    async fn an_ipv6_only_listen_address_is_refused() {
        let config = DhtConfig {
            bind: "::1".parse().unwrap(),
            port: 0,
            bootstrap: vec![],
        };
        assert!(matches!(
            Dht::start(&config).await,
            Err(DhtError::NotIpv4(_))
        ));
    }
}
