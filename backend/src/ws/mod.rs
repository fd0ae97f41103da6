//! WebSocket endpoints: the live event feed (`/ws`) and the relay hub (`/relay`).

mod events;
pub mod punch;
pub mod relay;

use poem::Request;

pub use events::EventsApi;
pub use relay::{RelayApi, RelayHub, RelayLimits};

use crate::app::AppState;
use crate::auth::Principal;
use crate::error::ApiError;

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
            crate::api::authenticate(
                &state.auth,
                req.header("x-api-key"),
                req.header("authorization"),
            )
            .await?,
        ),
        None => None,
    })
}
