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
use crate::net::PeerAddr;
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
        let discovery = if ours && self.has_api_key {
            // Our own tracker, which knows us: the session's token admits us.
            self.discovery.clone()
        } else {
            match &link.grant {
                Some(grant) => self
                    .discovery
                    .with_tracker(client.with_read_grant(grant, self.node.identity.clone())),
                None => {
                    tracing::warn!(
                        "the link carries no read grant and names a tracker this peer has no key for: the tracker will refuse it"
                    );
                    self.discovery.with_tracker(client)
                }
            }
        };
        let seeds = self.discovery.link_sources(link);
        tracing::info!(
            id = %link.id,
            trackers = link.trackers.len(),
            peers = seeds.len(),
            grant = link.grant.is_some(),
            "following a share link"
        );
        self.routes
            .lock()
            .insert(link.id, LinkRoute { discovery, seeds });
        Ok(Following {
            routes: self.routes.clone(),
            id: link.id,
        })
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
