//! Proof that a tracker request speaks for a peer id: what the peer computes, and the MAC
//! primitives the tracker checks it with. The layout is in `docs/protocol.md` §8.
//!
//! A peer id is an X25519 public key. To register, a peer asks for a challenge
//! (`POST /api/peers/challenge`): the tracker's long-lived X25519 public key and a nonce the
//! tracker can check without remembering it. The peer answers in its registration with
//! [`proof_mac`], keyed by the Diffie-Hellman of its private key and the tracker's key: only the
//! holder of the peer id's private key (or the tracker) can compute it. The registration's
//! answer carries a short-lived peer token; every later request that changes the peer's entry
//! sends it in the [`PEER_TOKEN_HEADER`] header. The nonce and token are opaque to the peer.

use sha2::{Digest, Sha256};

use crate::ids::PeerId;

/// Domain separation of the registration proof (distinct from the relay's attach proof).
pub const PROOF_CONTEXT: &[u8] = b"p2p-tracker/1 peer proof";
/// Bytes of a challenge nonce.
pub const NONCE_LEN: usize = 32;
/// The header that carries a peer token.
pub const PEER_TOKEN_HEADER: &str = "X-Peer-Token";
/// The header that carries a proof instead of a token (`<peer id>.<nonce>.<mac>`, hex): how a
/// read grant's holder, which never registered, proves its peer id on a lookup of a file's
/// peers.
pub const PEER_PROOF_HEADER: &str = "X-Peer-Proof";

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts`; keys longer than the 64-byte block
/// are hashed first, as the RFC says.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// Compares two byte strings in time independent of where they differ (lengths are public).
pub fn macs_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The registration proof: HMAC-SHA256 keyed by the X25519 shared secret of the peer's private
/// key and the tracker's key, over the context, the tracker's key, the nonce and the peer id.
pub fn proof_mac(
    shared_secret: &[u8; 32],
    tracker_key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    peer_id: &PeerId,
) -> [u8; 32] {
    hmac_sha256(
        shared_secret,
        &[PROOF_CONTEXT, tracker_key, nonce, &peer_id.0],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        hex::decode_to_slice(s, &mut out).unwrap();
        out
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2: a short key.
        assert_eq!(
            hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]),
            unhex::<32>("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        // Test case 6: a 131-byte key, hashed first.
        assert_eq!(
            hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            ),
            unhex::<32>("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        );
    }

    #[test]
    fn golden_proof() {
        // HMAC-SHA256(key 01…01, "p2p-tracker/1 peer proof" ‖ 02…02 ‖ 03…03 ‖ 04…04), as
        // Python's hmac module computes it.
        let mac = proof_mac(&[1; 32], &[2; 32], &[3; 32], &PeerId([4; 32]));
        assert_eq!(
            hex::encode(mac),
            "769f4215c3982ca126f161a1eb1393a8400b838a9f0d3ab66a4b1896d64a9749"
        );
        assert_ne!(
            mac,
            proof_mac(&[1; 32], &[2; 32], &[3; 32], &PeerId([5; 32]))
        );
    }

    #[test]
    fn compares_in_full() {
        assert!(macs_equal(&[1, 2, 3], &[1, 2, 3]));
        assert!(!macs_equal(&[1, 2, 3], &[1, 2, 4]));
        assert!(!macs_equal(&[1, 2], &[1, 2, 3]));
    }
}
