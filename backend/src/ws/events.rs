//! `/ws`: live tracker events as JSON text messages.
//!
//! The feed reveals peer addresses, so it needs credentials: `?token=` (a JWT or an API key),
//! the usual `X-API-Key` / `Authorization` headers, or a first message `{"token": "…"}` sent
//! within [`AUTH_TIMEOUT`] (browsers cannot set headers on WebSockets).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use p2p_proto::api::{Event, WsAuth};
use poem::Request;
use poem::web::websocket::{CloseCode, Message, WebSocket, WebSocketStream, WebSocketUpgraded};
use poem_openapi::OpenApi;
use poem_openapi::param::Query;
use tokio::sync::broadcast::error::RecvError;

use crate::api::ApiTags;
use crate::auth::Principal;
use crate::error::Refusals;
use crate::error::status::{AUTHED, PARAMS, TOO_MANY_REQUESTS};
use crate::state::AppState;

/// How long a client has to send its token after connecting.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message a client may send (it only ever sends its credentials).
const MAX_CLIENT_MESSAGE: usize = 8 * 1024;
/// Pings keep idle connections open through proxies.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// Read buffer of one feed socket. tungstenite allocates it whole when the socket opens and
/// keeps it while the socket lives; clients send only their credentials (up to
/// [`MAX_CLIENT_MESSAGE`], read in several pieces then), pongs and a close, so 1 KiB does. At
/// the shared 16 KiB it was most of an idle socket's memory (`bench/ws`).
const READ_BUFFER: usize = 1024;

type WsCallback = Box<dyn FnOnce(WebSocketStream) -> BoxFuture<'static, ()> + Send + Sync>;

pub struct EventsApi(pub Arc<AppState>);

#[OpenApi(tag = "ApiTags::Events")]
impl EventsApi {
    /// Live events (peer joined/left, file announced, relay connected…) as JSON text
    /// messages `{"ts_ms": …, "type": "…", …}`. The recent events are sent first. 400 for a
    /// request that is not a WebSocket upgrade, 401 for wrong credentials, 429 when too many
    /// sockets are waiting for theirs.
    #[oai(path = "/ws", method = "get", operation_id = "events")]
    async fn events(
        &self,
        req: &Request,
        ws: WebSocket,
        /// A JWT or API key (or send `{"token": "…"}` as the first message).
        token: Query<Option<String>>,
    ) -> Result<WebSocketUpgraded<WsCallback>, Refusals<{ AUTHED | PARAMS | TOO_MANY_REQUESTS }>>
    {
        let state = self.0.clone();
        let principal = super::credentials(&state, req, token.0).await?;
        // Without credentials yet, the socket waits for them in the bounded waiting room.
        let waiting = match principal {
            Some(_) => None,
            None => Some(super::waiting_room(&state)?),
        };
        let callback: WsCallback = Box::new(move |stream| {
            Box::pin(async move {
                serve(state, stream, principal, waiting).await;
            })
        });
        Ok(ws
            .config(super::socket_config(MAX_CLIENT_MESSAGE).read_buffer_size(READ_BUFFER))
            .on_upgrade(callback))
    }
}

async fn serve(
    state: Arc<AppState>,
    stream: WebSocketStream,
    principal: Option<Principal>,
    waiting: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let (mut tx, mut rx) = stream.split();
    let principal = match principal {
        Some(p) => p,
        None => match first_message_auth(&state, &mut rx).await {
            Ok(p) => p,
            Err(reason) => {
                let _ = tokio::time::timeout(
                    AUTH_TIMEOUT,
                    tx.send(Message::Close(Some((CloseCode::Policy, reason)))),
                )
                .await;
                return;
            }
        },
    };
    drop(waiting);
    tracing::debug!(subject = %principal.subject, "event feed client connected");
    state.metrics.ws_clients.inc();
    let (recent, mut events) = state.events.subscribe();
    let hello = state.events.message(Event::Hello {
        version: env!("CARGO_PKG_VERSION").to_owned(),
    });
    let mut ok = tx.send(Message::Text(hello)).await.is_ok();
    for msg in recent {
        if !ok {
            break;
        }
        ok = tx.send(Message::Text(msg.to_string())).await.is_ok();
    }
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    while ok {
        tokio::select! {
            _ = state.shutdown.cancelled() => {
                let _ = tx.send(Message::Close(Some((CloseCode::Away, "tracker shutting down".into())))).await;
                break;
            }
            event = events.recv() => {
                ok = match event {
                    Ok(json) => tx.send(Message::Text(json.to_string())).await.is_ok(),
                    Err(RecvError::Lagged(missed)) => {
                        let msg = state.events.message(Event::Lagged { missed });
                        tx.send(Message::Text(msg)).await.is_ok()
                    }
                    Err(RecvError::Closed) => false,
                };
            }
            incoming = rx.next() => {
                ok = matches!(incoming, Some(Ok(m)) if !m.is_close());
            }
            _ = ping.tick() => {
                ok = tx.send(Message::Ping(Vec::new())).await.is_ok();
            }
        }
    }
    state.metrics.ws_clients.dec();
}

/// Waits for `{"token": "…"}` and checks it; the error is the close reason.
async fn first_message_auth(
    state: &AppState,
    rx: &mut futures_util::stream::SplitStream<WebSocketStream>,
) -> Result<Principal, String> {
    let first = tokio::time::timeout(AUTH_TIMEOUT, async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Text(t))) => return Some(t),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await
    .map_err(|_| "no credentials sent in time".to_owned())?
    .ok_or_else(|| "expected a text message with credentials".to_owned())?;
    let auth: WsAuth = serde_json::from_str(&first)
        .map_err(|_| "first message must be {\"token\": \"<JWT or API key>\"}".to_owned())?;
    state
        .auth
        .authenticate_bearer(&auth.token)
        .await
        .map_err(|e| e.to_string())
}
