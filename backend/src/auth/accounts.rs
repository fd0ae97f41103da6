//! Managing who may call the API: API keys and dashboard users, for the admin routes and the
//! `p2p-tracker key|user` commands. Only admins reach these through the API.

use p2p_proto::api::{ApiKeyInfo, CreatedApiKey, UserInfo, role};

use super::{AuthError, Authenticator, keys, password};
use crate::store::{ApiKeyRecord, UserRecord};

/// Longest user and API key names.
pub const MAX_NAME_CHARS: usize = 64;

/// Why an account change was refused. The text is shown to the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    #[error("{what} must have 1-{MAX_NAME_CHARS} characters and no control characters")]
    BadName { what: &'static str },
    #[error(
        "the password must have at least {} characters",
        password::MIN_PASSWORD_LEN
    )]
    ShortPassword,
    #[error("the role must be '{}' or '{}'", role::ADMIN, role::VIEWER)]
    BadRole,
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("no user {0}")]
    NoUser(String),
    #[error("no active API key {0}")]
    NoKey(String),
    #[error("you cannot delete your own account")]
    OwnAccount,
    #[error("cannot generate a key")]
    Random(#[source] getrandom::Error),
    #[error("cannot hash the password")]
    Hash(#[source] password::HashError),
    #[error("the password hashing task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl From<crate::store::StoreError> for AccountError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Auth(AuthError::Store(e))
    }
}

/// Checks a user or key name: 1-64 characters, none of them control characters.
pub fn check_name(what: &'static str, name: &str) -> Result<(), AccountError> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(AccountError::BadName { what });
    }
    Ok(())
}

/// Checks a password's length.
pub fn check_password(pass: &str) -> Result<(), AccountError> {
    if pass.chars().count() < password::MIN_PASSWORD_LEN {
        return Err(AccountError::ShortPassword);
    }
    Ok(())
}

/// Hashes a password off the reactor (argon2 takes tens of milliseconds).
pub async fn hash_password(pass: String) -> Result<String, AccountError> {
    tokio::task::spawn_blocking(move || password::hash(&pass))
        .await
        .map_err(AccountError::Task)?
        .map_err(AccountError::Hash)
}

fn key_info(k: ApiKeyRecord) -> ApiKeyInfo {
    ApiKeyInfo {
        id: k.id,
        name: k.name,
        created_at_ms: k.created_at_ms,
        revoked_at_ms: k.revoked_at_ms,
    }
}

fn user_info(u: UserRecord) -> UserInfo {
    UserInfo {
        username: u.username,
        role: u.role,
        created_at_ms: u.created_at_ms,
    }
}

impl Authenticator {
    /// Creates an API key named `name`; the key itself is in the answer and nowhere else.
    pub async fn create_key(&self, name: &str, now_ms: u64) -> Result<CreatedApiKey, AccountError> {
        let name = name.trim();
        check_name("a key name", name)?;
        let (key, id) = keys::generate().map_err(AccountError::Random)?;
        let record = ApiKeyRecord {
            id: id.clone(),
            name: name.to_owned(),
            created_at_ms: now_ms,
            revoked_at_ms: None,
        };
        self.store
            .create_api_key(&record, &hex::encode(keys::digest(&key)))
            .await?;
        Ok(CreatedApiKey {
            key,
            id,
            name: record.name,
            created_at_ms: now_ms,
        })
    }

    /// Every stored key, revoked ones included.
    pub async fn list_keys(&self) -> Result<Vec<ApiKeyInfo>, AccountError> {
        let keys = self.store.list_api_keys().await?;
        Ok(keys.into_iter().map(key_info).collect())
    }

    /// Revokes key `id`: refused from now on by this tracker (other trackers on the database
    /// stop accepting it once their cache entry expires, within 30 s).
    pub async fn revoke_key(&self, id: &str, now_ms: u64) -> Result<(), AccountError> {
        if !self.store.revoke_api_key(id, now_ms).await? {
            return Err(AccountError::NoKey(id.to_owned()));
        }
        let subject = format!("api-key:{id}");
        self.key_cache
            .lock()
            .retain(|_, (p, _)| p.subject != subject);
        Ok(())
    }

    /// Creates a dashboard user; an existing name is refused (see [`AccountError::UserExists`]).
    pub async fn create_user(
        &self,
        username: &str,
        pass: &str,
        role: &str,
        now_ms: u64,
    ) -> Result<UserInfo, AccountError> {
        check_name("a user name", username)?;
        check_password(pass)?;
        if role != role::ADMIN && role != role::VIEWER {
            return Err(AccountError::BadRole);
        }
        let record = UserRecord {
            username: username.to_owned(),
            password_hash: hash_password(pass.to_owned()).await?,
            role: role.to_owned(),
            created_at_ms: now_ms,
        };
        if !self.store.create_user_if_absent(&record).await? {
            return Err(AccountError::UserExists(username.to_owned()));
        }
        Ok(user_info(record))
    }

    pub async fn list_users(&self) -> Result<Vec<UserInfo>, AccountError> {
        let users = self.store.list_users().await?;
        Ok(users.into_iter().map(user_info).collect())
    }

    /// Deletes user `username`, unless it is `caller` (an admin cannot lock themselves out).
    /// Tokens already issued to the user stay valid until they expire.
    pub async fn delete_user(&self, username: &str, caller: &str) -> Result<(), AccountError> {
        if username == caller {
            return Err(AccountError::OwnAccount);
        }
        if !self.store.delete_user(username).await? {
            return Err(AccountError::NoUser(username.to_owned()));
        }
        Ok(())
    }
}
