//! WebSocket endpoints: the live event feed (`/ws`) and the upgrade into the relay hub
//! (`/relay`; the hub itself is [`relay`](crate::relay)).

mod events;
mod relay;

use poem::Request;
use poem::web::websocket::WebSocketConfig;
use tokio::sync::OwnedSemaphorePermit;

pub use events::EventsApi;
pub use relay::RelayApi;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// Credentials given at upgrade time: `?token=` (a JWT or an API key) or the usual
/// `X-API-Key` / `Authorization` headers. `None` when none were sent.
async fn credentials(
    state: &AppState,
    req: &Request,
    token: Option<String>,
) -> Result<Option<Principal>, ApiError> {
    Ok(match token {
        Some(t) => Some(state.auth.authenticate_bearer(&t).await?),
        None if req.header("x-api-key").is_some() || req.header("authorization").is_some() => Some(
            crate::auth::authenticate(
                &state.auth,
                req.header("x-api-key"),
                req.header("authorization"),
            )
            .await?,
        ),
        None => None,
    })
}

/// A WebSocket's buffers and caps: messages and frames up to `max_message` bytes, small read
/// and write buffers, and at most `4 * max_message` bytes waiting to be written.
fn socket_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(4 * max_message.max(16 * 1024))
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// A place among the sockets waiting to authenticate, or 429 when they are all taken.
fn waiting_room(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    state.pending_auth.clone().try_acquire_owned().map_err(|_| {
        state.metrics.rate_limited.inc();
        ApiError::too_many_requests(1)
    })
}
