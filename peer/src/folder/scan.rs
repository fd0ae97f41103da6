//! Walking a folder to share: its regular files and empty directories, by relative path.
//!
//! Symlinks are never followed (a link to `/etc` in a shared folder shares nothing of it) and
//! are left out, as are other special files, hidden names (the peer's own `.p2p/` and
//! `.partial/` among them), the peer's key and files being written (`*.tmp`), names that are
//! not UTF-8 and names a collection cannot carry (a backslash, a control character). Each is
//! reported, so the user knows what was not shared. A directory with nothing shared in it is
//! listed as an empty directory.

use std::path::{Path, PathBuf};

use p2p_proto::collection::{self, MAX_DEPTH, MAX_ENTRIES};

use super::{FolderError, io};
use crate::storage::shareable_name;

/// A file or empty directory found in the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Found {
    /// The path relative to the folder, `/`-separated.
    pub rel: String,
    pub path: PathBuf,
    /// `None` for an empty directory.
    pub file: Option<FileFound>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileFound {
    pub len: u64,
    pub executable: bool,
}

/// What a walk found, and what it left out (path, why).
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub found: Vec<Found>,
    pub skipped: Vec<(PathBuf, &'static str)>,
}

/// Walks `dir` (blocking). Fails past [`MAX_ENTRIES`] entries or [`MAX_DEPTH`] levels.
pub(super) fn scan(dir: &Path) -> Result<Scan, FolderError> {
    let mut scan = Scan::default();
    walk(dir, "", 0, &mut scan)?;
    Ok(scan)
}

/// Walks `dir` (at `rel`, `depth` levels down); returns whether anything in it was found.
fn walk(dir: &Path, rel: &str, depth: usize, scan: &mut Scan) -> Result<bool, FolderError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        names.push((entry.file_name(), entry.path()));
    }
    names.sort();
    let mut any = false;
    for (name, path) in names {
        let Some(name) = name.to_str() else {
            scan.skipped.push((path, "the name is not UTF-8"));
            continue;
        };
        if !shareable_name(name) {
            scan.skipped
                .push((path, "hidden, a temporary file or the peer's key"));
            continue;
        }
        let child = if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{rel}/{name}")
        };
        if collection::validate_path(&child).is_err() {
            scan.skipped
                .push((path, "a name a folder share cannot carry"));
            continue;
        }
        // Not followed: the link itself is looked at.
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            scan.skipped
                .push((path, "a symbolic link (never followed)"));
            continue;
        }
        if kind.is_dir() {
            if depth + 1 >= MAX_DEPTH {
                return Err(FolderError::TooDeep { path });
            }
            if !walk(&path, &child, depth + 1, scan)? {
                push(scan, child, path, None)?;
            }
            any = true;
        } else if kind.is_file() {
            let file = FileFound {
                len: meta.len(),
                executable: executable(&meta),
            };
            push(scan, child, path, Some(file))?;
            any = true;
        } else {
            scan.skipped.push((path, "not a regular file"));
        }
    }
    Ok(any)
}

fn push(
    scan: &mut Scan,
    rel: String,
    path: PathBuf,
    file: Option<FileFound>,
) -> Result<(), FolderError> {
    if scan.found.len() >= MAX_ENTRIES {
        return Err(FolderError::TooManyEntries { path });
    }
    scan.found.push(Found { rel, path, file });
    Ok(())
}

#[cfg(unix)]
fn executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn executable(_meta: &std::fs::Metadata) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_empty_dirs_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("share");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("empty/inner")).unwrap();
        std::fs::create_dir_all(root.join("only-hidden")).unwrap();
        std::fs::write(root.join("a/b/deep.txt"), b"deep").unwrap();
        std::fs::write(root.join("top"), b"top").unwrap();
        std::fs::write(root.join(".hidden"), b"no").unwrap();
        std::fs::write(root.join("only-hidden/.x"), b"no").unwrap();
        std::fs::write(dir.path().join("outside"), b"secret").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("outside"), root.join("link")).unwrap();
            std::os::unix::fs::symlink(dir.path(), root.join("dirlink")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(root.join("top"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let scan = scan(&root).unwrap();
        let found: Vec<(&str, Option<FileFound>)> = scan
            .found
            .iter()
            .map(|f| (f.rel.as_str(), f.file))
            .collect();
        let file = |len, executable| Some(FileFound { len, executable });
        assert_eq!(
            found,
            vec![
                ("a/b/deep.txt", file(4, false)),
                ("empty/inner", None),
                ("only-hidden", None),
                ("top", file(3, cfg!(unix))),
            ]
        );
        let skipped: Vec<String> = scan
            .skipped
            .iter()
            .map(|(p, _)| p.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        #[cfg(unix)]
        assert!(skipped.contains(&"link".to_owned()) && skipped.contains(&"dirlink".to_owned()));
        assert!(skipped.contains(&".hidden".to_owned()), "{skipped:?}");
    }
}
