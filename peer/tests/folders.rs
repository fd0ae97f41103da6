//! Folder shares end to end, with real processes on loopback (`--dht off --no-relay`): a
//! daemon shares its subfolders, the shell shares a folder, `p2p-download` recreates trees
//! byte for byte, refuses hostile collections, and resumes across files; `unshare` of a folder
//! withdraws its files too, but not those another shared folder has or shared on their own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use p2p_proto::FileId;
use p2p_proto::collection::{Collection, Entry};
use sha2::{Digest, Sha256};
use support::procs::{download, kill_download_when, piped_shell, seeder, tracker, wait_announced};

fn id_of(data: &[u8]) -> FileId {
    FileId(Sha256::digest(data).into())
}

/// What a tree holds: each file's content and executable bit, each empty directory, by
/// relative path; panics on a symlink.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    File(Vec<u8>, bool),
    EmptyDir,
}

fn read_tree(root: &Path) -> BTreeMap<String, Node> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, Node>) {
        let mut any = false;
        for entry in std::fs::read_dir(dir).unwrap() {
            any = true;
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            assert!(
                !meta.file_type().is_symlink(),
                "a symlink was created: {rel}"
            );
            if meta.is_dir() {
                walk(&entry.path(), &rel, out);
            } else {
                let exec = meta.permissions().mode() & 0o111 != 0;
                out.insert(rel, Node::File(std::fs::read(entry.path()).unwrap(), exec));
            }
        }
        if !any && !rel.is_empty() {
            out.insert(rel.to_owned(), Node::EmptyDir);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

/// A folder with nested and empty directories, unicode and hostile names, an executable, an
/// empty file, the same content twice, and what a share leaves out (a hidden file, symlinks).
/// Returns its collection (computed here, independently of the peer) and the tree a download
/// must recreate (names sanitised).
fn hostile_folder(root: &Path) -> (Collection, BTreeMap<String, Node>) {
    use std::os::unix::fs::PermissionsExt;
    let big = support::content(700_000, 5);
    let files: Vec<(&str, &str, Vec<u8>, bool)> = vec![
        // (path on disk, path after download, content, executable)
        ("a/b/c/deep.bin", "a/b/c/deep.bin", big.clone(), false),
        ("a/b/copy.bin", "a/b/copy.bin", big.clone(), false),
        (
            "ünïcødé/日本語 ファイル.txt",
            "ünïcødé/日本語 ファイル.txt",
            b"konnichiwa".to_vec(),
            false,
        ),
        ("CON", "_CON", b"device name on windows".to_vec(), false),
        (
            "bidi\u{202e}gpj.exe",
            "bidi_gpj.exe",
            b"not a picture".to_vec(),
            false,
        ),
        (
            "what?:*.txt",
            "what___.txt",
            b"windows-unsafe".to_vec(),
            false,
        ),
        ("run.sh", "run.sh", b"#!/bin/sh\necho hi\n".to_vec(), true),
        ("zero", "zero", Vec::new(), false),
    ];
    let mut entries = Vec::new();
    let mut tree = BTreeMap::new();
    for (disk, wanted, content, exec) in files {
        let path = root.join(disk);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &content).unwrap();
        let mode = if exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        entries.push(Entry::file(
            disk,
            id_of(&content),
            content.len() as u64,
            exec,
        ));
        tree.insert(wanted.to_owned(), Node::File(content, exec));
    }
    for dir in ["empty", "a/also empty/inner"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        entries.push(Entry::empty_dir(dir));
        tree.insert(dir.to_owned(), Node::EmptyDir);
    }
    // Left out: a hidden file, a symlink to a file outside, a symlink to a folder.
    std::fs::write(root.join(".secret"), b"hidden").unwrap();
    let outside = root.parent().unwrap().join("outside.txt");
    std::fs::write(&outside, b"outside").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link.txt")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
    let name = root.file_name().unwrap().to_str().unwrap();
    (Collection::new(name, entries).unwrap(), tree)
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The raw encoding of `entries`, unchecked (for hostile collections).
fn raw_collection(entries: &[(u8, &str)]) -> Vec<u8> {
    let mut out = p2p_proto::collection::MAGIC.to_vec();
    out.extend([0, 4]);
    out.extend(b"evil");
    out.extend((entries.len() as u32).to_be_bytes());
    for (kind, path) in entries {
        out.push(*kind);
        out.extend((path.len() as u16).to_be_bytes());
        out.extend(path.as_bytes());
        if *kind == 1 {
            out.extend([0xab; 32]);
            out.extend(1u64.to_be_bytes());
            out.push(0);
        }
    }
    out
}

// Multi-threaded: the test blocks on child processes while the tracker serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_shares_a_subfolder_that_downloads_byte_for_byte_and_hostile_lists_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let t = tracker(work.path()).await;
    let url = t.base_url();
    let share = work.path().join("share");
    let (collection, want) = hostile_folder(&share.join("album"));
    let id = collection.id().to_string();

    // Hostile collections, shared as plain files under a collection's name.
    let traversal = raw_collection(&[(1, "../escaped")]);
    let duplicate = raw_collection(&[(1, "x"), (1, "x")]);
    let absolute = raw_collection(&[(2, "/tmp/abs")]);
    std::fs::write(share.join("traversal.p2p-folder"), &traversal).unwrap();
    std::fs::write(share.join("duplicate.p2p-folder"), &duplicate).unwrap();
    std::fs::write(share.join("absolute.p2p-folder"), &absolute).unwrap();
    // Over the cap for a folder's list: refused before a byte of it is fetched.
    let huge = support::content((16 << 20) + 1, 77);
    std::fs::write(share.join("huge.p2p-folder"), &huge).unwrap();

    let args = ["--dht", "off", "--no-relay"];
    let seeder = seeder(&url, &share, &id, &args).await;
    // Every member (but the empty file, which nobody needs to ask for) and the hostile lists.
    for (_, member, size, _) in collection.files() {
        if size > 0 {
            wait_announced(&url, &member.to_string()).await;
        }
    }
    for bytes in [&traversal, &duplicate, &absolute, &huge] {
        wait_announced(&url, &id_of(bytes).to_string()).await;
    }

    let leech = work.path().join("leech");
    let out = download(&url, &leech, &id).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("saved folder"), "{}", stdout(&out));
    let got = read_tree(&leech.join("album"));
    assert_eq!(got, want, "the tree differs");
    // The same content at two paths is stored once (one downloaded, one linked).
    let album = leech.join("album");
    assert_eq!(
        inode(&album.join("a/b/c/deep.bin")),
        inode(&album.join("a/b/copy.bin"))
    );
    assert!(
        stdout(&out).contains("1 from files here"),
        "{}",
        stdout(&out)
    );
    // Nothing outside the folder, no progress file left.
    let top: Vec<String> = std::fs::read_dir(&leech)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.') && n != "identity.key")
        .collect();
    assert_eq!(top, ["album"]);
    assert!(!leech.join(".partial").join(format!("{id}.folder")).exists());

    // A second download of the same id makes a second tree beside the first, from the files
    // this peer has (nothing downloaded again).
    let out = download(&url, &leech, &id).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read_tree(&leech.join("album (1)")), want);
    assert!(stdout(&out).contains("0 downloaded"), "{}", stdout(&out));

    // Hostile lists: a clear error, and nothing created.
    for (bytes, why) in [
        (&traversal, "'.' or '..'"),
        (&duplicate, "listed twice"),
        (&absolute, "absolute"),
        (&huge, "over the 16777216-byte limit"),
    ] {
        let other = work.path().join("other");
        let out = download(&url, &other, &id_of(bytes).to_string()).await;
        assert!(!out.status.success(), "{}", stdout(&out));
        assert!(stderr(&out).contains(why), "{why}: {}", stderr(&out));
        let made: Vec<PathBuf> = std::fs::read_dir(&other)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.file_name().unwrap().to_str().unwrap().starts_with('.'))
            .filter(|p| !p.ends_with("identity.key"))
            .collect();
        assert!(made.is_empty(), "{made:?}");
    }
    assert!(!work.path().join("escaped").exists());
    drop(seeder);
    t.stop().await.unwrap();
}

/// The shell's `share <dir>` prints the folder's id; a download killed after some files
/// continues with the rest, and only those cross the network again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_shares_a_folder_and_a_killed_download_resumes_across_files() {
    use std::io::Write;
    let work = tempfile::tempdir().unwrap();
    let t = tracker(work.path()).await;
    let url = t.base_url();
    let folder = work.path().join("photos");
    let mut want = BTreeMap::new();
    let mut members = Vec::new();
    for i in 0..6u64 {
        // Distinct contents (the generator's seed is made odd).
        let data = support::content(3_000_000, 101 + 2 * i);
        let path = format!("day {}/img-{i}.raw", i / 2);
        std::fs::create_dir_all(folder.join(format!("day {}", i / 2))).unwrap();
        std::fs::write(folder.join(&path), &data).unwrap();
        members.push(id_of(&data).to_string());
        want.insert(path, Node::File(data, false));
    }
    // A slow sharer (4 MiB/s for 18 MB), so the download can be killed part-way.
    let shell_data = work.path().join("shell");
    std::fs::create_dir_all(&shell_data).unwrap();
    let (mut shell, mut stdin, rx) = piped_shell(
        &url,
        &shell_data,
        &["--dht", "off", "--no-relay", "--upload-limit", "4M"],
    );
    writeln!(stdin, "share {}", folder.display()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut said = Vec::new();
    let id = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no id from share: {said:?}"));
        if let Some(id) = line.trim().strip_prefix("id ") {
            break id.to_owned();
        }
        said.push(line);
    };
    assert!(
        said.iter()
            .any(|l| l.starts_with("sharing folder photos (6 files, 18000000 bytes)")),
        "{said:?}"
    );

    wait_announced(&url, &id).await;
    for member in &members {
        wait_announced(&url, member).await;
    }

    // Killed once two files are in place (the progress file lists the root and two paths).
    let leech = work.path().join("leech");
    let progress = leech.join(".partial").join(format!("{id}.folder"));
    let placed = || std::fs::read_to_string(&progress).map_or(0, |t| t.lines().count());
    kill_download_when(&url, &leech, &id, &["--dht", "off", "--no-relay"], || {
        placed() >= 3
    });

    let out = download(&url, &leech, &id).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let earlier: u64 = text
        .split(" from an earlier run")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!((2..6).contains(&earlier), "{text}");
    assert!(
        text.contains(&format!("{} downloaded", 6 - earlier)),
        "{text}"
    );
    assert_eq!(read_tree(&leech.join("photos")), want);
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let _ = shell.0.wait();
    t.stop().await.unwrap();
}

/// How many peers the tracker lists for `id` (none for a file it does not know).
async fn listed_peers(url: &str, id: &FileId) -> usize {
    let resp = reqwest::Client::new()
        .get(format!("{url}/api/files/{id}/peers"))
        .header("X-API-Key", support::procs::KEY)
        .send()
        .await
        .unwrap();
    if resp.status() == 404 {
        return 0;
    }
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    body["peers"].as_array().unwrap().len()
}

/// The shell's `unshare <folder id>` withdraws the folder's collection and its files from the
/// tracker, except a file another shared folder has too and one shared on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsharing_a_folder_withdraws_its_files_but_not_shared_ones() {
    use std::io::Write;
    let work = tempfile::tempdir().unwrap();
    let t = tracker(work.path()).await;
    let url = t.base_url();
    let (one, two) = (work.path().join("one"), work.path().join("two"));
    std::fs::create_dir_all(one.join("sub")).unwrap();
    std::fs::create_dir_all(&two).unwrap();
    let (mine, both, alone) = (
        support::content(300_000, 41),
        support::content(300_000, 43),
        support::content(300_000, 45),
    );
    std::fs::write(one.join("sub/mine.bin"), &mine).unwrap();
    std::fs::write(one.join("both.bin"), &both).unwrap();
    std::fs::write(two.join("both.bin"), &both).unwrap();
    std::fs::write(one.join("alone.bin"), &alone).unwrap();
    let (mine, both, alone) = (id_of(&mine), id_of(&both), id_of(&alone));

    let shell_data = work.path().join("shell");
    std::fs::create_dir_all(&shell_data).unwrap();
    let (mut shell, mut stdin, rx) =
        piped_shell(&url, &shell_data, &["--dht", "off", "--no-relay"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut said = Vec::new();
    let next_id = |said: &mut Vec<String>| loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no id printed: {said:?}"));
        said.push(line.clone());
        if let Some(id) = line.trim().strip_prefix("id ") {
            return id.parse::<FileId>().unwrap();
        }
    };
    writeln!(stdin, "share {}", one.display()).unwrap();
    let folder_one = next_id(&mut said);
    writeln!(stdin, "share {}", two.display()).unwrap();
    let folder_two = next_id(&mut said);
    writeln!(stdin, "share {}", one.join("alone.bin").display()).unwrap();
    assert_eq!(next_id(&mut said), alone);
    for id in [folder_one, folder_two, mine, both, alone] {
        wait_announced(&url, &id.to_string()).await;
    }

    writeln!(stdin, "unshare {folder_one}").unwrap();
    assert_eq!(next_id(&mut said), folder_one);
    assert!(
        said.iter().any(|l| l.starts_with(
            "no longer sharing folder one and 1 of its files (2 files still shared on their own or by another folder)"
        )),
        "{said:?}"
    );
    // The collection and its own file leave the tracker's lists (within 30 s).
    let gone_by = Instant::now() + Duration::from_secs(30);
    for id in [folder_one, mine] {
        while listed_peers(&url, &id).await > 0 {
            assert!(Instant::now() < gone_by, "{id} is still listed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Withdrawn in the same announce: the shared ones are still there.
    for id in [folder_two, both, alone] {
        assert_eq!(listed_peers(&url, &id).await, 1, "{id} was withdrawn");
    }
    // Unsharing the other folder now takes the file it shared with the first along.
    writeln!(stdin, "unshare {folder_two}").unwrap();
    assert_eq!(next_id(&mut said), folder_two);
    while listed_peers(&url, &both).await > 0 {
        assert!(Instant::now() < gone_by, "{both} is still listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed_peers(&url, &alone).await, 1);
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let _ = shell.0.wait();
    t.stop().await.unwrap();
}
