//! Folder collections: a shared folder as one id.
//!
//! A collection lists a folder's files by relative path, each with its file id, size and
//! executable bit, and the folder's empty directories. Its **canonical encoding** (below, and
//! byte by byte in `docs/protocol.md` §10) is unique for a given folder: entries sorted by path
//! bytes, no duplicates, only empty directories listed. The collection's id is the SHA-256 of
//! that encoding, so the encoding is itself shared as an ordinary file whose id is the
//! collection's id; the member files are ordinary shared files.
//!
//! ```text
//! magic "p2p-folder/1\n" (13 bytes) ‖ name str ‖ count u32 ‖ count × entry
//! entry = 0x01 ‖ path str ‖ id [32] ‖ size u64 ‖ flags u8     a file (flags bit 0: executable)
//!       | 0x02 ‖ path str                                     an empty directory
//! str   = len u16 ‖ UTF-8 bytes
//! ```
//!
//! Decoding is strict and bounded: it refuses input over [`MAX_ENCODED_LEN`] before reading
//! it, more than [`MAX_ENTRIES`] entries, any path that is absolute, empty, has an empty,
//! `.`, `..`, or over-long component, a backslash or a control character, duplicates and
//! entries out of order, a file that is also another entry's parent, a listed directory that is
//! not empty, and anything non-canonical (unknown flags, trailing bytes), so that a decoded
//! collection re-encodes to exactly the bytes it came from. It allocates at most in proportion
//! to its input.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use crate::ids::FileId;
use crate::manifest::MAX_NAME_LEN;

/// The first bytes of every encoded collection.
pub const MAGIC: &[u8; 13] = b"p2p-folder/1\n";
/// What a collection's manifest name ends with: a folder `photos` is shared as the file
/// `photos.p2p-folder`, whose content is the collection's encoding.
pub const NAME_SUFFIX: &str = ".p2p-folder";
/// Longest folder name, in bytes (so that the name and [`NAME_SUFFIX`] fit a manifest name).
pub const MAX_FOLDER_NAME_LEN: usize = MAX_NAME_LEN - NAME_SUFFIX.len();
/// Most entries (files and empty directories) in one collection.
pub const MAX_ENTRIES: usize = 100_000;
/// Longest encoding accepted, in bytes.
pub const MAX_ENCODED_LEN: usize = 16 << 20;
/// Longest relative path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest path component, in bytes.
pub const MAX_COMPONENT_LEN: usize = 255;
/// Deepest path, in components.
pub const MAX_DEPTH: usize = 64;

const KIND_FILE: u8 = 0x01;
const KIND_DIR: u8 = 0x02;
const FLAG_EXECUTABLE: u8 = 0x01;
/// The fewest bytes an entry takes (an empty directory with a one-byte path).
const MIN_ENTRY_LEN: usize = 1 + 2 + 1;

/// The id of empty content: `SHA-256("")`.
const EMPTY_ID: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Why bytes or entries are not a valid collection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CollectionError {
    #[error("a collection of {0} bytes is over the {MAX_ENCODED_LEN}-byte limit")]
    TooLarge(usize),
    #[error("not a folder collection (it does not start with \"p2p-folder/1\")")]
    Magic,
    #[error("the collection is truncated (in {0})")]
    Truncated(&'static str),
    #[error("{0} bytes after the last entry")]
    Trailing(usize),
    #[error("{0} entries is over the limit of {MAX_ENTRIES}")]
    TooManyEntries(u64),
    #[error("invalid folder name {name:?}: {why}")]
    Name { name: String, why: &'static str },
    #[error("invalid path {path:?}: {why}")]
    Path { path: String, why: &'static str },
    #[error("unknown entry kind {0:#04x}")]
    Kind(u8),
    #[error("{path:?}: unknown flags {flags:#04x}")]
    Flags { path: String, flags: u8 },
    #[error("{0:?} is listed twice")]
    Duplicate(String),
    #[error("{0:?} is out of order (entries are sorted by path bytes)")]
    Order(String),
    #[error("{child:?} lies inside {parent:?}, which is a file or a directory listed as empty")]
    Parent { parent: String, child: String },
    #[error("{0:?} is empty but its id is not the id of empty content")]
    EmptyId(String),
    #[error("the files add up to more than 2^64 bytes")]
    Overflow,
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file: its id (SHA-256 of the content), size and executable bit.
    File {
        id: FileId,
        size: u64,
        executable: bool,
    },
    /// A directory with nothing in it (others follow from the files' paths).
    EmptyDir,
}

/// One file or empty directory, by its path relative to the folder (`/`-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
}

impl Entry {
    pub fn file(path: impl Into<String>, id: FileId, size: u64, executable: bool) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::File {
                id,
                size,
                executable,
            },
        }
    }

    pub fn empty_dir(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::EmptyDir,
        }
    }

    /// The path's components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.path.split('/')
    }
}

/// A folder: its name and entries, valid and in canonical order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    name: String,
    entries: Vec<Entry>,
}

impl Collection {
    /// A collection of `entries` (in any order) named `name`; checks everything decoding
    /// checks, so what this accepts encodes to bytes [`Collection::decode`] accepts.
    pub fn new(name: &str, mut entries: Vec<Entry>) -> Result<Self, CollectionError> {
        validate_folder_name(name)?;
        if entries.len() > MAX_ENTRIES {
            return Err(CollectionError::TooManyEntries(entries.len() as u64));
        }
        entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        let c = Self {
            name: name.to_owned(),
            entries,
        };
        c.validate()?;
        let len = c.encoded_len();
        if len > MAX_ENCODED_LEN {
            return Err(CollectionError::TooLarge(len));
        }
        Ok(c)
    }

    /// The folder's name (a label; receivers sanitise it before using it on disk).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entries, sorted by path bytes.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The files: path, id, size, executable.
    pub fn files(&self) -> impl Iterator<Item = (&str, FileId, u64, bool)> {
        self.entries.iter().filter_map(|e| match e.kind {
            EntryKind::File {
                id,
                size,
                executable,
            } => Some((e.path.as_str(), id, size, executable)),
            EntryKind::EmptyDir => None,
        })
    }

    /// The bytes of all files together.
    pub fn total_size(&self) -> u64 {
        // Checked when the collection was made.
        self.files().map(|(_, _, size, _)| size).sum()
    }

    /// The name of the collection's encoding when it is shared as a file.
    pub fn manifest_name(&self) -> String {
        format!("{}{NAME_SUFFIX}", self.name)
    }

    /// The collection's id: the SHA-256 of [`Collection::encode`].
    pub fn id(&self) -> FileId {
        FileId(Sha256::digest(self.encode()).into())
    }

    /// The length of [`Collection::encode`].
    pub fn encoded_len(&self) -> usize {
        let entries: usize = self
            .entries
            .iter()
            .map(|e| {
                1 + 2
                    + e.path.len()
                    + match e.kind {
                        EntryKind::File { .. } => 32 + 8 + 1,
                        EntryKind::EmptyDir => 0,
                    }
            })
            .sum();
        MAGIC.len() + 2 + self.name.len() + 4 + entries
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(MAGIC);
        put_str(&mut out, &self.name);
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            match e.kind {
                EntryKind::File {
                    id,
                    size,
                    executable,
                } => {
                    out.push(KIND_FILE);
                    put_str(&mut out, &e.path);
                    out.extend_from_slice(&id.0);
                    out.extend_from_slice(&size.to_be_bytes());
                    out.push(if executable { FLAG_EXECUTABLE } else { 0 });
                }
                EntryKind::EmptyDir => {
                    out.push(KIND_DIR);
                    put_str(&mut out, &e.path);
                }
            }
        }
        out
    }

    /// Decodes a canonical encoding; anything else is refused (see the module docs).
    pub fn decode(bytes: &[u8]) -> Result<Self, CollectionError> {
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(CollectionError::TooLarge(bytes.len()));
        }
        let mut r = Reader(bytes);
        if r.take(MAGIC.len(), "magic")
            .map_err(|_| CollectionError::Magic)?
            != MAGIC
        {
            return Err(CollectionError::Magic);
        }
        let name = r.str("the folder name")?;
        validate_folder_name(&name)?;
        let count = u64::from(r.u32("the entry count")?);
        if count > MAX_ENTRIES as u64 {
            return Err(CollectionError::TooManyEntries(count));
        }
        // Never more room than the bytes left could fill.
        let room = (count as usize).min(r.0.len() / MIN_ENTRY_LEN);
        let mut entries = Vec::with_capacity(room);
        for _ in 0..count {
            let kind = r.u8("an entry")?;
            let path = r.str("a path")?;
            let kind = match kind {
                KIND_FILE => {
                    let id = FileId(r.array("a file id")?);
                    let size = u64::from_be_bytes(r.array("a file size")?);
                    let flags = r.u8("a file's flags")?;
                    if flags & !FLAG_EXECUTABLE != 0 {
                        return Err(CollectionError::Flags { path, flags });
                    }
                    EntryKind::File {
                        id,
                        size,
                        executable: flags & FLAG_EXECUTABLE != 0,
                    }
                }
                KIND_DIR => EntryKind::EmptyDir,
                other => return Err(CollectionError::Kind(other)),
            };
            entries.push(Entry { path, kind });
        }
        if !r.0.is_empty() {
            return Err(CollectionError::Trailing(r.0.len()));
        }
        let c = Self { name, entries };
        c.validate()?;
        Ok(c)
    }

    /// Paths valid and in strictly increasing order; no entry inside a file or a listed
    /// directory; empty files carry the empty id; the sizes add up.
    fn validate(&self) -> Result<(), CollectionError> {
        let mut total = 0u64;
        for (i, e) in self.entries.iter().enumerate() {
            validate_path(&e.path)?;
            if let Some(prev) = i.checked_sub(1).map(|p| &self.entries[p]) {
                match prev.path.as_bytes().cmp(e.path.as_bytes()) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => {
                        return Err(CollectionError::Duplicate(e.path.clone()));
                    }
                    std::cmp::Ordering::Greater => {
                        return Err(CollectionError::Order(e.path.clone()));
                    }
                }
            }
            if let EntryKind::File { id, size, .. } = e.kind {
                if size == 0 && id.0 != EMPTY_ID {
                    return Err(CollectionError::EmptyId(e.path.clone()));
                }
                total = total.checked_add(size).ok_or(CollectionError::Overflow)?;
            }
        }
        // Every entry is a leaf: none may be another's parent.
        let paths: HashSet<&str> = self.entries.iter().map(|e| e.path.as_str()).collect();
        for e in &self.entries {
            for (at, _) in e.path.match_indices('/') {
                let parent = &e.path[..at];
                if paths.contains(parent) {
                    return Err(CollectionError::Parent {
                        parent: parent.to_owned(),
                        child: e.path.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Whether a manifest name is that of a collection's encoding (`<folder>.p2p-folder`).
pub fn is_collection_name(name: &str) -> bool {
    name.len() > NAME_SUFFIX.len() && name.ends_with(NAME_SUFFIX)
}

/// The folder name of a collection's manifest name.
pub fn folder_name(manifest_name: &str) -> Option<&str> {
    is_collection_name(manifest_name)
        .then(|| &manifest_name[..manifest_name.len() - NAME_SUFFIX.len()])
}

fn validate_folder_name(name: &str) -> Result<(), CollectionError> {
    let bad = |why| CollectionError::Name {
        name: name.to_owned(),
        why,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_FOLDER_NAME_LEN {
        return Err(bad("longer than 244 bytes"));
    }
    if name == "." || name == ".." {
        return Err(bad("'.' and '..' are not folder names"));
    }
    if name.contains(['/', '\\']) {
        return Err(bad("contains a path separator"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("contains a control character"));
    }
    Ok(())
}

/// Checks a relative path: `/`-separated components, each non-empty, not `.` or `..`, at most
/// [`MAX_COMPONENT_LEN`] bytes, without backslashes or control characters; at most
/// [`MAX_DEPTH`] components and [`MAX_PATH_LEN`] bytes.
pub fn validate_path(path: &str) -> Result<(), CollectionError> {
    let bad = |why| CollectionError::Path {
        path: path.to_owned(),
        why,
    };
    if path.is_empty() {
        return Err(bad("empty"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(bad("longer than 4096 bytes"));
    }
    if path.starts_with('/') {
        return Err(bad("absolute"));
    }
    if path.contains('\\') {
        return Err(bad("contains a backslash"));
    }
    if path.chars().any(char::is_control) {
        return Err(bad("contains a control character"));
    }
    let mut depth = 0;
    for component in path.split('/') {
        depth += 1;
        match component {
            "" => return Err(bad("has an empty component")),
            "." | ".." => return Err(bad("has a '.' or '..' component")),
            c if c.len() > MAX_COMPONENT_LEN => {
                return Err(bad("has a component longer than 255 bytes"));
            }
            _ => {}
        }
    }
    if depth > MAX_DEPTH {
        return Err(bad("deeper than 64 components"));
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Every string was checked to fit (names ≤ 244 bytes, paths ≤ 4096).
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads from the front of a slice, naming what was cut short.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CollectionError> {
        if self.0.len() < n {
            return Err(CollectionError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CollectionError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, CollectionError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, CollectionError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn str(&mut self, what: &'static str) -> Result<String, CollectionError> {
        let len = u16::from_be_bytes(self.array(what)?) as usize;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| CollectionError::Utf8(what))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id(b: u8) -> FileId {
        FileId([b; 32])
    }

    #[test]
    fn golden_encoding() {
        let c = Collection::new(
            "f",
            vec![
                Entry::file("b/x", id(0xab), 5, true),
                Entry::empty_dir("a"),
                Entry::file("e", FileId(EMPTY_ID), 0, false),
            ],
        )
        .unwrap();
        let mut want = b"p2p-folder/1\n".to_vec();
        want.extend([0x00, 0x01, b'f']); // name "f"
        want.extend([0, 0, 0, 3]); // three entries, sorted: "a", "b/x", "e"
        want.extend([0x02, 0x00, 0x01, b'a']);
        want.extend([0x01, 0x00, 0x03, b'b', b'/', b'x']);
        want.extend([0xab; 32]);
        want.extend([0, 0, 0, 0, 0, 0, 0, 5, 0x01]);
        want.extend([0x01, 0x00, 0x01, b'e']);
        want.extend(EMPTY_ID);
        want.extend([0, 0, 0, 0, 0, 0, 0, 0, 0x00]);
        assert_eq!(c.encode(), want);
        assert_eq!(c.encoded_len(), want.len());
        assert_eq!(c.id(), FileId(Sha256::digest(&want).into()));
        assert_eq!(
            c.id().to_string(),
            "794e116ee0644ec02ee8e756319468a4d42815c94cfd3dd50d203766d2e945f2",
            "docs/protocol.md §10 quotes this id"
        );
        assert_eq!(Collection::decode(&want).unwrap(), c);
        assert_eq!(c.total_size(), 5);
        assert_eq!(c.manifest_name(), "f.p2p-folder");
        assert_eq!(folder_name("f.p2p-folder"), Some("f"));
        assert_eq!(folder_name(".p2p-folder"), None);
        assert_eq!(EMPTY_ID, <[u8; 32]>::from(Sha256::digest(b"")));
    }

    /// An encoding of `entries` as given (no sorting, no checks), for hostile inputs.
    fn raw(name: &str, entries: &[Entry]) -> Vec<u8> {
        Collection {
            name: name.to_owned(),
            entries: entries.to_vec(),
        }
        .encode()
    }

    #[test]
    fn hostile_collections_are_refused_with_the_reason() {
        let f = |p: &str| Entry::file(p, id(1), 1, false);
        let cases: Vec<(Vec<Entry>, &str)> = vec![
            (vec![f("../etc/passwd")], "'.' or '..'"),
            (vec![f("a/../../b")], "'.' or '..'"),
            (vec![f("/etc/passwd")], "absolute"),
            (vec![f("a//b")], "empty component"),
            (vec![f("a/")], "empty component"),
            (vec![f("./a")], "'.' or '..'"),
            (vec![f("")], "empty"),
            (vec![f("a\\..\\b")], "backslash"),
            (vec![f("a\0b")], "control"),
            (vec![f("x"), f("x")], "listed twice"),
            (vec![f("b"), f("a")], "out of order"),
            (vec![f("a"), f("a/b")], "lies inside"),
            (vec![Entry::empty_dir("d"), f("d/x")], "lies inside"),
            (vec![Entry::file("e", id(1), 0, false)], "empty content"),
            (vec![f("a/".repeat(65).trim_end_matches('/'))], "deeper"),
            (vec![f(&"n".repeat(256))], "longer than 255"),
        ];
        for (entries, why) in cases {
            let err = Collection::decode(&raw("f", &entries)).unwrap_err();
            assert!(err.to_string().contains(why), "{entries:?}: {err}");
        }
        // Sizes that add up past 2^64.
        let big = [
            Entry::file("a", id(1), u64::MAX, false),
            Entry::file("b", id(1), 1, false),
        ];
        assert_eq!(
            Collection::decode(&raw("f", &big)),
            Err(CollectionError::Overflow)
        );
        for name in ["", "..", "a/b", "a\nb"] {
            assert!(matches!(
                Collection::decode(&raw(name, &[f("a")])),
                Err(CollectionError::Name { .. })
            ));
        }
        let mut bytes = raw("f", &[f("a")]);
        bytes.push(0);
        assert_eq!(
            Collection::decode(&bytes),
            Err(CollectionError::Trailing(1))
        );
        bytes.pop();
        let flags = bytes.len() - 1;
        bytes[flags] = 0x03;
        assert!(matches!(
            Collection::decode(&bytes),
            Err(CollectionError::Flags { flags: 3, .. })
        ));
        assert_eq!(
            Collection::decode(b"p2p-folder/2\n"),
            Err(CollectionError::Magic)
        );
        assert_eq!(Collection::decode(b"p2p"), Err(CollectionError::Magic));
        // The same checks guard building one.
        assert!(Collection::new("f", vec![f("a"), f("a")]).is_err());
        assert!(Collection::new("f", vec![f("../x")]).is_err());
    }

    #[test]
    fn counts_and_sizes_are_capped_before_anything_is_allocated() {
        // A count of four billion entries in a 20-byte input: refused at the count.
        let mut bytes = MAGIC.to_vec();
        bytes.extend([0, 1, b'f', 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            Collection::decode(&bytes),
            Err(CollectionError::TooManyEntries(u64::from(u32::MAX)))
        );
        // The most entries allowed, but no bytes for them: truncated, after a small allocation.
        let mut bytes = MAGIC.to_vec();
        bytes.extend([0, 1, b'f']);
        bytes.extend((MAX_ENTRIES as u32).to_be_bytes());
        assert_eq!(
            Collection::decode(&bytes),
            Err(CollectionError::Truncated("an entry"))
        );
        let huge = vec![0u8; MAX_ENCODED_LEN + 1];
        assert_eq!(
            Collection::decode(&huge),
            Err(CollectionError::TooLarge(MAX_ENCODED_LEN + 1))
        );
        let many: Vec<Entry> = (0..=MAX_ENTRIES)
            .map(|i| Entry::empty_dir(format!("{i:06}")))
            .collect();
        assert_eq!(
            Collection::new("f", many),
            Err(CollectionError::TooManyEntries(MAX_ENTRIES as u64 + 1))
        );
        // Deep long paths: each entry valid, the whole over the size cap.
        let long = |i: usize| {
            let mut p = format!("{i:05}");
            while p.len() + 256 < MAX_PATH_LEN {
                p.push('/');
                p.push_str(&"d".repeat(255));
            }
            Entry::file(p, id(2), 1, false)
        };
        let entries: Vec<Entry> = (0..5000).map(long).collect();
        assert!(matches!(
            Collection::new("f", entries),
            Err(CollectionError::TooLarge(_))
        ));
    }

    /// The process's peak resident memory (`VmHWM`), in bytes; `None` off Linux.
    fn peak_rss() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    #[test]
    fn a_list_at_the_caps_costs_memory_in_proportion_to_its_bytes() {
        // 100 000 entries of long paths, just under 16 MiB, refused at the very end (the last
        // path twice): the whole list is read before the refusal.
        // Written straight into the buffer, so building it leaves no higher peak behind.
        let tail = "p".repeat(150);
        let mut bytes = MAGIC.to_vec();
        bytes.extend([0, 1, b'f']);
        bytes.extend((MAX_ENTRIES as u32).to_be_bytes());
        for i in (0..MAX_ENTRIES - 1).chain([MAX_ENTRIES - 2]) {
            let path = format!("{i:06}/{tail}");
            bytes.push(KIND_DIR);
            bytes.extend((path.len() as u16).to_be_bytes());
            bytes.extend(path.as_bytes());
        }
        assert!(bytes.len() <= MAX_ENCODED_LEN, "{}", bytes.len());
        let Some(before) = peak_rss() else {
            println!("SKIPPED: peak memory: no /proc/self/status");
            return;
        };
        assert!(matches!(
            Collection::decode(&bytes),
            Err(CollectionError::Duplicate(_))
        ));
        let grown = peak_rss().unwrap_or(before).saturating_sub(before);
        println!(
            "decoding {} bytes of list: peak memory +{} KiB",
            bytes.len(),
            grown >> 10
        );
        // The entries' strings and their index: a small multiple of the input, whatever the
        // count claims.
        assert!(
            grown < 4 * MAX_ENCODED_LEN as u64,
            "decoding took {grown} bytes"
        );
    }

    fn arb_component() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9 ._-]{1,12}",
            "\\PC{1,6}",
            Just("CON".to_owned()),
            Just("\u{202e}gpj.exe".to_owned()),
        ]
        .prop_filter("not . or ..", |c| {
            c != "." && c != ".." && !c.contains(['/', '\\'])
        })
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (
            prop::collection::vec(arb_component(), 1..4),
            any::<bool>(),
            any::<[u8; 32]>(),
            1..u64::from(u32::MAX),
            any::<bool>(),
        )
            .prop_map(|(parts, dir, id, size, x)| {
                let path = parts.join("/");
                if dir {
                    Entry::empty_dir(path)
                } else {
                    Entry::file(path, FileId(id), size, x)
                }
            })
    }

    proptest! {
        #[test]
        fn roundtrip(name in "[a-z]{1,10}", entries in prop::collection::vec(arb_entry(), 0..20)) {
            // Keep only leaves: drop duplicates and entries that are another's parent.
            let mut leaves: Vec<Entry> = Vec::new();
            for e in entries {
                let clash = leaves.iter().any(|l| {
                    l.path == e.path
                        || e.path.starts_with(&format!("{}/", l.path))
                        || l.path.starts_with(&format!("{}/", e.path))
                });
                if !clash {
                    leaves.push(e);
                }
            }
            let c = Collection::new(&name, leaves.clone()).unwrap();
            let bytes = c.encode();
            prop_assert_eq!(bytes.len(), c.encoded_len());
            let back = Collection::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &c);
            prop_assert_eq!(back.id(), c.id());
            // Canonical: the order entries were given in does not matter.
            leaves.reverse();
            prop_assert_eq!(Collection::new(&name, leaves).unwrap().encode(), bytes);
        }

        #[test]
        fn decoding_anything_is_canonical_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..300), prefix in any::<bool>()) {
            let mut input = if prefix { MAGIC.to_vec() } else { Vec::new() };
            input.extend(bytes);
            if let Ok(c) = Collection::decode(&input) {
                prop_assert_eq!(c.encode(), input);
            }
        }
    }
}
