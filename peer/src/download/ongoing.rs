//! Downloads under way in this process, one per file and folder: a second download of a file
//! already being downloaded into the same folder waits for the first and, when that one
//! completes, ends with its file (rather than writing the same partial file at once and
//! failing at completion). When the first fails, the next waiting one takes over.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use p2p_proto::FileId;
use parking_lot::Mutex;
use tokio::sync::watch;

/// Where a completed download went; `None` while it runs.
type Outcome = Option<PathBuf>;

type Key = (PathBuf, FileId);

static ONGOING: LazyLock<Mutex<HashMap<Key, watch::Receiver<Outcome>>>> =
    LazyLock::new(Mutex::default);

/// The one download of a file into a folder, until dropped.
#[derive(Debug)]
pub(super) struct Claim {
    key: Key,
    done: watch::Sender<Outcome>,
}

impl Claim {
    /// Tells whoever waits that the file is complete at `path`.
    pub(super) fn completed(&self, path: PathBuf) {
        self.done.send_replace(Some(path));
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        ONGOING.lock().remove(&self.key);
    }
}

/// The folder as a key: two spellings of one folder are one folder.
fn key(data_dir: &Path, file: FileId) -> Key {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    (dir, file)
}

/// Claims the download of `file` into `data_dir`; while another download holds it, waits for
/// that one (saying so once) and returns `Err(path)` with its file when it completes.
pub(super) async fn claim(data_dir: &Path, file: FileId) -> Result<Claim, PathBuf> {
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
                    return Ok(Claim { key, done });
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
        let first = claim(dir.path(), file).await.unwrap();
        let second = tokio::spawn({
            let dir = dir.path().to_owned();
            async move { claim(&dir, file).await }
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        first.completed(dir.path().join("f.bin"));
        assert_eq!(second.await.unwrap().unwrap_err(), dir.path().join("f.bin"));
        drop(first);

        // The first fails (its claim dropped without completing): the waiting one takes over.
        let first = claim(dir.path(), file).await.unwrap();
        let second = tokio::spawn({
            let dir = dir.path().to_owned();
            async move { claim(&dir, file).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        drop(first);
        assert!(second.await.unwrap().is_ok());
    }
}
