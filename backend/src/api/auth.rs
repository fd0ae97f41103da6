//! `POST /api/auth/login`.

use std::sync::Arc;

use p2p_proto::api::{LoginRequest, LoginResponse};
use poem_openapi::OpenApi;
use poem_openapi::payload::Json;

use super::ApiTags;
use crate::error::Refusals;
use crate::error::status::{INTERNAL, JSON_BODY, LIMITED, STORE, TOO_MANY_REQUESTS, UNAUTHORIZED};
use crate::state::AppState;

pub struct AuthApi(pub Arc<AppState>);

#[OpenApi(tag = "ApiTags::Auth")]
impl AuthApi {
    /// Exchanges an API key, or a dashboard username and password, for a JWT. 400 unless the
    /// body has either `api_key` or both `username` and `password`; 401 for a wrong key or
    /// password; 429 after too many failed logins to one account, or while too many logins
    /// are being checked.
    #[oai(path = "/api/auth/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        body: Json<LoginRequest>,
    ) -> Result<
        Json<LoginResponse>,
        Refusals<{ LIMITED | JSON_BODY | UNAUTHORIZED | TOO_MANY_REQUESTS | INTERNAL | STORE }>,
    > {
        Ok(Json(self.0.auth.login(&body.0).await?))
    }
}
