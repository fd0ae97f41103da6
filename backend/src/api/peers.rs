//! `/api/peers/*`: challenges, registration, heartbeats, unregistration and listing.
//!
//! Registration proves possession of the peer id's private key and gets a peer token;
//! heartbeats and unregistration send that token (`X-Peer-Token`). See
//! [`crate::auth::peer_proof`].

use std::sync::Arc;

use p2p_proto::PeerId;
use p2p_proto::api::{
    HeartbeatRequest, HeartbeatResponse, PeerChallenge, PeerChallengeRequest, PeerInfo, PeerList,
    RegisterPeerRequest, RegisterPeerResponse, RelayList,
};
use poem::Request;
use poem_openapi::param::{Header, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::param::{Id, Path};
use super::{ApiTags, Auth, Reader};
use crate::error::status::{
    AUTHED, INTERNAL, JSON_BODY, NOT_FOUND, PARAMS, PEER_TOKEN, STORE, UNAUTHORIZED,
};
use crate::error::{ApiError, Refusals};
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
    /// A challenge for registering `peer_id`: the tracker's X25519 key and a nonce, valid for
    /// `expires_in_secs`. Answer it in the registration's `proof` (docs/protocol.md §8), or in
    /// the `X-Peer-Proof` of a lookup of a file's peers. A read grant (`X-Read-Grant`) will do
    /// instead of credentials.
    #[oai(
        path = "/api/peers/challenge",
        method = "post",
        operation_id = "peer_challenge"
    )]
    async fn challenge(
        &self,
        _reader: Reader,
        body: Json<PeerChallengeRequest>,
    ) -> Result<Json<PeerChallenge>, Refusals<{ AUTHED | JSON_BODY | INTERNAL }>> {
        let challenge = self.0.peer_auth.challenge(&body.0.peer_id).map_err(|e| {
            tracing::error!(error = %e, "no randomness for a challenge");
            ApiError::internal()
        })?;
        Ok(Json(challenge))
    }

    /// Registers a peer (or updates its addresses) and marks it online. `proof` must answer a
    /// challenge with the peer id's private key: 401 (`peer_proof`) when it is missing, stale,
    /// used before or wrong. The answer carries the peer token for the peer's later requests
    /// and the tracker's admission key (docs/protocol.md §9).
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
    ) -> Result<Json<RegisterPeerResponse>, Refusals<{ AUTHED | JSON_BODY | UNAUTHORIZED | STORE }>>
    {
        let peer_id = body.0.peer_id;
        self.0
            .peer_auth
            .verify_proof(&peer_id, body.0.proof.as_ref())?;
        let observed = client_ip(req, self.0.trust_proxy);
        let mut resp = self.0.swarm.register(body.0, observed).await?;
        let token = self.0.peer_auth.issue_token(&peer_id);
        resp.peer_token = token.token;
        resp.peer_token_expires_in_secs = token.expires_in_secs;
        resp.admission_key = Some(hex::encode(self.0.peer_auth.admission_key()));
        Ok(Json(resp))
    }

    /// Keeps a peer online; send one every `heartbeat_interval_secs`, with the peer's token.
    /// 404 means the tracker does not know the peer (any more), and 401 (`peer_token`) that
    /// the token is missing or expired: register again. 403: the token is another peer's.
    #[oai(
        path = "/api/peers/heartbeat",
        method = "post",
        operation_id = "heartbeat"
    )]
    async fn heartbeat(
        &self,
        _auth: Auth,
        /// The peer token from the registration (or a later heartbeat).
        /// 144 hex characters; anything else is answered like a missing or expired token
        /// (401 `peer_token`), which sends the peer to register again.
        #[oai(name = "X-Peer-Token")]
        peer_token: Header<Option<String>>,
        body: Json<HeartbeatRequest>,
    ) -> Result<
        Json<HeartbeatResponse>,
        Refusals<{ AUTHED | JSON_BODY | PEER_TOKEN | NOT_FOUND | STORE }>,
    > {
        let peer_id = body.0.peer_id;
        let auth = &self.0.peer_auth;
        let valid = auth.check_token(peer_token.0.as_deref(), &peer_id)?;
        let mut resp = self.0.swarm.heartbeat(body.0).await?;
        if let Some(fresh) = auth.renewal(&peer_id, valid) {
            resp.peer_token = Some(fresh.token);
            resp.peer_token_expires_in_secs = Some(fresh.expires_in_secs);
        }
        Ok(Json(resp))
    }

    /// Unregisters a peer and forgets what it announced. Needs the peer's token, except for
    /// dashboard admins (JWT with the `admin` role), who may remove any peer: the `peer_left`
    /// event then gives the reason `removed`. 404 when the peer is not registered.
    #[oai(
        path = "/api/peers/:id",
        method = "delete",
        operation_id = "unregister_peer"
    )]
    async fn unregister(
        &self,
        auth: Auth,
        /// The peer token (not needed by admins).
        /// 144 hex characters; anything else is answered like a missing or expired token
        /// (401 `peer_token`), which sends the peer to register again.
        #[oai(name = "X-Peer-Token")]
        peer_token: Header<Option<String>>,
        id: Path<PeerId, Id>,
    ) -> Result<Deleted, Refusals<{ AUTHED | PARAMS | PEER_TOKEN | NOT_FOUND | STORE }>> {
        if auth.0.is_admin() {
            self.0.swarm.remove_peer(&id.0).await?;
            tracing::info!(by = %auth.0.subject, peer = %id.0, "peer removed");
        } else {
            self.0
                .peer_auth
                .check_token(peer_token.0.as_deref(), &id.0)?;
            self.0.swarm.unregister(&id.0).await?;
        }
        Ok(Deleted::NoContent)
    }

    /// One peer.
    #[oai(path = "/api/peers/:id", method = "get", operation_id = "get_peer")]
    async fn get(
        &self,
        _auth: Auth,
        id: Path<PeerId, Id>,
    ) -> Result<Json<PeerInfo>, Refusals<{ AUTHED | PARAMS | NOT_FOUND | STORE }>> {
        Ok(Json(self.0.swarm.peer(&id.0).await?))
    }

    /// The relay fleet: the relays that reported in during the last 10 s (trackers started
    /// with `--relay-url`), by URL. A peer attaches to one as its home relay and names it in
    /// its registration's `relay`.
    #[oai(path = "/api/relays", method = "get", operation_id = "list_relays")]
    async fn relays(&self, _auth: Auth) -> Result<Json<RelayList>, Refusals<{ AUTHED | STORE }>> {
        Ok(Json(self.0.fleet.relays().await?))
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
    ) -> Result<Json<PeerList>, Refusals<{ AUTHED | PARAMS | STORE }>> {
        Ok(Json(
            self.0.swarm.list_peers(online.0, offset.0, limit.0).await?,
        ))
    }
}
