//! The embedded SQLite backend: one file in WAL mode, a single writer connection (SQLite
//! serialises writers anyway; one connection avoids busy retries) and a pool of readers.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::{Backend, Beat, EventFanout, Presence, StoreError, StoreResult, rows, to_i64};

/// The state of a heartbeat batch's peers before it is applied. `$1` is a JSON array of
/// `[peer_id, at_ms, uploaded, downloaded, connections]`.
const SQLITE_BEATS_BEFORE: &str = "\
SELECT p.id, p.online, p.last_seen FROM peers p
WHERE p.id IN (SELECT json_extract(value, '$[0]') FROM json_each($1))";

/// Applies a heartbeat batch (same JSON as above). With a peer twice, the latest beat wins:
/// with one `MAX()` in a grouped query, SQLite takes the other columns from the row holding
/// the maximum. (`json_extract` returns the connections array as JSON text, NULL for null.)
const SQLITE_TOUCH_PEERS: &str = "\
UPDATE peers SET last_seen = b.at, online = TRUE,
    uploaded = COALESCE(b.up, peers.uploaded), downloaded = COALESCE(b.down, peers.downloaded),
    connections = COALESCE(b.conns, peers.connections)
FROM (SELECT json_extract(value, '$[0]') AS id, MAX(json_extract(value, '$[1]')) AS at,
             json_extract(value, '$[2]') AS up, json_extract(value, '$[3]') AS down,
             json_extract(value, '$[4]') AS conns
      FROM json_each($1) GROUP BY 1) AS b
WHERE peers.id = b.id AND peers.last_seen <= b.at";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Storage in an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    reader: SqlitePool,
    writer: SqlitePool,
}

impl SqliteStore {
    const BACKEND: Backend = Backend::Sqlite;
    /// One writer connection: a second batch would only queue for it.
    const BEAT_BATCHES_IN_FLIGHT: usize = 1;

    /// Opens (creating if needed) the database file and runs the migrations.
    pub async fn open(path: &Path, max_readers: u32) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(e.into()))?;
        }
        let base = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(base.clone().create_if_missing(true))
            .await?;
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_readers.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(base.read_only(true))
            .await?;
        Ok(Self { reader, writer })
    }

    /// Two statements for the whole batch, whatever its size: the beats travel as one JSON
    /// array (`json_each`), so a batch costs two calls into SQLite rather than two per beat.
    async fn write_beats(&self, beats: &[Beat]) -> StoreResult<Vec<Option<Presence>>> {
        let ids: Vec<String> = beats.iter().map(|b| b.peer_id.to_string()).collect();
        let json = serde_json::Value::Array(
            beats
                .iter()
                .zip(&ids)
                .map(|(b, id)| {
                    serde_json::json!([
                        id,
                        to_i64(b.at_ms),
                        b.uploaded.map(to_i64),
                        b.downloaded.map(to_i64),
                        b.connections
                    ])
                })
                .collect(),
        )
        .to_string();
        let mut tx = self.writer.begin().await?;
        let found = sqlx::query_as::<_, rows::IdPresenceRow>(SQLITE_BEATS_BEFORE)
            .bind(&json)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query(SQLITE_TOUCH_PEERS)
            .bind(&json)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows::presence_per_beat(&ids, found))
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// An SQLite file belongs to one tracker: its events stay in the process.
    fn fanout(&self) -> Option<std::sync::Arc<dyn EventFanout>> {
        None
    }
}

super::sql_store_impl!(SqliteStore);
