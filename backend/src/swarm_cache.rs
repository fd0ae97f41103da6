//! A short-lived in-memory copy of each file's swarm, so `GET /api/files/{hash}/peers` (the
//! hottest read, asked by every downloader) is answered without a database query.
//!
//! Entries live for a configured time (1 s by default) and are dropped at once when this
//! tracker sees a change: an announce of the file drops its entry; peers registering, leaving,
//! expiring or coming back drop them all. Liveness is re-checked against each peer's last
//! heartbeat when an entry is served. With several trackers on one database, a change made
//! through another tracker shows here within the time-to-live.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use p2p_proto::FileId;
use p2p_proto::api::FilePeer;

/// Most files kept; past this the cache starts over (it refills from the database).
const MAX_ENTRIES: usize = 100_000;

/// A file's chunk count and its peers (live at the time of the query), whole copies first.
pub type Swarm = (u64, Arc<Vec<FilePeer>>);

/// A file's swarms: all its peers (`None`) and those of each manifest variant asked for.
type Swarms = HashMap<Option<u32>, (Instant, Swarm)>;

#[derive(Debug)]
pub struct SwarmCache {
    ttl: Duration,
    entries: Mutex<HashMap<FileId, Swarms>>,
}

impl SwarmCache {
    /// A zero `ttl` turns the cache off.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The swarm of file `id`, or of its manifest variant `variant` only.
    pub fn get(&self, id: &FileId, variant: Option<u32>) -> Option<Swarm> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock();
        let (at, swarm) = entries.get(id)?.get(&variant)?;
        (at.elapsed() < self.ttl).then(|| swarm.clone())
    }

    /// Keeps a swarm. A file has at most its variant cap plus one entries (they go together when
    /// the file changes), so the count of files bounds the cache.
    pub fn put(&self, id: FileId, variant: Option<u32>, swarm: Swarm) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&id) {
            entries.clear();
        }
        entries
            .entry(id)
            .or_default()
            .insert(variant, (Instant::now(), swarm));
    }

    pub fn invalidate(&self, id: &FileId) {
        self.entries.lock().remove(id);
    }

    pub fn clear(&self) {
        self.entries.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_and_invalidates() {
        let cache = SwarmCache::new(Duration::from_secs(60));
        let id = FileId([1; 32]);
        assert!(cache.get(&id, None).is_none());
        cache.put(id, None, (3, Arc::new(Vec::new())));
        cache.put(id, Some(2), (4, Arc::new(Vec::new())));
        assert_eq!(cache.get(&id, None).map(|s| s.0), Some(3));
        assert_eq!(cache.get(&id, Some(2)).map(|s| s.0), Some(4));
        assert!(cache.get(&id, Some(1)).is_none());
        cache.invalidate(&id);
        assert!(cache.get(&id, None).is_none());
        assert!(
            cache.get(&id, Some(2)).is_none(),
            "a file's variants go with it"
        );
        cache.put(id, None, (3, Arc::new(Vec::new())));
        cache.clear();
        assert!(cache.get(&id, None).is_none());

        let off = SwarmCache::new(Duration::ZERO);
        off.put(id, None, (3, Arc::new(Vec::new())));
        assert!(off.get(&id, None).is_none());

        let short = SwarmCache::new(Duration::from_nanos(1));
        short.put(id, None, (3, Arc::new(Vec::new())));
        std::thread::sleep(Duration::from_millis(1));
        assert!(short.get(&id, None).is_none());
    }
}
