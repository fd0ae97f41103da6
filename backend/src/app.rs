//! Assembles the tracker: state, routes (the REST API and the WebSocket endpoints, here and
//! nowhere else), middleware, background tasks, and the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::endpoint::BoxEndpoint;
use poem::{Endpoint, EndpointExt, IntoResponse, Route};
use poem_openapi::OpenApiService;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::auth::{Authenticator, JwtKeys, PeerAuth, ReadGrants, keys, password};
use crate::clock::Clock;
use crate::config::{Database, DbArgs, ServeArgs, UdpAddr};
use crate::events::EventBus;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimit;
use crate::relay::{RelayHub, RelayLimits};
use crate::state::AppState;
use crate::store::{PgStore, SqliteStore, Store, StoreError, UserRecord};
use crate::swarm::{Swarm, SwarmConfig};

/// Why the tracker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot bind the UDP rendezvous on {at}")]
    Rendezvous {
        at: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the admin user from P2P_ADMIN_USER")]
    AdminPassword(#[from] password::HashError),
    #[error("the password hashing task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Config(String),
}

/// Opens the configured database and runs its migrations. A PostgreSQL server that cannot be
/// reached yet is tried again for `--db-wait-secs` (see [`db_wait_schedule`]), so a tracker
/// started alongside its database waits for it instead of exiting.
pub async fn open_store(db: &DbArgs) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match db.database() {
        Database::Sqlite(path) => {
            tracing::info!(path = %path.display(), "using embedded SQLite");
            Arc::new(SqliteStore::open(&path, db.db_max_connections).await?)
        }
        Database::Postgres(url) => {
            tracing::info!("using PostgreSQL");
            let delays = db_wait_schedule(Duration::from_secs(db.db_wait_secs));
            Arc::new(
                retry_while_unreachable(delays, || PgStore::connect(&url, db.db_max_connections))
                    .await?,
            )
        }
    })
}

/// First wait between two attempts to reach the database at start-up.
const DB_WAIT_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
const DB_WAIT_MAX: Duration = Duration::from_secs(30);

/// The waits between attempts to reach the database: 1 s, doubling up to 30 s, until they add
/// up to `limit` (the last one shortened to fit). A zero limit gives none: one attempt.
pub fn db_wait_schedule(limit: Duration) -> impl Iterator<Item = Duration> {
    let mut left = limit;
    let mut next = DB_WAIT_FIRST;
    std::iter::from_fn(move || {
        if left.is_zero() {
            return None;
        }
        let wait = next.min(left);
        left -= wait;
        next = next.saturating_mul(2).min(DB_WAIT_MAX);
        Some(wait)
    })
}

/// Calls `connect` until it succeeds, fails with an error waiting cannot cure, or `delays` run
/// out; before each retry it logs the failure and waits the next delay.
pub async fn retry_while_unreachable<T, F, Fut>(
    delays: impl IntoIterator<Item = Duration>,
    mut connect: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut delays = delays.into_iter();
    let mut attempt = 1u32;
    loop {
        let error = match connect().await {
            Ok(connected) => return Ok(connected),
            Err(e) if unreachable_for_now(&e) => e,
            Err(e) => return Err(e),
        };
        let Some(wait) = delays.next() else {
            tracing::error!(attempt, error = %error, "database not reachable; giving up (--db-wait-secs)");
            return Err(error);
        };
        tracing::warn!(attempt, error = %error, retry_in_secs = wait.as_secs_f64(),
            "database not reachable yet; retrying");
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// Errors that go away once the database is up: it cannot be reached (refused, not resolved,
/// timed out), or it is still starting (PostgreSQL's 57P03 `cannot_connect_now`).
fn unreachable_for_now(error: &StoreError) -> bool {
    match error {
        StoreError::Unavailable(_) => true,
        StoreError::Database(sqlx::Error::Database(db)) => db.code().as_deref() == Some("57P03"),
        _ => false,
    }
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
    let hash = tokio::task::spawn_blocking(move || password::hash(&pass)).await??;
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
        ["", "api", "peers", "challenge"] => "/api/peers/challenge",
        ["", "api", "peers", _] => "/api/peers/{id}",
        ["", "api", "files"] => "/api/files",
        ["", "api", "keys"] => "/api/keys",
        ["", "api", "keys", _] => "/api/keys/{key_id}",
        ["", "api", "users"] => "/api/users",
        ["", "api", "users", _] => "/api/users/{username}",
        ["", "api", "files", "announce"] => "/api/files/announce",
        ["", "api", "files", _] => "/api/files/{hash}",
        ["", "api", "files", _, "peers"] => "/api/files/{hash}/peers",
        ["", "api", "files", _, "peers", _] => "/api/files/{hash}/peers/{peer_id}",
        ["", "api", "files", _, "grants"] => "/api/files/{hash}/grants",
        ["", "api", "files", _, "grants", "members"] => "/api/files/{hash}/grants/members",
        ["", "api", "relays"] => "/api/relays",
        ["", "api", "openapi.json"] => "/api/openapi.json",
        ["", "api", "docs", ..] => "/api/docs",
        ["", "dashboard", ..] => "/dashboard",
        [""] => "/",
        _ => "other",
    }
}

/// The API operations, all under one generated spec.
pub type Apis = (
    api::health::HealthApi,
    api::auth::AuthApi,
    api::peers::PeersApi,
    api::files::FilesApi,
    crate::ws::EventsApi,
    crate::ws::RelayApi,
    api::admin::AdminApi,
);

/// Builds the OpenAPI service with every operation.
pub fn service(state: Arc<AppState>) -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            api::health::HealthApi(state.clone()),
            api::auth::AuthApi(state.clone()),
            api::peers::PeersApi(state.clone()),
            api::files::FilesApi(state.clone()),
            crate::ws::EventsApi(state.clone()),
            crate::ws::RelayApi(state.clone()),
            api::admin::AdminApi(state),
        ),
        "p2p tracker",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Tracker of the p2p file-sharing system. Every /api route except /api/auth/login needs \
         an API key (X-API-Key, or Authorization: Bearer) or a JWT from /api/auth/login. \
         Requests that change a peer's entry also prove which peer they speak for: a \
         registration answers a challenge from /api/peers/challenge with a proof made with the \
         peer id's private key, and gets a peer token that heartbeats, announces, unannounces \
         and unregistrations send as X-Peer-Token (docs/protocol.md §8).",
    )
}

/// Builds the whole HTTP application.
pub fn routes(state: Arc<AppState>, serve: &ServeArgs) -> BoxEndpoint<'static> {
    let api = service(state.clone());
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    let metrics = state.metrics.clone();
    // Each of N replicas behind one balancer enforces its share (docs/deployment.md).
    let share = |v: u32| v.div_ceil(serve.rate_limit_replicas.max(1));
    let limiter = RateLimit::new(
        share(serve.rate_limit_rps),
        serve.rate_limit_burst.map(share),
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
            budget: crate::body_limit::Budget::new(
                serve
                    .guard
                    .max_body_bytes_in_flight
                    .max(serve.max_body_bytes),
            ),
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
    /// Where `/metrics` listens with `--metrics-addr` (else it is on `addr`).
    pub metrics_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    metrics_server: Option<JoinHandle<std::io::Result<()>>>,
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
        self.wait().await
    }

    /// Waits until the tracker stops by itself (its shutdown token was cancelled).
    pub async fn wait(self) -> std::io::Result<()> {
        let main = joined(self.server).await;
        // The metrics listener stops with the main one, whyever that stopped.
        self.shutdown.cancel();
        let metrics = match self.metrics_server {
            Some(server) => joined(server).await,
            None => Ok(()),
        };
        main.and(metrics)
    }
}

async fn joined(server: JoinHandle<std::io::Result<()>>) -> std::io::Result<()> {
    server
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
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
    // Derived from the same secret, so replicas sharing it accept each other's peer proofs.
    let peer_auth = Arc::new(PeerAuth::new(
        &secret,
        Duration::from_secs(serve.guard.peer_token_ttl_secs),
        clock.clone(),
    ));
    let grants = Arc::new(ReadGrants::new(&secret, clock.clone()));
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
            max_variants_per_file: serve.guard.max_manifest_variants,
            max_manifests_per_principal: serve.guard.max_manifests_per_principal,
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
    let fleet = Fleet::new(
        swarm.store().clone(),
        opts.clock.clone(),
        metrics.clone(),
        serve.relay_url.clone().filter(|u| !u.trim().is_empty()),
    )
    .map(Arc::new)
    .map_err(|e| StartError::Config(e.to_string()))?;
    let state = Arc::new(AppState {
        swarm,
        auth,
        peer_auth,
        grants,
        metrics,
        events,
        relay,
        fleet,
        trust_proxy: serve.trust_proxy.then_some(serve.guard.trusted_proxy_hops),
        metrics_token: serve.guard.metrics_token.clone().filter(|t| !t.is_empty()),
        pending_auth: Arc::new(tokio::sync::Semaphore::new(
            serve.guard.max_pending_auth as usize,
        )),
        member_grant_reads: Arc::new(tokio::sync::Semaphore::new(api::files::MEMBER_GRANT_READS)),
        shutdown: shutdown.clone(),
    });
    let (app, metrics_app) = split_metrics(routes(state.clone(), serve), serve.metrics_addr);
    let listener = crate::server::bind(serve.addr)?;
    let addr = listener.local_addr()?;
    let limits = crate::server::ConnectionLimits {
        max_connections: serve.guard.max_connections as usize,
        header_read_timeout: Duration::from_secs(serve.guard.header_timeout_secs),
    }
    .fitted_to_fd_limit();
    let grace = opts.shutdown_grace;
    let spawn_server = |listener, app| {
        tokio::spawn(crate::server::serve(
            listener,
            app,
            limits,
            shutdown.clone(),
            grace,
        ))
    };
    let (metrics_addr, metrics_server) = match metrics_app {
        Some((at, app)) => {
            let listener = crate::server::bind(at)?;
            let at = listener.local_addr()?;
            tracing::info!(addr = %at, "/metrics listening");
            (Some(at), Some(spawn_server(listener, app)))
        }
        None => (None, None),
    };
    if let Err(e) = start_rendezvous(serve.udp_addr, addr, &state.relay, &shutdown).await {
        shutdown.cancel(); // stops the metrics listener, if any
        return Err(e);
    }
    state.fleet.start(addr, shutdown.clone());
    let server = spawn_server(listener, app);
    Ok(RunningTracker {
        addr,
        metrics_addr,
        state,
        shutdown,
        server,
        metrics_server,
    })
}

/// Where the metrics listener binds, and what it serves.
type MetricsListener = (SocketAddr, BoxEndpoint<'static>);

/// With `--metrics-addr`: the application without `/metrics` (404) for the main listener, and
/// `/metrics` alone for the metrics listener (the same endpoint, so the same handler).
fn split_metrics(
    app: BoxEndpoint<'static>,
    metrics_addr: Option<SocketAddr>,
) -> (BoxEndpoint<'static>, Option<MetricsListener>) {
    let Some(at) = metrics_addr else {
        return (app, None);
    };
    let app = Arc::new(app);
    let not_found = poem::endpoint::make_sync(|_| poem::http::StatusCode::NOT_FOUND);
    let main = Route::new()
        .nest("/", app.clone())
        .at("/metrics", not_found)
        .boxed();
    let metrics = Route::new().at("/metrics", app).boxed();
    (main, Some((at, metrics)))
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
        Err(source) if configured.is_some() => {
            return Err(StartError::Rendezvous { at, source });
        }
        Err(e) => {
            tracing::warn!(%at, error = %e, "hole punching off: cannot bind the UDP rendezvous");
            return Ok(());
        }
    };
    let port = socket.local_addr().map(|a| a.port()).unwrap_or(at.port());
    relay.punch.enable(port);
    tracing::info!(addr = %SocketAddr::new(at.ip(), port), "hole-punch rendezvous listening (UDP)");
    tokio::spawn(crate::relay::punch::serve_udp(
        socket,
        relay.clone(),
        shutdown.clone(),
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::{StoreError, db_wait_schedule, retry_while_unreachable, route_label};

    #[test]
    fn db_wait_doubles_up_to_30_s_and_fits_the_limit() {
        let secs = |limit: u64| -> Vec<f64> {
            db_wait_schedule(Duration::from_secs(limit))
                .map(|d| d.as_secs_f64())
                .collect()
        };
        assert_eq!(secs(120), [1., 2., 4., 8., 16., 30., 30., 29.]);
        assert_eq!(secs(5), [1., 2., 2.]);
        assert!(secs(0).is_empty(), "0: a single attempt");
        let long: Vec<Duration> = db_wait_schedule(Duration::from_secs(3600)).collect();
        assert_eq!(long.iter().sum::<Duration>(), Duration::from_secs(3600));
        assert!(long.iter().all(|d| *d <= Duration::from_secs(30)));
    }

    fn unreachable() -> StoreError {
        StoreError::Unavailable(sqlx::Error::PoolTimedOut)
    }

    #[tokio::test]
    async fn start_up_retries_an_unreachable_database_then_connects() {
        let attempts = AtomicU32::new(0);
        let result = retry_while_unreachable([Duration::from_millis(1); 5], || {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move { if n < 2 { Err(unreachable()) } else { Ok(n) } }
        })
        .await;
        assert_eq!(result.unwrap(), 2);
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn start_up_gives_up_when_the_waits_are_spent() {
        let attempts = AtomicU32::new(0);
        let result: Result<(), _> = retry_while_unreachable([Duration::from_millis(1); 2], || {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err(unreachable()) }
        })
        .await;
        assert!(matches!(result, Err(StoreError::Unavailable(_))));
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            3,
            "the first try and two retries"
        );
    }

    #[tokio::test]
    async fn start_up_does_not_retry_what_waiting_cannot_cure() {
        let attempts = AtomicU32::new(0);
        let result: Result<(), _> = retry_while_unreachable([Duration::from_millis(1); 5], || {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err(StoreError::Corrupt("bad row".into())) }
        })
        .await;
        assert!(matches!(result, Err(StoreError::Corrupt(_))));
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn route_labels_fold_ids() {
        assert_eq!(
            route_label("/api/files/abc/peers"),
            "/api/files/{hash}/peers"
        );
        assert_eq!(route_label("/api/files/abc"), "/api/files/{hash}");
        assert_eq!(route_label("/api/files"), "/api/files");
        assert_eq!(
            route_label("/api/files/abc/grants"),
            "/api/files/{hash}/grants"
        );
        assert_eq!(
            route_label("/api/files/abc/grants/members"),
            "/api/files/{hash}/grants/members"
        );
        assert_eq!(route_label("/api/relays"), "/api/relays");
        assert_eq!(route_label("/api/peers/xyz"), "/api/peers/{id}");
        assert_eq!(route_label("/nope/x/y"), "other");
    }
}
