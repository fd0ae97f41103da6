//! Which files on offer are public: served to anyone who asks and announced on the DHT.
//! Every other file is private: served only to peers the tracker admitted to it
//! ([`crate::admission`]). A node started with `--public` makes all its files public; `share
//! --public <path>` makes one file public, and that choice is kept in
//! `<data>/.p2p/public-files.json` (replaced atomically) so that it survives a restart.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use p2p_proto::FileId;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::index::STATE_DIR;

const PUBLIC_FILE: &str = "public-files.json";

/// Why the list of public files could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VisibilityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a list of public files: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct Stored {
    public: Vec<FileId>,
}

/// The public files, and whether every file is.
#[derive(Debug, Default)]
pub struct Visibility {
    all_public: AtomicBool,
    public: RwLock<HashSet<FileId>>,
    /// Where the choices of `share --public` are kept, once loaded from there.
    store: RwLock<Option<PathBuf>>,
}

impl Visibility {
    /// Every file public (`--public`), or only those made so one by one.
    pub fn set_all_public(&self, all: bool) {
        self.all_public.store(all, Ordering::Relaxed);
    }

    pub fn all_public(&self) -> bool {
        self.all_public.load(Ordering::Relaxed)
    }

    pub fn is_public(&self, id: &FileId) -> bool {
        self.all_public() || self.public.read().contains(id)
    }

    /// Loads the files made public in `data_dir` and keeps later choices there. Blocking.
    pub fn keep_in(&self, data_dir: &Path) -> Result<(), VisibilityError> {
        let path = data_dir.join(STATE_DIR).join(PUBLIC_FILE);
        *self.store.write() = Some(path.clone());
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(VisibilityError::Read { path, source }),
        };
        let stored: Stored = serde_json::from_slice(&raw)
            .map_err(|source| VisibilityError::Corrupt { path, source })?;
        self.public.write().extend(stored.public);
        Ok(())
    }

    /// Makes `id` public (or private again), and saves the choice when a store is set.
    /// Blocking (a small file write).
    pub fn set_public(&self, id: FileId, public: bool) -> Result<(), VisibilityError> {
        let mut ids: Vec<FileId> = {
            let mut set = self.public.write();
            let changed = if public {
                set.insert(id)
            } else {
                set.remove(&id)
            };
            if !changed {
                return Ok(());
            }
            set.iter().copied().collect()
        };
        ids.sort_unstable();
        let Some(path) = self.store.read().clone() else {
            return Ok(());
        };
        save(&path, &Stored { public: ids })
    }
}

/// Replaces the list at `path` with `stored` atomically.
fn save(path: &Path, stored: &Stored) -> Result<(), VisibilityError> {
    let write = |source| VisibilityError::Write {
        path: path.to_owned(),
        source,
    };
    let json = serde_json::to_vec_pretty(stored).map_err(|e| write(std::io::Error::other(e)))?;
    super::replace_file(path, &json).map_err(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_survive_a_restart_and_bad_lists_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (FileId([1; 32]), FileId([2; 32]));
        let v = Visibility::default();
        v.keep_in(dir.path()).unwrap();
        assert!(!v.is_public(&a));
        v.set_public(a, true).unwrap();
        v.set_public(b, true).unwrap();
        v.set_public(b, false).unwrap();
        let again = Visibility::default();
        again.keep_in(dir.path()).unwrap();
        assert!(again.is_public(&a) && !again.is_public(&b));
        again.set_all_public(true);
        assert!(again.is_public(&b));

        std::fs::write(dir.path().join(STATE_DIR).join(PUBLIC_FILE), b"{").unwrap();
        assert!(matches!(
            Visibility::default().keep_in(dir.path()),
            Err(VisibilityError::Corrupt { .. })
        ));
    }
}
