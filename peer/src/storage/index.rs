//! The shared folder's index, kept across restarts: each file's manifest with the version of the
//! file it describes ([`HashedFile`]), so a restart hashes only the files that changed.
//!
//! It lives in `<data>/.p2p/share-index.json` (a hidden folder, never shared itself) and is
//! replaced atomically (written beside, flushed, renamed over). It is only a cache: a file is
//! taken from it only while the file keeps the exact version (length, modification and change
//! time, inode) the entry names, and an index that cannot be read is ignored, costing one
//! hashing of the folder.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::stamp::HashedFile;

/// The peer's own state inside the data dir.
pub const STATE_DIR: &str = ".p2p";
const INDEX_FILE: &str = "share-index.json";
/// Bumped when the layout changes; an index of another format is ignored.
const FORMAT: u32 = 1;

/// Why the index could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a share index: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} has format {found}, this peer reads format {FORMAT}")]
    Format { path: PathBuf, found: u32 },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Serialize)]
struct IndexOut<'a> {
    format: u32,
    files: &'a [HashedFile],
}

#[derive(Deserialize)]
struct Header {
    format: u32,
}

#[derive(Deserialize)]
struct IndexIn {
    format: u32,
    files: Vec<HashedFile>,
}

/// What a stored index held.
#[derive(Debug, Default)]
pub struct LoadedIndex {
    /// By file name (the manifest's name).
    pub files: HashMap<String, HashedFile>,
    /// Entries left out because their manifest is inconsistent.
    pub dropped: usize,
}

/// Where the index of one shared folder is kept.
#[derive(Debug, Clone)]
pub struct ShareIndex {
    path: PathBuf,
}

impl ShareIndex {
    /// The index kept in `data_dir`'s state folder.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(STATE_DIR).join(INDEX_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the stored index; an empty one when there is none. Blocking.
    pub fn load(&self) -> Result<LoadedIndex, IndexError> {
        let raw = match std::fs::read(&self.path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LoadedIndex::default());
            }
            Err(source) => {
                return Err(IndexError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let format = |found| IndexError::Format {
            path: self.path.clone(),
            found,
        };
        let stored: IndexIn = match serde_json::from_slice(&raw) {
            Ok(stored) => stored,
            // Another format may well have another layout: say so rather than "corrupt".
            Err(source) => {
                return Err(match serde_json::from_slice::<Header>(&raw) {
                    Ok(h) if h.format != FORMAT => format(h.format),
                    _ => IndexError::Corrupt {
                        path: self.path.clone(),
                        source,
                    },
                });
            }
        };
        if stored.format != FORMAT {
            return Err(format(stored.format));
        }
        let mut loaded = LoadedIndex::default();
        for file in stored.files {
            if file.manifest.validate().is_err() {
                loaded.dropped += 1;
                continue;
            }
            loaded.files.insert(file.manifest.name.clone(), file);
        }
        Ok(loaded)
    }

    /// Replaces the stored index with `files` atomically. Blocking.
    pub fn save(&self, files: &[HashedFile]) -> Result<(), IndexError> {
        let write = |path: &Path, source| IndexError::Write {
            path: path.to_owned(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| write(dir, e))?;
        let tmp = self.path.with_extension("json.tmp");
        let out = IndexOut {
            format: FORMAT,
            files,
        };
        let result = (|| {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            serde_json::to_writer(&mut f, &out)?;
            f.flush()?;
            f.into_inner().map_err(|e| e.into_error())?.sync_all()
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(write(&tmp, e));
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| write(&self.path, e))?;
        // The rename itself survives a crash once the folder is flushed (best effort: not
        // every platform can open a folder for that).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::hashing::hash_file;
    use tokio_util::sync::CancellationToken;

    fn hashed(dir: &Path, name: &str, content: &[u8]) -> HashedFile {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        hash_file(&path, name, &CancellationToken::new()).unwrap()
    }

    #[test]
    fn saves_and_loads_and_ignores_what_it_cannot_trust() {
        let dir = tempfile::tempdir().unwrap();
        let index = ShareIndex::in_data_dir(dir.path());
        assert!(index.load().unwrap().files.is_empty(), "none yet");
        let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let files = vec![
            hashed(dir.path(), "a.txt", b"hello"),
            hashed(dir.path(), "big.bin", &big),
        ];
        index.save(&files).unwrap();
        assert!(index.path().starts_with(dir.path().join(STATE_DIR)));
        let loaded = index.load().unwrap();
        assert_eq!(loaded.dropped, 0);
        assert_eq!(loaded.files.len(), 2);
        assert_eq!(loaded.files["big.bin"], files[1]);
        assert!(!index.path().with_extension("json.tmp").exists());

        // An entry whose manifest does not hold together is left out, the others kept.
        let mut raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(index.path()).unwrap()).unwrap();
        raw["files"][1]["manifest"]["size"] = 5.into();
        std::fs::write(index.path(), serde_json::to_vec(&raw).unwrap()).unwrap();
        let loaded = index.load().unwrap();
        assert_eq!((loaded.files.len(), loaded.dropped), (1, 1));
        assert!(loaded.files.contains_key("a.txt"));

        // Garbage, a cut-off file and another format are errors, never a partial index.
        std::fs::write(index.path(), b"\x00garbage").unwrap();
        assert!(matches!(index.load(), Err(IndexError::Corrupt { .. })));
        let whole = serde_json::to_vec(&IndexOut {
            format: FORMAT,
            files: &files,
        })
        .unwrap();
        std::fs::write(index.path(), &whole[..whole.len() / 2]).unwrap();
        assert!(matches!(index.load(), Err(IndexError::Corrupt { .. })));
        std::fs::write(index.path(), br#"{"format":99,"files":[]}"#).unwrap();
        assert!(matches!(
            index.load(),
            Err(IndexError::Format { found: 99, .. })
        ));
    }
}
