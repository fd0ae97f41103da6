//! The tracker's REST API from the peer's side, and the session that keeps the peer
//! registered: heartbeats, re-registration after a tracker restart, re-announcing files.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use p2p_proto::api::{
    AnnounceRequest, AnnounceResponse, ErrorBody, FileDetails, FileList, FilePeers,
    HeartbeatRequest, HeartbeatResponse, RegisterPeerRequest, RegisterPeerResponse,
};
use p2p_proto::{FileId, PeerId};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Why a tracker call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrackerError {
    #[error("tracker unreachable: {0}")]
    Unreachable(String),
    #[error("the tracker does not know this peer: {0}")]
    UnknownPeer(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("refused by the tracker: {0}")]
    Conflict(String),
    #[error("the tracker refused our credentials: {0}")]
    Unauthorized(String),
    #[error("the tracker rejected the request: {0}")]
    BadRequest(String),
    #[error("tracker error {status}: {message}")]
    Server { status: u16, message: String },
}

impl TrackerError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }
}

/// A client of one tracker.
#[derive(Debug, Clone)]
pub struct TrackerClient {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl TrackerClient {
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Self, TrackerError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| TrackerError::Unreachable(e.to_string()))?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            api_key,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.api_key {
            req = req.header("X-API-Key", key);
        }
        req
    }

    async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, TrackerError> {
        let resp = req
            .send()
            .await
            .map_err(|e| TrackerError::Unreachable(e.to_string()))?;
        let status = resp.status();
        if status.is_success() {
            return resp.json().await.map_err(|e| TrackerError::Server {
                status: status.as_u16(),
                message: e.to_string(),
            });
        }
        let message = match resp.json::<ErrorBody>().await {
            Ok(body) => body.message,
            Err(_) => status.to_string(),
        };
        Err(match status {
            StatusCode::NOT_FOUND if message.contains("not registered") => {
                TrackerError::UnknownPeer(message)
            }
            StatusCode::NOT_FOUND => TrackerError::NotFound(message),
            StatusCode::CONFLICT => TrackerError::Conflict(message),
            StatusCode::UNAUTHORIZED => TrackerError::Unauthorized(message),
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => {
                TrackerError::BadRequest(message)
            }
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                TrackerError::Unreachable(format!("{s}: {message}"))
            }
            s => TrackerError::Server {
                status: s.as_u16(),
                message,
            },
        })
    }

    pub async fn register(
        &self,
        req: &RegisterPeerRequest,
    ) -> Result<RegisterPeerResponse, TrackerError> {
        self.call(
            self.request(reqwest::Method::POST, "/api/peers/register")
                .json(req),
        )
        .await
    }

    pub async fn heartbeat(
        &self,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, TrackerError> {
        self.call(
            self.request(reqwest::Method::POST, "/api/peers/heartbeat")
                .json(req),
        )
        .await
    }

    pub async fn unregister(&self, id: &PeerId) -> Result<(), TrackerError> {
        let resp = self
            .request(reqwest::Method::DELETE, &format!("/api/peers/{id}"))
            .send()
            .await
            .map_err(|e| TrackerError::Unreachable(e.to_string()))?;
        match resp.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            s => Err(TrackerError::Server {
                status: s.as_u16(),
                message: s.to_string(),
            }),
        }
    }

    pub async fn announce(&self, req: &AnnounceRequest) -> Result<AnnounceResponse, TrackerError> {
        self.call(
            self.request(reqwest::Method::POST, "/api/files/announce")
                .json(req),
        )
        .await
    }

    pub async fn list_files(
        &self,
        search: &str,
        offset: u64,
        limit: u64,
    ) -> Result<FileList, TrackerError> {
        let req = self.request(reqwest::Method::GET, "/api/files").query(&[
            ("search", search.to_owned()),
            ("offset", offset.to_string()),
            ("limit", limit.to_string()),
        ]);
        self.call(req).await
    }

    pub async fn peers(&self, online_only: bool) -> Result<p2p_proto::api::PeerList, TrackerError> {
        let req = self.request(reqwest::Method::GET, "/api/peers").query(&[
            ("online", online_only.to_string()),
            ("limit", "500".to_owned()),
        ]);
        self.call(req).await
    }

    pub async fn file(&self, id: &FileId) -> Result<FileDetails, TrackerError> {
        self.call(self.request(reqwest::Method::GET, &format!("/api/files/{id}")))
            .await
    }

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
        self.call(
            self.request(reqwest::Method::GET, &format!("/api/files/{id}/peers"))
                .query(&query),
        )
        .await
    }
}

/// What the session announces: every file this peer has, whole or partial.
pub type Announcements = Arc<dyn Fn() -> Vec<AnnounceRequest> + Send + Sync>;

/// Control of a running session.
#[derive(Clone)]
pub struct SessionHandle {
    registered: Arc<AtomicBool>,
    announce: Arc<Notify>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("registered", &self.is_registered())
            .finish()
    }
}

impl SessionHandle {
    /// Whether the tracker currently knows this peer.
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    /// Announces everything again now (after sharing a file or finishing a download).
    pub fn announce_now(&self) {
        self.announce.notify_one();
    }
}

/// Timing of a session (tests shorten it).
#[derive(Debug, Clone, Copy)]
pub struct SessionTiming {
    /// Used until the tracker tells its own interval.
    pub heartbeat: Duration,
    /// Longest wait between attempts while the tracker is unreachable.
    pub max_backoff: Duration,
}

impl Default for SessionTiming {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(30),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Keeps the peer registered until `shutdown`: registers (retrying while the tracker is
/// down), announces, heartbeats, and starts over when the tracker no longer knows the peer.
pub fn spawn_session(
    client: TrackerClient,
    register: RegisterPeerRequest,
    announcements: Announcements,
    timing: SessionTiming,
    shutdown: CancellationToken,
) -> SessionHandle {
    let handle = SessionHandle {
        registered: Arc::new(AtomicBool::new(false)),
        announce: Arc::new(Notify::new()),
    };
    let h = handle.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        let mut interval = timing.heartbeat;
        let mut warned = false;
        'session: while !shutdown.is_cancelled() {
            match client.register(&register).await {
                Ok(resp) => {
                    if warned {
                        tracing::info!("tracker reachable again");
                    }
                    warned = false;
                    backoff = Duration::from_millis(200);
                    if resp.heartbeat_interval_secs > 0
                        && timing.heartbeat >= Duration::from_secs(1)
                    {
                        interval = Duration::from_secs(u64::from(resp.heartbeat_interval_secs));
                    }
                    h.registered.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, "cannot register with the tracker; retrying");
                        warned = true;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(timing.max_backoff);
                    continue;
                }
            }
            announce_all(&client, &announcements).await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break 'session,
                    _ = h.announce.notified() => announce_all(&client, &announcements).await,
                    _ = tokio::time::sleep(interval) => {
                        match client.heartbeat(&HeartbeatRequest { peer_id: register.peer_id, uploaded: None, downloaded: None }).await {
                            Ok(_) => {}
                            Err(TrackerError::UnknownPeer(_)) => {
                                tracing::info!("the tracker forgot this peer; registering again");
                                h.registered.store(false, Ordering::Relaxed);
                                continue 'session;
                            }
                            Err(e) => tracing::debug!(error = %e, "heartbeat failed; trying again next interval"),
                        }
                    }
                }
            }
        }
        h.registered.store(false, Ordering::Relaxed);
        let _ = client.unregister(&register.peer_id).await;
    });
    handle
}

async fn announce_all(client: &TrackerClient, announcements: &Announcements) {
    for req in announcements() {
        if let Err(e) = client.announce(&req).await {
            tracing::warn!(file = %req.file.id, error = %e, "announce failed");
        }
    }
}
