//! Files on disk: hashing files into manifests, the library of shared files, and partial
//! downloads with their resume state.

mod hashing;
mod library;
mod partial;

pub use hashing::{hash_file, manifest_for_file};
pub use library::{Library, LibraryError};
pub use partial::{
    PartialDownload, PartialError, PrefixHash, ResumeSnapshot, WholeFileHasher, chunk_matches,
    safe_file_name,
};
