//! The folder watch: which files directly in a folder may have a new content or name, from the
//! system's notifications (inotify on Linux).
//!
//! Only events that can change content or names count: creation, writes, a close after
//! writing, renames and removals. Reads, opens and closes after reading do not, nor do
//! metadata changes (permissions, `touch`), so sharing or serving a file (which reads it) never
//! reports it again. Hidden names (the peer's own `.partial/` and `.p2p/`, editors' temporary
//! files) are left out. Changed names are gathered in a set until taken, so a file written in
//! a million small writes is one entry; past [`MAX_CHANGED`] names the set gives way to one
//! "look at everything" ([`Changes::Rescan`]), as does an overflow of the system's queue.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Most changed names held before the watch asks for a rescan instead.
pub const MAX_CHANGED: usize = 65_536;

/// Why the folder cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {source}")]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

/// What changed in the folder since it was last asked.
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    /// These files (by path) may have a new content or name, or be gone.
    Paths(Vec<PathBuf>),
    /// Events were lost (or the folder itself changed): look at every file.
    Rescan,
}

#[derive(Debug, Default)]
struct Pending {
    paths: HashSet<PathBuf>,
    rescan: bool,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Notify,
}

impl Shared {
    /// Notes `event`: with `subfolders`, a change anywhere below `dir` counts as a change of
    /// the name directly in `dir` it lies under.
    fn note(&self, dir: &Path, subfolders: bool, event: notify::Result<notify::Event>) {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::debug!(error = %e, "folder watch error; looking at the whole folder");
                return self.rescan();
            }
        };
        if event.need_rescan() {
            return self.rescan();
        }
        if !changes_content_or_name(&event.kind) {
            return;
        }
        let mut pending = self.pending.lock();
        let mut noted = false;
        for path in event.paths {
            let path = match subfolders.then(|| top_level(dir, &path)) {
                Some(Some(top)) => top,
                _ => path,
            };
            if path.parent() != Some(dir) {
                // The folder itself was removed or moved: only a full look tells what is left.
                pending.rescan |= path == dir;
                noted |= path == dir;
                continue;
            }
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden || pending.rescan {
                continue;
            }
            if pending.paths.len() >= MAX_CHANGED {
                pending.paths = HashSet::new();
                pending.rescan = true;
            } else {
                pending.paths.insert(path);
            }
            noted = true;
        }
        drop(pending);
        if noted {
            self.wake.notify_one();
        }
    }

    fn rescan(&self) {
        {
            let mut pending = self.pending.lock();
            pending.paths = HashSet::new();
            pending.rescan = true;
        }
        self.wake.notify_one();
    }
}

/// Whether an event of this kind can mean a new content or name.
pub fn changes_content_or_name(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(
            ModifyKind::Data(_)
            | ModifyKind::Name(_)
            | ModifyKind::Any
            | ModifyKind::Metadata(MetadataKind::WriteTime),
        ) => true,
        EventKind::Modify(ModifyKind::Metadata(_) | ModifyKind::Other) => false,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        // A backend that cannot tell: better one look too many (it costs a `stat`).
        EventKind::Any => true,
        EventKind::Other => false,
    }
}

/// The name directly in `dir` that `path` lies under (itself, or a subfolder's).
fn top_level(dir: &Path, path: &Path) -> Option<PathBuf> {
    let first = path.strip_prefix(dir).ok()?.components().next()?;
    Some(dir.join(first))
}

/// A running watch of one folder (not its subfolders, unless started with
/// [`FolderWatch::start_subfolders`]). Dropping it stops the watch.
pub struct FolderWatch {
    _watcher: RecommendedWatcher,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FolderWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderWatch").finish_non_exhaustive()
    }
}

impl FolderWatch {
    /// Starts watching `dir`; changes from now on are reported by [`FolderWatch::changed`].
    pub fn start(dir: &Path) -> Result<Self, WatchError> {
        Self::start_with(dir, false)
    }

    /// Starts watching `dir` and everything below it; a change below a subfolder is reported
    /// as a change of that subfolder (the name directly in `dir`), so a folder share knows
    /// which of its collections to look at again. Hidden names are left out at the top level.
    pub fn start_subfolders(dir: &Path) -> Result<Self, WatchError> {
        Self::start_with(dir, true)
    }

    fn start_with(dir: &Path, subfolders: bool) -> Result<Self, WatchError> {
        let error = |source| WatchError {
            path: dir.to_owned(),
            source,
        };
        // Events name files under the folder's full path (`./data` is watched as
        // `/home/me/data`): compare them with that.
        let dir = &dir
            .canonicalize()
            .map_err(|e| error(notify::Error::io(e)))?;
        let shared = Arc::new(Shared::default());
        let mut watcher = {
            let (shared, dir) = (shared.clone(), dir.to_owned());
            notify::recommended_watcher(move |event| shared.note(&dir, subfolders, event))
                .map_err(error)?
        };
        let mode = if subfolders {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        watcher.watch(dir, mode).map_err(error)?;
        Ok(Self {
            _watcher: watcher,
            shared,
        })
    }

    /// Waits until something changed, then takes what changed since the last call.
    pub async fn changed(&self) -> Changes {
        loop {
            if let Some(changes) = self.take() {
                return changes;
            }
            self.shared.wake.notified().await;
        }
    }

    fn take(&self) -> Option<Changes> {
        let mut pending = self.shared.pending.lock();
        if std::mem::take(&mut pending.rescan) {
            pending.paths = HashSet::new();
            return Some(Changes::Rescan);
        }
        if pending.paths.is_empty() {
            return None;
        }
        Some(Changes::Paths(
            std::mem::take(&mut pending.paths).into_iter().collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use notify::event::{CreateKind, DataChange, RemoveKind, RenameMode};

    use super::*;

    #[test]
    fn reads_and_metadata_do_not_count() {
        let counts = [
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ];
        let ignored = [
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Permissions)),
        ];
        for kind in counts {
            assert!(changes_content_or_name(&kind), "{kind:?}");
        }
        for kind in ignored {
            assert!(!changes_content_or_name(&kind), "{kind:?}");
        }
    }

    /// Takes what changed until `want` shows up; returns every path seen on the way.
    async fn until(watch: &FolderWatch, want: &Path) -> Vec<PathBuf> {
        let mut seen = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match watch.changed().await {
                    Changes::Paths(paths) => seen.extend(paths),
                    Changes::Rescan => panic!("unexpected rescan"),
                }
                if seen.iter().any(|p| p == want) {
                    return;
                }
            }
        })
        .await
        .expect("the change was reported");
        seen
    }

    #[tokio::test]
    async fn reports_writes_renames_and_removals_but_not_reads_or_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        let watch = FolderWatch::start(dir.path()).unwrap();
        let (a, b) = (dir.path().join("a.iso"), dir.path().join("b.iso"));
        std::fs::write(dir.path().join(".partial-ish"), b"x").unwrap();
        std::fs::write(&a, b"content").unwrap();
        // Writing a file is several events (create, write, close); a marker written after it
        // is reported only once all of them were noted (events arrive in order).
        let settled = dir.path().join("settled");
        std::fs::write(&settled, b"s").unwrap();
        let seen = until(&watch, &settled).await;
        assert!(seen.contains(&a), "{seen:?}");
        assert!(seen.iter().all(|p| p == &a || p == &settled), "{seen:?}");

        // Reading it (as hashing and serving do) reports nothing: what comes before the marker
        // written after the reads is at most the tail of the first marker's own events.
        for _ in 0..3 {
            let mut s = String::new();
            std::fs::File::open(&a)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
        }
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).unwrap();
        let marker = dir.path().join("marker");
        std::fs::write(&marker, b"m").unwrap();
        let seen = until(&watch, &marker).await;
        assert!(
            seen.iter().all(|p| p == &marker || p == &settled),
            "{seen:?}"
        );

        std::fs::rename(&a, &b).unwrap();
        let seen = until(&watch, &b).await;
        assert!(seen.contains(&a), "the old name is reported too: {seen:?}");
        std::fs::remove_file(&b).unwrap();
        until(&watch, &b).await;
    }

    /// `--data ./data` (the default) names the folder relatively; events name it in full.
    #[tokio::test]
    async fn a_folder_named_relatively_reports_its_files() {
        let dir = tempfile::tempdir_in(".").unwrap();
        let relative = Path::new(".").join(dir.path().file_name().unwrap());
        let watch = FolderWatch::start(&relative).unwrap();
        std::fs::write(relative.join("new.iso"), b"content").unwrap();
        let full = dir.path().canonicalize().unwrap().join("new.iso");
        until(&watch, &full).await;
    }
}
