//! The trackers' admission keys this peer pinned (`docs/protocol.md` §9), kept in
//! `<data>/.p2p/trackers.json` so that a restarted peer serves its private files at once, before
//! (or without) registering again. Replaced atomically (written beside, flushed, renamed over),
//! and only when a pin changes. What the pins mean is [`crate::admission::TrackerKeys`]'s
//! business; this is only the file.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::index::STATE_DIR;

const PINS_FILE: &str = "trackers.json";
/// Bumped when the layout changes.
const FORMAT: u32 = 1;
/// Most bytes read from the file (16 trackers take about 3 KiB).
const MAX_BYTES: u64 = 64 << 10;

/// Why the pinned keys could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a list of pinned tracker keys: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is not a list of pinned tracker keys: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One tracker's pinned key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerPin {
    /// The tracker's URL, as given to the peer.
    pub url: String,
    /// Its Ed25519 admission key.
    pub key: [u8; 32],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    format: u32,
    trackers: Vec<StoredPin>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredPin {
    url: String,
    admission_key: String,
}

/// Where the pins are kept.
#[derive(Debug, Clone)]
pub struct PinFile {
    path: PathBuf,
}

impl PinFile {
    /// The file in `data_dir`'s state folder.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(STATE_DIR).join(PINS_FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pins kept, at most `max`; none when there is no file. Blocking.
    pub fn load(&self, max: usize) -> Result<Vec<TrackerPin>, PinsError> {
        let path = &self.path;
        let read = |source| PinsError::Read {
            path: path.clone(),
            source,
        };
        let invalid = |why: String| PinsError::Invalid {
            path: path.clone(),
            why,
        };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(read(e)),
        };
        let mut raw = Vec::new();
        file.take(MAX_BYTES + 1)
            .read_to_end(&mut raw)
            .map_err(read)?;
        if raw.len() as u64 > MAX_BYTES {
            return Err(invalid(format!("larger than {} KiB", MAX_BYTES >> 10)));
        }
        let stored: Stored = serde_json::from_slice(&raw).map_err(|source| PinsError::Corrupt {
            path: path.clone(),
            source,
        })?;
        if stored.format != FORMAT {
            return Err(invalid(format!(
                "format {}, this peer reads format {FORMAT}",
                stored.format
            )));
        }
        if stored.trackers.len() > max {
            return Err(invalid(format!("more than {max} trackers")));
        }
        stored
            .trackers
            .into_iter()
            .map(|p| {
                let mut key = [0u8; 32];
                hex::decode_to_slice(&p.admission_key, &mut key).map_err(|_| {
                    invalid(format!("the key of {} is not 64 hex characters", p.url))
                })?;
                Ok(TrackerPin { url: p.url, key })
            })
            .collect()
    }

    /// Replaces the kept pins with `pins`. Blocking.
    pub fn save(&self, pins: &[TrackerPin]) -> Result<(), PinsError> {
        let stored = Stored {
            format: FORMAT,
            trackers: pins
                .iter()
                .map(|p| StoredPin {
                    url: p.url.clone(),
                    admission_key: hex::encode(p.key),
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| PinsError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        super::replace_file(&self.path, &json).map_err(|source| PinsError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// Moves a file that cannot be read out of the way (`trackers.json.unreadable`), keeping
    /// it for a look; returns where it went.
    pub fn set_aside(&self) -> Option<PathBuf> {
        let aside = self.path.with_extension("json.unreadable");
        std::fs::rename(&self.path, &aside).ok().map(|()| aside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_round_trip_and_bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = PinFile::in_data_dir(dir.path());
        assert!(file.load(16).unwrap().is_empty(), "none yet");
        let pins = vec![
            TrackerPin {
                url: "http://t1:8080".into(),
                key: [1; 32],
            },
            TrackerPin {
                url: "https://t2".into(),
                key: [2; 32],
            },
        ];
        file.save(&pins).unwrap();
        assert_eq!(file.load(16).unwrap(), pins);
        assert!(matches!(file.load(1), Err(PinsError::Invalid { .. })));
        assert!(!file.path().with_extension("json.tmp").exists());

        let raw = std::fs::read_to_string(file.path()).unwrap();
        std::fs::write(file.path(), raw.replace(&hex::encode([2; 32]), "zz")).unwrap();
        assert!(matches!(file.load(16), Err(PinsError::Invalid { .. })));
        std::fs::write(file.path(), b"{").unwrap();
        assert!(matches!(file.load(16), Err(PinsError::Corrupt { .. })));
        std::fs::write(file.path(), vec![b' '; MAX_BYTES as usize + 1]).unwrap();
        assert!(matches!(file.load(16), Err(PinsError::Invalid { .. })));
        let aside = file.set_aside().unwrap();
        assert!(aside.exists() && !file.path().exists());
        assert!(file.load(16).unwrap().is_empty());
    }
}
