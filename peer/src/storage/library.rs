//! The files this peer offers: complete shared files and partial downloads, by id.
//!
//! Every chunk is checked against its hash before it is served, once per version of the file on
//! disk: a shared file's chunks were all hashed when it was shared, and stay trusted while its
//! size, inode and change time (`ctime`, which no user can set back) stay the same; any change
//! makes each chunk be hashed again on its next read. Timestamps are coarse (a clock tick, or
//! two seconds on some filesystems), so trust only starts [`SETTLE`] after the file's last
//! change: a file changed just before it was hashed is hashed on every read until then. A
//! partial download's chunks are verified before they are written, into a file only this peer
//! writes.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use p2p_proto::{Bitfield, FileId, Manifest};
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;

use super::hashing::hash_file;
use super::inline::InlineIo;
use super::partial::read_at;
use super::stamp::{FileStamp, HashedFile, SETTLE};
use super::visibility::Visibility;

/// Why a chunk cannot be served or a file cannot be shared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LibraryError {
    #[error("file {0} is not shared here")]
    UnknownFile(FileId),
    #[error("chunk {index} of {file} is not here (yet)")]
    NotAvailable { file: FileId, index: u64 },
    #[error("chunk {index} of {file} no longer matches its hash: the file changed on disk")]
    Changed { file: FileId, index: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} has no usable file name")]
    NoName(PathBuf),
    #[error("background task failed")]
    Task,
}

/// One file on offer.
#[derive(Debug)]
pub struct SharedFile {
    pub manifest: Manifest,
    path: RwLock<PathBuf>,
    have: RwLock<Bitfield>,
    verified: Mutex<Verified>,
    settle: Duration,
}

/// Which chunks were checked against their hashes, and for which version of the file.
#[derive(Debug)]
struct Verified {
    /// The file's version when the bits were set; `None` for a partial download of our own,
    /// whose chunks are checked before they are written.
    stamp: Option<FileStamp>,
    /// When the checks of this version began.
    since: SystemTime,
    bits: Bitfield,
}

impl Verified {
    fn own(bits: Bitfield) -> Self {
        Self {
            stamp: None,
            since: SystemTime::UNIX_EPOCH,
            bits,
        }
    }
}

impl SharedFile {
    pub fn have(&self) -> Bitfield {
        self.have.read().clone()
    }

    pub fn path(&self) -> PathBuf {
        self.path.read().clone()
    }

    /// Opens the file where it lives now, and says where that is. Opened under the path's
    /// lock: a download completing moves its file under the same lock (see
    /// [`Library::complete_with`]), so the file is found at its old path or its new one, never
    /// in between.
    fn open(&self) -> (PathBuf, std::io::Result<std::fs::File>) {
        let path = self.path.read();
        (path.clone(), std::fs::File::open(&*path))
    }

    /// Whether chunk `index`, read from the file as it is now (`stamp`), needs no hash check.
    fn trusted(&self, index: u64, stamp: FileStamp) -> bool {
        let v = self.verified.lock();
        let same = match v.stamp {
            None => true,
            Some(s) => s == stamp && s.settled_before(v.since, self.settle),
        };
        same && index < v.bits.len() && v.bits.get(index)
    }

    /// Records that chunk `index`, read at `read_start` from the file as it is then (`stamp`),
    /// matched its hash.
    fn mark_verified(&self, index: u64, stamp: FileStamp, read_start: SystemTime) {
        let mut v = self.verified.lock();
        if let Some(s) = v.stamp
            && (s != stamp || !s.settled_before(v.since, self.settle))
        {
            // Another version: nothing checked before counts any more.
            v.stamp = Some(stamp);
            v.since = read_start;
            v.bits = Bitfield::new(self.manifest.chunk_count());
        }
        let counts = v.stamp.is_none() || stamp.settled_before(v.since, self.settle);
        if counts && index < v.bits.len() {
            v.bits.set(index);
        }
    }
}

/// All files on offer.
#[derive(Debug)]
pub struct Library {
    files: RwLock<HashMap<FileId, Arc<SharedFile>>>,
    /// Chunks that became available, for telling connected peers (`Have`).
    haves: tokio::sync::broadcast::Sender<(FileId, u64)>,
    settle: Duration,
    /// Chunks hashed again before they were served (the file changed, or was too fresh).
    rehashed: AtomicU64,
    /// Whether chunk reads run in place (see [`InlineIo`]).
    io: InlineIo,
    /// Which files are public (the rest are served to admitted peers only).
    pub visibility: Visibility,
    /// Files shared on their own ([`Library::share`], [`Library::mark_alone`]), not only as a
    /// folder's member: unsharing a folder leaves them on offer.
    alone: RwLock<HashSet<FileId>>,
}

impl Default for Library {
    fn default() -> Self {
        Self::with_settle(SETTLE)
    }
}

impl Library {
    pub fn new() -> Self {
        Self::default()
    }

    /// A library trusting a file's version stamp `settle` after its last change (see the
    /// module docs; [`SETTLE`] by default).
    pub fn with_settle(settle: Duration) -> Self {
        Self {
            files: RwLock::default(),
            haves: tokio::sync::broadcast::channel(4096).0,
            settle,
            rehashed: AtomicU64::new(0),
            io: InlineIo::default(),
            visibility: Visibility::default(),
            alone: RwLock::default(),
        }
    }

    /// Whether `id` is public: served without admission and announced on the DHT.
    pub fn is_public(&self, id: &FileId) -> bool {
        self.visibility.is_public(id)
    }

    /// How many served chunks had to be hashed again.
    pub fn rehashed_chunks(&self) -> u64 {
        self.rehashed.load(Ordering::Relaxed)
    }

    /// Newly available chunks of partial files, as they are verified.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<(FileId, u64)> {
        self.haves.subscribe()
    }

    /// Hashes the file at `path` (off the reactor) and offers it whole.
    pub async fn share(&self, path: &Path) -> Result<Manifest, LibraryError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| LibraryError::NoName(path.to_owned()))?
            .to_owned();
        let owned = path.to_owned();
        let hashed = tokio::task::spawn_blocking(move || {
            hash_file(&owned, &name, &CancellationToken::new())
        })
        .await
        .map_err(|_| LibraryError::Task)?
        .map_err(|source| LibraryError::Io {
            path: path.to_owned(),
            source,
        })?;
        let manifest = hashed.manifest.clone();
        self.offer(path.to_owned(), hashed);
        self.mark_alone(manifest.id);
        Ok(manifest)
    }

    /// Notes that `id` is shared on its own (shared or downloaded as a file, not only as a
    /// folder's member), so unsharing a folder that has it leaves it on offer.
    pub fn mark_alone(&self, id: FileId) {
        self.alone.write().insert(id);
    }

    /// Whether `id` is shared on its own ([`Library::mark_alone`]).
    pub fn is_alone(&self, id: &FileId) -> bool {
        self.alone.read().contains(id)
    }

    /// Offers the file at `path` whole, with a manifest known to describe it: its chunks are
    /// trusted while the file keeps the version `hashed` names (see the module docs), and
    /// checked again on read once it changes. Replaces what was offered under the same id.
    pub fn offer(&self, path: PathBuf, hashed: HashedFile) {
        let full = Bitfield::full(hashed.manifest.chunk_count());
        let verified = Verified {
            stamp: Some(hashed.stamp),
            since: hashed.since,
            bits: full.clone(),
        };
        self.add(hashed.manifest, path, full, verified);
    }

    /// Stops offering `id` when it is offered from `path` (not when a partial download or
    /// another copy of the same content is what is offered). Returns whether it was.
    pub fn unshare(&self, id: &FileId, path: &Path) -> bool {
        let mut files = self.files.write();
        let here = files
            .get(id)
            .is_some_and(|e| e.path.read().as_path() == path);
        here && files.remove(id).is_some()
    }

    /// Stops offering `id`, wherever it lives (the shell's `unshare`); its manifest, or `None`
    /// when it was not on offer. The file on disk stays.
    pub fn withdraw(&self, id: &FileId) -> Option<Manifest> {
        self.alone.write().remove(id);
        let entry = self.files.write().remove(id)?;
        Some(entry.manifest.clone())
    }

    /// Where each file on offer lives.
    pub fn paths(&self) -> HashMap<PathBuf, FileId> {
        self.files
            .read()
            .iter()
            .map(|(id, e)| (e.path(), *id))
            .collect()
    }

    /// The manifest of a whole file on offer with the version of it whose every chunk was
    /// checked (when it was shared, or as a download wrote it); `None` for a partial download
    /// or a file that changed since.
    pub fn hashed(&self, id: &FileId) -> Option<HashedFile> {
        let entry = self.get(id)?;
        let v = entry.verified.lock();
        if !v.bits.is_complete() || !entry.have().is_complete() {
            return None;
        }
        Some(HashedFile {
            manifest: entry.manifest.clone(),
            stamp: v.stamp?,
            since: v.since,
        })
    }

    /// Offers a partial download of our own whose chunks in `have` are verified.
    pub fn insert(&self, manifest: Manifest, path: PathBuf, have: Bitfield) -> Arc<SharedFile> {
        let verified = Verified::own(have.clone());
        self.add(manifest, path, have, verified)
    }

    fn add(
        &self,
        manifest: Manifest,
        path: PathBuf,
        have: Bitfield,
        verified: Verified,
    ) -> Arc<SharedFile> {
        let entry = Arc::new(SharedFile {
            manifest,
            path: RwLock::new(path),
            have: RwLock::new(have),
            verified: Mutex::new(verified),
            settle: self.settle,
        });
        self.files.write().insert(entry.manifest.id, entry.clone());
        entry
    }

    pub fn get(&self, id: &FileId) -> Option<Arc<SharedFile>> {
        self.files.read().get(id).cloned()
    }

    /// Manifests of the public files on offer (what the DHT is told of).
    pub fn list_public(&self) -> Vec<(Manifest, Bitfield)> {
        let files = self.files.read();
        files
            .values()
            .filter(|e| self.is_public(&e.manifest.id))
            .map(|e| (e.manifest.clone(), e.have()))
            .collect()
    }

    /// Manifests of everything on offer.
    pub fn list(&self) -> Vec<(Manifest, Bitfield)> {
        let files = self.files.read();
        files
            .values()
            .map(|e| (e.manifest.clone(), e.have()))
            .collect()
    }

    /// Records a newly verified and written chunk of a partial download.
    pub fn mark_have(&self, id: &FileId, index: u64) {
        if let Some(entry) = self.get(id) {
            let mut have = entry.have.write();
            {
                let mut v = entry.verified.lock();
                if v.stamp.is_none() {
                    v.bits.set(index);
                }
            }
            have.set(index);
            let _ = self.haves.send((*id, index));
        }
    }

    /// Moves a finished download of `id` into place with `place` (which says where it went)
    /// and offers it whole from there (every chunk was checked, so the whole file has its id),
    /// in one step for the peers it serves: chunk reads open the file under the entry's path
    /// lock, which is held across the move, so none finds the file gone from the path it was
    /// offered at. `place` runs with reads of this file waiting: it should only move (see
    /// [`crate::storage::Completion`]).
    pub fn complete_with<E>(
        &self,
        id: &FileId,
        place: impl FnOnce() -> Result<PathBuf, E>,
    ) -> Result<PathBuf, E> {
        let Some(entry) = self.get(id) else {
            return place();
        };
        let mut at = entry.path.write();
        let path = place()?;
        let full = Bitfield::full(entry.manifest.chunk_count());
        let verified = match std::fs::metadata(&path) {
            Ok(meta) => Verified {
                stamp: Some(FileStamp::of(&meta)),
                since: SystemTime::now(),
                bits: full.clone(),
            },
            Err(_) => Verified::own(Bitfield::new(entry.manifest.chunk_count())),
        };
        *entry.verified.lock() = verified;
        *at = path.clone();
        *entry.have.write() = full;
        Ok(path)
    }

    /// Reads chunk `index`, checked against the manifest unless this version of the file
    /// was checked already (see the module docs).
    pub async fn read_chunk(&self, id: &FileId, index: u64) -> Result<Bytes, LibraryError> {
        let (buf, read) = self.read_chunk_into(id, index, Vec::new(), true).await;
        read.map(|()| Bytes::from(buf))
    }

    /// Reads chunk `index` into the room `buf` gives (so an uploader can read it straight into
    /// its send buffer), checked as by [`Library::read_chunk`]. The buffer comes back either way,
    /// for reuse; after an error its content is unspecified. With `in_place`, the read may run
    /// on the calling task (see [`InlineIo`]).
    pub async fn read_chunk_into<B: ChunkBuf>(
        &self,
        id: &FileId,
        index: u64,
        mut buf: B,
        in_place: bool,
    ) -> (B, Result<(), LibraryError>) {
        let Some(entry) = self.get(id) else {
            return (buf, Err(LibraryError::UnknownFile(*id)));
        };
        if !entry.have().get(index) {
            return (buf, Err(LibraryError::NotAvailable { file: *id, index }));
        }
        let m = &entry.manifest;
        let (offset, len) = (index * u64::from(m.chunk_size), m.chunk_len(index) as usize);
        let file = *id;
        let read = self.io.run(in_place, move || {
            let read_start = SystemTime::now();
            let (path, opened) = entry.open();
            let io = |source| LibraryError::Io {
                path: path.clone(),
                source,
            };
            let read = (|| {
                let f = opened.map_err(io)?;
                let stamp = FileStamp::of(&f.metadata().map_err(io)?);
                if entry.trusted(index, stamp) {
                    let mut at = offset;
                    for piece in buf.room(len) {
                        read_at(&f, at, piece).map_err(io)?;
                        at += piece.len() as u64;
                    }
                    return Ok(false);
                }
                // Checked in one piece before any of it is handed out.
                let mut data = vec![0u8; len];
                read_at(&f, offset, &mut data).map_err(io)?;
                if entry.manifest.verify_chunk(index, &data).is_err() {
                    return Err(LibraryError::Changed { file, index });
                }
                entry.mark_verified(index, stamp, read_start);
                buf.put(&data);
                Ok(true)
            })();
            (buf, read)
        });
        match read.await {
            Some((buf, read)) => {
                if let Ok(true) = read {
                    self.rehashed.fetch_add(1, Ordering::Relaxed);
                }
                (buf, read.map(|_| ()))
            }
            // The task panicked, taking the buffer with it.
            None => (B::default(), Err(LibraryError::Task)),
        }
    }
}

/// Where [`Library::read_chunk_into`] puts a chunk.
pub trait ChunkBuf: Default + Send + 'static {
    /// Room for `len` bytes, as consecutive pieces (several when the buffer interleaves other
    /// bytes, as transport messages do).
    fn room(&mut self, len: usize) -> Vec<&mut [u8]>;

    /// Appends `bytes`, copied into the room they take.
    fn put(&mut self, mut bytes: &[u8]) {
        for piece in self.room(bytes.len()) {
            let (now, later) = bytes.split_at(piece.len());
            piece.copy_from_slice(now);
            bytes = later;
        }
    }
}

impl ChunkBuf for Vec<u8> {
    fn room(&mut self, len: usize) -> Vec<&mut [u8]> {
        self.clear();
        self.resize(len, 0);
        vec![&mut self[..]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::manifest_for_file;

    /// A 600 000-byte file `a.bin` (three chunks, the last short) in a fresh directory: byte
    /// `i` is `i % modulus`.
    fn written_file(modulus: u32) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % modulus) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        (dir, path, data)
    }

    #[tokio::test]
    async fn serves_verified_chunks_and_notices_changes() {
        let (_dir, path, data) = written_file(253);
        let lib = Library::new();
        let m = lib.share(&path).await.unwrap();
        assert_eq!(m.name, "a.bin");
        let chunk = lib.read_chunk(&m.id, 2).await.unwrap();
        assert_eq!(&chunk[..], &data[2 * 262_144..]);
        assert!(matches!(
            lib.read_chunk(&FileId([0; 32]), 0).await,
            Err(LibraryError::UnknownFile(_))
        ));
        // Someone edits the file after it was shared: the changed chunk is not served.
        let mut changed = data.clone();
        changed[10] ^= 0xff;
        std::fs::write(&path, &changed).unwrap();
        assert!(matches!(
            lib.read_chunk(&m.id, 0).await,
            Err(LibraryError::Changed { .. })
        ));
        assert!(lib.read_chunk(&m.id, 1).await.is_ok());
        // Chunks 2 and 1 were hashed (a fresh file is hashed on every read); chunk 0 failed.
        assert_eq!(lib.rehashed_chunks(), 2);
    }

    /// A buffer that hands out room in pieces of 1000 bytes, between other bytes (as an
    /// outbox of transport messages does).
    #[derive(Default)]
    struct Pieces(Vec<u8>);

    impl Pieces {
        /// The chunk, without the separators.
        fn chunk(&self) -> Vec<u8> {
            self.0.chunks(1001).flat_map(|p| p[1..].to_vec()).collect()
        }
    }

    impl ChunkBuf for Pieces {
        fn room(&mut self, len: usize) -> Vec<&mut [u8]> {
            let pieces = len.div_ceil(1000);
            self.0 = vec![0xee; len + pieces];
            let mut room: Vec<&mut [u8]> = self.0.chunks_mut(1001).map(|p| &mut p[1..]).collect();
            room.retain(|p| !p.is_empty());
            room
        }
    }

    #[tokio::test]
    async fn chunks_are_read_into_pieces_checked_or_trusted() {
        let (_dir, path, data) = written_file(241);
        for settle in [Duration::ZERO, Duration::from_secs(3600)] {
            // Settled: trusted, read straight into the pieces; too fresh: checked first.
            let lib = Library::with_settle(settle);
            let m = lib.share(&path).await.unwrap();
            for index in 0..3u64 {
                let (buf, read) = lib
                    .read_chunk_into(&m.id, index, Pieces::default(), false)
                    .await;
                read.unwrap();
                let start = index as usize * 262_144;
                let end = (start + 262_144).min(data.len());
                assert_eq!(buf.chunk(), &data[start..end], "chunk {index}");
            }
            let rehashed = if settle.is_zero() { 0 } else { 3 };
            assert_eq!(lib.rehashed_chunks(), rehashed);
            let (_, read) = lib.read_chunk_into(&m.id, 3, Pieces::default(), true).await;
            assert!(
                matches!(read, Err(LibraryError::NotAvailable { .. })),
                "past the end"
            );
        }
    }

    #[tokio::test]
    async fn a_settled_file_is_served_without_hashing_again_until_it_changes() {
        let (dir, path, data) = written_file(251);
        let lib = Library::with_settle(Duration::ZERO);
        let m = lib.share(&path).await.unwrap();
        for i in 0..3 {
            lib.read_chunk(&m.id, i).await.unwrap();
        }
        assert_eq!(
            lib.rehashed_chunks(),
            0,
            "hashed when shared, trusted since"
        );
        // Another file put in its place (new inode): every chunk is checked again.
        let other = dir.path().join("b.bin");
        let mut changed = data.clone();
        changed[300_000] ^= 1;
        std::fs::write(&other, &changed).unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert!(lib.read_chunk(&m.id, 0).await.is_ok());
        assert!(matches!(
            lib.read_chunk(&m.id, 1).await,
            Err(LibraryError::Changed { index: 1, .. })
        ));
        assert_eq!(
            lib.rehashed_chunks(),
            1,
            "the bad chunk counts as an error, not a read"
        );
    }

    #[tokio::test]
    async fn unshare_takes_off_only_what_is_offered_from_that_path() {
        let (dir, path, _) = written_file(239);
        let lib = Library::new();
        let m = lib.share(&path).await.unwrap();
        assert_eq!(lib.paths().get(&path), Some(&m.id));
        let hashed = lib.hashed(&m.id).unwrap();
        assert_eq!(
            (hashed.manifest, hashed.stamp),
            (m.clone(), FileStamp::read(&path).unwrap())
        );
        assert!(!lib.unshare(&m.id, &dir.path().join("other.bin")));
        assert!(lib.get(&m.id).is_some());
        assert!(lib.unshare(&m.id, &path));
        assert!(lib.get(&m.id).is_none() && lib.list().is_empty());
        // A partial download of the same content is not a hashed whole file.
        lib.insert(m.clone(), path.clone(), Bitfield::new(m.chunk_count()));
        assert!(lib.hashed(&m.id).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_while_a_download_moves_into_place_finds_the_file() {
        let (dir, part, data) = written_file(233);
        let m = manifest_for_file(&part, "a.bin").unwrap();
        let lib = Arc::new(Library::new());
        lib.insert(m.clone(), part.clone(), Bitfield::full(m.chunk_count()));
        let done = dir.path().join("done.bin");
        let rt = tokio::runtime::Handle::current();
        let mut reader = None;
        let placed = lib.complete_with(&m.id, || {
            std::fs::rename(&part, &done)?;
            // A read that starts while the file is being moved …
            let (tx, rx) = std::sync::mpsc::channel();
            let (lib, id) = (lib.clone(), m.id);
            reader = Some(std::thread::spawn(move || {
                let read = rt.block_on(lib.read_chunk(&id, 1));
                let _ = tx.send(());
                read
            }));
            // … waits for the move to end (without the path lock it would fail now).
            let waited = rx.recv_timeout(Duration::from_millis(200));
            assert!(waited.is_err(), "the read did not wait for the move");
            Ok::<_, std::io::Error>(done.clone())
        });
        assert_eq!(placed.unwrap(), done);
        let chunk = reader.unwrap().join().unwrap().unwrap();
        assert_eq!(&chunk[..], &data[262_144..524_288]);
        let entry = lib.get(&m.id).unwrap();
        assert_eq!(
            (entry.path(), entry.have()),
            (done, Bitfield::full(m.chunk_count()))
        );
    }

    #[tokio::test]
    async fn partial_downloads_serve_the_chunks_verified_into_them() {
        let (_dir, path, data) = written_file(241);
        let m = manifest_for_file(&path, "a.bin").unwrap();
        let lib = Library::new();
        lib.insert(m.clone(), path.clone(), Bitfield::new(m.chunk_count()));
        assert!(matches!(
            lib.read_chunk(&m.id, 1).await,
            Err(LibraryError::NotAvailable { .. })
        ));
        lib.mark_have(&m.id, 1);
        assert_eq!(
            &lib.read_chunk(&m.id, 1).await.unwrap()[..],
            &data[262_144..524_288]
        );
        assert_eq!(lib.rehashed_chunks(), 0);
    }
}
