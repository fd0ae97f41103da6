//! One download of a file per data dir, across processes: `<data>/.p2p/downloads/<id>.lock`,
//! locked (an advisory lock: `flock` on Unix, `LockFileEx` on Windows) by the process that
//! downloads the file, for as long as it does. Another process (a second `p2p-download`, a
//! shell) finds it locked and waits; the lock file tells it who holds it (its pid), and,
//! once the holder completed the file, where the file went.
//!
//! The protocol, which keeps two holders apart even as lock files come and go:
//! - the holder writes its record (its pid) into the locked file;
//! - on completion it writes where the file went with the file's [`FileStamp`], removes the
//!   lock file, then lets go of the lock: a waiter, which opened the old file, reads that record
//!   and ends with the file (when its stamp is unchanged: the content verified by the holder);
//!   a later download creates a new lock file;
//! - a holder that fails also removes the file before letting go; one that dies (killed, a
//!   crash) leaves it, the kernel releases its lock, and the next download takes the file over
//!   and resumes from the partial data ([`super::PartialDownload`]);
//! - whoever gets the lock checks that its file is still the one at the path (not removed or
//!   replaced meanwhile), else opens the path again.
//!
//! A lock file left behind is harmless: nobody holds its lock, and a record of a completed
//! file is believed only while the file keeps its stamp. The folder is hidden (never shared)
//! and holds at most one small file per download in progress or killed.

use std::fs::{File, TryLockError};
use std::io::Read;
use std::path::{Path, PathBuf};

use p2p_proto::Manifest;
use serde::{Deserialize, Serialize};

use super::index::STATE_DIR;
use super::stamp::FileStamp;

/// The lock files' folder inside the state folder.
const LOCK_DIR: &str = "downloads";
/// Most bytes of a lock file read (its record holds a pid, a path and a stamp).
const MAX_RECORD: u64 = 64 << 10;
/// Most times the path is opened again when the file locked was removed or replaced meanwhile.
const MAX_REOPENS: usize = 8;

/// Why the lock of a download could not be taken or kept.
#[derive(Debug, thiserror::Error)]
#[error("download lock {path}: {source}")]
pub struct LockError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    done: Option<Done>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Done {
    path: PathBuf,
    stamp: FileStamp,
}

/// Who holds a download's lock, as its lock file says (nothing when it could not be read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
}

/// What trying to take a download's lock gave.
#[derive(Debug)]
pub enum LockAttempt {
    /// This process downloads the file, holding the lock until the [`DownloadLock`] is dropped
    /// or [`DownloadLock::completed`].
    Acquired(DownloadLock),
    /// Another download completed the file: it is at this path, unchanged since.
    Completed { path: PathBuf, by: Holder },
    /// Another process is downloading the file; [`BusyLock::retry`] later.
    Busy(BusyLock),
}

/// The lock of a download this process holds.
#[derive(Debug)]
pub struct DownloadLock {
    file: Option<File>,
    path: PathBuf,
}

/// The lock of a download another process holds.
#[derive(Debug)]
pub struct BusyLock {
    file: File,
    path: PathBuf,
    holder: Holder,
}

fn at(path: &Path) -> impl Fn(std::io::Error) -> LockError + '_ {
    move |source| LockError {
        path: path.to_owned(),
        source,
    }
}

/// The lock file of `manifest`'s download into `data_dir`.
pub fn lock_path(data_dir: &Path, manifest: &Manifest) -> PathBuf {
    data_dir
        .join(STATE_DIR)
        .join(LOCK_DIR)
        .join(format!("{}.lock", manifest.id))
}

/// Tries once to take the lock of `manifest`'s download into `data_dir`. Blocking (a few small
/// file operations; it never waits for the lock).
pub fn try_lock_download(data_dir: &Path, manifest: &Manifest) -> Result<LockAttempt, LockError> {
    let path = lock_path(data_dir, manifest);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(at(dir))?;
    }
    attempt(open(&path)?, path, 0)
}

impl BusyLock {
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// Tries again to take the lock. Blocking, like [`try_lock_download`].
    pub fn retry(self) -> Result<LockAttempt, LockError> {
        attempt(self.file, self.path, 0)
    }
}

fn open(path: &Path) -> Result<File, LockError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(at(path))
}

fn attempt(file: File, path: PathBuf, reopens: usize) -> Result<LockAttempt, LockError> {
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = Holder {
                pid: read_record(&file).map(|r| r.pid),
            };
            return Ok(LockAttempt::Busy(BusyLock { file, path, holder }));
        }
        // A file system without locks: downloads here cannot see each other (as before).
        Err(TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            tracing::warn!(path = %path.display(), "no file locks here; another process may download the same file at once");
            return Ok(LockAttempt::Acquired(DownloadLock {
                file: Some(file),
                path,
            }));
        }
        Err(TryLockError::Error(e)) => return Err(at(&path)(e)),
    }
    let record = read_record(&file);
    if let Some(record) = &record
        && let Some(done) = &record.done
        && std::fs::metadata(&done.path).is_ok_and(|m| FileStamp::of(&m) == done.stamp)
    {
        return Ok(LockAttempt::Completed {
            path: done.path.clone(),
            by: Holder {
                pid: Some(record.pid),
            },
        });
    }
    // Removed (or replaced) while we waited: the lock that counts is the one at the path.
    if !same_file(&file, &path) && reopens < MAX_REOPENS {
        drop(file);
        return attempt(open(&path)?, path, reopens + 1);
    }
    let mine = Record {
        pid: std::process::id(),
        done: None,
    };
    write_record(&file, &mine).map_err(at(&path))?;
    Ok(LockAttempt::Acquired(DownloadLock {
        file: Some(file),
        path,
    }))
}

impl DownloadLock {
    /// Records that the file is complete at `completed` (for those waiting), removes the lock
    /// file and lets go of the lock. Blocking.
    pub fn completed(mut self, completed: &Path) -> Result<(), LockError> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        // Waiters may run elsewhere (another working directory): the full path.
        let full = std::fs::canonicalize(completed).map_err(at(completed))?;
        let meta = std::fs::metadata(&full).map_err(at(&full))?;
        let record = Record {
            pid: std::process::id(),
            done: Some(Done {
                path: full,
                stamp: FileStamp::of(&meta),
            }),
        };
        let written = write_record(&file, &record).map_err(at(&self.path));
        remove_if_same(&file, &self.path);
        written
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DownloadLock {
    /// A download that ends without completing removes its lock file before letting go: a
    /// waiter then opens the path again and takes over.
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            remove_if_same(&file, &self.path);
        }
    }
}

/// Removes the lock file at `path` if it is still `file`.
fn remove_if_same(file: &File, path: &Path) {
    if same_file(file, path)
        && let Err(e) = std::fs::remove_file(path)
    {
        tracing::debug!(path = %path.display(), error = %e, "cannot remove the download's lock file");
    }
}

/// Whether `path` names the open `file` (same device and inode).
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => FileStamp::of(&a).inode == FileStamp::of(&b).inode,
        _ => false,
    }
}

fn read_record(file: &File) -> Option<Record> {
    let mut raw = Vec::new();
    let mut reader = file.try_clone().ok()?;
    std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(0)).ok()?;
    reader.take(MAX_RECORD).read_to_end(&mut raw).ok()?;
    serde_json::from_slice(&raw).ok()
}

fn write_record(file: &File, record: &Record) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let mut writer = file.try_clone()?;
    writer.set_len(0)?;
    writer.seek(std::io::SeekFrom::Start(0))?;
    writer.write_all(&json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest::of_bytes("f.bin", b"hello", p2p_proto::CHUNK_SIZE).unwrap()
    }

    #[test]
    fn one_holder_a_waiter_sees_the_completed_file_and_a_dead_holders_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest();
        let LockAttempt::Acquired(first) = try_lock_download(dir.path(), &m).unwrap() else {
            panic!("the first takes the lock");
        };
        let LockAttempt::Busy(waiting) = try_lock_download(dir.path(), &m).unwrap() else {
            panic!("the second finds it held");
        };
        assert_eq!(waiting.holder().pid, Some(std::process::id()));
        let LockAttempt::Busy(waiting) = waiting.retry().unwrap() else {
            panic!("still held");
        };
        let done = dir.path().join("f.bin");
        std::fs::write(&done, b"hello").unwrap();
        first.completed(&done).unwrap();
        assert!(!lock_path(dir.path(), &m).exists(), "removed on completion");
        let LockAttempt::Completed { path, by } = waiting.retry().unwrap() else {
            panic!("the waiter sees the completed file");
        };
        assert_eq!(path, std::fs::canonicalize(&done).unwrap());
        assert_eq!(by.pid, Some(std::process::id()));

        // A later download takes a fresh lock.
        let LockAttempt::Acquired(again) = try_lock_download(dir.path(), &m).unwrap() else {
            panic!("a later download downloads");
        };
        // One that fails removes its file before letting go: the waiter takes over.
        let LockAttempt::Busy(waiting) = try_lock_download(dir.path(), &m).unwrap() else {
            panic!("held");
        };
        drop(again);
        let LockAttempt::Acquired(taken) = waiting.retry().unwrap() else {
            panic!("the waiter takes over");
        };
        assert!(
            lock_path(dir.path(), &m).exists(),
            "the path is locked again"
        );
        let LockAttempt::Busy(_) = try_lock_download(dir.path(), &m).unwrap() else {
            panic!("and held by the one that took over");
        };
        // A holder that died leaves its file with a record; the next one takes it over.
        let mut taken = taken;
        drop(taken.file.take());
        drop(taken);
        let stale = lock_path(dir.path(), &m);
        std::fs::write(&stale, br#"{"pid":1}"#).unwrap();
        assert!(matches!(
            try_lock_download(dir.path(), &m).unwrap(),
            LockAttempt::Acquired(_)
        ));
    }

    #[test]
    fn a_record_of_a_completed_file_is_believed_only_while_the_file_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest();
        let done = dir.path().join("f.bin");
        std::fs::write(&done, b"hello").unwrap();
        let stamp = FileStamp::of(&std::fs::metadata(&done).unwrap());
        let record = Record {
            pid: 1,
            done: Some(Done {
                path: done.clone(),
                stamp,
            }),
        };
        let lock = lock_path(dir.path(), &m);
        std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
        std::fs::write(&lock, serde_json::to_vec(&record).unwrap()).unwrap();
        assert!(matches!(
            try_lock_download(dir.path(), &m).unwrap(),
            LockAttempt::Completed { .. }
        ));
        std::fs::write(&done, b"HELLO").unwrap();
        std::fs::write(&lock, serde_json::to_vec(&record).unwrap()).unwrap();
        assert!(matches!(
            try_lock_download(dir.path(), &m).unwrap(),
            LockAttempt::Acquired(_)
        ));
        // Garbage is no record.
        std::fs::write(&lock, b"\x00garbage").unwrap();
        assert!(matches!(
            try_lock_download(dir.path(), &m).unwrap(),
            LockAttempt::Acquired(_)
        ));
    }
}
