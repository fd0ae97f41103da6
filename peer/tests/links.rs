//! Share links end to end, with real processes on loopback (`--dht off`): the shell's `share`
//! prints a link; `p2p-download <link>` with no API key fetches the private file through the
//! link's tracker, grant and peers; the same download fails clearly with a grant for another
//! id, with a damaged link, and once the grant has expired. A link to a folder downloads its
//! nested tree byte for byte with no API key (the folder's grant gets grants for its files),
//! and a receiver with no API key reaches a seeder only the relay can reach through the link's
//! relay, with the link's grant.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use p2p_proto::api::FilePeers;
use p2p_proto::link::{ReadGrant, ShareLink};
use p2p_proto::{FileId, PeerId};
use sha2::{Digest, Sha256};
use support::procs::{KEY, api_json, piped_shell, relayed_bytes, seeder, tracker};

fn id_of(data: &[u8]) -> FileId {
    FileId(Sha256::digest(data).into())
}

/// A read grant for `id` lasting `ttl_secs`, asked of the tracker with the API key.
async fn grant(url: &str, id: &FileId, ttl_secs: u64) -> ReadGrant {
    let resp = reqwest::Client::new()
        .post(format!("{url}/api/files/{id}/grants?ttl_secs={ttl_secs}"))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().await.unwrap();
    ReadGrant::from_hex(body["grant"].as_str().unwrap()).unwrap()
}

/// A link to `id` at the tracker, starting from the peers it lists, carrying `grant`.
async fn link(url: &str, id: &FileId, grant: &ReadGrant) -> ShareLink {
    let swarm: FilePeers =
        serde_json::from_value(api_json(url, &format!("/api/files/{id}/peers")).await).unwrap();
    ShareLink::from_swarm(*id, &[url.to_owned()], &swarm.peers, None, Some(grant)).unwrap()
}

/// `p2p-download <link>` into `dir` with no API key (none given, none in the environment) and
/// a `--tracker` where nothing answers: only the link says where to look. At most a minute.
async fn download_by_link(dir: &Path, link: &str) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_p2p-download"));
    cmd.args([
        "--tracker",
        "http://127.0.0.1:1",
        "--port",
        "0",
        "--listen",
        "127.0.0.1",
        "--allow-local-addrs",
        "--dht",
        "off",
    ])
    .arg("--data")
    .arg(dir)
    .arg(link)
    .env("RUST_LOG", "info")
    .env_remove("P2P_API_KEY")
    .env_remove("P2P_TRACKER")
    .kill_on_drop(true)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("p2p-download ends within a minute")
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The last line of stderr: `error: …` for a failed download.
fn error_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .rfind(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{}", text(out)))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_by_link_needs_no_api_key_and_ends_with_its_grant() {
    let work = tempfile::tempdir().unwrap();
    let t = tracker(work.path()).await;
    let url = t.base_url();
    // A private file (the default) and another one.
    let share = work.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let data = support::content(3_000_000, 11);
    let other = support::content(100_000, 13);
    std::fs::write(share.join("film.mkv"), &data).unwrap();
    std::fs::write(share.join("other.txt"), &other).unwrap();
    let (id, other_id) = (id_of(&data), id_of(&other));
    let _seeder = seeder(
        &url,
        &share,
        &id.to_string(),
        &["--dht", "off", "--no-relay"],
    )
    .await;
    support::procs::wait_announced(&url, &other_id.to_string()).await;

    // By link, no API key: fetched whole from the seeder the link names, admitted by the
    // tracker through the grant.
    let day = grant(&url, &id, 86_400).await;
    let good = link(&url, &id, &day).await;
    assert_eq!(good.peers.len(), 1, "the seeder is in the link");
    let text_form = good.to_string();
    println!(
        "a link of 1 tracker, 1 peer and a grant: {} characters",
        text_form.len()
    );
    let leech = work.path().join("leech");
    let out = download_by_link(&leech, &text_form).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(leech.join("film.mkv")).unwrap(), data);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not registering with the tracker"), "{err}");

    // The URL form, and a link with no peers (the tracker's are enough).
    let bare = ShareLink {
        peers: vec![],
        ..good.clone()
    };
    let url_form = format!("p2p://{}", &bare.to_string()["p2p1".len()..]);
    let again = work.path().join("again");
    let out = download_by_link(&again, &url_form).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(again.join("film.mkv")).unwrap(), data);

    // A grant for another id: the tracker says which, and nothing is fetched.
    let wrong = ShareLink {
        id: other_id,
        ..good.clone()
    };
    let elsewhere = work.path().join("elsewhere");
    let out = download_by_link(&elsewhere, &wrong.to_string()).await;
    assert!(!out.status.success(), "{}", text(&out));
    let line = error_line(&out);
    assert!(
        line.contains(&format!("the read grant is for {id}, not {other_id}")),
        "{line}"
    );
    assert!(!elsewhere.join("other.txt").exists());

    // A damaged link is refused before anything is asked.
    let mut damaged = text_form.clone().into_bytes();
    let at = damaged.len() / 2;
    damaged[at] = if damaged[at] == b'a' { b'b' } else { b'a' };
    let out = download_by_link(&elsewhere, std::str::from_utf8(&damaged).unwrap()).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the link is damaged"),
        "{}",
        text(&out)
    );

    // A short grant works until it expires, then fails saying so.
    let short = grant(&url, &id, 2).await;
    let expiring = link(&url, &id, &short).await;
    let expires = Instant::now() + Duration::from_secs(2);
    // Waits for the tracker to refuse it (its clock, not ours), looking every 100 ms.
    let http = reqwest::Client::new();
    loop {
        let status = http
            .get(format!("{url}/api/files/{id}"))
            .header("X-Read-Grant", short.to_hex())
            .send()
            .await
            .unwrap()
            .status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            Instant::now() < expires + Duration::from_secs(10),
            "the grant never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = work.path().join("late");
    let out = download_by_link(&late, &expiring.to_string()).await;
    assert!(!out.status.success(), "{}", text(&out));
    let line = error_line(&out);
    assert!(line.contains("the read grant expired"), "{line}");
    assert!(!late.join("film.mkv").exists());
    t.stop().await.unwrap();
}

/// The shell's `share` prints a link carrying the tracker, this peer and a read grant, and
/// `link <id>` prints one for a file shared earlier; the printed link downloads without a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_prints_a_link_that_downloads_without_a_key() {
    use std::io::Write;
    let work = tempfile::tempdir().unwrap();
    let t = tracker(work.path()).await;
    let url = t.base_url();
    let shell_data = work.path().join("shell");
    std::fs::create_dir_all(&shell_data).unwrap();
    let file = work.path().join("notes.txt");
    let data = support::content(200_000, 17);
    std::fs::write(&file, &data).unwrap();
    let (mut shell, mut stdin, rx) = piped_shell(
        &url,
        &shell_data,
        &["--dht", "off", "--no-relay", "--link-ttl", "3600"],
    );
    writeln!(stdin, "share {}", file.display()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut said = Vec::new();
    let next_link = |said: &mut Vec<String>| loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no link printed: {said:?}"));
        said.push(line.clone());
        if let Some(link) = line.trim().strip_prefix("link ") {
            return link.to_owned();
        }
    };
    let printed = next_link(&mut said);
    let link: ShareLink = printed.parse().unwrap();
    let id = id_of(&data);
    assert_eq!(link.id, id);
    assert_eq!(link.trackers, vec![url.clone()]);
    assert_eq!(link.peers.len(), 1, "{link:?}");
    let me: PeerId = said
        .iter()
        .find_map(|l| l.strip_prefix("p2p peer "))
        .and_then(|l| l.split_whitespace().next())
        .map(|p| p.parse().unwrap())
        .unwrap_or(link.peers[0].peer_id);
    assert_eq!(link.peers[0].peer_id, me);
    let g = link.grant.expect("a read grant");
    assert_eq!(g.file_id, id);
    let said_line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("what the link carries");
    assert!(
        said_line.contains("a read grant: anyone with the link may download this for 60 min"),
        "{said_line}"
    );
    println!("the shell's link: {} characters", printed.len());

    let leech = work.path().join("leech");
    let out = download_by_link(&leech, &printed).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(leech.join("notes.txt")).unwrap(), data);

    // `link <start of id>` prints a fresh one.
    writeln!(stdin, "link {}", &id.to_string()[..8]).unwrap();
    let again: ShareLink = next_link(&mut said).parse().unwrap();
    assert_eq!(again.id, id);
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let _ = shell.0.wait();
    t.stop().await.unwrap();
}

/// A link to a folder (a daemon's subfolder, shared as one collection) downloads its nested
/// tree byte for byte with no API key: the folder's grant gets the tracker's grants for its
/// files, by sending it the folder's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_link_downloads_the_whole_tree_without_an_api_key() {
    use p2p_proto::collection::{Collection, Entry};
    let work = tempfile::tempdir().unwrap();
    let t = tracker(work.path()).await;
    let url = t.base_url();
    let share = work.path().join("share");
    let album = share.join("album");
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a/b/c/deep.bin", support::content(900_000, 31)),
        ("a/b/copy.bin", support::content(900_000, 31)),
        ("ünïcødé/日本語.txt", b"konnichiwa".to_vec()),
        ("top.txt", support::content(50_000, 33)),
        ("zero", Vec::new()),
    ];
    let mut entries = vec![Entry::empty_dir("empty/inner")];
    std::fs::create_dir_all(album.join("empty/inner")).unwrap();
    for (path, data) in &files {
        let on_disk = album.join(path);
        std::fs::create_dir_all(on_disk.parent().unwrap()).unwrap();
        std::fs::write(&on_disk, data).unwrap();
        entries.push(Entry::file(*path, id_of(data), data.len() as u64, false));
    }
    let folder = Collection::new("album", entries).unwrap();
    let id = folder.id();
    let _seeder = seeder(
        &url,
        &share,
        &id.to_string(),
        &["--dht", "off", "--no-relay"],
    )
    .await;
    for (_, member, size, _) in folder.files() {
        if size > 0 {
            support::procs::wait_announced(&url, &member.to_string()).await;
        }
    }

    let day = grant(&url, &id, 86_400).await;
    let by_link = link(&url, &id, &day).await;
    let leech = work.path().join("leech");
    let out = download_by_link(&leech, &by_link.to_string()).await;
    assert!(out.status.success(), "{}", text(&out));
    let got = leech.join("album");
    for (path, data) in &files {
        assert_eq!(&std::fs::read(got.join(path)).unwrap(), data, "{path}");
    }
    assert!(got.join("empty/inner").is_dir());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not registering with the tracker"), "{err}");
    assert!(err.contains("read grants for the folder's files"), "{err}");
    t.stop().await.unwrap();
}

/// A seeder only the relay can reach (relay-only: the tracker lists no address to dial): a
/// receiver with no API key visits the relay of the link's tracker with the link's read grant
/// and downloads through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_receiver_reaches_a_relayed_seeder_through_the_link_s_relay() {
    let work = tempfile::tempdir().unwrap();
    let t = tracker(work.path()).await;
    let url = t.base_url();
    let share = work.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let data = support::content(2_000_000, 51);
    std::fs::write(share.join("relayed.bin"), &data).unwrap();
    let id = id_of(&data);
    let _seeder = seeder(
        &url,
        &share,
        &id.to_string(),
        &["--dht", "off", "--relay-only", "--no-punch"],
    )
    .await;
    // Attached to the tracker's relay. This tracker is in no relay fleet, so its peers name no
    // relay: they are reached at their tracker's. The link carries no peer: the tracker lists
    // the seeder (relay-only, so with no address to dial).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = api_json(&url, "/api/stats").await;
        if stats["relay_connections"].as_u64() >= Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the seeder never attached: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let by_link = ShareLink {
        peers: vec![],
        relays: vec![],
        ..link(&url, &id, &grant(&url, &id, 3600).await).await
    };
    let before = relayed_bytes(&url).await;
    let leech = work.path().join("leech");
    let out = download_by_link(&leech, &by_link.to_string()).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(leech.join("relayed.bin")).unwrap(), data);
    let carried = relayed_bytes(&url).await - before;
    assert!(
        carried >= data.len() as u64,
        "the relay carried {carried} bytes"
    );
    println!("by link through the relay, no API key: {carried} bytes relayed");
    t.stop().await.unwrap();
}
