//! `/relay?peer_id=…`: the WebSocket upgrade into the [relay hub](crate::relay). This endpoint
//! checks the credentials and hands the socket to [`relay::serve`](crate::relay::serve).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use p2p_proto::PeerId;
use p2p_proto::link::{READ_GRANT_HEADER, ReadGrant};
use p2p_proto::relay::MAX_RELAY_FRAME_LEN;
use poem::Request;
use poem::web::websocket::{WebSocket, WebSocketStream, WebSocketUpgraded};
use poem_openapi::OpenApi;
use poem_openapi::param::Query;

use crate::api::ApiTags;
use crate::error::status::{AUTHED, NOT_FOUND, PARAMS, STORE, TOO_MANY_REQUESTS};
use crate::error::{ApiError, Refusals};
use crate::relay::DialScope;
use crate::state::AppState;

type WsCallback = Box<dyn FnOnce(WebSocketStream) -> BoxFuture<'static, ()> + Send + Sync>;

pub struct RelayApi(pub Arc<AppState>);

#[OpenApi(tag = "ApiTags::Events")]
impl RelayApi {
    /// The relay hub: binary WebSocket messages, one relay frame each (docs/protocol.md §5).
    /// Needs credentials, or a read grant (`grant`, or `X-Read-Grant`: then the peer may only
    /// open tunnels to the online peers of the grant's id, nobody may open one to it, and it is
    /// detached when the grant expires), and then a proof of the peer id's key (the challenge
    /// the hub sends). 400 for a request that is not a WebSocket upgrade or a bad `peer_id`,
    /// 401 without valid credentials or grant, 404 for a grant of a file the tracker no longer
    /// knows, 429 when too many sockets are waiting for their key proof.
    #[oai(path = "/relay", method = "get", operation_id = "relay")]
    async fn relay(
        &self,
        req: &Request,
        ws: WebSocket,
        /// The peer id to attach as (hex); the proof must be for this id.
        peer_id: Query<PeerId>,
        /// A JWT or API key (or send X-API-Key / Authorization headers).
        token: Query<Option<String>>,
        /// Instead of credentials: a read grant (144 hex characters, or send X-Read-Grant).
        grant: Query<Option<String>>,
    ) -> Result<
        WebSocketUpgraded<WsCallback>,
        Refusals<{ AUTHED | PARAMS | TOO_MANY_REQUESTS | NOT_FOUND | STORE }>,
    > {
        let state = self.0.clone();
        let grant = grant
            .0
            .or_else(|| req.header(READ_GRANT_HEADER).map(str::to_owned));
        let (subject, scope) = match (super::credentials(&state, req, token.0).await?, grant) {
            (Some(principal), _) => (principal.subject, None),
            (None, Some(grant)) => {
                let grant = state.grants.check(&grant)?;
                (
                    format!("read grant for {}", grant.file_id),
                    Some(dial_scope(&state, &grant).await?),
                )
            }
            (None, None) => return Err(ApiError::from(crate::auth::AuthError::Missing).into()),
        };
        tracing::debug!(%subject, peer = %peer_id.0, by_grant = scope.is_some(), "relay attach");
        let claimed = peer_id.0;
        // Until its key proof is checked the socket holds a place in the waiting room.
        let waiting = super::waiting_room(&state)?;
        let callback: WsCallback = Box::new(move |stream| {
            Box::pin(async move {
                let hub = state.relay.clone();
                crate::relay::serve(hub, stream, claimed, subject, scope, waiting).await;
            })
        });
        Ok(ws
            .config(super::socket_config(MAX_RELAY_FRAME_LEN))
            .on_upgrade(callback))
    }
}

/// Most peers of a grant's id its holder may dial through the relay (those the tracker lists
/// first: whole ones first).
const MAX_DIAL_PEERS: u64 = 500;

/// What a read grant's holder may do on the relay: dial the peers online for the grant's id
/// now, until the grant expires.
async fn dial_scope(state: &AppState, grant: &ReadGrant) -> Result<DialScope, ApiError> {
    let swarm = state
        .swarm
        .file_peers(&grant.file_id, None, MAX_DIAL_PEERS, None)
        .await?;
    Ok(DialScope {
        file: grant.file_id,
        peers: swarm.peers.iter().map(|p| p.peer_id).collect(),
        until: std::time::Instant::now() + state.grants.time_left(grant),
    })
}
