//! Files on disk: hashing files into manifests, the library of shared files, and partial
//! downloads with their resume state.

mod hashing;
mod inline;
mod library;
mod partial;

pub use hashing::{manifest_for_file, manifest_with_chunk_size};
pub use inline::InlineIo;
pub use library::{ChunkBuf, Library, LibraryError};
pub use partial::{PartialDownload, PartialError, ResumeSnapshot, VerifiedChunk, safe_file_name};
