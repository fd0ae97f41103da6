//! Hashing a file into its manifest: one read of the file, memory bounded by a few chunks. The
//! whole-content hash with its chain runs on the calling thread while the chunk hashes run on a
//! second one, so sharing takes one SHA-256 pass of wall time, not two.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::SystemTime;

use p2p_proto::manifest::{ManifestBuilder, hash_chunk};
use p2p_proto::{CHUNK_SIZE, Manifest};
use tokio_util::sync::CancellationToken;

use super::stamp::{FileStamp, HashedFile};

/// Chunks read ahead of the chunk-hash thread.
const AHEAD: usize = 4;

/// The manifest of the file at `path`, shared under `name`, in chunks of `chunk_size`.
/// Blocking: call it off the async reactor.
pub fn manifest_with_chunk_size(
    path: &Path,
    name: &str,
    chunk_size: u32,
) -> std::io::Result<Manifest> {
    let file = std::fs::File::open(path)?;
    hash_open(file, name, chunk_size, &CancellationToken::new())
}

/// The manifest of the file at `path`, shared under `name`, with the version of the file it
/// describes (taken from the open file before reading it, so a change while hashing shows in a
/// later stamp). Stops with [`std::io::ErrorKind::Interrupted`] once `cancel` is cancelled.
/// Blocking: call it off the async reactor.
pub fn hash_file(
    path: &Path,
    name: &str,
    cancel: &CancellationToken,
) -> std::io::Result<HashedFile> {
    let since = SystemTime::now();
    let file = std::fs::File::open(path)?;
    let stamp = FileStamp::of(&file.metadata()?);
    let manifest = hash_open(file, name, CHUNK_SIZE, cancel)?;
    Ok(HashedFile {
        manifest,
        stamp,
        since,
    })
}

fn hash_open(
    mut file: std::fs::File,
    name: &str,
    chunk_size: u32,
    cancel: &CancellationToken,
) -> std::io::Result<Manifest> {
    p2p_proto::manifest::validate_chunk_size(chunk_size).map_err(std::io::Error::other)?;
    // A file of one chunk is hashed here: a thread per small file would cost more than the
    // hashing (a folder of ten thousand small files).
    if file.metadata()?.len() < u64::from(chunk_size) {
        let mut data = Vec::new();
        (&mut file)
            .take(u64::from(chunk_size))
            .read_to_end(&mut data)?;
        if data.len() < chunk_size as usize {
            return Manifest::of_bytes(name, &data, chunk_size).map_err(std::io::Error::other);
        }
        // It grew meanwhile: hash it as a large one.
        file.seek(SeekFrom::Start(0))?;
    }
    let mut builder = ManifestBuilder::new(chunk_size);
    // Buffers circulate: filled here, hashed there, handed back (no allocation per chunk).
    let (to_hasher, filled_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(AHEAD);
    let (to_reader, free) = std::sync::mpsc::sync_channel::<Vec<u8>>(AHEAD + 1);
    for _ in 0..=AHEAD {
        let _ = to_reader.send(vec![0u8; chunk_size as usize]);
    }
    let hasher = std::thread::Builder::new()
        .name("chunk-hash".into())
        .spawn(move || {
            let mut hashes = Vec::new();
            for chunk in filled_rx {
                hashes.push(hash_chunk(&chunk));
                let _ = to_reader.send(chunk);
            }
            hashes
        })?;
    let read = (|| {
        while let Ok(mut buf) = free.recv() {
            if cancel.is_cancelled() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    "hashing was cancelled",
                ));
            }
            buf.resize(chunk_size as usize, 0);
            // Fill the buffer completely (short reads happen), so chunk boundaries are exact.
            let mut filled = 0;
            while filled < buf.len() {
                match file.read(&mut buf[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            if filled == 0 {
                break;
            }
            buf.truncate(filled);
            builder.push(&buf);
            if to_hasher.send(buf).is_err() || filled < chunk_size as usize {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })();
    drop(to_hasher);
    let hashes = hasher
        .join()
        .map_err(|_| std::io::Error::other("the chunk hash thread panicked"))?;
    read?;
    builder.finish(name, hashes).map_err(std::io::Error::other)
}

/// The manifest of the file at `path`, shared under `name`, with the default chunk size.
pub fn manifest_for_file(path: &Path, name: &str) -> std::io::Result<Manifest> {
    manifest_with_chunk_size(path, name, CHUNK_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn matches_sha256sum_and_the_in_memory_manifest() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, CHUNK_SIZE as usize, CHUNK_SIZE as usize * 2 + 5] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &data).unwrap();
            let m = manifest_for_file(&path, "f.bin").unwrap();
            assert_eq!(m.id.0, <[u8; 32]>::from(Sha256::digest(&data)));
            assert_eq!(m.size, len as u64);
            assert_eq!(m, Manifest::of_bytes("f.bin", &data, CHUNK_SIZE).unwrap());
        }
    }

    #[test]
    fn hash_file_gives_the_version_it_read_and_stops_when_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let data: Vec<u8> = (0..CHUNK_SIZE as usize * 3)
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let hashed = hash_file(&path, "f.bin", &CancellationToken::new()).unwrap();
        assert_eq!(hashed.manifest, manifest_for_file(&path, "f.bin").unwrap());
        assert_eq!(hashed.stamp, FileStamp::read(&path).unwrap());
        assert!(hashed.since <= SystemTime::now());
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = hash_file(&path, "f.bin", &cancel).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::Interrupted);
    }

    #[test]
    fn bad_names_and_chunk_sizes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        assert!(manifest_for_file(&path, "a/b").is_err());
        assert!(manifest_with_chunk_size(&path, "f", 1000).is_err());
        assert!(manifest_for_file(&dir.path().join("missing"), "m").is_err());
    }
}
