//! Share links on the peer's side: making one for a file or folder this peer shares
//! ([`Peer::share_link`]), and following one to download ([`Peer::follow`]).
//!
//! A link names its own trackers. Following it routes the lookups of its id to them, with its
//! read grant when it has one; this peer's API key goes along only to a tracker it was given
//! with `--tracker` (a link cannot make a peer hand its key to another tracker). The link's
//! peers join the sources the trackers give.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::FileId;
use p2p_proto::api::ReadGrantInfo;
use p2p_proto::link::{LinkError, ReadGrant, ShareLink};
use parking_lot::Mutex;

use super::Peer;
use crate::discovery::Discovery;
use crate::identity::Identity;
use crate::net::PeerAddr;
use crate::net::relay::relay_url;
use crate::tracker_client::{TrackerClient, TrackerError};

/// How long [`Peer::share_link`] waits for the tracker to know a file just shared (its
/// announce is on its way).
const KNOWN_WAIT: Duration = Duration::from_secs(10);

/// Why no link could be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShareLinkError {
    #[error("the tracker does not list {0} yet (is this peer registered?)")]
    NotListed(FileId),
    #[error("asking the tracker for the file's peers")]
    Peers(#[source] TrackerError),
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// A link made for sharing: the link, and the grant it carries (when the tracker gave one).
#[derive(Debug, Clone)]
pub struct MadeLink {
    pub link: ShareLink,
    pub grant: Option<ReadGrantInfo>,
    /// Why there is no grant, when there is none.
    pub no_grant: Option<TrackerError>,
}

/// Where the lookups of a linked id go, and the link's peers.
#[derive(Debug, Clone)]
pub(super) struct LinkRoute {
    pub(super) discovery: Discovery,
    pub(super) seeds: Vec<PeerAddr>,
    /// The link's trackers with its read grant, when lookups go to them by the grant: a
    /// folder's members are looked up there too, each with its own grant
    /// ([`Peer::member_routes`]).
    pub(super) by_grant: Option<TrackerClient>,
}

/// The routes of the links being followed, by id.
pub(super) type Routes = Arc<Mutex<HashMap<FileId, LinkRoute>>>;

/// Routes a link's id to its trackers while held; dropping it ends the route.
#[derive(Debug)]
pub struct Following {
    routes: Routes,
    id: FileId,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.routes.lock().remove(&self.id);
    }
}

impl Peer {
    /// Follows `link`: lookups of its id go to its trackers (with its grant), and its peers
    /// are sources, until the returned guard is dropped.
    pub fn follow(&self, link: &ShareLink) -> Result<Following, TrackerError> {
        let client = TrackerClient::with_failover(&link.trackers, None)?;
        let own = self.tracker.base_urls();
        let ours = client.base_urls().iter().any(|t| own.contains(t));
        let (discovery, by_grant) = if ours && self.has_api_key {
            // Our own tracker, which knows us: the session's token admits us.
            (self.discovery.clone(), None)
        } else {
            match &link.grant {
                Some(grant) => {
                    let client = client.with_read_grant(grant, self.node.identity.clone());
                    let mut discovery = self.discovery.with_tracker(client.clone());
                    if !self.has_api_key {
                        // No relay of our own: the link's relays (and its trackers', where
                        // peers naming none are), visited with its grant.
                        let relays = link.relays.iter().chain(&link.trackers);
                        for url in relays.filter_map(|r| relay_url(r).ok()) {
                            self.node.connector.allow_relay(url, grant.to_hex());
                        }
                        let default = link.trackers.first().and_then(|t| relay_url(t).ok());
                        discovery = discovery.by_their_relays(default);
                    }
                    (discovery, Some(client))
                }
                None => {
                    tracing::warn!(
                        "the link carries no read grant and names a tracker this peer has no key for: the tracker will refuse it"
                    );
                    (self.discovery.with_tracker(client), None)
                }
            }
        };
        let seeds = discovery.link_sources(link);
        tracing::info!(
            id = %link.id,
            trackers = link.trackers.len(),
            peers = seeds.len(),
            grant = link.grant.is_some(),
            "following a share link"
        );
        self.routes.lock().insert(
            link.id,
            LinkRoute {
                discovery,
                seeds,
                by_grant,
            },
        );
        Ok(Following {
            routes: self.routes.clone(),
            id: link.id,
        })
    }

    /// When the folder collection `id` is followed by a link's read grant: read grants for its
    /// member files from the link's tracker (`encoding` is the collection's canonical
    /// encoding, which the tracker checks against the id), to route each member's lookups like
    /// the collection's ([`MemberRoutes::follow`]). `None` when the collection's lookups need
    /// no grant (this peer's own tracker, with its key).
    pub async fn member_routes(
        &self,
        id: &FileId,
        encoding: Vec<u8>,
    ) -> Result<Option<MemberRoutes>, TrackerError> {
        let Some((route, client)) = self
            .routes
            .lock()
            .get(id)
            .and_then(|r| Some((r.clone(), r.by_grant.clone()?)))
        else {
            return Ok(None);
        };
        // The collection's own grant asks for them.
        let answer = client.member_grants(id, encoding).await?;
        if answer.collection_id != *id {
            return Err(TrackerError::InvalidResponse(format!(
                "member grants for {}, not {id}",
                answer.collection_id
            )));
        }
        let mut grants = HashMap::with_capacity(answer.grants.len());
        for hex in &answer.grants {
            let grant = ReadGrant::from_hex(hex).map_err(|e| {
                TrackerError::InvalidResponse(format!("a member's read grant: {e}"))
            })?;
            grants.insert(grant.file_id, grant);
        }
        tracing::info!(folder = %id, members = grants.len(), "read grants for the folder's files");
        Ok(Some(MemberRoutes {
            routes: self.routes.clone(),
            client,
            discovery: route.discovery,
            seeds: route.seeds,
            identity: self.node.identity.clone(),
            grants,
        }))
    }

    /// The discovery for `id`: a followed link's, else this peer's own; and the link's peers.
    pub(super) fn route(&self, id: &FileId) -> (Discovery, Vec<PeerAddr>) {
        match self.routes.lock().get(id) {
            Some(route) => (route.discovery.clone(), route.seeds.clone()),
            None => (self.discovery.clone(), Vec::new()),
        }
    }

    /// A link to `id` (a file or folder this peer shares): this peer's trackers, the peers the
    /// tracker lists for it (this one first) and their relays ([`ShareLink::from_swarm`]), and
    /// a read grant lasting `ttl` when the tracker gives one. Waits up to [`KNOWN_WAIT`] for the tracker to list the
    /// file (a file just shared is being announced).
    pub async fn share_link(
        &self,
        id: &FileId,
        ttl: Option<Duration>,
    ) -> Result<MadeLink, ShareLinkError> {
        let me = self.node.identity.peer_id();
        let deadline = tokio::time::Instant::now() + KNOWN_WAIT;
        let swarm = loop {
            match self.tracker.file_peers(id, None, 50).await {
                Ok(swarm) if swarm.peers.iter().any(|p| p.peer_id == me) => break swarm,
                Ok(_) | Err(TrackerError::NotFound(_)) => {}
                Err(e) => return Err(ShareLinkError::Peers(e)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ShareLinkError::NotListed(*id));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (grant, no_grant) = match self.tracker.read_grant(id, ttl).await {
            Ok(info) => match ReadGrant::from_hex(&info.grant) {
                Ok(g) if g.file_id == *id => (Some((info, g)), None),
                _ => (
                    None,
                    Some(TrackerError::InvalidResponse(
                        "a read grant for another id".into(),
                    )),
                ),
            },
            Err(e) => (None, Some(e)),
        };
        let link = ShareLink::from_swarm(
            *id,
            self.tracker.base_urls(),
            &swarm.peers,
            Some(me),
            grant.as_ref().map(|(_, g)| g),
        )?;
        Ok(MadeLink {
            link,
            grant: grant.map(|(info, _)| info),
            no_grant,
        })
    }
}

/// The read grants of a followed folder link's member files, and how to look them up: at the
/// link's trackers, each with its own grant, the link's peers as further sources.
#[derive(Debug)]
pub struct MemberRoutes {
    routes: Routes,
    client: TrackerClient,
    discovery: Discovery,
    seeds: Vec<PeerAddr>,
    identity: Identity,
    grants: HashMap<FileId, ReadGrant>,
}

impl MemberRoutes {
    /// Routes the lookups of member `id` by its grant while the guard is held; `None` when the
    /// tracker gave no grant for it, or its lookups are routed already (another link of it).
    pub fn follow(&self, id: &FileId) -> Option<Following> {
        let grant = self.grants.get(id)?;
        let mut routes = self.routes.lock();
        if routes.contains_key(id) {
            return None;
        }
        let client = self
            .client
            .clone()
            .with_read_grant(grant, self.identity.clone());
        routes.insert(
            *id,
            LinkRoute {
                discovery: self.discovery.with_tracker(client.clone()),
                seeds: self.seeds.clone(),
                by_grant: Some(client),
            },
        );
        Some(Following {
            routes: self.routes.clone(),
            id: *id,
        })
    }
}
