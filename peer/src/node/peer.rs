//! A node with its tracker: the registration session, discovery, and downloads that keep the
//! tracker and the DHT told of their progress. The shell, the daemon and `p2p-download` run one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::api::{AnnounceRequest, PeerConnection, RegisterPeerRequest};
use p2p_proto::{FileId, Manifest};
use tokio::sync::mpsc;

use super::{Node, NodeError};
use crate::config::NodeArgs;
use crate::discovery::{Discovery, FindError, Found};
use crate::download::{self, Contributions, DownloadError, DownloadOptions, DownloadReport};
use crate::net::PeerAddr;
use crate::tracker_client::{
    Announcements, Connections, SessionHandle, SessionTiming, TrackerClient, TrackerError,
    spawn_session,
};

/// Why a peer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Tracker(#[from] TrackerError),
}

/// Why a download by id failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error(transparent)]
    Find(#[from] FindError),
    #[error("no online peer has {0}")]
    NoPeers(String),
    #[error(transparent)]
    Download(#[from] DownloadError),
}

/// How often a download in progress tells the tracker and the DHT of its progress, so that
/// other leechers can use its chunks (the DHT announces the file once; it carries no progress).
const PROGRESS_ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// How often a download in progress asks the tracker for the file's peers again.
const SOURCES_REFRESH_EVERY: Duration = Duration::from_secs(2);

/// When a download first asks the tracker for the file's peers again: soon, because leechers
/// that start together cannot find each other at the start, and until they do their uploads
/// idle (in the swarm lab, 8 leechers started together uploaded nothing for the first 2 s of
/// 23 when this was 2 s; `bench/README.md`).
const FIRST_SOURCES_REFRESH: Duration = Duration::from_millis(500);

/// When a download first tells the tracker of its progress: once its partial file is open
/// (which takes milliseconds), and before the other leechers' first refresh.
const FIRST_PROGRESS_ANNOUNCE: Duration = Duration::from_millis(200);

/// Pauses between lookups of a file while its tracker cannot be reached: doubling from the
/// first to the most, for at most `--stall-timeout` in all.
const TRACKER_RETRY_FIRST: Duration = Duration::from_millis(500);
const TRACKER_RETRY_MAX: Duration = Duration::from_secs(5);

/// How long a lookup waits for the session's first registration attempt (the tracker answers
/// in milliseconds, or is unreachable at once; a hanging one is not waited for).
const FIRST_REGISTRATION_WAIT: Duration = Duration::from_secs(5);

/// How long stopping waits for the session to unregister from the tracker (a dead tracker
/// does not hold us up).
const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(3);

/// A started node with its tracker session.
#[derive(Debug)]
pub struct Peer {
    pub node: Node,
    pub tracker: TrackerClient,
    pub session: SessionHandle,
    pub(super) discovery: Discovery,
    /// Most requests in flight per connection (`--pipeline`).
    pipeline: usize,
    /// How long a download waits without progress (`--stall-timeout`).
    stall_timeout: Duration,
    /// Whether this peer has an API key (without one it does not register).
    pub(super) has_api_key: bool,
    /// Seconds the read grants of this peer's share links last (`--link-ttl`).
    link_ttl: u64,
    /// The share links being followed: where their ids are looked up.
    pub(super) routes: super::links::Routes,
}

impl Peer {
    /// Starts the node (on any free port when `any_port_if_busy` and the port is taken) and
    /// its session with the tracker: registration, heartbeats and announcements of the library.
    pub async fn start(args: &NodeArgs, any_port_if_busy: bool) -> Result<Self, PeerError> {
        let node = match Node::start(args).await {
            Ok(node) => node,
            Err(e) if any_port_if_busy && args.port != 0 => {
                tracing::info!(error = %e, "port busy; using any free port");
                let mut any = args.clone();
                any.port = 0;
                Node::start(&any).await?
            }
            Err(e) => return Err(e.into()),
        };
        let tracker = TrackerClient::with_failover(&args.tracker, args.api_key.clone())?
            .with_tracker_keys(node.tracker_keys.clone());
        let has_api_key = args
            .api_key
            .as_deref()
            .is_some_and(|k| !k.trim().is_empty());
        let register = RegisterPeerRequest {
            peer_id: node.identity.peer_id(),
            addresses: args.announce_addrs.clone(),
            port: node.addr.port(),
            udp_port: None,
            relay_only: args.relay_only,
            // Set by the home keeper once attached.
            relay: None,
            name: None,
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            proof: None,
        };
        // The tracker registers only callers with an API key; without one this peer downloads
        // (by a share link's read grant) without registering, announcing or a relay.
        let session = if has_api_key {
            spawn_session(
                tracker.clone(),
                node.identity.clone(),
                register,
                announcements(&node),
                connections(&node),
                SessionTiming::default(),
                node.shutdown.clone(),
            )
        } else {
            tracing::info!(
                "no API key: not registering with the tracker (a share link's read grant still downloads)"
            );
            SessionHandle::detached()
        };
        if node.relay.is_some() {
            super::home::HomeKeeper {
                tracker: tracker.clone(),
                connector: node.connector.clone(),
                session: session.clone(),
                peer_id: node.identity.peer_id(),
                configured: args.relays.clone(),
                trackers: args.tracker.clone(),
            }
            .spawn(node.shutdown.clone());
        }
        let discovery = Discovery::new(
            tracker.clone(),
            node.dht.clone(),
            node.identity.clone(),
            node.addr,
            node.relay.as_ref().map(|r| r.url()),
        )
        .allow_local_addrs(args.allow_local_addrs)
        .with_admissions(node.admissions.clone());
        Ok(Self {
            node,
            tracker,
            session,
            discovery,
            pipeline: args.pipeline,
            stall_timeout: Duration::from_secs(args.stall_timeout),
            has_api_key,
            link_ttl: args.link_ttl,
            routes: Arc::default(),
        })
    }

    /// Seconds the read grants of this peer's share links last (`--link-ttl`).
    pub fn link_ttl(&self) -> u64 {
        self.link_ttl
    }

    /// Tells the tracker and the DHT about new files and progress, without waiting.
    pub fn announce_now(&self) {
        self.session.announce_now();
        self.node.announce_now();
    }

    /// [`Peer::announce_now`] as a callback (for the daemon).
    pub fn announcer(&self) -> Arc<dyn Fn() + Send + Sync> {
        let (session, dht) = (self.session.clone(), self.node.dht_announcer.clone());
        Arc::new(move || {
            session.announce_now();
            if let Some(dht) = &dht {
                dht.announce_now();
            }
        })
    }

    /// The manifest of `id` and the peers to fetch it from, with further manifest variants to
    /// fall back to (see [`Discovery::find`]); at least one peer.
    pub async fn find(&self, id: &FileId) -> Result<Found, FetchError> {
        // The lookup admits this peer to the file only once it is registered (its token).
        if tokio::time::timeout(FIRST_REGISTRATION_WAIT, self.session.first_attempt())
            .await
            .is_err()
        {
            tracing::debug!("not registered yet; looking up without a peer token");
        }
        let (discovery, seeds) = self.route(id);
        // An unreachable tracker is waited out for as long as a stalled download would be.
        let deadline = tokio::time::Instant::now() + self.stall_timeout;
        let mut pause = TRACKER_RETRY_FIRST;
        let mut found = loop {
            match discovery.find(id).await {
                Err(e)
                    if e.tracker_unreachable()
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::warn!(
                        file = %id,
                        error = %crate::logging::error_chain(&e),
                        retry_in_ms = pause.as_millis(),
                        "the tracker is unreachable; trying again"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(TRACKER_RETRY_MAX);
                }
                found => break found?,
            }
        };
        crate::discovery::merge_sources(&mut found.sources, seeds);
        if found.sources.is_empty() {
            return Err(FetchError::NoPeers(found.manifest.name));
        }
        Ok(found)
    }

    /// After a download with one manifest of `id` failed as [`DownloadError::variant_failed`]
    /// says, the next of `fallbacks` that has peers (see [`Discovery::next_variant`]).
    pub async fn next_variant(
        &self,
        id: &FileId,
        fallbacks: &mut Vec<u32>,
    ) -> Option<(Manifest, Vec<PeerAddr>)> {
        self.route(id).0.next_variant(id, fallbacks).await
    }

    /// Downloads `manifest` from `sources` into the data dir, counting each peer's verified
    /// bytes into `contributions` as they arrive; progress is announced while it runs.
    ///
    /// It gives up after `--stall-timeout` without a chunk (see
    /// [`DownloadOptions::stall_timeout`]), or after `stall_timeout` when that is shorter: a
    /// caller with another manifest variant to try moves on sooner.
    pub async fn download(
        &self,
        manifest: &Manifest,
        sources: &[PeerAddr],
        contributions: Arc<Contributions>,
        stall_timeout: Option<Duration>,
    ) -> Result<DownloadReport, DownloadError> {
        self.fetch_into(manifest, sources, contributions, None, stall_timeout)
            .await
    }

    /// [`Peer::download`], the finished file going into `dest_dir` instead of the data dir
    /// (the partial data stays in the data dir's `.partial/`).
    pub async fn download_to(
        &self,
        manifest: &Manifest,
        sources: &[PeerAddr],
        contributions: Arc<Contributions>,
        dest_dir: Option<PathBuf>,
    ) -> Result<DownloadReport, DownloadError> {
        self.fetch_into(manifest, sources, contributions, dest_dir, None)
            .await
    }

    async fn fetch_into(
        &self,
        manifest: &Manifest,
        sources: &[PeerAddr],
        contributions: Arc<Contributions>,
        dest_dir: Option<PathBuf>,
        stall_timeout: Option<Duration>,
    ) -> Result<DownloadReport, DownloadError> {
        let opts = DownloadOptions {
            pipeline: self.pipeline,
            stall_timeout: stall_timeout.map_or(self.stall_timeout, |t| t.min(self.stall_timeout)),
            throttle: self.node.download.clone(),
            contributions,
            connector: self.node.connector.clone(),
            admissions: self.node.admissions.clone(),
            dest_dir,
            ..DownloadOptions::default()
        };
        let progress = {
            let (session, dht) = (self.session.clone(), self.node.dht_announcer.clone());
            tokio::spawn(async move {
                // Soon after the partial file is open, so that other leechers find this one
                // (see `refresh_sources`); then every few seconds.
                let first = tokio::time::Instant::now() + FIRST_PROGRESS_ANNOUNCE;
                let mut every = tokio::time::interval_at(first, PROGRESS_ANNOUNCE_EVERY);
                loop {
                    every.tick().await;
                    session.announce_now();
                    if let Some(dht) = &dht {
                        dht.announce_now();
                    }
                }
            })
        };
        let (found, more) = mpsc::channel(1);
        let refresh = tokio::spawn(refresh_sources(
            self.route(&manifest.id).0,
            manifest.clone(),
            found,
        ));
        let node = &self.node;
        let result = download::download_growing(
            &node.identity,
            manifest,
            sources,
            Some(more),
            &node.data_dir,
            node.library.clone(),
            opts,
        )
        .await;
        refresh.abort();
        progress.abort();
        self.announce_now();
        result
    }

    /// Stops the node; the session unregisters from the tracker (waited for at most
    /// [`UNREGISTER_TIMEOUT`]).
    pub async fn stop(&self) {
        self.node.shutdown();
        let _ = tokio::time::timeout(UNREGISTER_TIMEOUT, self.session.stopped()).await;
    }
}

/// Asks the tracker for the peers of `manifest`'s file (of its variant, when the tracker keeps
/// several manifests per file) after [`FIRST_SOURCES_REFRESH`], then every
/// [`SOURCES_REFRESH_EVERY`], and hands them to the download
/// (which skips those it knows): leechers that joined after it started have chunks to offer,
/// and they cannot all be found at the start. Ends when the download drops its end.
async fn refresh_sources(
    discovery: Discovery,
    manifest: Manifest,
    found: mpsc::Sender<Vec<PeerAddr>>,
) {
    let id = manifest.id;
    let first = tokio::time::Instant::now() + FIRST_SOURCES_REFRESH;
    let mut every = tokio::time::interval_at(first, SOURCES_REFRESH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut variant = None;
    loop {
        every.tick().await;
        if variant.is_none() {
            // Once: peers of another variant offer another manifest, which the download
            // refuses anyway.
            match discovery.variant_of(&manifest).await {
                Ok(v) => variant = Some(v),
                Err(e) => {
                    tracing::debug!(file = %id, error = %e, "cannot refresh the file's peers");
                    continue;
                }
            }
        }
        match discovery.tracker_peers(&id, variant.flatten()).await {
            Ok(peers) => {
                if found.send(peers).await.is_err() {
                    return;
                }
            }
            // The download goes on with the peers it has; the next round may reach the tracker.
            Err(e) => tracing::debug!(file = %id, error = %e, "cannot refresh the file's peers"),
        }
    }
}

/// What the tracker session announces: every file in the library, with its progress while
/// partial.
fn announcements(node: &Node) -> Announcements {
    let (library, peer_id) = (node.library.clone(), node.identity.peer_id());
    Arc::new(move || {
        library
            .list()
            .into_iter()
            .map(|(manifest, have)| AnnounceRequest {
                peer_id,
                have: (!have.is_complete()).then(|| have.to_base64()),
                file: manifest,
            })
            .collect()
    })
}

/// What the heartbeats report: the path of the latest connection to each peer.
fn connections(node: &Node) -> Connections {
    let connector = node.connector.clone();
    Arc::new(move || {
        connector
            .paths()
            .into_iter()
            .map(|(peer_id, path)| PeerConnection {
                peer_id,
                path: path.into(),
            })
            .collect()
    })
}
