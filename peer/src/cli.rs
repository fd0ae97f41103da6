//! The `p2p-peer` shell and daemon, and `p2p-download`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use p2p_proto::api::{AnnounceRequest, PeerConnection, RegisterPeerRequest};
use p2p_proto::{FileId, Manifest};
use tokio::io::AsyncBufReadExt;

use crate::config::{DownloadCli, NodeArgs, PeerCli, PeerCommand};
use crate::daemon::{self, DaemonConfig};
use crate::discovery::{self, DhtFind, merge_sources};
use crate::download::{DownloadOptions, DownloadReport, Source, download};
use crate::net::relay::RelayStatus;
use crate::node::Node;
use crate::shell::{self, ShellCommand};
use crate::storage::safe_file_name;
use crate::tracker_client::{
    Announcements, Connections, SessionHandle, SessionTiming, TrackerClient, spawn_session,
};

/// A started node with its tracker session.
struct Peer {
    node: Node,
    tracker: TrackerClient,
    session: SessionHandle,
    pipeline: usize,
}

impl Peer {
    /// Tells the tracker and the DHT about new files and progress, without waiting.
    fn announce_now(&self) {
        self.session.announce_now();
        self.node.announce_now();
    }

    /// [`Peer::announce_now`] for the daemon to call.
    fn announcer(&self) -> daemon::Announce {
        let (session, dht) = (self.session.clone(), self.node.dht_announcer.clone());
        Arc::new(move || {
            session.announce_now();
            if let Some(dht) = &dht {
                dht.announce_now();
            }
        })
    }
}

async fn start(args: &NodeArgs, fallback_to_any_port: bool) -> anyhow::Result<Peer> {
    let node = match Node::start(args).await {
        Ok(node) => node,
        Err(e) if fallback_to_any_port && args.port != 0 => {
            tracing::info!(error = %e, "port busy; using any free port");
            let mut any = args.clone();
            any.port = 0;
            Node::start(&any).await?
        }
        Err(e) => return Err(e.into()),
    };
    let tracker = TrackerClient::new(&args.tracker, args.api_key.clone())?;
    let library = node.library.clone();
    let announcements: Announcements = {
        let peer_id = node.identity.peer_id();
        Arc::new(move || {
            library
                .list()
                .into_iter()
                .map(|(manifest, have)| AnnounceRequest {
                    peer_id,
                    have: (!have.is_complete()).then(|| have.to_base64()),
                    file: manifest,
                })
                .collect()
        })
    };
    let connections: Connections = {
        let connector = node.connector.clone();
        Arc::new(move || {
            connector
                .paths()
                .into_iter()
                .map(|(peer_id, path)| PeerConnection {
                    peer_id,
                    path: path.into(),
                })
                .collect()
        })
    };
    let register = RegisterPeerRequest {
        peer_id: node.identity.peer_id(),
        addresses: args.announce_addrs.clone(),
        port: node.addr.port(),
        udp_port: None,
        relay_only: args.relay_only,
        name: None,
        version: Some(env!("CARGO_PKG_VERSION").to_owned()),
    };
    let session = spawn_session(
        tracker.clone(),
        register,
        announcements,
        connections,
        SessionTiming::default(),
        node.shutdown.clone(),
    );
    Ok(Peer {
        node,
        tracker,
        session,
        pipeline: args.pipeline,
    })
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
    if let Some(PeerCommand::Download { hash }) = cli.command {
        return run_download(DownloadCli {
            node: cli.node,
            hash,
        })
        .await;
    }
    let peer = start(&cli.node, false).await?;
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
    peer.node.shutdown();
    // The session unregisters from the tracker (bounded: a dead tracker does not hold us up).
    let _ = tokio::time::timeout(Duration::from_secs(3), peer.session.stopped()).await;
    Ok(())
}

async fn shell_loop(peer: &Peer) -> anyhow::Result<()> {
    println!(
        "p2p peer {} listening on {}",
        peer.node.identity.peer_id(),
        peer.node.addr
    );
    println!("type help for commands");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        eprint!("p2p> ");
        let line = tokio::select! {
            _ = shutdown_signal() => break,
            line = lines.next_line() => match line? {
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
            ShellCommand::Share(path) => match peer.node.library.share(&path).await {
                Ok(m) => {
                    peer.announce_now();
                    println!("sharing {} ({} bytes)\n  id {}", m.name, m.size, m.id);
                    Ok(())
                }
                Err(e) => Err(anyhow::anyhow!(e)),
            },
            ShellCommand::List => list(peer).await,
            ShellCommand::Download(id) => fetch(peer, &id).await.map(|r| print_report(&r)),
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
            println!("error: {e:#}");
        }
    }
    Ok(())
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
    println!(
        "tracker    {}",
        if peer.session.is_registered() {
            "registered"
        } else {
            "not reachable (retrying)"
        }
    );
    match &peer.node.dht {
        Some(dht) => println!("dht        udp {}", dht.local_addr()),
        None => println!("dht        off"),
    }
    let relay = match &peer.node.relay {
        None => "off".to_owned(),
        Some(r) => match r.status() {
            RelayStatus::Attached => "attached".to_owned(),
            RelayStatus::Connecting => "connecting".to_owned(),
            RelayStatus::Disconnected(why) => format!("disconnected ({why})"),
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
            "{}  {}:{}  {how}  {} files{me}",
            p.peer_id, p.observed_ip, p.port, p.files
        );
    }
    Ok(())
}

/// Where a peer from the tracker can be dialled.
async fn addresses(addresses: &[String], port: u16) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for a in addresses {
        match a.parse::<IpAddr>() {
            Ok(ip) => out.push(SocketAddr::new(ip, port)),
            Err(_) => {
                if let Ok(found) = tokio::net::lookup_host((a.as_str(), port)).await {
                    out.extend(found);
                }
            }
        }
    }
    out
}

/// Peers from the tracker, as download sources.
async fn tracker_sources(peer: &Peer, id: &FileId) -> anyhow::Result<(Manifest, Vec<Source>)> {
    let details = peer
        .tracker
        .file(id)
        .await
        .context("asking the tracker for the file")?;
    let manifest: Manifest = details.manifest;
    if manifest.id != *id {
        bail!("the tracker answered with another file");
    }
    manifest
        .validate()
        .context("the tracker's manifest is inconsistent")?;
    let swarm = peer
        .tracker
        .file_peers(id, Some(&peer.node.identity.peer_id()), 50)
        .await
        .context("asking the tracker for peers")?;
    let mut sources = Vec::new();
    let relayed = peer.node.relay.is_some();
    for p in swarm.peers {
        // A relay-only peer has no address worth dialling; without our own relay, a peer
        // without addresses cannot be reached at all.
        let addrs = if p.relay_only {
            Vec::new()
        } else {
            addresses(&p.addresses, p.port).await
        };
        if !addrs.is_empty() || relayed {
            sources.push(Source {
                peer_id: p.peer_id,
                addrs,
            });
        }
    }
    Ok((manifest, sources))
}

/// How long a DHT lookup may add to a download the tracker already found peers for.
const DHT_GRACE: Duration = Duration::from_secs(3);

/// The manifest and the peers to fetch `id` from: the tracker's and the DHT's together (one
/// entry per peer). Either alone is enough; with no tracker the manifest comes from a peer.
async fn find_sources(peer: &Peer, id: &FileId) -> anyhow::Result<(Manifest, Vec<Source>)> {
    let lookup = peer.node.dht.clone().map(|dht| {
        let (identity, own, id) = (peer.node.identity.clone(), peer.node.addr, *id);
        tokio::spawn(async move { discovery::dht_sources(&dht, &identity, &id, own).await })
    });
    let from_tracker = tracker_sources(peer, id).await;
    let Some(lookup) = lookup else {
        return from_tracker;
    };
    let found = match &from_tracker {
        // The tracker has peers: the DHT only adds to them, and may not hold the download up.
        Ok((_, sources)) if !sources.is_empty() => {
            match tokio::time::timeout(DHT_GRACE, lookup).await {
                Ok(found) => found.unwrap_or_default(),
                Err(_) => DhtFind::default(),
            }
        }
        _ => lookup.await.unwrap_or_default(),
    };
    tracing::info!(
        addresses = found.addresses,
        usable = found.sources.len(),
        "DHT lookup"
    );
    let (manifest, mut sources) = match from_tracker {
        Ok(known) => known,
        Err(e) => match found.manifest.clone() {
            Some(m) => (m, Vec::new()),
            None => return Err(e.context("no peer offered the file through the DHT either")),
        },
    };
    // Peers offering other content under this id would be refused by the download anyway.
    if found
        .manifest
        .as_ref()
        .is_some_and(|m| m.same_content(&manifest))
    {
        merge_sources(&mut sources, found.sources);
    }
    Ok((manifest, sources))
}

async fn fetch(peer: &Peer, id: &FileId) -> anyhow::Result<DownloadReport> {
    let (manifest, sources) = find_sources(peer, id).await?;
    if sources.is_empty() {
        bail!("no online peer has {}", manifest.name);
    }
    let bar = ProgressBar::new(manifest.size);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(safe_file_name(&manifest.name, &manifest.id.to_string()));
    let contributions = Arc::new(crate::download::Contributions::default());
    let progress = {
        let contributions = contributions.clone();
        let name = safe_file_name(&manifest.name, &manifest.id.to_string());
        let (bar, library, id, m) = (
            bar.clone(),
            peer.node.library.clone(),
            *id,
            manifest.clone(),
        );
        let session = peer.session.clone();
        let dht_announcer = peer.node.dht_announcer.clone();
        tokio::spawn(async move {
            for tick in 1u64.. {
                // Announce partial progress every 5 s so other leechers can use our chunks (the
                // DHT announces the file once; it carries no progress).
                if tick % 25 == 0 {
                    session.announce_now();
                    if let Some(a) = &dht_announcer {
                        a.announce_now();
                    }
                }
                if let Some(entry) = library.get(&id) {
                    let have = entry.have();
                    let bytes: u64 = (0..have.len())
                        .filter(|&i| have.get(i))
                        .map(|i| u64::from(m.chunk_len(i)))
                        .sum();
                    bar.set_position(bytes);
                }
                // Per-peer contribution: "name · 3 peers: 5e1c…a0 61%, 9f00…12 39%".
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
        })
    };
    let opts = DownloadOptions {
        pipeline: peer.pipeline,
        throttle: peer.node.download.clone(),
        contributions,
        connector: peer.node.connector.clone(),
        ..DownloadOptions::default()
    };
    let result = download(
        &peer.node.identity,
        &manifest,
        &sources,
        &peer.node.data_dir,
        peer.node.library.clone(),
        opts,
    )
    .await;
    progress.abort();
    match &result {
        Ok(_) => bar.finish(),
        Err(_) => bar.abandon(),
    }
    peer.announce_now();
    Ok(result?)
}

fn print_report(r: &DownloadReport) {
    println!(
        "saved {} ({:.1} s)",
        r.path.display(),
        r.elapsed.as_secs_f64()
    );
    for p in &r.peers {
        let note = if p.banned { " banned (bad chunks)" } else { "" };
        let path = p.path.map(|p| format!(" ({p})")).unwrap_or_default();
        println!("  {}  {} bytes{path}{note}", p.peer_id, p.bytes);
    }
}

/// `p2p-download <hash>`: exits 0 only when the file is complete and its SHA-256 verified.
pub async fn run_download(cli: DownloadCli) -> anyhow::Result<()> {
    let peer = start(&cli.node, true).await?;
    let result = fetch(&peer, &cli.hash).await;
    peer.node.shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(3), peer.session.stopped()).await;
    let report = result?;
    print_report(&report);
    Ok(())
}
