//! Which peer a request speaks for: challenges, registration proofs and peer tokens.
//!
//! The API key or JWT says who may use the tracker; this says which peer a request is from. A
//! registration carries a proof of possession of the peer id's private key
//! ([`p2p_proto::peer_auth::proof_mac`]) answering a challenge; its answer carries a peer token
//! that heartbeats, announces, unannounces and unregistrations of that peer id must send.
//!
//! Everything is derived from the tracker's secret (`JWT_SECRET`, or the one kept in the
//! database), so trackers sharing a database and secret accept each other's challenges and
//! tokens, and a challenge costs no memory: its nonce is the time it was issued, random bytes
//! and a MAC over both and the peer id. The only state is a per-replica record of the nonces of
//! proofs accepted in the last [`NONCE_VALID`] (bounded), so a proof cannot be used twice on
//! one tracker. Byte layouts: `docs/protocol.md` §8.
//!
//! The same secret gives the tracker's Ed25519 admission key: a peer that asks for a file's
//! peers with its token gets an admission to the file ([`p2p_proto::admission`],
//! `docs/protocol.md` §9), which the file's peers want before serving a private file.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use curve25519_dalek::montgomery::MontgomeryPoint;
use p2p_proto::admission::AdmissionSigner;
use p2p_proto::api::{PeerChallenge, PeerProof};
use p2p_proto::peer_auth::{NONCE_LEN, hmac_sha256, macs_equal, proof_mac};
use p2p_proto::{FileId, PeerId};
use parking_lot::Mutex;

use crate::clock::Clock;

/// How long a challenge's nonce may be answered.
pub const NONCE_VALID: Duration = Duration::from_secs(60);
/// How far in the future a nonce's issue time may lie (clock skew between replicas).
const NONCE_SKEW_MS: u64 = 30_000;
/// Random bytes in a nonce, after its 8-byte issue time; the MAC takes the rest.
const NONCE_RANDOM_LEN: usize = 8;
const NONCE_TAG_START: usize = 8 + NONCE_RANDOM_LEN;
/// Bytes of a token: peer id, expiry, MAC.
pub const TOKEN_LEN: usize = 32 + 8 + 32;
/// Proofs remembered against replay at most (their nonces, about 6 MiB); past it, with none
/// old enough to forget, a proof is accepted without being remembered.
const MAX_RECENT_PROOFS: usize = 100_000;

/// How long an admission to a file stays valid (downloaders fetch fresh ones as they go).
pub const ADMISSION_TTL: Duration = Duration::from_secs(600);

const X25519_LABEL: &[u8] = b"p2p-tracker/1 x25519 key";
const ADMISSION_KEY_LABEL: &[u8] = b"p2p-tracker/1 admission key";
const NONCE_KEY_LABEL: &[u8] = b"p2p-tracker/1 nonce key";
const TOKEN_KEY_LABEL: &[u8] = b"p2p-tracker/1 token key";
const NONCE_CONTEXT: &[u8] = b"p2p-tracker/1 challenge nonce";
const TOKEN_CONTEXT: &[u8] = b"p2p-tracker/1 peer token";

/// Why a request does not speak for the peer id it names. The text is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerAuthError {
    #[error(
        "missing proof: get a challenge from POST /api/peers/challenge and register with \
         proof {{nonce, mac}} made with the peer id's private key"
    )]
    MissingProof,
    #[error("malformed proof: {0}")]
    MalformedProof(&'static str),
    #[error("the proof's nonce was not issued by this tracker for this peer id")]
    ForeignNonce,
    #[error("the proof's nonce expired; get a fresh challenge")]
    NonceExpired,
    #[error("the proof does not match the peer id (it must be made with its private key)")]
    BadProof,
    #[error("this proof was already used; get a fresh challenge")]
    Replayed,
    #[error("invalid peer id: not a usable X25519 public key")]
    InvalidPeerId,
    #[error("missing X-Peer-Token header: register with a proof to get a peer token")]
    MissingToken,
    #[error("malformed X-Peer-Token: expected {} hex characters", TOKEN_LEN * 2)]
    MalformedToken,
    #[error("the X-Peer-Token was not issued by this tracker")]
    BadToken,
    #[error("the X-Peer-Token expired; register again with a fresh proof")]
    TokenExpired,
    #[error("the X-Peer-Token is for peer {token}, not {wanted}")]
    WrongPeer { token: PeerId, wanted: PeerId },
}

impl PeerAuthError {
    /// Whether a fresh registration (with a proof) is the cure, as opposed to a request that
    /// speaks for another peer.
    pub fn is_token_error(&self) -> bool {
        matches!(
            self,
            Self::MissingToken | Self::MalformedToken | Self::BadToken | Self::TokenExpired
        )
    }
}

/// A peer token checked against the peer id a request names.
#[derive(Debug, Clone, Copy)]
pub struct ValidToken {
    pub expires_at_ms: u64,
}

/// A freshly issued peer token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_in_secs: u64,
}

/// Issues challenges and tokens and checks proofs and tokens.
pub struct PeerAuth {
    x25519_secret: [u8; 32],
    tracker_key: [u8; 32],
    nonce_key: [u8; 32],
    token_key: [u8; 32],
    token_ttl: Duration,
    admissions: AdmissionSigner,
    clock: Arc<dyn Clock>,
    recent: Mutex<RecentProofs>,
}

impl std::fmt::Debug for PeerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerAuth")
            .field("tracker_key", &hex::encode(self.tracker_key))
            .field("token_ttl", &self.token_ttl)
            .field("admission_key", &hex::encode(self.admission_key()))
            .finish_non_exhaustive()
    }
}

/// The nonces of the proofs accepted in the last [`NONCE_VALID`], with their issue times.
#[derive(Default)]
struct RecentProofs {
    used: HashMap<[u8; NONCE_LEN], u64>,
    pruned_at_ms: u64,
}

impl PeerAuth {
    /// Derives the keys from the tracker's secret (HMAC-SHA256 with a label per key).
    pub fn new(tracker_secret: &[u8], token_ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        let x25519_secret = hmac_sha256(tracker_secret, &[X25519_LABEL]);
        Self {
            x25519_secret,
            tracker_key: MontgomeryPoint::mul_base_clamped(x25519_secret).to_bytes(),
            nonce_key: hmac_sha256(tracker_secret, &[NONCE_KEY_LABEL]),
            token_key: hmac_sha256(tracker_secret, &[TOKEN_KEY_LABEL]),
            token_ttl: token_ttl.max(Duration::from_secs(2)),
            admissions: AdmissionSigner::from_seed(&hmac_sha256(
                tracker_secret,
                &[ADMISSION_KEY_LABEL],
            )),
            clock,
            recent: Mutex::new(RecentProofs::default()),
        }
    }

    /// The tracker's X25519 public key.
    pub fn tracker_key(&self) -> [u8; 32] {
        self.tracker_key
    }

    /// The tracker's Ed25519 admission key (public half), which peers pin at registration.
    pub fn admission_key(&self) -> [u8; 32] {
        self.admissions.public_key()
    }

    /// An admission of the peer whose token `header` carries to `file`, as hex, valid for
    /// [`ADMISSION_TTL`] but not past `until_ms` (a read grant's expiry); `None` without a
    /// token (a dashboard, a script: nobody to admit).
    pub fn admit(
        &self,
        header: Option<&str>,
        file: &FileId,
        until_ms: Option<u64>,
    ) -> Result<Option<String>, PeerAuthError> {
        let Some(header) = header.map(str::trim).filter(|h| !h.is_empty()) else {
            return Ok(None);
        };
        let (peer, _) = self.token_peer(header)?;
        Ok(Some(self.admit_peer(&peer, file, until_ms)))
    }

    /// An admission of `peer` (whose key the caller checked) to `file`, as hex, valid for
    /// [`ADMISSION_TTL`] but not past `until_ms`.
    pub fn admit_peer(&self, peer: &PeerId, file: &FileId, until_ms: Option<u64>) -> String {
        let mut expires_at_ms = self
            .clock
            .now_ms()
            .saturating_add(ADMISSION_TTL.as_millis() as u64);
        if let Some(until) = until_ms {
            expires_at_ms = expires_at_ms.min(until);
        }
        self.admissions.admit(file, peer, expires_at_ms).to_hex()
    }

    /// The peer an `X-Peer-Proof` header (`<peer id>.<nonce>.<mac>`, hex) proves, checked as a
    /// registration's proof is (once only, fresh, made with the peer id's key).
    pub fn verify_proof_header(&self, header: &str) -> Result<PeerId, PeerAuthError> {
        let mut parts = header.trim().split('.');
        let (Some(peer), Some(nonce), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(PeerAuthError::MalformedProof(
                "X-Peer-Proof must be <peer id>.<nonce>.<mac>, each 64 hex characters",
            ));
        };
        let peer = PeerId(decode_hex(peer).ok_or(PeerAuthError::MalformedProof(
            "the peer id must be 64 hex characters",
        ))?);
        let proof = PeerProof {
            nonce: nonce.to_owned(),
            mac: mac.to_owned(),
        };
        self.verify_proof(&peer, Some(&proof))?;
        Ok(peer)
    }

    /// A challenge for `peer_id`.
    pub fn challenge(&self, peer_id: &PeerId) -> Result<PeerChallenge, getrandom::Error> {
        let mut random = [0u8; NONCE_RANDOM_LEN];
        getrandom::fill(&mut random)?;
        let nonce = self.nonce(self.clock.now_ms(), random, peer_id);
        Ok(PeerChallenge {
            peer_id: *peer_id,
            tracker_key: hex::encode(self.tracker_key),
            nonce: hex::encode(nonce),
            expires_in_secs: NONCE_VALID.as_secs(),
        })
    }

    /// Issue time ‖ random ‖ the first 16 bytes of the MAC over both and the peer id.
    fn nonce(
        &self,
        issued_at_ms: u64,
        random: [u8; NONCE_RANDOM_LEN],
        peer_id: &PeerId,
    ) -> [u8; NONCE_LEN] {
        let at = issued_at_ms.to_be_bytes();
        let tag = hmac_sha256(&self.nonce_key, &[NONCE_CONTEXT, &at, &random, &peer_id.0]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&at);
        nonce[8..NONCE_TAG_START].copy_from_slice(&random);
        nonce[NONCE_TAG_START..].copy_from_slice(&tag[..NONCE_LEN - NONCE_TAG_START]);
        nonce
    }

    /// Checks a registration's proof for `peer_id`; on success it cannot be used again here.
    pub fn verify_proof(
        &self,
        peer_id: &PeerId,
        proof: Option<&PeerProof>,
    ) -> Result<(), PeerAuthError> {
        let proof = proof.ok_or(PeerAuthError::MissingProof)?;
        let nonce: [u8; NONCE_LEN] = decode_hex(&proof.nonce).ok_or(
            PeerAuthError::MalformedProof("nonce must be 64 hex characters"),
        )?;
        let mac: [u8; 32] = decode_hex(&proof.mac).ok_or(PeerAuthError::MalformedProof(
            "mac must be 64 hex characters",
        ))?;
        let mut at = [0u8; 8];
        at.copy_from_slice(&nonce[..8]);
        let issued_at_ms = u64::from_be_bytes(at);
        let mut random = [0u8; NONCE_RANDOM_LEN];
        random.copy_from_slice(&nonce[8..NONCE_TAG_START]);
        if !macs_equal(&nonce, &self.nonce(issued_at_ms, random, peer_id)) {
            return Err(PeerAuthError::ForeignNonce);
        }
        let now = self.clock.now_ms();
        let valid_ms = NONCE_VALID.as_millis() as u64;
        if issued_at_ms > now.saturating_add(NONCE_SKEW_MS)
            || now >= issued_at_ms.saturating_add(valid_ms)
        {
            return Err(PeerAuthError::NonceExpired);
        }
        let shared = MontgomeryPoint(peer_id.0)
            .mul_clamped(self.x25519_secret)
            .to_bytes();
        // A low-order "public key" gives an all-zero secret anyone can compute.
        if shared == [0u8; 32] {
            return Err(PeerAuthError::InvalidPeerId);
        }
        if !macs_equal(
            &mac,
            &proof_mac(&shared, &self.tracker_key, &nonce, peer_id),
        ) {
            return Err(PeerAuthError::BadProof);
        }
        self.remember(nonce, issued_at_ms, now)
    }

    /// Accepts a proof's nonce once. Nonces past their validity need not be remembered: they
    /// are refused as expired.
    fn remember(
        &self,
        nonce: [u8; NONCE_LEN],
        issued_at_ms: u64,
        now: u64,
    ) -> Result<(), PeerAuthError> {
        let mut recent = self.recent.lock();
        if recent.used.contains_key(&nonce) {
            return Err(PeerAuthError::Replayed);
        }
        if recent.used.len() >= MAX_RECENT_PROOFS {
            // At most one sweep a second, so a flood does not make every proof sweep.
            if now.saturating_sub(recent.pruned_at_ms) >= 1000 {
                let valid_ms = NONCE_VALID.as_millis() as u64;
                recent
                    .used
                    .retain(|_, at| now < at.saturating_add(valid_ms));
                recent.pruned_at_ms = now;
            }
            if recent.used.len() >= MAX_RECENT_PROOFS {
                tracing::warn!("too many recent proofs to remember; accepting one unrecorded");
                return Ok(());
            }
        }
        recent.used.insert(nonce, issued_at_ms);
        Ok(())
    }

    /// A token for `peer_id`, valid for the token lifetime from now.
    pub fn issue_token(&self, peer_id: &PeerId) -> IssuedToken {
        let expires_at_ms = self
            .clock
            .now_ms()
            .saturating_add(self.token_ttl.as_millis() as u64);
        let at = expires_at_ms.to_be_bytes();
        let tag = hmac_sha256(&self.token_key, &[TOKEN_CONTEXT, &peer_id.0, &at]);
        let mut token = [0u8; TOKEN_LEN];
        token[..32].copy_from_slice(&peer_id.0);
        token[32..40].copy_from_slice(&at);
        token[40..].copy_from_slice(&tag);
        IssuedToken {
            token: hex::encode(token),
            expires_in_secs: self.token_ttl.as_secs(),
        }
    }

    /// Checks that `header` (the `X-Peer-Token` value) is a live token for `wanted`.
    pub fn check_token(
        &self,
        header: Option<&str>,
        wanted: &PeerId,
    ) -> Result<ValidToken, PeerAuthError> {
        let header = header
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .ok_or(PeerAuthError::MissingToken)?;
        let (token, valid) = self.token_peer(header)?;
        if token != *wanted {
            return Err(PeerAuthError::WrongPeer {
                token,
                wanted: *wanted,
            });
        }
        Ok(valid)
    }

    /// The peer id a live token (a non-empty `X-Peer-Token` value) speaks for.
    fn token_peer(&self, header: &str) -> Result<(PeerId, ValidToken), PeerAuthError> {
        let token: [u8; TOKEN_LEN] = decode_hex(header).ok_or(PeerAuthError::MalformedToken)?;
        let tag = hmac_sha256(&self.token_key, &[TOKEN_CONTEXT, &token[..40]]);
        if !macs_equal(&token[40..], &tag) {
            return Err(PeerAuthError::BadToken);
        }
        let mut at = [0u8; 8];
        at.copy_from_slice(&token[32..40]);
        let expires_at_ms = u64::from_be_bytes(at);
        if self.clock.now_ms() >= expires_at_ms {
            return Err(PeerAuthError::TokenExpired);
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&token[..32]);
        Ok((PeerId(id), ValidToken { expires_at_ms }))
    }

    /// A fresh token when `valid` has less than half its lifetime left.
    pub fn renewal(&self, peer_id: &PeerId, valid: ValidToken) -> Option<IssuedToken> {
        let left = valid.expires_at_ms.saturating_sub(self.clock.now_ms());
        (left < self.token_ttl.as_millis() as u64 / 2).then(|| self.issue_token(peer_id))
    }
}

/// Exactly `N` bytes of hex (either case), or `None`.
fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    (s.len() == N * 2)
        .then(|| hex::decode_to_slice(s, &mut out).ok())
        .flatten()
        .map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const T0: u64 = 1_800_000_000_000;

    fn auth(secret: &[u8], clock: &ManualClock) -> PeerAuth {
        PeerAuth::new(secret, Duration::from_secs(3600), Arc::new(clock.clone()))
    }

    /// A peer's key pair and its answer to `challenge`.
    fn prove(secret: [u8; 32], challenge: &PeerChallenge) -> PeerProof {
        let tracker_key: [u8; 32] = decode_hex(&challenge.tracker_key).unwrap();
        let nonce: [u8; NONCE_LEN] = decode_hex(&challenge.nonce).unwrap();
        let shared = MontgomeryPoint(tracker_key).mul_clamped(secret).to_bytes();
        PeerProof {
            nonce: challenge.nonce.clone(),
            mac: hex::encode(proof_mac(&shared, &tracker_key, &nonce, &challenge.peer_id)),
        }
    }

    fn peer(secret: [u8; 32]) -> PeerId {
        PeerId(MontgomeryPoint::mul_base_clamped(secret).to_bytes())
    }

    /// The worked example of docs/protocol.md §8 (computed independently with Python's hmac
    /// and cryptography modules).
    #[test]
    fn golden_challenge_proof_and_token() {
        let clock = ManualClock::new(T0);
        let a = auth(b"an example tracker secret", &clock);
        assert_eq!(
            hex::encode(a.tracker_key()),
            "909d41b19a627554400b93a2be296601906ae24469b90e68162ca76fe446d859"
        );
        // RFC 7748 §6.1: Alice's key pair.
        let alice_secret: [u8; 32] =
            decode_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").unwrap();
        let alice = peer(alice_secret);
        let nonce = a.nonce(T0, [1, 2, 3, 4, 5, 6, 7, 8], &alice);
        assert_eq!(
            hex::encode(nonce),
            "000001a3185c500001020304050607081b1d308275f6dae65b5d522ece66c979"
        );
        let challenge = PeerChallenge {
            peer_id: alice,
            tracker_key: hex::encode(a.tracker_key()),
            nonce: hex::encode(nonce),
            expires_in_secs: 60,
        };
        let proof = prove(alice_secret, &challenge);
        assert_eq!(
            proof.mac,
            "ffaffb96a5a4c68402ebd95a1f92b957c4404b6746d59f29d34176cdea58f511"
        );
        assert_eq!(a.verify_proof(&alice, Some(&proof)), Ok(()));
        assert_eq!(
            a.issue_token(&alice).token,
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a\
             000001a318933e80\
             c440203a525ca81da0eecc4fd89be5d1633a72d7712ffef090cf7389623a8c22"
        );
    }

    #[test]
    fn a_proof_is_accepted_once_and_only_for_its_peer() {
        let clock = ManualClock::new(T0);
        let a = auth(b"secret", &clock);
        let (alice, mallory) = (peer([1; 32]), peer([2; 32]));
        let challenge = a.challenge(&alice).unwrap();
        let proof = prove([1; 32], &challenge);
        // Mallory cannot use Alice's challenge, nor answer it without Alice's key.
        assert_eq!(
            a.verify_proof(&mallory, Some(&proof)),
            Err(PeerAuthError::ForeignNonce)
        );
        assert_eq!(
            a.verify_proof(&alice, Some(&prove([2; 32], &challenge))),
            Err(PeerAuthError::BadProof)
        );
        assert_eq!(
            a.verify_proof(&alice, None),
            Err(PeerAuthError::MissingProof)
        );
        assert_eq!(a.verify_proof(&alice, Some(&proof)), Ok(()));
        assert_eq!(
            a.verify_proof(&alice, Some(&proof)),
            Err(PeerAuthError::Replayed)
        );
        // A fresh challenge works at once, even within the same millisecond.
        let fresh = prove([1; 32], &a.challenge(&alice).unwrap());
        assert_eq!(a.verify_proof(&alice, Some(&fresh)), Ok(()));
    }

    #[test]
    fn replicas_with_one_secret_share_keys_and_nonces_expire() {
        let clock = ManualClock::new(T0);
        let (one, two) = (auth(b"shared", &clock), auth(b"shared", &clock));
        let other = auth(b"another", &clock);
        assert_eq!(one.tracker_key(), two.tracker_key());
        assert_ne!(one.tracker_key(), other.tracker_key());
        let alice = peer([1; 32]);
        let proof = prove([1; 32], &one.challenge(&alice).unwrap());
        assert_eq!(
            other.verify_proof(&alice, Some(&proof)),
            Err(PeerAuthError::ForeignNonce)
        );
        clock.advance_ms(NONCE_VALID.as_millis() as u64);
        assert_eq!(
            two.verify_proof(&alice, Some(&proof)),
            Err(PeerAuthError::NonceExpired)
        );
    }

    #[test]
    fn low_order_peer_ids_are_refused() {
        let clock = ManualClock::new(T0);
        let a = auth(b"secret", &clock);
        let zero = PeerId([0; 32]);
        let challenge = a.challenge(&zero).unwrap();
        // Anyone can compute the all-zero shared secret of a low-order point.
        let nonce: [u8; NONCE_LEN] = decode_hex(&challenge.nonce).unwrap();
        let proof = PeerProof {
            nonce: challenge.nonce.clone(),
            mac: hex::encode(proof_mac(&[0; 32], &a.tracker_key(), &nonce, &zero)),
        };
        assert_eq!(
            a.verify_proof(&zero, Some(&proof)),
            Err(PeerAuthError::InvalidPeerId)
        );
    }

    #[test]
    fn tokens_name_their_peer_expire_and_renew() {
        let clock = ManualClock::new(T0);
        let a = auth(b"secret", &clock);
        let (alice, bob) = (peer([1; 32]), peer([2; 32]));
        let issued = a.issue_token(&alice);
        assert_eq!(issued.token.len(), TOKEN_LEN * 2);
        let valid = a.check_token(Some(&issued.token), &alice).unwrap();
        assert!(a.renewal(&alice, valid).is_none(), "fresh tokens are kept");
        assert_eq!(
            a.check_token(Some(&issued.token), &bob).unwrap_err(),
            PeerAuthError::WrongPeer {
                token: alice,
                wanted: bob
            }
        );
        assert_eq!(
            a.check_token(None, &alice).unwrap_err(),
            PeerAuthError::MissingToken
        );
        assert_eq!(
            a.check_token(Some("abc"), &alice).unwrap_err(),
            PeerAuthError::MalformedToken
        );
        // Claiming Bob's id in Alice's token breaks the MAC.
        let forged = format!("{}{}", hex::encode(bob.0), &issued.token[64..]);
        assert_eq!(
            a.check_token(Some(&forged), &bob).unwrap_err(),
            PeerAuthError::BadToken
        );
        assert_eq!(
            auth(b"another", &clock)
                .check_token(Some(&issued.token), &alice)
                .unwrap_err(),
            PeerAuthError::BadToken
        );
        clock.advance_ms(1_800_001);
        let valid = a.check_token(Some(&issued.token), &alice).unwrap();
        let renewed = a.renewal(&alice, valid).expect("renewed past half-life");
        clock.advance_ms(1_800_000);
        assert_eq!(
            a.check_token(Some(&issued.token), &alice).unwrap_err(),
            PeerAuthError::TokenExpired
        );
        assert!(a.check_token(Some(&renewed.token), &alice).is_ok());
    }

    #[test]
    fn remembered_proofs_are_bounded() {
        let clock = ManualClock::new(T0);
        let a = auth(b"secret", &clock);
        for i in 0..MAX_RECENT_PROOFS as u32 + 10 {
            let mut nonce = [0u8; NONCE_LEN];
            nonce[..4].copy_from_slice(&i.to_be_bytes());
            a.remember(nonce, T0, T0).unwrap();
        }
        assert_eq!(a.recent.lock().used.len(), MAX_RECENT_PROOFS);
        // Once the window has passed, the old ones are forgotten to make room.
        let later = T0 + NONCE_VALID.as_millis() as u64;
        a.remember([0xff; NONCE_LEN], later, later).unwrap();
        assert_eq!(a.recent.lock().used.len(), 1);
    }

    #[test]
    fn admissions_name_the_token_s_peer_and_the_key_is_the_secret_s() {
        use p2p_proto::admission::Admission;
        let clock = ManualClock::new(T0);
        let a = auth(b"an example tracker secret", &clock);
        // Replicas sharing the secret sign with the same key.
        assert_eq!(
            a.admission_key(),
            auth(b"an example tracker secret", &clock).admission_key()
        );
        assert_ne!(a.admission_key(), auth(b"another", &clock).admission_key());
        let alice = peer([1; 32]);
        let file = FileId([5; 32]);
        assert_eq!(a.admit(None, &file, None), Ok(None));
        assert_eq!(a.admit(Some("  "), &file, None), Ok(None));
        assert_eq!(
            a.admit(Some("00"), &file, None),
            Err(PeerAuthError::MalformedToken)
        );
        let token = a.issue_token(&alice).token;
        let admission =
            Admission::from_hex(&a.admit(Some(&token), &file, None).unwrap().unwrap()).unwrap();
        assert_eq!(
            (
                admission.peer_id,
                admission.file_id,
                admission.expires_at_ms
            ),
            (alice, file, T0 + ADMISSION_TTL.as_millis() as u64)
        );
        assert_eq!(
            admission.check(&[a.admission_key()], &file, &alice, T0),
            Ok(())
        );
        // A read grant's expiry caps the admission.
        let capped = a
            .admit(Some(&token), &file, Some(T0 + 5_000))
            .unwrap()
            .unwrap();
        assert_eq!(
            Admission::from_hex(&capped).unwrap().expires_at_ms,
            T0 + 5_000
        );
        // A proof in a header proves its peer once.
        let proof = prove([1; 32], &a.challenge(&alice).unwrap());
        let header = format!("{alice}.{}.{}", proof.nonce, proof.mac);
        assert_eq!(a.verify_proof_header(&header), Ok(alice));
        assert_eq!(a.verify_proof_header(&header), Err(PeerAuthError::Replayed));
        assert!(matches!(
            a.verify_proof_header("ab.cd"),
            Err(PeerAuthError::MalformedProof(_))
        ));
        clock.advance_ms(3_600_000);
        assert_eq!(
            a.admit(Some(&token), &file, None),
            Err(PeerAuthError::TokenExpired)
        );
    }
}
