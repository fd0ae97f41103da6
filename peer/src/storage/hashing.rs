//! Hashing a file into its manifest: one pass, memory bounded by one chunk.

use std::io::Read;
use std::path::Path;

use p2p_proto::manifest::{hash_chunk, merkle_root};
use p2p_proto::{CHUNK_SIZE, FileId, Manifest, Sha256Hash};
use sha2::{Digest, Sha256};

/// The id (SHA-256 of the content), the chunk hashes and the size of the file at `path`.
/// Blocking: call it off the async reactor.
pub fn hash_file(path: &Path, chunk_size: u32) -> std::io::Result<(FileId, Vec<Sha256Hash>, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut whole = Sha256::new();
    let mut hashes = Vec::new();
    let mut buf = vec![0u8; chunk_size as usize];
    let mut size = 0u64;
    loop {
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
        let chunk = &buf[..filled];
        whole.update(chunk);
        hashes.push(hash_chunk(chunk));
        size += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    Ok((FileId(whole.finalize().into()), hashes, size))
}

/// The manifest of the file at `path`, shared under `name`, with the default chunk size.
pub fn manifest_for_file(path: &Path, name: &str) -> std::io::Result<Manifest> {
    let (id, chunk_hashes, size) = hash_file(path, CHUNK_SIZE)?;
    Ok(Manifest {
        id,
        name: name.to_owned(),
        size,
        chunk_size: CHUNK_SIZE,
        merkle_root: merkle_root(&chunk_hashes),
        chunk_hashes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_sha256sum_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, CHUNK_SIZE as usize, CHUNK_SIZE as usize * 2 + 5] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &data).unwrap();
            let m = manifest_for_file(&path, "f.bin").unwrap();
            assert_eq!(m.id.0, <[u8; 32]>::from(Sha256::digest(&data)));
            assert_eq!(m.size, len as u64);
            assert_eq!(m.chunk_count(), (len as u64).div_ceil(CHUNK_SIZE as u64));
            m.validate().unwrap();
        }
    }
}
