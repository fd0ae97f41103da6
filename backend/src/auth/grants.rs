//! Read grants: the tracker's permission to read one file's (or folder collection's) details
//! and peers until an expiry, without an API key. A share link carries one
//! ([`p2p_proto::link`], `docs/protocol.md` §11).
//!
//! A grant is an HMAC-SHA256 over the id and the expiry with a key derived from the tracker's
//! secret, so replicas sharing the secret accept each other's grants and nothing is stored.
//! What a grant lets its holder do, and nothing more: read that id's details and peers, get a
//! challenge and, with a proof of a peer id's key, an admission of that peer to that id (never
//! past the grant's expiry); attach to the relay to dial that id's peers (never reachable
//! there, detached at the expiry); for a folder collection, get grants for its member files, ending
//! with its own (the holder sends the collection's bytes, which must hash to the id). It cannot list, announce, register, be reached through the relay
//! or read any other id. A grant cannot be revoked before its expiry except by changing the secret,
//! hence the bounded lifetime ([`MAX_GRANT_TTL`]).

use std::sync::Arc;
use std::time::Duration;

use p2p_proto::FileId;
use p2p_proto::link::{GrantError, ReadGrant};
use p2p_proto::peer_auth::hmac_sha256;

use crate::clock::Clock;

/// A grant's lifetime when the request names none.
pub const DEFAULT_GRANT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest lifetime a grant may be given.
pub const MAX_GRANT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

const GRANT_KEY_LABEL: &[u8] = b"p2p-tracker/1 read grant key";

/// Issues and checks read grants.
pub struct ReadGrants {
    key: [u8; 32],
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ReadGrants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadGrants").finish_non_exhaustive()
    }
}

impl ReadGrants {
    /// The grant key derived from the tracker's secret.
    pub fn new(tracker_secret: &[u8], clock: Arc<dyn Clock>) -> Self {
        Self {
            key: hmac_sha256(tracker_secret, &[GRANT_KEY_LABEL]),
            clock,
        }
    }

    /// A grant to read `file` for `ttl` from now (the caller bounds `ttl`).
    pub fn issue(&self, file: FileId, ttl: Duration) -> ReadGrant {
        ReadGrant::sign(&self.key, file, self.expiry_after(ttl))
    }

    /// How long `grant` still lasts.
    pub fn time_left(&self, grant: &ReadGrant) -> Duration {
        Duration::from_millis(grant.expires_at_ms.saturating_sub(self.clock.now_ms()))
    }

    /// The expiry, in Unix milliseconds, of a grant lasting `ttl` from now.
    pub fn expiry_after(&self, ttl: Duration) -> u64 {
        self.clock
            .now_ms()
            .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
    }

    /// A grant to read `file` until `expires_at_ms` (a folder's member, ending with the
    /// folder's grant).
    pub fn issue_until(&self, file: FileId, expires_at_ms: u64) -> ReadGrant {
        ReadGrant::sign(&self.key, file, expires_at_ms)
    }

    /// The grant an `X-Read-Grant` value carries, checked: issued here and not expired. Which
    /// id it covers is the caller's to check ([`ReadGrants::check_for`]).
    pub fn check(&self, header: &str) -> Result<ReadGrant, GrantError> {
        let grant = ReadGrant::from_hex(header)?;
        grant.check(&self.key, &grant.file_id, self.clock.now_ms())?;
        Ok(grant)
    }

    /// [`ReadGrants::check`], and that the grant covers `file`.
    pub fn check_for(&self, grant: &ReadGrant, file: &FileId) -> Result<(), GrantError> {
        grant.check(&self.key, file, self.clock.now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn grants_expire_name_one_id_and_replicas_share_them() {
        let clock = ManualClock::new(T0);
        let grants = ReadGrants::new(b"secret", Arc::new(clock.clone()));
        let replica = ReadGrants::new(b"secret", Arc::new(clock.clone()));
        let other = ReadGrants::new(b"another", Arc::new(clock.clone()));
        let (file, elsewhere) = (FileId([1; 32]), FileId([2; 32]));
        let g = grants.issue(file, Duration::from_secs(60));
        assert_eq!(g.expires_at_ms, T0 + 60_000);
        let header = g.to_hex();
        assert_eq!(replica.check(&header), Ok(g));
        assert_eq!(replica.check_for(&g, &file), Ok(()));
        assert_eq!(
            grants.check_for(&g, &elsewhere),
            Err(GrantError::OtherId {
                granted: file,
                wanted: elsewhere
            })
        );
        assert_eq!(other.check(&header), Err(GrantError::BadMac));
        assert_eq!(grants.check("nothex"), Err(GrantError::Malformed));
        clock.advance_ms(60_000);
        assert_eq!(grants.check(&header), Err(GrantError::Expired));
    }
}
