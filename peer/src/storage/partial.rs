//! A download in progress: `<data>/.partial/<id>.part` holds the chunks written so far at their
//! offsets, `<id>.state` which of them are verified. After a crash the same download resumes
//! with only the missing chunks. Completion checks the whole file's SHA-256 and renames it into
//! place atomically, never over an existing file.

use std::io::Read;
use std::path::{Path, PathBuf};

use p2p_proto::manifest::hash_chunk;
use p2p_proto::{Bitfield, Manifest};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a partial download failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PartialError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("chunk {0} is past the end of the file")]
    OutOfRange(u64),
    #[error("the download is missing {0} chunks")]
    Incomplete(u64),
    #[error("the finished file's SHA-256 does not match its id")]
    WrongHash,
}

#[derive(Serialize, Deserialize)]
struct State {
    manifest: Manifest,
    have: String,
}

/// One file being downloaded.
#[derive(Debug)]
pub struct PartialDownload {
    manifest: Manifest,
    part_path: PathBuf,
    state_path: PathBuf,
    file: std::fs::File,
    have: Bitfield,
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> PartialError + '_ {
    move |source| PartialError::Io {
        path: path.to_owned(),
        source,
    }
}

impl PartialDownload {
    /// Opens the partial file of `manifest` under `data_dir/.partial`, resuming from its state
    /// file when that describes the same manifest.
    pub fn open(data_dir: &Path, manifest: &Manifest) -> Result<Self, PartialError> {
        let dir = data_dir.join(".partial");
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let part_path = dir.join(format!("{}.part", manifest.id));
        let state_path = dir.join(format!("{}.state", manifest.id));
        let resumed = std::fs::read(&state_path)
            .ok()
            .and_then(|raw| serde_json::from_slice::<State>(&raw).ok())
            .filter(|s| s.manifest.same_content(manifest))
            .and_then(|s| Bitfield::from_base64(&s.have, manifest.chunk_count()).ok())
            .filter(|_| part_path.is_file());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)
            .map_err(io_at(&part_path))?;
        file.set_len(manifest.size).map_err(io_at(&part_path))?;
        Ok(Self {
            have: resumed.unwrap_or_else(|| Bitfield::new(manifest.chunk_count())),
            manifest: manifest.clone(),
            part_path,
            state_path,
            file,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    pub fn part_path(&self) -> &Path {
        &self.part_path
    }

    pub fn is_complete(&self) -> bool {
        self.have.is_complete()
    }

    /// Writes chunk `index` if `data` hashes to its manifest entry; `Ok(false)` when it does
    /// not (nothing is written).
    pub fn write_chunk(&mut self, index: u64, data: &[u8]) -> Result<bool, PartialError> {
        if !chunk_matches(&self.manifest, index, data)? {
            return Ok(false);
        }
        self.write_verified(index, data)?;
        Ok(true)
    }

    /// Writes a chunk already checked with [`chunk_matches`] (so the hash can be computed
    /// without holding whatever guards this download).
    pub fn write_verified(&mut self, index: u64, data: &[u8]) -> Result<(), PartialError> {
        if index >= self.manifest.chunk_count() {
            return Err(PartialError::OutOfRange(index));
        }
        let offset = index * u64::from(self.manifest.chunk_size);
        write_at(&self.file, offset, data).map_err(io_at(&self.part_path))?;
        self.have.set(index);
        Ok(())
    }

    /// Makes the written chunks durable, then records them in the state file (in that order,
    /// so the state never claims data that a crash lost).
    pub fn save_state(&self) -> Result<(), PartialError> {
        self.file.sync_data().map_err(io_at(&self.part_path))?;
        let state = State {
            manifest: self.manifest.clone(),
            have: self.have.to_base64(),
        };
        let tmp = self.state_path.with_extension("state.tmp");
        let json = serde_json::to_vec(&state).map_err(|e| PartialError::Io {
            path: tmp.clone(),
            source: e.into(),
        })?;
        std::fs::write(&tmp, json).map_err(io_at(&tmp))?;
        std::fs::rename(&tmp, &self.state_path).map_err(io_at(&self.state_path))
    }

    /// Checks the whole file against its id and moves it to `dest_dir` under a safe, unused
    /// name. Returns where it went.
    pub fn finish(self, dest_dir: &Path) -> Result<PathBuf, PartialError> {
        self.finish_with(dest_dir, PrefixHash::default())
    }

    /// Like [`PartialDownload::finish`], continuing the whole-file hash from `prefix` (the
    /// chunks hashed in order while they arrived) instead of reading those bytes again.
    pub fn finish_with(self, dest_dir: &Path, prefix: PrefixHash) -> Result<PathBuf, PartialError> {
        let missing = self.have.len() - self.have.count_ones();
        if missing > 0 {
            return Err(PartialError::Incomplete(missing));
        }
        self.file.sync_all().map_err(io_at(&self.part_path))?;
        let (mut hasher, done) = (prefix.hasher, prefix.bytes);
        let mut reader = std::fs::File::open(&self.part_path).map_err(io_at(&self.part_path))?;
        std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(done))
            .map_err(io_at(&self.part_path))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(io_at(&self.part_path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        if <[u8; 32]>::from(hasher.finalize()) != self.manifest.id.0 {
            return Err(PartialError::WrongHash);
        }
        std::fs::create_dir_all(dest_dir).map_err(io_at(dest_dir))?;
        let name = safe_file_name(&self.manifest.name, &self.manifest.id.to_string());
        let dest = unused_path(dest_dir, &name);
        // hard_link fails if the name was taken meanwhile, so nothing is ever overwritten.
        std::fs::hard_link(&self.part_path, &dest)
            .or_else(|_| std::fs::rename(&self.part_path, &dest))
            .map_err(io_at(&dest))?;
        let _ = std::fs::remove_file(&self.part_path);
        let _ = std::fs::remove_file(&self.state_path);
        Ok(dest)
    }
}

/// Whether `data` is chunk `index` of `manifest` (right length and SHA-256).
pub fn chunk_matches(manifest: &Manifest, index: u64, data: &[u8]) -> Result<bool, PartialError> {
    if index >= manifest.chunk_count() {
        return Err(PartialError::OutOfRange(index));
    }
    Ok(data.len() == manifest.chunk_len(index) as usize
        && hash_chunk(data) == manifest.chunk_hashes[index as usize])
}

/// Most out-of-order chunks kept in memory for the running whole-file hash; past this it gives
/// up and the rest is hashed from disk at the end.
const PREFIX_WINDOW: usize = 64;

/// The whole-file SHA-256 computed while chunks arrive: chunks are fed in any order and hashed
/// in file order, so finishing only reads what was not hashed yet.
#[derive(Debug, Clone, Default)]
pub struct PrefixHash {
    hasher: Sha256,
    /// Bytes hashed so far (the file's prefix).
    bytes: u64,
    next: u64,
    pending: std::collections::BTreeMap<u64, bytes::Bytes>,
    gave_up: bool,
}

impl PrefixHash {
    /// Feeds a verified chunk.
    pub fn feed(&mut self, index: u64, data: bytes::Bytes) {
        if self.gave_up || index < self.next {
            return;
        }
        self.pending.insert(index, data);
        while let Some(data) = self.pending.remove(&self.next) {
            self.hasher.update(&data);
            self.bytes += data.len() as u64;
            self.next += 1;
        }
        if self.pending.len() > PREFIX_WINDOW {
            self.gave_up = true;
            self.pending.clear();
        }
    }

    /// Bytes of the file already hashed.
    pub fn hashed(&self) -> u64 {
        self.bytes
    }
}

fn write_at(file: &std::fs::File, offset: u64, data: &[u8]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, data, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = file;
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(data)
    }
}

/// A file name from the network made safe to create: one path component, no control
/// characters, no leading dots, at most 200 bytes; `download-<id>` when nothing is left.
pub fn safe_file_name(name: &str, id: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.').trim();
    let mut out = String::new();
    for c in trimmed.chars() {
        if out.len() + c.len_utf8() > 200 {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        format!("download-{}", &id[..id.len().min(16)])
    } else {
        out
    }
}

/// `dir/name`, or `dir/stem (n).ext` for the first n that is free.
fn unused_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
        _ => (name, String::new()),
    };
    (1..)
        .map(|n| dir.join(format!("{stem} ({n}){ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::manifest_for_file;

    #[test]
    fn prefix_hash_in_any_order_matches() {
        let chunks: Vec<bytes::Bytes> =
            (0..5u8).map(|i| bytes::Bytes::from(vec![i; 100])).collect();
        let mut p = PrefixHash::default();
        for i in [1usize, 0, 3, 2] {
            p.feed(i as u64, chunks[i].clone());
        }
        assert_eq!(p.hashed(), 400);
        p.feed(0, chunks[0].clone()); // a duplicate is ignored
        p.feed(4, chunks[4].clone());
        let mut whole = Sha256::new();
        for c in &chunks {
            whole.update(c);
        }
        assert_eq!(p.hasher.finalize(), whole.finalize());
    }

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe_file_name("../../etc/passwd", "ab"), "passwd");
        assert_eq!(safe_file_name("..\\..\\win.ini", "ab"), "win.ini");
        assert_eq!(safe_file_name(".hidden", "ab"), "hidden");
        assert_eq!(safe_file_name("a\nb:c", "ab"), "a_b_c");
        assert_eq!(safe_file_name("..", "abcdef"), "download-abcdef");
        assert_eq!(safe_file_name("", "abcdef"), "download-abcdef");
        assert!(safe_file_name(&"é".repeat(300), "x").len() <= 200);
    }

    #[test]
    fn write_verify_resume_and_finish_without_overwriting() {
        let src = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let path = src.path().join("movie.mkv");
        std::fs::write(&path, &data).unwrap();
        let m = manifest_for_file(&path, "movie.mkv").unwrap();
        let chunk = |i: u64| {
            let start = (i * 262_144) as usize;
            &data[start..(start + m.chunk_len(i) as usize)]
        };

        let work = tempfile::tempdir().unwrap();
        let mut p = PartialDownload::open(work.path(), &m).unwrap();
        assert!(
            !p.write_chunk(0, chunk(1)).unwrap(),
            "a wrong chunk is refused"
        );
        assert!(!p.have().get(0));
        assert!(p.write_chunk(0, chunk(0)).unwrap());
        assert!(p.write_chunk(2, chunk(2)).unwrap());
        p.save_state().unwrap();
        drop(p);

        // After a restart only chunk 1 is missing.
        let mut p = PartialDownload::open(work.path(), &m).unwrap();
        assert_eq!(p.have().count_ones(), 2);
        assert!(!p.have().get(1));
        assert!(matches!(
            PartialDownload::open(work.path(), &m)
                .unwrap()
                .finish(work.path()),
            Err(PartialError::Incomplete(1))
        ));
        assert!(p.write_chunk(1, chunk(1)).unwrap());
        std::fs::write(work.path().join("movie.mkv"), b"someone else's file").unwrap();
        let dest = p.finish(work.path()).unwrap();
        assert_eq!(dest, work.path().join("movie (1).mkv"));
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert_eq!(
            std::fs::read(work.path().join("movie.mkv")).unwrap(),
            b"someone else's file"
        );
        assert!(
            !work
                .path()
                .join(".partial")
                .join(format!("{}.state", m.id))
                .exists()
        );
    }
}
