//! The tracker's REST API from the peer's side ([`TrackerClient`]), and the session
//! ([`spawn_session`]) that keeps the peer registered: heartbeats (with how the peer reaches
//! the others), re-registration when the tracker forgot the peer (restart on fresh data,
//! expiry, removal), and announces of what the peer has.

use std::collections::{HashMap, HashSet};
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::api::{
    AnnounceRequest, AnnounceResponse, ErrorBody, FileDetails, FileList, FilePeers,
    HeartbeatRequest, HeartbeatResponse, MAX_PEER_CONNECTIONS, PeerConnection, PeerInfo, PeerList,
    RegisterPeerRequest, RegisterPeerResponse,
};
use p2p_proto::{FileId, PeerId};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopping session waits to unregister; shutdown is not held up by a dead tracker.
const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(2);
/// Used when the tracker asks for a heartbeat interval of 0.
const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
/// Shortest wait between retries, whatever the timing says (no busy loops).
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// How the tracker says a peer is unknown (`swarm.rs`: "peer … is not registered; …").
const NOT_REGISTERED: &str = "not registered";

/// Why a tracker call failed. Variants from an answer carry the tracker's `message`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TrackerError {
    /// The base URL or API key cannot be used.
    #[error("invalid tracker client settings: {0}")]
    Config(String),
    /// No answer: connection refused or reset, or a timeout. Worth retrying later. The message
    /// names the causes too (reqwest's own text is only the outer layer), so a log line that
    /// prints it alone still says why.
    #[error("tracker unreachable: {}", with_causes(.0))]
    Unreachable(#[source] Arc<reqwest::Error>),
    /// A gateway saying the tracker (or its database) is down, with its status and message.
    /// Worth retrying later.
    #[error("tracker unreachable: {0}")]
    Unavailable(String),
    /// A heartbeat or announce for a peer the tracker does not know: register again.
    #[error("the tracker does not know this peer: {0}")]
    UnknownPeer(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// The request contradicts what the tracker stores (a file with as many differing
    /// manifests as it keeps, each with online announcers).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The caller has stored all the tracker's quota allows (403 `quota_exceeded`).
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// Missing or wrong API key.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Any other error status.
    #[error("tracker error {0}: {1}")]
    Server(u16, String),
    /// A success status with a body that is not what the API promises.
    #[error("unexpected answer from the tracker: {0}")]
    InvalidResponse(String),
}

impl TrackerError {
    /// Whether the tracker could not be reached at all (as opposed to answering with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::Unavailable(_))
    }

    /// Maps an error status. `peer_scoped`: a 404 may mean the peer itself is unknown.
    fn from_status(status: StatusCode, body: &[u8], peer_scoped: bool) -> Self {
        let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
        let code = parsed.as_ref().map(|b| b.error.clone()).unwrap_or_default();
        let message = parsed
            .map(|b| b.message)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
        match status {
            StatusCode::FORBIDDEN if code == "quota_exceeded" => Self::QuotaExceeded(message),
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => Self::BadRequest(message),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Self::Unauthorized(message),
            StatusCode::NOT_FOUND if peer_scoped && message.contains(NOT_REGISTERED) => {
                Self::UnknownPeer(message)
            }
            StatusCode::NOT_FOUND => Self::NotFound(message),
            StatusCode::CONFLICT => Self::Conflict(message),
            StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Self::Unavailable(format!("{status}: {message}")),
            s => Self::Server(s.as_u16(), message),
        }
    }

    fn transport(e: reqwest::Error) -> Self {
        if e.is_builder() {
            Self::Config(with_causes(&e))
        } else {
            Self::Unreachable(Arc::new(e))
        }
    }
}

/// A reqwest error with its causes: reqwest's own text is only the outer layer ("error
/// sending request"); the cause ("connection refused") is further down the chain.
fn with_causes(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A client of one tracker. Cheap to clone (one shared connection pool).
#[derive(Debug, Clone)]
pub struct TrackerClient {
    http: reqwest::Client,
    /// Without a trailing slash; may have a path prefix (a tracker behind a proxy).
    base: String,
}

impl TrackerClient {
    /// A client of the tracker at `base_url` (`http://host:port`, a missing scheme means
    /// `http`). The API key, if any, is sent as `X-API-Key` on every request.
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Self, TrackerError> {
        let base_url = base_url.trim();
        let with_scheme = if base_url.contains("://") {
            base_url.to_owned()
        } else {
            format!("http://{base_url}")
        };
        let url = Url::parse(&with_scheme)
            .map_err(|e| TrackerError::Config(format!("tracker URL {base_url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(TrackerError::Config(format!(
                "tracker URL {base_url:?}: expected http://host:port"
            )));
        }
        let mut headers = HeaderMap::new();
        if let Some(key) = api_key.filter(|k| !k.is_empty()) {
            let mut value = HeaderValue::from_str(&key).map_err(|_| {
                TrackerError::Config("the API key has characters a header cannot carry".into())
            })?;
            // Kept out of Debug output and logs.
            value.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-api-key"), value);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .default_headers(headers)
            .build()
            .map_err(|e| TrackerError::Config(e.to_string()))?;
        Ok(Self {
            http,
            base: url.as_str().trim_end_matches('/').to_owned(),
        })
    }

    /// The tracker's base URL, normalised.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Sends `req`; any non-success status becomes an error.
    async fn send(
        &self,
        req: RequestBuilder,
        peer_scoped: bool,
    ) -> Result<reqwest::Response, TrackerError> {
        let resp = req.send().await.map_err(TrackerError::transport)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        Err(TrackerError::from_status(status, &body, peer_scoped))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        peer_scoped: bool,
    ) -> Result<T, TrackerError> {
        let resp = self.send(req, peer_scoped).await?;
        let body = resp.bytes().await.map_err(TrackerError::transport)?;
        serde_json::from_slice(&body).map_err(|e| TrackerError::InvalidResponse(e.to_string()))
    }

    /// `POST /api/peers/register`: registers the peer, or updates its addresses.
    pub async fn register(
        &self,
        req: &RegisterPeerRequest,
    ) -> Result<RegisterPeerResponse, TrackerError> {
        let req = self.request(Method::POST, "/api/peers/register").json(req);
        self.call(req, false).await
    }

    /// `POST /api/peers/heartbeat`. [`TrackerError::UnknownPeer`]: register again.
    pub async fn heartbeat(
        &self,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, TrackerError> {
        let req = self.request(Method::POST, "/api/peers/heartbeat").json(req);
        self.call(req, true).await
    }

    /// `DELETE /api/peers/{id}`: the peer leaves and its announces are forgotten. A peer the
    /// tracker does not know counts as unregistered.
    pub async fn unregister(&self, id: &PeerId) -> Result<(), TrackerError> {
        let req = self.request(Method::DELETE, &format!("/api/peers/{id}"));
        match self.send(req, true).await {
            Ok(_) | Err(TrackerError::UnknownPeer(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `POST /api/files/announce`: this peer has the file, whole or in part.
    /// [`TrackerError::UnknownPeer`]: register again.
    pub async fn announce(&self, req: &AnnounceRequest) -> Result<AnnounceResponse, TrackerError> {
        let req = self.request(Method::POST, "/api/files/announce").json(req);
        self.call(req, true).await
    }

    /// `DELETE /api/files/{hash}/peers/{peer_id}`: this peer stops offering the file.
    /// [`TrackerError::NotFound`]: the peer had not announced the file (nothing to undo);
    /// [`TrackerError::UnknownPeer`]: the tracker does not know the peer (register again).
    pub async fn unannounce(&self, peer_id: &PeerId, file_id: &FileId) -> Result<(), TrackerError> {
        let req = self.request(
            Method::DELETE,
            &format!("/api/files/{file_id}/peers/{peer_id}"),
        );
        self.send(req, true).await.map(drop)
    }

    /// `GET /api/files`: known files, newest first; `search` is a name substring ("" for all).
    pub async fn list_files(
        &self,
        search: &str,
        offset: u64,
        limit: u64,
    ) -> Result<FileList, TrackerError> {
        let req = self.request(Method::GET, "/api/files").query(&[
            ("search", search.to_owned()),
            ("offset", offset.to_string()),
            ("limit", limit.to_string()),
        ]);
        self.call(req, false).await
    }

    /// `GET /api/files/{hash}`: the manifest and swarm figures.
    pub async fn file(&self, id: &FileId) -> Result<FileDetails, TrackerError> {
        self.call(
            self.request(Method::GET, &format!("/api/files/{id}")),
            false,
        )
        .await
    }

    /// `GET /api/files/{hash}/peers`: online peers with the file, leaving out `exclude`
    /// (usually this peer).
    pub async fn file_peers(
        &self,
        id: &FileId,
        exclude: Option<&PeerId>,
        limit: u64,
    ) -> Result<FilePeers, TrackerError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(p) = exclude {
            query.push(("exclude", p.to_string()));
        }
        let req = self
            .request(Method::GET, &format!("/api/files/{id}/peers"))
            .query(&query);
        self.call(req, false).await
    }

    /// `GET /api/files/{hash}?variant=N`: the file with the manifest of one of its variants.
    pub async fn file_variant(
        &self,
        id: &FileId,
        variant: u32,
    ) -> Result<FileDetails, TrackerError> {
        let req = self
            .request(Method::GET, &format!("/api/files/{id}"))
            .query(&[("variant", variant.to_string())]);
        self.call(req, false).await
    }

    /// `GET /api/files/{hash}/peers?variant=N`: online peers that announced one manifest
    /// variant of the file, leaving out `exclude`.
    pub async fn variant_peers(
        &self,
        id: &FileId,
        variant: u32,
        exclude: Option<&PeerId>,
        limit: u64,
    ) -> Result<FilePeers, TrackerError> {
        let mut query = vec![
            ("limit", limit.to_string()),
            ("variant", variant.to_string()),
        ];
        if let Some(p) = exclude {
            query.push(("exclude", p.to_string()));
        }
        let req = self
            .request(Method::GET, &format!("/api/files/{id}/peers"))
            .query(&query);
        self.call(req, false).await
    }

    /// `GET /api/peers`: registered peers (at most 500), most recently seen first.
    pub async fn peers(&self, online_only: bool) -> Result<PeerList, TrackerError> {
        let req = self.request(Method::GET, "/api/peers").query(&[
            ("online", online_only.to_string()),
            ("limit", "500".to_owned()),
        ]);
        self.call(req, false).await
    }

    /// `GET /api/peers/{id}`: one peer; [`TrackerError::NotFound`] if it is not registered.
    pub async fn peer(&self, id: &PeerId) -> Result<PeerInfo, TrackerError> {
        self.call(
            self.request(Method::GET, &format!("/api/peers/{id}")),
            false,
        )
        .await
    }
}

/// What the session announces: every file this peer has, whole or partial. Called on the
/// session's task at each announce round, so it should be quick (a snapshot under a lock).
pub type Announcements = Arc<dyn Fn() -> Vec<AnnounceRequest> + Send + Sync>;

/// How this peer last reached each other peer, reported with the heartbeats. Called on the
/// session's task before each heartbeat, so it should be quick.
pub type Connections = Arc<dyn Fn() -> Vec<PeerConnection> + Send + Sync>;

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionStatus {
    /// Registering, at start or again after the tracker forgot the peer; retrying while the
    /// tracker cannot be reached.
    Registering,
    /// The tracker answered the last registration, heartbeat or announce.
    Registered,
    /// Registered, but the last heartbeat or announce failed; retrying.
    Retrying,
    /// Shut down (after trying to unregister).
    Stopped,
}

/// Timing of a session. The defaults suit production; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct SessionTiming {
    /// Time between heartbeats; `None` follows the tracker's `heartbeat_interval_secs`.
    pub heartbeat: Option<Duration>,
    /// First wait after a failed call; doubles with each further failure.
    pub min_backoff: Duration,
    /// Longest wait between attempts while the tracker is unreachable.
    pub max_backoff: Duration,
}

impl Default for SessionTiming {
    fn default() -> Self {
        Self {
            heartbeat: None,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Control of a running session. Clones control the same session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    status: watch::Receiver<SessionStatus>,
    announce: Arc<Notify>,
}

impl SessionHandle {
    pub fn status(&self) -> SessionStatus {
        *self.status.borrow()
    }

    /// Whether the tracker answered our last registration, heartbeat or announce.
    pub fn is_registered(&self) -> bool {
        self.status() == SessionStatus::Registered
    }

    /// A receiver of status changes (e.g. `wait_for(|s| *s == SessionStatus::Registered)`).
    pub fn subscribe(&self) -> watch::Receiver<SessionStatus> {
        self.status.clone()
    }

    /// Announces at once what changed since the last announce (after sharing a file or
    /// finishing chunks). Calls while a round runs are coalesced into one more round.
    pub fn announce_now(&self) {
        self.announce.notify_one();
    }

    /// Waits until the session has stopped (after its shutdown token was cancelled and it
    /// tried to unregister).
    pub async fn stopped(&self) {
        let mut status = self.status.clone();
        // An error means the task is gone, which is stopped too.
        let _ = status.wait_for(|s| *s == SessionStatus::Stopped).await;
    }
}

/// Keeps the peer registered until `shutdown`: registers (retrying with capped exponential
/// backoff while the tracker is unreachable), announces `announcements`, heartbeats (carrying
/// `connections` whenever they changed), and starts over when the tracker no longer knows the
/// peer. On shutdown it unregisters.
///
/// Failures are logged once per outage (then at debug level) and recovery once.
pub fn spawn_session(
    client: TrackerClient,
    register: RegisterPeerRequest,
    announcements: Announcements,
    connections: Connections,
    timing: SessionTiming,
    shutdown: CancellationToken,
) -> SessionHandle {
    let (status_tx, status) = watch::channel(SessionStatus::Registering);
    let announce = Arc::new(Notify::new());
    let session = Session {
        client,
        register,
        announcements,
        connections,
        timing,
        shutdown,
        status: status_tx,
        announce: announce.clone(),
        failing: false,
    };
    tokio::spawn(session.run());
    SessionHandle { status, announce }
}

struct Session {
    client: TrackerClient,
    register: RegisterPeerRequest,
    announcements: Announcements,
    connections: Connections,
    timing: SessionTiming,
    shutdown: CancellationToken,
    status: watch::Sender<SessionStatus>,
    announce: Arc<Notify>,
    /// Whether the last call to the tracker failed (to log an outage once).
    failing: bool,
}

/// Why [`Session::serve`] returned.
enum Ended {
    Shutdown,
    /// The tracker no longer knows the peer.
    Forgotten,
}

/// What the tracker was last told of one file: its name (a renamed file is announced again
/// under its new one) and what this peer has of it.
#[derive(Debug, PartialEq, Eq)]
struct Announced {
    name: String,
    have: Option<String>,
}

/// How an announce round went.
enum Round {
    Done,
    /// The tracker had trouble; try the rest later.
    Retry,
    Forgotten,
}

impl Session {
    async fn run(mut self) {
        let mut registered_once = false;
        while let Some(interval) = self.register_until_ok().await {
            registered_once = true;
            match self.serve(interval).await {
                Ended::Shutdown => break,
                Ended::Forgotten => {
                    tracing::info!("the tracker no longer knows this peer; registering again");
                    self.set(SessionStatus::Registering);
                }
            }
        }
        if registered_once {
            let unregister = self.client.unregister(&self.register.peer_id);
            match tokio::time::timeout(UNREGISTER_TIMEOUT, unregister).await {
                Ok(Ok(())) => tracing::debug!("unregistered from the tracker"),
                Ok(Err(e)) => tracing::debug!(error = %e, "could not unregister"),
                Err(_) => tracing::debug!("unregistering timed out"),
            }
        }
        self.set(SessionStatus::Stopped);
    }

    /// Registers, retrying until it works. Returns the heartbeat interval, or `None` on
    /// shutdown.
    async fn register_until_ok(&mut self) -> Option<Duration> {
        let mut backoff = Backoff::new(&self.timing);
        loop {
            let result = self
                .or_shutdown(self.client.register(&self.register))
                .await?;
            match result {
                Ok(resp) => {
                    self.succeeded();
                    tracing::info!(peer = %resp.peer_id, observed_ip = %resp.observed_ip, "registered with the tracker");
                    self.set(SessionStatus::Registered);
                    return Some(self.interval(resp.heartbeat_interval_secs));
                }
                Err(e) => {
                    self.failed("cannot register with the tracker", &e);
                    self.or_shutdown(tokio::time::sleep(backoff.next())).await?;
                }
            }
        }
    }

    /// Heartbeats and announces until shutdown or until the tracker forgets the peer.
    async fn serve(&mut self, mut interval: Duration) -> Ended {
        // What the tracker has from us, so a round sends only changes.
        let mut announced: HashMap<FileId, Announced> = HashMap::new();
        // What the tracker has of our connections; registering cleared them there.
        let mut reported: Option<Vec<PeerConnection>> = None;
        let mut announce_at = Some(Instant::now());
        let mut announce_backoff = Backoff::new(&self.timing);
        let mut beat_at = Instant::now() + interval;
        let mut beat_backoff = Backoff::new(&self.timing);
        loop {
            // Deadlines, not a sleep per loop: announce_now() must not postpone heartbeats.
            let wake = announce_at.map_or(beat_at, |at| at.min(beat_at));
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ended::Shutdown,
                _ = self.announce.notified() => announce_at = Some(Instant::now()),
                _ = tokio::time::sleep_until(wake) => {}
            }
            if announce_at.is_some_and(|at| at <= Instant::now()) {
                let Some(round) = self.announce_changes(&mut announced).await else {
                    return Ended::Shutdown;
                };
                match round {
                    Round::Done => {
                        announce_at = None;
                        announce_backoff.reset();
                    }
                    Round::Retry => announce_at = Some(Instant::now() + announce_backoff.next()),
                    Round::Forgotten => return Ended::Forgotten,
                }
            }
            if beat_at <= Instant::now() {
                let connections = self.current_connections();
                let beat = HeartbeatRequest {
                    peer_id: self.register.peer_id,
                    uploaded: None,
                    downloaded: None,
                    // Only a change: the tracker keeps the list it was sent last.
                    connections: (reported.as_ref() != Some(&connections)).then_some(connections),
                };
                let Some(result) = self.or_shutdown(self.client.heartbeat(&beat)).await else {
                    return Ended::Shutdown;
                };
                match result {
                    Ok(resp) => {
                        if beat.connections.is_some() {
                            reported = beat.connections;
                        }
                        self.succeeded();
                        self.set(SessionStatus::Registered);
                        interval = self.interval(resp.next_heartbeat_secs);
                        beat_backoff.reset();
                        beat_at = Instant::now() + interval;
                    }
                    Err(TrackerError::UnknownPeer(_)) => return Ended::Forgotten,
                    Err(e) => {
                        self.failed("heartbeat failed", &e);
                        self.set(SessionStatus::Retrying);
                        beat_at = Instant::now() + beat_backoff.next().min(interval);
                    }
                }
            }
        }
    }

    /// Announces the files that are new or changed (in what the peer has of them, or in name)
    /// since `announced`; `None` on shutdown.
    async fn announce_changes(
        &mut self,
        announced: &mut HashMap<FileId, Announced>,
    ) -> Option<Round> {
        let files = (self.announcements)();
        // Files that left the library (a shared file deleted from the folder): the tracker stops
        // listing this peer for them.
        let current: HashSet<FileId> = files.iter().map(|f| f.file.id).collect();
        let gone: Vec<FileId> = announced
            .keys()
            .filter(|id| !current.contains(id))
            .copied()
            .collect();
        for id in gone {
            let peer_id = self.register.peer_id;
            match self
                .or_shutdown(self.client.unannounce(&peer_id, &id))
                .await?
            {
                // NotFound: the tracker had already forgotten the announce.
                Ok(()) | Err(TrackerError::NotFound(_)) => {
                    self.succeeded();
                    announced.remove(&id);
                }
                Err(TrackerError::UnknownPeer(_)) => return Some(Round::Forgotten),
                Err(e) => {
                    self.failed("withdrawing an announce failed", &e);
                    self.set(SessionStatus::Retrying);
                    return Some(Round::Retry);
                }
            }
        }
        for req in files {
            let now = Announced {
                name: req.file.name.clone(),
                have: req.have.clone(),
            };
            if announced.get(&req.file.id) == Some(&now) {
                continue;
            }
            match self.or_shutdown(self.client.announce(&req)).await? {
                Ok(_) => {
                    self.succeeded();
                    self.set(SessionStatus::Registered);
                    announced.insert(req.file.id, now);
                }
                Err(TrackerError::UnknownPeer(_)) => return Some(Round::Forgotten),
                Err(
                    e @ (TrackerError::Conflict(_)
                    | TrackerError::QuotaExceeded(_)
                    | TrackerError::BadRequest(_)
                    | TrackerError::NotFound(_)),
                ) => {
                    // The tracker will refuse this again: wait until the file changes.
                    tracing::warn!(file = %req.file.id, name = %req.file.name, error = %e, "the tracker refused the announce");
                    announced.insert(req.file.id, now);
                }
                Err(e) => {
                    self.failed("announce failed", &e);
                    self.set(SessionStatus::Retrying);
                    return Some(Round::Retry);
                }
            }
        }
        Some(Round::Done)
    }

    /// The connections to report: one per peer, in peer order (so an unchanged set compares
    /// equal), at most as many as the tracker accepts.
    fn current_connections(&self) -> Vec<PeerConnection> {
        let mut connections = (self.connections)();
        connections.sort_unstable_by_key(|c| c.peer_id);
        connections.dedup_by_key(|c| c.peer_id);
        connections.truncate(MAX_PEER_CONNECTIONS);
        connections
    }

    /// Runs `f` unless shutdown comes first (then `None`).
    async fn or_shutdown<F: Future>(&self, f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => None,
            out = f => Some(out),
        }
    }

    fn interval(&self, tracker_secs: u32) -> Duration {
        match self.timing.heartbeat {
            Some(every) => every.max(MIN_BACKOFF),
            None => Duration::from_secs(u64::from(tracker_secs)).max(MIN_HEARTBEAT),
        }
    }

    fn set(&self, status: SessionStatus) {
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    fn failed(&mut self, what: &str, e: &TrackerError) {
        if self.failing {
            tracing::debug!(error = %e, "{what}; retrying");
        } else {
            tracing::warn!(error = %e, "{what}; retrying quietly");
            self.failing = true;
        }
    }

    fn succeeded(&mut self) {
        if self.failing {
            tracing::info!("the tracker answers again");
            self.failing = false;
        }
    }
}

/// Capped exponential backoff with jitter.
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(timing: &SessionTiming) -> Self {
        let min = timing.min_backoff.max(MIN_BACKOFF);
        Self {
            next: min,
            min,
            max: timing.max_backoff.max(min),
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// The wait before the next attempt: the current step less up to half of it at random
    /// (so peers do not return in lockstep after a tracker restart); the step then doubles.
    fn next(&mut self) -> Duration {
        let step = self.next;
        self.next = step.saturating_mul(2).min(self.max);
        let random = getrandom::u32().unwrap_or(0);
        step.saturating_sub(step.mul_f64(f64::from(random) / f64::from(u32::MAX) / 2.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let timing = SessionTiming {
            heartbeat: None,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        let mut b = Backoff::new(&timing);
        let steps: Vec<_> = (0..5).map(|_| b.next()).collect();
        for (got, step) in steps.iter().zip([100, 200, 350, 350, 350]) {
            let step = Duration::from_millis(step);
            assert!(
                *got <= step && *got >= step / 2,
                "{got:?} for step {step:?}"
            );
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_never_zero() {
        let mut b = Backoff::new(&SessionTiming {
            heartbeat: None,
            min_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        });
        assert!(b.next() >= MIN_BACKOFF / 2);
    }

    #[test]
    fn statuses_map_to_errors_with_the_tracker_message() {
        let body =
            br#"{"error":"not_found","message":"peer ab is not registered; register again"}"#;
        assert!(matches!(
            TrackerError::from_status(StatusCode::NOT_FOUND, body, true),
            TrackerError::UnknownPeer(m) if m == "peer ab is not registered; register again"
        ));
        assert!(matches!(
            TrackerError::from_status(StatusCode::NOT_FOUND, body, false),
            TrackerError::NotFound(_)
        ));
        assert!(matches!(
            TrackerError::from_status(StatusCode::INTERNAL_SERVER_ERROR, b"oops", false),
            TrackerError::Server(500, m) if m == "Internal Server Error"
        ));
        assert!(
            TrackerError::from_status(StatusCode::SERVICE_UNAVAILABLE, b"", false).is_unreachable()
        );
    }

    #[test]
    fn base_urls() {
        let c = TrackerClient::new("http://t:8080/", None).unwrap();
        assert_eq!(c.base_url(), "http://t:8080");
        let c = TrackerClient::new("localhost:8080", None).unwrap();
        assert_eq!(c.base_url(), "http://localhost:8080");
        let c = TrackerClient::new("http://t/prefix/", None).unwrap();
        assert_eq!(c.base_url(), "http://t/prefix");
        assert!(matches!(
            TrackerClient::new("ftp://t", None),
            Err(TrackerError::Config(_))
        ));
        assert!(matches!(
            TrackerClient::new("http://t", Some("bad\nkey".into())),
            Err(TrackerError::Config(_))
        ));
    }

    #[test]
    fn debug_hides_the_api_key() {
        let c = TrackerClient::new("http://t", Some("secret-key-123".into())).unwrap();
        assert!(!format!("{c:?}").contains("secret-key-123"));
    }
}
