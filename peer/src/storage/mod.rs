//! Files on disk: hashing files into manifests, the library of shared files, partial
//! downloads with their resume state, file versions ([`FileStamp`]) and the shared folder's
//! persisted index.

mod hashing;
mod index;
mod inline;
mod library;
mod partial;
mod stamp;
mod visibility;

pub use hashing::{hash_file, manifest_for_file, manifest_with_chunk_size};
pub use index::{IndexError, LoadedIndex, STATE_DIR, ShareIndex};
pub use inline::InlineIo;
pub use library::{ChunkBuf, Library, LibraryError};
pub(crate) use partial::candidate_names;
pub use partial::{PartialDownload, PartialError, ResumeSnapshot, VerifiedChunk, safe_file_name};
pub use stamp::{FileStamp, HashedFile, SETTLE, Timestamp};
pub use visibility::{Visibility, VisibilityError};

/// Whether a file of this name in a shared folder is one to share: not hidden (`.partial/`,
/// `.p2p/`), not the node's key, not a file being written (`.tmp`).
pub fn shareable_name(name: &str) -> bool {
    !name.starts_with('.') && name != crate::identity::KEY_FILE && !name.ends_with(".tmp")
}
