//! Downloading a collection: its encoding (a small file, at most
//! [`p2p_proto::collection::MAX_ENCODED_LEN`] bytes, refused before the download when its
//! manifest says more), decoded and checked, then its tree recreated (see [`super::tree`]).
//!
//! Each member file is downloaded as any file is (with its resume state in `.partial/`), one
//! after the other, finishing straight into its place in the tree. A member this peer already
//! has whole (another collection's, or an earlier path of this one) is hard-linked from where
//! it is (copied where links cannot be made, or where the executable bits differ), so it is
//! stored and served once; a file an earlier folder download placed (listed in
//! `<data>/.p2p/collections/<id>.placed`) is linked too once it hashes to its id. Empty files are created without asking anyone (their id is the id
//! of empty content).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use p2p_proto::collection::{Collection, EntryKind, MAX_ENCODED_LEN};
use p2p_proto::{FileId, Manifest};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::share::collections_dir;
use super::tree::{Tree, holds, is_executable, place_copy, place_empty, set_executable};
use super::{FolderError, io};
use crate::download::Contributions;
use crate::net::PeerAddr;
use crate::node::{FetchError, Peer};
use crate::storage::{FileStamp, Library, hash_file};

/// How far a folder download got, readable while it runs (for a progress bar).
#[derive(Debug, Default)]
pub struct FolderProgress {
    /// Bytes of all files of the collection (known once its list is in).
    total: AtomicU64,
    /// Bytes of the files in place.
    placed: AtomicU64,
    /// The file being downloaded.
    current: Mutex<Option<Manifest>>,
}

impl FolderProgress {
    /// Bytes of all files together; 0 until the collection's list is in.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Bytes in place so far, counting the verified chunks of the file being downloaded.
    pub fn position(&self, library: &Library) -> u64 {
        let current = self.current.lock().clone();
        let partial = current
            .and_then(|m| {
                let entry = library.get(&m.id)?;
                let have = entry.have();
                Some(
                    (0..have.len())
                        .filter(|&i| have.get(i))
                        .map(|i| u64::from(m.chunk_len(i)))
                        .sum::<u64>(),
                )
            })
            .unwrap_or(0);
        self.placed.load(Ordering::Relaxed) + partial
    }

    fn add_placed(&self, bytes: u64) {
        self.placed.fetch_add(bytes, Ordering::Relaxed);
        *self.current.lock() = None;
    }
}

/// A folder in place.
#[derive(Debug, Clone)]
pub struct FolderReport {
    /// The collection's id.
    pub id: FileId,
    /// Where the tree is.
    pub root: PathBuf,
    pub files: u64,
    pub empty_dirs: u64,
    pub bytes: u64,
    /// Files downloaded in this run.
    pub downloaded: u64,
    /// Files linked or copied from a copy this peer had.
    pub linked: u64,
    /// Files placed by an earlier run.
    pub resumed: u64,
    pub elapsed: Duration,
}

/// Downloads the collection whose encoding `manifest` describes (found with its `sources`) and
/// recreates its tree in the data dir.
pub async fn fetch_folder(
    peer: &Peer,
    manifest: &Manifest,
    sources: &[PeerAddr],
    progress: &FolderProgress,
    contributions: Arc<Contributions>,
) -> Result<FolderReport, FolderError> {
    let started = Instant::now();
    let (collection, encoding) = fetch_list(peer, manifest, sources, contributions.clone()).await?;
    // A link's read grant for the folder covers its list only; the tracker grants its files.
    let members = peer
        .member_routes(&manifest.id, encoding)
        .await
        .map_err(FolderError::MemberGrants)?;
    progress
        .total
        .store(collection.total_size(), Ordering::Relaxed);
    let (data_dir, id) = (peer.node.data_dir.clone(), manifest.id);
    let name = collection.name().to_owned();
    let mut tree = blocking(move || Tree::open(&data_dir, &id, &name)).await?;
    tracing::info!(
        folder = %tree.root().display(),
        files = collection.files().count(),
        bytes = collection.total_size(),
        "downloading a folder"
    );
    let mut report = FolderReport {
        id,
        root: tree.root().to_owned(),
        files: 0,
        empty_dirs: 0,
        bytes: collection.total_size(),
        downloaded: 0,
        linked: 0,
        resumed: 0,
        elapsed: Duration::ZERO,
    };
    let earlier = {
        let data_dir = peer.node.data_dir.clone();
        blocking(move || Ok(placed_before(&data_dir))).await?
    };
    let mut placed_now = Vec::new();
    for entry in collection.entries() {
        let EntryKind::File {
            id,
            size,
            executable,
        } = entry.kind
        else {
            tree.dir(&entry.path)?;
            report.empty_dirs += 1;
            continue;
        };
        report.files += 1;
        if tree.is_done(&entry.path) {
            report.resumed += 1;
            progress.add_placed(size);
            continue;
        }
        let (dir, name) = tree.file_target(&entry.path, &id)?;
        let target = dir.join(&name);
        let placed = if tree.resumed() && blocking_holds(&target, id, size).await {
            report.resumed += 1;
            target
        } else if size == 0 {
            blocking(move || place_empty(&dir, &name)).await?
        } else if let Some(from) = copy_here(&peer.node.library, &earlier, id, size).await {
            report.linked += 1;
            let link = is_executable(&from) == executable;
            blocking(move || place_copy(&from, &dir, &name, link)).await?
        } else {
            report.downloaded += 1;
            let _route = members.as_ref().and_then(|m| m.follow(&id));
            fetch_member(peer, &entry.path, id, dir, name, progress, &contributions).await?
        };
        if executable {
            set_executable(&placed)?;
        }
        tree.mark_done(&entry.path)?;
        progress.add_placed(size);
        if size > 0 {
            placed_now.push((id, placed));
        }
    }
    let data_dir = peer.node.data_dir.clone();
    blocking(move || record_placed(&data_dir, &id, &placed_now)).await?;
    tree.finish();
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The collection and its encoding: from `<data>/.p2p/collections/` when an earlier run
/// stored it (its bytes checked against the id), else downloaded there; offered in the library
/// either way.
async fn fetch_list(
    peer: &Peer,
    manifest: &Manifest,
    sources: &[PeerAddr],
    contributions: Arc<Contributions>,
) -> Result<(Collection, Vec<u8>), FolderError> {
    if manifest.size > MAX_ENCODED_LEN as u64 {
        return Err(FolderError::TooLarge {
            size: manifest.size,
        });
    }
    let dir = collections_dir(&peer.node.data_dir);
    let stored = dir.join(format!("{}.p2p-folder", manifest.id));
    let id = manifest.id;
    let path = stored.clone();
    let have = blocking(move || {
        let bytes = match std::fs::read(&path) {
            Ok(bytes) if bytes.len() <= MAX_ENCODED_LEN => bytes,
            _ => return Ok(None),
        };
        Ok((<[u8; 32]>::from(Sha256::digest(&bytes)) == id.0).then_some(bytes))
    })
    .await?;
    let bytes = match have {
        Some(bytes) => bytes,
        None => {
            let mut list = manifest.clone();
            list.name = format!("{}.p2p-folder", manifest.id);
            let report = peer
                .download_to(&list, sources, contributions, Some(dir.clone()))
                .await
                .map_err(FolderError::List)?;
            let path = report.path;
            if path != stored {
                // Another download of the list here completed it elsewhere.
                let (from, to) = (path.clone(), stored.clone());
                blocking(move || std::fs::copy(&from, &to).map_err(io(&to))).await?;
            }
            let path = stored.clone();
            blocking(move || std::fs::read(&path).map_err(io(&path))).await?
        }
    };
    let collection = Collection::decode(&bytes)?;
    // Offered under the sharer's name (the download named it by id).
    let name = collection.manifest_name();
    let hashed = blocking(move || {
        hash_file(&stored, &name, &CancellationToken::new())
            .map_err(io(&stored))
            .map(|h| (stored, h))
    })
    .await?;
    peer.node.library.offer(hashed.0, hashed.1);
    Ok((collection, bytes))
}

/// Where this peer has the whole content of `id` (`size` bytes): a file the library offers at
/// the version it checked, or one that hashes to `id` now (the library's at another version,
/// or one an earlier folder download placed).
async fn copy_here(
    library: &Library,
    earlier: &HashMap<FileId, PathBuf>,
    id: FileId,
    size: u64,
) -> Option<PathBuf> {
    let offered = library.get(&id).map(|e| e.path());
    if let (Some(hashed), Some(path)) = (library.hashed(&id), &offered)
        && FileStamp::read(path).is_ok_and(|now| now == hashed.stamp)
    {
        return Some(path.clone());
    }
    for path in offered.into_iter().chain(earlier.get(&id).cloned()) {
        if blocking_holds(&path, id, size).await {
            return Some(path);
        }
    }
    None
}

/// Most records of earlier folder downloads read, and their largest size.
const MAX_RECORDS: usize = 1000;
const MAX_RECORD_LEN: u64 = 32 << 20;

/// Notes where the files of collection `id` were placed (`<collections>/<id>.placed`), so a
/// later folder download with the same content links it instead of fetching it again.
fn record_placed(
    data_dir: &Path,
    id: &FileId,
    placed: &[(FileId, PathBuf)],
) -> Result<(), FolderError> {
    let path = collections_dir(data_dir).join(format!("{id}.placed"));
    let json = serde_json::to_vec(placed).map_err(|e| io(&path)(e.into()))?;
    let tmp = path.with_extension("placed.tmp");
    std::fs::write(&tmp, json).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

/// The files earlier folder downloads placed, by id (checked by hashing before use).
fn placed_before(data_dir: &Path) -> HashMap<FileId, PathBuf> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(collections_dir(data_dir)) else {
        return out;
    };
    let records = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "placed"))
        .take(MAX_RECORDS);
    for record in records {
        let small = std::fs::metadata(&record).is_ok_and(|m| m.len() <= MAX_RECORD_LEN);
        let Some(placed) = small
            .then(|| std::fs::read(&record).ok())
            .flatten()
            .and_then(|raw| serde_json::from_slice::<Vec<(FileId, PathBuf)>>(&raw).ok())
        else {
            continue;
        };
        out.extend(placed);
    }
    out
}

/// Downloads member `id` (at the collection's `path`) into `dir` as `name`, trying further
/// manifest variants when one fails as [`crate::download::DownloadError::variant_failed`] says.
async fn fetch_member(
    peer: &Peer,
    path: &str,
    id: FileId,
    dir: PathBuf,
    name: String,
    progress: &FolderProgress,
    contributions: &Arc<Contributions>,
) -> Result<PathBuf, FolderError> {
    let member = |source: FetchError| FolderError::Member {
        path: path.to_owned(),
        source,
    };
    let found = peer.find(&id).await.map_err(member)?;
    let (mut manifest, mut sources, mut fallbacks) =
        (found.manifest, found.sources, found.fallbacks);
    loop {
        // Finished under its name in the tree, whatever the sharer called it.
        manifest.name.clone_from(&name);
        *progress.current.lock() = Some(manifest.clone());
        match peer
            .download_to(
                &manifest,
                &sources,
                contributions.clone(),
                Some(dir.clone()),
            )
            .await
        {
            Ok(report) if report.path.parent() == Some(dir.as_path()) => return Ok(report.path),
            // Another download of this file here completed it elsewhere: linked into place.
            Ok(report) => {
                let from = report.path;
                return blocking(move || place_copy(&from, &dir, &name, true)).await;
            }
            Err(e) if e.variant_failed() => {
                let Some((next, more)) = peer.next_variant(&id, &mut fallbacks).await else {
                    return Err(member(e.into()));
                };
                tracing::warn!(file = %id, error = %e, "trying another manifest announced for it");
                (manifest, sources) = (next, more);
            }
            Err(e) => return Err(member(e.into())),
        }
    }
}

async fn blocking_holds(target: &Path, id: FileId, size: u64) -> bool {
    let target = target.to_owned();
    tokio::task::spawn_blocking(move || holds(&target, &id, size))
        .await
        .unwrap_or(false)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, FolderError> + Send + 'static,
) -> Result<T, FolderError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| FolderError::Task)?
}
