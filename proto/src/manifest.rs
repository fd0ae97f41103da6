//! Chunking rules, chunk hashes and the Merkle tree that authenticates a file's manifest.
//!
//! A file is cut into chunks of `chunk_size` bytes (256 KiB by default; the last chunk may be
//! shorter). Each chunk has a SHA-256. The Merkle tree follows RFC 6962: a leaf is
//! `SHA-256(0x00 || chunk_hash)`, an inner node `SHA-256(0x01 || left || right)`, and a level
//! with an odd count carries its last node up unchanged; the root of zero chunks is `SHA-256("")`.
//! The domain-separation bytes stop a leaf from being passed off as an inner node.

use sha2::{Digest, Sha256};

use crate::ids::{FileId, Sha256Hash};

/// The default chunk size: 256 KiB.
pub const CHUNK_SIZE: u32 = 256 * 1024;
/// Smallest accepted chunk size.
pub const MIN_CHUNK_SIZE: u32 = 16 * 1024;
/// Largest accepted chunk size.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Most chunks one manifest may list (256 GiB at the default chunk size). Bounds what a decoder
/// allocates for a manifest coming from the network.
pub const MAX_CHUNKS: u64 = 1 << 20;
/// Longest file name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Why a manifest is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("chunk size {0} must be a power of two between 16 KiB and 16 MiB")]
    ChunkSize(u32),
    #[error("file of {size} bytes would need {chunks} chunks, more than the limit of {MAX_CHUNKS}")]
    TooLarge { size: u64, chunks: u64 },
    #[error("{got} chunk hashes given, but {size} bytes in chunks of {chunk_size} make {expected}")]
    ChunkCount {
        got: usize,
        expected: u64,
        size: u64,
        chunk_size: u32,
    },
    #[error("merkle root does not match the chunk hashes")]
    MerkleRoot,
    #[error("invalid file name: {0}")]
    Name(&'static str),
}

/// Number of chunks of a file of `size` bytes.
pub const fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(chunk_size as u64)
}

/// Length in bytes of chunk `index` (the last one may be short); 0 past the end.
pub const fn chunk_len(size: u64, chunk_size: u32, index: u64) -> u32 {
    let start = index.saturating_mul(chunk_size as u64);
    if start >= size {
        return 0;
    }
    let rest = size - start;
    if rest < chunk_size as u64 {
        rest as u32
    } else {
        chunk_size
    }
}

/// Checks a chunk size: a power of two within [`MIN_CHUNK_SIZE`, `MAX_CHUNK_SIZE`].
pub fn validate_chunk_size(chunk_size: u32) -> Result<(), ManifestError> {
    if chunk_size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        Ok(())
    } else {
        Err(ManifestError::ChunkSize(chunk_size))
    }
}

/// Checks a file name coming from the network: one path component, printable, not too long.
/// The name is a label only; peers still sanitise it before writing to disk.
pub fn validate_name(name: &str) -> Result<(), ManifestError> {
    if name.is_empty() {
        return Err(ManifestError::Name("empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ManifestError::Name("longer than 255 bytes"));
    }
    if name == "." || name == ".." {
        return Err(ManifestError::Name("'.' and '..' are not file names"));
    }
    if name.contains(['/', '\\']) {
        return Err(ManifestError::Name("contains a path separator"));
    }
    if name.chars().any(char::is_control) {
        return Err(ManifestError::Name("contains a control character"));
    }
    Ok(())
}

/// SHA-256 of one chunk's bytes.
pub fn hash_chunk(data: &[u8]) -> Sha256Hash {
    Sha256Hash(Sha256::digest(data).into())
}

fn leaf_hash(chunk: &Sha256Hash) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(chunk.0);
    h.finalize().into()
}

fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The Merkle tree over a file's chunk hashes, kept whole so proofs can be cut from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    /// `levels[0]` are the leaf hashes; the last level holds the root alone.
    levels: Vec<Vec<[u8; 32]>>,
}

impl MerkleTree {
    pub fn new(chunk_hashes: &[Sha256Hash]) -> Self {
        let mut levels = vec![chunk_hashes.iter().map(leaf_hash).collect::<Vec<_>>()];
        while let Some(level) = levels.last().filter(|l| l.len() > 1) {
            let next = level
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => node_hash(l, r),
                    [single] => *single,
                    _ => unreachable!("chunks(2) yields one or two items"),
                })
                .collect();
            levels.push(next);
        }
        Self { levels }
    }

    /// The root; `SHA-256("")` for a file without chunks.
    pub fn root(&self) -> Sha256Hash {
        match self.levels.last().and_then(|l| l.first()) {
            Some(root) => Sha256Hash(*root),
            None => Sha256Hash(Sha256::digest([]).into()),
        }
    }

    /// Sibling hashes from leaf `index` up to the root, or `None` past the end.
    pub fn proof(&self, index: u64) -> Option<Vec<Sha256Hash>> {
        let leaves = self.levels.first()?.len() as u64;
        if index >= leaves {
            return None;
        }
        let mut idx = index as usize;
        let mut proof = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = idx ^ 1;
            if let Some(hash) = level.get(sibling) {
                proof.push(Sha256Hash(*hash));
            }
            idx /= 2;
        }
        Some(proof)
    }
}

/// Computes the Merkle root of `chunk_hashes` without keeping the tree.
pub fn merkle_root(chunk_hashes: &[Sha256Hash]) -> Sha256Hash {
    MerkleTree::new(chunk_hashes).root()
}

/// Checks that `chunk_hash` is chunk `index` of `count` under `root`, given its proof.
pub fn verify_proof(
    root: &Sha256Hash,
    index: u64,
    count: u64,
    chunk_hash: &Sha256Hash,
    proof: &[Sha256Hash],
) -> bool {
    if index >= count {
        return false;
    }
    let mut hash = leaf_hash(chunk_hash);
    let (mut idx, mut len) = (index, count);
    let mut siblings = proof.iter();
    while len > 1 {
        let sibling = idx ^ 1;
        if sibling < len {
            let Some(s) = siblings.next() else {
                return false;
            };
            hash = if idx % 2 == 0 {
                node_hash(&hash, &s.0)
            } else {
                node_hash(&s.0, &hash)
            };
        }
        idx /= 2;
        len = len.div_ceil(2);
    }
    siblings.next().is_none() && hash == root.0
}

/// A file's manifest: everything needed to fetch and verify it chunk by chunk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub struct Manifest {
    /// SHA-256 of the whole content.
    pub id: FileId,
    /// The file's name: one path component, at most 255 bytes.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes: a power of two from 16 KiB to 16 MiB (256 KiB by default).
    pub chunk_size: u32,
    /// SHA-256 of every chunk, in order.
    pub chunk_hashes: Vec<Sha256Hash>,
    /// Merkle root over the chunk hashes (RFC 6962 layout).
    pub merkle_root: Sha256Hash,
}

impl Manifest {
    pub fn chunk_count(&self) -> u64 {
        chunk_count(self.size, self.chunk_size)
    }

    pub fn chunk_len(&self, index: u64) -> u32 {
        chunk_len(self.size, self.chunk_size, index)
    }

    /// Checks the manifest's internal consistency: name, chunk size, chunk count and Merkle root.
    /// (That the id is the SHA-256 of the content can only be checked with the content.)
    pub fn validate(&self) -> Result<(), ManifestError> {
        validate_name(&self.name)?;
        validate_layout(self.size, self.chunk_size, self.chunk_hashes.len())?;
        if merkle_root(&self.chunk_hashes) != self.merkle_root {
            return Err(ManifestError::MerkleRoot);
        }
        Ok(())
    }

    /// Whether two manifests describe the same content (names may differ between peers).
    pub fn same_content(&self, other: &Manifest) -> bool {
        self.id == other.id
            && self.size == other.size
            && self.chunk_size == other.chunk_size
            && self.merkle_root == other.merkle_root
            && self.chunk_hashes == other.chunk_hashes
    }
}

/// Checks that `hashes` chunk hashes fit a file of `size` bytes in chunks of `chunk_size`.
pub fn validate_layout(size: u64, chunk_size: u32, hashes: usize) -> Result<(), ManifestError> {
    validate_chunk_size(chunk_size)?;
    let expected = chunk_count(size, chunk_size);
    if expected > MAX_CHUNKS {
        return Err(ManifestError::TooLarge {
            size,
            chunks: expected,
        });
    }
    if hashes as u64 != expected {
        return Err(ManifestError::ChunkCount {
            got: hashes,
            expected,
            size,
            chunk_size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hashes(n: usize) -> Vec<Sha256Hash> {
        (0..n).map(|i| hash_chunk(&i.to_le_bytes())).collect()
    }

    #[test]
    fn chunk_arithmetic() {
        assert_eq!(chunk_count(0, CHUNK_SIZE), 0);
        assert_eq!(chunk_count(1, CHUNK_SIZE), 1);
        assert_eq!(chunk_count(CHUNK_SIZE as u64, CHUNK_SIZE), 1);
        assert_eq!(chunk_count(CHUNK_SIZE as u64 + 1, CHUNK_SIZE), 2);
        assert_eq!(chunk_len(CHUNK_SIZE as u64 + 1, CHUNK_SIZE, 1), 1);
        assert_eq!(chunk_len(CHUNK_SIZE as u64 + 1, CHUNK_SIZE, 0), CHUNK_SIZE);
        assert_eq!(chunk_len(10, CHUNK_SIZE, 5), 0);
    }

    #[test]
    fn golden_roots() {
        // Empty: SHA-256 of nothing.
        assert_eq!(
            merkle_root(&[]).to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // One chunk: the leaf hash SHA-256(0x00 || h).
        let h = hash_chunk(b"abc");
        let mut pre = vec![0u8];
        pre.extend_from_slice(&h.0);
        assert_eq!(merkle_root(&[h]), hash_chunk(&pre));
        // Three chunks: node(node(l0, l1), l2), the odd leaf carried up.
        let hs = hashes(3);
        let (l0, l1, l2) = (leaf_hash(&hs[0]), leaf_hash(&hs[1]), leaf_hash(&hs[2]));
        assert_eq!(merkle_root(&hs).0, node_hash(&node_hash(&l0, &l1), &l2));
    }

    #[test]
    fn validate_rejects_inconsistent_manifests() {
        let hs = hashes(2);
        let mut m = Manifest {
            id: FileId([1; 32]),
            name: "a.bin".into(),
            size: CHUNK_SIZE as u64 + 5,
            chunk_size: CHUNK_SIZE,
            merkle_root: merkle_root(&hs),
            chunk_hashes: hs,
        };
        assert_eq!(m.validate(), Ok(()));
        m.merkle_root = Sha256Hash([0; 32]);
        assert_eq!(m.validate(), Err(ManifestError::MerkleRoot));
        m.size = 1;
        assert!(matches!(
            m.validate(),
            Err(ManifestError::ChunkCount { .. })
        ));
        m.chunk_size = 1000;
        assert_eq!(m.validate(), Err(ManifestError::ChunkSize(1000)));
        m.name = "../etc/passwd".into();
        assert!(matches!(m.validate(), Err(ManifestError::Name(_))));
    }

    #[test]
    fn names() {
        assert!(validate_name("report 2026.pdf").is_ok());
        assert!(validate_name("файл.txt").is_ok());
        for bad in ["", ".", "..", "a/b", "a\\b", "a\nb", &"x".repeat(256)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn every_proof_verifies_and_wrong_ones_do_not(n in 1usize..70, pick in any::<prop::sample::Index>()) {
            let hs = hashes(n);
            let tree = MerkleTree::new(&hs);
            let root = tree.root();
            let i = pick.index(n) as u64;
            let proof = tree.proof(i).unwrap();
            prop_assert!(verify_proof(&root, i, n as u64, &hs[i as usize], &proof));
            // A different chunk, index or count fails.
            let wrong = hash_chunk(b"not this chunk");
            prop_assert!(!verify_proof(&root, i, n as u64, &wrong, &proof));
            if n > 1 {
                let j = (i + 1) % n as u64;
                prop_assert!(!verify_proof(&root, j, n as u64, &hs[i as usize], &proof));
            }
            prop_assert!(tree.proof(n as u64).is_none());
        }
    }
}
