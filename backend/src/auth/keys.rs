//! API keys: random 256-bit secrets; only their SHA-256 is stored. (A slow hash such as argon2
//! adds nothing for keys with this much entropy and would cost milliseconds per request.)

use sha2::{Digest, Sha256};

/// Prefix of generated keys, so they are recognisable in configs and secret scanners.
pub const KEY_PREFIX: &str = "p2pk_";

/// SHA-256 of a key.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Whether `key` has the shape of a generated key (`p2pk_` + 64 lowercase hex characters),
/// the only keys the database holds: anything else is refused without a lookup.
pub fn is_generated_shape(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|secret| {
        secret.len() == 64
            && secret
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A new key and its id: `p2pk_` + 64 hex characters, and 12 hex characters of id.
pub fn generate() -> Result<(String, String), getrandom::Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    let mut id = [0u8; 6];
    getrandom::fill(&mut id)?;
    Ok((
        format!("{KEY_PREFIX}{}", hex::encode(secret)),
        hex::encode(id),
    ))
}

/// 32 random bytes as hex (a generated JWT secret).
pub fn random_secret() -> Result<String, getrandom::Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    Ok(hex::encode(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_distinct_and_prefixed() {
        let (a, id_a) = generate().unwrap();
        let (b, id_b) = generate().unwrap();
        assert_ne!(a, b);
        assert_ne!(id_a, id_b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        assert_eq!(digest(&a), digest(&a));
        assert_ne!(digest(&a), digest(&b));
        assert!(is_generated_shape(&a) && is_generated_shape(&b));
    }

    #[test]
    fn only_keys_shaped_as_generated_ones_may_be_in_the_database() {
        let (key, _) = generate().unwrap();
        let secret = &key[KEY_PREFIX.len()..];
        assert!(is_generated_shape(&key));
        for bad in [
            String::new(),
            "KEY".to_owned(),
            secret.to_owned(),
            format!("{KEY_PREFIX}{}", &secret[1..]),
            format!("{key}0"),
            key.to_uppercase(),
            format!("{KEY_PREFIX}{}g", &secret[1..]),
            format!("{KEY_PREFIX}{}é", &secret[2..]),
            format!("p2pK_{secret}"),
        ] {
            assert!(!is_generated_shape(&bad), "{bad:?}");
        }
    }
}
