//! Who may call the API: API keys (sent as `X-API-Key` or `Authorization: Bearer`), JWTs issued
//! by `/api/auth/login`, and dashboard users with argon2 password hashes; which peer a request
//! speaks for ([`peer_proof`]: challenges, registration proofs, peer tokens); and read grants
//! ([`grants`]), which let a share link's holder read one id without an API key.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_proto::api::{LoginRequest, LoginResponse, role};
use parking_lot::Mutex;

use crate::store::{Store, StoreError};

pub mod accounts;
pub mod grants;
pub mod jwt;
pub mod keys;
pub mod login_guard;
pub mod password;
pub mod peer_proof;

pub use grants::ReadGrants;
pub use jwt::JwtKeys;
pub use login_guard::LoginGuard;
pub use peer_proof::{PeerAuth, PeerAuthError};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// A user name, or `api-key:<id>`.
    pub subject: String,
    pub role: String,
}

impl Principal {
    /// May manage keys, users, files and peers for everyone.
    pub fn is_admin(&self) -> bool {
        self.role == role::ADMIN
    }
}

/// Why a request is not authenticated. The text is safe to show to the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("missing credentials: send an X-API-Key header or Authorization: Bearer <token>")]
    Missing,
    #[error("invalid API key")]
    InvalidKey,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("token expired; log in again")]
    Expired,
    #[error("wrong username or password")]
    BadCredentials,
    #[error("send either api_key, or username and password")]
    BadLoginRequest,
    /// Too many failed logins to this account, or too many logins waiting.
    #[error("too many login attempts; retry after {0} s")]
    Throttled(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error")]
    Internal,
}

/// How long a database API key lookup is trusted before it is checked again (revocations
/// take effect within this time).
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
const KEY_CACHE_MAX: usize = 10_000;

/// Checks credentials and issues tokens.
#[derive(Debug)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    /// SHA-256 of the keys given in `API_KEYS`.
    env_keys: HashSet<[u8; 32]>,
    jwt: JwtKeys,
    key_cache: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
    logins: LoginGuard,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, env_keys: &[String], jwt: JwtKeys) -> Self {
        let env_keys = env_keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(keys::digest)
            .collect();
        Self {
            store,
            env_keys,
            jwt,
            key_cache: Mutex::new(HashMap::new()),
            logins: LoginGuard::new(2, 10),
        }
    }

    /// Bounds password checks: `concurrency` at once, `failures_per_minute` per account.
    pub fn with_login_limits(mut self, concurrency: usize, failures_per_minute: u32) -> Self {
        self.logins = LoginGuard::new(concurrency, failures_per_minute);
        self
    }

    /// Authenticates a bearer credential: a JWT (three dot-separated parts) or an API key.
    pub async fn authenticate_bearer(&self, token: &str) -> Result<Principal, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.split('.').count() == 3 {
            return self.jwt.verify(token);
        }
        self.authenticate_key(token).await
    }

    /// Authenticates an API key from `API_KEYS` or the database.
    pub async fn authenticate_key(&self, key: &str) -> Result<Principal, AuthError> {
        let key = key.trim();
        if key.is_empty() {
            return Err(AuthError::Missing);
        }
        let digest = keys::digest(key);
        if self.env_keys.contains(&digest) {
            return Ok(Principal {
                subject: format!("api-key:env-{}", &hex::encode(digest)[..8]),
                role: role::PEER.to_owned(),
            });
        }
        // Only generated keys are in the database: a flood of malformed ones costs no lookup.
        if !keys::is_generated_shape(key) {
            return Err(AuthError::InvalidKey);
        }
        if let Some(p) = self.cached(&digest) {
            return Ok(p);
        }
        match self.store.find_api_key(&hex::encode(digest)).await? {
            Some(record) => {
                let principal = Principal {
                    subject: format!("api-key:{}", record.id),
                    role: role::PEER.to_owned(),
                };
                self.remember(digest, principal.clone());
                Ok(principal)
            }
            None => Err(AuthError::InvalidKey),
        }
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Principal> {
        let cache = self.key_cache.lock();
        let (principal, at) = cache.get(digest)?;
        (at.elapsed() < KEY_CACHE_TTL).then(|| principal.clone())
    }

    fn remember(&self, digest: [u8; 32], principal: Principal) {
        let mut cache = self.key_cache.lock();
        if cache.len() >= KEY_CACHE_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < KEY_CACHE_TTL);
        }
        if cache.len() < KEY_CACHE_MAX {
            cache.insert(digest, (principal, Instant::now()));
        }
    }

    /// Exchanges an API key, or a username and password, for a JWT.
    pub async fn login(&self, req: &LoginRequest) -> Result<LoginResponse, AuthError> {
        let principal = match (&req.api_key, &req.username, &req.password) {
            (Some(key), None, None) => self.authenticate_key(key).await?,
            (None, Some(user), Some(pass)) => self.check_password(user, pass).await?,
            _ => return Err(AuthError::BadLoginRequest),
        };
        self.jwt.issue(&principal)
    }

    async fn check_password(&self, username: &str, password: &str) -> Result<Principal, AuthError> {
        let _turn = self
            .logins
            .turn(username)
            .await
            .map_err(|t| AuthError::Throttled(t.retry_after_secs))?;
        let user = self.store.get_user(username).await?;
        // Verify against a dummy hash when the user does not exist, so the response time does
        // not tell which user names exist.
        let (hash, role) = match &user {
            Some(u) => (u.password_hash.clone(), u.role.clone()),
            None => (password::dummy_hash().to_owned(), String::new()),
        };
        let password = password.to_owned();
        let ok = self
            .logins
            .run(move || password::verify(&password, &hash))
            .await
            .ok_or(AuthError::Internal)?;
        match (ok, user) {
            (true, Some(u)) => Ok(Principal {
                subject: u.username,
                role,
            }),
            _ => {
                self.logins.failed(username);
                Err(AuthError::BadCredentials)
            }
        }
    }
}

/// Checks an `X-API-Key` value or an `Authorization` header.
pub async fn authenticate(
    auth: &Authenticator,
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

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn malformed_api_keys_are_refused_without_a_database_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tracker.db");
        let store = SqliteStore::open(&path, 2).await.unwrap();
        let jwt = JwtKeys::new(b"0123456789abcdef0123456789abcdef", 60);
        let auth = Authenticator::new(Arc::new(store), &["lab key".to_owned()], jwt);
        // From now on every lookup fails: the keys' table is renamed over another connection.
        let mut other = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        sqlx::query("ALTER TABLE api_keys RENAME TO api_keys_gone")
            .execute(&mut other)
            .await
            .unwrap();
        let (unknown, _) = keys::generate().unwrap();
        assert!(
            matches!(
                auth.authenticate_key(&unknown).await,
                Err(AuthError::Store(_))
            ),
            "a key shaped as a generated one is looked up"
        );
        let short = &unknown[..unknown.len() - 1];
        for bad in ["nope", keys::KEY_PREFIX, short, "p2pk_../../etc/passwd"] {
            assert!(
                matches!(auth.authenticate_key(bad).await, Err(AuthError::InvalidKey)),
                "{bad:?} refused without a lookup"
            );
        }
        // Keys given on the command line keep any shape.
        assert!(auth.authenticate_key("lab key").await.is_ok());
    }
}
