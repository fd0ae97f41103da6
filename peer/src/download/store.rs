//! Verifying and writing received chunks, and saving the resume state while a download runs.

use std::sync::Arc;
use std::time::Duration;

use p2p_proto::Manifest;
use p2p_proto::manifest::ChunkError;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::WorkerError;
use crate::storage::{PartialDownload, VerifiedChunk};

/// The partial file of a download, taken out when the download finishes.
pub(super) type Partial = Arc<Mutex<Option<PartialDownload>>>;

/// What became of a received chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stored {
    /// Verified and written: this peer's contribution.
    Written,
    /// Verified, but another peer's copy was written first (the endgame) or the download is
    /// over.
    Duplicate,
    /// It does not match its hash.
    Bad,
}

/// A received chunk's index, its length and what became of it.
pub(super) type StoreOutcome = (u64, u64, Result<Stored, WorkerError>);

/// The blocking work of storing chunks that arrived together: their hashes are checked
/// together (interleaved, see [`p2p_proto::sha256_lanes`]) before the download's lock is
/// taken, then the good ones are written. The caller runs it in place or on the blocking pool
/// (see [`crate::storage::InlineIo`]).
pub(super) fn store_chunks(
    manifest: Arc<Manifest>,
    partial: Partial,
    chunks: Vec<(u64, bytes::Bytes)>,
) -> impl FnOnce() -> Vec<StoreOutcome> + Send + 'static {
    move || {
        let lens: Vec<u64> = chunks.iter().map(|(_, d)| d.len() as u64).collect();
        VerifiedChunk::check_all(&manifest, chunks)
            .into_iter()
            .zip(lens)
            .map(|((index, checked), len)| {
                let outcome = match checked {
                    Ok(chunk) => write_chunk(&partial, index, &chunk),
                    Err(e @ ChunkError::Inconsistent(_)) => Err(WorkerError::BadManifest(e)),
                    Err(_) => Ok(Stored::Bad),
                };
                (index, len, outcome)
            })
            .collect()
    }
}

/// Writes a verified chunk into the download, unless it is there already or the download is
/// over.
fn write_chunk(
    partial: &Mutex<Option<PartialDownload>>,
    index: u64,
    chunk: &VerifiedChunk,
) -> Result<Stored, WorkerError> {
    let mut guard = partial.lock();
    let Some(p) = guard.as_mut() else {
        return Ok(Stored::Duplicate); // the download is over
    };
    if p.have().get(index) {
        return Ok(Stored::Duplicate);
    }
    p.write_verified(chunk)
        .map_err(|e| WorkerError::Disk(Arc::new(e)))?;
    Ok(Stored::Written)
}

/// How often the resume state is saved while a download runs: at most this much work is
/// fetched again after a crash.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Saves the resume state every [`SAVE_EVERY`] until `stop` (the final save is the caller's),
/// flushing outside the download's lock.
pub(super) async fn save_periodically(partial: Partial, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SAVE_EVERY);
    tick.tick().await;
    let mut saved = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snapshot = match partial.lock().as_ref() {
            Some(p) => {
                let written = Some(p.have().count_ones());
                if saved == written {
                    continue; // nothing new since the last save
                }
                saved = written;
                p.snapshot()
            }
            None => continue,
        };
        let result = tokio::task::spawn_blocking(move || snapshot?.save()).await;
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "cannot save the resume state");
        }
    }
}
