//! Recreating a collection's tree under the data dir.
//!
//! The tree goes into a folder of its own, `<data>/<folder name>` (the name sanitised; `name
//! (1)` and so on when taken), created by this peer. Every path component from the collection
//! is sanitised as a file name from the network is ([`safe_file_name`]: no separators, no
//! `..`, no control or Unicode format characters, no names Windows reserves), so every path
//! stays inside that folder. Directories are created one component at a time and an existing
//! one is used only when it is a real directory (never through a symlink); files are placed
//! under names nobody has (a hard link or a new file, never a rename over something), so
//! nothing is overwritten and no symlink is created. Two paths that sanitise to one name get
//! `name (1)`.
//!
//! Progress is kept in `<data>/.partial/<collection id>.folder`: the tree's folder name, then
//! one line per file placed. A second run continues in the same folder with the files not
//! listed; a file placed but not yet listed (a crash in between) is recognised by its content.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use p2p_proto::FileId;

use super::{FolderError, io};
use crate::storage::{candidate_names, safe_file_name};

/// Most bytes of a progress file read back (its lines are bounded by the collection's caps).
const MAX_LOG_LEN: u64 = 32 << 20;

/// A collection's tree being recreated.
#[derive(Debug)]
pub(super) struct Tree {
    root: PathBuf,
    log_path: PathBuf,
    log: std::fs::File,
    done: HashSet<String>,
    /// Whether an earlier run began this tree.
    resumed: bool,
}

impl Tree {
    /// Continues the tree of collection `id` from an earlier run, or starts one in a new folder
    /// named after `folder_name` in `data_dir` (blocking).
    pub(super) fn open(
        data_dir: &Path,
        id: &FileId,
        folder_name: &str,
    ) -> Result<Self, FolderError> {
        let partial = data_dir.join(".partial");
        std::fs::create_dir_all(&partial).map_err(io(&partial))?;
        let log_path = partial.join(format!("{id}.folder"));
        if let Some((root, done)) = resume(data_dir, &log_path) {
            let log = std::fs::OpenOptions::new()
                .append(true)
                .open(&log_path)
                .map_err(io(&log_path))?;
            return Ok(Self {
                root,
                log_path,
                log,
                done,
                resumed: true,
            });
        }
        let safe = safe_file_name(folder_name, &id.to_string());
        let mut last = None;
        for name in candidate_names(&safe) {
            let root = data_dir.join(&name);
            match std::fs::create_dir(&root) {
                Ok(()) => {
                    let mut log = std::fs::File::create(&log_path).map_err(io(&log_path))?;
                    writeln!(log, "{name}").map_err(io(&log_path))?;
                    return Ok(Self {
                        root,
                        log_path,
                        log,
                        done: HashSet::new(),
                        resumed: false,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some((root, e)),
                Err(e) => return Err(io(root)(e)),
            }
        }
        let (path, source) = last.unwrap_or_else(|| {
            (
                data_dir.join(&safe),
                std::io::ErrorKind::AlreadyExists.into(),
            )
        });
        Err(FolderError::Io { path, source })
    }

    /// The folder the tree is recreated in.
    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    /// Whether an earlier run began this tree (its files not yet listed as placed may be in
    /// place all the same: a crash between placing and listing).
    pub(super) fn resumed(&self) -> bool {
        self.resumed
    }

    /// Whether the file at `path` (the collection's) was placed by an earlier run.
    pub(super) fn is_done(&self, path: &str) -> bool {
        self.done.contains(path)
    }

    /// Records that the file at `path` is in place.
    pub(super) fn mark_done(&mut self, path: &str) -> Result<(), FolderError> {
        writeln!(self.log, "{path}").map_err(io(&self.log_path))?;
        self.done.insert(path.to_owned());
        Ok(())
    }

    /// The directory at the collection's `path` (every component sanitised), created as
    /// needed inside the tree's folder.
    pub(super) fn dir(&self, path: &str) -> Result<PathBuf, FolderError> {
        let mut dir = self.root.clone();
        for component in path.split('/') {
            dir = child_dir(&dir, &safe_file_name(component, "folder"))?;
        }
        Ok(dir)
    }

    /// Where the file at the collection's `path` goes: its directory (created) and its
    /// sanitised name.
    pub(super) fn file_target(
        &self,
        path: &str,
        id: &FileId,
    ) -> Result<(PathBuf, String), FolderError> {
        let (parent, leaf) = match path.rsplit_once('/') {
            Some((parent, leaf)) => (self.dir(parent)?, leaf),
            None => (self.root.clone(), path),
        };
        Ok((parent, safe_file_name(leaf, &id.to_string())))
    }

    /// The tree is complete: its progress file goes.
    pub(super) fn finish(self) {
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// The tree folder and the files placed, from an earlier run's progress file, when that
/// folder is still a real directory of the data dir.
fn resume(data_dir: &Path, log_path: &Path) -> Option<(PathBuf, HashSet<String>)> {
    let meta = std::fs::metadata(log_path).ok()?;
    if meta.len() > MAX_LOG_LEN {
        return None;
    }
    let text = std::fs::read_to_string(log_path).ok()?;
    let mut lines = text.lines();
    let name = lines.next()?;
    // Only a name this peer could have made: one safe component.
    if name.is_empty() || safe_file_name(name, "x") != name {
        return None;
    }
    let root = data_dir.join(name);
    let is_dir = std::fs::symlink_metadata(&root).is_ok_and(|m| m.is_dir());
    is_dir.then(|| (root, lines.map(str::to_owned).collect()))
}

/// `parent/name` as a real directory: the existing one when it is one (not a symlink),
/// created when missing, and the next free of `name (1)`… when something else holds the name.
fn child_dir(parent: &Path, name: &str) -> Result<PathBuf, FolderError> {
    for candidate in candidate_names(name) {
        let dir = parent.join(candidate);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => return Ok(dir),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(dir),
                // Made meanwhile: looked at again.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                        return Ok(dir);
                    }
                }
                Err(e) => return Err(io(dir)(e)),
            },
            Err(e) => return Err(io(dir)(e)),
        }
    }
    Err(FolderError::Io {
        path: parent.join(name),
        source: std::io::ErrorKind::AlreadyExists.into(),
    })
}

/// Puts the content of `from` at `dir/name` or the next free of `name (1)`…: a hard link when
/// `link` and the file system allows (one copy on disk), else a copy into a new file. Never
/// replaces a file. Returns where it went.
pub(super) fn place_copy(
    from: &Path,
    dir: &Path,
    name: &str,
    mut link: bool,
) -> Result<PathBuf, FolderError> {
    for candidate in candidate_names(name) {
        let dest = dir.join(candidate);
        if link {
            match std::fs::hard_link(from, &dest) {
                Ok(()) => return Ok(dest),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(_) => link = false,
            }
        }
        match new_file(&dest)? {
            Some(mut out) => {
                let mut src = std::fs::File::open(from).map_err(io(from))?;
                std::io::copy(&mut src, &mut out).map_err(io(&dest))?;
                out.sync_all().map_err(io(&dest))?;
                return Ok(dest);
            }
            None => continue,
        }
    }
    Err(FolderError::Io {
        path: dir.join(name),
        source: std::io::ErrorKind::AlreadyExists.into(),
    })
}

/// An empty file at `dir/name` or the next free of `name (1)`…
pub(super) fn place_empty(dir: &Path, name: &str) -> Result<PathBuf, FolderError> {
    for candidate in candidate_names(name) {
        let dest = dir.join(candidate);
        if new_file(&dest)?.is_some() {
            return Ok(dest);
        }
    }
    Err(FolderError::Io {
        path: dir.join(name),
        source: std::io::ErrorKind::AlreadyExists.into(),
    })
}

/// A new file at `path`; `None` when the name is taken (by anything, a symlink included).
fn new_file(path: &Path) -> Result<Option<std::fs::File>, FolderError> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Whether the file at `path` (not a symlink) holds exactly the content `id` names.
pub(super) fn holds(path: &Path, id: &FileId, size: u64) -> bool {
    let regular = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == size);
    regular && crate::storage::manifest_for_file(path, "check").is_ok_and(|m| m.id == *id)
}

/// Gives the file at `path` execute permission wherever it has read permission.
#[cfg(unix)]
pub(super) fn set_executable(path: &Path) -> Result<(), FolderError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode();
    let exec = mode | ((mode & 0o444) >> 2);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(exec)).map_err(io(path))
}

#[cfg(not(unix))]
pub(super) fn set_executable(_path: &Path) -> Result<(), FolderError> {
    Ok(())
}

/// Whether the file at `path` is executable (as [`set_executable`] makes it).
#[cfg(unix)]
pub(super) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
pub(super) fn is_executable(_path: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_and_nothing_is_overwritten_or_followed() {
        let data = tempfile::tempdir().unwrap();
        let id = FileId([7; 32]);
        std::fs::create_dir(data.path().join("f")).unwrap();
        let tree = Tree::open(data.path(), &id, "f").unwrap();
        assert_eq!(
            tree.root(),
            data.path().join("f (1)"),
            "an existing folder is not reused"
        );
        // Hostile components are sanitised one by one.
        let d = tree.dir("CON/a\u{202e}b/..x").unwrap();
        assert_eq!(d, tree.root().join("_CON").join("a_b").join("x"));
        let (dir, name) = tree.file_target("sub/NUL.txt", &id).unwrap();
        assert_eq!(
            (dir.clone(), name.as_str()),
            (tree.root().join("sub"), "_NUL.txt")
        );
        // A symlink where a directory should be is not followed.
        #[cfg(unix)]
        {
            let outside = tempfile::tempdir().unwrap();
            std::os::unix::fs::symlink(outside.path(), tree.root().join("evil")).unwrap();
            let d = tree.dir("evil/x").unwrap();
            assert_eq!(d, tree.root().join("evil (1)").join("x"));
            assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
            // Nor where a file goes.
            std::os::unix::fs::symlink(outside.path().join("t"), dir.join("t")).unwrap();
            let placed = place_empty(&dir, "t").unwrap();
            assert_eq!(placed, dir.join("t (1)"));
            assert!(!outside.path().join("t").exists());
        }
        let src = data.path().join("src");
        std::fs::write(&src, b"content").unwrap();
        std::fs::write(dir.join("c"), b"mine").unwrap();
        for link in [true, false] {
            let placed = place_copy(&src, &dir, "c", link).unwrap();
            assert_eq!(std::fs::read(&placed).unwrap(), b"content");
        }
        assert_eq!(std::fs::read(dir.join("c")).unwrap(), b"mine");
    }

    #[test]
    fn a_second_run_continues_in_the_same_folder() {
        let data = tempfile::tempdir().unwrap();
        let id = FileId([9; 32]);
        let mut tree = Tree::open(data.path(), &id, "music").unwrap();
        tree.mark_done("a/b.ogg").unwrap();
        drop(tree);
        let tree = Tree::open(data.path(), &id, "music").unwrap();
        assert_eq!(tree.root(), data.path().join("music"));
        assert!(tree.is_done("a/b.ogg") && !tree.is_done("a/c.ogg"));
        tree.finish();
        // Finished: a new download of the same id makes a new folder.
        let tree = Tree::open(data.path(), &id, "music").unwrap();
        assert_eq!(tree.root(), data.path().join("music (1)"));
        // A progress file naming something outside the data dir is not trusted.
        let log = data.path().join(".partial").join(format!("{id}.folder"));
        std::fs::write(&log, "../../etc\n").unwrap();
        let tree = Tree::open(data.path(), &id, "music").unwrap();
        assert_eq!(tree.root(), data.path().join("music (2)"));
    }
}
