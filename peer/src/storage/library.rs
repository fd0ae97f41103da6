//! The files this peer offers: complete shared files and partial downloads, by id.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use p2p_proto::manifest::hash_chunk;
use p2p_proto::{Bitfield, FileId, Manifest};

use super::hashing::manifest_for_file;

/// Why a chunk cannot be served or a file cannot be shared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LibraryError {
    #[error("file {0} is not shared here")]
    UnknownFile(FileId),
    #[error("chunk {index} of {file} is not here (yet)")]
    NotAvailable { file: FileId, index: u64 },
    #[error("chunk {index} of {file} no longer matches its hash: the file changed on disk")]
    Changed { file: FileId, index: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} has no usable file name")]
    NoName(PathBuf),
    #[error("background task failed")]
    Task,
}

/// One file on offer.
#[derive(Debug)]
pub struct SharedFile {
    pub manifest: Manifest,
    path: RwLock<PathBuf>,
    have: RwLock<Bitfield>,
}

impl SharedFile {
    pub fn have(&self) -> Bitfield {
        self.have.read().map(|h| h.clone()).unwrap_or_default()
    }

    pub fn path(&self) -> PathBuf {
        self.path.read().map(|p| p.clone()).unwrap_or_default()
    }
}

/// All files on offer.
#[derive(Debug)]
pub struct Library {
    files: RwLock<HashMap<FileId, Arc<SharedFile>>>,
    /// Chunks that became available, for telling connected peers (`Have`).
    haves: tokio::sync::broadcast::Sender<(FileId, u64)>,
}

impl Default for Library {
    fn default() -> Self {
        Self {
            files: RwLock::default(),
            haves: tokio::sync::broadcast::channel(4096).0,
        }
    }
}

impl Library {
    pub fn new() -> Self {
        Self::default()
    }

    /// Newly available chunks of partial files, as they are verified.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<(FileId, u64)> {
        self.haves.subscribe()
    }

    /// Hashes the file at `path` (off the reactor) and offers it whole.
    pub async fn share(&self, path: &Path) -> Result<Manifest, LibraryError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| LibraryError::NoName(path.to_owned()))?
            .to_owned();
        let owned = path.to_owned();
        let manifest = tokio::task::spawn_blocking(move || manifest_for_file(&owned, &name))
            .await
            .map_err(|_| LibraryError::Task)?
            .map_err(|source| LibraryError::Io {
                path: path.to_owned(),
                source,
            })?;
        self.insert(
            manifest.clone(),
            path.to_owned(),
            Bitfield::full(manifest.chunk_count()),
        );
        Ok(manifest)
    }

    /// Offers a file (whole or partial) whose manifest is already known.
    pub fn insert(&self, manifest: Manifest, path: PathBuf, have: Bitfield) -> Arc<SharedFile> {
        let entry = Arc::new(SharedFile {
            manifest,
            path: RwLock::new(path),
            have: RwLock::new(have),
        });
        if let Ok(mut files) = self.files.write() {
            files.insert(entry.manifest.id, entry.clone());
        }
        entry
    }

    pub fn get(&self, id: &FileId) -> Option<Arc<SharedFile>> {
        self.files.read().ok()?.get(id).cloned()
    }

    /// Manifests of everything on offer.
    pub fn list(&self) -> Vec<(Manifest, Bitfield)> {
        self.files
            .read()
            .map(|f| f.values().map(|e| (e.manifest.clone(), e.have())).collect())
            .unwrap_or_default()
    }

    /// Records a newly verified chunk of a partial download.
    pub fn mark_have(&self, id: &FileId, index: u64) {
        if let Some(entry) = self.get(id)
            && let Ok(mut have) = entry.have.write()
        {
            have.set(index);
            let _ = self.haves.send((*id, index));
        }
    }

    /// A finished download now lives at `path`.
    pub fn completed(&self, id: &FileId, path: PathBuf) {
        if let Some(entry) = self.get(id) {
            if let Ok(mut p) = entry.path.write() {
                *p = path;
            }
            if let Ok(mut have) = entry.have.write() {
                *have = Bitfield::full(entry.manifest.chunk_count());
            }
        }
    }

    /// Reads chunk `index` and checks it against the manifest before it is served.
    pub async fn read_chunk(&self, id: &FileId, index: u64) -> Result<Bytes, LibraryError> {
        let entry = self.get(id).ok_or(LibraryError::UnknownFile(*id))?;
        if !entry.have().get(index) {
            return Err(LibraryError::NotAvailable { file: *id, index });
        }
        let path = entry.path();
        let m = &entry.manifest;
        let (offset, len) = (index * u64::from(m.chunk_size), m.chunk_len(index) as usize);
        let expected = m.chunk_hashes[index as usize];
        let file = *id;
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            read_at(&path, offset, &mut buf).map_err(|source| LibraryError::Io {
                path: path.clone(),
                source,
            })?;
            if hash_chunk(&buf) != expected {
                return Err(LibraryError::Changed { file, index });
            }
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|_| LibraryError::Task)?
    }
}

fn read_at(path: &Path, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(&file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = file;
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_verified_chunks_and_notices_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let lib = Library::new();
        let m = lib.share(&path).await.unwrap();
        assert_eq!(m.name, "a.bin");
        let chunk = lib.read_chunk(&m.id, 2).await.unwrap();
        assert_eq!(&chunk[..], &data[2 * 262_144..]);
        assert!(matches!(
            lib.read_chunk(&FileId([0; 32]), 0).await,
            Err(LibraryError::UnknownFile(_))
        ));
        // Someone edits the file after it was shared: the changed chunk is not served.
        let mut changed = data.clone();
        changed[10] ^= 0xff;
        std::fs::write(&path, &changed).unwrap();
        assert!(matches!(
            lib.read_chunk(&m.id, 0).await,
            Err(LibraryError::Changed { .. })
        ));
        assert!(lib.read_chunk(&m.id, 1).await.is_ok());
    }
}
