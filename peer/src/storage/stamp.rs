//! What identifies one version of a file on disk ([`FileStamp`]), and a manifest known to
//! describe one ([`HashedFile`]).
//!
//! A stamp is the file's length, modification time, inode and change time (`ctime`). The
//! kernel sets `ctime` on every write, rename, `touch` or `chmod`, and no user can set it
//! back, so while the whole stamp stays the same the content does too, with one caveat:
//! timestamps are coarse (a clock tick, or two seconds on some filesystems), so a change in
//! the same tick as the one before leaves the stamp as it was. A stamp therefore only shows
//! later changes once it has *settled*: its change time lies [`SETTLE`] before the moment it
//! was taken ([`FileStamp::settled_before`]).

use std::path::Path;
use std::time::{Duration, SystemTime};

use p2p_proto::Manifest;
use serde::{Deserialize, Serialize};

/// How long after a file's last change its stamp is trusted to show the next change.
pub const SETTLE: Duration = Duration::from_secs(2);

/// A point in time as the filesystem gives it: seconds from the Unix epoch (negative before
/// it) and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => Self {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            Err(before) => {
                let d = before.duration();
                // -1.25 s is secs -2, nanos 0.75e9.
                let (secs, nanos) = match d.subsec_nanos() {
                    0 => (d.as_secs(), 0),
                    n => (d.as_secs() + 1, 1_000_000_000 - n),
                };
                Self {
                    secs: i64::try_from(secs).map_or(i64::MIN, |s| -s),
                    nanos,
                }
            }
        }
    }

    fn nanos(self) -> i128 {
        i128::from(self.secs) * 1_000_000_000 + i128::from(self.nanos)
    }

    /// Whether this time lies more than `by` before `t`.
    fn before_by(self, t: SystemTime, by: Duration) -> bool {
        let gap = Self::from_system(t).nanos() - self.nanos();
        gap > i128::try_from(by.as_nanos()).unwrap_or(i128::MAX)
    }
}

/// One version of a file's content on disk (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileStamp {
    pub len: u64,
    pub modified: Timestamp,
    /// Device and inode number (zero where the platform has none).
    pub inode: (u64, u64),
    /// Change time: set by the kernel on every write, rename, `touch` or `chmod`.
    pub changed: Timestamp,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let time = |secs: i64, nanos: i64| Timestamp {
                secs,
                nanos: u32::try_from(nanos.clamp(0, 999_999_999)).unwrap_or(0),
            };
            Self {
                len: meta.len(),
                modified: time(meta.mtime(), meta.mtime_nsec()),
                inode: (meta.dev(), meta.ino()),
                changed: time(meta.ctime(), meta.ctime_nsec()),
            }
        }
        #[cfg(not(unix))]
        {
            let modified =
                Timestamp::from_system(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
            Self {
                len: meta.len(),
                modified,
                inode: (0, 0),
                changed: modified,
            }
        }
    }

    /// The stamp of the file at `path` (following symbolic links).
    pub fn read(path: &Path) -> std::io::Result<Self> {
        Ok(Self::of(&std::fs::metadata(path)?))
    }

    /// Whether a change after `t` would show in the stamp (the last change was more than
    /// `settle` before `t`, so a later one gets a later timestamp).
    pub fn settled_before(&self, t: SystemTime, settle: Duration) -> bool {
        self.changed.before_by(t, settle)
    }

    /// Whether `other` is this file after a rename: the same inode, length and modification
    /// time (a rename sets only the change time). Content written in place changes the
    /// modification time, so only someone setting it back on purpose goes unnoticed, as with
    /// rsync's quick check.
    pub fn same_but_renamed(&self, other: &Self) -> bool {
        self.inode == other.inode
            && self.inode != (0, 0)
            && self.len == other.len
            && self.modified == other.modified
    }
}

/// A manifest with the version of the file it describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashedFile {
    pub manifest: Manifest,
    /// The file's version when its content was known to match `manifest`.
    pub stamp: FileStamp,
    /// When that began (when hashing started, or when a rename was seen): a change after it
    /// shows in the stamp once the stamp settled before it.
    pub since: SystemTime,
}

impl HashedFile {
    /// Whether the file as it is now (`now`) still has the content the manifest describes:
    /// the same stamp, settled when the manifest was made.
    pub fn still_matches(&self, now: &FileStamp) -> bool {
        self.stamp == *now && self.stamp.settled_before(self.since, SETTLE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_before_and_after_the_epoch() {
        let e = SystemTime::UNIX_EPOCH;
        assert_eq!(
            Timestamp::from_system(e + Duration::new(5, 7)),
            Timestamp { secs: 5, nanos: 7 }
        );
        assert_eq!(
            Timestamp::from_system(e - Duration::from_millis(1250)),
            Timestamp {
                secs: -2,
                nanos: 750_000_000
            }
        );
        let t = Timestamp { secs: 10, nanos: 0 };
        assert!(t.before_by(e + Duration::from_secs(13), Duration::from_secs(2)));
        assert!(!t.before_by(e + Duration::from_secs(12), Duration::from_secs(2)));
        assert!(!t.before_by(e + Duration::from_secs(5), Duration::ZERO));
        let old = Timestamp {
            secs: -100,
            nanos: 5,
        };
        assert!(old.before_by(e, Duration::from_secs(99)));
    }

    #[test]
    fn a_rename_keeps_all_but_the_change_time() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"content").unwrap();
        let before = FileStamp::read(&a).unwrap();
        let b = dir.path().join("b");
        std::fs::rename(&a, &b).unwrap();
        let after = FileStamp::read(&b).unwrap();
        assert!(before.same_but_renamed(&after));
        // Another file of the same length is another inode.
        std::fs::write(&a, b"content").unwrap();
        assert!(!FileStamp::read(&a).unwrap().same_but_renamed(&after));
    }
}
