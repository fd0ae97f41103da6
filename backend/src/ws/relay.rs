//! `/relay?peer_id=…`: the WebSocket upgrade into the [relay hub](crate::relay). This endpoint
//! checks the credentials and hands the socket to [`relay::serve`](crate::relay::serve).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use p2p_proto::PeerId;
use p2p_proto::relay::MAX_RELAY_FRAME_LEN;
use poem::Request;
use poem::web::websocket::{WebSocket, WebSocketStream, WebSocketUpgraded};
use poem_openapi::OpenApi;
use poem_openapi::param::Query;

use crate::api::ApiTags;
use crate::error::status::{AUTHED, PARAMS, TOO_MANY_REQUESTS};
use crate::error::{ApiError, Refusals};
use crate::state::AppState;

type WsCallback = Box<dyn FnOnce(WebSocketStream) -> BoxFuture<'static, ()> + Send + Sync>;

pub struct RelayApi(pub Arc<AppState>);

#[OpenApi(tag = "ApiTags::Events")]
impl RelayApi {
    /// The relay hub: binary WebSocket messages, one relay frame each (docs/protocol.md §5).
    /// Needs credentials and then a proof of the peer id's key (the challenge the hub sends).
    /// 400 for a request that is not a WebSocket upgrade or a bad `peer_id`, 401 without
    /// valid credentials, 429 when too many sockets are waiting for their key proof.
    #[oai(path = "/relay", method = "get", operation_id = "relay")]
    async fn relay(
        &self,
        req: &Request,
        ws: WebSocket,
        /// The peer id to attach as (hex); the proof must be for this id.
        peer_id: Query<PeerId>,
        /// A JWT or API key (or send X-API-Key / Authorization headers).
        token: Query<Option<String>>,
    ) -> Result<WebSocketUpgraded<WsCallback>, Refusals<{ AUTHED | PARAMS | TOO_MANY_REQUESTS }>>
    {
        let state = self.0.clone();
        let principal = super::credentials(&state, req, token.0)
            .await?
            .ok_or_else(|| ApiError::from(crate::auth::AuthError::Missing))?;
        tracing::debug!(subject = %principal.subject, peer = %peer_id.0, "relay attach");
        let claimed = peer_id.0;
        // Until its key proof is checked the socket holds a place in the waiting room.
        let waiting = super::waiting_room(&state)?;
        let callback: WsCallback = Box::new(move |stream| {
            Box::pin(async move {
                let hub = state.relay.clone();
                crate::relay::serve(hub, stream, claimed, principal.subject, waiting).await;
            })
        });
        Ok(ws
            .config(super::socket_config(MAX_RELAY_FRAME_LEN))
            .on_upgrade(callback))
    }
}
