//! The tracker's rules, between the HTTP handlers and the store: validation, registration,
//! heartbeats (group-committed in batches), expiry, announces and the events they raise.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::api::{
    AnnounceRequest, AnnounceResponse, Event, FileDetails, FileList, FilePeers, HeartbeatRequest,
    HeartbeatResponse, LeaveReason, MAX_PEER_CONNECTIONS, PeerList, RegisterPeerRequest,
    RegisterPeerResponse, Stats,
};
use p2p_proto::{Bitfield, CHUNK_SIZE, FileId, PeerId};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
use crate::clock::Clock;
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::store::{
    AnnounceOutcome, AnnounceRules, Beat, FileQuery, NewPeer, PeerQuery, Presence, Store,
    StoreError,
};
use crate::swarm_cache::SwarmCache;

/// Most addresses a peer may register.
pub const MAX_ADDRESSES: usize = 16;
/// Default and largest page sizes of listings.
pub const DEFAULT_PAGE: u64 = 50;
pub const MAX_PAGE: u64 = 500;
/// How long the stored-state gauges of `/metrics` are served without asking the database.
pub const GAUGES_FRESH_FOR: Duration = Duration::from_secs(1);
/// Heartbeats written in one batch at most.
const MAX_BATCH: usize = 2048;

/// Why a swarm operation failed. The text of the first three is shown to clients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwarmError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The caller has stored all it may (a quota).
    #[error("{0}")]
    QuotaExceeded(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<SwarmError> for crate::error::ApiError {
    fn from(e: SwarmError) -> Self {
        match e {
            SwarmError::BadRequest(m) => Self::bad_request(m),
            SwarmError::NotFound(m) => Self::not_found(m),
            SwarmError::Conflict(m) => Self::conflict(m),
            SwarmError::QuotaExceeded(m) => Self::quota_exceeded(m),
            SwarmError::Store(e) => e.into(),
        }
    }
}

type SwarmResult<T> = Result<T, SwarmError>;

/// Timing of the swarm.
#[derive(Debug, Clone, Copy)]
pub struct SwarmConfig {
    pub heartbeat_interval_secs: u32,
    /// A peer silent for this long is offline.
    pub peer_ttl_secs: u32,
    /// How often the expiry sweep runs.
    pub sweep_interval: Duration,
    /// How long a file's swarm is served from memory (zero: always ask the database).
    pub swarm_cache_ttl: Duration,
    /// Largest file a manifest may describe.
    pub max_file_bytes: u64,
    /// Most distinct manifests (variants) one file id may have.
    pub max_variants_per_file: u32,
    /// Most manifests one principal (API key or user) may have stored.
    pub max_manifests_per_principal: u64,
}

/// A heartbeat waiting for its batch; answered with the peer's prior presence.
struct PendingBeat {
    beat: Beat,
    done: oneshot::Sender<Result<Option<Presence>, Arc<StoreError>>>,
}

/// The swarm service shared by all handlers.
#[derive(Debug)]
pub struct Swarm {
    store: Arc<dyn Store>,
    events: EventBus,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    config: SwarmConfig,
    beats: mpsc::Sender<PendingBeat>,
    swarm_cache: SwarmCache,
    /// When the `/metrics` gauges were last refreshed.
    gauges_refreshed: tokio::sync::Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for PendingBeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.beat.fmt(f)
    }
}

impl Swarm {
    /// Creates the service and starts its background tasks (heartbeat writer, expiry sweep),
    /// which stop when `shutdown` is cancelled.
    pub fn start(
        store: Arc<dyn Store>,
        events: EventBus,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        config: SwarmConfig,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let swarm = Arc::new(Self {
            store,
            events,
            clock,
            metrics,
            config,
            beats: tx,
            swarm_cache: SwarmCache::new(config.swarm_cache_ttl),
            gauges_refreshed: tokio::sync::Mutex::new(None),
        });
        tokio::spawn(write_beats(swarm.store.clone(), swarm.metrics.clone(), rx));
        let sweeper = swarm.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweeper.config.sweep_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = sweeper.expire_now().await {
                            tracing::warn!(error = %e, "expiry sweep failed");
                        }
                    }
                }
            }
        });
        swarm
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn config(&self) -> &SwarmConfig {
        &self.config
    }

    /// The tracker's time (Unix ms).
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Heartbeats at or after this time count as online.
    pub fn cutoff_ms(&self) -> u64 {
        self.clock
            .now_ms()
            .saturating_sub(u64::from(self.config.peer_ttl_secs) * 1000)
    }

    pub async fn register(
        &self,
        req: RegisterPeerRequest,
        observed: Option<IpAddr>,
    ) -> SwarmResult<RegisterPeerResponse> {
        let addresses = validate_addresses(&req.addresses)?;
        if req.port == 0 && !req.relay_only {
            return Err(SwarmError::BadRequest(
                "port must be 1-65535 (or set relay_only)".into(),
            ));
        }
        let name = validate_label("name", req.name)?;
        let version = validate_label("version", req.version)?;
        let relay = req.relay.filter(|r| !r.is_empty());
        if let Some(url) = &relay {
            crate::fleet::check_relay_url(url)
                .map_err(|e| SwarmError::BadRequest(e.to_string()))?;
        }
        let observed_ip = observed
            .map(|ip| ip.to_canonical().to_string())
            .unwrap_or_default();
        let peer = NewPeer {
            id: req.peer_id,
            addresses,
            port: req.port,
            udp_port: req.udp_port.filter(|p| *p != 0),
            relay_only: req.relay_only,
            relay,
            observed_ip: observed_ip.clone(),
            name,
            version,
        };
        let now = self.clock.now_ms();
        let before = self.store.register_peer(&peer, now).await?;
        // Its addresses or liveness may have changed in any swarm it is in.
        self.swarm_cache.clear();
        if !before.is_some_and(|p| p.is_live(self.cutoff_ms())) {
            self.events.publish(Event::PeerJoined {
                peer_id: peer.id,
                addresses: peer.addresses.clone(),
                port: peer.port,
                relay_only: peer.relay_only,
                observed_ip: peer.observed_ip.clone(),
            });
        }
        Ok(RegisterPeerResponse {
            peer_id: peer.id,
            observed_ip,
            heartbeat_interval_secs: self.config.heartbeat_interval_secs,
            peer_ttl_secs: self.config.peer_ttl_secs,
            // Filled in by the handler, which checked the proof and issues the token.
            peer_token: String::new(),
            peer_token_expires_in_secs: 0,
            admission_key: None,
        })
    }

    /// Records a heartbeat. Returns once it is stored (beats arriving together share one
    /// transaction). An unknown peer gets `NotFound`, its cue to register again.
    pub async fn heartbeat(&self, req: HeartbeatRequest) -> SwarmResult<HeartbeatResponse> {
        if req
            .connections
            .as_ref()
            .is_some_and(|c| c.len() > MAX_PEER_CONNECTIONS)
        {
            return Err(SwarmError::BadRequest(format!(
                "at most {MAX_PEER_CONNECTIONS} connections may be reported"
            )));
        }
        let beat = Beat {
            peer_id: req.peer_id,
            at_ms: self.clock.now_ms(),
            uploaded: req.uploaded,
            downloaded: req.downloaded,
            connections: req.connections,
        };
        let (done, wait) = oneshot::channel();
        let pending = PendingBeat {
            beat: beat.clone(),
            done,
        };
        let before = match self.beats.send(pending).await {
            Ok(()) => match wait.await {
                Ok(Ok(before)) => before,
                // The batch failed: retry alone, so the caller gets this beat's own error.
                Ok(Err(_)) | Err(_) => self.store.record_beats(&[beat]).await?.pop().flatten(),
            },
            // The writer is gone (shutting down): write this one directly.
            Err(_) => self.store.record_beats(&[beat]).await?.pop().flatten(),
        };
        let Some(before) = before else {
            return Err(SwarmError::NotFound(format!(
                "peer {} is not registered; register again",
                req.peer_id
            )));
        };
        self.metrics.heartbeats.inc();
        if !before.is_live(self.cutoff_ms()) {
            self.swarm_cache.clear();
            self.announce_rejoin(&req.peer_id).await?;
        }
        Ok(HeartbeatResponse {
            next_heartbeat_secs: self.config.heartbeat_interval_secs,
            peer_token: None,
            peer_token_expires_in_secs: None,
        })
    }

    async fn announce_rejoin(&self, id: &PeerId) -> SwarmResult<()> {
        if let Some(p) = self.store.get_peer(id, self.cutoff_ms()).await? {
            self.events.publish(Event::PeerJoined {
                peer_id: p.peer_id,
                addresses: p.addresses,
                port: p.port,
                relay_only: p.relay_only,
                observed_ip: p.observed_ip,
            });
        }
        Ok(())
    }

    pub async fn peer(&self, id: &PeerId) -> SwarmResult<p2p_proto::api::PeerInfo> {
        self.store
            .get_peer(id, self.cutoff_ms())
            .await?
            .ok_or_else(|| SwarmError::NotFound(format!("peer {id} is not registered")))
    }

    pub async fn unregister(&self, id: &PeerId) -> SwarmResult<()> {
        self.delete_peer(id, LeaveReason::Unregistered).await
    }

    /// An admin removes a peer and its announces. (A peer still running registers again at
    /// its next heartbeat; revoke its API key to keep it out.)
    pub async fn remove_peer(&self, id: &PeerId) -> SwarmResult<()> {
        self.delete_peer(id, LeaveReason::Removed).await
    }

    async fn delete_peer(&self, id: &PeerId, reason: LeaveReason) -> SwarmResult<()> {
        if !self.store.delete_peer(id).await? {
            return Err(SwarmError::NotFound(format!("peer {id} is not registered")));
        }
        self.swarm_cache.clear();
        self.events.publish(Event::PeerLeft {
            peer_id: *id,
            reason,
        });
        Ok(())
    }

    /// Marks silent peers offline and tells the feed. Runs periodically; tests call it directly.
    pub async fn expire_now(&self) -> SwarmResult<Vec<PeerId>> {
        let expired = self.store.expire_peers(self.cutoff_ms()).await?;
        if !expired.is_empty() {
            self.swarm_cache.clear();
        }
        for id in &expired {
            self.metrics.peers_expired.inc();
            self.events.publish(Event::PeerLeft {
                peer_id: *id,
                reason: LeaveReason::Expired,
            });
        }
        Ok(expired)
    }

    pub async fn list_peers(
        &self,
        online_only: bool,
        offset: u64,
        limit: u64,
    ) -> SwarmResult<PeerList> {
        let limit = page_size(limit);
        let page = self
            .store
            .list_peers(&PeerQuery {
                online_only,
                offset,
                limit,
                cutoff_ms: self.cutoff_ms(),
            })
            .await?;
        Ok(PeerList {
            peers: page.items,
            total: page.total,
            offset,
            limit,
        })
    }

    /// Records `principal`'s announce. A manifest that differs from those stored under its id
    /// is kept as a further variant (the tracker cannot tell which is true; downloaders can),
    /// within the bounds of [`SwarmConfig`].
    pub async fn announce(
        &self,
        req: AnnounceRequest,
        principal: &Principal,
    ) -> SwarmResult<AnnounceResponse> {
        let manifest = req.file;
        // Bound what one announce stores before looking at the rest.
        if manifest.chunk_size != CHUNK_SIZE {
            return Err(SwarmError::BadRequest(format!(
                "invalid manifest: chunk_size must be {CHUNK_SIZE} (the protocol's chunk size)"
            )));
        }
        if manifest.size > self.config.max_file_bytes {
            return Err(SwarmError::BadRequest(format!(
                "invalid manifest: this tracker takes files of at most {} bytes",
                self.config.max_file_bytes
            )));
        }
        manifest
            .validate()
            .map_err(|e| SwarmError::BadRequest(format!("invalid manifest: {e}")))?;
        let chunks = manifest.chunk_count();
        let have = req
            .have
            .as_deref()
            .map(|b| Bitfield::from_base64(b, chunks))
            .transpose()
            .map_err(|e| SwarmError::BadRequest(format!("invalid have bitfield: {e}")))?;
        let rules = AnnounceRules {
            principal: &principal.subject,
            max_variants_per_file: self.config.max_variants_per_file,
            max_variants_per_principal: self.config.max_manifests_per_principal,
            cutoff_ms: self.cutoff_ms(),
        };
        let outcome = self
            .store
            .announce(
                &req.peer_id,
                &manifest,
                have.as_ref(),
                self.clock.now_ms(),
                &rules,
            )
            .await?;
        let (variant, created) = match outcome {
            AnnounceOutcome::Stored {
                variant,
                file_created,
                ..
            } => (variant, file_created),
            AnnounceOutcome::UnknownPeer => {
                return Err(SwarmError::NotFound(format!(
                    "peer {} is not registered; register before announcing",
                    req.peer_id
                )));
            }
            AnnounceOutcome::TooManyVariants => {
                return Err(SwarmError::Conflict(format!(
                    "file {} already has {} different manifests, each announced by online peers",
                    manifest.id, self.config.max_variants_per_file
                )));
            }
            AnnounceOutcome::QuotaExceeded => {
                return Err(SwarmError::QuotaExceeded(format!(
                    "{} has stored its quota of {} manifests; unannounce files to store new ones",
                    principal.subject, self.config.max_manifests_per_principal
                )));
            }
        };
        self.swarm_cache.invalidate(&manifest.id);
        let chunks_have = have.as_ref().map_or(chunks, Bitfield::count_ones);
        let complete = chunks_have == chunks;
        self.metrics.announces.inc();
        self.events.publish(Event::FileAnnounced {
            file_id: manifest.id,
            name: manifest.name.clone(),
            size: manifest.size,
            peer_id: req.peer_id,
            complete,
            created,
        });
        Ok(AnnounceResponse {
            file_id: manifest.id,
            created,
            chunks_have,
            complete,
            variant,
        })
    }

    /// `peer` stops offering the file. An unknown peer gets the "not registered" answer (its
    /// cue to register again), a peer that had not announced the file a plain not-found.
    pub async fn unannounce(&self, file: &FileId, peer: &PeerId) -> SwarmResult<()> {
        if !self.store.remove_announce(file, peer).await? {
            if self.store.peer_presence(peer).await?.is_none() {
                return Err(SwarmError::NotFound(format!(
                    "peer {peer} is not registered; register again"
                )));
            }
            return Err(SwarmError::NotFound(format!(
                "peer {peer} has not announced file {file}"
            )));
        }
        self.swarm_cache.invalidate(file);
        self.events.publish(Event::FileUnannounced {
            file_id: *file,
            peer_id: *peer,
        });
        Ok(())
    }

    /// An admin removes a file for everyone: every announce of it and the file itself. A
    /// peer that still has it and announces it again brings it back.
    pub async fn remove_file(&self, file: &FileId) -> SwarmResult<()> {
        let name = self
            .store
            .delete_file(file)
            .await?
            .ok_or_else(|| unknown_file(file, None))?;
        self.swarm_cache.invalidate(file);
        self.events.publish(Event::FileRemoved {
            file_id: *file,
            name,
        });
        Ok(())
    }

    pub async fn list_files(&self, search: &str, offset: u64, limit: u64) -> SwarmResult<FileList> {
        // The same limit as the spec's maxLength (characters, not bytes).
        if search.chars().count() > 255 {
            return Err(SwarmError::BadRequest(
                "search is longer than 255 characters".into(),
            ));
        }
        let limit = page_size(limit);
        let page = self
            .store
            .list_files(&FileQuery {
                search: search.to_owned(),
                offset,
                limit,
                cutoff_ms: self.cutoff_ms(),
            })
            .await?;
        Ok(FileList {
            files: page.items,
            total: page.total,
            offset,
            limit,
        })
    }

    /// The file with the manifest of `variant`, by default of the variant most online peers
    /// announced.
    pub async fn file(&self, id: &FileId, variant: Option<u32>) -> SwarmResult<FileDetails> {
        let record = self
            .store
            .get_file(id, self.cutoff_ms(), variant)
            .await?
            .ok_or_else(|| unknown_file(id, variant))?;
        Ok(FileDetails {
            chunk_count: record.manifest.chunk_count(),
            manifest: record.manifest,
            seeders: record.seeders,
            leechers: record.leechers,
            created_at_ms: record.created_at_ms,
            variant: record.variant,
            variants: record.variants,
        })
    }

    /// Fails with not-found unless the tracker knows file `id` (has a manifest for it), without
    /// loading the manifest.
    pub async fn check_known(&self, id: &FileId) -> SwarmResult<()> {
        if self.store.has_file(id).await? {
            Ok(())
        } else {
            Err(unknown_file(id, None))
        }
    }

    /// Online peers with the file (only those that announced `variant`, if given), whole copies
    /// first, from the swarm cache when fresh.
    pub async fn file_peers(
        &self,
        id: &FileId,
        exclude: Option<&PeerId>,
        limit: u64,
        variant: Option<u32>,
    ) -> SwarmResult<FilePeers> {
        let cutoff = self.cutoff_ms();
        let (chunk_count, all) = match self.swarm_cache.get(id, variant) {
            Some(swarm) => swarm,
            None => {
                let (chunks, peers) = self
                    .store
                    .file_peers(id, cutoff, None, MAX_PAGE, variant)
                    .await?
                    .ok_or_else(|| unknown_file(id, variant))?;
                let swarm = (chunks, Arc::new(peers));
                self.swarm_cache.put(*id, variant, swarm.clone());
                swarm
            }
        };
        let peers = all
            .iter()
            .filter(|p| p.last_seen_ms >= cutoff && Some(&p.peer_id) != exclude)
            .take(usize::try_from(page_size(limit)).unwrap_or(usize::MAX))
            .cloned()
            .collect();
        Ok(FilePeers {
            file_id: *id,
            chunk_count,
            peers,
            // Signed by the handler for the asking peer.
            admission: None,
            peer_token: None,
        })
    }

    pub async fn stats(&self) -> SwarmResult<Stats> {
        let mut stats = self.store.stats(self.cutoff_ms()).await?;
        stats.relay_connections = self.metrics.relay_connections.get().max(0) as u64;
        stats.ws_clients = self.metrics.ws_clients.get().max(0) as u64;
        Ok(stats)
    }

    /// Refreshes the gauges that mirror stored state unless that was done in the last
    /// [`GAUGES_FRESH_FOR`]: scrapes, however many, cost at most one stats query a second.
    /// Concurrent callers wait for one refresh rather than each running the query.
    pub async fn refresh_gauges_cached(&self) -> SwarmResult<()> {
        let mut last = self.gauges_refreshed.lock().await;
        if last.is_some_and(|at| at.elapsed() < GAUGES_FRESH_FOR) {
            return Ok(());
        }
        self.refresh_gauges().await?;
        *last = Some(std::time::Instant::now());
        Ok(())
    }

    /// Refreshes the gauges that mirror stored state.
    pub async fn refresh_gauges(&self) -> SwarmResult<()> {
        let stats = self.store.stats(self.cutoff_ms()).await?;
        let set = |g: &prometheus_client::metrics::gauge::Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&self.metrics.peers_online, stats.peers_online);
        set(&self.metrics.peers_total, stats.peers_total);
        set(&self.metrics.files, stats.files);
        set(&self.metrics.bytes_shared, stats.total_bytes);
        Ok(())
    }
}

fn unknown_file(id: &FileId, variant: Option<u32>) -> SwarmError {
    SwarmError::NotFound(match variant {
        None => format!("file {id} is not known to this tracker"),
        Some(v) => format!("file {id} has no manifest variant {v} on this tracker"),
    })
}

fn page_size(limit: u64) -> u64 {
    match limit {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// Accepts IP addresses and DNS names; rejects anything else (URLs, ports, spaces).
fn validate_addresses(addresses: &[String]) -> SwarmResult<Vec<String>> {
    if addresses.len() > MAX_ADDRESSES {
        return Err(SwarmError::BadRequest(format!(
            "at most {MAX_ADDRESSES} addresses may be registered"
        )));
    }
    addresses
        .iter()
        .map(|a| {
            let a = a.trim();
            if let Ok(ip) = a
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                return Ok(ip.to_string());
            }
            let is_hostname = !a.is_empty()
                && a.len() <= 253
                && a.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if is_hostname {
                Ok(a.to_ascii_lowercase())
            } else {
                Err(SwarmError::BadRequest(format!(
                    "{a:?} is not an IP address or host name"
                )))
            }
        })
        .collect()
}

fn validate_label(what: &str, value: Option<String>) -> SwarmResult<Option<String>> {
    match value {
        // As the spec says (maxLength counts characters).
        Some(v) if v.chars().count() > 128 || v.chars().any(char::is_control) => {
            Err(SwarmError::BadRequest(format!(
                "{what} must be at most 128 characters without control characters"
            )))
        }
        Some(v) if v.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

/// Writes queued heartbeats: whatever has queued up while earlier batches were being written
/// goes into the next one (group commit), so load turns into bigger batches rather than more
/// transactions. Where the store says so, two batches may be in flight, so one batch's round
/// trip does not idle the database (the store keeps last-seen times from moving backwards if they finish out of order).
async fn write_beats(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<PendingBeat>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(
        store.beat_batches_in_flight().max(1),
    ));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let (store, metrics) = (store.clone(), metrics.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let (beats, waiting): (Vec<Beat>, Vec<_>) =
                batch.into_iter().map(|p| (p.beat, p.done)).unzip();
            metrics.heartbeat_batch.observe(beats.len() as f64);
            match store.record_beats(&beats).await {
                Ok(before) => {
                    for (done, before) in waiting.into_iter().zip(before) {
                        let _ = done.send(Ok(before));
                    }
                }
                Err(e) => {
                    metrics.db_errors.inc();
                    tracing::warn!(error = %e, count = beats.len(), "heartbeat batch failed");
                    let shared = Arc::new(e);
                    for done in waiting {
                        let _ = done.send(Err(shared.clone()));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        let ok = validate_addresses(&["10.0.0.1".into(), "[::1]".into(), "Host-1.example".into()])
            .unwrap();
        assert_eq!(ok, vec!["10.0.0.1", "::1", "host-1.example"]);
        for bad in [
            "",
            "http://x",
            "a b",
            "-x.com",
            "1.2.3.4:80",
            &"a".repeat(64),
        ] {
            assert!(validate_addresses(&[bad.to_string()]).is_err(), "{bad:?}");
        }
        assert!(validate_addresses(&vec!["1.1.1.1".to_string(); 17]).is_err());
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0), DEFAULT_PAGE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(10_000), MAX_PAGE);
    }
}
