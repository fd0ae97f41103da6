//! The REST API (poem-openapi): one module per resource. Handlers parse, call the
//! [`Swarm`](crate::swarm::Swarm) or [`Authenticator`](crate::auth::Authenticator), and map the
//! result; the OpenAPI spec is generated from these same definitions, and [`app`](crate::app)
//! assembles them with the WebSocket endpoints of [`ws`](crate::ws).

use std::sync::Arc;

use poem::Request;
use poem_openapi::auth::{ApiKey, Bearer};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions, SecurityScheme, Tags};

use p2p_proto::FileId;
use p2p_proto::link::{READ_GRANT_HEADER, ReadGrant};

use crate::auth::{AuthError, Principal};
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

/// Documents the `X-Read-Grant` header: a read grant from `POST /api/files/{hash}/grants` (or a
/// share link), accepted instead of an API key where an operation says so.
#[derive(SecurityScheme)]
#[oai(
    rename = "ReadGrant",
    ty = "api_key",
    key_name = "X-Read-Grant",
    key_in = "header"
)]
#[allow(dead_code)]
struct ReadGrantScheme(ApiKey);

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

/// A caller that may read a file: an authenticated one ([`Auth`]), or the holder of a read grant
/// (`X-Read-Grant`, checked as issued here and not expired) who may read the grant's id only
/// ([`Reader::may_read`]). Credentials win when both are sent.
#[derive(Debug, Clone)]
pub enum Reader {
    Caller(Principal),
    Grant(ReadGrant),
}

impl Reader {
    /// 403 unless this reader may read `file`; 401 once the grant has expired.
    pub fn may_read(&self, state: &AppState, file: &FileId) -> Result<(), ApiError> {
        match self {
            Self::Caller(_) => Ok(()),
            Self::Grant(g) => Ok(state.grants.check_for(g, file)?),
        }
    }

    /// The latest an admission handed to this reader may last: a grant's expiry.
    pub fn until_ms(&self) -> Option<u64> {
        match self {
            Self::Caller(_) => None,
            Self::Grant(g) => Some(g.expires_at_ms),
        }
    }
}

impl<'a> ApiExtractor<'a> for Reader {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut poem_openapi::registry::Registry) {
        <ApiKeyScheme as ApiExtractor>::register(registry);
        <BearerScheme as ApiExtractor>::register(registry);
        <ReadGrantScheme as ApiExtractor>::register(registry);
    }

    fn security_schemes() -> Vec<&'static str> {
        vec!["ApiKey", "Bearer", "ReadGrant"]
    }

    async fn from_request(
        req: &'a Request,
        body: &mut poem::RequestBody,
        opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let credentials =
            req.header("x-api-key").is_some() || req.header("authorization").is_some();
        match req.header(READ_GRANT_HEADER) {
            _ if credentials => Auth::from_request(req, body, opts)
                .await
                .map(|auth| Self::Caller(auth.0)),
            None => Err(ApiError::unauthorized(format!(
                "{}, or X-Read-Grant with a read grant (a share link carries one)",
                AuthError::Missing
            ))
            .into()),
            Some(grant) => {
                let state = req
                    .data::<Arc<AppState>>()
                    .ok_or_else(|| poem::Error::from(ApiError::internal()))?;
                state
                    .grants
                    .check(grant)
                    .map(Self::Grant)
                    .map_err(|e| ApiError::from(e).into())
            }
        }
    }
}
