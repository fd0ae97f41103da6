//! Assembles the tracker: state, routes, middleware, background tasks, and the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::endpoint::BoxEndpoint;
use poem::{Endpoint, EndpointExt, IntoResponse, Route};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, JwtKeys, keys, password};
use crate::clock::Clock;
use crate::config::{Database, DbArgs, ServeArgs, UdpAddr};
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimit;
use crate::store::{PgStore, SqliteStore, Store, StoreError, UserRecord};
use crate::swarm::{Swarm, SwarmConfig};
use crate::ws::{RelayHub, RelayLimits};

/// Why the tracker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
}

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    pub swarm: Arc<Swarm>,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    pub events: EventBus,
    /// The relay hub behind `/relay`.
    pub relay: Arc<RelayHub>,
    /// Trusted reverse proxies in front of the tracker (`--trust-proxy`), if any.
    pub trust_proxy: Option<u8>,
    /// What `/metrics` asks for (`--metrics-token`), if anything.
    pub metrics_token: Option<String>,
    /// WebSockets still waiting for credentials or a key proof (one permit each).
    pub pending_auth: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the tracker shuts down; long-lived connections watch it.
    pub shutdown: CancellationToken,
}

/// Opens the configured database and runs its migrations.
pub async fn open_store(db: &DbArgs) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match db.database() {
        Database::Sqlite(path) => {
            tracing::info!(path = %path.display(), "using embedded SQLite");
            Arc::new(SqliteStore::open(&path, db.db_max_connections).await?)
        }
        Database::Postgres(url) => {
            tracing::info!("using PostgreSQL");
            Arc::new(PgStore::connect(&url, db.db_max_connections).await?)
        }
    })
}

/// The JWT secret: `JWT_SECRET`, else one generated once and kept in the database (shared by
/// every tracker on that database, and kept across restarts).
async fn jwt_secret(store: &dyn Store, configured: Option<&str>) -> Result<Vec<u8>, StartError> {
    if let Some(secret) = configured.filter(|s| !s.is_empty()) {
        if secret.len() < 32 {
            tracing::warn!("JWT_SECRET is shorter than 32 bytes; use a longer random secret");
        }
        return Ok(secret.as_bytes().to_vec());
    }
    let fresh = keys::random_secret().map_err(|e| StartError::Config(e.to_string()))?;
    Ok(store
        .setting_or_init("jwt_secret", &fresh)
        .await?
        .into_bytes())
}

/// Creates the admin user from `P2P_ADMIN_USER` / `P2P_ADMIN_PASSWORD` if it does not exist.
async fn ensure_admin(store: &dyn Store, serve: &ServeArgs, now_ms: u64) -> Result<(), StartError> {
    let (Some(user), Some(pass)) = (&serve.admin_user, &serve.admin_password) else {
        if serve.admin_user.is_some() {
            return Err(StartError::Config(
                "P2P_ADMIN_USER is set but P2P_ADMIN_PASSWORD is not".into(),
            ));
        }
        return Ok(());
    };
    if store.get_user(user).await?.is_some() {
        return Ok(());
    }
    let pass = pass.clone();
    let hash = tokio::task::spawn_blocking(move || password::hash(&pass))
        .await
        .map_err(|e| StartError::Config(e.to_string()))?
        .map_err(|e| StartError::Config(e.to_string()))?;
    let record = UserRecord {
        username: user.clone(),
        password_hash: hash,
        role: "admin".into(),
        created_at_ms: now_ms,
    };
    if store.create_user_if_absent(&record).await? {
        tracing::info!(%user, "created admin user from P2P_ADMIN_USER");
    }
    Ok(())
}

/// A metric label for a request path, with ids folded so the label set stays small.
fn route_label(path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        ["", "health"] => "/health",
        ["", "metrics"] => "/metrics",
        ["", "ws"] => "/ws",
        ["", "relay"] => "/relay",
        ["", "api", "auth", "login"] => "/api/auth/login",
        ["", "api", "stats"] => "/api/stats",
        ["", "api", "peers"] => "/api/peers",
        ["", "api", "peers", "register"] => "/api/peers/register",
        ["", "api", "peers", "heartbeat"] => "/api/peers/heartbeat",
        ["", "api", "peers", _] => "/api/peers/{id}",
        ["", "api", "files"] => "/api/files",
        ["", "api", "files", "announce"] => "/api/files/announce",
        ["", "api", "files", _] => "/api/files/{hash}",
        ["", "api", "files", _, "peers"] => "/api/files/{hash}/peers",
        ["", "api", "files", _, "peers", _] => "/api/files/{hash}/peers/{peer_id}",
        ["", "api", "openapi.json"] => "/api/openapi.json",
        ["", "api", "docs", ..] => "/api/docs",
        ["", "dashboard", ..] => "/dashboard",
        [""] => "/",
        _ => "other",
    }
}

/// Builds the whole HTTP application.
pub fn routes(state: Arc<AppState>, serve: &ServeArgs) -> BoxEndpoint<'static> {
    let api = crate::api::service(state.clone());
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    let metrics = state.metrics.clone();
    let limiter = RateLimit::new(
        serve.rate_limit_rps,
        serve.rate_limit_burst,
        serve.trust_proxy.then_some(serve.guard.trusted_proxy_hops),
        metrics.clone(),
    );
    if let Some(limiter) = &limiter {
        let limiter = limiter.clone();
        let shutdown = state.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => limiter.prune(),
                }
            }
        });
    }
    let assets = crate::dashboard::Assets::locate(serve.dashboard_dir.clone());
    match &assets {
        crate::dashboard::Assets::Missing { .. } => tracing::warn!("{}", assets.describe()),
        _ => tracing::info!("{}", assets.describe()),
    }
    let dashboard = crate::dashboard::DashboardEndpoint { assets };
    // The API is nested at the root (its paths are absolute); the routes added after it take
    // precedence for their own paths.
    Route::new()
        .nest("/", api)
        .at("/dashboard", dashboard.clone())
        .at("/dashboard/", dashboard.clone())
        .at("/dashboard/*path", dashboard)
        .at("/api/openapi.json", spec)
        .nest("/api/docs", docs)
        .with_if(limiter.is_some(), limiter.unwrap_or_else(unlimited))
        .with(crate::body_limit::BodyLimit {
            max: serve.max_body_bytes,
            timeout: Duration::from_secs(serve.guard.body_timeout_secs),
        })
        .data(state)
        .catch_all_error(crate::error::render_any_error)
        .around(move |ep, req| {
            let metrics = metrics.clone();
            async move {
                let started = Instant::now();
                let route = route_label(req.uri().path());
                let method = req.method().to_string();
                let resp = ep.call(req).await?.into_response();
                let status = resp.status().as_u16();
                metrics.observe_request(route, &method, status, started.elapsed().as_secs_f64());
                Ok(resp)
            }
        })
        .boxed()
}

/// A never-used placeholder for `with_if(false, …)`.
fn unlimited() -> RateLimit {
    // Only constructed when the limit is off, and then `with_if` does not apply it.
    RateLimit::new(u32::MAX, None, None, Arc::new(Metrics::new()))
        .unwrap_or_else(|| unreachable!("u32::MAX is non-zero"))
}

/// Options the command line does not carry (tests shorten them).
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub clock: Arc<dyn Clock>,
    /// How often silent peers are expired.
    pub sweep_interval: Duration,
    /// How long in-flight requests get on shutdown.
    pub shutdown_grace: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(crate::clock::SystemClock),
            sweep_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// A tracker that is listening.
#[derive(Debug)]
pub struct RunningTracker {
    /// Where it listens (the real port when bound to port 0).
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
}

impl RunningTracker {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Asks the tracker to stop (what SIGTERM does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn stop(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.server
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Waits until the tracker stops by itself (its shutdown token was cancelled).
    pub async fn wait(self) -> std::io::Result<()> {
        self.server
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// Starts a tracker on `store`: admin bootstrap, JWT secret, background tasks, listener.
pub async fn start(
    store: Arc<dyn Store>,
    serve: &ServeArgs,
    opts: RuntimeOptions,
) -> Result<RunningTracker, StartError> {
    let shutdown = CancellationToken::new();
    let clock = opts.clock.clone();
    ensure_admin(store.as_ref(), serve, clock.now_ms()).await?;
    let secret = jwt_secret(store.as_ref(), serve.jwt_secret.as_deref()).await?;
    let metrics = Arc::new(Metrics::new());
    let mut events = EventBus::new(clock.clone());
    if let Some(fanout) = store.event_fanout() {
        // Trackers sharing the database share their events too (PostgreSQL LISTEN/NOTIFY).
        events = events.with_fanout(fanout, shutdown.clone()).await?;
    }
    let swarm = Swarm::start(
        store.clone(),
        events.clone(),
        clock,
        metrics.clone(),
        SwarmConfig {
            heartbeat_interval_secs: serve.heartbeat_interval_secs,
            peer_ttl_secs: serve.peer_ttl_secs(),
            sweep_interval: opts.sweep_interval,
            swarm_cache_ttl: Duration::from_millis(serve.swarm_cache_ms),
            max_file_bytes: serve.guard.max_file_bytes,
        },
        shutdown.clone(),
    );
    let auth = Arc::new(
        Authenticator::new(
            store,
            &serve.api_keys,
            JwtKeys::new(&secret, serve.jwt_ttl_secs),
        )
        .with_login_limits(
            serve.guard.login_concurrency as usize,
            serve.guard.login_failures_per_minute,
        ),
    );
    let relay = Arc::new(RelayHub::new(
        RelayLimits::from(&serve.relay),
        metrics.clone(),
        events.clone(),
        shutdown.clone(),
    ));
    let state = Arc::new(AppState {
        swarm,
        auth,
        metrics,
        events,
        relay,
        trust_proxy: serve.trust_proxy.then_some(serve.guard.trusted_proxy_hops),
        metrics_token: serve.guard.metrics_token.clone().filter(|t| !t.is_empty()),
        pending_auth: Arc::new(tokio::sync::Semaphore::new(
            serve.guard.max_pending_auth as usize,
        )),
        shutdown: shutdown.clone(),
    });
    let app = routes(state.clone(), serve);
    let listener = tokio::net::TcpListener::bind(serve.addr).await?;
    let addr = listener.local_addr()?;
    start_rendezvous(serve.udp_addr, addr, &state.relay, &shutdown).await?;
    let limits = crate::server::ConnectionLimits {
        max_connections: serve.guard.max_connections as usize,
        header_read_timeout: Duration::from_secs(serve.guard.header_timeout_secs),
    }
    .fitted_to_fd_limit();
    let server = tokio::spawn(crate::server::serve(
        listener,
        app,
        limits,
        shutdown.clone(),
        opts.shutdown_grace,
    ));
    Ok(RunningTracker {
        addr,
        state,
        shutdown,
        server,
    })
}

/// Binds the hole-punch rendezvous (by default on the HTTP address and port, over UDP). Only an
/// address set explicitly must bind; the default one failing turns hole punching off with a
/// warning, and peers fall back to the relay.
async fn start_rendezvous(
    configured: Option<UdpAddr>,
    http: SocketAddr,
    relay: &Arc<RelayHub>,
    shutdown: &CancellationToken,
) -> Result<(), StartError> {
    let at = match configured {
        Some(UdpAddr::Off) => return Ok(()),
        Some(UdpAddr::At(a)) => a,
        None => http,
    };
    let socket = match tokio::net::UdpSocket::bind(at).await {
        Ok(s) => s,
        Err(e) if configured.is_some() => {
            return Err(StartError::Config(format!(
                "cannot bind the UDP rendezvous on {at}: {e}"
            )));
        }
        Err(e) => {
            tracing::warn!(%at, error = %e, "hole punching off: cannot bind the UDP rendezvous");
            return Ok(());
        }
    };
    let port = socket.local_addr().map(|a| a.port()).unwrap_or(at.port());
    relay.punch.enable(port);
    tracing::info!(addr = %SocketAddr::new(at.ip(), port), "hole-punch rendezvous listening (UDP)");
    tokio::spawn(crate::ws::punch::serve_udp(
        socket,
        relay.clone(),
        shutdown.clone(),
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::route_label;

    #[test]
    fn route_labels_fold_ids() {
        assert_eq!(
            route_label("/api/files/abc/peers"),
            "/api/files/{hash}/peers"
        );
        assert_eq!(route_label("/api/files/abc"), "/api/files/{hash}");
        assert_eq!(route_label("/api/files"), "/api/files");
        assert_eq!(route_label("/api/peers/xyz"), "/api/peers/{id}");
        assert_eq!(route_label("/nope/x/y"), "other");
    }
}
