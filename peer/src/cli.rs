//! The `p2p-peer` shell and daemon, and `p2p-download`: parsing commands and presenting what
//! the peer ([`crate::node::Peer`]) does.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use p2p_proto::{FileId, Manifest};

use crate::config::{DownloadCli, PeerCli, PeerCommand, Target};
use crate::daemon::{self, DaemonConfig};
use crate::download::{CompletedBy, Contributions, DownloadError, DownloadReport};
use crate::folder::{self, FolderProgress, FolderReport};
use crate::net::PeerAddr;
use crate::net::relay::RelayStatus;
use crate::node::Peer;
use crate::shell::{self, ShellCommand};
use crate::storage::safe_file_name;
use crate::tracker_client::SessionStatus;

mod prompt;

pub use crate::logging::error_chain;

/// The body of the `p2p-peer` and `p2p-download` binaries: caps malloc's arenas
/// ([`crate::limit_malloc_arenas`]) before the runtime starts its threads, sets up logging,
/// runs `run` and turns its error into a message and a failure exit.
pub fn main<F>(run: impl FnOnce() -> F) -> std::process::ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    use std::process::ExitCode;
    crate::limit_malloc_arenas();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        crate::init_tracing();
        match run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", error_chain(e.as_ref()));
                ExitCode::FAILURE
            }
        }
    })
}

/// `n thing` or `n things`.
pub fn count(n: u64, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// `p2p-peer`: the shell, the daemon, or one download.
pub async fn run_peer(cli: PeerCli) -> anyhow::Result<()> {
    if let Some(PeerCommand::Download { target }) = cli.command {
        return run_download(DownloadCli {
            node: cli.node,
            target,
        })
        .await;
    }
    let peer = Peer::start(&cli.node, false).await?;
    if cli.daemon {
        let stop = peer.node.shutdown.child_token();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown_signal().await;
                stop.cancel();
            }
        });
        let config = DaemonConfig::new(&peer.node.share_dir, &peer.node.data_dir);
        let library = peer.node.library.clone();
        daemon::run(config, library, peer.announcer(), Arc::default(), stop).await?;
    } else {
        for (path, result) in peer.node.share_data_dir().await {
            match result {
                Ok(m) => tracing::info!(file = %path.display(), id = %m.id, "sharing"),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot share"),
            }
        }
        peer.announce_now();
        shell_loop(&peer).await?;
    }
    peer.stop().await;
    Ok(())
}

async fn shell_loop(peer: &Peer) -> anyhow::Result<()> {
    println!(
        "p2p peer {} listening on {}",
        peer.node.identity.peer_id(),
        peer.node.addr
    );
    println!("type help for commands");
    let state = peer.node.data_dir.join(".p2p");
    if let Err(e) = std::fs::create_dir_all(&state) {
        tracing::debug!(error = %e, "no folder for the shell history");
    }
    let mut input = prompt::Input::start(state.join("shell-history"));
    loop {
        let line = tokio::select! {
            _ = shutdown_signal() => break,
            line = input.next_line() => match line? {
                Some(l) => l,
                None => break,
            },
        };
        let command = match shell::parse(&line) {
            Ok(c) => c,
            Err(msg) => {
                println!("{msg}");
                continue;
            }
        };
        let result = match command {
            ShellCommand::Nothing => Ok(()),
            ShellCommand::Help => {
                println!("{}", shell::HELP);
                Ok(())
            }
            ShellCommand::Quit => break,
            ShellCommand::Share { path, public } if path.is_dir() => {
                share_folder(peer, &path, public).await
            }
            ShellCommand::Share { path, public } => share(peer, &path, public).await,
            ShellCommand::List => list(peer).await,
            ShellCommand::Download(target) => {
                fetch_target(peer, &target).await.map(|r| print_fetched(&r))
            }
            ShellCommand::Link(prefix) => {
                let files = peer.node.library.list();
                match shell::resolve_shared(
                    &prefix,
                    files.iter().map(|(m, _)| (m.id, m.name.as_str())),
                ) {
                    Ok((id, _)) => print_link(peer, &id).await,
                    Err(msg) => Err(anyhow::Error::msg(msg)),
                }
            }
            ShellCommand::Unshare(prefix) => unshare(peer, &prefix).await,
            ShellCommand::Status => {
                status(peer);
                Ok(())
            }
            ShellCommand::Peers => peers(peer).await,
            ShellCommand::Limit { upload, rate } => {
                let throttle = if upload {
                    &peer.node.upload
                } else {
                    &peer.node.download
                };
                throttle.set_rate(rate);
                status(peer);
                Ok(())
            }
        };
        if let Err(e) = result {
            println!("error: {}", error_chain(e.as_ref()));
        }
    }
    Ok(())
}

/// Shares the file at `path`; `public` makes it public (and keeps that choice), else it keeps
/// the node's default (private unless `--public`).
async fn share(peer: &Peer, path: &std::path::Path, public: bool) -> anyhow::Result<()> {
    let library = peer.node.library.clone();
    let m = library.share(path).await?;
    if public {
        let id = m.id;
        tokio::task::spawn_blocking(move || library.visibility.set_public(id, true)).await??;
    }
    peer.announce_now();
    let how = if peer.node.library.is_public(&m.id) {
        "public: anyone may fetch it, also through the DHT"
    } else {
        "private: served to peers the tracker admits to it"
    };
    println!(
        "sharing {} ({} bytes, {how})\n  id {}",
        m.name, m.size, m.id
    );
    print_link(peer, &m.id).await
}

/// Prints a share link for `id` (shared here) and what it carries; a link that cannot be made
/// is said, not an error of the share.
async fn print_link(peer: &Peer, id: &FileId) -> anyhow::Result<()> {
    let ttl = Duration::from_secs(peer.link_ttl());
    match peer.share_link(id, Some(ttl)).await {
        Ok(made) => {
            println!("  link {}", made.link);
            let peers = count(made.link.peers.len() as u64, "peer");
            let relays = count(made.link.relays.len() as u64, "relay");
            let trackers = count(made.link.trackers.len() as u64, "tracker");
            match (&made.grant, &made.no_grant) {
                (Some(g), _) => println!(
                    "  ({trackers}, {peers}, {relays}, and a read grant: anyone with the link may download this for {}, without an API key)",
                    duration_words(g.expires_in_secs)
                ),
                (None, why) => println!(
                    "  ({trackers}, {peers}, {relays}; no read grant{}: the receiver needs an API key)",
                    why.as_ref()
                        .map(|e| format!(" ({})", error_chain(e)))
                        .unwrap_or_default()
                ),
            }
        }
        Err(e) => println!("  no share link: {}", error_chain(&e)),
    }
    Ok(())
}

/// `90 s`, `15 min`, `24 h`, `30 days`.
fn duration_words(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// Shares the folder at `path` as one collection and prints its id; `public` makes the
/// collection and every file in it public (and keeps that choice).
async fn share_folder(peer: &Peer, path: &std::path::Path, public: bool) -> anyhow::Result<()> {
    let library = peer.node.library.clone();
    let shared = folder::share_folder(&library, &peer.node.data_dir, path).await?;
    if public {
        let ids: Vec<_> = std::iter::once(shared.id)
            .chain(shared.collection.files().map(|(_, id, _, _)| id))
            .collect();
        tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .try_for_each(|id| library.visibility.set_public(id, true))
        })
        .await??;
    }
    peer.announce_now();
    let c = &shared.collection;
    println!(
        "sharing folder {} ({}, {} bytes)\n  id {}",
        c.name(),
        count(c.files().count() as u64, "file"),
        c.total_size(),
        shared.id
    );
    for (path, why) in &shared.skipped {
        println!("  left out {}: {why}", path.display());
    }
    print_link(peer, &shared.id).await
}

/// How long `unshare` waits to see the tracker stop listing this peer for the file.
const WITHDRAW_WAIT: Duration = Duration::from_secs(5);

/// Stops serving the file whose id starts with `prefix`; the tracker session withdraws its
/// announce and the DHT announcer stops announcing it (both follow the library). A folder's
/// collection takes along its files that are neither shared on their own nor in another shared
/// folder ([`folder::unshare_folder`]).
async fn unshare(peer: &Peer, prefix: &str) -> anyhow::Result<()> {
    let files = peer.node.library.list();
    let (id, name) =
        shell::resolve_shared(prefix, files.iter().map(|(m, _)| (m.id, m.name.as_str())))
            .map_err(anyhow::Error::msg)?;
    let library = peer.node.library.clone();
    let folder = tokio::task::spawn_blocking(move || folder::unshare_folder(&library, &id)).await?;
    match folder {
        Some(folder) => {
            peer.announce_now();
            println!(
                "no longer sharing folder {} and {} of its files{}\n  id {id}",
                folder.name,
                folder.withdrawn.len(),
                match folder.kept.len() {
                    0 => String::new(),
                    n => format!(
                        " ({} still shared on their own or by another folder)",
                        count(n as u64, "file")
                    ),
                }
            );
        }
        None => {
            if peer.node.library.withdraw(&id).is_none() {
                anyhow::bail!("{name} is no longer shared");
            }
            peer.announce_now();
            println!("no longer sharing {name}\n  id {id}");
        }
    }
    if withdrawn(peer, &id).await {
        println!("  the tracker no longer lists this peer for it");
    } else {
        println!("  the tracker will be told once it answers");
    }
    Ok(())
}

/// Whether the tracker stops listing this peer for `id` within [`WITHDRAW_WAIT`].
async fn withdrawn(peer: &Peer, id: &FileId) -> bool {
    let me = peer.node.identity.peer_id();
    let deadline = tokio::time::Instant::now() + WITHDRAW_WAIT;
    loop {
        match peer.tracker.file_peers(id, None, 500).await {
            Ok(swarm) if !swarm.peers.iter().any(|p| p.peer_id == me) => return true,
            // The tracker forgot the file altogether (an admin removed it).
            Err(crate::tracker_client::TrackerError::NotFound(_)) => return true,
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn list(peer: &Peer) -> anyhow::Result<()> {
    let files = peer.tracker.list_files("", 0, 100).await?;
    if files.files.is_empty() {
        println!("no files known to the tracker");
    }
    for f in files.files {
        println!(
            "{}  {:>12}  {:>3} seeders  {}",
            f.id, f.size, f.seeders, f.name
        );
    }
    Ok(())
}

fn status(peer: &Peer) {
    let files = peer.node.library.list();
    let complete = files.iter().filter(|(_, h)| h.is_complete()).count();
    println!("peer id    {}", peer.node.identity.peer_id());
    println!("listening  {}", peer.node.addr);
    let tracker = match peer.session.status() {
        SessionStatus::Registered => "registered",
        // At start, or again after the tracker forgot this peer (retrying while unreachable).
        SessionStatus::Registering => "registering",
        SessionStatus::Retrying => "not reachable (retrying)",
        SessionStatus::Stopped => "stopped",
    };
    // Which tracker is in use: with several, the client moves on when one cannot be reached.
    let urls = peer.tracker.base_urls();
    let current = peer.tracker.current_index();
    let using = &urls[current];
    if urls.len() > 1 {
        println!(
            "tracker    {tracker}, {using} ({} of {})",
            current + 1,
            urls.len()
        );
    } else {
        println!("tracker    {tracker}, {using}");
    }
    match &peer.node.dht {
        Some(dht) => println!("dht        udp {}", dht.local_addr()),
        None => println!("dht        off"),
    }
    let relay = match &peer.node.relay {
        None => "off".to_owned(),
        Some(r) => match r.status() {
            RelayStatus::Attached => format!("attached to {}", r.url()),
            RelayStatus::Connecting => format!("connecting to {}", r.url()),
            RelayStatus::Disconnected(why) => format!("disconnected from {} ({why})", r.url()),
        },
    };
    let mode = if peer.node.connector.relay_only() {
        ", relay-only"
    } else {
        ""
    };
    println!("relay      {relay}{mode}");
    let paths = peer.node.connector.paths();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for path in paths.values() {
        let name = path.to_string();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    if !counts.is_empty() {
        let text: Vec<String> = counts.iter().map(|(n, c)| format!("{c} {n}")).collect();
        println!("peers      {}", text.join(", "));
    }
    println!(
        "files      {complete} complete, {} partial",
        files.len() - complete
    );
    let limit =
        |r: Option<u64>| r.map_or("unlimited".to_owned(), |r| format!("{} KiB/s", r / 1024));
    println!(
        "limits     up {}, down {}",
        limit(peer.node.upload.rate()),
        limit(peer.node.download.rate())
    );
}

async fn peers(peer: &Peer) -> anyhow::Result<()> {
    let list = peer.tracker.peers(true).await?;
    let paths = peer.node.connector.paths();
    for p in list.peers {
        let me = if p.peer_id == peer.node.identity.peer_id() {
            " (this peer)"
        } else {
            ""
        };
        let reach = if p.relay_only {
            "relay-only"
        } else {
            "reachable"
        };
        let how = match paths.get(&p.peer_id) {
            Some(path) => format!("{reach}, last connection {path}"),
            None => reach.to_owned(),
        };
        println!(
            "{}  {}:{}  {how}  {}{me}",
            p.peer_id,
            p.observed_ip,
            p.port,
            count(p.files, "file")
        );
    }
    Ok(())
}

/// A file or a folder in place.
enum Fetched {
    File(DownloadReport),
    Folder(FolderReport),
}

/// How long a download waits without a chunk before it tries the next manifest variant
/// announced for its file, when there is one (the last waits the whole `--stall-timeout`): a
/// variant's peers that never deliver are a squatter's, or gone.
const VARIANT_STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Downloads `id`, showing a progress bar with each peer's share; a folder's collection
/// recreates the folder. When the download of a file fails for its manifest, the next manifest
/// variant peers announced for the id is tried.
async fn fetch(peer: &Peer, id: &FileId) -> anyhow::Result<Fetched> {
    let found = peer.find(id).await?;
    if p2p_proto::collection::is_collection_name(&found.manifest.name) {
        return fetch_folder(peer, &found.manifest, &found.sources)
            .await
            .map(Fetched::Folder);
    }
    let (mut manifest, mut sources, mut fallbacks) =
        (found.manifest, found.sources, found.fallbacks);
    loop {
        let patience = (!fallbacks.is_empty()).then_some(VARIANT_STALL_TIMEOUT);
        match fetch_manifest(peer, &manifest, &sources, patience).await {
            Err(e) if e.variant_failed() => {
                let Some((next, more)) = peer.next_variant(id, &mut fallbacks).await else {
                    return Err(e.into());
                };
                tracing::warn!(
                    file = %id,
                    error = %error_chain(&e),
                    "the peers of this manifest did not deliver the file; trying another manifest announced for it"
                );
                (manifest, sources) = (next, more);
            }
            result => {
                let report = result?;
                // Downloaded as a file: unsharing a folder that has it too leaves it on offer.
                peer.node.library.mark_alone(*id);
                return Ok(Fetched::File(report));
            }
        }
    }
}

/// Downloads the folder whose collection `manifest` describes, with one progress bar over all
/// its files.
async fn fetch_folder(
    peer: &Peer,
    manifest: &Manifest,
    sources: &[PeerAddr],
) -> anyhow::Result<FolderReport> {
    let name = p2p_proto::collection::folder_name(&manifest.name).unwrap_or("folder");
    let name = safe_file_name(name, &manifest.id.to_string());
    let bar = progress_bar(0, &format!("{name}/"));
    let _logs_above = crate::logging::above_bar(&bar);
    let progress = Arc::new(FolderProgress::default());
    let contributions = Arc::new(Contributions::default());
    let shown = tokio::spawn({
        let (bar, progress, library) = (bar.clone(), progress.clone(), peer.node.library.clone());
        async move {
            loop {
                bar.set_length(progress.total());
                bar.set_position(progress.position(&library));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let result = folder::fetch_folder(peer, manifest, sources, &progress, contributions).await;
    shown.abort();
    match &result {
        Ok(_) => {
            bar.set_length(progress.total());
            bar.set_position(progress.total());
            bar.finish();
        }
        Err(_) => bar.abandon(),
    }
    Ok(result?)
}

/// A progress bar over `len` bytes, with `msg` before it.
fn progress_bar(len: u64, msg: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(msg.to_owned());
    bar
}

/// Downloads `manifest` from `sources` with a progress bar.
async fn fetch_manifest(
    peer: &Peer,
    manifest: &Manifest,
    sources: &[PeerAddr],
    stall_timeout: Option<Duration>,
) -> Result<DownloadReport, DownloadError> {
    let name = safe_file_name(&manifest.name, &manifest.id.to_string());
    let bar = progress_bar(manifest.size, &name);
    let contributions = Arc::new(Contributions::default());
    let _logs_above = crate::logging::above_bar(&bar);
    let progress = tokio::spawn(show_progress(
        bar.clone(),
        peer.node.library.clone(),
        manifest.clone(),
        name,
        contributions.clone(),
    ));
    let result = peer
        .download(manifest, sources, contributions, stall_timeout)
        .await;
    progress.abort();
    match &result {
        Ok(_) => bar.finish(),
        Err(_) => bar.abandon(),
    }
    result
}

/// Updates `bar` with the bytes of `manifest` the library has, and the message with the
/// largest contributors: "name · 3 peers: 5e1c…a0 61%, 9f00…12 39%".
async fn show_progress(
    bar: ProgressBar,
    library: Arc<crate::storage::Library>,
    manifest: Manifest,
    name: String,
    contributions: Arc<Contributions>,
) {
    loop {
        if let Some(entry) = library.get(&manifest.id) {
            let have = entry.have();
            let bytes: u64 = (0..have.len())
                .filter(|&i| have.get(i))
                .map(|i| u64::from(manifest.chunk_len(i)))
                .sum();
            bar.set_position(bytes);
        }
        let peers = contributions.snapshot();
        let total: u64 = peers.iter().map(|(_, b)| b).sum();
        if total > 0 {
            let shares: Vec<String> = peers
                .iter()
                .take(3)
                .map(|(p, b)| {
                    let id = p.to_string();
                    format!("{}…{} {}%", &id[..4], &id[60..], b * 100 / total)
                })
                .collect();
            bar.set_message(format!(
                "{name} · {} peers: {}",
                peers.len(),
                shares.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_fetched(fetched: &Fetched) {
    match fetched {
        Fetched::File(r) => print_report(r),
        Fetched::Folder(r) => println!(
            "saved folder {} ({}, {} empty folders, {} bytes; {} downloaded, {} from files here, {} from an earlier run; {:.1} s)",
            r.root.display(),
            count(r.files, "file"),
            r.empty_dirs,
            r.bytes,
            r.downloaded,
            r.linked,
            r.resumed,
            r.elapsed.as_secs_f64()
        ),
    }
}

fn print_report(r: &DownloadReport) {
    let by = match r.completed_by {
        None => String::new(),
        Some(CompletedBy::ThisProcess) => "completed by another download here, ".to_owned(),
        Some(CompletedBy::Process(Some(pid))) => {
            format!("completed by another download here, pid {pid}, ")
        }
        Some(CompletedBy::Process(None)) => "completed by another process, ".to_owned(),
    };
    println!(
        "saved {} ({by}{:.1} s)",
        r.path.display(),
        r.elapsed.as_secs_f64()
    );
    for p in &r.peers {
        let note = if p.banned { " banned (bad chunks)" } else { "" };
        let path = p.path.map(|p| format!(" ({p})")).unwrap_or_default();
        println!("  {}  {} bytes{path}{note}", p.peer_id, p.bytes);
    }
}

/// Downloads by id, or by a share link: its id is looked up at its trackers (with its read
/// grant) and its peers are sources too.
async fn fetch_target(peer: &Peer, target: &Target) -> anyhow::Result<Fetched> {
    let _following = match target {
        Target::Link(link) => Some(peer.follow(link)?),
        Target::Id(_) => None,
    };
    fetch(peer, &target.id()).await
}

/// `p2p-download <hash|link>`: exits 0 only when the file is complete and its SHA-256
/// verified.
pub async fn run_download(cli: DownloadCli) -> anyhow::Result<()> {
    let peer = Peer::start(&cli.node, true).await?;
    let result = fetch_target(&peer, &cli.target).await;
    peer.stop().await;
    print_fetched(&result?);
    Ok(())
}
