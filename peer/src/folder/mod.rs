//! Folder shares: a folder shared and downloaded as one collection
//! ([`p2p_proto::collection`]).
//!
//! A collection's encoding is itself shared as an ordinary small file (named
//! `<folder>.p2p-folder`, kept in `<data>/.p2p/collections/`), so announcing, looking up and
//! transferring it use the file protocol unchanged; each member is an ordinary shared file.
//! The library holds each file id once, so a file in several collections (or at several paths
//! of one) is stored and served once.
//!
//! - [`scan`]: walking a folder: regular files and empty directories; symlinks are never
//!   followed, hidden names and names a collection cannot carry are left out (and reported).
//! - [`share`]: hashing a folder's files into the library and sharing its collection.
//! - [`tree`]: recreating a collection's tree under the data dir: every component sanitised,
//!   nothing outside the folder created, no symlink followed or made, nothing overwritten,
//!   resumable across files.
//! - [`watched`]: the daemon's subfolders, each shared as a collection and shared again when
//!   something in it changes.
//! - [`unshare`]: unsharing a folder: its collection, and the members no other shared
//!   collection has and that are not shared on their own.
//! - [`fetch`]: downloading a collection: its encoding, then each member file (linked from
//!   the library when this peer has it already), with one progress figure over the total.

use std::path::PathBuf;

use p2p_proto::collection::CollectionError;

use crate::download::DownloadError;
use crate::node::FetchError;
use crate::storage::LibraryError;

mod fetch;
mod scan;
mod share;
mod tree;
mod unshare;
mod watched;

pub use fetch::{FolderProgress, FolderReport, fetch_folder};
pub use share::{SharedFolder, collections_dir, share_folder};
pub use unshare::{UnsharedFolder, unshare_folder};
pub use watched::share_subfolders;

/// Why a folder could not be shared or downloaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FolderError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} has no usable folder name")]
    NoName(PathBuf),
    #[error("{path} has more than {max} files and folders", max = p2p_proto::collection::MAX_ENTRIES)]
    TooManyEntries { path: PathBuf },
    #[error("{path} is nested deeper than {max} folders", max = p2p_proto::collection::MAX_DEPTH)]
    TooDeep { path: PathBuf },
    #[error("not a valid folder collection: {0}")]
    Collection(#[from] CollectionError),
    #[error(
        "the collection is {size} bytes, over the {max}-byte limit for a folder's list",
        max = p2p_proto::collection::MAX_ENCODED_LEN
    )]
    TooLarge { size: u64 },
    #[error(transparent)]
    Library(#[from] LibraryError),
    #[error("cannot download the folder's list: {0}")]
    List(#[source] DownloadError),
    #[error("cannot get read grants for the folder's files")]
    MemberGrants(#[source] crate::tracker_client::TrackerError),
    #[error("{path}: {source}")]
    Member {
        path: String,
        #[source]
        source: FetchError,
    },
    #[error("background task failed")]
    Task,
}

fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FolderError {
    let path = path.into();
    move |source| FolderError::Io { path, source }
}
