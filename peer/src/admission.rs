//! Private swarms on the peer's side (`docs/protocol.md` §9): the tracker keys this peer
//! trusts to admit downloaders to its private files ([`TrackerKeys`], pinned at
//! registration), and the admissions it holds as a downloader ([`HeldAdmissions`], from the
//! tracker's answers to "who has this file").

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use p2p_proto::admission::{Admission, AdmissionError};
use p2p_proto::{FileId, PeerId};
use parking_lot::{Mutex, RwLock};

/// Trackers whose keys are pinned at most (one per tracker URL given).
const MAX_TRACKERS: usize = 16;
/// Admissions held at most; past it, expired ones are dropped, then the one expiring first.
const MAX_HELD: usize = 4096;
/// How long before its expiry a downloader sends its peers a fresher admission.
pub const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The admission keys of the trackers this peer registered with, by tracker URL: an uploader
/// serves a private file to the holders of admissions one of them signed.
#[derive(Debug, Default)]
pub struct TrackerKeys {
    by_tracker: RwLock<HashMap<String, [u8; 32]>>,
}

impl TrackerKeys {
    /// Pins `key` for the tracker at `url` (its registration's answer); replaces what that
    /// tracker said before (its operator changed the secret).
    pub fn pin(&self, url: &str, key: [u8; 32]) {
        let mut keys = self.by_tracker.write();
        if keys.len() >= MAX_TRACKERS && !keys.contains_key(url) {
            tracing::warn!(
                tracker = url,
                "too many tracker keys pinned; ignoring this one"
            );
            return;
        }
        if keys.insert(url.to_owned(), key) != Some(key) {
            tracing::info!(tracker = url, key = %hex::encode(key), "tracker admission key pinned");
        }
    }

    /// The pinned keys.
    pub fn keys(&self) -> Vec<[u8; 32]> {
        let mut keys: Vec<[u8; 32]> = self.by_tracker.read().values().copied().collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Whether `admission` lets `peer` (proved by the handshake) fetch `file` now.
    pub fn check(
        &self,
        admission: &Admission,
        file: &FileId,
        peer: &PeerId,
    ) -> Result<(), AdmissionError> {
        admission.check(&self.keys(), file, peer, now_ms())
    }
}

/// The newest admission this peer holds for each file it downloads.
#[derive(Debug, Default)]
pub struct HeldAdmissions {
    by_file: Mutex<HashMap<FileId, Admission>>,
}

impl HeldAdmissions {
    /// Keeps `admission` when it expires later than the one held for its file.
    pub fn hold(&self, admission: Admission) {
        let mut held = self.by_file.lock();
        if held.len() >= MAX_HELD && !held.contains_key(&admission.file_id) {
            let now = now_ms();
            held.retain(|_, a| a.expires_at_ms > now);
            if held.len() >= MAX_HELD
                && let Some(first) = held
                    .iter()
                    .min_by_key(|(_, a)| a.expires_at_ms)
                    .map(|(id, _)| *id)
            {
                held.remove(&first);
            }
        }
        let newer = held
            .get(&admission.file_id)
            .is_none_or(|a| a.expires_at_ms < admission.expires_at_ms);
        if newer {
            held.insert(admission.file_id, admission);
        }
    }

    /// The admission held for `file`, if any.
    pub fn get(&self, file: &FileId) -> Option<Admission> {
        self.by_file.lock().get(file).copied()
    }
}

#[cfg(test)]
mod tests {
    use p2p_proto::admission::AdmissionSigner;

    use super::*;

    #[test]
    fn keys_are_pinned_per_tracker_and_checked() {
        let keys = TrackerKeys::default();
        let (a, b) = (
            AdmissionSigner::from_seed(&[1; 32]),
            AdmissionSigner::from_seed(&[2; 32]),
        );
        let (file, peer) = (FileId([3; 32]), PeerId([4; 32]));
        let admission = a.admit(&file, &peer, now_ms() + 60_000);
        assert_eq!(
            keys.check(&admission, &file, &peer),
            Err(AdmissionError::UnknownTracker)
        );
        keys.pin("http://t1", a.public_key());
        keys.pin("http://t2", a.public_key());
        assert_eq!(keys.keys().len(), 1);
        assert_eq!(keys.check(&admission, &file, &peer), Ok(()));
        // The tracker's key changed: the old one is no longer trusted.
        keys.pin("http://t1", b.public_key());
        keys.pin("http://t2", b.public_key());
        assert_eq!(
            keys.check(&admission, &file, &peer),
            Err(AdmissionError::UnknownTracker)
        );
    }

    #[test]
    fn the_latest_admission_is_held_and_the_book_is_bounded() {
        let s = AdmissionSigner::from_seed(&[1; 32]);
        let held = HeldAdmissions::default();
        let peer = PeerId([4; 32]);
        let file = FileId([3; 32]);
        let later = s.admit(&file, &peer, now_ms() + 120_000);
        held.hold(later);
        held.hold(s.admit(&file, &peer, now_ms() + 60_000));
        assert_eq!(held.get(&file), Some(later));
        for i in 0..MAX_HELD as u32 + 10 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            held.hold(s.admit(&FileId(id), &peer, now_ms() + 60_000 + u64::from(i)));
        }
        assert_eq!(held.by_file.lock().len(), MAX_HELD);
    }
}
