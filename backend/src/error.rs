//! The one place where failures become HTTP responses.
//!
//! Every error leaves the server as `{"error": code, "message": text}`. Database and internal
//! errors are logged with their detail and answered with a generic message: no SQL text, stack
//! trace or secret ever reaches a client.

use p2p_proto::api::ErrorBody;
use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::payload::Json;

use crate::auth::accounts::AccountError;
use crate::auth::{AuthError, PeerAuthError};
use crate::store::StoreError;

fn body(error: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: error.to_owned(),
        message: message.into(),
    })
}

/// An error answer of the REST API. Each variant documents one status in the OpenAPI spec.
#[derive(ApiResponse, Debug)]
#[oai(bad_request_handler = "ApiError::from_parse_error")]
pub enum ApiError {
    /// The request is malformed: bad JSON, a bad id, size or chunk list.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing or invalid credentials: the API key or JWT (`unauthorized`), the proof of a
    /// peer id's private key in a registration (`peer_proof`), or the `X-Peer-Token` of a
    /// request that changes a peer's entry (`peer_token`; register again for a fresh one).
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The credentials are good but do not cover this: an `X-Peer-Token` of another peer id,
    /// management without an admin account, or a caller that has stored all its quota allows
    /// (`quota_exceeded`).
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No such peer, file or route.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The request body did not arrive in time.
    #[oai(status = 408)]
    RequestTimeout(Json<ErrorBody>),
    /// The request contradicts what the tracker already stores.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The body is larger than the tracker accepts.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body is not JSON (`Content-Type` must be `application/json`).
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// Over the rate limit; retry after the given number of seconds.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// An unexpected failure (details are in the tracker's log).
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// The database cannot be reached.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(body("bad_request", message))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::Unauthorized(body("unauthorized", message))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(body("forbidden", message))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(body("not_found", message))
    }

    pub fn request_timeout() -> Self {
        Self::RequestTimeout(body(
            "request_timeout",
            "the request body did not arrive in time",
        ))
    }

    pub fn quota_exceeded(message: impl Into<String>) -> Self {
        Self::Forbidden(body("quota_exceeded", message))
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(body("conflict", message))
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::PayloadTooLarge(body("payload_too_large", message))
    }

    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::TooManyRequests(
            body(
                "rate_limited",
                format!("too many requests; retry after {retry_after_secs} s"),
            ),
            retry_after_secs,
        )
    }

    pub fn internal() -> Self {
        Self::Internal(body("internal", "internal error; see the tracker's log"))
    }

    pub fn unavailable() -> Self {
        Self::Unavailable(body("unavailable", "the database is unavailable"))
    }

    /// Turns a request that poem-openapi could not parse into a JSON 400.
    fn from_parse_error(err: poem::Error) -> Self {
        // poem-openapi reports a wrong Content-Type as a 400; it is a 415.
        if err.is::<poem_openapi::error::ContentTypeError>() {
            return Self::UnsupportedMediaType(body("unsupported_media_type", err.to_string()));
        }
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::PayloadTooLarge(body("payload_too_large", err.to_string()));
        }
        Self::bad_request(err.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                Self::unavailable()
            }
            StoreError::Database(e) => {
                tracing::error!(error = %e, "database error");
                Self::internal()
            }
            StoreError::Migrate(e) => {
                tracing::error!(error = %e, "migration error");
                Self::internal()
            }
            StoreError::Corrupt(what) => {
                tracing::error!(%what, "corrupt row in the database");
                Self::internal()
            }
        }
    }
}

/// Maps errors that did not come from a handler (unknown route, wrong method, a failed upgrade)
/// to the same JSON shape. Responses already built by [`ApiError`] pass through unchanged.
pub async fn render_any_error(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNAUTHORIZED => "unauthorized",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    };
    let message = if status.is_server_error() {
        tracing::error!(error = %err, "unhandled server error");
        "internal error; see the tracker's log".to_owned()
    } else {
        err.to_string()
    };
    poem::web::Json(ErrorBody {
        error: code.to_owned(),
        message,
    })
    .with_status(status)
    .into_response()
}

impl From<PeerAuthError> for ApiError {
    fn from(e: PeerAuthError) -> Self {
        match e {
            PeerAuthError::WrongPeer { .. } => Self::Forbidden(body("forbidden", e.to_string())),
            e if e.is_token_error() => Self::Unauthorized(body("peer_token", e.to_string())),
            e => Self::Unauthorized(body("peer_proof", e.to_string())),
        }
    }
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

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::BadName { .. }
            | AccountError::ShortPassword
            | AccountError::BadRole
            | AccountError::OwnAccount => ApiError::bad_request(e.to_string()),
            AccountError::UserExists(_) => ApiError::conflict(e.to_string()),
            AccountError::NoUser(_) | AccountError::NoKey(_) => ApiError::not_found(e.to_string()),
            AccountError::Auth(e) => e.into(),
            AccountError::Random(_) | AccountError::Hash(_) | AccountError::Task(_) => {
                tracing::error!(error = ?e, "account change failed");
                ApiError::internal()
            }
        }
    }
}
