//! The PostgreSQL backend, for production and for several trackers sharing one database.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use super::{Backend, Beat, EventFanout, Presence, StoreResult, rows, to_i64, to_json_column};

/// Batched heartbeats. All parts of one statement see the same snapshot, so `before` holds the
/// state prior to the update. With the same peer twice in a batch, the latest beat wins.
const PG_TOUCH_PEERS: &str = "\
WITH b AS (
    SELECT DISTINCT ON (id) id, at, up, down, conns
    FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[])
        AS u(id, at, up, down, conns)
    ORDER BY id, at DESC
), before AS (
    SELECT p.id, p.online, p.last_seen FROM peers p JOIN b ON p.id = b.id
), touched AS (
    UPDATE peers p SET last_seen = b.at, online = TRUE,
        uploaded = COALESCE(b.up, p.uploaded), downloaded = COALESCE(b.down, p.downloaded),
        connections = COALESCE(b.conns, p.connections)
    FROM b WHERE p.id = b.id AND p.last_seen <= b.at
    RETURNING p.id
)
SELECT id, online, last_seen FROM before";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Storage in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Connections for heartbeat batches only, with `synchronous_commit` off: heartbeats are
    /// soft state, and losing the last moments of them in a database crash only makes peers
    /// look a little older. Everything else commits synchronously.
    beats: PgPool,
    /// The NOTIFY channel of this database's trackers (one per schema, so tests sharing a
    /// database stay apart).
    events_channel: String,
}

impl PgStore {
    const BACKEND: Backend = Backend::Postgres;
    /// Matches the two heartbeat connections: one batch travels while the other executes.
    const BEAT_BATCHES_IN_FLIGHT: usize = 2;

    /// Connects and runs the migrations (under PostgreSQL's migration lock, so several trackers
    /// may start at once).
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        Self::connect_in_schema(url, max_connections, None).await
    }

    /// Like [`PgStore::connect`], but keeps every table in `schema` (created if missing). Tests use
    /// this to run side by side in one database.
    pub async fn connect_in_schema(
        url: &str,
        max_connections: u32,
        schema: Option<&str>,
    ) -> StoreResult<Self> {
        let mut options = PgConnectOptions::from_str(url)?;
        if let Some(schema) = schema {
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await?;
            // The schema name is ours (tests), never user input; quote it anyway.
            let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"))
                .execute(&admin)
                .await?;
            admin.close().await;
            options = options.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        let beats = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.options([("synchronous_commit", "off")]))
            .await?;
        let events_channel = match schema {
            Some(schema) => format!("p2p_events_{schema}"),
            None => "p2p_events".to_owned(),
        };
        Ok(Self {
            pool,
            beats,
            events_channel,
        })
    }

    /// Drops a schema made by [`PgStore::connect_in_schema`] (tests clean up with it).
    pub async fn drop_schema(&self, schema: &str) -> StoreResult<()> {
        let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {quoted} CASCADE"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The whole batch in one statement: the prior state is read from the statement's snapshot
    /// and the update joins against the unnested arrays, so a batch costs one round trip.
    async fn write_beats(&self, beats: &[Beat]) -> StoreResult<Vec<Option<Presence>>> {
        let ids: Vec<String> = beats.iter().map(|b| b.peer_id.to_string()).collect();
        let at: Vec<i64> = beats.iter().map(|b| to_i64(b.at_ms)).collect();
        let up: Vec<Option<i64>> = beats.iter().map(|b| b.uploaded.map(to_i64)).collect();
        let down: Vec<Option<i64>> = beats.iter().map(|b| b.downloaded.map(to_i64)).collect();
        let conns: Vec<Option<String>> = beats
            .iter()
            .map(|b| b.connections.as_deref().map(to_json_column).transpose())
            .collect::<StoreResult<_>>()?;
        let found = sqlx::query_as::<_, rows::IdPresenceRow>(PG_TOUCH_PEERS)
            .bind(&ids)
            .bind(&at)
            .bind(&up)
            .bind(&down)
            .bind(&conns)
            .fetch_all(&self.beats)
            .await?;
        Ok(rows::presence_per_beat(&ids, found))
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn fanout(&self) -> Option<Arc<dyn EventFanout>> {
        Some(Arc::new(PgEvents {
            pool: self.pool.clone(),
            channel: self.events_channel.clone(),
        }))
    }
}

/// Events through PostgreSQL's LISTEN/NOTIFY: every tracker on the database listens on one
/// channel, and NOTIFY delivers each event to all of them, in commit order.
#[derive(Debug)]
struct PgEvents {
    pool: PgPool,
    channel: String,
}

#[async_trait]
impl EventFanout for PgEvents {
    /// One statement, so one transaction, for the whole batch: listeners get the events in
    /// array order. Fails for a payload of 8000 bytes or more (NOTIFY's limit), like for a
    /// lost connection. (Within one transaction NOTIFY drops exact duplicates; two events
    /// with the same content and timestamp are one event.)
    async fn send(&self, payloads: &[Arc<str>]) -> StoreResult<()> {
        let payloads: Vec<String> = payloads.iter().map(|p| p.to_string()).collect();
        sqlx::query(
            "SELECT pg_notify($1, payload) \
             FROM UNNEST($2::text[]) WITH ORDINALITY AS u(payload, n) ORDER BY n",
        )
        .bind(&self.channel)
        .bind(payloads)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn subscribe(&self) -> StoreResult<BoxStream<'static, StoreResult<String>>> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(&self.channel).await?;
        Ok(listener
            .into_stream()
            .map(|n| Ok(n?.payload().to_owned()))
            .boxed())
    }
}

super::sql_store_impl!(PgStore);
