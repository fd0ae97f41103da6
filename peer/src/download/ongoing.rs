//! One download per file and data dir: a second download of a file already being downloaded
//! into the same data dir waits for the first and, when that one completes, ends with its file
//! (rather than writing the same partial file at once and failing at completion). When the
//! first fails, the next waiting one takes over (resuming what it wrote).
//!
//! Inside one process the downloads under way are a map; across processes (two
//! `p2p-download`, a shell and a `p2p-download`) the download holds its lock file
//! ([`crate::storage::try_lock_download`]) for as long as it runs, which the other process
//! polls every [`POLL`], saying once why it waits. A process that dies lets go of its lock,
//! and the waiting one resumes from the partial data. There is no time limit: the first
//! download may rightly take hours; the wait ends with it (or Ctrl-C).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use p2p_proto::{FileId, Manifest};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::storage::{DownloadLock, LockAttempt, LockError, safe_file_name, try_lock_download};

/// How often the lock of a download another process holds is tried again.
const POLL: Duration = Duration::from_millis(200);
/// How often a waiting download says again that it waits.
const REMIND_EVERY: Duration = Duration::from_secs(60);
/// How long a waiting download holds back its first message while the lock file names no
/// holder yet: the holder writes its pid right after taking the lock.
const NAMED_WITHIN: Duration = Duration::from_secs(2);

/// Where a completed download went; `None` while it runs.
type Outcome = Option<PathBuf>;

type Key = (PathBuf, FileId);

static ONGOING: LazyLock<Mutex<HashMap<Key, watch::Receiver<Outcome>>>> =
    LazyLock::new(Mutex::default);

/// The one download of a file into a folder, until dropped.
#[derive(Debug)]
pub(super) struct Claim {
    /// The download's lock across processes (let go of first: a download here that waits
    /// for `local` then finds it free).
    lock: DownloadLock,
    local: LocalClaim,
}

/// The one download of a file into a folder in this process, until dropped.
#[derive(Debug)]
struct LocalClaim {
    key: Key,
    done: watch::Sender<Outcome>,
}

impl LocalClaim {
    /// Tells whoever waits in this process that the file is complete at `path`.
    fn completed(&self, path: PathBuf) {
        self.done.send_replace(Some(path));
    }
}

impl Drop for LocalClaim {
    fn drop(&mut self) {
        ONGOING.lock().remove(&self.key);
    }
}

impl Claim {
    /// Tells whoever waits, here and in other processes, that the file is complete at `path`.
    pub(super) async fn completed(self, path: PathBuf) {
        let Self { lock, local } = self;
        let done = path.clone();
        let recorded = tokio::task::spawn_blocking(move || lock.completed(&done)).await;
        if let Ok(Err(e)) = recorded {
            tracing::warn!(error = %e, "cannot tell other processes where the download went");
        }
        local.completed(path);
    }
}

/// Who completed the file a download ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompletedBy {
    /// Another download in this process.
    ThisProcess,
    /// Another process (its pid when its lock file said).
    Process(Option<u32>),
}

/// A download that found another one of the same file under way and ended with its file.
#[derive(Debug)]
pub(super) struct Joined {
    pub path: PathBuf,
    pub by: CompletedBy,
}

/// Why a download could not be claimed.
#[derive(Debug)]
pub(super) enum NotClaimed {
    /// Another download completed the file.
    Joined(Joined),
    Lock(LockError),
    Task(tokio::task::JoinError),
}

/// The folder as a key: two spellings of one folder are one folder.
fn key(data_dir: &Path, file: FileId) -> Key {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    (dir, file)
}

/// Claims the download of `manifest` into `data_dir`, in this process and across processes;
/// while another download holds it, waits for that one (saying so) and ends with its file when
/// it completes.
pub(super) async fn claim(data_dir: &Path, manifest: &Manifest) -> Result<Claim, NotClaimed> {
    let local = match claim_here(data_dir, manifest.id).await {
        Ok(local) => local,
        Err(path) => {
            return Err(NotClaimed::Joined(Joined {
                path,
                by: CompletedBy::ThisProcess,
            }));
        }
    };
    match lock_across_processes(data_dir, manifest).await {
        Ok(lock) => Ok(Claim { lock, local }),
        Err(NotClaimed::Joined(joined)) => {
            // Those waiting here end with it too.
            local.completed(joined.path.clone());
            Err(NotClaimed::Joined(joined))
        }
        Err(e) => Err(e),
    }
}

/// Takes the lock of `manifest`'s download into `data_dir`, waiting while another process
/// holds it.
async fn lock_across_processes(
    data_dir: &Path,
    manifest: &Manifest,
) -> Result<DownloadLock, NotClaimed> {
    let (dir, m) = (data_dir.to_owned(), manifest.clone());
    // The name as it would be saved: the manifest's own may hold anything.
    let name = safe_file_name(&manifest.name, &manifest.id.to_string());
    let mut attempt = blocking(move || try_lock_download(&dir, &m)).await?;
    let mut told: Option<Instant> = None;
    let started = Instant::now();
    loop {
        let busy = match attempt {
            LockAttempt::Acquired(lock) => {
                if told.is_some() {
                    tracing::info!(file = %name, "the other download ended unfinished; this one goes on from what it wrote");
                }
                return Ok(lock);
            }
            LockAttempt::Completed { path, by } => {
                return Err(NotClaimed::Joined(Joined {
                    path,
                    by: CompletedBy::Process(by.pid),
                }));
            }
            LockAttempt::Busy(busy) => busy,
        };
        let holder = busy.holder().pid;
        let pid = holder.map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}"));
        let named = holder.is_some() || started.elapsed() >= NAMED_WITHIN;
        if named && told.is_none_or(|t| t.elapsed() >= REMIND_EVERY) {
            let waited = started.elapsed().as_secs();
            let still = if told.is_some() { "still " } else { "" };
            tracing::info!(
                "another download of {} ({pid}) is in progress in {}; {still}waiting for it{}",
                name,
                data_dir.display(),
                if waited > 0 {
                    format!(" ({waited} s)")
                } else {
                    String::new()
                },
            );
            told = Some(Instant::now());
        }
        tokio::time::sleep(POLL).await;
        attempt = blocking(move || busy.retry()).await?;
    }
}

/// Runs a lock attempt off the reactor.
async fn blocking(
    f: impl FnOnce() -> Result<LockAttempt, LockError> + Send + 'static,
) -> Result<LockAttempt, NotClaimed> {
    match tokio::task::spawn_blocking(f).await {
        Ok(attempt) => attempt.map_err(NotClaimed::Lock),
        Err(e) => Err(NotClaimed::Task(e)),
    }
}

/// Claims the download of `file` into `data_dir` in this process; while another download
/// here holds it, waits for that one (saying so once) and returns `Err(path)` with its file
/// when it completes.
async fn claim_here(data_dir: &Path, file: FileId) -> Result<LocalClaim, PathBuf> {
    let key = key(data_dir, file);
    let mut told = false;
    loop {
        let mut running = {
            let mut ongoing = ONGOING.lock();
            match ongoing.get(&key) {
                Some(running) => running.clone(),
                None => {
                    let (done, rx) = watch::channel(None);
                    ongoing.insert(key.clone(), rx);
                    return Ok(LocalClaim { key, done });
                }
            }
        };
        if !told {
            tracing::info!(
                %file,
                dir = %data_dir.display(),
                "this file is already being downloaded here; waiting for that download"
            );
            told = true;
        }
        // Completed: its file is ours too. Ended without completing: try to take over.
        if let Ok(outcome) = running.wait_for(Option::is_some).await
            && let Some(path) = outcome.clone()
        {
            return Err(path);
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_download_waits_for_the_first_and_takes_over_when_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let file = FileId([4; 32]);
        let first = claim_here(dir.path(), file).await.unwrap();
        let second = tokio::spawn({
            let dir = dir.path().to_owned();
            async move { claim_here(&dir, file).await }
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        first.completed(dir.path().join("f.bin"));
        assert_eq!(second.await.unwrap().unwrap_err(), dir.path().join("f.bin"));
        drop(first);

        // The first fails (its claim dropped without completing): the waiting one takes over.
        let first = claim_here(dir.path(), file).await.unwrap();
        let second = tokio::spawn({
            let dir = dir.path().to_owned();
            async move { claim_here(&dir, file).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        drop(first);
        assert!(second.await.unwrap().is_ok());
    }
}
