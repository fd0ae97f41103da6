//! The daemon's subfolders: each folder directly in the shared folder is shared as one
//! collection and kept in step with what is in it.
//!
//! At start every subfolder is shared ([`share_folder`]: a file the library offers at the same
//! version is not hashed again). A watch over the whole tree reports in which subfolder
//! something changed (content or names, never reads); once that subfolder has been quiet for
//! [`QUIET`] it is shared again: its new collection goes on offer, files that left it are no
//! longer served (unless another subfolder has the same content, which is then served from
//! there), and the old collection is withdrawn when its id changed. A subfolder that goes away
//! takes its collection and files with it. Hidden subfolders (the peer's `.p2p/` and
//! `.partial/`) and symlinks are never shared.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::FileId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::share::{SharedFolder, share_folder};
use super::{FolderError, io};
use crate::storage::shareable_name;
use crate::storage::{Library, hash_file};
use crate::watch::{Changes, FolderWatch};

/// How long a subfolder must go without changes before it is shared again.
const QUIET: Duration = Duration::from_secs(2);

/// A subfolder on offer.
#[derive(Debug)]
struct Offered {
    id: FileId,
    /// Where the collection's encoding is offered from.
    list: PathBuf,
    members: Vec<(PathBuf, FileId)>,
}

/// Shares the subfolders of `share_dir` until `stop` (see the module docs); `announce` tells
/// the tracker and the DHT without waiting.
pub async fn share_subfolders(
    share_dir: PathBuf,
    data_dir: PathBuf,
    library: Arc<Library>,
    announce: Arc<dyn Fn() + Send + Sync>,
    stop: CancellationToken,
) -> Result<(), FolderError> {
    let watch = FolderWatch::start_subfolders(&share_dir).map_err(|e| FolderError::Io {
        path: share_dir.clone(),
        source: std::io::Error::other(e),
    })?;
    let share_dir = std::fs::canonicalize(&share_dir).map_err(io(&share_dir))?;
    let mut subfolders = Subfolders {
        share_dir,
        data_dir,
        library,
        offered: HashMap::new(),
    };
    let names = subfolders.names()?;
    for name in names {
        subfolders.look(&name).await;
    }
    announce();
    let mut pending: HashMap<String, Instant> = HashMap::new();
    loop {
        let next = pending.values().min().map(|t| *t + QUIET);
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            changes = watch.changed() => {
                let names = match changes {
                    Changes::Paths(paths) => paths
                        .iter()
                        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
                        .collect(),
                    Changes::Rescan => {
                        let mut names = subfolders.names()?;
                        names.extend(subfolders.offered.keys().cloned());
                        names
                    }
                };
                for name in names {
                    pending.insert(name, Instant::now());
                }
            }
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                let due: Vec<String> = pending
                    .iter()
                    .filter(|(_, t)| now >= **t + QUIET)
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in due {
                    pending.remove(&name);
                    subfolders.look(&name).await;
                }
                announce();
            }
        }
    }
}

struct Subfolders {
    share_dir: PathBuf,
    data_dir: PathBuf,
    library: Arc<Library>,
    offered: HashMap<String, Offered>,
}

impl Subfolders {
    /// The names of the shareable subfolders (not symlinks to folders).
    fn names(&self) -> Result<Vec<String>, FolderError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.share_dir).map_err(io(&self.share_dir))? {
            let Ok(entry) = entry else { continue };
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if self.is_subfolder(&name) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn is_subfolder(&self, name: &str) -> bool {
        shareable_name(name)
            && std::fs::symlink_metadata(self.share_dir.join(name)).is_ok_and(|m| m.is_dir())
    }

    /// Shares the subfolder `name` again, or withdraws it when it is gone.
    async fn look(&mut self, name: &str) {
        let old = self.offered.remove(name);
        if !self.is_subfolder(name) {
            if let Some(old) = old {
                tracing::info!(folder = name, id = %old.id, "daemon: folder no longer shared");
                self.library.unshare(&old.id, &old.list);
                self.release(&old, &[]).await;
            }
            return;
        }
        let path = self.share_dir.join(name);
        match share_folder(&self.library, &self.data_dir, &path).await {
            Ok(shared) => {
                let new = offered(&shared, &self.data_dir);
                if let Some(old) = &old {
                    self.release(old, &new.members).await;
                    if old.id != new.id {
                        self.library.unshare(&old.id, &old.list);
                    }
                }
                if old.as_ref().is_none_or(|o| o.id != new.id) {
                    tracing::info!(
                        folder = name,
                        id = %new.id,
                        files = shared.collection.files().count(),
                        bytes = shared.collection.total_size(),
                        "daemon: sharing folder"
                    );
                }
                self.offered.insert(name.to_owned(), new);
            }
            Err(e) => {
                tracing::warn!(folder = %path.display(), error = %e, "cannot share the folder");
                if let Some(old) = old {
                    self.library.unshare(&old.id, &old.list);
                    self.release(&old, &[]).await;
                }
            }
        }
    }

    /// Stops serving the members of `old` that `kept` does not list; a content another
    /// subfolder also has is served from there.
    async fn release(&self, old: &Offered, kept: &[(PathBuf, FileId)]) {
        for (path, id) in &old.members {
            if kept.iter().any(|(p, i)| p == path && i == id) {
                continue;
            }
            if !self.library.unshare(id, path) {
                continue;
            }
            let elsewhere = self
                .offered
                .values()
                .flat_map(|o| &o.members)
                .chain(kept)
                .find(|(_, i)| i == id)
                .map(|(p, _)| p.clone());
            if let Some(other) = elsewhere {
                let library = self.library.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let name = other.file_name()?.to_str()?.to_owned();
                    let hashed = hash_file(&other, &name, &CancellationToken::new()).ok()?;
                    library.offer(other, hashed);
                    Some(())
                })
                .await;
            }
        }
    }
}

fn offered(shared: &SharedFolder, data_dir: &Path) -> Offered {
    Offered {
        id: shared.id,
        list: super::collections_dir(data_dir).join(format!("{}.p2p-folder", shared.id)),
        members: shared.members.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of what the library offers, sorted.
    fn offered(library: &Library) -> Vec<String> {
        let mut names: Vec<String> = library.list().into_iter().map(|(m, _)| m.name).collect();
        names.sort();
        names
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subfolders_are_shared_again_when_they_change_and_withdrawn_when_gone() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().to_owned();
        std::fs::create_dir_all(share.join("docs/inner")).unwrap();
        std::fs::write(share.join("docs/inner/a.txt"), b"first").unwrap();
        std::fs::create_dir_all(share.join(".p2p")).unwrap();
        let library = Arc::new(Library::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn(share_subfolders(
            share.clone(),
            share.clone(),
            library.clone(),
            Arc::new(|| {}),
            stop.clone(),
        ));
        until("docs is shared", || offered(&library).len() == 2).await;
        assert_eq!(offered(&library), ["a.txt", "docs.p2p-folder"]);
        let first = library.list();
        let first_list = first
            .iter()
            .find(|(m, _)| m.name == "docs.p2p-folder")
            .map(|(m, _)| m.id)
            .unwrap();

        // A file added deep inside: a new collection, the old one withdrawn.
        std::fs::write(share.join("docs/inner/b.txt"), b"second").unwrap();
        until("docs is shared again", || {
            offered(&library) == ["a.txt", "b.txt", "docs.p2p-folder"]
                && library.get(&first_list).is_none()
        })
        .await;

        // The folder removed: nothing of it is served any more.
        std::fs::remove_dir_all(share.join("docs")).unwrap();
        until("docs is withdrawn", || library.list().is_empty()).await;
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
