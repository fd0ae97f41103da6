//! `/api/keys` and `/api/users`: admins create and revoke API keys and dashboard users (the
//! dashboard's management pages). Every route answers 403 to callers without the admin role.

use std::sync::Arc;

use p2p_proto::api::{
    ApiKeyInfo, ApiKeyList, CreateApiKeyRequest, CreateUserRequest, CreatedApiKey, UserInfo,
    UserList,
};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::param::{KeyId, Path, Username};
use super::{ApiTags, Auth};
use crate::error::Refusals;
use crate::error::status::{
    ADMIN, AUTHED, BAD_REQUEST, CONFLICT, INTERNAL, JSON_BODY, NOT_FOUND, PARAMS, STORE,
};
use crate::state::AppState;

pub struct AdminApi(pub Arc<AppState>);

#[derive(ApiResponse)]
pub enum KeyCreated {
    /// The key, shown this once: the tracker stores only its SHA-256.
    #[oai(status = 201)]
    Created(Json<CreatedApiKey>),
}

#[derive(ApiResponse)]
pub enum UserCreated {
    #[oai(status = 201)]
    Created(Json<UserInfo>),
}

#[derive(ApiResponse)]
pub enum Done {
    #[oai(status = 204)]
    NoContent,
}

#[OpenApi(tag = "ApiTags::Admin")]
impl AdminApi {
    /// API keys stored in the database, newest first, revoked ones included (never the keys
    /// themselves). 403 unless the caller is an admin.
    #[oai(path = "/api/keys", method = "get", operation_id = "list_api_keys")]
    async fn list_keys(
        &self,
        auth: Auth,
    ) -> Result<Json<ApiKeyList>, Refusals<{ AUTHED | ADMIN | STORE }>> {
        auth.admin()?;
        let mut keys: Vec<ApiKeyInfo> = self.0.auth.list_keys().await?;
        keys.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(a.id.cmp(&b.id)));
        Ok(Json(ApiKeyList { keys }))
    }

    /// Creates an API key for a peer. The answer holds the key, shown this once. 400 for a
    /// bad name, 403 unless the caller is an admin.
    #[oai(path = "/api/keys", method = "post", operation_id = "create_api_key")]
    async fn create_key(
        &self,
        auth: Auth,
        body: Json<CreateApiKeyRequest>,
    ) -> Result<KeyCreated, Refusals<{ AUTHED | JSON_BODY | ADMIN | INTERNAL | STORE }>> {
        let admin = auth.admin()?;
        let created = self
            .0
            .auth
            .create_key(&body.0.name, self.0.swarm.now_ms())
            .await?;
        tracing::info!(by = %admin.subject, id = %created.id, name = %created.name, "API key created");
        Ok(KeyCreated::Created(Json(created)))
    }

    /// Revokes an API key: requests made with it are refused from now on (by other trackers
    /// on the same database within 30 s); JWTs obtained with it stay valid until they expire.
    /// 404 for an unknown or already revoked key, 403 unless the caller is an admin.
    #[oai(
        path = "/api/keys/:key_id",
        method = "delete",
        operation_id = "revoke_api_key"
    )]
    async fn revoke_key(
        &self,
        auth: Auth,
        /// The key's id: 12 hex characters (`id` in the key list).
        #[oai(validator(pattern = "^[0-9a-f]{12}$"))]
        key_id: Path<String, KeyId>,
    ) -> Result<Done, Refusals<{ AUTHED | PARAMS | ADMIN | NOT_FOUND | STORE }>> {
        let admin = auth.admin()?;
        self.0
            .auth
            .revoke_key(&key_id.0, self.0.swarm.now_ms())
            .await?;
        tracing::info!(by = %admin.subject, id = %key_id.0, "API key revoked");
        Ok(Done::NoContent)
    }

    /// Dashboard users, by name. 403 unless the caller is an admin.
    #[oai(path = "/api/users", method = "get", operation_id = "list_users")]
    async fn list_users(
        &self,
        auth: Auth,
    ) -> Result<Json<UserList>, Refusals<{ AUTHED | ADMIN | STORE }>> {
        auth.admin()?;
        Ok(Json(UserList {
            users: self.0.auth.list_users().await?,
        }))
    }

    /// Creates a dashboard user with the role `admin` (manages) or `viewer` (sees, changes
    /// nothing). 400 for a bad name, short password or unknown role, 409 when the name is
    /// taken, 403 unless the caller is an admin.
    #[oai(path = "/api/users", method = "post", operation_id = "create_user")]
    async fn create_user(
        &self,
        auth: Auth,
        body: Json<CreateUserRequest>,
    ) -> Result<UserCreated, Refusals<{ AUTHED | JSON_BODY | ADMIN | CONFLICT | INTERNAL | STORE }>>
    {
        let admin = auth.admin()?;
        let req = body.0;
        let user = self
            .0
            .auth
            .create_user(
                &req.username,
                &req.password,
                &req.role,
                self.0.swarm.now_ms(),
            )
            .await?;
        tracing::info!(by = %admin.subject, user = %user.username, role = %user.role, "user created");
        Ok(UserCreated::Created(Json(user)))
    }

    /// Deletes a dashboard user (tokens already issued to it stay valid until they expire).
    /// 400 for the caller's own account, 404 for an unknown user, 403 unless the caller is an
    /// admin.
    #[oai(
        path = "/api/users/:username",
        method = "delete",
        operation_id = "delete_user"
    )]
    async fn delete_user(
        &self,
        auth: Auth,
        /// 1-64 characters.
        #[oai(validator(min_length = 1, max_length = 64))]
        username: Path<String, Username>,
    ) -> Result<Done, Refusals<{ AUTHED | PARAMS | BAD_REQUEST | ADMIN | NOT_FOUND | STORE }>> {
        let admin = auth.admin()?;
        self.0.auth.delete_user(&username.0, &admin.subject).await?;
        tracing::info!(by = %admin.subject, user = %username.0, "user deleted");
        Ok(Done::NoContent)
    }
}
