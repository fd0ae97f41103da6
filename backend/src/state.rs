//! What every handler can reach: the tracker's services, built once by [`app`](crate::app).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, PeerAuth, ReadGrants};
use crate::events::EventBus;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::relay::RelayHub;
use crate::swarm::Swarm;

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    pub swarm: Arc<Swarm>,
    pub auth: Arc<Authenticator>,
    /// Challenges, registration proofs and peer tokens: which peer a request speaks for.
    pub peer_auth: Arc<PeerAuth>,
    /// Read grants: reading one id without an API key (share links).
    pub grants: Arc<ReadGrants>,
    pub metrics: Arc<Metrics>,
    pub events: EventBus,
    /// The relay hub behind `/relay`.
    pub relay: Arc<RelayHub>,
    /// The trackers on this database: the live relays and the summed counts.
    pub fleet: Arc<Fleet>,
    /// Trusted reverse proxies in front of the tracker (`--trust-proxy`), if any.
    pub trust_proxy: Option<u8>,
    /// What `/metrics` asks for (`--metrics-token`), if anything.
    pub metrics_token: Option<String>,
    /// WebSockets still waiting for credentials or a key proof (one permit each).
    pub pending_auth: Arc<tokio::sync::Semaphore>,
    /// Folder collections being read for member grants (one permit each, so at most
    /// [`crate::api::files::MEMBER_GRANT_READS`] collections are held in memory at once).
    pub member_grant_reads: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the tracker shuts down; long-lived connections watch it.
    pub shutdown: CancellationToken,
}
