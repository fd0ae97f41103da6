//! Admissions: a tracker's signed word that a peer may download a file (private swarms).
//!
//! A file is private unless its sharer made it public: its peers serve it only to a downloader
//! that presents an admission for it. The tracker signs one (Ed25519) whenever a peer that
//! proved its id (its peer token, see [`crate::peer_auth`]) asks for the file's peers. It names
//! the tracker's key, the file, the downloader and an expiry; the downloader sends it in an
//! `Admission` frame ([`crate::wire::Frame::Admission`]) and the uploader checks it against the
//! tracker keys it pinned at registration, the file asked for, the peer id the Noise handshake
//! proved and its clock. The layout is in `docs/protocol.md` §9. No IO here.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::ids::{FileId, PeerId};

/// Domain separation of the signed bytes.
pub const ADMISSION_CONTEXT: &[u8] = b"p2p-tracker/1 admission";
/// Bytes of an encoded admission: tracker key, file id, peer id, expiry, signature.
pub const ADMISSION_LEN: usize = 32 + 32 + 32 + 8 + 64;
/// Bytes the signature covers: the context, then the first 104 bytes of the encoding.
pub const SIGNED_LEN: usize = ADMISSION_CONTEXT.len() + ADMISSION_LEN - 64;
/// How long an uploader still accepts an admission past its expiry (clocks of the tracker and
/// the peers differ).
pub const CLOCK_SKEW_MS: u64 = 60_000;

/// Why an admission does not admit a peer. The text is sent to the refused downloader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    #[error("an admission is {ADMISSION_LEN} bytes, not {0}")]
    Length(usize),
    #[error("the admission is not hex")]
    Hex,
    #[error("the admission is signed by a tracker this peer is not registered with")]
    UnknownTracker,
    #[error("the admission's signature is not valid")]
    BadSignature,
    #[error("the admission is for file {admitted}, not {wanted}")]
    OtherFile { admitted: FileId, wanted: FileId },
    #[error("the admission is for peer {admitted}, not {wanted}")]
    OtherPeer { admitted: PeerId, wanted: PeerId },
    #[error("the admission expired; ask the tracker for the file's peers again")]
    Expired,
}

/// A tracker's signed statement: `peer_id` may download `file_id` until `expires_at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Admission {
    /// The signing tracker's Ed25519 public key.
    pub tracker_key: [u8; 32],
    pub file_id: FileId,
    /// The downloader admitted.
    pub peer_id: PeerId,
    /// Unix milliseconds, the tracker's clock.
    pub expires_at_ms: u64,
    pub signature: [u8; 64],
}

impl Admission {
    /// The encoded admission: `tracker_key ‖ file_id ‖ peer_id ‖ expires_at u64 BE ‖ signature`.
    pub fn to_bytes(&self) -> [u8; ADMISSION_LEN] {
        let mut out = [0u8; ADMISSION_LEN];
        out[..ADMISSION_LEN - 64].copy_from_slice(&unsigned(
            &self.tracker_key,
            &self.file_id,
            &self.peer_id,
            self.expires_at_ms,
        ));
        out[ADMISSION_LEN - 64..].copy_from_slice(&self.signature);
        out
    }

    /// Decodes [`Admission::to_bytes`]'s layout; the signature is not checked here.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AdmissionError> {
        let b: &[u8; ADMISSION_LEN] = bytes
            .try_into()
            .map_err(|_| AdmissionError::Length(bytes.len()))?;
        let take32 = |at: usize| {
            let mut out = [0u8; 32];
            out.copy_from_slice(&b[at..at + 32]);
            out
        };
        let mut at = [0u8; 8];
        at.copy_from_slice(&b[96..104]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&b[104..]);
        Ok(Self {
            tracker_key: take32(0),
            file_id: FileId(take32(32)),
            peer_id: PeerId(take32(64)),
            expires_at_ms: u64::from_be_bytes(at),
            signature,
        })
    }

    /// The encoding as lowercase hex (how the tracker's JSON carries it).
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    /// Parses [`Admission::to_hex`] (either case).
    pub fn from_hex(text: &str) -> Result<Self, AdmissionError> {
        if text.len() != ADMISSION_LEN * 2 {
            return Err(AdmissionError::Length(text.len() / 2));
        }
        let mut bytes = [0u8; ADMISSION_LEN];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| AdmissionError::Hex)?;
        Self::from_bytes(&bytes)
    }

    /// The bytes the signature covers: [`ADMISSION_CONTEXT`] then the encoding without the
    /// signature.
    pub fn signed_bytes(&self) -> [u8; SIGNED_LEN] {
        signed_bytes(
            &self.tracker_key,
            &self.file_id,
            &self.peer_id,
            self.expires_at_ms,
        )
    }

    /// Checks that this admission lets `peer` (as the handshake proved it) fetch `file` at
    /// `now_ms`: signed by one of `trusted` (tracker keys), for this file and this peer, and
    /// not expired (give or take [`CLOCK_SKEW_MS`]).
    pub fn check(
        &self,
        trusted: &[[u8; 32]],
        file: &FileId,
        peer: &PeerId,
        now_ms: u64,
    ) -> Result<(), AdmissionError> {
        if !trusted.contains(&self.tracker_key) {
            return Err(AdmissionError::UnknownTracker);
        }
        let key = VerifyingKey::from_bytes(&self.tracker_key)
            .map_err(|_| AdmissionError::BadSignature)?;
        key.verify_strict(
            &self.signed_bytes(),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| AdmissionError::BadSignature)?;
        if self.file_id != *file {
            return Err(AdmissionError::OtherFile {
                admitted: self.file_id,
                wanted: *file,
            });
        }
        if self.peer_id != *peer {
            return Err(AdmissionError::OtherPeer {
                admitted: self.peer_id,
                wanted: *peer,
            });
        }
        if now_ms >= self.expires_at_ms.saturating_add(CLOCK_SKEW_MS) {
            return Err(AdmissionError::Expired);
        }
        Ok(())
    }
}

fn unsigned(
    tracker_key: &[u8; 32],
    file: &FileId,
    peer: &PeerId,
    expires_at_ms: u64,
) -> [u8; ADMISSION_LEN - 64] {
    let mut out = [0u8; ADMISSION_LEN - 64];
    out[..32].copy_from_slice(tracker_key);
    out[32..64].copy_from_slice(&file.0);
    out[64..96].copy_from_slice(&peer.0);
    out[96..].copy_from_slice(&expires_at_ms.to_be_bytes());
    out
}

fn signed_bytes(
    tracker_key: &[u8; 32],
    file: &FileId,
    peer: &PeerId,
    expires_at_ms: u64,
) -> [u8; SIGNED_LEN] {
    let mut out = [0u8; SIGNED_LEN];
    out[..ADMISSION_CONTEXT.len()].copy_from_slice(ADMISSION_CONTEXT);
    out[ADMISSION_CONTEXT.len()..].copy_from_slice(&unsigned(
        tracker_key,
        file,
        peer,
        expires_at_ms,
    ));
    out
}

/// A tracker's admission key (Ed25519), from a 32-byte seed.
pub struct AdmissionSigner {
    key: SigningKey,
}

impl std::fmt::Debug for AdmissionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionSigner")
            .field("public_key", &hex::encode(self.public_key()))
            .finish_non_exhaustive()
    }
}

impl AdmissionSigner {
    /// The key whose secret is `seed` (RFC 8032's 32-byte private key).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The public key peers pin.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Admits `peer` to `file` until `expires_at_ms`.
    pub fn admit(&self, file: &FileId, peer: &PeerId, expires_at_ms: u64) -> Admission {
        let tracker_key = self.public_key();
        let signature = self
            .key
            .sign(&signed_bytes(&tracker_key, file, peer, expires_at_ms))
            .to_bytes();
        Admission {
            tracker_key,
            file_id: *file,
            peer_id: *peer,
            expires_at_ms,
            signature,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn signer() -> AdmissionSigner {
        AdmissionSigner::from_seed(&[7; 32])
    }

    /// RFC 8032 §7.1, test 1: the public key of this seed, so the Ed25519 underneath is the
    /// standard one.
    #[test]
    fn rfc_8032_key() {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            &mut seed,
        )
        .unwrap();
        assert_eq!(
            hex::encode(AdmissionSigner::from_seed(&seed).public_key()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }

    /// The worked example of docs/protocol.md §9 (the signature recomputed independently
    /// with Python's `cryptography` module).
    #[test]
    fn golden_admission() {
        let a = signer().admit(&FileId([0xab; 32]), &PeerId([0xcd; 32]), NOW);
        let bytes = a.to_bytes();
        assert_eq!(&bytes[..32], &signer().public_key());
        assert_eq!(&bytes[32..64], &[0xab; 32]);
        assert_eq!(&bytes[64..96], &[0xcd; 32]);
        assert_eq!(&bytes[96..104], &[0, 0, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0]);
        assert_eq!(
            hex::encode(a.tracker_key),
            "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"
        );
        assert_eq!(
            hex::encode(a.signature),
            GOLDEN_SIGNATURE,
            "signed bytes {}",
            hex::encode(a.signed_bytes())
        );
        assert_eq!(
            &a.signed_bytes()[..ADMISSION_CONTEXT.len()],
            ADMISSION_CONTEXT
        );
    }

    const GOLDEN_SIGNATURE: &str = "291e0797906b0a0d7b014a833158dad554112f7518211cf438ac29c53be52002\
                                    c1a2ad66fc3952089083ffaf22647727ebc4acc45012ce1a823272c77cabd40a";

    #[test]
    fn checks_key_signature_file_peer_and_expiry() {
        let (file, peer) = (FileId([1; 32]), PeerId([2; 32]));
        let s = signer();
        let trusted = [s.public_key()];
        let a = s.admit(&file, &peer, NOW + 600_000);
        assert_eq!(a.check(&trusted, &file, &peer, NOW), Ok(()));
        // Within the skew past the expiry, then not.
        assert_eq!(
            a.check(&trusted, &file, &peer, NOW + 600_000 + 59_999),
            Ok(())
        );
        assert_eq!(
            a.check(&trusted, &file, &peer, NOW + 660_000),
            Err(AdmissionError::Expired)
        );
        assert!(matches!(
            a.check(&trusted, &FileId([3; 32]), &peer, NOW),
            Err(AdmissionError::OtherFile { .. })
        ));
        assert!(matches!(
            a.check(&trusted, &file, &PeerId([3; 32]), NOW),
            Err(AdmissionError::OtherPeer { .. })
        ));
        // Another tracker's key: not pinned, or pinned but not the signer.
        let other = AdmissionSigner::from_seed(&[8; 32]);
        let forged = other.admit(&file, &peer, NOW + 600_000);
        assert_eq!(
            forged.check(&trusted, &file, &peer, NOW),
            Err(AdmissionError::UnknownTracker)
        );
        let claimed = Admission {
            tracker_key: s.public_key(),
            ..forged
        };
        assert_eq!(
            claimed.check(&trusted, &file, &peer, NOW),
            Err(AdmissionError::BadSignature)
        );
        // Any changed field breaks the signature (the peer id changed to the checker's).
        let stretched = Admission {
            expires_at_ms: a.expires_at_ms + 1,
            ..a
        };
        assert_eq!(
            stretched.check(&trusted, &file, &peer, NOW),
            Err(AdmissionError::BadSignature)
        );
        let moved = Admission {
            peer_id: PeerId([9; 32]),
            ..a
        };
        assert_eq!(
            moved.check(&trusted, &file, &PeerId([9; 32]), NOW),
            Err(AdmissionError::BadSignature)
        );
    }

    #[test]
    fn bad_encodings_are_errors() {
        assert_eq!(
            Admission::from_bytes(&[0; 10]),
            Err(AdmissionError::Length(10))
        );
        assert_eq!(
            Admission::from_hex(&"zz".repeat(ADMISSION_LEN)),
            Err(AdmissionError::Hex)
        );
        assert_eq!(Admission::from_hex("abcd"), Err(AdmissionError::Length(2)));
    }

    proptest! {
        #[test]
        fn roundtrip(
            key in any::<[u8; 32]>(),
            file in any::<[u8; 32]>(),
            peer in any::<[u8; 32]>(),
            expires in any::<u64>(),
            sig_a in any::<[u8; 32]>(),
            sig_b in any::<[u8; 32]>(),
        ) {
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(&sig_a);
            signature[32..].copy_from_slice(&sig_b);
            let a = Admission {
                tracker_key: key,
                file_id: FileId(file),
                peer_id: PeerId(peer),
                expires_at_ms: expires,
                signature,
            };
            prop_assert_eq!(Admission::from_bytes(&a.to_bytes()), Ok(a));
            prop_assert_eq!(Admission::from_hex(&a.to_hex()), Ok(a));
            prop_assert_eq!(Admission::from_hex(&a.to_hex().to_uppercase()), Ok(a));
        }

        #[test]
        fn signed_admissions_check(file in any::<[u8; 32]>(), peer in any::<[u8; 32]>(), seed in any::<[u8; 32]>()) {
            let s = AdmissionSigner::from_seed(&seed);
            let (file, peer) = (FileId(file), PeerId(peer));
            let a = s.admit(&file, &peer, NOW);
            prop_assert_eq!(a.check(&[s.public_key()], &file, &peer, NOW - 1), Ok(()));
        }
    }
}
