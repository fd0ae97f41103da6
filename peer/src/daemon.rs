//! Daemon mode: every file directly in the shared folder kept on offer, each version of a file
//! hashed once; each subfolder shared as one collection ([`crate::folder`]).
//!
//! At start the folder is listed and each file looked up in the [`ShareIndex`] (the manifests
//! of the last run, with the version of each file they describe): a file still at that version
//! is offered at once, a file renamed while the daemon was down keeps its manifest, and only
//! the rest is hashed, a few files at a time on the blocking pool, with a progress line every
//! few seconds. Then the [`FolderWatch`] reports names whose content or name may have changed;
//! each is looked at (one `stat`) once it has been quiet for a moment, and only a new version
//! of a file is hashed:
//!
//! - a file at the version it was hashed at (read by sharing or serving it, or written with
//!   the same bytes' stamp) is left alone;
//! - a rename keeps the manifest under the new name (the id is the hash of the content, which a
//!   rename does not touch: same inode, length and modification time);
//! - a finished download landing in the folder is already in the library, its chunks checked as
//!   they were written, and is taken as it is;
//! - a file that leaves the folder leaves the library ([`Library::unshare`]): it is no longer
//!   served, and the next announce round drops it (see `tracker_client`'s session; the DHT
//!   announcer only announces what the library holds).
//!
//! A file is hashed only once its change time lies [`SETTLE`] in the past, so its version
//! stamp shows any later change (see [`crate::storage::FileStamp`]); a file still being copied
//! in waits until it is done. The peer's own files (the key, `.partial/`, `.p2p/`) are never
//! shared, and its writes there never wake the watch.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use p2p_proto::FileId;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::folder::share_subfolders;
use crate::storage::shareable_name;
use crate::storage::{FileStamp, HashedFile, Library, SETTLE, ShareIndex, hash_file};
use crate::watch::{Changes, FolderWatch, WatchError};

/// How long a changed name must go without events (and keep its stamp) before it is looked at.
const QUIET: Duration = Duration::from_millis(500);
/// How often names waiting to settle are looked at.
const TICK: Duration = Duration::from_millis(250);
/// A file whose change time does not settle (a clock far ahead) is taken after this long.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How often a long hashing run logs its progress and announces what it has done so far.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long after a change the index is saved (changes in between share one write).
const SAVE_DELAY: Duration = Duration::from_secs(2);
/// How often the index is saved during a long hashing run, so a crash loses little of it.
const SAVE_WHILE_HASHING: Duration = Duration::from_secs(30);

/// Tells the tracker and the DHT, without waiting, that the library changed.
pub type Announce = Arc<dyn Fn() + Send + Sync>;

/// What the daemon shares and where it keeps its index.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The folder whose files are shared (its subfolders as collections, see
    /// [`crate::folder`]).
    pub folder: PathBuf,
    /// The data dir; the index is kept in its `.p2p/`.
    pub data_dir: PathBuf,
    /// Files hashed at once.
    pub hash_parallelism: usize,
}

impl DaemonConfig {
    /// Shares `folder`, keeping the index in `data_dir`, hashing one file per core at once.
    pub fn new(folder: &Path, data_dir: &Path) -> Self {
        Self {
            folder: folder.to_owned(),
            data_dir: data_dir.to_owned(),
            hash_parallelism: std::thread::available_parallelism().map_or(2, usize::from),
        }
    }
}

/// What the daemon did so far.
#[derive(Debug, Default)]
pub struct DaemonCounters {
    /// Files hashed, at start or after they changed.
    pub hashed_files: AtomicU64,
    pub hashed_bytes: AtomicU64,
    /// Times every changed name had been dealt with (the first at the end of the start).
    pub in_sync: AtomicU64,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("cannot list the shared folder {path}: {source}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("background task failed")]
    Task,
}

/// Shares the folder and keeps it shared until `stop` (see the module docs); saves the index
/// before returning.
pub async fn run(
    config: DaemonConfig,
    library: Arc<Library>,
    announce: Announce,
    counters: Arc<DaemonCounters>,
    stop: CancellationToken,
) -> Result<(), DaemonError> {
    // The watch starts first, so a change while the folder is listed is seen too.
    let watch = FolderWatch::start(&config.folder)?;
    tracing::info!(folder = %config.folder.display(), "daemon: sharing the folder");
    // Subfolders are shared as collections, beside the files (see `crate::folder`).
    let subfolders = tokio::spawn({
        let (dir, data, library) = (
            config.folder.clone(),
            config.data_dir.clone(),
            library.clone(),
        );
        let (announce, stop) = (announce.clone(), stop.clone());
        async move {
            if let Err(e) = share_subfolders(dir, data, library, announce, stop).await {
                tracing::warn!(error = %e, "daemon: subfolders are not shared");
            }
        }
    });
    let mut folder = Folder::new(config, library, announce, counters, stop.clone());
    folder.start().await?;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        let save_at = folder.save_at;
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            // Before the watch: a flood of events must not hold up dealing with them.
            _ = tick.tick(), if !folder.pending.is_empty() => folder.tick().await,
            changes = watch.changed() => folder.note(changes).await,
            _ = tokio::time::sleep_until(save_at.unwrap_or_else(Instant::now)), if save_at.is_some() => {
                folder.save().await;
            }
        }
    }
    if folder.save_at.is_some() {
        folder.save().await;
    }
    subfolders.abort();
    Ok(())
}

/// A file of the folder as it is on offer.
#[derive(Debug, Clone, Copy)]
struct Known {
    id: FileId,
    /// The version of the file the manifest describes.
    stamp: FileStamp,
    /// Since when (see [`HashedFile::since`]).
    since: SystemTime,
}

impl Known {
    fn of(hashed: &HashedFile) -> Self {
        Self {
            id: hashed.manifest.id,
            stamp: hashed.stamp,
            since: hashed.since,
        }
    }

    fn still_matches(&self, now: &FileStamp) -> bool {
        self.stamp == *now && self.stamp.settled_before(self.since, SETTLE)
    }
}

/// A name that changed, waiting to be looked at.
#[derive(Debug)]
struct Pending {
    /// When it was first reported.
    first: Instant,
    /// The last event or change of stamp.
    quiet_since: Instant,
    /// What the last look found: `Some(None)` for no file to share (gone, hidden, a folder).
    looked: Option<Option<FileStamp>>,
}

impl Pending {
    fn new(now: Instant) -> Self {
        Self {
            first: now,
            quiet_since: now,
            looked: None,
        }
    }
}

/// What became of a name that was hashed.
struct Hashed {
    name: String,
    /// What it was before.
    old: Option<Known>,
    /// The new id; `None` when it could not be hashed.
    new: Option<FileId>,
}

/// The folder's state: what each name is offered as, and what is waiting to be looked at.
struct Folder {
    dir: PathBuf,
    library: Arc<Library>,
    announce: Announce,
    counters: Arc<DaemonCounters>,
    index: ShareIndex,
    parallelism: usize,
    stop: CancellationToken,
    files: HashMap<String, Known>,
    pending: HashMap<String, Pending>,
    /// When the index is to be saved (`None`: it is up to date).
    save_at: Option<Instant>,
    saved_at: Instant,
}

impl Folder {
    fn new(
        config: DaemonConfig,
        library: Arc<Library>,
        announce: Announce,
        counters: Arc<DaemonCounters>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            index: ShareIndex::in_data_dir(&config.data_dir),
            dir: config.folder,
            library,
            announce,
            counters,
            parallelism: config.hash_parallelism.max(1),
            stop,
            files: HashMap::new(),
            pending: HashMap::new(),
            save_at: None,
            saved_at: Instant::now(),
        }
    }

    /// Offers what the index still describes and hashes the rest.
    async fn start(&mut self) -> Result<(), DaemonError> {
        let started = Instant::now();
        let index = self.index.clone();
        let mut stored = match tokio::task::spawn_blocking(move || index.load()).await {
            Ok(Ok(loaded)) => {
                if loaded.dropped > 0 {
                    tracing::warn!(
                        entries = loaded.dropped,
                        "share index entries with inconsistent manifests ignored"
                    );
                }
                loaded.files
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "ignoring the share index; the folder is hashed again");
                HashMap::new()
            }
            Err(_) => return Err(DaemonError::Task),
        };
        let stored_count = stored.len();
        let listing = self.list().await?;
        let now = SystemTime::now();
        let listed: HashSet<&str> = listing.iter().map(|(n, _)| n.as_str()).collect();
        // Entries whose name is gone: the file may be here under another name.
        let mut moved: HashMap<(u64, u64), HashedFile> = stored
            .iter()
            .filter(|(name, _)| !listed.contains(name.as_str()))
            .map(|(_, h)| (h.stamp.inode, h.clone()))
            .collect();
        let (mut reused, mut renamed) = (0usize, 0usize);
        let mut to_hash = Vec::new();
        for (name, stamp) in listing {
            let path = self.dir.join(&name);
            match stored.remove(&name) {
                Some(h) if h.still_matches(&stamp) => {
                    self.keep(name, path, h);
                    reused += 1;
                    continue;
                }
                _ => {}
            }
            let settled = stamp.settled_before(now, SETTLE);
            let was_here = moved.get(&stamp.inode).is_some_and(|h| {
                h.stamp.same_but_renamed(&stamp) && h.stamp.settled_before(h.since, SETTLE)
            });
            if let Some(mut h) = was_here.then(|| moved.remove(&stamp.inode)).flatten() {
                tracing::info!(from = %h.manifest.name, to = %name, "file renamed while the daemon was stopped");
                h.manifest.name.clone_from(&name);
                h.stamp = stamp;
                h.since = now;
                if !settled {
                    // Looked at again once settled, to date the index entry after that.
                    self.pending
                        .insert(name.clone(), Pending::new(Instant::now()));
                }
                self.keep(name, path, h);
                renamed += 1;
                continue;
            }
            if !settled {
                // Still changing (or just copied in): hashed once it has settled.
                self.pending.insert(name, Pending::new(Instant::now()));
                continue;
            }
            to_hash.push((name, stamp));
        }
        if reused + renamed > 0 {
            (self.announce)();
        }
        // Small files first: most of the folder is on offer soon, whatever the big files take.
        to_hash.sort_by_key(|(_, stamp)| stamp.len);
        let (hash_files, hash_bytes) = (
            to_hash.len(),
            to_hash.iter().map(|(_, s)| s.len).sum::<u64>(),
        );
        if hash_files > 0 {
            tracing::info!(
                files = hash_files,
                mib = hash_bytes >> 20,
                reused,
                "hashing the files that are new or changed since the last run"
            );
        }
        self.hash(to_hash).await;
        if self.stop.is_cancelled() {
            self.save().await;
            return Ok(());
        }
        if hash_files + renamed > 0 || reused != stored_count {
            self.save().await;
        }
        (self.announce)();
        tracing::info!(
            files = self.files.len(),
            reused,
            renamed,
            hashed = hash_files,
            hashed_mib = hash_bytes >> 20,
            waiting = self.pending.len(),
            secs = format!("{:.2}", started.elapsed().as_secs_f64()),
            "daemon: shared folder indexed"
        );
        self.check_in_sync(true);
        Ok(())
    }

    /// Offers the file at `path` under `name` with a manifest known to describe it.
    fn keep(&mut self, name: String, path: PathBuf, hashed: HashedFile) -> Option<Known> {
        let old = self.files.insert(name, Known::of(&hashed));
        self.library.offer(path, hashed);
        old
    }

    /// The shareable files directly in the folder, with their stamps, by name.
    async fn list(&self) -> Result<Vec<(String, FileStamp)>, DaemonError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                let Ok(entry) = entry else { continue };
                // A name that is not UTF-8 cannot be a manifest's name.
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if let Some(stamp) = look(&entry.path(), &name) {
                    files.push((name, stamp));
                }
            }
            files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            Ok(files)
        })
        .await
        .map_err(|_| DaemonError::Task)?
        .map_err(|source| DaemonError::List {
            path: self.dir.clone(),
            source,
        })
    }

    /// Hashes `jobs` (name, stamp when listed), `parallelism` at a time, offering each file
    /// as it is done; a long run logs how far it got every few seconds.
    async fn hash(&mut self, jobs: Vec<(String, FileStamp)>) -> Vec<Hashed> {
        let total = (jobs.len(), jobs.iter().map(|(_, s)| s.len).sum::<u64>());
        let mut done = (0usize, 0u64);
        let mut outcomes = Vec::with_capacity(jobs.len());
        let (dir, stop) = (self.dir.clone(), self.stop.clone());
        let mut results = futures_util::stream::iter(jobs)
            .map(|(name, stamp)| {
                let (path, stop) = (dir.join(&name), stop.clone());
                async move {
                    let n = name.clone();
                    let hashed = tokio::task::spawn_blocking(move || hash_file(&path, &n, &stop))
                        .await
                        .map_err(|_| std::io::Error::other("the hashing task failed"))
                        .and_then(|r| r);
                    (name, stamp, hashed)
                }
            })
            .buffer_unordered(self.parallelism);
        let mut ticks = tokio::time::interval_at(Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
        let mut offered_since_tick = false;
        loop {
            let (name, stamp, hashed) = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                next = results.next() => match next {
                    Some(next) => next,
                    None => break,
                },
                _ = ticks.tick() => {
                    tracing::info!(
                        "hashing the shared folder: {} of {} files, {} of {} MiB",
                        done.0, total.0, done.1 >> 20, total.1 >> 20
                    );
                    if offered_since_tick {
                        offered_since_tick = false;
                        (self.announce)();
                    }
                    if self.saved_at.elapsed() >= SAVE_WHILE_HASHING {
                        self.save().await;
                    }
                    continue;
                }
            };
            done = (done.0 + 1, done.1 + stamp.len);
            match hashed {
                Ok(h) => {
                    self.counters.hashed_files.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .hashed_bytes
                        .fetch_add(h.manifest.size, Ordering::Relaxed);
                    tracing::debug!(file = %name, id = %h.manifest.id, bytes = h.manifest.size, "hashed");
                    let id = h.manifest.id;
                    let old = self.keep(name.clone(), dir.join(&name), h);
                    offered_since_tick = true;
                    outcomes.push(Hashed {
                        name,
                        old,
                        new: Some(id),
                    });
                }
                Err(_) if stop.is_cancelled() => break,
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "cannot share");
                    let old = self.files.remove(&name);
                    outcomes.push(Hashed {
                        name,
                        old,
                        new: None,
                    });
                }
            }
        }
        if done.0 > 0 {
            self.mark_dirty();
        }
        outcomes
    }

    /// Queues the names that changed; they are looked at once quiet.
    async fn note(&mut self, changes: Changes) {
        let now = Instant::now();
        let names: Vec<String> = match changes {
            Changes::Paths(paths) => paths
                .into_iter()
                .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
                .collect(),
            Changes::Rescan => {
                tracing::info!("folder watch lost track; looking at every file again");
                let listed = match self.list().await {
                    Ok(listed) => listed,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list the shared folder");
                        Vec::new()
                    }
                };
                let mut names: Vec<String> = listed.into_iter().map(|(n, _)| n).collect();
                names.extend(self.files.keys().cloned());
                names
            }
        };
        for name in names {
            self.pending
                .entry(name)
                .and_modify(|p| p.quiet_since = now)
                .or_insert_with(|| Pending::new(now));
        }
    }

    /// Looks at the waiting names and deals with those that settled.
    async fn tick(&mut self) {
        let dir = self.dir.clone();
        let names: Vec<String> = self.pending.keys().cloned().collect();
        let Ok(looks) = tokio::task::spawn_blocking(move || {
            names
                .into_iter()
                .map(|name| {
                    let stamp = look(&dir.join(&name), &name);
                    (name, stamp)
                })
                .collect::<Vec<_>>()
        })
        .await
        else {
            return;
        };
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut ready = Vec::new();
        let mut waiting_inodes = HashSet::new();
        for (name, stamp) in looks {
            let Some(p) = self.pending.get_mut(&name) else {
                continue;
            };
            if p.looked != Some(stamp) {
                p.looked = Some(stamp);
                p.quiet_since = now;
            }
            let settled = match stamp {
                None => true,
                Some(s) => s.settled_before(wall, SETTLE) || now - p.first >= MAX_WAIT,
            };
            if settled && now - p.quiet_since >= QUIET {
                ready.push((name, stamp));
            } else if let Some(s) = stamp {
                waiting_inodes.insert(s.inode);
            }
        }
        // A name that is gone waits for a file with its inode that is still settling: most
        // likely it was renamed, and both are dealt with together.
        ready.retain(|(name, stamp)| {
            stamp.is_some()
                || !self
                    .files
                    .get(name)
                    .is_some_and(|k| waiting_inodes.contains(&k.stamp.inode))
        });
        if ready.is_empty() {
            return;
        }
        for (name, _) in &ready {
            self.pending.remove(name);
        }
        let changed = self.apply(ready).await;
        self.check_in_sync(changed);
    }

    /// Brings the library up to date with `batch` (name, what is there now); returns whether
    /// anything changed.
    async fn apply(&mut self, batch: Vec<(String, Option<FileStamp>)>) -> bool {
        let now = SystemTime::now();
        let mut gone: Vec<(String, Known)> = Vec::new();
        let mut present = Vec::new();
        for (name, stamp) in batch {
            match stamp {
                Some(stamp) => present.push((name, stamp)),
                None => {
                    if let Some(k) = self.files.remove(&name) {
                        gone.push((name, k));
                    }
                }
            }
        }
        let mut changed = !gone.is_empty();
        // Ids a name no longer holds, to take off offer unless another name holds them.
        let mut released: Vec<(String, Known)> = Vec::new();
        let mut offered: Option<HashMap<PathBuf, FileId>> = None;
        let mut to_hash = Vec::new();
        for (name, stamp) in present {
            let path = self.dir.join(&name);
            let known = self.files.get(&name).copied();
            if known.is_some_and(|k| k.still_matches(&stamp)) {
                // Read, or opened and closed without a write: nothing to do.
                continue;
            }
            changed = true;
            // The same file, renamed (or back under its own name after a detour).
            let renamed_from = known
                .filter(|k| k.stamp.same_but_renamed(&stamp))
                .map(|k| (name.clone(), k))
                .or_else(|| {
                    let i = gone
                        .iter()
                        .position(|(_, k)| k.stamp.same_but_renamed(&stamp))?;
                    Some(gone.swap_remove(i))
                });
            if let Some((from, k)) = renamed_from
                && let Some(entry) = self.library.get(&k.id)
            {
                let mut manifest = entry.manifest.clone();
                manifest.name.clone_from(&name);
                // Nothing showed a change of content, and the stamp has settled, so a change
                // would show from now on.
                let hashed = HashedFile {
                    manifest,
                    stamp,
                    since: now,
                };
                if let Some(old) = self.keep(name.clone(), path, hashed)
                    && old.id != k.id
                {
                    released.push((name.clone(), old));
                }
                if from != name {
                    tracing::info!(%from, to = %name, id = %k.id, "file renamed; shared under its new name");
                }
                continue;
            }
            // A finished download: its chunks were checked as they were written.
            let offered = offered.get_or_insert_with(|| self.library.paths());
            if let Some(h) = offered
                .get(&path)
                .and_then(|id| self.library.hashed(id))
                .filter(|h| h.stamp == stamp)
            {
                tracing::info!(file = %name, id = %h.manifest.id, "sharing downloaded file");
                let (id, h) = (h.manifest.id, HashedFile { since: now, ..h });
                if let Some(old) = self.keep(name.clone(), path, h)
                    && old.id != id
                {
                    released.push((name, old));
                }
                continue;
            }
            to_hash.push((name, stamp));
        }
        for outcome in self.hash(to_hash).await {
            match (outcome.old, outcome.new) {
                (None, Some(id)) => tracing::info!(file = %outcome.name, %id, "sharing new file"),
                (Some(old), Some(id)) if old.id == id => {
                    tracing::debug!(file = %outcome.name, %id, "file written again, same content");
                }
                (Some(old), Some(id)) => {
                    tracing::info!(file = %outcome.name, %id, "file changed; sharing the new version");
                    released.push((outcome.name, old));
                }
                (Some(old), None) => released.push((outcome.name, old)),
                (None, None) => {}
            }
        }
        released.extend(gone);
        self.release(released);
        if changed {
            (self.announce)();
            self.mark_dirty();
        }
        changed
    }

    /// Takes the ids that these names held off offer, unless another name in the folder holds
    /// the same content (then that name is offered instead).
    fn release(&mut self, released: Vec<(String, Known)>) {
        if released.is_empty() {
            return;
        }
        let holders: HashMap<FileId, String> = self
            .files
            .iter()
            .map(|(name, k)| (k.id, name.clone()))
            .collect();
        for (name, k) in released {
            let path = self.dir.join(&name);
            match holders.get(&k.id) {
                Some(other) => {
                    // Offered from the name that left? Then from one that holds it now.
                    let (Some(entry), Some(o)) = (
                        self.library.get(&k.id).filter(|e| e.path() == path),
                        self.files.get(other),
                    ) else {
                        continue;
                    };
                    let mut manifest = entry.manifest.clone();
                    manifest.name.clone_from(other);
                    let hashed = HashedFile {
                        manifest,
                        stamp: o.stamp,
                        since: o.since,
                    };
                    self.library.offer(self.dir.join(other), hashed);
                }
                None => {
                    if self.library.unshare(&k.id, &path) {
                        tracing::info!(file = %name, id = %k.id, "file left the folder; no longer shared");
                    }
                }
            }
        }
    }

    /// Logs (and counts) that every changed name was dealt with, when nothing waits.
    fn check_in_sync(&mut self, changed: bool) {
        if !self.pending.is_empty() {
            return;
        }
        self.counters.in_sync.fetch_add(1, Ordering::Relaxed);
        if changed {
            tracing::info!(files = self.files.len(), "daemon: the folder is in sync");
        }
    }

    fn mark_dirty(&mut self) {
        self.save_at
            .get_or_insert_with(|| Instant::now() + SAVE_DELAY);
    }

    /// Writes the index: each name's manifest (from the library) with its version.
    async fn save(&mut self) {
        self.save_at = None;
        self.saved_at = Instant::now();
        let files: Vec<HashedFile> = self
            .files
            .iter()
            .filter_map(|(name, k)| {
                let mut manifest = self.library.get(&k.id)?.manifest.clone();
                manifest.name.clone_from(name);
                Some(HashedFile {
                    manifest,
                    stamp: k.stamp,
                    since: k.since,
                })
            })
            .collect();
        let index = self.index.clone();
        match tokio::task::spawn_blocking(move || index.save(&files)).await {
            Ok(Ok(())) => tracing::debug!(path = %self.index.path().display(), "share index saved"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the share index"),
            Err(_) => tracing::warn!("saving the share index failed"),
        }
    }
}

/// The stamp of the file at `path` if it is one to share: a regular file (or a link to one)
/// with a name a manifest can carry, not hidden, not the peer's own. Blocking.
fn look(path: &Path, name: &str) -> Option<FileStamp> {
    if !shareable_name(name) || p2p_proto::manifest::validate_name(name).is_err() {
        return None;
    }
    let meta = std::fs::metadata(path).ok()?;
    meta.is_file().then(|| FileStamp::of(&meta))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use p2p_proto::Manifest;

    use super::*;
    use crate::storage::{LibraryError, PartialDownload, manifest_for_file};

    /// A daemon sharing a folder (which is also its data dir).
    struct Running {
        library: Arc<Library>,
        counters: Arc<DaemonCounters>,
        announces: Arc<AtomicU64>,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), DaemonError>>,
    }

    impl Running {
        fn start(dir: &Path) -> Self {
            let library = Arc::new(Library::new());
            let counters = Arc::new(DaemonCounters::default());
            let announces = Arc::new(AtomicU64::new(0));
            let announce: Announce = {
                let announces = announces.clone();
                Arc::new(move || {
                    announces.fetch_add(1, Ordering::Relaxed);
                })
            };
            let stop = CancellationToken::new();
            let mut config = DaemonConfig::new(dir, dir);
            config.hash_parallelism = 2;
            let task = tokio::spawn(run(
                config,
                library.clone(),
                announce,
                counters.clone(),
                stop.clone(),
            ));
            Self {
                library,
                counters,
                announces,
                stop,
                task,
            }
        }

        fn hashed(&self) -> u64 {
            self.counters.hashed_files.load(Ordering::Relaxed)
        }

        fn in_sync(&self) -> u64 {
            self.counters.in_sync.load(Ordering::Relaxed)
        }

        /// The name and path `id` is offered under.
        fn offered(&self, id: &FileId) -> Option<(String, PathBuf)> {
            let entry = self.library.get(id)?;
            Some((entry.manifest.name.clone(), entry.path()))
        }

        /// Waits until the folder is in sync after `after` earlier syncs.
        async fn synced_after(&self, after: u64) {
            until("the folder is in sync", || self.in_sync() > after).await;
        }

        async fn stop(self) {
            self.stop.cancel();
            self.task.await.unwrap().unwrap();
        }
    }

    /// Waits (at most 30 s) until `done` holds.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn write(dir: &Path, name: &str, content: &[u8]) -> FileId {
        std::fs::write(dir.join(name), content).unwrap();
        manifest_for_file(&dir.join(name), name).unwrap().id
    }

    fn big(seed: u32) -> Vec<u8> {
        (0..700_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shares_the_folder_once_and_reads_or_empty_writes_hash_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ids = [
            write(dir, "a.txt", b"hello"),
            write(dir, "b.bin", &big(1)),
            write(dir, "c.txt", b"world"),
        ];
        std::fs::write(dir.join(".hidden"), b"never shared").unwrap();
        std::fs::write(dir.join("half.tmp"), b"being written").unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub").join("deep.txt"), b"in a collection").unwrap();
        let d = Running::start(dir);
        d.synced_after(0).await;
        assert_eq!(d.hashed(), 3);
        // The subfolder is shared as a collection of its own: its file and its list.
        until("the subfolder is shared", || d.library.list().len() == 5).await;
        let names: Vec<String> = d.library.list().into_iter().map(|(m, _)| m.name).collect();
        assert!(names.contains(&"sub.p2p-folder".to_owned()), "{names:?}");
        assert!(names.contains(&"deep.txt".to_owned()), "{names:?}");
        for id in &ids {
            assert!(d.offered(id).is_some());
        }

        // Sharing and serving read the files; opening one for writing and closing it without
        // a write changes nothing either. Neither hashes anything again: the next hash is the
        // marker written afterwards (events arrive in order).
        for _ in 0..3 {
            for name in ["a.txt", "b.bin", "c.txt"] {
                std::fs::read(dir.join(name)).unwrap();
            }
            for i in 0..3 {
                d.library.read_chunk(&ids[1], i).await.unwrap();
            }
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("a.txt"))
            .unwrap()
            .flush()
            .unwrap();
        let marker = write(dir, "marker", b"m");
        until("the marker is shared", || d.offered(&marker).is_some()).await;
        assert_eq!(d.hashed(), 4, "only the marker was hashed");
        assert_eq!(
            d.library.list().len(),
            6,
            "four files, the subfolder's file and list"
        );
        d.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn removed_files_leave_the_library_and_renamed_ones_keep_their_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let a = write(dir, "a.txt", b"alpha");
        let b = write(dir, "b.bin", &big(2));
        let c = write(dir, "c.txt", b"gamma");
        let d = Running::start(dir);
        d.synced_after(0).await;
        assert_eq!(d.hashed(), 3);
        let announced = d.announces.load(Ordering::Relaxed);

        // Renamed: offered under the new name, with the same manifest, not hashed.
        std::fs::rename(dir.join("a.txt"), dir.join("renamed.txt")).unwrap();
        until("the rename is seen", || {
            d.offered(&a).is_some_and(|(name, _)| name == "renamed.txt")
        })
        .await;
        assert_eq!(d.offered(&a).unwrap().1, dir.join("renamed.txt"));
        assert_eq!(d.hashed(), 3, "a rename hashes nothing");
        assert!(d.announces.load(Ordering::Relaxed) > announced);

        // Removed: no longer offered (nor served, nor announced), still not hashed.
        std::fs::remove_file(dir.join("b.bin")).unwrap();
        until("the removal is seen", || d.offered(&b).is_none()).await;
        assert!(matches!(
            d.library.read_chunk(&b, 0).await,
            Err(LibraryError::UnknownFile(_))
        ));
        assert!(d.library.list().iter().all(|(m, _)| m.id != b));

        // Renamed over another shared file: that one's content is gone, the renamed one stays.
        std::fs::rename(dir.join("renamed.txt"), dir.join("c.txt")).unwrap();
        until("the rename over c.txt is seen", || {
            d.offered(&c).is_none() && d.offered(&a).is_some_and(|(name, _)| name == "c.txt")
        })
        .await;

        // Two names with the same content: removing the one on offer offers the other.
        let synced = d.in_sync();
        let copy = write(dir, "copy.txt", b"alpha");
        assert_eq!(copy, a);
        d.synced_after(synced).await;
        assert_eq!(d.hashed(), 4);
        let (_, on_offer) = d.offered(&a).unwrap();
        let other = if on_offer.ends_with("copy.txt") {
            dir.join("c.txt")
        } else {
            dir.join("copy.txt")
        };
        std::fs::remove_file(&on_offer).unwrap();
        until("the other copy is offered", || {
            d.offered(&a).is_some_and(|(_, path)| path == other)
        })
        .await;
        assert_eq!(d.hashed(), 4);
        let content = d.library.read_chunk(&a, 0).await.unwrap();
        assert_eq!(&content[..], b"alpha");
        d.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_hashes_only_what_changed_and_a_bad_index_costs_one_hashing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let kept = write(dir, "kept.bin", &big(3));
        let moved = write(dir, "moved.txt", b"moved while stopped");
        write(dir, "changed.txt", b"before");
        let deleted = write(dir, "deleted.txt", b"deleted while stopped");
        let d = Running::start(dir);
        d.synced_after(0).await;
        assert_eq!(d.hashed(), 4);
        d.stop().await;
        assert!(ShareIndex::in_data_dir(dir).path().is_file());

        std::fs::rename(dir.join("moved.txt"), dir.join("new name.txt")).unwrap();
        std::fs::remove_file(dir.join("deleted.txt")).unwrap();
        let changed = write(dir, "changed.txt", b"after!");
        let added = write(dir, "added.txt", b"added while stopped");
        let d = Running::start(dir);
        d.synced_after(0).await;
        assert_eq!(d.hashed(), 2, "only the changed and the added file");
        assert_eq!(d.offered(&kept).unwrap().0, "kept.bin");
        assert_eq!(d.offered(&moved).unwrap().0, "new name.txt");
        assert!(d.offered(&changed).is_some() && d.offered(&added).is_some());
        assert!(d.offered(&deleted).is_none());
        assert_eq!(d.library.list().len(), 4);
        d.stop().await;

        // Unchanged: nothing hashed at all.
        let d = Running::start(dir);
        d.synced_after(0).await;
        assert_eq!(d.hashed(), 0);
        assert_eq!(d.library.list().len(), 4);
        d.stop().await;

        // A damaged index is ignored (with a warning), never trusted: everything is hashed
        // once, and the index written again.
        let index = ShareIndex::in_data_dir(dir);
        let raw = std::fs::read(index.path()).unwrap();
        std::fs::write(index.path(), &raw[..raw.len() / 3]).unwrap();
        let d = Running::start(dir);
        d.synced_after(0).await;
        assert_eq!(d.hashed(), 4);
        d.stop().await;
        assert_eq!(index.load().unwrap().files.len(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_finished_download_landing_in_the_folder_is_not_hashed_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let d = Running::start(dir);
        d.synced_after(0).await;
        // What a download does: chunks verified into `.partial/`, then moved into place.
        let data = big(4);
        let m = Manifest::of_bytes("got.bin", &data, p2p_proto::CHUNK_SIZE).unwrap();
        let (dir2, m2) = (dir.to_owned(), m.clone());
        let mut partial =
            tokio::task::spawn_blocking(move || PartialDownload::open(&dir2, &m2).unwrap())
                .await
                .unwrap();
        d.library.insert(
            m.clone(),
            partial.part_path().to_owned(),
            partial.have().clone(),
        );
        for i in 0..m.chunk_count() {
            let start = (i * u64::from(m.chunk_size)) as usize;
            let chunk = &data[start..start + m.chunk_len(i) as usize];
            assert!(partial.write_chunk(i, chunk).unwrap());
            d.library.mark_have(&m.id, i);
        }
        let synced = d.in_sync();
        let path = d
            .library
            .complete_with(&m.id, || partial.finish(dir))
            .unwrap();
        d.synced_after(synced).await;
        assert_eq!(
            d.hashed(),
            0,
            "its chunks were checked as they were written"
        );
        assert_eq!(d.offered(&m.id).unwrap().1, path);
        d.stop().await;
        // And it is in the index: a restart does not hash it either.
        let d = Running::start(dir);
        d.synced_after(0).await;
        assert_eq!(d.hashed(), 0);
        assert!(d.offered(&m.id).is_some());
        d.stop().await;
    }
}
