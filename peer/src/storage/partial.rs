//! A download in progress: `<data>/.partial/<id>.part` holds the chunks written so far at their
//! offsets, `<id>.state` which of them are verified. After a crash the same download resumes
//! with only the missing chunks. Only chunks verified against the manifest's hash chain
//! ([`VerifiedChunk`]) are written, and those the state file lists are verified again when the
//! download resumes, so a complete download hashes to its id without another pass over it (see
//! `p2p_proto::manifest`). Completion renames the file into place atomically, never over an
//! existing file.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use p2p_proto::manifest::ChunkError;
use p2p_proto::sha256_lanes;
use p2p_proto::{Bitfield, FileId, Manifest};
use serde::{Deserialize, Serialize};

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
    #[error("a chunk verified for file {got} cannot go into the download of {expected}")]
    OtherFile { expected: FileId, got: FileId },
    #[error("the download is missing {0} chunks")]
    Incomplete(u64),
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    manifest: Manifest,
    have: String,
}

/// A chunk's bytes, checked against its file's manifest: the only thing a
/// [`PartialDownload`] writes.
#[derive(Debug, Clone)]
pub struct VerifiedChunk {
    file: FileId,
    index: u64,
    data: Bytes,
}

impl VerifiedChunk {
    /// Checks `data` as chunk `index` of `manifest` (one SHA-256 pass; see
    /// [`Manifest::verify_chunk`]).
    pub fn check(manifest: &Manifest, index: u64, data: Bytes) -> Result<Self, ChunkError> {
        manifest.verify_chunk(index, &data)?;
        Ok(Self {
            file: manifest.id,
            index,
            data,
        })
    }

    /// Checks several chunks of `manifest` at once, with their hashing interleaved (see
    /// [`Manifest::verify_chunks`]); the results come in the order given.
    pub fn check_all(
        manifest: &Manifest,
        chunks: Vec<(u64, Bytes)>,
    ) -> Vec<(u64, Result<Self, ChunkError>)> {
        let views: Vec<(u64, &[u8])> = chunks.iter().map(|(i, d)| (*i, d.as_ref())).collect();
        let verdicts = manifest.verify_chunks(&views);
        chunks
            .into_iter()
            .zip(verdicts)
            .map(|((index, data), verdict)| {
                let chunk = verdict.map(|()| Self {
                    file: manifest.id,
                    index,
                    data,
                });
                (index, chunk)
            })
            .collect()
    }
}

/// One file being downloaded.
#[derive(Debug)]
pub struct PartialDownload {
    manifest: Manifest,
    part_path: PathBuf,
    state_path: PathBuf,
    file: std::fs::File,
    have: Bitfield,
    /// Chunks the state file listed that no longer matched when resuming.
    discarded: u64,
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> PartialError + '_ {
    move |source| PartialError::Io {
        path: path.to_owned(),
        source,
    }
}

impl PartialDownload {
    /// Opens the partial file of `manifest` under `data_dir/.partial`, resuming from its state
    /// file when that describes the same manifest. Resumed chunks are read back and verified;
    /// any that no longer match are fetched again. Blocking.
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
        let mut download = Self {
            have: Bitfield::new(manifest.chunk_count()),
            manifest: manifest.clone(),
            part_path,
            state_path,
            file,
            discarded: 0,
        };
        if let Some(listed) = resumed {
            download.reverify(&listed)?;
        }
        Ok(download)
    }

    /// Takes the chunks of `listed` that still match the manifest on disk, checking them a few
    /// at a time (see [`Manifest::verify_chunks`]).
    fn reverify(&mut self, listed: &Bitfield) -> Result<(), PartialError> {
        let listed: Vec<u64> = (0..listed.len()).filter(|&i| listed.get(i)).collect();
        let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); sha256_lanes::MAX_LANES];
        for group in listed.chunks(sha256_lanes::MAX_LANES) {
            for (&index, buf) in group.iter().zip(bufs.iter_mut()) {
                buf.resize(self.manifest.chunk_len(index) as usize, 0);
                let offset = index * u64::from(self.manifest.chunk_size);
                read_at(&self.file, offset, buf).map_err(io_at(&self.part_path))?;
            }
            let batch: Vec<(u64, &[u8])> = group
                .iter()
                .zip(&bufs)
                .map(|(&index, buf)| (index, buf.as_slice()))
                .collect();
            for (&index, verdict) in group.iter().zip(self.manifest.verify_chunks(&batch)) {
                if verdict.is_ok() {
                    self.have.set(index);
                } else {
                    self.discarded += 1;
                }
            }
        }
        Ok(())
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

    /// Chunks the state file listed that no longer matched when resuming (fetched again).
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Verifies `data` as chunk `index` and writes it; `Ok(false)` when it does not match
    /// (nothing is written).
    pub fn write_chunk(&mut self, index: u64, data: &[u8]) -> Result<bool, PartialError> {
        match self.manifest.verify_chunk(index, data) {
            Ok(()) => self.write_at_index(index, data).map(|()| true),
            Err(ChunkError::OutOfRange(_)) => Err(PartialError::OutOfRange(index)),
            Err(_) => Ok(false),
        }
    }

    /// Writes a chunk verified with [`VerifiedChunk::check`] (so the hash can be computed
    /// without holding whatever guards this download).
    pub fn write_verified(&mut self, chunk: &VerifiedChunk) -> Result<(), PartialError> {
        if chunk.file != self.manifest.id {
            return Err(PartialError::OtherFile {
                expected: self.manifest.id,
                got: chunk.file,
            });
        }
        self.write_at_index(chunk.index, &chunk.data)
    }

    /// Writes chunk `index`'s verified bytes at its offset and records it.
    fn write_at_index(&mut self, index: u64, data: &[u8]) -> Result<(), PartialError> {
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

    /// Flushes the complete file and moves it to `dest_dir` under a safe, unused name. Returns
    /// where it went. Every chunk was verified against the hash chain, which makes the whole
    /// file's SHA-256 its id; an empty file's manifest was checked to carry the empty id.
    pub fn finish(self, dest_dir: &Path) -> Result<PathBuf, PartialError> {
        self.complete(dest_dir)?.place()
    }

    /// The first step of [`PartialDownload::finish`]: checks that every chunk is there and
    /// flushes the file to disk (which may take a while); [`Completion::place`] then moves it,
    /// quickly, so that a caller can make the move atomic with switching what serves from the
    /// file (see [`crate::storage::Library::complete_with`]).
    pub fn complete(self, dest_dir: &Path) -> Result<Completion, PartialError> {
        let missing = self.have.len() - self.have.count_ones();
        if missing > 0 {
            return Err(PartialError::Incomplete(missing));
        }
        self.file.sync_all().map_err(io_at(&self.part_path))?;
        std::fs::create_dir_all(dest_dir).map_err(io_at(dest_dir))?;
        Ok(Completion {
            name: safe_file_name(&self.manifest.name, &self.manifest.id.to_string()),
            dest_dir: dest_dir.to_owned(),
            part_path: self.part_path,
            state_path: self.state_path,
        })
    }
}

/// A complete, flushed partial download about to be moved into place (see
/// [`PartialDownload::complete`]).
#[derive(Debug)]
pub struct Completion {
    part_path: PathBuf,
    state_path: PathBuf,
    dest_dir: PathBuf,
    name: String,
}

impl Completion {
    /// Moves the file into the destination directory under a safe, unused name and removes
    /// the partial download's files. Returns where it went.
    pub fn place(self) -> Result<PathBuf, PartialError> {
        let dest = place_without_overwriting(&self.part_path, &self.dest_dir, &self.name)?;
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

/// A file name from the network made safe to create: one path component; no control or
/// Unicode format characters (bidi overrides such as U+202E, which make `exe.txt` of
/// `txt.exe`, zero-width characters), nor characters Windows forbids; no leading dots, no
/// trailing dots or spaces; not a name Windows reserves for a device (`CON`, `NUL`, `COM1`…,
/// with any extension), which gets a leading `_`; at most 200 bytes; `download-<id>` when
/// nothing is left.
pub fn safe_file_name(name: &str, id: &str) -> String {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .map(|c| {
            let unsafe_char = c.is_control()
                || c.general_category() == GeneralCategory::Format
                || matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|');
            if unsafe_char { '_' } else { c }
        })
        .collect();
    let trimmed = cleaned
        .trim()
        .trim_start_matches('.')
        .trim_end_matches(['.', ' '])
        .trim();
    let mut out = String::new();
    if is_reserved_on_windows(trimmed) {
        out.push('_');
    }
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

/// Whether Windows takes `name` for a device: `CON`, `PRN`, `AUX`, `NUL`, `COM0`–`COM9`,
/// `LPT0`–`LPT9` (also with superscript digits), in any case, alone or before an extension.
fn is_reserved_on_windows(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or("").trim_end();
    let upper = stem.to_ascii_uppercase();
    match upper.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" => true,
        _ => {
            let (Some(prefix), Some(digit)) = (upper.get(..3), upper.get(3..)) else {
                return false;
            };
            matches!(prefix, "COM" | "LPT")
                && (matches!(digit, "¹" | "²" | "³")
                    || (digit.len() == 1 && digit.as_bytes()[0].is_ascii_digit()))
        }
    }
}

/// Most names tried for one download (`name`, `name (1)`, … `name (999)`).
const NAME_TRIES: usize = 1000;

/// `name`, then `stem (n).ext` for n = 1, 2, …: the names a completed download may take.
pub(crate) fn candidate_names(name: &str) -> impl Iterator<Item = String> + '_ {
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
        _ => (name, String::new()),
    };
    std::iter::once(name.to_owned())
        .chain((1..).map(move |n| format!("{stem} ({n}){ext}")))
        .take(NAME_TRIES)
}

/// Puts `from` at `dir/name`, or the first free of [`candidate_names`], never replacing a
/// file: a hard link fails when the name is taken (then the next name is tried); where hard
/// links are not supported, the name is first claimed by creating it exclusively, and only
/// that empty file of ours is replaced by the rename.
fn place_without_overwriting(from: &Path, dir: &Path, name: &str) -> Result<PathBuf, PartialError> {
    place(from, dir, name, true)
}

/// [`place_without_overwriting`], trying hard links first only when `links`.
fn place(from: &Path, dir: &Path, name: &str, mut links: bool) -> Result<PathBuf, PartialError> {
    let mut last = None;
    for candidate in candidate_names(name) {
        let dest = dir.join(candidate);
        if links {
            match std::fs::hard_link(from, &dest) {
                Ok(()) => return Ok(dest),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    last = Some((dest, e));
                    continue;
                }
                // No hard links on this file system (or not for this file): claim names.
                Err(_) => links = false,
            }
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&dest)
        {
            Ok(_) => {
                std::fs::rename(from, &dest).map_err(io_at(&dest))?;
                return Ok(dest);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some((dest, e)),
            Err(e) => return Err(io_at(&dest)(e)),
        }
    }
    let (path, source) =
        last.unwrap_or_else(|| (dir.join(name), std::io::ErrorKind::AlreadyExists.into()));
    Err(PartialError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::manifest_for_file;

    #[test]
    fn completion_never_replaces_a_file_with_or_without_hard_links() {
        for links in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("f.bin"), b"mine").unwrap();
            std::fs::write(dir.path().join("f (1).bin"), b"mine too").unwrap();
            let from = dir.path().join("part");
            std::fs::write(&from, b"downloaded").unwrap();
            let placed = place(&from, dir.path(), "f.bin", links).unwrap();
            assert_eq!(placed, dir.path().join("f (2).bin"), "links: {links}");
            assert_eq!(std::fs::read(&placed).unwrap(), b"downloaded");
            assert_eq!(std::fs::read(dir.path().join("f.bin")).unwrap(), b"mine");
            assert_eq!(
                std::fs::read(dir.path().join("f (1).bin")).unwrap(),
                b"mine too"
            );
        }
    }

    #[test]
    fn resumed_chunks_are_verified_again() {
        let src = tempfile::tempdir().unwrap();
        let chunk = 262_144usize;
        let data: Vec<u8> = (0..(chunk * 9 + 1000))
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let path = src.path().join("f.bin");
        std::fs::write(&path, &data).unwrap();
        let m = manifest_for_file(&path, "f.bin").unwrap();
        let piece = |i: u64| &data[i as usize * chunk..][..m.chunk_len(i) as usize];
        let work = tempfile::tempdir().unwrap();
        let mut p = PartialDownload::open(work.path(), &m).unwrap();
        // Eight chunks listed (two batches of checks), the short last one among them.
        let listed = [0, 1, 3, 4, 5, 6, 8, 9];
        for i in listed {
            assert!(p.write_chunk(i, piece(i)).unwrap());
        }
        p.save_state().unwrap();
        drop(p);
        // Chunks 1 and 6 rot on disk while the peer is down.
        let part = work.path().join(".partial").join(format!("{}.part", m.id));
        let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
        write_at(&f, chunk as u64 + 7, b"rot").unwrap();
        write_at(&f, 6 * chunk as u64 + 100, b"rot").unwrap();
        let mut p = PartialDownload::open(work.path(), &m).unwrap();
        assert_eq!(p.discarded(), 2);
        let kept: Vec<u64> = (0..10).filter(|&i| p.have().get(i)).collect();
        assert_eq!(kept, [0, 3, 4, 5, 8, 9]);
        for i in [1, 2, 6, 7] {
            assert!(p.write_chunk(i, piece(i)).unwrap());
        }
        let dest = p.finish(work.path()).unwrap();
        assert_eq!(std::fs::read(dest).unwrap(), data);
    }

    #[test]
    fn a_chunk_verified_for_another_file_is_refused() {
        let a = Manifest::of_bytes("a", b"aaa", p2p_proto::CHUNK_SIZE).unwrap();
        let b = Manifest::of_bytes("b", b"bbb", p2p_proto::CHUNK_SIZE).unwrap();
        let work = tempfile::tempdir().unwrap();
        let mut p = PartialDownload::open(work.path(), &a).unwrap();
        let chunk = VerifiedChunk::check(&b, 0, Bytes::from_static(b"bbb")).unwrap();
        assert!(matches!(
            p.write_verified(&chunk),
            Err(PartialError::OtherFile { .. })
        ));
        assert!(VerifiedChunk::check(&a, 0, Bytes::from_static(b"bbb")).is_err());
        assert!(!p.have().get(0));
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
        // Format characters: a bidi override would show `exe.txt` for `txt.exe`.
        assert_eq!(
            safe_file_name("photo\u{202E}gpj.exe", "ab"),
            "photo_gpj.exe"
        );
        assert_eq!(
            safe_file_name("a\u{200B}b\u{2066}c\u{FEFF}", "ab"),
            "a_b_c_"
        );
        // Names Windows keeps for devices.
        for reserved in [
            "CON",
            "con.txt",
            "NUL.tar.gz",
            "com1",
            "LPT9.log",
            "aux ",
            "COM¹",
        ] {
            let safe = safe_file_name(reserved, "ab");
            assert!(safe.starts_with('_'), "{reserved:?} → {safe:?}");
        }
        for fine in ["CONSOLE.txt", "com10", "nullable", "lpt"] {
            assert_eq!(safe_file_name(fine, "ab"), fine);
        }
        assert_eq!(safe_file_name("name. . ", "ab"), "name");
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
