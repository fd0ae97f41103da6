//! Identifiers: 32-byte values shown and parsed as 64 lowercase hex characters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a hex identifier could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdParseError {
    #[error("expected 64 hex characters, got {0}")]
    Length(usize),
    #[error("not a hex string")]
    NotHex,
}

macro_rules! hex_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// Length of the hex form.
            pub const HEX_LEN: usize = 64;

            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The lowercase hex form (64 characters).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut buf = [0u8; 64];
                // Encoding 32 bytes into a 64-byte buffer cannot fail.
                hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
                f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            /// Accepts upper- or lowercase hex; always prints lowercase.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if s.len() != 64 {
                    return Err(IdParseError::Length(s.len()));
                }
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| IdParseError::NotHex)?;
                Ok(Self(out))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    /// A file's id: the SHA-256 of its whole content, so `sha256sum` prints the same hex.
    FileId
);
hex_id!(
    /// A peer's id: the peer's static X25519 public key (the key of its Noise handshake), so
    /// that a peer can prove it owns its id.
    PeerId
);
hex_id!(
    /// A SHA-256 digest: a chunk hash or a Merkle root.
    Sha256Hash
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_sha256sum_output() {
        // sha256sum of the empty input.
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let id: FileId = hex.parse().unwrap();
        assert_eq!(id.to_string(), hex);
        assert_eq!(format!("{id:?}"), format!("FileId({hex})"));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!("abc".parse::<FileId>(), Err(IdParseError::Length(3)));
        let not_hex = "g".repeat(64);
        assert_eq!(not_hex.parse::<FileId>(), Err(IdParseError::NotHex));
        // 64 bytes but a multibyte character: must not panic.
        let s = format!("{}é", "a".repeat(62));
        assert!(s.parse::<FileId>().is_err());
    }

    #[test]
    fn uppercase_is_accepted_and_normalised() {
        let upper = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        let id: FileId = upper.parse().unwrap();
        assert_eq!(id.to_string(), upper.to_lowercase());
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(bytes in any::<[u8; 32]>()) {
            let id = PeerId(bytes);
            prop_assert_eq!(id.to_string().parse::<PeerId>().unwrap(), id);
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<PeerId>(&json).unwrap(), id);
        }

        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = s.parse::<FileId>();
        }
    }
}
