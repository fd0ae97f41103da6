//! Private swarms on the peer's side (`docs/protocol.md` §9): the tracker keys this peer
//! trusts to admit downloaders to its private files ([`TrackerKeys`], pinned at the first
//! registration and kept in the data dir), and the admissions it holds as a downloader ([`HeldAdmissions`], from the
//! tracker's answers to "who has this file").

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use p2p_proto::admission::{Admission, AdmissionError};
use p2p_proto::{FileId, PeerId};
use parking_lot::{Mutex, RwLock};

use crate::storage::{PinFile, PinsError, TrackerPin};

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
///
/// Trust on first use: the key a tracker answers at the first registration is pinned, and kept
/// in the data dir ([`PinFile`]) so that a restarted peer serves its private files before (or
/// without) registering again. A tracker that later answers another key is not believed
/// ([`PinError::KeyChanged`]): whoever answers at its URL could otherwise admit anyone to this
/// peer's private files. The pinned key stays trusted; the new one is trusted after the user
/// says so ([`TrackerKeys::repin`], `--repin-tracker-keys`), or deletes the file.
#[derive(Debug, Default)]
pub struct TrackerKeys {
    by_tracker: RwLock<HashMap<String, [u8; 32]>>,
    /// Where the pins are kept; `None`: in memory only.
    store: Option<PinFile>,
    /// A key that changed replaces the pinned one (`--repin-tracker-keys`).
    repin: bool,
}

/// Why a tracker's key was not pinned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    #[error(
        "tracker {url} now signs admissions with key {offered}, but key {pinned} is pinned for it{kept}: admissions signed with the new key are refused. If the tracker's operator changed its key, start the peer once with --repin-tracker-keys (or delete the pins file) to trust the new one"
    )]
    KeyChanged {
        url: String,
        pinned: String,
        offered: String,
        /// " in <path>" when the pins are kept in a file.
        kept: String,
    },
    #[error("too many tracker keys pinned ({MAX_TRACKERS}); not pinning the key of {0}")]
    TooMany(String),
    #[error("the key of {url} is pinned for this run only: {source}")]
    Save {
        url: String,
        #[source]
        source: PinsError,
    },
}

impl TrackerKeys {
    /// The keys pinned in `data_dir` (see [`PinFile`]) for the `trackers` this peer uses (the
    /// pins of others are not trusted, and dropped from the file at its next change), later
    /// pins kept there; with `repin`, a tracker's changed key replaces its pin. A file that
    /// cannot be read is set aside (and said so): pins start afresh. Blocking.
    pub fn kept_in(data_dir: &Path, trackers: &[String], repin: bool) -> Self {
        let store = PinFile::in_data_dir(data_dir);
        let pins = match store.load(MAX_TRACKERS) {
            Ok(pins) => pins,
            Err(e) => {
                let aside = store.set_aside();
                tracing::warn!(
                    error = %e,
                    set_aside = ?aside,
                    "cannot read the pinned tracker keys; pinning them afresh at registration"
                );
                Vec::new()
            }
        };
        let by_tracker = pins
            .into_iter()
            .filter(|p| trackers.contains(&p.url))
            .map(|p| (p.url, p.key))
            .collect();
        Self {
            by_tracker: RwLock::new(by_tracker),
            store: Some(store),
            repin,
        }
    }

    /// Pins `key` for the tracker at `url` (its registration's answer) if none is pinned for
    /// it yet, keeping it in the pins file; the same key again changes nothing (and writes
    /// nothing). Another key is refused ([`PinError::KeyChanged`]) unless this peer repins.
    pub fn pin(&self, url: &str, key: [u8; 32]) -> Result<(), PinError> {
        let mut keys = self.by_tracker.write();
        match keys.get(url) {
            Some(pinned) if *pinned == key => return Ok(()),
            Some(pinned) if !self.repin => {
                return Err(PinError::KeyChanged {
                    url: url.to_owned(),
                    pinned: hex::encode(pinned),
                    offered: hex::encode(key),
                    kept: self
                        .store
                        .as_ref()
                        .map(|s| format!(" in {}", s.path().display()))
                        .unwrap_or_default(),
                });
            }
            Some(pinned) => tracing::warn!(
                tracker = url,
                old = %hex::encode(pinned),
                new = %hex::encode(key),
                "the tracker's admission key changed; trusting the new one (--repin-tracker-keys)"
            ),
            None if keys.len() >= MAX_TRACKERS => return Err(PinError::TooMany(url.to_owned())),
            None => {}
        }
        keys.insert(url.to_owned(), key);
        tracing::info!(tracker = url, key = %hex::encode(key), "tracker admission key pinned");
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut pins: Vec<TrackerPin> = keys
            .iter()
            .map(|(url, key)| TrackerPin {
                url: url.clone(),
                key: *key,
            })
            .collect();
        pins.sort_by(|a, b| a.url.cmp(&b.url));
        // A small file, written only when a pin changes (at a registration).
        store.save(&pins).map_err(|source| PinError::Save {
            url: url.to_owned(),
            source,
        })
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
        keys.pin("http://t1", a.public_key()).unwrap();
        keys.pin("http://t2", a.public_key()).unwrap();
        assert_eq!(keys.keys().len(), 1);
        assert_eq!(keys.check(&admission, &file, &peer), Ok(()));
        // The tracker answers another key: refused, the pinned one stays trusted.
        let err = keys.pin("http://t1", b.public_key()).unwrap_err();
        assert!(matches!(err, PinError::KeyChanged { .. }), "{err}");
        assert!(err.to_string().contains("--repin-tracker-keys"), "{err}");
        assert_eq!(keys.check(&admission, &file, &peer), Ok(()));
        let other = b.admit(&file, &peer, now_ms() + 60_000);
        assert_eq!(
            keys.check(&other, &file, &peer),
            Err(AdmissionError::UnknownTracker)
        );
    }

    #[test]
    fn pins_survive_a_restart_and_a_changed_key_is_taken_only_when_repinning() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            AdmissionSigner::from_seed(&[1; 32]),
            AdmissionSigner::from_seed(&[2; 32]),
        );
        let (file, peer) = (FileId([3; 32]), PeerId([4; 32]));
        let by_a = a.admit(&file, &peer, now_ms() + 60_000);
        let by_b = b.admit(&file, &peer, now_ms() + 60_000);
        let t = ["http://t".to_owned()];
        let keys = TrackerKeys::kept_in(dir.path(), &t, false);
        keys.pin("http://t", a.public_key()).unwrap();
        let pins = PinFile::in_data_dir(dir.path());
        let written = std::fs::metadata(pins.path()).unwrap().modified().unwrap();
        keys.pin("http://t", a.public_key()).unwrap();
        assert_eq!(
            std::fs::metadata(pins.path()).unwrap().modified().unwrap(),
            written,
            "the same key is not written again"
        );

        // Restarted: trusted before any registration; another key refused and not kept.
        let keys = TrackerKeys::kept_in(dir.path(), &t, false);
        assert_eq!(keys.check(&by_a, &file, &peer), Ok(()));
        assert!(matches!(
            keys.pin("http://t", b.public_key()),
            Err(PinError::KeyChanged { .. })
        ));
        let keys = TrackerKeys::kept_in(dir.path(), &t, false);
        assert_eq!(keys.check(&by_a, &file, &peer), Ok(()));

        // Repinning takes the new key, and keeps it.
        let keys = TrackerKeys::kept_in(dir.path(), &t, true);
        keys.pin("http://t", b.public_key()).unwrap();
        let keys = TrackerKeys::kept_in(dir.path(), &t, false);
        assert_eq!(keys.check(&by_b, &file, &peer), Ok(()));
        assert_eq!(
            keys.check(&by_a, &file, &peer),
            Err(AdmissionError::UnknownTracker)
        );
        // A tracker no longer used is no longer trusted.
        let keys = TrackerKeys::kept_in(dir.path(), &["http://other".to_owned()], false);
        assert_eq!(
            keys.check(&by_b, &file, &peer),
            Err(AdmissionError::UnknownTracker)
        );

        // An unreadable file is set aside: nothing pinned, pinning works again.
        std::fs::write(pins.path(), b"{").unwrap();
        let keys = TrackerKeys::kept_in(dir.path(), &t, false);
        assert!(keys.keys().is_empty());
        keys.pin("http://t", a.public_key()).unwrap();
        assert_eq!(TrackerKeys::kept_in(dir.path(), &t, false).keys().len(), 1);
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
