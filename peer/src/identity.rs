//! The peer's identity: a persistent X25519 static key in the data directory. The public key is
//! the peer id, and the Noise handshake proves possession of the private key, so no peer can
//! claim another's id.

use std::io::Write;
use std::path::{Path, PathBuf};

use curve25519_dalek::montgomery::MontgomeryPoint;
use p2p_proto::PeerId;

/// File name of the key inside the data directory.
pub const KEY_FILE: &str = "identity.key";

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} does not hold a key (expected 64 hex characters)")]
    Malformed(PathBuf),
    #[error("no randomness available: {0}")]
    Random(#[from] getrandom::Error),
}

/// A static key pair.
#[derive(Clone)]
pub struct Identity {
    secret: [u8; 32],
    peer_id: PeerId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The key pair of a 32-byte X25519 secret (clamped as X25519 does).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let public = MontgomeryPoint::mul_base_clamped(secret).to_bytes();
        Self {
            secret,
            peer_id: PeerId(public),
        }
    }

    /// A fresh random identity.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)?;
        Ok(Self::from_secret(secret))
    }

    /// Loads `dir/identity.key`, or creates it (readable by the owner only) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(KEY_FILE);
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        let read = |path: &Path| -> Result<Self, IdentityError> {
            let text = std::fs::read_to_string(path).map_err(io)?;
            let mut secret = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut secret)
                .map_err(|_| IdentityError::Malformed(path.to_owned()))?;
            Ok(Self::from_secret(secret))
        };
        match std::fs::metadata(&path) {
            Ok(_) => read(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io)?;
                let identity = Self::generate()?;
                // Written to a file of its own (named after the new, random peer id), then
                // linked into place: a crash never leaves half a key, and of two processes
                // starting on one fresh data dir the first to link wins and the other takes
                // its key (one peer, one key).
                let tmp = dir.join(format!(
                    "{KEY_FILE}.{}.tmp",
                    &identity.peer_id.to_string()[..16]
                ));
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let written = (|| {
                    let mut file = options.open(&tmp)?;
                    writeln!(file, "{}", hex::encode(identity.secret))?;
                    file.sync_all()
                })();
                if let Err(e) = written {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(io(e));
                }
                let linked = std::fs::hard_link(&tmp, &path);
                let placed = match linked {
                    Ok(()) => Ok(identity),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
                    // No hard links here: moved into place instead.
                    Err(_) => std::fs::rename(&tmp, &path).map(|()| identity).map_err(io),
                };
                let _ = std::fs::remove_file(&tmp);
                placed
            }
            Err(e) => Err(io(e)),
        }
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The private key, for the Noise handshake.
    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_starting_together_on_a_fresh_dir_get_one_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let ids: Vec<PeerId> = std::thread::scope(|s| {
                let starts: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| Identity::load_or_create(dir.path()).unwrap().peer_id()))
                    .collect();
                starts.into_iter().map(|t| t.join().unwrap()).collect()
            });
            assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
            let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(names.len(), 1, "no temporary file left");
        }
    }

    #[test]
    fn persists_and_derives_the_peer_id() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.peer_id(), b.peer_id(), "same key after a restart");
        assert_eq!(Identity::from_secret(*a.secret()).peer_id(), a.peer_id());
        let other = Identity::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert_ne!(other.peer_id(), a.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn rejects_a_damaged_key_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "not hex").unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path()),
            Err(IdentityError::Malformed(_))
        ));
    }

    #[test]
    fn known_x25519_vector() {
        // RFC 7748 §6.1: Alice's private and public keys.
        let mut secret = [0u8; 32];
        hex::decode_to_slice(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
            &mut secret,
        )
        .unwrap();
        assert_eq!(
            Identity::from_secret(secret).peer_id().to_string(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }
}
