//! Calls to the tracker's REST API from the browser.

use gloo_net::http::{Request, Response};
use p2p_proto::api::{
    ApiKeyList, CreateApiKeyRequest, CreateUserRequest, CreatedApiKey, ErrorBody, FileDetails,
    FileList, FilePeers, LoginRequest, LoginResponse, PeerList, ReadGrantInfo, Stats, UserInfo,
    UserList,
};
use serde::de::DeserializeOwned;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The session is no longer accepted: back to the login page.
    Unauthorized(String),
    /// Anything else, with a message to show.
    Other(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unauthorized(m) | Self::Other(m) => f.write_str(m),
        }
    }
}

async fn decode<T: DeserializeOwned>(resp: Response) -> Result<T, ApiError> {
    let resp = succeeded(resp).await?;
    resp.json::<T>()
        .await
        .map_err(|e| ApiError::Other(format!("unexpected answer from the tracker: {e}")))
}

/// The response when its status is a success; else the tracker's message as an error.
async fn succeeded(resp: Response) -> Result<Response, ApiError> {
    let status = resp.status();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let message = match resp.json::<ErrorBody>().await {
        Ok(body) => body.message,
        Err(_) => format!("the tracker answered {status}"),
    };
    if status == 401 {
        Err(ApiError::Unauthorized(message))
    } else {
        Err(ApiError::Other(message))
    }
}

fn network(e: gloo_net::Error) -> ApiError {
    ApiError::Other(format!("cannot reach the tracker: {e}"))
}

/// Logs in with a username and password.
pub async fn login(username: &str, password: &str) -> Result<LoginResponse, ApiError> {
    let body = LoginRequest {
        api_key: None,
        username: Some(username.to_owned()),
        password: Some(password.to_owned()),
    };
    let resp = Request::post("/api/auth/login")
        .json(&body)
        .map_err(network)?
        .send()
        .await
        .map_err(network)?;
    decode(resp).await
}

async fn get<T: DeserializeOwned>(token: &str, path: &str) -> Result<T, ApiError> {
    let resp = Request::get(path)
        .header("Authorization", &bearer(token))
        .send()
        .await
        .map_err(network)?;
    decode(resp).await
}

pub async fn stats(token: &str) -> Result<Stats, ApiError> {
    get(token, "/api/stats").await
}

pub async fn peers(token: &str) -> Result<PeerList, ApiError> {
    get(token, "/api/peers?limit=500").await
}

pub async fn files(token: &str) -> Result<FileList, ApiError> {
    get(token, "/api/files?limit=500").await
}

pub async fn file(token: &str, id: &str) -> Result<FileDetails, ApiError> {
    get(token, &format!("/api/files/{id}")).await
}

pub async fn file_peers(token: &str, id: &str) -> Result<FilePeers, ApiError> {
    get(token, &format!("/api/files/{id}/peers?limit=500")).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn post<B: serde::Serialize, T: DeserializeOwned>(
    token: &str,
    path: &str,
    body: &B,
) -> Result<T, ApiError> {
    let resp = Request::post(path)
        .header("Authorization", &bearer(token))
        .json(body)
        .map_err(network)?
        .send()
        .await
        .map_err(network)?;
    decode(resp).await
}

async fn delete(token: &str, path: &str) -> Result<(), ApiError> {
    let resp = Request::delete(path)
        .header("Authorization", &bearer(token))
        .send()
        .await
        .map_err(network)?;
    succeeded(resp).await.map(drop)
}

/// Path segment escaping (user names may hold any printable character).
fn segment(text: &str) -> String {
    String::from(js_sys::encode_uri_component(text))
}

pub async fn keys(token: &str) -> Result<ApiKeyList, ApiError> {
    get(token, "/api/keys").await
}

pub async fn create_key(token: &str, name: &str) -> Result<CreatedApiKey, ApiError> {
    let body = CreateApiKeyRequest {
        name: name.to_owned(),
    };
    post(token, "/api/keys", &body).await
}

pub async fn revoke_key(token: &str, id: &str) -> Result<(), ApiError> {
    delete(token, &format!("/api/keys/{}", segment(id))).await
}

pub async fn users(token: &str) -> Result<UserList, ApiError> {
    get(token, "/api/users").await
}

pub async fn create_user(token: &str, req: &CreateUserRequest) -> Result<UserInfo, ApiError> {
    post(token, "/api/users", req).await
}

pub async fn delete_user(token: &str, username: &str) -> Result<(), ApiError> {
    delete(token, &format!("/api/users/{}", segment(username))).await
}

/// A read grant for `id` with the tracker's default lifetime (a day), for a share link.
pub async fn read_grant(token: &str, id: &str) -> Result<ReadGrantInfo, ApiError> {
    let resp = Request::post(&format!("/api/files/{id}/grants"))
        .header("Authorization", &bearer(token))
        .send()
        .await
        .map_err(network)?;
    decode(resp).await
}

pub async fn remove_file(token: &str, id: &str) -> Result<(), ApiError> {
    delete(token, &format!("/api/files/{id}")).await
}

pub async fn remove_peer(token: &str, id: &str) -> Result<(), ApiError> {
    delete(token, &format!("/api/peers/{id}")).await
}
