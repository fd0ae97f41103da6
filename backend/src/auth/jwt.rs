//! JWTs (HS256) issued at login and accepted wherever an API key is.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p2p_proto::api::LoginResponse;
use serde::{Deserialize, Serialize};

use super::{AuthError, Principal};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    iat: u64,
    exp: u64,
    iss: String,
}

const ISSUER: &str = "p2p-tracker";

/// Signing and verifying keys with the token lifetime.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_secs: u64,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwtKeys {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl_secs,
        }
    }

    pub fn issue(&self, principal: &Principal) -> Result<LoginResponse, AuthError> {
        let iat = now_secs();
        let exp = iat + self.ttl_secs;
        let claims = Claims {
            sub: principal.subject.clone(),
            role: principal.role.clone(),
            iat,
            exp,
            iss: ISSUER.to_owned(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| AuthError::Internal)?;
        Ok(LoginResponse {
            token,
            token_type: "Bearer".to_owned(),
            expires_in: self.ttl_secs,
            expires_at_ms: exp * 1000,
            subject: principal.subject.clone(),
            role: principal.role.clone(),
        })
    }

    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 5;
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation) {
            Ok(data) => Ok(Principal {
                subject: data.claims.sub,
                role: data.claims.role,
            }),
            Err(e) => Err(match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::InvalidToken("bad signature".into()),
                _ => AuthError::InvalidToken("malformed token".into()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal {
            subject: "alice".into(),
            role: "admin".into(),
        }
    }

    #[test]
    fn issue_verify_and_reject() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef", 60);
        let issued = keys.issue(&principal()).unwrap();
        assert_eq!(keys.verify(&issued.token).unwrap(), principal());

        let other = JwtKeys::new(b"another secret another secret!!", 60);
        assert!(matches!(
            other.verify(&issued.token),
            Err(AuthError::InvalidToken(_))
        ));
        assert!(matches!(
            keys.verify("a.b.c"),
            Err(AuthError::InvalidToken(_))
        ));

        let expired = JwtKeys::new(b"0123456789abcdef0123456789abcdef", 0);
        let claims = Claims {
            sub: "bob".into(),
            role: "admin".into(),
            iat: 1,
            exp: 2,
            iss: ISSUER.into(),
        };
        let old = jsonwebtoken::encode(&Header::default(), &claims, &expired.encoding).unwrap();
        assert!(matches!(keys.verify(&old), Err(AuthError::Expired)));
    }
}
