//! Sharing a folder: its files hashed into the library (a file already there at the same
//! version is not hashed again), its collection built, stored in
//! `<data>/.p2p/collections/<id>.p2p-folder` and offered as a file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use p2p_proto::FileId;
use p2p_proto::collection::{Collection, Entry, MAX_FOLDER_NAME_LEN};
use tokio_util::sync::CancellationToken;

use super::scan::{FileFound, scan};
use super::{FolderError, io};
use crate::storage::{FileStamp, HashedFile, Library, STATE_DIR, hash_file};

/// Where a peer keeps the encodings of the collections it shares or downloaded.
pub fn collections_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_DIR).join("collections")
}

/// A folder on offer.
#[derive(Debug)]
pub struct SharedFolder {
    /// The collection's id (the id of its encoding, shared as a file).
    pub id: FileId,
    pub collection: Collection,
    /// Each file on disk with its id.
    pub members: Vec<(PathBuf, FileId)>,
    /// What was left out (path, why): symlinks, hidden names…
    pub skipped: Vec<(PathBuf, &'static str)>,
}

/// Shares the folder `dir` as a collection (see the module docs). `data_dir` keeps the
/// collection's encoding.
pub async fn share_folder(
    library: &Arc<Library>,
    data_dir: &Path,
    dir: &Path,
) -> Result<SharedFolder, FolderError> {
    let dir = std::fs::canonicalize(dir).map_err(io(dir))?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.len() <= MAX_FOLDER_NAME_LEN)
        .ok_or_else(|| FolderError::NoName(dir.clone()))?
        .to_owned();
    let scanned = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || scan(&dir))
            .await
            .map_err(|_| FolderError::Task)??
    };
    let parallelism = std::thread::available_parallelism().map_or(2, usize::from);
    let files: Vec<(String, PathBuf, FileFound)> = scanned
        .found
        .iter()
        .filter_map(|f| f.file.map(|file| (f.rel.clone(), f.path.clone(), file)))
        .collect();
    let mut hashed = futures_util::stream::iter(files)
        .map(|(rel, path, file)| {
            let library = library.clone();
            async move {
                let id = file_id(&library, &path).await;
                (rel, path, id.map(|id| (id, file)))
            }
        })
        .buffer_unordered(parallelism);
    let mut entries: Vec<Entry> = scanned
        .found
        .iter()
        .filter(|f| f.file.is_none())
        .map(|f| Entry::empty_dir(f.rel.clone()))
        .collect();
    let mut members = Vec::new();
    while let Some((rel, path, result)) = hashed.next().await {
        let (id, file) = result?;
        entries.push(Entry::file(rel, id, file.len, file.executable));
        members.push((path, id));
    }
    members.sort();
    let collection = Collection::new(&name, entries)?;
    let id = offer_collection(library, data_dir, &collection).await?;
    Ok(SharedFolder {
        id,
        collection,
        members,
        skipped: scanned.skipped,
    })
}

/// The id of the file at `path`, offered in the library: from the library when it offers
/// this version of the file already, else hashed (off the reactor). An empty file is not
/// offered (a downloader creates it without asking anyone).
async fn file_id(library: &Library, path: &Path) -> Result<FileId, FolderError> {
    if let Some(id) = library.paths().get(path)
        && let Some(known) = library.hashed(id)
        && FileStamp::read(path).is_ok_and(|now| known.still_matches(&now))
    {
        return Ok(*id);
    }
    let hashed = hash_blocking(path.to_owned()).await?;
    let id = hashed.manifest.id;
    if hashed.manifest.size > 0 {
        library.offer(path.to_owned(), hashed);
    }
    Ok(id)
}

async fn hash_blocking(path: PathBuf) -> Result<HashedFile, FolderError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| FolderError::NoName(path.clone()))?
        .to_owned();
    tokio::task::spawn_blocking(move || {
        hash_file(&path, &name, &CancellationToken::new()).map_err(io(&path))
    })
    .await
    .map_err(|_| FolderError::Task)?
}

/// Stores the collection's encoding (written once per id, atomically) and offers it as the file
/// `<folder>.p2p-folder`.
pub(super) async fn offer_collection(
    library: &Library,
    data_dir: &Path,
    collection: &Collection,
) -> Result<FileId, FolderError> {
    let id = collection.id();
    let dir = collections_dir(data_dir);
    let path = dir.join(format!("{id}.p2p-folder"));
    let bytes = collection.encode();
    let stored = path.clone();
    tokio::task::spawn_blocking(move || store(&dir, &stored, &bytes))
        .await
        .map_err(|_| FolderError::Task)??;
    let name = collection.manifest_name();
    let hashed = tokio::task::spawn_blocking(move || {
        hash_file(&path, &name, &CancellationToken::new()).map(|h| (path, h))
    })
    .await
    .map_err(|_| FolderError::Task)?;
    let (path, hashed) = hashed.map_err(io(collections_dir(data_dir)))?;
    library.offer(path, hashed);
    Ok(id)
}

/// Writes `bytes` to `path` unless it holds them already (a temporary file, then a rename).
fn store(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), FolderError> {
    if std::fs::read(path).is_ok_and(|b| b == bytes) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_is_hashed_once_and_its_collection_offered_as_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("photos");
        std::fs::create_dir_all(folder.join("2026/empty")).unwrap();
        std::fs::write(folder.join("2026/a.jpg"), b"aaaa").unwrap();
        std::fs::write(folder.join("same.jpg"), b"aaaa").unwrap();
        std::fs::write(folder.join("nothing"), b"").unwrap();
        let data = dir.path().join("data");
        let library = Arc::new(Library::new());
        let shared = share_folder(&library, &data, &folder).await.unwrap();
        let c = &shared.collection;
        assert_eq!(c.name(), "photos");
        let paths: Vec<&str> = c.entries().iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["2026/a.jpg", "2026/empty", "nothing", "same.jpg"]);
        // The same content at two paths is one file in the library; the empty file is none.
        let blob = library.get(&shared.id).unwrap();
        assert_eq!(blob.manifest.name, "photos.p2p-folder");
        assert_eq!(
            std::fs::read(blob.path()).unwrap(),
            c.encode(),
            "the offered file is the encoding"
        );
        assert_eq!(library.list().len(), 2, "the collection and one member");
        // Sharing again gives the same id.
        let again = share_folder(&library, &data, &folder).await.unwrap();
        assert_eq!(again.id, shared.id);
    }
}
