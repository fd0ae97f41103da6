//! The REST API (poem-openapi): one module per resource. Handlers parse, call the
//! [`Swarm`](crate::swarm::Swarm) or [`Authenticator`](crate::auth::Authenticator), and map the
//! result; the OpenAPI spec is generated from these same definitions, and [`app`](crate::app)
//! assembles them with the WebSocket endpoints of [`ws`](crate::ws).

use std::sync::Arc;

use poem::Request;
use poem_openapi::auth::{ApiKey, Bearer};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions, SecurityScheme, Tags};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

pub mod admin;
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
    /// Managing API keys and dashboard users (admins only).
    Admin,
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

impl Auth {
    /// The caller, when it is an admin; 403 otherwise.
    pub fn admin(&self) -> Result<&Principal, ApiError> {
        if self.0.is_admin() {
            Ok(&self.0)
        } else {
            Err(ApiError::forbidden(format!(
                "this needs an admin account; {} has the role '{}'",
                self.0.subject, self.0.role
            )))
        }
    }
}

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
        crate::auth::authenticate(
            &state.auth,
            req.header("x-api-key"),
            req.header("authorization"),
        )
        .await
        .map(Auth)
        .map_err(|e| ApiError::from(e).into())
    }
}
