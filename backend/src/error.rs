//! The one place where failures become HTTP responses.
//!
//! Every error leaves the server as `{"error": code, "message": text}`. Database and internal
//! errors are logged with their detail and answered with a generic message: no SQL text, stack
//! trace or secret ever reaches a client.

use p2p_proto::api::ErrorBody;
use p2p_proto::link::GrantError;
use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaResponses, Registry};

use crate::auth::accounts::AccountError;
use crate::auth::{AuthError, PeerAuthError};
use crate::store::StoreError;

fn body(error: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: error.to_owned(),
        message: message.into(),
    })
}

/// An error answer of the REST API: every status any operation refuses with, each with the
/// JSON error body. Operations document only the statuses they can return: see [`Refusals`].
#[derive(ApiResponse, Debug)]
pub enum ApiError {
    /// The request is malformed (`bad_request`): a body that is not JSON or misses a field, a
    /// parameter or field that breaks its schema (a bad id, length, range or pattern), or a
    /// value the tracker refuses (see the operation).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing or invalid credentials: the API key or JWT (`unauthorized`), the proof of a
    /// peer id's private key in a registration (`peer_proof`), or the `X-Peer-Token` of a
    /// request that changes a peer's entry (`peer_token`; register again for a fresh one), or an
    /// `X-Read-Grant` that is malformed, not the tracker's or expired (`read_grant`).
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The credentials are good but do not cover this (`forbidden`): an `X-Peer-Token` of
    /// another peer id, a read grant for another id, or management without an admin account;
    /// or a caller that has stored all its quota allows (`quota_exceeded`).
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No such peer, file, key, user or manifest variant (`not_found`).
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The request body did not arrive within `--body-timeout-secs` (`request_timeout`).
    #[oai(status = 408)]
    RequestTimeout(Json<ErrorBody>),
    /// The request contradicts what the tracker already stores (`conflict`).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The body (declared or streamed) is larger than `--max-body-bytes`
    /// (`payload_too_large`).
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body has no `Content-Type` or another than `application/json`
    /// (`unsupported_media_type`).
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// Over the rate limit, or too many logins, sockets waiting or large request bodies being
    /// read (`rate_limited`); retry after the given number of seconds.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] u64),
    /// An unexpected failure (`internal`; details are in the tracker's log).
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// The database cannot be reached (`unavailable`).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// The error statuses an operation can answer with, as a set of bits (one per [`ApiError`]
/// status), composed from the causes below. Each operation's spec lists exactly its set: see
/// [`Refusals`].
pub mod status {
    pub const BAD_REQUEST: u32 = 1 << 0;
    pub const UNAUTHORIZED: u32 = 1 << 1;
    pub const FORBIDDEN: u32 = 1 << 2;
    pub const NOT_FOUND: u32 = 1 << 3;
    pub const REQUEST_TIMEOUT: u32 = 1 << 4;
    pub const CONFLICT: u32 = 1 << 5;
    pub const PAYLOAD_TOO_LARGE: u32 = 1 << 6;
    pub const UNSUPPORTED_MEDIA_TYPE: u32 = 1 << 7;
    pub const TOO_MANY_REQUESTS: u32 = 1 << 8;
    pub const INTERNAL: u32 = 1 << 9;
    pub const UNAVAILABLE: u32 = 1 << 10;

    /// The bit of an HTTP status, 0 for a status that is not an error of the API.
    pub const fn bit(status: u16) -> u32 {
        match status {
            400 => BAD_REQUEST,
            401 => UNAUTHORIZED,
            403 => FORBIDDEN,
            404 => NOT_FOUND,
            408 => REQUEST_TIMEOUT,
            409 => CONFLICT,
            413 => PAYLOAD_TOO_LARGE,
            415 => UNSUPPORTED_MEDIA_TYPE,
            429 => TOO_MANY_REQUESTS,
            500 => INTERNAL,
            503 => UNAVAILABLE,
            _ => 0,
        }
    }

    /// Every request, before its handler: a declared body over `--max-body-bytes` (413, even
    /// on a GET), an unexpected failure (500).
    pub const ANY: u32 = PAYLOAD_TOO_LARGE | INTERNAL;
    /// Requests under the rate limit (all but `/health` and `/metrics`).
    pub const LIMITED: u32 = ANY | TOO_MANY_REQUESTS;
    /// Requests that need an API key or JWT: missing or wrong (401); keys stored in the
    /// database are looked up there (503).
    pub const AUTHED: u32 = LIMITED | UNAUTHORIZED | UNAVAILABLE;
    /// Path or query parameters that may not parse or break their schema.
    pub const PARAMS: u32 = BAD_REQUEST;
    /// A JSON body: malformed or breaking its schema (400), too slow (408), too large (413),
    /// not `application/json` (415).
    pub const JSON_BODY: u32 =
        BAD_REQUEST | REQUEST_TIMEOUT | PAYLOAD_TOO_LARGE | UNSUPPORTED_MEDIA_TYPE;
    /// Requests that read or write the database.
    pub const STORE: u32 = UNAVAILABLE | INTERNAL;
    /// Changes to a peer's entry: its `X-Peer-Token` missing or expired (401) or another
    /// peer's (403).
    pub const PEER_TOKEN: u32 = UNAUTHORIZED | FORBIDDEN;
    /// Management: 403 for callers without the admin role.
    pub const ADMIN: u32 = FORBIDDEN;
}

/// An [`ApiError`] from an operation that documents only the statuses in `S` (bits of
/// [`status`]). Its spec is [`ApiError`]'s, filtered to `S`; in debug builds an error outside
/// `S` panics, so tests catch an operation answering a status its spec does not list.
#[derive(Debug)]
pub struct Refusals<const S: u32>(pub ApiError);

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthorized(_) => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::RequestTimeout(_) => 408,
            Self::Conflict(_) => 409,
            Self::PayloadTooLarge(_) => 413,
            Self::UnsupportedMediaType(_) => 415,
            Self::TooManyRequests(..) => 429,
            Self::Internal(_) => 500,
            Self::Unavailable(_) => 503,
        }
    }
}

impl<const S: u32, E: Into<ApiError>> From<E> for Refusals<S> {
    fn from(err: E) -> Self {
        let err = err.into();
        debug_assert!(
            status::bit(err.status()) & S != 0,
            "an operation answered {} but does not document it: {err:?}",
            err.status()
        );
        Self(err)
    }
}

impl<const S: u32> From<Refusals<S>> for poem::Error {
    fn from(err: Refusals<S>) -> Self {
        err.0.into()
    }
}

impl<const S: u32> IntoResponse for Refusals<S> {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl<const S: u32> ApiResponse for Refusals<S> {
    fn meta() -> MetaResponses {
        let mut meta = ApiError::meta();
        meta.responses
            .retain(|r| r.status.is_some_and(|s| status::bit(s) & S != 0));
        meta
    }

    fn register(registry: &mut Registry) {
        ApiError::register(registry);
    }
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

    /// Too many bytes of request bodies held at once (`--max-body-bytes-in-flight`).
    pub fn bodies_busy() -> Self {
        Self::TooManyRequests(
            body(
                "rate_limited",
                "the tracker is reading too many large request bodies; retry after 1 s",
            ),
            1,
        )
    }

    pub fn internal() -> Self {
        Self::Internal(body("internal", "internal error; see the tracker's log"))
    }

    pub fn unavailable() -> Self {
        Self::Unavailable(body("unavailable", "the database is unavailable"))
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
        let text = err.to_string();
        explain_constraint(&text).unwrap_or(text)
    };
    poem::web::Json(ErrorBody {
        error: code.to_owned(),
        message,
    })
    .with_status(status)
    .into_response()
}

/// poem-openapi reports a value that breaks its schema as e.g. "parse request payload error:
/// failed to parse \"CreateUserRequest\": field `password` verification failed. minLength(8)";
/// this says it in words ("`password` must have at least 8 characters"). `None` for other
/// messages.
fn explain_constraint(message: &str) -> Option<String> {
    let (head, rule) = message.rsplit_once("verification failed. ")?;
    let field = head.rsplit('`').nth(1)?;
    let (kind, arg) = rule.split_once('(')?;
    let arg = arg.strip_suffix(')')?;
    let bound = arg.split(',').next().unwrap_or(arg);
    let need = match kind {
        "maxLength" => format!("must have at most {arg} characters"),
        "minLength" if arg == "1" => "must not be empty".to_owned(),
        "minLength" => format!("must have at least {arg} characters"),
        "maxItems" => format!("must have at most {arg} entries"),
        "minItems" => format!("must have at least {arg} entries"),
        "maximum" => format!("must be at most {bound}"),
        "minimum" => format!("must be at least {bound}"),
        "pattern" => format!("must match the pattern {arg}"),
        _ => return None,
    };
    Some(format!("`{field}` {need}"))
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

impl From<GrantError> for ApiError {
    fn from(e: GrantError) -> Self {
        match e {
            GrantError::OtherId { .. } => Self::Forbidden(body("forbidden", e.to_string())),
            e => Self::Unauthorized(body("read_grant", e.to_string())),
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

#[cfg(test)]
mod tests {
    use super::explain_constraint;

    #[test]
    fn schema_violations_are_said_in_words() {
        let body = "parse request payload error: failed to parse \"CreateUserRequest\": field \
                    `password` verification failed. minLength(8)";
        assert_eq!(
            explain_constraint(body).as_deref(),
            Some("`password` must have at least 8 characters")
        );
        let param = "failed to parse parameter `search`: verification failed. maxLength(255)";
        assert_eq!(
            explain_constraint(param).as_deref(),
            Some("`search` must have at most 255 characters")
        );
        let range = "field `chunk_size` verification failed. minimum(16384, exclusive: false)";
        assert_eq!(
            explain_constraint(range).as_deref(),
            Some("`chunk_size` must be at least 16384")
        );
        let pattern = "field `role` verification failed. pattern(\"^(admin|viewer)$\")";
        assert_eq!(
            explain_constraint(pattern).as_deref(),
            Some("`role` must match the pattern \"^(admin|viewer)$\"")
        );
        assert_eq!(
            explain_constraint("failed to parse path `hash`: bad hex"),
            None
        );
    }
}
