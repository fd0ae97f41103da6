//! The tracker's REST API from the peer's side ([`TrackerClient`]), and the session
//! ([`spawn_session`]) that keeps the peer registered: heartbeats (with how the peer reaches
//! the others), re-registration when the tracker forgot the peer (restart on fresh data,
//! expiry, removal) or wants a fresh proof, and announces of what the peer has.
//!
//! Registering proves possession of the peer id's private key (a challenge answered with
//! [`p2p_proto::peer_auth::proof_mac`]) and yields a peer token; the calls that change the
//! peer's entry (heartbeat, announce, unannounce, unregister) send it as `X-Peer-Token`.
//! Lookups of a file's peers send it too: the answer then carries the tracker's admission of
//! this peer to the file, and the registration's answer the tracker's admission key, which the
//! client pins ([`TrackerClient::with_tracker_keys`]; `docs/protocol.md` §9).
//!
//! A client may be given several trackers ([`TrackerClient::with_failover`]): it uses one at a
//! time, the first that answers, and moves on to the next when the one in use cannot be reached
//! (no connection, a timeout, or a gateway's 502/503/504). A tracker that failed is skipped for
//! a while (doubling from [`ENDPOINT_MIN_BACKOFF`] to [`ENDPOINT_MAX_BACKOFF`]). The client stays
//! with the tracker that answers; the session registers again (a fresh proof and token) and
//! re-announces when the new one does not know the peer or its token.

use std::collections::{HashMap, HashSet};
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use curve25519_dalek::montgomery::MontgomeryPoint;
use p2p_proto::api::{
    AnnounceRequest, AnnounceResponse, ErrorBody, FileDetails, FileList, FilePeers,
    HeartbeatRequest, HeartbeatResponse, MAX_PEER_CONNECTIONS, MemberGrants, PeerChallenge,
    PeerChallengeRequest, PeerConnection, PeerInfo, PeerList, PeerProof, ReadGrantInfo,
    RegisterPeerRequest, RegisterPeerResponse, RelayList,
};
use p2p_proto::link::{READ_GRANT_HEADER, ReadGrant};
use p2p_proto::peer_auth::{NONCE_LEN, PEER_PROOF_HEADER, PEER_TOKEN_HEADER, proof_mac};
use p2p_proto::{FileId, PeerId};
use parking_lot::Mutex;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::TrackerKeys;
use crate::identity::Identity;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopping session waits to unregister; shutdown is not held up by a dead tracker.
const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of a tracker's answer held in memory. The largest is a file's details: a manifest
/// of up to 2^20 chunk hashes, 64 hex characters each, about 70 MB of JSON.
const MAX_ANSWER_BYTES: usize = 96 << 20;
/// Most bytes of an error answer read (its JSON names a code and a message).
const MAX_ERROR_BYTES: usize = 64 << 10;
/// Used when the tracker asks for a heartbeat interval of 0.
const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
/// Shortest wait between retries, whatever the timing says (no busy loops).
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// How long a tracker that could not be reached is skipped at first, when there are others;
/// doubles with each further failure.
pub const ENDPOINT_MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest a failed tracker is skipped.
pub const ENDPOINT_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How the tracker says a peer is unknown (`swarm.rs`: "peer … is not registered; …").
const NOT_REGISTERED: &str = "not registered";
/// The error code of a 401 for a missing, expired or foreign peer token (register again).
const PEER_TOKEN_CODE: &str = "peer_token";

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
    /// Missing or wrong API key, a refused registration proof, or a token of another peer.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The peer token is missing, expired or not the tracker's: register again (with a fresh
    /// proof) for a new one.
    #[error("the tracker refused the peer token: {0}")]
    PeerToken(String),
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
        let (code, message) = serde_json::from_slice::<ErrorBody>(body)
            .map(|b| (b.error, b.message))
            .unwrap_or_else(|_| {
                let reason = status.canonical_reason().unwrap_or("");
                (String::new(), reason.to_owned())
            });
        match status {
            StatusCode::FORBIDDEN if code == "quota_exceeded" => Self::QuotaExceeded(message),
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => Self::BadRequest(message),
            StatusCode::UNAUTHORIZED if code == PEER_TOKEN_CODE => Self::PeerToken(message),
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

/// A client of the tracker, or of one of several ([`TrackerClient::with_failover`]). Cheap to
/// clone: clones share one connection pool and the choice of tracker.
#[derive(Debug, Clone)]
pub struct TrackerClient {
    http: reqwest::Client,
    endpoints: Arc<Endpoints>,
    /// The peer token of the latest registration (or renewal), sent on lookups of a file's
    /// peers so that the tracker admits this peer to the file.
    peer_token: Arc<Mutex<Option<String>>>,
    /// Where the trackers' admission keys are pinned at registration.
    tracker_keys: Option<Arc<TrackerKeys>>,
    /// A read grant (hex) sent as `X-Read-Grant` on every request: a share link's permission
    /// to read one id without an API key.
    read_grant: Option<String>,
    /// Proves this peer's id on lookups while it has no peer token (a grant's holder never
    /// registers): a challenge answered in `X-Peer-Proof`.
    prover: Option<Identity>,
}

/// The trackers a client may use, in the order given, and which one it uses now.
#[derive(Debug)]
struct Endpoints {
    /// Base URLs without a trailing slash; may have a path prefix (a tracker behind a proxy).
    bases: Vec<String>,
    state: Mutex<Failover>,
}

#[derive(Debug)]
struct Failover {
    /// The tracker requests go to first.
    current: usize,
    /// Per tracker: failures in a row, and until when it is skipped.
    down: Vec<(u32, Option<Instant>)>,
}

impl Endpoints {
    /// The trackers to try, in order: the current one and those after it (wrapping), leaving
    /// out those still backing off. When all are, the one free soonest: a caller that retries
    /// still reaches a tracker, at the caller's own pace (with one tracker, every call tries it).
    fn candidates(&self, now: Instant) -> Vec<usize> {
        let state = self.state.lock();
        let n = self.bases.len();
        let up: Vec<usize> = (0..n)
            .map(|k| (state.current + k) % n)
            .filter(|&i| state.down[i].1.is_none_or(|until| until <= now))
            .collect();
        if !up.is_empty() {
            return up;
        }
        let soonest = (0..n).min_by_key(|&i| state.down[i].1);
        vec![soonest.unwrap_or(state.current)]
    }

    /// Tracker `i` answered: it is the one to use from now on.
    fn answered(&self, i: usize) {
        let mut state = self.state.lock();
        state.down[i] = (0, None);
        if state.current != i {
            state.current = i;
            tracing::info!(tracker = %self.bases[i], "now using this tracker");
        }
    }

    /// Tracker `i` could not be reached: skip it for a while.
    fn failed(&self, i: usize, error: &TrackerError) {
        if self.bases.len() == 1 {
            return; // nothing to fail over to; the caller's own backoff paces the retries
        }
        let mut state = self.state.lock();
        let (failures, until) = &mut state.down[i];
        *failures = failures.saturating_add(1);
        let wait = ENDPOINT_MIN_BACKOFF
            .saturating_mul(1 << (*failures - 1).min(16))
            .min(ENDPOINT_MAX_BACKOFF);
        *until = Some(Instant::now() + wait);
        if *failures == 1 {
            tracing::warn!(tracker = %self.bases[i], %error, "tracker unreachable; trying the next");
        } else {
            tracing::debug!(tracker = %self.bases[i], %error, retry_in_ms = wait.as_millis() as u64, "tracker still unreachable");
        }
    }
}

/// `base_url` normalised: a scheme (`http` when missing), no trailing slash.
pub(crate) fn normalise_base(base_url: &str) -> Result<String, TrackerError> {
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
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

impl TrackerClient {
    /// A client of the tracker at `base_url` (`http://host:port`, a missing scheme means
    /// `http`). The API key, if any, is sent as `X-API-Key` on every request.
    pub fn new(base_url: &str, api_key: Option<String>) -> Result<Self, TrackerError> {
        Self::with_failover(&[base_url], api_key)
    }

    /// A client of the first of `base_urls` that answers, failing over to the next when the
    /// one in use cannot be reached (see the module docs). Repeated URLs count once.
    pub fn with_failover(
        base_urls: &[impl AsRef<str>],
        api_key: Option<String>,
    ) -> Result<Self, TrackerError> {
        let mut bases: Vec<String> = Vec::with_capacity(base_urls.len());
        for url in base_urls {
            let base = normalise_base(url.as_ref())?;
            if !bases.contains(&base) {
                bases.push(base);
            }
        }
        if bases.is_empty() {
            return Err(TrackerError::Config("no tracker URL given".into()));
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
        let state = Failover {
            current: 0,
            down: vec![(0, None); bases.len()],
        };
        Ok(Self {
            http,
            endpoints: Arc::new(Endpoints {
                bases,
                state: Mutex::new(state),
            }),
            peer_token: Arc::default(),
            tracker_keys: None,
            read_grant: None,
            prover: None,
        })
    }

    /// Sends `grant` as `X-Read-Grant` on every request, and proves `identity`'s peer id on
    /// lookups of a file's peers while there is no peer token, so that the answers carry an
    /// admission of this peer (a share link's holder, which never registers).
    pub fn with_read_grant(mut self, grant: &ReadGrant, identity: Identity) -> Self {
        self.read_grant = Some(grant.to_hex());
        self.prover = Some(identity);
        self
    }

    /// Pins each tracker's admission key into `keys` when registering with it.
    pub fn with_tracker_keys(mut self, keys: Arc<TrackerKeys>) -> Self {
        self.tracker_keys = Some(keys);
        self
    }

    /// Remembers the peer token to send on lookups of a file's peers (the registration and
    /// renewing heartbeats set it).
    fn keep_peer_token(&self, token: &str) {
        *self.peer_token.lock() = Some(token.to_owned());
    }

    /// A lookup of a file's peers, with the peer token when there is one (the answer then
    /// carries an admission). A token the tracker refuses (expired, or from before the tracker
    /// changed its secret; the session registers again) does not fail the lookup: it is asked
    /// again without one. A client with a prover and no token proves its peer id instead.
    async fn admitting_call(&self, req: RequestBuilder) -> Result<FilePeers, TrackerError> {
        let token = self.peer_token.lock().clone();
        let Some(token) = token else {
            return match &self.prover {
                Some(identity) => self.proving_call(req, identity).await,
                None => self.call(req, false).await,
            };
        };
        let plain = req.try_clone();
        match (
            self.call(req.header(PEER_TOKEN_HEADER, token), false).await,
            plain,
        ) {
            (Err(TrackerError::PeerToken(message)), Some(plain)) => {
                tracing::debug!(%message, "the tracker refused the peer token for a lookup; asking without");
                match &self.prover {
                    Some(identity) => {
                        self.peer_token.lock().take();
                        self.proving_call(plain, identity).await
                    }
                    None => self.call(plain, false).await,
                }
            }
            (result, _) => result,
        }
    }

    /// A lookup with `identity`'s answer to a fresh challenge in `X-Peer-Proof`; the answer's
    /// peer token is kept for the next lookups.
    async fn proving_call(
        &self,
        req: RequestBuilder,
        identity: &Identity,
    ) -> Result<FilePeers, TrackerError> {
        let challenge = self.challenge(&identity.peer_id()).await?;
        let proof = prove(identity, &challenge)?;
        let header = format!("{}.{}.{}", identity.peer_id(), proof.nonce, proof.mac);
        let answer: FilePeers = self
            .call(req.header(PEER_PROOF_HEADER, header), false)
            .await?;
        if let Some(token) = &answer.peer_token {
            self.keep_peer_token(token);
        }
        Ok(answer)
    }

    /// The base URL of the tracker in use (the first until one fails), normalised.
    pub fn base_url(&self) -> &str {
        &self.endpoints.bases[self.current_index()]
    }

    /// Every tracker this client may use, in the order given, normalised.
    pub fn base_urls(&self) -> &[String] {
        &self.endpoints.bases
    }

    /// The index in [`TrackerClient::base_urls`] of the tracker in use.
    pub fn current_index(&self) -> usize {
        self.endpoints.state.lock().current
    }

    /// A request to `path`, addressed to the first tracker; [`TrackerClient::send`] moves it
    /// to the one it tries.
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self
            .http
            .request(method, format!("{}{path}", self.endpoints.bases[0]));
        match &self.read_grant {
            Some(grant) => req.header(READ_GRANT_HEADER, grant),
            None => req,
        }
    }

    /// Sends `req` to the tracker in use, and to the next ones while a tracker cannot be
    /// reached; any non-success status becomes an error.
    async fn send(&self, req: RequestBuilder, peer_scoped: bool) -> Result<Response, TrackerError> {
        let template = req.build().map_err(TrackerError::transport)?;
        let bases = &self.endpoints.bases;
        // What follows the base: the path and the query.
        let rest = template
            .url()
            .as_str()
            .strip_prefix(bases[0].as_str())
            .ok_or_else(|| TrackerError::Config(format!("request URL {}", template.url())))?
            .to_owned();
        let mut last = None;
        for i in self.endpoints.candidates(Instant::now()) {
            // Every body here is JSON in memory, so a request can be sent again.
            let mut attempt = template.try_clone().ok_or_else(|| {
                TrackerError::Config("a request whose body cannot be sent twice".into())
            })?;
            *attempt.url_mut() = Url::parse(&format!("{}{rest}", bases[i]))
                .map_err(|e| TrackerError::Config(format!("tracker URL {}: {e}", bases[i])))?;
            let result = match self.http.execute(attempt).await {
                Ok(resp) if resp.status().is_success() => Ok(resp),
                Ok(resp) => {
                    let status = resp.status();
                    let (body, _cut) = read_capped(resp, MAX_ERROR_BYTES).await.unwrap_or_default();
                    Err(TrackerError::from_status(status, &body, peer_scoped))
                }
                Err(e) => Err(TrackerError::transport(e)),
            };
            match result {
                Err(e) if e.is_unreachable() => {
                    self.endpoints.failed(i, &e);
                    last = Some(e);
                }
                Err(e @ TrackerError::Config(_)) => return Err(e),
                answer => {
                    self.endpoints.answered(i);
                    return answer;
                }
            }
        }
        Err(last.unwrap_or_else(|| TrackerError::Config("no tracker to ask".into())))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        peer_scoped: bool,
    ) -> Result<T, TrackerError> {
        let resp = self.send(req, peer_scoped).await?;
        let (body, cut) = read_capped(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(TrackerError::transport)?;
        if cut {
            return Err(TrackerError::InvalidResponse(format!(
                "the answer is larger than {} MiB",
                MAX_ANSWER_BYTES >> 20
            )));
        }
        serde_json::from_slice(&body).map_err(|e| TrackerError::InvalidResponse(e.to_string()))
    }

    /// `POST /api/peers/challenge`: a challenge for registering `peer_id`.
    pub async fn challenge(&self, peer_id: &PeerId) -> Result<PeerChallenge, TrackerError> {
        let req = self
            .request(Method::POST, "/api/peers/challenge")
            .json(&PeerChallengeRequest { peer_id: *peer_id });
        self.call(req, false).await
    }

    /// `POST /api/peers/register` as `identity` (whose id replaces `req.peer_id`): fetches a
    /// challenge and registers with the proof; the answer carries the peer token.
    pub async fn register(
        &self,
        identity: &Identity,
        req: &RegisterPeerRequest,
    ) -> Result<RegisterPeerResponse, TrackerError> {
        let challenge = self.challenge(&identity.peer_id()).await?;
        let mut req = req.clone();
        req.peer_id = identity.peer_id();
        req.proof = Some(prove(identity, &challenge)?);
        let req = self.request(Method::POST, "/api/peers/register").json(&req);
        let resp: RegisterPeerResponse = self.call(req, false).await?;
        self.keep_peer_token(&resp.peer_token);
        if let Some(keys) = &self.tracker_keys {
            let mut key = [0u8; 32];
            match resp
                .admission_key
                .as_deref()
                .map(|k| hex::decode_to_slice(k, &mut key))
            {
                Some(Ok(())) => {
                    if let Err(e) = keys.pin(self.base_url(), key) {
                        tracing::error!(error = %e, "tracker admission key not pinned");
                    }
                }
                Some(Err(_)) => {
                    tracing::warn!(tracker = %self.base_url(), "the tracker's admission key is not 64 hex characters; its admissions are not accepted")
                }
                None => {
                    tracing::warn!(tracker = %self.base_url(), "the tracker signs no admissions (an older tracker): private files are served to no one")
                }
            }
        }
        Ok(resp)
    }

    /// `POST /api/peers/heartbeat` with the peer's token. [`TrackerError::UnknownPeer`] and
    /// [`TrackerError::PeerToken`]: register again. A fresh token may come with the answer.
    pub async fn heartbeat(
        &self,
        token: &str,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, TrackerError> {
        let req = self
            .request(Method::POST, "/api/peers/heartbeat")
            .header(PEER_TOKEN_HEADER, token)
            .json(req);
        let resp: HeartbeatResponse = self.call(req, true).await?;
        if let Some(fresh) = &resp.peer_token {
            self.keep_peer_token(fresh);
        }
        Ok(resp)
    }

    /// `DELETE /api/peers/{id}` with the peer's token: the peer leaves and its announces are
    /// forgotten. A peer the tracker does not know counts as unregistered.
    pub async fn unregister(&self, token: &str, id: &PeerId) -> Result<(), TrackerError> {
        let req = self
            .request(Method::DELETE, &format!("/api/peers/{id}"))
            .header(PEER_TOKEN_HEADER, token);
        match self.send(req, true).await {
            Ok(_) | Err(TrackerError::UnknownPeer(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `POST /api/files/announce` with the peer's token: this peer has the file, whole or in
    /// part. [`TrackerError::UnknownPeer`] and [`TrackerError::PeerToken`]: register again.
    pub async fn announce(
        &self,
        token: &str,
        req: &AnnounceRequest,
    ) -> Result<AnnounceResponse, TrackerError> {
        let req = self
            .request(Method::POST, "/api/files/announce")
            .header(PEER_TOKEN_HEADER, token)
            .json(req);
        self.call(req, true).await
    }

    /// `DELETE /api/files/{hash}/peers/{peer_id}` with the peer's token: this peer stops
    /// offering the file. [`TrackerError::NotFound`]: the peer had not announced the file
    /// (nothing to undo); [`TrackerError::UnknownPeer`]: the tracker does not know the peer
    /// (register again).
    pub async fn unannounce(
        &self,
        token: &str,
        peer_id: &PeerId,
        file_id: &FileId,
    ) -> Result<(), TrackerError> {
        let req = self
            .request(
                Method::DELETE,
                &format!("/api/files/{file_id}/peers/{peer_id}"),
            )
            .header(PEER_TOKEN_HEADER, token);
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
    /// (usually this peer); once registered, with this peer's admission to the file.
    pub async fn file_peers(
        &self,
        id: &FileId,
        exclude: Option<&PeerId>,
        limit: u64,
    ) -> Result<FilePeers, TrackerError> {
        self.peers_of(id, None, exclude, limit).await
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
    /// variant of the file, leaving out `exclude`; once registered, with this peer's admission
    /// to the file.
    pub async fn variant_peers(
        &self,
        id: &FileId,
        variant: u32,
        exclude: Option<&PeerId>,
        limit: u64,
    ) -> Result<FilePeers, TrackerError> {
        self.peers_of(id, Some(variant), exclude, limit).await
    }

    /// `GET /api/files/{hash}/peers`, of one variant or of any.
    async fn peers_of(
        &self,
        id: &FileId,
        variant: Option<u32>,
        exclude: Option<&PeerId>,
        limit: u64,
    ) -> Result<FilePeers, TrackerError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(variant) = variant {
            query.push(("variant", variant.to_string()));
        }
        if let Some(p) = exclude {
            query.push(("exclude", p.to_string()));
        }
        let req = self
            .request(Method::GET, &format!("/api/files/{id}/peers"))
            .query(&query);
        self.admitting_call(req).await
    }

    /// `POST /api/files/{hash}/grants`: a read grant for `id` lasting `ttl` (the tracker's
    /// default, a day, when `None`), for a share link.
    pub async fn read_grant(
        &self,
        id: &FileId,
        ttl: Option<Duration>,
    ) -> Result<ReadGrantInfo, TrackerError> {
        let mut req = self.request(Method::POST, &format!("/api/files/{id}/grants"));
        if let Some(ttl) = ttl {
            req = req.query(&[("ttl_secs", ttl.as_secs().max(1).to_string())]);
        }
        self.call(req, false).await
    }

    /// `POST /api/files/{hash}/grants/members`: read grants for the member files of the
    /// folder collection `id`, whose canonical encoding is `collection`, by this client's read
    /// grant for the collection.
    pub async fn member_grants(
        &self,
        id: &FileId,
        collection: Vec<u8>,
    ) -> Result<MemberGrants, TrackerError> {
        let req = self
            .request(Method::POST, &format!("/api/files/{id}/grants/members"))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(collection);
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

    /// `GET /api/relays`: the relay fleet, to choose a home relay from.
    pub async fn relays(&self) -> Result<RelayList, TrackerError> {
        self.call(self.request(Method::GET, "/api/relays"), false)
            .await
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

/// The answer to `challenge`, made with `identity`'s private key.
fn prove(identity: &Identity, challenge: &PeerChallenge) -> Result<PeerProof, TrackerError> {
    let bad = |what: &str| TrackerError::InvalidResponse(format!("challenge {what}"));
    if challenge.peer_id != identity.peer_id() {
        return Err(bad("for another peer id"));
    }
    let mut tracker_key = [0u8; 32];
    hex::decode_to_slice(&challenge.tracker_key, &mut tracker_key)
        .map_err(|_| bad("key is not 64 hex characters"))?;
    let mut nonce = [0u8; NONCE_LEN];
    hex::decode_to_slice(&challenge.nonce, &mut nonce)
        .map_err(|_| bad("nonce is not 64 hex characters"))?;
    let shared = MontgomeryPoint(tracker_key)
        .mul_clamped(*identity.secret())
        .to_bytes();
    Ok(PeerProof {
        nonce: challenge.nonce.clone(),
        mac: hex::encode(proof_mac(
            &shared,
            &tracker_key,
            &nonce,
            &identity.peer_id(),
        )),
    })
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
    /// Registration attempts made so far, whatever their outcome.
    attempts: watch::Receiver<u64>,
    /// The home relay to register (`RegisterPeerRequest::relay`).
    relay: Arc<watch::Sender<Option<String>>>,
}

impl SessionHandle {
    /// A handle to no session: a peer without an API key does not register (the tracker would
    /// refuse it), and downloads by a share link's read grant. Its status is
    /// [`SessionStatus::Stopped`] and announcing does nothing.
    pub fn detached() -> Self {
        let (_, status) = watch::channel(SessionStatus::Stopped);
        let (_, attempts) = watch::channel(1);
        let (relay, _) = watch::channel(None);
        Self {
            status,
            announce: Arc::new(Notify::new()),
            attempts,
            relay: Arc::new(relay),
        }
    }

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

    /// Waits until the first registration attempt has an outcome (registered, or the tracker
    /// could not be reached or refused): lookups made after it carry the peer token, which
    /// admits this peer to private files, when there is one.
    pub async fn first_attempt(&self) {
        let mut attempts = self.attempts.clone();
        let _ = attempts.wait_for(|n| *n > 0).await;
    }

    /// Registers again with `relay` as the home relay, unless it is the one registered (or
    /// being registered) already.
    pub fn set_relay(&self, relay: Option<String>) {
        self.relay.send_if_modified(|current| {
            let changed = *current != relay;
            *current = relay;
            changed
        });
    }

    /// The home relay registered, or being registered.
    pub fn relay(&self) -> Option<String> {
        self.relay.borrow().clone()
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
/// peer or refuses its token. It registers as `identity` (proving its key; `register.peer_id`
/// is replaced by its id). On shutdown it unregisters.
///
/// Failures are logged once per outage (then at debug level) and recovery once.
pub fn spawn_session(
    client: TrackerClient,
    identity: Identity,
    mut register: RegisterPeerRequest,
    announcements: Announcements,
    connections: Connections,
    timing: SessionTiming,
    shutdown: CancellationToken,
) -> SessionHandle {
    let (status_tx, status) = watch::channel(SessionStatus::Registering);
    let (attempts_tx, attempts) = watch::channel(0);
    let announce = Arc::new(Notify::new());
    register.peer_id = identity.peer_id();
    let (relay, relay_rx) = watch::channel(register.relay.clone());
    let session = Session {
        relay: relay_rx,
        client,
        identity,
        token: String::new(),
        register,
        announcements,
        connections,
        timing,
        shutdown,
        status: status_tx,
        announce: announce.clone(),
        attempts: attempts_tx,
        failing: false,
    };
    tokio::spawn(session.run());
    SessionHandle {
        status,
        announce,
        attempts,
        relay: Arc::new(relay),
    }
}

struct Session {
    client: TrackerClient,
    identity: Identity,
    /// The peer token of the last registration (or heartbeat that renewed it).
    token: String,
    register: RegisterPeerRequest,
    announcements: Announcements,
    connections: Connections,
    timing: SessionTiming,
    shutdown: CancellationToken,
    status: watch::Sender<SessionStatus>,
    announce: Arc<Notify>,
    attempts: watch::Sender<u64>,
    /// The home relay to register; a change registers again.
    relay: watch::Receiver<Option<String>>,
    /// Whether the last call to the tracker failed (to log an outage once).
    failing: bool,
}

/// Why [`Session::serve`] returned.
enum Ended {
    Shutdown,
    /// The tracker no longer knows the peer.
    Forgotten,
    /// The tracker refused the peer token (expired, or from a tracker with another secret).
    TokenRefused,
    /// The peer moved to another home relay: register it.
    Rehomed,
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
    TokenRefused,
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
                Ended::TokenRefused => {
                    tracing::info!("the tracker refused the peer token; proving the key again");
                    self.set(SessionStatus::Registering);
                }
                Ended::Rehomed => {
                    tracing::info!(relay = ?self.relay.borrow().as_deref(), "registering the new home relay");
                }
            }
        }
        if registered_once {
            let unregister = self.client.unregister(&self.token, &self.register.peer_id);
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
            self.register.relay = self.relay.borrow_and_update().clone();
            let result = self
                .or_shutdown(self.client.register(&self.identity, &self.register))
                .await?;
            self.attempts.send_modify(|n| *n += 1);
            match result {
                Ok(resp) => {
                    self.token = resp.peer_token;
                    self.succeeded();
                    tracing::info!(peer = %resp.peer_id, observed_ip = %resp.observed_ip, tracker = %self.client.base_url(), "registered with the tracker");
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
                Ok(()) = self.relay.changed() => return Ended::Rehomed,
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
                    Round::TokenRefused => return Ended::TokenRefused,
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
                let Some(result) = self
                    .or_shutdown(self.client.heartbeat(&self.token, &beat))
                    .await
                else {
                    return Ended::Shutdown;
                };
                match result {
                    Ok(resp) => {
                        if let Some(fresh) = resp.peer_token {
                            self.token = fresh;
                        }
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
                    Err(TrackerError::PeerToken(_)) => return Ended::TokenRefused,
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
                .or_shutdown(self.client.unannounce(&self.token, &peer_id, &id))
                .await?
            {
                // NotFound: the tracker had already forgotten the announce.
                Ok(()) | Err(TrackerError::NotFound(_)) => {
                    self.succeeded();
                    announced.remove(&id);
                }
                Err(TrackerError::UnknownPeer(_)) => return Some(Round::Forgotten),
                Err(TrackerError::PeerToken(_)) => return Some(Round::TokenRefused),
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
            match self
                .or_shutdown(self.client.announce(&self.token, &req))
                .await?
            {
                Ok(_) => {
                    self.succeeded();
                    self.set(SessionStatus::Registered);
                    announced.insert(req.file.id, now);
                }
                Err(TrackerError::UnknownPeer(_)) => return Some(Round::Forgotten),
                Err(TrackerError::PeerToken(_)) => return Some(Round::TokenRefused),
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

/// The body of `resp`, at most `max` bytes of it, and whether it went on past them (then it is
/// not read further: a tracker cannot make the peer buffer more than `max`).
async fn read_capped(mut resp: Response, max: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let expected = resp
        .content_length()
        .map_or(0, |n| n.min(max as u64) as usize);
    let mut body = Vec::with_capacity(expected);
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
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
    fn failed_trackers_are_skipped_with_backoff_and_the_one_that_answers_stays() {
        let c = TrackerClient::with_failover(&["http://a", "http://b", "http://c"], None).unwrap();
        let e = &c.endpoints;
        // `t` is taken before the failures, so each failed tracker is still backing off at `t`
        // however slowly the test runs.
        let t = Instant::now();
        assert_eq!(e.candidates(t), [0, 1, 2]);
        let down = TrackerError::Unavailable("503".into());
        e.failed(0, &down);
        assert_eq!(e.candidates(t), [1, 2]);
        e.answered(1);
        assert_eq!(c.base_url(), "http://b");
        // From the one in use on, wrapping; a is still backing off.
        assert_eq!(e.candidates(t), [1, 2]);
        e.failed(1, &down);
        e.failed(2, &down);
        // All backing off: the one free soonest (a, which failed first) is still tried.
        assert_eq!(e.candidates(t), [0]);
        // Once their backoff is over they are tried again, from the one in use (b) on.
        let later = Instant::now() + ENDPOINT_MIN_BACKOFF;
        assert_eq!(e.candidates(later), [1, 2, 0]);
        // Each failure in a row doubles the wait, up to the cap.
        let t = Instant::now();
        for _ in 0..10 {
            e.failed(0, &down);
        }
        let until = e.state.lock().down[0].1.unwrap();
        assert!(until <= Instant::now() + ENDPOINT_MAX_BACKOFF);
        assert!(until >= t + ENDPOINT_MAX_BACKOFF);
        assert_eq!(e.candidates(t + ENDPOINT_MIN_BACKOFF * 4), [1, 2]);
        e.answered(0);
        assert_eq!(e.candidates(t + ENDPOINT_MIN_BACKOFF * 4), [0, 1, 2]);

        // One tracker: never skipped, as before there was failover.
        let one = TrackerClient::new("http://a", None).unwrap();
        one.endpoints.failed(0, &down);
        assert_eq!(one.endpoints.candidates(Instant::now()), [0]);
    }

    #[test]
    fn debug_hides_the_api_key() {
        let c = TrackerClient::new("http://t", Some("secret-key-123".into())).unwrap();
        assert!(!format!("{c:?}").contains("secret-key-123"));
    }
}
