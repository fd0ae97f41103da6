//! The peer's command line: the original design's flags, each with an environment variable.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};
use p2p_proto::FileId;
use p2p_proto::link::ShareLink;

/// The tracker a peer uses when not told otherwise.
pub const DEFAULT_TRACKER: &str = "http://localhost:8080";

/// A peer of the p2p file-sharing system: shares files and downloads them from other peers.
#[derive(Debug, Parser)]
#[command(name = "p2p-peer", version, about, long_about = None)]
pub struct PeerCli {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Run without the interactive shell, sharing everything in the data directory.
    #[arg(long, env = "P2P_DAEMON", default_value_t = false)]
    pub daemon: bool,
    #[command(subcommand)]
    pub command: Option<PeerCommand>,
}

#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Download one file or folder by its id or a share link and exit (0 only when it is
    /// complete and verified).
    Download { target: Target },
}

/// What to download: an id, or a share link (which says where to look and may carry a read
/// grant, so that no API key is needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Id(FileId),
    Link(Box<ShareLink>),
}

impl Target {
    /// The file or collection id.
    pub fn id(&self) -> FileId {
        match self {
            Self::Id(id) => *id,
            Self::Link(link) => link.id,
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if ShareLink::is_link(s) {
            return ShareLink::from_text(s)
                .map(|l| Self::Link(Box::new(l)))
                .map_err(|e| e.to_string());
        }
        s.trim().parse().map(Self::Id).map_err(|e| {
            format!("not a file id or share link: {e} (a share link starts with p2p1)")
        })
    }
}

/// `p2p-download <hash>`: the same node options, one download.
#[derive(Debug, Parser)]
#[command(
    name = "p2p-download",
    version,
    about = "Download one file or folder from the p2p swarm by its id or a share link"
)]
pub struct DownloadCli {
    #[command(flatten)]
    pub node: NodeArgs,
    /// The file's id: the SHA-256 of its content, 64 hex characters; or a folder's collection
    /// id, which recreates the folder in the data dir; or a share link (`p2p1…`, from the
    /// shell's `share`), which names its trackers and peers and may carry a read grant that
    /// stands in for the API key.
    #[arg(value_name = "HASH|LINK")]
    pub target: Target,
}

/// Options every peer binary shares.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Tracker URL. Several (the flag repeated, or comma-separated): the first that answers
    /// is used, and the next when it cannot be reached.
    #[arg(
        long,
        env = "P2P_TRACKER",
        default_value = DEFAULT_TRACKER,
        value_delimiter = ','
    )]
    pub tracker: Vec<String>,
    /// TCP port for the peer protocol (0: any free port).
    #[arg(long, env = "P2P_PORT", default_value_t = 6881)]
    pub port: u16,
    /// Data directory: shared files, downloads, partial data and the peer's key.
    #[arg(long, env = "P2P_DATA", default_value = "./data")]
    pub data: PathBuf,
    /// Folder whose files are shared at start (and watched by `--daemon`); the data dir when
    /// not given. Downloads still go to the data dir.
    #[arg(long, env = "P2P_SHARE_DIR")]
    pub share_dir: Option<PathBuf>,
    /// API key for the tracker. Without one the peer does not register (it can still download
    /// by a share link that carries a read grant).
    #[arg(long, env = "P2P_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// How long the read grant in the share links `share` prints lasts, in seconds (the
    /// tracker allows at most 30 days).
    #[arg(long, env = "P2P_LINK_TTL", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub link_ttl: u64,
    /// Address to listen on.
    #[arg(long, env = "P2P_LISTEN", default_value = "0.0.0.0")]
    pub listen: IpAddr,
    /// Addresses to tell the tracker (default: the address the tracker sees).
    #[arg(
        long = "announce-addr",
        env = "P2P_ANNOUNCE_ADDRS",
        value_delimiter = ','
    )]
    pub announce_addrs: Vec<String>,
    /// Upload limit, e.g. `10M` (bytes per second; K, M, G suffixes); unlimited by default.
    #[arg(long, env = "P2P_UPLOAD_LIMIT", value_parser = parse_rate)]
    pub upload_limit: Option<u64>,
    /// Download limit, e.g. `50M`; unlimited by default.
    #[arg(long, env = "P2P_DOWNLOAD_LIMIT", value_parser = parse_rate)]
    pub download_limit: Option<u64>,
    /// Most chunk requests in flight per connection to a peer: each gets about the peer's
    /// bandwidth-delay product (see `download::score`), up to this.
    #[arg(long, env = "P2P_PIPELINE", default_value_t = 32)]
    pub pipeline: usize,
    /// Seconds a download waits for a chunk, with no peer sending and none due another try,
    /// before it gives up and keeps its partial data (peers listed again are tried again
    /// meanwhile, with a pause that doubles from 1 s to 30 s); also the longest it waits for
    /// an unreachable tracker to answer its first lookup.
    #[arg(long, env = "P2P_STALL_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub stall_timeout: u64,
    /// Announce and find files on the BitTorrent Mainline DHT too (`--dht off` to disable).
    #[arg(
        long,
        env = "P2P_DHT",
        default_value = "on",
        value_name = "on|off",
        action = ArgAction::Set,
        value_parser = parse_on_off,
    )]
    pub dht: bool,
    /// UDP port of the DHT node (0: any free port; a busy port falls back to any).
    #[arg(long, env = "P2P_DHT_PORT", default_value_t = 6881)]
    pub dht_port: u16,
    /// DHT nodes to join through, `host:port`, comma-separated (default: the public routers
    /// of the Mainline DHT).
    #[arg(long, env = "P2P_DHT_BOOTSTRAP", value_delimiter = ',')]
    pub dht_bootstrap: Vec<String>,
    /// This peer cannot be reached directly: register as relay-only and reach every peer
    /// through the tracker's relay.
    #[arg(
        long,
        env = "P2P_RELAY_ONLY",
        default_value_t = false,
        conflicts_with = "no_relay"
    )]
    pub relay_only: bool,
    /// Do not attach to the tracker's relay (direct connections only).
    #[arg(long, env = "P2P_NO_RELAY", default_value_t = false)]
    pub no_relay: bool,
    /// Home relays to attach to, in order of preference (`http(s)://host:port`; the flag
    /// repeated, or comma-separated): the first that works, the next when it dies. Default:
    /// the tracker's relay fleet (`GET /api/relays`), else the tracker's own relay.
    #[arg(
        long = "relay",
        env = "P2P_RELAY",
        value_delimiter = ',',
        conflicts_with = "no_relay"
    )]
    pub relays: Vec<String>,
    /// Do not try UDP hole punching (it needs the relay, which coordinates it).
    #[arg(long, env = "P2P_NO_PUNCH", default_value_t = false)]
    pub no_punch: bool,
    /// Dial addresses the tracker or the DHT give in loopback, link-local, unspecified or
    /// multicast ranges (off: they are skipped; private LAN ranges are always dialled). For
    /// several peers on one machine.
    #[arg(long, env = "P2P_ALLOW_LOCAL_ADDRS", default_value_t = false)]
    pub allow_local_addrs: bool,
    /// Inbound connections served at once, in all.
    #[arg(long, env = "P2P_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
    /// Inbound connections served at once from one IPv4 address or IPv6 /64 (or one peer
    /// through the relay or QUIC).
    #[arg(long, env = "P2P_MAX_CONNECTIONS_PER_ADDR", default_value_t = 32)]
    pub max_connections_per_addr: usize,
    /// Make every file this peer shares public: served to anyone who asks and announced on the
    /// DHT. Without it files are private: served only to peers the tracker admitted to them
    /// (the shell's `share --public <path>` makes one file public).
    #[arg(long, env = "P2P_PUBLIC", default_value_t = false)]
    pub public: bool,
    /// Trust the admission key each tracker answers now, replacing the key pinned for it
    /// (`<data>/.p2p/trackers.json`). For once, after a tracker's operator changed its key:
    /// otherwise a changed key is refused, and only the pinned one admits downloaders.
    #[arg(long, env = "P2P_REPIN_TRACKER_KEYS", default_value_t = false)]
    pub repin_tracker_keys: bool,
    /// Seconds an inbound connection may stay silent before it is closed.
    #[arg(long, env = "P2P_IDLE_TIMEOUT", default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout: u64,
}

impl NodeArgs {
    /// The first tracker given: where the relay and the hole-punch rendezvous are.
    pub fn primary_tracker(&self) -> &str {
        self.tracker.first().map_or(DEFAULT_TRACKER, String::as_str)
    }

    /// The bounds on inbound work these flags set.
    pub fn inbound_limits(&self) -> crate::net::accept::InboundLimits {
        crate::net::accept::InboundLimits {
            max_connections: self.max_connections,
            max_per_addr: self.max_connections_per_addr,
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout),
            ..Default::default()
        }
    }
}

/// `on` or `off` (also `true`/`false`, `yes`/`no`, `1`/`0`, as environment variables often
/// say it).
pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

/// Parses `1048576`, `512K`, `10M`, `1G` (powers of 1024) into bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate: use e.g. 500K, 10M or 1G"))?;
    if n == 0 {
        return Err("a limit must be above zero (leave it out for no limit)".into());
    }
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1024"), Ok(1024));
        assert_eq!(parse_rate("512K"), Ok(512 * 1024));
        assert_eq!(parse_rate("10m"), Ok(10 << 20));
        assert_eq!(parse_rate("1G"), Ok(1 << 30));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("99999999999999G").is_err());
    }

    #[test]
    fn every_flag_has_an_env_var() {
        use clap::CommandFactory;
        for cmd in [PeerCli::command(), DownloadCli::command()] {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version" | "target") {
                    continue;
                }
                assert!(arg.get_env().is_some(), "--{id} has no env var");
            }
        }
    }

    #[test]
    fn original_flags_and_defaults() {
        let cli = PeerCli::try_parse_from(["p2p-peer"]).unwrap();
        assert_eq!(cli.node.tracker, vec!["http://localhost:8080"]);
        assert_eq!(cli.node.port, 6881);
        assert_eq!(cli.node.data, PathBuf::from("./data"));
        assert!(!cli.daemon);
        assert!(cli.node.dht);
        assert_eq!(cli.node.dht_port, 6881);
        assert!(cli.node.dht_bootstrap.is_empty());
        let cli = PeerCli::try_parse_from([
            "p2p-peer",
            "--tracker",
            "http://t:1",
            "--port",
            "7000",
            "--data",
            "/d",
            "--api-key",
            "k",
            "--daemon",
        ])
        .unwrap();
        assert_eq!((cli.node.port, cli.daemon), (7000, true));
        assert_eq!(cli.node.tracker, vec!["http://t:1"]);
        let cli = PeerCli::try_parse_from([
            "p2p-peer",
            "--dht",
            "off",
            "--dht-bootstrap",
            "127.0.0.1:6881,node.example:7000",
        ])
        .unwrap();
        assert!(!cli.node.dht);
        assert_eq!(
            cli.node.dht_bootstrap,
            vec!["127.0.0.1:6881", "node.example:7000"]
        );
        let hash = "ab".repeat(32);
        let d = DownloadCli::try_parse_from(["p2p-download", &hash]).unwrap();
        assert_eq!(d.target.id().to_string(), hash);
        let err = DownloadCli::try_parse_from(["p2p-download", "nothex"]).unwrap_err();
        assert!(
            err.to_string().contains("not a file id or share link"),
            "{err}"
        );
        let link = ShareLink {
            id: FileId([7; 32]),
            trackers: vec!["http://tracker.example:8080".into()],
            relays: vec![],
            peers: vec![],
            grant: None,
        };
        let d = DownloadCli::try_parse_from(["p2p-download", &link.to_string()]).unwrap();
        assert_eq!(d.target, Target::Link(Box::new(link.clone())));
        let mut damaged = link.to_string();
        let last = damaged.pop();
        damaged.push(if last == Some('a') { 'b' } else { 'a' });
        let err = DownloadCli::try_parse_from(["p2p-download", &damaged]).unwrap_err();
        assert!(err.to_string().contains("the link is damaged"), "{err}");
    }

    #[test]
    fn several_trackers_by_repeating_the_flag_or_with_commas() {
        let cli = PeerCli::try_parse_from([
            "p2p-peer",
            "--tracker",
            "http://a:1",
            "--tracker",
            "http://b:2,http://c:3",
        ])
        .unwrap();
        assert_eq!(
            cli.node.tracker,
            vec!["http://a:1", "http://b:2", "http://c:3"]
        );
        assert_eq!(cli.node.primary_tracker(), "http://a:1");
        let hash = "ab".repeat(32);
        let d = DownloadCli::try_parse_from(["p2p-download", "--tracker", "a,b", &hash]).unwrap();
        assert_eq!(d.node.tracker, vec!["a", "b"]);
    }

    #[test]
    fn dht_takes_on_or_off_and_help_says_so() {
        use clap::CommandFactory;
        for (arg, want) in [("on", true), ("off", false), ("OFF", false), ("true", true)] {
            let cli = PeerCli::try_parse_from(["p2p-peer", "--dht", arg]).unwrap();
            assert_eq!(cli.node.dht, want, "{arg}");
        }
        let err = PeerCli::try_parse_from(["p2p-peer", "--dht", "maybe"]).unwrap_err();
        assert!(err.to_string().contains("expected on or off"), "{err}");
        let help = PeerCli::command().render_long_help().to_string();
        let line = help
            .lines()
            .skip_while(|l| !l.contains("--dht <on|off>"))
            .take_while(|l| !l.trim_start().starts_with("--dht-port"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(line.contains("--dht <on|off>"), "{help}");
        assert!(!line.contains("possible values"), "{line}");
    }
}
