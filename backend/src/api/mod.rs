//! The REST API (poem-openapi): one module per resource. Handlers parse, call the
//! [`Swarm`](crate::swarm::Swarm) or [`Authenticator`](crate::auth::Authenticator), and map the
//! result; the OpenAPI spec is generated from these same definitions.

use std::sync::Arc;

use poem::Request;
use poem_openapi::auth::{ApiKey, Bearer};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions, OpenApiService, SecurityScheme, Tags,
};

use crate::app::AppState;
use crate::auth::{AuthError, Principal};
use crate::error::ApiError;

pub mod auth;
pub mod files;
pub mod health;
mod param;
pub mod peers;

#[derive(Tags)]
pub enum ApiTags {
    /// Liveness, metrics and the swarm overview.
    Health,
    /// Logging in for a JWT.
    Auth,
    /// Peer registration and heartbeats.
    Peers,
    /// File announces, listings and swarms.
    Files,
    /// The live event feed.
    Events,
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Store(e) => e.into(),
            AuthError::Internal => ApiError::internal(),
            AuthError::BadLoginRequest => ApiError::bad_request(e.to_string()),
            AuthError::Throttled(secs) => ApiError::too_many_requests(secs),
            other => ApiError::unauthorized(other.to_string()),
        }
    }
}

/// Documents the `X-API-Key` header (never extracted directly: see [`Auth`]).
#[derive(SecurityScheme)]
#[oai(
    rename = "ApiKey",
    ty = "api_key",
    key_name = "X-API-Key",
    key_in = "header"
)]
#[allow(dead_code)]
struct ApiKeyScheme(ApiKey);

/// Documents `Authorization: Bearer` with a JWT from `/api/auth/login` or an API key.
#[derive(SecurityScheme)]
#[oai(rename = "Bearer", ty = "bearer", bearer_format = "JWT or API key")]
#[allow(dead_code)]
struct BearerScheme(Bearer);

/// An authenticated caller, extracted from `X-API-Key` or `Authorization: Bearer`.
///
/// Hand-written rather than a derived scheme enum so that a wrong key is reported as a wrong
/// key, not as a missing `Authorization` header.
#[derive(Debug, Clone)]
pub struct Auth(pub Principal);

impl<'a> ApiExtractor<'a> for Auth {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut poem_openapi::registry::Registry) {
        <ApiKeyScheme as ApiExtractor>::register(registry);
        <BearerScheme as ApiExtractor>::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        vec!["ApiKey", "Bearer"]
    }

    async fn from_request(
        req: &'a Request,
        _body: &mut poem::RequestBody,
        _opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let state = req
            .data::<Arc<AppState>>()
            .ok_or_else(|| poem::Error::from(ApiError::internal()))?;
        authenticate(
            &state.auth,
            req.header("x-api-key"),
            req.header("authorization"),
        )
        .await
        .map(Auth)
        .map_err(|e| ApiError::from(e).into())
    }
}

/// Checks an `X-API-Key` value or an `Authorization` header.
pub async fn authenticate(
    auth: &crate::auth::Authenticator,
    api_key: Option<&str>,
    authorization: Option<&str>,
) -> Result<Principal, AuthError> {
    if let Some(key) = api_key {
        return auth.authenticate_key(key).await;
    }
    let Some(value) = authorization else {
        return Err(AuthError::Missing);
    };
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            auth.authenticate_bearer(token).await
        }
        _ => Err(AuthError::InvalidToken(
            "the Authorization header must be 'Bearer <token>'".into(),
        )),
    }
}

/// The API operations, all under one generated spec.
pub type Apis = (
    health::HealthApi,
    auth::AuthApi,
    peers::PeersApi,
    files::FilesApi,
    crate::ws::EventsApi,
    crate::ws::RelayApi,
);

/// Builds the OpenAPI service with every operation.
pub fn service(state: Arc<AppState>) -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            health::HealthApi(state.clone()),
            auth::AuthApi(state.clone()),
            peers::PeersApi(state.clone()),
            files::FilesApi(state.clone()),
            crate::ws::EventsApi(state.clone()),
            crate::ws::RelayApi(state),
        ),
        "p2p tracker",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Tracker of the p2p file-sharing system. Every /api route except /api/auth/login needs \
         an API key (X-API-Key, or Authorization: Bearer) or a JWT from /api/auth/login.",
    )
}
