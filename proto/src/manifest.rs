//! Chunking rules, chunk hashes, the hash chain that ties chunks to the file id, and the Merkle
//! tree that authenticates a file's manifest.
//!
//! A file is cut into chunks of `chunk_size` bytes (256 KiB by default; the last chunk may be
//! shorter). Each chunk has a SHA-256. The Merkle tree follows RFC 6962: a leaf is
//! `SHA-256(0x00 || chunk_hash)`, an inner node `SHA-256(0x01 || left || right)`, and a level
//! with an odd count carries its last node up unchanged; the root of zero chunks is `SHA-256("")`.
//! The domain-separation bytes stop a leaf from being passed off as an inner node.
//!
//! The file id is the SHA-256 of the whole content. SHA-256 reads its input in 64-byte blocks and
//! carries a 32-byte chaining value from one block to the next; every chunk size is a multiple of
//! 64, so the whole-content hash passes a chaining value at every chunk boundary. The manifest
//! lists them (`chain`): `chain[i]` is the chaining value after chunks `0..=i`, for every chunk but
//! the last. Chunk `i` is then checked on its own by running SHA-256's compression from
//! `chain[i - 1]` (SHA-256's initial value for chunk 0) over its bytes: the result must be
//! `chain[i]`, or, for the last chunk, after SHA-256's padding, the file id. A file whose every
//! chunk passes this check hashes to its id — the checks compose into the whole-content hash,
//! anchored at the initial value and at the id — so a downloader hashes each byte once, in any
//! order, and needs no second pass over the finished file. A forged chain cannot make other
//! content pass: that would take a SHA-256 preimage of the id.

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
    #[error("{got} chain values given, but {chunks} chunks need {expected}")]
    ChainLength {
        got: usize,
        expected: u64,
        chunks: u64,
    },
    #[error("an empty file's id must be the SHA-256 of nothing")]
    EmptyId,
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

/// SHA-256's initial chaining value (FIPS 180-4, §5.3.3).
pub(crate) const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// SHA-256 whose chaining value can be read between blocks and resumed from: the whole-content
/// hash of a file, computed chunk by chunk (see the module docs).
#[derive(Debug, Clone)]
pub struct ChainHasher {
    state: [u32; 8],
    /// Bytes hashed so far, those waiting in `pending` included.
    len: u64,
    /// Bytes of an unfinished block.
    pending: [u8; 64],
    pending_len: usize,
}

impl Default for ChainHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainHasher {
    /// A hasher at the start of the content.
    pub const fn new() -> Self {
        Self {
            state: SHA256_IV,
            len: 0,
            pending: [0; 64],
            pending_len: 0,
        }
    }

    /// A hasher `offset` bytes into the content (a multiple of 64), where the chaining value is
    /// `value`.
    pub fn resume(value: &Sha256Hash, offset: u64) -> Self {
        let mut state = [0u32; 8];
        for (word, bytes) in state.iter_mut().zip(value.0.chunks_exact(4)) {
            *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        Self {
            state,
            len: offset,
            pending: [0; 64],
            pending_len: 0,
        }
    }

    /// Hashes `data`, following what came before.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.pending_len > 0 {
            let take = data.len().min(64 - self.pending_len);
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < 64 {
                return;
            }
            sha2::block_api::compress256(&mut self.state, &[self.pending]);
            self.pending_len = 0;
        }
        let (blocks, rest) = data.as_chunks::<64>();
        sha2::block_api::compress256(&mut self.state, blocks);
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// Runs [`ChainHasher::update`] for each hasher over its data, with the SHA-256 work of
    /// up to four hashers interleaved (see [`crate::sha256_lanes`]). The result is the same as
    /// updating them one by one.
    pub fn update_all(work: &mut [(&mut ChainHasher, &[u8])]) {
        let mut lanes = Vec::with_capacity(work.len());
        let mut laned = Vec::with_capacity(work.len());
        for (k, (hasher, data)) in work.iter_mut().enumerate() {
            let data: &[u8] = data;
            if hasher.pending_len > 0 {
                hasher.update(data); // mid-block: rare, and not worth interleaving
                continue;
            }
            let (blocks, rest) = data.as_chunks::<64>();
            lanes.push((hasher.state, blocks));
            laned.push(k);
            hasher.len += data.len() as u64;
            hasher.pending[..rest.len()].copy_from_slice(rest);
            hasher.pending_len = rest.len();
        }
        crate::sha256_lanes::compress_lanes(&mut lanes);
        for (k, (state, _)) in laned.into_iter().zip(lanes) {
            work[k].0.state = state;
        }
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was hashed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chaining value, or `None` in the middle of a 64-byte block.
    pub fn chain_value(&self) -> Option<Sha256Hash> {
        (self.pending_len == 0).then(|| Sha256Hash(words_to_bytes(&self.state)))
    }

    /// The SHA-256 of everything hashed (after the padding of FIPS 180-4, §5.1.1).
    pub fn finish(mut self) -> Sha256Hash {
        let bits = self.len.wrapping_mul(8);
        let mut tail = [0u8; 128];
        tail[..self.pending_len].copy_from_slice(&self.pending[..self.pending_len]);
        tail[self.pending_len] = 0x80;
        let end = if self.pending_len < 56 { 64 } else { 128 };
        tail[end - 8..end].copy_from_slice(&bits.to_be_bytes());
        let (blocks, _) = tail[..end].as_chunks::<64>();
        sha2::block_api::compress256(&mut self.state, blocks);
        Sha256Hash(words_to_bytes(&self.state))
    }
}

fn words_to_bytes(words: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (bytes, word) in out.chunks_exact_mut(4).zip(words) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// Why a chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    #[error("chunk {0} is past the end of the file")]
    OutOfRange(u64),
    #[error("chunk {index} has {got} bytes, expected {expected}")]
    Length {
        index: u64,
        got: usize,
        expected: u32,
    },
    #[error("chunk {0} does not match the manifest")]
    Mismatch(u64),
    /// The bytes match the chunk's hash but not the hash chain: the manifest contradicts itself,
    /// so no peer can deliver this chunk.
    #[error(
        "chunk {0} matches its hash but not the manifest's hash chain: the manifest is inconsistent"
    )]
    Inconsistent(u64),
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
    /// The file's name: one path component (no `/` or `\`, not `.` or `..`), at most 255
    /// bytes of UTF-8, no control characters.
    #[cfg_attr(
        feature = "openapi",
        oai(validator(
            min_length = 1,
            max_length = 255,
            pattern = r"^[^/\\\x00-\x1F\x7F-\x9F]+$"
        ))
    )]
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes: a power of two from 16 KiB to 16 MiB (256 KiB by default).
    #[cfg_attr(
        feature = "openapi",
        oai(validator(minimum(value = "16384"), maximum(value = "16777216")))
    )]
    pub chunk_size: u32,
    /// SHA-256 of every chunk, in order (at most 2^20 chunks).
    #[cfg_attr(feature = "openapi", oai(validator(max_items = 1048576)))]
    pub chunk_hashes: Vec<Sha256Hash>,
    /// Merkle root over the chunk hashes (RFC 6962 layout).
    pub merkle_root: Sha256Hash,
    /// The whole-content SHA-256's chaining value after each chunk but the last (one fewer than
    /// the chunks; none for a file of zero or one chunk, where it may be left out). Each chunk is
    /// verified against it.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", oai(default, validator(max_items = 1048575)))]
    pub chain: Vec<Sha256Hash>,
}

impl Manifest {
    /// The manifest of `data` (held in memory), shared as `name`, in chunks of `chunk_size`.
    pub fn of_bytes(name: &str, data: &[u8], chunk_size: u32) -> Result<Self, ManifestError> {
        validate_chunk_size(chunk_size)?;
        let mut builder = ManifestBuilder::new(chunk_size);
        let mut hashes = Vec::new();
        for chunk in data.chunks(chunk_size as usize) {
            builder.push(chunk);
            hashes.push(hash_chunk(chunk));
        }
        builder.finish(name, hashes)
    }

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
        let chunks = self.chunk_count();
        let expected = chunks.saturating_sub(1);
        if self.chain.len() as u64 != expected {
            return Err(ManifestError::ChainLength {
                got: self.chain.len(),
                expected,
                chunks,
            });
        }
        // No chunk check covers an empty file: its id is checked here.
        if chunks == 0 && self.id.0 != ChainHasher::new().finish().0 {
            return Err(ManifestError::EmptyId);
        }
        if merkle_root(&self.chunk_hashes) != self.merkle_root {
            return Err(ManifestError::MerkleRoot);
        }
        Ok(())
    }

    /// Checks that `data` is chunk `index` of this file: its length, then SHA-256 run from the
    /// chaining value before it over its bytes, against the chaining value after it (or, for the
    /// last chunk, the file id). One pass over the bytes; a failure costs a second one, to tell
    /// a wrong chunk from a manifest whose chain disagrees with its chunk hashes.
    pub fn verify_chunk(&self, index: u64, data: &[u8]) -> Result<(), ChunkError> {
        let mut hasher = self.chunk_hasher(index, data)?;
        if let Some(h) = hasher.as_mut() {
            h.update(data);
        }
        self.conclude(index, hasher, data)
    }

    /// Checks several chunks as [`Manifest::verify_chunk`] checks one, with the hashing of up
    /// to four of them interleaved (see [`crate::sha256_lanes`]): where the CPU has the SHA
    /// extensions, four chunks take about as long as two checked one by one. The results come
    /// in the order of `chunks`.
    pub fn verify_chunks(&self, chunks: &[(u64, &[u8])]) -> Vec<Result<(), ChunkError>> {
        let mut started: Vec<Result<Option<ChainHasher>, ChunkError>> = chunks
            .iter()
            .map(|&(index, data)| self.chunk_hasher(index, data))
            .collect();
        let mut work: Vec<(&mut ChainHasher, &[u8])> = started
            .iter_mut()
            .zip(chunks)
            .filter_map(|(h, &(_, data))| match h {
                Ok(Some(h)) => Some((h, data)),
                _ => None,
            })
            .collect();
        ChainHasher::update_all(&mut work);
        started
            .into_iter()
            .zip(chunks)
            .map(|(hasher, &(index, data))| self.conclude(index, hasher?, data))
            .collect()
    }

    /// The hasher that checks chunk `index` (at the chaining value before it), once its range
    /// and length are right; `None` if the manifest lacks that chaining value.
    fn chunk_hasher(&self, index: u64, data: &[u8]) -> Result<Option<ChainHasher>, ChunkError> {
        if index >= self.chunk_count() {
            return Err(ChunkError::OutOfRange(index));
        }
        let expected = self.chunk_len(index);
        if data.len() != expected as usize {
            return Err(ChunkError::Length {
                index,
                got: data.len(),
                expected,
            });
        }
        Ok(match index {
            0 => Some(ChainHasher::new()),
            _ => self
                .chain
                .get(index as usize - 1)
                .map(|v| ChainHasher::resume(v, index * u64::from(self.chunk_size))),
        })
    }

    /// The verdict on chunk `index` once `hasher` has hashed its `data`.
    fn conclude(
        &self,
        index: u64,
        hasher: Option<ChainHasher>,
        data: &[u8],
    ) -> Result<(), ChunkError> {
        let i = index as usize;
        let passed = hasher.is_some_and(|h| {
            if index + 1 == self.chunk_count() {
                h.finish().0 == self.id.0
            } else {
                h.chain_value()
                    .is_some_and(|v| self.chain.get(i) == Some(&v))
            }
        });
        if passed {
            Ok(())
        } else if self.chunk_hashes.get(i) == Some(&hash_chunk(data)) {
            Err(ChunkError::Inconsistent(index))
        } else {
            Err(ChunkError::Mismatch(index))
        }
    }

    /// Whether two manifests describe the same content (names may differ between peers).
    pub fn same_content(&self, other: &Manifest) -> bool {
        self.id == other.id
            && self.size == other.size
            && self.chunk_size == other.chunk_size
            && self.merkle_root == other.merkle_root
            && self.chunk_hashes == other.chunk_hashes
            && self.chain == other.chain
    }
}

/// Builds a manifest from a file's chunks, given in order: the whole-content hash and its chain
/// run here, the chunk hashes may be computed elsewhere (another thread) and are given at the end.
#[derive(Debug, Clone)]
pub struct ManifestBuilder {
    chunk_size: u32,
    whole: ChainHasher,
    chunks: u64,
    chain: Vec<Sha256Hash>,
}

impl ManifestBuilder {
    pub fn new(chunk_size: u32) -> Self {
        Self {
            chunk_size,
            whole: ChainHasher::new(),
            chunks: 0,
            chain: Vec::new(),
        }
    }

    /// Adds the next chunk: `chunk_size` bytes, or fewer for the last.
    pub fn push(&mut self, chunk: &[u8]) {
        self.whole.update(chunk);
        self.chunks += 1;
        // Only a short (last) chunk can end off a block boundary; it gets no chain value.
        if let Some(value) = self.whole.chain_value() {
            self.chain.push(value);
        }
    }

    /// The manifest, named `name`, with the chunks' SHA-256s. Checks that the chunks and their
    /// hashes make a valid manifest.
    pub fn finish(
        mut self,
        name: &str,
        chunk_hashes: Vec<Sha256Hash>,
    ) -> Result<Manifest, ManifestError> {
        // The value after the last chunk is not part of the chain: the id stands there.
        self.chain.truncate(self.chunks.saturating_sub(1) as usize);
        let size = self.whole.len();
        let manifest = Manifest {
            id: FileId(self.whole.finish().0),
            name: name.to_owned(),
            size,
            chunk_size: self.chunk_size,
            merkle_root: merkle_root(&chunk_hashes),
            chunk_hashes,
            chain: self.chain,
        };
        manifest.validate()?;
        Ok(manifest)
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

    /// Deterministic bytes that do not repeat with any period a chunk could line up with.
    fn content(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn the_chain_hasher_is_sha256() {
        // Around the padding's edge cases: 55, 56 and 64 bytes in the last block.
        for len in [0usize, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 70_000] {
            let data = content(len);
            let mut h = ChainHasher::new();
            // Fed in uneven pieces.
            for piece in data.chunks(37) {
                h.update(piece);
            }
            assert_eq!(h.len(), len as u64);
            assert_eq!(h.finish(), hash_chunk(&data), "{len} bytes");
        }
        // FIPS 180-2 example: "abc".
        let mut h = ChainHasher::new();
        h.update(b"abc");
        assert_eq!(
            h.finish().to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn golden_chain() {
        // 128 KiB of zeros in 64 KiB chunks: the chain value after the first chunk, and the id (`sha256sum`). The chain value was
        // computed independently, with a plain Python transcription of FIPS 180-4's compression.
        let m = Manifest::of_bytes("zeros", &[0u8; 128 * 1024], 64 * 1024).unwrap();
        assert_eq!(m.chain.len(), 1);
        assert_eq!(
            m.id.to_string(),
            "fa43239bcee7b97ca62f007cc68487560a39e19f74f3dde7486db3f98df8e471"
        );
        assert_eq!(
            m.chain[0].to_string(),
            "4b30cfeaea728edf48f06da57eb575af20b199be9c6ba03e93129f76df7ec292"
        );
    }

    #[test]
    fn every_chunk_verifies_on_its_own_and_a_wrong_one_does_not() {
        let chunk = 16 * 1024;
        for len in [
            1usize,
            chunk - 1,
            chunk,
            chunk + 1,
            3 * chunk,
            3 * chunk + 100,
        ] {
            let data = content(len);
            let m = Manifest::of_bytes("f.bin", &data, chunk as u32).unwrap();
            assert_eq!(m.id, FileId(hash_chunk(&data).0));
            let n = m.chunk_count();
            assert_eq!(m.chain.len() as u64, n - 1);
            // Any order: each chunk needs only the manifest.
            for i in (0..n).rev() {
                let piece = &data[i as usize * chunk..][..m.chunk_len(i) as usize];
                m.verify_chunk(i, piece).unwrap();
                let mut bad = piece.to_vec();
                bad[piece.len() / 2] ^= 1;
                assert_eq!(m.verify_chunk(i, &bad), Err(ChunkError::Mismatch(i)));
                assert!(matches!(
                    m.verify_chunk(i, &piece[1..]),
                    Err(ChunkError::Length { .. })
                ));
            }
            assert_eq!(m.verify_chunk(n, &[]), Err(ChunkError::OutOfRange(n)));
        }
    }

    #[test]
    fn a_chain_that_contradicts_the_chunk_hashes_is_told_apart_from_a_bad_chunk() {
        let chunk = 16 * 1024;
        let data = content(3 * chunk);
        let mut m = Manifest::of_bytes("f.bin", &data, chunk as u32).unwrap();
        m.chain[0].0[0] ^= 1;
        // Chunk 0 ends at the wrong value, chunk 1 starts from it: both are good bytes.
        assert_eq!(
            m.verify_chunk(0, &data[..chunk]),
            Err(ChunkError::Inconsistent(0))
        );
        assert_eq!(
            m.verify_chunk(1, &data[chunk..2 * chunk]),
            Err(ChunkError::Inconsistent(1))
        );
        m.verify_chunk(2, &data[2 * chunk..]).unwrap();
        assert_eq!(
            m.verify_chunk(1, &data[..chunk]),
            Err(ChunkError::Mismatch(1))
        );
    }

    #[test]
    fn validate_rejects_inconsistent_manifests() {
        let mut m =
            Manifest::of_bytes("a.bin", &content(CHUNK_SIZE as usize + 5), CHUNK_SIZE).unwrap();
        assert_eq!(m.validate(), Ok(()));
        let chain = std::mem::take(&mut m.chain);
        assert!(matches!(
            m.validate(),
            Err(ManifestError::ChainLength {
                got: 0,
                expected: 1,
                chunks: 2
            })
        ));
        m.chain = chain;
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
    fn an_empty_file_must_have_the_empty_id() {
        let mut m = Manifest::of_bytes("empty", &[], CHUNK_SIZE).unwrap();
        assert_eq!(m.validate(), Ok(()));
        m.id = FileId([7; 32]);
        assert_eq!(m.validate(), Err(ManifestError::EmptyId));
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
        fn chain_checks_compose_into_the_whole_file_hash(
            len in 0usize..(5 * MIN_CHUNK_SIZE as usize),
            split in any::<prop::sample::Index>(),
        ) {
            let data = content(len);
            let chunk = MIN_CHUNK_SIZE;
            let m = Manifest::of_bytes("p", &data, chunk).unwrap();
            prop_assert_eq!(m.id.0, hash_chunk(&data).0);
            for (i, piece) in data.chunks(chunk as usize).enumerate() {
                prop_assert_eq!(m.verify_chunk(i as u64, piece), Ok(()));
            }
            // Resuming from a chain value hashes the rest like one pass does.
            if m.chunk_count() > 1 {
                let at = split.index(m.chain.len());
                let offset = (at as u64 + 1) * u64::from(chunk);
                let mut h = ChainHasher::resume(&m.chain[at], offset);
                h.update(&data[offset as usize..]);
                prop_assert_eq!(h.finish().0, m.id.0);
            }
        }

        #[test]
        fn chunks_checked_together_get_the_verdicts_they_get_alone(
            len in 1usize..(9 * MIN_CHUNK_SIZE as usize),
            picks in prop::collection::vec((0u64..12, 0u8..4), 0..9),
        ) {
            let data = content(len);
            let chunk = MIN_CHUNK_SIZE as usize;
            let m = Manifest::of_bytes("p", &data, MIN_CHUNK_SIZE).unwrap();
            // Each pick: a chunk index (some past the end) and what to hand over for it: its
            // bytes, a flipped byte, one byte short, or another chunk's bytes.
            let pieces: Vec<(u64, Vec<u8>)> = picks
                .iter()
                .map(|&(index, how)| {
                    let at = (index as usize * chunk).min(data.len());
                    let mut piece = data[at..(at + chunk).min(data.len())].to_vec();
                    match how {
                        1 if !piece.is_empty() => piece[0] ^= 1,
                        2 => { piece.pop(); }
                        3 => piece = data[..chunk.min(data.len())].to_vec(),
                        _ => {}
                    }
                    (index, piece)
                })
                .collect();
            let batch: Vec<(u64, &[u8])> = pieces.iter().map(|(i, p)| (*i, p.as_slice())).collect();
            let alone: Vec<_> = batch.iter().map(|&(i, p)| m.verify_chunk(i, p)).collect();
            prop_assert_eq!(m.verify_chunks(&batch), alone);
        }

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
