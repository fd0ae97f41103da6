//! Storage: one trait, two backends (embedded SQLite and PostgreSQL).
//!
//! All SQL lives in this module. The queries are written once in [`sql`] in a dialect both
//! databases accept (`$n` parameters, `ON CONFLICT`, `RETURNING`, `TRUE`/`FALSE`), and one
//! implementation body ([`sql_store_impl!`]) is expanded for each backend's pool type. The
//! backends differ in how they connect: SQLite gets a single writer connection and a pool of
//! read-only connections over one WAL-mode file; PostgreSQL one pool.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use p2p_proto::api::{FilePeer, FileSummary, ManifestVariant, PeerConnection, PeerInfo, Stats};
use p2p_proto::{Bitfield, FileId, Manifest, PeerId};

mod postgres;
mod rows;
mod sql;
mod sqlite;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    /// Whether other trackers may share the database (PostgreSQL); a SQLite file is one
    /// tracker's own.
    pub fn shared(&self) -> bool {
        matches!(self, Self::Postgres)
    }
}

/// A storage failure. Its text is for logs only, never for clients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database cannot be reached (connection refused, pool timed out…).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value does not decode (e.g. a malformed id): the database was edited by hand.
    #[error("corrupt value in the database: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(e),
            other => Self::Database(other),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A peer as it registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPeer {
    pub id: PeerId,
    pub addresses: Vec<String>,
    pub port: u16,
    pub udp_port: Option<u16>,
    pub relay_only: bool,
    /// Its home relay (a URL of the fleet), when it named one.
    pub relay: Option<String>,
    pub observed_ip: String,
    pub name: Option<String>,
    pub version: Option<String>,
}

/// What one running tracker last reported of itself (see [`Store::put_instance`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    /// Random, per process.
    pub id: String,
    /// The relay URL it publishes (`--relay-url`), if any.
    pub relay_url: Option<String>,
    /// Peers attached to its relay hub.
    pub relay_attached: u64,
    /// Its `/ws` clients.
    pub ws_clients: u64,
    pub last_seen_ms: u64,
}

/// Whether a known peer counts as online, and when it was last heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    /// Not yet marked offline by the expiry sweep.
    pub online: bool,
    pub last_seen_ms: u64,
}

impl Presence {
    /// Online and heard from at or after `cutoff_ms`.
    pub fn is_live(&self, cutoff_ms: u64) -> bool {
        self.online && self.last_seen_ms >= cutoff_ms
    }
}

/// One heartbeat, applied in batches. `None` fields leave the stored value as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub peer_id: PeerId,
    pub at_ms: u64,
    pub uploaded: Option<u64>,
    pub downloaded: Option<u64>,
    /// Replaces the peer's list of connections.
    pub connections: Option<Vec<PeerConnection>>,
}

/// What an announce may make the store keep: each distinct manifest of a file id is a variant,
/// and variants are bounded per file and per principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceRules<'a> {
    /// Who announces (`Principal::subject`): the owner of a variant it stores.
    pub principal: &'a str,
    /// Most variants one file id may have. A new one past it takes the place of variants no
    /// live peer claims, else of one of another principal that stored several variants of the
    /// file (so one principal cannot lock others out); with neither it is refused.
    pub max_variants_per_file: u32,
    /// Most variants (over all files) one principal may have stored at once.
    pub max_variants_per_principal: u64,
    /// Peers heard from before this do not hold a variant in place.
    pub cutoff_ms: u64,
}

/// What an announce did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnounceOutcome {
    /// The peer's claim is stored under `variant`.
    Stored {
        variant: u32,
        /// The file id was new to the tracker.
        file_created: bool,
        /// The manifest was new for the file id (a new variant).
        variant_created: bool,
    },
    /// The announcing peer is not registered.
    UnknownPeer,
    /// The manifest would be a new variant, but the file has its maximum of variants, live
    /// peers claim each, and no other principal stored more than one.
    TooManyVariants,
    /// The manifest would be a new variant, but the principal has its maximum stored.
    QuotaExceeded,
}

/// A stored file: one of its manifests, its variants and swarm figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub manifest: Manifest,
    /// Which variant `manifest` is.
    pub variant: u32,
    /// Every variant, most live announcers first (ties: the oldest first).
    pub variants: Vec<ManifestVariant>,
    pub created_at_ms: u64,
    /// Over all variants.
    pub seeders: u64,
    pub leechers: u64,
}

/// A page of results with the total count over all pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// Filter and page of a file listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileQuery {
    /// Case-insensitive substring of the name; empty matches all.
    pub search: String,
    pub offset: u64,
    pub limit: u64,
    /// Peers heard from before this are not counted as seeders or leechers.
    pub cutoff_ms: u64,
}

/// Filter and page of a peer listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerQuery {
    pub online_only: bool,
    pub offset: u64,
    pub limit: u64,
    pub cutoff_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub created_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

/// Events shared by every tracker on one database (PostgreSQL LISTEN/NOTIFY), so that each
/// tracker's `/ws` clients see the events of all of them.
#[async_trait]
pub trait EventFanout: Send + Sync + std::fmt::Debug {
    /// Sends serialised events, in order, to every subscribed tracker, this one included.
    async fn send(&self, payloads: &[Arc<str>]) -> StoreResult<()>;
    /// Subscribes: the stream yields every event sent from then on, by any tracker, in the
    /// order the database committed them. It ends after an error (a lost connection that
    /// could not be re-established); subscribe again then.
    async fn subscribe(&self) -> StoreResult<BoxStream<'static, StoreResult<String>>>;
}

/// The tracker's storage. Times are Unix milliseconds; `cutoff_ms` arguments say how recent a
/// heartbeat must be for a peer to count as online.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    fn backend(&self) -> Backend;

    /// How many heartbeat batches are worth writing at once: more than one only helps where
    /// a batch's round trip would otherwise leave the database idle.
    fn beat_batches_in_flight(&self) -> usize;

    /// Checks that the database answers.
    async fn ping(&self) -> StoreResult<()>;

    /// How events reach the other trackers on this database; `None` where no other tracker
    /// can share it (SQLite).
    fn event_fanout(&self) -> Option<Arc<dyn EventFanout>>;

    /// Inserts or updates a peer and marks it online; returns how it stood before, if known.
    /// Its list of connections starts empty (a new session reports its own).
    async fn register_peer(&self, peer: &NewPeer, now_ms: u64) -> StoreResult<Option<Presence>>;
    /// How a peer stands, or `None` when it is not registered.
    async fn peer_presence(&self, id: &PeerId) -> StoreResult<Option<Presence>>;
    /// Applies heartbeats: last-seen times (never moved backwards), online, traffic counters,
    /// connections.
    /// Returns, for each beat, how its peer stood before, or `None` for an unknown peer.
    async fn record_beats(&self, beats: &[Beat]) -> StoreResult<Vec<Option<Presence>>>;
    /// Removes a peer and what it announced; `false` when it was not registered.
    async fn delete_peer(&self, id: &PeerId) -> StoreResult<bool>;
    /// Marks peers not heard from since `cutoff_ms` offline; returns the ones it changed.
    async fn expire_peers(&self, cutoff_ms: u64) -> StoreResult<Vec<PeerId>>;
    async fn list_peers(&self, query: &PeerQuery) -> StoreResult<Page<PeerInfo>>;
    async fn get_peer(&self, id: &PeerId, cutoff_ms: u64) -> StoreResult<Option<PeerInfo>>;

    /// Records that `peer` has `manifest` (whole when `have` is `None`), under the variant
    /// with that manifest's content, stored now if there is none (within `rules`). A peer has
    /// one claim per file: announcing another variant moves it. The manifest must already be
    /// validated.
    async fn announce(
        &self,
        peer: &PeerId,
        manifest: &Manifest,
        have: Option<&Bitfield>,
        now_ms: u64,
        rules: &AnnounceRules<'_>,
    ) -> StoreResult<AnnounceOutcome>;
    /// Forgets that `peer` has the file; `false` when it had not announced it.
    async fn remove_announce(&self, file: &FileId, peer: &PeerId) -> StoreResult<bool>;
    /// Forgets a file, every variant of it and every announce of it; its name, or `None` when
    /// it was not known.
    async fn delete_file(&self, file: &FileId) -> StoreResult<Option<String>>;
    /// The file with the manifest of `variant`, by default of the variant with the most live
    /// announcers; `None` for an unknown file or variant.
    async fn get_file(
        &self,
        id: &FileId,
        cutoff_ms: u64,
        variant: Option<u32>,
    ) -> StoreResult<Option<FileRecord>>;
    /// Whether file `id` has a manifest (what [`Store::get_file`] would find without a variant),
    /// read from the index alone: no manifest is loaded.
    async fn has_file(&self, id: &FileId) -> StoreResult<bool>;
    async fn list_files(&self, query: &FileQuery) -> StoreResult<Page<FileSummary>>;
    /// Online peers with the file (whole ones first), only those of `variant` if given, or
    /// `None` for an unknown file or variant. The second value is the chunk count of `variant`
    /// (without one, of the manifest the file is listed with).
    async fn file_peers(
        &self,
        id: &FileId,
        cutoff_ms: u64,
        exclude: Option<&PeerId>,
        limit: u64,
        variant: Option<u32>,
    ) -> StoreResult<Option<(u64, Vec<FilePeer>)>>;
    /// Counts for the overview (relay and WebSocket figures are left at zero).
    async fn stats(&self, cutoff_ms: u64) -> StoreResult<Stats>;

    /// Creates the user, or replaces its password and role.
    async fn put_user(&self, user: &UserRecord) -> StoreResult<()>;
    /// Creates the user unless it exists; `true` when it was created.
    async fn create_user_if_absent(&self, user: &UserRecord) -> StoreResult<bool>;
    async fn get_user(&self, username: &str) -> StoreResult<Option<UserRecord>>;
    async fn list_users(&self) -> StoreResult<Vec<UserRecord>>;
    async fn delete_user(&self, username: &str) -> StoreResult<bool>;

    async fn create_api_key(&self, key: &ApiKeyRecord, key_hash: &str) -> StoreResult<()>;
    /// The live (not revoked) key with this hash.
    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>>;
    async fn list_api_keys(&self) -> StoreResult<Vec<ApiKeyRecord>>;
    async fn revoke_api_key(&self, id: &str, now_ms: u64) -> StoreResult<bool>;

    /// Returns the stored value of `key`, first storing `value` if there is none. Safe when
    /// several trackers race to initialise the same key.
    async fn setting_or_init(&self, key: &str, value: &str) -> StoreResult<String>;

    /// Records what a running tracker reports of itself (inserted, or replacing its last
    /// report); `record.last_seen_ms` is the time of the report.
    async fn put_instance(&self, record: &InstanceRecord) -> StoreResult<()>;
    /// The trackers that reported at or after `cutoff_ms`, by id.
    async fn live_instances(&self, cutoff_ms: u64) -> StoreResult<Vec<InstanceRecord>>;
    /// Forgets the tracker `id` (it is stopping) and every one silent since before
    /// `stale_before_ms`.
    async fn delete_instances(&self, id: &str, stale_before_ms: u64) -> StoreResult<()>;
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern and wraps it in `%…%`.
pub(crate) fn like_pattern(search: &str) -> String {
    let mut p = String::with_capacity(search.len() + 2);
    p.push('%');
    for c in search.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The JSON text of a JSON column (addresses, connections).
pub(crate) fn to_json_column<T: serde::Serialize + ?Sized>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Clamps an unsigned value into the signed column type.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The body shared by both backends. The store type must have `reader()` and `writer()`
/// returning its pools, `BACKEND`, `BEAT_BATCHES_IN_FLIGHT`, and `write_beats` (the one backend-specific query: batched
/// heartbeats).
macro_rules! sql_store_impl {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn backend(&self) -> $crate::store::Backend {
                Self::BACKEND
            }

            fn beat_batches_in_flight(&self) -> usize {
                Self::BEAT_BATCHES_IN_FLIGHT
            }

            fn event_fanout(&self) -> Option<std::sync::Arc<dyn $crate::store::EventFanout>> {
                self.fanout()
            }

            async fn ping(&self) -> $crate::store::StoreResult<()> {
                sqlx::query("SELECT 1").execute(self.reader()).await?;
                Ok(())
            }

            async fn register_peer(
                &self,
                peer: &$crate::store::NewPeer,
                now_ms: u64,
            ) -> $crate::store::StoreResult<Option<$crate::store::Presence>> {
                use $crate::store::{rows, sql, to_i64, to_json_column};
                let id = peer.id.to_string();
                let addresses = to_json_column(&peer.addresses)?;
                let mut tx = self.writer().begin().await?;
                let before = sqlx::query_as::<_, rows::PresenceRow>(sql::PEER_PRESENCE)
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await?;
                sqlx::query(sql::UPSERT_PEER)
                    .bind(&id)
                    .bind(addresses)
                    .bind(i64::from(peer.port))
                    .bind(peer.udp_port.map(i64::from))
                    .bind(peer.relay_only)
                    .bind(&peer.observed_ip)
                    .bind(&peer.name)
                    .bind(&peer.version)
                    .bind(to_i64(now_ms))
                    .bind(&peer.relay)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(before.map(Into::into))
            }

            async fn peer_presence(
                &self,
                id: &p2p_proto::PeerId,
            ) -> $crate::store::StoreResult<Option<$crate::store::Presence>> {
                use $crate::store::{rows, sql};
                let row = sqlx::query_as::<_, rows::PresenceRow>(sql::PEER_PRESENCE)
                    .bind(id.to_string())
                    .fetch_optional(self.reader())
                    .await?;
                Ok(row.map(Into::into))
            }

            async fn record_beats(
                &self,
                beats: &[$crate::store::Beat],
            ) -> $crate::store::StoreResult<Vec<Option<$crate::store::Presence>>> {
                if beats.is_empty() {
                    return Ok(Vec::new());
                }
                self.write_beats(beats).await
            }

            async fn delete_peer(
                &self,
                id: &p2p_proto::PeerId,
            ) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query($crate::store::sql::DELETE_PEER)
                    .bind(id.to_string())
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn expire_peers(
                &self,
                cutoff_ms: u64,
            ) -> $crate::store::StoreResult<Vec<p2p_proto::PeerId>> {
                use $crate::store::{rows, sql, to_i64};
                let ids = sqlx::query_as::<_, rows::IdRow>(sql::EXPIRE_PEERS)
                    .bind(to_i64(cutoff_ms))
                    .fetch_all(self.writer())
                    .await?;
                ids.into_iter().map(|r| rows::parse_id(&r.id)).collect()
            }

            async fn list_peers(
                &self,
                q: &$crate::store::PeerQuery,
            ) -> $crate::store::StoreResult<$crate::store::Page<p2p_proto::api::PeerInfo>> {
                use $crate::store::{rows, sql, to_i64};
                let found = sqlx::query_as::<_, rows::PeerRow>(sql::LIST_PEERS)
                    .bind(to_i64(q.cutoff_ms))
                    .bind(q.online_only)
                    .bind(to_i64(q.limit))
                    .bind(to_i64(q.offset))
                    .fetch_all(self.reader())
                    .await?;
                let total: (i64,) = sqlx::query_as(sql::COUNT_PEERS)
                    .bind(to_i64(q.cutoff_ms))
                    .bind(q.online_only)
                    .fetch_one(self.reader())
                    .await?;
                Ok($crate::store::Page {
                    items: found
                        .into_iter()
                        .map(TryInto::try_into)
                        .collect::<Result<_, _>>()?,
                    total: total.0.max(0) as u64,
                })
            }

            async fn get_peer(
                &self,
                id: &p2p_proto::PeerId,
                cutoff_ms: u64,
            ) -> $crate::store::StoreResult<Option<p2p_proto::api::PeerInfo>> {
                use $crate::store::{rows, sql, to_i64};
                let row = sqlx::query_as::<_, rows::PeerRow>(sql::GET_PEER)
                    .bind(to_i64(cutoff_ms))
                    .bind(id.to_string())
                    .fetch_optional(self.reader())
                    .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn announce(
                &self,
                peer: &p2p_proto::PeerId,
                m: &p2p_proto::Manifest,
                have: Option<&p2p_proto::Bitfield>,
                now_ms: u64,
                rules: &$crate::store::AnnounceRules<'_>,
            ) -> $crate::store::StoreResult<$crate::store::AnnounceOutcome> {
                use $crate::store::{AnnounceOutcome, rows, sql, to_i64};
                let file_id = m.id.to_string();
                let peer_id = peer.to_string();
                let chain = rows::hashes_blob(&m.chain);
                let mut tx = self.writer().begin().await?;
                if sqlx::query_as::<_, rows::PresenceRow>(sql::PEER_PRESENCE)
                    .bind(&peer_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_none()
                {
                    return Ok(AnnounceOutcome::UnknownPeer);
                }
                let (mut file_created, mut variant_created) = (false, false);
                let found = sqlx::query_as::<_, rows::VariantMatchRow>(sql::FIND_VARIANT)
                    .bind(&file_id)
                    .bind(to_i64(m.size))
                    .bind(i64::from(m.chunk_size))
                    .bind(m.merkle_root.to_string())
                    .bind(&chain)
                    .fetch_optional(&mut *tx)
                    .await?;
                let variant = match found {
                    Some(v) => {
                        if v.lacks_chain(m) {
                            sqlx::query(sql::FILL_CHAIN)
                                .bind(&file_id)
                                .bind(v.variant)
                                .bind(&chain)
                                .execute(&mut *tx)
                                .await?;
                        }
                        v.variant
                    }
                    None => {
                        let (stored,): (i64,) = sqlx::query_as(sql::COUNT_PRINCIPAL_VARIANTS)
                            .bind(rules.principal)
                            .fetch_one(&mut *tx)
                            .await?;
                        if stored.max(0) as u64 >= rules.max_variants_per_principal {
                            return Ok(AnnounceOutcome::QuotaExceeded);
                        }
                        let inserted = sqlx::query(sql::INSERT_FILE)
                            .bind(&file_id)
                            .bind(&m.name)
                            .bind(to_i64(m.size))
                            .bind(i64::from(m.chunk_size))
                            .bind(to_i64(m.chunk_count()))
                            .bind(m.merkle_root.to_string())
                            .bind(Vec::<u8>::new())
                            .bind(to_i64(now_ms))
                            .execute(&mut *tx)
                            .await?;
                        if inserted.rows_affected() > 0 {
                            sqlx::query(sql::INSERT_VARIANT)
                                .bind(&file_id)
                                .bind(1i64)
                                .bind(&m.name)
                                .bind(to_i64(m.size))
                                .bind(i64::from(m.chunk_size))
                                .bind(to_i64(m.chunk_count()))
                                .bind(m.merkle_root.to_string())
                                .bind(rows::hashes_blob(&m.chunk_hashes))
                                .bind(&chain)
                                .bind(rules.principal)
                                .bind(to_i64(now_ms))
                                .execute(&mut *tx)
                                .await?;
                            file_created = true;
                            variant_created = true;
                            1
                        } else {
                            // A known file: number a new variant. Taking the number locks the
                            // file's row, so look again afterwards: another tracker may have
                            // stored this manifest meanwhile.
                            let (number,): (i64,) = sqlx::query_as(sql::NEXT_VARIANT)
                                .bind(&file_id)
                                .fetch_one(&mut *tx)
                                .await?;
                            let found =
                                sqlx::query_as::<_, rows::VariantMatchRow>(sql::FIND_VARIANT)
                                    .bind(&file_id)
                                    .bind(to_i64(m.size))
                                    .bind(i64::from(m.chunk_size))
                                    .bind(m.merkle_root.to_string())
                                    .bind(&chain)
                                    .fetch_optional(&mut *tx)
                                    .await?;
                            match found {
                                Some(v) => v.variant,
                                None => {
                                    let max = u64::from(rules.max_variants_per_file);
                                    let (count,): (i64,) = sqlx::query_as(sql::COUNT_FILE_VARIANTS)
                                        .bind(&file_id)
                                        .fetch_one(&mut *tx)
                                        .await?;
                                    if count.max(0) as u64 >= max {
                                        // Full: make room from the variants no live peer holds,
                                        // else from a principal that stored several.
                                        sqlx::query(sql::DROP_IDLE_VARIANTS)
                                            .bind(&file_id)
                                            .bind(to_i64(rules.cutoff_ms))
                                            .execute(&mut *tx)
                                            .await?;
                                        let (count,): (i64,) =
                                            sqlx::query_as(sql::COUNT_FILE_VARIANTS)
                                                .bind(&file_id)
                                                .fetch_one(&mut *tx)
                                                .await?;
                                        if count.max(0) as u64 >= max {
                                            let crowded =
                                                sqlx::query_as::<_, (i64,)>(sql::CROWDED_VARIANT)
                                                    .bind(&file_id)
                                                    .bind(rules.principal)
                                                    .bind(to_i64(rules.cutoff_ms))
                                                    .fetch_optional(&mut *tx)
                                                    .await?;
                                            let Some((crowded,)) = crowded else {
                                                return Ok(AnnounceOutcome::TooManyVariants);
                                            };
                                            sqlx::query(sql::DELETE_VARIANT)
                                                .bind(&file_id)
                                                .bind(crowded)
                                                .execute(&mut *tx)
                                                .await?;
                                        }
                                        sqlx::query(sql::DROP_ORPHAN_CLAIMS)
                                            .bind(&file_id)
                                            .execute(&mut *tx)
                                            .await?;
                                    }
                                    sqlx::query(sql::INSERT_VARIANT)
                                        .bind(&file_id)
                                        .bind(number)
                                        .bind(&m.name)
                                        .bind(to_i64(m.size))
                                        .bind(i64::from(m.chunk_size))
                                        .bind(to_i64(m.chunk_count()))
                                        .bind(m.merkle_root.to_string())
                                        .bind(rows::hashes_blob(&m.chunk_hashes))
                                        .bind(&chain)
                                        .bind(rules.principal)
                                        .bind(to_i64(now_ms))
                                        .execute(&mut *tx)
                                        .await?;
                                    variant_created = true;
                                    number
                                }
                            }
                        }
                    }
                };
                let (have_bytes, chunks_have) = match have {
                    Some(b) if !b.is_complete() => (Some(b.as_bytes().to_vec()), b.count_ones()),
                    _ => (None, m.chunk_count()),
                };
                sqlx::query(sql::UPSERT_FILE_PEER)
                    .bind(&file_id)
                    .bind(&peer_id)
                    .bind(have_bytes)
                    .bind(to_i64(chunks_have))
                    .bind(to_i64(now_ms))
                    .bind(variant)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(AnnounceOutcome::Stored {
                    variant: rows::to_variant(variant)?,
                    file_created,
                    variant_created,
                })
            }

            async fn remove_announce(
                &self,
                file: &p2p_proto::FileId,
                peer: &p2p_proto::PeerId,
            ) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query($crate::store::sql::DELETE_FILE_PEER)
                    .bind(file.to_string())
                    .bind(peer.to_string())
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn delete_file(
                &self,
                file: &p2p_proto::FileId,
            ) -> $crate::store::StoreResult<Option<String>> {
                use $crate::store::sql;
                let id = file.to_string();
                let mut tx = self.writer().begin().await?;
                sqlx::query(sql::DELETE_FILE_PEERS)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                let name: Option<(String,)> = sqlx::query_as(sql::DELETE_FILE)
                    .bind(&id)
                    .fetch_optional(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(name.map(|n| n.0))
            }

            async fn get_file(
                &self,
                id: &p2p_proto::FileId,
                cutoff_ms: u64,
                variant: Option<u32>,
            ) -> $crate::store::StoreResult<Option<$crate::store::FileRecord>> {
                use $crate::store::{rows, sql, to_i64};
                let file_id = id.to_string();
                let Some((created_at,)) = sqlx::query_as::<_, (i64,)>(sql::FILE_CREATED_AT)
                    .bind(&file_id)
                    .fetch_optional(self.reader())
                    .await?
                else {
                    return Ok(None);
                };
                let mut variants: Vec<p2p_proto::api::ManifestVariant> =
                    sqlx::query_as::<_, rows::VariantRow>(sql::FILE_VARIANTS)
                        .bind(&file_id)
                        .bind(to_i64(cutoff_ms))
                        .fetch_all(self.reader())
                        .await?
                        .into_iter()
                        .map(TryInto::try_into)
                        .collect::<Result<_, _>>()?;
                // Most live announcers first; the oldest first among equals.
                variants.sort_by_key(|v| (std::cmp::Reverse(v.online()), v.variant));
                let Some(chosen) = variant.or_else(|| variants.first().map(|v| v.variant)) else {
                    return Ok(None);
                };
                let Some(row) =
                    sqlx::query_as::<_, rows::VariantManifestRow>(sql::VARIANT_MANIFEST)
                        .bind(&file_id)
                        .bind(i64::from(chosen))
                        .fetch_optional(self.reader())
                        .await?
                else {
                    return Ok(None);
                };
                Ok(Some($crate::store::FileRecord {
                    manifest: row.into_manifest(*id)?,
                    variant: chosen,
                    seeders: variants.iter().map(|v| v.seeders).sum(),
                    leechers: variants.iter().map(|v| v.leechers).sum(),
                    variants,
                    created_at_ms: created_at.max(0) as u64,
                }))
            }

            async fn has_file(&self, id: &p2p_proto::FileId) -> $crate::store::StoreResult<bool> {
                let found = sqlx::query_as::<_, (i64,)>($crate::store::sql::FILE_HAS_VARIANT)
                    .bind(id.to_string())
                    .fetch_optional(self.reader())
                    .await?;
                Ok(found.is_some())
            }

            async fn list_files(
                &self,
                q: &$crate::store::FileQuery,
            ) -> $crate::store::StoreResult<$crate::store::Page<p2p_proto::api::FileSummary>> {
                use $crate::store::{like_pattern, rows, sql, to_i64};
                let pattern = like_pattern(&q.search);
                let found = sqlx::query_as::<_, rows::FileSummaryRow>(sql::LIST_FILES)
                    .bind(&pattern)
                    .bind(to_i64(q.cutoff_ms))
                    .bind(to_i64(q.limit))
                    .bind(to_i64(q.offset))
                    .fetch_all(self.reader())
                    .await?;
                let total: (i64,) = sqlx::query_as(sql::COUNT_FILES)
                    .bind(&pattern)
                    .fetch_one(self.reader())
                    .await?;
                Ok($crate::store::Page {
                    items: found
                        .into_iter()
                        .map(TryInto::try_into)
                        .collect::<Result<_, _>>()?,
                    total: total.0.max(0) as u64,
                })
            }

            async fn file_peers(
                &self,
                id: &p2p_proto::FileId,
                cutoff_ms: u64,
                exclude: Option<&p2p_proto::PeerId>,
                limit: u64,
                variant: Option<u32>,
            ) -> $crate::store::StoreResult<Option<(u64, Vec<p2p_proto::api::FilePeer>)>> {
                use $crate::store::{rows, sql, to_i64};
                let file_id = id.to_string();
                let count = match variant {
                    Some(v) => {
                        sqlx::query_as::<_, (i64,)>(sql::VARIANT_CHUNK_COUNT)
                            .bind(&file_id)
                            .bind(i64::from(v))
                            .fetch_optional(self.reader())
                            .await?
                    }
                    None => {
                        sqlx::query_as::<_, (i64,)>(sql::FILE_CHUNK_COUNT)
                            .bind(&file_id)
                            .fetch_optional(self.reader())
                            .await?
                    }
                };
                let Some(count) = count else {
                    return Ok(None);
                };
                let chunk_count = count.0.max(0) as u64;
                let found = sqlx::query_as::<_, rows::FilePeerRow>(sql::FILE_PEERS)
                    .bind(&file_id)
                    .bind(to_i64(cutoff_ms))
                    .bind(exclude.map(|p| p.to_string()).unwrap_or_default())
                    .bind(to_i64(limit))
                    .bind(variant.map_or(-1, i64::from))
                    .fetch_all(self.reader())
                    .await?;
                let peers = found
                    .into_iter()
                    .map(rows::FilePeerRow::into_api)
                    .collect::<Result<_, _>>()?;
                Ok(Some((chunk_count, peers)))
            }

            async fn stats(
                &self,
                cutoff_ms: u64,
            ) -> $crate::store::StoreResult<p2p_proto::api::Stats> {
                use $crate::store::{rows, sql, to_i64};
                let row = sqlx::query_as::<_, rows::StatsRow>(sql::STATS)
                    .bind(to_i64(cutoff_ms))
                    .fetch_one(self.reader())
                    .await?;
                Ok(row.into())
            }

            async fn put_user(
                &self,
                u: &$crate::store::UserRecord,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::{sql, to_i64};
                sqlx::query(sql::PUT_USER)
                    .bind(&u.username)
                    .bind(&u.password_hash)
                    .bind(&u.role)
                    .bind(to_i64(u.created_at_ms))
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn create_user_if_absent(
                &self,
                u: &$crate::store::UserRecord,
            ) -> $crate::store::StoreResult<bool> {
                use $crate::store::{sql, to_i64};
                let done = sqlx::query(sql::CREATE_USER_IF_ABSENT)
                    .bind(&u.username)
                    .bind(&u.password_hash)
                    .bind(&u.role)
                    .bind(to_i64(u.created_at_ms))
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn get_user(
                &self,
                username: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::UserRecord>> {
                use $crate::store::{rows, sql};
                let row = sqlx::query_as::<_, rows::UserRow>(sql::GET_USER)
                    .bind(username)
                    .fetch_optional(self.reader())
                    .await?;
                Ok(row.map(Into::into))
            }

            async fn list_users(
                &self,
            ) -> $crate::store::StoreResult<Vec<$crate::store::UserRecord>> {
                use $crate::store::{rows, sql};
                let found = sqlx::query_as::<_, rows::UserRow>(sql::LIST_USERS)
                    .fetch_all(self.reader())
                    .await?;
                Ok(found.into_iter().map(Into::into).collect())
            }

            async fn delete_user(&self, username: &str) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query($crate::store::sql::DELETE_USER)
                    .bind(username)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn create_api_key(
                &self,
                key: &$crate::store::ApiKeyRecord,
                key_hash: &str,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::{sql, to_i64};
                sqlx::query(sql::INSERT_API_KEY)
                    .bind(&key.id)
                    .bind(&key.name)
                    .bind(key_hash)
                    .bind(to_i64(key.created_at_ms))
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn find_api_key(
                &self,
                key_hash: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::ApiKeyRecord>> {
                use $crate::store::{rows, sql};
                let row = sqlx::query_as::<_, rows::ApiKeyRow>(sql::FIND_API_KEY)
                    .bind(key_hash)
                    .fetch_optional(self.reader())
                    .await?;
                Ok(row.map(Into::into))
            }

            async fn list_api_keys(
                &self,
            ) -> $crate::store::StoreResult<Vec<$crate::store::ApiKeyRecord>> {
                use $crate::store::{rows, sql};
                let found = sqlx::query_as::<_, rows::ApiKeyRow>(sql::LIST_API_KEYS)
                    .fetch_all(self.reader())
                    .await?;
                Ok(found.into_iter().map(Into::into).collect())
            }

            async fn revoke_api_key(
                &self,
                id: &str,
                now_ms: u64,
            ) -> $crate::store::StoreResult<bool> {
                use $crate::store::{sql, to_i64};
                let done = sqlx::query(sql::REVOKE_API_KEY)
                    .bind(id)
                    .bind(to_i64(now_ms))
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn setting_or_init(
                &self,
                key: &str,
                value: &str,
            ) -> $crate::store::StoreResult<String> {
                use $crate::store::sql;
                sqlx::query(sql::INIT_SETTING)
                    .bind(key)
                    .bind(value)
                    .execute(self.writer())
                    .await?;
                let row: (String,) = sqlx::query_as(sql::GET_SETTING)
                    .bind(key)
                    .fetch_one(self.writer())
                    .await?;
                Ok(row.0)
            }

            async fn put_instance(
                &self,
                record: &$crate::store::InstanceRecord,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::{sql, to_i64};
                sqlx::query(sql::PUT_INSTANCE)
                    .bind(&record.id)
                    .bind(&record.relay_url)
                    .bind(to_i64(record.relay_attached))
                    .bind(to_i64(record.ws_clients))
                    .bind(to_i64(record.last_seen_ms))
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn live_instances(
                &self,
                cutoff_ms: u64,
            ) -> $crate::store::StoreResult<Vec<$crate::store::InstanceRecord>> {
                use $crate::store::{rows, sql, to_i64};
                let found = sqlx::query_as::<_, rows::InstanceRow>(sql::LIVE_INSTANCES)
                    .bind(to_i64(cutoff_ms))
                    .fetch_all(self.reader())
                    .await?;
                Ok(found.into_iter().map(Into::into).collect())
            }

            async fn delete_instances(
                &self,
                id: &str,
                stale_before_ms: u64,
            ) -> $crate::store::StoreResult<()> {
                use $crate::store::{sql, to_i64};
                sqlx::query(sql::DELETE_INSTANCES)
                    .bind(id)
                    .bind(to_i64(stale_before_ms))
                    .execute(self.writer())
                    .await?;
                Ok(())
            }
        }
    };
}

pub(crate) use sql_store_impl;
