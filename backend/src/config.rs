//! The tracker's configuration: every flag has an environment variable.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The tracker of the p2p file-sharing system.
#[derive(Debug, Parser)]
#[command(name = "p2p-tracker", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the tracker (the default).
    Serve,
    /// Manage dashboard users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user, or set a new password for an existing one. The password is read from
    /// P2P_USER_PASSWORD, else from the first line of standard input.
    Add {
        name: String,
        /// Role of the user.
        #[arg(long, default_value = "admin")]
        role: String,
    },
    /// List users.
    List,
    /// Delete a user.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key and print it once; only its hash is stored.
    Create {
        /// A label for the key.
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// List API keys (ids and labels, never the keys).
    List,
    /// Revoke an API key by id.
    Revoke { id: String },
}

/// Where the tracker keeps its data. Used by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Directory for the embedded SQLite database and other state.
    #[arg(
        long,
        env = "P2P_DATA_DIR",
        default_value = "./tracker-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// PostgreSQL URL; when set, PostgreSQL is used instead of the embedded SQLite.
    #[arg(long, env = "POSTGRES_URL", hide_env_values = true, global = true)]
    pub postgres_url: Option<String>,
    /// Alternative to --postgres-url (a postgres:// URL; a sqlite: URL selects that file).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// Most database connections held open.
    #[arg(
        long,
        env = "P2P_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_max_connections: u32,
    /// Seconds to keep retrying a PostgreSQL server that cannot be reached yet at start-up
    /// (e.g. it starts alongside the tracker): 1 s, then twice as long each time, at most 30 s
    /// apart; 0 tries once.
    #[arg(long, env = "P2P_DB_WAIT_SECS", default_value_t = 120, global = true)]
    pub db_wait_secs: u64,
}

/// The database the tracker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl DbArgs {
    /// `POSTGRES_URL` wins, then `DATABASE_URL`, then SQLite in the data dir.
    pub fn database(&self) -> Database {
        let url = self.postgres_url.as_ref().or(self.database_url.as_ref());
        match url.map(|u| u.trim()).filter(|u| !u.is_empty()) {
            Some(u) if u.starts_with("sqlite:") => {
                let path = u
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                Database::Sqlite(PathBuf::from(path))
            }
            Some(u) => Database::Postgres(u.to_owned()),
            None => Database::Sqlite(self.data_dir.join("tracker.db")),
        }
    }
}

/// Options of the server itself.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Listen address: `HOST:PORT`, or Go-style `:PORT` for all interfaces.
    #[arg(long, env = "P2P_ADDR", default_value = ":8080", value_parser = parse_listen_addr)]
    pub addr: SocketAddr,
    /// API keys accepted besides those created with `p2p-tracker key create`, comma-separated.
    #[arg(long, env = "API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<String>,
    /// Secret for signing JWTs. When unset, one is generated once and kept in the database.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Lifetime of issued JWTs, in seconds.
    #[arg(long, env = "P2P_JWT_TTL_SECS", default_value_t = 12 * 3600)]
    pub jwt_ttl_secs: u64,
    /// Requests per second allowed per client IP; 0 turns rate limiting off. With
    /// --rate-limit-replicas N, the budget of all N replicas together.
    #[arg(long, env = "RATE_LIMIT_RPS", default_value_t = 100)]
    pub rate_limit_rps: u32,
    /// Tracker replicas that share the rate limit behind one load balancer that spreads each
    /// request over them: each enforces 1/N of the rate and burst (rounded up), so a client
    /// gets the configured budget in all (docs/deployment.md, "One budget across replicas").
    #[arg(long, env = "P2P_RATE_LIMIT_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub rate_limit_replicas: u32,
    /// Burst allowance per client IP (default: twice the rate).
    #[arg(long, env = "RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// Take the client IP from X-Forwarded-For / X-Real-IP (behind trusted reverse proxies; see
    /// --trusted-proxy-hops).
    #[arg(long, env = "P2P_TRUST_PROXY", default_value_t = false)]
    pub trust_proxy: bool,
    /// Seconds between peer heartbeats.
    #[arg(long, env = "P2P_HEARTBEAT_INTERVAL_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub heartbeat_interval_secs: u32,
    /// Heartbeats a peer may miss before it is marked offline.
    #[arg(long, env = "P2P_HEARTBEAT_MISSES", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub heartbeat_misses: u32,
    /// Create this dashboard user at start-up if it does not exist (with --admin-password).
    #[arg(long, env = "P2P_ADMIN_USER")]
    pub admin_user: Option<String>,
    /// Password for --admin-user.
    #[arg(long, env = "P2P_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// How long, in milliseconds, a file's swarm is answered from memory before the database
    /// is asked again (0: always ask). Local changes take effect at once regardless.
    #[arg(long, env = "P2P_SWARM_CACHE_MS", default_value_t = 1000)]
    pub swarm_cache_ms: u64,
    /// Serve the dashboard from this folder (the output of scripts/build-web.sh) instead of the
    /// files embedded at build time.
    #[arg(long, env = "P2P_DASHBOARD_DIR")]
    pub dashboard_dir: Option<PathBuf>,
    /// Largest body of an announce (a manifest) or of a folder collection sent for member
    /// grants, in bytes. Other requests' bodies are capped at 256 KiB, a login's at 16 KiB.
    #[arg(long, env = "P2P_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// UDP address of the hole-punch rendezvous (`HOST:PORT` or `:PORT`), where peers learn
    /// their public UDP address; `off` turns hole punching off. Default: the HTTP address and
    /// port, over UDP.
    #[arg(long, env = "P2P_UDP_ADDR", value_parser = parse_udp_addr)]
    pub udp_addr: Option<UdpAddr>,
    /// Serve `/metrics` on this address (`HOST:PORT` or `:PORT`) instead of the main one, so a
    /// proxy or Ingress in front of the main port does not publish it. Default: the main port.
    #[arg(long, env = "P2P_METRICS_ADDR", value_parser = parse_listen_addr)]
    pub metrics_addr: Option<SocketAddr>,
    /// Publish this tracker's relay hub to peers as part of the relay fleet, at this URL
    /// (`http(s)://host:port` as peers reach it; port 0: the port the tracker listens on).
    /// Peers choose a home relay from the live ones (`GET /api/relays`). Unset: this tracker's
    /// `/relay` still serves the peers that use it as their tracker, but is not listed.
    #[arg(long, env = "P2P_RELAY_URL")]
    pub relay_url: Option<String>,
    #[command(flatten)]
    pub relay: RelayArgs,
    #[command(flatten)]
    pub guard: GuardArgs,
}

/// How the tracker guards itself against its clients: bounds on connections, time, sockets
/// waiting to authenticate and password checks; which proxies it trusts; who may scrape.
#[derive(Debug, Clone, Args)]
pub struct GuardArgs {
    /// Most client connections open at once (lowered to fit under the open-file limit).
    #[arg(long, env = "P2P_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Seconds a client has to send a request's headers; an idle keep-alive connection is
    /// closed after as long.
    #[arg(long, env = "P2P_HEADER_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request body.
    #[arg(long, env = "P2P_BODY_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_secs: u64,
    /// Bytes of request bodies held at once over all requests, past the first MiB of each
    /// (which any request may send): a body that would go over it is refused with 429 while
    /// it streams, so many large ones (a manifest is parsed at two to three times its size)
    /// cannot add up. Raised to --max-body-bytes if lower.
    #[arg(long, env = "P2P_MAX_BODY_BYTES_IN_FLIGHT", default_value_t = 256 << 20)]
    pub max_body_bytes_in_flight: usize,
    /// WebSockets (`/ws`, `/relay`) that may wait for credentials or a key proof at once;
    /// more are refused with 429.
    #[arg(long, env = "P2P_MAX_PENDING_AUTH", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_auth: u32,
    /// Password checks (argon2id, 19 MiB each) running at once; more wait their turn.
    #[arg(long, env = "P2P_LOGIN_CONCURRENCY", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_concurrency: u32,
    /// Failed logins per account per minute; past it, logins to that account get 429 until
    /// the minute is over.
    #[arg(long, env = "P2P_LOGIN_FAILURES_PER_MINUTE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_failures_per_minute: u32,
    /// With --trust-proxy: how many reverse proxies in front of the tracker append to
    /// X-Forwarded-For. The client address is that many entries from the right; entries further
    /// left were written by the client and are ignored.
    #[arg(long, env = "P2P_TRUSTED_PROXY_HOPS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..))]
    pub trusted_proxy_hops: u8,
    /// Largest file a manifest may describe, in bytes (manifests always use the protocol's
    /// 256 KiB chunks, so this also bounds what one announce stores: 64 bytes per chunk).
    #[arg(long, env = "P2P_MAX_FILE_BYTES", default_value_t = 64 << 30)]
    pub max_file_bytes: u64,
    /// Most different manifests kept for one file id (each is a "variant" with its own
    /// announcers). A new one past it replaces variants no online peer announces; if every
    /// variant has online announcers, the announce gets 409.
    #[arg(long, env = "P2P_MAX_MANIFEST_VARIANTS", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_manifest_variants: u32,
    /// Most manifests (variants, over all files) one principal (an API key, or a user) may have
    /// stored; announcing a new one past it gets 403 `quota_exceeded`. Announcing a manifest
    /// that is already stored costs nothing.
    #[arg(long, env = "P2P_MAX_MANIFESTS_PER_PRINCIPAL", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_manifests_per_principal: u64,
    /// When set, `/metrics` needs `Authorization: Bearer <this token>`.
    #[arg(long, env = "P2P_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Lifetime of a peer token (issued at registration for a proof of the peer id's private
    /// key), in seconds; heartbeats renew it when half of it is left.
    #[arg(long, env = "P2P_PEER_TOKEN_TTL_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub peer_token_ttl_secs: u64,
}

impl Default for GuardArgs {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout_secs: 10,
            body_timeout_secs: 60,
            max_body_bytes_in_flight: 256 << 20,
            max_pending_auth: 256,
            login_concurrency: 2,
            login_failures_per_minute: 10,
            trusted_proxy_hops: 1,
            max_file_bytes: 64 << 30,
            max_manifest_variants: 4,
            max_manifests_per_principal: 100_000,
            metrics_token: None,
            peer_token_ttl_secs: 3600,
        }
    }
}

/// Where the hole-punch rendezvous listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpAddr {
    Off,
    At(SocketAddr),
}

/// `off`, or a listen address as for `--addr`.
pub fn parse_udp_addr(s: &str) -> Result<UdpAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        Ok(UdpAddr::Off)
    } else {
        parse_listen_addr(s).map(UdpAddr::At)
    }
}

/// Limits of the relay hub (`/relay`).
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Bytes one relay tunnel may carry (both directions) before it is closed; 0: no limit.
    #[arg(long, env = "P2P_RELAY_MAX_TUNNEL_BYTES", default_value_t = 16 << 30)]
    pub relay_max_tunnel_bytes: u64,
    /// Bytes the relay carries in total before it refuses more; 0: no limit.
    #[arg(long, env = "P2P_RELAY_MAX_TOTAL_BYTES", default_value_t = 0)]
    pub relay_max_total_bytes: u64,
    /// Seconds a tunnel may carry nothing before it is closed.
    #[arg(long, env = "P2P_RELAY_IDLE_SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub relay_idle_secs: u64,
    /// Tunnels one relay connection may have open at once (opened or accepted).
    #[arg(long, env = "P2P_RELAY_MAX_TUNNELS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub relay_max_tunnels: u32,
    /// Peer ids one credential (API key or user) may have attached to the relay at once.
    /// Deployments where many peers share one API key need this as high as their peer count.
    #[arg(long, env = "P2P_RELAY_MAX_PEERS_PER_KEY", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub relay_max_peers_per_key: u32,
    /// Bytes queued towards one relay connection before the hub drops it as too slow a reader
    /// (its own tunnels close; no other peer waits for it).
    #[arg(long, env = "P2P_RELAY_MAX_QUEUED_BYTES", default_value_t = 32 << 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub relay_max_queued_bytes: u64,
}

impl Default for RelayArgs {
    fn default() -> Self {
        Self {
            relay_max_tunnel_bytes: 16 << 30,
            relay_max_total_bytes: 0,
            relay_idle_secs: 120,
            relay_max_tunnels: 64,
            relay_max_peers_per_key: 64,
            relay_max_queued_bytes: 32 << 20,
        }
    }
}

impl ServeArgs {
    /// The serve options the command line gives for these flags (the defaults for the rest);
    /// for tests and benchmarks that start a tracker in process.
    pub fn from_flags(flags: &[&str]) -> Result<Self, clap::Error> {
        let argv = std::iter::once("p2p-tracker").chain(flags.iter().copied());
        Ok(Cli::try_parse_from(argv)?.serve)
    }

    /// Seconds after the last heartbeat at which a peer is offline.
    pub fn peer_ttl_secs(&self) -> u32 {
        self.heartbeat_interval_secs
            .saturating_mul(self.heartbeat_misses)
    }
}

/// Parses `HOST:PORT`, `:PORT` (all interfaces) or a bare `PORT`.
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("bad port in {s:?}"))?;
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not an address: use HOST:PORT or :PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_addr(":8080").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("8080").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("127.0.0.1:0").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("[::1]:9").unwrap(),
            "[::1]:9".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("localhost:7").unwrap(),
            "127.0.0.1:7".parse().unwrap()
        );
        assert!(parse_listen_addr("nope").is_err());
        assert!(parse_listen_addr(":99999").is_err());
    }

    #[test]
    fn database_selection() {
        let mut db = DbArgs {
            data_dir: "/d".into(),
            postgres_url: None,
            database_url: None,
            db_max_connections: 4,
            db_wait_secs: 0,
        };
        assert_eq!(db.database(), Database::Sqlite("/d/tracker.db".into()));
        db.database_url = Some("sqlite:///tmp/x.db".into());
        assert_eq!(db.database(), Database::Sqlite("/tmp/x.db".into()));
        db.database_url = Some("postgres://a/b".into());
        assert_eq!(db.database(), Database::Postgres("postgres://a/b".into()));
        db.postgres_url = Some("postgres://c/d".into());
        assert_eq!(db.database(), Database::Postgres("postgres://c/d".into()));
    }

    #[test]
    fn every_flag_has_an_env_var() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        for arg in cmd.get_arguments() {
            if arg.get_id() == "help" || arg.get_id() == "version" {
                continue;
            }
            assert!(arg.get_env().is_some(), "--{} has no env var", arg.get_id());
        }
    }
}
