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

#[derive(Debug, Serialize, Deserialize)]
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
        self.snapshot()?.save()
    }

    /// What [`ResumeSnapshot::save`] needs, taken quickly (under whatever guards this download)
    /// so the slow part, flushing to disk, runs without holding it.
    pub fn snapshot(&self) -> Result<ResumeSnapshot, PartialError> {
        Ok(ResumeSnapshot {
            file: self.file.try_clone().map_err(io_at(&self.part_path))?,
            part_path: self.part_path.clone(),
            state_path: self.state_path.clone(),
            state: State {
                manifest: self.manifest.clone(),
                have: self.have.to_base64(),
            },
        })
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

/// The resume state at one moment: which chunks were written by then.
#[derive(Debug)]
pub struct ResumeSnapshot {
    file: std::fs::File,
    part_path: PathBuf,
    state_path: PathBuf,
    state: State,
}

impl ResumeSnapshot {
    /// Flushes the partial file, then writes the state file atomically. Blocking.
    pub fn save(&self) -> Result<(), PartialError> {
        self.file.sync_data().map_err(io_at(&self.part_path))?;
        let tmp = self.state_path.with_extension("state.tmp");
        let json = serde_json::to_vec(&self.state).map_err(|e| PartialError::Io {
            path: tmp.clone(),
            source: e.into(),
        })?;
        std::fs::write(&tmp, json).map_err(io_at(&tmp))?;
        std::fs::rename(&tmp, &self.state_path).map_err(io_at(&self.state_path))
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

/// Chunks kept in memory for the whole-file hash while earlier ones are still missing; chunks
/// beyond that are read back from the partial file when their turn comes.
const HASH_WINDOW: usize = 64;

/// The whole-file SHA-256 of a download as far as it got: the file's first `bytes` bytes.
#[derive(Debug, Clone, Default)]
pub struct PrefixHash {
    hasher: Sha256,
    bytes: u64,
}

impl PrefixHash {
    /// Bytes of the file already hashed.
    pub fn hashed(&self) -> u64 {
        self.bytes
    }
}

/// Computes a download's whole-file SHA-256 on its own thread while chunks arrive in any
/// order: each written chunk is announced with [`WholeFileHasher::written`]; the thread hashes
/// the file's prefix as it grows, from memory while the gap is small, else from the partial
/// file. Finishing then hashes nothing, or only what the thread could not read.
#[derive(Debug)]
pub struct WholeFileHasher {
    tx: Option<std::sync::mpsc::SyncSender<(u64, bytes::Bytes)>>,
    thread: Option<std::thread::JoinHandle<PrefixHash>>,
}

impl WholeFileHasher {
    /// Starts hashing `download`, beginning with the chunks it already has.
    pub fn spawn(download: &PartialDownload) -> Result<Self, PartialError> {
        let file = std::fs::File::open(&download.part_path).map_err(io_at(&download.part_path))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(HASH_WINDOW * 2);
        let mut state = HashThread {
            prefix: PrefixHash::default(),
            next: 0,
            written: download.have.clone(),
            window: std::collections::BTreeMap::new(),
            file,
            chunk_size: download.manifest.chunk_size,
            size: download.manifest.size,
            failed: false,
        };
        let thread = std::thread::Builder::new()
            .name("whole-file-hash".into())
            .spawn(move || {
                state.advance();
                while let Ok((index, data)) = rx.recv() {
                    state.add(index, data);
                }
                state.prefix
            })
            .map_err(io_at(&download.part_path))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Tells the thread chunk `index` (`data`) is verified and written. Blocks while the
    /// thread is far behind, so hashing paces the download instead of piling up memory.
    pub fn written(&self, index: u64, data: bytes::Bytes) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((index, data));
        }
    }

    /// Waits for the thread and returns what it hashed (blocking).
    pub fn finish(mut self) -> PrefixHash {
        self.tx = None;
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

struct HashThread {
    prefix: PrefixHash,
    /// The first chunk not hashed yet.
    next: u64,
    written: Bitfield,
    window: std::collections::BTreeMap<u64, bytes::Bytes>,
    file: std::fs::File,
    chunk_size: u32,
    size: u64,
    /// A read failed: stop here and let finishing read (and report) the rest.
    failed: bool,
}

impl HashThread {
    fn add(&mut self, index: u64, data: bytes::Bytes) {
        if index >= self.written.len() || index < self.next {
            return;
        }
        self.written.set(index);
        if self.window.len() < HASH_WINDOW {
            self.window.insert(index, data);
        }
        self.advance();
    }

    fn advance(&mut self) {
        while !self.failed && self.next < self.written.len() && self.written.get(self.next) {
            let index = self.next;
            let data = match self.window.remove(&index) {
                Some(data) => data,
                None => {
                    let offset = index * u64::from(self.chunk_size);
                    let len = (self.size - offset).min(u64::from(self.chunk_size)) as usize;
                    let mut buf = vec![0u8; len];
                    let read = read_at(&self.file, offset, &mut buf);
                    if read.is_err() {
                        self.failed = true;
                        self.window.clear();
                        return;
                    }
                    bytes::Bytes::from(buf)
                }
            };
            self.prefix.hasher.update(&data);
            self.prefix.bytes += data.len() as u64;
            self.next += 1;
        }
    }
}

/// Reads exactly `buf.len()` bytes at `offset` (no shared file position).
pub(super) fn read_at(file: &std::fs::File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = file;
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(buf)
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
    fn the_whole_file_hash_follows_chunks_in_any_order() {
        let src = tempfile::tempdir().unwrap();
        let chunk = 262_144usize;
        let data: Vec<u8> = (0..(chunk * 70 + 1000))
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let path = src.path().join("f.bin");
        std::fs::write(&path, &data).unwrap();
        let m = manifest_for_file(&path, "f.bin").unwrap();
        let piece = |i: u64| {
            let s = i as usize * chunk;
            bytes::Bytes::copy_from_slice(&data[s..(s + m.chunk_len(i) as usize)])
        };
        let work = tempfile::tempdir().unwrap();
        let mut p = PartialDownload::open(work.path(), &m).unwrap();
        // Resumed with chunk 0; then the rest arrives back to front, more than the in-memory
        // window, so the thread reads some chunks back from the partial file.
        assert!(p.write_chunk(0, &piece(0)).unwrap());
        let hasher = WholeFileHasher::spawn(&p).unwrap();
        for i in (1..m.chunk_count()).rev() {
            assert!(p.write_chunk(i, &piece(i)).unwrap());
            hasher.written(i, piece(i));
        }
        let prefix = hasher.finish();
        assert_eq!(
            prefix.hashed(),
            data.len() as u64,
            "all of it hashed while arriving"
        );
        assert_eq!(<[u8; 32]>::from(prefix.hasher.clone().finalize()), m.id.0);
        let dest = p.finish_with(work.path(), prefix).unwrap();
        assert_eq!(std::fs::read(dest).unwrap(), data);
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
