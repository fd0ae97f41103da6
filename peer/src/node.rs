//! Start-up: a running peer assembled from the command line.
//!
//! [`Node`] is the peer itself: identity, library, the acceptor serving chunks on every inbound
//! path, the connector, limits and the DHT. [`Peer`] adds the tracker: the registration
//! session, discovery, and downloads that keep the tracker and the DHT told of their progress.
//! The shell, the daemon and `p2p-download` run a [`Peer`]; they only present it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use p2p_proto::Manifest;
use tokio_util::sync::CancellationToken;

use crate::admission::{HeldAdmissions, TrackerKeys};
use crate::config::NodeArgs;
use crate::dht::{self, AnnouncerHandle, Dht, DhtConfig};
use crate::identity::{Identity, IdentityError};
use crate::net::accept::{self, Acceptor};
use crate::net::connector::Connector;
use crate::net::punch::{PunchError, Puncher};
use crate::net::relay::{self, RelayClient, RelayConfig, RelayError};
use crate::storage::{Library, LibraryError, shareable_name};
use crate::throttle::Throttle;
use crate::tracker_client::normalise_base;
use crate::upload::Uploader;

mod home;
mod links;
mod peer;

pub use links::{Following, MadeLink, MemberRoutes, ShareLinkError};
pub use peer::{FetchError, Peer, PeerError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Relay(#[from] RelayError),
    #[error("hole punching: {0}")]
    Punch(#[from] PunchError),
    #[error("cannot use the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A started peer. Dropping it does not stop it; call [`Node::shutdown`].
#[derive(Debug)]
pub struct Node {
    pub identity: Identity,
    pub library: Arc<Library>,
    pub data_dir: PathBuf,
    /// The folder shared at start and watched in daemon mode (the data dir by default).
    pub share_dir: PathBuf,
    /// Where the peer protocol listens (the real port when 0 was asked for).
    pub addr: SocketAddr,
    pub upload: Arc<Throttle>,
    pub download: Arc<Throttle>,
    /// The DHT node, unless disabled or it could not start.
    pub dht: Option<Dht>,
    /// Announces the library on the DHT (with `dht`).
    pub dht_announcer: Option<AnnouncerHandle>,
    /// The relay connection, unless `--no-relay`.
    pub relay: Option<RelayClient>,
    /// How downloads reach peers.
    pub connector: Arc<Connector>,
    /// The admission keys of the trackers this node registered with (kept in the data dir
    /// across restarts): its private files are served to the holders of admissions they signed.
    pub tracker_keys: Arc<TrackerKeys>,
    /// The admissions this node holds for its downloads.
    pub admissions: Arc<HeldAdmissions>,
    pub shutdown: CancellationToken,
}

impl Node {
    /// Loads (or creates) the identity, opens the data dir and starts serving chunks.
    pub async fn start(args: &NodeArgs) -> Result<Self, NodeError> {
        for dir in std::iter::once(&args.data).chain(&args.share_dir) {
            std::fs::create_dir_all(dir).map_err(|source| NodeError::DataDir {
                path: dir.clone(),
                source,
            })?;
        }
        let identity = Identity::load_or_create(&args.data)?;
        let library = Arc::new(Library::new());
        library.visibility.set_all_public(args.public);
        if let Err(e) = library.visibility.keep_in(&args.data) {
            tracing::warn!(error = %e, "the files made public earlier are private now");
        }
        let trackers: Vec<String> = args
            .tracker
            .iter()
            .filter_map(|url| normalise_base(url).ok())
            .collect();
        let tracker_keys = Arc::new(TrackerKeys::kept_in(
            &args.data,
            &trackers,
            args.repin_tracker_keys,
        ));
        let bind = SocketAddr::new(args.listen, args.port);
        let listener =
            accept::bind(bind).map_err(|source| NodeError::Listen { addr: bind, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| NodeError::Listen { addr: bind, source })?;
        let upload = Arc::new(Throttle::new(args.upload_limit));
        let download = Arc::new(Throttle::new(args.download_limit));
        let shutdown = CancellationToken::new();
        let uploader = Arc::new(
            Uploader::new(library.clone(), upload.clone()).with_trust(tracker_keys.clone()),
        );
        let acceptor = Acceptor::new(identity.clone(), uploader, shutdown.clone())
            .with_limits(args.inbound_limits());
        acceptor.listen(listener);
        let (relay, connector) = start_paths(args, &identity, &acceptor, &shutdown)?;
        tracing::info!(peer_id = %identity.peer_id(), %addr, "peer listening");
        let dht = start_dht(args).await;
        let dht_announcer = dht.clone().map(|dht| {
            dht::spawn_announcer(
                dht,
                library.clone(),
                addr.port(),
                dht::REANNOUNCE_INTERVAL,
                shutdown.clone(),
            )
        });
        Ok(Self {
            identity,
            library,
            data_dir: args.data.clone(),
            share_dir: args.share_dir.clone().unwrap_or_else(|| args.data.clone()),
            addr,
            upload,
            download,
            dht,
            dht_announcer,
            relay,
            connector,
            tracker_keys,
            admissions: Arc::default(),
            shutdown,
        })
    }

    /// Announces files new to the library on the DHT, without waiting (the tracker session has
    /// its own [`crate::tracker_client::SessionHandle::announce_now`]).
    pub fn announce_now(&self) {
        if let Some(announcer) = &self.dht_announcer {
            announcer.announce_now();
        }
    }

    /// Shares every regular file directly in the share dir (the data dir unless `--share-dir`;
    /// not hidden files, the key or partial downloads). Returns what was shared and what failed.
    pub async fn share_data_dir(&self) -> Vec<(PathBuf, Result<Manifest, LibraryError>)> {
        let mut out = Vec::new();
        for path in shareable_files(&self.share_dir) {
            let result = self.library.share(&path).await;
            out.push((path, result));
        }
        out
    }

    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

/// The paths beyond the TCP listener, as `args` ask: the relay (its incoming streams to
/// `acceptor`) and hole punching through it; returns the relay client and the connector that
/// dials over all of them.
fn start_paths(
    args: &NodeArgs,
    identity: &Identity,
    acceptor: &Acceptor<Uploader>,
    shutdown: &CancellationToken,
) -> Result<(Option<RelayClient>, Arc<Connector>), NodeError> {
    if args.no_relay {
        return Ok((None, Arc::new(Connector::new(None, args.relay_only))));
    }
    // Without an API key there is no home relay (attaching wants credentials); the relays of a
    // share link are visited with its read grant, to dial the link's peers only.
    if args.api_key.as_deref().is_none_or(|k| k.trim().is_empty()) {
        let connector = Connector::new(None, args.relay_only).with_visits(
            identity.clone(),
            None,
            shutdown.clone(),
        );
        return Ok((None, Arc::new(connector)));
    }
    // The first configured home relay, else the tracker's; the peer's home keeper (see
    // `home`) moves it to the fleet's, and on when it dies.
    let first = args
        .relays
        .first()
        .map_or(args.primary_tracker(), String::as_str);
    let config = RelayConfig {
        url: relay::relay_url(first)?,
        token: args.api_key.clone(),
        grant: None,
    };
    let (client, incoming, invites) =
        relay::spawn_with_punch(identity.clone(), config, shutdown.clone());
    acceptor.relayed(incoming);
    let mut connector = Connector::new(Some(client.clone()), args.relay_only).with_visits(
        identity.clone(),
        args.api_key.clone(),
        shutdown.clone(),
    );
    connector.set_known_relays(home::configured_relays(args));
    // Without punching, the invitations' receiver is dropped here: the relay client declines
    // them, and their askers fall back to the relay at once.
    if !args.no_punch {
        let host = relay::tracker_host(args.primary_tracker())?;
        let (puncher, accepted) = Puncher::new(host, shutdown.clone())?;
        acceptor.punched(accepted);
        accept::answer_punches(invites, puncher.clone(), client.clone(), shutdown.clone());
        connector = connector.with_puncher(puncher);
    }
    Ok((Some(client), Arc::new(connector)))
}

/// The DHT node, when `args` ask for it and it starts. It is a second way to be found: without
/// it the peer still works with the tracker.
async fn start_dht(args: &NodeArgs) -> Option<Dht> {
    if !args.dht {
        return None;
    }
    let config = DhtConfig {
        bind: args.listen,
        port: args.dht_port,
        bootstrap: args.dht_bootstrap.clone(),
    };
    Dht::start(&config)
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "DHT disabled"))
        .ok()
}

/// Whether a file in the data dir is one to share.
pub fn is_shareable(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(shareable_name)
        && path.is_file()
}

/// The shareable files directly in `dir`, sorted by name.
pub fn shareable_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| is_shareable(p))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_and_shares_the_data_dir_but_not_its_own_state() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"hello").unwrap();
        std::fs::write(dir.path().join(".hidden"), b"no").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let args = NodeArgs {
            tracker: vec!["http://127.0.0.1:1".into()],
            port: 0,
            data: dir.path().to_owned(),
            share_dir: None,
            api_key: None,
            link_ttl: 86_400,
            listen: "127.0.0.1".parse().unwrap(),
            announce_addrs: vec![],
            upload_limit: None,
            download_limit: Some(1 << 20),
            pipeline: 16,
            stall_timeout: 60,
            dht: false,
            dht_port: 0,
            dht_bootstrap: vec![],
            relay_only: false,
            no_relay: true,
            relays: vec![],
            no_punch: false,
            allow_local_addrs: true,
            max_connections: 512,
            max_connections_per_addr: 32,
            idle_timeout: 90,
            repin_tracker_keys: false,
            public: false,
        };
        let node = Node::start(&args).await.unwrap();
        assert_ne!(node.addr.port(), 0);
        assert!(dir.path().join(crate::identity::KEY_FILE).exists());
        let shared = node.share_data_dir().await;
        let names: Vec<_> = shared
            .iter()
            .map(|(p, r)| {
                (
                    p.file_name().unwrap().to_str().unwrap().to_owned(),
                    r.is_ok(),
                )
            })
            .collect();
        assert_eq!(names, vec![("a.txt".to_owned(), true)]);
        assert_eq!(node.download.rate(), Some(1 << 20));
        // The same key after a restart.
        node.shutdown();
        let again = Node::start(&args).await.unwrap();
        assert_eq!(again.identity.peer_id(), node.identity.peer_id());
        again.shutdown();

        // With a share dir, that folder is shared (created if missing), not the data dir.
        let share = dir.path().join("public");
        let args = NodeArgs {
            share_dir: Some(share.clone()),
            ..args
        };
        let node = Node::start(&args).await.unwrap();
        assert!(node.share_data_dir().await.is_empty());
        std::fs::write(share.join("b.txt"), b"shared").unwrap();
        let shared = node.share_data_dir().await;
        assert_eq!(shared.len(), 1);
        assert!(shared[0].0.ends_with("public/b.txt") && shared[0].1.is_ok());
        node.shutdown();
    }
}
