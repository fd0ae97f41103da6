//! Argon2id password hashes in PHC string form.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("could not hash the password")]
pub struct HashError(#[source] argon2::password_hash::Error);

/// Shortest password accepted for dashboard users.
pub const MIN_PASSWORD_LEN: usize = 8;

/// Hashes a password with argon2id (default parameters: 19 MiB, 2 passes). CPU-heavy: call it
/// off the async reactor.
pub fn hash(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(HashError)
}

/// Checks a password against a stored hash; a malformed hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A valid hash of a password nobody knows, verified when a user does not exist so that both
/// cases take the same time.
pub fn dummy_hash() -> &'static str {
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Bh6rJZ2cC+jyrvHC3LVYWYJ1Q8F1YzBzfDrbWVfvCaE"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong horse", &h));
        assert!(!verify("x", "not a hash"));
        assert!(!verify("anything", dummy_hash()));
        assert!(PasswordHash::new(dummy_hash()).is_ok());
    }
}
