//! Argon2id password hashes in PHC string form.

use std::cell::RefCell;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

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

/// The most memory (KiB) a stored hash may ask a check for: 256 MiB. The tracker's own hashes
/// take 19 MiB; one edited into the database asking for more never matches, rather than have
/// each checking thread allocate (and keep) what it says.
const MAX_M_COST: u32 = 256 * 1024;

thread_local! {
    /// The memory of this thread's password checks, kept between them. A check runs on one of
    /// the login guard's few threads ([`super::login_guard`]); allocating its 19 MiB afresh
    /// each time left the allocator holding some 200 MiB under a login flood (glibc serves
    /// blocks that size from its arenas once one was freed, and keeps them), against 2 × 19 MiB
    /// kept here.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Checks a password against a stored hash; a malformed hash never matches. The hash's own
/// algorithm, version and parameters are used, in this thread's kept memory.
pub fn verify(password: &str, stored: &str) -> bool {
    MEMORY.with_borrow_mut(|memory| verify_in(password, stored, memory))
}

fn verify_in(password: &str, stored: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(expected), Some(salt)) = (parsed.hash, parsed.salt) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if params.m_cost() > MAX_M_COST {
        tracing::warn!(
            m_cost = params.m_cost(),
            "a stored password hash asks for more memory than a check may take"
        );
        return false;
    }
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        // Every block is written before it is read, so kept memory needs no clearing.
        memory.resize(blocks, Block::default());
    }
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = &mut out[..expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory[..blocks])
        .is_ok_and(|()| Output::new(out).is_ok_and(|computed| computed == expected))
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

    /// The kept memory holds the last check's blocks; a check in it answers as one in fresh
    /// memory, whatever was checked before and whatever the hash's parameters.
    #[test]
    fn checks_in_kept_memory_answer_as_in_fresh_memory() {
        use argon2::password_hash::PasswordVerifier;
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(64, 3, 1, None).unwrap(),
        );
        let salt = SaltString::generate(&mut OsRng);
        let small = small
            .hash_password(b"small one", &salt)
            .unwrap()
            .to_string();
        let stored = [
            hash("correct horse").unwrap(),
            small,
            dummy_hash().to_owned(),
        ];
        let mut memory = vec![Block::default(); 8];
        for round in 0..2 {
            for (i, h) in stored.iter().enumerate() {
                for password in ["correct horse", "small one", "wrong horse", ""] {
                    let parsed = PasswordHash::new(h).unwrap();
                    let fresh = Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok();
                    assert_eq!(
                        verify_in(password, h, &mut memory),
                        fresh,
                        "round {round}, hash {i}, {password:?}"
                    );
                }
            }
        }
        assert!(verify_in("correct horse", &stored[0], &mut memory));
        assert!(verify_in("small one", &stored[1], &mut memory));
        // The default hash's 19 MiB, kept; never more.
        assert_eq!(memory.len(), 19 * 1024);
        // A hash asking for 1 GiB is refused before anything is allocated.
        let greedy = dummy_hash().replace("m=19456", "m=1048576");
        assert!(PasswordHash::new(&greedy).is_ok());
        assert!(!verify_in("anything", &greedy, &mut memory));
        assert_eq!(memory.len(), 19 * 1024);
        assert!(!verify_in(
            "x",
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ",
            &mut memory
        ));
    }
}
