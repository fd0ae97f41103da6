//! `/api/peers/*`: registration, heartbeats, unregistration and listing.

use std::sync::Arc;

use p2p_proto::PeerId;
use p2p_proto::api::{
    HeartbeatRequest, HeartbeatResponse, PeerInfo, PeerList, RegisterPeerRequest,
    RegisterPeerResponse,
};
use poem::Request;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::param::{Id, Path};
use super::{ApiTags, Auth};
use crate::error::ApiError;
use crate::ratelimit::client_ip;
use crate::state::AppState;

pub struct PeersApi(pub Arc<AppState>);

#[derive(ApiResponse)]
pub enum Deleted {
    /// The peer and its announces are gone.
    #[oai(status = 204)]
    NoContent,
}

#[OpenApi(tag = "ApiTags::Peers")]
impl PeersApi {
    /// Registers a peer (or updates its addresses) and marks it online.
    #[oai(
        path = "/api/peers/register",
        method = "post",
        operation_id = "register_peer"
    )]
    async fn register(
        &self,
        req: &Request,
        _auth: Auth,
        body: Json<RegisterPeerRequest>,
    ) -> Result<Json<RegisterPeerResponse>, ApiError> {
        let observed = client_ip(req, self.0.trust_proxy);
        Ok(Json(self.0.swarm.register(body.0, observed).await?))
    }

    /// Keeps a peer online; send one every `heartbeat_interval_secs`. 404 means the tracker
    /// does not know the peer (any more): register again.
    #[oai(
        path = "/api/peers/heartbeat",
        method = "post",
        operation_id = "heartbeat"
    )]
    async fn heartbeat(
        &self,
        _auth: Auth,
        body: Json<HeartbeatRequest>,
    ) -> Result<Json<HeartbeatResponse>, ApiError> {
        Ok(Json(self.0.swarm.heartbeat(body.0).await?))
    }

    /// Unregisters a peer and forgets what it announced. An admin (a user with the admin
    /// role) may remove any peer: the `peer_left` event then gives the reason `removed`. 404
    /// when the peer is not registered.
    #[oai(
        path = "/api/peers/:id",
        method = "delete",
        operation_id = "unregister_peer"
    )]
    async fn unregister(&self, auth: Auth, id: Path<PeerId, Id>) -> Result<Deleted, ApiError> {
        if auth.0.is_admin() {
            self.0.swarm.remove_peer(&id.0).await?;
            tracing::info!(by = %auth.0.subject, peer = %id.0, "peer removed");
        } else {
            self.0.swarm.unregister(&id.0).await?;
        }
        Ok(Deleted::NoContent)
    }

    /// One peer.
    #[oai(path = "/api/peers/:id", method = "get", operation_id = "get_peer")]
    async fn get(&self, _auth: Auth, id: Path<PeerId, Id>) -> Result<Json<PeerInfo>, ApiError> {
        Ok(Json(self.0.swarm.peer(&id.0).await?))
    }

    /// Registered peers, most recently seen first.
    #[oai(path = "/api/peers", method = "get", operation_id = "list_peers")]
    async fn list(
        &self,
        _auth: Auth,
        /// Only peers online now.
        #[oai(default)]
        online: Query<bool>,
        #[oai(default)] offset: Query<u64>,
        /// Page size (default 50, at most 500).
        #[oai(default)]
        limit: Query<u64>,
    ) -> Result<Json<PeerList>, ApiError> {
        Ok(Json(
            self.0.swarm.list_peers(online.0, offset.0, limit.0).await?,
        ))
    }
}
