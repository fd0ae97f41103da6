//! Unsharing a folder: its collection leaves the library, and with it each member file that is
//! neither shared on its own ([`Library::is_alone`]) nor a member of another collection still
//! on offer (a file several folders have is stored and served once, and stays while one of
//! them is shared). The files on disk stay.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use p2p_proto::FileId;
use p2p_proto::collection::{Collection, MAX_ENCODED_LEN, is_collection_name};
use sha2::{Digest, Sha256};

use crate::storage::Library;

/// A folder no longer on offer.
#[derive(Debug)]
pub struct UnsharedFolder {
    /// The folder's name.
    pub name: String,
    /// Its member files withdrawn with it.
    pub withdrawn: Vec<FileId>,
    /// Its member files still on offer: shared on their own or by another folder.
    pub kept: Vec<FileId>,
}

/// Withdraws the folder collection `id` from the library, with its members as the module docs
/// say. `None` when the library does not offer `id` as a readable collection (nothing is
/// withdrawn then). Reads collection files: call it off the reactor.
pub fn unshare_folder(library: &Library, id: &FileId) -> Option<UnsharedFolder> {
    let collection = offered_collection(library, id)?;
    let others: HashSet<FileId> = library
        .list()
        .iter()
        .filter(|(m, _)| m.id != *id && is_collection_name(&m.name))
        .filter_map(|(m, _)| offered_collection(library, &m.id))
        .flat_map(|c| {
            c.files()
                .map(|(_, member, _, _)| member)
                .collect::<Vec<_>>()
        })
        .collect();
    library.withdraw(id)?;
    let (mut withdrawn, mut kept) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    for (_, member, _, _) in collection.files() {
        if !seen.insert(member) || library.get(&member).is_none() {
            continue;
        }
        if others.contains(&member) || library.is_alone(&member) {
            kept.push(member);
        } else if library.withdraw(&member).is_some() {
            withdrawn.push(member);
        }
    }
    Some(UnsharedFolder {
        name: collection.name().to_owned(),
        withdrawn,
        kept,
    })
}

/// The collection the library offers as `id`: its file read where it is offered (at most
/// [`MAX_ENCODED_LEN`] bytes), hashing to `id`, decoded. `None` for anything else.
fn offered_collection(library: &Library, id: &FileId) -> Option<Collection> {
    let entry = library.get(id)?;
    if !is_collection_name(&entry.manifest.name) || !entry.have().is_complete() {
        return None;
    }
    let bytes = read_bounded(&entry.path())?;
    if FileId(Sha256::digest(&bytes).into()) != *id {
        return None;
    }
    Collection::decode(&bytes).ok()
}

fn read_bounded(path: &Path) -> Option<Vec<u8>> {
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_ENCODED_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    (bytes.len() <= MAX_ENCODED_LEN).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_folder_takes_its_own_members_along_and_leaves_shared_ones() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (one, two) = (dir.path().join("one"), dir.path().join("two"));
        for d in [&one, &two] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(one.join("mine.txt"), b"only in one").unwrap();
        std::fs::write(one.join("both.txt"), b"in both folders").unwrap();
        std::fs::write(two.join("both.txt"), b"in both folders").unwrap();
        std::fs::write(one.join("alone.txt"), b"shared on its own too").unwrap();
        let library = Arc::new(Library::new());
        let first = super::super::share_folder(&library, &data, &one)
            .await
            .unwrap();
        let second = super::super::share_folder(&library, &data, &two)
            .await
            .unwrap();
        let alone = library.share(&one.join("alone.txt")).await.unwrap().id;
        let id_of = |name: &str| {
            first
                .members
                .iter()
                .find(|(p, _)| p.ends_with(name))
                .unwrap()
                .1
        };
        let (mine, both) = (id_of("mine.txt"), id_of("both.txt"));

        let gone = unshare_folder(&library, &first.id).unwrap();
        assert_eq!(gone.name, "one");
        assert_eq!(gone.withdrawn, vec![mine]);
        let mut kept = gone.kept.clone();
        kept.sort();
        let mut want = vec![alone, both];
        want.sort();
        assert_eq!(kept, want);
        assert!(library.get(&first.id).is_none());
        assert!(library.get(&mine).is_none());
        assert!(library.get(&both).is_some() && library.get(&alone).is_some());
        // Not a collection (any more): nothing to do.
        assert!(unshare_folder(&library, &first.id).is_none());
        assert!(unshare_folder(&library, &alone).is_none());
        // The other folder now takes the shared file along.
        let gone = unshare_folder(&library, &second.id).unwrap();
        assert_eq!(gone.withdrawn, vec![both]);
        assert!(library.get(&alone).is_some());
    }
}
