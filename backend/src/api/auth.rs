//! `POST /api/auth/login`.

use std::sync::Arc;

use p2p_proto::api::{LoginRequest, LoginResponse};
use poem_openapi::OpenApi;
use poem_openapi::payload::Json;

use super::ApiTags;
use crate::error::ApiError;
use crate::state::AppState;

pub struct AuthApi(pub Arc<AppState>);

#[OpenApi(tag = "ApiTags::Auth")]
impl AuthApi {
    /// Exchanges an API key, or a dashboard username and password, for a JWT.
    #[oai(path = "/api/auth/login", method = "post", operation_id = "login")]
    async fn login(&self, body: Json<LoginRequest>) -> Result<Json<LoginResponse>, ApiError> {
        Ok(Json(self.0.auth.login(&body.0).await?))
    }
}
