//! Daemon mode's folder watch: new or changed files in the data dir are shared once they have
//! stopped changing (a file still being copied in is not hashed half-way).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::node::is_shareable;

/// How long a file must stay unchanged before it is shared.
pub const SETTLE: Duration = Duration::from_millis(800);

/// Why the folder cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {path}: {source}")]
pub struct WatchError {
    path: PathBuf,
    #[source]
    source: notify::Error,
}

fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

/// Watches `dir` and sends each shareable file that settled after a change. Stops on
/// `shutdown`.
pub fn watch(
    dir: &Path,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<PathBuf>, WatchError> {
    let (events_tx, mut events) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            for path in event.paths {
                let _ = events_tx.send(path);
            }
        }
    })
    .map_err(|source| WatchError {
        path: dir.to_owned(),
        source,
    })?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError {
            path: dir.to_owned(),
            source,
        })?;
    let (out_tx, out) = mpsc::channel(64);
    tokio::spawn(async move {
        let _watcher = watcher; // kept alive for as long as the task runs
        let mut pending: HashMap<PathBuf, (Option<(u64, SystemTime)>, Instant)> = HashMap::new();
        let mut tick = tokio::time::interval(SETTLE / 4);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(path) = events.recv() => {
                    pending.insert(path.clone(), (stamp(&path), Instant::now()));
                }
                _ = tick.tick() => {
                    let mut ready = Vec::new();
                    pending.retain(|path, (seen, since)| {
                        let now = stamp(path);
                        if now.is_none() {
                            return false; // deleted
                        }
                        if now != *seen {
                            *seen = now;
                            *since = Instant::now();
                            return true;
                        }
                        if since.elapsed() >= SETTLE {
                            if is_shareable(path) {
                                ready.push(path.clone());
                            }
                            return false;
                        }
                        true
                    });
                    for path in ready {
                        if out_tx.send(path).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_new_files_once_settled_and_skips_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let mut rx = watch(dir.path(), stop.clone()).unwrap();
        std::fs::write(dir.path().join(".partial-ish"), b"x").unwrap();
        std::fs::write(dir.path().join("new.iso"), b"content").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.file_name().unwrap(), "new.iso");
        stop.cancel();
    }
}
