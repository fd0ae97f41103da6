//! Files on disk: hashing files into manifests, the library of shared files, partial
//! downloads with their resume state and their lock across processes ([`try_lock_download`]),
//! file versions ([`FileStamp`]), the shared folder's persisted index and the peer's other
//! state files (public files, pinned tracker keys).

mod download_lock;
mod hashing;
mod index;
mod inline;
mod library;
mod partial;
mod stamp;
mod tracker_pins;
mod visibility;

pub use download_lock::{
    BusyLock, DownloadLock, Holder, LockAttempt, LockError, lock_path, try_lock_download,
};
pub use hashing::{hash_file, manifest_for_file, manifest_with_chunk_size};
pub use index::{IndexError, LoadedIndex, STATE_DIR, ShareIndex};
pub use inline::InlineIo;
pub use library::{ChunkBuf, Library, LibraryError};
pub(crate) use partial::candidate_names;
pub use partial::{
    Completion, PartialDownload, PartialError, ResumeSnapshot, VerifiedChunk, safe_file_name,
};
pub use stamp::{FileStamp, HashedFile, SETTLE, Timestamp};
pub use tracker_pins::{PinFile, PinsError, TrackerPin};
pub use visibility::{Visibility, VisibilityError};

/// Whether a file of this name in a shared folder is one to share: not hidden (`.partial/`,
/// `.p2p/`), not the node's key, not a file being written (`.tmp`).
pub fn shareable_name(name: &str) -> bool {
    !name.starts_with('.') && name != crate::identity::KEY_FILE && !name.ends_with(".tmp")
}

/// Replaces the file at `path` with `bytes` atomically: written beside it (`<path>.tmp`),
/// flushed, renamed over it, and the folder flushed (best effort), creating the folder if
/// needed. A crash leaves the old file or the new one, never a mix. Blocking.
pub(crate) fn replace_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
